/*
 * test_inspect.c: token inspection (inspect.h) on a small synthetic dataset.
 *  - the set is deterministic (two builds give identical samples, inputs,
 *    views and targets); validation samples spread over the classes;
 *    unreadable images are skipped, none readable is refused with a message;
 *    validation inputs and geometry are the evaluation loader's, bit for bit;
 *  - target kinds: LABELMAP for training samples with the label map, CLASS
 *    without it (top-1 the label with probability 1, the other slots empty)
 *    and for validation samples; label-map targets agree with an independent
 *    tl_targets_compute of the sample's geometry;
 *  - the view shows what the input shows: the de-normalised S x S input and
 *    the V x V view averaged down to S differ by a few grey levels, and by far
 *    more when the view is mirrored (a wrong flip or crop fails this);
 *  - tl_inspect_run: sorted probabilities summing to at most 1, valid classes,
 *    results independent of the context's batch size, a mismatched model refused;
 *  - tl_topk_softmax edge cases: K < k, equal logits, huge, infinite and NaN logits;
 *    tl_topk's order, ties and NaN count;
 *  - the training loop calls on_inspect at every evaluation (raw then EMA),
 *    with and without validation data, with the same set each time; a run
 *    stopped and resumed inspects the same set and ends with the same
 *    predictions; inspection does not change the training (same losses as a
 *    run without the hook).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tokenlab/inspect.h"
#include "tokenlab/targets.h"
#include "tokenlab/jobspec.h"
#include "data/loader.h"
#include "tokenlab/synth.h"
#include "tokenlab/train.h"

static const float MEANS[3] = {0.485f, 0.456f, 0.406f};
static const float STDS[3] = {0.229f, 0.224f, 0.225f};

#define S_IN 32
#define GRID 4
#define NCLS 4

static char g_root[1024];
static tl_dataset *g_train, *g_val;
static tl_labelmap *g_lm;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/inspect_%d", tmp ? tmp : "/tmp", (int)getpid());
    mkdir(g_root, 0755);
    char data[1100], path[1200], err[TL_ERR_LEN];
    snprintf(data, sizeof data, "%s/synth", g_root);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = NCLS;
    c.train = 64;
    c.val = 16;
    c.size = 64;
    c.map_size = 16;
    c.seed = 5;
    if (tl_synth_write(data, &c, err, sizeof err) != 0) {
        fprintf(stderr, "synth: %s\n", err);
        return -1;
    }
    snprintf(path, sizeof path, "%s/train", data);
    g_train = tl_dataset_open(path, err, sizeof err);
    snprintf(path, sizeof path, "%s/val", data);
    g_val = tl_dataset_open(path, err, sizeof err);
    snprintf(path, sizeof path, "%s/train.tllm", data);
    g_lm = tl_labelmap_open(path, NCLS, err, sizeof err);
    if (!g_train || !g_val || !g_lm) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tl_dataset_free(g_train);
    tl_dataset_free(g_val);
    tl_labelmap_close(g_lm);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

static tl_inspect_set *build(const tl_labelmap *lm, int n_val, int n_train, uint64_t seed) {
    char err[TL_ERR_LEN] = "";
    tl_inspect_set *s = tl_inspect_new(g_train, g_val, lm, n_val, n_train, S_IN, GRID, NCLS, NULL, seed, err, sizeof err);
    if (!s) fail_msg("tl_inspect_new: %s", err);
    return s;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Hash of everything a set holds. */
static uint64_t set_hash(const tl_inspect_set *s) {
    uint64_t h = 1469598103934665603ull;
    int hdr[5] = {s->n, s->S, s->grid, s->K, s->view};
    h = fnv(h, hdr, sizeof hdr);
    size_t N = (size_t)s->grid * s->grid * TL_INSPECT_TOPK;
    for (int i = 0; i < s->n; i++) {
        const tl_inspect_sample *a = &s->samples[i];
        h = fnv(h, a->split, strlen(a->split));
        h = fnv(h, a->relpath, strlen(a->relpath));
        h = fnv(h, &a->dataset_index, sizeof a->dataset_index);
        h = fnv(h, &a->label, sizeof a->label);
        h = fnv(h, &a->geom, sizeof a->geom);
        h = fnv(h, &a->target_kind, sizeof a->target_kind);
        h = fnv(h, s->targets[i].index, N * sizeof(int32_t));
        h = fnv(h, s->targets[i].prob, N * sizeof(float));
    }
    h = fnv(h, s->inputs, sizeof(float) * (size_t)s->n * 3 * s->S * s->S);
    h = fnv(h, s->view_rgb, (size_t)s->n * s->view * s->view * 3);
    return h;
}

