/*
 * test_annotate.c: the machine annotator (engine/jobs/annotate.c, annotate_parts.c,
 * annotate_spec.c; tl_jobspec_kind in jobspec.c; tl_model_copy_resized in
 * engine/model/resize.c) and its spec
 * (schema/annotatespec.schema.json).
 *
 *  - tl_jobspec_kind and tl_annotate_spec_parse: defaults, every refusal with
 *    its JSON pointer (unknown fields, both/neither source, types, ranges,
 *    paths escaping the data root, out not .tllm, out's folder missing or a
 *    folder), and the schema walked against the parser (same fields, the
 *    schema's defaults are the parser's, wrong types and extra fields refused
 *    at their pointer, required fields required);
 *  - annotation of a small synthetic set with a model trained here for 320
 *    steps: one entry per image with the right K, k, h, w, and the argmax of
 *    the written map agrees with the exact map's far above chance (printed);
 *  - a truncated JPEG is skipped, counted and logged, the rest annotated;
 *  - resume: stops after 3 batches and after 2 more, then a completing run,
 *    give a file byte-identical to an uninterrupted run's (and the comparison
 *    does fail on a copy with one byte changed); torn, altered, foreign,
 *    misnumbered parts are refused with IO_ERROR; a leftover .tmp is dropped;
 *  - a larger input than the model's (position embedding resampled) gives a
 *    g' x g' map; tl_model_copy_resized at the same size is an exact copy and
 *    refuses other configs; a size that is not a multiple of the patch and a
 *    topk above K are refused when the job runs.
 * Files live in a fresh folder under $TL_TEST_TMP (or /tmp). Single-threaded
 * apart from the engine's pools.
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
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "spec_schema.h"
#include "tokenlab/annotate.h"
#include "tokenlab/labelmap.h"
#include "tokenlab/synth.h"

#define CLASSES 4
#define VAL 48

static char g_base[1024];            /* the test's temp folder */
static char g_data[1100];            /* g_base/synth: train/ val/ train.tllm val.tllm (the spec tests' root) */
static char g_weights[1300];      /* the trained annotator (32 px, patch 8) */
static char g_badval[1100];        /* a copy of val with a truncated JPEG */

/* ------------------------------------------------------------------ fixture */

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = '\0';
    if (len) *len = (size_t)n;
    return b;
}

static int write_all(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static void quiet_log(const char *m, void *u) { (void)m, (void)u; }

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    if (!tmp || !tmp[0]) tmp = "/tmp";
    mkdir(tmp, 0755);
    snprintf(g_base, sizeof g_base, "%s/annotate-XXXXXX", tmp);
    if (!mkdtemp(g_base)) return -1;
    snprintf(g_data, sizeof g_data, "%s/synth", g_base);
    char err[TL_ERR_LEN];
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = CLASSES;
    c.train = 128;
    c.val = VAL;
    c.size = 32;
    c.map_size = 4; /* the model's grid: 32 px / patch 8 */
    c.seed = 11;
    if (tl_synth_write(g_data, &c, err, sizeof err) != 0) {
        fprintf(stderr, "synth: %s\n", err);
        return -1;
    }
    /* the annotator: token labeling on the exact maps, 40 epochs x 8 steps */
    char json[8192];
    snprintf(json, sizeof json,
             "{\"kind\":\"train\",\"name\":\"annotator\",\"model\":{\"img_size\":32,\"patch_size\":8,"
             "\"embed_dim\":48,\"depth\":2,\"num_heads\":2,\"mlp_ratio\":2,\"stem_channels\":8,\"skip_lam\":1,"
             "\"num_classes\":%d,\"drop_path_rate\":0},\"data\":{\"train\":\"%s/train\",\"label_maps\":"
             "\"%s/train.tllm\"},\"train\":{\"epochs\":40,\"batch_size\":16,\"lr\":0.002,\"warmup_epochs\":2,"
             "\"ema_decay\":0.99,\"threads\":2,\"loader_threads\":1,\"cache_mb\":16,\"eval_every_epochs\":0,"
             "\"checkpoint_every_epochs\":0,\"augment\":{\"randaug\":\"\",\"reprob\":0,\"scale\":[0.5,1]}}}",
             CLASSES, g_data, g_data);
    static tl_train_spec ts;
    tl_spec_error se;
    if (tl_jobspec_parse(json, NULL, &ts, &se) != 0) {
        fprintf(stderr, "train spec: %s: %s\n", se.pointer, se.message);
        return -1;
    }
    char run_dir[1200];
    snprintf(run_dir, sizeof run_dir, "%s/annotator", g_base);
    tl_train_hooks h = {.on_log = quiet_log};
    tl_train_result res;
    double t0 = (double)clock() / CLOCKS_PER_SEC;
    if (tl_train_run(&ts, run_dir, &h, &res) != TL_TRAIN_SUCCEEDED) {
        fprintf(stderr, "training failed: %s: %s\n", res.reason, res.message);
        return -1;
    }
    printf("annotator trained: %lld steps (%.1f s of CPU)\n", (long long)res.step,
           (double)clock() / CLOCKS_PER_SEC - t0);
    snprintf(g_weights, sizeof g_weights, "%s/last.safetensors", run_dir);
    /* val with a truncated JPEG: the first image's bytes cut at 60% */
    snprintf(g_badval, sizeof g_badval, "%s/val_bad", g_base);
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "cp -r '%s/val' '%s'", g_data, g_badval);
    if (system(cmd) != 0) return -1;
    tl_dataset *ds = tl_dataset_open(g_badval, err, sizeof err);
    if (!ds) return -1;
    char first[PATH_MAX], bad[PATH_MAX + 64];
    tl_dataset_path(ds, 0, first, sizeof first);
    snprintf(bad, sizeof bad, "%s/%s/zz_truncated.jpg", g_badval, tl_dataset_class_folder(ds, 0));
    tl_dataset_free(ds);
    size_t n = 0;
    char *jpg = read_all(first, &n);
    if (!jpg || write_all(bad, jpg, n * 6 / 10) != 0) return -1;
    free(jpg);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_base);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ spec helpers */

