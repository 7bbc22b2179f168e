/*
 * spec_schema.c: see spec_schema.h. Owns nothing between calls; the walk
 * lives in the caller's tlt_schema_walk.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec_schema.h"

int tlt_listed(const char *const *list, const char *s) {
    for (; *list; list++)
        if (strcmp(*list, s) == 0) return 1;
    return 0;
}

static int has_type(const cJSON *p) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (cJSON_IsString(t)) return 1;
    if (!cJSON_IsArray(t) || cJSON_GetArraySize(t) < 2) return 0;
    for (const cJSON *x = t->child; x; x = x->next)
        if (!cJSON_IsString(x)) return 0;
    return 1;
}

static void walk(tlt_schema_walk *w, const cJSON *node, const char *path, const char *const *no_default,
                 int no_default_said) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "object") != 0) return;
    assert_true(w->nobjects < TLT_MAX_OBJECTS);
    w->objects[w->nobjects] = node;
    snprintf(w->object_paths[w->nobjects++], 128, "%s", path);
    if (!cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(node, "additionalProperties")))
        fail_msg("schema object %s: additionalProperties is not false", path[0] ? path : "/");
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(node, "properties");
    if (!cJSON_IsObject(props)) fail_msg("schema object %s has no properties", path);
    for (const cJSON *p = props->child; p; p = p->next) {
        assert_true(w->nprops < TLT_MAX_PROPS);
        tlt_prop *pr = &w->props[w->nprops++];
        snprintf(pr->path, sizeof pr->path, "%s/%s", path, p->string);
        pr->node = p;
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(p, "description");
        if (!cJSON_IsString(d) || strlen(d->valuestring) < 10) fail_msg("schema %s: no description", pr->path);
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(p, "default");
        if (tlt_listed(no_default, pr->path)) {
            if (def) fail_msg("schema %s: listed without a default", pr->path);
            if (no_default_said && !strstr(d->valuestring, "no default value"))
                fail_msg("schema %s: the description does not say it has no default value", pr->path);
        } else if (!def) {
            fail_msg("schema %s: no default", pr->path);
        }
        if (!has_type(p)) fail_msg("schema %s: no type", pr->path);
        walk(w, p, pr->path, no_default, no_default_said);
    }
}

cJSON *tlt_schema_load(const char *name, const char *const *no_default, int no_default_said, tlt_schema_walk *w) {
    char dir[PATH_MAX], path[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    snprintf(path, sizeof path, "%s/../../schema/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    assert_non_null(text);
    size_t r = fread(text, 1, (size_t)n, f);
    fclose(f);
    text[r] = '\0';
    cJSON *schema = cJSON_ParseWithOpts(text, NULL, 1);
    free(text);
    if (!schema) fail_msg("%s is not valid JSON", path);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(schema, "$schema");
    assert_true(cJSON_IsString(s));
    assert_string_equal(s->valuestring, "https://json-schema.org/draft/2020-12/schema");
    w->nprops = w->nobjects = 0;
    walk(w, schema, "", no_default, no_default_said);
    return schema;
}

char *tlt_spec_with(const char *base, const char *path, const cJSON *v) {
    cJSON *doc = cJSON_Parse(base);
    assert_non_null(doc);
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path + 1);
    cJSON *obj = doc;
    char *save = NULL, *tok = strtok_r(buf, "/", &save);
    while (tok) {
        char *next = strtok_r(NULL, "/", &save);
        if (!next) {
            cJSON_DeleteItemFromObjectCaseSensitive(obj, tok);
            if (v) cJSON_AddItemToObject(obj, tok, cJSON_Duplicate(v, 1));
        } else {
            cJSON *child = cJSON_GetObjectItemCaseSensitive(obj, tok);
            if (!child) child = cJSON_AddObjectToObject(obj, tok);
            obj = child;
        }
        tok = next;
    }
    char *out = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return out;
}
