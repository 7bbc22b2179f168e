/*
 * test_jobspec.c: the JSON job spec (engine/jobs/jobspec.c) and its schema
 * (schema/jobspec.schema.json).
 *
 * A minimal spec gets every documented default; overrides apply; each refusal
 * (unknown fields at every level, wrong types, out-of-range values, cross-field
 * rules, bad presets and model combinations, missing required fields, dataset
 * paths escaping the data root by absolute path, ".." or symlink, missing
 * folders and files, invalid JSON, trailing text, duplicate keys) carries the
 * right JSON pointer and rule. The schema is walked: every object has
 * additionalProperties false, every property a description and a default;
 * its properties are exactly the parser's fields; each default parses to the
 * parser's own default; required fields, types and bounds agree. The fields
 * of model.init have no single default value (one of model/job_id; ema and
 * head depend on the source): they are listed in NO_DEFAULT, their
 * descriptions must say so, and they are checked against a spec that has
 * model.init (INIT_BASE). The fine-tuning rules themselves (model.init,
 * tl_jobspec_apply_init, class matching) are in test_finetune_job.c.
 * Files live in a fresh folder under $TL_TEST_TMP (or /tmp). Single-threaded.
 */
#include <limits.h>
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

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "spec_schema.h"
#include "tokenlab/jobspec.h"

/* ------------------------------------------------------------------ fixture */

static char g_base[1024];         /* the test's temp folder */
static char g_root[PATH_MAX];     /* data root: train/ val/ maps.tllm sub/ link_out link_in */
static char g_outside[PATH_MAX];  /* next to the root: what link_out points to */

static void make_dir(const char *fmt, const char *a) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, fmt, a);
    if (mkdir(p, 0755) != 0) fail_msg("mkdir %s failed", p);
}

static void make_file(const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot create %s", path);
    fputs("x", f);
    fclose(f);
}

static int setup(void **state) {
    const char *tmp = getenv("TL_TEST_TMP");
    if (!tmp || !tmp[0]) tmp = "/tmp";
    mkdir(tmp, 0755);
    snprintf(g_base, sizeof g_base, "%s/jobspec-XXXXXX", tmp);
    if (!mkdtemp(g_base)) return -1;
    snprintf(g_root, sizeof g_root, "%s/root", g_base);
    snprintf(g_outside, sizeof g_outside, "%s/outside", g_base);
    make_dir("%s", g_root);
    make_dir("%s", g_outside);
    make_dir("%s/train", g_root);
    make_dir("%s/val", g_root);
    make_dir("%s/sub", g_root);
    make_dir("%s/sub/inner", g_root);
    char p[PATH_MAX + 32], t[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/maps.tllm", g_root);
    make_file(p);
    snprintf(p, sizeof p, "%s/secret.tllm", g_outside);
    make_file(p);
    snprintf(p, sizeof p, "%s/link_out", g_root);
    if (symlink(g_outside, p) != 0) return -1;
    snprintf(p, sizeof p, "%s/link_in", g_root);
    snprintf(t, sizeof t, "%s/train", g_root);
    if (symlink(t, p) != 0) return -1;
    return 0;
}

static int teardown(void **state) {
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_base);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ helpers */

#define BASE_MODEL "\"model\":{\"preset\":\"lvvit_t\"}"
#define BASE_DATA "\"data\":{\"train\":\"train\"}"
#define MINIMAL "{\"kind\":\"train\",\"name\":\"job\"," BASE_MODEL "," BASE_DATA "}"

/* A minimal spec with a "train" object holding frag. */
static char *with_train(const char *frag) {
    static char buf[8192];
    snprintf(buf, sizeof buf, "{\"kind\":\"train\",\"name\":\"job\"," BASE_MODEL "," BASE_DATA ",\"train\":{%s}}", frag);
    return buf;
}

static void parse_ok(const char *json, const char *root, tl_train_spec *out) {
    tl_spec_error e;
    memset(&e, 0, sizeof e);
    if (tl_jobspec_parse(json, root, out, &e) != 0) fail_msg("refused (%s: %s): %s", e.pointer, e.message, json);
}

/* json is refused with exactly this pointer and a message containing msg;
 * the output is left untouched. */
static void refused(const char *json, const char *root, const char *pointer, const char *msg) {
    tl_train_spec out, sentinel;
    memset(&out, 0x5a, sizeof out);
    memcpy(&sentinel, &out, sizeof out);
    tl_spec_error e;
    memset(&e, 0, sizeof e);
    if (tl_jobspec_parse(json, root, &out, &e) != -1) fail_msg("accepted: %s", json);
    if (strcmp(e.pointer, pointer) != 0)
        fail_msg("pointer \"%s\" (message \"%s\"), wanted \"%s\" for %s", e.pointer, e.message, pointer, json);
    if (!strstr(e.message, msg)) fail_msg("message \"%s\" lacks \"%s\" (%s)", e.message, msg, json);
    assert_memory_equal(&out, &sentinel, sizeof out);
}

static void refused_train(const char *frag, const char *pointer, const char *msg) {
    refused(with_train(frag), g_root, pointer, msg);
}

static void root_path(char *out, const char *rel) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", g_root, rel);
    if (!realpath(p, out)) fail_msg("realpath %s", p);
}

