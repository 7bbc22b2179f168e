/*
 * http_route.c: the HTTP layer's routes (see http.h, http_internal.h):
 * registration (patterns split into segments, {param} segments marked) and
 * matching (exact; the most specific pattern wins), the Allow list of a
 * 405, the fallback.
 *
 * Owns the route table of a tld_http: written by tld_http_route* and
 * tld_http_fallback on the owner's thread before tld_http_start, read-only
 * afterwards, when connection threads match against it.
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

/* Splits an absolute path, in place, at '/'. "/" has no segments; empty
 * segments ("//", a trailing '/') are kept so they match nothing. -1 if p is
 * not absolute or has more than max segments. */
int tld_http_split_path(char *p, char **segs, int max) {
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
    rt.pattern = tld_http_strdup(pattern);
    rt.segbuf = tld_http_strdup(pattern);
    if (!rt.pattern || !rt.segbuf) goto fail;
    rt.nsegs = tld_http_split_path(rt.segbuf, rt.segs, HTTP_MAX_SEGS);
    if (rt.nsegs < 0) goto fail;
    int nparams = 0;
    for (int i = 0; i < rt.nsegs; i++) {
        char *s = rt.segs[i];
        size_t n = strlen(s);
        if (n == 0 && i < rt.nsegs - 1) goto fail; /* "//" never; a trailing '/' is a literal empty segment */
        if (n > 0 && s[0] == '{') {
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

/* The most specific route for method and the split path, or NULL. */
const http_route *tld_http_find_route(const tld_http *h, const char *method, char *const *segs, int nsegs) {
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
void tld_http_allowed_methods(const tld_http *h, char *const *segs, int nsegs, char *out, size_t outlen) {
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
