/*
 * checkpoint.c: model checkpoints in safetensors (PyTorch state_dict names).
 *
 * Owns nothing beyond the duration of a call: a safetensors writer or an open
 * file, released before returning. It reaches the model only through the
 * public tl_model accessors of model.h. Threads: runs entirely on the caller's
 * thread, which must own the model for the call (as for every tl_model use).
 *
 * Layout of a file:
 *   <state_dict name>                    F32, every parameter and BN buffer
 *   patch_embed.bn{1,2,3}.num_batches_tracked   I64 scalar
 *   optim.exp_avg.<param>, optim.exp_avg_sq.<param>   F32 (TL_CKPT_OPTIM)
 *   train.step [1], train.epoch [1], train.rng [4]    I64 (TL_CKPT_OPTIM)
 *   metadata: format=pt, tokenlab.config=<config JSON>, tokenlab.version,
 *             plus the caller's extra pairs.
 *
 * Loading validates the whole file against the model first and only then
 * copies, so a refused file leaves the model untouched.
 */
#include "tokenlab/model.h"
#include "tokenlab/base.h"
#include "tokenlab/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CK_NAME_LEN 256
#define CK_NUM_BN 3
#define CK_OPTIM_PREFIX "optim."
#define CK_TRAIN_PREFIX "train."
#define CK_AVG "optim.exp_avg."
#define CK_AVG_SQ "optim.exp_avg_sq."
#define CK_EMA "ema."

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static void bn_name(char *buf, size_t n, int layer) {
    snprintf(buf, n, "patch_embed.bn%d.num_batches_tracked", layer + 1);
}

/* ------------------------------------------------------------------ save */

static const char *const reserved_meta[] = {"format", "tokenlab.config", "tokenlab.version", NULL};

static int add_meta(tl_st_writer *w, const tl_model *m, const char *const *extra, char *err, size_t errlen) {
    char cfg[2048];
    if (tl_config_to_json(tl_model_config(m), cfg, sizeof cfg) < 0) {
        tl_seterr(err, errlen, "checkpoint: config does not fit in %zu bytes of JSON", sizeof cfg);
        return -1;
    }
    if (tl_st_set_meta(w, "format", "pt") || tl_st_set_meta(w, "tokenlab.config", cfg) ||
        tl_st_set_meta(w, "tokenlab.version", TL_VERSION))
        goto oom;
    for (int i = 0; extra && extra[i]; i += 2) {
        if (!extra[i + 1]) {
            tl_seterr(err, errlen, "checkpoint: extra metadata key '%s' has no value", extra[i]);
            return -1;
        }
        for (int r = 0; reserved_meta[r]; r++) {
            if (strcmp(extra[i], reserved_meta[r]) == 0) {
                tl_seterr(err, errlen, "checkpoint: extra metadata key '%s' is reserved", extra[i]);
                return -1;
            }
        }
        if (tl_st_set_meta(w, extra[i], extra[i + 1]) != 0) goto oom;
    }
    return 0;
oom:
    tl_seterr(err, errlen, "checkpoint: out of memory setting metadata");
    return -1;
}

static int add_tensor(tl_st_writer *w, const char *name, tl_st_dtype dt, int ndim, const int64_t *shape,
                      const void *data, char *err, size_t errlen) {
    if (tl_st_add(w, name, dt, ndim, shape, data) == 0) return 0;
    tl_seterr(err, errlen, "checkpoint: cannot add tensor '%s' (duplicate name or out of memory)", name);
    return -1;
}

static int add_params(tl_st_writer *w, const tl_model *m, int64_t bn[CK_NUM_BN], char *err, size_t errlen) {
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (add_tensor(w, t->name, TL_ST_F32, t->ndim, t->shape, t->data, err, errlen) != 0) return -1;
    }
    for (int l = 0; l < CK_NUM_BN; l++) {
        char name[CK_NAME_LEN];
        bn_name(name, sizeof name, l);
        /* tl_model_bn_batches takes a non-const model; we only read. */
        const int64_t *p = tl_model_bn_batches((tl_model *)m, l);
        bn[l] = p ? *p : 0;
        if (add_tensor(w, name, TL_ST_I64, 0, NULL, &bn[l], err, errlen) != 0) return -1;
    }
    return 0;
}

