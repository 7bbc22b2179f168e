/*
 * store_schema.h: the embedded text of schema/store.sql and store_v2.sql
 * (store_schema.c), used by store.c as migration steps 1 and 2 and by tests/server/test_store.c to check
 * that it equals the file. Private to the store.
 */
#ifndef TLD_STORE_SCHEMA_H
#define TLD_STORE_SCHEMA_H

#include <stddef.h>

extern const char tld_store_schema_v1[];
extern const size_t tld_store_schema_v1_len; /* bytes, without the final NUL */
extern const char tld_store_schema_v2[];   /* schema/store_v2.sql */
extern const size_t tld_store_schema_v2_len;

#endif
