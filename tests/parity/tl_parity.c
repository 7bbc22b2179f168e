/*
 * tl_parity.c: runs the engine on a batch stored in safetensors, for the
 * PyTorch reference to compare (tests/parity/run_parity.py).
 *
 *   tl-parity --config C.json --in IN.safetensors --out OUT.safetensors
 *
 * C.json: {"model": {...}, "loss": {"cls_weight", "dense_weight"},
 *          "optim": {"lr", "weight_decay", "beta1", "beta2", "eps"}, "steps": S}
 * IN: every parameter and BN running statistic by state_dict name, input
 *     [B,3,H,W], target_cls [B,K], target_dense [B,N,K], optional mix_box I32[4].
 * OUT: logits_pred, logits_cls, logits_aux, loss, loss_cls, loss_dense,
 *     grad.<param>, loss_steps [S], after.<param and running stats>.
 * Single-threaded program apart from the engine's pool (TL_THREADS, default 2).
 *
 *   tl-parity --targets --config T.json --in IN.safetensors --out OUT.safetensors
 *
 * Label-map targets (engine/data/targets.c) for tests/parity/run_targets_parity.py.
 * T.json: {"num_classes": K, "grid": S, "smoothing": s}. IN: lm_values F32
 * [B,k,h,w], lm_indices I32 [B,k,h,w], crop F32 [B,4] = (top, left, height,
 * width) fractions of the full image, flip U8 [B]. OUT: target_cls F32 [B,K],
 * target_dense F32 [B,S*S,K]. No affine. Prints the time per sample.
 *
 *   tl-parity --labelmap-dump FILE.tllm --out OUT.safetensors
 *
 * Reads a label map through engine/data/labelmap.c (tests/parity/run_import_labelmaps.py):
 * OUT holds values F32 [count,k,h,w] and indices I32 [count,k,h,w] in key
 * order, metadata "keys" (the keys joined by '\n'), "num_classes", "topk".
 */
#include "tokenlab/base.h"
#include "tokenlab/labelmap.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/model.h"
#include "tokenlab/targets.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_OUT 4096

typedef struct {
    char *name;
    float *data;
    int ndim;
    int64_t shape[4];
} out_tensor;

static out_tensor g_out[MAX_OUT];
static int g_nout;

static int add_out(const char *name, const float *src, int ndim, const int64_t *shape) {
    if (g_nout >= MAX_OUT) return -1;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    out_tensor *o = &g_out[g_nout++];
    o->name = strdup(name);
    o->data = malloc(sizeof(float) * n);
    if (!o->name || !o->data) return -1;
    memcpy(o->data, src, sizeof(float) * n);
    o->ndim = ndim;
    memcpy(o->shape, shape, sizeof(int64_t) * (size_t)ndim);
    return 0;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    fclose(f);
    return buf;
}

static double num(const cJSON *o, const char *key, double dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static float *tensor_f32(const tl_st_file *f, const char *name, size_t expect, char *err) {
    const tl_st_tensor *t = tl_st_get(f, name);
    if (!t) {
        snprintf(err, TL_ERR_LEN, "IN lacks tensor '%s'", name);
        return NULL;
    }
    if (t->numel != expect) {
        snprintf(err, TL_ERR_LEN, "IN tensor '%s' has %zu elements, expected %zu", name, t->numel, expect);
        return NULL;
    }
    float *p = malloc(sizeof(float) * expect);
    if (!p || tl_st_read_f32(t, p) != 0) {
        snprintf(err, TL_ERR_LEN, "IN tensor '%s' is not a float tensor", name);
        free(p);
        return NULL;
    }
    return p;
}

static int save_params(tl_model *m, const char *prefix, int grads, int include_buffers) {
    char name[160];
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind == TL_TENSOR_BUFFER && !include_buffers) continue;
        if (grads && !t->grad) continue;
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        if (add_out(name, grads ? t->grad : t->data, t->ndim, t->shape) != 0) return -1;
    }
    return 0;
}

