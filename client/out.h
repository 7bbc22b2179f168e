/*
 * out.h: human-readable output: aligned tables, durations, times, sizes,
 * safe printing of text that came from the server, and tolerant accessors
 * for fields of the server's JSON (a missing or mistyped field gives the
 * default instead of a crash).
 */
#ifndef TOKENLAB_OUT_H
#define TOKENLAB_OUT_H

#include <cjson/cJSON.h>
#include <stdio.h>

/* Field access: key may be a dotted path ("progress.step"). */
const cJSON *out_jget(const cJSON *o, const char *path);
const char *out_jstr(const cJSON *o, const char *path, const char *dflt);
double out_jnum(const cJSON *o, const char *path, double dflt); /* dflt when absent, null or not a number */
int out_jbool(const cJSON *o, const char *path, int dflt);
const cJSON *out_jarr(const cJSON *o, const char *path); /* the array at path, or NULL */

/* Copies in to out replacing control characters (terminal escapes) and bytes that are not UTF-8
 * by '?'; never ends inside a character. In place (in == out) is allowed. */
void out_sanitize(const char *in, char *out, size_t len);
int out_utf8_valid(const char *s);

void out_duration(double seconds, char *buf, size_t len); /* "45s", "3m05s", "2h07m", "3d04h"; "-" when < 0 */
void out_time(double ms, char *buf, size_t len);          /* local "2026-11-26 17:46:03"; "-" when <= 0 */
void out_bytes(double b, char *buf, size_t len);          /* "512 B", "4.2 MB" */
void out_count(double n, char *buf, size_t len);          /* "950", "1.09M" */
void out_metric(double v, char *buf, size_t len);         /* a compact number: 4 significant digits */

/* A table: headers starting with '>' are right-aligned (the '>' is not printed). Cells are copied
 * and sanitized; long cells are cut to 48 characters. */
typedef struct {
    int ncols, rows, cap;
    const char *head[16];
    char **cells;
    int oom;
} out_table;

void out_table_init(out_table *t, int ncols, const char *const *head);
void out_table_row(out_table *t, ...); /* exactly ncols const char * */
void out_table_print(const out_table *t, FILE *f);
void out_table_free(out_table *t);

/* A ranked prediction table (#, CLASS, LABEL, SCORE) of a JSON array of {index, label, score}. */
void out_print_predictions(const cJSON *preds, FILE *f);

/* Whether stdout / stderr is a terminal. */
int out_tty(FILE *f);

#endif
