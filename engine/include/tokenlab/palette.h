/*
 * palette.h: the class palette, the one C copy: the colour every view of
 * tokenlab gives class c (the daemon's heat maps, server/api/heatmap.c; the
 * client's coloured token grids, client/tokens.c).
 *
 * Class c has hue h = frac(c * 0.618033988749895) (frac(x) = x - floor(x),
 * so negative classes follow the same rule), saturation 0.70 and value 0.95,
 * converted HSV -> RGB with the textbook six sectors in double precision, each
 * channel x * 255 rounded half up.
 *
 * The dashboard has its own copy in JavaScript, web/src/palette.js (classRgb),
 * which must give the same bytes: Math.round(x * 255) there is the rounding
 * here. tests/e2e/browser/run.mjs compares the two for the first 1000 classes
 * (through `tokenlab palette 1000`), and tests/server/test_heatmap.c holds
 * this copy against values computed independently.
 *
 * Header-only (static inline) so that the client, which does not link the
 * engine, can use it too. Pure; any thread.
 */
#ifndef TOKENLAB_PALETTE_H
#define TOKENLAB_PALETTE_H

#include <math.h>
#include <stdint.h>

#define TL_PALETTE_GOLDEN 0.618033988749895
#define TL_PALETTE_SAT 0.70
#define TL_PALETTE_VAL 0.95

/* x * 255 for x in [0, 1], rounded half up as JavaScript's Math.round does (exactly: no x + 0.5
 * before the floor), clamped to 0..255. */
static inline uint8_t tl_palette_channel(double x) {
    double y = x * 255.0, f = floor(y);
    double v = y - f >= 0.5 ? f + 1.0 : f;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* The palette colour of class c (any int) as 8-bit RGB into rgb[0..2]. */
static inline void tl_class_colour(int c, uint8_t rgb[3]) {
    double h = fmod((double)c * TL_PALETTE_GOLDEN, 1.0);
    if (h < 0) h += 1.0;
    double h6 = h * 6.0;
    int i = (int)floor(h6);
    double f = h6 - i;
    double v = TL_PALETTE_VAL, s = TL_PALETTE_SAT;
    double p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    double r, g, b;
    switch (i % 6) {
    case 0: r = v, g = t, b = p; break;
    case 1: r = q, g = v, b = p; break;
    case 2: r = p, g = v, b = t; break;
    case 3: r = p, g = q, b = v; break;
    case 4: r = t, g = p, b = v; break;
    default: r = v, g = p, b = q; break;
    }
    rgb[0] = tl_palette_channel(r);
    rgb[1] = tl_palette_channel(g);
    rgb[2] = tl_palette_channel(b);
}

#endif
