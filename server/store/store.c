/*
 * store.c: tokenlabd's SQLite store of jobs, metrics, logs and checkpoints
 * (see store.h; the schema and its invariants are in schema/store.sql).
 *
 * Owns:
 *   - the database file: created and migrated on open. migrations[] lists
 *     (version, sql) steps; the steps past the file's version (schema_version
 *     table) run in one transaction, which also records the new version.
 *     Step 1 is schema/store.sql, embedded in store_schema.c. A file newer
 *     than this code, or a database that is not a store, is refused.
 *   - the writer connection and the writer thread, the only thread that
 *     writes after open. Writes are ops in a bounded ring (STORE_QUEUE_CAP
 *     entries; a producer blocks while it is full: nothing is dropped and
 *     memory stays bounded). The writer takes every op queued so far and
 *     applies the lot in one transaction (batching), then wakes the callers
 *     of awaited ops. Queued ops (metric points, log lines, progress) return
 *     at once; a queued op that fails is reported on stderr with the count of
 *     failures, and the next tld_store_flush returns -1. Awaited ops (job
 *     create, transition, run dir, attempt, delete, metric truncate,
 *     checkpoint add, flush) each run in a savepoint, so one refused op
 *     leaves the others of its batch alone, and return their own result once
 *     the batch is committed (or an error if the commit failed).
 *   - the read connections: one per thread that reads (pthread key; closed
 *     by the key's destructor when the thread exits, or by tld_store_close),
 *     each with its own cache of prepared statements, query_only. Reads that
 *     take several statements run in one read transaction (a snapshot).
 * Every connection: journal_mode=WAL, synchronous=NORMAL (Debian's SQLite
 * defaults to FULL), busy_timeout 5000 ms, foreign_keys=ON.
 *
 * Threads: every tld_store_* function may be called from any thread at once,
 * except tld_store_close, which must not overlap any other call on the store
 * (nor the exit of a thread that used it).
 *
 * Metrics: a point at an existing (job, name, step) replaces it (upsert).
 * Each series is also summarised in blocks of 64 steps (metric_blocks: count,
 * min, max, last), recomputed from the points the batch touched before the
 * batch commits and before any awaited op of the batch runs (a truncation
 * sees them), in the same transaction. A bucketed query reads whole blocks
 * for the inside of each bucket and points only for the (at most 2 x 63
 * steps of) edges, so 1000 buckets over 1,000,000 points read ~16,000 blocks
 * and ~64,000 points instead of 1,000,000 points (a plain GROUP BY over the
 * points took ~300 ms here, a bare scan ~120 ms). Buckets: lo and hi are the
 * first and last points within [start_step, end_step] (no bucket is spent on
 * empty ends), w = ceil((hi - lo + 1) / max_points), bucket k covers steps
 * lo + k*w .. lo + k*w + w - 1 and reports lo + k*w as its step; empty
 * buckets are left out. Steps are 0 .. 2^62. A NaN value is stored as NULL
 * (SQLite's way) and read back as NaN; min and max skip NaNs.
 *
 * Logs: lines are coalesced per job within a batch into chunks of up to 64
 * KiB, each stored at the byte offset where the previous one ended. A line
 * longer than that is cut (UTF-8-safely) and marked. A read cut short by its
 * limit ends before a UTF-8 sequence it would split (unless that leaves
 * nothing), so each slice is valid text when the log is; buf is
 * NUL-terminated when there is room after the bytes.
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
#include <time.h>

#include "store/store_internal.h"
#include "store/store_schema.h"

#define STORE_QUEUE_CAP 65536          /* queued writes before producers block */
#define STORE_BUSY_MS 5000
#define STORE_BLOCK 64                 /* steps per metric_blocks row; part of the schema */
#define STORE_STEP_MAX ((int64_t)1 << 62)
#define STORE_NAME_MAX 64              /* metric name bytes + NUL (tld_metric_summary.name) */
#define STORE_LOG_CHUNK 65536          /* bytes per log chunk at most */
#define STORE_ERR 256

/* Migration steps, in order: each takes a file from version - 1 to version, inside the open's transaction. */
static const struct {
    int version;
    const char *sql;
} migrations[] = {
    {1, tld_store_schema_v1}, /* schema/store.sql */
    {2, tld_store_schema_v2}, /* schema/store_v2.sql: models, token inspection */
};
#define STORE_NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))
#define STORE_VERSION (migrations[STORE_NMIGRATIONS - 1].version)

static const char *const state_names[TLD_JOB_NSTATES] = {"QUEUED",    "RUNNING", "CANCELLING",
                                                        "SUCCEEDED", "FAILED",  "CANCELLED"};

/* ------------------------------------------------------------------ statements */

enum {
    W_BEGIN,
    W_COMMIT,
    W_ROLLBACK,
    W_SAVEPOINT,
    W_RELEASE,
    W_ROLLBACK_TO,
    W_METRIC_PUT,
    W_PROGRESS,
    W_LOG_PUT,
    W_JOB_BY_KEY,
    W_JOB_INSERT,
    W_JOB_STATE,
    W_JOB_TRANSITION,
    W_JOB_RUN_DIR,
    W_JOB_ATTEMPT,
    W_JOB_DELETE,
    W_TRUNC_NAMES,
    W_TRUNC_POINTS,
    W_TRUNC_BLOCKS,
    W_BLOCK_AGG,
    W_BLOCK_LAST,
    W_BLOCK_PUT,
    W_BLOCK_DEL,
    W_CKPT_PUT,
    W_COUNT
};

