/*
 * transformer.c: LayerNorm, multi-head attention core, GELU, residual
 * with drop path, token assembly (class token + position embedding), MixToken.
 *
 * Owns nothing; every buffer is the caller's. Row loops are split over the
 * pool; reductions over rows (LayerNorm weight gradients, position-embedding
 * gradients) use per-thread partials summed in thread order (deterministic).
 *
 * Kernel levels (tl_isa(), core/simd.h): the plain loops are TL_VEC_FN, so
 * each level runs its own compilation of them; at the AVX2 level GELU and
 * the softmax run the kernels of elementwise_avx2.c instead (their plain
 * loops vectorise for AVX-512 only). The attention's products run on
 * OpenBLAS, except: at the AVX2 level, in training and eval, on the kernels
 * of gemm_avx2.c, which take Q, K, V and their gradients where they lie in
 * qkv (no copies, no repacking: for these T x T by hd shapes OpenBLAS's
 * packing and call overhead cost as much as the arithmetic); at the AVX-512
 * level the eval attention's on tl_gemm_rows_avx512 (gemm_avx512.c).
 */
#include "core/blas.h"
#include "ops/elementwise_avx2.h"
#include "ops/gemm_avx2.h"
#include "ops/gemm_avx512.h"
#include "ops/ops.h"
#include "core/simd.h"

#include <math.h>
#include <string.h>

/* ---- LayerNorm ---- */
typedef struct {
    float *out, *mean, *rstd, *dx, *dw, *db, *scratch;
    const float *x, *w, *b, *dout, *cmean, *crstd;
    int M, D;
    float eps;
} ln_job;

TL_VEC_FN(ln_fwd_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    ln_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->M, tid, nt, &lo, &hi);
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->x + r * j->D;
        float *o = j->out + r * j->D;
        float s = 0.0f;
        for (int i = 0; i < j->D; i++) s += x[i];
        float m = s / j->D, v = 0.0f;
        for (int i = 0; i < j->D; i++) {
            float d = x[i] - m;
            v += d * d;
        }
        float rs = 1.0f / sqrtf(v / j->D + j->eps);
        for (int i = 0; i < j->D; i++) o[i] = (x[i] - m) * rs * j->w[i] + j->b[i];
        j->mean[r] = m;
        j->rstd[r] = rs;
    }
}

void tl_layernorm_forward(tl_pool *p, float *out, float *mean, float *rstd, const float *x, const float *w,
                          const float *b, int M, int D, float eps) {
    ln_job j = {.out = out, .mean = mean, .rstd = rstd, .x = x, .w = w, .b = b, .M = M, .D = D, .eps = eps};
    tl_pool_run(p, ln_fwd_part, &j);
}

/* Eval LayerNorm: sums kept in 16 lanes so they vectorise; equal to
 * ln_fwd_part up to float rounding. */
#define LN_LANES 16
TL_VEC_FN(ln_fwd_eval_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    ln_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->M, tid, nt, &lo, &hi);
    int D = j->D, dv = D - D % LN_LANES;
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->x + r * D;
        float *o = j->out + r * D;
        float a[LN_LANES];
        for (int l = 0; l < LN_LANES; l++) a[l] = 0.0f;
        for (int i = 0; i < dv; i += LN_LANES)
            for (int l = 0; l < LN_LANES; l++) a[l] += x[i + l];
        float s = 0.0f;
        for (int i = dv; i < D; i++) s += x[i];
        for (int l = 0; l < LN_LANES; l++) s += a[l];
        float m = s / D;
        for (int l = 0; l < LN_LANES; l++) a[l] = 0.0f;
        for (int i = 0; i < dv; i += LN_LANES)
            for (int l = 0; l < LN_LANES; l++) {
                float d = x[i + l] - m;
                a[l] += d * d;
            }
        float v = 0.0f;
        for (int i = dv; i < D; i++) v += (x[i] - m) * (x[i] - m);
        for (int l = 0; l < LN_LANES; l++) v += a[l];
        float rs = 1.0f / sqrtf(v / D + j->eps);
        for (int i = 0; i < D; i++) o[i] = (x[i] - m) * rs * j->w[i] + j->b[i];
        j->mean[r] = m;
        j->rstd[r] = rs;
    }
}

