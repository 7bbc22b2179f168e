/*
 * ops_conv.c: the convolutional stem: im2col convolution, BatchNorm (+ReLU)
 * and the non-overlapping patch projection's gather/scatter.
 *
 * Owns nothing; scratch comes from the caller. With at least as many images as
 * threads, each thread convolves whole images (im2col into its own slice of
 * scratch, one sgemm, its own dw partial); with fewer images, each image's
 * im2col and GEMM are split over the threads instead. dw partials are summed
 * in thread order, so results are deterministic for a given thread count.
 */
#include "blas.h"
#include "ops.h"

#include <math.h>
#include <string.h>

size_t tl_conv2d_scratch(int nthreads, int Cin, int Cout, int Ho, int Wo, int k) {
    size_t col = (size_t)Cin * k * k * Ho * Wo;
    size_t dw = (size_t)Cout * Cin * k * k;
    return (size_t)nthreads * (col + dw);
}

typedef struct {
    float *out, *din, *dw;
    const float *in, *dout, *w;
    int cs, bs, B, Cin, H, W, Cout, k, stride, pad, Ho, Wo;
    float *scratch;
    int img;         /* image being processed in the inner-parallel mode */
    float *col;      /* the shared col buffer in the inner-parallel mode */
} conv_job;

/* col rows [r0, r1) of image b: row r = (c*k + ky)*k + kx, column oy*Wo + ox. */
static void im2col_rows(const conv_job *j, int b, float *col, size_t r0, size_t r1) {
    const int k = j->k, HoWo = j->Ho * j->Wo;
    for (size_t r = r0; r < r1; r++) {
        int c = (int)(r / (size_t)(k * k)), ky = (int)(r / (size_t)k % (size_t)k), kx = (int)(r % (size_t)k);
        const float *src = j->in + (size_t)c * j->cs + (size_t)b * j->bs;
        float *dst = col + r * (size_t)HoWo;
        for (int oy = 0; oy < j->Ho; oy++) {
            int iy = oy * j->stride - j->pad + ky;
            float *d = dst + (size_t)oy * j->Wo;
            if (iy < 0 || iy >= j->H) {
                memset(d, 0, sizeof(float) * (size_t)j->Wo);
                continue;
            }
            const float *s = src + (size_t)iy * j->W;
            if (j->stride == 1) {
                int ox0 = j->pad - kx; /* first ox with ix >= 0 */
                for (int ox = 0; ox < j->Wo; ox++) {
                    int ix = ox - ox0;
                    d[ox] = (ix >= 0 && ix < j->W) ? s[ix] : 0.0f;
                }
            } else {
                for (int ox = 0; ox < j->Wo; ox++) {
                    int ix = ox * j->stride - j->pad + kx;
                    d[ox] = (ix >= 0 && ix < j->W) ? s[ix] : 0.0f;
                }
            }
        }
    }
}

/* Adds col rows of channels [c0, c1) back into din for image b (din zeroed by caller). */
static void col2im_channels(const conv_job *j, int b, const float *col, int c0, int c1) {
    const int k = j->k, HoWo = j->Ho * j->Wo;
    for (int c = c0; c < c1; c++) {
        float *dst = j->din + (size_t)c * j->cs + (size_t)b * j->bs;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                const float *src = col + ((size_t)(c * k + ky) * k + kx) * HoWo;
                for (int oy = 0; oy < j->Ho; oy++) {
                    int iy = oy * j->stride - j->pad + ky;
                    if (iy < 0 || iy >= j->H) continue;
                    float *d = dst + (size_t)iy * j->W;
                    const float *s = src + (size_t)oy * j->Wo;
                    for (int ox = 0; ox < j->Wo; ox++) {
                        int ix = ox * j->stride - j->pad + kx;
                        if (ix >= 0 && ix < j->W) d[ix] += s[ox];
                    }
                }
            }
    }
}

static void zero_image(const conv_job *j, int b, int c0, int c1) {
    for (int c = c0; c < c1; c++) memset(j->din + (size_t)c * j->cs + (size_t)b * j->bs, 0, sizeof(float) * (size_t)j->H * j->W);
}

static size_t col_size(const conv_job *j) { return (size_t)j->Cin * j->k * j->k * j->Ho * j->Wo; }
static size_t dw_size(const conv_job *j) { return (size_t)j->Cout * j->Cin * j->k * j->k; }

