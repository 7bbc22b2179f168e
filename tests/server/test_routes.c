/*
 * test_routes.c: the REST routes (server/api/routes*.c) on the real HTTP
 * layer, bound to 127.0.0.1 on an ephemeral port, with a real store (SQLite
 * under $TL_TEST_TMP), event bus, job manager and model registry, wired as
 * server/cmd/cmd_serve.c does; driven by libcurl. Answers are checked
 * against schema/openapi.json:
 *  - POST /api/v1/jobs: 201 with Location and the job, 200 for a repeated
 *    Idempotency-Key; 422 SPEC_INVALID with the pointer of the bad field;
 *    400 BAD_JSON (pointer set, "" for an empty body), 400 BAD_HEADER, 415;
 *  - the job runs: GET of the job (with state_history), its metrics (raw and
 *    bucketed by max_points), logs (offset/limit_bytes), checkpoints;
 *  - unknown and malformed job ids are 404 NOT_FOUND on every job route;
 *  - query validation: max_points, offset, limit_bytes, limit, state: 400
 *    BAD_QUERY;
 *  - bearer token: 401 UNAUTHENTICATED with WWW-Authenticate: Bearer
 *    without it, 403 FORBIDDEN with a wrong one; reading and predicting are
 *    public;
 *  - 405 METHOD_NOT_ALLOWED with an Allow header naming the path's methods;
 *    HEAD on GET routes (headers, no body); 404 for an unknown path;
 *  - cancel (202), cancel of a finished job and delete of an unfinished one
 *    (409 INVALID_STATE), delete (204, then 404);
 *  - model routes: unknown model 404 MODEL_NOT_FOUND, a bad upload 422
 *    INVALID_MODEL, 415 for a wrong media type.
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
#include "tokenlab/model.h"
#include "store/store.h"
#include "tokenlab/synth.h"


#define TOKEN TLT_TOKEN

static int setup(void **state) {
    (void)state;
    return tlt_daemon_start("routes");
}

static int teardown(void **state) {
    (void)state;
    return tlt_daemon_stop();
}


/* Problem with a pointer that starts with prefix. */
static void expect_problem_ptr_prefix(resp_t *r, long status, const char *code, const char *prefix, const char *what) {
    cJSON *j = cJSON_Parse(r->body.data ? r->body.data : "");
    assert_non_null(j);
    const char *p = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "pointer"));
    if (!p || strncmp(p, prefix, strlen(prefix)) != 0) fail_msg("%s: pointer %s, want %s...", what, p ? p : "(none)", prefix);
    cJSON_Delete(j);
    expect_problem(r, status, code, NULL, what);
}

static void spec_json(char *buf, size_t len, const char *name, int epochs) {
    snprintf(buf, len,
             "{\"kind\":\"train\",\"name\":\"%s\",\"model\":{\"img_size\":16,\"patch_size\":4,\"embed_dim\":16,"
             "\"depth\":1,\"num_heads\":2,\"mlp_ratio\":2,\"stem_channels\":8,\"skip_lam\":1,\"num_classes\":3,"
             "\"drop_path_rate\":0},\"data\":{\"train\":\"synth/train\",\"val\":\"synth/val\"},"
             "\"train\":{\"batch_size\":8,\"epochs\":%d,\"warmup_epochs\":0,\"threads\":1,\"loader_threads\":1,"
             "\"eval_every_epochs\":1,\"checkpoint_every_epochs\":1}}",
             name, epochs);
}

static int64_t post_job(const char *name, int epochs, const char *key_header, long want_status) {
    char spec[2048];
    spec_json(spec, sizeof spec, name, epochs);
    resp_t r;
    http("POST", "/api/v1/jobs", TOKEN, "application/json", spec, strlen(spec), key_header, &r);
    cJSON *j = expect_json(&r, want_status, "submit");
    int64_t id = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "id"));
    assert_true(id > 0);
    char loc[128], want[64];
    assert_non_null(resp_header(&r, "Location", loc, sizeof loc));
    snprintf(want, sizeof want, "/api/v1/jobs/%lld", (long long)id);
    assert_string_equal(loc, want);
    cJSON_Delete(j);
    resp_free(&r);
    return id;
}

