/*
 * store_inspect.c: the store's records of token inspection (store.h,
 * schema/store_v2.sql): each job's inspection set (sizes, class names, the
 * samples with their display image and token targets) and the per-token
 * predictions recorded at every evaluation.
 *
 * Owns nothing but the SQL: writes run on the store's writer thread through
 * tld_store_write_exec (awaited, each in its own savepoint, so a set is
 * written whole or not at all), reads on the calling thread's read
 * connection. Blob lengths are checked against the grid before writing and
 * after reading: a grid of the wrong size is an error, never a short read.
 * Any thread.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"

void tld_inspect_set_row_free(tld_inspect_set_row *r) {
    if (!r) return;
    free(r->labels_json);
    r->labels_json = NULL;
}

static int prep(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen) {
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK) return 0;
    snprintf(err, errlen, "cannot prepare \"%.60s...\": %s", sql, sqlite3_errmsg(db));
    *st = NULL;
    return -1;
}

/* ------------------------------------------------------------------ writes */

typedef struct {
    int64_t job;
    const tld_inspect_set_row *set;
    int n;
    const tld_inspect_sample_info *samples;
    const void *const *jpegs;
    const size_t *jpeg_lens;
    const void *const *targets;
} set_arg;

static int set_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    set_arg *p = a;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (prep(db, "SELECT 1 FROM inspect_sets WHERE job_id = ?1", &st, err, errlen) != 0) return -1;
    sqlite3_bind_int64(st, 1, p->job);
    int exists = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    st = NULL;
    if (exists) return 0; /* a resumed job's set is the one already stored */
    if (prep(db,
             "INSERT INTO inspect_sets (job_id, size, grid, view, num_classes, labels_json) "
             "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
             &st, err, errlen) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, p->job);
    sqlite3_bind_int(st, 2, p->set->size);
    sqlite3_bind_int(st, 3, p->set->grid);
    sqlite3_bind_int(st, 4, p->set->view);
    sqlite3_bind_int(st, 5, p->set->num_classes);
    sqlite3_bind_text(st, 6, p->set->labels_json ? p->set->labels_json : "[]", -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        snprintf(err, errlen, "cannot record the inspection set of job %" PRId64 ": %s", p->job, sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (prep(db,
             "INSERT INTO inspect_samples (job_id, k, split, path, label, target_kind, image_jpeg, target) "
             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
             &st, err, errlen) != 0)
        return -1;
    for (int i = 0; i < p->n; i++) {
        const tld_inspect_sample_info *s = &p->samples[i];
        sqlite3_bind_int64(st, 1, p->job);
        sqlite3_bind_int(st, 2, s->k);
        sqlite3_bind_text(st, 3, s->split, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, s->path, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, s->label);
        sqlite3_bind_text(st, 6, s->target_kind, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 7, p->jpegs[i], (int)p->jpeg_lens[i], SQLITE_STATIC);
        sqlite3_bind_blob(st, 8, p->targets[i], (int)TLD_GRID_BLOB_BYTES(p->set->grid), SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) {
            snprintf(err, errlen, "cannot record inspection sample %d of job %" PRId64 ": %s", s->k, p->job,
                     sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    rc = 0;
done:
    sqlite3_finalize(st);
    return rc;
}

int tld_store_inspect_set_put(tld_store *s, int64_t job, const tld_inspect_set_row *set, int n,
                             const tld_inspect_sample_info *samples, const void *const *jpegs, const size_t *jpeg_lens,
                             const void *const *targets, char *err, size_t errlen) {
    if (set->grid <= 0 || set->grid > 1024 || n < 0 || n > 1024) {
        snprintf(err, errlen, "inspection set of job %" PRId64 ": grid %d or %d samples out of range", job, set->grid,
                 n);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (!jpegs[i] || jpeg_lens[i] == 0 || jpeg_lens[i] > (64u << 20) || !targets[i]) {
            snprintf(err, errlen, "inspection sample %d of job %" PRId64 " has no image or no target", i, job);
            return -1;
        }
    set_arg a = {job, set, n, samples, jpegs, jpeg_lens, targets};
    return tld_store_write_exec(s, set_fn, &a, err, errlen);
}

typedef struct {
    int64_t job, step, time_ms;
    int ema, n;
    const void *const *tokens;
    const void *const *top5;
} preds_arg;

static int preds_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    preds_arg *p = a;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (prep(db, "SELECT grid FROM inspect_sets WHERE job_id = ?1", &st, err, errlen) != 0) return -1;
    sqlite3_bind_int64(st, 1, p->job);
    if (sqlite3_step(st) != SQLITE_ROW) {
        snprintf(err, errlen, "job %" PRId64 " has no inspection set", p->job);
        goto done;
    }
    int grid = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (prep(db,
             "INSERT OR REPLACE INTO inspect_preds (job_id, step, ema, k, tokens, top5, time_ms) "
             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
             &st, err, errlen) != 0)
        return -1;
    for (int k = 0; k < p->n; k++) {
        sqlite3_bind_int64(st, 1, p->job);
        sqlite3_bind_int64(st, 2, p->step);
        sqlite3_bind_int(st, 3, p->ema);
        sqlite3_bind_int(st, 4, k);
        sqlite3_bind_blob(st, 5, p->tokens[k], (int)TLD_GRID_BLOB_BYTES(grid), SQLITE_STATIC);
        sqlite3_bind_blob(st, 6, p->top5[k], (int)TLD_TOP5_BLOB_BYTES, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, p->time_ms);
        if (sqlite3_step(st) != SQLITE_DONE) {
            snprintf(err, errlen, "cannot record the predictions of sample %d of job %" PRId64 ": %s", k, p->job,
                     sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    rc = 0;
done:
    sqlite3_finalize(st);
    return rc;
}

int tld_store_inspect_preds_put(tld_store *s, int64_t job, int64_t step, int ema, int n, const void *const *tokens,
                               const void *const *top5, int64_t time_ms, char *err, size_t errlen) {
    preds_arg a = {job, step, time_ms, ema ? 1 : 0, n, tokens, top5};
    return tld_store_write_exec(s, preds_fn, &a, err, errlen);
}

typedef struct {
    int64_t job, step;
} trunc_arg;

static int trunc_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    trunc_arg *t = a;
    sqlite3_stmt *st = NULL;
    if (prep(db, "DELETE FROM inspect_preds WHERE job_id = ?1 AND step > ?2", &st, err, errlen) != 0) return -1;
    sqlite3_bind_int64(st, 1, t->job);
    sqlite3_bind_int64(st, 2, t->step);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    if (rc) snprintf(err, errlen, "cannot drop inspection records: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

int tld_store_inspect_truncate(tld_store *s, int64_t job, int64_t step, char *err, size_t errlen) {
    trunc_arg a = {job, step};
    return tld_store_write_exec(s, trunc_fn, &a, err, errlen);
}

/* ------------------------------------------------------------------ reads */

int tld_store_inspect_set_get(tld_store *s, int64_t job, tld_inspect_set_row *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    sqlite3_stmt *st = NULL;
    if (!db || prep(db, "SELECT size, grid, view, num_classes, labels_json FROM inspect_sets WHERE job_id = ?1", &st,
                    err, errlen) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    int r = sqlite3_step(st), rc = -1;
    if (r == SQLITE_ROW) {
        out->size = sqlite3_column_int(st, 0);
        out->grid = sqlite3_column_int(st, 1);
        out->view = sqlite3_column_int(st, 2);
        out->num_classes = sqlite3_column_int(st, 3);
        const unsigned char *l = sqlite3_column_text(st, 4);
        out->labels_json = strdup(l ? (const char *)l : "[]");
        rc = out->labels_json ? 0 : -1;
        if (rc) snprintf(err, errlen, "out of memory");
    } else if (r == SQLITE_DONE) {
        snprintf(err, errlen, "not found");
    } else {
        snprintf(err, errlen, "cannot read the inspection set: %s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return rc;
}

int tld_store_inspect_samples(tld_store *s, int64_t job, tld_inspect_sample_info *out, int max, int *n, char *err,
                             size_t errlen) {
    *n = 0;
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    sqlite3_stmt *st = NULL;
    if (!db || prep(db,
                    "SELECT k, split, path, label, target_kind FROM inspect_samples WHERE job_id = ?1 "
                    "ORDER BY k LIMIT ?2",
                    &st, err, errlen) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, max);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        tld_inspect_sample_info *o = &out[(*n)++];
        o->k = sqlite3_column_int(st, 0);
        snprintf(o->split, sizeof o->split, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(o->path, sizeof o->path, "%s", (const char *)sqlite3_column_text(st, 2));
        o->label = sqlite3_column_int(st, 3);
        snprintf(o->target_kind, sizeof o->target_kind, "%s", (const char *)sqlite3_column_text(st, 4));
    }
    int rc = r == SQLITE_DONE ? 0 : -1;
    if (rc) snprintf(err, errlen, "cannot list inspection samples: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

int tld_store_inspect_steps(tld_store *s, int64_t job, int64_t *steps, int *emas, int max, int *n, char *err,
                           size_t errlen) {
    *n = 0;
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    sqlite3_stmt *st = NULL;
    /* the newest max pairs, returned oldest first */
    if (!db || prep(db,
                    "SELECT step, ema FROM (SELECT DISTINCT step, ema FROM inspect_preds WHERE job_id = ?1 "
                    "ORDER BY step DESC, ema DESC LIMIT ?2) ORDER BY step, ema",
                    &st, err, errlen) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, max);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        steps[*n] = sqlite3_column_int64(st, 0);
        emas[*n] = sqlite3_column_int(st, 1);
        (*n)++;
    }
    int rc = r == SQLITE_DONE ? 0 : -1;
    if (rc) snprintf(err, errlen, "cannot list inspection steps: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

static int blob_copy(sqlite3_stmt *st, int col, size_t want, void **data, size_t *len, char *err, size_t errlen) {
    const void *b = sqlite3_column_blob(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (want && n != want) {
        snprintf(err, errlen, "a stored token grid has %zu bytes instead of %zu", n, want);
        return -1;
    }
    *data = malloc(n ? n : 1);
    if (!*data) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (n) memcpy(*data, b, n);
    if (len) *len = n;
    return 0;
}

int tld_store_inspect_sample_blob(tld_store *s, int64_t job, int k, int what, void **data, size_t *len, char *err,
                                 size_t errlen) {
    *data = NULL;
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    sqlite3_stmt *st = NULL;
    const char *sql = what == 0 ? "SELECT s.image_jpeg, 0 FROM inspect_samples s WHERE s.job_id = ?1 AND s.k = ?2"
                                : "SELECT s.target, t.grid FROM inspect_samples s JOIN inspect_sets t USING (job_id) "
                                  "WHERE s.job_id = ?1 AND s.k = ?2";
    if (!db || prep(db, sql, &st, err, errlen) != 0) return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, k);
    int r = sqlite3_step(st), rc = -1;
    if (r == SQLITE_ROW)
        rc = blob_copy(st, 0, what == 0 ? 0 : TLD_GRID_BLOB_BYTES(sqlite3_column_int(st, 1)), data, len, err, errlen);
    else if (r == SQLITE_DONE)
        snprintf(err, errlen, "not found");
    else
        snprintf(err, errlen, "cannot read inspection sample %d: %s", k, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

int tld_store_inspect_pred_get(tld_store *s, int64_t job, int k, int64_t step, int ema, int64_t *step_out,
                              int *ema_out, void **tokens, void **top5, char *err, size_t errlen) {
    *tokens = *top5 = NULL;
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    sqlite3_stmt *st = NULL;
    /* ?3 < 0: any step (the latest); ?4 < 0: either (EMA first) */
    if (!db || prep(db,
                    "SELECT p.step, p.ema, p.tokens, p.top5, t.grid FROM inspect_preds p JOIN inspect_sets t "
                    "USING (job_id) WHERE p.job_id = ?1 AND p.k = ?2 AND (?3 < 0 OR p.step = ?3) "
                    "AND (?4 < 0 OR p.ema = ?4) ORDER BY p.step DESC, p.ema DESC LIMIT 1",
                    &st, err, errlen) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, k);
    sqlite3_bind_int64(st, 3, step);
    sqlite3_bind_int(st, 4, ema);
    int r = sqlite3_step(st), rc = -1;
    if (r == SQLITE_ROW) {
        *step_out = sqlite3_column_int64(st, 0);
        *ema_out = sqlite3_column_int(st, 1);
        int grid = sqlite3_column_int(st, 4);
        rc = blob_copy(st, 2, TLD_GRID_BLOB_BYTES(grid), tokens, NULL, err, errlen);
        if (rc == 0) rc = blob_copy(st, 3, TLD_TOP5_BLOB_BYTES, top5, NULL, err, errlen);
        if (rc != 0) {
            free(*tokens);
            free(*top5);
            *tokens = *top5 = NULL;
        }
    } else if (r == SQLITE_DONE) {
        snprintf(err, errlen, "not found");
    } else {
        snprintf(err, errlen, "cannot read inspection predictions: %s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return rc;
}
