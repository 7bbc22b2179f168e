/*
 * annotate.c: the machine annotator (annotate.h): the annotate job spec, the
 * annotation run with its part files, and the resampling of the position
 * embedding to another input size.
 *
 * Owns, for the duration of tl_annotate_run, on the calling thread: the
 * dataset, the model at the annotation size, an eval context (its own pool),
 * a decoding pool, the batch buffers, the part file being written and the
 * label-map writer of the merge. Hooks are called on the calling thread.
 *
 * Spec parsing follows jobspec.c (helpers in jobspec_internal.h): fixed field
 * tables, unknown or duplicate keys refused, every refusal with its JSON
 * pointer, cheap checks first and the file system last.
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
#include "tokenlab/annotate.h"
#include "tokenlab/inspect.h"

#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tokenlab/data.h"
#include "tokenlab/files.h"
#include "jobs/jobspec_internal.h"
#include "tokenlab/labelmap.h"
#include "core/pool.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "annotate.c writes part files in the host's byte order, which must be little-endian"
#endif

#define JOB_ID_MAX 9007199254740991.0 /* 2^53 - 1 */
#define PART_MAGIC "TLPART01"
#define PART_VERSION 1u
#define PART_HEADER 104
#define KEY_MAX 4096
#define F16_MAX 65504.0f
#define WINDOW 10 /* batches over which images/s is measured */

/* ======================================================================== */
/* spec                                                                       */

int tl_jobspec_kind(const char *json, char *kind, size_t len, tl_spec_error *err) {
    if (err) err->pointer[0] = err->message[0] = '\0';
    if (kind && len) kind[0] = '\0';
    cJSON *doc = tl_spec_parse_document(json, err);
    if (!doc) return -1;
    int rc = 0;
    const cJSON *k = cJSON_IsObject(doc) ? cJSON_GetObjectItemCaseSensitive(doc, "kind") : NULL;
    if (!cJSON_IsObject(doc))
        rc = tl_spec_fail(err, "/kind", "required: the document must be a JSON object with a string \"kind\"");
    else if (!k)
        rc = tl_spec_fail(err, "/kind", "required");
    else if (!cJSON_IsString(k) || !k->valuestring)
        rc = tl_spec_fail(err, "/kind", "must be a string");
    else if (!kind || strlen(k->valuestring) >= len || strlen(k->valuestring) >= 16)
        rc = tl_spec_fail(err, "/kind", "must be a known kind (\"train\", \"annotate\")");
    else
        snprintf(kind, len, "%s", k->valuestring);
    cJSON_Delete(doc);
    if (rc && err) {
        tl_spec_sanitize(err->pointer);
        tl_spec_sanitize(err->message);
    }
    return rc;
}

static void annotate_defaults(tl_annotate_spec *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->kind, sizeof s->kind, "annotate");
    snprintf(s->source_checkpoint, sizeof s->source_checkpoint, "best");
    s->source_ema = -1;
    s->size = 0;
    s->topk = 5;
    s->batch_size = 32;
    s->threads = 0;
    s->part_images = 2048;
}

/* [A-Za-z0-9][A-Za-z0-9._-]{0,63}, the daemon's model names. */
static int model_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return 0;
    }
    return 1;
}

static const char *const SOURCE_FIELDS[] = {"model", "job_id", "checkpoint", "ema"};
#define N_SOURCE (int)(sizeof SOURCE_FIELDS / sizeof SOURCE_FIELDS[0])

static int parse_source(const cJSON *o, tl_annotate_spec *s, tl_spec_error *e) {
    const char *P = "/source";
    if (tl_spec_get_object(o, P, e)) return -1;
    const cJSON *seen[N_SOURCE];
    if (tl_spec_check_members(o, P, SOURCE_FIELDS, N_SOURCE, seen, e)) return -1;
    if (seen[0] && seen[1]) return tl_spec_fail(e, P, "give exactly one of \"model\" and \"job_id\", not both");
    if (!seen[0] && !seen[1]) return tl_spec_fail(e, P, "give exactly one of \"model\" and \"job_id\"");
    if (seen[0]) {
        const char *m = "";
        if (tl_spec_get_string(seen[0], "/source/model", &m, e)) return -1;
        if (!model_name_ok(m))
            return tl_spec_fail(e, "/source/model",
                                "must be a model name: 1..64 characters of A-Z a-z 0-9 . _ -, starting with a letter "
                                "or digit");
        snprintf(s->source_model, sizeof s->source_model, "%s", m);
        if (seen[2])
            return tl_spec_fail(e, "/source/checkpoint", "only with \"job_id\" (a model has one set of weights)");
        if (seen[3]) return tl_spec_fail(e, "/source/ema", "only with \"job_id\" (a model has one set of weights)");
        return 0;
    }
    double v = 0.0;
    if (tl_spec_get_int(seen[1], "/source/job_id", 1, JOB_ID_MAX, "in 1..9007199254740991", &v, e)) return -1;
    s->source_job = (int64_t)v;
    if (seen[2]) {
        const char *c = "";
        if (tl_spec_get_string(seen[2], "/source/checkpoint", &c, e)) return -1;
        size_t n = strlen(c);
        int ok = strcmp(c, "best") == 0 || strcmp(c, "last") == 0;
        if (!ok && n >= 1 && n <= 18 && c[0] >= '1' && c[0] <= '9') {
            ok = 1;
            for (size_t i = 0; i < n; i++) ok &= c[i] >= '0' && c[i] <= '9';
        }
        if (!ok)
            return tl_spec_fail(e, "/source/checkpoint",
                                "must be \"best\", \"last\" or a step number (\"1200\": 1 to 18 digits, no leading 0)");
        snprintf(s->source_checkpoint, sizeof s->source_checkpoint, "%s", c);
    }
    if (seen[3]) {
        int b = 0;
        if (tl_spec_get_bool(seen[3], "/source/ema", &b, e)) return -1;
        s->source_ema = b;
    }
    return 0;
}

