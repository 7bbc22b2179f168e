/*
 * test_jobs.c: the daemon's job manager (server/jobs/jobs.c) with a real
 * store (SQLite under $TL_TEST_TMP), a real event bus and tiny synthetic
 * training jobs (tokenlab/synth.h; a 16 px LV-ViT of depth 1).
 *  - a submitted job runs to SUCCEEDED: its loss points (one per step), evaluations,
 *    checkpoints (rows and files), log and progress are in the store; its
 *    history is QUEUED -> RUNNING -> SUCCEEDED and its state events say the
 *    same in the same order; an idempotency key returns the same job; a bad
 *    spec is refused with a pointer and creates nothing;
 *  - cancel: a QUEUED job becomes CANCELLED at once; a RUNNING one goes
 *    through CANCELLING to CANCELLED with a checkpoint; cancelling a finished
 *    or unknown job is refused; delete refuses an unfinished job and removes
 *    a finished one with its run folder;
 *  - shutdown returns a running job to QUEUED (DAEMON_SHUTDOWN) with a
 *    checkpoint; a new manager resumes it from that step to SUCCEEDED with
 *    one loss point per step, no step twice;
 *  - recovery of jobs left RUNNING / CANCELLING by a dead daemon: re-queued
 *    as attempt+1 (DAEMON_RESTART), FAILED after max_attempts, CANCELLED;
 *  - the scheduler never runs more than max_running jobs (checked while they
 *    run and from the recorded histories) and starts them oldest first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jobs/events.h"
#include "jobs/jobs.h"
#include "store/store.h"
#include "tokenlab/model.h"
#include "tokenlab/synth.h"

static char g_root[1024], g_state[1100];
static tld_store *g_store;
static tld_events *g_ev;

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/jobs_%d", tmp ? tmp : "/tmp", (int)getpid());
    snprintf(g_state, sizeof g_state, "%s/state", g_root);
    mkdir(g_root, 0755);
    mkdir(g_state, 0755);
    char data[1100], err[512];
    snprintf(data, sizeof data, "%s/synth", g_root);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = 3;
    c.train = 24;
    c.val = 8;
    c.size = 32;
    c.map_size = 8;
    c.seed = 4;
    if (tl_synth_write(data, &c, err, sizeof err) != 0) {
        fprintf(stderr, "synth: %s\n", err);
        return -1;
    }
    char db[1200];
    snprintf(db, sizeof db, "%s/tokenlab.db", g_state);
    g_store = tld_store_open(db, err, sizeof err);
    g_ev = tld_events_new(65536);
    if (!g_store || !g_ev) {
        fprintf(stderr, "store: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tld_events_free(g_ev);
    tld_store_close(g_store);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ helpers */

static tld_jobs *manager(int max_running, int max_attempts) {
    char err[512] = "";
    tld_jobs_cfg jc = {.state_dir = g_state, .data_root = g_root, .max_running = max_running, .threads_per_job = 1,
                      .max_attempts = max_attempts};
    tld_jobs *J = tld_jobs_new(&jc, g_store, g_ev, err, sizeof err);
    if (!J) fail_msg("tld_jobs_new: %s", err);
    return J;
}

/* A training spec: 24 images in batches of 8 (3 steps per epoch), evaluation and a checkpoint every epoch. */
static void spec_json(char *buf, size_t len, const char *name, int epochs) {
    snprintf(buf, len,
             "{\"kind\":\"train\",\"name\":\"%s\",\"model\":{\"img_size\":16,\"patch_size\":4,\"embed_dim\":16,"
             "\"depth\":1,\"num_heads\":2,\"mlp_ratio\":2,\"stem_channels\":8,\"skip_lam\":1,\"num_classes\":3,"
             "\"drop_path_rate\":0},\"data\":{\"train\":\"synth/train\",\"val\":\"synth/val\","
             "\"label_maps\":\"synth/train.tllm\"},\"train\":{\"batch_size\":8,\"epochs\":%d,\"warmup_epochs\":0,"
             "\"ema_decay\":0.9,\"threads\":1,\"loader_threads\":1,\"eval_every_epochs\":1,"
             "\"checkpoint_every_epochs\":1}}",
             name, epochs);
}

