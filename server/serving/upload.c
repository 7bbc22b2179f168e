/*
 * upload.c: PUT /api/v1/models/{name}: validating an uploaded safetensors
 * file strictly (a well-formed file, a config from its metadata or from
 * LV-ViT shapes, every tensor loaded into a model of that config) and
 * installing it as the model's own file, rewritten by the engine.
 *
 * Owns the upload's temporary file (<state>/models/.upload.tmp.XXXXXX, made by
 * tl_file_create_temp: a unique name, created exclusively; removed before
 * returning, and by the start-up sweep after a crash); messages name it "the
 * upload". Threads: the
 * HTTP handler's, any number at once (each with its own temporary file).
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
#include "tokenlab/files.h"
#include "tokenlab/safetensors.h"

/* The upload's bytes into a new temporary file in dir; its name into tmp (tmp[0] stays 0 when none was
 * made). 0, or -1 with a message. */
static int write_upload(const char *dir, const void *data, size_t len, char *tmp, size_t tmplen, char *err,
                        size_t errlen) {
    char base[1100];
    tmp[0] = '\0';
    snprintf(base, sizeof base, "%s/.upload", dir);
    FILE *f = tl_file_create_temp(base, tmp, tmplen);
    if (!f) {
        snprintf(err, errlen, "cannot create a temporary file in %.300s: %s", dir, strerror(errno));
        tmp[0] = '\0';
        return -1;
    }
    size_t w = fwrite(data, 1, len, f);
    int bad = w != len || fflush(f) != 0;
    if (fclose(f) != 0) bad = 1;
    if (bad) snprintf(err, errlen, "cannot write %.300s: %s", tmp, strerror(errno));
    return bad ? -1 : 0;
}

/* Messages about the temporary file name the upload instead. */
static const char *untmp(char *err, const char *tmp) {
    size_t tl = strlen(tmp);
    char *p;
    while ((p = strstr(err, tmp)) != NULL) {
        const char *rep = "the upload";
        size_t rl = strlen(rep);
        memmove(p + rl, p + tl, strlen(p + tl) + 1);
        memcpy(p, rep, rl);
    }
    return err;
}

static int upload_held(tld_models *M, const char *name, const void *data, size_t len, int max_batch, int max_delay_ms,
                       int max_queue, int *created, tld_models_error *e);

int tld_models_upload(tld_models *M, const char *name, const void *data, size_t len, int max_batch, int max_delay_ms,
                     int max_queue, int *created, tld_models_error *e) {
    if (!tld_models_valid_name(name))
        return tld_models_fail(e, 422, "INVALID_FIELD", "/name",
                               "must be 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    tld_models_name_lock(M, name); /* the file and the row of this name change together */
    int rc = upload_held(M, name, data, len, max_batch, max_delay_ms, max_queue, created, e);
    tld_models_name_unlock(M, name);
    return rc;
}

static int upload_held(tld_models *M, const char *name, const void *data, size_t len, int max_batch, int max_delay_ms,
                       int max_queue, int *created, tld_models_error *e) {
    char err[TL_ERR_LEN], tmp[1200] = "", dst[1200];
    int rc = -1;
    tl_model *m = NULL;
    tl_st_file *f = NULL;
    char *labels = NULL;
    if (!tld_models_valid_name(name))
        return tld_models_fail(e, 422, "INVALID_FIELD", "/name",
                               "must be 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    entry *prev = tld_models_find_ref(M, name); /* a replaced model keeps the batching settings not given again */
    if (prev) {
        pthread_mutex_lock(&prev->mu);
        if (max_batch == 0) max_batch = prev->max_batch;
        if (max_delay_ms < 0) max_delay_ms = prev->max_delay_ms;
        if (max_queue == 0) max_queue = prev->max_queue;
        pthread_mutex_unlock(&prev->mu);
        tld_models_entry_unref(prev);
    }
    if (tld_models_check_batching(&max_batch, &max_delay_ms, &max_queue, e) != 0) return -1;
    if (len == 0) return tld_models_fail(e, 400, "EMPTY_BODY", NULL, "the body is empty; send a safetensors file");
    if (write_upload(M->models_dir, data, len, tmp, sizeof tmp, err, sizeof err) != 0) {
        tld_models_fail(e, 500, "IO_ERROR", NULL, "%s", err);
        goto done;
    }
    /* strict validation: a well-formed safetensors file, a config (metadata or LV-ViT shapes), every tensor */
    f = tl_st_open(tmp, err, sizeof err);
    if (!f) {
        tld_models_fail(e, 422, "INVALID_MODEL", NULL, "not a valid safetensors file: %s", untmp(err, tmp));
        goto done;
    }
    tl_config cfg;
    if (tl_checkpoint_config(tmp, &cfg, err, sizeof err) != 0) {
        tld_models_fail(e, 422, "INVALID_MODEL", NULL, "%s", untmp(err, tmp));
        goto done;
    }
    m = tl_model_new_inference(&cfg, err, sizeof err);
    if (!m) {
        tld_models_fail(e, 422, "INVALID_MODEL", NULL, "%s", err);
        goto done;
    }
    if (tl_checkpoint_load(m, NULL, tmp, 0, NULL, err, sizeof err) != 0) {
        tld_models_fail(e, 422, "INVALID_MODEL", NULL, "the file does not hold an LV-ViT with this config: %s",
                        untmp(err, tmp));
        goto done;
    }
    const char *cl = tl_st_meta(f, "tokenlab.classes");
    tld_models_error le;
    if (cl && tld_models_check_labels(cl, cfg.num_classes, &le) == 0) {
        labels = strdup(cl);
    } else {
        cJSON *arr = cJSON_CreateArray();
        for (int c = 0; arr && c < cfg.num_classes; c++) {
            char fb[32];
            snprintf(fb, sizeof fb, "class %d", c);
            cJSON_AddItemToArray(arr, cJSON_CreateString(fb));
        }
        labels = arr ? cJSON_PrintUnformatted(arr) : NULL;
        cJSON_Delete(arr);
    }
    if (!labels) {
        tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
        goto done;
    }
    /* the model's file: rewritten by the engine (packed, the config in its metadata, crash-safe) */
    snprintf(dst, sizeof dst, "%s/%s.safetensors", M->models_dir, name);
    const char *meta[] = {"tokenlab.classes", labels, NULL};
    if (tl_checkpoint_save(m, NULL, dst, 0, NULL, meta, err, sizeof err) != 0) {
        tld_models_fail(e, 500, "IO_ERROR", NULL, "cannot write the model file: %s", err);
        goto done;
    }
    tld_model_row row = {0};
    snprintf(row.name, sizeof row.name, "%s", name);
    snprintf(row.source_kind, sizeof row.source_kind, "upload");
    if (snprintf(row.path, sizeof row.path, "%s", dst) >= (int)sizeof row.path) {
        tld_models_fail(e, 500, "IO_ERROR", NULL, "the state folder path is too long");
        goto done;
    }
    struct stat st;
    row.bytes = stat(dst, &st) == 0 ? (int64_t)st.st_size : 1;
    row.labels_json = labels;
    row.crop_pct = 0.9;
    row.max_batch = max_batch;
    row.max_delay_ms = max_delay_ms;
    row.max_queue = max_queue;
    row.created_ms = tl_clock_wall_ms();
    rc = tld_models_install(M, &row, 1, created, e);
done:
    if (tmp[0]) unlink(tmp);
    tl_st_close(f);
    tl_model_free(m);
    free(labels);
    return rc;
}
