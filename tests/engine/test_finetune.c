/*
 * test_finetune.c: fine-tuning from trained weights (engine/model/finetune.c
 * and what it switches on in model.c, forward.c and backward.c), on small
 * LV-ViTs:
 *
 *  (i)   defaults: every tensor of a new model (trainable or inference) has
 *        lr_scale 1 and frozen 0;
 *  (ii)  tl_model_init_from: KEEP copies every tensor bit for bit and zeroes
 *        gradients, moments and the step; REINIT leaves the trunk bit-identical
 *        and draws heads with std ~0.02, bias 0, deterministic per seed;
 *        MATCH copies the mapped rows exactly and draws the others as REINIT
 *        would; another img_size resamples pos_embed exactly as
 *        tl_model_copy_resized does and keeps the class token's entry;
 *        refusals name the field and both values and leave dst untouched;
 *  (iii) freezing: after AdamW steps with TL_FREEZE_STEM / TL_FREEZE_TRUNK the
 *        frozen tensors (and the stem's BatchNorm statistics and counters)
 *        are bit-identical, the others changed, frozen gradients and moments
 *        zero; the unfrozen gradients equal those of a full backward of the
 *        same forward bit for bit (the skipped parts of backward run after
 *        them and write only frozen gradients; same ops, same data, same
 *        threads); a frozen stem normalises with its running statistics
 *        (checked against the unfused eval-BatchNorm reference stem);
 *  (iv)  layer decay: lr_scale follows timm's rule for depth 2 and 3, decay
 *        0.75; an AdamW step equals a per-tensor reference computed here in
 *        double.
 *
 * Single-threaded apart from the engine's pools.
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
#include "tokenlab/model.h"

#define BATCH 4

static tl_config cfg(int img, int K) {
    tl_config c = {.img_size = img, .patch_size = 8, .embed_dim = 48, .depth = 2, .num_heads = 3, .mlp_ratio = 3.0f,
                   .stem_channels = 16, .skip_lam = 2.0f, .num_classes = K, .drop_path_rate = 0.1f};
    return c;
}

static tl_model *new_model(const tl_config *c, uint64_t seed) {
    char err[TL_ERR_LEN] = "";
    tl_model *m = tl_model_new(c, seed, err, sizeof err);
    if (!m) fail_msg("tl_model_new: %s", err);
    return m;
}

static tl_ctx *new_ctx(tl_model *m, int nthreads) {
    char err[TL_ERR_LEN] = "";
    tl_ctx *x = tl_ctx_new(m, BATCH, 1, nthreads, err, sizeof err);
    if (!x) fail_msg("tl_ctx_new: %s", err);
    return x;
}

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 11;
}
static float unif(uint64_t *s) { return (float)((double)lcg(s) * 0x1.0p-53); }

typedef struct {
    float *images, *t_cls;
} batch;

static batch make_batch(const tl_config *c, uint64_t seed) {
    int K = c->num_classes;
    size_t n = (size_t)BATCH * 3 * c->img_size * c->img_size;
    batch b = {malloc(sizeof(float) * n), calloc((size_t)BATCH * K, sizeof(float))};
    assert_true(b.images && b.t_cls);
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) b.images[i] = 3.0f * unif(&s) - 1.5f;
    for (int i = 0; i < BATCH; i++) b.t_cls[i * K + (i * 2 + 1) % K] = 1.0f;
    return b;
}

static void free_batch(batch *b) {
    free(b->images);
    free(b->t_cls);
}

static const tl_adamw HP = {.lr = 1e-3f, .weight_decay = 0.05f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
static const tl_loss_weights LW = {.cls_weight = 1.0f, .dense_weight = 0.5f};
static const tl_box BOX = {1, 0, 3, 2};

/* forward (train, with the box), loss; no backward */
static void fwd_loss(tl_ctx *x, const batch *b, uint64_t drop_seed) {
    tl_loss_parts lp;
    assert_int_equal(tl_forward(x, b->images, BATCH, 1, &BOX, drop_seed), 0);
    assert_int_equal(tl_loss(x, b->t_cls, NULL, &LW, &lp), 0);
}

static void train_step(tl_ctx *x, tl_model *m, const batch *b, uint64_t drop_seed) {
    tl_model_zero_grad(m);
    fwd_loss(x, b, drop_seed);
    assert_int_equal(tl_backward(x), 0);
    tl_ctx_adamw_step(x, &HP);
}

static const tl_tensor *T(const tl_model *m, const char *name) {
    const tl_tensor *t = tl_model_find(m, name);
    if (!t) fail_msg("no tensor %s", name);
    return t;
}

