/*
 * registry.c: the registry of served models (see models.h and
 * serving_internal.h): the entries by name, their reference counts and
 * lookup, creating and freeing the registry and its entries, PATCH (labels,
 * batching) and DELETE, acquiring and releasing a model for a request.
 *
 * Owns: M->mu, which guards the list of entries and each entry's reference
 * count and registry membership; the model files under <state>/models/
 * (<name>.safetensors, written crash-safely by tl_checkpoint_save in load.c
 * and upload.c, removed here on DELETE).
 *
 * Lifetime: the registry holds one reference to each entry, every
 * tld_model_ref one more. Deleting or replacing a model drops it from the
 * list and stops its lanes (queued and later requests through a ref still
 * held answer 503 MODEL_UNLOADED); the last release frees the entry.
 *
 * Threads: any (HTTP handlers, the daemon's main thread, the loader).
 * Lock order: M->mu before E->mu; neither is held during inference, file I/O
 * or store calls.
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

int tld_models_fail(tld_models_error *e, int status, const char *code, const char *pointer, const char *fmt, ...) {
    if (!e) return -1;
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    snprintf(e->pointer, sizeof e->pointer, "%s", pointer ? pointer : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof e->detail, fmt, ap);
    va_end(ap);
    e->retry_after_s = 0;
    return -1;
}

static int ncores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* [A-Za-z0-9][A-Za-z0-9._-]{0,63}, as the store's CHECK. */
int tld_models_valid_name(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return 0;
    }
    return 1;
}

/* labels_json (an array of strings) into K labels; missing or non-string entries become "class i". */
char **tld_models_parse_labels(const char *json, int K) {
    char **l = calloc((size_t)K, sizeof *l);
    if (!l) return NULL;
    cJSON *a = json ? cJSON_Parse(json) : NULL;
    for (int c = 0; c < K; c++) {
        cJSON *it = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, c) : NULL;
        char fb[32];
        snprintf(fb, sizeof fb, "class %d", c);
        l[c] = strdup(cJSON_IsString(it) && it->valuestring[0] ? it->valuestring : fb);
        if (!l[c]) {
            for (int j = 0; j < c; j++) free(l[j]);
            free(l);
            cJSON_Delete(a);
            return NULL;
        }
    }
    cJSON_Delete(a);
    return l;
}

void tld_models_free_labels(char **l, int K) {
    for (int c = 0; l && c < K; c++) free(l[c]);
    free(l);
}

/* Checks a labels array: K non-empty strings of at most 200 bytes. */
int tld_models_check_labels(const char *json, int K, tld_models_error *e) {
    cJSON *a = cJSON_Parse(json);
    int rc = 0;
    if (!cJSON_IsArray(a))
        rc = tld_models_fail(e, 422, "INVALID_FIELD", "/labels", "must be an array of %d strings", K);
    else if (cJSON_GetArraySize(a) != K)
        rc = tld_models_fail(e, 422, "INVALID_FIELD", "/labels", "has %d entries; the model has %d classes",
                             cJSON_GetArraySize(a), K);
    for (int i = 0; rc == 0 && i < K; i++) {
        cJSON *it = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) > 200) {
            char p[64];
            snprintf(p, sizeof p, "/labels/%d", i);
            rc = tld_models_fail(e, 422, "INVALID_FIELD", p, "must be a non-empty string of at most 200 bytes");
        }
    }
    cJSON_Delete(a);
    return rc;
}

entry *tld_models_entry_new(tld_models *M, const tld_model_row *row) {
    entry *E = calloc(1, sizeof *E);
    if (!E) return NULL;
    E->M = M;
    E->row = *row;
    E->row.labels_json = strdup(row->labels_json ? row->labels_json : "[]");
    if (!E->row.labels_json) {
        free(E);
        return NULL;
    }
    pthread_mutex_init(&E->mu, NULL);
    tld_models_cond_init_mono(&E->cv);
    tld_models_cond_init_mono(&E->done_cv);
    E->state = ST_LOADING;
    E->max_batch = row->max_batch;
    E->max_delay_ms = row->max_delay_ms;
    E->max_queue = row->max_queue;
    E->refs = 1;
    return E;
}

