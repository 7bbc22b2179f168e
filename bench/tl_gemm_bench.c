/*
 * tl_gemm_bench.c: sgemm at the engine's own shapes, OpenBLAS against BLIS,
 * both loaded into this one process and timed round by round.
 *
 * Owns: its buffers, one tl_pool, and the BLIS handle it opens itself.
 * Threads: the main thread and the pool's workers (the engine's split); with
 * --lib-threads also the libraries' own threads.
 *
 * What is timed: every GEMM of one training step of a model, as the engine
 * issues it (engine/ops/linear.c, transformer.c, conv.c, model/forward.c and
 * backward.c): per block qkv, proj, fc1, fc2, each forward (Y = X W^T), input
 * gradient (dX = dY W) and weight gradient (dW += dY^T X); the six attention
 * products of each (image, head); the class and token heads; the stem's patch
 * projection and its im2col convolutions in chunks of 1024 output pixels (the
 * path CPUs without AVX-512 take). OpenBLAS is the engine's own (tl_sgemm
 * after tl_blas_init, with the engine's kernel choice); BLIS is Debian's
 * libblis.so.4 opened here with RTLD_LOCAL, its cblas_sgemm called
 * single-threaded.
 *
 * Threads: "1" is one thread; "2" is the engine's way, two pool threads each
 * calling single-threaded BLAS on its share (rows for forward and input
 * gradients, output features for weight gradients, whole calls for attention
 * and convolution chunks), with linear.c's rule for when a GEMM is split;
 * "2lib" (--lib-threads) is one call with the library's own two threads,
 * which the engine does not use.
 *
 * Each (shape, threads) is calibrated to at least --min-ms per measurement,
 * then measured --rounds times, the two libraries alternating ABBA so a
 * change in machine load hits both. A step's GEMM time is the sum over its
 * shapes of calls x time per call, per round; the printed ratio is BLIS's
 * speed over OpenBLAS's (above 1: BLIS is faster), median and range over the
 * rounds. Before timing, both libraries' results are compared on every shape.
 *
 * --clock cpu times with the process's CPU time instead of the wall clock: on
 * a machine shared with other work, time spent waiting for a core then does
 * not count (a pool thread spinning for its partner still does).
 */
#include "core/blas.h"
#include "core/pool.h"
#include "tokenlab/base.h"
#include "tokenlab/model.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_SHAPES 48
#define MAX_ROUNDS 64
#define SPLIT_MIN (1 << 18) /* TL_GEMM_SPLIT_MIN of engine/ops/linear.c */
#define CONV_CHUNK 1024     /* TL_CONV_CHUNK of engine/ops/conv.c */
#define CALLS_PER_UNIT 8    /* independent calls timed together, per thread */

enum { LIB_OPENBLAS, LIB_BLIS, NLIB };
enum { SPLIT_M, SPLIT_CALLS }; /* rows of C over the threads, or whole calls */
enum { GROUP_TRUNK, GROUP_ATTN, GROUP_HEADS, GROUP_STEM, NGROUP };
enum { MODE_1, MODE_2, MODE_2LIB, NMODE };
static const char *GROUP_NAMES[NGROUP] = {"blocks", "attention", "heads", "stem"};
static const char *MODE_NAMES[NMODE] = {"1 thread", "2 threads (engine split)", "2 threads (library's own)"};

typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                               float *, int);

/* ---- BLIS, opened here ---- */
static cblas_sgemm_fn g_blis_sgemm;
static void (*g_blis_set_threads)(long);
static void (*g_openblas_set_threads)(int);

