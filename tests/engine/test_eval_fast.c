/*
 * test_eval_fast.c: the fast eval forward (BatchNorm folded into the stem's
 * convolutions, the stem fused row by row per image, the eval attention)
 * against the unfused layer-by-layer path it replaced, and batch against
 * single-image forwards.
 *
 * The reference is the eval forward of a training context with
 * eval_reference set (model_internal.h): the stem as conv, BatchNorm with
 * running statistics, ReLU, layer after layer over the whole batch, and the
 * attention of the training path. The BatchNorm parameters and running
 * statistics are randomised so a wrong fold (scale, bias, layout) cannot hide
 * behind gamma = 1, beta = 0, mean = 0, var = 1. Sizes include odd ones (grid
 * 9, stem 12 or 24 channels, head dim 15 or 9), 64 stem channels (the stem's
 * AVX-512 kernel, with rows that are not a multiple of its register block) and
 * 1, 2, 3 threads (so images
 * are split between threads mid-image), batches 1, 3, 5, 8.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/model_internal.h"
#include "isa_gate.h"
#include "tokenlab/model.h"

#define BMAX 8
#define TOL 1e-5

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 11;
}
static float unif(uint64_t *s, float lo, float hi) { return lo + (hi - lo) * (float)((double)lcg(s) * 0x1.0p-53); }

static double max_rel(const float *a, const float *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]), r = fabs((double)ref[i]);
        if (d > num || isnan(d)) num = isnan(d) ? INFINITY : d;
        if (r > den) den = r;
    }
    return num / (den > 0.0 ? den : 1.0);
}

/* BatchNorm affine parameters and running statistics away from their defaults. */
static void randomise_bn(tl_model *m, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (strncmp(t->name, "patch_embed.bn", 14) != 0) continue;
        const char *f = strrchr(t->name, '.') + 1;
        for (size_t k = 0; k < t->numel; k++) {
            if (strcmp(f, "weight") == 0) t->data[k] = unif(&s, 0.5f, 1.5f);
            else if (strcmp(f, "bias") == 0) t->data[k] = unif(&s, -0.3f, 0.3f);
            else if (strcmp(f, "running_mean") == 0) t->data[k] = unif(&s, -0.2f, 0.2f);
            else if (strcmp(f, "running_var") == 0) t->data[k] = unif(&s, 0.3f, 2.0f);
        }
    }
}

/* TL_TEST_EMULATED=1: the test runs under an emulator (qemu-user, for a cross build; tests/CMakeLists.txt
 * sets it there), where floating point is about a hundred times slower. */
static int emulated(void) {
    const char *e = getenv("TL_TEST_EMULATED");
    return e && *e && strcmp(e, "0") != 0;
}

typedef struct {
    tl_config c;
    int nthreads;
} eval_case;

