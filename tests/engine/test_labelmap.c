/*
 * test_labelmap.c: the label-map file (engine/data/labelmap.c) and the targets
 * built from it (engine/data/targets.c).
 *
 * File: writer -> reader round trip (K 1000, k 5, 18 x 15 maps, 50 entries
 * added in unsorted key order) with float16 rounding checked bit-exactly
 * against an independent nearest-half search; find and listing; a duplicate
 * key and an index outside [0,K) refused at add; non-finite / out-of-range
 * logits refused; abort leaves nothing; finish replaces an existing file and
 * leaves no temporary; corrupt files refused with the rule in the message
 * (truncation at every length, bad magic, version, count too large, key table
 * offset outside, unsorted keys, an entry referenced twice, file_size
 * mismatch, ...) which under the ASan build also proves no out-of-bounds
 * read; expect_classes mismatch; an index >= K or an inf inside a record
 * refused by tl_labelmap_read with the key in the message.
 * Targets: smoothed one-hot; a constant top-1 class wins everywhere; flip
 * mirrors a left/right split map; an identity affine equals no affine; a
 * translation by one token moves the map by one token and fills the edge with
 * the 1 x 1 logits; the time per sample for K 1000 (printed).
 *
 * Files go to $TL_TEST_TMP (set by ctest), else /tmp. Single-threaded.
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tokenlab/labelmap.h"
#include "tokenlab/targets.h"
#include "tokenlab/rng.h"

/* header field offsets (schema/labelmap.md) */
enum { O_VERSION = 8, O_K = 12, O_TOPK = 16, O_H = 20, O_W = 24, O_RES = 28, O_COUNT = 32, O_RECORDS = 40,
       O_KEYTABLE = 48, O_BLOB = 56, O_FILESIZE = 64, HEADER = 72, ENTRY = 24 };

/* ------------------------------------------------------------------ helpers */

static void tmp_path(char *buf, size_t n, const char *name) {
    const char *dir = getenv("TL_TEST_TMP");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(buf, n, "%s/test_lm_%ld_%s", dir, (long)getpid(), name);
}

