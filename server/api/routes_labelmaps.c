/*
 * routes_labelmaps.c: label maps over HTTP (/api/v1/labelmaps...): the maps
 * found under the data root (from annotate jobs or imported), the keys of a
 * map, one image's map as token grids, the image itself and a heatmap
 * overlay rendered as JPEG, so that a user can see what a machine annotator
 * teaches each token of any image of an annotated dataset.
 *
 * Owns nothing long-lived: handlers run on libmicrohttpd's connection
 * threads; each opens the map (memory-mapped and validated by labelmap.c)
 * for the request. Paths come as query parameters relative to the data root
 * and must resolve inside it (realpath), as job specs' paths must.
 *
 * Which dataset a map belongs to: the dataset query parameter when given,
 * else the sidecar <map>.json that annotate jobs write ({"dataset": path
 * relative to the data root, ...}), else the folder of the same name without
 * .tllm (synth/train.tllm -> synth/train).
 */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenlab/data.h"
#include "api/heatmap.h"
#include "tokenlab/files.h"
#include "tokenlab/labelmap.h"
#include "api/handlers.h"
#include "api/routes.h"

#define LIST_MAX 256
#define SCAN_DEPTH 4
#define KEYS_MAX 1000
#define VIEW_MIN 224

/* ------------------------------------------------------------------ paths */

/* root/rel resolved into out when it stays inside the root (tl_path_confine: relative, no "..", canonical
 * path inside the root); 0 or -1. want_dir: 1 folder, 0 regular file. A query names something: "" and
 * paths over 2048 bytes are refused. */
static int resolve(const char *root, const char *rel, int want_dir, char *out) {
    if (!rel || !rel[0] || strlen(rel) > 2048) return -1;
    char rroot[PATH_MAX];
    if (!realpath(root, rroot)) return -1;
    return tl_path_confine(rroot, rel, want_dir ? TL_PATH_WANT_DIR : TL_PATH_WANT_FILE, out) == TL_PATH_OK ? 0 : -1;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* The dataset folder of a map (relative to the root) into ds; 0 or -1 when unknown. */
static int map_dataset(const char *root, const char *rel, const char *hint, char *ds, size_t len) {
    char abs[PATH_MAX];
    if (hint && hint[0]) {
        if (resolve(root, hint, 1, abs) != 0) return -1;
        snprintf(ds, len, "%s", hint);
        return 0;
    }
    char side[PATH_MAX * 2];
    snprintf(side, sizeof side, "%s/%s.json", root, rel);
    FILE *f = fopen(side, "rb");
    if (f) {
        char buf[8192];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        cJSON *o = cJSON_Parse(buf);
        cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "dataset");
        int ok = cJSON_IsString(d) && resolve(root, d->valuestring, 1, abs) == 0;
        if (ok) snprintf(ds, len, "%s", d->valuestring);
        cJSON_Delete(o);
        if (ok) return 0;
    }
    char stem[PATH_MAX];
    snprintf(stem, sizeof stem, "%.*s", (int)(strlen(rel) - 5), rel);
    if (resolve(root, stem, 1, abs) != 0) return -1;
    snprintf(ds, len, "%s", stem);
    return 0;
}

/* The map named by ?path=, opened; replies 400/404 and returns NULL otherwise. */
static tl_labelmap *open_map(tld_req *r, tld_routes *R, char *rel, size_t rlen) {
    const char *p = tld_req_query(r, "path");
    char abs[PATH_MAX], err[512];
    if (!p) {
        tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter path: required (a .tllm file under the data root)");
        return NULL;
    }
    if (!ends_with(p, ".tllm")) {
        tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter path: must name a .tllm file");
        return NULL;
    }
    if (resolve(R->data_root, p, 0, abs) != 0) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no label map %s under the data root", p);
        return NULL;
    }
    tl_labelmap *lm = tl_labelmap_open(abs, 0, err, sizeof err);
    if (!lm) {
        tld_reply_problem(r, 422, "INVALID_LABELMAP", NULL, "%s: %s", p, err);
        return NULL;
    }
    snprintf(rel, rlen, "%s", p);
    return lm;
}

