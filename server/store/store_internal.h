/*
 * store_internal.h: what store.c lends to the other store files
 * (store_models.c, store_inspect.c), which add tables of schema version 2
 * without growing store.c's statement tables. Private to the store.
 *
 * tld_store_write_exec runs fn on the writer thread, on the writer connection,
 * inside a savepoint of the current batch's transaction (a failure of fn
 * rolls back only what fn did), and returns once the batch has committed: fn
 * may write only through db and must not block. tld_store_read_db returns this
 * thread's read connection (query_only, opened on first use).
 */
#ifndef TLD_STORE_INTERNAL_H
#define TLD_STORE_INTERNAL_H

#include <sqlite3.h>
#include <stddef.h>

#include "store/store.h"

typedef int (*tld_store_write_fn)(sqlite3 *db, void *arg, char *err, size_t errlen);

int tld_store_write_exec(tld_store *s, tld_store_write_fn fn, void *arg, char *err, size_t errlen);
sqlite3 *tld_store_read_db(tld_store *s, char *err, size_t errlen);

#endif