/* Compares every field of two specs except the name. */
static void assert_spec_equal(const tl_train_spec *a, const tl_train_spec *b) {
    assert_string_equal(a->kind, b->kind);
    assert_string_equal(a->preset, b->preset);
    assert_int_equal(a->model.img_size, b->model.img_size);
    assert_int_equal(a->model.patch_size, b->model.patch_size);
    assert_int_equal(a->model.embed_dim, b->model.embed_dim);
    assert_int_equal(a->model.depth, b->model.depth);
    assert_int_equal(a->model.num_heads, b->model.num_heads);
    assert_true(a->model.mlp_ratio == b->model.mlp_ratio);
    assert_int_equal(a->model.stem_channels, b->model.stem_channels);
    assert_true(a->model.skip_lam == b->model.skip_lam);
    assert_int_equal(a->model.num_classes, b->model.num_classes);
    assert_true(a->model.drop_path_rate == b->model.drop_path_rate);
    assert_string_equal(a->train_dir, b->train_dir);
    assert_string_equal(a->val_dir, b->val_dir);
    assert_string_equal(a->label_maps, b->label_maps);
    assert_int_equal(a->epochs, b->epochs);
    assert_int_equal(a->batch_size, b->batch_size);
    assert_true(a->lr == b->lr);
    assert_true(a->min_lr == b->min_lr);
    assert_true(a->warmup_lr == b->warmup_lr);
    assert_true(a->warmup_epochs == b->warmup_epochs);
    assert_true(a->weight_decay == b->weight_decay);
    assert_true(a->label_smoothing == b->label_smoothing);
    assert_true(a->cls_weight == b->cls_weight);
    assert_true(a->dense_weight == b->dense_weight);
    assert_int_equal(a->mixtoken, b->mixtoken);
    assert_true(a->drop_path == b->drop_path);
    assert_true(a->ema_decay == b->ema_decay);
    assert_true(a->seed == b->seed);
    assert_int_equal(a->threads, b->threads);
    assert_true(a->augment.scale_min == b->augment.scale_min);
    assert_true(a->augment.scale_max == b->augment.scale_max);
    assert_true(a->augment.ratio_min == b->augment.ratio_min);
    assert_true(a->augment.ratio_max == b->augment.ratio_max);
    assert_true(a->augment.hflip == b->augment.hflip);
    assert_string_equal(a->augment.randaug, b->augment.randaug);
    assert_true(a->augment.reprob == b->augment.reprob);
    assert_true(a->augment.crop_pct == b->augment.crop_pct);
    assert_int_equal(a->mix, b->mix);
    assert_true(a->mix_alpha == b->mix_alpha);
    assert_true(a->eval_every_epochs == b->eval_every_epochs);
    assert_true(a->checkpoint_every_epochs == b->checkpoint_every_epochs);
    assert_int_equal(a->loader_threads, b->loader_threads);
    assert_int_equal(a->prefetch_batches, b->prefetch_batches);
    assert_int_equal(a->cache_mb, b->cache_mb);
    assert_true(a->layer_decay == b->layer_decay);
    assert_int_equal(a->freeze, b->freeze);
    assert_int_equal(a->micro_batches, b->micro_batches);
    assert_int_equal(a->ranks, b->ranks);
    assert_int_equal(a->init, b->init);
    assert_string_equal(a->init_model, b->init_model);
    assert_true(a->init_job == b->init_job);
    assert_string_equal(a->init_checkpoint, b->init_checkpoint);
    assert_int_equal(a->init_ema, b->init_ema);
    assert_int_equal(a->init_head, b->init_head);
}

/* ------------------------------------------------------------------ accepted */

static void test_minimal_defaults(void **state) {
    tl_train_spec s;
    parse_ok(MINIMAL, g_root, &s);
    char train[PATH_MAX];
    root_path(train, "train");
    assert_string_equal(s.kind, "train");
    assert_string_equal(s.name, "job");
    assert_string_equal(s.preset, "lvvit_t");
    tl_config t;
    assert_int_equal(tl_config_preset("lvvit_t", &t), 0);
    assert_int_equal(s.model.img_size, t.img_size);
    assert_int_equal(s.model.embed_dim, t.embed_dim);
    assert_int_equal(s.model.num_classes, t.num_classes);
    assert_true(s.model.drop_path_rate == t.drop_path_rate);
    assert_string_equal(s.train_dir, train);
    assert_string_equal(s.val_dir, "");
    assert_string_equal(s.label_maps, "");
    assert_int_equal(s.epochs, 10);
    assert_int_equal(s.batch_size, 64);
    assert_true(s.lr == 1e-3f);
    assert_true(s.min_lr == 1e-5f);
    assert_true(s.warmup_lr == 1e-6f);
    assert_true(s.warmup_epochs == 1.0f);
    assert_true(s.weight_decay == 0.05f);
    assert_true(s.label_smoothing == 0.1f);
    assert_true(s.cls_weight == 1.0f);
    assert_true(s.dense_weight == 0.5f);
    assert_int_equal(s.mixtoken, 1);
    assert_true(s.drop_path == t.drop_path_rate);
    assert_true(s.ema_decay == 0.0f);
    assert_true(s.seed == 42);
    assert_int_equal(s.threads, 0);
    tl_augment_cfg a;
    tl_augment_defaults(&a);
    assert_true(s.augment.scale_min == a.scale_min && s.augment.scale_max == a.scale_max);
    assert_true(s.augment.ratio_min == a.ratio_min && s.augment.ratio_max == a.ratio_max);
    assert_true(s.augment.hflip == a.hflip && s.augment.reprob == a.reprob && s.augment.crop_pct == a.crop_pct);
    assert_string_equal(s.augment.randaug, a.randaug);
    assert_int_equal(s.mix, TL_MIX_NONE);
    assert_true(s.mix_alpha == 1.0f);
    assert_true(s.eval_every_epochs == 1.0f);
    assert_true(s.checkpoint_every_epochs == 1.0f);
    assert_int_equal(s.loader_threads, 0);
    assert_int_equal(s.prefetch_batches, 4);
    assert_int_equal(s.cache_mb, 1024);

    /* tl_jobspec_defaults agrees with what a minimal spec gets. */
    tl_train_spec d;
    tl_jobspec_defaults(&d);
    snprintf(d.train_dir, sizeof d.train_dir, "%s", train);
    assert_spec_equal(&s, &d);
}

