/*
 * jobspec.c: the JSON job spec of a training job (jobspec.h,
 * schema/jobspec.schema.json, schema/jobspec.md), the kind of any job
 * document (tl_jobspec_kind), and the strict-parsing helpers every job kind's
 * parser shares (jobspec_internal.h).
 *
 * The document is parsed with cJSON (nothing may follow it), then walked
 * object by object against fixed field tables: every member must be a known
 * field given once, of the right type and in range. Each refusal names the
 * JSON pointer (RFC 6901) of the offending value and the rule. The work is
 * linear in the size of the document (duplicate and unknown keys are found
 * with per-field flags, never by comparing members pairwise).
 *
 * model.init (fine-tuning): the source is named, never given as a path (a
 * registered model, or a job id and one of its checkpoints); the caller
 * resolves it to a file and calls tl_jobspec_apply_init with that file's
 * configuration, which merges it into the spec: the architecture comes from
 * the source, the spec may change only img_size, num_classes and the
 * drop-path rate. Which model fields a spec gave is kept as bits
 * (tl_jobspec_model_field, jobspec.h) so that the merge can tell a given
 * value from an absent one.
 *
 * Dataset paths: with a data root they must be relative, without "..", and
 * must resolve (realpath, so following symlinks) inside the root's realpath
 * (tl_path_confine, files.h); without one they are resolved against the
 * working folder. Folders must be
 * folders and the label-map file a regular file; the resolved absolute paths
 * are stored. Pure functions (no global state; cJSON's global error pointer
 * is not used); any thread.
 */
#include "tokenlab/jobspec.h"
#include "jobs/jobspec_internal.h"
#include "tokenlab/base.h"
#include "tokenlab/dataset.h"
#include "tokenlab/files.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest seed a JSON number (an IEEE double) carries exactly: 2^53 - 1. */
#define SEED_MAX 9007199254740991.0

/* ------------------------------------------------------------------ errors */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if it is not one. */
static int utf8_len(const unsigned char *s) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    int n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;      /* overlong */
        if (c == 0xED) hi = 0x9F;      /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;      /* overlong */
        if (c == 0xF4) hi = 0x8F;      /* > U+10FFFF */
    } else
        return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* Error texts quote user input (keys, preset names, paths) and may have cut
 * it mid-character: make them valid UTF-8 without control characters, so
 * that they can be sent back in JSON as they are. */
static void sanitize(char *s) {
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = utf8_len(p);
        if (n == 0 || (n == 1 && (*p < 0x20 || *p == 0x7F))) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

void tl_spec_error_format(const tl_spec_error *e, char *buf, size_t len) {
    if (!buf || len == 0) return;
    if (!e) {
        buf[0] = '\0';
        return;
    }
    if (e->pointer[0])
        snprintf(buf, len, "%s: %s", e->pointer, e->message);
    else
        snprintf(buf, len, "%s", e->message);
}

/* parent + "/" + key with RFC 6901 escaping ("~" -> "~0", "/" -> "~1").
 * Keys are cut at 64 bytes (on a UTF-8 character boundary) so that a long
 * unknown key still leaves a readable pointer. */
static void ptr_join(char *out, size_t n, const char *parent, const char *key) {
    size_t o = (size_t)snprintf(out, n, "%s/", parent);
    if (o >= n) {
        out[n - 1] = '\0';
        return;
    }
    size_t klen = strlen(key);
    int cut = 0;
    if (klen > 64) {
        klen = 64;
        while (klen > 0 && ((unsigned char)key[klen] & 0xC0) == 0x80) klen--;
        cut = 1;
    }
    for (size_t i = 0; i < klen; i++) {
        const char *rep = NULL;
        char one[2] = {key[i], '\0'};
        if (key[i] == '~')
            rep = "~0";
        else if (key[i] == '/')
            rep = "~1";
        else
            rep = one;
        size_t rl = strlen(rep);
        if (o + rl + 1 > n) break;
        memcpy(out + o, rep, rl);
        o += rl;
    }
    if (cut && o + 3 + 1 <= n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------ values */

static int get_number(const cJSON *it, const char *ptr, double *v, tl_spec_error *e) {
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) return tl_spec_fail(e, ptr, "must be a number");
    *v = it->valuedouble;
    return 0;
}

/* An integer in [lo, hi]; rule is the text of the range ("in 1..10000"). */
static int get_int(const cJSON *it, const char *ptr, double lo, double hi, const char *rule, double *v,
                   tl_spec_error *e) {
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble != floor(it->valuedouble))
        return tl_spec_fail(e, ptr, "must be an integer %s", rule);
    double x = it->valuedouble;
    if (x < lo || x > hi) return tl_spec_fail(e, ptr, "must be an integer %s, got %.17g", rule, x);
    *v = x;
    return 0;
}

static int get_bool(const cJSON *it, const char *ptr, int *v, tl_spec_error *e) {
    if (!cJSON_IsBool(it)) return tl_spec_fail(e, ptr, "must be a boolean");
    *v = cJSON_IsTrue(it) ? 1 : 0;
    return 0;
}

static int get_string(const cJSON *it, const char *ptr, const char **v, tl_spec_error *e) {
    if (!cJSON_IsString(it) || !it->valuestring) return tl_spec_fail(e, ptr, "must be a string");
    *v = it->valuestring;
    return 0;
}

static int get_object(const cJSON *it, const char *ptr, tl_spec_error *e) {
    if (!cJSON_IsObject(it)) return tl_spec_fail(e, ptr, "must be an object");
    return 0;
}

/* Kinds of numeric rules for floats. */
typedef enum {
    R_GT0,       /* > 0 */
    R_GE0,       /* >= 0 */
    R_UNIT_OPEN, /* [0, 1) */
    R_PROB,      /* [0, 1] */
    R_EMA,       /* 0, or (0, 1): i.e. [0, 1) with its own message */
    R_UNIT_HALF, /* (0, 1] */
} num_rule;

static int check_float(const cJSON *it, const char *ptr, num_rule r, float *out, tl_spec_error *e) {
    double v = 0.0;
    if (get_number(it, ptr, &v, e)) return -1;
    float f = (float)v;
    switch (r) {
    case R_GT0:
        if (!(v > 0.0) || !(f > 0.0f) || !isfinite(f)) return tl_spec_fail(e, ptr, "must be a number > 0, got %.9g", v);
        break;
    case R_GE0:
        if (!(v >= 0.0) || !isfinite(f)) return tl_spec_fail(e, ptr, "must be a number >= 0, got %.9g", v);
        break;
    case R_UNIT_OPEN:
        if (!(v >= 0.0 && v < 1.0) || !(f < 1.0f)) return tl_spec_fail(e, ptr, "must be a number in [0, 1), got %.9g", v);
        break;
    case R_PROB:
        if (!(v >= 0.0 && v <= 1.0)) return tl_spec_fail(e, ptr, "must be a number in [0, 1], got %.9g", v);
        break;
    case R_EMA:
        if (!(v >= 0.0 && v < 1.0) || !(f < 1.0f))
            return tl_spec_fail(e, ptr, "must be 0 (off) or a number in (0, 1), got %.9g", v);
        break;
    case R_UNIT_HALF:
        if (!(v > 0.0 && v <= 1.0) || !(f > 0.0f)) return tl_spec_fail(e, ptr, "must be a number in (0, 1], got %.9g", v);
        break;
    }
    *out = f;
    return 0;
}

/* Finds the field index of key among names[0..n), or -1. */
static int field_index(const char *const *names, int n, const char *key) {
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], key) == 0) return i;
    return -1;
}

