/*
 * comm.h: the ranks of a distributed training job (Open MPI), as the
 * training loop sees them.
 *
 * A job started by `mpirun -np N tokenlabd run ...` runs tl_train_run on N
 * processes, one per rank, each holding a tl_comm for the world. The engine
 * uses it for the exact gradient sum (the same bits on 1, 2 or 4 ranks; see
 * docs/DISTRIBUTED.md), the start-up agreement checks, the broadcast of the
 * initial state and the reductions of evaluation counts. Open MPI is the
 * transport and mpirun the launcher; a build without MPI compiles all of
 * this, and tl_comm_mpi_init then refuses with a message.
 *
 * Threads: a tl_comm is used by the one thread that created it (MPI is
 * initialised with MPI_THREAD_FUNNELED). Errors: functions that communicate
 * return 0 or -1; MPI's own error handler is MPI_ERRORS_ARE_FATAL, so a rank
 * that dies ends the whole job through mpirun instead of leaving the others
 * waiting.
 */
#ifndef TOKENLAB_COMM_H
#define TOKENLAB_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef struct tl_comm tl_comm;

/* 1 when this process was started by mpirun (Open MPI's environment is set), else 0. */
int tl_comm_launched_by_mpirun(void);
/* 1 when this build has Open MPI. */
int tl_comm_available(void);
/* Initialises MPI (once per process) and returns the world. NULL with a message when the build has no
 * MPI or MPI cannot start. */
tl_comm *tl_comm_mpi_init(int *argc, char ***argv, char *err, size_t errlen);
/* Finalises MPI and frees comm. NULL is accepted. */
void tl_comm_finalize(tl_comm *comm);
/* Ends every rank of the job at once (MPI_Abort) with the given exit status. */
void tl_comm_abort(tl_comm *comm, int status);

int tl_comm_rank(const tl_comm *comm);
int tl_comm_size(const tl_comm *comm);
/* This rank's host name (MPI_Get_processor_name). */
const char *tl_comm_host(const tl_comm *comm);

/* ---- collectives (every rank calls them in the same order) ---- */

/* The exact sum of buf (n floats) over the ranks, left on every rank. The ranks' values are added in one
 * fixed binary tree over rank order: rank pairs (0,1), (2,3), ... first, then pairs of pairs, so with a
 * power-of-two world the result has the same bits as summing the ranks' blocks in that tree on one process
 * (recursive halving for the sum, recursive doubling to share it: each rank sends and receives
 * 2(P-1)/P x n floats). Other world sizes use the halving tree over ranks [0,P) (reduce to rank 0, then
 * broadcast): exact and repeatable for that world size. */
int tl_comm_sum_tree(tl_comm *comm, float *buf, size_t n);
/* Sum of n doubles over the ranks, on every rank (MPI_Allreduce): counts and metrics. */
int tl_comm_sum_f64(tl_comm *comm, double *v, int n);
/* Root's bytes to every rank. Any size (sent in pieces under 1 GiB). */
int tl_comm_bcast(tl_comm *comm, void *buf, size_t bytes, int root);
/* Every rank's `bytes` bytes at mine, gathered in rank order into all (size x bytes) on every rank. */
int tl_comm_allgather(tl_comm *comm, const void *mine, void *all, size_t bytes);

#endif
