/*
 * store.c: the core of tokenlabd's SQLite store (see store.h; the schema and
 * its invariants are in schema/store.sql and store_v2.sql): open, migrate,
 * the pragmas of every connection, the statement texts, the read
 * connections, close. The other files of the store (store_internal.h lists
 * them) add the writer thread and one file per table.
 *
 * Owns:
 *   - the database file: created and migrated on open; beside it the
 *     reserve (<file>.reserve, store_reserve.c), room for the store's own
 *     writes on a full disk. migrations[] lists
 *     (version, sql) steps; the steps past the file's version (schema_version
 *     table) run in one transaction, which also records the new version.
 *     Steps 1 to 6 are schema/store.sql and store_v2.sql to store_v6.sql,
 *     embedded at build time (server/CMakeLists.txt generates store_schema.c from the files).
 *     A file newer than this code, or a database that is not a store, is
 *     refused.
 *   - the statement texts of every table (tld_store_wsql, tld_store_rsql),
 *     in one place because the writer's statements are all prepared at open,
 *     before the writer thread starts.
 *   - the read connections: one per thread that reads (pthread key; closed
 *     by the key's destructor when the thread exits, or by tld_store_close),
 *     each with its own cache of prepared statements, query_only. Reads that
 *     take several statements run in one read transaction (a snapshot).
 * Every connection: journal_mode=WAL, synchronous=NORMAL (Debian's SQLite
 * defaults to FULL), busy_timeout 5000 ms, foreign_keys=ON.
 *
 * Threads: every tld_store_* function may be called from any thread at once,
 * except tld_store_close, which must not overlap any other call on the store
 * (nor the exit of a thread that used it). Open runs on the caller's thread
 * and hands the writer connection to the writer thread (store_writer.c).
 */
#include "store/store.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "store/store_schema.h"
#include "tokenlab/base.h"

/* Migration steps, in order: each takes a file from version - 1 to version, inside the open's transaction. */
static const struct {
    int version;
    const char *sql;
} migrations[] = {
    {1, tld_store_schema_v1}, /* schema/store.sql */
    {2, tld_store_schema_v2}, /* schema/store_v2.sql: models, token inspection */
    {3, tld_store_schema_v3}, /* schema/store_v3.sql: where fine-tuned jobs started (job_inits) */
    {4, tld_store_schema_v4}, /* schema/store_v4.sql: the ranks of distributed jobs (job_dist) */
    {5, tld_store_schema_v5}, /* schema/store_v5.sql: attempts that made no progress (the crash-loop guard) */
    {6, tld_store_schema_v6}, /* schema/store_v6.sql: read-only API tokens, hashed (api_tokens) */
};
#define STORE_NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))
#define STORE_VERSION (migrations[STORE_NMIGRATIONS - 1].version)

/* ------------------------------------------------------------------ statements */

