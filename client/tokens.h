/*
 * tokens.h: a token map (one class per patch of the image, row-major g x g)
 * printed as a grid of letters with a legend, one or more maps side by side
 * (predict --tokens, inspect ID K). On a terminal the cells are also coloured
 * with the class palette shared with the daemon's heat maps and the
 * dashboard (tl_class_colour in tokenlab/palette.h).
 */
#ifndef TOKENLAB_TOKENS_H
#define TOKENLAB_TOKENS_H

#include <cjson/cJSON.h>
#include <stdio.h>

#define TOKENS_GRID_MAX 128

/* Reads a JSON array of g*g class indices into out (g*g ints). Returns 0, or -1 when the array
 * is missing, has another length, or holds something else than integers >= 0. */
int tokens_from_json(const cJSON *arr, int g, int *out);

/* Prints n maps of g x g (titles above them) and a legend naming each class through classes, a JSON
 * array of {"index", "label"} (may be NULL: "class N"). */
void tokens_print(FILE *f, int g, int n, const int *const *maps, const char *const *titles, const cJSON *classes,
                  int color);

#endif
