/*
 * test_blas.c: the engine picks OpenBLAS's kernel family by itself.
 *
 * OpenBLAS decides its kernels once, when it is loaded, so every case runs in
 * a forked child that sets the environment first, loads BLAS through the
 * engine, multiplies two matrices and sends back the kernel report and the
 * largest error against a plain triple loop. The parent never loads BLAS.
 *
 * Cases: an inherited OPENBLAS_CORETYPE=Haswell (as on machines that set it
 * globally) is overridden on an AVX-512 CPU; OPENBLAS_CORETYPE naming an
 * AVX-512 family is kept; TL_BLAS_CORETYPE is obeyed whatever the CPU; no
 * setting at all gives SkylakeX on an AVX-512 CPU. The family follows the
 * kernel level TL_ISA sets (core/simd.h): Nehalem for generic, Haswell for
 * avx2 (also over an inherited AVX-512 family), and a level above the CPU's
 * is capped, never handing OpenBLAS kernels the CPU cannot run. Without
 * AVX-512 and without TL_ISA (arm64 among others) nothing is forced and
 * OpenBLAS detects its own family; on arm64 TL_BLAS_CORETYPE=ARMV8 is obeyed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/blas.h"
#include "core/simd.h"
#include "tokenlab/model.h"

typedef struct {
    char core[256];
    char isa[16];
    char features[128];
    double max_err;
    int ok;
} report;

/* The CPU's level, found here as isa.c finds it: the parent must not call
 * tl_isa() itself, since a forked child would inherit the level decided
 * without the child's TL_ISA. */
static int cpu_level(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vl");
    return avx512 ? TL_ISA_AVX512 : avx2 ? TL_ISA_AVX2 : TL_ISA_GENERIC;
#else
    return TL_ISA_GENERIC;
#endif
}

/* In the child: C = A^T B (A stored K x M) through tl_sgemm, against doubles. */
static void child_measure(report *r) {
    enum { M = 77, N = 130, K = 91 };
    float *a = malloc(sizeof(float) * K * M), *b = malloc(sizeof(float) * K * N), *c = malloc(sizeof(float) * M * N);
    if (!a || !b || !c) return;
    for (int i = 0; i < K * M; i++) a[i] = (float)((i * 37) % 101 - 50) / 50.0f;
    for (int i = 0; i < K * N; i++) b[i] = (float)((i * 53) % 97 - 48) / 48.0f;
    char err[256];
    if (tl_blas_init(err, sizeof err) != 0) {
        snprintf(r->core, sizeof r->core, "init failed: %.200s", err);
        return;
    }
    tl_sgemm(1, 0, M, N, K, 1.0f, a, M, b, N, 0.0f, c, N);
    double worst = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) s += (double)a[k * M + i] * (double)b[k * N + j];
            double e = fabs(s - (double)c[i * N + j]);
            worst = e > worst ? e : worst;
        }
    snprintf(r->core, sizeof r->core, "%s", tl_blas_corename());
    snprintf(r->isa, sizeof r->isa, "%s", tl_isa_name());
    snprintf(r->features, sizeof r->features, "%s", tl_cpu_features());
    r->max_err = worst;
    r->ok = 1;
    free(a);
    free(b);
    free(c);
}

/* Runs child_measure in a child with OPENBLAS_CORETYPE, TL_BLAS_CORETYPE and TL_ISA set (NULL: unset). */
static report run_case_isa(const char *openblas, const char *mine, const char *isa) {
    report r;
    memset(&r, 0, sizeof r);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (openblas) setenv("OPENBLAS_CORETYPE", openblas, 1); else unsetenv("OPENBLAS_CORETYPE");
        if (mine) setenv("TL_BLAS_CORETYPE", mine, 1); else unsetenv("TL_BLAS_CORETYPE");
        if (isa) setenv("TL_ISA", isa, 1); else unsetenv("TL_ISA");
        report c;
        memset(&c, 0, sizeof c);
        child_measure(&c);
        ssize_t w = write(fds[1], &c, sizeof c);
        _exit(w == (ssize_t)sizeof c ? 0 : 1);
    }
    close(fds[1]);
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = read(fds[0], (char *)&r + got, sizeof r - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(got, sizeof r);
    print_message("OPENBLAS_CORETYPE=%s TL_BLAS_CORETYPE=%s TL_ISA=%s -> %s, kernels %s, max error %.2e\n",
                  openblas ? openblas : "(unset)", mine ? mine : "(unset)", isa ? isa : "(unset)", r.core, r.isa,
                  r.max_err);
    assert_true(r.ok);
    assert_true(r.max_err < 1e-4);
    return r;
}

static report run_case(const char *openblas, const char *mine) { return run_case_isa(openblas, mine, NULL); }

static void inherited_older_family_is_overridden(void **state) {
    (void)state;
    if (cpu_level() != TL_ISA_AVX512) skip();
    report r = run_case("Haswell", NULL);
    assert_non_null(strstr(r.core, "SkylakeX"));
    assert_non_null(strstr(r.core, "OPENBLAS_CORETYPE=Haswell overridden"));
    r = run_case("zen", NULL);
    assert_non_null(strstr(r.core, "SkylakeX"));
}

static void inherited_avx512_family_is_kept(void **state) {
    (void)state;
    if (cpu_level() != TL_ISA_AVX512) skip();
    report r = run_case("SKYLAKEX", NULL);
    assert_non_null(strstr(r.core, "SkylakeX (chosen: SKYLAKEX (from OPENBLAS_CORETYPE))"));
}