#define MINIMAL "{\"kind\":\"annotate\",\"name\":\"annotate\",\"source\":{\"job_id\":1},\"data\":{\"images\":\"train\",\"out\":\"train.tllm\"}}"
#define MINIMAL_MODEL "{\"kind\":\"annotate\",\"name\":\"annotate\",\"source\":{\"model\":\"m\"},\"data\":{\"images\":\"train\",\"out\":\"train.tllm\"}}"

static void parse_ok(const char *json, const char *root, tl_annotate_spec *out) {
    tl_spec_error e;
    memset(&e, 0, sizeof e);
    if (tl_annotate_spec_parse(json, root, out, &e) != 0) fail_msg("refused (%s: %s): %s", e.pointer, e.message, json);
}

/* Refused with exactly this pointer and a message containing msg; the output untouched. */
static void refused(const char *json, const char *root, const char *pointer, const char *msg) {
    static tl_annotate_spec out, sentinel;
    memset(&out, 0x5a, sizeof out);
    memcpy(&sentinel, &out, sizeof out);
    tl_spec_error e;
    memset(&e, 0, sizeof e);
    if (tl_annotate_spec_parse(json, root, &out, &e) != -1) fail_msg("accepted: %s", json);
    if (strcmp(e.pointer, pointer) != 0)
        fail_msg("pointer \"%s\" (message \"%s\"), wanted \"%s\" for %s", e.pointer, e.message, pointer, json);
    if (!strstr(e.message, msg)) fail_msg("message \"%s\" lacks \"%s\" (%s)", e.message, msg, json);
    assert_memory_equal(&out, &sentinel, sizeof out);
}

/* A spec with the given source, data and annotate members (JSON fragments). */
static const char *doc(const char *source, const char *data, const char *annotate) {
    static char buf[8192];
    snprintf(buf, sizeof buf, "{\"kind\":\"annotate\",\"name\":\"a\",\"source\":%s,\"data\":%s%s%s%s}", source, data,
             annotate ? ",\"annotate\":{" : "", annotate ? annotate : "", annotate ? "}" : "");
    return buf;
}
#define SRC "{\"job_id\":7}"
#define DATA "{\"images\":\"val\",\"out\":\"val.tllm\"}"

/* ------------------------------------------------------------------ spec tests */

static void test_kind(void **state) {
    (void)state;
    char kind[16];
    tl_spec_error e;
    assert_int_equal(tl_jobspec_kind(MINIMAL, kind, sizeof kind, &e), 0);
    assert_string_equal(kind, "annotate");
    assert_int_equal(tl_jobspec_kind("{\"name\":\"x\",\"kind\":\"train\"}", kind, sizeof kind, &e), 0);
    assert_string_equal(kind, "train");
    assert_int_equal(tl_jobspec_kind("{\"kind\":", kind, sizeof kind, &e), -1);
    assert_string_equal(e.pointer, "");
    assert_non_null(strstr(e.message, "not valid JSON"));
    assert_int_equal(tl_jobspec_kind("{} x", kind, sizeof kind, &e), -1);
    assert_non_null(strstr(e.message, "text after the document"));
    assert_int_equal(tl_jobspec_kind("[1]", kind, sizeof kind, &e), -1);
    assert_string_equal(e.pointer, "/kind");
    assert_int_equal(tl_jobspec_kind("{\"name\":\"x\"}", kind, sizeof kind, &e), -1);
    assert_string_equal(e.pointer, "/kind");
    assert_string_equal(e.message, "required");
    assert_int_equal(tl_jobspec_kind("{\"kind\":3}", kind, sizeof kind, &e), -1);
    assert_string_equal(e.message, "must be a string");
    assert_int_equal(tl_jobspec_kind("{\"kind\":\"a-kind-much-too-long\"}", kind, sizeof kind, &e), -1);
    assert_string_equal(e.pointer, "/kind");
}

static void test_spec_defaults(void **state) {
    (void)state;
    static tl_annotate_spec s, d;
    parse_ok(MINIMAL, g_data, &s);
    assert_string_equal(s.kind, "annotate");
    assert_string_equal(s.name, "annotate");
    assert_string_equal(s.source_model, "");
    assert_int_equal(s.source_job, 1);
    assert_string_equal(s.source_checkpoint, "best");
    assert_int_equal(s.source_ema, -1);
    assert_int_equal(s.size, 0);
    assert_int_equal(s.topk, 5);
    assert_int_equal(s.batch_size, 32);
    assert_int_equal(s.threads, 0);
    assert_int_equal(s.part_images, 2048);
    assert_string_equal(s.weights_path, "");
    assert_int_equal(s.from_ema, 0);
    char want[PATH_MAX + 32], real[PATH_MAX];
    assert_non_null(realpath(g_data, real));
    snprintf(want, sizeof want, "%s/train", real);
    assert_string_equal(s.images_dir, want);
    snprintf(want, sizeof want, "%s/train.tllm", real);
    assert_string_equal(s.out_path, want);
    tl_annotate_defaults(&d);
    assert_int_equal(d.topk, s.topk);
    assert_int_equal(d.part_images, s.part_images);
    /* overrides; part_images rounded up to a multiple of batch_size */
    parse_ok(doc("{\"job_id\":9007199254740991,\"checkpoint\":\"1200\",\"ema\":false}", DATA,
                 "\"size\":48,\"topk\":3,\"batch_size\":10,\"threads\":2,\"part_images\":25"),
             g_data, &s);
    assert_int_equal(s.source_job, 9007199254740991LL);
    assert_string_equal(s.source_checkpoint, "1200");
    assert_int_equal(s.source_ema, 0);
    assert_int_equal(s.size, 48);
    assert_int_equal(s.topk, 3);
    assert_int_equal(s.batch_size, 10);
    assert_int_equal(s.threads, 2);
    assert_int_equal(s.part_images, 30);
    parse_ok(doc("{\"model\":\"lvvit-s_1.0\"}", DATA, NULL), g_data, &s);
    assert_string_equal(s.source_model, "lvvit-s_1.0");
    assert_int_equal(s.source_job, 0);
    parse_ok(doc("{\"job_id\":3,\"checkpoint\":\"last\",\"ema\":true}", DATA, NULL), g_data, &s);
    assert_string_equal(s.source_checkpoint, "last");
    assert_int_equal(s.source_ema, 1);
    /* without a data root: relative to the working folder, stored absolute */
    char cwd[PATH_MAX], json[3 * PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(g_base), 0);
    parse_ok(doc(SRC, "{\"images\":\"synth/val\",\"out\":\"x.tllm\"}", NULL), NULL, &s);
    assert_int_equal(chdir(cwd), 0);
    assert_non_null(realpath(g_base, real));
    snprintf(want, sizeof want, "%s/x.tllm", real);
    assert_string_equal(s.out_path, want);
    snprintf(json, sizeof json, "{\"kind\":\"annotate\",\"name\":\"a\",\"source\":" SRC
             ",\"data\":{\"images\":\"%s/val\",\"out\":\"%s/abs.tllm\"}}", g_data, g_base);
    parse_ok(json, NULL, &s);
}

