/*
 * static.c: the web dashboard's files, served by the HTTP fallback (see static.h).
 *
 * Owns g_site, the canonical path of the web folder, written once by
 * tld_static_init before the server starts and only read afterwards by the
 * handler (on libmicrohttpd's connection threads), so no lock is needed.
 * Each request opens, checks and reads its file and frees the copy once the
 * reply holds it (tld_reply_bytes copies).
 */
#include "http/static.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenlab/files.h"

static struct {
    char root[PATH_MAX]; /* realpath of web_dir, no trailing '/' */
    size_t rootlen;
} g_site;

static const char CSP[] = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                          "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                          "frame-ancestors 'none'; form-action 'self'";

static const struct {
    const char *ext, *type;
} TYPES[] = {
    {"html", "text/html; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"webmanifest", "application/manifest+json"},
    {"txt", "text/plain; charset=utf-8"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"ico", "image/x-icon"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"wasm", "application/wasm"},
};

/* The extension of the last path segment (after its last '.'), or NULL. */
static const char *extension(const char *path) {
    const char *slash = strrchr(path, '/');
    const char *seg = slash ? slash + 1 : path;
    const char *dot = strrchr(seg, '.');
    return dot && dot != seg && dot[1] ? dot + 1 : NULL;
}

static const char *content_type(const char *path) {
    const char *ext = extension(path);
    if (ext)
        for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
            if (strcasecmp(ext, TYPES[i].ext) == 0) return TYPES[i].type;
    return "application/octet-stream";
}

/* Paths that belong to the APIs: never answered with the dashboard. */
static int is_api_path(const char *p) {
    static const char *const prefixes[] = {"/api", "/v2"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(p, prefixes[i], n) == 0 && (p[n] == '\0' || p[n] == '/')) return 1;
    }
    return 0;
}

/* Does the If-None-Match header (a list of entity tags, or "*") name etag? Weak comparison. */
static int etag_matches(const char *header, const char *etag) {
    if (!header) return 0;
    const char *p = header;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        if (*p == '*') return 1;
        if (strncmp(p, "W/", 2) == 0) p += 2;
        const char *end = p;
        if (*p == '"') {
            end = strchr(p + 1, '"');
            if (!end) return 0;
            end++;
        } else {
            while (*end && *end != ',') end++;
        }
        size_t n = (size_t)(end - p);
        if (n == strlen(etag) && strncmp(p, etag, n) == 0) return 1;
        p = end;
    }
    return 0;
}

/* Reads the whole regular file at path (at most TLD_STATIC_MAX_BYTES) into a malloc'd buffer. */
static int read_file(const char *path, char **out, size_t *len, struct stat *st) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return errno == ENOENT || errno == ENOTDIR || errno == ELOOP ? -2 : -1;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return -2;
    }
    if ((uint64_t)st->st_size > TLD_STATIC_MAX_BYTES) {
        close(fd);
        return -3;
    }
    size_t n = (size_t)st->st_size, got = 0;
    char *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return -1;
    }
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break; /* shrank meanwhile: serve what was there */
        got += (size_t)k;
    }
    close(fd);
    *out = buf;
    *len = got;
    return 0;
}

/* Sends the file at the canonical path real (inside the site); rel is its path from the site root. */
static void send_file(tld_req *r, const char *real, const char *rel) {
    char *data = NULL;
    size_t len = 0;
    struct stat st;
    int rc = read_file(real, &data, &len, &st);
    if (rc == -2) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no such file");
        return;
    }
    if (rc == -3) {
        tld_reply_problem(r, 500, "FILE_TOO_LARGE", NULL, "the file is larger than %zu bytes", TLD_STATIC_MAX_BYTES);
        return;
    }
    if (rc != 0) {
        tld_reply_problem(r, 500, "INTERNAL", NULL, "cannot read the file");
        return;
    }
    char etag[96];
    snprintf(etag, sizeof etag, "\"%llx-%llx-%lx\"", (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtim.tv_sec, (unsigned long)st.st_mtim.tv_nsec);
    int immutable = strncmp(rel, "assets/", 7) == 0;
    tld_reply_header(r, "ETag", etag);
    tld_reply_header(r, "Cache-Control", immutable ? "public, max-age=31536000, immutable" : "no-cache");
    const char *type = content_type(real);
    if (strncmp(type, "text/html", 9) == 0) {
        tld_reply_header(r, "Content-Security-Policy", CSP);
        tld_reply_header(r, "X-Frame-Options", "DENY");
        tld_reply_header(r, "Referrer-Policy", "no-referrer");
    }
    if (etag_matches(tld_req_header(r, "If-None-Match"), etag)) tld_reply_bytes(r, 304, NULL, "", 0);
    else tld_reply_bytes(r, 200, type, data, len);
    free(data);
}

static void send_index(tld_req *r) {
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/index.html", g_site.root);
    send_file(r, path, "index.html");
}

static void h_static(tld_req *r, void *user) {
    (void)user;
    const char *method = tld_req_method(r), *path = tld_req_path(r);
    if (!path || path[0] != '/' || is_api_path(path)) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no such resource");
        return;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        tld_reply_header(r, "Allow", "GET, HEAD");
        tld_reply_problem(r, 405, "METHOD_NOT_ALLOWED", NULL, "the dashboard's files support GET and HEAD only");
        return;
    }
    const char *rel = path + 1;
    while (*rel == '/') rel++;
    if (!*rel) {
        send_index(r);
        return;
    }
    char full[PATH_MAX + 8], real[PATH_MAX];
    int n = snprintf(full, sizeof full, "%s/%s", g_site.root, rel);
    tl_path_status ps = TL_PATH_TOO_LONG;
    if (n >= 0 && (size_t)n < sizeof full) ps = tl_path_confine_abs(g_site.root, full, TL_PATH_WANT_ANY, real);
    if (ps != TL_PATH_OK && ps != TL_PATH_OUTSIDE) {
        /* nothing there: a page address of the dashboard, unless it names a file */
        if (extension(rel)) tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no such file");
        else send_index(r);
        return;
    }
    if (ps == TL_PATH_OUTSIDE || strcmp(real, g_site.root) == 0) {
        /* outside the site, or the site's folder itself: refused */
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no such file");
        return;
    }
    struct stat st;
    if (stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (extension(rel)) tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no such file");
        else send_index(r);
        return;
    }
    send_file(r, real, real + g_site.rootlen + 1);
}

int tld_static_init(tld_http *h, const char *web_dir, char *err, size_t errlen) {
    char real[PATH_MAX], index[PATH_MAX + 16];
    struct stat st;
    if (!web_dir || !*web_dir) {
        snprintf(err, errlen, "no web folder given");
        return -1;
    }
    if (!realpath(web_dir, real) || stat(real, &st) != 0) {
        snprintf(err, errlen, "web folder %s: %s", web_dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "web folder %s: not a folder", web_dir);
        return -1;
    }
    snprintf(index, sizeof index, "%s/index.html", real);
    if (stat(index, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "web folder %s has no index.html (build the dashboard: cmake --build <build>)", web_dir);
        return -1;
    }
    size_t len = strlen(real);
    while (len > 1 && real[len - 1] == '/') real[--len] = '\0';
    if (strcmp(real, "/") == 0) {
        snprintf(err, errlen, "web folder %s: refusing to serve the file system root", web_dir);
        return -1;
    }
    memcpy(g_site.root, real, len + 1);
    g_site.rootlen = len;
    if (tld_http_fallback(h, h_static, NULL) != 0) {
        snprintf(err, errlen, "cannot register the dashboard (the server has started)");
        return -1;
    }
    return 0;
}