static const char *const wsql[W_COUNT] = {
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
    [W_JOB_ATTEMPT] = "UPDATE jobs SET attempt = attempt + 1 WHERE id = ?1",
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
    "step, total_steps, eta_seconds, coalesce(idempotency_key, ''), run_dir"

enum {
    R_BEGIN,
    R_COMMIT,
    R_ROLLBACK,
    R_JOB_GET,
    R_JOB_LIST,
    R_JOB_LIST_STATE,
    R_JOB_EXISTS,
    R_QUEUE_POS,
    R_COUNTS,
    R_METRIC_NAMES,
    R_METRIC_COUNT,
    R_METRIC_RAW,
    R_METRIC_FIRST,
    R_METRIC_LAST,
    R_BLOCKS,
    R_LOG_AT,
    R_LOG_AFTER,
    R_CKPT_LIST,
    R_HISTORY,
    R_COUNT
};

static const char *const rsql[R_COUNT] = {
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
};

/* ------------------------------------------------------------------ types */

typedef enum {
    OP_METRIC,
    OP_LOG,
    OP_PROGRESS,
    /* awaited */
    OP_CREATE,
    OP_TRANSITION,
    OP_RUN_DIR,
    OP_ATTEMPT,
    OP_DELETE,
    OP_TRUNCATE,
    OP_CHECKPOINT,
    OP_EXEC,      /* a function of store_models.c / store_inspect.c on the writer connection */
    OP_FLUSH
} op_kind;

/* An awaited op lives on its caller's stack; the caller waits for done. */
typedef struct {
    /* inputs, borrowed from the caller */
    const char *name, *spec, *key, *reason, *message, *run_dir;
    unsigned from_mask;
    tld_job_state to;
    int64_t step;
    const tld_checkpoint_row *ckpt;
    tld_store_write_fn fn;
    void *fn_arg;
    /* results */
    int rc;
    int64_t id;
    int existed;
    char err[STORE_ERR];
    int done; /* under tld_store.mu */
} await_op;

typedef struct {
    op_kind kind;
    int64_t job;
    union {
        struct {
            int64_t step, time_ms;
            double value;
            char name[STORE_NAME_MAX];
        } metric;
        struct {
            char *text; /* malloc'd, ends in '\n'; freed by the writer */
            size_t len;
        } log;
        struct {
            int64_t epoch, step, total;
            double eta;
        } progress;
        await_op *aw;
    } u;
} wop;

typedef struct {
    int64_t job;
    const char *name; /* in a ring entry of the current batch */
    int64_t block;
} dirty_block;

typedef struct rconn {
    tld_store *s;
    sqlite3 *db;
    sqlite3_stmt *st[R_COUNT];
    struct rconn *prev, *next;
} rconn;

struct tld_store {
    char *path;
    int version;

    /* writer: wdb and w[] belong to the writer thread once it runs */
    sqlite3 *wdb;
    sqlite3_stmt *w[W_COUNT];
    pthread_t writer;
    int writer_started;

    pthread_mutex_t mu; /* ring, stopping, done flags, failed_since_flush */
    pthread_cond_t not_empty, not_full, done_cv;
    wop *ring;
    size_t head, count;
    int stopping;
    int64_t failed_since_flush;
    char last_failure[STORE_ERR];

    /* writer-thread scratch for one batch */
    dirty_block *dirty;
    size_t ndirty;
    char *logbuf;
    size_t loglen;
    int64_t logjob;
    int64_t loglines;
    int64_t batch_failures;
    char batch_failure[STORE_ERR];

    /* read connections */
    pthread_key_t key;
    int key_made;
    pthread_mutex_t rmu;
    rconn *readers;
};

/* ------------------------------------------------------------------ helpers */

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* For functions of store.h without an error buffer. */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tokenlabd store: %s\n", msg);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Length of the longest prefix of s (len bytes) of at most max bytes that does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max) {
    if (len <= max) return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

/* Length of buf[0..len) without a UTF-8 sequence left incomplete at its end (at most 3 bytes go). */
static size_t utf8_complete(const char *buf, size_t len) {
    for (size_t back = 1; back <= 4 && back <= len; back++) {
        unsigned char c = (unsigned char)buf[len - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back for the lead */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? len - back : len;
    }
    return len; /* not UTF-8: leave it */
}

/* Copies a column's text into dst (n bytes), cut UTF-8-safely, always terminated. */
static void copy_col(char *dst, size_t n, sqlite3_stmt *st, int col) {
    const char *t = (const char *)sqlite3_column_text(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);
    if (!t) len = 0;
    len = utf8_cut(t ? t : "", len, n - 1);
    if (len) memcpy(dst, t, len);
    dst[len] = '\0';
}

static double col_double(sqlite3_stmt *st, int col) {
    return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

static void bind_double(sqlite3_stmt *st, int i, double v) {
    if (isnan(v)) sqlite3_bind_null(st, i);
    else sqlite3_bind_double(st, i, v);
}

const char *tld_job_state_name(tld_job_state s) {
    return ((int)s >= 0 && s < TLD_JOB_NSTATES) ? state_names[s] : "?";
}

int tld_job_state_parse(const char *name, tld_job_state *out) {
    if (!name) return -1;
    for (int i = 0; i < TLD_JOB_NSTATES; i++) {
        if (strcmp(name, state_names[i]) == 0) {
            if (out) *out = (tld_job_state)i;
            return 0;
        }
    }
    return -1;
}

int tld_job_state_final(tld_job_state s) {
    return s == TLD_JOB_SUCCEEDED || s == TLD_JOB_FAILED || s == TLD_JOB_CANCELLED;
}

/* The state machine of schema/store.sql (trigger jobs_state_machine), checked here first for a clear message. */
static int transition_allowed(tld_job_state from, tld_job_state to) {
    switch (from) {
    case TLD_JOB_QUEUED:
        return to == TLD_JOB_RUNNING || to == TLD_JOB_CANCELLED || to == TLD_JOB_FAILED;
    case TLD_JOB_RUNNING:
        return to == TLD_JOB_SUCCEEDED || to == TLD_JOB_FAILED || to == TLD_JOB_CANCELLING || to == TLD_JOB_QUEUED;
    case TLD_JOB_CANCELLING:
        return to == TLD_JOB_CANCELLED || to == TLD_JOB_FAILED || to == TLD_JOB_SUCCEEDED || to == TLD_JOB_QUEUED;
    default:
        return 0;
    }
}

void tld_job_free(tld_job *j) {
    if (!j) return;
    free(j->spec_json);
    j->spec_json = NULL;
}

/* Sets busy timeout, WAL, synchronous=NORMAL and foreign keys on a new connection. */
static int configure(sqlite3 *db, int reader, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_busy_timeout(db, STORE_BUSY_MS) != SQLITE_OK) {
        seterr(err, errlen, "cannot set the busy timeout: %s", sqlite3_errmsg(db));
        goto fail;
    }
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        seterr(err, errlen, "cannot set journal_mode=WAL: %s", sqlite3_errmsg(db));
        goto fail;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        seterr(err, errlen, "journal_mode=WAL refused (the mode is %s; is the file on a network filesystem?)",
               mode ? mode : "unknown");
        goto fail;
    }
    const char *pragmas = reader ? "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA query_only = ON"
                                 : "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON";
    char *msg = NULL;
    if (sqlite3_exec(db, pragmas, NULL, NULL, &msg) != SQLITE_OK) {
        seterr(err, errlen, "cannot set pragmas: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_finalize(st);
    return rc;
}

/* ------------------------------------------------------------------ open and migrate */

static int exec_sql(sqlite3 *db, const char *sql, const char *what, char *err, size_t errlen) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        seterr(err, errlen, "%s: %s", what, msg ? msg : sqlite3_errmsg(db));
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
        seterr(err, errlen, "%s", sqlite3_errmsg(db));
        goto fail;
    }
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW) {
        seterr(err, errlen, "%s", r == SQLITE_DONE ? "no row" : sqlite3_errmsg(db));
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
        seterr(err, errlen, "%s: cannot read the schema: %s", s->path, msg);
        return -1;
    }
    if (have) {
        if (query_int(s->wdb, "SELECT version FROM schema_version WHERE id = 1", version, msg, sizeof msg) != 0) {
            seterr(err, errlen, "%s: cannot read the schema version: %s", s->path, msg);
            return -1;
        }
        return 0;
    }
    int64_t tables = 0;
    if (query_int(s->wdb, "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'", &tables, msg,
                  sizeof msg) != 0) {
        seterr(err, errlen, "%s: cannot read the schema: %s", s->path, msg);
        return -1;
    }
    if (tables) {
        seterr(err, errlen, "%s is not a tokenlabd store (it has tables but no schema_version)", s->path);
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
        seterr(err, errlen, "%s: %s", s->path, msg);
        return -1;
    }
    if (read_version(s, &v, err, errlen) != 0) goto fail;
    if (v > STORE_VERSION) {
        seterr(err, errlen,
               "%s has store schema version %" PRId64 ", newer than version %d that this tokenlabd knows; "
               "use a newer tokenlabd",
               s->path, v, STORE_VERSION);
        goto fail;
    }
    if (v < 0) {
        seterr(err, errlen, "%s has an invalid store schema version %" PRId64, s->path, v);
        goto fail;
    }
    for (int i = 0; i < STORE_NMIGRATIONS; i++) {
        int k = migrations[i].version;
        if (k <= v) continue;
        if (k != i + 1) { /* the table itself is wrong: a programming error, never a file's fault */
            seterr(err, errlen, "store migration %d is numbered %d", i + 1, k);
            goto fail;
        }
        char what[64], upd[96];
        snprintf(what, sizeof what, "migration to schema version %d", k);
        if (exec_sql(s->wdb, migrations[i].sql, what, msg, sizeof msg) != 0) {
            seterr(err, errlen, "%s: %s", s->path, msg);
            goto fail;
        }
        snprintf(upd, sizeof upd, "UPDATE schema_version SET version = %d WHERE id = 1", k);
        if (exec_sql(s->wdb, upd, what, msg, sizeof msg) != 0 || sqlite3_changes(s->wdb) != 1) {
            seterr(err, errlen, "%s: %s: cannot record the version", s->path, what);
            goto fail;
        }
    }
    if (v < STORE_VERSION) {
        int64_t broken = 0;
        if (query_int(s->wdb, "SELECT count(*) FROM pragma_foreign_key_check", &broken, msg, sizeof msg) != 0 ||
            broken) {
            seterr(err, errlen, "%s: foreign keys broken after migration (%s)", s->path,
                   broken ? "rows without their job" : msg);
            goto fail;
        }
    }
    if (exec_sql(s->wdb, "COMMIT", "cannot commit the migration", msg, sizeof msg) != 0) {
        seterr(err, errlen, "%s: %s", s->path, msg);
        goto fail;
    }
    s->version = STORE_VERSION;
    return 0;
fail:
    sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static void *writer_main(void *arg);
static void reader_destroy(void *p);

tld_store *tld_store_open(const char *path, char *err, size_t errlen) {
    tld_store *s = NULL;
    if (!path || !*path) {
        seterr(err, errlen, "no store path");
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        seterr(err, errlen, "out of memory for the store");
        return NULL;
    }
    int mu_made = 0, rmu_made = 0, cv_made = 0;
    s->path = strdup(path);
    s->ring = calloc(STORE_QUEUE_CAP, sizeof *s->ring);
    s->dirty = calloc(STORE_QUEUE_CAP, sizeof *s->dirty);
    s->logbuf = malloc(STORE_LOG_CHUNK);
    if (!s->path || !s->ring || !s->dirty || !s->logbuf) {
        seterr(err, errlen, "out of memory for the store's write queue");
        goto fail;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        seterr(err, errlen, "cannot create the store mutex");
        goto fail;
    }
    mu_made = 1;
    if (pthread_mutex_init(&s->rmu, NULL) != 0) {
        seterr(err, errlen, "cannot create the store mutex");
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
        seterr(err, errlen, "cannot create the thread key for read connections");
        goto fail;
    }
    s->key_made = 1;

    int rc = sqlite3_open_v2(path, &s->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        seterr(err, errlen, "cannot open the store %s: %s", path, s->wdb ? sqlite3_errmsg(s->wdb) : sqlite3_errstr(rc));
        goto fail;
    }
    char msg[STORE_ERR];
    if (configure(s->wdb, 0, msg, sizeof msg) != 0) {
        seterr(err, errlen, "store %s: %s", path, msg);
        goto fail;
    }
    if (migrate(s, err, errlen) != 0) goto fail;
    for (int i = 0; i < W_COUNT; i++) {
        if (sqlite3_prepare_v3(s->wdb, wsql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->w[i], NULL) != SQLITE_OK) {
            seterr(err, errlen, "store %s: cannot prepare a write statement: %s", path, sqlite3_errmsg(s->wdb));
            goto fail;
        }
    }
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        seterr(err, errlen, "cannot start the store's writer thread");
        goto fail;
    }
    s->writer_started = 1;
    return s;

fail_cv:
    seterr(err, errlen, "cannot create the store's condition variables");
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
    free(s->path);
    free(s);
    return NULL;
}

