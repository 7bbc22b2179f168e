/*
 * test_data.c: JPEG decoding (sizes, DCT scaling, greyscale, CMYK, hostile
 * input, header limits, threads), dataset scanning, the training/eval
 * transforms (determinism, ranges, geometry consistency with the image,
 * centre crop), Mixup/CutMix, and, when ../shared/data is present, real
 * Imagenette files and photos plus a loader throughput line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "tokenlab/data.h"
#include "tokenlab/rng.h"

static const float MEANS[3] = {0.485f, 0.456f, 0.406f};
static const float STDS[3] = {0.229f, 0.224f, 0.225f};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* normalised value back to 0..255 */
static float unnorm(const float *out, int S, int c, int y, int x) {
    return (out[((size_t)c * S + y) * S + x] * STDS[c] + MEANS[c]) * 255.0f;
}

static uint8_t *pattern_rgb(int w, int h, int kind) {
    uint8_t *p = malloc((size_t)w * h * 3);
    assert_non_null(p);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *q = p + ((size_t)y * w + x) * 3;
            if (kind == 0) { /* smooth gradient */
                q[0] = (uint8_t)(x * 255 / (w > 1 ? w - 1 : 1));
                q[1] = (uint8_t)(y * 255 / (h > 1 ? h - 1 : 1));
                q[2] = (uint8_t)((x + y) * 127 / (w + h));
            } else { /* constant */
                q[0] = 200;
                q[1] = 100;
                q[2] = 50;
            }
        }
    return p;
}

static uint8_t *encode(const uint8_t *rgb, int w, int h, int q, size_t *len) {
    uint8_t *j = NULL;
    char err[256] = "";
    int rc = tl_image_encode(rgb, w, h, q, &j, len, err, sizeof err);
    if (rc != 0) fprintf(stderr, "encode: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(j);
    return j;
}

static double mean_abs_diff(const uint8_t *a, const uint8_t *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs((double)a[i] - b[i]);
    return s / n;
}

/* ------------------------------------------------------------------------ */

static void test_decode_roundtrip(void **state) {
    (void)state;
    const int sizes[][2] = {{37, 23}, {1, 1}, {8, 8}, {17, 1}, {1, 9}, {640, 480}, {301, 199}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int w = sizes[s][0], h = sizes[s][1];
        uint8_t *rgb = pattern_rgb(w, h, 0);
        size_t len = 0;
        uint8_t *j = encode(rgb, w, h, 95, &len);
        tl_image im;
        char err[256] = "";
        assert_int_equal(tl_image_decode(j, len, 0, &im, NULL, err, sizeof err), 0);
        assert_int_equal(im.w, w);
        assert_int_equal(im.h, h);
        assert_non_null(im.rgb);
        double mad = mean_abs_diff(rgb, im.rgb, (size_t)w * h * 3);
        if (mad > 3.0) fprintf(stderr, "%dx%d: mean abs diff %.2f\n", w, h, mad);
        assert_true(mad < 3.0);
        tl_image_free(&im);
        assert_null(im.rgb);
        free(j);
        free(rgb);
    }
    /* bad encode arguments */
    uint8_t px[3] = {1, 2, 3}, *j = NULL;
    size_t len = 0;
    char err[256] = "";
    assert_int_equal(tl_image_encode(px, 1, 1, 0, &j, &len, err, sizeof err), -1);
    assert_non_null(strstr(err, "quality"));
    assert_int_equal(tl_image_encode(px, 0, 1, 90, &j, &len, err, sizeof err), -1);
    assert_int_equal(tl_image_encode(NULL, 1, 1, 90, &j, &len, err, sizeof err), -1);
    assert_null(j);
    /* low quality uses 4:2:0 and still decodes */
    uint8_t *rgb = pattern_rgb(64, 48, 0);
    j = encode(rgb, 64, 48, 20, &len);
    tl_image im;
    assert_int_equal(tl_image_decode(j, len, 0, &im, NULL, err, sizeof err), 0);
    assert_true(mean_abs_diff(rgb, im.rgb, 64 * 48 * 3) < 12.0);
    tl_image_free(&im);
    free(j);
    free(rgb);
}

static void test_scaled_decode(void **state) {
    (void)state;
    uint8_t *rgb = pattern_rgb(640, 480, 0);
    size_t len = 0;
    uint8_t *j = encode(rgb, 640, 480, 90, &len);
    /* smallest factor whose shorter side >= min_short; the TurboJPEG box
     * pitfall would give other sizes (e.g. 1/2 for a 100-px box) */
    const int cases[][3] = {{0, 640, 480},   {-5, 640, 480}, {60, 80, 60},   {61, 160, 120}, {100, 160, 120},
                            {120, 160, 120}, {121, 240, 180}, {180, 240, 180}, {200, 320, 240}, {240, 320, 240},
                            {300, 400, 300}, {480, 640, 480}, {481, 640, 480}, {5000, 640, 480}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tl_image im;
        char err[256] = "";
        assert_int_equal(tl_image_decode(j, len, cases[c][0], &im, NULL, err, sizeof err), 0);
        if (im.w != cases[c][1] || im.h != cases[c][2])
            fprintf(stderr, "min_short %d: got %dx%d, want %dx%d\n", cases[c][0], im.w, im.h, cases[c][1], cases[c][2]);
        assert_int_equal(im.w, cases[c][1]);
        assert_int_equal(im.h, cases[c][2]);
        /* content is the same picture, scaled: compare with nearest samples */
        double s = 0;
        int n = 0;
        for (int y = 2; y < im.h - 2; y += 7)
            for (int x = 2; x < im.w - 2; x += 7) {
                int sx = (int)((x + 0.5) * 640 / im.w), sy = (int)((y + 0.5) * 480 / im.h);
                for (int ch = 0; ch < 3; ch++)
                    s += fabs((double)im.rgb[((size_t)y * im.w + x) * 3 + ch] - rgb[((size_t)sy * 640 + sx) * 3 + ch]);
                n += 3;
            }
        assert_true(s / n < 4.0);
        tl_image_free(&im);
    }
    free(j);
    free(rgb);
    /* odd size: 37x23 at min_short 5 -> 1/4 -> 10x6 (TJSCALED rounds up) */
    rgb = pattern_rgb(37, 23, 0);
    j = encode(rgb, 37, 23, 90, &len);
    tl_image im;
    char err[256];
    assert_int_equal(tl_image_decode(j, len, 5, &im, NULL, err, sizeof err), 0);
    assert_int_equal(im.w, 10);
    assert_int_equal(im.h, 6);
    tl_image_free(&im);
    free(j);
    free(rgb);
}

/* Every small size and every min_short: the decoded size is the smallest
 * scaling factor (<= 1) whose shorter side reaches min_short, else full. */
static void test_scaled_decode_exhaustive(void **state) {
    (void)state;
    int nsf = 0;
    tjscalingfactor *sf = tjGetScalingFactors(&nsf);
    assert_non_null(sf);
    const int dims[] = {1, 2, 3, 7, 9, 15, 16, 17, 33, 50};
    int nd = sizeof dims / sizeof dims[0];
    for (int a = 0; a < nd; a++)
        for (int b = 0; b < nd; b++) {
            int w = dims[a], h = dims[b];
            uint8_t *rgb = pattern_rgb(w, h, 0);
            size_t len = 0;
            uint8_t *j = encode(rgb, w, h, 80, &len);
            int shorter = w < h ? w : h;
            for (int ms = 0; ms <= shorter + 1; ms++) {
                int ew = w, eh = h;
                double best = 1.0;
                for (int i = 0; i < nsf && ms > 0; i++) {
                    if (sf[i].num > sf[i].denom) continue;
                    int tw = TJSCALED(w, sf[i]), th = TJSCALED(h, sf[i]);
                    double f = (double)sf[i].num / sf[i].denom;
                    if ((tw < th ? tw : th) >= ms && f < best) {
                        best = f;
                        ew = tw;
                        eh = th;
                    }
                }
                tl_image im;
                char err[256];
                assert_int_equal(tl_image_decode(j, len, ms, &im, NULL, err, sizeof err), 0);
                if (im.w != ew || im.h != eh)
                    fail_msg("%dx%d min_short %d: got %dx%d want %dx%d", w, h, ms, im.w, im.h, ew, eh);
                tl_image_free(&im);
            }
            free(j);
            free(rgb);
        }
}

static void test_grey_to_rgb(void **state) {
    (void)state;
    int w = 45, h = 30;
    uint8_t *grey = malloc((size_t)w * h);
    for (int i = 0; i < w * h; i++) grey[i] = (uint8_t)(20 + (i % w) * 4);
    tjhandle tj = tjInitCompress();
    assert_non_null(tj);
    unsigned char *jb = NULL;
    unsigned long jl = 0;
    assert_int_equal(tjCompress2(tj, grey, w, 0, h, TJPF_GRAY, &jb, &jl, TJSAMP_GRAY, 95, 0), 0);
    tjDestroy(tj);
    tjhandle td = tjInitDecompress();
    int hw, hh, ss, cs;
    assert_int_equal(tjDecompressHeader3(td, jb, jl, &hw, &hh, &ss, &cs), 0);
    tjDestroy(td);
    assert_int_equal(cs, TJCS_GRAY);
    tl_image im;
    char err[256] = "";
    assert_int_equal(tl_image_decode(jb, jl, 0, &im, NULL, err, sizeof err), 0);
    assert_int_equal(im.w, w);
    assert_int_equal(im.h, h);
    double mad = 0;
    for (int i = 0; i < w * h; i++) {
        assert_int_equal(im.rgb[3 * i], im.rgb[3 * i + 1]);
        assert_int_equal(im.rgb[3 * i], im.rgb[3 * i + 2]);
        mad += fabs((double)im.rgb[3 * i] - grey[i]);
    }
    assert_true(mad / (w * h) < 2.0);
    tl_image_free(&im);
    /* scaled greyscale too */
    assert_int_equal(tl_image_decode(jb, jl, 15, &im, NULL, err, sizeof err), 0);
    assert_int_equal(im.h, 15);
    tl_image_free(&im);
    tjFree(jb);
    free(grey);
}

static void test_cmyk_to_rgb(void **state) {
    (void)state;
    /* four 16x16 quadrants of (C, M, Y, K) as stored (Adobe inverted) */
    const uint8_t quad[4][4] = {{255, 0, 128, 255}, {40, 200, 90, 255}, {255, 255, 255, 128}, {200, 100, 50, 180}};
    int w = 32, h = 32;
    uint8_t *cmyk = malloc((size_t)w * h * 4);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) memcpy(cmyk + ((size_t)y * w + x) * 4, quad[(y / 16) * 2 + x / 16], 4);
    tjhandle tj = tjInitCompress();
    unsigned char *jb = NULL;
    unsigned long jl = 0;
    assert_int_equal(tjCompress2(tj, cmyk, w, 0, h, TJPF_CMYK, &jb, &jl, TJSAMP_444, 100, 0), 0);
    tjDestroy(tj);
    tjhandle td = tjInitDecompress();
    int hw, hh, ss, cs;
    assert_int_equal(tjDecompressHeader3(td, jb, jl, &hw, &hh, &ss, &cs), 0);
    tjDestroy(td);
    assert_true(cs == TJCS_YCCK || cs == TJCS_CMYK);
    tl_image im;
    char err[256] = "";
    assert_int_equal(tl_image_decode(jb, jl, 0, &im, NULL, err, sizeof err), 0);
    assert_int_equal(im.w, w);
    assert_int_equal(im.h, h);
    for (int q = 0; q < 4; q++) {
        int x = (q % 2) * 16 + 8, y = (q / 2) * 16 + 8;
        const uint8_t *p = im.rgb + ((size_t)y * w + x) * 3;
        for (int c = 0; c < 3; c++) {
            double want = quad[q][c] * quad[q][3] / 255.0;
            if (fabs(p[c] - want) > 6) fprintf(stderr, "quad %d ch %d: got %d want %.1f\n", q, c, p[c], want);
            assert_true(fabs(p[c] - want) <= 6);
        }
    }
    tl_image_free(&im);
    tjFree(jb);
    free(cmyk);
}

