/*
 * test_loader.c: the background batch loader (engine/data/loader.c, data/loader.h)
 * on a small synthetic dataset (tokenlab/synth.h) under $TL_TEST_TMP.
 *  - evaluation: ceil(n/B) batches, samples in dataset order, the last batch
 *    short, then NULL (and NULL again); pixels equal tl_transform_eval of the
 *    image, labels the dataset's;
 *  - training: floor(n/B) whole batches per epoch, no sample twice in an
 *    epoch, a different order each epoch; every image equals tl_augment_train
 *    with the generator derived from (seed, epoch, position) alone; starting
 *    at batch `first` gives the same batches as the uninterrupted epoch;
 *  - the same seed gives bit-identical batches (images, targets, labels,
 *    indices, geometry) with 1 or 2 worker threads, 2 or 3 slots, cache on or
 *    off, and a second epoch served from the cache equals the first read;
 *    another seed gives other batches;
 *  - the prefetch bound: with a label map that names none of the images,
 *    tl_loader_missing_maps counts exactly the samples processed, and it
 *    stops at prefetch*B until the consumer frees a slot;
 *  - unreadable images are skipped, counted, logged, and replaced by the
 *    next image of the order;
 *  - freeing a loader never started, started but not read, or mid-epoch
 *    returns (and leaks nothing under the sanitizer build); restarting
 *    mid-epoch gives a clean new epoch;
 *  - with a label map, targets equal an independent tl_targets_compute of the
 *    entry and the batch's geometry (and are dense); without one, t_dense is
 *    NULL and t_cls the smoothed one-hot label;
 *  - shards (distributed jobs): in training, shard k's batch b is rows
 *    [k*B, (k+1)*B) of the unsharded loader's batch b of the global batch, bit
 *    for bit (targets, geometry and augmentation included); in evaluation the
 *    shards' slices, in shard order, are the whole set in order; a shard
 *    outside [0, shards) and a global batch larger than the set are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/loader.h"
#include "tokenlab/model.h"
#include "tokenlab/synth.h"
#include "tokenlab/targets.h"

#define S_IN 16
#define GRID 4
#define NCLS 3
#define NTRAIN 24
#define NVAL 10

static char g_root[1024];
static tl_dataset *g_train, *g_val;
static tl_labelmap *g_lm;

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/loader_%d", tmp ? tmp : "/tmp", (int)getpid());
    mkdir(g_root, 0755);
    char data[1100], path[1200], err[TL_ERR_LEN];
    snprintf(data, sizeof data, "%s/synth", g_root);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = NCLS;
    c.train = NTRAIN;
    c.val = NVAL;
    c.size = 32;
    c.map_size = 8;
    c.seed = 11;
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
    if (tl_dataset_count(g_train) != NTRAIN || tl_dataset_count(g_val) != NVAL) {
        fprintf(stderr, "synth: unexpected image counts\n");
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

/* ------------------------------------------------------------------ helpers */

typedef struct {
    pthread_mutex_t mu;
    int lines, skipped_lines, missing_lines;
    char last[1024];
} logrec;

static void on_log(const char *msg, void *u) {
    logrec *r = u;
    pthread_mutex_lock(&r->mu);
    r->lines++;
    if (strncmp(msg, "skipped image", 13) == 0) r->skipped_lines++;
    if (strncmp(msg, "no label map", 12) == 0) r->missing_lines++;
    snprintf(r->last, sizeof r->last, "%s", msg);
    pthread_mutex_unlock(&r->mu);
}

static tl_loader_cfg make_cfg(const tl_dataset *ds, const tl_labelmap *lm, int train, int batch, int threads,
                              int prefetch, size_t cache) {
    tl_loader_cfg c = {.ds = ds, .lm = lm, .train = train, .S = S_IN, .grid = GRID, .K = NCLS, .smoothing = 0.1f,
                       .batch = batch, .seed = 7, .threads = threads, .prefetch = prefetch, .cache_bytes = cache};
    tl_augment_defaults(&c.aug);
    return c;
}

