/*
 * tl_bench.c: times training steps (forward, backward, AdamW) or inference of
 * the engine for a preset or configuration, and prints images/s, the CPU time
 * of a step (all threads; on a shared machine steadier than the wall clock),
 * achieved GFLOP/s, the share of this machine's sgemm peak (measured here,
 * with the same threads and kernels the engine uses), peak memory, and the
 * kernel level the engine ran (TL_ISA=generic|avx2|avx512 picks a lower one
 * than the CPU's: engine/core/simd.h) with OpenBLAS's family.
 *
 *   tl-bench [--preset lvvit_t | --config FILE] [--img-size PX] [--batch B]
 *            [--mode train|infer] [--steps N] [--warmup W] [--threads T] [--json]
 *            [--freeze none|stem|trunk] [--layer-decay X]   (training: fine-tuning settings)
 *            --mode init [--img-size PX] [--classes K]: the cost of starting a fine-tuning job from a
 *            checkpoint of the preset (resized to PX, heads re-initialised for K classes, default 10)
 *
 * Training FLOPs are counted as 3x the forward FLOPs (forward + two GEMMs per
 * GEMM in backward); AdamW and elementwise work are not counted. With
 * --freeze the same count is kept, so GFLOP/s then read as "full-training
 * equivalent"; compare images/s.
 */
#include "data/loader.h"
#include "tokenlab/base.h"
#include "tokenlab/memtune.h"
#include "ops/ops.h"
#include "core/pool.h"
#include "tokenlab/model.h"
#include "tokenlab/safetensors.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* CPU time of the whole process (all threads), seconds: on a shared machine, unlike the wall clock,
 * it leaves out the time the threads wait for a core. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* sgemm peak through the engine's own GEMM path (pool split, single-threaded BLAS). */
static double measure_sgemm_peak(int nthreads) {
    int n = 2048;
    float *a = malloc(sizeof(float) * (size_t)n * n), *b = malloc(sizeof(float) * (size_t)n * n),
          *c = malloc(sizeof(float) * (size_t)n * n);
    if (!a || !b || !c) return 0.0;
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(i % 13) * 0.01f;
        b[i] = (float)(i % 7) * 0.01f;
    }
    tl_pool *p = tl_pool_new(nthreads);
    tl_gemm(p, 0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double best = 0.0;
    for (int r = 0; r < 5; r++) {
        double t = tl_clock_mono_s();
        tl_gemm(p, 0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double g = 2.0 * n * n * (double)n / (tl_clock_mono_s() - t) / 1e9;
        best = g > best ? g : best;
    }
    tl_pool_free(p);
    free(a);
    free(b);
    free(c);
    return best;
}

/* Loader throughput: training batches (decode, augment, targets) from a folder, cache off. */
static double measure_loader(const char *dir, int S, int grid, int batch, int threads, int nbatches, char *err,
                             size_t errlen) {
    tl_dataset *ds = tl_dataset_open(dir, err, errlen);
    if (!ds) return -1.0;
    tl_loader_cfg lc = {.ds = ds, .train = 1, .S = S, .grid = grid, .K = tl_dataset_num_classes(ds),
                        .smoothing = 0.1f, .batch = batch, .seed = 1, .threads = threads, .prefetch = 4};
    tl_augment_defaults(&lc.aug);
    tl_loader *l = tl_loader_new(&lc, err, errlen);
    if (!l) {
        tl_dataset_free(ds);
        return -1.0;
    }
    if (nbatches > tl_loader_batches(l)) nbatches = tl_loader_batches(l);
    tl_loader_start(l, 0, 0);
    double t0 = tl_clock_mono_s();
    int n = 0;
    for (int i = 0; i < nbatches && tl_loader_next(l, NULL); i++) n += batch;
    double ips = n / (tl_clock_mono_s() - t0);
    tl_loader_free(l);
    tl_dataset_free(ds);
    return ips;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    fclose(f);
    return buf;
}

/* --mode init: the cost of starting a fine-tuning job from a checkpoint, as tl_train_run does it: read
 * the source's configuration, load it into a weights-only model, build the job's model (blank, as tl_train_run does) and
 * adapt it (position embedding resized when img differs, heads drawn afresh for `classes`). The source is
 * a freshly initialised model of `src` saved to a temporary file first (not timed). */
static int measure_init(const tl_config *src, int img, int classes, int json, char *err, size_t errlen) {
    char path[] = "/tmp/tl-bench-init-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return tl_seterr(err, errlen, "mkstemp: %s", strerror(errno));
    close(fd);
    tl_model *s0 = tl_model_new(src, 7, err, errlen);
    int rc = s0 ? tl_checkpoint_save(s0, NULL, path, 0, NULL, NULL, err, errlen) : -1;
    tl_model_free(s0);
    tl_model *sm = NULL, *dm = NULL;
    if (rc != 0) goto done;
    rc = -1;
    tl_config sc, dc;
    tl_init_report rep;
    double t0 = tl_clock_mono_s();
    tl_st_file *f = tl_st_open(path, err, errlen); /* read once, as tl_train_run does */
    rc = f && tl_checkpoint_config_file(f, path, &sc, err, errlen) == 0 && (sm = tl_model_new_inference(&sc, err, errlen)) &&
                 tl_checkpoint_load_file(sm, NULL, f, path, 0, NULL, err, errlen) == 0
             ? 0
             : -1;
    tl_st_close(f);
    if (rc != 0) goto done;
    rc = -1;
    double t1 = tl_clock_mono_s();
    dc = sc;
    dc.img_size = img > 0 ? img : sc.img_size;
    dc.num_classes = classes;
    if (!(dm = tl_model_new_blank(&dc, err, errlen))) goto done; /* as tl_train_run does */
    double t2 = tl_clock_mono_s();
    if (tl_model_init_from(dm, sm, TL_HEAD_REINIT, NULL, 42, &rep, err, errlen) != 0) goto done;
    double t3 = tl_clock_mono_s();
    size_t params = tl_model_num_params(dm);
    if (json)
        printf("{\"impl\":\"tokenlab\",\"mode\":\"init\",\"params\":%zu,\"src_img\":%d,\"img_size\":%d,\"classes\":%d,"
               "\"load_ms\":%.1f,\"new_model_ms\":%.1f,\"adapt_ms\":%.1f,\"total_ms\":%.1f}\n",
               params, sc.img_size, dc.img_size, classes, 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2),
               1e3 * (t3 - t0));
    else
        printf("tokenlab init: %zu parameters, %d px -> %d px (grid %d -> %d), heads re-initialised for %d classes:\n"
               "  read + load the source %.1f ms, build the job's model %.1f ms, adapt %.1f ms; total %.1f ms\n",
               params, sc.img_size, dc.img_size, rep.src_grid, rep.dst_grid, classes, 1e3 * (t1 - t0),
               1e3 * (t2 - t1), 1e3 * (t3 - t2), 1e3 * (t3 - t0));
    rc = 0;
done:
    tl_model_free(sm);
    tl_model_free(dm);
    unlink(path);
    return rc;
}

