/*
 * sse.h: an incremental parser of Server-Sent Events (the text/event-stream
 * format of the WHATWG HTML standard): feed it bytes as they arrive in any
 * chunking; it calls back once per complete event. Lines longer than
 * SSE_LINE_MAX and events with more than SSE_DATA_MAX bytes of data are
 * dropped, so a misbehaving server cannot make it grow without bound.
 */
#ifndef TOKENLAB_SSE_H
#define TOKENLAB_SSE_H

#include <stddef.h>

#define SSE_LINE_MAX (64u * 1024u)
#define SSE_DATA_MAX (1024u * 1024u)

/* type: the event's type ("message" when not given); id: the last event id seen so far in the
 * stream ("" when none); data: the data lines joined by '\n'. Returns nonzero to stop parsing. */
typedef int (*sse_cb)(const char *type, const char *id, const char *data, void *u);

typedef struct {
    char line[SSE_LINE_MAX + 1];
    size_t llen;
    int overlong, after_cr;
    char type[64], last_id[64];
    char *data;
    size_t dlen, dcap;
    int has_data, data_overflow, stopped;
    long dropped; /* events or lines dropped for their size */
    sse_cb cb;
    void *u;
} sse_parser;

void sse_init(sse_parser *p, sse_cb cb, void *u);
/* Returns nonzero once the callback asked to stop (the rest of buf is ignored). */
int sse_feed(sse_parser *p, const char *buf, size_t n);
void sse_free(sse_parser *p);

#endif