static void test_truncated_and_garbage(void **state) {
    (void)state;
    uint8_t *rgb = pattern_rgb(37, 23, 0);
    size_t len = 0;
    uint8_t *j = encode(rgb, 37, 23, 90, &len);
    char err[256];
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *part = malloc(cut ? cut : 1); /* exact size, so ASan sees any over-read */
        memcpy(part, j, cut);
        tl_image im;
        err[0] = '\0';
        int rc = tl_image_decode(part, cut, 0, &im, NULL, err, sizeof err);
        if (rc == 0) fprintf(stderr, "cut at %zu of %zu decoded\n", cut, len);
        assert_int_equal(rc, -1);
        assert_null(im.rgb);
        assert_true(strlen(err) > 0);
        free(part);
    }
    /* garbage and mutations: never crash; success only with sane sizes */
    tl_rng r;
    tl_rng_seed(&r, 99);
    for (int t = 0; t < 400; t++) {
        size_t n = 1 + tl_rng_below(&r, 2000);
        uint8_t *g = malloc(n);
        for (size_t i = 0; i < n; i++) g[i] = (uint8_t)tl_rng_below(&r, 256);
        if (t % 2 && n >= 2) {
            g[0] = 0xFF;
            g[1] = 0xD8;
        }
        tl_image im;
        int rc = tl_image_decode(g, n, (int)tl_rng_below(&r, 64), &im, NULL, err, sizeof err);
        if (rc == 0) tl_image_free(&im);
        free(g);
    }
    int ok = 0;
    for (int t = 0; t < 600; t++) {
        uint8_t *g = malloc(len);
        memcpy(g, j, len);
        int nm = 1 + (int)tl_rng_below(&r, 4);
        for (int k = 0; k < nm; k++) g[tl_rng_below(&r, (uint32_t)len)] = (uint8_t)tl_rng_below(&r, 256);
        tl_image im;
        int rc = tl_image_decode(g, len, (int)tl_rng_below(&r, 30), &im, NULL, err, sizeof err);
        if (rc == 0) {
            ok++;
            assert_true(im.w > 0 && im.w <= 37 && im.h > 0 && im.h <= 23);
            tl_image_free(&im);
        } else {
            assert_true(strlen(err) > 0);
        }
        free(g);
    }
    (void)ok;
    tl_image im;
    assert_int_equal(tl_image_decode(NULL, 0, 0, &im, NULL, err, sizeof err), -1);
    assert_int_equal(tl_image_decode(j, 0, 0, &im, NULL, err, sizeof err), -1);
    assert_int_equal(tl_image_decode(j, len, 0, NULL, NULL, err, sizeof err), -1);
    free(j);
    free(rgb);
}

/* Patches the SOF0 marker's height and width. */
static void patch_sof(uint8_t *j, size_t len, int w, int h) {
    for (size_t i = 2; i + 9 < len; i++)
        if (j[i] == 0xFF && (j[i + 1] == 0xC0 || j[i + 1] == 0xC2)) {
            j[i + 5] = (uint8_t)(h >> 8);
            j[i + 6] = (uint8_t)h;
            j[i + 7] = (uint8_t)(w >> 8);
            j[i + 8] = (uint8_t)w;
            return;
        }
    fail_msg("no SOF marker");
}

static void test_huge_header_refused(void **state) {
    (void)state;
    uint8_t *rgb = pattern_rgb(64, 48, 0);
    size_t len = 0;
    uint8_t *j = encode(rgb, 64, 48, 90, &len);
    const int dims[][2] = {{30000, 30000}, {20000, 100}, {100, 16385}, {9000, 9000}};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        patch_sof(j, len, dims[d][0], dims[d][1]);
        tl_image im;
        char err[256] = "";
        assert_int_equal(tl_image_decode(j, len, 0, &im, NULL, err, sizeof err), -1);
        char want[64];
        snprintf(want, sizeof want, "%dx%d", dims[d][0], dims[d][1]);
        if (!strstr(err, want) || !strstr(err, "limit")) fprintf(stderr, "message: %s\n", err);
        assert_non_null(strstr(err, want));
        assert_non_null(strstr(err, "limit"));
        /* min_short does not change the verdict */
        assert_int_equal(tl_image_decode(j, len, 10, &im, NULL, err, sizeof err), -1);
    }
    /* A progressive file is bounded lower (its coefficient buffers are full size): 8000x8000 progressive is
     * refused from the header, the same size sequential is not (below) */
    {
        tjhandle tj = tjInitCompress();
        unsigned char *pj = NULL;
        unsigned long pl = 0;
        assert_int_equal(tjCompress2(tj, rgb, 64, 0, 48, TJPF_RGB, &pj, &pl, TJSAMP_420, 90, TJFLAG_PROGRESSIVE), 0);
        tl_image im;
        char err[256] = "";
        assert_int_equal(tl_image_decode(pj, pl, 0, &im, NULL, err, sizeof err), 0); /* small: decodes */
        assert_int_equal(im.w, 64);
        tl_image_free(&im);
        patch_sof(pj, pl, 8000, 8000);
        tl_image_status st = TL_IMG_OK;
        assert_int_equal(tl_image_decode(pj, pl, 100, &im, &st, err, sizeof err), -1);
        assert_int_equal(st, TL_IMG_TOO_LARGE);
        if (!strstr(err, "progressive JPEG of 8000x8000")) fail_msg("message: %s", err);
        patch_sof(pj, pl, 4096, 4096); /* exactly at the limit: the header passes, the data is short */
        assert_int_equal(tl_image_decode(pj, pl, 100, &im, &st, err, sizeof err), -1);
        assert_int_not_equal(st, TL_IMG_TOO_LARGE);
        tjFree(pj);
        tjDestroy(tj);
    }
    /* 8000x8000 is within the limits: the header passes, the data is short */
    patch_sof(j, len, 8000, 8000);
    tl_image im;
    char err[256] = "";
    assert_int_equal(tl_image_decode(j, len, 1000, &im, NULL, err, sizeof err), -1);
    assert_null(strstr(err, "limit"));
    free(j);
    free(rgb);
}

