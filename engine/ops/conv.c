/*
 * ops_conv.c: the convolutional stem in NHWC: im2col convolution, BatchNorm
 * (+ReLU) and the non-overlapping patch projection's gather/scatter.
 *
 * Owns nothing; scratch comes from the caller. Activations are (B,H,W,C), so
 * im2col copies runs of C contiguous floats, a BatchNorm channel is a column
 * (statistics vectorise across channels), and every GEMM has the 64-wide
 * channel dimension as its inner, contiguous one. Weights are used packed as
 * (k,k,Cin,Cout) (tl_conv_weight_pack); PyTorch order is restored for their
 * gradients by tl_conv_weight_unpack_accum.
 *
 * Work split: output pixels are cut into chunks of TL_CONV_CHUNK rows so each
 * thread's im2col buffer stays in its L2 cache; chunks are dealt to threads in
 * a fixed order and weight-gradient partials are summed in thread order, so
 * results are deterministic for a given thread count.
 *
 * 64-channel stems on CPUs with AVX-512 (lvvit_t/s/m) skip im2col and
 * OpenBLAS: two register-blocked kernels (gemm64_avx512, A B; and
 * gemm64_tn_acc_avx512, A^T B) read 3x3 windows straight from zero-padded
 * rows, for conv2/conv3's forward, input gradient and weight gradient in
 * training (the row path) and for the fused eval stem. OpenBLAS repacks both
 * operands on every call, which for these shapes (N = 64) cost about a third
 * of the stem's time. Where output rows come in whole pairs (even heights and
 * widths: lvvit_t's 112x112), the forward, input-gradient and weight-gradient
 * convolutions use Winograd F(2x2,3x3) instead (2.25x fewer multiplications;
 * about 1e-6 relative rounding difference from the direct sum).
 */
#include "core/blas.h"
#include "ops/gemm_avx512.h"
#include "ops/ops.h"
#include "core/simd.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define TL_CONV_CHUNK 1024 /* output pixels per im2col tile */
#define STEM_KR 7    /* output pixels per register block of the AVX-512 kernel */