enum { A_SIZE, A_TOPK, A_BATCH, A_THREADS, A_PART, N_ANN };
static const char *const ANN_FIELDS[N_ANN] = {
    [A_SIZE] = "size", [A_TOPK] = "topk", [A_BATCH] = "batch_size", [A_THREADS] = "threads", [A_PART] = "part_images",
};

static int parse_annotate(const cJSON *o, tl_annotate_spec *s, tl_spec_error *e) {
    const char *P = "/annotate";
    if (tl_spec_get_object(o, P, e)) return -1;
    const cJSON *seen[N_ANN];
    if (tl_spec_check_members(o, P, ANN_FIELDS, N_ANN, seen, e)) return -1;
    for (int f = 0; f < N_ANN; f++) {
        if (!seen[f]) continue;
        char p[64];
        snprintf(p, sizeof p, "/annotate/%s", ANN_FIELDS[f]);
        double v = 0.0;
        switch (f) {
        case A_SIZE:
            if (tl_spec_get_int(seen[f], p, 0, 4096, "in 0..4096 (0 = the model's img_size)", &v, e)) return -1;
            if ((int)v % 2 != 0)
                return tl_spec_fail(e, p, "must be a multiple of the model's patch size (which is even), got %d",
                                    (int)v);
            s->size = (int)v;
            break;
        case A_TOPK:
            if (tl_spec_get_int(seen[f], p, 1, TL_LABELMAP_MAX_CLASSES, "in 1..65535", &v, e)) return -1;
            s->topk = (int)v;
            break;
        case A_BATCH:
            if (tl_spec_get_int(seen[f], p, 1, 4096, "in 1..4096", &v, e)) return -1;
            s->batch_size = (int)v;
            break;
        case A_THREADS:
            if (tl_spec_get_int(seen[f], p, 0, 256, "in 0..256 (0 = all cores)", &v, e)) return -1;
            s->threads = (int)v;
            break;
        case A_PART:
            if (tl_spec_get_int(seen[f], p, 1, 1048576, "in 1..1048576", &v, e)) return -1;
            s->part_images = (int)v;
            break;
        }
    }
    return 0;
}

static int inside_root(const char *real, const char *root_real) {
    size_t rl = strlen(root_real);
    return strcmp(root_real, "/") == 0 ||
           (strncmp(real, root_real, rl) == 0 && (real[rl] == '\0' || real[rl] == '/'));
}

/* data.out: a ".tllm" file name in an existing folder (see annotate.h). */
static int resolve_out(const char *val, const char *root_real, char *out, tl_spec_error *e) {
    const char *P = "/data/out";
    size_t n = strlen(val);
    if (n == 0) return tl_spec_fail(e, P, "must be a non-empty path");
    if (n >= PATH_MAX) return tl_spec_fail(e, P, "path too long (at most %d bytes)", PATH_MAX - 1);
    const char *slash = strrchr(val, '/');
    const char *base = slash ? slash + 1 : val;
    size_t bl = strlen(base);
    if (bl <= 5 || strcmp(base + bl - 5, ".tllm") != 0)
        return tl_spec_fail(e, P, "must be a file name ending in \".tllm\", got '%.200s'", val);
    char dir[PATH_MAX];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == val)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - val), val);
    char dir_real[PATH_MAX];
    if (tl_spec_resolve_path(P, dir, root_real, 1, dir_real, e)) return -1;
    char full[PATH_MAX + 8];
    int w = snprintf(full, sizeof full, "%s/%s", strcmp(dir_real, "/") == 0 ? "" : dir_real, base);
    if (w < 0 || (size_t)w >= PATH_MAX) return tl_spec_fail(e, P, "path too long (at most %d bytes)", PATH_MAX - 1);
    struct stat st;
    if (lstat(full, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            char real[PATH_MAX];
            if (!realpath(full, real) || stat(real, &st) != 0)
                return tl_spec_fail(e, P, "'%.200s' is a symbolic link to nothing", val);
            if (root_real && !inside_root(real, root_real))
                return tl_spec_fail(e, P, "resolves outside the data root (a symbolic link leads out of it)");
        }
        if (S_ISDIR(st.st_mode)) return tl_spec_fail(e, P, "'%.200s' is a folder, not a file", val);
        if (!S_ISREG(st.st_mode)) return tl_spec_fail(e, P, "'%.200s' exists and is not a regular file", val);
    }
    memcpy(out, full, (size_t)w + 1);
    return 0;
}

static const char *const DATA_FIELDS[] = {"images", "out"};
#define N_DATA (int)(sizeof DATA_FIELDS / sizeof DATA_FIELDS[0])

static int parse_data(const cJSON *o, const char *data_root, tl_annotate_spec *s, tl_spec_error *e) {
    if (tl_spec_get_object(o, "/data", e)) return -1;
    const cJSON *seen[N_DATA];
    if (tl_spec_check_members(o, "/data", DATA_FIELDS, N_DATA, seen, e)) return -1;
    const char *images = NULL, *out = NULL;
    if (seen[0] && tl_spec_get_string(seen[0], "/data/images", &images, e)) return -1;
    if (seen[1] && tl_spec_get_string(seen[1], "/data/out", &out, e)) return -1;
    if (!images) return tl_spec_fail(e, "/data/images", "required");
    if (!out) return tl_spec_fail(e, "/data/out", "required");
    char root_real[PATH_MAX];
    const char *root = NULL;
    if (data_root) {
        if (!realpath(data_root, root_real))
            return tl_spec_fail(e, "", "the data root '%.200s' does not exist", data_root);
        root = root_real;
    }
    if (tl_spec_resolve_path("/data/images", images, root, 1, s->images_dir, e)) return -1;
    return resolve_out(out, root, s->out_path, e);
}