/* Class names of a dataset (relative), as a cJSON array of K strings. */
static cJSON *class_names(const char *root, const char *ds_rel, int K) {
    cJSON *a = cJSON_CreateArray();
    char abs[PATH_MAX], err[512];
    tl_dataset *ds = ds_rel && resolve(root, ds_rel, 1, abs) == 0 ? tl_dataset_open(abs, err, sizeof err) : NULL;
    for (int c = 0; c < K; c++) {
        char fb[32];
        snprintf(fb, sizeof fb, "class %d", c);
        cJSON_AddItemToArray(a, cJSON_CreateString(ds && c < tl_dataset_num_classes(ds) ? tl_dataset_class_name(ds, c)
                                                                                            : fb));
    }
    tl_dataset_free(ds);
    return a;
}

/* ------------------------------------------------------------------ list */

typedef struct {
    tld_routes *R;
    cJSON *arr;
    int n, truncated;
    char root_real[PATH_MAX]; /* the data root, canonical: symbolic links are followed only inside it */
} scan_ctx;

static void scan(scan_ctx *c, const char *rel, int depth) {
    char abs[PATH_MAX * 2];
    snprintf(abs, sizeof abs, "%s%s%s", c->R->data_root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(abs);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "node_modules") == 0) continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name) >= (int)sizeof sub) continue;
        char full[PATH_MAX * 2];
        snprintf(full, sizeof full, "%s/%s", c->R->data_root, sub);
        struct stat st;
        if (lstat(full, &st) != 0) continue;
        if (S_ISLNK(st.st_mode)) { /* followed only when it stays inside the data root (tl_path_is_inside) */
            char real[PATH_MAX];
            if (!realpath(full, real) || !tl_path_is_inside(real, c->root_real) || stat(real, &st) != 0) continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (depth < SCAN_DEPTH) scan(c, sub, depth + 1);
            continue;
        }
        if (!S_ISREG(st.st_mode) || !ends_with(e->d_name, ".tllm")) continue;
        if (c->n >= LIST_MAX) {
            c->truncated = 1;
            continue;
        }
        char err[512], ds[PATH_MAX];
        tl_labelmap *lm = tl_labelmap_open(full, 0, err, sizeof err);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", sub);
        cJSON_AddNumberToObject(o, "bytes", (double)st.st_size);
        cJSON_AddNumberToObject(o, "modified_ms", (double)st.st_mtime * 1000.0);
        if (map_dataset(c->R->data_root, sub, NULL, ds, sizeof ds) == 0) cJSON_AddStringToObject(o, "dataset", ds);
        else cJSON_AddNullToObject(o, "dataset");
        if (lm) {
            cJSON_AddNumberToObject(o, "num_classes", tl_labelmap_num_classes(lm));
            cJSON_AddNumberToObject(o, "topk", tl_labelmap_topk(lm));
            cJSON_AddNumberToObject(o, "h", tl_labelmap_h(lm));
            cJSON_AddNumberToObject(o, "w", tl_labelmap_w(lm));
            cJSON_AddNumberToObject(o, "count", (double)tl_labelmap_count(lm));
            cJSON_AddNullToObject(o, "error");
            tl_labelmap_close(lm);
        } else {
            cJSON_AddStringToObject(o, "error", err);
        }
        cJSON_AddItemToArray(c->arr, o);
        c->n++;
    }
    closedir(d);
}

void tld_h_labelmap_list(tld_req *r, void *u) {
    tld_routes *R = u;
    cJSON *o = cJSON_CreateObject();
    scan_ctx c = {R, cJSON_AddArrayToObject(o, "labelmaps"), 0, 0, ""};
    if (realpath(R->data_root, c.root_real)) scan(&c, "", 0);
    cJSON_AddBoolToObject(o, "truncated", c.truncated);
    tld_routes_reply_cjson(r, 200, o);
}

