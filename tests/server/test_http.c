/*
 * test_http.c: the HTTP layer (server/http/http.c) on a real libmicrohttpd server
 * bound to 127.0.0.1 with an ephemeral port, driven by libcurl and by raw
 * sockets where curl would hide what the server does.
 *
 * One server (timeout_s = 1, max_body = 2 MiB, a token, one extra Host name)
 * is started in the group setup and shared by most tests; the fallback, IPv6
 * and shutdown tests start their own. Covered: routing with {param}
 * segments (literal segments win), query strings, JSON replies, the 404 and
 * 405 problems, the Host check, the bearer token, the body limit (by
 * Content-Length before the body is sent, and for a chunked upload), a 1 MB
 * binary body in both framings, the idle timeout on a half-sent request, a
 * stream that pauses between chunks, a stream cut after timeout_s without
 * data, concurrent clients, the counters, escaping in problem documents, a
 * handler that does not reply, a client hanging up on a quiet stream, and a
 * stop while a stream is open. MHD's log lines are silenced with
 * TL_HTTP_QUIET.
 *
 * Threads: the concurrency and shutdown tests start client threads; the
 * handlers run on the server's threads and touch only atomics.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "http/http.h"
#include "http/sha256.h"

#define TOKEN "t0ken-for-tests"
#define MAX_BODY ((size_t)2 * 1024 * 1024)

static tld_http *srv;
static int port;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ handlers */

static void h_hello(tld_req *r, void *u) {
    tld_reply_json(r, 200, "{\"hello\":\"world\"}");
}

/* Echoes what the router and the query parser saw. */
static void h_metric(tld_req *r, void *u) {
    cJSON *o = cJSON_CreateObject();
    const char *keys[] = {"id", "name"};
    for (int i = 0; i < 2; i++) {
        const char *v = tld_req_param(r, keys[i]);
        if (v) cJSON_AddStringToObject(o, keys[i], v);
    }
    const char *qs[] = {"since", "flag", "q", "absent"};
    for (int i = 0; i < 4; i++) {
        const char *v = tld_req_query(r, qs[i]);
        if (v) cJSON_AddStringToObject(o, qs[i], v);
    }
    cJSON_AddStringToObject(o, "method", tld_req_method(r));
    cJSON_AddStringToObject(o, "path", tld_req_path(r));
    if (tld_req_param(r, "nope")) cJSON_AddTrueToObject(o, "bad_param");
    char *s = cJSON_PrintUnformatted(o);
    tld_reply_json(r, 200, s);
    free(s);
    cJSON_Delete(o);
}

static void h_job(tld_req *r, void *u) {
    char buf[128];
    snprintf(buf, sizeof buf, "{\"job\":\"%s\"}", tld_req_param(r, "id"));
    tld_reply_json(r, 200, buf);
}

static void h_stats(tld_req *r, void *u) {
    tld_reply_json(r, 200, "{\"stats\":true}");
}

static void h_items_post(tld_req *r, void *u) {
    tld_reply_header(r, "Location", "/api/v1/items/1");
    tld_reply_json(r, 201, "{\"created\":true}");
}

static void h_echo(tld_req *r, void *u) {
    size_t len = 0;
    const char *b = tld_req_body(r, &len);
    if (b[len] != '\0') {
        tld_reply_problem(r, 500, "NOT_TERMINATED", NULL, "body copy is not NUL-terminated");
        return;
    }
    tld_reply_bytes(r, 200, "application/octet-stream", b, len);
}

#define PROBLEM_DETAIL "he said \"hi\"\nthen left \\ caf\xc3\xa9 \x01 tab\t end"
static void h_problem(tld_req *r, void *u) {
    tld_reply_problem(r, 422, "INVALID_FIELD", "/spec/\"lr\"", "%s%s", PROBLEM_DETAIL, " bad:\xff");
}

static void h_forget(tld_req *r, void *u) {
}

static void h_count(tld_req *r, void *u) {
    tld_reply_json(r, 200, "{}");
}

/* A stream of 5 chunks, with ~40 ms of "nothing yet" (returning 0) before each. */
typedef struct {
    int sent;
    double last;
    int zeros;
} stream_state;

static atomic_int stream_freed, stream_zeros;

static long stream_fn(void *state, uint64_t pos, char *buf, size_t max) {
    stream_state *s = state;
    if (s->sent == 5) return -1;
    if (now_s() - s->last < 0.04) {
        s->zeros++;
        return TLD_STREAM_SOON; /* parked, asked again within about 0.1 s */
    }
    int n = snprintf(buf, max, "data: chunk %d\n\n", s->sent);
    s->sent++;
    s->last = now_s();
    return n;
}

static void stream_free(void *state) {
    stream_state *s = state;
    atomic_store(&stream_zeros, s->zeros);
    free(s);
    atomic_fetch_add(&stream_freed, 1);
}

static void h_stream(tld_req *r, void *u) {
    stream_state *s = calloc(1, sizeof *s);
    s->last = now_s();
    tld_reply_stream(r, 200, "text/event-stream", stream_fn, s, stream_free);
}

/* A stream with nothing to say, ever (the shutdown test). */
static atomic_int idle_calls, idle_freed;

static long idle_fn(void *state, uint64_t pos, char *buf, size_t max) {
    atomic_fetch_add(&idle_calls, 1);
    return TLD_STREAM_SOON; /* asked again and again, never anything */
}

