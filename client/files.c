/*
 * files.c: bounded reads of local input files (see files.h).
 */
#include "files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

char *files_read(const char *cmd, const char *path, size_t cap, size_t *len) {
    int is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "tokenlab %s: cannot read %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (!is_stdin && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fprintf(stderr, "tokenlab %s: cannot read %s: it is a folder\n", cmd, path);
        fclose(f);
        return NULL;
    }
    size_t n = 0, alloc = 65536;
    char *buf = malloc(alloc + 1);
    while (buf) {
        if (n == alloc) {
            if (alloc > cap) break;
            size_t grow = alloc * 2 > cap + 1 ? cap + 1 : alloc * 2;
            char *b = realloc(buf, grow + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            alloc = grow;
        }
        size_t k = fread(buf + n, 1, alloc - n, f);
        n += k;
        if (k == 0) break;
    }
    int err = ferror(f);
    if (!is_stdin) fclose(f);
    if (!buf) {
        fprintf(stderr, "tokenlab %s: out of memory reading %s\n", cmd, path);
        return NULL;
    }
    if (n > cap) {
        fprintf(stderr, "tokenlab %s: %s is larger than %zu bytes\n", cmd, path, cap);
        free(buf);
        return NULL;
    }
    if (err) {
        fprintf(stderr, "tokenlab %s: cannot read %s: read error\n", cmd, path);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

const char *files_base(const char *path) {
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}