static void test_spec_refusals(void **state) {
    (void)state;
    const char *R = g_data;
    /* document */
    refused("{\"kind\":\"annotate\"", R, "", "not valid JSON");
    refused(MINIMAL " 1", R, "", "text after the document");
    refused("[]", R, "", "must be an object");
    refused("{\"kind\":\"annotate\",\"name\":\"a\",\"source\":" SRC ",\"data\":" DATA ",\"extra\":1}", R, "/extra",
            "unknown field");
    refused("{\"kind\":\"annotate\",\"kind\":\"annotate\",\"name\":\"a\",\"source\":" SRC ",\"data\":" DATA "}", R,
            "/kind", "duplicate key");
    refused("{\"name\":\"a\",\"source\":" SRC ",\"data\":" DATA "}", R, "/kind", "required");
    refused("{\"kind\":\"train\",\"name\":\"a\",\"source\":" SRC ",\"data\":" DATA "}", R, "/kind",
            "must be \"annotate\"");
    refused("{\"kind\":\"annotate\",\"source\":" SRC ",\"data\":" DATA "}", R, "/name", "required");
    refused("{\"kind\":\"annotate\",\"name\":5,\"source\":" SRC ",\"data\":" DATA "}", R, "/name", "must be a string");
    refused("{\"kind\":\"annotate\",\"name\":\"\",\"source\":" SRC ",\"data\":" DATA "}", R, "/name",
            "1..127 printable");
    refused("{\"kind\":\"annotate\",\"name\":\"a\",\"data\":" DATA "}", R, "/source", "required");
    refused("{\"kind\":\"annotate\",\"name\":\"a\",\"source\":" SRC "}", R, "/data", "required");
    /* source */
    refused(doc("{\"model\":\"m\",\"job_id\":1}", DATA, NULL), R, "/source", "not both");
    refused(doc("{}", DATA, NULL), R, "/source", "exactly one of");
    refused(doc("{\"checkpoint\":\"best\"}", DATA, NULL), R, "/source", "exactly one of");
    refused(doc("\"m\"", DATA, NULL), R, "/source", "must be an object");
    refused(doc("{\"job_id\":1,\"step\":3}", DATA, NULL), R, "/source/step", "unknown field");
    refused(doc("{\"model\":\"-m\"}", DATA, NULL), R, "/source/model", "must be a model name");
    refused(doc("{\"model\":\"a/b\"}", DATA, NULL), R, "/source/model", "must be a model name");
    refused(doc("{\"model\":7}", DATA, NULL), R, "/source/model", "must be a string");
    refused(doc("{\"model\":\"m\",\"checkpoint\":\"last\"}", DATA, NULL), R, "/source/checkpoint", "only with \"job_id\"");
    refused(doc("{\"model\":\"m\",\"ema\":true}", DATA, NULL), R, "/source/ema", "only with \"job_id\"");
    refused(doc("{\"job_id\":0}", DATA, NULL), R, "/source/job_id", "must be an integer in 1..");
    refused(doc("{\"job_id\":1.5}", DATA, NULL), R, "/source/job_id", "must be an integer");
    refused(doc("{\"job_id\":\"1\"}", DATA, NULL), R, "/source/job_id", "must be an integer");
    refused(doc("{\"job_id\":1,\"checkpoint\":\"first\"}", DATA, NULL), R, "/source/checkpoint", "\"best\", \"last\"");
    refused(doc("{\"job_id\":1,\"checkpoint\":\"0120\"}", DATA, NULL), R, "/source/checkpoint", "no leading 0");
    refused(doc("{\"job_id\":1,\"checkpoint\":120}", DATA, NULL), R, "/source/checkpoint", "must be a string");
    refused(doc("{\"job_id\":1,\"ema\":1}", DATA, NULL), R, "/source/ema", "must be a boolean");
    /* annotate */
    refused(doc(SRC, DATA, "\"bogus\":1"), R, "/annotate/bogus", "unknown field");
    refused("{\"kind\":\"annotate\",\"name\":\"a\",\"source\":" SRC ",\"data\":" DATA ",\"annotate\":[]}", R,
            "/annotate", "must be an object");
    refused(doc(SRC, DATA, "\"topk\":0"), R, "/annotate/topk", "must be an integer in 1..65535");
    refused(doc(SRC, DATA, "\"topk\":\"5\""), R, "/annotate/topk", "must be an integer");
    refused(doc(SRC, DATA, "\"size\":33"), R, "/annotate/size", "multiple of the model's patch size");
    refused(doc(SRC, DATA, "\"size\":-16"), R, "/annotate/size", "in 0..4096");
    refused(doc(SRC, DATA, "\"size\":4098"), R, "/annotate/size", "in 0..4096");
    refused(doc(SRC, DATA, "\"batch_size\":0"), R, "/annotate/batch_size", "in 1..4096");
    refused(doc(SRC, DATA, "\"threads\":-1"), R, "/annotate/threads", "in 0..256");
    refused(doc(SRC, DATA, "\"part_images\":0"), R, "/annotate/part_images", "in 1..1048576");
    refused(doc(SRC, DATA, "\"part_images\":true"), R, "/annotate/part_images", "must be an integer");
    /* data */
    refused(doc(SRC, "{\"images\":\"val\"}", NULL), R, "/data/out", "required");
    refused(doc(SRC, "{\"out\":\"a.tllm\"}", NULL), R, "/data/images", "required");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"a.tllm\",\"maps\":1}", NULL), R, "/data/maps", "unknown field");
    refused(doc(SRC, "{\"images\":1,\"out\":\"a.tllm\"}", NULL), R, "/data/images", "must be a string");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":[]}", NULL), R, "/data/out", "must be a string");
}

