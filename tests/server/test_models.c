/*
 * test_models.c: the daemon's served models (server/serving/) with a
 * real store (SQLite file under $TL_TEST_TMP) and tiny LV-ViT checkpoints
 * made with tl_model_new + tl_checkpoint_save.
 *  - upload: a model is READY on return; the ref reports its size, classes,
 *    grid and labels (from the file's tokenlab.classes); inference through
 *    the batcher equals tl_predict of the same checkpoint on the same
 *    preprocessed images (scores, probabilities = softmax of the scores, the
 *    per-token top class);
 *  - registration from a job's checkpoints (best with EMA weights, last
 *    without): the served weights are the EMA ones when asked or implied,
 *    the JSON tells the source, and every refusal has its status, code and
 *    pointer;
 *  - several threads infer at once, each getting its own images' results;
 *    the statistics count every request and image;
 *  - queue full: 429 QUEUE_FULL with retry_after_s, counted as rejected;
 *    a deadline already passed: 504 DEADLINE_EXCEEDED;
 *  - acquire/release: an unknown model is 404; a deleted or replaced model
 *    stays valid for the holder of a ref (its inference answers 503
 *    MODEL_UNLOADED) and is freed on the last release (leak-checked in the
 *    sanitizer build); delete removes the file;
 *  - upload validation (bad bytes, a safetensors that is no model, a model
 *    missing a tensor, empty, bad names and batching) and label updates
 *    (wrong count, empty label) with status, code and pointer; no temporary
 *    upload file is left behind;
 *  - a new registry on the same store loads the stored models in the
 *    background (LOADING, then READY) and serves the same results.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tokenlab/base.h"
#include "serving/models.h"
#include "store/store.h"
#include "tokenlab/data.h"
#include "tokenlab/inspect.h"
#include "tokenlab/model.h"
#include "tokenlab/safetensors.h"

#define S_IN 16
#define NCLS 3
#define GRID 4
#define NTOK (GRID * GRID)
#define NIMG 8

static char g_root[1024], g_state[1100], g_ckpt[1100], g_run[1100];
static tld_store *g_store;
static tld_models *g_M;
static tl_config g_cfg;
static float *g_images;                 /* (NIMG,3,S,S), preprocessed */
static float g_ref_logits[NIMG][NCLS];   /* tl_predict of g_ckpt */
static int32_t g_ref_tok[NIMG][NTOK];
static int64_t g_job;

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static void *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* tl_predict scores and per-token top classes of n images on a model loaded from path (flags: TL_CKPT_FROM_EMA). */
static void reference(const char *path, int flags, const float *images, int n, float (*logits)[NCLS],
                      int32_t (*tok)[NTOK]) {
    char err[TL_ERR_LEN];
    tl_config c;
    assert_int_equal(tl_checkpoint_config(path, &c, err, sizeof err), 0);
    tl_model *m = tl_model_new_inference(&c, err, sizeof err);
    assert_non_null(m);
    if (tl_checkpoint_load(m, NULL, path, flags, NULL, err, sizeof err) != 0) fail_msg("load %s: %s", path, err);
    tl_ctx *ctx = tl_ctx_new(m, 1, 0, 1, err, sizeof err);
    assert_non_null(ctx);
    size_t img = (size_t)3 * S_IN * S_IN;
    for (int i = 0; i < n; i++) {
        assert_int_equal(tl_predict(ctx, images + img * (size_t)i, 1, logits[i]), 0);
        float prob[NTOK];
        tl_token_top1(tl_logits_aux(ctx), NTOK, NCLS, tok[i], prob);
    }
    tl_ctx_free(ctx);
    tl_model_free(m);
}

