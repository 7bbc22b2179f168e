/*
 * http_reply.c: what a handler reads of a request and how it replies (see
 * http.h): tld_req_* accessors, JSON, bytes, reply headers, and
 * application/problem+json documents with a stable code (one builder,
 * tld_http_problem_json, also used for the 413 written to the socket
 * mid-upload by http.c).
 *
 * Owns nothing beyond a request: everything here runs on the request's
 * connection thread and touches only its tld_req. The first reply wins; a
 * second one is a handler bug, logged and dropped.
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

void tld_http_reply_set(tld_req *r, int status, struct MHD_Response *resp, const char *content_type) {
    if (!resp) {
        tld_http_log(r->h, "%s %s: out of memory building a %d reply", r->method, r->path ? r->path : "?", status);
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
    if (!ok) tld_http_log(r->h, "%s %s: a reply header was refused", r->method, r->path ? r->path : "?");
    r->resp = resp;
    r->status = status;
}

/* First reply wins; a second is a handler bug, logged. */
int tld_http_reply_begin(tld_req *r, int *status) {
    if (r->replied) {
        tld_http_log(r->h, "%s %s: second reply (%d) ignored", r->method, r->path ? r->path : "?", *status);
        return -1;
    }
    r->replied = 1;
    if (*status < 100 || *status > 599) {
        tld_http_log(r->h, "%s %s: invalid status %d replaced by 500", r->method, r->path ? r->path : "?", *status);
        *status = 500;
    }
    return 0;
}

void tld_reply_header(tld_req *r, const char *name, const char *value) {
    if (!r || !name || !value) return;
    if (!name[0] || header_unsafe(name) || header_unsafe(value) || strchr(name, ':')) {
        tld_http_log(r->h, "%s %s: unsafe reply header '%s' dropped", r->method, r->path ? r->path : "?", name);
        return;
    }
    if (r->nheaders == HTTP_MAX_REPLY_HEADERS) {
        tld_http_log(r->h, "%s %s: too many reply headers, '%s' dropped", r->method, r->path ? r->path : "?", name);
        return;
    }
    char *n = tld_http_strdup(name), *v = tld_http_strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        tld_http_log(r->h, "out of memory adding reply header '%s'", name);
        return;
    }
    r->hnames[r->nheaders] = n;
    r->hvals[r->nheaders] = v;
    r->nheaders++;
}

void tld_reply_bytes(tld_req *r, int status, const char *content_type, const void *data, size_t len) {
    if (!r || tld_http_reply_begin(r, &status) != 0) return;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(data ? len : 0, (void *)(data ? data : ""), MHD_RESPMEM_MUST_COPY);
    tld_http_reply_set(r, status, resp, content_type);
}

void tld_reply_json(tld_req *r, int status, const char *json) {
    tld_reply_bytes(r, status, "application/json", json, json ? strlen(json) : 0);
}

/* The problem document, malloc'd; NULL when out of memory. */
char *tld_http_problem_json(int status, const char *code, const char *pointer, const char *detail, size_t *len) {
    const char *title = MHD_get_reason_phrase_for((unsigned)status);
    if (!title || !title[0]) title = "Unknown";
    if (!code) code = "ERROR";
    size_t cap = 144 + 6 * (strlen(title) + strlen(code) + 2 * strlen(detail) + (pointer ? strlen(pointer) : 0)) + 16;
    char *out = malloc(cap);
    if (!out) return NULL;
    size_t o = 0;
    o += (size_t)snprintf(out + o, cap - o, "{\"type\":\"about:blank\",\"title\":");
    o += json_quote(out + o, title);
    o += (size_t)snprintf(out + o, cap - o, ",\"status\":%d,\"code\":", status);
    o += json_quote(out + o, code);
    o += (size_t)snprintf(out + o, cap - o, ",\"detail\":");
    o += json_quote(out + o, detail);
    /* the Open Inference Protocol's error object ({"error": string}), which Triton and KServe clients read */
    o += (size_t)snprintf(out + o, cap - o, ",\"error\":");
    o += json_quote(out + o, detail);
    if (pointer) {
        o += (size_t)snprintf(out + o, cap - o, ",\"pointer\":");
        o += json_quote(out + o, pointer);
    }
    o += (size_t)snprintf(out + o, cap - o, "}");
    *len = o;
    return out;
}

void tld_http_reply_problem_text(tld_req *r, int status, const char *code, const char *pointer, const char *detail) {
    if (tld_http_reply_begin(r, &status) != 0) return;
    snprintf(r->problem_code, sizeof r->problem_code, "%s", code ? code : "ERROR"); /* counted by reason */
    size_t len = 0;
    char *doc = tld_http_problem_json(status, code, pointer, detail, &len);
    struct MHD_Response *resp = NULL;
    if (doc) {
        resp = MHD_create_response_from_buffer_with_free_callback(len, doc, free);
        if (!resp) free(doc);
    }
    tld_http_reply_set(r, status, resp, "application/problem+json");
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
    tld_http_reply_problem_text(r, status, code, pointer, detail);
}

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
