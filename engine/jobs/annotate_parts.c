/*
 * annotate_parts.c: the annotator's part files (annotate_parts.h): writing
 * one crash-safely, listing a run folder's parts, and validating a part in
 * full. Owns the writer's open file; one thread (the annotating run's).
 *
 * Part files (<run_dir>/part-NNNNN.tlpart, NNNNN = 0, 1, 2, ... with at least
 * five digits), all integers little-endian:
 *
 *   header, 104 bytes:
 *     0  magic "TLPART01"          8 bytes
 *     8  u32 version = 1
 *    12  u32 K (classes)           16 u32 k (top entries)
 *    20  u32 h                     24 u32 w
 *    28  u32 batch_size
 *    32  u64 fingerprint           FNV-1a 64 of the format version, K, k, h, w, the input size, the
 *                                  batch size, the dataset listing (every relative path) and the
 *                                  model's weights as loaded (so another model, EMA choice, size,
 *                                  top-k, batch size or dataset makes a part foreign)
 *    40  u64 dataset_count         images in the dataset
 *    48  u64 start                 first dataset index covered
 *    56  u64 end                   one past the last index covered (a multiple of batch_size, or
 *                                  dataset_count)
 *    64  u64 records               images written
 *    72  u64 skipped               unreadable images in [start, end); records + skipped = end - start
 *    80  u64 payload_bytes         bytes after the header (the file is exactly 104 + payload_bytes)
 *    88  u64 payload_checksum      FNV-1a 64 of the payload
 *    96  u64 header_checksum       FNV-1a 64 of bytes 0..95
 *   records, in increasing dataset index:
 *     u32 index, u32 key_len (1..4096), key bytes (the dataset's relative path, no NUL),
 *     k*h*w float32 logits, then k*h*w u16 class indices, layout [k][h][w], best first.
 *
 * Part n covers [start_n, end_n) with start_0 = 0 and start_{n+1} = end_n. A
 * part ends when the images done reach a multiple of part_images, at the end
 * of the dataset, or at a stop (a batch boundary). Parts are written as
 * part-NNNNN.tlpart.tmp (placeholder header, records streamed as batches
 * finish, then the header), fsynced, renamed and the folder fsynced. On
 * resume, leftover .tmp files (a crash mid-part) are removed and every part
 * is validated in full (magic, version, both checksums, sizes, sizes of the
 * map and the fingerprint, contiguity, record indices, keys against the
 * dataset, class indices < K, finite logits); anything else is refused with
 * IO_ERROR and the run folder is left for the user to inspect. Since batches
 * are fixed by index, the record of an image does not depend on where parts
 * end, so the merged file is byte-identical whatever stops happened (given
 * the same thread count, as for training).
 */
#include "jobs/annotate_parts.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenlab/base.h"
#include "tokenlab/files.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "annotate_parts.c writes part files in the host's byte order, which must be little-endian"
#endif

#define PART_HEADER 104

typedef struct {
    uint32_t K, k, h, w, batch;
    uint64_t fingerprint, count, start, end, records, skipped, payload_bytes, payload_sum;
} part_header;

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void header_encode(const part_header *h, unsigned char b[PART_HEADER]) {
    memset(b, 0, PART_HEADER);
    memcpy(b, TL_PART_MAGIC, 8);
    put32(b + 8, TL_PART_VERSION);
    put32(b + 12, h->K);
    put32(b + 16, h->k);
    put32(b + 20, h->h);
    put32(b + 24, h->w);
    put32(b + 28, h->batch);
    put64(b + 32, h->fingerprint);
    put64(b + 40, h->count);
    put64(b + 48, h->start);
    put64(b + 56, h->end);
    put64(b + 64, h->records);
    put64(b + 72, h->skipped);
    put64(b + 80, h->payload_bytes);
    put64(b + 88, h->payload_sum);
    tl_fnv f;
    tl_fnv_init(&f);
    tl_fnv_add(&f, b, 96);
    put64(b + 96, f.h);
}

