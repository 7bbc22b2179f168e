/*
 * test_isa.c: every kernel level's kernels against the generic level's
 * (core/simd.h), in one process: each case runs at TL_ISA_GENERIC, then at
 * each higher level this CPU has (tl_isa_force), on the same inputs, and
 * compares. Levels the CPU lacks are not run (a CPU with none above generic
 * skips the comparisons); tests/CMakeLists.txt also runs the gradient checks
 * and the eval tests once per level, so every level's kernels are held to
 * finite differences and to the unfused eval path too.
 *
 * Tolerances, relative to the largest reference value (|a - g| <= tol *
 * max|g|) unless stated:
 *   GELU and its gradient, elementwise: |a - g| <= 1e-6 (1 + |g|) (the same
 *     formulas; FMA and 8-lane rounding only); special values: NaN stays
 *     NaN, +-100 give 100 and 0, gradients 1 and (within 1e-30) 0;
 *   softmax probabilities (the training attention): 1e-6 absolute; the
 *     attention's outputs and its backward's dQ, dK, dV: 1e-5;
 *   the eval attention (own row kernels against OpenBLAS): 1e-5;
 *   LayerNorm forward, eval forward and backward: 1e-5;
 *   AdamW after 3 steps: 1e-6;
 *   the stem's 3x3 64-channel convolutions (row path, direct or Winograd,
 *     against im2col + sgemm), forward and both gradients: 1e-5;
 *   the fused eval stem: 1e-5;
 *   the GEMM kernels (A W, A B^T, A^T B; widths that are not multiples of
 *     8 included): bit for bit against a sequential fmaf loop over k times
 *     alpha (each output's sum runs over k in order, whatever the blocking),
 *     nothing written past the last column.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pool.h"
#include "core/simd.h"
#include "ops/gemm_stem_avx2.h"
#include "ops/gemm64_avx512.h"
#include "ops/gemm_avx2.h"
#include "ops/gemm_avx512.h"
#include "ops/ops.h"
#include "tokenlab/model.h"

static uint64_t g_rng = 12345;
static float unif(double lo, double hi) {
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(lo + (hi - lo) * ((double)(g_rng >> 11) * 0x1.0p-53));
}
static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}
static float *frand(size_t n, double lo, double hi) {
    float *p = falloc(n);
    for (size_t i = 0; i < n; i++) p[i] = unif(lo, hi);
    return p;
}
static float *fdup(const float *x, size_t n) {
    float *p = falloc(n);
    memcpy(p, x, sizeof(float) * n);
    return p;
}

/* max |a - g| / max |g| over n values, printed; NaN counts as infinitely far. */
static double rel_diff(const char *what, int level, const float *a, const float *g, size_t n) {
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)g[i]);
        if (isnan(e)) e = INFINITY;
        d = e > d ? e : d;
        m = fabs((double)g[i]) > m ? fabs((double)g[i]) : m;
    }
    double r = d / (m > 0.0 ? m : 1.0);
    printf("  %-44s %-7s vs generic: max |diff| %.2e, relative %.2e\n", what, tl_isa_level_name(level), d, r);
    return r;
}

/* The levels above generic this CPU has; 0 when none (the caller skips). */
static int higher_levels(int *levels) {
    int n = 0;
    for (int l = TL_ISA_AVX2; l <= tl_isa_cpu(); l++) levels[n++] = l;
    return n;
}

static int g_saved_level;
static int setup(void **state) {
    (void)state;
    g_saved_level = tl_isa();
    return 0;
}
static int teardown(void **state) {
    (void)state;
    tl_isa_force(g_saved_level);
    return 0;
}

