/*
 * http.c: tokenlabd's HTTP layer on libmicrohttpd 0.9.75 (interface: http.h).
 *
 * Owns:
 *   - tld_http: copies of the configuration strings, the allowed Host names,
 *     the route table (patterns split into segments; immutable once
 *     started), the MHD daemon, the request counters (a fixed table under a
 *     mutex) and the last log line (kept so tld_http_start can report why MHD
 *     refused to start).
 *   - tld_req: one per request, created by the first access-handler call and
 *     freed by MHD's request-completed callback: a copy of the path split
 *     into segments (the {param} values point into it), the body received so
 *     far, the headers queued by tld_reply_header and the response a handler
 *     built (queued once the handler returns).
 *   - http_stream: one per tld_reply_stream, owned by the MHD response; MHD's
 *     free callback releases it and calls the caller's free_fn.
 * Threads: tld_http_new/route/fallback/start/stop/free/port run on the
 * owner's thread. MHD runs a listening thread and one thread per connection
 * (MHD_USE_THREAD_PER_CONNECTION); the access handler, the handlers,
 * tld_req_* / tld_reply_* and the stream callbacks run on the connection's
 * thread, so a tld_req is never shared. Shared between threads: the
 * configuration and routes (read-only while started), the counters
 * (counter_mu), the last log line (log_mu) and the stopping flag (atomic).
 *
 * A request, in the access handler:
 *   first call: Host (missing or repeated: 400 BAD_REQUEST; not bind_addr,
 *     localhost, 127.0.0.1, [::1] or an extra host: 403 HOST_NOT_ALLOWED),
 *     done before routing so a page on a rebound name learns nothing, then
 *     the route (404 NOT_FOUND; 405 METHOD_NOT_ALLOWED with Allow if another
 *     method has the path), the bearer token of TLD_AUTH_TOKEN routes (401
 *     UNAUTHENTICATED with WWW-Authenticate: Bearer; 403 FORBIDDEN), and
 *     Content-Length against max_body (413 BODY_TOO_LARGE). A rejection is
 *     queued at once: MHD then sends no "100 Continue", never reads the body
 *     and closes the connection after the reply.
 *   upload calls: the body is appended (bounded by max_body). A body growing
 *     past max_body without a Content-Length (chunked) cannot be answered
 *     through MHD 0.9.75, which refuses MHD_queue_response while an upload
 *     is in progress; so the 413 problem is written straight to the socket
 *     (plain HTTP only, no TLS here) and the write side is shut down; what
 *     the client sends meanwhile is read and dropped for up to 2 s or 64 MiB
 *     (closing with unread data would reset the connection, and the client
 *     could lose the reply), then the connection is closed.
 *   final call: the handler runs; the response it built is queued. A handler
 *     that does not reply gets a logged 500 INTERNAL problem.
 * HEAD is routed as GET when no HEAD route matches (MHD sends no body).
 * The fallback gets every request that no route matches, whatever its path
 * (405 still wins when another method has the path); it is public. Without a
 * configured token, TLD_AUTH_TOKEN routes refuse every request (403). Paths
 * reach the router percent-decoded by MHD, so a {param} never holds a '/'.
 * Handlers reply before they return (the response is queued afterwards);
 * a Cache-Control set with tld_reply_header replaces the default no-store.
 * Counted per (method, route pattern, status) when a reply is queued;
 * requests matching no route (and those refused by the Host check, which
 * comes first) count under "unmatched", those given to the fallback under
 * "fallback"; methods other than the usual seven count as "OTHER" so that
 * clients cannot grow the table. Replies libmicrohttpd sends by itself
 * (malformed requests, headers past the memory limit) are not counted.
 *
 * Streams: MHD calls the reader on the connection's thread and a return of 0
 * would make it spin, so the wrapper blocks instead: while fn returns 0 it
 * waits 25 ms (in poll() on the socket, to notice a client that hung up) and
 * asks again, ending the stream when the client is gone, when tld_http_stop
 * runs, or when fn has produced nothing for timeout_s (the idle timeout,
 * as for any connection; Server-Sent Event handlers send comments to keep a
 * quiet stream open). The stopping flag is read between calls of fn, so fn
 * must not block for long: tld_http_stop waits for it.
 *
 * Logging: to stderr with a "tokenlabd http: " prefix, unless the variable
 * TL_HTTP_QUIET is set in the environment when tld_http_new runs (tests).
 */
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

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

    pthread_mutex_t counter_mu;
    http_counter counters[HTTP_NCOUNTERS];
    int ncounters;

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

