/*
 * files.h: the file-system rules every layer shares (engine/core/files.c):
 * durable renames, the write streams of every file the engine writes, the
 * full-disk switch for tests, free space, and confinement of user-supplied
 * paths to a root folder. Any thread.
 *
 * Write streams: tl_file_create_temp and tl_file_open return stdio streams
 * whose writes all pass one choke point in files.c, where the full-disk
 * switch can make them fail with ENOSPC. Checkpoints, label maps, annotate
 * parts, metrics files, uploads and the daemon's small files are written
 * through them. On a failed write errno says why: ENOSPC or EDQUOT
 * (tl_errno_disk_full) is a full disk, which jobs report with the reason
 * DISK_FULL and tl_disk_full_message.
 *
 * The full-disk switch (tests only; compiled in, read from the environment
 * once, off unless a variable is set):
 *   TL_FAULT_ENOSPC_AFTER=N    every write fails with ENOSPC once N bytes
 *                              have been written in the process (the file
 *                              streams and the daemon's store together).
 *   TL_FAULT_ENOSPC_FILE=PATH  (absolute) while PATH exists, writes fail
 *                              with ENOSPC once the number of bytes PATH
 *                              holds (an empty file: 0) have been written
 *                              since PATH appeared or last changed. A word
 *                              after the number limits it to "files" (the
 *                              streams here) or "store" (the daemon's SQLite
 *                              store, through its VFS shim). Removing PATH
 *                              gives the space back, without a restart.
 * While the switch holds, tl_fs_free_bytes reports no more than the bytes it
 * still lets through, so whoever waits for space waits for the switch.
 *
 * Confinement is the one copy of the rule "a path a client names stays
 * inside the data root": job specs, annotate specs, the label-map and dataset
 * routes, the dashboard's static files, annotate sidecars. A path is
 * inside when its canonical form (realpath: symbolic links followed, "." and
 * ".." resolved) is the root's canonical form or lies below it. A root of "/"
 * contains every absolute path.
 */
#ifndef TOKENLAB_FILES_H
#define TOKENLAB_FILES_H
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* fsync of the folder that contains path, so a rename into it is durable.
 * Returns 0, or -1 with errno (EINVAL from a file system without folder
 * sync counts as success). */
int tl_fsync_parent_dir(const char *path);

/* ---- crash-safe writes: a unique temporary file, fsync, rename, fsync of the folder ---- */

/* Room for the temporary name of a path of length n. */
#define TL_TEMP_NAME_LEN(n) ((n) + 16)
/* Creates the temporary file of a write to path: "<path>.tmp.XXXXXX" (six random characters), opened with
 * O_CREAT|O_EXCL (so never an existing file, nor a symbolic link planted under that name), close-on-exec,
 * mode 0644, as a FILE * for "wb". tmp (at least TL_TEMP_NAME_LEN(strlen(path)) bytes) receives its
 * name. NULL with errno. */
FILE *tl_file_create_temp(const char *path, char *tmp, size_t tmplen);
/* Finishes it: fflush, fsync and fclose fp, rename tmp over path, fsync the folder. fp is closed and,
 * on failure, tmp removed, in every case. 0, or -1 with errno and *step (may be NULL) naming the
 * operation that failed ("flush", "fsync", "close", "rename", "fsync of the folder"). */
int tl_file_commit(FILE *fp, const char *tmp, const char *path, const char **step);
/* Abandons it: closes fp (may be NULL) and removes tmp. errno is kept. */
void tl_file_abandon(FILE *fp, const char *tmp);
/* Opens path for writing as a write stream (the full-disk switch applies), mode 0644, close-on-exec:
 * append 0 creates or truncates it, 1 appends to it. Not crash-safe by itself (see tl_file_create_temp).
 * NULL with errno. */
FILE *tl_file_open(const char *path, int append);
/* fflush, then fsync of the file under fp (any stream). 0, or -1 with errno. */
int tl_file_sync(FILE *fp);
/* The file descriptor under fp: a write stream's (its fileno is -1), else fileno(fp). */
int tl_file_fd(FILE *fp);
/* 1 when a file name has the form tl_file_create_temp gives ("<name>.tmp.XXXXXX"), else 0. */
int tl_file_is_temp_name(const char *name);
/* Removes the temporary files a crash left directly in folder dir (names tl_file_is_temp_name accepts);
 * for a start-up, when nothing writes there. The number removed, or -1 when dir cannot be read. */
