/*
 * model.c: LV-ViT parameters, their names, initialisation and AdamW.
 *
 * Owns: one allocation of 4 equal blocks (parameters+buffers, gradients, AdamW
 * first and second moments) carved by a single layout function, so a tensor
 * sits at the same offset in each block; the tensor table with PyTorch
 * state_dict names. The forward and backward passes live in forward.c and
 * backward.c and reach the weights through tl_weights (model_internal.h).
 * Threads: one caller at a time (see model.h).
 */
#include "model/model_internal.h"
#include "core/pages.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- layout ---- */
typedef struct {
    tl_model *m;  /* NULL: only count */
    size_t off;   /* floats so far */
    int nt;       /* tensors so far */
} layout_state;

static float *carve(layout_state *s, float *base, const char *name, tl_tensor_kind kind, int decay, int ndim,
                    int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    float *p = base ? base + s->off : NULL;
    if (s->m) {
        tl_tensor *t = &s->m->tensors[s->nt];
        snprintf(s->m->names + (size_t)s->nt * TL_NAME_LEN, TL_NAME_LEN, "%s", name);
        t->name = s->m->names + (size_t)s->nt * TL_NAME_LEN;
        t->kind = kind;
        t->ndim = ndim;
        memcpy(t->shape, shape, sizeof shape);
        t->numel = n;
        t->decay = kind == TL_TENSOR_PARAM && decay;
        t->offset = s->off;
        t->lr_scale = 1.0f; /* no layer-wise decay, nothing frozen (finetune.c changes both) */
        t->frozen = 0;
    }
    s->off += (n + 15) & ~(size_t)15; /* 64-byte aligned tensors */
    s->nt++;
    return p;
}

/* Carves every tensor, in state_dict order, from base (NULL to count). */
static void layout(layout_state *s, const tl_config *c, float *base, tl_weights *w) {
    int C = c->stem_channels, D = c->embed_dim, P2 = c->patch_size / 2, hid = tl_config_hidden(c);
    int T = tl_config_tokens(c) + 1, K = c->num_classes;
    char name[TL_NAME_LEN];
    const tl_tensor_kind P = TL_TENSOR_PARAM, BUF = TL_TENSOR_BUFFER;
    float *p;
    p = carve(s, base, "cls_token", P, 0, 3, 1, 1, D, 0);
    if (w) w->cls = p;
    p = carve(s, base, "pos_embed", P, 0, 3, 1, T, D, 0);
    if (w) w->pos = p;
    for (int l = 0; l < 3; l++) {
        int cin = l == 0 ? 3 : C, k = l == 0 ? 7 : 3;
        snprintf(name, sizeof name, "patch_embed.conv%d.weight", l + 1);
        p = carve(s, base, name, P, 1, 4, C, cin, k, k);
        if (w) w->conv[l] = p;
        static const char *bn_fields[] = {"weight", "bias", "running_mean", "running_var"};
        for (int f = 0; f < 4; f++) {
            snprintf(name, sizeof name, "patch_embed.bn%d.%s", l + 1, bn_fields[f]);
            p = carve(s, base, name, f < 2 ? P : BUF, 0, 1, C, 0, 0, 0);
            if (w) {
                float **dst[4] = {&w->bn_w[l], &w->bn_b[l], &w->bn_rm[l], &w->bn_rv[l]};
                *dst[f] = p;
            }
        }
    }
    p = carve(s, base, "patch_embed.proj.weight", P, 1, 4, D, C, P2, P2);
    if (w) w->proj_w = p;
    p = carve(s, base, "patch_embed.proj.bias", P, 0, 1, D, 0, 0, 0);
    if (w) w->proj_b = p;
    for (int i = 0; i < c->depth; i++) {
        tl_block_weights *b = w ? &w->blocks[i] : NULL;
        struct {
            const char *suffix;
            int ndim;
            int64_t d0, d1;
            float **dst;
        } items[] = {
            {"norm1.weight", 1, D, 0, b ? &b->ln1_w : NULL},    {"norm1.bias", 1, D, 0, b ? &b->ln1_b : NULL},
            {"attn.qkv.weight", 2, 3 * D, D, b ? &b->qkv_w : NULL},
            {"attn.proj.weight", 2, D, D, b ? &b->proj_w : NULL}, {"attn.proj.bias", 1, D, 0, b ? &b->proj_b : NULL},
            {"norm2.weight", 1, D, 0, b ? &b->ln2_w : NULL},    {"norm2.bias", 1, D, 0, b ? &b->ln2_b : NULL},
            {"mlp.fc1.weight", 2, hid, D, b ? &b->fc1_w : NULL}, {"mlp.fc1.bias", 1, hid, 0, b ? &b->fc1_b : NULL},
            {"mlp.fc2.weight", 2, D, hid, b ? &b->fc2_w : NULL}, {"mlp.fc2.bias", 1, D, 0, b ? &b->fc2_b : NULL},
        };
        for (size_t k = 0; k < sizeof items / sizeof items[0]; k++) {
            snprintf(name, sizeof name, "blocks.%d.%s", i, items[k].suffix);
            p = carve(s, base, name, P, items[k].ndim > 1, items[k].ndim, items[k].d0, items[k].d1, 0, 0);
            if (items[k].dst) *items[k].dst = p;
        }
    }
    p = carve(s, base, "norm.weight", P, 0, 1, D, 0, 0, 0);
    if (w) w->norm_w = p;
    p = carve(s, base, "norm.bias", P, 0, 1, D, 0, 0, 0);
    if (w) w->norm_b = p;
    p = carve(s, base, "head.weight", P, 1, 2, K, D, 0, 0);
    if (w) w->head_w = p;
    p = carve(s, base, "head.bias", P, 0, 1, K, 0, 0, 0);
    if (w) w->head_b = p;
    p = carve(s, base, "aux_head.weight", P, 1, 2, K, D, 0, 0);
    if (w) w->aux_w = p;
    p = carve(s, base, "aux_head.bias", P, 0, 1, K, 0, 0, 0);
    if (w) w->aux_b = p;
}

