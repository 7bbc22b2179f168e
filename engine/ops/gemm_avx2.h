/*
 * gemm_avx2.h: small register-blocked AVX2 + FMA matrix products for shapes
 * where OpenBLAS spends much of its time repacking operands or in call
 * overhead (a few dozen to a few hundred rows, 8 to a few hundred columns):
 * the attention's products in training and eval (T x T scores against a
 * head's hd columns) and the Winograd products of the stem's convolutions.
 * The three forms take their operands where they lie, strided rows of qkv
 * included, so the attention copies nothing; any width is allowed, the last
 * columns loaded and stored under a mask (nothing outside an operand is
 * read or written). Callers check tl_isa() >= TL_ISA_AVX2 first (simd.h) and
 * keep another path for the generic level.
 *
 * Each output is alpha times a sum over k in order (a chain of fused
 * multiply-adds from 0), whatever the shape or the blocking, so results do
 * not depend on how rows are grouped; with alpha = 1 each output equals a
 * sequential fmaf loop bit for bit.
 *
 * Owns nothing; pure functions, safe from any thread. x86-64 only.
 */
#ifndef TL_GEMM_AVX2_H
#define TL_GEMM_AVX2_H

#include <stddef.h>

#if defined(__x86_64__)
/* Largest len tl_gemm_nt_avx2 takes (its operand b is transposed on the stack, 16 columns at a time). */
#define TL_GEMM_NT_MAX_LEN 256

/* out[r][c] = alpha * sum over k < len of a[r*lda + k] * w[k*ldw + c], r < n, c < ncols: A W. */
void tl_gemm_rows_avx2(float *out, size_t ldo, const float *a, size_t lda, int len, const float *w, size_t ldw, int n,
                       int ncols, float alpha);
/* out[r][c] = alpha * sum over k < len of a[r*lda + k] * b[c*ldb + k], r < n, c < ncols: A B^T
 * (the attention's Q K^T and dO V^T). len <= TL_GEMM_NT_MAX_LEN. */
void tl_gemm_nt_avx2(float *out, size_t ldo, const float *a, size_t lda, int len, const float *b, size_t ldb, int n,
                     int ncols, float alpha);
/* out[r][c] = alpha * sum over k < K of a[k*lda + r] * b[k*ldb + c], r < m, c < ncols: A^T B
 * (the attention's P^T dO and dS^T Q). */
void tl_gemm_tn_avx2(float *out, size_t ldo, const float *a, size_t lda, int m, const float *b, size_t ldb, int K,
                     int ncols, float alpha);
#endif

#endif