static void idle_free(void *state) {
    atomic_fetch_add(&idle_freed, 1);
}

static void h_idle_stream(tld_req *r, void *u) {
    tld_reply_stream(r, 200, "text/event-stream", idle_fn, NULL, idle_free);
}

/* A stream that never produces anything, on the main server (timeout_s = 1). */
static atomic_int quiet_freed;

static long quiet_fn(void *state, uint64_t pos, char *buf, size_t max) {
    return 0;
}

static void quiet_free(void *state) {
    atomic_fetch_add(&quiet_freed, 1);
}

static void h_quiet_stream(tld_req *r, void *u) {
    tld_reply_stream(r, 200, "text/event-stream", quiet_fn, NULL, quiet_free);
}

static void h_fallback(tld_req *r, void *u) {
    char buf[256];
    int n = snprintf(buf, sizeof buf, "fallback:%s", tld_req_path(r));
    tld_reply_bytes(r, 200, "text/plain", buf, (size_t)n);
}

/* ------------------------------------------------------------------ client helpers */

typedef struct {
    char *data;
    size_t len;
} buf_t;

typedef struct {
    long status;
    CURLcode rc;
    buf_t body, headers;
    char ctype[128];
} resp_t;

static size_t buf_write(char *p, size_t sz, size_t n, void *u) {
    buf_t *b = u;
    size_t add = sz * n;
    char *g = realloc(b->data, b->len + add + 1);
    if (!g) return 0;
    memcpy(g + b->len, p, add);
    b->data = g;
    b->len += add;
    b->data[b->len] = '\0';
    return add;
}

static void resp_free(resp_t *r) {
    free(r->body.data);
    free(r->headers.data);
    memset(r, 0, sizeof *r);
}

/* The value of a response header (the last one if repeated), or NULL; into out. */
static const char *resp_header(const resp_t *r, const char *name, char *out, size_t outlen) {
    const char *found = NULL;
    size_t nlen = strlen(name);
    for (const char *p = r->headers.data; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t llen = eol ? (size_t)(eol - p) : strlen(p);
        if (llen > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (*v == ' ') v++;
            size_t vlen = llen - (size_t)(v - p);
            if (vlen >= outlen) vlen = outlen - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            found = out;
        }
        if (!eol) break;
        p = eol + 2;
    }
    return found;
}

typedef struct {
    const char *method;
    const char *path;
    const char *const *headers; /* NULL-terminated */
    const void *body;
    size_t body_len;
    int has_body;
    curl_read_callback reader; /* with reader_data: a streamed upload */
    void *reader_data;
    long long reader_size;     /* -1: chunked */
} req_t;

static void perform(CURL *c, const req_t *q, resp_t *out) {
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, q->path);
    memset(out, 0, sizeof *out);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &out->headers);
    struct curl_slist *hl = NULL;
    for (const char *const *h = q->headers; h && *h; h++) hl = curl_slist_append(hl, *h);
    if (q->reader) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, q->reader);
        curl_easy_setopt(c, CURLOPT_READDATA, q->reader_data);
        curl_easy_setopt(c, CURLOPT_EXPECT_100_TIMEOUT_MS, 10000L);
        if (q->reader_size >= 0)
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->reader_size);
        else
            hl = curl_slist_append(hl, "Transfer-Encoding: chunked");
    } else if (q->has_body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
    }
    if (strcmp(q->method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (strcmp(q->method, "GET") != 0 || q->has_body)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
    if (hl) curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    out->rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(out->ctype, sizeof out->ctype, "%s", ct ? ct : "");
    curl_slist_free_all(hl);
}

/* One request on a fresh handle. */
static void request(const req_t *q, resp_t *out) {
    CURL *c = curl_easy_init();
    assert_non_null(c);
    perform(c, q, out);
    curl_easy_cleanup(c);
}

static void get(const char *path, const char *const *headers, resp_t *out) {
    req_t q = {.method = "GET", .path = path, .headers = headers};
    request(&q, out);
}

/* The reply is a problem document with this status and code; returns it parsed. */
static cJSON *expect_problem(const resp_t *r, long status, const char *code) {
    assert_int_equal(r->rc, CURLE_OK);
    if (r->status != status) fail_msg("status %ld, want %ld; body %s", r->status, status, r->body.data);
    assert_string_equal(r->ctype, "application/problem+json");
    char cc[64];
    assert_non_null(resp_header(r, "Cache-Control", cc, sizeof cc));
    assert_string_equal(cc, "no-store");
    cJSON *j = cJSON_Parse(r->body.data ? r->body.data : "");
    if (!j) fail_msg("problem body is not JSON: %s", r->body.data);
    assert_true(cJSON_IsObject(j));
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "type")), "about:blank");
    const cJSON *title = cJSON_GetObjectItemCaseSensitive(j, "title");
    assert_true(cJSON_IsString(title) && title->valuestring[0]);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    assert_true(cJSON_IsNumber(st));
    assert_int_equal((long)st->valuedouble, status);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "code")), code);
    assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "detail")));
    return j;
}

static void expect_problem_free(const resp_t *r, long status, const char *code) {
    cJSON_Delete(expect_problem(r, status, code));
}

