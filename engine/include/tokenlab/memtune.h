/*
 * memtune.h: process-wide allocator settings for the programs built on the
 * engine (tokenlabd, tl-bench). The engine never calls this itself: how a
 * process uses malloc is the program's choice.
 *
 * Why: serving and loading allocate buffers of 0.1 to 2 MB per image (the
 * decoded JPEG, the resampler's rows, the model input). glibc hands blocks of
 * that size out with mmap and unmaps them on free, or trims its heaps, so
 * every request faults its pages in again. On virtual machines a page fault
 * costs 10 to 13 us (measured here: 330 to 345 faults, about 4 ms, per
 * lvvit_t request; decode 6.4 ms instead of 1.9 ms).
 */
#ifndef TL_MEMTUNE_H
#define TL_MEMTUNE_H

/* Serves blocks below 32 MiB from the heaps and keeps up to 512 MiB of freed
 * memory mapped, so buffers of the same sizes reuse warm pages. Larger blocks
 * (training activations, big models) are still mapped and unmapped directly.
 * Call once, before starting threads. Returns 0, or -1 if glibc refused. */
int tl_malloc_keep_pages(void);

#endif
