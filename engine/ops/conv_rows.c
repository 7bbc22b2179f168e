/*
 * conv_rows.c: the row path of the stem's 3x3 convolutions of C channels to
 * C in training (C = 64 at the AVX-512 and AVX2 levels, C = 32 at AVX2: the
 * small models' stems), on the register-blocked kernels of gemm64_avx512.h or
 * gemm_stem_avx2.h (which read 3x3 windows straight from zero-padded rows)
 * and on Winograd (winograd.c): conv2's and conv3's forward, input gradient
 * and weight gradient, row by row without im2col or OpenBLAS. OpenBLAS
 * repacks both operands on every call, which for these shapes (N = C) cost
 * about a third of the stem's time. The fused eval stem (stem_eval.c) uses
 * the same kernels.
 *
 * Owns nothing; scratch comes from the caller (conv.c). The row-path parts
 * run on the pool's threads, each output row (or row pair) written by one
 * thread with the same arithmetic whatever the split. The job names the
 * kernel level (TL_ISA_AVX512 or TL_ISA_AVX2, read once by conv.c); on other
 * targets the parts do nothing and are never run.
 */
#include "ops/conv_internal.h"

#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/pool.h"
#include "core/simd.h"
#include "ops/gemm_stem_avx2.h"
#include "ops/gemm64_avx512.h"
#include "ops/gemm_avx2.h"
#include "ops/gemm_avx512.h"

int tl_conv_rows_ok(int C, int isa) {
#if defined(__x86_64__)
    return (C == 64 && isa >= TL_ISA_AVX2) || (C == 32 && isa == TL_ISA_AVX2);
#else
    (void)C, (void)isa;
    return 0;
#endif
}

/* Per thread on the row path: a ring of 4 zero-padded C-channel rows and a
 * zero row, and the Winograd tiles of a row pair (V and M, 16 x W/2 x C each). */
size_t tl_conv_rows_per_thread(int W, int C) {
    return ((size_t)5 * (W + 2) * C + (size_t)2 * 16 * ((W + 1) / 2) * C + 15) & ~(size_t)15;
}

/* ---- the row path: a 3x3, stride 1, pad 1 convolution of C channels to C
 * in NHWC (the stem's conv2 and conv3) runs row by row on the level's kernel,
 * for the forward (input rows against the weights) and the input gradient
 * (output-gradient rows against the weights flipped in space and transposed
 * in channels: din = conv(dout, flip(w)^T)), without im2col or col2im, and
 * for the weight gradient (input window rows^T x output-gradient rows). Each
 * output row is written by one thread, with the same arithmetic whatever the
 * split. */

#if defined(__x86_64__)
/* A thread's ring of 4 zero-padded input rows and a zero row: rows[i] = the
 * padded row y-1+i of image b, copied in only when not held already. */
typedef struct {
    float *ring, *zero;
    size_t prow;
    int held[4], held_b, C;
} row_ring;

static void ring_init(row_ring *g, float *mem, int W, int C) {
    g->C = C;
    g->prow = (size_t)(W + 2) * C;
    g->ring = mem, g->zero = mem + 4 * g->prow;
    memset(g->zero, 0, sizeof(float) * g->prow);
    for (int r = 0; r < 4; r++) {
        memset(g->ring + r * g->prow, 0, sizeof(float) * (size_t)C);
        memset(g->ring + r * g->prow + (size_t)(W + 1) * C, 0, sizeof(float) * (size_t)C);
        g->held[r] = -1;
    }
    g->held_b = -1;
}

static void ring_rows(row_ring *g, const float **rows, int n, const float *in /*(B,H,W,C)*/, int b, int y, int H,
                      int W) {
    int C = g->C;
    if (b != g->held_b) g->held[0] = g->held[1] = g->held[2] = g->held[3] = -1, g->held_b = b;
    for (int i = 0; i < n; i++) {
        int iy = y - 1 + i, slot = (iy + 4) % 4;
        if (iy < 0 || iy >= H) {
            rows[i] = g->zero;
            continue;
        }
        if (g->held[slot] != iy) {
            memcpy(g->ring + slot * g->prow + C, in + ((size_t)b * H + iy) * W * C, sizeof(float) * (size_t)W * C);
            g->held[slot] = iy;
        }
        rows[i] = g->ring + slot * g->prow;
    }
}

