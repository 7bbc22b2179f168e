/*
 * backward.c: the LV-ViT backward pass of the last training forward and loss.
 *
 * Owns nothing: reads the context's activations and dlogits (written by
 * tl_loss), accumulates into the model's gradient block. Parts the forward
 * ran frozen (ctx fwd_freeze, from tl_model_set_freeze) are skipped whole:
 * with a frozen trunk only the heads' weight gradients are computed, with a
 * frozen stem everything down to the class token and position embedding;
 * frozen tensors' gradients are never written. Runs on the thread that owns
 * the context.
 */
#include "model/model_internal.h"

#include <stdio.h>
#include <string.h>

static void block_backward(tl_ctx *x, int l, int B) {
    tl_model *m = x->m;
    const tl_block_weights *w = &m->wt[0].blocks[l];
    tl_block_weights *gw = &m->wt[1].blocks[l];
    tl_block_acts *a = &x->blk[l];
    int T = x->T, D = x->D, BT = B * T, hid = x->hid;
    float inv_skip = 1.0f / m->cfg.skip_lam;
    /* x->dres holds d(block output). MLP branch: out = x_mid + s2 * mlp(ln2(x_mid)) / skip */
    PROF(x, TL_PROF_RESID, tl_residual_backward(x->pool, x->dbranch, x->dres, a->scale2, inv_skip, B, (size_t)T * D));
    PROF(x, TL_PROF_FC2, tl_linear_backward(x->pool, x->dhid, gw->fc2_w, gw->fc2_b, x->dbranch, D, a->gelu, hid, w->fc2_w, BT, hid, D));
    PROF(x, TL_PROF_GELU, tl_gelu_backward(x->pool, x->dhid, a->fc1, x->dhid, (size_t)BT * hid));
    PROF(x, TL_PROF_FC1, tl_linear_backward(x->pool, x->dln, gw->fc1_w, gw->fc1_b, x->dhid, hid, a->ln2, D, w->fc1_w, BT, D, hid));
    PROF(x, TL_PROF_LN, tl_layernorm_backward(x->pool, x->dres, gw->ln2_w, gw->ln2_b, x->dln, a->x_mid, w->ln2_w, a->ln2_mean,
                          a->ln2_rstd, BT, D, x->scratch));
    /* attention branch: x_mid = x_in + s1 * attn(ln1(x_in)) / skip */
    PROF(x, TL_PROF_RESID, tl_residual_backward(x->pool, x->dbranch, x->dres, a->scale1, inv_skip, B, (size_t)T * D));
    PROF(x, TL_PROF_PROJ, tl_linear_backward(x->pool, x->datt_out, gw->proj_w, gw->proj_b, x->dbranch, D, a->att_out, D, w->proj_w, BT, D,
                       D));
    PROF(x, TL_PROF_ATTN, tl_attention_backward(x->pool, x->dqkv, x->datt_out, a->qkv, a->att, B, T, D, x->Hh, x->scratch));
    PROF(x, TL_PROF_QKV, tl_linear_backward(x->pool, x->dln, gw->qkv_w, NULL, x->dqkv, 3 * D, a->ln1, D, w->qkv_w, BT, D, 3 * D));
    PROF(x, TL_PROF_LN, tl_layernorm_backward(x->pool, x->dres, gw->ln1_w, gw->ln1_b, x->dln, a->x_in, w->ln1_w, a->ln1_mean,
                          a->ln1_rstd, BT, D, x->scratch));
}

