/*
 * files.c: crash-safe writes (unique temporary files, durable renames) and
 * path confinement (see tokenlab/files.h). No state; any thread.
 */
#include "tokenlab/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tl_fsync_parent_dir(const char *path) {
    char *dir = strdup(path);
    if (!dir) return -1;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir)
        d = "/";
    else if (slash) {
        *slash = '\0';
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = -1;
    if (fd >= 0) {
        rc = fsync(fd);
        if (rc != 0 && errno == EINVAL) rc = 0; /* folder sync unsupported on this file system */
        int e = errno;
        close(fd);
        errno = e;
    }
    free(dir);
    return rc;
}

#define TEMP_SUFFIX ".tmp.XXXXXX"

FILE *tl_file_create_temp(const char *path, char *tmp, size_t tmplen) {
    int n = snprintf(tmp, tmplen, "%s" TEMP_SUFFIX, path);
    if (n < 0 || (size_t)n >= tmplen) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    int fd = mkostemp(tmp, O_CLOEXEC); /* O_CREAT | O_EXCL, a name no one else holds */
    if (fd < 0) return NULL;
    FILE *fp = fchmod(fd, 0644) == 0 ? fdopen(fd, "wb") : NULL;
    if (!fp) {
        int e = errno;
        close(fd);
        unlink(tmp);
        errno = e;
    }
    return fp;
}

int tl_file_commit(FILE *fp, const char *tmp, const char *path, const char **step) {
    const char *what = NULL;
    if (fflush(fp) != 0) what = "flush";
    else if (fsync(fileno(fp)) != 0) what = "fsync";
    int e = errno;
    if (fclose(fp) != 0 && !what) what = "close", e = errno;
    if (!what && rename(tmp, path) != 0) what = "rename", e = errno;
    int ok = !what;
    if (!ok) {
        unlink(tmp);
        if (step) *step = what;
        errno = e;
        return -1;
    }
    if (tl_fsync_parent_dir(path) != 0) {
        if (step) *step = "fsync of the folder";
        return -1;
    }
    return 0;
}

void tl_file_abandon(FILE *fp, const char *tmp) {
    int e = errno;
    if (fp) fclose(fp);
    if (tmp && *tmp) unlink(tmp);
    errno = e;
}

int tl_file_is_temp_name(const char *name) {
    size_t n = strlen(name), k = sizeof TEMP_SUFFIX - 1;
    if (n <= k || strncmp(name + n - k, ".tmp.", 5) != 0) return 0;
    for (size_t i = n - 6; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return 0;
    }
    return 1;
}

int tl_file_remove_temps(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!tl_file_is_temp_name(e->d_name)) continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0) removed++;
    }
    closedir(d);
    return removed;
}

int tl_path_is_inside(const char *real, const char *root_real) {
    if (!real || !root_real || real[0] != '/' || root_real[0] != '/') return 0;
    if (strcmp(root_real, "/") == 0) return 1;
    size_t n = strlen(root_real);
    return strncmp(real, root_real, n) == 0 && (real[n] == '\0' || real[n] == '/');
}

/* The kind check shared by both entry points; real is canonical. */
static tl_path_status check_kind(const char *real, int want) {
    struct stat st;
    if (stat(real, &st) != 0) return TL_PATH_NOT_FOUND;
    if (want == TL_PATH_WANT_DIR && !S_ISDIR(st.st_mode)) return TL_PATH_NOT_DIR;
    if (want == TL_PATH_WANT_FILE && !S_ISREG(st.st_mode)) return TL_PATH_NOT_FILE;
    return TL_PATH_OK;
}

tl_path_status tl_path_confine_abs(const char *root_real, const char *path, int want, char *out) {
    if (!path || !path[0]) return TL_PATH_EMPTY;
    if (strlen(path) >= PATH_MAX) return TL_PATH_TOO_LONG;
    char real[PATH_MAX];
    if (!realpath(path, real)) return (errno == ENOENT || errno == ENOTDIR) ? TL_PATH_NOT_FOUND : TL_PATH_UNRESOLVED;
    if (!tl_path_is_inside(real, root_real)) return TL_PATH_OUTSIDE;
    tl_path_status s = check_kind(real, want);
    if (s == TL_PATH_OK) memcpy(out, real, strlen(real) + 1);
    return s;
}

tl_path_status tl_path_confine(const char *root_real, const char *rel, int want, char *out) {
    if (!rel) return TL_PATH_EMPTY;
    if (rel[0] == '/') return TL_PATH_ABSOLUTE;
    for (const char *c = rel; *c;) {
        const char *end = strchr(c, '/');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == 2 && c[0] == '.' && c[1] == '.') return TL_PATH_DOTDOT;
        c += len;
        while (*c == '/') c++;
    }
    char full[PATH_MAX];
    int n = rel[0] ? snprintf(full, sizeof full, "%s/%s", strcmp(root_real, "/") == 0 ? "" : root_real, rel)
                   : snprintf(full, sizeof full, "%s", root_real);
    if (n < 0 || (size_t)n >= sizeof full) return TL_PATH_TOO_LONG;
    return tl_path_confine_abs(root_real, full, want, out);
}

const char *tl_path_status_str(tl_path_status s) {
    switch (s) {
    case TL_PATH_OK: return "ok";
    case TL_PATH_EMPTY: return "must be a non-empty path";
    case TL_PATH_TOO_LONG: return "path too long";
    case TL_PATH_ABSOLUTE: return "must be relative to the data root (no absolute path)";
    case TL_PATH_DOTDOT: return "must be relative to the data root (no \"..\" component)";
    case TL_PATH_NOT_FOUND: return "does not exist";
    case TL_PATH_UNRESOLVED: return "cannot be resolved";
    case TL_PATH_OUTSIDE: return "resolves outside the data root (a symbolic link leads out of it)";
    case TL_PATH_NOT_DIR: return "is not a folder";
    case TL_PATH_NOT_FILE: return "is not a regular file";
    }
    return "invalid path";
}