static unsigned char *read_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static void write_all(const char *path, const void *b, size_t len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (len) assert_int_equal(fwrite(b, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* The bytes written to a file are refused and the message contains want. */
static void expect_refused(const void *b, size_t len, const char *want) {
    char path[512], err[512] = "";
    tmp_path(path, sizeof path, "corrupt.tllm");
    write_all(path, b, len);
    tl_labelmap *lm = tl_labelmap_open(path, 0, err, sizeof err);
    if (lm) tl_labelmap_close(lm);
    unlink(path);
    assert_null(lm);
    if (want && !strstr(err, want)) fail_msg("message \"%s\" does not contain \"%s\"", err, want);
}

/* No file in the temp folder starts with our prefix + name + ".tmp.". */
static void assert_no_temp(const char *name) {
    char path[512], prefix[256];
    tmp_path(path, sizeof path, name);
    const char *slash = strrchr(path, '/');
    snprintf(prefix, sizeof prefix, "%s.tmp.", slash + 1);
    *(char *)slash = 0;
    DIR *d = opendir(path);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) fail_msg("temporary file %s left behind", e->d_name);
    closedir(d);
}

/* Independent float16 reference: all finite non-negative halves in increasing
 * order (bits 0..0x7bff), and the nearest to x >= 0 with ties to even. */
static double half_value(uint32_t hb) {
    uint32_t e = hb >> 10, m = hb & 0x3ff;
    return e == 0 ? ldexp((double)m, -24) : ldexp((double)(1024 + m), (int)e - 25);
}

static uint16_t nearest_half(float xf) {
    double x = fabs((double)xf);
    uint32_t lo = 0, hi = 0x7bff;
    if (x >= half_value(hi)) return (uint16_t)((signbit(xf) ? 0x8000 : 0) | hi); /* caller keeps x < 65520 */
    while (hi - lo > 1) {                                                   /* half_value(lo) <= x < half_value(hi) */
        uint32_t mid = (lo + hi) / 2;
        if (half_value(mid) <= x)
            lo = mid;
        else
            hi = mid;
    }
    double dl = x - half_value(lo), dh = half_value(hi) - x;
    uint32_t best = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
    return (uint16_t)((signbit(xf) ? 0x8000 : 0) | best);
}

static float half_to_float_ref(uint16_t hb) {
    double v = half_value(hb & 0x7fff);
    return (float)((hb & 0x8000) ? -v : v);
}

/* A small valid file: K 10, k 2, 3 x 2 maps, 4 entries. */
#define SK 10
#define Sk 2
#define Sh 3
#define Sw 2
static const char *const small_keys[4] = {"b/x.jpg", "a/y.jpg", "a/x.jpg", "c.jpg"};

static void small_entry(int e, float *v, int32_t *ix) {
    for (int i = 0; i < Sk * Sh * Sw; i++) {
        v[i] = (float)(e * 10 + i) * 0.25f - 3.0f;
        ix[i] = (e + i) % SK;
    }
}

static unsigned char *small_file(size_t *len) {
    char path[512], err[512];
    tmp_path(path, sizeof path, "small.tllm");
    tl_labelmap_writer *wr = tl_labelmap_writer_new(path, SK, Sk, Sh, Sw, err, sizeof err);
    assert_non_null(wr);
    for (int e = 0; e < 4; e++) {
        float v[Sk * Sh * Sw];
        int32_t ix[Sk * Sh * Sw];
        small_entry(e, v, ix);
        if (tl_labelmap_writer_add(wr, small_keys[e], v, ix, err, sizeof err) != 0) fail_msg("%s", err);
    }
    if (tl_labelmap_writer_finish(wr, err, sizeof err) != 0) fail_msg("%s", err);
    unsigned char *b = read_all(path, len);
    unlink(path);
    return b;
}

/* ------------------------------------------------------------------ file tests */

#define RK 1000
#define Rk 5
#define Rh 18
#define Rw 15
#define RN 50
#define RPLANE (Rk * Rh * Rw)

static void test_roundtrip(void **state) {
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof path, "rt.tllm");
    tl_rng rng;
    tl_rng_seed(&rng, 42);
    float *vals = malloc(sizeof(float) * RN * RPLANE), *got = malloc(sizeof(float) * RPLANE);
    int32_t *idx = malloc(sizeof(int32_t) * RN * RPLANE), *goti = malloc(sizeof(int32_t) * RPLANE);
    char keys[RN][64];
    assert_non_null(vals);
    assert_non_null(idx);
    assert_non_null(got);
    assert_non_null(goti);
    tl_labelmap_writer *wr = tl_labelmap_writer_new(path, RK, Rk, Rh, Rw, err, sizeof err);
    assert_non_null(wr);
    for (int e = 0; e < RN; e++) {
        /* unsorted: a scrambled class folder and file number */
        snprintf(keys[e], sizeof keys[e], "n%05d/img_%d.JPEG", (e * 37) % 11, (e * 7919) % 101);
        if (e == 4) { /* keys[3] is a prefix of keys[4] */
            memcpy(keys[4], keys[3], sizeof keys[4]);
            strcat(keys[4], ".x");
        }
        for (int i = 0; i < RPLANE; i++) {
            float v = (float)(tl_rng_normal(&rng) * 4.0);
            if (i % 97 == 0) v = (float)(tl_rng_uniform(&rng) * 1e-6); /* subnormal in half */
            if (i % 101 == 0) v = 65504.0f + (float)tl_rng_uniform(&rng) * 15.0f; /* rounds down to the max */
            vals[(size_t)e * RPLANE + i] = v;
            idx[(size_t)e * RPLANE + i] = (int32_t)tl_rng_below(&rng, RK);
        }
        if (tl_labelmap_writer_add(wr, keys[e], vals + (size_t)e * RPLANE, idx + (size_t)e * RPLANE, err,
                                   sizeof err) != 0)
            fail_msg("add %d: %s", e, err);
    }
    if (tl_labelmap_writer_finish(wr, err, sizeof err) != 0) fail_msg("%s", err);
    assert_no_temp("rt.tllm");

    tl_labelmap *lm = tl_labelmap_open(path, RK, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_num_classes(lm), RK);
    assert_int_equal(tl_labelmap_topk(lm), Rk);
    assert_int_equal(tl_labelmap_h(lm), Rh);
    assert_int_equal(tl_labelmap_w(lm), Rw);
    assert_int_equal(tl_labelmap_count(lm), RN);
    for (int e = 0; e < RN; e++) {
        assert_int_equal(tl_labelmap_find(lm, keys[e]), e);
        if (tl_labelmap_read(lm, e, got, goti, err, sizeof err) != 0) fail_msg("%s", err);
        for (int i = 0; i < RPLANE; i++) {
            float v = vals[(size_t)e * RPLANE + i];
            float want = half_to_float_ref(nearest_half(v));
            if (memcmp(&want, &got[i], 4) != 0)
                fail_msg("entry %d value %d: %.9g stored as %.9g, nearest half is %.9g", e, i, (double)v,
                         (double)got[i], (double)want);
            assert_int_equal(goti[i], idx[(size_t)e * RPLANE + i]);
        }
    }
    /* listing is sorted, covers every entry once */
    int seen[RN] = {0};
    const char *prev = NULL;
    for (int64_t i = 0; i < RN; i++) {
        int64_t e;
        const char *k = tl_labelmap_key(lm, i, &e);
        assert_non_null(k);
        assert_true(e >= 0 && e < RN);
        assert_string_equal(k, keys[e]);
        seen[e]++;
        if (prev) assert_true(strcmp(prev, k) < 0);
        prev = k;
    }
    for (int e = 0; e < RN; e++) assert_int_equal(seen[e], 1);
    int64_t e = 7;
    assert_null(tl_labelmap_key(lm, RN, &e));
    assert_int_equal(e, -1);
    assert_null(tl_labelmap_key(lm, -1, NULL));
    /* missing keys */
    assert_int_equal(tl_labelmap_find(lm, "missing.jpg"), -1);
    assert_int_equal(tl_labelmap_find(lm, ""), -1);
    assert_int_equal(tl_labelmap_find(lm, "n00000"), -1);
    assert_int_equal(tl_labelmap_find(lm, "zzz"), -1);
    char longer[80];
    snprintf(longer, sizeof longer, "%s.x", keys[0]);
    assert_int_equal(tl_labelmap_find(lm, longer), -1);
    /* entry out of range */
    assert_int_equal(tl_labelmap_read(lm, RN, got, goti, err, sizeof err), -1);
    assert_non_null(strstr(err, "outside"));
    tl_labelmap_close(lm);

    /* expect_classes mismatch */
    lm = tl_labelmap_open(path, 999, err, sizeof err);
    assert_null(lm);
    assert_non_null(strstr(err, "expects 999"));
    unlink(path);
    free(vals);
    free(idx);
    free(got);
    free(goti);
}

static void test_half_rounding(void **state) {
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof path, "half.tllm");
    /* ties: 1 + 2^-11 is halfway between 1 and 1+2^-10 -> 1 (even); 1 + 3*2^-11 -> 1 + 2^-9 (even) */
    const float in[8] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, -(1.0f + 0x1p-11f), 0x1p-25f, 3 * 0x1p-25f,
                         65519.0f, 0x1p-14f - 0x1p-25f, -0.0f};
    const uint16_t want[8] = {0x3c00, 0x3c02, 0xbc00, 0x0000, 0x0002, 0x7bff, 0x0400, 0x8000};
    int32_t ix[8] = {0};
    tl_labelmap_writer *wr = tl_labelmap_writer_new(path, 2, 1, 1, 8, err, sizeof err);
    assert_non_null(wr);
    if (tl_labelmap_writer_add(wr, "a", in, ix, err, sizeof err) != 0) fail_msg("%s", err);
    /* overflow and non-finite refused */
    float bad[8] = {0};
    bad[5] = 65520.0f;
    assert_int_equal(tl_labelmap_writer_add(wr, "b", bad, ix, err, sizeof err), -1);
    assert_non_null(strstr(err, "not finite in float16"));
    bad[5] = NAN;
    assert_int_equal(tl_labelmap_writer_add(wr, "b", bad, ix, err, sizeof err), -1);
    bad[5] = -INFINITY;
    assert_int_equal(tl_labelmap_writer_add(wr, "b", bad, ix, err, sizeof err), -1);
    if (tl_labelmap_writer_finish(wr, err, sizeof err) != 0) fail_msg("%s", err);
    size_t len;
    unsigned char *b = read_all(path, &len);
    assert_int_equal(len, HEADER + 8 * 4 + ENTRY + 2);
    for (int i = 0; i < 8; i++) {
        uint16_t hv;
        memcpy(&hv, b + HEADER + 2 * i, 2);
        if (hv != want[i]) fail_msg("value %d (%a) stored as 0x%04x, want 0x%04x", i, (double)in[i], hv, want[i]);
        assert_int_equal(nearest_half(in[i]), want[i]); /* the reference agrees */
    }
    free(b);
    unlink(path);
}