static const char *const TOP_FIELDS[] = {"kind", "name", "source", "data", "annotate"};
#define N_TOP (int)(sizeof TOP_FIELDS / sizeof TOP_FIELDS[0])

static int parse_doc(const cJSON *doc, const char *data_root, tl_annotate_spec *s, tl_spec_error *e) {
    if (tl_spec_get_object(doc, "", e)) return -1;
    const cJSON *seen[N_TOP];
    if (tl_spec_check_members(doc, "", TOP_FIELDS, N_TOP, seen, e)) return -1;
    if (!seen[0]) return tl_spec_fail(e, "/kind", "required");
    const char *kind = "";
    if (tl_spec_get_string(seen[0], "/kind", &kind, e)) return -1;
    if (strcmp(kind, "annotate") != 0) return tl_spec_fail(e, "/kind", "must be \"annotate\"");
    if (!seen[1]) return tl_spec_fail(e, "/name", "required");
    if (tl_spec_get_name(seen[1], "/name", s->name, sizeof s->name, e)) return -1;
    if (!seen[2]) return tl_spec_fail(e, "/source", "required");
    if (parse_source(seen[2], s, e)) return -1;
    if (seen[4] && parse_annotate(seen[4], s, e)) return -1;
    /* part files end on batch boundaries */
    s->part_images = (s->part_images + s->batch_size - 1) / s->batch_size * s->batch_size;
    if (!seen[3]) return tl_spec_fail(e, "/data", "required");
    return parse_data(seen[3], data_root, s, e);
}

int tl_annotate_spec_parse(const char *json, const char *data_root, tl_annotate_spec *out, tl_spec_error *err) {
    if (err) err->pointer[0] = err->message[0] = '\0';
    cJSON *doc = tl_spec_parse_document(json, err);
    if (!doc) return -1;
    tl_annotate_spec *s = malloc(sizeof *s);
    if (!s) {
        cJSON_Delete(doc);
        return tl_spec_fail(err, "", "out of memory");
    }
    annotate_defaults(s);
    int rc = parse_doc(doc, data_root, s, err);
    cJSON_Delete(doc);
    if (rc != 0 && err) {
        tl_spec_sanitize(err->pointer);
        tl_spec_sanitize(err->message);
    }
    if (rc == 0 && out) *out = *s;
    free(s);
    return rc;
}

void tl_annotate_defaults(tl_annotate_spec *s) { annotate_defaults(s); }

/* ======================================================================== */
/* position embedding                                                         */

/* PyTorch's cubic convolution weights (upsample_bicubic2d, A = -0.75) for fraction t. */
static void cubic_weights(float t, float w[4]) {
    const float A = -0.75f;
    float x1 = t + 1.0f, x2 = 1.0f - t, x3 = 2.0f - t;
    w[0] = ((A * x1 - 5.0f * A) * x1 + 8.0f * A) * x1 - 4.0f * A;
    w[1] = ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
    w[2] = ((A + 2.0f) * x2 - (A + 3.0f)) * x2 * x2 + 1.0f;
    w[3] = ((A * x3 - 5.0f * A) * x3 + 8.0f * A) * x3 - 4.0f * A;
}

/* Source taps of output o along an axis of n_in -> n_out, align_corners=False (no clamping of the
 * source coordinate; the taps are clamped to the border, as PyTorch does). */
static void cubic_taps(int o, int n_in, int n_out, int idx[4], float w[4]) {
    float scale = (float)n_in / (float)n_out;
    float src = scale * ((float)o + 0.5f) - 0.5f;
    float fl = floorf(src);
    int i0 = (int)fl;
    cubic_weights(src - fl, w);
    for (int j = 0; j < 4; j++) {
        int i = i0 - 1 + j;
        idx[j] = i < 0 ? 0 : i >= n_in ? n_in - 1 : i;
    }
}

static int config_same_but_size(const tl_config *a, const tl_config *b) {
    return a->patch_size == b->patch_size && a->embed_dim == b->embed_dim && a->depth == b->depth &&
           a->num_heads == b->num_heads && a->mlp_ratio == b->mlp_ratio && a->stem_channels == b->stem_channels &&
           a->skip_lam == b->skip_lam && a->num_classes == b->num_classes && a->drop_path_rate == b->drop_path_rate;
}