/* ------------------------------------------------------------------ helpers */

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static void http_vlog(tld_http *h, const char *fmt, va_list ap) {
    char msg[HTTP_LOG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    for (size_t i = 0; i < n; i++) /* paths come from clients: one line per message */
        if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7F) msg[i] = '?';
    pthread_mutex_lock(&h->log_mu);
    memcpy(h->last_log, msg, n + 1);
    pthread_mutex_unlock(&h->log_mu);
    if (!h->quiet) fprintf(stderr, "tokenlabd http: %s\n", msg);
}

static void http_log(tld_http *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void http_log(tld_http *h, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    http_vlog(h, fmt, ap);
    va_end(ap);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    http_vlog(cls, fmt, ap);
}

/* Splits an absolute path, in place, at '/'. "/" has no segments; empty
 * segments ("//", a trailing '/') are kept so they match nothing. -1 if p is
 * not absolute or has more than max segments. */
static int split_path(char *p, char **segs, int max) {
    if (p[0] != '/') return -1;
    if (p[1] == '\0') return 0;
    int n = 0;
    char *s = p + 1;
    for (;;) {
        if (n == max) return -1;
        segs[n++] = s;
        char *slash = strchr(s, '/');
        if (!slash) break;
        *slash = '\0';
        s = slash + 1;
    }
    return n;
}

/* Constant time in the configured token's length and contents. */
static int token_equal(const char *given, size_t glen, const char *want, size_t wlen) {
    volatile unsigned char diff = (unsigned char)(glen != wlen);
    for (size_t i = 0; i < wlen; i++) {
        unsigned char g = i < glen ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)want[i]);
    }
    return diff == 0;
}

/* Length of the valid UTF-8 sequence at s (1..4), 0 if s starts an invalid one. */
static int utf8_len(const unsigned char *s) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    unsigned char lo = 0x80, hi = 0xBF;
    int n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return n;
}

/* Writes s as a quoted JSON string at out, which must hold 6 * strlen(s) + 3
 * bytes; invalid UTF-8 becomes U+FFFD. Returns the characters written (no NUL). */
static size_t json_quote(char *out, const char *s) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    out[o++] = '"';
    while (*p) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
            p++;
        } else if (c < 0x20 || c == 0x7F) {
            out[o++] = '\\';
            switch (c) {
            case '\n': out[o++] = 'n'; break;
            case '\r': out[o++] = 'r'; break;
            case '\t': out[o++] = 't'; break;
            case '\b': out[o++] = 'b'; break;
            case '\f': out[o++] = 'f'; break;
            default:
                out[o++] = 'u';
                out[o++] = '0';
                out[o++] = '0';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            }
            p++;
        } else {
            int n = utf8_len(p);
            if (n == 0) {
                memcpy(out + o, "\\ufffd", 6);
                o += 6;
                p++;
            } else {
                memcpy(out + o, p, (size_t)n);
                o += (size_t)n;
                p += n;
            }
        }
    }
    out[o++] = '"';
    out[o] = '\0';
    return o;
}

/* A header value or name that could split the response. */
static int header_unsafe(const char *s) {
    for (; *s; s++)
        if (*s == '\r' || *s == '\n') return 1;
    return 0;
}

/* ------------------------------------------------------------------ counters */

static const char *method_label(const char *m) {
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(m, known[i]) == 0) return known[i];
    return "OTHER";
}

static void count_request(tld_http *h, const char *method, const char *route, int status) {
    const char *m = method_label(method);
    pthread_mutex_lock(&h->counter_mu);
    http_counter *c = NULL;
    for (int i = 0; i < h->ncounters; i++) {
        http_counter *e = &h->counters[i];
        if (e->status == status && strcmp(e->method, m) == 0 && strcmp(e->route, route) == 0) {
            c = e;
            break;
        }
    }
    if (!c) {
        if (h->ncounters < HTTP_NCOUNTERS - 1) {
            c = &h->counters[h->ncounters++];
            snprintf(c->method, sizeof c->method, "%s", m);
            c->route = route;
            c->status = status;
        } else {
            c = &h->counters[HTTP_NCOUNTERS - 1]; /* overflow slot */
            if (!c->route) {
                snprintf(c->method, sizeof c->method, "OTHER");
                c->route = "overflow";
                c->status = 0;
            }
        }
    }
    c->n++;
    pthread_mutex_unlock(&h->counter_mu);
}

void tld_http_counters(tld_http *h, void (*fn)(const char *method, const char *route, int status, uint64_t n, void *u),
                      void *u) {
    if (!h || !fn) return;
    http_counter copy[HTTP_NCOUNTERS];
    int n;
    pthread_mutex_lock(&h->counter_mu);
    n = h->ncounters;
    memcpy(copy, h->counters, sizeof copy);
    pthread_mutex_unlock(&h->counter_mu);
    for (int i = 0; i < n; i++) fn(copy[i].method, copy[i].route, copy[i].status, copy[i].n, u);
    if (copy[HTTP_NCOUNTERS - 1].route)
        fn(copy[HTTP_NCOUNTERS - 1].method, copy[HTTP_NCOUNTERS - 1].route, copy[HTTP_NCOUNTERS - 1].status,
           copy[HTTP_NCOUNTERS - 1].n, u);
}

