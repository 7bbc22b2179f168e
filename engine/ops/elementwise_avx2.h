/*
 * elementwise_avx2.h: AVX2 + FMA kernels of the elementwise ops whose plain C
 * loops the compiler vectorises for AVX-512 but not for AVX2 (exp and erf
 * behind clamps and blends: see core/simd.h): exact (erf) GELU and its
 * gradient, and the row softmax of the attention. transformer.c calls them
 * at the AVX2 level (tl_isa() == TL_ISA_AVX2) and its plain loops at the
 * others. And the AdamW update, whose plain loop stays scalar at every level
 * (sqrtf sets errno, so GCC keeps it a call): adamw.c runs this kernel at the
 * AVX2 and the AVX-512 levels.
 *
 * Owns nothing; pure functions on the caller's buffers, any thread. x86-64
 * only. Results equal the plain loops' up to float rounding (the same
 * formulas, tl_expf_avx2 and tl_erff_avx2; sums in 8 lanes).
 */
#ifndef TL_ELEMENTWISE_AVX2_H
#define TL_ELEMENTWISE_AVX2_H

#include <stddef.h>

#if defined(__x86_64__)
/* out = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); out may alias x. */
void tl_gelu_forward_avx2(float *out /*(n)*/, const float *x /*(n)*/, size_t n);
/* dx = dout * (Phi(x) + x phi(x)); dx may alias dout. */
void tl_gelu_backward_avx2(float *dx /*(n)*/, const float *x /*(n)*/, const float *dout /*(n)*/, size_t n);
/* Each of rows rows (ld floats apart) of cols values: x = exp(x - max) / sum, in place. */
void tl_softmax_rows_avx2(float *a /*(rows,ld)*/, int rows, int cols, size_t ld);
/* AdamW over n elements, as adamw.c's loop: p = p*decay - step * m' / (sqrt(v')/bc2 + eps) with
 * m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2 (m, v updated in place). */
void tl_adamw_avx2(float *p /*(n)*/, float *m /*(n)*/, float *v /*(n)*/, const float *g /*(n)*/, size_t n, float decay,
                   float b1, float b2, float eps, float step, float bc2);
#endif

#endif
