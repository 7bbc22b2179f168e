/*
 * routes_models.c: the model routes of the REST API (/api/v1/models...) and
 * the KServe / Triton v2 inference protocol (/v2/...).
 *
 * Owns nothing long-lived: handlers run on libmicrohttpd's connection
 * threads. A predict request is decoded and transformed on its own
 * connection thread (so decoding runs in parallel across clients), then
 * queued to the model's batcher (serving/batcher.c) and answered when its batch is
 * done. Every refusal is problem+json with a stable code: bad input gets a
 * 4xx in the time it takes to read the JPEG header, and never reaches a
 * model.
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <microhttpd.h>

#include "tokenlab/data.h"
#include "api/kserve.h"
#include "serving/models.h"
#include "http/multipart.h"
#include "api/handlers.h"
#include "api/routes.h"
#include "tokenlab/model.h"
#include "tokenlab/base.h"

#define PREDICT_MAX_IMAGES 64            /* images of one multipart request */
#define PREDICT_TIMEOUT_MS 30000         /* default deadline, queue included */
#define PREDICT_TIMEOUT_MAX_MS 600000
#define KSERVE_MAX_ELEMS ((size_t)64 << 20)

/* ------------------------------------------------------------------ a small JSON writer */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sb;

static void sb_grow(sb *b, size_t more) {
    if (b->oom || b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1) cap *= 2;
    char *g = realloc(b->buf, cap);
    if (!g) {
        b->oom = 1;
        return;
    }
    b->buf = g;
    b->cap = cap;
}

static void sb_printf(sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    sb_grow(b, (size_t)n);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void sb_str(sb *b, const char *s) {
    sb_grow(b, strlen(s) * 6 + 2);
    if (b->oom) return;
    char *o = b->buf + b->len;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (*p < 0x20) {
            o += sprintf(o, "\\u%04x", *p);
        } else {
            *o++ = (char)*p;
        }
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->buf);
}

/* A probability for JSON (finite by construction; NaN-safe anyway). */
static double jprob(float p) { return isfinite(p) ? (double)p : 0.0; }

/* ------------------------------------------------------------------ helpers */

static void reply_models_error(tld_req *r, const tld_models_error *e) {
    if (e->status == 429) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", e->retry_after_s > 0 ? e->retry_after_s : 1);
        tld_reply_header(r, "Retry-After", ra);
    }
    tld_reply_problem(r, e->status ? e->status : 500, e->code[0] ? e->code : "INTERNAL", e->pointer[0] ? e->pointer : NULL,
                     "%s", e->detail);
}

static int parse_int(const char *s, long long lo, long long hi, long long *out) {
    int64_t v;
    if (tld_routes_parse_i64(s, lo, hi, &v) != 0) return -1;
    *out = v;
    return 0;
}

