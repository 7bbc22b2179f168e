/*
 * store_writer.c: the store's write queue and its writer thread.
 *
 * Owns:
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
 *   - a full disk (SQLITE_FULL, real or from the full-disk switch): the
 *     batch is rolled back, nothing already committed is touched, the
 *     store's reserve is released (store_reserve.c) and the writer goes on
 *     with the next batch (it never stops or retries in a loop). Awaited ops fail with errno ENOSPC, so their callers can wait
 *     for space and try again; queued ops are lost, bounded and reported:
 *     the jobs whose metric points were lost are remembered until
 *     tld_store_metrics_durable reports them before their next checkpoint,
 *     which is then not written (the job's points after its last checkpoint
 *     are dropped and redone, so no step before it is ever missing). Lost log
 *     lines and progress are not redone (reported on stderr).
 *
 * Threads: producers (any thread) take mu to add an op and, for an awaited
 * op, wait on done_cv; the writer thread alone applies ops, on the writer
 * connection, calling the writer-thread hooks of the table files
 * (store_internal.h). Invariants (TL_NEVER): the ring never holds more than
 * STORE_QUEUE_CAP ops, and a batch never more than the ring holds.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "tokenlab/base.h"

/* Adds an op, waiting while the ring is full (see store_internal.h). */
int tld_store_enqueue(tld_store *s, const wop *op) {
    pthread_mutex_lock(&s->mu);
    while (s->count == STORE_QUEUE_CAP) pthread_cond_wait(&s->not_full, &s->mu);
    if (TL_NEVER(s->count >= STORE_QUEUE_CAP || s->head >= STORE_QUEUE_CAP)) { /* never overrun the ring */
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    s->ring[(s->head + s->count) % STORE_QUEUE_CAP] = *op;
    s->count++;
    pthread_cond_signal(&s->not_empty);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Queues an awaited op and waits until its batch is committed (or failed); on failure errno is ENOSPC when the
 * store's disk was full, EIO otherwise. */
int tld_store_submit(tld_store *s, op_kind kind, int64_t job, await_op *aw, char *err, size_t errlen) {
    wop op;
    memset(&op, 0, sizeof op);
    op.kind = kind;
    op.job = job;
    op.u.aw = aw;
    aw->rc = -1;
    aw->err[0] = '\0';
    aw->done = 0;
    if (tld_store_enqueue(s, &op) != 0) return tl_seterr(err, errlen, "the store's write queue is broken");
    pthread_mutex_lock(&s->mu);
    while (!aw->done) pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    if (aw->rc != 0) {
        tl_seterr(err, errlen, "%s", aw->err[0] ? aw->err : "store write failed");
        errno = aw->full ? ENOSPC : EIO;
    }
    return aw->rc;
}

int tld_store_write_exec(tld_store *s, tld_store_write_fn fn, void *arg, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.fn = fn;
    aw.fn_arg = arg;
    return tld_store_submit(s, OP_EXEC, 0, &aw, err, errlen);
}

/* Steps a write statement to completion (no rows); resets it. */
int tld_store_wstep(tld_store *s, int q) {
    int r = sqlite3_step(s->w[q]);
    sqlite3_reset(s->w[q]);
    sqlite3_clear_bindings(s->w[q]);
    return r == SQLITE_DONE ? 0 : -1;
}

int tld_store_note_full(tld_store *s) {
    int full = sqlite3_errcode(s->wdb) == SQLITE_FULL;
    if (full) s->batch_full = 1;
    return full;
}

/* Writer thread: job's metric points of this batch are lost. */
static void batch_lost(tld_store *s, int64_t job) {
    for (int i = 0; i < s->nbatch_lost; i++)
        if (s->batch_lost[i] == job) return;
    if (!TL_NEVER(s->nbatch_lost >= STORE_LOST_JOBS)) s->batch_lost[s->nbatch_lost++] = job;
    else s->batch_lost_all = 1;
}

void tld_store_queued_failed(tld_store *s, int64_t metric_job, int64_t n, const char *what) {
    tld_store_note_full(s);
    if (metric_job > 0) batch_lost(s, metric_job);
    if (s->batch_failures == 0)
        snprintf(s->batch_failure, sizeof s->batch_failure, "%s: %s", what, sqlite3_errmsg(s->wdb));
    s->batch_failures += n;
}

/* s->mu held: the batch's lost jobs join those not yet reported. */
static void merge_lost(tld_store *s) {
    int err = s->batch_full ? ENOSPC : EIO;
    for (int i = 0; i < s->nbatch_lost && !s->batch_lost_all; i++) {
        int k = 0;
        while (k < s->nlost && s->lost[k].job != s->batch_lost[i]) k++;
        if (TL_NEVER(k == s->nlost && s->nlost == STORE_LOST_JOBS)) { /* 4x the most jobs that can run at once */
            s->batch_lost_all = 1;
            break;
        }
        if (k == s->nlost) s->lost[s->nlost++].job = s->batch_lost[i], s->lost[k].err = err;
        else if (err == ENOSPC) s->lost[k].err = err;
    }
    if (s->batch_lost_all) {
        if (!s->lost_all || err == ENOSPC) s->lost_all_err = err;
        s->lost_all = 1;
    }
}

static void apply_queued(tld_store *s, wop *op) {
    switch (op->kind) {
    case OP_METRIC:
        tld_store_metrics_apply(s, op);
        return;
    case OP_PROGRESS:
        tld_store_jobs_apply_progress(s, op);
        return;
    case OP_LOG:
        tld_store_logs_add(s, op->job, op->u.log.text, op->u.log.len);
        return;
    default:
        return;
    }
}

/* Runs one awaited op in a savepoint: a refused op is undone alone. */
static void apply_awaited(tld_store *s, wop *op) {
    await_op *aw = op->u.aw;
    if (op->kind == OP_FLUSH) {
        aw->rc = 0;
        return;
    }
    if (tld_store_wstep(s, W_SAVEPOINT) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot begin a savepoint: %s", sqlite3_errmsg(s->wdb));
        aw->full = tld_store_note_full(s);
        aw->rc = -1;
        return;
    }
    int rc;
    switch (op->kind) {
    case OP_CREATE:
        rc = tld_store_jobs_do_create(s, aw);
        break;
    case OP_TRANSITION:
        rc = tld_store_jobs_do_transition(s, op->job, aw);
        break;
    case OP_RUN_DIR:
        rc = tld_store_jobs_do_update(s, W_JOB_RUN_DIR, op->job, aw, "set the run folder of");
        break;
    case OP_ATTEMPT:
        rc = tld_store_jobs_do_update(s, W_JOB_ATTEMPT, op->job, aw, "count an attempt of");
        break;
    case OP_DELETE:
        rc = tld_store_jobs_do_update(s, W_JOB_DELETE, op->job, aw, "delete");
        break;
    case OP_TRUNCATE:
        rc = tld_store_metrics_do_truncate(s, op->job, aw);
        break;
    case OP_CHECKPOINT:
        rc = tld_store_checkpoints_do_add(s, op->job, aw);
        break;
    case OP_EXEC:
        rc = aw->fn(s->wdb, aw->fn_arg, aw->err, sizeof aw->err);
        break;
    default:
        snprintf(aw->err, sizeof aw->err, "unknown store operation %d", (int)op->kind);
        rc = -1;
        break;
    }
    if (rc != 0) aw->full = tld_store_note_full(s);
    if (sqlite3_get_autocommit(s->wdb)) { /* the transaction itself is gone; apply_batch notices */
        aw->rc = rc;
        return;
    }
    if (rc != 0) tld_store_wstep(s, W_ROLLBACK_TO);
    if (tld_store_wstep(s, W_RELEASE) != 0 && rc == 0) {
        snprintf(aw->err, sizeof aw->err, "cannot release a savepoint: %s", sqlite3_errmsg(s->wdb));
        aw->full = tld_store_note_full(s);
        rc = -1;
    }
    aw->rc = rc;
}

/* Applies ring entries [start, start + n) in one transaction. */
static void apply_batch(tld_store *s, size_t start, size_t n) {
    char lost[STORE_ERR] = "";
    s->ndirty = 0;
    s->loglen = 0;
    s->loglines = 0;
    s->batch_failures = 0;
    s->batch_failure[0] = '\0';
    s->batch_full = 0;
    s->batch_wrote = 0;
    s->nbatch_lost = 0;
    s->batch_lost_all = 0;
    int64_t changes = sqlite3_total_changes64(s->wdb);
    if (tld_store_wstep(s, W_BEGIN) != 0)
        snprintf(lost, sizeof lost, "cannot begin a transaction: %s", sqlite3_errmsg(s->wdb));
    for (size_t i = 0; i < n && !lost[0]; i++) {
        wop *op = &s->ring[(start + i) % STORE_QUEUE_CAP];
        if (op->kind >= OP_CREATE) {
            /* An awaited op (a delete, a truncation) sees every line and block of the points queued before it. */
            tld_store_logs_flush(s);
            if (tld_store_metrics_flush_blocks(s, lost, sizeof lost) != 0) break;
            apply_awaited(s, op);
        } else {
            apply_queued(s, op);
        }
        if (sqlite3_get_autocommit(s->wdb))
            snprintf(lost, sizeof lost, "the transaction was rolled back: %s", sqlite3_errmsg(s->wdb));
    }
    if (!lost[0]) tld_store_logs_flush(s);
    if (!lost[0]) tld_store_metrics_flush_blocks(s, lost, sizeof lost);
    if (!lost[0] && tld_store_wstep(s, W_COMMIT) != 0)
        snprintf(lost, sizeof lost, "cannot commit: %s", sqlite3_errmsg(s->wdb));
    if (!lost[0]) s->batch_wrote = sqlite3_total_changes64(s->wdb) != changes;
    if (lost[0]) {
        tld_store_note_full(s); /* the error that lost the batch, before the rollback replaces it */
        if (!sqlite3_get_autocommit(s->wdb)) tld_store_wstep(s, W_ROLLBACK);
        int64_t nq = 0;
        for (size_t i = 0; i < n; i++) {
            wop *op = &s->ring[(start + i) % STORE_QUEUE_CAP];
            if (op->kind < OP_CREATE) {
                nq++;
                if (op->kind == OP_METRIC) batch_lost(s, op->job);
                continue;
            }
            if (op->u.aw->rc == 0 || op->kind == OP_FLUSH) {
                snprintf(op->u.aw->err, sizeof op->u.aw->err, "not saved: %.230s", lost);
                op->u.aw->rc = -1;
            } else if (!op->u.aw->err[0]) {
                snprintf(op->u.aw->err, sizeof op->u.aw->err, "not saved: %.230s", lost);
            }
            op->u.aw->full = op->u.aw->full || s->batch_full;
        }
        s->batch_failures = nq;
        snprintf(s->batch_failure, sizeof s->batch_failure, "%s", lost);
    }
    if (s->batch_failures)
        tld_store_report("%" PRId64 " queued write(s) failed; the first: %s", s->batch_failures, s->batch_failure);
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
        if (TL_NEVER(n > STORE_QUEUE_CAP)) n = STORE_QUEUE_CAP; /* a batch is at most the ring */
        pthread_mutex_unlock(&s->mu);

        tld_store_reserve_make(s); /* when it was released and there is room again */
        apply_batch(s, start, n);
        if (s->batch_full) tld_store_reserve_release(s); /* room for the retries of what this batch could not write */
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
        merge_lost(s);
        if (s->batch_full && !atomic_exchange(&s->full, 1)) atomic_fetch_add(&s->full_events, 1);
        if (!s->batch_full && s->batch_wrote) atomic_store(&s->full, 0); /* rows were written: there is room */
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

int tld_store_writer_start(tld_store *s, char *err, size_t errlen) {
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0)
        return tl_seterr(err, errlen, "cannot start the store's writer thread");
    s->writer_started = 1;
    return 0;
}

void tld_store_writer_stop(tld_store *s) {
    if (!s->writer_started) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->not_empty);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->writer, NULL);
    s->writer_started = 0;
}

