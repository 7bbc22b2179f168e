/*
 * store_inits.c: the store's table of where fine-tuned training jobs started
 * (store.h, schema/store_v3.sql: job_inits).
 *
 * Owns nothing but the SQL: the write runs on the store's writer thread
 * through tld_store_write_exec (awaited, in its own savepoint), the read on
 * the calling thread's read connection. The schema enforces the invariants
 * (one source, known head mode, both grids or neither); a violation comes
 * back as an error. Any thread: the job's worker writes (the on_init hook of
 * server/jobs/jobs.c), HTTP handlers read (server/api/lineage.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"

#define INIT_COLS                                                                                                \
    "source_kind, coalesce(source_model, ''), coalesce(source_job_id, 0), checkpoint, step, ema, head, "       \
    "classes_matched, coalesce(pos_from, 0), coalesce(pos_to, 0), weights, time_ms"

typedef struct {
    int64_t job;
    const tld_job_init_row *r;
} put_arg;

static int put_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    const put_arg *p = a;
    const tld_job_init_row *r = p->r;
    sqlite3_stmt *st = NULL;
    int rc = -1, is_model = strcmp(r->source_kind, "model") == 0;
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO job_inits (job_id, source_kind, source_model, source_job_id, "
                           "checkpoint, step, ema, head, classes_matched, pos_from, pos_to, weights, time_ms) VALUES "
                           "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the init write: %s", sqlite3_errmsg(db));
        goto fail;
    }
    sqlite3_bind_int64(st, 1, p->job);
    sqlite3_bind_text(st, 2, r->source_kind, -1, SQLITE_STATIC);
    if (is_model) {
        sqlite3_bind_text(st, 3, r->source_model, -1, SQLITE_STATIC);
        sqlite3_bind_null(st, 4);
        sqlite3_bind_text(st, 5, "", -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 3);
        sqlite3_bind_int64(st, 4, r->source_job);
        sqlite3_bind_text(st, 5, r->checkpoint, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(st, 6, r->step < 0 ? -1 : r->step);
    sqlite3_bind_int(st, 7, r->ema ? 1 : 0);
    sqlite3_bind_text(st, 8, r->head, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 9, r->classes_matched);
    if (r->pos_from > 0 || r->pos_to > 0) {
        sqlite3_bind_int(st, 10, r->pos_from);
        sqlite3_bind_int(st, 11, r->pos_to);
    } else {
        sqlite3_bind_null(st, 10);
        sqlite3_bind_null(st, 11);
    }
    sqlite3_bind_text(st, 12, r->weights, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 13, r->time_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        snprintf(err, errlen, "cannot record where job %" PRId64 " started: %s", p->job, sqlite3_errmsg(db));
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_finalize(st);
    return rc;
}

int tld_store_job_init_put(tld_store *s, int64_t job, const tld_job_init_row *r, char *err, size_t errlen) {
    put_arg a = {job, r};
    return tld_store_write_exec(s, put_fn, &a, err, errlen);
}

int tld_store_job_init_get(tld_store *s, int64_t job, tld_job_init_row *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT " INIT_COLS " FROM job_inits WHERE job_id = ?1", -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the init read: %s", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_int64(st, 1, job);
    int r = sqlite3_step(st), rc = -1;
    if (r == SQLITE_ROW) {
        tld_store_copy_col(out->source_kind, sizeof out->source_kind, st, 0);
        tld_store_copy_col(out->source_model, sizeof out->source_model, st, 1);
        out->source_job = sqlite3_column_int64(st, 2);
        tld_store_copy_col(out->checkpoint, sizeof out->checkpoint, st, 3);
        out->step = sqlite3_column_int64(st, 4);
        out->ema = sqlite3_column_int(st, 5);
        tld_store_copy_col(out->head, sizeof out->head, st, 6);
        out->classes_matched = sqlite3_column_int(st, 7);
        out->pos_from = sqlite3_column_int(st, 8);
        out->pos_to = sqlite3_column_int(st, 9);
        tld_store_copy_col(out->weights, sizeof out->weights, st, 10);
        out->time_ms = sqlite3_column_int64(st, 11);
        rc = 0;
    } else if (r == SQLITE_DONE) {
        snprintf(err, errlen, "not found");
    } else {
        snprintf(err, errlen, "cannot read where job %" PRId64 " started: %s", job, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return rc;
}
