/*
 * jobspec.h: the JSON job spec of a training job (schema/jobspec.schema.json),
 * parsed strictly into a tl_train_spec with documented defaults, and the
 * kind of any job document (engine/jobs/jobspec.c).
 *
 * Every refusal carries the JSON pointer of the offending field (RFC 6901,
 * e.g. "/train/lr") and a message with the rule ("must be a number > 0",
 * "unknown field", "required", "folder does not exist"). Unknown fields are
 * refused at every level. Pure functions; any thread.
 */
#ifndef TL_JOBSPEC_H
#define TL_JOBSPEC_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenlab/augment.h"
#include "tokenlab/model.h"

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

typedef struct {
    char pointer[256];   /* "" for the document itself */
    char message[512];
} tl_spec_error;

typedef enum { TL_MIX_NONE = 0, TL_MIX_MIXUP = 1, TL_MIX_CUTMIX = 2, TL_MIX_BOTH = 3 } tl_mix_mode;

/* The fields of the spec's "model" object, in the order of the parser's table (jobspec.c MODEL_FIELDS).
 * Bit (1u << f) of tl_train_spec.init_model_fields is set when /model/<field f> was given, for every
 * spec (with or without model.init). /train/drop_path sets TL_MF_DROP_PATH_RATE too: it gives the job's
 * one drop-path rate, which the model's config carries. model.init itself is not a config field and has
 * no bit (tl_train_spec.init says whether it was given). */
typedef enum {
    TL_MF_PRESET = 0,
    TL_MF_IMG_SIZE,
    TL_MF_PATCH_SIZE,
    TL_MF_EMBED_DIM,
    TL_MF_DEPTH,
    TL_MF_NUM_HEADS,
    TL_MF_MLP_RATIO,
    TL_MF_STEM_CHANNELS,
    TL_MF_SKIP_LAM,
    TL_MF_NUM_CLASSES,
    TL_MF_DROP_PATH_RATE,
    TL_MF_COUNT
} tl_jobspec_model_field;

typedef struct {
    char kind[16];                 /* "train" */
    char name[128];
    /* model: preset plus overrides */
    char preset[32];               /* "" when every field was given */
    tl_config model;
    /* data; paths resolved (absolute) after parsing */
    char train_dir[PATH_MAX];
    char val_dir[PATH_MAX];        /* "" = no evaluation */
    char label_maps[PATH_MAX];     /* "" = plain training */
    char data_root[PATH_MAX];      /* the canonical data root the paths were confined to; "" when none */
    /* train */
    int epochs;
    int batch_size;
    float lr, min_lr, warmup_lr;
    float warmup_epochs;
    float weight_decay;
    float label_smoothing;
    float cls_weight, dense_weight;
    int mixtoken;                  /* 0/1 */
    float drop_path;               /* overrides model.drop_path_rate */
    float ema_decay;               /* 0 = no EMA */
    uint64_t seed;
    int threads;                   /* compute threads, 0 = all cores */
    tl_augment_cfg augment;
    tl_mix_mode mix;               /* image-level mixup/cutmix (baseline without label maps) */
    float mix_alpha;
    float eval_every_epochs;       /* 0 = only at the end */
    float checkpoint_every_epochs; /* 0 = only at the end */
    int loader_threads;            /* 0 = automatic */
    int prefetch_batches;
    int cache_mb;                  /* decoded-image cache, 0 = off */
    /* train: fine-tuning recipe */
    float layer_decay;             /* train.layer_decay, (0, 1]; 1 = off (default) */
    int freeze;                    /* train.freeze: tl_freeze, default TL_FREEZE_NONE */
    int micro_batches;             /* train.micro_batches: divides batch_size; default 1 */
    /* distributed */
    int ranks;                     /* distributed.ranks: divides micro_batches; 0 when not given */
    /* model.init: start from trained weights instead of random ones */
    int init;                      /* 1 when model.init is given */
    char init_model[72];           /* model.init.model: a registered model, "" otherwise */
    int64_t init_job;              /* model.init.job_id, 0 otherwise */
    char init_checkpoint[24];      /* model.init.checkpoint: "best" (default), "last" or a step */
    int init_ema;                  /* model.init.ema: -1 as the source has them (default), 0 raw, 1 EMA */
    int init_head;                 /* model.init.head: -1 default (keep when the class counts are equal,
                                    * else reinit), or a tl_head_mode */
    unsigned init_model_fields;    /* bit f set when model field f (tl_jobspec_model_field order) was given */
    /* filled by the caller before tl_train_run (the daemon resolves the source; `tokenlabd run --init`
     * takes a file) */
    char init_weights[PATH_MAX];   /* the source's safetensors file */
    int init_from_ema;             /* load its EMA weights (TL_CKPT_FROM_EMA) */
} tl_train_spec;

/* The spec's documented defaults (schema/jobspec.md), every path empty. */
void tl_jobspec_defaults(tl_train_spec *s);
/* Parses and validates. data_root: when not NULL, dataset paths must be
 * relative to it (no absolute paths, no "..", no symlink escaping it) and
 * are resolved against it; when NULL, paths are taken as given (relative to
 * the working folder). Checks that the folders and the label-map file exist.
 * With model.init, the model object may omit every other field and may not
 * name a preset; the fields it gives are checked one by one (type and range)
 * and kept in out->model, the others are left 0 until tl_jobspec_apply_init
 * merges the source's configuration (which the caller must call before
 * tl_train_run; tl_train_run applies it again, which changes nothing). */
int tl_jobspec_parse(const char *json, const char *data_root, tl_train_spec *out, tl_spec_error *err);
/* With model.init, the architecture comes from the source: s->model becomes source's configuration with
 * the spec's img_size, num_classes and drop_path_rate where it gives them; any other model field the spec
 * gives that differs from the source is refused at its pointer with both values ("/model/embed_dim: the
 * source has 192, the spec 384; the architecture comes from the source"), and so is a patch_size change.
 * model.init.head "keep" with different class counts is refused at /model/init/head. Without model.init,
 * does nothing. 0, or -1 with e.
 * num_classes: the rule of every job holds ("num_classes is set from the training data's classes when
 * they differ"): when s->train_dir can be listed, s->model.num_classes becomes its number of class
 * folders (tl_dataset_count_classes), and that count is what "keep" is checked against. The result is
 * validated (tl_config_validate, refusals at /model/<field>); s->drop_path becomes the merged rate.
 * Idempotent: applying it twice against the same source gives the same spec. */
int tl_jobspec_apply_init(tl_train_spec *s, const tl_config *source, tl_spec_error *e);
/* "pointer: message" or "message" when the pointer is empty. */
void tl_spec_error_format(const tl_spec_error *e, char *buf, size_t len);

/* The kind of a job document ("train", "annotate", ...) into kind (16 bytes); -1 with an error
 * (pointer "/kind") when the document is not a JSON object with a string "kind". A document that
 * is not valid JSON is refused as tl_jobspec_parse refuses it (pointer "", "not valid JSON ...").
 * Any kind that fits is returned (the caller dispatches and refuses kinds it does not know). */
int tl_jobspec_kind(const char *json, char *kind, size_t len, tl_spec_error *err);

#endif
