-- schema/store_v4.sql: tokenlabd's store, migration step 4 (schema version 4):
-- the ranks of distributed training jobs (issue 16).
--
-- server/store/store.c applies this text after schema/store_v3.sql, in the open's
-- transaction; the build embeds it byte for byte (generated/store_schema.c; tests/server/test_store.c
-- checks the embedded copy).
--
-- One row per training job whose spec asks for "distributed": {"ranks": N}, written by the job's worker
-- (server/jobs/jobs.c): at the start of each attempt (the ranks chosen after probing the hosts), when the
-- ranks report their hosts (the "ranks" event of `tokenlabd run --events`), and after each step (the
-- latest images/s of each rank and the gradient sum's seconds). What the spec asked is in jobs.spec_json;
-- this is what runs.
--
-- Invariants:
--   - the row belongs to its job and goes with it (ON DELETE CASCADE);
--   - the ranks that run are at least 1 and at most the ranks asked for (a job runs on fewer when fewer
--     hosts answer, never on more);
--   - hosts (one per rank, in rank order, or empty until the ranks report) and the per-rank images/s (one
--     per rank, or empty before the first step) are JSON arrays.

CREATE TABLE job_dist (
    job_id          INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    ranks_requested INTEGER NOT NULL CHECK (ranks_requested BETWEEN 1 AND 256),
    ranks           INTEGER NOT NULL CHECK (ranks >= 1 AND ranks <= ranks_requested),
    hosts_json      TEXT    NOT NULL DEFAULT '[]'
                    CHECK (json_valid(hosts_json) AND json_type(hosts_json) = 'array'),
    rank_img_per_s  TEXT    NOT NULL DEFAULT '[]'                -- JSON array, the latest step's
                    CHECK (json_valid(rank_img_per_s) AND json_type(rank_img_per_s) = 'array'),
    comm_seconds    REAL,                                        -- the latest step's, NULL before one
    time_ms         INTEGER NOT NULL                             -- of the last change
);
