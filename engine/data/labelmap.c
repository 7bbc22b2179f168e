/*
 * labelmap.c: the token-label map file (schema/labelmap.md): a validating,
 * memory-mapped reader and a streaming, crash-safe writer.
 *
 * Owns:
 *   - tl_labelmap: a read-only private mapping of the whole file (the file
 *     descriptor is closed right after mmap), a copy of the path for messages,
 *     and key_of_entry[count] (entry -> position in the key table), built while
 *     checking that every entry is referenced exactly once.
 *   - tl_labelmap_writer: its temporary file beside the destination (tl_file_create_temp, records are
 *     written to it as they are added), the keys (one growing blob of
 *     NUL-terminated strings in insertion order), their offsets, a hash set of
 *     the keys for the duplicate check, and one record's encode buffer.
 * Threads: an open tl_labelmap is immutable and may be shared by any number of
 * threads (loader threads call tl_labelmap_find / _read concurrently; _read
 * writes only into the caller's buffers). A writer belongs to one thread.
 *
 * Layout (little-endian; the host must be little-endian too):
 *   header (72 bytes)  magic "TLLMAP01", u32 version = 1, u32 K, u32 k, u32 h,
 *                      u32 w, u32 reserved = 0, u64 count, u64 records_offset,
 *                      u64 keytable_offset, u64 keys_blob_offset, u64 file_size
 *   records            count x (k*h*w float16 logits, k*h*w uint16 indices),
 *                      layout [k][h][w], in insertion order (entry number)
 *   key table          count x {u64 key_offset, u32 key_len, u32 reserved = 0,
 *                      u64 entry}, sorted by key (byte order, a prefix first)
 *   keys blob          the keys, each followed by one NUL (not in key_len)
 * The sections follow each other with no gaps, and the reader insists on it:
 * records_offset == 72, keytable_offset == end of the records,
 * keys_blob_offset == end of the table, file_size == the file's size.
 *
 * The mapping stays valid when the file is replaced by rename (the writer's
 * way); truncating a mapped file in place would fault, so nothing here does.
 *
 * Every size and offset computation on header values is overflow-checked
 * (__builtin_*_overflow) before any pointer into the mapping is formed, so a
 * hostile or truncated file is refused with a reason, never read out of bounds.
 * Errors: -1 / NULL with a message naming the file and the field or rule.
 * Nothing here calls exit() or abort().
 */
#include "tokenlab/files.h"
#include "tokenlab/base.h"
#include "tokenlab/labelmap.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/fnv.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "labelmap.c assumes a little-endian host"
#endif

#define LM_MAGIC "TLLMAP01"
#define LM_VERSION 1u
#define LM_HEADER_SIZE 72u
#define LM_ENTRY_SIZE 24u
#define LM_MAX_SIDE 1024u
#define LM_MAX_KEY 4096u                 /* bytes, without the NUL */
#define LM_MAX_COUNT ((uint64_t)INT32_MAX) /* entries */

/* header field offsets */
enum {
    H_MAGIC = 0, H_VERSION = 8, H_K = 12, H_TOPK = 16, H_H = 20, H_W = 24, H_RESERVED = 28,
    H_COUNT = 32, H_RECORDS = 40, H_KEYTABLE = 48, H_BLOB = 56, H_FILESIZE = 64
};

struct tl_labelmap {
    unsigned char *map; /* the whole file, PROT_READ */
    size_t size;
    char *path;
    int K, k, h, w;
    int64_t count;
    size_t plane;     /* k*h*w */
    size_t rec_size;  /* 4 * plane bytes */
    const unsigned char *records, *table, *blob;
    size_t blob_len;
    uint32_t *key_of_entry; /* entry -> key table position */
};

