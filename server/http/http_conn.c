/*
 * http_conn.c: how the HTTP layer holds many clients on few threads (see
 * http.c's design comment, "Connections"):
 *
 *   - the handler pool: handlers run on `handler_threads` threads of their
 *     own, never on libmicrohttpd's event-loop threads. The access handler
 *     suspends the connection and queues the request (a bounded ring); a
 *     worker runs the handler and resumes the connection, whose next
 *     access-handler call queues the reply. A full ring is a 503.
 *   - parked streams: a stream reader with nothing to send suspends its
 *     connection, which then costs no thread and no polling. The ticker
 *     resumes every parked stream when tld_http_wake is called (at most
 *     every HTTP_WAKE_MS, so a burst of events costs one round), each one at
 *     least every HTTP_TICK_S (heartbeats) or at its idle deadline, and, once
 *     a second, those whose client hung up (one poll() over their sockets).
 *   - the connection registry: one record per connection from
 *     MHD_OPTION_NOTIFY_CONNECTION, for the total cap (connections past
 *     max_connections are answered 503 and closed) and for the slowloris
 *     reaper in the ticker: a connection that has not sent a request's
 *     headers within header_timeout_s, or a body within its deadline, has
 *     its socket shut down.
 *
 * Owns the pool's threads and ring, the parked list, the registry and the
 * ticker thread. Threads: MHD's event-loop threads call tld_http_dispatch,
 * tld_http_park, tld_http_unpark and the connection callback; the workers
 * and the ticker are this file's; tld_http_wake may be called from any
 * thread. pool_mu guards the ring, park_mu the parked list and the wake
 * flag, conn_mu the registry; none is held while another is taken.
 */
#include "http/http_internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "tokenlab/base.h"

/* ------------------------------------------------------------------ the handler pool */

/* The most recently idle worker takes the next request (a stack, not a queue): a client sending one
 * request after another keeps meeting the same thread, whose malloc arena and caches are warm. */
static void *worker_main(void *arg) {
    http_worker *w = arg;
    tld_http *h = w->h;
    pthread_mutex_lock(&h->pool_mu);
    for (;;) {
        tld_req *r = NULL;
        if (h->pool_count > 0) {
            r = h->pool_ring[h->pool_head];
            h->pool_head = (h->pool_head + 1) % h->pool_cap;
            h->pool_count--;
        } else if (h->pool_quit) {
            break;
        } else {
            h->pool_idle[h->pool_nidle++] = w;
            while (!w->job && !h->pool_quit) pthread_cond_wait(&w->cv, &h->pool_mu);
            r = w->job;
            w->job = NULL;
            if (!r) break; /* quitting: dispatch no longer hands out work */
        }
        pthread_mutex_unlock(&h->pool_mu);
        if (atomic_load(&h->stopping))
            tld_http_reply_problem_text(r, 503, "STOPPING", NULL, "the daemon is stopping");
        else
            tld_http_run_handler(r);
        r->handled = 1;
        MHD_resume_connection(r->conn); /* its next access-handler call queues the reply */
        pthread_mutex_lock(&h->pool_mu);
    }
    pthread_mutex_unlock(&h->pool_mu);
    return NULL;
}

int tld_http_dispatch(tld_http *h, tld_req *r) {
    pthread_mutex_lock(&h->pool_mu);
    if (h->pool_quit || (h->pool_nidle == 0 && h->pool_count == h->pool_cap)) {
        pthread_mutex_unlock(&h->pool_mu);
        return -1;
    }
    /* suspended before any worker can see it, so its resume always follows */
    MHD_suspend_connection(r->conn);
    if (h->pool_nidle > 0) {
        http_worker *w = h->pool_idle[--h->pool_nidle];
        w->job = r;
        pthread_cond_signal(&w->cv);
    } else {
        h->pool_ring[(h->pool_head + h->pool_count) % h->pool_cap] = r;
        h->pool_count++;
    }
    pthread_mutex_unlock(&h->pool_mu);
    return 0;
}