static void check_case(const eval_case *ec) {
    char err[TL_ERR_LEN] = "";
    tl_model *m = tl_model_new(&ec->c, 21, err, sizeof err);
    if (!m) fail_msg("tl_model_new: %s", err);
    randomise_bn(m, 5);
    int S = ec->c.img_size, K = ec->c.num_classes, N = tl_config_tokens(&ec->c);
    size_t isz = (size_t)3 * S * S, nc = (size_t)BMAX * K, na = (size_t)BMAX * N * K;
    float *img = malloc(sizeof(float) * isz * BMAX);
    float *cls = malloc(sizeof(float) * nc), *aux = malloc(sizeof(float) * na), *score = malloc(sizeof(float) * nc);
    float *sc = malloc(sizeof(float) * nc);
    assert_true(img && cls && aux && score && sc);
    uint64_t s = 77;
    for (size_t i = 0; i < isz * BMAX; i++) img[i] = unif(&s, -2.0f, 2.0f);

    /* reference: the unfused eval path of a training context */
    tl_ctx *xr = tl_ctx_new(m, BMAX, 1, ec->nthreads, err, sizeof err);
    if (!xr) fail_msg("tl_ctx_new: %s", err);
    xr->eval_reference = 1;
    assert_int_equal(tl_forward(xr, img, BMAX, 0, NULL, 0), 0);
    memcpy(cls, tl_logits_cls(xr), sizeof(float) * nc);
    memcpy(aux, tl_logits_aux(xr), sizeof(float) * na);
    tl_inference_score(score, cls, aux, BMAX, N, K);

    /* the fast path, in an inference context and in a training context */
    tl_ctx *xe = tl_ctx_new(m, BMAX, 0, ec->nthreads, err, sizeof err);
    if (!xe) fail_msg("tl_ctx_new: %s", err);
    xr->eval_reference = 0;
    tl_ctx *ctxs[2] = {xe, xr};
    for (int ci = 0; ci < 2; ci++) {
        tl_ctx *x = ctxs[ci];
        assert_int_equal(tl_forward(x, img, BMAX, 0, NULL, 0), 0);
        double e1 = max_rel(tl_logits_cls(x), cls, nc), e2 = max_rel(tl_logits_aux(x), aux, na);
        if (!(e1 <= TOL && e2 <= TOL))
            fail_msg("%s ctx, %d threads, batch %d: cls err %.3g, aux err %.3g", ci ? "training" : "inference",
                     ec->nthreads, BMAX, e1, e2);
        assert_int_equal(tl_predict(x, img, BMAX, sc), 0);
        double e3 = max_rel(sc, score, nc);
        if (!(e3 <= TOL)) fail_msg("predict, batch %d: err %.3g", BMAX, e3);
    }
    /* every image alone, and odd sub-batches, against the batch-8 reference */
    static const int SUB[][2] = {{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}, {6, 1}, {7, 1},
                                 {0, 3}, {3, 5}, {1, 2}};
    for (size_t k = 0; k < sizeof SUB / sizeof SUB[0]; k++) {
        int b0 = SUB[k][0], n = SUB[k][1];
        assert_int_equal(tl_forward(xe, img + (size_t)b0 * isz, n, 0, NULL, 0), 0);
        double e1 = max_rel(tl_logits_cls(xe), cls + (size_t)b0 * K, (size_t)n * K);
        double e2 = max_rel(tl_logits_aux(xe), aux + (size_t)b0 * N * K, (size_t)n * N * K);
        if (!(e1 <= TOL && e2 <= TOL))
            fail_msg("%d threads, images [%d,%d): cls err %.3g, aux err %.3g", ec->nthreads, b0, b0 + n, e1, e2);
    }
    /* frozen weights: the stem packed once, the same results bit for bit */
    assert_int_equal(tl_forward(xe, img, BMAX, 0, NULL, 0), 0);
    memcpy(sc, tl_logits_cls(xe), sizeof(float) * nc);
    tl_ctx_freeze_weights(xe);
    tl_ctx_freeze_weights(xr);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(tl_forward(xe, img, BMAX, 0, NULL, 0), 0);
        assert_true(memcmp(tl_logits_cls(xe), sc, sizeof(float) * nc) == 0);
    }
    assert_int_equal(tl_forward(xr, img, BMAX, 0, NULL, 0), 0); /* xr's folded stem packed */
    assert_true(max_rel(tl_logits_cls(xr), sc, nc) <= TOL);
    /* a training forward after the eval ones still matches a fresh context's */
    tl_ctx *xt = tl_ctx_new(m, BMAX, 1, ec->nthreads, err, sizeof err);
    if (!xt) fail_msg("tl_ctx_new: %s", err);
    assert_int_equal(tl_forward(xt, img, BMAX, 1, NULL, 3), 0);
    memcpy(cls, tl_logits_cls(xt), sizeof(float) * nc);
    assert_int_equal(tl_forward(xr, img, BMAX, 1, NULL, 3), 0);
    assert_true(max_rel(tl_logits_cls(xr), cls, nc) == 0.0);
    /* the training forwards moved the BatchNorm statistics; the frozen xr's
     * training forward packed the unfolded weights, so its next eval folds
     * again and matches a fresh context's */
    tl_ctx *xf = tl_ctx_new(m, BMAX, 0, ec->nthreads, err, sizeof err);
    if (!xf) fail_msg("tl_ctx_new: %s", err);
    assert_int_equal(tl_forward(xf, img, BMAX, 0, NULL, 0), 0);
    assert_int_equal(tl_forward(xr, img, BMAX, 0, NULL, 0), 0);
    assert_true(max_rel(tl_logits_cls(xr), tl_logits_cls(xf), nc) <= TOL);
    assert_true(max_rel(tl_logits_cls(xf), sc, nc) > 0.0); /* the statistics did move */
    tl_ctx_free(xf);
    tl_ctx_free(xt);
    tl_ctx_free(xe);
    tl_ctx_free(xr);
    tl_model_free(m);
    free(img);
    free(cls);
    free(aux);
    free(score);
    free(sc);
}