/* ---- files ---- */

static char g_tmp[512];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
    (void)sb;
    (void)flag;
    (void)f;
    return remove(p);
}

static void make_tmp(void) {
    const char *base = getenv("TL_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    mkdir(base, 0755);
    snprintf(g_tmp, sizeof g_tmp, "%s/test_data_XXXXXX", base);
    assert_non_null(mkdtemp(g_tmp));
}

static void rm_tmp(void) { nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static void write_file(const char *rel, const void *data, size_t n) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", g_tmp, rel);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void make_dir(const char *rel) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", g_tmp, rel);
    assert_int_equal(mkdir(p, 0755), 0);
}

static void test_image_load(void **state) {
    (void)state;
    make_tmp();
    uint8_t *rgb = pattern_rgb(37, 23, 0);
    size_t len = 0;
    uint8_t *j = encode(rgb, 37, 23, 90, &len);
    write_file("a.jpg", j, len);
    write_file("empty.jpg", "", 0);
    make_dir("dir.jpg");
    char p[1024], err[512];
    tl_image im;
    snprintf(p, sizeof p, "%s/a.jpg", g_tmp);
    assert_int_equal(tl_image_load(p, 0, &im, err, sizeof err), 0);
    assert_int_equal(im.w, 37);
    tl_image_free(&im);
    snprintf(p, sizeof p, "%s/empty.jpg", g_tmp);
    assert_int_equal(tl_image_load(p, 0, &im, err, sizeof err), -1);
    assert_non_null(strstr(err, "empty.jpg"));
    snprintf(p, sizeof p, "%s/dir.jpg", g_tmp);
    assert_int_equal(tl_image_load(p, 0, &im, err, sizeof err), -1);
    snprintf(p, sizeof p, "%s/missing.jpg", g_tmp);
    assert_int_equal(tl_image_load(p, 0, &im, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing.jpg"));
    /* a corrupt file names the file */
    j[len / 2] ^= 0xFF;
    j[len / 2 + 1] ^= 0xFF;
    write_file("bad.jpg", j, len - 10);
    snprintf(p, sizeof p, "%s/bad.jpg", g_tmp);
    assert_int_equal(tl_image_load(p, 0, &im, err, sizeof err), -1);
    assert_non_null(strstr(err, "bad.jpg"));
    free(j);
    free(rgb);
    rm_tmp();
}

/* ---- threads ---- */

typedef struct {
    const uint8_t *jpeg;
    size_t len;
    const tl_image *ref;
    const float *ref_aug;
    int bad;
} thr_job;

static void *thr_main(void *arg) {
    thr_job *t = arg;
    tl_augment_cfg a;
    tl_augment_defaults(&a);
    float *out = malloc(3 * 48 * 48 * sizeof *out);
    for (int it = 0; it < 15; it++) {
        tl_image im;
        char err[256];
        if (tl_image_decode(t->jpeg, t->len, 100, &im, NULL, err, sizeof err) != 0) {
            t->bad++;
            continue;
        }
        if (im.w != t->ref->w || memcmp(im.rgb, t->ref->rgb, (size_t)im.w * im.h * 3) != 0) t->bad++;
        tl_rng r;
        tl_rng_derive(&r, 7, TL_RNG_AUGMENT, 0, 3);
        tl_geom g;
        tl_augment_train(&im, 48, &a, &r, out, &g);
        if (memcmp(out, t->ref_aug, 3 * 48 * 48 * sizeof *out) != 0) t->bad++;
        tl_image_free(&im);
    }
    free(out);
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    uint8_t *rgb = pattern_rgb(640, 480, 0);
    size_t len = 0;
    uint8_t *j = encode(rgb, 640, 480, 85, &len);
    tl_image ref;
    char err[256];
    assert_int_equal(tl_image_decode(j, len, 100, &ref, NULL, err, sizeof err), 0);
    tl_augment_cfg a;
    tl_augment_defaults(&a);
    float *ref_aug = malloc(3 * 48 * 48 * sizeof *ref_aug);
    tl_rng r;
    tl_rng_derive(&r, 7, TL_RNG_AUGMENT, 0, 3);
    tl_geom g;
    tl_augment_train(&ref, 48, &a, &r, ref_aug, &g);
    thr_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thr_job){j, len, &ref, ref_aug, 0};
        assert_int_equal(pthread_create(&th[i], NULL, thr_main, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].bad, 0);
    }
    free(ref_aug);
    tl_image_free(&ref);
    free(j);
    free(rgb);
}

/* ---- datasets ---- */