/* A tiny model's checkpoint; ema_path also gets a best.safetensors with EMA weights (another seed). */
static void make_checkpoints(void) {
    g_cfg = (tl_config){.img_size = S_IN, .patch_size = 4, .embed_dim = 16, .depth = 1, .num_heads = 2,
                        .mlp_ratio = 2.0f, .stem_channels = 8, .skip_lam = 1.0f, .num_classes = NCLS,
                        .drop_path_rate = 0.0f};
    char err[TL_ERR_LEN], path[1300];
    tl_model *m = tl_model_new(&g_cfg, 1, err, sizeof err), *ema = tl_model_new(&g_cfg, 2, err, sizeof err);
    assert_non_null(m);
    assert_non_null(ema);
    const char *meta[] = {"tokenlab.classes", "[\"cat\",\"dog\",\"eel\"]", NULL};
    assert_int_equal(tl_checkpoint_save(m, NULL, g_ckpt, 0, NULL, meta, err, sizeof err), 0);
    /* a training job's run folder: best (step 7, EMA weights), last (step 9, none) */
    const char *best_meta[] = {"tokenlab.step", "7", NULL}, *last_meta[] = {"tokenlab.step", "9", NULL};
    snprintf(path, sizeof path, "%s/best.safetensors", g_run);
    assert_int_equal(tl_checkpoint_save(m, ema, path, 0, NULL, best_meta, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/last.safetensors", g_run);
    assert_int_equal(tl_checkpoint_save(m, NULL, path, 0, NULL, last_meta, err, sizeof err), 0);
    tl_model_free(m);
    tl_model_free(ema);
}

/* NIMG images: JPEGs of coloured gradients, decoded and given the evaluation transform. */
static void make_images(void) {
    size_t img = (size_t)3 * S_IN * S_IN;
    g_images = malloc(sizeof(float) * img * NIMG);
    assert_non_null(g_images);
    const int W = 24, H = 20;
    uint8_t rgb[24 * 20 * 3];
    for (int i = 0; i < NIMG; i++) {
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                uint8_t *p = rgb + ((size_t)y * W + x) * 3;
                p[0] = (uint8_t)(x * 10 + i * 30);
                p[1] = (uint8_t)(y * 12 + i * 17);
                p[2] = (uint8_t)((x * y + i * 50) & 255);
            }
        uint8_t *jpeg = NULL;
        size_t len = 0;
        char err[TL_ERR_LEN];
        assert_int_equal(tl_image_encode(rgb, W, H, 95, &jpeg, &len, err, sizeof err), 0);
        tl_image im;
        assert_int_equal(tl_image_decode(jpeg, len, 18, &im, NULL, err, sizeof err), 0);
        tl_transform_eval(&im, S_IN, 0.9f, g_images + img * (size_t)i, NULL);
        tl_image_free(&im);
        free(jpeg);
    }
}

static tld_models *models_new(void) {
    char err[512] = "";
    tld_models_cfg mc = {.state_dir = g_state, .data_root = g_root, .store = g_store, .threads = 2};
    tld_models *M = tld_models_new(&mc, err, sizeof err);
    if (!M) fail_msg("tld_models_new: %s", err);
    return M;
}

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/models_%d", tmp ? tmp : "/tmp", (int)getpid());
    snprintf(g_state, sizeof g_state, "%s/state", g_root);
    snprintf(g_ckpt, sizeof g_ckpt, "%s/tiny.safetensors", g_root);
    snprintf(g_run, sizeof g_run, "%s/run", g_root);
    mkdir(g_root, 0755);
    mkdir(g_state, 0755);
    mkdir(g_run, 0755);
    char db[1200], err[512] = "";
    snprintf(db, sizeof db, "%s/tokenlab.db", g_state);
    g_store = tld_store_open(db, err, sizeof err);
    if (!g_store) {
        fprintf(stderr, "store: %s\n", err);
        return -1;
    }
    make_checkpoints();
    make_images();
    reference(g_ckpt, 0, g_images, NIMG, g_ref_logits, g_ref_tok);
    /* a job whose run folder holds the checkpoints (its spec cannot be parsed: labels fall back) */
    int existed = 0;
    if (tld_store_job_create(g_store, "src", "{\"kind\":\"train\"}", NULL, &g_job, &existed, err, sizeof err) != 0 ||
        tld_store_job_set_run_dir(g_store, g_job, g_run, err, sizeof err) != 0) {
        fprintf(stderr, "job: %s\n", err);
        return -1;
    }
    g_M = models_new();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tld_models_free(g_M);
    tld_store_close(g_store);
    free(g_images);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ helpers */

static void expect_error(const tld_models_error *e, int status, const char *code, const char *pointer) {
    if (e->status != status || strcmp(e->code, code) != 0 || strcmp(e->pointer, pointer) != 0)
        fail_msg("got %d %s '%s' (%s), want %d %s '%s'", e->status, e->code, e->pointer, e->detail, status, code,
                 pointer);
    assert_true(e->detail[0] != '\0');
}

static void upload_file(tld_models *M, const char *name, const char *path, int max_batch, int max_delay, int max_queue,
                        int want_created) {
    size_t len = 0;
    void *data = read_file(path, &len);
    assert_non_null(data);
    tld_models_error e = {0};
    int created = -1;
    if (tld_models_upload(M, name, data, len, max_batch, max_delay, max_queue, &created, &e) != 0)
        fail_msg("upload %s: %d %s %s", name, e.status, e.code, e.detail);
    assert_int_equal(created, want_created);
    free(data);
}

static cJSON *model_json(tld_models *M, const char *name) {
    tld_models_error e = {0};
    char *s = tld_models_json(M, name, &e);
    if (!s) fail_msg("json %s: %d %s", name, e.status, e.code);
    cJSON *o = cJSON_Parse(s);
    free(s);
    assert_non_null(o);
    return o;
}

static double jnum(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    if (!cJSON_IsNumber(x)) fail_msg("%s.%s is not a number", a, b ? b : "");
    return x->valuedouble;
}

static const char *jstr(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    if (!cJSON_IsString(x)) fail_msg("%s.%s is not a string", a, b ? b : "");
    return x->valuestring;
}

static tld_model_ref *acquire(tld_models *M, const char *name) {
    tld_models_error e = {0};
    tld_model_ref *r = tld_models_acquire(M, name, &e);
    if (!r) fail_msg("acquire %s: %d %s %s", name, e.status, e.code, e.detail);
    return r;
}

typedef struct {
    float probs[NCLS], logits[NCLS], tok_prob[NTOK];
    int32_t tok_index[NTOK];
} result;

static int infer(tld_model_ref *r, int first, int n, result *res, int64_t deadline, tld_models_error *e) {
    tld_infer_out out[NIMG];
    for (int i = 0; i < n; i++)
        out[i] = (tld_infer_out){.probs = res[i].probs, .logits = res[i].logits, .tok_index = res[i].tok_index,
                                 .tok_prob = res[i].tok_prob};
    int rc = tld_models_infer(r, g_images + (size_t)first * 3 * S_IN * S_IN, n, out, deadline, e);
    for (int i = 0; rc == 0 && i < n; i++) assert_true(out[i].batch >= 1 && out[i].batch <= NIMG);
    return rc;
}

/* A result equals the reference of image i: scores within float rounding of tl_predict (the batcher runs
 * batches of other sizes and thread counts), the same top class, probabilities the softmax of the scores. */
static void check_result(const result *r, const float *logits, const int32_t *tok, int i) {
    int top = 0, rtop = 0;
    double se = 0.0, mx = logits[0];
    for (int k = 0; k < NCLS; k++) {
        double tol = 1e-5 * (1.0 + fabs(logits[k]));
        if (fabs(r->logits[k] - logits[k]) > tol)
            fail_msg("image %d class %d: score %.9g, tl_predict %.9g", i, k, r->logits[k], logits[k]);
        if (r->logits[k] > r->logits[top]) top = k;
        if (logits[k] > logits[rtop]) rtop = k;
        if (logits[k] > mx) mx = logits[k];
    }
    assert_int_equal(top, rtop);
    for (int k = 0; k < NCLS; k++) se += exp(r->logits[k] - mx);
    double ps = 0.0;
    for (int k = 0; k < NCLS; k++) {
        assert_true(fabs(r->probs[k] - exp(r->logits[k] - mx) / se) < 1e-5);
        ps += r->probs[k];
    }
    assert_true(fabs(ps - 1.0) < 1e-5);
    int same = 0;
    for (int t = 0; t < NTOK; t++) {
        same += r->tok_index[t] == tok[t];
        assert_true(r->tok_prob[t] > 0.0f && r->tok_prob[t] <= 1.0f);
    }
    assert_true(same >= NTOK - 1); /* a near tie may round the other way */
}

static int count_upload_tmp(void) {
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/models", g_state);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) n += strncmp(de->d_name, ".upload-", 8) == 0;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------ tests */

static void test_upload_and_infer_equals_predict(void **state) {
    (void)state;
    upload_file(g_M, "tiny", g_ckpt, 4, 5, 32, 1);
    assert_int_equal(tld_models_all_loaded(g_M), 1);
    cJSON *o = model_json(g_M, "tiny");
    assert_string_equal(jstr(o, "state", NULL), "READY");
    assert_string_equal(jstr(o, "source", "kind"), "upload");
    assert_int_equal((int)jnum(o, "num_classes", NULL), NCLS);
    assert_int_equal((int)jnum(o, "grid", NULL), GRID);
    assert_int_equal((int)jnum(o, "input", "size"), S_IN);
    assert_int_equal((int)jnum(o, "batching", "max_batch"), 4);
    assert_int_equal((int)jnum(o, "batching", "max_queue"), 32);
    cJSON_Delete(o);

    tld_model_ref *r = acquire(g_M, "tiny");
    assert_string_equal(tld_model_ref_name(r), "tiny");
    assert_int_equal(tld_model_ref_size(r), S_IN);
    assert_int_equal(tld_model_ref_classes(r), NCLS);
    assert_int_equal(tld_model_ref_grid(r), GRID);
    assert_string_equal(tld_model_ref_label(r, 1), "dog");
    assert_string_equal(tld_model_ref_label(r, NCLS), ""); /* out of range */
    assert_true(fabsf(tld_model_ref_crop_pct(r) - 0.9f) < 1e-6f);
    result res[NIMG];
    tld_models_error e = {0};
    /* all at once (batches of max_batch 4), then one by one */
    if (infer(r, 0, NIMG, res, tl_clock_mono_ms() + 60000, &e) != 0) fail_msg("infer: %s %s", e.code, e.detail);
    for (int i = 0; i < NIMG; i++) check_result(&res[i], g_ref_logits[i], g_ref_tok[i], i);
    for (int i = 0; i < NIMG; i++) {
        result one;
        assert_int_equal(infer(r, i, 1, &one, tl_clock_mono_ms() + 60000, &e), 0);
        check_result(&one, g_ref_logits[i], g_ref_tok[i], i);
    }
    /* NULL logits and tokens are skipped */
    tld_infer_out out = {.probs = res[0].probs};
    assert_int_equal(tld_models_infer(r, g_images, 1, &out, tl_clock_mono_ms() + 60000, &e), 0);
    tld_models_release(r);
    o = model_json(g_M, "tiny");
    assert_int_equal((int)jnum(o, "stats", "requests"), 1 + NIMG + 1);
    assert_int_equal((int)jnum(o, "stats", "images"), NIMG + NIMG + 1);
    assert_true(jnum(o, "stats", "batches") >= 2 + NIMG + 1);
    cJSON_Delete(o);
    /* other images give other scores (the comparison is not vacuous) */
    assert_true(fabsf(g_ref_logits[0][0] - g_ref_logits[1][0]) > 1e-6f ||
                fabsf(g_ref_logits[0][1] - g_ref_logits[1][1]) > 1e-6f);
}

static void test_register_from_job(void **state) {
    (void)state;
    tld_models_error e = {0};
    tld_register_req q = {.name = "fromjob", .job_id = g_job, .checkpoint = "best", .ema = -1};
    if (tld_models_register_job(g_M, &q, &e) != 0) fail_msg("register: %d %s %s", e.status, e.code, e.detail);
    cJSON *o = model_json(g_M, "fromjob");
    assert_string_equal(jstr(o, "state", NULL), "READY");
    assert_string_equal(jstr(o, "source", "kind"), "job");
    assert_int_equal((int)jnum(o, "source", "job_id"), (int)g_job);
    assert_int_equal((int)jnum(o, "source", "step"), 7);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "source"), "ema")));
    assert_int_equal((int)jnum(o, "batching", "max_batch"), TLD_MODELS_DEFAULT_MAX_BATCH);
    assert_int_equal((int)jnum(o, "batching", "max_queue"), TLD_MODELS_DEFAULT_MAX_QUEUE);
    cJSON_Delete(o);
    /* it serves the EMA weights */
    char best[1300];
    snprintf(best, sizeof best, "%s/best.safetensors", g_run);
    float lg[NIMG][NCLS];
    int32_t tk[NIMG][NTOK];
    reference(best, TL_CKPT_FROM_EMA, g_images, 2, lg, tk);
    tld_model_ref *r = acquire(g_M, "fromjob");
    assert_string_equal(tld_model_ref_label(r, 2), "class 2"); /* the job's spec names no dataset */
    result res[2];
    assert_int_equal(infer(r, 0, 2, res, tl_clock_mono_ms() + 60000, &e), 0);
    for (int i = 0; i < 2; i++) check_result(&res[i], lg[i], tk[i], i);
    tld_models_release(r);
    /* last: no EMA weights, so the raw ones */
    q = (tld_register_req){.name = "fromjob-last", .job_id = g_job, .checkpoint = "last", .ema = -1, .max_batch = 2};
    assert_int_equal(tld_models_register_job(g_M, &q, &e), 0);
    o = model_json(g_M, "fromjob-last");
    assert_int_equal((int)jnum(o, "source", "step"), 9);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "source"), "ema")));
    cJSON_Delete(o);
    r = acquire(g_M, "fromjob-last");
    assert_int_equal(infer(r, 3, 1, res, tl_clock_mono_ms() + 60000, &e), 0);
    check_result(&res[0], g_ref_logits[3], g_ref_tok[3], 3);
    tld_models_release(r);
    /* a step that is kept */
    q = (tld_register_req){.name = "step9", .job_id = g_job, .checkpoint = "9", .ema = 0};
    assert_int_equal(tld_models_register_job(g_M, &q, &e), 0);

    /* refusals */
    struct {
        tld_register_req q;
        int status;
        const char *code, *pointer;
    } bad[] = {
        {{.name = "x1", .job_id = g_job, .checkpoint = "last", .ema = 1}, 422, "NO_EMA_WEIGHTS", "/ema"},
        {{.name = "x2", .job_id = g_job, .checkpoint = "42", .ema = -1}, 422, "CHECKPOINT_NOT_FOUND", "/checkpoint"},
        {{.name = "x3", .job_id = g_job, .checkpoint = "newest", .ema = -1}, 422, "INVALID_FIELD", "/checkpoint"},
        {{.name = "x4", .job_id = g_job + 1000, .checkpoint = "best", .ema = -1}, 404, "JOB_NOT_FOUND", "/job_id"},
        {{.name = "fromjob", .job_id = g_job, .checkpoint = "best", .ema = -1}, 409, "MODEL_EXISTS", "/name"},
        {{.name = "-dash", .job_id = g_job, .checkpoint = "best", .ema = -1}, 422, "INVALID_FIELD", "/name"},
        {{.name = "", .job_id = g_job, .checkpoint = "best", .ema = -1}, 422, "INVALID_FIELD", "/name"},
        {{.name = "x5", .job_id = g_job, .checkpoint = "best", .ema = -1, .max_batch = 65}, 422, "INVALID_FIELD",
         "/max_batch"},
        {{.name = "x6", .job_id = g_job, .checkpoint = "best", .ema = -1, .max_delay_ms = 1001}, 422, "INVALID_FIELD",
         "/max_delay_ms"},
        {{.name = "x7", .job_id = g_job, .checkpoint = "best", .ema = -1, .max_queue = 4097}, 422, "INVALID_FIELD",
         "/max_queue"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        assert_int_equal(tld_models_register_job(g_M, &bad[i].q, &e), -1);
        expect_error(&e, bad[i].status, bad[i].code, bad[i].pointer);
    }
    /* a job with no checkpoints yet */
    int64_t empty;
    int existed;
    char err[256];
    assert_int_equal(tld_store_job_create(g_store, "empty", "{}", NULL, &empty, &existed, err, sizeof err), 0);
    q = (tld_register_req){.name = "x8", .job_id = empty, .checkpoint = "best", .ema = -1};
    assert_int_equal(tld_models_register_job(g_M, &q, &e), -1);
    expect_error(&e, 422, "CHECKPOINT_NOT_FOUND", "/checkpoint");
    /* none of the refused names exists */
    const char *names[] = {"x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8"};
    for (size_t i = 0; i < 8; i++) {
        tld_models_error e2 = {0};
        assert_null(tld_models_acquire(g_M, names[i], &e2));
        expect_error(&e2, 404, "MODEL_NOT_FOUND", "");
    }
    assert_int_equal(tld_models_delete(g_M, "step9", &e), 0);
    assert_int_equal(tld_models_delete(g_M, "fromjob-last", &e), 0);
}

