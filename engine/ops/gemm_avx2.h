/*
 * gemm_avx2.h: the AVX2 + FMA counterpart of gemm_avx512.h: a small
 * register-blocked matrix product for shapes where OpenBLAS spends much of
 * its time repacking operands (a few hundred rows, 8 to 208 output columns):
 * the eval attention's scores and outputs and the Winograd products of the
 * stem's convolutions. Callers check tl_isa() >= TL_ISA_AVX2 first (simd.h)
 * and keep another path for the generic level.
 *
 * Owns nothing; pure functions, safe from any thread. x86-64 only.
 */
#ifndef TL_GEMM_AVX2_H
#define TL_GEMM_AVX2_H

#include <stddef.h>

#if defined(__x86_64__)
/* out[r][c] = sum over k < len of a[r*lda + k] * w[k*ldw + c], for r < n and
 * c < ncols (a multiple of 8); out's rows are ldo apart. Each output is summed
 * over k in order whatever n or the register blocking, so results do not
 * depend on how rows are grouped. Only call when tl_isa() >= TL_ISA_AVX2. */
void tl_gemm_rows_avx2(float *out, size_t ldo, const float *a, size_t lda, int len, const float *w, size_t ldw, int n,
                       int ncols);
#endif

#endif