/* Stops the batcher (failing what is queued) and frees the entry. No other reference may remain. */
void tld_models_entry_free(entry *E) {
    if (!E) return;
    if (TL_NEVER(E->refs > 1)) return; /* freed only at zero, or before it was ever shared */
    pthread_mutex_lock(&E->mu);
    E->quit = 1;
    pthread_cond_broadcast(&E->cv);
    pthread_mutex_unlock(&E->mu);
    for (int i = 0; i < E->thread_started; i++) pthread_join(E->lanes[i].thread, NULL);
    for (int i = 0; i < E->nlanes; i++) {
        lane *L = &E->lanes[i];
        tl_ctx_free(L->narrow);
        tl_ctx_free(L->wide);
        free(L->in);
        free(L->scores);
    }
    tl_model_free(E->model);
    tld_models_free_labels(E->labels, E->K);
    for (int i = 0; i < E->nretired; i++) tld_models_free_labels(E->retired[i], E->K);
    tld_model_row_free(&E->row);
    pthread_mutex_destroy(&E->mu);
    pthread_cond_destroy(&E->cv);
    pthread_cond_destroy(&E->done_cv);
    free(E);
}

void tld_models_entry_unref(entry *E) {
    tld_models *M = E->M;
    pthread_mutex_lock(&M->mu);
    if (!TL_ALWAYS(E->refs > 0)) { /* never below zero: a second release must not free it again */
        pthread_mutex_unlock(&M->mu);
        return;
    }
    int last = --E->refs == 0;
    pthread_mutex_unlock(&M->mu);
    if (last) tld_models_entry_free(E);
}

/* The entry named name with a new reference, or NULL. */
entry *tld_models_find_ref(tld_models *M, const char *name) {
    entry *E = NULL;
    pthread_mutex_lock(&M->mu);
    for (int i = 0; i < M->n; i++)
        if (strcmp(M->list[i]->row.name, name) == 0) {
            E = M->list[i];
            E->refs++;
            break;
        }
    pthread_mutex_unlock(&M->mu);
    return E;
}

/* Puts E in the list, replacing (and returning, still referenced by the list's old hold) one of the same name. */
int tld_models_list_put(tld_models *M, entry *E, entry **replaced) {
    *replaced = NULL;
    pthread_mutex_lock(&M->mu);
    for (int i = 0; i < M->n; i++)
        if (strcmp(M->list[i]->row.name, E->row.name) == 0) {
            *replaced = M->list[i];
            M->list[i] = E;
            pthread_mutex_unlock(&M->mu);
            return 0;
        }
    if (M->n == M->cap) {
        int ncap = M->cap ? M->cap * 2 : 8;
        entry **g = realloc(M->list, sizeof *g * (size_t)ncap);
        if (!g) {
            pthread_mutex_unlock(&M->mu);
            return -1;
        }
        M->list = g;
        M->cap = ncap;
    }
    M->list[M->n++] = E;
    pthread_mutex_unlock(&M->mu);
    return 0;
}

/* Removes the entry named name from the list; returns it (the list's reference passes to the caller). */
entry *tld_models_list_take(tld_models *M, const char *name) {
    entry *E = NULL;
    pthread_mutex_lock(&M->mu);
    for (int i = 0; i < M->n; i++)
        if (strcmp(M->list[i]->row.name, name) == 0) {
            E = M->list[i];
            memmove(&M->list[i], &M->list[i + 1], sizeof *M->list * (size_t)(M->n - i - 1));
            M->n--;
            break;
        }
    pthread_mutex_unlock(&M->mu);
    return E;
}

