/*
 * hostfile.c: parsing the operator's Open MPI hostfile (see hostfile.h for
 * the accepted format). Owns no state. Called at start by cmd_serve.c (the
 * main thread) and by the tests.
 */
#include "jobs/hostfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 1 when c may appear in a host name (letters, digits, '.', '-', '_', ':' for IPv6 addresses). */
static int host_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
           c == '_' || c == ':';
}

/* Parses one line (NUL-terminated, comment already cut) into out; 0, or -1 with a message for line ln. */
static int parse_line(char *line, int ln, tld_hostfile *out, char *err, size_t errlen) {
    char *save = NULL, *tok = strtok_r(line, " \t\r", &save);
    if (!tok) return 0; /* blank */
    const char *name = tok;
    size_t len = strlen(tok);
    for (size_t i = 0; i < len; i++)
        if (!host_char(tok[i])) {
            snprintf(err, errlen, "line %d: '%.80s' is not a host name (letters, digits, '.', '-', '_', ':')", ln, tok);
            return -1;
        }
    if (len >= TLD_HOST_LEN) {
        snprintf(err, errlen, "line %d: a host name longer than %d bytes", ln, TLD_HOST_LEN - 1);
        return -1;
    }
    for (int h = 0; h < out->n; h++)
        if (!strcmp(out->host[h], name)) {
            snprintf(err, errlen, "line %d: host %s is listed twice", ln, name);
            return -1;
        }
    if (out->n >= TLD_HOSTFILE_HOSTS) {
        snprintf(err, errlen, "line %d: more than %d hosts", ln, TLD_HOSTFILE_HOSTS);
        return -1;
    }
    int slots = 1, seen = 0;
    while ((tok = strtok_r(NULL, " \t\r", &save))) {
        char *end;
        long k;
        if (strncmp(tok, "slots=", 6) != 0 || seen) {
            snprintf(err, errlen, "line %d: unexpected '%.80s' (a line is `host [slots=K]`)", ln, tok);
            return -1;
        }
        errno = 0;
        k = strtol(tok + 6, &end, 10);
        if (!tok[6] || *end || errno || k < 1 || k > 1024) {
            snprintf(err, errlen, "line %d: slots must be an integer in 1..1024, got '%.40s'", ln, tok + 6);
            return -1;
        }
        slots = (int)k;
        seen = 1;
    }
    memcpy(out->host[out->n], name, len + 1);
    out->slots[out->n++] = slots;
    out->total_slots += slots;
    return 0;
}

int tld_hostfile_parse(const char *text, size_t len, tld_hostfile *out, char *err, size_t errlen) {
    char line[TLD_HOSTFILE_LINE + 1];
    out->n = out->total_slots = 0;
    size_t i = 0;
    for (int ln = 1; i < len; ln++) {
        size_t j = i;
        while (j < len && text[j] != '\n') j++;
        if (j - i > TLD_HOSTFILE_LINE) {
            snprintf(err, errlen, "line %d: longer than %d bytes", ln, TLD_HOSTFILE_LINE);
            return -1;
        }
        memcpy(line, text + i, j - i);
        line[j - i] = 0;
        if (memchr(line, 0, j - i)) {
            snprintf(err, errlen, "line %d: holds a NUL byte", ln);
            return -1;
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        if (parse_line(line, ln, out, err, errlen) != 0) return -1;
        i = j + 1;
    }
    if (out->n == 0) {
        snprintf(err, errlen, "no host (a line is `host [slots=K]`)");
        return -1;
    }
    return 0;
}

int tld_hostfile_load(const char *path, tld_hostfile *out, char *err, size_t errlen) {
    char e2[400];
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 20;
    char *buf = malloc(cap + 1);
    size_t n = buf ? fread(buf, 1, cap + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    int rc = -1;
    if (!buf) snprintf(err, errlen, "%s: out of memory", path);
    else if (bad) snprintf(err, errlen, "%s: cannot read it", path);
    else if (n > cap) snprintf(err, errlen, "%s: larger than 1 MiB", path);
    else if (tld_hostfile_parse(buf, n, out, e2, sizeof e2) != 0) snprintf(err, errlen, "%s: %s", path, e2);
    else rc = 0;
    free(buf);
    return rc;
}
