/*
 * safetensors.c: strict reader and crash-safe writer of safetensors files.
 *
 * Owns:
 *   - tl_st_file: one malloc'd copy of the whole file, the parsed tensor table
 *     (names malloc'd, data pointers into the file copy), the metadata pairs
 *     and an index of the tensors sorted by name for lookups.
 *   - tl_st_writer: copies of the names and metadata; tensor data pointers
 *     are borrowed from the caller until tl_st_write returns.
 * Threads: neither object is shared; one thread uses a given file or writer at
 * a time. There is no global state, so different objects may be used on
 * different threads concurrently.
 *
 * Reading: the 8-byte length, the JSON header (cJSON) and every tensor entry
 * are checked before any tensor is exposed; all size arithmetic is checked
 * for overflow, so a hostile header can never make us read outside the
 * buffer. The data area may contain gaps (alignment padding) but no overlaps.
 *
 * Writing: header padded with spaces so the data area starts at a multiple of
 * 8, tensors packed in the order added with no gaps (Hugging Face's
 * safetensors refuses gaps, and our files must load there). The file is
 * written to a unique temporary file beside it (tl_file_create_temp: "<path>.tmp.XXXXXX",
 * created exclusively), flushed and fsync'ed, renamed over path, and the
 * containing folder is fsync'ed (tl_file_commit).
 *
 * Assumes a little-endian host (the format is little-endian).
 *
 * Length: about 800 lines, kept in one file on purpose. The reader and the
 * writer share the format's rules (the dtype table, the checked shape
 * arithmetic, the metadata key) and must stay their exact mirror images;
 * splitting them would put those rules behind an internal header for two
 * halves that always change together. The reader's checks are one ordered
 * sequence that reads best in one place.
 */
#include "core/pages.h"
#include "tokenlab/files.h"
#include "tokenlab/base.h"
#include "tokenlab/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000) /* same cap as the reference implementation */
#define ST_MAX_INT ((double)9007199254740992.0)     /* 2^53: exact in a JSON double */
#define ST_META_KEY "__metadata__"

static const char *const dtype_names[TL_ST_NDTYPES] = {"F32", "F16", "BF16", "F64", "I64",
                                                       "I32", "I16", "I8",   "U8",  "BOOL"};
static const size_t dtype_sizes[TL_ST_NDTYPES] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};

struct tl_st_file {
    unsigned char *buf;   /* the whole file */
    size_t len;
    tl_st_tensor *tensors; /* file (header) order */
    int count;
    int *by_name;          /* indices sorted by name */
    char **meta_keys, **meta_vals;
    int nmeta;
};

typedef struct {
    char *name;
    tl_st_dtype dtype;
    int ndim;
    int64_t shape[TL_ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
} st_wentry;

struct tl_st_writer {
    st_wentry *ents;
    int count, cap;
    char **meta_keys, **meta_vals;
    int nmeta, meta_cap;
};

/* ------------------------------------------------------------------ helpers */

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

void tl_st_format_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t at = 0;
    int w = snprintf(buf, n, "[");
    at = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < ndim && at < n; i++) {
        w = snprintf(buf + at, n - at, "%s%" PRId64, i ? "," : "", shape[i]);
        if (w < 0) return;
        at += (size_t)w;
    }
    if (at < n) snprintf(buf + at, n - at, "]");
}

const char *tl_st_dtype_name(tl_st_dtype d) {
    return ((int)d >= 0 && d < TL_ST_NDTYPES) ? dtype_names[d] : "?";
}

size_t tl_st_dtype_size(tl_st_dtype d) {
    return ((int)d >= 0 && d < TL_ST_NDTYPES) ? dtype_sizes[d] : 0;
}

