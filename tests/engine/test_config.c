/*
 * test_config.c: model configurations (engine/model/config.c) and the size-related
 * entry points of the model and context.
 *
 * Presets carry the sizes of docs/METHOD.md section 2; tl_config_validate
 * refuses every bad field with a message naming it; tl_config_from_json
 * (preset + overrides, unknown / mistyped / non-integer / missing fields,
 * invalid JSON) and the tl_config_to_json round trip; tl_model_new refusing an
 * invalid config; the forward FLOPs and the published parameter count of
 * lvvit_t; tl_ctx_new refusing a batch of 0. Single-threaded.
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

#include "tokenlab/model.h"

/* A small valid config the refusal tests start from. */
static tl_config small_config(void) {
    tl_config c = {.img_size = 32, .patch_size = 8, .embed_dim = 48, .depth = 2, .num_heads = 3, .mlp_ratio = 3.0f,
                   .stem_channels = 16, .skip_lam = 2.0f, .num_classes = 7, .drop_path_rate = 0.1f};
    return c;
}

static void expect_err_contains(const char *err, const char *want) {
    if (!strstr(err, want)) fail_msg("message \"%s\" does not contain \"%s\"", err, want);
}

/* c is refused by tl_config_validate with a message containing field. */
static void expect_invalid(const tl_config *c, const char *field) {
    char err[TL_ERR_LEN] = "";
    if (tl_config_validate(c, err, sizeof err) != -1) fail_msg("config with a bad %s was accepted", field);
    expect_err_contains(err, field);
}