static int query_int(tld_req *r, const char *name, long long lo, long long hi, long long dflt, long long *out) {
    const char *v = tld_req_query(r, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (parse_int(v, lo, hi, out) == 0) return 0;
    tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter %s: must be an integer in %lld..%lld", name, lo, hi);
    return -1;
}

static int query_bool(tld_req *r, const char *name, int dflt, int *out) {
    const char *v = tld_req_query(r, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (!strcmp(v, "true") || !strcmp(v, "1")) *out = 1;
    else if (!strcmp(v, "false") || !strcmp(v, "0")) *out = 0;
    else {
        tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter %s: must be true or false", name);
        return -1;
    }
    return 0;
}

/* The media type of the request without parameters, lower-cased, into buf. */
static void media_type(tld_req *r, char *buf, size_t len) {
    const char *ct = tld_req_header(r, "Content-Type");
    size_t n = 0;
    for (; ct && ct[n] && ct[n] != ';' && n + 1 < len; n++)
        buf[n] = (char)(ct[n] >= 'A' && ct[n] <= 'Z' ? ct[n] + 32 : ct[n]);
    while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t')) n--;
    buf[n] = '\0';
}

/* ------------------------------------------------------------------ model registry routes */

void tld_h_model_list(tld_req *r, void *u) {
    tld_routes *R = u;
    tld_models_error e;
    char *s = tld_models_list_json(R->models, &e);
    if (!s) return reply_models_error(r, &e);
    tld_reply_json(r, 200, s);
    free(s);
}

/* One model as JSON with its lineage (lineage.c), replied with status. */
static void reply_model(tld_req *r, tld_routes *R, const char *name, int status) {
    tld_models_error e;
    char *s = tld_models_json(R->models, name, &e);
    if (!s) return reply_models_error(r, &e);
    cJSON *o = cJSON_Parse(s);
    free(s);
    if (o) cJSON_AddItemToObject(o, "lineage", tld_lineage_model(R->store, name));
    char loc[160];
    snprintf(loc, sizeof loc, "/api/v1/models/%s", name);
    if (status == 201) tld_reply_header(r, "Location", loc);
    tld_routes_reply_cjson(r, status, o);
}

void tld_h_model_get(tld_req *r, void *u) {
    reply_model(r, u, tld_req_param(r, "name"), 200);
}

/* An optional integer member of a JSON object: 0 absent, 1 found (in *out), -1 replied 422. */
static int json_int(tld_req *r, cJSON *o, const char *key, long long lo, long long hi, long long *out) {
    cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it) return 0;
    double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!cJSON_IsNumber(it) || v != floor(v) || v < (double)lo || v > (double)hi) {
        char p[64];
        snprintf(p, sizeof p, "/%s", key);
        tld_reply_problem(r, 422, "INVALID_FIELD", p, "must be an integer from %lld to %lld", lo, hi);
        return -1;
    }
    *out = (long long)v;
    return 1;
}

/* The request body as a JSON object; replies 400/415 and returns NULL otherwise. */
static cJSON *json_body(tld_req *r) {
    char mt[64];
    media_type(r, mt, sizeof mt);
    if (strcmp(mt, "application/json") != 0) {
        tld_reply_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL, "send application/json");
        return NULL;
    }
    size_t len;
    const char *body = tld_req_body(r, &len);
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        tld_reply_problem(r, 400, "BAD_JSON", NULL, "the body is not a JSON object");
        return NULL;
    }
    return o;
}

static int only_keys(tld_req *r, cJSON *o, const char *const *keys) {
    for (cJSON *it = o->child; it; it = it->next) {
        int ok = 0;
        for (int i = 0; keys[i] && !ok; i++) ok = strcmp(it->string, keys[i]) == 0;
        if (!ok) {
            char p[160];
            snprintf(p, sizeof p, "/%.150s", it->string);
            tld_reply_problem(r, 422, "UNKNOWN_FIELD", p, "unknown field");
            return -1;
        }
    }
    return 0;
}

void tld_h_model_register(tld_req *r, void *u) {
    tld_routes *R = u;
    cJSON *o = json_body(r);
    if (!o) return;
    static const char *const keys[] = {"name", "job_id", "checkpoint", "ema", "max_batch", "max_delay_ms",
                                       "max_queue", NULL};
    tld_register_req q = {.ema = -1, .max_delay_ms = -1};
    char ckpt[32] = "best";
    long long v;
    if (only_keys(r, o, keys) != 0) goto done;
    cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    if (!cJSON_IsString(name)) {
        tld_reply_problem(r, 422, "INVALID_FIELD", "/name", name ? "must be a string" : "required");
        goto done;
    }
    q.name = name->valuestring;
    if (!cJSON_GetObjectItemCaseSensitive(o, "job_id")) {
        tld_reply_problem(r, 422, "INVALID_FIELD", "/job_id", "required");
        goto done;
    }
    if (json_int(r, o, "job_id", 1, INT64_MAX / 2, &v) < 0) goto done;
    q.job_id = v;
    cJSON *ck = cJSON_GetObjectItemCaseSensitive(o, "checkpoint");
    if (ck) {
        if (cJSON_IsString(ck) && (!strcmp(ck->valuestring, "best") || !strcmp(ck->valuestring, "last"))) {
            snprintf(ckpt, sizeof ckpt, "%s", ck->valuestring);
        } else if (cJSON_IsNumber(ck) && ck->valuedouble >= 0 && ck->valuedouble == floor(ck->valuedouble) &&
                   ck->valuedouble < 9e15) {
            snprintf(ckpt, sizeof ckpt, "%lld", (long long)ck->valuedouble);
        } else {
            tld_reply_problem(r, 422, "INVALID_FIELD", "/checkpoint", "must be \"best\", \"last\" or a step number");
            goto done;
        }
    }
    q.checkpoint = ckpt;
    cJSON *ema = cJSON_GetObjectItemCaseSensitive(o, "ema");
    if (ema) {
        if (!cJSON_IsBool(ema)) {
            tld_reply_problem(r, 422, "INVALID_FIELD", "/ema", "must be true or false");
            goto done;
        }
        q.ema = cJSON_IsTrue(ema);
    }
    if (json_int(r, o, "max_batch", 1, 64, &v) < 0) goto done;
    if (cJSON_GetObjectItemCaseSensitive(o, "max_batch")) q.max_batch = (int)v;
    if (json_int(r, o, "max_delay_ms", 0, 1000, &v) < 0) goto done;
    if (cJSON_GetObjectItemCaseSensitive(o, "max_delay_ms")) q.max_delay_ms = (int)v;
    if (json_int(r, o, "max_queue", 1, 4096, &v) < 0) goto done;
    if (cJSON_GetObjectItemCaseSensitive(o, "max_queue")) q.max_queue = (int)v;
    tld_models_error e;
    if (tld_models_register_job(R->models, &q, &e) != 0) {
        reply_models_error(r, &e);
        goto done;
    }
    reply_model(r, R, q.name, 201);
done:
    cJSON_Delete(o);
}