#if defined(__x86_64__)
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
__attribute__((target("avx512f,fma"))) static void gemm64_avx512(float *out /*(n,64)*/, const float *const *a,
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
__attribute__((target("avx512f,fma"))) static void gemm64_tn_acc_avx512(float *out /*(m,64)*/, const float *a,
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


/* Per thread on the row path: a ring of 4 zero-padded 64-channel rows and a
 * zero row, and the Winograd tiles of a row pair (V and M, 16 x W/2 x 64 each). */
static size_t conv_rows_per_thread(int W) {
    return ((size_t)5 * (W + 2) * 64 + (size_t)2 * 16 * ((W + 1) / 2) * 64 + 15) & ~(size_t)15;
}

size_t tl_conv2d_scratch(int nthreads, int Cin, int Cout, int Ho, int Wo, int k) {
    (void)Ho;
    size_t col = (size_t)TL_CONV_CHUNK * Cin * k * k;
    size_t dw = (size_t)Cout * Cin * k * k;
    /* the row path (3x3, 64 channels): flipped and Winograd weights, and per thread its rows (conv_rows_per_thread) */
    size_t rows = k == 3 ? (size_t)25 * Cin * Cout + (size_t)nthreads * conv_rows_per_thread(Wo) : 0;
    return (size_t)nthreads * (col + dw) + rows;
}

void tl_conv_weight_pack(float *wt, const float *w, int Cout, int Cin, int k) {
    for (int co = 0; co < Cout; co++)
        for (int ci = 0; ci < Cin; ci++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    wt[((size_t)(ky * k + kx) * Cin + ci) * Cout + co] = w[(((size_t)co * Cin + ci) * k + ky) * k + kx];
}

void tl_conv_weight_unpack_accum(float *dw, const float *dwt, int Cout, int Cin, int k) {
    for (int co = 0; co < Cout; co++)
        for (int ci = 0; ci < Cin; ci++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    dw[(((size_t)co * Cin + ci) * k + ky) * k + kx] += dwt[((size_t)(ky * k + kx) * Cin + ci) * Cout + co];
}

typedef struct {
    float *out, *din, *dwt;
    const float *in, *dout, *wt;
    int nchw, B, Cin, H, W, Cout, k, stride, pad, Ho, Wo;
    float *scratch;
} conv_job;

static size_t col_floats(const conv_job *j) { return (size_t)TL_CONV_CHUNK * j->Cin * j->k * j->k; }
static size_t dw_floats(const conv_job *j) { return (size_t)j->Cout * j->Cin * j->k * j->k; }

/* colT rows for output pixels [p0, p1) of the whole batch (p = (b*Ho + oy)*Wo + ox);
 * row layout (ky, kx, ci). */
static void im2col(const conv_job *j, float *col, size_t p0, size_t p1) {
    const int k = j->k, Cin = j->Cin, KK = k * k * Cin;
    size_t plane = (size_t)j->Ho * j->Wo;
    for (size_t p = p0; p < p1; p++) {
        int b = (int)(p / plane), oy = (int)(p % plane / (size_t)j->Wo), ox = (int)(p % (size_t)j->Wo);
        float *row = col + (p - p0) * (size_t)KK;
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * j->stride - j->pad + ky;
            for (int kx = 0; kx < k; kx++) {
                int ix = ox * j->stride - j->pad + kx;
                float *d = row + (size_t)(ky * k + kx) * Cin;
                if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W) {
                    memset(d, 0, sizeof(float) * (size_t)Cin);
                } else if (j->nchw) {
                    const float *s = j->in + ((size_t)b * Cin * j->H + iy) * j->W + ix;
                    for (int c = 0; c < Cin; c++) d[c] = s[(size_t)c * j->H * j->W];
                } else {
                    memcpy(d, j->in + (((size_t)b * j->H + iy) * j->W + ix) * Cin, sizeof(float) * (size_t)Cin);
                }
            }
        }
    }
}

/* Adds colT rows of output pixels [p0, p1) back into din (NHWC). */
TL_VEC static void col2im(const conv_job *j, const float *col, size_t p0, size_t p1) {
    const int k = j->k, Cin = j->Cin, KK = k * k * Cin;
    size_t plane = (size_t)j->Ho * j->Wo;
    for (size_t p = p0; p < p1; p++) {
        int b = (int)(p / plane), oy = (int)(p % plane / (size_t)j->Wo), ox = (int)(p % (size_t)j->Wo);
        const float *row = col + (p - p0) * (size_t)KK;
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * j->stride - j->pad + ky;
            if (iy < 0 || iy >= j->H) continue;
            for (int kx = 0; kx < k; kx++) {
                int ix = ox * j->stride - j->pad + kx;
                if (ix < 0 || ix >= j->W) continue;
                float *d = j->din + (((size_t)b * j->H + iy) * j->W + ix) * Cin;
                const float *s = row + (size_t)(ky * k + kx) * Cin;
                for (int c = 0; c < Cin; c++) d[c] += s[c];
            }
        }
    }
}

static size_t nchunks(const conv_job *j) {
    size_t P = (size_t)j->B * j->Ho * j->Wo;
    return (P + TL_CONV_CHUNK - 1) / TL_CONV_CHUNK;
}

/* ---- the row path: a 3x3, stride 1, pad 1 convolution of 64 channels to 64
 * in NHWC (the stem's conv2 and conv3) runs row by row on the AVX-512 kernel
 * when the CPU has it, for the forward (input rows against the weights) and
 * the input gradient (output-gradient rows against the weights flipped in
 * space and transposed in channels: din = conv(dout, flip(w)^T)), without
 * im2col or col2im. Each output row is written by one thread, with the same
 * arithmetic whatever the split. The weight gradient stays im2col + sgemm. */
static int conv_rows_ok(const conv_job *j) {
#if defined(__x86_64__)
    return !j->nchw && j->k == 3 && j->stride == 1 && j->pad == 1 && j->Cin == 64 && j->Cout == 64 && tl_cpu_avx512();
#else
    (void)j;
    return 0;
#endif
}

typedef struct {
    float *out;      /* (B,H,W,64) */
    const float *in; /* (B,H,W,64) */
    const float *w;  /* (3,3,64,64) */
    const float *U;  /* (16,64,64): w in the Winograd domain */
    int B, H, W;
    float *scratch; /* per thread: conv_rows_per_thread floats */
} conv_rows_job;

/* A thread's ring of 4 zero-padded input rows and a zero row: rows[i] = the
 * padded row y-1+i of image b, copied in only when not held already. */
typedef struct {
    float *ring, *zero;
    size_t prow;
    int held[4], held_b;
} row_ring;

static void ring_init(row_ring *g, float *mem, int W) {
    g->prow = (size_t)(W + 2) * 64;
    g->ring = mem, g->zero = mem + 4 * g->prow;
    memset(g->zero, 0, sizeof(float) * g->prow);
    for (int r = 0; r < 4; r++) {
        memset(g->ring + r * g->prow, 0, sizeof(float) * 64);
        memset(g->ring + r * g->prow + (size_t)(W + 1) * 64, 0, sizeof(float) * 64);
        g->held[r] = -1;
    }
    g->held_b = -1;
}

static void ring_rows(row_ring *g, const float **rows, int n, const float *in /*(B,H,W,64)*/, int b, int y, int H,
                      int W) {
    if (b != g->held_b) g->held[0] = g->held[1] = g->held[2] = g->held[3] = -1, g->held_b = b;
    for (int i = 0; i < n; i++) {
        int iy = y - 1 + i, slot = (iy + 4) % 4;
        if (iy < 0 || iy >= H) {
            rows[i] = g->zero;
            continue;
        }
        if (g->held[slot] != iy) {
            memcpy(g->ring + slot * g->prow + 64, in + ((size_t)b * H + iy) * W * 64, sizeof(float) * (size_t)W * 64);
            g->held[slot] = iy;
        }
        rows[i] = g->ring + slot * g->prow;
    }
}

/* ---- Winograd F(2x2, 3x3) for a pair of output rows: each 2x2 output tile
 * from a 4x4 input tile, V = B^T d B per channel, M_xi = V_xi U_xi for the 16
 * positions xi (a (W/2 x 64) x (64 x 64) product each), Y = A^T M A: 16
 * multiplications per 4 outputs and channel pair instead of 36 (2.25x
 * fewer). Rounding differs from the direct sum by about 1e-6 relative. */

/* U (16,64,64) from w (3,3,64,64) (ky,kx,in,out): U = G g G^T per (in,out). */
static void winograd_weights(float *U, const float *w) {
    for (int ci = 0; ci < 64; ci++)
        for (int co = 0; co < 64; co++) {
            float g[3][3], t[4][3];
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++) g[a][b] = w[((size_t)(a * 3 + b) * 64 + ci) * 64 + co];
            for (int b = 0; b < 3; b++) {
                t[0][b] = g[0][b];
                t[1][b] = 0.5f * (g[0][b] + g[1][b] + g[2][b]);
                t[2][b] = 0.5f * (g[0][b] - g[1][b] + g[2][b]);
                t[3][b] = g[2][b];
            }
            for (int a = 0; a < 4; a++) {
                float u[4] = {t[a][0], 0.5f * (t[a][0] + t[a][1] + t[a][2]), 0.5f * (t[a][0] - t[a][1] + t[a][2]),
                              t[a][2]};
                for (int b = 0; b < 4; b++) U[((size_t)(a * 4 + b) * 64 + ci) * 64 + co] = u[b];
            }
        }
}

