/*
 * mpi_job.h: how the daemon runs a distributed training job: it launches
 * mpirun on the operator's hostfile and follows it.
 *
 * mpi_job.c owns the daemon's MPI settings (tld_mpi: the hostfile, the
 * operator's extra mpirun arguments, the paths of mpirun and of this
 * tokenlabd, fixed at start) and the child processes of one attempt: the
 * host probes and the mpirun of the job, each in its own process group,
 * started with fork and execv from an argument vector (never a shell),
 * with stdin from /dev/null, no other inherited descriptor, and SIGTERM
 * when the thread that started it dies. A child is always reaped before
 * the call that started it returns; a child that does not stop is killed
 * (bounded waits, see the constants in mpi_job.c).
 *
 * One attempt (tld_mpi_run): `mpirun -np N --hostfile FILE --bind-to none
 * [--allow-run-as-root] [--mpi-arg ...] TOKENLABD run SPEC --out DIR
 * --events [--init-source-path FILE]`; its stdout carries the event lines
 * of run_events.h, each handed to the caller's hooks, its stderr lines go
 * to hooks->on_log. hooks->should_stop is polled: when it answers 1, mpirun
 * gets SIGUSR1 (it forwards it to every rank, which finish their step,
 * checkpoint and exit 3), then SIGTERM, then its process group SIGKILL.
 *
 * Threads: tld_mpi_run and tld_mpi_probe run on the calling thread (a job's
 * worker thread, never the scheduler) and block until their children are
 * reaped; the struct is read-only after tld_mpi_init, so any number of
 * workers share it.
 */
#ifndef TLD_MPI_JOB_H
#define TLD_MPI_JOB_H

#include <limits.h>
#include <stddef.h>

#include "jobs/hostfile.h"
#include "tokenlab/train.h"

#define TLD_MPI_ARGS 32   /* --mpi-arg values at most */

typedef struct {
    char mpirun[PATH_MAX];    /* absolute path, found on PATH at start */
    char hostfile[PATH_MAX];  /* absolute path */
    tld_hostfile hosts;
    char args[TLD_MPI_ARGS][256];
    int nargs;
    char self[PATH_MAX];      /* this tokenlabd (/proc/self/exe) */
} tld_mpi;

/* Fills *m: loads the hostfile (tld_hostfile_load), finds mpirun on PATH and this executable. 0, or -1
 * with a message (serve exits 2). args: the --mpi-arg values, each < 256 bytes. */
int tld_mpi_init(tld_mpi *m, const char *hostfile, const char *const *args, int nargs, char *err, size_t errlen);

/* Which of the hostfile's hosts answer: `mpirun -np 1 --host H` (with the hostfile and the operator's
 * arguments) runs `hostname` on each host, all at once, each within a timeout. answering[k] is set for
 * m->hosts.host[k]. Returns the answering hosts' slot count; log (may be NULL) receives one line per host
 * that does not answer, with why. */
int tld_mpi_probe(const tld_mpi *m, int *answering, void (*log)(const char *line, void *u), void *u);

/* The world size of an attempt: the largest w <= requested and <= slots that divides micro_batches; 0 when
 * there is none (no slot). */
int tld_mpi_world_size(int requested, int slots, int micro_batches);

typedef struct {
    int ranks;
    const char *spec_path;    /* the spec file in the run folder */
    const char *run_dir;
    const char *init_source;  /* --init-source-path, or NULL */
} tld_mpi_launch;

/* Runs one attempt (see above). 1 when rank 0 sent its "end" event: *st and *res are the run's. 0 when
 * mpirun ended without one (a rank lost, mpirun killed, a launch error): res->reason DIST_ERROR and a
 * message with mpirun's exit status. -1 when mpirun could not be started (res->message says why). */
int tld_mpi_run(const tld_mpi *m, const tld_mpi_launch *l, const tl_train_hooks *hooks, tl_train_status *st,
                tl_train_result *res);

#endif