static void test_dataset_scan(void **state) {
    (void)state;
    make_tmp();
    make_dir("root");
    make_dir("root/b_cls");
    make_dir("root/a_cls");
    make_dir("root/c_empty");
    make_dir("root/.hidden");
    make_dir("root/a_cls/d.jpg"); /* a folder named like an image */
    const char *files[] = {"root/a_cls/z.JPEG", "root/a_cls/y.jpg", "root/a_cls/x.Jpeg", "root/a_cls/readme.txt",
                           "root/a_cls/.x.jpg", "root/a_cls/noext", "root/a_cls/a.jpg.png", "root/b_cls/1.jpeg",
                           "root/.hidden/h.jpg", "root/top.jpg", "root/a_cls/d.jpg/inner.jpg"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) write_file(files[i], "x", 1);
    char p[1024], t[1024];
    snprintf(p, sizeof p, "%s/root/b_cls/link.jpg", g_tmp);
    snprintf(t, sizeof t, "%s/root/a_cls/y.jpg", g_tmp);
    assert_int_equal(symlink(t, p), 0);
    snprintf(p, sizeof p, "%s/root/b_cls/dangling.jpg", g_tmp);
    assert_int_equal(symlink("/nonexistent/nowhere.jpg", p), 0);
    const char tsv[] = "wnid\tname\timagenet_index\r\nb_cls\tBee class\t1\r\nzzz\tunknown\t2\r\n\r\na_cls\tAy\t0\r\n";
    write_file("root/classes.tsv", tsv, sizeof tsv - 1);

    char root[1024], err[1024] = "";
    snprintf(root, sizeof root, "%s/root/", g_tmp); /* trailing slash tolerated */
    tl_dataset *d = tl_dataset_open(root, err, sizeof err);
    if (!d) fprintf(stderr, "%s\n", err);
    assert_non_null(d);
    assert_int_equal(tl_dataset_num_classes(d), 3);
    assert_string_equal(tl_dataset_class_folder(d, 0), "a_cls");
    assert_string_equal(tl_dataset_class_folder(d, 1), "b_cls");
    assert_string_equal(tl_dataset_class_folder(d, 2), "c_empty");
    assert_string_equal(tl_dataset_class_name(d, 0), "Ay");
    assert_string_equal(tl_dataset_class_name(d, 1), "Bee class");
    assert_string_equal(tl_dataset_class_name(d, 2), "c_empty");
    assert_null(tl_dataset_class_name(d, 3));
    assert_null(tl_dataset_class_folder(d, -1));
    const char *want[] = {"a_cls/x.Jpeg", "a_cls/y.jpg", "a_cls/z.JPEG", "b_cls/1.jpeg", "b_cls/link.jpg"};
    const int labels[] = {0, 0, 0, 1, 1};
    assert_int_equal(tl_dataset_count(d), 5);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(tl_dataset_relpath(d, i), want[i]);
        assert_int_equal(tl_dataset_label(d, i), labels[i]);
    }
    assert_null(tl_dataset_relpath(d, 5));
    assert_int_equal(tl_dataset_label(d, -1), -1);
    char buf[1024];
    assert_int_equal(tl_dataset_path(d, 4, buf, sizeof buf), 0);
    snprintf(p, sizeof p, "%s/root/b_cls/link.jpg", g_tmp);
    assert_string_equal(buf, p);
    assert_int_equal(tl_dataset_path(d, 4, buf, 10), -1);
    assert_int_equal(tl_dataset_path(d, 9, buf, sizeof buf), -1);
    snprintf(p, sizeof p, "%s/root", g_tmp);
    assert_string_equal(tl_dataset_root(d), p);
    tl_dataset_free(d);

    /* classes.tsv without a header, no trailing newline, name-less line */
    const char tsv2[] = "a_cls\tfirst\nc_empty";
    write_file("root/classes.tsv", tsv2, sizeof tsv2 - 1);
    d = tl_dataset_open(root, err, sizeof err);
    assert_non_null(d);
    assert_string_equal(tl_dataset_class_name(d, 0), "first");
    assert_string_equal(tl_dataset_class_name(d, 1), "b_cls");
    assert_string_equal(tl_dataset_class_name(d, 2), "c_empty");
    tl_dataset_free(d);

    /* classes.tsv in the parent folder serves a split */
    make_dir("split");
    make_dir("split/train");
    make_dir("split/train/a_cls");
    write_file("split/train/a_cls/i.jpg", "x", 1);
    const char tsv3[] = "a_cls\tfrom parent\n";
    write_file("split/classes.tsv", tsv3, sizeof tsv3 - 1);
    snprintf(p, sizeof p, "%s/split/train", g_tmp);
    d = tl_dataset_open(p, err, sizeof err);
    assert_non_null(d);
    assert_string_equal(tl_dataset_class_name(d, 0), "from parent");
    tl_dataset_free(d);

    /* confined to a data root: links leading outside it (an image, a class folder) are skipped and counted,
     * links inside it are kept */
    make_dir("jail");
    make_dir("jail/ds");
    make_dir("jail/ds/in_cls");
    make_dir("jail/other");
    write_file("jail/ds/in_cls/a.jpg", "x", 1);
    write_file("jail/other/b.jpg", "x", 1);
    make_dir("outside");
    make_dir("outside/secret_cls");
    write_file("outside/secret_cls/s.jpg", "x", 1);
    write_file("outside/s2.jpg", "x", 1);
    const char *links[][2] = {{"jail/ds/in_cls/out.jpg", "outside/s2.jpg"},      /* image out */
                              {"jail/ds/in_cls/in.jpg", "jail/other/b.jpg"},     /* image in */
                              {"jail/ds/out_cls", "outside/secret_cls"},         /* class folder out */
                              {"jail/ds/in_cls2", "jail/other"}};                /* class folder in */
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        char l[1024];
        snprintf(l, sizeof l, "%s/%s", g_tmp, links[i][0]);
        snprintf(t, sizeof t, "%s/%s", g_tmp, links[i][1]);
        assert_int_equal(symlink(t, l), 0);
    }
    char jail[1024];
    snprintf(p, sizeof p, "%s/jail/ds", g_tmp);
    snprintf(t, sizeof t, "%s/jail", g_tmp);
    assert_non_null(realpath(t, jail));
    d = tl_dataset_open_confined(p, jail, err, sizeof err);
    assert_non_null(d);
    assert_int_equal(tl_dataset_num_classes(d), 2);
    assert_int_equal(tl_dataset_count(d), 3);
    assert_string_equal(tl_dataset_relpath(d, 0), "in_cls/a.jpg");
    assert_string_equal(tl_dataset_relpath(d, 1), "in_cls/in.jpg");
    assert_string_equal(tl_dataset_relpath(d, 2), "in_cls2/b.jpg");
    assert_int_equal(tl_dataset_outside(d), 2);
    tl_dataset_free(d);
    d = tl_dataset_open(p, err, sizeof err); /* unconfined: everything counts */
    assert_non_null(d);
    assert_int_equal(tl_dataset_num_classes(d), 3);
    assert_int_equal(tl_dataset_count(d), 5);
    assert_int_equal(tl_dataset_outside(d), 0);
    tl_dataset_free(d);

    /* refusals name the path */
    make_dir("empty");
    snprintf(p, sizeof p, "%s/empty", g_tmp);
    assert_null(tl_dataset_open(p, err, sizeof err));
    assert_non_null(strstr(err, p));
    assert_non_null(strstr(err, "class folders"));
    make_dir("noimg");
    make_dir("noimg/k1");
    write_file("noimg/k1/a.txt", "x", 1);
    snprintf(p, sizeof p, "%s/noimg", g_tmp);
    assert_null(tl_dataset_open(p, err, sizeof err));
    assert_non_null(strstr(err, p));
    assert_non_null(strstr(err, "no images"));
    snprintf(p, sizeof p, "%s/missing", g_tmp);
    assert_null(tl_dataset_open(p, err, sizeof err));
    assert_non_null(strstr(err, p));
    snprintf(p, sizeof p, "%s/root/top.jpg", g_tmp);
    assert_null(tl_dataset_open(p, err, sizeof err));
    assert_non_null(strstr(err, "not a folder"));
    assert_null(tl_dataset_open(NULL, err, sizeof err));
    assert_null(tl_dataset_open("", err, sizeof err));
    rm_tmp();
}

static void test_dataset_many(void **state) {
    (void)state;
    make_tmp();
    make_dir("big");
    make_dir("big/k0");
    make_dir("big/k1");
    int n = 6000;
    tl_rng r;
    tl_rng_seed(&r, 5);
    for (int i = 0; i < n; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "big/k%d/img_%08x_%d.JPEG", i % 2, (unsigned)tl_rng_next(&r), i);
        write_file(rel, "", 0);
    }
    char p[1024], err[512];
    snprintf(p, sizeof p, "%s/big", g_tmp);
    double t0 = now_s();
    tl_dataset *d = tl_dataset_open(p, err, sizeof err);
    double dt = now_s() - t0;
    assert_non_null(d);
    assert_int_equal(tl_dataset_count(d), n);
    for (int i = 1; i < n; i++) {
        assert_true(tl_dataset_label(d, i - 1) <= tl_dataset_label(d, i));
        if (tl_dataset_label(d, i - 1) == tl_dataset_label(d, i))
            assert_true(strcmp(tl_dataset_relpath(d, i - 1), tl_dataset_relpath(d, i)) < 0);
    }
    printf("dataset scan: %d files in %.1f ms\n", n, dt * 1e3);
    tl_dataset_free(d);
    rm_tmp();
}

/* ---- augmentation ---- */

static void test_augment_validate(void **state) {
    (void)state;
    tl_augment_cfg a;
    char err[256];
    tl_augment_defaults(&a);
    assert_int_equal(tl_augment_validate(&a, err, sizeof err), 0);
    assert_string_equal(a.randaug, "rand-m9-mstd0.5-inc1");
    assert_true(fabsf(a.scale_min - 0.08f) < 1e-7f && a.scale_max == 1.0f && a.hflip == 0.5f);
    assert_true(a.reprob == 0.25f && fabsf(a.crop_pct - 0.9f) < 1e-7f);
    assert_true(fabsf(a.ratio_min - 0.75f) < 1e-7f && fabsf(a.ratio_max - 4.0f / 3.0f) < 1e-6f);
    for (int i = 0;; i++) {
        tl_augment_defaults(&a);
        const char *field = "augment.randaug";
        switch (i) {
        case 0: a.scale_min = 0, field = "augment.scale"; break;
        case 1: a.scale_max = 1.5f, field = "augment.scale"; break;
        case 2: a.scale_min = 0.9f, a.scale_max = 0.5f, field = "augment.scale"; break;
        case 3: a.ratio_min = -1, field = "augment.ratio"; break;
        case 4: a.ratio_max = 0.5f, field = "augment.ratio"; break;
        case 5: a.hflip = 2, field = "augment.hflip"; break;
        case 6: a.reprob = NAN, field = "augment.reprob"; break;
        case 7: a.crop_pct = 0, field = "augment.crop_pct"; break;
        case 8: a.crop_pct = 1.2f, field = "augment.crop_pct"; break;
        case 9: a.scale_min = NAN, field = "augment.scale"; break;
        case 10: strcpy(a.randaug, "rand-m40"); break;
        case 11: strcpy(a.randaug, "rand-x3"); break;
        case 12: strcpy(a.randaug, "foo-m9"); break;
        case 13: strcpy(a.randaug, "rand-m9-inc2"); break;
        case 14: strcpy(a.randaug, "rand-n3"); break;
        case 15: strcpy(a.randaug, "rand-m9-mstd"); break;
        case 16: strcpy(a.randaug, "rand-m9-m9"); break;
        case 17: strcpy(a.randaug, "rand-m9-n1.5"); break;
        case 18: strcpy(a.randaug, "rand-m9-w0"); break;
        case 19: strcpy(a.randaug, "rand-m9-p2"); break;
        case 20: memset(a.randaug, 'r', sizeof a.randaug); break;
        case 21: strcpy(a.randaug, "rand-m-1"); break;
        case 22: strcpy(a.randaug, "rand"); break;
        default: field = NULL; break;
        }
        if (!field) break;
        err[0] = '\0';
        assert_int_equal(tl_augment_validate(&a, err, sizeof err), -1);
        if (strncmp(err, field, strlen(field)) != 0) fprintf(stderr, "case %d: %s\n", i, err);
        assert_int_equal(strncmp(err, field, strlen(field)), 0);
    }
    const char *good[] = {"", "rand-m9-mstd0.5-inc1", "rand-m9-n1-mstd0.5-inc1-mmax10-p0.7", "rand-m9-mstd101",
                          "rand-m30-n1-mstd0", "rand-inc0-m0", "rand-m7-n0"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        tl_augment_defaults(&a);
        strcpy(a.randaug, good[i]);
        if (tl_augment_validate(&a, err, sizeof err) != 0) fprintf(stderr, "%s: %s\n", good[i], err);
        assert_int_equal(tl_augment_validate(&a, err, sizeof err), 0);
    }
}

