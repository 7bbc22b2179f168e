/*
 * test_store.c: tokenlabd's SQLite store (server/store/store.c, schema/store.sql).
 *
 * Jobs (create, get, list newest first with a state filter and before_id
 * pages, idempotency keys, every pair of the state machine, times, queue
 * position, counts, delete with everything that belongs to the job),
 * metrics (upsert, summaries, raw and bucketed queries checked against a
 * naive computation, truncation, NaN), the timing of a bucketed query over
 * 1,000,000 points (printed, not asserted), logs read in slices across
 * chunk boundaries, checkpoints, durability across close and reopen, refusal
 * of a newer schema and of a foreign database, queued-write failures
 * reported by flush, four threads writing and reading at once, and the
 * embedded schema text equal to schema/store.sql.
 *
 * Database files go to $TL_TEST_TMP (set by ctest), else /tmp; some checks
 * open the file directly with SQLite to look at the tables.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "store/store.h"
#include "store/store_schema.h"

/* ------------------------------------------------------------------ helpers */

static void db_path(char *buf, size_t n, const char *name) {
    const char *dir = getenv("TL_TEST_TMP");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(buf, n, "%s/test_store_%ld_%s.db", dir, (long)getpid(), name);
}

static void remove_db(const char *path) {
    char p[1100];
    remove(path);
    snprintf(p, sizeof p, "%s-wal", path);
    remove(p);
    snprintf(p, sizeof p, "%s-shm", path);
    remove(p);
}

/* A new store on a fresh file; path receives the file's name. */
static tld_store *open_fresh(const char *name, char *path, size_t n) {
    char err[512] = "";
    db_path(path, n, name);
    remove_db(path);
    tld_store *s = tld_store_open(path, err, sizeof err);
    if (!s) fail_msg("tld_store_open(%s): %s", path, err);
    return s;
}

static int64_t new_job(tld_store *s, const char *name) {
    char err[512] = "";
    int64_t id = 0;
    int existed = -1;
    if (tld_store_job_create(s, name, "{\"model\":\"lvvit-t\"}", NULL, &id, &existed, err, sizeof err) != 0)
        fail_msg("job create: %s", err);
    assert_int_equal(existed, 0);
    assert_true(id > 0);
    return id;
}

static void transition_ok(tld_store *s, int64_t id, tld_job_state from, tld_job_state to) {
    char err[512] = "";
    if (tld_store_job_transition(s, id, 1u << from, to, "", "", err, sizeof err) != 0)
        fail_msg("transition %s -> %s: %s", tld_job_state_name(from), tld_job_state_name(to), err);
}

static tld_job_state job_state(tld_store *s, int64_t id) {
    char err[512] = "";
    tld_job j;
    if (tld_store_job_get(s, id, &j, err, sizeof err) != 0) fail_msg("job get %lld: %s", (long long)id, err);
    tld_job_state st = j.state;
    tld_job_free(&j);
    return st;
}

