/*
 * comm.c: the ranks of a distributed job on Open MPI (see comm.h).
 *
 * Owns the world communicator's state (rank, size, host name) and the
 * scratch buffer of the tree sum, which grows to the largest sum asked for
 * and lives until tl_comm_finalize. Used by the one thread that initialised
 * MPI (MPI_THREAD_FUNNELED): the training thread of `tokenlabd run`.
 *
 * The tree sum is built on point-to-point calls (MPI_Sendrecv, MPI_Send,
 * MPI_Recv) because MPI_Allreduce's grouping of the additions depends on the
 * world size and on the algorithm Open MPI picks; here it is fixed (comm.h).
 * Compiled without TL_HAVE_MPI, every entry point exists and initialisation
 * refuses with a message, so a build without Open MPI still links.
 */
#include "tokenlab/comm.h"

#include "tokenlab/base.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int tl_comm_launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL;
}

#ifdef TL_HAVE_MPI
#include <mpi.h>

struct tl_comm {
    int rank, size;
    char host[MPI_MAX_PROCESSOR_NAME + 1];
    float *tmp;       /* scratch of the tree sum */
    size_t tmp_cap;   /* floats */
};

int tl_comm_available(void) { return 1; }

tl_comm *tl_comm_mpi_init(int *argc, char ***argv, char *err, size_t errlen) {
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        tl_seterr(err, errlen, "MPI_Init_thread failed");
        return NULL;
    }
    tl_comm *c = calloc(1, sizeof *c);
    if (!c) {
        tl_seterr(err, errlen, "out of memory");
        return NULL;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    int len = 0;
    MPI_Get_processor_name(c->host, &len);
    c->host[len < 0 ? 0 : len] = 0;
    return c;
}

void tl_comm_finalize(tl_comm *c) {
    if (!c) return;
    free(c->tmp);
    free(c);
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

void tl_comm_abort(tl_comm *c, int status) {
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, status);
}

int tl_comm_rank(const tl_comm *c) { return c ? c->rank : 0; }
int tl_comm_size(const tl_comm *c) { return c ? c->size : 1; }
const char *tl_comm_host(const tl_comm *c) { return c ? c->host : ""; }

/* The scratch buffer holds at least n floats. 0, or -1 when memory runs out. */
static int scratch(tl_comm *c, size_t n) {
    if (n <= c->tmp_cap) return 0;
    float *p = realloc(c->tmp, sizeof(float) * (n ? n : 1));
    if (!p) return -1;
    c->tmp = p;
    c->tmp_cap = n;
    return 0;
}

