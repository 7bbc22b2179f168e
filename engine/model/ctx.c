/*
 * ctx.c: activation memory of one batch context, and its per-phase
 * profile (the PROF timings of forward.c and backward.c).
 *
 * Owns: one allocation sized once for (config, max batch, training), carved
 * into every activation, gradient and scratch tensor, and the context's
 * thread pool. Training keeps each block's activations for backward; an
 * inference context keeps one set and reuses it block after block.
 * Threads: the creating thread drives the pool; nothing else touches it.
 */
#include "model/model_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float *base;
    size_t off;
} carver;

static float *take(carver *cv, size_t n) {
    float *p = cv->base ? cv->base + cv->off : NULL;
    cv->off += (n + 15) & ~(size_t)15;
    return p;
}

static size_t max3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Carves the context (count only when cv->base is NULL). */
static void carve_ctx(tl_ctx *x, carver *cv) {
    size_t B = (size_t)x->Bmax, T = (size_t)x->T, D = (size_t)x->D, N = (size_t)x->N, K = (size_t)x->K;
    size_t BT = B * T, hid = (size_t)x->hid, H = (size_t)x->Hh;
    int depth = x->m->cfg.depth;
    /* The stem's full activations are kept for training only: the eval forward
     * runs the stem fused, row by row (tl_stem_eval_forward). */
    for (int l = 0; l < 3; l++) {
        x->c[l] = x->training ? take(cv, x->stem) : NULL;
        x->a[l] = x->training ? take(cv, x->stem) : NULL;
        x->bn_mean[l] = take(cv, (size_t)x->C);
        x->bn_rstd[l] = take(cv, (size_t)x->C);
        x->fold_b[l] = take(cv, (size_t)x->C);
    }
    x->patches = take(cv, x->stem);
    for (int l = 0; l < 3; l++) {
        size_t n = (size_t)(l == 0 ? 3 * 49 : x->C * 9) * x->C;
        x->wt[l] = take(cv, n);
        x->dwt[l] = x->training ? take(cv, n) : NULL;
    }
    x->wp = take(cv, (size_t)x->D * x->C * x->k * x->k);
    x->dwp = x->training ? take(cv, (size_t)x->D * x->C * x->k * x->k) : NULL;
    x->bn_scratch = take(cv, tl_bn_scratch(x->nthreads, x->C));
    x->tok = take(cv, B * N * D);
    int sets = x->training ? depth : 1;
    for (int l = 0; l < sets; l++) {
        tl_block_acts *a = &x->blk[l];
        a->x_in = l == 0 ? take(cv, BT * D) : NULL; /* l >= 1: set below */
        a->ln1 = take(cv, BT * D);
        a->ln1_mean = take(cv, BT);
        a->ln1_rstd = take(cv, BT);
        a->qkv = take(cv, BT * 3 * D);
        a->att = take(cv, B * H * T * T);
        a->att_out = take(cv, BT * D);
        a->x_mid = x->training ? take(cv, BT * D) : a->x_in;
        a->ln2 = take(cv, BT * D);
        a->ln2_mean = take(cv, BT);
        a->ln2_rstd = take(cv, BT);
        a->fc1 = take(cv, BT * hid);
        a->gelu = take(cv, BT * hid);
        a->scale1 = take(cv, B);
        a->scale2 = take(cv, B);
    }
    /* Training: block l's input is the output of block l-1, kept in its own buffer. */
    if (x->training)
        for (int l = 1; l < depth; l++) x->blk[l].x_in = take(cv, BT * D);
    x->x_final = x->training ? take(cv, BT * D) : x->blk[0].x_in;
    for (int l = sets; l < depth; l++) x->blk[l] = x->blk[0];
    x->lnf = take(cv, BT * D);
    x->lnf_mean = take(cv, BT);
    x->lnf_rstd = take(cv, BT);
    x->logits_cls = take(cv, B * K);
    x->logits_aux = take(cv, B * N * K);
    x->branch = take(cv, BT * D);
    size_t conv1 = x->training ? tl_conv2d_scratch(x->nthreads, 3, x->C, x->H1, x->H1, 7) : 0;
    size_t conv23 = x->training ? tl_conv2d_scratch(x->nthreads, x->C, x->C, x->H1, x->H1, 3) : 0;
    size_t other = tl_attention_scratch(x->nthreads, x->T, x->D / x->Hh) + tl_layernorm_scratch(x->nthreads, x->D > x->C ? x->D : x->C);
    size_t stem_eval = tl_stem_eval_scratch(x->nthreads, x->C, x->H1);
    x->scratch_floats = max3(conv1, conv23, other > stem_eval ? other : stem_eval);
    x->scratch = take(cv, x->scratch_floats);
    if (!x->training) return;
    x->dlogits_cls = take(cv, B * K);
    x->dlogits_aux = take(cv, B * N * K);
    x->t_mix = take(cv, B * K);
    x->dres = take(cv, BT * D);
    x->dln = take(cv, BT * D);
    x->dqkv = take(cv, BT * 3 * D);
    x->datt_out = take(cv, BT * D);
    x->dhid = take(cv, BT * hid);
    x->dbranch = take(cv, BT * D);
    x->dtok = take(cv, B * N * D);
    x->dstem[0] = take(cv, x->stem);
    x->dstem[1] = take(cv, x->stem);
}