int tl_part_name(const char *run_dir, int n, int tmp, char *out) {
    int w = snprintf(out, PATH_MAX, "%s/part-%05d.tlpart%s", run_dir, n, tmp ? ".tmp" : "");
    return (w < 0 || w >= PATH_MAX) ? -1 : 0;
}

int tl_part_begin(const tl_parts *ps, int n, int64_t start, tl_part_writer *w, char *err, size_t errlen) {
    errno = 0;
    if (TL_NEVER(w->f != NULL)) return tl_seterr(err, errlen, "a part is already open: %s", w->tmp);
    if (tl_part_name(ps->run_dir, n, 1, w->tmp) != 0 || tl_part_name(ps->run_dir, n, 0, w->path) != 0)
        return tl_seterr(err, errlen, "run folder path too long: %s", ps->run_dir);
    w->f = tl_file_open(w->tmp, 0); /* a write stream: the full-disk switch applies */
    unsigned char zero[PART_HEADER] = {0};
    if (!w->f || fwrite(zero, 1, sizeof zero, w->f) != sizeof zero) {
        int e = errno;
        tl_seterr(err, errlen, "cannot write %s: %s", w->tmp, strerror(e));
        errno = e;
        return -1;
    }
    w->start = start;
    w->records = w->skipped = 0;
    w->bytes = 0;
    tl_fnv_init(&w->sum);
    return 0;
}

static int part_write(tl_part_writer *w, const void *p, size_t n) {
    tl_fnv_add(&w->sum, p, n);
    w->bytes += n;
    return fwrite(p, 1, n, w->f) == n ? 0 : -1;
}

int tl_part_write_record(const tl_parts *ps, tl_part_writer *w, uint32_t index, const char *key, size_t klen) {
    size_t plane = (size_t)ps->k * ps->g * ps->g;
    unsigned char rh[8];
    put32(rh, index);
    put32(rh + 4, (uint32_t)klen);
    if (part_write(w, rh, 8) || part_write(w, key, klen) || part_write(w, ps->vals, sizeof(float) * plane) ||
        part_write(w, ps->idx16, sizeof(uint16_t) * plane))
        return -1;
    w->records++;
    return 0;
}

