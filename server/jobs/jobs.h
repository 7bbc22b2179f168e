/*
 * jobs.h: the daemon's job manager.
 *
 * jobs.c owns the scheduler thread and one worker thread per running job.
 * Jobs wait in a FIFO (the store's QUEUED jobs, oldest first); at most
 * max_running train at once, each with threads_per_job compute threads, so
 * BLAS never oversubscribes the cores (the engine calls OpenBLAS
 * single-threaded from its own pools). A worker runs tl_train_run and turns
 * its hooks into store writes (progress, metrics, logs, checkpoints) and bus
 * events. State changes always go through the store's checked transitions.
 *
 * Recovery (tld_jobs_new): a job left RUNNING or CANCELLING by a daemon that
 * died is re-queued as attempt+1 to resume from its last checkpoint, after
 * dropping the metric points past that checkpoint's step; one with no
 * checkpoint restarts from scratch. The crash-loop guard: a job whose last
 * max_attempts attempts in a row each began from no further than the one
 * before (no new checkpoint, or no new annotate part) is marked FAILED with
 * DAEMON_RESTART instead; attempts that made progress never count (store v5).
 * A CANCELLING job becomes CANCELLED.
 * Shutdown (tld_jobs_shutdown): running jobs finish their step, checkpoint and
 * return to QUEUED (DAEMON_SHUTDOWN), then the threads are joined.
 *
 * A full disk (jobs.c, docs/ROBUSTNESS.md): an attempt that ends with
 * DISK_FULL pauses its job (QUEUED, reason DISK_FULL, its points past its
 * last checkpoint dropped); the scheduler resumes it by itself once its file
 * systems have room again, with a backoff and without polling faster than
 * its tick. A state change the store cannot write for its own full disk is
 * tried again every few seconds.
 *
 * Distributed jobs ("distributed": {"ranks": N}, with cfg.mpi): the worker
 * probes the hostfile's hosts, launches mpirun (mpi_job.c) and turns the
 * event lines of `tokenlabd run --events` into the same hooks as an
 * in-process job; a cancel or shutdown asks the ranks to checkpoint and stop.
 * An attempt that ends without the job's end (a rank or host lost) re-queues
 * the job as attempt+1 (RANK_LOST) to resume from its checkpoint, as
 * recovery does, under the same crash-loop guard.
 *
 * Thread-safe: HTTP handlers call submit/cancel/delete from any thread.
 */
#ifndef TLD_JOBS_H
#define TLD_JOBS_H

#include "http/histogram.h"
#include <stddef.h>
#include <stdint.h>

#include "jobs/events.h"
#include "jobs/mpi_job.h"
#include "tokenlab/jobspec.h"
#include "store/store.h"

typedef struct {
    const char *state_dir;   /* runs/<id>/ live here */
    const char *data_root;   /* job specs name datasets relative to it */
    int max_running;         /* default 1 */
    int threads_per_job;     /* default: all cores / max_running */
    int max_attempts;        /* attempts in a row without progress before a job fails; default 3 */
    const tld_mpi *mpi;      /* distributed jobs (mpi_job.h), NULL: refused at submit; outlives the jobs */
} tld_jobs_cfg;

typedef struct tld_jobs tld_jobs;

tld_jobs *tld_jobs_new(const tld_jobs_cfg *cfg, tld_store *store, tld_events *events, char *err, size_t errlen);
/* Validates and queues a job. On a spec error fills *se and returns -1 with err "spec". With an
 * idempotency key already used, returns the existing job (*existed = 1). */
int tld_jobs_submit(tld_jobs *j, const char *spec_json, const char *idempotency_key, int64_t *id, int *existed,
                   tl_spec_error *se, char *err, size_t errlen);
/* QUEUED -> CANCELLED at once; RUNNING -> CANCELLING, then CANCELLED after the step ends and a checkpoint
 * is written. -1 "invalid transition" for a finished job, "not found" for none. */
int tld_jobs_cancel(tld_jobs *j, int64_t id, char *err, size_t errlen);
/* Deletes a finished job with its run folder; -1 "invalid transition" otherwise. */
int tld_jobs_delete(tld_jobs *j, int64_t id, char *err, size_t errlen);
int tld_jobs_running(tld_jobs *j);                 /* jobs training now */
double tld_jobs_images_per_second(tld_jobs *j);    /* summed over running jobs */
/* What the daemon knows of full disks (for /healthz and /metrics). */
typedef struct {
    int64_t state_free_bytes;       /* free space of the state folder's file system (tl_fs_free_bytes; -1 unknown) */
    int full;                       /* a job waits for room, or the store's last write met a full disk */
    int store_full;                 /* the store's last write batch met a full disk */
    int jobs_waiting;               /* QUEUED jobs paused for a full disk, and workers waiting to write a state */
    unsigned long long job_events;  /* attempts ended by a full disk since the daemon started */
    unsigned long long store_events;/* times the store's writes met a full disk since it opened */
} tld_jobs_disk_info;
void tld_jobs_disk(tld_jobs *j, tld_jobs_disk_info *out);
/* A copy of the training step time histogram, over every job since the daemon started. */
void tld_jobs_step_times(tld_jobs *j, tld_hist *out);
/* Stops the scheduler; running jobs checkpoint and go back to QUEUED. */
void tld_jobs_shutdown(tld_jobs *j);
void tld_jobs_free(tld_jobs *j);

#endif