/* ---- GELU ---- */
static void test_gelu_levels(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    tl_pool *p = tl_pool_new(2);
    size_t n = 100003; /* odd: both threads end in a tail */
    float *x = frand(n, -8.0, 8.0), *d = frand(n, -1.0, 1.0);
    float special[] = {NAN, 100.0f, -100.0f, 0.0f, -0.0f, 1e-30f, -1e-30f, 5.5f, -5.5f};
    memcpy(x, special, sizeof special);
    float *g_out = falloc(n), *g_dx = falloc(n), *out = falloc(n), *dx = falloc(n);
    tl_isa_force(TL_ISA_GENERIC);
    tl_gelu_forward(p, g_out, x, n);
    tl_gelu_backward(p, g_dx, x, d, n);
    for (int li = 0; li < nl; li++) {
        assert_int_equal(tl_isa_force(levels[li]), li == 0 ? TL_ISA_GENERIC : levels[li - 1]);
        assert_int_equal(tl_isa(), levels[li]);
        tl_gelu_forward(p, out, x, n);
        tl_gelu_backward(p, dx, x, d, n);
        assert_true(isnan(out[0]) && isnan(dx[0]));
        assert_true(out[1] == 100.0f && out[2] == 0.0f && dx[1] == d[1] && fabsf(dx[2]) < 1e-30f);
        double worst_f = 0.0, worst_b = 0.0;
        for (size_t i = 1; i < n; i++) {
            worst_f = fmax(worst_f, fabs((double)out[i] - g_out[i]) / (1.0 + fabs((double)g_out[i])));
            worst_b = fmax(worst_b, fabs((double)dx[i] - g_dx[i]) / (1.0 + fabs((double)g_dx[i])));
        }
        printf("  GELU %s vs generic: forward %.2e, gradient %.2e (|diff| / (1 + |generic|))\n",
               tl_isa_level_name(levels[li]), worst_f, worst_b);
        assert_true(worst_f <= 1e-6 && worst_b <= 1e-6);
        /* dx may alias dout */
        float *alias = fdup(d, n);
        tl_gelu_backward(p, alias, x, alias, n);
        assert_memory_equal(alias + 1, dx + 1, sizeof(float) * (n - 1));
        free(alias);
    }
    free(x), free(d), free(g_out), free(g_dx), free(out), free(dx);
    tl_pool_free(p);
}

/* ---- attention: the training softmax, and the eval attention on the row kernels ---- */
static void attention_case(tl_pool *p, const int *levels, int nl, int B, int T, int D, int H) {
    size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D, na = (size_t)B * H * T * T;
    float *qkv = frand(nq, -2.0, 2.0), *dout = frand(no, -1.0, 1.0);
    float *g_out = falloc(no), *g_att = falloc(na), *g_eval = falloc(no), *g_dqkv = falloc(nq);
    float *out = falloc(no), *att = falloc(na), *ev = falloc(no), *dqkv = falloc(nq);
    float *scr = falloc(tl_attention_scratch(tl_pool_size(p), T, D / H));
    char name[96];
    tl_isa_force(TL_ISA_GENERIC);
    tl_attention_forward(p, g_out, g_att, qkv, B, T, D, H);
    tl_attention_forward_eval(p, g_eval, qkv, B, T, D, H, scr);
    tl_attention_backward(p, g_dqkv, dout, qkv, g_att, B, T, D, H, scr);
    for (int li = 0; li < nl; li++) {
        tl_isa_force(levels[li]);
        tl_attention_forward(p, out, att, qkv, B, T, D, H);
        tl_attention_forward_eval(p, ev, qkv, B, T, D, H, scr);
        for (size_t i = 0; i < nq; i++) dqkv[i] = 99.0f; /* overwritten */
        tl_attention_backward(p, dqkv, dout, qkv, g_att, B, T, D, H, scr);
        snprintf(name, sizeof name, "attention backward B%d T%d D%d H%d", B, T, D, H);
        assert_true(rel_diff(name, levels[li], dqkv, g_dqkv, nq) <= 1e-5);
        double pd = 0.0;
        for (size_t i = 0; i < na; i++) pd = fmax(pd, fabs((double)att[i] - g_att[i]));
        printf("  softmax B%d T%d D%d H%d %s vs generic: max |diff| %.2e\n", B, T, D, H,
               tl_isa_level_name(levels[li]), pd);
        assert_true(pd <= 1e-6);
        snprintf(name, sizeof name, "attention B%d T%d D%d H%d", B, T, D, H);
        assert_true(rel_diff(name, levels[li], out, g_out, no) <= 1e-5);
        snprintf(name, sizeof name, "eval attention B%d T%d D%d H%d", B, T, D, H);
        assert_true(rel_diff(name, levels[li], ev, g_eval, no) <= 1e-5);
    }
    free(qkv), free(dout), free(g_out), free(g_att), free(g_eval), free(g_dqkv), free(out), free(att), free(ev);
    free(dqkv), free(scr);
}