int tld_store_schema_version(tld_store *s) {
    return s ? s->version : -1;
}

/* ------------------------------------------------------------------ read connections */

static void reader_close(rconn *c) {
    for (int i = 0; i < R_COUNT; i++) sqlite3_finalize(c->st[i]);
    if (c->db && sqlite3_close(c->db) != SQLITE_OK) report("cannot close a read connection: %s", sqlite3_errmsg(c->db));
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
static rconn *reader(tld_store *s, char *err, size_t errlen) {
    rconn *c = pthread_getspecific(s->key);
    if (c) return c;
    char msg[STORE_ERR];
    c = calloc(1, sizeof *c);
    if (!c) {
        seterr(err, errlen, "out of memory for a read connection");
        return NULL;
    }
    c->s = s;
    int rc = sqlite3_open_v2(s->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        seterr(err, errlen, "cannot open a read connection to %s: %s", s->path,
               c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        goto fail;
    }
    if (configure(c->db, 1, msg, sizeof msg) != 0) {
        seterr(err, errlen, "read connection to %s: %s", s->path, msg);
        goto fail;
    }
    if (pthread_setspecific(s->key, c) != 0) {
        seterr(err, errlen, "cannot keep the read connection of this thread");
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
static sqlite3_stmt *rstmt(rconn *c, int q, char *err, size_t errlen) {
    if (!c->st[q] && sqlite3_prepare_v3(c->db, rsql[q], -1, SQLITE_PREPARE_PERSISTENT, &c->st[q], NULL) != SQLITE_OK) {
        seterr(err, errlen, "cannot prepare a read statement: %s", sqlite3_errmsg(c->db));
        return NULL;
    }
    return c->st[q];
}

/* Runs a statement without result rows (BEGIN, COMMIT, ROLLBACK) on a read connection. */
static int rexec(rconn *c, int q, char *err, size_t errlen) {
    sqlite3_stmt *st = rstmt(c, q, err, errlen);
    if (!st) return -1;
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        seterr(err, errlen, "%s failed: %s", rsql[q], sqlite3_errmsg(c->db));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ the write queue */

/* Adds an op, waiting while the ring is full. Not for use after tld_store_close has begun. */
static void enqueue(tld_store *s, const wop *op) {
    pthread_mutex_lock(&s->mu);
    while (s->count == STORE_QUEUE_CAP) pthread_cond_wait(&s->not_full, &s->mu);
    s->ring[(s->head + s->count) % STORE_QUEUE_CAP] = *op;
    s->count++;
    pthread_cond_signal(&s->not_empty);
    pthread_mutex_unlock(&s->mu);
}

/* Queues an awaited op and waits until its batch is committed (or failed). */
static int submit(tld_store *s, op_kind kind, int64_t job, await_op *aw, char *err, size_t errlen) {
    wop op;
    memset(&op, 0, sizeof op);
    op.kind = kind;
    op.job = job;
    op.u.aw = aw;
    aw->rc = -1;
    aw->err[0] = '\0';
    aw->done = 0;
    enqueue(s, &op);
    pthread_mutex_lock(&s->mu);
    while (!aw->done) pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    if (aw->rc != 0) seterr(err, errlen, "%s", aw->err[0] ? aw->err : "store write failed");
    return aw->rc;
}

int tld_store_write_exec(tld_store *s, tld_store_write_fn fn, void *arg, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.fn = fn;
    aw.fn_arg = arg;
    return submit(s, OP_EXEC, 0, &aw, err, errlen);
}

sqlite3 *tld_store_read_db(tld_store *s, char *err, size_t errlen) {
    rconn *c = reader(s, err, errlen);
    return c ? c->db : NULL;
}

/* ------------------------------------------------------------------ the writer */

/* Steps a write statement to completion (no rows); resets it. */
static int wstep(tld_store *s, int q) {
    int r = sqlite3_step(s->w[q]);
    sqlite3_reset(s->w[q]);
    sqlite3_clear_bindings(s->w[q]);
    return r == SQLITE_DONE ? 0 : -1;
}

static void queued_failed(tld_store *s, int64_t n, const char *what) {
    if (s->batch_failures == 0)
        snprintf(s->batch_failure, sizeof s->batch_failure, "%s: %s", what, sqlite3_errmsg(s->wdb));
    s->batch_failures += n;
}

static void mark_dirty(tld_store *s, int64_t job, const char *name, int64_t block) {
    if (s->ndirty) {
        dirty_block *d = &s->dirty[s->ndirty - 1];
        if (d->job == job && d->block == block && strcmp(d->name, name) == 0) return;
    }
    s->dirty[s->ndirty++] = (dirty_block){job, name, block}; /* at most one per op: never past the ring size */
}

static int cmp_dirty(const void *a, const void *b) {
    const dirty_block *x = a, *y = b;
    if (x->job != y->job) return x->job < y->job ? -1 : 1;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    if (x->block != y->block) return x->block < y->block ? -1 : 1;
    return 0;
}

/* Recomputes one metric_blocks row from the points it covers. */
static int block_recompute(tld_store *s, int64_t job, const char *name, int64_t block, char *err, size_t errlen) {
    sqlite3_stmt *agg = s->w[W_BLOCK_AGG], *last = s->w[W_BLOCK_LAST];
    int64_t lo = block * STORE_BLOCK, hi = lo + STORE_BLOCK - 1;
    int rc = -1;
    sqlite3_bind_int64(agg, 1, job);
    sqlite3_bind_text(agg, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(agg, 3, lo);
    sqlite3_bind_int64(agg, 4, hi);
    if (sqlite3_step(agg) != SQLITE_ROW) {
        seterr(err, errlen, "cannot summarise metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(s->wdb));
        goto fail;
    }
    int64_t n = sqlite3_column_int64(agg, 0);
    if (n == 0) { /* no points left: no block row */
        sqlite3_bind_int64(s->w[W_BLOCK_DEL], 1, job);
        sqlite3_bind_text(s->w[W_BLOCK_DEL], 2, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->w[W_BLOCK_DEL], 3, block);
        if (wstep(s, W_BLOCK_DEL) != 0)
            seterr(err, errlen, "cannot drop a summary of metric %s of job %" PRId64 ": %s", name, job,
                   sqlite3_errmsg(s->wdb));
        else
            rc = 0;
        goto fail;
    }
    double mn = col_double(agg, 1), mx = col_double(agg, 2);
    int64_t last_step = sqlite3_column_int64(agg, 3);
    sqlite3_bind_int64(last, 1, job);
    sqlite3_bind_text(last, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(last, 3, last_step);
    if (sqlite3_step(last) != SQLITE_ROW) {
        seterr(err, errlen, "cannot read the last point of metric %s of job %" PRId64 ": %s", name, job,
               sqlite3_errmsg(s->wdb));
        goto fail;
    }
    sqlite3_stmt *put = s->w[W_BLOCK_PUT];
    sqlite3_bind_int64(put, 1, job);
    sqlite3_bind_text(put, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(put, 3, block);
    sqlite3_bind_int64(put, 4, n);
    bind_double(put, 5, mn);
    bind_double(put, 6, mx);
    sqlite3_bind_int64(put, 7, last_step);
    bind_double(put, 8, col_double(last, 0));
    sqlite3_bind_int64(put, 9, sqlite3_column_int64(last, 1));
    if (wstep(s, W_BLOCK_PUT) != 0) {
        seterr(err, errlen, "cannot store a summary of metric %s of job %" PRId64 ": %s", name, job,
               sqlite3_errmsg(s->wdb));
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_reset(agg);
    sqlite3_clear_bindings(agg);
    sqlite3_reset(last);
    sqlite3_clear_bindings(last);
    return rc;
}

/* Writes the pending log chunk of the batch. */
static void log_flush(tld_store *s) {
    if (s->loglen == 0) return;
    sqlite3_bind_int64(s->w[W_LOG_PUT], 1, s->logjob);
    sqlite3_bind_text(s->w[W_LOG_PUT], 2, s->logbuf, (int)s->loglen, SQLITE_STATIC);
    if (wstep(s, W_LOG_PUT) != 0) {
        char what[64];
        snprintf(what, sizeof what, "log lines of job %" PRId64, s->logjob);
        queued_failed(s, s->loglines, what);
    }
    s->loglen = 0;
    s->loglines = 0;
}

static void log_add(tld_store *s, int64_t job, const char *text, size_t len) {
    if (s->loglen && (s->logjob != job || s->loglen + len > STORE_LOG_CHUNK)) log_flush(s);
    s->logjob = job;
    memcpy(s->logbuf + s->loglen, text, len); /* len <= STORE_LOG_CHUNK (tld_store_log_append) */
    s->loglen += len;
    s->loglines++;
}

static void apply_queued(tld_store *s, wop *op) {
    switch (op->kind) {
    case OP_METRIC: {
        sqlite3_stmt *st = s->w[W_METRIC_PUT];
        sqlite3_bind_int64(st, 1, op->job);
        sqlite3_bind_text(st, 2, op->u.metric.name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, op->u.metric.step);
        bind_double(st, 4, op->u.metric.value);
        sqlite3_bind_int64(st, 5, op->u.metric.time_ms);
        if (wstep(s, W_METRIC_PUT) != 0) {
            char what[128];
            snprintf(what, sizeof what, "metric %s of job %" PRId64, op->u.metric.name, op->job);
            queued_failed(s, 1, what);
            return;
        }
        mark_dirty(s, op->job, op->u.metric.name, op->u.metric.step / STORE_BLOCK);
        return;
    }
    case OP_PROGRESS: {
        sqlite3_stmt *st = s->w[W_PROGRESS];
        sqlite3_bind_int64(st, 1, op->job);
        sqlite3_bind_int64(st, 2, op->u.progress.epoch);
        sqlite3_bind_int64(st, 3, op->u.progress.step);
        sqlite3_bind_int64(st, 4, op->u.progress.total);
        sqlite3_bind_double(st, 5, op->u.progress.eta);
        if (wstep(s, W_PROGRESS) != 0) {
            char what[64];
            snprintf(what, sizeof what, "progress of job %" PRId64, op->job);
            queued_failed(s, 1, what);
        }
        return;
    }
    case OP_LOG:
        log_add(s, op->job, op->u.log.text, op->u.log.len);
        return;
    default:
        return;
    }
}

/* The state of a job inside the write transaction: 0, 1 (not found) or -1 (error in aw->err). */
static int job_state_w(tld_store *s, int64_t job, tld_job_state *state, await_op *aw) {
    sqlite3_stmt *st = s->w[W_JOB_STATE];
    int rc = -1;
    sqlite3_bind_int64(st, 1, job);
    int r = sqlite3_step(st);
    if (r == SQLITE_DONE) {
        snprintf(aw->err, sizeof aw->err, "job %" PRId64 " not found", job);
        rc = 1;
    } else if (r != SQLITE_ROW) {
        snprintf(aw->err, sizeof aw->err, "cannot read job %" PRId64 ": %s", job, sqlite3_errmsg(s->wdb));
    } else if (tld_job_state_parse((const char *)sqlite3_column_text(st, 0), state) != 0) {
        snprintf(aw->err, sizeof aw->err, "job %" PRId64 " has an unknown state '%s'", job,
                 (const char *)sqlite3_column_text(st, 0));
    } else {
        rc = 0;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static int do_create(tld_store *s, await_op *aw) {
    if (aw->key) {
        sqlite3_stmt *st = s->w[W_JOB_BY_KEY];
        sqlite3_bind_text(st, 1, aw->key, -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            aw->id = sqlite3_column_int64(st, 0);
            aw->existed = 1;
        }
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (r == SQLITE_ROW) return 0;
        if (r != SQLITE_DONE) {
            snprintf(aw->err, sizeof aw->err, "cannot look up the idempotency key: %s", sqlite3_errmsg(s->wdb));
            return -1;
        }
    }
    sqlite3_stmt *st = s->w[W_JOB_INSERT];
    sqlite3_bind_text(st, 1, aw->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, aw->spec, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms());
    if (aw->key) sqlite3_bind_text(st, 4, aw->key, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 4);
    if (wstep(s, W_JOB_INSERT) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot create the job: %s", sqlite3_errmsg(s->wdb));
        return -1;
    }
    aw->id = sqlite3_last_insert_rowid(s->wdb);
    aw->existed = 0;
    return 0;
}

static int do_transition(tld_store *s, int64_t job, await_op *aw) {
    tld_job_state cur;
    if (job_state_w(s, job, &cur, aw) != 0) return -1;
    if (!(aw->from_mask & (1u << cur))) {
        char want[96] = "";
        size_t at = 0;
        for (int i = 0; i < TLD_JOB_NSTATES; i++) {
            if (!(aw->from_mask & (1u << i))) continue;
            int w = snprintf(want + at, sizeof want - at, "%s%s", at ? " or " : "", state_names[i]);
            if (w < 0 || (size_t)w >= sizeof want - at) break;
            at += (size_t)w;
        }
        snprintf(aw->err, sizeof aw->err, "invalid transition: job %" PRId64 " is %s, not %s", job,
                 state_names[cur], at ? want : "in any of the given states");
        return -1;
    }
    if (!transition_allowed(cur, aw->to)) {
        snprintf(aw->err, sizeof aw->err, "invalid transition: job %" PRId64 " cannot go from %s to %s", job,
                 state_names[cur], state_names[aw->to]);
        return -1;
    }
    sqlite3_stmt *st = s->w[W_JOB_TRANSITION];
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, state_names[aw->to], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, aw->reason ? aw->reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, aw->message ? aw->message : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, now_ms());
    sqlite3_bind_int(st, 6, aw->to == TLD_JOB_RUNNING);
    sqlite3_bind_int(st, 7, tld_job_state_final(aw->to));
    if (wstep(s, W_JOB_TRANSITION) != 0) {
        snprintf(aw->err, sizeof aw->err, "invalid transition: job %" PRId64 " from %s to %s refused: %s", job,
                 state_names[cur], state_names[aw->to], sqlite3_errmsg(s->wdb));
        return -1;
    }
    return 0;
}

/* An UPDATE or DELETE of one job by id: "not found" when no row changed. */
static int do_job_update(tld_store *s, int q, int64_t job, await_op *aw, const char *what) {
    sqlite3_bind_int64(s->w[q], 1, job);
    if (q == W_JOB_RUN_DIR) sqlite3_bind_text(s->w[q], 2, aw->run_dir, -1, SQLITE_STATIC);
    if (wstep(s, q) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot %s job %" PRId64 ": %s", what, job, sqlite3_errmsg(s->wdb));
        return -1;
    }
    if (sqlite3_changes(s->wdb) == 0) {
        snprintf(aw->err, sizeof aw->err, "job %" PRId64 " not found", job);
        return -1;
    }
    return 0;
}

typedef struct {
    char (*names)[STORE_NAME_MAX];
    int n, cap;
} name_list;

static int do_truncate(tld_store *s, int64_t job, await_op *aw) {
    tld_job_state cur;
    name_list nl = {NULL, 0, 0};
    int rc = -1;
    if (job_state_w(s, job, &cur, aw) != 0) return -1;
    int64_t step = aw->step < -1 ? -1 : aw->step;
    int64_t keep_block = step < 0 ? -1 : step / STORE_BLOCK; /* blocks after this one go entirely */
    /* The names with points past step (every series has its blocks). */
    sqlite3_stmt *st = s->w[W_TRUNC_NAMES];
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, keep_block < 0 ? 0 : keep_block);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (nl.n == nl.cap) {
            int cap = nl.cap ? nl.cap * 2 : 16;
            void *p = realloc(nl.names, sizeof *nl.names * (size_t)cap);
            if (!p) {
                snprintf(aw->err, sizeof aw->err, "out of memory for metric names");
                sqlite3_reset(st);
                goto fail;
            }
            nl.names = p;
            nl.cap = cap;
        }
        copy_col(nl.names[nl.n++], STORE_NAME_MAX, st, 0);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (r != SQLITE_DONE) {
        snprintf(aw->err, sizeof aw->err, "cannot list the metrics of job %" PRId64 ": %s", job,
                 sqlite3_errmsg(s->wdb));
        goto fail;
    }
    for (int i = 0; i < nl.n; i++) {
        sqlite3_bind_int64(s->w[W_TRUNC_POINTS], 1, job);
        sqlite3_bind_text(s->w[W_TRUNC_POINTS], 2, nl.names[i], -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->w[W_TRUNC_POINTS], 3, step);
        sqlite3_bind_int64(s->w[W_TRUNC_BLOCKS], 1, job);
        sqlite3_bind_text(s->w[W_TRUNC_BLOCKS], 2, nl.names[i], -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->w[W_TRUNC_BLOCKS], 3, keep_block);
        if (wstep(s, W_TRUNC_POINTS) != 0 || wstep(s, W_TRUNC_BLOCKS) != 0) {
            snprintf(aw->err, sizeof aw->err, "cannot truncate metric %s of job %" PRId64 ": %s", nl.names[i], job,
                     sqlite3_errmsg(s->wdb));
            goto fail;
        }
        if (keep_block >= 0 && block_recompute(s, job, nl.names[i], keep_block, aw->err, sizeof aw->err) != 0)
            goto fail;
    }
    rc = 0;
fail:
    free(nl.names);
    return rc;
}

static int do_checkpoint(tld_store *s, int64_t job, await_op *aw) {
    tld_job_state cur;
    if (job_state_w(s, job, &cur, aw) != 0) return -1;
    const tld_checkpoint_row *c = aw->ckpt;
    sqlite3_stmt *st = s->w[W_CKPT_PUT];
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, c->kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, c->step);
    sqlite3_bind_text(st, 4, c->path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, c->bytes);
    sqlite3_bind_int64(st, 6, c->time_ms);
    sqlite3_bind_double(st, 7, c->top1);
    if (wstep(s, W_CKPT_PUT) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot record the checkpoint of job %" PRId64 ": %s", job,
                 sqlite3_errmsg(s->wdb));
        return -1;
    }
    return 0;
}

/* Runs one awaited op in a savepoint: a refused op is undone alone. */
static void apply_awaited(tld_store *s, wop *op) {
    await_op *aw = op->u.aw;
    if (op->kind == OP_FLUSH) {
        aw->rc = 0;
        return;
    }
    if (wstep(s, W_SAVEPOINT) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot begin a savepoint: %s", sqlite3_errmsg(s->wdb));
        aw->rc = -1;
        return;
    }
    int rc;
    switch (op->kind) {
    case OP_CREATE:
        rc = do_create(s, aw);
        break;
    case OP_TRANSITION:
        rc = do_transition(s, op->job, aw);
        break;
    case OP_RUN_DIR:
        rc = do_job_update(s, W_JOB_RUN_DIR, op->job, aw, "set the run folder of");
        break;
    case OP_ATTEMPT:
        rc = do_job_update(s, W_JOB_ATTEMPT, op->job, aw, "count an attempt of");
        break;
    case OP_DELETE:
        rc = do_job_update(s, W_JOB_DELETE, op->job, aw, "delete");
        break;
    case OP_TRUNCATE:
        rc = do_truncate(s, op->job, aw);
        break;
    case OP_CHECKPOINT:
        rc = do_checkpoint(s, op->job, aw);
        break;
    case OP_EXEC:
        rc = aw->fn(s->wdb, aw->fn_arg, aw->err, sizeof aw->err);
        break;
    default:
        snprintf(aw->err, sizeof aw->err, "unknown store operation %d", (int)op->kind);
        rc = -1;
        break;
    }
    if (sqlite3_get_autocommit(s->wdb)) { /* the transaction itself is gone; apply_batch notices */
        aw->rc = rc;
        return;
    }
    if (rc != 0) wstep(s, W_ROLLBACK_TO);
    if (wstep(s, W_RELEASE) != 0 && rc == 0) {
        snprintf(aw->err, sizeof aw->err, "cannot release a savepoint: %s", sqlite3_errmsg(s->wdb));
        rc = -1;
    }
    aw->rc = rc;
}

/* Recomputes the blocks touched since the last call; -1 (message in lost) means the batch must not commit. */
static int blocks_flush(tld_store *s, char *lost, size_t lostlen) {
    if (!s->ndirty) return 0;
    qsort(s->dirty, s->ndirty, sizeof *s->dirty, cmp_dirty);
    int rc = 0;
    for (size_t i = 0; i < s->ndirty; i++) {
        if (i > 0 && cmp_dirty(&s->dirty[i - 1], &s->dirty[i]) == 0) continue;
        if (block_recompute(s, s->dirty[i].job, s->dirty[i].name, s->dirty[i].block, lost, lostlen) != 0) {
            rc = -1; /* the summaries must match the points: commit nothing */
            break;
        }
    }
    s->ndirty = 0;
    return rc;
}

/* Applies ring entries [start, start + n) in one transaction. */
static void apply_batch(tld_store *s, size_t start, size_t n) {
    char lost[STORE_ERR] = "";
    s->ndirty = 0;
    s->loglen = 0;
    s->loglines = 0;
    s->batch_failures = 0;
    s->batch_failure[0] = '\0';
    if (wstep(s, W_BEGIN) != 0) snprintf(lost, sizeof lost, "cannot begin a transaction: %s", sqlite3_errmsg(s->wdb));
    for (size_t i = 0; i < n && !lost[0]; i++) {
        wop *op = &s->ring[(start + i) % STORE_QUEUE_CAP];
        if (op->kind >= OP_CREATE) {
            /* An awaited op (a delete, a truncation) sees every line and block of the points queued before it. */
            log_flush(s);
            if (blocks_flush(s, lost, sizeof lost) != 0) break;
            apply_awaited(s, op);
        } else {
            apply_queued(s, op);
        }
        if (sqlite3_get_autocommit(s->wdb))
            snprintf(lost, sizeof lost, "the transaction was rolled back: %s", sqlite3_errmsg(s->wdb));
    }
    if (!lost[0]) log_flush(s);
    if (!lost[0]) blocks_flush(s, lost, sizeof lost);
    if (!lost[0] && wstep(s, W_COMMIT) != 0)
        snprintf(lost, sizeof lost, "cannot commit: %s", sqlite3_errmsg(s->wdb));
    if (lost[0]) {
        if (!sqlite3_get_autocommit(s->wdb)) wstep(s, W_ROLLBACK);
        int64_t nq = 0;
        for (size_t i = 0; i < n; i++) {
            wop *op = &s->ring[(start + i) % STORE_QUEUE_CAP];
            if (op->kind < OP_CREATE) {
                nq++;
            } else if (op->u.aw->rc == 0 || op->kind == OP_FLUSH) {
                snprintf(op->u.aw->err, sizeof op->u.aw->err, "not saved: %.230s", lost);
                op->u.aw->rc = -1;
            } else if (!op->u.aw->err[0]) {
                snprintf(op->u.aw->err, sizeof op->u.aw->err, "not saved: %.230s", lost);
            }
        }
        s->batch_failures = nq;
        snprintf(s->batch_failure, sizeof s->batch_failure, "%s", lost);
    }
    if (s->batch_failures)
        report("%" PRId64 " queued write(s) failed; the first: %s", s->batch_failures, s->batch_failure);
}

static void *writer_main(void *arg) {
    tld_store *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (s->count == 0 && !s->stopping) pthread_cond_wait(&s->not_empty, &s->mu);
        if (s->count == 0) { /* stopping, and everything is written */
            pthread_mutex_unlock(&s->mu);
            break;
        }
        size_t start = s->head, n = s->count; /* these entries are ours until head moves past them */
        pthread_mutex_unlock(&s->mu);

        apply_batch(s, start, n);
        for (size_t i = 0; i < n; i++) {
            wop *op = &s->ring[(start + i) % STORE_QUEUE_CAP];
            if (op->kind == OP_LOG) {
                free(op->u.log.text);
                op->u.log.text = NULL;
            }
        }

        pthread_mutex_lock(&s->mu);
        if (s->batch_failures) {
            s->failed_since_flush += s->batch_failures;
            snprintf(s->last_failure, sizeof s->last_failure, "%s", s->batch_failure);
        }
        for (size_t i = 0; i < n; i++) {
            wop *op = &s->ring[(start + i) % STORE_QUEUE_CAP];
            if (op->kind < OP_CREATE) continue;
            await_op *aw = op->u.aw;
            if (op->kind == OP_FLUSH && aw->rc == 0 && s->failed_since_flush) {
                snprintf(aw->err, sizeof aw->err, "%" PRId64 " queued write(s) failed since the last flush: %.180s",
                         s->failed_since_flush, s->last_failure);
                aw->rc = -1;
                s->failed_since_flush = 0;
            }
            aw->done = 1; /* the caller may return as soon as we unlock: aw is not touched after this */
        }
        s->head = (s->head + n) % STORE_QUEUE_CAP;
        s->count -= n;
        pthread_cond_broadcast(&s->not_full);
        pthread_cond_broadcast(&s->done_cv);
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

void tld_store_close(tld_store *s) {
    if (!s) return;
    if (s->writer_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->not_empty);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->writer, NULL);
    }
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
    if (sqlite3_close(s->wdb) != SQLITE_OK) report("cannot close %s: %s", s->path, sqlite3_errmsg(s->wdb));
    pthread_cond_destroy(&s->done_cv);
    pthread_cond_destroy(&s->not_full);
    pthread_cond_destroy(&s->not_empty);
    pthread_mutex_destroy(&s->rmu);
    pthread_mutex_destroy(&s->mu);
    free(s->logbuf);
    free(s->dirty);
    free(s->ring);
    free(s->path);
    free(s);
}

int tld_store_flush(tld_store *s) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    char err[STORE_ERR];
    if (submit(s, OP_FLUSH, 0, &aw, err, sizeof err) != 0) {
        report("flush: %s", err);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ jobs */

int tld_store_job_create(tld_store *s, const char *name, const char *spec_json, const char *idempotency_key,
                        int64_t *id, int *existed, char *err, size_t errlen) {
    if (id) *id = 0;
    if (existed) *existed = 0;
    if (!name || !*name || strlen(name) >= sizeof ((tld_job *)0)->name) {
        seterr(err, errlen, "job name must be 1 to %zu bytes", sizeof ((tld_job *)0)->name - 1);
        return -1;
    }
    if (!spec_json) {
        seterr(err, errlen, "no job spec");
        return -1;
    }
    if (idempotency_key && !*idempotency_key) idempotency_key = NULL;
    if (idempotency_key && strlen(idempotency_key) >= sizeof ((tld_job *)0)->idempotency_key) {
        seterr(err, errlen, "idempotency key longer than %zu bytes", sizeof ((tld_job *)0)->idempotency_key - 1);
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.name = name;
    aw.spec = spec_json;
    aw.key = idempotency_key;
    if (submit(s, OP_CREATE, 0, &aw, err, errlen) != 0) return -1;
    if (id) *id = aw.id;
    if (existed) *existed = aw.existed;
    return 0;
}

/* Fills j from a row of JOB_COLS. */
static int read_job(sqlite3_stmt *st, tld_job *j, char *err, size_t errlen) {
    memset(j, 0, sizeof *j);
    j->id = sqlite3_column_int64(st, 0);
    copy_col(j->name, sizeof j->name, st, 1);
    const char *spec = (const char *)sqlite3_column_text(st, 2);
    size_t slen = (size_t)sqlite3_column_bytes(st, 2);
    j->spec_json = malloc(slen + 1);
    if (!j->spec_json) {
        seterr(err, errlen, "out of memory for the spec of job %" PRId64, j->id);
        return -1;
    }
    if (slen) memcpy(j->spec_json, spec, slen);
    j->spec_json[slen] = '\0';
    const char *state = (const char *)sqlite3_column_text(st, 3);
    if (tld_job_state_parse(state, &j->state) != 0) {
        seterr(err, errlen, "job %" PRId64 " has an unknown state '%s'", j->id, state ? state : "");
        tld_job_free(j);
        return -1;
    }
    copy_col(j->state_reason, sizeof j->state_reason, st, 4);
    copy_col(j->state_message, sizeof j->state_message, st, 5);
    j->created_ms = sqlite3_column_int64(st, 6);
    j->started_ms = sqlite3_column_int64(st, 7);
    j->ended_ms = sqlite3_column_int64(st, 8);
    j->attempt = sqlite3_column_int(st, 9);
    j->epoch = sqlite3_column_int64(st, 10);
    j->step = sqlite3_column_int64(st, 11);
    j->total_steps = sqlite3_column_int64(st, 12);
    j->eta_seconds = sqlite3_column_double(st, 13);
    copy_col(j->idempotency_key, sizeof j->idempotency_key, st, 14);
    copy_col(j->run_dir, sizeof j->run_dir, st, 15);
    return 0;
}

int tld_store_job_get(tld_store *s, int64_t id, tld_job *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    rconn *c = reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = rstmt(c, R_JOB_GET, err, errlen);
    if (!st) return -1;
    int rc = -1;
    sqlite3_bind_int64(st, 1, id);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) rc = read_job(st, out, err, errlen);
    else if (r == SQLITE_DONE) seterr(err, errlen, "job %" PRId64 " not found", id);
    else seterr(err, errlen, "cannot read job %" PRId64 ": %s", id, sqlite3_errmsg(c->db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int tld_store_job_list(tld_store *s, int state_filter, int64_t before_id, int limit, tld_job *out, int *n, char *err,
                      size_t errlen) {
    *n = 0;
    if (limit <= 0) return 0;
    if (state_filter >= TLD_JOB_NSTATES) {
        seterr(err, errlen, "unknown job state %d", state_filter);
        return -1;
    }
    rconn *c = reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = rstmt(c, state_filter < 0 ? R_JOB_LIST : R_JOB_LIST_STATE, err, errlen);
    if (!st) return -1;
    int rc = -1, got = 0, r = SQLITE_DONE;
    sqlite3_bind_int64(st, 1, before_id > 0 ? before_id : INT64_MAX);
    sqlite3_bind_int(st, 2, limit);
    if (state_filter >= 0) sqlite3_bind_text(st, 3, state_names[state_filter], -1, SQLITE_STATIC);
    while (got < limit && (r = sqlite3_step(st)) == SQLITE_ROW) {
        if (read_job(st, &out[got], err, errlen) != 0) goto fail;
        got++;
    }
    if (got < limit && r != SQLITE_DONE) {
        seterr(err, errlen, "cannot list jobs: %s", sqlite3_errmsg(c->db));
        goto fail;
    }
    *n = got;
    rc = 0;
fail:
    if (rc != 0)
        for (int i = 0; i < got; i++) tld_job_free(&out[i]);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int tld_store_job_transition(tld_store *s, int64_t id, unsigned from_mask, tld_job_state to, const char *reason,
                            const char *message, char *err, size_t errlen) {
    if ((int)to < 0 || to >= TLD_JOB_NSTATES) {
        seterr(err, errlen, "invalid transition: unknown target state %d", (int)to);
        return -1;
    }
    if (reason && strlen(reason) >= sizeof ((tld_job *)0)->state_reason) {
        seterr(err, errlen, "state reason longer than %zu bytes", sizeof ((tld_job *)0)->state_reason - 1);
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.from_mask = from_mask;
    aw.to = to;
    aw.reason = reason;
    aw.message = message;
    return submit(s, OP_TRANSITION, id, &aw, err, errlen);
}

int tld_store_job_set_progress(tld_store *s, int64_t id, int64_t epoch, int64_t step, int64_t total_steps,
                              double eta_seconds) {
    wop op;
    memset(&op, 0, sizeof op);
    op.kind = OP_PROGRESS;
    op.job = id;
    op.u.progress.epoch = epoch;
    op.u.progress.step = step;
    op.u.progress.total = total_steps;
    op.u.progress.eta = isfinite(eta_seconds) ? eta_seconds : -1;
    enqueue(s, &op);
    return 0;
}

int tld_store_job_set_run_dir(tld_store *s, int64_t id, const char *run_dir, char *err, size_t errlen) {
    if (!run_dir || strlen(run_dir) >= sizeof ((tld_job *)0)->run_dir) {
        seterr(err, errlen, "run folder must be at most %zu bytes", sizeof ((tld_job *)0)->run_dir - 1);
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.run_dir = run_dir;
    return submit(s, OP_RUN_DIR, id, &aw, err, errlen);
}

int tld_store_job_begin_attempt(tld_store *s, int64_t id, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    return submit(s, OP_ATTEMPT, id, &aw, err, errlen);
}

int tld_store_job_delete(tld_store *s, int64_t id, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    return submit(s, OP_DELETE, id, &aw, err, errlen);
}

int tld_store_job_queue_position(tld_store *s, int64_t id) {
    char err[STORE_ERR];
    rconn *c = reader(s, err, sizeof err);
    sqlite3_stmt *st = c ? rstmt(c, R_QUEUE_POS, err, sizeof err) : NULL;
    if (!st) {
        report("queue position of job %" PRId64 ": %s", id, err);
        return -1;
    }
    int pos = -1;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) pos = sqlite3_column_int(st, 0);
    else report("queue position of job %" PRId64 ": %s", id, sqlite3_errmsg(c->db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return pos;
}

int tld_store_job_counts(tld_store *s, int64_t counts[TLD_JOB_NSTATES]) {
    char err[STORE_ERR];
    for (int i = 0; i < TLD_JOB_NSTATES; i++) counts[i] = 0;
    rconn *c = reader(s, err, sizeof err);
    sqlite3_stmt *st = c ? rstmt(c, R_COUNTS, err, sizeof err) : NULL;
    if (!st) {
        report("job counts: %s", err);
        return -1;
    }
    int r, rc = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_job_state js;
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (tld_job_state_parse(name, &js) != 0) {
            report("job counts: unknown state '%s'", name ? name : "");
            rc = -1;
            continue;
        }
        counts[js] = sqlite3_column_int64(st, 1);
    }
    if (r != SQLITE_DONE) {
        report("job counts: %s", sqlite3_errmsg(c->db));
        rc = -1;
    }
    sqlite3_reset(st);
    return rc;
}

/* ------------------------------------------------------------------ metrics */

static int check_metric_name(const char *name, char *err, size_t errlen) {
    if (!name || !*name || strlen(name) >= STORE_NAME_MAX) {
        seterr(err, errlen, "metric name must be 1 to %d bytes", STORE_NAME_MAX - 1);
        return -1;
    }
    return 0;
}

int tld_store_metric_add(tld_store *s, int64_t job, const char *name, int64_t step, double value, int64_t time_ms) {
    char err[STORE_ERR];
    if (check_metric_name(name, err, sizeof err) != 0) {
        report("metric of job %" PRId64 " refused: %s", job, err);
        return -1;
    }
    if (step < 0 || step > STORE_STEP_MAX) {
        report("metric %s of job %" PRId64 " refused: step %" PRId64 " is outside 0..2^62", name, job, step);
        return -1;
    }
    wop op;
    op.kind = OP_METRIC;
    op.job = job;
    op.u.metric.step = step;
    op.u.metric.time_ms = time_ms;
    op.u.metric.value = value;
    memcpy(op.u.metric.name, name, strlen(name) + 1);
    enqueue(s, &op);
    return 0;
}

int tld_store_metric_truncate(tld_store *s, int64_t job, int64_t step, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.step = step;
    return submit(s, OP_TRUNCATE, job, &aw, err, errlen);
}

int tld_store_metric_names(tld_store *s, int64_t job, tld_metric_summary *out, int max, int *n, char *err,
                          size_t errlen) {
    *n = 0;
    if (max <= 0) return 0;
    rconn *c = reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = rstmt(c, R_METRIC_NAMES, err, errlen);
    if (!st) return -1;
    int got = 0, r = SQLITE_DONE, rc = 0;
    sqlite3_bind_int64(st, 1, job);
    while (got < max && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_metric_summary *m = &out[got++];
        memset(m, 0, sizeof *m);
        copy_col(m->name, sizeof m->name, st, 0);
        m->last_step = sqlite3_column_int64(st, 2);
        m->last_value = col_double(st, 3);
        m->count = sqlite3_column_int64(st, 4);
    }
    if (got < max && r != SQLITE_DONE) {
        seterr(err, errlen, "cannot list the metrics of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        got = 0;
        rc = -1;
    }
    *n = got;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* A bucket being summed up: points and blocks arrive in step order. */
typedef struct {
    int64_t count, last_step, time_ms;
    double min, max, last;
    int have_minmax;
} bucket;

static void bucket_minmax(bucket *b, double mn, double mx) {
    if (isnan(mn) || isnan(mx)) return; /* NaNs only */
    if (!b->have_minmax) {
        b->min = mn;
        b->max = mx;
        b->have_minmax = 1;
        return;
    }
    if (mn < b->min) b->min = mn;
    if (mx > b->max) b->max = mx;
}

/* Binds (job, name, a, b) to a statement's first four parameters. */
static void bind_range(sqlite3_stmt *st, int64_t job, const char *name, int64_t a, int64_t b) {
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, a);
    sqlite3_bind_int64(st, 4, b);
}

static int bucket_points(rconn *c, sqlite3_stmt *st, int64_t job, const char *name, int64_t a, int64_t b,
                         bucket *bk, char *err, size_t errlen) {
    bind_range(st, job, name, a, b);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        double v = col_double(st, 1);
        bk->count++;
        bucket_minmax(bk, v, v);
        bk->last_step = sqlite3_column_int64(st, 0);
        bk->last = v;
        bk->time_ms = sqlite3_column_int64(st, 2);
    }
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        seterr(err, errlen, "cannot read metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
        return -1;
    }
    return 0;
}

static int bucket_blocks(rconn *c, sqlite3_stmt *st, int64_t job, const char *name, int64_t a, int64_t b,
                         bucket *bk, char *err, size_t errlen) {
    bind_range(st, job, name, a, b);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        bk->count += sqlite3_column_int64(st, 0);
        bucket_minmax(bk, col_double(st, 1), col_double(st, 2));
        bk->last_step = sqlite3_column_int64(st, 3);
        bk->last = col_double(st, 4);
        bk->time_ms = sqlite3_column_int64(st, 5);
    }
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        seterr(err, errlen, "cannot read summaries of metric %s of job %" PRId64 ": %s", name, job,
               sqlite3_errmsg(c->db));
        return -1;
    }
    return 0;
}

/* The step of the first (dir 0) or last (dir 1) point in [a, b]: 1 found, 0 none, -1 error. */
static int edge_step(rconn *c, int q, int64_t job, const char *name, int64_t a, int64_t b, int64_t *out, char *err,
                     size_t errlen) {
    sqlite3_stmt *st = rstmt(c, q, err, errlen);
    if (!st) return -1;
    bind_range(st, job, name, a, b);
    int r = sqlite3_step(st), rc = 0;
    if (r == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = 1;
    } else if (r != SQLITE_DONE) {
        seterr(err, errlen, "cannot read metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
        rc = -1;
    }
    sqlite3_reset(st);
    return rc;
}

/* Bucketed query over [lo, hi] (both holding points) into at most max_points buckets. */
static int query_buckets(rconn *c, int64_t job, const char *name, int64_t lo, int64_t hi, int max_points,
                         tld_metric_point *out, int *n, char *err, size_t errlen) {
    sqlite3_stmt *raw = rstmt(c, R_METRIC_RAW, err, errlen), *blk = rstmt(c, R_BLOCKS, err, errlen);
    if (!raw || !blk) return -1;
    int64_t span = hi - lo + 1;
    int64_t w = (span + max_points - 1) / max_points;
    int64_t nb = (span + w - 1) / w;
    int got = 0;
    for (int64_t k = 0; k < nb; k++) {
        int64_t a = lo + k * w, b = a + w - 1;
        if (b > hi) b = hi;
        bucket bk = {0};
        int64_t fb = (a + STORE_BLOCK - 1) / STORE_BLOCK; /* whole blocks inside [a, b] */
        int64_t lb = (b + 1) / STORE_BLOCK - 1;
        if (fb <= lb) {
            if (a < fb * STORE_BLOCK && bucket_points(c, raw, job, name, a, fb * STORE_BLOCK - 1, &bk, err, errlen))
                return -1;
            if (bucket_blocks(c, blk, job, name, fb, lb, &bk, err, errlen)) return -1;
            if ((lb + 1) * STORE_BLOCK <= b &&
                bucket_points(c, raw, job, name, (lb + 1) * STORE_BLOCK, b, &bk, err, errlen))
                return -1;
        } else if (bucket_points(c, raw, job, name, a, b, &bk, err, errlen)) {
            return -1;
        }
        if (bk.count == 0) continue;
        tld_metric_point *p = &out[got++];
        p->step = a;
        p->time_ms = bk.time_ms;
        p->last = bk.last;
        p->min = bk.have_minmax ? bk.min : NAN;
        p->max = bk.have_minmax ? bk.max : NAN;
        p->count = bk.count;
    }
    *n = got;
    return 0;
}

static int query_raw(rconn *c, int64_t job, const char *name, int64_t lo, int64_t hi, int max_points,
                     tld_metric_point *out, int *n, char *err, size_t errlen) {
    sqlite3_stmt *st = rstmt(c, R_METRIC_RAW, err, errlen);
    if (!st) return -1;
    bind_range(st, job, name, lo, hi);
    int got = 0, r = SQLITE_DONE;
    while (got < max_points && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_metric_point *p = &out[got++];
        p->step = sqlite3_column_int64(st, 0);
        p->last = p->min = p->max = col_double(st, 1);
        p->time_ms = sqlite3_column_int64(st, 2);
        p->count = 1;
    }
    int rc = 0;
    if (got < max_points && r != SQLITE_DONE) {
        seterr(err, errlen, "cannot read metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
        rc = -1;
    }
    sqlite3_reset(st);
    *n = rc == 0 ? got : 0;
    return rc;
}

int tld_store_metric_query(tld_store *s, int64_t job, const char *name, int64_t start_step, int64_t end_step,
                          int max_points, tld_metric_point *out, int *n, int *bucketed, char *err, size_t errlen) {
    *n = 0;
    *bucketed = 0;
    if (check_metric_name(name, err, errlen) != 0) return -1;
    if (max_points <= 0) {
        seterr(err, errlen, "max_points must be positive");
        return -1;
    }
    int64_t lo = start_step < 0 ? 0 : start_step;
    int64_t hi = (end_step < 0 || end_step > STORE_STEP_MAX) ? STORE_STEP_MAX : end_step;
    if (lo > hi) return 0;
    rconn *c = reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *cnt = rstmt(c, R_METRIC_COUNT, err, errlen);
    if (!cnt || rexec(c, R_BEGIN, err, errlen) != 0) return -1;
    int rc = -1;
    bind_range(cnt, job, name, lo, hi);
    sqlite3_bind_int64(cnt, 5, (int64_t)max_points + 1);
    int r = sqlite3_step(cnt);
    int64_t count = r == SQLITE_ROW ? sqlite3_column_int64(cnt, 0) : -1;
    sqlite3_reset(cnt);
    if (r != SQLITE_ROW) {
        seterr(err, errlen, "cannot count metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
        goto fail;
    }
    if (count <= max_points) {
        rc = query_raw(c, job, name, lo, hi, max_points, out, n, err, errlen);
        goto fail;
    }
    /* Buckets span the points actually there, so none is wasted on steps before the first or after the last. */
    int found = edge_step(c, R_METRIC_FIRST, job, name, lo, hi, &lo, err, errlen);
    if (found == 1) found = edge_step(c, R_METRIC_LAST, job, name, lo, hi, &hi, err, errlen);
    if (found != 1) { /* 0 cannot happen inside the snapshot that counted the points */
        if (found == 0) seterr(err, errlen, "metric %s of job %" PRId64 " has no points in range", name, job);
        goto fail;
    }
    *bucketed = 1;
    rc = query_buckets(c, job, name, lo, hi, max_points, out, n, err, errlen);
fail:
    if (rc != 0) *n = 0;
    if (rexec(c, R_COMMIT, rc == 0 ? err : NULL, errlen) != 0 && rc == 0) {
        *n = 0;
        rc = -1;
    }
    return rc;
}

/* ------------------------------------------------------------------ logs */

int tld_store_log_append(tld_store *s, int64_t job, const char *line) {
    if (!line) {
        report("log line of job %" PRId64 " refused: no text", job);
        return -1;
    }
    static const char cut_mark[] = " [line cut]\n";
    size_t len = strlen(line), keep = len, extra = 1;
    if (len + 1 > STORE_LOG_CHUNK) {
        keep = utf8_cut(line, len, STORE_LOG_CHUNK - sizeof cut_mark);
        extra = sizeof cut_mark - 1;
    }
    wop op;
    op.kind = OP_LOG;
    op.job = job;
    op.u.log.len = keep + extra;
    op.u.log.text = malloc(op.u.log.len);
    if (!op.u.log.text) {
        report("log line of job %" PRId64 " lost: out of memory", job);
        return -1;
    }
    memcpy(op.u.log.text, line, keep);
    if (extra == 1) op.u.log.text[keep] = '\n';
    else memcpy(op.u.log.text + keep, cut_mark, extra);
    enqueue(s, &op);
    return 0;
}

int tld_store_log_read(tld_store *s, int64_t job, int64_t offset, size_t limit, char *buf, size_t *len, int64_t *next,
                      int *eof, char *err, size_t errlen) {
    *len = 0;
    *next = offset;
    *eof = 0;
    if (offset < 0) {
        seterr(err, errlen, "negative log offset %" PRId64, offset);
        return -1;
    }
    rconn *c = reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *at = rstmt(c, R_LOG_AT, err, errlen), *after = rstmt(c, R_LOG_AFTER, err, errlen);
    sqlite3_stmt *exists = rstmt(c, R_JOB_EXISTS, err, errlen);
    if (!at || !after || !exists || rexec(c, R_BEGIN, err, errlen) != 0) return -1;
    int rc = -1, r;
    size_t got = 0;
    int64_t pos = offset; /* the stream offset of buf[got] */

    /* The chunk holding offset: the last one starting at or before it. */
    sqlite3_bind_int64(at, 1, job);
    sqlite3_bind_int64(at, 2, offset);
    r = sqlite3_step(at);
    if (r == SQLITE_ROW) {
        int64_t c0 = sqlite3_column_int64(at, 0);
        const char *t = (const char *)sqlite3_column_text(at, 1);
        int64_t clen = sqlite3_column_bytes(at, 1);
        if (offset > c0 + clen) {
            seterr(err, errlen, "log offset %" PRId64 " of job %" PRId64 " is past the end (%" PRId64 " bytes)",
                   offset, job, c0 + clen);
            goto fail;
        }
        size_t avail = (size_t)(c0 + clen - offset), take = avail < limit ? avail : limit;
        if (take) memcpy(buf, t + (offset - c0), take);
        got = take;
        pos = offset + (int64_t)take;
        if (take < avail) { /* buf full inside this chunk */
            *eof = 0;
            rc = 0;
            goto fail;
        }
    } else if (r == SQLITE_DONE) {
        sqlite3_bind_int64(exists, 1, job);
        r = sqlite3_step(exists);
        sqlite3_reset(exists);
        if (r == SQLITE_DONE) {
            seterr(err, errlen, "job %" PRId64 " not found", job);
            goto fail;
        }
        if (r != SQLITE_ROW) {
            seterr(err, errlen, "cannot read job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
            goto fail;
        }
        if (offset > 0) {
            seterr(err, errlen, "log offset %" PRId64 " of job %" PRId64 " is past the end (0 bytes)", offset, job);
            goto fail;
        }
    } else {
        seterr(err, errlen, "cannot read the log of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        goto fail;
    }

    /* The chunks after it, while there is room. */
    sqlite3_bind_int64(after, 1, job);
    sqlite3_bind_int64(after, 2, offset);
    *eof = 1;
    while ((r = sqlite3_step(after)) == SQLITE_ROW) {
        int64_t c0 = sqlite3_column_int64(after, 0);
        if (c0 != pos) {
            seterr(err, errlen, "the log of job %" PRId64 " has a gap at byte %" PRId64, job, pos);
            goto fail;
        }
        if (got == limit) { /* more follows */
            *eof = 0;
            break;
        }
        const char *t = (const char *)sqlite3_column_text(after, 1);
        size_t clen = (size_t)sqlite3_column_bytes(after, 1), take = clen < limit - got ? clen : limit - got;
        memcpy(buf + got, t, take);
        got += take;
        pos += (int64_t)take;
        if (take < clen) {
            *eof = 0;
            break;
        }
    }
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        seterr(err, errlen, "cannot read the log of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_reset(at);
    sqlite3_clear_bindings(at);
    sqlite3_reset(after);
    sqlite3_clear_bindings(after);
    sqlite3_clear_bindings(exists);
    rexec(c, R_COMMIT, NULL, 0);
    if (rc == 0 && !*eof) { /* cut short by limit: do not end inside a UTF-8 sequence (the next read starts it) */
        size_t keep = utf8_complete(buf, got);
        if (keep > 0) {
            pos -= (int64_t)(got - keep);
            got = keep;
        }
    }
    if (rc == 0) {
        *len = got;
        *next = pos;
        if (got < limit) buf[got] = '\0'; /* a convenience when there is room; not promised by store.h */
    } else {
        *eof = 0;
    }
    return rc;
}

/* ------------------------------------------------------------------ checkpoints */

int tld_store_checkpoint_add(tld_store *s, int64_t job, const tld_checkpoint_row *row, char *err, size_t errlen) {
    if (!row) {
        seterr(err, errlen, "no checkpoint");
        return -1;
    }
    if (!memchr(row->kind, '\0', sizeof row->kind) ||
        (strcmp(row->kind, "last") != 0 && strcmp(row->kind, "best") != 0)) {
        seterr(err, errlen, "checkpoint kind must be \"last\" or \"best\"");
        return -1;
    }
    if (!row->path[0] || !memchr(row->path, '\0', sizeof row->path)) {
        seterr(err, errlen, "checkpoint path must be 1 to %zu bytes", sizeof row->path - 1);
        return -1;
    }
    if (row->step < 0 || row->bytes < 0) {
        seterr(err, errlen, "checkpoint step and size must not be negative");
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.ckpt = row;
    return submit(s, OP_CHECKPOINT, job, &aw, err, errlen);
}

int tld_store_checkpoint_list(tld_store *s, int64_t job, tld_checkpoint_row *out, int max, int *n, char *err,
                             size_t errlen) {
    *n = 0;
    if (max <= 0) return 0;
    rconn *c = reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = rstmt(c, R_CKPT_LIST, err, errlen);
    if (!st) return -1;
    int got = 0, r = SQLITE_DONE, rc = 0;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, max);
    while (got < max && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_checkpoint_row *k = &out[got++];
        memset(k, 0, sizeof *k);
        k->step = sqlite3_column_int64(st, 0);
        copy_col(k->kind, sizeof k->kind, st, 1);
        copy_col(k->path, sizeof k->path, st, 2);
        k->bytes = sqlite3_column_int64(st, 3);
        k->time_ms = sqlite3_column_int64(st, 4);
        k->top1 = sqlite3_column_double(st, 5);
    }
    if (got < max && r != SQLITE_DONE) {
        seterr(err, errlen, "cannot list the checkpoints of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        got = 0;
        rc = -1;
    }
    *n = got;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int tld_store_job_history(tld_store *s, int64_t job, tld_state_change *out, int max, int *n, char *err, size_t errlen) {
    *n = 0;
    if (max <= 0) return 0;
    rconn *c = reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = rstmt(c, R_HISTORY, err, errlen);
    if (!st) return -1;
    int got = 0, r = SQLITE_DONE, rc = 0;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, max);
    while (got < max && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_state_change *h = &out[got++];
        memset(h, 0, sizeof *h);
        h->time_ms = sqlite3_column_int64(st, 0);
        copy_col(h->from, sizeof h->from, st, 1);
        copy_col(h->to, sizeof h->to, st, 2);
        copy_col(h->reason, sizeof h->reason, st, 3);
        copy_col(h->message, sizeof h->message, st, 4);
    }
    if (got < max && r != SQLITE_DONE) {
        seterr(err, errlen, "cannot read the state history of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        got = 0;
        rc = -1;
    }
    *n = got;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}