/* tl_config_from_json(json) fails with a message containing want; out is untouched. */
static void expect_json_refused(const char *json, const char *want) {
    tl_config out, sentinel;
    memset(&out, 0x5a, sizeof out);
    sentinel = out;
    char err[TL_ERR_LEN] = "";
    if (tl_config_from_json(json, &out, err, sizeof err) != -1) fail_msg("accepted: %s", json);
    if (want) expect_err_contains(err, want);
    assert_true(err[0] != '\0');
    assert_memory_equal(&out, &sentinel, sizeof out);
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

/* ------------------------------------------------------------------ presets */

typedef struct {
    const char *name;
    int D, depth, heads, hidden, stem;
    float skip;
    int img;
} preset_sizes;

static const preset_sizes DOC[] = {
    {"lvvit_t", 240, 12, 4, 720, 64, 1.0f, 224},
    {"lvvit_s", 384, 16, 6, 1152, 64, 2.0f, 224},
    {"lvvit_m", 512, 20, 8, 1536, 64, 2.0f, 224},
    {"lvvit_l", 768, 24, 12, 2304, 128, 3.0f, 448},
};

static void test_presets(void **state) {
    (void)state;
    const char *const *names = tl_config_preset_names();
    assert_non_null(names);
    int n = 0;
    while (names[n]) n++;
    assert_int_equal(n, 4);
    for (size_t i = 0; i < sizeof DOC / sizeof DOC[0]; i++) {
        const preset_sizes *d = &DOC[i];
        assert_string_equal(names[i], d->name);
        tl_config c;
        memset(&c, 0, sizeof c);
        assert_int_equal(tl_config_preset(d->name, &c), 0);
        char err[TL_ERR_LEN] = "";
        if (tl_config_validate(&c, err, sizeof err) != 0) fail_msg("preset %s invalid: %s", d->name, err);
        assert_int_equal(c.embed_dim, d->D);
        assert_int_equal(c.depth, d->depth);
        assert_int_equal(c.num_heads, d->heads);
        assert_int_equal(tl_config_hidden(&c), d->hidden);
        assert_int_equal(c.stem_channels, d->stem);
        assert_true(c.skip_lam == d->skip);
        assert_int_equal(c.img_size, d->img);
        assert_int_equal(c.patch_size, 16);
        assert_int_equal(c.num_classes, 1000);
        assert_true(c.mlp_ratio == 3.0f);
        assert_int_equal(tl_config_grid(&c), d->img / 16);
        assert_int_equal(tl_config_tokens(&c), (d->img / 16) * (d->img / 16));
    }
    tl_config c;
    assert_int_equal(tl_config_preset("lvvit_x", &c), -1);
    assert_int_equal(tl_config_preset("", &c), -1);
    assert_int_equal(tl_config_preset(NULL, &c), -1);
}

/* ------------------------------------------------------------------ validation */

static void test_validate_structure(void **state) {
    (void)state;
    char err[TL_ERR_LEN] = "";
    tl_config c = small_config();
    assert_int_equal(tl_config_validate(&c, err, sizeof err), 0);

    c = small_config();
    c.img_size = 36; /* 36 % 8 != 0 */
    expect_invalid(&c, "img_size");
    c = small_config();
    c.patch_size = 7; /* odd; 7 does not divide 32 either, oddness is checked */
    expect_invalid(&c, "patch_size");
    c = small_config();
    c.img_size = 30;
    c.patch_size = 3; /* odd and dividing img_size */
    expect_invalid(&c, "patch_size");
    c = small_config();
    c.num_heads = 5; /* 48 % 5 != 0 */
    expect_invalid(&c, "embed_dim");
    c = small_config();
    c.embed_dim = 50; /* 50 % 3 != 0 */
    expect_invalid(&c, "embed_dim");
}

static void test_validate_nonpositive_ints(void **state) {
    (void)state;
    static const struct {
        const char *field;
        size_t off;
    } INTS[] = {
        {"img_size", offsetof(tl_config, img_size)},       {"patch_size", offsetof(tl_config, patch_size)},
        {"embed_dim", offsetof(tl_config, embed_dim)},     {"depth", offsetof(tl_config, depth)},
        {"num_heads", offsetof(tl_config, num_heads)},     {"stem_channels", offsetof(tl_config, stem_channels)},
        {"num_classes", offsetof(tl_config, num_classes)},
    };
    static const int BAD[] = {0, -1, -2, -16, INT32_MIN};
    for (size_t f = 0; f < sizeof INTS / sizeof INTS[0]; f++) {
        for (size_t k = 0; k < sizeof BAD / sizeof BAD[0]; k++) {
            tl_config c = small_config();
            *(int *)((char *)&c + INTS[f].off) = BAD[k];
            char err[TL_ERR_LEN] = "";
            if (tl_config_validate(&c, err, sizeof err) != -1)
                fail_msg("%s = %d accepted", INTS[f].field, BAD[k]);
            if (!strstr(err, INTS[f].field)) fail_msg("%s = %d: message \"%s\" does not name it", INTS[f].field, BAD[k], err);
        }
    }
}

static void test_validate_floats(void **state) {
    (void)state;
    static const float BAD_POS[] = {0.0f, -0.0f, -1.0f, -1e-7f, NAN, -INFINITY};
    for (size_t k = 0; k < sizeof BAD_POS / sizeof BAD_POS[0]; k++) {
        tl_config c = small_config();
        c.mlp_ratio = BAD_POS[k];
        expect_invalid(&c, "mlp_ratio");
        c = small_config();
        c.skip_lam = BAD_POS[k];
        expect_invalid(&c, "skip_lam");
    }
    static const float BAD_DPR[] = {-1e-6f, -0.5f, 1.0f, 1.5f, NAN, INFINITY};
    for (size_t k = 0; k < sizeof BAD_DPR / sizeof BAD_DPR[0]; k++) {
        tl_config c = small_config();
        c.drop_path_rate = BAD_DPR[k];
        expect_invalid(&c, "drop_path_rate");
    }
    /* the boundaries that are valid */
    char err[TL_ERR_LEN] = "";
    tl_config c = small_config();
    c.drop_path_rate = 0.0f;
    assert_int_equal(tl_config_validate(&c, err, sizeof err), 0);
    c.drop_path_rate = 0.999f;
    assert_int_equal(tl_config_validate(&c, err, sizeof err), 0);
    c.skip_lam = 0.5f;
    c.mlp_ratio = 0.5f;
    assert_int_equal(tl_config_validate(&c, err, sizeof err), 0);
    /* a NULL or empty error buffer is fine */
    c.depth = 0;
    assert_int_equal(tl_config_validate(&c, NULL, 0), -1);
}

/* ------------------------------------------------------------------ JSON */

static void test_json_preset_overrides(void **state) {
    (void)state;
    char err[TL_ERR_LEN] = "";
    tl_config c, want;
    assert_int_equal(tl_config_preset("lvvit_s", &want), 0);
    if (tl_config_from_json("{\"preset\":\"lvvit_s\"}", &c, err, sizeof err) != 0) fail_msg("%s", err);
    assert_config_equal(&c, &want);

    const char *js = "{\"preset\":\"lvvit_t\",\"img_size\":32,\"num_classes\":10,\"drop_path_rate\":0.0,"
                     "\"skip_lam\":1.5, \"stem_channels\": 8}";
    if (tl_config_from_json(js, &c, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(tl_config_preset("lvvit_t", &want), 0);
    want.img_size = 32;
    want.num_classes = 10;
    want.drop_path_rate = 0.0f;
    want.skip_lam = 1.5f;
    want.stem_channels = 8;
    assert_config_equal(&c, &want);

    /* integers written as 32.0 are integers */
    if (tl_config_from_json("{\"preset\":\"lvvit_t\",\"img_size\":32.0}", &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.img_size, 32);

    /* all fields, no preset */
    js = "{\"img_size\":32,\"patch_size\":8,\"embed_dim\":48,\"depth\":2,\"num_heads\":3,\"mlp_ratio\":3,"
         "\"stem_channels\":16,\"skip_lam\":2,\"num_classes\":7,\"drop_path_rate\":0.1}";
    if (tl_config_from_json(js, &c, err, sizeof err) != 0) fail_msg("%s", err);
    want = small_config();
    assert_config_equal(&c, &want);

    /* overrides are validated: an override that breaks a preset is refused */
    expect_json_refused("{\"preset\":\"lvvit_t\",\"patch_size\":12}", "img_size");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"num_heads\":7}", "embed_dim");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"depth\":0}", "depth");
    expect_json_refused("{\"preset\":\"lvvit_q\"}", "preset");
    expect_json_refused("{\"preset\":3}", "preset");
}

static void test_json_refusals(void **state) {
    (void)state;
    /* unknown field, named */
    expect_json_refused("{\"preset\":\"lvvit_t\",\"embed_dims\":240}", "embed_dims");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"drop_rate\":0.1}", "drop_rate");
    /* wrong types, naming the field */
    expect_json_refused("{\"preset\":\"lvvit_t\",\"img_size\":\"224\"}", "img_size");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"mlp_ratio\":[3]}", "mlp_ratio");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"skip_lam\":true}", "skip_lam");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"num_classes\":null}", "num_classes");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"depth\":{}}", "depth");
    /* non-integers for int fields */
    expect_json_refused("{\"preset\":\"lvvit_t\",\"depth\":2.5}", "depth");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"num_heads\":4.0001}", "num_heads");
    expect_json_refused("{\"preset\":\"lvvit_t\",\"img_size\":1e12}", "img_size");
    /* missing fields without a preset: the first missing one (in field order) is named */
    expect_json_refused("{}", "img_size");
    expect_json_refused("{\"img_size\":32,\"patch_size\":8,\"embed_dim\":48,\"depth\":2,\"mlp_ratio\":3,"
                        "\"stem_channels\":16,\"skip_lam\":2,\"drop_path_rate\":0.1}",
                        "num_heads");
    expect_json_refused("{\"img_size\":32,\"patch_size\":8,\"embed_dim\":48,\"depth\":2,\"num_heads\":3,"
                        "\"mlp_ratio\":3,\"stem_channels\":16,\"skip_lam\":2,\"num_classes\":7}",
                        "drop_path_rate");
    /* invalid JSON and non-objects */
    expect_json_refused("", NULL);
    expect_json_refused("{", NULL);
    expect_json_refused("{\"preset\":\"lvvit_t\",}", NULL);
    expect_json_refused("[1,2]", NULL);
    expect_json_refused("42", NULL);
    expect_json_refused("null", NULL);
}

