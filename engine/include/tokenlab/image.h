/*
 * image.h: JPEG images in memory (engine/data/image.c): decoding with
 * TurboJPEG (greyscale and CMYK become RGB), using DCT scaling to decode no
 * larger than needed, after checking the header's dimensions against limits
 * before allocating; and encoding RGB back to JPEG.
 *
 * Reentrant: a tl_image belongs to its caller; any thread.
 */
#ifndef TL_IMAGE_H
#define TL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TL_IMAGE_MAX_SIDE 16384           /* refuse larger headers before allocating */
#define TL_IMAGE_MAX_PIXELS (64u << 20)   /* 64 Mpixel */
/* Progressive (and other multi-scan) JPEGs are decoded through whole-image coefficient buffers at full
 * size, whatever the output's scale: 2 bytes per coefficient, up to 3 full-resolution components, so
 * 16 Mpixel keeps them under 96 MiB. Larger ones are refused from the header, before decoding. */
#define TL_IMAGE_MAX_PROGRESSIVE_PIXELS (16u << 20)

typedef struct {
    int w, h;       /* pixels */
    uint8_t *rgb;   /* h*w*3, row-major, owned (free with tl_image_free) */
} tl_image;

/* Why a decode failed, for callers that answer users (the daemon maps these to HTTP statuses). */
typedef enum {
    TL_IMG_OK = 0,
    TL_IMG_EMPTY,        /* no bytes */
    TL_IMG_NOT_JPEG,     /* no JPEG start-of-image marker */
    TL_IMG_TOO_LARGE,    /* the header claims more than TL_IMAGE_MAX_SIDE / TL_IMAGE_MAX_PIXELS (or, for a
                          * progressive file, TL_IMAGE_MAX_PROGRESSIVE_PIXELS) */
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
/* Reads the file at path and decodes it as tl_image_decode does; messages name the path. */
int tl_image_load(const char *path, int min_short, tl_image *out, char *err, size_t errlen);
/* Frees the pixels of im (not im itself) and empties it; NULL or an empty image is fine. */
void tl_image_free(tl_image *im);
/* Encodes RGB to JPEG (quality 1..100) into a malloc'd buffer. */
int tl_image_encode(const uint8_t *rgb, int w, int h, int quality, uint8_t **out, size_t *outlen, char *err,
                    size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
