/*
 * test_finetune_routes.c: fine-tuning through the REST routes (issue 15): a
 * training spec with model.init on the real HTTP layer, store, job manager
 * and model registry, wired as test_routes.c wires them.
 *  - every refusal at submit is 422 SPEC_INVALID at its pointer and queues
 *    nothing: a missing model (/model/init/model), a missing job and a source
 *    job still queued or running (/model/init/job_id), a missing checkpoint
 *    (/model/init/checkpoint), ema true without EMA weights (/model/init/ema),
 *    a model file that is not a checkpoint (/model/init/model), an
 *    architecture field that differs from the source (/model/embed_dim);
 *  - a source deleted between submit and start fails the job (DATA_ERROR,
 *    the pointer in the message);
 *  - Job.init and Model.lineage from rows put into the store directly (runs
 *    in every build);
 *  - a job fine-tuned from a job's checkpoint and one from a registered model
 *    with another input size: Job.init before (loaded false) and after
 *    (loaded true, pos_embed), the step-0 evaluation, Model.lineage.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "api/route_table.h"
#include "api/datasets.h"
#include "http/http.h"
#include "jobs/events.h"
#include "jobs/jobs.h"
#include "serving/models.h"
#include "store/store.h"
#include "tokenlab/synth.h"


#define TOKEN TLT_TOKEN

static int setup(void **state) {
    (void)state;
    return tlt_daemon_start("finetune_routes");
}

static int teardown(void **state) {
    (void)state;
    return tlt_daemon_stop();
}



/* ------------------------------------------------------------------ fine-tuning helpers */

static const char *const MODEL = "\"img_size\":16,\"patch_size\":4,\"embed_dim\":16,\"depth\":1,\"num_heads\":2,"
                                 "\"mlp_ratio\":2,\"stem_channels\":8,\"skip_lam\":1,\"num_classes\":3,"
                                 "\"drop_path_rate\":0";

/* A training spec: model is the text inside "model": {...}; train_extra is added to "train". */
static void train_spec(char *buf, size_t len, const char *name, const char *model, int epochs, const char *train_extra) {
    snprintf(buf, len,
             "{\"kind\":\"train\",\"name\":\"%s\",\"model\":{%s},\"data\":{\"train\":\"synth/train\",\"val\":\"synth/val\"},"
             "\"train\":{\"batch_size\":8,\"epochs\":%d,\"warmup_epochs\":0,\"threads\":1,\"loader_threads\":1,"
             "\"eval_every_epochs\":1,\"checkpoint_every_epochs\":1%s%s}}",
             name, model, epochs, train_extra ? "," : "", train_extra ? train_extra : "");
}

static void submit(const char *spec, resp_t *r) {
    http("POST", "/api/v1/jobs", TOKEN, "application/json", spec, strlen(spec), NULL, r);
}

static int64_t submit_ok(const char *spec) {
    resp_t r;
    submit(spec, &r);
    cJSON *j = expect_json(&r, 201, spec);
    int64_t id = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "id"));
    cJSON_Delete(j);
    resp_free(&r);
    assert_true(id > 0);
    return id;
}

static cJSON *get_json(const char *path) {
    resp_t r;
    get(path, &r);
    cJSON *j = expect_json(&r, 200, path);
    resp_free(&r);
    return j;
}

static cJSON *get_job(int64_t id) {
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    return get_json(path);
}

static void job_state(int64_t id, char *out, size_t len) {
    cJSON *j = get_job(id);
    snprintf(out, len, "%s", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state")));
    cJSON_Delete(j);
}

static void wait_state(int64_t id, const char *want) {
    char st[32] = "";
    for (int i = 0; i < 15000; i++) {
        job_state(id, st, sizeof st);
        if (strcmp(st, want) == 0) return;
        if (strcmp(want, "RUNNING") != 0 && (strcmp(st, "FAILED") == 0 || strcmp(st, "CANCELLED") == 0) &&
            strcmp(st, want) != 0) {
            cJSON *j = get_job(id);
            fail_msg("job %lld ended %s (%s), waited for %s", (long long)id, st,
                     cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state_message")), want);
        }
        sleep_ms(20);
    }
    fail_msg("job %lld: %s, waited for %s", (long long)id, st, want);
}

static int count_jobs(void) {
    cJSON *j = get_json("/api/v1/jobs?limit=200");
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "jobs"));
    cJSON_Delete(j);
    return n;
}

