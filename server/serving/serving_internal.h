/*
 * serving_internal.h: what the files of server/serving/ share. Private to
 * the folder; serving/models.h is the module's interface.
 *
 *   registry.c     the registry: entries by name, reference counts, lookup,
 *                  create/free, PATCH and DELETE, acquire/release; labels and
 *                  batching settings checks
 *   batcher.c      the batcher lanes (a thread each) and tld_models_infer
 *   load.c         loading a model file into an entry, the start-up loader
 *                  thread, installing a model, registering a job's checkpoint
 *   upload.c       validating and installing an uploaded safetensors file
 *   models_json.c  the JSON of models and their Prometheus lines
 *
 * Locks: M->mu guards the list of entries and each entry's reference count
 * and registry membership; E->mu guards an entry's queue, settings, state,
 * statistics and the lanes' busy flags. Lock order: M->mu before E->mu;
 * neither is held during inference, file I/O or store calls.
 *
 * Invariants (TL_NEVER / TL_ALWAYS): a reference count never goes below
 * zero and an entry is freed only when its count reaches zero (or before it
 * was ever shared); a batch never holds more than TLD_MODELS_BATCH_MAX
 * requests and the queue count never goes below zero.
 */
#ifndef TLD_SERVING_INTERNAL_H
#define TLD_SERVING_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "serving/models.h"
#include "http/histogram.h"
#include "tokenlab/model.h"

#define TLD_MODELS_BATCH_MAX 64  /* the largest max_batch (tld_models_check_batching) and a lane's batch array */

enum { ST_LOADING = 0, ST_READY = 1, ST_FAILED = 2 };

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
    int reserved;            /* images those callers were admitted for (tld_models_reserve), not yet queued */
    int quit;
    int max_batch, max_delay_ms, max_queue;
    uint64_t requests, images, batches, rejected, expired;
    tld_hist queue_hist;     /* per image: from queued to its batch starting */
    tld_hist compute_hist;   /* per batch: its forward pass */
    double batch_ms_avg;     /* moving average of a batch's forward time */

    /* the batchers: one lane per compute thread (see batcher.c) */
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
    int reserved;            /* its images counted in E->reserved */
};

#define MODELS_BUSY_MAX 64 /* names held at once; more wait */

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
    char busy[MODELS_BUSY_MAX][72]; /* names held by a register, upload or delete (under mu) */
    int nbusy;
    pthread_cond_t name_cv;  /* a held name was released */
};


/* ------------------------------------------------------------------ registry.c */

/* Fills e (when not NULL) with an HTTP status, stable code, JSON pointer (may be NULL) and detail; returns -1. */
int tld_models_fail(tld_models_error *e, int status, const char *code, const char *pointer, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Holds a model name for a register, upload or delete, waiting while another holds it, so that two of them
 * never write or remove each other's file and a name's file and row change together. The name must be
 * valid (tld_models_valid_name). */
void tld_models_name_lock(tld_models *M, const char *name);
void tld_models_name_unlock(tld_models *M, const char *name);
/* [A-Za-z0-9][A-Za-z0-9._-]{0,63}, as the store's CHECK: 1 or 0. */
int tld_models_valid_name(const char *s);
/* labels_json (an array of strings) into K labels; missing or non-string entries become "class i". NULL when
 * out of memory. Freed with tld_models_free_labels. */
char **tld_models_parse_labels(const char *json, int K);
void tld_models_free_labels(char **l, int K);
/* Checks a labels array: K non-empty strings of at most 200 bytes. 0, or -1 with e (422 INVALID_FIELD). */
int tld_models_check_labels(const char *json, int K, tld_models_error *e);
/* Fills the defaults (0 / < 0) of the batching settings and checks their ranges; 0, or -1 with e (422). */
int tld_models_check_batching(int *max_batch, int *max_delay_ms, int *max_queue, tld_models_error *e);

/* A new entry for row (state LOADING, one reference: the caller's), or NULL when out of memory. */
entry *tld_models_entry_new(tld_models *M, const tld_model_row *row);
/* Stops the batcher (failing what is queued) and frees the entry. No other reference may remain. */
void tld_models_entry_free(entry *E);
/* Drops a reference (M->mu not held); the last one frees the entry. */
void tld_models_entry_unref(entry *E);
/* The entry named name with a new reference, or NULL. */
entry *tld_models_find_ref(tld_models *M, const char *name);
/* Puts E in the list (the caller's reference passes to the list), replacing one of the same name: *replaced
 * receives it, still holding the list's old reference. 0, or -1 when out of memory. */
int tld_models_list_put(tld_models *M, entry *E, entry **replaced);
/* Removes the entry named name from the list; returns it (the list's reference passes to the caller) or NULL. */
entry *tld_models_list_take(tld_models *M, const char *name);
/* References to every entry, newest first, into *out (malloc'd; release each, then free). The count, or -1. */
int tld_models_snapshot(tld_models *M, entry ***out);

/* ------------------------------------------------------------------ batcher.c */

/* Initialises a condition variable on CLOCK_MONOTONIC, so deadlines do not move with the wall clock. */
void tld_models_cond_init_mono(pthread_cond_t *cv);
/* (Re)allocates a lane's contexts and buffers for batch B (its own thread, or before it starts; E->mu not held).
 * 0, or -1 with a message. */
int tld_models_lane_alloc(lane *L, int B, char *err, size_t errlen);
/* A lane's thread (arg: the lane). Runs until E->quit, then fails whatever is still queued. */
void *tld_models_batcher_main(void *arg);
/* The caller has its images ready (or gave up): the batcher need not wait for it (E->mu held). */
void tld_models_stop_preparing(tld_model_ref *r);

/* ------------------------------------------------------------------ load.c */

/* Loads the entry's file, makes its contexts and starts its batcher lanes; sets READY, or FAILED and -1 with a
 * message. */
int tld_models_entry_load(entry *E, char *err, size_t errlen);
/* The start-up loader thread (arg: the registry): loads every LOADING entry, one at a time. */
void *tld_models_loader_main(void *arg);
/* Registers a fully written model file: store row, then a loaded entry in the list (replacing one of the same
 * name when replace). *created (may be NULL) = 0 when it replaced a model. 0, or -1 with e. */
int tld_models_install(tld_models *M, tld_model_row *row, int replace, int *created, tld_models_error *e);

#endif
