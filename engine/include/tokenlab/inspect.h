/*
 * inspect.h: token inspection of a training job: a small fixed set of
 * samples whose per-token targets ("what each patch token was taught") and
 * per-token predictions ("what it now predicts") are recorded at every
 * evaluation.
 *
 * inspect.c owns the set: which samples (chosen from the job's seed alone,
 * so a resumed run inspects the same ones), their model inputs, a display
 * image of what the model sees, and their token targets; and the routine that
 * runs a model over the set. Built once by the training thread
 * (tl_train_run) and read-only afterwards; tl_inspect_run runs on the
 * caller's thread with the given context's pool.
 *
 * Samples: up to n_val validation images, evenly spaced over the (class-
 * sorted) validation set, evaluation transform; then up to n_train training
 * images, evenly spaced over the training set, each with a fixed
 * RandomResizedCrop + flip drawn from (seed, TL_RNG_INSPECT, index) (no
 * RandAugment, no erasing), so the crop shown is a crop the model trains on.
 *
 * Targets: with a label map holding the image, the token targets of
 * tl_targets_compute for the sample's geometry, before label smoothing
 * (kind TL_TARGET_LABELMAP); otherwise every token's target is the image's
 * class with probability 1 (TL_TARGET_CLASS), which is what plain training
 * teaches each token.
 */
#ifndef TL_INSPECT_H
#define TL_INSPECT_H

#include <stddef.h>
#include <stdint.h>

#include "tokenlab/augment.h"
#include "tokenlab/dataset.h"
#include "tokenlab/labelmap.h"
#include "tokenlab/model.h"

#define TL_INSPECT_TOPK 3     /* classes kept per token (hover shows them) */
#define TL_INSPECT_TOP5 5     /* classes kept for the image prediction */
#define TL_INSPECT_MAX 16     /* samples at most */
#define TL_INSPECT_VIEW_MIN 224 /* the display image is max(S, this) pixels square */

typedef enum { TL_TARGET_CLASS = 0, TL_TARGET_LABELMAP = 1 } tl_target_kind;

typedef struct {
    char split[8];            /* "val" or "train" */
    char relpath[1024];       /* path relative to its dataset root, e.g. "c03_square/0012.jpg" */
    int dataset_index;        /* index in its dataset */
    int label;                /* ground-truth class */
    tl_geom geom;             /* the crop of the full image that the model sees */
    tl_target_kind target_kind;
} tl_inspect_sample;

/* Per-token top classes of one sample over the g*g tokens (row-major), best first:
 * index[t*TL_INSPECT_TOPK + j], prob[t*TL_INSPECT_TOPK + j]. */
typedef struct {
    int32_t *index;           /* (g*g, TL_INSPECT_TOPK) */
    float *prob;              /* (g*g, TL_INSPECT_TOPK) probabilities (softmax over the K classes) */
} tl_token_topk;

typedef struct {
    int n;                    /* samples */
    int S, grid, K;           /* model input side, token grid side g, classes */
    int view;                 /* display image side V = max(S, TL_INSPECT_VIEW_MIN) */
    tl_inspect_sample *samples; /* (n) */
    float *inputs;            /* (n,3,S,S) normalised model inputs */
    uint8_t *view_rgb;        /* (n,V,V,3) the same crop, rendered at V x V for display */
    tl_token_topk *targets;   /* (n) token targets */
} tl_inspect_set;

typedef struct {
    int n, grid, K;
    tl_token_topk *tokens;    /* (n) per-token predictions: softmax of the aux head's logits */
    int32_t *top_index;       /* (n, TL_INSPECT_TOP5) classes of the image prediction, best first */
    float *top_prob;          /* (n, TL_INSPECT_TOP5) softmax of the inference score cls + 0.5 max aux */
} tl_inspect_result;

/* Builds the set. val_ds may be NULL (no validation samples), lm may be NULL.
 * S and grid from the model config, K its classes; seed the job seed; aug
 * the job's augmentation (NULL: the defaults): training samples take its
 * crop scale and ratio ranges and flip probability, validation samples its
 * crop_pct; RandAugment and erasing stay off (an inspection shows the crop).
 * Images that cannot be read are skipped (the next one is tried).
 * lm is the training set's label map (keys relative to train_ds's root, as
 * the job's data.label_maps): it gives the targets of training samples only.
 * Validation samples are TL_TARGET_CLASS, because the same key under the
 * validation root names another picture (the synthetic splits share names).
 * A training sample's crop and flip come from tl_rng_derive(seed,
 * TL_RNG_INSPECT, its dataset index, 0). At most TL_INSPECT_MAX samples in
 * all (n_val first); n is smaller when a dataset is smaller or unreadable.
 * Returns NULL with a message on failure (out of memory, no readable image). */
tl_inspect_set *tl_inspect_new(const tl_dataset *train_ds, const tl_dataset *val_ds, const tl_labelmap *lm,
                               int n_val, int n_train, int S, int grid, int K, const tl_augment_cfg *aug,
                               uint64_t seed, char *err, size_t errlen);
/* Frees a set; NULL is allowed. */
void tl_inspect_free(tl_inspect_set *s);

/* Result buffers for a set (free with tl_inspect_result_free). */
tl_inspect_result *tl_inspect_result_new(const tl_inspect_set *s);
void tl_inspect_result_free(tl_inspect_result *r); /* NULL is allowed */

/* Runs the model of ctx (eval mode) over the set, in batches of at most the
 * context's batch size, and fills r. 0, or -1 with a message. */
int tl_inspect_run(tl_ctx *ctx, const tl_inspect_set *s, tl_inspect_result *r, char *err, size_t errlen);

/* Indices of the k largest of v[0..K) into index (best first, ties to the
 * smaller index, NaN never chosen, +-inf ranked as +-FLT_MAX, unused slots -1)
 * and their values into val. Returns how many NaN it skipped. Shared by token
 * inspection, the annotator and the inference server. */
int tl_topk(const float *v, int K, int k, int32_t *index, float *val);

/* Per token of aux (N,K): the top class and its softmax probability, in
 * float (for display: the token maps of predictions). */
void tl_token_top1(const float *aux /*(N,K)*/, int N, int K, int32_t *index /*(N)*/, float *prob /*(N)*/);

/* Top-k of softmax(logits[0..K)) into index/prob (k <= K entries, the rest of
 * the k slots filled with index -1 and prob 0 when K < k). Helper shared with
 * the inference server. */
void tl_topk_softmax(const float *logits, int K, int k, int32_t *index, float *prob);

#endif