/* Synthetic test picture: blue background, red rectangle. */
#define SQ_X0 70
#define SQ_X1 130
#define SQ_Y0 50
#define SQ_Y1 100
static const float BG[3] = {30, 60, 200}, SQ[3] = {230, 40, 30}, FILLC[3] = {124, 116, 104};

static tl_image square_image(int W, int H) {
    tl_image im = {W, H, malloc((size_t)W * H * 3)};
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int in = x >= SQ_X0 && x < SQ_X1 && y >= SQ_Y0 && y < SQ_Y1;
            for (int c = 0; c < 3; c++) im.rgb[((size_t)y * W + x) * 3 + c] = (uint8_t)(in ? SQ[c] : BG[c]);
        }
    return im;
}

/* Where geom says output pixel (x,y) comes from: full-image pixel coords, or
 * *outside = 1 when affine leaves the cropped image (fill). */
static void predict(const tl_geom *g, int S, int x, int y, int W, int H, double *X, double *Y, double *edge) {
    double u = (x + 0.5) / S, v = (y + 0.5) / S, up = u, vp = v;
    if (g->has_affine) {
        up = g->affine[0] * u + g->affine[1] * v + g->affine[2];
        vp = g->affine[3] * u + g->affine[4] * v + g->affine[5];
    }
    /* distance (normalised) to the crop border, negative outside */
    double e = fmin(fmin(up, 1.0 - up), fmin(vp, 1.0 - vp));
    *edge = e;
    if (g->flip) up = 1.0 - up;
    *X = (g->left + up * g->width) * W;
    *Y = (g->top + vp * g->height) * H;
}

/* 0 background, 1 square, 2 fill, -1 too close to an edge to say */
static int predicted_class(const tl_geom *g, int S, int x, int y, int W, int H) {
    double X, Y, e;
    predict(g, S, x, y, W, H, &X, &Y, &e);
    double sc = fmax(g->width * W / S, g->height * H / S), scl = fmax(sc, 1.0);
    /* margin: resampling footprint of the crop plus one output pixel of warp */
    double m = 2.0 * scl + sc + 1.0;
    if (e < -1.5 / S) return 2;
    if (e < 1.5 / S) return -1;
    double dx = fmin(X - SQ_X0, SQ_X1 - X), dy = fmin(Y - SQ_Y0, SQ_Y1 - Y), d = fmin(dx, dy);
    if (d > m) return 1;
    if (d < -m) return 0;
    return -1;
}

static void test_augment_basic(void **state) {
    (void)state;
    int W = 200, H = 160, S = 64;
    tl_image im = square_image(W, H);
    tl_augment_cfg a;
    tl_augment_defaults(&a);
    float *o1 = malloc(3 * S * S * sizeof *o1), *o2 = malloc(3 * S * S * sizeof *o2);
    int flips = 0, differ = 0, n = 300;
    for (int s = 0; s < n; s++) {
        tl_rng r1, r2;
        tl_rng_derive(&r1, 42, TL_RNG_AUGMENT, 1, s);
        tl_rng_derive(&r2, 42, TL_RNG_AUGMENT, 1, s);
        tl_geom g1, g2;
        tl_augment_train(&im, S, &a, &r1, o1, &g1);
        tl_augment_train(&im, S, &a, &r2, o2, &g2);
        assert_memory_equal(o1, o2, 3 * S * S * sizeof *o1);
        assert_memory_equal(&g1, &g2, sizeof g1);
        for (int i = 0; i < 3 * S * S; i++) assert_true(isfinite(o1[i]) && fabsf(o1[i]) < 8.0f);
        assert_true(g1.top >= 0 && g1.left >= 0 && g1.height > 0 && g1.width > 0);
        assert_true(g1.top + g1.height <= 1.0f + 1e-6f && g1.left + g1.width <= 1.0f + 1e-6f);
        double area = (double)g1.width * g1.height, ratio = (double)g1.width * W / (g1.height * H);
        assert_true(area >= 0.08 - 0.01 && area <= 1.0 + 1e-6);
        assert_true(ratio >= 0.75 - 0.05 && ratio <= 4.0 / 3.0 + 0.05);
        flips += g1.flip;
        if (s > 0) {
            tl_rng r3;
            tl_rng_derive(&r3, 42, TL_RNG_AUGMENT, 1, s - 1);
            tl_geom g3;
            tl_augment_train(&im, S, &a, &r3, o2, &g3);
            differ += memcmp(o1, o2, 3 * S * S * sizeof *o1) != 0;
        }
    }
    assert_int_equal(differ, n - 1);
    assert_true(flips > n / 4 && flips < 3 * n / 4);

    /* without erasing, values lie in the normalised range of [0, 255] */
    a.reprob = 0;
    for (int s = 0; s < 50; s++) {
        tl_rng r;
        tl_rng_derive(&r, 1, TL_RNG_AUGMENT, 2, s);
        tl_geom g;
        tl_augment_train(&im, S, &a, &r, o1, &g);
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < S * S; i++) {
                float v = o1[c * S * S + i];
                assert_true(v >= -MEANS[c] / STDS[c] - 1e-5f && v <= (1 - MEANS[c]) / STDS[c] + 1e-5f);
            }
    }
    /* flip: hflip 1 mirrors the hflip 0 output of the same stream */
    a.randaug[0] = '\0';
    for (int s = 0; s < 20; s++) {
        tl_rng r1, r2;
        tl_geom g1, g2;
        tl_rng_derive(&r1, 3, TL_RNG_AUGMENT, 0, s);
        r2 = r1;
        a.hflip = 1.0f;
        tl_augment_train(&im, S, &a, &r1, o1, &g1);
        a.hflip = 0.0f;
        tl_augment_train(&im, S, &a, &r2, o2, &g2);
        assert_int_equal(g1.flip, 1);
        assert_int_equal(g2.flip, 0);
        assert_int_equal(g1.has_affine, 0);
        assert_true(g1.top == g2.top && g1.width == g2.width);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++)
                    assert_true(o1[(c * S + y) * S + x] == o2[(c * S + y) * S + (S - 1 - x)]);
    }
    /* random erasing: reprob 1 always leaves a box of noise */
    tl_augment_defaults(&a);
    a.randaug[0] = '\0';
    a.reprob = 1.0f;
    int erased = 0;
    for (int s = 0; s < 20; s++) {
        tl_rng r;
        tl_geom g;
        tl_rng_derive(&r, 4, TL_RNG_AUGMENT, 0, s);
        tl_augment_train(&im, S, &a, &r, o1, &g);
        int outside = 0;
        for (int i = 0; i < 3 * S * S; i++) {
            int c = i / (S * S);
            if (o1[i] < -MEANS[c] / STDS[c] - 1e-4f || o1[i] > (1 - MEANS[c]) / STDS[c] + 1e-4f) outside++;
        }
        erased += outside > 0;
    }
    assert_true(erased >= 15);
    /* bad inputs do not crash */
    tl_rng r;
    tl_rng_seed(&r, 1);
    tl_geom g;
    tl_image empty = {0, 0, NULL};
    tl_augment_train(&empty, S, &a, &r, o1, &g);
    assert_true(o1[0] == 0.0f && g.width == 1.0f);
    tl_augment_train(&im, 0, &a, &r, o1, &g);
    tl_transform_eval(&empty, S, 0.9f, o1, &g);
    tl_transform_full(&empty, S, o1);
    /* tiny images and big outputs */
    tl_image one = {1, 1, (uint8_t[]){10, 20, 30}};
    tl_augment_defaults(&a);
    float *big = malloc(3 * 300 * 300 * sizeof *big);
    tl_augment_train(&one, 300, &a, &r, big, &g);
    for (int i = 0; i < 3 * 300 * 300; i++) assert_true(isfinite(big[i]));
    tl_transform_eval(&one, 300, 0.9f, big, &g);
    assert_true(fabsf(unnorm(big, 300, 0, 150, 150) - 10) < 0.01f);
    free(big);
    free(o1);
    free(o2);
    free(im.rgb);
}

/* One geometric op at a time (n1, magnitude clipped to 10): the recorded
 * geometry predicts which colour every output pixel shows. */