int tl_model_copy_resized(tl_model *dst, const tl_model *src, char *err, size_t errlen) {
    const tl_config *cd = tl_model_config(dst), *cs = tl_model_config(src);
    if (!config_same_but_size(cd, cs)) {
        if (err && errlen)
            snprintf(err, errlen, "copy_resized: the models' configurations differ in more than img_size");
        return -1;
    }
    if (tl_model_num_tensors(dst) != tl_model_num_tensors(src)) {
        if (err && errlen) snprintf(err, errlen, "copy_resized: the models have different tensors");
        return -1;
    }
    int gs = tl_config_grid(cs), gd = tl_config_grid(cd), D = cs->embed_dim;
    for (int i = 0; i < tl_model_num_tensors(src); i++) {
        const tl_tensor *ts = tl_model_tensor(src, i), *td = tl_model_tensor(dst, i);
        if (strcmp(ts->name, td->name) != 0) {
            if (err && errlen)
                snprintf(err, errlen, "copy_resized: tensor %d is %s in one model, %s in the other", i, ts->name,
                         td->name);
            return -1;
        }
        if (strcmp(ts->name, "pos_embed") != 0 || gs == gd) {
            if (ts->numel != td->numel) {
                if (err && errlen) snprintf(err, errlen, "copy_resized: %s has different sizes", ts->name);
                return -1;
            }
            memcpy(td->data, ts->data, sizeof(float) * ts->numel);
            continue;
        }
        /* (1, 1 + gs*gs, D) -> (1, 1 + gd*gd, D): the class token's position as it is, the grid
         * as a (D, gs, gs) image resized bicubically to (D, gd, gd). */
        const float *in = ts->data + D;
        float *out = td->data + D;
        memcpy(td->data, ts->data, sizeof(float) * (size_t)D);
        for (int y = 0; y < gd; y++) {
            int iy[4], ix[4];
            float wy[4], wx[4];
            cubic_taps(y, gs, gd, iy, wy);
            for (int x = 0; x < gd; x++) {
                cubic_taps(x, gs, gd, ix, wx);
                float *o = out + ((size_t)y * gd + x) * D;
                for (int d = 0; d < D; d++) {
                    /* rows interpolated along x, then the four rows along y, as PyTorch's kernel */
                    float r[4];
                    for (int j = 0; j < 4; j++) {
                        const float *row = in + (size_t)iy[j] * gs * D;
                        r[j] = row[(size_t)ix[0] * D + d] * wx[0] + row[(size_t)ix[1] * D + d] * wx[1] +
                               row[(size_t)ix[2] * D + d] * wx[2] + row[(size_t)ix[3] * D + d] * wx[3];
                    }
                    o[d] = r[0] * wy[0] + r[1] * wy[1] + r[2] * wy[2] + r[3] * wy[3];
                }
            }
        }
    }
    for (int l = 0; l < 3; l++) *tl_model_bn_batches(dst, l) = *tl_model_bn_batches((tl_model *)src, l);
    return 0;
}

/* ======================================================================== */
/* run                                                                        */

typedef struct {
    uint64_t h;
} fnv;
static void fnv_init(fnv *f) { f->h = 1469598103934665603ull; }
static void fnv_add(fnv *f, const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = f->h;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    f->h = h;
}
static void fnv_u64(fnv *f, uint64_t v) { fnv_add(f, &v, sizeof v); }

typedef struct {
    uint32_t K, k, h, w, batch;
    uint64_t fingerprint, count, start, end, records, skipped, payload_bytes, payload_sum;
} part_header;