static int add_optim(tl_st_writer *w, const tl_model *m, char *err, size_t errlen) {
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind != TL_TENSOR_PARAM) continue;
        if (!t->m || !t->v) {
            tl_seterr(err, errlen, "checkpoint: parameter '%s' has no optimizer moments", t->name);
            return -1;
        }
        char name[CK_NAME_LEN];
        snprintf(name, sizeof name, CK_AVG "%s", t->name);
        if (add_tensor(w, name, TL_ST_F32, t->ndim, t->shape, t->m, err, errlen) != 0) return -1;
        snprintf(name, sizeof name, CK_AVG_SQ "%s", t->name);
        if (add_tensor(w, name, TL_ST_F32, t->ndim, t->shape, t->v, err, errlen) != 0) return -1;
    }
    return 0;
}

/* train.* values live in the caller's frame until the write is done. */
typedef struct {
    int64_t step, epoch, rng[4];
} ck_train;

static int add_train(tl_st_writer *w, ck_train *tr, char *err, size_t errlen) {
    static const int64_t one[1] = {1}, four[1] = {4};
    if (add_tensor(w, "train.step", TL_ST_I64, 1, one, &tr->step, err, errlen) != 0 ||
        add_tensor(w, "train.epoch", TL_ST_I64, 1, one, &tr->epoch, err, errlen) != 0 ||
        add_tensor(w, "train.rng", TL_ST_I64, 1, four, tr->rng, err, errlen) != 0)
        return -1;
    return 0;
}

static int add_ema(tl_st_writer *w, const tl_model *ema, char *err, size_t errlen) {
    for (int i = 0; i < tl_model_num_tensors(ema); i++) {
        const tl_tensor *t = tl_model_tensor(ema, i);
        char name[CK_NAME_LEN];
        snprintf(name, sizeof name, CK_EMA "%s", t->name);
        if (add_tensor(w, name, TL_ST_F32, t->ndim, t->shape, t->data, err, errlen) != 0) return -1;
    }
    return 0;
}

int tl_checkpoint_save(const tl_model *m, const tl_model *ema, const char *path, int flags, const tl_train_state *st,
                       const char *const *extra_meta, char *err, size_t errlen) {
    int64_t bn[CK_NUM_BN];
    ck_train tr = {0};
    int rc = -1;
    errno = 0;
    if (!m || !path) {
        tl_seterr(err, errlen, "checkpoint: no model or path");
        return -1;
    }
    if ((flags & TL_CKPT_OPTIM) && !tl_model_trainable(m)) {
        tl_seterr(err, errlen, "checkpoint: an inference model has no optimizer state to save");
        return -1;
    }
    tl_st_writer *w = tl_st_writer_new();
    if (!w) {
        tl_seterr(err, errlen, "checkpoint: out of memory");
        return -1;
    }
    if (add_meta(w, m, extra_meta, err, errlen) != 0) goto fail;
    if (add_params(w, m, bn, err, errlen) != 0) goto fail;
    if (ema && add_ema(w, ema, err, errlen) != 0) goto fail;
    if (flags & TL_CKPT_OPTIM) {
        tr.step = st ? st->step : tl_model_step(m);
        tr.epoch = st ? st->epoch : 0;
        if (st) memcpy(tr.rng, st->rng_state, sizeof tr.rng);
        if (add_optim(w, m, err, errlen) != 0 || add_train(w, &tr, err, errlen) != 0) goto fail;
    }
    if (tl_st_write(w, path, err, errlen) != 0) goto fail;
    rc = 0;
fail:;
    int e = errno;
    tl_st_writer_free(w);
    errno = e; /* a failed write's cause (ENOSPC: the disk is full) */
    return rc;
}

/* ------------------------------------------------------------------ load */

static int is_float(tl_st_dtype d) { return d == TL_ST_F32 || d == TL_ST_F16 || d == TL_ST_BF16 || d == TL_ST_F64; }