void tl_layernorm_forward_eval(tl_pool *p, float *out, float *mean, float *rstd, const float *x, const float *w,
                               const float *b, int M, int D, float eps) {
    ln_job j = {.out = out, .mean = mean, .rstd = rstd, .x = x, .w = w, .b = b, .M = M, .D = D, .eps = eps};
    tl_pool_run(p, ln_fwd_eval_part, &j);
}

size_t tl_layernorm_scratch(int nthreads, int D) { return (size_t)nthreads * 2 * D; }

TL_VEC_FN(ln_bwd_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    ln_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->M, tid, nt, &lo, &hi);
    float *pw = j->scratch + (size_t)tid * 2 * j->D, *pb = pw + j->D;
    memset(pw, 0, sizeof(float) * 2 * (size_t)j->D);
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->x + r * j->D, *dout = j->dout + r * j->D;
        float *dx = j->dx + r * j->D;
        float m = j->cmean[r], rs = j->crstd[r];
        float sg = 0.0f, sgx = 0.0f;
        for (int i = 0; i < j->D; i++) {
            float xh = (x[i] - m) * rs, g = dout[i] * j->w[i];
            sg += g;
            sgx += g * xh;
            pb[i] += dout[i];
            pw[i] += dout[i] * xh;
        }
        sg /= j->D;
        sgx /= j->D;
        for (int i = 0; i < j->D; i++) {
            float xh = (x[i] - m) * rs;
            dx[i] += rs * (dout[i] * j->w[i] - sg - xh * sgx);
        }
    }
}

TL_VEC_FN(ln_reduce_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    ln_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->D, tid, nt, &lo, &hi);
    int parts = j->M; /* reused: number of partials */
    for (int t = 0; t < parts; t++) {
        const float *pw = j->scratch + (size_t)t * 2 * j->D, *pb = pw + j->D;
        for (size_t i = lo; i < hi; i++) {
            j->dw[i] += pw[i];
            j->db[i] += pb[i];
        }
    }
}

void tl_layernorm_backward(tl_pool *p, float *dx_accum, float *dw, float *db, const float *dout, const float *x,
                           const float *w, const float *mean, const float *rstd, int M, int D, float *scratch) {
    ln_job j = {.dx = dx_accum, .dw = dw, .db = db, .dout = dout, .x = x, .w = w, .cmean = mean, .crstd = rstd,
                .M = M, .D = D, .scratch = scratch};
    tl_pool_run(p, ln_bwd_part, &j);
    ln_job r = j;
    r.M = tl_pool_size(p);
    tl_pool_run(p, ln_reduce_part, &r);
}

/* ---- attention ---- */
typedef struct {
    float *out, *att, *dqkv, *scratch;
    const float *qkv, *dout, *attc;
    int B, T, D, H;
} att_job;

/* The training softmax: the plain loop (vectorised at the AVX-512 level), or
 * the AVX2 kernel (softmax_rows below). */
TL_VEC_FN(softmax_rows_loop, (float *a, int rows, int cols), (a, rows, cols)) {
    for (int r = 0; r < rows; r++) {
        float *x = a + (size_t)r * cols;
        float mx = x[0];
        for (int i = 1; i < cols; i++) mx = x[i] > mx ? x[i] : mx;
        float s = 0.0f;
        for (int i = 0; i < cols; i++) {
            x[i] = tl_expf(x[i] - mx);
            s += x[i];
        }
        float inv = 1.0f / s;
        for (int i = 0; i < cols; i++) x[i] *= inv;
    }
}

static void softmax_rows(float *a, int rows, int cols) {
#if defined(__x86_64__)
    if (tl_isa() == TL_ISA_AVX2) {
        tl_softmax_rows_avx2(a, rows, cols, (size_t)cols);
        return;
    }
#endif
    softmax_rows_loop(a, rows, cols);
}

