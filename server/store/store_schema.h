/*
 * store_schema.h: the embedded text of schema/store.sql and store_v2.sql to store_v6.sql,
 * generated at build time from the files (server/CMakeLists.txt,
 * tld_embed_text, into the build folder's generated/store_schema.c), used by
 * store.c as migration steps 1 to 6 and by tests/server/test_store.c to
 * check that the embedded bytes equal the files. Private to the store.
 * Constant data: any thread may read it.
 */
#ifndef TLD_STORE_SCHEMA_H
#define TLD_STORE_SCHEMA_H

#include <stddef.h>

extern const char tld_store_schema_v1[];   /* schema/store.sql */
extern const size_t tld_store_schema_v1_len; /* bytes, without the final NUL */
extern const char tld_store_schema_v2[];   /* schema/store_v2.sql */
extern const size_t tld_store_schema_v2_len;
extern const char tld_store_schema_v3[];   /* schema/store_v3.sql */
extern const size_t tld_store_schema_v3_len;
extern const char tld_store_schema_v4[];   /* schema/store_v4.sql */
extern const size_t tld_store_schema_v4_len;
extern const char tld_store_schema_v5[];   /* schema/store_v5.sql */
extern const size_t tld_store_schema_v5_len;
extern const char tld_store_schema_v6[];   /* schema/store_v6.sql */
extern const size_t tld_store_schema_v6_len;

#endif