const char *const tld_store_wsql[W_COUNT] = {
    [W_BEGIN] = "BEGIN IMMEDIATE",
    [W_COMMIT] = "COMMIT",
    [W_ROLLBACK] = "ROLLBACK",
    [W_SAVEPOINT] = "SAVEPOINT op",
    [W_RELEASE] = "RELEASE op",
    [W_ROLLBACK_TO] = "ROLLBACK TO op",
    [W_METRIC_PUT] = "INSERT INTO metrics (job_id, name, step, value, time_ms) VALUES (?1, ?2, ?3, ?4, ?5) "
                     "ON CONFLICT (job_id, name, step) DO UPDATE SET value = excluded.value, "
                     "time_ms = excluded.time_ms",
    [W_PROGRESS] = "UPDATE jobs SET epoch = ?2, step = ?3, total_steps = ?4, eta_seconds = ?5 WHERE id = ?1",
    [W_LOG_PUT] = "INSERT INTO logs (job_id, byte_offset, text) VALUES (?1, coalesce((SELECT byte_offset + "
                  "length(CAST(text AS BLOB)) FROM logs WHERE job_id = ?1 ORDER BY byte_offset DESC LIMIT 1), 0), ?2)",
    [W_JOB_BY_KEY] = "SELECT id FROM jobs WHERE idempotency_key = ?1",
    [W_JOB_INSERT] = "INSERT INTO jobs (name, spec_json, state, state_changed_ms, created_ms, idempotency_key) "
                     "VALUES (?1, ?2, 'QUEUED', ?3, ?3, ?4)",
    [W_JOB_STATE] = "SELECT state FROM jobs WHERE id = ?1",
    [W_JOB_TRANSITION] = "UPDATE jobs SET state = ?2, state_reason = ?3, state_message = ?4, state_changed_ms = ?5, "
                         "started_ms = CASE WHEN ?6 THEN ?5 ELSE started_ms END, "
                         "ended_ms = CASE WHEN ?7 THEN ?5 ELSE ended_ms END WHERE id = ?1",
    [W_JOB_RUN_DIR] = "UPDATE jobs SET run_dir = ?2 WHERE id = ?1",
    [W_JOB_ATTEMPT] = "UPDATE jobs SET attempt = attempt + 1, stalled_attempts = CASE WHEN ?2 > attempt_mark "
                      "THEN 0 ELSE stalled_attempts + 1 END, attempt_mark = max(?2, attempt_mark) WHERE id = ?1",
    [W_JOB_DELETE] = "DELETE FROM jobs WHERE id = ?1",
    [W_TRUNC_NAMES] = "SELECT DISTINCT name FROM metric_blocks WHERE job_id = ?1 AND block >= ?2",
    [W_TRUNC_POINTS] = "DELETE FROM metrics WHERE job_id = ?1 AND name = ?2 AND step > ?3",
    [W_TRUNC_BLOCKS] = "DELETE FROM metric_blocks WHERE job_id = ?1 AND name = ?2 AND block > ?3",
    [W_BLOCK_AGG] = "SELECT count(*), min(value), max(value), max(step) FROM metrics "
                    "WHERE job_id = ?1 AND name = ?2 AND step BETWEEN ?3 AND ?4",
    [W_BLOCK_LAST] = "SELECT value, time_ms FROM metrics WHERE job_id = ?1 AND name = ?2 AND step = ?3",
    [W_BLOCK_PUT] = "INSERT OR REPLACE INTO metric_blocks (job_id, name, block, n_points, min_value, max_value, "
                    "last_step, last_value, last_time_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [W_BLOCK_DEL] = "DELETE FROM metric_blocks WHERE job_id = ?1 AND name = ?2 AND block = ?3",
    [W_CKPT_PUT] = "INSERT OR REPLACE INTO checkpoints (job_id, kind, step, path, bytes, time_ms, top1) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
};

#define JOB_COLS                                                                                                   \
    "id, name, spec_json, state, state_reason, state_message, created_ms, started_ms, ended_ms, attempt, epoch, " \
    "step, total_steps, eta_seconds, coalesce(idempotency_key, ''), run_dir, attempt_mark, stalled_attempts"


