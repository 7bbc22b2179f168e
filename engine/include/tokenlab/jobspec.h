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
} tl_train_spec;

/* The spec's documented defaults (schema/jobspec.md), every path empty. */
void tl_jobspec_defaults(tl_train_spec *s);
/* Parses and validates. data_root: when not NULL, dataset paths must be
 * relative to it (no absolute paths, no "..", no symlink escaping it) and
 * are resolved against it; when NULL, paths are taken as given (relative to
 * the working folder). Checks that the folders and the label-map file exist. */
int tl_jobspec_parse(const char *json, const char *data_root, tl_train_spec *out, tl_spec_error *err);
/* "pointer: message" or "message" when the pointer is empty. */
void tl_spec_error_format(const tl_spec_error *e, char *buf, size_t len);

/* The kind of a job document ("train", "annotate", ...) into kind (16 bytes); -1 with an error
 * (pointer "/kind") when the document is not a JSON object with a string "kind". A document that
 * is not valid JSON is refused as tl_jobspec_parse refuses it (pointer "", "not valid JSON ...").
 * Any kind that fits is returned (the caller dispatches and refuses kinds it does not know). */
int tl_jobspec_kind(const char *json, char *kind, size_t len, tl_spec_error *err);

#endif