static void test_add_refusals(void **state) {
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof path, "dup.tllm");
    float v[Sk * Sh * Sw];
    int32_t ix[Sk * Sh * Sw];
    small_entry(0, v, ix);
    tl_labelmap_writer *wr = tl_labelmap_writer_new(path, SK, Sk, Sh, Sw, err, sizeof err);
    assert_non_null(wr);
    assert_int_equal(tl_labelmap_writer_add(wr, "a/x.jpg", v, ix, err, sizeof err), 0);
    assert_int_equal(tl_labelmap_writer_add(wr, "a/x.jpg", v, ix, err, sizeof err), -1);
    assert_non_null(strstr(err, "duplicate key 'a/x.jpg'"));
    ix[3] = SK;
    assert_int_equal(tl_labelmap_writer_add(wr, "a/y.jpg", v, ix, err, sizeof err), -1);
    assert_non_null(strstr(err, "class index 10"));
    assert_non_null(strstr(err, "outside [0, K = 10)"));
    ix[3] = -1;
    assert_int_equal(tl_labelmap_writer_add(wr, "a/y.jpg", v, ix, err, sizeof err), -1);
    assert_non_null(strstr(err, "class index -1"));
    ix[3] = 3;
    assert_int_equal(tl_labelmap_writer_add(wr, "", v, ix, err, sizeof err), -1);
    assert_non_null(strstr(err, "key length"));
    /* many keys: the hash set grows, duplicates still caught */
    for (int i = 0; i < 3000; i++) {
        char key[32];
        snprintf(key, sizeof key, "k/%d.jpg", i);
        assert_int_equal(tl_labelmap_writer_add(wr, key, v, ix, err, sizeof err), 0);
    }
    assert_int_equal(tl_labelmap_writer_add(wr, "k/1234.jpg", v, ix, err, sizeof err), -1);
    assert_non_null(strstr(err, "duplicate"));
    if (tl_labelmap_writer_finish(wr, err, sizeof err) != 0) fail_msg("%s", err);
    tl_labelmap *lm = tl_labelmap_open(path, SK, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_count(lm), 3001);
    assert_int_equal(tl_labelmap_find(lm, "a/x.jpg"), 0);
    assert_int_equal(tl_labelmap_find(lm, "k/2999.jpg"), 3000);
    tl_labelmap_close(lm);
    unlink(path);

    /* bad writer parameters */
    assert_null(tl_labelmap_writer_new(path, 0, 1, 1, 1, err, sizeof err));
    assert_non_null(strstr(err, "K = 0"));
    assert_null(tl_labelmap_writer_new(path, 5, 6, 1, 1, err, sizeof err));
    assert_non_null(strstr(err, "k = 6"));
    assert_null(tl_labelmap_writer_new(path, 5, 5, 1025, 1, err, sizeof err));
    assert_non_null(strstr(err, "map size"));
    assert_null(tl_labelmap_writer_new("/nonexistent-folder/x.tllm", 5, 5, 1, 1, err, sizeof err));
    assert_non_null(strstr(err, "create the temporary file"));
}