#if defined(__x86_64__)
/* V (16, nt, 64) from the 4 padded input rows: tile t covers padded columns 2t..2t+3. */
__attribute__((target("avx512f,fma"))) static void winograd_in(float *V, const float *const rows[4], int nt) {
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
__attribute__((target("avx512f,fma"))) static void winograd_out(float *out0, float *out1, const float *M, int nt) {
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
__attribute__((target("avx512f,fma"))) static void winograd_dout(float *Z, const float *d0, const float *d1, int nt) {
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

/* dwt (3,3,64,64) += G^T dU G per (in, out), dU (16,64,64). */
static void winograd_dw_accum(float *dwt, const float *dU) {
    for (int ci = 0; ci < 64; ci++)
        for (int co = 0; co < 64; co++) {
            float u[4][4], sa[3][4];
            for (int i = 0; i < 4; i++)
                for (int k = 0; k < 4; k++) u[i][k] = dU[((size_t)(i * 4 + k) * 64 + ci) * 64 + co];
            for (int k = 0; k < 4; k++) {
                sa[0][k] = u[0][k] + 0.5f * (u[1][k] + u[2][k]);
                sa[1][k] = 0.5f * (u[1][k] - u[2][k]);
                sa[2][k] = 0.5f * (u[1][k] + u[2][k]) + u[3][k];
            }
            for (int a = 0; a < 3; a++) {
                float d[3] = {sa[a][0] + 0.5f * (sa[a][1] + sa[a][2]), 0.5f * (sa[a][1] - sa[a][2]),
                              0.5f * (sa[a][1] + sa[a][2]) + sa[a][3]};
                for (int b = 0; b < 3; b++) dwt[((size_t)(a * 3 + b) * 64 + ci) * 64 + co] += d[b];
            }
        }
}

/* Work units are row pairs (b, y0 = 2u): by Winograd when the pair is whole
 * and W is even, else row by row on the direct kernel. */
static void conv_rows_part(void *arg, int tid, int nt) {
#if defined(__x86_64__)
    conv_rows_job *j = arg;
    int H = j->H, W = j->W, pairs = (H + 1) / 2, tiles = W / 2;
    float *mem = j->scratch + (size_t)tid * conv_rows_per_thread(W);
    float *V = mem + (size_t)5 * (W + 2) * 64, *M = V + (size_t)16 * ((W + 1) / 2) * 64;
    size_t lo, hi;
    row_ring g;
    ring_init(&g, mem, W);
    tl_split((size_t)j->B * pairs, tid, nt, &lo, &hi);
    for (size_t u = lo; u < hi; u++) {
        int b = (int)(u / (size_t)pairs), y0 = 2 * (int)(u % (size_t)pairs);
        float *out = j->out + ((size_t)b * H + y0) * W * 64;
        const float *rows[4];
        if (j->U && y0 + 1 < H && W % 2 == 0) {
            ring_rows(&g, rows, 4, j->in, b, y0, H, W);
            winograd_in(V, rows, tiles);
            for (int xi = 0; xi < 16; xi++)
                tl_gemm_rows_avx512(M + (size_t)xi * tiles * 64, 64, V + (size_t)xi * tiles * 64, 64, 64,
                                    j->U + (size_t)xi * 64 * 64, 64, tiles, 64);
            winograd_out(out, out + (size_t)W * 64, M, tiles);
            continue;
        }
        for (int y = y0; y < y0 + 2 && y < H; y++) {
            ring_rows(&g, rows, 3, j->in, b, y, H, W);
            gemm64_avx512(out + (size_t)(y - y0) * W * 64, rows, 3, 64, 192, j->w, W);
        }
    }
#else
    (void)arg, (void)tid, (void)nt;
#endif
}

/* The weight gradient on the row path, per thread: row pairs by Winograd
 * into its dU partial (16,64,64), other rows directly into its dW partial
 * (3,3,64,64): input window rows^T x output-gradient row. Both are zeroed
 * here and summed in thread order by the caller. */
typedef struct {
    const float *in, *dout; /* (B,H,W,64) each */
    float *parts;           /* nthreads x (3,3,64,64) */
    float *uparts;          /* nthreads x (16,64,64) */
    float *scratch;         /* per thread: conv_rows_per_thread floats */
    int B, H, W;
} conv_dw_rows_job;

static void conv_dw_rows_part(void *arg, int tid, int nt) {
#if defined(__x86_64__)
    conv_dw_rows_job *j = arg;
    int H = j->H, W = j->W, pairs = (H + 1) / 2, tiles = W / 2;
    float *dwp = j->parts + (size_t)tid * 9 * 64 * 64, *dup = j->uparts + (size_t)tid * 16 * 64 * 64;
    float *mem = j->scratch + (size_t)tid * conv_rows_per_thread(W);
    float *V = mem + (size_t)5 * (W + 2) * 64, *Z = V + (size_t)16 * ((W + 1) / 2) * 64;
    size_t lo, hi;
    row_ring g;
    memset(dwp, 0, sizeof(float) * 9 * 64 * 64);
    memset(dup, 0, sizeof(float) * 16 * 64 * 64);
    ring_init(&g, mem, W);
    tl_split((size_t)j->B * pairs, tid, nt, &lo, &hi);
    for (size_t u = lo; u < hi; u++) {
        int b = (int)(u / (size_t)pairs), y0 = 2 * (int)(u % (size_t)pairs);
        const float *dout = j->dout + ((size_t)b * H + y0) * W * 64;
        const float *rows[4];
        if (y0 + 1 < H && W % 2 == 0) {
            ring_rows(&g, rows, 4, j->in, b, y0, H, W);
            winograd_in(V, rows, tiles);
            winograd_dout(Z, dout, dout + (size_t)W * 64, tiles);
            for (int xi = 0; xi < 16; xi++)
                gemm64_tn_acc_avx512(dup + (size_t)xi * 64 * 64, V + (size_t)xi * tiles * 64, 64, 64,
                                     Z + (size_t)xi * tiles * 64, tiles);
            continue;
        }
        for (int y = y0; y < y0 + 2 && y < H; y++) {
            ring_rows(&g, rows, 3, j->in, b, y, H, W);
            for (int ky = 0; ky < 3; ky++)
                gemm64_tn_acc_avx512(dwp + (size_t)ky * 192 * 64, rows[ky], 64, 192, dout + (size_t)(y - y0) * W * 64,
                                     W);
        }
    }
#else
    (void)arg, (void)tid, (void)nt;
#endif
}

static void conv_fwd_part(void *arg, int tid, int nt) {
    conv_job *j = arg;
    size_t P = (size_t)j->B * j->Ho * j->Wo, lo, hi;
    int KK = j->k * j->k * j->Cin;
    float *col = j->scratch + (size_t)tid * col_floats(j);
    tl_split(nchunks(j), tid, nt, &lo, &hi);
    for (size_t c = lo; c < hi; c++) {
        size_t p0 = c * TL_CONV_CHUNK, p1 = p0 + TL_CONV_CHUNK < P ? p0 + TL_CONV_CHUNK : P;
        im2col(j, col, p0, p1);
        tl_sgemm(0, 0, (int)(p1 - p0), j->Cout, KK, 1.0f, col, KK, j->wt, j->Cout, 0.0f,
                 j->out + p0 * (size_t)j->Cout, j->Cout);
    }
}

void tl_conv2d_forward(tl_pool *p, float *out, const float *in, int in_nchw, const float *wt, int B, int Cin, int H,
                       int W, int Cout, int k, int stride, int pad, float *scratch) {
    conv_job j = {.out = out, .in = in, .wt = wt, .nchw = in_nchw, .B = B, .Cin = Cin, .H = H, .W = W, .Cout = Cout,
                  .k = k, .stride = stride, .pad = pad, .scratch = scratch};
    j.Ho = tl_conv_out(H, k, stride, pad);
    j.Wo = tl_conv_out(W, k, stride, pad);
    if (conv_rows_ok(&j)) {
        float *U = scratch;
        winograd_weights(U, wt);
        conv_rows_job r = {.out = out, .in = in, .w = wt, .U = U, .B = B, .H = H, .W = W, .scratch = U + 16 * 64 * 64};
        tl_pool_run(p, conv_rows_part, &r);
        return;
    }
    tl_pool_run(p, conv_fwd_part, &j);
}

/* Each thread: for its chunks, dWt_t += colT^T dout; dcolT = dout Wt^T; col2im.
 * col2im of neighbouring chunks touches shared input pixels, so threads own
 * whole images when there are enough of them; otherwise din is added serially. */
typedef struct {
    conv_job *j;
    int by_image;
} conv_bwd_ctx;

static void conv_bwd_range(conv_job *j, int tid, int nt, size_t p_lo, size_t p_hi, float *dwp) {
    int KK = j->k * j->k * j->Cin;
    float *col = j->scratch + (size_t)tid * col_floats(j);
    for (size_t p0 = p_lo; p0 < p_hi; p0 += TL_CONV_CHUNK) {
        size_t p1 = p0 + TL_CONV_CHUNK < p_hi ? p0 + TL_CONV_CHUNK : p_hi;
        int rows = (int)(p1 - p0);
        const float *dout = j->dout + p0 * (size_t)j->Cout;
        im2col(j, col, p0, p1);
        tl_sgemm(1, 0, KK, j->Cout, rows, 1.0f, col, KK, dout, j->Cout, 1.0f, dwp, j->Cout);
        if (!j->din) continue;
        tl_sgemm(0, 1, rows, KK, j->Cout, 1.0f, dout, j->Cout, j->wt, j->Cout, 0.0f, col, KK);
        col2im(j, col, p0, p1);
    }
    (void)nt;
}

static void conv_bwd_part(void *arg, int tid, int nt) {
    conv_bwd_ctx *cx = arg;
    conv_job *j = cx->j;
    float *dwp = j->scratch + (size_t)nt * col_floats(j) + (size_t)tid * dw_floats(j);
    memset(dwp, 0, sizeof(float) * dw_floats(j));
    size_t plane = (size_t)j->Ho * j->Wo, lo, hi;
    if (cx->by_image) {
        tl_split((size_t)j->B, tid, nt, &lo, &hi);
        if (j->din) memset(j->din + lo * j->H * j->W * j->Cin, 0, sizeof(float) * (hi - lo) * j->H * j->W * j->Cin);
        conv_bwd_range(j, tid, nt, lo * plane, hi * plane, dwp);
    } else {
        tl_split(nchunks(j), tid, nt, &lo, &hi);
        size_t P = (size_t)j->B * plane;
        conv_job local = *j;
        local.din = NULL; /* input gradient done serially below */
        conv_bwd_range(&local, tid, nt, lo * TL_CONV_CHUNK, hi * TL_CONV_CHUNK < P ? hi * TL_CONV_CHUNK : P, dwp);
    }
}

typedef struct {
    float *dst;
    const float *parts;
    size_t n;
    int nparts;
} reduce_job;

TL_VEC static void reduce_part(void *arg, int tid, int nt) {
    reduce_job *r = arg;
    size_t lo, hi;
    tl_split(r->n, tid, nt, &lo, &hi);
    for (int t = 0; t < r->nparts; t++) {
        const float *src = r->parts + (size_t)t * r->n;
        for (size_t i = lo; i < hi; i++) r->dst[i] += src[i];
    }
}

void tl_conv2d_backward(tl_pool *p, float *din, float *dwt, const float *dout, const float *in, int in_nchw,
                        const float *wt, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                        float *scratch) {
    conv_job j = {.din = in_nchw ? NULL : din, .dwt = dwt, .dout = dout, .in = in, .wt = wt, .nchw = in_nchw, .B = B,
                  .Cin = Cin, .H = H, .W = W, .Cout = Cout, .k = k, .stride = stride, .pad = pad, .scratch = scratch};
    j.Ho = tl_conv_out(H, k, stride, pad);
    j.Wo = tl_conv_out(W, k, stride, pad);
    int nt = tl_pool_size(p);
    if (conv_rows_ok(&j)) {
        float *parts = scratch + (size_t)nt * col_floats(&j), *wf = parts + (size_t)nt * dw_floats(&j);
        float *U = wf + 9 * 64 * 64, *rings = U + 16 * 64 * 64;
        float *uparts = scratch; /* the im2col buffers are unused on the row path */
        conv_dw_rows_job dj = {.in = in, .dout = dout, .parts = parts, .uparts = uparts, .scratch = rings, .B = B,
                               .H = H, .W = W};
        tl_pool_run(p, conv_dw_rows_part, &dj);
        reduce_job r = {dwt, parts, dw_floats(&j), nt};
        tl_pool_run(p, reduce_part, &r);
        memset(U, 0, sizeof(float) * 16 * 64 * 64); /* U first sums the dU partials */
        reduce_job ru = {U, uparts, 16 * 64 * 64, nt};
        tl_pool_run(p, reduce_part, &ru);
        winograd_dw_accum(dwt, U);
        if (!j.din) return;
        /* flip(w)^T: (ky,kx,co,ci) from wt's (2-ky,2-kx,ci,co) */
        for (int t = 0; t < 9; t++)
            for (int co = 0; co < 64; co++)
                for (int ci = 0; ci < 64; ci++)
                    wf[((size_t)t * 64 + co) * 64 + ci] = wt[((size_t)(8 - t) * 64 + ci) * 64 + co];
        winograd_weights(U, wf);
        conv_rows_job rj = {.out = j.din, .in = dout, .w = wf, .U = U, .B = B, .H = H, .W = W, .scratch = rings};
        tl_pool_run(p, conv_rows_part, &rj);
        return;
    }
    conv_bwd_ctx cx = {&j, B >= nt};
    tl_pool_run(p, conv_bwd_part, &cx);
    reduce_job r = {dwt, scratch + (size_t)nt * col_floats(&j), dw_floats(&j), nt};
    tl_pool_run(p, reduce_part, &r);
    if (cx.by_image || !j.din) return;
    /* few images: the input gradient, chunk by chunk on the calling thread with a pooled GEMM */
    memset(j.din, 0, sizeof(float) * (size_t)B * H * W * Cin);
    size_t P = (size_t)B * j.Ho * j.Wo;
    int KK = k * k * Cin;
    for (size_t p0 = 0; p0 < P; p0 += TL_CONV_CHUNK) {
        size_t p1 = p0 + TL_CONV_CHUNK < P ? p0 + TL_CONV_CHUNK : P;
        tl_gemm(p, 0, 1, (int)(p1 - p0), KK, Cout, 1.0f, dout + p0 * (size_t)Cout, Cout, wt, Cout, 0.0f, scratch, KK);
        col2im(&j, scratch, p0, p1);
    }
}

/* ---- BatchNorm (+ReLU) over NHWC rows: x is (M,C), a channel is a column ---- */
typedef struct {
    float *y, *mean, *rstd, *dx, *dgamma, *dbeta;
    const float *x, *dy, *yv, *gamma, *beta, *cmean, *crstd;
    float *run_mean, *run_var;
    int C;
    size_t M;
    int relu;
    double *part; /* nthreads x 2C */
    float *coef;  /* 2C (scale, shift) or 3C (backward constants) */
} bn_job;

size_t tl_bn_scratch(int nthreads, int C) { return (size_t)nthreads * 6 * C + 4 * (size_t)C; }

/* Column sums are accumulated in float over blocks of BN_BLOCK rows and in
 * double across blocks: vector speed, and no precision lost over 10^5+ rows. */
#define BN_BLOCK 256

TL_VEC static void bn_sum_part(void *arg, int tid, int nt) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    double *s = j->part + (size_t)tid * 2 * C;
    float *f = (float *)(s + C); /* the second half of this thread's partials is free here */
    memset(s, 0, sizeof(double) * (size_t)C);
    for (size_t r0 = lo; r0 < hi; r0 += BN_BLOCK) {
        size_t r1 = r0 + BN_BLOCK < hi ? r0 + BN_BLOCK : hi;
        memset(f, 0, sizeof(float) * (size_t)C);
        for (size_t r = r0; r < r1; r++) {
            const float *x = j->x + r * C;
            for (int c = 0; c < C; c++) f[c] += x[c];
        }
        for (int c = 0; c < C; c++) s[c] += f[c];
    }
}

TL_VEC static void bn_var_part(void *arg, int tid, int nt) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    double *ss = j->part + (size_t)tid * 2 * C + C;
    float *f = (float *)(j->part + (size_t)tid * 2 * C); /* sums were consumed already */
    memset(ss, 0, sizeof(double) * (size_t)C);
    for (size_t r0 = lo; r0 < hi; r0 += BN_BLOCK) {
        size_t r1 = r0 + BN_BLOCK < hi ? r0 + BN_BLOCK : hi;
        memset(f, 0, sizeof(float) * (size_t)C);
        for (size_t r = r0; r < r1; r++) {
            const float *x = j->x + r * C;
            for (int c = 0; c < C; c++) {
                float d = x[c] - j->mean[c];
                f[c] += d * d;
            }
        }
        for (int c = 0; c < C; c++) ss[c] += f[c];
    }
}

TL_VEC static void bn_apply_part(void *arg, int tid, int nt) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    const float *a = j->coef, *b = j->coef + C;
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->x + r * C;
        float *y = j->y + r * C;
        if (j->relu)
            for (int c = 0; c < C; c++) {
                float v = x[c] * a[c] + b[c];
                y[c] = v > 0.0f ? v : 0.0f;
            }
        else
            for (int c = 0; c < C; c++) y[c] = x[c] * a[c] + b[c];
    }
}

