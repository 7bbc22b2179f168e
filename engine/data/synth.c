/*
 * synth.c: the built-in synthetic dataset (synth.h, `tokenlabd synth`).
 *
 * The problem: every picture holds 2..4 objects of DIFFERENT classes on a
 * cluttered background (grey-ish gradient, pixel noise, faint random lines).
 * A class is a shape family (disc, square, triangle, ring, cross, stripes,
 * diamond, star, semicircle, crescent, checker, frame); beyond 12 classes the
 * families repeat with a texture variant (dotted, hatched, gradient,
 * speckled, two-tone). Each class has its own base hue, but objects draw
 * their hue with a jitter wider than the spacing between classes, so colour
 * alone does not name the class. Sizes, positions and (for shapes that stay
 * distinct under it) rotations are random; objects may overlap, later ones
 * drawn on top. The image label is the class of the object with the largest
 * VISIBLE area, which is at least twice the visible area of any other object
 * (scenes are redrawn until this holds). Because the other objects are real
 * classes too, a whole-image one-hot target is wrong for many tokens: the
 * per-token truth is what token labeling adds. Measured with the engine's
 * trainer (a 4-block LV-ViT, D 96, patch 8, at 64 px, 10 classes, one core):
 * about 75% top-1 after 30 epochs of 2000 pictures (chance 10%), in about
 * 7 minutes; with 600 pictures, label maps beat plain training by about 5
 * points (62% vs 57%).
 *
 * Label maps (labelmap.h) are exact: at each cell of the map_size x map_size
 * grid, f_c is the fraction of the cell's pixels whose topmost object has
 * class c and f_b the background fraction; the logit of class c is 8 f_c,
 * and the image label gets 2 f_b more; the top k = min(5, K) logits are
 * stored with their classes (ties by the smaller class index).
 *
 * Determinism: picture i of split s (0 train, 1 val) draws everything from
 * tl_rng_derive(seed, TL_RNG_SYNTH, s, i); the label of picture i is i mod K
 * (balanced classes). Files carry no time stamps, so one config gives the
 * same bytes on the same build.
 *
 * Safety: the output folder must be missing, empty, or a previous synth
 * output (its README.txt starts with SYNTH_MAGIC); in the last case only the
 * class folders' .jpg files and the files this module writes are replaced.
 */
#include "tokenlab/synth.h"
#include "tokenlab/base.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "tokenlab/image.h"
#include "tokenlab/labelmap.h"
#include "tokenlab/rng.h"
#include "tokenlab/model.h"

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

#define SYNTH_MAGIC "tokenlab synth output"
#define SYNTH_MAX_IMAGES 1000000
#define SYNTH_JPEG_QUALITY 90
#define MAX_OBJECTS 4
#define MIN_RATIO 2.0      /* visible area of the label object / of any other */
#define MAX_ATTEMPTS 64    /* scene redraws before the fallback */

/* ------------------------------------------------------------------ classes */

enum {
    F_DISC,
    F_SQUARE,
    F_TRIANGLE,
    F_RING,
    F_CROSS,
    F_STRIPES,
    F_DIAMOND,
    F_STAR,
    F_SEMICIRCLE,
    F_CRESCENT,
    F_CHECKER,
    F_FRAME,
    N_FAMILIES
};
static const char *const FAMILY[N_FAMILIES] = {"disc",    "square", "triangle",   "ring",     "cross",   "stripes",
                                               "diamond", "star",   "semicircle", "crescent", "checker", "frame"};
/* Shapes that a free rotation would turn into another class (square <->
 * diamond) only turn a little. */
static const int FREE_ROTATION[N_FAMILIES] = {1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0};

enum { V_SOLID, V_DOTTED, V_HATCHED, V_GRADIENT, V_SPECKLED, V_TWOTONE, N_VARIANTS };
static const char *const VARIANT[N_VARIANTS] = {"", "dotted", "hatched", "gradient", "speckled", "twotone"};

static int class_family(int c) { return c % N_FAMILIES; }
static int class_variant(int c) { return (c / N_FAMILIES) % N_VARIANTS; }

static void class_name(int c, char *buf, size_t len) {
    int v = class_variant(c);
    if (v == V_SOLID)
        snprintf(buf, len, "%s", FAMILY[class_family(c)]);
    else
        snprintf(buf, len, "%s_%s", FAMILY[class_family(c)], VARIANT[v]);
}