tl_ctx *tl_ctx_new(tl_model *m, int batch, int training, int nthreads, char *err, size_t errlen) {
    if (batch < 1 || batch > 65536) {
        tl_seterr(err, errlen, "batch: must be in 1..65536, got %d", batch);
        return NULL;
    }
    if (training && !tl_model_trainable(m)) {
        tl_seterr(err, errlen, "a training context needs a trainable model (tl_model_new)");
        return NULL;
    }
    if (nthreads < 1) nthreads = 1;
    tl_ctx *x = calloc(1, sizeof *x);
    if (!x) goto fail_alloc;
    const tl_config *c = &m->cfg;
    x->m = m;
    x->Bmax = batch;
    x->training = training != 0;
    x->nthreads = nthreads;
    x->C = c->stem_channels;
    x->H1 = c->img_size / 2;
    x->k = c->patch_size / 2;
    x->g = tl_config_grid(c);
    x->N = x->g * x->g;
    x->T = x->N + 1;
    x->D = c->embed_dim;
    x->Hh = c->num_heads;
    x->hid = tl_config_hidden(c);
    x->K = c->num_classes;
    x->stem = (size_t)x->C * batch * x->H1 * x->H1;
    x->blk = calloc((size_t)c->depth, sizeof *x->blk);
    if (!x->blk) goto fail_alloc;
    carver count = {NULL, 0};
    carve_ctx(x, &count);
    x->nfloats = count.off;
    if (posix_memalign((void **)&x->mem, 64, sizeof(float) * x->nfloats) != 0) {
        x->mem = NULL;
        goto fail_alloc;
    }
    memset(x->mem, 0, sizeof(float) * x->nfloats);
    carver real = {x->mem, 0};
    carve_ctx(x, &real);
    x->pool = tl_pool_new(nthreads);
    if (!x->pool) {
        tl_seterr(err, errlen, "cannot start %d threads", nthreads);
        tl_ctx_free(x);
        return NULL;
    }
    return x;
fail_alloc:
    tl_seterr(err, errlen, "out of memory allocating activations for batch %d (%.1f MiB)", batch,
                  x ? (double)x->nfloats * 4 / 1048576.0 : 0.0);
    tl_ctx_free(x);
    return NULL;
}

void tl_ctx_freeze_weights(tl_ctx *x) {
    if (x) x->frozen = 1;
}

void tl_ctx_free(tl_ctx *x) {
    if (!x) return;
    tl_pool_free(x->pool);
    free(x->mem);
    free(x->blk);
    free(x);
}

int tl_ctx_batch(const tl_ctx *x) { return x->Bmax; }
size_t tl_ctx_bytes(const tl_ctx *x) { return sizeof(float) * x->nfloats; }

void tl_ctx_profile(tl_ctx *x, int on) {
    x->profile = on;
    memset(x->prof, 0, sizeof x->prof);
}

int tl_ctx_profile_report(const tl_ctx *x, char *buf, size_t len) {
    static const char *names[TL_PROF_N] = TL_PROF_NAMES;
    size_t off = 0;
    for (int i = 0; i < TL_PROF_N; i++) {
        int n = snprintf(buf + off, len - off, "%s%s %.1f/%.1f ms", i ? ", " : "", names[i], x->prof[i][0] * 1e3,
                         x->prof[i][1] * 1e3);
        if (n < 0 || (size_t)n >= len - off) return -1;
        off += (size_t)n;
    }
    return (int)off;
}