/* A float tensor of exactly the given shape. */
static int check_float(const tl_st_file *f, const char *name, int ndim, const int64_t *shape, char *err,
                       size_t errlen) {
    const tl_st_tensor *s = tl_st_get(f, name);
    if (!s) {
        tl_seterr(err, errlen, "missing tensor '%s'", name);
        return -1;
    }
    if (!is_float(s->dtype)) {
        tl_seterr(err, errlen, "tensor '%s' has dtype %s, expected a float dtype", name, tl_st_dtype_name(s->dtype));
        return -1;
    }
    int same = s->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = s->shape[i] == shape[i];
    if (!same) {
        char a[128], b[128];
        tl_st_format_shape(a, sizeof a, s->ndim, s->shape);
        tl_st_format_shape(b, sizeof b, ndim, shape);
        tl_seterr(err, errlen, "tensor '%s' has shape %s, model expects %s", name, a, b);
        return -1;
    }
    return 0;
}

/* An integer holding n values: a scalar when n == 1 (or [1]), else [n]. */
static int check_int(const tl_st_file *f, const char *name, int n, int allow_i32, char *err, size_t errlen) {
    const tl_st_tensor *s = tl_st_get(f, name);
    if (!s) {
        tl_seterr(err, errlen, "missing tensor '%s'", name);
        return -1;
    }
    if (s->dtype != TL_ST_I64 && !(allow_i32 && s->dtype == TL_ST_I32)) {
        tl_seterr(err, errlen, "tensor '%s' has dtype %s, expected I64%s", name, tl_st_dtype_name(s->dtype),
                  allow_i32 ? " or I32" : "");
        return -1;
    }
    int ok = (s->ndim == 1 && s->shape[0] == n) || (n == 1 && s->ndim == 0);
    if (!ok) {
        char a[128];
        tl_st_format_shape(a, sizeof a, s->ndim, s->shape);
        tl_seterr(err, errlen, "tensor '%s' has shape %s, expected [%d]%s", name, a, n, n == 1 ? " or a scalar" : "");
        return -1;
    }
    return 0;
}

static int64_t read_int(const tl_st_tensor *s, size_t i) {
    if (s->dtype == TL_ST_I32) {
        int32_t v;
        memcpy(&v, (const unsigned char *)s->data + 4 * i, 4);
        return v;
    }
    int64_t v;
    memcpy(&v, (const unsigned char *)s->data + 8 * i, 8);
    return v;
}

/* Is name a BN counter? Returns its layer or -1. */
static int bn_layer(const char *name) {
    for (int l = 0; l < CK_NUM_BN; l++) {
        char b[CK_NAME_LEN];
        bn_name(b, sizeof b, l);
        if (strcmp(name, b) == 0) return l;
    }
    return -1;
}

static int is_param(const tl_model *m, const char *name) {
    const tl_tensor *t = tl_model_find(m, name);
    return t && t->kind == TL_TENSOR_PARAM;
}

/* Does the file's tensor name belong in a checkpoint loaded with flags? */
static int expected_name(const tl_model *m, const char *name, int flags) {
    if (tl_model_find(m, name) || bn_layer(name) >= 0) return 1;
    if (starts_with(name, CK_EMA)) return tl_model_find(m, name + strlen(CK_EMA)) != NULL;
    if (!(flags & TL_CKPT_OPTIM)) return starts_with(name, CK_OPTIM_PREFIX) || starts_with(name, CK_TRAIN_PREFIX);
    if (starts_with(name, CK_AVG)) return is_param(m, name + strlen(CK_AVG));
    if (starts_with(name, CK_AVG_SQ)) return is_param(m, name + strlen(CK_AVG_SQ));
    return !strcmp(name, "train.step") || !strcmp(name, "train.epoch") || !strcmp(name, "train.rng");
}

static int validate_optim(const tl_model *m, const tl_st_file *f, char *err, size_t errlen) {
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind != TL_TENSOR_PARAM) continue;
        if (!t->m || !t->v) {
            tl_seterr(err, errlen, "parameter '%s' has no optimizer moments in this model", t->name);
            return -1;
        }
        char name[CK_NAME_LEN];
        snprintf(name, sizeof name, CK_AVG "%s", t->name);
        if (check_float(f, name, t->ndim, t->shape, err, errlen) != 0) return -1;
        snprintf(name, sizeof name, CK_AVG_SQ "%s", t->name);
        if (check_float(f, name, t->ndim, t->shape, err, errlen) != 0) return -1;
    }
    if (check_int(f, "train.step", 1, 0, err, errlen) != 0 || check_int(f, "train.epoch", 1, 0, err, errlen) != 0 ||
        check_int(f, "train.rng", 4, 0, err, errlen) != 0)
        return -1;
    if (read_int(tl_st_get(f, "train.step"), 0) < 0) {
        tl_seterr(err, errlen, "tensor 'train.step' is negative");
        return -1;
    }
    return 0;
}

