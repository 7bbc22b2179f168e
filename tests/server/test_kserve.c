/*
 * test_kserve.c: the KServe v2 JSON request parser and response writer.
 * Requests: UINT8 NHWC flat and nested, FP32 NCHW flat and nested, the
 * output's classification parameter, and every refusal with its JSON pointer
 * (datatype, dimensions, element counts, UINT8 range and integer-ness, FP32
 * finiteness, non-numbers, inputs missing or two, outputs two, binary data,
 * unknown fields, element limits checked before allocating, value budget).
 * Responses are parsed back with cJSON: FP32 scores round-trip and never
 * carry NaN/Inf, BYTES classification strings are "score:index:label" with
 * softmax probabilities best first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/kserve.h"

#define MAX_ELEMS ((size_t)1 << 20)

static int parse(const char *json, tld_ks_request *r, char *ptr, char *err) {
    /* exact-size heap copy without terminator: ASan catches reads past len */
    size_t n = strlen(json);
    char *b = malloc(n ? n : 1);
    assert_non_null(b);
    memcpy(b, json, n);
    int rc = tld_kserve_parse(b, n, MAX_ELEMS, r, ptr, 256, err, 256);
    free(b);
    return rc;
}

static void expect_err(const char *json, const char *pointer, const char *needle) {
    tld_ks_request r;
    char ptr[256] = "?", err[256] = "";
    int rc = parse(json, &r, ptr, err);
    if (rc != -1 || strcmp(ptr, pointer) != 0 || !strstr(err, needle)) {
        print_error("json %s\n  expected -1 '%s' '...%s...', got %d '%s' '%s'\n", json, pointer, needle, rc, ptr,
                    err);
        fail();
    }
    assert_null(r.u8);
    assert_null(r.f32);
}

static void test_uint8_flat_and_nested(void **state) {
    (void)state;
    const char *flat = "{\"id\":\"req-1\",\"inputs\":[{\"name\":\"image\",\"shape\":[2,1,2,3],\"datatype\":\"UINT8\","
                       "\"data\":[0,1,2,3,4,5,6,7,8,9,10,255]}],\"parameters\":{\"binary_data_output\":false,"
                       "\"other\":1}}";
    const char *nested = "{\"inputs\":[{\"name\":\"image\",\"shape\":[2,1,2,3],\"datatype\":\"UINT8\","
                         "\"data\":[[[[0,1,2],[3,4,5]]],[[[6,7,8],[9,10,255.0]]]]}]}";
    tld_ks_request a, b;
    char ptr[256], err[256];
    assert_int_equal(parse(flat, &a, ptr, err), 0);
    assert_int_equal(parse(nested, &b, ptr, err), 0);
    assert_string_equal(a.id, "req-1");
    assert_string_equal(b.id, "");
    assert_string_equal(a.input_name, "image");
    assert_int_equal(a.layout, TLD_KS_UINT8_NHWC);
    assert_int_equal(a.n, 2);
    assert_int_equal(a.h, 1);
    assert_int_equal(a.w, 2);
    assert_non_null(a.u8);
    assert_null(a.f32);
    static const uint8_t want[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255};
    assert_memory_equal(a.u8, want, 12);
    assert_memory_equal(b.u8, want, 12);
    assert_int_equal(b.n, 2);
    assert_int_equal(b.h, 1);
    assert_int_equal(b.w, 2);
    assert_string_equal(a.output_name, "");
    assert_int_equal(a.classification, 0);
    tld_kserve_request_free(&a);
    tld_kserve_request_free(&b);
}