/* ---- forward ---- */
static void conv_fwd_images(void *arg, int tid, int nt) {
    conv_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->B, tid, nt, &lo, &hi);
    float *col = j->scratch + (size_t)tid * col_size(j);
    int KK = j->Cin * j->k * j->k, HoWo = j->Ho * j->Wo;
    for (size_t b = lo; b < hi; b++) {
        im2col_rows(j, (int)b, col, 0, (size_t)KK);
        tl_sgemm(0, 0, j->Cout, HoWo, KK, 1.0f, j->w, KK, col, HoWo, 0.0f, j->out + b * (size_t)HoWo,
                 j->B * HoWo);
    }
}

static void conv_im2col_part(void *arg, int tid, int nt) {
    conv_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->Cin * j->k * j->k, tid, nt, &lo, &hi);
    im2col_rows(j, j->img, j->col, lo, hi);
}

void tl_conv2d_forward(tl_pool *p, float *out, const float *in, int in_cstride, int in_bstride, const float *w,
                       int B, int Cin, int H, int W, int Cout, int k, int stride, int pad, float *scratch) {
    conv_job j = {.out = out, .in = in, .w = w, .cs = in_cstride, .bs = in_bstride, .B = B, .Cin = Cin, .H = H,
                  .W = W, .Cout = Cout, .k = k, .stride = stride, .pad = pad, .scratch = scratch};
    j.Ho = tl_conv_out(H, k, stride, pad);
    j.Wo = tl_conv_out(W, k, stride, pad);
    int nt = tl_pool_size(p);
    if (B >= nt) {
        tl_pool_run(p, conv_fwd_images, &j);
        return;
    }
    int KK = Cin * k * k, HoWo = j.Ho * j.Wo;
    j.col = scratch;
    for (int b = 0; b < B; b++) {
        j.img = b;
        tl_pool_run(p, conv_im2col_part, &j);
        tl_gemm(p, 0, 0, Cout, HoWo, KK, 1.0f, w, KK, j.col, HoWo, 0.0f, out + (size_t)b * HoWo, B * HoWo);
    }
}

/* ---- backward ---- */
static void conv_bwd_images(void *arg, int tid, int nt) {
    conv_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->B, tid, nt, &lo, &hi);
    float *col = j->scratch + (size_t)tid * col_size(j);
    float *dwp = j->scratch + (size_t)nt * col_size(j) + (size_t)tid * dw_size(j);
    memset(dwp, 0, sizeof(float) * dw_size(j));
    int KK = j->Cin * j->k * j->k, HoWo = j->Ho * j->Wo, ld = j->B * HoWo;
    for (size_t b = lo; b < hi; b++) {
        const float *dout = j->dout + b * (size_t)HoWo;
        im2col_rows(j, (int)b, col, 0, (size_t)KK);
        tl_sgemm(0, 1, j->Cout, KK, HoWo, 1.0f, dout, ld, col, HoWo, 1.0f, dwp, KK);
        if (!j->din) continue;
        tl_sgemm(1, 0, KK, HoWo, j->Cout, 1.0f, j->w, KK, dout, ld, 0.0f, col, HoWo);
        zero_image(j, (int)b, 0, j->Cin);
        col2im_channels(j, (int)b, col, 0, j->Cin);
    }
}

typedef struct {
    float *dw;
    const float *parts;
    size_t n;
    int nparts;
} reduce_job;

static void reduce_part(void *arg, int tid, int nt) {
    reduce_job *r = arg;
    size_t lo, hi;
    tl_split(r->n, tid, nt, &lo, &hi);
    for (int t = 0; t < r->nparts; t++) {
        const float *src = r->parts + (size_t)t * r->n;
        for (size_t i = lo; i < hi; i++) r->dw[i] += src[i];
    }
}

static void conv_col2im_part(void *arg, int tid, int nt) {
    conv_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->Cin, tid, nt, &lo, &hi);
    zero_image(j, j->img, (int)lo, (int)hi);
    col2im_channels(j, j->img, j->col, (int)lo, (int)hi);
}

