/*
 * train.h: the token-labeling training loop of one job, as the daemon's
 * worker threads and `tokenlabd run` both run it.
 *
 * train.c owns a job's model, EMA, contexts and loaders for the duration of
 * tl_train_run, on the calling thread (plus the engine's pools and the
 * loader's threads). It reports through hooks, called on the calling thread.
 *
 * Determinism: the sample order of epoch e, each sample's augmentation, the
 * MixToken box and the drop-path masks of step s all derive from the job
 * seed and (e, position, s) alone (rng.h). A run stopped after step s and
 * resumed from its checkpoint therefore continues exactly as the
 * uninterrupted run would have, given the same thread count.
 *
 * Run folder layout: last.safetensors (weights, EMA weights as "ema.<name>",
 * AdamW moments and the train state; rewritten at every checkpoint) and
 * best.safetensors (the same without optimizer state, from the evaluation
 * with the best top-1, of the EMA weights when EMA is on).
 */
#ifndef TL_TRAIN_H
#define TL_TRAIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenlab/inspect.h"
#include "tokenlab/jobspec.h"

typedef struct {
    int64_t step;          /* optimizer steps done, 1-based after the first */
    int64_t total_steps;
    int epoch;             /* 0-based epoch of this step */
    int epochs;
    double loss, loss_cls, loss_dense, lr;
    double img_per_s;      /* over the recent steps */
    double eta_seconds;
    double data_wait;      /* fraction of recent time the trainer waited for data */
    int64_t skipped_images;/* unreadable images skipped so far in this run */
    /* distributed jobs (tl_train_run_ranks); ranks 1 and NULL on one process */
    int ranks;
    const double *rank_img_per_s; /* (ranks) images/s of each rank's forward and backward, this step */
    double comm_seconds;   /* this step's gradient sum across the ranks (0 on one process) */
    double step_seconds;   /* this step's wall time: data, forward, backward, sums, AdamW */
} tl_step_report;

/* The ranks of a distributed job, reported once at the start (hooks.on_ranks). */
typedef struct {
    int size;
    int micro_batches;        /* per step, over all ranks */
    const char *const *hosts; /* (size) each rank's host name */
} tl_ranks_info;

typedef struct {
    int64_t step;
    int epoch;
    int ema;               /* 0: raw weights, 1: EMA weights */
    double top1, top5, loss;
    int images;
    double seconds;
} tl_eval_report;

/* Where a fine-tuning job started from (model.init), reported once, on a fresh start. */
typedef struct {
    char weights[PATH_MAX];   /* the source file */
    int from_ema;             /* its EMA weights were loaded */
    int64_t source_step;      /* the source's "tokenlab.step" metadata, -1 when absent */
    tl_config source_cfg;
    tl_head_mode head;        /* the mode used */
    int classes_matched;      /* TL_HEAD_MATCH: target classes found in the source */
    tl_init_report rep;       /* position-embedding resize, head rows kept and new */
} tl_init_info;

typedef struct {
    void (*on_start)(int64_t start_step, int64_t total_steps, void *user); /* after resume is known */
    void (*on_ranks)(const tl_ranks_info *info, void *user); /* distributed jobs: before on_start */
    /* model.init on a fresh start: after the source is loaded and adapted, before the step-0 evaluation */
    void (*on_init)(const tl_init_info *info, void *user);
    void (*on_step)(const tl_step_report *r, void *user);
    void (*on_eval)(const tl_eval_report *r, void *user);
    /* Called before a checkpoint is written: whatever must be durable when the
     * checkpoint exists (the daemon's metric points up to this step) is flushed here.
     * Returns 0, or an errno value when that could not be made durable: the checkpoint
     * is then not written and the run fails (DISK_FULL for ENOSPC or EDQUOT, IO_ERROR
     * otherwise), so no checkpoint ever stands past a metric step that was lost. */
    int (*before_checkpoint)(int64_t step, void *user);
    void (*on_checkpoint)(const char *path, int64_t step, int is_best, void *user);
    void (*on_log)(const char *msg, void *user);   /* warnings: skipped images, ... */
    /* After each evaluation (raw weights, ema 0; then EMA weights, ema 1): the job's inspection
     * samples (the same set for the whole run, resumes included) and what the model predicts for
     * them at this step. Both are valid only during the call. */
    void (*on_inspect)(const tl_inspect_set *set, const tl_inspect_result *res, int64_t step, int ema, void *user);
    /* Checked after each step (after on_step); on a distributed job on every rank, and every rank stops
     * when any rank asked. */
    int (*should_stop)(void *user);
    void *user;
} tl_train_hooks;

typedef enum {
    TL_TRAIN_SUCCEEDED = 0,
    TL_TRAIN_STOPPED = 1,  /* should_stop: a checkpoint was written */
    TL_TRAIN_FAILED = 2,
} tl_train_status;

