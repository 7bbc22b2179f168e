/*
 * load.c: loading model files into served models (see models.h): an
 * entry's weights, contexts and batcher lanes; the start-up loader thread
 * (the stored models, one at a time, state LOADING until then); installing
 * a model (store row, then the entry in the registry); and registering a
 * training job's checkpoint as a model (tld_models_register_job, with
 * tld_job_checkpoint_file, which also resolves the source of annotate jobs).
 *
 * Owns nothing long-lived beyond the loader thread (started and joined by
 * registry.c). Threads: the loader, and the HTTP handler that registers a
 * model; neither holds M->mu or E->mu during file I/O or store calls.
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
#include "tokenlab/data.h"
#include "tokenlab/jobspec.h"
#include "tokenlab/safetensors.h"

/* Loads the entry's file, makes its context and starts its batcher; sets READY or FAILED. */
int tld_models_entry_load(entry *E, char *err, size_t errlen) {
    tl_config cfg;
    if (tl_checkpoint_config(E->row.path, &cfg, err, errlen) != 0) goto fail;
    E->cfg = cfg;
    E->have_cfg = 1;
    E->K = cfg.num_classes;
    E->S = cfg.img_size;
    E->grid = tl_config_grid(&cfg);
    E->model = tl_model_new_inference(&cfg, err, errlen);
    if (!E->model) goto fail;
    if (tl_checkpoint_load(E->model, NULL, E->row.path, 0, NULL, err, errlen) != 0) goto fail;
    E->params = tl_model_num_params(E->model);
    E->labels = tld_models_parse_labels(E->row.labels_json, E->K);
    if (!E->labels) {
        snprintf(err, errlen, "out of memory for the labels");
        goto fail;
    }
    E->nlanes = E->M->threads < MAX_LANES ? E->M->threads : MAX_LANES;
    for (int i = 0; i < E->nlanes; i++) {
        E->lanes[i].E = E;
        E->lanes[i].index = i;
        if (tld_models_lane_alloc(&E->lanes[i], E->max_batch, err, errlen) != 0) goto fail;
    }
    for (int i = 0; i < E->nlanes; i++) {
        if (pthread_create(&E->lanes[i].thread, NULL, tld_models_batcher_main, &E->lanes[i]) != 0) {
            snprintf(err, errlen, "cannot start the batcher threads");
            goto fail;
        }
        E->thread_started = i + 1;
    }
    pthread_mutex_lock(&E->mu);
    E->state = ST_READY;
    E->error[0] = '\0';
    pthread_mutex_unlock(&E->mu);
    return 0;
fail:
    pthread_mutex_lock(&E->mu);
    E->state = ST_FAILED;
    snprintf(E->error, sizeof E->error, "%s", err);
    pthread_mutex_unlock(&E->mu);
    return -1;
}

void *tld_models_loader_main(void *arg) {
    tld_models *M = arg;
    for (;;) {
        entry *E = NULL;
        pthread_mutex_lock(&M->mu);
        for (int i = 0; i < M->n && !M->quit && !E; i++) {
            entry *c = M->list[i];
            pthread_mutex_lock(&c->mu);
            int loading = c->state == ST_LOADING && !c->thread_started && !c->model;
            pthread_mutex_unlock(&c->mu);
            if (loading) {
                E = c;
                E->refs++;
            }
        }
        pthread_mutex_unlock(&M->mu);
        if (!E) break;
        char err[TL_ERR_LEN];
        if (tld_models_entry_load(E, err, sizeof err) != 0) fprintf(stderr, "tokenlabd: model %s: %s\n", E->row.name, err);
        tld_models_entry_unref(E);
    }
    return NULL;
}

/* The crop_pct and class names of a job (its spec and dataset); defaults when they cannot be read. */
static char *job_labels(tld_models *M, const tld_job *job, int K, float *crop_pct) {
    tl_train_spec spec;
    tl_spec_error se;
    char err[TL_ERR_LEN];
    *crop_pct = 0.9f;
    tld_inspect_set_row set;
    if (tld_store_inspect_set_get(M->store, job->id, &set, err, sizeof err) == 0) {
        char *l = set.labels_json; /* already the job's class names */
        set.labels_json = NULL;
        if (tl_jobspec_parse(job->spec_json, M->data_root[0] ? M->data_root : NULL, &spec, &se) == 0)
            *crop_pct = spec.augment.crop_pct;
        return l;
    }
    cJSON *arr = cJSON_CreateArray();
    tl_dataset *ds = NULL;
    if (tl_jobspec_parse(job->spec_json, M->data_root[0] ? M->data_root : NULL, &spec, &se) == 0) {
        *crop_pct = spec.augment.crop_pct;
        ds = tl_dataset_open(spec.train_dir, err, sizeof err);
    }
    for (int c = 0; arr && c < K; c++) {
        char fb[32];
        snprintf(fb, sizeof fb, "class %d", c);
        const char *name = ds && c < tl_dataset_num_classes(ds) ? tl_dataset_class_name(ds, c) : fb;
        cJSON_AddItemToArray(arr, cJSON_CreateString(name));
    }
    tl_dataset_free(ds);
    char *out = arr ? cJSON_PrintUnformatted(arr) : NULL;
    cJSON_Delete(arr);
    return out;
}

