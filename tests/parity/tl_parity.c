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
 */
#include "safetensors.h"
#include "tl.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int main(int argc, char **argv) {
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
    tl_loss_weights lw = {(float)num(jl, "cls_weight", 1.0), (float)num(jl, "dense_weight", 0.5)};
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
