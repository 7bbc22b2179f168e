/*
 * pool.c: fixed pool of worker threads (see pool.h).
 *
 * Owns: n-1 worker threads and one job slot (fn, ctx) with a 64-bit claim word
 * (generation << 32 | next task). tl_pool_run splits a call into n tasks with
 * fixed ids 0..n-1 (fn sees the task id as `tid`); any thread may run any task,
 * the caller included. A task is claimed by a compare-and-swap on the claim
 * word, so a worker that is asleep or descheduled (a busy machine, or training
 * and inference sharing the cores) never holds the caller up: the caller runs
 * the unclaimed tasks itself and waits only for tasks already claimed.
 * Because task ids, not threads, decide the work split, results do not depend
 * on which thread ran what.
 *
 * Why reading fn/ctx after a successful claim is safe: the caller changes them
 * only after all n tasks of the current generation have finished, and a claim
 * of task i < n can only succeed while that generation is unfinished.
 *
 * Threads: the creating thread calls tl_pool_run; workers sleep on a condition
 * variable between calls after a short spin.
 */
#include "core/pool.h"
#include "tokenlab/base.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#define TL_POOL_MAX 256
#define TL_POOL_SPIN 4000 /* pause iterations before a worker sleeps (~0.1 ms) */

struct tl_pool {
    int n;
    pthread_t threads[TL_POOL_MAX];
    pthread_mutex_t mu;
    pthread_cond_t wake;
    _Atomic uint64_t claim; /* gen << 32 | next task */
    atomic_int done;        /* tasks finished in the current generation */
    atomic_int quit;
    tl_pool_fn fn;
    void *ctx;
};

static inline uint32_t next_of(uint64_t w) { return (uint32_t)w; }

/* Claims and runs tasks of the current generation until none is left.
 * Returns the number of tasks this thread ran. */
static int run_tasks(tl_pool *p) {
    int ran = 0;
    uint64_t w = atomic_load_explicit(&p->claim, memory_order_acquire);
    while (next_of(w) < (uint32_t)p->n) {
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* w was reloaded */
        p->fn(p->ctx, (int)next_of(w), p->n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        ran++;
        w = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
    return ran;
}

static int has_work(tl_pool *p) {
    return next_of(atomic_load_explicit(&p->claim, memory_order_acquire)) < (uint32_t)p->n;
}

/* A spin-wait hint to the core (x86 PAUSE, Arm YIELD; nothing elsewhere). */
static inline void cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static void *worker_main(void *arg) {
    tl_pool *p = arg;
    for (;;) {
        for (int spins = 0; spins < TL_POOL_SPIN && !has_work(p) && !atomic_load(&p->quit); spins++)
            cpu_relax();
        if (!has_work(p)) {
            pthread_mutex_lock(&p->mu);
            while (!has_work(p) && !atomic_load(&p->quit)) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) return NULL;
        run_tasks(p);
    }
}

tl_pool *tl_pool_new(int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > TL_POOL_MAX) nthreads = TL_POOL_MAX;
    tl_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->n = nthreads;
    atomic_init(&p->claim, (uint64_t)(uint32_t)nthreads); /* generation 0, nothing to claim */
    atomic_init(&p->done, 0);
    atomic_init(&p->quit, 0);
    int started = 1;
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&p->threads[t], NULL, worker_main, p) != 0) break;
        started++;
    }
    if (started < nthreads) {
        p->n = started; /* free() below joins only the ones that started */
        tl_pool_free(p);
        return NULL;
    }
    return p;
}

void tl_pool_free(tl_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n; t++) pthread_join(p->threads[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p);
}

int tl_pool_size(const tl_pool *p) { return p ? p->n : 1; }

void tl_pool_run(tl_pool *p, tl_pool_fn fn, void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    /* the last call's tasks were all claimed and finished: nothing can still read fn/ctx */
    if (TL_NEVER(next_of(atomic_load_explicit(&p->claim, memory_order_acquire)) < (uint32_t)p->n)) return;
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint64_t gen = (atomic_load_explicit(&p->claim, memory_order_relaxed) >> 32) + 1;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->claim, gen << 32, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p);
    /* wait for tasks other threads claimed; yield so a descheduled worker can finish */
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < p->n; spins++) {
        if (spins < TL_POOL_SPIN)
            cpu_relax();
        else
            sched_yield();
    }
    /* each of the n tasks ran exactly once */
    TL_NEVER(atomic_load_explicit(&p->done, memory_order_acquire) != p->n);
}
