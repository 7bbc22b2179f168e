/*
 * augment.c: training and evaluation transforms, and batch Mixup/CutMix
 * (see augment.h). The resampling filter is resample.c's.
 *
 * Owns nothing beyond a call: every function works on caller-owned images,
 * RNGs and outputs plus scratch buffers it mallocs and frees itself, so loader
 * threads call it concurrently (one tl_rng per thread). The void functions
 * cannot report errors: on invalid arguments or a failed scratch allocation
 * they write a zero image (the dataset mean) and an identity geometry.
 *
 * Pipeline of tl_augment_train, following torchvision/timm step by step:
 *   1. RandomResizedCrop parameters exactly as torchvision draws them;
 *   2. the crop resampled to S x S uint8 by a separable triangle ("bilinear")
 *      filter with half-pixel centres; when shrinking, the filter is widened
 *      by the scale factor (PIL's / torchvision antialias=True bilinear),
 *      which is the area-averaging prefilter the spec asks for above 2x and a
 *      mild one between 1x and 2x; when enlarging it is plain bilinear;
 *   3. horizontal flip;
 *   4. RandAugment, timm "rand" flavour: n ops drawn with replacement from the
 *      15-op set (increasing or not), each applied with probability p (0.5),
 *      magnitude m plus N(0, mstd) noise clipped to [0, mmax]; colour ops act
 *      on the uint8 image as PIL does; geometric ops (Rotate, ShearX/Y,
 *      TranslateX/YRel) are affine maps in normalised coordinates, PIL's
 *      conventions (rotation about the centre, counter-clockwise for positive
 *      degrees). Consecutive geometric ops are composed and applied in one
 *      bilinear warp (fill (124,116,104) outside the image); a colour op
 *      after them first materialises the warp, as timm would have. The
 *      recorded affine is the product of all of them, so the image at output
 *      (u,v) is the cropped+flipped image at affine(u,v) wherever that lies
 *      inside [0,1)^2;
 *   5. normalisation with the ImageNet mean/std into (3,S,S);
 *   6. RandomErasing (timm, mode 'pixel', one box).
 * Random draws all come from the caller's tl_rng in a fixed order, so the same
 * seed gives the same output bit for bit.
 *
 * randaug strings: "rand" then dash-separated sections in any order, m<0..30>
 * (required), n<0..16> (2), mstd<S> (0; > 100 means uniform in [0, m]),
 * mmax<X> (10), inc<0|1> (0), p<0..1> (0.5, an extension). Unlike timm, whose
 * bool("0") makes "inc0" select the increasing set too, inc0 here means the
 * original set. A string tl_augment_validate would refuse turns RandAugment
 * off in tl_augment_train (validate configurations first).
 *
 * Normalised coordinates: u = x_continuous / S with pixel x covering [x, x+1),
 * so pixel centres are at (x + 0.5) / S.
 */
#include "tokenlab/augment.h"
#include "tokenlab/base.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/simd.h"
#include "data/resample.h"

static const float MEAN[3] = {0.485f, 0.456f, 0.406f};
static const float STDV[3] = {0.229f, 0.224f, 0.225f};
static const uint8_t FILL[3] = {124, 116, 104}; /* timm: round(mean * 255) */

/* ------------------------------------------------------------------------ */
/* configuration                                                              */

void tl_augment_defaults(tl_augment_cfg *a) {
    if (!a) return;
    memset(a, 0, sizeof *a);
    a->scale_min = 0.08f;
    a->scale_max = 1.0f;
    a->ratio_min = 3.0f / 4.0f;
    a->ratio_max = 4.0f / 3.0f;
    a->hflip = 0.5f;
    snprintf(a->randaug, sizeof a->randaug, "%s", "rand-m9-mstd0.5-inc1");
    a->reprob = 0.25f;
    a->crop_pct = 0.9f;
}

typedef struct {
    int on;
    double m;    /* magnitude, 0..30 */
    int n;       /* ops per image */
    double mstd; /* gaussian noise of the magnitude; INFINITY = uniform in [0, m] */
    double mmax; /* clip of the magnitude */
    int inc;     /* increasing-severity op set */
    double p;    /* probability of applying each op */
} randaug_cfg;

#define RA_SYNTAX "expected \"\" or rand-m<M>[-n<N>][-mstd<S>][-inc<0|1>][-mmax<X>][-p<P>]"

static int parse_num(const char *s, double *v) {
    if (!*s || !(isdigit((unsigned char)*s) || *s == '.')) return -1;
    char *end = NULL;
    double x = strtod(s, &end);
    if (!end || *end || !isfinite(x)) return -1;
    *v = x;
    return 0;
}