static int raw_connect(int p) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void raw_send(int fd, const char *s) {
    size_t n = strlen(s);
    assert_int_equal(send(fd, s, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Reads until the server closes or timeout_s passes; returns bytes read, *closed set on EOF/reset. */
static size_t raw_read(int fd, char *buf, size_t cap, double timeout_s, int *closed) {
    size_t got = 0;
    double end = now_s() + timeout_s;
    *closed = 0;
    while (got + 1 < cap) {
        int ms = (int)((end - now_s()) * 1000);
        if (ms <= 0) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, ms) <= 0) break;
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0) {
            *closed = 1;
            break;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    return got;
}

/* ------------------------------------------------------------------ setup */

static void add_routes(tld_http *h) {
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/hello", TLD_AUTH_PUBLIC, h_hello, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/jobs/{id}", TLD_AUTH_PUBLIC, h_job, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/jobs/stats", TLD_AUTH_PUBLIC, h_stats, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/jobs/{id}/metrics/{name}", TLD_AUTH_PUBLIC, h_metric, NULL), 0);
    assert_int_equal(tld_http_route(h, "POST", "/api/v1/items", TLD_AUTH_TOKEN, h_items_post, NULL), 0);
    assert_int_equal(tld_http_route(h, "POST", "/api/v1/echo", TLD_AUTH_TOKEN, h_echo, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/problem", TLD_AUTH_PUBLIC, h_problem, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/forget", TLD_AUTH_PUBLIC, h_forget, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/count", TLD_AUTH_PUBLIC, h_count, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/stream", TLD_AUTH_PUBLIC, h_stream, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/quiet", TLD_AUTH_PUBLIC, h_quiet_stream, NULL), 0);
}

static int group_setup(void **state) {
    setenv("TL_HTTP_QUIET", "1", 1);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
    static const char *const extra[] = {"tokenlab.internal", NULL};
    tld_http_cfg cfg = {.bind_addr = "127.0.0.1",
                       .port = 0,
                       .max_connections = 64,
                       .timeout_s = 1,
                       .max_body = MAX_BODY,
                       .token = TOKEN,
                       .extra_hosts = extra};
    char err[256] = "";
    srv = tld_http_new(&cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "tld_http_new: %s\n", err);
        return -1;
    }
    add_routes(srv);
    if (tld_http_start(srv, err, sizeof err) != 0) {
        fprintf(stderr, "tld_http_start: %s\n", err);
        return -1;
    }
    port = tld_http_port(srv);
    return port > 0 ? 0 : -1;
}

static int group_teardown(void **state) {
    tld_http_free(srv);
    curl_global_cleanup();
    return 0;
}

/* ------------------------------------------------------------------ tests */

static void test_config_errors(void **state) {
    char err[256] = "";
    tld_http_cfg bad = {.bind_addr = "not-an-address"};
    assert_null(tld_http_new(&bad, err, sizeof err));
    assert_non_null(strstr(err, "not-an-address"));
    tld_http_cfg badport = {.bind_addr = "127.0.0.1", .port = 70000};
    err[0] = '\0';
    assert_null(tld_http_new(&badport, err, sizeof err));
    assert_true(err[0] != '\0');

    tld_http_cfg ok = {.bind_addr = "127.0.0.1"};
    tld_http *h = tld_http_new(&ok, err, sizeof err);
    assert_non_null(h);
    const char *bad_patterns[] = {"no-slash", "/a/{", "/a/{}", "/a//b", "/a/b{c}", "/a//", "//", ""};
    for (size_t i = 0; i < sizeof bad_patterns / sizeof bad_patterns[0]; i++)
        if (tld_http_route(h, "GET", bad_patterns[i], TLD_AUTH_PUBLIC, h_hello, NULL) == 0)
            fail_msg("pattern '%s' accepted", bad_patterns[i]);
    assert_int_equal(tld_http_route(h, "GET", "/", TLD_AUTH_PUBLIC, h_hello, NULL), 0);
    assert_int_equal(tld_http_route(h, "GET", "/a/", TLD_AUTH_PUBLIC, h_hello, NULL), 0); /* a trailing '/' route */
    assert_int_equal(tld_http_route(h, "", "/x", TLD_AUTH_PUBLIC, h_hello, NULL), -1);
    assert_int_equal(tld_http_route(h, "POST", "/api/v1/items", TLD_AUTH_TOKEN, h_items_post, NULL), 0);
    assert_int_equal(tld_http_start(h, err, sizeof err), 0);
    assert_true(tld_http_port(h) > 0);
    assert_int_equal(tld_http_route(h, "GET", "/late", TLD_AUTH_PUBLIC, h_hello, NULL), -1); /* after start */
    assert_int_equal(tld_http_start(h, err, sizeof err), -1);                               /* twice */

    /* No token configured: token routes refuse everyone. */
    int saved = port;
    port = tld_http_port(h);
    const char *any[] = {"Authorization: Bearer anything", NULL};
    req_t q = {.method = "POST", .path = "/api/v1/items", .headers = any, .body = "{}", .body_len = 2, .has_body = 1};
    resp_t r;
    request(&q, &r);
    expect_problem_free(&r, 403, "FORBIDDEN");
    resp_free(&r);
    port = saved;
    tld_http_stop(h);
    tld_http_stop(h);
    tld_http_free(h);

    /* A port in use: the error says why. */
    tld_http_cfg busy = {.bind_addr = "127.0.0.1", .port = port};
    h = tld_http_new(&busy, err, sizeof err);
    assert_non_null(h);
    err[0] = '\0';
    assert_int_equal(tld_http_start(h, err, sizeof err), -1);
    if (!strstr(err, "127.0.0.1")) fail_msg("error '%s'", err);
    tld_http_free(h);
}

static void test_routes_and_query(void **state) {
    resp_t r;
    get("/api/v1/hello", NULL, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.ctype, "application/json");
    assert_string_equal(r.body.data, "{\"hello\":\"world\"}");
    char v[64];
    assert_non_null(resp_header(&r, "Cache-Control", v, sizeof v));
    assert_string_equal(v, "no-store");
    resp_free(&r);

    get("/api/v1/jobs/42/metrics/loss?since=5&flag&q=x%20y%26z", NULL, &r);
    assert_int_equal(r.status, 200);
    cJSON *j = cJSON_Parse(r.body.data);
    assert_non_null(j);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "id")), "42");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "name")), "loss");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "since")), "5");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "flag")), "");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "q")), "x y&z");
    assert_null(cJSON_GetObjectItem(j, "absent"));
    assert_null(cJSON_GetObjectItem(j, "bad_param"));
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "method")), "GET");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "path")), "/api/v1/jobs/42/metrics/loss");
    cJSON_Delete(j);
    resp_free(&r);

    /* A literal segment beats a {param} whatever the registration order. */
    get("/api/v1/jobs/stats", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "{\"stats\":true}");
    resp_free(&r);
    get("/api/v1/jobs/7", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "{\"job\":\"7\"}");
    resp_free(&r);

    /* HEAD is answered by the GET route, without a body. */
    req_t head = {.method = "HEAD", .path = "/api/v1/hello"};
    request(&head, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 0);
    resp_free(&r);
}