int tld_store_full(tld_store *s) {
    return atomic_load(&s->full);
}

unsigned long long tld_store_full_events(tld_store *s) {
    return atomic_load(&s->full_events);
}

int tld_store_metrics_durable(tld_store *s, int64_t job) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    char err[STORE_ERR];
    tld_store_submit(s, OP_FLUSH, 0, &aw, err, sizeof err); /* every point queued so far is applied or lost */
    int e = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->nlost; i++) {
        if (s->lost[i].job != job) continue;
        e = s->lost[i].err;
        s->lost[i] = s->lost[--s->nlost];
        break;
    }
    if (!e && s->lost_all) e = s->lost_all_err;
    pthread_mutex_unlock(&s->mu);
    return e;
}

void tld_store_metrics_forget(tld_store *s, int64_t job) {
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->nlost; i++)
        if (s->lost[i].job == job) {
            s->lost[i] = s->lost[--s->nlost];
            break;
        }
    if (s->lost_all && s->nlost == 0) s->lost_all = 0; /* an overflow (never expected) ends with its jobs' attempts */
    pthread_mutex_unlock(&s->mu);
}

int tld_store_flush(tld_store *s) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    char err[STORE_ERR];
    if (tld_store_submit(s, OP_FLUSH, 0, &aw, err, sizeof err) != 0) {
        tld_store_report("flush: %s", err);
        return -1;
    }
    return 0;
}
