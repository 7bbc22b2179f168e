/*
 * gemm_avx2.c: see gemm_avx2.h.
 *
 * Register block: up to 6 rows x 16 columns (12 accumulators, 2 vectors of
 * w, the a element broadcast into one register: 15 of the 16 ymm
 * registers). The rows left after the blocks of 6 form one smaller block (1
 * to 5 rows), so no row runs at the latency-bound speed of a lone row.
 * Columns go in panels of 16; the last panel is 8 wide, or masked (lanes
 * past ncols neither loaded nor stored).
 *
 * Loop orders: A W and A B^T take panel by panel, every row block against
 * the panel (the panel, len x 16 floats, stays in L1); A B^T first copies its
 * panel of b transposed onto the stack. A^T B takes row block by row block,
 * every panel against the block (the block's strip of a, one line per k,
 * stays in L1 while b streams with whole lines used).
 *
 * Owns nothing; any thread.
 */
#include "ops/gemm_avx2.h"
#include "tokenlab/base.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define KR 6

static inline __attribute__((always_inline, target("avx2,fma"))) __m256i lanes(int m) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* rows x (8 nv) outputs: acc[i][q] = sum over k of a[i*astride + k*kstride] * w[k*ldw + 8q ..];
 * the last vector under `mask` when `masked` (rows, nv, masked constants after inlining). */