typedef struct {
    const tl_annotate_spec *spec;
    const char *run_dir;
    const tl_annotate_hooks *hooks;
    tl_train_result *res;
    tl_dataset *ds;
    tl_model *model;
    tl_ctx *ctx;
    tl_pool *dpool;          /* decoding, NULL when single-threaded */
    int S, g, N, K, k, B, threads;
    int64_t total, part_images;
    uint64_t fingerprint;
    /* batch buffers */
    float *images;           /* (B,3,S,S) */
    int *ok;                 /* (B) decoded */
    char (*why)[256];        /* (B) reasons of failed decodes */
    float *vals;             /* (k,N) of one image */
    uint16_t *idx16;         /* (k,N) */
    int32_t *idx32;          /* (k,N) for the writer */
    /* the part being written */
    FILE *pf;
    char ptmp[PATH_MAX], ppath[PATH_MAX];
    int part_no;
    int64_t part_start, part_records, part_skipped;
    uint64_t part_bytes;
    fnv part_sum;
    int64_t done, skipped;
} run;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static tl_train_status fail(run *r, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static tl_train_status fail(run *r, const char *reason, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tl_train_result_vfail(r->res, reason, fmt, ap);
    va_end(ap);
    return TL_TRAIN_FAILED;
}

static void log_msg(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_msg(run *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (r->hooks) tl_hook_vlog(r->hooks->on_log, r->hooks->user, fmt, ap);
    va_end(ap);
}

static int ncores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int part_name(const run *r, int n, int tmp, char *out) {
    int w = snprintf(out, PATH_MAX, "%s/part-%05d.tlpart%s", r->run_dir, n, tmp ? ".tmp" : "");
    return (w < 0 || w >= PATH_MAX) ? -1 : 0;
}

/* ---- setup ---- */

static tl_train_status setup(run *r) {
    const tl_annotate_spec *s = r->spec;
    char err[TL_ERR_LEN];
    if (s->batch_size < 1 || s->topk < 1 || s->part_images < 1 || s->size < 0)
        return fail(r, "CONFIG_ERROR", "invalid annotate spec (batch_size, topk, part_images or size)");
    if (!s->weights_path[0]) return fail(r, "CONFIG_ERROR", "no weights: the spec's weights_path is empty");
    if (mkdir(r->run_dir, 0755) != 0 && errno != EEXIST)
        return fail(r, "IO_ERROR", "cannot create run folder %s: %s", r->run_dir, strerror(errno));
    r->ds = tl_dataset_open(s->images_dir, err, sizeof err);
    if (!r->ds) return fail(r, "DATA_ERROR", "images: %s", err);
    tl_config ck;
    if (tl_checkpoint_config(s->weights_path, &ck, err, sizeof err) != 0)
        return fail(r, "CONFIG_ERROR", "weights %s: %s", s->weights_path, err);
    r->K = ck.num_classes;
    if (tl_dataset_num_classes(r->ds) != r->K)
        return fail(r, "DATA_ERROR", "the model has %d classes, the dataset %s has %d", r->K, s->images_dir,
                    tl_dataset_num_classes(r->ds));
    r->S = s->size > 0 ? s->size : ck.img_size;
    if (r->S % ck.patch_size != 0)
        return fail(r, "CONFIG_ERROR", "annotate.size %d is not a multiple of the model's patch_size %d", r->S,
                    ck.patch_size);
    if (s->topk > r->K)
        return fail(r, "CONFIG_ERROR", "annotate.topk %d is more than the model's %d classes", s->topk, r->K);
    r->k = s->topk;
    r->B = s->batch_size;
    r->part_images = (s->part_images + r->B - 1) / r->B * r->B;
    tl_config cfg = ck;
    cfg.img_size = r->S;
    r->g = tl_config_grid(&cfg);
    r->N = r->g * r->g;
    if (r->g > 1024) return fail(r, "CONFIG_ERROR", "the map would be %d x %d, more than 1024 per side", r->g, r->g);
    if (tl_config_validate(&cfg, err, sizeof err) != 0)
        return fail(r, "CONFIG_ERROR", "model at size %d: %s", r->S, err);
    tl_model *loaded = tl_model_new(&ck, 0, err, sizeof err);
    if (!loaded) return fail(r, "OUT_OF_MEMORY", "%s", err);
    if (tl_checkpoint_load(loaded, s->weights_path, s->from_ema ? TL_CKPT_FROM_EMA : 0, NULL, err, sizeof err) != 0) {
        tl_model_free(loaded);
        return fail(r, "CONFIG_ERROR", "weights %s: %s", s->weights_path, err);
    }
    if (r->S == ck.img_size) {
        r->model = loaded;
    } else {
        r->model = tl_model_new(&cfg, 0, err, sizeof err);
        if (!r->model) {
            tl_model_free(loaded);
            return fail(r, "OUT_OF_MEMORY", "%s", err);
        }
        int rc = tl_model_copy_resized(r->model, loaded, err, sizeof err);
        tl_model_free(loaded);
        if (rc != 0) return fail(r, "CONFIG_ERROR", "%s", err);
        log_msg(r, "position embedding resampled from %d x %d to %d x %d (input %d px, trained at %d px)",
                ck.img_size / ck.patch_size, ck.img_size / ck.patch_size, r->g, r->g, r->S, ck.img_size);
    }
    r->threads = s->threads > 0 ? s->threads : ncores();
    r->ctx = tl_ctx_new(r->model, r->B, 0, r->threads, err, sizeof err);
    tl_ctx_freeze_weights(r->ctx); /* the annotating model is fixed */
    if (!r->ctx) return fail(r, "OUT_OF_MEMORY", "%s", err);
    if (r->threads > 1 && !(r->dpool = tl_pool_new(r->threads)))
        return fail(r, "OUT_OF_MEMORY", "cannot start %d decoding threads", r->threads);
    size_t plane = (size_t)r->k * r->N;
    r->images = malloc(sizeof(float) * (size_t)r->B * 3 * r->S * r->S);
    r->ok = calloc((size_t)r->B, sizeof *r->ok);
    r->why = calloc((size_t)r->B, sizeof *r->why);
    r->vals = malloc(sizeof(float) * plane);
    r->idx16 = malloc(sizeof(uint16_t) * plane);
    r->idx32 = malloc(sizeof(int32_t) * plane);
    if (!r->images || !r->ok || !r->why || !r->vals || !r->idx16 || !r->idx32)
        return fail(r, "OUT_OF_MEMORY", "out of memory for the batch buffers");
    r->total = tl_dataset_count(r->ds);
    /* what makes a part this run's own */
    fnv f;
    fnv_init(&f);
    fnv_add(&f, PART_MAGIC, 8);
    uint64_t dims[] = {PART_VERSION, (uint64_t)r->K, (uint64_t)r->k, (uint64_t)r->g, (uint64_t)r->g,
                       (uint64_t)r->S, (uint64_t)r->B, (uint64_t)r->total};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) fnv_u64(&f, dims[i]);
    for (int64_t i = 0; i < r->total; i++) {
        const char *key = tl_dataset_relpath(r->ds, (int)i);
        fnv_add(&f, key, strlen(key) + 1);
    }
    for (int i = 0; i < tl_model_num_tensors(r->model); i++) {
        const tl_tensor *t = tl_model_tensor(r->model, i);
        fnv_add(&f, t->name, strlen(t->name) + 1);
        fnv_add(&f, t->data, sizeof(float) * t->numel);
    }
    r->fingerprint = f.h;
    return TL_TRAIN_SUCCEEDED;
}

static void cleanup(run *r) {
    if (r->pf) {
        fclose(r->pf);
        unlink(r->ptmp);
    }
    free(r->images);
    free(r->ok);
    free(r->why);
    free(r->vals);
    free(r->idx16);
    free(r->idx32);
    tl_pool_free(r->dpool);
    tl_ctx_free(r->ctx);
    tl_model_free(r->model);
    tl_dataset_free(r->ds);
}

/* ---- part files ---- */

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
    memcpy(b, PART_MAGIC, 8);
    put32(b + 8, PART_VERSION);
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
    fnv f;
    fnv_init(&f);
    fnv_add(&f, b, 96);
    put64(b + 96, f.h);
}

static int part_begin(run *r) {
    if (part_name(r, r->part_no, 1, r->ptmp) != 0 || part_name(r, r->part_no, 0, r->ppath) != 0) {
        fail(r, "IO_ERROR", "run folder path too long: %s", r->run_dir);
        return -1;
    }
    r->pf = fopen(r->ptmp, "wb");
    unsigned char zero[PART_HEADER] = {0};
    if (!r->pf || fwrite(zero, 1, sizeof zero, r->pf) != sizeof zero) {
        fail(r, "IO_ERROR", "cannot write %s: %s", r->ptmp, strerror(errno));
        return -1;
    }
    r->part_start = r->done;
    r->part_records = r->part_skipped = 0;
    r->part_bytes = 0;
    fnv_init(&r->part_sum);
    return 0;
}

