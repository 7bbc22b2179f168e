/*
 * finetune.c: starting a training run from trained weights (model.h,
 * "fine-tuning"): tl_model_init_from copies a source model's weights into a
 * trainable model whose img_size, num_classes and drop_path_rate may differ;
 * tl_model_set_freeze marks what does not train; tl_model_set_layer_decay
 * sets every tensor's lr_scale by timm's layer-wise rule.
 *
 * Owns nothing beyond what it writes into the models: the destination's
 * weights, gradients, moments and step (init_from), the tensor table's
 * frozen and lr_scale fields and the model's freeze (the other two). What the
 * settings mean at run time lives where they act: tl_model_adamw (model.c)
 * skips frozen tensors and multiplies lr by lr_scale, the training forward
 * (forward.c) runs a frozen stem as FrozenBatchNorm, tl_backward
 * (backward.c) stops where the frozen part begins.
 *
 * Design:
 *  - init_from checks everything before it writes anything, so a refused call
 *    leaves dst as it was. Tensors are matched by index: equal configs up to
 *    img_size and num_classes give equal tensor tables, names checked.
 *  - The position embedding is resampled with resize.c's bicubic kernel
 *    (tl_pos_embed_resample), the class token's entry copied, exactly as
 *    tl_model_copy_resized does.
 *  - Heads drawn afresh use model.c's own init rule (tl_model_init_tensor:
 *    truncated normal std 0.02 for weights, 0 for biases) on a stream derived
 *    from seed for this purpose only (TL_RNG_INIT, 1), in state_dict order:
 *    head.weight, head.bias, aux_head.weight, aux_head.bias. TL_HEAD_MATCH
 *    draws the whole heads that way and then copies the mapped rows, so its
 *    unmapped rows equal TL_HEAD_REINIT's for the same seed.
 *  - Freezing and layer decay are per-tensor fields derived from names, so the
 *    optimizer needs no knowledge of the model's structure.
 *
 * Threads: one caller at a time per model (model.h); src is only read.
 */
#include "core/pages.h"
#include "model/model_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int is_head(const char *name) { return strncmp(name, "head.", 5) == 0 || strncmp(name, "aux_head.", 9) == 0; }

static int is_stem(const char *name) { return strncmp(name, "patch_embed.", 12) == 0; }