static void test_not_found(void **state) {
    const char *paths[] = {"/nope", "/api/v1/hello/", "/api/v1/jobs//metrics/x", "/api/v1/jobs/1/metrics"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        resp_t r;
        get(paths[i], NULL, &r);
        cJSON *j = expect_problem(&r, 404, "NOT_FOUND");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "title")), "Not Found");
        assert_null(cJSON_GetObjectItem(j, "pointer"));
        cJSON_Delete(j);
        resp_free(&r);
    }
}

static void test_method_not_allowed(void **state) {
    resp_t r;
    req_t q = {.method = "DELETE", .path = "/api/v1/jobs/7"};
    request(&q, &r);
    expect_problem_free(&r, 405, "METHOD_NOT_ALLOWED");
    char allow[128];
    assert_non_null(resp_header(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "GET, HEAD");
    resp_free(&r);

    req_t q2 = {.method = "GET", .path = "/api/v1/items"};
    request(&q2, &r);
    expect_problem_free(&r, 405, "METHOD_NOT_ALLOWED");
    assert_non_null(resp_header(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "POST");
    resp_free(&r);
}

static void test_host_check(void **state) {
    char h1[64], h2[64], h3[64], h4[64], h5[64];
    snprintf(h1, sizeof h1, "Host: localhost:%d", port);
    snprintf(h2, sizeof h2, "Host: 127.0.0.1:%d", port);
    snprintf(h3, sizeof h3, "Host: [::1]:%d", port);
    snprintf(h4, sizeof h4, "Host: LocalHost");
    snprintf(h5, sizeof h5, "Host: tokenlab.internal:%d", port);
    const char *good[] = {h1, h2, h3, h4, h5};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        const char *hdrs[] = {good[i], NULL};
        resp_t r;
        get("/api/v1/hello", hdrs, &r);
        if (r.status != 200) fail_msg("%s: status %ld", good[i], r.status);
        resp_free(&r);
    }
    char e2[64];
    snprintf(e2, sizeof e2, "Host: evil.example:%d", port);
    const char *bad[] = {"Host: evil.example", e2, "Host: localhost.evil.example", "Host: localhost:80x",
                         "Host: 127.0.0.1:1:2", "Host: [::2]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *hdrs[] = {bad[i], NULL};
        resp_t r;
        get("/api/v1/hello", hdrs, &r);
        expect_problem_free(&r, 403, "HOST_NOT_ALLOWED");
        resp_free(&r);
    }
    /* Checked before routing: an unknown path on a foreign Host says nothing about routes. */
    const char *evil[] = {"Host: evil.example", NULL};
    resp_t r;
    get("/nope", evil, &r);
    expect_problem_free(&r, 403, "HOST_NOT_ALLOWED");
    resp_free(&r);

    const char *none[] = {"Host:", NULL}; /* curl then sends no Host header */
    get("/api/v1/hello", none, &r);
    expect_problem_free(&r, 400, "BAD_REQUEST");
    resp_free(&r);
}

static void test_auth(void **state) {
    const char *body = "{\"name\":\"x\"}";
    resp_t r;
    req_t q = {.method = "POST", .path = "/api/v1/items", .body = body, .body_len = strlen(body), .has_body = 1};
    request(&q, &r);
    expect_problem_free(&r, 401, "UNAUTHENTICATED");
    char v[64];
    assert_non_null(resp_header(&r, "WWW-Authenticate", v, sizeof v));
    assert_string_equal(v, "Bearer");
    resp_free(&r);

    const char *basic[] = {"Authorization: Basic dXNlcjpwYXNz", NULL};
    q.headers = basic;
    request(&q, &r);
    expect_problem_free(&r, 401, "UNAUTHENTICATED");
    resp_free(&r);

    const char *wrong[] = {"Authorization: Bearer t0ken-for-tests-not", NULL};
    q.headers = wrong;
    request(&q, &r);
    expect_problem_free(&r, 403, "FORBIDDEN");
    resp_free(&r);
    const char *prefix[] = {"Authorization: Bearer t0ken", NULL};
    q.headers = prefix;
    request(&q, &r);
    expect_problem_free(&r, 403, "FORBIDDEN");
    resp_free(&r);

    const char *right[] = {"Authorization: Bearer " TOKEN, NULL};
    q.headers = right;
    request(&q, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body.data, "{\"created\":true}");
    assert_non_null(resp_header(&r, "Location", v, sizeof v));
    assert_string_equal(v, "/api/v1/items/1");
    resp_free(&r);

    const char *lower[] = {"authorization: bearer  " TOKEN " ", NULL};
    q.headers = lower;
    request(&q, &r);
    assert_int_equal(r.status, 201);
    resp_free(&r);

    get("/api/v1/hello", NULL, &r); /* public: no token needed */
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

/* Upload source: len bytes of a pattern; counts what curl pulled. */
typedef struct {
    size_t len, pos;
} src_t;

static unsigned char pattern_byte(size_t i) {
    return (unsigned char)((i * 2654435761u) >> 13);
}

static size_t src_read(char *buf, size_t sz, size_t n, void *u) {
    src_t *s = u;
    size_t want = sz * n;
    if (want > s->len - s->pos) want = s->len - s->pos;
    for (size_t i = 0; i < want; i++) buf[i] = (char)pattern_byte(s->pos + i);
    s->pos += want;
    return want;
}

static const char *const auth_hdrs[] = {"Authorization: Bearer " TOKEN, NULL};

static void test_body_limit_content_length(void **state) {
    /* curl waits for "100 Continue" and gets the 413 instead: no byte of the body leaves. */
    src_t s = {.len = MAX_BODY + 1};
    const char *hdrs[] = {"Authorization: Bearer " TOKEN, "Expect: 100-continue", NULL};
    req_t q = {.method = "POST", .path = "/api/v1/echo", .headers = hdrs, .reader = src_read, .reader_data = &s,
               .reader_size = (long long)s.len};
    resp_t r;
    request(&q, &r);
    expect_problem_free(&r, 413, "BODY_TOO_LARGE");
    assert_int_equal(s.pos, 0);
    resp_free(&r);

    /* The same on a raw socket: headers only, the reply comes without any body sent. */
    int fd = raw_connect(port);
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/v1/echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/octet-stream\r\nContent-Length: 3000000\r\n\r\n",
             port, TOKEN);
    raw_send(fd, req);
    char buf[2048];
    int closed = 0;
    raw_read(fd, buf, sizeof buf, 3.0, &closed);
    close(fd);
    if (strncmp(buf, "HTTP/1.1 413 ", 13) != 0) fail_msg("raw reply: %s", buf);
    assert_non_null(strstr(buf, "\"code\":\"BODY_TOO_LARGE\""));
    assert_true(closed);
}

static void test_body_limit_chunked(void **state) {
    src_t s = {.len = 4 * MAX_BODY};
    req_t q = {.method = "POST", .path = "/api/v1/echo", .headers = auth_hdrs, .reader = src_read, .reader_data = &s,
               .reader_size = -1};
    resp_t r;
    request(&q, &r);
    if (r.status != 413)
        fail_msg("status %ld (curl %d: %s), sent %zu", r.status, r.rc, curl_easy_strerror(r.rc), s.pos);
    assert_string_equal(r.ctype, "application/problem+json");
    cJSON *j = cJSON_Parse(r.body.data);
    assert_non_null(j);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "code")), "BODY_TOO_LARGE");
    cJSON_Delete(j);
    assert_true(s.pos < s.len); /* curl stopped sending */
    resp_free(&r);

    /* The server is fine afterwards. */
    get("/api/v1/hello", NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void test_body_intact(void **state) {
    size_t n = 1000 * 1000;
    unsigned char *data = malloc(n);
    assert_non_null(data);
    for (size_t i = 0; i < n; i++) data[i] = pattern_byte(i);
    data[0] = 0;
    data[n / 2] = 0;

    resp_t r;
    req_t q = {.method = "POST", .path = "/api/v1/echo", .headers = auth_hdrs, .body = data, .body_len = n,
               .has_body = 1};
    request(&q, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, n);
    assert_memory_equal(r.body.data, data, n);
    resp_free(&r);

    /* Chunked (no Content-Length), exactly at the limit. */
    src_t s = {.len = MAX_BODY};
    req_t c = {.method = "POST", .path = "/api/v1/echo", .headers = auth_hdrs, .reader = src_read, .reader_data = &s,
               .reader_size = -1};
    request(&c, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, MAX_BODY);
    for (size_t i = 0; i < MAX_BODY; i++)
        if ((unsigned char)r.body.data[i] != pattern_byte(i)) fail_msg("byte %zu differs", i);
    resp_free(&r);

    /* An empty POST body is "" with length 0. */
    req_t e = {.method = "POST", .path = "/api/v1/echo", .headers = auth_hdrs, .body = "", .body_len = 0,
               .has_body = 1};
    request(&e, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 0);
    resp_free(&r);
    free(data);
}

static void test_slow_client(void **state) {
    int fd = raw_connect(port);
    raw_send(fd, "GET /api/v1/hel");
    double t0 = now_s();
    char buf[1024];
    int closed = 0;
    raw_read(fd, buf, sizeof buf, 3.5, &closed);
    double dt = now_s() - t0;
    close(fd);
    if (!closed) fail_msg("connection still open after %.1f s", dt);
    assert_true(dt < 3.0);
    assert_true(dt > 0.5);
}

static void test_stream(void **state) {
    atomic_store(&stream_freed, 0);
    atomic_store(&stream_zeros, 0);
    resp_t r;
    double t0 = now_s();
    get("/api/v1/stream", NULL, &r);
    double dt = now_s() - t0;
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.ctype, "text/event-stream");
    assert_string_equal(r.body.data, "data: chunk 0\n\ndata: chunk 1\n\ndata: chunk 2\n\n"
                                     "data: chunk 3\n\ndata: chunk 4\n\n");
    assert_true(dt >= 0.15); /* five pauses of 40 ms */
    char v[64];
    assert_non_null(resp_header(&r, "Cache-Control", v, sizeof v));
    assert_string_equal(v, "no-store");
    resp_free(&r);
    for (int i = 0; i < 200 && atomic_load(&stream_freed) == 0; i++) sleep_ms(10);
    assert_int_equal(atomic_load(&stream_freed), 1);
    assert_true(atomic_load(&stream_zeros) > 0);
    assert_true(atomic_load(&stream_zeros) < 100); /* parked ~0.1 s between asks, not spinning */
}

