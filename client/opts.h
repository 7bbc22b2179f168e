/*
 * opts.h: command-line option parsing for the commands of `tokenlab`.
 *
 * Each command declares its options as a table (long name, optional one-letter
 * alias, kind, where to store the value, range for integers) and gets its
 * positional words back. `--opt value` and `--opt=value` are both accepted,
 * options may come before or after positional words, and `--` ends options.
 * Problems are reported through usage_error() and give EX_USAGE.
 */
#ifndef TOKENLAB_OPTS_H
#define TOKENLAB_OPTS_H

#include <stdint.h>

#include "cli.h"

typedef enum { OPT_FLAG, OPT_STR, OPT_INT, OPT_NUM } opt_kind;

typedef struct {
    const char *name;     /* "--top-k" */
    char alias;           /* 'k' for -k, or 0 */
    opt_kind kind;
    void *dst;            /* int * (FLAG: set to 1), const char ** (STR), long long * (INT), double * (NUM) */
    long long lo, hi;     /* inclusive range for OPT_INT */
} opt_def;

/* Parses argv into the option table and the positional words (at most maxpos). Returns EX_OK or,
 * after printing what is wrong, EX_USAGE. */
int opts_parse(cli *c, int argc, char **argv, const opt_def *defs, char **pos, int maxpos, int *npos);

/* Checks that there are min..max positional words (max < 0: no upper bound); EX_USAGE otherwise. */
int opts_count(cli *c, int npos, int min, int max);

/* A job id: a positive decimal integer. Returns 0 or -1. */
int parse_id(const char *s, int64_t *out);

/* The job ID argument s of a command (parse_id): EX_OK with *id set, or EX_USAGE after saying that
 * a job ID is a positive integer. */
int opts_job_id(cli *c, const char *s, int64_t *id);

/* Prints "tokenlab CMD: <message>", the command's usage line and a --help hint to stderr;
 * returns EX_USAGE. Implemented in main.c, which holds the command table. */
int usage_error(const cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
