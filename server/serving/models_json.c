/*
 * models_json.c: the served models as JSON (schema/openapi.json, Model and
 * the model list) and as Prometheus lines for /metrics.
 *
 * Owns nothing: each function takes references to the entries it reads
 * (registry.c) and reads each under its E->mu. Any thread.
 */
#include "serving/models.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "serving/serving_internal.h"
#include "tokenlab/base.h"

static const char *const state_names[] = {"LOADING", "READY", "FAILED"};

static cJSON *entry_json(entry *E) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    pthread_mutex_lock(&E->mu);
    const tld_model_row *r = &E->row;
    cJSON_AddStringToObject(o, "name", r->name);
    cJSON_AddStringToObject(o, "state", state_names[E->state]);
    if (E->state == ST_FAILED)
        cJSON_AddStringToObject(o, "error", E->error);
    else
        cJSON_AddNullToObject(o, "error");
    cJSON *src = cJSON_AddObjectToObject(o, "source");
    cJSON_AddStringToObject(src, "kind", r->source_kind);
    if (strcmp(r->source_kind, "job") == 0) {
        cJSON_AddNumberToObject(src, "job_id", (double)r->job_id);
        char *end;
        long long st = strtoll(r->checkpoint, &end, 10);
        if (*end == '\0' && r->checkpoint[0])
            cJSON_AddNumberToObject(src, "checkpoint", (double)st);
        else
            cJSON_AddStringToObject(src, "checkpoint", r->checkpoint);
        cJSON_AddNumberToObject(src, "step", (double)r->step);
        cJSON_AddBoolToObject(src, "ema", r->ema);
    }
    cJSON_AddNumberToObject(src, "bytes", (double)r->bytes);
    cJSON_AddNumberToObject(o, "created_ms", (double)r->created_ms);
    if (E->have_cfg) {
        cJSON_AddNumberToObject(o, "num_classes", E->K);
        cJSON_AddNumberToObject(o, "grid", E->grid);
        cJSON_AddNumberToObject(o, "params", (double)E->params);
        cJSON *in = cJSON_AddObjectToObject(o, "input");
        cJSON_AddNumberToObject(in, "size", E->S);
        cJSON_AddNumberToObject(in, "crop_pct", round(r->crop_pct * 1e6) / 1e6);
        const double mean[3] = {0.485, 0.456, 0.406}, stdv[3] = {0.229, 0.224, 0.225};
        cJSON_AddItemToObject(in, "mean", cJSON_CreateDoubleArray(mean, 3));
        cJSON_AddItemToObject(in, "std", cJSON_CreateDoubleArray(stdv, 3));
        char cj[1024];
        if (tl_config_to_json(&E->cfg, cj, sizeof cj) > 0) cJSON_AddItemToObject(o, "config", cJSON_Parse(cj));
    }
    cJSON *classes = cJSON_AddArrayToObject(o, "classes");
    cJSON *lab = cJSON_Parse(r->labels_json);
    for (int c = 0; c < cJSON_GetArraySize(lab); c++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "index", c);
        cJSON *l = cJSON_GetArrayItem(lab, c);
        cJSON_AddStringToObject(it, "label", cJSON_IsString(l) ? l->valuestring : "");
        cJSON_AddItemToArray(classes, it);
    }
    cJSON_Delete(lab);
    cJSON *b = cJSON_AddObjectToObject(o, "batching");
    cJSON_AddNumberToObject(b, "max_batch", E->max_batch);
    cJSON_AddNumberToObject(b, "max_delay_ms", E->max_delay_ms);
    cJSON_AddNumberToObject(b, "max_queue", E->max_queue);
    cJSON *s = cJSON_AddObjectToObject(o, "stats");
    cJSON_AddNumberToObject(s, "requests", (double)E->requests);
    cJSON_AddNumberToObject(s, "images", (double)E->images);
    cJSON_AddNumberToObject(s, "batches", (double)E->batches);
    cJSON_AddNumberToObject(s, "rejected", (double)E->rejected);
    cJSON_AddNumberToObject(s, "expired", (double)E->expired);
    cJSON_AddNumberToObject(s, "queued", E->queued);
    cJSON_AddNumberToObject(s, "mean_batch", E->batches ? (double)(E->images - E->expired) / (double)E->batches : 0.0);
    cJSON_AddNumberToObject(s, "batch_ms", E->batch_ms_avg);
    pthread_mutex_unlock(&E->mu);
    return o;
}

