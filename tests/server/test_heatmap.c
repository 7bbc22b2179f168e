/*
 * test_heatmap.c: the class palette (tokenlab/palette.h) against values computed independently
 * (literals from Python's colorsys and a chroma-based HSV -> RGB written
 * here), the overlay's blending (probability 0 vs 1, clamping, untinted
 * squares, border lines, in-place rendering) and the JPEG variant decoded
 * back to the right size and colours.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenlab/data.h"
#include "api/heatmap.h"
#include "tokenlab/palette.h"

/* HSV -> RGB the other way round: chroma C = V*S, X = C*(1 - |(H/60) mod 2 - 1|), m = V - C. */
static void hsv_ref(int c, uint8_t out[3]) {
    double h = c * 0.618033988749895;
    h -= floor(h);
    double H = h * 360.0, V = 0.95, S = 0.70;
    double C = V * S, X = C * (1 - fabs(fmod(H / 60.0, 2.0) - 1)), m = V - C;
    double r, g, b;
    if (H < 60) r = C, g = X, b = 0;
    else if (H < 120) r = X, g = C, b = 0;
    else if (H < 180) r = 0, g = C, b = X;
    else if (H < 240) r = 0, g = X, b = C;
    else if (H < 300) r = X, g = 0, b = C;
    else r = C, g = 0, b = X;
    out[0] = (uint8_t)floor((r + m) * 255 + 0.5);
    out[1] = (uint8_t)floor((g + m) * 255 + 0.5);
    out[2] = (uint8_t)floor((b + m) * 255 + 0.5);
}

static void test_palette(void **state) {
    (void)state;
    /* from Python: colorsys.hsv_to_rgb((c * 0.618033988749895) % 1, 0.7, 0.95), rounded */
    static const struct {
        int c;
        uint8_t rgb[3];
    } lit[] = {{0, {242, 73, 73}},  {1, {73, 122, 242}},  {2, {172, 242, 73}},  {3, {242, 73, 221}},
               {7, {80, 242, 73}}, {10, {228, 242, 73}}, {999, {73, 242, 157}}};
    for (size_t i = 0; i < sizeof lit / sizeof *lit; i++) {
        uint8_t got[3];
        tl_class_colour(lit[i].c, got);
        assert_memory_equal(got, lit[i].rgb, 3);
    }
    for (int c = 0; c < 1000; c++) {
        uint8_t got[3], want[3];
        tl_class_colour(c, got);
        hsv_ref(c, want);
        for (int k = 0; k < 3; k++) {
            /* the two formulas may differ in the last bit before rounding; never by more than 1 */
            if (abs((int)got[k] - (int)want[k]) > 1) {
                print_error("class %d channel %d: %d vs %d\n", c, k, got[k], want[k]);
                fail();
            }
        }
        /* max channel is V, min is V(1-S) */
        uint8_t mx = got[0], mn = got[0];
        for (int k = 1; k < 3; k++) mx = got[k] > mx ? got[k] : mx, mn = got[k] < mn ? got[k] : mn;
        assert_int_equal(mx, 242);
        assert_int_equal(mn, 73);
    }
}

static uint8_t blend(uint8_t px, uint8_t col, double p) {
    double a = 0.15 + 0.6 * p;
    return (uint8_t)floor((1 - a) * px + a * col + 0.5);
}

#define V 8
#define G 2

static void fill(uint8_t *img, uint8_t r, uint8_t g, uint8_t b) {
    for (int i = 0; i < V * V; i++) img[i * 3] = r, img[i * 3 + 1] = g, img[i * 3 + 2] = b;
}

static const uint8_t *px(const uint8_t *img, int y, int x) { return img + ((size_t)y * V + (size_t)x) * 3; }

static void test_blend(void **state) {
    (void)state;
    uint8_t in[V * V * 3], out0[V * V * 3], out1[V * V * 3], col[3];
    fill(in, 100, 150, 200);
    int32_t idx[G * G] = {3, 3, 3, 3}; /* one class: no borders */
    float p0[G * G] = {0, 0, 0, 0}, p1[G * G] = {1, 1, 1, 1};
    tld_heatmap_render(in, V, G, idx, p0, out0);
    tld_heatmap_render(in, V, G, idx, p1, out1);
    tl_class_colour(3, col);
    for (int y = 0; y < V; y++)
        for (int x = 0; x < V; x++)
            for (int k = 0; k < 3; k++) {
                assert_int_equal(px(out0, y, x)[k], blend(px(in, y, x)[k], col[k], 0));
                assert_int_equal(px(out1, y, x)[k], blend(px(in, y, x)[k], col[k], 1));
                /* probability 1 is further from the picture, nearer the class colour */
                int d0 = abs(px(out0, y, x)[k] - col[k]), d1 = abs(px(out1, y, x)[k] - col[k]);
                assert_true(d1 < d0);
            }
    /* clamping: below 0 and NaN act as 0, above 1 as 1; NULL prob is 1 everywhere */
    float pc[G * G] = {-5, NAN, 7, 1};
    uint8_t outc[V * V * 3], outn[V * V * 3];
    tld_heatmap_render(in, V, G, idx, pc, outc);
    assert_memory_equal(px(outc, 0, 0), px(out0, 0, 0), 3);
    assert_memory_equal(px(outc, 0, 7), px(out0, 0, 7), 3);
    assert_memory_equal(px(outc, 7, 0), px(out1, 7, 0), 3);
    tld_heatmap_render(in, V, G, idx, NULL, outn);
    assert_memory_equal(outn, out1, sizeof outn);
    /* in place gives the same */
    uint8_t inplace[V * V * 3];
    memcpy(inplace, in, sizeof in);
    tld_heatmap_render(inplace, V, G, idx, p1, inplace);
    assert_memory_equal(inplace, out1, sizeof out1);
}

