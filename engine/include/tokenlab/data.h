/*
 * data.h: images, image-folder datasets, and augmentation.
 *
 * image.c   decodes JPEG with TurboJPEG (greyscale and CMYK become RGB),
 *           using DCT scaling to decode no larger than needed, after checking
 *           the header's dimensions against limits before allocating.
 * dataset.c scans the class-per-folder layout <root>/<class>/<file>.jpg|jpeg|JPEG
 *           (classes in sorted folder order; optional classes.tsv with
 *           "folder<TAB>readable name[<TAB>...]" lines, first line a header if
 *           its first field is not a folder name).
 * augment.c the training and evaluation transforms; outputs normalised float
 *           images (3,S,S) with ImageNet mean/std, and the geometry of what it
 *           did (tl_geom) so that label-map targets follow the image.
 *
 * All functions are reentrant: a dataset is read-only after tl_dataset_open and
 * may be shared by loader threads; images and RNGs belong to their caller.
 */
#ifndef TL_DATA_H
#define TL_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "tokenlab/rng.h"

#define TL_IMAGE_MAX_SIDE 16384           /* refuse larger headers before allocating */
#define TL_IMAGE_MAX_PIXELS (64u << 20)   /* 64 Mpixel */

/* ---- images (image.c) ---- */
typedef struct {
    int w, h;       /* pixels */
    uint8_t *rgb;   /* h*w*3, row-major, owned (free with tl_image_free) */
} tl_image;

/* Why a decode failed, for callers that answer users (the daemon maps these to HTTP statuses). */
typedef enum {
    TL_IMG_OK = 0,
    TL_IMG_EMPTY,        /* no bytes */
    TL_IMG_NOT_JPEG,     /* no JPEG start-of-image marker */
    TL_IMG_TOO_LARGE,    /* the header claims more than TL_IMAGE_MAX_SIDE / TL_IMAGE_MAX_PIXELS */
    TL_IMG_CORRUPT,      /* a bad header, truncated or corrupt data */
    TL_IMG_UNSUPPORTED,  /* a colourspace the decoder does not handle */
    TL_IMG_NO_MEMORY,
} tl_image_status;
/* Decodes a JPEG from memory. min_short > 0 asks for the smallest DCT scaling
 * (1/8 .. 1) whose shorter side is still >= min_short (or full size if none);
 * 0 decodes at full size. Returns 0, or -1 with a reason (corrupt, truncated,
 * too large, not a JPEG) and, when status is not NULL, the kind of failure in
 * *status (TL_IMG_OK on success). */
int tl_image_decode(const uint8_t *jpeg, size_t len, int min_short, tl_image *out, tl_image_status *status, char *err,
                    size_t errlen);
int tl_image_load(const char *path, int min_short, tl_image *out, char *err, size_t errlen);
void tl_image_free(tl_image *im);
/* Encodes RGB to JPEG (quality 1..100) into a malloc'd buffer. */
int tl_image_encode(const uint8_t *rgb, int w, int h, int quality, uint8_t **out, size_t *outlen, char *err,
                    size_t errlen);

/* ---- datasets (dataset.c) ---- */
typedef struct tl_dataset tl_dataset;

tl_dataset *tl_dataset_open(const char *root, char *err, size_t errlen);
void tl_dataset_free(tl_dataset *d);
const char *tl_dataset_root(const tl_dataset *d);
int tl_dataset_count(const tl_dataset *d);
int tl_dataset_num_classes(const tl_dataset *d);
const char *tl_dataset_class_folder(const tl_dataset *d, int c);   /* e.g. "n01440764" */
const char *tl_dataset_class_name(const tl_dataset *d, int c);     /* classes.tsv name, else the folder */
const char *tl_dataset_relpath(const tl_dataset *d, int i);        /* "n01440764/x.JPEG" */
int tl_dataset_label(const tl_dataset *d, int i);
/* root + "/" + relpath into buf; -1 if it does not fit. */
int tl_dataset_path(const tl_dataset *d, int i, char *buf, size_t len);

/* ---- augmentation (augment.c) ---- */
typedef struct {
    float scale_min, scale_max;   /* RandomResizedCrop area fraction, default 0.08, 1 */
    float ratio_min, ratio_max;   /* aspect ratio range, default 3/4, 4/3 */
    float hflip;                  /* probability, default 0.5 */
    char randaug[64];             /* timm notation, e.g. "rand-m9-mstd0.5-inc1"; "" = off */
    float reprob;                 /* random erasing probability, default 0.25 */
    float crop_pct;               /* eval: resize shorter side to size/crop_pct, centre crop; default 0.9 */
} tl_augment_cfg;

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

#endif