static tl_loader *new_loader(const tl_loader_cfg *c) {
    char err[TL_ERR_LEN] = "";
    tl_loader *l = tl_loader_new(c, err, sizeof err);
    if (!l) fail_msg("tl_loader_new: %s", err);
    return l;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Hash of everything a batch holds. */
static uint64_t batch_hash(const tl_batch *b, int K, int with_dense) {
    uint64_t h = 1469598103934665603ull;
    size_t n = (size_t)b->n;
    h = fnv(h, &b->n, sizeof b->n);
    h = fnv(h, b->images, sizeof(float) * n * 3 * S_IN * S_IN);
    h = fnv(h, b->t_cls, sizeof(float) * n * (size_t)K);
    if (with_dense) h = fnv(h, b->t_dense, sizeof(float) * n * GRID * GRID * (size_t)K);
    h = fnv(h, b->labels, sizeof(int) * n);
    h = fnv(h, b->index, sizeof(int) * n);
    h = fnv(h, b->geom, sizeof(tl_geom) * n);
    return h;
}

/* Hashes of every batch of epochs [0, epochs) into out (epochs * batches entries). */
static void run_epochs(const tl_loader_cfg *c, int epochs, uint64_t *out, int *nout) {
    tl_loader *l = new_loader(c);
    int nb = tl_loader_batches(l), k = 0;
    for (int e = 0; e < epochs; e++) {
        tl_loader_start(l, e, 0);
        const tl_batch *b;
        int got = 0;
        while ((b = tl_loader_next(l, NULL)) != NULL) {
            out[k++] = batch_hash(b, c->K, c->lm != NULL);
            got++;
        }
        assert_int_equal(got, nb);
    }
    *nout = k;
    tl_loader_free(l);
}

static void dataset_path(const tl_dataset *ds, int i, char *buf, size_t len) {
    assert_int_equal(tl_dataset_path(ds, i, buf, len), 0);
}

/* ------------------------------------------------------------------ tests */

static void test_eval_in_order_and_complete(void **state) {
    (void)state;
    const int B = 4;
    tl_loader_cfg c = make_cfg(g_val, NULL, 0, B, 2, 2, 0);
    tl_loader *l = new_loader(&c);
    assert_int_equal(tl_loader_batches(l), 3); /* ceil(10/4) */
    size_t isz = (size_t)3 * S_IN * S_IN;
    float *want = malloc(sizeof(float) * isz);
    assert_non_null(want);
    for (int epoch = 0; epoch < 2; epoch++) {
        tl_loader_start(l, epoch, 0);
        int seen = 0;
        for (int bi = 0; bi < 3; bi++) {
            double wait = -1.0;
            const tl_batch *b = tl_loader_next(l, &wait);
            assert_non_null(b);
            assert_true(wait >= 0.0);
            assert_int_equal(b->n, bi < 2 ? B : 2);
            assert_null(b->t_dense);
            for (int j = 0; j < b->n; j++) {
                int idx = bi * B + j;
                assert_int_equal(b->index[j], idx);
                assert_int_equal(b->labels[j], tl_dataset_label(g_val, idx));
                /* the evaluation transform of the image, bit for bit */
                char path[1200], err[TL_ERR_LEN];
                dataset_path(g_val, idx, path, sizeof path);
                tl_image im;
                assert_int_equal(tl_image_load(path, (int)((float)S_IN / c.aug.crop_pct + 1.0f), &im, err, sizeof err), 0);
                tl_geom g;
                tl_transform_eval(&im, S_IN, c.aug.crop_pct, want, &g);
                tl_image_free(&im);
                if (memcmp(want, b->images + (size_t)j * isz, sizeof(float) * isz) != 0)
                    fail_msg("epoch %d, sample %d: pixels differ from tl_transform_eval", epoch, idx);
                assert_memory_equal(&g, &b->geom[j], sizeof g);
                /* one-hot targets, smoothed */
                float t[NCLS];
                tl_targets_onehot(t, b->labels[j], NCLS, c.smoothing);
                assert_memory_equal(t, b->t_cls + (size_t)j * NCLS, sizeof t);
                seen++;
            }
        }
        assert_int_equal(seen, NVAL);
        assert_null(tl_loader_next(l, NULL));
        assert_null(tl_loader_next(l, NULL)); /* stays at the end */
    }
    assert_int_equal(tl_loader_skipped(l), 0);
    assert_int_equal(tl_loader_missing_maps(l), 0);
    free(want);
    tl_loader_free(l);
}

static void test_train_epochs_and_positions(void **state) {
    (void)state;
    const int B = 5;
    tl_loader_cfg c = make_cfg(g_train, NULL, 1, B, 2, 2, 0);
    tl_loader *l = new_loader(&c);
    const int nb = NTRAIN / B;
    assert_int_equal(tl_loader_batches(l), nb); /* floor: whole batches only */
    size_t isz = (size_t)3 * S_IN * S_IN;
    float *want = malloc(sizeof(float) * isz);
    assert_non_null(want);
    int order[2][NTRAIN];
    uint64_t hashes[2][NTRAIN / 5];
    for (int epoch = 0; epoch < 2; epoch++) {
        int used[NTRAIN] = {0};
        tl_loader_start(l, epoch, 0);
        for (int bi = 0; bi < nb; bi++) {
            const tl_batch *b = tl_loader_next(l, NULL);
            assert_non_null(b);
            assert_int_equal(b->n, B);
            hashes[epoch][bi] = batch_hash(b, NCLS, 0);
            for (int j = 0; j < B; j++) {
                int idx = b->index[j], pos = bi * B + j;
                assert_true(idx >= 0 && idx < NTRAIN);
                if (used[idx]++) fail_msg("epoch %d: image %d appears twice", epoch, idx);
                order[epoch][pos] = idx;
                assert_int_equal(b->labels[j], tl_dataset_label(g_train, idx));
                /* every draw of the augmentation comes from (seed, epoch, position) */
                char path[1200], err[TL_ERR_LEN];
                dataset_path(g_train, idx, path, sizeof path);
                tl_image im;
                assert_int_equal(tl_image_load(path, 2 * S_IN, &im, err, sizeof err), 0);
                tl_rng rng;
                tl_rng_derive(&rng, c.seed, TL_RNG_AUGMENT, (uint64_t)epoch, (uint64_t)pos);
                tl_geom g;
                tl_augment_train(&im, S_IN, &c.aug, &rng, want, &g);
                tl_image_free(&im);
                if (memcmp(want, b->images + (size_t)j * isz, sizeof(float) * isz) != 0)
                    fail_msg("epoch %d, position %d: pixels differ from tl_augment_train", epoch, pos);
                assert_memory_equal(&g, &b->geom[j], sizeof g);
            }
        }
        assert_null(tl_loader_next(l, NULL));
    }
    assert_true(memcmp(order[0], order[1], sizeof(int) * (size_t)(nb * B)) != 0); /* reshuffled */
    /* resuming at batch 2 of epoch 1 gives that epoch's batches 2.. exactly */
    tl_loader_start(l, 1, 2);
    for (int bi = 2; bi < nb; bi++) {
        const tl_batch *b = tl_loader_next(l, NULL);
        assert_non_null(b);
        if (batch_hash(b, NCLS, 0) != hashes[1][bi]) fail_msg("resumed batch %d differs", bi);
    }
    assert_null(tl_loader_next(l, NULL));
    /* and an epoch started past its end has nothing */
    tl_loader_start(l, 1, nb + 3);
    assert_null(tl_loader_next(l, NULL));
    free(want);
    tl_loader_free(l);
}

static void test_batch_larger_than_dataset_refused(void **state) {
    (void)state;
    tl_loader_cfg c = make_cfg(g_val, NULL, 1, NVAL + 1, 1, 2, 0);
    char err[TL_ERR_LEN] = "";
    assert_null(tl_loader_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "batch_size"));
    /* evaluation takes a short last batch instead */
    c.train = 0;
    tl_loader *l = new_loader(&c);
    assert_int_equal(tl_loader_batches(l), 1);
    tl_loader_start(l, 0, 0);
    const tl_batch *b = tl_loader_next(l, NULL);
    assert_non_null(b);
    assert_int_equal(b->n, NVAL);
    assert_null(tl_loader_next(l, NULL));
    tl_loader_free(l);
}