/* timm's trunc_normal_(std=.02): normal truncated to the absolute range [-2, 2]. */
static void init_trunc_normal(tl_rng *r, float *p, size_t n, double std) {
    for (size_t i = 0; i < n; i++) {
        double v;
        do v = tl_rng_normal(r) * std;
        while (v < -2.0 || v > 2.0);
        p[i] = (float)v;
    }
}

static void init_uniform(tl_rng *r, float *p, size_t n, double bound) {
    for (size_t i = 0; i < n; i++) p[i] = (float)((2.0 * tl_rng_uniform(r) - 1.0) * bound);
}

static void init_fill(float *p, size_t n, float v) {
    for (size_t i = 0; i < n; i++) p[i] = v;
}

/* Section 2 init of one tensor, drawing from r (nothing is drawn for constant fills). tl_model_new calls it
 * for every tensor in state_dict order from one stream; fine-tuning (finetune.c) for the heads it redraws. */
void tl_model_init_tensor(tl_model *m, const tl_tensor *t, tl_rng *r) {
    const char *n = t->name;
    size_t len = strlen(n);
    int is_bias = len > 5 && strcmp(n + len - 5, ".bias") == 0;
    int is_weight = len > 7 && strcmp(n + len - 7, ".weight") == 0;
    if (strncmp(n, "patch_embed.conv", 16) == 0 || strcmp(n, "patch_embed.proj.weight") == 0 ||
        strcmp(n, "patch_embed.proj.bias") == 0) {
        /* PyTorch conv default: kaiming_uniform(a=sqrt(5)) -> bound 1/sqrt(fan_in); bias same bound */
        const tl_tensor *wt = strcmp(n, "patch_embed.proj.bias") == 0 ? tl_model_find(m, "patch_embed.proj.weight") : t;
        double fan_in = (double)(wt->shape[1] * wt->shape[2] * wt->shape[3]);
        init_uniform(r, t->data, t->numel, 1.0 / sqrt(fan_in));
    } else if (strstr(n, ".running_var")) {
        init_fill(t->data, t->numel, 1.0f);
    } else if (strstr(n, ".running_mean")) {
        init_fill(t->data, t->numel, 0.0f);
    } else if (strncmp(n, "patch_embed.bn", 14) == 0 || strstr(n, "norm")) {
        init_fill(t->data, t->numel, is_weight ? 1.0f : 0.0f); /* BN and LayerNorm: 1 / 0 */
    } else if (is_bias) {
        init_fill(t->data, t->numel, 0.0f);                     /* Linear biases */
    } else {
        init_trunc_normal(r, t->data, t->numel, 0.02);          /* Linear weights, cls_token, pos_embed */
    }
}