static int64_t submit(tld_jobs *J, const char *name, int epochs, const char *key, int want_existed) {
    char spec[2048], err[512] = "";
    spec_json(spec, sizeof spec, name, epochs);
    int64_t id = 0;
    int existed = -1;
    tl_spec_error se = {0};
    if (tld_jobs_submit(J, spec, key, &id, &existed, &se, err, sizeof err) != 0)
        fail_msg("submit: %s: %s %s", err, se.pointer, se.message);
    assert_true(id > 0);
    assert_int_equal(existed, want_existed);
    return id;
}

static tld_job get_job(int64_t id) {
    tld_job j;
    char err[256];
    if (tld_store_job_get(g_store, id, &j, err, sizeof err) != 0) fail_msg("job %lld: %s", (long long)id, err);
    return j;
}

static tld_job_state job_state(int64_t id) {
    tld_job j = get_job(id);
    tld_job_free(&j);
    return j.state;
}

/* Waits up to 180 s for the job to reach a final state (or `want` when >= 0, or a step >= min_step). */
static tld_job wait_job(int64_t id, int want, int64_t min_step) {
    for (int i = 0; i < 18000; i++) {
        tld_job j = get_job(id);
        int done = want >= 0 ? (int)j.state == want : tld_job_state_final(j.state);
        if (done && j.step >= min_step) return j;
        if (tld_job_state_final(j.state) && want >= 0 && (int)j.state != want)
            fail_msg("job %lld ended %s (%s: %s), waiting for %s", (long long)id, tld_job_state_name(j.state),
                     j.state_reason, j.state_message, tld_job_state_name((tld_job_state)want));
        tld_job_free(&j);
        sleep_ms(10);
    }
    fail_msg("job %lld: timed out", (long long)id);
    return (tld_job){0};
}

/* The job's history as "TO/reason" strings joined by spaces. */
static void history(int64_t id, char *out, size_t len) {
    tld_state_change h[32];
    int n = 0;
    char err[256];
    assert_int_equal(tld_store_job_history(g_store, id, h, 32, &n, err, sizeof err), 0);
    out[0] = 0;
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0) assert_string_equal(h[i].from, h[i - 1].to); /* a chain: each change starts where the last ended */
        assert_true(i == 0 || h[i].time_ms >= h[i - 1].time_ms);
        o += (size_t)snprintf(out + o, len - o, "%s%s%s%s", i ? " " : "", h[i].to, h[i].reason[0] ? "/" : "",
                              h[i].reason);
    }
    assert_string_equal(h[0].from, "");
}

static int64_t metric_count(int64_t id, const char *name, int64_t *last_step) {
    tld_metric_summary ms[64];
    int n = 0;
    char err[256];
    assert_int_equal(tld_store_metric_names(g_store, id, ms, 64, &n, err, sizeof err), 0);
    for (int i = 0; i < n; i++)
        if (strcmp(ms[i].name, name) == 0) {
            if (last_step) *last_step = ms[i].last_step;
            return ms[i].count;
        }
    return 0;
}

