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
#ifndef TL_HTTP_H
#define TL_HTTP_H

#include <stddef.h>
#include <stdint.h>

typedef struct tl_http tl_http;
typedef struct tl_req tl_req;

typedef struct {
    const char *bind_addr;       /* "127.0.0.1" */
    int port;                    /* 0: any free port (see tl_http_port) */
    int max_connections;         /* default 256; past it new connections are refused */
    int timeout_s;               /* idle connection timeout, default 30 */
    size_t max_body;             /* bytes, default 16 MiB */
    const char *token;           /* bearer token required on mutating routes (POST, PUT, DELETE) */
    const char *const *extra_hosts; /* further Host names allowed (NULL-terminated), may be NULL */
} tl_http_cfg;

/* A handler answers with tl_reply_* exactly once. */
typedef void (*tl_handler)(tl_req *r, void *user);

typedef enum { TL_AUTH_PUBLIC = 0, TL_AUTH_TOKEN = 1 } tl_auth;

tl_http *tl_http_new(const tl_http_cfg *cfg, char *err, size_t errlen);
/* Routes match exactly, with {name} segments captured (tl_req_param). Register before start. */
int tl_http_route(tl_http *h, const char *method, const char *pattern, tl_auth auth, tl_handler fn, void *user);
/* The same with the route's own body limit (model uploads), instead of the daemon's max_body. */
int tl_http_route_limit(tl_http *h, const char *method, const char *pattern, tl_auth auth, tl_handler fn, void *user,
                        size_t max_body);
/* Requests matching no route under prefix get this handler (static files of the dashboard). */
int tl_http_fallback(tl_http *h, tl_handler fn, void *user);
int tl_http_start(tl_http *h, char *err, size_t errlen);
int tl_http_port(const tl_http *h);          /* the bound port */
void tl_http_stop(tl_http *h);               /* stops accepting, closes connections, joins threads */
void tl_http_free(tl_http *h);
/* "route status count" lines for Prometheus: calls fn for each counter. */
void tl_http_counters(tl_http *h, void (*fn)(const char *method, const char *route, int status, uint64_t n, void *u),
                      void *u);

/* ---- request ---- */
const char *tl_req_method(const tl_req *r);
const char *tl_req_path(const tl_req *r);
const char *tl_req_param(const tl_req *r, const char *name);  /* {name} from the route, or NULL */
const char *tl_req_query(const tl_req *r, const char *name);  /* ?name=value, or NULL */
const char *tl_req_header(const tl_req *r, const char *name); /* case-insensitive, or NULL */
const char *tl_req_body(const tl_req *r, size_t *len);        /* NUL-terminated copy; len may be NULL */

/* ---- replies ---- */
void tl_reply_json(tl_req *r, int status, const char *json);  /* application/json */
/* Adds a header to the reply about to be sent (e.g. Location, Retry-After). */
void tl_reply_header(tl_req *r, const char *name, const char *value);
/* application/problem+json: {"type": "about:blank", "title", "status", "code", "detail", "pointer"?}.
 * pointer (JSON pointer of the offending field) may be NULL. */
void tl_reply_problem(tl_req *r, int status, const char *code, const char *pointer, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void tl_reply_bytes(tl_req *r, int status, const char *content_type, const void *data, size_t len);
/* A streaming reply (Server-Sent Events, large files): fn is called on an MHD thread for more data;
 * it returns bytes written into buf (<= max), 0 to wait and be called again after a short pause,
 * or -1 at the end. free_fn releases state when the connection ends. */
typedef long (*tl_stream_fn)(void *state, uint64_t pos, char *buf, size_t max);
void tl_reply_stream(tl_req *r, int status, const char *content_type, tl_stream_fn fn, void *state,
                     void (*free_fn)(void *state));

#endif