typedef struct {
    tld_models *M;
    int id, ok, mismatched;
    char err[1024];
} worker_arg;

static void *infer_worker(void *p) {
    worker_arg *a = p;
    for (int k = 0; k < 12; k++) {
        int first = (a->id + k) % NIMG, n = 1 + (k % 2);
        if (first + n > NIMG) first = NIMG - n;
        tld_models_error e = {0};
        tld_model_ref *r = tld_models_acquire(a->M, "tiny", &e);
        if (!r) {
            snprintf(a->err, sizeof a->err, "acquire: %s", e.code);
            return NULL;
        }
        tld_infer_out out[2];
        result res[2];
        for (int i = 0; i < n; i++)
            out[i] = (tld_infer_out){.probs = res[i].probs, .logits = res[i].logits, .tok_index = res[i].tok_index,
                                     .tok_prob = res[i].tok_prob};
        int rc = tld_models_infer(r, g_images + (size_t)first * 3 * S_IN * S_IN, n, out, tl_clock_mono_ms() + 120000, &e);
        tld_models_release(r);
        if (rc != 0) {
            snprintf(a->err, sizeof a->err, "infer: %d %s %s", e.status, e.code, e.detail);
            return NULL;
        }
        for (int i = 0; i < n; i++)
            for (int c = 0; c < NCLS; c++)
                if (fabsf(res[i].logits[c] - g_ref_logits[first + i][c]) > 1e-5f * (1.0f + fabsf(g_ref_logits[first + i][c])))
                    a->mismatched++;
        a->ok++;
    }
    return NULL;
}

