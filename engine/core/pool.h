/*
 * pool.h: a small fixed pool of worker threads for parallel loops.
 *
 * Owns: its threads and their wake-up state. The thread that created the pool
 * is the only one that may call tl_pool_run; it takes part in the work, so a
 * pool of n threads starts n-1 workers. Each call is split into n tasks with
 * ids 0..n-1 that any of the threads may run (pool.c explains why); workers
 * sleep on a condition variable between calls and exit in tl_pool_free.
 */
#ifndef TL_POOL_H
#define TL_POOL_H

#include <stddef.h>

typedef struct tl_pool tl_pool;

/* fn(ctx, tid, n) runs once for each task id tid in [0, n), possibly
 * concurrently on different threads; tid indexes per-task scratch. */
typedef void (*tl_pool_fn)(void *ctx, int tid, int nthreads);

tl_pool *tl_pool_new(int nthreads);      /* NULL on failure */
void tl_pool_free(tl_pool *p);
int tl_pool_size(const tl_pool *p);      /* 1 for a NULL pool */
/* Runs the n tasks of fn and returns when all are done. */
void tl_pool_run(tl_pool *p, tl_pool_fn fn, void *ctx);

/* [lo, hi) share of n items for thread tid of nt. */
static inline void tl_split(size_t n, int tid, int nt, size_t *lo, size_t *hi) {
    size_t q = n / (size_t)nt, r = n % (size_t)nt, t = (size_t)tid;
    *lo = t * q + (t < r ? t : r);
    *hi = *lo + q + (t < r ? 1 : 0);
}

#endif