TL_VEC_FN(softmax_backward_rows, (float *d, const float *a, int rows, int cols), (d, a, rows, cols)) {
    for (int r = 0; r < rows; r++) {
        float *dr = d + (size_t)r * cols;
        const float *ar = a + (size_t)r * cols;
        float s = 0.0f;
        for (int c = 0; c < cols; c++) s += dr[c] * ar[c];
        for (int c = 0; c < cols; c++) dr[c] = ar[c] * (dr[c] - s);
    }
}

#if defined(__x86_64__)
/* The AVX2 attention kernels take a head dimension up to TL_GEMM_NT_MAX_LEN. */
static int att_avx2(int hd) { return tl_isa() == TL_ISA_AVX2 && hd <= TL_GEMM_NT_MAX_LEN; }

/* One head on the AVX2 kernels: att (T,T) = softmax(s Q K^T), out (T,hd)
 * (rows ldo apart) = att V; q, k, v are rows of qkv (ld 3D). */
static void att_head_avx2(float *out, size_t ldo, float *att, const float *q, const float *k, const float *v, int T,
                          int hd, size_t ld) {
    tl_gemm_nt_avx2(att, (size_t)T, q, ld, hd, k, ld, T, T, 1.0f / sqrtf((float)hd));
    tl_softmax_rows_avx2(att, T, T, (size_t)T);
    tl_gemm_rows_avx2(out, ldo, att, (size_t)T, T, v, ld, T, hd, 1.0f);
}
#endif

static void att_fwd_part(void *arg, int tid, int nt) {
    att_job *j = arg;
    int T = j->T, D = j->D, hd = D / j->H, D3 = 3 * D;
    float scale = 1.0f / sqrtf((float)hd);
    size_t lo, hi;
    tl_split((size_t)j->B * j->H, tid, nt, &lo, &hi);
#if defined(__x86_64__)
    if (att_avx2(hd)) {
        for (size_t bh = lo; bh < hi; bh++) {
            int b = (int)(bh / (size_t)j->H), h = (int)(bh % (size_t)j->H);
            const float *q = j->qkv + (size_t)b * T * D3 + h * hd;
            att_head_avx2(j->out + (size_t)b * T * D + h * hd, (size_t)D, j->att + bh * (size_t)T * T, q, q + D,
                          q + 2 * D, T, hd, (size_t)D3);
        }
        return;
    }
#endif
    for (size_t bh = lo; bh < hi; bh++) {
        int b = (int)(bh / (size_t)j->H), h = (int)(bh % (size_t)j->H);
        const float *q = j->qkv + (size_t)b * T * D3 + h * hd, *k = q + D, *v = q + 2 * D;
        float *att = j->att + bh * (size_t)T * T;
        tl_sgemm(0, 1, T, T, hd, scale, q, D3, k, D3, 0.0f, att, T);
        softmax_rows(att, T, T);
        tl_sgemm(0, 0, T, hd, T, 1.0f, att, T, v, D3, 0.0f, j->out + (size_t)b * T * D + h * hd, D);
    }
}

void tl_attention_forward(tl_pool *p, float *out, float *att, const float *qkv, int B, int T, int D, int H) {
    att_job j = {.out = out, .att = att, .qkv = qkv, .B = B, .T = T, .D = D, .H = H};
    tl_pool_run(p, att_fwd_part, &j);
}

/* Per thread: the training path's T x T probabilities, or the eval kernel's
 * padded scores (T x Tp), scaled K^T (hd x Tp), padded V and output (T x hp). */
size_t tl_attention_scratch(int nthreads, int T, int hd) {
    size_t Tp = ((size_t)T + 15) & ~(size_t)15, hp = ((size_t)hd + 15) & ~(size_t)15;
    size_t eval = (size_t)T * Tp + (size_t)hd * Tp + 2 * (size_t)T * hp, train = (size_t)T * T;
    return (size_t)nthreads * (eval > train ? eval : train);
}

static size_t att_per_thread(int T, int hd) { return tl_attention_scratch(1, T, hd); }

/* Eval softmax: the max and the sum are kept in 16 lanes so both passes
 * vectorise (a plain float reduction does not without -ffast-math). */
