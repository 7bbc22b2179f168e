/*
 * test_safetensors.c: the safetensors reader and writer (engine/model/safetensors.c).
 *
 * Round trips of every dtype, a scalar, an empty tensor and metadata through
 * the writer and the reader; one test per refusal rule of the reader, each
 * checking that the message names the rule; truncations of a valid file at
 * every length (under the ASan build an out-of-bounds read would fail here);
 * and the crash-safe write (no temp file left, an existing file replaced).
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
#include <unistd.h>

#include <cmocka.h>

#include "tokenlab/safetensors.h"

/* ------------------------------------------------------------------ helpers */

static void tmp_path(char *buf, size_t n, const char *name) {
    const char *dir = getenv("TL_TEST_TMP");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(buf, n, "%s/test_st_%ld_%s", dir, (long)getpid(), name);
}

/* 8-byte length + header + data, malloc'd. */
static unsigned char *make_raw(const char *header, const void *data, size_t dlen, size_t *len) {
    size_t h = strlen(header);
    unsigned char *b = malloc(8 + h + dlen + 1);
    assert_non_null(b);
    uint64_t hl = h;
    memcpy(b, &hl, 8);
    memcpy(b + 8, header, h);
    if (dlen) memcpy(b + 8 + h, data, dlen);
    *len = 8 + h + dlen;
    return b;
}

/* The bytes are refused and the message contains want. */
static void expect_refused_mem(const void *buf, size_t len, const char *want) {
    char err[512] = "";
    tl_st_file *f = tl_st_open_mem(buf, len, err, sizeof err);
    if (f) tl_st_close(f);
    assert_null(f);
    if (!strstr(err, want)) fail_msg("message \"%s\" does not contain \"%s\"", err, want);
}

static void expect_refused(const char *header, size_t dlen, const char *want) {
    unsigned char zeros[64] = {0};
    assert_true(dlen <= sizeof zeros);
    size_t len;
    unsigned char *b = make_raw(header, zeros, dlen, &len);
    expect_refused_mem(b, len, want);
    free(b);
}

static unsigned char *read_file(const char *path, size_t *len) {
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

static int count_temp_files(const char *path) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    assert_non_null(slash);
    *slash = '\0';
    const char *base = slash + 1;
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s.tmp.", base);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------ fixture data */

static const float f32v[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-30f, -7.0f};
/* F16: 1, -2, max 65504, smallest subnormal 2^-24, +inf, nan */
static const uint16_t f16v[6] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x7e00};
static const uint16_t bf16v[3] = {0x3f80, 0xc040, 0x0000}; /* 1, -3, 0 */
static const double f64v[2] = {0.5, -1e10};
static const int64_t i64v = -1234567890123LL;
static const int32_t i32v[3] = {1, -2, 3};
static const int16_t i16v[1] = {-300};
static const int8_t i8v[3] = {-1, 2, -3};
static const uint8_t u8v[5] = {1, 2, 3, 4, 255};
static const uint8_t boolv[1] = {1};

static void write_sample(const char *path, int with_meta) {
    tl_st_writer *w = tl_st_writer_new();
    assert_non_null(w);
    const int64_t s23[2] = {2, 3}, s6[1] = {6}, s3[1] = {3}, s2[1] = {2}, s1[1] = {1}, s5[1] = {5}, s20[2] = {2, 0};
    assert_int_equal(tl_st_add(w, "u8", TL_ST_U8, 1, s5, u8v), 0); /* 5 bytes: next needs padding */
    assert_int_equal(tl_st_add(w, "a.f32", TL_ST_F32, 2, s23, f32v), 0);
    assert_int_equal(tl_st_add(w, "f16", TL_ST_F16, 1, s6, f16v), 0);
    assert_int_equal(tl_st_add(w, "bf16", TL_ST_BF16, 1, s3, bf16v), 0);
    assert_int_equal(tl_st_add(w, "f64", TL_ST_F64, 1, s2, f64v), 0);
    assert_int_equal(tl_st_add(w, "scalar", TL_ST_I64, 0, NULL, &i64v), 0);
    assert_int_equal(tl_st_add(w, "i32", TL_ST_I32, 1, s3, i32v), 0);
    assert_int_equal(tl_st_add(w, "i16", TL_ST_I16, 1, s1, i16v), 0);
    assert_int_equal(tl_st_add(w, "i8", TL_ST_I8, 1, s3, i8v), 0);
    assert_int_equal(tl_st_add(w, "empty", TL_ST_F32, 2, s20, NULL), 0);
    assert_int_equal(tl_st_add(w, "bool", TL_ST_BOOL, 1, s1, boolv), 0);
    if (with_meta) {
        assert_int_equal(tl_st_set_meta(w, "format", "pt"), 0);
        assert_int_equal(tl_st_set_meta(w, "note", "first"), 0);
        assert_int_equal(tl_st_set_meta(w, "note", "a \"quoted\" value"), 0); /* replaces */
    }
    char err[512] = "";
    if (tl_st_write(w, path, err, sizeof err) != 0) fail_msg("tl_st_write: %s", err);
    tl_st_writer_free(w);
}

