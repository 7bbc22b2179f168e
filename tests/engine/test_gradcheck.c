/*
 * test_gradcheck.c: finite-difference gradient checks of every op in
 * engine/ops/ops.h and of the whole model through engine/include/tokenlab/model.h.
 *
 * Method: for each op a scalar objective L = sum(out * R) with a fixed random
 * R (double accumulation), so dout = R; central differences of L with respect
 * to every input / parameter element are compared with the op's backward.
 * Accumulated gradients (+=) start from known nonzero values and the increment
 * is checked; overwritten ones start from garbage. The forward passes, the
 * weight packings, tl_gemm, AdamW and the inference score are checked against
 * direct double-precision re-statements; gather/scatter and MixToken by
 * adjointness. Ops run with pool NULL and with tl_pool_new(2).
 *
 * Comparison (grad_close): a check passes when
 *   ||num - ana|| / ||num|| <= tol   and, for every element,
 *   |num - ana| <= tol * (max(|num|, |ana|) + rms(num)).
 * test_comparison_rejects and the linear / model checks make sure a gradient
 * scaled by 1.1 is rejected.
 *
 * The whole-model check (tiny LV-ViT, batch 3, MixToken box) perturbs sampled
 * elements of every parameter tensor; see model_check for how the ReLU kinks
 * of the stem are handled. TL_GRADCHECK_SEED=<n> re-runs everything on other
 * random data (500 seeds were run while writing this test).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "core/pool.h"
#include "isa_gate.h"
#include "tokenlab/model.h"

/* ------------------------------------------------------------------------ */
/* deterministic RNG (splitmix64)                                            */
/* ------------------------------------------------------------------------ */
/* TL_GRADCHECK_SEED=<n> re-runs every randomized case on other data. */
static uint64_t g_seed = 0;

static uint64_t sm64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double urand(uint64_t *s) { return (double)(sm64(s) >> 11) * (1.0 / 9007199254740992.0); }
static float unif(uint64_t *s, double lo, double hi) { return (float)(lo + (hi - lo) * urand(s)); }
static float gauss(uint64_t *s) {
    double u1 = urand(s), u2 = urand(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static void fill_unif(float *x, size_t n, uint64_t *s, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = unif(s, lo, hi);
}
static void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

/* TL_TEST_EMULATED=1: the test runs under an emulator (qemu-user, for a cross build; tests/CMakeLists.txt
 * sets it there), where floating point is about a hundred times slower. */
static int emulated(void) {
    const char *e = getenv("TL_TEST_EMULATED");
    return e && *e && strcmp(e, "0") != 0;
}

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}
static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    assert_non_null(p);
    return p;
}
static float *fdup(const float *x, size_t n) {
    float *p = falloc(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

static double dotf(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

/* ------------------------------------------------------------------------ */
/* comparison                                                                */
/* ------------------------------------------------------------------------ */
/* num entries that are NaN were skipped (e.g. a ReLU kink inside the step);
 * at most 10% may be. Returns 1 when num and ana agree. */
/* atol: absolute noise floor; scale: a floor for the gradient magnitude (the
 * op checks use 0 and 0; the whole-model check, which samples a few elements
 * per tensor, uses the float32 forward's noise level and the tensor's RMS). */
static int grad_close_a(const char *what, const double *num, const double *ana, size_t n, double tol, double atol,
                        double scale, double max_skip, int quiet) {
    double nn = 0, nd = 0;
    size_t used = 0, skipped = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(num[i])) {
            skipped++;
            continue;
        }
        nn += num[i] * num[i];
        nd += (num[i] - ana[i]) * (num[i] - ana[i]);
        used++;
    }
    double rms = used ? fmax(sqrt(nn / (double)used), scale) : 0;
    double rel = nd > 0 ? sqrt(nd) / fmax(rms * sqrt((double)used) + atol * sqrt((double)used), 1e-300) : 0;
    if (isnan(nd)) rel = INFINITY;
    size_t bad = 0, worst = 0;
    double worst_ratio = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(num[i])) continue;
        double err = fabs(num[i] - ana[i]);
        double bound = tol * (fmax(fabs(num[i]), fabs(ana[i])) + rms) + atol;
        double ratio = bound > 0 ? err / bound : (err > 0 ? INFINITY : 0);
        if (!isfinite(ana[i])) ratio = INFINITY;
        if (!(ratio <= 1)) bad++;
        if (!(ratio <= worst_ratio)) {
            worst_ratio = ratio;
            worst = i;
        }
    }
    int ok = used > 0 && rel <= tol && bad == 0 && (double)skipped <= max_skip * (double)n;
    if (!quiet) {
        printf("  %-40s n=%-5zu rel=%.2e worst=%.2f (i=%zu num=% .6e ana=% .6e)%s", what, n, rel, worst_ratio, worst,
               num[worst], ana[worst], ok ? "" : "  FAIL");
        if (skipped) printf(" skipped=%zu", skipped);
        printf("\n");
        if (!ok) {
            int shown = 0;
            for (size_t i = 0; i < n && shown < 8; i++) {
                if (isnan(num[i])) continue;
                double err = fabs(num[i] - ana[i]);
                double bound = tol * (fmax(fabs(num[i]), fabs(ana[i])) + rms) + atol;
                if (err > bound || !isfinite(ana[i])) {
                    printf("      [%zu] num=% .8e ana=% .8e diff=% .3e\n", i, num[i], ana[i], ana[i] - num[i]);
                    shown++;
                }
            }
        }
        fflush(stdout);
    }
    return ok;
}

static int grad_close(const char *what, const double *num, const double *ana, size_t n, double tol, int quiet) {
    return grad_close_a(what, num, ana, n, tol, 0, 0, 0.1, quiet);
}

static int grad_close_f(const char *what, const double *num, const float *ana, size_t n, double tol, int quiet) {
    double *a = dalloc(n);
    for (size_t i = 0; i < n; i++) a[i] = ana[i];
    int ok = grad_close(what, num, a, n, tol, quiet);
    free(a);
    return ok;
}

/* Increment check: ana = after - before, for accumulated gradients. */
static int grad_close_inc(const char *what, const double *num, const float *after, const float *before, size_t n,
                          double tol) {
    double *a = dalloc(n);
    for (size_t i = 0; i < n; i++) a[i] = (double)after[i] - (double)before[i];
    int ok = grad_close(what, num, a, n, tol, 0);
    free(a);
    return ok;
}

/* Forward / value comparison against a double reference:
 * |got - ref| <= atol + rtol * |ref| for every element. */
static int values_close(const char *what, const float *got, const double *ref, size_t n, double rtol, double atol) {
    size_t bad = 0, worst = 0;
    double worst_err = -1;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        double bound = atol + rtol * fabs(ref[i]);
        if (!(err <= bound)) bad++;
        double r = bound > 0 ? err / bound : (err == 0 ? 0 : INFINITY);
        if (!(r <= worst_err)) {
            worst_err = r;
            worst = i;
        }
    }
    printf("  %-40s n=%-5zu worst=%.2f (i=%zu got=% .7e ref=% .7e)%s\n", what, n, worst_err, worst,
           n ? (double)got[worst] : 0.0, n ? ref[worst] : 0.0, bad ? "  FAIL" : "");
    fflush(stdout);
    return bad == 0;
}

/* ------------------------------------------------------------------------ */
/* central differences                                                       */
/* ------------------------------------------------------------------------ */
typedef double (*obj_fn)(void *ctx);
/* Optional: a hash of the sign pattern of pre-activations, to detect a ReLU
 * kink inside [x-h, x+h]; probes that cross one are marked NaN (skipped). */
typedef uint64_t (*pattern_fn)(void *ctx);

static void fd_grad(obj_fn f, void *ctx, float *x, size_t nidx, const size_t *idx, double h, double *num,
                    pattern_fn pat) {
    for (size_t k = 0; k < nidx; k++) {
        size_t i = idx ? idx[k] : k;
        float orig = x[i];
        num[k] = NAN;
        /* with a pattern: shrink the step until no kink lies inside it */
        double hh = h;
        for (int tries = 0; tries < (pat ? 4 : 1); tries++, hh /= 4) {
            float xp = (float)(orig + hh), xm = (float)(orig - hh);
            x[i] = xp;
            double lp = f(ctx);
            uint64_t pp = pat ? pat(ctx) : 0;
            x[i] = xm;
            double lm = f(ctx);
            uint64_t pm = pat ? pat(ctx) : 0;
            x[i] = orig;
            if (pat && pp != pm) continue;
            num[k] = (lp - lm) / ((double)xp - (double)xm);
            break;
        }
    }
}

/* ======================================================================== */
/* sanity: the comparison rejects a wrong gradient                           */
/* ======================================================================== */
static void test_comparison_rejects(void **state) {
    (void)state;
    uint64_t s = 99;
    size_t n = 50;
    double *num = dalloc(n), *ana = dalloc(n);
    for (size_t i = 0; i < n; i++) {
        num[i] = gauss(&s);
        ana[i] = num[i] * (1 + 1e-4 * gauss(&s));
    }
    assert_true(grad_close("sanity: nearly equal", num, ana, n, 1e-2, 1));
    for (size_t i = 0; i < n; i++) ana[i] = num[i] * 1.1;
    assert_false(grad_close("sanity: x1.1", num, ana, n, 1e-2, 1));
    for (size_t i = 0; i < n; i++) ana[i] = num[i];
    ana[7] = -num[7];
    assert_false(grad_close("sanity: one sign flipped", num, ana, n, 1e-2, 1));
    ana[7] = NAN;
    assert_false(grad_close("sanity: NaN analytic", num, ana, n, 1e-2, 1));
    free(num);
    free(ana);
}

