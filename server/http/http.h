/*
 * http.h: tokenlabd's HTTP layer on libmicrohttpd.
 *
 * http.c owns the MHD daemon (a thread per connection, as Server-Sent Event
 * streams block for their lifetime, with a cap on connections, an explicit
 * connection timeout and a per-connection memory limit), request bodies
 * (accumulated up to a configured limit: 413 past it, checked against
 * Content-Length first), routing by method and path pattern ("/api/v1/jobs/{id}"),
 * the security checks done before any handler runs (bearer token on
 * mutating routes: 401 without a token, 403 with a wrong one; the Host
 * header must name the bound address or localhost, against DNS rebinding:
 * 403), and response helpers (JSON, application/problem+json with a stable
 * code, streaming responses for Server-Sent Events). It counts requests by
 * route and status for /metrics. Handlers run on MHD's threads and must be
 * thread-safe.
 */
#ifndef TLD_HTTP_H
#define TLD_HTTP_H

#include "http/histogram.h"
#include <stddef.h>
#include <stdint.h>

typedef struct tld_http tld_http;
typedef struct tld_req tld_req;

/* What a read-only token lookup found. */
typedef enum { TLD_TOKEN_VALID = 0, TLD_TOKEN_REVOKED, TLD_TOKEN_UNKNOWN, TLD_TOKEN_ERROR } tld_token_status;
/* Says whether tok[0..len) is a read-only token, writing its name (NUL-terminated, cut to namelen) when it
 * is one, valid or revoked. Called on the HTTP event-loop threads, concurrently: it must be thread-safe and
 * must not block for long. */
typedef tld_token_status (*tld_http_read_token_fn)(void *user, const char *tok, size_t len, char *name,
                                                   size_t namelen);

typedef struct {
    const char *bind_addr;       /* "127.0.0.1" */
    int port;                    /* 0: any free port (see tld_http_port) */
    int max_connections;         /* default 10000; past it new connections are answered 503 and closed */
    int timeout_s;               /* idle connection timeout, default 30 */
    size_t max_body;             /* bytes, default 16 MiB */
    const char *token;           /* bearer token required on mutating routes (POST, PUT, DELETE) */
    const char *const *extra_hosts; /* further Host names allowed (NULL-terminated), may be NULL */
    int per_client;              /* connections one client address may hold, default 1024 (MHD closes more) */
    int handler_threads;         /* threads that run handlers, default 16 */
    int header_timeout_s;        /* a request's headers must arrive within this, default 10 */
    /* Origins (scheme://host[:port], exact) whose pages may send changing requests, besides the daemon's own
     * address; NULL-terminated, may be NULL. A changing request (not GET/HEAD/OPTIONS) with another Origin
     * header is refused 403 ORIGIN_NOT_ALLOWED. */
    const char *const *allow_origins;
    /* Bound to an address that is not loopback, every route needs the token unless this is set (then reads
     * and inference stay open, as they always are on loopback). */
    int public_read;
    /* Read-only tokens, may be NULL: asked about a bearer token that is not the admin token (see
     * tld_http_read_token_fn). A valid read token opens what public_read would (reads and inference) and
     * is refused on TLD_AUTH_TOKEN routes (403 READ_ONLY_TOKEN). */
    tld_http_read_token_fn read_token;
    void *read_token_user;
} tld_http_cfg;

/* A handler answers with tld_reply_* exactly once. */
typedef void (*tld_handler)(tld_req *r, void *user);

typedef enum { TLD_AUTH_PUBLIC = 0, TLD_AUTH_TOKEN = 1 } tld_auth;

tld_http *tld_http_new(const tld_http_cfg *cfg, char *err, size_t errlen);
/* Routes match exactly, with {name} segments captured (tld_req_param). Register before start. */
int tld_http_route(tld_http *h, const char *method, const char *pattern, tld_auth auth, tld_handler fn, void *user);
/* The same with the route's own body limit (model uploads), instead of the daemon's max_body. */
int tld_http_route_limit(tld_http *h, const char *method, const char *pattern, tld_auth auth, tld_handler fn, void *user,
                        size_t max_body);
