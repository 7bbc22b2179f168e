/*
 * model_internal.h: the engine's private view of a model and a batch context.
 * Shared by model.c (parameters, init, AdamW), ctx.c (activation memory,
 * per-phase profiling), forward.c, backward.c, resize.c (position-embedding
 * resampling) and finetune.c (starting from trained weights, freezing,
 * layer-wise lr decay). Not installed, not used outside engine/.
 */
#ifndef TL_MODEL_INTERNAL_H
#define TL_MODEL_INTERNAL_H

#include "core/pool.h"
#include "ops/ops.h"
#include "tokenlab/base.h"
#include "tokenlab/model.h"
#include "tokenlab/rng.h"

#define TL_NAME_LEN 64
#define TL_BN_EPS 1e-5f
#define TL_BN_MOMENTUM 0.1f
#define TL_LN_EPS 1e-5f

typedef struct {
    float *ln1_w, *ln1_b, *qkv_w, *proj_w, *proj_b, *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} tl_block_weights;

/* Pointers into one of the model's four blocks (params, grads, m, v). */
typedef struct {
    float *cls, *pos;
    float *conv[3], *bn_w[3], *bn_b[3], *bn_rm[3], *bn_rv[3];
    float *proj_w, *proj_b;
    tl_block_weights *blocks; /* depth */
    float *norm_w, *norm_b, *head_w, *head_b, *aux_w, *aux_b;
} tl_weights;

struct tl_model {
    tl_config cfg;
    size_t nfloats;        /* floats in one block (params incl. buffers) */
    int nblocks;           /* 4 (params, grads, exp_avg, exp_avg_sq) or 1 for an inference model */
    float *mem;            /* nblocks blocks, one anonymous mapping of mem_bytes */
    size_t mem_bytes;
    tl_weights wt[4];      /* wt[0] params, wt[1] grads */
    tl_tensor *tensors;
    int ntensors;
    char *names;           /* ntensors * TL_NAME_LEN */
    int64_t bn_batches[3];
    int64_t step;
    tl_freeze freeze;      /* tl_model_set_freeze; tensors[].frozen says the same per tensor */
};


void tl_model_adamw(tl_model *m, const tl_adamw *hp, tl_pool *pool);
/* Section 2 init of tensor t of m (model.c): the rule tl_model_new applies, drawing from r. */
void tl_model_init_tensor(tl_model *m, const tl_tensor *t, tl_rng *r);
/* The patch tokens' position embedding (gs*gs, D) resampled bicubically to (gd*gd, D) (resize.c, PyTorch's
 * F.interpolate(mode="bicubic", align_corners=False)); src and dst are the grid rows, without the class
 * token's entry. */
void tl_pos_embed_resample(float *dst /*(gd*gd,D)*/, const float *src /*(gs*gs,D)*/, int gs, int gd, int D);

/* Activations of one block (training keeps one set per block). */
typedef struct {
    float *x_in;      /* (B,T,D) residual stream entering the block */
    float *ln1;       /* (B,T,D) */
    float *ln1_mean, *ln1_rstd; /* (B*T) */
    float *qkv;       /* (B,T,3D) */
    float *att;       /* (B,H,T,T) */
    float *att_out;   /* (B,T,D) heads concatenated, input of attn.proj */
    float *x_mid;     /* (B,T,D) after the attention residual */
    float *ln2;       /* (B,T,D) */
    float *ln2_mean, *ln2_rstd; /* (B*T) */
    float *fc1;       /* (B,T,hid) pre-activation */
    float *gelu;      /* (B,T,hid) */
    float *scale1, *scale2; /* (B) drop path scales */
} tl_block_acts;

/* Per-phase wall time, accumulated when profiling is on (tl_ctx_profile). */
enum {
    TL_PROF_STEM_CONV, TL_PROF_STEM_BN, TL_PROF_PATCH, TL_PROF_LN, TL_PROF_QKV, TL_PROF_ATTN, TL_PROF_PROJ,
    TL_PROF_FC1, TL_PROF_GELU, TL_PROF_FC2, TL_PROF_RESID, TL_PROF_HEADS, TL_PROF_LOSS, TL_PROF_OTHER, TL_PROF_N
};
#define TL_PROF_NAMES                                                                                              \
    {"stem_conv", "stem_bn", "patch_proj", "layernorm", "qkv", "attention", "attn_proj", "fc1", "gelu", "fc2",   \
     "residual", "heads", "loss", "other"}

#define PROF(x, id, call)                                                                 \
    do {                                                                                  \
        double t0_ = (x)->profile ? tl_clock_mono_s() : 0.0;                              \
        call;                                                                             \
        if ((x)->profile) (x)->prof[(id)][(x)->in_backward] += tl_clock_mono_s() - t0_; \
    } while (0)

struct tl_ctx {
    tl_model *m;
    int profile, in_backward;
    double prof[TL_PROF_N][2]; /* seconds: [phase][0 forward, 1 backward] */
    tl_pool *pool;
    int Bmax, training, nthreads;
    int B;                 /* batch of the last forward */
    const float *images;   /* input of the last forward, kept for conv1's backward */
    int train_fwd;         /* last forward was in train mode */
    tl_freeze fwd_freeze;  /* the model's freeze at the last train forward: what tl_backward skips */
    tl_box box;            /* clipped box of the last train forward (empty if none) */
    float lam;
    int have_loss;
    /* derived sizes */
    int C, H1, k, g, N, T, D, Hh, hid, K;
    size_t stem;           /* C*B*H1*H1 floats for Bmax */
    float *mem;
    size_t nfloats;
    /* stem, NHWC */
    float *c[3], *a[3];    /* conv outputs and BN(+ReLU) outputs, (B,H1,H1,C) */
    float *wt[3], *dwt[3]; /* conv weights packed (k,k,Cin,C) and their gradients */
    float *wp, *dwp;       /* proj weight packed (D, k*k*C) and its gradient */
    float *bn_scratch;
    float *bn_mean[3], *bn_rstd[3];
    float *fold_b[3];      /* eval: BatchNorm folded into wt[l] (scaled) and this bias, (C) */
    int eval_reference;    /* eval forward by the unfused layer-by-layer path (tests; training contexts only) */
    int frozen;            /* tl_ctx_freeze_weights: the caller promises the weights no longer change */
    int stem_packed;       /* frozen, and wt/fold_b/wp hold the eval stem's folded, packed weights */
    float *patches;        /* (B*N, k*k*C) */
    float *tok;            /* (B,N,D) */
    tl_block_acts *blk;    /* depth */
    float *x_final;        /* (B,T,D) residual stream after the last block */
    float *lnf, *lnf_mean, *lnf_rstd;
    float *logits_cls;     /* (B,K) */
    float *logits_aux;     /* (B,N,K) */
    float *branch;         /* (B,T,D) scratch: branch outputs */
    /* backward */
    float *dlogits_cls, *dlogits_aux, *t_mix;
    float *dres, *dln, *dqkv, *datt_out, *dhid, *dbranch, *dtok, *dstem[2];
    float *scratch;        /* conv / LayerNorm / attention scratch */
    size_t scratch_floats;
};

#endif
