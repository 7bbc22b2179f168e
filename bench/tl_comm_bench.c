/*
 * tl_comm_bench.c: the bandwidth of the exact gradient sum across ranks
 * (tl_comm_sum_tree, engine/dist/comm.c) for gradient-sized buffers. Run
 * under mpirun; rank 0 prints one line (or JSON object) per buffer.
 *
 *   mpirun -np P tl-comm-bench [--preset lvvit_t,lvvit_s,lvvit_m] [--mb 16,64] [--reps N] [--json]
 *
 * --preset: the gradient vector of each preset's training model (its exact
 * float count, from the engine's own parameter block: 1000 classes, as the
 * preset). --mb: buffers of that many MB (10^6 bytes). Each buffer is summed
 * once untimed (and the result checked), then N times, each time after all
 * ranks have met (a one-double sum); a repetition's time is the slowest
 * rank's. Printed: the median and the fastest repetition, the algorithm
 * bandwidth bytes / time and the bus bandwidth 2(P-1)/P x bytes / time (what
 * each rank sends and receives per second with recursive halving and
 * doubling). GB are 10^9 bytes.
 *
 * One thread per rank (the MPI thread). Owns its buffers; exits non-zero
 * when a sum fails or gives a wrong result.
 */
#include "model/micro.h"
#include "tokenlab/base.h"
#include "tokenlab/comm.h"
#include "tokenlab/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[64];
    size_t n; /* floats */
} buffer_spec;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The gradient vector's float count of a preset's training model (1000 classes). 0 with a message. */
static size_t preset_floats(const char *preset, char *err, size_t errlen) {
    tl_config c;
    if (tl_config_preset(preset, &c) != 0) {
        tl_seterr(err, errlen, "unknown preset '%s'", preset);
        return 0;
    }
    tl_model *m = tl_model_new_blank(&c, err, errlen);
    size_t n = 0;
    if (m && !tl_model_grad_vector(m, &n)) tl_seterr(err, errlen, "%s has no gradient vector", preset);
    tl_model_free(m);
    return n;
}