/* The first architectural difference between the source's config s and ours d: -1 with the message. */
static int check_configs(const tl_config *s, const tl_config *d, char *err, size_t errlen) {
#define SAME_INT(f)                                                                                                \
    if (s->f != d->f) return tl_seterr(err, errlen, "init_from: " #f ": %d in the source, %d here", s->f, d->f)
#define SAME_FLOAT(f)                                                                                              \
    if (s->f != d->f)                                                                                              \
    return tl_seterr(err, errlen, "init_from: " #f ": %g in the source, %g here", (double)s->f, (double)d->f)
    SAME_INT(patch_size);
    SAME_INT(embed_dim);
    SAME_INT(depth);
    SAME_INT(num_heads);
    SAME_FLOAT(mlp_ratio);
    SAME_INT(stem_channels);
    SAME_FLOAT(skip_lam);
#undef SAME_INT
#undef SAME_FLOAT
    return 0;
}

/* Rows of head.weight / aux_head.weight (K, D) and their biases (K): row k of dst from row map[k] of src where
 * map[k] >= 0. */
static void copy_head_rows(tl_tensor *td, const tl_tensor *ts, const int *map, int K) {
    size_t row = td->ndim == 2 ? (size_t)td->shape[1] : 1;
    for (int k = 0; k < K; k++)
        if (map[k] >= 0) memcpy(td->data + (size_t)k * row, ts->data + (size_t)map[k] * row, sizeof(float) * row);
}

int tl_model_init_from(tl_model *dst, const tl_model *src, tl_head_mode head, const int *class_map, uint64_t seed,
                       tl_init_report *rep, char *err, size_t errlen) {
    if (!dst || !src) return tl_seterr(err, errlen, "init_from: no model");
    if (!tl_model_trainable(dst))
        return tl_seterr(err, errlen, "init_from: the destination must be a trainable model (tl_model_new)");
    const tl_config *cs = &src->cfg, *cd = &dst->cfg;
    if (check_configs(cs, cd, err, errlen) != 0) return -1;
    int Ks = cs->num_classes, Kd = cd->num_classes;
    switch (head) {
    case TL_HEAD_REINIT:
        break;
    case TL_HEAD_KEEP:
        if (Ks != Kd)
            return tl_seterr(err, errlen,
                             "init_from: num_classes: %d in the source, %d here; keeping the heads needs equal class "
                             "counts (reinit or match them)",
                             Ks, Kd);
        break;
    case TL_HEAD_MATCH:
        if (!class_map) return tl_seterr(err, errlen, "init_from: matching the heads needs a class map");
        for (int k = 0; k < Kd; k++)
            if (class_map[k] < -1 || class_map[k] >= Ks)
                return tl_seterr(err, errlen,
                                 "init_from: class_map[%d] is %d, neither -1 nor a source class (0..%d)", k,
                                 class_map[k], Ks - 1);
        break;
    default:
        return tl_seterr(err, errlen, "init_from: unknown head mode %d", (int)head);
    }
    /* equal configs up to img_size and num_classes: equal tables, pos_embed and the heads' rows aside */
    if (TL_NEVER(src->ntensors != dst->ntensors))
        return tl_seterr(err, errlen, "init_from: internal error: the models have different tensor tables");
    int gs = tl_config_grid(cs), gd = tl_config_grid(cd), D = cd->embed_dim;
    for (int i = 0; i < dst->ntensors; i++) {
        const tl_tensor *ts = &src->tensors[i], *td = &dst->tensors[i];
        int sized = is_head(td->name) || (strcmp(td->name, "pos_embed") == 0 && gs != gd);
        if (TL_NEVER(strcmp(ts->name, td->name) != 0 || (!sized && ts->numel != td->numel)))
            return tl_seterr(err, errlen, "init_from: internal error: tensor %d is %s in the source, %s here", i,
                             ts->name, td->name);
    }

    /* checked: from here nothing fails */
    int kept = 0;
    if (head == TL_HEAD_KEEP) kept = Kd;
    if (head == TL_HEAD_MATCH)
        for (int k = 0; k < Kd; k++) kept += class_map[k] >= 0;
    tl_rng r;
    tl_rng_derive(&r, seed, TL_RNG_INIT, 1, 0);
    for (int i = 0; i < dst->ntensors; i++) {
        const tl_tensor *ts = &src->tensors[i];
        tl_tensor *td = &dst->tensors[i];
        if (is_head(td->name)) {
            if (head == TL_HEAD_KEEP) {
                memcpy(td->data, ts->data, sizeof(float) * td->numel);
                continue;
            }
            tl_model_init_tensor(dst, td, &r);
            if (head == TL_HEAD_MATCH) copy_head_rows(td, ts, class_map, Kd);
        } else if (strcmp(td->name, "pos_embed") == 0 && gs != gd) {
            memcpy(td->data, ts->data, sizeof(float) * (size_t)D); /* the class token's entry */
            tl_pos_embed_resample(td->data + D, ts->data + D, gs, gd, D);
        } else if (td->data != ts->data) {
            memcpy(td->data, ts->data, sizeof(float) * td->numel);
        }
    }
    memcpy(dst->bn_batches, src->bn_batches, sizeof dst->bn_batches);
    /* a fresh optimizer: gradients and both moments zero, step 0 */
    tl_pages_zero(dst->mem + dst->nfloats, sizeof(float) * dst->nfloats * 3);
    dst->step = 0;
    if (rep) {
        rep->pos_resized = gs != gd;
        rep->src_grid = gs;
        rep->dst_grid = gd;
        rep->head_rows_kept = kept;
        rep->head_rows_new = Kd - kept;
    }
    return 0;
}

int tl_model_set_freeze(tl_model *m, tl_freeze f, char *err, size_t errlen) {
    if (!tl_model_trainable(m))
        return tl_seterr(err, errlen, "freeze: an inference model does not train; nothing to freeze");
    if (f != TL_FREEZE_NONE && f != TL_FREEZE_STEM && f != TL_FREEZE_TRUNK)
        return tl_seterr(err, errlen, "freeze: unknown value %d (none 0, stem 1, trunk 2)", (int)f);
    for (int i = 0; i < m->ntensors; i++) {
        tl_tensor *t = &m->tensors[i];
        /* BatchNorm buffers of a frozen stem are marked too: they stay as they are (FrozenBatchNorm) */
        t->frozen = f == TL_FREEZE_TRUNK ? !is_head(t->name) : f == TL_FREEZE_STEM ? is_stem(t->name) : 0;
    }
    m->freeze = f;
    return 0;
}

tl_freeze tl_model_freeze(const tl_model *m) { return m->freeze; }

/* timm's layer id (param_groups_layer_decay with ViT's group matcher, num_layers = depth + 2): 0 for the patch
 * embedding, class token and position embedding, i + 1 for blocks.i, depth + 1 for the final norm and the
 * heads. */
static int layer_id(const char *name, int depth) {
    if (strncmp(name, "blocks.", 7) == 0) {
        int i = 0;
        for (const char *p = name + 7; *p >= '0' && *p <= '9'; p++) i = i * 10 + (*p - '0');
        return i + 1;
    }
    if (is_stem(name) || strcmp(name, "cls_token") == 0 || strcmp(name, "pos_embed") == 0) return 0;
    return depth + 1;
}

int tl_model_set_layer_decay(tl_model *m, float decay, char *err, size_t errlen) {
    if (!(decay > 0.0f && decay <= 1.0f)) /* NaN too */
        return tl_seterr(err, errlen, "layer_decay: must be in (0, 1], got %g", (double)decay);
    int L = m->cfg.depth;
    for (int i = 0; i < m->ntensors; i++) {
        tl_tensor *t = &m->tensors[i];
        /* scale = decay^(num_layers - 1 - layer_id), in double as timm's Python does, then to float */
        int e = L + 1 - layer_id(t->name, L);
        t->lr_scale = decay == 1.0f ? 1.0f : (float)pow((double)decay, (double)e);
    }
    return 0;
}
