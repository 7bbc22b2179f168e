/*
 * image.c: JPEG decoding and encoding with TurboJPEG (see data.h).
 *
 * Owns: tl_image pixel buffers (malloc'd here, freed by tl_image_free) and the
 * malloc'd output of tl_image_encode. Nothing is global: every call creates
 * its own TurboJPEG handle and destroys it before returning, so any number of
 * loader threads may decode at once (tjGetErrorStr2 reads the per-handle
 * message, never the library's global one).
 *
 * Decoding order, so that no input byte sequence can make us allocate much or
 * crash:
 *   1. tjDecompressHeader3 reads width, height, subsampling and colourspace;
 *   2. the dimensions are checked against TL_IMAGE_MAX_SIDE/_PIXELS, and a
 *      progressive file (found by walking the markers to its SOF) against
 *      TL_IMAGE_MAX_PROGRESSIVE_PIXELS: libjpeg holds its whole-image
 *      coefficient buffers at full size, whatever the output's scale;
 *   3. the DCT scaling factor is chosen here (TJSCALED over
 *      tjGetScalingFactors, factors <= 1 only), and exactly the scaled size is
 *      passed to tjDecompress2. TurboJPEG 2.1 treats width/height as a box to
 *      fit within and picks the largest factor that fits; since our factor
 *      fits and sizes are monotonic in the factor, the size it picks is
 *      exactly ours (re-checked with TurboJPEG's own rule before decoding),
 *      so the buffer we allocated is exactly right;
 *   4. RGB, YCbCr and greyscale files decode straight to TJPF_RGB (libjpeg
 *      expands grey); CMYK/YCCK files decode to TJPF_CMYK and are converted
 *      as Adobe (inverted) CMYK: R = C*K/255, G = M*K/255, B = Y*K/255;
 *   5. any error AND any warning (libjpeg's "premature end of data",
 *      "corrupt data" ...) is a failure: a warning means some pixels are not
 *      the file's. TJFLAG_LIMITSCANS bounds the time a hostile progressive
 *      file can take.
 */
#include "tokenlab/image.h"
#include "tokenlab/base.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>

/* Largest file tl_image_load reads: far above any 64 Mpixel JPEG. */
#define TL_IMAGE_MAX_FILE (512u << 20)

#define FAIL(...)                                                  \
    do {                                                           \
        tl_seterr(err, errlen, __VA_ARGS__);                       \
        goto fail;                                                 \
    } while (0)

static const char *cs_name(int cs) {
    switch (cs) {
    case TJCS_RGB: return "RGB";
    case TJCS_YCbCr: return "YCbCr";
    case TJCS_GRAY: return "greyscale";
    case TJCS_CMYK: return "CMYK";
    case TJCS_YCCK: return "YCCK";
    default: return "unknown";
    }
}

/* 1 when the JPEG's frame (its first SOFn marker) is progressive (SOF2, SOF6, SOF10, SOF14), 0 when it is
 * sequential or no frame header is found before the scan data. Walks marker segments by their lengths,
 * never past len. */
static int is_progressive(const uint8_t *j, size_t len) {
    size_t i = 2; /* after SOI */
    while (i + 1 < len) {
        if (j[i] != 0xFF) return 0; /* not at a marker: leave it to the decoder */
        while (i + 1 < len && j[i + 1] == 0xFF) i++; /* fill bytes */
        if (i + 1 >= len) return 0;
        uint8_t m = j[i + 1];
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)
            return m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE;
        if (m == 0xDA || m == 0xD9) return 0; /* scan data or end before any frame */
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { /* no length */
            i += 2;
            continue;
        }
        if (i + 3 >= len) return 0;
        size_t seg = ((size_t)j[i + 2] << 8) | j[i + 3];
        if (seg < 2) return 0;
        i += 2 + seg;
    }
    return 0;
}

/* The smallest factor <= 1 whose scaled shorter side is >= min_short; 1/1 if
 * min_short <= 0 or none qualifies. */
static void pick_scale(int w, int h, int min_short, int *sw, int *sh) {
    *sw = w;
    *sh = h;
    if (min_short <= 0) return;
    int n = 0;
    tjscalingfactor *sf = tjGetScalingFactors(&n);
    if (!sf || n <= 0) return;
    int best_w = w, best_h = h;
    double best = 1.0;
    for (int i = 0; i < n; i++) {
        if (sf[i].num <= 0 || sf[i].denom <= 0 || sf[i].num > sf[i].denom) continue;
        double f = (double)sf[i].num / sf[i].denom;
        int tw = TJSCALED(w, sf[i]), th = TJSCALED(h, sf[i]);
        int s = tw < th ? tw : th;
        if (s >= min_short && f < best) {
            best = f;
            best_w = tw;
            best_h = th;
        }
    }
    *sw = best_w;
    *sh = best_h;
}