/* ------------------------------------------------------------------ server object */

static int add_host(char ***hosts, int *n, const char *name) {
    char *copy;
    if (strchr(name, ':') && name[0] != '[') { /* IPv6 literal: Host carries it in brackets */
        size_t len = strlen(name);
        copy = malloc(len + 3);
        if (copy) snprintf(copy, len + 3, "[%s]", name);
    } else {
        copy = xstrdup(name);
    }
    if (!copy) return -1;
    char **grown = realloc(*hosts, (size_t)(*n + 2) * sizeof(char *));
    if (!grown) {
        free(copy);
        return -1;
    }
    grown[(*n)++] = copy;
    grown[*n] = NULL;
    *hosts = grown;
    return 0;
}

tld_http *tld_http_new(const tld_http_cfg *cfg, char *err, size_t errlen) {
    if (!cfg) {
        seterr(err, errlen, "no HTTP configuration");
        return NULL;
    }
    const char *bind = cfg->bind_addr && cfg->bind_addr[0] ? cfg->bind_addr : "127.0.0.1";
    if (cfg->port < 0 || cfg->port > 65535) {
        seterr(err, errlen, "port %d is out of range (0..65535)", cfg->port);
        return NULL;
    }
    tld_http *h = calloc(1, sizeof *h);
    if (!h) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&h->counter_mu, NULL);
    pthread_mutex_init(&h->log_mu, NULL);
    atomic_init(&h->stopping, 0);
    h->quiet = getenv("TL_HTTP_QUIET") != NULL;
    h->port = cfg->port;
    h->max_connections = cfg->max_connections > 0 ? cfg->max_connections : HTTP_DEFAULT_CONNECTIONS;
    h->timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : HTTP_DEFAULT_TIMEOUT_S;
    h->max_body = cfg->max_body > 0 ? cfg->max_body : HTTP_DEFAULT_MAX_BODY;
    if (h->max_body > SIZE_MAX / 4) h->max_body = SIZE_MAX / 4;

    const char *addr_text = strcmp(bind, "localhost") == 0 ? "127.0.0.1" : bind;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&h->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&h->addr;
    if (inet_pton(AF_INET, addr_text, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)cfg->port);
        h->addrlen = sizeof *v4;
    } else if (inet_pton(AF_INET6, addr_text, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)cfg->port);
        h->addrlen = sizeof *v6;
        h->ipv6 = 1;
    } else {
        seterr(err, errlen, "bind address '%s' is not a numeric IPv4 or IPv6 address", bind);
        goto fail;
    }

    h->bind_addr = xstrdup(bind);
    if (!h->bind_addr) goto oom;
    if (cfg->token && cfg->token[0]) {
        h->token = xstrdup(cfg->token);
        if (!h->token) goto oom;
        h->token_len = strlen(h->token);
    }
    int nhosts = 0;
    static const char *const local_names[] = {"localhost", "127.0.0.1", "[::1]"};
    if (add_host(&h->hosts, &nhosts, bind) != 0) goto oom;
    for (size_t i = 0; i < sizeof local_names / sizeof local_names[0]; i++)
        if (add_host(&h->hosts, &nhosts, local_names[i]) != 0) goto oom;
    for (const char *const *e = cfg->extra_hosts; e && *e; e++) {
        if (!(*e)[0]) continue;
        if (add_host(&h->hosts, &nhosts, *e) != 0) goto oom;
    }
    return h;
oom:
    seterr(err, errlen, "out of memory");
fail:
    tld_http_free(h);
    return NULL;
}

int tld_http_route(tld_http *h, const char *method, const char *pattern, tld_auth auth, tld_handler fn, void *user) {
    return tld_http_route_limit(h, method, pattern, auth, fn, user, 0);
}