static void test_fp32(void **state) {
    (void)state;
    const char *flat = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,3,2,2],\"datatype\":\"FP32\",\"parameters\":{},"
                       "\"data\":[0.5,-1.25,3e-2,2,-2.1179,2.64,0,1,2,3,4,5]}],"
                       "\"outputs\":[{\"name\":\"logits\"}]}";
    const char *nested = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,3,2,2],\"datatype\":\"FP32\","
                         "\"data\":[[[[0.5,-1.25],[3e-2,2]],[[-2.1179,2.64],[0,1]],[[2,3],[4,5]]]]}]}";
    static const float want[12] = {0.5f, -1.25f, 3e-2f, 2, -2.1179f, 2.64f, 0, 1, 2, 3, 4, 5};
    const char *js[2] = {flat, nested};
    for (int i = 0; i < 2; i++) {
        tld_ks_request r;
        char ptr[256], err[256];
        int rc = parse(js[i], &r, ptr, err);
        if (rc) print_error("%s %s\n", ptr, err);
        assert_int_equal(rc, 0);
        assert_int_equal(r.layout, TLD_KS_FP32_NCHW);
        assert_int_equal(r.n, 1);
        assert_int_equal(r.h, 2);
        assert_int_equal(r.w, 2);
        assert_null(r.u8);
        assert_non_null(r.f32);
        for (int k = 0; k < 12; k++) assert_true(r.f32[k] == want[k]);
        assert_string_equal(r.output_name, i == 0 ? "logits" : "");
        tld_kserve_request_free(&r);
    }
}

#define IN(shape, dt, data) "{\"inputs\":[{\"name\":\"i\",\"shape\":" shape ",\"datatype\":\"" dt "\",\"data\":" data "}]}"