struct tl_labelmap_writer {
    char *path, *tmp;
    FILE *fp;
    int K, k, h, w;
    size_t plane;
    uint16_t *rec;                /* 2*plane: values then indices */
    char *keys;                   /* NUL-terminated keys, insertion order */
    size_t keys_len, keys_cap;
    uint64_t *key_off;            /* per entry: offset of its key in keys */
    int64_t count, cap;
    uint32_t *hash;               /* open addressing; slot = entry + 1, 0 = empty */
    size_t hash_cap;              /* power of two */
    int broken;                   /* a record write failed: the temp file is unusable */
    int broken_errno;             /* its errno */
};

/* ------------------------------------------------------------------ helpers */

static uint32_t rd32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t rd64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void wr32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

/* IEEE binary16 -> binary32 (exact). */
static float half_to_float(uint16_t hv) {
    uint32_t sign = (uint32_t)(hv & 0x8000u) << 16;
    uint32_t e = (hv >> 10) & 0x1fu, m = hv & 0x3ffu, bits;
    if (e == 0) {
        float f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
        return sign ? -f : f;
    }
    if (e == 31)
        bits = sign | 0x7f800000u | (m << 13);
    else
        bits = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* binary32 -> binary16, round to nearest, ties to even; overflow -> inf. */
static uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                      /* below 2^-14: subnormal half */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 is exact; nearbyintf rounds ties to even (default mode). 1024
         * is the bit pattern of the smallest normal, which is also right. */
        return (uint16_t)(sign | (uint16_t)nearbyintf(a * 16777216.0f));
    }
    ax += 0xfffu + ((ax >> 13) & 1u); /* round the 13 dropped bits, ties to even */
    return (uint16_t)(sign | (uint16_t)((ax - (112u << 23)) >> 13));
}


/* ------------------------------------------------------------------ reader */

void tl_labelmap_close(tl_labelmap *lm) {
    if (!lm) return;
    if (lm->map) munmap(lm->map, lm->size);
    free(lm->key_of_entry);
    free(lm->path);
    free(lm);
}

/* Checks the key table; fills key_of_entry. */
static int check_table(tl_labelmap *lm, char *err, size_t errlen) {
    const char *prev = NULL;
    size_t prev_len = 0;
    for (int64_t i = 0; i < lm->count; i++) {
        const unsigned char *e = lm->table + (size_t)i * LM_ENTRY_SIZE;
        uint64_t off = rd64(e), entry = rd64(e + 16);
        uint32_t len = rd32(e + 8), res = rd32(e + 12);
        uint64_t end;
        if (res != 0) {
            tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 ": reserved field is %" PRIu32 ", must be 0",
                      lm->path, i, res);
            return -1;
        }
        if (len == 0) {
            tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 ": empty key", lm->path, i);
            return -1;
        }
        if (len > LM_MAX_KEY) {
            tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 ": key_len %" PRIu32 " exceeds %u", lm->path,
                      i, len, LM_MAX_KEY);
            return -1;
        }
        if (__builtin_add_overflow(off, (uint64_t)len + 1u, &end) || end > lm->blob_len) {
            tl_seterr(err, errlen,
                      "label map %s: key table entry %" PRId64 ": key (offset %" PRIu64 ", length %" PRIu32
                      " + NUL) outside the %zu-byte keys blob",
                      lm->path, i, off, len, lm->blob_len);
            return -1;
        }
        const char *key = (const char *)lm->blob + off;
        if (memchr(key, 0, len)) {
            tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 ": key contains a NUL byte", lm->path, i);
            return -1;
        }
        if (key[len] != 0) {
            tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 ": key is not followed by a NUL", lm->path, i);
            return -1;
        }
        if (prev) {
            size_t m = prev_len < len ? prev_len : len;
            int c = memcmp(prev, key, m);
            if (c > 0 || (c == 0 && prev_len >= len)) {
                tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 " ('%.*s'): keys not strictly sorted%s",
                          lm->path, i, (int)(len > 200 ? 200 : len), key, c == 0 && prev_len == len ? " (duplicate)" : "");
                return -1;
            }
        }
        if (entry >= (uint64_t)lm->count) {
            tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 ": entry %" PRIu64 " >= count %" PRId64,
                      lm->path, i, entry, lm->count);
            return -1;
        }
        if (lm->key_of_entry[entry] != UINT32_MAX) {
            tl_seterr(err, errlen, "label map %s: key table entry %" PRId64 ": entry %" PRIu64 " referenced twice",
                      lm->path, i, entry);
            return -1;
        }
        lm->key_of_entry[entry] = (uint32_t)i;
        prev = key;
        prev_len = len;
    }
    return 0;
}