/* Times the sum of n floats: fills, sums once and checks, then reps timed sums. 0, or -1 with a message. */
static int measure(tl_comm *comm, const buffer_spec *b, int reps, int json, char *err, size_t errlen) {
    int P = tl_comm_size(comm), rank = tl_comm_rank(comm), rc = -1;
    float *buf = malloc(sizeof(float) * (b->n ? b->n : 1));
    double *t = malloc(sizeof(double) * (size_t)reps), *all = malloc(sizeof(double) * (size_t)P);
    if (!buf || !t || !all) {
        tl_seterr(err, errlen, "out of memory for %zu floats", b->n);
        goto fail;
    }
    for (size_t i = 0; i < b->n; i++) buf[i] = (float)(i % 7 + (size_t)rank);
    if (tl_comm_sum_tree(comm, buf, b->n) != 0) {
        tl_seterr(err, errlen, "tl_comm_sum_tree failed");
        goto fail;
    }
    for (size_t i = 0; i < b->n; i += 1 + b->n / 1000) { /* small integers: the sum is exact in any order */
        float want = (float)((double)(i % 7) * P + (double)P * (P - 1) / 2);
        if (buf[i] != want) {
            tl_seterr(err, errlen, "wrong sum at %zu: %g, not %g", i, (double)buf[i], (double)want);
            goto fail;
        }
    }
    for (int k = 0; k < reps; k++) {
        double meet = 0;
        if (tl_comm_sum_f64(comm, &meet, 1) != 0) goto mpi_fail;
        double t0 = tl_clock_mono_s();
        if (tl_comm_sum_tree(comm, buf, b->n) != 0) goto mpi_fail;
        double dt = tl_clock_mono_s() - t0;
        if (tl_comm_allgather(comm, &dt, all, sizeof dt) != 0) goto mpi_fail;
        t[k] = 0;
        for (int r = 0; r < P; r++) t[k] = all[r] > t[k] ? all[r] : t[k];
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    double bytes = 4.0 * (double)b->n, bus = 2.0 * (P - 1) / P * bytes;
    if (rank == 0 && json)
        printf("{\"buffer\":\"%s\",\"floats\":%zu,\"bytes\":%.0f,\"ranks\":%d,\"reps\":%d,\"median_s\":%.6f,"
               "\"min_s\":%.6f,\"algbw_gb_s\":%.4f,\"busbw_gb_s\":%.4f}\n",
               b->name, b->n, bytes, P, reps, med, t[0], bytes / med / 1e9, bus / med / 1e9);
    else if (rank == 0)
        printf("  %-18s %11zu floats (%7.1f MB): median %8.4f s, fastest %8.4f s over %d; "
               "algorithm bandwidth %6.3f GB/s, bus bandwidth %6.3f GB/s\n",
               b->name, b->n, bytes / 1e6, med, t[0], reps, bytes / med / 1e9, bus / med / 1e9);
    fflush(stdout);
    rc = 0;
    goto fail;
mpi_fail:
    tl_seterr(err, errlen, "a collective failed");
fail:
    free(buf);
    free(t);
    free(all);
    return rc;
}

/* Appends the comma-separated items of list to specs (presets when mb is 0, else MB sizes). -1 with a
 * message on a bad item or too many. */
static int parse_list(const char *list, int mb, buffer_spec *specs, int *count, int cap, char *err, size_t errlen) {
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", list);
    for (char *save = NULL, *it = strtok_r(tmp, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
        if (*count >= cap) return tl_seterr(err, errlen, "at most %d buffers", cap);
        buffer_spec *b = &specs[*count];
        if (mb) {
            double v = strtod(it, NULL);
            if (!(v > 0)) return tl_seterr(err, errlen, "--mb: not a size: %s", it);
            b->n = (size_t)(v * 1e6 / 4);
            snprintf(b->name, sizeof b->name, "%g MB", v);
        } else {
            if (!(b->n = preset_floats(it, err, errlen))) return -1;
            snprintf(b->name, sizeof b->name, "%s gradient", it);
        }
        (*count)++;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *presets = NULL, *mbs = NULL;
    int reps = 5, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--preset") && v) presets = argv[++i];
        else if (!strcmp(a, "--mb") && v) mbs = argv[++i];
        else if (!strcmp(a, "--reps") && v) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: mpirun -np P tl-comm-bench [--preset NAME,...] [--mb MB,...] [--reps N] [--json]\n");
            return 2;
        }
    }
    if (reps < 1) {
        fprintf(stderr, "tl-comm-bench: --reps must be >= 1\n");
        return 2;
    }
    if (!presets && !mbs) presets = "lvvit_t,lvvit_s,lvvit_m";
    char err[TL_ERR_LEN];
    buffer_spec specs[16];
    int count = 0;
    if ((presets && parse_list(presets, 0, specs, &count, 16, err, sizeof err) != 0) ||
        (mbs && parse_list(mbs, 1, specs, &count, 16, err, sizeof err) != 0)) {
        fprintf(stderr, "tl-comm-bench: %s\n", err);
        return 2;
    }
    if (!tl_comm_launched_by_mpirun()) {
        fprintf(stderr, "tl-comm-bench: start it under mpirun (mpirun -np 2 tl-comm-bench ...)\n");
        return 2;
    }
    tl_comm *comm = tl_comm_mpi_init(&argc, &argv, err, sizeof err);
    if (!comm) {
        fprintf(stderr, "tl-comm-bench: %s\n", err);
        return 1;
    }
    int P = tl_comm_size(comm);
    char host[64] = {0}, *hosts = malloc(sizeof host * (size_t)P);
    snprintf(host, sizeof host, "%s", tl_comm_host(comm));
    if (!hosts || tl_comm_allgather(comm, host, hosts, sizeof host) != 0) {
        fprintf(stderr, "tl-comm-bench: cannot gather the host names\n");
        tl_comm_abort(comm, 1);
    }
    if (tl_comm_rank(comm) == 0 && !json) {
        printf("tl_comm_sum_tree on %d ranks (hosts", P);
        for (int r = 0; r < P; r++) printf("%s%s", r ? ", " : " ", hosts + sizeof host * (size_t)r);
        printf(")\n");
    }
    for (int i = 0; i < count; i++) {
        if (measure(comm, &specs[i], reps, json, err, sizeof err) != 0) {
            fprintf(stderr, "tl-comm-bench: rank %d: %s: %s\n", tl_comm_rank(comm), specs[i].name, err);
            tl_comm_abort(comm, 1); /* the other ranks would wait in the next sum */
        }
    }
    free(hosts);
    tl_comm_finalize(comm);
    return 0;
}