int tl_image_decode(const uint8_t *jpeg, size_t len, int min_short, tl_image *out, tl_image_status *status, char *err,
                    size_t errlen) {
    tjhandle tj = NULL;
    uint8_t *buf = NULL;
    tl_image_status st = TL_IMG_CORRUPT;
    if (out) {
        out->w = out->h = 0;
        out->rgb = NULL;
    }
    if (!out) FAIL("image: no output");
    st = TL_IMG_EMPTY;
    if (!jpeg || len == 0) FAIL("image: empty data");
    st = TL_IMG_NOT_JPEG;
    if (len < 4 || jpeg[0] != 0xFF || jpeg[1] != 0xD8) FAIL("image: not a JPEG (no SOI marker)");
    st = TL_IMG_TOO_LARGE;
    if (len > ULONG_MAX) FAIL("image: data too large");
    st = TL_IMG_NO_MEMORY;
    tj = tjInitDecompress();
    if (!tj) FAIL("image: cannot start the JPEG decoder: %s", tjGetErrorStr2(NULL));
    int w = 0, h = 0, subsamp = 0, cs = 0;
    st = TL_IMG_CORRUPT;
    if (tjDecompressHeader3(tj, jpeg, (unsigned long)len, &w, &h, &subsamp, &cs) != 0)
        FAIL("image: bad JPEG header: %s", tjGetErrorStr2(tj));
    st = TL_IMG_TOO_LARGE;
    if (w <= 0 || h <= 0 || w > TL_IMAGE_MAX_SIDE || h > TL_IMAGE_MAX_SIDE ||
        (uint64_t)w * (uint64_t)h > TL_IMAGE_MAX_PIXELS)
        FAIL("image is %dx%d, larger than the %d px / %u Mpixel limit", w, h, TL_IMAGE_MAX_SIDE,
             TL_IMAGE_MAX_PIXELS >> 20);
    if ((uint64_t)w * (uint64_t)h > TL_IMAGE_MAX_PROGRESSIVE_PIXELS && is_progressive(jpeg, len))
        FAIL("image is a progressive JPEG of %dx%d, larger than the %u Mpixel limit for progressive files", w, h,
             TL_IMAGE_MAX_PROGRESSIVE_PIXELS >> 20);
    int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    st = TL_IMG_UNSUPPORTED;
    if (!cmyk && cs != TJCS_RGB && cs != TJCS_YCbCr && cs != TJCS_GRAY)
        FAIL("image: unsupported JPEG colourspace %d", cs);
    st = TL_IMG_CORRUPT;
    int sw, sh;
    pick_scale(w, h, min_short, &sw, &sh);
    /* TurboJPEG fits (sw, sh) as a box, taking the first factor, largest
     * first, whose scaled size fits; make sure that lands exactly on our size
     * so that it can never write past the buffer. */
    {
        int n = 0, fits = 0;
        tjscalingfactor *sf = tjGetScalingFactors(&n);
        for (int i = 0; sf && i < n; i++)
            if (TJSCALED(w, sf[i]) <= sw && TJSCALED(h, sf[i]) <= sh) {
                fits = TJSCALED(w, sf[i]) == sw && TJSCALED(h, sf[i]) == sh;
                break;
            }
        if (!fits) FAIL("image: cannot decode %dx%d at %dx%d exactly", w, h, sw, sh);
    }
    int pf = cmyk ? TJPF_CMYK : TJPF_RGB;
    size_t px = (size_t)sw * (size_t)sh;
    buf = malloc(px * (cmyk ? 4 : 3));
    st = TL_IMG_NO_MEMORY;
    if (!buf) FAIL("image: out of memory for %dx%d pixels", sw, sh);
    st = TL_IMG_CORRUPT;
    int flags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS;
    if (tjDecompress2(tj, jpeg, (unsigned long)len, buf, sw, 0, sh, pf, flags) != 0) {
        int code = tjGetErrorCode(tj);
        FAIL("image: %s JPEG (%s, %dx%d): %s", code == TJERR_WARNING ? "incomplete or corrupt" : "cannot decode",
             cs_name(cs), w, h, tjGetErrorStr2(tj));
    }
    if (cmyk) {
        /* Adobe CMYK as libjpeg gives it is inverted (255 = no ink). In place:
         * pixel i's RGB (3i..3i+2) never overtakes its CMYK (4i..4i+3). */
        for (size_t i = 0; i < px; i++) {
            unsigned c = buf[4 * i], m = buf[4 * i + 1], y = buf[4 * i + 2], k = buf[4 * i + 3];
            buf[3 * i] = (uint8_t)((c * k + 127) / 255);
            buf[3 * i + 1] = (uint8_t)((m * k + 127) / 255);
            buf[3 * i + 2] = (uint8_t)((y * k + 127) / 255);
        }
        uint8_t *shrunk = realloc(buf, px * 3);
        if (shrunk) buf = shrunk;
    }
    tjDestroy(tj);
    out->w = sw;
    out->h = sh;
    out->rgb = buf;
    if (status) *status = TL_IMG_OK;
    return 0;
fail:
    free(buf);
    if (tj) tjDestroy(tj);
    if (status) *status = st;
    return -1;
}

