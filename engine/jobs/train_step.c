/*
 * train_step.c: one optimizer step's gradient over micro-batches and ranks
 * (see train_internal.h, and docs/DISTRIBUTED.md for why the sum is exact).
 *
 * Owns the step's buffers: the partial sums of the micro-batch tree (one per
 * level, each the gradient's size, only when a rank computes more than one
 * micro-batch), the running BatchNorm statistics saved at the step's start,
 * and the per-step sums of losses, flags and timings. Runs on the training
 * thread; the forward and backward use the context's pool.
 *
 * Micro-batch J of step s (J counts over the whole global batch, rank r
 * holding J in [r*m, (r+1)*m) for m = micro / ranks) is rows
 * [J*mb, (J+1)*mb) of the global batch. Its drop-path masks and mixup/cutmix
 * draw come from (seed, s, J); its MixToken pairs and BatchNorm statistics
 * stay within it; so its gradient does not depend on which rank computes
 * it. The micro-batch gradients are added in the halving tree over J
 * (node [lo,hi) = [lo,mid) + [mid,hi), mid = lo + (hi-lo)/2): a rank sums its
 * own block locally, and with a power-of-two number of ranks its block is a
 * node of that tree, so tl_comm_sum_tree finishes the same tree.
 */
#include "jobs/train_internal.h"

#include "model/micro.h"
#include "tokenlab/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SUM_FIXED 4 /* step_sums: loss, loss_cls, loss_dense, non-finite losses; then seconds per rank */

int train_step_setup(run *r) {
    size_t n = 0;
    if (!tl_model_grad_vector(r->model, &n)) return train_fail(r, "OUT_OF_MEMORY", "the model has no gradients"), -1;
    if (r->local_micro > 1) {
        int depth = 0;
        while ((1 << depth) < r->local_micro) depth++;
        r->acc = calloc((size_t)depth + 1, sizeof *r->acc);
        if (!r->acc) goto oom;
        r->acc_n = depth + 1;
        for (int i = 0; i < r->acc_n; i++)
            if (!(r->acc[i] = malloc(sizeof(float) * n))) goto oom;
    }
    if (r->micro > 1 && !(r->bn0 = malloc(sizeof(float) * tl_model_bn_floats(r->model)))) goto oom;
    r->step_sums = calloc((size_t)SUM_FIXED + (size_t)r->ranks, sizeof(double));
    r->rank_ips = calloc((size_t)r->ranks, sizeof(double));
    if (!r->step_sums || !r->rank_ips) goto oom;
    return 0;
oom:
    train_fail(r, "OUT_OF_MEMORY", "out of memory for the step's gradient sums (%d micro-batches of %d images here)",
               r->local_micro, r->mb);
    return -1;
}

void train_step_free(run *r) {
    for (int i = 0; r->acc && i < r->acc_n; i++) free(r->acc[i]);
    free(r->acc);
    free(r->bn0);
    free(r->step_sums);
    free(r->rank_ips);
    r->acc = NULL;
    r->bn0 = NULL;
    r->step_sums = r->rank_ips = NULL;
}

typedef struct {
    const tl_batch *b;
    int64_t step;
    int image_mix;
    tl_box box;
    int bn;          /* carry the running BatchNorm statistics through the sum */
    double loss[3];  /* sums over this rank's micro-batches */
    int nonfinite;
    float lam;
} step_ctx;