static void class_folder(int c, char *buf, size_t len) {
    char name[48];
    class_name(c, name, sizeof name);
    snprintf(buf, len, "c%02d_%s", c, name);
}

/* Base hue in [0, 1): golden-ratio steps spread the classes round the wheel. */
static double class_hue(int c) {
    double h = 0.13 + 0.6180339887498949 * c;
    return h - floor(h);
}

/* ------------------------------------------------------------------ drawing */

typedef struct {
    int cls;
    double cx, cy, r;     /* pixels */
    double cs, sn;        /* rotation */
    double col[3];        /* fill */
    double alt[3];        /* texture colour */
    double dark[3];       /* the darker half of stripes / checker */
} object;

static double uni(tl_rng *r, double lo, double hi) { return lo + (hi - lo) * tl_rng_uniform(r); }

static void hsv_to_rgb(double h, double s, double v, double out[3]) {
    h = (h - floor(h)) * 6.0;
    int i = (int)h;
    if (i > 5) i = 5;
    double f = h - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    double r, g, b;
    switch (i) {
    case 0: r = v, g = t, b = p; break;
    case 1: r = q, g = v, b = p; break;
    case 2: r = p, g = v, b = t; break;
    case 3: r = p, g = q, b = v; break;
    case 4: r = t, g = p, b = v; break;
    default: r = v, g = p, b = q; break;
    }
    out[0] = 255.0 * r;
    out[1] = 255.0 * g;
    out[2] = 255.0 * b;
}

/* Even-odd point-in-polygon. */
static int in_polygon(const double *xy, int n, double u, double v) {
    int in = 0;
    for (int i = 0, j = n - 1; i < n; j = i++) {
        double xi = xy[2 * i], yi = xy[2 * i + 1], xj = xy[2 * j], yj = xy[2 * j + 1];
        if ((yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi) in = !in;
    }
    return in;
}

static void shapes_init(double *tri, double *star) {
    for (int i = 0; i < 3; i++) {
        double a = -M_PI / 2 + i * 2 * M_PI / 3;
        tri[2 * i] = cos(a), tri[2 * i + 1] = sin(a);
    }
    for (int i = 0; i < 10; i++) {
        double a = -M_PI / 2 + i * M_PI / 5, rr = (i % 2) ? 0.42 : 1.0;
        star[2 * i] = rr * cos(a), star[2 * i + 1] = rr * sin(a);
    }
}

/* Shape test in the object's unit frame: 0 outside, 1 fill, 2 dark part. */
static int shape_at(int family, double u, double v, const double *tri, const double *star) {
    double au = fabs(u), av = fabs(v), d2 = u * u + v * v;
    switch (family) {
    case F_DISC: return d2 <= 1.0;
    case F_SQUARE: return au <= 0.85 && av <= 0.85;
    case F_TRIANGLE: return in_polygon(tri, 3, u, v - 0.1);
    case F_RING: return d2 <= 1.0 && d2 >= 0.55 * 0.55;
    case F_CROSS: return (au <= 0.3 && av <= 1.0) || (av <= 0.3 && au <= 1.0);
    case F_STRIPES:
        if (au > 1.0 || av > 0.6) return 0;
        return ((int)floor((u + 1.0) * 2.5) % 2) ? 2 : 1;
    case F_DIAMOND: return au / 0.75 + av / 1.05 <= 1.0;
    case F_STAR: return in_polygon(star, 10, u, v - 0.1);
    case F_SEMICIRCLE: {
        double w = v - 0.4;
        return u * u + w * w <= 1.0 && w <= 0.0;
    }
    case F_CRESCENT: {
        double w = u - 0.5;
        return d2 <= 1.0 && w * w + v * v > 0.8 * 0.8;
    }
    case F_CHECKER:
        if (au > 0.85 || av > 0.85) return 0;
        return (((int)floor((u + 0.85) / (1.7 / 3.0)) + (int)floor((v + 0.85) / (1.7 / 3.0))) % 2) ? 2 : 1;
    case F_FRAME: return au <= 0.9 && av <= 0.9 && !(au < 0.48 && av < 0.48);
    }
    return 0;
}

/* Draws o over img/owner (owner gets index idx). rng: speckles only. */
static void draw_object(const object *o, int idx, int S, double *img, int8_t *owner, tl_rng *rng, const double *tri,
                        const double *star) {
    int fam = class_family(o->cls), var = class_variant(o->cls);
    double ext = 1.5 * o->r;
    int x0 = (int)floor(o->cx - ext), x1 = (int)ceil(o->cx + ext), y0 = (int)floor(o->cy - ext),
        y1 = (int)ceil(o->cy + ext);
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > S) x1 = S;
    if (y1 > S) y1 = S;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            double dx = x + 0.5 - o->cx, dy = y + 0.5 - o->cy;
            double u = (dx * o->cs + dy * o->sn) / o->r, v = (-dx * o->sn + dy * o->cs) / o->r;
            int part = shape_at(fam, u, v, tri, star);
            if (!part) continue;
            const double *c = part == 2 ? o->dark : o->col;
            double px[3] = {c[0], c[1], c[2]};
            if (part == 1) {
                int use_alt = 0;
                double shade = 1.0;
                switch (var) {
                case V_DOTTED: {
                    double fu = u * 2.2 - floor(u * 2.2) - 0.5, fv = v * 2.2 - floor(v * 2.2) - 0.5;
                    use_alt = fu * fu + fv * fv < 0.2 * 0.2;
                    break;
                }
                case V_HATCHED: {
                    double t = (u + v) * 2.5;
                    use_alt = t - floor(t) < 0.4;
                    break;
                }
                case V_GRADIENT: shade = 0.45 + 0.55 * (v + 1.0) * 0.5; break;
                case V_SPECKLED: use_alt = tl_rng_uniform(rng) < 0.35; break;
                case V_TWOTONE: use_alt = u < 0.0; break;
                default: break;
                }
                if (use_alt) px[0] = o->alt[0], px[1] = o->alt[1], px[2] = o->alt[2];
                for (int k = 0; k < 3; k++) px[k] *= shade < 0.0 ? 0.0 : shade;
            }
            double *p = img + 3 * ((size_t)y * S + x);
            p[0] = px[0], p[1] = px[1], p[2] = px[2];
            owner[(size_t)y * S + x] = (int8_t)idx;
        }
}

