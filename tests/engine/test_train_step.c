/*
 * test_train_step.c: the training step as a whole (forward, token-labeling
 * loss, backward, AdamW on the context's pool) on a small LV-ViT, batch 4.
 *
 *  (i)   after a warm-up step, further steps allocate nothing (glibc
 *        mallinfo2: in-use heap bytes and mmapped bytes unchanged; and no
 *        call at all reaches malloc & co., counted by replacing them);
 *  (ii)  two models from the same seed fed the same batches with 2 threads
 *        give bit-identical losses and parameters;
 *  (iii) 30 AdamW steps on one batch bring the loss under half its first value;
 *  (iv)  an eval forward of a smaller batch than the context's equals the
 *        same rows of a full-batch eval forward (and tl_predict agrees);
 *  (v)   a training forward on an inference context, a loss after an eval
 *        forward and a backward without a loss are refused with -1.
 *
 * Single-threaded apart from the engine's pools.
 */
#include <malloc.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "isa_gate.h"
#include "tokenlab/model.h"

#if defined(__SANITIZE_ADDRESS__)
#define TL_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TL_TEST_ASAN 1
#endif
#endif

#define BATCH 4

#ifndef TL_TEST_ASAN
/* Counting allocator: glibc allows malloc to be replaced by the program
 * (every libc-internal and shared-library allocation then comes here too);
 * these forward to glibc's own allocator, so mallinfo2 keeps working, and
 * count calls while g_counting is set. This catches an allocation freed
 * within the same step, which the mallinfo2 counters cannot see. */
