/*
 * loader.c: background batch loading (see loader.h).
 *
 * Owns: worker threads, `prefetch` batch slots, the per-epoch sample order,
 * and the decoded-image cache. Shared state (the next sample to hand out,
 * which batch each slot holds and how many of its samples are done, the
 * consumer's position) is guarded by one mutex; sample processing itself runs
 * unlocked, each worker writing only its own sample's rows of its slot.
 * Cache entries are claimed with a compare-and-swap so that two workers never
 * fill the same entry; a ready entry is immutable until tl_loader_free.
 */
#include "data/loader.h"

#include "tokenlab/base.h"
#include "tokenlab/targets.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_EMPTY (-1)

typedef struct {
    int batch;          /* batch number held, SLOT_EMPTY if free */
    int done;           /* samples finished */
    int n;              /* samples expected */
    tl_batch b;
} slot;

typedef struct {
    _Atomic int state;  /* 0 empty, 1 being filled, 2 ready */
    tl_image im;
} cache_entry;

struct tl_loader {
    tl_loader_cfg cfg;
    int count, nb, N;
    int global;               /* training: the global batch (batch x shards) */
    int slice_lo, slice_n;    /* evaluation: this shard's slice of the images */
    int *order;               /* epoch order of dataset indices */
    slot *slots;
    int nslots;
    cache_entry *cache;
    _Atomic size_t cache_used;
    pthread_t *threads;
    int nthreads;
    pthread_mutex_t mu;
    pthread_cond_t work, ready;
    /* guarded by mu */
    int epoch, first, next_sample, end_sample; /* samples of this epoch handed out: [first*B, end) */
    int consumer;             /* next batch the consumer takes */
    int held;                 /* batch the consumer holds (its slot is freed on the next call), -1 none */
    int inflight;             /* samples being processed */
    int quit;
    _Atomic int64_t skipped, missing;
};