static void random_object(object *o, int cls, int is_main, int S, tl_rng *rng) {
    o->cls = cls;
    if (is_main) {
        o->r = S * uni(rng, 0.26, 0.36);
        o->cx = S * uni(rng, 0.25, 0.75);
        o->cy = S * uni(rng, 0.25, 0.75);
    } else {
        o->r = S * uni(rng, 0.12, 0.24);
        o->cx = S * uni(rng, 0.1, 0.9);
        o->cy = S * uni(rng, 0.1, 0.9);
    }
    double a = FREE_ROTATION[class_family(cls)] ? uni(rng, 0.0, 2.0 * M_PI) : uni(rng, -0.21, 0.21);
    o->cs = cos(a);
    o->sn = sin(a);
    double hue = class_hue(cls) + uni(rng, -0.12, 0.12);
    double sat = uni(rng, 0.45, 1.0), val = uni(rng, 0.55, 1.0);
    hsv_to_rgb(hue, sat, val, o->col);
    hsv_to_rgb(hue + 0.5, sat * 0.6, val < 0.75 ? val + 0.25 : val - 0.35, o->alt);
    for (int k = 0; k < 3; k++) o->dark[k] = o->col[k] * 0.35;
}

/* Background: tinted grey, linear gradient, faint lines. */
static void draw_background(int S, double *img, tl_rng *rng) {
    double g = uni(rng, 70.0, 180.0);
    double tint[3] = {uni(rng, -20, 20), uni(rng, -20, 20), uni(rng, -20, 20)};
    double ga = uni(rng, 0.0, 2.0 * M_PI), gamp = uni(rng, 0.0, 35.0);
    double gx = cos(ga) * gamp / S, gy = sin(ga) * gamp / S;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            double b = g + gx * (x - S / 2.0) + gy * (y - S / 2.0);
            double *p = img + 3 * ((size_t)y * S + x);
            for (int k = 0; k < 3; k++) p[k] = b + tint[k];
        }
    int lines = 3 + (int)tl_rng_below(rng, 5);
    for (int l = 0; l < lines; l++) {
        double ax = uni(rng, 0, S), ay = uni(rng, 0, S), bx = uni(rng, 0, S), by = uni(rng, 0, S);
        double half = uni(rng, 0.4, 1.2) * S / 64.0;
        double alpha = uni(rng, 0.12, 0.3);
        double col[3];
        hsv_to_rgb(uni(rng, 0, 1), uni(rng, 0, 0.6), uni(rng, 0.1, 1.0), col);
        double vx = bx - ax, vy = by - ay, vv = vx * vx + vy * vy;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                double px = x + 0.5 - ax, py = y + 0.5 - ay;
                double t = vv > 0 ? (px * vx + py * vy) / vv : 0.0;
                if (t < 0) t = 0;
                if (t > 1) t = 1;
                double ex = px - t * vx, ey = py - t * vy;
                if (ex * ex + ey * ey > half * half) continue;
                double *p = img + 3 * ((size_t)y * S + x);
                for (int k = 0; k < 3; k++) p[k] = (1 - alpha) * p[k] + alpha * col[k];
            }
    }
}