static void test_abort_and_replace(void **state) {
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof path, "abort.tllm");
    unlink(path);
    float v[Sk * Sh * Sw];
    int32_t ix[Sk * Sh * Sw];
    small_entry(1, v, ix);
    tl_labelmap_writer *wr = tl_labelmap_writer_new(path, SK, Sk, Sh, Sw, err, sizeof err);
    assert_non_null(wr);
    assert_int_equal(tl_labelmap_writer_add(wr, "x", v, ix, err, sizeof err), 0);
    tl_labelmap_writer_abort(wr);
    assert_false(file_exists(path));
    assert_no_temp("abort.tllm");
    /* an existing file is replaced by finish */
    write_all(path, "old", 3);
    wr = tl_labelmap_writer_new(path, SK, Sk, Sh, Sw, err, sizeof err);
    assert_non_null(wr);
    assert_int_equal(tl_labelmap_writer_add(wr, "x", v, ix, err, sizeof err), 0);
    assert_int_equal(tl_labelmap_writer_finish(wr, err, sizeof err), 0);
    assert_no_temp("abort.tllm");
    tl_labelmap *lm = tl_labelmap_open(path, 0, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_find(lm, "x"), 0);
    tl_labelmap_close(lm);
    /* an empty map is valid */
    wr = tl_labelmap_writer_new(path, SK, Sk, Sh, Sw, err, sizeof err);
    assert_int_equal(tl_labelmap_writer_finish(wr, err, sizeof err), 0);
    lm = tl_labelmap_open(path, 0, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_count(lm), 0);
    assert_int_equal(tl_labelmap_find(lm, "x"), -1);
    tl_labelmap_close(lm);
    unlink(path);
    /* missing file */
    assert_null(tl_labelmap_open(path, 0, err, sizeof err));
    assert_non_null(strstr(err, "open failed"));
}

