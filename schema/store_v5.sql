-- schema/store_v5.sql: tokenlabd's store, migration step 5 (schema version 5):
-- the crash-loop guard counts attempts that made no progress (issue 17).
--
-- server/store/store.c applies this text after schema/store_v4.sql, in the open's
-- transaction; the build embeds it byte for byte (generated/store_schema.c; tests/server/test_store.c
-- checks the embedded copy).
--
-- A job is re-queued as a new attempt when the daemon restarts under it or a rank of a distributed job is
-- lost. Counting every attempt against max_attempts fails a long job that a preempted machine restarts a
-- few times although each attempt moved it on; what must be bounded is a job that crashes the daemon (or
-- dies) before it gets anywhere. So each new attempt records the job's progress mark when it begins (a
-- training job's last checkpoint step, -1 without one; an annotate job's saved parts), and the attempts in
-- a row that began from no further than the one before.
--
-- Invariants:
--   - stalled_attempts >= 0; it is 0 after an attempt that began past the previous attempt's mark;
--   - attempt_mark >= -1 (-1: no attempt has been re-queued yet, or none had a checkpoint).

ALTER TABLE jobs ADD COLUMN attempt_mark INTEGER NOT NULL DEFAULT -1 CHECK (attempt_mark >= -1);
ALTER TABLE jobs ADD COLUMN stalled_attempts INTEGER NOT NULL DEFAULT 0 CHECK (stalled_attempts >= 0);