/* One integer from SQL run directly on the file (printf-style). */
static int64_t sql_int(const char *path, const char *fmt, ...) {
    char sql[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void sql_exec(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    char *msg = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void flush_ok(tld_store *s) {
    assert_int_equal(tld_store_flush(s), 0);
}

/* ------------------------------------------------------------------ schema */

static void check_embedded(const char *file, const char *text, size_t text_len) {
    char path[4096];
    const char *f = __FILE__;
    const char *slash = strrchr(f, '/');
    snprintf(path, sizeof path, "%.*s/../../schema/%s", slash ? (int)(slash - f) : 1, slash ? f : ".", file);
    FILE *fp = fopen(path, "rb");
    if (!fp) fail_msg("cannot open %s", path);
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    len = fread(buf, 1, cap, fp);
    fclose(fp);
    assert_true(len < cap);
    size_t i = 0, line = 1;
    while (i < len && i < text_len && buf[i] == text[i]) line += buf[i++] == '\n';
    if (i != len || len != text_len)
        fail_msg("the embedded schema (generated/store_schema.c) differs from %s at byte %zu (line %zu; file %zu bytes, embedded %zu)", path,
                 i, line, len, text_len);
    free(buf);
}

static void test_schema_embedded_equals_file(void **state) {
    (void)state;
    check_embedded("store.sql", tld_store_schema_v1, tld_store_schema_v1_len);
    check_embedded("store_v2.sql", tld_store_schema_v2, tld_store_schema_v2_len);
    check_embedded("store_v3.sql", tld_store_schema_v3, tld_store_schema_v3_len);
    check_embedded("store_v4.sql", tld_store_schema_v4, tld_store_schema_v4_len);
    check_embedded("store_v5.sql", tld_store_schema_v5, tld_store_schema_v5_len);
    check_embedded("store_v6.sql", tld_store_schema_v6, tld_store_schema_v6_len);
}

static void test_version_and_refusals(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("version", path, sizeof path);
    assert_int_equal(tld_store_schema_version(s), 6);
    int64_t id = new_job(s, "v");
    tld_store_close(s);
    assert_int_equal(sql_int(path, "SELECT version FROM schema_version"), 6);

    /* Reopening a current file applies nothing and keeps the data. */
    s = tld_store_open(path, err, sizeof err);
    if (!s) fail_msg("reopen: %s", err);
    assert_int_equal(job_state(s, id), TLD_JOB_QUEUED);
    tld_store_close(s);

    /* A file from a newer tokenlabd is refused, and left as it is. */
    sql_exec(path, "UPDATE schema_version SET version = 7");
    err[0] = '\0';
    s = tld_store_open(path, err, sizeof err);
    if (s) tld_store_close(s);
    assert_null(s);
    if (!strstr(err, "newer")) fail_msg("message \"%s\" does not say newer", err);
    printf("  newer schema refused: %s\n", err);
    assert_int_equal(sql_int(path, "SELECT version FROM schema_version"), 7);

    /* A version 1 file (made by an older tokenlabd) is migrated to version 6, its jobs kept. */
    char v1[1024];
    db_path(v1, sizeof v1, "v1");
    remove_db(v1);
    sql_exec(v1, tld_store_schema_v1);
    sql_exec(v1, "INSERT INTO jobs (name, spec_json, state_changed_ms, created_ms) VALUES ('old', '{}', 1, 1)");
    s = tld_store_open(v1, err, sizeof err);
    if (!s) fail_msg("migrating a version 1 file: %s", err);
    assert_int_equal(tld_store_schema_version(s), 6);
    tld_store_close(s);
    assert_int_equal(sql_int(v1, "SELECT version FROM schema_version"), 6);
    assert_int_equal(sql_int(v1, "SELECT count(*) FROM jobs WHERE name = 'old'"), 1);
    assert_int_equal(sql_int(v1, "SELECT count(*) FROM sqlite_master WHERE name IN ('models', 'inspect_sets', "
                                 "'inspect_samples', 'inspect_preds', 'job_inits', 'job_dist', 'api_tokens')"), 7);
    remove_db(v1);

    /* A version 2 file (the tokenlabd before fine-tuning) is migrated to version 6: its jobs and models kept. */
    char v2[1024];
    db_path(v2, sizeof v2, "v2");
    remove_db(v2);
    sql_exec(v2, tld_store_schema_v1);
    sql_exec(v2, tld_store_schema_v2);
    sql_exec(v2, "UPDATE schema_version SET version = 2 WHERE id = 1");
    sql_exec(v2, "INSERT INTO jobs (name, spec_json, state_changed_ms, created_ms) VALUES ('old2', '{}', 1, 1)");
    sql_exec(v2, "INSERT INTO models (name, source_kind, path, bytes, labels_json, crop_pct, max_batch, max_delay_ms, "
                 "max_queue, created_ms) VALUES ('m', 'upload', '/x', 1, '[]', 0.9, 8, 5, 64, 1)");
    s = tld_store_open(v2, err, sizeof err);
    if (!s) fail_msg("migrating a version 2 file: %s", err);
    assert_int_equal(tld_store_schema_version(s), 6);
    tld_store_close(s);
    assert_int_equal(sql_int(v2, "SELECT version FROM schema_version"), 6);
    assert_int_equal(sql_int(v2, "SELECT count(*) FROM jobs WHERE name = 'old2'"), 1);
    assert_int_equal(sql_int(v2, "SELECT count(*) FROM models WHERE name = 'm'"), 1);
    assert_int_equal(sql_int(v2, "SELECT count(*) FROM sqlite_master WHERE name = 'job_inits'"), 1);
    remove_db(v2);

    /* A database that is not a store is refused. */
    char other[1024];
    db_path(other, sizeof other, "foreign");
    remove_db(other);
    sql_exec(other, "CREATE TABLE t (x)");
    err[0] = '\0';
    s = tld_store_open(other, err, sizeof err);
    if (s) tld_store_close(s);
    assert_null(s);
    if (!strstr(err, "not a tokenlabd store")) fail_msg("message \"%s\"", err);

    /* A folder that does not exist. */
    err[0] = '\0';
    s = tld_store_open("/nonexistent-folder-tokenlab/x.db", err, sizeof err);
    assert_null(s);
    assert_true(err[0] != '\0');
    remove_db(path);
    remove_db(other);
}

static void test_pragmas(void **state) {
    (void)state;
    char path[1024];
    tld_store *s = open_fresh("pragmas", path, sizeof path);
    new_job(s, "p");
    tld_store_close(s);
    assert_true(sql_int(path, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'") == 1);
    remove_db(path);
}

/* ------------------------------------------------------------------ jobs */

static void test_job_create_get_list(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("jobs", path, sizeof path);
    const char *spec = "{ \"name\": \"caf\xc3\xa9\",\n  \"steps\" : 10 }  ";
    int64_t ids[6];
    for (int i = 0; i < 6; i++) {
        char name[32];
        snprintf(name, sizeof name, "job-%d", i);
        int existed = -1;
        assert_int_equal(tld_store_job_create(s, name, spec, NULL, &ids[i], &existed, err, sizeof err), 0);
        assert_int_equal(existed, 0);
        if (i) assert_true(ids[i] > ids[i - 1]);
    }
    tld_job j;
    assert_int_equal(tld_store_job_get(s, ids[2], &j, err, sizeof err), 0);
    assert_int_equal(j.id, ids[2]);
    assert_string_equal(j.name, "job-2");
    assert_string_equal(j.spec_json, spec);
    assert_int_equal(j.state, TLD_JOB_QUEUED);
    assert_string_equal(j.state_reason, "");
    assert_true(j.created_ms > 1600000000000LL);
    assert_int_equal(j.started_ms, 0);
    assert_int_equal(j.ended_ms, 0);
    assert_int_equal(j.attempt, 1);
    assert_true(j.eta_seconds == -1);
    assert_string_equal(j.idempotency_key, "");
    assert_string_equal(j.run_dir, "");
    tld_job_free(&j);
    assert_null(j.spec_json);

    /* Not found. */
    assert_int_equal(tld_store_job_get(s, 999999, &j, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));

    /* Newest first, in pages. */
    tld_job list[4];
    int n = -1;
    assert_int_equal(tld_store_job_list(s, -1, 0, 4, list, &n, err, sizeof err), 0);
    assert_int_equal(n, 4);
    for (int i = 0; i < 4; i++) assert_int_equal(list[i].id, ids[5 - i]);
    int64_t cursor = list[3].id;
    for (int i = 0; i < n; i++) tld_job_free(&list[i]);
    assert_int_equal(tld_store_job_list(s, -1, cursor, 4, list, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(list[0].id, ids[1]);
    assert_int_equal(list[1].id, ids[0]);
    for (int i = 0; i < n; i++) tld_job_free(&list[i]);

    /* State filter. */
    transition_ok(s, ids[1], TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    transition_ok(s, ids[4], TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    assert_int_equal(tld_store_job_list(s, TLD_JOB_RUNNING, 0, 4, list, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(list[0].id, ids[4]);
    assert_int_equal(list[1].id, ids[1]);
    assert_int_equal(list[0].state, TLD_JOB_RUNNING);
    for (int i = 0; i < n; i++) tld_job_free(&list[i]);
    assert_int_equal(tld_store_job_list(s, TLD_JOB_RUNNING, ids[4], 4, list, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].id, ids[1]);
    tld_job_free(&list[0]);
    assert_int_equal(tld_store_job_list(s, TLD_JOB_QUEUED, 0, 4, list, &n, err, sizeof err), 0);
    assert_int_equal(n, 4);
    assert_int_equal(list[0].id, ids[5]);
    assert_int_equal(list[3].id, ids[0]);
    for (int i = 0; i < n; i++) tld_job_free(&list[i]);
    assert_int_equal(tld_store_job_list(s, TLD_JOB_FAILED, 0, 4, list, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);

    /* Refusals before anything is queued. */
    char longname[200];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    int64_t id;
    assert_int_equal(tld_store_job_create(s, longname, spec, NULL, &id, NULL, err, sizeof err), -1);
    assert_int_equal(tld_store_job_create(s, "", spec, NULL, &id, NULL, err, sizeof err), -1);
    assert_int_equal(tld_store_job_create(s, "x", NULL, NULL, &id, NULL, err, sizeof err), -1);

    /* Run dir and attempts. */
    assert_int_equal(tld_store_job_set_run_dir(s, ids[0], "/var/lib/tokenlab/runs/1", err, sizeof err), 0);
    assert_int_equal(tld_store_job_begin_attempt(s, ids[0], -1, err, sizeof err), 0);
    assert_int_equal(tld_store_job_begin_attempt(s, ids[0], -1, err, sizeof err), 0);
    assert_int_equal(tld_store_job_set_progress(s, ids[0], 3, 1200, 5000, 42.5), 0);
    flush_ok(s);
    assert_int_equal(tld_store_job_get(s, ids[0], &j, err, sizeof err), 0);
    assert_string_equal(j.run_dir, "/var/lib/tokenlab/runs/1");
    assert_int_equal(j.attempt, 3);
    assert_int_equal(j.stalled_attempts, 2); /* neither attempt began past a checkpoint */
    assert_int_equal(j.attempt_mark, -1);
    assert_int_equal(j.epoch, 3);
    assert_int_equal(j.step, 1200);
    assert_int_equal(j.total_steps, 5000);
    assert_true(j.eta_seconds == 42.5);
    tld_job_free(&j);
    /* an attempt that begins past the previous one's mark resets the count; one from the same mark adds */
    assert_int_equal(tld_store_job_begin_attempt(s, ids[0], 120, err, sizeof err), 0);
    assert_int_equal(tld_store_job_begin_attempt(s, ids[0], 120, err, sizeof err), 0);
    flush_ok(s);
    assert_int_equal(tld_store_job_get(s, ids[0], &j, err, sizeof err), 0);
    assert_int_equal(j.attempt, 5);
    assert_int_equal(j.attempt_mark, 120);
    assert_int_equal(j.stalled_attempts, 1);
    tld_job_free(&j);
    assert_int_equal(tld_store_job_begin_attempt(s, ids[0], 240, err, sizeof err), 0);
    flush_ok(s);
    assert_int_equal(tld_store_job_get(s, ids[0], &j, err, sizeof err), 0);
    assert_int_equal(j.stalled_attempts, 0);
    assert_int_equal(j.attempt_mark, 240);
    tld_job_free(&j);
    assert_int_equal(tld_store_job_set_run_dir(s, 999999, "/x", err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    assert_int_equal(tld_store_job_begin_attempt(s, 999999, -1, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    tld_store_close(s);
    remove_db(path);
}

static void test_idempotency_key(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("idem", path, sizeof path);
    int64_t a = 0, b = 0, c = 0, d = 0, e = 0;
    int existed = -1;
    assert_int_equal(tld_store_job_create(s, "a", "{}", "key-1", &a, &existed, err, sizeof err), 0);
    assert_int_equal(existed, 0);
    assert_int_equal(tld_store_job_create(s, "a again", "{\"other\":1}", "key-1", &b, &existed, err, sizeof err), 0);
    assert_int_equal(existed, 1);
    assert_int_equal(b, a);
    assert_int_equal(tld_store_job_create(s, "c", "{}", "key-2", &c, &existed, err, sizeof err), 0);
    assert_int_equal(existed, 0);
    assert_true(c != a);
    /* No key (NULL or empty): a new job each time. */
    assert_int_equal(tld_store_job_create(s, "d", "{}", NULL, &d, &existed, err, sizeof err), 0);
    assert_int_equal(tld_store_job_create(s, "e", "{}", "", &e, &existed, err, sizeof err), 0);
    assert_int_equal(existed, 0);
    assert_true(d != e);
    tld_job j;
    assert_int_equal(tld_store_job_get(s, a, &j, err, sizeof err), 0);
    assert_string_equal(j.name, "a");
    assert_string_equal(j.spec_json, "{}");
    assert_string_equal(j.idempotency_key, "key-1");
    tld_job_free(&j);
    /* The key still names the job once it has finished. */
    transition_ok(s, a, TLD_JOB_QUEUED, TLD_JOB_CANCELLED);
    assert_int_equal(tld_store_job_create(s, "a3", "{}", "key-1", &b, &existed, err, sizeof err), 0);
    assert_int_equal(existed, 1);
    assert_int_equal(b, a);
    tld_store_close(s);
    remove_db(path);
}

static const int allowed[TLD_JOB_NSTATES][TLD_JOB_NSTATES] = {
    /* to:          Q  R  Cg S  F  Cd */
    [TLD_JOB_QUEUED] = {0, 1, 0, 0, 1, 1},
    [TLD_JOB_RUNNING] = {1, 0, 1, 1, 1, 0},
    [TLD_JOB_CANCELLING] = {1, 0, 0, 1, 1, 1},
};

/* Drives a new job to state st along allowed transitions. */
static int64_t job_in_state(tld_store *s, tld_job_state st) {
    int64_t id = new_job(s, "sm");
    switch (st) {
    case TLD_JOB_QUEUED:
        break;
    case TLD_JOB_RUNNING:
        transition_ok(s, id, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
        break;
    case TLD_JOB_CANCELLING:
        transition_ok(s, id, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
        transition_ok(s, id, TLD_JOB_RUNNING, TLD_JOB_CANCELLING);
        break;
    case TLD_JOB_SUCCEEDED:
        transition_ok(s, id, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
        transition_ok(s, id, TLD_JOB_RUNNING, TLD_JOB_SUCCEEDED);
        break;
    case TLD_JOB_FAILED:
    case TLD_JOB_CANCELLED:
        transition_ok(s, id, TLD_JOB_QUEUED, st);
        break;
    default:
        fail();
    }
    assert_int_equal(job_state(s, id), st);
    return id;
}

static void test_state_machine_every_pair(void **state) {
    (void)state;
    char path[1024], err[512];
    tld_store *s = open_fresh("machine", path, sizeof path);
    for (int from = 0; from < TLD_JOB_NSTATES; from++) {
        for (int to = 0; to < TLD_JOB_NSTATES; to++) {
            int64_t id = job_in_state(s, (tld_job_state)from);
            err[0] = '\0';
            /* Even a mask naming every state cannot force a transition the machine forbids. */
            int rc = tld_store_job_transition(s, id, 0x3Fu, (tld_job_state)to, "TEST", "every pair", err, sizeof err);
            if (allowed[from][to]) {
                if (rc != 0) fail_msg("%s -> %s refused: %s", tld_job_state_name(from), tld_job_state_name(to), err);
                assert_int_equal(job_state(s, id), to);
            } else {
                if (rc == 0) fail_msg("%s -> %s accepted", tld_job_state_name(from), tld_job_state_name(to));
                if (!strstr(err, "invalid transition")) fail_msg("message \"%s\"", err);
                assert_int_equal(job_state(s, id), from);
            }
        }
    }
    /* A mask that does not hold the current state. */
    int64_t id = job_in_state(s, TLD_JOB_RUNNING);
    assert_int_equal(tld_store_job_transition(s, id, 1u << TLD_JOB_QUEUED, TLD_JOB_FAILED, "", "", err, sizeof err), -1);
    assert_non_null(strstr(err, "invalid transition"));
    assert_non_null(strstr(err, "RUNNING"));
    assert_int_equal(job_state(s, id), TLD_JOB_RUNNING);
    assert_int_equal(tld_store_job_transition(s, 999999, 0x3Fu, TLD_JOB_RUNNING, "", "", err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    assert_int_equal(tld_store_job_transition(s, id, 0x3Fu, TLD_JOB_NSTATES, "", "", err, sizeof err), -1);

    /* The schema refuses a forbidden change even from outside store.c. */
    char sql[256];
    int64_t done = job_in_state(s, TLD_JOB_SUCCEEDED);
    tld_store_close(s);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    snprintf(sql, sizeof sql, "UPDATE jobs SET state = 'RUNNING' WHERE id = %lld", (long long)done);
    assert_int_not_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_not_equal(
        sqlite3_exec(db, "INSERT INTO jobs (name, spec_json, state, state_changed_ms, created_ms) "
                         "VALUES ('x', '{}', 'RUNNING', 1, 1)", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    remove_db(path);
}

static void test_transition_times_and_history(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("times", path, sizeof path);
    int64_t id = new_job(s, "t");
    tld_job j;
    assert_int_equal(tld_store_job_transition(s, id, 1u << TLD_JOB_QUEUED, TLD_JOB_RUNNING, "", NULL, err, sizeof err), 0);
    assert_int_equal(tld_store_job_get(s, id, &j, err, sizeof err), 0);
    assert_true(j.started_ms >= j.created_ms);
    assert_int_equal(j.ended_ms, 0);
    tld_job_free(&j);
    /* Re-queued on shutdown, then run again. */
    assert_int_equal(tld_store_job_transition(s, id, 1u << TLD_JOB_RUNNING, TLD_JOB_QUEUED, "DAEMON_RESTART",
                                             "tokenlabd stopped", err, sizeof err),
                     0);
    assert_int_equal(tld_store_job_get(s, id, &j, err, sizeof err), 0);
    assert_string_equal(j.state_reason, "DAEMON_RESTART");
    assert_string_equal(j.state_message, "tokenlabd stopped");
    assert_int_equal(j.ended_ms, 0);
    tld_job_free(&j);
    transition_ok(s, id, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    assert_int_equal(tld_store_job_transition(s, id, (1u << TLD_JOB_RUNNING) | (1u << TLD_JOB_QUEUED), TLD_JOB_CANCELLING,
                                             "USER_CANCEL", "cancelled by user", err, sizeof err),
                     0);
    char longmsg[2000];
    memset(longmsg, 'm', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = '\0';
    assert_int_equal(tld_store_job_transition(s, id, 1u << TLD_JOB_CANCELLING, TLD_JOB_CANCELLED, "USER_CANCEL",
                                             longmsg, err, sizeof err),
                     0);
    assert_int_equal(tld_store_job_get(s, id, &j, err, sizeof err), 0);
    assert_int_equal(j.state, TLD_JOB_CANCELLED);
    assert_true(j.ended_ms >= j.started_ms && j.started_ms > 0);
    assert_string_equal(j.state_reason, "USER_CANCEL");
    assert_int_equal(strlen(j.state_message), sizeof j.state_message - 1);
    tld_job_free(&j);
    /* A reason that does not fit is refused. */
    int64_t other = new_job(s, "o");
    assert_int_equal(tld_store_job_transition(s, other, 1u << TLD_JOB_QUEUED, TLD_JOB_RUNNING,
                                             "A_REASON_FAR_TOO_LONG_FOR_THIRTY_ONE_BYTES", "", err, sizeof err),
                     -1);
    assert_int_equal(job_state(s, other), TLD_JOB_QUEUED);
    tld_store_close(s);

    /* History: created, then five changes, in order. */
    assert_int_equal(sql_int(path, "SELECT count(*) FROM state_transitions WHERE job_id = %lld", (long long)id), 6);
    assert_int_equal(sql_int(path,
                             "SELECT count(*) FROM state_transitions WHERE job_id = %lld AND from_state IS NULL "
                             "AND to_state = 'QUEUED'",
                             (long long)id),
                     1);
    assert_int_equal(sql_int(path,
                             "SELECT count(*) FROM state_transitions WHERE job_id = %lld AND from_state = 'RUNNING' "
                             "AND to_state = 'QUEUED' AND reason = 'DAEMON_RESTART'",
                             (long long)id),
                     1);
    assert_int_equal(sql_int(path,
                             "SELECT to_state = 'CANCELLED' AND time_ms > 0 FROM state_transitions "
                             "WHERE job_id = %lld ORDER BY id DESC LIMIT 1",
                             (long long)id),
                     1);
    remove_db(path);
}

static void test_queue_position_and_counts(void **state) {
    (void)state;
    char path[1024];
    tld_store *s = open_fresh("queue", path, sizeof path);
    int64_t a = new_job(s, "a"), b = new_job(s, "b"), c = new_job(s, "c");
    assert_int_equal(tld_store_job_queue_position(s, a), 1);
    assert_int_equal(tld_store_job_queue_position(s, b), 2);
    assert_int_equal(tld_store_job_queue_position(s, c), 3);
    transition_ok(s, a, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    assert_int_equal(tld_store_job_queue_position(s, a), 0);
    assert_int_equal(tld_store_job_queue_position(s, b), 1);
    assert_int_equal(tld_store_job_queue_position(s, c), 2);
    assert_int_equal(tld_store_job_queue_position(s, 999999), 0);
    /* A re-queued job keeps its place by id: ahead of newer jobs. */
    transition_ok(s, a, TLD_JOB_RUNNING, TLD_JOB_QUEUED);
    assert_int_equal(tld_store_job_queue_position(s, a), 1);
    assert_int_equal(tld_store_job_queue_position(s, c), 3);
    transition_ok(s, a, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    transition_ok(s, b, TLD_JOB_QUEUED, TLD_JOB_FAILED);
    int64_t d = new_job(s, "d");
    transition_ok(s, d, TLD_JOB_QUEUED, TLD_JOB_CANCELLED);
    int64_t counts[TLD_JOB_NSTATES];
    assert_int_equal(tld_store_job_counts(s, counts), 0);
    assert_int_equal(counts[TLD_JOB_QUEUED], 1);
    assert_int_equal(counts[TLD_JOB_RUNNING], 1);
    assert_int_equal(counts[TLD_JOB_CANCELLING], 0);
    assert_int_equal(counts[TLD_JOB_SUCCEEDED], 0);
    assert_int_equal(counts[TLD_JOB_FAILED], 1);
    assert_int_equal(counts[TLD_JOB_CANCELLED], 1);
    tld_store_close(s);
    remove_db(path);
}

static void test_state_names(void **state) {
    (void)state;
    for (int i = 0; i < TLD_JOB_NSTATES; i++) {
        tld_job_state st;
        assert_int_equal(tld_job_state_parse(tld_job_state_name((tld_job_state)i), &st), 0);
        assert_int_equal(st, i);
    }
    tld_job_state st;
    assert_int_equal(tld_job_state_parse("queued", &st), -1);
    assert_int_equal(tld_job_state_parse(NULL, &st), -1);
    assert_string_equal(tld_job_state_name(TLD_JOB_CANCELLING), "CANCELLING");
    assert_true(tld_job_state_final(TLD_JOB_SUCCEEDED) && tld_job_state_final(TLD_JOB_FAILED) &&
                tld_job_state_final(TLD_JOB_CANCELLED));
    assert_false(tld_job_state_final(TLD_JOB_QUEUED) || tld_job_state_final(TLD_JOB_RUNNING) ||
                 tld_job_state_final(TLD_JOB_CANCELLING));
}

static void test_delete_cascades(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("delete", path, sizeof path);
    int64_t id = new_job(s, "gone"), keep = new_job(s, "kept");
    for (int64_t j = 0; j < 2; j++) {
        int64_t job = j ? keep : id;
        for (int i = 0; i < 300; i++) assert_int_equal(tld_store_metric_add(s, job, "loss", i, 1.0 / (i + 1), i), 0);
        assert_int_equal(tld_store_log_append(s, job, "a line"), 0);
        tld_checkpoint_row row = {.step = 100, .kind = "last", .path = "/tmp/x.safetensors", .bytes = 10, .top1 = -1};
        assert_int_equal(tld_store_checkpoint_add(s, job, &row, err, sizeof err), 0);
        transition_ok(s, job, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    }
    flush_ok(s);
    assert_int_equal(tld_store_job_delete(s, id, err, sizeof err), 0);
    tld_job j;
    assert_int_equal(tld_store_job_get(s, id, &j, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    assert_int_equal(tld_store_job_delete(s, id, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    tld_store_close(s);
    static const char *const tables[] = {"metrics", "metric_blocks", "logs", "checkpoints", "state_transitions"};
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
        assert_int_equal(sql_int(path, "SELECT count(*) FROM %s WHERE job_id = %lld", tables[t], (long long)id), 0);
        assert_true(sql_int(path, "SELECT count(*) FROM %s WHERE job_id = %lld", tables[t], (long long)keep) > 0);
    }
    remove_db(path);
}

/* ------------------------------------------------------------------ metrics */

static void test_metric_add_replace_names(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("metrics", path, sizeof path);
    int64_t id = new_job(s, "m");
    for (int i = 0; i < 10; i++) {
        assert_int_equal(tld_store_metric_add(s, id, "loss", i * 10, 2.0 - i * 0.1, 1000 + i), 0);
        if (i % 2 == 0) assert_int_equal(tld_store_metric_add(s, id, "top1", i * 10, i * 0.05, 1000 + i), 0);
    }
    /* Same step again: replaced, not duplicated (in the same batch and in a later one). */
    assert_int_equal(tld_store_metric_add(s, id, "loss", 50, 7.5, 2000), 0);
    flush_ok(s);
    assert_int_equal(tld_store_metric_add(s, id, "loss", 90, -3.25, 3000), 0);
    assert_int_equal(tld_store_metric_add(s, id, "lr", 0, NAN, 1), 0);
    flush_ok(s);

    tld_metric_summary names[8];
    int n = 0;
    assert_int_equal(tld_store_metric_names(s, id, names, 8, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(names[0].name, "loss");
    assert_int_equal(names[0].count, 10);
    assert_int_equal(names[0].last_step, 90);
    assert_true(names[0].last_value == -3.25);
    assert_string_equal(names[1].name, "lr");
    assert_true(isnan(names[1].last_value));
    assert_string_equal(names[2].name, "top1");
    assert_int_equal(names[2].count, 5);
    assert_int_equal(names[2].last_step, 80);
    assert_int_equal(tld_store_metric_names(s, id, names, 1, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);

    tld_metric_point pts[16];
    int bucketed = -1;
    assert_int_equal(tld_store_metric_query(s, id, "loss", 0, -1, 16, pts, &n, &bucketed, err, sizeof err), 0);
    assert_int_equal(bucketed, 0);
    assert_int_equal(n, 10);
    for (int i = 0; i < n; i++) {
        assert_int_equal(pts[i].step, i * 10);
        assert_int_equal(pts[i].count, 1);
        double want = i == 5 ? 7.5 : i == 9 ? -3.25 : 2.0 - i * 0.1;
        assert_true(pts[i].last == want && pts[i].min == want && pts[i].max == want);
    }
    assert_int_equal(pts[5].time_ms, 2000);
    /* A range. */
    assert_int_equal(tld_store_metric_query(s, id, "loss", 15, 45, 16, pts, &n, &bucketed, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(pts[0].step, 20);
    assert_int_equal(pts[2].step, 40);
    /* Unknown series, unknown job: empty. */
    assert_int_equal(tld_store_metric_query(s, id, "nope", 0, -1, 16, pts, &n, &bucketed, err, sizeof err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(tld_store_metric_names(s, 999999, names, 8, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    /* Refused at once. */
    assert_int_equal(tld_store_metric_add(s, id, "loss", -1, 0, 0), -1);
    assert_int_equal(tld_store_metric_add(s, id, "", 1, 0, 0), -1);
    assert_int_equal(tld_store_metric_query(s, id, "loss", 0, -1, 0, pts, &n, &bucketed, err, sizeof err), -1);
    tld_store_close(s);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM metrics WHERE job_id = %lld AND name = 'loss'", (long long)id),
                     10);
    remove_db(path);
}

/* A series known in memory, to check queries against. */
#define SER_N 20000
typedef struct {
    int present[SER_N];
    double value[SER_N];
    int64_t time[SER_N];
} series;

static void series_put(tld_store *s, series *ser, int64_t job, int64_t step, double v) {
    assert_int_equal(tld_store_metric_add(s, job, "loss", step, v, 5000000 + step * 3), 0);
    ser->present[step] = 1;
    ser->value[step] = v;
    ser->time[step] = 5000000 + step * 3;
}

static int same(double a, double b) {
    return (isnan(a) && isnan(b)) || a == b;
}

/* Checks one query against the naive computation: (step - lo) / width over the points present. */
static void check_query(tld_store *s, const series *ser, int64_t job, int64_t start, int64_t end, int max_points) {
    char err[512] = "";
    tld_metric_point *pts = calloc((size_t)max_points, sizeof *pts);
    assert_non_null(pts);
    int n = -1, bucketed = -1;
    if (tld_store_metric_query(s, job, "loss", start, end, max_points, pts, &n, &bucketed, err, sizeof err) != 0)
        fail_msg("query: %s", err);
    int64_t a = start < 0 ? 0 : start, b = (end < 0 || end >= SER_N) ? SER_N - 1 : end, count = 0;
    int64_t lo = -1, hi = -1;
    for (int64_t i = a; i <= b; i++) {
        if (!ser->present[i]) continue;
        if (lo < 0) lo = i;
        hi = i;
        count++;
    }
    if (count <= max_points) {
        assert_int_equal(bucketed, 0);
        assert_int_equal(n, count);
        int k = 0;
        for (int64_t i = a; i <= b; i++) {
            if (!ser->present[i]) continue;
            assert_int_equal(pts[k].step, i);
            assert_true(same(pts[k].last, ser->value[i]));
            assert_int_equal(pts[k].time_ms, ser->time[i]);
            k++;
        }
        free(pts);
        return;
    }
    assert_int_equal(bucketed, 1);
    int64_t w = (hi - lo + 1 + max_points - 1) / max_points;
    int k = 0;
    for (int64_t bs = lo; bs <= hi; bs += w) {
        int64_t c = 0, last_step = -1;
        double mn = NAN, mx = NAN;
        for (int64_t i = bs; i < bs + w && i <= hi; i++) {
            if (!ser->present[i]) continue;
            c++;
            last_step = i;
            double v = ser->value[i];
            if (isnan(v)) continue;
            if (isnan(mn) || v < mn) mn = v;
            if (isnan(mx) || v > mx) mx = v;
        }
        if (!c) continue;
        assert_true(k < n);
        if (pts[k].step != bs || pts[k].count != c || !same(pts[k].min, mn) || !same(pts[k].max, mx) ||
            !same(pts[k].last, ser->value[last_step]) || pts[k].time_ms != ser->time[last_step])
            fail_msg("query [%lld, %lld] / %d, bucket %d at %lld: got step %lld count %lld min %g max %g last %g; "
                     "want count %lld min %g max %g last %g",
                     (long long)start, (long long)end, max_points, k, (long long)bs, (long long)pts[k].step,
                     (long long)pts[k].count, pts[k].min, pts[k].max, pts[k].last, (long long)c, mn, mx,
                     ser->value[last_step]);
        k++;
    }
    assert_int_equal(n, k);
    assert_true(n <= max_points);
    free(pts);
}

static void check_queries(tld_store *s, const series *ser, int64_t job) {
    static const struct {
        int64_t start, end;
        int max;
    } qs[] = {{0, -1, 100},     {0, -1, 1000},   {37, 8999, 50},  {64, 127, 10},    {1000, 1000, 5},
              {5000, 5199, 3},  {4990, 5300, 7}, {0, -1, 1},      {12300, 12400, 9}, {19990, 30000, 2},
              {0, 19999, 333}, {-5, 700, 64},   {0, -1, 20000}};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) check_query(s, ser, job, qs[i].start, qs[i].end, qs[i].max);
}

static void test_metric_buckets(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("buckets", path, sizeof path);
    int64_t job = new_job(s, "b");
    series *ser = calloc(1, sizeof *ser);
    assert_non_null(ser);
    for (int64_t i = 0; i < SER_N; i++) {
        if (i % 7 == 3 || (i >= 5000 && i < 5200)) continue; /* holes, and whole empty blocks */
        series_put(s, ser, job, i, sin((double)i * 0.01));
    }
    series_put(s, ser, job, 12345, 1000.0); /* a spike */
    series_put(s, ser, job, 777, NAN);
    flush_ok(s);
    check_queries(s, ser, job);

    /* The spike is its bucket's max, though the bucket's last value is ordinary. */
    tld_metric_point pts[100];
    int n, bucketed;
    assert_int_equal(tld_store_metric_query(s, job, "loss", 0, -1, 100, pts, &n, &bucketed, err, sizeof err), 0);
    assert_int_equal(bucketed, 1);
    int seen = 0;
    for (int i = 0; i < n; i++) {
        int64_t end = i + 1 < n ? pts[i + 1].step : SER_N;
        if (pts[i].step <= 12345 && 12345 < end) {
            assert_true(pts[i].max == 1000.0);
            assert_true(pts[i].last < 2.0);
            seen = 1;
        } else {
            assert_true(pts[i].max <= 1.0);
        }
    }
    assert_true(seen);

    /* Replacing points (the spike goes, a dip comes) keeps the summaries right. */
    series_put(s, ser, job, 12345, 0.5);
    series_put(s, ser, job, 64 * 40 + 17, -50.0);
    series_put(s, ser, job, 3, 0.25); /* a hole filled */
    flush_ok(s);
    check_queries(s, ser, job);

    /* Truncation at a step inside a block, then more points after it. */
    assert_int_equal(tld_store_metric_truncate(s, job, 15000, err, sizeof err), 0);
    for (int64_t i = 15001; i < SER_N; i++) ser->present[i] = 0;
    check_queries(s, ser, job);
    for (int64_t i = 15001; i < 16000; i += 2) series_put(s, ser, job, i, cos((double)i));
    flush_ok(s);
    check_queries(s, ser, job);

    /* The summaries equal the points, block by block. */
    tld_store_close(s);
    assert_int_equal(sql_int(path,
                             "SELECT count(*) FROM metric_blocks AS b WHERE n_points != (SELECT count(*) FROM metrics "
                             "AS m WHERE m.job_id = b.job_id AND m.name = b.name AND m.step / 64 = b.block)"),
                     0);
    assert_int_equal(sql_int(path,
                             "SELECT count(*) FROM (SELECT DISTINCT job_id, name, step / 64 FROM metrics) AS m WHERE "
                             "NOT EXISTS (SELECT 1 FROM metric_blocks WHERE job_id = m.job_id AND name = m.name)"),
                     0);
    free(ser);
    remove_db(path);
}

static void test_metric_truncate(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("truncate", path, sizeof path);
    int64_t a = new_job(s, "a"), b = new_job(s, "b");
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(tld_store_metric_add(s, a, "loss", i, i, i), 0);
        assert_int_equal(tld_store_metric_add(s, a, "lr", i, 0.1, i), 0);
        assert_int_equal(tld_store_metric_add(s, b, "loss", i, i, i), 0);
    }
    assert_int_equal(tld_store_metric_add(s, a, "top1", 250, 0.5, 250), 0);
    assert_int_equal(tld_store_metric_add(s, a, "top1", 750, 0.7, 750), 0);
    assert_int_equal(tld_store_metric_truncate(s, a, 500, err, sizeof err), 0); /* after the queued points */
    tld_metric_summary names[4];
    int n;
    assert_int_equal(tld_store_metric_names(s, a, names, 4, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) {
        if (strcmp(names[i].name, "top1") == 0) {
            assert_int_equal(names[i].count, 1);
            assert_int_equal(names[i].last_step, 250);
        } else {
            assert_int_equal(names[i].count, 501);
            assert_int_equal(names[i].last_step, 500);
        }
    }
    /* Other jobs are untouched. */
    assert_int_equal(tld_store_metric_names(s, b, names, 4, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(names[0].count, 1000);
    /* Resumed training writes the steps again. */
    for (int i = 501; i < 600; i++) assert_int_equal(tld_store_metric_add(s, a, "loss", i, -i, i), 0);
    flush_ok(s);
    tld_metric_point pts[8];
    int bucketed;
    assert_int_equal(tld_store_metric_query(s, a, "loss", 499, 502, 8, pts, &n, &bucketed, err, sizeof err), 0);
    assert_int_equal(n, 4);
    assert_true(pts[1].last == 500 && pts[2].last == -501);
    /* Truncating before the first step drops everything. */
    assert_int_equal(tld_store_metric_truncate(s, a, -1, err, sizeof err), 0);
    assert_int_equal(tld_store_metric_names(s, a, names, 4, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(tld_store_metric_truncate(s, 999999, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    tld_store_close(s);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM metrics WHERE job_id = %lld", (long long)a), 0);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM metric_blocks WHERE job_id = %lld", (long long)a), 0);
    remove_db(path);
}

static void test_metric_million_points(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("million", path, sizeof path);
    int64_t job = new_job(s, "big");
    const int64_t N = 1000000;
    double t0 = now_s();
    for (int64_t i = 0; i < N; i++) {
        double v = i == 654321 ? 99.0 : 1.0 + 0.5 * sin((double)i * 1e-3);
        assert_int_equal(tld_store_metric_add(s, job, "loss", i, v, i), 0);
    }
    flush_ok(s);
    double t_ins = now_s() - t0;

    tld_metric_point *pts = calloc(1000, sizeof *pts);
    assert_non_null(pts);
    int n = 0, bucketed = 0;
    double best = 1e9, first = 0;
    for (int rep = 0; rep < 5; rep++) {
        t0 = now_s();
        assert_int_equal(tld_store_metric_query(s, job, "loss", 0, -1, 1000, pts, &n, &bucketed, err, sizeof err), 0);
        double t = now_s() - t0;
        if (rep == 0) first = t;
        if (t < best) best = t;
    }
    printf("  1,000,000 points: added and committed in %.2f s; 1000-bucket query %.1f ms (first %.1f ms)\n", t_ins,
           best * 1e3, first * 1e3);
    assert_int_equal(bucketed, 1);
    assert_int_equal(n, 1000);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        total += pts[i].count;
        assert_int_equal(pts[i].step, (int64_t)i * 1000);
        assert_int_equal(pts[i].count, 1000);
        assert_int_equal(pts[i].time_ms, (int64_t)i * 1000 + 999);
        if (i == 654) assert_true(pts[i].max == 99.0);
        else assert_true(pts[i].max <= 1.5);
    }
    assert_int_equal(total, N);
    /* A window inside the series, edges not on block boundaries. */
    t0 = now_s();
    assert_int_equal(tld_store_metric_query(s, job, "loss", 123457, 876543, 1000, pts, &n, &bucketed, err, sizeof err),
                     0);
    printf("  window [123457, 876543] in 1000 buckets: %.1f ms\n", (now_s() - t0) * 1e3);
    total = 0;
    for (int i = 0; i < n; i++) total += pts[i].count;
    assert_int_equal(total, 876543 - 123457 + 1);
    free(pts);
    tld_store_close(s);
    remove_db(path);
}

/* ------------------------------------------------------------------ logs */

static void test_logs(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("logs", path, sizeof path);
    int64_t job = new_job(s, "l"), empty = new_job(s, "e");
    size_t cap = 1 << 20, want_len = 0;
    char *want = malloc(cap), *buf = malloc(cap);
    assert_non_null(want);
    assert_non_null(buf);
    /* Several batches (flushes between) so the log has several chunks. */
    for (int batch = 0; batch < 5; batch++) {
        for (int i = 0; i < 40; i++) {
            char line[160];
            snprintf(line, sizeof line, "batch %d line %d: loss=%.4f \xe2\x86\x92 caf\xc3\xa9", batch, i,
                     1.0 / (i + 1));
            assert_int_equal(tld_store_log_append(s, job, line), 0);
            size_t l = strlen(line);
            memcpy(want + want_len, line, l);
            want[want_len + l] = '\n';
            want_len += l + 1;
        }
        flush_ok(s);
    }
    assert_int_equal(tld_store_log_append(s, job, ""), 0); /* an empty line is a '\n' */
    want[want_len++] = '\n';
    flush_ok(s);
    assert_true(sql_int(path, "SELECT count(*) FROM logs WHERE job_id = %lld", (long long)job) >= 5);

    /* All at once. */
    size_t len = 0;
    int64_t next = -1;
    int eof = -1;
    assert_int_equal(tld_store_log_read(s, job, 0, cap, buf, &len, &next, &eof, err, sizeof err), 0);
    assert_int_equal(len, want_len);
    assert_memory_equal(buf, want, want_len);
    assert_int_equal(next, (int64_t)want_len);
    assert_int_equal(eof, 1);

    /* In slices of every size from 1 to 97 bytes, following next. */
    for (size_t slice = 1; slice < 98; slice += 8) {
        int64_t off = 0;
        size_t got = 0;
        eof = 0;
        while (!eof) {
            assert_int_equal(tld_store_log_read(s, job, off, slice, buf + got, &len, &next, &eof, err, sizeof err), 0);
            assert_true(len <= slice);
            assert_int_equal(next, off + (int64_t)len);
            if (!eof) assert_true(len > 0 && len + 3 >= slice); /* may stop before a split UTF-8 sequence */
            if (!eof && slice >= 4) /* so a slice never ends inside one */
                assert_true((want[off + (int64_t)len] & 0xC0) != 0x80);
            got += len;
            off = next;
        }
        assert_int_equal(got, want_len);
        assert_memory_equal(buf, want, want_len);
    }
    /* From the middle of a chunk; at the end; past it. */
    assert_int_equal(tld_store_log_read(s, job, 1001, 10, buf, &len, &next, &eof, err, sizeof err), 0);
    assert_true(len >= 7 && len <= 10);
    assert_memory_equal(buf, want + 1001, len);
    assert_int_equal(next, 1001 + (int64_t)len);
    assert_int_equal(eof, 0);
    assert_int_equal(tld_store_log_read(s, job, (int64_t)want_len, 10, buf, &len, &next, &eof, err, sizeof err), 0);
    assert_int_equal(len, 0);
    assert_int_equal(eof, 1);
    assert_int_equal(next, (int64_t)want_len);
    assert_int_equal(tld_store_log_read(s, job, (int64_t)want_len + 1, 10, buf, &len, &next, &eof, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "past the end"));
    /* Exactly the rest: eof. */
    assert_int_equal(tld_store_log_read(s, job, 5, want_len - 5, buf, &len, &next, &eof, err, sizeof err), 0);
    assert_int_equal(len, want_len - 5);
    assert_int_equal(eof, 1);
    /* An empty log; a job that does not exist. */
    assert_int_equal(tld_store_log_read(s, empty, 0, 10, buf, &len, &next, &eof, err, sizeof err), 0);
    assert_int_equal(len, 0);
    assert_int_equal(eof, 1);
    assert_int_equal(tld_store_log_read(s, 999999, 0, 10, buf, &len, &next, &eof, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));

    /* A line longer than a chunk is cut and marked. */
    char *huge = malloc(200000);
    assert_non_null(huge);
    memset(huge, 'h', 199999);
    huge[199999] = '\0';
    assert_int_equal(tld_store_log_append(s, empty, huge), 0);
    assert_int_equal(tld_store_log_append(s, empty, "after"), 0);
    flush_ok(s);
    assert_int_equal(tld_store_log_read(s, empty, 0, cap, buf, &len, &next, &eof, err, sizeof err), 0);
    assert_true(len < 70000);
    assert_non_null(memmem(buf, len, "[line cut]\nafter\n", 17));
    free(huge);
    free(want);
    free(buf);
    tld_store_close(s);
    remove_db(path);
}

/* ------------------------------------------------------------------ checkpoints */

static void test_checkpoints(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("ckpt", path, sizeof path);
    int64_t job = new_job(s, "c");
    tld_checkpoint_row r1 = {.step = 100, .kind = "last", .path = "/runs/1/last.safetensors", .bytes = 1000,
                            .time_ms = 11, .top1 = -1};
    tld_checkpoint_row r2 = {.step = 100, .kind = "best", .path = "/runs/1/best.safetensors", .bytes = 1000,
                            .time_ms = 12, .top1 = 0.625};
    tld_checkpoint_row r3 = {.step = 200, .kind = "last", .path = "/runs/1/last.safetensors", .bytes = 1001,
                            .time_ms = 13, .top1 = -1};
    assert_int_equal(tld_store_checkpoint_add(s, job, &r1, err, sizeof err), 0);
    assert_int_equal(tld_store_checkpoint_add(s, job, &r2, err, sizeof err), 0);
    assert_int_equal(tld_store_checkpoint_add(s, job, &r3, err, sizeof err), 0);
    r3.bytes = 2002; /* written again at the same step: replaced */
    assert_int_equal(tld_store_checkpoint_add(s, job, &r3, err, sizeof err), 0);
    tld_checkpoint_row out[8];
    int n = 0;
    assert_int_equal(tld_store_checkpoint_list(s, job, out, 8, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(out[0].step, 200);
    assert_string_equal(out[0].kind, "last");
    assert_int_equal(out[0].bytes, 2002);
    assert_int_equal(out[1].step, 100);
    assert_string_equal(out[1].kind, "best");
    assert_true(out[1].top1 == 0.625);
    assert_string_equal(out[1].path, "/runs/1/best.safetensors");
    assert_int_equal(out[1].time_ms, 12);
    assert_string_equal(out[2].kind, "last");
    assert_true(out[2].top1 == -1);
    assert_int_equal(tld_store_checkpoint_list(s, job, out, 1, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0].step, 200);
    /* Refusals. */
    tld_checkpoint_row bad = r1;
    snprintf(bad.kind, sizeof bad.kind, "worst");
    assert_int_equal(tld_store_checkpoint_add(s, job, &bad, err, sizeof err), -1);
    bad = r1;
    bad.path[0] = '\0';
    assert_int_equal(tld_store_checkpoint_add(s, job, &bad, err, sizeof err), -1);
    assert_int_equal(tld_store_checkpoint_add(s, 999999, &r1, err, sizeof err), -1);
    assert_non_null(strstr(err, "not found"));
    assert_int_equal(tld_store_checkpoint_list(s, 999999, out, 8, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    tld_store_close(s);
    remove_db(path);
}

/* ------------------------------------------------------------------ durability, failures */

static void test_reopen_finds_everything(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("reopen", path, sizeof path);
    int64_t ids[3];
    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        int existed;
        assert_int_equal(tld_store_job_create(s, "durable", "{\"x\": 1}", key, &ids[i], &existed, err, sizeof err), 0);
    }
    transition_ok(s, ids[0], TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    transition_ok(s, ids[0], TLD_JOB_RUNNING, TLD_JOB_SUCCEEDED);
    transition_ok(s, ids[1], TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    for (int i = 0; i < 5000; i++) assert_int_equal(tld_store_metric_add(s, ids[1], "loss", i, i * 0.5, i), 0);
    for (int i = 0; i < 100; i++) {
        char line[32];
        snprintf(line, sizeof line, "line %d", i);
        assert_int_equal(tld_store_log_append(s, ids[1], line), 0);
    }
    tld_checkpoint_row row = {.step = 4000, .kind = "last", .path = "/r/last.safetensors", .bytes = 5, .top1 = 0.5};
    assert_int_equal(tld_store_checkpoint_add(s, ids[1], &row, err, sizeof err), 0);
    assert_int_equal(tld_store_job_set_progress(s, ids[1], 2, 4999, 10000, 12.0), 0);
    tld_store_close(s); /* no flush: close writes what is queued */

    s = tld_store_open(path, err, sizeof err);
    if (!s) fail_msg("reopen: %s", err);
    assert_int_equal(job_state(s, ids[0]), TLD_JOB_SUCCEEDED);
    assert_int_equal(job_state(s, ids[1]), TLD_JOB_RUNNING);
    assert_int_equal(job_state(s, ids[2]), TLD_JOB_QUEUED);
    tld_job j;
    assert_int_equal(tld_store_job_get(s, ids[1], &j, err, sizeof err), 0);
    assert_int_equal(j.step, 4999);
    assert_string_equal(j.spec_json, "{\"x\": 1}");
    assert_string_equal(j.idempotency_key, "k1");
    tld_job_free(&j);
    int64_t again;
    int existed = 0;
    assert_int_equal(tld_store_job_create(s, "durable", "{}", "k2", &again, &existed, err, sizeof err), 0);
    assert_int_equal(existed, 1);
    assert_int_equal(again, ids[2]);
    tld_metric_summary m;
    int n;
    assert_int_equal(tld_store_metric_names(s, ids[1], &m, 1, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(m.count, 5000);
    assert_true(m.last_value == 4999 * 0.5);
    char buf[4096];
    size_t len;
    int64_t next;
    int eof;
    assert_int_equal(tld_store_log_read(s, ids[1], 0, sizeof buf, buf, &len, &next, &eof, err, sizeof err), 0);
    assert_int_equal(eof, 1);
    assert_true(len > 6 && memcmp(buf, "line 0\n", 7) == 0);
    assert_non_null(memmem(buf, len, "line 99\n", 8));
    tld_checkpoint_row out;
    assert_int_equal(tld_store_checkpoint_list(s, ids[1], &out, 1, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out.step, 4000);
    /* New ids never reuse old ones, even after a delete. */
    assert_int_equal(tld_store_job_delete(s, ids[2], err, sizeof err), 0);
    int64_t fresh = new_job(s, "fresh");
    assert_true(fresh > ids[2]);
    tld_store_close(s);
    remove_db(path);
}

static void test_queued_failures_reported_by_flush(void **state) {
    (void)state;
    char path[1024];
    tld_store *s = open_fresh("failures", path, sizeof path);
    int64_t job = new_job(s, "f");
    printf("  (two store messages about job 999999 are expected here)\n");
    fflush(stdout);
    assert_int_equal(tld_store_metric_add(s, job, "ok", 1, 1, 1), 0);
    assert_int_equal(tld_store_metric_add(s, 999999, "orphan", 1, 1, 1), 0); /* no such job: refused by the schema */
    assert_int_equal(tld_store_log_append(s, 999999, "orphan"), 0);
    assert_int_equal(tld_store_flush(s), -1);
    assert_int_equal(tld_store_flush(s), 0); /* reported once */
    tld_metric_summary m;
    int n;
    char err[512];
    assert_int_equal(tld_store_metric_names(s, job, &m, 1, &n, err, sizeof err), 0);
    assert_int_equal(n, 1); /* the good point of the same batch is kept */
    tld_store_close(s);
    remove_db(path);
}

/* ------------------------------------------------------------------ threads */

#define THREAD_POINTS 20000

typedef struct {
    tld_store *s;
    int64_t job;
    int t;
    int errors;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    char err[512];
    tld_metric_point pts[50];
    for (int i = 0; i < THREAD_POINTS; i++) {
        if (tld_store_metric_add(a->s, a->job, "loss", i, (double)(i % 100), i) != 0) a->errors++;
        if (tld_store_metric_add(a->s, a->job, "shared", i, a->t, i) != 0) a->errors++;
        if (i % 500 == 0) {
            char line[64];
            snprintf(line, sizeof line, "thread %d step %d", a->t, i);
            if (tld_store_log_append(a->s, a->job, line) != 0) a->errors++;
            int n, bucketed;
            if (tld_store_metric_query(a->s, a->job, "loss", 0, -1, 50, pts, &n, &bucketed, err, sizeof err) != 0)
                a->errors++;
            tld_job j;
            if (tld_store_job_get(a->s, a->job, &j, err, sizeof err) != 0) a->errors++;
            else tld_job_free(&j);
            int64_t counts[TLD_JOB_NSTATES];
            if (tld_store_job_counts(a->s, counts) != 0) a->errors++;
            /* Awaited writes from several threads at once too. */
            int64_t id;
            if (tld_store_job_create(a->s, "side", "{}", NULL, &id, NULL, err, sizeof err) != 0) a->errors++;
            else if (tld_store_job_transition(a->s, id, 1u << TLD_JOB_QUEUED, TLD_JOB_CANCELLED, "", "", err,
                                             sizeof err) != 0)
                a->errors++;
            /* A refused op in the middle of other threads' batches: refused alone. */
            else if (tld_store_job_transition(a->s, id, 0x3Fu, TLD_JOB_RUNNING, "", "", err, sizeof err) != -1 ||
                     !strstr(err, "invalid transition"))
                a->errors++;
        }
    }
    return NULL;
}

static void test_concurrent_threads(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("threads", path, sizeof path);
    pthread_t th[4];
    worker_arg args[4];
    for (int t = 0; t < 4; t++) {
        args[t] = (worker_arg){s, new_job(s, "w"), t, 0};
        transition_ok(s, args[t].job, TLD_JOB_QUEUED, TLD_JOB_RUNNING);
    }
    double t0 = now_s();
    for (int t = 0; t < 4; t++) assert_int_equal(pthread_create(&th[t], NULL, worker, &args[t]), 0);
    for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
    flush_ok(s);
    printf("  4 threads x %d points x 2 series, with reads: %.2f s\n", THREAD_POINTS, now_s() - t0);
    for (int t = 0; t < 4; t++) {
        assert_int_equal(args[t].errors, 0);
        tld_metric_summary m[4];
        int n;
        assert_int_equal(tld_store_metric_names(s, args[t].job, m, 4, &n, err, sizeof err), 0);
        assert_int_equal(n, 2);
        assert_int_equal(m[0].count, THREAD_POINTS);
        assert_int_equal(m[1].count, THREAD_POINTS);
        assert_int_equal(m[0].last_step, THREAD_POINTS - 1);
        char buf[8192];
        size_t len;
        int64_t next;
        int eof;
        assert_int_equal(tld_store_log_read(s, args[t].job, 0, sizeof buf, buf, &len, &next, &eof, err, sizeof err),
                         0);
        assert_int_equal(eof, 1);
        int lines = 0;
        for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
        assert_int_equal(lines, THREAD_POINTS / 500);
    }
    int64_t counts[TLD_JOB_NSTATES];
    assert_int_equal(tld_store_job_counts(s, counts), 0);
    assert_int_equal(counts[TLD_JOB_RUNNING], 4);
    assert_int_equal(counts[TLD_JOB_CANCELLED], 4 * THREAD_POINTS / 500);
    tld_store_close(s);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM metrics"), 4 * 2 * THREAD_POINTS);
    remove_db(path);
}

/* ------------------------------------------------------------------ job_inits (schema version 3) */

static void test_job_inits(void **state) {
    (void)state;
    char path[1024], err[512] = "";
    tld_store *s = open_fresh("inits", path, sizeof path);
    int64_t src = new_job(s, "source"), ft = new_job(s, "finetune"), ft2 = new_job(s, "from-model");
    tld_job_init_row r, got;

    /* Nothing recorded: "not found". */
    assert_int_equal(tld_store_job_init_get(s, ft, &got, err, sizeof err), -1);
    assert_string_equal(err, "not found");

    /* A job source with a position-embedding resize, read back as written. */
    memset(&r, 0, sizeof r);
    snprintf(r.source_kind, sizeof r.source_kind, "job");
    r.source_job = src;
    snprintf(r.checkpoint, sizeof r.checkpoint, "best");
    r.step = 120;
    r.ema = 1;
    snprintf(r.head, sizeof r.head, "match");
    r.classes_matched = 7;
    r.pos_from = 14;
    r.pos_to = 24;
    snprintf(r.weights, sizeof r.weights, "/runs/1/best.safetensors");
    r.time_ms = 42;
    if (tld_store_job_init_put(s, ft, &r, err, sizeof err) != 0) fail_msg("put: %s", err);
    assert_int_equal(tld_store_job_init_get(s, ft, &got, err, sizeof err), 0);
    assert_string_equal(got.source_kind, "job");
    assert_int_equal(got.source_job, src);
    assert_string_equal(got.checkpoint, "best");
    assert_int_equal(got.step, 120);
    assert_int_equal(got.ema, 1);
    assert_string_equal(got.head, "match");
    assert_int_equal(got.classes_matched, 7);
    assert_int_equal(got.pos_from, 14);
    assert_int_equal(got.pos_to, 24);
    assert_string_equal(got.weights, "/runs/1/best.safetensors");

    /* A start over replaces the row. */
    r.pos_from = r.pos_to = 0;
    snprintf(r.head, sizeof r.head, "keep");
    if (tld_store_job_init_put(s, ft, &r, err, sizeof err) != 0) fail_msg("replace: %s", err);
    assert_int_equal(tld_store_job_init_get(s, ft, &got, err, sizeof err), 0);
    assert_int_equal(got.pos_from, 0);
    assert_string_equal(got.head, "keep");

    /* A model source; the schema refuses an unknown head mode and a mixed source. */
    memset(&r, 0, sizeof r);
    snprintf(r.source_kind, sizeof r.source_kind, "model");
    snprintf(r.source_model, sizeof r.source_model, "base");
    r.step = -1;
    snprintf(r.head, sizeof r.head, "reinit");
    snprintf(r.weights, sizeof r.weights, "/models/base.safetensors");
    if (tld_store_job_init_put(s, ft2, &r, err, sizeof err) != 0) fail_msg("model source: %s", err);
    assert_int_equal(tld_store_job_init_get(s, ft2, &got, err, sizeof err), 0);
    assert_string_equal(got.source_model, "base");
    assert_int_equal(got.source_job, 0);
    assert_int_equal(got.step, -1);
    snprintf(r.head, sizeof r.head, "swap");
    assert_int_equal(tld_store_job_init_put(s, ft2, &r, err, sizeof err), -1);
    printf("  unknown head refused: %s\n", err);
    snprintf(r.head, sizeof r.head, "keep");
    r.source_model[0] = '\0';
    snprintf(r.source_kind, sizeof r.source_kind, "job"); /* a job source without a job id */
    assert_int_equal(tld_store_job_init_put(s, ft2, &r, err, sizeof err), -1);
    /* A job that does not exist cannot get a row. */
    snprintf(r.source_kind, sizeof r.source_kind, "model");
    snprintf(r.source_model, sizeof r.source_model, "base");
    assert_int_equal(tld_store_job_init_put(s, 999999, &r, err, sizeof err), -1);

    /* Deleting the job deletes its row; deleting the source job keeps the row (lineage ends there). */
    assert_int_equal(tld_store_job_transition(s, src, 1u << TLD_JOB_QUEUED, TLD_JOB_CANCELLED, "", "", err, sizeof err), 0);
    if (tld_store_job_delete(s, src, err, sizeof err) != 0) fail_msg("delete source: %s", err);
    assert_int_equal(tld_store_job_init_get(s, ft, &got, err, sizeof err), 0);
    assert_int_equal(got.source_job, src);
    assert_int_equal(tld_store_job_transition(s, ft, 1u << TLD_JOB_QUEUED, TLD_JOB_CANCELLED, "", "", err, sizeof err), 0);
    if (tld_store_job_delete(s, ft, err, sizeof err) != 0) fail_msg("delete: %s", err);
    assert_int_equal(tld_store_job_init_get(s, ft, &got, err, sizeof err), -1);
    tld_store_close(s);
    remove_db(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_embedded_equals_file),
        cmocka_unit_test(test_version_and_refusals),
        cmocka_unit_test(test_pragmas),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_job_create_get_list),
        cmocka_unit_test(test_idempotency_key),
        cmocka_unit_test(test_state_machine_every_pair),
        cmocka_unit_test(test_transition_times_and_history),
        cmocka_unit_test(test_queue_position_and_counts),
        cmocka_unit_test(test_delete_cascades),
        cmocka_unit_test(test_metric_add_replace_names),
        cmocka_unit_test(test_metric_buckets),
        cmocka_unit_test(test_metric_truncate),
        cmocka_unit_test(test_metric_million_points),
        cmocka_unit_test(test_logs),
        cmocka_unit_test(test_checkpoints),
        cmocka_unit_test(test_job_inits),
        cmocka_unit_test(test_reopen_finds_everything),
        cmocka_unit_test(test_queued_failures_reported_by_flush),
        cmocka_unit_test(test_concurrent_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
