/*
 * heatmap.h: token-label overlays: an image with each patch token's square
 * tinted by the colour of its class, strength by probability, for users who
 * look with curl and an image viewer (the dashboard draws the same thing in
 * the browser with the same palette).
 *
 * The colours are the class palette of tokenlab/palette.h (tl_class_colour),
 * which the client shares and web/src/palette.js copies.
 * Pure functions; any thread.
 */
#ifndef TLD_HEATMAP_H
#define TLD_HEATMAP_H

#include <stddef.h>
#include <stdint.h>

/* out (V,V,3) = rgb (V,V,3) blended with the class colour of each token's square: token t = r*grid + c
 * covers rows [r*V/grid, (r+1)*V/grid) and the same for columns; alpha = 0.15 + 0.6 * prob[t]
 * (prob clamped to [0,1]); index[t] < 0 leaves the square untinted. One-pixel lines between squares
 * of different classes are drawn darker so regions read clearly. */
/* (Additions:) the line is the first row / column of a square whose upper / left neighbour has another
 * index (-1 counts as an index), its pixels the blended 8-bit colour times 0.5, rounded. out may be rgb (in place).
 * prob may be NULL (every token at probability 1); grid <= 0 or index NULL copies rgb. */
void tld_heatmap_render(const uint8_t *rgb, int V, int grid, const int32_t *index, const float *prob, uint8_t *out);

/* The same rendered and encoded as JPEG (quality 90) into a malloc'd buffer. 0 or -1 with a message. */
int tld_heatmap_jpeg(const uint8_t *rgb, int V, int grid, const int32_t *index, const float *prob, uint8_t **jpeg,
                    size_t *len, char *err, size_t errlen);

#endif