static void test_stream_idle_timeout(void **state) {
    atomic_store(&quiet_freed, 0);
    resp_t r;
    double t0 = now_s();
    get("/api/v1/quiet", NULL, &r);
    double dt = now_s() - t0;
    assert_int_equal(r.status, 200);
    assert_int_not_equal(r.rc, CURLE_OK); /* cut, not ended: no final chunk */
    assert_int_equal(r.body.len, 0);
    if (dt < 0.9 || dt > 3.0) fail_msg("quiet stream ended after %.2f s, want ~1 s (timeout_s)", dt);
    resp_free(&r);
    for (int i = 0; i < 200 && atomic_load(&quiet_freed) == 0; i++) sleep_ms(10);
    assert_int_equal(atomic_load(&quiet_freed), 1);
}

#define NTHREADS 8
#define NREQ 50

static atomic_int concurrent_failures;

static void *client_thread(void *arg) {
    int t = (int)(intptr_t)arg;
    CURL *c = curl_easy_init();
    if (!c) {
        atomic_fetch_add(&concurrent_failures, NREQ);
        return NULL;
    }
    for (int i = 0; i < NREQ; i++) {
        char path[128], want_id[32], want_name[32];
        snprintf(want_id, sizeof want_id, "%d", t * 1000 + i);
        snprintf(want_name, sizeof want_name, "m%d", i % 7);
        snprintf(path, sizeof path, "/api/v1/jobs/%s/metrics/%s?since=%d", want_id, want_name, i);
        req_t q = {.method = "GET", .path = path};
        resp_t r;
        perform(c, &q, &r); /* one handle per thread: keep-alive connections */
        cJSON *j = r.status == 200 && r.body.data ? cJSON_Parse(r.body.data) : NULL;
        char since[16];
        snprintf(since, sizeof since, "%d", i);
        int ok = j && strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "id")), want_id) == 0 &&
                 strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "name")), want_name) == 0 &&
                 strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "since")), since) == 0;
        if (!ok) atomic_fetch_add(&concurrent_failures, 1);
        cJSON_Delete(j);
        resp_free(&r);
    }
    curl_easy_cleanup(c);
    return NULL;
}

