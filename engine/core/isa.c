/*
 * isa.c: the engine's kernel level (simd.h): what the CPU runs, capped by
 * TL_ISA, decided once.
 *
 * Owns: the CPU's level, the level in use and the report of how it was
 * chosen, set under pthread_once by the first thread that asks (any thread:
 * BLAS loading, an op, the daemon's info route) and read-only afterwards,
 * except through tl_isa_force, which tests call while no op runs.
 *
 * CPU levels: AVX-512 needs F, CD, BW, DQ and VL (what SkylakeX-class kernels
 * use) with AVX2 and FMA; AVX2 needs AVX2 and FMA. __builtin_cpu_supports
 * counts a feature only when the OS saves its registers (XGETBV), so a
 * kernel or hypervisor that disables AVX-512 state gives the AVX2 level.
 */
#include "core/simd.h"
#include "tokenlab/model.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_cpu;
static _Atomic int g_level;
static int g_from_env;
static char g_reason[128];

static const char *const g_names[] = {"generic", "avx2", "avx512"};

static int detect_cpu(void) {
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

/* TL_ISA's level, or -1 when it is unset, empty or not a level's name. */
static int parse_env(const char *v) {
    if (!v || !*v) return -1;
    for (int i = 0; i < 3; i++)
        if (strcasecmp(v, g_names[i]) == 0) return i;
    return -1;
}

static void decide(void) {
    g_cpu = detect_cpu();
    const char *env = getenv("TL_ISA");
    int want = parse_env(env);
    int level = g_cpu;
    if (want >= 0) {
        g_from_env = 1;
        level = want < g_cpu ? want : g_cpu;
        if (want > g_cpu)
            snprintf(g_reason, sizeof g_reason, "%s (TL_ISA=%s capped: the CPU runs %s at most)", g_names[level],
                     g_names[want], g_names[g_cpu]);
        else
            snprintf(g_reason, sizeof g_reason, "%s (TL_ISA=%s)", g_names[level], g_names[want]);
    } else if (env && *env) {
        snprintf(g_reason, sizeof g_reason, "%s (the CPU's best; TL_ISA=%.24s ignored: not generic, avx2 or avx512)",
                 g_names[level], env);
    } else {
        snprintf(g_reason, sizeof g_reason, "%s (the CPU's best)", g_names[level]);
    }
    atomic_store(&g_level, level);
}

int tl_isa(void) {
    pthread_once(&g_once, decide);
    return atomic_load_explicit(&g_level, memory_order_relaxed);
}

int tl_isa_cpu(void) {
    pthread_once(&g_once, decide);
    return g_cpu;
}

const char *tl_isa_level_name(int level) {
    return level >= 0 && level < 3 ? g_names[level] : g_names[0];
}

const char *tl_isa_name(void) { return tl_isa_level_name(tl_isa()); }

const char *tl_isa_reason(void) {
    pthread_once(&g_once, decide);
    return g_reason;
}

int tl_isa_from_env(void) {
    pthread_once(&g_once, decide);
    return g_from_env;
}

int tl_isa_force(int level) {
    pthread_once(&g_once, decide);
    if (level < TL_ISA_GENERIC) level = TL_ISA_GENERIC;
    if (level > g_cpu) level = g_cpu;
    return atomic_exchange(&g_level, level);
}