static char *job_state(int64_t id, char *out, size_t len) {
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    resp_t r;
    get(path, &r);
    cJSON *j = expect_json(&r, 200, "get job");
    snprintf(out, len, "%s", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state")));
    cJSON_Delete(j);
    resp_free(&r);
    return out;
}

static void wait_state(int64_t id, const char *want) {
    char st[32] = "";
    for (int i = 0; i < 9000; i++) {
        job_state(id, st, sizeof st);
        if (strcmp(st, want) == 0) return;
        sleep_ms(20);
    }
    fail_msg("job %lld: %s, waited for %s", (long long)id, st, want);
}

/* ------------------------------------------------------------------ tests */

static void test_job_lifecycle(void **state) {
    (void)state;
    int64_t id = post_job("life", 2, "Idempotency-Key: life-1", 201);
    assert_int_equal(post_job("life", 2, "Idempotency-Key: life-1", 200), id); /* the same key */
    wait_state(id, "SUCCEEDED");
    char path[256];
    resp_t r;
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    get(path, &r);
    cJSON *j = expect_json(&r, 200, "get");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "name")), "life");
    cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "state_history");
    assert_int_equal(cJSON_GetArraySize(h), 3);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(h, 0), "from")));
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(h, 2), "to")),
                        "SUCCEEDED");
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "latest_metrics"),
                                                                "loss")));
    cJSON_Delete(j);
    char cc[64];
    assert_non_null(resp_header(&r, "Cache-Control", cc, sizeof cc));
    assert_string_equal(cc, "no-store");
    resp_free(&r);
    tld_store_flush(g_store);
    /* metrics: 2 epochs x 2 steps of loss, raw and in buckets */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics", (long long)id);
    get(path, &r);
    j = expect_json(&r, 200, "metric names");
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "metrics")) >= 5);
    cJSON_Delete(j);
    resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics/loss", (long long)id);
    get(path, &r);
    j = expect_json(&r, 200, "loss");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "bucketed")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "points")), 4);
    cJSON_Delete(j);
    resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics/loss?max_points=2", (long long)id);
    get(path, &r);
    j = expect_json(&r, 200, "loss bucketed");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "bucketed")));
    cJSON *bk = cJSON_GetObjectItemCaseSensitive(j, "buckets");
    assert_true(cJSON_GetArraySize(bk) >= 1 && cJSON_GetArraySize(bk) <= 2);
    cJSON_Delete(j);
    resp_free(&r);
    /* an unknown series of a known job: empty */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics/nothing", (long long)id);
    get(path, &r);
    j = expect_json(&r, 200, "unknown series");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "points")), 0);
    cJSON_Delete(j);
    resp_free(&r);
    /* logs, sliced by offset */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/logs", (long long)id);
    get(path, &r);
    j = expect_json(&r, 200, "logs");
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "text"));
    assert_true(text && strlen(text) > 10);
    size_t total = strlen(text);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "eof")));
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "next_offset")), (int64_t)total);
    cJSON_Delete(j);
    resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/logs?offset=3&limit_bytes=5", (long long)id);
    get(path, &r);
    j = expect_json(&r, 200, "log slice");
    assert_int_equal(strlen(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "text"))), 5);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "next_offset")), 8);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "eof")));
    cJSON_Delete(j);
    resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/checkpoints", (long long)id);
    get(path, &r);
    j = expect_json(&r, 200, "checkpoints");
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "checkpoints")) >= 2);
    cJSON_Delete(j);
    resp_free(&r);
    /* the events of a finished job: a snapshot, then the stream ends */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/events", (long long)id);
    get(path, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.ctype, "text/event-stream");
    assert_non_null(strstr(r.body.data, "event: snapshot"));
    resp_free(&r);
    /* query validation */
    const char *badq[] = {"metrics/loss?max_points=0", "metrics/loss?max_points=100001", "metrics/loss?max_points=abc",
                          "metrics/loss?max_points=", "metrics/loss?start_step=-1", "metrics/loss?end_step=-2",
                          "logs?offset=-1", "logs?offset=x", "logs?offset=1.5", "logs?limit_bytes=0",
                          "logs?limit_bytes=1048577"};
    for (size_t i = 0; i < sizeof badq / sizeof badq[0]; i++) {
        snprintf(path, sizeof path, "/api/v1/jobs/%lld/%s", (long long)id, badq[i]);
        get(path, &r);
        expect_problem(&r, 400, "BAD_QUERY", NULL, badq[i]);
    }
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics/loss?max_points=100000", (long long)id);
    get(path, &r);
    cJSON_Delete(expect_json(&r, 200, "max_points at its bound"));
    resp_free(&r);
    /* the list */
    get("/api/v1/jobs?limit=1", &r);
    j = expect_json(&r, 200, "list");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "jobs")), 1);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "next_cursor")));
    cJSON_Delete(j);
    resp_free(&r);
    const char *badl[] = {"/api/v1/jobs?limit=0", "/api/v1/jobs?limit=201", "/api/v1/jobs?state=DONE",
                          "/api/v1/jobs?cursor=-5"};
    for (size_t i = 0; i < 4; i++) {
        get(badl[i], &r);
        expect_problem(&r, 400, "BAD_QUERY", NULL, badl[i]);
    }
    /* delete: 204, then gone */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    http("DELETE", path, TOKEN, NULL, NULL, 0, NULL, &r);
    assert_int_equal(r.status, 204);
    resp_free(&r);
    get(path, &r);
    expect_problem(&r, 404, "NOT_FOUND", NULL, "deleted job");
}

