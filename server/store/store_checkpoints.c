/*
 * store_checkpoints.c: the store's checkpoint rows, (job, kind) -> the last
 * or best checkpoint file of a job (store.h, schema/store.sql table
 * checkpoints).
 *
 * Threads: tld_store_checkpoint_add submits an awaited op (any thread); its
 * hook tld_store_checkpoints_do_add runs on the writer thread;
 * tld_store_checkpoint_list reads on the calling thread's read connection.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"
#include "tokenlab/base.h"

int tld_store_checkpoints_do_add(tld_store *s, int64_t job, await_op *aw) {
    tld_job_state cur;
    if (tld_store_job_state_w(s, job, &cur, aw) != 0) return -1;
    const tld_checkpoint_row *c = aw->ckpt;
    sqlite3_stmt *st = s->w[W_CKPT_PUT];
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, c->kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, c->step);
    sqlite3_bind_text(st, 4, c->path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, c->bytes);
    sqlite3_bind_int64(st, 6, c->time_ms);
    sqlite3_bind_double(st, 7, c->top1);
    if (tld_store_wstep(s, W_CKPT_PUT) != 0) {
        snprintf(aw->err, sizeof aw->err, "cannot record the checkpoint of job %" PRId64 ": %s", job,
                 sqlite3_errmsg(s->wdb));
        return -1;
    }
    return 0;
}

int tld_store_checkpoint_add(tld_store *s, int64_t job, const tld_checkpoint_row *row, char *err, size_t errlen) {
    if (!row) {
        tl_seterr(err, errlen, "no checkpoint");
        return -1;
    }
    if (!memchr(row->kind, '\0', sizeof row->kind) ||
        (strcmp(row->kind, "last") != 0 && strcmp(row->kind, "best") != 0)) {
        tl_seterr(err, errlen, "checkpoint kind must be \"last\" or \"best\"");
        return -1;
    }
    if (!row->path[0] || !memchr(row->path, '\0', sizeof row->path)) {
        tl_seterr(err, errlen, "checkpoint path must be 1 to %zu bytes", sizeof row->path - 1);
        return -1;
    }
    if (row->step < 0 || row->bytes < 0) {
        tl_seterr(err, errlen, "checkpoint step and size must not be negative");
        return -1;
    }
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.ckpt = row;
    return tld_store_submit(s, OP_CHECKPOINT, job, &aw, err, errlen);
}

int tld_store_checkpoint_list(tld_store *s, int64_t job, tld_checkpoint_row *out, int max, int *n, char *err,
                             size_t errlen) {
    *n = 0;
    if (max <= 0) return 0;
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = tld_store_rstmt(c, R_CKPT_LIST, err, errlen);
    if (!st) return -1;
    int got = 0, r = SQLITE_DONE, rc = 0;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, max);
    while (got < max && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_checkpoint_row *k = &out[got++];
        memset(k, 0, sizeof *k);
        k->step = sqlite3_column_int64(st, 0);
        tld_store_copy_col(k->kind, sizeof k->kind, st, 1);
        tld_store_copy_col(k->path, sizeof k->path, st, 2);
        k->bytes = sqlite3_column_int64(st, 3);
        k->time_ms = sqlite3_column_int64(st, 4);
        k->top1 = sqlite3_column_double(st, 5);
    }
    if (got < max && r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot list the checkpoints of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        got = 0;
        rc = -1;
    }
    *n = got;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}