/* One picture: rgb (S*S*3) and owner classes (S*S, -1 background). Returns
 * the label. */
static int render(int S, int K, int label, tl_rng *rng, uint8_t *rgb, int8_t *cls_map, double *img, int8_t *owner,
                  const double *tri, const double *star) {
    object objs[MAX_OBJECTS];
    int n = 2 + (int)tl_rng_below(rng, 3);
    if (n > K) n = K;
    /* Distinct classes: the label first, then others drawn without repeats. */
    int classes[MAX_OBJECTS];
    classes[0] = label;
    for (int i = 1; i < n; i++) {
        int c, dup;
        do {
            c = (int)tl_rng_below(rng, (uint32_t)K);
            dup = 0;
            for (int j = 0; j < i; j++) dup |= classes[j] == c;
        } while (dup);
        classes[i] = c;
    }
    const size_t npx = (size_t)S * S;
    int order[MAX_OBJECTS];
    int ok = 0;
    long vis[MAX_OBJECTS];
    for (int attempt = 0; attempt < MAX_ATTEMPTS + MAX_OBJECTS && !ok; attempt++) {
        /* After MAX_ATTEMPTS, drop distractors one at a time (always ends). */
        int m = n;
        if (attempt >= MAX_ATTEMPTS) m = n - (attempt - MAX_ATTEMPTS + 1);
        if (m < 1) m = 1;
        for (int i = 0; i < m; i++) random_object(&objs[i], classes[i], i == 0, S, rng);
        for (int i = 0; i < m; i++) order[i] = i;
        for (int i = m - 1; i > 0; i--) {
            int j = (int)tl_rng_below(rng, (uint32_t)(i + 1));
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        draw_background(S, img, rng);
        memset(owner, -1, npx);
        for (int d = 0; d < m; d++) draw_object(&objs[order[d]], order[d], S, img, owner, rng, tri, star);
        for (int i = 0; i < MAX_OBJECTS; i++) vis[i] = 0;
        for (size_t p = 0; p < npx; p++)
            if (owner[p] >= 0) vis[owner[p]]++;
        long other = 0;
        for (int i = 1; i < m; i++)
            if (vis[i] > other) other = vis[i];
        ok = vis[0] > 0 && (double)vis[0] >= MIN_RATIO * (double)other &&
             (attempt >= MAX_ATTEMPTS || (double)vis[0] >= 0.06 * (double)npx);
        if (!ok && attempt >= MAX_ATTEMPTS && m == 1) ok = 1;
    }
    /* Pixel noise over everything, then 8-bit. */
    for (size_t p = 0; p < npx; p++) {
        for (int k = 0; k < 3; k++) {
            double v = img[3 * p + k] + uni(rng, -10.0, 10.0);
            int q = (int)floor(v + 0.5);
            rgb[3 * p + k] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
        }
        cls_map[p] = owner[p] >= 0 ? (int8_t)objs[owner[p]].cls : (int8_t)-1;
    }
    return label;
}

/* The label map of one picture (see the file comment). */
static void make_map(int S, int K, int k, int m, int label, const int8_t *cls_map, int *counts /*(m*m, K+1)*/,
                     int *totals /*(m*m)*/, float *values, int32_t *indices) {
    memset(counts, 0, sizeof(int) * (size_t)m * m * (K + 1));
    memset(totals, 0, sizeof(int) * (size_t)m * m);
    for (int y = 0; y < S; y++) {
        int cy = (int)((long)y * m / S);
        for (int x = 0; x < S; x++) {
            int cx = (int)((long)x * m / S);
            int cell = cy * m + cx, c = cls_map[(size_t)y * S + x];
            counts[(size_t)cell * (K + 1) + (c >= 0 ? c : K)]++;
            totals[cell]++;
        }
    }
    double logit[64];
    int taken[64];
    const size_t hw = (size_t)m * m;
    for (size_t cell = 0; cell < hw; cell++) {
        const int *cnt = counts + cell * (K + 1);
        double tot = totals[cell];
        for (int c = 0; c < K; c++) {
            logit[c] = 8.0 * cnt[c] / tot;
            taken[c] = 0;
        }
        logit[label] += 2.0 * cnt[K] / tot;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int c = 0; c < K; c++)
                if (!taken[c] && (best < 0 || logit[c] > logit[best])) best = c;
            taken[best] = 1;
            values[(size_t)j * hw + cell] = (float)logit[best];
            indices[(size_t)j * hw + cell] = best;
        }
    }
}

