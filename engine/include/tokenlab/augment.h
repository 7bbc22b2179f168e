/*
 * augment.h: the training and evaluation transforms (engine/data/augment.c):
 * RandomResizedCrop, flip, RandAugment, random erasing, Mixup/CutMix; the
 * outputs are normalised float images (3,S,S) with ImageNet mean/std, and
 * the geometry of what was done (tl_geom) so that label-map targets follow
 * the image.
 *
 * Reentrant: images and RNGs belong to their caller; any thread.
 */
#ifndef TL_AUGMENT_H
#define TL_AUGMENT_H

#include <stddef.h>

#include "tokenlab/image.h"
#include "tokenlab/rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float scale_min, scale_max;   /* RandomResizedCrop area fraction, default 0.08, 1 */
    float ratio_min, ratio_max;   /* aspect ratio range, default 3/4, 4/3 */
    float hflip;                  /* probability, default 0.5 */
    char randaug[64];             /* timm notation, e.g. "rand-m9-mstd0.5-inc1"; "" = off */
    float reprob;                 /* random erasing probability, default 0.25 */
    float crop_pct;               /* eval: resize shorter side to size/crop_pct, centre crop; default 0.9 */
} tl_augment_cfg;

/* The defaults above, RandAugment off. */
void tl_augment_defaults(tl_augment_cfg *a);
/* Checks ranges and parses randaug; message names the field. */
int tl_augment_validate(const tl_augment_cfg *a, char *err, size_t errlen);

/* What the training transform did, in terms label-map targets need:
 * crop box as fractions of the full image, horizontal flip (applied after the
 * crop), and an optional affine map on the output's normalised coordinates
 * (u, v in [0,1], u across): output (u,v) samples the cropped+flipped image at
 * (a[0]*u + a[1]*v + a[2], a[3]*u + a[4]*v + a[5]); identity when !has_affine.
 * Random erasing is not recorded (the paper keeps token labels under it). */
typedef struct {
    float top, left, height, width;
    int flip;
    int has_affine;
    float affine[6];
} tl_geom;

/* RandomResizedCrop (+flip, +RandAugment, +random erasing) of src to
 * out (3,S,S), normalised. rng draws everything; geom receives the geometry. */
void tl_augment_train(const tl_image *src, int S, const tl_augment_cfg *a, tl_rng *rng, float *out, tl_geom *geom);
/* Evaluation: shorter side to S/crop_pct (bilinear), centre crop S, normalised.
 * geom (may be NULL) receives the equivalent crop box, no flip. */
void tl_transform_eval(const tl_image *src, int S, float crop_pct, float *out, tl_geom *geom);
/* The whole image resized to S x S (no crop), normalised; for annotation. */
void tl_transform_full(const tl_image *src, int S, float *out);

/* Image-level Mixup / CutMix for training without label maps (the baseline):
 * mixes a batch (B,3,S,S) in place with its reversal and returns lambda (the
 * weight of each sample's own image). mode 0 = none, 1 = mixup(alpha),
 * 2 = cutmix(alpha), 3 = either with probability 1/2 each. */
float tl_mix_batch(float *images, int B, int S, int mode, float alpha, tl_rng *rng);

#ifdef __cplusplus
}
#endif
#endif
