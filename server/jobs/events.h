/*
 * events.h: the daemon's event bus, feeding Server-Sent Events.
 *
 * events.c owns one fixed-size ring of the most recent events (state changes,
 * progress, metric points, checkpoints, log lines) of all jobs, each with a
 * global, increasing id. Publishers (job worker threads, HTTP handlers) append;
 * readers (SSE connections, one thread each) wait for events after an id.
 * Memory is fixed at creation: a reader that falls further behind than the ring
 * holds is told so (TLD_EV_GAP) and should refetch the job's state, never
 * blocking publishers. Thread-safe (one mutex, one condition variable).
 */
#ifndef TLD_EVENTS_H
#define TLD_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#define TLD_EVENT_TYPE_LEN 16
#define TLD_EVENT_DATA_LEN 496

typedef struct {
    uint64_t id;
    int64_t job;                         /* 0: daemon-wide */
    char type[TLD_EVENT_TYPE_LEN];        /* "state", "progress", "metric", "checkpoint", "log", "eval" */
    char data[TLD_EVENT_DATA_LEN];        /* one JSON object, truncated events are never published */
} tld_event;

typedef struct tld_events tld_events;

tld_events *tld_events_new(size_t capacity);
void tld_events_free(tld_events *e);
/* Appends an event (data: a JSON object shorter than TLD_EVENT_DATA_LEN); returns its id or 0 when too long. */
uint64_t tld_events_publish(tld_events *e, int64_t job, const char *type, const char *data);
/* Calls fn(user, job) after every publish (outside the ring's lock; fn must be cheap and must not
 * publish): the HTTP layer's wake of its parked event streams. NULL clears it. */
void tld_events_on_publish(tld_events *e, void (*fn)(void *user, int64_t job), void *user);
/* The id of the newest event (0 when none). */
uint64_t tld_events_last_id(tld_events *e);

typedef enum { TLD_EV_OK = 0, TLD_EV_TIMEOUT = 1, TLD_EV_GAP = 2, TLD_EV_CLOSED = 3 } tld_ev_status;
/* Copies up to max events with id > after and (job == 0 or event job == job) into out; waits up to
 * timeout_ms for at least one. *n receives the count, *next the id to pass next time. TLD_EV_GAP:
 * events after `after` were already overwritten (out holds what follows the gap). */
tld_ev_status tld_events_wait(tld_events *e, uint64_t after, int64_t job, tld_event *out, int max, int *n,
                            uint64_t *next, int timeout_ms);
/* Wakes every waiter with TLD_EV_CLOSED (daemon shutdown). */
void tld_events_close(tld_events *e);

#endif