static int dtype_from_name(const char *s, tl_st_dtype *out) {
    for (int i = 0; i < TL_ST_NDTYPES; i++) {
        if (strcmp(s, dtype_names[i]) == 0) {
            *out = (tl_st_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* numel and nbytes of dtype x shape with overflow checks; -1 on overflow. */
static int shape_bytes(tl_st_dtype dt, int ndim, const int64_t *shape, size_t *numel, size_t *nbytes) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX) return -1;
        if (__builtin_mul_overflow(n, (size_t)shape[i], &n)) return -1;
    }
    size_t b;
    if (__builtin_mul_overflow(n, dtype_sizes[dt], &b)) return -1;
    *numel = n;
    *nbytes = b;
    return 0;
}

/* ------------------------------------------------------------------ reader */

void tl_st_close(tl_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->count; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->tensors);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->buf);
    free(f);
}

/* A JSON number that is an integer in [lo, 2^53]; -1 otherwise. */
static int json_int(const cJSON *j, double lo, int64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= lo && d <= ST_MAX_INT) || d != (double)(int64_t)d) return -1;
    *out = (int64_t)d;
    return 0;
}

static int parse_meta(tl_st_file *f, const cJSON *meta, char *err, size_t errlen) {
    if (!cJSON_IsObject(meta)) {
        tl_seterr(err, errlen, "\"%s\" is not a JSON object", ST_META_KEY);
        return -1;
    }
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) goto oom;
    for (const cJSON *c = meta->child; c; c = c->next) {
        if (!cJSON_IsString(c) || !c->valuestring) {
            tl_seterr(err, errlen, "metadata '%s' is not a string", c->string ? c->string : "");
            return -1;
        }
        for (int i = 0; i < f->nmeta; i++) {
            if (strcmp(f->meta_keys[i], c->string) == 0) {
                tl_seterr(err, errlen, "duplicate metadata key '%s'", c->string);
                return -1;
            }
        }
        char *k = xstrdup(c->string), *v = xstrdup(c->valuestring);
        if (!k || !v) {
            free(k);
            free(v);
            goto oom;
        }
        f->meta_keys[f->nmeta] = k;
        f->meta_vals[f->nmeta] = v;
        f->nmeta++;
    }
    return 0;
oom:
    tl_seterr(err, errlen, "out of memory reading metadata");
    return -1;
}

static int parse_shape(tl_st_tensor *t, const cJSON *shape, char *err, size_t errlen) {
    if (!cJSON_IsArray(shape)) {
        tl_seterr(err, errlen, "tensor '%s': shape is not an array", t->name);
        return -1;
    }
    int nd = cJSON_GetArraySize(shape);
    if (nd > TL_ST_MAX_DIMS) {
        tl_seterr(err, errlen, "tensor '%s': shape has %d dimensions, at most %d allowed", t->name, nd, TL_ST_MAX_DIMS);
        return -1;
    }
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        if (cJSON_IsNumber(d) && d->valuedouble < 0) {
            tl_seterr(err, errlen, "tensor '%s': shape dimension %d is negative (%g)", t->name, i, d->valuedouble);
            return -1;
        }
        if (json_int(d, 0, &t->shape[i]) != 0) {
            tl_seterr(err, errlen, "tensor '%s': shape dimension %d is not a non-negative integer", t->name, i);
            return -1;
        }
    }
    t->ndim = nd;
    return 0;
}

static int parse_offsets(const tl_st_tensor *t, const cJSON *offs, uint64_t *begin, uint64_t *end, char *err,
                         size_t errlen) {
    int64_t b, e;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
        tl_seterr(err, errlen, "tensor '%s': data_offsets is not an array of 2 integers", t->name);
        return -1;
    }
    if (json_int(offs->child, 0, &b) != 0 || json_int(offs->child->next, 0, &e) != 0) {
        tl_seterr(err, errlen, "tensor '%s': data_offsets are not non-negative integers", t->name);
        return -1;
    }
    if (e < b) {
        tl_seterr(err, errlen, "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] end before begin", t->name, b, e);
        return -1;
    }
    *begin = (uint64_t)b;
    *end = (uint64_t)e;
    return 0;
}

