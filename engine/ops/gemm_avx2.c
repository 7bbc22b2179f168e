/*
 * gemm_avx2.c: see gemm_avx2.h.
 *
 * Register block: up to 6 rows x 16 columns (12 accumulators, 2 vectors of
 * w, the a element broadcast into one register: 15 of the 16 ymm
 * registers). Panels of 16 columns, the last one of 8 when ncols is an odd
 * multiple of 8; the rows left after the blocks of 6 form one smaller block
 * (1 to 5 rows), so no row runs at the latency-bound speed of a lone row.
 * Each output's sum runs over k in order in every block shape.
 *
 * Owns nothing; any thread.
 */
#include "ops/gemm_avx2.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define KR 6

/* rows x (8 nv) outputs at out from rows of a and columns of w (rows, nv constants after inlining). */
static inline __attribute__((always_inline, target("avx2,fma"))) void block(float *out, size_t ldo, const float *a,
                                                                            size_t lda, int len, const float *w,
                                                                            size_t ldw, const int rows, const int nv) {
    __m256 acc[KR][2];
    for (int i = 0; i < rows; i++)
        for (int q = 0; q < nv; q++) acc[i][q] = _mm256_setzero_ps();
    for (int k = 0; k < len; k++) {
        const float *wk = w + (size_t)k * ldw;
        __m256 wv[2];
        for (int q = 0; q < nv; q++) wv[q] = _mm256_loadu_ps(wk + 8 * q);
        for (int i = 0; i < rows; i++) {
            __m256 v = _mm256_broadcast_ss(a + (size_t)i * lda + k);
            for (int q = 0; q < nv; q++) acc[i][q] = _mm256_fmadd_ps(v, wv[q], acc[i][q]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int q = 0; q < nv; q++) _mm256_storeu_ps(out + (size_t)i * ldo + 8 * q, acc[i][q]);
}

/* One panel of nv vectors over all n rows (nv a constant after inlining). */
static inline __attribute__((always_inline, target("avx2,fma"))) void panel(float *out, size_t ldo, const float *a,
                                                                            size_t lda, int len, const float *w,
                                                                            size_t ldw, int n, const int nv) {
    int r = 0;
    for (; r + KR <= n; r += KR) block(out + (size_t)r * ldo, ldo, a + (size_t)r * lda, lda, len, w, ldw, KR, nv);
    float *o = out + (size_t)r * ldo;
    const float *ar = a + (size_t)r * lda;
    switch (n - r) {
    case 5: block(o, ldo, ar, lda, len, w, ldw, 5, nv); break;
    case 4: block(o, ldo, ar, lda, len, w, ldw, 4, nv); break;
    case 3: block(o, ldo, ar, lda, len, w, ldw, 3, nv); break;
    case 2: block(o, ldo, ar, lda, len, w, ldw, 2, nv); break;
    case 1: block(o, ldo, ar, lda, len, w, ldw, 1, nv); break;
    default: break;
    }
}

__attribute__((target("avx2,fma"))) void tl_gemm_rows_avx2(float *out, size_t ldo, const float *a, size_t lda, int len,
                                                           const float *w, size_t ldw, int n, int ncols) {
    int c = 0;
    for (; c + 16 <= ncols; c += 16) panel(out + c, ldo, a, lda, len, w + c, ldw, n, 2);
    if (c + 8 <= ncols) panel(out + c, ldo, a, lda, len, w + c, ldw, n, 1);
}

#endif
