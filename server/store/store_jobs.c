/*
 * store_jobs.c: the store's jobs table, the job state machine and the state
 * history (store.h, schema/store.sql).
 *
 * The state machine is kept twice on purpose: by the schema (trigger
 * jobs_state_machine, so no writer can break it) and here
 * (tld_job_transition_allowed), checked first for a clear message. Every
 * state change is recorded in state_transitions by the schema's triggers.
 * Job creation and state changes are awaited ops (the caller learns whether
 * they committed); progress is a queued op.
 *
 * Threads: the public functions run on any thread (they submit ops to the
 * writer, or read on the calling thread's read connection); the tld_store_jobs_*
 * hooks run only on the writer thread.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"
#include "tokenlab/base.h"

static const char *const state_names[TLD_JOB_NSTATES] = {"QUEUED",    "RUNNING", "CANCELLING",
                                                        "SUCCEEDED", "FAILED",  "CANCELLED"};

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
int tld_job_transition_allowed(tld_job_state from, tld_job_state to) {
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

/* The state of a job inside the write transaction: 0, 1 (not found) or -1 (error in aw->err). */
int tld_store_job_state_w(tld_store *s, int64_t job, tld_job_state *state, await_op *aw) {
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

int tld_store_jobs_do_create(tld_store *s, await_op *aw) {
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
    sqlite3_bind_int64(st, 3, tl_clock_wall_ms());
    if (aw->key) sqlite3_bind_text(st, 4, aw->key, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 4);
    if (tld_store_wstep(s, W_JOB_INSERT) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot create the job: %s", sqlite3_errmsg(s->wdb));
        return -1;
    }
    aw->id = sqlite3_last_insert_rowid(s->wdb);
    aw->existed = 0;
    return 0;
}

int tld_store_jobs_do_transition(tld_store *s, int64_t job, await_op *aw) {
    tld_job_state cur;
    if (tld_store_job_state_w(s, job, &cur, aw) != 0) return -1;
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
    if (!tld_job_transition_allowed(cur, aw->to)) {
        snprintf(aw->err, sizeof aw->err, "invalid transition: job %" PRId64 " cannot go from %s to %s", job,
                 state_names[cur], state_names[aw->to]);
        return -1;
    }
    sqlite3_stmt *st = s->w[W_JOB_TRANSITION];
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, state_names[aw->to], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, aw->reason ? aw->reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, aw->message ? aw->message : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, tl_clock_wall_ms());
    sqlite3_bind_int(st, 6, aw->to == TLD_JOB_RUNNING);
    sqlite3_bind_int(st, 7, tld_job_state_final(aw->to));
    if (tld_store_wstep(s, W_JOB_TRANSITION) != 0) {
        snprintf(aw->err, sizeof aw->err, "invalid transition: job %" PRId64 " from %s to %s refused: %s", job,
                 state_names[cur], state_names[aw->to], sqlite3_errmsg(s->wdb));
        return -1;
    }
    return 0;
}

/* An UPDATE or DELETE of one job by id: "not found" when no row changed. */
int tld_store_jobs_do_update(tld_store *s, int q, int64_t job, await_op *aw, const char *what) {
    sqlite3_bind_int64(s->w[q], 1, job);
    if (q == W_JOB_RUN_DIR) sqlite3_bind_text(s->w[q], 2, aw->run_dir, -1, SQLITE_STATIC);
    if (q == W_JOB_ATTEMPT) sqlite3_bind_int64(s->w[q], 2, aw->step);
    if (tld_store_wstep(s, q) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot %s job %" PRId64 ": %s", what, job, sqlite3_errmsg(s->wdb));
        return -1;
    }
    if (sqlite3_changes(s->wdb) == 0) {
        snprintf(aw->err, sizeof aw->err, "job %" PRId64 " not found", job);
        return -1;
    }
    return 0;
}

/* Applies a queued progress update (writer thread). */
void tld_store_jobs_apply_progress(tld_store *s, const wop *op) {
    sqlite3_stmt *st = s->w[W_PROGRESS];
    sqlite3_bind_int64(st, 1, op->job);
    sqlite3_bind_int64(st, 2, op->u.progress.epoch);
    sqlite3_bind_int64(st, 3, op->u.progress.step);
    sqlite3_bind_int64(st, 4, op->u.progress.total);
    sqlite3_bind_double(st, 5, op->u.progress.eta);
    if (tld_store_wstep(s, W_PROGRESS) != 0) {
        char what[64];
        snprintf(what, sizeof what, "progress of job %" PRId64, op->job);
        tld_store_queued_failed(s, 0, 1, what);
    }
}