int tld_http_route_limit(tld_http *h, const char *method, const char *pattern, tld_auth auth, tld_handler fn, void *user,
                        size_t max_body) {
    if (!h || !method || !pattern || !fn || h->daemon) return -1;
    size_t mlen = strlen(method);
    if (mlen == 0 || mlen >= HTTP_MAX_METHOD) return -1;
    if (auth != TLD_AUTH_PUBLIC && auth != TLD_AUTH_TOKEN) return -1;
    if (h->nroutes == h->route_cap) {
        int cap = h->route_cap ? h->route_cap * 2 : 16;
        http_route *grown = realloc(h->routes, (size_t)cap * sizeof *grown);
        if (!grown) return -1;
        h->routes = grown;
        h->route_cap = cap;
    }
    http_route rt;
    memset(&rt, 0, sizeof rt);
    memcpy(rt.method, method, mlen + 1);
    rt.pattern = xstrdup(pattern);
    rt.segbuf = xstrdup(pattern);
    if (!rt.pattern || !rt.segbuf) goto fail;
    rt.nsegs = split_path(rt.segbuf, rt.segs, HTTP_MAX_SEGS);
    if (rt.nsegs < 0) goto fail;
    int nparams = 0;
    for (int i = 0; i < rt.nsegs; i++) {
        char *s = rt.segs[i];
        size_t n = strlen(s);
        if (n == 0) goto fail;
        if (s[0] == '{') {
            if (n < 3 || s[n - 1] != '}' || ++nparams > HTTP_MAX_PARAMS) goto fail;
            s[n - 1] = '\0';
            rt.segs[i] = s + 1;
            if (strpbrk(rt.segs[i], "{}")) goto fail;
            rt.is_param[i] = 1;
        } else {
            if (strpbrk(s, "{}")) goto fail;
            rt.literal_mask |= (uint32_t)1 << (31 - i);
        }
    }
    rt.auth = auth;
    rt.fn = fn;
    rt.user = user;
    rt.max_body = max_body > 0 && max_body <= SIZE_MAX / 4 ? max_body : 0;
    h->routes[h->nroutes++] = rt;
    return 0;
fail:
    free(rt.pattern);
    free(rt.segbuf);
    return -1;
}

int tld_http_fallback(tld_http *h, tld_handler fn, void *user) {
    if (!h || h->daemon) return -1;
    h->fallback = fn;
    h->fallback_user = user;
    return 0;
}

/* ------------------------------------------------------------------ replies */

static void reply_set(tld_req *r, int status, struct MHD_Response *resp, const char *content_type) {
    if (!resp) {
        http_log(r->h, "%s %s: out of memory building a %d reply", r->method, r->path ? r->path : "?", status);
        return;
    }
    int ok = 1;
    if (content_type) ok &= MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES;
    for (int i = 0; i < r->nheaders; i++) {
        const char *n = r->hnames[i];
        if (strcasecmp(n, MHD_HTTP_HEADER_CONTENT_TYPE) == 0 || strcasecmp(n, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0 ||
            strcasecmp(n, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0 || strcasecmp(n, MHD_HTTP_HEADER_CONNECTION) == 0)
            continue; /* set by the reply function or by MHD */
        ok &= MHD_add_response_header(resp, n, r->hvals[i]) == MHD_YES;
    }
    if (!MHD_get_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL))
        ok &= MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") == MHD_YES;
    if (!MHD_get_response_header(resp, "X-Content-Type-Options"))
        ok &= MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff") == MHD_YES;
    if (!ok) http_log(r->h, "%s %s: a reply header was refused", r->method, r->path ? r->path : "?");
    r->resp = resp;
    r->status = status;
}

/* First reply wins; a second is a handler bug, logged. */
static int reply_begin(tld_req *r, int *status) {
    if (r->replied) {
        http_log(r->h, "%s %s: second reply (%d) ignored", r->method, r->path ? r->path : "?", *status);
        return -1;
    }
    r->replied = 1;
    if (*status < 100 || *status > 599) {
        http_log(r->h, "%s %s: invalid status %d replaced by 500", r->method, r->path ? r->path : "?", *status);
        *status = 500;
    }
    return 0;
}

void tld_reply_header(tld_req *r, const char *name, const char *value) {
    if (!r || !name || !value) return;
    if (!name[0] || header_unsafe(name) || header_unsafe(value) || strchr(name, ':')) {
        http_log(r->h, "%s %s: unsafe reply header '%s' dropped", r->method, r->path ? r->path : "?", name);
        return;
    }
    if (r->nheaders == HTTP_MAX_REPLY_HEADERS) {
        http_log(r->h, "%s %s: too many reply headers, '%s' dropped", r->method, r->path ? r->path : "?", name);
        return;
    }
    char *n = xstrdup(name), *v = xstrdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        http_log(r->h, "out of memory adding reply header '%s'", name);
        return;
    }
    r->hnames[r->nheaders] = n;
    r->hvals[r->nheaders] = v;
    r->nheaders++;
}

void tld_reply_bytes(tld_req *r, int status, const char *content_type, const void *data, size_t len) {
    if (!r || reply_begin(r, &status) != 0) return;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(data ? len : 0, (void *)(data ? data : ""), MHD_RESPMEM_MUST_COPY);
    reply_set(r, status, resp, content_type);
}

