/*
 * fuzz_http_route.c: libFuzzer target for the HTTP layer's request routing
 * (server/http/http_route.c) over the daemon's real route table
 * (server/api/route_table.c): path splitting, matching a method and path to
 * the most specific route and its parameters, the Allow list of a 405, and
 * the integer parsing of Last-Event-ID and query values
 * (tld_routes_parse_i64). Input: "METHOD PATH\nLAST-EVENT-ID". Handlers are
 * never called. Single-threaded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/route_table.h"
#include "http/http_internal.h"

static tld_http *g_http;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tld_http_cfg cfg = {.bind_addr = "127.0.0.1"};
    char err[256];
    g_http = tld_http_new(&cfg, err, sizeof err);
    if (!g_http) abort();
    for (size_t i = 0; i < tld_route_table_len; i++) {
        const tld_route_def *t = &tld_route_table[i];
        if (tld_http_route_limit(g_http, t->method, t->pattern, t->auth, t->fn, NULL, t->max_body) != 0) abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    char buf[4097];
    memcpy(buf, data, size);
    buf[size] = 0;
    char *nl = strchr(buf, '\n'), *last = NULL;
    if (nl) {
        *nl = 0;
        last = nl + 1;
    }
    char *sp = strchr(buf, ' ');
    const char *method = "GET";
    char *path = buf;
    if (sp) {
        *sp = 0;
        method = buf;
        path = sp + 1;
    }
    char *q = strchr(path, '?');
    if (q) *q = 0;
    char *segs[HTTP_MAX_SEGS];
    int n = tld_http_split_path(path, segs, HTTP_MAX_SEGS);
    if (n >= 0) {
        const http_route *rt = tld_http_find_route(g_http, method, segs, n);
        if (rt && rt->nsegs != n) abort(); /* a route matches only paths of its length */
        char allow[256];
        tld_http_allowed_methods(g_http, segs, n, allow, sizeof allow);
    }
    int64_t v;
    if (last) tld_routes_parse_i64(last, 0, INT64_MAX, &v);
    if (q) tld_routes_parse_i64(q + 1, -1000, 1000, &v);
    return 0;
}
