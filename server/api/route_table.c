/*
 * route_table.c: the one table of the HTTP API (see route_table.h) and its
 * registration. A new route is a handler in a route file, declared in
 * api/handlers.h, and a line here: nothing else registers routes, so
 * `tokenlabd routes` and the OpenAPI check see every one.
 *
 * Owns only constant data; tld_routes_register runs once at start-up on the
 * main thread, before the HTTP server starts.
 */
#include "api/route_table.h"

#include "api/handlers.h"

const tld_route_def tld_route_table[] = {
    /* datasets.c */
    {"GET", "/api/v1/datasets", TLD_AUTH_PUBLIC, tld_h_datasets, 0},
    /* routes.c */
    {"POST", "/api/v1/jobs", TLD_AUTH_TOKEN, tld_h_job_submit, 0},
    {"GET", "/api/v1/jobs", TLD_AUTH_PUBLIC, tld_h_job_list, 0},
    {"GET", "/api/v1/jobs/{id}", TLD_AUTH_PUBLIC, tld_h_job_get, 0},
    {"DELETE", "/api/v1/jobs/{id}", TLD_AUTH_TOKEN, tld_h_job_delete, 0},
    {"POST", "/api/v1/jobs/{id}/cancel", TLD_AUTH_TOKEN, tld_h_job_cancel, 0},
    {"GET", "/api/v1/jobs/{id}/metrics", TLD_AUTH_PUBLIC, tld_h_job_metric_names, 0},
    {"GET", "/api/v1/jobs/{id}/metrics/{name}", TLD_AUTH_PUBLIC, tld_h_job_metric_series, 0},
    {"GET", "/api/v1/jobs/{id}/logs", TLD_AUTH_PUBLIC, tld_h_job_logs, 0},
    {"GET", "/api/v1/jobs/{id}/events", TLD_AUTH_PUBLIC, tld_h_job_events, 0},
    {"GET", "/api/v1/jobs/{id}/checkpoints", TLD_AUTH_PUBLIC, tld_h_job_checkpoints, 0},
    {"GET", "/api/v1/events", TLD_AUTH_PUBLIC, tld_h_events_all, 0},
    {"GET", "/api/v1/info", TLD_AUTH_PUBLIC, tld_h_info, 0},
    {"GET", "/api/v1/openapi.json", TLD_AUTH_PUBLIC, tld_h_openapi, 0},
    {"GET", "/healthz", TLD_AUTH_PUBLIC, tld_h_healthz, 0},
    {"GET", "/readyz", TLD_AUTH_PUBLIC, tld_h_readyz, 0},
    {"GET", "/metrics", TLD_AUTH_PUBLIC, tld_h_prometheus, 0},
    /* routes_models.c */
    {"GET", "/api/v1/models", TLD_AUTH_PUBLIC, tld_h_model_list, 0},
    {"POST", "/api/v1/models", TLD_AUTH_TOKEN, tld_h_model_register, 0},
    {"GET", "/api/v1/models/{name}", TLD_AUTH_PUBLIC, tld_h_model_get, 0},
    {"PUT", "/api/v1/models/{name}", TLD_AUTH_TOKEN, tld_h_model_put, TLD_MODEL_UPLOAD_MAX},
    {"PATCH", "/api/v1/models/{name}", TLD_AUTH_TOKEN, tld_h_model_patch, 0},
    {"DELETE", "/api/v1/models/{name}", TLD_AUTH_TOKEN, tld_h_model_delete, 0},
    {"POST", "/api/v1/models/{name}/predict", TLD_AUTH_PUBLIC, tld_h_model_predict, 0},
    {"GET", "/v2", TLD_AUTH_PUBLIC, tld_h_v2_server, 0},
    {"GET", "/v2/", TLD_AUTH_PUBLIC, tld_h_v2_server, 0},
    {"GET", "/v2/health/live", TLD_AUTH_PUBLIC, tld_h_v2_live, 0},
    {"GET", "/v2/health/ready", TLD_AUTH_PUBLIC, tld_h_v2_ready, 0},
    {"GET", "/v2/models/{name}", TLD_AUTH_PUBLIC, tld_h_v2_model, 0},
    {"GET", "/v2/models/{name}/ready", TLD_AUTH_PUBLIC, tld_h_v2_model_ready, 0},
    {"POST", "/v2/models/{name}/infer", TLD_AUTH_PUBLIC, tld_h_v2_infer, 0},
    {"GET", "/v2/models/{name}/versions/{version}", TLD_AUTH_PUBLIC, tld_h_v2_model, 0},
    {"GET", "/v2/models/{name}/versions/{version}/ready", TLD_AUTH_PUBLIC, tld_h_v2_model_ready, 0},
    {"POST", "/v2/models/{name}/versions/{version}/infer", TLD_AUTH_PUBLIC, tld_h_v2_infer, 0},
    /* routes_inspect.c */
    {"GET", "/api/v1/jobs/{id}/samples", TLD_AUTH_PUBLIC, tld_h_inspect_samples, 0},
    {"GET", "/api/v1/jobs/{id}/samples/{k}", TLD_AUTH_PUBLIC, tld_h_inspect_sample, 0},
    {"GET", "/api/v1/jobs/{id}/samples/{k}/image", TLD_AUTH_PUBLIC, tld_h_inspect_sample_image, 0},
    {"GET", "/api/v1/jobs/{id}/samples/{k}/heatmap.jpg", TLD_AUTH_PUBLIC, tld_h_inspect_sample_heatmap, 0},
    /* routes_labelmaps.c */
    {"GET", "/api/v1/labelmaps", TLD_AUTH_PUBLIC, tld_h_labelmap_list, 0},
    {"GET", "/api/v1/labelmaps/keys", TLD_AUTH_PUBLIC, tld_h_labelmap_keys, 0},
    {"GET", "/api/v1/labelmaps/entry", TLD_AUTH_PUBLIC, tld_h_labelmap_entry, 0},
    {"GET", "/api/v1/labelmaps/image", TLD_AUTH_PUBLIC, tld_h_labelmap_image, 0},
    {"GET", "/api/v1/labelmaps/heatmap.jpg", TLD_AUTH_PUBLIC, tld_h_labelmap_heatmap, 0},
};
const size_t tld_route_table_len = sizeof tld_route_table / sizeof tld_route_table[0];

/* A job's event wakes the streams of that job and those of every job (key 0). */
static void wake_streams(void *http, int64_t job) { tld_http_wake_key(http, (uint64_t)job); }

int tld_routes_register(tld_routes *R) {
    /* the event streams park while there is nothing to send; a published event wakes them */
    if (R->events) tld_events_on_publish(R->events, wake_streams, R->http);
    for (size_t i = 0; i < tld_route_table_len; i++) {
        const tld_route_def *t = &tld_route_table[i];
        if (tld_http_route_limit(R->http, t->method, t->pattern, t->auth, t->fn, R, t->max_body) != 0) return -1;
    }
    return 0;
}

const char *tld_route_auth_name(tld_auth a) {
    return a == TLD_AUTH_TOKEN ? "token" : "public";
}