static void add(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* Power-of-two world: recursive halving over distances 1, 2, 4, ... (a rank and its partner hold the sums
 * of adjacent, equal rank blocks, so each addition is a node of the tree over rank order; a + b and b + a
 * have the same bits), then recursive doubling in the reverse order to share the parts. */
static int sum_halving(tl_comm *c, float *buf, size_t n) {
    int P = c->size, r = c->rank, levels = 0;
    size_t lo = 0, hi = n, seg_lo[32], seg_hi[32];
    if (scratch(c, n / 2 + 1) != 0) return -1;
    for (int d = 1; d < P; d <<= 1, levels++) {
        int partner = r ^ d;
        size_t mid = lo + (hi - lo) / 2;
        size_t klo = (r & d) ? mid : lo, khi = (r & d) ? hi : mid; /* kept and summed here */
        size_t slo = (r & d) ? lo : mid, shi = (r & d) ? mid : hi; /* summed by the partner */
        seg_lo[levels] = lo;
        seg_hi[levels] = hi;
        if (MPI_Sendrecv(buf + slo, (int)(shi - slo), MPI_FLOAT, partner, 1, c->tmp, (int)(khi - klo), MPI_FLOAT,
                         partner, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return -1;
        add(buf + klo, c->tmp, khi - klo);
        lo = klo;
        hi = khi;
    }
    for (int k = levels - 1, d = P >> 1; k >= 0; k--, d >>= 1) {
        int partner = r ^ d;
        size_t plo = seg_lo[k], phi = seg_hi[k], mid = plo + (phi - plo) / 2;
        size_t olo = (r & d) ? plo : mid, ohi = (r & d) ? mid : phi; /* the partner's finished part */
        if (MPI_Sendrecv(buf + lo, (int)(hi - lo), MPI_FLOAT, partner, 2, buf + olo, (int)(ohi - olo), MPI_FLOAT,
                         partner, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return -1;
        lo = plo;
        hi = phi;
    }
    return 0;
}

/* Any world size: node [lo,hi) of the halving tree over ranks is summed by rank lo, which adds what rank
 * mid = lo + (hi-lo)/2 summed over [mid,hi). Each rank walks only the nodes holding it, children first, so
 * a receive always waits on a send that comes. */
static int reduce_node(tl_comm *c, float *buf, size_t n, int lo, int hi) {
    if (hi - lo < 2) return 0;
    int mid = lo + (hi - lo) / 2, r = c->rank;
    if (r < mid) {
        if (reduce_node(c, buf, n, lo, mid) != 0) return -1;
        if (r != lo) return 0;
        if (MPI_Recv(c->tmp, (int)n, MPI_FLOAT, mid, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE) != MPI_SUCCESS) return -1;
        add(buf, c->tmp, n);
        return 0;
    }
    if (reduce_node(c, buf, n, mid, hi) != 0) return -1;
    if (r == mid && MPI_Send(buf, (int)n, MPI_FLOAT, lo, 3, MPI_COMM_WORLD) != MPI_SUCCESS) return -1;
    return 0;
}

int tl_comm_sum_tree(tl_comm *c, float *buf, size_t n) {
    if (!c || c->size == 1 || n == 0) return 0;
    if (n > (size_t)INT_MAX) return -1;
    if ((c->size & (c->size - 1)) == 0 && n >= (size_t)c->size) return sum_halving(c, buf, n);
    if (scratch(c, n) != 0) return -1;
    if (reduce_node(c, buf, n, 0, c->size) != 0) return -1;
    return tl_comm_bcast(c, buf, sizeof(float) * n, 0);
}

int tl_comm_sum_f64(tl_comm *c, double *v, int n) {
    if (!c || c->size == 1) return 0;
    return MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
}

int tl_comm_bcast(tl_comm *c, void *buf, size_t bytes, int root) {
    if (!c || c->size == 1) return 0;
    const size_t piece = (size_t)1 << 29;
    for (size_t off = 0; off < bytes; off += piece) {
        size_t k = bytes - off < piece ? bytes - off : piece;
        if (MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, MPI_COMM_WORLD) != MPI_SUCCESS) return -1;
    }
    return 0;
}

int tl_comm_allgather(tl_comm *c, const void *mine, void *all, size_t bytes) {
    if (!c || c->size == 1) {
        memcpy(all, mine, bytes);
        return 0;
    }
    if (bytes > (size_t)INT_MAX) return -1;
    return MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD) == MPI_SUCCESS ? 0
                                                                                                             : -1;
}

#else /* built without Open MPI */

struct tl_comm {
    int unused;
};

int tl_comm_available(void) { return 0; }
tl_comm *tl_comm_mpi_init(int *argc, char ***argv, char *err, size_t errlen) {
    (void)argc;
    (void)argv;
    tl_seterr(err, errlen, "this build has no Open MPI (install libopenmpi-dev and rebuild)");
    return NULL;
}
void tl_comm_finalize(tl_comm *c) { (void)c; }
void tl_comm_abort(tl_comm *c, int status) {
    (void)c;
    _Exit(status);
}
/* No comm can exist without MPI: every query answers for one process. */
int tl_comm_rank(const tl_comm *c) { return (void)c, 0; }
int tl_comm_size(const tl_comm *c) { return (void)c, 1; }
const char *tl_comm_host(const tl_comm *c) { return (void)c, ""; }
int tl_comm_sum_tree(tl_comm *c, float *buf, size_t n) { return (void)c, (void)buf, (void)n, 0; }
int tl_comm_sum_f64(tl_comm *c, double *v, int n) { return (void)c, (void)v, (void)n, 0; }
int tl_comm_bcast(tl_comm *c, void *buf, size_t bytes, int root) { return (void)c, (void)buf, (void)bytes, (void)root, 0; }
int tl_comm_allgather(tl_comm *c, const void *mine, void *all, size_t bytes) {
    (void)c;
    memcpy(all, mine, bytes);
    return 0;
}
#endif