tl_labelmap *tl_labelmap_open(const char *path, int expect_classes, char *err, size_t errlen) {
    tl_labelmap *lm = NULL;
    int fd = -1;
    const char *step = "allocate";
    if (!path) {
        tl_seterr(err, errlen, "label map: no path");
        return NULL;
    }
    lm = calloc(1, sizeof *lm);
    if (!lm || !(lm->path = strdup(path))) goto fail_errno;
    step = "open";
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) goto fail_errno;
    step = "stat";
    struct stat st;
    if (fstat(fd, &st) != 0) goto fail_errno;
    if (!S_ISREG(st.st_mode)) {
        tl_seterr(err, errlen, "label map %s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size < LM_HEADER_SIZE) {
        tl_seterr(err, errlen, "label map %s: file is %lld bytes, shorter than the %u-byte header (truncated?)", path,
                  (long long)st.st_size, LM_HEADER_SIZE);
        goto fail;
    }
    lm->size = (size_t)st.st_size;
    step = "mmap";
    void *m = mmap(NULL, lm->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) goto fail_errno;
    lm->map = m;
    close(fd);
    fd = -1;

    const unsigned char *hd = lm->map;
    if (memcmp(hd + H_MAGIC, LM_MAGIC, 8) != 0) {
        tl_seterr(err, errlen, "label map %s: bad magic (not a tokenlab label map, expected \"%s\")", path, LM_MAGIC);
        goto fail;
    }
    uint32_t version = rd32(hd + H_VERSION), K = rd32(hd + H_K), k = rd32(hd + H_TOPK), h = rd32(hd + H_H),
             w = rd32(hd + H_W), res = rd32(hd + H_RESERVED);
    uint64_t count = rd64(hd + H_COUNT), rec_off = rd64(hd + H_RECORDS), tab_off = rd64(hd + H_KEYTABLE),
             blob_off = rd64(hd + H_BLOB), fsize = rd64(hd + H_FILESIZE);
    if (version != LM_VERSION) {
        tl_seterr(err, errlen, "label map %s: unsupported version %" PRIu32 " (this reader knows %u)", path, version,
                  LM_VERSION);
        goto fail;
    }
    if (K < 1 || K > TL_LABELMAP_MAX_CLASSES) {
        tl_seterr(err, errlen, "label map %s: K = %" PRIu32 " classes outside [1, %d]", path, K, TL_LABELMAP_MAX_CLASSES);
        goto fail;
    }
    if (k < 1 || k > K) {
        tl_seterr(err, errlen, "label map %s: k = %" PRIu32 " (top entries) outside [1, K = %" PRIu32 "]", path, k, K);
        goto fail;
    }
    if (h < 1 || h > LM_MAX_SIDE || w < 1 || w > LM_MAX_SIDE) {
        tl_seterr(err, errlen, "label map %s: map size h x w = %" PRIu32 " x %" PRIu32 " outside [1, %u]", path, h, w,
                  LM_MAX_SIDE);
        goto fail;
    }
    if (res != 0) {
        tl_seterr(err, errlen, "label map %s: header reserved field is %" PRIu32 ", must be 0", path, res);
        goto fail;
    }
    if (expect_classes > 0 && (uint32_t)expect_classes != K) {
        tl_seterr(err, errlen, "label map %s: has K = %" PRIu32 " classes, the job expects %d", path, K, expect_classes);
        goto fail;
    }
    if (fsize != (uint64_t)lm->size) {
        tl_seterr(err, errlen, "label map %s: file_size field says %" PRIu64 " bytes but the file has %zu (%s)", path,
                  fsize, lm->size, fsize > (uint64_t)lm->size ? "truncated" : "trailing bytes");
        goto fail;
    }
    if (count > LM_MAX_COUNT) {
        tl_seterr(err, errlen, "label map %s: count %" PRIu64 " exceeds the limit %" PRIu64, path, count, LM_MAX_COUNT);
        goto fail;
    }
    if (rec_off != LM_HEADER_SIZE) {
        tl_seterr(err, errlen, "label map %s: records_offset %" PRIu64 " must be %u (right after the header)", path,
                  rec_off, LM_HEADER_SIZE);
        goto fail;
    }
    uint64_t plane = (uint64_t)k * h * w; /* <= 65535 * 2^20: no overflow */
    uint64_t rec_size = 4 * plane, rec_bytes, rec_end, tab_bytes, tab_end;
    if (__builtin_mul_overflow(count, rec_size, &rec_bytes) || __builtin_add_overflow(rec_off, rec_bytes, &rec_end) ||
        rec_end > (uint64_t)lm->size) {
        tl_seterr(err, errlen,
                  "label map %s: count %" PRIu64 " records of %" PRIu64 " bytes do not fit in the %zu-byte file (count too "
                  "large or file truncated)",
                  path, count, rec_size, lm->size);
        goto fail;
    }
    if (tab_off > (uint64_t)lm->size) {
        tl_seterr(err, errlen, "label map %s: keytable_offset %" PRIu64 " outside the %zu-byte file", path, tab_off,
                  lm->size);
        goto fail;
    }
    if (tab_off != rec_end) {
        tl_seterr(err, errlen, "label map %s: keytable_offset %" PRIu64 " is not the end of the records (%" PRIu64 ")",
                  path, tab_off, rec_end);
        goto fail;
    }
    if (__builtin_mul_overflow(count, (uint64_t)LM_ENTRY_SIZE, &tab_bytes) ||
        __builtin_add_overflow(tab_off, tab_bytes, &tab_end) || tab_end > (uint64_t)lm->size) {
        tl_seterr(err, errlen, "label map %s: key table of %" PRIu64 " entries at %" PRIu64 " runs past the %zu-byte file",
                  path, count, tab_off, lm->size);
        goto fail;
    }
    if (blob_off > (uint64_t)lm->size) {
        tl_seterr(err, errlen, "label map %s: keys_blob_offset %" PRIu64 " outside the %zu-byte file", path, blob_off,
                  lm->size);
        goto fail;
    }
    if (blob_off != tab_end) {
        tl_seterr(err, errlen, "label map %s: keys_blob_offset %" PRIu64 " is not the end of the key table (%" PRIu64 ")",
                  path, blob_off, tab_end);
        goto fail;
    }
    lm->K = (int)K;
    lm->k = (int)k;
    lm->h = (int)h;
    lm->w = (int)w;
    lm->count = (int64_t)count;
    lm->plane = (size_t)plane;
    lm->rec_size = (size_t)rec_size;
    lm->records = lm->map + rec_off;
    lm->table = lm->map + tab_off;
    lm->blob = lm->map + blob_off;
    lm->blob_len = lm->size - (size_t)blob_off;
    step = "allocate the entry index";
    lm->key_of_entry = malloc(sizeof(uint32_t) * ((size_t)count + 1));
    if (!lm->key_of_entry) goto fail_errno;
    memset(lm->key_of_entry, 0xff, sizeof(uint32_t) * ((size_t)count + 1));
    if (check_table(lm, err, errlen) != 0) goto fail;
    /* every entry referenced at most once and count keys => exactly once */
    return lm;

fail_errno:;
    int e = errno;
    tl_seterr(err, errlen, "label map %s: %s failed: %s", path, step, e ? strerror(e) : "out of memory");
fail:
    if (fd >= 0) close(fd);
    tl_labelmap_close(lm);
    return NULL;
}