static void test_corrupt(void **state) {
    (void)state;
    size_t len;
    unsigned char *good = small_file(&len);
    unsigned char *b = malloc(len + 16);
    assert_non_null(b);
    /* the good file opens */
    {
        char path[512], err[512];
        tmp_path(path, sizeof path, "good.tllm");
        write_all(path, good, len);
        tl_labelmap *lm = tl_labelmap_open(path, SK, err, sizeof err);
        if (!lm) fail_msg("%s", err);
        assert_int_equal(tl_labelmap_count(lm), 4);
        for (int e = 0; e < 4; e++) assert_int_equal(tl_labelmap_find(lm, small_keys[e]), e);
        float v[Sk * Sh * Sw], want[Sk * Sh * Sw];
        int32_t ix[Sk * Sh * Sw], wix[Sk * Sh * Sw];
        assert_int_equal(tl_labelmap_read(lm, 2, v, ix, err, sizeof err), 0);
        small_entry(2, want, wix);
        for (int i = 0; i < Sk * Sh * Sw; i++) {
            assert_true(v[i] == want[i]); /* multiples of 0.25: exact in half */
            assert_int_equal(ix[i], wix[i]);
        }
        tl_labelmap_close(lm);
        unlink(path);
    }
    uint64_t tab = get64(good + O_KEYTABLE), blob = get64(good + O_BLOB);
    assert_int_equal(tab, HEADER + 4 * Sk * Sh * Sw * 4);
    assert_int_equal(blob, tab + 4 * ENTRY);

    /* truncated at every length */
    for (size_t n = 0; n < len; n++) expect_refused(good, n, NULL);
    expect_refused(good, 10, "shorter than the 72-byte header");
    expect_refused(good, len - 1, "file_size field");
    expect_refused(good, HEADER + 5, "truncated");
    /* trailing byte */
    memcpy(b, good, len);
    b[len] = 0;
    expect_refused(b, len + 1, "file_size field");
    /* file_size field wrong */
    memcpy(b, good, len);
    put64(b + O_FILESIZE, len + 8);
    expect_refused(b, len, "file_size field says");
#define MUTATE(stmt, want)        \
    do {                          \
        memcpy(b, good, len);     \
        stmt;                     \
        expect_refused(b, len, want); \
    } while (0)
    MUTATE(b[0] = 'X', "bad magic");
    MUTATE(put32(b + O_VERSION, 2), "unsupported version 2");
    MUTATE(put32(b + O_K, 0), "K = 0");
    MUTATE(put32(b + O_K, 65536), "K = 65536");
    MUTATE(put32(b + O_TOPK, 11), "k = 11");
    MUTATE(put32(b + O_TOPK, 0), "k = 0");
    MUTATE(put32(b + O_H, 0), "map size");
    MUTATE(put32(b + O_W, 2000), "map size");
    MUTATE(put32(b + O_RES, 1), "reserved");
    MUTATE(put64(b + O_COUNT, (uint64_t)1 << 40), "exceeds the limit");
    MUTATE(put64(b + O_COUNT, (uint64_t)INT32_MAX), "count too large");
    MUTATE(put64(b + O_COUNT, 5), "not the end of the records");
    MUTATE(put64(b + O_COUNT, 3), "not the end of the records");
    MUTATE(put64(b + O_RECORDS, 64), "records_offset 64");
    MUTATE(put64(b + O_KEYTABLE, len + 100), "keytable_offset");
    MUTATE(put64(b + O_KEYTABLE, len + 100), "outside");
    MUTATE(put64(b + O_KEYTABLE, UINT64_MAX), "outside");
    MUTATE(put64(b + O_KEYTABLE, tab - 4), "not the end of the records");
    MUTATE(put64(b + O_BLOB, len + 1), "keys_blob_offset");
    MUTATE(put64(b + O_BLOB, blob + 1), "not the end of the key table");
    /* key table entries (sorted: a/x.jpg, a/y.jpg, b/x.jpg, c.jpg) */
    unsigned char tmp[ENTRY];
    MUTATE((memcpy(tmp, b + tab, ENTRY), memcpy(b + tab, b + tab + ENTRY, ENTRY), memcpy(b + tab + ENTRY, tmp, ENTRY)),
           "not strictly sorted");
    MUTATE(memcpy(b + tab + ENTRY, b + tab, ENTRY), "duplicate");
    MUTATE(put64(b + tab + 16, get64(b + tab + ENTRY + 16)), "referenced twice");
    MUTATE(put64(b + tab + 16, 4), "entry 4 >= count 4");
    MUTATE(put64(b + tab + 16, UINT64_MAX), ">= count");
    MUTATE(put64(b + tab, len), "outside the");
    MUTATE(put64(b + tab, UINT64_MAX - 2), "outside the");
    MUTATE(put32(b + tab + 8, 0), "empty key");
    MUTATE(put32(b + tab + 8, 100000), "key_len 100000");
    MUTATE(put32(b + tab + 8, 30), "outside the");
    MUTATE(put32(b + tab + 12, 1), "reserved");
    MUTATE(b[blob + 1] = 0, "contains a NUL");
    MUTATE(b[blob + 7] = 'z', "not followed by a NUL");
    MUTATE(put32(b + tab + 3 * ENTRY + 8, 6), "outside the"); /* last key one byte longer: past the blob */
#undef MUTATE

    /* records with an index >= K or an inf: open succeeds, read names the key */
    {
        char path[512], err[512];
        tmp_path(path, sizeof path, "badrec.tllm");
        float v[Sk * Sh * Sw];
        int32_t ix[Sk * Sh * Sw];
        memcpy(b, good, len);
        /* entry 1 is "a/y.jpg"; its indices start after its k*h*w halves */
        uint16_t bad = SK;
        memcpy(b + HEADER + 1 * (Sk * Sh * Sw * 4) + Sk * Sh * Sw * 2 + 2 * 7, &bad, 2);
        uint16_t inf = 0x7c00;
        memcpy(b + HEADER + 3 * (Sk * Sh * Sw * 4) + 2 * 4, &inf, 2);
        write_all(path, b, len);
        tl_labelmap *lm = tl_labelmap_open(path, 0, err, sizeof err);
        if (!lm) fail_msg("%s", err);
        assert_int_equal(tl_labelmap_read(lm, 1, v, ix, err, sizeof err), -1);
        assert_non_null(strstr(err, "key 'a/y.jpg'"));
        assert_non_null(strstr(err, "class index 10"));
        assert_non_null(strstr(err, ">= K = 10"));
        assert_int_equal(tl_labelmap_read(lm, 3, v, ix, err, sizeof err), -1);
        assert_non_null(strstr(err, "key 'c.jpg'"));
        assert_non_null(strstr(err, "infinite"));
        assert_int_equal(tl_labelmap_read(lm, 0, v, ix, err, sizeof err), 0);
        tl_labelmap_close(lm);
        unlink(path);
    }
    free(b);
    free(good);
}

