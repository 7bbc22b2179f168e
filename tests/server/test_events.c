/*
 * test_events.c: the event bus keeps order, filters by job, reports a gap
 * when a reader falls behind the ring, times out, wakes waiters on close,
 * and hands a reader every event of concurrent publishers exactly once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/events.h"

static void test_order_and_filter(void **state) {
    (void)state;
    tld_events *e = tld_events_new(64);
    assert_int_equal(tld_events_publish(e, 1, "state", "{\"state\":\"RUNNING\"}"), 1);
    assert_int_equal(tld_events_publish(e, 2, "metric", "{\"v\":1}"), 2);
    assert_int_equal(tld_events_publish(e, 1, "metric", "{\"v\":2}"), 3);
    tld_event out[8];
    int n;
    uint64_t next;
    assert_int_equal(tld_events_wait(e, 0, 1, out, 8, &n, &next, 10), TLD_EV_OK);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].id, 1);
    assert_int_equal(out[1].id, 3);
    assert_string_equal(out[1].data, "{\"v\":2}");
    assert_int_equal(next, 3);
    assert_int_equal(tld_events_wait(e, 0, 0, out, 8, &n, &next, 10), TLD_EV_OK);
    assert_int_equal(n, 3);
    /* nothing new: time out */
    assert_int_equal(tld_events_wait(e, 3, 0, out, 8, &n, &next, 20), TLD_EV_TIMEOUT);
    assert_int_equal(n, 0);
    /* too long a payload is refused, not truncated */
    char big[TLD_EVENT_DATA_LEN + 10];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(tld_events_publish(e, 1, "log", big), 0);
    assert_int_equal(tld_events_last_id(e), 3);
    tld_events_free(e);
}

static void test_gap(void **state) {
    (void)state;
    tld_events *e = tld_events_new(16);
    for (int i = 0; i < 40; i++) tld_events_publish(e, 1, "metric", "{}");
    tld_event out[64];
    int n;
    uint64_t next;
    assert_int_equal(tld_events_wait(e, 5, 0, out, 64, &n, &next, 10), TLD_EV_GAP);
    assert_int_equal(n, 16);
    assert_int_equal(out[0].id, 25); /* the oldest still held */
    assert_int_equal(next, 40);
    assert_int_equal(tld_events_wait(e, 30, 0, out, 64, &n, &next, 10), TLD_EV_OK);
    assert_int_equal(n, 10);
    tld_events_free(e);
}

static void *closer(void *arg) {
    struct timespec t = {0, 50 * 1000000L};
    nanosleep(&t, NULL);
    tld_events_close(arg);
    return NULL;
}

static void test_close_wakes(void **state) {
    (void)state;
    tld_events *e = tld_events_new(16);
    pthread_t t;
    pthread_create(&t, NULL, closer, e);
    tld_event out[4];
    int n;
    uint64_t next;
    assert_int_equal(tld_events_wait(e, 0, 0, out, 4, &n, &next, 10000), TLD_EV_CLOSED);
    pthread_join(t, NULL);
    tld_events_free(e);
}

#define PUBS 4
#define PER 5000

static void *publisher(void *arg) {
    tld_events *e = arg;
    for (int i = 0; i < PER; i++) tld_events_publish(e, 7, "metric", "{\"x\":1}");
    return NULL;
}

static void test_concurrent(void **state) {
    (void)state;
    tld_events *e = tld_events_new(PUBS * PER); /* large enough: no gap expected */
    pthread_t t[PUBS];
    for (int i = 0; i < PUBS; i++) pthread_create(&t[i], NULL, publisher, e);
    uint64_t after = 0, expect = 1;
    tld_event *out = malloc(sizeof(tld_event) * 256);
    while (expect <= PUBS * PER) {
        int n;
        uint64_t next;
        tld_ev_status st = tld_events_wait(e, after, 7, out, 256, &n, &next, 2000);
        assert_int_not_equal(st, TLD_EV_GAP);
        assert_int_not_equal(st, TLD_EV_TIMEOUT);
        for (int i = 0; i < n; i++) assert_int_equal(out[i].id, expect++);
        after = next;
    }
    for (int i = 0; i < PUBS; i++) pthread_join(t[i], NULL);
    assert_int_equal(tld_events_last_id(e), PUBS * PER);
    free(out);
    tld_events_free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_filter),
        cmocka_unit_test(test_gap),
        cmocka_unit_test(test_close_wakes),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