static const cJSON *need_field(const tl_st_tensor *t, const cJSON *entry, const char *key, char *err,
                               size_t errlen) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(entry, key);
    if (!j) tl_seterr(err, errlen, "tensor '%s': missing \"%s\"", t->name, key);
    return j;
}

/* Checks the dtype, shape and offsets of one entry; sets t->data. */
static int parse_tensor(tl_st_tensor *t, const cJSON *entry, const unsigned char *data, size_t data_len,
                        uint64_t *begin, char *err, size_t errlen) {
    if (!cJSON_IsObject(entry)) {
        tl_seterr(err, errlen, "tensor '%s': entry is not a JSON object", t->name);
        return -1;
    }
    const cJSON *dt = need_field(t, entry, "dtype", err, errlen);
    if (!dt) return -1;
    const cJSON *shape = need_field(t, entry, "shape", err, errlen);
    if (!shape) return -1;
    const cJSON *offs = need_field(t, entry, "data_offsets", err, errlen);
    if (!offs) return -1;
    if (!cJSON_IsString(dt) || !dt->valuestring) {
        tl_seterr(err, errlen, "tensor '%s': dtype is not a string", t->name);
        return -1;
    }
    if (dtype_from_name(dt->valuestring, &t->dtype) != 0) {
        tl_seterr(err, errlen, "tensor '%s': unknown dtype '%s'", t->name, dt->valuestring);
        return -1;
    }
    if (parse_shape(t, shape, err, errlen) != 0) return -1;
    uint64_t b, e;
    if (parse_offsets(t, offs, &b, &e, err, errlen) != 0) return -1;
    char sh[128];
    tl_st_format_shape(sh, sizeof sh, t->ndim, t->shape);
    if (shape_bytes(t->dtype, t->ndim, t->shape, &t->numel, &t->nbytes) != 0) {
        tl_seterr(err, errlen, "tensor '%s': %s x %s overflows", t->name, dtype_names[t->dtype], sh);
        return -1;
    }
    if (e > data_len) {
        tl_seterr(err, errlen, "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] beyond the data area of %zu bytes",
                  t->name, b, e, data_len);
        return -1;
    }
    if (e - b != t->nbytes) {
        tl_seterr(err, errlen, "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] disagree with %s x %s = %zu bytes",
                  t->name, b, e, dtype_names[t->dtype], sh, t->nbytes);
        return -1;
    }
    t->data = data + b;
    *begin = b;
    return 0;
}

typedef struct {
    uint64_t begin, end;
    int idx;
} st_span;

static int cmp_span(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int check_duplicates_and_overlaps(tl_st_file *f, const uint64_t *begins, char *err, size_t errlen);

/* Parses the header JSON (already NUL-terminated in hdr). */
static int parse_header(tl_st_file *f, const char *hdr, size_t hlen, char *err, size_t errlen) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(hdr, &end, 0);
    uint64_t *begins = NULL;
    int rc = -1;
    if (!root) {
        tl_seterr(err, errlen, "header is not valid JSON (near byte %zu)",
                  end ? (size_t)(end - hdr) : (size_t)0);
        goto fail;
    }
    for (const char *p = end; p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            tl_seterr(err, errlen, "header has trailing bytes after the JSON object (byte %zu)", (size_t)(p - hdr));
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        tl_seterr(err, errlen, "header is not a JSON object");
        goto fail;
    }
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof(tl_st_tensor));
    begins = calloc((size_t)n + 1, sizeof(uint64_t));
    if (!f->tensors || !begins) {
        tl_seterr(err, errlen, "out of memory for %d tensor entries", n);
        goto fail;
    }
    const unsigned char *data = f->buf + 8 + hlen;
    size_t data_len = f->len - 8 - hlen;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, ST_META_KEY) == 0) {
            if (f->meta_keys) {
                tl_seterr(err, errlen, "duplicate \"%s\"", ST_META_KEY);
                goto fail;
            }
            if (parse_meta(f, c, err, errlen) != 0) goto fail;
            continue;
        }
        tl_st_tensor *t = &f->tensors[f->count];
        t->name = xstrdup(c->string);
        if (!t->name) {
            tl_seterr(err, errlen, "out of memory");
            goto fail;
        }
        f->count++;
        if (parse_tensor(t, c, data, data_len, &begins[f->count - 1], err, errlen) != 0) goto fail;
    }
    if (check_duplicates_and_overlaps(f, begins, err, errlen) != 0) goto fail;
    rc = 0;
