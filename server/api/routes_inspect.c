/*
 * routes_inspect.c: token inspection of training jobs over HTTP
 * (/api/v1/jobs/{id}/samples...): the samples a job inspects, the token
 * grids recorded at each evaluation (targets: what each token was taught;
 * predictions: what it predicts now), the images, and heatmap overlays
 * rendered as JPEG for users who look with curl and an image viewer.
 *
 * Owns nothing long-lived: handlers run on libmicrohttpd's connection
 * threads and read the store (store_inspect.c).
 */
#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenlab/data.h"
#include "api/heatmap.h"
#include "api/handlers.h"
#include "api/routes.h"

#define STEPS_MAX 4096
#define TOPK 3


/* The job id and sample index of the path; replies 404 and returns -1 when bad. */
static int ids(tld_req *r, tld_routes *R, int64_t *job, int64_t *k, int want_k) {
    tld_job j;
    char err[256];
    if (tld_routes_parse_i64(tld_req_param(r, "id"), 1, INT64_MAX, job) != 0 ||
        tld_store_job_get(R->store, *job, &j, err, sizeof err) != 0) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no job %s", tld_req_param(r, "id"));
        return -1;
    }
    tld_job_free(&j);
    if (want_k && tld_routes_parse_i64(tld_req_param(r, "k"), 0, 1 << 20, k) != 0) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no sample %s of job %" PRId64, tld_req_param(r, "k"), *job);
        return -1;
    }
    return 0;
}

/* ?step= (default -1: the latest) and ?ema= (true/false; default -1: EMA when recorded). */
static int step_query(tld_req *r, int64_t *step, int *ema) {
    const char *s = tld_req_query(r, "step"), *e = tld_req_query(r, "ema");
    *step = -1;
    *ema = -1;
    if (s && tld_routes_parse_i64(s, 0, INT64_MAX, step) != 0) {
        tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter step: must be an integer >= 0");
        return -1;
    }
    if (e) {
        if (!strcmp(e, "true") || !strcmp(e, "1")) *ema = 1;
        else if (!strcmp(e, "false") || !strcmp(e, "0")) *ema = 0;
        else {
            tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter ema: must be true or false");
            return -1;
        }
    }
    return 0;
}

static void reply_no_set(tld_req *r, int64_t job) {
    tld_reply_problem(r, 404, "NO_SAMPLES", NULL,
                     "job %" PRId64 " has no inspection samples yet (they are recorded at its first evaluation)", job);
}

/* A grid blob (store.h layout) as {"index": top-1, "score": top-1 probability, "topk": {...}}. */
static cJSON *grid_json(const void *blob, int g) {
    size_t n = (size_t)g * g, m = n * TOPK;
    const int32_t *idx = blob;
    const float *prob = (const float *)((const uint8_t *)blob + m * sizeof(int32_t));
    cJSON *o = cJSON_CreateObject();
    cJSON *i1 = cJSON_AddArrayToObject(o, "index"), *s1 = cJSON_AddArrayToObject(o, "score");
    for (size_t t = 0; t < n; t++) {
        cJSON_AddItemToArray(i1, cJSON_CreateNumber(idx[t * TOPK]));
        cJSON_AddItemToArray(s1, cJSON_CreateNumber(round((double)prob[t * TOPK] * 1e4) / 1e4));
    }
    cJSON *tk = cJSON_AddObjectToObject(o, "topk");
    cJSON_AddNumberToObject(tk, "k", TOPK);
    cJSON *ik = cJSON_AddArrayToObject(tk, "index"), *sk = cJSON_AddArrayToObject(tk, "score");
    for (size_t t = 0; t < m; t++) {
        cJSON_AddItemToArray(ik, cJSON_CreateNumber(idx[t]));
        cJSON_AddItemToArray(sk, cJSON_CreateNumber(round((double)prob[t] * 1e4) / 1e4));
    }
    return o;
}

static const char *label_of(cJSON *labels, int c) {
    cJSON *l = cJSON_GetArrayItem(labels, c);
    return cJSON_IsString(l) ? l->valuestring : "";
}