static void test_input_refusals(void **state) {
    (void)state;
    expect_err(IN("[1,1,1,3]", "INT32", "[1,2,3]"), "/inputs/0/datatype", "datatype must be UINT8 or FP32");
    expect_err("{\"inputs\":[{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":7,\"data\":[1,2,3]}]}",
               "/inputs/0/datatype", "must be a string");
    expect_err(IN("[1,1,3]", "UINT8", "[1,2,3]"), "/inputs/0/shape", "must have 4 dimensions");
    expect_err(IN("[1,1,1,1,3]", "UINT8", "[1,2,3]"), "/inputs/0/shape", "must have 4 dimensions");
    expect_err(IN("3", "UINT8", "[1,2,3]"), "/inputs/0/shape", "must be an array");
    expect_err(IN("[1,1,0,3]", "UINT8", "[]"), "/inputs/0/shape/2", "positive integer");
    expect_err(IN("[1,-1,1,3]", "UINT8", "[]"), "/inputs/0/shape/1", "positive integer");
    expect_err(IN("[1.5,1,1,3]", "UINT8", "[]"), "/inputs/0/shape/0", "positive integer");
    expect_err(IN("[1,\"1\",1,3]", "UINT8", "[]"), "/inputs/0/shape/1", "positive integer");
    expect_err(IN("[1,1,1,4]", "UINT8", "[1,2,3,4]"), "/inputs/0/shape/3", "must be 3");
    expect_err(IN("[1,1,2,2]", "FP32", "[1,2,3,4]"), "/inputs/0/shape/1", "must be 3");
    expect_err(IN("[1,2,2,3]", "UINT8", "[1,2,3,4,5,6,7,8,9,10,11]"), "/inputs/0/data",
               "data has 11 elements, shape needs 12");
    expect_err(IN("[1,1,1,3]", "UINT8", "[]"), "/inputs/0/data", "data has 0 elements, shape needs 3");
    expect_err(IN("[1,1,2,3]", "UINT8", "[[[[1,2,3],[4,5,6]]], 1]"), "/inputs/0/data", "has more than 1 items, shape[0] is 1");
    expect_err(IN("[1,1,2,3]", "UINT8", "[[[[1,2,3],[4,5]]]]"), "/inputs/0/data/0/0/1", "has 2 items, shape[3] is 3");
    expect_err(IN("[1,1,2,3]", "UINT8", "[[[[1,2,3]]]]"), "/inputs/0/data/0/0", "has 1 items, shape[2] is 2");
    expect_err(IN("[1,1,1,3]", "UINT8", "[[[1,2,3]]]"), "/inputs/0/data/0/0", "has more than 1 items, shape[2] is 1");
    expect_err(IN("[1,1,1,3]", "UINT8", "[[[1]]]"), "/inputs/0/data/0/0/0", "must be an array");
    expect_err(IN("[1,1,1,3]", "UINT8", "[0,[1],2]"), "/inputs/0/data/1", "must be a number");
    expect_err(IN("[1,1,1,3]", "UINT8", "[[[[1,2,[3]]]]]"), "/inputs/0/data/0/0/0/2", "must be a number");
    expect_err(IN("[1,1,2,3]", "UINT8", "[0,1,2,3,4,300]"), "/inputs/0/data/5", "value 300 out of range for UINT8");
    expect_err(IN("[1,1,2,3]", "UINT8", "[0,1,2,3,-1,3]"), "/inputs/0/data/4", "value -1 out of range for UINT8");
    expect_err(IN("[1,1,2,3]", "UINT8", "[0,1,2.5,3,4,5]"), "/inputs/0/data/2", "value 2.5 is not an integer");
    expect_err(IN("[1,1,2,3]", "UINT8", "[0,1,2,3,4,1e999]"), "/inputs/0/data/5", "out of range for UINT8");
    expect_err(IN("[1,1,2,3]", "UINT8", "[0,1,\"2\",3,4,5]"), "/inputs/0/data/2", "must be a number");
    expect_err(IN("[1,1,2,3]", "UINT8", "[0,1,2,true,4,5]"), "/inputs/0/data/3", "must be a number");
    expect_err(IN("[1,1,2,3]", "UINT8", "[0,1,2,3,null,5]"), "/inputs/0/data/4", "must be a number");
    expect_err(IN("[1,1,2,3]", "UINT8", "{}"), "/inputs/0/data", "must be an array");
    expect_err(IN("[1,3,1,1]", "FP32", "[0,1e39,2]"), "/inputs/0/data/1", "not a finite FP32");
    expect_err(IN("[1,3,1,1]", "FP32", "[0,1,-1e999]"), "/inputs/0/data/2", "not a finite FP32");
    expect_err(IN("[1,3,1,1]", "FP32", "[0,1,\"x\"]"), "/inputs/0/data/2", "must be a number");
    expect_err("{\"inputs\":[{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\"}]}", "/inputs/0/data",
               "is required");
    expect_err("{\"inputs\":[{\"name\":\"i\",\"datatype\":\"UINT8\",\"data\":[1,2,3]}]}", "/inputs/0/shape",
               "is required");
    expect_err("{\"inputs\":[{\"shape\":[1,1,1,3],\"datatype\":\"UINT8\",\"data\":[1,2,3]}]}", "/inputs/0/name",
               "is required");
    expect_err("{\"inputs\":[{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\",\"data\":[1,2,3],"
               "\"extra\":1}]}",
               "/inputs/0/extra", "unknown field");
    expect_err("{\"inputs\":[{\"name\":\"i\",\"name\":\"j\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\","
               "\"data\":[1,2,3]}]}",
               "/inputs/0/name", "duplicate field");
    expect_err("{\"inputs\":[{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\",\"data\":[1,2,3],"
               "\"parameters\":{\"binary_data_size\":3}}]}",
               "/inputs/0/parameters/binary_data_size", "not supported");
}

static void test_request_refusals(void **state) {
    (void)state;
    const char *one = "{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\",\"data\":[1,2,3]}";
    char js[1024];
    expect_err("{}", "/inputs", "is required");
    expect_err("{\"inputs\":[]}", "/inputs", "exactly one input, got 0");
    snprintf(js, sizeof js, "{\"inputs\":[%s,%s]}", one, one);
    expect_err(js, "/inputs", "exactly one input, got 2");
    expect_err("{\"inputs\":{}}", "/inputs", "must be an array");
    expect_err("{\"inputs\":[3]}", "/inputs/0", "must be an object");
    expect_err("[]", "", "must be a JSON object");
    expect_err("{\"inputs\":[", "", "invalid JSON");
    expect_err("", "", "invalid JSON");
    snprintf(js, sizeof js, "{\"inputs\":[%s]} x", one);
    expect_err(js, "", "text after");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"bogus\":1}", one);
    expect_err(js, "/bogus", "unknown field");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"a/b~\":1}", one);
    expect_err(js, "/a~1b~0", "unknown field");
    snprintf(js, sizeof js, "{\"id\":5,\"inputs\":[%s]}", one);
    expect_err(js, "/id", "must be a string");
    char longid[300];
    memset(longid, 'a', 200);
    longid[200] = 0;
    snprintf(js, sizeof js, "{\"id\":\"%s\",\"inputs\":[%s]}", longid, one);
    expect_err(js, "/id", "at most 127 characters");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"parameters\":{\"binary_data_output\":true}}", one);
    expect_err(js, "/parameters/binary_data_output", "not supported");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"parameters\":{\"binary_data_output\":1}}", one);
    expect_err(js, "/parameters/binary_data_output", "must be a boolean");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"parameters\":[]}", one);
    expect_err(js, "/parameters", "must be an object");
}