static void test_concurrent(void **state) {
    pthread_t th[NTHREADS];
    atomic_store(&concurrent_failures, 0);
    for (int t = 0; t < NTHREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, client_thread, (void *)(intptr_t)t), 0);
    for (int t = 0; t < NTHREADS; t++) pthread_join(th[t], NULL);
    assert_int_equal(atomic_load(&concurrent_failures), 0);
}

typedef struct {
    const char *method, *route;
    int status;
    uint64_t n;
} counter_query;

static void find_counter(const char *method, const char *route, int status, uint64_t n, void *u) {
    counter_query *q = u;
    if (strcmp(method, q->method) == 0 && strcmp(route, q->route) == 0 && status == q->status) q->n += n;
}

static uint64_t counter(const char *method, const char *route, int status) {
    counter_query q = {method, route, status, 0};
    tld_http_counters(srv, find_counter, &q);
    return q.n;
}

static void test_counters(void **state) {
    uint64_t unmatched0 = counter("GET", "unmatched", 404);
    uint64_t auth0 = counter("POST", "/api/v1/items", 401);
    resp_t r;
    for (int i = 0; i < 3; i++) {
        get("/api/v1/count", NULL, &r);
        assert_int_equal(r.status, 200);
        resp_free(&r);
    }
    get("/count/nowhere", NULL, &r);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    req_t q = {.method = "POST", .path = "/api/v1/items", .body = "{}", .body_len = 2, .has_body = 1};
    request(&q, &r);
    assert_int_equal(r.status, 401);
    resp_free(&r);
    req_t odd = {.method = "BREW", .path = "/count/coffee"};
    request(&odd, &r);
    assert_int_equal(r.status, 404);
    resp_free(&r);

    assert_int_equal(counter("GET", "/api/v1/count", 200), 3);
    assert_int_equal(counter("GET", "unmatched", 404), unmatched0 + 1);
    assert_int_equal(counter("POST", "/api/v1/items", 401), auth0 + 1);
    assert_true(counter("OTHER", "unmatched", 404) >= 1);
    assert_true(counter("GET", "/api/v1/jobs/{id}/metrics/{name}", 200) >= NTHREADS * NREQ);
}

