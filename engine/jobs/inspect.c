/*
 * inspect.c: token inspection of a training job (see inspect.h).
 *
 * Owns: the inspection set (one allocation holding the struct, the samples,
 * their model inputs, display images and token targets) and the result
 * buffers (one allocation each). Building the set uses a few scratch buffers
 * (label-map entry and targets, decoded images, the view's filter taps) that
 * are freed before tl_inspect_new returns.
 *
 * Threads: tl_inspect_new runs on its caller's thread only (the training
 * thread, once, in setup); the set is read-only afterwards and may be read by
 * any thread. tl_inspect_run runs on its caller's thread and drives the given
 * context's pool through tl_predict; it writes only the result it is given.
 * tl_topk_softmax is pure.
 *
 * Samples (indices in the class-sorted datasets): the i-th of n samples of a
 * split starts at index floor((2i+1) * count / (2n)), the centre of its
 * n-th of the dataset; an image that cannot be read (or an index already
 * taken) moves on to the next index, at most TRY_MAX times per sample.
 *
 * Inputs are made as the loader makes them: the image decoded with the
 * loader's DCT-scaling bound (2S for training, S/crop_pct for evaluation),
 * then tl_transform_eval (validation) or tl_augment_train with the job's
 * RandomResizedCrop scale and ratio ranges and flip probability (the defaults
 * without a job's settings), RandAugment off and erasing off, its generator
 * tl_rng_derive(seed, TL_RNG_INSPECT, dataset index, 0) (training). Nothing
 * here touches a generator the training loop uses.
 *
 * The view: the crop box of the sample's geometry (fractions of the image, so
 * valid at any decoded size) resampled to V x V from the image decoded with a
 * bound V/S times the loader's (sharper than upsampling the model's input),
 * with the same separable triangle filter as augment.c (antialiased when
 * shrinking, bilinear when enlarging; taps limited to the crop box for
 * training crops, to the image for the evaluation crop), then mirrored when
 * the geometry is flipped. So view pixel (x, y) shows what input pixel
 * (x*S/V, y*S/V) shows.
 */
#include "tokenlab/inspect.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "tokenlab/rng.h"
#include "tokenlab/targets.h"
#include "core/simd.h"
#include "data/resample.h"

#define TRY_MAX 64    /* indices tried per sample before giving up on it */
#define ALIGN 64

/* ------------------------------------------------------------------------ */
/* one-allocation layouts                                                     */

typedef struct {
    char *base;   /* NULL while counting */
    size_t off;
} carver;