static void usage(void) {
    fprintf(stderr,
            "usage: tl-bench [--preset NAME | --config FILE] [--img-size PX] [--batch B] [--mode train|infer]\n"
            "                [--steps N] [--warmup W] [--threads T] [--json] [--profile]\n"
            "                [--freeze none|stem|trunk] [--layer-decay X]   (training: fine-tuning settings)\n"
            "       tl-bench --mode init [--preset NAME] [--img-size PX] [--classes K]   (starting a fine-tuning job)\n"
            "                [--data DIR [--loader-threads N]]   (also measure the data loader on DIR)\n"
            "environment: TL_ISA=generic|avx2|avx512 runs that kernel level (capped at the CPU's) and its BLAS family\n");
}

int main(int argc, char **argv) {
    (void)tl_malloc_keep_pages(); /* as tokenlabd does: same allocator behaviour in the figures */
    const char *preset = "lvvit_t", *config_path = NULL, *mode = "train", *data_dir = NULL, *freeze = "none";
    float layer_decay = 1.0f;
    int loader_threads = 1, classes = 10;
    int img = 0, batch = 32, steps = 5, warmup = 1, json = 0, profile = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = ncpu > 0 ? (int)ncpu : 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) { json = 1; continue; }
        if (strcmp(a, "--profile") == 0) { profile = 1; continue; }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { usage(); return 0; }
        if (!v) { usage(); return 2; }
        if (strcmp(a, "--preset") == 0) preset = v;
        else if (strcmp(a, "--config") == 0) config_path = v;
        else if (strcmp(a, "--img-size") == 0) img = atoi(v);
        else if (strcmp(a, "--batch") == 0) batch = atoi(v);
        else if (strcmp(a, "--mode") == 0) mode = v;
        else if (strcmp(a, "--steps") == 0) steps = atoi(v);
        else if (strcmp(a, "--warmup") == 0) warmup = atoi(v);
        else if (strcmp(a, "--threads") == 0) threads = atoi(v);
        else if (strcmp(a, "--data") == 0) data_dir = v;
        else if (strcmp(a, "--loader-threads") == 0) loader_threads = atoi(v);
        else if (strcmp(a, "--freeze") == 0) freeze = v;
        else if (strcmp(a, "--layer-decay") == 0) layer_decay = strtof(v, NULL);
        else if (strcmp(a, "--classes") == 0) classes = atoi(v);
        else { fprintf(stderr, "tl-bench: unknown option %s\n", a); usage(); return 2; }
        i++;
    }
    int train = strcmp(mode, "train") == 0, init = strcmp(mode, "init") == 0;
    if (!train && !init && strcmp(mode, "infer") != 0) {
        fprintf(stderr, "tl-bench: --mode must be train, infer or init\n");
        return 2;
    }
    if (batch < 1 || steps < 1 || threads < 1) { fprintf(stderr, "tl-bench: --batch, --steps, --threads must be >= 1\n"); return 2; }
    int fz = strcmp(freeze, "none") == 0 ? TL_FREEZE_NONE : strcmp(freeze, "stem") == 0 ? TL_FREEZE_STEM
           : strcmp(freeze, "trunk") == 0 ? TL_FREEZE_TRUNK : -1;
    if (fz < 0) { fprintf(stderr, "tl-bench: --freeze must be none, stem or trunk\n"); return 2; }

    char err[TL_ERR_LEN];
    tl_config c;
    if (config_path) {
        char *text = read_file(config_path);
        if (!text) { fprintf(stderr, "tl-bench: cannot read %s\n", config_path); return 1; }
        int rc = tl_config_from_json(text, &c, err, sizeof err);
        free(text);
        if (rc != 0) { fprintf(stderr, "tl-bench: %s: %s\n", config_path, err); return 1; }
        preset = "custom";
    } else if (tl_config_preset(preset, &c) != 0) {
        fprintf(stderr, "tl-bench: unknown preset '%s'\n", preset);
        return 1;
    }
    if (init) { /* the source at the preset's own size, the job at --img-size */
        if (measure_init(&c, img, classes, json, err, sizeof err) != 0) { fprintf(stderr, "tl-bench: %s\n", err); return 1; }
        return 0;
    }
    if (img > 0) c.img_size = img;
    if (tl_config_validate(&c, err, sizeof err) != 0) { fprintf(stderr, "tl-bench: %s\n", err); return 1; }

    double loader_ips = 0.0;
    if (data_dir) {
        loader_ips = measure_loader(data_dir, c.img_size, tl_config_grid(&c), batch, loader_threads, 20, err, sizeof err);
        if (loader_ips < 0) { fprintf(stderr, "tl-bench: --data: %s\n", err); return 1; }
    }
    double peak = measure_sgemm_peak(threads);
    tl_model *m = tl_model_new(&c, 42, err, sizeof err);
    tl_ctx *ctx = m ? tl_ctx_new(m, batch, train, threads, err, sizeof err) : NULL;
    if (!ctx) { fprintf(stderr, "tl-bench: %s\n", err); return 1; }
    if (train && (tl_model_set_freeze(m, (tl_freeze)fz, err, sizeof err) != 0 ||
                  tl_model_set_layer_decay(m, layer_decay, err, sizeof err) != 0)) {
        fprintf(stderr, "tl-bench: %s\n", err);
        return 1;
    }
    if (!train) tl_ctx_freeze_weights(ctx); /* as a served model */
    int K = c.num_classes, g = tl_config_grid(&c);
    size_t npix = (size_t)batch * 3 * c.img_size * c.img_size;
    float *images = malloc(sizeof(float) * npix), *t_cls = calloc((size_t)batch * K, sizeof(float));
    float *scores = malloc(sizeof(float) * (size_t)batch * K);
    if (!images || !t_cls || !scores) { fprintf(stderr, "tl-bench: out of memory\n"); return 1; }
    uint64_t s = 12345;
    for (size_t i = 0; i < npix; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        images[i] = (float)((s >> 40) & 0xffff) / 32768.0f - 1.0f;
    }
    for (int b = 0; b < batch; b++) t_cls[(size_t)b * K + (b % K)] = 1.0f;
    tl_adamw hp = {1e-3f, 0.05f, 0.9f, 0.999f, 1e-8f};
    tl_loss_weights lw = {1.0f, 0.5f, 1.0f};
    tl_box box = {g / 4, g / 4, g / 4 + g / 2, g / 4 + g / 2};

    double t0 = 0, c0 = 0, fwd = 0, bwd = 0, opt = 0;
    for (int it = 0; it < warmup + steps; it++) {
        if (it == warmup) { t0 = tl_clock_mono_s(); c0 = cpu_s(); fwd = bwd = opt = 0; tl_ctx_profile(ctx, profile); }
        if (train) {
            double a = tl_clock_mono_s();
            tl_model_zero_grad(m);
            tl_loss_parts lp;
            tl_forward(ctx, images, batch, 1, &box, (uint64_t)it);
            tl_loss(ctx, t_cls, NULL, &lw, &lp);
            double b = tl_clock_mono_s();
            tl_backward(ctx);
            double d = tl_clock_mono_s();
            tl_ctx_adamw_step(ctx, &hp);
            double e = tl_clock_mono_s();
            fwd += b - a;
            bwd += d - b;
            opt += e - d;
        } else {
            tl_predict(ctx, images, batch, scores);
        }
    }
    double dt = tl_clock_mono_s() - t0, cpu_ms = (cpu_s() - c0) / steps * 1000.0;
    double ips = (double)batch * steps / dt;
    double flops_img = tl_config_forward_flops(&c) * (train ? 3.0 : 1.0);
    double gflops = flops_img * ips / 1e9;
    double frac = peak > 0 ? gflops / peak : 0.0;
    double ms = dt / steps * 1000.0;
    if (json) {
        printf("{\"impl\":\"tokenlab\",\"mode\":\"%s\",\"preset\":\"%s\",\"img_size\":%d,\"batch\":%d,\"threads\":%d,"
               "\"steps\":%d,\"img_per_s\":%.3f,\"ms_per_step\":%.2f,\"cpu_ms_per_step\":%.2f,\"gflop_per_s\":%.1f,\"sgemm_peak_gflop_per_s\":%.1f,"
               "\"sgemm_peak_fraction\":%.3f,\"peak_rss_mb\":%.1f,\"model_mb\":%.1f,\"activations_mb\":%.1f,"
               "\"freeze\":\"%s\",\"layer_decay\":%g",
               mode, preset, c.img_size, batch, threads, steps, ips, ms, cpu_ms, gflops, peak, frac, peak_rss_mb(),
               (double)tl_model_bytes(m) / 1048576.0, (double)tl_ctx_bytes(ctx) / 1048576.0, freeze,
               (double)layer_decay);
        if (train)
            printf(",\"ms_forward\":%.2f,\"ms_backward\":%.2f,\"ms_adamw\":%.2f", fwd / steps * 1e3, bwd / steps * 1e3,
                   opt / steps * 1e3);
        if (data_dir) printf(",\"loader_img_per_s\":%.1f,\"loader_threads\":%d", loader_ips, loader_threads);
        printf(",\"isa\":\"%s\",\"blas\":\"%s\"}\n", tl_isa_name(), tl_blas_corename());
    } else {
        printf("tokenlab %s %s @%d px, batch %d, %d threads, %d steps", mode, preset, c.img_size, batch, threads, steps);
        if (train) printf(", freeze %s, layer decay %g", freeze, (double)layer_decay);
        printf("\n");
        printf("  %.2f images/s, %.1f ms per step", ips, ms);
        if (train) printf(" (forward %.1f, backward %.1f, AdamW %.1f)", fwd / steps * 1e3, bwd / steps * 1e3, opt / steps * 1e3);
        printf("\n  %.1f ms of CPU time per step (all threads)", cpu_ms);
        printf("\n  %.1f GFLOP/s = %.1f%% of the measured sgemm peak %.1f GFLOP/s\n", gflops, 100 * frac, peak);
        printf("  peak RSS %.0f MiB (model+optimizer %.0f MiB, activations %.0f MiB)\n", peak_rss_mb(),
               (double)tl_model_bytes(m) / 1048576.0, (double)tl_ctx_bytes(ctx) / 1048576.0);
        printf("  kernels: %s; BLAS: %s\n", tl_isa_name(), tl_blas_corename());
        if (data_dir)
            printf("  loader: %.0f images/s with %d thread(s) (decode, augment, targets; no cache) from %s\n", loader_ips,
                   loader_threads, data_dir);
        if (profile) {
            char rep[2048];
            tl_ctx_profile_report(ctx, rep, sizeof rep);
            printf("  profile (forward/backward, all steps): %s\n", rep);
        }
    }
    free(images);
    free(t_cls);
    free(scores);
    tl_ctx_free(ctx);
    tl_model_free(m);
    return 0;
}