static void stem_backward(tl_ctx *x, int B) {
    tl_model *m = x->m;
    tl_weights *w = &m->wt[0], *gw = &m->wt[1];
    int C = x->C, H = m->cfg.img_size, H1 = x->H1, k = x->k, kkc = C * k * k;
    size_t M = (size_t)B * H1 * H1;
    /* proj: x->patches still holds the forward's patches of a3; their gradient goes to dstem[1] */
    float *g = x->dstem[0], *g2 = x->dstem[1];
    memset(x->dwp, 0, sizeof(float) * (size_t)x->D * kkc);
    PROF(x, TL_PROF_PATCH, tl_linear_backward(x->pool, g2, x->dwp, gw->proj_b, x->dtok, x->D, x->patches, kkc, x->wp,
                                              B * x->N, kkc, x->D));
    tl_patch_weight_unpack_accum(gw->proj_w, x->dwp, x->D, C, k);
    PROF(x, TL_PROF_PATCH, tl_patch_scatter(x->pool, g, g2, B, C, H1, H1, k));
    for (int l = 2; l >= 0; l--) {
        int cin = l == 0 ? 3 : C, ks = l == 0 ? 7 : 3;
        PROF(x, TL_PROF_STEM_BN, tl_bn_backward(x->pool, g, gw->bn_w[l], gw->bn_b[l], g, x->c[l], x->a[l], x->bn_mean[l],
                                                x->bn_rstd[l], w->bn_w[l], C, M, 1, x->bn_scratch));
        memset(x->dwt[l], 0, sizeof(float) * (size_t)cin * ks * ks * C);
        if (l == 0) {
            PROF(x, TL_PROF_STEM_CONV, tl_conv2d_backward(x->pool, NULL, x->dwt[0], g, x->images, 1, x->wt[0], B, 3, H,
                                                          H, C, 7, 2, 3, x->scratch));
        } else {
            PROF(x, TL_PROF_STEM_CONV, tl_conv2d_backward(x->pool, g2, x->dwt[l], g, x->a[l - 1], 0, x->wt[l], B, C, H1,
                                                          H1, C, 3, 1, 1, x->scratch));
            float *t = g;
            g = g2;
            g2 = t;
        }
        tl_conv_weight_unpack_accum(gw->conv[l], x->dwt[l], C, cin, ks);
    }
}

int tl_backward(tl_ctx *x) {
    if (!x->training || !x->train_fwd || !x->have_loss) return -1;
    tl_model *m = x->m;
    tl_weights *w = &m->wt[0], *gw = &m->wt[1];
    int B = x->B, N = x->N, T = x->T, D = x->D, K = x->K, g = x->g;
    const tl_box *bx = &x->box;
    x->in_backward = 1;
    int mixed = bx->r0 < bx->r1 && bx->c0 < bx->c1;
    /* What the forward froze: a frozen trunk stops after the heads' weight gradients (no dln at all), a
     * frozen stem after the tokens (no dtok, no stem backward). */
    int trunk = x->fwd_freeze == TL_FREEZE_TRUNK, stem = x->fwd_freeze != TL_FREEZE_NONE;
    float *dln = trunk ? NULL : x->dln;
    /* heads: un-mixing of the aux output is a swap, so its gradient is swapped the same way */
    if (mixed) tl_mixtoken_swap(x->dlogits_aux, B, g, K, bx->r0, bx->c0, bx->r1, bx->c1);
    PROF(x, TL_PROF_HEADS, tl_linear_backward(x->pool, dln, gw->head_w, gw->head_b, x->dlogits_cls, K, x->lnf, T * D, w->head_w, B, D,
                       K));
    for (int b = 0; b < B; b++)
        PROF(x, TL_PROF_HEADS, tl_linear_backward(x->pool, dln ? dln + ((size_t)b * T + 1) * D : NULL, gw->aux_w, gw->aux_b,
                           x->dlogits_aux + (size_t)b * N * K, K, x->lnf + ((size_t)b * T + 1) * D, D, w->aux_w, N,
                           D, K));
    if (trunk) goto done;
    memset(x->dres, 0, sizeof(float) * (size_t)B * T * D);
    PROF(x, TL_PROF_LN, tl_layernorm_backward(x->pool, x->dres, gw->norm_w, gw->norm_b, x->dln, x->x_final, w->norm_w, x->lnf_mean,
                          x->lnf_rstd, B * T, D, x->scratch));
    for (int l = m->cfg.depth - 1; l >= 0; l--) block_backward(x, l, B);
    tl_tokens_backward(x->pool, x->dtok, gw->cls, gw->pos, x->dres, B, N, D);
    if (!stem) {
        if (mixed) tl_mixtoken_swap(x->dtok, B, g, D, bx->r0, bx->c0, bx->r1, bx->c1);
        stem_backward(x, B);
    }
done:
    x->have_loss = 0;
    x->in_backward = 0;
    return 0;
}
