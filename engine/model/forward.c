/*
 * forward.c: the LV-ViT forward pass, the token-labeling loss and prediction.
 *
 * Owns nothing: it reads the model's weights and writes the context's
 * activations (ctx.c). Runs on the thread that owns the context, which drives
 * the context's pool inside each op.
 */
#include "model/model_internal.h"

#include <math.h>
#include <string.h>

static tl_box clip_box(const tl_box *b, int g) {
    tl_box r = {0, 0, 0, 0};
    if (!b) return r;
    r.r0 = b->r0 < 0 ? 0 : b->r0;
    r.c0 = b->c0 < 0 ? 0 : b->c0;
    r.r1 = b->r1 > g ? g : b->r1;
    r.c1 = b->c1 > g ? g : b->c1;
    if (r.r0 >= r.r1 || r.c0 >= r.c1) r = (tl_box){0, 0, 0, 0};
    return r;
}

static int box_empty(const tl_box *b) { return b->r0 >= b->r1 || b->c0 >= b->c1; }

static void stem_forward(tl_ctx *x, const float *images, int B, int train) {
    tl_model *m = x->m;
    tl_weights *w = &m->wt[0];
    int C = x->C, H = m->cfg.img_size, H1 = x->H1, k = x->k;
    size_t M = (size_t)B * H1 * H1;
    x->stem_packed = 0; /* wt now holds the unfolded weights */
    for (int l = 0; l < 3; l++) {
        int cin = l == 0 ? 3 : C, ks = l == 0 ? 7 : 3;
        tl_conv_weight_pack(x->wt[l], w->conv[l], C, cin, ks);
        if (l == 0)
            PROF(x, TL_PROF_STEM_CONV, tl_conv2d_forward(x->pool, x->c[0], images, 1, x->wt[0], B, 3, H, H, C, 7, 2, 3, x->scratch));
        else
            PROF(x, TL_PROF_STEM_CONV, tl_conv2d_forward(x->pool, x->c[l], x->a[l - 1], 0, x->wt[l], B, C, H1, H1, C, 3, 1, 1, x->scratch));
        PROF(x, TL_PROF_STEM_BN, tl_bn_forward(x->pool, x->a[l], x->bn_mean[l], x->bn_rstd[l], x->c[l], w->bn_w[l], w->bn_b[l], w->bn_rm[l],
                      w->bn_rv[l], C, M, train, TL_BN_MOMENTUM, TL_BN_EPS, 1, x->bn_scratch));
        if (train) m->bn_batches[l]++;
    }
    tl_patch_weight_pack(x->wp, w->proj_w, x->D, C, k);
    PROF(x, TL_PROF_PATCH, tl_patch_gather(x->pool, x->patches, x->a[2], B, C, H1, H1, k));
    PROF(x, TL_PROF_PATCH, tl_linear_forward(x->pool, x->tok, x->D, x->patches, C * k * k, x->wp, w->proj_b, B * x->N,
                      C * k * k, x->D));
}

/* Eval stem: BatchNorm folded into the convolutions, the three layers and the
 * patch gather fused row by row (tl_stem_eval_forward); the same patches as
 * stem_forward's eval path up to float rounding. */
static void stem_forward_eval(tl_ctx *x, const float *images, int B) {
    tl_model *m = x->m;
    tl_weights *w = &m->wt[0];
    int C = x->C, k = x->k;
    if (!x->stem_packed) {
        for (int l = 0; l < 3; l++)
            tl_stem_eval_fold(x->wt[l], x->fold_b[l], w->conv[l], w->bn_w[l], w->bn_b[l], w->bn_rm[l], w->bn_rv[l],
                              C, l == 0 ? 3 : C, l == 0 ? 7 : 3, l == 0, TL_BN_EPS);
        tl_patch_weight_pack(x->wp, w->proj_w, x->D, C, k);
        x->stem_packed = x->frozen;
    }
    PROF(x, TL_PROF_STEM_CONV, tl_stem_eval_forward(x->pool, x->patches, images, x->wt[0], x->fold_b[0], x->wt[1],
                                                    x->fold_b[1], x->wt[2], x->fold_b[2], B, C, m->cfg.img_size, k,
                                                    x->scratch));
    PROF(x, TL_PROF_PATCH, tl_linear_forward(x->pool, x->tok, x->D, x->patches, C * k * k, x->wp, w->proj_b, B * x->N,
                                             C * k * k, x->D));
}