static int part_write(run *r, const void *p, size_t n) {
    fnv_add(&r->part_sum, p, n);
    r->part_bytes += n;
    return fwrite(p, 1, n, r->pf) == n ? 0 : -1;
}

/* Header, fsync, rename into place, fsync of the folder. */
static int part_finish(run *r) {
    if (r->hooks && r->hooks->before_checkpoint) r->hooks->before_checkpoint(r->done, r->hooks->user);
    part_header h = {(uint32_t)r->K, (uint32_t)r->k, (uint32_t)r->g, (uint32_t)r->g, (uint32_t)r->B, r->fingerprint,
                     (uint64_t)r->total, (uint64_t)r->part_start, (uint64_t)r->done, (uint64_t)r->part_records,
                     (uint64_t)r->part_skipped, r->part_bytes, r->part_sum.h};
    unsigned char b[PART_HEADER];
    header_encode(&h, b);
    FILE *f = r->pf;
    r->pf = NULL;
    int ok = fflush(f) == 0 && fseek(f, 0, SEEK_SET) == 0 && fwrite(b, 1, sizeof b, f) == sizeof b && fflush(f) == 0 &&
             fsync(fileno(f)) == 0;
    int e = errno;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(r->ptmp, r->ppath) != 0 || tl_fsync_parent_dir(r->ppath) != 0) {
        if (ok) e = errno;
        unlink(r->ptmp);
        fail(r, "IO_ERROR", "cannot write %s: %s", r->ppath, strerror(e));
        return -1;
    }
    if (r->hooks && r->hooks->on_checkpoint) r->hooks->on_checkpoint(r->ppath, r->done, r->hooks->user);
    r->part_no++;
    return 0;
}

typedef int (*record_fn)(run *r, const char *key, void *user);

/* Reads and validates part n, expected to start at start; each record (in r->vals / r->idx32) goes to fn
 * when not NULL. On success *end and *skipped are the part's. -1 with IO_ERROR otherwise. */
