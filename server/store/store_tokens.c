/*
 * store_tokens.c: the store's table of read-only API tokens (store.h,
 * schema/store_v6.sql: api_tokens), kept by their SHA-256 only.
 *
 * Owns nothing but the SQL: writes run on the store's writer thread through
 * tld_store_write_exec (awaited, each in its own savepoint); the lookup runs
 * on the calling thread's read connection with a cached statement, since
 * every request that presents a read token asks it (the HTTP event loops of
 * server/http/http.c). `tokenlabd token` (server/cmd/cmd_token.c) adds,
 * revokes and lists, from its own process: the daemon sees a change with its
 * next lookup, as SQLite's WAL makes a commit visible to the next read.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"
#include "tokenlab/base.h"

typedef struct {
    const char *name, *role;
    const uint8_t *hash;
    int64_t ms;
} token_arg;

static int add_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    const token_arg *t = a;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "INSERT INTO api_tokens (name, role, hash, created_ms) VALUES (?1, ?2, ?3, ?4)", -1,
                           &st, NULL) != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot prepare the token write: %s", sqlite3_errmsg(db));
        goto fail;
    }
    sqlite3_bind_text(st, 1, t->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, t->role, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, t->hash, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, t->ms);
    int r = sqlite3_step(st);
    if (r == SQLITE_CONSTRAINT && sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_UNIQUE &&
        strstr(sqlite3_errmsg(db), "api_tokens.name")) {
        tl_seterr(err, errlen, "a token named '%s' exists (revoke it first)", t->name);
        goto fail;
    }
    if (r == SQLITE_CONSTRAINT && sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_CHECK) {
        tl_seterr(err, errlen, "token name '%s' must be 1 to %d characters of A-Z a-z 0-9 . _ -", t->name,
                  TLD_TOKEN_NAME_MAX);
        goto fail;
    }
    if (r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot record the token '%s': %s", t->name, sqlite3_errmsg(db));
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_finalize(st);
    return rc;
}

int tld_store_token_add(tld_store *s, const char *name, const char *role, const uint8_t hash[32], int64_t created_ms,
                        char *err, size_t errlen) {
    token_arg a = {name, role, hash, created_ms};
    return tld_store_write_exec(s, add_fn, &a, err, errlen);
}

static int revoke_fn(sqlite3 *db, void *a, char *err, size_t errlen) {
    const token_arg *t = a;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "UPDATE api_tokens SET revoked_ms = max(?2, created_ms) WHERE name = ?1 AND "
                               "revoked_ms IS NULL", -1, &st, NULL) != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot prepare the token revocation: %s", sqlite3_errmsg(db));
        goto fail;
    }
    sqlite3_bind_text(st, 1, t->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, t->ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot revoke the token '%s': %s", t->name, sqlite3_errmsg(db));
        goto fail;
    }
    if (sqlite3_changes(db) == 0) {
        tl_seterr(err, errlen, "not found");
        goto fail;
    }
    /* the partial unique index keeps one valid token per name: an update touching two is impossible */
    if (TL_NEVER(sqlite3_changes(db) != 1)) {
        tl_seterr(err, errlen, "revoking '%s' changed %d rows", t->name, sqlite3_changes(db));
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_finalize(st);
    return rc;
}

int tld_store_token_revoke(tld_store *s, const char *name, int64_t when_ms, char *err, size_t errlen) {
    token_arg a = {name, NULL, NULL, when_ms};
    return tld_store_write_exec(s, revoke_fn, &a, err, errlen);
}

/* Fills *out from a row of (name, role, created_ms, revoked_ms-or-0). */
static void token_row(sqlite3_stmt *st, tld_token_row *out) {
    memset(out, 0, sizeof *out);
    tld_store_copy_col(out->name, sizeof out->name, st, 0);
    tld_store_copy_col(out->role, sizeof out->role, st, 1);
    out->created_ms = sqlite3_column_int64(st, 2);
    out->revoked_ms = sqlite3_column_int64(st, 3);
}

int tld_store_token_find(tld_store *s, const uint8_t hash[32], tld_token_row *out, char *err, size_t errlen) {
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *st = tld_store_rstmt(c, R_TOKEN_FIND, err, errlen);
    if (!st) return -1;
    sqlite3_bind_blob(st, 1, hash, 32, SQLITE_STATIC);
    int r = sqlite3_step(st), rc;
    if (r == SQLITE_ROW) {
        token_row(st, out);
        rc = 0;
    } else if (r == SQLITE_DONE) {
        rc = 1;
    } else {
        tl_seterr(err, errlen, "cannot look the token up: %s", sqlite3_errmsg(c->db));
        rc = -1;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int tld_store_token_list(tld_store *s, tld_token_row *out, int cap, int *n, char *err, size_t errlen) {
    *n = 0;
    sqlite3 *db = tld_store_read_db(s, err, errlen);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT name, role, created_ms, coalesce(revoked_ms, 0) FROM api_tokens ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK) {
        tl_seterr(err, errlen, "cannot prepare the token list: %s", sqlite3_errmsg(db));
        return -1;
    }
    int r = SQLITE_DONE, rc = 0;
    while (*n < cap && (r = sqlite3_step(st)) == SQLITE_ROW) token_row(st, &out[(*n)++]);
    if (*n < cap && r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot list the tokens: %s", sqlite3_errmsg(db));
        rc = -1;
    }
    sqlite3_finalize(st);
    return rc;
}