/* ------------------------------------------------------------------ round trip */

static void check_shape(const tl_st_tensor *t, tl_st_dtype dt, int ndim, const int64_t *shape) {
    assert_non_null(t);
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->ndim, ndim);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        assert_int_equal(t->shape[i], shape[i]);
        numel *= (size_t)shape[i];
    }
    assert_int_equal(t->numel, numel);
    assert_int_equal(t->nbytes, numel * tl_st_dtype_size(dt));
}

static void test_round_trip(void **state) {
    (void)state;
    char path[512], err[512] = "";
    tmp_path(path, sizeof path, "rt.safetensors");
    write_sample(path, 1);
    tl_st_file *f = tl_st_open(path, err, sizeof err);
    if (!f) fail_msg("tl_st_open: %s", err);
    assert_int_equal(tl_st_count(f), 11);
    static const char *const order[] = {"u8", "a.f32", "f16", "bf16", "f64", "scalar",
                                        "i32", "i16", "i8", "empty", "bool"};
    for (int i = 0; i < 11; i++) assert_string_equal(tl_st_at(f, i)->name, order[i]);
    assert_null(tl_st_at(f, 11));
    assert_null(tl_st_get(f, "nope"));

    const int64_t s23[2] = {2, 3}, s6[1] = {6}, s20[2] = {2, 0};
    const tl_st_tensor *t = tl_st_get(f, "a.f32");
    check_shape(t, TL_ST_F32, 2, s23);
    float out[6];
    assert_int_equal(tl_st_read_f32(t, out), 0);
    assert_memory_equal(out, f32v, sizeof f32v);

    t = tl_st_get(f, "f16");
    check_shape(t, TL_ST_F16, 1, s6);
    assert_int_equal(tl_st_read_f32(t, out), 0);
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 65504.0f);
    assert_true(out[3] == ldexpf(1.0f, -24));
    assert_true(isinf(out[4]) && out[4] > 0);
    assert_true(isnan(out[5]));

    t = tl_st_get(f, "bf16");
    assert_int_equal(tl_st_read_f32(t, out), 0);
    assert_true(out[0] == 1.0f && out[1] == -3.0f && out[2] == 0.0f);

    t = tl_st_get(f, "f64");
    assert_int_equal(tl_st_read_f32(t, out), 0);
    assert_true(out[0] == 0.5f && out[1] == -1e10f);

    t = tl_st_get(f, "scalar");
    check_shape(t, TL_ST_I64, 0, NULL);
    assert_int_equal(t->numel, 1);
    int64_t v;
    memcpy(&v, t->data, 8);
    assert_true(v == i64v);
    assert_int_equal(tl_st_read_f32(t, out), -1); /* not a float dtype */

    assert_memory_equal(tl_st_get(f, "i32")->data, i32v, sizeof i32v);
    assert_memory_equal(tl_st_get(f, "i16")->data, i16v, sizeof i16v);
    assert_memory_equal(tl_st_get(f, "i8")->data, i8v, sizeof i8v);
    assert_memory_equal(tl_st_get(f, "u8")->data, u8v, sizeof u8v);
    assert_memory_equal(tl_st_get(f, "bool")->data, boolv, sizeof boolv);
    check_shape(tl_st_get(f, "empty"), TL_ST_F32, 2, s20);
    assert_int_equal(tl_st_read_f32(tl_st_get(f, "empty"), out), 0);

    assert_string_equal(tl_st_meta(f, "format"), "pt");
    assert_string_equal(tl_st_meta(f, "note"), "a \"quoted\" value");
    assert_null(tl_st_meta(f, "absent"));
    tl_st_close(f);

    /* layout: data area starts at a multiple of 8; tensors packed with no gaps
     * (Hugging Face's safetensors refuses gaps) */
    size_t len;
    unsigned char *raw = read_file(path, &len);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    assert_int_equal((8 + hlen) % 8, 0);
    f = tl_st_open_mem(raw, len, err, sizeof err);
    assert_non_null(f);
    size_t total = 0;
    for (int i = 0; i < tl_st_count(f); i++) total += tl_st_at(f, i)->nbytes;
    assert_int_equal(len, 8 + hlen + total);
    tl_st_close(f);
    free(raw);
    unlink(path);
}