static int parse_randaug(const char *s, randaug_cfg *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    r->n = 2;
    r->mmax = 10.0;
    r->p = 0.5;
    r->m = 10.0;
    if (memchr(s, '\0', sizeof ((tl_augment_cfg *)0)->randaug) == NULL) {
        tl_seterr(err, errlen, "augment.randaug: not terminated within 64 characters");
        return -1;
    }
    if (!*s) return 0;
    char buf[sizeof ((tl_augment_cfg *)0)->randaug];
    snprintf(buf, sizeof buf, "%s", s);
#define RA_FAIL(...) return tl_seterr(err, errlen, __VA_ARGS__)
    char *save = NULL;
    char *tok = strtok_r(buf, "-", &save);
    if (!tok || strcmp(tok, "rand") != 0) RA_FAIL("augment.randaug: \"%s\": must start with \"rand\"; " RA_SYNTAX, s);
    int seen_m = 0, seen_n = 0, seen_mstd = 0, seen_inc = 0, seen_mmax = 0, seen_p = 0;
    while ((tok = strtok_r(NULL, "-", &save)) != NULL) {
        size_t k = 0;
        while (tok[k] && isalpha((unsigned char)tok[k])) k++;
        char key[8];
        if (k == 0 || k >= sizeof key) RA_FAIL("augment.randaug: \"%s\": unknown section \"%s\"; " RA_SYNTAX, s, tok);
        memcpy(key, tok, k);
        key[k] = '\0';
        const char *val = tok + k;
        double v;
        if (parse_num(val, &v) != 0)
            RA_FAIL("augment.randaug: \"%s\": section \"%s\" needs a non-negative number; " RA_SYNTAX, s, tok);
        if (strcmp(key, "m") == 0) {
            if (seen_m++) RA_FAIL("augment.randaug: \"%s\": m given twice", s);
            if (v > 30.0) RA_FAIL("augment.randaug: \"%s\": magnitude m must be in 0..30, got %g", s, v);
            r->m = v;
        } else if (strcmp(key, "n") == 0) {
            if (seen_n++) RA_FAIL("augment.randaug: \"%s\": n given twice", s);
            if (v != floor(v) || v > 16.0) RA_FAIL("augment.randaug: \"%s\": n must be an integer in 0..16, got %g", s, v);
            r->n = (int)v;
        } else if (strcmp(key, "mstd") == 0) {
            if (seen_mstd++) RA_FAIL("augment.randaug: \"%s\": mstd given twice", s);
            r->mstd = v > 100.0 ? INFINITY : v; /* timm: mstd > 100 means uniform in [0, m] */
        } else if (strcmp(key, "mmax") == 0) {
            if (seen_mmax++) RA_FAIL("augment.randaug: \"%s\": mmax given twice", s);
            if (v <= 0.0 || v > 30.0) RA_FAIL("augment.randaug: \"%s\": mmax must be in (0, 30], got %g", s, v);
            r->mmax = v;
        } else if (strcmp(key, "inc") == 0) {
            if (seen_inc++) RA_FAIL("augment.randaug: \"%s\": inc given twice", s);
            if (v != 0.0 && v != 1.0) RA_FAIL("augment.randaug: \"%s\": inc must be 0 or 1, got %g", s, v);
            r->inc = v == 1.0;
        } else if (strcmp(key, "p") == 0) {
            if (seen_p++) RA_FAIL("augment.randaug: \"%s\": p given twice", s);
            if (v > 1.0) RA_FAIL("augment.randaug: \"%s\": op probability p must be in 0..1, got %g", s, v);
            r->p = v;
        } else {
            RA_FAIL("augment.randaug: \"%s\": unknown section \"%s\"; " RA_SYNTAX, s, tok);
        }
    }
    if (!seen_m) RA_FAIL("augment.randaug: \"%s\": the magnitude m is missing; " RA_SYNTAX, s);
#undef RA_FAIL
    r->on = r->n > 0;
    return 0;
}

