/*
 * routes.h: what the REST API's route files share (routes.c: jobs, events,
 * daemon; routes_models.c: models, predict, KServe v2; routes_inspect.c:
 * token inspection; routes_labelmaps.c: label maps; datasets.c: datasets;
 * lineage.c: where fine-tuned jobs and models came from).
 * Their handlers are declared in api/handlers.h and bound to methods and
 * paths only by the table of api/route_table.c. The struct is filled once at
 * start-up and read-only afterwards; every handler gets it as its user
 * pointer.
 */
#ifndef TLD_ROUTES_H
#define TLD_ROUTES_H

#include <stddef.h>
#include <stdint.h>

#include "jobs/events.h"
#include "http/http.h"
#include "jobs/jobs.h"
#include "serving/models.h"
#include "store/store.h"

#define TLD_MODEL_UPLOAD_MAX ((size_t)1 << 30) /* bytes of a PUT /api/v1/models/{name} body */

typedef struct {
    tld_http *http;
    tld_store *store;
    tld_events *events;
    tld_jobs *jobs;
    tld_models *models;
    const char *openapi;   /* the OpenAPI document served at /api/v1/openapi.json */
    size_t max_body;
    int max_running, threads_per_job;
    const char *data_root;   /* datasets and label maps live under it */
} tld_routes;


struct cJSON;
/* Replies with o as JSON (status) and deletes o; 500 INTERNAL "out of memory" when o is NULL or cannot be
 * printed. The one way the route files answer with a cJSON document. */
void tld_routes_reply_cjson(tld_req *r, int status, struct cJSON *o);

/* lineage.c. A job's "init" (schema/openapi.json, Job.init): what was loaded once the job has started from
 * trained weights, what its spec asks before that; NULL for a job without model.init (the caller writes null). */
struct cJSON *tld_lineage_job_init(tld_store *st, const tld_job *j);
/* A model's "lineage" (Model.lineage): its source job and checkpoint, then what each job started from, up to a
 * model, a job trained from scratch or a job no longer stored; [] for an uploaded or unknown model. Never NULL
 * unless out of memory. */
struct cJSON *tld_lineage_model(tld_store *st, const char *name);

/* A decimal integer in [lo, hi] (the whole string): 0 and *out, or -1. For path and query parameters. */
int tld_routes_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);

#endif