int tld_job_checkpoint_file(const tld_job *job, const char *want, char *path, size_t plen, int64_t *step, int *has_ema,
                           tld_models_error *e) {
    const char *kinds[2] = {"best", "last"};
    int64_t steps[2] = {-1, -1};
    int emas[2] = {0, 0};
    char paths[2][1200];
    char err[TL_ERR_LEN];
    for (int i = 0; i < 2; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/%s.safetensors", job->run_dir, kinds[i]);
        if (!job->run_dir[0] || access(paths[i], R_OK) != 0) continue;
        tl_st_file *f = tl_st_open(paths[i], err, sizeof err);
        if (!f) continue;
        const char *m = tl_st_meta(f, "tokenlab.step");
        steps[i] = m ? atoll(m) : 0;
        for (int t = 0; t < tl_st_count(f) && !emas[i]; t++) emas[i] = strncmp(tl_st_at(f, t)->name, "ema.", 4) == 0;
        tl_st_close(f);
    }
    int pick = -1;
    if (strcmp(want, "best") == 0 || strcmp(want, "last") == 0) {
        pick = want[0] == 'b' ? 0 : 1;
        if (steps[pick] < 0)
            return tld_models_fail(e, 422, "CHECKPOINT_NOT_FOUND", "/checkpoint", "job %lld has no %s checkpoint%s",
                                   (long long)job->id, want,
                                   pick == 0 ? " (it has no evaluation yet: best comes from the validation set)" : " yet");
    } else {
        char *end;
        long long s = strtoll(want, &end, 10);
        if (*end || s < 0)
            return tld_models_fail(e, 422, "INVALID_FIELD", "/checkpoint", "must be \"best\", \"last\" or a step number");
        for (int i = 0; i < 2 && pick < 0; i++)
            if (steps[i] == s) pick = i;
        if (pick < 0)
            return tld_models_fail(e, 422, "CHECKPOINT_NOT_FOUND", "/checkpoint",
                                   "job %lld keeps no checkpoint of step %lld (best: %lld, last: %lld; -1 = none)",
                                   (long long)job->id, s, (long long)steps[0], (long long)steps[1]);
    }
    snprintf(path, plen, "%s", paths[pick]);
    *step = steps[pick];
    *has_ema = emas[pick];
    return 0;
}

/* Registers a fully written model file: store row, then a loaded entry in the list. */
int tld_models_install(tld_models *M, tld_model_row *row, int replace, int *created, tld_models_error *e) {
    char err[TL_ERR_LEN];
    entry *E = tld_models_entry_new(M, row);
    if (!E) return tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
    if (tld_models_entry_load(E, err, sizeof err) != 0) {
        tld_models_entry_free(E);
        return tld_models_fail(e, 422, "INVALID_MODEL", NULL, "the model cannot be loaded: %s", err);
    }
    int existed = 0;
    if (tld_store_model_put(M->store, row, replace, &existed, err, sizeof err) != 0) {
        tld_models_entry_free(E);
        if (strcmp(err, "exists") == 0)
            return tld_models_fail(e, 409, "MODEL_EXISTS", "/name", "a model named %s exists (DELETE it first)", row->name);
        return tld_models_fail(e, 500, "STORE_ERROR", NULL, "%s", err);
    }
    entry *old = NULL;
    if (tld_models_list_put(M, E, &old) != 0) {
        tld_models_entry_free(E);
        return tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
    }
    if (old) {
        pthread_mutex_lock(&old->mu);
        old->quit = 1; /* callers still queued on the old weights get 503 */
        pthread_cond_broadcast(&old->cv);
        pthread_mutex_unlock(&old->mu);
        tld_models_entry_unref(old);
    }
    if (created) *created = !existed;
    return 0;
}

