/*
 * patch.c: the non-overlapping patches (kernel = stride = k) of an NHWC map
 * as the rows of the patch-projection GEMM (tl_patch_gather, its gradient
 * tl_patch_scatter) and the projection weight packed to match.
 *
 * Owns nothing; rows are split over the pool's threads, each written by one
 * thread.
 */
#include "ops/ops.h"

#include <string.h>

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
