/*
 * winograd.c: Winograd F(2x2, 3x3) for 3x3 convolutions of C channels to C
 * (64 at the AVX-512 level, 32 or 64 at AVX2): the weight, input and output
 * transforms of the forward and the output-gradient and weight transforms of
 * the weight gradient. Used by the row path (conv_rows.c) and the fused eval
 * stem (stem_eval.c) for whole row pairs, on AVX-512 or AVX2 (tl_isa()). The
 * transforms of activations come in an AVX-512 version for 64 channels and
 * an AVX2 + FMA version for C channels of the same arithmetic (16 or 8
 * channels a vector); those of weights are plain C.
 *
 * Owns nothing; pure functions on the caller's buffers, any thread.
 */
#include "ops/conv_internal.h"

#include <stddef.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- Winograd F(2x2, 3x3) for a pair of output rows: each 2x2 output tile
 * from a 4x4 input tile, V = B^T d B per channel, M_xi = V_xi U_xi for the 16
 * positions xi (a (W/2 x 64) x (64 x 64) product each), Y = A^T M A: 16
 * multiplications per 4 outputs and channel pair instead of 36 (2.25x
 * fewer). Rounding differs from the direct sum by about 1e-6 relative. */

/* U (16,C,C) from w (3,3,C,C) (ky,kx,in,out): U = G g G^T per (in,out). */
void tl_winograd_weights(float *U, const float *w, int C) {
    for (int ci = 0; ci < C; ci++)
        for (int co = 0; co < C; co++) {
            float g[3][3], t[4][3];
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++) g[a][b] = w[((size_t)(a * 3 + b) * C + ci) * C + co];
            for (int b = 0; b < 3; b++) {
                t[0][b] = g[0][b];
                t[1][b] = 0.5f * (g[0][b] + g[1][b] + g[2][b]);
                t[2][b] = 0.5f * (g[0][b] - g[1][b] + g[2][b]);
                t[3][b] = g[2][b];
            }
            for (int a = 0; a < 4; a++) {
                float u[4] = {t[a][0], 0.5f * (t[a][0] + t[a][1] + t[a][2]), 0.5f * (t[a][0] - t[a][1] + t[a][2]),
                              t[a][2]};
                for (int b = 0; b < 4; b++) U[((size_t)(a * 4 + b) * C + ci) * C + co] = u[b];
            }
        }
}

#if defined(__x86_64__)
/* V (16, nt, 64) from the 4 padded input rows: tile t covers padded columns 2t..2t+3. */
__attribute__((target("avx512f,fma"))) void tl_winograd_in(float *V, const float *const rows[4], int nt) {
    size_t plane = (size_t)nt * 64;
    for (int t = 0; t < nt; t++)
        for (int q = 0; q < 64; q += 16) {
            __m512 d[4][4], e[4][4];
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < 4; c++) d[i][c] = _mm512_loadu_ps(rows[i] + (size_t)(2 * t + c) * 64 + q);
            for (int c = 0; c < 4; c++) { /* B^T d: rows */
                e[0][c] = _mm512_sub_ps(d[0][c], d[2][c]);
                e[1][c] = _mm512_add_ps(d[1][c], d[2][c]);
                e[2][c] = _mm512_sub_ps(d[2][c], d[1][c]);
                e[3][c] = _mm512_sub_ps(d[1][c], d[3][c]);
            }
            for (int i = 0; i < 4; i++) { /* (B^T d) B: columns */
                float *v = V + (size_t)(i * 4) * plane + (size_t)t * 64 + q;
                _mm512_storeu_ps(v, _mm512_sub_ps(e[i][0], e[i][2]));
                _mm512_storeu_ps(v + plane, _mm512_add_ps(e[i][1], e[i][2]));
                _mm512_storeu_ps(v + 2 * plane, _mm512_sub_ps(e[i][2], e[i][1]));
                _mm512_storeu_ps(v + 3 * plane, _mm512_sub_ps(e[i][1], e[i][3]));
            }
        }
}

/* Output rows y (out0) and y+1 (out1), (W,64) each, from M (16, nt, 64). */
__attribute__((target("avx512f,fma"))) void tl_winograd_out(float *out0, float *out1, const float *M, int nt) {
    size_t plane = (size_t)nt * 64;
    for (int t = 0; t < nt; t++)
        for (int q = 0; q < 64; q += 16) {
            __m512 m[4][4], r0[4], r1[4];
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < 4; c++) m[i][c] = _mm512_loadu_ps(M + (size_t)(i * 4 + c) * plane + (size_t)t * 64 + q);
            for (int c = 0; c < 4; c++) { /* A^T m */
                r0[c] = _mm512_add_ps(_mm512_add_ps(m[0][c], m[1][c]), m[2][c]);
                r1[c] = _mm512_sub_ps(_mm512_sub_ps(m[1][c], m[2][c]), m[3][c]);
            }
            float *o0 = out0 + (size_t)(2 * t) * 64 + q, *o1 = out1 + (size_t)(2 * t) * 64 + q;
            _mm512_storeu_ps(o0, _mm512_add_ps(_mm512_add_ps(r0[0], r0[1]), r0[2]));
            _mm512_storeu_ps(o0 + 64, _mm512_sub_ps(_mm512_sub_ps(r0[1], r0[2]), r0[3]));
            _mm512_storeu_ps(o1, _mm512_add_ps(_mm512_add_ps(r1[0], r1[1]), r1[2]));
            _mm512_storeu_ps(o1 + 64, _mm512_sub_ps(_mm512_sub_ps(r1[1], r1[2]), r1[3]));
        }
}
#endif