char *tld_models_json(tld_models *M, const char *name, tld_models_error *e) {
    entry *E = tld_models_find_ref(M, name);
    if (!E) {
        tld_models_fail(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
        return NULL;
    }
    cJSON *o = entry_json(E);
    tld_models_entry_unref(E);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
    return s;
}

char *tld_models_list_json(tld_models *M, tld_models_error *e) {
    entry **v = NULL;
    int n = tld_models_snapshot(M, &v);
    if (n < 0) {
        tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
        return NULL;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "models");
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(arr, entry_json(v[i]));
        tld_models_entry_unref(v[i]);
    }
    free(v);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
    return s;
}

char *tld_models_prometheus(tld_models *M) {
    entry **v = NULL;
    int n = tld_models_snapshot(M, &v);
    if (n < 0) return NULL;
    size_t cap = 4096 + (size_t)n * 6144, len = 0; /* 6 lines and 2 histograms (19 lines each) per model */
    char *buf = malloc(cap);
    if (!buf) {
        for (int i = 0; i < n; i++) tld_models_entry_unref(v[i]);
        free(v);
        return NULL;
    }
    static const char *const heads[] = {
        "# HELP tokenlab_model_requests_total Inference requests per model.\n"
        "# TYPE tokenlab_model_requests_total counter\n",
        "# HELP tokenlab_model_images_total Images inferred per model.\n"
        "# TYPE tokenlab_model_images_total counter\n",
        "# HELP tokenlab_model_batches_total Batches run per model.\n"
        "# TYPE tokenlab_model_batches_total counter\n",
        "# HELP tokenlab_model_rejected_total Requests refused with 429 (queue full) per model.\n"
        "# TYPE tokenlab_model_rejected_total counter\n",
        "# HELP tokenlab_model_queue_depth Images waiting per model.\n# TYPE tokenlab_model_queue_depth gauge\n",
        "# HELP tokenlab_model_ready 1 when the model is loaded and serving.\n# TYPE tokenlab_model_ready gauge\n"};
    static const char *const names[] = {"tokenlab_model_requests_total", "tokenlab_model_images_total",
                                        "tokenlab_model_batches_total",  "tokenlab_model_rejected_total",
                                        "tokenlab_model_queue_depth",    "tokenlab_model_ready"};
    for (int k = 0; k < 8; k++) {
        if (k >= 6) { /* the histograms */
            static const char *const hh[] = {
                "# HELP tokenlab_model_queue_seconds Time an image waits in its model's queue before its batch "
                "runs.\n# TYPE tokenlab_model_queue_seconds histogram\n",
                "# HELP tokenlab_model_compute_seconds Forward pass time of a model's batches.\n"
                "# TYPE tokenlab_model_compute_seconds histogram\n"};
            const char *hn = k == 6 ? "tokenlab_model_queue_seconds" : "tokenlab_model_compute_seconds";
            len += (size_t)snprintf(buf + len, cap - len, "%s", hh[k - 6]);
            if (len >= cap) len = cap - 1;
            for (int i = 0; i < n; i++) {
                entry *E = v[i];
                char labels[128];
                snprintf(labels, sizeof labels, "model=\"%s\"", E->row.name);
                pthread_mutex_lock(&E->mu);
                tld_hist h = k == 6 ? E->queue_hist : E->compute_hist;
                pthread_mutex_unlock(&E->mu);
                tld_hist_format(buf, cap, &len, hn, labels, &h);
            }
            continue;
        }
        len += (size_t)snprintf(buf + len, cap - len, "%s", heads[k]);
        for (int i = 0; i < n && len < cap; i++) {
            entry *E = v[i];
            pthread_mutex_lock(&E->mu);
            double val = k == 0 ? (double)E->requests
                         : k == 1 ? (double)E->images
                         : k == 2 ? (double)E->batches
                         : k == 3 ? (double)E->rejected
                         : k == 4 ? (double)E->queued
                                  : (double)(E->state == ST_READY);
            pthread_mutex_unlock(&E->mu);
            len += (size_t)snprintf(buf + len, cap - len, "%s{model=\"%s\"} %.0f\n", names[k], E->row.name, val);
        }
        if (len >= cap) len = cap - 1;
    }
    for (int i = 0; i < n; i++) tld_models_entry_unref(v[i]);
    free(v);
    return buf;
}
