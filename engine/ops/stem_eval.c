/*
 * stem_eval.c: the eval-mode stem, fused (tl_stem_eval_forward): conv1+BN+
 * ReLU, conv2+BN+ReLU, conv3+BN+ReLU and the patch gather, row by row per
 * image so the stem's activations stay in each thread's L2 cache; and the
 * folding of eval BatchNorm into the convolutions' weights
 * (tl_stem_eval_fold). With 64 channels at the AVX-512 or AVX2 level, or 32
 * at AVX2 (tl_isa(), tl_conv_rows_ok), the rows are computed by the row
 * kernels of gemm64_avx512.h or gemm_stem_avx2.h and, for whole row pairs, by
 * Winograd (winograd.c).
 *
 * Owns nothing; scratch comes from the caller. The pipeline is described
 * below; the work split is over the batch's token rows.
 */
#include "core/blas.h"
#include "ops/conv_internal.h"
#include "ops/gemm_stem_avx2.h"
#include "ops/gemm64_avx512.h"
#include "ops/gemm_avx2.h"
#include "ops/gemm_avx512.h"
#include "ops/ops.h"
#include "core/simd.h"

#include <math.h>
#include <string.h>

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
    int isa; /* tl_conv_rows_ok(C): that level's own kernels; else TL_ISA_GENERIC: im2col + sgemm */
    const float *u2, *u3; /* conv2/conv3 in the Winograd domain (16,C,C), or NULL: row by row */
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
TL_VEC_FN(bias_relu_rows, (float *y, const float *b, int n, int C), (y, b, n, C)) {
    for (int r = 0; r < n; r++) {
        float *o = y + (size_t)r * C;
        for (int c = 0; c < C; c++) {
            float v = o[c] + b[c];
            o[c] = v > 0.0f ? v : 0.0f;
        }
    }
}

/* patch row segments of a3 row y: dst = max(src + b, 0) */
TL_VEC_FN(bias_relu_to_patches, (const stem_eval_job *j, int b, int y, const float *src), (j, b, y, src)) {
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
    const float *a = col;
    if (j->isa == TL_ISA_AVX512) {
        tl_gemm64_avx512(out, &a, 1, 147, 147, j->w1, W1);
        return;
    }
    if (j->isa == TL_ISA_AVX2) {
        tl_gemm_stem_avx2(out, &a, 1, 147, 147, j->w1, W1, C);
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
    if (j->isa == TL_ISA_AVX512) {
        tl_gemm64_avx512(out, rows, 3, C, 3 * C, w, W1);
        return;
    }
    if (j->isa == TL_ISA_AVX2) {
        tl_gemm_stem_avx2(out, rows, 3, C, 3 * C, w, W1, C);
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

/* Two output rows (oy, oy+1) of a 3x3 convolution of C channels by Winograd
 * F(2x2,3x3), before bias and ReLU. */
static void stem_wino_pair(const stem_eval_job *j, float *out0, float *out1, float *V, float *M, const float *ring,
                           const float *zero, const float *U, int oy) {
    int W1 = j->W1, tiles = W1 / 2;
    const float *rows[4];
    rows_4(rows, ring, zero, W1, (size_t)(W1 + 2) * j->C, oy);
    if (j->isa == TL_ISA_AVX512) {
        tl_winograd_in(V, rows, tiles);
        for (int xi = 0; xi < 16; xi++)
            tl_gemm_rows_avx512(M + (size_t)xi * tiles * 64, 64, V + (size_t)xi * tiles * 64, 64, 64,
                                U + (size_t)xi * 64 * 64, 64, tiles, 64);
        tl_winograd_out(out0, out1, M, tiles);
        return;
    }
    tl_winograd_pair_avx2(out0, out1, rows, U, V, M, tiles, j->C);
}

/* a3 rows [y0, y1) of image b, both even, in pairs: a3 pair (y, y+1) needs
 * a2 rows y-1 .. y+2, made as the pairs (y-1, y) and (y+1, y+2) (a2 pairs
 * start at odd rows), which need a1 rows y-2 .. y+3, made one by one. A pair
 * half outside the image (a2 row -1 or H1) goes to a scratch row: the rows
 * above and below the image read as the zero row. */
static void stem_eval_rows_wino(const stem_eval_job *j, float *ws, int b, int y0, int y1) {
    int C = j->C, W1 = j->W1, H1 = j->W1, H = j->H;
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
    j.isa = tl_conv_rows_ok(C, tl_isa()) ? tl_isa() : TL_ISA_GENERIC;
    if (j.isa != TL_ISA_GENERIC && k % 2 == 0 && W1 % 2 == 0) { /* row pairs never straddle two threads' token rows */
        tl_winograd_weights(scratch, w2, C);
        tl_winograd_weights(scratch + (size_t)16 * C * C, w3, C);
        j.u2 = scratch, j.u3 = scratch + (size_t)16 * C * C;
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