static void test_problem_escaping(void **state) {
    resp_t r;
    get("/api/v1/problem", NULL, &r);
    cJSON *j = expect_problem(&r, 422, "INVALID_FIELD");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "detail")),
                        PROBLEM_DETAIL " bad:\xef\xbf\xbd"); /* invalid UTF-8 became U+FFFD */
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "pointer")), "/spec/\"lr\"");
    assert_non_null(strstr(r.body.data, "\\n"));
    assert_non_null(strstr(r.body.data, "\\u0001"));
    cJSON_Delete(j);
    resp_free(&r);
}

static void test_no_reply(void **state) {
    resp_t r;
    get("/api/v1/forget", NULL, &r);
    expect_problem_free(&r, 500, "INTERNAL");
    resp_free(&r);
    assert_true(counter("GET", "/api/v1/forget", 500) >= 1);
}

static void test_fallback(void **state) {
    tld_http_cfg cfg = {.bind_addr = "127.0.0.1", .timeout_s = 2, .token = TOKEN};
    char err[256] = "";
    tld_http *h = tld_http_new(&cfg, err, sizeof err);
    assert_non_null(h);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/hello", TLD_AUTH_PUBLIC, h_hello, NULL), 0);
    assert_int_equal(tld_http_fallback(h, h_fallback, NULL), 0);
    assert_int_equal(tld_http_start(h, err, sizeof err), 0);
    int saved = port;
    port = tld_http_port(h);
    resp_t r;
    get("/index.html", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "fallback:/index.html");
    resp_free(&r);
    get("/api/v1/hello", NULL, &r);
    assert_string_equal(r.body.data, "{\"hello\":\"world\"}");
    resp_free(&r);
    req_t post = {.method = "POST", .path = "/api/v1/hello", .body = "x", .body_len = 1, .has_body = 1};
    request(&post, &r); /* a routed path keeps its 405 */
    expect_problem_free(&r, 405, "METHOD_NOT_ALLOWED");
    resp_free(&r);
    const char *evil[] = {"Host: evil.example", NULL};
    get("/index.html", evil, &r); /* the Host check covers the fallback too */
    expect_problem_free(&r, 403, "HOST_NOT_ALLOWED");
    resp_free(&r);
    port = saved;
    tld_http_free(h);
}

static void test_ipv6(void **state) {
    tld_http_cfg cfg = {.bind_addr = "::1", .timeout_s = 2};
    char err[256] = "";
    tld_http *h = tld_http_new(&cfg, err, sizeof err);
    assert_non_null(h);
    assert_int_equal(tld_http_route(h, "GET", "/api/v1/hello", TLD_AUTH_PUBLIC, h_hello, NULL), 0);
    if (tld_http_start(h, err, sizeof err) != 0) {
        tld_http_free(h);
        print_message("no IPv6 loopback here (%s)\n", err);
        skip();
    }
    char url[128];
    snprintf(url, sizeof url, "http://[::1]:%d/api/v1/hello", tld_http_port(h));
    CURL *c = curl_easy_init();
    buf_t body = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    assert_int_equal(status, 200); /* Host: [::1]:port */
    assert_string_equal(body.data, "{\"hello\":\"world\"}");
    free(body.data);
    curl_easy_cleanup(c);
    tld_http_free(h);
}

typedef struct {
    int port;
    CURLcode rc;
    buf_t body;
} idle_client;

static void *idle_client_thread(void *arg) {
    idle_client *ic = arg;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/events", ic->port);
    CURL *c = curl_easy_init();
    if (!c) return NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &ic->body);
    ic->rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    return NULL;
}

/* Cross-site requests and reads off loopback: a changing request from a page of another origin is refused
 * (the daemon's own address and --allow-origin pass, and reads pass whatever the origin); bound to an address
 * that is not loopback, public routes need the token unless public_read is set. */
