/*
 * resample.c: the engine's one image resampling filter (resample.h): a
 * separable triangle ("bilinear") filter with half-pixel centres, widened by
 * the scale factor when shrinking (PIL's / torchvision's antialias=True
 * bilinear, an area-averaging prefilter above 2x), plain bilinear when
 * enlarging. Its taps serve the training and evaluation transforms
 * (augment.c, through tl_resample_rgb) and the inspection's display images
 * (jobs/inspect.c).
 *
 * Owns nothing beyond a call (the taps and the row buffer it mallocs and
 * frees); any thread.
 */
#include "data/resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/simd.h"

void tl_taps_free(tl_taps *t) {
    free(t->first);
    free(t->count);
    free(t->w);
    memset(t, 0, sizeof *t);
}

int tl_taps_build(tl_taps *t, int n, double x0, double extent, int lo, int hi) {
    memset(t, 0, sizeof *t);
    double scale = extent / n, support = scale > 1.0 ? scale : 1.0, inv = 1.0 / support;
    if (!(support < 1e6)) return -1;
    int maxt = (int)ceil(2.0 * support) + 3;
    t->first = malloc((size_t)n * sizeof *t->first);
    t->count = malloc((size_t)n * sizeof *t->count);
    t->w = malloc((size_t)n * (size_t)maxt * sizeof *t->w);
    if (!t->first || !t->count || !t->w) {
        tl_taps_free(t);
        return -1;
    }
    t->maxt = maxt;
    for (int i = 0; i < n; i++) {
        double c = x0 + (i + 0.5) * scale;
        int a = (int)floor(c - support), b = (int)ceil(c + support) + 1;
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        if (b - a > maxt) b = a + maxt;
        float *w = t->w + (size_t)i * maxt;
        double sum = 0.0;
        int f = -1, l = -1;
        for (int k = a; k < b; k++) {
            double d = fabs(k + 0.5 - c) * inv;
            double wk = d < 1.0 ? 1.0 - d : 0.0;
            if (wk > 0.0) {
                if (f < 0) f = k;
                l = k;
            }
            sum += wk;
        }
        if (f < 0 || sum <= 0.0) { /* centre outside the allowed range: nearest pixel */
            int k = (int)floor(c);
            t->first[i] = k < lo ? lo : k >= hi ? hi - 1 : k;
            t->count[i] = 1;
            w[0] = 1.0f;
            continue;
        }
        t->first[i] = f;
        t->count[i] = l - f + 1;
        for (int k = f; k <= l; k++) {
            double d = fabs(k + 0.5 - c) * inv;
            w[k - f] = (float)((d < 1.0 ? 1.0 - d : 0.0) / sum);
        }
    }
    return 0;
}

TL_VEC static void vpass_row(const float *tmp, size_t stride, int count, const float *w, float *acc, uint8_t *dst,
                             int n) {
    for (int j = 0; j < n; j++) acc[j] = 0.0f;
    for (int k = 0; k < count; k++) {
        const float *row = tmp + (size_t)k * stride;
        float wk = w[k];
        for (int j = 0; j < n; j++) acc[j] += wk * row[j];
    }
    for (int j = 0; j < n; j++) {
        float v = acc[j] + 0.5f;
        v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
        dst[j] = (uint8_t)v;
    }
}

int tl_resample_rgb(const tl_image *src, double x0, double y0, double ew, double eh, int bx0, int by0, int bx1,
                    int by1, int S, uint8_t *dst) {
    tl_taps tx, ty;
    float *tmp = NULL, *acc = NULL;
    int rc = -1;
    if (tl_taps_build(&tx, S, x0, ew, bx0, bx1) != 0) return -1;
    if (tl_taps_build(&ty, S, y0, eh, by0, by1) != 0) {
        tl_taps_free(&tx);
        return -1;
    }
    int ylo = ty.first[0], yhi = ty.first[0] + ty.count[0];
    for (int y = 1; y < S; y++) {
        if (ty.first[y] < ylo) ylo = ty.first[y];
        if (ty.first[y] + ty.count[y] > yhi) yhi = ty.first[y] + ty.count[y];
    }
    size_t stride = (size_t)S * 3;
    tmp = malloc((size_t)(yhi - ylo) * stride * sizeof *tmp);
    acc = malloc(stride * sizeof *acc);
    if (!tmp || !acc) goto done;
    /* horizontal pass: rows ylo..yhi-1 of the source to S columns */
    for (int y = ylo; y < yhi; y++) {
        const uint8_t *srow = src->rgb + (size_t)y * src->w * 3;
        float *trow = tmp + (size_t)(y - ylo) * stride;
        for (int x = 0; x < S; x++) {
            const uint8_t *p = srow + (size_t)tx.first[x] * 3;
            const float *w = tx.w + (size_t)x * tx.maxt;
            float r = 0.0f, g = 0.0f, b = 0.0f;
            for (int k = 0, n = tx.count[x]; k < n; k++) {
                r += w[k] * p[3 * k];
                g += w[k] * p[3 * k + 1];
                b += w[k] * p[3 * k + 2];
            }
            trow[3 * x] = r;
            trow[3 * x + 1] = g;
            trow[3 * x + 2] = b;
        }
    }
    /* vertical pass */
    for (int y = 0; y < S; y++)
        vpass_row(tmp + (size_t)(ty.first[y] - ylo) * stride, stride, ty.count[y], ty.w + (size_t)y * ty.maxt, acc,
                  dst + (size_t)y * stride, (int)stride);
    rc = 0;
done:
    free(tmp);
    free(acc);
    tl_taps_free(&tx);
    tl_taps_free(&ty);
    return rc;
}
