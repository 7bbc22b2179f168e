/*
 * api.c: the client's only user of libcurl (see api.h). One easy handle per
 * request: the client makes few requests, so reuse would buy nothing and a
 * fresh handle keeps every request's settings explicit. Non-2xx answers are
 * always buffered (bounded) so their problem documents can be explained.
 */
#include "api.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "out.h"

volatile sig_atomic_t api_interrupted;

int api_init(void) { return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1; }
void api_cleanup(void) { curl_global_cleanup(); }

typedef struct {
    CURL *h;
    const api_req *q;
    api_resp *r;
    size_t cap, max;
    int status_known, to_sink, oom;
} xfer;

static int append(xfer *x, const char *p, size_t n) {
    api_resp *r = x->r;
    if (r->len + n > x->max) {
        r->too_large = 1;
        return -1;
    }
    if (r->len + n + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 16384;
        while (cap < r->len + n + 1) cap *= 2;
        if (cap > x->max + 1) cap = x->max + 1;
        char *b = realloc(r->body, cap);
        if (!b) {
            x->oom = 1;
            return -1;
        }
        r->body = b;
        x->cap = cap;
    }
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = 0;
    return 0;
}

static size_t on_write(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm;
    if (!x->status_known) {
        long code = 0;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
        x->status_known = 1;
        x->to_sink = x->q->sink && code >= 200 && code < 300;
    }
    if (x->to_sink) {
        if (x->q->sink(p, n, x->q->sink_u)) {
            x->r->stopped = 1;
            return 0;
        }
        return n;
    }
    return append(x, p, n) == 0 ? n : 0;
}

/* Copies a header's value (trimmed) when the line is "name: value". */
static int header_value(const char *line, size_t n, const char *name, char *out, size_t len) {
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':') return 0;
    const char *v = line + k + 1, *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) end--;
    snprintf(out, len, "%.*s", (int)(end - v), v);
    return 1;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm;
    char tmp[64];
    if (n >= 5 && strncmp(p, "HTTP/", 5) == 0) { /* a new answer (after 100 Continue): forget the last one's */
        x->r->ctype[0] = x->r->location[0] = 0;
        x->r->retry_after = -1;
        x->status_known = 0;
    }
    header_value(p, n, "Content-Type", x->r->ctype, sizeof x->r->ctype);
    header_value(p, n, "Location", x->r->location, sizeof x->r->location);
    if (header_value(p, n, "Retry-After", tmp, sizeof tmp)) x->r->retry_after = strtol(tmp, NULL, 10);
    return n;
}

static int on_progress(void *u, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
    (void)u, (void)dt, (void)dn, (void)ut, (void)un;
    return api_interrupted ? 1 : 0;
}