void tld_h_model_put(tld_req *r, void *u) {
    tld_routes *R = u;
    char mt[64];
    media_type(r, mt, sizeof mt);
    if (strcmp(mt, "application/octet-stream") != 0 && strcmp(mt, "application/vnd.safetensors") != 0) {
        tld_reply_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL,
                         "send the safetensors file as application/octet-stream");
        return;
    }
    long long mb, md, mq;
    if (query_int(r, "max_batch", 1, 64, 0, &mb) || query_int(r, "max_delay_ms", 0, 1000, -1, &md) ||
        query_int(r, "max_queue", 1, 4096, 0, &mq))
        return;
    size_t len;
    const char *body = tld_req_body(r, &len);
    int created = 0;
    tld_models_error e;
    const char *name = tld_req_param(r, "name");
    if (tld_models_upload(R->models, name, body, len, (int)mb, (int)md, (int)mq, &created, &e) != 0)
        return reply_models_error(r, &e);
    reply_model(r, R, name, created ? 201 : 200);
}

void tld_h_model_patch(tld_req *r, void *u) {
    tld_routes *R = u;
    cJSON *o = json_body(r);
    if (!o) return;
    static const char *const keys[] = {"labels", "max_batch", "max_delay_ms", "max_queue", NULL};
    long long mb = -1, md = -1, mq = -1;
    char *labels = NULL;
    if (only_keys(r, o, keys) != 0 || json_int(r, o, "max_batch", 1, 64, &mb) < 0 ||
        json_int(r, o, "max_delay_ms", 0, 1000, &md) < 0 || json_int(r, o, "max_queue", 1, 4096, &mq) < 0)
        goto done;
    cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "labels");
    if (l) {
        labels = cJSON_PrintUnformatted(l);
        if (!labels) {
            tld_reply_problem(r, 500, "INTERNAL", NULL, "out of memory");
            goto done;
        }
    }
    tld_models_error e;
    const char *name = tld_req_param(r, "name");
    if (tld_models_update(R->models, name, labels, (int)mb, (int)md, (int)mq, &e) != 0) {
        reply_models_error(r, &e);
        goto done;
    }
    reply_model(r, R, name, 200);
done:
    free(labels);
    cJSON_Delete(o);
}

void tld_h_model_delete(tld_req *r, void *u) {
    tld_routes *R = u;
    tld_models_error e;
    if (tld_models_delete(R->models, tld_req_param(r, "name"), &e) != 0) return reply_models_error(r, &e);
    tld_reply_bytes(r, 204, "application/json", "", 0);
}

/* ------------------------------------------------------------------ predict */

