/*
 * test_finetune_job.c: fine-tuning jobs (issue 15) on the engine side: the
 * model.init and recipe fields of the job spec, tl_jobspec_apply_init, the
 * class matching of head "match", the class names every checkpoint carries,
 * and training jobs that start from a trained source.
 *
 * Runs now (the spec, the merge and the class map are this branch's):
 *  - model.init, train.layer_decay and train.freeze parse to the right
 *    fields; every refusal carries its pointer;
 *  - tl_jobspec_apply_init: the merge, num_classes from the training data,
 *    the refusals at /model/<field> with both values, a patch change, "keep"
 *    with different counts; idempotent;
 *  - class matching by name (tokenlab.class_ids), by ImageNet index
 *    (classes.tsv's imagenet_index, also the real imagenette classes.tsv when
 *    TL_SHARED_DATA has it), and each refusal;
 *  - checkpoints written by a job carry tokenlab.class_ids; a bad source and a
 *    "match" without class identities fail the job with CONFIG_ERROR;
 *  - a fine-tuning job with a checkpoint in its run folder resumes from it
 *    without reading the source (no on_init, no step-0 evaluation).
 *
 * Whole fine-tuning jobs (through tl_model_init_from, tl_model_set_freeze and
 * tl_model_set_layer_decay):
 *  - e2e_reinit_resized: a source trained on synthetic data fine-tuned with
 *    another img_size and class count; on_init once (reinit, grid 4 -> 6);
 *    raw and EMA evaluated at step 0 before the first step;
 *  - e2e_keep_loads_source: head keep on the source's own data and size: the
 *    step-0 evaluation equals the source's final evaluation exactly (EMA
 *    weights and raw weights);
 *  - e2e_match: classes matched by name (3 of 3);
 *  - e2e_resume_exact: a fine-tuning job stopped mid-epoch and resumed gives
 *    the same losses and checkpoint bit for bit, without a second on_init or
 *    step-0 evaluation;
 *  - e2e_freeze_trunk / e2e_freeze_stem: frozen tensors bit-identical to the
 *    source after training steps, the others changed;
 *  - e2e_layer_decay: the first loss equals the plain run's, the second
 *    differs (the decay changed the first update).
 * Files in a fresh folder under $TL_TEST_TMP (or /tmp). Single-threaded
 * (the engine's pools aside).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenlab/dataset.h"
#include "tokenlab/jobspec.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/synth.h"
#include "tokenlab/train.h"

/* ------------------------------------------------------------------ fixture */

static char g_root[1024];
static char g_src[1200];   /* the source job's run folder: best/last.safetensors, trained on synth a (4 classes) */
static char g_plain[1200]; /* a 4-class checkpoint without tokenlab.class_ids */
static double g_src_top1[2], g_src_loss[2]; /* the source's final evaluation: raw, EMA */

#define MAXSTEPS 64
#define MAXEVALS 32

typedef struct {
    double loss[MAXSTEPS + 1];
    int64_t stop_after;
    int nevals;
    tl_eval_report evals[MAXEVALS];
    int inits, starts, steps_before_first_eval;
    int64_t first_step_seen;
    tl_init_info init;
    char log[4096];
} recorder;

static void on_start(int64_t start, int64_t total, void *u) {
    recorder *r = u;
    r->starts++;
    (void)start, (void)total;
}
static void on_init(const tl_init_info *in, void *u) {
    recorder *r = u;
    r->inits++;
    r->init = *in;
}
static void on_step(const tl_step_report *s, void *u) {
    recorder *r = u;
    if (s->step <= MAXSTEPS) r->loss[s->step] = s->loss;
    if (!r->first_step_seen) r->first_step_seen = s->step;
}
static void on_eval(const tl_eval_report *e, void *u) {
    recorder *r = u;
    if (r->nevals == 0) r->steps_before_first_eval = r->first_step_seen ? 1 : 0;
    if (r->nevals < MAXEVALS) r->evals[r->nevals++] = *e;
}
static void on_log(const char *msg, void *u) {
    recorder *r = u;
    size_t l = strlen(r->log);
    snprintf(r->log + l, sizeof r->log - l, "%s\n", msg);
}
static int should_stop(void *u) {
    recorder *r = u;
    return r->stop_after > 0 && r->loss[r->stop_after] != 0.0;
}

static tl_train_status run_job(const tl_train_spec *spec, const char *dir, recorder *r, tl_train_result *res) {
    tl_train_hooks h = {.on_start = on_start, .on_init = on_init, .on_step = on_step, .on_eval = on_eval,
                        .on_log = on_log, .should_stop = should_stop, .user = r};
    return tl_train_run(spec, dir, &h, res);
}

static void parse_ok(const char *json, tl_train_spec *out) {
    tl_spec_error e;
    if (tl_jobspec_parse(json, NULL, out, &e) != 0) fail_msg("refused (%s: %s): %s", e.pointer, e.message, json);
}

static void refused(const char *json, const char *pointer, const char *msg) {
    static tl_train_spec out;
    tl_spec_error e;
    memset(&e, 0, sizeof e);
    if (tl_jobspec_parse(json, NULL, &out, &e) != -1) fail_msg("accepted: %s", json);
    if (strcmp(e.pointer, pointer) != 0)
        fail_msg("pointer \"%s\" (message \"%s\"), wanted \"%s\" for %s", e.pointer, e.message, pointer, json);
    if (!strstr(e.message, msg)) fail_msg("message \"%s\" lacks \"%s\" (%s)", e.message, msg, json);
}

