/*
 * pages.c: see pages.h. No state; any thread.
 */
#include "core/pages.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

void tl_pages_zero(void *p, size_t n) {
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096;
    uintptr_t a = (uintptr_t)p, lo = (a + page - 1) & ~(page - 1), hi = (a + n) & ~(page - 1);
    if (n < ((size_t)1 << 20) || hi <= lo || madvise((void *)lo, hi - lo, MADV_DONTNEED) != 0) {
        memset(p, 0, n);
        return;
    }
    memset(p, 0, lo - a);
    memset((void *)hi, 0, a + n - hi);
}

void tl_pages_populate(void *p, size_t n) {
    if (!p || n < ((size_t)1 << 20)) return;
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096;
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + n) & ~(page - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
}