int tl_labelmap_num_classes(const tl_labelmap *lm) { return lm->K; }
int tl_labelmap_topk(const tl_labelmap *lm) { return lm->k; }
int tl_labelmap_h(const tl_labelmap *lm) { return lm->h; }
int tl_labelmap_w(const tl_labelmap *lm) { return lm->w; }
int64_t tl_labelmap_count(const tl_labelmap *lm) { return lm->count; }

static const char *table_key(const tl_labelmap *lm, int64_t i, int64_t *entry) {
    const unsigned char *e = lm->table + (size_t)i * LM_ENTRY_SIZE;
    if (entry) *entry = (int64_t)rd64(e + 16);
    return (const char *)lm->blob + rd64(e); /* validated: NUL-terminated, in bounds */
}

int64_t tl_labelmap_find(const tl_labelmap *lm, const char *key) {
    if (!lm || !key) return -1;
    int64_t lo = 0, hi = lm->count - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2, entry;
        int c = strcmp(key, table_key(lm, mid, &entry)); /* unsigned byte order, prefix first */
        if (c == 0) return entry;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

const char *tl_labelmap_key(const tl_labelmap *lm, int64_t i, int64_t *entry) {
    if (entry) *entry = -1;
    if (!lm || i < 0 || i >= lm->count) return NULL;
    return table_key(lm, i, entry);
}

int tl_labelmap_read(const tl_labelmap *lm, int64_t e, float *values, int32_t *indices, char *err, size_t errlen) {
    if (!lm || !values || !indices) {
        tl_seterr(err, errlen, "tl_labelmap_read: no map or output buffer");
        return -1;
    }
    if (e < 0 || e >= lm->count) {
        tl_seterr(err, errlen, "label map %s: entry %" PRId64 " outside [0, %" PRId64 ")", lm->path, e, lm->count);
        return -1;
    }
    const unsigned char *rec = lm->records + (size_t)e * lm->rec_size;
    const unsigned char *ip = rec + 2 * lm->plane;
    size_t hw = (size_t)lm->h * (size_t)lm->w;
    for (size_t i = 0; i < lm->plane; i++) {
        uint16_t hv, iv;
        memcpy(&hv, rec + 2 * i, 2);
        memcpy(&iv, ip + 2 * i, 2);
        if ((hv & 0x7c00u) == 0x7c00u || iv >= (uint32_t)lm->K) {
            size_t j = i / hw, y = (i % hw) / (size_t)lm->w, x = i % (size_t)lm->w;
            const char *key = table_key(lm, lm->key_of_entry[e], NULL);
            if (iv >= (uint32_t)lm->K)
                tl_seterr(err, errlen,
                          "label map %s: key '%s' (entry %" PRId64 "): class index %u at [%zu][%zu][%zu] is >= K = %d",
                          lm->path, key, e, (unsigned)iv, j, y, x, lm->K);
            else
                tl_seterr(err, errlen, "label map %s: key '%s' (entry %" PRId64 "): logit at [%zu][%zu][%zu] is %s",
                          lm->path, key, e, j, y, x, (hv & 0x3ffu) ? "NaN" : "infinite");
            return -1;
        }
        values[i] = half_to_float(hv);
        indices[i] = (int32_t)iv;
    }
    return 0;
}

/* ------------------------------------------------------------------ writer */

static void writer_free(tl_labelmap_writer *wr) {
    if (!wr) return;
    if (wr->fp) fclose(wr->fp);
    free(wr->path);
    free(wr->tmp);
    free(wr->rec);
    free(wr->keys);
    free(wr->key_off);
    free(wr->hash);
    free(wr);
}

tl_labelmap_writer *tl_labelmap_writer_new(const char *path, int K, int k, int h, int w, char *err, size_t errlen) {
    tl_labelmap_writer *wr = NULL;
    const char *step = "allocate";
    if (!path || !*path) {
        tl_seterr(err, errlen, "label map writer: no path");
        return NULL;
    }
    if (K < 1 || K > TL_LABELMAP_MAX_CLASSES) {
        tl_seterr(err, errlen, "label map writer %s: K = %d classes outside [1, %d]", path, K, TL_LABELMAP_MAX_CLASSES);
        return NULL;
    }
    if (k < 1 || k > K) {
        tl_seterr(err, errlen, "label map writer %s: k = %d (top entries) outside [1, K = %d]", path, k, K);
        return NULL;
    }
    if (h < 1 || h > (int)LM_MAX_SIDE || w < 1 || w > (int)LM_MAX_SIDE) {
        tl_seterr(err, errlen, "label map writer %s: map size h x w = %d x %d outside [1, %u]", path, h, w, LM_MAX_SIDE);
        return NULL;
    }
    errno = 0;
    wr = calloc(1, sizeof *wr);
    if (!wr) goto fail;
    wr->K = K;
    wr->k = k;
    wr->h = h;
    wr->w = w;
    wr->plane = (size_t)k * (size_t)h * (size_t)w;
    size_t tlen = TL_TEMP_NAME_LEN(strlen(path));
    wr->path = strdup(path);
    wr->tmp = malloc(tlen);
    wr->rec = malloc(sizeof(uint16_t) * 2 * wr->plane);
    wr->hash_cap = 1024;
    wr->hash = calloc(wr->hash_cap, sizeof(uint32_t));
    if (!wr->path || !wr->tmp || !wr->rec || !wr->hash) goto fail;
    wr->tmp[0] = '\0';
    step = "create the temporary file";
    wr->fp = tl_file_create_temp(path, wr->tmp, tlen);
    if (!wr->fp) goto fail;
    step = "write the placeholder header";
    unsigned char zero[LM_HEADER_SIZE] = {0};
    if (fwrite(zero, 1, sizeof zero, wr->fp) != sizeof zero) goto fail;
    return wr;
fail:;
    int e = errno;
    tl_seterr(err, errlen, "label map writer %s: %s failed: %s", path, step, e ? strerror(e) : "out of memory");
    if (wr && wr->fp) {
        tl_file_abandon(wr->fp, wr->tmp);
        wr->fp = NULL;
    }
    writer_free(wr);
    errno = e;
    return NULL;
}

static uint64_t fnv1a(const char *s) {
    tl_fnv f;
    tl_fnv_init(&f);
    tl_fnv_add(&f, s, strlen(s));
    return f.h;
}

/* Slot of key in the hash set: its entry+1 if present, else the empty slot (0). */
static size_t hash_slot(const tl_labelmap_writer *wr, const char *key) {
    size_t mask = wr->hash_cap - 1, i = (size_t)fnv1a(key) & mask;
    while (wr->hash[i] && strcmp(wr->keys + wr->key_off[wr->hash[i] - 1], key) != 0) i = (i + 1) & mask;
    return i;
}

static int hash_grow(tl_labelmap_writer *wr) {
    size_t ncap = wr->hash_cap * 2;
    uint32_t *old = wr->hash, *nh = calloc(ncap, sizeof(uint32_t));
    if (!nh) return -1;
    size_t ocap = wr->hash_cap;
    wr->hash = nh;
    wr->hash_cap = ncap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i]) wr->hash[hash_slot(wr, wr->keys + wr->key_off[old[i] - 1])] = old[i];
    free(old);
    return 0;
}