void tl_bn_forward(tl_pool *p, float *y, float *mean, float *rstd, const float *x, const float *gamma,
                   const float *beta, float *run_mean, float *run_var, int C, size_t M, int train, float momentum,
                   float eps, int relu, float *scratch) {
    int nt = tl_pool_size(p);
    bn_job j = {.y = y, .mean = mean, .rstd = rstd, .x = x, .gamma = gamma, .beta = beta, .run_mean = run_mean,
                .run_var = run_var, .C = C, .M = M, .relu = relu, .part = (double *)scratch,
                .coef = scratch + (size_t)nt * 4 * C};
    if (train) {
        tl_pool_run(p, bn_sum_part, &j);
        for (int c = 0; c < C; c++) {
            double s = 0.0;
            for (int t = 0; t < nt; t++) s += j.part[(size_t)t * 2 * C + c];
            mean[c] = (float)(s / (double)M);
        }
        tl_pool_run(p, bn_var_part, &j);
        for (int c = 0; c < C; c++) {
            double ss = 0.0;
            for (int t = 0; t < nt; t++) ss += j.part[(size_t)t * 2 * C + C + c];
            double var = ss / (double)M, unbiased = M > 1 ? ss / (double)(M - 1) : var;
            rstd[c] = (float)(1.0 / sqrt(var + eps));
            run_mean[c] = (float)((1.0 - momentum) * run_mean[c] + momentum * mean[c]);
            run_var[c] = (float)((1.0 - momentum) * run_var[c] + momentum * unbiased);
        }
    } else {
        for (int c = 0; c < C; c++) {
            mean[c] = run_mean[c];
            rstd[c] = 1.0f / sqrtf(run_var[c] + eps);
        }
    }
    for (int c = 0; c < C; c++) {
        j.coef[c] = gamma[c] * rstd[c];
        j.coef[C + c] = beta[c] - mean[c] * j.coef[c];
    }
    tl_pool_run(p, bn_apply_part, &j);
}

