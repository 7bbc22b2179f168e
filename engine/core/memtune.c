/*
 * memtune.c: see memtune.h. No state; called once by a program's main thread.
 */
#include "tokenlab/memtune.h"

#include <malloc.h>

#define KEEP_BELOW (32 << 20) /* blocks served from the heaps: glibc's limit (half its 64 MiB heap) */
#define KEEP_FREE (512 << 20) /* freed memory kept mapped before trimming */

int tl_malloc_keep_pages(void) {
    /* Setting the thresholds explicitly also turns off glibc's dynamic mmap
     * threshold, which would otherwise move with the sizes freed. */
    int ok = mallopt(M_MMAP_THRESHOLD, KEEP_BELOW) == 1;
    ok &= mallopt(M_TRIM_THRESHOLD, KEEP_FREE) == 1;
    return ok ? 0 : -1;
}
