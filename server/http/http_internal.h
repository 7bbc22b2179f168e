/*
 * http_internal.h: what the files of server/http/ that make up the HTTP
 * layer share (http.h is the interface). Private to the folder.
 *
 *   http.c         the server object, connections, the access handler
 *                  (Host check, auth, admission, bodies), counters, lifecycle
 *   http_route.c   route registration and matching
 *   http_reply.c   request accessors and replies (JSON, problem+json, bytes)
 *   http_stream.c  streaming replies (Server-Sent Events, large files)
 *
 * Threads: see http.c. A tld_req belongs to its connection's thread; a
 * tld_http's routes and configuration are read-only while started.
 */
#ifndef TLD_HTTP_INTERNAL_H
#define TLD_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "http/http.h"
#include "http/histogram.h"

#define HTTP_MAX_SEGS 16            /* path segments a route pattern may have */
#define HTTP_MAX_PARAMS 8           /* {param} segments per route */
#define HTTP_MAX_METHOD 16
#define HTTP_MAX_REPLY_HEADERS 16   /* tld_reply_header calls per reply */
#define HTTP_NCOUNTERS 128          /* the last slot takes whatever does not fit */
#define HTTP_MEMORY_LIMIT ((size_t)64 * 1024) /* per connection: headers, read and write buffers */
#define HTTP_STREAM_BLOCK ((size_t)16 * 1024)
#define HTTP_STREAM_PAUSE_MS 25
#define HTTP_BODY_PREALLOC ((size_t)1024 * 1024) /* reserved from Content-Length at most */
#define HTTP_DRAIN_MAX ((size_t)64 * 1024 * 1024) /* dropped after a mid-upload 413 at most */
#define HTTP_DRAIN_S 2.0            /* and for at most this long */
#define HTTP_DETAIL_MAX 2048        /* problem detail, truncated past it */
#define HTTP_LOG_MAX 512
#define HTTP_DEFAULT_CONNECTIONS 256
#define HTTP_DEFAULT_TIMEOUT_S 30
#define HTTP_DEFAULT_MAX_BODY ((size_t)16 * 1024 * 1024)

typedef struct {
    char method[HTTP_MAX_METHOD];
    char *pattern;                 /* as registered: the counters' label */
    char *segbuf;                  /* pattern copy split at '/' */
    char *segs[HTTP_MAX_SEGS];     /* literal text, or the name of a {param} */
    unsigned char is_param[HTTP_MAX_SEGS];
    int nsegs;
    uint32_t literal_mask;         /* bit (31 - i) set for a literal segment i: more specific wins */
    tld_auth auth;
    tld_handler fn;
    void *user;
    size_t max_body;               /* this route's body limit (tld_http_route_limit), else the daemon's */
} http_route;

typedef struct {
    char method[8];
    const char *route;             /* a pattern owned by the route table, or a static label */
    int status;
    uint64_t n;
} http_counter;

/* Request durations of one (method, route): from the request's arrival to its reply being queued. */
typedef struct {
    char method[8];
    const char *route;
    tld_hist hist;
} http_timing;

#define HTTP_NREFUSALS 64           /* problem codes counted; the last slot takes the rest */

typedef struct {
    char code[32];                  /* a problem's code: BODY_TOO_LARGE, MODEL_NOT_FOUND, ... */
    uint64_t n;
} http_refusal;

struct tld_http {
    char *bind_addr;
    int port;                      /* configured; the bound one once started */
    int max_connections, timeout_s;
    size_t max_body;
    char *token;                   /* NULL: no token configured, TLD_AUTH_TOKEN routes are refused */
    size_t token_len;
    char **hosts;                  /* allowed Host names (without port), NULL-terminated */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int ipv6;
    int quiet;

    http_route *routes;
    int nroutes, route_cap;
    tld_handler fallback;
    void *fallback_user;

    struct MHD_Daemon *daemon;
    atomic_int stopping;

    pthread_mutex_t counter_mu;     /* counters, timings and refusals */
    http_counter counters[HTTP_NCOUNTERS];
    int ncounters;
    http_timing timings[HTTP_NCOUNTERS];
    int ntimings;
    http_refusal refusals[HTTP_NREFUSALS];
    int nrefusals;

    pthread_mutex_t log_mu;
    char last_log[HTTP_LOG_MAX];
};

struct tld_req {
    tld_http *h;
    struct MHD_Connection *conn;
    char method[HTTP_MAX_METHOD];  /* truncated copy, for counters and tld_req_method */
    const char *method_full;       /* MHD's, valid for the request */
    char *path;
    char *segbuf;
    char *segs[HTTP_MAX_SEGS];
    int nsegs;                     /* -1: the path does not split into at most HTTP_MAX_SEGS */
    const http_route *route;       /* NULL: fallback or unmatched */
    const char *label;             /* counters' route label */
    double t0;                     /* arrival, monotonic seconds */
    char problem_code[32];         /* the code of a problem reply, "" otherwise */
    tld_handler fn;
    void *user;
    int nparams;
    const char *pnames[HTTP_MAX_PARAMS], *pvals[HTTP_MAX_PARAMS];

    char *body;
    size_t body_len, body_cap;
    size_t max_body;               /* the route's limit, or the daemon's */
    int too_large;                 /* 413 written to the socket mid-upload */
    size_t dropped;                /* bytes dropped after that */
    double rejected_at;            /* when (monotonic seconds) */

    char *hnames[HTTP_MAX_REPLY_HEADERS], *hvals[HTTP_MAX_REPLY_HEADERS];
    int nheaders;
    struct MHD_Response *resp;     /* built by a tld_reply_*, queued by the access handler */
    int status;
    int replied;
};

typedef struct {
    tld_http *h;
    int fd;                        /* the connection's socket, polled while fn has nothing */
    tld_stream_fn fn;
    void *state;
    void (*free_fn)(void *state);
} http_stream;

/* ------------------------------------------------------------------ http.c */

/* strdup; NULL when out of memory. */
char *tld_http_strdup(const char *s);
/* Logs a line to stderr ("tokenlabd http: ...", unless quiet) and keeps it as the last log line. */
void tld_http_log(tld_http *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------ http_route.c */

/* Splits an absolute path in place at '/' into at most max segments; the count, or -1 when the path is
 * not absolute or has more than max segments. */
int tld_http_split_path(char *p, char **segs, int max);
/* The most specific route for method and the split path, or NULL. */
const http_route *tld_http_find_route(const tld_http *h, const char *method, char *const *segs, int nsegs);
/* "GET, HEAD, POST": the methods of the routes matching the path; "" if none. */
void tld_http_allowed_methods(const tld_http *h, char *const *segs, int nsegs, char *out, size_t outlen);

/* ------------------------------------------------------------------ http_reply.c */

/* Keeps resp (with content_type and the queued headers) as the request's reply, queued after the handler. */
void tld_http_reply_set(tld_req *r, int status, struct MHD_Response *resp, const char *content_type);
/* First reply wins: 0 to go on, -1 for a second reply (a handler bug, logged). */
int tld_http_reply_begin(tld_req *r, int *status);
/* The problem+json document, malloc'd (*len its length); NULL when out of memory. */
char *tld_http_problem_json(int status, const char *code, const char *pointer, const char *detail, size_t *len);
/* Replies with a problem+json document (pointer may be NULL). */
void tld_http_reply_problem_text(tld_req *r, int status, const char *code, const char *pointer, const char *detail);

#endif