static void logf_(tl_loader *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(tl_loader *l, const char *fmt, ...) {
    if (!l->cfg.log) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    l->cfg.log(buf, l->cfg.log_user);
}

/* Decoded size: training keeps room for zooming crops, evaluation needs S/crop_pct. */
static int min_short(const tl_loader *l) {
    if (l->cfg.train) return 2 * l->cfg.S;
    return (int)((float)l->cfg.S / l->cfg.aug.crop_pct + 1.0f);
}

/* Loads image idx (from the cache when there). *owned tells whether the caller must free it. */
static int get_image(tl_loader *l, int idx, tl_image *out, int *owned, char *err, size_t errlen) {
    cache_entry *ce = l->cache ? &l->cache[idx] : NULL;
    if (ce && atomic_load_explicit(&ce->state, memory_order_acquire) == 2) {
        *out = ce->im;
        *owned = 0;
        return 0;
    }
    char path[4096];
    if (tl_dataset_path(l->cfg.ds, idx, path, sizeof path) != 0) {
        tl_seterr(err, errlen, "path too long");
        return -1;
    }
    if (tl_image_load(path, min_short(l), out, err, errlen) != 0) return -1;
    *owned = 1;
    if (!ce) return 0;
    size_t bytes = (size_t)out->w * out->h * 3;
    int expect = 0;
    if (atomic_load(&l->cache_used) + bytes <= l->cfg.cache_bytes &&
        atomic_compare_exchange_strong(&ce->state, &expect, 1)) {
        if (atomic_fetch_add(&l->cache_used, bytes) + bytes <= l->cfg.cache_bytes) {
            ce->im = *out;
            atomic_store_explicit(&ce->state, 2, memory_order_release);
            *owned = 0;
        } else {
            atomic_fetch_sub(&l->cache_used, bytes);
            atomic_store(&ce->state, 0);
        }
    }
    return 0;
}

/* Fills sample j of slot s with the sample at epoch position pos. */
static void process_sample(tl_loader *l, slot *s, int j, int epoch, int pos, float *scratch) {
    const tl_loader_cfg *c = &l->cfg;
    int n = l->count, idx = -1;
    tl_image im;
    int owned = 0, ok = 0;
    char err[512];
    for (int tries = 0; tries < n && !ok; tries++) {
        idx = c->train ? l->order[(pos + tries) % n] : (pos + tries) % n;
        if (get_image(l, idx, &im, &owned, err, sizeof err) == 0) {
            ok = 1;
        } else {
            atomic_fetch_add(&l->skipped, 1);
            logf_(l, "skipped image %s: %s", tl_dataset_relpath(c->ds, idx), err);
        }
    }
    size_t isz = (size_t)3 * c->S * c->S, N = (size_t)l->N;
    float *img = s->b.images + (size_t)j * isz;
    tl_geom *g = &s->b.geom[j];
    int label = ok ? tl_dataset_label(c->ds, idx) : 0;
    if (!ok) { /* every image failed: a blank sample (the trainer reports DATA_ERROR) */
        memset(img, 0, sizeof(float) * isz);
        memset(g, 0, sizeof *g);
    } else if (c->train) {
        tl_rng rng;
        tl_rng_derive(&rng, c->seed, TL_RNG_AUGMENT, (uint64_t)epoch, (uint64_t)pos);
        tl_augment_train(&im, c->S, &c->aug, &rng, img, g);
    } else {
        tl_transform_eval(&im, c->S, c->aug.crop_pct, img, g);
    }
    if (owned) tl_image_free(&im);
    s->b.labels[j] = label;
    s->b.index[j] = idx;
    float *tc = s->b.t_cls + (size_t)j * c->K;
    int64_t e = -1;
    if (c->lm && ok) {
        e = tl_labelmap_find(c->lm, tl_dataset_relpath(c->ds, idx));
        if (e < 0 && atomic_fetch_add(&l->missing, 1) < 20)
            logf_(l, "no label map for %s: using its one-hot label", tl_dataset_relpath(c->ds, idx));
    }
    if (e >= 0) {
        int k = tl_labelmap_topk(c->lm), h = tl_labelmap_h(c->lm), w = tl_labelmap_w(c->lm);
        float *vals = scratch;
        int32_t *inds = (int32_t *)(scratch + (size_t)k * h * w);
        float *ts = scratch + (size_t)2 * k * h * w;
        if (tl_labelmap_read(c->lm, e, vals, inds, err, sizeof err) == 0) {
            tl_targets_compute(tc, s->b.t_dense + (size_t)j * N * c->K, vals, inds, k, h, w, c->K, g, c->grid,
                               c->smoothing, ts);
            return;
        }
        atomic_fetch_add(&l->missing, 1);
        logf_(l, "label map of %s refused: %s", tl_dataset_relpath(c->ds, idx), err);
    }
    tl_targets_onehot(tc, label, c->K, c->smoothing);
    if (s->b.t_dense)
        for (size_t t = 0; t < N; t++) memcpy(s->b.t_dense + ((size_t)j * N + t) * c->K, tc, sizeof(float) * c->K);
}

static size_t scratch_floats(const tl_loader *l) {
    if (!l->cfg.lm) return 1;
    int k = tl_labelmap_topk(l->cfg.lm), h = tl_labelmap_h(l->cfg.lm), w = tl_labelmap_w(l->cfg.lm);
    return (size_t)2 * k * h * w + tl_targets_scratch(l->cfg.K, h, w, l->cfg.grid);
}

static void *worker_main(void *arg) {
    tl_loader *l = arg;
    float *scratch = malloc(sizeof(float) * scratch_floats(l));
    int B = l->cfg.batch;
    pthread_mutex_lock(&l->mu);
    while (!l->quit) {
        /* a sample is available when its batch's slot is free or already holds that batch; the
         * prefetch window [consumer, consumer + nslots) bounds the batches in flight, and samples
         * are handed out in order, so none is ever behind the consumer */
        int pos = l->next_sample;
        int b = pos / B;
        slot *s = pos < l->end_sample ? &l->slots[b % l->nslots] : NULL;
        if (!s || TL_NEVER(b < l->consumer) || b >= l->consumer + l->nslots ||
            (s->batch != b && s->batch != SLOT_EMPTY) || !scratch) {
            pthread_cond_wait(&l->work, &l->mu);
            continue;
        }
        if (s->batch == SLOT_EMPTY) {
            s->batch = b;
            s->done = 0;
            int remaining = l->end_sample - b * B;
            s->n = remaining < B ? remaining : B;
            s->b.n = s->n;
        }
        l->next_sample++;
        l->inflight++;
        int epoch = l->epoch;
        pthread_mutex_unlock(&l->mu);
        int epos = l->cfg.train ? b * l->global + l->cfg.shard * B + (pos - b * B) : l->slice_lo + pos;
        process_sample(l, s, pos - b * B, epoch, epos, scratch);
        pthread_mutex_lock(&l->mu);
        l->inflight--;
        /* a slot's samples are counted once each: done never passes n, inflight never below 0 */
        TL_NEVER(l->inflight < 0 || s->done >= s->n);
        if (++s->done == s->n) pthread_cond_broadcast(&l->ready);
        if (l->inflight == 0) pthread_cond_broadcast(&l->ready);
    }
    pthread_mutex_unlock(&l->mu);
    free(scratch);
    return NULL;
}

static void shuffle_epoch(tl_loader *l, int epoch) {
    for (int i = 0; i < l->count; i++) l->order[i] = i;
    tl_rng r;
    tl_rng_derive(&r, l->cfg.seed, TL_RNG_EPOCH_ORDER, (uint64_t)epoch, 0);
    for (int i = l->count - 1; i > 0; i--) {
        int j = (int)tl_rng_below(&r, (uint32_t)(i + 1));
        int t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

tl_loader *tl_loader_new(const tl_loader_cfg *cfg, char *err, size_t errlen) {
    tl_loader *l = calloc(1, sizeof *l);
    if (!l) goto fail_alloc;
    l->cfg = *cfg;
    if (l->cfg.threads < 1) l->cfg.threads = 1;
    if (l->cfg.prefetch < 2) l->cfg.prefetch = 2;
    l->count = tl_dataset_count(cfg->ds);
    l->N = cfg->grid * cfg->grid;
    if (l->cfg.shards < 1) l->cfg.shards = 1, l->cfg.shard = 0;
    if (l->cfg.shard < 0 || l->cfg.shard >= l->cfg.shards) {
        tl_seterr(err, errlen, "shard %d of %d does not exist", l->cfg.shard, l->cfg.shards);
        free(l);
        return NULL;
    }
    l->global = cfg->batch * l->cfg.shards;
    if (cfg->train && l->count < l->global) {
        tl_seterr(err, errlen, "batch_size %d is larger than the %d images of %s", l->global, l->count,
                  tl_dataset_root(cfg->ds));
        free(l);
        return NULL;
    }
    l->slice_lo = (int)((int64_t)l->cfg.shard * l->count / l->cfg.shards);
    l->slice_n = (int)((int64_t)(l->cfg.shard + 1) * l->count / l->cfg.shards) - l->slice_lo;
    l->nb = cfg->train ? l->count / l->global : (l->slice_n + cfg->batch - 1) / cfg->batch;
    l->nslots = l->cfg.prefetch;
    l->order = malloc(sizeof(int) * (size_t)l->count);
    l->slots = calloc((size_t)l->nslots, sizeof(slot));
    if (cfg->cache_bytes) l->cache = calloc((size_t)l->count, sizeof(cache_entry));
    if (!l->order || !l->slots || (cfg->cache_bytes && !l->cache)) goto fail_alloc;
    size_t B = (size_t)cfg->batch, K = (size_t)cfg->K, N = (size_t)l->N, isz = (size_t)3 * cfg->S * cfg->S;
    for (int i = 0; i < l->nslots; i++) {
        slot *s = &l->slots[i];
        s->batch = SLOT_EMPTY;
        s->b.images = malloc(sizeof(float) * B * isz);
        s->b.t_cls = malloc(sizeof(float) * B * K);
        s->b.t_dense = cfg->lm ? malloc(sizeof(float) * B * N * K) : NULL;
        s->b.labels = malloc(sizeof(int) * B);
        s->b.index = malloc(sizeof(int) * B);
        s->b.geom = malloc(sizeof(tl_geom) * B);
        if (!s->b.images || !s->b.t_cls || (cfg->lm && !s->b.t_dense) || !s->b.labels || !s->b.index || !s->b.geom)
            goto fail_alloc;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->work, NULL);
    pthread_cond_init(&l->ready, NULL);
    l->held = -1;
    l->threads = calloc((size_t)l->cfg.threads, sizeof(pthread_t));
    if (!l->threads) goto fail_alloc;
    for (int t = 0; t < l->cfg.threads; t++) {
        if (pthread_create(&l->threads[t], NULL, worker_main, l) != 0) {
            tl_seterr(err, errlen, "cannot start loader thread %d", t);
            tl_loader_free(l);
            return NULL;
        }
        l->nthreads++;
    }
    return l;
fail_alloc:
    tl_seterr(err, errlen, "out of memory allocating the data loader");
    tl_loader_free(l);
    return NULL;
}

void tl_loader_free(tl_loader *l) {
    if (!l) return;
    if (l->nthreads) {
        pthread_mutex_lock(&l->mu);
        l->quit = 1;
        pthread_cond_broadcast(&l->work);
        pthread_mutex_unlock(&l->mu);
        for (int t = 0; t < l->nthreads; t++) pthread_join(l->threads[t], NULL);
    }
    if (l->threads) {
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->work);
        pthread_cond_destroy(&l->ready);
    }
    free(l->threads);
    if (l->slots)
        for (int i = 0; i < l->nslots; i++) {
            tl_batch *b = &l->slots[i].b;
            free(b->images);
            free(b->t_cls);
            free(b->t_dense);
            free(b->labels);
            free(b->index);
            free(b->geom);
        }
    if (l->cache)
        for (int i = 0; i < l->count; i++)
            if (atomic_load(&l->cache[i].state) == 2) tl_image_free(&l->cache[i].im);
    free(l->cache);
    free(l->slots);
    free(l->order);
    free(l);
}

int tl_loader_batches(const tl_loader *l) { return l->nb; }
int64_t tl_loader_skipped(const tl_loader *l) { return atomic_load(&((tl_loader *)l)->skipped); }
int64_t tl_loader_missing_maps(const tl_loader *l) { return atomic_load(&((tl_loader *)l)->missing); }

void tl_loader_start(tl_loader *l, int epoch, int first) {
    pthread_mutex_lock(&l->mu);
    l->end_sample = 0; /* stop handing out samples of the old epoch */
    while (l->inflight > 0) pthread_cond_wait(&l->ready, &l->mu);
    if (l->cfg.train) shuffle_epoch(l, epoch);
    for (int i = 0; i < l->nslots; i++) l->slots[i].batch = SLOT_EMPTY;
    int B = l->cfg.batch;
    if (first < 0) first = 0;
    if (first > l->nb) first = l->nb;
    l->epoch = epoch;
    l->first = first;
    l->consumer = first;
    l->held = -1;
    l->next_sample = first * B;
    l->end_sample = l->cfg.train ? l->nb * B : l->slice_n;
    pthread_cond_broadcast(&l->work);
    pthread_mutex_unlock(&l->mu);
}

const tl_batch *tl_loader_next(tl_loader *l, double *wait_s) {
    double t0 = tl_clock_mono_s();
    pthread_mutex_lock(&l->mu);
    if (l->held >= 0) { /* free the slot of the batch handed out last time */
        TL_NEVER(l->held != l->consumer || l->slots[l->held % l->nslots].batch != l->held);
        l->slots[l->held % l->nslots].batch = SLOT_EMPTY;
        l->held = -1;
        l->consumer++;
        pthread_cond_broadcast(&l->work);
    }
    const tl_batch *out = NULL;
    if (l->consumer < l->nb) {
        slot *s = &l->slots[l->consumer % l->nslots];
        while (!(s->batch == l->consumer && s->done == s->n)) pthread_cond_wait(&l->ready, &l->mu);
        l->held = l->consumer;
        out = &s->b;
    }
    pthread_mutex_unlock(&l->mu);
    if (wait_s) *wait_s = tl_clock_mono_s() - t0;
    return out;
}
