/*
 * kserve.c: the JSON side of the KServe / Triton v2 inference protocol (see
 * kserve.h).
 *
 * Owns nothing but what it returns: the request's pixel buffer (u8 or f32,
 * freed by tld_kserve_request_free) and the response string. No globals of its
 * own; any thread (cJSON keeps a global "last error" pointer, which we never
 * read: parse errors are located with cJSON_ParseWithLengthOpts instead).
 *
 * Parsing is strict and bounded:
 *   - before cJSON builds its tree, one pass over the text bounds the number
 *     of JSON values it would create (about 64 bytes each) to what a request
 *     of max_elems elements can need, so a huge "data" costs no memory;
 *   - unknown and duplicate fields are refused at every level we define;
 *   - the shape is checked (4 positive integer dimensions, channels 3, the
 *     product within max_elems, computed without overflow) before the buffer
 *     is allocated, then every element is checked (count, integer and range
 *     for UINT8, finite float for FP32) while it is copied.
 * Every error names the JSON pointer (RFC 6901) of the offending value.
 *
 * The response is built with cJSON (strings escaped by it, after invalid
 * UTF-8 is replaced by '?'); the FP32 scores are printed here, each with the
 * fewest digits (6..9) that read back as the same float, as a raw array.
 * Non-finite scores are written as 0: NaN/Inf never reach the JSON.
 */
#include "api/kserve.h"
#include "tokenlab/base.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KS_PTR_MAX 256

typedef struct {
    char ptr[KS_PTR_MAX];
    char msg[256];
} ks_err;