static void test_outputs(void **state) {
    (void)state;
    const char *one = "{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\",\"data\":[1,2,3]}";
    char js[1024];
    tld_ks_request r;
    char ptr[256], err[256];
    snprintf(js, sizeof js,
             "{\"inputs\":[%s],\"outputs\":[{\"name\":\"probs\",\"parameters\":{\"classification\":5,"
             "\"binary_data\":false}}]}",
             one);
    assert_int_equal(parse(js, &r, ptr, err), 0);
    assert_string_equal(r.output_name, "probs");
    assert_int_equal(r.classification, 5);
    tld_kserve_request_free(&r);
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"outputs\":[]}", one);
    assert_int_equal(parse(js, &r, ptr, err), 0);
    assert_string_equal(r.output_name, "");
    assert_int_equal(r.classification, 0);
    tld_kserve_request_free(&r);
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"outputs\":[{\"name\":\"s\",\"parameters\":{\"classification\":2.0}}]}",
             one);
    assert_int_equal(parse(js, &r, ptr, err), 0);
    assert_int_equal(r.classification, 2);
    tld_kserve_request_free(&r);

    static const char *const bad[] = {"0", "-3", "2.5", "\"3\"", "true", "null", "1e10"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(js, sizeof js,
                 "{\"inputs\":[%s],\"outputs\":[{\"name\":\"s\",\"parameters\":{\"classification\":%s}}]}", one,
                 bad[i]);
        expect_err(js, "/outputs/0/parameters/classification", i == 6 ? "at most" : "integer >= 1");
    }
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"outputs\":[{\"name\":\"a\"},{\"name\":\"b\"}]}", one);
    expect_err(js, "/outputs", "at most one output");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"outputs\":[{\"parameters\":{}}]}", one);
    expect_err(js, "/outputs/0/name", "is required");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"outputs\":[{\"name\":\"a\",\"x\":1}]}", one);
    expect_err(js, "/outputs/0/x", "unknown field");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"outputs\":[{\"name\":\"a\",\"parameters\":{\"binary_data\":true}}]}",
             one);
    expect_err(js, "/outputs/0/parameters/binary_data", "not supported");
    snprintf(js, sizeof js, "{\"inputs\":[%s],\"outputs\":{}}", one);
    expect_err(js, "/outputs", "must be an array");
}