int tl_part_finish(const tl_parts *ps, tl_part_writer *w, int64_t end, char *err, size_t errlen) {
    part_header h = {(uint32_t)ps->K, (uint32_t)ps->k, (uint32_t)ps->g, (uint32_t)ps->g, (uint32_t)ps->B,
                     ps->fingerprint, (uint64_t)ps->total, (uint64_t)w->start, (uint64_t)end, (uint64_t)w->records,
                     (uint64_t)w->skipped, w->bytes, w->sum.h};
    errno = 0;
    if (TL_NEVER(!w->f) || TL_NEVER(w->records + w->skipped != end - w->start))
        return tl_seterr(err, errlen, "cannot write %s: %s", w->path, "the part's counts do not add up");
    unsigned char b[PART_HEADER];
    header_encode(&h, b);
    FILE *f = w->f;
    w->f = NULL;
    int ok = fflush(f) == 0 && fseek(f, 0, SEEK_SET) == 0 && fwrite(b, 1, sizeof b, f) == sizeof b &&
             tl_file_sync(f) == 0;
    int e = errno;
    if (fclose(f) != 0 && ok) ok = 0, e = errno;
    if (!ok || rename(w->tmp, w->path) != 0 || tl_fsync_parent_dir(w->path) != 0) {
        if (ok) e = errno;
        unlink(w->tmp);
        tl_seterr(err, errlen, "cannot write %s: %s", w->path, strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

void tl_part_abort(tl_part_writer *w) {
    if (!w->f) return;
    fclose(w->f);
    w->f = NULL;
    unlink(w->tmp);
}

int tl_part_read(const tl_parts *ps, int n, int64_t start, int64_t *end, int64_t *skipped, tl_part_record_fn fn,
                 void *user, char *err, size_t errlen) {
    char path[PATH_MAX], why[256] = "";
    if (tl_part_name(ps->run_dir, n, 0, path) != 0)
        return tl_seterr(err, errlen, "run folder path too long: %s", ps->run_dir);
    FILE *f = fopen(path, "rb");
    if (!f) return tl_seterr(err, errlen, "cannot open %s: %s", path, strerror(errno));
    unsigned char b[PART_HEADER], chk[PART_HEADER];
    size_t plane = (size_t)ps->k * ps->g * ps->g;
    char *key = malloc(TL_PART_KEY_MAX + 1);
    struct stat st;
    part_header h;
    tl_fnv sum;
    tl_fnv_init(&sum);
    if (!key) {
        snprintf(why, sizeof why, "out of memory");
        goto bad;
    }
#define BAD(...)                                 \
    do {                                         \
        snprintf(why, sizeof why, __VA_ARGS__); \
        goto bad;                                \
    } while (0)
    if (fstat(fileno(f), &st) != 0 || fread(b, 1, sizeof b, f) != sizeof b) BAD("shorter than its header");
    if (memcmp(b, TL_PART_MAGIC, 8) != 0) BAD("not a part file (bad magic)");
    if (get32(b + 8) != TL_PART_VERSION) BAD("version %u, expected %u", get32(b + 8), TL_PART_VERSION);
    h = (part_header){get32(b + 12), get32(b + 16), get32(b + 20), get32(b + 24), get32(b + 28), get64(b + 32),
                      get64(b + 40), get64(b + 48), get64(b + 56), get64(b + 64), get64(b + 72), get64(b + 80),
                      get64(b + 88)};
    header_encode(&h, chk);
    if (memcmp(chk, b, PART_HEADER) != 0) BAD("header checksum mismatch (torn or altered)");
    if (h.K != (uint32_t)ps->K || h.k != (uint32_t)ps->k || h.h != (uint32_t)ps->g || h.w != (uint32_t)ps->g ||
        h.batch != (uint32_t)ps->B)
        BAD("written for K=%u k=%u map %ux%u batch %u, this run has K=%d k=%d map %dx%d batch %d", h.K, h.k, h.h, h.w,
            h.batch, ps->K, ps->k, ps->g, ps->g, ps->B);
    if (h.fingerprint != ps->fingerprint || h.count != (uint64_t)ps->total)
        BAD("written by another annotation (other weights, size, top-k, batch size or dataset)");
    if (h.start != (uint64_t)start)
        BAD("starts at image %llu, expected %lld", (unsigned long long)h.start, (long long)start);
    if (h.end <= h.start || h.end > h.count || (h.end % h.batch != 0 && h.end != h.count))
        BAD("bad range [%llu, %llu)", (unsigned long long)h.start, (unsigned long long)h.end);
    if (h.records + h.skipped != h.end - h.start || h.records > h.end - h.start)
        BAD("record and skip counts do not add up");
    if ((uint64_t)st.st_size < PART_HEADER || (uint64_t)st.st_size - PART_HEADER != h.payload_bytes)
        BAD("size %lld, the header says %llu", (long long)st.st_size,
            (unsigned long long)(h.payload_bytes + PART_HEADER));
    uint64_t prev = 0;
    for (uint64_t i = 0; i < h.records; i++) {
        unsigned char rh[8];
        if (fread(rh, 1, 8, f) != 8) BAD("truncated record %llu", (unsigned long long)i);
        tl_fnv_add(&sum, rh, 8);
        uint64_t index = get32(rh);
        uint32_t klen = get32(rh + 4);
        if (index < h.start || index >= h.end || (i > 0 && index <= prev))
            BAD("record %llu: image index %llu out of order or range", (unsigned long long)i,
                (unsigned long long)index);
        prev = index;
        if (klen < 1 || klen > TL_PART_KEY_MAX || fread(key, 1, klen, f) != klen)
            BAD("record %llu: bad key", (unsigned long long)i);
        tl_fnv_add(&sum, key, klen);
        key[klen] = '\0';
        const char *want = tl_dataset_relpath(ps->ds, (int)index);
        if (strlen(want) != klen || memcmp(want, key, klen) != 0)
            BAD("record %llu: key is not image %llu's path", (unsigned long long)i, (unsigned long long)index);
        if (fread(ps->vals, sizeof(float), plane, f) != plane ||
            fread(ps->idx16, sizeof(uint16_t), plane, f) != plane)
            BAD("truncated record %llu", (unsigned long long)i);
        tl_fnv_add(&sum, ps->vals, sizeof(float) * plane);
        tl_fnv_add(&sum, ps->idx16, sizeof(uint16_t) * plane);
        for (size_t j = 0; j < plane; j++) {
            if (!isfinite(ps->vals[j]) || fabsf(ps->vals[j]) > TL_PART_F16_MAX)
                BAD("record %llu: bad logit", (unsigned long long)i);
            if (ps->idx16[j] >= (uint32_t)ps->K) BAD("record %llu: class index out of range", (unsigned long long)i);
            ps->idx32[j] = ps->idx16[j];
        }
        if (fn && fn(ps, key, user) != 0) {
            free(key);
            fclose(f);
            return 1;
        }
    }
    if (fgetc(f) != EOF) BAD("bytes after the last record");
    if (sum.h != h.payload_sum) BAD("payload checksum mismatch (torn or altered)");
#undef BAD
    free(key);
    fclose(f);
    *end = (int64_t)h.end;
    *skipped = (int64_t)h.skipped;
    return 0;
bad:
    free(key);
    fclose(f);
    return tl_seterr(err, errlen, "refusing %s: %s; remove the run folder's part files to start over", path, why);
}

int tl_part_list(const tl_parts *ps, int *nparts, void (*on_removed)(const char *path, void *user), void *user,
                 char *err, size_t errlen) {
    *nparts = 0;
    DIR *d = opendir(ps->run_dir);
    if (!d) return tl_seterr(err, errlen, "cannot list %s: %s", ps->run_dir, strerror(errno));
    int count = 0, maxn = -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (strncmp(nm, "part-", 5) != 0) continue;
        size_t L = strlen(nm);
        if (L > 11 && strcmp(nm + L - 11, ".tlpart.tmp") == 0) {
            char p[PATH_MAX];
            if (snprintf(p, sizeof p, "%s/%s", ps->run_dir, nm) < (int)sizeof p) {
                unlink(p);
                if (on_removed) on_removed(p, user);
            }
            continue;
        }
        if (L < 7 || strcmp(nm + L - 7, ".tlpart") != 0) continue;
        size_t nd = L - 5 - 7;
        int num = 0, okname = nd >= 5 && nd <= 9;
        for (size_t i = 0; okname && i < nd; i++) {
            char c = nm[5 + i];
            if (c < '0' || c > '9') okname = 0;
            else num = num * 10 + (c - '0');
        }
        char canon[32];
        snprintf(canon, sizeof canon, "part-%05d.tlpart", num);
        if (!okname || strcmp(canon, nm) != 0) {
            tl_seterr(err, errlen, "refusing %s/%s: not a part file name this annotator writes", ps->run_dir, nm);
            closedir(d); /* after the message: nm lives in the stream */
            return -1;
        }
        count++;
        if (num > maxn) maxn = num;
    }
    closedir(d);
    if (count != maxn + 1)
        return tl_seterr(err, errlen, "the part files in %s are not numbered 0..%d without gaps", ps->run_dir,
                         count - 1);
    *nparts = count;
    return 0;
}