typedef struct {
    tl_train_status status;
    char reason[32];       /* NAN_LOSS, DATA_ERROR, CONFIG_ERROR, IO_ERROR, DISK_FULL, OUT_OF_MEMORY, DIST_MISMATCH,
                            * DIST_ERROR */
    char message[1024];
    int64_t step;          /* steps done when it ended */
    int64_t skipped_images;
    double best_top1;      /* -1 if never evaluated */
} tl_train_result;

/* Marks res failed with reason and a formatted message; returns TL_TRAIN_FAILED (for the job runners:
 * train.c, annotate.c). */
tl_train_status tl_train_result_vfail(tl_train_result *res, const char *reason, const char *fmt, va_list ap);
/* Formats a log line (at most 1023 bytes) and hands it to on_log, if any (the job runners' hooks). */
void tl_hook_vlog(void (*on_log)(const char *msg, void *user), void *user, const char *fmt, va_list ap);

/* ---- fine-tuning: the training data's classes against a source's (engine/jobs/classmatch.c) ---- */

/* Checkpoint metadata key: a JSON array of the class folder names, in class order. train.c writes it
 * into every checkpoint (last and best); a fine-tuning job with head "match" reads it from its source. */
#define TL_META_CLASS_IDS "tokenlab.class_ids"

/* The class map of head "match": map[k] (target_k entries) = the source class of target class k, or -1.
 * target_ids: the target's class folder names (wnids; entries may be NULL); target_inet: their ImageNet-1k
 * indices or -1 (may be NULL); source_ids_json: the source's TL_META_CLASS_IDS, or NULL when it has none.
 * With names, classes match by name. Without, a 1000-class source is ImageNet-1k in index order and
 * matches through target_inet. Refused (-1 with a message, every map entry -1): no names and not 1000
 * classes, 1000 classes but no target index, malformed names (not an array of source_k non-empty strings,
 * a name twice), or no class in common. *matched (may be NULL) receives the count of entries >= 0. */
int tl_class_match_ids(int target_k, const char *const *target_ids, const int *target_inet, const char *source_ids_json,
                       int source_k, int *map, int *matched, char *err, size_t errlen);
/* The same for a training dataset and a source safetensors file with source_k classes (its metadata is
 * read; the weights are not). map has tl_dataset_num_classes(target) entries. */
int tl_class_match(const tl_dataset *target, const char *source_path, int source_k, int *map, int *matched, char *err,
                   size_t errlen);
/* The dataset's class folder names as the TL_META_CLASS_IDS JSON array; malloc'd (free()), NULL when out
 * of memory. */
char *tl_class_ids_json(const tl_dataset *d);

/* Runs (or resumes, when run_dir holds last.safetensors) the job.
 * Fine-tuning (spec->init, spec->init_weights filled by the caller): a fresh start reads the source's
 * configuration, merges it (tl_jobspec_apply_init on a copy of the spec), loads the source (its EMA
 * weights when spec->init_from_ema) into a weights-only model and initialises the job's model from it
 * (tl_model_init_from: head mode spec->init_head, or keep when the class counts are equal, else reinit;
 * the class map of tl_class_match for "match"); the EMA starts as a copy, the optimizer fresh. on_init
 * reports it, and the raw and EMA weights are evaluated once at step 0, before the first step (on_eval,
 * on_inspect). A resume takes the architecture from its own last.safetensors and never reads the source.
 * A source that cannot be read or used fails the job with reason CONFIG_ERROR. train.freeze and
 * train.layer_decay are applied to every job (fresh or resumed) that sets them. */
tl_train_status tl_train_run(const tl_train_spec *spec, const char *run_dir, const tl_train_hooks *hooks,
                             tl_train_result *res);

/* tl_train_run on one rank of a distributed job (comm.h): every rank of the world calls it with the same
 * spec. The ranks check that they agree (spec, training and validation file lists, and, after rank 0's
 * state is broadcast, the weights), or fail alike with reason DIST_MISMATCH. Each rank loads its share of
 * every global batch and computes micro_batches / ranks micro-batches; the gradients are summed exactly
 * (comm.h), so every rank takes the same AdamW step. Evaluation is sharded and its counts summed. Only
 * rank 0 reads the run folder (resume, fine-tuning source) and writes to it, and only rank 0 calls the
 * hooks, except should_stop. comm NULL is tl_train_run. */
typedef struct tl_comm tl_comm;
tl_train_status tl_train_run_ranks(const tl_train_spec *spec, const char *run_dir, const tl_train_hooks *hooks,
                                   tl_comm *comm, tl_train_result *res);

/* The learning rate of a step: linear warm-up from warmup_lr to lr, then
 * cosine decay to min_lr, per step. */
double tl_train_lr(const tl_train_spec *s, int64_t step, int64_t steps_per_epoch);

#endif
