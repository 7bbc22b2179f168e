/*
 * files.c: crash-safe writes (unique temporary files, durable renames), the
 * write streams every file writer of the engine uses, the full-disk switch
 * for tests, and path confinement (see tokenlab/files.h).
 *
 * Owns: the table of open write streams (stream_mu; one entry per stream
 * made here, removed by the stream's own close), and the full-disk switch's
 * state (fault_mu; read from the environment once). Any thread.
 *
 * Write streams are glibc cookie streams (fopencookie) over a file
 * descriptor: stdio buffers as usual and every buffer that reaches the file
 * goes through stream_write, the one choke point of the engine's file
 * writes, which asks the full-disk switch how many bytes it may write. With
 * the switch off that is a flag test; with it on, a write past the budget
 * writes what fits and fails with ENOSPC, exactly where and how the kernel
 * reports a full disk (a failed flush, then fclose). The table maps a stream
 * to its descriptor (fileno is -1 on a cookie stream) for fsync; when it is
 * full a stream falls back to a plain fdopen stream (written, synced and
 * closed alike, but outside the switch).
 */
#include "tokenlab/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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

/* ---- the full-disk switch ---- */

static pthread_once_t fault_once = PTHREAD_ONCE_INIT;
static int fault_on; /* a variable is set: every later question takes fault_mu */
static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static int after_set;                      /* TL_FAULT_ENOSPC_AFTER */
static uint64_t after_limit, after_used;
static char fault_path[PATH_MAX];          /* TL_FAULT_ENOSPC_FILE */
static struct {
    int present;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    uint64_t limit, used;
    unsigned scope;
} ffile;

