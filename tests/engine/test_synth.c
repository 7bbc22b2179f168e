/*
 * test_synth.c: the built-in synthetic dataset (engine/data/synth.c).
 *
 * A small set (4 classes, 40 train, 12 val, 64 px) is written under
 * $TL_TEST_TMP (or /tmp): the layout, README.txt and classes.tsv; every JPEG
 * decodes at 64x64; the label maps have K = k = 4, 16x16 cells and exactly
 * one entry per picture under its key; each cell's logits are well formed;
 * the picture's label is the class with the largest summed logit mass (its
 * largest visible object), and most pictures hold other classes too; the
 * image folder opens as a dataset with the readable class names. The same
 * config writes the same bytes; another seed does not. Bad configs are
 * refused with the field's name; an unrelated non-empty folder is never
 * written into, a previous synth output is replaced. Single-threaded.
 */
#include <dirent.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tokenlab/data.h"
#include "tokenlab/labelmap.h"
#include "tokenlab/synth.h"
#include "tokenlab/model.h"

static char g_base[1024];

static int setup(void **state) {
    const char *tmp = getenv("TL_TEST_TMP");
    if (!tmp || !tmp[0]) tmp = "/tmp";
    mkdir(tmp, 0755);
    snprintf(g_base, sizeof g_base, "%s/synth-XXXXXX", tmp);
    return mkdtemp(g_base) ? 0 : -1;
}

static int teardown(void **state) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_base);
    return system(cmd) == 0 ? 0 : -1;
}

static void pathf(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *out, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= n) fail_msg("path too long");
}

static uint8_t *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Entries of a folder, except "." and "..". */
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void files_equal(const char *a, const char *b) {
    size_t la, lb;
    uint8_t *x = read_all(a, &la), *y = read_all(b, &lb);
    if (la != lb || memcmp(x, y, la) != 0) fail_msg("%s and %s differ", a, b);
    free(x);
    free(y);
}

static tl_synth_cfg small_cfg(void) {
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = 4;
    c.train = 40;
    c.val = 12;
    c.size = 64;
    c.seed = 7;
    return c;
}

static const char *const FOLDERS[4] = {"c00_disc", "c01_square", "c02_triangle", "c03_ring"};

static void write_ok(const char *out, const tl_synth_cfg *c) {
    char err[TL_ERR_LEN] = "";
    if (tl_synth_write(out, c, err, sizeof err) != 0) fail_msg("tl_synth_write(%s): %s", out, err);
}

/* ------------------------------------------------------------------ tests */

static void test_defaults(void **state) {
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    assert_int_equal(c.classes, 10);
    assert_int_equal(c.train, 2000);
    assert_int_equal(c.val, 500);
    assert_int_equal(c.size, 64);
    assert_true(c.seed == 1);
    assert_int_equal(c.map_size, 16);
}

