/*
 * pool.c: fixed pool of worker threads (see pool.h).
 *
 * Owns: n-1 worker threads and the shared job slot (fn, ctx, generation).
 * Protocol: the owner thread publishes a job by bumping `gen` under the mutex
 * and broadcasting; each worker runs fn(ctx, tid, n) once per generation and
 * decrements `pending`; the owner runs tid 0 itself, then waits until pending
 * is 0. Workers spin briefly on `gen` before sleeping, because the engine
 * issues many short parallel loops back to back.
 */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define TL_POOL_MAX 256
#define TL_POOL_SPIN 20000

struct tl_pool {
    int n;
    pthread_t threads[TL_POOL_MAX];
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_ulong gen;
    atomic_int pending;
    int quit;
    tl_pool_fn fn;
    void *ctx;
};

typedef struct {
    tl_pool *p;
    int tid;
} worker_arg;

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    tl_pool *p = wa->p;
    int tid = wa->tid;
    free(wa);
    unsigned long seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen && spins < TL_POOL_SPIN) {
            __builtin_ia32_pause();
            spins++;
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->gen) == seen && !p->quit) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = atomic_load(&p->gen);
        tl_pool_fn fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->mu);
        fn(ctx, tid, p->n);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

tl_pool *tl_pool_new(int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > TL_POOL_MAX) nthreads = TL_POOL_MAX;
    tl_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    for (int t = 1; t < nthreads; t++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) goto fail;
        wa->p = p;
        wa->tid = t;
        if (pthread_create(&p->threads[t], NULL, worker_main, wa) != 0) {
            free(wa);
            goto fail;
        }
        p->n = t + 1;
    }
    p->n = nthreads;
    return p;
fail:
    tl_pool_free(p);
    return NULL;
}

void tl_pool_free(tl_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n; t++) pthread_join(p->threads[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p);
}

int tl_pool_size(const tl_pool *p) { return p ? p->n : 1; }

void tl_pool_run(tl_pool *p, tl_pool_fn fn, void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0) return;
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0 && spins < TL_POOL_SPIN) {
        __builtin_ia32_pause();
        spins++;
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->pending) != 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