static void test_no_metadata(void **state) {
    (void)state;
    char path[512], err[512] = "";
    tmp_path(path, sizeof path, "nometa.safetensors");
    write_sample(path, 0);
    size_t len;
    unsigned char *raw = read_file(path, &len);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    char *hdr = calloc(1, (size_t)hlen + 1);
    memcpy(hdr, raw + 8, (size_t)hlen);
    assert_null(strstr(hdr, "__metadata__"));
    free(hdr);
    tl_st_file *f = tl_st_open_mem(raw, len, err, sizeof err);
    if (!f) fail_msg("%s", err);
    assert_null(tl_st_meta(f, "format"));
    tl_st_close(f);
    free(raw);
    unlink(path);
}

static void test_dtype_names(void **state) {
    (void)state;
    static const char *const names[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"};
    static const size_t sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};
    for (int i = 0; i < TL_ST_NDTYPES; i++) {
        assert_string_equal(tl_st_dtype_name((tl_st_dtype)i), names[i]);
        assert_int_equal(tl_st_dtype_size((tl_st_dtype)i), sizes[i]);
    }
}

static void test_writer_refusals(void **state) {
    (void)state;
    tl_st_writer *w = tl_st_writer_new();
    const int64_t s1[1] = {1}, neg[1] = {-1}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    float x = 1.0f;
    assert_int_equal(tl_st_add(w, "x", TL_ST_F32, 1, s1, &x), 0);
    assert_int_equal(tl_st_add(w, "x", TL_ST_F32, 1, s1, &x), -1);       /* duplicate */
    assert_int_equal(tl_st_add(w, "y", TL_ST_F32, 9, s9, &x), -1);       /* too many dims */
    assert_int_equal(tl_st_add(w, "z", TL_ST_F32, 1, neg, &x), -1);      /* negative dim */
    assert_int_equal(tl_st_add(w, "__metadata__", TL_ST_F32, 1, s1, &x), -1);
    tl_st_writer_free(w);
}

/* ------------------------------------------------------------------ refusals */

static void test_refuse_short(void **state) {
    (void)state;
    unsigned char b[5] = {1, 0, 0, 0, 0};
    expect_refused_mem(b, sizeof b, "shorter than the 8-byte");
    expect_refused_mem(b, 0, "shorter than the 8-byte");
}

static void test_refuse_header_too_long(void **state) {
    (void)state;
    size_t len;
    unsigned char *b = make_raw("{}", NULL, 0, &len);
    uint64_t big = 1000;
    memcpy(b, &big, 8);
    expect_refused_mem(b, len, "larger than the file");
    big = UINT64_MAX;
    memcpy(b, &big, 8);
    expect_refused_mem(b, len, "larger than the file");
    free(b);
}

static void test_refuse_not_json(void **state) {
    (void)state;
    expect_refused("{\"a\": {\"dtype\": ", 0, "not valid JSON");
    expect_refused("hello", 0, "not valid JSON");
    expect_refused("{} x", 0, "trailing bytes");
}