/* ======================================================================== */
/* tl_gemm                                                                   */
/* ======================================================================== */
static void gemm_case(tl_pool *p, int tA, int tB, int M, int N, int K, float alpha, float beta, uint64_t seed,
                      int nan_c) {
    uint64_t s = seed * 7919 + g_seed;
    int lda = (tA ? M : K) + 3, ldb = (tB ? K : N) + 2, ldc = N + 5;
    size_t na = (size_t)(tA ? K : M) * lda, nb = (size_t)(tB ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = falloc(na), *Bm = falloc(nb), *C = falloc(nc);
    fill_unif(A, na, &s, -1, 1);
    fill_unif(Bm, nb, &s, -1, 1);
    fill_unif(C, nc, &s, -1, 1);
    if (nan_c)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = NAN;
    float *C0 = fdup(C, nc);
    tl_gemm(p, tA, tB, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
    double *ref = dalloc((size_t)M * N);
    float *got = falloc((size_t)M * N);
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0, mag = 0;
            for (int l = 0; l < K; l++) {
                double a = tA ? A[(size_t)l * lda + i] : A[(size_t)i * lda + l];
                double b = tB ? Bm[(size_t)j * ldb + l] : Bm[(size_t)l * ldb + j];
                acc += a * b;
                mag += fabs(a * b);
            }
            double c0 = nan_c ? 0 : C0[(size_t)i * ldc + j];
            double r = alpha * acc + (beta != 0 ? beta * c0 : 0);
            double tol = 2e-6 * (fabs(alpha) * mag + fabs(beta * c0)) + 1e-6;
            double g = C[(size_t)i * ldc + j];
            double e = fabs(g - r) / tol;
            if (!(e <= 1)) bad++;
            if (!(e <= worst)) worst = e;
            ref[(size_t)i * N + j] = r;
            got[(size_t)i * N + j] = (float)g;
        }
    /* the padding columns of C are untouched */
    int pad_bad = 0;
    for (int i = 0; i < M; i++)
        for (int j = N; j < ldc; j++)
            if (memcmp(&C[(size_t)i * ldc + j], &C0[(size_t)i * ldc + j], sizeof(float))) pad_bad++;
    printf("  gemm tA=%d tB=%d M=%d N=%d K=%d beta=%g%s pool=%d: worst=%.3f%s%s\n", tA, tB, M, N, K, beta,
           nan_c ? "(C=NaN)" : "", tl_pool_size(p), worst, bad ? "  FAIL" : "", pad_bad ? "  PADDING WRITTEN" : "");
    assert_int_equal(bad, 0);
    assert_int_equal(pad_bad, 0);
    free(A);
    free(Bm);
    free(C);
    free(C0);
    free(ref);
    free(got);
}

static void test_gemm(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    static const int shapes[][3] = {{37, 29, 23}, {3, 70, 5}, {64, 1, 17}, {1, 9, 40}};
    uint64_t seed = 1000;
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
        for (int tA = 0; tA < 2; tA++)
            for (int tB = 0; tB < 2; tB++) {
                gemm_case(p2, tA, tB, shapes[sh][0], shapes[sh][1], shapes[sh][2], 0.75f, 0.5f, seed++, 0);
                if (sh == 0) gemm_case(NULL, tA, tB, shapes[sh][0], shapes[sh][1], shapes[sh][2], -1.25f, 1.0f, seed++, 0);
            }
    /* beta == 0: C is not read (BLAS semantics), so NaN in C must not leak */
    gemm_case(p2, 0, 1, 37, 29, 23, 1.0f, 0.0f, seed++, 1);
    gemm_case(NULL, 1, 0, 37, 29, 23, 1.0f, 0.0f, seed++, 1);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_conv2d (NHWC, packed weights)                                          */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *out, *in, *wt, *R, *scratch;
    int nchw, B, Cin, H, W, Cout, k, s, pad, Ho, Wo;
} conv_ctx;

static double conv_obj(void *v) {
    conv_ctx *c = v;
    tl_conv2d_forward(c->p, c->out, c->in, c->nchw, c->wt, c->B, c->Cin, c->H, c->W, c->Cout, c->k, c->s, c->pad,
                      c->scratch);
    return dotf(c->out, c->R, (size_t)c->B * c->Ho * c->Wo * c->Cout);
}

/* element (b, ci, y, x) of the input in either layout */
static size_t conv_in_index(const conv_ctx *c, int b, int ci, int y, int x) {
    if (c->nchw) return (((size_t)b * c->Cin + ci) * c->H + y) * c->W + x;
    return (((size_t)b * c->H + y) * c->W + x) * c->Cin + ci;
}

/* w_every: the weight gradient is checked by finite differences at every
 * w_every-th weight (1: all of them) */
static void conv_case_n(tl_pool *p, int nchw, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                        uint64_t seed, size_t w_every) {
    uint64_t s = seed * 7919 + g_seed;
    conv_ctx c;
    memset(&c, 0, sizeof c);
    c.p = p;
    c.nchw = nchw, c.B = B, c.Cin = Cin, c.H = H, c.W = W, c.Cout = Cout, c.k = k, c.s = stride, c.pad = pad;
    c.Ho = tl_conv_out(H, k, stride, pad);
    c.Wo = tl_conv_out(W, k, stride, pad);
    size_t nin = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * k * k;
    size_t nout = (size_t)B * c.Ho * c.Wo * Cout;
    float *w = falloc(nw);
    c.in = falloc(nin);
    c.wt = falloc(nw);
    c.out = falloc(nout);
    c.R = falloc(nout);
    fill_unif(c.in, nin, &s, -1, 1);
    fill_unif(w, nw, &s, -0.5, 0.5);
    fill_unif(c.R, nout, &s, -1, 1);
    size_t nscr = tl_conv2d_scratch(tl_pool_size(p), Cin, Cout, c.Ho, c.Wo, k);
    c.scratch = falloc(nscr);
    char tag[64], name[128];
    snprintf(tag, sizeof tag, "conv %s k%d s%d p%d %dx%d", nchw ? "NCHW" : "NHWC", k, stride, pad, H, W);

    /* weight packing (Cout,Cin,k,k) -> (k,k,Cin,Cout) */
    tl_conv_weight_pack(c.wt, w, Cout, Cin, k);
    double *wref = dalloc(nw);
    for (int o = 0; o < Cout; o++)
        for (int ci = 0; ci < Cin; ci++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    wref[(((size_t)ky * k + kx) * Cin + ci) * Cout + o] = w[(((size_t)o * Cin + ci) * k + ky) * k + kx];
    snprintf(name, sizeof name, "%s weight pack", tag);
    assert_true(values_close(name, c.wt, wref, nw, 0, 0));

    /* forward against a direct double reference */
    conv_obj(&c);
    double *ref = dalloc(nout);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < c.Ho; y++)
            for (int x = 0; x < c.Wo; x++)
                for (int o = 0; o < Cout; o++) {
                    double acc = 0;
                    for (int ci = 0; ci < Cin; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = y * stride - pad + ky, ix = x * stride - pad + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                acc += (double)c.in[conv_in_index(&c, b, ci, iy, ix)] *
                                       w[(((size_t)o * Cin + ci) * k + ky) * k + kx];
                            }
                    ref[(((size_t)b * c.Ho + y) * c.Wo + x) * Cout + o] = acc;
                }
    snprintf(name, sizeof name, "%s forward", tag);
    assert_true(values_close(name, c.out, ref, nout, 1e-5, 1e-5));

    /* backward: din overwritten (prefilled garbage), dwt accumulated */
    float *din = nchw ? NULL : falloc(nin), *dwt = falloc(nw);
    if (din) fill_const(din, nin, 123.0f);
    fill_unif(dwt, nw, &s, -1, 1);
    float *dwt0 = fdup(dwt, nw);
    tl_conv2d_backward(p, din, dwt, c.R, c.in, nchw, c.wt, B, Cin, H, W, Cout, k, stride, pad, c.scratch);

    double *num = dalloc(nin > nw ? nin : nw);
    if (din) {
        fd_grad(conv_obj, &c, c.in, nin, NULL, 0.05, num, NULL);
        snprintf(name, sizeof name, "%s din", tag);
        assert_true(grad_close_f(name, num, din, nin, 1e-3, 0));
    }
    {
        size_t nsel = (nw + w_every - 1) / w_every, *idx = malloc(sizeof(size_t) * nsel);
        float *got = falloc(nsel), *got0 = falloc(nsel);
        assert_non_null(idx);
        for (size_t i = 0; i < nsel; i++) idx[i] = i * w_every, got[i] = dwt[idx[i]], got0[i] = dwt0[idx[i]];
        fd_grad(conv_obj, &c, c.wt, nsel, idx, 0.05, num, NULL);
        snprintf(name, sizeof name, "%s dwt (+=, packed, %zu of %zu)", tag, nsel, nw);
        assert_true(grad_close_inc(name, num, got, got0, nsel, 1e-3));
        free(idx), free(got), free(got0);
    }

    /* din == NULL gives the same dwt */
    if (din) {
        float *dw2 = fdup(dwt0, nw);
        tl_conv2d_backward(p, NULL, dw2, c.R, c.in, nchw, c.wt, B, Cin, H, W, Cout, k, stride, pad, c.scratch);
        double maxd = 0;
        for (size_t i = 0; i < nw; i++) maxd = fmax(maxd, fabs((double)dw2[i] - dwt[i]));
        printf("  %s din=NULL: max |dwt - dwt(with din)| = %.3e\n", tag, maxd);
        assert_true(maxd <= 1e-5);
        free(dw2);
    }

    /* unpack: dw += unpacked (dwt - dwt0) */
    {
        float *inc = falloc(nw), *dw = falloc(nw);
        for (size_t i = 0; i < nw; i++) inc[i] = dwt[i] - dwt0[i];
        fill_unif(dw, nw, &s, -1, 1);
        float *dw0 = fdup(dw, nw);
        tl_conv_weight_unpack_accum(dw, inc, Cout, Cin, k);
        for (int o = 0; o < Cout; o++)
            for (int ci = 0; ci < Cin; ci++)
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++)
                        wref[(((size_t)o * Cin + ci) * k + ky) * k + kx] =
                            (double)dw0[(((size_t)o * Cin + ci) * k + ky) * k + kx] +
                            inc[(((size_t)ky * k + kx) * Cin + ci) * Cout + o];
        snprintf(name, sizeof name, "%s weight unpack_accum", tag);
        assert_true(values_close(name, dw, wref, nw, 1e-6, 1e-7));
        free(inc), free(dw), free(dw0);
    }

    free(w), free(c.in), free(c.wt), free(c.out), free(c.R), free(c.scratch), free(ref), free(wref), free(din);
    free(dwt), free(dwt0), free(num);
}

static void conv_case(tl_pool *p, int nchw, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                      uint64_t seed) {
    conv_case_n(p, nchw, B, Cin, H, W, Cout, k, stride, pad, seed, 1);
}

