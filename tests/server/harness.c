/*
 * harness.c: the daemon in a test process and a small client (see harness.h).
 *
 * Owns the daemon's parts (the g_* globals) between tlt_daemon_start and
 * tlt_daemon_stop, on the test's thread; the daemon's own threads run
 * inside them as they do in tokenlabd.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "api/datasets.h"
#include "api/route_table.h"
#include "tokenlab/synth.h"

extern const char tld_openapi_json[];

char g_root[1024], g_state[1100];
tld_store *g_store;
tld_events *g_ev;
tld_jobs *g_jobs;
tld_models *g_models;
tld_http *g_http;
tld_routes g_routes;
int g_port;

void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int tlt_daemon_start(const char *name) {
    setenv("TL_HTTP_QUIET", "1", 1);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/%s_%d", tmp ? tmp : "/tmp", name, (int)getpid());
    snprintf(g_state, sizeof g_state, "%s/state", g_root);
    mkdir(g_root, 0755);
    mkdir(g_state, 0755);
    char data[1100], err[1024] = "";
    snprintf(data, sizeof data, "%s/synth", g_root);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = 3;
    c.train = 16;
    c.val = 8;
    c.size = 32;
    c.map_size = 8;
    c.seed = 9;
    if (tl_synth_write(data, &c, err, sizeof err) != 0) {
        fprintf(stderr, "synth: %s\n", err);
        return -1;
    }
    char db[1200];
    snprintf(db, sizeof db, "%s/tokenlab.db", g_state);
    g_store = tld_store_open(db, err, sizeof err);
    g_ev = tld_events_new(65536);
    if (!g_store || !g_ev) return -1;
    tld_jobs_cfg jc = {g_state, g_root, 1, 1, 3, NULL};
    g_jobs = tld_jobs_new(&jc, g_store, g_ev, err, sizeof err);
    tld_models_cfg mc = {g_state, g_root, g_store, 1};
    g_models = g_jobs ? tld_models_new(&mc, err, sizeof err) : NULL;
    tld_http_cfg hc = {"127.0.0.1", 0, 64, 10, (size_t)1 << 20, TLT_TOKEN, NULL, 0, 4, 0, NULL, 0, NULL, NULL};
    g_http = g_models ? tld_http_new(&hc, err, sizeof err) : NULL;
    if (!g_http) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    g_routes = (tld_routes){g_http, g_store, g_ev, g_jobs, g_models, tld_openapi_json, (size_t)1 << 20, 1, 1, g_root};
    if (tld_datasets_init(g_root) != 0 || tld_routes_register(&g_routes) != 0 || tld_http_start(g_http, err, sizeof err) != 0) {
        fprintf(stderr, "start: %s\n", err);
        return -1;
    }
    g_port = tld_http_port(g_http);
    return g_port > 0 ? 0 : -1;
}

int tlt_daemon_stop(void) {
    /* the daemon's shutdown order (cmd_serve.c) */
    tld_events_close(g_ev);
    tld_jobs_shutdown(g_jobs);
    tld_http_stop(g_http);
    tld_http_free(g_http);
    tld_models_free(g_models);
    tld_jobs_free(g_jobs);
    tld_events_free(g_ev);
    tld_store_close(g_store);
    curl_global_cleanup();
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ a small client */

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

void resp_free(resp_t *r) {
    free(r->body.data);
    free(r->headers.data);
    memset(r, 0, sizeof *r);
}

/* The value of a response header, or NULL; into out. */
const char *resp_header(const resp_t *r, const char *name, char *out, size_t outlen) {
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
            return out;
        }
        if (!eol) break;
        p = eol + 2;
    }
    return NULL;
}

/* One request. auth: NULL none, else the bearer token to send. ctype: Content-Type of body, may be NULL. */
void http(const char *method, const char *path, const char *auth, const char *ctype, const void *body,
          size_t body_len, const char *extra_header, resp_t *out) {
    char url[1200], ah[256], ch[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g_port, path);
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &out->headers);
    struct curl_slist *hl = curl_slist_append(NULL, "Expect:");
    if (auth) {
        snprintf(ah, sizeof ah, "Authorization: Bearer %s", auth);
        hl = curl_slist_append(hl, ah);
    }
    if (ctype) {
        snprintf(ch, sizeof ch, "Content-Type: %s", ctype);
        hl = curl_slist_append(hl, ch);
    }
    if (extra_header) hl = curl_slist_append(hl, extra_header);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0 || body)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(out->ctype, sizeof out->ctype, "%s", ct ? ct : "");
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
}

void get(const char *path, resp_t *out) { http("GET", path, NULL, NULL, NULL, 0, NULL, out); }

/* The reply is JSON with this status; returns it parsed. */
cJSON *expect_json(resp_t *r, long status, const char *what) {
    if (r->status != status) fail_msg("%s: status %ld, want %ld; body %s", what, r->status, status, r->body.data);
    assert_string_equal(r->ctype, "application/json");
    cJSON *j = cJSON_Parse(r->body.data ? r->body.data : "");
    if (!j) fail_msg("%s: not JSON: %s", what, r->body.data);
    return j;
}

/* A problem document with this status and code (and pointer: NULL = must be absent, else its value). */
void expect_problem(resp_t *r, long status, const char *code, const char *pointer, const char *what) {
    if (r->status != status) fail_msg("%s: status %ld, want %ld; body %s", what, r->status, status, r->body.data);
    if (strcmp(r->ctype, "application/problem+json") != 0) fail_msg("%s: content type %s", what, r->ctype);
    cJSON *j = cJSON_Parse(r->body.data ? r->body.data : "");
    if (!j) fail_msg("%s: problem is not JSON: %s", what, r->body.data);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    assert_true(cJSON_IsNumber(st) && (long)st->valuedouble == status);
    const char *c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "code"));
    if (!c || strcmp(c, code) != 0) fail_msg("%s: code %s, want %s (%s)", what, c ? c : "(none)", code, r->body.data);
    assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "detail")));
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pointer");
    if (pointer) {
        if (!cJSON_IsString(p) || strcmp(p->valuestring, pointer) != 0)
            fail_msg("%s: pointer %s, want %s", what, cJSON_IsString(p) ? p->valuestring : "(none)", pointer);
    }
    cJSON_Delete(j);
    resp_free(r);
}