static uint64_t result_hash(const tl_inspect_result *r) {
    uint64_t h = 1469598103934665603ull;
    size_t N = (size_t)r->grid * r->grid * TL_INSPECT_TOPK;
    for (int i = 0; i < r->n; i++) {
        h = fnv(h, r->tokens[i].index, N * sizeof(int32_t));
        h = fnv(h, r->tokens[i].prob, N * sizeof(float));
    }
    h = fnv(h, r->top_index, (size_t)r->n * TL_INSPECT_TOP5 * sizeof(int32_t));
    h = fnv(h, r->top_prob, (size_t)r->n * TL_INSPECT_TOP5 * sizeof(float));
    return h;
}

/* ------------------------------------------------------------------------ */

static void test_deterministic(void **state) {
    (void)state;
    tl_inspect_set *a = build(g_lm, 4, 4, 11), *b = build(g_lm, 4, 4, 11), *c = build(g_lm, 4, 4, 12);
    assert_int_equal(a->n, 8);
    assert_int_equal(a->S, S_IN);
    assert_int_equal(a->grid, GRID);
    assert_int_equal(a->K, NCLS);
    assert_int_equal(a->view, TL_INSPECT_VIEW_MIN);
    assert_true(set_hash(a) == set_hash(b));
    assert_memory_equal(a->inputs, b->inputs, sizeof(float) * 8 * 3 * S_IN * S_IN);
    for (int i = 0; i < a->n; i++) assert_memory_equal(&a->samples[i].geom, &b->samples[i].geom, sizeof(tl_geom));
    /* another seed: the same images, other training crops; validation untouched */
    assert_int_equal(c->n, 8);
    int differ = 0;
    for (int i = 0; i < 8; i++) {
        assert_int_equal(a->samples[i].dataset_index, c->samples[i].dataset_index);
        differ += memcmp(&a->samples[i].geom, &c->samples[i].geom, sizeof(tl_geom)) != 0;
        if (i < 4) assert_memory_equal(&a->samples[i].geom, &c->samples[i].geom, sizeof(tl_geom));
    }
    assert_true(differ >= 3);
    tl_inspect_free(a);
    tl_inspect_free(b);
    tl_inspect_free(c);
}