void tl_conv2d_backward(tl_pool *p, float *din, float *dw, const float *dout, const float *in, int in_cstride,
                        int in_bstride, const float *w, int B, int Cin, int H, int W, int Cout, int k, int stride,
                        int pad, float *scratch) {
    conv_job j = {.din = din, .dw = dw, .dout = dout, .in = in, .w = w, .cs = in_cstride, .bs = in_bstride, .B = B,
                  .Cin = Cin, .H = H, .W = W, .Cout = Cout, .k = k, .stride = stride, .pad = pad,
                  .scratch = scratch};
    j.Ho = tl_conv_out(H, k, stride, pad);
    j.Wo = tl_conv_out(W, k, stride, pad);
    int nt = tl_pool_size(p);
    if (B >= nt) {
        tl_pool_run(p, conv_bwd_images, &j);
        reduce_job r = {dw, scratch + (size_t)nt * col_size(&j), dw_size(&j), nt};
        tl_pool_run(p, reduce_part, &r);
        return;
    }
    int KK = Cin * k * k, HoWo = j.Ho * j.Wo, ld = B * HoWo;
    j.col = scratch;
    for (int b = 0; b < B; b++) {
        j.img = b;
        tl_pool_run(p, conv_im2col_part, &j);
        tl_gemm(p, 0, 1, Cout, KK, HoWo, 1.0f, dout + (size_t)b * HoWo, ld, j.col, HoWo, 1.0f, dw, KK);
        if (!din) continue;
        tl_gemm(p, 1, 0, KK, HoWo, Cout, 1.0f, w, KK, dout + (size_t)b * HoWo, ld, 0.0f, j.col, HoWo);
        tl_pool_run(p, conv_col2im_part, &j);
    }
}

/* ---- BatchNorm (+ReLU), channel-major ---- */
typedef struct {
    float *y, *mean, *rstd, *dx, *dgamma, *dbeta;
    const float *x, *dy, *yv, *gamma, *beta, *cmean, *crstd;
    float *run_mean, *run_var;
    int C;
    size_t M;
    int train, relu;
    float momentum, eps;
} bn_job;

static void bn_fwd_part(void *arg, int tid, int nt) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->C, tid, nt, &lo, &hi);
    for (size_t c = lo; c < hi; c++) {
        const float *x = j->x + c * j->M;
        float *y = j->y + c * j->M;
        float mean, rstd;
        if (j->train) {
            double s = 0.0;
            for (size_t i = 0; i < j->M; i++) s += x[i];
            double mu = s / (double)j->M, ss = 0.0;
            for (size_t i = 0; i < j->M; i++) {
                double d = x[i] - mu;
                ss += d * d;
            }
            double var = ss / (double)j->M;
            mean = (float)mu;
            rstd = (float)(1.0 / sqrt(var + j->eps));
            double unbiased = j->M > 1 ? ss / (double)(j->M - 1) : var;
            j->run_mean[c] = (float)((1.0 - j->momentum) * j->run_mean[c] + j->momentum * mu);
            j->run_var[c] = (float)((1.0 - j->momentum) * j->run_var[c] + j->momentum * unbiased);
        } else {
            mean = j->run_mean[c];
            rstd = 1.0f / sqrtf(j->run_var[c] + j->eps);
        }
        j->mean[c] = mean;
        j->rstd[c] = rstd;
        float a = j->gamma[c] * rstd, b = j->beta[c] - mean * a;
        if (j->relu)
            for (size_t i = 0; i < j->M; i++) {
                float v = x[i] * a + b;
                y[i] = v > 0.0f ? v : 0.0f;
            }
        else
            for (size_t i = 0; i < j->M; i++) y[i] = x[i] * a + b;
    }
}

void tl_bn_forward(tl_pool *p, float *y, float *mean, float *rstd, const float *x, const float *gamma,
                   const float *beta, float *run_mean, float *run_var, int C, size_t M, int train, float momentum,
                   float eps, int relu) {
    bn_job j = {.y = y, .mean = mean, .rstd = rstd, .x = x, .gamma = gamma, .beta = beta, .run_mean = run_mean,
                .run_var = run_var, .C = C, .M = M, .train = train, .relu = relu, .momentum = momentum, .eps = eps};
    tl_pool_run(p, bn_fwd_part, &j);
}