static int is_head(const char *n) { return strncmp(n, "head.", 5) == 0 || strncmp(n, "aux_head.", 9) == 0; }
static int all_zero(const float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0.0f) return 0;
    return 1;
}

/* A model with non-trivial everything: trained a few steps (BN statistics, counters, moments, step). */
static tl_model *trained_model(const tl_config *c, uint64_t seed, int steps) {
    tl_model *m = new_model(c, seed);
    tl_ctx *x = new_ctx(m, 1);
    batch b = make_batch(c, seed + 100);
    for (int s = 0; s < steps; s++) train_step(x, m, &b, (uint64_t)s);
    free_batch(&b);
    tl_ctx_free(x);
    return m;
}

/* The whole parameter block (weights and buffers), for "unchanged" checks. */
static float *snapshot(const tl_model *m) {
    float *s = malloc(sizeof(float) * m->nfloats * (size_t)m->nblocks);
    assert_non_null(s);
    memcpy(s, m->mem, sizeof(float) * m->nfloats * (size_t)m->nblocks);
    return s;
}

/* ------------------------------------------------------------------ (i) */

static void test_defaults(void **state) {
    (void)state;
    tl_config c = cfg(32, 5);
    char err[TL_ERR_LEN];
    tl_model *m = new_model(&c, 1), *inf = tl_model_new_inference(&c, err, sizeof err);
    assert_non_null(inf);
    tl_model *ms[2] = {m, inf};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(tl_model_freeze(ms[k]), TL_FREEZE_NONE);
        for (int i = 0; i < tl_model_num_tensors(ms[k]); i++) {
            const tl_tensor *t = tl_model_tensor(ms[k], i);
            if (t->lr_scale != 1.0f || t->frozen != 0)
                fail_msg("%s: lr_scale %g frozen %d in a new model", t->name, (double)t->lr_scale, t->frozen);
        }
    }
    tl_model_free(m);
    tl_model_free(inf);
}

/* ------------------------------------------------------------------ (ii) */

static void test_init_keep(void **state) {
    (void)state;
    tl_config c = cfg(32, 5);
    tl_model *src = trained_model(&c, 1, 2), *dst = trained_model(&c, 2, 1);
    char err[TL_ERR_LEN] = "";
    tl_init_report rep;
    memset(&rep, 0xff, sizeof rep);
    assert_int_equal(tl_model_init_from(dst, src, TL_HEAD_KEEP, NULL, 7, &rep, err, sizeof err), 0);
    for (int i = 0; i < tl_model_num_tensors(dst); i++) {
        const tl_tensor *td = tl_model_tensor(dst, i), *ts = tl_model_tensor(src, i);
        assert_string_equal(td->name, ts->name);
        if (memcmp(td->data, ts->data, sizeof(float) * td->numel) != 0) fail_msg("%s not copied bit for bit", td->name);
        if (td->grad && (!all_zero(td->grad, td->numel) || !all_zero(td->m, td->numel) || !all_zero(td->v, td->numel)))
            fail_msg("%s: gradient or moments not zeroed", td->name);
    }
    for (int l = 0; l < 3; l++) assert_int_equal(*tl_model_bn_batches(dst, l), *tl_model_bn_batches(src, l));
    assert_int_equal(*tl_model_bn_batches(dst, 0), 2);
    assert_int_equal(tl_model_step(dst), 0);
    assert_int_equal(rep.pos_resized, 0);
    assert_int_equal(rep.src_grid, 4);
    assert_int_equal(rep.dst_grid, 4);
    assert_int_equal(rep.head_rows_kept, 5);
    assert_int_equal(rep.head_rows_new, 0);

    /* from an inference model holding the same weights: the same result; rep may be NULL */
    char e2[TL_ERR_LEN];
    tl_model *inf = tl_model_new_inference(&c, e2, sizeof e2), *dst2 = new_model(&c, 3);
    assert_non_null(inf);
    assert_int_equal(tl_model_copy_weights(inf, src), 0);
    assert_int_equal(tl_model_init_from(dst2, inf, TL_HEAD_KEEP, NULL, 7, NULL, err, sizeof err), 0);
    assert_memory_equal(dst2->mem, dst->mem, sizeof(float) * dst->nfloats);
    tl_model_free(inf);
    tl_model_free(dst2);
    tl_model_free(src);
    tl_model_free(dst);
}