/* Checks one split: files, JPEGs, label map; returns pictures with >1 class. */
static int check_split(const char *out, const char *split, int count, int *label_is_max) {
    char path[2048], err[TL_ERR_LEN];
    pathf(path, sizeof path, "%s/%s", out, split);
    assert_int_equal(count_entries(path), 4 + 1); /* class folders + classes.tsv */
    int per_class[4] = {0};
    for (int c = 0; c < 4; c++) {
        pathf(path, sizeof path, "%s/%s/%s", out, split, FOLDERS[c]);
        per_class[c] = count_entries(path);
    }
    pathf(path, sizeof path, "%s/%s.tllm", out, split);
    tl_labelmap *lm = tl_labelmap_open(path, 4, err, sizeof err);
    if (!lm) fail_msg("%s: %s", path, err);
    assert_int_equal(tl_labelmap_num_classes(lm), 4);
    assert_int_equal(tl_labelmap_topk(lm), 4);
    assert_int_equal(tl_labelmap_h(lm), 16);
    assert_int_equal(tl_labelmap_w(lm), 16);
    assert_int_equal(tl_labelmap_count(lm), count);
    const int k = 4, hw = 256;
    float values[4 * 256];
    int32_t indices[4 * 256];
    int multi = 0;
    for (int i = 0; i < count; i++) {
        int label = i % 4;
        char key[64];
        snprintf(key, sizeof key, "%s/%05d.jpg", FOLDERS[label], i);
        pathf(path, sizeof path, "%s/%s/%s", out, split, key);
        tl_image im;
        if (tl_image_load(path, 0, &im, err, sizeof err) != 0) fail_msg("%s: %s", path, err);
        assert_int_equal(im.w, 64);
        assert_int_equal(im.h, 64);
        tl_image_free(&im);
        int64_t e = tl_labelmap_find(lm, key);
        if (e < 0) fail_msg("%s.tllm has no entry %s", split, key);
        if (tl_labelmap_read(lm, e, values, indices, err, sizeof err) != 0) fail_msg("%s: %s", key, err);
        double mass[4] = {0};
        for (int cell = 0; cell < hw; cell++) {
            double total = 0;
            int seen = 0;
            for (int j = 0; j < k; j++) {
                float v = values[j * hw + cell];
                int32_t c = indices[j * hw + cell];
                assert_true(c >= 0 && c < 4);
                assert_false(seen & (1 << c)); /* distinct classes */
                seen |= 1 << c;
                assert_true(v >= 0.0f && v <= 8.01f);
                if (j > 0) {
                    float prev = values[(j - 1) * hw + cell];
                    /* sorted, ties by the smaller class index */
                    assert_true(prev > v || (prev == v && indices[(j - 1) * hw + cell] < c));
                }
                total += v;
                mass[c] += v;
            }
            /* 8 (1 - f_b) + 2 f_b: in [2, 8], up to float16 rounding. */
            assert_true(total >= 1.99 && total <= 8.02);
        }
        int best = 0, others = 0;
        for (int c = 1; c < 4; c++)
            if (mass[c] > mass[best]) best = c;
        for (int c = 0; c < 4; c++)
            if (c != label && mass[c] > 8.0) others = 1; /* at least one cell's worth of another class */
        if (best == label) (*label_is_max)++;
        multi += others;
    }
    /* One entry per picture and one picture per entry. */
    assert_int_equal(per_class[0] + per_class[1] + per_class[2] + per_class[3], count);
    for (int c = 0; c < 4; c++) assert_int_equal(per_class[c], count / 4 + (c < count % 4));
    for (int64_t i = 0; i < tl_labelmap_count(lm); i++) {
        int64_t e;
        const char *key = tl_labelmap_key(lm, i, &e);
        assert_non_null(key);
        pathf(path, sizeof path, "%s/%s/%s", out, split, key);
        if (!exists(path)) fail_msg("%s.tllm entry %s has no picture", split, key);
    }
    tl_labelmap_close(lm);
    return multi;
}

static void test_write_and_check(void **state) {
    char out[1200], path[2048];
    pathf(out, sizeof out, "%s/set", g_base);
    tl_synth_cfg c = small_cfg();
    write_ok(out, &c);

    /* README and classes.tsv. */
    size_t len;
    pathf(path, sizeof path, "%s/README.txt", out);
    char *readme = (char *)read_all(path, &len);
    assert_true(strncmp(readme, "tokenlab synth output\n", 22) == 0);
    assert_non_null(strstr(readme, "seed 7"));
    free(readme);
    const char *want_tsv = "folder\tname\nc00_disc\tdisc\nc01_square\tsquare\nc02_triangle\ttriangle\nc03_ring\tring\n";
    const char *where[3] = {"", "/train", "/val"};
    for (int i = 0; i < 3; i++) {
        pathf(path, sizeof path, "%s%s/classes.tsv", out, where[i]);
        char *tsv = (char *)read_all(path, &len);
        assert_string_equal(tsv, want_tsv);
        free(tsv);
    }
    /* Top level: README.txt, classes.tsv, train, val, train.tllm, val.tllm. */
    assert_int_equal(count_entries(out), 6);

    int label_is_max = 0;
    int multi = check_split(out, "train", 40, &label_is_max);
    multi += check_split(out, "val", 12, &label_is_max);
    /* The label is the class of the largest visible object by construction,
     * so its summed logit mass is the largest everywhere. */
    assert_int_equal(label_is_max, 52);
    /* Token labels matter: most pictures hold other classes as well. */
    if (multi < 52 * 3 / 4) fail_msg("only %d of 52 pictures show a second class", multi);

    /* The split folders open as datasets with the readable names. */
    char err[TL_ERR_LEN];
    pathf(path, sizeof path, "%s/train", out);
    tl_dataset *d = tl_dataset_open(path, err, sizeof err);
    if (!d) fail_msg("dataset %s: %s", path, err);
    assert_int_equal(tl_dataset_count(d), 40);
    assert_int_equal(tl_dataset_num_classes(d), 4);
    assert_string_equal(tl_dataset_class_folder(d, 2), "c02_triangle");
    assert_string_equal(tl_dataset_class_name(d, 2), "triangle");
    for (int i = 0; i < 40; i++) {
        char want[64];
        int lab = tl_dataset_label(d, i);
        assert_string_equal(tl_dataset_class_folder(d, lab), FOLDERS[lab]);
        snprintf(want, sizeof want, "%s/", FOLDERS[lab]);
        assert_true(strncmp(tl_dataset_relpath(d, i), want, strlen(want)) == 0);
    }
    tl_dataset_free(d);
}

