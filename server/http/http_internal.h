/*
 * http_internal.h: what the files of server/http/ that make up the HTTP
 * layer share (http.h is the interface). Private to the folder.
 *
 *   http.c         the server object, connections, the access handler
 *                  (Host check, auth, admission, bodies), counters, lifecycle
 *   http_route.c   route registration and matching
 *   http_reply.c   request accessors and replies (JSON, problem+json, bytes)
 *   http_stream.c  streaming replies (Server-Sent Events, large files)
 *   http_conn.c    many clients on few threads: the handler pool, parked
 *                  streams, the connection registry (cap, slowloris reaper)
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
#define HTTP_MEMORY_LIMIT ((size_t)32 * 1024) /* per connection: headers, read and write buffers (MHD's default) */
#define HTTP_STREAM_BLOCK ((size_t)16 * 1024)
#define HTTP_TICK_S 15.0            /* a parked stream is asked again at least this often (the SSE heartbeat) */
#define HTTP_WAKE_MS 50             /* tld_http_wake resumes the parked streams at most this often */
#define HTTP_SOON_MS 100            /* TLD_STREAM_SOON: asked again after about this long */
#define HTTP_WAKE_KEYS 32           /* distinct keys woken in one round, past them every stream */
#define HTTP_POOL_QUEUE 4096        /* requests waiting for a handler thread; past it 503 */
#define HTTP_MARGIN_CONNECTIONS 64  /* accepted past max_connections to be answered 503 */
#define HTTP_RESERVED_FDS 256       /* files the daemon keeps for itself (store, models, data) */
#define HTTP_DEFAULT_HANDLER_THREADS 16
#define HTTP_EVENT_THREADS 2         /* libmicrohttpd's event loops (epoll), each holding a share of the clients */
#define HTTP_DEFAULT_HEADER_TIMEOUT_S 10
#define HTTP_DEFAULT_PER_CLIENT 1024
#define HTTP_BODY_MIN_RATE (64.0 * 1024) /* bytes/s a body must average, past the idle timeout */
#define HTTP_BODY_PREALLOC ((size_t)1024 * 1024) /* reserved from Content-Length at most */
#define HTTP_DRAIN_MAX ((size_t)64 * 1024 * 1024) /* dropped after a mid-upload 413 at most */
#define HTTP_DRAIN_S 2.0            /* and for at most this long */
#define HTTP_DETAIL_MAX 2048        /* problem detail, truncated past it */
#define HTTP_LOG_MAX 512
#define HTTP_DEFAULT_CONNECTIONS 10000
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

/* What a connection is waiting for (the slowloris reaper's view). */
enum { HTTP_PHASE_HEADERS = 0, HTTP_PHASE_BODY = 1, HTTP_PHASE_HANDLED = 2 };

/* One connection, from MHD_OPTION_NOTIFY_CONNECTION (http_conn.c). */
typedef struct http_conn {
    int fd;
    int phase;                     /* HTTP_PHASE_* */
    double phase_start;            /* monotonic seconds */
    double deadline;               /* HTTP_PHASE_BODY: the body must be in by then (0: none) */
    int over_cap;                  /* arrived past max_connections: answered 503 */
    int reaped;
    struct http_conn *prev, *next; /* under conn_mu */
} http_conn;

struct http_stream;

/* A handler thread (http_conn.c): it waits on its own cv for a request handed to it. */
typedef struct http_worker {
    struct tld_http *h;
    pthread_t thread;
    pthread_cond_t cv;
    tld_req *job;                  /* under pool_mu */
} http_worker;

struct tld_http {
    char *bind_addr;
    int port;                      /* configured; the bound one once started */
    int max_connections, timeout_s;
    int handler_threads, header_timeout_s, per_client;
    size_t max_body;
    char *token;                   /* NULL: no token configured, TLD_AUTH_TOKEN routes are refused */
    size_t token_len;
    char **hosts;                  /* allowed Host names (without port), NULL-terminated */
    char **origins;                /* --allow-origin values, NULL-terminated (may be NULL) */
    int loopback;                  /* bound to 127.0.0.0/8 or ::1: public routes need no token */
    int public_read;               /* tld_http_cfg.public_read */
    tld_http_read_token_fn read_token; /* tld_http_cfg.read_token, may be NULL */
    void *read_token_user;
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