static void test_conv2d(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    /* stem conv1 shape: k7 s2 p3, odd sizes; images enter NCHW */
    conv_case(NULL, 1, 2, 3, 11, 9, 4, 7, 2, 3, 11);
    conv_case(p2, 1, 3, 3, 9, 11, 3, 7, 2, 3, 12);
    conv_case(p2, 0, 2, 3, 9, 7, 4, 7, 2, 3, 15);
    /* conv2/3 shape: k3 s1 p1, NHWC */
    conv_case(p2, 0, 3, 4, 7, 5, 3, 3, 1, 1, 13);
    conv_case(NULL, 0, 3, 4, 5, 7, 5, 3, 1, 1, 14);
    conv_case(NULL, 1, 2, 2, 5, 7, 3, 3, 1, 1, 16);
    /* 64 channels to 64: the row path on the AVX-512 or AVX2 kernels (the
     * kernel level this run tests), every 37th weight's gradient. Rows of 9 pixels (odd: row by row,
     * a register block of 7 and single pixels, 2 threads); 4x8 (row pairs by
     * Winograd, 4 tiles a row); 5x6 (two pairs by Winograd, the odd last row
     * direct, 2 threads); 2x16 (8 tiles: a block of 7 and one). 32 channels
     * to 32: the row path at the AVX2 level (im2col + sgemm at the others):
     * row pairs by Winograd (4x8), odd widths row by row (3x7). Under an
     * emulator the 64-channel cases take over ten minutes and, off x86-64,
     * run the im2col path of the cases above: left out there. */
    if (emulated()) {
        printf("  64-channel cases left out under TL_TEST_EMULATED\n");
    } else {
        conv_case_n(p2, 0, 2, 64, 3, 9, 64, 3, 1, 1, 17, 37);
        conv_case_n(NULL, 0, 1, 64, 4, 8, 64, 3, 1, 1, 18, 37);
        conv_case_n(p2, 0, 2, 64, 5, 6, 64, 3, 1, 1, 19, 37);
        conv_case_n(NULL, 0, 1, 64, 2, 16, 64, 3, 1, 1, 20, 37);
    }
    conv_case_n(p2, 0, 2, 32, 4, 8, 32, 3, 1, 1, 21, 13);
    conv_case_n(NULL, 0, 1, 32, 3, 7, 32, 3, 1, 1, 22, 13);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_bn over NHWC rows (M,C)                                                */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *y, *z, *mean, *rstd, *x, *gamma, *beta, *rm, *rv, *rm0, *rv0, *R, *scratch;
    int C;
    size_t M;
    int relu;
} bn_ctx;

#define BNX(c, m, ch) ((c).x[(size_t)(m) * (size_t)(c).C + (size_t)(ch)])

static double bn_obj(void *v) {
    bn_ctx *c = v;
    memcpy(c->rm, c->rm0, (size_t)c->C * sizeof(float));
    memcpy(c->rv, c->rv0, (size_t)c->C * sizeof(float));
    tl_bn_forward(c->p, c->y, c->mean, c->rstd, c->x, c->gamma, c->beta, c->rm, c->rv, c->C, c->M, 1, 0.1f, 1e-5f,
                  c->relu, c->scratch);
    return dotf(c->y, c->R, (size_t)c->C * c->M);
}

/* sign pattern of the pre-activation (relu=0 forward) */
static uint64_t bn_pattern(void *v) {
    bn_ctx *c = v;
    float *mean = falloc((size_t)c->C), *rstd = falloc((size_t)c->C);
    memcpy(c->rm, c->rm0, (size_t)c->C * sizeof(float));
    memcpy(c->rv, c->rv0, (size_t)c->C * sizeof(float));
    tl_bn_forward(c->p, c->z, mean, rstd, c->x, c->gamma, c->beta, c->rm, c->rv, c->C, c->M, 1, 0.1f, 1e-5f, 0,
                  c->scratch);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < (size_t)c->C * c->M; i++) h = (h ^ (uint64_t)(c->z[i] > 0)) * 1099511628211ull;
    free(mean);
    free(rstd);
    return h;
}

static void bn_case(tl_pool *p, int relu, int C, size_t M, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    bn_ctx c;
    memset(&c, 0, sizeof c);
    c.p = p, c.C = C, c.M = M, c.relu = relu;
    size_t n = (size_t)C * M;
    c.x = falloc(n), c.y = falloc(n), c.z = falloc(n), c.R = falloc(n);
    c.mean = falloc(C), c.rstd = falloc(C), c.gamma = falloc(C), c.beta = falloc(C);
    c.rm = falloc(C), c.rv = falloc(C), c.rm0 = falloc(C), c.rv0 = falloc(C);
    c.scratch = falloc(tl_bn_scratch(tl_pool_size(p), C));
    for (int ch = 0; ch < C; ch++) {
        float mu = unif(&s, -1, 1), sd = unif(&s, 0.5, 2.0);
        for (size_t i = 0; i < M; i++) BNX(c, i, ch) = mu + sd * gauss(&s);
        c.gamma[ch] = unif(&s, 0.5, 1.5);
        c.beta[ch] = unif(&s, -0.3, 0.3);
        c.rm0[ch] = unif(&s, -0.2, 0.2);
        c.rv0[ch] = unif(&s, 0.8, 1.2);
    }
    fill_unif(c.R, n, &s, -1, 1);
    if (relu) {
        /* Keep every pre-activation at least 0.02 away from the ReLU kink, so
         * no finite-difference step below can cross it (the kink check in
         * fd_grad is then only a safety net). Moving one x shifts the channel
         * statistics a little, hence the few passes. */
        for (int pass = 0; pass < 20; pass++) {
            int moved = 0;
            for (int ch = 0; ch < C; ch++) {
                double mu = 0, var = 0;
                for (size_t i = 0; i < M; i++) mu += BNX(c, i, ch);
                mu /= (double)M;
                for (size_t i = 0; i < M; i++) var += (BNX(c, i, ch) - mu) * (BNX(c, i, ch) - mu);
                double a = c.gamma[ch] / sqrt(var / (double)M + 1e-5);
                for (size_t i = 0; i < M; i++) {
                    double z = (BNX(c, i, ch) - mu) * a + c.beta[ch];
                    if (fabs(z) < 0.02) {
                        BNX(c, i, ch) += (float)((z >= 0 ? 0.05 : -0.05) / a);
                        moved++;
                    }
                }
            }
            if (!moved) break;
        }
    }
    char name[96];

    /* forward statistics, output and running stats against double */
    bn_obj(&c);
    double *ref = dalloc(n), *rmean = dalloc(C), *rrstd = dalloc(C), *rrm = dalloc(C), *rrv = dalloc(C);
    for (int ch = 0; ch < C; ch++) {
        double mu = 0, var = 0;
        for (size_t i = 0; i < M; i++) mu += BNX(c, i, ch);
        mu /= (double)M;
        for (size_t i = 0; i < M; i++) var += (BNX(c, i, ch) - mu) * (BNX(c, i, ch) - mu);
        double vb = var / (double)M, vu = var / (double)(M - 1);
        double rs = 1.0 / sqrt(vb + 1e-5);
        rmean[ch] = mu, rrstd[ch] = rs;
        rrm[ch] = 0.9 * c.rm0[ch] + 0.1 * mu;
        rrv[ch] = 0.9 * c.rv0[ch] + 0.1 * vu;
        for (size_t i = 0; i < M; i++) {
            double yv = (BNX(c, i, ch) - mu) * rs * c.gamma[ch] + c.beta[ch];
            ref[i * C + ch] = relu && yv < 0 ? 0 : yv;
        }
    }
    snprintf(name, sizeof name, "bn%s C%d M%zu train forward y", relu ? "+relu" : "", C, M);
    assert_true(values_close(name, c.y, ref, n, 1e-4, 1e-5));
    assert_true(values_close("bn train mean", c.mean, rmean, C, 1e-5, 1e-6));
    assert_true(values_close("bn train rstd", c.rstd, rrstd, C, 1e-4, 0));
    assert_true(values_close("bn running_mean (momentum 0.1)", c.rm, rrm, C, 1e-5, 1e-6));
    assert_true(values_close("bn running_var (unbiased)", c.rv, rrv, C, 1e-5, 1e-6));

    /* eval forward uses the running statistics */
    {
        float *ye = falloc(n), *me = falloc(C), *re = falloc(C);
        float *rm = fdup(c.rm0, C), *rv = fdup(c.rv0, C);
        tl_bn_forward(p, ye, me, re, c.x, c.gamma, c.beta, rm, rv, C, M, 0, 0.1f, 1e-5f, relu, c.scratch);
        for (int ch = 0; ch < C; ch++)
            for (size_t i = 0; i < M; i++) {
                double yv =
                    (BNX(c, i, ch) - c.rm0[ch]) / sqrt((double)c.rv0[ch] + 1e-5) * c.gamma[ch] + c.beta[ch];
                ref[i * C + ch] = relu && yv < 0 ? 0 : yv;
            }
        snprintf(name, sizeof name, "bn%s eval forward y", relu ? "+relu" : "");
        assert_true(values_close(name, ye, ref, n, 1e-5, 1e-5));
        for (int ch = 0; ch < C; ch++) rrm[ch] = c.rm0[ch], rrv[ch] = c.rv0[ch];
        assert_true(values_close("bn eval leaves running mean", rm, rrm, C, 0, 0));
        assert_true(values_close("bn eval leaves running var", rv, rrv, C, 0, 0));
        free(ye), free(me), free(re), free(rm), free(rv);
    }

    /* backward at the base point */
    bn_obj(&c);
    float *dx = falloc(n), *dg = falloc(C), *db = falloc(C);
    fill_const(dx, n, -77.0f);
    fill_unif(dg, C, &s, -1, 1);
    fill_unif(db, C, &s, -1, 1);
    float *dg0 = fdup(dg, C), *db0 = fdup(db, C);
    tl_bn_backward(p, dx, dg, db, c.R, c.x, c.y, c.mean, c.rstd, c.gamma, C, M, relu, c.scratch);

    /* dx may alias dy */
    {
        float *dd = fdup(c.R, n), *g2 = falloc(C), *b2 = falloc(C);
        tl_bn_backward(p, dd, g2, b2, dd, c.x, c.y, c.mean, c.rstd, c.gamma, C, M, relu, c.scratch);
        double md = 0;
        for (size_t i = 0; i < n; i++) md = fmax(md, fabs((double)dd[i] - dx[i]));
        printf("  bn%s backward dx aliasing dy: max diff %.3e\n", relu ? "+relu" : "", md);
        assert_true(md <= 1e-6);
        free(dd), free(g2), free(b2);
    }

    double *num = dalloc(n);
    pattern_fn pat = relu ? bn_pattern : NULL;
    fd_grad(bn_obj, &c, c.x, n, NULL, 2e-3, num, pat);
    snprintf(name, sizeof name, "bn%s C%d M%zu dx", relu ? "+relu" : "", C, M);
    assert_true(grad_close_f(name, num, dx, n, 1e-2, 0));
    fd_grad(bn_obj, &c, c.gamma, C, NULL, 2e-3, num, pat);
    snprintf(name, sizeof name, "bn%s C%d M%zu dgamma (+=)", relu ? "+relu" : "", C, M);
    assert_true(grad_close_inc(name, num, dg, dg0, C, 1e-2));
    fd_grad(bn_obj, &c, c.beta, C, NULL, 2e-3, num, pat);
    snprintf(name, sizeof name, "bn%s C%d M%zu dbeta (+=)", relu ? "+relu" : "", C, M);
    assert_true(grad_close_inc(name, num, db, db0, C, 1e-2));

    free(c.x), free(c.y), free(c.z), free(c.R), free(c.mean), free(c.rstd), free(c.gamma), free(c.beta);
    free(c.rm), free(c.rv), free(c.rm0), free(c.rv0), free(c.scratch);
    free(ref), free(rmean), free(rrstd), free(rrm), free(rrv), free(dx), free(dg), free(db), free(dg0), free(db0);
    free(num);
}

