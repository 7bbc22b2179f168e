/*
 * init_source.c: the one rule of where a job's trained weights come from
 * (see init_source.h): a registered model's file or a training job's
 * checkpoint, for annotate jobs ("source") and fine-tuning jobs
 * ("model.init"), and the preparation of a fine-tuning spec (the source's
 * configuration through tl_jobspec_apply_init).
 *
 * Owns nothing: reads the store (models, jobs) and the source file's header.
 * Threads: HTTP connection threads (tld_jobs_submit) and the scheduler
 * (start_job), at once; everything here is reentrant.
 *
 * Design: resolution happens twice, at submit (so a wrong source is a 422 at
 * its field and nothing is queued) and at start (a source deleted or
 * replaced meanwhile is found there: the job fails with DATA_ERROR and the
 * pointer). The two calls run the same code; only the caller's reaction
 * differs.
 */
#include "jobs/init_source.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "serving/models.h"
#include "tokenlab/base.h"
#include "tokenlab/model.h"

static int fail(tl_spec_error *se, const char *prefix, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(tl_spec_error *se, const char *prefix, const char *field, const char *fmt, ...) {
    snprintf(se->pointer, sizeof se->pointer, "%s%s", prefix, field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(se->message, sizeof se->message, fmt, ap);
    va_end(ap);
    return -1;
}

int tld_source_resolve(tld_store *st, const tld_source_req *q, tld_source *out, tl_spec_error *se) {
    char err[512];
    const char *p = q->prefix ? q->prefix : "";
    memset(out, 0, sizeof *out);
    out->step = -1;
    if (q->model && q->model[0]) {
        tld_model_row m;
        if (tld_store_model_get(st, q->model, &m, err, sizeof err) != 0)
            return fail(se, p, "/model", "no model named %s%s%s", q->model, strcmp(err, "not found") ? ": " : "",
                        strcmp(err, "not found") ? err : "");
        if (q->exists_only) {
            tld_model_row_free(&m);
            return 0;
        }
        int n = snprintf(out->path, sizeof out->path, "%s", m.path);
        out->step = strcmp(m.source_kind, "job") == 0 && m.step > 0 ? m.step : -1;
        tld_model_row_free(&m);
        if (n < 0 || (size_t)n >= sizeof out->path) return fail(se, p, "/model", "the model's file path is too long");
        /* a model's file holds the weights it serves: no EMA copy */
        if (q->ema == 1)
            return fail(se, p, "/ema", "model %s holds one set of weights (no EMA weights); leave \"ema\" out",
                        q->model);
        return 0;
    }
    tld_job job;
    if (tld_store_job_get(st, q->job_id, &job, err, sizeof err) != 0)
        return fail(se, p, "/job_id", "job %lld does not exist", (long long)q->job_id);
    if (q->finished && !tld_job_state_final(job.state)) {
        tld_job_state s = job.state;
        tld_job_free(&job);
        return fail(se, p, "/job_id", "the source job is still training (job %lld is %s); start from it when it has "
                    "finished", (long long)q->job_id, tld_job_state_name(s));
    }
    if (q->exists_only) {
        tld_job_free(&job);
        return 0;
    }
    tld_models_error e;
    int64_t step = 0;
    int has_ema = 0;
    int rc = tld_job_checkpoint_file(&job, q->checkpoint ? q->checkpoint : "best", out->path, sizeof out->path, &step,
                                     &has_ema, &e);
    tld_job_free(&job);
    if (rc != 0) return fail(se, p, e.pointer, "%s", e.detail);
    out->step = step;
    out->has_ema = has_ema;
    if (q->ema == 1 && !has_ema)
        return fail(se, p, "/ema", "the checkpoint holds no EMA weights (job %lld ran without EMA)",
                    (long long)q->job_id);
    out->from_ema = q->ema < 0 ? has_ema : q->ema;
    return 0;
}

int tld_init_prepare(tld_store *st, tl_train_spec *spec, tld_source *src, tl_spec_error *se) {
    if (!spec->init) return 0;
    tld_source s;
    tld_source_req q = {.prefix = "/model/init", .model = spec->init_model, .job_id = spec->init_job,
                        .checkpoint = spec->init_checkpoint[0] ? spec->init_checkpoint : "best",
                        .ema = spec->init_ema, .finished = 1};
    if (tld_source_resolve(st, &q, &s, se) != 0) return -1;
    tl_config cfg;
    char err[TL_ERR_LEN];
    if (tl_checkpoint_config(s.path, &cfg, err, sizeof err) != 0)
        return fail(se, "/model/init", spec->init_model[0] ? "/model" : "/checkpoint",
                    "the source is not a valid checkpoint: %s", err);
    if (tl_jobspec_apply_init(spec, &cfg, se) != 0) return -1;
    snprintf(spec->init_weights, sizeof spec->init_weights, "%s", s.path);
    spec->init_from_ema = s.from_ema;
    if (src) *src = s;
    return 0;
}
