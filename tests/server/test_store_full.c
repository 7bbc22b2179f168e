/*
 * test_store_full.c: tokenlabd's store when its disk is full, through the
 * full-disk switch (tokenlab/files.h: a switch file, TL_FAULT_ENOSPC_FILE,
 * set before the store opens, so its VFS shim answers SQLITE_FULL):
 *  - committed rows survive, and reads answer, while every write fails;
 *  - an awaited write fails with errno ENOSPC and tld_store_full says so;
 *  - metric points lost to the full disk are reported once, to their own job
 *    only, by tld_store_metrics_durable (ENOSPC), or forgotten;
 *  - once the file is gone, writes commit again, tld_store_full clears, and
 *    the run of failures counted once in tld_store_full_events;
 *  - the store survives close and reopen after it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "store/store.h"

static char g_switch[1100], g_db[1100];

static void set_switch(const char *content) {
    if (!content) {
        unlink(g_switch);
        return;
    }
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.new", g_switch);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(content, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, g_switch), 0);
}

static int64_t new_job(tld_store *s, const char *name) {
    char err[512] = "";
    int64_t id = 0;
    int existed = -1;
    if (tld_store_job_create(s, name, "{}", NULL, &id, &existed, err, sizeof err) != 0) fail_msg("create: %s", err);
    return id;
}

static int64_t points(tld_store *s, int64_t job, const char *name) {
    tld_metric_point p[256];
    int n = 0, bucketed = 0;
    char err[512];
    if (tld_store_metric_query(s, job, name, 0, -1, 256, p, &n, &bucketed, err, sizeof err) != 0)
        fail_msg("query: %s", err);
    return n;
}

static void add_points(tld_store *s, int64_t job, int64_t from, int64_t to) {
    for (int64_t k = from; k <= to; k++) tld_store_metric_add(s, job, "loss", k, 1.0 / (double)k, 1000 + k);
}

static void test_full_store(void **state) {
    (void)state;
    char err[512];
    set_switch(NULL);
    tld_store *s = tld_store_open(g_db, err, sizeof err);
    if (!s) fail_msg("open: %s", err);
    int64_t a = new_job(s, "a"), b = new_job(s, "b");
    add_points(s, a, 1, 10);
    add_points(s, b, 1, 10);
    assert_int_equal(tld_store_metrics_durable(s, a), 0);
    assert_int_equal(tld_store_full(s), 0);
    assert_int_equal(tld_store_full_events(s), 0);

    /* the disk is full for the store */
    set_switch("0 store");
    add_points(s, a, 11, 20);
    assert_int_equal(tld_store_metrics_durable(s, a), ENOSPC);
    assert_int_equal(tld_store_metrics_durable(s, a), 0); /* reported once */
    assert_int_equal(tld_store_full(s), 1);
    errno = 0;
    assert_int_equal(tld_store_job_transition(s, a, 1u << TLD_JOB_QUEUED, TLD_JOB_RUNNING, "", "", err, sizeof err), -1);
    assert_int_equal(errno, ENOSPC);
    if (!strstr(err, "full")) fail_msg("message: %s", err);
    /* what was committed is there, and reads answer */
    assert_int_equal(points(s, a, "loss"), 10);
    tld_job j;
    assert_int_equal(tld_store_job_get(s, a, &j, err, sizeof err), 0);
    assert_int_equal(j.state, TLD_JOB_QUEUED);
    tld_job_free(&j);
    /* b lost points too; they are forgotten instead of reported (an attempt that ended) */
    add_points(s, b, 11, 12);
    tld_store_flush(s);
    tld_store_metrics_forget(s, b);

    /* room again */
    set_switch(NULL);
    add_points(s, b, 13, 14);
    assert_int_equal(tld_store_metrics_durable(s, b), 0);
    assert_int_equal(tld_store_full(s), 0);
    assert_int_equal(tld_store_full_events(s), 1); /* one run of refused batches */
    assert_int_equal(tld_store_job_transition(s, a, 1u << TLD_JOB_QUEUED, TLD_JOB_RUNNING, "", "", err, sizeof err), 0);
    add_points(s, a, 11, 20); /* redone */
    assert_int_equal(tld_store_metrics_durable(s, a), 0);
    assert_int_equal(points(s, a, "loss"), 20);
    assert_int_equal(points(s, b, "loss"), 12); /* 1..10, 13, 14: 11 and 12 were lost */

    /* a budget: the store writes until it is spent */
    set_switch("1000000 store");
    add_points(s, b, 15, 20);
    assert_int_equal(tld_store_metrics_durable(s, b), 0);
    set_switch(NULL);
    tld_store_close(s);

    s = tld_store_open(g_db, err, sizeof err);
    if (!s) fail_msg("reopen: %s", err);
    assert_int_equal(points(s, a, "loss"), 20);
    assert_int_equal(points(s, b, "loss"), 18);
    assert_int_equal(tld_store_job_get(s, a, &j, err, sizeof err), 0);
    assert_int_equal(j.state, TLD_JOB_RUNNING);
    tld_job_free(&j);
    tld_store_close(s);
}

int main(void) {
    const char *dir = getenv("TL_TEST_TMP");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(g_switch, sizeof g_switch, "%s/test_store_full_%ld.switch", dir, (long)getpid());
    snprintf(g_db, sizeof g_db, "%s/test_store_full_%ld.db", dir, (long)getpid());
    setenv("TL_FAULT_ENOSPC_FILE", g_switch, 1); /* before the store opens: the VFS shim is installed then */
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_full_store)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char p[1200];
    unlink(g_db);
    snprintf(p, sizeof p, "%s-wal", g_db);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", g_db);
    unlink(p);
    unlink(g_switch);
    return rc;
}
