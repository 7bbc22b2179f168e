/*
 * test_checkpoint.c: tl_checkpoint_save / _load / _config (engine/model/checkpoint.c).
 *
 * A tiny LV-ViT is saved and loaded into a model built from another seed
 * (bit-identical tensors and BN counters), with and without the optimizer
 * state. Refused files (missing, extra, misshaped, mistyped tensors, a
 * truncated file) are made by rewriting a saved checkpoint with the
 * safetensors writer, and every refusal must leave the model untouched.
 * The config is read back from metadata and inferred from a plain
 * state_dict of lvvit_t's width and depth.
 *
 * Files go to $TL_TEST_TMP (set by ctest), else /tmp. Single-threaded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tokenlab/safetensors.h"
#include "tokenlab/model.h"

/* ------------------------------------------------------------------ helpers */

static void tmp_path(char *buf, size_t n, const char *name) {
    const char *dir = getenv("TL_TEST_TMP");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(buf, n, "%s/test_ckpt_%ld_%s", dir, (long)getpid(), name);
}

static tl_config tiny_config(int num_classes) {
    tl_config c = {.img_size = 32, .patch_size = 8, .embed_dim = 24, .depth = 2, .num_heads = 2, .mlp_ratio = 2.0f,
                   .stem_channels = 8, .skip_lam = 1.0f, .num_classes = num_classes, .drop_path_rate = 0.1f};
    return c;
}

static tl_model *new_model(const tl_config *c, uint64_t seed) {
    char err[TL_ERR_LEN] = "";
    tl_model *m = tl_model_new(c, seed, err, sizeof err);
    if (!m) fail_msg("tl_model_new: %s", err);
    return m;
}

static void save(const tl_model *m, const char *path, int flags, const tl_train_state *st) {
    char err[TL_ERR_LEN] = "";
    static const char *const extra[] = {"run", "abc", "note", "x=1", NULL};
    if (tl_checkpoint_save(m, NULL, path, flags, st, extra, err, sizeof err) != 0) fail_msg("save: %s", err);
}

/* Parameters, buffers and moments of m, plus the BN counters and the step. */
typedef struct {
    float *data, *mom;
    size_t n;
    int64_t bn[3], step;
} snapshot;

static snapshot take(tl_model *m) {
    snapshot s = {0};
    for (int i = 0; i < tl_model_num_tensors(m); i++) s.n += tl_model_tensor(m, i)->numel;
    s.data = malloc(sizeof(float) * s.n);
    s.mom = calloc(2 * s.n, sizeof(float));
    assert_true(s.data && s.mom);
    size_t at = 0;
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        memcpy(s.data + at, t->data, sizeof(float) * t->numel);
        if (t->m) memcpy(s.mom + at, t->m, sizeof(float) * t->numel);
        if (t->v) memcpy(s.mom + s.n + at, t->v, sizeof(float) * t->numel);
        at += t->numel;
    }
    for (int l = 0; l < 3; l++) s.bn[l] = *tl_model_bn_batches(m, l);
    s.step = tl_model_step(m);
    return s;
}

static void assert_same(const snapshot *a, const snapshot *b) {
    assert_int_equal(a->n, b->n);
    assert_memory_equal(a->data, b->data, sizeof(float) * a->n);
    assert_memory_equal(a->mom, b->mom, sizeof(float) * 2 * a->n);
    assert_memory_equal(a->bn, b->bn, sizeof a->bn);
    assert_true(a->step == b->step);
}

static void drop(snapshot *s) {
    free(s->data);
    free(s->mom);
}

/* Loading path into m fails with a message containing want, and m is unchanged. */
static void expect_refused(tl_model *m, const char *path, int flags, const char *want) {
    snapshot before = take(m);
    tl_train_state st = {.step = -5, .epoch = -6, .rng_state = {7, 8, 9, 10}};
    char err[TL_ERR_LEN] = "";
    assert_int_equal(tl_checkpoint_load(m, NULL, path, flags, &st, err, sizeof err), -1);
    if (!strstr(err, want)) fail_msg("message \"%s\" does not contain \"%s\"", err, want);
    snapshot after = take(m);
    assert_same(&before, &after);
    assert_true(st.step == -5 && st.epoch == -6 && st.rng_state[0] == 7);
    drop(&before);
    drop(&after);
}