static void test_spec_paths(void **state) {
    (void)state;
    const char *R = g_data;
    char p[PATH_MAX + 64], json[3 * PATH_MAX];
    /* a folder named like a map, links leading out of the root and one staying inside */
    snprintf(p, sizeof p, "%s/dir.tllm", g_data);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/link_out", g_data);
    if (symlink(g_base, p) != 0) fail_msg("symlink %s", p);
    snprintf(p, sizeof p, "%s/esc.tllm", g_data);
    snprintf(json, sizeof json, "%s/outside.tllm", g_base);
    write_all(json, "x", 1);
    if (symlink(json, p) != 0) fail_msg("symlink %s", p);
    snprintf(p, sizeof p, "%s/in.tllm", g_data);
    if (symlink("val.tllm", p) != 0) fail_msg("symlink %s", p);

    refused(doc(SRC, "{\"images\":\"/tmp\",\"out\":\"a.tllm\"}", NULL), R, "/data/images", "no absolute path");
    refused(doc(SRC, "{\"images\":\"val/../val\",\"out\":\"a.tllm\"}", NULL), R, "/data/images", "no \"..\"");
    refused(doc(SRC, "{\"images\":\"link_out/val_bad\",\"out\":\"a.tllm\"}", NULL), R, "/data/images",
            "outside the data root");
    refused(doc(SRC, "{\"images\":\"nope\",\"out\":\"a.tllm\"}", NULL), R, "/data/images", "folder does not exist");
    refused(doc(SRC, "{\"images\":\"val.tllm\",\"out\":\"a.tllm\"}", NULL), R, "/data/images", "not a folder");
    refused(doc(SRC, "{\"images\":\"\",\"out\":\"a.tllm\"}", NULL), R, "/data/images", "non-empty");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"labels.bin\"}", NULL), R, "/data/out", "ending in \".tllm\"");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"val/.tllm\"}", NULL), R, "/data/out", "ending in \".tllm\"");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"\"}", NULL), R, "/data/out", "non-empty");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"missing/a.tllm\"}", NULL), R, "/data/out", "folder does not exist");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"/tmp/a.tllm\"}", NULL), R, "/data/out", "no absolute path");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"/a.tllm\"}", NULL), R, "/data/out", "no absolute path");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"../a.tllm\"}", NULL), R, "/data/out", "no \"..\"");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"link_out/a.tllm\"}", NULL), R, "/data/out", "outside the data root");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"esc.tllm\"}", NULL), R, "/data/out", "outside the data root");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"dir.tllm\"}", NULL), R, "/data/out", "is a folder");
    refused(doc(SRC, "{\"images\":\"val\",\"out\":\"val.tllm/x.tllm\"}", NULL), R, "/data/out", "not a folder");
    /* a file that exists is fine (it is replaced), as is a link staying inside */
    static tl_annotate_spec s;
    parse_ok(doc(SRC, "{\"images\":\"val\",\"out\":\"val.tllm\"}", NULL), R, &s);
    parse_ok(doc(SRC, "{\"images\":\"./val/\",\"out\":\"./in.tllm\"}", NULL), R, &s);
    parse_ok(doc(SRC, "{\"images\":\"val\",\"out\":\"in.tllm\"}", NULL), R, &s);
    /* without a data root nothing is "outside" */
    snprintf(json, sizeof json, "{\"kind\":\"annotate\",\"name\":\"a\",\"source\":" SRC
             ",\"data\":{\"images\":\"%s/val\",\"out\":\"%s/esc.tllm\"}}", g_data, g_data);
    parse_ok(json, NULL, &s);
    /* a missing data root */
    refused(MINIMAL, "/nonexistent/root", "", "data root");
    snprintf(p, sizeof p, "%s/link_out", g_data);
    unlink(p);
    snprintf(p, sizeof p, "%s/esc.tllm", g_data);
    unlink(p);
    snprintf(p, sizeof p, "%s/in.tllm", g_data);
    unlink(p);
    snprintf(p, sizeof p, "%s/dir.tllm", g_data);
    rmdir(p);
}

/* ------------------------------------------------------------------ schema */

/* Every field path the parser accepts (objects included). */
static const char *const PARSER_FIELDS[] = {
    "/kind", "/name", "/source", "/source/model", "/source/job_id", "/source/checkpoint", "/source/ema", "/data",
    "/data/images", "/data/out", "/annotate", "/annotate/size", "/annotate/topk", "/annotate/batch_size",
    "/annotate/threads", "/annotate/part_images", NULL};
/* Fields whose absence means something the schema cannot state as a default. */
static const char *const NO_DEFAULT[] = {"/source/model", "/source/job_id", "/source/ema", NULL};

