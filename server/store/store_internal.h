/*
 * store_internal.h: what the files of the store share. Private to server/store/.
 *
 *   store.c             open, migrate, pragmas; the statement texts; the read
 *                       connections (one per thread); close
 *   store_writer.c      the write queue (a bounded ring) and the writer thread
 *                       that applies it in batched transactions
 *   store_jobs.c        jobs, their state machine and state history
 *   store_metrics.c     metric points and their block summaries
 *   store_logs.c        job logs (byte-addressed chunks)
 *   store_checkpoints.c checkpoint rows
 *   store_models.c, store_inspect.c  the tables of schema version 2, written
 *                       through tld_store_write_exec
 *   store_inits.c       the table of schema version 3 (job_inits), likewise
 *   store_tokens.c      the table of schema version 6 (api_tokens), likewise
 *   store_fault.c       the full-disk switch's VFS shim (tests; tokenlab/files.h)
 *   store_reserve.c     room kept beside the database for the store's writes on a full disk
 *
 * The writer thread is the only one that touches wdb, w[] and the batch
 * scratch of struct tld_store; the ring and the done flags are under mu; the
 * list of read connections under rmu. Table files add two kinds of
 * functions: the public ones of store.h (any thread: they queue or submit an
 * op, or read on the caller's read connection) and the writer-thread hooks
 * declared below (called only by store_writer.c, inside the batch's
 * transaction).
 *
 * tld_store_write_exec runs fn on the writer thread, on the writer connection,
 * inside a savepoint of the current batch's transaction (a failure of fn
 * rolls back only what fn did), and returns once the batch has committed: fn
 * may write only through db and must not block. tld_store_read_db returns this
 * thread's read connection (query_only, opened on first use).
 */
#ifndef TLD_STORE_INTERNAL_H
#define TLD_STORE_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define STORE_QUEUE_CAP 65536          /* queued writes before producers block */
#define STORE_BUSY_MS 5000
#define STORE_BLOCK 64                 /* steps per metric_blocks row; part of the schema */
#define STORE_STEP_MAX ((int64_t)1 << 62)
#define STORE_NAME_MAX 64              /* metric name bytes + NUL (tld_metric_summary.name) */
#define STORE_LOG_CHUNK 65536          /* bytes per log chunk at most */
#define STORE_ERR 256
#define STORE_LOST_JOBS 256            /* jobs with metric points lost and not yet reported, before all count */
#define STORE_RESERVE_BYTES ((int64_t)4 << 20) /* the reserve file (store_reserve.c) */

typedef int (*tld_store_write_fn)(sqlite3 *db, void *arg, char *err, size_t errlen);

/* ------------------------------------------------------------------ statements (texts in store.c) */

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
    R_TOKEN_FIND,
    R_COUNT
};

extern const char *const tld_store_wsql[W_COUNT];
extern const char *const tld_store_rsql[R_COUNT];

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
    int full;        /* it failed because the store's disk is full (SQLITE_FULL) */
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
    char *reserve_path;            /* <path>.reserve (store_reserve.c) */
    _Atomic int64_t reserve_missing; /* bytes the reserve lacks: 0 while it is held */
    int64_t reserve_next_ms;       /* writer thread: when to try making it again */

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
    struct {
        int64_t job;
        int err;     /* ENOSPC: lost to a full disk; EIO otherwise */
    } lost[STORE_LOST_JOBS]; /* jobs whose queued metric points were lost, not yet reported */
    int nlost;
    int lost_all;            /* the table overflowed: every job counts as lost (lost_all_err) until it empties */
    int lost_all_err;
    _Atomic int full;                /* the last batch that wrote or tried to met SQLITE_FULL */
    _Atomic unsigned long long full_events; /* batches that met SQLITE_FULL after one that did not */

    /* writer-thread scratch for one batch */
    dirty_block *dirty;
    size_t ndirty;
    char *logbuf;
    size_t loglen;
    int64_t logjob;
    int64_t loglines;
    int64_t batch_failures;
    char batch_failure[STORE_ERR];
    int batch_full;          /* a statement of the batch failed with SQLITE_FULL */
    int batch_wrote;         /* the batch committed rows */
    int64_t batch_lost[STORE_LOST_JOBS]; /* jobs whose metric points the batch lost */
    int nbatch_lost;
    int batch_lost_all;

    /* read connections */
    pthread_key_t key;
    int key_made;
    pthread_mutex_t rmu;
    rconn *readers;
};


/* ------------------------------------------------------------------ store.c: helpers, connections */

