/*
 * events.h: the daemon's event bus, feeding Server-Sent Events.
 *
 * events.c owns one fixed-size ring of the most recent events (state changes,
 * progress, metric points, checkpoints, log lines) of all jobs, each with a
 * global, increasing id. Publishers (job worker threads, HTTP handlers) append;
 * readers (SSE connections, one thread each) wait for events after an id.
 * Memory is fixed at creation: a reader that falls further behind than the ring
 * holds is told so (TL_EV_GAP) and should refetch the job's state, never
 * blocking publishers. Thread-safe (one mutex, one condition variable).
 */
#ifndef TL_EVENTS_H
#define TL_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#define TL_EVENT_TYPE_LEN 16
#define TL_EVENT_DATA_LEN 496

typedef struct {
    uint64_t id;
    int64_t job;                         /* 0: daemon-wide */
    char type[TL_EVENT_TYPE_LEN];        /* "state", "progress", "metric", "checkpoint", "log", "eval" */
    char data[TL_EVENT_DATA_LEN];        /* one JSON object, truncated events are never published */
} tl_event;

typedef struct tl_events tl_events;

tl_events *tl_events_new(size_t capacity);
void tl_events_free(tl_events *e);
/* Appends an event (data: a JSON object shorter than TL_EVENT_DATA_LEN); returns its id or 0 when too long. */
uint64_t tl_events_publish(tl_events *e, int64_t job, const char *type, const char *data);
/* The id of the newest event (0 when none). */
uint64_t tl_events_last_id(tl_events *e);

typedef enum { TL_EV_OK = 0, TL_EV_TIMEOUT = 1, TL_EV_GAP = 2, TL_EV_CLOSED = 3 } tl_ev_status;
/* Copies up to max events with id > after and (job == 0 or event job == job) into out; waits up to
 * timeout_ms for at least one. *n receives the count, *next the id to pass next time. TL_EV_GAP:
 * events after `after` were already overwritten (out holds what follows the gap). */
tl_ev_status tl_events_wait(tl_events *e, uint64_t after, int64_t job, tl_event *out, int max, int *n,
                            uint64_t *next, int timeout_ms);
/* Wakes every waiter with TL_EV_CLOSED (daemon shutdown). */
void tl_events_close(tl_events *e);

#endif
