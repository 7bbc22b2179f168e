/*
 * routes.h: the REST API handlers (routes.c: jobs, events, daemon;
 * routes_models.c: models, predict, KServe v2; routes_samples.c: token
 * inspection) and what they share.
 * The struct is filled once at start-up and read-only afterwards.
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

/* One route of a table; the tables are registered by tld_routes_register and read by
 * tests/parity/check_openapi.py, which compares them with schema/openapi.json. */
typedef struct {
    const char *method, *pattern;
    tld_auth auth;
    tld_handler fn;
    size_t max_body;    /* 0: the daemon's limit */
} tld_route_def;

extern const tld_route_def tld_model_routes[];   /* routes_models.c, NULL-terminated */
extern const tld_route_def tld_sample_routes[];  /* routes_samples.c, NULL-terminated */
extern const tld_route_def tld_labelmap_routes[]; /* routes_labelmaps.c, NULL-terminated */

int tld_routes_register(tld_routes *R);

/* A decimal integer in [lo, hi] (the whole string): 0 and *out, or -1. For path and query parameters. */
int tld_routes_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);

#endif