static void test_attention_levels(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    tl_pool *p = tl_pool_new(2);
    attention_case(p, levels, nl, 2, 197, 240, 4); /* lvvit_t: head dim 60, rows 6k + 5 */
    attention_case(NULL, levels, nl, 1, 17, 27, 3); /* head dim 9 */
    attention_case(p, levels, nl, 3, 1, 64, 1);     /* one token */
    attention_case(p, levels, nl, 1, 50, 128, 2);   /* head dim 64: no padding */
    attention_case(p, levels, nl, 3, 65, 128, 4);   /* the D128x6 model at 32 px: head dim 32 */
    tl_pool_free(p);
}

/* ---- LayerNorm ---- */
static void test_layernorm_levels(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    tl_pool *p = tl_pool_new(2);
    static const int shapes[][2] = {{394, 240}, {7, 37}, {33, 16}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], D = shapes[s][1];
        size_t n = (size_t)M * D;
        float *x = frand(n, -3.0, 3.0), *w = frand((size_t)D, 0.5, 1.5), *b = frand((size_t)D, -0.5, 0.5);
        float *dout = frand(n, -1.0, 1.0), *dx0 = frand(n, -1.0, 1.0);
        float *mean = falloc((size_t)M), *rstd = falloc((size_t)M), *scr = falloc(tl_layernorm_scratch(2, D));
        float *g_o = falloc(n), *g_e = falloc(n), *g_dx = fdup(dx0, n), *g_dw = falloc((size_t)D), *g_db = falloc((size_t)D);
        float *o = falloc(n), *e = falloc(n), *dx = falloc(n), *dw = falloc((size_t)D), *db = falloc((size_t)D);
        char name[96];
        tl_isa_force(TL_ISA_GENERIC);
        tl_layernorm_forward_eval(p, g_e, mean, rstd, x, w, b, M, D, 1e-6f);
        tl_layernorm_forward(p, g_o, mean, rstd, x, w, b, M, D, 1e-6f);
        tl_layernorm_backward(p, g_dx, g_dw, g_db, dout, x, w, mean, rstd, M, D, scr);
        for (int li = 0; li < nl; li++) {
            tl_isa_force(levels[li]);
            memcpy(dx, dx0, sizeof(float) * n);
            memset(dw, 0, sizeof(float) * (size_t)D), memset(db, 0, sizeof(float) * (size_t)D);
            tl_layernorm_forward_eval(p, e, mean, rstd, x, w, b, M, D, 1e-6f);
            tl_layernorm_forward(p, o, mean, rstd, x, w, b, M, D, 1e-6f);
            tl_layernorm_backward(p, dx, dw, db, dout, x, w, mean, rstd, M, D, scr);
            snprintf(name, sizeof name, "LayerNorm %dx%d forward", M, D);
            assert_true(rel_diff(name, levels[li], o, g_o, n) <= 1e-5);
            snprintf(name, sizeof name, "LayerNorm %dx%d eval forward", M, D);
            assert_true(rel_diff(name, levels[li], e, g_e, n) <= 1e-5);
            snprintf(name, sizeof name, "LayerNorm %dx%d dx (+=)", M, D);
            assert_true(rel_diff(name, levels[li], dx, g_dx, n) <= 1e-5);
            snprintf(name, sizeof name, "LayerNorm %dx%d dw, db", M, D);
            assert_true(rel_diff(name, levels[li], dw, g_dw, (size_t)D) <= 1e-5);
            assert_true(rel_diff(name, levels[li], db, g_db, (size_t)D) <= 1e-5);
        }
        free(x), free(w), free(b), free(dout), free(dx0), free(mean), free(rstd), free(scr);
        free(g_o), free(g_e), free(g_dx), free(g_dw), free(g_db), free(o), free(e), free(dx), free(dw), free(db);
    }
    tl_pool_free(p);
}

