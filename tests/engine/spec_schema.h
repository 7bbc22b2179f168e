/*
 * spec_schema.h: what the two spec tests (test_jobspec.c, test_annotate.c)
 * share to hold a JSON Schema in schema/ against the C parser that reads
 * the same documents: loading the schema, walking its objects and
 * properties (every object closed, every property described, typed and
 * defaulted), and editing one value of a spec by its JSON pointer.
 * Implemented in tests/engine/spec_schema.c; single-threaded test code.
 */
#ifndef TLT_SPEC_SCHEMA_H
#define TLT_SPEC_SCHEMA_H

#include <cjson/cJSON.h>

#define TLT_MAX_PROPS 128
#define TLT_MAX_OBJECTS 32

typedef struct {
    char path[128];       /* JSON pointer of the property, e.g. "/train/lr" */
    const cJSON *node;    /* the property's schema */
} tlt_prop;

typedef struct {
    tlt_prop props[TLT_MAX_PROPS];
    int nprops;
    const cJSON *objects[TLT_MAX_OBJECTS]; /* schema nodes of type object, with their pointers */
    char object_paths[TLT_MAX_OBJECTS][128];
    int nobjects;
} tlt_schema_walk;

/* Reads schema/<name> of the source tree, checks that it is JSON Schema draft 2020-12 and walks it into w:
 * every object has additionalProperties false and properties; every property a description, a type
 * (a string or an array of strings) and a default, except the pointers in no_default (NULL-terminated),
 * which must have none and, when no_default_said is set, say "no default value" in their description.
 * Fails the test otherwise. Returns the parsed schema (cJSON_Delete it). */
cJSON *tlt_schema_load(const char *name, const char *const *no_default, int no_default_said, tlt_schema_walk *w);

/* The spec base with the value at pointer path set to v (NULL: removed; missing objects on the way are
 * made). Returns a malloc'd JSON text. */
char *tlt_spec_with(const char *base, const char *path, const cJSON *v);

/* 1 when s is in the NULL-terminated list. */
int tlt_listed(const char *const *list, const char *s);

#endif