static inline __attribute__((always_inline, target("avx2,fma"))) void block(float *out, size_t ldo, const float *a,
                                                                            size_t astride, size_t kstride,
                                                                            const float *w, size_t ldw, int len,
                                                                            __m256 alpha, const int rows,
                                                                            const int nv, const int masked,
                                                                            __m256i mask) {
    __m256 acc[KR][2];
    for (int i = 0; i < rows; i++)
        for (int q = 0; q < nv; q++) acc[i][q] = _mm256_setzero_ps();
    for (int k = 0; k < len; k++) {
        const float *wk = w + (size_t)k * ldw, *ak = a + (size_t)k * kstride;
        __m256 wv[2];
        for (int q = 0; q < nv; q++)
            wv[q] = masked && q == nv - 1 ? _mm256_maskload_ps(wk + 8 * q, mask) : _mm256_loadu_ps(wk + 8 * q);
        for (int i = 0; i < rows; i++) {
            __m256 v = _mm256_broadcast_ss(ak + (size_t)i * astride);
            for (int q = 0; q < nv; q++) acc[i][q] = _mm256_fmadd_ps(v, wv[q], acc[i][q]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int q = 0; q < nv; q++) {
            __m256 r = _mm256_mul_ps(acc[i][q], alpha);
            if (masked && q == nv - 1) _mm256_maskstore_ps(out + (size_t)i * ldo + 8 * q, mask, r);
            else _mm256_storeu_ps(out + (size_t)i * ldo + 8 * q, r);
        }
}

/* One block of `rows` rows against a panel `width` (1..16) columns wide. */
static inline __attribute__((always_inline, target("avx2,fma"))) void block_panel(float *out, size_t ldo,
                                                                                  const float *a, size_t astride,
                                                                                  size_t kstride, const float *w,
                                                                                  size_t ldw, int len, __m256 alpha,
                                                                                  const int rows, int width) {
    if (width == 16) block(out, ldo, a, astride, kstride, w, ldw, len, alpha, rows, 2, 0, lanes(8));
    else if (width > 8) block(out, ldo, a, astride, kstride, w, ldw, len, alpha, rows, 2, 1, lanes(width - 8));
    else if (width == 8) block(out, ldo, a, astride, kstride, w, ldw, len, alpha, rows, 1, 0, lanes(8));
    else block(out, ldo, a, astride, kstride, w, ldw, len, alpha, rows, 1, 1, lanes(width));
}

/* Every row of a (n rows, astride apart) against one panel. */
static inline __attribute__((always_inline, target("avx2,fma"))) void panel_rows(float *out, size_t ldo,
                                                                                 const float *a, size_t astride,
                                                                                 size_t kstride, const float *w,
                                                                                 size_t ldw, int len, __m256 alpha,
                                                                                 int n, int width) {
    int r = 0;
    for (; r + KR <= n; r += KR)
        block_panel(out + (size_t)r * ldo, ldo, a + (size_t)r * astride, astride, kstride, w, ldw, len, alpha, KR,
                    width);
    float *o = out + (size_t)r * ldo;
    const float *ar = a + (size_t)r * astride;
    switch (n - r) {
    case 5: block_panel(o, ldo, ar, astride, kstride, w, ldw, len, alpha, 5, width); break;
    case 4: block_panel(o, ldo, ar, astride, kstride, w, ldw, len, alpha, 4, width); break;
    case 3: block_panel(o, ldo, ar, astride, kstride, w, ldw, len, alpha, 3, width); break;
    case 2: block_panel(o, ldo, ar, astride, kstride, w, ldw, len, alpha, 2, width); break;
    case 1: block_panel(o, ldo, ar, astride, kstride, w, ldw, len, alpha, 1, width); break;
    default: break;
    }
}

__attribute__((target("avx2,fma"))) void tl_gemm_rows_avx2(float *out, size_t ldo, const float *a, size_t lda, int len,
                                                           const float *w, size_t ldw, int n, int ncols, float alpha) {
    __m256 al = _mm256_set1_ps(alpha);
    for (int c = 0; c < ncols; c += 16)
        panel_rows(out + c, ldo, a, lda, 1, w + c, ldw, len, al, n, ncols - c < 16 ? ncols - c : 16);
}

__attribute__((target("avx2,fma"))) void tl_gemm_nt_avx2(float *out, size_t ldo, const float *a, size_t lda, int len,
                                                         const float *b, size_t ldb, int n, int ncols, float alpha) {
    float bt[TL_GEMM_NT_MAX_LEN * 16]; /* the panel of b transposed: bt[k*16 + j] = b[(c+j)*ldb + k] */
    __m256 al = _mm256_set1_ps(alpha);
    if (TL_NEVER(len > TL_GEMM_NT_MAX_LEN)) return; /* callers check the head dimension */
    for (int c = 0; c < ncols; c += 16) {
        int width = ncols - c < 16 ? ncols - c : 16;
        for (int j = 0; j < 16; j++) {
            const float *bj = b + (size_t)(c + j) * ldb;
            if (j < width)
                for (int k = 0; k < len; k++) bt[k * 16 + j] = bj[k];
            else
                for (int k = 0; k < len; k++) bt[k * 16 + j] = 0.0f;
        }
        panel_rows(out + c, ldo, a, lda, 1, bt, 16, len, al, n, width);
    }
}

/* One block of rows (constant) over every panel, for A^T B. */
static inline __attribute__((always_inline, target("avx2,fma"))) void rows_tn(float *out, size_t ldo, const float *a,
                                                                              size_t lda, const float *b, size_t ldb,
                                                                              int K, int ncols, __m256 alpha,
                                                                              const int rows) {
    for (int c = 0; c < ncols; c += 16)
        block_panel(out + c, ldo, a, 1, lda, b + c, ldb, K, alpha, rows, ncols - c < 16 ? ncols - c : 16);
}

__attribute__((target("avx2,fma"))) void tl_gemm_tn_avx2(float *out, size_t ldo, const float *a, size_t lda, int m,
                                                         const float *b, size_t ldb, int K, int ncols, float alpha) {
    __m256 al = _mm256_set1_ps(alpha);
    int r = 0;
    for (; r + KR <= m; r += KR) rows_tn(out + (size_t)r * ldo, ldo, a + r, lda, b, ldb, K, ncols, al, KR);
    float *o = out + (size_t)r * ldo;
    switch (m - r) {
    case 5: rows_tn(o, ldo, a + r, lda, b, ldb, K, ncols, al, 5); break;
    case 4: rows_tn(o, ldo, a + r, lda, b, ldb, K, ncols, al, 4); break;
    case 3: rows_tn(o, ldo, a + r, lda, b, ldb, K, ncols, al, 3); break;
    case 2: rows_tn(o, ldo, a + r, lda, b, ldb, K, ncols, al, 2); break;
    case 1: rows_tn(o, ldo, a + r, lda, b, ldb, K, ncols, al, 1); break;
    default: break;
    }
}

#endif