static void blis_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
    g_blis_sgemm(101, tA ? 112 : 111, tB ? 112 : 111, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

typedef void (*gemm_fn)(int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
static const gemm_fn LIB_GEMM[NLIB] = {tl_sgemm, blis_gemm};

/* Opens BLIS at `path`, single-threaded; fills `desc`. 0 or -1 with a message. */
static int blis_open(const char *path, char *desc, size_t desclen, char *err, size_t errlen) {
    const char *arch = getenv("BLIS_ARCH_TYPE");
    if (arch && strcmp(arch, "-1") != 0)
        return tl_seterr(err, errlen, "BLIS_ARCH_TYPE is set (%.32s): Debian's BLIS 0.9 aborts on it; unset it", arch);
    setenv("BLIS_NUM_THREADS", "1", 1);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return tl_seterr(err, errlen, "cannot load BLIS (%s): %s; install libblis4-pthread", path, dlerror());
    g_blis_sgemm = (cblas_sgemm_fn)dlsym(h, "cblas_sgemm");
    g_blis_set_threads = (void (*)(long))dlsym(h, "bli_thread_set_num_threads");
    const char *(*version)(void) = (const char *(*)(void))dlsym(h, "bli_info_get_version_str");
    int (*arch_id)(void) = (int (*)(void))dlsym(h, "bli_arch_query_id");
    const char *(*arch_name)(int) = (const char *(*)(int))dlsym(h, "bli_arch_string");
    if (!g_blis_sgemm || !g_blis_set_threads)
        return tl_seterr(err, errlen, "BLIS at %s lacks cblas_sgemm or bli_thread_set_num_threads", path);
    g_blis_set_threads(1);
    snprintf(desc, desclen, "BLIS %s, %s kernels", version ? version() : "?",
             arch_id && arch_name ? arch_name(arch_id()) : "unknown");
    return 0;
}

/* ---- the shapes of one training step ---- */
typedef struct {
    char op[32];
    int group, split;
    int tA, tB, M, N, K, lda, ldb, ldc;
    float beta;
    int fwd;      /* part of the forward pass (inference) */
    double calls; /* per training step */
    size_t a_len, b_len, c_len; /* floats one call reads or writes */
} shape;

typedef struct {
    char name[48];
    tl_config c;
    int batch;
    int nshapes;
    shape s[MAX_SHAPES];
} model_case;

static size_t span(int trans, int rows, int cols, int ld) { /* op(X) is rows x cols */
    return trans ? (size_t)(cols - 1) * ld + rows : (size_t)(rows - 1) * ld + cols;
}

static void add(model_case *m, const char *op, int group, int split, int fwd, double calls, int tA, int tB, int M,
                int N, int K, int lda, int ldb, int ldc, float beta) {
    if (TL_NEVER(m->nshapes >= MAX_SHAPES)) return;
    shape *s = &m->s[m->nshapes++];
    snprintf(s->op, sizeof s->op, "%s", op);
    s->group = group, s->split = split, s->fwd = fwd, s->calls = calls;
    s->tA = tA, s->tB = tB, s->M = M, s->N = N, s->K = K, s->lda = lda, s->ldb = ldb, s->ldc = ldc, s->beta = beta;
    s->a_len = span(tA, M, K, lda);
    s->b_len = span(tB, K, N, ldb);
    s->c_len = span(0, M, N, ldc);
}

/* A linear layer of `rows` rows, in -> out features (engine/ops/linear.c), `calls` times a step;
 * `ldi` is the input's row stride. */
static void add_linear(model_case *m, const char *name, int group, double calls, int rows, int in, int out, int ldi) {
    char op[32];
    snprintf(op, sizeof op, "%s fwd", name);
    add(m, op, group, SPLIT_M, 1, calls, 0, 1, rows, out, in, ldi, in, out, 0.0f); /* Y = X W^T */
    snprintf(op, sizeof op, "%s dX", name);
    add(m, op, group, SPLIT_M, 0, calls, 0, 0, rows, in, out, out, in, ldi, 0.0f); /* dX = dY W */
    snprintf(op, sizeof op, "%s dW", name);
    add(m, op, group, SPLIT_M, 0, calls, 1, 0, out, in, rows, out, ldi, in, 1.0f); /* dW += dY^T X, split by features */
}

/* An im2col convolution (engine/ops/conv.c): chunks of CONV_CHUNK output pixels. */
static void add_conv(model_case *m, const char *name, double pixels, int cin, int cout, int k, int din) {
    int KK = k * k * cin;
    double chunks = pixels / CONV_CHUNK;
    char op[32];
    snprintf(op, sizeof op, "%s fwd", name);
    add(m, op, GROUP_STEM, SPLIT_CALLS, 1, chunks, 0, 0, CONV_CHUNK, cout, KK, KK, cout, cout, 0.0f);
    snprintf(op, sizeof op, "%s dW", name);
    add(m, op, GROUP_STEM, SPLIT_CALLS, 0, chunks, 1, 0, KK, cout, CONV_CHUNK, KK, cout, cout, 1.0f);
    if (!din) return;
    snprintf(op, sizeof op, "%s dX", name);
    add(m, op, GROUP_STEM, SPLIT_CALLS, 0, chunks, 0, 1, CONV_CHUNK, KK, cout, cout, cout, KK, 0.0f);
}

static void build_case(model_case *m, const char *label, const tl_config *c, int batch) {
    memset(m, 0, sizeof *m);
    m->c = *c;
    m->batch = batch;
    int g = tl_config_grid(c), N = g * g, T = N + 1, D = c->embed_dim, H = c->num_heads, hd = D / H;
    int hid = tl_config_hidden(c), K = c->num_classes, C = c->stem_channels, k = c->patch_size / 2, B = batch;
    int S = c->img_size / 2, BT = B * T;
    snprintf(m->name, sizeof m->name, "%s", label);
    double depth = c->depth;
    add_linear(m, "qkv", GROUP_TRUNK, depth, BT, D, 3 * D, D);
    add_linear(m, "proj", GROUP_TRUNK, depth, BT, D, D, D);
    add_linear(m, "fc1", GROUP_TRUNK, depth, BT, D, hid, D);
    add_linear(m, "fc2", GROUP_TRUNK, depth, BT, hid, D, hid);
    double bh = depth * B * H; /* engine/ops/transformer.c: one call per (image, head) */
    add(m, "attn S=QK^T", GROUP_ATTN, SPLIT_CALLS, 1, bh, 0, 1, T, T, hd, 3 * D, 3 * D, T, 0.0f);
    add(m, "attn O=PV", GROUP_ATTN, SPLIT_CALLS, 1, bh, 0, 0, T, hd, T, T, 3 * D, D, 0.0f);
    add(m, "attn dP=dOV^T", GROUP_ATTN, SPLIT_CALLS, 0, bh, 0, 1, T, T, hd, D, 3 * D, T, 0.0f);
    add(m, "attn dV=P^TdO", GROUP_ATTN, SPLIT_CALLS, 0, bh, 1, 0, T, hd, T, T, D, 3 * D, 0.0f);
    add(m, "attn dQ=dSK", GROUP_ATTN, SPLIT_CALLS, 0, bh, 0, 0, T, hd, T, T, 3 * D, 3 * D, 0.0f);
    add(m, "attn dK=dS^TQ", GROUP_ATTN, SPLIT_CALLS, 0, bh, 1, 0, T, hd, T, T, 3 * D, 3 * D, 0.0f);
    add_linear(m, "head cls", GROUP_HEADS, 1, B, D, K, T * D);
    add_linear(m, "head aux", GROUP_HEADS, B, N, D, K, D); /* one linear per image */
    add_linear(m, "patch proj", GROUP_STEM, 1, B * N, C * k * k, D, C * k * k);
    double pix = (double)B * S * S;
    add_conv(m, "conv1 7x7", pix, 3, C, 7, 0);
    add_conv(m, "conv2 3x3", pix, C, C, 3, 1);
    add_conv(m, "conv3 3x3", pix, C, C, 3, 1);
}

/* ---- timing ---- */
typedef struct {
    const shape *s;
    gemm_fn gemm;
    float *a, *b, *c;
    size_t ncopy; /* distinct argument sets in the buffers, for calls */
    int q;        /* calls per thread per unit (SPLIT_CALLS) */
    size_t base;  /* first call index of this unit */
} unit_job;

static void call_i(const unit_job *j, size_t i) {
    const shape *s = j->s;
    size_t slot = i % j->ncopy;
    j->gemm(s->tA, s->tB, s->M, s->N, s->K, 1.0f, j->a + slot * s->a_len, s->lda, j->b + slot * s->b_len, s->ldb,
            s->beta, j->c + slot * s->c_len, s->ldc);
}

static void unit_part(void *arg, int tid, int nt) {
    unit_job *j = arg;
    const shape *s = j->s;
    if (s->split == SPLIT_CALLS) {
        for (int i = 0; i < j->q; i++) call_i(j, j->base + (size_t)tid * j->q + i);
        return;
    }
    size_t lo, hi; /* rows of C and of op(A), as linear.c splits them */
    tl_split((size_t)s->M, tid, nt, &lo, &hi);
    if (hi <= lo) return;
    const float *A = s->tA ? j->a + lo : j->a + lo * (size_t)s->lda;
    j->gemm(s->tA, s->tB, (int)(hi - lo), s->N, s->K, 1.0f, A, s->lda, j->b, s->ldb, s->beta,
            j->c + lo * (size_t)s->ldc, s->ldc);
}

/* Does the engine split this GEMM over nt threads? (linear.c's rule: linear forward also needs M >= 2 nt) */
static int engine_splits(const shape *s, int nt) {
    if (nt == 1) return 0;
    if (s->split == SPLIT_CALLS) return 1;
    if ((double)s->M * s->N * s->K < SPLIT_MIN) return 0;
    return !(s->split == SPLIT_M && s->fwd && s->M < 2 * nt);
}

/* Runs one unit; returns the number of calls it stands for. */
static double run_unit(unit_job *j, tl_pool *p, int mode, size_t *counter) {
    const shape *s = j->s;
    int nt = mode == MODE_2 ? tl_pool_size(p) : 1;
    if (s->split == SPLIT_CALLS) {
        j->base = *counter;
        *counter += (size_t)j->q * nt;
        if (nt > 1)
            tl_pool_run(p, unit_part, j);
        else
            unit_part(j, 0, 1);
        return (double)j->q * nt;
    }
    if (engine_splits(s, nt))
        tl_pool_run(p, unit_part, j);
    else
        call_i(j, 0);
    return 1.0;
}

static void set_lib_threads(int lib, int n) {
    if (lib == LIB_BLIS) g_blis_set_threads(n);
    else if (g_openblas_set_threads) g_openblas_set_threads(n);
}

static int g_cpu_clock; /* --clock cpu */

static double now_s(void) {
    if (!g_cpu_clock) return tl_clock_mono_s();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds per call over `reps` units. */
static double time_calls(unit_job *j, tl_pool *p, int mode, int reps, size_t *counter) {
    double calls = 0.0, t0 = now_s();
    for (int r = 0; r < reps; r++) calls += run_unit(j, p, mode, counter);
    return (now_s() - t0) / calls;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double t[MAX_ROUNDS];
    memcpy(t, v, sizeof(double) * (size_t)n);
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void range(const double *v, int n, double *lo, double *hi) {
    *lo = *hi = v[0];
    for (int i = 1; i < n; i++) {
        *lo = v[i] < *lo ? v[i] : *lo;
        *hi = v[i] > *hi ? v[i] : *hi;
    }
}

static void fill(float *x, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((seed >> 40) & 0xffff) / 32768.0f - 1.0f;
    }
}

/* Both libraries on the same inputs, C zeroed (beta ignored); the largest difference relative to max |C|. */
static double compare_libs(const shape *s, float *a, float *b, float *c0, float *c1) {
    memset(c0, 0, sizeof(float) * s->c_len);
    memset(c1, 0, sizeof(float) * s->c_len);
    tl_sgemm(s->tA, s->tB, s->M, s->N, s->K, 1.0f, a, s->lda, b, s->ldb, 0.0f, c0, s->ldc);
    blis_gemm(s->tA, s->tB, s->M, s->N, s->K, 1.0f, a, s->lda, b, s->ldb, 0.0f, c1, s->ldc);
    double diff = 0.0, mag = 0.0;
    for (size_t i = 0; i < s->c_len; i++) {
        double d = fabs((double)c0[i] - c1[i]), v = fabs((double)c0[i]);
        diff = d > diff ? d : diff;
        mag = v > mag ? v : mag;
    }
    return mag > 0 ? diff / mag : (diff > 0 ? INFINITY : 0.0);
}

typedef struct {
    double t[NMODE][MAX_SHAPES][NLIB][MAX_ROUNDS]; /* seconds per call */
    int done[NMODE];
} results;

static void usage(void) {
    fprintf(stderr,
            "usage: tl-gemm-bench [--rounds R] [--min-ms MS] [--threads 1|2|1,2] [--lib-threads]\n"
            "                     [--models LIST] [--blis PATH] [--clock wall|cpu] [--shapes]\n"
            "  sgemm at every shape of a training step, OpenBLAS (the engine's) against BLIS, in one run.\n"
            "  --rounds R      measurements per shape and library, alternating (default 5)\n"
            "  --min-ms MS     length of one measurement (default 20)\n"
            "  --threads LIST  1: one thread; 2: two pool threads, the engine's split (default 1,2)\n"
            "  --lib-threads   also the libraries' own two threads on whole GEMMs (not what the engine does)\n"
            "  --models LIST   comma-separated among t1,t32,s1,s32,d128x32,d128x64 (default all)\n"
            "  --blis PATH     the BLIS library (default libblis.so.4)\n"
            "  --clock C       wall (default) or cpu: the process's CPU time, steadier on a shared machine\n"
            "  --shapes        print every shape's figures, not only the step totals\n");
}

static int list_has(const char *list, const char *item) {
    size_t n = strlen(item);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, item, n) == 0) return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

static void cpu_model(char *out, size_t len) {
    snprintf(out, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            colon++;
            while (*colon == ' ') colon++;
            colon[strcspn(colon, "\n")] = 0;
            snprintf(out, len, "%s", colon);
            break;
        }
    }
    fclose(f);
}

static void print_totals(const model_case *m, const results *r, int mode, int rounds, int fwd_only) {
    double step[NLIB][MAX_ROUNDS], grp[NGROUP][NLIB][MAX_ROUNDS], ratio[MAX_ROUNDS] = {0};
    memset(grp, 0, sizeof grp);
    for (int l = 0; l < NLIB; l++)
        for (int k = 0; k < rounds; k++) {
            step[l][k] = 0.0;
            for (int i = 0; i < m->nshapes; i++) {
                if (fwd_only && !m->s[i].fwd) continue;
                double t = m->s[i].calls * r->t[mode][i][l][k];
                step[l][k] += t;
                grp[m->s[i].group][l][k] += t;
            }
        }
    for (int k = 0; k < rounds; k++) ratio[k] = step[LIB_OPENBLAS][k] / step[LIB_BLIS][k];
    double lo, hi;
    range(ratio, rounds, &lo, &hi);
    printf("  %-26s %-9s OpenBLAS %8.1f ms  BLIS %8.1f ms  BLIS speed %.3fx [%.3f-%.3f]\n", MODE_NAMES[mode],
           fwd_only ? "forward" : "step", 1e3 * median(step[LIB_OPENBLAS], rounds), 1e3 * median(step[LIB_BLIS], rounds),
           median(ratio, rounds), lo, hi);
    if (fwd_only) return;
    printf("  %-26s %-9s", "", "by part");
    for (int g = 0; g < NGROUP; g++) {
        double rg[MAX_ROUNDS];
        for (int k = 0; k < rounds; k++) rg[k] = grp[g][LIB_OPENBLAS][k] / grp[g][LIB_BLIS][k];
        printf(" %s %.0f ms %.2fx%s", GROUP_NAMES[g], 1e3 * median(grp[g][LIB_OPENBLAS], rounds), median(rg, rounds),
               g + 1 < NGROUP ? ";" : "\n");
    }
}

int main(int argc, char **argv) {
    int rounds = 5, lib_threads = 0, show_shapes = 0;
    double min_ms = 20.0;
    const char *threads = "1,2", *models = "t1,t32,s1,s32,d128x32,d128x64", *blis_path = "libblis.so.4";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { usage(); return 0; }
        if (strcmp(a, "--lib-threads") == 0) { lib_threads = 1; continue; }
        if (strcmp(a, "--shapes") == 0) { show_shapes = 1; continue; }
        if (!v) { usage(); return 2; }
        if (strcmp(a, "--rounds") == 0) rounds = atoi(v);
        else if (strcmp(a, "--min-ms") == 0) min_ms = atof(v);
        else if (strcmp(a, "--threads") == 0) threads = v;
        else if (strcmp(a, "--models") == 0) models = v;
        else if (strcmp(a, "--blis") == 0) blis_path = v;
        else if (strcmp(a, "--clock") == 0 && (strcmp(v, "wall") == 0 || strcmp(v, "cpu") == 0))
            g_cpu_clock = strcmp(v, "cpu") == 0;
        else { fprintf(stderr, "tl-gemm-bench: unknown option %s\n", a); usage(); return 2; }
        i++;
    }
    if (rounds < 1 || rounds > MAX_ROUNDS || !(min_ms > 0)) {
        fprintf(stderr, "tl-gemm-bench: --rounds must be in 1..%d, --min-ms positive\n", MAX_ROUNDS);
        return 2;
    }
    int want[NMODE] = {list_has(threads, "1"), list_has(threads, "2"), lib_threads};

    /* OpenBLAS as the engine loads it; BLIS beside it. */
    char err[TL_ERR_LEN], blis_desc[128], cpu[128];
    if (tl_blas_init(err, sizeof err) != 0) { fprintf(stderr, "tl-gemm-bench: %s\n", err); return 1; }
    if (blis_open(blis_path, blis_desc, sizeof blis_desc, err, sizeof err) != 0) {
        fprintf(stderr, "tl-gemm-bench: %s\n", err);
        return 1;
    }
    void *ob = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_NOLOAD);
    g_openblas_set_threads = ob ? (void (*)(int))dlsym(ob, "openblas_set_num_threads") : NULL;
    if (lib_threads && !g_openblas_set_threads) {
        fprintf(stderr, "tl-gemm-bench: --lib-threads: cannot reach openblas_set_num_threads\n");
        return 1;
    }
    cpu_model(cpu, sizeof cpu);
    printf("CPU: %s; features %s\n", cpu, tl_cpu_features());
    printf("OpenBLAS: %s; %s\n", tl_blas_config(), tl_blas_corename());
    printf("BLIS: %s (%s)\n", blis_desc, blis_path);
    printf("%d rounds per shape, at least %.0f ms of %s time each, libraries alternating; speed ratio = BLIS / "
           "OpenBLAS (above 1: BLIS faster), median [range] over rounds\n",
           rounds, min_ms, g_cpu_clock ? "CPU" : "wall-clock");

    static const struct { const char *key, *label, *preset; int img, patch, batch; } CASES[] = {
        {"t1", "lvvit_t 224 px, batch 1", "lvvit_t", 224, 16, 1},
        {"t32", "lvvit_t 224 px, batch 32", "lvvit_t", 224, 16, 32},
        {"s1", "lvvit_s 224 px, batch 1", "lvvit_s", 224, 16, 1},
        {"s32", "lvvit_s 224 px, batch 32", "lvvit_s", 224, 16, 32},
        {"d128x32", "D128x6 32 px patch 4, batch 128", NULL, 32, 4, 128},
        {"d128x64", "D128x6 64 px patch 8, batch 64", NULL, 64, 8, 64},
    };
    /* the small model: schema/examples/imagenette-64.json's */
    const tl_config small = {64, 8, 128, 6, 4, 3.0f, 32, 1.0f, 10, 0.05f};

    tl_pool *pool = tl_pool_new(2);
    model_case *m = malloc(sizeof *m);
    results *res = malloc(sizeof *res);
    float *buf[3] = {NULL, NULL, NULL}, *c0 = NULL, *c1 = NULL;
    int rc = 1;
    if (!pool || !m || !res) { fprintf(stderr, "tl-gemm-bench: out of memory\n"); goto fail; }

    for (size_t ci = 0; ci < sizeof CASES / sizeof CASES[0]; ci++) {
        if (!list_has(models, CASES[ci].key)) continue;
        tl_config c = small;
        if (CASES[ci].preset) tl_config_preset(CASES[ci].preset, &c);
        c.img_size = CASES[ci].img;
        c.patch_size = CASES[ci].patch;
        build_case(m, CASES[ci].label, &c, CASES[ci].batch);
        memset(res, 0, sizeof *res);
        printf("\n== %s (D=%d, depth %d, %d heads, hidden %d, T=%d, stem %d channels, %d classes)\n", m->name,
               c.embed_dim, c.depth, c.num_heads, tl_config_hidden(&c), tl_config_grid(&c) * tl_config_grid(&c) + 1,
               c.stem_channels, c.num_classes);
        fflush(stdout);
        for (int si = 0; si < m->nshapes; si++) {
            const shape *s = &m->s[si];
            /* enough argument sets that a unit's calls all differ (as the engine's (image, head) pairs do) */
            size_t ncopy = s->split == SPLIT_CALLS ? 2 * CALLS_PER_UNIT : 1;
            size_t need[3] = {ncopy * s->a_len, ncopy * s->b_len, ncopy * s->c_len};
            for (int b = 0; b < 3; b++) {
                free(buf[b]);
                buf[b] = malloc(sizeof(float) * need[b]);
                if (!buf[b]) { fprintf(stderr, "tl-gemm-bench: out of memory\n"); goto fail; }
                fill(buf[b], need[b], 1234u + (uint64_t)b);
            }
            free(c0);
            free(c1);
            c0 = malloc(sizeof(float) * s->c_len);
            c1 = malloc(sizeof(float) * s->c_len);
            if (!c0 || !c1) { fprintf(stderr, "tl-gemm-bench: out of memory\n"); goto fail; }
            double rel = compare_libs(s, buf[0], buf[1], c0, c1);
            if (!(rel < 1e-4)) {
                fprintf(stderr, "tl-gemm-bench: %s: OpenBLAS and BLIS differ (%.2e of max |C|)\n", s->op, rel);
                goto fail;
            }
            for (int mode = 0; mode < NMODE; mode++) {
                if (!want[mode]) continue;
                int q = s->split == SPLIT_CALLS ? CALLS_PER_UNIT : 1;
                unit_job j[NLIB];
                for (int l = 0; l < NLIB; l++)
                    j[l] = (unit_job){s, LIB_GEMM[l], buf[0], buf[1], buf[2], ncopy, q, 0};
                size_t counter = 0;
                int reps[NLIB];
                for (int l = 0; l < NLIB; l++) { /* warm-up, then calibration */
                    if (mode == MODE_2LIB) set_lib_threads(l, 2);
                    time_calls(&j[l], pool, mode, 1, &counter);
                    double per_call = time_calls(&j[l], pool, mode, 1, &counter);
                    double per_unit = per_call * (s->split == SPLIT_CALLS ? q * (mode == MODE_2 ? 2 : 1) : 1);
                    reps[l] = (int)ceil(min_ms * 1e-3 / (per_unit > 1e-9 ? per_unit : 1e-9));
                    if (mode == MODE_2LIB) set_lib_threads(l, 1);
                }
                int n = reps[0] > reps[1] ? reps[0] : reps[1];
                for (int k = 0; k < rounds; k++)
                    for (int o = 0; o < NLIB; o++) {
                        int l = (k % 2 == 0) == (o == 0) ? LIB_OPENBLAS : LIB_BLIS; /* ABBA */
                        if (mode == MODE_2LIB) set_lib_threads(l, 2);
                        res->t[mode][si][l][k] = time_calls(&j[l], pool, mode, n, &counter);
                        if (mode == MODE_2LIB) set_lib_threads(l, 1);
                    }
                res->done[mode] = 1;
            }
        }
        for (int mode = 0; mode < NMODE; mode++) {
            if (!res->done[mode]) continue;
            if (show_shapes) {
                printf("  %s: op, GEMM (op(A) MxK, op(B) KxN), calls per step; GFLOP/s median [range]; "
                       "BLIS speed; share of OpenBLAS's step time\n",
                       MODE_NAMES[mode]);
                double total = 0.0;
                for (int i = 0; i < m->nshapes; i++) {
                    double t[MAX_ROUNDS];
                    for (int k = 0; k < rounds; k++) t[k] = res->t[mode][i][LIB_OPENBLAS][k];
                    total += m->s[i].calls * median(t, rounds);
                }
                for (int i = 0; i < m->nshapes; i++) {
                    const shape *s = &m->s[i];
                    double fl = 2.0 * s->M * s->N * (double)s->K, g[NLIB][MAX_ROUNDS], ratio[MAX_ROUNDS], lo[NLIB],
                           hi[NLIB], rlo, rhi;
                    for (int k = 0; k < rounds; k++) {
                        for (int l = 0; l < NLIB; l++) g[l][k] = fl / res->t[mode][i][l][k] / 1e9;
                        ratio[k] = res->t[mode][i][LIB_OPENBLAS][k] / res->t[mode][i][LIB_BLIS][k];
                    }
                    for (int l = 0; l < NLIB; l++) range(g[l], rounds, &lo[l], &hi[l]);
                    range(ratio, rounds, &rlo, &rhi);
                    double share = m->s[i].calls * fl / median(g[LIB_OPENBLAS], rounds) / 1e9 / total;
                    printf("    %-14s %c%c %5dx%-5dx%-5d %8.0f  OpenBLAS %6.1f [%5.1f-%5.1f]  BLIS %6.1f [%5.1f-%5.1f]"
                           "  %.2fx [%.2f-%.2f]  %4.1f%%\n",
                           s->op, s->tA ? 'T' : 'N', s->tB ? 'T' : 'N', s->M, s->K, s->N, s->calls,
                           median(g[LIB_OPENBLAS], rounds), lo[0], hi[0], median(g[LIB_BLIS], rounds), lo[1], hi[1],
                           median(ratio, rounds), rlo, rhi, 100.0 * share);
                }
            }
            print_totals(m, res, mode, rounds, 0);
            print_totals(m, res, mode, rounds, 1);
        }
        fflush(stdout);
    }
    rc = 0;
fail:
    for (int b = 0; b < 3; b++) free(buf[b]);
    free(c0);
    free(c1);
    free(m);
    free(res);
    tl_pool_free(pool);
    return rc;
}