static void head_stats(const tl_tensor *t, double *mean, double *sd) {
    double s = 0, ss = 0;
    for (size_t i = 0; i < t->numel; i++) s += t->data[i];
    *mean = s / (double)t->numel;
    for (size_t i = 0; i < t->numel; i++) ss += (t->data[i] - *mean) * (t->data[i] - *mean);
    *sd = sqrt(ss / (double)(t->numel - 1));
}

static void test_init_reinit(void **state) {
    (void)state;
    tl_config cs = cfg(32, 5), cd = cfg(32, 60);
    cd.drop_path_rate = 0.3f; /* may differ */
    tl_model *src = trained_model(&cs, 1, 1), *a = new_model(&cd, 2), *b = new_model(&cd, 3), *o = new_model(&cd, 4);
    char err[TL_ERR_LEN] = "";
    tl_init_report rep;
    assert_int_equal(tl_model_init_from(a, src, TL_HEAD_REINIT, NULL, 11, &rep, err, sizeof err), 0);
    assert_int_equal(rep.head_rows_kept, 0);
    assert_int_equal(rep.head_rows_new, 60);
    assert_int_equal(tl_model_init_from(b, src, TL_HEAD_REINIT, NULL, 11, NULL, err, sizeof err), 0);
    assert_int_equal(tl_model_init_from(o, src, TL_HEAD_REINIT, NULL, 12, NULL, err, sizeof err), 0);
    for (int i = 0; i < tl_model_num_tensors(a); i++) {
        const tl_tensor *ta = tl_model_tensor(a, i), *ts = tl_model_tensor(src, i);
        if (is_head(ta->name)) continue;
        if (memcmp(ta->data, ts->data, sizeof(float) * ta->numel) != 0) fail_msg("%s changed by REINIT", ta->name);
    }
    /* same seed, same heads (whatever dst held before); another seed, other heads */
    assert_memory_equal(a->mem, b->mem, sizeof(float) * a->nfloats);
    assert_memory_not_equal(T(a, "head.weight")->data, T(o, "head.weight")->data, sizeof(float) * 60 * 48);
    const char *weights[2] = {"head.weight", "aux_head.weight"}, *biases[2] = {"head.bias", "aux_head.bias"};
    for (int h = 0; h < 2; h++) {
        const tl_tensor *w = T(a, weights[h]), *bias = T(a, biases[h]);
        double mean, sd;
        head_stats(w, &mean, &sd);
        /* 2880 draws: the sample std is within 3% of 0.02 with overwhelming probability */
        if (fabs(sd - 0.02) > 0.0006 || fabs(mean) > 0.0015)
            fail_msg("%s: mean %g std %g, want 0 and 0.02", weights[h], mean, sd);
        assert_true(all_zero(bias->data, bias->numel));
    }
    /* the two heads are independent draws */
    assert_memory_not_equal(T(a, "head.weight")->data, T(a, "aux_head.weight")->data, sizeof(float) * 60 * 48);
    tl_model_free(src);
    tl_model_free(a);
    tl_model_free(b);
    tl_model_free(o);
}

static void test_init_match(void **state) {
    (void)state;
    tl_config cs = cfg(32, 5), cd = cfg(32, 4);
    tl_model *src = trained_model(&cs, 1, 1), *dst = new_model(&cd, 2), *ref = new_model(&cd, 3);
    const int map[4] = {3, -1, 0, 3};
    char err[TL_ERR_LEN] = "";
    tl_init_report rep;
    assert_int_equal(tl_model_init_from(dst, src, TL_HEAD_MATCH, map, 5, &rep, err, sizeof err), 0);
    assert_int_equal(rep.head_rows_kept, 3);
    assert_int_equal(rep.head_rows_new, 1);
    assert_int_equal(tl_model_init_from(ref, src, TL_HEAD_REINIT, NULL, 5, NULL, err, sizeof err), 0);
    const char *names[4] = {"head.weight", "head.bias", "aux_head.weight", "aux_head.bias"};
    for (int h = 0; h < 4; h++) {
        const tl_tensor *td = T(dst, names[h]), *ts = T(src, names[h]), *tr = T(ref, names[h]);
        size_t row = td->ndim == 2 ? (size_t)td->shape[1] : 1;
        for (int k = 0; k < 4; k++) {
            const float *want = map[k] >= 0 ? ts->data + (size_t)map[k] * row : tr->data + (size_t)k * row;
            if (memcmp(td->data + (size_t)k * row, want, sizeof(float) * row) != 0)
                fail_msg("%s row %d: not %s", names[h], k, map[k] >= 0 ? "the source's row" : "REINIT's row");
        }
    }
    /* the unmatched rows are fresh, not the old contents of dst */
    assert_true(all_zero(T(dst, "head.bias")->data + 1, 1));
    for (int i = 0; i < tl_model_num_tensors(dst); i++) {
        const tl_tensor *td = tl_model_tensor(dst, i), *ts = tl_model_tensor(src, i);
        if (!is_head(td->name) && memcmp(td->data, ts->data, sizeof(float) * td->numel) != 0)
            fail_msg("%s not copied", td->name);
    }
    tl_model_free(src);
    tl_model_free(dst);
    tl_model_free(ref);
}