static void init_weights(tl_model *m, uint64_t seed) {
    tl_rng r;
    tl_rng_seed(&r, seed);
    for (int i = 0; i < m->ntensors; i++) tl_model_init_tensor(m, &m->tensors[i], &r);
}

/* ---- public API ---- */
/* nblocks 4: a trainable model; 1: weights only (inference), without gradients or moments. */
static tl_model *model_new(const tl_config *c, uint64_t seed, int nblocks, int init, char *err, size_t errlen) {
    if (tl_config_validate(c, err, errlen) != 0) return NULL;
    if (tl_runtime_init(err, errlen) != 0) return NULL;
    tl_model *m = calloc(1, sizeof *m);
    if (!m) goto fail_alloc;
    m->cfg = *c;
    layout_state count = {0};
    layout(&count, c, NULL, NULL);
    m->ntensors = count.nt;
    m->nfloats = count.off;
    m->nblocks = nblocks;
    m->tensors = calloc((size_t)m->ntensors, sizeof *m->tensors);
    m->names = calloc((size_t)m->ntensors, TL_NAME_LEN);
    for (int i = 0; i < 4; i++) {
        m->wt[i].blocks = calloc((size_t)c->depth, sizeof(tl_block_weights));
        if (!m->wt[i].blocks) goto fail_alloc;
    }
    if (!m->tensors || !m->names) goto fail_alloc;
    /* One anonymous mapping: page-aligned and zero-filled by the kernel on first touch, so the gradient
     * and moment blocks cost nothing until training writes them (a memset faulted every page in first:
     * about a second for lvvit_s on a virtual machine). */
    m->mem_bytes = sizeof(float) * m->nfloats * (size_t)nblocks;
    void *mem = mmap(NULL, m->mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) goto fail_alloc;
    m->mem = mem;
    tl_pages_populate(m->mem, sizeof(float) * m->nfloats); /* the weights: written at once by init or a load */
    for (int i = 0; i < nblocks; i++) {
        layout_state s = {i == 0 ? m : NULL, 0, 0};
        layout(&s, c, m->mem + (size_t)i * m->nfloats, &m->wt[i]);
        /* every pass carves what the counting pass counted */
        if (TL_NEVER(s.off != m->nfloats || s.nt != m->ntensors)) goto fail_layout;
    }
    for (int i = 0; i < m->ntensors; i++) {
        tl_tensor *t = &m->tensors[i];
        /* tensors lie in order, without overlap, inside the block */
        size_t prev_end = i ? m->tensors[i - 1].offset + m->tensors[i - 1].numel : 0;
        if (TL_NEVER(t->offset < prev_end || t->offset + t->numel > m->nfloats)) goto fail_layout;
        t->data = m->mem + t->offset;
        if (t->kind == TL_TENSOR_PARAM && nblocks == 4) {
            t->grad = m->mem + m->nfloats + t->offset;
            t->m = m->mem + 2 * m->nfloats + t->offset;
            t->v = m->mem + 3 * m->nfloats + t->offset;
        }
    }
    if (nblocks == 4 && init) init_weights(m, seed); /* an inference model gets its weights from a checkpoint */
    return m;
fail_alloc:
    tl_seterr(err, errlen, "out of memory allocating the model");
    tl_model_free(m);
    return NULL;
fail_layout:
    tl_seterr(err, errlen, "internal error: the model's tensor table is inconsistent");
    tl_model_free(m);
    return NULL;
}

tl_model *tl_model_new(const tl_config *c, uint64_t seed, char *err, size_t errlen) {
    return model_new(c, seed, 4, 1, err, errlen);
}

tl_model *tl_model_new_blank(const tl_config *c, char *err, size_t errlen) {
    return model_new(c, 0, 4, 0, err, errlen);
}

tl_model *tl_model_new_inference(const tl_config *c, char *err, size_t errlen) {
    return model_new(c, 0, 1, 0, err, errlen);
}

int tl_model_trainable(const tl_model *m) { return m->nblocks == 4; }

void tl_model_free(tl_model *m) {
    if (!m) return;
    if (m->mem) munmap(m->mem, m->mem_bytes);
    free(m->tensors);
    free(m->names);
    for (int i = 0; i < 4; i++) free(m->wt[i].blocks);
    free(m);
}

const tl_config *tl_model_config(const tl_model *m) { return &m->cfg; }
int tl_model_num_tensors(const tl_model *m) { return m->ntensors; }
const tl_tensor *tl_model_tensor(const tl_model *m, int i) { return (i >= 0 && i < m->ntensors) ? &m->tensors[i] : NULL; }