#define TINY_MODEL                                                                                                     \
    "\"img_size\":32,\"patch_size\":8,\"embed_dim\":32,\"depth\":2,\"num_heads\":2,\"mlp_ratio\":2,"                  \
    "\"stem_channels\":8,\"skip_lam\":1,\"num_classes\":4,\"drop_path_rate\":0.1"
#define TRAIN_COMMON "\"threads\":2,\"loader_threads\":1,\"cache_mb\":8,\"warmup_epochs\":0"

/* A spec in g_root: model fields, data folder under g_root ("a", "b", "c3"), train fields. */
static void spec_json(char *buf, size_t n, const char *model, const char *data, const char *train) {
    snprintf(buf, n,
             "{\"kind\":\"train\",\"name\":\"ft\",\"model\":{%s},\"data\":{\"train\":\"%s/%s/train\",\"val\":\"%s/%s/val\"},"
             "\"train\":{" TRAIN_COMMON "%s%s}}",
             model, g_root, data, g_root, data, train[0] ? "," : "", train);
}

static void write_synth(const char *name, int classes, int train, int val, uint64_t seed) {
    char dir[1200], err[TL_ERR_LEN];
    snprintf(dir, sizeof dir, "%s/%s", g_root, name);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = classes;
    c.train = train;
    c.val = val;
    c.size = 32;
    c.map_size = 8;
    c.seed = seed;
    if (tl_synth_write(dir, &c, err, sizeof err) != 0) fail_msg("synth: %s", err);
}

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/finetune_%d", tmp && tmp[0] ? tmp : "/tmp", (int)getpid());
    mkdir(g_root, 0755);
    write_synth("a", 4, 64, 16, 3);
    write_synth("b", 3, 48, 12, 5);
    /* folders only, for the class counts of tl_jobspec_apply_init */
    char p[1300];
    const char *dirs[] = {"c3", "c3/train", "c3/val", "c3/train/x", "c3/train/y", "c3/train/z", NULL};
    for (int i = 0; dirs[i]; i++) {
        snprintf(p, sizeof p, "%s/%s", g_root, dirs[i]);
        if (mkdir(p, 0755) != 0) return -1;
    }
    /* The source: 4 steps on synth a with EMA. */
    static tl_train_spec spec;
    char json[4096];
    spec_json(json, sizeof json, TINY_MODEL, "a", "\"epochs\":1,\"batch_size\":16,\"ema_decay\":0.9");
    tl_spec_error e;
    if (tl_jobspec_parse(json, NULL, &spec, &e) != 0) return -1;
    snprintf(g_src, sizeof g_src, "%s/src", g_root);
    recorder r;
    memset(&r, 0, sizeof r);
    tl_train_result res;
    if (run_job(&spec, g_src, &r, &res) != TL_TRAIN_SUCCEEDED) {
        fprintf(stderr, "source job: %s\n", res.message);
        return -1;
    }
    for (int i = 0; i < r.nevals; i++) {
        g_src_top1[r.evals[i].ema] = r.evals[i].top1;
        g_src_loss[r.evals[i].ema] = r.evals[i].loss;
    }
    /* A 4-class checkpoint without class names. */
    char err[TL_ERR_LEN];
    tl_config c;
    snprintf(p, sizeof p, "%s/last.safetensors", g_src);
    if (tl_checkpoint_config(p, &c, err, sizeof err) != 0) return -1;
    tl_model *m = tl_model_new(&c, 7, err, sizeof err);
    snprintf(g_plain, sizeof g_plain, "%s/plain.safetensors", g_root);
    int rc = m ? tl_checkpoint_save(m, NULL, g_plain, 0, NULL, NULL, err, sizeof err) : -1;
    tl_model_free(m);
    return rc;
}