static int ks_fail(ks_err *e, const char *ptr, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ks_fail(ks_err *e, const char *ptr, const char *fmt, ...) {
    snprintf(e->ptr, sizeof e->ptr, "%s", ptr);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* Appends "/" + token (escaped per RFC 6901) to the pointer base into out. */
static void ptr_key(char *out, size_t cap, const char *base, const char *key) {
    size_t n = (size_t)snprintf(out, cap, "%s/", base);
    if (n >= cap) return; /* truncated; pointers here are short */
    for (const char *k = key; *k && n + 3 < cap; k++) {
        if (*k == '~') {
            out[n++] = '~';
            out[n++] = '0';
        } else if (*k == '/') {
            out[n++] = '~';
            out[n++] = '1';
        } else {
            out[n++] = *k;
        }
    }
    if (n < cap) out[n] = 0;
}

static void ptr_idx(char *out, size_t cap, const char *base, long i) {
    int n = snprintf(out, cap, "%s/%ld", base, i);
    if (n < 0 || (size_t)n >= cap) out[cap - 1] = 0; /* truncated; pointers here are short */
}

/* Collects the members of object o named in names[] into slots[]; unknown members are refused unless
 * allow_unknown, duplicates always. */
static int take_fields(const cJSON *o, const char *base, const char *const *names, int nnames, const cJSON **slots,
                       int allow_unknown, ks_err *e) {
    char p[KS_PTR_MAX];
    for (int i = 0; i < nnames; i++) slots[i] = NULL;
    for (const cJSON *c = o->child; c; c = c->next) {
        const char *k = c->string ? c->string : "";
        int found = -1;
        for (int i = 0; i < nnames; i++)
            if (strcmp(k, names[i]) == 0) found = i;
        ptr_key(p, sizeof p, base, k);
        if (found < 0) {
            if (allow_unknown) continue;
            return ks_fail(e, p, "unknown field");
        }
        if (slots[found]) return ks_fail(e, p, "duplicate field");
        slots[found] = c;
    }
    return 0;
}

/* A string no longer than cap - 1 bytes, copied into out. */
static int take_string(const cJSON *v, const char *ptr, char *out, size_t cap, int nonempty, ks_err *e) {
    if (!cJSON_IsString(v) || !v->valuestring) return ks_fail(e, ptr, "must be a string");
    size_t n = strlen(v->valuestring);
    if (n >= cap) return ks_fail(e, ptr, "must be at most %zu characters, got %zu", cap - 1, n);
    if (nonempty && n == 0) return ks_fail(e, ptr, "must not be empty");
    memcpy(out, v->valuestring, n + 1);
    return 0;
}

/* ---- data ---- */

typedef struct {
    tld_ks_layout layout;
    const int64_t *shape;
    size_t total, pos;
    uint8_t *u8;
    float *f32;
    ks_err *e;
} data_walk;

static int put_value(data_walk *w, const cJSON *v, const char *ptr) {
    if (!cJSON_IsNumber(v)) return ks_fail(w->e, ptr, "must be a number");
    double d = v->valuedouble;
    if (w->pos >= w->total) return ks_fail(w->e, ptr, "more elements than the shape needs");
    if (w->layout == TLD_KS_UINT8_NHWC) {
        if (!isfinite(d) || d < 0 || d > 255) return ks_fail(w->e, ptr, "value %.10g out of range for UINT8", d);
        if (d != floor(d)) return ks_fail(w->e, ptr, "value %.10g is not an integer (UINT8)", d);
        w->u8[w->pos++] = (uint8_t)d;
    } else {
        if (!isfinite(d) || fabs(d) > FLT_MAX)
            return ks_fail(w->e, ptr, "value %.10g is not a finite FP32 number", d);
        w->f32[w->pos++] = (float)d;
    }
    return 0;
}

/* Nested data: node at depth d must be an array of shape[d] items (d < 4), numbers at depth 4. */
static int walk_nested(data_walk *w, const cJSON *node, int d, const char *ptr) {
    if (d == 4) return put_value(w, node, ptr);
    if (!cJSON_IsArray(node)) return ks_fail(w->e, ptr, "must be an array of %lld items (nested to the shape)",
                                             (long long)w->shape[d]);
    int64_t cnt = 0;
    for (const cJSON *c = node->child; c && cnt <= w->shape[d]; c = c->next) cnt++;
    if (cnt != w->shape[d]) {
        if (cnt > w->shape[d])
            return ks_fail(w->e, ptr, "has more than %lld items, shape[%d] is %lld", (long long)w->shape[d], d,
                           (long long)w->shape[d]);
        return ks_fail(w->e, ptr, "has %lld items, shape[%d] is %lld", (long long)cnt, d, (long long)w->shape[d]);
    }
    char p[KS_PTR_MAX];
    long i = 0;
    for (const cJSON *c = node->child; c; c = c->next, i++) {
        ptr_idx(p, sizeof p, ptr, i);
        if (walk_nested(w, c, d + 1, p)) return -1;
    }
    return 0;
}

static int parse_data(data_walk *w, const cJSON *data, const char *ptr) {
    if (!cJSON_IsArray(data)) return ks_fail(w->e, ptr, "must be an array");
    if (data->child && cJSON_IsArray(data->child)) return walk_nested(w, data, 0, ptr);
    /* flat: count first so that the message says how many there are */
    size_t n = 0;
    for (const cJSON *c = data->child; c; c = c->next) n++;
    if (n != w->total) return ks_fail(w->e, ptr, "data has %zu elements, shape needs %zu", n, w->total);
    char p[KS_PTR_MAX];
    long i = 0;
    for (const cJSON *c = data->child; c; c = c->next, i++) {
        ptr_idx(p, sizeof p, ptr, i);
        if (put_value(w, c, p)) return -1;
    }
    return 0;
}

/* ---- request ---- */

static int parse_outputs(const cJSON *outs, tld_ks_request *out, ks_err *e) {
    if (!cJSON_IsArray(outs)) return ks_fail(e, "/outputs", "must be an array");
    int n = cJSON_GetArraySize(outs);
    if (n == 0) return 0;
    if (n > 1) return ks_fail(e, "/outputs", "at most one output is supported, got %d", n);
    const cJSON *o = outs->child;
    if (!cJSON_IsObject(o)) return ks_fail(e, "/outputs/0", "must be an object");
    static const char *const names[] = {"name", "parameters"};
    const cJSON *f[2];
    if (take_fields(o, "/outputs/0", names, 2, f, 0, e)) return -1;
    if (!f[0]) return ks_fail(e, "/outputs/0/name", "is required");
    if (take_string(f[0], "/outputs/0/name", out->output_name, sizeof out->output_name, 1, e)) return -1;
    if (f[1]) {
        if (!cJSON_IsObject(f[1])) return ks_fail(e, "/outputs/0/parameters", "must be an object");
        static const char *const pn[] = {"classification", "binary_data"};
        const cJSON *pf[2];
        if (take_fields(f[1], "/outputs/0/parameters", pn, 2, pf, 1, e)) return -1;
        if (pf[0]) {
            const char *p = "/outputs/0/parameters/classification";
            if (!cJSON_IsNumber(pf[0])) return ks_fail(e, p, "must be an integer >= 1");
            double d = pf[0]->valuedouble;
            if (!isfinite(d) || d != floor(d) || d < 1) return ks_fail(e, p, "must be an integer >= 1, got %.10g", d);
            if (d > INT_MAX) return ks_fail(e, p, "must be at most %d, got %.10g", INT_MAX, d);
            out->classification = (int)d;
        }
        if (pf[1]) {
            const char *p = "/outputs/0/parameters/binary_data";
            if (!cJSON_IsBool(pf[1])) return ks_fail(e, p, "must be a boolean");
            if (cJSON_IsTrue(pf[1])) return ks_fail(e, p, "binary data outputs are not supported; must be false");
        }
    }
    return 0;
}

static int parse_shape(const cJSON *s, tld_ks_layout layout, size_t max_elems, int64_t shape[4], size_t *total,
                       ks_err *e) {
    const char *base = "/inputs/0/shape";
    if (!cJSON_IsArray(s)) return ks_fail(e, base, "must be an array of 4 integers");
    int n = cJSON_GetArraySize(s);
    if (n != 4) return ks_fail(e, base, "must have 4 dimensions, got %d", n);
    char p[KS_PTR_MAX];
    int i = 0;
    for (const cJSON *c = s->child; c; c = c->next, i++) {
        ptr_idx(p, sizeof p, base, i);
        if (!cJSON_IsNumber(c)) return ks_fail(e, p, "must be a positive integer");
        double d = c->valuedouble;
        if (!isfinite(d) || d != floor(d) || d < 1) return ks_fail(e, p, "must be a positive integer, got %.10g", d);
        if (d > INT_MAX) return ks_fail(e, p, "must be at most %d, got %.10g", INT_MAX, d);
        shape[i] = (int64_t)d;
    }
    if (layout == TLD_KS_UINT8_NHWC && shape[3] != 3)
        return ks_fail(e, "/inputs/0/shape/3", "must be 3 (RGB channels of [N,H,W,3] UINT8), got %lld",
                       (long long)shape[3]);
    if (layout == TLD_KS_FP32_NCHW && shape[1] != 3)
        return ks_fail(e, "/inputs/0/shape/1", "must be 3 (RGB channels of [N,3,S,S] FP32), got %lld",
                       (long long)shape[1]);
    uint64_t prod = 1;
    for (i = 0; i < 4; i++) {
        if ((uint64_t)shape[i] > (uint64_t)max_elems / prod)
            return ks_fail(e, base, "shape has more than %zu elements", max_elems);
        prod *= (uint64_t)shape[i];
    }
    *total = (size_t)prod;
    return 0;
}

static int parse_input(const cJSON *ins, size_t max_elems, tld_ks_request *out, ks_err *e) {
    if (!cJSON_IsArray(ins)) return ks_fail(e, "/inputs", "must be an array with one input");
    int n = cJSON_GetArraySize(ins);
    if (n != 1) return ks_fail(e, "/inputs", "must have exactly one input, got %d", n);
    const cJSON *in = ins->child;
    if (!cJSON_IsObject(in)) return ks_fail(e, "/inputs/0", "must be an object");
    static const char *const names[] = {"name", "shape", "datatype", "parameters", "data"};
    const cJSON *f[5];
    if (take_fields(in, "/inputs/0", names, 5, f, 0, e)) return -1;
    if (!f[0]) return ks_fail(e, "/inputs/0/name", "is required");
    if (take_string(f[0], "/inputs/0/name", out->input_name, sizeof out->input_name, 1, e)) return -1;
    if (!f[2]) return ks_fail(e, "/inputs/0/datatype", "is required");
    if (!cJSON_IsString(f[2]) || !f[2]->valuestring) return ks_fail(e, "/inputs/0/datatype", "must be a string");
    if (strcmp(f[2]->valuestring, "UINT8") == 0) out->layout = TLD_KS_UINT8_NHWC;
    else if (strcmp(f[2]->valuestring, "FP32") == 0) out->layout = TLD_KS_FP32_NCHW;
    else return ks_fail(e, "/inputs/0/datatype", "datatype must be UINT8 or FP32, got \"%.32s\"", f[2]->valuestring);
    if (f[3]) {
        if (!cJSON_IsObject(f[3])) return ks_fail(e, "/inputs/0/parameters", "must be an object");
        static const char *const pn[] = {"binary_data_size"};
        const cJSON *b;
        if (take_fields(f[3], "/inputs/0/parameters", pn, 1, &b, 1, e)) return -1;
        if (b)
            return ks_fail(e, "/inputs/0/parameters/binary_data_size", "binary tensor data is not supported");
    }
    if (!f[1]) return ks_fail(e, "/inputs/0/shape", "is required");
    int64_t shape[4];
    size_t total = 0;
    if (parse_shape(f[1], out->layout, max_elems, shape, &total, e)) return -1;
    if (!f[4]) return ks_fail(e, "/inputs/0/data", "is required");
    data_walk w = {out->layout, shape, total, 0, NULL, NULL, e};
    if (out->layout == TLD_KS_UINT8_NHWC) {
        w.u8 = malloc(total ? total : 1);
        if (!w.u8) return ks_fail(e, "/inputs/0/data", "out of memory for %zu elements", total);
    } else {
        if (total > SIZE_MAX / sizeof(float)) return ks_fail(e, "/inputs/0/shape", "too many elements");
        w.f32 = malloc(total * sizeof(float));
        if (!w.f32) return ks_fail(e, "/inputs/0/data", "out of memory for %zu elements", total);
    }
    /* owned by out from here: freed by the caller's cleanup on any error */
    out->u8 = w.u8;
    out->f32 = w.f32;
    if (parse_data(&w, f[4], "/inputs/0/data")) return -1;
    out->n = (int)shape[0];
    if (out->layout == TLD_KS_UINT8_NHWC) {
        out->h = (int)shape[1];
        out->w = (int)shape[2];
    } else {
        out->h = (int)shape[2];
        out->w = (int)shape[3];
    }
    return 0;
}

int tld_kserve_parse(const char *json, size_t len, size_t max_elems, tld_ks_request *out, char *pointer,
                    size_t pointer_len, char *err, size_t errlen) {
    ks_err e;
    memset(&e, 0, sizeof e);
    cJSON *root = NULL;
    if (out) memset(out, 0, sizeof *out);
    if (!out || (!json && len)) {
        ks_fail(&e, "", "no request");
        goto fail;
    }
    if (!json) json = "";
    /* A request of max_elems elements, nested to the deepest shape ([N,3,1,1]), needs at most about
     * 3.4 values per element; the rest of the request adds a few. */
    size_t budget = max_elems > (SIZE_MAX - 4096) / 4 ? SIZE_MAX : max_elems * 4 + 4096;
    size_t nvalues = tl_json_count_values(json, len);
    if (nvalues > budget) {
        ks_fail(&e, "", "request has about %zu JSON values, more than %zu elements allow", nvalues, max_elems);
        goto fail;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;
        ks_fail(&e, "", "invalid JSON near byte %zu", at);
        goto fail;
    }
    /* only whitespace may follow the value */
    for (const char *q = end; q && q < json + len; q++)
        if (*q != ' ' && *q != '\t' && *q != '\r' && *q != '\n' && *q != 0) {
            ks_fail(&e, "", "invalid JSON: text after the request object at byte %zu", (size_t)(q - json));
            goto fail;
        }
    if (!cJSON_IsObject(root)) {
        ks_fail(&e, "", "must be a JSON object");
        goto fail;
    }
    static const char *const names[] = {"id", "parameters", "inputs", "outputs"};
    const cJSON *f[4];
    if (take_fields(root, "", names, 4, f, 0, &e)) goto fail;
    if (f[0] && take_string(f[0], "/id", out->id, sizeof out->id, 0, &e)) goto fail;
    if (f[1]) {
        if (!cJSON_IsObject(f[1])) {
            ks_fail(&e, "/parameters", "must be an object");
            goto fail;
        }
        static const char *const pn[] = {"binary_data_output"};
        const cJSON *b;
        if (take_fields(f[1], "/parameters", pn, 1, &b, 1, &e)) goto fail;
        if (b && !cJSON_IsBool(b)) {
            ks_fail(&e, "/parameters/binary_data_output", "must be a boolean");
            goto fail;
        }
        if (b && cJSON_IsTrue(b)) {
            ks_fail(&e, "/parameters/binary_data_output", "binary data outputs are not supported; must be false");
            goto fail;
        }
    }
    if (!f[2]) {
        ks_fail(&e, "/inputs", "is required");
        goto fail;
    }
    if (parse_input(f[2], max_elems, out, &e)) goto fail;
    if (f[3] && parse_outputs(f[3], out, &e)) goto fail;
    cJSON_Delete(root);
    if (pointer && pointer_len) pointer[0] = 0;
    if (err && errlen) err[0] = 0;
    return 0;
fail:
    cJSON_Delete(root);
    if (out) {
        tld_kserve_request_free(out);
        memset(out, 0, sizeof *out);
    }
    if (pointer && pointer_len) snprintf(pointer, pointer_len, "%s", e.ptr);
    if (err && errlen) snprintf(err, errlen, "%s", e.msg);
    return -1;
}

void tld_kserve_request_free(tld_ks_request *r) {
    if (!r) return;
    free(r->u8);
    free(r->f32);
    r->u8 = NULL;
    r->f32 = NULL;
}

/* ---- response ---- */

/* A copy of s with invalid UTF-8 replaced by '?' (so the JSON we print is valid UTF-8). */
static char *utf8_clean(const char *s) {
    if (!s) s = "";
    size_t n = strlen(s);
    char *o = malloc(n + 1);
    if (!o) return NULL;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, j = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k = 0;
        unsigned min = 0, cp = 0;
        if (c < 0x80) {
            o[j++] = (char)c;
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, cp = c & 0x07;
        } else {
            o[j++] = '?';
            i++;
            continue;
        }
        int ok = 1;
        for (size_t t = 1; ok && t <= k; t++) {
            if (i + t >= n || (p[i + t] & 0xC0) != 0x80) ok = 0;
            else cp = (cp << 6) | (p[i + t] & 0x3F);
        }
        if (ok && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = 0;
        if (!ok) {
            o[j++] = '?';
            i++;
            continue;
        }
        memcpy(o + j, p + i, k + 1);
        j += k + 1;
        i += k + 1;
    }
    o[j] = 0;
    return o;
}

/* The shortest of %.6g .. %.9g that reads back as v; "0" for NaN/Inf. Returns the length (< 24). */
static int fmt_float(char *buf, size_t cap, float v) {
    if (!isfinite(v)) return snprintf(buf, cap, "0");
    int n = 0;
    for (int prec = 6; prec <= 9; prec++) {
        n = snprintf(buf, cap, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return n;
}

typedef struct {
    double p;
    int i;
} ranked;

static int ranked_cmp(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->p > y->p) return -1;
    if (x->p < y->p) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Softmax of one row, stably: NaN counts as -inf; +inf scores share all the probability; a row with
 * no finite or +inf score is uniform. */
static void softmax_row(const float *s, int K, ranked *r) {
    double m = -INFINITY;
    int ninf = 0;
    for (int k = 0; k < K; k++) {
        double v = isnan(s[k]) ? -INFINITY : (double)s[k];
        if (v == INFINITY) ninf++;
        if (v > m) m = v;
    }
    for (int k = 0; k < K; k++) r[k].i = k;
    if (ninf) {
        for (int k = 0; k < K; k++) r[k].p = s[k] == INFINITY ? 1.0 / ninf : 0.0;
        return;
    }
    if (m == -INFINITY) {
        for (int k = 0; k < K; k++) r[k].p = 1.0 / K;
        return;
    }
    double sum = 0;
    for (int k = 0; k < K; k++) {
        double v = isnan(s[k]) ? -INFINITY : (double)s[k];
        r[k].p = exp(v - m);
        sum += r[k].p;
    }
    for (int k = 0; k < K; k++) r[k].p /= sum; /* sum >= 1: the maximum contributes exp(0) */
}

char *tld_kserve_response(const char *model, const char *id, int n, int K, const float *scores,
                         const char *const *labels, int classification, const char *out_name) {
    cJSON *root = NULL;
    char *raw = NULL, *tmp = NULL, *str = NULL, *result = NULL;
    ranked *rk = NULL;
    if (n < 0 || K < 1 || classification < 0 || (n > 0 && !scores)) goto fail;
    if ((size_t)n > SIZE_MAX / 32 / (size_t)K) goto fail;
    int k_out = classification > K ? K : classification;
    root = cJSON_CreateObject();
    if (!root) goto fail;
    if (!(tmp = utf8_clean(model))) goto fail;
    if (!cJSON_AddStringToObject(root, "model_name", tmp)) goto fail;
    free(tmp);
    tmp = NULL;
    if (!cJSON_AddStringToObject(root, "model_version", "1")) goto fail;
    if (id && *id) {
        if (!(tmp = utf8_clean(id))) goto fail;
        if (!cJSON_AddStringToObject(root, "id", tmp)) goto fail;
        free(tmp);
        tmp = NULL;
    }
    cJSON *outs = cJSON_AddArrayToObject(root, "outputs");
    if (!outs) goto fail;
    cJSON *o = cJSON_CreateObject();
    if (!o) goto fail;
    cJSON_AddItemToArray(outs, o);
    if (!(tmp = utf8_clean(out_name && *out_name ? out_name : "scores"))) goto fail;
    if (!cJSON_AddStringToObject(o, "name", tmp)) goto fail;
    free(tmp);
    tmp = NULL;
    if (!cJSON_AddStringToObject(o, "datatype", classification ? "BYTES" : "FP32")) goto fail;
    int shape[2] = {n, classification ? k_out : K};
    cJSON *sh = cJSON_CreateIntArray(shape, 2);
    if (!sh) goto fail;
    cJSON_AddItemToObject(o, "shape", sh);
    if (!classification) {
        size_t cnt = (size_t)n * (size_t)K, cap = cnt * 25 + 3, used = 0;
        raw = malloc(cap);
        if (!raw) goto fail;
        raw[used++] = '[';
        for (size_t i = 0; i < cnt; i++) {
            if (i) raw[used++] = ',';
            used += (size_t)fmt_float(raw + used, cap - used, scores[i]);
        }
        raw[used++] = ']';
        raw[used] = 0;
        if (!cJSON_AddRawToObject(o, "data", raw)) goto fail;
    } else {
        cJSON *data = cJSON_AddArrayToObject(o, "data");
        if (!data) goto fail;
        rk = malloc(sizeof *rk * (size_t)K);
        if (!rk) goto fail;
        for (int b = 0; b < n; b++) {
            softmax_row(scores + (size_t)b * (size_t)K, K, rk);
            qsort(rk, (size_t)K, sizeof *rk, ranked_cmp);
            for (int j = 0; j < k_out; j++) {
                int idx = rk[j].i;
                char ibuf[16];
                snprintf(ibuf, sizeof ibuf, "%d", idx);
                if (!(tmp = utf8_clean(labels && labels[idx] ? labels[idx] : ibuf))) goto fail;
                size_t sl = strlen(tmp) + 48;
                if (!(str = malloc(sl))) goto fail;
                snprintf(str, sl, "%.6f:%d:%s", rk[j].p, idx, tmp);
                cJSON *item = cJSON_CreateString(str);
                if (!item) goto fail;
                cJSON_AddItemToArray(data, item);
                free(tmp);
                free(str);
                tmp = str = NULL;
            }
        }
    }
    result = cJSON_PrintUnformatted(root);
fail:
    cJSON_Delete(root);
    free(raw);
    free(tmp);
    free(str);
    free(rk);
    return result;
}