static void test_overrides(void **state) {
    const char *json =
        "{\"kind\":\"train\",\"name\":\"full job ~ 1\","
        "\"model\":{\"preset\":\"lvvit_s\",\"img_size\":64,\"patch_size\":8,\"num_classes\":10,\"depth\":4},"
        "\"data\":{\"train\":\"train\",\"val\":\"val\",\"label_maps\":\"maps.tllm\"},"
        "\"train\":{\"epochs\":20,\"batch_size\":32,\"lr\":0.002,\"min_lr\":0,\"warmup_lr\":0.0001,"
        "\"warmup_epochs\":2.5,\"weight_decay\":0.1,\"label_smoothing\":0,\"cls_weight\":0.7,\"dense_weight\":1.5,"
        "\"mixtoken\":false,\"drop_path\":0.25,\"ema_decay\":0.999,\"seed\":9007199254740991,\"threads\":3,"
        "\"augment\":{\"scale\":[0.3,0.9],\"ratio\":[0.5,2],\"hflip\":0,\"randaug\":\"\",\"reprob\":1,"
        "\"crop_pct\":1},"
        "\"mix\":\"cutmix\",\"mix_alpha\":0.8,\"eval_every_epochs\":0.5,\"checkpoint_every_epochs\":0,"
        "\"loader_threads\":64,\"prefetch_batches\":64,\"cache_mb\":0}}";
    tl_train_spec s;
    parse_ok(json, g_root, &s);
    char p[PATH_MAX];
    assert_string_equal(s.name, "full job ~ 1");
    assert_string_equal(s.preset, "lvvit_s");
    assert_int_equal(s.model.img_size, 64);
    assert_int_equal(s.model.patch_size, 8);
    assert_int_equal(s.model.embed_dim, 384); /* from the preset */
    assert_int_equal(s.model.num_heads, 6);
    assert_int_equal(s.model.depth, 4);
    assert_int_equal(s.model.num_classes, 10);
    assert_true(s.model.skip_lam == 2.0f);
    root_path(p, "train");
    assert_string_equal(s.train_dir, p);
    root_path(p, "val");
    assert_string_equal(s.val_dir, p);
    root_path(p, "maps.tllm");
    assert_string_equal(s.label_maps, p);
    assert_int_equal(s.epochs, 20);
    assert_int_equal(s.batch_size, 32);
    assert_true(s.lr == 0.002f);
    assert_true(s.min_lr == 0.0f);
    assert_true(s.warmup_lr == 0.0001f);
    assert_true(s.warmup_epochs == 2.5f);
    assert_true(s.weight_decay == 0.1f);
    assert_true(s.label_smoothing == 0.0f);
    assert_true(s.cls_weight == 0.7f);
    assert_true(s.dense_weight == 1.5f);
    assert_int_equal(s.mixtoken, 0);
    assert_true(s.drop_path == 0.25f);
    assert_true(s.model.drop_path_rate == 0.25f); /* one rate for the job */
    assert_true(s.ema_decay == 0.999f);
    assert_true(s.seed == 9007199254740991ULL);
    assert_int_equal(s.threads, 3);
    assert_true(s.augment.scale_min == 0.3f && s.augment.scale_max == 0.9f);
    assert_true(s.augment.ratio_min == 0.5f && s.augment.ratio_max == 2.0f);
    assert_true(s.augment.hflip == 0.0f);
    assert_string_equal(s.augment.randaug, "");
    assert_true(s.augment.reprob == 1.0f);
    assert_true(s.augment.crop_pct == 1.0f);
    assert_int_equal(s.mix, TL_MIX_CUTMIX);
    assert_true(s.mix_alpha == 0.8f);
    assert_true(s.eval_every_epochs == 0.5f);
    assert_true(s.checkpoint_every_epochs == 0.0f);
    assert_int_equal(s.loader_threads, 64);
    assert_int_equal(s.prefetch_batches, 64);
    assert_int_equal(s.cache_mb, 0);

    /* Every mix mode. */
    const char *modes[] = {"none", "mixup", "cutmix", "both"};
    for (int m = 0; m < 4; m++) {
        char frag[64];
        snprintf(frag, sizeof frag, "\"mix\":\"%s\"", modes[m]);
        parse_ok(with_train(frag), g_root, &s);
        assert_int_equal((int)s.mix, m);
    }
    /* The model's drop_path_rate becomes the job's default drop_path. */
    parse_ok("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_m\",\"drop_path_rate\":0.3},"
             "\"data\":{\"train\":\"train\"}}",
             g_root, &s);
    assert_true(s.drop_path == 0.3f && s.model.drop_path_rate == 0.3f);
    /* An empty val / label_maps means none; a symlink staying inside the root is fine. */
    parse_ok("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL
             ",\"data\":{\"train\":\"link_in\",\"val\":\"\",\"label_maps\":\"\"}}",
             g_root, &s);
    root_path(p, "train");
    assert_string_equal(s.train_dir, p);
    assert_string_equal(s.val_dir, "");
    assert_string_equal(s.label_maps, "");
    /* "." and nested folders are inside the root. */
    parse_ok("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\"./sub//inner/\",\"val\":\".\"}}",
             g_root, &s);
    root_path(p, "sub/inner");
    assert_string_equal(s.train_dir, p);
    root_path(p, ".");
    assert_string_equal(s.val_dir, p);
}

static void test_model_without_preset(void **state) {
    const char *json = "{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"img_size\":32,\"patch_size\":8,"
                       "\"embed_dim\":48,\"depth\":2,\"num_heads\":3,\"mlp_ratio\":3,\"stem_channels\":16,"
                       "\"skip_lam\":2,\"num_classes\":7,\"drop_path_rate\":0},\"data\":{\"train\":\"train\"}}";
    tl_train_spec s;
    parse_ok(json, g_root, &s);
    assert_string_equal(s.preset, "");
    assert_int_equal(s.model.img_size, 32);
    assert_int_equal(s.model.embed_dim, 48);
    assert_int_equal(s.model.num_heads, 3);
    assert_int_equal(s.model.num_classes, 7);
    assert_true(s.model.mlp_ratio == 3.0f);
    assert_true(s.drop_path == 0.0f);
}

