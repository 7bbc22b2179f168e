/*
 * store_dist.c: the store's table of the ranks of distributed training jobs
 * (store.h, schema/store_v4.sql: job_dist).
 *
 * Owns nothing but the SQL: the writes run on the store's writer thread
 * through tld_store_write_exec (awaited, each in its own savepoint), the
 * read on the calling thread's read connection. The schema enforces the
 * invariants (1 <= ranks <= ranks_requested, JSON arrays); a violation comes
 * back as an error. Any thread: the job's worker writes (server/jobs/jobs.c),
 * HTTP handlers read (server/api/routes.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"
#include "tokenlab/base.h"

typedef struct {
    int64_t job;
    int ranks_requested, ranks;   /* put; 0 for a rates update */
    const char *json;             /* hosts (put) or the per-rank images/s (rates) */
    double comm_seconds;
} dist_arg;

static int dist_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    const dist_arg *p = a;
    sqlite3_stmt *st = NULL;
    int rc = -1, put = p->ranks > 0;
    const char *sql = put ? "INSERT OR REPLACE INTO job_dist (job_id, ranks_requested, ranks, hosts_json, time_ms) "
                            "VALUES (?1, ?2, ?3, ?4, ?5)"
                          : "UPDATE job_dist SET rank_img_per_s = ?4, comm_seconds = ?6, time_ms = ?5 "
                            "WHERE job_id = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the ranks write: %s", sqlite3_errmsg(db));
        goto fail;
    }
    sqlite3_bind_int64(st, 1, p->job);
    if (put) {
        sqlite3_bind_int(st, 2, p->ranks_requested);
        sqlite3_bind_int(st, 3, p->ranks);
    } else {
        sqlite3_bind_double(st, 6, p->comm_seconds);
    }
    sqlite3_bind_text(st, 4, p->json, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, tl_clock_wall_ms());
    if (sqlite3_step(st) != SQLITE_DONE) {
        snprintf(err, errlen, "cannot record the ranks of job %" PRId64 ": %s", p->job, sqlite3_errmsg(db));
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_finalize(st);
    return rc;
}

int tld_store_job_dist_put(tld_store *s, int64_t job, int ranks_requested, int ranks, const char *hosts_json,
                           char *err, size_t errlen) {
    if (ranks < 1) {
        snprintf(err, errlen, "ranks must be at least 1, got %d", ranks);
        return -1;
    }
    dist_arg a = {job, ranks_requested, ranks, hosts_json, 0};
    return tld_store_write_exec(s, dist_fn, &a, err, errlen);
}

int tld_store_job_dist_rates(tld_store *s, int64_t job, const char *rank_img_per_s_json, double comm_seconds,
                             char *err, size_t errlen) {
    dist_arg a = {job, 0, 0, rank_img_per_s_json, comm_seconds};
    return tld_store_write_exec(s, dist_fn, &a, err, errlen);
}

/* A malloc'd copy of a text column ("" for NULL); NULL when out of memory. */
static char *dup_col(sqlite3_stmt *st, int col) {
    const unsigned char *t = sqlite3_column_text(st, col);
    return strdup(t ? (const char *)t : "");
}

int tld_store_job_dist_get(tld_store *s, int64_t job, tld_job_dist_row *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT ranks_requested, ranks, hosts_json, rank_img_per_s, comm_seconds, time_ms "
                           "FROM job_dist WHERE job_id = ?1",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the ranks read: %s", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_int64(st, 1, job);
    int r = sqlite3_step(st), rc = -1;
    if (r == SQLITE_ROW) {
        out->ranks_requested = sqlite3_column_int(st, 0);
        out->ranks = sqlite3_column_int(st, 1);
        out->hosts_json = dup_col(st, 2);
        out->rank_img_per_s_json = dup_col(st, 3);
        out->has_comm_seconds = sqlite3_column_type(st, 4) != SQLITE_NULL;
        out->comm_seconds = sqlite3_column_double(st, 4);
        out->time_ms = sqlite3_column_int64(st, 5);
        if (out->hosts_json && out->rank_img_per_s_json) rc = 0;
        else {
            tld_job_dist_free(out);
            snprintf(err, errlen, "out of memory");
        }
    } else if (r == SQLITE_DONE) {
        snprintf(err, errlen, "not found");
    } else {
        snprintf(err, errlen, "cannot read the ranks of job %" PRId64 ": %s", job, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return rc;
}

void tld_job_dist_free(tld_job_dist_row *r) {
    free(r->hosts_json);
    free(r->rank_img_per_s_json);
    r->hosts_json = r->rank_img_per_s_json = NULL;
}