static void test_init_resize(void **state) {
    (void)state;
    tl_config cs = cfg(32, 5), cd = cfg(48, 5);
    tl_model *src = trained_model(&cs, 1, 1), *dst = new_model(&cd, 2), *ref = new_model(&cd, 3);
    char err[TL_ERR_LEN] = "";
    tl_init_report rep;
    assert_int_equal(tl_model_init_from(dst, src, TL_HEAD_KEEP, NULL, 1, &rep, err, sizeof err), 0);
    assert_int_equal(rep.pos_resized, 1);
    assert_int_equal(rep.src_grid, 4);
    assert_int_equal(rep.dst_grid, 6);
    assert_int_equal(tl_model_copy_resized(ref, src, err, sizeof err), 0);
    const tl_tensor *pd = T(dst, "pos_embed"), *pr = T(ref, "pos_embed"), *ps = T(src, "pos_embed");
    assert_int_equal(pd->numel, (size_t)37 * 48);
    assert_memory_equal(pd->data, pr->data, sizeof(float) * pd->numel);
    assert_memory_equal(pd->data, ps->data, sizeof(float) * 48); /* the class token's entry */
    assert_memory_equal(dst->mem, ref->mem, sizeof(float) * dst->nfloats); /* everything else too */
    /* downsampling back works as well (and is the resize path's too) */
    tl_model *back = new_model(&cs, 4), *back_ref = new_model(&cs, 5);
    assert_int_equal(tl_model_init_from(back, dst, TL_HEAD_KEEP, NULL, 1, &rep, err, sizeof err), 0);
    assert_int_equal(tl_model_copy_resized(back_ref, dst, err, sizeof err), 0);
    assert_memory_equal(back->mem, back_ref->mem, sizeof(float) * back->nfloats);
    tl_model_free(back);
    tl_model_free(back_ref);
    tl_model_free(src);
    tl_model_free(dst);
    tl_model_free(ref);
}

/* init_from refused: -1, the message holds every piece of want[], dst unchanged */
static void refused(tl_model *dst, const tl_model *src, tl_head_mode h, const int *map, const char *const *want) {
    float *before = snapshot(dst);
    char err[TL_ERR_LEN] = "";
    assert_int_equal(tl_model_init_from(dst, src, h, map, 1, NULL, err, sizeof err), -1);
    for (int i = 0; want[i]; i++)
        if (!strstr(err, want[i])) fail_msg("message \"%s\" lacks \"%s\"", err, want[i]);
    assert_memory_equal(before, dst->mem, sizeof(float) * dst->nfloats * (size_t)dst->nblocks);
    free(before);
}

