/*
 * loader.h: background loading of training and evaluation batches.
 *
 * loader.c owns its worker threads, a ring of `prefetch` batch slots, and a
 * decoded-image cache bounded by cache_bytes (images kept at the decoded,
 * DCT-scaled size). Workers take samples one at a time and write them into
 * their batch's slot; the consumer (the training thread) takes batches in
 * order. Which sample a position holds, and every random draw of its
 * augmentation, derive from (seed, epoch, position) only, so the batches do
 * not depend on thread timing. An image that cannot be read is reported
 * through the log callback, counted, and replaced by the next image of the
 * epoch's order that can be.
 *
 * Threads: tl_loader_* calls come from one consumer thread; the workers are
 * internal.
 */
#ifndef TL_LOADER_H
#define TL_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "tokenlab/augment.h"
#include "tokenlab/dataset.h"
#include "tokenlab/labelmap.h"

typedef struct {
    const tl_dataset *ds;
    const tl_labelmap *lm;      /* NULL: one-hot targets (plain training) */
    int train;                  /* 1: shuffled, augmented, whole batches; 0: in order, eval transform */
    int S;                      /* image side */
    int grid;                   /* token grid side (targets are grid x grid) */
    int K;
    float smoothing;
    tl_augment_cfg aug;
    int batch;                  /* samples per batch this loader hands out */
    int shards, shard;          /* this loader's share of the data (0, 0: all of it). Training: batch b of
                                 * shard s holds the epoch positions [b*G + s*batch, b*G + (s+1)*batch) of
                                 * the global batch G = batch x shards. Evaluation: the contiguous slice
                                 * [s*n/shards, (s+1)*n/shards) of the n images. */
    uint64_t seed;
    int threads;                /* worker threads, >= 1 */
    int prefetch;               /* batch slots, >= 2 */
    size_t cache_bytes;         /* 0: no cache */
    void (*log)(const char *msg, void *user);
    void *log_user;
} tl_loader_cfg;

typedef struct {
    int n;              /* samples in this batch (< batch only for the last eval batch) */
    float *images;      /* (B,3,S,S) */
    float *t_cls;       /* (B,K) */
    float *t_dense;     /* (B,grid*grid,K), NULL without a label map */
    int *labels;        /* (B) ground-truth class of each sample */
    int *index;         /* (B) dataset index of each sample */
    tl_geom *geom;      /* (B) */
} tl_batch;

typedef struct tl_loader tl_loader;

tl_loader *tl_loader_new(const tl_loader_cfg *cfg, char *err, size_t errlen);
void tl_loader_free(tl_loader *l);
/* Batches per epoch: floor(n/G) when training (G the global batch), ceil(slice/B) for evaluation. */
int tl_loader_batches(const tl_loader *l);
/* Starts (or restarts) producing epoch `epoch` from batch `first` on. */
void tl_loader_start(tl_loader *l, int epoch, int first);
/* The next batch of the current epoch, NULL after the last one. The batch
 * stays valid until the next call. *wait_s (may be NULL) gets the time spent
 * waiting for it. */
const tl_batch *tl_loader_next(tl_loader *l, double *wait_s);
int64_t tl_loader_skipped(const tl_loader *l);
int64_t tl_loader_missing_maps(const tl_loader *l);

#endif
