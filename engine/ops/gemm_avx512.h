/*
 * gemm_avx512.h: small register-blocked AVX-512 matrix products for shapes
 * where OpenBLAS spends much of its time repacking operands (a few hundred
 * rows, 16 to 64 output columns per panel): the eval attention's scores and
 * outputs. Callers check tl_cpu_avx512() first and keep another path for
 * CPUs without AVX-512.
 *
 * Owns nothing; pure functions, safe from any thread.
 */
#ifndef TL_GEMM_AVX512_H
#define TL_GEMM_AVX512_H

#include <stddef.h>

/* 1 when the CPU (and the OS) run AVX-512F and FMA: computed once. */
int tl_cpu_avx512(void);

/* out[r][c] = sum over k < len of a[r*lda + k] * w[k*ldw + c], for r < n and
 * c < ncols (a multiple of 16); out's rows are ldo apart. Each output is summed
 * over k in order whatever n or the register blocking, so results do not
 * depend on how rows are grouped. Only call when tl_cpu_avx512(). */
void tl_gemm_rows_avx512(float *out, size_t ldo, const float *a, size_t lda, int len, const float *w, size_t ldw,
                         int n, int ncols);

#endif