void tld_reply_json(tld_req *r, int status, const char *json) {
    tld_reply_bytes(r, status, "application/json", json, json ? strlen(json) : 0);
}

/* The problem document, malloc'd; NULL when out of memory. */
static char *problem_json(int status, const char *code, const char *pointer, const char *detail, size_t *len) {
    const char *title = MHD_get_reason_phrase_for((unsigned)status);
    if (!title || !title[0]) title = "Unknown";
    if (!code) code = "ERROR";
    size_t cap = 128 + 6 * (strlen(title) + strlen(code) + strlen(detail) + (pointer ? strlen(pointer) : 0)) + 16;
    char *out = malloc(cap);
    if (!out) return NULL;
    size_t o = 0;
    o += (size_t)snprintf(out + o, cap - o, "{\"type\":\"about:blank\",\"title\":");
    o += json_quote(out + o, title);
    o += (size_t)snprintf(out + o, cap - o, ",\"status\":%d,\"code\":", status);
    o += json_quote(out + o, code);
    o += (size_t)snprintf(out + o, cap - o, ",\"detail\":");
    o += json_quote(out + o, detail);
    if (pointer) {
        o += (size_t)snprintf(out + o, cap - o, ",\"pointer\":");
        o += json_quote(out + o, pointer);
    }
    o += (size_t)snprintf(out + o, cap - o, "}");
    *len = o;
    return out;
}

static void reply_problem_text(tld_req *r, int status, const char *code, const char *pointer, const char *detail) {
    if (reply_begin(r, &status) != 0) return;
    size_t len = 0;
    char *doc = problem_json(status, code, pointer, detail, &len);
    struct MHD_Response *resp = NULL;
    if (doc) {
        resp = MHD_create_response_from_buffer_with_free_callback(len, doc, free);
        if (!resp) free(doc);
    }
    reply_set(r, status, resp, "application/problem+json");
}

void tld_reply_problem(tld_req *r, int status, const char *code, const char *pointer, const char *fmt, ...) {
    if (!r) return;
    char detail[HTTP_DETAIL_MAX];
    detail[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    reply_problem_text(r, status, code, pointer, detail);
}

static void peer_wait(int fd, int ms, int *gone) {
    if (fd < 0) {
        struct timespec ts = {0, (long)ms * 1000000L};
        nanosleep(&ts, NULL);
        return;
    }
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    int n = poll(&p, 1, ms);
    if (n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) *gone = 1;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    http_stream *s = cls;
    double since = now_s();
    for (;;) {
        if (atomic_load(&s->h->stopping)) return MHD_CONTENT_READER_END_WITH_ERROR;
        long n = s->fn(s->state, pos, buf, max);
        if (n > 0) {
            if ((size_t)n > max) {
                http_log(s->h, "stream function returned %ld bytes for a %zu-byte buffer", n, max);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            return (ssize_t)n;
        }
        if (n == -1) return MHD_CONTENT_READER_END_OF_STREAM;
        if (n < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (now_s() - since >= (double)s->h->timeout_s) return MHD_CONTENT_READER_END_WITH_ERROR; /* idle */
        int gone = 0;
        peer_wait(s->fd, HTTP_STREAM_PAUSE_MS, &gone);
        if (gone) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static void stream_free(void *cls) {
    http_stream *s = cls;
    if (s->free_fn) s->free_fn(s->state);
    free(s);
}

void tld_reply_stream(tld_req *r, int status, const char *content_type, tld_stream_fn fn, void *state,
                     void (*free_fn)(void *state)) {
    if (!r) {
        if (free_fn) free_fn(state);
        return;
    }
    if (!fn) {
        http_log(r->h, "%s %s: stream reply without a function", r->method, r->path ? r->path : "?");
        if (free_fn) free_fn(state);
        reply_problem_text(r, 500, "INTERNAL", NULL, "internal error");
        return;
    }
    if (reply_begin(r, &status) != 0) {
        if (free_fn) free_fn(state);
        return;
    }
    http_stream *s = calloc(1, sizeof *s);
    if (!s) {
        if (free_fn) free_fn(state);
        http_log(r->h, "%s %s: out of memory starting a stream", r->method, r->path ? r->path : "?");
        return;
    }
    s->h = r->h;
    s->fn = fn;
    s->state = state;
    s->free_fn = free_fn;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->fd = ci ? ci->connect_fd : -1;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK, stream_read, s, stream_free);
    if (!resp) stream_free(s);
    reply_set(r, status, resp, content_type);
}

/* ------------------------------------------------------------------ requests */

const char *tld_req_method(const tld_req *r) {
    return r ? r->method_full : NULL;
}

const char *tld_req_path(const tld_req *r) {
    return r ? r->path : NULL;
}

const char *tld_req_param(const tld_req *r, const char *name) {
    if (!r || !name) return NULL;
    for (int i = 0; i < r->nparams; i++)
        if (strcmp(r->pnames[i], name) == 0) return r->pvals[i];
    return NULL;
}

const char *tld_req_query(const tld_req *r, const char *name) {
    if (!r || !name) return NULL;
    const char *v = NULL;
    size_t vlen = 0;
    if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &v, &vlen) != MHD_YES)
        return NULL;
    return v ? v : ""; /* "?flag" without a value */
}

const char *tld_req_header(const tld_req *r, const char *name) {
    if (!r || !name) return NULL;
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *tld_req_body(const tld_req *r, size_t *len) {
    if (len) *len = r && r->body ? r->body_len : 0;
    return r && r->body ? r->body : "";
}

static void req_free(tld_req *r) {
    if (!r) return;
    if (r->resp) MHD_destroy_response(r->resp);
    for (int i = 0; i < r->nheaders; i++) {
        free(r->hnames[i]);
        free(r->hvals[i]);
    }
    free(r->body);
    free(r->path);
    free(r->segbuf);
    free(r);
}

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0) (*(int *)cls)++;
    return MHD_YES;
}

/* 0: allowed; otherwise the problem has been set on r. */
static int check_host(tld_req *r) {
    int count = 0;
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_header, &count);
    const char *host = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (count == 0 || !host) {
        reply_problem_text(r, 400, "BAD_REQUEST", NULL, "the Host header is required");
        return -1;
    }
    if (count > 1) {
        reply_problem_text(r, 400, "BAD_REQUEST", NULL, "more than one Host header");
        return -1;
    }
    size_t len = strlen(host);
    const char *colon = NULL;
    if (host[0] == '[') {
        const char *rb = strchr(host, ']');
        if (!rb) goto refuse;
        if (rb[1] == ':') colon = rb + 1;
        else if (rb[1] != '\0') goto refuse;
    } else {
        colon = strchr(host, ':');
        if (colon && strchr(colon + 1, ':')) goto refuse;
    }
    size_t hlen = colon ? (size_t)(colon - host) : len;
    if (colon) {
        size_t plen = len - hlen - 1;
        if (plen == 0 || plen > 5 || strspn(colon + 1, "0123456789") != plen) goto refuse;
    }
    if (hlen > 0)
        for (char **a = r->h->hosts; *a; a++)
            if (strlen(*a) == hlen && strncasecmp(*a, host, hlen) == 0) return 0;
refuse:
    reply_problem_text(r, 403, "HOST_NOT_ALLOWED", NULL, "this server answers only to its own address or localhost");
    return -1;
}