static void test_schema_matches_parser(void **state) {
    (void)state;
    static tlt_schema_walk w;
    cJSON *schema = tlt_schema_load("annotatespec.schema.json", NO_DEFAULT, 0, &w);
    /* the same fields */
    int nfields = 0;
    for (const char *const *f = PARSER_FIELDS; *f; f++, nfields++) {
        int found = 0;
        for (int i = 0; i < w.nprops; i++) found |= strcmp(w.props[i].path, *f) == 0;
        if (!found) fail_msg("the parser accepts %s but the schema does not list it", *f);
    }
    assert_int_equal(w.nprops, nfields);
    assert_int_equal(w.nobjects, 4); /* the document, source, data, annotate */

    static tl_annotate_spec minimal, s;
    parse_ok(MINIMAL, g_data, &minimal);
    for (int i = 0; i < w.nprops; i++) {
        const tlt_prop *p = &w.props[i];
        const char *base = strcmp(p->path, "/source/model") == 0 ? MINIMAL_MODEL : MINIMAL;
        /* the schema's default parses to the parser's default */
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(p->node, "default");
        if (def) {
            char *json = tlt_spec_with(base, p->path, def);
            tl_spec_error e;
            if (tl_annotate_spec_parse(json, g_data, &s, &e) != 0)
                fail_msg("the schema default of %s is refused (%s: %s): %s", p->path, e.pointer, e.message, json);
            if (memcmp(&s, &minimal, sizeof s) != 0) fail_msg("the schema default of %s is not the parser's", p->path);
            free(json);
        }
        /* a value of the wrong type is refused at that pointer */
        const char *type = cJSON_GetObjectItemCaseSensitive(p->node, "type")->valuestring;
        cJSON *bad = NULL;
        const char *want = NULL;
        if (strcmp(type, "integer") == 0) bad = cJSON_CreateNumber(1.5), want = "must be an integer";
        else if (strcmp(type, "boolean") == 0) bad = cJSON_CreateNumber(1), want = "must be a boolean";
        else if (strcmp(type, "string") == 0) bad = cJSON_CreateNumber(1), want = "must be a string";
        else if (strcmp(type, "object") == 0) bad = cJSON_CreateString("x"), want = "must be an object";
        else fail_msg("schema %s: unexpected type %s", p->path, type);
        char *json = tlt_spec_with(base, p->path, bad);
        refused(json, g_data, p->path, want);
        free(json);
        cJSON_Delete(bad);
        /* integer bounds: just outside is refused there, the bound itself accepted */
        const char *bounds[2] = {"minimum", "maximum"};
        for (int b = 0; b < 2; b++) {
            const cJSON *bv = cJSON_GetObjectItemCaseSensitive(p->node, bounds[b]);
            if (!bv) continue;
            /* (cJSON prints 15 significant digits, so the step grows with x; size stays even) */
            double x = bv->valuedouble, step = strcmp(p->path, "/annotate/size") == 0 ? 2 : fmax(1.0, fabs(x) * 1e-6);
            cJSON *o = cJSON_CreateNumber(b == 0 ? x - step : x + step);
            json = tlt_spec_with(base, p->path, o);
            tl_spec_error e;
            if (tl_annotate_spec_parse(json, g_data, &s, &e) == 0) fail_msg("%s outside its %s accepted", p->path, bounds[b]);
            assert_string_equal(e.pointer, p->path);
            free(json);
            cJSON_Delete(o);
            cJSON *in = cJSON_CreateNumber(x);
            json = tlt_spec_with(base, p->path, in);
            parse_ok(json, g_data, &s);
            free(json);
            cJSON_Delete(in);
        }
    }
    /* every object refuses an extra property, with its pointer */
    cJSON *one = cJSON_CreateNumber(1);
    for (int i = 0; i < w.nobjects; i++) {
        char path2[160];
        snprintf(path2, sizeof path2, "%s/zz_extra", w.object_paths[i]);
        char *json = tlt_spec_with(MINIMAL, path2, one);
        refused(json, g_data, path2, "unknown field");
        free(json);
    }
    cJSON_Delete(one);
    /* the schema's required fields are the parser's */
    int nreq = 0;
    for (int i = 0; i < w.nobjects; i++) {
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(w.objects[i], "required");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next, nreq++) {
            char path2[160];
            snprintf(path2, sizeof path2, "%s/%s", w.object_paths[i], r->valuestring);
            char *json = tlt_spec_with(MINIMAL, path2, NULL);
            refused(json, g_data, path2, "required");
            free(json);
        }
    }
    assert_int_equal(nreq, 6); /* kind, name, source, data; data.images, data.out */
    cJSON_Delete(schema);
}

/* ------------------------------------------------------------------ annotation */

typedef struct {
    int starts, progress, checkpoints, skipped_logs;
    int64_t start_done, start_total;
    tl_annotate_report last;
    int stop_after;      /* batches of this run after which should_stop says yes; 0 never */
    int batches;
} recorder;

static void on_start(int64_t done, int64_t total, void *u) {
    recorder *r = u;
    r->starts++;
    r->start_done = done;
    r->start_total = total;
}
static void on_progress(const tl_annotate_report *rep, void *u) {
    recorder *r = u;
    r->progress++;
    r->batches++;
    assert_true(rep->done > r->last.done || r->progress == 1);
    assert_true(rep->done <= rep->total);
    assert_true(rep->img_per_s >= 0.0);
    r->last = *rep;
}
static void on_ckpt(const char *path, int64_t done, void *u) {
    recorder *r = u;
    r->checkpoints++;
    assert_int_equal(access(path, F_OK), 0);
    (void)done;
}
static void on_log(const char *msg, void *u) {
    recorder *r = u;
    if (strncmp(msg, "skipped ", 8) == 0) r->skipped_logs++;
}
static int should_stop(void *u) {
    recorder *r = u;
    return r->stop_after > 0 && r->batches >= r->stop_after;
}

static void make_spec(tl_annotate_spec *s, const char *images, const char *out, const char *annotate) {
    char json[3 * PATH_MAX];
    snprintf(json, sizeof json,
             "{\"kind\":\"annotate\",\"name\":\"t\",\"source\":{\"job_id\":1},\"data\":{\"images\":\"%s\","
             "\"out\":\"%s\"},\"annotate\":{\"threads\":2%s%s}}",
             images, out, annotate ? "," : "", annotate ? annotate : "");
    parse_ok(json, NULL, s);
    snprintf(s->weights_path, sizeof s->weights_path, "%s", g_weights);
    s->from_ema = 0;
}

