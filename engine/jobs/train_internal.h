/*
 * train_internal.h: the state of one training run, shared by the files of
 * the training loop: train.c (setup, resume, the loop, evaluation,
 * checkpoints), train_step.c (one step's gradient over micro-batches and
 * ranks) and train_dist.c (a distributed job's start-up agreement and state
 * broadcast). All of it lives on the thread that called tl_train_run.
 */
#ifndef TL_TRAIN_INTERNAL_H
#define TL_TRAIN_INTERNAL_H

#include "data/loader.h"
#include "tokenlab/comm.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/train.h"

typedef struct {
    const tl_train_spec *spec;
    const char *run_dir;
    const tl_train_hooks *hooks;  /* on ranks other than 0: only should_stop (own_hooks) */
    tl_train_hooks own_hooks;
    tl_train_result *res;
    tl_dataset *train_ds, *val_ds;
    tl_labelmap *lm;
    tl_model *model, *ema;
    tl_ctx *ctx, *eval_ctx, *ema_ctx;
    tl_loader *train_ld, *val_ld;
    tl_inspect_set *iset;   /* NULL: no inspection (no hook, or it could not be built) */
    tl_inspect_result *ires;
    tl_config cfg;
    int nb;                 /* steps per epoch */
    int64_t total;
    float *t_mix;           /* (mb,K) class targets mixed by image-level mixup/cutmix */
    double best;            /* best top-1 so far, -1 none */
    int ckpt_failed;        /* a checkpoint write failed in a way that ends the run (res filled): a full disk, a
                             * refusal of before_checkpoint */
    int64_t last_eval_step; /* the step of the last evaluation (-1 none), its top-1/top-5 [raw, EMA] */
    double last_top1[2], last_top5[2];
    char *class_ids;        /* TL_META_CLASS_IDS of the training data */
    tl_train_spec *own_spec;/* fine-tuning: the caller's spec merged with the source (r->spec points here) */
    tl_config src_cfg;      /* fine-tuning: the source's configuration */
    tl_st_file *src_file;   /* fine-tuning, fresh start: the source, read once (config, metadata, weights) */
    int init_now;           /* fine-tuning, fresh start: initialise from the source, evaluate at step 0 */
    /* micro-batches and ranks (train_step.c, train_dist.c) */
    tl_comm *comm;          /* NULL: one process */
    int rank, ranks;        /* 0, 1 on one process */
    int micro;              /* micro-batches per step, all ranks */
    int local_micro;        /* micro / ranks: this rank's */
    int mb;                 /* images per micro-batch */
    float **acc;            /* local_micro > 1: the tree's partial sums, acc_n buffers of the gradient's size */
    int acc_n;
    float *bn0;             /* micro > 1: running BatchNorm statistics at the step's start */
    int64_t bn0_count[3];
    double *step_sums;      /* (4 + ranks): the per-step sums (losses, non-finite count, each rank's seconds) */
    double *rank_ips;       /* (ranks) images/s of each rank, this step */
} run;

static inline int run_is_root(const run *r) { return r->rank == 0; }

tl_train_status train_fail(run *r, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void train_log(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- train_step.c ---- */

/* What one step computed, the same on every rank. */
typedef struct {
    tl_loss_parts lp;       /* mean over the step's micro-batches (lam: the first micro-batch's) */
    int nonfinite;          /* micro-batches, over all ranks, whose loss was NaN or infinite */
    double comm_s;          /* seconds in the gradient sum across ranks */
} train_step_out;

/* Buffers of the step (the tree's partial sums, the saved BatchNorm statistics, the per-step sums). 0, or
 * -1 with the run failed. */
int train_step_setup(run *r);
void train_step_free(run *r);
/* The gradient of step `step` in the model's gradient block: this rank's local_micro micro-batches of b
 * (its share of the global batch), each forward and backward on its own, summed in the halving tree over
 * micro-batch order, then over the ranks (tl_comm_sum_tree); with micro > 1, the running BatchNorm
 * statistics become the mean of the micro-batches' updates (model/micro.h). With micro 1 on one process it
 * is the plain forward, loss and backward. image_mix: mixup/cutmix per micro-batch; box: the step's
 * MixToken box. 0, or -1 with the run failed (communication). */
int train_step_grads(run *r, const tl_batch *b, int64_t step, int image_mix, tl_box box, train_step_out *out);

/* ---- train_dist.c ---- */

/* Ranks other than 0: the hooks they keep (should_stop only). */
void train_dist_hooks(run *r);
/* First of all: the ranks were given the same spec. 0, or -1 with the run failed on every rank. */
int train_dist_check_spec(run *r, const tl_train_spec *given);
/* Rank 0's verdict on its reading of the run folder (resume, fine-tuning source) and the spec it then runs,
 * to every rank. 0, or -1 with the run failed. */
int train_dist_share_spec(run *r, tl_train_status root_status);
/* After setup: the ranks agree on the training and validation file lists; rank 0 logs and reports the
 * ranks' hosts (on_ranks). */
int train_dist_check_start(run *r);
/* After rank 0 resumed or initialised: its model, EMA, step and best to every rank (which then apply
 * train.freeze and train.layer_decay), and the weights' checksums compared. Returns the step to start at
 * on every rank, or -1 with the run failed. */
int64_t train_dist_share_state(run *r, int64_t root_step);

/* ---- train.c ---- */

/* train.freeze and train.layer_decay, after the weights are in place. 0, or -1 with the run failed. */
int train_apply_recipe(run *r);

#endif
