/*
 * tokenlabd.c: the tokenlab daemon's entry point.
 *
 * For now it has one subcommand, `demo`: a short token-labeling training run
 * of a small LV-ViT on generated pictures, printing its progress, so a new
 * machine shows the engine working end to end. (The HTTP daemon, `synth` and
 * `run` come with the later issues.) Single-threaded apart from the engine's
 * pool.
 *
 * The generated task: each 32x32 picture holds two axis-aligned rectangles of
 * two different classes on a noisy background; a class is a colour and a
 * stripe orientation. The image label is the larger rectangle's class, and
 * every token's label is the class covering most of its patch (background
 * tokens take the image label), so per-token supervision is exact.
 */
#include "commands.h"
#include "tl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    uint64_t s;
} rng;

static uint32_t rnd(rng *r) {
    r->s = r->s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(r->s >> 33);
}
static float rndf(rng *r) { return (float)rnd(r) / 2147483648.0f; }

#define NCLS 6

static const float COLORS[NCLS][3] = {{1, 0.2f, 0.2f}, {0.2f, 1, 0.2f}, {0.2f, 0.3f, 1},
                                      {1, 1, 0.2f},    {1, 0.2f, 1},    {0.2f, 1, 1}};

/* One sample: image (3,S,S) normalised, class target (K) and token targets (N,K). */
static void make_sample(rng *r, int S, int P, float smoothing, float *img, float *tcls, float *tdense) {
    int g = S / P, cls[2], box[2][4], area[2];
    cls[0] = (int)(rnd(r) % NCLS);
    cls[1] = (int)((cls[0] + 1 + rnd(r) % (NCLS - 1)) % NCLS);
    for (int o = 0; o < 2; o++) {
        int w = S / 4 + (int)(rnd(r) % (unsigned)(S / 2)), h = S / 4 + (int)(rnd(r) % (unsigned)(S / 2));
        int y = (int)(rnd(r) % (unsigned)(S - h + 1)), x = (int)(rnd(r) % (unsigned)(S - w + 1));
        box[o][0] = y, box[o][1] = x, box[o][2] = y + h, box[o][3] = x + w;
    }
    int *owner = malloc(sizeof(int) * (size_t)S * S);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            int who = -1;
            for (int o = 0; o < 2; o++)
                if (y >= box[o][0] && y < box[o][2] && x >= box[o][1] && x < box[o][3]) who = o; /* 1 on top */
            owner[y * S + x] = who;
            float v[3];
            if (who < 0) {
                for (int c = 0; c < 3; c++) v[c] = 0.3f * rndf(r);
            } else {
                int k = cls[who];
                float stripe = ((k % 2 ? x : y) / 2) % 2 ? 1.0f : 0.6f;
                for (int c = 0; c < 3; c++) v[c] = COLORS[k][c] * stripe + 0.1f * rndf(r);
            }
            for (int c = 0; c < 3; c++) img[(size_t)c * S * S + (size_t)y * S + x] = (v[c] - 0.45f) / 0.25f;
        }
    area[0] = area[1] = 0;
    for (int i = 0; i < S * S; i++)
        if (owner[i] >= 0) area[owner[i]]++;
    int label = cls[area[1] > area[0] ? 1 : 0];
    for (int k = 0; k < NCLS; k++) tcls[k] = (k == label ? 1.0f - smoothing : 0.0f) + smoothing / NCLS;
    for (int ty = 0; ty < g; ty++)
        for (int tx = 0; tx < g; tx++) {
            int cnt[3] = {0, 0, 0};
            for (int y = ty * P; y < ty * P + P; y++)
                for (int x = tx * P; x < tx * P + P; x++) cnt[owner[y * S + x] + 1]++;
            int best = cnt[1] >= cnt[2] ? 0 : 1, k = cnt[best + 1] > 0 ? cls[best] : label;
            float *t = tdense + ((size_t)ty * g + tx) * NCLS;
            for (int j = 0; j < NCLS; j++) t[j] = (j == k ? 1.0f - smoothing : 0.0f) + smoothing / NCLS;
        }
    free(owner);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int demo(int steps) {
    char err[TL_ERR_LEN];
    tl_config c = {32, 8, 96, 4, 4, 3.0f, 24, 1.0f, NCLS, 0.05f};
    int B = 32, S = c.img_size, N = tl_config_tokens(&c), g = tl_config_grid(&c), K = NCLS, nval = 256;
    tl_model *m = tl_model_new(&c, 42, err, sizeof err);
    tl_ctx *ctx = m ? tl_ctx_new(m, B, 1, 2, err, sizeof err) : NULL;
    if (!ctx) {
        fprintf(stderr, "tokenlabd demo: %s\n", err);
        return 1;
    }
    printf("tokenlabd demo: LV-ViT %d px, patch %d, D %d, depth %d, %zu parameters, %d classes\n", S, c.patch_size,
           c.embed_dim, c.depth, tl_model_num_params(m), K);
    printf("BLAS: %s; CPU: %s\n", tl_blas_corename(), tl_cpu_features());
    size_t isz = (size_t)3 * S * S;
    float *img = malloc(sizeof(float) * isz * nval), *tc = malloc(sizeof(float) * (size_t)nval * K),
          *td = malloc(sizeof(float) * (size_t)nval * N * K), *scores = malloc(sizeof(float) * (size_t)B * K);
    rng r = {7};
    tl_adamw hp = {1e-3f, 0.05f, 0.9f, 0.999f, 1e-8f};
    tl_loss_weights lw = {1.0f, 0.5f};
    double t0 = now();
    for (int s = 1; s <= steps; s++) {
        for (int b = 0; b < B; b++)
            make_sample(&r, S, c.patch_size, 0.1f, img + b * isz, tc + (size_t)b * K, td + (size_t)b * N * K);
        float lam = rndf(&r);
        int cut = (int)(g * sqrtf(1.0f - lam)), cy = (int)(rnd(&r) % (unsigned)g), cx = (int)(rnd(&r) % (unsigned)g);
        tl_box box = {cy - cut / 2, cx - cut / 2, cy + cut / 2, cx + cut / 2};
        float warm = s < 50 ? (float)s / 50.0f : 1.0f;
        hp.lr = 1e-3f * warm * 0.5f * (1.0f + cosf((float)M_PI * (float)s / (float)steps));
        tl_loss_parts lp;
        tl_model_zero_grad(m);
        tl_forward(ctx, img, B, 1, &box, (uint64_t)s);
        tl_loss(ctx, tc, td, &lw, &lp);
        if (!isfinite(lp.loss)) {
            fprintf(stderr, "tokenlabd demo: loss diverged at step %d\n", s);
            return 1;
        }
        tl_backward(ctx);
        tl_ctx_adamw_step(ctx, &hp);
        if (s % 25 == 0 || s == 1) {
            double dt = now() - t0;
            printf("step %4d/%d  loss %.4f (cls %.4f, dense %.4f)  lr %.2e  %.0f img/s  ETA %.0fs\n", s, steps,
                   lp.loss, lp.loss_cls, lp.loss_dense, hp.lr, s * B / dt, dt / s * (steps - s));
            fflush(stdout);
        }
    }
    rng vr = {99};
    for (int i = 0; i < nval; i++)
        make_sample(&vr, S, c.patch_size, 0.0f, img + i * isz, tc + (size_t)i * K, td + (size_t)i * N * K);
    int correct = 0, tok_correct = 0;
    for (int i = 0; i < nval; i += B) {
        tl_predict(ctx, img + i * isz, B, scores);
        const float *aux = tl_logits_aux(ctx);
        for (int b = 0; b < B; b++) {
            correct += argmax(scores + b * K, K) == argmax(tc + (size_t)(i + b) * K, K);
            for (int n = 0; n < N; n++)
                tok_correct += argmax(aux + ((size_t)b * N + n) * K, K) == argmax(td + ((size_t)(i + b) * N + n) * K, K);
        }
    }
    printf("held-out: image top-1 %.1f%%, token top-1 %.1f%% (chance %.1f%%), %.1fs\n", 100.0 * correct / nval,
           100.0 * tok_correct / (nval * N), 100.0 / K, now() - t0);
    free(img);
    free(tc);
    free(td);
    free(scores);
    tl_ctx_free(ctx);
    tl_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-' ) {
        if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "--help"))) goto other;
        return cmd_serve(argc - 1, argv + 1); /* serve is the default */
    }
    if (strcmp(argv[1], "serve") == 0) return cmd_serve(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "run") == 0) return cmd_run(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "synth") == 0) return cmd_synth(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "demo") == 0) {
        int steps = argc >= 3 ? atoi(argv[2]) : 300;
        if (steps < 1) {
            fprintf(stderr, "tokenlabd demo: STEPS must be a positive integer\n");
            return 2;
        }
        return demo(steps);
    }
other:
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0)) {
        printf("tokenlabd %s\n", TL_VERSION);
        return 0;
    }
    fprintf(stderr, "usage: tokenlabd [serve] [options]            the daemon (see tokenlabd serve --help)\n"
                    "       tokenlabd run SPEC.json [--out DIR]   train one job in the foreground\n"
                    "       tokenlabd synth --out DIR [...]        write the synthetic dataset\n"
                    "       tokenlabd demo [STEPS]                 a quick engine check on generated pictures\n"
                    "       tokenlabd --version\n");
    return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
}