#define SM_LANES 16
TL_VEC_FN(softmax_rows_eval_loop, (float *a, int rows, int cols, size_t ld), (a, rows, cols, ld)) {
    int cv = cols - cols % SM_LANES;
    for (int r = 0; r < rows; r++) {
        float *x = a + (size_t)r * ld;
        float m[SM_LANES], s[SM_LANES];
        for (int l = 0; l < SM_LANES; l++) m[l] = -INFINITY, s[l] = 0.0f;
        for (int i = 0; i < cv; i += SM_LANES)
            for (int l = 0; l < SM_LANES; l++) m[l] = x[i + l] > m[l] ? x[i + l] : m[l];
        float mx = -INFINITY;
        for (int i = cv; i < cols; i++) mx = x[i] > mx ? x[i] : mx;
        for (int l = 0; l < SM_LANES; l++) mx = m[l] > mx ? m[l] : mx;
        for (int i = 0; i < cv; i += SM_LANES)
            for (int l = 0; l < SM_LANES; l++) {
                float e = tl_expf(x[i + l] - mx);
                x[i + l] = e;
                s[l] += e;
            }
        float sum = 0.0f;
        for (int i = cv; i < cols; i++) {
            x[i] = tl_expf(x[i] - mx);
            sum += x[i];
        }
        for (int l = 0; l < SM_LANES; l++) sum += s[l];
        float inv = 1.0f / sum;
        for (int i = 0; i < cols; i++) x[i] *= inv;
    }
}

static void softmax_rows_eval(float *a, int rows, int cols, size_t ld) {
#if defined(__x86_64__)
    if (tl_isa() == TL_ISA_AVX2) {
        tl_softmax_rows_avx2(a, rows, cols, ld);
        return;
    }
#endif
    softmax_rows_eval_loop(a, rows, cols, ld);
}

/* Eval attention: the probabilities live in the thread's scratch (in its L2
 * cache) instead of the (B,H,T,T) buffer that backward needs. At the AVX-512
 * level the two products run on tl_gemm_rows_avx512 against K^T (scaled) and
 * V copied into zero-padded panels once per head: OpenBLAS repacked Q, K, P
 * and V at every call, and these shapes (K = 60, N = 60 for lvvit_t) are
 * where it was slowest (about 65 GFLOP/s against 140 for the MLP). At the
 * AVX2 level the training path's kernels (att_head_avx2) with the scratch as
 * the probabilities. */
static void att_fwd_eval_part(void *arg, int tid, int nt) {
    att_job *j = arg;
    int T = j->T, D = j->D, hd = D / j->H, D3 = 3 * D;
    int Tp = (T + 15) & ~15, hp = (hd + 15) & ~15;
    float scale = 1.0f / sqrtf((float)hd);
    float *att = j->scratch + (size_t)tid * att_per_thread(T, hd);
    float *kt = att + (size_t)T * Tp, *vp = kt + (size_t)hd * Tp, *o = vp + (size_t)T * hp;
    int fast = tl_isa() == TL_ISA_AVX512;
    size_t lo, hi;
    tl_split((size_t)j->B * j->H, tid, nt, &lo, &hi);
    for (size_t bh = lo; bh < hi; bh++) {
        int b = (int)(bh / (size_t)j->H), h = (int)(bh % (size_t)j->H);
        const float *q = j->qkv + (size_t)b * T * D3 + h * hd, *k = q + D, *v = q + 2 * D;
        float *out = j->out + (size_t)b * T * D + h * hd;
#if defined(__x86_64__)
        if (att_avx2(hd)) {
            att_head_avx2(out, (size_t)D, att, q, k, v, T, hd, (size_t)D3);
            continue;
        }
#endif
        if (!fast) {
            tl_sgemm(0, 1, T, T, hd, scale, q, D3, k, D3, 0.0f, att, T);
            softmax_rows_eval(att, T, T, (size_t)T);
            tl_sgemm(0, 0, T, hd, T, 1.0f, att, T, v, D3, 0.0f, out, D);
            continue;
        }
        for (int t = 0; t < T; t++) {
            const float *kr = k + (size_t)t * D3, *vr = v + (size_t)t * D3;
            float *vd = vp + (size_t)t * hp;
            for (int d = 0; d < hd; d++) kt[(size_t)d * Tp + t] = scale * kr[d];
            for (int d = 0; d < hd; d++) vd[d] = vr[d];
            for (int d = hd; d < hp; d++) vd[d] = 0.0f;
        }
        for (int d = 0; d < hd; d++)
            for (int t = T; t < Tp; t++) kt[(size_t)d * Tp + t] = 0.0f;
        tl_gemm_rows_avx512(att, (size_t)Tp, q, (size_t)D3, hd, kt, (size_t)Tp, T, Tp); /* (T,Tp) */
        softmax_rows_eval(att, T, T, (size_t)Tp);
        tl_gemm_rows_avx512(o, (size_t)hp, att, (size_t)Tp, T, vp, (size_t)hp, T, hp);   /* (T,hp) */
        for (int t = 0; t < T; t++) memcpy(out + (size_t)t * D, o + (size_t)t * hp, sizeof(float) * (size_t)hd);
    }
}

