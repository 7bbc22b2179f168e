/*
 * resample.h: the separable triangle filter of engine/data/resample.c (see
 * there for the rule), as filter taps and as a whole RGB resampler. Internal
 * to the engine: data/augment.c and jobs/inspect.c. Any thread.
 */
#ifndef TL_RESAMPLE_H
#define TL_RESAMPLE_H

#include <stdint.h>

#include "tokenlab/image.h"

/* The taps of n outputs along one axis: output i reads count[i] source pixels from first[i] with
 * weights w[i*maxt ...] (summing to 1). */
typedef struct {
    int *first, *count;
    float *w; /* n * maxt */
    int maxt;
} tl_taps;

/* Output i (of n) has its centre at x0 + (i + 0.5) * extent / n in source coordinates; source
 * pixel k covers [k, k+1). Taps are limited to [lo, hi); an output with no tap of weight takes
 * the nearest pixel. 0, or -1 (t emptied) when out of memory or the scale is absurd. */
int tl_taps_build(tl_taps *t, int n, double x0, double extent, int lo, int hi);
/* Frees the taps and empties t. */
void tl_taps_free(tl_taps *t);

/* Resamples the source region whose output-pixel centres are (x0 + (x+0.5)*ew/S,
 * y0 + (y+0.5)*eh/S), taps limited to the box [bx0, bx1) x [by0, by1), into dst (S*S*3, uint8).
 * 0, or -1 when out of memory. */
int tl_resample_rgb(const tl_image *src, double x0, double y0, double ew, double eh, int bx0, int by0, int bx1,
                    int by1, int S, uint8_t *dst);

#endif