static int file_exists(const char *dir, const char *name) {
    char p[1400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static int log_contains(int64_t id, const char *needle) {
    static char buf[1 << 20];
    size_t len = 0;
    int64_t next;
    int eof;
    char err[256];
    assert_int_equal(tld_store_log_read(g_store, id, 0, sizeof buf - 1, buf, &len, &next, &eof, err, sizeof err), 0);
    buf[len] = 0;
    return strstr(buf, needle) != NULL;
}

/* ------------------------------------------------------------------ tests */

static void test_job_runs_to_success(void **state) {
    (void)state;
    tld_jobs *J = manager(1, 3);
    uint64_t ev0 = tld_events_last_id(g_ev);
    int64_t id = submit(J, "ok", 2, "key-1", 0);
    /* the same idempotency key: the same job, nothing new */
    assert_int_equal(submit(J, "ok-again", 2, "key-1", 1), id);
    /* a bad spec: refused with a pointer, no job */
    char err[512] = "";
    tl_spec_error se = {0};
    int64_t bad = 0;
    int existed = 0;
    assert_int_equal(tld_jobs_submit(J, "{\"kind\":\"train\",\"name\":\"x\",\"model\":{\"img_size\":-3}}", NULL, &bad,
                                    &existed, &se, err, sizeof err),
                     -1);
    assert_string_equal(err, "spec");
    assert_true(se.pointer[0] == '/');
    assert_int_equal(tld_jobs_submit(J, "{\"kind\":\"train\",", NULL, &bad, &existed, &se, err, sizeof err), -1);
    assert_string_equal(err, "spec");

    tld_job j = wait_job(id, TLD_JOB_SUCCEEDED, 0);
    assert_int_equal(j.step, 6);
    assert_int_equal(j.total_steps, 6);
    assert_int_equal(j.attempt, 1);
    assert_true(j.started_ms > 0 && j.ended_ms >= j.started_ms);
    char run[1200];
    snprintf(run, sizeof run, "%s/runs/%lld", g_state, (long long)id);
    assert_string_equal(j.run_dir, run);
    tld_job_free(&j);
    assert_true(file_exists(run, "last.safetensors"));
    assert_true(file_exists(run, "best.safetensors"));
    tld_store_flush(g_store);
    /* metrics: one loss point per step, evaluations of raw and EMA weights */
    int64_t last = 0;
    assert_int_equal(metric_count(id, "loss", &last), 6);
    assert_int_equal(last, 6);
    assert_int_equal(metric_count(id, "lr", NULL), 6);
    assert_int_equal(metric_count(id, "top1", NULL), 2);
    assert_int_equal(metric_count(id, "ema_top1", NULL), 2);
    tld_checkpoint_row rows[16];
    int n = 0;
    assert_int_equal(tld_store_checkpoint_list(g_store, id, rows, 16, &n, err, sizeof err), 0);
    int lasts = 0, bests = 0;
    for (int i = 0; i < n; i++) {
        lasts += strcmp(rows[i].kind, "last") == 0;
        bests += strcmp(rows[i].kind, "best") == 0;
        assert_true(rows[i].bytes > 0);
    }
    assert_true(lasts >= 2 && bests >= 1);
    char h[512];
    history(id, h, sizeof h);
    assert_string_equal(h, "QUEUED RUNNING SUCCEEDED");
    /* the state events, in the same order */
    tld_event ev[256];
    int ne = 0;
    uint64_t next;
    char seq[256] = "";
    size_t o = 0;
    uint64_t after = ev0;
    for (;;) {
        tld_ev_status st = tld_events_wait(g_ev, after, id, ev, 256, &ne, &next, 0);
        assert_true(st == TLD_EV_OK || st == TLD_EV_TIMEOUT);
        if (ne == 0) break;
        for (int i = 0; i < ne; i++)
            if (strcmp(ev[i].type, "state") == 0) {
                const char *s = strstr(ev[i].data, "\"state\":\"");
                assert_non_null(s);
                s += 9;
                o += (size_t)snprintf(seq + o, sizeof seq - o, "%s%.*s", o ? " " : "", (int)strcspn(s, "\""), s);
            }
        after = next;
    }
    assert_string_equal(seq, "QUEUED RUNNING SUCCEEDED");
    assert_int_equal(tld_jobs_running(J), 0);
    tld_jobs_free(J);
}

static void test_cancel_queued_and_running(void **state) {
    (void)state;
    tld_jobs *J = manager(1, 3);
    char err[512] = "";
    int64_t a = submit(J, "long", 400, NULL, 0), b = submit(J, "waiting", 2, NULL, 0);
    /* b waits behind a (max_running 1) and is cancelled before it starts */
    tld_job ja = wait_job(a, TLD_JOB_RUNNING, 1);
    tld_job_free(&ja);
    assert_int_equal(job_state(b), TLD_JOB_QUEUED);
    assert_int_equal(tld_jobs_cancel(J, b, err, sizeof err), 0);
    assert_int_equal(job_state(b), TLD_JOB_CANCELLED);
    char h[512];
    history(b, h, sizeof h);
    assert_string_equal(h, "QUEUED CANCELLED/USER_CANCEL");
    /* an unfinished job cannot be deleted */
    assert_int_equal(tld_jobs_delete(J, a, err, sizeof err), -1);
    assert_non_null(strstr(err, "invalid transition"));
    /* a running one: CANCELLING, then CANCELLED after a checkpoint */
    assert_int_equal(tld_jobs_cancel(J, a, err, sizeof err), 0);
    tld_job_state st = job_state(a);
    assert_true(st == TLD_JOB_CANCELLING || st == TLD_JOB_CANCELLED);
    assert_int_equal(tld_jobs_cancel(J, a, err, sizeof err), 0); /* again while cancelling: accepted */
    ja = wait_job(a, TLD_JOB_CANCELLED, 0);
    assert_string_equal(ja.state_reason, "USER_CANCEL");
    assert_true(ja.step < 400 * 3);
    int64_t stopped = ja.step;
    char run[1100];
    snprintf(run, sizeof run, "%s", ja.run_dir);
    tld_job_free(&ja);
    int64_t ck = -1;
    char path[1300];
    snprintf(path, sizeof path, "%s/last.safetensors", run);
    assert_int_equal(tl_checkpoint_train_step(path, &ck), 1);
    assert_int_equal(ck, stopped);
    history(a, h, sizeof h);
    assert_string_equal(h, "QUEUED RUNNING CANCELLING/USER_CANCEL CANCELLED/USER_CANCEL");
    /* finished or unknown jobs */
    assert_int_equal(tld_jobs_cancel(J, a, err, sizeof err), -1);
    assert_non_null(strstr(err, "invalid transition"));
    assert_int_equal(tld_jobs_cancel(J, 999999, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    /* delete: the job and its run folder go */
    assert_int_equal(tld_jobs_delete(J, a, err, sizeof err), 0);
    assert_int_equal(access(run, F_OK), -1);
    tld_job gone;
    assert_int_equal(tld_store_job_get(g_store, a, &gone, err, sizeof err), -1);
    assert_int_equal(tld_jobs_delete(J, a, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    assert_int_equal(tld_jobs_delete(J, b, err, sizeof err), 0);
    tld_jobs_free(J);
}

static void test_shutdown_requeues_and_resumes(void **state) {
    (void)state;
    tld_jobs *J = manager(1, 3);
    const int epochs = 30;
    int64_t id = submit(J, "resumable", epochs, NULL, 0);
    tld_job j = wait_job(id, TLD_JOB_RUNNING, 2);
    tld_job_free(&j);
    tld_jobs_shutdown(J);
    tld_jobs_free(J);
    j = get_job(id);
    assert_int_equal(j.state, TLD_JOB_QUEUED);
    assert_string_equal(j.state_reason, "DAEMON_SHUTDOWN");
    int64_t stopped = j.step, ck = -1;
    assert_true(stopped >= 2 && stopped < epochs * 3);
    char path[1300];
    snprintf(path, sizeof path, "%s/last.safetensors", j.run_dir);
    tld_job_free(&j);
    assert_int_equal(tl_checkpoint_train_step(path, &ck), 1);
    assert_int_equal(ck, stopped);
    /* a new manager picks it up and finishes it */
    J = manager(1, 3);
    j = wait_job(id, TLD_JOB_SUCCEEDED, 0);
    assert_int_equal(j.step, epochs * 3);
    assert_int_equal(j.attempt, 1); /* a clean shutdown is no failed attempt */
    tld_job_free(&j);
    tld_store_flush(g_store);
    int64_t last = 0;
    assert_int_equal(metric_count(id, "loss", &last), epochs * 3); /* every step once */
    assert_int_equal(last, epochs * 3);
    char line[64];
    snprintf(line, sizeof line, "resuming from step %lld", (long long)stopped);
    assert_true(log_contains(id, line));
    char h[512];
    history(id, h, sizeof h);
    assert_string_equal(h, "QUEUED RUNNING QUEUED/DAEMON_SHUTDOWN RUNNING SUCCEEDED");
    tld_jobs_free(J);
}

static void test_recovery_after_a_crash(void **state) {
    (void)state;
    char spec[2048], err[512];
    spec_json(spec, sizeof spec, "crashed", 1);
    int64_t again, tired, cancelling;
    int existed;
    /* what a daemon killed mid-run leaves: RUNNING and CANCELLING jobs */
    assert_int_equal(tld_store_job_create(g_store, "again", spec, NULL, &again, &existed, err, sizeof err), 0);
    assert_int_equal(tld_store_job_create(g_store, "tired", spec, NULL, &tired, &existed, err, sizeof err), 0);
    assert_int_equal(tld_store_job_create(g_store, "cancelling", spec, NULL, &cancelling, &existed, err, sizeof err),
                     0);
    int64_t ids[3] = {again, tired, cancelling};
    for (int i = 0; i < 3; i++)
        assert_int_equal(tld_store_job_transition(g_store, ids[i], 1u << TLD_JOB_QUEUED, TLD_JOB_RUNNING, "", "", err,
                                                 sizeof err),
                         0);
    assert_int_equal(tld_store_job_transition(g_store, cancelling, 1u << TLD_JOB_RUNNING, TLD_JOB_CANCELLING,
                                             "USER_CANCEL", "", err, sizeof err),
                     0);
    /* two attempts in a row that began without a checkpoint: a third would be max_attempts without progress */
    assert_int_equal(tld_store_job_begin_attempt(g_store, tired, -1, err, sizeof err), 0);
    assert_int_equal(tld_store_job_begin_attempt(g_store, tired, -1, err, sizeof err), 0);
    tld_jobs *J = manager(1, 3);
    tld_job j = get_job(tired);
    assert_int_equal(j.state, TLD_JOB_FAILED);
    assert_string_equal(j.state_reason, "DAEMON_RESTART");
    tld_job_free(&j);
    assert_int_equal(job_state(cancelling), TLD_JOB_CANCELLED);
    /* re-queued as attempt 2, then it runs (from scratch: no checkpoint) */
    j = wait_job(again, TLD_JOB_SUCCEEDED, 0);
    assert_int_equal(j.attempt, 2);
    tld_job_free(&j);
    char h[512];
    history(again, h, sizeof h);
    assert_string_equal(h, "QUEUED RUNNING QUEUED/DAEMON_RESTART RUNNING SUCCEEDED");
    assert_true(log_contains(again, "no checkpoint yet, starting again"));
    tld_jobs_free(J);
}

static void test_max_running(void **state) {
    (void)state;
    enum { N = 4 };
    for (int max = 1; max <= 2; max++) {
        tld_jobs *J = manager(max, 3);
        int64_t ids[N];
        char name[32];
        for (int i = 0; i < N; i++) {
            snprintf(name, sizeof name, "par%d_%d", max, i);
            ids[i] = submit(J, name, 2, NULL, 0);
        }
        /* while they run: never more than max, in the manager and in the store */
        int seen_max = 0;
        for (int it = 0; it < 18000; it++) {
            int running = tld_jobs_running(J), finals = 0;
            for (int i = 0; i < N; i++) finals += tld_job_state_final(job_state(ids[i]));
            /* one query, one snapshot: states read job by job could see a job still RUNNING and, a moment
             * later, its successor RUNNING too */
            int64_t counts[TLD_JOB_NSTATES];
            assert_int_equal(tld_store_job_counts(g_store, counts), 0);
            int store_running = (int)counts[TLD_JOB_RUNNING];
            assert_true(running <= max);
            assert_true(store_running <= max);
            if (store_running > seen_max) seen_max = store_running;
            if (finals == N) break;
            sleep_ms(5);
        }
        for (int i = 0; i < N; i++) assert_int_equal(job_state(ids[i]), TLD_JOB_SUCCEEDED);
        /* from the histories: at no time more than max RUNNING (an end at the same millisecond as a start
         * comes first: a slot is released after its job's final state is committed) */
        int64_t start[N], end[N];
        for (int i = 0; i < N; i++) {
            tld_state_change hh[16];
            int n = 0;
            char err[256];
            assert_int_equal(tld_store_job_history(g_store, ids[i], hh, 16, &n, err, sizeof err), 0);
            assert_int_equal(n, 3);
            assert_string_equal(hh[1].to, "RUNNING");
            start[i] = hh[1].time_ms;
            end[i] = hh[2].time_ms;
        }
        for (int i = 0; i < N; i++) {
            int overlap = 0;
            for (int k = 0; k < N; k++) overlap += start[k] <= start[i] && end[k] > start[i];
            if (overlap > max) fail_msg("max_running %d: %d jobs running when job %d started", max, overlap, i);
        }
        /* oldest first: with one slot each job starts after the previous one ended */
        if (max == 1)
            for (int i = 1; i < N; i++) assert_true(start[i] >= end[i - 1]);
        else
            assert_true(start[2] >= (end[0] < end[1] ? end[0] : end[1]));
        (void)seen_max;
        tld_jobs_free(J);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_runs_to_success),
        cmocka_unit_test(test_cancel_queued_and_running),
        cmocka_unit_test(test_shutdown_requeues_and_resumes),
        cmocka_unit_test(test_recovery_after_a_crash),
        cmocka_unit_test(test_max_running),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