int tl_image_load(const char *path, int min_short, tl_image *out, char *err, size_t errlen) {
    FILE *f = NULL;
    uint8_t *data = NULL;
    if (out) {
        out->w = out->h = 0;
        out->rgb = NULL;
    }
    if (!path || !out) FAIL("image: no path");
    f = fopen(path, "rb");
    if (!f) FAIL("%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) FAIL("%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) FAIL("%s: not a regular file", path);
    if (st.st_size <= 0) FAIL("%s: empty file", path);
    if ((uint64_t)st.st_size > TL_IMAGE_MAX_FILE)
        FAIL("%s: %lld bytes, larger than the %u MiB limit for an image file", path, (long long)st.st_size,
             TL_IMAGE_MAX_FILE >> 20);
    size_t n = (size_t)st.st_size;
    data = malloc(n);
    if (!data) FAIL("%s: out of memory", path);
    size_t got = fread(data, 1, n, f);
    if (got != n) FAIL("%s: short read (%zu of %zu bytes)", path, got, n);
    fclose(f);
    f = NULL;
    char msg[256];
    if (tl_image_decode(data, n, min_short, out, NULL, msg, sizeof msg) != 0) FAIL("%s: %s", path, msg);
    free(data);
    return 0;
fail:
    if (f) fclose(f);
    free(data);
    return -1;
}

void tl_image_free(tl_image *im) {
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->w = im->h = 0;
}

int tl_image_encode(const uint8_t *rgb, int w, int h, int quality, uint8_t **out, size_t *outlen, char *err,
                    size_t errlen) {
    tjhandle tj = NULL;
    uint8_t *buf = NULL;
    if (out) *out = NULL;
    if (outlen) *outlen = 0;
    if (!rgb || !out || !outlen) FAIL("image encode: no pixels or no output");
    if (w <= 0 || h <= 0 || w > TL_IMAGE_MAX_SIDE || h > TL_IMAGE_MAX_SIDE ||
        (uint64_t)w * (uint64_t)h > TL_IMAGE_MAX_PIXELS)
        FAIL("image encode: %dx%d is outside 1..%d px / %u Mpixel", w, h, TL_IMAGE_MAX_SIDE,
             TL_IMAGE_MAX_PIXELS >> 20);
    if (quality < 1 || quality > 100) FAIL("image encode: quality must be in 1..100, got %d", quality);
    /* 4:4:4 at high quality (colour edges matter more than bytes), else 4:2:0. */
    int subsamp = quality >= 90 ? TJSAMP_444 : TJSAMP_420;
    unsigned long cap = tjBufSize(w, h, subsamp);
    if (cap == (unsigned long)-1 || cap == 0) FAIL("image encode: cannot size the output for %dx%d", w, h);
    buf = malloc(cap);
    if (!buf) FAIL("image encode: out of memory");
    tj = tjInitCompress();
    if (!tj) FAIL("image encode: cannot start the JPEG encoder: %s", tjGetErrorStr2(NULL));
    unsigned char *dst = buf;
    unsigned long size = cap;
    if (tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &dst, &size, subsamp, quality, TJFLAG_NOREALLOC) != 0)
        FAIL("image encode: %s", tjGetErrorStr2(tj));
    tjDestroy(tj);
    tj = NULL;
    uint8_t *shrunk = realloc(buf, size);
    if (shrunk) buf = shrunk;
    *out = buf;
    *outlen = size;
    return 0;
fail:
    if (tj) tjDestroy(tj);
    free(buf);
    return -1;
}