/* The AVX2 Winograd row pair goes in chunks of about WINO_CHUNK2 tiles: a
 * chunk's V and M (16 x 18 x 64 floats each, 74 KB) stay in a 512 KB L2
 * with U (256 KB), where a whole 112-pixel pair's (229 KB each) spilled to
 * L3. Tiles are independent and a weight-gradient chunk continues the same
 * sum in order, so the results are those of one pass. A remainder under 6
 * tiles (one register block) joins the chunk before it. */
#define WINO_CHUNK2 18
static int wino_chunk(int t0, int tiles) {
    int left = tiles - t0;
    return left < WINO_CHUNK2 + 6 ? left : WINO_CHUNK2;
}

void tl_winograd_pair_avx2(float *out0, float *out1, const float *const rows[4], const float *U, float *V, float *M,
                           int tiles, int C) {
    for (int t0 = 0, tc; t0 < tiles; t0 += tc) {
        tc = wino_chunk(t0, tiles);
        size_t off = (size_t)2 * t0 * C, plane = (size_t)tc * C;
        const float *r[4] = {rows[0] + off, rows[1] + off, rows[2] + off, rows[3] + off};
        tl_winograd_in_avx2(V, r, tc, C);
        for (int xi = 0; xi < 16; xi++)
            tl_gemm_rows_avx2(M + xi * plane, (size_t)C, V + xi * plane, (size_t)C, C, U + (size_t)xi * C * C,
                              (size_t)C, tc, C, 1.0f);
        tl_winograd_out_avx2(out0 + off, out1 + off, M, tc, C);
    }
}

void tl_winograd_pair_dw_avx2(float *dU, const float *const rows[4], const float *d0, const float *d1, float *V,
                              float *Z, int tiles, int C) {
    for (int t0 = 0, tc; t0 < tiles; t0 += tc) {
        tc = wino_chunk(t0, tiles);
        size_t off = (size_t)2 * t0 * C, plane = (size_t)tc * C;
        const float *r[4] = {rows[0] + off, rows[1] + off, rows[2] + off, rows[3] + off};
        tl_winograd_in_avx2(V, r, tc, C);
        tl_winograd_dout_avx2(Z, d0 + off, d1 + off, tc, C);
        for (int xi = 0; xi < 16; xi++)
            tl_gemm_stem_tn_acc_avx2(dU + (size_t)xi * C * C, V + xi * plane, C, C, Z + xi * plane, tc, C);
    }
}
#endif

/* Work units are row pairs (b, y0 = 2u): by Winograd when the pair is whole
 * and W is even, else row by row on the direct kernel. */