/* ------------------------------------------------------------------ parked streams */

int tld_http_park(http_stream *s, int soon) {
    tld_http *h = s->h;
    pthread_mutex_lock(&h->park_mu);
    if (atomic_load(&h->stopping)) {
        pthread_mutex_unlock(&h->park_mu);
        return -1;
    }
    s->parked = 1;
    double now = tl_clock_mono_s(), idle_end = s->last_data + (double)h->timeout_s;
    double tick = soon ? HTTP_SOON_MS / 1000.0 : HTTP_TICK_S;
    s->park_until = now + tick < idle_end ? now + tick : idle_end;
    if (h->nparked == 0 || s->park_until < h->next_due) h->next_due = s->park_until;
    s->prev = NULL;
    s->next = h->parked;
    if (h->parked) h->parked->prev = s;
    h->parked = s;
    h->nparked++;
    MHD_suspend_connection(s->conn); /* under park_mu: the ticker resumes it only after this */
    pthread_mutex_unlock(&h->park_mu);
    return 0;
}

/* Takes s off the parked list (park_mu held). */
static void unlink_parked(tld_http *h, http_stream *s) {
    if (!s->parked) return;
    if (s->prev) s->prev->next = s->next;
    else h->parked = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->parked = 0;
    h->nparked--;
}

void tld_http_unpark(http_stream *s) {
    tld_http *h = s->h;
    pthread_mutex_lock(&h->park_mu);
    unlink_parked(h, s);
    pthread_mutex_unlock(&h->park_mu);
}

void tld_http_wake(tld_http *h) {
    if (!h) return;
    pthread_mutex_lock(&h->park_mu);
    h->wake_pending = 1;
    h->wake_all = 1;
    pthread_cond_signal(&h->park_cv);
    pthread_mutex_unlock(&h->park_mu);
}

void tld_http_wake_key(tld_http *h, uint64_t key) {
    if (!h) return;
    pthread_mutex_lock(&h->park_mu);
    h->wake_pending = 1;
    int known = 0;
    for (int i = 0; i < h->nwake_keys && !known; i++) known = h->wake_keys[i] == key;
    if (!known) {
        if (h->nwake_keys < HTTP_WAKE_KEYS) h->wake_keys[h->nwake_keys++] = key;
        else h->wake_all = 1;
    }
    pthread_cond_signal(&h->park_cv);
    pthread_mutex_unlock(&h->park_mu);
}

/* 1 when a wake round (park_mu held) concerns stream s: every stream, an unkeyed one, or its key woken. */
static int woken(const tld_http *h, const http_stream *s) {
    if (h->wake_all || s->key == 0) return 1;
    for (int i = 0; i < h->nwake_keys; i++)
        if (h->wake_keys[i] == s->key) return 1;
    return 0;
}

/* Resumes the parked streams (park_mu held): those a wake round concerns (round), and those whose tick
 * is due. */
static void resume_parked(tld_http *h, int round, double now) {
    if (!round && now < h->next_due) return; /* no tick is due: the list is not walked */
    double due = now + HTTP_TICK_S;
    http_stream *s = h->parked;
    while (s) {
        http_stream *next = s->next;
        if ((round && woken(h, s)) || s->park_until <= now) {
            unlink_parked(h, s);
            MHD_resume_connection(s->conn);
        } else if (s->park_until < due) {
            due = s->park_until;
        }
        s = next;
    }
    h->next_due = due;
}

