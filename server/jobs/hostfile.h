/*
 * hostfile.h: the operator's Open MPI hostfile (tokenlabd serve
 * --mpi-hostfile FILE), read once at start: which hosts a distributed job
 * may run on and how many ranks (slots) each takes.
 *
 * hostfile.c owns the one rule of the format the daemon accepts: one host
 * per line, `host [slots=K]` (K in 1..1024; without slots=K a host counts
 * one slot), '#' starts a comment, blank lines are skipped; a host listed
 * twice, any other field, a line longer than TLD_HOSTFILE_LINE bytes or
 * more than TLD_HOSTFILE_HOSTS hosts are refused with the line number.
 * Pure functions over the caller's struct: any thread.
 */
#ifndef TLD_HOSTFILE_H
#define TLD_HOSTFILE_H

#include <stddef.h>

#define TLD_HOSTFILE_HOSTS 256
#define TLD_HOSTFILE_LINE 1024
#define TLD_HOST_LEN 256

typedef struct {
    int n;                    /* hosts, in file order */
    int total_slots;
    char host[TLD_HOSTFILE_HOSTS][TLD_HOST_LEN];
    int slots[TLD_HOSTFILE_HOSTS];
} tld_hostfile;

/* Parses len bytes of text (NUL not required) into *out: 0, or -1 with a message naming the line and the
 * rule. A file with no host is refused. */
int tld_hostfile_parse(const char *text, size_t len, tld_hostfile *out, char *err, size_t errlen);
/* Reads and parses the file at path (at most 1 MiB): 0, or -1 with a message naming the file. */
int tld_hostfile_load(const char *path, tld_hostfile *out, char *err, size_t errlen);

#endif