static void cancel(int64_t id) {
    char path[80];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", (long long)id);
    resp_t r;
    http("POST", path, TOKEN, NULL, NULL, 0, NULL, &r);
    assert_true(r.status == 202 || r.status == 200);
    resp_free(&r);
}

/* A job that keeps the only worker busy (max_running 1) until it is cancelled. */
static int64_t blocker(const char *name) {
    char spec[2048];
    train_spec(spec, sizeof spec, name, MODEL, 10000, NULL);
    int64_t id = submit_ok(spec);
    wait_state(id, "RUNNING");
    return id;
}

static void stop_blocker(int64_t id) {
    cancel(id);
    wait_state(id, "CANCELLED");
}

/* The submit is refused with 422 SPEC_INVALID at pointer, its detail holding `says` (may be NULL), and no
 * job is created. */
static void expect_refused(const char *spec, const char *pointer, const char *says) {
    int before = count_jobs();
    resp_t r;
    submit(spec, &r);
    if (says && (!r.body.data || !strstr(r.body.data, says)))
        fail_msg("%s: the refusal does not say \"%s\": %s", pointer, says, r.body.data);
    printf("  refused: %s\n", r.body.data ? r.body.data : "");
    expect_problem(&r, 422, "SPEC_INVALID", pointer, pointer);
    assert_int_equal(count_jobs(), before);
}

static void register_model(const char *name, int64_t job, const char *checkpoint) {
    char body[256];
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"job_id\":%lld,\"checkpoint\":\"%s\"}", name, (long long)job,
             checkpoint);
    resp_t r;
    http("POST", "/api/v1/models", TOKEN, "application/json", body, strlen(body), NULL, &r);
    cJSON *j = expect_json(&r, 201, "register");
    cJSON_Delete(j);
    resp_free(&r);
}

/* ------------------------------------------------------------------ tests */

/* A source model that does not exist is refused at its pointer. */
static void test_missing_model(void **state) {
    (void)state;
    char spec[2048];
    train_spec(spec, sizeof spec, "detect", "\"init\":{\"model\":\"no-such-model\"}", 1, NULL);
    expect_refused(spec, "/model/init/model", "no-such-model");
}

static void test_refusals(void **state) {
    (void)state;
    char spec[2048], model[512];
    int64_t block = blocker("block-1");
    /* the source waits behind the blocker: still training */
    train_spec(spec, sizeof spec, "src-noema", MODEL, 1, "\"ema_decay\":0");
    int64_t src = submit_ok(spec);
    snprintf(model, sizeof model, "\"init\":{\"job_id\":%lld}", (long long)src);
    train_spec(spec, sizeof spec, "ft-queued", model, 1, NULL);
    expect_refused(spec, "/model/init/job_id", "still training");
    snprintf(model, sizeof model, "\"init\":{\"job_id\":%lld}", (long long)block);
    train_spec(spec, sizeof spec, "ft-running", model, 1, NULL);
    expect_refused(spec, "/model/init/job_id", "still training");
    train_spec(spec, sizeof spec, "ft-nojob", "\"init\":{\"job_id\":987654}", 1, NULL);
    expect_refused(spec, "/model/init/job_id", "does not exist");
    stop_blocker(block);
    wait_state(src, "SUCCEEDED");

    snprintf(model, sizeof model, "\"init\":{\"job_id\":%lld,\"checkpoint\":\"777777\"}", (long long)src);
    train_spec(spec, sizeof spec, "ft-nockpt", model, 1, NULL);
    expect_refused(spec, "/model/init/checkpoint", "777777");
    snprintf(model, sizeof model, "\"init\":{\"job_id\":%lld,\"ema\":true}", (long long)src);
    train_spec(spec, sizeof spec, "ft-noema", model, 1, NULL);
    expect_refused(spec, "/model/init/ema", "EMA");
    snprintf(model, sizeof model, "\"init\":{\"job_id\":%lld},\"embed_dim\":32", (long long)src);
    train_spec(spec, sizeof spec, "ft-arch", model, 1, NULL);
    expect_refused(spec, "/model/embed_dim", NULL);

    /* a registered model whose file is no longer a checkpoint */
    register_model("ft-broken", src, "last");
    char path[1300];
    snprintf(path, sizeof path, "%s/models/ft-broken.safetensors", g_state);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("not a safetensors file", f);
    fclose(f);
    train_spec(spec, sizeof spec, "ft-badfile", "\"init\":{\"model\":\"ft-broken\"}", 1, NULL);
    expect_refused(spec, "/model/init/model", "not a valid checkpoint");
}