static void test_init_refusals(void **state) {
    (void)state;
    tl_config base = cfg(32, 5);
    tl_model *dst = trained_model(&base, 1, 1);
    struct {
        const char *field, *src_val, *dst_val;
        tl_config c;
    } cases[7];
    for (int i = 0; i < 7; i++) cases[i].c = base;
    cases[0].field = "embed_dim", cases[0].c.embed_dim = 96, cases[0].src_val = "96", cases[0].dst_val = "48";
    cases[1].field = "depth", cases[1].c.depth = 3, cases[1].src_val = "3", cases[1].dst_val = "2";
    cases[2].field = "num_heads", cases[2].c.num_heads = 4, cases[2].src_val = "4", cases[2].dst_val = "3";
    cases[3].field = "patch_size", cases[3].c.patch_size = 4, cases[3].src_val = "4", cases[3].dst_val = "8";
    cases[4].field = "stem_channels", cases[4].c.stem_channels = 8, cases[4].src_val = "8", cases[4].dst_val = "16";
    cases[5].field = "mlp_ratio", cases[5].c.mlp_ratio = 4.0f, cases[5].src_val = "4", cases[5].dst_val = "3";
    cases[6].field = "skip_lam", cases[6].c.skip_lam = 1.0f, cases[6].src_val = "1", cases[6].dst_val = "2";
    for (int i = 0; i < 7; i++) {
        tl_model *src = new_model(&cases[i].c, 9);
        char a[64], b[64];
        snprintf(a, sizeof a, "%s: %s in the source", cases[i].field, cases[i].src_val);
        snprintf(b, sizeof b, "%s here", cases[i].dst_val);
        const char *want[] = {a, b, NULL};
        refused(dst, src, TL_HEAD_REINIT, NULL, want);
        tl_model_free(src);
    }
    /* KEEP with another class count; MATCH without a map or with a class out of range; unknown mode */
    tl_config c7 = cfg(32, 7);
    tl_model *src7 = new_model(&c7, 9), *src5 = new_model(&base, 9);
    const char *keep[] = {"num_classes: 7 in the source, 5 here", NULL};
    refused(dst, src7, TL_HEAD_KEEP, NULL, keep);
    const char *nomap[] = {"class map", NULL};
    refused(dst, src7, TL_HEAD_MATCH, NULL, nomap);
    const int bad_hi[5] = {0, 1, -1, 7, 2}, bad_lo[5] = {0, -2, 0, 0, 0};
    const char *hi[] = {"class_map[3] is 7", "0..6", NULL}, *lo[] = {"class_map[1] is -2", NULL};
    refused(dst, src7, TL_HEAD_MATCH, bad_hi, hi);
    refused(dst, src7, TL_HEAD_MATCH, bad_lo, lo);
    const char *mode[] = {"head mode", NULL};
    refused(dst, src5, (tl_head_mode)9, NULL, mode);
    /* an inference model is no destination */
    char err[TL_ERR_LEN];
    tl_model *inf = tl_model_new_inference(&base, err, sizeof err);
    assert_int_equal(tl_model_init_from(inf, src5, TL_HEAD_KEEP, NULL, 1, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "trainable"));
    tl_model_free(inf);
    tl_model_free(src7);
    tl_model_free(src5);
    tl_model_free(dst);
}

/* ------------------------------------------------------------------ (iii) */

static int expect_frozen(const char *name, tl_freeze f) {
    if (f == TL_FREEZE_TRUNK) return !is_head(name);
    if (f == TL_FREEZE_STEM) return strncmp(name, "patch_embed.", 12) == 0;
    return 0;
}

static void test_freeze_api(void **state) {
    (void)state;
    tl_config c = cfg(32, 5);
    tl_model *m = new_model(&c, 1);
    char err[TL_ERR_LEN] = "";
    tl_freeze modes[4] = {TL_FREEZE_STEM, TL_FREEZE_TRUNK, TL_FREEZE_NONE, TL_FREEZE_TRUNK};
    for (int k = 0; k < 4; k++) {
        assert_int_equal(tl_model_set_freeze(m, modes[k], err, sizeof err), 0);
        assert_int_equal(tl_model_freeze(m), modes[k]);
        for (int i = 0; i < tl_model_num_tensors(m); i++) {
            const tl_tensor *t = tl_model_tensor(m, i);
            if (t->frozen != expect_frozen(t->name, modes[k]))
                fail_msg("freeze %d: %s frozen %d", (int)modes[k], t->name, t->frozen);
        }
    }
    assert_int_equal(tl_model_set_freeze(m, (tl_freeze)3, err, sizeof err), -1);
    assert_non_null(strstr(err, "unknown"));
    assert_int_equal(tl_model_freeze(m), TL_FREEZE_TRUNK); /* unchanged by the refusal */
    tl_model *inf = tl_model_new_inference(&c, err, sizeof err);
    assert_int_equal(tl_model_set_freeze(inf, TL_FREEZE_STEM, err, sizeof err), -1);
    assert_non_null(strstr(err, "inference"));
    tl_model_free(inf);
    tl_model_free(m);
}

static void check_frozen_steps(tl_freeze f) {
    tl_config c = cfg(32, 5);
    tl_model *m = trained_model(&c, 1, 1); /* BN statistics away from their init */
    tl_model_set_step(m, 0);
    memset(m->mem + 2 * m->nfloats, 0, sizeof(float) * 2 * m->nfloats); /* moments zero: "untouched" is visible */
    char err[TL_ERR_LEN] = "";
    assert_int_equal(tl_model_set_freeze(m, f, err, sizeof err), 0);
    int64_t bn_before[3];
    for (int l = 0; l < 3; l++) bn_before[l] = *tl_model_bn_batches(m, l);
    float *before = snapshot(m);
    tl_ctx *x = new_ctx(m, 2);
    batch b = make_batch(&c, 5);
    for (int s = 0; s < 3; s++) train_step(x, m, &b, (uint64_t)(10 + s));
    /* the last step's gradients are still there (train_step zeroes before, not after) */
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        int same = memcmp(t->data, before + t->offset, sizeof(float) * t->numel) == 0;
        if (t->frozen) {
            if (!same) fail_msg("freeze %d: frozen %s changed", (int)f, t->name);
            if (t->grad && (!all_zero(t->grad, t->numel) || !all_zero(t->m, t->numel) || !all_zero(t->v, t->numel)))
                fail_msg("freeze %d: frozen %s has a gradient or moments", (int)f, t->name);
        } else if (same) {
            fail_msg("freeze %d: trainable %s did not change", (int)f, t->name);
        }
    }
    for (int l = 0; l < 3; l++) assert_int_equal(*tl_model_bn_batches(m, l), bn_before[l]);
    assert_int_equal(tl_model_step(m), 3);
    free(before);
    free_batch(&b);
    tl_ctx_free(x);
    tl_model_free(m);
}

