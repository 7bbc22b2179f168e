/*
 * test_pool.c: the thread pool runs every task of every call exactly once,
 * returns only when all are done, and keeps working when its workers are
 * starved of CPU by other busy threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/pool.h"

#define CALLS 20000
#define MAXN 8

typedef struct {
    atomic_int runs[MAXN];
    int n_seen;
    atomic_int bad_n;
    int call;
    int order[MAXN]; /* last call in which task t ran */
} job;

static void task(void *arg, int tid, int n) {
    job *j = arg;
    if (n != j->n_seen || tid < 0 || tid >= n) atomic_fetch_add(&j->bad_n, 1);
    atomic_fetch_add(&j->runs[tid], 1);
    j->order[tid] = j->call; /* distinct tids never share an element */
    volatile int spin = (tid * 37 + j->call) % 200;
    while (spin > 0) spin--;
}

static void check_pool(int nthreads) {
    tl_pool *p = tl_pool_new(nthreads);
    assert_non_null(p);
    assert_int_equal(tl_pool_size(p), nthreads);
    job j;
    memset(&j, 0, sizeof j);
    j.n_seen = nthreads;
    for (int c = 0; c < CALLS; c++) {
        j.call = c;
        tl_pool_run(p, task, &j);
        /* every task of this call has finished when tl_pool_run returns */
        for (int t = 0; t < nthreads; t++) assert_int_equal(j.order[t], c);
    }
    for (int t = 0; t < nthreads; t++) assert_int_equal(atomic_load(&j.runs[t]), CALLS);
    assert_int_equal(atomic_load(&j.bad_n), 0);
    tl_pool_free(p);
}

static void test_each_task_once(void **state) {
    (void)state;
    check_pool(1);
    check_pool(2);
    check_pool(5);
}

static atomic_int g_stop;
static void *burn(void *arg) {
    (void)arg;
    volatile unsigned long x = 0;
    while (!atomic_load(&g_stop)) x++;
    return NULL;
}

/* Three busy threads on a 2-core machine: workers get descheduled, the caller
 * must still finish every call (running unclaimed tasks itself). */
static void test_oversubscribed(void **state) {
    (void)state;
    pthread_t b[3];
    atomic_store(&g_stop, 0);
    for (int i = 0; i < 3; i++) assert_int_equal(pthread_create(&b[i], NULL, burn, NULL), 0);
    check_pool(2);
    check_pool(4);
    atomic_store(&g_stop, 1);
    for (int i = 0; i < 3; i++) pthread_join(b[i], NULL);
}

static void test_null_pool_runs_inline(void **state) {
    (void)state;
    job j;
    memset(&j, 0, sizeof j);
    j.n_seen = 1;
    tl_pool_run(NULL, task, &j);
    assert_int_equal(atomic_load(&j.runs[0]), 1);
    assert_int_equal(tl_pool_size(NULL), 1);
    size_t lo, hi, total = 0;
    for (int t = 0; t < 3; t++) {
        tl_split(10, t, 3, &lo, &hi);
        total += hi - lo;
    }
    assert_int_equal(total, 10);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_task_once),
        cmocka_unit_test(test_oversubscribed),
        cmocka_unit_test(test_null_pool_runs_inline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
