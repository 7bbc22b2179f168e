/*
 * annotate.h: the machine annotator: a trained LV-ViT run over every image of
 * a dataset, writing the top-k logits of its aux head at every token location
 * into a label-map file (labelmap.h format), keyed by the image's path
 * relative to the dataset root, for token-labeling training of other models
 * (docs/METHOD.md sections 1 and 5).
 *
 * Sources: annotate_spec.c (the spec: defaults and parse), annotate.c (the
 * run) with annotate_parts.c (its part files, internal). The position
 * embedding's resampling is a model operation (tl_model_copy_resized,
 * model.h).
 *
 * annotate.c owns, for the duration of tl_annotate_run, on the calling
 * thread: the dataset, the model (built at the annotation size; the position
 * embedding interpolated when that differs from the checkpoint's), an eval
 * context and its pool, and the run folder's part files. Hooks are called on
 * the calling thread.
 *
 * Each image is taken whole: resized to size x size (tl_transform_full, no
 * crop), so that the crop boxes of training line up with the map (the map is
 * g x g with g = size / patch_size). Images are processed in dataset order in
 * batches of batch_size fixed by index ([i*B, (i+1)*B)); an unreadable image
 * is skipped (no entry), counted and logged.
 *
 * Restart safety: every part_images images (a multiple of batch_size) the
 * records so far are written to <run_dir>/part-<n>.tlpart crash-safely (temp
 * file, fsync, rename, fsync of the folder); a run that finds parts resumes
 * after the last complete one. At the end the parts are merged, in dataset
 * order, into the output label map (crash-safe, by the labelmap writer) and
 * removed. Because batches are fixed by index, a resumed run writes a file
 * byte-identical to an uninterrupted one.
 */
#ifndef TL_ANNOTATE_H
#define TL_ANNOTATE_H

#include <stddef.h>
#include <stdint.h>

#include "tokenlab/jobspec.h"
#include "tokenlab/train.h"

typedef struct {
    char kind[16];                 /* "annotate" */
    char name[128];
    /* source: exactly one of a registered model or a training job's checkpoint (resolved by the daemon) */
    char source_model[72];         /* "" when source.job_id is given */
    int64_t source_job;            /* 0 when source.model is given */
    char source_checkpoint[24];    /* "best" (default), "last" or a step */
    int source_ema;                /* -1: as the checkpoint has them (default), 0 raw, 1 EMA */
    /* data; paths resolved (absolute) after parsing */
    char images_dir[PATH_MAX];     /* data.images: a class-folder dataset */
    char data_root[PATH_MAX];      /* the canonical data root the paths were confined to; "" when none */
    char out_path[PATH_MAX];       /* data.out: the label-map file to write (".tllm") */
    /* annotate */
    int size;                      /* input side; 0 = the model's img_size (must be a multiple of patch_size) */
    int topk;                      /* logits kept per location, 1..K, default 5 */
    int batch_size;                /* default 32 */
    int threads;                   /* compute threads, 0 = all cores */
    int part_images;               /* images per part file, default 2048 (rounded up to a multiple of batch_size) */
    /* filled by the caller before tl_annotate_run (the daemon resolves the source; `tokenlabd run` takes a path) */
    char weights_path[PATH_MAX];   /* a safetensors checkpoint */
    int from_ema;                  /* load the checkpoint's EMA weights (TL_CKPT_FROM_EMA) */
} tl_annotate_spec;

/* The spec's defaults (kind "annotate", checkpoint "best", ema -1, size 0, topk 5, batch_size 32,
 * threads 0, part_images 2048, everything else empty). */
void tl_annotate_defaults(tl_annotate_spec *s);

/* Parses and validates an annotate spec (schema/annotatespec.schema.json): strict like
 * tl_jobspec_parse (unknown fields refused at every level, JSON pointers in errors). With a data
 * root, data.images and data.out are relative to it (no "..", no absolute paths, no symlink
 * escaping it); data.images must be a folder; data.out must end in ".tllm", its folder must exist
 * and it must not be a folder. The source object must hold exactly one of "model" (a model name)
 * or "job_id" (with optional "checkpoint" and "ema"). */
int tl_annotate_spec_parse(const char *json, const char *data_root, tl_annotate_spec *out, tl_spec_error *err);

typedef struct {
    int64_t done;                  /* images processed (written or skipped) */
    int64_t total;                 /* images in the dataset */
    int64_t skipped;               /* unreadable images so far */
    double img_per_s;              /* over the recent batches */
    double eta_seconds;
} tl_annotate_report;

typedef struct {
    void (*on_start)(int64_t done, int64_t total, void *user);  /* after resume is known */
    void (*on_progress)(const tl_annotate_report *r, void *user); /* after each batch */
    /* before a part file is written; 0, or an errno value: the part is not written and the run fails
     * (DISK_FULL for ENOSPC or EDQUOT, IO_ERROR otherwise), as for training (train.h) */
    int (*before_checkpoint)(int64_t done, void *user);
    void (*on_checkpoint)(const char *path, int64_t done, void *user);
    void (*on_log)(const char *msg, void *user);
    int (*should_stop)(void *user);                               /* checked after each batch */
    void *user;
} tl_annotate_hooks;

/* Runs (or resumes) the annotation. The model's classes must be the dataset's (DATA_ERROR
 * otherwise: the map is meant for token-labeling training on that dataset); size must be a
 * multiple of the model's patch_size and topk at most its classes (CONFIG_ERROR). The part-file
 * format and the resume rules are documented at the top of annotate_parts.c and in
 * schema/annotatespec.md. Status as for training: SUCCEEDED (the file is written),
 * STOPPED (should_stop; a part was written), FAILED (reason CONFIG_ERROR, DATA_ERROR, IO_ERROR,
 * DISK_FULL (a write found the disk full: the parts written so far and any older output are kept),
 * OUT_OF_MEMORY). res->step = images done, res->skipped_images the count skipped. */
tl_train_status tl_annotate_run(const tl_annotate_spec *spec, const char *run_dir, const tl_annotate_hooks *hooks,
                                tl_train_result *res);

#endif