typedef struct {
    const char *skip;       /* leave out this tensor */
    const char *as_i32;     /* rewrite this float tensor as I32 */
    const char *as_f64;     /* rewrite this float tensor as F64 */
    const char *extra;      /* add an F32 [1] tensor of this name */
    int drop_meta;          /* leave out the metadata */
} rewrite_opts;

/* Copies the checkpoint src to dst through the tl_st writer, changed by o. */
static void rewrite(const char *src, const char *dst, const rewrite_opts *o) {
    char err[512] = "";
    tl_st_file *f = tl_st_open(src, err, sizeof err);
    if (!f) fail_msg("open %s: %s", src, err);
    tl_st_writer *w = tl_st_writer_new();
    void *conv = NULL;
    static const float one = 1.0f;
    for (int i = 0; i < tl_st_count(f); i++) {
        const tl_st_tensor *t = tl_st_at(f, i);
        if (o->skip && strcmp(t->name, o->skip) == 0) continue;
        const void *data = t->data;
        tl_st_dtype dt = t->dtype;
        int to_i32 = o->as_i32 && !strcmp(t->name, o->as_i32), to_f64 = o->as_f64 && !strcmp(t->name, o->as_f64);
        if (to_i32 || to_f64) {
            float *tmp = malloc(sizeof(float) * (t->numel + 1));
            conv = malloc(8 * (t->numel + 1));
            assert_true(tmp && conv);
            assert_int_equal(tl_st_read_f32(t, tmp), 0);
            for (size_t k = 0; k < t->numel; k++) {
                if (to_i32) ((int32_t *)conv)[k] = (int32_t)(tmp[k] * 1000.0f);
                else ((double *)conv)[k] = (double)tmp[k];
            }
            free(tmp);
            data = conv;
            dt = to_i32 ? TL_ST_I32 : TL_ST_F64;
        }
        assert_int_equal(tl_st_add(w, t->name, dt, t->ndim, t->shape, data), 0);
    }
    if (o->extra) {
        const int64_t s1[1] = {1};
        assert_int_equal(tl_st_add(w, o->extra, TL_ST_F32, 1, s1, &one), 0);
    }
    static const char *const keys[] = {"format", "tokenlab.config", "tokenlab.version", "run", NULL};
    for (int k = 0; !o->drop_meta && keys[k]; k++)
        if (tl_st_meta(f, keys[k])) assert_int_equal(tl_st_set_meta(w, keys[k], tl_st_meta(f, keys[k])), 0);
    if (tl_st_write(w, dst, err, sizeof err) != 0) fail_msg("write %s: %s", dst, err);
    tl_st_writer_free(w);
    free(conv);
    tl_st_close(f);
}

static void set_bn(tl_model *m, int64_t a, int64_t b, int64_t c) {
    *tl_model_bn_batches(m, 0) = a;
    *tl_model_bn_batches(m, 1) = b;
    *tl_model_bn_batches(m, 2) = c;
}

/* Distinct non-zero moments, as after some training. */
static void fill_moments(tl_model *m, float base) {
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind != TL_TENSOR_PARAM) continue;
        for (size_t k = 0; k < t->numel; k++) {
            t->m[k] = base + 0.001f * (float)k - 0.5f * (float)i;
            t->v[k] = base * 0.01f + 1e-6f * (float)(k + (size_t)i);
        }
    }
}