static void test_origin_and_public_read(void **state) {
    const char *body = "{\"name\":\"x\"}";
    resp_t r;
    char own[128];
    snprintf(own, sizeof own, "Origin: http://127.0.0.1:%d", port);
    const char *evil[] = {"Origin: http://evil.example", "Authorization: Bearer " TOKEN, NULL};
    const char *self[] = {own, "Authorization: Bearer " TOKEN, NULL};
    const char *named[] = {"Origin: http://tokenlab.internal", "Authorization: Bearer " TOKEN, NULL};
    const char *nul[] = {"Origin: null", "Authorization: Bearer " TOKEN, NULL};
    req_t q = {.method = "POST", .path = "/api/v1/items", .body = body, .body_len = strlen(body), .has_body = 1};
    q.headers = evil;
    request(&q, &r);
    expect_problem_free(&r, 403, "ORIGIN_NOT_ALLOWED");
    resp_free(&r);
    q.headers = nul;
    request(&q, &r);
    expect_problem_free(&r, 403, "ORIGIN_NOT_ALLOWED");
    resp_free(&r);
    q.headers = self;
    request(&q, &r);
    assert_int_equal(r.status, 201);
    resp_free(&r);
    q.headers = named; /* an allowed Host name, any port */
    request(&q, &r);
    assert_int_equal(r.status, 201);
    resp_free(&r);
    const char *evil_read[] = {"Origin: http://evil.example", NULL};
    get("/api/v1/hello", evil_read, &r); /* a read: the browser's same-origin policy keeps the answer from the page */
    assert_int_equal(r.status, 200);
    resp_free(&r);

    /* an --allow-origin origin; and off loopback, reads need the token unless public_read */
    static const char *const origins[] = {"https://dash.example", NULL};
    int saved = port;
    for (int pub = 0; pub < 2; pub++) {
        tld_http_cfg cfg = {.bind_addr = "0.0.0.0", .token = TOKEN, .allow_origins = origins, .public_read = pub};
        char err[256] = "";
        tld_http *h = tld_http_new(&cfg, err, sizeof err);
        assert_non_null(h);
        add_routes(h);
        assert_int_equal(tld_http_start(h, err, sizeof err), 0);
        port = tld_http_port(h);
        get("/api/v1/hello", NULL, &r);
        if (pub) assert_int_equal(r.status, 200);
        else expect_problem_free(&r, 401, "UNAUTHENTICATED");
        resp_free(&r);
        const char *tok[] = {"Authorization: Bearer " TOKEN, NULL};
        get("/api/v1/hello", tok, &r);
        assert_int_equal(r.status, 200);
        resp_free(&r);
        const char *dash[] = {"Origin: https://dash.example", "Authorization: Bearer " TOKEN, NULL};
        q.headers = dash;
        request(&q, &r);
        assert_int_equal(r.status, 201);
        resp_free(&r);
        tld_http_free(h);
        port = saved;
    }
}

/* SHA-256 of the tokens' hashes: FIPS 180-4's examples, the empty string, both padding cases (55 and 56
 * bytes: one tail block and two) and a million 'a's. */
static void test_sha256(void **state) {
    (void)state;
    static const struct {
        const char *msg;
        size_t repeat;
        const char *hex;
    } v[] = {
        {"", 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"a", 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {"a", 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {"a", 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = strlen(v[i].msg) * v[i].repeat;
        char *buf = malloc(n + 1);
        assert_non_null(buf);
        for (size_t k = 0; k < v[i].repeat; k++) memcpy(buf + k * strlen(v[i].msg), v[i].msg, strlen(v[i].msg));
        uint8_t d[TLD_SHA256_BYTES];
        char hex[2 * TLD_SHA256_BYTES + 1];
        tld_sha256(buf, n, d);
        for (int k = 0; k < TLD_SHA256_BYTES; k++) snprintf(hex + 2 * k, 3, "%02x", d[k]);
        free(buf);
        assert_string_equal(hex, v[i].hex);
    }
}

static void test_stop_with_open_stream(void **state) {
    tld_http_cfg cfg = {.bind_addr = "127.0.0.1", .timeout_s = 30};
    char err[256] = "";
    tld_http *h = tld_http_new(&cfg, err, sizeof err);
    assert_non_null(h);
    assert_int_equal(tld_http_route(h, "GET", "/events", TLD_AUTH_PUBLIC, h_idle_stream, NULL), 0);
    assert_int_equal(tld_http_start(h, err, sizeof err), 0);
    atomic_store(&idle_calls, 0);
    atomic_store(&idle_freed, 0);

    /* A client that hangs up on a quiet stream is noticed within a pause, not after timeout_s. */
    int fd = raw_connect(tld_http_port(h));
    char req[256], buf[1024];
    snprintf(req, sizeof req, "GET /events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", tld_http_port(h));
    raw_send(fd, req);
    int closed = 0;
    raw_read(fd, buf, sizeof buf, 0.3, &closed);
    assert_int_equal(strncmp(buf, "HTTP/1.1 200 ", 13), 0);
    assert_non_null(strstr(buf, "text/event-stream"));
    close(fd);
    for (int i = 0; i < 200 && atomic_load(&idle_freed) == 0; i++) sleep_ms(10);
    assert_int_equal(atomic_load(&idle_freed), 1);

    atomic_store(&idle_calls, 0);
    atomic_store(&idle_freed, 0);
    idle_client ic = {.port = tld_http_port(h)};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, idle_client_thread, &ic), 0);
    for (int i = 0; i < 500 && atomic_load(&idle_calls) < 3; i++) sleep_ms(10);
    assert_true(atomic_load(&idle_calls) >= 3);
    double t0 = now_s();
    tld_http_stop(h); /* must not wait for the stream, which would never end */
    double dt = now_s() - t0;
    assert_true(dt < 2.0);
    assert_int_equal(atomic_load(&idle_freed), 1);
    pthread_join(th, NULL);
    assert_int_not_equal(ic.rc, CURLE_OK); /* cut short, not a complete reply */
    free(ic.body.data);
    tld_http_free(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_routes_and_query),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_host_check),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_origin_and_public_read),
        cmocka_unit_test(test_body_limit_content_length),
        cmocka_unit_test(test_body_limit_chunked),
        cmocka_unit_test(test_body_intact),
        cmocka_unit_test(test_slow_client),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_stream_idle_timeout),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_counters),
        cmocka_unit_test(test_problem_escaping),
        cmocka_unit_test(test_no_reply),
        cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_stop_with_open_stream),
        cmocka_unit_test(test_sha256),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