/* ------------------------------------------------------------------ files */

static int write_file(const char *path, const void *data, size_t len, char *err, size_t errlen) {
    FILE *f = fopen(path, "wb");
    if (!f) return tl_seterr(err, errlen, "cannot create %s: %s", path, strerror(errno));
    size_t w = len ? fwrite(data, 1, len, f) : 0;
    int bad = w != len;
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        unlink(path);
        return tl_seterr(err, errlen, "cannot write %s", path);
    }
    return 0;
}

static int make_dir(const char *path, char *err, size_t errlen) {
    if (mkdir(path, 0755) == 0) return 0;
    struct stat st;
    if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    return tl_seterr(err, errlen, "cannot create folder %s: %s", path, strerror(errno));
}

/* mkdir -p */
static int make_dirs(const char *path, char *err, size_t errlen) {
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf) return tl_seterr(err, errlen, "output folder: path empty or too long");
    memcpy(buf, path, len + 1);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = '\0';
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            struct stat st;
            if (stat(buf, &st) != 0 && make_dir(buf, err, errlen)) return -1;
            *p = '/';
        }
    return make_dir(buf, err, errlen);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* 1 when <out>/README.txt starts with the synth magic line. */
static int is_previous_output(const char *out) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/README.txt", out) >= (int)sizeof path) return 0;
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char line[64] = "";
    size_t n = fread(line, 1, strlen(SYNTH_MAGIC), f);
    fclose(f);
    line[n] = '\0';
    return strcmp(line, SYNTH_MAGIC) == 0;
}

/* The class folders of a previous output's split: with remove == 0 checks
 * that they hold only .jpg files (anything else is an error); with
 * remove == 1 deletes those files and the emptied folders. */