static void test_augment_geometry_consistency(void **state) {
    (void)state;
    int W = 200, H = 160, S = 64;
    tl_image im = square_image(W, H);
    tl_augment_cfg a;
    tl_augment_defaults(&a);
    a.reprob = 0;
    strcpy(a.randaug, "rand-m30-n1-mstd0");
    float *o = malloc(3 * S * S * sizeof *o);
    int kinds[5] = {0}, checked = 0, with_affine = 0;
    for (int s = 0; s < 500; s++) {
        tl_rng r;
        tl_geom g;
        tl_rng_derive(&r, 11, TL_RNG_AUGMENT, 0, s);
        tl_augment_train(&im, S, &a, &r, o, &g);
        if (g.has_affine) {
            with_affine++;
            const float *A = g.affine;
            if (A[1] != 0 && A[3] != 0)
                kinds[0]++; /* rotate */
            else if (A[1] != 0)
                kinds[1]++; /* shear x */
            else if (A[3] != 0)
                kinds[2]++; /* shear y */
            else if (A[2] != 0)
                kinds[3]++; /* translate x */
            else if (A[5] != 0)
                kinds[4]++; /* translate y */
            if (A[1] != 0 && A[3] != 0) { /* rotation by +-30 degrees */
                double ang = atan2(A[1], A[0]) * 180 / M_PI;
                assert_true(fabs(fabs(ang) - 30.0) < 1e-3);
            }
        }
        /* with n1, an affine op means no colour op ran: colours are exact */
        if (!g.has_affine && s % 3) continue; /* some no-affine samples too (colour ops may run: skip those) */
        if (!g.has_affine) continue;
        checked++;
        int bad = 0;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int cls = predicted_class(&g, S, x, y, W, H);
                if (cls < 0) continue;
                const float *want = cls == 0 ? BG : cls == 1 ? SQ : FILLC;
                for (int c = 0; c < 3; c++)
                    if (fabsf(unnorm(o, S, c, y, x) - want[c]) > 12.0f) bad++;
            }
        if (bad) fprintf(stderr, "seed %d: %d mismatches (affine %g %g %g %g %g %g flip %d)\n", s, bad, g.affine[0],
                         g.affine[1], g.affine[2], g.affine[3], g.affine[4], g.affine[5], g.flip);
        assert_int_equal(bad, 0);
    }
    for (int k = 0; k < 5; k++) assert_true(kinds[k] > 0);
    assert_true(checked > 50);

    /* no RandAugment: crop + flip alone must match the prediction exactly */
    strcpy(a.randaug, "");
    for (int s = 0; s < 100; s++) {
        tl_rng r;
        tl_geom g;
        tl_rng_derive(&r, 12, TL_RNG_AUGMENT, 0, s);
        tl_augment_train(&im, S, &a, &r, o, &g);
        assert_int_equal(g.has_affine, 0);
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int cls = predicted_class(&g, S, x, y, W, H);
                if (cls < 0) continue;
                assert_true(cls != 2);
                const float *want = cls == 0 ? BG : SQ;
                for (int c = 0; c < 3; c++) assert_true(fabsf(unnorm(o, S, c, y, x) - want[c]) <= 12.0f);
            }
    }

    /* Two ops composed (n2, p1): colour ops may also run, so check that the
     * predicted partition into square and background holds, whatever the
     * colours became. */
    strcpy(a.randaug, "rand-m30-n2-mstd0-p1");
    int two = 0;
    for (int s = 0; s < 600; s++) {
        tl_rng r;
        tl_geom g;
        tl_rng_derive(&r, 13, TL_RNG_AUGMENT, 0, s);
        tl_augment_train(&im, S, &a, &r, o, &g);
        if (!g.has_affine) continue;
        double sum[2][3] = {{0}}, cnt[2] = {0};
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int cls = predicted_class(&g, S, x, y, W, H);
                if (cls != 0 && cls != 1) continue;
                for (int c = 0; c < 3; c++) sum[cls][c] += unnorm(o, S, c, y, x);
                cnt[cls]++;
            }
        if (cnt[0] < 20 || cnt[1] < 20) continue;
        double mean[2][3], dist = 0;
        for (int k = 0; k < 2; k++)
            for (int c = 0; c < 3; c++) mean[k][c] = sum[k][c] / cnt[k];
        for (int c = 0; c < 3; c++) dist += (mean[0][c] - mean[1][c]) * (mean[0][c] - mean[1][c]);
        if (sqrt(dist) < 60) continue; /* a colour op collapsed the two colours */
        two++;
        int bad = 0;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int cls = predicted_class(&g, S, x, y, W, H);
                if (cls != 0 && cls != 1) continue;
                double d[2] = {0, 0};
                for (int k = 0; k < 2; k++)
                    for (int c = 0; c < 3; c++) {
                        double e = unnorm(o, S, c, y, x) - mean[k][c];
                        d[k] += e * e;
                    }
                if (d[cls] >= d[1 - cls]) bad++;
            }
        if (bad) fprintf(stderr, "n2 seed %d: %d pixels on the wrong side\n", s, bad);
        assert_int_equal(bad, 0);
    }
    assert_true(two > 50);
    free(o);
    free(im.rgb);
}

/* Each colour op on a constant picture gives a known constant (PIL's
 * formulas worked by hand for (200,100,50) at magnitude 9, within 1 for
 * halves that float rounding may send either way); geometric ops
 * keep the colour where the image is. */
static void test_randaug_colour_ops(void **state) {
    (void)state;
    int S = 24;
    uint8_t *cst = pattern_rgb(40, 30, 1); /* (200, 100, 50) */
    tl_image im = {40, 30, cst};
    static const uint8_t inc_set[][3] = {
        {200, 100, 50}, /* identity: autocontrast, equalize, sharpness */
        {55, 155, 205}, /* invert; solarize (threshold 26) */
        {128, 0, 0},    /* posterize to 1 bit */
        {200, 199, 149}, /* solarize-add 99 */
        {138, 119, 110}, /* colour / contrast 0.19 around grey 124 */
        {255, 81, 0},   /* colour / contrast 1.81 */
        {255, 181, 91}, /* brightness 1.81 */
        {38, 19, 10},   /* brightness 0.19 */
    };
    static const uint8_t orig_set[][3] = {
        {200, 100, 50}, {55, 155, 205}, {192, 96, 32}, {200, 199, 149},
        {255, 83, 0}, /* colour / contrast 1.72 */
        {255, 172, 86}, /* brightness 1.72 */
    };
    for (int inc = 1; inc >= 0; inc--) {
        tl_augment_cfg a;
        tl_augment_defaults(&a);
        a.reprob = 0;
        strcpy(a.randaug, inc ? "rand-m9-n1-mstd0-p1-inc1" : "rand-m9-n1-mstd0-p1-inc0");
        const uint8_t(*set)[3] = inc ? inc_set : orig_set;
        int nset = inc ? 8 : 6, seen[8] = {0}, geo = 0;
        float *o = malloc(3 * S * S * sizeof *o);
        for (int s = 0; s < 400; s++) {
            tl_rng r;
            tl_geom g;
            tl_rng_derive(&r, 77, TL_RNG_AUGMENT, inc, s);
            tl_augment_train(&im, S, &a, &r, o, &g);
            if (g.has_affine) {
                geo++;
                for (int y = 0; y < S; y++)
                    for (int x = 0; x < S; x++) {
                        double X, Y, e;
                        predict(&g, S, x, y, 40, 30, &X, &Y, &e);
                        if (e < 1.5 / S) continue;
                        for (int c = 0; c < 3; c++)
                            assert_true(fabsf(unnorm(o, S, c, y, x) - cst[c]) < 0.01f);
                    }
                continue;
            }
            int k;
            for (k = 0; k < nset; k++) {
                int same = 1;
                for (int i = 0; i < S * S && same; i++)
                    for (int c = 0; c < 3; c++)
                        if (fabsf(o[c * S * S + i] * STDS[c] * 255.0f + MEANS[c] * 255.0f - set[k][c]) > 1.01f) same = 0;
                if (same) break;
            }
            if (k == nset)
                fail_msg("inc%d seed %d: unexpected colour %.2f %.2f %.2f", inc, s, unnorm(o, S, 0, 0, 0),
                         unnorm(o, S, 1, 0, 0), unnorm(o, S, 2, 0, 0));
            seen[k]++;
        }
        for (int k = 0; k < nset; k++) {
            if (!seen[k]) fprintf(stderr, "inc%d: colour %d never seen\n", inc, k);
            assert_true(seen[k] > 0);
        }
        assert_true(geo > 60);
        free(o);
    }
    free(cst);
}

