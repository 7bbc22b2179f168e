/*
 * synth.h: the built-in synthetic dataset (`tokenlabd synth`).
 *
 * Writes <out>/train/<class>/<n>.jpg and <out>/val/<class>/<n>.jpg, a
 * classes.tsv, and exact label maps <out>/train.tllm and <out>/val.tllm
 * (keys relative to the split folder). Each picture holds several objects of
 * different classes (a class is a shape family with its own colour and texture,
 * drawn with random size, position and colour jitter) on a cluttered
 * background; the image label is the class of the largest object, and the map
 * gives, at every location, the logits of the classes covering it (background
 * locations: the image label, weakly). Deterministic for a seed. Pure files;
 * one caller thread.
 */
#ifndef TL_SYNTH_H
#define TL_SYNTH_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int classes;     /* 2..64, default 10 */
    int train;       /* images in train, default 2000 */
    int val;         /* images in val, default 500 */
    int size;        /* pixels, 32..512, default 64 */
    uint64_t seed;   /* default 1 */
    int map_size;    /* label-map side h = w, default size/4 */
} tl_synth_cfg;

/* The defaults of `tokenlabd synth` (10 classes, 2000 + 500 pictures at 64 px, seed 1). */
void tl_synth_defaults(tl_synth_cfg *c);
/* Writes the dataset under out_dir (train/ and val/ class folders of JPEGs, classes.tsv, and the exact
 * label maps train.tllm and val.tllm beside them); the same cfg gives the same bytes. 0, or -1 with a
 * message (bad settings, a folder that cannot be written). */
int tl_synth_write(const char *out_dir, const tl_synth_cfg *c, char *err, size_t errlen);

#endif