static void test_unknown_and_malformed_ids(void **state) {
    (void)state;
    const char *ids[] = {"999999", "abc", "0", "-1", "1.5", "99999999999999999999", "12abc", "%20"};
    const char *sub[] = {"", "/metrics", "/metrics/loss", "/logs", "/checkpoints", "/events"};
    char path[256];
    resp_t r;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        for (size_t k = 0; k < sizeof sub / sizeof sub[0]; k++) {
            snprintf(path, sizeof path, "/api/v1/jobs/%s%s", ids[i], sub[k]);
            get(path, &r);
            expect_problem(&r, 404, "NOT_FOUND", NULL, path);
        }
        snprintf(path, sizeof path, "/api/v1/jobs/%s/cancel", ids[i]);
        http("POST", path, TOKEN, NULL, NULL, 0, NULL, &r);
        expect_problem(&r, 404, "NOT_FOUND", NULL, path);
        snprintf(path, sizeof path, "/api/v1/jobs/%s", ids[i]);
        http("DELETE", path, TOKEN, NULL, NULL, 0, NULL, &r);
        expect_problem(&r, 404, "NOT_FOUND", NULL, path);
    }
    get("/api/v1/no-such-route", &r);
    expect_problem(&r, 404, "NOT_FOUND", NULL, "unknown path");
}

static void test_submit_refusals(void **state) {
    (void)state;
    resp_t r;
    char spec[2048];
    /* a bad field: 422 with its pointer */
    spec_json(spec, sizeof spec, "bad", 2);
    char *p = strstr(spec, "\"embed_dim\":16");
    assert_non_null(p);
    memcpy(p, "\"embed_dim\":-1", 14);
    http("POST", "/api/v1/jobs", TOKEN, "application/json", spec, strlen(spec), NULL, &r);
    expect_problem(&r, 422, "SPEC_INVALID", "/model/embed_dim", "negative embed_dim");
    spec_json(spec, sizeof spec, "bad", 2);
    p = strstr(spec, "synth/val");
    memcpy(p, "synth/xyz", 9);
    http("POST", "/api/v1/jobs", TOKEN, "application/json", spec, strlen(spec), NULL, &r);
    expect_problem(&r, 422, "SPEC_INVALID", "/data/val", "missing dataset");
    const char *unknown = "{\"kind\":\"train\",\"name\":\"u\",\"surprise\":1}";
    http("POST", "/api/v1/jobs", TOKEN, "application/json", unknown, strlen(unknown), NULL, &r);
    expect_problem_ptr_prefix(&r, 422, "SPEC_INVALID", "/", "unknown field");
    /* not JSON: 400 with a pointer; empty: 400 with pointer "" */
    const char *broken = "{\"kind\":\"train\",";
    http("POST", "/api/v1/jobs", TOKEN, "application/json", broken, strlen(broken), NULL, &r);
    assert_int_equal(r.status, 400);
    {
        cJSON *j = cJSON_Parse(r.body.data);
        assert_non_null(j);
        assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "pointer")));
        cJSON_Delete(j);
    }
    expect_problem(&r, 400, "BAD_JSON", NULL, "broken JSON");
    http("POST", "/api/v1/jobs", TOKEN, "application/json", "", 0, NULL, &r);
    expect_problem(&r, 400, "BAD_JSON", "", "empty body");
    /* media type and Idempotency-Key */
    spec_json(spec, sizeof spec, "bad", 2);
    http("POST", "/api/v1/jobs", TOKEN, "text/plain", spec, strlen(spec), NULL, &r);
    expect_problem(&r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL, "text/plain");
    char key[200] = "Idempotency-Key: ";
    memset(key + strlen(key), 'k', 128);
    key[17 + 128] = 0;
    http("POST", "/api/v1/jobs", TOKEN, "application/json", spec, strlen(spec), key, &r);
    expect_problem(&r, 400, "BAD_HEADER", NULL, "long key");
    /* nothing was created */
    resp_t l;
    get("/api/v1/jobs?state=QUEUED", &l);
    cJSON *j = expect_json(&l, 200, "list");
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "jobs");
    for (int i = 0; i < cJSON_GetArraySize(arr); i++)
        assert_string_not_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, i), "name")),
                                "bad");
    cJSON_Delete(j);
    resp_free(&l);
}

