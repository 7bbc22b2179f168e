/*
 * lineage.c: where fine-tuned weights came from, as JSON for the REST API
 * (schema/openapi.json: Job.init, Model.lineage).
 *
 * A training job started from trained weights (model.init) has an "init":
 * before it starts, what its spec asked (from the stored spec text, so it
 * shows even while queued); once the engine has loaded the source (the
 * on_init hook, recorded in the store's job_inits by server/jobs/jobs.c),
 * what was actually loaded. A model registered from a job has a "lineage":
 * the job and checkpoint it was made from, then, following each job's init,
 * the job (or model) that job started from, and so on; the chain stops at a
 * model, at a job that was not fine-tuned, or at a job no longer in the store
 * ("exists": false). Sources can only be older than what starts from them,
 * so there are no cycles; the walk is bounded all the same.
 *
 * Owns nothing: reads the store on the caller's read connection. Any HTTP
 * connection thread.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/routes.h"

#define LINEAGE_MAX 64

/* A checkpoint name as the API shows it: "best" / "last" as strings, a step as a number. */
static cJSON *checkpoint_item(const char *c) {
    char *end;
    long long v = c && *c ? strtoll(c, &end, 10) : 0;
    if (c && *c && *end == '\0') return cJSON_CreateNumber((double)v);
    return cJSON_CreateString(c && *c ? c : "best");
}

static cJSON *init_from_row(const tld_job_init_row *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (strcmp(r->source_kind, "model") == 0) {
        cJSON_AddStringToObject(o, "model", r->source_model);
    } else {
        cJSON_AddNumberToObject(o, "job_id", (double)r->source_job);
        cJSON_AddItemToObject(o, "checkpoint", checkpoint_item(r->checkpoint));
    }
    if (r->step >= 0) cJSON_AddNumberToObject(o, "step", (double)r->step);
    else cJSON_AddNullToObject(o, "step");
    cJSON_AddBoolToObject(o, "ema", r->ema);
    cJSON_AddStringToObject(o, "head", r->head);
    cJSON_AddNumberToObject(o, "classes_matched", r->classes_matched);
    if (r->pos_from > 0) {
        cJSON *p = cJSON_AddObjectToObject(o, "pos_embed");
        cJSON_AddNumberToObject(p, "from", r->pos_from);
        cJSON_AddNumberToObject(p, "to", r->pos_to);
    } else {
        cJSON_AddNullToObject(o, "pos_embed");
    }
    cJSON_AddBoolToObject(o, "loaded", 1);
    return o;
}

/* What the spec text asks in model.init (not validated here: the job was accepted, so it parsed). */
static cJSON *init_from_spec(const char *spec_json) {
    cJSON *spec = spec_json ? cJSON_Parse(spec_json) : NULL;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(spec, "model");
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(model, "init");
    cJSON *o = NULL;
    if (!cJSON_IsObject(init)) goto done;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(init, "model");
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(init, "job_id");
    const cJSON *ck = cJSON_GetObjectItemCaseSensitive(init, "checkpoint");
    const cJSON *ema = cJSON_GetObjectItemCaseSensitive(init, "ema");
    const cJSON *head = cJSON_GetObjectItemCaseSensitive(init, "head");
    if (!(o = cJSON_CreateObject())) goto done;
    if (cJSON_IsString(m)) {
        cJSON_AddStringToObject(o, "model", m->valuestring);
    } else if (cJSON_IsNumber(jid)) {
        cJSON_AddNumberToObject(o, "job_id", jid->valuedouble);
        if (cJSON_IsNumber(ck)) cJSON_AddNumberToObject(o, "checkpoint", ck->valuedouble);
        else cJSON_AddItemToObject(o, "checkpoint", checkpoint_item(cJSON_IsString(ck) ? ck->valuestring : "best"));
    }
    cJSON_AddNullToObject(o, "step");
    if (cJSON_IsBool(ema)) cJSON_AddBoolToObject(o, "ema", cJSON_IsTrue(ema));
    else cJSON_AddNullToObject(o, "ema");
    if (cJSON_IsString(head)) cJSON_AddStringToObject(o, "head", head->valuestring);
    else cJSON_AddNullToObject(o, "head");
    cJSON_AddNullToObject(o, "classes_matched");
    cJSON_AddNullToObject(o, "pos_embed");
    cJSON_AddBoolToObject(o, "loaded", 0);
done:
    cJSON_Delete(spec);
    return o;
}

cJSON *tld_lineage_job_init(tld_store *st, const tld_job *j) {
    tld_job_init_row r;
    char err[256];
    if (tld_store_job_init_get(st, j->id, &r, err, sizeof err) == 0) return init_from_row(&r);
    return init_from_spec(j->spec_json);
}

static int job_exists(tld_store *st, int64_t id) {
    tld_job j;
    char err[256];
    if (tld_store_job_get(st, id, &j, err, sizeof err) != 0) return 0;
    tld_job_free(&j);
    return 1;
}

static cJSON *job_link(int64_t job, const char *checkpoint, int64_t step, int exists) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "job", (double)job);
    cJSON_AddItemToObject(e, "checkpoint", checkpoint_item(checkpoint));
    if (step >= 0) cJSON_AddNumberToObject(e, "step", (double)step);
    else cJSON_AddNullToObject(e, "step");
    cJSON_AddBoolToObject(e, "exists", exists);
    return e;
}

cJSON *tld_lineage_model(tld_store *st, const char *name) {
    cJSON *arr = cJSON_CreateArray();
    tld_model_row m;
    char err[256];
    if (!arr || tld_store_model_get(st, name, &m, err, sizeof err) != 0) return arr;
    int from_job = strcmp(m.source_kind, "job") == 0;
    int64_t job = m.job_id;
    if (from_job) {
        int exists = job_exists(st, job);
        cJSON_AddItemToArray(arr, job_link(job, m.checkpoint, m.step, exists));
        for (int hop = 0; exists && hop < LINEAGE_MAX; hop++) {
            tld_job_init_row r;
            if (tld_store_job_init_get(st, job, &r, err, sizeof err) != 0) break; /* trained from scratch */
            if (strcmp(r.source_kind, "model") == 0) {
                tld_model_row sm;
                int model_exists = tld_store_model_get(st, r.source_model, &sm, err, sizeof err) == 0;
                if (model_exists) tld_model_row_free(&sm);
                cJSON *e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "model", r.source_model);
                if (r.step >= 0) cJSON_AddNumberToObject(e, "step", (double)r.step);
                else cJSON_AddNullToObject(e, "step");
                cJSON_AddBoolToObject(e, "exists", model_exists);
                cJSON_AddItemToArray(arr, e);
                break;
            }
            job = r.source_job;
            exists = job_exists(st, job);
            cJSON_AddItemToArray(arr, job_link(job, r.checkpoint, r.step, exists));
        }
    }
    tld_model_row_free(&m);
    return arr;
}