/* ------------------------------------------------------------------ one map */

void tld_h_labelmap_keys(tld_req *r, void *u) {
    tld_routes *R = u;
    char rel[PATH_MAX];
    tl_labelmap *lm = open_map(r, R, rel, sizeof rel);
    if (!lm) return;
    const char *prefix = tld_req_query(r, "prefix"), *off = tld_req_query(r, "offset"), *lim = tld_req_query(r, "limit");
    long long offset = off ? atoll(off) : 0, limit = lim ? atoll(lim) : 100;
    if (offset < 0 || limit < 1 || limit > KEYS_MAX) {
        tl_labelmap_close(lm);
        tld_reply_problem(r, 400, "BAD_QUERY", NULL, "offset must be >= 0 and limit from 1 to %d", KEYS_MAX);
        return;
    }
    int64_t n = tl_labelmap_count(lm), seen = 0;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", rel);
    cJSON_AddNumberToObject(o, "count", (double)n);
    cJSON *keys = cJSON_AddArrayToObject(o, "keys");
    int64_t i = 0, added = 0;
    for (; i < n && added < limit; i++) {
        int64_t entry;
        const char *k = tl_labelmap_key(lm, i, &entry);
        if (!k || (prefix && strncmp(k, prefix, strlen(prefix)) != 0)) continue;
        if (seen++ < offset) continue;
        cJSON_AddItemToArray(keys, cJSON_CreateString(k));
        added++;
    }
    cJSON_AddBoolToObject(o, "more", i < n);
    tl_labelmap_close(lm);
    tld_routes_reply_cjson(r, 200, o);
}

/* The entry of ?key=; replies 400/404 and returns -1 otherwise. */
static int find_key(tld_req *r, tl_labelmap *lm, const char *rel, int64_t *e) {
    const char *key = tld_req_query(r, "key");
    if (!key) {
        tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter key: required (an image path in the map)");
        return -1;
    }
    *e = tl_labelmap_find(lm, key);
    if (*e < 0) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "%s has no entry %s", rel, key);
        return -1;
    }
    return 0;
}

/* Top-1 class per location and its probability as the trainer's targets give it: softmax over the K
 * classes with the stored top-k logits and 0 for the others. values/indices (k,h,w). */
static void top1(const float *values, const int32_t *indices, int k, int hw, int K, int32_t *idx, float *prob) {
    for (int p = 0; p < hw; p++) {
        float mx = 0.0f; /* the K-k absent classes have logit 0 */
        for (int j = 0; j < k; j++) mx = values[j * hw + p] > mx ? values[j * hw + p] : mx;
        double se = (double)(K - k) * exp(-(double)mx), best = -INFINITY;
        int bi = -1;
        for (int j = 0; j < k; j++) {
            double v = values[j * hw + p];
            se += exp(v - mx);
            if (v > best) best = v, bi = indices[j * hw + p];
        }
        idx[p] = bi;
        prob[p] = (float)(exp(best - mx) / se);
    }
}