int tl_file_remove_temps(const char *dir);

/* ---- full disks ---- */

/* 1 when errno value e means a full disk (ENOSPC, EDQUOT), else 0. */
int tl_errno_disk_full(int e);
/* The bytes an unprivileged writer may still put on the file system holding path (path, or its folder
 * when path does not exist yet), no more than the full-disk switch lets through (either scope); -1 when
 * statvfs fails. */
int64_t tl_fs_free_bytes(const char *path);
/* n as "512 bytes", "1.5 MiB", ... into buf; returns buf. */
const char *tl_format_bytes(char *buf, size_t len, int64_t n);
/* "no space left on the device for PATH (12.0 KiB free on its file system now)" into buf; returns buf. */
const char *tl_disk_full_message(char *buf, size_t len, const char *path);

/* The full-disk switch (see the top of this file). */
#define TL_FAULT_FILES 1u /* the write streams of this file */
#define TL_FAULT_STORE 2u /* the daemon's SQLite store */
/* 1 when a variable of the switch is set (read once), else 0. */
int tl_fault_enospc_enabled(void);
/* How many of the next n bytes a writer of scope may write before the switch fails it with ENOSPC (n when
 * the switch is off); the bytes allowed are counted as written. */
size_t tl_fault_enospc_allow(unsigned scope, size_t n);
/* The bytes the switch still lets through for scope; UINT64_MAX when nothing limits them. */
uint64_t tl_fault_enospc_room(unsigned scope);

/* 1 when the canonical path `real` is `root_real` or lies below it, both
 * already canonical (no trailing '/', except the root "/" itself); else 0.
 * A prefix that stops inside a name ("/data" and "/database") is not inside. */
int tl_path_is_inside(const char *real, const char *root_real);

/* What tl_path_confine found. */
typedef enum {
    TL_PATH_OK = 0,
    TL_PATH_EMPTY,       /* "" */
    TL_PATH_TOO_LONG,    /* the joined path does not fit PATH_MAX */
    TL_PATH_ABSOLUTE,    /* starts with '/' */
    TL_PATH_DOTDOT,      /* has a ".." component */
    TL_PATH_NOT_FOUND,   /* it, or a folder on its way, does not exist */
    TL_PATH_UNRESOLVED,  /* realpath failed otherwise (permissions, a loop of links, ...) */
    TL_PATH_OUTSIDE,     /* resolves outside the root (a symbolic link leads out) */
    TL_PATH_NOT_DIR,     /* want TL_PATH_WANT_DIR, found something else */
    TL_PATH_NOT_FILE,    /* want TL_PATH_WANT_FILE, found something else */
} tl_path_status;

#define TL_PATH_WANT_ANY 0  /* anything that exists */
#define TL_PATH_WANT_DIR 1  /* a folder */
#define TL_PATH_WANT_FILE 2 /* a regular file */

/* Resolves rel, a path relative to the folder whose canonical path is
 * root_real, into out (PATH_MAX bytes, canonical) when it stays inside the
 * root and is of the kind wanted. rel must be relative and free of ".."
 * components (refused before touching the file system, whatever they would
 * resolve to). The root itself is "." or "". Returns TL_PATH_OK or the
 * reason; out is written only on success. */
tl_path_status tl_path_confine(const char *root_real, const char *rel, int want, char *out);

/* The same for a path that is already absolute or already joined to the
 * root (a file found while walking a folder): canonicalised, then checked to
 * lie inside root_real and to be of the kind wanted. */
tl_path_status tl_path_confine_abs(const char *root_real, const char *path, int want, char *out);

/* A short English phrase for a status ("resolves outside the data root (a
 * symbolic link leads out of it)", ...), for error messages. */
const char *tl_path_status_str(tl_path_status s);

#ifdef __cplusplus
}
#endif
#endif
