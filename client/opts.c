/*
 * opts.c: the option parser behind every command (see opts.h). It never
 * exits and never allocates; values point into argv.
 */
#include "opts.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const opt_def *find_long(const opt_def *defs, const char *name, size_t len) {
    for (const opt_def *d = defs; d && d->name; d++)
        if (strlen(d->name) == len && strncmp(d->name, name, len) == 0) return d;
    return NULL;
}

static const opt_def *find_short(const opt_def *defs, char ch) {
    for (const opt_def *d = defs; d && d->name; d++)
        if (d->alias && d->alias == ch) return d;
    return NULL;
}

static int store(cli *c, const opt_def *d, const char *val) {
    switch (d->kind) {
    case OPT_FLAG:
        *(int *)d->dst = 1;
        return EX_OK;
    case OPT_STR:
        *(const char **)d->dst = val;
        return EX_OK;
    case OPT_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(val, &end, 10);
        if (!*val || *end || errno || v < d->lo || v > d->hi)
            return usage_error(c, "%s must be an integer in %lld..%lld, got '%s'", d->name, d->lo, d->hi, val);
        *(long long *)d->dst = v;
        return EX_OK;
    }
    case OPT_NUM: {
        char *end;
        errno = 0;
        double v = strtod(val, &end);
        if (!*val || *end || errno || !(v >= (double)d->lo && v <= (double)d->hi))
            return usage_error(c, "%s must be a number in %lld..%lld, got '%s'", d->name, d->lo, d->hi, val);
        *(double *)d->dst = v;
        return EX_OK;
    }
    }
    return EX_USAGE;
}

int opts_parse(cli *c, int argc, char **argv, const opt_def *defs, char **pos, int maxpos, int *npos) {
    int n = 0, only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == '\0') { /* "-" alone is a word (stdin) */
            if (n >= maxpos) return usage_error(c, "too many arguments (at '%s')", a);
            pos[n++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = 1;
            continue;
        }
        const opt_def *d;
        const char *val = NULL;
        if (a[1] == '-') {
            const char *eq = strchr(a, '=');
            d = find_long(defs, a, eq ? (size_t)(eq - a) : strlen(a));
            if (!d) return usage_error(c, "unknown option '%.*s'", eq ? (int)(eq - a) : (int)strlen(a), a);
            if (eq) {
                if (d->kind == OPT_FLAG) return usage_error(c, "%s takes no value", d->name);
                val = eq + 1;
            }
        } else {
            d = a[2] == '\0' ? find_short(defs, a[1]) : NULL;
            if (!d) return usage_error(c, "unknown option '%s'", a);
        }
        if (d->kind != OPT_FLAG && !val) {
            if (i + 1 >= argc) return usage_error(c, "%s needs a value", d->name);
            val = argv[++i];
        }
        int rc = store(c, d, val);
        if (rc != EX_OK) return rc;
    }
    *npos = n;
    return EX_OK;
}

int opts_count(cli *c, int npos, int min, int max) {
    if (npos < min) return usage_error(c, "missing argument%s", min - npos > 1 ? "s" : "");
    if (max >= 0 && npos > max) return usage_error(c, "too many arguments");
    return EX_OK;
}

int opts_job_id(cli *c, const char *s, int64_t *id) {
    if (parse_id(s, id) != 0) return usage_error(c, "a job ID is a positive integer, got '%s'", s);
    return EX_OK;
}

int parse_id(const char *s, int64_t *out) {
    if (!s || *s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno || v < 1) return -1;
    *out = (int64_t)v;
    return 0;
}
