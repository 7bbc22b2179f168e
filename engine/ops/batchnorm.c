/*
 * batchnorm.c: BatchNorm (+ReLU) of the stem over NHWC rows in training and
 * evaluation (tl_bn_forward/backward): x is (M,C), a channel is a column, so
 * statistics vectorise across channels.
 *
 * Owns nothing; scratch comes from the caller. Rows are split over the
 * pool's threads; per-thread column partials are summed in thread order, so
 * results are deterministic for a given thread count.
 */
#include "ops/ops.h"
#include "core/simd.h"

#include <math.h>
#include <string.h>

typedef struct {
    float *y, *mean, *rstd, *dx, *dgamma, *dbeta;
    const float *x, *dy, *yv, *gamma, *beta, *cmean, *crstd;
    float *run_mean, *run_var;
    int C;
    size_t M;
    int relu;
    double *part; /* nthreads x 2C */
    float *coef;  /* 2C (scale, shift) or 3C (backward constants) */
} bn_job;

size_t tl_bn_scratch(int nthreads, int C) { return (size_t)nthreads * 6 * C + 4 * (size_t)C; }

/* Column sums are accumulated in float over blocks of BN_BLOCK rows and in
 * double across blocks: vector speed, and no precision lost over 10^5+ rows. */
#define BN_BLOCK 256

TL_VEC_FN(bn_sum_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    double *s = j->part + (size_t)tid * 2 * C;
    float *f = (float *)(s + C); /* the second half of this thread's partials is free here */
    memset(s, 0, sizeof(double) * (size_t)C);
    for (size_t r0 = lo; r0 < hi; r0 += BN_BLOCK) {
        size_t r1 = r0 + BN_BLOCK < hi ? r0 + BN_BLOCK : hi;
        memset(f, 0, sizeof(float) * (size_t)C);
        for (size_t r = r0; r < r1; r++) {
            const float *x = j->x + r * C;
            for (int c = 0; c < C; c++) f[c] += x[c];
        }
        for (int c = 0; c < C; c++) s[c] += f[c];
    }
}

TL_VEC_FN(bn_var_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    double *ss = j->part + (size_t)tid * 2 * C + C;
    float *f = (float *)(j->part + (size_t)tid * 2 * C); /* sums were consumed already */
    memset(ss, 0, sizeof(double) * (size_t)C);
    for (size_t r0 = lo; r0 < hi; r0 += BN_BLOCK) {
        size_t r1 = r0 + BN_BLOCK < hi ? r0 + BN_BLOCK : hi;
        memset(f, 0, sizeof(float) * (size_t)C);
        for (size_t r = r0; r < r1; r++) {
            const float *x = j->x + r * C;
            for (int c = 0; c < C; c++) {
                float d = x[c] - j->mean[c];
                f[c] += d * d;
            }
        }
        for (int c = 0; c < C; c++) ss[c] += f[c];
    }
}

TL_VEC_FN(bn_apply_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    const float *a = j->coef, *b = j->coef + C;
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->x + r * C;
        float *y = j->y + r * C;
        if (j->relu)
            for (int c = 0; c < C; c++) {
                float v = x[c] * a[c] + b[c];
                y[c] = v > 0.0f ? v : 0.0f;
            }
        else
            for (int c = 0; c < C; c++) y[c] = x[c] * a[c] + b[c];
    }
}

