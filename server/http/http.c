/*
 * http.c: tokenlabd's HTTP layer on libmicrohttpd 0.9.75 (interface: http.h;
 * routes in http_route.c, replies in http_reply.c, streams in http_stream.c,
 * shared internals in http_internal.h).
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
 *   - (http_conn.c) the handler pool, the parked streams, the connection
 *     registry and the ticker thread.
 * Threads: tld_http_new/route/fallback/start/stop/free/port run on the
 * owner's thread. MHD runs HTTP_EVENT_THREADS event loops (epoll) that share
 * the connections; they run the access handler and the stream readers. A
 * request's handler runs on a handler thread (http_conn.c) while its
 * connection is suspended, and the event loop queues the reply once the
 * connection is resumed: a tld_req passes from one thread to the next, never
 * used by two at once. Shared between threads: the configuration and routes
 * (read-only while started), the counters, timings and refusals
 * (counter_mu), the last log line (log_mu), the stopping flag (atomic) and
 * what http_conn.c guards.
 *
 * Connections: up to max_connections are held (MHD accepts
 * HTTP_MARGIN_CONNECTIONS more, answered 503 TOO_MANY_CONNECTIONS and
 * closed), at most per_client from one address (MHD closes more). A
 * connection waiting for a request's headers longer than header_timeout_s,
 * or for a body past its deadline (the idle timeout plus its announced size
 * at HTTP_BODY_MIN_RATE), has its socket shut down by the ticker; MHD's idle
 * timeout covers the rest.
 *
 * A request, in the access handler:
 *   first call: Host (missing or repeated: 400 BAD_REQUEST; not bind_addr,
 *     localhost, 127.0.0.1, [::1] or an extra host: 403 HOST_NOT_ALLOWED),
 *     done before routing so a page on a rebound name learns nothing, then
 *     the route (404 NOT_FOUND; 405 METHOD_NOT_ALLOWED with Allow if another
 *     method has the path), the bearer token of TLD_AUTH_TOKEN routes, and
 *     of every route off loopback without public_read (401 UNAUTHENTICATED
 *     with WWW-Authenticate: Bearer; 403 FORBIDDEN; a read-only token, asked
 *     of cfg.read_token, opens the public routes and gets 403
 *     READ_ONLY_TOKEN on TLD_AUTH_TOKEN ones), and
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
 * Streams: MHD calls the reader on an event-loop thread, so fn must not
 * block. When fn has nothing, the stream is parked: its connection is
 * suspended (no thread, no polling) until tld_http_wake / tld_http_wake_key
 * (events were published), its tick (HTTP_TICK_S, the SSE heartbeat), its
 * idle deadline, or its client hanging up (the ticker polls the parked
 * sockets once a second). It ends when fn says so, when the client is gone,
 * when tld_http_stop runs, or when fn has produced nothing for timeout_s
 * (Server-Sent Event handlers send comments to keep a quiet stream open).
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

#include "http/http_internal.h"
#include "tokenlab/base.h"

char *tld_http_strdup(const char *s) {
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

void tld_http_log(tld_http *h, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    http_vlog(h, fmt, ap);
    va_end(ap);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    http_vlog(cls, fmt, ap);
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

static const char *method_label(const char *m) {
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(m, known[i]) == 0) return known[i];
    return "OTHER";
}

/* The timing slot of (m, route) (counter_mu held): the last slot takes what does not fit. */
static http_timing *timing_slot(tld_http *h, const char *m, const char *route) {
    for (int i = 0; i < h->ntimings; i++)
        if (strcmp(h->timings[i].method, m) == 0 && strcmp(h->timings[i].route, route) == 0) return &h->timings[i];
    http_timing *t = h->ntimings < HTTP_NCOUNTERS - 1 ? &h->timings[h->ntimings++] : &h->timings[HTTP_NCOUNTERS - 1];
    if (!t->route) {
        int overflow = t == &h->timings[HTTP_NCOUNTERS - 1];
        snprintf(t->method, sizeof t->method, "%s", overflow ? "OTHER" : m);
        t->route = overflow ? "overflow" : route;
    }
    return t;
}

/* Counts a refused request by its problem code (counter_mu held). */
static void count_refusal(tld_http *h, const char *code) {
    for (int i = 0; i < h->nrefusals; i++)
        if (strcmp(h->refusals[i].code, code) == 0) {
            h->refusals[i].n++;
            return;
        }
    http_refusal *f = h->nrefusals < HTTP_NREFUSALS - 1 ? &h->refusals[h->nrefusals++] : &h->refusals[HTTP_NREFUSALS - 1];
    if (!f->code[0]) snprintf(f->code, sizeof f->code, "%s", f == &h->refusals[HTTP_NREFUSALS - 1] ? "OTHER" : code);
    f->n++;
}

