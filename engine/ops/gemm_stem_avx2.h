/*
 * gemm_stem_avx2.h: the AVX2 + FMA counterparts of gemm64_avx512.h, the two
 * register-blocked kernels of the stem's 3x3 convolutions, for conv_rows.c
 * (the training row path) and stem_eval.c (the fused eval stem), for C = 32
 * or 64 channels (any multiple of 16): tl_gemm_stem_avx2 (A B) and
 * tl_gemm_stem_tn_acc_avx2 (A^T B, accumulated). They read 3x3 windows
 * straight from zero-padded rows, so no im2col and no packing.
 *
 * Register block: up to 6 rows x 16 channels (12 accumulators, 2 weight
 * vectors, one broadcast: 15 of the 16 ymm registers), the C channels as
 * C/16 panels of 16 inside each block of rows, so a block's inputs stay in L1
 * while the weights stream from L2. Rows left after the blocks of 6 form one
 * smaller block. Each output is summed over the same k in the same order
 * whatever n, the block or the thread (segments through out, exactly), so
 * results do not depend on the batch or the split.
 *
 * Defined here as static functions, like gemm64_avx512.h, so each caller's
 * constant strides and lengths specialise them. Only call when
 * tl_isa() >= TL_ISA_AVX2. Pure functions; any thread. x86-64 only.
 */
#ifndef TL_GEMM_STEM_AVX2_H
#define TL_GEMM_STEM_AVX2_H

#include <stddef.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define STEM_KR2 6 /* output rows per register block of the AVX2 kernels */

/* out rows [0, rows) x channels [0, 16) of one panel (rows ldc apart): acc[i][0..1] +=
 * a[i*astride + k*kstride] * w[k*ldc ..] over k < len (rows constant after inlining).
 * The accumulators start from out when acc_in, else 0. */
