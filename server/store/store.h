/*
 * store.h: tokenlabd's SQLite store of jobs, their metrics, logs and
 * checkpoints, registered models, token-inspection records and where
 * fine-tuned jobs started, the ranks of distributed jobs and the hashes of
 * read-only API tokens (schema in schema/store.sql and store_v2.sql to
 * store_v6.sql, versioned; migrations
 * applied on open).
 *
 * store.c owns the database file and its connections (store_writer.c the
 * writer thread, one file per table the rest): one writer connection
 * driven by a single writer thread that applies queued writes in batched
 * transactions (metric points and log lines are queued and return at once;
 * job creation and state changes wait for their commit so the caller can
 * answer the client truthfully), and one read connection per calling thread
 * (thread-local, opened on first use). WAL mode, synchronous=NORMAL, a busy
 * timeout. Invariants that must never break (a job's state machine, no
 * metric point twice for (job, name, step)) are enforced by the schema and
 * checked on every write; a broken one is reported, never ignored.
 *
 * All functions are thread-safe. Errors return -1 with a message.
 */
#ifndef TLD_STORE_H
#define TLD_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct tld_store tld_store;

typedef enum {
    TLD_JOB_QUEUED = 0,
    TLD_JOB_RUNNING,
    TLD_JOB_CANCELLING,
    TLD_JOB_SUCCEEDED,
    TLD_JOB_FAILED,
    TLD_JOB_CANCELLED,
    TLD_JOB_NSTATES
} tld_job_state;

const char *tld_job_state_name(tld_job_state s);          /* "QUEUED", ... */
int tld_job_state_parse(const char *name, tld_job_state *out);
int tld_job_state_final(tld_job_state s);                 /* SUCCEEDED, FAILED, CANCELLED */
/* 1 when the state machine (schema/store.sql, trigger jobs_state_machine) lets a job go from `from` to
 * `to`, else 0. The daemon's scheduler asks only for transitions it allows (an invariant it checks). */
int tld_job_transition_allowed(tld_job_state from, tld_job_state to);

typedef struct {
    int64_t id;
    char name[128];
    char *spec_json;          /* as submitted, verbatim (malloc'd; tld_job_free) */
    tld_job_state state;
    char state_reason[32];    /* USER_CANCEL, NAN_LOSS, DATA_ERROR, DAEMON_RESTART, ... or "" */
    char state_message[512];
    int64_t created_ms, started_ms, ended_ms; /* 0 when not yet */
    int attempt;              /* 1 for the first run, +1 per recovery */
    int64_t epoch, step, total_steps;
    double eta_seconds;       /* -1 unknown */
    char idempotency_key[128];
    char run_dir[1024];
    int64_t attempt_mark;     /* the progress mark the latest re-queued attempt began from, -1 none */
    int stalled_attempts;     /* re-queued attempts in a row that began from no further than the one before */
} tld_job;

void tld_job_free(tld_job *j);  /* frees spec_json; the struct is the caller's */

/* Opens (creating and migrating) the database at path. */
tld_store *tld_store_open(const char *path, char *err, size_t errlen);
void tld_store_close(tld_store *s);   /* flushes queued writes first */
int tld_store_schema_version(tld_store *s);

/* ---- jobs ---- */
/* Creates a QUEUED job. With an idempotency key that already names a job,
 * returns that job's id and sets *existed = 1 instead. */
int tld_store_job_create(tld_store *s, const char *name, const char *spec_json, const char *idempotency_key,
                        int64_t *id, int *existed, char *err, size_t errlen);
int tld_store_job_get(tld_store *s, int64_t id, tld_job *out, char *err, size_t errlen); /* -1 + "not found" */
/* Newest first. state_filter < 0 = any. Returns up to limit jobs with id < before_id (0 = from the newest);
 * *n receives the count; out is an array of limit jobs (free each with tld_job_free). */
int tld_store_job_list(tld_store *s, int state_filter, int64_t before_id, int limit, tld_job *out, int *n, char *err,
                      size_t errlen);
/* Moves a job from one of the states in `from` (bitmask of 1<<state) to `to`, atomically; -1 with
 * "invalid transition" if the job is in another state. Sets started/ended times as the state implies. */
int tld_store_job_transition(tld_store *s, int64_t id, unsigned from_mask, tld_job_state to, const char *reason,
                            const char *message, char *err, size_t errlen);
int tld_store_job_set_progress(tld_store *s, int64_t id, int64_t epoch, int64_t step, int64_t total_steps,
                              double eta_seconds); /* queued, not awaited */
int tld_store_job_set_run_dir(tld_store *s, int64_t id, const char *run_dir, char *err, size_t errlen);
/* attempt += 1, beginning from progress mark `mark` (a training job's checkpoint step, an annotate job's saved
 * parts; -1 none): stalled_attempts becomes 0 when mark is past attempt_mark, else one more; attempt_mark
 * the larger of the two. */