    /* http_conn.c: the handler pool (pool_mu) */
    pthread_mutex_t pool_mu;
    struct http_worker *pool_workers;
    struct http_worker **pool_idle; /* idle workers, the most recent on top */
    int pool_started, pool_nidle;
    tld_req **pool_ring;           /* requests waiting while every worker is busy */
    int pool_cap, pool_head, pool_count, pool_quit;
    /* parked streams and the ticker (park_mu) */
    pthread_mutex_t park_mu;
    pthread_cond_t park_cv;
    struct http_stream *parked;
    int nparked, wake_pending, ticker_quit, ticker_started;
    double next_due;               /* the earliest park_until on the parked list (a bound: may be earlier) */
    uint64_t wake_keys[HTTP_WAKE_KEYS]; /* keys woken since the last round; wake_all when they overflow */
    int nwake_keys, wake_all;
    pthread_t ticker;
    /* the connection registry (conn_mu) */
    pthread_mutex_t conn_mu;
    http_conn *conns;
    uint64_t reaped;
    atomic_int nconns;

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
    int dispatched;                /* queued for a handler thread (its connection suspended) */
    int handled;                   /* the handler ran: the next access-handler call queues the reply */
    double expect_body;            /* bytes of body announced (Content-Length, or max_body when chunked) */
    uint64_t stream_key;           /* tld_reply_stream_key: the key of the stream that follows */
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

typedef struct http_stream {
    tld_http *h;
    struct MHD_Connection *conn;
    tld_stream_fn fn;
    void *state;
    void (*free_fn)(void *state);
    double last_data;              /* when fn last produced bytes (the idle timeout) */
    int fd;                        /* the connection's socket: a parked stream's client hanging up */
    int gone;                      /* the client hung up while parked: end at the next ask */
    uint64_t key;                  /* woken by wakes of this key (0: by every wake) */
    int parked;                    /* under park_mu: suspended, on the parked list */
    double park_until;
    struct http_stream *prev, *next;
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

/* ---- http_conn.c ---- */

/* Runs r's handler and makes sure it replied (a logged 500 otherwise). On a handler thread (http.c). */
void tld_http_run_handler(tld_req *r);
/* Queues r for a handler thread, suspending its connection. 0, or -1 when the queue is full or stopping. */
int tld_http_dispatch(tld_http *h, tld_req *r);
/* A stream with nothing to send: suspends its connection until a wake or its tick. 0, or -1 when the
 * daemon is stopping (end the stream instead). Called from the stream reader. */
int tld_http_park(http_stream *s, int soon);
/* Takes a stream off the parked list (its response is freed). */
void tld_http_unpark(http_stream *s);
/* MHD_OPTION_NOTIFY_CONNECTION: the registry and the count against max_connections. */
void tld_http_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                            enum MHD_ConnectionNotificationCode code);
/* The registry record of a connection (NULL when it could not be made). */
http_conn *tld_http_conn_of(struct MHD_Connection *c);
/* Moves a connection to phase (HTTP_PHASE_*), with a body deadline (monotonic seconds, 0: none). */
void tld_http_conn_phase(tld_http *h, http_conn *k, int phase, double deadline);
/* The handler pool and the ticker: started before MHD, stopped before MHD_stop_daemon. */
int tld_http_conn_start(tld_http *h, char *err, size_t errlen);
void tld_http_conn_stop(tld_http *h);
/* Raises the open-file limit for max_connections (lowering max_connections when the system allows fewer,
 * with a log line); returns max_connections. */
int tld_http_raise_nofile(tld_http *h);

#endif