fail:
    free(begins);
    cJSON_Delete(root);
    return rc;
}

/* Merge sort of tensor indices by name (qsort has no context argument). */
static void merge_sort_idx(int *idx, int *tmp, int n, const tl_st_tensor *ts) {
    if (n < 2) return;
    int h = n / 2;
    merge_sort_idx(idx, tmp, h, ts);
    merge_sort_idx(idx + h, tmp, n - h, ts);
    int i = 0, j = h, k = 0;
    while (i < h && j < n) tmp[k++] = strcmp(ts[idx[i]].name, ts[idx[j]].name) <= 0 ? idx[i++] : idx[j++];
    while (i < h) tmp[k++] = idx[i++];
    while (j < n) tmp[k++] = idx[j++];
    memcpy(idx, tmp, sizeof(int) * (size_t)n);
}

/* Builds the by-name index, refuses duplicate names and overlapping data. */
static int check_duplicates_and_overlaps(tl_st_file *f, const uint64_t *begins, char *err, size_t errlen) {
    int rc = -1;
    int *tmp = NULL;
    st_span *spans = NULL;
    f->by_name = malloc(sizeof(int) * ((size_t)f->count + 1));
    tmp = malloc(sizeof(int) * ((size_t)f->count + 1));
    spans = malloc(sizeof(st_span) * ((size_t)f->count + 1));
    if (!f->by_name || !tmp || !spans) {
        tl_seterr(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < f->count; i++) f->by_name[i] = i;
    merge_sort_idx(f->by_name, tmp, f->count, f->tensors);
    for (int i = 1; i < f->count; i++) {
        const char *a = f->tensors[f->by_name[i - 1]].name, *b = f->tensors[f->by_name[i]].name;
        if (strcmp(a, b) == 0) {
            tl_seterr(err, errlen, "duplicate tensor name '%s'", b);
            goto fail;
        }
    }
    for (int i = 0; i < f->count; i++) {
        spans[i].begin = begins[i];
        spans[i].end = begins[i] + f->tensors[i].nbytes;
        spans[i].idx = i;
    }
    qsort(spans, (size_t)f->count, sizeof(st_span), cmp_span);
    const st_span *far = NULL; /* the non-empty span reaching furthest so far */
    for (int i = 0; i < f->count; i++) {
        const st_span *sp = &spans[i];
        if (sp->end == sp->begin) continue; /* empty tensors occupy no bytes */
        if (far && sp->begin < far->end) {
            tl_seterr(err, errlen,
                      "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor '%s' [%" PRIu64
                      ", %" PRIu64 "]",
                      f->tensors[sp->idx].name, sp->begin, sp->end, f->tensors[far->idx].name, far->begin, far->end);
            goto fail;
        }
        if (!far || sp->end > far->end) far = sp;
    }
    rc = 0;
fail:
    free(tmp);
    free(spans);
    return rc;
}

/* Checks the length prefix, then parses the header. f->buf/len are set. */
static int parse_file(tl_st_file *f, char *err, size_t errlen) {
    if (f->len < 8) {
        tl_seterr(err, errlen, "file is %zu bytes, shorter than the 8-byte header length", f->len);
        return -1;
    }
    uint64_t hlen;
    memcpy(&hlen, f->buf, 8);
    if (hlen > f->len - 8) {
        tl_seterr(err, errlen, "header length %" PRIu64 " is larger than the file (%zu bytes after the length)", hlen,
                  f->len - 8);
        return -1;
    }
    if (hlen > ST_MAX_HEADER) {
        tl_seterr(err, errlen, "header length %" PRIu64 " exceeds the limit of %" PRIu64 " bytes", hlen, ST_MAX_HEADER);
        return -1;
    }
    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr) {
        tl_seterr(err, errlen, "out of memory for a %" PRIu64 "-byte header", hlen);
        return -1;
    }
    memcpy(hdr, f->buf + 8, (size_t)hlen);
    hdr[hlen] = '\0';
    int rc = parse_header(f, hdr, (size_t)hlen, err, errlen);
    free(hdr);
    return rc;
}

