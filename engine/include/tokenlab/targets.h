/*
 * targets.h: the targets of one training sample built from its label-map
 * entry (engine/data/targets.c, docs/METHOD.md section 5): (1) dense
 * logits L[K,h,w] = 0 with the k stored logits scattered to their classes;
 * (2) RoIAlign (torchvision
 * semantics, aligned=False, sampling_ratio -1) of the crop box
 * x1 = left*w - 0.5, y1 = top*h - 0.5, x2 = (left+width)*w - 0.5,
 * y2 = (top+height)*h - 0.5 to S x S and to 1 x 1; (3) horizontal flip of the
 * S x S result if flipped; (4) if the geometry has an affine map, each token
 * centre is mapped through it and the S x S logits are sampled bilinearly
 * there, tokens falling outside the crop taking the 1 x 1 logits; (5) softmax
 * over classes and label smoothing s: t = (1-s) p + s/K.
 *
 * Pure functions on the caller's buffers; any thread (loader workers).
 */
#ifndef TL_TARGETS_H
#define TL_TARGETS_H

#include <stddef.h>
#include <stdint.h>

#include "tokenlab/augment.h"

/* Floats of scratch tl_targets_compute needs for a K-class h x w map and S x S tokens. */
size_t tl_targets_scratch(int K, int h, int w, int S);
/* t_cls (K) and t_dense (S*S, K) from one map entry and the sample geometry. */
void tl_targets_compute(float *t_cls, float *t_dense, const float *values /*(k,h,w)*/,
                        const int32_t *indices /*(k,h,w)*/, int k, int h, int w, int K, const tl_geom *g, int S,
                        float smoothing, float *scratch);
/* Smoothed one-hot: (1-s) onehot + s/K. */
void tl_targets_onehot(float *t /*(K)*/, int label, int K, float smoothing);

#endif