/* Without a data root: absolute and relative (to the working folder) paths. */
static void test_no_data_root(void **state) {
    char train[PATH_MAX], json[3 * PATH_MAX];
    root_path(train, "train");
    snprintf(json, sizeof json,
             "{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\"%s\",\"label_maps\":\"%s/"
             "secret.tllm\"}}",
             train, g_outside);
    tl_train_spec s;
    parse_ok(json, NULL, &s);
    assert_string_equal(s.train_dir, train);
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof cwd));
    parse_ok("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\".\"}}", NULL, &s);
    assert_string_equal(s.train_dir, cwd);
    /* ".." is fine without a root. */
    snprintf(json, sizeof json, "{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\"%s/../val\"}}",
             train);
    parse_ok(json, NULL, &s);
    char val[PATH_MAX];
    root_path(val, "val");
    assert_string_equal(s.val_dir, "");
    assert_string_equal(s.train_dir, val);
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\"no-such-folder-here\"}}", NULL,
            "/data/train", "folder does not exist");
}

/* ------------------------------------------------------------------ refused */

static void test_unknown_fields(void **state) {
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL "," BASE_DATA ",\"extra\":1}", g_root, "/extra",
            "unknown field");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"width\":3}," BASE_DATA "}", g_root,
            "/model/width", "unknown field");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\"train\",\"test\":\"val\"}}", g_root,
            "/data/test", "unknown field");
    refused_train("\"learning_rate\":0.1", "/train/learning_rate", "unknown field");
    refused_train("\"augment\":{\"mixup\":0.2}", "/train/augment/mixup", "unknown field");
    /* The key is escaped in the pointer (RFC 6901)... */
    refused_train("\"a/b~c\":1", "/train/a~1b~0c", "unknown field");
    /* ...control characters and invalid UTF-8 become '?', valid UTF-8 stays... */
    refused_train("\"x\\ty\xff\xc3\xa9\":1", "/train/x?y?\xc3\xa9", "unknown field");
    /* ...and a long key is cut on a character boundary. */
    char frag[256] = "\"";
    for (int i = 0; i < 40; i++) strcat(frag, "\xc3\xa9"); /* 80 bytes */
    strcat(frag, "\":1");
    char want[128] = "/train/";
    for (int i = 0; i < 32; i++) strcat(want, "\xc3\xa9"); /* 64 bytes */
    strcat(want, "...");
    refused_train(frag, want, "unknown field");
}

static void test_wrong_types(void **state) {
    refused("[1,2]", g_root, "", "must be an object");
    refused("{\"kind\":\"train\",\"name\":5," BASE_MODEL "," BASE_DATA "}", g_root, "/name", "must be a string");
    refused("{\"kind\":1,\"name\":\"j\"," BASE_MODEL "," BASE_DATA "}", g_root, "/kind", "must be a string");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":\"lvvit_t\"," BASE_DATA "}", g_root, "/model",
            "must be an object");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":[\"train\"]}", g_root, "/data",
            "must be an object");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL "," BASE_DATA ",\"train\":null}", g_root, "/train",
            "must be an object");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":5}}", g_root, "/data/train",
            "must be a string");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\"train\",\"val\":null}}", g_root,
            "/data/val", "must be a string");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":7}," BASE_DATA "}", g_root, "/model/preset",
            "must be a string");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"depth\":2.5}," BASE_DATA "}", g_root,
            "/model/depth", "must be an integer");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"mlp_ratio\":\"3\"}," BASE_DATA "}",
            g_root, "/model/mlp_ratio", "must be a number");
    refused_train("\"epochs\":\"10\"", "/train/epochs", "must be an integer");
    refused_train("\"epochs\":2.5", "/train/epochs", "must be an integer");
    refused_train("\"batch_size\":true", "/train/batch_size", "must be an integer");
    refused_train("\"lr\":\"0.1\"", "/train/lr", "must be a number");
    refused_train("\"weight_decay\":[0.1]", "/train/weight_decay", "must be a number");
    refused_train("\"mixtoken\":1", "/train/mixtoken", "must be a boolean");
    refused_train("\"mix\":3", "/train/mix", "must be a string");
    refused_train("\"seed\":1.5", "/train/seed", "must be an integer");
    refused_train("\"augment\":[]", "/train/augment", "must be an object");
    refused_train("\"augment\":{\"scale\":[0.1]}", "/train/augment/scale", "must be an array of 2 numbers");
    refused_train("\"augment\":{\"scale\":[0.1,0.5,1]}", "/train/augment/scale", "must be an array of 2 numbers");
    refused_train("\"augment\":{\"ratio\":[0.5,\"1\"]}", "/train/augment/ratio", "must be an array of 2 numbers");
    refused_train("\"augment\":{\"ratio\":0.5}", "/train/augment/ratio", "must be an array of 2 numbers");
    refused_train("\"augment\":{\"randaug\":5}", "/train/augment/randaug", "must be a string");
    refused_train("\"augment\":{\"hflip\":\"yes\"}", "/train/augment/hflip", "must be a number");
}