/* ---- AdamW ---- */
static void test_adamw_levels(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    tl_pool *p = tl_pool_new(2);
    size_t n = 70001; /* split over the pool, odd tails */
    float *p0 = frand(n, -1.0, 1.0), *grads[3];
    for (int t = 0; t < 3; t++) grads[t] = frand(n, -0.1, 0.1);
    float *gp = fdup(p0, n), *gm = falloc(n), *gv = falloc(n);
    tl_isa_force(TL_ISA_GENERIC);
    for (int t = 0; t < 3; t++) tl_adamw_update(p, gp, grads[t], gm, gv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, t + 1);
    for (int li = 0; li < nl; li++) {
        tl_isa_force(levels[li]);
        float *q = fdup(p0, n), *m = falloc(n), *v = falloc(n);
        for (int t = 0; t < 3; t++) tl_adamw_update(p, q, grads[t], m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, t + 1);
        assert_true(rel_diff("AdamW parameters after 3 steps", levels[li], q, gp, n) <= 1e-6);
        assert_true(rel_diff("AdamW first moments", levels[li], m, gm, n) <= 1e-6);
        assert_true(rel_diff("AdamW second moments", levels[li], v, gv, n) <= 1e-6);
        free(q), free(m), free(v);
    }
    free(p0), free(gp), free(gm), free(gv);
    for (int t = 0; t < 3; t++) free(grads[t]);
    tl_pool_free(p);
}

/* ---- the stem's 3x3 64-channel convolutions: row path (direct, Winograd) against im2col + sgemm ---- */
static void conv_case_c(tl_pool *p, const int *levels, int nl, int B, int H, int W, int C) {
    size_t n = (size_t)B * H * W * C, nw = (size_t)9 * C * C;
    float *in = frand(n, -1.0, 1.0), *wt = frand(nw, -0.1, 0.1), *dout = frand(n, -1.0, 1.0);
    float *dw0 = frand(nw, -1.0, 1.0);
    float *scr = falloc(tl_conv2d_scratch(tl_pool_size(p), C, C, H, W, 3));
    float *g_out = falloc(n), *g_din = falloc(n), *g_dw = fdup(dw0, nw);
    float *out = falloc(n), *din = falloc(n), *dw = falloc(nw);
    char name[96];
    tl_isa_force(TL_ISA_GENERIC);
    tl_conv2d_forward(p, g_out, in, 0, wt, B, C, H, W, C, 3, 1, 1, scr);
    tl_conv2d_backward(p, g_din, g_dw, dout, in, 0, wt, B, C, H, W, C, 3, 1, 1, scr);
    for (size_t i = 0; i < nw; i++) g_dw[i] -= dw0[i]; /* the increment */
    for (int li = 0; li < nl; li++) {
        tl_isa_force(levels[li]);
        memcpy(dw, dw0, sizeof(float) * nw);
        tl_conv2d_forward(p, out, in, 0, wt, B, C, H, W, C, 3, 1, 1, scr);
        tl_conv2d_backward(p, din, dw, dout, in, 0, wt, B, C, H, W, C, 3, 1, 1, scr);
        for (size_t i = 0; i < nw; i++) dw[i] -= dw0[i];
        snprintf(name, sizeof name, "conv3x3 %dch B%d %dx%d forward", C, B, H, W);
        assert_true(rel_diff(name, levels[li], out, g_out, n) <= 1e-5);
        snprintf(name, sizeof name, "conv3x3 %dch B%d %dx%d input gradient", C, B, H, W);
        assert_true(rel_diff(name, levels[li], din, g_din, n) <= 1e-5);
        snprintf(name, sizeof name, "conv3x3 %dch B%d %dx%d weight gradient (+=)", C, B, H, W);
        assert_true(rel_diff(name, levels[li], dw, g_dw, nw) <= 1e-5);
    }
    free(in), free(wt), free(dout), free(dw0), free(scr), free(g_out), free(g_din), free(g_dw), free(out), free(din), free(dw);
}

static void conv_case(tl_pool *p, const int *levels, int nl, int B, int H, int W) {
    conv_case_c(p, levels, nl, B, H, W, 64);
}