static int targets_main(int argc, char **argv);
static int labelmap_dump_main(int argc, char **argv);

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--targets") == 0) return targets_main(argc - 2, argv + 2);
    if (argc > 1 && strcmp(argv[1], "--labelmap-dump") == 0) return labelmap_dump_main(argc - 1, argv + 1);
    const char *cfg_path = NULL, *in_path = NULL, *out_path = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--config") == 0) cfg_path = argv[i + 1];
        else if (strcmp(argv[i], "--in") == 0) in_path = argv[i + 1];
        else if (strcmp(argv[i], "--out") == 0) out_path = argv[i + 1];
        else {
            fprintf(stderr, "tl-parity: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!cfg_path || !in_path || !out_path) {
        fprintf(stderr, "usage: tl-parity --config C.json --in IN.safetensors --out OUT.safetensors\n");
        return 2;
    }
    char err[TL_ERR_LEN];
    char *text = read_text(cfg_path);
    cJSON *cfg = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!cfg) {
        fprintf(stderr, "tl-parity: cannot read JSON config %s\n", cfg_path);
        return 1;
    }
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(cfg, "model");
    const cJSON *jl = cJSON_GetObjectItemCaseSensitive(cfg, "loss");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(cfg, "optim");
    char *model_json = jm ? cJSON_PrintUnformatted(jm) : NULL;
    tl_config c;
    if (!model_json || tl_config_from_json(model_json, &c, err, sizeof err) != 0) {
        fprintf(stderr, "tl-parity: model config: %s\n", model_json ? err : "missing \"model\"");
        return 1;
    }
    free(model_json);
    tl_loss_weights lw = {(float)num(jl, "cls_weight", 1.0), (float)num(jl, "dense_weight", 0.5), 1.0f};
    tl_adamw hp = {(float)num(jo, "lr", 1e-3), (float)num(jo, "weight_decay", 0.05), (float)num(jo, "beta1", 0.9),
                   (float)num(jo, "beta2", 0.999), (float)num(jo, "eps", 1e-8)};
    int steps = (int)num(cfg, "steps", 1);
    cJSON_Delete(cfg);
    c.drop_path_rate = 0.0f; /* parity runs train mode without drop path */

    tl_st_file *in = tl_st_open(in_path, err, sizeof err);
    if (!in) {
        fprintf(stderr, "tl-parity: %s\n", err);
        return 1;
    }
    tl_model *m = tl_model_new(&c, 0, err, sizeof err);
    if (!m) {
        fprintf(stderr, "tl-parity: %s\n", err);
        return 1;
    }
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        float *p = tensor_f32(in, t->name, t->numel, err);
        if (!p) {
            fprintf(stderr, "tl-parity: %s\n", err);
            return 1;
        }
        memcpy(t->data, p, sizeof(float) * t->numel);
        free(p);
    }
    const tl_st_tensor *ti = tl_st_get(in, "input");
    if (!ti || ti->ndim != 4 || ti->shape[1] != 3 || ti->shape[2] != c.img_size || ti->shape[3] != c.img_size) {
        fprintf(stderr, "tl-parity: IN 'input' must be [B,3,%d,%d]\n", c.img_size, c.img_size);
        return 1;
    }
    int B = (int)ti->shape[0], K = c.num_classes, N = tl_config_tokens(&c), g = tl_config_grid(&c);
    float *images = tensor_f32(in, "input", (size_t)B * 3 * c.img_size * c.img_size, err);
    float *t_cls = images ? tensor_f32(in, "target_cls", (size_t)B * K, err) : NULL;
    float *t_dense = t_cls ? tensor_f32(in, "target_dense", (size_t)B * N * K, err) : NULL;
    if (!t_dense) {
        fprintf(stderr, "tl-parity: %s\n", err);
        return 1;
    }
    tl_box box = {0, 0, 0, 0};
    const tl_st_tensor *tb = tl_st_get(in, "mix_box");
    if (tb) {
        if (tb->dtype != TL_ST_I32 || tb->numel != 4) {
            fprintf(stderr, "tl-parity: IN 'mix_box' must be I32 [4]\n");
            return 1;
        }
        int32_t v[4];
        memcpy(v, tb->data, sizeof v);
        box = (tl_box){v[0], v[1], v[2], v[3]};
    }
    const char *env = getenv("TL_THREADS");
    int nthreads = env ? atoi(env) : 2;
    tl_ctx *ctx = tl_ctx_new(m, B, 1, nthreads, err, sizeof err);
    if (!ctx) {
        fprintf(stderr, "tl-parity: %s\n", err);
        return 1;
    }
    /* 1. inference score in eval mode from the IN weights */
    float *scores = malloc(sizeof(float) * (size_t)B * K);
    tl_predict(ctx, images, B, scores);
    int64_t sh_bk[2] = {B, K}, sh_bnk[3] = {B, N, K}, sh1[1] = {1};
    add_out("logits_pred", scores, 2, sh_bk);

    /* 2. S training steps on the same batch and box; the first one's outputs are reported */
    float *loss_steps = malloc(sizeof(float) * (size_t)(steps > 0 ? steps : 1));
    for (int s = 0; s < steps || s == 0; s++) {
        tl_model_zero_grad(m);
        tl_loss_parts lp;
        if (tl_forward(ctx, images, B, 1, &box, 0) != 0 || tl_loss(ctx, t_cls, t_dense, &lw, &lp) != 0 ||
            tl_backward(ctx) != 0) {
            fprintf(stderr, "tl-parity: training step %d failed\n", s);
            return 1;
        }
        if (s == 0) {
            add_out("logits_cls", tl_logits_cls(ctx), 2, sh_bk);
            add_out("logits_aux", tl_logits_aux(ctx), 3, sh_bnk);
            float l = (float)lp.loss, lc = (float)lp.loss_cls, ld = (float)lp.loss_dense;
            add_out("loss", &l, 1, sh1);
            add_out("loss_cls", &lc, 1, sh1);
            add_out("loss_dense", &ld, 1, sh1);
            save_params(m, "grad.", 1, 0);
        }
        if (steps <= 0) break;
        loss_steps[s] = (float)lp.loss;
        tl_ctx_adamw_step(ctx, &hp);
    }
    if (steps > 0) {
        int64_t shs[1] = {steps};
        add_out("loss_steps", loss_steps, 1, shs);
        save_params(m, "after.", 0, 1);
    }
    (void)g;
    tl_st_writer *w = tl_st_writer_new();
    for (int i = 0; i < g_nout; i++) tl_st_add(w, g_out[i].name, TL_ST_F32, g_out[i].ndim, g_out[i].shape, g_out[i].data);
    if (tl_st_write(w, out_path, err, sizeof err) != 0) {
        fprintf(stderr, "tl-parity: %s\n", err);
        return 1;
    }
    tl_st_writer_free(w);
    for (int i = 0; i < g_nout; i++) {
        free(g_out[i].name);
        free(g_out[i].data);
    }
    free(loss_steps);
    free(scores);
    free(images);
    free(t_cls);
    free(t_dense);
    tl_ctx_free(ctx);
    tl_model_free(m);
    tl_st_close(in);
    return 0;
}