#if defined(__x86_64__)
/* Z (16, nt, 64) = A dY A^T of the 2x2 output-gradient tiles of rows y (d0)
 * and y+1 (d1): the weight gradient in the Winograd domain is then
 * dU_xi += V_xi^T Z_xi, and dW = G^T dU G. */
__attribute__((target("avx512f,fma"))) void tl_winograd_dout(float *Z, const float *d0, const float *d1, int nt) {
    size_t plane = (size_t)nt * 64;
    for (int t = 0; t < nt; t++)
        for (int q = 0; q < 64; q += 16) {
            __m512 g[2][2], h[4][2];
            for (int c = 0; c < 2; c++) {
                g[0][c] = _mm512_loadu_ps(d0 + (size_t)(2 * t + c) * 64 + q);
                g[1][c] = _mm512_loadu_ps(d1 + (size_t)(2 * t + c) * 64 + q);
            }
            for (int c = 0; c < 2; c++) { /* A dY */
                h[0][c] = g[0][c];
                h[1][c] = _mm512_add_ps(g[0][c], g[1][c]);
                h[2][c] = _mm512_sub_ps(g[0][c], g[1][c]);
                h[3][c] = _mm512_sub_ps(_mm512_setzero_ps(), g[1][c]);
            }
            for (int i = 0; i < 4; i++) { /* (A dY) A^T */
                float *z = Z + (size_t)(i * 4) * plane + (size_t)t * 64 + q;
                _mm512_storeu_ps(z, h[i][0]);
                _mm512_storeu_ps(z + plane, _mm512_add_ps(h[i][0], h[i][1]));
                _mm512_storeu_ps(z + 2 * plane, _mm512_sub_ps(h[i][0], h[i][1]));
                _mm512_storeu_ps(z + 3 * plane, _mm512_sub_ps(_mm512_setzero_ps(), h[i][1]));
            }
        }
}
#endif

#if defined(__x86_64__)
/* The AVX2 versions: the same sums on 8 channels a vector, for C channels (a multiple of 8). */
static inline __attribute__((always_inline, target("avx2,fma"))) void winograd_in_c(float *V, const float *const rows[4], int nt, const int C) {
    size_t plane = (size_t)nt * C;
    for (int t = 0; t < nt; t++)
        for (int q = 0; q < C; q += 8) {
            __m256 d[4][4], e[4][4];
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < 4; c++) d[i][c] = _mm256_loadu_ps(rows[i] + (size_t)(2 * t + c) * C + q);
            for (int c = 0; c < 4; c++) { /* B^T d: rows */
                e[0][c] = _mm256_sub_ps(d[0][c], d[2][c]);
                e[1][c] = _mm256_add_ps(d[1][c], d[2][c]);
                e[2][c] = _mm256_sub_ps(d[2][c], d[1][c]);
                e[3][c] = _mm256_sub_ps(d[1][c], d[3][c]);
            }
            for (int i = 0; i < 4; i++) { /* (B^T d) B: columns */
                float *v = V + (size_t)(i * 4) * plane + (size_t)t * C + q;
                _mm256_storeu_ps(v, _mm256_sub_ps(e[i][0], e[i][2]));
                _mm256_storeu_ps(v + plane, _mm256_add_ps(e[i][1], e[i][2]));
                _mm256_storeu_ps(v + 2 * plane, _mm256_sub_ps(e[i][2], e[i][1]));
                _mm256_storeu_ps(v + 3 * plane, _mm256_sub_ps(e[i][1], e[i][3]));
            }
        }
}

