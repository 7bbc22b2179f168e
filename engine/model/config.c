/*
 * config.c: LV-ViT configurations: presets, validation, JSON in and out, and
 * derived sizes. Pure functions on caller-owned structs; any thread.
 */
#include "tokenlab/model.h"
#include "tokenlab/base.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    tl_config c;
} preset;

static const preset PRESETS[] = {
    {"lvvit_t", {224, 16, 240, 12, 4, 3.0f, 64, 1.0f, 1000, 0.1f}},
    {"lvvit_s", {224, 16, 384, 16, 6, 3.0f, 64, 2.0f, 1000, 0.1f}},
    {"lvvit_m", {224, 16, 512, 20, 8, 3.0f, 64, 2.0f, 1000, 0.2f}},
    {"lvvit_l", {448, 16, 768, 24, 12, 3.0f, 128, 3.0f, 1000, 0.3f}},
};
static const char *const PRESET_NAMES[] = {"lvvit_t", "lvvit_s", "lvvit_m", "lvvit_l", NULL};

const char *const *tl_config_preset_names(void) { return PRESET_NAMES; }

int tl_config_preset(const char *name, tl_config *out) {
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++)
        if (name && strcmp(name, PRESETS[i].name) == 0) {
            *out = PRESETS[i].c;
            return 0;
        }
    return -1;
}

#define FAIL(...) return tl_seterr(err, errlen, __VA_ARGS__)

/* Limits that keep every size computation far from overflow. */
#define TL_MAX_IMG 4096
#define TL_MAX_DIM 16384
#define TL_MAX_DEPTH 256
#define TL_MAX_CLASSES 100000

int tl_config_validate(const tl_config *c, char *err, size_t errlen) {
    if (c->img_size <= 0 || c->img_size > TL_MAX_IMG) FAIL("img_size: must be in 1..%d, got %d", TL_MAX_IMG, c->img_size);
    if (c->patch_size <= 0) FAIL("patch_size: must be positive, got %d", c->patch_size);
    if (c->patch_size % 2 != 0) FAIL("patch_size: must be even (the stem has stride 2), got %d", c->patch_size);
    if (c->img_size % c->patch_size != 0)
        FAIL("img_size: must be divisible by patch_size (%d), got %d", c->patch_size, c->img_size);
    if (c->embed_dim <= 0 || c->embed_dim > TL_MAX_DIM) FAIL("embed_dim: must be in 1..%d, got %d", TL_MAX_DIM, c->embed_dim);
    if (c->depth <= 0 || c->depth > TL_MAX_DEPTH) FAIL("depth: must be in 1..%d, got %d", TL_MAX_DEPTH, c->depth);
    if (c->num_heads <= 0) FAIL("num_heads: must be positive, got %d", c->num_heads);
    if (c->embed_dim % c->num_heads != 0)
        FAIL("embed_dim: must be divisible by num_heads (%d), got %d", c->num_heads, c->embed_dim);
    if (!(c->mlp_ratio > 0.0f) || !isfinite(c->mlp_ratio) || c->mlp_ratio > 64.0f)
        FAIL("mlp_ratio: must be in (0, 64], got %g", (double)c->mlp_ratio);
    if ((int)(c->embed_dim * c->mlp_ratio) < 1) FAIL("mlp_ratio: embed_dim * mlp_ratio must be at least 1");
    if (c->stem_channels <= 0 || c->stem_channels > TL_MAX_DIM)
        FAIL("stem_channels: must be in 1..%d, got %d", TL_MAX_DIM, c->stem_channels);
    if (!(c->skip_lam > 0.0f) || !isfinite(c->skip_lam)) FAIL("skip_lam: must be positive, got %g", (double)c->skip_lam);
    if (c->num_classes <= 0 || c->num_classes > TL_MAX_CLASSES)
        FAIL("num_classes: must be in 1..%d, got %d", TL_MAX_CLASSES, c->num_classes);
    if (!(c->drop_path_rate >= 0.0f && c->drop_path_rate < 1.0f))
        FAIL("drop_path_rate: must be in [0, 1), got %g", (double)c->drop_path_rate);
    return 0;
}

typedef struct {
    const char *name;
    int is_int;
    size_t off;
} field;