/* A whole non-negative decimal integer; 0, or -1. */
static int parse_u64(const char *s, uint64_t *out) {
    if (!s || *s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static void fault_init(void) {
    const char *a = getenv("TL_FAULT_ENOSPC_AFTER"), *f = getenv("TL_FAULT_ENOSPC_FILE");
    if (a && *a) {
        if (parse_u64(a, &after_limit) == 0) after_set = 1;
        else fprintf(stderr, "tokenlab: TL_FAULT_ENOSPC_AFTER=%s is not a byte count; ignored\n", a);
    }
    if (f && *f) {
        if (f[0] == '/' && strlen(f) < sizeof fault_path) snprintf(fault_path, sizeof fault_path, "%s", f);
        else fprintf(stderr, "tokenlab: TL_FAULT_ENOSPC_FILE must be an absolute path; ignored\n");
    }
    fault_on = after_set || fault_path[0];
    if (fault_on)
        fprintf(stderr, "tokenlab: the full-disk switch is on (TL_FAULT_ENOSPC_AFTER=%s, TL_FAULT_ENOSPC_FILE=%s)\n",
                after_set ? a : "", fault_path);
}

/* fault_mu held: the switch file as it is now. Its content is read again whenever the file changes
 * (another file, size or modification time), and the bytes counted against it start again from 0. */
static void fault_file_refresh(void) {
    struct stat st;
    if (stat(fault_path, &st) != 0) {
        ffile.present = 0;
        return;
    }
    if (ffile.present && st.st_dev == ffile.dev && st.st_ino == ffile.ino && st.st_size == ffile.size &&
        st.st_mtim.tv_sec == ffile.mtime.tv_sec && st.st_mtim.tv_nsec == ffile.mtime.tv_nsec)
        return;
    ffile.present = 1;
    ffile.dev = st.st_dev;
    ffile.ino = st.st_ino;
    ffile.size = st.st_size;
    ffile.mtime = st.st_mtim;
    ffile.used = 0;
    ffile.limit = 0;
    ffile.scope = TL_FAULT_FILES | TL_FAULT_STORE;
    char buf[128] = "", *save = NULL;
    FILE *fp = fopen(fault_path, "r");
    if (fp) {
        size_t n = fread(buf, 1, sizeof buf - 1, fp);
        buf[n] = '\0';
        fclose(fp);
    }
    for (char *t = strtok_r(buf, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
        if (strcmp(t, "files") == 0) ffile.scope = TL_FAULT_FILES;
        else if (strcmp(t, "store") == 0) ffile.scope = TL_FAULT_STORE;
        else if (parse_u64(t, &ffile.limit) != 0) fprintf(stderr, "tokenlab: %s: '%s' ignored\n", fault_path, t);
    }
}

/* fault_mu held: the bytes the switch lets through for scope before ENOSPC (UINT64_MAX: no limit). */
static uint64_t fault_room_locked(unsigned scope) {
    uint64_t room = UINT64_MAX;
    if (after_set) room = after_used < after_limit ? after_limit - after_used : 0;
    if (fault_path[0]) {
        fault_file_refresh();
        if (ffile.present && (ffile.scope & scope)) {
            uint64_t r = ffile.used < ffile.limit ? ffile.limit - ffile.used : 0;
            if (r < room) room = r;
        }
    }
    return room;
}

int tl_fault_enospc_enabled(void) {
    pthread_once(&fault_once, fault_init);
    return fault_on;
}

size_t tl_fault_enospc_allow(unsigned scope, size_t n) {
    pthread_once(&fault_once, fault_init);
    if (!fault_on) return n;
    pthread_mutex_lock(&fault_mu);
    uint64_t room = fault_room_locked(scope);
    size_t allow = room < (uint64_t)n ? (size_t)room : n;
    after_used += allow;
    if (ffile.present && (ffile.scope & scope)) ffile.used += allow;
    pthread_mutex_unlock(&fault_mu);
    return allow;
}

uint64_t tl_fault_enospc_room(unsigned scope) {
    pthread_once(&fault_once, fault_init);
    if (!fault_on) return UINT64_MAX;
    pthread_mutex_lock(&fault_mu);
    uint64_t room = fault_room_locked(scope);
    pthread_mutex_unlock(&fault_mu);
    return room;
}

/* ---- write streams ---- */

#define STREAMS_MAX 256

typedef struct {
    int fd;
} wstream;

static pthread_mutex_t stream_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    FILE *fp;
    wstream *ws;
} streams[STREAMS_MAX];

/* The choke point: every buffer a write stream hands to its file. Writes what the full-disk switch
 * allows; a short count (with errno) tells stdio the write failed. */
static ssize_t stream_write(void *cookie, const char *buf, size_t n) {
    wstream *ws = cookie;
    size_t allow = tl_fault_enospc_allow(TL_FAULT_FILES, n), done = 0;
    while (done < allow) {
        ssize_t k = write(ws->fd, buf + done, allow - done);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return (ssize_t)done;
        done += (size_t)k;
    }
    if (done < n) errno = ENOSPC;
    return (ssize_t)done;
}

static int stream_seek(void *cookie, off64_t *off, int whence) {
    wstream *ws = cookie;
    off64_t r = lseek64(ws->fd, *off, whence);
    if (r < 0) return -1;
    *off = r;
    return 0;
}

static int stream_close(void *cookie) {
    wstream *ws = cookie;
    pthread_mutex_lock(&stream_mu);
    for (int i = 0; i < STREAMS_MAX; i++)
        if (streams[i].ws == ws) streams[i].fp = NULL, streams[i].ws = NULL;
    pthread_mutex_unlock(&stream_mu);
    int rc = close(ws->fd);
    int e = errno;
    free(ws);
    errno = e;
    return rc;
}

/* A write stream over fd, which it owns from now on (closed with the stream, or here on failure). */
static FILE *stream_open(int fd) {
    wstream *ws = malloc(sizeof *ws);
    FILE *fp = NULL;
    int slot = -1;
    if (ws) {
        pthread_mutex_lock(&stream_mu);
        for (int i = 0; i < STREAMS_MAX && slot < 0; i++)
            if (!streams[i].ws) slot = i, streams[i].ws = ws; /* reserved; fp set below */
        pthread_mutex_unlock(&stream_mu);
    }
    if (slot < 0) { /* out of memory or of table entries: a plain stream, outside the switch */
        free(ws);
        fp = fdopen(fd, "wb");
        if (!fp) {
            int e = errno;
            close(fd);
            errno = e;
        }
        return fp;
    }
    ws->fd = fd;
    cookie_io_functions_t io = {.read = NULL, .write = stream_write, .seek = stream_seek, .close = stream_close};
    fp = fopencookie(ws, "w", io);
    pthread_mutex_lock(&stream_mu);
    if (fp) streams[slot].fp = fp;
    else streams[slot].ws = NULL;
    pthread_mutex_unlock(&stream_mu);
    if (!fp) {
        int e = errno;
        close(fd);
        free(ws);
        errno = e;
    }
    return fp;
}

int tl_file_fd(FILE *fp) {
    int fd = -1;
    pthread_mutex_lock(&stream_mu);
    for (int i = 0; i < STREAMS_MAX && fd < 0; i++)
        if (streams[i].fp == fp && streams[i].ws) fd = streams[i].ws->fd;
    pthread_mutex_unlock(&stream_mu);
    return fd >= 0 ? fd : fileno(fp);
}

FILE *tl_file_open(const char *path, int append) {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
    int fd = open(path, flags, 0644);
    return fd < 0 ? NULL : stream_open(fd);
}

int tl_file_sync(FILE *fp) {
    if (fflush(fp) != 0) return -1;
    return fsync(tl_file_fd(fp));
}

/* ---- free space, full disks ---- */

int tl_errno_disk_full(int e) {
    return e == ENOSPC || e == EDQUOT;
}

int64_t tl_fs_free_bytes(const char *path) {
    struct statvfs v;
    int rc = statvfs(path, &v);
    if (rc != 0 && errno == ENOENT) { /* a file not written yet: its folder */
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir) dir[1] = '\0';
        else if (slash) *slash = '\0';
        else snprintf(dir, sizeof dir, ".");
        rc = statvfs(dir, &v);
    }
    if (rc != 0) return -1;
    uint64_t free_b = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    uint64_t room = tl_fault_enospc_room(TL_FAULT_FILES | TL_FAULT_STORE); /* a full store is a full disk too */
    if (room < free_b) free_b = room;
    return free_b > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)free_b;
}