/* Requests matching no route under prefix get this handler (static files of the dashboard). */
int tld_http_fallback(tld_http *h, tld_handler fn, void *user);
int tld_http_start(tld_http *h, char *err, size_t errlen);
int tld_http_port(const tld_http *h);          /* the bound port */
void tld_http_stop(tld_http *h);               /* stops accepting, closes connections, joins threads */
void tld_http_free(tld_http *h);
/* Request durations per (method, route), from arrival to the reply being queued: calls fn for each. */
void tld_http_timings(tld_http *h, void (*fn)(const char *method, const char *route, const tld_hist *hist, void *u),
                     void *u);
/* Asks the parked streams for more data soon (events were published). Any thread; cheap. */
void tld_http_wake(tld_http *h);
/* The same for the streams keyed `key` (tld_reply_stream_key) and those without a key. */
void tld_http_wake_key(tld_http *h, uint64_t key);
/* The most connections held at once (max_connections, after the open-file limit). */
int tld_http_capacity(const tld_http *h);
/* Requests refused with a problem, by its code: calls fn for each code seen. */
void tld_http_refusals(tld_http *h, void (*fn)(const char *code, uint64_t n, void *u), void *u);
/* "route status count" lines for Prometheus: calls fn for each counter. */
void tld_http_counters(tld_http *h, void (*fn)(const char *method, const char *route, int status, uint64_t n, void *u),
                      void *u);

/* ---- request ---- */
const char *tld_req_method(const tld_req *r);
const char *tld_req_path(const tld_req *r);
const char *tld_req_param(const tld_req *r, const char *name);  /* {name} from the route, or NULL */
const char *tld_req_query(const tld_req *r, const char *name);  /* ?name=value, or NULL */
const char *tld_req_header(const tld_req *r, const char *name); /* case-insensitive, or NULL */
const char *tld_req_body(const tld_req *r, size_t *len);        /* NUL-terminated copy; len may be NULL */

/* ---- replies ---- */
void tld_reply_json(tld_req *r, int status, const char *json);  /* application/json */
/* Adds a header to the reply about to be sent (e.g. Location, Retry-After). */
void tld_reply_header(tld_req *r, const char *name, const char *value);
/* application/problem+json: {"type": "about:blank", "title", "status", "code", "detail", "pointer"?}.
 * pointer (JSON pointer of the offending field) may be NULL. */
void tld_reply_problem(tld_req *r, int status, const char *code, const char *pointer, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void tld_reply_bytes(tld_req *r, int status, const char *content_type, const void *data, size_t len);
/* A streaming reply (Server-Sent Events, large files): fn is called on an event-loop thread for more
 * data and must not block; it returns bytes written into buf (<= max), 0 when it has nothing now (the
 * stream is parked, costing no thread, and fn is called again after tld_http_wake or within a few
 * seconds), TLD_STREAM_SOON (the same, asked again within about 0.1 s), or -1 at the end. free_fn
 * releases state when the connection ends. */
typedef long (*tld_stream_fn)(void *state, uint64_t pos, char *buf, size_t max);
/* Keys the stream that r replies with next: tld_http_wake_key(h, key) wakes it, other keys' wakes do
 * not (tld_http_wake wakes every stream). Without a key (0) a stream is woken by every wake. */
void tld_reply_stream_key(tld_req *r, uint64_t key);
/* A stream function's answer: nothing now, but ask again within about HTTP_SOON_MS (a short grace). */
#define TLD_STREAM_SOON (-2)
void tld_reply_stream(tld_req *r, int status, const char *content_type, tld_stream_fn fn, void *state,
                     void (*free_fn)(void *state));

#endif