/* Resumes the parked streams whose client hung up, marked gone (park_mu held): one poll() over their sockets. */
static void resume_gone(tld_http *h) {
    if (h->nparked == 0) return;
    struct pollfd *p = malloc(sizeof *p * (size_t)h->nparked);
    http_stream **who = malloc(sizeof *who * (size_t)h->nparked);
    int n = 0;
    for (http_stream *s = h->parked; p && who && s && n < h->nparked; s = s->next) {
        if (s->fd < 0) continue;
        p[n] = (struct pollfd){.fd = s->fd, .events = POLLRDHUP};
        who[n++] = s;
    }
    if (n > 0 && poll(p, (nfds_t)n, 0) > 0)
        for (int i = 0; i < n; i++)
            if (p[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                who[i]->gone = 1;
                unlink_parked(h, who[i]);
                MHD_resume_connection(who[i]->conn);
            }
    free(p);
    free(who);
}

/* ------------------------------------------------------------------ the connection registry */

void tld_http_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                            enum MHD_ConnectionNotificationCode code) {
    tld_http *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        http_conn *k = calloc(1, sizeof *k);
        *socket_context = k;
        int n = atomic_fetch_add(&h->nconns, 1) + 1;
        if (!k) return; /* not tracked: the cap still counts it */
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        k->fd = ci ? ci->connect_fd : -1;
        k->phase_start = tl_clock_mono_s();
        k->over_cap = n > h->max_connections;
        pthread_mutex_lock(&h->conn_mu);
        k->next = h->conns;
        if (h->conns) h->conns->prev = k;
        h->conns = k;
        pthread_mutex_unlock(&h->conn_mu);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub(&h->nconns, 1);
        http_conn *k = *socket_context;
        *socket_context = NULL;
        if (!k) return;
        pthread_mutex_lock(&h->conn_mu);
        if (k->prev) k->prev->next = k->next;
        else h->conns = k->next;
        if (k->next) k->next->prev = k->prev;
        pthread_mutex_unlock(&h->conn_mu);
        free(k);
    }
}

http_conn *tld_http_conn_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void tld_http_conn_phase(tld_http *h, http_conn *k, int phase, double deadline) {
    if (!k) return;
    pthread_mutex_lock(&h->conn_mu);
    k->phase = phase;
    k->phase_start = tl_clock_mono_s();
    k->deadline = deadline;
    pthread_mutex_unlock(&h->conn_mu);
}

/* Shuts down the sockets of connections past their header or body deadline (conn_mu held). libmicrohttpd
 * then sees the connection fail and closes it. */
static void reap_slow(tld_http *h, double now) {
    for (http_conn *k = h->conns; k; k = k->next) {
        if (k->reaped || k->fd < 0) continue;
        int late = (k->phase == HTTP_PHASE_HEADERS && now - k->phase_start > (double)h->header_timeout_s) ||
                   (k->phase == HTTP_PHASE_BODY && k->deadline > 0 && now > k->deadline);
        if (!late) continue;
        k->reaped = 1;
        h->reaped++;
        shutdown(k->fd, SHUT_RDWR);
    }
}

/* ------------------------------------------------------------------ the ticker */

static void *ticker_main(void *arg) {
    tld_http *h = arg;
    double last_wake = 0.0, last_reap = 0.0;
    pthread_mutex_lock(&h->park_mu);
    while (!h->ticker_quit) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_nsec += (long)HTTP_WAKE_MS * 1000000L;
        if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&h->park_cv, &h->park_mu, &dl);
        double now = tl_clock_mono_s();
        int stopping = atomic_load(&h->stopping), check = now - last_reap >= 1.0;
        if (check) resume_gone(h); /* before the due ones leave the list */
        if (stopping) h->wake_all = 1;
        if (stopping || (h->wake_pending && now - last_wake >= HTTP_WAKE_MS / 1000.0)) {
            last_wake = now;
            resume_parked(h, 1, now);
            h->wake_pending = 0;
            h->wake_all = 0;
            h->nwake_keys = 0;
        } else {
            resume_parked(h, 0, now);
        }
        if (check) {
            last_reap = now;
            pthread_mutex_unlock(&h->park_mu);
            pthread_mutex_lock(&h->conn_mu);
            reap_slow(h, now);
            pthread_mutex_unlock(&h->conn_mu);
            pthread_mutex_lock(&h->park_mu);
        }
    }
    h->wake_all = 1;
    resume_parked(h, 1, tl_clock_mono_s());
    pthread_mutex_unlock(&h->park_mu);
    return NULL;
}