/* Forward, loss and backward of local micro-batch j into the model's gradient block. */
static void leaf(run *r, step_ctx *c, int j) {
    const tl_train_spec *s = r->spec;
    int mb = r->mb, K = r->cfg.num_classes, S = r->cfg.img_size, g = tl_config_grid(&r->cfg);
    uint64_t J = (uint64_t)r->rank * (uint64_t)r->local_micro + (uint64_t)j;
    float *img = c->b->images + (size_t)j * mb * 3 * S * S;
    const float *t_cls = c->b->t_cls + (size_t)j * mb * K;
    const float *t_dense = c->b->t_dense ? c->b->t_dense + (size_t)j * mb * g * g * K : NULL;
    if (c->image_mix) {
        tl_rng mr;
        tl_rng_derive(&mr, s->seed, TL_RNG_MIXUP, (uint64_t)c->step, J);
        float lam = tl_mix_batch(img, mb, S, (int)s->mix, s->mix_alpha, &mr);
        for (int i = 0; i < mb; i++)
            for (int k = 0; k < K; k++)
                r->t_mix[(size_t)i * K + k] =
                    lam * t_cls[(size_t)i * K + k] + (1.0f - lam) * t_cls[(size_t)(mb - 1 - i) * K + k];
        t_cls = r->t_mix;
        t_dense = NULL;
    }
    tl_rng dr;
    tl_rng_derive(&dr, s->seed, TL_RNG_DROPPATH, (uint64_t)c->step, J);
    tl_loss_weights lw = {s->cls_weight, s->dense_weight, 1.0f / (float)r->micro};
    tl_loss_parts lp;
    if (c->bn) tl_model_bn_restore(r->model, r->bn0, r->bn0_count);
    tl_model_zero_grad(r->model);
    tl_forward(r->ctx, img, mb, 1, &c->box, tl_rng_next(&dr));
    tl_loss(r->ctx, t_cls, t_dense, &lw, &lp);
    if (!isfinite(lp.loss)) c->nonfinite++;
    tl_backward(r->ctx);
    if (c->bn) tl_model_bn_to_grads(r->model);
    if (j == 0) c->lam = lp.lam;
    c->loss[0] += lp.loss;
    c->loss[1] += lp.loss_cls;
    c->loss[2] += lp.loss_dense;
}

static void add(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* The halving-tree sum of local micro-batches [lo,hi) into out (not the gradient block, which every leaf
 * overwrites); acc[d+1] holds the right half's sum. */
static void tree(run *r, step_ctx *c, int lo, int hi, float *out, int d, float *grad, size_t n) {
    if (hi - lo == 1) {
        leaf(r, c, lo);
        memcpy(out, grad, sizeof(float) * n);
        return;
    }
    int mid = lo + (hi - lo) / 2;
    if (!TL_ALWAYS(d + 1 < r->acc_n)) return; /* train_step_setup sized acc for the tree's depth */
    tree(r, c, lo, mid, out, d + 1, grad, n);
    tree(r, c, mid, hi, r->acc[d + 1], d + 1, grad, n);
    add(out, r->acc[d + 1], n);
}

int train_step_grads(run *r, const tl_batch *b, int64_t step, int image_mix, tl_box box, train_step_out *out) {
    size_t n = 0;
    float *grad = tl_model_grad_vector(r->model, &n);
    step_ctx c = {.b = b, .step = step, .image_mix = image_mix, .box = box,
                  .bn = r->micro > 1 && tl_model_bn_trains(r->model)};
    double t0 = tl_clock_mono_s();
    if (c.bn) tl_model_bn_save(r->model, r->bn0, r->bn0_count);
    float *sum = grad;
    if (r->local_micro == 1) {
        leaf(r, &c, 0); /* the sum is the one gradient, in place */
    } else {
        sum = r->acc[0];
        tree(r, &c, 0, r->local_micro, sum, 0, grad, n);
    }
    double *v = r->step_sums;
    memset(v, 0, sizeof(double) * ((size_t)SUM_FIXED + (size_t)r->ranks));
    v[0] = c.loss[0];
    v[1] = c.loss[1];
    v[2] = c.loss[2];
    v[3] = c.nonfinite;
    v[SUM_FIXED + r->rank] = tl_clock_mono_s() - t0;
    out->comm_s = 0.0;
    if (r->comm) {
        double t1 = tl_clock_mono_s();
        if (tl_comm_sum_tree(r->comm, sum, n) != 0 || tl_comm_sum_f64(r->comm, v, SUM_FIXED + r->ranks) != 0)
            return train_fail(r, "DIST_ERROR", "the gradient sum across the ranks failed at step %lld",
                              (long long)step + 1), -1;
        out->comm_s = tl_clock_mono_s() - t1;
    }
    if (sum != grad) memcpy(grad, sum, sizeof(float) * n);
    if (c.bn) tl_model_bn_from_grads(r->model, r->micro, r->bn0_count);
    out->lp.loss = v[0] / r->micro;
    out->lp.loss_cls = v[1] / r->micro;
    out->lp.loss_dense = v[2] / r->micro;
    out->lp.lam = c.lam;
    out->nonfinite = (int)v[3];
    double local_images = (double)r->local_micro * r->mb;
    for (int k = 0; k < r->ranks; k++) {
        double sec = v[SUM_FIXED + k];
        r->rank_ips[k] = sec > 0 ? local_images / sec : 0.0;
    }
    return 0;
}