static void test_auth(void **state) {
    (void)state;
    char spec[2048];
    spec_json(spec, sizeof spec, "auth", 1);
    resp_t r;
    http("POST", "/api/v1/jobs", NULL, "application/json", spec, strlen(spec), NULL, &r);
    char wa[64];
    assert_non_null(resp_header(&r, "WWW-Authenticate", wa, sizeof wa));
    assert_string_equal(wa, "Bearer");
    expect_problem(&r, 401, "UNAUTHENTICATED", NULL, "no token");
    http("POST", "/api/v1/jobs", "wrong-token-wrong-token", "application/json", spec, strlen(spec), NULL, &r);
    expect_problem(&r, 403, "FORBIDDEN", NULL, "wrong token");
    /* before the handler: an unknown job is still 401 without a token */
    http("DELETE", "/api/v1/jobs/999999", NULL, NULL, NULL, 0, NULL, &r);
    expect_problem(&r, 401, "UNAUTHENTICATED", NULL, "delete without token");
    http("POST", "/api/v1/jobs/999999/cancel", "nope", NULL, NULL, 0, NULL, &r);
    expect_problem(&r, 403, "FORBIDDEN", NULL, "cancel with a wrong token");
    http("PUT", "/api/v1/models/m1", NULL, "application/octet-stream", "x", 1, NULL, &r);
    expect_problem(&r, 401, "UNAUTHENTICATED", NULL, "upload without token");
    http("DELETE", "/api/v1/models/m1", "nope", NULL, NULL, 0, NULL, &r);
    expect_problem(&r, 403, "FORBIDDEN", NULL, "model delete with a wrong token");
    /* reading and inference are public */
    get("/api/v1/info", &r);
    cJSON *j = expect_json(&r, 200, "info");
    assert_int_equal((int)cJSON_GetNumberValue(
                         cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "limits"), "max_points")),
                     100000);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "isa")), tl_isa_name()); /* kernel level */
    cJSON_Delete(j);
    resp_free(&r);
    http("POST", "/api/v1/models/none/predict", NULL, "image/jpeg", "\xff\xd8\xff", 3, NULL, &r);
    expect_problem(&r, 404, "MODEL_NOT_FOUND", NULL, "predict on an unknown model");
    /* the Host check */
    http("GET", "/api/v1/info", NULL, NULL, NULL, 0, "Host: evil.example", &r);
    expect_problem(&r, 403, "HOST_NOT_ALLOWED", NULL, "foreign Host");
}