void tl_attention_forward_eval(tl_pool *p, float *out, const float *qkv, int B, int T, int D, int H,
                               float *scratch) {
    att_job j = {.out = out, .qkv = qkv, .B = B, .T = T, .D = D, .H = H, .scratch = scratch};
    tl_pool_run(p, att_fwd_eval_part, &j);
}

static void att_bwd_part(void *arg, int tid, int nt) {
    att_job *j = arg;
    int T = j->T, D = j->D, hd = D / j->H, D3 = 3 * D;
    float scale = 1.0f / sqrtf((float)hd);
    float *dp = j->scratch + (size_t)tid * T * T;
    size_t lo, hi;
    tl_split((size_t)j->B * j->H, tid, nt, &lo, &hi);
    int fast = 0; /* the same four products on gemm_avx2.c's kernels, in place in qkv and dqkv */
#if defined(__x86_64__)
    fast = att_avx2(hd);
#endif
    (void)fast; /* read only on x86-64 */
    for (size_t bh = lo; bh < hi; bh++) {
        int b = (int)(bh / (size_t)j->H), h = (int)(bh % (size_t)j->H);
        size_t qoff = (size_t)b * T * D3 + h * hd;
        const float *q = j->qkv + qoff, *k = q + D, *v = q + 2 * D;
        float *dq = j->dqkv + qoff, *dk = dq + D, *dv = dq + 2 * D;
        const float *att = j->attc + bh * (size_t)T * T;
        const float *dout = j->dout + (size_t)b * T * D + h * hd;
#if defined(__x86_64__)
        if (fast) {
            tl_gemm_nt_avx2(dp, (size_t)T, dout, (size_t)D, hd, v, (size_t)D3, T, T, 1.0f);   /* dP = dO V^T */
            tl_gemm_tn_avx2(dv, (size_t)D3, att, (size_t)T, T, dout, (size_t)D, T, hd, 1.0f); /* dV = P^T dO */
            softmax_backward_rows(dp, att, T, T);                                           /* dS */
            tl_gemm_rows_avx2(dq, (size_t)D3, dp, (size_t)T, T, k, (size_t)D3, T, hd, scale); /* dQ = s dS K */
            tl_gemm_tn_avx2(dk, (size_t)D3, dp, (size_t)T, T, q, (size_t)D3, T, hd, scale);   /* dK = s dS^T Q */
            continue;
        }
#endif
        tl_sgemm(0, 1, T, T, hd, 1.0f, dout, D, v, D3, 0.0f, dp, T);        /* dP = dO V^T */
        tl_sgemm(1, 0, T, hd, T, 1.0f, att, T, dout, D, 0.0f, dv, D3);      /* dV = P^T dO */
        softmax_backward_rows(dp, att, T, T);                              /* dS = P (dP - <dP,P>) */
        tl_sgemm(0, 0, T, hd, T, scale, dp, T, k, D3, 0.0f, dq, D3);        /* dQ = s dS K */
        tl_sgemm(1, 0, T, hd, T, scale, dp, T, q, D3, 0.0f, dk, D3);        /* dK = s dS^T Q */
    }
}