static void test_same_seed_same_batches(void **state) {
    (void)state;
    enum { EPOCHS = 2, MAXB = 2 * (NTRAIN / 4) };
    uint64_t ref[MAXB], got[MAXB];
    int nref = 0, n = 0;
    /* one worker, two slots, no cache */
    tl_loader_cfg c = make_cfg(g_train, g_lm, 1, 4, 1, 2, 0);
    run_epochs(&c, EPOCHS, ref, &nref);
    assert_int_equal(nref, MAXB);
    /* the same again */
    run_epochs(&c, EPOCHS, got, &n);
    assert_int_equal(n, nref);
    assert_memory_equal(got, ref, sizeof(uint64_t) * (size_t)n);
    /* two workers, three slots, a cache */
    tl_loader_cfg c2 = make_cfg(g_train, g_lm, 1, 4, 2, 3, (size_t)64 << 20);
    run_epochs(&c2, EPOCHS, got, &n);
    assert_int_equal(n, nref);
    for (int i = 0; i < n; i++)
        if (got[i] != ref[i]) fail_msg("batch %d differs between 1 and 2 loader threads", i);
    /* another seed: other batches */
    c.seed = 8;
    run_epochs(&c, EPOCHS, got, &n);
    int differ = 0;
    for (int i = 0; i < n; i++) differ += got[i] != ref[i];
    assert_int_equal(differ, n);
}

