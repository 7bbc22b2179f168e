/*
 * blas.c: loads OpenBLAS at run time with the CPU's fastest kernels.
 *
 * Owns: the dlopen handle and the resolved function pointers, set once under
 * pthread_once by whichever thread first needs BLAS; read-only afterwards.
 *
 * Why dlopen: OpenBLAS picks its kernel family in its library constructor,
 * from OPENBLAS_CORETYPE or cpuid. Debian's 0.3.21 picks Haswell (AVX2) on
 * AMD Zen 4 although the CPU has AVX-512, which costs 2.4x in sgemm. Linking
 * normally would run that constructor before main(); opening the library
 * ourselves lets the engine set OPENBLAS_CORETYPE first: SKYLAKEX when the
 * engine's kernel level (core/simd.h: the CPU's, or TL_ISA capped at it) is
 * AVX-512, the level's own family when TL_ISA sets a lower one
 * (choose_coretype below: an inherited OPENBLAS_CORETYPE naming an older
 * family is overridden; TL_BLAS_CORETYPE is how a user picks a family for
 * tokenlab).
 * OPENBLAS_NUM_THREADS=1 is set too: the engine splits GEMMs over its own pool
 * and never lets OpenBLAS start threads (no oversubscription, no level-3 lock).
 */
#include "core/blas.h"
#include "core/simd.h"
#include "tokenlab/base.h"
#include "tokenlab/model.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#ifndef TL_OPENBLAS_PATH
#define TL_OPENBLAS_PATH "libopenblas.so.0"
#endif

enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *,
                         int);

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void *g_handle;
static sgemm_fn g_sgemm;
static char *(*g_corename)(void);
static char *(*g_config)(void);
static void (*g_set_threads)(int);
static char g_err[TL_ERR_LEN];
static char g_features[128];
static char g_chosen[96];
static char g_core[192]; /* "SkylakeX (chosen: SKYLAKEX (AVX-512 found))" */

/* g_features: the CPU's vector extensions that matter here, comma-separated
 * (x86-64: cpuid; aarch64: the kernel's HWCAP bits; empty elsewhere). */
