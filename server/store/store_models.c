/*
 * store_models.c: the store's table of registered models (store.h,
 * schema/store_v2.sql).
 *
 * Owns nothing but the SQL: writes run on the store's writer thread through
 * tld_store_write_exec (awaited, each in its own savepoint), reads on the
 * calling thread's read connection. The schema enforces the invariants (name
 * rule, source consistency, setting ranges); a violation comes back as an
 * error, never silently. Any thread.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"

#define MODEL_COLS                                                                                              \
    "name, source_kind, coalesce(job_id, 0), checkpoint, step, ema, path, bytes, labels_json, crop_pct, "      \
    "max_batch, max_delay_ms, max_queue, created_ms"

void tld_model_row_free(tld_model_row *m) {
    if (!m) return;
    free(m->labels_json);
    m->labels_json = NULL;
}

static void copy_text(char *dst, size_t n, sqlite3_stmt *st, int col) {
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(dst, n, "%s", t ? (const char *)t : "");
}

static int read_row(sqlite3_stmt *st, tld_model_row *m, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    copy_text(m->name, sizeof m->name, st, 0);
    copy_text(m->source_kind, sizeof m->source_kind, st, 1);
    m->job_id = sqlite3_column_int64(st, 2);
    copy_text(m->checkpoint, sizeof m->checkpoint, st, 3);
    m->step = sqlite3_column_int64(st, 4);
    m->ema = sqlite3_column_int(st, 5);
    copy_text(m->path, sizeof m->path, st, 6);
    m->bytes = sqlite3_column_int64(st, 7);
    const unsigned char *labels = sqlite3_column_text(st, 8);
    m->labels_json = strdup(labels ? (const char *)labels : "[]");
    m->crop_pct = sqlite3_column_double(st, 9);
    m->max_batch = sqlite3_column_int(st, 10);
    m->max_delay_ms = sqlite3_column_int(st, 11);
    m->max_queue = sqlite3_column_int(st, 12);
    m->created_ms = sqlite3_column_int64(st, 13);
    if (!m->labels_json) {
        snprintf(err, errlen, "out of memory reading model %s", m->name);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ writes */

typedef struct {
    const tld_model_row *m;
    int replace;
    int existed;
} put_arg;

static int put_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    put_arg *p = a;
    const tld_model_row *m = p->m;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM models WHERE name = ?1", -1, &st, NULL) != SQLITE_OK) goto fail_prepare;
    sqlite3_bind_text(st, 1, m->name, -1, SQLITE_STATIC);
    p->existed = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    st = NULL;
    if (p->existed && !p->replace) {
        snprintf(err, errlen, "exists");
        return -1;
    }
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO models (name, source_kind, job_id, checkpoint, step, ema, path, bytes, "
                           "labels_json, crop_pct, max_batch, max_delay_ms, max_queue, created_ms) VALUES "
                           "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail_prepare;
    sqlite3_bind_text(st, 1, m->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->source_kind, -1, SQLITE_STATIC);
    if (strcmp(m->source_kind, "job") == 0)
        sqlite3_bind_int64(st, 3, m->job_id);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_text(st, 4, m->checkpoint, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, m->step);
    sqlite3_bind_int(st, 6, m->ema ? 1 : 0);
    sqlite3_bind_text(st, 7, m->path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, m->bytes);
    sqlite3_bind_text(st, 9, m->labels_json ? m->labels_json : "[]", -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 10, m->crop_pct);
    sqlite3_bind_int(st, 11, m->max_batch);
    sqlite3_bind_int(st, 12, m->max_delay_ms);
    sqlite3_bind_int(st, 13, m->max_queue);
    sqlite3_bind_int64(st, 14, m->created_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        snprintf(err, errlen, "cannot record model %s: %s", m->name, sqlite3_errmsg(db));
        goto done;
    }
    rc = 0;
    goto done;
fail_prepare:
    snprintf(err, errlen, "cannot prepare the model write: %s", sqlite3_errmsg(db));
done:
    sqlite3_finalize(st);
    return rc;
}