TL_VEC static void bn_bsum_part(void *arg, int tid, int nt) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    double *sdy = j->part + (size_t)tid * 2 * C, *sdyx = sdy + C;
    float *f = j->coef + (size_t)3 * C + (size_t)tid * 2 * C, *fx = f + C; /* per-thread block sums */
    memset(sdy, 0, sizeof(double) * 2 * (size_t)C);
    for (size_t r0 = lo; r0 < hi; r0 += BN_BLOCK) {
        size_t r1 = r0 + BN_BLOCK < hi ? r0 + BN_BLOCK : hi;
        memset(f, 0, sizeof(float) * 2 * (size_t)C);
        for (size_t r = r0; r < r1; r++) {
            const float *x = j->x + r * C, *dy = j->dy + r * C, *y = j->yv + r * C;
            for (int c = 0; c < C; c++) {
                float g = (j->relu && y[c] <= 0.0f) ? 0.0f : dy[c];
                f[c] += g;
                fx[c] += g * (x[c] - j->cmean[c]);
            }
        }
        for (int c = 0; c < C; c++) {
            sdy[c] += f[c];
            sdyx[c] += fx[c];
        }
    }
}

TL_VEC static void bn_bapply_part(void *arg, int tid, int nt) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split(j->M, tid, nt, &lo, &hi);
    int C = j->C;
    const float *k = j->coef, *mdy = j->coef + C, *mdyx = j->coef + 2 * C;
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->x + r * C, *dy = j->dy + r * C, *y = j->yv + r * C;
        float *dx = j->dx + r * C;
        for (int c = 0; c < C; c++) {
            float g = (j->relu && y[c] <= 0.0f) ? 0.0f : dy[c];
            dx[c] = k[c] * (g - mdy[c] - (x[c] - j->cmean[c]) * mdyx[c]);
        }
    }
}