static void test_freeze_steps(void **state) {
    (void)state;
    check_frozen_steps(TL_FREEZE_STEM);
    check_frozen_steps(TL_FREEZE_TRUNK);
}

/* Gradients of a frozen backward against the full backward of the same forward (forced through the context's
 * fwd_freeze, model_internal.h): two models from the same seed, the same batch, box and drop seed. */
static void test_freeze_grads_match_full(void **state) {
    (void)state;
    tl_config c = cfg(32, 5);
    batch b = make_batch(&c, 7);
    float *grads[2] = {NULL, NULL}; /* [0] frozen stem, [1] frozen trunk */
    for (int k = 0; k < 2; k++) {
        tl_freeze f = k ? TL_FREEZE_TRUNK : TL_FREEZE_STEM;
        tl_model *a = new_model(&c, 3), *r = new_model(&c, 3);
        char err[TL_ERR_LEN] = "";
        assert_int_equal(tl_model_set_freeze(a, f, err, sizeof err), 0);
        assert_int_equal(tl_model_set_freeze(r, f, err, sizeof err), 0);
        tl_ctx *xa = new_ctx(a, 2), *xr = new_ctx(r, 2);
        tl_model_zero_grad(a);
        tl_model_zero_grad(r);
        fwd_loss(xa, &b, 5);
        fwd_loss(xr, &b, 5);
        assert_int_equal(xr->fwd_freeze, f);
        xr->fwd_freeze = TL_FREEZE_NONE; /* the reference: backward through everything */
        assert_int_equal(tl_backward(xa), 0);
        assert_int_equal(tl_backward(xr), 0);
        int nonzero = 0;
        for (int i = 0; i < tl_model_num_tensors(a); i++) {
            const tl_tensor *ta = tl_model_tensor(a, i), *tr = tl_model_tensor(r, i);
            if (!ta->grad) continue;
            if (ta->frozen) {
                if (!all_zero(ta->grad, ta->numel)) fail_msg("freeze %d: frozen %s has a gradient", (int)f, ta->name);
                if (!all_zero(tr->grad, tr->numel)) nonzero++; /* the reference did compute something there */
                continue;
            }
            if (memcmp(ta->grad, tr->grad, sizeof(float) * ta->numel) != 0)
                fail_msg("freeze %d: %s's gradient differs from the full backward's", (int)f, ta->name);
            if (all_zero(ta->grad, ta->numel)) fail_msg("freeze %d: %s has no gradient", (int)f, ta->name);
        }
        assert_true(nonzero > 0);
        grads[k] = malloc(sizeof(float) * a->nfloats);
        memcpy(grads[k], a->mem + a->nfloats, sizeof(float) * a->nfloats);
        tl_ctx_free(xa);
        tl_ctx_free(xr);
        tl_model_free(a);
        tl_model_free(r);
    }
    /* Both freezes run the same forward: the heads' gradients agree, without any seam. */
    tl_model *m = new_model(&c, 3);
    const char *heads[4] = {"head.weight", "head.bias", "aux_head.weight", "aux_head.bias"};
    for (int h = 0; h < 4; h++) {
        const tl_tensor *t = T(m, heads[h]);
        assert_memory_equal(grads[0] + t->offset, grads[1] + t->offset, sizeof(float) * t->numel);
    }
    tl_model_free(m);
    free(grads[0]);
    free(grads[1]);
    free_batch(&b);
}

/* A frozen stem's training forward normalises with the running statistics: its logits equal those of the
 * unfused reference stem with eval BatchNorm (eval_reference), up to float rounding of the fused stem, and
 * differ from the batch-statistics forward. No drop path, no box: the rest of the forward is the same. */