int tld_store_model_put(tld_store *s, const tld_model_row *m, int replace, int *existed, char *err, size_t errlen) {
    put_arg a = {m, replace, 0};
    int rc = tld_store_write_exec(s, put_fn, &a, err, errlen);
    if (existed) *existed = a.existed;
    return rc;
}

typedef struct {
    const char *name, *labels_json;
    int max_batch, max_delay_ms, max_queue;
    int del;
} upd_arg;

static int upd_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    upd_arg *u = a;
    sqlite3_stmt *st = NULL;
    const char *sql = u->del ? "DELETE FROM models WHERE name = ?1"
                             : "UPDATE models SET labels_json = coalesce(?2, labels_json), max_batch = ?3, "
                               "max_delay_ms = ?4, max_queue = ?5 WHERE name = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the model update: %s", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_text(st, 1, u->name, -1, SQLITE_STATIC);
    if (!u->del) {
        if (u->labels_json)
            sqlite3_bind_text(st, 2, u->labels_json, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 2);
        sqlite3_bind_int(st, 3, u->max_batch);
        sqlite3_bind_int(st, 4, u->max_delay_ms);
        sqlite3_bind_int(st, 5, u->max_queue);
    }
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    if (rc != 0)
        snprintf(err, errlen, "cannot update model %s: %s", u->name, sqlite3_errmsg(db));
    else if (sqlite3_changes(db) == 0) {
        snprintf(err, errlen, "not found");
        rc = -1;
    }
    sqlite3_finalize(st);
    return rc;
}

int tld_store_model_update(tld_store *s, const char *name, const char *labels_json, int max_batch, int max_delay_ms,
                          int max_queue, char *err, size_t errlen) {
    upd_arg a = {name, labels_json, max_batch, max_delay_ms, max_queue, 0};
    return tld_store_write_exec(s, upd_fn, &a, err, errlen);
}

int tld_store_model_delete(tld_store *s, const char *name, char *err, size_t errlen) {
    upd_arg a = {name, NULL, 0, 0, 0, 1};
    return tld_store_write_exec(s, upd_fn, &a, err, errlen);
}

/* ------------------------------------------------------------------ reads */

int tld_store_model_get(tld_store *s, const char *name, tld_model_row *out, char *err, size_t errlen) {
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT " MODEL_COLS " FROM models WHERE name = ?1", -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the model read: %s", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int r = sqlite3_step(st), rc = -1;
    if (r == SQLITE_ROW)
        rc = read_row(st, out, err, errlen);
    else if (r == SQLITE_DONE)
        snprintf(err, errlen, "not found");
    else
        snprintf(err, errlen, "cannot read model %s: %s", name, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

int tld_store_model_list(tld_store *s, tld_model_row **out, int *n, char *err, size_t errlen) {
    *out = NULL;
    *n = 0;
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT " MODEL_COLS " FROM models ORDER BY created_ms DESC, name", -1, &st, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the model list: %s", sqlite3_errmsg(db));
        return -1;
    }
    tld_model_row *rows = NULL;
    int cap = 0, cnt = 0, r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            int ncap = cap ? cap * 2 : 16;
            tld_model_row *g = realloc(rows, sizeof *rows * (size_t)ncap);
            if (!g) {
                snprintf(err, errlen, "out of memory listing models");
                goto fail;
            }
            rows = g;
            cap = ncap;
        }
        if (read_row(st, &rows[cnt], err, errlen) != 0) goto fail;
        cnt++;
    }
    if (r != SQLITE_DONE) {
        snprintf(err, errlen, "cannot list models: %s", sqlite3_errmsg(db));
        goto fail;
    }
    sqlite3_finalize(st);
    *out = rows;
    *n = cnt;
    return 0;
fail:
    for (int i = 0; i < cnt; i++) tld_model_row_free(&rows[i]);
    free(rows);
    sqlite3_finalize(st);
    return -1;
}