static void test_out_of_range(void **state) {
    refused_train("\"epochs\":0", "/train/epochs", "in 1..10000");
    refused_train("\"epochs\":10001", "/train/epochs", "in 1..10000");
    refused_train("\"batch_size\":0", "/train/batch_size", "in 1..4096");
    refused_train("\"batch_size\":4097", "/train/batch_size", "in 1..4096");
    refused_train("\"lr\":0", "/train/lr", "> 0");
    refused_train("\"lr\":-1e-3", "/train/lr", "> 0");
    refused_train("\"lr\":1e300", "/train/lr", "> 0"); /* not a finite float */
    refused_train("\"min_lr\":-1e-9", "/train/min_lr", ">= 0");
    refused_train("\"warmup_lr\":-1", "/train/warmup_lr", ">= 0");
    refused_train("\"warmup_epochs\":-0.5", "/train/warmup_epochs", ">= 0");
    refused_train("\"weight_decay\":-0.01", "/train/weight_decay", ">= 0");
    refused_train("\"label_smoothing\":1", "/train/label_smoothing", "[0, 1)");
    refused_train("\"label_smoothing\":-0.1", "/train/label_smoothing", "[0, 1)");
    refused_train("\"cls_weight\":-1", "/train/cls_weight", ">= 0");
    refused_train("\"dense_weight\":-0.5", "/train/dense_weight", ">= 0");
    refused_train("\"drop_path\":1.0", "/train/drop_path", "[0, 1)");
    refused_train("\"ema_decay\":1", "/train/ema_decay", "0 (off) or a number in (0, 1)");
    refused_train("\"ema_decay\":-0.1", "/train/ema_decay", "(0, 1)");
    refused_train("\"seed\":-1", "/train/seed", "in 0..9007199254740991");
    refused_train("\"seed\":1e17", "/train/seed", "in 0..9007199254740991");
    refused_train("\"threads\":257", "/train/threads", "in 0..256");
    refused_train("\"threads\":-1", "/train/threads", "in 0..256");
    refused_train("\"mix\":\"cutout\"", "/train/mix", "must be one of \"none\", \"mixup\", \"cutmix\", \"both\"");
    refused_train("\"mix_alpha\":0", "/train/mix_alpha", "> 0");
    refused_train("\"eval_every_epochs\":-1", "/train/eval_every_epochs", ">= 0");
    refused_train("\"checkpoint_every_epochs\":-2", "/train/checkpoint_every_epochs", ">= 0");
    refused_train("\"loader_threads\":65", "/train/loader_threads", "in 0..64");
    refused_train("\"prefetch_batches\":0", "/train/prefetch_batches", "in 1..64");
    refused_train("\"prefetch_batches\":65", "/train/prefetch_batches", "in 1..64");
    refused_train("\"cache_mb\":1048577", "/train/cache_mb", "in 0..1048576");
    refused_train("\"cache_mb\":-1", "/train/cache_mb", "in 0..1048576");
    refused_train("\"augment\":{\"hflip\":1.5}", "/train/augment/hflip", "[0, 1]");
    refused_train("\"augment\":{\"reprob\":-0.1}", "/train/augment/reprob", "[0, 1]");
    refused_train("\"augment\":{\"scale\":[0.5,0.2]}", "/train/augment/scale", "min <= max");
    refused_train("\"augment\":{\"scale\":[0,1]}", "/train/augment/scale", "0 < min");
    refused_train("\"augment\":{\"ratio\":[-1,1]}", "/train/augment/ratio", "0 < min");
    refused_train("\"augment\":{\"crop_pct\":0}", "/train/augment/crop_pct", "(0, 1]");
    char frag[128];
    snprintf(frag, sizeof frag, "\"augment\":{\"randaug\":\"%064d\"}", 0);
    refused_train(frag, "/train/augment/randaug", "at most 63 characters");
    refused_train("\"augment\":{\"randaug\":\"rand-zz\"}", "/train/augment/randaug", "rand-zz");
}

static void test_cross_field_rules(void **state) {
    refused_train("\"epochs\":10,\"warmup_epochs\":10", "/train/warmup_epochs", "less than epochs");
    refused_train("\"epochs\":5,\"warmup_epochs\":7.5", "/train/warmup_epochs", "less than epochs");
    /* The default warm-up of 1 epoch needs at least 2 epochs... */
    refused_train("\"epochs\":1", "/train/warmup_epochs", "less than epochs");
    /* ...or no warm-up. */
    tl_train_spec s;
    parse_ok(with_train("\"epochs\":1,\"warmup_epochs\":0"), g_root, &s);
    parse_ok(with_train("\"epochs\":2,\"warmup_epochs\":1.999"), g_root, &s);

    /* micro_batches divides the batch; the ranks divide micro_batches */
    refused_train("\"batch_size\":12,\"micro_batches\":5", "/train/micro_batches", "must divide batch_size (12), got 5");
    parse_ok(with_train("\"batch_size\":12,\"micro_batches\":4"), g_root, &s);
    assert_int_equal(s.micro_batches, 4);
    assert_int_equal(s.ranks, 0);
#define DIST(frag) "{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL "," BASE_DATA ",\"train\":{\"batch_size\":8,\"micro_batches\":4}," frag "}"
    parse_ok(DIST("\"distributed\":{\"ranks\":2}"), g_root, &s);
    assert_int_equal(s.ranks, 2);
    refused(DIST("\"distributed\":{\"ranks\":3}"), g_root, "/distributed/ranks", "must divide train.micro_batches (4), got 3");
    refused(DIST("\"distributed\":{}"), g_root, "/distributed/ranks", "required");
    refused(DIST("\"distributed\":{\"ranks\":2,\"hosts\":[\"a\"]}"), g_root, "/distributed/hosts", "");
    refused(DIST("\"distributed\":{\"ranks\":0}"), g_root, "/distributed/ranks", "in 1..256");
#undef DIST
    /* a document past the value budget is refused before it is parsed */
    size_t n = 6000;
    char *big = malloc(64 + 2 * n);
    char *p = big + sprintf(big, "{\"kind\":\"train\",\"x\":[");
    for (size_t i = 0; i < n; i++) p += sprintf(p, i ? ",0" : "0");
    sprintf(p, "]}");
    refused(big, g_root, "", "JSON values, more than the 4096 a spec may have");
    free(big);
}