static void test_frozen_stem_uses_running_stats(void **state) {
    (void)state;
    tl_config c = cfg(32, 5);
    c.drop_path_rate = 0.0f;
    tl_model *src = trained_model(&c, 1, 2); /* running statistics away from (0, 1) */
    tl_model *m = new_model(&c, 2);
    char err[TL_ERR_LEN] = "";
    assert_int_equal(tl_model_init_from(m, src, TL_HEAD_KEEP, NULL, 1, NULL, err, sizeof err), 0);
    tl_ctx *x = new_ctx(m, 2);
    batch b = make_batch(&c, 9);
    size_t n = (size_t)BATCH * c.num_classes;
    float *live = malloc(sizeof(float) * n), *frozen = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
    assert_int_equal(tl_forward(x, b.images, BATCH, 1, NULL, 0), 0);
    memcpy(live, tl_logits_cls(x), sizeof(float) * n);
    assert_int_equal(tl_model_init_from(m, src, TL_HEAD_KEEP, NULL, 1, NULL, err, sizeof err), 0); /* undo BN update */
    assert_int_equal(tl_model_set_freeze(m, TL_FREEZE_STEM, err, sizeof err), 0);
    assert_int_equal(tl_forward(x, b.images, BATCH, 1, NULL, 0), 0);
    memcpy(frozen, tl_logits_cls(x), sizeof(float) * n);
    x->eval_reference = 1;
    assert_int_equal(tl_forward(x, b.images, BATCH, 1, NULL, 0), 0);
    memcpy(ref, tl_logits_cls(x), sizeof(float) * n);
    double num = 0, den = 0, dlive = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)frozen[i] - ref[i]));
        dlive = fmax(dlive, fabs((double)live[i] - ref[i]));
        den = fmax(den, fabs((double)ref[i]));
    }
    if (num > 1e-5 * den) fail_msg("frozen stem vs eval-BatchNorm reference: max diff %g (scale %g)", num, den);
    if (dlive < 1e-3 * den) fail_msg("batch statistics gave the same logits (%g): the test cannot tell", dlive);
    /* and neither forward touched the statistics */
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind == TL_TENSOR_BUFFER)
            assert_memory_equal(t->data, T(src, t->name)->data, sizeof(float) * t->numel);
    }
    free(live);
    free(frozen);
    free(ref);
    free_batch(&b);
    tl_ctx_free(x);
    tl_model_free(m);
    tl_model_free(src);
}

/* ------------------------------------------------------------------ (iv) */

/* timm's rule written out independently of finetune.c: num_layers = depth + 2; layer 0 for the patch
 * embedding, class token and position embedding, i + 1 for blocks.i, depth + 1 for the rest; scale =
 * decay^(num_layers - 1 - layer). */
static double timm_scale(const char *name, int depth, double decay) {
    int layer;
    if (strncmp(name, "blocks.", 7) == 0)
        layer = atoi(name + 7) + 1;
    else if (strncmp(name, "patch_embed.", 12) == 0 || !strcmp(name, "cls_token") || !strcmp(name, "pos_embed"))
        layer = 0;
    else
        layer = depth + 1;
    return pow(decay, depth + 1 - layer);
}

static void test_layer_decay_scales(void **state) {
    (void)state;
    for (int depth = 2; depth <= 3; depth++) {
        tl_config c = cfg(32, 5);
        c.depth = depth;
        tl_model *m = new_model(&c, 1);
        char err[TL_ERR_LEN] = "";
        assert_int_equal(tl_model_set_layer_decay(m, 0.75f, err, sizeof err), 0);
        for (int i = 0; i < tl_model_num_tensors(m); i++) {
            const tl_tensor *t = tl_model_tensor(m, i);
            float want = (float)timm_scale(t->name, depth, 0.75);
            if (t->lr_scale != want) fail_msg("depth %d: %s lr_scale %.9g, want %.9g", depth, t->name, (double)t->lr_scale, (double)want);
        }
        /* a few by hand */
        assert_true(T(m, "head.weight")->lr_scale == 1.0f && T(m, "norm.bias")->lr_scale == 1.0f);
        assert_true(T(m, "blocks.0.attn.qkv.weight")->lr_scale == (depth == 2 ? 0.5625f : 0.421875f));
        assert_true(T(m, "cls_token")->lr_scale == (depth == 2 ? 0.421875f : 0.31640625f));
        assert_true(T(m, "patch_embed.bn2.running_var")->lr_scale == T(m, "pos_embed")->lr_scale);
        /* 1 turns it off; refusals leave the scales alone */
        const float bad[4] = {0.0f, -0.5f, 1.5f, NAN};
        for (int k = 0; k < 4; k++) {
            assert_int_equal(tl_model_set_layer_decay(m, bad[k], err, sizeof err), -1);
            assert_non_null(strstr(err, "layer_decay"));
        }
        assert_true(T(m, "cls_token")->lr_scale < 1.0f);
        assert_int_equal(tl_model_set_layer_decay(m, 1.0f, err, sizeof err), 0);
        for (int i = 0; i < tl_model_num_tensors(m); i++) assert_true(tl_model_tensor(m, i)->lr_scale == 1.0f);
        tl_model_free(m);
    }
}

