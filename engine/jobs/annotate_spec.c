/*
 * annotate_spec.c: the JSON spec of an annotate job (annotate.h,
 * schema/annotatespec.schema.json): defaults, the strict parse and the
 * resolution of its paths against the data root.
 *
 * Follows jobspec.c (helpers in jobspec_internal.h): fixed field tables,
 * unknown or duplicate keys refused, every refusal with its JSON pointer,
 * cheap checks first and the file system last. Paths are confined to the
 * data root by tl_path_confine (files.h), through tl_spec_resolve_path.
 * Pure functions; any thread.
 */
#include "tokenlab/annotate.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "jobs/jobspec_internal.h"
#include "tokenlab/files.h"
#include "tokenlab/labelmap.h"

#define JOB_ID_MAX 9007199254740991.0 /* 2^53 - 1 */

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
        if (tl_spec_get_checkpoint(seen[2], "/source/checkpoint", s->source_checkpoint, sizeof s->source_checkpoint,
                                   e))
            return -1;
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
            tl_path_status ps = tl_path_confine_abs(root_real ? root_real : "/", full, TL_PATH_WANT_ANY, real);
            if (ps == TL_PATH_OUTSIDE) return tl_spec_fail(e, P, "%s", tl_path_status_str(ps));
            if (ps != TL_PATH_OK || stat(real, &st) != 0)
                return tl_spec_fail(e, P, "'%.200s' is a symbolic link to nothing", val);
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
    if (tl_spec_data_root(data_root, root_real, &root, e)) return -1;
    snprintf(s->data_root, sizeof s->data_root, "%s", root ? root_real : "");
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
