/*
 * models.c: the registry of served models and their batchers (see models.h).
 *
 * Owns: the registry (M->mu guards the list of entries and each entry's
 * reference count and registry membership), the model files under
 * <state>/models/ (<name>.safetensors, written crash-safely by
 * tl_checkpoint_save), and per loaded model: its weights (read-only while
 * serving) and its batcher lanes (a thread each, with its own contexts sized
 * for max_batch and its own batch buffers, touched by that thread alone after
 * loading). E->mu guards an entry's queue, settings, state, statistics and
 * the lanes' busy flags. A background loader thread loads the models found in the store at
 * start-up, one at a time (state LOADING until then).
 *
 * Lifetime: the registry holds one reference to each entry, every
 * tld_model_ref one more. Deleting or replacing a model drops it from the
 * list; its lanes keep serving the queue of the callers that still hold
 * it and the last release stops the threads and frees everything.
 *
 * Lock order: M->mu before E->mu; neither is held during inference, file
 * I/O or store calls.
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

#include "tokenlab/inspect.h"
#include "tokenlab/jobspec.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/model.h"

enum { ST_LOADING = 0, ST_READY = 1, ST_FAILED = 2 };
static const char *const state_names[] = {"LOADING", "READY", "FAILED"};

enum { IT_PENDING = 0, IT_DONE = 1, IT_EXPIRED = 2, IT_UNLOADED = 3 };

typedef struct item {
    const float *image;      /* (3,S,S), the caller's */
    tld_infer_out *out;
    int64_t enq_ms, deadline_ms;
    int status;              /* IT_*, under E->mu */
    struct item *next;
} item;

#define MAX_LANES 16

/* A batcher lane: a thread with its own single-threaded context (narrow), and for lane 0 also a
 * context using every compute thread (wide). The batcher's buffers are the lane's. */
typedef struct {
    struct entry *E;
    int index;
    pthread_t thread;
    int busy;                /* running a batch (under E->mu) */
    tl_ctx *narrow, *wide;
    int batch;               /* the contexts' batch size */
    float *in;               /* (batch,3,S,S) */
    float *scores;           /* (batch,K) */
} lane;

typedef struct entry {
    tld_models *M;
    tld_model_row row;        /* as stored (labels_json owned) */
    char **labels;           /* (K) */
    int K, S, grid;
    tl_config cfg;
    int have_cfg;
    size_t params;

    pthread_mutex_t mu;
    pthread_cond_t cv;       /* queue changed, settings changed, quit */
    pthread_cond_t done_cv;  /* a batch finished */
    int state;               /* ST_* */
    char error[512];
    item *head, *tail;
    int queued;              /* images queued */
    int preparing;           /* callers between acquire and infer */
    int quit;
    int max_batch, max_delay_ms, max_queue;
    uint64_t requests, images, batches, rejected, expired;
    double batch_ms_avg;     /* moving average of a batch's forward time */

    /* the batchers: one lane per compute thread (see batcher_main) */
    tl_model *model;         /* read-only while serving: the lanes' contexts share it */
    lane lanes[MAX_LANES];
    int nlanes;
    int thread_started;      /* lanes started */

    char **retired[16];      /* label arrays replaced by PATCH: replies may still read them; freed with the entry */
    int nretired;

    int refs;                /* under M->mu */
} entry;

/* One caller's hold on an entry. */
struct tld_model_ref {
    entry *E;
    int preparing;           /* still counted in E->preparing */
};

struct tld_models {
    char *state_dir, *models_dir, *data_root;
    tld_store *store;
    int threads;
    pthread_mutex_t mu;
    entry **list;
    int n, cap;
    pthread_t loader;
    int loader_started;
    int quit;                /* under mu */
};

/* ------------------------------------------------------------------ helpers */