const char *tl_format_bytes(char *buf, size_t len, int64_t n) {
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    if (n < 1024) {
        snprintf(buf, len, "%lld bytes", (long long)(n < 0 ? 0 : n));
        return buf;
    }
    double v = (double)n;
    int u = 0;
    while (v >= 1024.0 && u < 4) v /= 1024.0, u++;
    snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

const char *tl_disk_full_message(char *buf, size_t len, const char *path) {
    char fb[32];
    int64_t f = tl_fs_free_bytes(path);
    if (f >= 0)
        snprintf(buf, len, "no space left on the device for %s (%s free on its file system now)", path,
                 tl_format_bytes(fb, sizeof fb, f));
    else
        snprintf(buf, len, "no space left on the device for %s", path);
    return buf;
}

/* ---- crash-safe writes ---- */

#define TEMP_SUFFIX ".tmp.XXXXXX"

FILE *tl_file_create_temp(const char *path, char *tmp, size_t tmplen) {
    int n = snprintf(tmp, tmplen, "%s" TEMP_SUFFIX, path);
    if (n < 0 || (size_t)n >= tmplen) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    int fd = mkostemp(tmp, O_CLOEXEC); /* O_CREAT | O_EXCL, a name no one else holds */
    if (fd < 0) return NULL;
    if (fchmod(fd, 0644) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        errno = e;
        return NULL;
    }
    FILE *fp = stream_open(fd);
    if (!fp) {
        int e = errno;
        unlink(tmp);
        errno = e;
    }
    return fp;
}

int tl_file_commit(FILE *fp, const char *tmp, const char *path, const char **step) {
    const char *what = NULL;
    if (fflush(fp) != 0) what = "flush";
    else if (fsync(tl_file_fd(fp)) != 0) what = "fsync";
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