/* Checks every member of o: known (else "unknown field") and given once
 * (else "duplicate key"). seen[] receives the member of each field. */
static int check_members(const cJSON *o, const char *ptr, const char *const *names, int n, const cJSON **seen,
                         tl_spec_error *e) {
    for (int i = 0; i < n; i++) seen[i] = NULL;
    for (const cJSON *it = o->child; it; it = it->next) {
        char p[256];
        ptr_join(p, sizeof p, ptr, it->string ? it->string : "");
        int f = it->string ? field_index(names, n, it->string) : -1;
        if (f < 0) return tl_spec_fail(e, p, "unknown field");
        if (seen[f]) return tl_spec_fail(e, p, "duplicate key");
        seen[f] = it;
    }
    return 0;
}

/* ------------------------------------------------------------------ model */

/* In tl_jobspec_model_field order (jobspec.h), then "init", which is no config field. */
static const char *const MODEL_FIELDS[] = {"preset",      "img_size", "patch_size",    "embed_dim",
                                           "depth",       "num_heads", "mlp_ratio",    "stem_channels",
                                           "skip_lam",    "num_classes", "drop_path_rate", "init"};
#define N_MODEL (int)(sizeof MODEL_FIELDS / sizeof MODEL_FIELDS[0])
#define MF_INIT TL_MF_COUNT
_Static_assert(N_MODEL == TL_MF_COUNT + 1, "MODEL_FIELDS follows tl_jobspec_model_field, then init");

/* Reports a tl_config_validate message ("field: rule") at /model/field, else at /model. */
static int config_fail(tl_spec_error *e, const char *msg) {
    const char *colon = strstr(msg, ": ");
    if (colon) {
        char field[64];
        size_t fl = (size_t)(colon - msg);
        if (fl < sizeof field) {
            memcpy(field, msg, fl);
            field[fl] = '\0';
            int f = field_index(MODEL_FIELDS, N_MODEL, field);
            if (f > 0 && f < TL_MF_COUNT) {
                char p[96];
                snprintf(p, sizeof p, "/model/%s", field);
                return tl_spec_fail(e, p, "%s", colon + 2);
            }
        }
    }
    return tl_spec_fail(e, "/model", "%s", msg);
}

/* With model.init the fields are checked one by one (their combination only once the source is known,
 * in tl_jobspec_apply_init); the limits and wording are tl_config_validate's. */
static int check_model_field(int f, const tl_config *c, const char *p, tl_spec_error *e) {
    switch (f) {
    case TL_MF_IMG_SIZE:
        if (c->img_size < 1 || c->img_size > 4096) return tl_spec_fail(e, p, "must be in 1..4096, got %d", c->img_size);
        break;
    case TL_MF_PATCH_SIZE:
        if (c->patch_size <= 0) return tl_spec_fail(e, p, "must be positive, got %d", c->patch_size);
        if (c->patch_size % 2) return tl_spec_fail(e, p, "must be even (the stem has stride 2), got %d", c->patch_size);
        break;
    case TL_MF_EMBED_DIM:
        if (c->embed_dim < 1 || c->embed_dim > 16384) return tl_spec_fail(e, p, "must be in 1..16384, got %d", c->embed_dim);
        break;
    case TL_MF_DEPTH:
        if (c->depth < 1 || c->depth > 256) return tl_spec_fail(e, p, "must be in 1..256, got %d", c->depth);
        break;
    case TL_MF_NUM_HEADS:
        if (c->num_heads <= 0) return tl_spec_fail(e, p, "must be positive, got %d", c->num_heads);
        break;
    case TL_MF_MLP_RATIO:
        if (!(c->mlp_ratio > 0.0f && c->mlp_ratio <= 64.0f))
            return tl_spec_fail(e, p, "must be in (0, 64], got %g", (double)c->mlp_ratio);
        break;
    case TL_MF_STEM_CHANNELS:
        if (c->stem_channels < 1 || c->stem_channels > 16384)
            return tl_spec_fail(e, p, "must be in 1..16384, got %d", c->stem_channels);
        break;
    case TL_MF_SKIP_LAM:
        if (!(c->skip_lam > 0.0f)) return tl_spec_fail(e, p, "must be positive, got %g", (double)c->skip_lam);
        break;
    case TL_MF_NUM_CLASSES:
        if (c->num_classes < 1 || c->num_classes > 100000)
            return tl_spec_fail(e, p, "must be in 1..100000, got %d", c->num_classes);
        break;
    case TL_MF_DROP_PATH_RATE:
        if (!(c->drop_path_rate >= 0.0f && c->drop_path_rate < 1.0f))
            return tl_spec_fail(e, p, "must be in [0, 1), got %g", (double)c->drop_path_rate);
        break;
    default: break;
    }
    return 0;
}

/* ------------------------------------------------------------------ model.init */

static const char *const INIT_FIELDS[] = {"model", "job_id", "checkpoint", "ema", "head"};
#define N_INIT (int)(sizeof INIT_FIELDS / sizeof INIT_FIELDS[0])