int tld_store_job_begin_attempt(tld_store *s, int64_t id, int64_t mark, char *err, size_t errlen);
int tld_store_job_delete(tld_store *s, int64_t id, char *err, size_t errlen); /* job, metrics, logs, checkpoints */
/* Queue position (1 = next) of a QUEUED job, 0 otherwise. */
int tld_store_job_queue_position(tld_store *s, int64_t id);
/* Counts of jobs by state (for /metrics). */
int tld_store_job_counts(tld_store *s, int64_t counts[TLD_JOB_NSTATES]);

/* ---- metrics ---- */
/* Queued write; a point at a (job, name, step) already stored is replaced, never duplicated. */
int tld_store_metric_add(tld_store *s, int64_t job, const char *name, int64_t step, double value, int64_t time_ms);
/* Drops every point with step > step (recovery from a checkpoint). Awaited. */
int tld_store_metric_truncate(tld_store *s, int64_t job, int64_t step, char *err, size_t errlen);

typedef struct {
    char name[64];
    double last_value;
    int64_t last_step;
    int64_t count;
} tld_metric_summary;
int tld_store_metric_names(tld_store *s, int64_t job, tld_metric_summary *out, int max, int *n, char *err,
                          size_t errlen);

typedef struct {
    int64_t step;        /* raw: the point's step; bucket: its first step */
    int64_t time_ms;     /* raw: the point's time; bucket: the last point's time */
    double last, min, max;
    int64_t count;       /* 1 for raw points */
} tld_metric_point;
/* Points of one series with start_step <= step <= end_step (end_step < 0: no bound). When there are at
 * most max_points points they come back raw; otherwise in at most max_points buckets of equal step
 * width, each with its last, min, max and count (so spikes stay visible). *bucketed tells which.
 * Must answer 1000 buckets over 1,000,000 points in under 50 ms (an index on (job, name, step)). */
int tld_store_metric_query(tld_store *s, int64_t job, const char *name, int64_t start_step, int64_t end_step,
                          int max_points, tld_metric_point *out, int *n, int *bucketed, char *err, size_t errlen);

/* ---- logs: one text stream per job, addressed by byte offset ---- */
int tld_store_log_append(tld_store *s, int64_t job, const char *line); /* queued; a '\n' is added */
/* Up to limit bytes from offset; *next receives the offset after them, *eof whether nothing follows. */
int tld_store_log_read(tld_store *s, int64_t job, int64_t offset, size_t limit, char *buf, size_t *len, int64_t *next,
                      int *eof, char *err, size_t errlen);

/* ---- checkpoints ---- */
typedef struct {
    int64_t step;
    char kind[16];       /* "last" or "best" */
    char path[1024];
    int64_t bytes;
    int64_t time_ms;
    double top1;         /* -1 unknown */
} tld_checkpoint_row;
int tld_store_checkpoint_add(tld_store *s, int64_t job, const tld_checkpoint_row *row, char *err, size_t errlen);
int tld_store_checkpoint_list(tld_store *s, int64_t job, tld_checkpoint_row *out, int max, int *n, char *err,
                             size_t errlen);

/* ---- state history (every transition, oldest first; the first is the creation as QUEUED) ---- */
typedef struct {
    int64_t time_ms;
    char from[16];       /* "" for the creation */
    char to[16];
    char reason[32];
    char message[512];
} tld_state_change;
int tld_store_job_history(tld_store *s, int64_t job, tld_state_change *out, int max, int *n, char *err, size_t errlen);

/* ---- registered models (store_models.c; schema version 2) ---- */
typedef struct {
    char name[72];
    char source_kind[8];      /* "job" or "upload" */
    int64_t job_id;           /* 0 for uploads */
    char checkpoint[24];      /* "best", "last", a step, or "" for uploads */
    int64_t step;             /* the checkpoint's training step, 0 unknown */
    int ema;                  /* 1: the weights are the job's EMA weights */
    char path[1024];          /* the model's own weights file */
    int64_t bytes;
    char *labels_json;        /* JSON array of K strings (malloc'd; tld_model_row_free) */
    double crop_pct;
    int max_batch, max_delay_ms, max_queue;
    int64_t created_ms;
} tld_model_row;

void tld_model_row_free(tld_model_row *m);   /* frees labels_json; the struct is the caller's */
/* Inserts a model; with replace, an existing one of the same name is replaced (*existed = 1). Without
 * replace, a taken name fails with "exists". Awaited. */