static void test_untinted_and_borders(void **state) {
    (void)state;
    uint8_t in[V * V * 3], out[V * V * 3], col[3];
    /* a gradient, so that "unchanged" means something */
    for (int i = 0; i < V * V * 3; i++) in[i] = (uint8_t)(i * 7 % 251);
    int32_t none[G * G] = {-1, -1, -1, -1};
    float p[G * G] = {1, 1, 1, 1};
    tld_heatmap_render(in, V, G, none, p, out);
    assert_memory_equal(out, in, sizeof in);

    /* square 0 (top left) is class 2, the rest untinted: square 1 gets a dark left column, square 2 a
     * dark top row (their neighbour has another index), square 3 (neighbours -1 like itself) nothing */
    int32_t idx[G * G] = {2, -1, -1, -1};
    float q[G * G] = {0.5f, 1, 1, 1};
    tld_heatmap_render(in, V, G, idx, q, out);
    tl_class_colour(2, col);
    for (int y = 0; y < V; y++)
        for (int x = 0; x < V; x++)
            for (int k = 0; k < 3; k++) {
                uint8_t src = px(in, y, x)[k], got = px(out, y, x)[k];
                if (y < 4 && x < 4) {
                    assert_int_equal(got, blend(src, col[k], 0.5));
                } else if ((y < 4 && x == 4) || (y == 4 && x < 4)) {
                    assert_int_equal(got, (uint8_t)floor(src * 0.5 + 0.5));
                } else {
                    assert_int_equal(got, src);
                }
            }

    /* two classes side by side: a dark column at the start of the right square */
    int32_t two[G * G] = {0, 1, 0, 1};
    uint8_t flat[V * V * 3];
    fill(flat, 200, 200, 200);
    tld_heatmap_render(flat, V, G, two, p, out);
    uint8_t c1[3];
    tl_class_colour(1, c1);
    for (int y = 0; y < V; y++)
        for (int k = 0; k < 3; k++) {
            assert_int_equal(px(out, y, 4)[k], (uint8_t)floor(blend(200, c1[k], 1) * 0.5 + 0.5));
            assert_int_equal(px(out, y, 5)[k], blend(200, c1[k], 1));
        }
    /* grid of 0 or no index: a copy */
    tld_heatmap_render(in, V, 0, idx, q, out);
    assert_memory_equal(out, in, sizeof in);
}

static void test_jpeg(void **state) {
    (void)state;
    enum { S = 64, GR = 4 };
    uint8_t *img = malloc(S * S * 3);
    assert_non_null(img);
    memset(img, 128, S * S * 3);
    int32_t idx[GR * GR];
    float p[GR * GR];
    for (int t = 0; t < GR * GR; t++) {
        idx[t] = (t % GR) < 2 ? 0 : 1; /* left half class 0, right half class 1 */
        p[t] = 1;
    }
    uint8_t *jpg = NULL;
    size_t len = 0;
    char err[256] = "";
    int rc = tld_heatmap_jpeg(img, S, GR, idx, p, &jpg, &len, err, sizeof err);
    if (rc) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(jpg);
    assert_true(len > 100);
    assert_int_equal(jpg[0], 0xFF);
    assert_int_equal(jpg[1], 0xD8);
    tl_image im;
    assert_int_equal(tl_image_decode(jpg, len, 0, &im, NULL, err, sizeof err), 0);
    assert_int_equal(im.w, S);
    assert_int_equal(im.h, S);
    uint8_t c0[3], c1[3];
    tl_class_colour(0, c0);
    tl_class_colour(1, c1);
    const int probes[4][2] = {{8, 8}, {40, 20}, {8, 48}, {56, 56}}; /* (y, x), away from the border */
    for (int i = 0; i < 4; i++) {
        const uint8_t *q = im.rgb + ((size_t)probes[i][0] * S + (size_t)probes[i][1]) * 3;
        const uint8_t *c = probes[i][1] < 32 ? c0 : c1;
        for (int k = 0; k < 3; k++) {
            int want = blend(128, c[k], 1);
            if (abs(q[k] - want) > 6) {
                print_error("probe %d channel %d: %d, want about %d\n", i, k, q[k], want);
                fail();
            }
        }
    }
    tl_image_free(&im);
    free(jpg);

    /* refusals */
    assert_int_equal(tld_heatmap_jpeg(img, 0, GR, idx, p, &jpg, &len, err, sizeof err), -1);
    assert_non_null(strstr(err, "side"));
    assert_null(jpg);
    assert_int_equal(tld_heatmap_jpeg(img, S, 0, idx, p, &jpg, &len, err, sizeof err), -1);
    assert_non_null(strstr(err, "grid"));
    assert_int_equal(tld_heatmap_jpeg(img, S, GR, NULL, p, &jpg, &len, err, sizeof err), -1);
    assert_int_equal(tld_heatmap_jpeg(img, TL_IMAGE_MAX_SIDE + 1, GR, idx, p, &jpg, &len, err, sizeof err), -1);
    free(img);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_palette),
        cmocka_unit_test(test_blend),
        cmocka_unit_test(test_untinted_and_borders),
        cmocka_unit_test(test_jpeg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