static void test_cache_same_pixels(void **state) {
    (void)state;
    /* evaluation: the second epoch comes from the cache and equals the uncached read */
    enum { MAXB = 8 };
    uint64_t off[MAXB], on[MAXB];
    int noff = 0, non = 0;
    tl_loader_cfg c = make_cfg(g_val, NULL, 0, 3, 2, 2, 0);
    run_epochs(&c, 2, off, &noff);
    c.cache_bytes = (size_t)64 << 20;
    run_epochs(&c, 2, on, &non);
    assert_int_equal(noff, 8); /* 2 x ceil(10/3) */
    assert_int_equal(non, noff);
    assert_memory_equal(on, off, sizeof(uint64_t) * (size_t)noff);
    assert_memory_equal(on, on + 4, sizeof(uint64_t) * 4); /* eval epochs are identical */
    /* a cache too small for every image: part cached, same pixels */
    c.cache_bytes = 3 * 32 * 32 * 3;
    run_epochs(&c, 2, on, &non);
    assert_memory_equal(on, off, sizeof(uint64_t) * (size_t)noff);
    /* training, with a cache, three epochs */
    uint64_t toff[3 * (NTRAIN / 6)], ton[3 * (NTRAIN / 6)];
    tl_loader_cfg t = make_cfg(g_train, g_lm, 1, 6, 2, 2, 0);
    run_epochs(&t, 3, toff, &noff);
    t.cache_bytes = (size_t)64 << 20;
    run_epochs(&t, 3, ton, &non);
    assert_int_equal(non, noff);
    assert_memory_equal(ton, toff, sizeof(uint64_t) * (size_t)noff);
}

/* A label map of the right classes and size that names no image of the dataset. */
static tl_labelmap *foreign_labelmap(void) {
    char path[1200], err[TL_ERR_LEN] = "";
    snprintf(path, sizeof path, "%s/foreign.tllm", g_root);
    int k = 2, h = 8, w = 8;
    tl_labelmap_writer *wr = tl_labelmap_writer_new(path, NCLS, k, h, w, err, sizeof err);
    if (!wr) fail_msg("writer: %s", err);
    float vals[2 * 8 * 8];
    int32_t inds[2 * 8 * 8];
    for (int i = 0; i < k * h * w; i++) {
        vals[i] = i < h * w ? 2.0f : 0.5f;
        inds[i] = i < h * w ? 0 : 1;
    }
    if (tl_labelmap_writer_add(wr, "nowhere/none.jpg", vals, inds, err, sizeof err) != 0) fail_msg("add: %s", err);
    if (tl_labelmap_writer_finish(wr, err, sizeof err) != 0) fail_msg("finish: %s", err);
    tl_labelmap *lm = tl_labelmap_open(path, NCLS, err, sizeof err);
    if (!lm) fail_msg("open: %s", err);
    return lm;
}

/* Waits (up to 20 s) until the loader has processed at least `want` samples; returns the count. */
static int64_t wait_missing(tl_loader *l, int64_t want) {
    for (int i = 0; i < 2000 && tl_loader_missing_maps(l) < want; i++) sleep_ms(10);
    return tl_loader_missing_maps(l);
}

