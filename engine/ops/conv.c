/*
 * conv.c: convolution without bias in NHWC (tl_conv2d_forward/backward):
 * im2col + sgemm for any kernel, stride and padding, and the dispatch of the
 * stem's 3x3 convolutions of 64 (32 at AVX2) channels to the row path
 * (conv_rows.c, winograd.c) at the AVX-512 and AVX2 kernel levels
 * (tl_isa()); weight packing.
 *
 * Owns nothing; scratch comes from the caller. Activations are (B,H,W,C), so
 * im2col copies runs of C contiguous floats and every GEMM has the 64-wide
 * channel dimension as its inner, contiguous one. Weights are used packed as
 * (k,k,Cin,Cout) (tl_conv_weight_pack); PyTorch order is restored for their
 * gradients by tl_conv_weight_unpack_accum.
 *
 * Work split: output pixels are cut into chunks of TL_CONV_CHUNK rows so each
 * thread's im2col buffer stays in its L2 cache; chunks are dealt to threads in
 * a fixed order and weight-gradient partials are summed in thread order, so
 * results are deterministic for a given thread count.
 *
 * 64-channel stems (lvvit_t/s/m) at the AVX-512 or AVX2 level, and 32-channel
 * ones (the small models) at AVX2, skip im2col and OpenBLAS for conv2 and
 * conv3 (the row path, conv_rows.c). Where output
 * rows come in whole pairs (even heights and widths: lvvit_t's 112x112), the
 * forward, input-gradient and weight-gradient convolutions use Winograd
 * F(2x2,3x3) instead (winograd.c: 2.25x fewer multiplications; about 1e-6
 * relative rounding difference from the direct sum).
 */
#include "core/blas.h"
#include "ops/conv_internal.h"
#include "ops/ops.h"
#include "core/simd.h"

#include <string.h>

#define TL_CONV_CHUNK 1024 /* output pixels per im2col tile */

size_t tl_conv2d_scratch(int nthreads, int Cin, int Cout, int Ho, int Wo, int k) {
    (void)Ho;
    size_t col = (size_t)TL_CONV_CHUNK * Cin * k * k;
    size_t dw = (size_t)Cout * Cin * k * k;
    /* the row path (3x3, C to C): flipped and Winograd weights, and per thread its rows (tl_conv_rows_per_thread) */
    size_t rows = k == 3 && Cin == Cout ? (size_t)25 * Cin * Cout + (size_t)nthreads * tl_conv_rows_per_thread(Wo, Cin) : 0;
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
TL_VEC_FN(col2im, (const conv_job *j, const float *col, size_t p0, size_t p1), (j, col, p0, p1)) {
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

/* The row path (conv_rows.c) takes a 3x3, stride 1, pad 1 convolution of C
 * channels to C in NHWC: C = 64 at the AVX-512 and AVX2 levels, C = 32 at
 * AVX2 (tl_conv_rows_ok). */
static int conv_rows_ok(const conv_job *j) {
    return !j->nchw && j->k == 3 && j->stride == 1 && j->pad == 1 && j->Cin == j->Cout &&
           tl_conv_rows_ok(j->Cin, tl_isa());
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
        tl_winograd_weights(U, wt, Cin);
        tl_conv_rows_job r = {.out = out, .in = in, .w = wt, .U = U, .B = B, .H = H, .W = W, .C = Cin, .isa = tl_isa(),
                              .scratch = U + (size_t)16 * Cin * Cin};
        tl_pool_run(p, tl_conv_rows_part, &r);
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

TL_VEC_FN(reduce_part, (void *arg, int tid, int nt), (arg, tid, nt)) {
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
        size_t CC = (size_t)Cin * Cin;
        float *parts = scratch + (size_t)nt * col_floats(&j), *wf = parts + (size_t)nt * dw_floats(&j);
        float *U = wf + 9 * CC, *rings = U + 16 * CC;
        float *uparts = scratch; /* the im2col buffers (nt x 1024 x 9C floats) are unused on the row path */
        tl_conv_dw_rows_job dj = {.in = in, .dout = dout, .parts = parts, .uparts = uparts, .scratch = rings, .B = B,
                                  .H = H, .W = W, .C = Cin, .isa = tl_isa()};
        tl_pool_run(p, tl_conv_dw_rows_part, &dj);
        reduce_job r = {dwt, parts, dw_floats(&j), nt};
        tl_pool_run(p, reduce_part, &r);
        memset(U, 0, sizeof(float) * 16 * CC); /* U first sums the dU partials */
        reduce_job ru = {U, uparts, 16 * CC, nt};
        tl_pool_run(p, reduce_part, &ru);
        tl_winograd_dw_accum(dwt, U, Cin);
        if (!j.din) return;
        /* flip(w)^T: (ky,kx,co,ci) from wt's (2-ky,2-kx,ci,co) */
        for (int t = 0; t < 9; t++)
            for (int co = 0; co < Cin; co++)
                for (int ci = 0; ci < Cin; ci++)
                    wf[((size_t)t * Cin + co) * Cin + ci] = wt[((size_t)(8 - t) * Cin + ci) * Cin + co];
        tl_winograd_weights(U, wf, Cin);
        tl_conv_rows_job rj = {.out = j.din, .in = dout, .w = wf, .U = U, .B = B, .H = H, .W = W, .C = Cin,
                               .isa = dj.isa, .scratch = rings};
        tl_pool_run(p, tl_conv_rows_part, &rj);
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
