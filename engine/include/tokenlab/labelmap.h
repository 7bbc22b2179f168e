/*
 * labelmap.h: token-label maps (the machine annotator's output), read and
 * written by engine/data/labelmap.c (docs/METHOD.md section 5); the
 * per-sample targets built from them are targets.h's.
 *
 * labelmap.c owns the single-file format (documented in schema/labelmap.md):
 * a fixed 72-byte header (magic "TLLMAP01", version, K classes, k top entries, map
 * size h x w, entry count, offsets), one record per image in insertion order
 * (k*h*w float16 logits, then k*h*w uint16 class indices, layout [k][h][w]),
 * and a key table sorted by key (the image path relative to the dataset
 * root) for binary search. The reader memory-maps the file and validates the
 * header, every size and offset, and the key table (sorted, unique, in
 * bounds) on open; class indices are range-checked when an entry is read.
 * An open map is read-only and may be shared by loader threads.
 * The writer streams records to a temporary file and writes the key table
 * at finish (crash-safe: temp file, fsync, rename, fsync of the folder).
 */
#ifndef TL_LABELMAP_H
#define TL_LABELMAP_H

#include <stddef.h>
#include <stdint.h>

#define TL_LABELMAP_MAX_CLASSES 65535

typedef struct tl_labelmap tl_labelmap;

/* Opens and validates. expect_classes > 0 also requires K == expect_classes. */
tl_labelmap *tl_labelmap_open(const char *path, int expect_classes, char *err, size_t errlen);
void tl_labelmap_close(tl_labelmap *lm);                  /* NULL is fine */
int tl_labelmap_num_classes(const tl_labelmap *lm);       /* K */
int tl_labelmap_topk(const tl_labelmap *lm);              /* k entries kept per location */
int tl_labelmap_h(const tl_labelmap *lm);                 /* map height */
int tl_labelmap_w(const tl_labelmap *lm);                 /* map width */
int64_t tl_labelmap_count(const tl_labelmap *lm);         /* entries (images) */
/* Entry of a key (path relative to the dataset root, '/' separators), or -1. */
int64_t tl_labelmap_find(const tl_labelmap *lm, const char *key);
/* Key of the i-th entry in key order (for listing). */
const char *tl_labelmap_key(const tl_labelmap *lm, int64_t i, int64_t *entry);
/* Decodes entry e into values (k,h,w) float and indices (k,h,w). -1 with a
 * reason if an index is >= K. */
int tl_labelmap_read(const tl_labelmap *lm, int64_t e, float *values, int32_t *indices, char *err, size_t errlen);

typedef struct tl_labelmap_writer tl_labelmap_writer;
/* Starts writing path (via a temporary file next to it, a write stream of files.h). Every writer function
 * that fails leaves errno set to the cause of a failed write (ENOSPC or EDQUOT: the disk is full), 0 for
 * a refusal of its input; the file at path is never touched until finish renames over it. */
tl_labelmap_writer *tl_labelmap_writer_new(const char *path, int K, int k, int h, int w, char *err, size_t errlen);
/* Adds one image's map; refuses a duplicate key or an index outside [0,K). */
int tl_labelmap_writer_add(tl_labelmap_writer *wr, const char *key, const float *values /*(k,h,w)*/,
                           const int32_t *indices /*(k,h,w)*/, char *err, size_t errlen);
/* Writes the key table and header, fsyncs and renames into place. Frees wr. */
int tl_labelmap_writer_finish(tl_labelmap_writer *wr, char *err, size_t errlen);
/* Abandons the file (removes the temporary). Frees wr. */
void tl_labelmap_writer_abort(tl_labelmap_writer *wr);

#endif