/* The weights of m, or of the EMA ("ema.<name>") when prefix is CK_EMA. */
static int validate_weights(const tl_model *m, const tl_st_file *f, const char *prefix, char *err, size_t errlen) {
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        char name[CK_NAME_LEN];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        if (check_float(f, name, t->ndim, t->shape, err, errlen) != 0) return -1;
    }
    return 0;
}

static int validate(const tl_model *m, const tl_st_file *f, int flags, char *err, size_t errlen) {
    if (validate_weights(m, f, (flags & TL_CKPT_FROM_EMA) ? CK_EMA : "", err, errlen) != 0) return -1;
    if ((flags & TL_CKPT_EMA) && validate_weights(m, f, CK_EMA, err, errlen) != 0) return -1;
    for (int l = 0; l < CK_NUM_BN; l++) {
        char name[CK_NAME_LEN];
        bn_name(name, sizeof name, l);
        if (tl_st_get(f, name) && check_int(f, name, 1, 1, err, errlen) != 0) return -1;
    }
    for (int i = 0; i < tl_st_count(f); i++) {
        const char *name = tl_st_at(f, i)->name;
        if (!expected_name(m, name, flags)) {
            tl_seterr(err, errlen, "unexpected tensor '%s'", name);
            return -1;
        }
    }
    if ((flags & TL_CKPT_OPTIM) && validate_optim(m, f, err, errlen) != 0) return -1;
    return 0;
}

/* Copies a validated file into the model; cannot fail on validated input. */
static void copy_in(tl_model *m, tl_model *ema, const tl_st_file *f, int flags, tl_train_state *st) {
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        char wname[CK_NAME_LEN];
        snprintf(wname, sizeof wname, "%s%s", (flags & TL_CKPT_FROM_EMA) ? CK_EMA : "", t->name);
        tl_st_read_f32(tl_st_get(f, wname), t->data);
        if (ema && (flags & TL_CKPT_EMA)) {
            snprintf(wname, sizeof wname, CK_EMA "%s", t->name);
            tl_st_read_f32(tl_st_get(f, wname), tl_model_tensor(ema, i)->data);
        }
        if (!(flags & TL_CKPT_OPTIM) || t->kind != TL_TENSOR_PARAM) continue;
        char name[CK_NAME_LEN];
        snprintf(name, sizeof name, CK_AVG "%s", t->name);
        tl_st_read_f32(tl_st_get(f, name), t->m);
        snprintf(name, sizeof name, CK_AVG_SQ "%s", t->name);
        tl_st_read_f32(tl_st_get(f, name), t->v);
    }
    for (int l = 0; l < CK_NUM_BN; l++) {
        char name[CK_NAME_LEN];
        bn_name(name, sizeof name, l);
        const tl_st_tensor *s = tl_st_get(f, name);
        int64_t *dst = tl_model_bn_batches(m, l);
        if (s && dst) *dst = read_int(s, 0);
    }
    if (!(flags & TL_CKPT_OPTIM)) return;
    int64_t step = read_int(tl_st_get(f, "train.step"), 0);
    tl_model_set_step(m, step);
    if (!st) return;
    st->step = step;
    st->epoch = read_int(tl_st_get(f, "train.epoch"), 0);
    const tl_st_tensor *rng = tl_st_get(f, "train.rng");
    for (int i = 0; i < 4; i++) st->rng_state[i] = (uint64_t)read_int(rng, (size_t)i);
}