void tl_attention_backward(tl_pool *p, float *dqkv, const float *dout, const float *qkv, const float *att, int B,
                           int T, int D, int H, float *scratch) {
    att_job j = {.dqkv = dqkv, .dout = dout, .qkv = qkv, .attc = att, .B = B, .T = T, .D = D, .H = H,
                 .scratch = scratch};
    tl_pool_run(p, att_bwd_part, &j);
}

/* ---- GELU (exact, erf) ---- */
typedef struct {
    float *out;
    const float *x, *dout;
    size_t n;
} gelu_job;

/* The plain loops (vectorised at the AVX-512 level); the AVX2 level runs
 * elementwise_avx2.c's kernels instead (gelu_fwd_part, gelu_bwd_part). */
TL_VEC_FN(gelu_fwd_loop, (float *out, const float *x, size_t n), (out, x, n)) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + tl_erff(v * (float)M_SQRT1_2));
    }
}

TL_VEC_FN(gelu_bwd_loop, (float *dx, const float *x, const float *dout, size_t n), (dx, x, dout, n)) {
    const float k = 0.3989422804014327f; /* 1/sqrt(2 pi) */
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + tl_erff(v * (float)M_SQRT1_2));
        float pdf = k * tl_expf(-0.5f * v * v);
        dx[i] = dout[i] * (cdf + v * pdf);
    }
}

static void gelu_fwd_part(void *arg, int tid, int nt) {
    gelu_job *j = arg;
    size_t lo, hi;
    tl_split(j->n, tid, nt, &lo, &hi);
#if defined(__x86_64__)
    if (tl_isa() == TL_ISA_AVX2) {
        tl_gelu_forward_avx2(j->out + lo, j->x + lo, hi - lo);
        return;
    }
#endif
    gelu_fwd_loop(j->out + lo, j->x + lo, hi - lo);
}

static void gelu_bwd_part(void *arg, int tid, int nt) {
    gelu_job *j = arg;
    size_t lo, hi;
    tl_split(j->n, tid, nt, &lo, &hi);
#if defined(__x86_64__)
    if (tl_isa() == TL_ISA_AVX2) {
        tl_gelu_backward_avx2(j->out + lo, j->x + lo, j->dout + lo, hi - lo);
        return;
    }
#endif
    gelu_bwd_loop(j->out + lo, j->x + lo, j->dout + lo, hi - lo);
}

void tl_gelu_forward(tl_pool *p, float *out, const float *x, size_t n) {
    gelu_job j = {out, x, NULL, n};
    tl_pool_run(p, gelu_fwd_part, &j);
}

void tl_gelu_backward(tl_pool *p, float *dx, const float *x, const float *dout, size_t n) {
    gelu_job j = {dx, x, dout, n};
    tl_pool_run(p, gelu_bwd_part, &j);
}

/* ---- residual with drop path ---- */
typedef struct {
    float *dst;
    const float *src, *scale;
    float inv_skip;
    int B;
    size_t S;
    int accumulate;
} resid_job;

TL_VEC_FN(resid_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    resid_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->B * j->S, tid, nt, &lo, &hi);
    size_t i = lo;
    while (i < hi) {
        size_t b = i / j->S, end = (b + 1) * j->S < hi ? (b + 1) * j->S : hi;
        float k = j->inv_skip * (j->scale ? j->scale[b] : 1.0f);
        if (j->accumulate)
            for (; i < end; i++) j->dst[i] += k * j->src[i];
        else
            for (; i < end; i++) j->dst[i] = k * j->src[i];
    }
}

void tl_residual_forward(tl_pool *p, float *x, const float *branch, const float *scale, float inv_skip, int B,
                         size_t S) {
    resid_job j = {x, branch, scale, inv_skip, B, S, 1};
    tl_pool_run(p, resid_part, &j);
}