static void test_transform_eval(void **state) {
    (void)state;
    /* gradient R = x, G = y: bilinear of a linear function is exact away
     * from the borders, so each output pixel can be computed directly */
    int W = 240, H = 180, S = 64;
    tl_image im = {W, H, malloc((size_t)W * H * 3)};
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = im.rgb + ((size_t)y * W + x) * 3;
            p[0] = (uint8_t)x;
            p[1] = (uint8_t)y;
            p[2] = 77;
        }
    float *o = malloc(3 * S * S * sizeof *o);
    float crop_pct = 0.875f;
    tl_geom g;
    tl_transform_eval(&im, S, crop_pct, o, &g);
    int target = (int)floor(S / (double)crop_pct); /* 73 */
    int rh = target, rw = (int)((double)target * W / H);
    int ct = (int)nearbyint((rh - S) / 2.0), cl = (int)nearbyint((rw - S) / 2.0);
    assert_int_equal(rw, 97);
    assert_int_equal(cl, 16); /* round half to even, as Python */
    assert_int_equal(ct, 4);
    assert_true(fabsf(g.top - (float)ct / rh) < 1e-6f && fabsf(g.left - (float)cl / rw) < 1e-6f);
    assert_true(fabsf(g.height - (float)S / rh) < 1e-6f && fabsf(g.width - (float)S / rw) < 1e-6f);
    assert_int_equal(g.flip, 0);
    assert_int_equal(g.has_affine, 0);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            double wx = (cl + x + 0.5) * W / rw - 0.5, wy = (ct + y + 0.5) * H / rh - 0.5;
            assert_true(fabs(unnorm(o, S, 0, y, x) - wx) <= 0.51 + 1e-3);
            assert_true(fabs(unnorm(o, S, 1, y, x) - wy) <= 0.51 + 1e-3);
            assert_true(fabs(unnorm(o, S, 2, y, x) - 77) <= 1e-3);
        }
    /* geom's box reproduces the same samples */
    for (int x = 0; x < S; x++) {
        double X = (g.left + (x + 0.5) / S * g.width) * W - 0.5;
        assert_true(fabs(unnorm(o, S, 0, S / 2, x) - X) <= 0.51 + 1e-3);
    }
    /* upscaling a small image (plain bilinear) */
    tl_image sm = {40, 30, malloc(40 * 30 * 3)};
    for (int y = 0; y < 30; y++)
        for (int x = 0; x < 40; x++) {
            uint8_t *p = sm.rgb + ((size_t)y * 40 + x) * 3;
            p[0] = (uint8_t)(x * 5);
            p[1] = (uint8_t)(y * 5);
            p[2] = 0;
        }
    tl_transform_eval(&sm, S, 1.0f, o, &g);
    rh = 64;
    rw = (int)(64.0 * 40 / 30); /* 85 */
    cl = (int)nearbyint((rw - S) / 2.0);
    for (int y = 4; y < S - 4; y++)
        for (int x = 0; x < S; x++) {
            double wx = ((cl + x + 0.5) * 40.0 / rw - 0.5) * 5, wy = ((y + 0.5) * 30.0 / rh - 0.5) * 5;
            assert_true(fabs(unnorm(o, S, 0, y, x) - wx) <= 0.51 + 1e-3);
            assert_true(fabs(unnorm(o, S, 1, y, x) - wy) <= 0.51 + 1e-3);
        }
    free(sm.rgb);
    /* constant image stays constant (full and eval) */
    uint8_t *cst = pattern_rgb(123, 77, 1);
    tl_image ci = {123, 77, cst};
    tl_transform_full(&ci, S, o);
    for (int c = 0; c < 3; c++) {
        float want = ((c == 0 ? 200 : c == 1 ? 100 : 50) / 255.0f - MEANS[c]) / STDS[c];
        for (int i = 0; i < S * S; i++) assert_true(fabsf(o[c * S * S + i] - want) < 1e-5f);
    }
    tl_transform_eval(&ci, S, 0.9f, o, NULL);
    assert_true(fabsf(unnorm(o, S, 1, 10, 10) - 100) < 1e-3f);
    /* full transform: whole image, per-axis scale */
    tl_transform_full(&im, S, o);
    for (int y = 3; y < S - 3; y++)
        for (int x = 3; x < S - 3; x++) {
            double wx = (x + 0.5) * W / S - 0.5, wy = (y + 0.5) * H / S - 0.5;
            assert_true(fabs(unnorm(o, S, 0, y, x) - wx) <= 0.51 + 1e-3);
            assert_true(fabs(unnorm(o, S, 1, y, x) - wy) <= 0.51 + 1e-3);
        }
    free(cst);
    free(o);
    free(im.rgb);
}

static void test_antialias(void **state) {
    (void)state;
    /* a 1-px checkerboard shrunk 14x must come out flat grey, not aliased */
    int W = 448, S = 32;
    tl_image im = {W, W, malloc((size_t)W * W * 3)};
    for (int y = 0; y < W; y++)
        for (int x = 0; x < W; x++) memset(im.rgb + ((size_t)y * W + x) * 3, ((x + y) & 1) ? 255 : 0, 3);
    float *o = malloc(3 * S * S * sizeof *o);
    tl_transform_full(&im, S, o);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) assert_true(fabsf(unnorm(o, S, 0, y, x) - 127.5f) < 12.0f);
    /* and the train transform with a large crop */
    tl_augment_cfg a;
    tl_augment_defaults(&a);
    a.randaug[0] = '\0';
    a.reprob = 0;
    a.scale_min = 0.9f;
    tl_rng r;
    tl_rng_seed(&r, 3);
    tl_geom g;
    tl_augment_train(&im, S, &a, &r, o, &g);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) assert_true(fabsf(unnorm(o, S, 1, y, x) - 127.5f) < 12.0f);
    free(o);
    free(im.rgb);
}

static void test_mix_batch(void **state) {
    (void)state;
    int B = 5, S = 8;
    size_t per = 3 * (size_t)S * S, n = per * B;
    float *orig = malloc(n * sizeof *orig), *x = malloc(n * sizeof *x);
    tl_rng r;
    tl_rng_seed(&r, 21);
    for (size_t i = 0; i < n; i++) orig[i] = (float)tl_rng_normal(&r);
    /* none */
    memcpy(x, orig, n * sizeof *x);
    assert_true(tl_mix_batch(x, B, S, 0, 1.0f, &r) == 1.0f);
    assert_memory_equal(x, orig, n * sizeof *x);
    int seen_cut = 0, seen_mix = 0;
    for (int t = 0; t < 60; t++) {
        int mode = 1 + t % 3;
        memcpy(x, orig, n * sizeof *x);
        float lam = tl_mix_batch(x, B, S, mode, t % 2 ? 1.0f : 0.4f, &r);
        assert_true(lam >= 0.0f && lam <= 1.0f);
        /* is this a blend or a box swap? */
        int blend = 1, swapped = 0;
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < per; i++) {
                float a0 = orig[b * per + i], a1 = orig[(B - 1 - b) * per + i], v = x[b * per + i];
                if (fabsf(v - (lam * a0 + (1 - lam) * a1)) > 1e-4f) blend = 0;
                if (b != B / 2 && v == a1 && v != a0) swapped++;
            }
        if (mode == 1) assert_true(blend);
        if (mode == 2 || (mode == 3 && !blend)) {
            /* every value is one of the pair's; swapped pixels = (1-lam) of each plane */
            for (int b = 0; b < B; b++)
                for (size_t i = 0; i < per; i++) {
                    float v = x[b * per + i];
                    assert_true(v == orig[b * per + i] || v == orig[(B - 1 - b) * per + i]);
                }
            int pairs = B - 1; /* the middle sample mixes with itself */
            assert_true(fabsf((float)swapped / (pairs * per) - (1.0f - lam)) < 1e-5f);
            seen_cut++;
        } else {
            seen_mix++;
        }
        /* middle of an odd batch is its own partner */
        assert_memory_equal(x + (B / 2) * per, orig + (B / 2) * per, per * sizeof *x);
    }
    assert_true(seen_cut > 5 && seen_mix > 5);
    free(orig);
    free(x);
}

/* ---- real data (skipped when absent) ---- */

/* The photos folder comes from TL_SHARED_DATA, which the build sets for every test (see
 * tests/CMakeLists.txt); without it, or without Imagenette in it, these checks skip. */
static const char *shared_dir(void) {
    const char *env = getenv("TL_SHARED_DATA");
    if (!env || !env[0]) return NULL;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s/imagenette2-224", env);
    struct stat st;
    return stat(buf, &st) == 0 && S_ISDIR(st.st_mode) ? env : NULL;
}

static uint8_t *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