static void test_conv_levels(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    tl_pool *p = tl_pool_new(2);
    conv_case(p, levels, nl, 2, 6, 14);   /* Winograd pairs, 7 tiles (a block of 6 and one) */
    conv_case(NULL, levels, nl, 1, 5, 9); /* odd width: row by row, 9 pixels (6 + 3) */
    conv_case(p, levels, nl, 3, 7, 8);    /* the odd last row direct, the others in pairs */
    conv_case(p, levels, nl, 1, 2, 26);   /* 13 tiles */
    conv_case(p, levels, nl, 1, 4, 50);   /* 25 tiles: two chunks of the AVX2 Winograd (18 and 7) */
    conv_case(NULL, levels, nl, 1, 2, 112); /* lvvit_t's rows: 56 tiles, chunks of 18, 18 and 20 */
    conv_case(p, levels, nl, 2, 1, 5);    /* one row */
    /* 32 channels (the small models' stems: the row path at AVX2, im2col + sgemm at AVX-512) */
    conv_case_c(p, levels, nl, 2, 6, 14, 32);
    conv_case_c(NULL, levels, nl, 1, 5, 9, 32);
    conv_case_c(p, levels, nl, 1, 4, 64, 32); /* 32 tiles: chunks of 18 and 14 */
    tl_pool_free(p);
}

/* ---- the fused eval stem, 64 channels ---- */
static void stem_case_c(tl_pool *p, const int *levels, int nl, int B, int H, int k, int C) {
    int W1 = tl_conv_out(H, 7, 2, 3), g = W1 / k;
    size_t np = (size_t)B * g * g * k * k * C;
    float *img = frand((size_t)B * 3 * H * H, -2.0, 2.0);
    float *w1 = frand((size_t)147 * C, -0.2, 0.2), *w2 = frand((size_t)9 * C * C, -0.05, 0.05);
    float *w3 = frand((size_t)9 * C * C, -0.05, 0.05);
    float *b1 = frand((size_t)C, -0.1, 0.1), *b2 = frand((size_t)C, -0.1, 0.1), *b3 = frand((size_t)C, -0.1, 0.1);
    float *scr = falloc(tl_stem_eval_scratch(tl_pool_size(p), C, W1));
    float *g_pt = falloc(np), *pt = falloc(np);
    char name[96];
    tl_isa_force(TL_ISA_GENERIC);
    tl_stem_eval_forward(p, g_pt, img, w1, b1, w2, b2, w3, b3, B, C, H, k, scr);
    for (int li = 0; li < nl; li++) {
        tl_isa_force(levels[li]);
        tl_stem_eval_forward(p, pt, img, w1, b1, w2, b2, w3, b3, B, C, H, k, scr);
        snprintf(name, sizeof name, "eval stem B%d %dpx patch %d, %d channels", B, H, k, C);
        assert_true(rel_diff(name, levels[li], pt, g_pt, np) <= 1e-5);
    }
    free(img), free(w1), free(w2), free(w3), free(b1), free(b2), free(b3), free(scr), free(g_pt), free(pt);
}

static void stem_case(tl_pool *p, const int *levels, int nl, int B, int H, int k) {
    stem_case_c(p, levels, nl, B, H, k, 64);
}

static void test_stem_eval_levels(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    tl_pool *p = tl_pool_new(2);
    stem_case(p, levels, nl, 3, 48, 4);    /* 24 stem pixels a row: Winograd row pairs */
    stem_case(NULL, levels, nl, 1, 36, 3); /* 18 pixels, 3 stem rows a token row: row by row */
    stem_case(p, levels, nl, 2, 28, 7);    /* 14 pixels, odd k: row by row */
    stem_case(p, levels, nl, 1, 96, 8);    /* 48 pixels: 24 tiles, two Winograd chunks */
    stem_case_c(p, levels, nl, 3, 64, 8, 32); /* the D128x6 model at 64 px: 32 channels, 32 pixels */
    stem_case_c(NULL, levels, nl, 2, 32, 4, 32); /* at 32 px: 16 pixels, patch 4 (2 stem rows a token row) */
    stem_case_c(p, levels, nl, 1, 36, 6, 32);    /* 3 stem rows a token row: row by row */
    tl_pool_free(p);
}