void tl_conv_rows_part(void *arg, int tid, int nt) {
#if defined(__x86_64__)
    tl_conv_rows_job *j = arg;
    int H = j->H, W = j->W, C = j->C, pairs = (H + 1) / 2, tiles = W / 2, avx512 = j->isa == TL_ISA_AVX512;
    float *mem = j->scratch + (size_t)tid * tl_conv_rows_per_thread(W, C);
    float *V = mem + (size_t)5 * (W + 2) * C, *M = V + (size_t)16 * ((W + 1) / 2) * C;
    size_t lo, hi;
    row_ring g;
    ring_init(&g, mem, W, C);
    tl_split((size_t)j->B * pairs, tid, nt, &lo, &hi);
    for (size_t u = lo; u < hi; u++) {
        int b = (int)(u / (size_t)pairs), y0 = 2 * (int)(u % (size_t)pairs);
        float *out = j->out + ((size_t)b * H + y0) * W * C;
        const float *rows[4];
        if (j->U && y0 + 1 < H && W % 2 == 0) {
            ring_rows(&g, rows, 4, j->in, b, y0, H, W);
            if (avx512) {
                tl_winograd_in(V, rows, tiles);
                for (int xi = 0; xi < 16; xi++)
                    tl_gemm_rows_avx512(M + (size_t)xi * tiles * 64, 64, V + (size_t)xi * tiles * 64, 64, 64,
                                        j->U + (size_t)xi * 64 * 64, 64, tiles, 64);
                tl_winograd_out(out, out + (size_t)W * 64, M, tiles);
            } else {
                tl_winograd_pair_avx2(out, out + (size_t)W * C, rows, j->U, V, M, tiles, C);
            }
            continue;
        }
        for (int y = y0; y < y0 + 2 && y < H; y++) {
            ring_rows(&g, rows, 3, j->in, b, y, H, W);
            if (avx512)
                tl_gemm64_avx512(out + (size_t)(y - y0) * W * 64, rows, 3, 64, 192, j->w, W);
            else
                tl_gemm_stem_avx2(out + (size_t)(y - y0) * W * C, rows, 3, C, 3 * C, j->w, W, C);
        }
    }
#else
    (void)arg, (void)tid, (void)nt;
#endif
}

/* See tl_conv_dw_rows_job (conv_internal.h). */
void tl_conv_dw_rows_part(void *arg, int tid, int nt) {
#if defined(__x86_64__)
    tl_conv_dw_rows_job *j = arg;
    int H = j->H, W = j->W, C = j->C, pairs = (H + 1) / 2, tiles = W / 2, avx512 = j->isa == TL_ISA_AVX512;
    float *dwp = j->parts + (size_t)tid * 9 * C * C, *dup = j->uparts + (size_t)tid * 16 * C * C;
    float *mem = j->scratch + (size_t)tid * tl_conv_rows_per_thread(W, C);
    float *V = mem + (size_t)5 * (W + 2) * C, *Z = V + (size_t)16 * ((W + 1) / 2) * C;
    size_t lo, hi;
    row_ring g;
    memset(dwp, 0, sizeof(float) * 9 * C * C);
    memset(dup, 0, sizeof(float) * 16 * C * C);
    ring_init(&g, mem, W, C);
    tl_split((size_t)j->B * pairs, tid, nt, &lo, &hi);
    for (size_t u = lo; u < hi; u++) {
        int b = (int)(u / (size_t)pairs), y0 = 2 * (int)(u % (size_t)pairs);
        const float *dout = j->dout + ((size_t)b * H + y0) * W * C;
        const float *rows[4];
        if (y0 + 1 < H && W % 2 == 0) {
            ring_rows(&g, rows, 4, j->in, b, y0, H, W);
            if (avx512) {
                tl_winograd_in(V, rows, tiles);
                tl_winograd_dout(Z, dout, dout + (size_t)W * 64, tiles);
                for (int xi = 0; xi < 16; xi++)
                    tl_gemm64_tn_acc_avx512(dup + (size_t)xi * 64 * 64, V + (size_t)xi * tiles * 64, 64, 64,
                                            Z + (size_t)xi * tiles * 64, tiles);
            } else {
                tl_winograd_pair_dw_avx2(dup, rows, dout, dout + (size_t)W * C, V, Z, tiles, C);
            }
            continue;
        }
        for (int y = y0; y < y0 + 2 && y < H; y++) {
            ring_rows(&g, rows, 3, j->in, b, y, H, W);
            const float *drow = dout + (size_t)(y - y0) * W * C;
            for (int ky = 0; ky < 3; ky++) {
                if (avx512)
                    tl_gemm64_tn_acc_avx512(dwp + (size_t)ky * 192 * 64, rows[ky], 64, 192, drow, W);
                else
                    tl_gemm_stem_tn_acc_avx2(dwp + (size_t)ky * 3 * C * C, rows[ky], C, 3 * C, drow, W, C);
            }
        }
    }
#else
    (void)arg, (void)tid, (void)nt;
#endif
}