void tld_h_labelmap_entry(tld_req *r, void *u) {
    tld_routes *R = u;
    char rel[PATH_MAX], err[512], ds[PATH_MAX];
    int64_t e;
    tl_labelmap *lm = open_map(r, R, rel, sizeof rel);
    if (!lm) return;
    if (find_key(r, lm, rel, &e) != 0) {
        tl_labelmap_close(lm);
        return;
    }
    int K = tl_labelmap_num_classes(lm), k = tl_labelmap_topk(lm), h = tl_labelmap_h(lm), w = tl_labelmap_w(lm);
    size_t n = (size_t)k * h * w;
    float *values = malloc(n * sizeof *values), *prob = malloc((size_t)h * w * sizeof *prob);
    int32_t *indices = malloc(n * sizeof *indices), *idx = malloc((size_t)h * w * sizeof *idx);
    if (!values || !indices || !prob || !idx || tl_labelmap_read(lm, e, values, indices, err, sizeof err) != 0) {
        tld_reply_problem(r, 422, "INVALID_LABELMAP", NULL, "%s: %s", rel, values && indices ? err : "out of memory");
        goto done;
    }
    top1(values, indices, k, h * w, K, idx, prob);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", rel);
    cJSON_AddStringToObject(o, "key", tld_req_query(r, "key"));
    int have_ds = map_dataset(R->data_root, rel, tld_req_query(r, "dataset"), ds, sizeof ds) == 0;
    if (have_ds) cJSON_AddStringToObject(o, "dataset", ds);
    else cJSON_AddNullToObject(o, "dataset");
    cJSON_AddNumberToObject(o, "num_classes", K);
    cJSON_AddNumberToObject(o, "topk", k);
    cJSON_AddNumberToObject(o, "h", h);
    cJSON_AddNumberToObject(o, "w", w);
    cJSON *cl = class_names(R->data_root, have_ds ? ds : NULL, K);
    cJSON_AddItemToObject(o, "classes", cl);
    cJSON *t = cJSON_AddObjectToObject(o, "top1");
    cJSON *ti = cJSON_AddArrayToObject(t, "index"), *ts = cJSON_AddArrayToObject(t, "score");
    for (int p = 0; p < h * w; p++) {
        cJSON_AddItemToArray(ti, cJSON_CreateNumber(idx[p]));
        cJSON_AddItemToArray(ts, cJSON_CreateNumber(round((double)prob[p] * 1e4) / 1e4));
    }
    cJSON *tk = cJSON_AddObjectToObject(o, "topk_logits");
    cJSON *ki = cJSON_AddArrayToObject(tk, "index"), *kv = cJSON_AddArrayToObject(tk, "logit");
    for (size_t i = 0; i < n; i++) {
        cJSON_AddItemToArray(ki, cJSON_CreateNumber(indices[i]));
        cJSON_AddItemToArray(kv, cJSON_CreateNumber(round((double)values[i] * 1e4) / 1e4));
    }
    tld_routes_reply_cjson(r, 200, o);
done:
    free(values);
    free(indices);
    free(prob);
    free(idx);
    tl_labelmap_close(lm);
}

/* The dataset image of ?key= decoded; replies and returns -1 otherwise. */
static int load_image(tld_req *r, tld_routes *R, const char *rel, tl_image *im, char *abs_out) {
    char ds[PATH_MAX], abs[PATH_MAX], joined[PATH_MAX * 2], err[512];
    if (map_dataset(R->data_root, rel, tld_req_query(r, "dataset"), ds, sizeof ds) != 0) {
        tld_reply_problem(r, 404, "NO_DATASET", NULL,
                         "the dataset of %s is unknown: give ?dataset= (its folder under the data root)", rel);
        return -1;
    }
    snprintf(joined, sizeof joined, "%s/%s", ds, tld_req_query(r, "key"));
    if (resolve(R->data_root, joined, 0, abs) != 0) {
        tld_reply_problem(r, 404, "NOT_FOUND", NULL, "image %s is not in %s", tld_req_query(r, "key"), ds);
        return -1;
    }
    if (abs_out) snprintf(abs_out, PATH_MAX, "%s", abs);
    if (im && tl_image_load(abs, 0, im, err, sizeof err) != 0) {
        tld_reply_problem(r, 422, "CORRUPT_IMAGE", NULL, "%s", err);
        return -1;
    }
    return 0;
}

void tld_h_labelmap_image(tld_req *r, void *u) {
    tld_routes *R = u;
    char rel[PATH_MAX], abs[PATH_MAX], err[512];
    int64_t e;
    tl_labelmap *lm = open_map(r, R, rel, sizeof rel);
    if (!lm) return;
    int found = find_key(r, lm, rel, &e) == 0;
    tl_labelmap_close(lm);
    if (!found) return;
    tl_image im;
    if (load_image(r, R, rel, &im, abs) != 0) return;
    uint8_t *jpeg = NULL;
    size_t len = 0;
    if (tl_image_encode(im.rgb, im.w, im.h, 90, &jpeg, &len, err, sizeof err) != 0)
        tld_reply_problem(r, 500, "INTERNAL", NULL, "%s", err);
    else
        tld_reply_bytes(r, 200, "image/jpeg", jpeg, len);
    free(jpeg);
    tl_image_free(&im);
}