/* A reply is about to be queued: its duration and, for a problem, its code. */
static void time_request(tld_http *h, const tld_req *r, const char *code) {
    const char *m = method_label(r->method);
    double dt = tl_clock_mono_s() - r->t0;
    pthread_mutex_lock(&h->counter_mu);
    tld_hist_observe(&timing_slot(h, m, r->label)->hist, dt);
    if (code && code[0]) count_refusal(h, code);
    pthread_mutex_unlock(&h->counter_mu);
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

void tld_http_timings(tld_http *h, void (*fn)(const char *method, const char *route, const tld_hist *hist, void *u),
                     void *u) {
    if (!h || !fn) return;
    int n;
    http_timing *copy = malloc(sizeof h->timings);
    if (!copy) return;
    pthread_mutex_lock(&h->counter_mu);
    n = h->ntimings;
    memcpy(copy, h->timings, sizeof h->timings);
    pthread_mutex_unlock(&h->counter_mu);
    for (int i = 0; i < n; i++) fn(copy[i].method, copy[i].route, &copy[i].hist, u);
    if (n < HTTP_NCOUNTERS && copy[HTTP_NCOUNTERS - 1].route)
        fn(copy[HTTP_NCOUNTERS - 1].method, copy[HTTP_NCOUNTERS - 1].route, &copy[HTTP_NCOUNTERS - 1].hist, u);
    free(copy);
}

void tld_http_refusals(tld_http *h, void (*fn)(const char *code, uint64_t n, void *u), void *u) {
    if (!h || !fn) return;
    http_refusal copy[HTTP_NREFUSALS];
    pthread_mutex_lock(&h->counter_mu);
    int n = h->nrefusals;
    memcpy(copy, h->refusals, sizeof copy);
    pthread_mutex_unlock(&h->counter_mu);
    for (int i = 0; i < n; i++) fn(copy[i].code, copy[i].n, u);
    if (n < HTTP_NREFUSALS && copy[HTTP_NREFUSALS - 1].code[0]) fn(copy[HTTP_NREFUSALS - 1].code, copy[HTTP_NREFUSALS - 1].n, u);
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

/* Appends a copy of str to the NULL-terminated list (*n entries). 0, or -1 when memory runs out. */
static int add_string(char ***list, int *n, const char *str) {
    char *copy = tld_http_strdup(str);
    if (!copy) return -1;
    char **grown = realloc(*list, (size_t)(*n + 2) * sizeof(char *));
    if (!grown) {
        free(copy);
        return -1;
    }
    grown[(*n)++] = copy;
    grown[*n] = NULL;
    *list = grown;
    return 0;
}

static int add_host(char ***hosts, int *n, const char *name) {
    if (strchr(name, ':') && name[0] != '[') { /* IPv6 literal: Host carries it in brackets */
        size_t len = strlen(name);
        char *b = malloc(len + 3);
        if (!b) return -1;
        snprintf(b, len + 3, "[%s]", name);
        int rc = add_string(hosts, n, b);
        free(b);
        return rc;
    }
    return add_string(hosts, n, name);
}

tld_http *tld_http_new(const tld_http_cfg *cfg, char *err, size_t errlen) {
    if (!cfg) {
        tl_seterr(err, errlen, "no HTTP configuration");
        return NULL;
    }
    const char *bind = cfg->bind_addr && cfg->bind_addr[0] ? cfg->bind_addr : "127.0.0.1";
    if (cfg->port < 0 || cfg->port > 65535) {
        tl_seterr(err, errlen, "port %d is out of range (0..65535)", cfg->port);
        return NULL;
    }
    tld_http *h = calloc(1, sizeof *h);
    if (!h) {
        tl_seterr(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&h->counter_mu, NULL);
    pthread_mutex_init(&h->log_mu, NULL);
    pthread_mutex_init(&h->pool_mu, NULL);
    pthread_mutex_init(&h->park_mu, NULL);
    pthread_cond_init(&h->park_cv, NULL);
    pthread_mutex_init(&h->conn_mu, NULL);
    atomic_init(&h->stopping, 0);
    atomic_init(&h->nconns, 0);
    h->quiet = getenv("TL_HTTP_QUIET") != NULL;
    h->port = cfg->port;
    h->max_connections = cfg->max_connections > 0 ? cfg->max_connections : HTTP_DEFAULT_CONNECTIONS;
    h->timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : HTTP_DEFAULT_TIMEOUT_S;
    h->handler_threads = cfg->handler_threads > 0 ? cfg->handler_threads : HTTP_DEFAULT_HANDLER_THREADS;
    h->header_timeout_s = cfg->header_timeout_s > 0 ? cfg->header_timeout_s : HTTP_DEFAULT_HEADER_TIMEOUT_S;
    h->per_client = cfg->per_client > 0 ? cfg->per_client : HTTP_DEFAULT_PER_CLIENT;
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
        tl_seterr(err, errlen, "bind address '%s' is not a numeric IPv4 or IPv6 address", bind);
        goto fail;
    }

    h->bind_addr = tld_http_strdup(bind);
    if (!h->bind_addr) goto oom;
    if (cfg->token && cfg->token[0]) {
        h->token = tld_http_strdup(cfg->token);
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
    int norigins = 0;
    for (const char *const *o = cfg->allow_origins; o && *o; o++)
        if ((*o)[0] && add_string(&h->origins, &norigins, *o) != 0) goto oom;
    h->public_read = cfg->public_read != 0;
    h->read_token = cfg->read_token;
    h->read_token_user = cfg->read_token_user;
    h->loopback = h->ipv6 ? IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr) : (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    return h;
oom:
    tl_seterr(err, errlen, "out of memory");
fail:
    tld_http_free(h);
    return NULL;
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

/* The cross-site rule: a changing request (not GET, HEAD or OPTIONS) that carries an Origin header must
 * come from a page of the daemon's own address (an allowed Host name, any port) or of an --allow-origin
 * origin. Clients that are not browsers send no Origin and pass. 0: allowed; else the problem is set. */
static int check_origin(tld_req *r) {
    const char *m = r->method_full;
    if (!strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "OPTIONS")) return 0;
    const char *origin = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin");
    if (!origin) return 0;
    for (char **o = r->h->origins; o && *o; o++)
        if (strcasecmp(*o, origin) == 0) return 0;
    const char *host = NULL;
    if (!strncasecmp(origin, "http://", 7)) host = origin + 7;
    else if (!strncasecmp(origin, "https://", 8)) host = origin + 8;
    if (host) {
        size_t hlen = host[0] == '[' ? (strchr(host, ']') ? (size_t)(strchr(host, ']') - host) + 1 : 0)
                                     : strcspn(host, ":/");
        const char *rest = host + hlen;
        int tail_ok = *rest == '\0' || (*rest == ':' && strspn(rest + 1, "0123456789") == strlen(rest + 1) &&
                                         strlen(rest + 1) >= 1 && strlen(rest + 1) <= 5);
        if (hlen > 0 && tail_ok)
            for (char **a = r->h->hosts; *a; a++)
                if (strlen(*a) == hlen && strncasecmp(*a, host, hlen) == 0) return 0;
    }
    tld_http_reply_problem_text(r, 403, "ORIGIN_NOT_ALLOWED", NULL,
                                "a page of another origin may not change anything here; the operator can allow "
                                "an origin with --allow-origin");
    return -1;
}

/* 0: allowed; otherwise the problem has been set on r. */
static int check_host(tld_req *r) {
    int count = 0;
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_header, &count);
    const char *host = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (count == 0 || !host) {
        tld_http_reply_problem_text(r, 400, "BAD_REQUEST", NULL, "the Host header is required");
        return -1;
    }
    if (count > 1) {
        tld_http_reply_problem_text(r, 400, "BAD_REQUEST", NULL, "more than one Host header");
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
    tld_http_reply_problem_text(r, 403, "HOST_NOT_ALLOWED", NULL, "this server answers only to its own address or localhost");
    return -1;
}

/* Routing and the checks before the body; 0 to go on, -1 with a problem set on r. */
static int admit(tld_req *r) {
    tld_http *h = r->h;
    if (check_host(r) != 0 || check_origin(r) != 0) return -1;

    const http_route *rt = NULL;
    if (r->nsegs >= 0) {
        rt = tld_http_find_route(h, r->method_full, r->segs, r->nsegs);
        if (!rt && strcmp(r->method_full, "HEAD") == 0) rt = tld_http_find_route(h, "GET", r->segs, r->nsegs);
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
        if (r->nsegs >= 0) tld_http_allowed_methods(h, r->segs, r->nsegs, allow, sizeof allow);
        if (allow[0]) {
            tld_reply_header(r, MHD_HTTP_HEADER_ALLOW, allow);
            tld_http_reply_problem_text(r, 405, "METHOD_NOT_ALLOWED", NULL, "this resource does not support the method");
            return -1;
        }
        if (!h->fallback) {
            tld_http_reply_problem_text(r, 404, "NOT_FOUND", NULL, "no such resource");
            return -1;
        }
        r->label = "fallback";
        r->fn = h->fallback;
        r->user = h->fallback_user;
    }

    /* off loopback, reads and inference need the token too, unless the operator opened them */
    int needs_token = rt && (rt->auth == TLD_AUTH_TOKEN || (!h->loopback && !h->public_read));
    if (needs_token) {
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
            tld_http_reply_problem_text(r, 401, "UNAUTHENTICATED", NULL, "this request needs an Authorization: Bearer token");
            return -1;
        }
        if (!h->token || !token_equal(tok, toklen, h->token, h->token_len)) {
            char name[80] = "";
            tld_token_status ts = h->read_token ? h->read_token(h->read_token_user, tok, toklen, name, sizeof name)
                                                : TLD_TOKEN_UNKNOWN;
            if (ts == TLD_TOKEN_VALID && rt->auth == TLD_AUTH_TOKEN) {
                tld_reply_problem(r, 403, "READ_ONLY_TOKEN", NULL,
                                  "the token '%s' may only read and run inference; this request needs the admin token",
                                  name);
                return -1;
            }
            if (ts == TLD_TOKEN_ERROR) {
                tld_http_reply_problem_text(r, 503, "UNAVAILABLE", NULL, "the token could not be checked; try again");
                return -1;
            }
            if (ts == TLD_TOKEN_REVOKED) {
                tld_reply_problem(r, 403, "FORBIDDEN", NULL, "the token '%s' was revoked", name);
                return -1;
            }
            if (ts != TLD_TOKEN_VALID) {
                tld_http_reply_problem_text(r, 403, "FORBIDDEN", NULL, "the bearer token is not valid");
                return -1;
            }
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
        r->expect_body = n > 0 ? (double)n : 0.0;
        if (n > 0) { /* the exact size up to 1 MiB, so small bodies are never copied while they grow */
            size_t cap = (size_t)(n < HTTP_BODY_PREALLOC ? n : HTTP_BODY_PREALLOC) + 1;
            r->body = malloc(cap);
            if (r->body) {
                r->body_cap = cap;
                r->body[0] = '\0';
            }
        }
    } else if (MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        r->expect_body = (double)r->max_body; /* chunked: at most max_body */
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
    char *doc = tld_http_problem_json(413, "BODY_TOO_LARGE", NULL, detail, &len);
    count_request(h, r->method, r->label, 413);
    time_request(h, r, "BODY_TOO_LARGE");
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
    time_request(r->h, r, r->problem_code);
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
        r->t0 = tl_clock_mono_s();
        snprintf(r->method, sizeof r->method, "%s", method);
        r->label = "unmatched";
        r->path = tld_http_strdup(url ? url : "");
        r->segbuf = tld_http_strdup(url ? url : "");
        if (!r->path || !r->segbuf) return MHD_NO;
        r->nsegs = tld_http_split_path(r->segbuf, r->segs, HTTP_MAX_SEGS);
        http_conn *k = tld_http_conn_of(conn);
        if (k && k->over_cap) { /* past max_connections: answered, then closed */
            tld_reply_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
            tld_reply_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
            tld_reply_problem(r, 503, "TOO_MANY_CONNECTIONS", NULL,
                                        "the daemon holds its maximum of %d connections; try again later",
                                        h->max_connections);
            return queue_reply(r);
        }
        if (admit(r) != 0) return queue_reply(r);
        /* the body, if any, must come in within the idle timeout plus its size at HTTP_BODY_MIN_RATE */
        tld_http_conn_phase(h, k, r->expect_body > 0 ? HTTP_PHASE_BODY : HTTP_PHASE_HANDLED,
                            r->expect_body > 0 ? r->t0 + h->timeout_s + r->expect_body / HTTP_BODY_MIN_RATE : 0.0);
        return MHD_YES;
    }

    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->too_large) { /* let the client read the 413 before closing, within bounds */
            r->dropped += n;
            return r->dropped > HTTP_DRAIN_MAX || tl_clock_mono_s() - r->rejected_at > HTTP_DRAIN_S ? MHD_NO : MHD_YES;
        }
        if (n > r->max_body - r->body_len) {
            r->too_large = 1;
            r->rejected_at = tl_clock_mono_s();
            reject_upload(r);
            return MHD_YES;
        }
        if (body_append(r, upload_data, n) != 0) {
            tld_http_log(h, "%s %s: out of memory receiving the body", r->method, r->path);
            return MHD_NO;
        }
        return MHD_YES;
    }

    if (r->too_large) return MHD_NO; /* the 413 went out already */
    if (r->handled) return queue_reply(r); /* back from a handler thread */
    if (r->dispatched) return MHD_YES;     /* not expected: the connection is suspended meanwhile */
    tld_http_conn_phase(h, tld_http_conn_of(conn), HTTP_PHASE_HANDLED, 0.0);
    r->dispatched = 1;
    if (tld_http_dispatch(h, r) != 0) {
        r->dispatched = 0;
        tld_reply_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
        tld_reply_problem(r, 503, "BUSY", NULL, "every handler thread is busy and %d requests are waiting",
                                    HTTP_POOL_QUEUE);
        return queue_reply(r);
    }
    return MHD_YES;
}

void tld_http_run_handler(tld_req *r) {
    r->fn(r, r->user);
    if (!r->replied) {
        tld_http_log(r->h, "%s %s: the handler returned without replying", r->method, r->path);
        for (int i = 0; i < r->nheaders; i++) { /* meant for a reply that never came */
            free(r->hnames[i]);
            free(r->hvals[i]);
        }
        r->nheaders = 0;
        tld_http_reply_problem_text(r, 500, "INTERNAL", NULL, "internal error");
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    req_free(*con_cls);
    *con_cls = NULL;
    /* a kept-alive connection waits for the next request's headers, within header_timeout_s */
    tld_http_conn_phase(cls, tld_http_conn_of(conn), HTTP_PHASE_HEADERS, 0.0);
}

int tld_http_start(tld_http *h, char *err, size_t errlen) {
    if (!h) return -1;
    if (h->daemon) {
        tl_seterr(err, errlen, "the HTTP server is already running");
        return -1;
    }
    atomic_store(&h->stopping, 0);
    pthread_mutex_lock(&h->log_mu);
    h->last_log[0] = '\0';
    pthread_mutex_unlock(&h->log_mu);
    tld_http_raise_nofile(h);
    if (tld_http_conn_start(h, err, errlen) != 0) return -1;
    unsigned int flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (h->ipv6) flags |= MHD_USE_IPv6;
    /* The logger first, or MHD logs the options before it to its own logger. Connections past
     * max_connections are still accepted (up to a margin) so that they can be answered 503. */
    h->daemon = MHD_start_daemon(flags, (uint16_t)h->port, NULL, NULL, on_request, h,
                                 MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, h,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&h->addr,
                                 MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)HTTP_EVENT_THREADS,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)h->timeout_s,
                                 MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned int)(h->max_connections + HTTP_MARGIN_CONNECTIONS),
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)h->per_client,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, HTTP_MEMORY_LIMIT,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                                 MHD_OPTION_NOTIFY_CONNECTION, tld_http_on_connection, h,
                                 MHD_OPTION_END);
    if (!h->daemon) {
        tld_http_conn_stop(h);
        int e = errno;
        pthread_mutex_lock(&h->log_mu);
        if (h->last_log[0])
            tl_seterr(err, errlen, "cannot serve HTTP on %s:%d: %s", h->bind_addr, h->port, h->last_log);
        else
            tl_seterr(err, errlen, "cannot serve HTTP on %s:%d: %s", h->bind_addr, h->port, strerror(e));
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

int tld_http_capacity(const tld_http *h) { return h ? h->max_connections : 0; }

void tld_http_stop(tld_http *h) {
    if (!h || !h->daemon) return;
    atomic_store(&h->stopping, 1); /* streams end instead of parking */
    tld_http_conn_stop(h);         /* every suspended connection resumed: MHD refuses to stop with one */
    MHD_stop_daemon(h->daemon);    /* closes the connections and joins its threads */
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
    for (char **a = h->origins; a && *a; a++) free(*a);
    free(h->origins);
    free(h->token);
    free(h->bind_addr);
    pthread_mutex_destroy(&h->counter_mu);
    pthread_mutex_destroy(&h->log_mu);
    pthread_mutex_destroy(&h->pool_mu);
    pthread_mutex_destroy(&h->park_mu);
    pthread_cond_destroy(&h->park_cv);
    pthread_mutex_destroy(&h->conn_mu);
    free(h);
}