static void assert_config_equal(const tl_config *a, const tl_config *b) {
    assert_int_equal(a->img_size, b->img_size);
    assert_int_equal(a->patch_size, b->patch_size);
    assert_int_equal(a->embed_dim, b->embed_dim);
    assert_int_equal(a->depth, b->depth);
    assert_int_equal(a->num_heads, b->num_heads);
    assert_true(a->mlp_ratio == b->mlp_ratio);
    assert_int_equal(a->stem_channels, b->stem_channels);
    assert_true(a->skip_lam == b->skip_lam);
    assert_int_equal(a->num_classes, b->num_classes);
    assert_true(a->drop_path_rate == b->drop_path_rate);
}

/* ------------------------------------------------------------------ round trips */

static void test_round_trip(void **state) {
    (void)state;
    char path[512], err[TL_ERR_LEN] = "";
    tmp_path(path, sizeof path, "rt.safetensors");
    tl_config c = tiny_config(5);
    tl_model *a = new_model(&c, 1), *b = new_model(&c, 2);
    set_bn(a, 3, 4, 5);
    save(a, path, 0, NULL);

    snapshot sa = take(a), sb = take(b);
    assert_true(memcmp(sa.data, sb.data, sizeof(float) * sa.n) != 0); /* seeds differ */
    drop(&sb);
    assert_int_equal(tl_checkpoint_load(b, NULL, path, 0, NULL, err, sizeof err), 0);
    sb = take(b);
    assert_memory_equal(sa.data, sb.data, sizeof(float) * sa.n);
    assert_memory_equal(sa.bn, sb.bn, sizeof sa.bn);

    /* the file: F32 tensors, I64 scalar counters, metadata, no optimizer state */
    tl_st_file *f = tl_st_open(path, err, sizeof err);
    assert_non_null(f);
    assert_int_equal(tl_st_count(f), tl_model_num_tensors(a) + 3);
    const tl_st_tensor *n1 = tl_st_get(f, "patch_embed.bn1.num_batches_tracked");
    assert_non_null(n1);
    assert_int_equal(n1->dtype, TL_ST_I64);
    assert_int_equal(n1->ndim, 0);
    assert_int_equal(tl_st_get(f, "head.weight")->dtype, TL_ST_F32);
    assert_null(tl_st_get(f, "train.step"));
    assert_string_equal(tl_st_meta(f, "format"), "pt");
    assert_string_equal(tl_st_meta(f, "tokenlab.version"), TL_VERSION);
    assert_string_equal(tl_st_meta(f, "run"), "abc");
    assert_string_equal(tl_st_meta(f, "note"), "x=1");
    assert_non_null(tl_st_meta(f, "tokenlab.config"));
    tl_st_close(f);

    drop(&sa);
    drop(&sb);
    tl_model_free(a);
    tl_model_free(b);
    unlink(path);
}

static void test_reserved_meta_refused(void **state) {
    (void)state;
    char path[512], err[TL_ERR_LEN] = "";
    tmp_path(path, sizeof path, "reserved.safetensors");
    tl_config c = tiny_config(5);
    tl_model *a = new_model(&c, 1);
    static const char *const extra[] = {"format", "numpy", NULL};
    assert_int_equal(tl_checkpoint_save(a, NULL, path, 0, NULL, extra, err, sizeof err), -1);
    assert_non_null(strstr(err, "reserved"));
    assert_int_equal(access(path, F_OK), -1);
    tl_model_free(a);
}

