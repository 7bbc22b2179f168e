/*
 * annotate_parts.h: the annotator's part files (<run_dir>/part-NNNNN.tlpart):
 * the writer that streams one part crash-safely and the reader that
 * validates a part in full (on resume and at the merge). The format is
 * documented at the top of annotate_parts.c. Internal to engine/jobs;
 * annotate.c is the only user.
 *
 * Owns nothing but the writer's open file. One thread (the annotating run's).
 * Every refusal is an I/O error of the run: -1 with a message in err, which
 * the caller reports with reason IO_ERROR.
 */
#ifndef TL_ANNOTATE_PARTS_H
#define TL_ANNOTATE_PARTS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/fnv.h"
#include "tokenlab/dataset.h"

#define TL_PART_MAGIC "TLPART01"
#define TL_PART_VERSION 1u
#define TL_PART_KEY_MAX 4096     /* longest record key (a dataset-relative path) */
#define TL_PART_F16_MAX 65504.0f /* logits are clamped to float16's range */

/* What a run expects of its part files, and the scratch one record is read into. */
typedef struct {
    const char *run_dir;
    int K, k, g, B;          /* classes, top entries, map side (g x g), batch size */
    int64_t total;           /* images in the dataset */
    uint64_t fingerprint;    /* the run's (see annotate.c's setup) */
    const tl_dataset *ds;    /* record keys must be its relative paths */
    float *vals;             /* (k,g*g) one record's logits */
    uint16_t *idx16;         /* (k,g*g) its class indices as stored */
    int32_t *idx32;          /* (k,g*g) the same, widened for the label-map writer */
} tl_parts;

/* The part being written: placeholder header, records streamed, then the header. */
typedef struct {
    FILE *f;                 /* NULL when no part is open */
    char tmp[PATH_MAX];      /* part-NNNNN.tlpart.tmp while it is written */
    char path[PATH_MAX];     /* part-NNNNN.tlpart once finished */
    int64_t start;           /* first dataset index covered */
    int64_t records;         /* counted by tl_part_write_record */
    int64_t skipped;         /* counted by the caller as it skips unreadable images */
    uint64_t bytes;          /* payload written */
    tl_fnv sum;              /* payload checksum */
} tl_part_writer;

/* <run_dir>/part-NNNNN.tlpart (".tmp" appended when tmp) into out (PATH_MAX); -1 when too long. */
int tl_part_name(const char *run_dir, int n, int tmp, char *out);

/* Opens part n, covering images from start, as a temporary file (a write stream of files.h) with a
 * placeholder header. -1 with a message (and errno) when the path is too long or the file cannot be
 * written. */
int tl_part_begin(const tl_parts *ps, int n, int64_t start, tl_part_writer *w, char *err, size_t errlen);

/* Appends the record of image index: its key (klen bytes, 1..TL_PART_KEY_MAX, no NUL), then
 * ps->vals and ps->idx16, and counts it. -1 with errno on a short write. */
int tl_part_write_record(const tl_parts *ps, tl_part_writer *w, uint32_t index, const char *key, size_t klen);

/* Writes the header of a part ending at end (exclusive), fsyncs, renames it into place and fsyncs
 * the folder; the writer is closed either way. -1 with a message and errno (ENOSPC: the disk is
 * full; the temporary file removed). */
int tl_part_finish(const tl_parts *ps, tl_part_writer *w, int64_t end, char *err, size_t errlen);

/* Closes and removes a part left unfinished (a failed run); nothing when none is open. */
void tl_part_abort(tl_part_writer *w);

/* Called by tl_part_read for each record, its logits in ps->vals and classes in ps->idx32. */
typedef int (*tl_part_record_fn)(const tl_parts *ps, const char *key, void *user);

/* Reads and validates part n, expected to start at start; each record goes to fn when not NULL.
 * 0 with *end and *skipped the part's; -1 with a message when the part is refused; 1 when fn
 * returned nonzero (its own failure, err untouched). */
int tl_part_read(const tl_parts *ps, int n, int64_t start, int64_t *end, int64_t *skipped, tl_part_record_fn fn,
                 void *user, char *err, size_t errlen);

/* The number of the run folder's parts, which must be named part-0..n-1 without gaps; removes the
 * temporaries of interrupted parts, telling on_removed (may be NULL) each path. -1 with a message
 * otherwise. */
int tl_part_list(const tl_parts *ps, int *nparts, void (*on_removed)(const char *path, void *user), void *user,
                 char *err, size_t errlen);

#endif