const tl_tensor *tl_model_find(const tl_model *m, const char *name) {
    for (int i = 0; i < m->ntensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

size_t tl_model_num_params(const tl_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].kind == TL_TENSOR_PARAM) n += m->tensors[i].numel;
    return n;
}

int64_t *tl_model_bn_batches(tl_model *m, int layer) { return (layer >= 0 && layer < 3) ? &m->bn_batches[layer] : NULL; }

void tl_model_zero_grad(tl_model *m) {
    if (m->nblocks == 4) memset(m->mem + m->nfloats, 0, sizeof(float) * m->nfloats);
}

size_t tl_model_bytes(const tl_model *m) { return sizeof(float) * m->nfloats * (size_t)m->nblocks; }

int64_t tl_model_step(const tl_model *m) { return m->step; }
void tl_model_set_step(tl_model *m, int64_t step) { m->step = step; }

typedef struct {
    tl_model *m;
    const tl_adamw *hp;
} adamw_all;

void tl_adamw_step(tl_model *m, const tl_adamw *hp, int nthreads) {
    tl_pool *pool = nthreads > 1 ? tl_pool_new(nthreads) : NULL;
    tl_model_adamw(m, hp, pool);
    tl_pool_free(pool);
}

void tl_ctx_adamw_step(tl_ctx *x, const tl_adamw *hp) { tl_model_adamw(x->m, hp, x->pool); }

/* Two parameters update alike when their decay, lr_scale and frozen flag are equal. */
static int same_update(const tl_tensor *a, const tl_tensor *b) {
    return a->decay == b->decay && a->lr_scale == b->lr_scale && a->frozen == b->frozen;
}

void tl_model_adamw(tl_model *m, const tl_adamw *hp, tl_pool *pool) {
    if (m->nblocks != 4) return; /* an inference model has nothing to update */
    m->step++;
    /* Decayed and non-decayed tensors alternate; run contiguous runs of equal (decay, lr_scale, frozen) as
     * one update. A frozen run is skipped: no step, no decay, moments untouched. lr x lr_scale applies to
     * both the decoupled decay and the step (PyTorch's per-group lr); a scale of 1 leaves lr bit for bit. */
    int i = 0;
    while (i < m->ntensors) {
        const tl_tensor *t = &m->tensors[i];
        if (t->kind != TL_TENSOR_PARAM) {
            i++;
            continue;
        }
        int j = i;
        size_t start = t->offset, end = start;
        while (j < m->ntensors && m->tensors[j].kind == TL_TENSOR_PARAM && same_update(&m->tensors[j], t)) {
            end = m->tensors[j].offset + ((m->tensors[j].numel + 15) & ~(size_t)15);
            j++;
        }
        if (!t->frozen)
            tl_adamw_update(pool, m->mem + start, m->mem + m->nfloats + start, m->mem + 2 * m->nfloats + start,
                            m->mem + 3 * m->nfloats + start, end - start, hp->lr * t->lr_scale, hp->beta1,
                            hp->beta2, hp->eps, t->decay ? hp->weight_decay : 0.0f, m->step);
        i = j;
    }
}

/* ---- EMA of the weights (timm's ModelEmaV2: parameters and BN statistics) ---- */
typedef struct {
    float *e;
    const float *p;
    size_t n;
    float decay;
} ema_job;

static void ema_part(void *arg, int tid, int nt) {
    ema_job *j = arg;
    size_t lo, hi;
    tl_split(j->n, tid, nt, &lo, &hi);
    float d = j->decay, o = 1.0f - j->decay;
    for (size_t i = lo; i < hi; i++) j->e[i] = d * j->e[i] + o * j->p[i];
}

int tl_model_ema_update(tl_model *ema, const tl_model *m, float decay, tl_ctx *ctx) {
    if (ema->nfloats != m->nfloats) return -1;
    ema_job j = {ema->mem, m->mem, m->nfloats, decay};
    tl_pool_run(ctx ? ctx->pool : NULL, ema_part, &j);
    memcpy(ema->bn_batches, m->bn_batches, sizeof ema->bn_batches);
    return 0;
}

int tl_model_copy_weights(tl_model *dst, const tl_model *src) {
    if (dst->nfloats != src->nfloats) return -1;
    memcpy(dst->mem, src->mem, sizeof(float) * src->nfloats);
    memcpy(dst->bn_batches, src->bn_batches, sizeof dst->bn_batches);
    return 0;
}