/* ------------------------------------------------------------------ targets */

static void test_onehot(void **state) {
    (void)state;
    float t[10];
    tl_targets_onehot(t, 3, 10, 0.1f);
    for (int c = 0; c < 10; c++) assert_float_equal(t[c], c == 3 ? 0.91f : 0.01f, 1e-7);
    tl_targets_onehot(t, 0, 10, 0.0f);
    for (int c = 0; c < 10; c++) assert_float_equal(t[c], c == 0 ? 1.0f : 0.0f, 0);
}

static int argmax(const float *v, int K) {
    int b = 0;
    for (int c = 1; c < K; c++)
        if (v[c] > v[b]) b = c;
    return b;
}

typedef struct {
    int K, k, h, w, S;
    float *values;
    int32_t *indices;
    float *t_cls, *t_dense, *scratch;
} tcase;

static void tcase_new(tcase *t, int K, int k, int h, int w, int S) {
    t->K = K;
    t->k = k;
    t->h = h;
    t->w = w;
    t->S = S;
    t->values = calloc((size_t)k * h * w, sizeof(float));
    t->indices = calloc((size_t)k * h * w, sizeof(int32_t));
    t->t_cls = calloc((size_t)K, sizeof(float));
    t->t_dense = calloc((size_t)S * S * K, sizeof(float));
    t->scratch = malloc(sizeof(float) * tl_targets_scratch(K, h, w, S));
    assert_non_null(t->values);
    assert_non_null(t->indices);
    assert_non_null(t->t_cls);
    assert_non_null(t->t_dense);
    assert_non_null(t->scratch);
}

static void tcase_free(tcase *t) {
    free(t->values);
    free(t->indices);
    free(t->t_cls);
    free(t->t_dense);
    free(t->scratch);
}

static void tcase_run(tcase *t, const tl_geom *g, float s) {
    tl_targets_compute(t->t_cls, t->t_dense, t->values, t->indices, t->k, t->h, t->w, t->K, g, t->S, s, t->scratch);
}