/* ------------------------------------------------------------------ start and stop */

int tld_http_conn_start(tld_http *h, char *err, size_t errlen) {
    h->pool_cap = HTTP_POOL_QUEUE;
    h->pool_ring = calloc((size_t)h->pool_cap, sizeof *h->pool_ring);
    h->pool_workers = calloc((size_t)h->handler_threads, sizeof *h->pool_workers);
    h->pool_idle = calloc((size_t)h->handler_threads, sizeof *h->pool_idle);
    if (!h->pool_ring || !h->pool_workers || !h->pool_idle) {
        tl_seterr(err, errlen, "out of memory for the handler pool");
        tld_http_conn_stop(h);
        return -1;
    }
    h->pool_head = h->pool_count = h->pool_nidle = 0;
    h->pool_quit = 0;
    h->ticker_quit = 0;
    h->wake_pending = 0;
    for (int i = 0; i < h->handler_threads; i++) {
        http_worker *w = &h->pool_workers[i];
        w->h = h;
        pthread_cond_init(&w->cv, NULL);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            pthread_cond_destroy(&w->cv);
            tl_seterr(err, errlen, "cannot start handler thread %d", i);
            tld_http_conn_stop(h);
            return -1;
        }
        h->pool_started++;
    }
    if (pthread_create(&h->ticker, NULL, ticker_main, h) != 0) {
        tl_seterr(err, errlen, "cannot start the HTTP ticker thread");
        tld_http_conn_stop(h);
        return -1;
    }
    h->ticker_started = 1;
    return 0;
}

void tld_http_conn_stop(tld_http *h) {
    /* the workers answer what is queued (503: stopping) and resume every connection they hold */
    pthread_mutex_lock(&h->pool_mu);
    h->pool_quit = 1;
    for (int i = 0; i < h->pool_started; i++) pthread_cond_signal(&h->pool_workers[i].cv);
    pthread_mutex_unlock(&h->pool_mu);
    for (int i = 0; i < h->pool_started; i++) {
        pthread_join(h->pool_workers[i].thread, NULL);
        pthread_cond_destroy(&h->pool_workers[i].cv);
    }
    h->pool_started = 0;
    /* the ticker resumes every parked stream; with stopping set they end instead of parking again */
    if (h->ticker_started) {
        pthread_mutex_lock(&h->park_mu);
        h->ticker_quit = 1;
        pthread_cond_signal(&h->park_cv);
        pthread_mutex_unlock(&h->park_mu);
        pthread_join(h->ticker, NULL);
        h->ticker_started = 0;
    }
    free(h->pool_workers);
    free(h->pool_idle);
    free(h->pool_ring);
    h->pool_workers = NULL;
    h->pool_idle = NULL;
    h->pool_ring = NULL;
}

int tld_http_raise_nofile(tld_http *h) {
    struct rlimit rl;
    rlim_t want = (rlim_t)h->max_connections + HTTP_MARGIN_CONNECTIONS + HTTP_RESERVED_FDS;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return h->max_connections;
    if (rl.rlim_cur < want) {
        rlim_t cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        struct rlimit nl = {cur, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nl) == 0) rl.rlim_cur = cur;
    }
    if (rl.rlim_cur < want) { /* the system allows fewer files: hold fewer clients */
        long can = (long)rl.rlim_cur - HTTP_MARGIN_CONNECTIONS - HTTP_RESERVED_FDS;
        int before = h->max_connections;
        h->max_connections = can > 16 ? (int)can : 16;
        tld_http_log(h, "the open-file limit (%llu) holds %d clients, not the %d asked for",
                     (unsigned long long)rl.rlim_cur, h->max_connections, before);
    }
    return h->max_connections;
}
