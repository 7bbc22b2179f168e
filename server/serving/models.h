/*
 * models.h: the daemon's registered models and their inference servers.
 *
 * The module (server/serving/, shared internals in serving_internal.h) owns
 * the registry (registry.c: every model of the store, by name, with its
 * state LOADING / READY / FAILED), each loaded model's weights, inference
 * contexts and batcher lanes (batcher.c), the model files under
 * <state>/models/ (load.c, upload.c), and a background loader thread that
 * loads the stored models at start-up (load.c). models_json.c answers JSON
 * and Prometheus.
 *
 * Dynamic batching: requests for one model queue (bounded by max_queue
 * images; past it the caller gets 429) and the model's batcher lanes (one
 * thread each, one lane per compute thread; batcher.c) run
 * them in batches of up to max_batch. A lane waits up to max_delay_ms for a
 * batch to fill, but only while other requests for the model are still
 * being decoded: a lone request runs at once. A request whose deadline (which counts the time queued) passes before its
 * batch starts is answered 504 without being computed. Inference runs on
 * the model's own compute threads, beside any training job's: a request
 * waits at most for the batch ahead of it, never for training.
 *
 * Threads: every function may be called from any thread (HTTP handlers,
 * the daemon's main thread). A tld_model_ref keeps its model's memory alive
 * until released, even if the model is deleted or replaced meanwhile; its
 * batcher stops at the delete or replace, so inference through such a ref
 * answers 503 MODEL_UNLOADED. Every ref must be released before
 * tld_models_free (the daemon stops HTTP first).
 */
#ifndef TLD_MODELS_H
#define TLD_MODELS_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

typedef struct tld_models tld_models;
typedef struct tld_model_ref tld_model_ref;

typedef struct {
    const char *state_dir;     /* model files in <state_dir>/models/ */
    const char *data_root;     /* to read a job's spec (class names, crop_pct) */
    tld_store *store;
    int threads;               /* compute threads per model, default: all cores */
} tld_models_cfg;

/* An error for an HTTP problem answer: status, stable code, JSON pointer (may be ""), detail. */
typedef struct {
    int status;
    char code[32];
    char pointer[64];
    char detail[512];
    int retry_after_s;         /* for 429 */
} tld_models_error;

#define TLD_MODELS_DEFAULT_MAX_BATCH 8
#define TLD_MODELS_DEFAULT_MAX_DELAY_MS 5
#define TLD_MODELS_DEFAULT_MAX_QUEUE 64

tld_models *tld_models_new(const tld_models_cfg *cfg, char *err, size_t errlen);
/* Fails every queued request (503), stops the batchers and the loader, frees. No tld_model_ref may be
 * held any more (releasing one afterwards would touch the freed registry). */
void tld_models_free(tld_models *M);
/* 1 when no model is LOADING (KServe readiness). */
int tld_models_all_loaded(tld_models *M);

/* ---- registration ---- */
typedef struct {
    const char *name;
    int64_t job_id;
    const char *checkpoint;    /* "best", "last" or a step in decimal */
    int ema;                   /* -1: when the checkpoint holds EMA weights */
    int max_batch, max_delay_ms, max_queue; /* 0: defaults */
} tld_register_req;

/* Copies a job's checkpoint into the model's own file and loads it (READY on return). */
int tld_models_register_job(tld_models *M, const tld_register_req *r, tld_models_error *e);
/* Validates an uploaded safetensors file strictly (tokenlab checkpoint or an LV-ViT state_dict),
 * stores it as the model's file and loads it; *created = 0 when it replaced a model. */
int tld_models_upload(tld_models *M, const char *name, const void *data, size_t len, int max_batch, int max_delay_ms,
                     int max_queue, int *created, tld_models_error *e);
/* Changes labels (labels_json: a JSON array of K strings, or NULL) and batching (< 0: unchanged). */
int tld_models_update(tld_models *M, const char *name, const char *labels_json, int max_batch, int max_delay_ms,
                     int max_queue, tld_models_error *e);
int tld_models_delete(tld_models *M, const char *name, tld_models_error *e);

/* Which file of a training job holds the checkpoint want ("best", "last" or a step in decimal): its path,
 * training step and whether it has EMA weights. 422 CHECKPOINT_NOT_FOUND / INVALID_FIELD (pointer
 * "/checkpoint") otherwise. Also used to resolve the source of annotate jobs. */
int tld_job_checkpoint_file(const tld_job *job, const char *want, char *path, size_t plen, int64_t *step, int *has_ema,
                           tld_models_error *e);

/* The model as JSON (see schema/openapi.json, Model), malloc'd; NULL with e (404). */
char *tld_models_json(tld_models *M, const char *name, tld_models_error *e);
/* {"models": [...]}, newest first, malloc'd. */
char *tld_models_list_json(tld_models *M, tld_models_error *e);
/* Prometheus lines for every model (requests, images, batches, rejected, queue depth), malloc'd. */
char *tld_models_prometheus(tld_models *M);

/* ---- inference ---- */
/* A READY model, kept alive until released. 404 MODEL_NOT_FOUND, 409 MODEL_NOT_READY. The model
 * counts the caller as preparing a request until tld_models_infer or release. */
tld_model_ref *tld_models_acquire(tld_models *M, const char *name, tld_models_error *e);
void tld_models_release(tld_model_ref *r);
const char *tld_model_ref_name(const tld_model_ref *r);
int tld_model_ref_size(const tld_model_ref *r);       /* input side S */
float tld_model_ref_crop_pct(const tld_model_ref *r);
int tld_model_ref_classes(const tld_model_ref *r);    /* K */
int tld_model_ref_grid(const tld_model_ref *r);       /* token grid side g */
const char *tld_model_ref_label(const tld_model_ref *r, int c);

typedef struct {
    float *probs;              /* (K) softmax of the inference score cls + 0.5 max aux; caller's buffer */
    float *logits;             /* (K) the inference score itself, or NULL */
    int32_t *tok_index;        /* (g*g) top class per token, or NULL to skip tokens; caller's buffer */
    float *tok_prob;           /* (g*g) its probability (softmax of the token's aux logits) */
    double queue_ms, infer_ms; /* filled: time queued, time of the batch's forward pass */
    int batch;                 /* filled: the size of the batch it ran in */
} tld_infer_out;

/* Admits a request of n images before the caller allocates and prepares them: 413 BATCH_TOO_LARGE when
 * n exceeds the model's max_queue (no retry helps), 429 QUEUE_FULL (retry_after_s set) when the images
 * queued plus those admitted and not yet queued leave no room. The admission holds until tld_models_infer
 * queues them or the reference is released, so concurrent requests cannot together allocate more than
 * the queue takes. */
int tld_models_reserve(tld_model_ref *r, int n, tld_models_error *e);

/* Queues n normalised images (n,3,S,S) and waits for them. deadline_ms: monotonic milliseconds
 * (tl_clock_mono_ms() + timeout). 429 QUEUE_FULL (retry_after_s set), 504 DEADLINE_EXCEEDED,
 * 503 MODEL_UNLOADED when the model is deleted or the daemon stops meanwhile. */
int tld_models_infer(tld_model_ref *r, const float *images, int n, tld_infer_out *out, int64_t deadline_ms,
                    tld_models_error *e);

#endif