#include <errno.h>
#include <stdatomic.h>
#include <unistd.h>
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
extern void __libc_free(void *p);
static atomic_int g_counting;
static atomic_size_t g_allocs;
#define COUNT() (atomic_load_explicit(&g_counting, memory_order_relaxed) ? (void)atomic_fetch_add(&g_allocs, 1) : (void)0)
void *malloc(size_t n) { COUNT(); return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { COUNT(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { COUNT(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t align, size_t n) { COUNT(); return __libc_memalign(align, n); }
void *aligned_alloc(size_t align, size_t n) { COUNT(); return __libc_memalign(align, n); }
void *valloc(size_t n) { COUNT(); return __libc_memalign((size_t)sysconf(_SC_PAGESIZE), n); }
int posix_memalign(void **out, size_t align, size_t n) {
    COUNT();
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
    void *p = __libc_memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
#endif

static tl_config small_config(void) {
    tl_config c = {.img_size = 32, .patch_size = 8, .embed_dim = 48, .depth = 2, .num_heads = 3, .mlp_ratio = 3.0f,
                   .stem_channels = 16, .skip_lam = 2.0f, .num_classes = 5, .drop_path_rate = 0.1f};
    return c;
}

static tl_model *new_model(uint64_t seed) {
    tl_config c = small_config();
    char err[TL_ERR_LEN] = "";
    tl_model *m = tl_model_new(&c, seed, err, sizeof err);
    if (!m) fail_msg("tl_model_new: %s", err);
    return m;
}

static tl_ctx *new_ctx(tl_model *m, int batch, int training, int nthreads) {
    char err[TL_ERR_LEN] = "";
    tl_ctx *x = tl_ctx_new(m, batch, training, nthreads, err, sizeof err);
    if (!x) fail_msg("tl_ctx_new: %s", err);
    return x;
}

/* Deterministic pseudo-random numbers for the inputs (not the engine's generator). */
static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 11;
}
static float unif(uint64_t *s) { return (float)((double)lcg(s) * 0x1.0p-53); }

typedef struct {
    float *images, *t_cls, *t_dense;
    size_t n_img;
} batch;

/* images ~ U(-1.5, 1.5); one-hot class targets; soft per-token targets. */
static batch make_batch(uint64_t seed) {
    tl_config c = small_config();
    int B = BATCH, K = c.num_classes, N = tl_config_tokens(&c);
    batch b;
    b.n_img = (size_t)3 * c.img_size * c.img_size;
    b.images = malloc(sizeof(float) * b.n_img * B);
    b.t_cls = calloc((size_t)B * K, sizeof(float));
    b.t_dense = malloc(sizeof(float) * (size_t)B * N * K);
    assert_true(b.images && b.t_cls && b.t_dense);
    uint64_t s = seed;
    for (size_t i = 0; i < b.n_img * B; i++) b.images[i] = 3.0f * unif(&s) - 1.5f;
    for (int i = 0; i < B; i++) b.t_cls[i * K + (i * 2 + 1) % K] = 1.0f;
    for (int r = 0; r < B * N; r++) {
        float sum = 0.0f, *t = b.t_dense + (size_t)r * K;
        for (int k = 0; k < K; k++) sum += (t[k] = 0.05f + unif(&s));
        for (int k = 0; k < K; k++) t[k] /= sum;
    }
    return b;
}

static void free_batch(batch *b) {
    free(b->images);
    free(b->t_cls);
    free(b->t_dense);
}

static const tl_adamw HP = {.lr = 1e-3f, .weight_decay = 0.05f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
static const tl_loss_weights LW = {.cls_weight = 1.0f, .dense_weight = 0.5f};

/* One full training step; returns the loss. */
static double train_step(tl_ctx *x, tl_model *m, const batch *b, const tl_box *box, const float *t_dense,
                         uint64_t drop_seed) {
    tl_loss_parts lp;
    tl_model_zero_grad(m);
    assert_int_equal(tl_forward(x, b->images, BATCH, 1, box, drop_seed), 0);
    assert_int_equal(tl_loss(x, b->t_cls, t_dense, &LW, &lp), 0);
    assert_int_equal(tl_backward(x), 0);
    tl_ctx_adamw_step(x, &HP);
    return lp.loss;
}

static double max_rel(const float *a, const float *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]), r = fabs((double)ref[i]);
        if (d > num || isnan(d)) num = isnan(d) ? INFINITY : d;
        if (r > den) den = r;
    }
    return num / (den > 0.0 ? den : 1.0);
}

/* ------------------------------------------------------------------ (i) */

static void test_step_allocates_nothing(void **state) {
    (void)state;
#ifdef TL_TEST_ASAN
    /* ASan replaces malloc with its own allocator, which mallinfo2 does not
     * see, so the counters below would be meaningless. */
    skip();
#else
    tl_model *m = new_model(3);
    tl_ctx *x = new_ctx(m, BATCH, 1, 2);
    batch b = make_batch(11);
    const tl_box box = {1, 0, 3, 2};
    train_step(x, m, &b, &box, b.t_dense, 1); /* warm-up: lazy allocations of BLAS, pools, stdio */
    struct mallinfo2 before = mallinfo2();
    atomic_store(&g_allocs, 0);
    atomic_store(&g_counting, 1);
    for (int s = 0; s < 3; s++) {
        tl_model_zero_grad(m);
        tl_loss_parts lp;
        assert_int_equal(tl_forward(x, b.images, BATCH, 1, &box, (uint64_t)(100 + s)), 0);
        assert_int_equal(tl_loss(x, b.t_cls, b.t_dense, &LW, &lp), 0);
        assert_int_equal(tl_backward(x), 0);
        tl_ctx_adamw_step(x, &HP);
    }
    atomic_store(&g_counting, 0);
    struct mallinfo2 after = mallinfo2();
    if (atomic_load(&g_allocs) != 0) fail_msg("training steps called the allocator %zu times", atomic_load(&g_allocs));
    if (after.uordblks != before.uordblks || after.hblkhd != before.hblkhd)
        fail_msg("training steps allocated: uordblks %zu -> %zu, hblkhd %zu -> %zu", before.uordblks, after.uordblks,
                 before.hblkhd, after.hblkhd);
    free_batch(&b);
    tl_ctx_free(x);
    tl_model_free(m);
#endif
}

/* ------------------------------------------------------------------ (ii) */

static void test_deterministic(void **state) {
    (void)state;
    tl_model *m[2];
    double loss[2][3];
    batch b = make_batch(12);
    for (int r = 0; r < 2; r++) {
        m[r] = new_model(7);
        tl_ctx *x = new_ctx(m[r], BATCH, 1, 2);
        const tl_box boxes[3] = {{0, 1, 2, 4}, {1, 1, 4, 3}, {0, 0, 0, 0}};
        for (int s = 0; s < 3; s++) loss[r][s] = train_step(x, m[r], &b, &boxes[s], s == 1 ? NULL : b.t_dense, 40 + s);
        tl_ctx_free(x);
    }
    for (int s = 0; s < 3; s++)
        if (memcmp(&loss[0][s], &loss[1][s], sizeof(double)) != 0)
            fail_msg("step %d: loss %.17g vs %.17g", s, loss[0][s], loss[1][s]);
    assert_int_equal(tl_model_num_tensors(m[0]), tl_model_num_tensors(m[1]));
    for (int i = 0; i < tl_model_num_tensors(m[0]); i++) {
        const tl_tensor *a = tl_model_tensor(m[0], i), *c = tl_model_tensor(m[1], i);
        if (memcmp(a->data, c->data, sizeof(float) * a->numel) != 0) fail_msg("tensor %s differs", a->name);
        if (a->m && memcmp(a->m, c->m, sizeof(float) * a->numel) != 0) fail_msg("exp_avg of %s differs", a->name);
        if (a->v && memcmp(a->v, c->v, sizeof(float) * a->numel) != 0) fail_msg("exp_avg_sq of %s differs", a->name);
    }
    for (int l = 0; l < 3; l++) assert_true(*tl_model_bn_batches(m[0], l) == *tl_model_bn_batches(m[1], l));
    assert_true(tl_model_step(m[0]) == 3 && tl_model_step(m[1]) == 3);
    free_batch(&b);
    tl_model_free(m[0]);
    tl_model_free(m[1]);
}

/* ------------------------------------------------------------------ (iii) */

static void test_loss_decreases(void **state) {
    (void)state;
    tl_model *m = new_model(5);
    tl_ctx *x = new_ctx(m, BATCH, 1, 2);
    batch b = make_batch(13);
    double first = 0.0, last = 0.0;
    for (int s = 0; s < 30; s++) {
        last = train_step(x, m, &b, NULL, NULL, 9); /* plain training: dense targets = class targets */
        assert_true(isfinite(last));
        if (s == 0) first = last;
    }
    if (!(last < 0.5 * first)) fail_msg("loss %.5f after 30 steps, first %.5f (want < 50%%)", last, first);
    assert_true(tl_model_step(m) == 30);
    free_batch(&b);
    tl_ctx_free(x);
    tl_model_free(m);
}

/* ------------------------------------------------------------------ (iv) */

static void check_sub_batches(tl_model *m, tl_ctx *x, const batch *b) {
    tl_config c = small_config();
    int K = c.num_classes, N = tl_config_tokens(&c);
    size_t nc = (size_t)BATCH * K, na = (size_t)BATCH * N * K;
    float *cls = malloc(sizeof(float) * nc), *aux = malloc(sizeof(float) * na);
    float *score_full = malloc(sizeof(float) * nc), *score = malloc(sizeof(float) * nc);
    assert_true(cls && aux && score_full && score);
    assert_int_equal(tl_forward(x, b->images, BATCH, 0, NULL, 0), 0);
    memcpy(cls, tl_logits_cls(x), sizeof(float) * nc);
    memcpy(aux, tl_logits_aux(x), sizeof(float) * na);
    assert_int_equal(tl_predict(x, b->images, BATCH, score_full), 0);
    /* sub-batches: rows [start, start+n) */
    static const int SUB[][2] = {{0, 2}, {3, 1}, {1, 3}, {0, 1}};
    for (size_t k = 0; k < sizeof SUB / sizeof SUB[0]; k++) {
        int start = SUB[k][0], n = SUB[k][1];
        const float *img = b->images + (size_t)start * b->n_img;
        assert_int_equal(tl_forward(x, img, n, 0, NULL, 0), 0);
        double ec = max_rel(tl_logits_cls(x), cls + (size_t)start * K, (size_t)n * K);
        double ea = max_rel(tl_logits_aux(x), aux + (size_t)start * N * K, (size_t)n * N * K);
        if (!(ec <= 1e-5 && ea <= 1e-5))
            fail_msg("eval rows [%d,%d): cls err %.3g, aux err %.3g", start, start + n, ec, ea);
        assert_int_equal(tl_predict(x, img, n, score), 0);
        double es = max_rel(score, score_full + (size_t)start * K, (size_t)n * K);
        if (!(es <= 1e-5)) fail_msg("predict rows [%d,%d): err %.3g", start, start + n, es);
    }
    free(cls);
    free(aux);
    free(score_full);
    free(score);
    (void)m;
}

static void test_eval_smaller_batch(void **state) {
    (void)state;
    tl_model *m = new_model(8);
    batch b = make_batch(14);
    /* move the BN running statistics away from 0/1 with two training forwards */
    tl_ctx *xt = new_ctx(m, BATCH, 1, 2);
    for (int s = 0; s < 2; s++) train_step(xt, m, &b, NULL, b.t_dense, 3);
    check_sub_batches(m, xt, &b);                  /* a training context */
    tl_ctx *xe = new_ctx(m, BATCH, 0, 2);
    check_sub_batches(m, xe, &b);                  /* an inference context */
    /* too large or empty batches are refused */
    assert_int_equal(tl_forward(xe, b.images, BATCH + 1, 0, NULL, 0), -1);
    assert_int_equal(tl_forward(xe, b.images, 0, 0, NULL, 0), -1);
    assert_int_equal(tl_forward(xt, b.images, BATCH + 1, 1, NULL, 0), -1);
    free_batch(&b);
    tl_ctx_free(xe);
    tl_ctx_free(xt);
    tl_model_free(m);
}

/* ------------------------------------------------------------------ (v) */

static void test_refusals(void **state) {
    (void)state;
    tl_model *m = new_model(9);
    batch b = make_batch(15);
    tl_loss_parts lp;
    /* an inference context cannot train, compute a loss, or run backward */
    tl_ctx *xe = new_ctx(m, BATCH, 0, 1);
    assert_int_equal(tl_forward(xe, b.images, BATCH, 1, NULL, 0), -1);
    assert_int_equal(tl_forward(xe, b.images, BATCH, 0, NULL, 0), 0);
    assert_int_equal(tl_loss(xe, b.t_cls, NULL, &LW, &lp), -1);
    assert_int_equal(tl_backward(xe), -1);
    tl_ctx_free(xe);

    tl_ctx *xt = new_ctx(m, BATCH, 1, 1);
    assert_int_equal(tl_backward(xt), -1);                               /* nothing run yet */
    assert_int_equal(tl_forward(xt, b.images, BATCH, 1, NULL, 0), 0);
    assert_int_equal(tl_backward(xt), -1);                               /* forward without a loss */
    assert_int_equal(tl_forward(xt, b.images, BATCH, 0, NULL, 0), 0);
    assert_int_equal(tl_loss(xt, b.t_cls, NULL, &LW, &lp), -1);          /* loss after an eval forward */
    assert_int_equal(tl_backward(xt), -1);
    assert_int_equal(tl_forward(xt, b.images, BATCH, 1, NULL, 0), 0);
    assert_int_equal(tl_loss(xt, b.t_cls, NULL, &LW, &lp), 0);
    tl_model_zero_grad(m);
    assert_int_equal(tl_backward(xt), 0);
    assert_int_equal(tl_backward(xt), -1);                               /* the loss is used up */
    tl_ctx_free(xt);
    free_batch(&b);
    tl_model_free(m);
}

int main(void) {
    if (tl_test_isa_unavailable()) return TL_TEST_SKIP_CODE; /* run once per kernel level: isa_gate.h */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_allocates_nothing),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_loss_decreases),
        cmocka_unit_test(test_eval_smaller_batch),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