void tld_h_inspect_samples(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t job, k;
    if (ids(r, R, &job, &k, 0) != 0) return;
    char err[512];
    tld_inspect_set_row set;
    if (tld_store_inspect_set_get(R->store, job, &set, err, sizeof err) != 0) {
        if (strcmp(err, "not found") == 0) return reply_no_set(r, job);
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
        return;
    }
    tld_inspect_sample_info info[64];
    int64_t *steps = malloc(sizeof *steps * STEPS_MAX);
    int *emas = malloc(sizeof *emas * STEPS_MAX);
    int n = 0, ns = 0;
    if (!steps || !emas || tld_store_inspect_samples(R->store, job, info, 64, &n, err, sizeof err) != 0 ||
        tld_store_inspect_steps(R->store, job, steps, emas, STEPS_MAX, &ns, err, sizeof err) != 0) {
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", steps && emas ? err : "out of memory");
        goto done;
    }
    cJSON *labels = cJSON_Parse(set.labels_json);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "job_id", (double)job);
    cJSON_AddNumberToObject(o, "grid", set.grid);
    cJSON_AddNumberToObject(o, "size", set.size);
    cJSON_AddNumberToObject(o, "view", set.view);
    cJSON_AddNumberToObject(o, "num_classes", set.num_classes);
    cJSON *cl = cJSON_AddArrayToObject(o, "classes");
    for (int c = 0; c < set.num_classes; c++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "index", c);
        cJSON_AddStringToObject(it, "label", label_of(labels, c));
        cJSON_AddItemToArray(cl, it);
    }
    cJSON *st = cJSON_AddArrayToObject(o, "steps");
    for (int i = 0; i < ns; i++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "step", (double)steps[i]);
        cJSON_AddBoolToObject(it, "ema", emas[i]);
        cJSON_AddItemToArray(st, it);
    }
    cJSON *sa = cJSON_AddArrayToObject(o, "samples");
    for (int i = 0; i < n; i++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "k", info[i].k);
        cJSON_AddStringToObject(it, "split", info[i].split);
        cJSON_AddStringToObject(it, "path", info[i].path);
        cJSON_AddNumberToObject(it, "label", info[i].label);
        cJSON_AddStringToObject(it, "label_name", label_of(labels, info[i].label));
        cJSON_AddStringToObject(it, "target_kind", info[i].target_kind);
        cJSON_AddItemToArray(sa, it);
    }
    cJSON_Delete(labels);
    tld_routes_reply_cjson(r, 200, o);
done:
    free(steps);
    free(emas);
    tld_inspect_set_row_free(&set);
}

/* The sample's set row and info; replies 404 and returns -1 when absent. */
static int load_sample(tld_req *r, tld_routes *R, int64_t job, int64_t k, tld_inspect_set_row *set,
                       tld_inspect_sample_info *info) {
    char err[512];
    if (tld_store_inspect_set_get(R->store, job, set, err, sizeof err) != 0) {
        if (strcmp(err, "not found") == 0) reply_no_set(r, job);
        else tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
        return -1;
    }
    tld_inspect_sample_info all[64];
    int n = 0;
    if (tld_store_inspect_samples(R->store, job, all, 64, &n, err, sizeof err) != 0) {
        tld_inspect_set_row_free(set);
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (all[i].k == k) {
            *info = all[i];
            return 0;
        }
    tld_inspect_set_row_free(set);
    tld_reply_problem(r, 404, "NOT_FOUND", NULL, "job %" PRId64 " has no sample %" PRId64 " (it has %d)", job, k, n);
    return -1;
}

void tld_h_inspect_sample(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t job, k, step, got_step = 0;
    int ema, got_ema = 0;
    if (ids(r, R, &job, &k, 1) != 0 || step_query(r, &step, &ema) != 0) return;
    tld_inspect_set_row set;
    tld_inspect_sample_info info;
    if (load_sample(r, R, job, k, &set, &info) != 0) return;
    char err[512];
    void *target = NULL, *tokens = NULL, *top5 = NULL;
    size_t tlen;
    if (tld_store_inspect_sample_blob(R->store, job, (int)k, 1, &target, &tlen, err, sizeof err) != 0) {
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
        goto done;
    }
    int have_pred = tld_store_inspect_pred_get(R->store, job, (int)k, step, ema, &got_step, &got_ema, &tokens, &top5,
                                              err, sizeof err) == 0;
    if (!have_pred && strcmp(err, "not found") != 0) {
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
        goto done;
    }
    if (!have_pred && step >= 0) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no predictions recorded for sample %" PRId64 " at step %" PRId64
                         "%s", k, step, ema == 1 ? " (EMA)" : ema == 0 ? " (raw)" : "");
        goto done;
    }
    cJSON *labels = cJSON_Parse(set.labels_json);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "k", info.k);
    cJSON_AddStringToObject(o, "split", info.split);
    cJSON_AddStringToObject(o, "path", info.path);
    cJSON_AddNumberToObject(o, "label", info.label);
    cJSON_AddStringToObject(o, "label_name", label_of(labels, info.label));
    cJSON_AddNumberToObject(o, "grid", set.grid);
    if (have_pred) {
        cJSON_AddNumberToObject(o, "step", (double)got_step);
        cJSON_AddBoolToObject(o, "ema", got_ema);
    } else {
        cJSON_AddNullToObject(o, "step");
        cJSON_AddNullToObject(o, "ema");
    }
    cJSON *t = grid_json(target, set.grid);
    cJSON_AddStringToObject(t, "kind", info.target_kind);
    cJSON_AddItemToObject(o, "target", t);
    if (have_pred) {
        cJSON *p = grid_json(tokens, set.grid);
        cJSON *t5 = cJSON_AddArrayToObject(p, "top5");
        const int32_t *ix = top5;
        const float *pr = (const float *)((const uint8_t *)top5 + 20);
        for (int i = 0; i < 5; i++) {
            if (ix[i] < 0) continue;
            cJSON *it = cJSON_CreateObject();
            cJSON_AddNumberToObject(it, "index", ix[i]);
            cJSON_AddStringToObject(it, "label", label_of(labels, ix[i]));
            cJSON_AddNumberToObject(it, "score", round((double)pr[i] * 1e6) / 1e6);
            cJSON_AddItemToArray(t5, it);
        }
        cJSON_AddItemToObject(o, "pred", p);
    } else {
        cJSON_AddNullToObject(o, "pred");
    }
    cJSON_Delete(labels);
    tld_routes_reply_cjson(r, 200, o);
