-- schema/store_v2.sql: tokenlabd's store, migration step 2 (schema version 2):
-- registered models and the token inspection of training jobs.
--
-- server/store/store.c applies this text after schema/store.sql, in the open's
-- transaction; the build embeds it byte for byte (generated/store_schema.c; tests/server/test_store.c
-- checks the embedded copy).
--
-- Invariants:
--   - a model's name is its identity (primary key), 1..64 characters of
--     [A-Za-z0-9._-] starting with a letter or digit;
--   - a model made from a job names the job and its checkpoint; an uploaded
--     one names neither (models_source); a model outlives its job (no
--     foreign key: its weights are its own file under <state>/models/);
--   - batching settings stay in the ranges the API accepts;
--   - inspection samples, and the predictions recorded for them, belong to a
--     job and go with it (ON DELETE CASCADE); a prediction names a sample
--     that exists (foreign key), at most once per (step, ema).
--
-- Token grids are BLOBs of g*g*3 little-endian int32 class indices followed by
-- g*g*3 float32 probabilities (each token's top 3, best first); store.c checks
-- their length against the grid before writing.

CREATE TABLE models (
    name         TEXT    PRIMARY KEY
                 CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._-]*'
                        AND substr(name, 1, 1) NOT IN ('.', '_', '-')),
    source_kind  TEXT    NOT NULL CHECK (source_kind IN ('job', 'upload')),
    job_id       INTEGER,
    checkpoint   TEXT    NOT NULL DEFAULT '',   -- 'best', 'last' or a step; '' for uploads
    step         INTEGER NOT NULL DEFAULT 0,
    ema          INTEGER NOT NULL DEFAULT 0 CHECK (ema IN (0, 1)),
    path         TEXT    NOT NULL,              -- the model's own weights file
    bytes        INTEGER NOT NULL CHECK (bytes > 0),
    labels_json  TEXT    NOT NULL CHECK (json_valid(labels_json) AND json_type(labels_json) = 'array'),
    crop_pct     REAL    NOT NULL CHECK (crop_pct > 0 AND crop_pct <= 1),
    max_batch    INTEGER NOT NULL CHECK (max_batch BETWEEN 1 AND 64),
    max_delay_ms INTEGER NOT NULL CHECK (max_delay_ms BETWEEN 0 AND 1000),
    max_queue    INTEGER NOT NULL CHECK (max_queue BETWEEN 1 AND 4096),
    created_ms   INTEGER NOT NULL,
    CONSTRAINT models_source CHECK ((source_kind = 'job' AND job_id IS NOT NULL AND checkpoint <> '')
                                 OR (source_kind = 'upload' AND job_id IS NULL AND checkpoint = ''))
);

-- The inspection set of a job: its sizes and class names (written once, at the first evaluation).
CREATE TABLE inspect_sets (
    job_id      INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    size        INTEGER NOT NULL CHECK (size > 0),      -- model input side S
    grid        INTEGER NOT NULL CHECK (grid > 0),      -- token grid side g
    view        INTEGER NOT NULL CHECK (view > 0),      -- display image side V
    num_classes INTEGER NOT NULL CHECK (num_classes > 0),
    labels_json TEXT    NOT NULL CHECK (json_valid(labels_json) AND json_type(labels_json) = 'array')
);

-- One row per inspection sample: what the model sees and what its tokens are taught.
CREATE TABLE inspect_samples (
    job_id      INTEGER NOT NULL REFERENCES inspect_sets (job_id) ON DELETE CASCADE,
    k           INTEGER NOT NULL CHECK (k >= 0),
    split       TEXT    NOT NULL CHECK (split IN ('val', 'train')),
    path        TEXT    NOT NULL,
    label       INTEGER NOT NULL CHECK (label >= 0),
    target_kind TEXT    NOT NULL CHECK (target_kind IN ('class', 'labelmap')),
    image_jpeg  BLOB    NOT NULL,                       -- V x V
    target      BLOB    NOT NULL,                       -- token grid (see above)
    PRIMARY KEY (job_id, k)
) WITHOUT ROWID;

-- What the model predicted for each sample at each evaluation (raw and EMA weights).
CREATE TABLE inspect_preds (
    job_id  INTEGER NOT NULL,
    step    INTEGER NOT NULL CHECK (step >= 0),
    ema     INTEGER NOT NULL CHECK (ema IN (0, 1)),
    k       INTEGER NOT NULL,
    tokens  BLOB    NOT NULL,                           -- token grid (see above)
    top5    BLOB    NOT NULL,                           -- 5 int32 classes, then 5 float32 probabilities
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, step, ema, k),
    FOREIGN KEY (job_id, k) REFERENCES inspect_samples (job_id, k) ON DELETE CASCADE
) WITHOUT ROWID;