void tl_bn_backward(tl_pool *p, float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                    const float *y, const float *mean, const float *rstd, const float *gamma, int C, size_t M,
                    int relu, float *scratch) {
    int nt = tl_pool_size(p);
    bn_job j = {.dx = dx, .dy = dy, .x = x, .yv = y, .cmean = mean, .crstd = rstd, .gamma = gamma, .C = C, .M = M,
                .relu = relu, .part = (double *)scratch, .coef = scratch + (size_t)nt * 4 * C};
    tl_pool_run(p, bn_bsum_part, &j);
    float inv = 1.0f / (float)M;
    for (int c = 0; c < C; c++) {
        double sdy = 0.0, sdyx = 0.0;
        for (int t = 0; t < nt; t++) {
            sdy += j.part[(size_t)t * 2 * C + c];
            sdyx += j.part[(size_t)t * 2 * C + C + c];
        }
        float db = (float)sdy, dg = (float)(sdyx * rstd[c]);
        dbeta[c] += db;
        dgamma[c] += dg;
        j.coef[c] = gamma[c] * rstd[c];
        j.coef[C + c] = db * inv;
        j.coef[2 * C + c] = dg * inv * rstd[c];
    }
    tl_pool_run(p, bn_bapply_part, &j);
}

/* ---- patches of an NHWC map: row (b,ty,tx), columns (ky,kx,c) ---- */
typedef struct {
    float *patches, *dx;
    const float *x, *dpatches;
    int B, C, H, W, k;
} patch_job;

static void patch_part(void *arg, int tid, int nt, int scatter) {
    patch_job *j = arg;
    int g = j->H / j->k, gw = j->W / j->k, k = j->k, kc = k * j->C;
    size_t lo, hi;
    tl_split((size_t)j->B * g, tid, nt, &lo, &hi); /* (b, ty) rows of tokens */
    for (size_t r = lo; r < hi; r++) {
        int b = (int)(r / (size_t)g), ty = (int)(r % (size_t)g);
        for (int tx = 0; tx < gw; tx++) {
            size_t prow = ((size_t)(b * g + ty) * gw + tx) * (size_t)k * kc;
            for (int ky = 0; ky < k; ky++) {
                size_t pix = (((size_t)b * j->H + ty * k + ky) * j->W + (size_t)tx * k) * j->C;
                if (scatter)
                    memcpy(j->dx + pix, j->dpatches + prow + (size_t)ky * kc, sizeof(float) * (size_t)kc);
                else
                    memcpy(j->patches + prow + (size_t)ky * kc, j->x + pix, sizeof(float) * (size_t)kc);
            }
        }
    }
}

static void patch_gather_part(void *arg, int tid, int nt) { patch_part(arg, tid, nt, 0); }
static void patch_scatter_part(void *arg, int tid, int nt) { patch_part(arg, tid, nt, 1); }

void tl_patch_gather(tl_pool *p, float *patches, const float *x, int B, int C, int H, int W, int k) {
    patch_job j = {.patches = patches, .x = x, .B = B, .C = C, .H = H, .W = W, .k = k};
    tl_pool_run(p, patch_gather_part, &j);
}

void tl_patch_scatter(tl_pool *p, float *dx, const float *dpatches, int B, int C, int H, int W, int k) {
    patch_job j = {.dx = dx, .dpatches = dpatches, .B = B, .C = C, .H = H, .W = W, .k = k};
    tl_pool_run(p, patch_scatter_part, &j);
}