done:
    free(target);
    free(tokens);
    free(top5);
    tld_inspect_set_row_free(&set);
}

void tld_h_inspect_sample_image(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t job, k;
    if (ids(r, R, &job, &k, 1) != 0) return;
    tld_inspect_set_row set;
    tld_inspect_sample_info info;
    if (load_sample(r, R, job, k, &set, &info) != 0) return;
    tld_inspect_set_row_free(&set);
    void *jpeg = NULL;
    size_t len = 0;
    char err[512];
    if (tld_store_inspect_sample_blob(R->store, job, (int)k, 0, &jpeg, &len, err, sizeof err) != 0) {
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
        return;
    }
    tld_reply_header(r, "Cache-Control", "max-age=3600"); /* a sample's image never changes */
    tld_reply_bytes(r, 200, "image/jpeg", jpeg, len);
    free(jpeg);
}

void tld_h_inspect_sample_heatmap(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t job, k, step, got_step;
    int ema, got_ema;
    if (ids(r, R, &job, &k, 1) != 0 || step_query(r, &step, &ema) != 0) return;
    const char *kind = tld_req_query(r, "kind");
    if (!kind) kind = "pred";
    if (strcmp(kind, "pred") != 0 && strcmp(kind, "target") != 0) {
        tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter kind: must be target or pred");
        return;
    }
    tld_inspect_set_row set;
    tld_inspect_sample_info info;
    if (load_sample(r, R, job, k, &set, &info) != 0) return;
    char err[512];
    void *jpeg = NULL, *grid = NULL, *top5 = NULL;
    uint8_t *out = NULL;
    size_t len = 0, glen;
    tl_image im = {0};
    if (tld_store_inspect_sample_blob(R->store, job, (int)k, 0, &jpeg, &len, err, sizeof err) != 0) {
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
        goto done;
    }
    if (kind[0] == 't') {
        if (tld_store_inspect_sample_blob(R->store, job, (int)k, 1, &grid, &glen, err, sizeof err) != 0) {
            tld_reply_problem(r, 500, "STORE_ERROR", NULL, "%s", err);
            goto done;
        }
    } else if (tld_store_inspect_pred_get(R->store, job, (int)k, step, ema, &got_step, &got_ema, &grid, &top5, err,
                                         sizeof err) != 0) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no predictions recorded for sample %" PRId64 "%s", k,
                         step >= 0 ? " at that step" : " yet");
        goto done;
    }
    if (tl_image_decode(jpeg, len, 0, &im, NULL, err, sizeof err) != 0 || im.w != set.view || im.h != set.view) {
        tld_reply_problem(r, 500, "STORE_ERROR", NULL, "the stored image of sample %" PRId64 " is unreadable", k);
        goto done;
    }
    /* top-1 of each token: the first of its TOPK entries */
    size_t n = (size_t)set.grid * set.grid;
    int32_t *idx = malloc(n * sizeof *idx);
    float *prob = malloc(n * sizeof *prob);
    if (idx && prob) {
        const int32_t *gi = grid;
        const float *gp = (const float *)((const uint8_t *)grid + n * TOPK * sizeof(int32_t));
        for (size_t t = 0; t < n; t++) {
            idx[t] = gi[t * TOPK];
            prob[t] = gp[t * TOPK];
        }
    }
    size_t olen = 0;
    int ok = idx && prob && tld_heatmap_jpeg(im.rgb, set.view, set.grid, idx, prob, &out, &olen, err, sizeof err) == 0;
    free(idx);
    free(prob);
    if (!ok) {
        tld_reply_problem(r, 500, "INTERNAL", NULL, "cannot render the heatmap: %s", err);
        goto done;
    }
    tld_reply_bytes(r, 200, "image/jpeg", out, olen);
done:
    free(out);
    tl_image_free(&im);
    free(jpeg);
    free(grid);
    free(top5);
    tld_inspect_set_row_free(&set);
}