static int teardown(void **state) {
    (void)state;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ the spec */

static void test_spec_init_fields(void **state) {
    (void)state;
    static tl_train_spec s;
    char json[4096];
    spec_json(json, sizeof json, "\"init\":{\"model\":\"lvvit-s_in1k.v2\"},\"img_size\":48", "b", "");
    parse_ok(json, &s);
    assert_int_equal(s.init, 1);
    assert_string_equal(s.init_model, "lvvit-s_in1k.v2");
    assert_true(s.init_job == 0);
    assert_string_equal(s.init_checkpoint, "best");
    assert_int_equal(s.init_ema, -1);
    assert_int_equal(s.init_head, -1);
    assert_string_equal(s.preset, "");
    assert_int_equal(s.init_model_fields, 1u << TL_MF_IMG_SIZE);
    assert_int_equal(s.model.img_size, 48);
    assert_int_equal(s.model.embed_dim, 0); /* from the source, once known */
    assert_true(s.layer_decay == 1.0f);
    assert_int_equal(s.freeze, TL_FREEZE_NONE);

    spec_json(json, sizeof json,
              "\"init\":{\"job_id\":12,\"checkpoint\":\"last\",\"ema\":false,\"head\":\"match\"},\"num_classes\":3,"
              "\"embed_dim\":32",
              "b", "\"layer_decay\":0.65,\"freeze\":\"trunk\",\"drop_path\":0.2");
    parse_ok(json, &s);
    assert_true(s.init_job == 12);
    assert_string_equal(s.init_model, "");
    assert_string_equal(s.init_checkpoint, "last");
    assert_int_equal(s.init_ema, 0);
    assert_int_equal(s.init_head, TL_HEAD_MATCH);
    assert_int_equal(s.init_model_fields,
                     (1u << TL_MF_NUM_CLASSES) | (1u << TL_MF_EMBED_DIM) | (1u << TL_MF_DROP_PATH_RATE));
    assert_true(s.model.drop_path_rate == 0.2f && s.drop_path == 0.2f);
    assert_true(s.layer_decay == 0.65f);
    assert_int_equal(s.freeze, TL_FREEZE_TRUNK);

    spec_json(json, sizeof json, "\"init\":{\"job_id\":3,\"checkpoint\":\"1200\",\"ema\":true,\"head\":\"keep\"}", "b",
              "\"freeze\":\"stem\"");
    parse_ok(json, &s);
    assert_string_equal(s.init_checkpoint, "1200");
    assert_int_equal(s.init_ema, 1);
    assert_int_equal(s.init_head, TL_HEAD_KEEP);
    assert_int_equal(s.init_model_fields, 0);
    assert_int_equal(s.freeze, TL_FREEZE_STEM);

    /* Without model.init nothing changes: the model must still be complete. */
    spec_json(json, sizeof json, "\"img_size\":48", "b", "");
    refused(json, "/model/patch_size", "required");
    spec_json(json, sizeof json, TINY_MODEL, "b", "");
    parse_ok(json, &s);
    assert_int_equal(s.init, 0);
    assert_true(s.layer_decay == 1.0f);
    tl_spec_error e;
    tl_config before = s.model;
    assert_int_equal(tl_jobspec_apply_init(&s, &before, &e), 0);
    assert_memory_equal(&s.model, &before, sizeof before);
}

static void test_spec_init_refusals(void **state) {
    (void)state;
    char json[4096];
    struct {
        const char *model, *train, *pointer, *msg;
    } cases[] = {
        {"\"init\":{\"model\":\"a\",\"job_id\":3}", "", "/model/init", "not both"},
        {"\"init\":{}", "", "/model/init", "give exactly one source"},
        {"\"init\":{\"ema\":true}", "", "/model/init", "give exactly one source"},
        {"\"init\":{\"job_id\":3,\"head\":\"new\"}", "", "/model/init/head", "must be one of \"reinit\", \"keep\", \"match\""},
        {"\"init\":{\"job_id\":3,\"head\":1}", "", "/model/init/head", "must be a string"},
        {"\"init\":{\"model\":\"../etc/x\"}", "", "/model/init/model", "must be a model name"},
        {"\"init\":{\"model\":\"\"}", "", "/model/init/model", "must be a model name"},
        {"\"init\":{\"model\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", "", "/model/init/model",
         "must be a model name"},
        {"\"init\":{\"job_id\":0}", "", "/model/init/job_id", "must be an integer in 1.."},
        {"\"init\":{\"job_id\":\"3\"}", "", "/model/init/job_id", "must be an integer"},
        {"\"init\":{\"job_id\":3,\"checkpoint\":\"first\"}", "", "/model/init/checkpoint", "must be \"best\", \"last\" or a step"},
        {"\"init\":{\"job_id\":3,\"checkpoint\":-1}", "", "/model/init/checkpoint", "must be a string"},
        {"\"init\":{\"model\":\"m\",\"checkpoint\":\"last\"}", "", "/model/init/checkpoint", "only with \"job_id\""},
        {"\"init\":{\"job_id\":3,\"ema\":1}", "", "/model/init/ema", "must be a boolean"},
        {"\"init\":{\"job_id\":3,\"path\":\"/x.safetensors\"}", "", "/model/init/path", "unknown field"},
        {"\"init\":\"m\"", "", "/model/init", "must be an object"},
        {"\"preset\":\"lvvit_t\",\"init\":{\"job_id\":3}", "", "/model/preset", "not with model.init"},
        {"\"init\":{\"job_id\":3},\"img_size\":0", "", "/model/img_size", "must be in 1..4096"},
        {"\"init\":{\"job_id\":3},\"patch_size\":3", "", "/model/patch_size", "must be even"},
        {"\"init\":{\"job_id\":3},\"drop_path_rate\":1", "", "/model/drop_path_rate", "must be in [0, 1)"},
        {"\"init\":{\"job_id\":3}", "\"layer_decay\":0", "/train/layer_decay", "must be a number in (0, 1], got 0"},
        {"\"init\":{\"job_id\":3}", "\"layer_decay\":1.5", "/train/layer_decay", "must be a number in (0, 1], got 1.5"},
        {TINY_MODEL, "\"layer_decay\":-0.5", "/train/layer_decay", "must be a number in (0, 1]"},
        {TINY_MODEL, "\"freeze\":\"x\"", "/train/freeze", "must be one of \"none\", \"stem\", \"trunk\""},
        {TINY_MODEL, "\"freeze\":true", "/train/freeze", "must be a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        spec_json(json, sizeof json, cases[i].model, "b", cases[i].train);
        refused(json, cases[i].pointer, cases[i].msg);
    }
}

/* ------------------------------------------------------------------ tl_jobspec_apply_init */

static void apply_refused(tl_train_spec *s, const tl_config *src, const char *pointer, const char *msg) {
    tl_spec_error e;
    tl_train_spec before = *s;
    if (tl_jobspec_apply_init(s, src, &e) == 0) fail_msg("apply_init accepted (wanted %s: %s)", pointer, msg);
    if (strcmp(e.pointer, pointer) != 0) fail_msg("pointer \"%s\" (%s), wanted \"%s\"", e.pointer, e.message, pointer);
    if (!strstr(e.message, msg)) fail_msg("message \"%s\" lacks \"%s\"", e.message, msg);
    assert_memory_equal(&s->model, &before.model, sizeof before.model);
}

static void test_apply_init(void **state) {
    (void)state;
    static tl_train_spec s, twice;
    char json[4096];
    tl_spec_error e;
    tl_config src = {.img_size = 32, .patch_size = 8, .embed_dim = 32, .depth = 2, .num_heads = 2, .mlp_ratio = 2,
                     .stem_channels = 8, .skip_lam = 1, .num_classes = 1000, .drop_path_rate = 0.1f};
    /* Merge: the source's architecture, the spec's img_size, the data's classes (c3: 3 class folders). */
    spec_json(json, sizeof json, "\"init\":{\"job_id\":3},\"img_size\":48,\"embed_dim\":32,\"mlp_ratio\":2", "c3", "");
    parse_ok(json, &s);
    assert_int_equal(tl_jobspec_apply_init(&s, &src, &e), 0);
    assert_int_equal(s.model.img_size, 48);
    assert_int_equal(s.model.patch_size, 8);
    assert_int_equal(s.model.embed_dim, 32);
    assert_int_equal(s.model.depth, 2);
    assert_int_equal(s.model.stem_channels, 8);
    assert_int_equal(s.model.num_classes, 3);
    assert_true(s.model.drop_path_rate == 0.1f && s.drop_path == 0.1f);
    twice = s;
    assert_int_equal(tl_jobspec_apply_init(&twice, &src, &e), 0);
    assert_memory_equal(&twice, &s, sizeof s);
    /* num_classes given but the data has 3: the data wins, as for every job */
    spec_json(json, sizeof json, "\"init\":{\"job_id\":3},\"num_classes\":7,\"drop_path_rate\":0.3", "c3", "");
    parse_ok(json, &s);
    assert_int_equal(tl_jobspec_apply_init(&s, &src, &e), 0);
    assert_int_equal(s.model.num_classes, 3);
    assert_int_equal(s.model.img_size, 32);
    assert_true(s.model.drop_path_rate == 0.3f && s.drop_path == 0.3f);
    /* train.drop_path is the job's one rate */
    spec_json(json, sizeof json, "\"init\":{\"job_id\":3},\"drop_path_rate\":0.3", "c3", "\"drop_path\":0.05");
    parse_ok(json, &s);
    assert_int_equal(tl_jobspec_apply_init(&s, &src, &e), 0);
    assert_true(s.model.drop_path_rate == 0.05f && s.drop_path == 0.05f);

    /* Refusals, with both values. */
    struct {
        const char *model, *pointer, *msg;
    } cases[] = {
        {"\"init\":{\"job_id\":3},\"embed_dim\":64", "/model/embed_dim", "the source has 32, the spec 64; the architecture comes from the source"},
        {"\"init\":{\"job_id\":3},\"depth\":4", "/model/depth", "the source has 2, the spec 4"},
        {"\"init\":{\"job_id\":3},\"num_heads\":4", "/model/num_heads", "the source has 2, the spec 4"},
        {"\"init\":{\"job_id\":3},\"mlp_ratio\":3", "/model/mlp_ratio", "the source has 2, the spec 3"},
        {"\"init\":{\"job_id\":3},\"stem_channels\":16", "/model/stem_channels", "the source has 8, the spec 16"},
        {"\"init\":{\"job_id\":3},\"skip_lam\":2", "/model/skip_lam", "the source has 1, the spec 2"},
        {"\"init\":{\"job_id\":3},\"patch_size\":16,\"img_size\":64", "/model/patch_size",
         "the source has 8, the spec 16; fine-tuning cannot change the patch size"},
        {"\"init\":{\"job_id\":3},\"img_size\":36", "/model/img_size", "must be divisible by patch_size (8), got 36"},
        {"\"init\":{\"job_id\":3,\"head\":\"keep\"}", "/model/init/head",
         "\"keep\" needs as many classes as the source: the source has 1000, the training data 3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        spec_json(json, sizeof json, cases[i].model, "c3", "");
        parse_ok(json, &s);
        apply_refused(&s, &src, cases[i].pointer, cases[i].msg);
    }
    /* keep with equal counts is fine; an invalid source is refused at /model/init */
    tl_config src3 = src;
    src3.num_classes = 3;
    spec_json(json, sizeof json, "\"init\":{\"job_id\":3,\"head\":\"keep\"}", "c3", "");
    parse_ok(json, &s);
    assert_int_equal(tl_jobspec_apply_init(&s, &src3, &e), 0);
    tl_config bad = src;
    bad.embed_dim = 33;
    parse_ok(json, &s);
    apply_refused(&s, &bad, "/model/init", "the source's configuration is not valid");
}

/* ------------------------------------------------------------------ class matching */

static void test_class_match_ids(void **state) {
    (void)state;
    int map[4], matched = -1;
    char err[TL_ERR_LEN];
    const char *tgt[] = {"n3", "x", "n1"};
    assert_int_equal(tl_class_match_ids(3, tgt, NULL, "[\"n1\",\"n2\",\"n3\",\"n4\"]", 4, map, &matched, err, sizeof err), 0);
    assert_int_equal(map[0], 2);
    assert_int_equal(map[1], -1);
    assert_int_equal(map[2], 0);
    assert_int_equal(matched, 2);
    /* names win over indices */
    int inet[] = {5, 6, 7};
    assert_int_equal(tl_class_match_ids(3, tgt, inet, "[\"n1\",\"n2\",\"n3\",\"n4\"]", 4, map, &matched, err, sizeof err), 0);
    assert_int_equal(map[0], 2);
    /* no names, 1000 classes: ImageNet-1k by index */
    int inet2[] = {0, 217, -1};
    assert_int_equal(tl_class_match_ids(3, tgt, inet2, NULL, 1000, map, &matched, err, sizeof err), 0);
    assert_int_equal(map[0], 0);
    assert_int_equal(map[1], 217);
    assert_int_equal(map[2], -1);
    assert_int_equal(matched, 2);
    /* refusals; the map is left all -1 */
    struct {
        const int *inet;
        const char *ids;
        int k;
        const char *msg;
    } cases[] = {
        {NULL, NULL, 1000, "no imagenet_index"},
        {inet, NULL, 4, "no tokenlab.class_ids metadata and 4 classes"},
        {NULL, "[\"a\",\"b\",\"c\",\"d\"]", 4, "no class of the training data"},
        {NULL, "[\"n1\",\"n2\"]", 4, "not a JSON array of its 4 class names"},
        {NULL, "{\"n1\":0}", 4, "not a JSON array"},
        {NULL, "[\"n1\",\"n3\",\"n1\",\"n4\"]", 4, "names 'n1' twice"},
        {NULL, "[\"n1\",2,\"n3\",\"n4\"]", 4, "tokenlab.class_ids[1] is not a class name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        map[0] = 99;
        err[0] = '\0';
        if (tl_class_match_ids(3, tgt, cases[i].inet, cases[i].ids, cases[i].k, map, &matched, err, sizeof err) != -1)
            fail_msg("case %zu accepted", i);
        if (!strstr(err, cases[i].msg)) fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].msg);
        assert_int_equal(map[0], -1);
    }
}

/* A dataset with a classes.tsv: imagenet_index from the header's column; absent without one. */
static void test_classes_tsv_index(void **state) {
    (void)state;
    char d[1300], p[1400], err[TL_ERR_LEN];
    snprintf(d, sizeof d, "%s/tsv", g_root);
    mkdir(d, 0755);
    const char *cls[] = {"n01440764", "n02102040", "n99999999"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", d, cls[i]);
        mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/%s/x.jpg", d, cls[i]);
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        fputs("x", f);
        fclose(f);
    }
    snprintf(p, sizeof p, "%s/classes.tsv", d);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("wnid\tname\timagenet_index\nn01440764\ttench\t0\r\nn02102040\tEnglish springer\t217\nn99999999\tnew\tx1\n", f);
    fclose(f);
    tl_dataset *ds = tl_dataset_open(d, err, sizeof err);
    assert_non_null(ds);
    assert_string_equal(tl_dataset_class_name(ds, 1), "English springer");
    assert_int_equal(tl_dataset_class_imagenet_index(ds, 0), 0);
    assert_int_equal(tl_dataset_class_imagenet_index(ds, 1), 217);
    assert_int_equal(tl_dataset_class_imagenet_index(ds, 2), -1);
    assert_int_equal(tl_dataset_count_classes(d, err, sizeof err), 3);
    /* a 1000-class source without names: matched by index; with names: by folder */
    int map[3], matched;
    assert_int_equal(tl_class_match(ds, g_plain, 1000, map, &matched, err, sizeof err), 0);
    assert_int_equal(map[1], 217);
    assert_int_equal(matched, 2);
    tl_dataset_free(ds);
    /* no header: no index column */
    f = fopen(p, "wb");
    fputs("n01440764\ttench\t0\n", f);
    fclose(f);
    ds = tl_dataset_open(d, err, sizeof err);
    assert_non_null(ds);
    assert_int_equal(tl_dataset_class_imagenet_index(ds, 0), -1);
    assert_int_equal(tl_class_match(ds, g_plain, 1000, map, &matched, err, sizeof err), -1);
    assert_non_null(strstr(err, "imagenet_index"));
    tl_dataset_free(ds);
}

/* The real imagenette classes.tsv (wnid, name, imagenet_index). */
static void test_imagenette_classes(void **state) {
    (void)state;
    const char *shared = getenv("TL_SHARED_DATA");
    char d[PATH_MAX], err[TL_ERR_LEN];
    snprintf(d, sizeof d, "%s/imagenette2-224/val", shared ? shared : "");
    if (!shared || !shared[0] || access(d, F_OK) != 0) {
        fprintf(stderr, "SKIP: no imagenette2-224 under TL_SHARED_DATA\n");
        skip();
    }
    tl_dataset *ds = tl_dataset_open(d, err, sizeof err);
    if (!ds) fail_msg("%s", err);
    static const int want[10] = {0, 217, 482, 491, 497, 566, 569, 571, 574, 701};
    assert_int_equal(tl_dataset_num_classes(ds), 10);
    const char *ids[10];
    int inet[10], map[10], matched;
    for (int k = 0; k < 10; k++) {
        assert_int_equal(tl_dataset_class_imagenet_index(ds, k), want[k]);
        ids[k] = tl_dataset_class_folder(ds, k);
        inet[k] = tl_dataset_class_imagenet_index(ds, k);
    }
    assert_string_equal(ids[0], "n01440764");
    assert_int_equal(tl_class_match_ids(10, ids, inet, NULL, 1000, map, &matched, err, sizeof err), 0);
    assert_int_equal(matched, 10);
    for (int k = 0; k < 10; k++) assert_int_equal(map[k], want[k]);
    tl_dataset_free(ds);
}

/* ------------------------------------------------------------------ jobs: sources that cannot be used, resumes */

static void test_checkpoints_carry_class_ids(void **state) {
    (void)state;
    const char *names[] = {"best.safetensors", "last.safetensors"};
    for (int i = 0; i < 2; i++) {
        char p[1300], err[TL_ERR_LEN];
        snprintf(p, sizeof p, "%s/%s", g_src, names[i]);
        tl_st_file *f = tl_st_open(p, err, sizeof err);
        assert_non_null(f);
        const char *ids = tl_st_meta(f, TL_META_CLASS_IDS);
        assert_non_null(ids);
        assert_string_equal(ids, "[\"c00_disc\",\"c01_square\",\"c02_triangle\",\"c03_ring\"]");
        tl_st_close(f);
    }
}

/* A fine-tuning spec on synth b from the source's best checkpoint (or file), merged. */
static void ft_spec(tl_train_spec *s, const char *model, const char *data, const char *train, const char *file,
                    int from_ema) {
    char json[4096], p[1300];
    spec_json(json, sizeof json, model, data, train);
    parse_ok(json, s);
    if (file) snprintf(p, sizeof p, "%s", file);
    else snprintf(p, sizeof p, "%s/best.safetensors", g_src);
    char err[TL_ERR_LEN];
    tl_config c;
    if (tl_checkpoint_config(p, &c, err, sizeof err) == 0) {
        tl_spec_error e;
        if (tl_jobspec_apply_init(s, &c, &e) != 0) fail_msg("apply_init: %s: %s", e.pointer, e.message);
    }
    snprintf(s->init_weights, sizeof s->init_weights, "%s", p);
    s->init_from_ema = from_ema;
}

static void assert_config_error(const tl_train_spec *s, const char *dir, const char *msg) {
    recorder r;
    memset(&r, 0, sizeof r);
    tl_train_result res;
    assert_int_equal(run_job(s, dir, &r, &res), TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "CONFIG_ERROR");
    if (!strstr(res.message, msg)) fail_msg("\"%s\" lacks \"%s\"", res.message, msg);
    assert_int_equal(r.inits, 0);
    assert_int_equal(r.nevals, 0);
}

static void test_bad_source_fails_job(void **state) {
    (void)state;
    static tl_train_spec s;
    char bad[1300], dir[1300];
    snprintf(bad, sizeof bad, "%s/garbage.safetensors", g_root);
    FILE *f = fopen(bad, "wb");
    fputs("this is not a safetensors file", f);
    fclose(f);
    ft_spec(&s, "\"init\":{\"job_id\":1}", "b", "\"epochs\":1,\"batch_size\":12", bad, 0);
    snprintf(dir, sizeof dir, "%s/run_bad", g_root);
    assert_config_error(&s, dir, "garbage.safetensors");
    /* no file given at all */
    s.init_weights[0] = '\0';
    snprintf(dir, sizeof dir, "%s/run_nofile", g_root);
    assert_config_error(&s, dir, "no source file");
    /* EMA weights asked of a file without them */
    ft_spec(&s, "\"init\":{\"job_id\":1}", "b", "\"epochs\":1,\"batch_size\":12", g_plain, 1);
    snprintf(dir, sizeof dir, "%s/run_noema", g_root);
    assert_config_error(&s, dir, "EMA");
    /* "match" against a source that names no classes and is not ImageNet-1k */
    ft_spec(&s, "\"init\":{\"job_id\":1,\"head\":\"match\"}", "b", "\"epochs\":1,\"batch_size\":12", g_plain, 0);
    snprintf(dir, sizeof dir, "%s/run_nomatch", g_root);
    assert_config_error(&s, dir, "no tokenlab.class_ids metadata and 4 classes");
}

/* A fine-tuning job whose run folder has last.safetensors resumes from it like any job: the architecture is
 * the checkpoint's, the source is never read (here it does not exist), no on_init, no step-0 evaluation. */
static void test_resume_ignores_source(void **state) {
    (void)state;
    static tl_train_spec s;
    char dir[1300], cmd[4200], missing[1300];
    snprintf(dir, sizeof dir, "%s/run_resume_only", g_root);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s/last.safetensors' '%s/'", dir, g_src, dir);
    assert_int_equal(system(cmd), 0);
    snprintf(missing, sizeof missing, "%s/gone.safetensors", g_root);
    ft_spec(&s, "\"init\":{\"job_id\":1},\"img_size\":48", "a", "\"epochs\":2,\"batch_size\":16,\"ema_decay\":0.9",
            missing, 1);
    recorder r;
    memset(&r, 0, sizeof r);
    tl_train_result res;
    if (run_job(&s, dir, &r, &res) != TL_TRAIN_SUCCEEDED) fail_msg("resume failed (%s): %s", res.reason, res.message);
    assert_int_equal(r.inits, 0);
    assert_true(r.first_step_seen == 5);
    for (int i = 0; i < r.nevals; i++) assert_true(r.evals[i].step == 8);
    char p[1400], err[TL_ERR_LEN];
    tl_config c;
    snprintf(p, sizeof p, "%s/last.safetensors", dir);
    assert_int_equal(tl_checkpoint_config(p, &c, err, sizeof err), 0);
    assert_int_equal(c.img_size, 32); /* the checkpoint's, not the spec's 48 */
}

/* ------------------------------------------------------------------ whole fine-tuning jobs */

static void run_ok(const tl_train_spec *s, const char *dir, recorder *r, tl_train_result *res) {
    memset(r, 0, sizeof *r);
    tl_train_status st = run_job(s, dir, r, res);
    if (st != TL_TRAIN_SUCCEEDED) fail_msg("job failed (%s): %s", res->reason, res->message);
}

static void test_e2e_reinit_resized(void **state) {
    (void)state;
    static tl_train_spec s;
    recorder r;
    tl_train_result res;
    char dir[1300], p[1400], err[TL_ERR_LEN];
    ft_spec(&s, "\"init\":{\"job_id\":1},\"img_size\":48", "b", "\"epochs\":1,\"batch_size\":12,\"ema_decay\":0.9", NULL, 1);
    snprintf(dir, sizeof dir, "%s/run_reinit", g_root);
    run_ok(&s, dir, &r, &res);
    assert_int_equal(r.inits, 1);
    assert_int_equal(r.init.head, TL_HEAD_REINIT); /* 4 source classes, 3 here */
    assert_int_equal(r.init.from_ema, 1);
    assert_int_equal(r.init.source_cfg.num_classes, 4);
    assert_true(r.init.source_step == 4);
    assert_int_equal(r.init.rep.pos_resized, 1);
    assert_int_equal(r.init.rep.src_grid, 4);
    assert_int_equal(r.init.rep.dst_grid, 6);
    assert_non_null(strstr(r.log, "grid 4 -> 6"));
    assert_non_null(strstr(r.log, "head reinit"));
    /* step 0: raw then EMA, before any step; then the end of the epoch */
    assert_true(r.nevals >= 4);
    assert_true(r.evals[0].step == 0 && r.evals[0].ema == 0);
    assert_true(r.evals[1].step == 0 && r.evals[1].ema == 1);
    assert_int_equal(r.steps_before_first_eval, 0);
    assert_true(r.evals[r.nevals - 1].step == 4);
    /* the job's checkpoint has the new size and classes */
    tl_config c;
    snprintf(p, sizeof p, "%s/last.safetensors", dir);
    assert_int_equal(tl_checkpoint_config(p, &c, err, sizeof err), 0);
    assert_int_equal(c.img_size, 48);
    assert_int_equal(c.num_classes, 3);
    assert_int_equal(c.embed_dim, 32);
}

/* Head keep on the source's own data and size: step 0 is the source's final evaluation, exactly. */
static void test_e2e_keep_loads_source(void **state) {
    (void)state;
    for (int ema = 0; ema < 2; ema++) {
        static tl_train_spec s;
        recorder r;
        tl_train_result res;
        char dir[1300];
        ft_spec(&s, "\"init\":{\"job_id\":1}", "a", "\"epochs\":1,\"batch_size\":16", NULL, ema);
        /* the source's last checkpoint holds the weights its last evaluation saw */
        snprintf(s.init_weights, sizeof s.init_weights, "%s/last.safetensors", g_src);
        snprintf(dir, sizeof dir, "%s/run_keep%d", g_root, ema);
        run_ok(&s, dir, &r, &res);
        assert_int_equal(r.init.head, TL_HEAD_KEEP);
        assert_int_equal(r.init.rep.pos_resized, 0);
        assert_true(r.evals[0].step == 0 && r.evals[0].ema == 0);
        assert_true(r.evals[0].top1 == g_src_top1[ema]);
        assert_true(r.evals[0].loss == g_src_loss[ema]);
    }
}

static void test_e2e_match(void **state) {
    (void)state;
    static tl_train_spec s;
    recorder r;
    tl_train_result res;
    char dir[1300];
    ft_spec(&s, "\"init\":{\"job_id\":1,\"head\":\"match\"}", "b", "\"epochs\":1,\"batch_size\":12", NULL, 0);
    snprintf(dir, sizeof dir, "%s/run_match", g_root);
    run_ok(&s, dir, &r, &res);
    assert_int_equal(r.init.head, TL_HEAD_MATCH);
    assert_int_equal(r.init.classes_matched, 3); /* c00_disc, c01_square, c02_triangle */
    assert_non_null(strstr(r.log, "3 of 3 classes matched"));
}

static void assert_same_files(const char *a, const char *b) {
    char err[TL_ERR_LEN];
    tl_st_file *fa = tl_st_open(a, err, sizeof err), *fb = tl_st_open(b, err, sizeof err);
    assert_non_null(fa);
    assert_non_null(fb);
    assert_int_equal(tl_st_count(fa), tl_st_count(fb));
    for (int i = 0; i < tl_st_count(fa); i++) {
        const tl_st_tensor *ta = tl_st_at(fa, i), *tb = tl_st_get(fb, ta->name);
        assert_non_null(tb);
        assert_int_equal(ta->nbytes, tb->nbytes);
        if (memcmp(ta->data, tb->data, ta->nbytes) != 0) fail_msg("tensor %s differs", ta->name);
    }
    tl_st_close(fa);
    tl_st_close(fb);
}

static void test_e2e_resume_exact(void **state) {
    (void)state;
    static tl_train_spec s;
    recorder ra, rb;
    tl_train_result res;
    char da[1300], db[1300], pa[1400], pb[1400];
    /* 48 images, batch 12: 4 steps per epoch, 8 in all; stopped after step 3 (mid-epoch) */
    ft_spec(&s, "\"init\":{\"job_id\":1},\"img_size\":48", "b",
            "\"epochs\":2,\"batch_size\":12,\"ema_decay\":0.9,\"lr\":0.002", NULL, 1);
    snprintf(da, sizeof da, "%s/run_resume_a", g_root);
    snprintf(db, sizeof db, "%s/run_resume_b", g_root);
    run_ok(&s, da, &ra, &res);
    memset(&rb, 0, sizeof rb);
    rb.stop_after = 3;
    assert_int_equal(run_job(&s, db, &rb, &res), TL_TRAIN_STOPPED);
    assert_int_equal(rb.inits, 1);
    int first_evals = rb.nevals;
    double before[4]; /* the losses of steps 1..3, from the run that stopped */
    memcpy(before, rb.loss, sizeof before);
    memset(&rb, 0, sizeof rb);
    memcpy(rb.loss, before, sizeof before);
    assert_int_equal(run_job(&s, db, &rb, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(rb.inits, 0); /* a resume never reads the source */
    for (int i = 0; i < rb.nevals; i++) assert_true(rb.evals[i].step > 0);
    assert_int_equal(first_evals + rb.nevals, ra.nevals);
    for (int st = 1; st <= 8; st++)
        if (memcmp(&ra.loss[st], &rb.loss[st], sizeof(double)) != 0)
            fail_msg("loss of step %d: %.17g uninterrupted, %.17g resumed", st, ra.loss[st], rb.loss[st]);
    snprintf(pa, sizeof pa, "%s/last.safetensors", da);
    snprintf(pb, sizeof pb, "%s/last.safetensors", db);
    assert_same_files(pa, pb);
}

static int is_head(const char *n) { return strncmp(n, "head.", 5) == 0 || strncmp(n, "aux_head.", 9) == 0; }
static int is_stem(const char *n) { return strncmp(n, "patch_embed.", 12) == 0; }

/* After training with freeze f, tensors frozen by f are bit-identical to the source's raw weights,
 * and at least one other tensor changed. */
static void check_freeze(const char *freeze, int (*frozen)(const char *)) {
    static tl_train_spec s;
    recorder r;
    tl_train_result res;
    char dir[1300], train[256], p[1400], src[1400], err[TL_ERR_LEN];
    snprintf(train, sizeof train, "\"epochs\":1,\"batch_size\":16,\"lr\":0.005,\"freeze\":\"%s\"", freeze);
    ft_spec(&s, "\"init\":{\"job_id\":1}", "a", train, NULL, 0);
    snprintf(s.init_weights, sizeof s.init_weights, "%s/last.safetensors", g_src);
    snprintf(dir, sizeof dir, "%s/run_freeze_%s", g_root, freeze);
    run_ok(&s, dir, &r, &res);
    snprintf(p, sizeof p, "%s/last.safetensors", dir);
    snprintf(src, sizeof src, "%s/last.safetensors", g_src);
    tl_st_file *fj = tl_st_open(p, err, sizeof err), *fs = tl_st_open(src, err, sizeof err);
    assert_non_null(fj);
    assert_non_null(fs);
    int nfrozen = 0, changed = 0;
    for (int i = 0; i < tl_st_count(fj); i++) {
        const tl_st_tensor *tj = tl_st_at(fj, i);
        if (strncmp(tj->name, "optim.", 6) == 0 || strncmp(tj->name, "train.", 6) == 0 ||
            strncmp(tj->name, "ema.", 4) == 0 || strstr(tj->name, "num_batches_tracked"))
            continue;
        const tl_st_tensor *ts = tl_st_get(fs, tj->name);
        assert_non_null(ts);
        int same = tj->nbytes == ts->nbytes && memcmp(tj->data, ts->data, tj->nbytes) == 0;
        if (frozen(tj->name)) {
            if (!same) fail_msg("freeze %s: %s changed", freeze, tj->name);
            nfrozen++;
        } else
            changed += !same;
    }
    assert_true(nfrozen > 0);
    assert_true(changed > 0);
    tl_st_close(fj);
    tl_st_close(fs);
}

static int trunk_frozen(const char *n) { return !is_head(n); }

static void test_e2e_freeze_trunk(void **state) {
    (void)state;
    check_freeze("trunk", trunk_frozen);
}

static void test_e2e_freeze_stem(void **state) {
    (void)state;
    check_freeze("stem", is_stem);
}

/* The decay changes the first update, not the first forward. */
static void test_e2e_layer_decay(void **state) {
    (void)state;
    static tl_train_spec s;
    recorder plain, decayed;
    tl_train_result res;
    char dir[1300];
    ft_spec(&s, "\"init\":{\"job_id\":1}", "a", "\"epochs\":1,\"batch_size\":16,\"lr\":0.005", NULL, 0);
    snprintf(dir, sizeof dir, "%s/run_ld_plain", g_root);
    run_ok(&s, dir, &plain, &res);
    ft_spec(&s, "\"init\":{\"job_id\":1}", "a", "\"epochs\":1,\"batch_size\":16,\"lr\":0.005,\"layer_decay\":0.5", NULL,
            0);
    snprintf(dir, sizeof dir, "%s/run_ld_half", g_root);
    run_ok(&s, dir, &decayed, &res);
    assert_true(plain.loss[1] == decayed.loss[1]);
    assert_true(plain.loss[2] != decayed.loss[2]);
    assert_non_null(strstr(decayed.log, "train.layer_decay: 0.5"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_init_fields),
        cmocka_unit_test(test_spec_init_refusals),
        cmocka_unit_test(test_apply_init),
        cmocka_unit_test(test_class_match_ids),
        cmocka_unit_test(test_classes_tsv_index),
        cmocka_unit_test(test_imagenette_classes),
        cmocka_unit_test(test_checkpoints_carry_class_ids),
        cmocka_unit_test(test_bad_source_fails_job),
        cmocka_unit_test(test_resume_ignores_source),
        cmocka_unit_test(test_e2e_reinit_resized),
        cmocka_unit_test(test_e2e_keep_loads_source),
        cmocka_unit_test(test_e2e_match),
        cmocka_unit_test(test_e2e_resume_exact),
        cmocka_unit_test(test_e2e_freeze_trunk),
        cmocka_unit_test(test_e2e_freeze_stem),
        cmocka_unit_test(test_e2e_layer_decay),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