static void test_optim_round_trip(void **state) {
    (void)state;
    char path[512], err[TL_ERR_LEN] = "";
    tmp_path(path, sizeof path, "optim.safetensors");
    tl_config c = tiny_config(5);
    tl_model *a = new_model(&c, 1), *b = new_model(&c, 2);
    set_bn(a, 10, 11, 12);
    fill_moments(a, 0.25f);
    tl_model_set_step(a, 77);
    tl_train_state st = {.step = 77, .epoch = 3, .rng_state = {1, UINT64_MAX, 0x8000000000000000ull, 42}};
    save(a, path, TL_CKPT_OPTIM, &st);

    tl_train_state got = {0};
    assert_int_equal(tl_checkpoint_load(b, NULL, path, TL_CKPT_OPTIM, &got, err, sizeof err), 0);
    snapshot sa = take(a), sb = take(b);
    assert_same(&sa, &sb);
    assert_true(tl_model_step(b) == 77);
    assert_true(got.step == 77 && got.epoch == 3);
    assert_memory_equal(got.rng_state, st.rng_state, sizeof st.rng_state);
    drop(&sa);
    drop(&sb);

    /* the optimizer state is ignored (and accepted) without the flag */
    tl_model *d = new_model(&c, 3);
    assert_int_equal(tl_checkpoint_load(d, NULL, path, 0, NULL, err, sizeof err), 0);
    assert_true(tl_model_step(d) == 0);
    tl_model_free(d);

    /* without a train state, train.step comes from the model */
    tl_model_set_step(a, 123);
    save(a, path, TL_CKPT_OPTIM, NULL);
    assert_int_equal(tl_checkpoint_load(b, NULL, path, TL_CKPT_OPTIM, NULL, err, sizeof err), 0);
    assert_true(tl_model_step(b) == 123);

    /* a file without optimizer state cannot be loaded with TL_CKPT_OPTIM */
    save(a, path, 0, NULL);
    expect_refused(b, path, TL_CKPT_OPTIM, "missing tensor 'optim.exp_avg.");

    tl_model_free(a);
    tl_model_free(b);
    unlink(path);
}

static void test_loads_other_float_dtypes(void **state) {
    (void)state;
    char path[512], path2[512], err[TL_ERR_LEN] = "";
    tmp_path(path, sizeof path, "f64a.safetensors");
    tmp_path(path2, sizeof path2, "f64b.safetensors");
    tl_config c = tiny_config(5);
    tl_model *a = new_model(&c, 1), *b = new_model(&c, 2);
    save(a, path, 0, NULL);
    rewrite(path, path2, &(rewrite_opts){.as_f64 = "blocks.1.attn.qkv.weight"});
    assert_int_equal(tl_checkpoint_load(b, NULL, path2, 0, NULL, err, sizeof err), 0);
    snapshot sa = take(a), sb = take(b);
    assert_memory_equal(sa.data, sb.data, sizeof(float) * sa.n); /* F32 -> F64 -> F32 is exact */
    drop(&sa);
    drop(&sb);
    tl_model_free(a);
    tl_model_free(b);
    unlink(path);
    unlink(path2);
}

/* ------------------------------------------------------------------ refusals */

typedef struct {
    char src[512], bad[512];
    tl_model *m; /* the model that loads the bad files */
} refusal_fixture;

static int refusal_setup(void **state) {
    refusal_fixture *fx = calloc(1, sizeof *fx);
    tmp_path(fx->src, sizeof fx->src, "src.safetensors");
    tmp_path(fx->bad, sizeof fx->bad, "bad.safetensors");
    tl_config c = tiny_config(5);
    tl_model *a = new_model(&c, 1);
    fill_moments(a, 0.5f);
    save(a, fx->src, TL_CKPT_OPTIM, NULL);
    tl_model_free(a);
    fx->m = new_model(&c, 9);
    set_bn(fx->m, 1, 2, 3);
    tl_model_set_step(fx->m, 5);
    *state = fx;
    return 0;
}

static int refusal_teardown(void **state) {
    refusal_fixture *fx = *state;
    tl_model_free(fx->m);
    unlink(fx->src);
    unlink(fx->bad);
    free(fx);
    return 0;
}

static void test_refuse_missing(void **state) {
    refusal_fixture *fx = *state;
    rewrite(fx->src, fx->bad, &(rewrite_opts){.skip = "head.bias"});
    expect_refused(fx->m, fx->bad, 0, "missing tensor 'head.bias'");
    rewrite(fx->src, fx->bad, &(rewrite_opts){.skip = "optim.exp_avg_sq.pos_embed"});
    expect_refused(fx->m, fx->bad, TL_CKPT_OPTIM, "missing tensor 'optim.exp_avg_sq.pos_embed'");
    rewrite(fx->src, fx->bad, &(rewrite_opts){.skip = "train.rng"});
    expect_refused(fx->m, fx->bad, TL_CKPT_OPTIM, "missing tensor 'train.rng'");
}