typedef struct {
    char filename[256];
    int ok;                    /* decoded and queued */
    tld_models_error err;       /* when !ok */
    double decode_ms;
    tld_infer_out out;
} image_job;

/* Decodes one JPEG and applies the model's evaluation transform into dst (3,S,S). */
static int prepare(tld_model_ref *m, const uint8_t *jpeg, size_t len, float *dst, tld_models_error *e) {
    int S = tld_model_ref_size(m);
    float crop = tld_model_ref_crop_pct(m);
    tl_image im;
    tl_image_status st;
    char err[TL_ERR_LEN];
    int min_short = (int)ceil((double)S / (double)crop);
    if (tl_image_decode(jpeg, len, min_short, &im, &st, err, sizeof err) != 0) {
        e->retry_after_s = 0;
        e->pointer[0] = '\0';
        snprintf(e->detail, sizeof e->detail, "%s", err);
        switch (st) {
        case TL_IMG_EMPTY: e->status = 400, snprintf(e->code, sizeof e->code, "EMPTY_BODY"); break;
        case TL_IMG_NOT_JPEG: e->status = 400, snprintf(e->code, sizeof e->code, "NOT_A_JPEG"); break;
        case TL_IMG_TOO_LARGE: e->status = 413, snprintf(e->code, sizeof e->code, "IMAGE_TOO_LARGE"); break;
        case TL_IMG_UNSUPPORTED: e->status = 415, snprintf(e->code, sizeof e->code, "UNSUPPORTED_IMAGE"); break;
        case TL_IMG_NO_MEMORY: e->status = 503, snprintf(e->code, sizeof e->code, "OUT_OF_MEMORY"); break;
        default: e->status = 400, snprintf(e->code, sizeof e->code, "CORRUPT_IMAGE"); break;
        }
        return -1;
    }
    tl_transform_eval(&im, S, crop, dst, NULL);
    tl_image_free(&im);
    return 0;
}

static void write_result(sb *b, tld_model_ref *m, const image_job *j, int top_k, int tokens) {
    int K = tld_model_ref_classes(m), g = tld_model_ref_grid(m);
    int idx[64];
    int k = top_k < K ? top_k : K;
    /* top-k by selection (k <= 64) */
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int c = 0; c < K; c++) {
            int used = 0;
            for (int t = 0; t < i && !used; t++) used = idx[t] == c;
            if (!used && (best < 0 || j->out.probs[c] > j->out.probs[best])) best = c;
        }
        idx[i] = best;
    }
    sb_printf(b, "\"predictions\":[");
    for (int i = 0; i < k; i++) {
        sb_printf(b, "%s{\"index\":%d,\"label\":", i ? "," : "", idx[i]);
        sb_str(b, tld_model_ref_label(m, idx[i]));
        sb_printf(b, ",\"score\":%.6g}", jprob(j->out.probs[idx[i]]));
    }
    sb_printf(b, "]");
    if (tokens) {
        sb_printf(b, ",\"tokens\":{\"grid\":%d,\"index\":[", g);
        for (int t = 0; t < g * g; t++) sb_printf(b, "%s%d", t ? "," : "", j->out.tok_index[t]);
        sb_printf(b, "],\"score\":[");
        for (int t = 0; t < g * g; t++) sb_printf(b, "%s%.4g", t ? "," : "", jprob(j->out.tok_prob[t]));
        sb_printf(b, "]}");
    }
    sb_printf(b, ",\"timing_ms\":{\"decode\":%.3f,\"queue\":%.3f,\"infer\":%.3f,\"batch\":%d}", j->decode_ms,
              j->out.queue_ms, j->out.infer_ms, j->out.batch);
}

static void write_error(sb *b, const tld_models_error *e) {
    sb_printf(b, "\"error\":{\"type\":\"about:blank\",\"title\":");
    const char *reason = MHD_get_reason_phrase_for((unsigned)e->status);
    sb_str(b, reason && reason[0] ? reason : e->code);
    sb_printf(b, ",\"status\":%d,\"code\":", e->status);
    sb_str(b, e->code);
    sb_printf(b, ",\"detail\":");
    sb_str(b, e->detail);
    sb_printf(b, "}");
}

