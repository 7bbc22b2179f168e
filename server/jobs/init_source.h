/*
 * init_source.h: where a job's weights come from, resolved in one place for
 * both kinds of job that read trained weights: an annotate job's "source"
 * and a fine-tuning job's "model.init" (issue 15). init_source.c owns the
 * rule; jobs.c calls it at submit (refusals become 422 SPEC_INVALID at the
 * field's pointer, nothing is queued) and again when the job starts (a
 * source deleted meanwhile fails the job with DATA_ERROR).
 *
 * The rule: a registered model's weights are its own file (the weights it
 * serves, no EMA copy); a training job's are one of its checkpoint files
 * ("best", "last" or a step, tld_job_checkpoint_file), with its EMA weights
 * when it has them unless the spec says otherwise. Refusals name the field:
 * <prefix>/model, <prefix>/job_id, <prefix>/checkpoint, <prefix>/ema.
 *
 * Pure functions over the store (thread-safe): any thread.
 */
#ifndef TLD_INIT_SOURCE_H
#define TLD_INIT_SOURCE_H

#include <limits.h>
#include <stdint.h>

#include "store/store.h"
#include "tokenlab/jobspec.h"

typedef struct {
    const char *prefix;      /* JSON pointer of the source object: "/source" or "/model/init" */
    const char *model;       /* a registered model's name, or "" / NULL for a job */
    int64_t job_id;          /* a training job's id (when model is empty) */
    const char *checkpoint;  /* "best", "last" or a step in decimal; NULL = "best" */
    int ema;                 /* -1: EMA weights when the source has them; 0: raw; 1: EMA (refused without) */
    int exists_only;         /* 1: only check that the model or job exists (an annotate job at submit) */
    int finished;            /* 1: a job source must have stopped training (fine-tuning) */
} tld_source_req;

typedef struct {
    char path[PATH_MAX];     /* the safetensors file to read */
    int64_t step;            /* the source's training step, -1 unknown */
    int has_ema;             /* the file holds EMA weights */
    int from_ema;            /* read them (the request's ema resolved) */
} tld_source;

/* Resolves q into *out: 0, or -1 with se (pointer under q->prefix, message with the rule). With
 * exists_only, *out is left empty. */
int tld_source_resolve(tld_store *st, const tld_source_req *q, tld_source *out, tl_spec_error *se);

/* For a training spec with model.init (spec->init): resolves the source (tld_source_resolve with
 * prefix "/model/init", finished = 1), reads its configuration (tl_checkpoint_config: a file that is
 * not a valid checkpoint is refused at /model/init/model or /model/init/checkpoint), applies it with
 * tl_jobspec_apply_init (the architecture comes from the source; its refusals keep their pointer), and
 * fills spec->init_weights and spec->init_from_ema. *src (may be NULL) receives the resolved source.
 * Without model.init does nothing and returns 0. -1 with se otherwise. */
int tld_init_prepare(tld_store *st, tl_train_spec *spec, tld_source *src, tl_spec_error *se);

#endif
