/*
 * sse.c: the Server-Sent Events parser (see sse.h). Line endings may be
 * CRLF, LF or CR, split anywhere between chunks. Allocation: one data buffer,
 * grown up to SSE_DATA_MAX; on allocation failure the event is dropped.
 */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

void sse_init(sse_parser *p, sse_cb cb, void *u) {
    memset(p, 0, sizeof *p);
    p->cb = cb;
    p->u = u;
}

void sse_free(sse_parser *p) {
    free(p->data);
    p->data = NULL;
    p->dlen = p->dcap = 0;
}

static void data_append(sse_parser *p, const char *v, size_t n) {
    if (p->data_overflow) return;
    size_t need = p->dlen + n + 2;
    if (need > SSE_DATA_MAX) {
        p->data_overflow = 1;
        return;
    }
    if (need > p->dcap) {
        size_t cap = p->dcap ? p->dcap : 1024;
        while (cap < need) cap *= 2;
        char *d = realloc(p->data, cap);
        if (!d) {
            p->data_overflow = 1;
            return;
        }
        p->data = d;
        p->dcap = cap;
    }
    memcpy(p->data + p->dlen, v, n);
    p->dlen += n;
    p->data[p->dlen++] = '\n';
    p->data[p->dlen] = 0;
}

static void dispatch(sse_parser *p) {
    if (p->has_data && !p->data_overflow && p->data) {
        if (p->dlen > 0 && p->data[p->dlen - 1] == '\n') p->data[--p->dlen] = 0;
        if (p->cb(p->type[0] ? p->type : "message", p->last_id, p->data, p->u)) p->stopped = 1;
    } else if (p->data_overflow) {
        p->dropped++;
    }
    p->type[0] = 0;
    p->dlen = 0;
    if (p->data) p->data[0] = 0;
    p->has_data = p->data_overflow = 0;
}

static void field(sse_parser *p, const char *line, size_t n) {
    if (n == 0) {
        dispatch(p);
        return;
    }
    if (line[0] == ':') return; /* a comment (heartbeat) */
    const char *colon = memchr(line, ':', n);
    size_t klen = colon ? (size_t)(colon - line) : n;
    const char *v = colon ? colon + 1 : line + n;
    size_t vlen = (size_t)(line + n - v);
    if (vlen > 0 && *v == ' ') v++, vlen--;
    if (klen == 5 && memcmp(line, "event", 5) == 0) {
        size_t k = vlen < sizeof p->type - 1 ? vlen : sizeof p->type - 1;
        memcpy(p->type, v, k);
        p->type[k] = 0;
    } else if (klen == 4 && memcmp(line, "data", 4) == 0) {
        p->has_data = 1;
        data_append(p, v, vlen);
    } else if (klen == 2 && memcmp(line, "id", 2) == 0) {
        if (!memchr(v, 0, vlen) && vlen < sizeof p->last_id) {
            memcpy(p->last_id, v, vlen);
            p->last_id[vlen] = 0;
        }
    } /* retry and unknown fields are ignored */
}

int sse_feed(sse_parser *p, const char *buf, size_t n) {
    for (size_t i = 0; i < n && !p->stopped; i++) {
        char ch = buf[i];
        if (p->after_cr) {
            p->after_cr = 0;
            if (ch == '\n') continue; /* the LF of a CRLF */
        }
        if (ch == '\r' || ch == '\n') {
            p->after_cr = ch == '\r';
            if (p->overlong) p->dropped++;
            else field(p, p->line, p->llen);
            p->llen = 0;
            p->overlong = 0;
            continue;
        }
        if (p->overlong) continue;
        if (p->llen >= SSE_LINE_MAX) {
            p->overlong = 1;
            continue;
        }
        p->line[p->llen++] = ch;
    }
    return p->stopped;
}