void tld_h_model_predict(tld_req *r, void *u) {
    tld_routes *R = u;
    char mt[64];
    media_type(r, mt, sizeof mt);
    int multipart = strcmp(mt, "multipart/form-data") == 0;
    if (!multipart && strcmp(mt, "image/jpeg") != 0) {
        tld_reply_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL,
                         "send one JPEG as image/jpeg, or several as multipart/form-data (got %s)",
                         mt[0] ? mt : "no Content-Type");
        return;
    }
    long long top_k, timeout;
    int tokens;
    if (query_int(r, "top_k", 1, 64, 5, &top_k) || query_bool(r, "tokens", 1, &tokens) ||
        query_int(r, "timeout_ms", 1, PREDICT_TIMEOUT_MAX_MS, PREDICT_TIMEOUT_MS, &timeout))
        return;
    size_t len;
    const uint8_t *body = (const uint8_t *)tld_req_body(r, &len);
    if (len == 0) {
        tld_reply_problem(r, 400, "EMPTY_BODY", NULL, "the body is empty; send a JPEG");
        return;
    }
    int64_t deadline = tl_clock_mono_ms() + timeout;
    tld_part parts[PREDICT_MAX_IMAGES];
    int n = 1;
    if (multipart) {
        char err[256];
        n = tld_multipart_parse(tld_req_header(r, "Content-Type"), body, len, parts, PREDICT_MAX_IMAGES, err, sizeof err);
        if (n < 0) {
            tld_reply_problem(r, 400, "BAD_MULTIPART", NULL, "%s", err);
            return;
        }
        if (n == 0) {
            tld_reply_problem(r, 400, "EMPTY_BODY", NULL, "the multipart body holds no part; send one or more JPEGs");
            return;
        }
    }
    tld_models_error e;
    tld_model_ref *m = tld_models_acquire(R->models, tld_req_param(r, "name"), &e);
    if (!m) return reply_models_error(r, &e);
    if (tld_models_reserve(m, n, &e) != 0) { /* before anything of n images' size is allocated */
        tld_models_release(m);
        return reply_models_error(r, &e);
    }
    int S = tld_model_ref_size(m), K = tld_model_ref_classes(m), g = tld_model_ref_grid(m);
    size_t img = (size_t)3 * S * S;
    image_job *jobs = calloc((size_t)n, sizeof *jobs);
    float *in = malloc(sizeof(float) * img * (size_t)n);
    float *probs = malloc(sizeof(float) * (size_t)K * (size_t)n);
    int32_t *tix = malloc(sizeof(int32_t) * (size_t)g * g * (size_t)n);
    float *tpr = malloc(sizeof(float) * (size_t)g * g * (size_t)n);
    tld_infer_out *outs = calloc((size_t)n, sizeof *outs);
    int *which = calloc((size_t)n, sizeof *which);
    sb b = {0};
    if (!jobs || !in || !probs || !tix || !tpr || !outs || !which) {
        tld_models_release(m);
        tld_reply_problem(r, 503, "OUT_OF_MEMORY", NULL, "out of memory for %d images", n);
        goto done;
    }
    int queued = 0;
    for (int i = 0; i < n; i++) {
        image_job *j = &jobs[i];
        const uint8_t *data = body;
        size_t dlen = len;
        if (multipart) {
            data = parts[i].data;
            dlen = parts[i].len;
            snprintf(j->filename, sizeof j->filename, "%s", parts[i].filename[0] ? parts[i].filename : parts[i].name);
        }
        double t0 = (tl_clock_mono_s() * 1000.0);
        float *dst = in + img * (size_t)queued;
        if (prepare(m, data, dlen, dst, &j->err) != 0) {
            j->decode_ms = (tl_clock_mono_s() * 1000.0) - t0;
            continue;
        }
        j->decode_ms = (tl_clock_mono_s() * 1000.0) - t0;
        j->ok = 1;
        tld_infer_out *o = &outs[queued];
        o->probs = probs + (size_t)K * queued;
        o->tok_index = tokens ? tix + (size_t)g * g * queued : NULL;
        o->tok_prob = tpr + (size_t)g * g * queued;
        which[queued++] = i;
    }
    if (!multipart && !jobs[0].ok) {
        tld_models_release(m);
        reply_models_error(r, &jobs[0].err);
        goto done;
    }
    if (queued > 0 && tld_models_infer(m, in, queued, outs, deadline, &e) != 0) {
        tld_models_release(m);
        reply_models_error(r, &e);
        goto done;
    }
    for (int q = 0; q < queued; q++) jobs[which[q]].out = outs[q];
    sb_printf(&b, "{\"model\":");
    sb_str(&b, tld_model_ref_name(m));
    if (!multipart) {
        sb_printf(&b, ",");
        write_result(&b, m, &jobs[0], (int)top_k, tokens);
    } else {
        sb_printf(&b, ",\"results\":[");
        for (int i = 0; i < n; i++) {
            sb_printf(&b, "%s{\"filename\":", i ? "," : "");
            sb_str(&b, jobs[i].filename);
            sb_printf(&b, ",");
            if (jobs[i].ok)
                write_result(&b, m, &jobs[i], (int)top_k, tokens);
            else
                write_error(&b, &jobs[i].err);
            sb_printf(&b, "}");
        }
        sb_printf(&b, "]");
    }
    sb_printf(&b, "}");
    tld_models_release(m);
    if (b.oom)
        tld_reply_problem(r, 503, "OUT_OF_MEMORY", NULL, "out of memory writing the answer");
    else
        tld_reply_json(r, 200, b.buf);