static void test_model_refusals(void **state) {
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_xl\"}," BASE_DATA "}", g_root,
            "/model/preset", "unknown preset 'lvvit_xl'");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"num_heads\":7}," BASE_DATA "}", g_root,
            "/model/embed_dim", "divisible by num_heads");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"img_size\":100}," BASE_DATA "}",
            g_root, "/model/img_size", "divisible by patch_size");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"patch_size\":7}," BASE_DATA "}",
            g_root, "/model/patch_size", "even");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"drop_path_rate\":1}," BASE_DATA "}",
            g_root, "/model/drop_path_rate", "[0, 1)");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"num_classes\":0}," BASE_DATA "}",
            g_root, "/model/num_classes", "must be in");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"img_size\":32,\"patch_size\":8}," BASE_DATA "}", g_root,
            "/model/embed_dim", "required");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{}," BASE_DATA "}", g_root, "/model/img_size", "required");
}

static void test_required_and_values(void **state) {
    refused("{\"name\":\"j\"," BASE_MODEL "," BASE_DATA "}", g_root, "/kind", "required");
    refused("{\"kind\":\"train\"," BASE_MODEL "," BASE_DATA "}", g_root, "/name", "required");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_DATA "}", g_root, "/model", "required");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL "}", g_root, "/data", "required");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"val\":\"val\"}}", g_root, "/data/train",
            "required");
    refused("{\"kind\":\"eval\",\"name\":\"j\"," BASE_MODEL "," BASE_DATA "}", g_root, "/kind", "must be \"train\"");
    refused("{\"kind\":\"train\",\"name\":\"\"," BASE_MODEL "," BASE_DATA "}", g_root, "/name", "printable");
    refused("{\"kind\":\"train\",\"name\":\"a\\nb\"," BASE_MODEL "," BASE_DATA "}", g_root, "/name", "printable");
    refused("{\"kind\":\"train\",\"name\":\"caf\xc3\xa9\"," BASE_MODEL "," BASE_DATA "}", g_root, "/name", "printable");
    char json[1024], name[200];
    memset(name, 'n', 128);
    name[128] = '\0';
    snprintf(json, sizeof json, "{\"kind\":\"train\",\"name\":\"%s\"," BASE_MODEL "," BASE_DATA "}", name);
    refused(json, g_root, "/name", "1..127");
    name[127] = '\0';
    snprintf(json, sizeof json, "{\"kind\":\"train\",\"name\":\"%s\"," BASE_MODEL "," BASE_DATA "}", name);
    tl_train_spec s;
    parse_ok(json, g_root, &s);
    assert_int_equal(strlen(s.name), 127);
}

static void test_paths(void **state) {
#define DATA(x) "{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{" x "}}"
    char json[3 * PATH_MAX];
    snprintf(json, sizeof json, DATA("\"train\":\"%s/train\""), g_root);
    refused(json, g_root, "/data/train", "must be relative to the data root");
    refused(DATA("\"train\":\"train/../val\""), g_root, "/data/train", "must be relative to the data root");
    refused(DATA("\"train\":\"..\""), g_root, "/data/train", "must be relative to the data root");
    refused(DATA("\"train\":\"train\",\"val\":\"../outside\""), g_root, "/data/val",
            "must be relative to the data root");
    refused(DATA("\"train\":\"link_out\""), g_root, "/data/train", "resolves outside the data root");
    refused(DATA("\"train\":\"train\",\"label_maps\":\"link_out/secret.tllm\""), g_root, "/data/label_maps",
            "resolves outside the data root");
    refused(DATA("\"train\":\"missing\""), g_root, "/data/train", "folder does not exist");
    refused(DATA("\"train\":\"train\",\"val\":\"val2\""), g_root, "/data/val", "folder does not exist");
    refused(DATA("\"train\":\"maps.tllm\""), g_root, "/data/train", "folder does not exist");
    refused(DATA("\"train\":\"train\",\"label_maps\":\"missing.tllm\""), g_root, "/data/label_maps",
            "file does not exist");
    refused(DATA("\"train\":\"train\",\"label_maps\":\"val\""), g_root, "/data/label_maps", "file does not exist");
    refused(DATA("\"train\":\"\""), g_root, "/data/train", "non-empty");
    refused(DATA("\"train\":\"maps.tllm/x\""), g_root, "/data/train", "folder does not exist");
    /* A data root that does not exist. */
    char bad_root[PATH_MAX + 16];
    snprintf(bad_root, sizeof bad_root, "%s/nope", g_base);
    refused(MINIMAL, bad_root, "", "data root");
#undef DATA
}

static void test_syntax(void **state) {
    refused("{", g_root, "", "not valid JSON");
    refused("", g_root, "", "not valid JSON");
    refused("{\"kind\":\"train\",}", g_root, "", "not valid JSON");
    refused(NULL, g_root, "", "not valid JSON");
    refused(MINIMAL " x", g_root, "", "not valid JSON");
    refused(MINIMAL "{}", g_root, "", "text after the document");
    /* The offset points near the error. */
    tl_train_spec s;
    tl_spec_error e;
    assert_int_equal(tl_jobspec_parse("{\"kind\": \"train\", \"name\": tru}", g_root, &s, &e), -1);
    assert_non_null(strstr(e.message, "byte"));
    /* Duplicate keys at every level. */
    refused("{\"kind\":\"train\",\"name\":\"a\",\"name\":\"b\"," BASE_MODEL "," BASE_DATA "}", g_root, "/name",
            "duplicate key");
    refused("{\"kind\":\"train\",\"name\":\"j\",\"model\":{\"preset\":\"lvvit_t\",\"preset\":\"lvvit_s\"}," BASE_DATA "}",
            g_root, "/model/preset", "duplicate key");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL ",\"data\":{\"train\":\"train\",\"train\":\"val\"}}", g_root,
            "/data/train", "duplicate key");
    refused_train("\"lr\":0.1,\"epochs\":3,\"lr\":0.2", "/train/lr", "duplicate key");
    refused_train("\"augment\":{\"hflip\":0.1,\"hflip\":0.2}", "/train/augment/hflip", "duplicate key");
    refused("{\"kind\":\"train\",\"name\":\"j\"," BASE_MODEL "," BASE_DATA ",\"train\":{},\"train\":{}}", g_root,
            "/train", "duplicate key");
}

