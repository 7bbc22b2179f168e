/*
 * heatmap.c: token-label overlays (see heatmap.h), tinted with the class
 * palette of tokenlab/palette.h.
 *
 * Owns nothing: tld_heatmap_render writes into the caller's buffer (which may
 * be the input itself: every pixel is read once, before it is written);
 * tld_heatmap_jpeg allocates one V*V*3 scratch image, freed before it returns,
 * and hands back the encoder's buffer. No globals; any thread.
 */
#include "api/heatmap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenlab/data.h"
#include "tokenlab/palette.h"

#define HM_LINE 0.5 /* border pixels are the blended colour times this */

/* x in [0, 255] rounded half up */
static uint8_t to8u(double x) {
    double v = floor(x + 0.5);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static int64_t edge(int i, int V, int grid) { return (int64_t)i * V / grid; }

void tld_heatmap_render(const uint8_t *rgb, int V, int grid, const int32_t *index, const float *prob, uint8_t *out) {
    if (!rgb || !out || V <= 0) return;
    size_t npx = (size_t)V * (size_t)V * 3;
    if (grid <= 0 || !index) {
        if (out != rgb) memmove(out, rgb, npx);
        return;
    }
    for (int r = 0; r < grid; r++) {
        int64_t y0 = edge(r, V, grid), y1 = edge(r + 1, V, grid);
        for (int c = 0; c < grid; c++) {
            int64_t x0 = edge(c, V, grid), x1 = edge(c + 1, V, grid);
            size_t t = (size_t)r * (size_t)grid + (size_t)c;
            int32_t cls = index[t];
            uint8_t col[3] = {0, 0, 0};
            double a = 0;
            if (cls >= 0) {
                double pr = prob ? (double)prob[t] : 1.0;
                if (!(pr >= 0)) pr = 0; /* also NaN */
                if (pr > 1) pr = 1;
                a = 0.15 + 0.6 * pr;
                tl_class_colour(cls, col);
            }
            /* borders: the first row / column of a square whose upper / left neighbour has another class */
            int top = r > 0 && index[t - (size_t)grid] != cls;
            int left = c > 0 && index[t - 1] != cls;
            for (int64_t y = y0; y < y1; y++) {
                for (int64_t x = x0; x < x1; x++) {
                    size_t o = ((size_t)y * (size_t)V + (size_t)x) * 3;
                    int line = (top && y == y0) || (left && x == x0);
                    for (int k = 0; k < 3; k++) {
                        uint8_t v = rgb[o + k];
                        if (cls >= 0) v = to8u((1 - a) * v + a * col[k]);
                        if (line) v = to8u(v * HM_LINE);
                        out[o + k] = v;
                    }
                }
            }
        }
    }
}

int tld_heatmap_jpeg(const uint8_t *rgb, int V, int grid, const int32_t *index, const float *prob, uint8_t **jpeg,
                    size_t *len, char *err, size_t errlen) {
    uint8_t *img = NULL;
    if (jpeg) *jpeg = NULL;
    if (len) *len = 0;
    if (!rgb || !index || !jpeg || !len) {
        if (err && errlen) snprintf(err, errlen, "heatmap: no image, tokens or output");
        goto fail;
    }
    if (V <= 0 || V > TL_IMAGE_MAX_SIDE || (uint64_t)V * (uint64_t)V > TL_IMAGE_MAX_PIXELS) {
        if (err && errlen) snprintf(err, errlen, "heatmap: image side %d outside 1..%d", V, TL_IMAGE_MAX_SIDE);
        goto fail;
    }
    if (grid <= 0 || grid > V) {
        if (err && errlen) snprintf(err, errlen, "heatmap: token grid %d outside 1..%d", grid, V);
        goto fail;
    }
    img = malloc((size_t)V * (size_t)V * 3);
    if (!img) {
        if (err && errlen) snprintf(err, errlen, "heatmap: out of memory for a %dx%d image", V, V);
        goto fail;
    }
    tld_heatmap_render(rgb, V, grid, index, prob, img);
    if (tl_image_encode(img, V, V, 90, jpeg, len, err, errlen)) goto fail;
    free(img);
    return 0;
fail:
    free(img);
    return -1;
}