static void test_bn(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    bn_case(NULL, 0, 3, 2 * 5 * 3, 21);
    bn_case(p2, 1, 3, 2 * 5 * 3, 22);
    bn_case(p2, 0, 4, 3 * 7 * 5, 23);
    bn_case(NULL, 1, 5, 3 * 7 * 5, 24);
    bn_case(p2, 1, 16, 2 * 9 * 7, 25);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_patch_gather / tl_patch_scatter / patch weight packing (NHWC)         */
/* ======================================================================== */
static void patch_case(tl_pool *p, int B, int C, int H, int k, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    int W = H, g = H / k;
    size_t nx = (size_t)B * H * W * C, np = (size_t)B * g * g * k * k * C;
    float *x = falloc(nx), *y = falloc(np), *pt = falloc(np), *dx = falloc(nx);
    fill_unif(x, nx, &s, -1, 1);
    fill_unif(y, np, &s, -1, 1);
    fill_const(pt, np, 55.0f);
    tl_patch_gather(p, pt, x, B, C, H, W, k);
    /* direct reference of the layout: row (b,ty,tx), column (ky,kx,c) */
    double *ref = dalloc(np);
    for (int b = 0; b < B; b++)
        for (int ty = 0; ty < g; ty++)
            for (int tx = 0; tx < g; tx++)
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++)
                        for (int c = 0; c < C; c++) {
                            size_t row = ((size_t)b * g + ty) * g + tx;
                            size_t col = ((size_t)ky * k + kx) * C + c;
                            ref[row * ((size_t)C * k * k) + col] =
                                x[(((size_t)b * H + ty * k + ky) * W + tx * k + kx) * C + c];
                        }
    char name[96];
    snprintf(name, sizeof name, "patch_gather B%d C%d H%d k%d layout", B, C, H, k);
    assert_true(values_close(name, pt, ref, np, 0, 0));
    fill_const(dx, nx, -55.0f);
    tl_patch_scatter(p, dx, y, B, C, H, W, k);
    double lhs = dotf(pt, y, np), rhs = dotf(x, dx, nx);
    double rel = fabs(lhs - rhs) / fmax(fabs(lhs), 1e-30);
    printf("  patch adjoint B%d C%d H%d k%d: <gather x,y>=% .12e <x,scatter y>=% .12e rel=%.2e\n", B, C, H, k, lhs,
           rhs, rel);
    assert_true(rel <= 1e-9);

    /* projection weight packing (D,C,k,k) <-> (D, k*k*C) */
    int D = 3;
    size_t nw = (size_t)D * C * k * k;
    float *w = falloc(nw), *wp = falloc(nw), *dw = falloc(nw);
    fill_unif(w, nw, &s, -1, 1);
    fill_unif(dw, nw, &s, -1, 1);
    float *dw0 = fdup(dw, nw);
    double *wref = dalloc(nw);
    tl_patch_weight_pack(wp, w, D, C, k);
    for (int d = 0; d < D; d++)
        for (int c = 0; c < C; c++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    wref[(size_t)d * C * k * k + ((size_t)ky * k + kx) * C + c] =
                        w[(((size_t)d * C + c) * k + ky) * k + kx];
    assert_true(values_close("patch weight pack", wp, wref, nw, 0, 0));
    tl_patch_weight_unpack_accum(dw, wp, D, C, k);
    for (size_t i = 0; i < nw; i++) wref[i] = (double)dw0[i] + w[i];
    assert_true(values_close("patch weight unpack_accum (dw += w)", dw, wref, nw, 1e-6, 1e-7));
    free(x), free(y), free(pt), free(dx), free(ref), free(w), free(wp), free(dw), free(dw0), free(wref);
}

static void test_patch(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    patch_case(NULL, 2, 3, 12, 4, 31);
    patch_case(p2, 3, 5, 8, 4, 32);
    patch_case(p2, 1, 2, 6, 2, 33);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_linear                                                                 */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *out, *in, *w, *b, *R;
    int ldo, ldi, M, K, N;
} lin_ctx;

static double lin_obj(void *v) {
    lin_ctx *c = v;
    tl_linear_forward(c->p, c->out, c->ldo, c->in, c->ldi, c->w, c->b, c->M, c->K, c->N);
    double s = 0;
    for (int i = 0; i < c->M; i++)
        for (int j = 0; j < c->N; j++) s += (double)c->out[(size_t)i * c->ldo + j] * c->R[(size_t)i * c->ldo + j];
    return s;
}

static void linear_case(tl_pool *p, int M, int K, int N, int ldi, int ldo, int with_bias, int din_null,
                        uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    lin_ctx c = {0};
    c.p = p, c.M = M, c.K = K, c.N = N, c.ldi = ldi, c.ldo = ldo;
    size_t nin = (size_t)M * ldi, nout = (size_t)M * ldo, nw = (size_t)N * K;
    c.in = falloc(nin), c.out = falloc(nout), c.R = falloc(nout), c.w = falloc(nw);
    c.b = with_bias ? falloc(N) : NULL;
    fill_unif(c.in, nin, &s, -1, 1);
    fill_unif(c.w, nw, &s, -0.5, 0.5);
    if (c.b) fill_unif(c.b, N, &s, -0.5, 0.5);
    fill_unif(c.R, nout, &s, -1, 1);
    fill_const(c.out, nout, 999.0f);
    char tag[64];
    snprintf(tag, sizeof tag, "linear M%d K%d N%d ld%d/%d%s", M, K, N, ldi, ldo, with_bias ? "" : " nobias");
    char name[128];

    lin_obj(&c);
    double *ref = dalloc((size_t)M * N);
    float *got = falloc((size_t)M * N);
    int pad_bad = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double a = c.b ? c.b[j] : 0;
            for (int l = 0; l < K; l++) a += (double)c.in[(size_t)i * ldi + l] * c.w[(size_t)j * K + l];
            ref[(size_t)i * N + j] = a;
            got[(size_t)i * N + j] = c.out[(size_t)i * ldo + j];
        }
        for (int j = N; j < ldo; j++) pad_bad += c.out[(size_t)i * ldo + j] != 999.0f;
    }
    snprintf(name, sizeof name, "%s forward", tag);
    assert_true(values_close(name, got, ref, (size_t)M * N, 1e-5, 1e-5));
    if (pad_bad) printf("  %s: forward wrote %d padding elements  FAIL\n", tag, pad_bad);
    assert_int_equal(pad_bad, 0);

    float *din = falloc(nin), *dw = falloc(nw), *db = falloc(N);
    fill_const(din, nin, 321.0f);
    fill_unif(dw, nw, &s, -1, 1);
    fill_unif(db, N, &s, -1, 1);
    float *dw0 = fdup(dw, nw), *db0 = fdup(db, N);
    tl_linear_backward(p, din_null ? NULL : din, dw, db, c.R, ldo, c.in, ldi, c.w, M, K, N);

    double *num = dalloc(nin > nw ? nin : nw);
    if (!din_null) {
        /* only the real (non-padding) columns of in */
        size_t *idx = calloc((size_t)M * K, sizeof(size_t));
        assert_non_null(idx);
        float *dsub = falloc((size_t)M * K);
        int dpad_bad = 0;
        for (int i = 0; i < M; i++) {
            for (int l = 0; l < K; l++) {
                idx[(size_t)i * K + l] = (size_t)i * ldi + l;
                dsub[(size_t)i * K + l] = din[(size_t)i * ldi + l];
            }
            for (int l = K; l < ldi; l++) dpad_bad += din[(size_t)i * ldi + l] != 321.0f;
        }
        fd_grad(lin_obj, &c, c.in, (size_t)M * K, idx, 0.05, num, NULL);
        snprintf(name, sizeof name, "%s din", tag);
        assert_true(grad_close_f(name, num, dsub, (size_t)M * K, 1e-3, 0));
        if (dpad_bad) printf("  %s: backward wrote %d padding elements of din  FAIL\n", tag, dpad_bad);
        assert_int_equal(dpad_bad, 0);
        free(idx), free(dsub);
    }
    fd_grad(lin_obj, &c, c.w, nw, NULL, 0.05, num, NULL);
    snprintf(name, sizeof name, "%s dw (+=)", tag);
    assert_true(grad_close_inc(name, num, dw, dw0, nw, 1e-3));
    {
        /* the comparison rejects a gradient that is 10% off */
        double *bad = dalloc(nw);
        for (size_t i = 0; i < nw; i++) bad[i] = 1.1 * ((double)dw[i] - dw0[i]);
        assert_false(grad_close("sanity: dw x1.1 rejected", num, bad, nw, 1e-2, 1));
        free(bad);
    }
    if (c.b) {
        fd_grad(lin_obj, &c, c.b, N, NULL, 0.05, num, NULL);
        snprintf(name, sizeof name, "%s db (+=)", tag);
        assert_true(grad_close_inc(name, num, db, db0, N, 1e-3));
    } else {
        /* db = column sums of dout even without a forward bias */
        for (int j = 0; j < N; j++) {
            num[j] = 0;
            for (int i = 0; i < M; i++) num[j] += c.R[(size_t)i * ldo + j];
        }
        snprintf(name, sizeof name, "%s db (+=, colsum)", tag);
        assert_true(grad_close_inc(name, num, db, db0, N, 1e-3));
    }
    free(c.in), free(c.out), free(c.R), free(c.w), free(c.b), free(ref), free(got), free(din), free(dw), free(db);
    free(dw0), free(db0), free(num);
}