static tl_train_status run(const tl_annotate_spec *s, const char *dir, recorder *r, tl_train_result *res) {
    tl_annotate_hooks h = {on_start, on_progress, NULL, on_ckpt, on_log, should_stop, r};
    r->batches = 0;
    return tl_annotate_run(s, dir, &h, res);
}

static int argmax_at(const float *v, const int32_t *ix, int k, int plane, int p) {
    int best = 0;
    for (int j = 1; j < k; j++)
        if (v[(size_t)j * plane + p] > v[(size_t)best * plane + p]) best = j;
    return ix[(size_t)best * plane + p];
}

static void test_annotate_agrees_with_truth(void **state) {
    (void)state;
    static tl_annotate_spec s;
    char images[PATH_MAX + 8], out[PATH_MAX + 32], dir[PATH_MAX + 32], truth[PATH_MAX + 32], err[TL_ERR_LEN];
    snprintf(images, sizeof images, "%s/val", g_data);
    snprintf(out, sizeof out, "%s/val_annotated.tllm", g_base);
    snprintf(dir, sizeof dir, "%s/run_agree", g_base);
    snprintf(truth, sizeof truth, "%s/val.tllm", g_data);
    make_spec(&s, images, out, "\"topk\":3,\"batch_size\":16");
    recorder r = {0};
    tl_train_result res;
    tl_train_status st = run(&s, dir, &r, &res);
    if (st != TL_TRAIN_SUCCEEDED) fail_msg("%s: %s", res.reason, res.message);
    assert_int_equal(res.step, VAL);
    assert_int_equal(res.skipped_images, 0);
    assert_int_equal(r.starts, 1);
    assert_int_equal(r.start_done, 0);
    assert_int_equal(r.start_total, VAL);
    assert_int_equal(r.progress, 3);
    assert_int_equal(r.last.done, VAL);
    assert_true(r.last.img_per_s > 0.0);
    assert_true(r.last.eta_seconds >= 0.0 && r.last.eta_seconds < 1e-9);
    assert_int_equal(r.checkpoints, 1);

    tl_labelmap *lm = tl_labelmap_open(out, CLASSES, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    tl_labelmap *tm = tl_labelmap_open(truth, CLASSES, err, sizeof err);
    if (!tm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_count(lm), VAL);
    assert_int_equal(tl_labelmap_num_classes(lm), CLASSES);
    assert_int_equal(tl_labelmap_topk(lm), 3);
    assert_int_equal(tl_labelmap_h(lm), 4);
    assert_int_equal(tl_labelmap_w(lm), 4);
    int k = 3, kt = tl_labelmap_topk(tm), plane = 16;
    assert_int_equal(tl_labelmap_h(tm), 4);
    float v[3 * 16], vt[CLASSES * 16];
    int32_t ix[3 * 16], ixt[CLASSES * 16];
    int64_t agree = 0, n = 0, hist[CLASSES] = {0};
    for (int64_t i = 0; i < tl_labelmap_count(lm); i++) {
        int64_t e = -1;
        const char *key = tl_labelmap_key(lm, i, &e);
        int64_t et = tl_labelmap_find(tm, key);
        if (et < 0) fail_msg("%s is not in the exact maps", key);
        assert_int_equal(tl_labelmap_read(lm, e, v, ix, err, sizeof err), 0);
        assert_int_equal(tl_labelmap_read(tm, et, vt, ixt, err, sizeof err), 0);
        for (int p = 0; p < plane; p++) {
            /* stored best first, distinct classes */
            for (int j = 1; j < k; j++) {
                assert_true(v[(size_t)j * plane + p] <= v[(size_t)(j - 1) * plane + p]);
                assert_int_not_equal(ix[(size_t)j * plane + p], ix[(size_t)(j - 1) * plane + p]);
            }
            int a = argmax_at(v, ix, k, plane, p), t = argmax_at(vt, ixt, kt, plane, p);
            agree += a == t;
            hist[t]++;
            n++;
        }
    }
    int64_t major = 0;
    for (int c = 0; c < CLASSES; c++) major = hist[c] > major ? hist[c] : major;
    double acc = (double)agree / (double)n, chance = 1.0 / CLASSES, maj = (double)major / (double)n;
    printf("annotation vs exact maps: argmax agreement %.1f%% over %lld locations (chance %.1f%%, most frequent "
           "class %.1f%%)\n",
           100 * acc, (long long)n, 100 * chance, 100 * maj);
    assert_true(acc > 2.0 * chance);
    assert_true(acc > maj + 0.1);
    tl_labelmap_close(lm);
    tl_labelmap_close(tm);
}

static void test_corrupt_image_skipped(void **state) {
    (void)state;
    static tl_annotate_spec s;
    char out[PATH_MAX + 32], dir[PATH_MAX + 32], err[TL_ERR_LEN];
    snprintf(out, sizeof out, "%s/bad.tllm", g_base);
    snprintf(dir, sizeof dir, "%s/run_bad", g_base);
    make_spec(&s, g_badval, out, "\"topk\":2,\"batch_size\":16");
    recorder r = {0};
    tl_train_result res;
    tl_train_status st = run(&s, dir, &r, &res);
    if (st != TL_TRAIN_SUCCEEDED) fail_msg("%s: %s", res.reason, res.message);
    assert_int_equal(res.step, VAL + 1);
    assert_int_equal(res.skipped_images, 1);
    assert_int_equal(r.skipped_logs, 1);
    assert_int_equal(r.last.skipped, 1);
    tl_labelmap *lm = tl_labelmap_open(out, CLASSES, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_count(lm), VAL);
    tl_dataset *ds = tl_dataset_open(g_badval, err, sizeof err);
    assert_non_null(ds);
    char key[256];
    snprintf(key, sizeof key, "%s/zz_truncated.jpg", tl_dataset_class_folder(ds, 0));
    assert_true(tl_labelmap_find(lm, key) < 0);
    for (int i = 0; i < tl_dataset_count(ds); i++)
        if (strcmp(tl_dataset_relpath(ds, i), key) != 0) assert_true(tl_labelmap_find(lm, tl_dataset_relpath(ds, i)) >= 0);
    tl_dataset_free(ds);
    tl_labelmap_close(lm);
}

static int same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *da = read_all(a, &na), *db = read_all(b, &nb);
    int same = da && db && na == nb && memcmp(da, db, na) == 0;
    free(da);
    free(db);
    return same;
}