static void test_methods_and_head(void **state) {
    (void)state;
    resp_t r;
    char allow[128];
    http("PUT", "/api/v1/jobs", TOKEN, "application/json", "{}", 2, NULL, &r);
    assert_non_null(resp_header(&r, "Allow", allow, sizeof allow));
    assert_non_null(strstr(allow, "GET"));
    assert_non_null(strstr(allow, "POST"));
    assert_non_null(strstr(allow, "HEAD"));
    assert_null(strstr(allow, "PUT"));
    expect_problem(&r, 405, "METHOD_NOT_ALLOWED", NULL, "PUT /api/v1/jobs");
    http("PATCH", "/api/v1/jobs/1", TOKEN, "application/json", "{}", 2, NULL, &r);
    assert_non_null(resp_header(&r, "Allow", allow, sizeof allow));
    assert_non_null(strstr(allow, "GET"));
    assert_non_null(strstr(allow, "DELETE"));
    assert_null(strstr(allow, "POST"));
    expect_problem(&r, 405, "METHOD_NOT_ALLOWED", NULL, "PATCH /api/v1/jobs/1");
    http("GET", "/api/v1/jobs/1/cancel", NULL, NULL, NULL, 0, NULL, &r);
    assert_non_null(resp_header(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "POST");
    expect_problem(&r, 405, "METHOD_NOT_ALLOWED", NULL, "GET .../cancel");
    /* HEAD on GET routes: the GET's status and headers, no body */
    http("HEAD", "/api/v1/info", NULL, NULL, NULL, 0, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.ctype, "application/json");
    assert_int_equal(r.body.len, 0);
    resp_free(&r);
    http("HEAD", "/api/v1/jobs/999999", NULL, NULL, NULL, 0, NULL, &r);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.ctype, "application/problem+json");
    assert_int_equal(r.body.len, 0);
    resp_free(&r);
    http("HEAD", "/healthz", NULL, NULL, NULL, 0, NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    get("/api/v1/openapi.json", &r);
    cJSON *j = expect_json(&r, 200, "openapi");
    assert_non_null(cJSON_GetObjectItemCaseSensitive(j, "paths"));
    cJSON_Delete(j);
    resp_free(&r);
}

static void test_cancel_and_delete_states(void **state) {
    (void)state;
    int64_t a = post_job("long", 500, NULL, 201), b = post_job("behind", 1, NULL, 201);
    wait_state(a, "RUNNING");
    char path[128], st[32];
    resp_t r;
    /* b waits in the queue at position 1; unfinished jobs cannot be deleted */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)b);
    get(path, &r);
    cJSON *j = expect_json(&r, 200, "queued job");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state")), "QUEUED");
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "queue_position")), 1);
    cJSON_Delete(j);
    resp_free(&r);
    http("DELETE", path, TOKEN, NULL, NULL, 0, NULL, &r);
    expect_problem(&r, 409, "INVALID_STATE", NULL, "delete queued");
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)a);
    http("DELETE", path, TOKEN, NULL, NULL, 0, NULL, &r);
    expect_problem(&r, 409, "INVALID_STATE", NULL, "delete running");
    /* cancel both: 202 with the job */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", (long long)b);
    http("POST", path, TOKEN, NULL, NULL, 0, NULL, &r);
    j = expect_json(&r, 202, "cancel queued");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state")), "CANCELLED");
    cJSON_Delete(j);
    resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", (long long)a);
    http("POST", path, TOKEN, NULL, NULL, 0, NULL, &r);
    j = expect_json(&r, 202, "cancel running");
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state"));
    assert_true(strcmp(s, "CANCELLING") == 0 || strcmp(s, "CANCELLED") == 0);
    cJSON_Delete(j);
    resp_free(&r);
    wait_state(a, "CANCELLED");
    assert_string_equal(job_state(b, st, sizeof st), "CANCELLED");
    /* a finished job cannot be cancelled; it can be deleted */
    http("POST", path, TOKEN, NULL, NULL, 0, NULL, &r);
    expect_problem(&r, 409, "INVALID_STATE", NULL, "cancel finished");
    int64_t ids[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)ids[i]);
        http("DELETE", path, TOKEN, NULL, NULL, 0, NULL, &r);
        assert_int_equal(r.status, 204);
        assert_int_equal(r.body.len, 0);
        resp_free(&r);
    }
}

static void test_model_routes(void **state) {
    (void)state;
    resp_t r;
    get("/api/v1/models", &r);
    cJSON *j = expect_json(&r, 200, "models");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "models")), 0);
    cJSON_Delete(j);
    resp_free(&r);
    get("/api/v1/models/none", &r);
    expect_problem(&r, 404, "MODEL_NOT_FOUND", NULL, "unknown model");
    http("DELETE", "/api/v1/models/none", TOKEN, NULL, NULL, 0, NULL, &r);
    expect_problem(&r, 404, "MODEL_NOT_FOUND", NULL, "delete unknown model");
    const char junk[] = "not a safetensors file";
    http("PUT", "/api/v1/models/m1", TOKEN, "application/octet-stream", junk, sizeof junk - 1, NULL, &r);
    expect_problem(&r, 422, "INVALID_MODEL", NULL, "junk upload");
    http("PUT", "/api/v1/models/m1", TOKEN, "text/plain", junk, sizeof junk - 1, NULL, &r);
    expect_problem(&r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL, "upload as text");
    http("PUT", "/api/v1/models/m1?max_batch=0", TOKEN, "application/octet-stream", junk, sizeof junk - 1, NULL, &r);
    expect_problem(&r, 400, "BAD_QUERY", NULL, "max_batch=0");
    http("POST", "/api/v1/models/none/predict", NULL, "text/plain", "x", 1, NULL, &r);
    expect_problem(&r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL, "predict as text");
    get("/api/v1/models", &r);
    j = expect_json(&r, 200, "models after refusals");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "models")), 0);
    cJSON_Delete(j);
    resp_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_lifecycle),
        cmocka_unit_test(test_unknown_and_malformed_ids),
        cmocka_unit_test(test_submit_refusals),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_methods_and_head),
        cmocka_unit_test(test_cancel_and_delete_states),
        cmocka_unit_test(test_model_routes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