/* The most specific route for method and the split path, or NULL. */
static const http_route *find_route(const tld_http *h, const char *method, char *const *segs, int nsegs) {
    const http_route *best = NULL;
    for (int i = 0; i < h->nroutes; i++) {
        const http_route *rt = &h->routes[i];
        if (rt->nsegs != nsegs || strcmp(rt->method, method) != 0) continue;
        int ok = 1;
        for (int k = 0; k < nsegs && ok; k++)
            ok = rt->is_param[k] ? segs[k][0] != '\0' : strcmp(rt->segs[k], segs[k]) == 0;
        if (ok && (!best || rt->literal_mask > best->literal_mask)) best = rt;
    }
    return best;
}

/* "GET, HEAD, POST": the methods of the routes matching the path; "" if none. */
static void allowed_methods(const tld_http *h, char *const *segs, int nsegs, char *out, size_t outlen) {
    size_t o = 0;
    out[0] = '\0';
    int has_get = 0, has_head = 0;
    for (int i = 0; i < h->nroutes; i++) {
        const http_route *rt = &h->routes[i];
        if (rt->nsegs != nsegs) continue;
        int ok = 1;
        for (int k = 0; k < nsegs && ok; k++)
            ok = rt->is_param[k] ? segs[k][0] != '\0' : strcmp(rt->segs[k], segs[k]) == 0;
        if (!ok) continue;
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) {
            const http_route *p = &h->routes[j];
            if (strcmp(p->method, rt->method) != 0 || p->nsegs != nsegs) continue;
            int pok = 1;
            for (int k = 0; k < nsegs && pok; k++)
                pok = p->is_param[k] ? segs[k][0] != '\0' : strcmp(p->segs[k], segs[k]) == 0;
            seen = pok;
        }
        if (seen) continue;
        has_get |= strcmp(rt->method, "GET") == 0;
        has_head |= strcmp(rt->method, "HEAD") == 0;
        int w = snprintf(out + o, outlen - o, "%s%s", o ? ", " : "", rt->method);
        if (w < 0 || (size_t)w >= outlen - o) return;
        o += (size_t)w;
    }
    if (has_get && !has_head) snprintf(out + o, outlen - o, ", HEAD");
}