static void test_imagenette(void **state) {
    (void)state;
    const char *sd = shared_dir();
    if (!sd) {
        skip();
        return;
    }
    char p[1024], err[1024];
    snprintf(p, sizeof p, "%s/imagenette2-224/train", sd);
    tl_dataset *tr = tl_dataset_open(p, err, sizeof err);
    if (!tr) fprintf(stderr, "%s\n", err);
    assert_non_null(tr);
    /* classes.tsv sits one level up, beside train/ and val/ */
    assert_int_equal(tl_dataset_num_classes(tr), 10);
    assert_int_equal(tl_dataset_count(tr), 9469);
    assert_string_equal(tl_dataset_class_folder(tr, 0), "n01440764");
    assert_string_equal(tl_dataset_class_name(tr, 0), "tench");
    assert_string_equal(tl_dataset_class_name(tr, 1), "English springer");
    snprintf(p, sizeof p, "%s/imagenette2-224/val", sd);
    tl_dataset *va = tl_dataset_open(p, err, sizeof err);
    assert_non_null(va);
    assert_int_equal(tl_dataset_count(va), 3925);
    assert_int_equal(tl_dataset_num_classes(va), 10);
    assert_string_equal(tl_dataset_class_name(va, 9), "parachute");

    /* decode the first 200 files of two classes */
    int decoded = 0;
    double t0 = now_s();
    for (int i = 0, per[10] = {0}; i < tl_dataset_count(tr); i++) {
        int c = tl_dataset_label(tr, i);
        if ((c != 0 && c != 7) || per[c] >= 200) continue;
        per[c]++;
        assert_int_equal(tl_dataset_path(tr, i, p, sizeof p), 0);
        tl_image im;
        if (tl_image_load(p, 0, &im, err, sizeof err) != 0) fail_msg("%s", err);
        assert_int_equal(im.w, 224);
        assert_int_equal(im.h, 224);
        tl_image_free(&im);
        decoded++;
    }
    double dt = now_s() - t0;
    assert_int_equal(decoded, 400);
    printf("imagenette: decoded %d files at full size in %.0f ms (%.2f ms each)\n", decoded, dt * 1e3,
           dt * 1e3 / decoded);

    /* every greyscale file of both splits comes out RGB with R = G = B */
    int grey = 0;
    tjhandle td = tjInitDecompress();
    tl_dataset *sets[2] = {tr, va};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < tl_dataset_count(sets[s]); i++) {
            assert_int_equal(tl_dataset_path(sets[s], i, p, sizeof p), 0);
            size_t len = 0;
            uint8_t *b = read_all(p, &len);
            assert_non_null(b);
            int w, h, ss, cs;
            assert_int_equal(tjDecompressHeader3(td, b, len, &w, &h, &ss, &cs), 0);
            if (cs == TJCS_GRAY) {
                grey++;
                tl_image im;
                if (tl_image_decode(b, len, 0, &im, NULL, err, sizeof err) != 0) fail_msg("%s: %s", p, err);
                for (int k = 0; k < im.w * im.h; k++)
                    if (im.rgb[3 * k] != im.rgb[3 * k + 1] || im.rgb[3 * k] != im.rgb[3 * k + 2])
                        fail_msg("%s: not grey at %d", p, k);
                tl_image_free(&im);
            }
            free(b);
        }
    tjDestroy(td);
    printf("imagenette: %d greyscale files decoded to RGB\n", grey);
    assert_int_equal(grey, 242);
    tl_dataset_free(tr);
    tl_dataset_free(va);
}

static void test_photos(void **state) {
    (void)state;
    const char *sd = shared_dir();
    char dir[1024];
    if (sd) snprintf(dir, sizeof dir, "%s/photos", sd);
    struct stat st;
    if (!sd || stat(dir, &st) != 0) {
        skip();
        return;
    }
    const char *names[] = {"n01440764_tench.JPEG",      "n02102040_English_springer.JPEG", "n02979186_cassette_player.JPEG",
                           "n03000684_chain_saw.JPEG",  "n03028079_church.JPEG",           "n03394916_French_horn.JPEG",
                           "n03417042_garbage_truck.JPEG", "n03425413_gas_pump.JPEG",      "n03445777_golf_ball.JPEG",
                           "n03888257_parachute.JPEG"};
    int nonsquare = 0, S = 224;
    float *o = malloc(3 * S * S * sizeof *o);
    tjhandle td = tjInitDecompress();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[1200], err[1024];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        size_t len = 0;
        uint8_t *b = read_all(p, &len);
        if (!b) continue;
        int w, h, ss, cs;
        assert_int_equal(tjDecompressHeader3(td, b, len, &w, &h, &ss, &cs), 0);
        tl_image im;
        if (tl_image_load(p, 0, &im, err, sizeof err) != 0) fail_msg("%s", err);
        assert_int_equal(im.w, w);
        assert_int_equal(im.h, h);
        nonsquare += w != h;
        tl_geom g;
        tl_transform_eval(&im, S, 0.9f, o, &g);
        for (int k = 0; k < 3 * S * S; k++) assert_true(isfinite(o[k]));
        tl_image_free(&im);
        /* the loader's reduced decode: shorter side at least S */
        assert_int_equal(tl_image_decode(b, len, S, &im, NULL, err, sizeof err), 0);
        int full_short = w < h ? w : h, got_short = im.w < im.h ? im.w : im.h;
        assert_true(got_short >= (full_short < S ? full_short : S));
        assert_true(im.w <= w && im.h <= h);
        tl_image_free(&im);
        free(b);
    }
    tjDestroy(td);
    assert_true(nonsquare > 0);
    free(o);
}

static void test_throughput(void **state) {
    (void)state;
    /* 224 px JPEGs: Imagenette's when present, else synthetic ones */
    enum { N = 128 };
    uint8_t *jp[N];
    size_t jl[N];
    const char *sd = shared_dir();
    tl_dataset *d = NULL;
    if (sd) {
        char p[1024], err[512];
        snprintf(p, sizeof p, "%s/imagenette2-224/train", sd);
        d = tl_dataset_open(p, err, sizeof err);
    }
    for (int i = 0; i < N; i++) {
        if (d) {
            char p[1024];
            tl_dataset_path(d, (int)((long)i * tl_dataset_count(d) / N), p, sizeof p);
            jp[i] = read_all(p, &jl[i]);
            assert_non_null(jp[i]);
        } else {
            uint8_t *rgb = pattern_rgb(224, 224, 0);
            rgb[i * 3] ^= 0x55;
            jp[i] = encode(rgb, 224, 224, 75, &jl[i]);
            free(rgb);
        }
    }
    tl_dataset_free(d);
    tl_augment_cfg a;
    tl_augment_defaults(&a);
    const int sizes[2] = {64, 224};
    double rate[2];
    float *o = malloc(3 * 224 * 224 * sizeof *o);
    for (int k = 0; k < 2; k++) {
        int S = sizes[k], reps = S == 64 ? 4 : 2, count = 0;
        double t0 = now_s();
        for (int rep = 0; rep < reps; rep++)
            for (int i = 0; i < N; i++) {
                tl_image im;
                char err[256];
                assert_int_equal(tl_image_decode(jp[i], jl[i], S, &im, NULL, err, sizeof err), 0);
                tl_rng r;
                tl_rng_derive(&r, 1, TL_RNG_AUGMENT, rep, i);
                tl_geom g;
                tl_augment_train(&im, S, &a, &r, o, &g);
                tl_image_free(&im);
                count++;
            }
        rate[k] = count / (now_s() - t0);
    }
    printf("decode+augment: %.0f img/s at 64 px, %.0f img/s at 224 px from 224 px JPEGs, 1 thread\n", rate[0],
           rate[1]);
    /* augment alone, for reference */
    tl_image im;
    char err[256];
    assert_int_equal(tl_image_decode(jp[0], jl[0], 0, &im, NULL, err, sizeof err), 0);
    for (int k = 0; k < 2; k++) {
        int S = sizes[k], reps = 300;
        double t0 = now_s();
        for (int i = 0; i < reps; i++) {
            tl_rng r;
            tl_rng_derive(&r, 2, TL_RNG_AUGMENT, 0, i);
            tl_geom g;
            tl_augment_train(&im, S, &a, &r, o, &g);
        }
        printf("augment only: %.3f ms per %d px output from a %dx%d image\n", (now_s() - t0) * 1e3 / reps, S, im.w,
               im.h);
    }
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        tl_image d2;
        assert_int_equal(tl_image_decode(jp[i], jl[i], 0, &d2, NULL, err, sizeof err), 0);
        tl_image_free(&d2);
    }
    printf("decode only: %.3f ms per 224 px JPEG\n", (now_s() - t0) * 1e3 / N);
    tl_image_free(&im);
    free(o);
    for (int i = 0; i < N; i++) free(jp[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_roundtrip),
        cmocka_unit_test(test_scaled_decode),
        cmocka_unit_test(test_scaled_decode_exhaustive),
        cmocka_unit_test(test_grey_to_rgb),
        cmocka_unit_test(test_cmyk_to_rgb),
        cmocka_unit_test(test_truncated_and_garbage),
        cmocka_unit_test(test_huge_header_refused),
        cmocka_unit_test(test_image_load),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_dataset_scan),
        cmocka_unit_test(test_dataset_many),
        cmocka_unit_test(test_augment_validate),
        cmocka_unit_test(test_augment_basic),
        cmocka_unit_test(test_augment_geometry_consistency),
        cmocka_unit_test(test_randaug_colour_ops),
        cmocka_unit_test(test_transform_eval),
        cmocka_unit_test(test_antialias),
        cmocka_unit_test(test_mix_batch),
        cmocka_unit_test(test_imagenette),
        cmocka_unit_test(test_photos),
        cmocka_unit_test(test_throughput),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