const char *const tld_store_rsql[R_COUNT] = {
    [R_BEGIN] = "BEGIN",
    [R_COMMIT] = "COMMIT",
    [R_ROLLBACK] = "ROLLBACK",
    [R_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",
    [R_JOB_LIST] = "SELECT " JOB_COLS " FROM jobs WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    [R_JOB_LIST_STATE] = "SELECT " JOB_COLS " FROM jobs WHERE state = ?3 AND id < ?1 ORDER BY id DESC LIMIT ?2",
    [R_JOB_EXISTS] = "SELECT 1 FROM jobs WHERE id = ?1",
    [R_QUEUE_POS] = "SELECT CASE WHEN (SELECT state FROM jobs WHERE id = ?1) = 'QUEUED' "
                    "THEN (SELECT count(*) FROM jobs WHERE state = 'QUEUED' AND id <= ?1) ELSE 0 END",
    [R_COUNTS] = "SELECT state, count(*) FROM jobs GROUP BY state",
    /* One max() aggregate: the bare columns come from the row holding it (the last block). */
    [R_METRIC_NAMES] = "SELECT name, max(block), last_step, last_value, sum(n_points) FROM metric_blocks "
                       "WHERE job_id = ?1 GROUP BY name ORDER BY name",
    [R_METRIC_COUNT] = "SELECT count(*) FROM (SELECT 1 FROM metrics "
                       "WHERE job_id = ?1 AND name = ?2 AND step BETWEEN ?3 AND ?4 LIMIT ?5)",
    [R_METRIC_RAW] = "SELECT step, value, time_ms FROM metrics "
                     "WHERE job_id = ?1 AND name = ?2 AND step BETWEEN ?3 AND ?4 ORDER BY step",
    [R_METRIC_FIRST] = "SELECT step FROM metrics WHERE job_id = ?1 AND name = ?2 AND step BETWEEN ?3 AND ?4 "
                       "ORDER BY step LIMIT 1",
    [R_METRIC_LAST] = "SELECT step FROM metrics WHERE job_id = ?1 AND name = ?2 AND step BETWEEN ?3 AND ?4 "
                      "ORDER BY step DESC LIMIT 1",
    [R_BLOCKS] = "SELECT n_points, min_value, max_value, last_step, last_value, last_time_ms FROM metric_blocks "
                 "WHERE job_id = ?1 AND name = ?2 AND block BETWEEN ?3 AND ?4 ORDER BY block",
    [R_LOG_AT] = "SELECT byte_offset, text FROM logs WHERE job_id = ?1 AND byte_offset <= ?2 "
                 "ORDER BY byte_offset DESC LIMIT 1",
    [R_LOG_AFTER] = "SELECT byte_offset, text FROM logs WHERE job_id = ?1 AND byte_offset > ?2 ORDER BY byte_offset",
    [R_HISTORY] = "SELECT time_ms, COALESCE(from_state, ''), to_state, reason, message FROM state_transitions "
                  "WHERE job_id = ?1 ORDER BY id LIMIT ?2",
    [R_CKPT_LIST] = "SELECT step, kind, path, bytes, time_ms, top1 FROM checkpoints WHERE job_id = ?1 "
                    "ORDER BY step DESC, kind LIMIT ?2",
    [R_TOKEN_FIND] = "SELECT name, role, created_ms, coalesce(revoked_ms, 0) FROM api_tokens WHERE hash = ?1",
};


static void reader_destroy(void *p);

/* ------------------------------------------------------------------ helpers */

void tld_store_report(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tokenlabd store: %s\n", msg);
}

/* Length of the longest prefix of s (len bytes) of at most max bytes that does not end inside a UTF-8 sequence. */
size_t tld_store_utf8_cut(const char *s, size_t len, size_t max) {
    if (len <= max) return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

/* Copies a column's text into dst (n bytes), cut UTF-8-safely, always terminated. */
void tld_store_copy_col(char *dst, size_t n, sqlite3_stmt *st, int col) {
    const char *t = (const char *)sqlite3_column_text(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);
    if (!t) len = 0;
    len = tld_store_utf8_cut(t ? t : "", len, n - 1);
    if (len) memcpy(dst, t, len);
    dst[len] = '\0';
}

double tld_store_col_double(sqlite3_stmt *st, int col) {
    return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

void tld_store_bind_double(sqlite3_stmt *st, int i, double v) {
    if (isnan(v)) sqlite3_bind_null(st, i);
    else sqlite3_bind_double(st, i, v);
}

/* Sets busy timeout, WAL, synchronous=NORMAL and foreign keys on a new connection. */
static int configure(sqlite3 *db, int reader, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_busy_timeout(db, STORE_BUSY_MS) != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot set the busy timeout: %s", sqlite3_errmsg(db));
        goto fail;
    }
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        tl_seterr(err, errlen, "cannot set journal_mode=WAL: %s", sqlite3_errmsg(db));
        goto fail;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        tl_seterr(err, errlen, "journal_mode=WAL refused (the mode is %s; is the file on a network filesystem?)",
                  mode ? mode : "unknown");
        goto fail;
    }
    const char *pragmas = reader ? "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA query_only = ON"
                                 : "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON";
    char *msg = NULL;
    if (sqlite3_exec(db, pragmas, NULL, NULL, &msg) != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot set pragmas: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_finalize(st);
    return rc;
}

static int exec_sql(sqlite3 *db, const char *sql, const char *what, char *err, size_t errlen) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        tl_seterr(err, errlen, "%s: %s", what, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* One integer from a query without parameters; -1 with a message if it fails or returns no row. */
static int query_int(sqlite3 *db, const char *sql, int64_t *out, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        tl_seterr(err, errlen, "%s", sqlite3_errmsg(db));
        goto fail;
    }
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW) {
        tl_seterr(err, errlen, "%s", r == SQLITE_DONE ? "no row" : sqlite3_errmsg(db));
        goto fail;
    }
    *out = sqlite3_column_int64(st, 0);
    rc = 0;
fail:
    sqlite3_finalize(st);
    return rc;
}

/* The file's schema version: 0 for an empty database. */
static int read_version(tld_store *s, int64_t *version, char *err, size_t errlen) {
    char msg[STORE_ERR];
    int64_t have = 0;
    if (query_int(s->wdb, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
                  &have, msg, sizeof msg) != 0) {
        tl_seterr(err, errlen, "%s: cannot read the schema: %s", s->path, msg);
        return -1;
    }
    if (have) {
        if (query_int(s->wdb, "SELECT version FROM schema_version WHERE id = 1", version, msg, sizeof msg) != 0) {
            tl_seterr(err, errlen, "%s: cannot read the schema version: %s", s->path, msg);
            return -1;
        }
        return 0;
    }
    int64_t tables = 0;
    if (query_int(s->wdb, "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'", &tables, msg,
                  sizeof msg) != 0) {
        tl_seterr(err, errlen, "%s: cannot read the schema: %s", s->path, msg);
        return -1;
    }
    if (tables) {
        tl_seterr(err, errlen, "%s is not a tokenlabd store (it has tables but no schema_version)", s->path);
        return -1;
    }
    *version = 0;
    return 0;
}

/* Brings the file to STORE_VERSION in one transaction. */
static int migrate(tld_store *s, char *err, size_t errlen) {
    char msg[STORE_ERR];
    int64_t v = 0;
    if (exec_sql(s->wdb, "BEGIN IMMEDIATE", "cannot begin the migration", msg, sizeof msg) != 0) {
        tl_seterr(err, errlen, "%s: %s", s->path, msg);
        return -1;
    }
    if (read_version(s, &v, err, errlen) != 0) goto fail;
    if (v > STORE_VERSION) {
        tl_seterr(err, errlen,
                  "%s has store schema version %" PRId64 ", newer than version %d that this tokenlabd knows; "
                  "use a newer tokenlabd",
                  s->path, v, STORE_VERSION);
        goto fail;
    }
    if (v < 0) {
        tl_seterr(err, errlen, "%s has an invalid store schema version %" PRId64, s->path, v);
        goto fail;
    }
    for (int i = 0; i < STORE_NMIGRATIONS; i++) {
        int k = migrations[i].version;
        if (k <= v) continue;
        if (k != i + 1) { /* the table itself is wrong: a programming error, never a file's fault */
            tl_seterr(err, errlen, "store migration %d is numbered %d", i + 1, k);
            goto fail;
        }
        char what[64], upd[96];
        snprintf(what, sizeof what, "migration to schema version %d", k);
        if (exec_sql(s->wdb, migrations[i].sql, what, msg, sizeof msg) != 0) {
            tl_seterr(err, errlen, "%s: %s", s->path, msg);
            goto fail;
        }
        snprintf(upd, sizeof upd, "UPDATE schema_version SET version = %d WHERE id = 1", k);
        if (exec_sql(s->wdb, upd, what, msg, sizeof msg) != 0 || sqlite3_changes(s->wdb) != 1) {
            tl_seterr(err, errlen, "%s: %s: cannot record the version", s->path, what);
            goto fail;
        }
    }
    if (v < STORE_VERSION) {
        int64_t broken = 0;
        if (query_int(s->wdb, "SELECT count(*) FROM pragma_foreign_key_check", &broken, msg, sizeof msg) != 0 ||
            broken) {
            tl_seterr(err, errlen, "%s: foreign keys broken after migration (%s)", s->path,
                      broken ? "rows without their job" : msg);
            goto fail;
        }
    }
    if (exec_sql(s->wdb, "COMMIT", "cannot commit the migration", msg, sizeof msg) != 0) {
        tl_seterr(err, errlen, "%s: %s", s->path, msg);
        goto fail;
    }
    s->version = STORE_VERSION;
    return 0;
fail:
    sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

tld_store *tld_store_open(const char *path, char *err, size_t errlen) {
    tld_store *s = NULL;
    if (!path || !*path) {
        tl_seterr(err, errlen, "no store path");
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        tl_seterr(err, errlen, "out of memory for the store");
        return NULL;
    }
    int mu_made = 0, rmu_made = 0, cv_made = 0;
    s->path = strdup(path);
    size_t plen = strlen(path) + sizeof ".reserve";
    s->reserve_path = malloc(plen);
    if (s->reserve_path) snprintf(s->reserve_path, plen, "%s.reserve", path);
    atomic_store(&s->reserve_missing, STORE_RESERVE_BYTES);
    s->ring = calloc(STORE_QUEUE_CAP, sizeof *s->ring);
    s->dirty = calloc(STORE_QUEUE_CAP, sizeof *s->dirty);
    s->logbuf = malloc(STORE_LOG_CHUNK);
    if (!s->path || !s->ring || !s->dirty || !s->logbuf) {
        tl_seterr(err, errlen, "out of memory for the store's write queue");
        goto fail;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        tl_seterr(err, errlen, "cannot create the store mutex");
        goto fail;
    }
    mu_made = 1;
    if (pthread_mutex_init(&s->rmu, NULL) != 0) {
        tl_seterr(err, errlen, "cannot create the store mutex");
        goto fail;
    }
    rmu_made = 1;
    if (pthread_cond_init(&s->not_empty, NULL) != 0) goto fail_cv;
    cv_made = 1;
    if (pthread_cond_init(&s->not_full, NULL) != 0) goto fail_cv;
    cv_made = 2;
    if (pthread_cond_init(&s->done_cv, NULL) != 0) goto fail_cv;
    cv_made = 3;
    if (pthread_key_create(&s->key, reader_destroy) != 0) {
        tl_seterr(err, errlen, "cannot create the thread key for read connections");
        goto fail;
    }
    s->key_made = 1;

    tld_store_fault_install(); /* the full-disk switch, when a test set it (tokenlab/files.h) */
    int rc = sqlite3_open_v2(path, &s->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot open the store %s: %s", path,
                  s->wdb ? sqlite3_errmsg(s->wdb) : sqlite3_errstr(rc));
        goto fail;
    }
    char msg[STORE_ERR];
    if (configure(s->wdb, 0, msg, sizeof msg) != 0) {
        tl_seterr(err, errlen, "store %s: %s", path, msg);
        goto fail;
    }
    if (migrate(s, err, errlen) != 0) goto fail;
    for (int i = 0; i < W_COUNT; i++) {
        if (sqlite3_prepare_v3(s->wdb, tld_store_wsql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->w[i], NULL) != SQLITE_OK) {
            tl_seterr(err, errlen, "store %s: cannot prepare a write statement: %s", path, sqlite3_errmsg(s->wdb));
            goto fail;
        }
    }
    tld_store_reserve_make(s); /* before the writer starts; without room it is made later */
    if (tld_store_writer_start(s, err, errlen) != 0) goto fail;
    return s;

fail_cv:
    tl_seterr(err, errlen, "cannot create the store's condition variables");
fail:
    if (s->key_made) pthread_key_delete(s->key);
    for (int i = 0; i < W_COUNT; i++) sqlite3_finalize(s->w[i]);
    if (s->wdb) sqlite3_close(s->wdb);
    if (cv_made > 2) pthread_cond_destroy(&s->done_cv);
    if (cv_made > 1) pthread_cond_destroy(&s->not_full);
    if (cv_made > 0) pthread_cond_destroy(&s->not_empty);
    if (rmu_made) pthread_mutex_destroy(&s->rmu);
    if (mu_made) pthread_mutex_destroy(&s->mu);
    free(s->logbuf);
    free(s->dirty);
    free(s->ring);
    free(s->reserve_path);
    free(s->path);
    free(s);
    return NULL;
}

int tld_store_schema_version(tld_store *s) {
    return s ? s->version : -1;
}

static void reader_close(rconn *c) {
    for (int i = 0; i < R_COUNT; i++) sqlite3_finalize(c->st[i]);
    if (c->db && sqlite3_close(c->db) != SQLITE_OK)
        tld_store_report("cannot close a read connection: %s", sqlite3_errmsg(c->db));
    free(c);
}

/* Key destructor: the thread exits. */
static void reader_destroy(void *p) {
    rconn *c = p;
    tld_store *s = c->s;
    pthread_mutex_lock(&s->rmu);
    if (c->prev) c->prev->next = c->next;
    else s->readers = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&s->rmu);
    reader_close(c);
}