static void test_prefetch_bound(void **state) {
    (void)state;
    tl_labelmap *lm = foreign_labelmap();
    logrec lr = {.mu = PTHREAD_MUTEX_INITIALIZER};
    const int B = 3, P = 2;
    tl_loader_cfg c = make_cfg(g_train, lm, 1, B, 2, P, 0);
    c.log = on_log;
    c.log_user = &lr;
    tl_loader *l = new_loader(&c);
    /* every processed sample is counted once as missing its map */
    tl_loader_start(l, 0, 0);
    assert_int_equal(wait_missing(l, P * B), P * B);
    sleep_ms(200); /* room to overrun the bound, if the workers would */
    assert_int_equal(tl_loader_missing_maps(l), P * B);
    /* the consumer holds batch 0: its slot is not free yet */
    const tl_batch *b = tl_loader_next(l, NULL);
    assert_non_null(b);
    assert_non_null(b->t_dense);
    sleep_ms(200);
    assert_int_equal(tl_loader_missing_maps(l), P * B);
    /* taking batch 1 frees batch 0's slot: exactly one more batch is made */
    b = tl_loader_next(l, NULL);
    assert_non_null(b);
    assert_int_equal(wait_missing(l, (P + 1) * B), (P + 1) * B);
    sleep_ms(200);
    assert_int_equal(tl_loader_missing_maps(l), (P + 1) * B);
    /* without their maps the targets are the one-hot labels, on every token too */
    for (int j = 0; j < b->n; j++) {
        float t[NCLS];
        tl_targets_onehot(t, b->labels[j], NCLS, c.smoothing);
        assert_memory_equal(t, b->t_cls + (size_t)j * NCLS, sizeof t);
        for (int tok = 0; tok < GRID * GRID; tok++)
            assert_memory_equal(t, b->t_dense + ((size_t)j * GRID * GRID + tok) * NCLS, sizeof t);
    }
    tl_loader_free(l);
    pthread_mutex_lock(&lr.mu);
    assert_true(lr.missing_lines >= 1 && lr.missing_lines <= 20); /* logged, but not for every sample */
    assert_int_equal(lr.skipped_lines, 0);
    pthread_mutex_unlock(&lr.mu);
    tl_labelmap_close(lm);
}

/* A copy of the validation set with an unreadable image at the end of each class folder. */
static tl_dataset *corrupt_dataset(char *root, size_t len) {
    snprintf(root, len, "%s/corrupt", g_root);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s/synth/val' '%s'", root, g_root, root);
    assert_int_equal(system(cmd), 0);
    for (int c = 0; c < NCLS; c++) {
        char p[1400];
        snprintf(p, sizeof p, "%s/%s/zz_bad.jpg", root, tl_dataset_class_folder(g_val, c));
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        fputs(c == 1 ? "not a jpeg at all" : "\xff\xd8\xff\xe0 truncated", f);
        fclose(f);
    }
    char err[TL_ERR_LEN];
    tl_dataset *ds = tl_dataset_open(root, err, sizeof err);
    if (!ds) fail_msg("open: %s", err);
    assert_int_equal(tl_dataset_count(ds), NVAL + NCLS);
    return ds;
}

static int is_bad(const tl_dataset *ds, int i) { return strstr(tl_dataset_relpath(ds, i), "zz_bad") != NULL; }