int tl_labelmap_writer_add(tl_labelmap_writer *wr, const char *key, const float *values, const int32_t *indices,
                           char *err, size_t errlen) {
    if (!wr || !key || !values || !indices) {
        tl_seterr(err, errlen, "tl_labelmap_writer_add: no writer, key or data");
        return -1;
    }
    errno = 0;
    if (wr->broken) {
        tl_seterr(err, errlen, "label map writer %s: an earlier write failed", wr->path);
        errno = wr->broken_errno;
        return -1;
    }
    size_t klen = strlen(key);
    if (klen == 0 || klen > LM_MAX_KEY) {
        tl_seterr(err, errlen, "label map writer %s: key length %zu outside [1, %u]", wr->path, klen, LM_MAX_KEY);
        return -1;
    }
    if ((uint64_t)wr->count >= LM_MAX_COUNT) {
        tl_seterr(err, errlen, "label map writer %s: more than %" PRIu64 " entries", wr->path, LM_MAX_COUNT);
        return -1;
    }
    if (wr->hash[hash_slot(wr, key)]) {
        tl_seterr(err, errlen, "label map writer %s: duplicate key '%s'", wr->path, key);
        return -1;
    }
    size_t hw = (size_t)wr->h * (size_t)wr->w;
    for (size_t i = 0; i < wr->plane; i++) {
        int32_t c = indices[i];
        size_t j = i / hw, y = (i % hw) / (size_t)wr->w, x = i % (size_t)wr->w;
        if (c < 0 || c >= wr->K) {
            tl_seterr(err, errlen, "label map writer %s: key '%s': class index %" PRId32 " at [%zu][%zu][%zu] outside [0, K = %d)",
                      wr->path, key, c, j, y, x, wr->K);
            return -1;
        }
        uint16_t hv = float_to_half(values[i]);
        if ((hv & 0x7c00u) == 0x7c00u) {
            tl_seterr(err, errlen, "label map writer %s: key '%s': logit %g at [%zu][%zu][%zu] is not finite in float16",
                      wr->path, key, (double)values[i], j, y, x);
            return -1;
        }
        wr->rec[i] = hv;
        wr->rec[wr->plane + i] = (uint16_t)c;
    }
    /* room for the key before the record goes out, so a failure leaves no orphan record */
    if (wr->count == wr->cap) {
        int64_t ncap = wr->cap ? wr->cap * 2 : 256;
        uint64_t *no = realloc(wr->key_off, sizeof(uint64_t) * (size_t)ncap);
        if (!no) goto oom;
        wr->key_off = no;
        wr->cap = ncap;
    }
    if (wr->keys_len + klen + 1 > wr->keys_cap) {
        size_t ncap = wr->keys_cap ? wr->keys_cap : 4096;
        while (ncap < wr->keys_len + klen + 1) ncap *= 2;
        char *nk = realloc(wr->keys, ncap);
        if (!nk) goto oom;
        wr->keys = nk;
        wr->keys_cap = ncap;
    }
    if ((size_t)(wr->count + 1) * 2 > wr->hash_cap && hash_grow(wr) != 0) goto oom;
    errno = 0;
    if (fwrite(wr->rec, sizeof(uint16_t), 2 * wr->plane, wr->fp) != 2 * wr->plane) {
        int e = errno;
        wr->broken = 1;
        wr->broken_errno = e;
        tl_seterr(err, errlen, "label map writer %s: writing the record of '%s' to %s failed: %s", wr->path, key, wr->tmp,
                  e ? strerror(e) : "short write");
        errno = e;
        return -1;
    }
    wr->key_off[wr->count] = wr->keys_len;
    memcpy(wr->keys + wr->keys_len, key, klen + 1);
    wr->keys_len += klen + 1;
    wr->hash[hash_slot(wr, key)] = (uint32_t)(wr->count + 1);
    wr->count++;
    return 0;
oom:
    tl_seterr(err, errlen, "label map writer %s: out of memory adding '%s'", wr->path, key);
    return -1;
}