/* Shapes past max_elems are refused from the shape alone: under ASan a huge malloc would abort the test. */
static void test_limits(void **state) {
    (void)state;
    expect_err(IN("[100000,100000,100000,3]", "UINT8", "[1]"), "/inputs/0/shape", "more than 1048576 elements");
    expect_err(IN("[2147483647,2147483647,2147483647,3]", "UINT8", "[1]"), "/inputs/0/shape", "more than");
    expect_err(IN("[1,3,2147483647,2147483647]", "FP32", "[1]"), "/inputs/0/shape", "more than");
    expect_err(IN("[1,1,1,1e300]", "UINT8", "[1]"), "/inputs/0/shape/3", "at most");
    expect_err(IN("[1,1024,342,3]", "UINT8", "[1]"), "/inputs/0/shape", "more than 1048576"); /* 1050624 */
    /* exactly max_elems passes the shape check (then fails on the data count) */
    expect_err(IN("[1,1024,341,3]", "UINT8", "[1]"), "/inputs/0/data", "data has 1 elements, shape needs 1047552");

    /* more JSON values than max_elems can need: refused before cJSON builds the tree */
    size_t cap = 256 + 3 * 5000;
    char *js = malloc(cap);
    assert_non_null(js);
    size_t n = (size_t)snprintf(js, cap, "{\"inputs\":[{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\",\"data\":[");
    for (int i = 0; i < 5000; i++) n += (size_t)snprintf(js + n, cap - n, i ? ",0" : "0");
    n += (size_t)snprintf(js + n, cap - n, "]}]}");
    tld_ks_request r;
    char ptr[256] = "?", err[256] = "";
    assert_int_equal(tld_kserve_parse(js, n, 3, &r, ptr, sizeof ptr, err, sizeof err), -1);
    assert_string_equal(ptr, "");
    assert_non_null(strstr(err, "JSON values"));
    assert_int_equal(tld_kserve_parse(js, n, MAX_ELEMS, &r, ptr, sizeof ptr, err, sizeof err), -1);
    assert_string_equal(ptr, "/inputs/0/data");
    /* commas and brackets inside strings (with escaped quotes) do not count */
    n = (size_t)snprintf(js, cap, "{\"parameters\":{\"note\":\"\\\"");
    for (int i = 0; i < 5000; i++) n += (size_t)snprintf(js + n, cap - n, ",[{");
    n += (size_t)snprintf(js + n, cap - n,
                          "\"},\"inputs\":[{\"name\":\"i\",\"shape\":[1,1,1,3],\"datatype\":\"UINT8\",\"data\":[1,2,3]}]}");
    assert_int_equal(tld_kserve_parse(js, n, 3, &r, ptr, sizeof ptr, err, sizeof err), 0);
    assert_int_equal(r.u8[2], 3);
    tld_kserve_request_free(&r);
    free(js);
}

/* ---- responses ---- */

static cJSON *parse_resp(char *s) {
    assert_non_null(s);
    assert_null(strstr(s, "nan"));
    assert_null(strstr(s, "inf"));
    assert_null(strstr(s, "NaN"));
    assert_null(strstr(s, "null"));
    cJSON *o = cJSON_Parse(s);
    assert_non_null(o);
    return o;
}

static const cJSON *only_output(const cJSON *o) {
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(o, "outputs");
    assert_true(cJSON_IsArray(outs));
    assert_int_equal(cJSON_GetArraySize(outs), 1);
    return cJSON_GetArrayItem(outs, 0);
}

static void check_shape(const cJSON *out, int a, int b) {
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(out, "shape");
    assert_true(cJSON_IsArray(sh));
    assert_int_equal(cJSON_GetArraySize(sh), 2);
    assert_int_equal(cJSON_GetArrayItem(sh, 0)->valuedouble, a);
    assert_int_equal(cJSON_GetArrayItem(sh, 1)->valuedouble, b);
}

static void test_response_scores(void **state) {
    (void)state;
    const float s[6] = {0.1f, -3.25e-7f, 123456.78f, NAN, INFINITY, -INFINITY};
    char *txt = tld_kserve_response("lvvit \"t\"", "abc", 2, 3, s, NULL, 0, NULL);
    cJSON *o = parse_resp(txt);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "model_name")->valuestring, "lvvit \"t\"");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "model_version")->valuestring, "1");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "id")->valuestring, "abc");
    const cJSON *out = only_output(o);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(out, "name")->valuestring, "scores");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(out, "datatype")->valuestring, "FP32");
    check_shape(out, 2, 3);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(out, "data");
    assert_int_equal(cJSON_GetArraySize(d), 6);
    for (int i = 0; i < 6; i++) {
        float want = isfinite(s[i]) ? s[i] : 0.0f;
        float got = (float)cJSON_GetArrayItem(d, i)->valuedouble;
        assert_true(got == want); /* round-trips exactly */
    }
    assert_non_null(strstr(txt, "0.1,")); /* shortest digits, not 0.100000001 */
    cJSON_Delete(o);
    free(txt);

    /* no id, named output */
    txt = tld_kserve_response("m", NULL, 1, 3, s, NULL, 0, "logits");
    o = parse_resp(txt);
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "id"));
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(only_output(o), "name")->valuestring, "logits");
    cJSON_Delete(o);
    free(txt);
    assert_null(tld_kserve_response("m", NULL, 1, 0, s, NULL, 0, NULL));
    assert_null(tld_kserve_response("m", NULL, -1, 3, s, NULL, 0, NULL));
    assert_null(tld_kserve_response("m", NULL, 1, 3, NULL, NULL, 0, NULL));
    assert_null(tld_kserve_response("m", NULL, 1, 3, s, NULL, -1, NULL));
}