static void test_corrupt_images_skipped(void **state) {
    (void)state;
    char root[1100];
    tl_dataset *ds = corrupt_dataset(root, sizeof root);
    int n = tl_dataset_count(ds);
    /* evaluation: in order; a bad image's position holds the next image */
    logrec lr = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tl_loader_cfg c = make_cfg(ds, NULL, 0, 4, 2, 2, 0);
    c.log = on_log;
    c.log_user = &lr;
    tl_loader *l = new_loader(&c);
    tl_loader_start(l, 0, 0);
    const tl_batch *b;
    int pos = 0;
    while ((b = tl_loader_next(l, NULL)) != NULL)
        for (int j = 0; j < b->n; j++, pos++) {
            int want = pos;
            while (is_bad(ds, want)) want = (want + 1) % n;
            assert_int_equal(b->index[j], want);
            assert_int_equal(b->labels[j], tl_dataset_label(ds, want));
        }
    assert_int_equal(pos, n);
    assert_int_equal(tl_loader_skipped(l), NCLS);
    pthread_mutex_lock(&lr.mu);
    assert_int_equal(lr.skipped_lines, NCLS);
    assert_non_null(strstr(lr.last, "zz_bad.jpg"));
    pthread_mutex_unlock(&lr.mu);
    tl_loader_free(l);
    /* training: no bad image in a batch, each skip counted */
    tl_loader_cfg t = make_cfg(ds, NULL, 1, 4, 2, 2, 0);
    l = new_loader(&t);
    int64_t bad_positions = 0;
    for (int epoch = 0; epoch < 2; epoch++) {
        tl_loader_start(l, epoch, 0);
        while ((b = tl_loader_next(l, NULL)) != NULL)
            for (int j = 0; j < b->n; j++) assert_false(is_bad(ds, b->index[j]));
        /* how many bad images the epoch's used positions hold: the loader's shuffle, redone here */
        int order[NVAL + NCLS];
        for (int i = 0; i < n; i++) order[i] = i;
        tl_rng r;
        tl_rng_derive(&r, t.seed, TL_RNG_EPOCH_ORDER, (uint64_t)epoch, 0);
        for (int i = n - 1; i > 0; i--) {
            int k = (int)tl_rng_below(&r, (uint32_t)(i + 1));
            int tmp = order[i];
            order[i] = order[k];
            order[k] = tmp;
        }
        for (int p = 0; p < tl_loader_batches(l) * 4; p++)
            for (int q = p; is_bad(ds, order[q % n]); q++) bad_positions++;
    }
    assert_true(bad_positions > 0);
    assert_int_equal(tl_loader_skipped(l), bad_positions);
    tl_loader_free(l);
    tl_dataset_free(ds);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

static void test_all_images_unreadable(void **state) {
    (void)state;
    char root[1100], cmd[2400];
    snprintf(root, sizeof root, "%s/allbad", g_root);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/a' '%s/b'", root, root);
    assert_int_equal(system(cmd), 0);
    for (int i = 0; i < 4; i++) {
        char p[1200];
        snprintf(p, sizeof p, "%s/%c/%d.jpg", root, i % 2 ? 'b' : 'a', i);
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        fputs("junk", f);
        fclose(f);
    }
    char err[TL_ERR_LEN];
    tl_dataset *ds = tl_dataset_open(root, err, sizeof err);
    assert_non_null(ds);
    tl_loader_cfg c = make_cfg(ds, NULL, 1, 2, 1, 2, 0);
    c.K = 2;
    tl_loader *l = new_loader(&c);
    tl_loader_start(l, 0, 0);
    const tl_batch *b = tl_loader_next(l, NULL);
    assert_non_null(b); /* blank samples, not a hang */
    for (size_t i = 0; i < (size_t)b->n * 3 * S_IN * S_IN; i++) assert_true(b->images[i] == 0.0f);
    assert_non_null(tl_loader_next(l, NULL));
    assert_null(tl_loader_next(l, NULL));
    assert_int_equal(tl_loader_skipped(l), 4 * 4); /* every position tried every image */
    tl_loader_free(l);
    tl_dataset_free(ds);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

static void test_free_and_restart_mid_epoch(void **state) {
    (void)state;
    tl_loader_cfg c = make_cfg(g_train, g_lm, 1, 4, 2, 3, (size_t)8 << 20);
    /* never started */
    tl_loader_free(new_loader(&c));
    tl_loader_free(NULL);
    /* started, nothing read: workers are filling or waiting for slots */
    tl_loader *l = new_loader(&c);
    tl_loader_start(l, 0, 0);
    tl_loader_free(l);
    /* mid-epoch, holding a batch */
    l = new_loader(&c);
    tl_loader_start(l, 0, 0);
    assert_non_null(tl_loader_next(l, NULL));
    assert_non_null(tl_loader_next(l, NULL));
    tl_loader_free(l);
    /* restarting mid-epoch gives the new epoch from its start, as a fresh loader does */
    uint64_t ref[2 * (NTRAIN / 4)];
    int nref = 0;
    run_epochs(&c, 2, ref, &nref);
    l = new_loader(&c);
    tl_loader_start(l, 0, 0);
    assert_non_null(tl_loader_next(l, NULL));
    tl_loader_start(l, 1, 0); /* abandons epoch 0 after one batch */
    const tl_batch *b;
    int k = NTRAIN / 4;
    while ((b = tl_loader_next(l, NULL)) != NULL) {
        assert_true(k < nref);
        if (batch_hash(b, NCLS, 1) != ref[k]) fail_msg("batch %d of the restarted epoch differs", k - NTRAIN / 4);
        k++;
    }
    assert_int_equal(k, nref);
    /* and back to epoch 0 at batch 3 */
    tl_loader_start(l, 0, 3);
    b = tl_loader_next(l, NULL);
    assert_non_null(b);
    assert_true(batch_hash(b, NCLS, 1) == ref[3]);
    tl_loader_free(l); /* mid-epoch again */
}

/* Sample i of batch b, every field, equals sample j of batch a. */
static void assert_same_sample(const tl_batch *a, int j, const tl_batch *b, int i, int dense) {
    size_t isz = (size_t)3 * S_IN * S_IN, K = NCLS, N = GRID * GRID;
    assert_memory_equal(a->images + j * isz, b->images + i * isz, sizeof(float) * isz);
    assert_memory_equal(a->t_cls + j * K, b->t_cls + i * K, sizeof(float) * K);
    if (dense) assert_memory_equal(a->t_dense + j * N * K, b->t_dense + i * N * K, sizeof(float) * N * K);
    assert_int_equal(a->labels[j], b->labels[i]);
    assert_int_equal(a->index[j], b->index[i]);
    assert_memory_equal(&a->geom[j], &b->geom[i], sizeof(tl_geom));
}

static void test_shards(void **state) {
    (void)state;
    enum { B = 4, SHARDS = 2 };
    tl_loader_cfg g = make_cfg(g_train, g_lm, 1, B * SHARDS, 2, 2, 0);
    tl_loader *whole = new_loader(&g), *part[SHARDS];
    for (int k = 0; k < SHARDS; k++) {
        tl_loader_cfg c = make_cfg(g_train, g_lm, 1, B, 1 + k, 2, 0);
        c.shards = SHARDS;
        c.shard = k;
        part[k] = new_loader(&c);
        assert_int_equal(tl_loader_batches(part[k]), tl_loader_batches(whole));
    }
    for (int e = 0; e < 2; e++) {
        tl_loader_start(whole, e, 0);
        for (int k = 0; k < SHARDS; k++) tl_loader_start(part[k], e, 0);
        int nb = 0;
        const tl_batch *w;
        while ((w = tl_loader_next(whole, NULL)) != NULL) {
            for (int k = 0; k < SHARDS; k++) {
                const tl_batch *p = tl_loader_next(part[k], NULL);
                assert_non_null(p);
                assert_int_equal(p->n, B);
                for (int i = 0; i < B; i++) assert_same_sample(w, k * B + i, p, i, 1);
            }
            nb++;
        }
        assert_int_equal(nb, NTRAIN / (B * SHARDS));
        for (int k = 0; k < SHARDS; k++) assert_null(tl_loader_next(part[k], NULL));
    }
    tl_loader_free(whole);
    for (int k = 0; k < SHARDS; k++) tl_loader_free(part[k]);

    /* evaluation: 3 slices of the 10 images, batches of 2, in order */
    tl_loader_cfg ev = make_cfg(g_val, NULL, 0, 2, 2, 2, 0);
    tl_loader *all = new_loader(&ev);
    tl_loader_start(all, 0, 0);
    int idx[NVAL], n = 0;
    const tl_batch *b;
    while ((b = tl_loader_next(all, NULL)) != NULL)
        for (int i = 0; i < b->n; i++) idx[n++] = b->index[i];
    assert_int_equal(n, NVAL);
    tl_loader_free(all);
    int m = 0;
    for (int k = 0; k < 3; k++) {
        tl_loader_cfg c = ev;
        c.shards = 3;
        c.shard = k;
        tl_loader *l = new_loader(&c);
        tl_loader_start(l, 0, 0);
        while ((b = tl_loader_next(l, NULL)) != NULL)
            for (int i = 0; i < b->n; i++) {
                assert_true(m < NVAL);
                assert_int_equal(b->index[i], idx[m++]);
            }
        tl_loader_free(l);
    }
    assert_int_equal(m, NVAL);

    /* refusals */
    char err[TL_ERR_LEN];
    tl_loader_cfg bad = make_cfg(g_train, NULL, 1, B, 1, 2, 0);
    bad.shards = 2;
    bad.shard = 2;
    assert_null(tl_loader_new(&bad, err, sizeof err));
    assert_non_null(strstr(err, "shard 2 of 2"));
    bad.shard = 1;
    bad.batch = NTRAIN / 2 + 1;
    assert_null(tl_loader_new(&bad, err, sizeof err));
    assert_non_null(strstr(err, "larger than the 24 images"));
}

static void test_labelmap_targets(void **state) {
    (void)state;
    tl_loader_cfg c = make_cfg(g_train, g_lm, 1, 6, 2, 2, 0);
    tl_loader *l = new_loader(&c);
    int k = tl_labelmap_topk(g_lm), h = tl_labelmap_h(g_lm), w = tl_labelmap_w(g_lm);
    float *vals = malloc(sizeof(float) * (size_t)(k * h * w));
    int32_t *inds = malloc(sizeof(int32_t) * (size_t)(k * h * w));
    float *scratch = malloc(sizeof(float) * tl_targets_scratch(NCLS, h, w, GRID));
    float tc[NCLS], *td = malloc(sizeof(float) * GRID * GRID * NCLS);
    assert_true(vals && inds && scratch && td);
    int dense_samples = 0, samples = 0;
    for (int epoch = 0; epoch < 2; epoch++) {
        tl_loader_start(l, epoch, 0);
        const tl_batch *b;
        while ((b = tl_loader_next(l, NULL)) != NULL) {
            assert_non_null(b->t_dense);
            for (int j = 0; j < b->n; j++, samples++) {
                char err[TL_ERR_LEN];
                int64_t e = tl_labelmap_find(g_lm, tl_dataset_relpath(g_train, b->index[j]));
                assert_true(e >= 0);
                assert_int_equal(tl_labelmap_read(g_lm, e, vals, inds, err, sizeof err), 0);
                tl_targets_compute(tc, td, vals, inds, k, h, w, NCLS, &b->geom[j], GRID, c.smoothing, scratch);
                assert_memory_equal(tc, b->t_cls + (size_t)j * NCLS, sizeof tc);
                const float *bd = b->t_dense + (size_t)j * GRID * GRID * NCLS;
                assert_memory_equal(td, bd, sizeof(float) * GRID * GRID * NCLS);
                /* distributions; and the tokens do not all say the same */
                double s = 0.0;
                for (int q = 0; q < NCLS; q++) s += tc[q];
                assert_true(fabs(s - 1.0) < 1e-4);
                int differ = 0;
                for (int tok = 1; tok < GRID * GRID; tok++)
                    differ |= memcmp(bd, bd + (size_t)tok * NCLS, sizeof(float) * NCLS) != 0;
                dense_samples += differ;
            }
        }
    }
    assert_int_equal(samples, 2 * (NTRAIN / 6) * 6);
    assert_true(dense_samples > samples / 2);
    assert_int_equal(tl_loader_missing_maps(l), 0);
    free(vals);
    free(inds);
    free(scratch);
    free(td);
    tl_loader_free(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_in_order_and_complete),
        cmocka_unit_test(test_shards),
        cmocka_unit_test(test_train_epochs_and_positions),
        cmocka_unit_test(test_batch_larger_than_dataset_refused),
        cmocka_unit_test(test_same_seed_same_batches),
        cmocka_unit_test(test_cache_same_pixels),
        cmocka_unit_test(test_prefetch_bound),
        cmocka_unit_test(test_corrupt_images_skipped),
        cmocka_unit_test(test_all_images_unreadable),
        cmocka_unit_test(test_free_and_restart_mid_epoch),
        cmocka_unit_test(test_labelmap_targets),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
