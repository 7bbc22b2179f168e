-- schema/store_v6.sql: tokenlabd's store, migration step 6 (schema version 6):
-- read-only API tokens, stored hashed.
--
-- server/store/store.c applies this text after schema/store_v5.sql, in the open's
-- transaction; the build embeds it byte for byte (generated/store_schema.c; tests/server/test_store.c
-- checks the embedded copy).
--
-- The admin token (TOKENLAB_TOKEN or <state>/token) is not in this table. `tokenlabd token add --read NAME`
-- makes a token, prints it once and keeps only its SHA-256 here; a request's bearer token is hashed and
-- looked up by that hash. A revoked token keeps its row (who had access, and when it ended), and its name
-- may be given to a new token.
--
-- Invariants:
--   - hash is 32 bytes and unique (a token is 32 random bytes: two tokens never share a hash);
--   - role is 'read' (the only role besides the admin token's);
--   - at most one token that is not revoked has a given name;
--   - revoked_ms, when set, is at or after created_ms.

CREATE TABLE api_tokens (
  id          INTEGER PRIMARY KEY,
  name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._-]*'),
  role        TEXT    NOT NULL CHECK (role IN ('read')),
  hash        BLOB    NOT NULL UNIQUE CHECK (typeof(hash) = 'blob' AND length(hash) = 32),
  created_ms  INTEGER NOT NULL,
  revoked_ms  INTEGER CHECK (revoked_ms IS NULL OR revoked_ms >= created_ms)
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_ms IS NULL;
