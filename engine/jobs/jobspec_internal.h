/*
 * jobspec_internal.h: the strict-parsing helpers of jobspec.c, shared with
 * the parsers of the other job kinds (annotate_spec.c). Not part of the public
 * API. Every helper follows jobspec.c's conventions: a refusal fills the
 * tl_spec_error with the JSON pointer (RFC 6901) and the rule, and returns -1.
 * Pure functions; any thread.
 */
#ifndef TL_JOBSPEC_INTERNAL_H
#define TL_JOBSPEC_INTERNAL_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "tokenlab/jobspec.h"

/* Fills e (when not NULL) and returns -1. */
int tl_spec_fail(tl_spec_error *e, const char *ptr, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Makes a message or pointer valid UTF-8 without control characters (quoted user input). */
void tl_spec_sanitize(char *s);
/* parent + "/" + key with RFC 6901 escaping; long keys are cut. */
void tl_spec_ptr_join(char *out, size_t n, const char *parent, const char *key);
/* Values a spec document may hold (a spec has a few dozen): checked before parsing (tl_json_count_values). */
#define TL_SPEC_MAX_VALUES 4096
/* Parses a whole document (nothing may follow it, at most TL_SPEC_MAX_VALUES values); NULL with the error
 * otherwise. */
cJSON *tl_spec_parse_document(const char *json, tl_spec_error *e);
/* Typed getters: "must be an integer in ...", "must be a boolean", "must be a string", "must be an object". */
int tl_spec_get_int(const cJSON *it, const char *ptr, double lo, double hi, const char *rule, double *v,
                    tl_spec_error *e);
int tl_spec_get_bool(const cJSON *it, const char *ptr, int *v, tl_spec_error *e);
int tl_spec_get_string(const cJSON *it, const char *ptr, const char **v, tl_spec_error *e);
int tl_spec_get_object(const cJSON *it, const char *ptr, tl_spec_error *e);
/* Every member of o known (else "unknown field") and given once (else "duplicate key"); seen[i]
 * receives the member of names[i] or NULL. */
int tl_spec_check_members(const cJSON *o, const char *ptr, const char *const *names, int n, const cJSON **seen,
                          tl_spec_error *e);
/* The "name" rule of job specs: 1..127 printable ASCII characters, into out (128 bytes). */
/* A job's checkpoint as a job spec names it (model.init.checkpoint, annotate's source.checkpoint):
 * "best", "last" or a step number as a string ("1200": 1 to 18 digits, no leading zero), copied into out
 * (24 bytes is enough). 0, or -1 with e at ptr. */
int tl_spec_get_checkpoint(const cJSON *it, const char *ptr, char *out, size_t len, tl_spec_error *e);
int tl_spec_get_name(const cJSON *it, const char *ptr, char *out, size_t len, tl_spec_error *e);
/* The realpath of the data root into root_real (PATH_MAX) and *root = root_real; *root = NULL when
 * data_root is NULL (paths then resolve against the working folder). -1 with pointer "" when the
 * data root does not exist. */
int tl_spec_data_root(const char *data_root, char *root_real, const char **root, tl_spec_error *e);
/* Resolves a dataset path against the realpath of the data root (or NULL: the working folder):
 * relative, no "..", inside the root after following symlinks; a folder (want_dir) or a regular
 * file (tl_path_confine, files.h). out (PATH_MAX) receives the resolved absolute path. */
int tl_spec_resolve_path(const char *ptr, const char *val, const char *root_real, int want_dir, char *out,
                         tl_spec_error *e);

#endif