/* This thread's read connection, opened on first use. */
rconn *tld_store_reader(tld_store *s, char *err, size_t errlen) {
    rconn *c = pthread_getspecific(s->key);
    if (c) return c;
    char msg[STORE_ERR];
    c = calloc(1, sizeof *c);
    if (!c) {
        tl_seterr(err, errlen, "out of memory for a read connection");
        return NULL;
    }
    c->s = s;
    int rc = sqlite3_open_v2(s->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot open a read connection to %s: %s", s->path,
                  c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        goto fail;
    }
    if (configure(c->db, 1, msg, sizeof msg) != 0) {
        tl_seterr(err, errlen, "read connection to %s: %s", s->path, msg);
        goto fail;
    }
    if (pthread_setspecific(s->key, c) != 0) {
        tl_seterr(err, errlen, "cannot keep the read connection of this thread");
        goto fail;
    }
    pthread_mutex_lock(&s->rmu);
    c->next = s->readers;
    if (s->readers) s->readers->prev = c;
    s->readers = c;
    pthread_mutex_unlock(&s->rmu);
    return c;
fail:
    reader_close(c);
    return NULL;
}

/* A prepared read statement of this thread's connection, reset and unbound by the caller after use. */
sqlite3_stmt *tld_store_rstmt(rconn *c, int q, char *err, size_t errlen) {
    if (!c->st[q] &&
        sqlite3_prepare_v3(c->db, tld_store_rsql[q], -1, SQLITE_PREPARE_PERSISTENT, &c->st[q], NULL) != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot prepare a read statement: %s", sqlite3_errmsg(c->db));
        return NULL;
    }
    return c->st[q];
}