int tl_checkpoint_load(tl_model *m, tl_model *ema, const char *path, int flags, tl_train_state *st, char *err,
                       size_t errlen) {
    if ((flags & TL_CKPT_EMA) && !ema) {
        tl_seterr(err, errlen, "checkpoint: TL_CKPT_EMA needs an EMA model");
        return -1;
    }
    if (!m || !path) {
        tl_seterr(err, errlen, "checkpoint: no model or path");
        return -1;
    }
    tl_st_file *f = tl_st_open(path, err, errlen);
    if (!f) return -1;
    int rc = tl_checkpoint_load_file(m, ema, f, path, flags, st, err, errlen);
    tl_st_close(f);
    return rc;
}

int tl_checkpoint_load_file(tl_model *m, tl_model *ema, const tl_st_file *f, const char *name, int flags,
                            tl_train_state *st, char *err, size_t errlen) {
    if ((flags & TL_CKPT_EMA) && !ema) return tl_seterr(err, errlen, "checkpoint: TL_CKPT_EMA needs an EMA model");
    char sub[TL_ERR_LEN];
    if (validate(m, f, flags, sub, sizeof sub) != 0) return tl_seterr(err, errlen, "%s: %s", name, sub);
    copy_in(m, ema, f, flags, st);
    return 0;
}

/* ------------------------------------------------------------------ config */

/* The tensor name with exactly ndim dims, each in [1, INT32_MAX/4]. */
static const tl_st_tensor *need_dims(const tl_st_file *f, const char *name, int ndim, char *err, size_t errlen) {
    const tl_st_tensor *t = tl_st_get(f, name);
    if (!t) {
        tl_seterr(err, errlen, "cannot infer the config: missing tensor '%s'", name);
        return NULL;
    }
    char a[128];
    tl_st_format_shape(a, sizeof a, t->ndim, t->shape);
    if (t->ndim != ndim) {
        tl_seterr(err, errlen, "cannot infer the config: tensor '%s' has shape %s, expected %d dimensions", name, a, ndim);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        if (t->shape[i] < 1 || t->shape[i] > INT32_MAX / 4) {
            tl_seterr(err, errlen, "cannot infer the config: tensor '%s' has shape %s, dimension %d out of range", name,
                      a, i);
            return NULL;
        }
    }
    return t;
}

/* "blocks.<i>.norm1.weight" -> i (no sign, no leading zeros), else -1. */
static long block_index(const char *name) {
    static const char pre[] = "blocks.", suf[] = ".norm1.weight";
    if (!starts_with(name, pre)) return -1;
    const char *p = name + strlen(pre), *q = p;
    long v = 0;
    while (*q >= '0' && *q <= '9') {
        v = v * 10 + (*q - '0');
        if (v > 1000000) return -1;
        q++;
    }
    if (q == p || (*p == '0' && q - p > 1) || strcmp(q, suf) != 0) return -1;
    return v;
}

static int infer_depth(const tl_st_file *f, int *depth, char *err, size_t errlen) {
    long count = 0, max = -1;
    for (int i = 0; i < tl_st_count(f); i++) {
        long b = block_index(tl_st_at(f, i)->name);
        if (b < 0) continue;
        count++;
        if (b > max) max = b;
    }
    if (count == 0) {
        tl_seterr(err, errlen, "cannot infer the config: no 'blocks.<i>.norm1.weight' tensors");
        return -1;
    }
    if (count != max + 1) { /* names are unique, so count distinct indices */
        tl_seterr(err, errlen, "cannot infer the config: blocks.<i>.norm1.weight has %ld blocks but the highest is %ld "
                               "(blocks must be numbered 0..depth-1)", count, max);
        return -1;
    }
    *depth = (int)count;
    return 0;
}

static int infer_grid(const tl_st_file *f, int D, int *grid, char *err, size_t errlen) {
    const tl_st_tensor *pe = need_dims(f, "pos_embed", 3, err, errlen);
    if (!pe) return -1;
    if (pe->shape[0] != 1 || pe->shape[2] != D || pe->shape[1] < 2) {
        tl_seterr(err, errlen, "cannot infer the config: pos_embed has shape [%" PRId64 ",%" PRId64 ",%" PRId64
                  "], expected [1, g*g+1, %d]", pe->shape[0], pe->shape[1], pe->shape[2], D);
        return -1;
    }
    int64_t n = pe->shape[1] - 1, g = (int64_t)llround(sqrt((double)n));
    while (g * g > n) g--;
    while ((g + 1) * (g + 1) <= n) g++;
    if (g * g != n) {
        tl_seterr(err, errlen, "cannot infer the config: pos_embed has %" PRId64 " patch tokens, not a perfect square", n);
        return -1;
    }
    *grid = (int)g;
    return 0;
}