static inline __attribute__((always_inline, target("avx2,fma"))) void gemm_stem_avx2_block(
    float *out, size_t ldc, const float *a, size_t astride, size_t kstride, const float *w, int len, int acc_in,
    const int rows) {
    __m256 acc[STEM_KR2][2];
    for (int i = 0; i < rows; i++)
        for (int q = 0; q < 2; q++)
            acc[i][q] = acc_in ? _mm256_loadu_ps(out + (size_t)i * ldc + 8 * q) : _mm256_setzero_ps();
    for (int k = 0; k < len; k++) {
        __m256 w0 = _mm256_loadu_ps(w + (size_t)k * ldc), w1 = _mm256_loadu_ps(w + (size_t)k * ldc + 8);
        const float *ak = a + (size_t)k * kstride;
        for (int i = 0; i < rows; i++) {
            __m256 v = _mm256_broadcast_ss(ak + (size_t)i * astride);
            acc[i][0] = _mm256_fmadd_ps(v, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(v, w1, acc[i][1]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int q = 0; q < 2; q++) _mm256_storeu_ps(out + (size_t)i * ldc + 8 * q, acc[i][q]);
}

/* A block of rows over the C/16 panels and the segments (rows constant after inlining). */
static inline __attribute__((always_inline, target("avx2,fma"))) void gemm_stem_avx2_rows(
    float *out, const float *const *a, int nseg, int lda, int len, const float *w, int x, const int C, const int rows) {
    for (int p = 0; p < C; p += 16)
        for (int sg = 0; sg < nseg; sg++)
            gemm_stem_avx2_block(out + (size_t)x * C + p, (size_t)C, a[sg] + (size_t)x * lda, (size_t)lda, 1,
                                 w + (size_t)sg * len * C + p, len, sg > 0, rows);
}

/* out (n,C) = sum over segments s of A_s (n,len) @ W_s (len,C), where row x
 * of A_s starts at a[s] + x*lda and W_s = w + s*len*C: as tl_gemm64_avx512
 * for C = 64. A 3x3 convolution is three segments (its padded input rows,
 * lda = C, len = 3C), conv1 one (its im2col matrix, lda = len = 147). The
 * segments are summed in order into one accumulator (through out between
 * segments), so each output's sum runs over (s, k) in order. */
static inline __attribute__((always_inline, target("avx2,fma"))) void gemm_stem_avx2_all(
    float *out, const float *const *a, int nseg, int lda, int len, const float *w, int n, const int C) {
    int x = 0;
    for (; x + STEM_KR2 <= n; x += STEM_KR2) gemm_stem_avx2_rows(out, a, nseg, lda, len, w, x, C, STEM_KR2);
    switch (n - x) {
    case 5: gemm_stem_avx2_rows(out, a, nseg, lda, len, w, x, C, 5); break;
    case 4: gemm_stem_avx2_rows(out, a, nseg, lda, len, w, x, C, 4); break;
    case 3: gemm_stem_avx2_rows(out, a, nseg, lda, len, w, x, C, 3); break;
    case 2: gemm_stem_avx2_rows(out, a, nseg, lda, len, w, x, C, 2); break;
    case 1: gemm_stem_avx2_rows(out, a, nseg, lda, len, w, x, C, 1); break;
    default: break;
    }
}

/* out (n,C) = sum over segments s of A_s (n,len) @ W_s (len,C), where row x
 * of A_s starts at a[s] + x*lda and W_s = w + s*len*C: as tl_gemm64_avx512
 * for C = 64. A 3x3 convolution is three segments (its padded input rows,
 * lda = C, len = 3C), conv1 one (its im2col matrix, lda = len = 147). The
 * segments are summed in order into one accumulator (through out between
 * segments), so each output's sum runs over (s, k) in order. The 3x3 shapes
 * of C = 32 and 64 get code of their own (constant strides and lengths). */
__attribute__((target("avx2,fma"), unused)) static void tl_gemm_stem_avx2(float *out /*(n,C)*/, const float *const *a,
                                                                         int nseg, int lda, int len,
                                                                         const float *w /*(nseg*len,C)*/, int n,
                                                                         int C) {
    if (C == 64 && lda == 64 && len == 192) gemm_stem_avx2_all(out, a, nseg, 64, 192, w, n, 64); /* 3x3 */
    else if (C == 32 && lda == 32 && len == 96) gemm_stem_avx2_all(out, a, nseg, 32, 96, w, n, 32);
    else if (C == 64) gemm_stem_avx2_all(out, a, nseg, lda, len, w, n, 64); /* conv1 */
    else if (C == 32) gemm_stem_avx2_all(out, a, nseg, lda, len, w, n, 32);
    else gemm_stem_avx2_all(out, a, nseg, lda, len, w, n, C);
}

/* out (m,C) += sum over k < K of a[k*ldk + r] * b[k*C + :] for each row r:
 * A^T B with A's rows r contiguous, as tl_gemm64_tn_acc_avx512 for C = 64. */
static inline __attribute__((always_inline, target("avx2,fma"))) void gemm_stem_tn_acc_avx2_all(
    float *out, const float *a, int ldk, int m, const float *b, int K, const int C) {
    int r = 0;
    for (; r + STEM_KR2 <= m; r += STEM_KR2)
        for (int p = 0; p < C; p += 16)
            gemm_stem_avx2_block(out + (size_t)r * C + p, (size_t)C, a + r, 1, (size_t)ldk, b + p, K, 1, STEM_KR2);
    for (int p = 0; p < C; p += 16) {
        float *o = out + (size_t)r * C + p;
        switch (m - r) {
        case 5: gemm_stem_avx2_block(o, (size_t)C, a + r, 1, (size_t)ldk, b + p, K, 1, 5); break;
        case 4: gemm_stem_avx2_block(o, (size_t)C, a + r, 1, (size_t)ldk, b + p, K, 1, 4); break;
        case 3: gemm_stem_avx2_block(o, (size_t)C, a + r, 1, (size_t)ldk, b + p, K, 1, 3); break;
        case 2: gemm_stem_avx2_block(o, (size_t)C, a + r, 1, (size_t)ldk, b + p, K, 1, 2); break;
        case 1: gemm_stem_avx2_block(o, (size_t)C, a + r, 1, (size_t)ldk, b + p, K, 1, 1); break;
        default: break;
        }
    }
}

/* out (m,C) += sum over k < K of a[k*ldk + r] * b[k*C + :] for each row r:
 * A^T B with A's rows r contiguous, as tl_gemm64_tn_acc_avx512 for C = 64. */
__attribute__((target("avx2,fma"), unused)) static void tl_gemm_stem_tn_acc_avx2(float *out /*(m,C)*/, const float *a,
                                                                                int ldk, int m,
                                                                                const float *b /*(K,C)*/, int K,
                                                                                int C) {
    if (C == 64 && ldk == 64) gemm_stem_tn_acc_avx2_all(out, a, 64, m, b, K, 64);
    else if (C == 32 && ldk == 32) gemm_stem_tn_acc_avx2_all(out, a, 32, m, b, K, 32);
    else gemm_stem_tn_acc_avx2_all(out, a, ldk, m, b, K, C);
}

#endif

#endif