static void test_error_format(void **state) {
    tl_spec_error e;
    char buf[1024];
    snprintf(e.pointer, sizeof e.pointer, "/train/lr");
    snprintf(e.message, sizeof e.message, "must be a number > 0");
    tl_spec_error_format(&e, buf, sizeof buf);
    assert_string_equal(buf, "/train/lr: must be a number > 0");
    e.pointer[0] = '\0';
    tl_spec_error_format(&e, buf, sizeof buf);
    assert_string_equal(buf, "must be a number > 0");
    char small[8];
    snprintf(e.pointer, sizeof e.pointer, "/train/lr");
    tl_spec_error_format(&e, small, sizeof small);
    assert_string_equal(small, "/train/");
    /* A NULL error struct is allowed. */
    tl_train_spec s;
    assert_int_equal(tl_jobspec_parse("{", g_root, &s, NULL), -1);
}

/* ------------------------------------------------------------------ schema */

/* Every field path the parser accepts (objects included). */
static const char *const PARSER_FIELDS[] = {
    "/kind", "/name", "/model", "/model/preset", "/model/img_size", "/model/patch_size", "/model/embed_dim",
    "/model/depth", "/model/num_heads", "/model/mlp_ratio", "/model/stem_channels", "/model/skip_lam",
    "/model/num_classes", "/model/drop_path_rate", "/data", "/data/train", "/data/val", "/data/label_maps", "/train",
    "/train/epochs", "/train/batch_size", "/train/lr", "/train/min_lr", "/train/warmup_lr", "/train/warmup_epochs",
    "/train/weight_decay", "/train/label_smoothing", "/train/cls_weight", "/train/dense_weight", "/train/mixtoken",
    "/train/drop_path", "/train/ema_decay", "/train/seed", "/train/threads", "/train/augment",
    "/train/augment/scale", "/train/augment/ratio", "/train/augment/hflip", "/train/augment/randaug",
    "/train/augment/reprob", "/train/augment/crop_pct", "/train/mix", "/train/mix_alpha", "/train/eval_every_epochs",
    "/train/checkpoint_every_epochs", "/train/loader_threads", "/train/prefetch_batches", "/train/cache_mb",
    "/train/layer_decay", "/train/freeze", "/model/init", "/model/init/model", "/model/init/job_id",
    "/model/init/checkpoint", "/model/init/ema", "/model/init/head", "/train/micro_batches", "/distributed",
    "/distributed/ranks", NULL};

/* Properties without a single default value (their descriptions say "no default value"). */
static const char *const NO_DEFAULT[] = {"/model/init", "/model/init/model", "/model/init/job_id", "/model/init/ema",
                                         "/model/init/head", "/distributed", "/distributed/ranks", NULL};
/* The base spec for the properties of model.init: a job's checkpoint as the source. */
#define INIT_BASE "{\"kind\":\"train\",\"name\":\"job\",\"model\":{\"init\":{\"job_id\":1}}," BASE_DATA "}"

/* The schema type of a property: "integer", ..., or the first of a list (e.g. ["string", "integer"]). */
static const char *prop_type(const cJSON *node, int *multi) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(node, "type");
    *multi = 0;
    if (cJSON_IsString(t)) return t->valuestring;
    if (cJSON_IsArray(t) && cJSON_GetArraySize(t) >= 2 && cJSON_IsString(t->child)) {
        for (const cJSON *x = t->child; x; x = x->next)
            if (!cJSON_IsString(x)) return NULL;
        *multi = 1;
        return t->child->valuestring;
    }
    return NULL;
}

