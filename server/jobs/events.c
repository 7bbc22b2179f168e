/*
 * events.c: the event ring (see events.h).
 *
 * Owns: `cap` event slots allocated once; slot of id i is (i - 1) % cap.
 * Guarded by one mutex; waiters sleep on one condition variable that every
 * publish broadcasts. Publishers never wait for readers. Invariant
 * (TL_NEVER): a reader copies only ids in [oldest, last], the ids the ring
 * still holds, so a slot is never read for an id it no longer holds.
 */
#include "jobs/events.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenlab/base.h"

struct tld_events {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tld_event *ring;
    size_t cap;
    uint64_t last;   /* id of the newest event, 0 when none */
    int closed;
    void (*notify)(void *user, int64_t job); /* tld_events_on_publish: called after each publish, outside mu */
    void *notify_user;
};

tld_events *tld_events_new(size_t capacity) {
    if (capacity < 16) capacity = 16;
    tld_events *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->ring = calloc(capacity, sizeof *e->ring);
    if (!e->ring) {
        free(e);
        return NULL;
    }
    e->cap = capacity;
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    return e;
}

void tld_events_free(tld_events *e) {
    if (!e) return;
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->ring);
    free(e);
}

uint64_t tld_events_publish(tld_events *e, int64_t job, const char *type, const char *data) {
    size_t tl = strlen(type), dl = strlen(data);
    if (tl >= TLD_EVENT_TYPE_LEN || dl >= TLD_EVENT_DATA_LEN) return 0;
    pthread_mutex_lock(&e->mu);
    uint64_t id = ++e->last;
    tld_event *ev = &e->ring[(id - 1) % e->cap];
    ev->id = id;
    ev->job = job;
    memcpy(ev->type, type, tl + 1);
    memcpy(ev->data, data, dl + 1);
    pthread_cond_broadcast(&e->cv);
    void (*notify)(void *, int64_t) = e->notify;
    void *nu = e->notify_user;
    pthread_mutex_unlock(&e->mu);
    if (notify) notify(nu, job);
    return id;
}

void tld_events_on_publish(tld_events *e, void (*fn)(void *user, int64_t job), void *user) {
    pthread_mutex_lock(&e->mu);
    e->notify = fn;
    e->notify_user = user;
    pthread_mutex_unlock(&e->mu);
}

uint64_t tld_events_last_id(tld_events *e) {
    pthread_mutex_lock(&e->mu);
    uint64_t id = e->last;
    pthread_mutex_unlock(&e->mu);
    return id;
}

/* Copies matching events after `after` (caller holds the lock). */
static int collect(tld_events *e, uint64_t after, int64_t job, tld_event *out, int max, uint64_t *next, int *gap) {
    uint64_t oldest = e->last >= e->cap ? e->last - e->cap + 1 : 1;
    *gap = after + 1 < oldest;
    uint64_t id = after + 1 < oldest ? oldest : after + 1;
    int n = 0;
    for (; id <= e->last && n < max; id++) {
        if (TL_NEVER(id < oldest || e->last - id >= e->cap)) break; /* outside what the ring holds */
        const tld_event *ev = &e->ring[(id - 1) % e->cap];
        if (job == 0 || ev->job == job) out[n++] = *ev;
    }
    *next = id - 1;
    return n;
}

tld_ev_status tld_events_wait(tld_events *e, uint64_t after, int64_t job, tld_event *out, int max, int *n,
                            uint64_t *next, int timeout_ms) {
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    int gap = 0;
    *n = 0;
    *next = after;
    pthread_mutex_lock(&e->mu);
    tld_ev_status st = TLD_EV_OK;
    for (;;) {
        if (e->closed) {
            st = TLD_EV_CLOSED;
            break;
        }
        *n = collect(e, *next, job, out, max, next, &gap);
        if (gap) st = TLD_EV_GAP;
        if (*n > 0 || gap) break;
        if (pthread_cond_timedwait(&e->cv, &e->mu, &dl) == ETIMEDOUT) {
            st = TLD_EV_TIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return st;
}

void tld_events_close(tld_events *e) {
    pthread_mutex_lock(&e->mu);
    e->closed = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}
