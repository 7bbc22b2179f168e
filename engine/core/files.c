/*
 * fsutil.c: see fsutil.h. No state.
 */
#include "tokenlab/files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
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