static void *take(carver *c, size_t bytes) {
    void *p = c->base ? c->base + c->off : NULL;
    c->off += (bytes + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    return p;
}

/* Carves a set for up to n samples (counting only when cv->base is NULL). */
static void carve_set(carver *cv, int n, int S, int grid, int V, tl_inspect_set **out) {
    size_t N = (size_t)grid * grid, nn = (size_t)n;
    tl_inspect_set *s = take(cv, sizeof *s);
    tl_inspect_sample *samples = take(cv, nn * sizeof *samples);
    tl_token_topk *targets = take(cv, nn * sizeof *targets);
    int32_t *index = take(cv, nn * N * TL_INSPECT_TOPK * sizeof *index);
    float *prob = take(cv, nn * N * TL_INSPECT_TOPK * sizeof *prob);
    float *inputs = take(cv, nn * 3 * (size_t)S * S * sizeof *inputs);
    uint8_t *view = take(cv, nn * (size_t)V * V * 3);
    if (!s) return;
    s->samples = samples;
    s->targets = targets;
    s->inputs = inputs;
    s->view_rgb = view;
    for (size_t i = 0; i < nn; i++) {
        targets[i].index = index + i * N * TL_INSPECT_TOPK;
        targets[i].prob = prob + i * N * TL_INSPECT_TOPK;
    }
    *out = s;
}

/* Carves a result for n samples of N tokens. */
static void carve_result(carver *cv, int n, int N, tl_inspect_result **out) {
    size_t nn = (size_t)n;
    tl_inspect_result *r = take(cv, sizeof *r);
    tl_token_topk *tokens = take(cv, nn * sizeof *tokens);
    int32_t *index = take(cv, nn * (size_t)N * TL_INSPECT_TOPK * sizeof *index);
    float *prob = take(cv, nn * (size_t)N * TL_INSPECT_TOPK * sizeof *prob);
    int32_t *top_index = take(cv, nn * TL_INSPECT_TOP5 * sizeof *top_index);
    float *top_prob = take(cv, nn * TL_INSPECT_TOP5 * sizeof *top_prob);
    if (!r) return;
    r->tokens = tokens;
    r->top_index = top_index;
    r->top_prob = top_prob;
    for (size_t i = 0; i < nn; i++) {
        tokens[i].index = index + i * (size_t)N * TL_INSPECT_TOPK;
        tokens[i].prob = prob + i * (size_t)N * TL_INSPECT_TOPK;
    }
    *out = r;
}

/* ------------------------------------------------------------------------ */
/* top-k                                                                      */

static float clampf(float v) { return v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : v; }

int tl_topk(const float *v, int K, int k, int32_t *index, float *val) {
    int n = 0, nans = 0;
    for (int j = 0; j < k; j++) index[j] = -1, val[j] = 0.0f;
    for (int c = 0; c < K; c++) {
        float x = v[c];
        if (isnan(x)) {
            nans++;
            continue;
        }
        x = clampf(x);
        int pos;
        if (n < k)
            pos = n++;
        else if (x > val[k - 1])
            pos = k - 1;
        else
            continue;
        while (pos > 0 && x > val[pos - 1]) {
            index[pos] = index[pos - 1];
            val[pos] = val[pos - 1];
            pos--;
        }
        index[pos] = c;
        val[pos] = x;
    }
    return nans;
}

void tl_topk_softmax(const float *logits, int K, int k, int32_t *index, float *prob) {
    if (!index || !prob || k < 1) return;
    if (!logits || K < 1) {
        for (int j = 0; j < k; j++) index[j] = -1, prob[j] = 0.0f;
        return;
    }
    tl_topk(logits, K, k, index, prob); /* prob holds the logits for now */
    if (index[0] < 0) return;              /* every logit NaN */
    double m = prob[0], z = 0.0;            /* the largest; infinities clamped to +-FLT_MAX */
    for (int c = 0; c < K; c++)
        if (!isnan(logits[c])) z += exp((double)clampf(logits[c]) - m);
    for (int j = 0; j < k && index[j] >= 0; j++) prob[j] = (float)(exp((double)prob[j] - m) / z);
}

/* One token: the largest logit, then the sum of exp(l - max) (vectorised:
 * tl_expf, within 2 ulp; K*N libm expf calls cost about 1 ms per lvvit_t
 * image at 1000 classes), then the first class holding the maximum. */
TL_VEC static float token_top1_row(const float *l, int K, int32_t *index) {
    float mx = l[0];
    for (int k = 1; k < K; k++) mx = l[k] > mx ? l[k] : mx;
    float se = 0.0f;
    for (int k = 0; k < K; k++) se += tl_expf(l[k] - mx);
    int best = 0;
    while (best < K - 1 && !(l[best] == mx)) best++;
    *index = best;
    return 1.0f / se;
}

void tl_token_top1(const float *aux, int N, int K, int32_t *index, float *prob) {
    for (int t = 0; t < N; t++) prob[t] = token_top1_row(aux + (size_t)t * K, K, index + t);
}

/* ------------------------------------------------------------------------ */
/* the display image                                                          */

/* Renders the source region x0 + [0, ew) by y0 + [0, eh) of src (pixels) to
 * dst (V,V,3), taps limited to [bx0, bx1) x [by0, by1), mirrored if flip.
 * 0, or -1 when out of memory. */
static int render_view(const tl_image *src, double x0, double y0, double ew, double eh, int bx0, int by0, int bx1,
                       int by1, int flip, int V, uint8_t *dst) {
    tl_taps tx, ty;
    float *tmp = NULL;
    int rc = -1;
    if (tl_taps_build(&tx, V, x0, ew, bx0, bx1) != 0) return -1;
    if (tl_taps_build(&ty, V, y0, eh, by0, by1) != 0) {
        tl_taps_free(&tx);
        return -1;
    }
    size_t nv = (size_t)V;
    int *fx = tx.first, *cx = tx.count, *fy = ty.first, *cy = ty.count, mtx = tx.maxt, mty = ty.maxt;
    const float *wx = tx.w, *wy = ty.w;
    int ylo = fy[0], yhi = fy[0] + cy[0];
    for (int y = 1; y < V; y++) {
        if (fy[y] < ylo) ylo = fy[y];
        if (fy[y] + cy[y] > yhi) yhi = fy[y] + cy[y];
    }
    size_t stride = nv * 3;
    tmp = malloc((size_t)(yhi - ylo) * stride * sizeof *tmp); /* (yhi-ylo, V, 3) rows filtered across */
    if (!tmp) goto done;
    for (int y = ylo; y < yhi; y++) {
        const uint8_t *srow = src->rgb + (size_t)y * src->w * 3;
        float *trow = tmp + (size_t)(y - ylo) * stride;
        for (int x = 0; x < V; x++) {
            const uint8_t *p = srow + (size_t)fx[x] * 3;
            const float *w = wx + (size_t)x * mtx;
            float r = 0.0f, g = 0.0f, b = 0.0f;
            for (int k = 0; k < cx[x]; k++) {
                r += w[k] * p[3 * k];
                g += w[k] * p[3 * k + 1];
                b += w[k] * p[3 * k + 2];
            }
            int ox = flip ? V - 1 - x : x;
            trow[3 * ox] = r;
            trow[3 * ox + 1] = g;
            trow[3 * ox + 2] = b;
        }
    }
    for (int y = 0; y < V; y++) {
        const float *w = wy + (size_t)y * mty;
        const float *rows = tmp + (size_t)(fy[y] - ylo) * stride;
        uint8_t *o = dst + (size_t)y * stride;
        for (size_t j = 0; j < stride; j++) {
            float acc = 0.0f;
            for (int k = 0; k < cy[y]; k++) acc += w[k] * rows[(size_t)k * stride + j];
            acc += 0.5f;
            o[j] = acc <= 0.0f ? 0 : acc >= 255.0f ? 255 : (uint8_t)acc;
        }
    }
    rc = 0;
done:
    tl_taps_free(&tx);
    tl_taps_free(&ty);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* building the set                                                           */

typedef struct {
    tl_inspect_set *s;
    const tl_labelmap *lm;  /* training samples' label map, NULL: none */
    int S, grid, K, V;
    float crop_pct;
    uint64_t seed;
    tl_augment_cfg aug;     /* the job's crop and flip, no RandAugment, no erasing */
    /* label-map scratch, NULL without a map */
    float *vals;            /* (k,h,w) */
    int32_t *inds;          /* (k,h,w) */
    float *t_cls;           /* (K) */
    float *t_dense;         /* (grid*grid, K) */
    float *tscratch;        /* tl_targets_scratch floats */
} builder;

/* Token targets of sample i (its geometry and label already set). */
static void sample_targets(builder *b, int i, const tl_dataset *ds, int idx, int is_train) {
    tl_inspect_sample *smp = &b->s->samples[i];
    tl_token_topk *t = &b->s->targets[i];
    int N = b->grid * b->grid;
    int64_t e = b->lm && is_train ? tl_labelmap_find(b->lm, tl_dataset_relpath(ds, idx)) : -1;
    char err[TL_ERR_LEN];
    if (e >= 0 && tl_labelmap_read(b->lm, e, b->vals, b->inds, err, sizeof err) == 0) {
        tl_targets_compute(b->t_cls, b->t_dense, b->vals, b->inds, tl_labelmap_topk(b->lm), tl_labelmap_h(b->lm),
                           tl_labelmap_w(b->lm), b->K, &smp->geom, b->grid, 0.0f, b->tscratch);
        for (int tok = 0; tok < N; tok++)
            tl_topk(b->t_dense + (size_t)tok * b->K, b->K, TL_INSPECT_TOPK, t->index + (size_t)tok * TL_INSPECT_TOPK,
                        t->prob + (size_t)tok * TL_INSPECT_TOPK);
        smp->target_kind = TL_TARGET_LABELMAP;
        return;
    }
    for (int tok = 0; tok < N; tok++) {
        int32_t *ix = t->index + (size_t)tok * TL_INSPECT_TOPK;
        float *p = t->prob + (size_t)tok * TL_INSPECT_TOPK;
        for (int j = 0; j < TL_INSPECT_TOPK; j++) ix[j] = -1, p[j] = 0.0f;
        ix[0] = smp->label;
        p[0] = 1.0f;
    }
    smp->target_kind = TL_TARGET_CLASS;
}

/* Makes sample slot i from image idx of ds: 0 done, 1 unreadable (skip it),
 * -1 out of memory. */
static int make_sample(builder *b, int i, const tl_dataset *ds, int idx, int is_train) {
    tl_inspect_set *s = b->s;
    tl_inspect_sample *smp = &s->samples[i];
    char path[4096], err[TL_ERR_LEN];
    tl_image im = {0}, vim = {0};
    if (tl_dataset_path(ds, idx, path, sizeof path) != 0) return 1;
    /* the loader's decoding bound (loader.c min_short) */
    int min_short = is_train ? 2 * b->S : (int)((float)b->S / b->crop_pct + 1.0f);
    if (tl_image_load(path, min_short, &im, err, sizeof err) != 0) return 1;
    memset(smp, 0, sizeof *smp);
    snprintf(smp->split, sizeof smp->split, "%s", is_train ? "train" : "val");
    snprintf(smp->relpath, sizeof smp->relpath, "%s", tl_dataset_relpath(ds, idx));
    smp->dataset_index = idx;
    smp->label = tl_dataset_label(ds, idx);
    float *in = s->inputs + (size_t)i * 3 * b->S * b->S;
    if (is_train) {
        tl_rng rng;
        tl_rng_derive(&rng, b->seed, TL_RNG_INSPECT, (uint64_t)idx, 0);
        tl_augment_train(&im, b->S, &b->aug, &rng, in, &smp->geom);
    } else {
        tl_transform_eval(&im, b->S, b->crop_pct, in, &smp->geom);
    }
    /* the view, from a decode V/S times larger when the view is larger than the input */
    const tl_image *src = &im;
    if (b->V > b->S) {
        double vs = (double)min_short * b->V / b->S;
        int vmin = vs > TL_IMAGE_MAX_SIDE ? TL_IMAGE_MAX_SIDE : (int)ceil(vs);
        if (tl_image_load(path, vmin, &vim, err, sizeof err) == 0) src = &vim;
    }
    const tl_geom *g = &smp->geom;
    int W = src->w, H = src->h;
    double x0 = (double)g->left * W, y0 = (double)g->top * H, ew = (double)g->width * W, eh = (double)g->height * H;
    int bx0 = 0, by0 = 0, bx1 = W, by1 = H;
    if (is_train) { /* RandomResizedCrop resamples within its box */
        bx0 = (int)floor(x0 + 1e-3), by0 = (int)floor(y0 + 1e-3);
        bx1 = (int)ceil(x0 + ew - 1e-3), by1 = (int)ceil(y0 + eh - 1e-3);
        bx0 = bx0 < 0 ? 0 : bx0 >= W ? W - 1 : bx0;
        by0 = by0 < 0 ? 0 : by0 >= H ? H - 1 : by0;
        bx1 = bx1 <= bx0 ? bx0 + 1 : bx1 > W ? W : bx1;
        by1 = by1 <= by0 ? by0 + 1 : by1 > H ? H : by1;
    }
    int rc = render_view(src, x0, y0, ew, eh, bx0, by0, bx1, by1, g->flip, b->V,
                         s->view_rgb + (size_t)i * b->V * b->V * 3);
    tl_image_free(&im);
    tl_image_free(&vim);
    if (rc != 0) return -1;
    sample_targets(b, i, ds, idx, is_train);
    return 0;
}

/* Adds up to n samples of ds, evenly spaced. -1 when out of memory. */
static int add_split(builder *b, const tl_dataset *ds, int n, int is_train) {
    int count = ds ? tl_dataset_count(ds) : 0;
    if (n > count) n = count;
    int first = b->s->n;
    for (int i = 0; i < n; i++) {
        int start = (int)(((2 * (int64_t)i + 1) * count) / (2 * (int64_t)n));
        for (int t = 0; t < TRY_MAX && t < count; t++) {
            int idx = (start + t) % count, taken = 0;
            for (int j = first; j < b->s->n; j++) taken |= b->s->samples[j].dataset_index == idx;
            if (taken) continue;
            int rc = make_sample(b, b->s->n, ds, idx, is_train);
            if (rc < 0) return -1;
            if (rc == 0) {
                b->s->n++;
                break;
            }
        }
    }
    return 0;
}

tl_inspect_set *tl_inspect_new(const tl_dataset *train_ds, const tl_dataset *val_ds, const tl_labelmap *lm,
                               int n_val, int n_train, int S, int grid, int K, const tl_augment_cfg *aug,
                               uint64_t seed, char *err, size_t errlen) {
    char dummy[8];
    if (!err || !errlen) err = dummy, errlen = sizeof dummy;
    builder b;
    memset(&b, 0, sizeof b);
    const char *what = "checking the arguments";
    if (S < 1 || S > TL_IMAGE_MAX_SIDE || grid < 1 || grid > S || K < 1) {
        tl_seterr(err, errlen, "inspection: %s: bad sizes (S %d, grid %d, K %d)", what, S, grid, K);
        return NULL;
    }
    if (lm && tl_labelmap_num_classes(lm) != K) {
        tl_seterr(err, errlen, "inspection: %s: the label map has %d classes, the model %d", what,
                  tl_labelmap_num_classes(lm), K);
        return NULL;
    }
    if (aug && tl_augment_validate(aug, err, errlen) != 0) return NULL;
    int nv = val_ds && n_val > 0 ? n_val : 0, nt = train_ds && n_train > 0 ? n_train : 0;
    if (nv > TL_INSPECT_MAX) nv = TL_INSPECT_MAX;
    if (nt > TL_INSPECT_MAX - nv) nt = TL_INSPECT_MAX - nv;
    if (nv && nv > tl_dataset_count(val_ds)) nv = tl_dataset_count(val_ds);
    if (nt && nt > tl_dataset_count(train_ds)) nt = tl_dataset_count(train_ds);
    if (nv + nt == 0) {
        tl_seterr(err, errlen, "inspection: %s: no samples requested (or empty datasets)", what);
        return NULL;
    }
    b.S = S, b.grid = grid, b.K = K, b.V = S > TL_INSPECT_VIEW_MIN ? S : TL_INSPECT_VIEW_MIN;
    if (aug) {
        b.aug = *aug;
    } else {
        tl_augment_defaults(&b.aug);
    }
    b.aug.randaug[0] = '\0';
    b.aug.reprob = 0.0f;
    b.crop_pct = b.aug.crop_pct, b.seed = seed, b.lm = lm;

    what = "allocating the set";
    carver cv = {NULL, 0};
    carve_set(&cv, nv + nt, S, grid, b.V, &b.s);
    size_t bytes = cv.off;
    cv.base = calloc(1, bytes);
    if (!cv.base) goto oom;
    cv.off = 0;
    carve_set(&cv, nv + nt, S, grid, b.V, &b.s);
    b.s->S = S, b.s->grid = grid, b.s->K = K, b.s->view = b.V;

    if (lm) {
        what = "allocating label-map scratch";
        size_t khw = (size_t)tl_labelmap_topk(lm) * tl_labelmap_h(lm) * tl_labelmap_w(lm);
        size_t nf = 2 * khw + (size_t)K + (size_t)grid * grid * K +
                    tl_targets_scratch(K, tl_labelmap_h(lm), tl_labelmap_w(lm), grid);
        b.vals = malloc(nf * sizeof(float));
        if (!b.vals) goto oom;
        b.inds = (int32_t *)(b.vals + khw);
        b.t_cls = b.vals + 2 * khw;
        b.t_dense = b.t_cls + K;
        b.tscratch = b.t_dense + (size_t)grid * grid * K;
    }

    what = "reading the validation samples";
    if (add_split(&b, val_ds, nv, 0) != 0) goto oom;
    what = "reading the training samples";
    if (add_split(&b, train_ds, nt, 1) != 0) goto oom;
    if (b.s->n == 0) {
        tl_seterr(err, errlen, "inspection: choosing the samples: no image could be read among those tried");
        goto fail;
    }
    free(b.vals);
    return b.s;
oom:
    tl_seterr(err, errlen, "inspection: %s: out of memory", what);
fail:
    free(b.vals);
    free(cv.base);
    return NULL;
}

void tl_inspect_free(tl_inspect_set *s) { free(s); }

/* ------------------------------------------------------------------------ */
/* running a model over the set                                               */

tl_inspect_result *tl_inspect_result_new(const tl_inspect_set *s) {
    if (!s || s->n < 1) return NULL;
    tl_inspect_result *r = NULL;
    carver cv = {NULL, 0};
    carve_result(&cv, s->n, s->grid * s->grid, &r);
    cv.base = calloc(1, cv.off);
    if (!cv.base) return NULL;
    cv.off = 0;
    carve_result(&cv, s->n, s->grid * s->grid, &r);
    r->n = s->n, r->grid = s->grid, r->K = s->K;
    size_t nt = (size_t)s->n * s->grid * s->grid * TL_INSPECT_TOPK;
    for (size_t i = 0; i < nt; i++) r->tokens[0].index[i] = -1; /* token arrays are contiguous */
    for (size_t i = 0; i < (size_t)s->n * TL_INSPECT_TOP5; i++) r->top_index[i] = -1;
    return r;
}

void tl_inspect_result_free(tl_inspect_result *r) { free(r); }

int tl_inspect_run(tl_ctx *ctx, const tl_inspect_set *s, tl_inspect_result *r, char *err, size_t errlen) {
    char dummy[8];
    if (!err || !errlen) err = dummy, errlen = sizeof dummy;
    if (!ctx || !s || !r) {
        tl_seterr(err, errlen, "inspection: no context, set or result");
        return -1;
    }
    const tl_config *c = tl_model_config(ctx->m);
    int N = s->grid * s->grid, K = s->K;
    if (c->img_size != s->S || tl_config_grid(c) != s->grid || c->num_classes != K) {
        tl_seterr(err, errlen, "inspection: the model (%d px, grid %d, %d classes) does not match the set (%d, %d, %d)",
                  c->img_size, tl_config_grid(c), c->num_classes, s->S, s->grid, K);
        return -1;
    }
    if (r->n != s->n || r->grid != s->grid || r->K != K) {
        tl_seterr(err, errlen, "inspection: the result was made for another set");
        return -1;
    }
    int B = tl_ctx_batch(ctx);
    float *scores = malloc(sizeof(float) * (size_t)B * K); /* (B,K) inference scores */
    if (!scores) {
        tl_seterr(err, errlen, "inspection: out of memory for the scores");
        return -1;
    }
    size_t isz = (size_t)3 * s->S * s->S;
    for (int i0 = 0; i0 < s->n; i0 += B) {
        int nb = s->n - i0 < B ? s->n - i0 : B;
        if (tl_predict(ctx, s->inputs + (size_t)i0 * isz, nb, scores) != 0) {
            free(scores);
            tl_seterr(err, errlen, "inspection: the forward pass refused a batch of %d", nb);
            return -1;
        }
        const float *aux = tl_logits_aux(ctx); /* (nb,N,K) */
        for (int j = 0; j < nb; j++) {
            int i = i0 + j;
            tl_token_topk *t = &r->tokens[i];
            for (int tok = 0; tok < N; tok++)
                tl_topk_softmax(aux + ((size_t)j * N + tok) * K, K, TL_INSPECT_TOPK,
                                t->index + (size_t)tok * TL_INSPECT_TOPK, t->prob + (size_t)tok * TL_INSPECT_TOPK);
            tl_topk_softmax(scores + (size_t)j * K, K, TL_INSPECT_TOP5, r->top_index + (size_t)i * TL_INSPECT_TOP5,
                            r->top_prob + (size_t)i * TL_INSPECT_TOP5);
        }
    }
    free(scores);
    return 0;
}