/* Strict JSON: text after the object and duplicate keys are refused (cJSON
 * alone would ignore trailing bytes and let a repeated key win silently). */
static void test_json_strict(void **state) {
    (void)state;
    static const char *const CASES[][2] = {
        {"{\"preset\":\"lvvit_t\"} trailing", NULL},
        {"{\"preset\":\"lvvit_t\"}{}", NULL},
        {"{\"preset\":\"lvvit_t\",\"img_size\":32,\"img_size\":64}", "img_size"},
        {"{\"preset\":\"lvvit_t\",\"preset\":\"lvvit_s\"}", "preset"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        tl_config c;
        char err[TL_ERR_LEN] = "";
        assert_int_equal(tl_config_from_json(CASES[i][0], &c, err, sizeof err), -1);
        if (CASES[i][1]) expect_err_contains(err, CASES[i][1]);
    }
}

static void test_json_round_trip(void **state) {
    (void)state;
    tl_config cs[6];
    int n = 0;
    for (const char *const *p = tl_config_preset_names(); *p; p++) assert_int_equal(tl_config_preset(*p, &cs[n++]), 0);
    cs[n++] = small_config();
    tl_config odd = {.img_size = 48, .patch_size = 8, .embed_dim = 36, .depth = 3, .num_heads = 3,
                     .mlp_ratio = 2.6666667f, .stem_channels = 12, .skip_lam = 0.3f, .num_classes = 3,
                     .drop_path_rate = 0.123456789f};
    cs[n++] = odd;
    for (int i = 0; i < n; i++) {
        char buf[1024], err[TL_ERR_LEN] = "";
        int len = tl_config_to_json(&cs[i], buf, sizeof buf);
        assert_true(len > 0);
        assert_int_equal((size_t)len, strlen(buf));
        tl_config back;
        if (tl_config_from_json(buf, &back, err, sizeof err) != 0) fail_msg("%s: %s", buf, err);
        assert_config_equal(&back, &cs[i]);
        /* every field is written */
        static const char *const F[] = {"img_size", "patch_size", "embed_dim", "depth", "num_heads",
                                        "mlp_ratio", "stem_channels", "skip_lam", "num_classes", "drop_path_rate"};
        for (size_t f = 0; f < sizeof F / sizeof F[0]; f++) assert_non_null(strstr(buf, F[f]));
        /* a too-small buffer is reported, not overrun */
        char small[16];
        memset(small, 0x7f, sizeof small);
        assert_int_equal(tl_config_to_json(&cs[i], small, 10), -1);
        for (size_t k = 10; k < sizeof small; k++) assert_int_equal(small[k], 0x7f);
    }
}

/* ------------------------------------------------------------------ model and context */

static void test_model_new_refuses_invalid(void **state) {
    (void)state;
    tl_config c = small_config();
    c.num_heads = 5;
    char want[TL_ERR_LEN] = "", err[TL_ERR_LEN] = "";
    assert_int_equal(tl_config_validate(&c, want, sizeof want), -1);
    assert_null(tl_model_new(&c, 1, err, sizeof err));
    assert_string_equal(err, want);
    c = small_config();
    c.drop_path_rate = 1.0f;
    assert_null(tl_model_new(&c, 1, err, sizeof err));
    expect_err_contains(err, "drop_path_rate");
    c = small_config();
    c.stem_channels = 0;
    assert_null(tl_model_new(&c, 1, err, sizeof err));
    expect_err_contains(err, "stem_channels");
}

static void test_flops_lvvit_t(void **state) {
    (void)state;
    tl_config c;
    assert_int_equal(tl_config_preset("lvvit_t", &c), 0);
    double f = tl_config_forward_flops(&c), want = 2.0 * 2.87e9;
    if (fabs(f - want) > 0.01 * want) fail_msg("lvvit_t forward FLOPs %.4g, expected %.4g within 1%%", f, want);
    /* the published MACs of S and M (docs/METHOD.md section 2) within 2% */
    static const struct {
        const char *name;
        double macs;
    } PUB[] = {{"lvvit_s", 6.57e9}, {"lvvit_m", 12.74e9}};
    for (size_t i = 0; i < sizeof PUB / sizeof PUB[0]; i++) {
        assert_int_equal(tl_config_preset(PUB[i].name, &c), 0);
        f = tl_config_forward_flops(&c);
        if (fabs(f - 2 * PUB[i].macs) > 0.02 * 2 * PUB[i].macs)
            fail_msg("%s forward FLOPs %.4g, expected %.4g", PUB[i].name, f, 2 * PUB[i].macs);
    }
}

static void test_num_params_lvvit_t(void **state) {
    (void)state;
    tl_config c;
    assert_int_equal(tl_config_preset("lvvit_t", &c), 0);
    char err[TL_ERR_LEN] = "";
    tl_model *m = tl_model_new(&c, 1, err, sizeof err);
    if (!m) fail_msg("tl_model_new: %s", err);
    assert_int_equal(tl_model_num_params(m), 8534720);
    /* the same count from the tensor table; running stats are buffers */
    size_t n = 0, nbuf = 0;
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind == TL_TENSOR_PARAM) n += t->numel;
        else nbuf += t->numel;
    }
    assert_int_equal(n, 8534720);
    assert_int_equal(nbuf, 2 * 3 * 64);
    assert_non_null(tl_model_find(m, "cls_token"));
    assert_non_null(tl_model_find(m, "pos_embed"));
    assert_int_equal(tl_model_find(m, "pos_embed")->numel, 197 * 240);
    assert_int_equal(tl_model_find(m, "patch_embed.bn1.running_var")->kind, TL_TENSOR_BUFFER);
    assert_int_equal(tl_model_find(m, "patch_embed.bn1.weight")->kind, TL_TENSOR_PARAM);
    tl_model_free(m);
}