static int part_read(run *r, int n, int64_t start, int64_t *end, int64_t *skipped, record_fn fn, void *user) {
    char path[PATH_MAX], why[256] = "";
    if (part_name(r, n, 0, path) != 0) {
        fail(r, "IO_ERROR", "run folder path too long: %s", r->run_dir);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(r, "IO_ERROR", "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char b[PART_HEADER], chk[PART_HEADER];
    size_t plane = (size_t)r->k * r->N;
    char *key = malloc(KEY_MAX + 1);
    struct stat st;
    part_header h;
    fnv sum;
    fnv_init(&sum);
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
    if (memcmp(b, PART_MAGIC, 8) != 0) BAD("not a part file (bad magic)");
    if (get32(b + 8) != PART_VERSION) BAD("version %u, expected %u", get32(b + 8), PART_VERSION);
    h = (part_header){get32(b + 12), get32(b + 16), get32(b + 20), get32(b + 24), get32(b + 28), get64(b + 32),
                      get64(b + 40), get64(b + 48), get64(b + 56), get64(b + 64), get64(b + 72), get64(b + 80),
                      get64(b + 88)};
    header_encode(&h, chk);
    if (memcmp(chk, b, PART_HEADER) != 0) BAD("header checksum mismatch (torn or altered)");
    if (h.K != (uint32_t)r->K || h.k != (uint32_t)r->k || h.h != (uint32_t)r->g || h.w != (uint32_t)r->g ||
        h.batch != (uint32_t)r->B)
        BAD("written for K=%u k=%u map %ux%u batch %u, this run has K=%d k=%d map %dx%d batch %d", h.K, h.k, h.h, h.w,
            h.batch, r->K, r->k, r->g, r->g, r->B);
    if (h.fingerprint != r->fingerprint || h.count != (uint64_t)r->total)
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
        fnv_add(&sum, rh, 8);
        uint64_t index = get32(rh);
        uint32_t klen = get32(rh + 4);
        if (index < h.start || index >= h.end || (i > 0 && index <= prev))
            BAD("record %llu: image index %llu out of order or range", (unsigned long long)i,
                (unsigned long long)index);
        prev = index;
        if (klen < 1 || klen > KEY_MAX || fread(key, 1, klen, f) != klen)
            BAD("record %llu: bad key", (unsigned long long)i);
        fnv_add(&sum, key, klen);
        key[klen] = '\0';
        const char *want = tl_dataset_relpath(r->ds, (int)index);
        if (strlen(want) != klen || memcmp(want, key, klen) != 0)
            BAD("record %llu: key is not image %llu's path", (unsigned long long)i, (unsigned long long)index);
        if (fread(r->vals, sizeof(float), plane, f) != plane || fread(r->idx16, sizeof(uint16_t), plane, f) != plane)
            BAD("truncated record %llu", (unsigned long long)i);
        fnv_add(&sum, r->vals, sizeof(float) * plane);
        fnv_add(&sum, r->idx16, sizeof(uint16_t) * plane);
        for (size_t j = 0; j < plane; j++) {
            if (!isfinite(r->vals[j]) || fabsf(r->vals[j]) > F16_MAX)
                BAD("record %llu: bad logit", (unsigned long long)i);
            if (r->idx16[j] >= (uint32_t)r->K) BAD("record %llu: class index out of range", (unsigned long long)i);
            r->idx32[j] = r->idx16[j];
        }
        if (fn && fn(r, key, user) != 0) {
            free(key);
            fclose(f);
            return -1;
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
    fail(r, "IO_ERROR", "refusing %s: %s; remove the run folder's part files to start over", path, why);
    return -1;
}

/* Numbers of the run folder's parts, sorted, which must be 0..n-1; removes leftover temporaries. */
static int list_parts(run *r, int *nparts) {
    *nparts = 0;
    DIR *d = opendir(r->run_dir);
    if (!d) {
        fail(r, "IO_ERROR", "cannot list %s: %s", r->run_dir, strerror(errno));
        return -1;
    }
    int count = 0, maxn = -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (strncmp(nm, "part-", 5) != 0) continue;
        size_t L = strlen(nm);
        if (L > 11 && strcmp(nm + L - 11, ".tlpart.tmp") == 0) {
            char p[PATH_MAX];
            if (snprintf(p, sizeof p, "%s/%s", r->run_dir, nm) < (int)sizeof p) {
                unlink(p);
                log_msg(r, "removed %s (a part whose writing was interrupted)", p);
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
            fail(r, "IO_ERROR", "refusing %s/%s: not a part file name this annotator writes", r->run_dir, nm);
            closedir(d); /* after the message: nm lives in the stream */
            return -1;
        }
        count++;
        if (num > maxn) maxn = num;
    }
    closedir(d);
    if (count != maxn + 1) {
        fail(r, "IO_ERROR", "the part files in %s are not numbered 0..%d without gaps", r->run_dir, count - 1);
        return -1;
    }
    *nparts = count;
    return 0;
}

/* Validates every part; sets done, skipped and part_no. */
static int resume(run *r) {
    int n = 0;
    if (list_parts(r, &n) != 0) return -1;
    int64_t pos = 0, skipped = 0;
    for (int i = 0; i < n; i++) {
        int64_t end = 0, sk = 0;
        if (part_read(r, i, pos, &end, &sk, NULL, NULL) != 0) return -1;
        pos = end;
        skipped += sk;
    }
    r->done = pos;
    r->skipped = skipped;
    r->part_no = n;
    r->res->step = pos;
    r->res->skipped_images = skipped;
    if (n > 0)
        log_msg(r, "resumed after %d part files: %lld of %lld images done", n, (long long)pos, (long long)r->total);
    return 0;
}

/* ---- annotation ---- */

typedef struct {
    run *r;
    int64_t lo;
    int n;
} decode_job;

static void decode_part(void *arg, int tid, int nt) {
    decode_job *j = arg;
    run *r = j->r;
    size_t img = (size_t)3 * r->S * r->S;
    for (int i = tid; i < j->n; i += nt) {
        char path[PATH_MAX];
        tl_image im = {0};
        r->ok[i] = 0;
        if (tl_dataset_path(r->ds, (int)(j->lo + i), path, sizeof path) != 0) {
            snprintf(r->why[i], sizeof r->why[i], "path too long");
            continue;
        }
        /* the smallest DCT scaling that keeps both sides >= S: no side is upsampled */
        if (tl_image_load(path, r->S, &im, r->why[i], sizeof r->why[i]) != 0) continue;
        tl_transform_full(&im, r->S, r->images + (size_t)i * img);
        tl_image_free(&im);
        r->ok[i] = 1;
    }
}

/* One batch [lo, hi): decode, forward, top-k, records to the part. */
static int annotate_batch(run *r, int64_t lo, int64_t hi) {
    int n = (int)(hi - lo);
    size_t img = (size_t)3 * r->S * r->S;
    decode_job j = {r, lo, n};
    tl_pool_run(r->dpool, decode_part, &j);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (!r->ok[i]) {
            r->skipped++;
            r->part_skipped++;
            log_msg(r, "skipped %s: %s", tl_dataset_relpath(r->ds, (int)(lo + i)), r->why[i]);
            continue;
        }
        if (m != i) memmove(r->images + (size_t)m * img, r->images + (size_t)i * img, sizeof(float) * img);
        m++;
    }
    if (m == 0) return 0;
    if (tl_forward(r->ctx, r->images, m, 0, NULL, 0) != 0) {
        fail(r, "CONFIG_ERROR", "the forward pass failed on images %lld..%lld", (long long)lo, (long long)hi - 1);
        return -1;
    }
    const float *aux = tl_logits_aux(r->ctx);
    int K = r->K, k = r->k, N = r->N;
    float tv[64];
    int32_t tc[64];
    float *val = k <= 64 ? tv : malloc(sizeof(float) * (size_t)k);
    int32_t *cls = k <= 64 ? tc : malloc(sizeof(int32_t) * (size_t)k);
    if (!val || !cls) {
        if (val != tv) free(val);
        if (cls != tc) free(cls);
        fail(r, "OUT_OF_MEMORY", "out of memory");
        return -1;
    }
    int rc = 0, b = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!r->ok[i]) continue;
        const char *key = tl_dataset_relpath(r->ds, (int)(lo + i));
        for (int p = 0; p < N; p++) {
            if (tl_topk(aux + ((size_t)b * N + p) * K, K, k, cls, val) != 0) {
                rc = -1;
                fail(r, "CONFIG_ERROR", "the model produced a NaN logit for %s; the weights are broken", key);
                break;
            }
            for (int t = 0; t < k; t++) {
                float x = val[t] > F16_MAX ? F16_MAX : val[t] < -F16_MAX ? -F16_MAX : val[t];
                r->vals[(size_t)t * N + p] = x;
                r->idx16[(size_t)t * N + p] = (uint16_t)cls[t];
            }
        }
        if (rc) break;
        size_t klen = strlen(key), plane = (size_t)k * N;
        if (klen < 1 || klen > KEY_MAX) {
            rc = -1;
            fail(r, "DATA_ERROR", "image path longer than %d bytes: %.200s", KEY_MAX, key);
            break;
        }
        unsigned char rh[8];
        put32(rh, (uint32_t)(lo + i));
        put32(rh + 4, (uint32_t)klen);
        if (part_write(r, rh, 8) || part_write(r, key, klen) || part_write(r, r->vals, sizeof(float) * plane) ||
            part_write(r, r->idx16, sizeof(uint16_t) * plane)) {
            rc = -1;
            fail(r, "IO_ERROR", "cannot write %s: %s", r->ptmp, strerror(errno));
            break;
        }
        r->part_records++;
        b++;
    }
    if (val != tv) free(val);
    if (cls != tc) free(cls);
    return rc;
}