/* Takes ownership of buf (malloc'd, len bytes). */
static tl_st_file *open_buffer(unsigned char *buf, size_t len, char *err, size_t errlen) {
    tl_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        free(buf);
        tl_seterr(err, errlen, "out of memory");
        return NULL;
    }
    f->buf = buf;
    f->len = len;
    if (parse_file(f, err, errlen) != 0) {
        tl_st_close(f);
        return NULL;
    }
    return f;
}

tl_st_file *tl_st_open_mem(const void *buf, size_t len, char *err, size_t errlen) {
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy) {
        tl_seterr(err, errlen, "out of memory for %zu bytes", len);
        return NULL;
    }
    if (len) memcpy(copy, buf, len);
    return open_buffer(copy, len, err, errlen);
}

/* Reads the whole file at path into a malloc'd buffer. */
static unsigned char *read_all(const char *path, size_t *len, char *err, size_t errlen) {
    unsigned char *buf = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        tl_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat stt;
    if (fstat(fileno(fp), &stt) != 0) {
        tl_seterr(err, errlen, "%s: fstat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(stt.st_mode)) {
        tl_seterr(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)stt.st_size > SIZE_MAX - 1) {
        tl_seterr(err, errlen, "%s: file too large", path);
        goto fail;
    }
    size_t n = (size_t)stt.st_size;
    buf = malloc(n ? n : 1);
    if (!buf) {
        tl_seterr(err, errlen, "%s: out of memory for %zu bytes", path, n);
        goto fail;
    }
    tl_pages_populate(buf, n);
    if (fread(buf, 1, n, fp) != n || ferror(fp)) {
        tl_seterr(err, errlen, "%s: short read (file changed while reading?)", path);
        goto fail;
    }
    fclose(fp);
    *len = n;
    return buf;
fail:
    free(buf);
    fclose(fp);
    return NULL;
}

tl_st_file *tl_st_open(const char *path, char *err, size_t errlen) {
    size_t len = 0;
    unsigned char *buf = read_all(path, &len, err, errlen);
    if (!buf) return NULL;
    char sub[512];
    tl_st_file *f = open_buffer(buf, len, sub, sizeof sub);
    if (!f) tl_seterr(err, errlen, "%s: %s", path, sub);
    return f;
}

int tl_st_count(const tl_st_file *f) { return f ? f->count : 0; }

const tl_st_tensor *tl_st_at(const tl_st_file *f, int i) {
    return (f && i >= 0 && i < f->count) ? &f->tensors[i] : NULL;
}

const tl_st_tensor *tl_st_get(const tl_st_file *f, const char *name) {
    if (!f || !name) return NULL;
    int lo = 0, hi = f->count - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const tl_st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *tl_st_meta(const tl_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

/* IEEE 754 binary16 -> binary32, exact (subnormals, inf, nan included). */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    float f;
    if (exp == 0) {
        f = (float)mant * 0x1p-24f; /* zero or subnormal: exact in float */
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf, or nan keeping the payload */
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

int tl_st_read_f32(const tl_st_tensor *t, float *dst) {
    if (!t || (!dst && t->numel)) return -1;
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case TL_ST_F32:
        if (t->numel) memcpy(dst, p, t->numel * 4);
        return 0;
    case TL_ST_F16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = half_to_float(h);
        }
        return 0;
    case TL_ST_BF16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return 0;
    case TL_ST_F64:
        for (size_t i = 0; i < t->numel; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    default:
        return -1;
    }
}

/* ------------------------------------------------------------------ writer */

tl_st_writer *tl_st_writer_new(void) { return calloc(1, sizeof(tl_st_writer)); }

void tl_st_writer_free(tl_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->count; i++) free(w->ents[i].name);
    for (int i = 0; i < w->nmeta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->ents);
    free(w->meta_keys);
    free(w->meta_vals);
    free(w);
}

int tl_st_add(tl_st_writer *w, const char *name, tl_st_dtype dtype, int ndim, const int64_t *shape,
              const void *data) {
    if (!w || !name || (int)dtype < 0 || dtype >= TL_ST_NDTYPES || ndim < 0 || ndim > TL_ST_MAX_DIMS) return -1;
    if (ndim > 0 && !shape) return -1;
    if (strcmp(name, ST_META_KEY) == 0) return -1;
    for (int i = 0; i < w->count; i++)
        if (strcmp(w->ents[i].name, name) == 0) return -1;
    st_wentry e = {0};
    size_t numel;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (double)shape[i] > ST_MAX_INT) return -1;
        e.shape[i] = shape[i];
    }
    if (shape_bytes(dtype, ndim, e.shape, &numel, &e.nbytes) != 0) return -1;
    if (e.nbytes && !data) return -1;
    if (w->count == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        st_wentry *p = realloc(w->ents, sizeof(st_wentry) * (size_t)cap);
        if (!p) return -1;
        w->ents = p;
        w->cap = cap;
    }
    e.name = xstrdup(name);
    if (!e.name) return -1;
    e.dtype = dtype;
    e.ndim = ndim;
    e.data = data;
    w->ents[w->count++] = e;
    return 0;
}