static int clear_split(const char *split, int remove, char *err, size_t errlen) {
    DIR *d = opendir(split);
    if (!d) {
        if (errno == ENOENT) return 0;
        return tl_seterr(err, errlen, "cannot read %s: %s", split, strerror(errno));
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        char cdir[PATH_MAX];
        if (snprintf(cdir, sizeof cdir, "%s/%s", split, de->d_name) >= (int)sizeof cdir) {
            rc = tl_seterr(err, errlen, "path too long under %s", split);
            break;
        }
        struct stat st;
        if (lstat(cdir, &st) == 0 && S_ISREG(st.st_mode) && strcmp(de->d_name, "classes.tsv") == 0) continue;
        if (lstat(cdir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            rc = tl_seterr(err, errlen, "%s is not synth output; refusing to remove it", cdir);
            break;
        }
        DIR *cd = opendir(cdir);
        if (!cd) {
            rc = tl_seterr(err, errlen, "cannot read %s: %s", cdir, strerror(errno));
            break;
        }
        struct dirent *fe;
        while (rc == 0 && (fe = readdir(cd))) {
            if (strcmp(fe->d_name, ".") == 0 || strcmp(fe->d_name, "..") == 0) continue;
            char fpath[PATH_MAX];
            if (snprintf(fpath, sizeof fpath, "%s/%s", cdir, fe->d_name) >= (int)sizeof fpath) {
                rc = tl_seterr(err, errlen, "path too long under %s", cdir);
                break;
            }
            struct stat fs;
            if (!ends_with(fe->d_name, ".jpg") || lstat(fpath, &fs) != 0 || !S_ISREG(fs.st_mode)) {
                rc = tl_seterr(err, errlen, "%s is not synth output; refusing to remove it", fpath);
                break;
            }
            if (remove && unlink(fpath) != 0) rc = tl_seterr(err, errlen, "cannot remove %s: %s", fpath, strerror(errno));
        }
        closedir(cd);
        if (rc == 0 && remove && rmdir(cdir) != 0)
            rc = tl_seterr(err, errlen, "cannot remove %s: %s", cdir, strerror(errno));
    }
    closedir(d);
    return rc;
}

/* Makes out ready: created if missing; empty, or a previous output cleared. */
static int prepare_out(const char *out, char *err, size_t errlen) {
    struct stat st;
    if (stat(out, &st) != 0) {
        if (errno != ENOENT) return tl_seterr(err, errlen, "output folder %s: %s", out, strerror(errno));
        return make_dirs(out, err, errlen);
    }
    if (!S_ISDIR(st.st_mode)) return tl_seterr(err, errlen, "output folder %s: exists and is not a folder", out);
    DIR *d = opendir(out);
    if (!d) return tl_seterr(err, errlen, "output folder %s: %s", out, strerror(errno));
    int empty = 1;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            empty = 0;
            break;
        }
    closedir(d);
    if (empty) return 0;
    if (!is_previous_output(out))
        return tl_seterr(err, errlen,
                         "output folder %s is not empty and is not a previous synth output (no README.txt "
                         "starting \"" SYNTH_MAGIC "\"); refusing to write into it",
                         out);
    char p[PATH_MAX];
    const char *splits[2] = {"train", "val"};
    for (int pass = 0; pass < 2; pass++) /* check everything before removing anything */
        for (int s = 0; s < 2; s++) {
            if (snprintf(p, sizeof p, "%s/%s", out, splits[s]) >= (int)sizeof p)
                return tl_seterr(err, errlen, "output folder: path too long");
            if (clear_split(p, pass, err, errlen)) return -1;
        }
    return 0;
}

/* ------------------------------------------------------------------ API */

void tl_synth_defaults(tl_synth_cfg *c) {
    c->classes = 10;
    c->train = 2000;
    c->val = 500;
    c->size = 64;
    c->seed = 1;
    c->map_size = c->size / 4;
}

static int validate(const tl_synth_cfg *c, char *err, size_t errlen) {
    if (c->classes < 2 || c->classes > 64) return tl_seterr(err, errlen, "classes: must be in 2..64, got %d", c->classes);
    if (c->train < 1 || c->train > SYNTH_MAX_IMAGES)
        return tl_seterr(err, errlen, "train: must be in 1..%d, got %d", SYNTH_MAX_IMAGES, c->train);
    if (c->val < 1 || c->val > SYNTH_MAX_IMAGES)
        return tl_seterr(err, errlen, "val: must be in 1..%d, got %d", SYNTH_MAX_IMAGES, c->val);
    if (c->size < 32 || c->size > 512) return tl_seterr(err, errlen, "size: must be in 32..512, got %d", c->size);
    if (c->map_size < 0 || c->map_size > c->size)
        return tl_seterr(err, errlen, "map_size: must be 0 (size/4) or in 1..size (%d), got %d", c->size, c->map_size);
    return 0;
}