static void test_concurrent_inference(void **state) {
    (void)state;
    cJSON *o = model_json(g_M, "tiny");
    int req0 = (int)jnum(o, "stats", "requests"), img0 = (int)jnum(o, "stats", "images");
    cJSON_Delete(o);
    enum { T = 4 };
    pthread_t th[T];
    worker_arg a[T];
    for (int i = 0; i < T; i++) {
        a[i] = (worker_arg){.M = g_M, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, infer_worker, &a[i]), 0);
    }
    int images = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        if (a[i].err[0]) fail_msg("thread %d: %s", i, a[i].err);
        assert_int_equal(a[i].ok, 12);
        assert_int_equal(a[i].mismatched, 0);
        images += 12 + 6; /* six requests of one image, six of two */
    }
    o = model_json(g_M, "tiny");
    assert_int_equal((int)jnum(o, "stats", "requests") - req0, T * 12);
    assert_int_equal((int)jnum(o, "stats", "images") - img0, images);
    assert_int_equal((int)jnum(o, "stats", "queued"), 0);
    assert_int_equal((int)jnum(o, "stats", "rejected"), 0);
    cJSON_Delete(o);
}

typedef struct {
    tld_models *M;
    int rc;
    tld_models_error e;
} bg_infer;

static void *bg_infer_main(void *p) {
    bg_infer *b = p;
    tld_model_ref *r = tld_models_acquire(b->M, "small-queue", &b->e);
    if (!r) {
        b->rc = -2;
        return NULL;
    }
    result res[2];
    b->rc = infer(r, 0, 2, res, tl_clock_mono_ms() + 120000, &b->e);
    tld_models_release(r);
    return NULL;
}