static int name_taken(tld_models *M, const char *name) {
    entry *E = tld_models_find_ref(M, name);
    if (E) tld_models_entry_unref(E);
    return E != NULL;
}

static int register_held(tld_models *M, const tld_register_req *r, tld_models_error *e);

int tld_models_register_job(tld_models *M, const tld_register_req *r, tld_models_error *e) {
    if (!tld_models_valid_name(r->name))
        return tld_models_fail(e, 422, "INVALID_FIELD", "/name",
                               "must be 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    tld_models_name_lock(M, r->name); /* the check, the file and the row of this name change together */
    int rc = register_held(M, r, e);
    tld_models_name_unlock(M, r->name);
    return rc;
}

static int register_held(tld_models *M, const tld_register_req *r, tld_models_error *e) {
    char err[TL_ERR_LEN];
    int max_batch = r->max_batch, max_delay = r->max_delay_ms, max_queue = r->max_queue;
    if (tld_models_check_batching(&max_batch, &max_delay, &max_queue, e) != 0) return -1;
    if (name_taken(M, r->name))
        return tld_models_fail(e, 409, "MODEL_EXISTS", "/name", "a model named %s exists (DELETE it first)", r->name);
    tld_job job;
    if (tld_store_job_get(M->store, r->job_id, &job, err, sizeof err) != 0)
        return tld_models_fail(e, 404, "JOB_NOT_FOUND", "/job_id", "job %lld does not exist", (long long)r->job_id);
    char src[1200], dst[1200];
    int64_t step = 0;
    int has_ema = 0, rc = -1;
    tl_model *m = NULL;
    char *labels = NULL;
    if (tld_job_checkpoint_file(&job, r->checkpoint ? r->checkpoint : "best", src, sizeof src, &step, &has_ema, e) != 0)
        goto done;
    int ema = r->ema < 0 ? has_ema : r->ema;
    if (ema && !has_ema) {
        tld_models_fail(e, 422, "NO_EMA_WEIGHTS", "/ema", "the checkpoint holds no EMA weights (the job ran without EMA)");
        goto done;
    }
    tl_config cfg;
    if (tl_checkpoint_config(src, &cfg, err, sizeof err) != 0 || !(m = tl_model_new_inference(&cfg, err, sizeof err)) ||
        tl_checkpoint_load(m, NULL, src, ema ? TL_CKPT_FROM_EMA : 0, NULL, err, sizeof err) != 0) {
        tld_models_fail(e, 422, "INVALID_MODEL", "/checkpoint", "cannot read the checkpoint: %s", err);
        goto done;
    }
    float crop_pct;
    labels = job_labels(M, &job, cfg.num_classes, &crop_pct);
    if (!labels) {
        tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
        goto done;
    }
    snprintf(dst, sizeof dst, "%s/%s.safetensors", M->models_dir, r->name);
    char jobs[32], steps[32];
    snprintf(jobs, sizeof jobs, "%lld", (long long)job.id);
    snprintf(steps, sizeof steps, "%lld", (long long)step);
    const char *meta[] = {"tokenlab.classes", labels, "tokenlab.job", jobs, "tokenlab.step", steps, NULL};
    if (tl_checkpoint_save(m, NULL, dst, 0, NULL, meta, err, sizeof err) != 0) {
        tld_models_fail(e, 500, "IO_ERROR", NULL, "cannot write the model file: %s", err);
        goto done;
    }
    tld_model_row row = {0};
    snprintf(row.name, sizeof row.name, "%s", r->name);
    snprintf(row.source_kind, sizeof row.source_kind, "job");
    row.job_id = job.id;
    snprintf(row.checkpoint, sizeof row.checkpoint, "%s", r->checkpoint ? r->checkpoint : "best");
    row.step = step;
    row.ema = ema;
    if (snprintf(row.path, sizeof row.path, "%s", dst) >= (int)sizeof row.path) {
        tld_models_fail(e, 500, "IO_ERROR", NULL, "the state folder path is too long");
        goto done;
    }
    struct stat st;
    row.bytes = stat(dst, &st) == 0 ? (int64_t)st.st_size : 1;
    row.labels_json = labels;
    row.crop_pct = crop_pct;
    row.max_batch = max_batch;
    row.max_delay_ms = max_delay;
    row.max_queue = max_queue;
    row.created_ms = tl_clock_wall_ms();
    rc = tld_models_install(M, &row, 0, NULL, e);
    if (rc != 0) unlink(dst);
done:
    tl_model_free(m);
    free(labels);
    tld_job_free(&job);
    return rc;
}