/* Training (and the eval reference) keep the original LayerNorm; eval uses the vectorised one. */
#define LN_FWD(x, train) ((train) || (x)->eval_reference ? tl_layernorm_forward : tl_layernorm_forward_eval)

static void block_forward(tl_ctx *x, int l, int B, int train, uint64_t drop_seed) {
    tl_model *m = x->m;
    const tl_block_weights *w = &m->wt[0].blocks[l];
    tl_block_acts *a = &x->blk[l];
    int T = x->T, D = x->D, BT = B * T, hid = x->hid;
    float inv_skip = 1.0f / m->cfg.skip_lam;
    float rate = m->cfg.depth > 1 ? m->cfg.drop_path_rate * (float)l / (float)(m->cfg.depth - 1) : 0.0f;
    const float *s1 = NULL, *s2 = NULL;
    if (train && rate > 0.0f) {
        tl_drop_path_scales(a->scale1, B, rate, drop_seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(2 * l + 1)));
        tl_drop_path_scales(a->scale2, B, rate, drop_seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(2 * l + 2)));
        s1 = a->scale1;
        s2 = a->scale2;
    } else {
        for (int b = 0; b < B; b++) a->scale1[b] = a->scale2[b] = 1.0f;
    }
    float *x_out = (l + 1 < m->cfg.depth) ? x->blk[l + 1].x_in : x->x_final;
    /* attention branch */
    PROF(x, TL_PROF_LN, LN_FWD(x, train)(x->pool, a->ln1, a->ln1_mean, a->ln1_rstd, a->x_in, w->ln1_w, w->ln1_b, BT, D, TL_LN_EPS));
    PROF(x, TL_PROF_QKV, tl_linear_forward(x->pool, a->qkv, 3 * D, a->ln1, D, w->qkv_w, NULL, BT, D, 3 * D));
    if (train || x->eval_reference)
        PROF(x, TL_PROF_ATTN, tl_attention_forward(x->pool, a->att_out, a->att, a->qkv, B, T, D, x->Hh));
    else
        PROF(x, TL_PROF_ATTN, tl_attention_forward_eval(x->pool, a->att_out, a->qkv, B, T, D, x->Hh, x->scratch));
    PROF(x, TL_PROF_PROJ, tl_linear_forward(x->pool, x->branch, D, a->att_out, D, w->proj_w, w->proj_b, BT, D, D));
    if (a->x_mid != a->x_in) memcpy(a->x_mid, a->x_in, sizeof(float) * (size_t)BT * D);
    PROF(x, TL_PROF_RESID, tl_residual_forward(x->pool, a->x_mid, x->branch, s1, inv_skip, B, (size_t)T * D));
    /* MLP branch */
    PROF(x, TL_PROF_LN, LN_FWD(x, train)(x->pool, a->ln2, a->ln2_mean, a->ln2_rstd, a->x_mid, w->ln2_w, w->ln2_b, BT, D, TL_LN_EPS));
    PROF(x, TL_PROF_FC1, tl_linear_forward(x->pool, a->fc1, hid, a->ln2, D, w->fc1_w, w->fc1_b, BT, D, hid));
    PROF(x, TL_PROF_GELU, tl_gelu_forward(x->pool, a->gelu, a->fc1, (size_t)BT * hid));
    PROF(x, TL_PROF_FC2, tl_linear_forward(x->pool, x->branch, D, a->gelu, hid, w->fc2_w, w->fc2_b, BT, hid, D));
    if (x_out != a->x_mid) memcpy(x_out, a->x_mid, sizeof(float) * (size_t)BT * D);
    PROF(x, TL_PROF_RESID, tl_residual_forward(x->pool, x_out, x->branch, s2, inv_skip, B, (size_t)T * D));
}