int tl_augment_validate(const tl_augment_cfg *a, char *err, size_t errlen) {
#define V_FAIL(...) return tl_seterr(err, errlen, __VA_ARGS__)
    if (!a) V_FAIL("augment: no configuration");
    if (!(a->scale_min > 0.0f && a->scale_min <= a->scale_max && a->scale_max <= 1.0f))
        V_FAIL("augment.scale: need 0 < scale_min <= scale_max <= 1, got %g..%g", a->scale_min, a->scale_max);
    if (!(a->ratio_min > 0.0f && a->ratio_min <= a->ratio_max && isfinite(a->ratio_max)))
        V_FAIL("augment.ratio: need 0 < ratio_min <= ratio_max, got %g..%g", a->ratio_min, a->ratio_max);
    if (!(a->hflip >= 0.0f && a->hflip <= 1.0f)) V_FAIL("augment.hflip: must be in 0..1, got %g", a->hflip);
    if (!(a->reprob >= 0.0f && a->reprob <= 1.0f)) V_FAIL("augment.reprob: must be in 0..1, got %g", a->reprob);
    if (!(a->crop_pct > 0.0f && a->crop_pct <= 1.0f))
        V_FAIL("augment.crop_pct: must be in (0, 1], got %g", a->crop_pct);
#undef V_FAIL
    randaug_cfg r;
    return parse_randaug(a->randaug, &r, err, errlen);
}

/* ------------------------------------------------------------------------ */
/* normalisation and helpers                                                  */

TL_VEC static void normalise(const uint8_t *img, int S, float *out) {
    size_t n = (size_t)S * S;
    float sc[3], of[3];
    for (int c = 0; c < 3; c++) {
        sc[c] = 1.0f / (255.0f * STDV[c]);
        of[c] = -MEAN[c] / STDV[c];
    }
    float *o0 = out, *o1 = out + n, *o2 = out + 2 * n;
    for (size_t i = 0; i < n; i++) {
        o0[i] = (float)img[3 * i] * sc[0] + of[0];
        o1[i] = (float)img[3 * i + 1] * sc[1] + of[1];
        o2[i] = (float)img[3 * i + 2] * sc[2] + of[2];
    }
}

static void zero_out(float *out, int S) {
    if (out && S > 0 && S <= TL_IMAGE_MAX_SIDE) memset(out, 0, (size_t)3 * S * S * sizeof *out);
}

static void geom_identity(tl_geom *g) {
    if (!g) return;
    memset(g, 0, sizeof *g);
    g->height = g->width = 1.0f;
    g->affine[0] = g->affine[4] = 1.0f;
}

static int image_ok(const tl_image *src) {
    return src && src->rgb && src->w > 0 && src->h > 0 && src->w <= TL_IMAGE_MAX_SIDE &&
           src->h <= TL_IMAGE_MAX_SIDE;
}

static int size_ok(int S) { return S > 0 && S <= TL_IMAGE_MAX_SIDE; }

static double uniform(tl_rng *r, double a, double b) { return a + (b - a) * tl_rng_uniform(r); }

/* Python's round(): half to even (the default rounding mode). */
static int pyround(double x) { return (int)nearbyint(x); }

/* ------------------------------------------------------------------------ */
/* RandAugment                                                                */

enum {
    OP_AUTOCONTRAST,
    OP_EQUALIZE,
    OP_INVERT,
    OP_ROTATE,
    OP_POSTERIZE,
    OP_SOLARIZE,
    OP_SOLARIZE_ADD,
    OP_COLOR,
    OP_CONTRAST,
    OP_BRIGHTNESS,
    OP_SHARPNESS,
    OP_SHEAR_X,
    OP_SHEAR_Y,
    OP_TRANSLATE_X,
    OP_TRANSLATE_Y,
    OP_COUNT
};

static uint8_t clip8(double v) {
    v = v + 0.5;
    return v <= 0.0 ? 0 : v >= 255.0 ? 255 : (uint8_t)v;
}

static void apply_lut3(uint8_t *img, size_t npx, const uint8_t lut[3][256]) {
    for (size_t i = 0; i < npx; i++) {
        img[3 * i] = lut[0][img[3 * i]];
        img[3 * i + 1] = lut[1][img[3 * i + 1]];
        img[3 * i + 2] = lut[2][img[3 * i + 2]];
    }
}

static void apply_lut1(uint8_t *img, size_t npx, const uint8_t lut[256]) {
    for (size_t i = 0; i < 3 * npx; i++) img[i] = lut[img[i]];
}

static void histograms(const uint8_t *img, size_t npx, uint32_t h[3][256]) {
    memset(h, 0, 3 * 256 * sizeof h[0][0]);
    for (size_t i = 0; i < npx; i++) {
        h[0][img[3 * i]]++;
        h[1][img[3 * i + 1]]++;
        h[2][img[3 * i + 2]]++;
    }
}