int64_t tld_models_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static double mono_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int seterr(tld_models_error *e, int status, const char *code, const char *pointer, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int seterr(tld_models_error *e, int status, const char *code, const char *pointer, const char *fmt, ...) {
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
static int valid_name(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return 0;
    }
    return 1;
}

static void timespec_at(struct timespec *ts, int64_t mono_ms) {
    ts->tv_sec = (time_t)(mono_ms / 1000);
    ts->tv_nsec = (long)(mono_ms % 1000) * 1000000L;
}

/* A condition variable on CLOCK_MONOTONIC, so deadlines do not move with the wall clock. */
static void cond_init_mono(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* labels_json (an array of strings) into K labels; missing or non-string entries become "class i". */
static char **parse_labels(const char *json, int K) {
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

static void free_labels(char **l, int K) {
    for (int c = 0; l && c < K; c++) free(l[c]);
    free(l);
}

/* Checks a labels array: K non-empty strings of at most 200 bytes. */
static int check_labels(const char *json, int K, tld_models_error *e) {
    cJSON *a = cJSON_Parse(json);
    int rc = 0;
    if (!cJSON_IsArray(a))
        rc = seterr(e, 422, "INVALID_FIELD", "/labels", "must be an array of %d strings", K);
    else if (cJSON_GetArraySize(a) != K)
        rc = seterr(e, 422, "INVALID_FIELD", "/labels", "has %d entries; the model has %d classes",
                    cJSON_GetArraySize(a), K);
    for (int i = 0; rc == 0 && i < K; i++) {
        cJSON *it = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) > 200) {
            char p[64];
            snprintf(p, sizeof p, "/labels/%d", i);
            rc = seterr(e, 422, "INVALID_FIELD", p, "must be a non-empty string of at most 200 bytes");
        }
    }
    cJSON_Delete(a);
    return rc;
}

/* ------------------------------------------------------------------ entries */

static entry *entry_new(tld_models *M, const tld_model_row *row) {
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
    cond_init_mono(&E->cv);
    cond_init_mono(&E->done_cv);
    E->state = ST_LOADING;
    E->max_batch = row->max_batch;
    E->max_delay_ms = row->max_delay_ms;
    E->max_queue = row->max_queue;
    E->refs = 1;
    return E;
}

/* Stops the batcher (failing what is queued) and frees the entry. No other reference may remain. */
static void entry_free(entry *E) {
    if (!E) return;
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
    free_labels(E->labels, E->K);
    for (int i = 0; i < E->nretired; i++) free_labels(E->retired[i], E->K);
    tld_model_row_free(&E->row);
    pthread_mutex_destroy(&E->mu);
    pthread_cond_destroy(&E->cv);
    pthread_cond_destroy(&E->done_cv);
    free(E);
}

static void entry_unref(entry *E) {
    tld_models *M = E->M;
    pthread_mutex_lock(&M->mu);
    int last = --E->refs == 0;
    pthread_mutex_unlock(&M->mu);
    if (last) entry_free(E);
}

/* The entry named name with a new reference, or NULL. */
static entry *find_ref(tld_models *M, const char *name) {
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
static int list_put(tld_models *M, entry *E, entry **replaced) {
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
static entry *list_take(tld_models *M, const char *name) {
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

/* ------------------------------------------------------------------ the batcher */

/* Per-token top class and its probability from the aux logits of one image. */
static void softmax_into(const float *s, int K, float *out) {
    float mx = s[0];
    for (int k = 1; k < K; k++) mx = s[k] > mx ? s[k] : mx;
    double se = 0.0;
    for (int k = 0; k < K; k++) se += exp((double)(s[k] - mx));
    for (int k = 0; k < K; k++) out[k] = (float)(exp((double)(s[k] - mx)) / se);
}

/* (Re)allocates a lane's contexts and buffers for batch B (its own thread, E->mu not held). */
static int ensure_ctx(lane *L, int B, char *err, size_t errlen) {
    entry *E = L->E;
    if (L->narrow && L->batch == B) return 0;
    tl_ctx_free(L->narrow);
    tl_ctx_free(L->wide);
    free(L->in);
    free(L->scores);
    L->wide = NULL;
    L->narrow = tl_ctx_new(E->model, B, 0, 1, err, errlen);
    if (L->index == 0 && E->M->threads > 1) L->wide = tl_ctx_new(E->model, B, 0, E->M->threads, err, errlen);
    tl_ctx_freeze_weights(L->narrow); /* a served model's weights never change: pack its stem once */
    tl_ctx_freeze_weights(L->wide);
    L->in = malloc(sizeof(float) * (size_t)B * 3 * (size_t)E->S * (size_t)E->S);
    L->scores = malloc(sizeof(float) * (size_t)B * (size_t)E->K);
    if (!L->narrow || (L->index == 0 && E->M->threads > 1 && !L->wide) || !L->in || !L->scores) {
        if (L->narrow) snprintf(err, errlen, "out of memory for a batch of %d", B);
        L->batch = 0;
        return -1;
    }
    L->batch = B;
    return 0;
}

static int others_busy(const entry *E, const lane *L) {
    for (int i = 0; i < E->nlanes; i++)
        if (&E->lanes[i] != L && E->lanes[i].busy) return 1;
    return 0;
}

/* A lane's thread. Lane 0 takes work whenever it is free; the other lanes only while lane 0 is busy,
 * so a lone request runs on lane 0's wide context (every compute thread: the lowest latency), and
 * concurrent requests run as parallel batches, one per lane, each on one thread: images in parallel
 * need no synchronisation inside a forward pass and measured about 1.2x the throughput of one
 * batch split across the threads. */
static void *batcher_main(void *arg) {
    lane *L = arg;
    entry *E = L->E;
    item *batch[64];
    size_t img = (size_t)3 * (size_t)E->S * (size_t)E->S;
    int N = E->grid * E->grid;
    pthread_mutex_lock(&E->mu);
    for (;;) {
        while (!E->quit && !(E->head && (L->index == 0 || E->lanes[0].busy))) pthread_cond_wait(&E->cv, &E->mu);
        if (E->quit) break;
        /* Wait for the batch to fill, but only while more requests are on their way. */
        int64_t until = E->head->enq_ms + E->max_delay_ms;
        while (!E->quit && E->head && E->queued < E->max_batch && E->preparing > 0 && tld_models_now_ms() < until) {
            struct timespec ts;
            timespec_at(&ts, until);
            pthread_cond_timedwait(&E->cv, &E->mu, &ts);
        }
        if (E->quit) break;
        if (!E->head) continue; /* another lane took it */
        int B = 0, maxb = E->max_batch;
        int64_t now = tld_models_now_ms();
        while (E->head && B < maxb) {
            item *it = E->head;
            E->head = it->next;
            if (!E->head) E->tail = NULL;
            E->queued--;
            if (it->deadline_ms <= now) {
                it->status = IT_EXPIRED;
                E->expired++;
                continue;
            }
            batch[B++] = it;
        }
        if (B == 0) {
            pthread_cond_broadcast(&E->done_cv);
            continue;
        }
        /* alone with nothing else queued: all the threads on this batch */
        int wide = L->index == 0 && !E->head && !others_busy(E, L);
        L->busy = 1;
        pthread_cond_broadcast(&E->cv); /* lane 0 busy: the other lanes may take what follows */
        pthread_mutex_unlock(&E->mu);

        char err[TL_ERR_LEN] = "";
        int ok = ensure_ctx(L, maxb, err, sizeof err) == 0; /* reallocates only when max_batch changed */
        tl_ctx *ctx = ok ? (wide && L->wide ? L->wide : L->narrow) : NULL;
        double t0 = mono_s();
        if (ok) {
            for (int i = 0; i < B; i++) memcpy(L->in + (size_t)i * img, batch[i]->image, img * sizeof(float));
            ok = tl_predict(ctx, L->in, B, L->scores) == 0;
        }
        double ms = (mono_s() - t0) * 1000.0;
        const float *aux = ok ? tl_logits_aux(ctx) : NULL;
        for (int i = 0; i < B && ok; i++) {
            tld_infer_out *o = batch[i]->out;
            softmax_into(L->scores + (size_t)i * E->K, E->K, o->probs);
            if (o->logits) memcpy(o->logits, L->scores + (size_t)i * E->K, sizeof(float) * (size_t)E->K);
            if (o->tok_index) tl_token_top1(aux + (size_t)i * N * E->K, N, E->K, o->tok_index, o->tok_prob);
            o->infer_ms = ms;
            o->batch = B;
            o->queue_ms = (double)(now - batch[i]->enq_ms);
        }

        pthread_mutex_lock(&E->mu);
        L->busy = 0;
        for (int i = 0; i < B; i++) batch[i]->status = ok ? IT_DONE : IT_UNLOADED;
        if (!ok) {
            E->state = ST_FAILED;
            snprintf(E->error, sizeof E->error, "inference failed: %.400s", err[0] ? err : "forward pass");
        }
        E->batches++;
        E->batch_ms_avg = E->batches == 1 ? ms : 0.8 * E->batch_ms_avg + 0.2 * ms;
        pthread_cond_broadcast(&E->done_cv);
        pthread_cond_broadcast(&E->cv); /* lane 0 free again, or work left for another lane */
    }
    /* quitting: fail whatever is still queued */
    for (item *it = E->head; it; it = it->next) it->status = IT_UNLOADED;
    E->head = E->tail = NULL;
    E->queued = 0;
    pthread_cond_broadcast(&E->done_cv);
    pthread_mutex_unlock(&E->mu);
    return NULL;
}

/* ------------------------------------------------------------------ loading */

/* Loads the entry's file, makes its context and starts its batcher; sets READY or FAILED. */
static int entry_load(entry *E, char *err, size_t errlen) {
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
    E->labels = parse_labels(E->row.labels_json, E->K);
    if (!E->labels) {
        snprintf(err, errlen, "out of memory for the labels");
        goto fail;
    }
    E->nlanes = E->M->threads < MAX_LANES ? E->M->threads : MAX_LANES;
    for (int i = 0; i < E->nlanes; i++) {
        E->lanes[i].E = E;
        E->lanes[i].index = i;
        if (ensure_ctx(&E->lanes[i], E->max_batch, err, errlen) != 0) goto fail;
    }
    for (int i = 0; i < E->nlanes; i++) {
        if (pthread_create(&E->lanes[i].thread, NULL, batcher_main, &E->lanes[i]) != 0) {
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

static void *loader_main(void *arg) {
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
        if (entry_load(E, err, sizeof err) != 0) fprintf(stderr, "tokenlabd: model %s: %s\n", E->row.name, err);
        entry_unref(E);
    }
    return NULL;
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
    if (tld_store_model_list(M->store, &rows, &n, err, errlen) != 0) goto fail;
    for (int i = 0; i < n; i++) {
        entry *E = entry_new(M, &rows[i]), *old = NULL;
        if (!E || list_put(M, E, &old) != 0) {
            entry_free(E);
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    if (n > 0) {
        if (pthread_create(&M->loader, NULL, loader_main, M) != 0) {
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
        entry_unref(E);
    }
    free(M->list);
    free(M->state_dir);
    free(M->models_dir);
    free(M->data_root);
    pthread_mutex_destroy(&M->mu);
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

/* ------------------------------------------------------------------ registration */

static int check_batching(int *max_batch, int *max_delay_ms, int *max_queue, tld_models_error *e) {
    if (*max_batch == 0) *max_batch = TLD_MODELS_DEFAULT_MAX_BATCH;
    if (*max_delay_ms < 0) *max_delay_ms = TLD_MODELS_DEFAULT_MAX_DELAY_MS;
    if (*max_queue == 0) *max_queue = TLD_MODELS_DEFAULT_MAX_QUEUE;
    if (*max_batch < 1 || *max_batch > 64)
        return seterr(e, 422, "INVALID_FIELD", "/max_batch", "must be an integer from 1 to 64");
    if (*max_delay_ms > 1000)
        return seterr(e, 422, "INVALID_FIELD", "/max_delay_ms", "must be an integer from 0 to 1000");
    if (*max_queue < 1 || *max_queue > 4096)
        return seterr(e, 422, "INVALID_FIELD", "/max_queue", "must be an integer from 1 to 4096");
    return 0;
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
            return seterr(e, 422, "CHECKPOINT_NOT_FOUND", "/checkpoint", "job %lld has no %s checkpoint%s",
                          (long long)job->id, want,
                          pick == 0 ? " (it has no evaluation yet: best comes from the validation set)" : " yet");
    } else {
        char *end;
        long long s = strtoll(want, &end, 10);
        if (*end || s < 0)
            return seterr(e, 422, "INVALID_FIELD", "/checkpoint", "must be \"best\", \"last\" or a step number");
        for (int i = 0; i < 2 && pick < 0; i++)
            if (steps[i] == s) pick = i;
        if (pick < 0)
            return seterr(e, 422, "CHECKPOINT_NOT_FOUND", "/checkpoint",
                          "job %lld keeps no checkpoint of step %lld (best: %lld, last: %lld; -1 = none)",
                          (long long)job->id, s, (long long)steps[0], (long long)steps[1]);
    }
    snprintf(path, plen, "%s", paths[pick]);
    *step = steps[pick];
    *has_ema = emas[pick];
    return 0;
}

/* Registers a fully written model file: store row, then a loaded entry in the list. */
static int install(tld_models *M, tld_model_row *row, int replace, int *created, tld_models_error *e) {
    char err[TL_ERR_LEN];
    entry *E = entry_new(M, row);
    if (!E) return seterr(e, 500, "INTERNAL", NULL, "out of memory");
    if (entry_load(E, err, sizeof err) != 0) {
        entry_free(E);
        return seterr(e, 422, "INVALID_MODEL", NULL, "the model cannot be loaded: %s", err);
    }
    int existed = 0;
    if (tld_store_model_put(M->store, row, replace, &existed, err, sizeof err) != 0) {
        entry_free(E);
        if (strcmp(err, "exists") == 0)
            return seterr(e, 409, "MODEL_EXISTS", "/name", "a model named %s exists (DELETE it first)", row->name);
        return seterr(e, 500, "STORE_ERROR", NULL, "%s", err);
    }
    entry *old = NULL;
    if (list_put(M, E, &old) != 0) {
        entry_free(E);
        return seterr(e, 500, "INTERNAL", NULL, "out of memory");
    }
    if (old) {
        pthread_mutex_lock(&old->mu);
        old->quit = 1; /* callers still queued on the old weights get 503 */
        pthread_cond_broadcast(&old->cv);
        pthread_mutex_unlock(&old->mu);
        entry_unref(old);
    }
    if (created) *created = !existed;
    return 0;
}

static int name_taken(tld_models *M, const char *name) {
    entry *E = find_ref(M, name);
    if (E) entry_unref(E);
    return E != NULL;
}

int tld_models_register_job(tld_models *M, const tld_register_req *r, tld_models_error *e) {
    char err[TL_ERR_LEN];
    if (!valid_name(r->name))
        return seterr(e, 422, "INVALID_FIELD", "/name",
                      "must be 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    int max_batch = r->max_batch, max_delay = r->max_delay_ms, max_queue = r->max_queue;
    if (check_batching(&max_batch, &max_delay, &max_queue, e) != 0) return -1;
    if (name_taken(M, r->name))
        return seterr(e, 409, "MODEL_EXISTS", "/name", "a model named %s exists (DELETE it first)", r->name);
    tld_job job;
    if (tld_store_job_get(M->store, r->job_id, &job, err, sizeof err) != 0)
        return seterr(e, 404, "JOB_NOT_FOUND", "/job_id", "job %lld does not exist", (long long)r->job_id);
    char src[1200], dst[1200];
    int64_t step = 0;
    int has_ema = 0, rc = -1;
    tl_model *m = NULL;
    char *labels = NULL;
    if (tld_job_checkpoint_file(&job, r->checkpoint ? r->checkpoint : "best", src, sizeof src, &step, &has_ema, e) != 0)
        goto done;
    int ema = r->ema < 0 ? has_ema : r->ema;
    if (ema && !has_ema) {
        seterr(e, 422, "NO_EMA_WEIGHTS", "/ema", "the checkpoint holds no EMA weights (the job ran without EMA)");
        goto done;
    }
    tl_config cfg;
    if (tl_checkpoint_config(src, &cfg, err, sizeof err) != 0 || !(m = tl_model_new_inference(&cfg, err, sizeof err)) ||
        tl_checkpoint_load(m, NULL, src, ema ? TL_CKPT_FROM_EMA : 0, NULL, err, sizeof err) != 0) {
        seterr(e, 422, "INVALID_MODEL", "/checkpoint", "cannot read the checkpoint: %s", err);
        goto done;
    }
    float crop_pct;
    labels = job_labels(M, &job, cfg.num_classes, &crop_pct);
    if (!labels) {
        seterr(e, 500, "INTERNAL", NULL, "out of memory");
        goto done;
    }
    snprintf(dst, sizeof dst, "%s/%s.safetensors", M->models_dir, r->name);
    char jobs[32], steps[32];
    snprintf(jobs, sizeof jobs, "%lld", (long long)job.id);
    snprintf(steps, sizeof steps, "%lld", (long long)step);
    const char *meta[] = {"tokenlab.classes", labels, "tokenlab.job", jobs, "tokenlab.step", steps, NULL};
    if (tl_checkpoint_save(m, NULL, dst, 0, NULL, meta, err, sizeof err) != 0) {
        seterr(e, 500, "IO_ERROR", NULL, "cannot write the model file: %s", err);
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
        seterr(e, 500, "IO_ERROR", NULL, "the state folder path is too long");
        goto done;
    }
    struct stat st;
    row.bytes = stat(dst, &st) == 0 ? (int64_t)st.st_size : 1;
    row.labels_json = labels;
    row.crop_pct = crop_pct;
    row.max_batch = max_batch;
    row.max_delay_ms = max_delay;
    row.max_queue = max_queue;
    row.created_ms = wall_ms();
    rc = install(M, &row, 0, NULL, e);
    if (rc != 0) unlink(dst);
done:
    tl_model_free(m);
    free(labels);
    tld_job_free(&job);
    return rc;
}

static int write_all(const char *path, const void *data, size_t len, char *err, size_t errlen) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "cannot create %.300s: %s", path, strerror(errno));
        return -1;
    }
    size_t w = fwrite(data, 1, len, f);
    int bad = w != len || fflush(f) != 0;
    if (fclose(f) != 0) bad = 1;
    if (bad) snprintf(err, errlen, "cannot write %.300s: %s", path, strerror(errno));
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

static unsigned upload_seq(void) {
    static _Atomic unsigned seq;
    return ++seq;
}

int tld_models_upload(tld_models *M, const char *name, const void *data, size_t len, int max_batch, int max_delay_ms,
                     int max_queue, int *created, tld_models_error *e) {
    char err[TL_ERR_LEN], tmp[1200], dst[1200];
    int rc = -1;
    tl_model *m = NULL;
    tl_st_file *f = NULL;
    char *labels = NULL;
    if (!valid_name(name))
        return seterr(e, 422, "INVALID_FIELD", "/name",
                      "must be 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    entry *prev = find_ref(M, name); /* a replaced model keeps the batching settings not given again */
    if (prev) {
        pthread_mutex_lock(&prev->mu);
        if (max_batch == 0) max_batch = prev->max_batch;
        if (max_delay_ms < 0) max_delay_ms = prev->max_delay_ms;
        if (max_queue == 0) max_queue = prev->max_queue;
        pthread_mutex_unlock(&prev->mu);
        entry_unref(prev);
    }
    if (check_batching(&max_batch, &max_delay_ms, &max_queue, e) != 0) return -1;
    if (len == 0) return seterr(e, 400, "EMPTY_BODY", NULL, "the body is empty; send a safetensors file");
    snprintf(tmp, sizeof tmp, "%s/.upload-%d-%u.tmp", M->models_dir, (int)getpid(), upload_seq());
    if (write_all(tmp, data, len, err, sizeof err) != 0) {
        seterr(e, 500, "IO_ERROR", NULL, "%s", err);
        goto done;
    }
    /* strict validation: a well-formed safetensors file, a config (metadata or LV-ViT shapes), every tensor */
    f = tl_st_open(tmp, err, sizeof err);
    if (!f) {
        seterr(e, 422, "INVALID_MODEL", NULL, "not a valid safetensors file: %s", untmp(err, tmp));
        goto done;
    }
    tl_config cfg;
    if (tl_checkpoint_config(tmp, &cfg, err, sizeof err) != 0) {
        seterr(e, 422, "INVALID_MODEL", NULL, "%s", untmp(err, tmp));
        goto done;
    }
    m = tl_model_new_inference(&cfg, err, sizeof err);
    if (!m) {
        seterr(e, 422, "INVALID_MODEL", NULL, "%s", err);
        goto done;
    }
    if (tl_checkpoint_load(m, NULL, tmp, 0, NULL, err, sizeof err) != 0) {
        seterr(e, 422, "INVALID_MODEL", NULL, "the file does not hold an LV-ViT with this config: %s",
               untmp(err, tmp));
        goto done;
    }
    const char *cl = tl_st_meta(f, "tokenlab.classes");
    tld_models_error le;
    if (cl && check_labels(cl, cfg.num_classes, &le) == 0) {
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
        seterr(e, 500, "INTERNAL", NULL, "out of memory");
        goto done;
    }
    /* the model's file: rewritten by the engine (packed, the config in its metadata, crash-safe) */
    snprintf(dst, sizeof dst, "%s/%s.safetensors", M->models_dir, name);
    const char *meta[] = {"tokenlab.classes", labels, NULL};
    if (tl_checkpoint_save(m, NULL, dst, 0, NULL, meta, err, sizeof err) != 0) {
        seterr(e, 500, "IO_ERROR", NULL, "cannot write the model file: %s", err);
        goto done;
    }
    tld_model_row row = {0};
    snprintf(row.name, sizeof row.name, "%s", name);
    snprintf(row.source_kind, sizeof row.source_kind, "upload");
    if (snprintf(row.path, sizeof row.path, "%s", dst) >= (int)sizeof row.path) {
        seterr(e, 500, "IO_ERROR", NULL, "the state folder path is too long");
        goto done;
    }
    struct stat st;
    row.bytes = stat(dst, &st) == 0 ? (int64_t)st.st_size : 1;
    row.labels_json = labels;
    row.crop_pct = 0.9;
    row.max_batch = max_batch;
    row.max_delay_ms = max_delay_ms;
    row.max_queue = max_queue;
    row.created_ms = wall_ms();
    rc = install(M, &row, 1, created, e);
done:
    unlink(tmp);
    tl_st_close(f);
    tl_model_free(m);
    free(labels);
    return rc;
}

int tld_models_update(tld_models *M, const char *name, const char *labels_json, int max_batch, int max_delay_ms,
                     int max_queue, tld_models_error *e) {
    entry *E = find_ref(M, name);
    if (!E) return seterr(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
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
            seterr(e, 409, "MODEL_NOT_READY", "/labels", "model %s is not loaded; its classes are unknown", name);
            goto done;
        }
        if (check_labels(labels_json, K, e) != 0) goto done;
        labels = parse_labels(labels_json, K);
        if (!labels) {
            seterr(e, 500, "INTERNAL", NULL, "out of memory");
            goto done;
        }
    }
    if (mb == 0 || mq == 0 || check_batching(&mb, &md, &mq, e) != 0) {
        if (mb == 0) seterr(e, 422, "INVALID_FIELD", "/max_batch", "must be an integer from 1 to 64");
        if (mq == 0) seterr(e, 422, "INVALID_FIELD", "/max_queue", "must be an integer from 1 to 4096");
        goto done;
    }
    if (tld_store_model_update(M->store, name, labels_json, mb, md, mq, err, sizeof err) != 0) {
        if (strcmp(err, "not found") == 0)
            seterr(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
        else
            seterr(e, 500, "STORE_ERROR", NULL, "%s", err);
        goto done;
    }
    pthread_mutex_lock(&E->mu);
    if (labels && E->nretired == (int)(sizeof E->retired / sizeof E->retired[0])) {
        pthread_mutex_unlock(&E->mu);
        seterr(e, 409, "TOO_MANY_CHANGES", "/labels", "the labels of %s changed too often; re-register the model", name);
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
    free_labels(labels, K);
    entry_unref(E);
    return rc;
}

int tld_models_delete(tld_models *M, const char *name, tld_models_error *e) {
    char err[TL_ERR_LEN];
    entry *E = find_ref(M, name);
    if (!E) return seterr(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
    char path[1024];
    snprintf(path, sizeof path, "%s", E->row.path);
    entry_unref(E);
    if (tld_store_model_delete(M->store, name, err, sizeof err) != 0) {
        if (strcmp(err, "not found") == 0) return seterr(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
        return seterr(e, 500, "STORE_ERROR", NULL, "%s", err);
    }
    E = list_take(M, name);
    if (E) {
        pthread_mutex_lock(&E->mu);
        E->quit = 1;
        pthread_cond_broadcast(&E->cv);
        pthread_mutex_unlock(&E->mu);
        entry_unref(E);
    }
    unlink(path);
    return 0;
}

/* ------------------------------------------------------------------ JSON */

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
    entry *E = find_ref(M, name);
    if (!E) {
        seterr(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
        return NULL;
    }
    cJSON *o = entry_json(E);
    entry_unref(E);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) seterr(e, 500, "INTERNAL", NULL, "out of memory");
    return s;
}

/* References to every entry, newest first (release each). */
static int snapshot(tld_models *M, entry ***out) {
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

char *tld_models_list_json(tld_models *M, tld_models_error *e) {
    entry **v = NULL;
    int n = snapshot(M, &v);
    if (n < 0) {
        seterr(e, 500, "INTERNAL", NULL, "out of memory");
        return NULL;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "models");
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(arr, entry_json(v[i]));
        entry_unref(v[i]);
    }
    free(v);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) seterr(e, 500, "INTERNAL", NULL, "out of memory");
    return s;
}

char *tld_models_prometheus(tld_models *M) {
    entry **v = NULL;
    int n = snapshot(M, &v);
    if (n < 0) return NULL;
    size_t cap = 1024 + (size_t)n * 1024, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        for (int i = 0; i < n; i++) entry_unref(v[i]);
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
    for (int k = 0; k < 6; k++) {
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
    for (int i = 0; i < n; i++) entry_unref(v[i]);
    free(v);
    return buf;
}

/* ------------------------------------------------------------------ inference */

tld_model_ref *tld_models_acquire(tld_models *M, const char *name, tld_models_error *e) {
    entry *E = find_ref(M, name);
    if (!E) {
        seterr(e, 404, "MODEL_NOT_FOUND", NULL, "no model named %s", name);
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
        entry_unref(E);
        seterr(e, 503, "OUT_OF_MEMORY", NULL, "out of memory");
        return NULL;
    }
    if (st != ST_READY) {
        entry_unref(E);
        free(r);
        if (st == ST_LOADING)
            seterr(e, 409, "MODEL_NOT_READY", NULL, "model %s is still loading", name);
        else
            seterr(e, 409, "MODEL_NOT_READY", NULL, "model %s failed to load: %s", name, msg);
        return NULL;
    }
    r->E = E;
    r->preparing = 1;
    return r;
}

/* The caller has its images ready (or gave up): the batcher need not wait for it (E->mu held). */
static void stop_preparing(tld_model_ref *r) {
    if (!r->preparing) return;
    r->preparing = 0;
    if (r->E->preparing > 0) r->E->preparing--;
    pthread_cond_broadcast(&r->E->cv); /* the batcher may be waiting only for us */
}

void tld_models_release(tld_model_ref *r) {
    if (!r) return;
    pthread_mutex_lock(&r->E->mu);
    stop_preparing(r);
    pthread_mutex_unlock(&r->E->mu);
    entry_unref(r->E);
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

int tld_models_infer(tld_model_ref *r, const float *images, int n, tld_infer_out *out, int64_t deadline_ms,
                    tld_models_error *e) {
    entry *E = r->E;
    size_t img = (size_t)3 * (size_t)E->S * (size_t)E->S;
    item *items = calloc((size_t)(n > 0 ? n : 1), sizeof *items);
    pthread_mutex_lock(&E->mu);
    stop_preparing(r);
    E->requests++;
    if (!items) {
        pthread_mutex_unlock(&E->mu);
        return seterr(e, 503, "OUT_OF_MEMORY", NULL, "out of memory");
    }
    if (E->quit || E->state != ST_READY) {
        pthread_mutex_unlock(&E->mu);
        free(items);
        return seterr(e, 503, "MODEL_UNLOADED", NULL, "model %s was deleted or replaced, or the daemon is stopping",
                      E->row.name);
    }
    if (E->queued + n > E->max_queue) {
        E->rejected++;
        double per_batch = E->batch_ms_avg > 0 ? E->batch_ms_avg : 100.0;
        double wait_ms = ((double)E->queued / E->max_batch + 1.0) * per_batch;
        int retry = (int)ceil(wait_ms / 1000.0);
        int q = E->queued, mq = E->max_queue;
        pthread_mutex_unlock(&E->mu);
        free(items);
        seterr(e, 429, "QUEUE_FULL", NULL, "model %s has %d images queued (max_queue %d); retry in %d s", E->row.name,
               q, mq, retry < 1 ? 1 : retry);
        e->retry_after_s = retry < 1 ? 1 : retry;
        return -1;
    }
    int64_t now = tld_models_now_ms();
    for (int i = 0; i < n; i++) {
        items[i] = (item){images + img * (size_t)i, &out[i], now, deadline_ms, IT_PENDING, NULL};
        if (E->tail)
            E->tail->next = &items[i];
        else
            E->head = &items[i];
        E->tail = &items[i];
    }
    E->queued += n;
    E->images += (uint64_t)n;
    pthread_cond_broadcast(&E->cv);
    int expired = 0, unloaded = 0;
    for (int i = 0; i < n; i++) {
        while (items[i].status == IT_PENDING) pthread_cond_wait(&E->done_cv, &E->mu);
        expired += items[i].status == IT_EXPIRED;
        unloaded += items[i].status == IT_UNLOADED;
    }
    char name[72];
    snprintf(name, sizeof name, "%s", E->row.name);
    pthread_mutex_unlock(&E->mu);
    free(items);
    if (unloaded)
        return seterr(e, 503, "MODEL_UNLOADED", NULL,
                      "model %s was deleted or replaced, or the daemon is stopping, before the request ran", name);
    if (expired)
        return seterr(e, 504, "DEADLINE_EXCEEDED", NULL,
                      "the request's deadline passed while it waited in model %s's queue", name);
    return 0;
}