/* Two AdamW steps with layer decay 0.75 and a frozen stem against PyTorch's AdamW formula per tensor in double:
 * lr_t = lr * scale; p = p (1 - lr_t wd_t); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr_t / bc1 * m / (sqrt(v) / sqrt(bc2) + eps). */
static void test_layer_decay_adamw_reference(void **state) {
    (void)state;
    tl_config c = cfg(32, 5);
    tl_model *m = new_model(&c, 1);
    char err[TL_ERR_LEN] = "";
    assert_int_equal(tl_model_set_layer_decay(m, 0.75f, err, sizeof err), 0);
    assert_int_equal(tl_model_set_freeze(m, TL_FREEZE_STEM, err, sizeof err), 0);
    const tl_adamw hp = {.lr = 1e-2f, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f};
    size_t nf = m->nfloats;
    double *p = malloc(sizeof(double) * nf), *mm = calloc(nf, sizeof(double)), *vv = calloc(nf, sizeof(double));
    assert_true(p && mm && vv);
    for (size_t i = 0; i < nf; i++) p[i] = m->mem[i];
    uint64_t s = 77;
    for (int step = 1; step <= 2; step++) {
        /* gradients, written straight into the gradient block (frozen ones too: AdamW must ignore them) */
        for (int i = 0; i < tl_model_num_tensors(m); i++) {
            const tl_tensor *t = tl_model_tensor(m, i);
            if (t->grad)
                for (size_t e = 0; e < t->numel; e++) t->grad[e] = 0.2f * unif(&s) - 0.1f;
        }
        tl_adamw_step(m, &hp, 2);
        double bc1 = 1.0 - pow(0.9, step), bc2 = 1.0 - pow(0.99, step);
        for (int i = 0; i < tl_model_num_tensors(m); i++) {
            const tl_tensor *t = tl_model_tensor(m, i);
            if (t->kind != TL_TENSOR_PARAM || t->frozen) continue;
            double lr = (double)hp.lr * t->lr_scale, wd = t->decay ? hp.weight_decay : 0.0;
            for (size_t e = 0; e < t->numel; e++) {
                size_t o = t->offset + e;
                double g = t->grad[e];
                mm[o] = 0.9 * mm[o] + 0.1 * g;
                vv[o] = 0.99 * vv[o] + 0.01 * g * g;
                p[o] = p[o] * (1.0 - lr * wd) - lr / bc1 * mm[o] / (sqrt(vv[o]) / sqrt(bc2) + 1e-8);
            }
        }
        for (int i = 0; i < tl_model_num_tensors(m); i++) {
            const tl_tensor *t = tl_model_tensor(m, i);
            for (size_t e = 0; e < t->numel; e++) {
                double want = p[t->offset + e], got = t->data[e];
                /* float arithmetic against double: a few ulps of the terms (the parameter and a step of about
                 * lr_t), so a near-cancellation does not count */
                double lr_t = (double)hp.lr * t->lr_scale;
                if (fabs(got - want) > 2e-6 * (fabs(want) + lr_t))
                    fail_msg("step %d: %s[%zu] = %.9g, reference %.9g (lr_scale %g, frozen %d)", step, t->name, e, got,
                             want, (double)t->lr_scale, t->frozen);
            }
            if (t->frozen && t->m && (!all_zero(t->m, t->numel) || !all_zero(t->v, t->numel)))
                fail_msg("frozen %s: moments touched", t->name);
        }
    }
    free(p);
    free(mm);
    free(vv);
    tl_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_init_keep),
        cmocka_unit_test(test_init_reinit),
        cmocka_unit_test(test_init_match),
        cmocka_unit_test(test_init_resize),
        cmocka_unit_test(test_init_refusals),
        cmocka_unit_test(test_freeze_api),
        cmocka_unit_test(test_freeze_steps),
        cmocka_unit_test(test_freeze_grads_match_full),
        cmocka_unit_test(test_frozen_stem_uses_running_stats),
        cmocka_unit_test(test_layer_decay_scales),
        cmocka_unit_test(test_layer_decay_adamw_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