/* Runs a statement without result rows (BEGIN, COMMIT, ROLLBACK) on a read connection. */
int tld_store_rexec(rconn *c, int q, char *err, size_t errlen) {
    sqlite3_stmt *st = tld_store_rstmt(c, q, err, errlen);
    if (!st) return -1;
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        tl_seterr(err, errlen, "%s failed: %s", tld_store_rsql[q], sqlite3_errmsg(c->db));
        return -1;
    }
    return 0;
}

sqlite3 *tld_store_read_db(tld_store *s, char *err, size_t errlen) {
    rconn *c = tld_store_reader(s, err, errlen);
    return c ? c->db : NULL;
}

void tld_store_close(tld_store *s) {
    if (!s) return;
    tld_store_writer_stop(s);
    pthread_key_delete(s->key); /* no destructor runs after this */
    pthread_mutex_lock(&s->rmu);
    rconn *c = s->readers;
    s->readers = NULL;
    pthread_mutex_unlock(&s->rmu);
    while (c) {
        rconn *next = c->next;
        reader_close(c);
        c = next;
    }
    for (int i = 0; i < W_COUNT; i++) sqlite3_finalize(s->w[i]);
    if (sqlite3_close(s->wdb) != SQLITE_OK) tld_store_report("cannot close %s: %s", s->path, sqlite3_errmsg(s->wdb));
    pthread_cond_destroy(&s->done_cv);
    pthread_cond_destroy(&s->not_full);
    pthread_cond_destroy(&s->not_empty);
    pthread_mutex_destroy(&s->rmu);
    pthread_mutex_destroy(&s->mu);
    free(s->logbuf);
    free(s->dirty);
    free(s->ring);
    free(s->reserve_path);
    free(s->path);
    free(s);
}