int tl_st_set_meta(tl_st_writer *w, const char *key, const char *value) {
    if (!w || !key || !value) return -1;
    char *v = xstrdup(value);
    if (!v) return -1;
    for (int i = 0; i < w->nmeta; i++) {
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_vals[i]);
            w->meta_vals[i] = v;
            return 0;
        }
    }
    if (w->nmeta == w->meta_cap) {
        int cap = w->meta_cap ? 2 * w->meta_cap : 8;
        char **k2 = realloc(w->meta_keys, sizeof(char *) * (size_t)cap);
        if (k2) w->meta_keys = k2;
        char **v2 = realloc(w->meta_vals, sizeof(char *) * (size_t)cap);
        if (v2) w->meta_vals = v2;
        if (!k2 || !v2) {
            free(v);
            return -1;
        }
        w->meta_cap = cap;
    }
    char *k = xstrdup(key);
    if (!k) {
        free(v);
        return -1;
    }
    w->meta_keys[w->nmeta] = k;
    w->meta_vals[w->nmeta] = v;
    w->nmeta++;
    return 0;
}

static size_t align8(size_t x) { return (x + 7) & ~(size_t)7; }

/* Adds an exact integer as raw JSON text (cJSON numbers are doubles). */
static int add_int(cJSON *arr, uint64_t v) {
    char num[32];
    snprintf(num, sizeof num, "%" PRIu64, v);
    cJSON *j = cJSON_CreateRaw(num);
    return (j && cJSON_AddItemToArray(arr, j)) ? 0 : -1;
}

static cJSON *entry_json(const st_wentry *e, size_t begin) {
    cJSON *o = cJSON_CreateObject();
    cJSON *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
    if (!o || !shape || !offs) goto fail;
    if (!cJSON_AddStringToObject(o, "dtype", dtype_names[e->dtype])) goto fail;
    for (int i = 0; i < e->ndim; i++)
        if (add_int(shape, (uint64_t)e->shape[i]) != 0) goto fail;
    if (add_int(offs, begin) != 0 || add_int(offs, begin + e->nbytes) != 0) goto fail;
    cJSON_AddItemToObject(o, "shape", shape);
    cJSON_AddItemToObject(o, "data_offsets", offs);
    return o;
fail:
    cJSON_Delete(shape);
    cJSON_Delete(offs);
    cJSON_Delete(o);
    return NULL;
}