/* num_heads, skip_lam and drop_path_rate from the preset of the same size. */
static int infer_from_preset(tl_config *c, char *err, size_t errlen) {
    const char *const *names = tl_config_preset_names();
    for (int i = 0; names && names[i]; i++) {
        tl_config p;
        if (tl_config_preset(names[i], &p) != 0) continue;
        if (p.embed_dim == c->embed_dim && p.depth == c->depth) {
            c->num_heads = p.num_heads;
            c->skip_lam = p.skip_lam;
            c->drop_path_rate = p.drop_path_rate;
            return 0;
        }
    }
    tl_seterr(err, errlen, "cannot infer num_heads and skip_lam: no preset has embed_dim=%d and depth=%d; save the "
              "checkpoint with tokenlab or give the config", c->embed_dim, c->depth);
    return -1;
}

static int infer_config(const tl_st_file *f, tl_config *c, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    const tl_st_tensor *cls = need_dims(f, "cls_token", 3, err, errlen);
    const tl_st_tensor *conv1 = cls ? need_dims(f, "patch_embed.conv1.weight", 4, err, errlen) : NULL;
    const tl_st_tensor *proj = conv1 ? need_dims(f, "patch_embed.proj.weight", 4, err, errlen) : NULL;
    const tl_st_tensor *head = proj ? need_dims(f, "head.weight", 2, err, errlen) : NULL;
    const tl_st_tensor *fc1 = head ? need_dims(f, "blocks.0.mlp.fc1.weight", 2, err, errlen) : NULL;
    if (!fc1) return -1;
    c->embed_dim = (int)cls->shape[2];
    c->stem_channels = (int)conv1->shape[0];
    c->patch_size = 2 * (int)proj->shape[2];
    c->num_classes = (int)head->shape[0];
    c->mlp_ratio = (float)fc1->shape[0] / (float)c->embed_dim;
    int grid;
    if (infer_depth(f, &c->depth, err, errlen) != 0 || infer_grid(f, c->embed_dim, &grid, err, errlen) != 0)
        return -1;
    if ((int64_t)grid * c->patch_size > INT32_MAX) {
        tl_seterr(err, errlen, "cannot infer the config: image size out of range");
        return -1;
    }
    c->img_size = grid * c->patch_size;
    return infer_from_preset(c, err, errlen);
}

int tl_checkpoint_config(const char *path, tl_config *out, char *err, size_t errlen) {
    if (!path || !out) {
        tl_seterr(err, errlen, "checkpoint: no path or output");
        return -1;
    }
    tl_st_file *f = tl_st_open(path, err, errlen);
    if (!f) return -1;
    int rc = tl_checkpoint_config_file(f, path, out, err, errlen);
    tl_st_close(f);
    return rc;
}

int tl_checkpoint_config_file(const tl_st_file *f, const char *name, tl_config *out, char *err, size_t errlen) {
    char sub[TL_ERR_LEN];
    tl_config c;
    const char *json = tl_st_meta(f, "tokenlab.config");
    if (json) {
        if (tl_config_from_json(json, &c, sub, sizeof sub) != 0)
            return tl_seterr(err, errlen, "%s: metadata tokenlab.config: %s", name, sub);
    } else if (infer_config(f, &c, sub, sizeof sub) != 0 || tl_config_validate(&c, sub, sizeof sub) != 0) {
        return tl_seterr(err, errlen, "%s: %s", name, sub);
    }
    *out = c;
    return 0;
}

int tl_checkpoint_train_step(const char *path, int64_t *step) {
    char err[TL_ERR_LEN];
    *step = 0;
    if (access(path, F_OK) != 0) return 0;
    tl_st_file *f = tl_st_open(path, err, sizeof err);
    const tl_st_tensor *t = f ? tl_st_get(f, "train.step") : NULL;
    int found = t && t->dtype == TL_ST_I64 && t->numel == 1;
    if (found) memcpy(step, t->data, sizeof *step);
    tl_st_close(f);
    return found;
}
