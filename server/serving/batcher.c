/*
 * batcher.c: the dynamic batchers of served models (see models.h): the
 * lanes (a thread each, one per compute thread), their contexts and buffers,
 * and tld_models_infer, which queues a caller's images and waits for them.
 *
 * Owns per loaded model its lanes: each lane's contexts (sized for
 * max_batch) and batch buffers are touched by that lane's thread alone after
 * loading. E->mu guards the queue, settings, state, statistics and the
 * lanes' busy flags; callers wait on E->done_cv, lanes on E->cv (both on
 * CLOCK_MONOTONIC). Threads: the lanes, and any caller of tld_models_infer.
 * Invariants: a batch holds at most TLD_MODELS_BATCH_MAX requests and the
 * queue count never goes below zero (TL_NEVER).
 */
#include "serving/models.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "serving/serving_internal.h"
#include "tokenlab/base.h"
#include "tokenlab/inspect.h"

static void timespec_at(struct timespec *ts, int64_t mono_ms) {
    ts->tv_sec = (time_t)(mono_ms / 1000);
    ts->tv_nsec = (long)(mono_ms % 1000) * 1000000L;
}

/* A condition variable on CLOCK_MONOTONIC, so deadlines do not move with the wall clock. */
void tld_models_cond_init_mono(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* Per-token top class and its probability from the aux logits of one image. */
static void softmax_into(const float *s, int K, float *out) {
    float mx = s[0];
    for (int k = 1; k < K; k++) mx = s[k] > mx ? s[k] : mx;
    double se = 0.0;
    for (int k = 0; k < K; k++) se += exp((double)(s[k] - mx));
    for (int k = 0; k < K; k++) out[k] = (float)(exp((double)(s[k] - mx)) / se);
}

/* (Re)allocates a lane's contexts and buffers for batch B (its own thread, E->mu not held). */
int tld_models_lane_alloc(lane *L, int B, char *err, size_t errlen) {
    entry *E = L->E;
    if (L->narrow && L->batch == B) return 0;
    tl_ctx_free(L->narrow);
    tl_ctx_free(L->wide);
    free(L->in);
    free(L->scores);
    L->wide = NULL;
    L->narrow = tl_ctx_new(E->model, B, 0, 1, err, errlen);
    if (L->index == 0 && E->M->threads > 1) L->wide = tl_ctx_new(E->model, B, 0, E->M->threads, err, errlen);
    tl_ctx_freeze_weights(L->narrow); /* a served model's weights never change: pack its stem once */
    tl_ctx_freeze_weights(L->wide);
    L->in = malloc(sizeof(float) * (size_t)B * 3 * (size_t)E->S * (size_t)E->S);
    L->scores = malloc(sizeof(float) * (size_t)B * (size_t)E->K);
    if (!L->narrow || (L->index == 0 && E->M->threads > 1 && !L->wide) || !L->in || !L->scores) {
        if (L->narrow) snprintf(err, errlen, "out of memory for a batch of %d", B);
        L->batch = 0;
        return -1;
    }
    L->batch = B;
    return 0;
}

static int others_busy(const entry *E, const lane *L) {
    for (int i = 0; i < E->nlanes; i++)
        if (&E->lanes[i] != L && E->lanes[i].busy) return 1;
    return 0;
}

/* A lane's thread. Lane 0 takes work whenever it is free; the other lanes only while lane 0 is busy,
 * so a lone request runs on lane 0's wide context (every compute thread: the lowest latency), and
 * concurrent requests run as parallel batches, one per lane, each on one thread: images in parallel
 * need no synchronisation inside a forward pass and measured about 1.2x the throughput of one
 * batch split across the threads. */
void *tld_models_batcher_main(void *arg) {
    lane *L = arg;
    entry *E = L->E;
    item *batch[TLD_MODELS_BATCH_MAX];
    size_t img = (size_t)3 * (size_t)E->S * (size_t)E->S;
    int N = E->grid * E->grid;
    pthread_mutex_lock(&E->mu);
    for (;;) {
        while (!E->quit && !(E->head && (L->index == 0 || E->lanes[0].busy))) pthread_cond_wait(&E->cv, &E->mu);
        if (E->quit) break;
        /* Wait for the batch to fill, but only while more requests are on their way. */
        int64_t until = E->head->enq_ms + E->max_delay_ms;
        while (!E->quit && E->head && E->queued < E->max_batch && E->preparing > 0 && tl_clock_mono_ms() < until) {
            struct timespec ts;
            timespec_at(&ts, until);
            pthread_cond_timedwait(&E->cv, &E->mu, &ts);
        }
        if (E->quit) break;
        if (!E->head) continue; /* another lane took it */
        int B = 0, maxb = E->max_batch;
        if (TL_NEVER(maxb < 1 || maxb > TLD_MODELS_BATCH_MAX)) maxb = maxb < 1 ? 1 : TLD_MODELS_BATCH_MAX;
        int64_t now = tl_clock_mono_ms();
        while (E->head && B < maxb) {
            item *it = E->head;
            E->head = it->next;
            if (!E->head) E->tail = NULL;
            E->queued--;
            if (TL_NEVER(E->queued < 0)) E->queued = 0;
            if (it->deadline_ms <= now) {
                it->status = IT_EXPIRED;
                E->expired++;
                continue;
            }
            batch[B++] = it;
        }
        if (B == 0) {
            pthread_cond_broadcast(&E->done_cv);
            continue;
        }
        /* alone with nothing else queued: all the threads on this batch */
        int wide = L->index == 0 && !E->head && !others_busy(E, L);
        L->busy = 1;
        pthread_cond_broadcast(&E->cv); /* lane 0 busy: the other lanes may take what follows */
        pthread_mutex_unlock(&E->mu);

        char err[TL_ERR_LEN] = "";
        int ok = tld_models_lane_alloc(L, maxb, err, sizeof err) == 0; /* reallocates only when max_batch changed */
        tl_ctx *ctx = ok ? (wide && L->wide ? L->wide : L->narrow) : NULL;
        double t0 = tl_clock_mono_s();
        if (ok) {
            for (int i = 0; i < B; i++) memcpy(L->in + (size_t)i * img, batch[i]->image, img * sizeof(float));
            ok = tl_predict(ctx, L->in, B, L->scores) == 0;
        }
        double ms = (tl_clock_mono_s() - t0) * 1000.0;
        const float *aux = ok ? tl_logits_aux(ctx) : NULL;
        for (int i = 0; i < B && ok; i++) {
            tld_infer_out *o = batch[i]->out;
            softmax_into(L->scores + (size_t)i * E->K, E->K, o->probs);
            if (o->logits) memcpy(o->logits, L->scores + (size_t)i * E->K, sizeof(float) * (size_t)E->K);
            if (o->tok_index) tl_token_top1(aux + (size_t)i * N * E->K, N, E->K, o->tok_index, o->tok_prob);
            o->infer_ms = ms;
            o->batch = B;
            o->queue_ms = (double)(now - batch[i]->enq_ms);
        }

        pthread_mutex_lock(&E->mu);
        L->busy = 0;
        for (int i = 0; i < B; i++) batch[i]->status = ok ? IT_DONE : IT_UNLOADED;
        if (!ok) {
            E->state = ST_FAILED;
            snprintf(E->error, sizeof E->error, "inference failed: %.400s", err[0] ? err : "forward pass");
        }
        E->batches++;
        E->batch_ms_avg = E->batches == 1 ? ms : 0.8 * E->batch_ms_avg + 0.2 * ms;
        tld_hist_observe(&E->compute_hist, ms / 1000.0);
        for (int i = 0; i < B && ok; i++) tld_hist_observe(&E->queue_hist, batch[i]->out->queue_ms / 1000.0);
        pthread_cond_broadcast(&E->done_cv);
        pthread_cond_broadcast(&E->cv); /* lane 0 free again, or work left for another lane */
    }
    /* quitting: fail whatever is still queued */
    for (item *it = E->head; it; it = it->next) it->status = IT_UNLOADED;
    E->head = E->tail = NULL;
    E->queued = 0;
    pthread_cond_broadcast(&E->done_cv);
    pthread_mutex_unlock(&E->mu);
    return NULL;
}

/* The caller has its images ready (or gave up): the batcher need not wait for it (E->mu held). */
void tld_models_stop_preparing(tld_model_ref *r) {
    if (TL_NEVER(r->E->reserved < r->reserved)) r->E->reserved = r->reserved;
    r->E->reserved -= r->reserved; /* queued now, or given up */
    r->reserved = 0;
    if (!r->preparing) return;
    r->preparing = 0;
    if (r->E->preparing > 0) r->E->preparing--;
    pthread_cond_broadcast(&r->E->cv); /* the batcher may be waiting only for us */
}

/* Seconds until a queue of `queued` images has room again, at the model's recent pace (E->mu held). */
static int retry_seconds(const entry *E) {
    double per_batch = E->batch_ms_avg > 0 ? E->batch_ms_avg : 100.0;
    double wait_ms = ((double)(E->queued + E->reserved) / E->max_batch + 1.0) * per_batch;
    int retry = (int)ceil(wait_ms / 1000.0);
    return retry < 1 ? 1 : retry;
}

int tld_models_reserve(tld_model_ref *r, int n, tld_models_error *e) {
    entry *E = r->E;
    pthread_mutex_lock(&E->mu);
    int mq = E->max_queue, q = E->queued + E->reserved;
    if (n > mq) {
        E->rejected++;
        pthread_mutex_unlock(&E->mu);
        return tld_models_fail(e, 413, "BATCH_TOO_LARGE", NULL,
                               "the request holds %d images; model %s queues at most %d (its max_queue)", n,
                               E->row.name, mq);
    }
    if (q + n > mq) {
        E->rejected++;
        int retry = retry_seconds(E);
        pthread_mutex_unlock(&E->mu);
        tld_models_fail(e, 429, "QUEUE_FULL", NULL, "model %s has %d images queued or admitted (max_queue %d); retry in %d s",
                        E->row.name, q, mq, retry);
        e->retry_after_s = retry;
        return -1;
    }
    E->reserved += n;
    r->reserved += n;
    pthread_mutex_unlock(&E->mu);
    return 0;
}

int tld_models_infer(tld_model_ref *r, const float *images, int n, tld_infer_out *out, int64_t deadline_ms,
                    tld_models_error *e) {
    entry *E = r->E;
    size_t img = (size_t)3 * (size_t)E->S * (size_t)E->S;
    item *items = calloc((size_t)(n > 0 ? n : 1), sizeof *items);
    pthread_mutex_lock(&E->mu);
    tld_models_stop_preparing(r);
    E->requests++;
    if (!items) {
        pthread_mutex_unlock(&E->mu);
        return tld_models_fail(e, 503, "OUT_OF_MEMORY", NULL, "out of memory");
    }
    if (E->quit || E->state != ST_READY) {
        pthread_mutex_unlock(&E->mu);
        free(items);
        return tld_models_fail(e, 503, "MODEL_UNLOADED", NULL, "model %s was deleted or replaced, or the daemon is stopping",
                               E->row.name);
    }
    if (E->queued + E->reserved + n > E->max_queue) { /* others' admitted images count too */
        E->rejected++;
        int retry = retry_seconds(E), q = E->queued, mq = E->max_queue;
        pthread_mutex_unlock(&E->mu);
        free(items);
        tld_models_fail(e, 429, "QUEUE_FULL", NULL, "model %s has %d images queued (max_queue %d); retry in %d s", E->row.name,
                        q, mq, retry);
        e->retry_after_s = retry;
        return -1;
    }
    int64_t now = tl_clock_mono_ms();
    for (int i = 0; i < n; i++) {
        items[i] = (item){images + img * (size_t)i, &out[i], now, deadline_ms, IT_PENDING, NULL};
        if (E->tail)
            E->tail->next = &items[i];
        else
            E->head = &items[i];
        E->tail = &items[i];
    }
    E->queued += n;
    E->images += (uint64_t)n;
    pthread_cond_broadcast(&E->cv);
    int expired = 0, unloaded = 0;
    for (int i = 0; i < n; i++) {
        while (items[i].status == IT_PENDING) pthread_cond_wait(&E->done_cv, &E->mu);
        expired += items[i].status == IT_EXPIRED;
        unloaded += items[i].status == IT_UNLOADED;
    }
    char name[72];
    snprintf(name, sizeof name, "%s", E->row.name);
    pthread_mutex_unlock(&E->mu);
    free(items);
    if (unloaded)
        return tld_models_fail(e, 503, "MODEL_UNLOADED", NULL,
                               "model %s was deleted or replaced, or the daemon is stopping, before the request ran", name);
    if (expired)
        return tld_models_fail(e, 504, "DEADLINE_EXCEEDED", NULL,
                               "the request's deadline passed while it waited in model %s's queue", name);
    return 0;
}