static void no_setting_gives_the_fastest(void **state) {
    (void)state;
    if (cpu_level() != TL_ISA_AVX512) skip();
    report r = run_case(NULL, NULL);
    assert_non_null(strstr(r.core, "SkylakeX (chosen: SKYLAKEX (AVX-512 found))"));
}

static void tl_blas_coretype_is_obeyed(void **state) {
    (void)state;
#if defined(__x86_64__)
    if (cpu_level() < TL_ISA_AVX2) skip();
    report r = run_case("SKYLAKEX", "Haswell");
    assert_non_null(strstr(r.core, "Haswell (chosen: Haswell (from TL_BLAS_CORETYPE))"));
#elif defined(__aarch64__)
    /* the plain Armv8 kernels, which every arm64 CPU runs, over an inherited family that OpenBLAS would
     * otherwise load (Cortex-A57: Armv8 with NEON, so also safe everywhere) */
    report r = run_case("CORTEXA57", "ARMV8");
    assert_non_null(strstr(r.core, "armv8 (chosen: ARMV8 (from TL_BLAS_CORETYPE))"));
#else
    skip();
#endif
}

/* Without AVX-512 (every CPU that is not x86-64, and older x86 ones) and without TL_ISA nothing is forced:
 * OpenBLAS picks its own family, and the engine's feature report names no AVX-512. */
static void without_avx512_openblas_decides(void **state) {
    (void)state;
    if (cpu_level() == TL_ISA_AVX512) skip();
    report r = run_case(NULL, NULL);
    assert_non_null(strstr(r.core, "(chosen: autodetected)"));
    assert_null(strstr(r.features, "avx512"));
#if defined(__aarch64__)
    assert_non_null(strstr(r.features, "asimd")); /* NEON: part of every Armv8-A CPU */
#endif
}

/* TL_ISA=generic: the engine's kernels and OpenBLAS's at the baseline (Nehalem: SSE4.2). */
static void generic_level_takes_nehalem(void **state) {
    (void)state;
#if !defined(__x86_64__)
    skip(); /* the x86 families; elsewhere TL_ISA=generic leaves OpenBLAS to detect its own */
#endif
    report r = run_case_isa(NULL, NULL, "generic");
    assert_string_equal(r.isa, "generic");
    assert_non_null(strstr(r.core, "Nehalem (chosen: NEHALEM (TL_ISA level generic))"));
    r = run_case_isa("SKYLAKEX", NULL, "GENERIC"); /* any case; an inherited family is overridden */
    assert_string_equal(r.isa, "generic");
    assert_non_null(strstr(r.core, "Nehalem (chosen: NEHALEM (TL_ISA level generic; OPENBLAS_CORETYPE=SKYLAKEX overridden))"));
}

/* TL_ISA=avx2: Haswell kernels, also over an inherited AVX-512 family (an AVX-512 CPU tested at AVX2). */
static void avx2_level_takes_haswell(void **state) {
    (void)state;
    if (cpu_level() < TL_ISA_AVX2) skip();
    report r = run_case_isa(NULL, NULL, "avx2");
    assert_string_equal(r.isa, "avx2");
    assert_non_null(strstr(r.core, "Haswell (chosen: HASWELL (TL_ISA level avx2))"));
    r = run_case_isa("SKYLAKEX", NULL, "avx2");
    assert_non_null(strstr(r.core, "Haswell (chosen: HASWELL (TL_ISA level avx2; OPENBLAS_CORETYPE=SKYLAKEX overridden))"));
}

/* TL_ISA above the CPU's level is capped: an AVX2 CPU asked for avx512 runs AVX2 kernels and Haswell,
 * never SkylakeX (which would crash it); an AVX-512 CPU gets SkylakeX. */
static void level_is_capped_at_the_cpu(void **state) {
    (void)state;
    report r = run_case_isa(NULL, NULL, "avx512");
    assert_string_equal(r.isa, tl_isa_level_name(cpu_level()));
    if (cpu_level() == TL_ISA_AVX512) {
        assert_non_null(strstr(r.core, "SkylakeX"));
    } else {
        assert_null(strstr(r.core, "SkylakeX"));
        if (cpu_level() == TL_ISA_AVX2) assert_non_null(strstr(r.core, "Haswell (chosen: HASWELL (TL_ISA level avx2))"));
    }
    r = run_case_isa(NULL, NULL, "fastest"); /* not a level: the CPU's own */
    assert_string_equal(r.isa, tl_isa_level_name(cpu_level()));
}

/* TL_BLAS_CORETYPE still names the family whatever TL_ISA says. */
static void tl_blas_coretype_wins_over_tl_isa(void **state) {
    (void)state;
#if !defined(__x86_64__)
    skip(); /* an x86 family name; tl_blas_coretype_is_obeyed covers arm64 */
#endif
    report r = run_case_isa(NULL, "SANDYBRIDGE", "generic");
    assert_string_equal(r.isa, "generic");
    assert_non_null(strstr(r.core, "Sandybridge (chosen: SANDYBRIDGE (from TL_BLAS_CORETYPE))"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(generic_level_takes_nehalem),
        cmocka_unit_test(avx2_level_takes_haswell),
        cmocka_unit_test(level_is_capped_at_the_cpu),
        cmocka_unit_test(tl_blas_coretype_wins_over_tl_isa),
        cmocka_unit_test(inherited_older_family_is_overridden),
        cmocka_unit_test(inherited_avx512_family_is_kept),
        cmocka_unit_test(no_setting_gives_the_fastest),
        cmocka_unit_test(without_avx512_openblas_decides),
        cmocka_unit_test(tl_blas_coretype_is_obeyed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
