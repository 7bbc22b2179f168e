/*
 * targets.c: a training sample's token-labeling targets from its label-map
 * entry and the geometry of its augmentation (targets.h, docs/METHOD.md
 * section 5, schema/labelmap.md).
 *
 * Owns nothing: every function works in the caller's buffers (outputs and a
 * scratch of tl_targets_scratch() floats), so loader threads call it
 * concurrently, each with its own scratch.
 *
 * The pipeline is the dense one (scatter the k stored logits into a zero
 * K x h x w map, torchvision RoIAlign to S x S and 1 x 1, flip, affine, softmax,
 * smoothing) computed sparsely, because the dense map is zero except k classes
 * per location:
 *   - RoIAlign with aligned=False is separable: sample (iy, ix) of bin (ph, pw)
 *     has bilinear weight wy(iy) * wx(ix), and it is dropped when y or x is out
 *     of range, so bin (ph, pw) = sum_r sum_c Wy[ph][r] Wx[pw][c] L[:, r, c] with
 *     Wy[ph][r] = (1/ny) sum_iy (weight of row r at sample iy), likewise Wx. The
 *     sample positions follow torchvision's expressions in double precision
 *     (roi extent max(end-start, 1), bin = extent/S, ny = ceil(extent/S), y =
 *     start + ph*bin + (iy+0.5)*bin/ny; y < -1 or y > h drops the sample, y <= 0
 *     becomes 0, y_low >= h-1 puts all weight on row h-1), so the sample set
 *     is exactly torchvision's. Wy / Wx are a few nonzeros per bin; their
 *     ranges are kept.
 *   - A bin's logits are accumulated into a K-wide accumulator from the k
 *     (value, class) pairs of the few map cells it touches; the touched classes
 *     are listed, so the softmax costs one exp per touched class plus one for
 *     all the untouched classes (which all have logit exactly 0), and the row
 *     is written once: untouched classes get the common value, touched ones
 *     their own. The accumulator is reset through the list.
 *   - Flip: output column c takes bin S-1-c.
 *   - Affine (g->has_affine): output token (r, c) has centre (u, v) =
 *     ((c+0.5)/S, (r+0.5)/S), mapped to (u', v') = A(u, v) in the cropped and
 *     flipped frame. Outside [0,1]^2 (or NaN) the token takes the 1 x 1 logits.
 *     Inside, the S x S flipped logit grid is sampled bilinearly at grid
 *     coordinates (u'S - 0.5, v'S - 0.5), clamped to [0, S-1] (edge cells
 *     replicate), and snapped to the nearest integer when within 1e-9 of it so
 *     that an identity or whole-token translation reproduces cells exactly.
 *     The four neighbouring bins are accumulated with their weights (bins of
 *     the unflipped grid at mirrored x when flipped).
 * Logits are accumulated in float (weights computed in double); the softmax
 * normaliser in double.
 *
 * Robustness: a non-finite crop value makes the crop the whole image, and crop
 * fractions are clamped to [-16, 16] so the sample count stays bounded (the
 * augmentation yields fractions in [0, 1]); class indices outside [0, K) are
 * skipped (the reader refuses them anyway); an invalid size (K, k, h, w or S
 * below 1) leaves the outputs untouched.
 *
 * Scratch layout (floats): Wy S*h | Wx S*w | Wy1 h | Wx1 w | ranges 4S+4 |
 * acc K | flag K | list K | cls_id K | cls_val K.
 */
#include "tokenlab/targets.h"

#include <math.h>
#include <string.h>

#define TG_MAX_FRAC 16.0

size_t tl_targets_scratch(int K, int h, int w, int S) {
    if (K < 1 || h < 1 || w < 1 || S < 1) return 0;
    return (size_t)S * ((size_t)h + (size_t)w) + (size_t)h + (size_t)w + 4 * (size_t)S + 4 + 5 * (size_t)K;
}

void tl_targets_onehot(float *t, int label, int K, float smoothing) {
    if (!t || K < 1) return;
    float b = smoothing / (float)K;
    for (int c = 0; c < K; c++) t[c] = b;
    if (label >= 0 && label < K) t[label] = (1.0f - smoothing) + b;
}

/* Per-bin weights of the map rows (or columns) along one axis of length size,
 * for the roi [start, end] pooled to S bins: wts[p*size + r], and the range
 * [lo, hi] of nonzero rows of bin p in range[2p], range[2p+1] (lo > hi: none). */
