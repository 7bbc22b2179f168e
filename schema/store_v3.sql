-- schema/store_v3.sql: tokenlabd's store, migration step 3 (schema version 3):
-- where a fine-tuned training job started from (model.init, issue 15).
--
-- server/store/store.c applies this text after schema/store_v2.sql, in the open's
-- transaction; the build embeds it byte for byte (generated/store_schema.c; tests/server/test_store.c
-- checks the embedded copy).
--
-- One row per training job that started from trained weights, written by the job's worker when the
-- engine reports what it loaded (the on_init hook: a fresh start, not a resume; a job that starts over
-- replaces its row). What the spec asked is in jobs.spec_json; this is what was actually loaded.
--
-- Invariants:
--   - the row belongs to its job and goes with it (ON DELETE CASCADE);
--   - the source is exactly one of a registered model (by name) or a training job and its checkpoint
--     ('best', 'last' or a step); neither is a foreign key: a source may be deleted later, and the
--     lineage then ends at it (server/api/lineage.c);
--   - the head mode is one of the engine's (tl_head_mode); a position-embedding resize records both
--     grids or neither.

CREATE TABLE job_inits (
    job_id          INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    source_kind     TEXT    NOT NULL CHECK (source_kind IN ('model', 'job')),
    source_model    TEXT,                                    -- a model name, when source_kind = 'model'
    source_job_id   INTEGER CHECK (source_job_id > 0),       -- when source_kind = 'job'
    checkpoint      TEXT    NOT NULL DEFAULT '',             -- 'best', 'last' or a step; '' for a model
    step            INTEGER NOT NULL CHECK (step >= -1),     -- the source's training step, -1 unknown
    ema             INTEGER NOT NULL CHECK (ema IN (0, 1)),  -- its EMA weights were loaded
    head            TEXT    NOT NULL CHECK (head IN ('reinit', 'keep', 'match')),
    classes_matched INTEGER NOT NULL DEFAULT 0 CHECK (classes_matched >= 0),
    pos_from        INTEGER CHECK (pos_from > 0),            -- token grid side of the source
    pos_to          INTEGER CHECK (pos_to > 0),              -- and of the job, when resampled
    weights         TEXT    NOT NULL,                        -- the file that was loaded
    time_ms         INTEGER NOT NULL,
    CONSTRAINT job_inits_source CHECK (
        (source_kind = 'model' AND source_model IS NOT NULL AND source_job_id IS NULL AND checkpoint = '')
        OR (source_kind = 'job' AND source_job_id IS NOT NULL AND source_model IS NULL AND checkpoint <> '')),
    CONSTRAINT job_inits_pos CHECK ((pos_from IS NULL) = (pos_to IS NULL))
);
