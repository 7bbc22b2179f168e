-- schema/store.sql: tokenlabd's SQLite store (server/store/store.h), schema version 1.
--
-- server/store/store.c applies this text as migration step 1, in the transaction
-- that creates a new store file; the build embeds it byte for byte (generated/store_schema.c;
-- tests/server/test_store.c checks the embedded copy). A later version adds
-- a migration step in store.c and leaves this file as it is.
--
-- Invariants kept here rather than in C, so no writer can break them:
--   - a job's state is one of six and changes only along the state machine
--     (jobs_state_machine); a job is born QUEUED (jobs_born_queued);
--   - every state change is recorded in state_transitions (triggers);
--   - no metric point twice for (job, name, step) (primary key);
--   - a job's log is append-only and gapless: each chunk starts where the
--     previous one ends (logs_append_only, logs_no_update);
--   - deleting a job deletes everything that belongs to it (ON DELETE CASCADE;
--     store.c turns foreign_keys on for every connection).
--
-- Sizes: byte offsets count bytes of UTF-8 text (length(CAST(text AS BLOB)),
-- as length(text) counts characters). Times are milliseconds since the Unix
-- epoch. SQLite stores a NaN as NULL: a NULL metric value is a NaN.

CREATE TABLE schema_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL CHECK (version >= 1)
);
INSERT INTO schema_version (id, version) VALUES (1, 1);

-- One row per submitted job. spec_json is the job spec exactly as submitted.
-- state_changed_ms is the time of the last state change (the history trigger
-- records it). idempotency_key is NULL when the client sent none.
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL,
    spec_json        TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'QUEUED'
                     CHECK (state IN ('QUEUED', 'RUNNING', 'CANCELLING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    state_reason     TEXT    NOT NULL DEFAULT '',
    state_message    TEXT    NOT NULL DEFAULT '',
    state_changed_ms INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    started_ms       INTEGER NOT NULL DEFAULT 0,
    ended_ms         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    epoch            INTEGER NOT NULL DEFAULT 0,
    step             INTEGER NOT NULL DEFAULT 0,
    total_steps      INTEGER NOT NULL DEFAULT 0,
    eta_seconds      REAL    NOT NULL DEFAULT -1,
    idempotency_key  TEXT    UNIQUE,
    run_dir          TEXT    NOT NULL DEFAULT ''
);
-- Queue order (QUEUED jobs by id), counts by state, lists filtered by state.
CREATE INDEX jobs_by_state ON jobs (state, id);

-- State history, shown by the dashboard. from_state is NULL for the creation.
CREATE TABLE state_transitions (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    time_ms    INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    reason     TEXT    NOT NULL DEFAULT '',
    message    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX state_transitions_by_job ON state_transitions (job_id, id);

CREATE TRIGGER jobs_born_queued BEFORE INSERT ON jobs
WHEN NEW.state <> 'QUEUED'
BEGIN
    SELECT RAISE(ABORT, 'a new job must be QUEUED');
END;

CREATE TRIGGER jobs_created AFTER INSERT ON jobs
BEGIN
    INSERT INTO state_transitions (job_id, time_ms, from_state, to_state, reason, message)
    VALUES (NEW.id, NEW.created_ms, NULL, NEW.state, NEW.state_reason, NEW.state_message);
END;

-- QUEUED -> RUNNING | CANCELLED | FAILED
-- RUNNING -> SUCCEEDED | FAILED | CANCELLING | QUEUED (re-queued on shutdown or recovery)
-- CANCELLING -> CANCELLED | FAILED | SUCCEEDED | QUEUED
-- nothing out of SUCCEEDED, FAILED, CANCELLED; no state to itself.
CREATE TRIGGER jobs_state_machine BEFORE UPDATE OF state ON jobs
WHEN NOT ((OLD.state = 'QUEUED' AND NEW.state IN ('RUNNING', 'CANCELLED', 'FAILED'))
       OR (OLD.state = 'RUNNING' AND NEW.state IN ('SUCCEEDED', 'FAILED', 'CANCELLING', 'QUEUED'))
       OR (OLD.state = 'CANCELLING' AND NEW.state IN ('CANCELLED', 'FAILED', 'SUCCEEDED', 'QUEUED')))
BEGIN
    SELECT RAISE(ABORT, 'invalid state transition');
END;

CREATE TRIGGER jobs_state_history AFTER UPDATE OF state ON jobs
BEGIN
    INSERT INTO state_transitions (job_id, time_ms, from_state, to_state, reason, message)
    VALUES (NEW.id, NEW.state_changed_ms, OLD.state, NEW.state, NEW.state_reason, NEW.state_message);
END;

-- Metric series: one point per (job, name, step).
CREATE TABLE metrics (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name    TEXT    NOT NULL,
    step    INTEGER NOT NULL CHECK (step >= 0),
    value   REAL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, name, step)
) WITHOUT ROWID;

-- Roll-ups of each series in blocks of 64 steps (block = step / 64), written
-- by store.c in the same transaction as the points they summarise, so that a
-- bucketed query over a long series reads whole blocks instead of every
-- point. A block row exists exactly when the block holds points. The width
-- 64 is part of this schema version (changing it takes a migration that
-- rebuilds the table).
CREATE TABLE metric_blocks (
    job_id       INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    block        INTEGER NOT NULL CHECK (block >= 0),
    n_points     INTEGER NOT NULL CHECK (n_points >= 1 AND n_points <= 64),
    min_value    REAL,
    max_value    REAL,
    last_step    INTEGER NOT NULL,
    last_value   REAL,
    last_time_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, name, block),
    CHECK (last_step / 64 = block)
) WITHOUT ROWID;

-- A job's log: one text stream in chunks, each holding the bytes
-- [byte_offset, byte_offset + its length). Reading from an offset is one
-- lookup of the last chunk starting at or before it, then a range scan.
CREATE TABLE logs (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    byte_offset INTEGER NOT NULL CHECK (byte_offset >= 0),
    text        TEXT    NOT NULL CHECK (text <> ''),
    PRIMARY KEY (job_id, byte_offset)
) WITHOUT ROWID;

CREATE TRIGGER logs_append_only BEFORE INSERT ON logs
WHEN NEW.byte_offset IS NOT coalesce((SELECT l.byte_offset + length(CAST(l.text AS BLOB)) FROM logs AS l
                                      WHERE l.job_id = NEW.job_id ORDER BY l.byte_offset DESC LIMIT 1), 0)
BEGIN
    SELECT RAISE(ABORT, 'log chunk does not start at the end of the log');
END;

CREATE TRIGGER logs_no_update BEFORE UPDATE ON logs
BEGIN
    SELECT RAISE(ABORT, 'logs are append-only');
END;

-- Checkpoint files written for a job ("last": the newest resumable state,
-- "best": the best top-1 so far). top1 is -1 when unknown.
CREATE TABLE checkpoints (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind    TEXT    NOT NULL CHECK (kind IN ('last', 'best')),
    step    INTEGER NOT NULL CHECK (step >= 0),
    path    TEXT    NOT NULL CHECK (path <> ''),
    bytes   INTEGER NOT NULL CHECK (bytes >= 0),
    time_ms INTEGER NOT NULL,
    top1    REAL    NOT NULL DEFAULT -1,
    PRIMARY KEY (job_id, kind, step)
) WITHOUT ROWID;