int tld_store_model_put(tld_store *s, const tld_model_row *m, int replace, int *existed, char *err, size_t errlen);
int tld_store_model_get(tld_store *s, const char *name, tld_model_row *out, char *err, size_t errlen); /* "not found" */
/* Every model, newest first, into a malloc'd array (*out; free each row, then the array). */
int tld_store_model_list(tld_store *s, tld_model_row **out, int *n, char *err, size_t errlen);
/* Updates labels (when labels_json is not NULL) and the batching settings. "not found" when absent. */
int tld_store_model_update(tld_store *s, const char *name, const char *labels_json, int max_batch, int max_delay_ms,
                          int max_queue, char *err, size_t errlen);
int tld_store_model_delete(tld_store *s, const char *name, char *err, size_t errlen); /* "not found" */

/* ---- token inspection of training jobs (store_inspect.c; schema version 2) ---- */
/* A token grid blob: g*g*3 int32 class indices, then g*g*3 float32 probabilities (little-endian). */
#define TLD_GRID_BLOB_BYTES(g) ((size_t)(g) * (size_t)(g) * 3u * 8u)
#define TLD_TOP5_BLOB_BYTES 40u

typedef struct {
    int size, grid, view, num_classes;
    char *labels_json;        /* malloc'd; tld_inspect_set_row_free */
} tld_inspect_set_row;
void tld_inspect_set_row_free(tld_inspect_set_row *r);

typedef struct {
    int k;
    char split[8];            /* "val" or "train" */
    char path[1024];
    int label;
    char target_kind[16];     /* "class" or "labelmap" */
} tld_inspect_sample_info;

/* Writes a job's set once: the set row and every sample (image JPEG, target grid). A set already
 * stored for the job is left as it is (a resumed job writes the same set again). Awaited. */
int tld_store_inspect_set_put(tld_store *s, int64_t job, const tld_inspect_set_row *set, int n,
                             const tld_inspect_sample_info *samples, const void *const *jpegs, const size_t *jpeg_lens,
                             const void *const *targets, char *err, size_t errlen);
/* Records the predictions of one evaluation: n samples' token grids and top-5 blobs (replacing any
 * recorded at the same step and ema). Awaited. */
int tld_store_inspect_preds_put(tld_store *s, int64_t job, int64_t step, int ema, int n, const void *const *tokens,
                               const void *const *top5, int64_t time_ms, char *err, size_t errlen);
/* Drops predictions recorded after step (recovery from a checkpoint). Awaited. */
int tld_store_inspect_truncate(tld_store *s, int64_t job, int64_t step, char *err, size_t errlen);

/* 0 and *out, or -1 with "not found" when the job has no set (yet). */
int tld_store_inspect_set_get(tld_store *s, int64_t job, tld_inspect_set_row *out, char *err, size_t errlen);
int tld_store_inspect_samples(tld_store *s, int64_t job, tld_inspect_sample_info *out, int max, int *n, char *err,
                             size_t errlen);
/* The (step, ema) pairs recorded, oldest first. */
int tld_store_inspect_steps(tld_store *s, int64_t job, int64_t *steps, int *emas, int max, int *n, char *err,
                           size_t errlen);
/* A sample's image JPEG (what = 0) or target grid (what = 1), malloc'd. -1 "not found". */
int tld_store_inspect_sample_blob(tld_store *s, int64_t job, int k, int what, void **data, size_t *len, char *err,
                                 size_t errlen);
/* The predictions of sample k at (step, ema); step < 0: the latest step recorded, preferring ema = 1 when
 * ema < 0. step_out and ema_out receive what was found. Blobs malloc'd. -1 "not found". */
int tld_store_inspect_pred_get(tld_store *s, int64_t job, int k, int64_t step, int ema, int64_t *step_out,
                              int *ema_out, void **tokens, void **top5, char *err, size_t errlen);

/* ---- where a fine-tuned job started (store_inits.c; schema version 3, schema/store_v3.sql) ---- */
typedef struct {
    char source_kind[8];      /* "model" or "job" */
    char source_model[72];    /* the model's name, "" for a job */
    int64_t source_job;       /* the job's id, 0 for a model */
    char checkpoint[24];      /* "best", "last" or a step; "" for a model */
    int64_t step;             /* the source's training step, -1 unknown */
    int ema;                  /* 1: its EMA weights were loaded */
    char head[8];             /* "reinit", "keep" or "match" */
    int classes_matched;      /* head "match": target classes found in the source */
    int pos_from, pos_to;     /* token grid sides when the position embedding was resampled, else 0 and 0 */
    char weights[1024];       /* the file that was loaded */
    int64_t time_ms;
} tld_job_init_row;
/* Records (or replaces) what job started from. Awaited; -1 with a message (the schema's checks). */
int tld_store_job_init_put(tld_store *s, int64_t job, const tld_job_init_row *r, char *err, size_t errlen);
/* 0 and *out, or -1 with "not found" when the job has no such record (not fine-tuned, or not started yet). */
int tld_store_job_init_get(tld_store *s, int64_t job, tld_job_init_row *out, char *err, size_t errlen);