static void axis_weights(double start, double end, int size, int S, float *wts, float *range) {
    double extent = end - start;
    if (!(extent > 1.0)) extent = 1.0; /* torchvision: max(extent, 1) for aligned=False */
    double bin = extent / S;
    int n = (int)ceil(extent / S); /* sampling_ratio -1; >= 1 since extent >= 1 */
    for (int p = 0; p < S; p++) {
        float *wp = wts + (size_t)p * (size_t)size;
        memset(wp, 0, sizeof(float) * (size_t)size);
        int lo = size, hi = -1;
        for (int i = 0; i < n; i++) {
            double y = start + p * bin + (i + 0.5) * bin / n; /* torchvision's expression and order */
            if (y < -1.0 || y > size) continue;
            if (y <= 0) y = 0;
            int y0 = (int)y, y1;
            if (y0 >= size - 1) {
                y0 = y1 = size - 1;
                y = (double)y0;
            } else {
                y1 = y0 + 1;
            }
            double ly = y - y0, hy = 1.0 - ly;
            wp[y0] += (float)(hy / n);
            wp[y1] += (float)(ly / n);
            if (y0 < lo) lo = y0;
            if (y1 > hi) hi = y1;
        }
        range[2 * p] = (float)lo;
        range[2 * p + 1] = (float)hi;
    }
}

typedef struct {
    const float *values;
    const int32_t *indices;
    int k, h, w, K;
    size_t hw;
    float *acc, *flag, *list;
    int n; /* touched classes in list */
} tg_acc;

/* acc += scale * bin whose row weights are wy over [r0, r1] and column weights wx over [c0, c1]. */
static void add_bin(tg_acc *a, const float *wy, const float *ry, const float *wx, const float *rx, float scale) {
    int r0 = (int)ry[0], r1 = (int)ry[1], c0 = (int)rx[0], c1 = (int)rx[1];
    for (int r = r0; r <= r1; r++) {
        float wr = wy[r] * scale;
        if (wr == 0.0f) continue;
        for (int c = c0; c <= c1; c++) {
            float wgt = wr * wx[c];
            if (wgt == 0.0f) continue;
            size_t cell = (size_t)r * (size_t)a->w + (size_t)c;
            for (int j = 0; j < a->k; j++) {
                size_t at = (size_t)j * a->hw + cell;
                int32_t cls = a->indices[at];
                if (cls < 0 || cls >= a->K) continue;
                if (a->flag[cls] == 0.0f) {
                    a->flag[cls] = 1.0f;
                    a->list[a->n++] = (float)cls;
                }
                a->acc[cls] += wgt * a->values[at];
            }
        }
    }
}

/* Softmax over the K logits held sparsely in a (untouched classes are 0),
 * label smoothing, write out[K]; resets the accumulator. */
static void finish_row(tg_acc *a, float *out, float s) {
    int K = a->K, n = a->n;
    float m = n < K ? 0.0f : -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = a->acc[(int)a->list[i]];
        if (v > m) m = v;
    }
    float e0 = expf(-m);
    double z = n < K ? (double)(K - n) * (double)e0 : 0.0;
    for (int i = 0; i < n; i++) {
        int c = (int)a->list[i];
        float e = expf(a->acc[c] - m);
        a->acc[c] = e;
        z += e;
    }
    float scale = (float)((1.0 - (double)s) / z), b = s / (float)K;
    if (n < K) {
        float base = e0 * scale + b;
        for (int c = 0; c < K; c++) out[c] = base;
    }
    for (int i = 0; i < n; i++) {
        int c = (int)a->list[i];
        out[c] = a->acc[c] * scale + b;
        a->acc[c] = 0.0f;
        a->flag[c] = 0.0f;
    }
    a->n = 0;
}