static void test_refuse_extra(void **state) {
    refusal_fixture *fx = *state;
    rewrite(fx->src, fx->bad, &(rewrite_opts){.extra = "foo"});
    expect_refused(fx->m, fx->bad, 0, "unexpected tensor 'foo'");
    rewrite(fx->src, fx->bad, &(rewrite_opts){.extra = "optim.exp_avg.nothing"});
    expect_refused(fx->m, fx->bad, TL_CKPT_OPTIM, "unexpected tensor 'optim.exp_avg.nothing'");
    /* moments of a buffer are not expected either */
    rewrite(fx->src, fx->bad, &(rewrite_opts){.extra = "optim.exp_avg.patch_embed.bn1.running_mean"});
    expect_refused(fx->m, fx->bad, TL_CKPT_OPTIM, "unexpected tensor 'optim.exp_avg.patch_embed.bn1.running_mean'");
}

static void test_refuse_shape(void **state) {
    refusal_fixture *fx = *state;
    tl_config c6 = tiny_config(6);
    tl_model *m6 = new_model(&c6, 4);
    expect_refused(m6, fx->src, 0, "tensor 'head.weight' has shape [5,24], model expects [6,24]");
    tl_model_free(m6);
}

static void test_refuse_dtype(void **state) {
    refusal_fixture *fx = *state;
    rewrite(fx->src, fx->bad, &(rewrite_opts){.as_i32 = "norm.weight"});
    expect_refused(fx->m, fx->bad, 0, "tensor 'norm.weight' has dtype I32, expected a float dtype");
    rewrite(fx->src, fx->bad, &(rewrite_opts){.as_i32 = "optim.exp_avg.norm.weight"});
    expect_refused(fx->m, fx->bad, TL_CKPT_OPTIM, "tensor 'optim.exp_avg.norm.weight' has dtype I32");
}