static void test_source_deleted_before_start(void **state) {
    (void)state;
    char spec[2048], model[512], path[64];
    train_spec(spec, sizeof spec, "src-gone", MODEL, 1, NULL);
    int64_t src = submit_ok(spec);
    wait_state(src, "SUCCEEDED");
    int64_t block = blocker("block-2");
    snprintf(model, sizeof model, "\"init\":{\"job_id\":%lld,\"checkpoint\":\"last\"}", (long long)src);
    train_spec(spec, sizeof spec, "ft-orphan", model, 1, NULL);
    int64_t ft = submit_ok(spec);
    /* queued: init shows what the spec asks */
    cJSON *j = get_job(ft), *init = cJSON_GetObjectItemCaseSensitive(j, "init");
    assert_true(cJSON_IsObject(init));
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(init, "job_id")), src);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(init, "checkpoint")), "last");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(init, "loaded")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(init, "step")));
    cJSON_Delete(j);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)src);
    resp_t r;
    http("DELETE", path, TOKEN, NULL, NULL, 0, NULL, &r);
    assert_int_equal(r.status, 204);
    resp_free(&r);
    stop_blocker(block);
    wait_state(ft, "FAILED");
    j = get_job(ft);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state_reason")), "DATA_ERROR");
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state_message"));
    printf("  failed at start: %s\n", msg ? msg : "");
    assert_non_null(strstr(msg, "/model/init/job_id"));
    cJSON_Delete(j);
}

static void test_finetune_and_lineage(void **state) {
    (void)state;
    char spec[2048], model[512], path[128];
    train_spec(spec, sizeof spec, "base", MODEL, 1, NULL);
    int64_t base = submit_ok(spec);
    wait_state(base, "SUCCEEDED");

    /* from a job's last checkpoint, same classes: the heads are kept */
    snprintf(model, sizeof model, "\"init\":{\"job_id\":%lld,\"checkpoint\":\"last\"}", (long long)base);
    train_spec(spec, sizeof spec, "ft-job", model, 1, NULL);
    int64_t ft = submit_ok(spec);
    wait_state(ft, "SUCCEEDED");
    cJSON *j = get_job(ft), *init = cJSON_GetObjectItemCaseSensitive(j, "init");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(init, "loaded")));
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(init, "job_id")), base);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(init, "checkpoint")), "last");
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(init, "step")));
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(init, "head")), "keep");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(init, "pos_embed")));
    cJSON_Delete(j);
    /* the step-0 evaluation of the loaded weights */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics/top1", (long long)ft);
    j = get_json(path);
    const cJSON *p0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "points"), 0);
    assert_non_null(p0);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(p0, "step")), 0);
    cJSON_Delete(j);

    /* lineage of a model made from it: the job, then its source */
    register_model("ft-m1", ft, "last");
    j = get_json("/api/v1/models/ft-m1");
    cJSON *lin = cJSON_GetObjectItemCaseSensitive(j, "lineage");
    assert_int_equal(cJSON_GetArraySize(lin), 2);
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(lin, 0), "job")), ft);
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(lin, 1), "job")), base);
    cJSON_Delete(j);

    /* from that model at a larger input: the position embedding is resampled from 4x4 to 6x6 */
    train_spec(spec, sizeof spec, "ft-model", "\"init\":{\"model\":\"ft-m1\"},\"img_size\":24", 1, NULL);
    int64_t ft2 = submit_ok(spec);
    wait_state(ft2, "SUCCEEDED");
    j = get_job(ft2);
    init = cJSON_GetObjectItemCaseSensitive(j, "init");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(init, "model")), "ft-m1");
    cJSON *pe = cJSON_GetObjectItemCaseSensitive(init, "pos_embed");
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(pe, "from")), 4);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(pe, "to")), 6);
    cJSON_Delete(j);
    register_model("ft-m2", ft2, "last");
    j = get_json("/api/v1/models/ft-m2");
    lin = cJSON_GetObjectItemCaseSensitive(j, "lineage");
    assert_int_equal(cJSON_GetArraySize(lin), 2);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(lin, 1), "model")),
                        "ft-m1");
    cJSON_Delete(j);
}

