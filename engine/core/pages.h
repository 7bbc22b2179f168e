/*
 * pages.h: faulting memory in at once (engine/core/pages.c). Internal to the
 * engine. Any thread; no state.
 *
 * A freshly mapped buffer faults its pages in one at a time as it is first
 * written; on virtual machines a fault costs about 10 us, so filling a
 * 100 MB model or file buffer that way costs a quarter of a second of faults
 * alone. Populating the range with one madvise call does the same work in
 * bulk, several times faster.
 */
#ifndef TL_CORE_PAGES_H
#define TL_CORE_PAGES_H
#include <stddef.h>

/* Faults in the whole pages inside [p, p + n) for writing (MADV_POPULATE_WRITE). Ranges under 1 MiB are
 * left alone. A kernel without it (before Linux 5.14) or a refusal changes nothing: the pages then fault
 * in as they are touched. */
void tl_pages_populate(void *p, size_t n);

/* Zeroes [p, p + n), which must lie in a private anonymous mapping (the model's parameter blocks): the
 * whole pages inside are handed back to the kernel (MADV_DONTNEED: they read as zero and cost nothing
 * until written again), the partial pages at either end are cleared with memset; ranges under 1 MiB, or
 * a refusal, are memset entirely. */
void tl_pages_zero(void *p, size_t n);

#endif