static void test_refuse_bad_counter(void **state) {
    refusal_fixture *fx = *state;
    /* a BN counter stored as float is refused; a missing one is fine */
    tl_st_file *f = tl_st_open(fx->src, NULL, 0);
    assert_non_null(f);
    tl_st_writer *w = tl_st_writer_new();
    static const float fv = 3.0f;
    for (int i = 0; i < tl_st_count(f); i++) {
        const tl_st_tensor *t = tl_st_at(f, i);
        if (!strcmp(t->name, "patch_embed.bn2.num_batches_tracked"))
            assert_int_equal(tl_st_add(w, t->name, TL_ST_F32, 0, NULL, &fv), 0);
        else if (strcmp(t->name, "patch_embed.bn3.num_batches_tracked") != 0)
            assert_int_equal(tl_st_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    assert_int_equal(tl_st_write(w, fx->bad, NULL, 0), 0);
    tl_st_writer_free(w);
    tl_st_close(f);
    expect_refused(fx->m, fx->bad, 0,
                   "tensor 'patch_embed.bn2.num_batches_tracked' has dtype F32, expected I64 or I32");

    rewrite(fx->src, fx->bad, &(rewrite_opts){.skip = "patch_embed.bn3.num_batches_tracked"});
    char err[TL_ERR_LEN] = "";
    assert_int_equal(tl_checkpoint_load(fx->m, NULL, fx->bad, 0, NULL, err, sizeof err), 0);
    assert_true(*tl_model_bn_batches(fx->m, 0) == 0 && *tl_model_bn_batches(fx->m, 2) == 3); /* bn3 kept */
}

static void test_refuse_truncated(void **state) {
    refusal_fixture *fx = *state;
    FILE *in = fopen(fx->src, "rb");
    assert_non_null(in);
    fseek(in, 0, SEEK_END);
    long len = ftell(in);
    fseek(in, 0, SEEK_SET);
    char *buf = malloc((size_t)len);
    assert_int_equal(fread(buf, 1, (size_t)len, in), (size_t)len);
    fclose(in);
    const long cuts[] = {0, 5, 100, len / 2, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        FILE *out = fopen(fx->bad, "wb");
        assert_non_null(out);
        assert_int_equal(fwrite(buf, 1, (size_t)cuts[i], out), (size_t)cuts[i]);
        fclose(out);
        expect_refused(fx->m, fx->bad, 0, fx->bad);
    }
    free(buf);
}

static void test_refuse_missing_file(void **state) {
    refusal_fixture *fx = *state;
    char path[512];
    tmp_path(path, sizeof path, "absent.safetensors");
    expect_refused(fx->m, path, 0, "cannot open");
}

/* ------------------------------------------------------------------ config */

static void test_config_from_metadata(void **state) {
    (void)state;
    char path[512], err[TL_ERR_LEN] = "";
    tmp_path(path, sizeof path, "cfg.safetensors");
    tl_config c = tiny_config(5);
    c.drop_path_rate = 0.15f;
    c.skip_lam = 2.0f;
    tl_model *a = new_model(&c, 1);
    save(a, path, 0, NULL);
    tl_config got;
    memset(&got, 0xff, sizeof got);
    assert_int_equal(tl_checkpoint_config(path, &got, err, sizeof err), 0);
    assert_config_equal(&got, &c);
    tl_model_free(a);
    unlink(path);
}

static void test_config_inferred(void **state) {
    (void)state;
    char path[512], plain[512], err[TL_ERR_LEN] = "";
    tmp_path(path, sizeof path, "lvvit_t_small.safetensors");
    tmp_path(plain, sizeof plain, "lvvit_t_plain.safetensors");
    /* lvvit_t's width and depth, but small images, classes and stem */
    tl_config c;
    assert_int_equal(tl_config_preset("lvvit_t", &c), 0);
    c.img_size = 32;
    c.num_classes = 10;
    c.stem_channels = 8;
    tl_model *a = new_model(&c, 1);
    save(a, path, 0, NULL);
    rewrite(path, plain, &(rewrite_opts){.drop_meta = 1});
    tl_st_file *f = tl_st_open(plain, err, sizeof err);
    assert_non_null(f);
    assert_null(tl_st_meta(f, "tokenlab.config"));
    tl_st_close(f);

    tl_config got;
    memset(&got, 0, sizeof got);
    if (tl_checkpoint_config(plain, &got, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(got.num_heads, 4);
    assert_int_equal(got.img_size, 32);
    assert_int_equal(got.patch_size, 16);
    assert_int_equal(got.embed_dim, 240);
    assert_int_equal(got.depth, 12);
    assert_int_equal(got.stem_channels, 8);
    assert_int_equal(got.num_classes, 10);
    assert_config_equal(&got, &c);
    /* the plain file loads into the model it describes */
    assert_int_equal(tl_checkpoint_load(a, NULL, plain, 0, NULL, err, sizeof err), 0);
    tl_model_free(a);
    unlink(path);
    unlink(plain);
}

static void test_config_no_preset(void **state) {
    (void)state;
    char path[512], plain[512], err[TL_ERR_LEN] = "";
    tmp_path(path, sizeof path, "np.safetensors");
    tmp_path(plain, sizeof plain, "np_plain.safetensors");
    tl_config c = tiny_config(5);
    tl_model *a = new_model(&c, 1);
    save(a, path, 0, NULL);
    rewrite(path, plain, &(rewrite_opts){.drop_meta = 1});
    tl_config got;
    assert_int_equal(tl_checkpoint_config(plain, &got, err, sizeof err), -1);
    if (!strstr(err, "cannot infer num_heads and skip_lam: no preset has embed_dim=24 and depth=2"))
        fail_msg("unexpected message: %s", err);

    /* a state_dict without blocks.<i>.norm1.weight cannot give a depth */
    rewrite(path, plain, &(rewrite_opts){.drop_meta = 1, .skip = "blocks.1.norm1.weight"});
    assert_int_equal(tl_checkpoint_config(plain, &got, err, sizeof err), -1);
    rewrite(path, plain, &(rewrite_opts){.drop_meta = 1, .skip = "blocks.0.norm1.weight"});
    assert_int_equal(tl_checkpoint_config(plain, &got, err, sizeof err), -1);
    assert_non_null(strstr(err, "0..depth-1"));
    rewrite(path, plain, &(rewrite_opts){.drop_meta = 1, .skip = "cls_token"});
    assert_int_equal(tl_checkpoint_config(plain, &got, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing tensor 'cls_token'"));
    tl_model_free(a);
    unlink(path);
    unlink(plain);
}


/* An inference model (weights only) loads a checkpoint and predicts exactly as the full model; it holds a
 * quarter of the memory, refuses a training context and has no optimizer state to save. */
static void test_inference_model(void **state) {
    (void)state;
    char path[1024], err[TL_ERR_LEN];
    tmp_path(path, sizeof path, "infer.safetensors");
    tl_config c = tiny_config(5);
    tl_model *m = new_model(&c, 11);
    save(m, path, 0, NULL);
    tl_model *im = tl_model_new_inference(&c, err, sizeof err);
    assert_non_null(im);
    assert_int_equal(tl_model_trainable(m), 1);
    assert_int_equal(tl_model_trainable(im), 0);
    assert_int_equal(tl_model_bytes(im) * 4, tl_model_bytes(m));
    assert_int_equal(tl_checkpoint_load(im, NULL, path, 0, NULL, err, sizeof err), 0);
    int B = 3, S = c.img_size, K = c.num_classes;
    float *x = malloc(sizeof(float) * (size_t)B * 3 * S * S), *a = malloc(sizeof(float) * (size_t)B * K),
          *b = malloc(sizeof(float) * (size_t)B * K);
    for (int i = 0; i < B * 3 * S * S; i++) x[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    tl_ctx *ca = tl_ctx_new(m, B, 0, 2, err, sizeof err), *cb = tl_ctx_new(im, B, 0, 2, err, sizeof err);
    assert_non_null(ca);
    assert_non_null(cb);
    assert_int_equal(tl_predict(ca, x, B, a), 0);
    assert_int_equal(tl_predict(cb, x, B, b), 0);
    for (int i = 0; i < B * K; i++) assert_true(a[i] == b[i]);
    err[0] = '\0';
    assert_null(tl_ctx_new(im, B, 1, 1, err, sizeof err));
    assert_non_null(strstr(err, "trainable"));
    tl_model_zero_grad(im); /* nothing to zero: must not crash */
    err[0] = '\0';
    assert_int_equal(tl_checkpoint_save(im, NULL, path, TL_CKPT_OPTIM, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "inference model"));
    assert_int_equal(tl_checkpoint_load(im, NULL, path, TL_CKPT_OPTIM, NULL, err, sizeof err), -1);
    tl_ctx_free(ca);
    tl_ctx_free(cb);
    tl_model_free(m);
    tl_model_free(im);
    free(x);
    free(a);
    free(b);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_inference_model),
        cmocka_unit_test(test_reserved_meta_refused),
        cmocka_unit_test(test_optim_round_trip),
        cmocka_unit_test(test_loads_other_float_dtypes),
        cmocka_unit_test_setup_teardown(test_refuse_missing, refusal_setup, refusal_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_extra, refusal_setup, refusal_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_shape, refusal_setup, refusal_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_dtype, refusal_setup, refusal_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_bad_counter, refusal_setup, refusal_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_truncated, refusal_setup, refusal_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_missing_file, refusal_setup, refusal_teardown),
        cmocka_unit_test(test_config_from_metadata),
        cmocka_unit_test(test_config_inferred),
        cmocka_unit_test(test_config_no_preset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