void tl_bn_forward(tl_pool *p, float *y, float *mean, float *rstd, const float *x, const float *gamma,
                   const float *beta, float *run_mean, float *run_var, int C, size_t M, int train, float momentum,
                   float eps, int relu, float *scratch) {
    int nt = tl_pool_size(p);
    bn_job j = {.y = y, .mean = mean, .rstd = rstd, .x = x, .gamma = gamma, .beta = beta, .run_mean = run_mean,
                .run_var = run_var, .C = C, .M = M, .relu = relu, .part = (double *)scratch,
                .coef = scratch + (size_t)nt * 4 * C};
    if (train) {
        tl_pool_run(p, bn_sum_part, &j);
        for (int c = 0; c < C; c++) {
            double s = 0.0;
            for (int t = 0; t < nt; t++) s += j.part[(size_t)t * 2 * C + c];
            mean[c] = (float)(s / (double)M);
        }
        tl_pool_run(p, bn_var_part, &j);
        for (int c = 0; c < C; c++) {
            double ss = 0.0;
            for (int t = 0; t < nt; t++) ss += j.part[(size_t)t * 2 * C + C + c];
            double var = ss / (double)M, unbiased = M > 1 ? ss / (double)(M - 1) : var;
            rstd[c] = (float)(1.0 / sqrt(var + eps));
            run_mean[c] = (float)((1.0 - momentum) * run_mean[c] + momentum * mean[c]);
            run_var[c] = (float)((1.0 - momentum) * run_var[c] + momentum * unbiased);
        }
    } else {
        for (int c = 0; c < C; c++) {
            mean[c] = run_mean[c];
            rstd[c] = 1.0f / sqrtf(run_var[c] + eps);
        }
    }
    for (int c = 0; c < C; c++) {
        j.coef[c] = gamma[c] * rstd[c];
        j.coef[C + c] = beta[c] - mean[c] * j.coef[c];
    }
    tl_pool_run(p, bn_apply_part, &j);
}

TL_VEC_FN(bn_bsum_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    double *sdy = j->part + (size_t)tid * 2 * C, *sdyx = sdy + C;
    float *f = j->coef + (size_t)3 * C + (size_t)tid * 2 * C, *fx = f + C; /* per-thread block sums */
    memset(sdy, 0, sizeof(double) * 2 * (size_t)C);
    for (size_t r0 = lo; r0 < hi; r0 += BN_BLOCK) {
        size_t r1 = r0 + BN_BLOCK < hi ? r0 + BN_BLOCK : hi;
        memset(f, 0, sizeof(float) * 2 * (size_t)C);
        for (size_t r = r0; r < r1; r++) {
            const float *x = j->x + r * C, *dy = j->dy + r * C, *y = j->yv + r * C;
            for (int c = 0; c < C; c++) {
                float g = (j->relu && y[c] <= 0.0f) ? 0.0f : dy[c];
                f[c] += g;
                fx[c] += g * (x[c] - j->cmean[c]);
            }
        }
        for (int c = 0; c < C; c++) {
            sdy[c] += f[c];
            sdyx[c] += fx[c];
        }
    }
}

TL_VEC_FN(bn_bapply_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    const float *k = j->coef, *mdy = j->coef + C, *mdyx = j->coef + 2 * C;
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->x + r * C, *dy = j->dy + r * C, *y = j->yv + r * C;
        float *dx = j->dx + r * C;
        for (int c = 0; c < C; c++) {
            float g = (j->relu && y[c] <= 0.0f) ? 0.0f : dy[c];
            dx[c] = k[c] * (g - mdy[c] - (x[c] - j->cmean[c]) * mdyx[c]);
        }
    }
}

void tl_bn_backward(tl_pool *p, float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                    const float *y, const float *mean, const float *rstd, const float *gamma, int C, size_t M,
                    int relu, float *scratch) {
    int nt = tl_pool_size(p);
    bn_job j = {.dx = dx, .dy = dy, .x = x, .yv = y, .cmean = mean, .crstd = rstd, .gamma = gamma, .C = C, .M = M,
                .relu = relu, .part = (double *)scratch, .coef = scratch + (size_t)nt * 4 * C};
    tl_pool_run(p, bn_bsum_part, &j);
    float inv = 1.0f / (float)M;
    for (int c = 0; c < C; c++) {
        double sdy = 0.0, sdyx = 0.0;
        for (int t = 0; t < nt; t++) {
            sdy += j.part[(size_t)t * 2 * C + c];
            sdyx += j.part[(size_t)t * 2 * C + C + c];
        }
        float db = (float)sdy, dg = (float)(sdyx * rstd[c]);
        dbeta[c] += db;
        dgamma[c] += dg;
        j.coef[c] = gamma[c] * rstd[c];
        j.coef[C + c] = db * inv;
        j.coef[2 * C + c] = dg * inv * rstd[c];
    }
    tl_pool_run(p, bn_bapply_part, &j);
}