static void describe_features(void) {
#if defined(__x86_64__)
    static const char *names[] = {"sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                                  "avx512vnni", "avx512bf16"};
    __builtin_cpu_init();
    int have[10] = {__builtin_cpu_supports("sse4.2"),   __builtin_cpu_supports("avx"),
                    __builtin_cpu_supports("avx2"),     __builtin_cpu_supports("fma"),
                    __builtin_cpu_supports("avx512f"),  __builtin_cpu_supports("avx512bw"),
                    __builtin_cpu_supports("avx512dq"), __builtin_cpu_supports("avx512vl"),
                    __builtin_cpu_supports("avx512vnni"), __builtin_cpu_supports("avx512bf16")};
#elif defined(__aarch64__)
    static const char *names[] = {"asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm"};
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    int have[7] = {!!(hw & HWCAP_ASIMD), !!(hw & HWCAP_ASIMDHP), !!(hw & HWCAP_ASIMDDP), !!(hw & HWCAP_SVE),
                   !!(hw2 & HWCAP2_SVE2), !!(hw2 & HWCAP2_BF16), !!(hw2 & HWCAP2_I8MM)};
#else
    static const char *names[1] = {""};
    int have[1] = {0};
#endif
    size_t off = 0;
    for (size_t i = 0; i < sizeof have / sizeof have[0]; i++) {
        if (!have[i]) continue;
        int n = snprintf(g_features + off, sizeof g_features - off, "%s%s", off ? "," : "", names[i]);
        if (n < 0 || (size_t)n >= sizeof g_features - off) break;
        off += (size_t)n;
    }
}

/* OpenBLAS core types with AVX-512 sgemm kernels (0.3.21 names, any case). */
static int coretype_has_avx512(const char *name) {
    static const char *fast[] = {"SKYLAKEX", "COOPERLAKE", "SAPPHIRERAPIDS", "ZEN4", "ZEN5"};
    for (size_t i = 0; i < sizeof fast / sizeof fast[0]; i++)
        if (strcasecmp(name, fast[i]) == 0) return 1;
    return 0;
}

/*
 * The kernel family, decided before OpenBLAS initialises:
 *   TL_BLAS_CORETYPE set: that family, as the user asked tokenlab;
 *   kernel level AVX-512 (core/simd.h): SKYLAKEX, unless OPENBLAS_CORETYPE
 *     already names an AVX-512 family. An inherited OPENBLAS_CORETYPE naming
 *     an older family (a machine-wide Haswell, say) is overridden and the
 *     report says so: it would halve every GEMM, and tokenlab must find the
 *     fast path by itself;
 *   on x86-64, a lower level set by TL_ISA: the family of that level, over any inherited
 *     OPENBLAS_CORETYPE (HASWELL for avx2, NEHALEM, whose kernels need only
 *     SSE4.2 like the engine's baseline, for generic), so the GEMMs run the
 *     instructions the level allows;
 *   otherwise OPENBLAS_CORETYPE as set, or OpenBLAS's own detection.
 */
static void choose_coretype(void) {
    const char *mine = getenv("TL_BLAS_CORETYPE");
    const char *inherited = getenv("OPENBLAS_CORETYPE");
    int has = inherited && *inherited, level = tl_isa();
#if defined(__x86_64__)
    const int x86 = 1;
#else
    const int x86 = 0; /* the families below are x86's; elsewhere OpenBLAS detects its own */
#endif
    if (mine && *mine) {
        setenv("OPENBLAS_CORETYPE", mine, 1);
        snprintf(g_chosen, sizeof g_chosen, "%s (from TL_BLAS_CORETYPE)", mine);
    } else if (level == TL_ISA_AVX512) {
        if (has && coretype_has_avx512(inherited)) {
            snprintf(g_chosen, sizeof g_chosen, "%s (from OPENBLAS_CORETYPE)", inherited);
        } else {
            snprintf(g_chosen, sizeof g_chosen, "SKYLAKEX (AVX-512 found%s%.16s%s)", has ? "; OPENBLAS_CORETYPE=" : "",
                     has ? inherited : "", has ? " overridden" : "");
            setenv("OPENBLAS_CORETYPE", "SKYLAKEX", 1);
        }
    } else if (x86 && tl_isa_from_env()) {
        const char *family = level == TL_ISA_AVX2 ? "HASWELL" : "NEHALEM";
        snprintf(g_chosen, sizeof g_chosen, "%s (TL_ISA level %s%s%.16s%s)", family, tl_isa_level_name(level),
                 has ? "; OPENBLAS_CORETYPE=" : "", has ? inherited : "", has ? " overridden" : "");
        setenv("OPENBLAS_CORETYPE", family, 1);
    } else if (has) {
        snprintf(g_chosen, sizeof g_chosen, "%s (from OPENBLAS_CORETYPE)", inherited);
    } else {
        snprintf(g_chosen, sizeof g_chosen, "autodetected");
    }
}

static void load_once(void) {
    describe_features();
    choose_coretype();
    setenv("OPENBLAS_NUM_THREADS", "1", 1);

    const char *path = getenv("TL_OPENBLAS_LIB");
    if (!path || !*path) path = TL_OPENBLAS_PATH;
    g_handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!g_handle && strcmp(path, "libopenblas.so.0") != 0) g_handle = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!g_handle) {
        snprintf(g_err, sizeof g_err, "cannot load OpenBLAS (%s): %s; install libopenblas0-pthread", path, dlerror());
        return;
    }
    g_sgemm = (sgemm_fn)dlsym(g_handle, "cblas_sgemm");
    g_corename = (char *(*)(void))dlsym(g_handle, "openblas_get_corename");
    g_config = (char *(*)(void))dlsym(g_handle, "openblas_get_config");
    g_set_threads = (void (*)(int))dlsym(g_handle, "openblas_set_num_threads");
    if (!g_sgemm) {
        snprintf(g_err, sizeof g_err, "OpenBLAS at %s lacks cblas_sgemm", path);
        return;
    }
    if (g_set_threads) g_set_threads(1);
    snprintf(g_core, sizeof g_core, "%s (chosen: %s)", g_corename ? g_corename() : "unknown", g_chosen);
}

int tl_blas_init(char *err, size_t errlen) {
    pthread_once(&g_once, load_once);
    if (g_sgemm) return 0;
    tl_seterr(err, errlen, "%s", g_err);
    return -1;
}

int tl_runtime_init(char *err, size_t errlen) { return tl_blas_init(err, errlen); }

const char *tl_blas_config(void) {
    if (tl_blas_init(NULL, 0) != 0) return "unavailable";
    return g_config ? g_config() : "OpenBLAS";
}

const char *tl_blas_corename(void) {
    if (tl_blas_init(NULL, 0) != 0) return "unavailable";
    return g_core;
}

const char *tl_cpu_features(void) {
    tl_blas_init(NULL, 0);
    return g_features;
}

void tl_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
              int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (!g_sgemm && tl_blas_init(NULL, 0) != 0) return;
    g_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
            lda, B, ldb, beta, C, ldc);
}