static void test_linear(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    linear_case(NULL, 7, 10, 6, 10, 6, 1, 0, 41);
    linear_case(p2, 7, 10, 6, 13, 8, 1, 0, 42);
    linear_case(p2, 9, 5, 11, 5, 11, 0, 0, 43);
    linear_case(NULL, 6, 8, 3, 12, 7, 1, 1, 44);
    linear_case(p2, 33, 17, 13, 20, 15, 1, 0, 45);
    /* few rows and enough work to split: the forward splits the columns (whole 16-column panels, the
     * last one of 4) */
    linear_case(p2, 40, 80, 100, 90, 110, 1, 0, 46);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_layernorm                                                              */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *out, *mean, *rstd, *x, *w, *b, *R;
    int M, D;
} ln_ctx;

static double ln_obj(void *v) {
    ln_ctx *c = v;
    tl_layernorm_forward(c->p, c->out, c->mean, c->rstd, c->x, c->w, c->b, c->M, c->D, 1e-5f);
    return dotf(c->out, c->R, (size_t)c->M * c->D);
}

static void ln_case(tl_pool *p, int M, int D, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    ln_ctx c = {0};
    c.p = p, c.M = M, c.D = D;
    size_t n = (size_t)M * D;
    c.out = falloc(n), c.x = falloc(n), c.R = falloc(n), c.mean = falloc(M), c.rstd = falloc(M);
    c.w = falloc(D), c.b = falloc(D);
    for (int i = 0; i < M; i++) {
        float mu = unif(&s, -2, 2), sd = unif(&s, 0.5, 2);
        for (int j = 0; j < D; j++) c.x[(size_t)i * D + j] = mu + sd * gauss(&s);
    }
    fill_unif(c.w, D, &s, 0.5, 1.5);
    fill_unif(c.b, D, &s, -0.3, 0.3);
    fill_unif(c.R, n, &s, -1, 1);
    char name[96];

    ln_obj(&c);
    double *ref = dalloc(n), *rmean = dalloc(M), *rrstd = dalloc(M);
    for (int i = 0; i < M; i++) {
        double mu = 0, var = 0;
        for (int j = 0; j < D; j++) mu += c.x[(size_t)i * D + j];
        mu /= D;
        for (int j = 0; j < D; j++) var += (c.x[(size_t)i * D + j] - mu) * (c.x[(size_t)i * D + j] - mu);
        double rs = 1 / sqrt(var / D + 1e-5);
        rmean[i] = mu, rrstd[i] = rs;
        for (int j = 0; j < D; j++) ref[(size_t)i * D + j] = (c.x[(size_t)i * D + j] - mu) * rs * c.w[j] + c.b[j];
    }
    snprintf(name, sizeof name, "layernorm M%d D%d forward", M, D);
    assert_true(values_close(name, c.out, ref, n, 1e-4, 1e-5));
    assert_true(values_close("layernorm mean", c.mean, rmean, M, 1e-5, 1e-6));
    assert_true(values_close("layernorm rstd", c.rstd, rrstd, M, 1e-4, 0));

    float *dx = falloc(n), *dw = falloc(D), *db = falloc(D);
    fill_unif(dx, n, &s, -3, 3);
    fill_unif(dw, D, &s, -1, 1);
    fill_unif(db, D, &s, -1, 1);
    float *dx0 = fdup(dx, n), *dw0 = fdup(dw, D), *db0 = fdup(db, D);
    float *scr = falloc(tl_layernorm_scratch(tl_pool_size(p), D));
    tl_layernorm_backward(p, dx, dw, db, c.R, c.x, c.w, c.mean, c.rstd, M, D, scr);

    double *num = dalloc(n);
    fd_grad(ln_obj, &c, c.x, n, NULL, 2e-3, num, NULL);
    snprintf(name, sizeof name, "layernorm M%d D%d dx (+= onto nonzero)", M, D);
    assert_true(grad_close_inc(name, num, dx, dx0, n, 1e-2));
    fd_grad(ln_obj, &c, c.w, D, NULL, 2e-3, num, NULL);
    snprintf(name, sizeof name, "layernorm M%d D%d dw (+=)", M, D);
    assert_true(grad_close_inc(name, num, dw, dw0, D, 1e-2));
    fd_grad(ln_obj, &c, c.b, D, NULL, 2e-3, num, NULL);
    snprintf(name, sizeof name, "layernorm M%d D%d db (+=)", M, D);
    assert_true(grad_close_inc(name, num, db, db0, D, 1e-2));

    free(c.out), free(c.x), free(c.R), free(c.mean), free(c.rstd), free(c.w), free(c.b);
    free(ref), free(rmean), free(rrstd), free(dx), free(dw), free(db), free(dx0), free(dw0), free(db0), free(scr);
    free(num);
}

static void test_layernorm(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    ln_case(NULL, 5, 12, 51);
    ln_case(p2, 7, 8, 52);
    ln_case(p2, 3, 33, 53);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_attention                                                              */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *out, *att, *qkv, *R;
    int B, T, D, H;
} att_ctx;

static double att_obj(void *v) {
    att_ctx *c = v;
    tl_attention_forward(c->p, c->out, c->att, c->qkv, c->B, c->T, c->D, c->H);
    return dotf(c->out, c->R, (size_t)c->B * c->T * c->D);
}

static void attention_case(tl_pool *p, int B, int T, int D, int H, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    att_ctx c = {0};
    c.p = p, c.B = B, c.T = T, c.D = D, c.H = H;
    size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D, na = (size_t)B * H * T * T;
    c.qkv = falloc(nq), c.out = falloc(no), c.att = falloc(na), c.R = falloc(no);
    fill_unif(c.qkv, nq, &s, -1.5, 1.5);
    fill_unif(c.R, no, &s, -1, 1);
    char name[96];

    /* forward against double */
    att_obj(&c);
    int hd = D / H;
    double scale = 1.0 / sqrt((double)hd);
    double *ref = dalloc(no), *aref = dalloc(na), *sc = dalloc(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *q = c.qkv + ((size_t)b * T + i) * 3 * D + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    const float *kk = c.qkv + ((size_t)b * T + j) * 3 * D + D + h * hd;
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double)q[e] * kk[e];
                    sc[j] = d * scale;
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j < T; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int j = 0; j < T; j++) aref[(((size_t)b * H + h) * T + i) * T + j] = sc[j] / sum;
                for (int e = 0; e < hd; e++) {
                    double a = 0;
                    for (int j = 0; j < T; j++)
                        a += sc[j] / sum * c.qkv[((size_t)b * T + j) * 3 * D + 2 * D + h * hd + e];
                    ref[((size_t)b * T + i) * D + h * hd + e] = a;
                }
            }
    snprintf(name, sizeof name, "attention B%d T%d D%d H%d forward", B, T, D, H);
    assert_true(values_close(name, c.out, ref, no, 1e-5, 1e-6));
    assert_true(values_close("attention probabilities", c.att, aref, na, 1e-5, 1e-7));

    float *dqkv = falloc(nq);
    fill_const(dqkv, nq, 88.0f);
    float *scr = falloc(tl_attention_scratch(tl_pool_size(p), T, D / H));
    tl_attention_backward(p, dqkv, c.R, c.qkv, c.att, B, T, D, H, scr);
    double *num = dalloc(nq);
    fd_grad(att_obj, &c, c.qkv, nq, NULL, 2e-3, num, NULL);
    snprintf(name, sizeof name, "attention B%d T%d D%d H%d dqkv", B, T, D, H);
    assert_true(grad_close_f(name, num, dqkv, nq, 1e-2, 0));
    free(c.qkv), free(c.out), free(c.att), free(c.R), free(ref), free(aref), free(sc), free(dqkv), free(scr);
    free(num);
}

static void test_attention(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    attention_case(NULL, 2, 5, 12, 3, 61);
    attention_case(p2, 2, 5, 12, 3, 62);
    attention_case(p2, 3, 7, 8, 2, 63);
    attention_case(NULL, 1, 1, 4, 1, 64);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_gelu                                                                   */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *out, *x, *R;
    size_t n;
} gelu_ctx;

static double gelu_obj(void *v) {
    gelu_ctx *c = v;
    tl_gelu_forward(c->p, c->out, c->x, c->n);
    return dotf(c->out, c->R, c->n);
}

static void gelu_case(tl_pool *p, size_t n, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    gelu_ctx c = {p, falloc(n), falloc(n), falloc(n), n};
    fill_unif(c.x, n, &s, -5, 5);
    fill_unif(c.R, n, &s, -1, 1);
    gelu_obj(&c);
    double *ref = dalloc(n), *dref = dalloc(n);
    for (size_t i = 0; i < n; i++) {
        double x = c.x[i];
        ref[i] = 0.5 * x * (1 + erf(x / sqrt(2.0)));
        dref[i] = c.R[i] * (0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI));
    }
    char name[96];
    snprintf(name, sizeof name, "gelu n%zu forward (erf)", n);
    /* 1 + erf(x/sqrt2) cancels for x << 0 (as in PyTorch's float GELU):
     * absolute error ~ |x| * 2^-24 */
    assert_true(values_close(name, c.out, ref, n, 2e-6, 6e-7));
    float *dx = falloc(n);
    fill_const(dx, n, 7.0f);
    tl_gelu_backward(p, dx, c.x, c.R, n);
    snprintf(name, sizeof name, "gelu n%zu dx vs exact derivative", n);
    assert_true(values_close(name, dx, dref, n, 1e-5, 1e-6));
    if (n <= 200) {
        double *num = dalloc(n);
        fd_grad(gelu_obj, &c, c.x, n, NULL, 1e-3, num, NULL);
        snprintf(name, sizeof name, "gelu n%zu dx", n);
        assert_true(grad_close_f(name, num, dx, n, 1e-2, 0));
        free(num);
    }
    /* dx may alias dout */
    float *dd = fdup(c.R, n);
    tl_gelu_backward(p, dd, c.x, dd, n);
    assert_memory_equal(dd, dx, n * sizeof(float));
    free(c.out), free(c.x), free(c.R), free(ref), free(dref), free(dx), free(dd);
}