static int count_parts(const char *dir) {
    int n = 0;
    for (int i = 0; i < 100; i++) {
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/part-%05d.tlpart", dir, i);
        n += access(p, F_OK) == 0;
    }
    return n;
}

static void test_resume_is_byte_identical(void **state) {
    (void)state;
    static tl_annotate_spec s;
    char out_a[PATH_MAX + 32], out_b[PATH_MAX + 32], da[PATH_MAX + 32], db[PATH_MAX + 32];
    snprintf(out_a, sizeof out_a, "%s/resume_a.tllm", g_base);
    snprintf(out_b, sizeof out_b, "%s/resume_b.tllm", g_base);
    snprintf(da, sizeof da, "%s/run_resume_a", g_base);
    snprintf(db, sizeof db, "%s/run_resume_b", g_base);
    /* 49 images (one unreadable) in batches of 8, parts of 16 */
    make_spec(&s, g_badval, out_a, "\"topk\":3,\"batch_size\":8,\"part_images\":16");
    recorder r = {0};
    tl_train_result res;
    assert_int_equal(run(&s, da, &r, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(r.checkpoints, 4); /* 16, 32, 48, 49 */
    assert_int_equal(count_parts(da), 0);

    memcpy(s.out_path, out_b, strlen(out_b) + 1);
    recorder rb = {0};
    rb.stop_after = 3;
    assert_int_equal(run(&s, db, &rb, &res), TL_TRAIN_STOPPED);
    assert_string_equal(res.reason, "STOPPED");
    assert_int_equal(res.step, 24);
    assert_int_equal(count_parts(db), 2); /* [0,16) [16,24) */
    assert_int_equal(access(out_b, F_OK), -1);
    rb.stop_after = 2;
    assert_int_equal(run(&s, db, &rb, &res), TL_TRAIN_STOPPED);
    assert_int_equal(rb.start_done, 24);
    assert_int_equal(res.step, 40);
    assert_int_equal(count_parts(db), 4); /* + [24,32) [32,40) */
    rb.stop_after = 0;
    assert_int_equal(run(&s, db, &rb, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(rb.start_done, 40);
    assert_int_equal(res.step, VAL + 1);
    assert_int_equal(res.skipped_images, 1);
    assert_int_equal(count_parts(db), 0);
    assert_true(same_file(out_a, out_b));
    printf("resumed twice (after 24 and 40 of 49 images): the label map is byte-identical to the uninterrupted one\n");

    /* the comparison can fail: one changed byte in a record */
    size_t n = 0;
    char *bytes = read_all(out_a, &n);
    assert_non_null(bytes);
    bytes[72 + 5] ^= 0x01;
    char out_c[PATH_MAX + 32];
    snprintf(out_c, sizeof out_c, "%s/resume_c.tllm", g_base);
    assert_int_equal(write_all(out_c, bytes, n), 0);
    free(bytes);
    assert_false(same_file(out_a, out_c));
}

/* Runs the spec in dir expecting IO_ERROR with msg in the message. */
static void refused_run(const tl_annotate_spec *s, const char *dir, const char *msg) {
    recorder r = {0};
    tl_train_result res;
    tl_train_status st = run(s, dir, &r, &res);
    if (st != TL_TRAIN_FAILED) fail_msg("status %d, expected FAILED (%s)", (int)st, msg);
    assert_string_equal(res.reason, "IO_ERROR");
    if (!strstr(res.message, msg)) fail_msg("message \"%s\" lacks \"%s\"", res.message, msg);
}

static void test_bad_parts_refused(void **state) {
    (void)state;
    static tl_annotate_spec s;
    char out[PATH_MAX + 32], dir[PATH_MAX + 32], part[PATH_MAX + 64], other[PATH_MAX + 64];
    snprintf(out, sizeof out, "%s/parts.tllm", g_base);
    snprintf(dir, sizeof dir, "%s/run_parts", g_base);
    snprintf(part, sizeof part, "%s/part-00000.tlpart", dir);
    make_spec(&s, g_badval, out, "\"topk\":3,\"batch_size\":8,\"part_images\":16");
    recorder r = {0};
    r.stop_after = 1;
    tl_train_result res;
    assert_int_equal(run(&s, dir, &r, &res), TL_TRAIN_STOPPED);
    size_t n = 0;
    char *good = read_all(part, &n);
    assert_non_null(good);
    char *copy = malloc(n);
    assert_non_null(copy);

    /* torn: one byte short */
    assert_int_equal(write_all(part, good, n - 1), 0);
    refused_run(&s, dir, "refusing");
    /* altered payload */
    memcpy(copy, good, n);
    copy[n - 100] ^= 0x10; /* a logit of the last record: still finite */
    assert_int_equal(write_all(part, copy, n), 0);
    refused_run(&s, dir, "checksum");
    /* altered header */
    memcpy(copy, good, n);
    copy[60] ^= 0x01;
    assert_int_equal(write_all(part, copy, n), 0);
    refused_run(&s, dir, "header checksum");
    /* not a part at all */
    assert_int_equal(write_all(part, "hello, world", 12), 0);
    refused_run(&s, dir, "shorter than its header");
    memcpy(copy, good, n);
    memcpy(copy, "TLPART99", 8);
    assert_int_equal(write_all(part, copy, n), 0);
    refused_run(&s, dir, "not a part file");
    assert_int_equal(write_all(part, good, n), 0);
    /* foreign: another top-k, another batch size, EMA weights instead of raw */
    static tl_annotate_spec s2;
    s2 = s;
    s2.topk = 2;
    refused_run(&s2, dir, "written for");
    s2 = s;
    s2.from_ema = 1;
    refused_run(&s2, dir, "another annotation");
    /* a gap in the numbering, a name this annotator does not write */
    snprintf(other, sizeof other, "%s/part-00002.tlpart", dir);
    assert_int_equal(rename(part, other), 0);
    refused_run(&s, dir, "without gaps");
    assert_int_equal(rename(other, part), 0);
    snprintf(other, sizeof other, "%s/part-1.tlpart", dir);
    assert_int_equal(write_all(other, good, n), 0);
    refused_run(&s, dir, "not a part file name");
    unlink(other);
    /* a leftover temporary (a crash mid-part) is removed; the run then completes */
    snprintf(other, sizeof other, "%s/part-00001.tlpart.tmp", dir);
    assert_int_equal(write_all(other, "torn", 4), 0);
    recorder r2 = {0};
    assert_int_equal(run(&s, dir, &r2, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(r2.start_done, 8);
    assert_int_equal(access(other, F_OK), -1);
    free(good);
    free(copy);
}

static void test_larger_size_and_copy_resized(void **state) {
    (void)state;
    static tl_annotate_spec s;
    char out[PATH_MAX + 32], dir[PATH_MAX + 32], err[TL_ERR_LEN];
    char images[PATH_MAX + 8];
    snprintf(images, sizeof images, "%s/val", g_data);
    snprintf(out, sizeof out, "%s/large.tllm", g_base);
    snprintf(dir, sizeof dir, "%s/run_large", g_base);
    make_spec(&s, images, out, "\"size\":48,\"topk\":4,\"batch_size\":16");
    s.from_ema = 1;
    recorder r = {0};
    tl_train_result res;
    tl_train_status st = run(&s, dir, &r, &res);
    if (st != TL_TRAIN_SUCCEEDED) fail_msg("%s: %s", res.reason, res.message);
    tl_labelmap *lm = tl_labelmap_open(out, CLASSES, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_count(lm), VAL);
    assert_int_equal(tl_labelmap_topk(lm), 4);
    assert_int_equal(tl_labelmap_h(lm), 6);
    assert_int_equal(tl_labelmap_w(lm), 6);
    tl_labelmap_close(lm);

    /* refused when the job runs */
    make_spec(&s, images, out, "\"size\":36");
    st = run(&s, dir, &r, &res);
    assert_int_equal(st, TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "CONFIG_ERROR");
    assert_non_null(strstr(res.message, "patch_size"));
    make_spec(&s, images, out, "\"topk\":5");
    st = run(&s, dir, &r, &res);
    assert_int_equal(st, TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "CONFIG_ERROR");
    assert_non_null(strstr(res.message, "topk"));
    make_spec(&s, images, out, NULL);
    snprintf(s.weights_path, sizeof s.weights_path, "%s/none.safetensors", g_base);
    assert_int_equal(run(&s, dir, &r, &res), TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "CONFIG_ERROR");

    /* tl_model_copy_resized */
    tl_config c;
    assert_int_equal(tl_checkpoint_config(g_weights, &c, err, sizeof err), 0);
    tl_model *a = tl_model_new(&c, 0, err, sizeof err), *b = tl_model_new(&c, 1, err, sizeof err);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(tl_checkpoint_load(a, NULL, g_weights, 0, NULL, err, sizeof err), 0);
    assert_int_equal(tl_model_copy_resized(b, a, err, sizeof err), 0);
    for (int i = 0; i < tl_model_num_tensors(a); i++) {
        const tl_tensor *ta = tl_model_tensor(a, i), *tb = tl_model_tensor(b, i);
        if (memcmp(ta->data, tb->data, sizeof(float) * ta->numel) != 0) fail_msg("%s differs", ta->name);
    }
    for (int l = 0; l < 3; l++) assert_int_equal(*tl_model_bn_batches(a, l), *tl_model_bn_batches(b, l));
    /* larger: the class token's position kept, a constant grid stays constant, other tensors copied */
    tl_config c2 = c;
    c2.img_size = 48;
    tl_model *big = tl_model_new(&c2, 2, err, sizeof err);
    assert_non_null(big);
    const tl_tensor *pa = tl_model_find(a, "pos_embed");
    for (size_t j = (size_t)c.embed_dim; j < pa->numel; j++) pa->data[j] = 0.25f;
    assert_int_equal(tl_model_copy_resized(big, a, err, sizeof err), 0);
    const tl_tensor *pb = tl_model_find(big, "pos_embed");
    assert_int_equal(pb->numel, (size_t)(1 + 36) * c.embed_dim);
    assert_memory_equal(pb->data, pa->data, sizeof(float) * (size_t)c.embed_dim);
    for (size_t j = (size_t)c.embed_dim; j < pb->numel; j++) assert_float_equal(pb->data[j], 0.25f, 1e-6f);
    const tl_tensor *ha = tl_model_find(a, "blocks.1.mlp.fc2.weight"), *hb = tl_model_find(big, "blocks.1.mlp.fc2.weight");
    assert_memory_equal(ha->data, hb->data, sizeof(float) * ha->numel);
    /* configs that differ in more than img_size */
    tl_config c3 = c;
    c3.embed_dim = 64;
    c3.num_heads = 2;
    tl_model *other = tl_model_new(&c3, 0, err, sizeof err);
    assert_non_null(other);
    assert_int_equal(tl_model_copy_resized(other, a, err, sizeof err), -1);
    assert_non_null(strstr(err, "img_size"));
    tl_model_free(a);
    tl_model_free(b);
    tl_model_free(big);
    tl_model_free(other);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind),
        cmocka_unit_test(test_spec_defaults),
        cmocka_unit_test(test_spec_refusals),
        cmocka_unit_test(test_spec_paths),
        cmocka_unit_test(test_schema_matches_parser),
        cmocka_unit_test(test_annotate_agrees_with_truth),
        cmocka_unit_test(test_corrupt_image_skipped),
        cmocka_unit_test(test_resume_is_byte_identical),
        cmocka_unit_test(test_bad_parts_refused),
        cmocka_unit_test(test_larger_size_and_copy_resized),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