/* Bilinear resize of the whole image to V x V (what the annotator saw, at display size). */
static void resize_full(const tl_image *im, int V, uint8_t *out) {
    for (int y = 0; y < V; y++) {
        float sy = ((float)y + 0.5f) * (float)im->h / (float)V - 0.5f;
        int y0 = (int)floorf(sy);
        float fy = sy - (float)y0;
        int ya = y0 < 0 ? 0 : y0, yb = y0 + 1 >= im->h ? im->h - 1 : y0 + 1;
        if (ya >= im->h) ya = im->h - 1;
        for (int x = 0; x < V; x++) {
            float sx = ((float)x + 0.5f) * (float)im->w / (float)V - 0.5f;
            int x0 = (int)floorf(sx);
            float fx = sx - (float)x0;
            int xa = x0 < 0 ? 0 : x0, xb = x0 + 1 >= im->w ? im->w - 1 : x0 + 1;
            if (xa >= im->w) xa = im->w - 1;
            for (int c = 0; c < 3; c++) {
                float a = im->rgb[((size_t)ya * im->w + xa) * 3 + c], b = im->rgb[((size_t)ya * im->w + xb) * 3 + c];
                float d = im->rgb[((size_t)yb * im->w + xa) * 3 + c], f = im->rgb[((size_t)yb * im->w + xb) * 3 + c];
                float v = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * d + fx * f);
                out[((size_t)y * V + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5f);
            }
        }
    }
}

void tld_h_labelmap_heatmap(tld_req *r, void *u) {
    tld_routes *R = u;
    char rel[PATH_MAX], err[512];
    int64_t e;
    tl_labelmap *lm = open_map(r, R, rel, sizeof rel);
    if (!lm) return;
    if (find_key(r, lm, rel, &e) != 0) {
        tl_labelmap_close(lm);
        return;
    }
    int K = tl_labelmap_num_classes(lm), k = tl_labelmap_topk(lm), h = tl_labelmap_h(lm), w = tl_labelmap_w(lm);
    if (h != w) {
        tl_labelmap_close(lm);
        tld_reply_problem(r, 422, "INVALID_LABELMAP", NULL, "%s: maps of %dx%d are not square; no overlay", rel, h, w);
        return;
    }
    size_t n = (size_t)k * h * w;
    int V = h * ((VIEW_MIN + h - 1) / h);
    float *values = malloc(n * sizeof *values), *prob = malloc((size_t)h * w * sizeof *prob);
    int32_t *indices = malloc(n * sizeof *indices), *idx = malloc((size_t)h * w * sizeof *idx);
    uint8_t *view = malloc((size_t)V * V * 3), *jpeg = NULL;
    tl_image im = {0};
    size_t len = 0;
    if (!values || !indices || !prob || !idx || !view || tl_labelmap_read(lm, e, values, indices, err, sizeof err)) {
        tld_reply_problem(r, 422, "INVALID_LABELMAP", NULL, "%s: %s", rel, values && indices ? err : "out of memory");
        goto done;
    }
    top1(values, indices, k, h * w, K, idx, prob);
    if (load_image(r, R, rel, &im, NULL) != 0) goto done;
    resize_full(&im, V, view);
    if (tld_heatmap_jpeg(view, V, h, idx, prob, &jpeg, &len, err, sizeof err) != 0) {
        tld_reply_problem(r, 500, "INTERNAL", NULL, "%s", err);
        goto done;
    }
    tld_reply_bytes(r, 200, "image/jpeg", jpeg, len);
done:
    free(values);
    free(indices);
    free(prob);
    free(idx);
    free(view);
    free(jpeg);
    tl_image_free(&im);
    tl_labelmap_close(lm);
}