void tl_patch_weight_pack(float *wp, const float *w, int D, int C, int k) {
    for (int d = 0; d < D; d++)
        for (int c = 0; c < C; c++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    wp[(size_t)d * C * k * k + ((size_t)ky * k + kx) * C + c] = w[(((size_t)d * C + c) * k + ky) * k + kx];
}

void tl_patch_weight_unpack_accum(float *dw, const float *dwp, int D, int C, int k) {
    for (int d = 0; d < D; d++)
        for (int c = 0; c < C; c++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    dw[(((size_t)d * C + c) * k + ky) * k + kx] += dwp[(size_t)d * C * k * k + ((size_t)ky * k + kx) * C + c];
}

/* ---- eval-mode stem, fused: conv1+BN+ReLU, conv2+BN+ReLU, conv3+BN+ReLU,
 * patch gather ----
 * BatchNorm with running statistics is folded into the weights (scale) and a
 * bias by the caller. Rows are produced in a pipeline per image: a3 row y
 * needs a2 rows y-1..y+1, which need a1 rows y-2..y+2, so each thread keeps
 * a ring of 4 rows of a1 and of a2 (about 60 KB each for 112x64) and the
 * stem's activations never leave its L2 cache; a3 rows go straight into the
 * patch matrix. The work split is over the batch's B*g token rows, so whole
 * images go to a thread when B is a multiple of the threads and an image's
 * rows are split otherwise (the rows around a cut are computed twice). Every
 * row is computed by the same calls whatever the split, so results do not
 * depend on the batch size or the thread count. */
#define STEM_RING 4

typedef struct {
    float *patches;
    const float *img, *w1, *b1, *w2, *b2, *w3, *b3;
    int B, C, H, W1, k, g;
    int avx512; /* C == 64 and the CPU runs AVX-512: the stem's own kernel, not im2col + sgemm */
    const float *u2, *u3; /* conv2/conv3 in the Winograd domain (16,64,64), or NULL: row by row */
    float *scratch;
    size_t per_thread;
} stem_eval_job;

/* Per thread: two rings of STEM_RING rows, each row padded with one zero
 * pixel at both ends ((W1+2)*C, so a 3x3 window never leaves the row), one
 * zero row (the padding above and below the image), the im2col buffer, two
 * output rows, a row for results outside the image, and the Winograd tiles
 * of a row pair (V and M). */
static size_t stem_eval_per_thread(int C, int W1) {
    size_t kk = (size_t)9 * C > 147 ? (size_t)9 * C : 147;
    size_t prow = (size_t)(W1 + 2) * C;
    size_t per = (size_t)(2 * STEM_RING + 1) * prow + (size_t)W1 * kk + (size_t)3 * W1 * C +
                 (size_t)2 * 16 * ((W1 + 1) / 2) * C;
    return (per + 15) & ~(size_t)15;
}

/* Shared: conv2's and conv3's Winograd weights; then each thread's part. */
size_t tl_stem_eval_scratch(int nthreads, int C, int W1) {
    return (size_t)32 * C * C + (size_t)nthreads * stem_eval_per_thread(C, W1);
}

/* conv1's im2col for output row oy: col (W1, 147) with columns (ci, ky, kx),
 * so each run of 7 taps is contiguous in the NCHW image. */
static void im2col_c1(float *col, const float *img, int H, int W1, int oy) {
    for (int ox = 0; ox < W1; ox++) {
        float *d = col + (size_t)ox * 147;
        int x0 = 2 * ox - 3;
        for (int ci = 0; ci < 3; ci++)
            for (int ky = 0; ky < 7; ky++) {
                int iy = 2 * oy - 3 + ky;
                float *r = d + ci * 49 + ky * 7;
                if (iy < 0 || iy >= H) {
                    for (int kx = 0; kx < 7; kx++) r[kx] = 0.0f;
                    continue;
                }
                const float *s = img + ((size_t)ci * H + iy) * H;
                if (x0 >= 0 && x0 + 7 <= H)
                    for (int kx = 0; kx < 7; kx++) r[kx] = s[x0 + kx];
                else
                    for (int kx = 0; kx < 7; kx++) r[kx] = (x0 + kx >= 0 && x0 + kx < H) ? s[x0 + kx] : 0.0f;
            }
    }
}

/* The three padded input rows of a 3x3 window centred on row oy: ring rows,
 * or the zero row outside the image. Pixel ox's window in row ky is then the
 * 3*C contiguous floats at rows[ky] + ox*C, columns (kx, ci). */
static void rows_3x3(const float *rows[3], const float *ring, const float *zero, int H1, size_t prow, int oy) {
    for (int ky = 0; ky < 3; ky++) {
        int iy = oy - 1 + ky;
        rows[ky] = (iy >= 0 && iy < H1) ? ring + (size_t)(iy % STEM_RING) * prow : zero;
    }
}

/* 3x3 pad 1 im2col of output row oy: col (W1, 9C), columns (ky, kx, ci). */
static void im2col_3x3(float *col, const float *rows[3], int W1, int C) {
    size_t KK = (size_t)9 * C, run = sizeof(float) * 3 * (size_t)C;
    for (int ox = 0; ox < W1; ox++)
        for (int ky = 0; ky < 3; ky++) memcpy(col + (size_t)ox * KK + (size_t)ky * 3 * C, rows[ky] + (size_t)ox * C, run);
}

/* y = max(y + b, 0) over n rows of C */
TL_VEC static void bias_relu_rows(float *y, const float *b, int n, int C) {
    for (int r = 0; r < n; r++) {
        float *o = y + (size_t)r * C;
        for (int c = 0; c < C; c++) {
            float v = o[c] + b[c];
            o[c] = v > 0.0f ? v : 0.0f;
        }
    }
}

/* patch row segments of a3 row y: dst = max(src + b, 0) */
TL_VEC static void bias_relu_to_patches(const stem_eval_job *j, int b, int y, const float *src) {
    int k = j->k, C = j->C, g = j->g, kc = k * C;
    size_t kkc = (size_t)k * kc;
    int ty = y / k, ky = y % k;
    for (int tx = 0; tx < g; tx++) {
        float *d = j->patches + ((size_t)(b * g + ty) * g + tx) * kkc + (size_t)ky * kc;
        const float *s = src + (size_t)tx * kc;
        for (int i = 0; i < kc; i += C)
            for (int c = 0; c < C; c++) {
                float v = s[i + c] + j->b3[c];
                d[i + c] = v > 0.0f ? v : 0.0f;
            }
    }
}

/* out (W1,C) = conv1 of output row oy (before bias and ReLU) */
static void stem_conv1_row(const stem_eval_job *j, float *out, float *col, const float *img, int oy) {
    int C = j->C, W1 = j->W1;
    im2col_c1(col, img, j->H, W1, oy);
#if defined(__x86_64__)
    if (j->avx512) {
        const float *a = col;
        gemm64_avx512(out, &a, 1, 147, 147, j->w1, W1);
        return;
    }
#endif
    tl_sgemm(0, 0, W1, C, 147, 1.0f, col, 147, j->w1, C, 0.0f, out, C);
}

/* out (W1,C) = 3x3 convolution (weights w) of the ring's rows around oy (before bias and ReLU) */
static void stem_conv3_row(const stem_eval_job *j, float *out, float *col, const float *ring, const float *zero,
                           const float *w, int oy) {
    int C = j->C, W1 = j->W1;
    const float *rows[3];
    rows_3x3(rows, ring, zero, W1, (size_t)(W1 + 2) * C, oy);
#if defined(__x86_64__)
    if (j->avx512) {
        gemm64_avx512(out, rows, 3, C, 3 * C, w, W1);
        return;
    }
#endif
    im2col_3x3(col, rows, W1, C);
    tl_sgemm(0, 0, W1, C, 9 * C, 1.0f, col, 9 * C, w, C, 0.0f, out, C);
}

/* a3 rows [y0, y1) of image b */
static void stem_eval_rows(const stem_eval_job *j, float *ws, int b, int y0, int y1) {
    int C = j->C, W1 = j->W1, H1 = j->W1, H = j->H;
    size_t prow = (size_t)(W1 + 2) * C;
    float *r1 = ws, *r2 = r1 + STEM_RING * prow, *zero = r2 + STEM_RING * prow, *col = zero + prow;
    size_t kk = (size_t)9 * C > 147 ? (size_t)9 * C : 147;
    float *tmp = col + (size_t)W1 * kk;
    /* the padding: the zero row, and the first and last pixel of every ring row */
    memset(zero, 0, sizeof(float) * prow);
    for (int r = 0; r < 2 * STEM_RING; r++) {
        memset(r1 + (size_t)r * prow, 0, sizeof(float) * (size_t)C);
        memset(r1 + (size_t)r * prow + (size_t)(W1 + 1) * C, 0, sizeof(float) * (size_t)C);
    }
    const float *img = j->img + (size_t)b * 3 * H * H;
    int n1 = y0 - 2 < 0 ? 0 : y0 - 2, n2 = y0 - 1 < 0 ? 0 : y0 - 1; /* next a1, a2 row to compute */
    for (int y = y0; y < y1; y++) {
        int need2 = y + 1 < H1 ? y + 1 : H1 - 1;
        for (; n2 <= need2; n2++) {
            /* a1 rows up to n2 + 1; the ring's oldest row, n2 - 3, is no longer needed */
            int need1 = n2 + 1 < H1 ? n2 + 1 : H1 - 1;
            for (; n1 <= need1; n1++) {
                float *o = r1 + (size_t)(n1 % STEM_RING) * prow + C;
                stem_conv1_row(j, o, col, img, n1);
                bias_relu_rows(o, j->b1, W1, C);
            }
            float *o = r2 + (size_t)(n2 % STEM_RING) * prow + C;
            stem_conv3_row(j, o, col, r1, zero, j->w2, n2);
            bias_relu_rows(o, j->b2, W1, C);
        }
        stem_conv3_row(j, tmp, col, r2, zero, j->w3, y);
        bias_relu_to_patches(j, b, y, tmp);
    }
}

#if defined(__x86_64__)
/* The padded rows oy-1 .. oy+2 of a ring (the zero row outside the image). */
static void rows_4(const float *rows[4], const float *ring, const float *zero, int H1, size_t prow, int oy) {
    for (int i = 0; i < 4; i++) {
        int iy = oy - 1 + i;
        rows[i] = (iy >= 0 && iy < H1) ? ring + (size_t)(iy % STEM_RING) * prow : zero;
    }
}

/* Two output rows (oy, oy+1) of a 3x3 convolution of 64 channels by Winograd
 * F(2x2,3x3), before bias and ReLU. */
static void stem_wino_pair(const stem_eval_job *j, float *out0, float *out1, float *V, float *M, const float *ring,
                           const float *zero, const float *U, int oy) {
    int W1 = j->W1, tiles = W1 / 2;
    const float *rows[4];
    rows_4(rows, ring, zero, W1, (size_t)(W1 + 2) * 64, oy);
    winograd_in(V, rows, tiles);
    for (int xi = 0; xi < 16; xi++)
        tl_gemm_rows_avx512(M + (size_t)xi * tiles * 64, 64, V + (size_t)xi * tiles * 64, 64, 64,
                            U + (size_t)xi * 64 * 64, 64, tiles, 64);
    winograd_out(out0, out1, M, tiles);
}

/* a3 rows [y0, y1) of image b, both even, in pairs: a3 pair (y, y+1) needs
 * a2 rows y-1 .. y+2, made as the pairs (y-1, y) and (y+1, y+2) (a2 pairs
 * start at odd rows), which need a1 rows y-2 .. y+3, made one by one. A pair
 * half outside the image (a2 row -1 or H1) goes to a scratch row: the rows
 * above and below the image read as the zero row. */
static void stem_eval_rows_wino(const stem_eval_job *j, float *ws, int b, int y0, int y1) {
    int C = 64, W1 = j->W1, H1 = j->W1, H = j->H;
    size_t prow = (size_t)(W1 + 2) * C;
    float *r1 = ws, *r2 = r1 + STEM_RING * prow, *zero = r2 + STEM_RING * prow, *col = zero + prow;
    float *t0 = col + (size_t)W1 * 9 * C, *t1 = t0 + (size_t)W1 * C, *dump = t1 + (size_t)W1 * C;
    float *V = dump + (size_t)W1 * C, *M = V + (size_t)16 * (W1 / 2) * C;
    memset(zero, 0, sizeof(float) * prow);
    for (int r = 0; r < 2 * STEM_RING; r++) {
        memset(r1 + (size_t)r * prow, 0, sizeof(float) * (size_t)C);
        memset(r1 + (size_t)r * prow + (size_t)(W1 + 1) * C, 0, sizeof(float) * (size_t)C);
    }
    const float *img = j->img + (size_t)b * 3 * H * H;
    int n1 = y0 - 2 < 0 ? 0 : y0 - 2, n2 = y0 - 1; /* next a1 row, next a2 pair (odd start) */
    for (int y = y0; y < y1; y += 2) {
        for (; n2 <= y + 1; n2 += 2) {
            int need1 = n2 + 2 < H1 ? n2 + 2 : H1 - 1;
            for (; n1 <= need1; n1++) {
                float *o = r1 + (size_t)(n1 % STEM_RING) * prow + C;
                stem_conv1_row(j, o, col, img, n1);
                bias_relu_rows(o, j->b1, W1, C);
            }
            float *o0 = n2 >= 0 ? r2 + (size_t)(n2 % STEM_RING) * prow + C : dump;
            float *o1 = n2 + 1 < H1 ? r2 + (size_t)((n2 + 1) % STEM_RING) * prow + C : dump;
            stem_wino_pair(j, o0, o1, V, M, r1, zero, j->u2, n2);
            if (n2 >= 0) bias_relu_rows(o0, j->b2, W1, C);
            if (n2 + 1 < H1) bias_relu_rows(o1, j->b2, W1, C);
        }
        stem_wino_pair(j, t0, t1, V, M, r2, zero, j->u3, y);
        bias_relu_to_patches(j, b, y, t0);
        bias_relu_to_patches(j, b, y + 1, t1);
    }
}
#endif

static void stem_eval_part(void *arg, int tid, int nt) {
    stem_eval_job *j = arg;
    float *ws = j->scratch + (size_t)tid * j->per_thread;
    size_t lo, hi;
    tl_split((size_t)j->B * j->g, tid, nt, &lo, &hi); /* token rows (b, ty) */
    while (lo < hi) {
        int b = (int)(lo / (size_t)j->g), t0 = (int)(lo % (size_t)j->g);
        size_t end = ((size_t)b + 1) * j->g < hi ? ((size_t)b + 1) * j->g : hi;
        int t1 = (int)(end - (size_t)b * j->g);
#if defined(__x86_64__)
        if (j->u2)
            stem_eval_rows_wino(j, ws, b, t0 * j->k, t1 * j->k);
        else
#endif
            stem_eval_rows(j, ws, b, t0 * j->k, t1 * j->k);
        lo = end;
    }
}

void tl_stem_eval_forward(tl_pool *p, float *patches, const float *images, const float *w1, const float *b1,
                          const float *w2, const float *b2, const float *w3, const float *b3, int B, int C, int H,
                          int k, float *scratch) {
    int W1 = tl_conv_out(H, 7, 2, 3);
    stem_eval_job j = {.patches = patches, .img = images, .w1 = w1, .b1 = b1, .w2 = w2, .b2 = b2, .w3 = w3, .b3 = b3,
                       .B = B, .C = C, .H = H, .W1 = W1, .k = k, .g = W1 / k, .scratch = scratch};
#if defined(__x86_64__)
    j.avx512 = C == 64 && tl_cpu_avx512();
    if (j.avx512 && k % 2 == 0 && W1 % 2 == 0) { /* row pairs never straddle two threads' token rows */
        winograd_weights(scratch, w2);
        winograd_weights(scratch + 16 * 64 * 64, w3);
        j.u2 = scratch, j.u3 = scratch + 16 * 64 * 64;
    }
#endif
    j.scratch = scratch + (size_t)32 * C * C;
    j.per_thread = stem_eval_per_thread(C, W1);
    tl_pool_run(p, stem_eval_part, &j);
}

/* Folds eval BatchNorm into conv weights: conv1 as (ci,ky,kx,Cout), conv2/3
 * as (ky,kx,Cin,Cout), each column scaled by gamma/sqrt(var+eps), and
 * bias = beta - mean * scale. */
void tl_stem_eval_fold(float *wt /*packed*/, float *bias /*(C)*/, const float *w /*(Cout,Cin,k,k)*/,
                       const float *gamma, const float *beta, const float *rmean, const float *rvar, int Cout,
                       int Cin, int k, int first, float eps) {
    for (int co = 0; co < Cout; co++) {
        float s = gamma[co] * (1.0f / sqrtf(rvar[co] + eps));
        bias[co] = beta[co] - rmean[co] * s;
        for (int ci = 0; ci < Cin; ci++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    size_t r = first ? ((size_t)ci * k + ky) * k + kx : ((size_t)ky * k + kx) * Cin + ci;
                    wt[r * Cout + co] = w[(((size_t)co * Cin + ci) * k + ky) * k + kx] * s;
                }
    }
}
