/*
 * files.h: the file-system rules every layer shares (engine/core/files.c):
 * durable renames, and confinement of user-supplied paths to a root folder.
 * Pure functions; any thread.
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
/* Abandons it: closes fp (may be NULL) and removes tmp. */
void tl_file_abandon(FILE *fp, const char *tmp);
/* 1 when a file name has the form tl_file_create_temp gives ("<name>.tmp.XXXXXX"), else 0. */
int tl_file_is_temp_name(const char *name);
/* Removes the temporary files a crash left directly in folder dir (names tl_file_is_temp_name accepts);
 * for a start-up, when nothing writes there. The number removed, or -1 when dir cannot be read. */
int tl_file_remove_temps(const char *dir);

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
