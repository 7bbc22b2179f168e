/*
 * gemm_avx512.c: see gemm_avx512.h.
 *
 * Register block: 7 rows x up to 64 columns (28 accumulators, 4 vectors of w,
 * the a element broadcast from memory). Panels of 64 columns; the last panel
 * of a width that is not a multiple of 64 uses 1 to 3 vectors.
 */
#include "ops/gemm_avx512.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define KR 7

/* One panel of nv vectors (nv a constant after inlining). */
static inline __attribute__((always_inline, target("avx512f,fma"))) void panel(float *out, size_t ldo,
                                                                               const float *a, size_t lda, int len,
                                                                               const float *w, size_t ldw, int n,
                                                                               const int nv) {
    int r = 0;
    for (; r + KR <= n; r += KR) {
        __m512 acc[KR][4];
        for (int i = 0; i < KR; i++)
            for (int q = 0; q < nv; q++) acc[i][q] = _mm512_setzero_ps();
        const float *ar = a + (size_t)r * lda;
        for (int k = 0; k < len; k++) {
            const float *wk = w + (size_t)k * ldw;
            __m512 wv[4];
            for (int q = 0; q < nv; q++) wv[q] = _mm512_loadu_ps(wk + 16 * q);
            for (int i = 0; i < KR; i++) {
                __m512 v = _mm512_set1_ps(ar[(size_t)i * lda + k]);
                for (int q = 0; q < nv; q++) acc[i][q] = _mm512_fmadd_ps(v, wv[q], acc[i][q]);
            }
        }
        for (int i = 0; i < KR; i++)
            for (int q = 0; q < nv; q++) _mm512_storeu_ps(out + (size_t)(r + i) * ldo + 16 * q, acc[i][q]);
    }
    for (; r < n; r++) {
        __m512 acc[4];
        for (int q = 0; q < nv; q++) acc[q] = _mm512_setzero_ps();
        const float *ar = a + (size_t)r * lda;
        for (int k = 0; k < len; k++) {
            __m512 v = _mm512_set1_ps(ar[k]);
            for (int q = 0; q < nv; q++)
                acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(w + (size_t)k * ldw + 16 * q), acc[q]);
        }
        for (int q = 0; q < nv; q++) _mm512_storeu_ps(out + (size_t)r * ldo + 16 * q, acc[q]);
    }
}

__attribute__((target("avx512f,fma"))) void tl_gemm_rows_avx512(float *out, size_t ldo, const float *a, size_t lda,
                                                                 int len, const float *w, size_t ldw, int n,
                                                                 int ncols) {
    for (int c = 0; c < ncols; c += 64) {
        int nv = (ncols - c) / 16 < 4 ? (ncols - c) / 16 : 4;
        switch (nv) {
        case 4: panel(out + c, ldo, a, lda, len, w + c, ldw, n, 4); break;
        case 3: panel(out + c, ldo, a, lda, len, w + c, ldw, n, 3); break;
        case 2: panel(out + c, ldo, a, lda, len, w + c, ldw, n, 2); break;
        default: panel(out + c, ldo, a, lda, len, w + c, ldw, n, 1); break;
        }
    }
}

#else

void tl_gemm_rows_avx512(float *out, size_t ldo, const float *a, size_t lda, int len, const float *w, size_t ldw,
                         int n, int ncols) {
    (void)out, (void)ldo, (void)a, (void)lda, (void)len, (void)w, (void)ldw, (void)n, (void)ncols;
}

#endif