static void test_schema_matches_parser(void **state) {
    static tlt_schema_walk w;
    cJSON *schema = tlt_schema_load("jobspec.schema.json", NO_DEFAULT, 1, &w);
    /* The schema's properties are exactly the parser's fields. */
    int nfields = 0;
    for (const char *const *f = PARSER_FIELDS; *f; f++, nfields++) {
        int found = 0;
        for (int i = 0; i < w.nprops; i++) found |= strcmp(w.props[i].path, *f) == 0;
        if (!found) fail_msg("the parser accepts %s but the schema does not list it", *f);
    }
    for (int i = 0; i < w.nprops; i++) {
        int found = 0;
        for (const char *const *f = PARSER_FIELDS; *f; f++) found |= strcmp(w.props[i].path, *f) == 0;
        if (!found) fail_msg("the schema lists %s but the parser does not know it", w.props[i].path);
    }
    assert_int_equal(w.nprops, nfields);

    tl_train_spec minimal_plain, minimal_init, s;
    parse_ok(MINIMAL, g_root, &minimal_plain);
    parse_ok(INIT_BASE, g_root, &minimal_init);
    assert_int_equal(minimal_init.init, 1);
    for (int i = 0; i < w.nprops; i++) {
        const tlt_prop *p = &w.props[i];
        int under_init = strncmp(p->path, "/model/init/", 12) == 0;
        const char *BASE = under_init ? INIT_BASE : MINIMAL;
        const tl_train_spec *minimal = under_init ? &minimal_init : &minimal_plain;
        char *json;
        tl_spec_error e;
        /* Each property set to its schema default parses to the parser's default. */
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(p->node, "default");
        if (def) {
            json = tlt_spec_with(BASE, p->path, def);
            if (tl_jobspec_parse(json, g_root, &s, &e) != 0)
                fail_msg("the schema default of %s is refused (%s: %s): %s", p->path, e.pointer, e.message, json);
            assert_spec_equal(&s, minimal);
            free(json);
        }

        /* A value of the wrong type is refused at that pointer. */
        int multi;
        const char *type = prop_type(p->node, &multi);
        cJSON *bad = NULL;
        const char *want = NULL;
        if (multi) bad = cJSON_CreateTrue(), want = "must be";
        else if (strcmp(type, "integer") == 0) bad = cJSON_CreateNumber(1.5), want = "must be an integer";
        else if (strcmp(type, "number") == 0) bad = cJSON_CreateString("1"), want = "must be a number";
        else if (strcmp(type, "boolean") == 0) bad = cJSON_CreateNumber(1), want = "must be a boolean";
        else if (strcmp(type, "string") == 0) bad = cJSON_CreateNumber(1), want = "must be a string";
        else if (strcmp(type, "object") == 0) bad = cJSON_CreateString("x"), want = "must be an object";
        else if (strcmp(type, "array") == 0) bad = cJSON_CreateNumber(1), want = "must be an array of 2 numbers";
        else fail_msg("schema %s: unexpected type %s", p->path, type);
        json = tlt_spec_with(BASE, p->path, bad);
        refused(json, g_root, p->path, want);
        free(json);
        cJSON_Delete(bad);

        /* Bounds: a value just outside is refused there; an inclusive bound is
         * accepted (outside /model, whose fields also depend on each other). */
        const char *bounds[4] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
        for (int b = 0; b < 4; b++) {
            const cJSON *bv = cJSON_GetObjectItemCaseSensitive(p->node, bounds[b]);
            if (!bv) continue;
            /* (cJSON prints 15 significant digits, so the step grows with x.) */
            int integral = strcmp(type, "integer") == 0 || multi;
            double x = bv->valuedouble, step = integral ? fmax(1.0, fabs(x) * 1e-6) : fmax(1e-3, fabs(x) * 1e-3);
            double outside = b < 2 ? x - step : x + step;
            if (b == 1 || b == 3) outside = x;
            cJSON *o = cJSON_CreateNumber(outside);
            json = tlt_spec_with(BASE, p->path, o);
            tl_spec_error e2;
            if (tl_jobspec_parse(json, g_root, &s, &e2) == 0)
                fail_msg("%s = %.17g (outside its %s) was accepted", p->path, outside, bounds[b]);
            assert_string_equal(e2.pointer, p->path);
            free(json);
            cJSON_Delete(o);
            if ((b == 0 || b == 2) && strncmp(p->path, "/model/", 7) != 0) {
                /* With no warm-up, so that epochs may sit at its minimum. */
                cJSON *zero = cJSON_CreateNumber(0);
                char *base0 = tlt_spec_with(MINIMAL, "/train/warmup_epochs", zero);
                cJSON_Delete(zero);
                /* micro_batches divides batch_size and the ranks divide micro_batches: at their bounds, both
                 * at their maximum */
                if (strcmp(p->path, "/train/micro_batches") == 0 || strcmp(p->path, "/distributed/ranks") == 0) {
                    cJSON *big = cJSON_CreateNumber(4096);
                    char *b1 = tlt_spec_with(base0, "/train/batch_size", big);
                    free(base0);
                    base0 = tlt_spec_with(b1, "/train/micro_batches", big);
                    free(b1);
                    cJSON_Delete(big);
                }
                cJSON *in = cJSON_CreateNumber(x);
                json = tlt_spec_with(strcmp(p->path, "/train/warmup_epochs") == 0 ? MINIMAL : base0, p->path, in);
                if (tl_jobspec_parse(json, g_root, &s, &e2) != 0)
                    fail_msg("%s = %.17g (its %s) is refused (%s: %s)", p->path, x, bounds[b], e2.pointer, e2.message);
                free(json);
                free(base0);
                cJSON_Delete(in);
            }
        }
        /* Enumerations: every listed value is accepted. */
        const cJSON *en = cJSON_GetObjectItemCaseSensitive(p->node, "enum");
        for (const cJSON *v = en ? en->child : NULL; v; v = v->next) {
            json = tlt_spec_with(BASE, p->path, v);
            parse_ok(json, g_root, &s);
            free(json);
        }
    }

    /* Every object refuses an extra property, with its pointer. */
    cJSON *one = cJSON_CreateNumber(1);
    for (int i = 0; i < w.nobjects; i++) {
        char path[160], want[160];
        snprintf(path, sizeof path, "%s/zz_extra", w.object_paths[i]);
        snprintf(want, sizeof want, "%s", path);
        char *json = tlt_spec_with(MINIMAL, path, one);
        refused(json, g_root, want, "unknown field");
        free(json);
    }
    cJSON_Delete(one);
    assert_int_equal(w.nobjects, 7); /* the document, model, model.init, data, train, augment, distributed */

    /* The schema's required fields are the parser's. */
    for (int i = 0; i < w.nobjects; i++) {
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(w.objects[i], "required");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next) {
            char path[160];
            snprintf(path, sizeof path, "%s/%s", w.object_paths[i], r->valuestring);
            char *json = tlt_spec_with(MINIMAL, path, NULL);
            refused(json, g_root, path, "required");
            free(json);
        }
    }
    /* And the fields the schema does not require can be left out: the minimal
     * spec holds only required fields plus model.preset (the model's anyOf). */
    const cJSON *top_req = cJSON_GetObjectItemCaseSensitive(schema, "required");
    assert_int_equal(cJSON_GetArraySize(top_req), 4);
    cJSON_Delete(schema);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_model_without_preset),
        cmocka_unit_test(test_no_data_root),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_cross_field_rules),
        cmocka_unit_test(test_model_refusals),
        cmocka_unit_test(test_required_and_values),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_error_format),
        cmocka_unit_test(test_schema_matches_parser),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
