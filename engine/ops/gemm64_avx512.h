/*
 * gemm64_avx512.h: the two register-blocked AVX-512 kernels of the stem's
 * 64-channel convolutions, for conv_rows.c (the training row path) and
 * stem_eval.c (the fused eval stem): tl_gemm64_avx512 (A B) and
 * tl_gemm64_tn_acc_avx512 (A^T B, accumulated). They read 3x3 windows
 * straight from zero-padded rows, so no im2col and no packing.
 *
 * Defined here as static functions, not in a source file of their own: each
 * caller passes constant strides and lengths (lda 64 and len 192 for a 3x3
 * row, 147 for conv1), and the compiler specialises the kernels on them
 * within the caller's file, as it did when they lived in one file with their
 * callers. Only call when tl_isa() == TL_ISA_AVX512 (core/simd.h); the AVX2
 * counterparts are in gemm_stem_avx2.h. Pure functions; any thread.
 */
#ifndef TL_GEMM64_AVX512_H
#define TL_GEMM64_AVX512_H

#include <stddef.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define STEM_KR 7    /* output pixels per register block of the AVX-512 kernel */

/* The register block of both kernels: acc[i][0..3] += a[i*astride] * w[0..63]
 * for the STEM_KR rows i (4 weight vectors loaded, each a element broadcast). */
static inline __attribute__((always_inline, target("avx512f,fma"))) void fma_block(__m512 acc[STEM_KR][4],
                                                                                   const float *w, const float *a,
                                                                                   size_t astride) {
    __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32),
           w3 = _mm512_loadu_ps(w + 48);
    for (int i = 0; i < STEM_KR; i++) {
        __m512 v = _mm512_set1_ps(a[(size_t)i * astride]);
        acc[i][0] = _mm512_fmadd_ps(v, w0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(v, w1, acc[i][1]);
        acc[i][2] = _mm512_fmadd_ps(v, w2, acc[i][2]);
        acc[i][3] = _mm512_fmadd_ps(v, w3, acc[i][3]);
    }
}

/* out (n,64) = sum over segments s of A_s (n,len) @ W_s (len,64), where row x
 * of A_s starts at a[s] + x*lda and W_s = w + s*len*64. A 3x3 convolution of
 * 64 channels is three segments (its padded input rows, lda = 64, len = 192),
 * conv1 one (its im2col matrix, lda = len = 147). Register block: STEM_KR
 * pixels x 64 channels = 28 accumulators, 4 weight vectors, the input
 * broadcast from memory; no packing, no im2col for the 3x3 convolutions.
 * Each output is summed over the same k in the same order whatever n, the
 * block or the thread, so results do not depend on the batch or the split. */
__attribute__((target("avx512f,fma"), unused)) static void tl_gemm64_avx512(float *out /*(n,64)*/, const float *const *a,
                                                                        int nseg, int lda, int len,
                                                                        const float *w /*(nseg*len,64)*/, int n) {
    int x = 0;
    for (; x + STEM_KR <= n; x += STEM_KR) {
        __m512 acc[STEM_KR][4];
        for (int r = 0; r < STEM_KR; r++)
            for (int q = 0; q < 4; q++) acc[r][q] = _mm512_setzero_ps();
        for (int sg = 0; sg < nseg; sg++) {
            const float *s = a[sg] + (size_t)x * lda;
            const float *ws = w + (size_t)sg * len * 64;
            for (int k = 0; k < len; k++) fma_block(acc, ws + (size_t)k * 64, s + k, (size_t)lda);
        }
        for (int r = 0; r < STEM_KR; r++)
            for (int q = 0; q < 4; q++) _mm512_storeu_ps(out + (size_t)(x + r) * 64 + q * 16, acc[r][q]);
    }
    for (; x < n; x++) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int sg = 0; sg < nseg; sg++) {
            const float *s = a[sg] + (size_t)x * lda;
            const float *ws = w + (size_t)sg * len * 64;
            for (int k = 0; k < len; k++) {
                __m512 v = _mm512_set1_ps(s[k]);
                for (int q = 0; q < 4; q++) acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(ws + (size_t)k * 64 + q * 16), acc[q]);
            }
        }
        for (int q = 0; q < 4; q++) _mm512_storeu_ps(out + (size_t)x * 64 + q * 16, acc[q]);
    }
}

/* out (m,64) += sum over k < K of a[k*ldk + r] * b[k*64 + :] for each row r:
 * A^T B with A's rows r contiguous. The weight gradient of a 3x3 convolution
 * row: r = (kx, ci) of one ky, k = the row's pixels, A = the padded input row
 * (ldk = 64), B = the output gradient row. */
__attribute__((target("avx512f,fma"), unused)) static void tl_gemm64_tn_acc_avx512(float *out /*(m,64)*/, const float *a,
                                                                         int ldk, int m, const float *b /*(K,64)*/,
                                                                         int K) {
    int r = 0;
    for (; r + STEM_KR <= m; r += STEM_KR) {
        __m512 acc[STEM_KR][4];
        for (int i = 0; i < STEM_KR; i++)
            for (int q = 0; q < 4; q++) acc[i][q] = _mm512_loadu_ps(out + (size_t)(r + i) * 64 + q * 16);
        for (int k = 0; k < K; k++) fma_block(acc, b + (size_t)k * 64, a + (size_t)k * ldk + r, 1);
        for (int i = 0; i < STEM_KR; i++)
            for (int q = 0; q < 4; q++) _mm512_storeu_ps(out + (size_t)(r + i) * 64 + q * 16, acc[i][q]);
    }
    for (; r < m; r++) {
        __m512 acc[4];
        for (int q = 0; q < 4; q++) acc[q] = _mm512_loadu_ps(out + (size_t)r * 64 + q * 16);
        for (int k = 0; k < K; k++) {
            __m512 v = _mm512_set1_ps(a[(size_t)k * ldk + r]);
            for (int q = 0; q < 4; q++) acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(b + (size_t)k * 64 + q * 16), acc[q]);
        }
        for (int q = 0; q < 4; q++) _mm512_storeu_ps(out + (size_t)r * 64 + q * 16, acc[q]);
    }
}

#endif

#endif
