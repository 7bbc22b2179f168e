/*
 * store_metrics.c: the store's metric points and their block summaries
 * (store.h, schema/store.sql tables metrics and metric_blocks).
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
 *
 * Threads: tld_store_metric_add queues (any thread); truncation is awaited;
 * queries read on the calling thread's read connection. The
 * tld_store_metrics_* hooks (applying points, recomputing the blocks a batch
 * touched, truncating) run only on the writer thread, whose batch scratch
 * (s->dirty) they use.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"
#include "tokenlab/base.h"

static void mark_dirty(tld_store *s, int64_t job, const char *name, int64_t block) {
    if (s->ndirty) {
        dirty_block *d = &s->dirty[s->ndirty - 1];
        if (d->job == job && d->block == block && strcmp(d->name, name) == 0) return;
    }
    if (TL_NEVER(s->ndirty >= STORE_QUEUE_CAP)) return; /* at most one per op: never past the ring size */
    s->dirty[s->ndirty++] = (dirty_block){job, name, block};
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
        tl_seterr(err, errlen, "cannot summarise metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(s->wdb));
        goto fail;
    }
    int64_t n = sqlite3_column_int64(agg, 0);
    if (n == 0) { /* no points left: no block row */
        sqlite3_bind_int64(s->w[W_BLOCK_DEL], 1, job);
        sqlite3_bind_text(s->w[W_BLOCK_DEL], 2, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->w[W_BLOCK_DEL], 3, block);
        if (tld_store_wstep(s, W_BLOCK_DEL) != 0)
            tl_seterr(err, errlen, "cannot drop a summary of metric %s of job %" PRId64 ": %s", name, job,
                      sqlite3_errmsg(s->wdb));
        else
            rc = 0;
        goto fail;
    }
    double mn = tld_store_col_double(agg, 1), mx = tld_store_col_double(agg, 2);
    int64_t last_step = sqlite3_column_int64(agg, 3);
    sqlite3_bind_int64(last, 1, job);
    sqlite3_bind_text(last, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(last, 3, last_step);
    if (sqlite3_step(last) != SQLITE_ROW) {
        tl_seterr(err, errlen, "cannot read the last point of metric %s of job %" PRId64 ": %s", name, job,
                  sqlite3_errmsg(s->wdb));
        goto fail;
    }
    sqlite3_stmt *put = s->w[W_BLOCK_PUT];
    sqlite3_bind_int64(put, 1, job);
    sqlite3_bind_text(put, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(put, 3, block);
    sqlite3_bind_int64(put, 4, n);
    tld_store_bind_double(put, 5, mn);
    tld_store_bind_double(put, 6, mx);
    sqlite3_bind_int64(put, 7, last_step);
    tld_store_bind_double(put, 8, tld_store_col_double(last, 0));
    sqlite3_bind_int64(put, 9, sqlite3_column_int64(last, 1));
    if (tld_store_wstep(s, W_BLOCK_PUT) != 0) {
        tl_seterr(err, errlen, "cannot store a summary of metric %s of job %" PRId64 ": %s", name, job,
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

/* Applies a queued metric point (writer thread) and marks its block for recomputation. */
void tld_store_metrics_apply(tld_store *s, const wop *op) {
    sqlite3_stmt *st = s->w[W_METRIC_PUT];
    sqlite3_bind_int64(st, 1, op->job);
    sqlite3_bind_text(st, 2, op->u.metric.name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, op->u.metric.step);
    tld_store_bind_double(st, 4, op->u.metric.value);
    sqlite3_bind_int64(st, 5, op->u.metric.time_ms);
    if (tld_store_wstep(s, W_METRIC_PUT) != 0) {
        char what[128];
        snprintf(what, sizeof what, "metric %s of job %" PRId64, op->u.metric.name, op->job);
        tld_store_queued_failed(s, op->job, 1, what);
        return;
    }
    mark_dirty(s, op->job, op->u.metric.name, op->u.metric.step / STORE_BLOCK);
}

typedef struct {
    char (*names)[STORE_NAME_MAX];
    int n, cap;
} name_list;

int tld_store_metrics_do_truncate(tld_store *s, int64_t job, await_op *aw) {
    tld_job_state cur;
    name_list nl = {NULL, 0, 0};
    int rc = -1;
    if (tld_store_job_state_w(s, job, &cur, aw) != 0) return -1;
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
        tld_store_copy_col(nl.names[nl.n++], STORE_NAME_MAX, st, 0);
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
        if (tld_store_wstep(s, W_TRUNC_POINTS) != 0 || tld_store_wstep(s, W_TRUNC_BLOCKS) != 0) {
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

/* Recomputes the blocks touched since the last call; -1 (message in lost) means the batch must not commit. */
int tld_store_metrics_flush_blocks(tld_store *s, char *lost, size_t lostlen) {
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

static int check_metric_name(const char *name, char *err, size_t errlen) {
    if (!name || !*name || strlen(name) >= STORE_NAME_MAX) {
        tl_seterr(err, errlen, "metric name must be 1 to %d bytes", STORE_NAME_MAX - 1);
        return -1;
    }
    return 0;
}

int tld_store_metric_add(tld_store *s, int64_t job, const char *name, int64_t step, double value, int64_t time_ms) {
    char err[STORE_ERR];
    if (check_metric_name(name, err, sizeof err) != 0) {
        tld_store_report("metric of job %" PRId64 " refused: %s", job, err);
        return -1;
    }
    if (step < 0 || step > STORE_STEP_MAX) {
        tld_store_report("metric %s of job %" PRId64 " refused: step %" PRId64 " is outside 0..2^62", name, job, step);
        return -1;
    }
    wop op;
    op.kind = OP_METRIC;
    op.job = job;
    op.u.metric.step = step;
    op.u.metric.time_ms = time_ms;
    op.u.metric.value = value;
    memcpy(op.u.metric.name, name, strlen(name) + 1);
    return tld_store_enqueue(s, &op);
}

int tld_store_metric_truncate(tld_store *s, int64_t job, int64_t step, char *err, size_t errlen) {
    await_op aw;
    memset(&aw, 0, sizeof aw);
    aw.step = step;
    return tld_store_submit(s, OP_TRUNCATE, job, &aw, err, errlen);
}

int tld_store_metric_names(tld_store *s, int64_t job, tld_metric_summary *out, int max, int *n, char *err,
                          size_t errlen) {
    *n = 0;
    if (max <= 0) return 0;
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = tld_store_rstmt(c, R_METRIC_NAMES, err, errlen);
    if (!st) return -1;
    int got = 0, r = SQLITE_DONE, rc = 0;
    sqlite3_bind_int64(st, 1, job);
    while (got < max && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_metric_summary *m = &out[got++];
        memset(m, 0, sizeof *m);
        tld_store_copy_col(m->name, sizeof m->name, st, 0);
        m->last_step = sqlite3_column_int64(st, 2);
        m->last_value = tld_store_col_double(st, 3);
        m->count = sqlite3_column_int64(st, 4);
    }
    if (got < max && r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot list the metrics of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
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
        double v = tld_store_col_double(st, 1);
        bk->count++;
        bucket_minmax(bk, v, v);
        bk->last_step = sqlite3_column_int64(st, 0);
        bk->last = v;
        bk->time_ms = sqlite3_column_int64(st, 2);
    }
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot read metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
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
        bucket_minmax(bk, tld_store_col_double(st, 1), tld_store_col_double(st, 2));
        bk->last_step = sqlite3_column_int64(st, 3);
        bk->last = tld_store_col_double(st, 4);
        bk->time_ms = sqlite3_column_int64(st, 5);
    }
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot read summaries of metric %s of job %" PRId64 ": %s", name, job,
                  sqlite3_errmsg(c->db));
        return -1;
    }
    return 0;
}

/* The step of the first (dir 0) or last (dir 1) point in [a, b]: 1 found, 0 none, -1 error. */
static int edge_step(rconn *c, int q, int64_t job, const char *name, int64_t a, int64_t b, int64_t *out, char *err,
                     size_t errlen) {
    sqlite3_stmt *st = tld_store_rstmt(c, q, err, errlen);
    if (!st) return -1;
    bind_range(st, job, name, a, b);
    int r = sqlite3_step(st), rc = 0;
    if (r == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = 1;
    } else if (r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot read metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
        rc = -1;
    }
    sqlite3_reset(st);
    return rc;
}

/* Bucketed query over [lo, hi] (both holding points) into at most max_points buckets. */
static int query_buckets(rconn *c, int64_t job, const char *name, int64_t lo, int64_t hi, int max_points,
                         tld_metric_point *out, int *n, char *err, size_t errlen) {
    sqlite3_stmt *raw = tld_store_rstmt(c, R_METRIC_RAW, err, errlen), *blk = tld_store_rstmt(c, R_BLOCKS, err, errlen);
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
    sqlite3_stmt *st = tld_store_rstmt(c, R_METRIC_RAW, err, errlen);
    if (!st) return -1;
    bind_range(st, job, name, lo, hi);
    int got = 0, r = SQLITE_DONE;
    while (got < max_points && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_metric_point *p = &out[got++];
        p->step = sqlite3_column_int64(st, 0);
        p->last = p->min = p->max = tld_store_col_double(st, 1);
        p->time_ms = sqlite3_column_int64(st, 2);
        p->count = 1;
    }
    int rc = 0;
    if (got < max_points && r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot read metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
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
        tl_seterr(err, errlen, "max_points must be positive");
        return -1;
    }
    int64_t lo = start_step < 0 ? 0 : start_step;
    int64_t hi = (end_step < 0 || end_step > STORE_STEP_MAX) ? STORE_STEP_MAX : end_step;
    if (lo > hi) return 0;
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *cnt = tld_store_rstmt(c, R_METRIC_COUNT, err, errlen);
    if (!cnt || tld_store_rexec(c, R_BEGIN, err, errlen) != 0) return -1;
    int rc = -1;
    bind_range(cnt, job, name, lo, hi);
    sqlite3_bind_int64(cnt, 5, (int64_t)max_points + 1);
    int r = sqlite3_step(cnt);
    int64_t count = r == SQLITE_ROW ? sqlite3_column_int64(cnt, 0) : -1;
    sqlite3_reset(cnt);
    if (r != SQLITE_ROW) {
        tl_seterr(err, errlen, "cannot count metric %s of job %" PRId64 ": %s", name, job, sqlite3_errmsg(c->db));
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
        if (found == 0) tl_seterr(err, errlen, "metric %s of job %" PRId64 " has no points in range", name, job);
        goto fail;
    }
    *bucketed = 1;
    rc = query_buckets(c, job, name, lo, hi, max_points, out, n, err, errlen);
fail:
    if (rc != 0) *n = 0;
    if (tld_store_rexec(c, R_COMMIT, rc == 0 ? err : NULL, errlen) != 0 && rc == 0) {
        *n = 0;
        rc = -1;
    }
    return rc;
}