/* References to every entry, newest first (release each). */
int tld_models_snapshot(tld_models *M, entry ***out) {
    pthread_mutex_lock(&M->mu);
    int n = M->n;
    entry **v = calloc((size_t)n + 1, sizeof *v);
    for (int i = 0; v && i < n; i++) {
        v[i] = M->list[i];
        v[i]->refs++;
    }
    pthread_mutex_unlock(&M->mu);
    if (!v) return -1;
    for (int i = 1; i < n; i++) /* insertion sort by created_ms, newest first */
        for (int j = i; j > 0 && v[j]->row.created_ms > v[j - 1]->row.created_ms; j--) {
            entry *t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    *out = v;
    return n;
}

tld_models *tld_models_new(const tld_models_cfg *cfg, char *err, size_t errlen) {
    tld_models *M = calloc(1, sizeof *M);
    tld_model_row *rows = NULL;
    int n = 0;
    if (!M) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&M->mu, NULL);
    pthread_cond_init(&M->name_cv, NULL);
    M->store = cfg->store;
    M->threads = cfg->threads > 0 ? cfg->threads : ncores();
    M->state_dir = strdup(cfg->state_dir);
    M->data_root = strdup(cfg->data_root ? cfg->data_root : "");
    size_t dl = strlen(cfg->state_dir) + 16;
    M->models_dir = malloc(dl);
    if (!M->state_dir || !M->data_root || !M->models_dir) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    snprintf(M->models_dir, dl, "%s/models", cfg->state_dir);
    if (mkdir(M->models_dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", M->models_dir, strerror(errno));
        goto fail;
    }
    tl_file_remove_temps(M->models_dir); /* what a crash left mid-upload or mid-write; nothing writes here yet */
    if (tld_store_model_list(M->store, &rows, &n, err, errlen) != 0) goto fail;
    for (int i = 0; i < n; i++) {
        entry *E = tld_models_entry_new(M, &rows[i]), *old = NULL;
        if (!E || tld_models_list_put(M, E, &old) != 0) {
            tld_models_entry_free(E);
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    if (n > 0) {
        if (pthread_create(&M->loader, NULL, tld_models_loader_main, M) != 0) {
            snprintf(err, errlen, "cannot start the model loader thread");
            goto fail;
        }
        M->loader_started = 1;
    }
    for (int i = 0; i < n; i++) tld_model_row_free(&rows[i]);
    free(rows);
    return M;
fail:
    for (int i = 0; i < n; i++) tld_model_row_free(&rows[i]);
    free(rows);
    tld_models_free(M);
    return NULL;
}

void tld_models_free(tld_models *M) {
    if (!M) return;
    pthread_mutex_lock(&M->mu);
    M->quit = 1;
    pthread_mutex_unlock(&M->mu);
    if (M->loader_started) pthread_join(M->loader, NULL);
    for (;;) {
        pthread_mutex_lock(&M->mu);
        entry *E = M->n > 0 ? M->list[--M->n] : NULL;
        pthread_mutex_unlock(&M->mu);
        if (!E) break;
        /* stop serving now: queued callers get 503 even while they still hold references */
        pthread_mutex_lock(&E->mu);
        E->quit = 1;
        pthread_cond_broadcast(&E->cv);
        pthread_mutex_unlock(&E->mu);
        tld_models_entry_unref(E);
    }
    free(M->list);
    free(M->state_dir);
    free(M->models_dir);
    free(M->data_root);
    pthread_mutex_destroy(&M->mu);
    pthread_cond_destroy(&M->name_cv);
    free(M);
}

int tld_models_all_loaded(tld_models *M) {
    int all = 1;
    pthread_mutex_lock(&M->mu);
    for (int i = 0; i < M->n && all; i++) {
        pthread_mutex_lock(&M->list[i]->mu);
        all = M->list[i]->state != ST_LOADING;
        pthread_mutex_unlock(&M->list[i]->mu);
    }
    pthread_mutex_unlock(&M->mu);
    return all;
}

int tld_models_check_batching(int *max_batch, int *max_delay_ms, int *max_queue, tld_models_error *e) {
    if (*max_batch == 0) *max_batch = TLD_MODELS_DEFAULT_MAX_BATCH;
    if (*max_delay_ms < 0) *max_delay_ms = TLD_MODELS_DEFAULT_MAX_DELAY_MS;
    if (*max_queue == 0) *max_queue = TLD_MODELS_DEFAULT_MAX_QUEUE;
    if (*max_batch < 1 || *max_batch > TLD_MODELS_BATCH_MAX)
        return tld_models_fail(e, 422, "INVALID_FIELD", "/max_batch", "must be an integer from 1 to 64");
    if (*max_delay_ms > 1000)
        return tld_models_fail(e, 422, "INVALID_FIELD", "/max_delay_ms", "must be an integer from 0 to 1000");
    if (*max_queue < 1 || *max_queue > 4096)
        return tld_models_fail(e, 422, "INVALID_FIELD", "/max_queue", "must be an integer from 1 to 4096");
    return 0;
}

int tld_models_update(tld_models *M, const char *name, const char *labels_json, int max_batch, int max_delay_ms,
                     int max_queue, tld_models_error *e) {
    entry *E = tld_models_find_ref(M, name);
    if (!E) return tld_models_fail(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
    int rc = -1;
    char err[TL_ERR_LEN];
    pthread_mutex_lock(&E->mu);
    int K = E->K, ready = E->labels != NULL;
    int mb = max_batch < 0 ? E->max_batch : max_batch, md = max_delay_ms < 0 ? E->max_delay_ms : max_delay_ms,
        mq = max_queue < 0 ? E->max_queue : max_queue;
    pthread_mutex_unlock(&E->mu);
    char **labels = NULL;
    if (labels_json) {
        if (!ready) {
            tld_models_fail(e, 409, "MODEL_NOT_READY", "/labels", "model %s is not loaded; its classes are unknown", name);
            goto done;
        }
        if (tld_models_check_labels(labels_json, K, e) != 0) goto done;
        labels = tld_models_parse_labels(labels_json, K);
        if (!labels) {
            tld_models_fail(e, 500, "INTERNAL", NULL, "out of memory");
            goto done;
        }
    }
    if (mb == 0 || mq == 0 || tld_models_check_batching(&mb, &md, &mq, e) != 0) {
        if (mb == 0) tld_models_fail(e, 422, "INVALID_FIELD", "/max_batch", "must be an integer from 1 to 64");
        if (mq == 0) tld_models_fail(e, 422, "INVALID_FIELD", "/max_queue", "must be an integer from 1 to 4096");
        goto done;
    }
    if (tld_store_model_update(M->store, name, labels_json, mb, md, mq, err, sizeof err) != 0) {
        if (strcmp(err, "not found") == 0)
            tld_models_fail(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
        else
            tld_models_fail(e, 500, "STORE_ERROR", NULL, "%s", err);
        goto done;
    }
    pthread_mutex_lock(&E->mu);
    if (labels && E->nretired == (int)(sizeof E->retired / sizeof E->retired[0])) {
        pthread_mutex_unlock(&E->mu);
        tld_models_fail(e, 409, "TOO_MANY_CHANGES", "/labels", "the labels of %s changed too often; re-register the model", name);
        goto done;
    }
    if (labels) {
        /* a reply being written may still read the old strings: keep them until the entry goes */
        E->retired[E->nretired++] = E->labels;
        E->labels = labels;
        labels = NULL;
        char *lj = strdup(labels_json);
        if (lj) {
            free(E->row.labels_json);
            E->row.labels_json = lj;
        }
    }
    E->max_batch = mb;
    E->max_delay_ms = md;
    E->max_queue = mq;
    E->row.max_batch = mb;
    E->row.max_delay_ms = md;
    E->row.max_queue = mq;
    pthread_cond_broadcast(&E->cv);
    pthread_mutex_unlock(&E->mu);
    rc = 0;
done:
    tld_models_free_labels(labels, K);
    tld_models_entry_unref(E);
    return rc;
}

static int name_held(const tld_models *M, const char *name) {
    for (int i = 0; i < M->nbusy; i++)
        if (strcmp(M->busy[i], name) == 0) return 1;
    return 0;
}

void tld_models_name_lock(tld_models *M, const char *name) {
    pthread_mutex_lock(&M->mu);
    while (name_held(M, name) || M->nbusy == MODELS_BUSY_MAX) pthread_cond_wait(&M->name_cv, &M->mu);
    snprintf(M->busy[M->nbusy++], sizeof M->busy[0], "%s", name);
    pthread_mutex_unlock(&M->mu);
}

void tld_models_name_unlock(tld_models *M, const char *name) {
    pthread_mutex_lock(&M->mu);
    for (int i = 0; i < M->nbusy; i++)
        if (strcmp(M->busy[i], name) == 0) {
            memmove(M->busy[i], M->busy[M->nbusy - 1], sizeof M->busy[0]);
            M->nbusy--;
            break;
        }
    pthread_cond_broadcast(&M->name_cv);
    pthread_mutex_unlock(&M->mu);
}

/* tld_models_delete with the name held. */
static int delete_held(tld_models *M, const char *name, tld_models_error *e);

int tld_models_delete(tld_models *M, const char *name, tld_models_error *e) {
    if (!tld_models_valid_name(name)) return tld_models_fail(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
    tld_models_name_lock(M, name);
    int rc = delete_held(M, name, e);
    tld_models_name_unlock(M, name);
    return rc;
}

static int delete_held(tld_models *M, const char *name, tld_models_error *e) {
    char err[TL_ERR_LEN];
    entry *E = tld_models_find_ref(M, name);
    if (!E) return tld_models_fail(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
    char path[1024];
    snprintf(path, sizeof path, "%s", E->row.path);
    tld_models_entry_unref(E);
    if (tld_store_model_delete(M->store, name, err, sizeof err) != 0) {
        if (strcmp(err, "not found") == 0) return tld_models_fail(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
        return tld_models_fail(e, 500, "STORE_ERROR", NULL, "%s", err);
    }
    E = tld_models_list_take(M, name);
    if (E) {
        pthread_mutex_lock(&E->mu);
        E->quit = 1;
        pthread_cond_broadcast(&E->cv);
        pthread_mutex_unlock(&E->mu);
        tld_models_entry_unref(E);
    }
    unlink(path);
    return 0;
}

tld_model_ref *tld_models_acquire(tld_models *M, const char *name, tld_models_error *e) {
    entry *E = tld_models_find_ref(M, name);
    if (!E) {
        tld_models_fail(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
        return NULL;
    }
    tld_model_ref *r = calloc(1, sizeof *r);
    pthread_mutex_lock(&E->mu);
    int st = E->state;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", E->error);
    if (st == ST_READY && r) E->preparing++;
    pthread_mutex_unlock(&E->mu);
    if (!r) {
        tld_models_entry_unref(E);
        tld_models_fail(e, 503, "OUT_OF_MEMORY", NULL, "out of memory");
        return NULL;
    }
    if (st != ST_READY) {
        tld_models_entry_unref(E);
        free(r);
        if (st == ST_LOADING)
            tld_models_fail(e, 409, "MODEL_NOT_READY", NULL, "model %s is still loading", name);
        else
            tld_models_fail(e, 409, "MODEL_NOT_READY", NULL, "model %s failed to load: %s", name, msg);
        return NULL;
    }
    r->E = E;
    r->preparing = 1;
    return r;
}

void tld_models_release(tld_model_ref *r) {
    if (!r) return;
    pthread_mutex_lock(&r->E->mu);
    tld_models_stop_preparing(r);
    pthread_mutex_unlock(&r->E->mu);
    tld_models_entry_unref(r->E);
    free(r);
}

const char *tld_model_ref_name(const tld_model_ref *r) { return r->E->row.name; }
int tld_model_ref_size(const tld_model_ref *r) { return r->E->S; }
float tld_model_ref_crop_pct(const tld_model_ref *r) { return (float)r->E->row.crop_pct; }
int tld_model_ref_classes(const tld_model_ref *r) { return r->E->K; }
int tld_model_ref_grid(const tld_model_ref *r) { return r->E->grid; }

const char *tld_model_ref_label(const tld_model_ref *r, int c) {
    entry *E = r->E;
    pthread_mutex_lock(&E->mu);
    const char *l = c >= 0 && c < E->K && E->labels ? E->labels[c] : "";
    pthread_mutex_unlock(&E->mu);
    return l;
}