static int write_readme(const char *out, const tl_synth_cfg *c, int m, char *err, size_t errlen) {
    char path[PATH_MAX], text[4096];
    if (snprintf(path, sizeof path, "%s/README.txt", out) >= (int)sizeof path)
        return tl_seterr(err, errlen, "output folder: path too long");
    int n = snprintf(
        text, sizeof text,
        SYNTH_MAGIC "\n"
        "\n"
        "Written by tokenlab's built-in generator (tokenlabd synth, engine/data/synth.c).\n"
        "Settings: classes %d, train %d, val %d, size %d px, map_size %d, seed %llu.\n"
        "The same settings give the same files, byte for byte.\n"
        "\n"
        "Layout\n"
        "  train/<class>/<n>.jpg, val/<class>/<n>.jpg  JPEG quality %d, RGB, size x size;\n"
        "                                              n is the picture's index in its split\n"
        "  classes.tsv (also in train/ and val/)       folder<TAB>readable name, after a header line\n"
        "  train.tllm, val.tllm                        exact label maps, keys relative to the split\n"
        "                                              folder (\"c00_disc/00012.jpg\")\n"
        "\n"
        "Pictures\n"
        "  Each picture holds 2 to 4 objects of different classes on a cluttered background\n"
        "  (tinted grey gradient, pixel noise, faint random lines). A class is a shape family\n"
        "  (disc, square, triangle, ring, cross, stripes, diamond, star, semicircle, crescent,\n"
        "  checker, frame; beyond 12 classes the families return with a texture: dotted,\n"
        "  hatched, gradient, speckled, twotone). Each class has a base hue, but every object\n"
        "  jitters its hue, saturation and value so that colour alone does not tell the class.\n"
        "  Size, position and rotation are random; objects may overlap, later ones on top.\n"
        "  The image label is the class of the object with the largest visible area, at\n"
        "  least twice the visible area of any other object. Picture i of a split has\n"
        "  label i mod classes.\n"
        "\n"
        "Label maps\n"
        "  map_size x map_size cells; in each cell f_c is the fraction of its pixels whose\n"
        "  topmost object has class c and f_b the background fraction. Logit of class c:\n"
        "  8 f_c, plus 2 f_b for the image label. The top k = min(5, classes) logits are\n"
        "  stored with their class indices (ties: smaller index first).\n"
        "\n"
        "This folder may be overwritten by tokenlabd synth (it recognises the first line).\n",
        c->classes, c->train, c->val, c->size, m, (unsigned long long)c->seed, SYNTH_JPEG_QUALITY);
    if (n < 0 || (size_t)n >= sizeof text) return tl_seterr(err, errlen, "README too long");
    return write_file(path, text, (size_t)n, err, errlen);
}

/* classes.tsv in out and in both split folders (the dataset reader looks
 * for it in its root, i.e. the split folder). */
static int write_classes(const char *out, int K, char *err, size_t errlen) {
    size_t cap = 64 + (size_t)K * 96, len = 0;
    char *text = malloc(cap);
    if (!text) return tl_seterr(err, errlen, "out of memory");
    len += (size_t)snprintf(text + len, cap - len, "folder\tname\n");
    for (int c = 0; c < K; c++) {
        char folder[64], name[48];
        class_folder(c, folder, sizeof folder);
        class_name(c, name, sizeof name);
        len += (size_t)snprintf(text + len, cap - len, "%s\t%s\n", folder, name);
    }
    int rc = 0;
    const char *where[3] = {"", "/train", "/val"};
    for (int i = 0; i < 3 && rc == 0; i++) {
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s%s", out, where[i]) >= (int)sizeof path)
            rc = tl_seterr(err, errlen, "output folder: path too long");
        else if (i > 0)
            rc = make_dir(path, err, errlen);
        if (rc == 0 && snprintf(path, sizeof path, "%s%s/classes.tsv", out, where[i]) >= (int)sizeof path)
            rc = tl_seterr(err, errlen, "output folder: path too long");
        if (rc == 0) rc = write_file(path, text, len, err, errlen);
    }
    free(text);
    return rc;
}

typedef struct {
    int S, K, k, m;
    double *img;
    int8_t *owner, *cls_map;
    uint8_t *rgb;
    int *counts, *totals;
    float *values;
    int32_t *indices;
    double tri[6], star[20]; /* unit triangle and five-point star */
} work;