static inline __attribute__((always_inline, target("avx2,fma"))) void winograd_out_c(float *out0, float *out1, const float *M, int nt, const int C) {
    size_t plane = (size_t)nt * C;
    for (int t = 0; t < nt; t++)
        for (int q = 0; q < C; q += 8) {
            __m256 m[4][4], r0[4], r1[4];
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < 4; c++) m[i][c] = _mm256_loadu_ps(M + (size_t)(i * 4 + c) * plane + (size_t)t * C + q);
            for (int c = 0; c < 4; c++) { /* A^T m */
                r0[c] = _mm256_add_ps(_mm256_add_ps(m[0][c], m[1][c]), m[2][c]);
                r1[c] = _mm256_sub_ps(_mm256_sub_ps(m[1][c], m[2][c]), m[3][c]);
            }
            float *o0 = out0 + (size_t)(2 * t) * C + q, *o1 = out1 + (size_t)(2 * t) * C + q;
            _mm256_storeu_ps(o0, _mm256_add_ps(_mm256_add_ps(r0[0], r0[1]), r0[2]));
            _mm256_storeu_ps(o0 + C, _mm256_sub_ps(_mm256_sub_ps(r0[1], r0[2]), r0[3]));
            _mm256_storeu_ps(o1, _mm256_add_ps(_mm256_add_ps(r1[0], r1[1]), r1[2]));
            _mm256_storeu_ps(o1 + C, _mm256_sub_ps(_mm256_sub_ps(r1[1], r1[2]), r1[3]));
        }
}

static inline __attribute__((always_inline, target("avx2,fma"))) void winograd_dout_c(float *Z, const float *d0, const float *d1, int nt, const int C) {
    size_t plane = (size_t)nt * C;
    for (int t = 0; t < nt; t++)
        for (int q = 0; q < C; q += 8) {
            __m256 g[2][2], h[4][2];
            for (int c = 0; c < 2; c++) {
                g[0][c] = _mm256_loadu_ps(d0 + (size_t)(2 * t + c) * C + q);
                g[1][c] = _mm256_loadu_ps(d1 + (size_t)(2 * t + c) * C + q);
            }
            for (int c = 0; c < 2; c++) { /* A dY */
                h[0][c] = g[0][c];
                h[1][c] = _mm256_add_ps(g[0][c], g[1][c]);
                h[2][c] = _mm256_sub_ps(g[0][c], g[1][c]);
                h[3][c] = _mm256_sub_ps(_mm256_setzero_ps(), g[1][c]);
            }
            for (int i = 0; i < 4; i++) { /* (A dY) A^T */
                float *z = Z + (size_t)(i * 4) * plane + (size_t)t * C + q;
                _mm256_storeu_ps(z, h[i][0]);
                _mm256_storeu_ps(z + plane, _mm256_add_ps(h[i][0], h[i][1]));
                _mm256_storeu_ps(z + 2 * plane, _mm256_sub_ps(h[i][0], h[i][1]));
                _mm256_storeu_ps(z + 3 * plane, _mm256_sub_ps(_mm256_setzero_ps(), h[i][1]));
            }
        }
}

/* The entry points: C = 32 and 64 get code of their own (constant strides). */
__attribute__((target("avx2,fma"))) void tl_winograd_in_avx2(float *V, const float *const rows[4], int nt, int C) {
    if (C == 64) winograd_in_c(V, rows, nt, 64);
    else if (C == 32) winograd_in_c(V, rows, nt, 32);
    else winograd_in_c(V, rows, nt, C);
}

__attribute__((target("avx2,fma"))) void tl_winograd_out_avx2(float *out0, float *out1, const float *M, int nt, int C) {
    if (C == 64) winograd_out_c(out0, out1, M, nt, 64);
    else if (C == 32) winograd_out_c(out0, out1, M, nt, 32);
    else winograd_out_c(out0, out1, M, nt, C);
}

__attribute__((target("avx2,fma"))) void tl_winograd_dout_avx2(float *Z, const float *d0, const float *d1, int nt, int C) {
    if (C == 64) winograd_dout_c(Z, d0, d1, nt, 64);
    else if (C == 32) winograd_dout_c(Z, d0, d1, nt, 32);
    else winograd_dout_c(Z, d0, d1, nt, C);
}
#endif

/* dwt (3,3,C,C) += G^T dU G per (in, out), dU (16,C,C). */
void tl_winograd_dw_accum(float *dwt, const float *dU, int C) {
    for (int ci = 0; ci < C; ci++)
        for (int co = 0; co < C; co++) {
            float u[4][4], sa[3][4];
            for (int i = 0; i < 4; i++)
                for (int k = 0; k < 4; k++) u[i][k] = dU[((size_t)(i * 4 + k) * C + ci) * C + co];
            for (int k = 0; k < 4; k++) {
                sa[0][k] = u[0][k] + 0.5f * (u[1][k] + u[2][k]);
                sa[1][k] = 0.5f * (u[1][k] - u[2][k]);
                sa[2][k] = 0.5f * (u[1][k] + u[2][k]) + u[3][k];
            }
            for (int a = 0; a < 3; a++) {
                float d[3] = {sa[a][0] + 0.5f * (sa[a][1] + sa[a][2]), 0.5f * (sa[a][1] - sa[a][2]),
                              0.5f * (sa[a][1] + sa[a][2]) + sa[a][3]};
                for (int b = 0; b < 3; b++) dwt[((size_t)(a * 3 + b) * C + ci) * C + co] += d[b];
            }
        }
}