#if defined(__x86_64__)
/* ---- the GEMM kernels: each output alpha times a sequential fmaf over k, bit for bit ---- */
/* out[r][c] = alpha * sum_k A(r,k) B(k,c) with A(r,k) = a[r*ar + k*ak], B(k,c) = b[k*bk + c*bc]. */
static void gemm_reference(float *out, size_t ldo, const float *a, size_t ar, size_t ak, const float *b, size_t bk,
                           size_t bc, int len, int n, int ncols, float alpha) {
    for (int r = 0; r < n; r++)
        for (int c = 0; c < ncols; c++) {
            float s = 0.0f;
            for (int k = 0; k < len; k++) s = fmaf(a[(size_t)r * ar + (size_t)k * ak], b[(size_t)k * bk + (size_t)c * bc], s);
            out[(size_t)r * ldo + c] = alpha * s;
        }
}

/* got against ref on n rows of ncols, and the sentinel -7 left past ncols. */
static void check_block(const float *got, const float *ref, size_t ldo, int n, int ncols) {
    for (int r = 0; r < n; r++) {
        assert_memory_equal(got + (size_t)r * ldo, ref + (size_t)r * ldo, sizeof(float) * (size_t)ncols);
        assert_true(got[(size_t)r * ldo + ncols] == -7.0f); /* nothing written past ncols */
    }
}

static void test_gemm_rows_exact(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    static const int ns[] = {1, 2, 3, 4, 5, 6, 7, 11, 13, 56, 65, 197};
    static const int lens[] = {1, 7, 32, 60, 64, 197};
    static const int cols[] = {1, 5, 8, 13, 16, 24, 32, 48, 60, 64, 197, 208};
    size_t ldo = 224, ld = 232; /* a, b, w: 232 x 232 */
    float *a = frand(ld * ld, -1.0, 1.0), *w = frand(ld * ld, -1.0, 1.0);
    float *ref = falloc(ld * ldo), *got = falloc(ld * ldo);
    for (int li = 0; li < nl; li++) {
        int checked = 0;
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
                for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++) {
                    int n = ns[i], len = lens[l], nc = cols[c];
                    if (levels[li] == TL_ISA_AVX512) { /* the AVX-512 kernel: A W, panels 16 wide */
                        if (nc % 16) continue;
                        gemm_reference(ref, ldo, a, ld, 1, w, ld, 1, len, n, nc, 1.0f);
                        for (size_t q = 0; q < ld * ldo; q++) got[q] = -7.0f;
                        tl_gemm_rows_avx512(got, ldo, a, ld, len, w, ld, n, nc);
                        check_block(got, ref, ldo, n, nc);
                        checked++;
                        continue;
                    }
                    float alpha = (i + c) % 2 ? 0.125f : 1.0f; /* a power of two scales exactly */
                    /* A W */
                    gemm_reference(ref, ldo, a, ld, 1, w, ld, 1, len, n, nc, alpha);
                    for (size_t q = 0; q < ld * ldo; q++) got[q] = -7.0f;
                    tl_gemm_rows_avx2(got, ldo, a, ld, len, w, ld, n, nc, alpha);
                    check_block(got, ref, ldo, n, nc);
                    /* A B^T: b's rows are the columns */
                    gemm_reference(ref, ldo, a, ld, 1, w, 1, ld, len, n, nc, alpha);
                    for (size_t q = 0; q < ld * ldo; q++) got[q] = -7.0f;
                    tl_gemm_nt_avx2(got, ldo, a, ld, len, w, ld, n, nc, alpha);
                    check_block(got, ref, ldo, n, nc);
                    /* A^T B: a's columns are the rows */
                    gemm_reference(ref, ldo, a, 1, ld, w, ld, 1, len, n, nc, alpha);
                    for (size_t q = 0; q < ld * ldo; q++) got[q] = -7.0f;
                    tl_gemm_tn_avx2(got, ldo, a, ld, n, w, ld, len, nc, alpha);
                    check_block(got, ref, ldo, n, nc);
                    checked += 3;
                }
        printf("  %s GEMM kernels: %d shapes bit for bit\n", tl_isa_level_name(levels[li]), checked);
    }
    free(a), free(w), free(ref), free(got);
}

/* The stem kernels: out (n,C) = segments of rows @ weights; out (m,C) += A^T B; C = 64 at every
 * level, and 32 on the AVX2 kernels. */