static int write_split(const char *out, int split, int count, const tl_synth_cfg *c, work *w, char *err,
                       size_t errlen) {
    const char *sname = split == 0 ? "train" : "val";
    char dir[PATH_MAX], path[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/%s", out, sname) >= (int)sizeof dir)
        return tl_seterr(err, errlen, "output folder: path too long");
    if (make_dir(dir, err, errlen)) return -1;
    for (int cl = 0; cl < w->K; cl++) {
        char folder[64];
        class_folder(cl, folder, sizeof folder);
        if (snprintf(path, sizeof path, "%s/%s", dir, folder) >= (int)sizeof path)
            return tl_seterr(err, errlen, "output folder: path too long");
        if (make_dir(path, err, errlen)) return -1;
    }
    if (snprintf(path, sizeof path, "%s/%s.tllm", out, sname) >= (int)sizeof path)
        return tl_seterr(err, errlen, "output folder: path too long");
    char sub[TL_ERR_LEN] = "";
    tl_labelmap_writer *wr = tl_labelmap_writer_new(path, w->K, w->k, w->m, w->m, sub, sizeof sub);
    if (!wr) return tl_seterr(err, errlen, "%s: %s", path, sub);
    for (int i = 0; i < count; i++) {
        tl_rng rng;
        tl_rng_derive(&rng, c->seed, TL_RNG_SYNTH, (uint64_t)split, (uint64_t)i);
        int label = render(w->S, w->K, i % w->K, &rng, w->rgb, w->cls_map, w->img, w->owner, w->tri, w->star);
        make_map(w->S, w->K, w->k, w->m, label, w->cls_map, w->counts, w->totals, w->values, w->indices);
        uint8_t *jpeg = NULL;
        size_t jlen = 0;
        if (tl_image_encode(w->rgb, w->S, w->S, SYNTH_JPEG_QUALITY, &jpeg, &jlen, sub, sizeof sub) != 0) {
            tl_labelmap_writer_abort(wr);
            return tl_seterr(err, errlen, "JPEG encoding failed: %s", sub);
        }
        char folder[64], key[96];
        class_folder(label, folder, sizeof folder);
        snprintf(key, sizeof key, "%s/%05d.jpg", folder, i);
        int rc = snprintf(path, sizeof path, "%s/%s", dir, key) >= (int)sizeof path
                     ? tl_seterr(err, errlen, "output folder: path too long")
                     : write_file(path, jpeg, jlen, err, errlen);
        free(jpeg);
        if (rc) {
            tl_labelmap_writer_abort(wr);
            return -1;
        }
        if (tl_labelmap_writer_add(wr, key, w->values, w->indices, sub, sizeof sub) != 0) {
            tl_labelmap_writer_abort(wr);
            return tl_seterr(err, errlen, "label map %s.tllm: %s", sname, sub);
        }
    }
    if (snprintf(path, sizeof path, "%s/%s.tllm", out, sname) >= (int)sizeof path)
        return tl_seterr(err, errlen, "output folder: path too long");
    if (tl_labelmap_writer_finish(wr, sub, sizeof sub) != 0) return tl_seterr(err, errlen, "%s: %s", path, sub);
    return 0;
}

int tl_synth_write(const char *out_dir, const tl_synth_cfg *c, char *err, size_t errlen) {
    if (!out_dir || !out_dir[0]) return tl_seterr(err, errlen, "output folder: required");
    if (!c) return tl_seterr(err, errlen, "config: required");
    if (strlen(out_dir) > PATH_MAX - 128) return tl_seterr(err, errlen, "output folder: path too long");
    if (validate(c, err, errlen)) return -1;
    work w;
    memset(&w, 0, sizeof w);
    shapes_init(w.tri, w.star);
    w.S = c->size;
    w.K = c->classes;
    w.k = w.K < 5 ? w.K : 5;
    w.m = c->map_size > 0 ? c->map_size : c->size / 4;
    const size_t npx = (size_t)w.S * w.S, cells = (size_t)w.m * w.m;
    w.img = malloc(npx * 3 * sizeof(double));
    w.owner = malloc(npx);
    w.cls_map = malloc(npx);
    w.rgb = malloc(npx * 3);
    w.counts = malloc(cells * (size_t)(w.K + 1) * sizeof(int));
    w.totals = malloc(cells * sizeof(int));
    w.values = malloc(cells * (size_t)w.k * sizeof(float));
    w.indices = malloc(cells * (size_t)w.k * sizeof(int32_t));
    int rc;
    if (!w.img || !w.owner || !w.cls_map || !w.rgb || !w.counts || !w.totals || !w.values || !w.indices)
        rc = tl_seterr(err, errlen, "out of memory");
    else
        rc = prepare_out(out_dir, err, errlen);
    /* README first: an interrupted run leaves a folder a new run may overwrite. */
    if (rc == 0) rc = write_readme(out_dir, c, w.m, err, errlen);
    if (rc == 0) rc = write_classes(out_dir, w.K, err, errlen);
    if (rc == 0) rc = write_split(out_dir, 0, c->train, c, &w, err, errlen);
    if (rc == 0) rc = write_split(out_dir, 1, c->val, c, &w, err, errlen);
    free(w.img);
    free(w.owner);
    free(w.cls_map);
    free(w.rgb);
    free(w.counts);
    free(w.totals);
    free(w.values);
    free(w.indices);
    return rc;
}