static void test_queue_full_and_deadline(void **state) {
    (void)state;
    upload_file(g_M, "small-queue", g_ckpt, 8, 1000, 2, 1);
    tld_model_ref *r = acquire(g_M, "small-queue");
    result res[NIMG];
    tld_models_error e = {0};
    /* more images than the queue holds: refused at once */
    assert_int_equal(infer(r, 0, 3, res, tl_clock_mono_ms() + 60000, &e), -1);
    expect_error(&e, 429, "QUEUE_FULL", "");
    assert_true(e.retry_after_s >= 1);
    tld_models_release(r);
    /* admission before allocation: a request larger than the queue is 413 whatever the load; requests
     * admitted and not yet queued hold their room, so a second one that does not fit beside them is 429 */
    r = acquire(g_M, "small-queue");
    tld_model_ref *r2 = acquire(g_M, "small-queue");
    assert_int_equal(tld_models_reserve(r, 3, &e), -1);
    expect_error(&e, 413, "BATCH_TOO_LARGE", "");
    assert_int_equal(tld_models_reserve(r, 2, &e), 0);
    memset(&e, 0, sizeof e);
    assert_int_equal(tld_models_reserve(r2, 1, &e), -1);
    expect_error(&e, 429, "QUEUE_FULL", "");
    assert_true(e.retry_after_s >= 1);
    tld_models_release(r); /* gave up: its room is free again */
    assert_int_equal(tld_models_reserve(r2, 2, &e), 0);
    assert_int_equal(infer(r2, 0, 2, res, tl_clock_mono_ms() + 60000, &e), 0); /* its own admission counts once */
    tld_models_release(r2);
    /* a deadline already passed: not computed */
    r = acquire(g_M, "small-queue");
    memset(&e, 0, sizeof e);
    assert_int_equal(infer(r, 0, 1, res, tl_clock_mono_ms() - 1, &e), -1);
    expect_error(&e, 504, "DEADLINE_EXCEEDED", "");
    tld_models_release(r);
    /* two images fit */
    r = acquire(g_M, "small-queue");
    assert_int_equal(infer(r, 0, 2, res, tl_clock_mono_ms() + 60000, &e), 0);
    check_result(&res[1], g_ref_logits[1], g_ref_tok[1], 1);
    tld_models_release(r);
    /* a queue filled by another caller: while this caller still prepares its request, the batcher waits
     * (max_delay_ms 1000) for it, so its one image does not fit beside the two queued. Whether the batch
     * started before we asked depends on timing: then the attempt is repeated. */
    int got429 = 0;
    for (int attempt = 0; attempt < 5 && !got429; attempt++) {
        r = acquire(g_M, "small-queue"); /* counted as preparing: the batch waits for us */
        bg_infer b = {.M = g_M};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, bg_infer_main, &b), 0);
        int queued = 0;
        for (int i = 0; i < 500 && queued < 2; i++) {
            cJSON *o = model_json(g_M, "small-queue");
            queued = (int)jnum(o, "stats", "queued");
            cJSON_Delete(o);
            if (queued < 2) sleep_ms(1);
        }
        memset(&e, 0, sizeof e);
        int rc = infer(r, 2, 1, res, tl_clock_mono_ms() + 60000, &e);
        if (rc != 0) {
            expect_error(&e, 429, "QUEUE_FULL", "");
            got429 = 1;
        }
        tld_models_release(r);
        pthread_join(th, NULL);
        assert_int_equal(b.rc, 0); /* the queued request itself runs */
    }
    assert_true(got429);
    cJSON *o = model_json(g_M, "small-queue");
    assert_true(jnum(o, "stats", "rejected") >= 2);
    assert_int_equal((int)jnum(o, "stats", "expired"), 1);
    cJSON_Delete(o);
    char *prom = tld_models_prometheus(g_M);
    assert_non_null(prom);
    assert_non_null(strstr(prom, "tokenlab_model_rejected_total{model=\"small-queue\"}"));
    free(prom);
    assert_int_equal(tld_models_delete(g_M, "small-queue", &e), 0);
}