int api_do(cli *c, const api_req *q, api_resp *r) {
    memset(r, 0, sizeof *r);
    r->retry_after = -1;
    char url[2048], auth[300], ua[64];
    if ((size_t)snprintf(url, sizeof url, "%s%s", c->server, q->path) >= sizeof url) {
        snprintf(r->err, sizeof r->err, "the request address is too long");
        return EX_LOCAL;
    }
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(r->err, sizeof r->err, "libcurl could not start a request (out of memory?)");
        return EX_LOCAL;
    }
    xfer x = {.h = h, .q = q, .r = r, .max = q->max_bytes ? q->max_bytes : API_MAX_BODY};
    char ebuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdr = NULL;
    curl_mime *mime = NULL;
    int rc = EX_LOCAL;

    snprintf(ua, sizeof ua, "User-Agent: tokenlab/%s", TOKENLAB_CLIENT_VERSION);
    hdr = curl_slist_append(hdr, ua);
    hdr = curl_slist_append(hdr, q->sink ? "Accept: text/event-stream" : "Accept: application/json");
    hdr = curl_slist_append(hdr, "Expect:"); /* no 100-continue round trip for large bodies */
    if (c->token[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        hdr = curl_slist_append(hdr, auth);
    }
    if (q->header) hdr = curl_slist_append(hdr, q->header);
    char ct[160];
    if (q->ctype && q->nparts == 0) {
        snprintf(ct, sizeof ct, "Content-Type: %s", q->ctype);
        hdr = curl_slist_append(hdr, ct);
    }
    if (!hdr) {
        snprintf(r->err, sizeof r->err, "out of memory");
        goto done;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    if (q->timeout_s >= 0) {
        curl_easy_setopt(h, CURLOPT_TIMEOUT, q->timeout_s ? q->timeout_s : 60L);
    } else { /* a stream: the daemon sends a heartbeat every 15 s, so a minute of silence is a dead link */
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    }
    const char *method = q->method ? q->method : "GET";
    if (q->nparts > 0) {
        mime = curl_mime_init(h);
        for (int i = 0; mime && i < q->nparts; i++) {
            curl_mimepart *part = curl_mime_addpart(mime);
            if (!part || curl_mime_name(part, q->parts[i].name) != CURLE_OK ||
                curl_mime_data(part, q->parts[i].data, q->parts[i].len) != CURLE_OK ||
                (q->parts[i].filename && curl_mime_filename(part, q->parts[i].filename) != CURLE_OK) ||
                (q->parts[i].type && curl_mime_type(part, q->parts[i].type) != CURLE_OK)) {
                snprintf(r->err, sizeof r->err, "out of memory building the upload");
                goto done;
            }
        }
        if (!mime) {
            snprintf(r->err, sizeof r->err, "out of memory building the upload");
            goto done;
        }
        curl_easy_setopt(h, CURLOPT_MIMEPOST, mime);
        if (strcmp(method, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    } else if (q->body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(q->body ? q->len : 0));
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body ? q->body : "");
        if (strcmp(method, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }

    CURLcode cc = curl_easy_perform(h);
    r->curl_code = (int)cc;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    if (cc == CURLE_OK || (cc == CURLE_WRITE_ERROR && r->stopped)) {
        rc = EX_OK;
    } else if (cc == CURLE_ABORTED_BY_CALLBACK && api_interrupted) {
        snprintf(r->err, sizeof r->err, "interrupted");
        rc = EX_INTERRUPTED;
    } else if (cc == CURLE_WRITE_ERROR && r->too_large) {
        snprintf(r->err, sizeof r->err, "the answer from %.300s is larger than %zu bytes; refused", c->server, x.max);
        rc = EX_LOCAL;
    } else if (cc == CURLE_WRITE_ERROR && x.oom) {
        snprintf(r->err, sizeof r->err, "out of memory reading the answer");
        rc = EX_LOCAL;
    } else {
        snprintf(r->err, sizeof r->err, "%s", ebuf[0] ? ebuf : curl_easy_strerror(cc));
        rc = EX_CONNECT;
    }
done:
    curl_mime_free(mime);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return rc;
}

int api_broke_midway(const api_resp *r) {
    CURLcode cc = (CURLcode)r->curl_code;
    return cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR || cc == CURLE_GOT_NOTHING || cc == CURLE_PARTIAL_FILE;
}

void api_explain_transport(const cli *c, const api_resp *r, int rc) {
    if (rc == EX_OK) return;
    if (rc == EX_INTERRUPTED) {
        fprintf(stderr, "\ntokenlab %s: interrupted\n", c->cmd);
        return;
    }
    if (rc != EX_CONNECT) {
        fprintf(stderr, "tokenlab %s: %s\n", c->cmd, r->err);
        return;
    }
    switch ((CURLcode)r->curl_code) {
    case CURLE_COULDNT_CONNECT:
        fprintf(stderr,
                "tokenlab %s: cannot connect to %s (%s).\n"
                "  Is the daemon running? Start it with `tokenlabd serve`, or point the client at it with\n"
                "  --server URL, TOKENLAB_SERVER or \"server\" in the config file (this address came from %s).\n",
                c->cmd, c->server, r->err, c->server_from);
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
        fprintf(stderr, "tokenlab %s: cannot resolve the host of %s (%s); the address came from %s.\n", c->cmd,
                c->server, r->err, c->server_from);
        break;
    case CURLE_OPERATION_TIMEDOUT:
        fprintf(stderr, "tokenlab %s: %s did not answer in time (%s); the address came from %s.\n", c->cmd,
                c->server, r->err, c->server_from);
        break;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        fprintf(stderr, "tokenlab %s: the server address %s (from %s) is not usable: %s\n", c->cmd, c->server,
                c->server_from, r->err);
        break;
    default:
        fprintf(stderr, "tokenlab %s: the connection to %s failed: %s (the address came from %s).\n", c->cmd,
                c->server, r->err, c->server_from);
        break;
    }
}

static void hint(const cli *c, const api_resp *r, const char *code, const char *detail) {
    if (r->status == 401)
        fprintf(stderr, "  hint: this needs the daemon's API token (it is in <state>/token): pass --token TOKEN or\n"
                        "        --token-file FILE, set TOKENLAB_TOKEN or TOKENLAB_TOKEN_FILE, or add it to the config "
                        "file.\n");
    else if (r->status == 403 && strcmp(code, "FORBIDDEN") == 0)
        fprintf(stderr, "  hint: the token (from %s) is not valid here: the admin token is in the daemon's "
                        "<state>/token;\n        read-only tokens are listed by `tokenlabd token list`.\n",
                c->token_from[0] ? c->token_from : "nowhere");
    else if (r->status == 403 && strcmp(code, "READ_ONLY_TOKEN") == 0)
        fprintf(stderr, "  hint: the token (from %s) may only read and run inference; this needs the admin token "
                        "(<state>/token).\n", c->token_from[0] ? c->token_from : "nowhere");
    else if (r->status == 403 && strcmp(code, "HOST_NOT_ALLOWED") == 0)
        fprintf(stderr, "  hint: the daemon answers only to its own address or localhost; try --server "
                        "http://127.0.0.1:PORT.\n");
    else if (r->status == 404 && strcmp(detail, "no such resource") == 0)
        fprintf(stderr, "  hint: the daemon at %s has no such endpoint; it may be older than this client.\n",
                c->server);
    else if (r->status == 429 && r->retry_after >= 0)
        fprintf(stderr, "  hint: the server is busy; retry after %ld s.\n", r->retry_after);
}

int api_explain_status(const cli *c, const api_resp *r) {
    if (r->status >= 200 && r->status < 300) return EX_OK;
    cJSON *p = r->body ? cJSON_ParseWithLength(r->body, r->len) : NULL;
    const char *code = out_jstr(p, "code", ""), *detail = out_jstr(p, "detail", ""),
               *title = out_jstr(p, "title", "");
    cJSON *ptr = cJSON_GetObjectItemCaseSensitive(p, "pointer");
    char safe[2048];
    if (cJSON_IsObject(p) && *code) {
        fprintf(stderr, "tokenlab %s: the server refused: HTTP %ld %s (%s)\n", c->cmd, r->status, title, code);
        if (cJSON_IsString(ptr)) {
            const char *pv = ptr->valuestring;
            size_t pl = strlen(pv);
            out_sanitize(pv[0] ? pv : "(the whole document)", safe, sizeof safe);
            fprintf(stderr, "  field:  %s\n", safe);
            if (pl && strncmp(detail, pv, pl) == 0 && strncmp(detail + pl, ": ", 2) == 0) detail += pl + 2;
        }
        out_sanitize(detail, safe, sizeof safe);
        if (*safe) fprintf(stderr, "  detail: %s\n", safe);
        hint(c, r, code, detail);
    } else {
        char snippet[201];
        snprintf(snippet, sizeof snippet, "%s", r->body ? r->body : "");
        out_sanitize(snippet, safe, sizeof safe);
        fprintf(stderr, "tokenlab %s: the server refused: HTTP %ld%s%s\n", c->cmd, r->status, *safe ? ": " : "",
                safe);
        hint(c, r, "", "");
    }
    if (c->json && cJSON_IsObject(p)) api_print_body(r);
    cJSON_Delete(p);
    return EX_SERVER;
}

int api_call(cli *c, const api_req *q, api_resp *r) {
    int rc = api_do(c, q, r);
    if (rc != EX_OK) {
        api_explain_transport(c, r, rc);
        return rc;
    }
    if (r->stopped) return EX_OK;
    return api_explain_status(c, r);
}

int api_json(cli *c, const char *method, const char *path, const char *body, api_resp *r, cJSON **out) {
    *out = NULL;
    api_req q = {.method = method, .path = path, .body = body, .len = body ? strlen(body) : 0,
                 .ctype = body ? "application/json" : NULL};
    int rc = api_call(c, &q, r);
    if (rc != EX_OK) {
        api_free(r);
        return rc;
    }
    if (r->status == 204) return EX_OK;
    *out = r->body ? cJSON_ParseWithLength(r->body, r->len) : NULL;
    if (!*out) {
        fprintf(stderr, "tokenlab %s: the answer of %s%s is not JSON (Content-Type '%s')\n", c->cmd, c->server, path,
                r->ctype);
        api_free(r);
        return EX_LOCAL;
    }
    return EX_OK;
}

void api_free(api_resp *r) {
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

void api_escape(const char *s, char *out, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    if (!len) return;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                    *p == '.' || *p == '_' || *p == '~';
        if (o + (plain ? 1 : 3) >= len) break;
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = 0;
}

void api_print_body(const api_resp *r) {
    if (!r->body) return;
    fwrite(r->body, 1, r->len, stdout);
    if (r->len == 0 || r->body[r->len - 1] != '\n') fputc('\n', stdout);
    fflush(stdout);
}
