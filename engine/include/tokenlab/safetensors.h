/*
 * safetensors.h: strict reader and crash-safe writer of the safetensors format
 * (8-byte little-endian header length, JSON header, raw little-endian data).
 *
 * Owns: the file bytes of one open file (read fully into one buffer) and the
 * parsed tensor table. Touched by one thread at a time.
 *
 * The reader never reads out of bounds: it refuses a file shorter than 8 bytes,
 * a header length larger than the file, a header that is not a JSON object, a
 * tensor entry without dtype/shape/data_offsets, an unknown dtype, negative or
 * non-integer dimensions, offsets that are not ordered, fall outside the data
 * area, or disagree with dtype x shape, overlapping tensors, duplicate names,
 * and non-string metadata values. Every refusal says what and which tensor.
 */
#ifndef TL_SAFETENSORS_H
#define TL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TL_ST_F32 = 0, TL_ST_F16, TL_ST_BF16, TL_ST_F64,
    TL_ST_I64, TL_ST_I32, TL_ST_I16, TL_ST_I8, TL_ST_U8, TL_ST_BOOL,
    TL_ST_NDTYPES
} tl_st_dtype;

#define TL_ST_MAX_DIMS 8

typedef struct {
    char *name;
    tl_st_dtype dtype;
    int ndim;                         /* 0 for a scalar */
    int64_t shape[TL_ST_MAX_DIMS];
    size_t numel;                     /* product of shape (1 for a scalar) */
    size_t nbytes;
    const void *data;                 /* inside the file buffer; may be unaligned */
} tl_st_tensor;

typedef struct tl_st_file tl_st_file;

const char *tl_st_dtype_name(tl_st_dtype d);   /* "F32", ... */
size_t tl_st_dtype_size(tl_st_dtype d);
/* A shape as "[720,240]" ("[]" for a scalar) into buf (n bytes), cut short if buf is small; for
 * error messages. */
void tl_st_format_shape(char *buf, size_t n, int ndim, const int64_t *shape);

/* Reads and validates a whole file. NULL on error with a message in err. */
tl_st_file *tl_st_open(const char *path, char *err, size_t errlen);
/* Same from memory (the bytes are copied). */
tl_st_file *tl_st_open_mem(const void *buf, size_t len, char *err, size_t errlen);
/* Unmaps or frees the file; NULL is allowed. Tensor pointers from it become invalid. */
void tl_st_close(tl_st_file *f);
/* The number of tensors in the file. */
int tl_st_count(const tl_st_file *f);
const tl_st_tensor *tl_st_at(const tl_st_file *f, int i);        /* in file order */
const tl_st_tensor *tl_st_get(const tl_st_file *f, const char *name); /* NULL if absent */
/* Metadata value for key, NULL if absent. */
const char *tl_st_meta(const tl_st_file *f, const char *key);
/* Copies a tensor into dst as F32 (from F32, F16, BF16 or F64). -1 otherwise. */
int tl_st_read_f32(const tl_st_tensor *t, float *dst);

/* ---- writer: collects tensors (pointers kept, not copied) then writes ---- */
typedef struct tl_st_writer tl_st_writer;

/* An empty writer (NULL when out of memory); free with tl_st_writer_free (NULL allowed). */
tl_st_writer *tl_st_writer_new(void);
void tl_st_writer_free(tl_st_writer *w);
/* The data pointer must stay valid until tl_st_write returns. Names are copied.
 * Returns -1 on a duplicate name or too many dims. */
int tl_st_add(tl_st_writer *w, const char *name, tl_st_dtype dtype, int ndim, const int64_t *shape,
              const void *data);
/* Sets a "__metadata__" string (a later value for the same key replaces it); 0, or -1 when out of memory. */
int tl_st_set_meta(tl_st_writer *w, const char *key, const char *value);
/* Writes path crash-safely: path.tmp.<pid>, fsync, rename, fsync of the folder.
 * Tensors are packed in the order added with no gaps, as Hugging Face's
 * safetensors requires; the header is space-padded to a multiple of 8. */
/* Writes the file crash-safely (tl_file_create_temp, tl_file_commit): a failure leaves path as it was.
 * 0, or -1 with a message and errno (ENOSPC or EDQUOT: the disk is full; 0: out of memory). */
int tl_st_write(tl_st_writer *w, const char *path, char *err, size_t errlen);

#endif