typedef struct {
    const char *key;
    uint32_t len;
    uint64_t entry;
} lm_sortkey;

static int cmp_sortkey(const void *a, const void *b) {
    return strcmp(((const lm_sortkey *)a)->key, ((const lm_sortkey *)b)->key);
}

int tl_labelmap_writer_finish(tl_labelmap_writer *wr, char *err, size_t errlen) {
    lm_sortkey *sk = NULL;
    const char *step = "allocate";
    if (!wr) {
        tl_seterr(err, errlen, "tl_labelmap_writer_finish: no writer");
        return -1;
    }
    if (wr->broken) {
        errno = wr->broken_errno;
        step = "finish after a failed record write";
        goto fail;
    }
    errno = 0;
    sk = malloc(sizeof *sk * ((size_t)wr->count + 1));
    if (!sk) goto fail;
    for (int64_t i = 0; i < wr->count; i++) {
        sk[i].key = wr->keys + wr->key_off[i];
        sk[i].len = (uint32_t)strlen(sk[i].key);
        sk[i].entry = (uint64_t)i;
    }
    qsort(sk, (size_t)wr->count, sizeof *sk, cmp_sortkey);
    uint64_t rec_bytes = (uint64_t)wr->count * 4u * wr->plane;
    uint64_t tab_off = LM_HEADER_SIZE + rec_bytes, blob_off = tab_off + (uint64_t)wr->count * LM_ENTRY_SIZE;
    step = "write the key table";
    uint64_t koff = 0;
    for (int64_t i = 0; i < wr->count; i++) {
        unsigned char e[LM_ENTRY_SIZE];
        wr64(e, koff);
        wr32(e + 8, sk[i].len);
        wr32(e + 12, 0);
        wr64(e + 16, sk[i].entry);
        if (fwrite(e, 1, sizeof e, wr->fp) != sizeof e) goto fail;
        koff += (uint64_t)sk[i].len + 1;
    }
    step = "write the keys";
    for (int64_t i = 0; i < wr->count; i++)
        if (fwrite(sk[i].key, 1, (size_t)sk[i].len + 1, wr->fp) != (size_t)sk[i].len + 1) goto fail;
    step = "write the header";
    unsigned char hd[LM_HEADER_SIZE] = {0};
    memcpy(hd + H_MAGIC, LM_MAGIC, 8);
    wr32(hd + H_VERSION, LM_VERSION);
    wr32(hd + H_K, (uint32_t)wr->K);
    wr32(hd + H_TOPK, (uint32_t)wr->k);
    wr32(hd + H_H, (uint32_t)wr->h);
    wr32(hd + H_W, (uint32_t)wr->w);
    wr64(hd + H_COUNT, (uint64_t)wr->count);
    wr64(hd + H_RECORDS, LM_HEADER_SIZE);
    wr64(hd + H_KEYTABLE, tab_off);
    wr64(hd + H_BLOB, blob_off);
    wr64(hd + H_FILESIZE, blob_off + koff);
    if (fseek(wr->fp, 0, SEEK_SET) != 0 || fwrite(hd, 1, sizeof hd, wr->fp) != sizeof hd) goto fail;
    FILE *fp = wr->fp;
    wr->fp = NULL; /* tl_file_commit closes it, and removes the temporary file on failure */
    if (tl_file_commit(fp, wr->tmp, wr->path, &step) != 0) {
        int e = errno;
        tl_seterr(err, errlen, "label map writer %s: %s failed: %s", wr->path, step, strerror(e));
        free(sk);
        writer_free(wr);
        errno = e;
        return -1;
    }
    free(sk);
    writer_free(wr);
    return 0;
fail:;
    int e = errno;
    tl_seterr(err, errlen, "label map writer %s: %s failed: %s", wr->path, step,
              e ? strerror(e) : (wr->broken ? "the temporary file is incomplete" : "out of memory"));
    tl_file_abandon(wr->fp, wr->tmp);
    wr->fp = NULL;
    free(sk);
    writer_free(wr);
    errno = e;
    return -1;
}

void tl_labelmap_writer_abort(tl_labelmap_writer *wr) {
    if (!wr) return;
    tl_file_abandon(wr->fp, wr->tmp);
    wr->fp = NULL;
    writer_free(wr);
}