static void test_delete_and_replace_while_in_use(void **state) {
    (void)state;
    upload_file(g_M, "doomed", g_ckpt, 4, 0, 16, 1);
    char path[1300];
    snprintf(path, sizeof path, "%s/models/doomed.safetensors", g_state);
    assert_int_equal(access(path, F_OK), 0);
    tld_models_error e = {0};
    tld_model_ref *held = acquire(g_M, "doomed"), *held2 = acquire(g_M, "doomed");
    result res[1];
    assert_int_equal(infer(held2, 0, 1, res, tl_clock_mono_ms() + 60000, &e), 0);
    assert_int_equal(tld_models_delete(g_M, "doomed", &e), 0);
    /* gone for everyone else */
    assert_null(tld_models_acquire(g_M, "doomed", &e));
    expect_error(&e, 404, "MODEL_NOT_FOUND", "");
    assert_null(tld_models_json(g_M, "doomed", &e));
    expect_error(&e, 404, "MODEL_NOT_FOUND", "");
    assert_int_equal(tld_models_delete(g_M, "doomed", &e), -1);
    expect_error(&e, 404, "MODEL_NOT_FOUND", "");
    assert_int_equal(access(path, F_OK), -1);
    char err[256];
    tld_model_row row;
    assert_int_equal(tld_store_model_get(g_store, "doomed", &row, err, sizeof err), -1);
    /* the holders' refs stay valid; their inference is refused as documented */
    assert_string_equal(tld_model_ref_name(held), "doomed");
    assert_int_equal(tld_model_ref_classes(held), NCLS);
    assert_string_equal(tld_model_ref_label(held, 0), "cat");
    memset(&e, 0, sizeof e);
    assert_int_equal(infer(held, 0, 1, res, tl_clock_mono_ms() + 60000, &e), -1);
    expect_error(&e, 503, "MODEL_UNLOADED", "");
    tld_models_release(held);
    assert_int_equal(infer(held2, 0, 1, res, tl_clock_mono_ms() + 60000, &e), -1);
    expect_error(&e, 503, "MODEL_UNLOADED", "");
    tld_models_release(held2); /* the last reference: freed here (the sanitizer build checks for leaks) */
    tld_models_release(NULL);

    /* replacing: the old ref answers 503, a new one serves the new weights; batching kept when not given */
    upload_file(g_M, "swap", g_ckpt, 3, 7, 9, 1);
    held = acquire(g_M, "swap");
    char best[1300];
    snprintf(best, sizeof best, "%s/best.safetensors", g_run);
    upload_file(g_M, "swap", best, 0, -1, 0, 0);
    assert_int_equal(infer(held, 0, 1, res, tl_clock_mono_ms() + 60000, &e), -1);
    expect_error(&e, 503, "MODEL_UNLOADED", "");
    tld_models_release(held);
    cJSON *o = model_json(g_M, "swap");
    assert_int_equal((int)jnum(o, "batching", "max_batch"), 3);
    assert_int_equal((int)jnum(o, "batching", "max_delay_ms"), 7);
    assert_int_equal((int)jnum(o, "batching", "max_queue"), 9);
    assert_string_equal(jstr(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "classes"), 0), "label", NULL),
                        "class 0"); /* the new file names no classes */
    cJSON_Delete(o);
    float lg[1][NCLS];
    int32_t tk[1][NTOK];
    reference(best, 0, g_images, 1, lg, tk); /* the raw weights of the uploaded file */
    held = acquire(g_M, "swap");
    assert_int_equal(infer(held, 0, 1, res, tl_clock_mono_ms() + 60000, &e), 0);
    check_result(&res[0], lg[0], tk[0], 0);
    tld_models_release(held);
    assert_int_equal(tld_models_delete(g_M, "swap", &e), 0);
}