/* Routing and the checks before the body; 0 to go on, -1 with a problem set on r. */
static int admit(tld_req *r) {
    tld_http *h = r->h;
    if (check_host(r) != 0) return -1;

    const http_route *rt = NULL;
    if (r->nsegs >= 0) {
        rt = find_route(h, r->method_full, r->segs, r->nsegs);
        if (!rt && strcmp(r->method_full, "HEAD") == 0) rt = find_route(h, "GET", r->segs, r->nsegs);
    }
    r->max_body = rt && rt->max_body ? rt->max_body : h->max_body;
    if (rt) {
        r->route = rt;
        r->label = rt->pattern;
        r->fn = rt->fn;
        r->user = rt->user;
        for (int k = 0; k < rt->nsegs; k++) {
            if (!rt->is_param[k]) continue;
            r->pnames[r->nparams] = rt->segs[k];
            r->pvals[r->nparams] = r->segs[k];
            r->nparams++;
        }
    } else {
        char allow[256] = "";
        if (r->nsegs >= 0) allowed_methods(h, r->segs, r->nsegs, allow, sizeof allow);
        if (allow[0]) {
            tld_reply_header(r, MHD_HTTP_HEADER_ALLOW, allow);
            reply_problem_text(r, 405, "METHOD_NOT_ALLOWED", NULL, "this resource does not support the method");
            return -1;
        }
        if (!h->fallback) {
            reply_problem_text(r, 404, "NOT_FOUND", NULL, "no such resource");
            return -1;
        }
        r->label = "fallback";
        r->fn = h->fallback;
        r->user = h->fallback_user;
    }

    if (rt && rt->auth == TLD_AUTH_TOKEN) {
        const char *auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        const char *tok = NULL;
        size_t toklen = 0;
        if (auth) {
            while (*auth == ' ' || *auth == '\t') auth++;
            if (strncasecmp(auth, "Bearer", 6) == 0 && (auth[6] == ' ' || auth[6] == '\t')) {
                tok = auth + 7;
                while (*tok == ' ' || *tok == '\t') tok++;
                toklen = strlen(tok);
                while (toklen > 0 && (tok[toklen - 1] == ' ' || tok[toklen - 1] == '\t')) toklen--;
                if (toklen == 0) tok = NULL;
            }
        }
        if (!tok) {
            tld_reply_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
            reply_problem_text(r, 401, "UNAUTHENTICATED", NULL, "this request needs an Authorization: Bearer token");
            return -1;
        }
        if (!h->token || !token_equal(tok, toklen, h->token, h->token_len)) {
            reply_problem_text(r, 403, "FORBIDDEN", NULL, "the bearer token is not valid");
            return -1;
        }
    }

    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && cl[0] && strspn(cl, "0123456789") == strlen(cl)) {
        errno = 0;
        unsigned long long n = strtoull(cl, NULL, 10);
        if (errno == ERANGE || n > (unsigned long long)r->max_body) {
            tld_reply_problem(r, 413, "BODY_TOO_LARGE", NULL, "the request body is larger than %zu bytes", r->max_body);
            return -1;
        }
        if (n > 0) { /* the exact size up to 1 MiB, so small bodies are never copied while they grow */
            size_t cap = (size_t)(n < HTTP_BODY_PREALLOC ? n : HTTP_BODY_PREALLOC) + 1;
            r->body = malloc(cap);
            if (r->body) {
                r->body_cap = cap;
                r->body[0] = '\0';
            }
        }
    }
    return 0;
}

static int body_append(tld_req *r, const char *data, size_t n) {
    size_t need = r->body_len + n + 1;
    if (need > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < need) cap *= 2;
        if (cap > r->max_body + 1) cap = r->max_body + 1;
        char *grown = realloc(r->body, cap);
        if (!grown) return -1;
        r->body = grown;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

/* Mid-upload 413 (see the top of the file): written to the socket, then
 * the write side is shut down. */
static void reject_upload(tld_req *r) {
    tld_http *h = r->h;
    char detail[128];
    snprintf(detail, sizeof detail, "the request body is larger than %zu bytes", r->max_body);
    size_t len = 0;
    char *doc = problem_json(413, "BODY_TOO_LARGE", NULL, detail, &len);
    count_request(h, r->method, r->label, 413);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!doc || !ci) goto done;
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 413 %s\r\nContent-Type: application/problem+json\r\nCache-Control: no-store\r\n"
                      "X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n",
                      MHD_get_reason_phrase_for(413), len);
    if (hl < 0 || (size_t)hl >= sizeof head) goto done;
    const char *parts[2] = {head, doc};
    size_t lens[2] = {(size_t)hl, len};
    int fd = ci->connect_fd;
    for (int i = 0; i < 2; i++) {
        size_t off = 0;
        while (off < lens[i]) {
            ssize_t w = send(fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                off += (size_t)w;
            } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                if (poll(&p, 1, 1000) <= 0) goto done;
            } else {
                goto done;
            }
        }
    }
    shutdown(fd, SHUT_WR);