/* ------------------------------------------------------------------ --targets */

/* A tensor of IN with the given dtype and ndim, or NULL with a message. */
static const tl_st_tensor *in_tensor(const tl_st_file *f, const char *name, tl_st_dtype dt, int ndim, char *err) {
    const tl_st_tensor *t = tl_st_get(f, name);
    if (!t)
        snprintf(err, TL_ERR_LEN, "IN lacks tensor '%s'", name);
    else if (t->dtype != dt || t->ndim != ndim)
        snprintf(err, TL_ERR_LEN, "IN tensor '%s' must be %s with %d dimensions", name, tl_st_dtype_name(dt), ndim);
    else
        return t;
    return NULL;
}

static int targets_main(int argc, char **argv) {
    const char *cfg_path = NULL, *in_path = NULL, *out_path = NULL;
    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--config") == 0) cfg_path = argv[i + 1];
        else if (strcmp(argv[i], "--in") == 0) in_path = argv[i + 1];
        else if (strcmp(argv[i], "--out") == 0) out_path = argv[i + 1];
        else {
            fprintf(stderr, "tl-parity --targets: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!cfg_path || !in_path || !out_path || argc % 2 != 0) {
        fprintf(stderr, "usage: tl-parity --targets --config T.json --in IN.safetensors --out OUT.safetensors\n");
        return 2;
    }
    char err[TL_ERR_LEN];
    int rc = 1;
    tl_st_file *in = NULL;
    tl_st_writer *w = NULL;
    float *vals = NULL, *crop = NULL, *t_cls = NULL, *t_dense = NULL, *scratch = NULL;
    char *text = read_text(cfg_path);
    cJSON *cfg = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!cfg) {
        fprintf(stderr, "tl-parity: cannot read JSON config %s\n", cfg_path);
        return 1;
    }
    int K = (int)num(cfg, "num_classes", 0), S = (int)num(cfg, "grid", 0);
    float smoothing = (float)num(cfg, "smoothing", 0.0);
    cJSON_Delete(cfg);
    if (K < 1 || K > TL_LABELMAP_MAX_CLASSES || S < 1 || S > 1024 || !(smoothing >= 0.0f && smoothing <= 1.0f)) {
        fprintf(stderr, "tl-parity: T.json needs num_classes in [1,65535], grid in [1,1024], smoothing in [0,1]\n");
        return 1;
    }
    in = tl_st_open(in_path, err, sizeof err);
    if (!in) goto fail;
    const tl_st_tensor *tv = in_tensor(in, "lm_values", TL_ST_F32, 4, err);
    const tl_st_tensor *ti = tv ? in_tensor(in, "lm_indices", TL_ST_I32, 4, err) : NULL;
    const tl_st_tensor *tc = ti ? in_tensor(in, "crop", TL_ST_F32, 2, err) : NULL;
    const tl_st_tensor *tf = tc ? in_tensor(in, "flip", TL_ST_U8, 1, err) : NULL;
    if (!tf) goto fail;
    int B = (int)tv->shape[0], k = (int)tv->shape[1], h = (int)tv->shape[2], wd = (int)tv->shape[3];
    if (B < 1 || k < 1 || h < 1 || wd < 1 || memcmp(ti->shape, tv->shape, sizeof(int64_t) * 4) != 0 ||
        tc->shape[0] != B || tc->shape[1] != 4 || tf->shape[0] != B) {
        snprintf(err, sizeof err, "IN shapes disagree: lm_values [B,k,h,w], lm_indices the same, crop [B,4], flip [B]");
        goto fail;
    }
    size_t plane = (size_t)k * h * wd;
    vals = malloc(sizeof(float) * tv->numel);
    int32_t *idx = malloc(sizeof(int32_t) * ti->numel);
    crop = malloc(sizeof(float) * tc->numel);
    t_cls = malloc(sizeof(float) * (size_t)B * K);
    t_dense = malloc(sizeof(float) * (size_t)B * S * S * K);
    scratch = malloc(sizeof(float) * tl_targets_scratch(K, h, wd, S));
    if (!vals || !idx || !crop || !t_cls || !t_dense || !scratch) {
        free(idx);
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    memcpy(vals, tv->data, sizeof(float) * tv->numel);
    memcpy(idx, ti->data, sizeof(int32_t) * ti->numel);
    memcpy(crop, tc->data, sizeof(float) * tc->numel);
    for (size_t i = 0; i < ti->numel; i++)
        if (idx[i] < 0 || idx[i] >= K) {
            snprintf(err, sizeof err, "lm_indices[%zu] = %" PRId32 " outside [0, %d)", i, idx[i], K);
            free(idx);
            goto fail;
        }
    const uint8_t *flips = tf->data;
    /* two passes with the same result: the second, with the buffers already touched, is timed */
    double t0 = 0.0, t1 = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        t0 = tl_clock_mono_s();
        for (int b = 0; b < B; b++) {
            tl_geom g = {crop[4 * b], crop[4 * b + 1], crop[4 * b + 2], crop[4 * b + 3], flips[b] != 0, 0, {0}};
            tl_targets_compute(t_cls + (size_t)b * K, t_dense + (size_t)b * S * S * K, vals + (size_t)b * plane,
                               idx + (size_t)b * plane, k, h, wd, K, &g, S, smoothing, scratch);
        }
        t1 = tl_clock_mono_s();
    }
    double us = (t1 - t0) * 1e6 / B;
    printf("tl-parity --targets: B=%d K=%d k=%d h=%d w=%d S=%d: %.1f us/sample\n", B, K, k, h, wd, S, us);
    free(idx);
    int64_t sh_cls[2] = {B, K}, sh_dense[3] = {B, (int64_t)S * S, K};
    w = tl_st_writer_new();
    if (!w || tl_st_add(w, "target_cls", TL_ST_F32, 2, sh_cls, t_cls) != 0 ||
        tl_st_add(w, "target_dense", TL_ST_F32, 3, sh_dense, t_dense) != 0) {
        snprintf(err, sizeof err, "cannot build the output");
        goto fail;
    }
    if (tl_st_write(w, out_path, err, sizeof err) != 0) goto fail;
    rc = 0;
fail:
    if (rc != 0) fprintf(stderr, "tl-parity --targets: %s\n", err);
    tl_st_writer_free(w);
    tl_st_close(in);
    free(vals);
    free(crop);
    free(t_cls);
    free(t_dense);
    free(scratch);
    return rc;
}