done:
    free(b.buf);
    free(jobs);
    free(in);
    free(probs);
    free(tix);
    free(tpr);
    free(outs);
    free(which);
}

/* ------------------------------------------------------------------ KServe v2 */

void tld_h_v2_server(tld_req *r, void *u) {
    (void)u;
    tld_reply_json(r, 200, "{\"name\":\"tokenlabd\",\"version\":\"" TL_VERSION "\",\"extensions\":[\"classification\"]}");
}

void tld_h_v2_live(tld_req *r, void *u) {
    (void)u;
    tld_reply_json(r, 200, "{\"live\":true}");
}

void tld_h_v2_ready(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t counts[TLD_JOB_NSTATES];
    int ready = tld_store_job_counts(R->store, counts) == 0 && tld_models_all_loaded(R->models);
    tld_reply_json(r, ready ? 200 : 503, ready ? "{\"ready\":true}" : "{\"ready\":false}");
}

/* The versioned /v2 routes name a version; a model has one, "1". 1 when the request names none or that one,
 * else 0 after a 404 MODEL_VERSION_NOT_FOUND. */
static int v2_version_ok(tld_req *r) {
    const char *v = tld_req_param(r, "version");
    if (!v || strcmp(v, "1") == 0) return 1;
    tld_reply_problem(r, 404, "MODEL_VERSION_NOT_FOUND", NULL, "model %s has one version, \"1\"; there is no version \"%.64s\"",
                     tld_req_param(r, "name"), v);
    return 0;
}

void tld_h_v2_model(tld_req *r, void *u) {
    tld_routes *R = u;
    tld_models_error e;
    if (!v2_version_ok(r)) return;
    tld_model_ref *m = tld_models_acquire(R->models, tld_req_param(r, "name"), &e);
    if (!m) return reply_models_error(r, &e);
    int S = tld_model_ref_size(m), K = tld_model_ref_classes(m);
    sb b = {0};
    sb_printf(&b, "{\"name\":");
    sb_str(&b, tld_model_ref_name(m));
    sb_printf(&b,
              ",\"versions\":[\"1\"],\"platform\":\"tokenlab_lvvit\","
              "\"inputs\":[{\"name\":\"image\",\"datatype\":\"UINT8\",\"shape\":[-1,-1,-1,3]},"
              "{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[-1,3,%d,%d]}],"
              "\"outputs\":[{\"name\":\"scores\",\"datatype\":\"FP32\",\"shape\":[-1,%d]}]}",
              S, S, K);
    tld_models_release(m);
    if (b.oom) tld_reply_problem(r, 503, "OUT_OF_MEMORY", NULL, "out of memory");
    else tld_reply_json(r, 200, b.buf);
    free(b.buf);
}