/* A registered model's name: 1..64 characters of [A-Za-z0-9._-]. */
static int model_name_ok(const char *n) {
    size_t l = strlen(n);
    if (l < 1 || l > 64) return 0;
    for (size_t i = 0; i < l; i++) {
        char c = n[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return 1;
}

static int parse_init(const cJSON *o, tl_train_spec *s, tl_spec_error *e) {
    const char *P = "/model/init";
    if (get_object(o, P, e)) return -1;
    const cJSON *seen[N_INIT];
    if (check_members(o, P, INIT_FIELDS, N_INIT, seen, e)) return -1;
    s->init = 1;
    s->init_model[0] = '\0';
    s->init_job = 0;
    snprintf(s->init_checkpoint, sizeof s->init_checkpoint, "best");
    s->init_ema = -1;
    s->init_head = -1;
    if (seen[0]) {
        const char *n = "";
        if (get_string(seen[0], "/model/init/model", &n, e)) return -1;
        if (!model_name_ok(n))
            return tl_spec_fail(e, "/model/init/model", "must be a model name: 1..64 characters of A-Z a-z 0-9 . _ -");
        snprintf(s->init_model, sizeof s->init_model, "%s", n);
    }
    double v = 0.0;
    if (seen[1]) {
        if (get_int(seen[1], "/model/init/job_id", 1, SEED_MAX, "in 1..9007199254740991 (a job id)", &v, e)) return -1;
        s->init_job = (int64_t)v;
    }
    if (seen[2]) {
        if (tl_spec_get_checkpoint(seen[2], "/model/init/checkpoint", s->init_checkpoint, sizeof s->init_checkpoint,
                                   e))
            return -1;
    }
    if (seen[3] && get_bool(seen[3], "/model/init/ema", &s->init_ema, e)) return -1;
    if (seen[4]) {
        const char *h = "";
        if (get_string(seen[4], "/model/init/head", &h, e)) return -1;
        if (strcmp(h, "reinit") == 0) s->init_head = TL_HEAD_REINIT;
        else if (strcmp(h, "keep") == 0) s->init_head = TL_HEAD_KEEP;
        else if (strcmp(h, "match") == 0) s->init_head = TL_HEAD_MATCH;
        else return tl_spec_fail(e, "/model/init/head", "must be one of \"reinit\", \"keep\", \"match\"");
    }
    if (seen[0] && seen[1])
        return tl_spec_fail(e, P, "give exactly one source: \"model\" (a registered model) or \"job_id\", not both");
    if (!seen[0] && !seen[1])
        return tl_spec_fail(e, P, "give exactly one source: \"model\" (a registered model) or \"job_id\"");
    if (seen[2] && seen[0])
        return tl_spec_fail(e, "/model/init/checkpoint", "only with \"job_id\" (a registered model has one set of weights)");
    return 0;
}

static int parse_model(const cJSON *o, tl_train_spec *s, tl_spec_error *e) {
    const char *P = "/model";
    if (get_object(o, P, e)) return -1;
    const cJSON *seen[N_MODEL];
    if (check_members(o, P, MODEL_FIELDS, N_MODEL, seen, e)) return -1;
    tl_config c;
    memset(&c, 0, sizeof c);
    s->preset[0] = '\0';
    s->init_model_fields = 0;
    for (int f = 0; f < TL_MF_COUNT; f++)
        if (seen[f]) s->init_model_fields |= 1u << f;
    int init = seen[MF_INIT] != NULL;
    if (init) {
        if (parse_init(seen[MF_INIT], s, e)) return -1;
        if (seen[0])
            return tl_spec_fail(e, "/model/preset",
                                "not with model.init: the architecture comes from the source (give only the fields "
                                "to change: img_size, num_classes, drop_path_rate)");
    }
    if (seen[0]) {
        const char *name = "";
        if (get_string(seen[0], "/model/preset", &name, e)) return -1;
        if (tl_config_preset(name, &c) != 0) {
            char known[128] = "";
            size_t o2 = 0;
            for (const char *const *p = tl_config_preset_names(); *p; p++) {
                int w = snprintf(known + o2, sizeof known - o2, "%s%s", o2 ? ", " : "", *p);
                if (w < 0 || (size_t)w >= sizeof known - o2) break;
                o2 += (size_t)w;
            }
            return tl_spec_fail(e, "/model/preset", "unknown preset '%.64s' (known: %s)", name, known);
        }
        snprintf(s->preset, sizeof s->preset, "%s", name);
    }
    for (int f = 1; f < TL_MF_COUNT; f++) {
        char p[64];
        snprintf(p, sizeof p, "/model/%s", MODEL_FIELDS[f]);
        if (!seen[f]) {
            if (!seen[0] && !init) return tl_spec_fail(e, p, "required (or give a preset, or model.init)");
            continue;
        }
        const char *n = MODEL_FIELDS[f];
        int is_float = strcmp(n, "mlp_ratio") == 0 || strcmp(n, "skip_lam") == 0 || strcmp(n, "drop_path_rate") == 0;
        if (is_float) {
            double v = 0.0;
            if (get_number(seen[f], p, &v, e)) return -1;
            float fv = (float)v;
            if (!isfinite(fv)) return tl_spec_fail(e, p, "must be a number, got %.9g", v);
            if (strcmp(n, "mlp_ratio") == 0) c.mlp_ratio = fv;
            else if (strcmp(n, "skip_lam") == 0) c.skip_lam = fv;
            else c.drop_path_rate = fv;
        } else {
            const cJSON *it = seen[f];
            if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble != floor(it->valuedouble))
                return tl_spec_fail(e, p, "must be an integer");
            double v = it->valuedouble;
            /* Far outside every limit of tl_config_validate; keeps the cast defined. */
            if (v < -1e9 || v > 1e9) return tl_spec_fail(e, p, "must be an integer of reasonable size, got %.17g", v);
            int iv = (int)v;
            if (strcmp(n, "img_size") == 0) c.img_size = iv;
            else if (strcmp(n, "patch_size") == 0) c.patch_size = iv;
            else if (strcmp(n, "embed_dim") == 0) c.embed_dim = iv;
            else if (strcmp(n, "depth") == 0) c.depth = iv;
            else if (strcmp(n, "num_heads") == 0) c.num_heads = iv;
            else if (strcmp(n, "stem_channels") == 0) c.stem_channels = iv;
            else c.num_classes = iv;
        }
        if (init && check_model_field(f, &c, p, e)) return -1;
    }
    if (init) { /* the rest comes from the source (tl_jobspec_apply_init) */
        s->model = c;
        return 0;
    }
    char msg[TL_ERR_LEN] = "";
    if (tl_config_validate(&c, msg, sizeof msg) != 0) return config_fail(e, msg); /* "field: rule" -> /model/field */
    s->model = c;
    return 0;
}

/* ------------------------------------------------------------------ merging the source (tl_jobspec_apply_init) */

int tl_jobspec_apply_init(tl_train_spec *s, const tl_config *src, tl_spec_error *e) {
    if (e) e->pointer[0] = e->message[0] = '\0';
    if (!s || !s->init) return 0;
    if (!src) return tl_spec_fail(e, "/model/init", "no source configuration");
    char msg[TL_ERR_LEN] = "";
    if (tl_config_validate(src, msg, sizeof msg) != 0)
        return tl_spec_fail(e, "/model/init", "the source's configuration is not valid: %s", msg);
    unsigned given = s->init_model_fields;
    const tl_config *sp = &s->model;
    /* The architecture: what the spec gives must be the source's. */
    static const int ARCH[] = {TL_MF_PATCH_SIZE, TL_MF_EMBED_DIM, TL_MF_DEPTH,   TL_MF_NUM_HEADS,
                               TL_MF_MLP_RATIO,  TL_MF_STEM_CHANNELS, TL_MF_SKIP_LAM};
    for (size_t i = 0; i < sizeof ARCH / sizeof ARCH[0]; i++) {
        int f = ARCH[i];
        if (!(given & (1u << f))) continue;
        char a[32], b[32];
        int differ;
        switch (f) {
        case TL_MF_MLP_RATIO:
            differ = sp->mlp_ratio != src->mlp_ratio;
            snprintf(a, sizeof a, "%g", (double)src->mlp_ratio);
            snprintf(b, sizeof b, "%g", (double)sp->mlp_ratio);
            break;
        case TL_MF_SKIP_LAM:
            differ = sp->skip_lam != src->skip_lam;
            snprintf(a, sizeof a, "%g", (double)src->skip_lam);
            snprintf(b, sizeof b, "%g", (double)sp->skip_lam);
            break;
        default: {
            int x = f == TL_MF_PATCH_SIZE ? src->patch_size : f == TL_MF_EMBED_DIM ? src->embed_dim
                    : f == TL_MF_DEPTH    ? src->depth      : f == TL_MF_NUM_HEADS ? src->num_heads
                                                            : src->stem_channels;
            int y = f == TL_MF_PATCH_SIZE ? sp->patch_size : f == TL_MF_EMBED_DIM ? sp->embed_dim
                    : f == TL_MF_DEPTH    ? sp->depth      : f == TL_MF_NUM_HEADS ? sp->num_heads
                                                           : sp->stem_channels;
            differ = x != y;
            snprintf(a, sizeof a, "%d", x);
            snprintf(b, sizeof b, "%d", y);
        }
        }
        if (!differ) continue;
        char p[64];
        snprintf(p, sizeof p, "/model/%s", MODEL_FIELDS[f]);
        if (f == TL_MF_PATCH_SIZE)
            return tl_spec_fail(e, p,
                                "the source has %s, the spec %s; fine-tuning cannot change the patch size (the patch "
                                "embedding's weights are made for it)",
                                a, b);
        return tl_spec_fail(e, p, "the source has %s, the spec %s; the architecture comes from the source", a, b);
    }
    /* What the spec may change. */
    tl_config c = *src;
    if (given & (1u << TL_MF_IMG_SIZE)) c.img_size = sp->img_size;
    if (given & (1u << TL_MF_NUM_CLASSES)) c.num_classes = sp->num_classes;
    if (given & (1u << TL_MF_DROP_PATH_RATE)) c.drop_path_rate = sp->drop_path_rate;
    /* Every job's rule: num_classes is the training data's number of classes. */
    const char *whose = "the spec";
    if (s->train_dir[0]) {
        int k = tl_dataset_count_classes(s->train_dir, NULL, 0);
        if (k > 0) {
            c.num_classes = k;
            whose = "the training data";
        }
    }
    if (tl_config_validate(&c, msg, sizeof msg) != 0) return config_fail(e, msg);
    if (s->init_head == TL_HEAD_KEEP && c.num_classes != src->num_classes)
        return tl_spec_fail(e, "/model/init/head",
                            "\"keep\" needs as many classes as the source: the source has %d, %s %d; use "
                            "\"reinit\" or \"match\"",
                            src->num_classes, whose, c.num_classes);
    s->model = c;
    s->drop_path = c.drop_path_rate;
    return 0;
}

/* ------------------------------------------------------------------ paths */

/* Resolves one dataset path (see the file comment) by tl_path_confine, or
 * without a data root against the working folder (tl_path_confine_abs under
 * "/"). want_dir: folder, else regular file. root_real: realpath of the data
 * root, or NULL. */
static int resolve_path(const char *ptr, const char *val, const char *root_real, int want_dir, char *out,
                        tl_spec_error *e) {
    const char *missing = want_dir ? "folder does not exist" : "file does not exist";
    if (val[0] == '\0') return tl_spec_fail(e, ptr, "must be a non-empty path");
    if (strlen(val) >= PATH_MAX) return tl_spec_fail(e, ptr, "path too long (at most %d bytes)", PATH_MAX - 1);
    int want = want_dir ? TL_PATH_WANT_DIR : TL_PATH_WANT_FILE;
    errno = 0;
    tl_path_status st = root_real ? tl_path_confine(root_real, val, want, out) : tl_path_confine_abs("/", val, want, out);
    int err = errno;
    switch (st) {
    case TL_PATH_OK: return 0;
    case TL_PATH_TOO_LONG: return tl_spec_fail(e, ptr, "path too long (at most %d bytes)", PATH_MAX - 1);
    case TL_PATH_NOT_FOUND: return tl_spec_fail(e, ptr, "%s: '%.200s'", missing, val);
    case TL_PATH_UNRESOLVED: {
        char eb[128];
        const char *es = strerror_r(err, eb, sizeof eb);
        return tl_spec_fail(e, ptr, "cannot be resolved: %s", es);
    }
    case TL_PATH_NOT_DIR: return tl_spec_fail(e, ptr, "folder does not exist: '%.200s' is not a folder", val);
    case TL_PATH_NOT_FILE: return tl_spec_fail(e, ptr, "file does not exist: '%.200s' is not a regular file", val);
    default: /* absolute, "..", outside: the shared phrases */
        return tl_spec_fail(e, ptr, "%s", tl_path_status_str(st));
    }
}

static const char *const DATA_FIELDS[] = {"train", "val", "label_maps"};
#define N_DATA (int)(sizeof DATA_FIELDS / sizeof DATA_FIELDS[0])

static int parse_data(const cJSON *o, const char *data_root, tl_train_spec *s, tl_spec_error *e) {
    if (get_object(o, "/data", e)) return -1;
    const cJSON *seen[N_DATA];
    if (check_members(o, "/data", DATA_FIELDS, N_DATA, seen, e)) return -1;
    const char *vals[N_DATA] = {NULL, NULL, NULL};
    for (int f = 0; f < N_DATA; f++) {
        char p[64];
        snprintf(p, sizeof p, "/data/%s", DATA_FIELDS[f]);
        if (seen[f] && get_string(seen[f], p, &vals[f], e)) return -1;
    }
    if (!vals[0]) return tl_spec_fail(e, "/data/train", "required");
    char root_real[PATH_MAX];
    const char *root = NULL;
    if (tl_spec_data_root(data_root, root_real, &root, e)) return -1;
    snprintf(s->data_root, sizeof s->data_root, "%s", root ? root_real : "");
    char *outs[N_DATA] = {s->train_dir, s->val_dir, s->label_maps};
    for (int f = 0; f < N_DATA; f++) {
        outs[f][0] = '\0';
        if (!vals[f]) continue;
        if (f > 0 && vals[f][0] == '\0') continue; /* "" = none */
        char p[64];
        snprintf(p, sizeof p, "/data/%s", DATA_FIELDS[f]);
        if (resolve_path(p, vals[f], root, f < 2, outs[f], e)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ augment */

static const char *const AUG_FIELDS[] = {"scale", "ratio", "hflip", "randaug", "reprob", "crop_pct"};
#define N_AUG (int)(sizeof AUG_FIELDS / sizeof AUG_FIELDS[0])

static int get_pair(const cJSON *it, const char *ptr, float *a, float *b, tl_spec_error *e) {
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2) return tl_spec_fail(e, ptr, "must be an array of 2 numbers");
    const cJSON *x = it->child, *y = x ? x->next : NULL;
    if (!cJSON_IsNumber(x) || !cJSON_IsNumber(y) || !isfinite(x->valuedouble) || !isfinite(y->valuedouble))
        return tl_spec_fail(e, ptr, "must be an array of 2 numbers");
    *a = (float)x->valuedouble;
    *b = (float)y->valuedouble;
    if (!isfinite(*a) || !isfinite(*b)) return tl_spec_fail(e, ptr, "must be an array of 2 numbers");
    return 0;
}

/* The augmentation field a tl_augment_validate message is about (it names
 * the field: "scale_min: ...", "randaug: ..."), or -1. */
static int aug_field_of_message(const char *msg) {
    static const struct {
        const char *prefix;
        int field;
    } MAP[] = {{"scale", 0}, {"ratio", 1}, {"hflip", 2}, {"randaug", 3}, {"reprob", 4}, {"crop_pct", 5}};
    const char *m = msg;
    if (strncmp(m, "augment", 7) == 0) { /* "augment.scale: ..." or "augment: scale ..." */
        m += 7;
        while (*m == '.' || *m == '/' || *m == ':' || *m == ' ') m++;
    }
    for (size_t i = 0; i < sizeof MAP / sizeof MAP[0]; i++) {
        size_t l = strlen(MAP[i].prefix);
        if (strncmp(m, MAP[i].prefix, l) == 0) return MAP[i].field;
    }
    /* Anywhere in the message, as a last resort. */
    for (size_t i = 0; i < sizeof MAP / sizeof MAP[0]; i++)
        if (strstr(msg, MAP[i].prefix)) return MAP[i].field;
    return -1;
}

static int parse_augment(const cJSON *o, tl_augment_cfg *a, tl_spec_error *e) {
    const char *P = "/train/augment";
    if (get_object(o, P, e)) return -1;
    const cJSON *seen[N_AUG];
    if (check_members(o, P, AUG_FIELDS, N_AUG, seen, e)) return -1;
    if (seen[0]) {
        if (get_pair(seen[0], "/train/augment/scale", &a->scale_min, &a->scale_max, e)) return -1;
        if (!(a->scale_min > 0.0f && a->scale_min <= a->scale_max && a->scale_max <= 1.0f))
            return tl_spec_fail(e, "/train/augment/scale", "must be [min, max] with 0 < min <= max <= 1, got [%g, %g]",
                        (double)a->scale_min, (double)a->scale_max);
    }
    if (seen[1]) {
        if (get_pair(seen[1], "/train/augment/ratio", &a->ratio_min, &a->ratio_max, e)) return -1;
        if (!(a->ratio_min > 0.0f && a->ratio_min <= a->ratio_max))
            return tl_spec_fail(e, "/train/augment/ratio", "must be [min, max] with 0 < min <= max, got [%g, %g]",
                        (double)a->ratio_min, (double)a->ratio_max);
    }
    if (seen[2] && check_float(seen[2], "/train/augment/hflip", R_PROB, &a->hflip, e)) return -1;
    if (seen[3]) {
        const char *r = "";
        if (get_string(seen[3], "/train/augment/randaug", &r, e)) return -1;
        if (strlen(r) >= sizeof a->randaug)
            return tl_spec_fail(e, "/train/augment/randaug", "must be at most %zu characters", sizeof a->randaug - 1);
        snprintf(a->randaug, sizeof a->randaug, "%s", r);
    }
    if (seen[4] && check_float(seen[4], "/train/augment/reprob", R_PROB, &a->reprob, e)) return -1;
    if (seen[5]) {
        double v = 0.0;
        if (get_number(seen[5], "/train/augment/crop_pct", &v, e)) return -1;
        if (!(v > 0.0 && v <= 1.0))
            return tl_spec_fail(e, "/train/augment/crop_pct", "must be a number in (0, 1], got %.9g", v);
        a->crop_pct = (float)v;
    }
    char msg[TL_ERR_LEN] = "";
    if (tl_augment_validate(a, msg, sizeof msg) != 0) {
        int f = aug_field_of_message(msg);
        if (f < 0) return tl_spec_fail(e, P, "%s", msg);
        char p[64];
        snprintf(p, sizeof p, "%s/%s", P, AUG_FIELDS[f]);
        /* Drop a leading "field: " so the pointer and message do not repeat it. */
        const char *m = msg, *colon = strstr(msg, ": ");
        if (colon && (size_t)(colon - msg) < 24 && !memchr(msg, ' ', (size_t)(colon - msg))) m = colon + 2;
        return tl_spec_fail(e, p, "%s", m);
    }
    return 0;
}

/* ------------------------------------------------------------------ train */

enum {
    T_EPOCHS,
    T_BATCH,
    T_LR,
    T_MIN_LR,
    T_WARMUP_LR,
    T_WARMUP_EPOCHS,
    T_WD,
    T_SMOOTH,
    T_CLS_W,
    T_DENSE_W,
    T_MIXTOKEN,
    T_DROP_PATH,
    T_EMA,
    T_SEED,
    T_THREADS,
    T_AUGMENT,
    T_MIX,
    T_MIX_ALPHA,
    T_EVAL_EVERY,
    T_CKPT_EVERY,
    T_LOADER_THREADS,
    T_PREFETCH,
    T_CACHE_MB,
    T_LAYER_DECAY,
    T_FREEZE,
    T_MICRO,
    N_TRAIN
};

static const char *const TRAIN_FIELDS[N_TRAIN] = {
    [T_EPOCHS] = "epochs",
    [T_BATCH] = "batch_size",
    [T_LR] = "lr",
    [T_MIN_LR] = "min_lr",
    [T_WARMUP_LR] = "warmup_lr",
    [T_WARMUP_EPOCHS] = "warmup_epochs",
    [T_WD] = "weight_decay",
    [T_SMOOTH] = "label_smoothing",
    [T_CLS_W] = "cls_weight",
    [T_DENSE_W] = "dense_weight",
    [T_MIXTOKEN] = "mixtoken",
    [T_DROP_PATH] = "drop_path",
    [T_EMA] = "ema_decay",
    [T_SEED] = "seed",
    [T_THREADS] = "threads",
    [T_AUGMENT] = "augment",
    [T_MIX] = "mix",
    [T_MIX_ALPHA] = "mix_alpha",
    [T_EVAL_EVERY] = "eval_every_epochs",
    [T_CKPT_EVERY] = "checkpoint_every_epochs",
    [T_LOADER_THREADS] = "loader_threads",
    [T_PREFETCH] = "prefetch_batches",
    [T_CACHE_MB] = "cache_mb",
    [T_LAYER_DECAY] = "layer_decay",
    [T_FREEZE] = "freeze",
    [T_MICRO] = "micro_batches",
};

static int parse_train(const cJSON *o, tl_train_spec *s, tl_spec_error *e) {
    const char *P = "/train";
    if (get_object(o, P, e)) return -1;
    const cJSON *seen[N_TRAIN];
    if (check_members(o, P, TRAIN_FIELDS, N_TRAIN, seen, e)) return -1;
    int have_drop_path = 0;
    for (int f = 0; f < N_TRAIN; f++) {
        const cJSON *it = seen[f];
        if (!it) continue;
        char p[64];
        snprintf(p, sizeof p, "/train/%s", TRAIN_FIELDS[f]);
        double v = 0.0;
        int rc = 0;
        switch (f) {
        case T_EPOCHS:
            rc = get_int(it, p, 1, 10000, "in 1..10000", &v, e);
            if (!rc) s->epochs = (int)v;
            break;
        case T_BATCH:
            rc = get_int(it, p, 1, 4096, "in 1..4096", &v, e);
            if (!rc) s->batch_size = (int)v;
            break;
        case T_LR: rc = check_float(it, p, R_GT0, &s->lr, e); break;
        case T_MIN_LR: rc = check_float(it, p, R_GE0, &s->min_lr, e); break;
        case T_WARMUP_LR: rc = check_float(it, p, R_GE0, &s->warmup_lr, e); break;
        case T_WARMUP_EPOCHS: rc = check_float(it, p, R_GE0, &s->warmup_epochs, e); break;
        case T_WD: rc = check_float(it, p, R_GE0, &s->weight_decay, e); break;
        case T_SMOOTH: rc = check_float(it, p, R_UNIT_OPEN, &s->label_smoothing, e); break;
        case T_CLS_W: rc = check_float(it, p, R_GE0, &s->cls_weight, e); break;
        case T_DENSE_W: rc = check_float(it, p, R_GE0, &s->dense_weight, e); break;
        case T_MIXTOKEN: rc = get_bool(it, p, &s->mixtoken, e); break;
        case T_DROP_PATH:
            rc = check_float(it, p, R_UNIT_OPEN, &s->drop_path, e);
            have_drop_path = 1;
            s->init_model_fields |= 1u << TL_MF_DROP_PATH_RATE; /* the job's one rate */
            break;
        case T_EMA: rc = check_float(it, p, R_EMA, &s->ema_decay, e); break;
        case T_SEED:
            rc = get_int(it, p, 0, SEED_MAX, "in 0..9007199254740991", &v, e);
            if (!rc) s->seed = (uint64_t)v;
            break;
        case T_THREADS:
            rc = get_int(it, p, 0, 256, "in 0..256 (0 = all cores)", &v, e);
            if (!rc) s->threads = (int)v;
            break;
        case T_AUGMENT: rc = parse_augment(it, &s->augment, e); break;
        case T_MIX: {
            const char *m = "";
            rc = get_string(it, p, &m, e);
            if (rc) break;
            if (strcmp(m, "none") == 0) s->mix = TL_MIX_NONE;
            else if (strcmp(m, "mixup") == 0) s->mix = TL_MIX_MIXUP;
            else if (strcmp(m, "cutmix") == 0) s->mix = TL_MIX_CUTMIX;
            else if (strcmp(m, "both") == 0) s->mix = TL_MIX_BOTH;
            else rc = tl_spec_fail(e, p, "must be one of \"none\", \"mixup\", \"cutmix\", \"both\"");
            break;
        }
        case T_MIX_ALPHA: rc = check_float(it, p, R_GT0, &s->mix_alpha, e); break;
        case T_EVAL_EVERY: rc = check_float(it, p, R_GE0, &s->eval_every_epochs, e); break;
        case T_CKPT_EVERY: rc = check_float(it, p, R_GE0, &s->checkpoint_every_epochs, e); break;
        case T_LOADER_THREADS:
            rc = get_int(it, p, 0, 64, "in 0..64 (0 = automatic)", &v, e);
            if (!rc) s->loader_threads = (int)v;
            break;
        case T_PREFETCH:
            rc = get_int(it, p, 1, 64, "in 1..64", &v, e);
            if (!rc) s->prefetch_batches = (int)v;
            break;
        case T_CACHE_MB:
            rc = get_int(it, p, 0, 1048576, "in 0..1048576", &v, e);
            if (!rc) s->cache_mb = (int)v;
            break;
        case T_LAYER_DECAY: rc = check_float(it, p, R_UNIT_HALF, &s->layer_decay, e); break;
        case T_FREEZE: {
            const char *m = "";
            rc = get_string(it, p, &m, e);
            if (rc) break;
            if (strcmp(m, "none") == 0) s->freeze = TL_FREEZE_NONE;
            else if (strcmp(m, "stem") == 0) s->freeze = TL_FREEZE_STEM;
            else if (strcmp(m, "trunk") == 0) s->freeze = TL_FREEZE_TRUNK;
            else rc = tl_spec_fail(e, p, "must be one of \"none\", \"stem\", \"trunk\"");
            break;
        }
        case T_MICRO:
            rc = get_int(it, p, 1, 4096, "in 1..4096", &v, e);
            if (!rc) s->micro_batches = (int)v;
            break;
        }
        if (rc) return -1;
    }
    if (s->batch_size % s->micro_batches != 0)
        return tl_spec_fail(e, "/train/micro_batches", "must divide batch_size (%d), got %d", s->batch_size,
                            s->micro_batches);
    if (!(s->warmup_epochs < (float)s->epochs))
        return tl_spec_fail(e, "/train/warmup_epochs", "must be less than epochs (%d), got %g", s->epochs,
                    (double)s->warmup_epochs);
    if (!have_drop_path) s->drop_path = s->model.drop_path_rate;
    return 0;
}

/* ------------------------------------------------------------------ document */

void tl_jobspec_defaults(tl_train_spec *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->kind, sizeof s->kind, "train");
    snprintf(s->preset, sizeof s->preset, "lvvit_t");
    tl_config_preset("lvvit_t", &s->model);
    s->epochs = 10;
    s->batch_size = 64;
    s->lr = 1e-3f;
    s->min_lr = 1e-5f;
    s->warmup_lr = 1e-6f;
    s->warmup_epochs = 1.0f;
    s->weight_decay = 0.05f;
    s->label_smoothing = 0.1f;
    s->cls_weight = 1.0f;
    s->dense_weight = 0.5f;
    s->mixtoken = 1;
    s->drop_path = s->model.drop_path_rate;
    s->ema_decay = 0.0f;
    s->seed = 42;
    s->threads = 0;
    tl_augment_defaults(&s->augment);
    s->mix = TL_MIX_NONE;
    s->mix_alpha = 1.0f;
    s->eval_every_epochs = 1.0f;
    s->checkpoint_every_epochs = 1.0f;
    s->loader_threads = 0;
    s->prefetch_batches = 4;
    s->cache_mb = 1024;
    s->layer_decay = 1.0f;
    s->freeze = TL_FREEZE_NONE;
    s->micro_batches = 1;
    s->ranks = 0;
    s->init = 0;
    snprintf(s->init_checkpoint, sizeof s->init_checkpoint, "best");
    s->init_ema = -1;
    s->init_head = -1;
}

static const char *const TOP_FIELDS[] = {"kind", "name", "model", "data", "train", "distributed"};
static const char *const DIST_FIELDS[] = {"ranks"};

/* "distributed": {"ranks": N}, the ranks the daemon launches the job on. */
static int parse_distributed(const cJSON *o, tl_train_spec *s, tl_spec_error *e) {
    const cJSON *seen[1];
    if (get_object(o, "/distributed", e)) return -1;
    if (check_members(o, "/distributed", DIST_FIELDS, 1, seen, e)) return -1;
    if (!seen[0]) return tl_spec_fail(e, "/distributed/ranks", "required");
    double v = 0.0;
    if (get_int(seen[0], "/distributed/ranks", 1, 256, "in 1..256", &v, e)) return -1;
    s->ranks = (int)v;
    if (s->micro_batches % s->ranks != 0)
        return tl_spec_fail(e, "/distributed/ranks", "must divide train.micro_batches (%d), got %d", s->micro_batches,
                            s->ranks);
    return 0;
}
#define N_TOP (int)(sizeof TOP_FIELDS / sizeof TOP_FIELDS[0])

static int parse_doc(const cJSON *doc, const char *data_root, tl_train_spec *s, tl_spec_error *e) {
    if (get_object(doc, "", e)) return -1;
    const cJSON *seen[N_TOP];
    if (check_members(doc, "", TOP_FIELDS, N_TOP, seen, e)) return -1;
    /* kind */
    if (!seen[0]) return tl_spec_fail(e, "/kind", "required");
    const char *kind = "";
    if (get_string(seen[0], "/kind", &kind, e)) return -1;
    if (strcmp(kind, "train") != 0) return tl_spec_fail(e, "/kind", "must be \"train\"");
    snprintf(s->kind, sizeof s->kind, "%s", kind);
    /* name */
    if (!seen[1]) return tl_spec_fail(e, "/name", "required");
    const char *name = "";
    if (get_string(seen[1], "/name", &name, e)) return -1;
    size_t nl = strlen(name);
    int printable = nl >= 1 && nl <= 127;
    for (size_t i = 0; printable && i < nl; i++)
        if ((unsigned char)name[i] < 0x20 || (unsigned char)name[i] > 0x7e) printable = 0;
    if (!printable) return tl_spec_fail(e, "/name", "must be 1..127 printable ASCII characters");
    snprintf(s->name, sizeof s->name, "%s", name);
    /* model */
    if (!seen[2]) return tl_spec_fail(e, "/model", "required");
    if (parse_model(seen[2], s, e)) return -1;
    /* train (before data: cheap checks first, the filesystem last) */
    if (seen[4]) {
        if (parse_train(seen[4], s, e)) return -1;
    } else {
        s->drop_path = s->model.drop_path_rate;
    }
    if (seen[5] && parse_distributed(seen[5], s, e)) return -1;
    /* data */
    if (!seen[3]) return tl_spec_fail(e, "/data", "required");
    if (parse_data(seen[3], data_root, s, e)) return -1;
    /* One drop-path rate for the job: the model's config carries what is used. */
    s->model.drop_path_rate = s->drop_path;
    return 0;
}

int tl_jobspec_parse(const char *json, const char *data_root, tl_train_spec *out, tl_spec_error *err) {
    if (err) {
        err->pointer[0] = '\0';
        err->message[0] = '\0';
    }
    cJSON *doc = tl_spec_parse_document(json, err);
    if (!doc) return -1;
    tl_train_spec *s = malloc(sizeof *s);
    if (!s) {
        cJSON_Delete(doc);
        return tl_spec_fail(err, "", "out of memory");
    }
    tl_jobspec_defaults(s);
    int rc = parse_doc(doc, data_root, s, err);
    cJSON_Delete(doc);
    if (rc != 0 && err) {
        sanitize(err->pointer);
        sanitize(err->message);
    }
    if (rc == 0 && out) *out = *s;
    free(s);
    return rc;
}

/* ------------------------------------------------------------------ shared helpers (jobspec_internal.h) */

int tl_spec_fail(tl_spec_error *e, const char *ptr, const char *fmt, ...) {
    if (!e) return -1;
    snprintf(e->pointer, sizeof e->pointer, "%s", ptr ? ptr : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

void tl_spec_sanitize(char *s) { sanitize(s); }

void tl_spec_ptr_join(char *out, size_t n, const char *parent, const char *key) { ptr_join(out, n, parent, key); }

cJSON *tl_spec_parse_document(const char *json, tl_spec_error *e) {
    if (!json) {
        tl_spec_fail(e, "", "not valid JSON (no document)");
        return NULL;
    }
    size_t nvalues = tl_json_count_values(json, strlen(json));
    if (nvalues > TL_SPEC_MAX_VALUES) {
        tl_spec_fail(e, "", "the document holds about %zu JSON values, more than the %d a spec may have", nvalues,
                     TL_SPEC_MAX_VALUES);
        return NULL;
    }
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithOpts(json, &end, 1);
    if (!doc) {
        size_t off = (end && end >= json) ? (size_t)(end - json) : 0;
        /* A document followed by more text parses without the terminator rule. */
        const char *end2 = NULL;
        cJSON *head = cJSON_ParseWithOpts(json, &end2, 0);
        if (head) {
            cJSON_Delete(head);
            tl_spec_fail(e, "", "not valid JSON: text after the document at byte %zu", (size_t)(end2 - json));
            return NULL;
        }
        tl_spec_fail(e, "", "not valid JSON (error near byte %zu)", off);
        return NULL;
    }
    return doc;
}

int tl_spec_get_int(const cJSON *it, const char *ptr, double lo, double hi, const char *rule, double *v,
                    tl_spec_error *e) {
    return get_int(it, ptr, lo, hi, rule, v, e);
}
int tl_spec_get_bool(const cJSON *it, const char *ptr, int *v, tl_spec_error *e) { return get_bool(it, ptr, v, e); }
int tl_spec_get_string(const cJSON *it, const char *ptr, const char **v, tl_spec_error *e) {
    return get_string(it, ptr, v, e);
}
int tl_spec_get_object(const cJSON *it, const char *ptr, tl_spec_error *e) { return get_object(it, ptr, e); }
int tl_spec_check_members(const cJSON *o, const char *ptr, const char *const *names, int n, const cJSON **seen,
                          tl_spec_error *e) {
    return check_members(o, ptr, names, n, seen, e);
}
int tl_spec_data_root(const char *data_root, char *root_real, const char **root, tl_spec_error *e) {
    *root = NULL;
    if (!data_root) return 0;
    if (!realpath(data_root, root_real)) return tl_spec_fail(e, "", "the data root '%.200s' does not exist", data_root);
    *root = root_real;
    return 0;
}

int tl_spec_resolve_path(const char *ptr, const char *val, const char *root_real, int want_dir, char *out,
                         tl_spec_error *e) {
    return resolve_path(ptr, val, root_real, want_dir, out, e);
}

int tl_spec_get_checkpoint(const cJSON *it, const char *ptr, char *out, size_t len, tl_spec_error *e) {
    const char *c = "";
    if (tl_spec_get_string(it, ptr, &c, e)) return -1;
    size_t n = strlen(c);
    int ok = strcmp(c, "best") == 0 || strcmp(c, "last") == 0;
    if (!ok && n >= 1 && n <= 18 && c[0] >= '1' && c[0] <= '9') {
        ok = 1;
        for (size_t i = 0; i < n; i++) ok &= c[i] >= '0' && c[i] <= '9';
    }
    if (!ok || n >= len)
        return tl_spec_fail(e, ptr, "must be \"best\", \"last\" or a step number (\"1200\": 1 to 18 digits, no leading 0)");
    memcpy(out, c, n + 1);
    return 0;
}

int tl_spec_get_name(const cJSON *it, const char *ptr, char *out, size_t len, tl_spec_error *e) {
    const char *name = "";
    if (get_string(it, ptr, &name, e)) return -1;
    size_t nl = strlen(name);
    int printable = nl >= 1 && nl <= 127 && nl < len;
    for (size_t i = 0; printable && i < nl; i++)
        if ((unsigned char)name[i] < 0x20 || (unsigned char)name[i] > 0x7e) printable = 0;
    if (!printable) return tl_spec_fail(e, ptr, "must be 1..127 printable ASCII characters");
    snprintf(out, len, "%s", name);
    return 0;
}

/* ------------------------------------------------------------------ the kind of any job document */

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
        sanitize(err->pointer);
        sanitize(err->message);
    }
    return rc;
}