static void test_sample_choice(void **state) {
    (void)state;
    tl_inspect_set *s = build(NULL, 4, 4, 1);
    int seen[NCLS] = {0};
    for (int i = 0; i < 4; i++) {
        const tl_inspect_sample *a = &s->samples[i];
        assert_string_equal(a->split, "val");
        assert_string_equal(a->relpath, tl_dataset_relpath(g_val, a->dataset_index));
        assert_int_equal(a->label, tl_dataset_label(g_val, a->dataset_index));
        assert_int_equal(a->geom.flip, 0);
        assert_int_equal(a->geom.has_affine, 0);
        seen[a->label]++;
    }
    for (int k = 0; k < NCLS; k++) assert_int_equal(seen[k], 1); /* 4 evenly spaced of a class-sorted set */
    for (int i = 4; i < 8; i++) {
        const tl_inspect_sample *a = &s->samples[i];
        assert_string_equal(a->split, "train");
        assert_string_equal(a->relpath, tl_dataset_relpath(g_train, a->dataset_index));
        assert_int_equal(a->geom.has_affine, 0); /* no RandAugment */
        assert_true(a->geom.width > 0.0f && a->geom.width <= 1.0f && a->geom.height > 0.0f && a->geom.height <= 1.0f);
    }
    tl_inspect_free(s);
    /* the job's augmentation: whole-image crops (scale 1, ratio 1 on square
     * 64 px images), never flipped; an invalid one is refused */
    {
        char err2[TL_ERR_LEN];
        tl_augment_cfg aug;
        tl_augment_defaults(&aug);
        aug.scale_min = aug.scale_max = 1.0f;
        aug.ratio_min = aug.ratio_max = 1.0f;
        aug.hflip = 0.0f;
        s = tl_inspect_new(g_train, g_val, NULL, 2, 4, S_IN, GRID, NCLS, &aug, 5, err2, sizeof err2);
        if (!s) fail_msg("tl_inspect_new: %s", err2);
        for (int i = 2; i < s->n; i++) {
            const tl_geom *g = &s->samples[i].geom;
            assert_int_equal(g->flip, 0);
            assert_true(g->left == 0.0f && g->top == 0.0f && g->width == 1.0f && g->height == 1.0f);
        }
        tl_inspect_free(s);
        aug.scale_min = 2.0f;
        assert_null(tl_inspect_new(g_train, g_val, NULL, 2, 4, S_IN, GRID, NCLS, &aug, 5, err2, sizeof err2));
        assert_non_null(strstr(err2, "scale"));
    }
    /* limits: no validation set, more than the dataset holds, TL_INSPECT_MAX in all */
    char err[TL_ERR_LEN];
    s = tl_inspect_new(g_train, NULL, NULL, 4, 3, S_IN, GRID, NCLS, NULL, 1, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(s->n, 3);
    assert_string_equal(s->samples[0].split, "train");
    tl_inspect_free(s);
    s = tl_inspect_new(g_train, g_val, NULL, 100, 100, S_IN, GRID, NCLS, NULL, 1, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(s->n, TL_INSPECT_MAX);
    for (int i = 0; i < TL_INSPECT_MAX; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(s->samples[i].split, s->samples[j].split) == 0)
                assert_int_not_equal(s->samples[i].dataset_index, s->samples[j].dataset_index);
    tl_inspect_free(s);
    /* refusals */
    assert_null(tl_inspect_new(g_train, g_val, NULL, 0, 0, S_IN, GRID, NCLS, NULL, 1, err, sizeof err));
    assert_null(tl_inspect_new(g_train, g_val, g_lm, 2, 2, S_IN, GRID, NCLS + 1, NULL, 1, err, sizeof err));
    assert_non_null(strstr(err, "classes"));
    assert_null(tl_inspect_new(g_train, g_val, NULL, 2, 2, 0, GRID, NCLS, NULL, 1, err, sizeof err));
}

/* Validation inputs are the evaluation loader's, bit for bit. */
static void test_val_inputs_match_loader(void **state) {
    (void)state;
    char err[TL_ERR_LEN];
    tl_inspect_set *s = build(NULL, 4, 0, 1);
    tl_loader_cfg lc = {.ds = g_val, .train = 0, .S = S_IN, .grid = GRID, .K = NCLS, .batch = 16, .seed = 1,
                        .threads = 1, .prefetch = 2};
    tl_augment_defaults(&lc.aug);
    tl_loader *l = tl_loader_new(&lc, err, sizeof err);
    assert_non_null(l);
    tl_loader_start(l, 0, 0);
    const tl_batch *b = tl_loader_next(l, NULL);
    assert_non_null(b);
    assert_int_equal(b->n, 16);
    size_t isz = (size_t)3 * S_IN * S_IN;
    for (int i = 0; i < s->n; i++) {
        int idx = s->samples[i].dataset_index;
        assert_int_equal(b->index[idx], idx);
        assert_memory_equal(s->inputs + i * isz, b->images + (size_t)idx * isz, isz * sizeof(float));
        assert_memory_equal(&s->samples[i].geom, &b->geom[idx], sizeof(tl_geom));
    }
    tl_loader_free(l);
    tl_inspect_free(s);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Unreadable images are skipped (the next index is tried); none readable: NULL with a message. */
static void test_unreadable_images(void **state) {
    (void)state;
    char dir[1200], path[1400], cmd[3000], err[TL_ERR_LEN];
    snprintf(dir, sizeof dir, "%s/broken", g_root);
    for (int c = 0; c < 2; c++) {
        snprintf(path, sizeof path, "%s/c%d", dir, c);
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
        assert_int_equal(system(cmd), 0);
        for (int i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "%s/c%d/%d.jpg", dir, c, i);
            write_file(path, "\xff\xd8\xff\xe0 not a jpeg");
        }
    }
    tl_dataset *d = tl_dataset_open(dir, err, sizeof err);
    assert_non_null(d);
    assert_null(tl_inspect_new(d, NULL, NULL, 0, 2, S_IN, GRID, 2, NULL, 1, err, sizeof err));
    assert_non_null(strstr(err, "could be read"));
    tl_dataset_free(d);
    /* one good picture (c1/1.jpg, index 3): both samples' searches end there, once */
    snprintf(cmd, sizeof cmd, "cp '%s/synth/train/%s' '%s/c1/1.jpg'", g_root, tl_dataset_relpath(g_train, 0), dir);
    assert_int_equal(system(cmd), 0);
    d = tl_dataset_open(dir, err, sizeof err);
    assert_non_null(d);
    tl_inspect_set *s = tl_inspect_new(d, NULL, NULL, 0, 2, S_IN, GRID, 2, NULL, 1, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(s->n, 1);
    assert_string_equal(s->samples[0].relpath, "c1/1.jpg");
    assert_int_equal(s->samples[0].label, 1);
    tl_inspect_free(s);
    tl_dataset_free(d);
}

static void check_topk_row(const int32_t *ix, const float *p, int k, int K) {
    float sum = 0.0f;
    for (int j = 0; j < k; j++) {
        if (ix[j] < 0) {
            assert_true(p[j] == 0.0f);
            for (int l = j; l < k; l++) assert_int_equal(ix[l], -1);
            break;
        }
        assert_true(ix[j] < K);
        assert_true(p[j] >= 0.0f && p[j] <= 1.0f);
        if (j > 0) assert_true(p[j] <= p[j - 1]);
        for (int l = 0; l < j; l++) assert_int_not_equal(ix[l], ix[j]);
        sum += p[j];
    }
    assert_true(sum <= 1.0f + 1e-5f);
}

static void test_target_kinds(void **state) {
    (void)state;
    int N = GRID * GRID;
    tl_inspect_set *plain = build(NULL, 4, 4, 2), *maps = build(g_lm, 4, 4, 2);
    for (int i = 0; i < 8; i++) {
        const tl_token_topk *t = &plain->targets[i];
        assert_int_equal(plain->samples[i].target_kind, TL_TARGET_CLASS);
        for (int tok = 0; tok < N; tok++) {
            assert_int_equal(t->index[tok * TL_INSPECT_TOPK], plain->samples[i].label);
            assert_true(t->prob[tok * TL_INSPECT_TOPK] == 1.0f);
            for (int j = 1; j < TL_INSPECT_TOPK; j++) {
                assert_int_equal(t->index[tok * TL_INSPECT_TOPK + j], -1);
                assert_true(t->prob[tok * TL_INSPECT_TOPK + j] == 0.0f);
            }
        }
        /* everything but the targets is the same with or without the map */
        assert_memory_equal(&plain->samples[i].geom, &maps->samples[i].geom, sizeof(tl_geom));
    }
    assert_memory_equal(plain->inputs, maps->inputs, sizeof(float) * 8 * 3 * S_IN * S_IN);
    /* validation samples never take the training map (its keys name other pictures) */
    for (int i = 0; i < 4; i++) assert_int_equal(maps->samples[i].target_kind, TL_TARGET_CLASS);
    int k = tl_labelmap_topk(g_lm), h = tl_labelmap_h(g_lm), w = tl_labelmap_w(g_lm);
    float *vals = malloc(sizeof(float) * k * h * w), *t_cls = malloc(sizeof(float) * NCLS);
    int32_t *inds = malloc(sizeof(int32_t) * k * h * w);
    float *dense = malloc(sizeof(float) * N * NCLS), *scr = malloc(sizeof(float) * tl_targets_scratch(NCLS, h, w, GRID));
    assert_non_null(vals), assert_non_null(t_cls), assert_non_null(inds), assert_non_null(dense), assert_non_null(scr);
    char err[TL_ERR_LEN];
    int not_label = 0;
    for (int i = 4; i < 8; i++) {
        const tl_inspect_sample *a = &maps->samples[i];
        const tl_token_topk *t = &maps->targets[i];
        assert_int_equal(a->target_kind, TL_TARGET_LABELMAP);
        int64_t e = tl_labelmap_find(g_lm, a->relpath);
        assert_true(e >= 0);
        assert_int_equal(tl_labelmap_read(g_lm, e, vals, inds, err, sizeof err), 0);
        tl_targets_compute(t_cls, dense, vals, inds, k, h, w, NCLS, &a->geom, GRID, 0.0f, scr);
        for (int tok = 0; tok < N; tok++) {
            const int32_t *ix = t->index + tok * TL_INSPECT_TOPK;
            const float *p = t->prob + tok * TL_INSPECT_TOPK;
            check_topk_row(ix, p, TL_INSPECT_TOPK, NCLS);
            const float *d = dense + (size_t)tok * NCLS;
            int best = 0;
            for (int c = 1; c < NCLS; c++) best = d[c] > d[best] ? c : best;
            assert_int_equal(ix[0], best);
            for (int j = 0; j < TL_INSPECT_TOPK; j++) assert_true(fabsf(p[j] - d[ix[j]]) < 1e-6f);
            not_label += ix[0] != a->label;
        }
    }
    assert_true(not_label > 0); /* the map says more than the image label */
    free(vals), free(t_cls), free(inds), free(dense), free(scr);
    tl_inspect_free(plain);
    tl_inspect_free(maps);
}

/* Mean absolute difference (grey levels) between the de-normalised input of
 * sample i and its view averaged down to S x S (mirrored first if mirror). */
static double view_mad(const tl_inspect_set *s, int i, int mirror) {
    int S = s->S, V = s->view, f = V / S;
    assert_int_equal(V % S, 0);
    const float *in = s->inputs + (size_t)i * 3 * S * S;
    const uint8_t *v = s->view_rgb + (size_t)i * V * V * 3;
    double mad = 0.0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                double a = ((double)in[((size_t)c * S + y) * S + x] * STDS[c] + MEANS[c]) * 255.0, sum = 0.0;
                for (int dy = 0; dy < f; dy++)
                    for (int dx = 0; dx < f; dx++) {
                        int vx = x * f + dx;
                        if (mirror) vx = V - 1 - vx;
                        sum += v[((size_t)(y * f + dy) * V + vx) * 3 + c];
                    }
                mad += fabs(a - sum / (f * f));
            }
    return mad / (3.0 * S * S);
}

static void check_views(const tl_inspect_set *s) {
    double worst = 0.0, mirrored = 0.0;
    int flips = 0;
    for (int i = 0; i < s->n; i++) {
        double m = view_mad(s, i, 0), mm = view_mad(s, i, 1);
        worst = m > worst ? m : worst;
        mirrored += mm / s->n;
        flips += s->samples[i].geom.flip;
        assert_true(mm > m);
    }
    printf("view vs input: worst mean abs diff %.2f grey levels, mirrored %.2f on average (%d of %d flipped)\n", worst,
           mirrored, flips, s->n);
    assert_true(flips > 0 && flips < s->n); /* both cases covered */
    assert_true(worst < 4.0); /* a crop shifted by 2 of 64 source pixels gives about 11 */
    assert_true(mirrored > 3.0 * worst);
}

static void test_view_matches_input(void **state) {
    (void)state;
    tl_inspect_set *s = build(g_lm, 4, 8, 3);
    check_views(s);
    tl_inspect_free(s);
    /* larger pictures: the inputs come from a DCT-scaled decode (64 px), the views from a larger one */
    char data[1100], path[1200], err[TL_ERR_LEN];
    snprintf(data, sizeof data, "%s/synth256", g_root);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = NCLS;
    c.train = 8;
    c.val = 4;
    c.size = 256;
    c.map_size = 16;
    c.seed = 9;
    assert_int_equal(tl_synth_write(data, &c, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/train", data);
    tl_dataset *tr = tl_dataset_open(path, err, sizeof err);
    snprintf(path, sizeof path, "%s/val", data);
    tl_dataset *va = tl_dataset_open(path, err, sizeof err);
    assert_non_null(tr);
    assert_non_null(va);
    s = tl_inspect_new(tr, va, NULL, 4, 8, S_IN, GRID, NCLS, NULL, 3, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(s->n, 12);
    check_views(s);
    tl_inspect_free(s);
    tl_dataset_free(tr);
    tl_dataset_free(va);
}

static tl_model *tiny_model(int K, uint64_t seed) {
    tl_config c = {S_IN, S_IN / GRID, 32, 2, 2, 2.0f, 8, 1.0f, K, 0.0f};
    char err[TL_ERR_LEN];
    tl_model *m = tl_model_new(&c, seed, err, sizeof err);
    if (!m) fail_msg("model: %s", err);
    return m;
}

static void test_run(void **state) {
    (void)state;
    char err[TL_ERR_LEN];
    tl_inspect_set *s = build(g_lm, 4, 4, 4);
    tl_model *m = tiny_model(NCLS, 7);
    tl_ctx *c3 = tl_ctx_new(m, 3, 0, 2, err, sizeof err), *c8 = tl_ctx_new(m, 8, 0, 1, err, sizeof err);
    assert_non_null(c3);
    assert_non_null(c8);
    tl_inspect_result *r3 = tl_inspect_result_new(s), *r8 = tl_inspect_result_new(s);
    assert_non_null(r3);
    assert_non_null(r8);
    assert_int_equal(r3->n, s->n);
    assert_int_equal(tl_inspect_run(c3, s, r3, err, sizeof err), 0); /* batches of 3, 3, 2 */
    assert_int_equal(tl_inspect_run(c8, s, r8, err, sizeof err), 0);
    int N = GRID * GRID;
    for (int i = 0; i < s->n; i++) {
        for (int tok = 0; tok < N; tok++) {
            const int32_t *ix = r3->tokens[i].index + tok * TL_INSPECT_TOPK;
            check_topk_row(ix, r3->tokens[i].prob + tok * TL_INSPECT_TOPK, TL_INSPECT_TOPK, NCLS);
            assert_true(ix[TL_INSPECT_TOPK - 1] >= 0); /* K = 4 >= 3: every slot used */
            assert_int_equal(ix[0], r8->tokens[i].index[tok * TL_INSPECT_TOPK]);
            assert_true(fabsf(r3->tokens[i].prob[tok * TL_INSPECT_TOPK] - r8->tokens[i].prob[tok * TL_INSPECT_TOPK]) <
                        1e-5f);
        }
        const int32_t *ti = r3->top_index + i * TL_INSPECT_TOP5;
        const float *tp = r3->top_prob + i * TL_INSPECT_TOP5;
        check_topk_row(ti, tp, TL_INSPECT_TOP5, NCLS);
        float sum = 0.0f;
        for (int j = 0; j < NCLS; j++) sum += tp[j];
        assert_true(fabsf(sum - 1.0f) < 1e-5f); /* all 4 classes listed */
        assert_int_equal(ti[4], -1);
        assert_true(tp[4] == 0.0f);
        assert_int_equal(ti[0], r8->top_index[i * TL_INSPECT_TOP5]);
    }
    /* the image prediction is the softmax of tl_predict's score */
    float scores[NCLS];
    assert_int_equal(tl_predict(c8, s->inputs + (size_t)5 * 3 * S_IN * S_IN, 1, scores), 0);
    int32_t ix[TL_INSPECT_TOP5];
    float p[TL_INSPECT_TOP5];
    tl_topk_softmax(scores, NCLS, TL_INSPECT_TOP5, ix, p);
    assert_memory_equal(ix, r8->top_index + 5 * TL_INSPECT_TOP5, sizeof ix);
    for (int j = 0; j < NCLS; j++) assert_true(fabsf(p[j] - r8->top_prob[5 * TL_INSPECT_TOP5 + j]) < 1e-6f);
    /* a model of another shape is refused */
    tl_model *m5 = tiny_model(NCLS + 1, 7);
    tl_ctx *c5 = tl_ctx_new(m5, 2, 0, 1, err, sizeof err);
    assert_non_null(c5);
    assert_int_equal(tl_inspect_run(c5, s, r3, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not match"));
    tl_ctx_free(c5);
    tl_model_free(m5);
    tl_inspect_result_free(r3);
    tl_inspect_result_free(r8);
    tl_ctx_free(c3);
    tl_ctx_free(c8);
    tl_model_free(m);
    tl_inspect_free(s);
}

static void test_topk_softmax(void **state) {
    (void)state;
    int32_t ix[5];
    float p[5];
    /* K < k: the rest empty */
    const float two[2] = {0.0f, logf(3.0f)};
    tl_topk_softmax(two, 2, 5, ix, p);
    assert_int_equal(ix[0], 1);
    assert_int_equal(ix[1], 0);
    assert_true(fabsf(p[0] - 0.75f) < 1e-6f && fabsf(p[1] - 0.25f) < 1e-6f);
    for (int j = 2; j < 5; j++) assert_true(ix[j] == -1 && p[j] == 0.0f);
    /* equal logits: smaller index first, equal shares */
    const float eq[4] = {2.0f, 2.0f, 2.0f, 2.0f};
    tl_topk_softmax(eq, 4, 3, ix, p);
    for (int j = 0; j < 3; j++) assert_true(ix[j] == j && fabsf(p[j] - 0.25f) < 1e-7f);
    /* large logits: no overflow */
    const float big[4] = {1e30f, -1e30f, 1e30f, 3e38f};
    tl_topk_softmax(big, 4, 3, ix, p);
    assert_int_equal(ix[0], 3);
    assert_true(p[0] == 1.0f && p[1] == 0.0f);
    assert_true(ix[1] == 0 && ix[2] == 2);
    const float near[3] = {88.0f, 89.0f, 1000.0f};
    tl_topk_softmax(near, 3, 1, ix, p);
    assert_true(ix[0] == 2 && p[0] == 1.0f);
    /* infinities and NaN */
    const float odd[4] = {NAN, INFINITY, -INFINITY, 0.0f};
    tl_topk_softmax(odd, 4, 4, ix, p);
    assert_int_equal(ix[0], 1);
    assert_true(p[0] == 1.0f);
    assert_int_equal(ix[1], 3);
    assert_int_equal(ix[2], 2);
    assert_int_equal(ix[3], -1); /* NaN is never listed */
    for (int j = 0; j < 4; j++) assert_false(isnan(p[j]));
    const float nan2[2] = {NAN, NAN};
    tl_topk_softmax(nan2, 2, 2, ix, p);
    assert_true(ix[0] == -1 && ix[1] == -1 && p[0] == 0.0f);
    tl_topk_softmax(NULL, 0, 2, ix, p);
    assert_true(ix[0] == -1 && p[1] == 0.0f);
    /* tl_topk itself: values, ties to the smaller index, the NaN count (the
     * annotator refuses a row with any) */
    const float row[6] = {0.5f, NAN, 2.0f, 0.5f, NAN, -1.0f};
    float v[3];
    assert_int_equal(tl_topk(row, 6, 3, ix, v), 2);
    assert_true(ix[0] == 2 && ix[1] == 0 && ix[2] == 3);
    assert_true(v[0] == 2.0f && v[1] == 0.5f && v[2] == 0.5f);
    assert_int_equal(tl_topk(row + 2, 2, 2, ix, v), 0);
    assert_true(ix[0] == 0 && ix[1] == 1);
    /* tl_token_top1 (the served token maps) against a double softmax: 3 tokens
     * of 1000 classes, the last with its maximum twice (the first one wins) */
    enum { TN = 3, TK = 1000 };
    static float aux[TN * TK];
    uint64_t st = 99;
    for (int i = 0; i < TN * TK; i++) {
        st = st * 6364136223846793005ULL + 1442695040888963407ULL;
        aux[i] = (float)((st >> 40) & 0xffff) / 4096.0f - 8.0f;
    }
    aux[2 * TK + 17] = aux[2 * TK + 400] = 9.5f;
    int32_t tix[TN];
    float tp[TN];
    tl_token_top1(aux, TN, TK, tix, tp);
    for (int t = 0; t < TN; t++) {
        const float *l = aux + t * TK;
        int best = 0;
        for (int c = 1; c < TK; c++)
            if (l[c] > l[best]) best = c;
        double z = 0.0;
        for (int c = 0; c < TK; c++) z += exp((double)l[c] - l[best]);
        assert_int_equal(tix[t], best);
        printf("  token %d: top %d, prob %.6g, relative error %.2e\n", t, tix[t], tp[t], fabs(tp[t] * z - 1.0));
        assert_true(fabs(tp[t] * z - 1.0) <= 2e-5); /* float sum of 1000 terms */
    }
    assert_int_equal(tix[2], 17);
}

/* ------------------------------------------------------------------------ */
/* the training loop                                                          */

#define MAXCALLS 32
#define MAXSTEPS 32

typedef struct {
    int calls, evals, n;
    int64_t steps[MAXCALLS];
    int ema[MAXCALLS];
    uint64_t set[MAXCALLS], res[MAXCALLS];
    double loss[MAXSTEPS + 1];
    int64_t stop_after;
    int inspect_logs;
} recorder;

static void on_step(const tl_step_report *s, void *u) {
    recorder *r = u;
    if (s->step <= MAXSTEPS) r->loss[s->step] = s->loss;
}
static void on_eval(const tl_eval_report *e, void *u) {
    ((recorder *)u)->evals++;
    (void)e;
}
static void on_log(const char *msg, void *u) {
    if (strstr(msg, "inspection")) {
        ((recorder *)u)->inspect_logs++;
        fprintf(stderr, "log: %s\n", msg);
    }
}
static void on_inspect(const tl_inspect_set *set, const tl_inspect_result *res, int64_t step, int ema, void *u) {
    recorder *r = u;
    assert_true(r->calls < MAXCALLS);
    r->steps[r->calls] = step;
    r->ema[r->calls] = ema;
    r->set[r->calls] = set_hash(set);
    r->res[r->calls] = result_hash(res);
    r->n = set->n;
    assert_int_equal(res->n, set->n);
    for (int i = 0; i < res->n; i++) check_topk_row(res->top_index + i * TL_INSPECT_TOP5, res->top_prob + i * TL_INSPECT_TOP5,
                                                    TL_INSPECT_TOP5, set->K);
    r->calls++;
}
static int should_stop(void *u) {
    recorder *r = u;
    return r->stop_after > 0 && r->loss[r->stop_after] != 0.0;
}

static void make_spec(tl_train_spec *spec, int with_val, const char *extra) {
    char json[4096];
    snprintf(json, sizeof json,
             "{\"kind\":\"train\",\"name\":\"insp\",\"model\":{\"img_size\":32,\"patch_size\":8,\"embed_dim\":32,"
             "\"depth\":2,\"num_heads\":2,\"mlp_ratio\":2,\"stem_channels\":8,\"skip_lam\":1,\"num_classes\":4,"
             "\"drop_path_rate\":0.1},\"data\":{\"train\":\"%s/synth/train\"%s%s%s,"
             "\"label_maps\":\"%s/synth/train.tllm\"},"
             "\"train\":{\"batch_size\":16,\"ema_decay\":0.9,\"epochs\":2,\"warmup_epochs\":1,"
             "\"threads\":2,\"loader_threads\":2,\"cache_mb\":16,\"eval_every_epochs\":1,"
             "\"checkpoint_every_epochs\":1%s}}",
             g_root, with_val ? ",\"val\":\"" : "", with_val ? g_root : "", with_val ? "/synth/val\"" : "", g_root,
             extra ? extra : "");
    tl_spec_error e;
    if (tl_jobspec_parse(json, NULL, spec, &e) != 0) fail_msg("spec refused: %s: %s", e.pointer, e.message);
}

static tl_train_status run(const tl_train_spec *spec, const char *name, recorder *r, int with_hook) {
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/%s", g_root, name);
    tl_train_hooks h = {.on_step = on_step, .on_eval = on_eval, .on_log = on_log,
                        .on_inspect = with_hook ? on_inspect : NULL, .should_stop = should_stop, .user = r};
    tl_train_result res;
    return tl_train_run(spec, dir, &h, &res);
}

/* 8 steps (2 epochs of 4), evaluations at steps 4 and 8, raw then EMA. */
static void check_calls(const recorder *r, int n) {
    assert_int_equal(r->inspect_logs, 0);
    assert_int_equal(r->calls, 4);
    assert_int_equal(r->n, n);
    const int64_t steps[4] = {4, 4, 8, 8};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r->steps[i], steps[i]);
        assert_int_equal(r->ema[i], i % 2);
        assert_true(r->set[i] == r->set[0]);
    }
    assert_true(r->res[0] != r->res[2]); /* the predictions moved with training */
}

static void test_train_loop_with_val(void **state) {
    (void)state;
    static tl_train_spec spec;
    make_spec(&spec, 1, NULL);
    recorder a = {0}, b = {0};
    assert_int_equal(run(&spec, "run_val", &a, 1), TL_TRAIN_SUCCEEDED);
    check_calls(&a, 8);
    assert_int_equal(a.evals, 4);
    /* the same run without the hook trains identically */
    assert_int_equal(run(&spec, "run_val_nohook", &b, 0), TL_TRAIN_SUCCEEDED);
    assert_int_equal(b.calls, 0);
    for (int s = 1; s <= 8; s++) assert_true(a.loss[s] == b.loss[s]);
}

static void test_train_loop_without_val(void **state) {
    (void)state;
    static tl_train_spec spec;
    make_spec(&spec, 0, NULL);
    recorder a = {0};
    assert_int_equal(run(&spec, "run_noval", &a, 1), TL_TRAIN_SUCCEEDED);
    assert_int_equal(a.evals, 0);
    check_calls(&a, 4);
}

static void test_train_loop_resume(void **state) {
    (void)state;
    static tl_train_spec spec;
    make_spec(&spec, 1, NULL);
    recorder a = {0}, b = {0};
    assert_int_equal(run(&spec, "run_whole", &a, 1), TL_TRAIN_SUCCEEDED);
    b.stop_after = 6;
    assert_int_equal(run(&spec, "run_resumed", &b, 1), TL_TRAIN_STOPPED);
    assert_int_equal(b.calls, 2); /* the evaluation at step 4 */
    b.stop_after = 0;
    assert_int_equal(run(&spec, "run_resumed", &b, 1), TL_TRAIN_SUCCEEDED);
    assert_int_equal(b.calls, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(b.steps[i], a.steps[i]);
        assert_int_equal(b.ema[i], a.ema[i]);
        assert_true(b.set[i] == a.set[0]);
        assert_true(b.res[i] == a.res[i]); /* same weights, same predictions */
    }
}

/* Build and run time at lvvit_t size (224 px, 14 x 14 tokens) on 8 samples of
 * the synthetic pictures; printed, not asserted. Not under an emulator (where
 * it takes minutes and the figures mean nothing). */
static void test_timing(void **state) {
    (void)state;
    const char *emu = getenv("TL_TEST_EMULATED");
    if (emu && *emu && strcmp(emu, "0") != 0) skip();
    tl_config c;
    char err[TL_ERR_LEN];
    assert_int_equal(tl_config_preset("lvvit_t", &c), 0);
    c.num_classes = NCLS;
    double t0 = now_s();
    tl_inspect_set *s = tl_inspect_new(g_train, g_val, g_lm, 4, 4, c.img_size, tl_config_grid(&c), NCLS, NULL, 1, err,
                                       sizeof err);
    double t1 = now_s();
    assert_non_null(s);
    tl_model *m = tl_model_new(&c, 1, err, sizeof err);
    assert_non_null(m);
    tl_ctx *x = tl_ctx_new(m, 8, 0, 2, err, sizeof err);
    assert_non_null(x);
    tl_inspect_result *r = tl_inspect_result_new(s);
    assert_non_null(r);
    double t2 = now_s();
    assert_int_equal(tl_inspect_run(x, s, r, err, sizeof err), 0);
    double t3 = now_s();
    printf("lvvit_t-sized inspection of %d samples: building the set %.1f ms, one run %.1f ms (2 threads)\n", s->n,
           (t1 - t0) * 1e3, (t3 - t2) * 1e3);
    tl_inspect_result_free(r);
    tl_ctx_free(x);
    tl_model_free(m);
    tl_inspect_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_sample_choice),
        cmocka_unit_test(test_unreadable_images),
        cmocka_unit_test(test_val_inputs_match_loader),
        cmocka_unit_test(test_target_kinds),
        cmocka_unit_test(test_view_matches_input),
        cmocka_unit_test(test_run),
        cmocka_unit_test(test_topk_softmax),
        cmocka_unit_test(test_train_loop_with_val),
        cmocka_unit_test(test_train_loop_without_val),
        cmocka_unit_test(test_train_loop_resume),
        cmocka_unit_test(test_timing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