/* Two classes (k = 2), a size the map does not divide (50 px, 12 x 12 cells). */
static void test_odd_sizes(void **state) {
    char out[1200], path[2048], err[TL_ERR_LEN];
    pathf(out, sizeof out, "%s/odd", g_base);
    tl_synth_cfg c = small_cfg();
    c.classes = 2;
    c.train = 6;
    c.val = 2;
    c.size = 50;
    c.map_size = 0; /* size / 4 */
    write_ok(out, &c);
    pathf(path, sizeof path, "%s/train.tllm", out);
    tl_labelmap *lm = tl_labelmap_open(path, 2, err, sizeof err);
    if (!lm) fail_msg("%s: %s", path, err);
    assert_int_equal(tl_labelmap_topk(lm), 2);
    assert_int_equal(tl_labelmap_h(lm), 12);
    assert_int_equal(tl_labelmap_w(lm), 12);
    assert_int_equal(tl_labelmap_count(lm), 6);
    float values[2 * 144];
    int32_t indices[2 * 144];
    for (int i = 0; i < 6; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s/%05d.jpg", i % 2 ? "c01_square" : "c00_disc", i);
        int64_t e = tl_labelmap_find(lm, key);
        assert_true(e >= 0);
        assert_int_equal(tl_labelmap_read(lm, e, values, indices, err, sizeof err), 0);
        double mass[2] = {0, 0};
        for (int j = 0; j < 2 * 144; j++) mass[indices[j]] += values[j];
        assert_true(mass[i % 2] > mass[1 - i % 2]);
        pathf(path, sizeof path, "%s/train/%s", out, key);
        tl_image im;
        assert_int_equal(tl_image_load(path, 0, &im, err, sizeof err), 0);
        assert_int_equal(im.w, 50);
        assert_int_equal(im.h, 50);
        tl_image_free(&im);
    }
    tl_labelmap_close(lm);
}

static void test_determinism(void **state) {
    char a[1200], b[1200], x[1200], pa[2048], pb[2048];
    pathf(a, sizeof a, "%s/det_a", g_base);
    pathf(b, sizeof b, "%s/det_b", g_base);
    pathf(x, sizeof x, "%s/det_other_seed", g_base);
    tl_synth_cfg c = small_cfg();
    write_ok(a, &c);
    write_ok(b, &c);
    const char *files[] = {"README.txt", "classes.tsv", "train.tllm", "val.tllm", "train/c00_disc/00000.jpg",
                           "train/c01_square/00013.jpg", "train/c03_ring/00039.jpg", "val/c02_triangle/00010.jpg",
                           NULL};
    for (const char *const *f = files; *f; f++) {
        pathf(pa, sizeof pa, "%s/%s", a, *f);
        pathf(pb, sizeof pb, "%s/%s", b, *f);
        files_equal(pa, pb);
    }
    /* Another seed, other pictures. */
    c.seed = 8;
    write_ok(x, &c);
    size_t la, lb;
    pathf(pa, sizeof pa, "%s/train/c00_disc/00000.jpg", a);
    pathf(pb, sizeof pb, "%s/train/c00_disc/00000.jpg", x);
    uint8_t *p = read_all(pa, &la), *q = read_all(pb, &lb);
    assert_false(la == lb && memcmp(p, q, la) == 0);
    free(p);
    free(q);
    /* Rewriting into a previous output gives the same bytes again. */
    c.seed = 7;
    write_ok(x, &c);
    pathf(pb, sizeof pb, "%s/train.tllm", x);
    pathf(pa, sizeof pa, "%s/train.tllm", a);
    files_equal(pa, pb);
}