static void test_refuse_not_object(void **state) {
    (void)state;
    expect_refused("[1, 2]", 0, "not a JSON object");
    expect_refused("\"str\"", 0, "not a JSON object");
    expect_refused("{\"a\": 5}", 0, "tensor 'a': entry is not a JSON object");
}

static void test_refuse_missing_fields(void **state) {
    (void)state;
    expect_refused("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'a': missing \"dtype\"");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'a': missing \"shape\"");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'a': missing \"data_offsets\"");
}

static void test_refuse_unknown_dtype(void **state) {
    (void)state;
    expect_refused("{\"w\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unknown dtype 'F8'");
    expect_refused("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'f32'");
    expect_refused("{\"w\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype is not a string");
}

static void test_refuse_bad_shape(void **state) {
    (void)state;
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4,
                   "tensor 'w': shape dimension 1 is negative");
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                   "not a non-negative integer");
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
                   "not a non-negative integer");
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, "shape is not an array");
    expect_refused("{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
                   "9 dimensions");
    /* product overflows 64 bits */
    expect_refused("{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8,
                   "overflows");
    /* huge but representable: must be refused by the size check, not read */
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000000000],\"data_offsets\":[0,4]}}", 4, "disagree");
}

static void test_refuse_offsets_order(void **state) {
    (void)state;
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8, "end before begin");
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "array of 2 integers");
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "non-negative");
}

static void test_refuse_offsets_beyond(void **state) {
    (void)state;
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                   "tensor 'w': data_offsets [0, 8] beyond the data area of 4 bytes");
    expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9007199254740988,9007199254740992]}}", 4,
                   "beyond the data area");
}

static void test_refuse_size_mismatch(void **state) {
    (void)state;
    expect_refused("{\"blocks.0.attn.qkv.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
                   "tensor 'blocks.0.attn.qkv.weight': data_offsets [0, 20] disagree with F32 x [2,3] = 24 bytes");
    expect_refused("{\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,4]}}", 8,
                   "disagree with I64 x [] = 8 bytes");
}

static void test_refuse_overlap(void **state) {
    (void)state;
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                   12, "overlap");
    /* a big tensor containing a later one, with an empty tensor in between */
    expect_refused("{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
                   "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
                   "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}",
                   16, "tensor 'b': data_offsets [8, 12] overlap tensor 'a'");
    /* same bytes twice */
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                   4, "overlap");
}

static void test_refuse_duplicate(void **state) {
    (void)state;
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                   8, "duplicate tensor name 'a'");
}

static void test_refuse_bad_metadata(void **state) {
    (void)state;
    expect_refused("{\"__metadata__\":{\"format\":\"pt\",\"k\":1}}", 0, "metadata 'k' is not a string");
    expect_refused("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "metadata 'k' is not a string");
    expect_refused("{\"__metadata__\":[\"x\"]}", 0, "\"__metadata__\" is not a JSON object");
}

static void test_accepts_gaps_and_empty(void **state) {
    (void)state;
    /* padding between tensors (as written by the writer and tests/parity/st_io.py) is fine */
    size_t len;
    float d[4] = {1, 2, 3, 4};
    unsigned char *b = make_raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                                "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}   ",
                                d, sizeof d, &len);
    char err[512] = "";
    tl_st_file *f = tl_st_open_mem(b, len, err, sizeof err);
    if (!f) fail_msg("%s", err);
    float x;
    assert_int_equal(tl_st_read_f32(tl_st_get(f, "b"), &x), 0);
    assert_true(x == 3.0f);
    tl_st_close(f);
    free(b);
}

static void test_refuse_truncated(void **state) {
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof path, "trunc.safetensors");
    write_sample(path, 1);
    size_t len;
    unsigned char *raw = read_file(path, &len);
    tl_st_file *f = tl_st_open_mem(raw, len, err, sizeof err);
    assert_non_null(f);
    tl_st_close(f);
    /* the last tensor ("bool") ends the file, so every shorter length is invalid */
    for (size_t cut = 0; cut < len; cut++) {
        err[0] = '\0';
        f = tl_st_open_mem(raw, cut, err, sizeof err);
        if (f) fail_msg("file cut at %zu of %zu bytes was accepted", cut, len);
        assert_true(err[0] != '\0');
    }
    /* and from disk */
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(raw, 1, len - 3, fp), len - 3);
    fclose(fp);
    f = tl_st_open(path, err, sizeof err);
    assert_null(f);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "beyond the data area"));
    free(raw);
    unlink(path);
}