static void test_gelu(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    gelu_case(NULL, 37, 71);
    gelu_case(p2, 101, 72);
    gelu_case(p2, 4099, 73);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_residual, tl_drop_path_scales                                          */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *x, *x0, *branch, *scale, *R;
    float inv_skip;
    int B;
    size_t S;
} res_ctx;

static double res_obj(void *v) {
    res_ctx *c = v;
    memcpy(c->x, c->x0, (size_t)c->B * c->S * sizeof(float));
    tl_residual_forward(c->p, c->x, c->branch, c->scale, c->inv_skip, c->B, c->S);
    return dotf(c->x, c->R, (size_t)c->B * c->S);
}

static void residual_case(tl_pool *p, int with_scale, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    int B = 4;
    size_t S = 10, n = (size_t)B * S;
    float rate = 0.25f;
    float sc[4] = {0.0f, 1.0f / (1.0f - rate), 1.0f, 1.0f / (1.0f - rate)};
    res_ctx c = {p, falloc(n), falloc(n), falloc(n), with_scale ? sc : NULL, falloc(n), 0.5f, B, S};
    fill_unif(c.x0, n, &s, -1, 1);
    fill_unif(c.branch, n, &s, -1, 1);
    fill_unif(c.R, n, &s, -1, 1);
    res_obj(&c);
    double *ref = dalloc(n);
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < S; i++)
            ref[b * S + i] = (double)c.x0[b * S + i] + (double)c.branch[b * S + i] * (with_scale ? sc[b] : 1) * 0.5;
    char name[96];
    snprintf(name, sizeof name, "residual%s forward", with_scale ? " (drop path)" : " (scale NULL)");
    assert_true(values_close(name, c.x, ref, n, 1e-6, 1e-7));
    float *db = falloc(n);
    fill_const(db, n, 5.0f);
    tl_residual_backward(p, db, c.R, c.scale, 0.5f, B, S);
    double *num = dalloc(n);
    fd_grad(res_obj, &c, c.branch, n, NULL, 0.05, num, NULL);
    snprintf(name, sizeof name, "residual%s dbranch", with_scale ? " (scales 0,1/(1-p),1)" : " (scale NULL)");
    assert_true(grad_close_f(name, num, db, n, 1e-3, 0));
    if (with_scale)
        for (size_t i = 0; i < S; i++) assert_true(db[i] == 0.0f); /* dropped sample */
    free(c.x), free(c.x0), free(c.branch), free(c.R), free(ref), free(db), free(num);
}

static void test_residual(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    residual_case(NULL, 1, 81);
    residual_case(p2, 1, 82);
    residual_case(p2, 0, 83);
    tl_pool_free(p2);
    /* drop path scales: each 0 or 1/(1-rate), deterministic in the seed */
    int B = 256;
    float a[256], b[256];
    tl_drop_path_scales(a, B, 0.25f, 5);
    tl_drop_path_scales(b, B, 0.25f, 5);
    assert_memory_equal(a, b, sizeof a);
    int zeros = 0;
    for (int i = 0; i < B; i++) {
        assert_true(a[i] == 0.0f || fabsf(a[i] - 1.0f / 0.75f) < 1e-6f);
        zeros += a[i] == 0.0f;
    }
    printf("  drop_path_scales rate 0.25: %d of %d dropped\n", zeros, B);
    assert_true(zeros > 30 && zeros < 100);
    tl_drop_path_scales(a, B, 0.0f, 6);
    for (int i = 0; i < B; i++) assert_true(a[i] == 1.0f);
}

/* ======================================================================== */
/* tl_tokens                                                                 */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *x, *tokens, *cls, *pos, *R;
    int B, N, D;
} tok_ctx;

static double tok_obj(void *v) {
    tok_ctx *c = v;
    tl_tokens_forward(c->p, c->x, c->tokens, c->cls, c->pos, c->B, c->N, c->D);
    return dotf(c->x, c->R, (size_t)c->B * (c->N + 1) * c->D);
}

static void tokens_case(tl_pool *p, int B, int N, int D, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    size_t nx = (size_t)B * (N + 1) * D, nt = (size_t)B * N * D, np = (size_t)(N + 1) * D;
    tok_ctx c = {p, falloc(nx), falloc(nt), falloc(D), falloc(np), falloc(nx), B, N, D};
    fill_unif(c.tokens, nt, &s, -1, 1);
    fill_unif(c.cls, D, &s, -1, 1);
    fill_unif(c.pos, np, &s, -1, 1);
    fill_unif(c.R, nx, &s, -1, 1);
    tok_obj(&c);
    double *ref = dalloc(nx);
    for (int b = 0; b < B; b++)
        for (int t = 0; t <= N; t++)
            for (int d = 0; d < D; d++)
                ref[((size_t)b * (N + 1) + t) * D + d] =
                    (double)(t == 0 ? c.cls[d] : c.tokens[((size_t)b * N + t - 1) * D + d]) +
                    c.pos[(size_t)t * D + d];
    assert_true(values_close("tokens forward", c.x, ref, nx, 1e-6, 1e-7));
    float *dt = falloc(nt), *dc = falloc(D), *dp = falloc(np);
    fill_const(dt, nt, 9.0f);
    fill_unif(dc, D, &s, -1, 1);
    fill_unif(dp, np, &s, -1, 1);
    float *dc0 = fdup(dc, D), *dp0 = fdup(dp, np);
    tl_tokens_backward(p, dt, dc, dp, c.R, B, N, D);
    double *num = dalloc(nx);
    fd_grad(tok_obj, &c, c.tokens, nt, NULL, 0.05, num, NULL);
    assert_true(grad_close_f("tokens dtokens", num, dt, nt, 1e-3, 0));
    fd_grad(tok_obj, &c, c.cls, D, NULL, 0.05, num, NULL);
    assert_true(grad_close_inc("tokens dcls (+=)", num, dc, dc0, D, 1e-3));
    fd_grad(tok_obj, &c, c.pos, np, NULL, 0.05, num, NULL);
    assert_true(grad_close_inc("tokens dpos (+=)", num, dp, dp0, np, 1e-3));
    free(c.x), free(c.tokens), free(c.cls), free(c.pos), free(c.R), free(ref), free(dt), free(dc), free(dp);
    free(dc0), free(dp0), free(num);
}