static void op_autocontrast(uint8_t *img, size_t npx) {
    uint32_t h[3][256];
    uint8_t lut[3][256];
    histograms(img, npx, h);
    for (int c = 0; c < 3; c++) {
        int lo = 0, hi = 255;
        while (lo < 256 && !h[c][lo]) lo++;
        while (hi >= 0 && !h[c][hi]) hi--;
        if (hi <= lo) {
            for (int i = 0; i < 256; i++) lut[c][i] = (uint8_t)i;
            continue;
        }
        double scale = 255.0 / (hi - lo), offset = -lo * scale;
        for (int i = 0; i < 256; i++) {
            int v = (int)(i * scale + offset); /* PIL truncates */
            lut[c][i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    apply_lut3(img, npx, lut);
}

static void op_equalize(uint8_t *img, size_t npx) {
    uint32_t h[3][256];
    uint8_t lut[3][256];
    histograms(img, npx, h);
    for (int c = 0; c < 3; c++) {
        int nz = 0, last = -1;
        uint64_t total = 0;
        for (int i = 0; i < 256; i++)
            if (h[c][i]) {
                nz++;
                last = i;
                total += h[c][i];
            }
        uint64_t step = nz > 1 ? (total - h[c][last]) / 255 : 0;
        if (!step) {
            for (int i = 0; i < 256; i++) lut[c][i] = (uint8_t)i;
            continue;
        }
        uint64_t n = step / 2;
        for (int i = 0; i < 256; i++) {
            uint64_t v = n / step;
            lut[c][i] = (uint8_t)(v > 255 ? 255 : v);
            n += h[c][i];
        }
    }
    apply_lut3(img, npx, lut);
}

/* out = degenerate + f * (img - degenerate), per pixel grey degenerate. */
static void op_color(uint8_t *img, size_t npx, double f) {
    float ff = (float)f;
    for (size_t i = 0; i < npx; i++) {
        uint8_t *p = img + 3 * i;
        int l = (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16; /* PIL's RGB -> L */
        for (int c = 0; c < 3; c++) {
            float v = (float)l + ff * (float)(p[c] - l) + 0.5f;
            p[c] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)v;
        }
    }
}

static void op_contrast(uint8_t *img, size_t npx, double f) {
    uint64_t sum = 0;
    for (size_t i = 0; i < npx; i++) {
        const uint8_t *p = img + 3 * i;
        sum += (uint64_t)((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
    }
    int mean = (int)((double)sum / (double)npx + 0.5);
    uint8_t lut[256];
    for (int i = 0; i < 256; i++) lut[i] = clip8(mean + f * (i - mean));
    apply_lut1(img, npx, lut);
}

/* Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, total 13) of the
 * interior; the border pixels are their own degenerate. tmp: S*S*3. */
static void op_sharpness(uint8_t *img, int S, double f, uint8_t *tmp) {
    if (S < 3) return;
    size_t stride = (size_t)S * 3;
    memcpy(tmp, img, stride * S);
    float ff = (float)f;
    for (int y = 1; y < S - 1; y++) {
        const uint8_t *a = tmp + (size_t)(y - 1) * stride, *b = a + stride, *c = b + stride;
        uint8_t *o = img + (size_t)y * stride;
        for (size_t j = 3; j < stride - 3; j++) {
            int s = a[j - 3] + a[j] + a[j + 3] + b[j - 3] + 5 * b[j] + b[j + 3] + c[j - 3] + c[j] + c[j + 3];
            float deg = (float)((s + 6) / 13);
            float v = deg + ff * ((float)b[j] - deg) + 0.5f;
            o[j] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)v;
        }
    }
}

/* dst(u,v) = src(A(u,v)) with bilinear sampling, fill outside [0,1)^2. */
TL_VEC static void warp_affine(const uint8_t *src, uint8_t *dst, int S, const double A[6]) {
    float a0 = (float)A[0], a1 = (float)A[1], a2 = (float)A[2], a3 = (float)A[3], a4 = (float)A[4], a5 = (float)A[5];
    float inv = 1.0f / (float)S, fS = (float)S;
    size_t stride = (size_t)S * 3;
    for (int y = 0; y < S; y++) {
        float v = ((float)y + 0.5f) * inv;
        uint8_t *o = dst + (size_t)y * stride;
        for (int x = 0; x < S; x++) {
            float u = ((float)x + 0.5f) * inv;
            float su = a0 * u + a1 * v + a2, sv = a3 * u + a4 * v + a5;
            uint8_t *q = o + 3 * x;
            if (!(su >= 0.0f && su < 1.0f && sv >= 0.0f && sv < 1.0f)) {
                q[0] = FILL[0];
                q[1] = FILL[1];
                q[2] = FILL[2];
                continue;
            }
            float sx = su * fS - 0.5f, sy = sv * fS - 0.5f;
            int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
            float fx = sx - (float)x0, fy = sy - (float)y0;
            int x1 = x0 + 1, y1 = y0 + 1;
            x0 = x0 < 0 ? 0 : x0;
            y0 = y0 < 0 ? 0 : y0;
            x1 = x1 > S - 1 ? S - 1 : x1;
            y1 = y1 > S - 1 ? S - 1 : y1;
            const uint8_t *p00 = src + (size_t)y0 * stride + 3 * (size_t)x0, *p01 = src + (size_t)y0 * stride + 3 * (size_t)x1;
            const uint8_t *p10 = src + (size_t)y1 * stride + 3 * (size_t)x0, *p11 = src + (size_t)y1 * stride + 3 * (size_t)x1;
            for (int c = 0; c < 3; c++) {
                float top = (float)p00[c] + fx * ((float)p01[c] - (float)p00[c]);
                float bot = (float)p10[c] + fx * ((float)p11[c] - (float)p10[c]);
                float val = top + fy * (bot - top) + 0.5f;
                q[c] = val >= 255.0f ? 255 : (uint8_t)val;
            }
        }
    }
}

/* C = A * B for affine maps as 2x3 (third row 0 0 1): C(p) = A(B(p)). */
static void affine_mul(const double A[6], const double B[6], double C[6]) {
    double c[6];
    c[0] = A[0] * B[0] + A[1] * B[3];
    c[1] = A[0] * B[1] + A[1] * B[4];
    c[2] = A[0] * B[2] + A[1] * B[5] + A[2];
    c[3] = A[3] * B[0] + A[4] * B[3];
    c[4] = A[3] * B[1] + A[4] * B[4];
    c[5] = A[3] * B[2] + A[4] * B[5] + A[5];
    memcpy(C, c, sizeof c);
}

static int affine_is_identity(const double A[6]) {
    return A[0] == 1.0 && A[1] == 0.0 && A[2] == 0.0 && A[3] == 0.0 && A[4] == 1.0 && A[5] == 0.0;
}

static double random_negate(tl_rng *r, double v) { return tl_rng_uniform(r) > 0.5 ? -v : v; }

/* Applies RandAugment to img (S*S*3) in place; tmp is S*S*3 scratch.
 * total receives the product of the geometric ops (identity if none). */
static void randaugment(uint8_t *img, uint8_t *tmp, int S, const randaug_cfg *ra, tl_rng *rng, double total[6]) {
    static const double I[6] = {1, 0, 0, 0, 1, 0};
    double pending[6];
    memcpy(pending, I, sizeof pending);
    memcpy(total, I, sizeof pending);
    size_t npx = (size_t)S * S;
    int ops[16];
    for (int i = 0; i < ra->n; i++) ops[i] = (int)tl_rng_below(rng, OP_COUNT); /* with replacement, as timm */
    for (int i = 0; i < ra->n; i++) {
        if (ra->p < 1.0 && tl_rng_uniform(rng) > ra->p) continue;
        double mag = ra->m;
        if (ra->mstd > 0.0) mag = isinf(ra->mstd) ? uniform(rng, 0.0, ra->m) : ra->m + ra->mstd * tl_rng_normal(rng);
        mag = mag < 0.0 ? 0.0 : mag > ra->mmax ? ra->mmax : mag;
        double level = mag / 10.0; /* timm's _LEVEL_DENOM */
        int op = ops[i];
        double A[6];
        int geometric = 1;
        switch (op) {
        case OP_ROTATE: {
            double deg = random_negate(rng, level * 30.0);
            double t = -deg * M_PI / 180.0, c = cos(t), s = sin(t);
            /* PIL rotate: input = R(-deg) (output - centre) + centre */
            A[0] = c, A[1] = s, A[2] = 0.5 - c * 0.5 - s * 0.5;
            A[3] = -s, A[4] = c, A[5] = 0.5 + s * 0.5 - c * 0.5;
            break;
        }
        case OP_SHEAR_X: {
            double f = random_negate(rng, level * 0.3);
            A[0] = 1, A[1] = f, A[2] = 0, A[3] = 0, A[4] = 1, A[5] = 0;
            break;
        }
        case OP_SHEAR_Y: {
            double f = random_negate(rng, level * 0.3);
            A[0] = 1, A[1] = 0, A[2] = 0, A[3] = f, A[4] = 1, A[5] = 0;
            break;
        }
        case OP_TRANSLATE_X: {
            double f = random_negate(rng, level * 0.45); /* timm translate_pct */
            A[0] = 1, A[1] = 0, A[2] = f, A[3] = 0, A[4] = 1, A[5] = 0;
            break;
        }
        case OP_TRANSLATE_Y: {
            double f = random_negate(rng, level * 0.45);
            A[0] = 1, A[1] = 0, A[2] = 0, A[3] = 0, A[4] = 1, A[5] = f;
            break;
        }
        default: geometric = 0; break;
        }
        if (geometric) {
            affine_mul(pending, A, pending);
            affine_mul(total, A, total);
            continue;
        }
        if (!affine_is_identity(pending)) { /* materialise before a colour op */
            warp_affine(img, tmp, S, pending);
            memcpy(img, tmp, npx * 3);
            memcpy(pending, I, sizeof pending);
        }
        uint8_t lut[256];
        switch (op) {
        case OP_AUTOCONTRAST: op_autocontrast(img, npx); break;
        case OP_EQUALIZE: op_equalize(img, npx); break;
        case OP_INVERT:
            for (int v = 0; v < 256; v++) lut[v] = (uint8_t)(255 - v);
            apply_lut1(img, npx, lut);
            break;
        case OP_POSTERIZE: {
            int bits = ra->inc ? 4 - (int)(level * 4.0) : (int)(level * 4.0);
            if (bits >= 8) break;
            if (bits < 0) bits = 0;
            uint8_t mask = (uint8_t)~((1u << (8 - bits)) - 1u);
            for (int v = 0; v < 256; v++) lut[v] = (uint8_t)(v & mask);
            apply_lut1(img, npx, lut);
            break;
        }
        case OP_SOLARIZE: {
            int thresh = (int)(level * 256.0);
            if (ra->inc) thresh = 256 - thresh;
            for (int v = 0; v < 256; v++) lut[v] = (uint8_t)(v >= thresh ? 255 - v : v);
            apply_lut1(img, npx, lut);
            break;
        }
        case OP_SOLARIZE_ADD: {
            int add = (int)(level * 110.0);
            for (int v = 0; v < 256; v++) lut[v] = (uint8_t)(v < 128 ? (v + add > 255 ? 255 : v + add) : v);
            apply_lut1(img, npx, lut);
            break;
        }
        case OP_COLOR:
        case OP_CONTRAST:
        case OP_BRIGHTNESS:
        case OP_SHARPNESS: {
            /* increasing: max(0.1, 1 +- 0.9 level); original: 0.1 + 1.8 level */
            double f = ra->inc ? fmax(0.1, 1.0 + random_negate(rng, level * 0.9)) : level * 1.8 + 0.1;
            if (op == OP_COLOR)
                op_color(img, npx, f);
            else if (op == OP_CONTRAST)
                op_contrast(img, npx, f);
            else if (op == OP_SHARPNESS)
                op_sharpness(img, S, f, tmp);
            else {
                for (int v = 0; v < 256; v++) lut[v] = clip8(v * f);
                apply_lut1(img, npx, lut);
            }
            break;
        }
        default: break;
        }
    }
    if (!affine_is_identity(pending)) {
        warp_affine(img, tmp, S, pending);
        memcpy(img, tmp, npx * 3);
    }
}

/* ------------------------------------------------------------------------ */
/* random erasing                                                             */

static void random_erase(float *out, int S, float prob, tl_rng *rng) {
    if (!(prob > 0.0f) || tl_rng_uniform(rng) > prob) return; /* timm: random() > p skips */
    double area = (double)S * S, lr0 = log(0.3), lr1 = log(1.0 / 0.3);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = uniform(rng, 0.02, 1.0 / 3.0) * area;
        double ar = exp(uniform(rng, lr0, lr1));
        int h = pyround(sqrt(target * ar)), w = pyround(sqrt(target / ar));
        if (w < S && h < S) {
            int top = (int)tl_rng_below(rng, (uint32_t)(S - h + 1));
            int left = (int)tl_rng_below(rng, (uint32_t)(S - w + 1));
            /* per-pixel N(0,1), Box-Muller pairs (both values used) */
            int have = 0;
            double spare = 0.0;
            for (int c = 0; c < 3; c++)
                for (int y = top; y < top + h; y++) {
                    float *row = out + ((size_t)c * S + y) * S;
                    for (int x = left; x < left + w; x++) {
                        if (have) {
                            row[x] = (float)spare;
                            have = 0;
                            continue;
                        }
                        double u1 = tl_rng_uniform(rng), u2 = tl_rng_uniform(rng);
                        if (u1 < 1e-300) u1 = 1e-300;
                        double rad = sqrt(-2.0 * log(u1)), s, co;
                        sincos(2.0 * M_PI * u2, &s, &co);
                        row[x] = (float)(rad * co);
                        spare = rad * s;
                        have = 1;
                    }
                }
            return;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* public transforms                                                          */

void tl_augment_train(const tl_image *src, int S, const tl_augment_cfg *a, tl_rng *rng, float *out, tl_geom *geom) {
    tl_geom g;
    geom_identity(&g);
    uint8_t *img = NULL, *tmp = NULL;
    if (geom) *geom = g;
    if (!out || !size_ok(S)) return;
    if (!image_ok(src) || !a || !rng) {
        zero_out(out, S);
        return;
    }
    int W = src->w, H = src->h;
    /* 1. RandomResizedCrop parameters (torchvision get_params) */
    double area = (double)W * H;
    double smin = a->scale_min > 0.0f ? a->scale_min : 0.08, smax = a->scale_max > smin ? a->scale_max : smin;
    double rmin = a->ratio_min > 0.0f ? a->ratio_min : 0.75, rmax = a->ratio_max > rmin ? a->ratio_max : rmin;
    double lr0 = log(rmin), lr1 = log(rmax);
    int top = 0, left = 0, ch = 0, cw = 0, found = 0;
    for (int attempt = 0; attempt < 10 && !found; attempt++) {
        double target = area * uniform(rng, smin, smax);
        double ar = exp(uniform(rng, lr0, lr1));
        int w = pyround(sqrt(target * ar)), h = pyround(sqrt(target / ar));
        if (w > 0 && w <= W && h > 0 && h <= H) {
            top = (int)tl_rng_below(rng, (uint32_t)(H - h + 1));
            left = (int)tl_rng_below(rng, (uint32_t)(W - w + 1));
            ch = h;
            cw = w;
            found = 1;
        }
    }
    if (!found) { /* centre crop with the ratio clamped */
        double in_ratio = (double)W / H;
        if (in_ratio < rmin) {
            cw = W;
            ch = pyround(cw / rmin);
        } else if (in_ratio > rmax) {
            ch = H;
            cw = pyround(ch * rmax);
        } else {
            cw = W;
            ch = H;
        }
        cw = cw < 1 ? 1 : cw > W ? W : cw;
        ch = ch < 1 ? 1 : ch > H ? H : ch;
        top = (H - ch) / 2;
        left = (W - cw) / 2;
    }
    g.top = (float)top / H;
    g.left = (float)left / W;
    g.height = (float)ch / H;
    g.width = (float)cw / W;

    size_t n3 = (size_t)S * S * 3;
    img = malloc(n3);
    tmp = malloc(n3);
    if (!img || !tmp) goto oom;
    /* 2. resample the crop */
    if (tl_resample_rgb(src, left, top, cw, ch, left, top, left + cw, top + ch, S, img) != 0) goto oom;
    /* 3. flip */
    g.flip = tl_rng_uniform(rng) < a->hflip;
    if (g.flip)
        for (int y = 0; y < S; y++) {
            uint8_t *row = img + (size_t)y * S * 3;
            for (int i = 0, j = S - 1; i < j; i++, j--)
                for (int c = 0; c < 3; c++) {
                    uint8_t t = row[3 * i + c];
                    row[3 * i + c] = row[3 * j + c];
                    row[3 * j + c] = t;
                }
        }
    /* 4. RandAugment */
    randaug_cfg ra;
    if (parse_randaug(a->randaug, &ra, NULL, 0) == 0 && ra.on) {
        double A[6];
        randaugment(img, tmp, S, &ra, rng, A);
        if (!affine_is_identity(A)) {
            g.has_affine = 1;
            for (int i = 0; i < 6; i++) g.affine[i] = (float)A[i];
        }
    }
    /* 5. normalise, 6. erase */
    normalise(img, S, out);
    random_erase(out, S, a->reprob, rng);
    free(img);
    free(tmp);
    if (geom) *geom = g;
    return;
oom:
    free(img);
    free(tmp);
    zero_out(out, S);
    geom_identity(geom);
}

void tl_transform_eval(const tl_image *src, int S, float crop_pct, float *out, tl_geom *geom) {
    tl_geom g;
    geom_identity(&g);
    if (geom) *geom = g;
    if (!out || !size_ok(S)) return;
    if (!image_ok(src)) {
        zero_out(out, S);
        return;
    }
    if (!(crop_pct > 0.0f && crop_pct <= 1.0f)) crop_pct = 1.0f;
    int W = src->w, H = src->h;
    /* torchvision Resize(int): shorter side to floor(S / crop_pct), longer
     * side int(size * long / short); then CenterCrop with round() offsets. */
    int target = (int)floor((double)S / crop_pct);
    if (target < S) target = S;
    int rw, rh;
    if (W <= H) {
        rw = target;
        rh = (int)((double)target * H / W);
    } else {
        rh = target;
        rw = (int)((double)target * W / H);
    }
    if (rw < S) rw = S;
    if (rh < S) rh = S;
    int ct = pyround((rh - S) / 2.0), cl = pyround((rw - S) / 2.0);
    double sx = (double)W / rw, sy = (double)H / rh;
    uint8_t *img = malloc((size_t)S * S * 3);
    if (!img || tl_resample_rgb(src, cl * sx, ct * sy, S * sx, S * sy, 0, 0, W, H, S, img) != 0) {
        free(img);
        zero_out(out, S);
        return;
    }
    normalise(img, S, out);
    free(img);
    g.top = (float)ct / rh;
    g.left = (float)cl / rw;
    g.height = (float)S / rh;
    g.width = (float)S / rw;
    if (geom) *geom = g;
}

void tl_transform_full(const tl_image *src, int S, float *out) {
    if (!out || !size_ok(S)) return;
    if (!image_ok(src)) {
        zero_out(out, S);
        return;
    }
    uint8_t *img = malloc((size_t)S * S * 3);
    if (!img || tl_resample_rgb(src, 0, 0, src->w, src->h, 0, 0, src->w, src->h, S, img) != 0) {
        free(img);
        zero_out(out, S);
        return;
    }
    normalise(img, S, out);
    free(img);
}

/* ------------------------------------------------------------------------ */
/* Mixup / CutMix                                                             */

TL_VEC static void mix_pair(float *a, float *b, size_t n, float lam) {
    float m = 1.0f - lam;
    for (size_t i = 0; i < n; i++) {
        float x = a[i], y = b[i];
        a[i] = lam * x + m * y;
        b[i] = lam * y + m * x;
    }
}

float tl_mix_batch(float *images, int B, int S, int mode, float alpha, tl_rng *rng) {
    if (!images || B <= 0 || !size_ok(S) || !rng || mode <= 0 || mode > 3 || !(alpha > 0.0f)) return 1.0f;
    int cutmix = mode == 2;
    if (mode == 3) cutmix = tl_rng_uniform(rng) < 0.5;
    double lam = tl_rng_beta(rng, alpha, alpha);
    lam = lam < 0.0 ? 0.0 : lam > 1.0 ? 1.0 : lam;
    size_t plane = (size_t)S * S, img = 3 * plane;
    if (!cutmix) {
        for (int i = 0; i < B / 2; i++)
            mix_pair(images + (size_t)i * img, images + (size_t)(B - 1 - i) * img, img, (float)lam);
        return (float)lam;
    }
    /* timm rand_bbox + correct_lam */
    double ratio = sqrt(1.0 - lam);
    int cut_h = (int)(S * ratio), cut_w = (int)(S * ratio);
    int cy = (int)tl_rng_below(rng, (uint32_t)S), cx = (int)tl_rng_below(rng, (uint32_t)S);
    int yl = cy - cut_h / 2, yh = cy + cut_h / 2, xl = cx - cut_w / 2, xh = cx + cut_w / 2;
    yl = yl < 0 ? 0 : yl > S ? S : yl;
    yh = yh < 0 ? 0 : yh > S ? S : yh;
    xl = xl < 0 ? 0 : xl > S ? S : xl;
    xh = xh < 0 ? 0 : xh > S ? S : xh;
    for (int i = 0; i < B / 2; i++) {
        float *a = images + (size_t)i * img, *b = images + (size_t)(B - 1 - i) * img;
        for (int c = 0; c < 3; c++)
            for (int y = yl; y < yh; y++) {
                float *ra = a + c * plane + (size_t)y * S, *rb = b + c * plane + (size_t)y * S;
                for (int x = xl; x < xh; x++) {
                    float t = ra[x];
                    ra[x] = rb[x];
                    rb[x] = t;
                }
            }
    }
    return (float)(1.0 - (double)(yh - yl) * (xh - xl) / ((double)S * S));
}