/* Random top-k map: distinct classes per location, top-1 class = top1(y, x) if >= 0. */
static void random_map(tcase *t, tl_rng *rng, int (*top1)(int y, int x, int h, int w)) {
    size_t hw = (size_t)t->h * t->w;
    for (int y = 0; y < t->h; y++)
        for (int x = 0; x < t->w; x++) {
            int used[16];
            int first = top1 ? top1(y, x, t->h, t->w) : -1;
            for (int j = 0; j < t->k; j++) {
                int c;
                int again;
                do {
                    c = (j == 0 && first >= 0) ? first : (int)tl_rng_below(rng, (uint32_t)t->K);
                    again = 0;
                    for (int q = 0; q < j; q++) again |= used[q] == c;
                } while (again);
                used[j] = c;
                size_t at = (size_t)j * hw + (size_t)y * t->w + x;
                t->indices[at] = c;
                t->values[at] = j == 0 && first >= 0 ? 9.0f : (float)(tl_rng_uniform(rng) * 4.0 - 1.0);
            }
        }
}

static int top1_const(int y, int x, int h, int w) { return 7; }
static int top1_split(int y, int x, int h, int w) { return x < w / 2 ? 3 : 8; }

static void check_rows_sum(const tcase *t) {
    for (int r = 0; r < t->S * t->S; r++) {
        double s = 0;
        for (int c = 0; c < t->K; c++) s += t->t_dense[(size_t)r * t->K + c];
        assert_float_equal(s, 1.0, 1e-5);
    }
}

static void test_targets_constant(void **state) {
    (void)state;
    tcase t;
    tcase_new(&t, 100, 5, 14, 14, 7);
    tl_rng rng;
    tl_rng_seed(&rng, 1);
    random_map(&t, &rng, top1_const);
    tl_geom g = {0.0f, 0.0f, 1.0f, 1.0f, 0, 0, {0}};
    tcase_run(&t, &g, 0.1f);
    assert_int_equal(argmax(t.t_cls, t.K), 7);
    for (int i = 0; i < t.S * t.S; i++) assert_int_equal(argmax(t.t_dense + (size_t)i * t.K, t.K), 7);
    double s = 0;
    for (int c = 0; c < t.K; c++) s += t.t_cls[c];
    assert_float_equal(s, 1.0, 1e-5);
    check_rows_sum(&t);
    /* smoothing floor */
    for (int c = 0; c < t.K; c++) assert_true(t.t_cls[c] >= 0.1f / t.K - 1e-7f);
    tcase_free(&t);
}

static void test_targets_flip(void **state) {
    (void)state;
    tcase t;
    tcase_new(&t, 20, 5, 14, 14, 14);
    tl_rng rng;
    tl_rng_seed(&rng, 2);
    random_map(&t, &rng, top1_split);
    size_t n = (size_t)t.S * t.S * t.K;
    float *plain = malloc(sizeof(float) * n), cls_plain[20];
    assert_non_null(plain);
    tl_geom g = {0.0f, 0.0f, 1.0f, 1.0f, 0, 0, {0}};
    tcase_run(&t, &g, 0.0f);
    memcpy(plain, t.t_dense, sizeof(float) * n);
    memcpy(cls_plain, t.t_cls, sizeof cls_plain);
    assert_int_equal(argmax(plain, t.K), 3);                                   /* token (0,0): left */
    assert_int_equal(argmax(plain + (size_t)(t.S - 1) * t.K, t.K), 8);         /* token (0,S-1): right */
    g.flip = 1;
    tcase_run(&t, &g, 0.0f);
    assert_int_equal(argmax(t.t_dense, t.K), 8);
    assert_int_equal(argmax(t.t_dense + (size_t)(t.S - 1) * t.K, t.K), 3);
    for (int r = 0; r < t.S; r++)
        for (int c = 0; c < t.S; c++)
            assert_memory_equal(t.t_dense + ((size_t)r * t.S + c) * t.K,
                                plain + ((size_t)r * t.S + (t.S - 1 - c)) * t.K, sizeof(float) * t.K);
    assert_memory_equal(t.t_cls, cls_plain, sizeof cls_plain);
    check_rows_sum(&t);
    free(plain);
    tcase_free(&t);
}