/* Reports on stderr ("tokenlabd store: ..."), for functions of store.h without an error buffer. */
void tld_store_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Length of the longest prefix of s (len bytes) of at most max bytes that does not end inside a UTF-8 sequence. */
size_t tld_store_utf8_cut(const char *s, size_t len, size_t max);
/* Copies a column's text into dst (n bytes), cut UTF-8-safely, always terminated. */
void tld_store_copy_col(char *dst, size_t n, sqlite3_stmt *st, int col);
/* A REAL column, NULL read back as NaN (SQLite stores a NaN as NULL). */
double tld_store_col_double(sqlite3_stmt *st, int col);
/* Binds v, a NaN as NULL. */
void tld_store_bind_double(sqlite3_stmt *st, int i, double v);
/* This thread's read connection, opened on first use; NULL with a message. */
rconn *tld_store_reader(tld_store *s, char *err, size_t errlen);
/* A prepared read statement (R_*) of this connection, reset and unbound by the caller after use. */
sqlite3_stmt *tld_store_rstmt(rconn *c, int q, char *err, size_t errlen);
/* Runs a statement without result rows (R_BEGIN, R_COMMIT, R_ROLLBACK) on a read connection. */
int tld_store_rexec(rconn *c, int q, char *err, size_t errlen);

int tld_store_write_exec(tld_store *s, tld_store_write_fn fn, void *arg, char *err, size_t errlen);
sqlite3 *tld_store_read_db(tld_store *s, char *err, size_t errlen);

/* ------------------------------------------------------------------ store_writer.c */

/* Starts the writer thread (open); 0, or -1 with a message. */
int tld_store_writer_start(tld_store *s, char *err, size_t errlen);
/* Lets the writer apply everything queued, then joins it (close). */
void tld_store_writer_stop(tld_store *s);
/* Adds a queued op, waiting while the ring is full; 0, or -1 when the ring's bounds are broken (an
 * invariant: never). Not for use after tld_store_close has begun. */
int tld_store_enqueue(tld_store *s, const wop *op);
/* Queues an awaited op and waits until its batch is committed (or failed); aw->rc, message in err. */
int tld_store_submit(tld_store *s, op_kind kind, int64_t job, await_op *aw, char *err, size_t errlen);
/* Writer thread: steps a write statement (W_*) to completion (no rows) and resets it; 0 or -1. */
int tld_store_wstep(tld_store *s, int q);
/* Writer thread: counts n queued writes of this batch as failed (the first one's message is kept); metric_job > 0:
 * they were metric points of that job (tld_store_metrics_durable reports it). */
void tld_store_queued_failed(tld_store *s, int64_t metric_job, int64_t n, const char *what);
/* Writer thread: notes whether the writer connection's last error was SQLITE_FULL; returns 1 when it was. */
int tld_store_note_full(tld_store *s);

/* ------------------------------------------------------------------ store_reserve.c */

/* Makes the reserve file when it is missing, the retry delay has passed and the file system has room for it twice.
 * Open, then the writer thread. */
void tld_store_reserve_make(tld_store *s);
/* Gives the reserve's space back (a write met SQLITE_FULL). Writer thread. */
void tld_store_reserve_release(tld_store *s);

/* ------------------------------------------------------------------ store_fault.c */

/* Registers the full-disk switch's VFS shim as SQLite's default VFS, once, when a variable of the switch is set
 * (tokenlab/files.h); nothing otherwise. Before the first connection opens. */
void tld_store_fault_install(void);

/* ------------------------------------------------------------------ writer-thread hooks of the tables */

/* store_jobs.c. The state of a job inside the write transaction: 0, 1 (not found) or -1 (message in aw->err). */
int tld_store_job_state_w(tld_store *s, int64_t job, tld_job_state *state, await_op *aw);
/* store_jobs.c: OP_CREATE, OP_TRANSITION, and an UPDATE/DELETE of one job by id (W_JOB_RUN_DIR, W_JOB_ATTEMPT,
 * W_JOB_DELETE; "not found" when no row changed). 0, or -1 with aw->err. */
int tld_store_jobs_do_create(tld_store *s, await_op *aw);
int tld_store_jobs_do_transition(tld_store *s, int64_t job, await_op *aw);
int tld_store_jobs_do_update(tld_store *s, int q, int64_t job, await_op *aw, const char *what);
/* store_jobs.c: a queued progress update (a failure counts as a queued failure). */
void tld_store_jobs_apply_progress(tld_store *s, const wop *op);
/* store_metrics.c: a queued metric point; marks its block dirty. */
void tld_store_metrics_apply(tld_store *s, const wop *op);
/* store_metrics.c: recomputes the blocks marked since the last call; -1 (message in lost) means the batch must
 * not commit (the summaries must match the points). */
int tld_store_metrics_flush_blocks(tld_store *s, char *lost, size_t lostlen);
/* store_metrics.c: OP_TRUNCATE. 0, or -1 with aw->err. */
int tld_store_metrics_do_truncate(tld_store *s, int64_t job, await_op *aw);
/* store_logs.c: adds a queued line to the batch's pending chunk (len <= STORE_LOG_CHUNK); writes the pending chunk. */
void tld_store_logs_add(tld_store *s, int64_t job, const char *text, size_t len);
void tld_store_logs_flush(tld_store *s);
/* store_checkpoints.c: OP_CHECKPOINT. 0, or -1 with aw->err. */
int tld_store_checkpoints_do_add(tld_store *s, int64_t job, await_op *aw);

#endif
