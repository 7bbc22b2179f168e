/*
 * handlers.h: every handler of the HTTP API, one per route of the table in
 * route_table.c (the only place that binds a handler to a method and path).
 * Each handler answers with tld_reply_* exactly once, runs on
 * libmicrohttpd's connection threads, and receives the daemon's tld_routes
 * (api/routes.h, read-only after start-up) as its user pointer.
 */
#ifndef TLD_HANDLERS_H
#define TLD_HANDLERS_H

#include "http/http.h"

/* routes.c: jobs, events, the daemon itself */
void tld_h_job_submit(tld_req *r, void *u);
void tld_h_job_list(tld_req *r, void *u);
void tld_h_job_get(tld_req *r, void *u);
void tld_h_job_delete(tld_req *r, void *u);
void tld_h_job_cancel(tld_req *r, void *u);
void tld_h_job_metric_names(tld_req *r, void *u);
void tld_h_job_metric_series(tld_req *r, void *u);
void tld_h_job_logs(tld_req *r, void *u);
void tld_h_job_events(tld_req *r, void *u);
void tld_h_job_checkpoints(tld_req *r, void *u);
void tld_h_events_all(tld_req *r, void *u);
void tld_h_info(tld_req *r, void *u);
void tld_h_openapi(tld_req *r, void *u);
void tld_h_healthz(tld_req *r, void *u);
void tld_h_readyz(tld_req *r, void *u);
void tld_h_prometheus(tld_req *r, void *u);

/* routes_models.c: registered models, predict, KServe v2 */
void tld_h_model_list(tld_req *r, void *u);
void tld_h_model_register(tld_req *r, void *u);
void tld_h_model_get(tld_req *r, void *u);
void tld_h_model_put(tld_req *r, void *u);
void tld_h_model_patch(tld_req *r, void *u);
void tld_h_model_delete(tld_req *r, void *u);
void tld_h_model_predict(tld_req *r, void *u);
void tld_h_v2_server(tld_req *r, void *u);
void tld_h_v2_live(tld_req *r, void *u);
void tld_h_v2_ready(tld_req *r, void *u);
void tld_h_v2_model(tld_req *r, void *u);
void tld_h_v2_model_ready(tld_req *r, void *u);
void tld_h_v2_infer(tld_req *r, void *u);

/* routes_inspect.c: token inspection of training jobs (the URLs say "samples") */
void tld_h_inspect_samples(tld_req *r, void *u);
void tld_h_inspect_sample(tld_req *r, void *u);
void tld_h_inspect_sample_image(tld_req *r, void *u);
void tld_h_inspect_sample_heatmap(tld_req *r, void *u);

/* routes_labelmaps.c: label maps under the data root */
void tld_h_labelmap_list(tld_req *r, void *u);
void tld_h_labelmap_keys(tld_req *r, void *u);
void tld_h_labelmap_entry(tld_req *r, void *u);
void tld_h_labelmap_image(tld_req *r, void *u);
void tld_h_labelmap_heatmap(tld_req *r, void *u);

/* datasets.c: the datasets under the data root */
void tld_h_datasets(tld_req *r, void *u);

#endif