static void test_targets_affine(void **state) {
    (void)state;
    tcase t;
    tcase_new(&t, 50, 5, 18, 15, 14);
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    random_map(&t, &rng, NULL);
    size_t n = (size_t)t.S * t.S * t.K;
    float *plain = malloc(sizeof(float) * n), cls_plain[50];
    assert_non_null(plain);
    for (int flip = 0; flip < 2; flip++) {
        tl_geom g = {0.1f, 0.2f, 0.7f, 0.6f, flip, 0, {0}};
        tcase_run(&t, &g, 0.1f);
        memcpy(plain, t.t_dense, sizeof(float) * n);
        memcpy(cls_plain, t.t_cls, sizeof cls_plain);
        /* identity affine == no affine */
        g.has_affine = 1;
        const float id[6] = {1, 0, 0, 0, 1, 0};
        memcpy(g.affine, id, sizeof id);
        tcase_run(&t, &g, 0.1f);
        for (size_t i = 0; i < n; i++) assert_float_equal(t.t_dense[i], plain[i], 1e-6);
        for (int c = 0; c < t.K; c++) assert_float_equal(t.t_cls[c], cls_plain[c], 1e-7);
        /* output u samples u - 1/S: the map moves right by one token, column 0 takes the 1x1 logits */
        const float tr[6] = {1, 0, -1.0f / t.S, 0, 1, 0};
        memcpy(g.affine, tr, sizeof tr);
        tcase_run(&t, &g, 0.1f);
        for (int r = 0; r < t.S; r++)
            for (int c = 0; c < t.S; c++) {
                const float *got = t.t_dense + ((size_t)r * t.S + c) * t.K;
                const float *want = c == 0 ? cls_plain : plain + ((size_t)r * t.S + c - 1) * t.K;
                for (int q = 0; q < t.K; q++) assert_float_equal(got[q], want[q], 1e-6);
            }
        /* vertical translation down by one token: row 0 takes the 1x1 logits */
        const float tv[6] = {1, 0, 0, 0, 1, -1.0f / t.S};
        memcpy(g.affine, tv, sizeof tv);
        tcase_run(&t, &g, 0.1f);
        for (int r = 0; r < t.S; r++)
            for (int c = 0; c < t.S; c++) {
                const float *got = t.t_dense + ((size_t)r * t.S + c) * t.K;
                const float *want = r == 0 ? cls_plain : plain + ((size_t)(r - 1) * t.S + c) * t.K;
                for (int q = 0; q < t.K; q++) assert_float_equal(got[q], want[q], 1e-6);
            }
        /* half a token: the mean of two neighbouring tokens' logits, so between them */
        const float th[6] = {1, 0, -0.5f / t.S, 0, 1, 0};
        memcpy(g.affine, th, sizeof th);
        tcase_run(&t, &g, 0.0f);
        check_rows_sum(&t);
    }
    free(plain);
    tcase_free(&t);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void test_targets_speed(void **state) {
    (void)state;
    const int sides[2] = {14, 18};
    for (int si = 0; si < 2; si++) {
        tcase t;
        tcase_new(&t, 1000, 5, sides[si], sides[si], 14);
        tl_rng rng;
        tl_rng_seed(&rng, 4);
        random_map(&t, &rng, NULL);
        const int n = 200;
        tl_geom g0 = {0, 0, 1, 1, 0, 0, {0}};
        tcase_run(&t, &g0, 0.1f); /* touch the buffers once */
        double t0 = now_us();
        for (int i = 0; i < n; i++) {
            double area = 0.08 + 0.92 * tl_rng_uniform(&rng), side = sqrt(area);
            tl_geom g = {(float)(tl_rng_uniform(&rng) * (1 - side)), (float)(tl_rng_uniform(&rng) * (1 - side)),
                         (float)side, (float)side, (int)(i & 1), 0, {0}};
            tcase_run(&t, &g, 0.1f);
        }
        double us = (now_us() - t0) / n;
        double t1 = now_us();
        for (int i = 0; i < n; i++) {
            tl_geom g = {0.1f, 0.1f, 0.8f, 0.8f, 1, 1, {0.9f, 0.1f, 0.02f, -0.1f, 0.9f, 0.05f}};
            tcase_run(&t, &g, 0.1f);
        }
        double us_aff = (now_us() - t1) / n;
        print_message("targets K=1000 k=5 h=w=%d S=14: %.1f us/sample (%.1f with an affine)\n", sides[si], us, us_aff);
        check_rows_sum(&t);
        tcase_free(&t);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),       cmocka_unit_test(test_half_rounding),
        cmocka_unit_test(test_add_refusals),    cmocka_unit_test(test_abort_and_replace),
        cmocka_unit_test(test_corrupt),         cmocka_unit_test(test_onehot),
        cmocka_unit_test(test_targets_constant), cmocka_unit_test(test_targets_flip),
        cmocka_unit_test(test_targets_affine),  cmocka_unit_test(test_targets_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
