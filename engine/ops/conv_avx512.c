/*
 * conv_avx512.c: the AVX-512 row path of the stem's 64-channel 3x3
 * convolutions, built on the register-blocked kernels of gemm64_avx512.h
 * (which read 3x3 windows straight from zero-padded rows) and on Winograd
 * (winograd.c): conv2's and
 * conv3's forward, input gradient and weight gradient in training, row by
 * row without im2col or OpenBLAS. OpenBLAS repacks both operands on every
 * call, which for these shapes (N = 64) cost about a third of the stem's
 * time. The fused eval stem (stem_eval.c) uses the same kernels.
 *
 * Owns nothing; scratch comes from the caller (conv.c). The row-path parts
 * run on the pool's threads, each output row (or row pair) written by one
 * thread with the same arithmetic whatever the split. Only called when
 * tl_cpu_avx512(); on other targets the parts do nothing and are never run.
 */
#include "ops/conv_internal.h"

#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/pool.h"
#include "ops/gemm64_avx512.h"
#include "ops/gemm_avx512.h"

/* Per thread on the row path: a ring of 4 zero-padded 64-channel rows and a
 * zero row, and the Winograd tiles of a row pair (V and M, 16 x W/2 x 64 each). */
size_t tl_conv_rows_per_thread(int W) {
    return ((size_t)5 * (W + 2) * 64 + (size_t)2 * 16 * ((W + 1) / 2) * 64 + 15) & ~(size_t)15;
}

/* ---- the row path: a 3x3, stride 1, pad 1 convolution of 64 channels to 64
 * in NHWC (the stem's conv2 and conv3) runs row by row on the AVX-512 kernel
 * when the CPU has it, for the forward (input rows against the weights) and
 * the input gradient (output-gradient rows against the weights flipped in
 * space and transposed in channels: din = conv(dout, flip(w)^T)), without
 * im2col or col2im. Each output row is written by one thread, with the same
 * arithmetic whatever the split. The weight gradient stays im2col + sgemm. */

/* A thread's ring of 4 zero-padded input rows and a zero row: rows[i] = the
 * padded row y-1+i of image b, copied in only when not held already. */
#if defined(__x86_64__)
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
#endif

/* Work units are row pairs (b, y0 = 2u): by Winograd when the pair is whole
 * and W is even, else row by row on the direct kernel. */
void tl_conv_rows_part(void *arg, int tid, int nt) {
#if defined(__x86_64__)
    tl_conv_rows_job *j = arg;
    int H = j->H, W = j->W, pairs = (H + 1) / 2, tiles = W / 2;
    float *mem = j->scratch + (size_t)tid * tl_conv_rows_per_thread(W);
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
            tl_winograd_in(V, rows, tiles);
            for (int xi = 0; xi < 16; xi++)
                tl_gemm_rows_avx512(M + (size_t)xi * tiles * 64, 64, V + (size_t)xi * tiles * 64, 64, 64,
                                    j->U + (size_t)xi * 64 * 64, 64, tiles, 64);
            tl_winograd_out(out, out + (size_t)W * 64, M, tiles);
            continue;
        }
        for (int y = y0; y < y0 + 2 && y < H; y++) {
            ring_rows(&g, rows, 3, j->in, b, y, H, W);
            tl_gemm64_avx512(out + (size_t)(y - y0) * W * 64, rows, 3, 64, 192, j->w, W);
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
    int H = j->H, W = j->W, pairs = (H + 1) / 2, tiles = W / 2;
    float *dwp = j->parts + (size_t)tid * 9 * 64 * 64, *dup = j->uparts + (size_t)tid * 16 * 64 * 64;
    float *mem = j->scratch + (size_t)tid * tl_conv_rows_per_thread(W);
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
            tl_winograd_in(V, rows, tiles);
            tl_winograd_dout(Z, dout, dout + (size_t)W * 64, tiles);
            for (int xi = 0; xi < 16; xi++)
                tl_gemm64_tn_acc_avx512(dup + (size_t)xi * 64 * 64, V + (size_t)xi * tiles * 64, 64, 64,
                                     Z + (size_t)xi * tiles * 64, tiles);
            continue;
        }
        for (int y = y0; y < y0 + 2 && y < H; y++) {
            ring_rows(&g, rows, 3, j->in, b, y, H, W);
            for (int ky = 0; ky < 3; ky++)
                tl_gemm64_tn_acc_avx512(dwp + (size_t)ky * 192 * 64, rows[ky], 64, 192, dout + (size_t)(y - y0) * W * 64,
                                     W);
        }
    }
#else
    (void)arg, (void)tid, (void)nt;
#endif
}
