/*
 * conv_internal.h: what the stem's convolution files share (conv.c,
 * conv_rows.c, winograd.c, stem_eval.c): the row path's jobs and the
 * Winograd F(2x2,3x3) transforms. (The register-blocked kernels are in
 * gemm64_avx512.h and gemm_stem_avx2.h.)
 * Internal to engine/ops; the layer's public face is ops.h.
 *
 * Owns nothing; pure functions on the caller's buffers, any thread. The
 * functions marked AVX-512 may only run when tl_isa() == TL_ISA_AVX512, the
 * _avx2 ones when tl_isa() >= TL_ISA_AVX2 (core/simd.h; their callers check
 * once per call); they exist on x86-64 only.
 */
#ifndef TL_CONV_INTERNAL_H
#define TL_CONV_INTERNAL_H

#include <stddef.h>

/* ---- conv_rows.c: the row path of a 3x3, stride 1, pad 1, C-to-C convolution ----
 * C = 64 at the AVX-512 and AVX2 levels, C = 32 at AVX2 (tl_conv_rows_ok). */

/* 1 when the row path takes a 3x3 convolution of C channels to C at kernel level isa. */
int tl_conv_rows_ok(int C, int isa);
/* Floats of row-path scratch per thread for rows of width W and C channels. */
size_t tl_conv_rows_per_thread(int W, int C);

/* The forward (or, with flipped weights, the input gradient) on the row path. */
typedef struct {
    float *out;      /* (B,H,W,C) */
    const float *in; /* (B,H,W,C) */
    const float *w;  /* (3,3,C,C) */
    const float *U;  /* (16,C,C): w in the Winograd domain */
    int B, H, W, C;
    int isa;        /* TL_ISA_AVX512 or TL_ISA_AVX2: the kernels to run */
    float *scratch; /* per thread: tl_conv_rows_per_thread floats */
} tl_conv_rows_job;

/* tl_pool_fn over a tl_conv_rows_job: row pairs (b, 2u) split over the threads; Winograd for
 * whole pairs when U is given and W is even, else row by row on tl_gemm64_avx512 or _avx2. */
void tl_conv_rows_part(void *arg, int tid, int nt);

/* The weight gradient on the row path, per thread: row pairs by Winograd
 * into its dU partial (16,C,C), other rows directly into its dW partial
 * (3,3,C,C): input window rows^T x output-gradient row. Both are zeroed
 * here and summed in thread order by the caller. */
typedef struct {
    const float *in, *dout; /* (B,H,W,C) each */
    float *parts;           /* nthreads x (3,3,C,C) */
    float *uparts;          /* nthreads x (16,C,C) */
    float *scratch;         /* per thread: tl_conv_rows_per_thread floats */
    int B, H, W, C;
    int isa; /* TL_ISA_AVX512 or TL_ISA_AVX2 */
} tl_conv_dw_rows_job;

/* tl_pool_fn over a tl_conv_dw_rows_job. */
void tl_conv_dw_rows_part(void *arg, int tid, int nt);

#if defined(__x86_64__)
/* AVX2. Output rows y (out0) and y+1 (out1), (2 tiles, C) each, of the 4 padded input rows by
 * Winograd against U (16,C,C), in chunks of tiles that keep V and M (scratch, 16 x tiles x C
 * each) in L2 with U; the fused eval stem uses it too. */
void tl_winograd_pair_avx2(float *out0, float *out1, const float *const rows[4], const float *U, float *V, float *M,
                           int tiles, int C);
/* AVX2. dU (16,C,C) += V^T Z of a row pair: the 4 padded input rows against the output-gradient
 * rows y (d0) and y+1 (d1), in the same chunks (V, Z scratch as above). */
void tl_winograd_pair_dw_avx2(float *dU, const float *const rows[4], const float *d0, const float *d1, float *V,
                              float *Z, int tiles, int C);
#endif

/* ---- winograd.c: F(2x2, 3x3) for C channels to C ---- */

/* U (16,C,C) from w (3,3,C,C) (ky,kx,in,out): U = G g G^T per (in,out). */
void tl_winograd_weights(float *U, const float *w, int C);
/* dwt (3,3,C,C) += G^T dU G per (in, out), dU (16,C,C). */
void tl_winograd_dw_accum(float *dwt, const float *dU, int C);
#if defined(__x86_64__)
/* AVX-512. V (16, nt, 64) from the 4 padded input rows: tile t covers padded columns 2t..2t+3. */
void tl_winograd_in(float *V, const float *const rows[4], int nt);
/* AVX-512. Output rows y (out0) and y+1 (out1), (W,64) each, from M (16, nt, 64). */
void tl_winograd_out(float *out0, float *out1, const float *M, int nt);
/* AVX-512. Z (16, nt, 64) = A dY A^T of the 2x2 output-gradient tiles of rows y (d0) and y+1 (d1). */
void tl_winograd_dout(float *Z, const float *d0, const float *d1, int nt);
/* The same three transforms on AVX2 + FMA, for C channels (a multiple of 8; rows and planes of C). */
void tl_winograd_in_avx2(float *V, const float *const rows[4], int nt, int C);
void tl_winograd_out_avx2(float *out0, float *out1, const float *M, int nt, int C);
void tl_winograd_dout_avx2(float *Z, const float *d0, const float *d1, int nt, int C);
#endif

#endif