/* Jobs without model.init say init: null, with or without the engine's support. */
static void test_plain_job_init_null(void **state) {
    (void)state;
    char spec[2048];
    train_spec(spec, sizeof spec, "plain", MODEL, 1, NULL);
    int64_t id = submit_ok(spec);
    cJSON *j = get_job(id);
    cJSON *init = cJSON_GetObjectItemCaseSensitive(j, "init");
    assert_non_null(init);
    assert_true(cJSON_IsNull(init));
    cJSON_Delete(j);
    wait_state(id, "SUCCEEDED");
}

/* Job.init and Model.lineage from recorded rows (no engine support needed): a job recorded as started from a
 * job that no longer exists, and from a model. */
static void test_lineage_from_store(void **state) {
    (void)state;
    char spec[2048], err[256];
    train_spec(spec, sizeof spec, "lin-base", MODEL, 1, NULL);
    int64_t base = submit_ok(spec);
    wait_state(base, "SUCCEEDED");
    tld_job_init_row row;
    memset(&row, 0, sizeof row);
    snprintf(row.source_kind, sizeof row.source_kind, "job");
    row.source_job = 424242;
    snprintf(row.checkpoint, sizeof row.checkpoint, "1200");
    row.step = 1200;
    row.ema = 1;
    snprintf(row.head, sizeof row.head, "match");
    row.classes_matched = 2;
    row.pos_from = 14;
    row.pos_to = 4;
    snprintf(row.weights, sizeof row.weights, "/gone/best.safetensors");
    if (tld_store_job_init_put(g_store, base, &row, err, sizeof err) != 0) fail_msg("put: %s", err);
    cJSON *j = get_job(base), *init = cJSON_GetObjectItemCaseSensitive(j, "init");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(init, "loaded")));
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(init, "job_id")), 424242);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(init, "checkpoint")), 1200);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(init, "step")), 1200);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(init, "ema")));
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(init, "head")), "match");
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(init, "classes_matched")), 2);
    cJSON *pe = cJSON_GetObjectItemCaseSensitive(init, "pos_embed");
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(pe, "from")), 14);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(pe, "to")), 4);
    cJSON_Delete(j);

    register_model("lin-m", base, "last");
    j = get_json("/api/v1/models/lin-m");
    cJSON *lin = cJSON_GetObjectItemCaseSensitive(j, "lineage");
    assert_int_equal(cJSON_GetArraySize(lin), 2);
    cJSON *l0 = cJSON_GetArrayItem(lin, 0), *l1 = cJSON_GetArrayItem(lin, 1);
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(l0, "job")), base);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(l0, "checkpoint")), "last");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l0, "exists")));
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(l1, "job")), 424242);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(l1, "exists")));
    cJSON_Delete(j);

    /* started from a model: the chain stops there */
    memset(&row, 0, sizeof row);
    snprintf(row.source_kind, sizeof row.source_kind, "model");
    snprintf(row.source_model, sizeof row.source_model, "lin-m");
    row.step = -1;
    snprintf(row.head, sizeof row.head, "reinit");
    snprintf(row.weights, sizeof row.weights, "/x.safetensors");
    if (tld_store_job_init_put(g_store, base, &row, err, sizeof err) != 0) fail_msg("put: %s", err);
    j = get_json("/api/v1/models/lin-m");
    lin = cJSON_GetObjectItemCaseSensitive(j, "lineage");
    assert_int_equal(cJSON_GetArraySize(lin), 2);
    l1 = cJSON_GetArrayItem(lin, 1);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(l1, "model")), "lin-m");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(l1, "step")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l1, "exists")));
    cJSON_Delete(j);
    /* the list of models carries no lineage */
    j = get_json("/api/v1/models");
    assert_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "models"), 0),
                                                 "lineage"));
    cJSON_Delete(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_job_init_null),
        cmocka_unit_test(test_lineage_from_store),
        cmocka_unit_test(test_missing_model),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_source_deleted_before_start),
        cmocka_unit_test(test_finetune_and_lineage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
