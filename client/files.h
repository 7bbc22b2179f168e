/*
 * files.h: reading the user's input files (job specs, images) into memory
 * with a size cap; "-" is standard input.
 */
#ifndef TOKENLAB_FILES_H
#define TOKENLAB_FILES_H

#include <stddef.h>

/* Reads path (or stdin for "-") into a NUL-terminated malloc'd buffer. Returns NULL after
 * printing "tokenlab CMD: cannot read PATH: why" when it cannot be read or exceeds cap bytes. */
char *files_read(const char *cmd, const char *path, size_t cap, size_t *len);

/* The last component of a path ("a/b/c.jpg" -> "c.jpg"). */
const char *files_base(const char *path);

#endif
