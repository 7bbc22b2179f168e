/*
 * fsutil.h: file-system helpers for crash-safe writes (temp file, fsync,
 * rename, fsync of the folder). Pure functions; any thread.
 */
#ifndef TL_FSUTIL_H
#define TL_FSUTIL_H

/* fsync of the folder that contains path, so a rename into it is durable.
 * Returns 0, or -1 with errno (EINVAL from a file system without folder
 * sync counts as success). */
int tl_fsync_parent_dir(const char *path);

#endif