static void expect_bad(tl_synth_cfg c, const char *field) {
    char out[1200], err[TL_ERR_LEN] = "";
    pathf(out, sizeof out, "%s/bad", g_base);
    if (tl_synth_write(out, &c, err, sizeof err) != -1) fail_msg("config with a bad %s accepted", field);
    if (strncmp(err, field, strlen(field)) != 0) fail_msg("message \"%s\" does not start with %s", err, field);
    assert_false(exists(out)); /* nothing written */
}

static void test_bad_configs(void **state) {
    tl_synth_cfg c = small_cfg();
    c.classes = 1;
    expect_bad(c, "classes: must be in 2..64");
    c.classes = 65;
    expect_bad(c, "classes: must be in 2..64");
    c = small_cfg();
    c.train = 0;
    expect_bad(c, "train:");
    c = small_cfg();
    c.val = -3;
    expect_bad(c, "val:");
    c = small_cfg();
    c.size = 31;
    expect_bad(c, "size:");
    c.size = 513;
    expect_bad(c, "size:");
    c = small_cfg();
    c.map_size = 65;
    expect_bad(c, "map_size:");
    c.map_size = -1;
    expect_bad(c, "map_size:");
    char err[TL_ERR_LEN] = "";
    c = small_cfg();
    assert_int_equal(tl_synth_write("", &c, err, sizeof err), -1);
    assert_int_equal(tl_synth_write(NULL, &c, err, sizeof err), -1);
}

static void test_refuses_unrelated_folder(void **state) {
    char out[1200], path[2048], err[TL_ERR_LEN] = "";
    tl_synth_cfg c = small_cfg();
    c.train = 4;
    c.val = 4;
    /* A folder holding user data. */
    pathf(out, sizeof out, "%s/user", g_base);
    assert_int_equal(mkdir(out, 0755), 0);
    pathf(path, sizeof path, "%s/keep.txt", out);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("precious", f);
    fclose(f);
    assert_int_equal(tl_synth_write(out, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "not empty"));
    assert_int_equal(count_entries(out), 1);
    /* A README.txt that is not ours does not make it ours. */
    pathf(path, sizeof path, "%s/README.txt", out);
    f = fopen(path, "wb");
    assert_non_null(f);
    fputs("my project\n", f);
    fclose(f);
    assert_int_equal(tl_synth_write(out, &c, err, sizeof err), -1);
    assert_int_equal(count_entries(out), 2);
    /* A file instead of a folder. */
    pathf(path, sizeof path, "%s/keep.txt", out);
    assert_int_equal(tl_synth_write(path, &c, err, sizeof err), -1);

    /* An empty existing folder is fine; missing parents are created. */
    pathf(out, sizeof out, "%s/empty", g_base);
    assert_int_equal(mkdir(out, 0755), 0);
    write_ok(out, &c);
    pathf(out, sizeof out, "%s/deep/er/set", g_base);
    write_ok(out, &c);

    /* A previous output is replaced, stale pictures included... */
    pathf(out, sizeof out, "%s/prev", g_base);
    c.classes = 5;
    c.train = 10;
    write_ok(out, &c);
    c.classes = 3;
    c.train = 6;
    write_ok(out, &c);
    pathf(path, sizeof path, "%s/train", out);
    assert_int_equal(count_entries(path), 3 + 1);
    pathf(path, sizeof path, "%s/train/c00_disc", out);
    assert_int_equal(count_entries(path), 2);
    pathf(path, sizeof path, "%s/train/c03_ring", out);
    assert_false(exists(path));
    /* ...but a foreign file inside it stops the rewrite, and stays. */
    pathf(path, sizeof path, "%s/train/c00_disc/notes.txt", out);
    f = fopen(path, "wb");
    assert_non_null(f);
    fputs("mine", f);
    fclose(f);
    assert_int_equal(tl_synth_write(out, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "notes.txt"));
    assert_true(exists(path));
    pathf(path, sizeof path, "%s/train/c00_disc", out);
    assert_int_equal(count_entries(path), 3); /* checked before anything was removed */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_write_and_check),
        cmocka_unit_test(test_odd_sizes),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_refuses_unrelated_folder),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