void tld_h_v2_model_ready(tld_req *r, void *u) {
    tld_routes *R = u;
    tld_models_error e;
    if (!v2_version_ok(r)) return;
    tld_model_ref *m = tld_models_acquire(R->models, tld_req_param(r, "name"), &e);
    if (!m) return reply_models_error(r, &e);
    tld_models_release(m);
    tld_reply_json(r, 200, "{\"ready\":true}");
}

void tld_h_v2_infer(tld_req *r, void *u) {
    tld_routes *R = u;
    char mt[64];
    if (!v2_version_ok(r)) return;
    media_type(r, mt, sizeof mt);
    if (strcmp(mt, "application/json") != 0) {
        tld_reply_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL, "send the inference request as application/json");
        return;
    }
    size_t len;
    const char *body = tld_req_body(r, &len);
    tld_ks_request q;
    char ptr[128] = "", err[512] = "";
    if (tld_kserve_parse(body, len, KSERVE_MAX_ELEMS, &q, ptr, sizeof ptr, err, sizeof err) != 0) {
        tld_reply_problem(r, 400, "INVALID_INFER_REQUEST", ptr[0] ? ptr : NULL, "%s", err);
        return;
    }
    tld_models_error e;
    float *in = NULL, *probs = NULL, *logits = NULL;
    tld_infer_out *outs = NULL;
    char *resp = NULL;
    tld_model_ref *m = tld_models_acquire(R->models, tld_req_param(r, "name"), &e);
    if (!m) {
        reply_models_error(r, &e);
        goto done;
    }
    int S = tld_model_ref_size(m), K = tld_model_ref_classes(m), n = q.n;
    size_t img = (size_t)3 * S * S;
    if (tld_models_reserve(m, n, &e) != 0) { /* before the n images' tensors are allocated */
        reply_models_error(r, &e);
        goto done;
    }
    if (q.layout == TLD_KS_FP32_NCHW && (q.h != S || q.w != S)) {
        tld_reply_problem(r, 400, "INVALID_INFER_REQUEST", "/inputs/0/shape",
                         "FP32 input must be [N,3,%d,%d] for this model (got H=%d, W=%d)", S, S, q.h, q.w);
        goto done;
    }
    probs = malloc(sizeof(float) * (size_t)K * n);
    logits = malloc(sizeof(float) * (size_t)K * n);
    outs = calloc((size_t)n, sizeof *outs);
    if (q.layout == TLD_KS_UINT8_NHWC) in = malloc(sizeof(float) * img * n);
    if (!probs || !logits || !outs || (q.layout == TLD_KS_UINT8_NHWC && !in)) {
        tld_reply_problem(r, 503, "OUT_OF_MEMORY", NULL, "out of memory for %d images", n);
        goto done;
    }
    if (q.layout == TLD_KS_UINT8_NHWC) {
        for (int i = 0; i < n; i++) {
            tl_image im = {q.w, q.h, q.u8 + (size_t)q.h * q.w * 3 * i};
            tl_transform_eval(&im, S, tld_model_ref_crop_pct(m), in + img * i, NULL);
        }
    }
    for (int i = 0; i < n; i++) {
        outs[i].probs = probs + (size_t)K * i;
        outs[i].logits = logits + (size_t)K * i;
    }
    if (tld_models_infer(m, q.layout == TLD_KS_UINT8_NHWC ? in : q.f32, n, outs, tl_clock_mono_ms() + PREDICT_TIMEOUT_MS,
                        &e) != 0) {
        reply_models_error(r, &e);
        goto done;
    }
    {
        const char **labels = malloc(sizeof *labels * (size_t)K);
        if (labels)
            for (int c = 0; c < K; c++) labels[c] = tld_model_ref_label(m, c);
        int cls = q.classification > K ? K : q.classification;
        resp = tld_kserve_response(tld_model_ref_name(m), q.id, n, K, logits, labels, cls, q.output_name);
        free(labels);
    }
    if (!resp)
        tld_reply_problem(r, 503, "OUT_OF_MEMORY", NULL, "out of memory writing the answer");
    else
        tld_reply_json(r, 200, resp);
done:
    if (m) tld_models_release(m);
    free(resp);
    free(in);
    free(probs);
    free(logits);
    free(outs);
    tld_kserve_request_free(&q);
}