static double clampd(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Grid coordinate of normalised position u on S cells, clamped and snapped. */
static double grid_coord(double u, int S) {
    double g = clampd(u * S - 0.5, 0.0, (double)(S - 1));
    double r = nearbyint(g);
    return fabs(g - r) < 1e-9 ? r : g;
}

void tl_targets_compute(float *t_cls, float *t_dense, const float *values, const int32_t *indices, int k, int h, int w,
                        int K, const tl_geom *g, int S, float smoothing, float *scratch) {
    if (!t_cls || !t_dense || !values || !indices || !g || !scratch || k < 1 || h < 1 || w < 1 || K < 1 || S < 1)
        return;
    double top = g->top, left = g->left, ch = g->height, cw = g->width;
    if (!isfinite(top) || !isfinite(left) || !isfinite(ch) || !isfinite(cw)) {
        top = left = 0.0;
        ch = cw = 1.0;
    }
    top = clampd(top, -TG_MAX_FRAC, TG_MAX_FRAC);
    left = clampd(left, -TG_MAX_FRAC, TG_MAX_FRAC);
    ch = clampd(ch, -TG_MAX_FRAC, TG_MAX_FRAC);
    cw = clampd(cw, -TG_MAX_FRAC, TG_MAX_FRAC);

    float *wy = scratch, *wx = wy + (size_t)S * (size_t)h, *wy1 = wx + (size_t)S * (size_t)w, *wx1 = wy1 + h;
    float *ry = wx1 + w, *rx = ry + 2 * (size_t)S, *ry1 = rx + 2 * (size_t)S, *rx1 = ry1 + 2;
    float *acc = rx1 + 2, *flag = acc + K, *list = flag + K, *cls_id = list + K, *cls_val = cls_id + K;
    memset(acc, 0, sizeof(float) * 2 * (size_t)K); /* acc and flag */

    /* box in map coordinates (torchvision aligned=False: pixel centres at +0.5 are handled by the -0.5) */
    double y1 = top * h - 0.5, x1 = left * w - 0.5;
    double y2 = (top + ch) * h - 0.5, x2 = (left + cw) * w - 0.5;
    axis_weights(y1, y2, h, S, wy, ry);
    axis_weights(x1, x2, w, S, wx, rx);
    axis_weights(y1, y2, h, 1, wy1, ry1);
    axis_weights(x1, x2, w, 1, wx1, rx1);

    tg_acc a = {values, indices, k, h, w, K, (size_t)h * (size_t)w, acc, flag, list, 0};

    /* 1 x 1: t_cls, and its logits kept for tokens mapped outside the crop */
    add_bin(&a, wy1, ry1, wx1, rx1, 1.0f);
    int ncls = a.n;
    for (int i = 0; i < ncls; i++) {
        cls_id[i] = list[i];
        cls_val[i] = acc[(int)list[i]];
    }
    finish_row(&a, t_cls, smoothing);

    if (!g->has_affine) {
        for (int r = 0; r < S; r++)
            for (int c = 0; c < S; c++) {
                int src = g->flip ? S - 1 - c : c;
                add_bin(&a, wy + (size_t)r * (size_t)h, ry + 2 * r, wx + (size_t)src * (size_t)w, rx + 2 * src, 1.0f);
                finish_row(&a, t_dense + ((size_t)r * S + (size_t)c) * (size_t)K, smoothing);
            }
        return;
    }

    const float *A = g->affine;
    for (int r = 0; r < S; r++)
        for (int c = 0; c < S; c++) {
            float *out = t_dense + ((size_t)r * S + (size_t)c) * (size_t)K;
            double u = (c + 0.5) / S, v = (r + 0.5) / S;
            double uu = A[0] * u + A[1] * v + A[2], vv = A[3] * u + A[4] * v + A[5];
            if (!(uu >= 0.0 && uu <= 1.0 && vv >= 0.0 && vv <= 1.0)) {
                for (int i = 0; i < ncls; i++) {
                    int cl = (int)cls_id[i];
                    flag[cl] = 1.0f;
                    acc[cl] = cls_val[i];
                    list[i] = (float)cl;
                }
                a.n = ncls;
                finish_row(&a, out, smoothing);
                continue;
            }
            double gx = grid_coord(uu, S), gy = grid_coord(vv, S);
            if (g->flip) gx = (double)(S - 1) - gx; /* the flipped grid's column gx is the unflipped S-1-gx */
            int x0 = (int)gx, y0 = (int)gy;
            int xn = x0 + 1 < S ? x0 + 1 : S - 1, yn = y0 + 1 < S ? y0 + 1 : S - 1;
            double fx = gx - x0, fy = gy - y0;
            const int ys[2] = {y0, yn}, xs[2] = {x0, xn};
            const double wys[2] = {1.0 - fy, fy}, wxs[2] = {1.0 - fx, fx};
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) {
                    float wgt = (float)(wys[i] * wxs[j]);
                    if (wgt == 0.0f) continue;
                    add_bin(&a, wy + (size_t)ys[i] * (size_t)h, ry + 2 * ys[i], wx + (size_t)xs[j] * (size_t)w,
                            rx + 2 * xs[j], wgt);
                }
            finish_row(&a, out, smoothing);
        }
}
