/*
 * gemm_avx512.h: small register-blocked AVX-512 matrix products for shapes
 * where OpenBLAS spends much of its time repacking operands (a few hundred
 * rows, 16 to 64 output columns per panel): the eval attention's scores and
 * outputs and the Winograd products of the stem's convolutions. Callers check
 * tl_isa() == TL_ISA_AVX512 first (core/simd.h) and keep other paths for the
 * other levels (gemm_avx2.h for AVX2).
 *
 * Owns nothing; pure functions, safe from any thread.
 */
#ifndef TL_GEMM_AVX512_H
#define TL_GEMM_AVX512_H

#include <stddef.h>

/* out[r][c] = sum over k < len of a[r*lda + k] * w[k*ldw + c], for r < n and
 * c < ncols (a multiple of 16); out's rows are ldo apart. Each output is summed
 * over k in order whatever n or the register blocking, so results do not
 * depend on how rows are grouped. Only call when tl_isa() == TL_ISA_AVX512. */
void tl_gemm_rows_avx512(float *out, size_t ldo, const float *a, size_t lda, int len, const float *w, size_t ldw,
                         int n, int ncols);

#endif
