/*
 * blas.h: the engine's only door to BLAS.
 *
 * OpenBLAS is opened at run time (dlopen) after the engine has chosen its
 * kernels: at the AVX-512 kernel level (core/simd.h: the CPU and OS support
 * AVX-512 F, CD, BW, DQ, VL, and TL_ISA does not ask for less), the engine
 * sets OPENBLAS_CORETYPE=SKYLAKEX before the library initialises (also over an
 * inherited OPENBLAS_CORETYPE that names an older family, such as Haswell), so
 * the fast kernels are used on every such CPU (Debian's 0.3.21 otherwise falls
 * back to Haswell kernels on AMD Zen 4 and 5). A lower level set by TL_ISA
 * takes its own family (HASWELL for avx2, NEHALEM for generic).
 * TL_BLAS_CORETYPE, when set, is the family used, whatever the CPU. OpenBLAS is
 * kept single-threaded: the engine parallelises over its own pool.
 * Initialised once (pthread_once); read-only afterwards, so any thread may call.
 */
#ifndef TL_BLAS_H
#define TL_BLAS_H

#include <stddef.h>

int tl_blas_init(char *err, size_t errlen);
/* Single-threaded row-major sgemm: C = alpha op(A) op(B) + beta C. */
void tl_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
              int ldb, float beta, float *C, int ldc);

#endif