/* ---- the ranks of distributed jobs (store_dist.c; schema version 4, schema/store_v4.sql) ---- */
typedef struct {
    int ranks_requested;      /* the spec's distributed.ranks */
    int ranks;                /* the ranks of the current (or last) attempt */
    char *hosts_json;         /* JSON array, each rank's host in rank order ([] until reported); malloc'd */
    char *rank_img_per_s_json;/* JSON array, each rank's images/s at the latest step ([] before one); malloc'd */
    int has_comm_seconds;     /* comm_seconds is set (a step was reported) */
    double comm_seconds;      /* the latest step's gradient sum, seconds */
    int64_t time_ms;          /* of the last change */
} tld_job_dist_row;
/* Records (or replaces: a new attempt, the hosts reported) the ranks a job runs on; the rates start empty.
 * Awaited; -1 with a message (the schema's checks: 1 <= ranks <= ranks_requested <= 256, hosts an array). */
int tld_store_job_dist_put(tld_store *s, int64_t job, int ranks_requested, int ranks, const char *hosts_json,
                           char *err, size_t errlen);
/* Sets the latest step's per-rank images/s (a JSON array) and gradient-sum seconds of a job that has a row
 * (no row: nothing changes, 0). Awaited. */
int tld_store_job_dist_rates(tld_store *s, int64_t job, const char *rank_img_per_s_json, double comm_seconds,
                             char *err, size_t errlen);
/* 0 and *out (free with tld_job_dist_free), or -1 with "not found" when the job is not distributed. */
int tld_store_job_dist_get(tld_store *s, int64_t job, tld_job_dist_row *out, char *err, size_t errlen);
void tld_job_dist_free(tld_job_dist_row *r);

/* ---- read-only API tokens (store_tokens.c; schema version 6, schema/store_v6.sql) ---- */
#define TLD_TOKEN_NAME_MAX 64
typedef struct {
    char name[TLD_TOKEN_NAME_MAX + 1];
    char role[16];            /* "read" */
    int64_t created_ms;
    int64_t revoked_ms;       /* 0 while the token is valid */
} tld_token_row;
/* Records a token by its 32-byte SHA-256 (the token itself is never stored). Awaited. -1 with a message when
 * a valid token already has the name ("exists"), or the name breaks the schema's rule (1 to 64 of
 * A-Z a-z 0-9 . _ -). */
int tld_store_token_add(tld_store *s, const char *name, const char *role, const uint8_t hash[32], int64_t created_ms,
                        char *err, size_t errlen);
/* Revokes the valid token of that name at when_ms. Awaited. -1 with "not found" when no valid token has it. */
int tld_store_token_revoke(tld_store *s, const char *name, int64_t when_ms, char *err, size_t errlen);
/* Looks a token up by its hash on the caller's read connection: 0 and *out (revoked_ms tells a revoked one),
 * 1 when no token has that hash, -1 on a database error. */
int tld_store_token_find(tld_store *s, const uint8_t hash[32], tld_token_row *out, char *err, size_t errlen);
/* Every token, valid and revoked, oldest first: up to cap rows into out, *n the count. */
int tld_store_token_list(tld_store *s, tld_token_row *out, int cap, int *n, char *err, size_t errlen);

/* Waits until every queued write so far is committed. */
int tld_store_flush(tld_store *s);

/* ---- a full disk (see store_writer.c) ----
 * An awaited write that fails because the store's disk is full (SQLITE_FULL) returns -1 with errno ENOSPC
 * (EIO for other failures), and nothing already committed is touched. */
/* 1 while the store's disk is full: a write batch met SQLITE_FULL and none has committed rows since. */
int tld_store_full(tld_store *s);
/* How many times the store's writes have met a full disk since it opened (a run of failing batches counts once). */
unsigned long long tld_store_full_events(tld_store *s);
/* Waits until every write queued so far is applied, then: 0 when none of job's metric points queued so far was
 * lost; else ENOSPC (lost to a full disk) or EIO, and the loss is forgotten once reported. A caller that gets an
 * error must not let anything stand for those points (a checkpoint): it drops the job's points after its last
 * checkpoint and redoes them. */
int tld_store_metrics_durable(tld_store *s, int64_t job);
/* Forgets job's lost metric points not reported yet (an attempt ended: its points past its last checkpoint are
 * dropped when it resumes). */
void tld_store_metrics_forget(tld_store *s, int64_t job);
/* The bytes the store's reserve (<database>.reserve, room kept for its own writes on a full disk, released when one
 * meets SQLITE_FULL and made again once there is room) lacks now: 0 while it is held. Whoever waits for room on the
 * state folder's file system waits for this much more. */
int64_t tld_store_reserve_missing(tld_store *s);

#endif