static int merge_record(run *r, const char *key, void *user) {
    char err[TL_ERR_LEN];
    if (tl_labelmap_writer_add(user, key, r->vals, r->idx32, err, sizeof err) != 0) {
        fail(r, "IO_ERROR", "%s", err);
        return -1;
    }
    return 0;
}

/* The parts, in order, into the output; then the parts are removed. */
static tl_train_status merge(run *r) {
    char err[TL_ERR_LEN];
    if (r->skipped >= r->total)
        return fail(r, "DATA_ERROR", "no image of %s could be read", r->spec->images_dir);
    tl_labelmap_writer *wr = tl_labelmap_writer_new(r->spec->out_path, r->K, r->k, r->g, r->g, err, sizeof err);
    if (!wr) return fail(r, "IO_ERROR", "%s", err);
    int64_t pos = 0;
    for (int i = 0; i < r->part_no; i++) {
        int64_t end = 0, sk = 0;
        if (part_read(r, i, pos, &end, &sk, merge_record, wr) != 0) {
            tl_labelmap_writer_abort(wr);
            return TL_TRAIN_FAILED;
        }
        pos = end;
    }
    if (pos != r->total) {
        tl_labelmap_writer_abort(wr);
        return fail(r, "IO_ERROR", "the part files cover %lld of %lld images", (long long)pos, (long long)r->total);
    }
    if (tl_labelmap_writer_finish(wr, err, sizeof err) != 0) return fail(r, "IO_ERROR", "%s", err);
    for (int i = 0; i < r->part_no; i++) {
        char p[PATH_MAX];
        if (part_name(r, i, 0, p) == 0) unlink(p);
    }
    char p0[PATH_MAX];
    if (part_name(r, 0, 0, p0) == 0) tl_fsync_parent_dir(p0);
    r->res->status = TL_TRAIN_SUCCEEDED;
    snprintf(r->res->message, sizeof r->res->message, "annotated %lld images (%lld skipped) into %.900s",
             (long long)(r->total - r->skipped), (long long)r->skipped, r->spec->out_path);
    return TL_TRAIN_SUCCEEDED;
}

static tl_train_status loop(run *r) {
    const tl_annotate_hooks *h = r->hooks;
    if (h && h->on_start) h->on_start(r->done, r->total, h->user);
    double times[WINDOW] = {0}, t_prev = now_s();
    int64_t counts[WINDOW] = {0}, batches = 0;
    if (r->done < r->total && part_begin(r) != 0) return TL_TRAIN_FAILED;
    while (r->done < r->total) {
        int64_t lo = r->done, hi = lo + r->B < r->total ? lo + r->B : r->total;
        if (annotate_batch(r, lo, hi) != 0) return TL_TRAIN_FAILED;
        r->done = hi;
        r->res->step = r->done;
        r->res->skipped_images = r->skipped;
        double t = now_s();
        times[batches % WINDOW] = t - t_prev;
        counts[batches % WINDOW] = hi - lo;
        t_prev = t;
        batches++;
        if (h && h->on_progress) {
            double st = 0;
            int64_t sn = 0;
            for (int i = 0; i < WINDOW; i++) st += times[i], sn += counts[i];
            double ips = st > 0 ? (double)sn / st : 0.0;
            tl_annotate_report rep = {r->done, r->total, r->skipped, ips,
                                      ips > 0 ? (double)(r->total - r->done) / ips : -1.0};
            h->on_progress(&rep, h->user);
        }
        int last = r->done == r->total;
        int stop = !last && h && h->should_stop && h->should_stop(h->user);
        if (last || stop || r->done % r->part_images == 0) {
            if (part_finish(r) != 0) return TL_TRAIN_FAILED;
            if (!last && !stop && part_begin(r) != 0) return TL_TRAIN_FAILED;
        }
        t_prev = now_s(); /* images/s measures batches, not part writes */
        if (stop) {
            r->res->status = TL_TRAIN_STOPPED;
            snprintf(r->res->reason, sizeof r->res->reason, "STOPPED");
            snprintf(r->res->message, sizeof r->res->message, "stopped after %lld of %lld images; part written",
                     (long long)r->done, (long long)r->total);
            return TL_TRAIN_STOPPED;
        }
    }
    return merge(r);
}

tl_train_status tl_annotate_run(const tl_annotate_spec *spec, const char *run_dir, const tl_annotate_hooks *hooks,
                                tl_train_result *res) {
    memset(res, 0, sizeof *res);
    res->best_top1 = -1.0;
    run r = {.spec = spec, .run_dir = run_dir, .hooks = hooks, .res = res};
    tl_train_status st = setup(&r);
    if (st == TL_TRAIN_SUCCEEDED) st = resume(&r) != 0 ? TL_TRAIN_FAILED : loop(&r);
    res->step = r.done;
    res->skipped_images = r.skipped;
    cleanup(&r);
    return st;
}