/* A copy of the checkpoint at src without one weight tensor (same config metadata; the BN counters,
 * which a PyTorch state_dict may lack, are kept). */
static void write_truncated(const char *src, const char *dst) {
    char err[TL_ERR_LEN];
    tl_st_file *f = tl_st_open(src, err, sizeof err);
    assert_non_null(f);
    tl_st_writer *w = tl_st_writer_new();
    int dropped = 0;
    for (int i = 0; i < tl_st_count(f); i++) {
        const tl_st_tensor *t = tl_st_at(f, i);
        if (!dropped && t->dtype == TL_ST_F32 && strstr(t->name, "blocks.0.") != NULL) {
            dropped = 1;
            continue;
        }
        assert_int_equal(tl_st_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    assert_int_equal(dropped, 1);
    assert_int_equal(tl_st_set_meta(w, "tokenlab.config", tl_st_meta(f, "tokenlab.config")), 0);
    assert_int_equal(tl_st_write(w, dst, err, sizeof err), 0);
    tl_st_writer_free(w);
    tl_st_close(f);
}

static void test_upload_validation(void **state) {
    (void)state;
    tld_models_error e = {0};
    int created = -1;
    const char junk[] = "this is not a safetensors file at all";
    assert_int_equal(tld_models_upload(g_M, "bad", junk, sizeof junk, 0, -1, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_MODEL", "");
    assert_null(strstr(e.detail, ".upload-")); /* the temporary file is not named */
    assert_int_equal(tld_models_upload(g_M, "bad", junk, 0, 0, -1, 0, &created, &e), -1);
    expect_error(&e, 400, "EMPTY_BODY", "");
    /* a well-formed safetensors file that is no LV-ViT */
    char path[1300], err[TL_ERR_LEN];
    snprintf(path, sizeof path, "%s/foo.safetensors", g_root);
    float data[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    tl_st_writer *w = tl_st_writer_new();
    assert_int_equal(tl_st_add(w, "foo.weight", TL_ST_F32, 2, shape, data), 0);
    assert_int_equal(tl_st_write(w, path, err, sizeof err), 0);
    tl_st_writer_free(w);
    size_t len;
    void *bytes = read_file(path, &len);
    assert_non_null(bytes);
    assert_int_equal(tld_models_upload(g_M, "bad", bytes, len, 0, -1, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_MODEL", "");
    free(bytes);
    /* a model file missing a tensor */
    snprintf(path, sizeof path, "%s/short.safetensors", g_root);
    write_truncated(g_ckpt, path);
    bytes = read_file(path, &len);
    assert_non_null(bytes);
    assert_int_equal(tld_models_upload(g_M, "bad", bytes, len, 0, -1, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_MODEL", "");
    assert_null(strstr(e.detail, ".upload-"));
    /* a truncated file */
    assert_int_equal(tld_models_upload(g_M, "bad", bytes, len / 2, 0, -1, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_MODEL", "");
    free(bytes);
    /* names and batching before anything is read */
    bytes = read_file(g_ckpt, &len);
    assert_non_null(bytes);
    assert_int_equal(tld_models_upload(g_M, "a/b", bytes, len, 0, -1, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/name");
    char longname[80];
    memset(longname, 'a', 65);
    longname[65] = 0;
    assert_int_equal(tld_models_upload(g_M, longname, bytes, len, 0, -1, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/name");
    assert_int_equal(tld_models_upload(g_M, "ok", bytes, len, -1, -1, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/max_batch");
    assert_int_equal(tld_models_upload(g_M, "ok", bytes, len, 0, 5000, 0, &created, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/max_delay_ms");
    assert_int_equal(tld_models_upload(g_M, "ok", bytes, len, 0, -1, -3, &created, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/max_queue");
    assert_null(tld_models_acquire(g_M, "bad", &e));
    expect_error(&e, 404, "MODEL_NOT_FOUND", "");
    assert_null(tld_models_acquire(g_M, "ok", &e));
    assert_int_equal(count_upload_tmp(), 0);

    /* labels: the count must match the classes */
    assert_int_equal(tld_models_upload(g_M, "ok", bytes, len, 0, -1, 0, &created, &e), 0);
    free(bytes);
    assert_int_equal(tld_models_update(g_M, "ok", "[\"a\",\"b\"]", -1, -1, -1, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/labels");
    assert_int_equal(tld_models_update(g_M, "ok", "[\"a\",\"\",\"c\"]", -1, -1, -1, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/labels/1");
    assert_int_equal(tld_models_update(g_M, "ok", "{\"a\":1}", -1, -1, -1, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/labels");
    assert_int_equal(tld_models_update(g_M, "ok", NULL, 0, -1, -1, &e), -1);
    expect_error(&e, 422, "INVALID_FIELD", "/max_batch");
    assert_int_equal(tld_models_update(g_M, "nope", NULL, 2, -1, -1, &e), -1);
    expect_error(&e, 404, "MODEL_NOT_FOUND", "");
    tld_model_ref *r = acquire(g_M, "ok");
    assert_string_equal(tld_model_ref_label(r, 2), "eel"); /* unchanged by the refusals */
    assert_int_equal(tld_models_update(g_M, "ok", "[\"x\",\"y\",\"z\"]", 2, 1, 5, &e), 0);
    assert_string_equal(tld_model_ref_label(r, 2), "z");
    tld_models_release(r);
    cJSON *o = model_json(g_M, "ok");
    assert_int_equal((int)jnum(o, "batching", "max_batch"), 2);
    assert_int_equal((int)jnum(o, "batching", "max_queue"), 5);
    cJSON_Delete(o);
    tld_model_row row;
    assert_int_equal(tld_store_model_get(g_store, "ok", &row, err, sizeof err), 0);
    assert_string_equal(row.labels_json, "[\"x\",\"y\",\"z\"]");
    assert_int_equal(row.max_batch, 2);
    tld_model_row_free(&row);
    assert_int_equal(tld_models_delete(g_M, "ok", &e), 0);
}

static void test_restart_loads_stored_models(void **state) {
    (void)state;
    /* "tiny" and "fromjob" are stored; a new registry on the same store loads both in the background */
    tld_models_free(g_M);
    g_M = models_new();
    char *list = NULL;
    for (int i = 0; i < 3000 && !tld_models_all_loaded(g_M); i++) sleep_ms(10);
    assert_int_equal(tld_models_all_loaded(g_M), 1);
    tld_models_error e = {0};
    list = tld_models_list_json(g_M, &e);
    assert_non_null(list);
    cJSON *o = cJSON_Parse(list);
    free(list);
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "models");
    assert_int_equal(cJSON_GetArraySize(arr), 2);
    for (int i = 0; i < 2; i++) assert_string_equal(jstr(cJSON_GetArrayItem(arr, i), "state", NULL), "READY");
    cJSON_Delete(o);
    tld_model_ref *r = acquire(g_M, "tiny");
    assert_string_equal(tld_model_ref_label(r, 0), "cat");
    result res[NIMG];
    assert_int_equal(infer(r, 0, NIMG, res, tl_clock_mono_ms() + 60000, &e), 0);
    for (int i = 0; i < NIMG; i++) check_result(&res[i], g_ref_logits[i], g_ref_tok[i], i);
    tld_models_release(r);
}

/* Uploads and deletes of one name from several threads at once: the name is held by each, so a model that is
 * listed afterwards has its file, and one that is not has none (a delete never removes the file of an upload
 * that replaced the model meanwhile, and the losing writer never removes the winner's). */
typedef struct {
    const void *data;
    size_t len;
    int rounds;
} churn_arg;

static void *churn_main(void *p) {
    churn_arg *a = p;
    for (int i = 0; i < a->rounds; i++) {
        tld_models_error e = {0};
        int created = 0;
        tld_models_upload(g_M, "churn", a->data, a->len, 4, 5, 32, &created, &e);
        if (i % 2 == 1) tld_models_delete(g_M, "churn", &e);
    }
    return NULL;
}

static void test_name_held_by_writers(void **state) {
    (void)state;
    size_t len = 0;
    void *data = read_file(g_ckpt, &len);
    assert_non_null(data);
    char path[1300];
    snprintf(path, sizeof path, "%s/models/churn.safetensors", g_state);
    for (int trial = 0; trial < 8; trial++) { /* a race: more trials, more chances to see one */
        churn_arg a = {data, len, 6};
        pthread_t th[6];
        for (int i = 0; i < 6; i++) assert_int_equal(pthread_create(&th[i], NULL, churn_main, &a), 0);
        for (int i = 0; i < 6; i++) pthread_join(th[i], NULL);
        tld_models_error e = {0};
        char *js = tld_models_json(g_M, "churn", &e);
        int listed = js != NULL;
        free(js);
        if (listed != (access(path, F_OK) == 0))
            fail_msg("trial %d: the model is %s but its file is %s", trial, listed ? "listed" : "gone",
                     access(path, F_OK) == 0 ? "there" : "gone");
        if (listed) assert_int_equal(tld_models_delete(g_M, "churn", &e), 0);
        assert_int_not_equal(access(path, F_OK), 0);
    }
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upload_and_infer_equals_predict),
        cmocka_unit_test(test_register_from_job),
        cmocka_unit_test(test_concurrent_inference),
        cmocka_unit_test(test_queue_full_and_deadline),
        cmocka_unit_test(test_delete_and_replace_while_in_use),
        cmocka_unit_test(test_upload_validation),
        cmocka_unit_test(test_name_held_by_writers),
        cmocka_unit_test(test_restart_loads_stored_models),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