done:
    free(doc);
}

static enum MHD_Result queue_reply(tld_req *r) {
    if (!r->resp) return MHD_NO; /* out of memory: close the connection */
    count_request(r->h, r->method, r->label, r->status);
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    tld_http *h = cls;
    tld_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *con_cls = r;
        r->h = h;
        r->conn = conn;
        r->method_full = method;
        snprintf(r->method, sizeof r->method, "%s", method);
        r->label = "unmatched";
        r->path = xstrdup(url ? url : "");
        r->segbuf = xstrdup(url ? url : "");
        if (!r->path || !r->segbuf) return MHD_NO;
        r->nsegs = split_path(r->segbuf, r->segs, HTTP_MAX_SEGS);
        if (admit(r) != 0) return queue_reply(r);
        return MHD_YES;
    }

    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->too_large) { /* let the client read the 413 before closing, within bounds */
            r->dropped += n;
            return r->dropped > HTTP_DRAIN_MAX || now_s() - r->rejected_at > HTTP_DRAIN_S ? MHD_NO : MHD_YES;
        }
        if (n > r->max_body - r->body_len) {
            r->too_large = 1;
            r->rejected_at = now_s();
            reject_upload(r);
            return MHD_YES;
        }
        if (body_append(r, upload_data, n) != 0) {
            http_log(h, "%s %s: out of memory receiving the body", r->method, r->path);
            return MHD_NO;
        }
        return MHD_YES;
    }

    if (r->too_large) return MHD_NO; /* the 413 went out already */
    r->fn(r, r->user);
    if (!r->replied) {
        http_log(h, "%s %s: the handler returned without replying", r->method, r->path);
        for (int i = 0; i < r->nheaders; i++) { /* meant for a reply that never came */
            free(r->hnames[i]);
            free(r->hvals[i]);
        }
        r->nheaders = 0;
        reply_problem_text(r, 500, "INTERNAL", NULL, "internal error");
    }
    return queue_reply(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    req_free(*con_cls);
    *con_cls = NULL;
}

/* ------------------------------------------------------------------ lifecycle */

int tld_http_start(tld_http *h, char *err, size_t errlen) {
    if (!h) return -1;
    if (h->daemon) {
        seterr(err, errlen, "the HTTP server is already running");
        return -1;
    }
    atomic_store(&h->stopping, 0);
    pthread_mutex_lock(&h->log_mu);
    h->last_log[0] = '\0';
    pthread_mutex_unlock(&h->log_mu);
    unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                         MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (h->ipv6) flags |= MHD_USE_IPv6;
    /* The logger first, or MHD logs the options before it to its own logger. */
    h->daemon = MHD_start_daemon(flags, (uint16_t)h->port, NULL, NULL, on_request, h,
                                 MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, h,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&h->addr,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)h->timeout_s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned int)h->max_connections,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, HTTP_MEMORY_LIMIT,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                                 MHD_OPTION_END);
    if (!h->daemon) {
        int e = errno;
        pthread_mutex_lock(&h->log_mu);
        if (h->last_log[0])
            seterr(err, errlen, "cannot serve HTTP on %s:%d: %s", h->bind_addr, h->port, h->last_log);
        else
            seterr(err, errlen, "cannot serve HTTP on %s:%d: %s", h->bind_addr, h->port, strerror(e));
        pthread_mutex_unlock(&h->log_mu);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (di && di->port) h->port = di->port;
    return 0;
}

int tld_http_port(const tld_http *h) {
    return h ? h->port : 0;
}

void tld_http_stop(tld_http *h) {
    if (!h || !h->daemon) return;
    atomic_store(&h->stopping, 1); /* streams waiting for data end */
    MHD_stop_daemon(h->daemon);    /* closes the connections and joins their threads */
    h->daemon = NULL;
}

void tld_http_free(tld_http *h) {
    if (!h) return;
    tld_http_stop(h);
    for (int i = 0; i < h->nroutes; i++) {
        free(h->routes[i].pattern);
        free(h->routes[i].segbuf);
    }
    free(h->routes);
    for (char **a = h->hosts; a && *a; a++) free(*a);
    free(h->hosts);
    free(h->token);
    free(h->bind_addr);
    pthread_mutex_destroy(&h->counter_mu);
    pthread_mutex_destroy(&h->log_mu);
    free(h);
}
