/*
 * http_stream.c: streaming replies (tld_reply_stream: Server-Sent Events,
 * large files). See http.c's design comment, "Streams": when fn has nothing
 * the stream is parked (http_conn.c) instead of waiting on a thread; it ends
 * when fn says so, when tld_http_stop runs, or after the idle timeout.
 *
 * Owns http_stream, one per tld_reply_stream, owned by the MHD response;
 * MHD's free callback takes it off the parked list, releases it and calls
 * the caller's free_fn. Runs on libmicrohttpd's event-loop threads.
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

/* libmicrohttpd's reader, on its event-loop thread. fn must not block: when it has nothing (0), the stream
 * is parked (its connection suspended: no thread, no polling) until tld_http_wake or its tick, then asked
 * again; a client that left is noticed when the next bytes fail to go out. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    http_stream *s = cls;
    if (atomic_load(&s->h->stopping) || s->gone) return MHD_CONTENT_READER_END_WITH_ERROR;
    long n = s->fn(s->state, pos, buf, max);
    double now = tl_clock_mono_s();
    if (n > 0) {
        if ((size_t)n > max) {
            tld_http_log(s->h, "stream function returned %ld bytes for a %zu-byte buffer", n, max);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        s->last_data = now;
        return (ssize_t)n;
    }
    if (n == -1) return MHD_CONTENT_READER_END_OF_STREAM;
    if (n < 0 && n != TLD_STREAM_SOON) return MHD_CONTENT_READER_END_WITH_ERROR;
    if (now - s->last_data >= (double)s->h->timeout_s) return MHD_CONTENT_READER_END_WITH_ERROR; /* idle */
    if (tld_http_park(s, n == TLD_STREAM_SOON) != 0) return MHD_CONTENT_READER_END_WITH_ERROR; /* stopping */
    return 0; /* suspended: MHD asks again after the resume */
}

static void stream_free(void *cls) {
    http_stream *s = cls;
    tld_http_unpark(s);
    if (s->free_fn) s->free_fn(s->state);
    free(s);
}

void tld_reply_stream_key(tld_req *r, uint64_t key) {
    if (r) r->stream_key = key;
}

void tld_reply_stream(tld_req *r, int status, const char *content_type, tld_stream_fn fn, void *state,
                     void (*free_fn)(void *state)) {
    if (!r) {
        if (free_fn) free_fn(state);
        return;
    }
    if (!fn) {
        tld_http_log(r->h, "%s %s: stream reply without a function", r->method, r->path ? r->path : "?");
        if (free_fn) free_fn(state);
        tld_http_reply_problem_text(r, 500, "INTERNAL", NULL, "internal error");
        return;
    }
    if (tld_http_reply_begin(r, &status) != 0) {
        if (free_fn) free_fn(state);
        return;
    }
    http_stream *s = calloc(1, sizeof *s);
    if (!s) {
        if (free_fn) free_fn(state);
        tld_http_log(r->h, "%s %s: out of memory starting a stream", r->method, r->path ? r->path : "?");
        return;
    }
    s->h = r->h;
    s->fn = fn;
    s->state = state;
    s->free_fn = free_fn;
    s->conn = r->conn;
    s->key = r->stream_key;
    s->last_data = tl_clock_mono_s();
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->fd = ci ? ci->connect_fd : -1;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK, stream_read, s, stream_free);
    if (!resp) stream_free(s);
    tld_http_reply_set(r, status, resp, content_type);
}
