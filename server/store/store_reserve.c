/*
 * store_reserve.c: the store's reserve, room kept for the store's own
 * writes on a full disk.
 *
 * Owns <database>.reserve, a file of STORE_RESERVE_BYTES allocated beside
 * the database (posix_fallocate: blocks, not a sparse file). When a write
 * batch meets SQLITE_FULL, the writer gives those blocks back to the file
 * system (the file is removed), so that what the daemon must record on a
 * full disk (a job paused with DISK_FULL, the points it drops) can be
 * written on the next try, and makes the file again once the file system has
 * room for it and as much again, looked at most every STORE_RESERVE_RETRY_MS.
 * While it is missing, tld_store_reserve_missing says how much, so that the
 * scheduler resumes a paused job only when its room and the reserve's fit.
 *
 * Threads: made first by tld_store_open, then only by the writer thread;
 * reserve_missing is read by any thread (atomic).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_internal.h"
#include "tokenlab/base.h"
#include "tokenlab/files.h"

#define STORE_RESERVE_RETRY_MS 5000

void tld_store_reserve_make(tld_store *s) {
    if (!atomic_load(&s->reserve_missing) || !s->reserve_path) return;
    int64_t now = tl_clock_mono_ms();
    if (now < s->reserve_next_ms) return;
    s->reserve_next_ms = now + STORE_RESERVE_RETRY_MS;
    struct stat st;
    if (stat(s->reserve_path, &st) == 0 && st.st_size >= STORE_RESERVE_BYTES &&
        (int64_t)st.st_blocks * 512 >= STORE_RESERVE_BYTES) { /* kept from before: allocated already */
        atomic_store(&s->reserve_missing, 0);
        return;
    }
    int64_t free_b = tl_fs_free_bytes(s->reserve_path);
    if (free_b >= 0 && free_b < 2 * STORE_RESERVE_BYTES) return;
    int fd = open(s->reserve_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    int rc = fd < 0 ? errno : posix_fallocate(fd, 0, STORE_RESERVE_BYTES);
    if (fd >= 0) close(fd);
    if (rc != 0) {
        unlink(s->reserve_path);
        return;
    }
    atomic_store(&s->reserve_missing, 0);
}

void tld_store_reserve_release(tld_store *s) {
    if (atomic_load(&s->reserve_missing) || !s->reserve_path) return;
    if (unlink(s->reserve_path) != 0 && errno != ENOENT) {
        tld_store_report("cannot release the reserve %s: %s", s->reserve_path, strerror(errno));
        return;
    }
    atomic_store(&s->reserve_missing, STORE_RESERVE_BYTES);
    s->reserve_next_ms = tl_clock_mono_ms() + STORE_RESERVE_RETRY_MS;
    tld_store_report("the disk is full: the reserve (%lld bytes) was released for the store's writes",
                     (long long)STORE_RESERVE_BYTES);
}

int64_t tld_store_reserve_missing(tld_store *s) {
    return atomic_load(&s->reserve_missing);
}