static void expect_class(const cJSON *d, int i, double p, int idx, const char *label) {
    char want[256];
    snprintf(want, sizeof want, "%.6f:%d:%s", p, idx, label);
    const cJSON *it = cJSON_GetArrayItem(d, i);
    assert_true(cJSON_IsString(it));
    if (strcmp(it->valuestring, want) != 0) {
        print_error("item %d: got '%s', want '%s'\n", i, it->valuestring, want);
        fail();
    }
}

static void test_response_classification(void **state) {
    (void)state;
    /* row 0: scores 1, 3, 2; row 1: large scores (stability), 1000 and 999 */
    const float s[6] = {1, 3, 2, 1000, 999, -1000};
    const char *const labels[3] = {"cat", "dog \"big\"", "bird"};
    char *txt = tld_kserve_response("m", "x", 2, 3, s, labels, 2, "out");
    cJSON *o = parse_resp(txt);
    const cJSON *out = only_output(o);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(out, "name")->valuestring, "out");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(out, "datatype")->valuestring, "BYTES");
    check_shape(out, 2, 2);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(out, "data");
    assert_int_equal(cJSON_GetArraySize(d), 4);
    double z = exp(1.0) + exp(3.0) + exp(2.0);
    expect_class(d, 0, exp(3.0) / z, 1, "dog \"big\"");
    expect_class(d, 1, exp(2.0) / z, 2, "bird");
    double z2 = 1 + exp(-1.0) + exp(-2000.0);
    expect_class(d, 2, 1 / z2, 0, "cat");
    expect_class(d, 3, exp(-1.0) / z2, 1, "dog \"big\"");
    cJSON_Delete(o);
    free(txt);

    /* no labels: the label is the index; k past K is clamped; NaN scores rank last; ties: lower index first */
    const float t[4] = {NAN, 0.5f, 0.5f, -INFINITY};
    txt = tld_kserve_response("m", NULL, 1, 4, t, NULL, 10, NULL);
    o = parse_resp(txt);
    out = only_output(o);
    check_shape(out, 1, 4);
    d = cJSON_GetObjectItemCaseSensitive(out, "data");
    assert_int_equal(cJSON_GetArraySize(d), 4);
    expect_class(d, 0, 0.5, 1, "1");
    expect_class(d, 1, 0.5, 2, "2");
    expect_class(d, 2, 0.0, 0, "0");
    expect_class(d, 3, 0.0, 3, "3");
    cJSON_Delete(o);
    free(txt);

    /* invalid UTF-8 in a label becomes '?', so the document stays valid */
    const char *const bad[2] = {"ok\xc3\xa9", "x\xff\xc3"};
    const float u[2] = {2, 1};
    txt = tld_kserve_response("m", NULL, 1, 2, u, bad, 2, NULL);
    o = parse_resp(txt);
    d = cJSON_GetObjectItemCaseSensitive(only_output(o), "data");
    expect_class(d, 0, 1 / (1 + exp(-1.0)), 0, "ok\xc3\xa9");
    expect_class(d, 1, exp(-1.0) / (1 + exp(-1.0)), 1, "x??");
    cJSON_Delete(o);
    free(txt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uint8_flat_and_nested),
        cmocka_unit_test(test_fp32),
        cmocka_unit_test(test_input_refusals),
        cmocka_unit_test(test_request_refusals),
        cmocka_unit_test(test_outputs),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_response_scores),
        cmocka_unit_test(test_response_classification),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