static void test_tokens(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    tokens_case(NULL, 2, 4, 6, 91);
    tokens_case(p2, 3, 9, 5, 92);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_mixtoken_swap, tl_mixtoken_lambda                                      */
/* ======================================================================== */
static void mixtoken_case(int B, int g, int C, int r0, int c0, int r1, int c1, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    size_t n = (size_t)B * g * g * C;
    float *x = falloc(n), *y = falloc(n);
    fill_unif(x, n, &s, -1, 1);
    fill_unif(y, n, &s, -1, 1);
    float *x0 = fdup(x, n), *y0 = fdup(y, n);
    tl_mixtoken_swap(x, B, g, C, r0, c0, r1, c1);
    /* direct reference */
    double *ref = dalloc(n);
    for (int b = 0; b < B; b++)
        for (int r = 0; r < g; r++)
            for (int cc = 0; cc < g; cc++) {
                int in_box = r >= r0 && r < r1 && cc >= c0 && cc < c1;
                int src = in_box ? B - 1 - b : b;
                for (int k = 0; k < C; k++)
                    ref[(((size_t)b * g + r) * g + cc) * C + k] = x0[(((size_t)src * g + r) * g + cc) * C + k];
            }
    char name[96];
    snprintf(name, sizeof name, "mixtoken B%d g%d box[%d,%d)x[%d,%d) swap", B, g, r0, r1, c0, c1);
    assert_true(values_close(name, x, ref, n, 0, 0));
    /* adjointness: <swap x, y> == <x, swap y> */
    tl_mixtoken_swap(y, B, g, C, r0, c0, r1, c1);
    double lhs = dotf(x, y0, n), rhs = dotf(x0, y, n);
    printf("  mixtoken adjoint: % .12e vs % .12e\n", lhs, rhs);
    assert_true(fabs(lhs - rhs) <= 1e-12 * fmax(1, fabs(lhs)));
    /* involution */
    tl_mixtoken_swap(x, B, g, C, r0, c0, r1, c1);
    assert_memory_equal(x, x0, n * sizeof(float));
    /* lambda = 1 - area / N */
    int area = (r1 > r0 && c1 > c0) ? (r1 - r0) * (c1 - c0) : 0;
    float lam = tl_mixtoken_lambda(g, r0, c0, r1, c1);
    printf("  mixtoken lambda: %.7f (expected %.7f)\n", lam, 1.0 - (double)area / (g * g));
    assert_true(fabs(lam - (1.0 - (double)area / (g * g))) < 1e-6);
    free(x), free(y), free(x0), free(y0), free(ref);
}

static void test_mixtoken(void **state) {
    (void)state;
    mixtoken_case(5, 4, 3, 2, 1, 4, 4, 101); /* clipped at the bottom/right border, odd B */
    mixtoken_case(5, 4, 3, 0, 0, 3, 2, 102); /* clipped at the top/left border */
    mixtoken_case(4, 5, 2, 1, 2, 3, 5, 103);
    mixtoken_case(3, 4, 2, 0, 0, 4, 4, 104); /* whole grid */
    mixtoken_case(3, 4, 2, 2, 1, 2, 3, 105); /* empty box: no mixing */
    mixtoken_case(1, 3, 2, 0, 0, 2, 2, 106); /* B = 1 swaps with itself */
}

/* ======================================================================== */
/* tl_soft_ce                                                                */
/* ======================================================================== */
typedef struct {
    tl_pool *p;
    float *logits, *target;
    int M, K, group;
} ce_ctx;

static double ce_obj(void *v) {
    ce_ctx *c = v;
    return tl_soft_ce(c->p, NULL, c->logits, c->target, c->M, c->K, c->group, 1.0f);
}

static void soft_ce_case(tl_pool *p, int M, int K, int group, float grad_scale, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    int Mt = M / group;
    ce_ctx c = {p, falloc((size_t)M * K), falloc((size_t)Mt * K), M, K, group};
    fill_unif(c.logits, (size_t)M * K, &s, -3, 3);
    for (int r = 0; r < Mt; r++) {
        double sum = 0;
        for (int k = 0; k < K; k++) sum += (c.target[(size_t)r * K + k] = unif(&s, 0, 1) * (k == r % K ? 4 : 1));
        for (int k = 0; k < K; k++) c.target[(size_t)r * K + k] = (float)(c.target[(size_t)r * K + k] / sum);
    }
    /* loss against double */
    double ref = 0;
    for (int r = 0; r < M; r++) {
        const float *l = c.logits + (size_t)r * K;
        double mx = -INFINITY, se = 0;
        for (int k = 0; k < K; k++) mx = fmax(mx, l[k]);
        for (int k = 0; k < K; k++) se += exp(l[k] - mx);
        for (int k = 0; k < K; k++) ref -= c.target[(size_t)(r / group) * K + k] * (l[k] - mx - log(se));
    }
    ref /= M;
    float *dl = falloc((size_t)M * K);
    fill_const(dl, (size_t)M * K, 3.0f);
    double loss = tl_soft_ce(p, dl, c.logits, c.target, M, K, group, grad_scale);
    double loss2 = ce_obj(&c);
    printf("  soft_ce M%d K%d group%d: loss %.10f ref %.10f (no-grad call %.10f)\n", M, K, group, loss, ref, loss2);
    assert_true(fabs(loss - ref) <= 1e-6 * fmax(1, fabs(ref)));
    assert_true(fabs(loss2 - loss) <= 1e-12 * fmax(1, fabs(loss)));
    double *num = dalloc((size_t)M * K);
    fd_grad(ce_obj, &c, c.logits, (size_t)M * K, NULL, 1e-2, num, NULL);
    for (size_t i = 0; i < (size_t)M * K; i++) num[i] *= grad_scale;
    char name[96];
    snprintf(name, sizeof name, "soft_ce M%d K%d group%d scale%.2f dlogits", M, K, group, grad_scale);
    assert_true(grad_close_f(name, num, dl, (size_t)M * K, 1e-2, 0));
    free(c.logits), free(c.target), free(dl), free(num);
}

static void test_soft_ce(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    soft_ce_case(NULL, 6, 5, 1, 0.7f, 111);
    soft_ce_case(p2, 6, 5, 3, 1.3f, 112);
    soft_ce_case(p2, 12, 7, 4, 2.5f, 113);
    soft_ce_case(NULL, 3, 10, 3, 1.0f, 114);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_adamw_update                                                           */
/* ======================================================================== */
static void adamw_case(tl_pool *p, size_t n, float lr, float wd, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float *pf = falloc(n), *m = falloc(n), *v = falloc(n), *g = falloc(n);
    double *pd = dalloc(n), *md = dalloc(n), *vd = dalloc(n), *mabs = dalloc(n);
    for (size_t i = 0; i < n; i++) pd[i] = pf[i] = unif(&s, -2, 2);
    int bad = 0;
    for (int64_t t = 1; t <= 3; t++) {
        for (size_t i = 0; i < n; i++) {
            /* magnitudes from 1e-9 to 1 (eps matters at the low end), some zeros */
            double mag = pow(10.0, -9.0 * urand(&s));
            g[i] = (i % 17 == 0) ? 0.0f : (float)(mag * (urand(&s) < 0.5 ? -1 : 1));
        }
        tl_adamw_update(p, pf, g, m, v, n, lr, b1, b2, eps, wd, t);
        double bc1 = 1 - pow((double)b1, (double)t), bc2 = 1 - pow((double)b2, (double)t);
        for (size_t i = 0; i < n; i++) {
            double gi = g[i];
            pd[i] *= 1 - (double)lr * wd;
            md[i] = (double)b1 * md[i] + (1 - (double)b1) * gi;
            mabs[i] = (double)b1 * mabs[i] + (1 - (double)b1) * fabs(gi); /* scale of m before cancellation */
            vd[i] = (double)b2 * vd[i] + (1 - (double)b2) * gi * gi;
            double denom = sqrt(vd[i]) / sqrt(bc2) + eps;
            pd[i] -= (double)lr / bc1 * md[i] / denom;
        }
        for (size_t i = 0; i < n; i++) {
            double ep = fabs(pf[i] - pd[i]), em = fabs(m[i] - md[i]), ev = fabs(v[i] - vd[i]);
            int b = ep > 1e-6 * fabs(pd[i]) + 1e-4 * lr || em > 1e-6 * mabs[i] + 1e-30 ||
                    ev > 1e-5 * fabs(vd[i]) + 1e-37;
            if (b && bad < 6)
                printf("      t=%lld i=%zu g=% .3e p=% .9e ref=% .9e m=% .4e/% .4e v=% .4e/% .4e\n", (long long)t,
                       i, g[i], pf[i], pd[i], m[i], md[i], v[i], vd[i]);
            bad += b;
        }
    }
    printf("  adamw n=%zu lr=%g wd=%g pool=%d, 3 steps vs double PyTorch AdamW: %d mismatches%s\n", n, lr, wd,
           tl_pool_size(p), bad, bad ? "  FAIL" : "");
    assert_int_equal(bad, 0);
    free(pf), free(m), free(v), free(g), free(pd), free(md), free(vd), free(mabs);
}

static void test_adamw(void **state) {
    (void)state;
    tl_pool *p2 = tl_pool_new(2);
    assert_non_null(p2);
    adamw_case(NULL, 64, 1e-2f, 0.05f, 121);
    adamw_case(p2, 1001, 3e-3f, 0.1f, 122);
    adamw_case(p2, 33, 1e-3f, 0.0f, 123);
    tl_pool_free(p2);
}

/* ======================================================================== */
/* tl_inference_score                                                        */
/* ======================================================================== */
static void test_inference_score(void **state) {
    (void)state;
    uint64_t s = 131;
    int B = 3, N = 5, K = 4;
    float *cls = falloc((size_t)B * K), *aux = falloc((size_t)B * N * K), *score = falloc((size_t)B * K);
    fill_unif(cls, (size_t)B * K, &s, -3, 3);
    fill_unif(aux, (size_t)B * N * K, &s, -3, 3);
    aux[2 * N * K + 3 * K + 1] = -50; /* all-negative column in one sample */
    for (int n = 0; n < N; n++) aux[(size_t)2 * N * K + n * K + 1] = -10.0f - n;
    tl_inference_score(score, cls, aux, B, N, K);
    double *ref = dalloc((size_t)B * K);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++) {
            double mx = -INFINITY;
            for (int n = 0; n < N; n++) mx = fmax(mx, aux[((size_t)b * N + n) * K + k]);
            ref[(size_t)b * K + k] = cls[(size_t)b * K + k] + 0.5 * mx;
        }
    assert_true(values_close("inference_score cls + 0.5 max aux", score, ref, (size_t)B * K, 1e-6, 1e-6));
    free(cls), free(aux), free(score), free(ref);
}

/* ======================================================================== */
/* whole model through tl.h                                                  */
/* ======================================================================== */
typedef struct {
    tl_ctx *ctx;
    const float *images, *t_cls, *t_dense;
    const tl_box *box;
    int B;
    tl_loss_weights w;
    tl_loss_parts parts;
} model_ctx;

static double model_obj(void *v) {
    model_ctx *c = v;
    assert_int_equal(tl_forward(c->ctx, c->images, c->B, 1, c->box, 7), 0);
    assert_int_equal(tl_loss(c->ctx, c->t_cls, c->t_dense, &c->w, &c->parts), 0);
    return c->parts.loss;
}

static void fill_soft(float *t, int rows, int K, uint64_t *s) {
    for (int r = 0; r < rows; r++) {
        double sum = 0;
        for (int k = 0; k < K; k++) sum += (t[(size_t)r * K + k] = unif(s, 0.05, 1));
        for (int k = 0; k < K; k++) t[(size_t)r * K + k] = (float)(t[(size_t)r * K + k] / sum);
    }
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static void model_check(int use_box, int nthreads, size_t per_tensor, uint64_t seed) {
    uint64_t s = seed * 7919 + g_seed;
    tl_config cfg = {.img_size = 16,
                     .patch_size = 8,
                     .embed_dim = 8,
                     .depth = 2,
                     .num_heads = 2,
                     .mlp_ratio = 2.0f,
                     .stem_channels = 4,
                     .skip_lam = 2.0f,
                     .num_classes = 3,
                     .drop_path_rate = 0.0f};
    char err[TL_ERR_LEN] = "";
    int rc = tl_config_validate(&cfg, err, sizeof err);
    if (rc) printf("  config: %s\n", err);
    assert_int_equal(rc, 0);
    tl_model *m = tl_model_new(&cfg, 1234, err, sizeof err);
    if (!m) printf("  tl_model_new: %s\n", err);
    assert_non_null(m);

    /* Move the parameters away from the init (std 0.02 weights make most
     * gradients tiny and attention uniform): O(1) activations everywhere. */
    int nt = tl_model_num_tensors(m);
    for (int i = 0; i < nt; i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind != TL_TENSOR_PARAM) continue;
        int is_norm = strstr(t->name, "norm") != NULL || strstr(t->name, ".bn") != NULL;
        if (strstr(t->name, ".bn") && ends_with(t->name, "weight")) {
            fill_unif(t->data, t->numel, &s, 0.35, 0.45);
        } else if (strstr(t->name, ".bn") && ends_with(t->name, "bias")) {
            /* Keep the stem's pre-activations mostly away from the ReLU kink
             * (|beta| >= 3 gamma), so that central differences are valid: the
             * last channel is mostly dead (exercising the ReLU mask), the
             * others mostly alive. */
            for (size_t k = 0; k < t->numel; k++)
                t->data[k] = (k + 1 == t->numel ? -1.0f : 1.0f) * unif(&s, 1.4, 1.8);
        } else if (is_norm && ends_with(t->name, "weight")) {
            fill_unif(t->data, t->numel, &s, 0.7, 1.3);
        } else if (ends_with(t->name, "bias")) {
            fill_unif(t->data, t->numel, &s, -0.3, 0.3);
        } else if (!strcmp(t->name, "cls_token") || !strcmp(t->name, "pos_embed")) {
            fill_unif(t->data, t->numel, &s, -0.6, 0.6);
        } else {
            double fan_in = (double)t->numel / (double)t->shape[0];
            double a = sqrt(3.0 / fan_in);
            fill_unif(t->data, t->numel, &s, -a, a);
        }
    }

    int B = 3, K = cfg.num_classes, N = tl_config_tokens(&cfg), S = cfg.img_size;
    tl_ctx *ctx = tl_ctx_new(m, B, 1, nthreads, err, sizeof err);
    if (!ctx) printf("  tl_ctx_new: %s\n", err);
    assert_non_null(ctx);
    size_t nimg = (size_t)B * 3 * S * S;
    float *images = falloc(nimg), *t_cls = falloc((size_t)B * K), *t_dense = falloc((size_t)B * N * K);
    for (size_t i = 0; i < nimg; i++) images[i] = gauss(&s);
    fill_soft(t_cls, B, K, &s);
    fill_soft(t_dense, B * N, K, &s);
    tl_box box = {0, 0, 1, 2}; /* rows [0,1), cols [0,2) of the 2x2 grid: lam 0.5 */
    model_ctx mc;
    memset(&mc, 0, sizeof mc);
    mc.ctx = ctx, mc.images = images, mc.t_cls = t_cls, mc.t_dense = t_dense;
    mc.box = use_box ? &box : NULL, mc.B = B;
    mc.w.cls_weight = 1.0f, mc.w.dense_weight = 0.5f;

    tl_model_zero_grad(m);
    double L0 = model_obj(&mc);
    printf("  model (box %s, %d threads): loss %.8f = cls %.8f + 0.5 * dense %.8f, lam %.4f\n",
           use_box ? "rows[0,1) cols[0,2)" : "none", nthreads, L0, mc.parts.loss_cls, mc.parts.loss_dense,
           mc.parts.lam);
    assert_true(fabs(mc.parts.loss - (mc.parts.loss_cls + 0.5 * mc.parts.loss_dense)) <= 1e-9 * fabs(L0) + 1e-12);
    assert_true(fabs(mc.parts.lam - (use_box ? 0.5f : 1.0f)) < 1e-6);
    assert_int_equal(tl_backward(ctx), 0);

    /* keep the analytic gradients */
    float **ana = calloc((size_t)nt, sizeof(float *));
    assert_non_null(ana);
    for (int i = 0; i < nt; i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind == TL_TENSOR_PARAM) ana[i] = fdup(t->grad, t->numel);
    }

    /* the loss does not change with repeated forwards (BN running stats) */
    double L0b = model_obj(&mc);
    printf("  model loss repeatable: %.12e vs %.12e\n", L0, L0b);
    assert_true(L0 == L0b);

    int all_ok = 1, kinks = 0, sanity = 0;
    size_t probes = 0;
    for (int i = 0; i < nt; i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind != TL_TENSOR_PARAM) continue;
        assert_non_null(t->grad);
        size_t ns = t->numel <= per_tensor ? t->numel : per_tensor;
        size_t *idx = calloc(ns, sizeof(size_t));
        assert_non_null(idx);
        if (ns == t->numel) {
            for (size_t k = 0; k < ns; k++) idx[k] = k;
        } else {
            /* distinct random elements (partial Fisher-Yates over a permutation) */
            size_t *perm = calloc(t->numel, sizeof(size_t));
            assert_non_null(perm);
            for (size_t k = 0; k < t->numel; k++) perm[k] = k;
            for (size_t k = 0; k < ns; k++) {
                size_t j = k + (size_t)(sm64(&s) % (t->numel - k));
                size_t tmp = perm[k];
                perm[k] = perm[j], perm[j] = tmp;
                idx[k] = perm[k];
            }
            free(perm);
        }
        double *num = dalloc(ns), *an = dalloc(ns);
        double rms_a = 0;
        for (size_t k = 0; k < t->numel; k++) rms_a += (double)ana[i][k] * ana[i][k];
        rms_a = sqrt(rms_a / (double)t->numel);
        for (size_t k = 0; k < ns; k++) an[k] = ana[i][idx[k]];
        /* The loss is only piecewise smooth (ReLU kinks in the stem) and a
         * float32 forward adds ~5e-8 of noise to it.
         * 1. Central differences down a ladder of steps until two consecutive
         *    ones agree (0.5% + noise); the smaller step of the pair is the
         *    estimate. This choice never looks at the analytic gradient.
         * 2. A ReLU kink at a distance d from the point biases every central
         *    difference with h > d (by up to half the jump of the
         *    derivative), and the analytic gradient is then the derivative on
         *    one side of the kink. So a probe that fails step 1 (no agreeing
         *    pair, or a mismatch) is accepted when a central or one-sided
         *    difference with a small step (1e-3, 3e-3) matches the analytic
         *    gradient. At most 5% of the probes may need this; they are
         *    counted and printed. */
        for (size_t k = 0; k < ns; k++) {
            const double hs[] = {3e-2, 1e-2, 3e-3, 1e-3};
            enum { NH = 4 };
            double v[NH];
            int stable = 0;
            for (int q = 0; q < NH && !stable; q++) {
                fd_grad(model_obj, &mc, t->data, 1, &idx[k], hs[q], &v[q], NULL);
                if (q > 0) {
                    double thr = 5e-3 * (fmax(fabs(v[q - 1]), fabs(v[q])) + 0.2 * rms_a) + 1e-7 / hs[q];
                    if (fabs(v[q] - v[q - 1]) <= thr) {
                        stable = 1;
                        num[k] = v[q];
                    }
                }
            }
            if (!stable) num[k] = NAN;
            double bound = 2e-2 * (fabs(an[k]) + rms_a) + 3e-5;
            if (stable && fabs(num[k] - an[k]) <= bound) continue;
            int explained = 0;
            const double hk[] = {1e-3, 3e-3};
            for (int q = 0; q < 2 && !explained; q++) {
                float *x = t->data;
                size_t e = idx[k];
                float orig = x[e], xp = (float)(orig + hk[q]), xm = (float)(orig - hk[q]);
                x[e] = xp;
                double lp = model_obj(&mc);
                x[e] = xm;
                double lm = model_obj(&mc);
                x[e] = orig;
                double d[3] = {(lp - lm) / ((double)xp - xm), (lp - L0) / ((double)xp - orig),
                               (L0 - lm) / ((double)orig - xm)};
                for (int j = 0; j < 3 && !explained; j++) {
                    double bk = bound + (j ? 1e-7 : 5e-8) / hk[q];
                    if (fabs(d[j] - an[k]) <= bk) {
                        explained = 1;
                        num[k] = d[j];
                    }
                }
            }
            if (explained) {
                kinks++;
            } else if (!stable) {
                num[k] = 0.5 * (v[NH - 1] + v[NH - 2]); /* reported as a mismatch */
            }
        }
        char name[128];
        snprintf(name, sizeof name, "model %s", t->name);
        /* atol 3e-5: the noise of a central difference with step 1e-3. */
        int ok = grad_close_a(name, num, an, ns, 3e-2, 3e-5, rms_a, 0, 0);
        if (!ok) all_ok = 0;
        if (ns == t->numel && rms_a > 1e-3) {
            /* sanity: 10% off is rejected (on fully sampled tensors) */
            sanity++;
            double *bad = dalloc(ns);
            for (size_t k = 0; k < ns; k++) bad[k] = 1.1 * an[k];
            assert_false(grad_close_a("sanity x1.1", num, bad, ns, 3e-2, 3e-5, rms_a, 0, 1));
            free(bad);
        }
        probes += ns;
        free(idx), free(num), free(an);
    }
    printf("  model: %zu probes, %d accepted only at a small step or one-sided (ReLU kink nearby)\n", probes,
           kinks);
    assert_true(all_ok);
    assert_true((size_t)kinks * 20 <= probes);
    assert_true(sanity > 0);

    /* backward accumulates: a second forward+loss+backward doubles the grads */
    model_obj(&mc);
    assert_int_equal(tl_backward(ctx), 0);
    double md = 0;
    for (int i = 0; i < nt; i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        if (t->kind != TL_TENSOR_PARAM) continue;
        double rms = 0;
        for (size_t k = 0; k < t->numel; k++) rms += (double)ana[i][k] * ana[i][k];
        rms = sqrt(rms / (double)t->numel);
        for (size_t k = 0; k < t->numel; k++)
            md = fmax(md, fabs((double)t->grad[k] - 2.0 * ana[i][k]) / (fabs(2.0 * ana[i][k]) + rms + 1e-12));
    }
    printf("  model backward accumulates: max |g2 - 2 g1| / (|2 g1| + rms) = %.3e\n", md);
    assert_true(md <= 1e-5);

    for (int i = 0; i < nt; i++) free(ana[i]);
    free(ana);
    free(images), free(t_cls), free(t_dense);
    tl_ctx_free(ctx);
    tl_model_free(m);
}

static void test_model_gradcheck(void **state) {
    (void)state;
    model_check(1, 1, 24, 141);
}

static void test_model_gradcheck_nobox(void **state) {
    (void)state;
    model_check(0, 2, 3, 142);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (tl_test_isa_unavailable()) return TL_TEST_SKIP_CODE; /* run once per kernel level: isa_gate.h */
    const char *env = getenv("TL_GRADCHECK_SEED");
    if (env && *env) {
        g_seed = strtoull(env, NULL, 0);
        printf("TL_GRADCHECK_SEED=%llu\n", (unsigned long long)g_seed);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comparison_rejects), cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_conv2d),             cmocka_unit_test(test_bn),
        cmocka_unit_test(test_patch),              cmocka_unit_test(test_linear),
        cmocka_unit_test(test_layernorm),          cmocka_unit_test(test_attention),
        cmocka_unit_test(test_gelu),               cmocka_unit_test(test_residual),
        cmocka_unit_test(test_tokens),             cmocka_unit_test(test_mixtoken),
        cmocka_unit_test(test_soft_ce),            cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_inference_score),    cmocka_unit_test(test_model_gradcheck),
        cmocka_unit_test(test_model_gradcheck_nobox),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