static void bn_bwd_part(void *arg, int tid, int nt) {
    bn_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->C, tid, nt, &lo, &hi);
    for (size_t c = lo; c < hi; c++) {
        const float *x = j->x + c * j->M, *dy = j->dy + c * j->M, *y = j->yv + c * j->M;
        float *dx = j->dx + c * j->M;
        float mean = j->cmean[c], rstd = j->crstd[c];
        double sdy = 0.0, sdyx = 0.0;
        for (size_t i = 0; i < j->M; i++) {
            float g = (j->relu && y[i] <= 0.0f) ? 0.0f : dy[i];
            sdy += g;
            sdyx += (double)g * (x[i] - mean);
        }
        float dbeta = (float)sdy, dgamma = (float)(sdyx * rstd);
        j->dbeta[c] += dbeta;
        j->dgamma[c] += dgamma;
        float k = j->gamma[c] * rstd, inv = 1.0f / (float)j->M;
        float mdy = dbeta * inv, mdyx = dgamma * inv * rstd;
        for (size_t i = 0; i < j->M; i++) {
            float g = (j->relu && y[i] <= 0.0f) ? 0.0f : dy[i];
            dx[i] = k * (g - mdy - (x[i] - mean) * mdyx);
        }
    }
}

void tl_bn_backward(tl_pool *p, float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                    const float *y, const float *mean, const float *rstd, const float *gamma, int C, size_t M,
                    int relu) {
    bn_job j = {.dx = dx, .dgamma = dgamma, .dbeta = dbeta, .dy = dy, .x = x, .yv = y, .cmean = mean, .crstd = rstd,
                .gamma = gamma, .C = C, .M = M, .relu = relu};
    tl_pool_run(p, bn_bwd_part, &j);
}

/* ---- patches ---- */
typedef struct {
    float *patches, *dx;
    const float *x, *dpatches;
    int B, C, H, W, k;
} patch_job;

static void patch_gather_part(void *arg, int tid, int nt) {
    patch_job *j = arg;
    int g = j->H / j->k, gw = j->W / j->k, k = j->k, ck = j->C * k * k;
    size_t lo, hi;
    tl_split((size_t)j->B * g, tid, nt, &lo, &hi); /* (b, ty) rows of tokens */
    size_t plane = (size_t)j->H * j->W, cstride = (size_t)j->B * plane;
    for (size_t r = lo; r < hi; r++) {
        int b = (int)(r / (size_t)g), ty = (int)(r % (size_t)g);
        for (int tx = 0; tx < gw; tx++) {
            float *dst = j->patches + ((size_t)(b * g + ty) * gw + tx) * ck;
            for (int c = 0; c < j->C; c++) {
                const float *src = j->x + c * cstride + b * plane + (size_t)(ty * k) * j->W + tx * k;
                for (int ky = 0; ky < k; ky++) memcpy(dst + (c * k + ky) * k, src + (size_t)ky * j->W, sizeof(float) * k);
            }
        }
    }
}

static void patch_scatter_part(void *arg, int tid, int nt) {
    patch_job *j = arg;
    int g = j->H / j->k, gw = j->W / j->k, k = j->k, ck = j->C * k * k;
    size_t lo, hi;
    tl_split((size_t)j->B * g, tid, nt, &lo, &hi);
    size_t plane = (size_t)j->H * j->W, cstride = (size_t)j->B * plane;
    for (size_t r = lo; r < hi; r++) {
        int b = (int)(r / (size_t)g), ty = (int)(r % (size_t)g);
        for (int tx = 0; tx < gw; tx++) {
            const float *src = j->dpatches + ((size_t)(b * g + ty) * gw + tx) * ck;
            for (int c = 0; c < j->C; c++) {
                float *dst = j->dx + c * cstride + b * plane + (size_t)(ty * k) * j->W + tx * k;
                for (int ky = 0; ky < k; ky++) memcpy(dst + (size_t)ky * j->W, src + (c * k + ky) * k, sizeof(float) * k);
            }
        }
    }
}

void tl_patch_gather(tl_pool *p, float *patches, const float *x, int B, int C, int H, int W, int k) {
    patch_job j = {.patches = patches, .x = x, .B = B, .C = C, .H = H, .W = W, .k = k};
    tl_pool_run(p, patch_gather_part, &j);
}

void tl_patch_scatter(tl_pool *p, float *dx, const float *dpatches, int B, int C, int H, int W, int k) {
    patch_job j = {.dx = dx, .dpatches = dpatches, .B = B, .C = C, .H = H, .W = W, .k = k};
    tl_pool_run(p, patch_scatter_part, &j);
}
