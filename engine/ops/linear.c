/*
 * linear.c: GEMM split over the pool, and the linear layer forward/backward.
 *
 * Owns nothing. Each call splits its output over the pool's threads and every
 * thread calls single-threaded sgemm on its own block, so BLAS never starts
 * threads of its own. Partitioning depends only on the sizes and the number
 * of threads, so results are bit-identical run to run.
 */
#include "core/blas.h"
#include "ops/ops.h"
#include "core/simd.h"

#include <string.h>

/* Below this many multiply-adds a GEMM is not worth splitting. */
#define TL_GEMM_SPLIT_MIN (1 << 18)

typedef struct {
    int tA, tB, M, N, K;
    float alpha, beta;
    const float *A, *B;
    float *C;
    int lda, ldb, ldc;
    int split_m;
} gemm_job;

static void gemm_part(void *arg, int tid, int nt) {
    gemm_job *j = arg;
    size_t lo, hi;
    if (j->split_m) {
        tl_split((size_t)j->M, tid, nt, &lo, &hi);
        if (hi <= lo) return;
        const float *A = j->tA ? j->A + lo : j->A + lo * (size_t)j->lda;
        tl_sgemm(j->tA, j->tB, (int)(hi - lo), j->N, j->K, j->alpha, A, j->lda, j->B, j->ldb, j->beta,
                 j->C + lo * (size_t)j->ldc, j->ldc);
    } else {
        tl_split((size_t)j->N, tid, nt, &lo, &hi);
        if (hi <= lo) return;
        const float *B = j->tB ? j->B + lo * (size_t)j->ldb : j->B + lo;
        tl_sgemm(j->tA, j->tB, j->M, (int)(hi - lo), j->K, j->alpha, j->A, j->lda, B, j->ldb, j->beta, j->C + lo,
                 j->ldc);
    }
}

void tl_gemm(tl_pool *p, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    int nt = tl_pool_size(p);
    if (nt == 1 || (double)M * N * K < TL_GEMM_SPLIT_MIN) {
        tl_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    gemm_job j = {transA, transB, M, N, K, alpha, beta, A, B, C, lda, ldb, ldc, M >= N};
    tl_pool_run(p, gemm_part, &j);
}

/* ---- linear forward: rows split over threads, bias added while hot ----
 * With few rows (one image at inference: 197 tokens) the output columns are
 * split instead: OpenBLAS packs all of its B operand, the weights, at every
 * call, so a row split has every thread pack the whole weight matrix for a
 * few rows of work; a column split packs each weight once, and only the
 * small A twice (measured at the AVX2 level: about 15% off an lvvit_t
 * image's latency on 2 threads). */
#define TL_LINEAR_FEW_ROWS 512
typedef struct {
    float *out;
    int ldo;
    const float *in;
    int ldi;
    const float *w, *b;
    int M, K, N;
    int split_n;
} linear_fwd_job;

TL_VEC_FN(linear_fwd_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    linear_fwd_job *j = arg;
    size_t lo, hi;
    if (j->split_n) {
        size_t units = (size_t)(j->N + 15) / 16, ulo, uhi; /* whole 16-column panels */
        tl_split(units, tid, nt, &ulo, &uhi);
        lo = ulo * 16, hi = uhi * 16 < (size_t)j->N ? uhi * 16 : (size_t)j->N;
        if (hi <= lo) return;
        tl_sgemm(0, 1, j->M, (int)(hi - lo), j->K, 1.0f, j->in, j->ldi, j->w + lo * (size_t)j->K, j->K, 0.0f,
                 j->out + lo, j->ldo);
        if (!j->b) return;
        for (int r = 0; r < j->M; r++) {
            float *o = j->out + (size_t)r * j->ldo;
            for (size_t n = lo; n < hi; n++) o[n] += j->b[n];
        }
        return;
    }
    tl_split((size_t)j->M, tid, nt, &lo, &hi);
    if (hi <= lo) return;
    float *out = j->out + lo * (size_t)j->ldo;
    tl_sgemm(0, 1, (int)(hi - lo), j->N, j->K, 1.0f, j->in + lo * (size_t)j->ldi, j->ldi, j->w, j->K, 0.0f, out,
             j->ldo);
    if (!j->b) return;
    for (size_t r = 0; r < hi - lo; r++) {
        float *o = out + r * (size_t)j->ldo;
        for (int n = 0; n < j->N; n++) o[n] += j->b[n];
    }
}

void tl_linear_forward(tl_pool *p, float *out, int ldo, const float *in, int ldi, const float *w, const float *b,
                       int M, int K, int N) {
    if (M <= 0) return;
    int nt = tl_pool_size(p);
    linear_fwd_job j = {out, ldo, in, ldi, w, b, M, K, N, 0};
    if ((double)M * N * K < TL_GEMM_SPLIT_MIN || nt == 1) {
        linear_fwd_part(&j, 0, 1);
        return;
    }
    /* not at the AVX-512 level, where OpenBLAS's SkylakeX family takes small products its own way
     * and the column split was not measured */
    j.split_n = M < TL_LINEAR_FEW_ROWS && N >= 32 * nt && tl_isa() != TL_ISA_AVX512;
    if (!j.split_n && M < 2 * nt) linear_fwd_part(&j, 0, 1);
    else tl_pool_run(p, linear_fwd_part, &j);
}

/* ---- linear backward: din split by rows, dw/db split by output features ---- */
typedef struct {
    float *din, *dw, *db;
    const float *dout;
    int ldo;
    const float *in;
    int ldi;
    const float *w;
    int M, K, N;
} linear_bwd_job;

TL_VEC_FN(linear_bwd_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
    linear_bwd_job *j = arg;
    size_t lo, hi;
    if (j->din) {
        tl_split((size_t)j->M, tid, nt, &lo, &hi);
        if (hi > lo)
            tl_sgemm(0, 0, (int)(hi - lo), j->K, j->N, 1.0f, j->dout + lo * (size_t)j->ldo, j->ldo, j->w, j->K,
                     0.0f, j->din + lo * (size_t)j->ldi, j->ldi);
    }
    tl_split((size_t)j->N, tid, nt, &lo, &hi);
    if (hi <= lo) return;
    /* dw[lo:hi, :] += dout[:, lo:hi]^T in */
    tl_sgemm(1, 0, (int)(hi - lo), j->K, j->M, 1.0f, j->dout + lo, j->ldo, j->in, j->ldi, 1.0f,
             j->dw + lo * (size_t)j->K, j->K);
    if (!j->db) return;
    for (int m = 0; m < j->M; m++) {
        const float *d = j->dout + (size_t)m * j->ldo;
        for (size_t n = lo; n < hi; n++) j->db[n] += d[n];
    }
}

void tl_linear_backward(tl_pool *p, float *din, float *dw, float *db, const float *dout, int ldo, const float *in,
                        int ldi, const float *w, int M, int K, int N) {
    if (M <= 0) return;
    linear_bwd_job j = {din, dw, db, dout, ldo, in, ldi, w, M, K, N};
    if ((double)M * N * K < TL_GEMM_SPLIT_MIN)
        linear_bwd_part(&j, 0, 1);
    else
        tl_pool_run(p, linear_bwd_part, &j);
}