int tl_forward(tl_ctx *x, const float *images, int B, int train, const tl_box *box, uint64_t drop_seed) {
    if (B < 1 || B > x->Bmax || (train && !x->training)) return -1;
    tl_model *m = x->m;
    tl_weights *w = &m->wt[0];
    int N = x->N, T = x->T, D = x->D, K = x->K, g = x->g;
    x->B = B;
    x->images = images;
    x->train_fwd = train != 0;
    x->have_loss = 0;
    x->box = train ? clip_box(box, g) : (tl_box){0, 0, 0, 0};
    x->lam = tl_mixtoken_lambda(g, x->box.r0, x->box.c0, x->box.r1, x->box.c1);

    /* A frozen stem (TL_FREEZE_STEM, TL_FREEZE_TRUNK) trains as FrozenBatchNorm: its BatchNorm normalises
     * with the running statistics and updates neither them nor num_batches_tracked, and backward computes
     * nothing for it, so the fused eval stem (BatchNorm folded, no activations kept) serves the training
     * forward too; on every CPU path the BatchNorm is the same fold of the running statistics. The
     * reference path (eval_reference) runs the unfused stem with eval BatchNorm instead. */
    x->fwd_freeze = train ? m->freeze : TL_FREEZE_NONE;
    int stem_train = train && m->freeze == TL_FREEZE_NONE;
    if (stem_train || (x->eval_reference && x->training))
        stem_forward(x, images, B, stem_train);
    else
        stem_forward_eval(x, images, B);
    if (!box_empty(&x->box)) tl_mixtoken_swap(x->tok, B, g, D, x->box.r0, x->box.c0, x->box.r1, x->box.c1);
    tl_tokens_forward(x->pool, x->blk[0].x_in, x->tok, w->cls, w->pos, B, N, D);
    for (int l = 0; l < m->cfg.depth; l++) block_forward(x, l, B, train, drop_seed);
    PROF(x, TL_PROF_LN, LN_FWD(x, train)(x->pool, x->lnf, x->lnf_mean, x->lnf_rstd, x->x_final, w->norm_w, w->norm_b, B * T, D,
                         TL_LN_EPS));
    /* head on the class token (rows b*T), aux_head on each image's N patch rows */
    PROF(x, TL_PROF_HEADS, tl_linear_forward(x->pool, x->logits_cls, K, x->lnf, T * D, w->head_w, w->head_b, B, D, K));
    for (int b = 0; b < B; b++)
        PROF(x, TL_PROF_HEADS, tl_linear_forward(x->pool, x->logits_aux + (size_t)b * N * K, K, x->lnf + ((size_t)b * T + 1) * D, D,
                          w->aux_w, w->aux_b, N, D, K));
    if (!box_empty(&x->box)) tl_mixtoken_swap(x->logits_aux, B, g, K, x->box.r0, x->box.c0, x->box.r1, x->box.c1);
    return 0;
}

const float *tl_logits_cls(const tl_ctx *x) { return x->logits_cls; }
const float *tl_logits_aux(const tl_ctx *x) { return x->logits_aux; }

int tl_loss(tl_ctx *x, const float *t_cls, const float *t_dense, const tl_loss_weights *lw, tl_loss_parts *out) {
    if (!x->training || !x->train_fwd) return -1;
    int B = x->B, K = x->K, N = x->N;
    float lam = x->lam;
    for (int b = 0; b < B; b++) {
        const float *ti = t_cls + (size_t)b * K, *tj = t_cls + (size_t)(B - 1 - b) * K;
        float *o = x->t_mix + (size_t)b * K;
        for (int k = 0; k < K; k++) o[k] = lam * ti[k] + (1.0f - lam) * tj[k];
    }
    float gs = lw->grad_scale > 0.0f ? lw->grad_scale : 1.0f;
    double lc = tl_soft_ce(x->pool, x->dlogits_cls, x->logits_cls, x->t_mix, B, K, 1, lw->cls_weight * gs);
    double ld = t_dense ? tl_soft_ce(x->pool, x->dlogits_aux, x->logits_aux, t_dense, B * N, K, 1, lw->dense_weight * gs)
                        : tl_soft_ce(x->pool, x->dlogits_aux, x->logits_aux, t_cls, B * N, K, N, lw->dense_weight * gs);
    out->loss_cls = lc;
    out->loss_dense = ld;
    out->loss = (double)lw->cls_weight * lc + (double)lw->dense_weight * ld;
    out->lam = lam;
    x->have_loss = 1;
    return 0;
}

int tl_predict(tl_ctx *x, const float *images, int B, float *scores) {
    if (tl_forward(x, images, B, 0, NULL, 0) != 0) return -1;
    tl_inference_score(scores, x->logits_cls, x->logits_aux, B, x->N, x->K);
    return 0;
}