static void test_open_missing_file(void **state) {
    (void)state;
    char path[512], err[512] = "";
    tmp_path(path, sizeof path, "does-not-exist.safetensors");
    assert_null(tl_st_open(path, err, sizeof err));
    assert_non_null(strstr(err, "cannot open"));
}

/* ------------------------------------------------------------------ crash-safe write */

static void test_write_replaces_and_leaves_no_temp(void **state) {
    (void)state;
    char path[512], err[512] = "";
    tmp_path(path, sizeof path, "replace.safetensors");
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs("old contents, not safetensors", fp);
    fclose(fp);
    write_sample(path, 1);
    assert_int_equal(count_temp_files(path), 0);
    tl_st_file *f = tl_st_open(path, err, sizeof err);
    if (!f) fail_msg("%s", err);
    assert_int_equal(tl_st_count(f), 11);
    tl_st_close(f);

    /* a second write over it, with different contents */
    tl_st_writer *w = tl_st_writer_new();
    const int64_t s1[1] = {1};
    float x = 42.0f;
    assert_int_equal(tl_st_add(w, "only", TL_ST_F32, 1, s1, &x), 0);
    assert_int_equal(tl_st_write(w, path, err, sizeof err), 0);
    tl_st_writer_free(w);
    assert_int_equal(count_temp_files(path), 0);
    f = tl_st_open(path, err, sizeof err);
    assert_non_null(f);
    assert_int_equal(tl_st_count(f), 1);
    float y = 0;
    assert_int_equal(tl_st_read_f32(tl_st_get(f, "only"), &y), 0);
    assert_true(y == 42.0f);
    tl_st_close(f);
    unlink(path);
}

static void test_write_failure_reports_step(void **state) {
    (void)state;
    char path[512], err[512] = "";
    tmp_path(path, sizeof path, "no-such-dir/x.safetensors");
    tl_st_writer *w = tl_st_writer_new();
    assert_int_equal(tl_st_write(w, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "create the temporary file"));
    tl_st_writer_free(w);

    /* rename onto a non-empty directory fails: the temp file must be removed */
    char dir[512], inner[600];
    tmp_path(dir, sizeof dir, "dir.safetensors");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(inner, sizeof inner, "%s/keep", dir);
    FILE *fp = fopen(inner, "wb");
    assert_non_null(fp);
    fclose(fp);
    w = tl_st_writer_new();
    assert_int_equal(tl_st_set_meta(w, "k", "v"), 0);
    assert_int_equal(tl_st_write(w, dir, err, sizeof err), -1);
    assert_non_null(strstr(err, "rename"));
    assert_int_equal(count_temp_files(dir), 0);
    tl_st_writer_free(w);
    unlink(inner);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_no_metadata),
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_writer_refusals),
        cmocka_unit_test(test_refuse_short),
        cmocka_unit_test(test_refuse_header_too_long),
        cmocka_unit_test(test_refuse_not_json),
        cmocka_unit_test(test_refuse_not_object),
        cmocka_unit_test(test_refuse_missing_fields),
        cmocka_unit_test(test_refuse_unknown_dtype),
        cmocka_unit_test(test_refuse_bad_shape),
        cmocka_unit_test(test_refuse_offsets_order),
        cmocka_unit_test(test_refuse_offsets_beyond),
        cmocka_unit_test(test_refuse_size_mismatch),
        cmocka_unit_test(test_refuse_overlap),
        cmocka_unit_test(test_refuse_duplicate),
        cmocka_unit_test(test_refuse_bad_metadata),
        cmocka_unit_test(test_accepts_gaps_and_empty),
        cmocka_unit_test(test_refuse_truncated),
        cmocka_unit_test(test_open_missing_file),
        cmocka_unit_test(test_write_replaces_and_leaves_no_temp),
        cmocka_unit_test(test_write_failure_reports_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