static void stem_kernels_case(int level, int C) {
    int lda = C, len = 3 * C, nmax = 20;
    float *rows[3], *w = frand((size_t)3 * len * C, -1.0, 1.0);
    for (int s = 0; s < 3; s++) rows[s] = frand((size_t)(nmax + 2) * lda * 3, -1.0, 1.0);
    float *ref = falloc((size_t)nmax * C), *got = falloc((size_t)nmax * C);
    float *acc0 = frand((size_t)len * C, -1.0, 1.0), *acc = falloc((size_t)len * C), *accr = falloc((size_t)len * C);
    float *b = frand((size_t)nmax * C, -1.0, 1.0);
    for (int n = 1; n <= nmax; n++) {
        for (int x = 0; x < n; x++)
            for (int c = 0; c < C; c++) {
                float s = 0.0f;
                for (int sg = 0; sg < 3; sg++)
                    for (int k = 0; k < len; k++)
                        s = fmaf(rows[sg][(size_t)x * lda + k], w[((size_t)sg * len + k) * C + c], s);
                ref[(size_t)x * C + c] = s;
            }
        const float *segs[3] = {rows[0], rows[1], rows[2]};
        if (level == TL_ISA_AVX512) tl_gemm64_avx512(got, segs, 3, lda, len, w, n);
        else tl_gemm_stem_avx2(got, segs, 3, lda, len, w, n, C);
        assert_memory_equal(got, ref, sizeof(float) * (size_t)n * C);
        /* A^T B accumulated: m rows (kx, ci) of the padded row, K = n pixels */
        for (int m = 1; m <= len; m += (m < 16 ? 1 : 61)) {
            memcpy(acc, acc0, sizeof(float) * (size_t)m * C);
            for (int r = 0; r < m; r++)
                for (int c = 0; c < C; c++) {
                    float s = acc0[(size_t)r * C + c];
                    for (int k = 0; k < n; k++) s = fmaf(rows[0][(size_t)k * lda + r], b[(size_t)k * C + c], s);
                    accr[(size_t)r * C + c] = s;
                }
            if (level == TL_ISA_AVX512) tl_gemm64_tn_acc_avx512(acc, rows[0], lda, m, b, n);
            else tl_gemm_stem_tn_acc_avx2(acc, rows[0], lda, m, b, n, C);
            assert_memory_equal(acc, accr, sizeof(float) * (size_t)m * C);
        }
    }
    printf("  stem kernels at %s, %d channels: 1..%d rows bit for bit\n", tl_isa_level_name(level), C, nmax);
    for (int s = 0; s < 3; s++) free(rows[s]);
    free(w), free(ref), free(got), free(acc0), free(acc), free(accr), free(b);
}

static void test_gemm64_exact(void **state) {
    (void)state;
    int levels[2], nl = higher_levels(levels);
    if (!nl) skip();
    for (int li = 0; li < nl; li++) {
        stem_kernels_case(levels[li], 64);
        if (levels[li] == TL_ISA_AVX2) stem_kernels_case(levels[li], 32);
    }
}
#else
static void test_gemm_rows_exact(void **state) {
    (void)state;
    skip(); /* x86-64 kernels only */
}
static void test_gemm64_exact(void **state) {
    (void)state;
    skip();
}
#endif

/* The switch itself: a level is capped at the CPU's; names. */
static void test_isa_switch(void **state) {
    (void)state;
    assert_string_equal(tl_isa_level_name(TL_ISA_GENERIC), "generic");
    assert_string_equal(tl_isa_level_name(TL_ISA_AVX2), "avx2");
    assert_string_equal(tl_isa_level_name(TL_ISA_AVX512), "avx512");
    assert_true(tl_isa() <= tl_isa_cpu());
    tl_isa_force(TL_ISA_AVX512);
    assert_int_equal(tl_isa(), tl_isa_cpu());
    assert_string_equal(tl_isa_name(), tl_isa_level_name(tl_isa_cpu()));
    tl_isa_force(TL_ISA_GENERIC);
    assert_string_equal(tl_isa_name(), "generic");
    printf("  CPU level %s; chosen at start: %s\n", tl_isa_level_name(tl_isa_cpu()), tl_isa_reason());
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_isa_switch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gemm_rows_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gemm64_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gelu_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layernorm_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adamw_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stem_eval_levels, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