/* Builds the padded header text; *data_len is the size of the data area. */
static char *build_header(const tl_st_writer *w, size_t *hlen, size_t *data_len) {
    cJSON *root = cJSON_CreateObject();
    char *txt = NULL, *out = NULL;
    if (!root) return NULL;
    if (w->nmeta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, ST_META_KEY);
        if (!meta) goto fail;
        for (int i = 0; i < w->nmeta; i++)
            if (!cJSON_AddStringToObject(meta, w->meta_keys[i], w->meta_vals[i])) goto fail;
    }
    size_t off = 0;
    for (int i = 0; i < w->count; i++) {
        cJSON *e = entry_json(&w->ents[i], off);
        if (!e) goto fail;
        cJSON_AddItemToObject(root, w->ents[i].name, e);
        off += w->ents[i].nbytes;
    }
    txt = cJSON_PrintUnformatted(root);
    if (!txt) goto fail;
    size_t n = strlen(txt), padded = align8(n);
    out = malloc(padded + 1);
    if (!out) goto fail;
    memcpy(out, txt, n);
    memset(out + n, ' ', padded - n);
    out[padded] = '\0';
    *hlen = padded;
    *data_len = off;
fail:
    free(txt);
    cJSON_Delete(root);
    return out;
}

static int write_body(FILE *fp, const tl_st_writer *w, const char *hdr, size_t hlen) {
    uint64_t n = hlen;
    if (fwrite(&n, 8, 1, fp) != 1 || fwrite(hdr, 1, hlen, fp) != hlen) return -1;
    for (int i = 0; i < w->count; i++) {
        const st_wentry *e = &w->ents[i];
        if (e->nbytes && fwrite(e->data, 1, e->nbytes, fp) != e->nbytes) return -1;
    }
    return 0;
}


int tl_st_write(tl_st_writer *w, const char *path, char *err, size_t errlen) {
    char *hdr = NULL, *tmp = NULL;
    FILE *fp = NULL;
    size_t hlen = 0, data_len = 0;
    const char *step = "build header";
    errno = 0;
    if (!w || !path) {
        tl_seterr(err, errlen, "tl_st_write: no writer or path");
        return -1;
    }
    hdr = build_header(w, &hlen, &data_len);
    if (!hdr) goto fail;
    /* the header's data offsets cover exactly the bytes write_body will write */
    size_t body = 0;
    for (int i = 0; i < w->count; i++) body += w->ents[i].nbytes;
    if (TL_NEVER(body != data_len)) {
        errno = EINVAL;
        goto fail;
    }
    size_t tlen = TL_TEMP_NAME_LEN(strlen(path));
    tmp = malloc(tlen);
    if (!tmp) goto fail;
    step = "create the temporary file";
    fp = tl_file_create_temp(path, tmp, tlen);
    if (!fp) goto fail;
    step = "write";
    if (write_body(fp, w, hdr, hlen) != 0) goto fail;
    FILE *f = fp;
    fp = NULL; /* tl_file_commit closes it, and removes the temporary file on failure */
    if (tl_file_commit(f, tmp, path, &step) != 0) {
        free(tmp);
        tmp = NULL;
        goto fail;
    }
    free(tmp);
    free(hdr);
    return 0;
fail:;
    int e = errno;
    if (fp) tl_file_abandon(fp, tmp);
    tl_seterr(err, errlen, "%s: %s failed: %s", path, step, e ? strerror(e) : "out of memory");
    free(tmp);
    free(hdr);
    errno = e;
    return -1;
}