static void test_small(void **state) {
    (void)state;
    eval_case ec = {{.img_size = 32, .patch_size = 8, .embed_dim = 48, .depth = 2, .num_heads = 3, .mlp_ratio = 3.0f,
                     .stem_channels = 16, .skip_lam = 2.0f, .num_classes = 5, .drop_path_rate = 0.1f},
                    2};
    check_case(&ec);
    ec.nthreads = 1;
    check_case(&ec);
}

static void test_odd_sizes(void **state) {
    (void)state;
    /* grid 9, stem 18x18 with k 2, 12 channels, head dim 15, 3 threads */
    eval_case a = {{.img_size = 36, .patch_size = 4, .embed_dim = 30, .depth = 2, .num_heads = 2, .mlp_ratio = 2.5f,
                    .stem_channels = 12, .skip_lam = 1.0f, .num_classes = 7, .drop_path_rate = 0.0f},
                   3};
    check_case(&a);
    /* grid 4 with k 5, 24 channels, head dim 9, 2 threads */
    eval_case b = {{.img_size = 40, .patch_size = 10, .embed_dim = 36, .depth = 3, .num_heads = 4, .mlp_ratio = 2.0f,
                    .stem_channels = 24, .skip_lam = 2.0f, .num_classes = 3, .drop_path_rate = 0.0f},
                   2};
    check_case(&b);
}

/* 64 stem channels: the stem's AVX-512 or AVX2 kernels (the level this run tests):
 * Winograd row pairs with rows of 24 pixels (12 tiles: a register block of 7
 * and single tiles) and 28 (14 tiles), images split between 3 threads; and
 * row by row when a token row holds an odd number of stem rows. Left out
 * under an emulator: minutes there, and off x86-64 the generic stem of the
 * cases above. */
static void test_stem64(void **state) {
    (void)state;
    if (emulated()) skip();
    eval_case a = {{.img_size = 48, .patch_size = 8, .embed_dim = 32, .depth = 1, .num_heads = 2, .mlp_ratio = 2.0f,
                    .stem_channels = 64, .skip_lam = 1.0f, .num_classes = 4, .drop_path_rate = 0.0f},
                   3};
    check_case(&a);
    eval_case b = {{.img_size = 56, .patch_size = 8, .embed_dim = 32, .depth = 1, .num_heads = 2, .mlp_ratio = 2.0f,
                    .stem_channels = 64, .skip_lam = 1.0f, .num_classes = 4, .drop_path_rate = 0.0f},
                   2};
    check_case(&b);
    /* 3 stem rows per token row (odd): row by row on the direct kernel, not in Winograd pairs */
    eval_case c = {{.img_size = 36, .patch_size = 6, .embed_dim = 32, .depth = 1, .num_heads = 2, .mlp_ratio = 2.0f,
                    .stem_channels = 64, .skip_lam = 1.0f, .num_classes = 4, .drop_path_rate = 0.0f},
                   3};
    check_case(&c);
}

/* 32 stem channels (the small models): the AVX2 level's stem kernels and Winograd pairs (24 and 32
 * stem pixels a row), row by row with 3 stem rows a token row; im2col + sgemm at the other levels */
static void test_stem32(void **state) {
    (void)state;
    eval_case a = {{.img_size = 64, .patch_size = 8, .embed_dim = 32, .depth = 1, .num_heads = 2, .mlp_ratio = 2.0f,
                    .stem_channels = 32, .skip_lam = 1.0f, .num_classes = 4, .drop_path_rate = 0.0f},
                   3};
    check_case(&a);
    eval_case b = {{.img_size = 36, .patch_size = 6, .embed_dim = 32, .depth = 1, .num_heads = 2, .mlp_ratio = 2.0f,
                    .stem_channels = 32, .skip_lam = 1.0f, .num_classes = 4, .drop_path_rate = 0.0f},
                   2};
    check_case(&b);
}

int main(void) {
    if (tl_test_isa_unavailable()) return TL_TEST_SKIP_CODE; /* run once per kernel level: isa_gate.h */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small),
        cmocka_unit_test(test_odd_sizes),
        cmocka_unit_test(test_stem64),
        cmocka_unit_test(test_stem32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