void tl_residual_backward(tl_pool *p, float *dbranch, const float *dx, const float *scale, float inv_skip, int B,
                          size_t S) {
    resid_job j = {dbranch, dx, scale, inv_skip, B, S, 0};
    tl_pool_run(p, resid_part, &j);
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void tl_drop_path_scales(float *scale, int B, float rate, uint64_t seed) {
    uint64_t s = seed;
    for (int b = 0; b < B; b++) {
        double u = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
        scale[b] = (rate <= 0.0f) ? 1.0f : (u < rate ? 0.0f : 1.0f / (1.0f - rate));
    }
}

/* ---- tokens: x = [cls; tokens] + pos ---- */
typedef struct {
    float *x, *dtokens, *dcls, *dpos;
    const float *tokens, *cls, *pos, *dx;
    int B, N, D;
} tok_job;

TL_VEC_FN(tok_fwd_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    tok_job *j = arg;
    int T = j->N + 1, D = j->D;
    size_t lo, hi;
    tl_split((size_t)j->B * T, tid, nt, &lo, &hi);
    for (size_t r = lo; r < hi; r++) {
        size_t b = r / (size_t)T, t = r % (size_t)T;
        const float *src = t == 0 ? j->cls : j->tokens + (b * j->N + t - 1) * D;
        const float *pos = j->pos + t * D;
        float *dst = j->x + r * D;
        for (int i = 0; i < D; i++) dst[i] = src[i] + pos[i];
    }
}

void tl_tokens_forward(tl_pool *p, float *x, const float *tokens, const float *cls, const float *pos, int B, int N,
                       int D) {
    tok_job j = {.x = x, .tokens = tokens, .cls = cls, .pos = pos, .B = B, .N = N, .D = D};
    tl_pool_run(p, tok_fwd_part, &j);
}

TL_VEC_FN(tok_bwd_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    tok_job *j = arg;
    int T = j->N + 1, D = j->D;
    size_t lo, hi;
    tl_split((size_t)T, tid, nt, &lo, &hi); /* each thread owns rows of pos */
    for (size_t t = lo; t < hi; t++) {
        float *dpos = j->dpos + t * D;
        for (int b = 0; b < j->B; b++) {
            const float *d = j->dx + ((size_t)b * T + t) * D;
            for (int i = 0; i < D; i++) dpos[i] += d[i];
            if (t == 0)
                for (int i = 0; i < D; i++) j->dcls[i] += d[i];
            else
                memcpy(j->dtokens + ((size_t)b * j->N + t - 1) * D, d, sizeof(float) * D);
        }
    }
}

void tl_tokens_backward(tl_pool *p, float *dtokens, float *dcls, float *dpos, const float *dx, int B, int N, int D) {
    tok_job j = {.dtokens = dtokens, .dcls = dcls, .dpos = dpos, .dx = dx, .B = B, .N = N, .D = D};
    tl_pool_run(p, tok_bwd_part, &j);
}

/* ---- MixToken ---- */
void tl_mixtoken_swap(float *x, int B, int g, int C, int r0, int c0, int r1, int c1) {
    if (r0 < 0) r0 = 0;
    if (c0 < 0) c0 = 0;
    if (r1 > g) r1 = g;
    if (c1 > g) c1 = g;
    if (r0 >= r1 || c0 >= c1) return;
    for (int i = 0; i < B / 2; i++) {
        int k = B - 1 - i;
        for (int r = r0; r < r1; r++)
            for (int c = c0; c < c1; c++) {
                float *a = x + ((size_t)i * g * g + (size_t)r * g + c) * C;
                float *b = x + ((size_t)k * g * g + (size_t)r * g + c) * C;
                for (int e = 0; e < C; e++) {
                    float t = a[e];
                    a[e] = b[e];
                    b[e] = t;
                }
            }
    }
}

float tl_mixtoken_lambda(int g, int r0, int c0, int r1, int c1) {
    if (r0 < 0) r0 = 0;
    if (c0 < 0) c0 = 0;
    if (r1 > g) r1 = g;
    if (c1 > g) c1 = g;
    if (r0 >= r1 || c0 >= c1) return 1.0f;
    return 1.0f - (float)((r1 - r0) * (c1 - c0)) / (float)(g * g);
}