int tld_store_job_create(tld_store *s, const char *name, const char *spec_json, const char *idempotency_key,
                        int64_t *id, int *existed, char *err, size_t errlen) {
    if (id) *id = 0;
    if (existed) *existed = 0;
    if (!name || !*name || strlen(name) >= sizeof ((tld_job *)0)->name) {
        tl_seterr(err, errlen, "job name must be 1 to %zu bytes", sizeof ((tld_job *)0)->name - 1);
        return -1;
    }
    if (!spec_json) {
        tl_seterr(err, errlen, "no job spec");
        return -1;
    }
    if (idempotency_key && !*idempotency_key) idempotency_key = NULL;
    if (idempotency_key && strlen(idempotency_key) >= sizeof ((tld_job *)0)->idempotency_key) {
        tl_seterr(err, errlen, "idempotency key longer than %zu bytes", sizeof ((tld_job *)0)->idempotency_key - 1);
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.name = name;
    aw.spec = spec_json;
    aw.key = idempotency_key;
    if (tld_store_submit(s, OP_CREATE, 0, &aw, err, errlen) != 0) return -1;
    if (id) *id = aw.id;
    if (existed) *existed = aw.existed;
    return 0;
}

/* Fills j from a row of JOB_COLS. */
static int read_job(sqlite3_stmt *st, tld_job *j, char *err, size_t errlen) {
    memset(j, 0, sizeof *j);
    j->id = sqlite3_column_int64(st, 0);
    tld_store_copy_col(j->name, sizeof j->name, st, 1);
    const char *spec = (const char *)sqlite3_column_text(st, 2);
    size_t slen = (size_t)sqlite3_column_bytes(st, 2);
    j->spec_json = malloc(slen + 1);
    if (!j->spec_json) {
        tl_seterr(err, errlen, "out of memory for the spec of job %" PRId64, j->id);
        return -1;
    }
    if (slen) memcpy(j->spec_json, spec, slen);
    j->spec_json[slen] = '\0';
    const char *state = (const char *)sqlite3_column_text(st, 3);
    if (tld_job_state_parse(state, &j->state) != 0) {
        tl_seterr(err, errlen, "job %" PRId64 " has an unknown state '%s'", j->id, state ? state : "");
        tld_job_free(j);
        return -1;
    }
    tld_store_copy_col(j->state_reason, sizeof j->state_reason, st, 4);
    tld_store_copy_col(j->state_message, sizeof j->state_message, st, 5);
    j->created_ms = sqlite3_column_int64(st, 6);
    j->started_ms = sqlite3_column_int64(st, 7);
    j->ended_ms = sqlite3_column_int64(st, 8);
    j->attempt = sqlite3_column_int(st, 9);
    j->epoch = sqlite3_column_int64(st, 10);
    j->step = sqlite3_column_int64(st, 11);
    j->total_steps = sqlite3_column_int64(st, 12);
    j->eta_seconds = sqlite3_column_double(st, 13);
    tld_store_copy_col(j->idempotency_key, sizeof j->idempotency_key, st, 14);
    tld_store_copy_col(j->run_dir, sizeof j->run_dir, st, 15);
    j->attempt_mark = sqlite3_column_int64(st, 16);
    j->stalled_attempts = sqlite3_column_int(st, 17);
    return 0;
}

int tld_store_job_get(tld_store *s, int64_t id, tld_job *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = tld_store_rstmt(c, R_JOB_GET, err, errlen);
    if (!st) return -1;
    int rc = -1;
    sqlite3_bind_int64(st, 1, id);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) rc = read_job(st, out, err, errlen);
    else if (r == SQLITE_DONE) tl_seterr(err, errlen, "job %" PRId64 " not found", id);
    else tl_seterr(err, errlen, "cannot read job %" PRId64 ": %s", id, sqlite3_errmsg(c->db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int tld_store_job_list(tld_store *s, int state_filter, int64_t before_id, int limit, tld_job *out, int *n, char *err,
                      size_t errlen) {
    *n = 0;
    if (limit <= 0) return 0;
    if (state_filter >= TLD_JOB_NSTATES) {
        tl_seterr(err, errlen, "unknown job state %d", state_filter);
        return -1;
    }
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = tld_store_rstmt(c, state_filter < 0 ? R_JOB_LIST : R_JOB_LIST_STATE, err, errlen);
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
        tl_seterr(err, errlen, "cannot list jobs: %s", sqlite3_errmsg(c->db));
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
        tl_seterr(err, errlen, "invalid transition: unknown target state %d", (int)to);
        return -1;
    }
    if (reason && strlen(reason) >= sizeof ((tld_job *)0)->state_reason) {
        tl_seterr(err, errlen, "state reason longer than %zu bytes", sizeof ((tld_job *)0)->state_reason - 1);
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.from_mask = from_mask;
    aw.to = to;
    aw.reason = reason;
    aw.message = message;
    return tld_store_submit(s, OP_TRANSITION, id, &aw, err, errlen);
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
    return tld_store_enqueue(s, &op);
}

int tld_store_job_set_run_dir(tld_store *s, int64_t id, const char *run_dir, char *err, size_t errlen) {
    if (!run_dir || strlen(run_dir) >= sizeof ((tld_job *)0)->run_dir) {
        tl_seterr(err, errlen, "run folder must be at most %zu bytes", sizeof ((tld_job *)0)->run_dir - 1);
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.run_dir = run_dir;
    return tld_store_submit(s, OP_RUN_DIR, id, &aw, err, errlen);
}

int tld_store_job_begin_attempt(tld_store *s, int64_t id, int64_t mark, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.step = mark < -1 ? -1 : mark;
    return tld_store_submit(s, OP_ATTEMPT, id, &aw, err, errlen);
}

int tld_store_job_delete(tld_store *s, int64_t id, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    return tld_store_submit(s, OP_DELETE, id, &aw, err, errlen);
}

int tld_store_job_queue_position(tld_store *s, int64_t id) {
    char err[STORE_ERR];
    rconn *c = tld_store_reader(s, err, sizeof err);
    sqlite3_stmt *st = c ? tld_store_rstmt(c, R_QUEUE_POS, err, sizeof err) : NULL;
    if (!st) {
        tld_store_report("queue position of job %" PRId64 ": %s", id, err);
        return -1;
    }
    int pos = -1;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) pos = sqlite3_column_int(st, 0);
    else tld_store_report("queue position of job %" PRId64 ": %s", id, sqlite3_errmsg(c->db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return pos;
}

int tld_store_job_counts(tld_store *s, int64_t counts[TLD_JOB_NSTATES]) {
    char err[STORE_ERR];
    for (int i = 0; i < TLD_JOB_NSTATES; i++) counts[i] = 0;
    rconn *c = tld_store_reader(s, err, sizeof err);
    sqlite3_stmt *st = c ? tld_store_rstmt(c, R_COUNTS, err, sizeof err) : NULL;
    if (!st) {
        tld_store_report("job counts: %s", err);
        return -1;
    }
    int r, rc = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_job_state js;
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (tld_job_state_parse(name, &js) != 0) {
            tld_store_report("job counts: unknown state '%s'", name ? name : "");
            rc = -1;
            continue;
        }
        counts[js] = sqlite3_column_int64(st, 1);
    }
    if (r != SQLITE_DONE) {
        tld_store_report("job counts: %s", sqlite3_errmsg(c->db));
        rc = -1;
    }
    sqlite3_reset(st);
    return rc;
}

int tld_store_job_history(tld_store *s, int64_t job, tld_state_change *out, int max, int *n, char *err, size_t errlen) {
    *n = 0;
    if (max <= 0) return 0;
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = tld_store_rstmt(c, R_HISTORY, err, errlen);
    if (!st) return -1;
    int got = 0, r = SQLITE_DONE, rc = 0;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, max);
    while (got < max && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_state_change *h = &out[got++];
        memset(h, 0, sizeof *h);
        h->time_ms = sqlite3_column_int64(st, 0);
        tld_store_copy_col(h->from, sizeof h->from, st, 1);
        tld_store_copy_col(h->to, sizeof h->to, st, 2);
        tld_store_copy_col(h->reason, sizeof h->reason, st, 3);
        tld_store_copy_col(h->message, sizeof h->message, st, 4);
    }
    if (got < max && r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot read the state history of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        got = 0;
        rc = -1;
    }
    *n = got;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}