/* ------------------------------------------------------------------ --labelmap-dump */

static int labelmap_dump_main(int argc, char **argv) {
    /* argv[0] = "--labelmap-dump", argv[1] = FILE, then --out OUT */
    if (argc != 4 || strcmp(argv[2], "--out") != 0) {
        fprintf(stderr, "usage: tl-parity --labelmap-dump FILE.tllm --out OUT.safetensors\n");
        return 2;
    }
    const char *lm_path = argv[1], *out_path = argv[3];
    char err[TL_ERR_LEN];
    int rc = 1;
    float *vals = NULL;
    int32_t *idx = NULL;
    char *keys = NULL;
    tl_st_writer *w = NULL;
    tl_labelmap *lm = tl_labelmap_open(lm_path, 0, err, sizeof err);
    if (!lm) goto fail;
    int64_t n = tl_labelmap_count(lm);
    int k = tl_labelmap_topk(lm), h = tl_labelmap_h(lm), wd = tl_labelmap_w(lm);
    size_t plane = (size_t)k * h * wd, klen = 1;
    for (int64_t i = 0; i < n; i++) klen += strlen(tl_labelmap_key(lm, i, NULL)) + 1;
    vals = malloc(sizeof(float) * (plane * (size_t)n + 1));
    idx = malloc(sizeof(int32_t) * (plane * (size_t)n + 1));
    keys = malloc(klen);
    if (!vals || !idx || !keys) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    size_t kpos = 0;
    keys[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t e;
        const char *key = tl_labelmap_key(lm, i, &e);
        if (tl_labelmap_find(lm, key) != e) {
            snprintf(err, sizeof err, "find('%s') disagrees with the key table", key);
            goto fail;
        }
        if (tl_labelmap_read(lm, e, vals + (size_t)i * plane, idx + (size_t)i * plane, err, sizeof err) != 0)
            goto fail;
        size_t l = strlen(key);
        if (i) keys[kpos++] = '\n';
        memcpy(keys + kpos, key, l + 1);
        kpos += l;
    }
    int64_t shape[4] = {n, k, h, wd};
    char kbuf[32], tbuf[32];
    snprintf(kbuf, sizeof kbuf, "%d", tl_labelmap_num_classes(lm));
    snprintf(tbuf, sizeof tbuf, "%d", k);
    w = tl_st_writer_new();
    if (!w || tl_st_add(w, "values", TL_ST_F32, 4, shape, vals) != 0 ||
        tl_st_add(w, "indices", TL_ST_I32, 4, shape, idx) != 0 || tl_st_set_meta(w, "keys", keys) != 0 ||
        tl_st_set_meta(w, "num_classes", kbuf) != 0 || tl_st_set_meta(w, "topk", tbuf) != 0) {
        snprintf(err, sizeof err, "cannot build the output");
        goto fail;
    }
    if (tl_st_write(w, out_path, err, sizeof err) != 0) goto fail;
    printf("tl-parity --labelmap-dump: %" PRId64 " entries, K=%d k=%d h=%d w=%d\n", n, tl_labelmap_num_classes(lm), k,
           h, wd);
    rc = 0;
fail:
    if (rc != 0) fprintf(stderr, "tl-parity --labelmap-dump: %s\n", err);
    tl_st_writer_free(w);
    tl_labelmap_close(lm);
    free(vals);
    free(idx);
    free(keys);
    return rc;
}