static void test_ctx_refuses_batch0(void **state) {
    (void)state;
    tl_config c = small_config();
    char err[TL_ERR_LEN] = "";
    tl_model *m = tl_model_new(&c, 1, err, sizeof err);
    if (!m) fail_msg("tl_model_new: %s", err);
    static const int BAD[] = {0, -1, INT32_MIN};
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        for (int training = 0; training < 2; training++) {
            err[0] = 0;
            assert_null(tl_ctx_new(m, BAD[i], training, 1, err, sizeof err));
            expect_err_contains(err, "batch");
        }
    }
    tl_ctx *x = tl_ctx_new(m, 1, 0, 1, err, sizeof err);
    if (!x) fail_msg("tl_ctx_new(batch 1): %s", err);
    assert_int_equal(tl_ctx_batch(x), 1);
    tl_ctx_free(x);
    tl_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_validate_structure),
        cmocka_unit_test(test_validate_nonpositive_ints),
        cmocka_unit_test(test_validate_floats),
        cmocka_unit_test(test_json_preset_overrides),
        cmocka_unit_test(test_json_refusals),
        cmocka_unit_test(test_json_strict),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_model_new_refuses_invalid),
        cmocka_unit_test(test_flops_lvvit_t),
        cmocka_unit_test(test_num_params_lvvit_t),
        cmocka_unit_test(test_ctx_refuses_batch0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