static const field FIELDS[] = {
    {"img_size", 1, offsetof(tl_config, img_size)},
    {"patch_size", 1, offsetof(tl_config, patch_size)},
    {"embed_dim", 1, offsetof(tl_config, embed_dim)},
    {"depth", 1, offsetof(tl_config, depth)},
    {"num_heads", 1, offsetof(tl_config, num_heads)},
    {"mlp_ratio", 0, offsetof(tl_config, mlp_ratio)},
    {"stem_channels", 1, offsetof(tl_config, stem_channels)},
    {"skip_lam", 0, offsetof(tl_config, skip_lam)},
    {"num_classes", 1, offsetof(tl_config, num_classes)},
    {"drop_path_rate", 0, offsetof(tl_config, drop_path_rate)},
};
#define NFIELDS (sizeof FIELDS / sizeof FIELDS[0])

static int parse_obj(const cJSON *o, tl_config *out, char *err, size_t errlen) {
    if (!cJSON_IsObject(o)) FAIL("model: must be a JSON object");
    tl_config c;
    memset(&c, 0, sizeof c);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(o, "preset");
    if (pre) {
        if (!cJSON_IsString(pre)) FAIL("preset: must be a string");
        if (tl_config_preset(pre->valuestring, &c) != 0)
            FAIL("preset: unknown preset '%.64s' (known: lvvit_t, lvvit_s, lvvit_m, lvvit_l)", pre->valuestring);
    }
    int seen[NFIELDS] = {0};
    for (const cJSON *it = o->child; it; it = it->next) {
        if (strcmp(it->string, "preset") == 0) {
            if (it != pre) FAIL("preset: given more than once");
            continue;
        }
        size_t f = 0;
        while (f < NFIELDS && strcmp(FIELDS[f].name, it->string) != 0) f++;
        if (f == NFIELDS) FAIL("%.64s: unknown field", it->string);
        if (seen[f]) FAIL("%s: given more than once", FIELDS[f].name);
        if (!cJSON_IsNumber(it)) FAIL("%s: must be a number", FIELDS[f].name);
        double v = it->valuedouble;
        if (FIELDS[f].is_int) {
            if (v != floor(v) || fabs(v) > 1e9) FAIL("%s: must be an integer, got %g", FIELDS[f].name, v);
            *(int *)((char *)&c + FIELDS[f].off) = (int)v;
        } else {
            if (!isfinite(v)) FAIL("%s: must be a finite number", FIELDS[f].name);
            *(float *)((char *)&c + FIELDS[f].off) = (float)v;
        }
        seen[f] = 1;
    }
    if (!pre)
        for (size_t f = 0; f < NFIELDS; f++)
            if (!seen[f]) FAIL("%s: required (or give a preset)", FIELDS[f].name);
    if (tl_config_validate(&c, err, errlen) != 0) return -1;
    *out = c;
    return 0;
}

int tl_config_from_json(const char *json, tl_config *out, char *err, size_t errlen) {
    cJSON *o = cJSON_ParseWithOpts(json, NULL, 1); /* nothing may follow the object */
    if (!o) FAIL("model: not valid JSON (or text after the object)");
    int rc = parse_obj(o, out, err, errlen);
    cJSON_Delete(o);
    return rc;
}

int tl_config_to_json(const tl_config *c, char *buf, size_t buflen) {
    int n = snprintf(buf, buflen,
                     "{\"img_size\":%d,\"patch_size\":%d,\"embed_dim\":%d,\"depth\":%d,\"num_heads\":%d,"
                     "\"mlp_ratio\":%.9g,\"stem_channels\":%d,\"skip_lam\":%.9g,\"num_classes\":%d,"
                     "\"drop_path_rate\":%.9g}",
                     c->img_size, c->patch_size, c->embed_dim, c->depth, c->num_heads, (double)c->mlp_ratio,
                     c->stem_channels, (double)c->skip_lam, c->num_classes, (double)c->drop_path_rate);
    return (n < 0 || (size_t)n >= buflen) ? -1 : n;
}

int tl_config_grid(const tl_config *c) { return c->img_size / c->patch_size; }
int tl_config_tokens(const tl_config *c) { return tl_config_grid(c) * tl_config_grid(c); }
int tl_config_hidden(const tl_config *c) { return (int)(c->embed_dim * c->mlp_ratio); }

double tl_config_forward_flops(const tl_config *c) {
    double C = c->stem_channels, H1 = c->img_size / 2.0, P2 = c->patch_size / 2.0;
    double N = tl_config_tokens(c), T = N + 1, D = c->embed_dim, hid = tl_config_hidden(c), K = c->num_classes;
    double stem = H1 * H1 * C * (3 * 49 + 2 * C * 9) + N * D * C * P2 * P2;
    double block = T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * hid;
    double heads = (N + 1) * D * K;
    return 2.0 * (stem + c->depth * block + heads);
}
