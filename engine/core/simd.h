/*
 * simd.h: the engine's one ISA switch, and what lets its loops use the
 * CPU's vector units.
 *
 * tl_isa() is the kernel level every dispatch in the engine follows:
 * TL_ISA_GENERIC (the build's baseline, x86-64-v2), TL_ISA_AVX2 (AVX2 + FMA)
 * or TL_ISA_AVX512 (AVX-512 F, CD, BW, DQ, VL with AVX2 + FMA). It is the
 * best level the CPU and the OS run, or the environment variable
 * TL_ISA=generic|avx2|avx512 capped at that; it is decided once (isa.c) and
 * OpenBLAS's kernel family follows it (blas.c). Other architectures are
 * always TL_ISA_GENERIC.
 *
 * TL_VEC_FN(name, (params), (args)) { body } defines `static void name` whose
 * body is compiled three times, for AVX-512, for AVX2 + FMA and for the
 * baseline, with the copy tl_isa() names run on every call: the way a plain
 * C loop that the compiler vectorises by itself becomes fast on each level
 * and still testable on every level a machine has. Loops the compiler cannot
 * vectorise on AVX2 (exp and erf behind clamps and blends) have kernels of
 * their own in ops/ (elementwise_avx2.c).
 *
 * TL_VEC (GCC function multi-versioning through an ifunc, chosen by the
 * loader) remains for the data pipeline's helpers (engine/data, engine/jobs):
 * it follows the CPU only, not TL_ISA. The ops of engine/ops use TL_VEC_FN.
 *
 * tl_expf and tl_erff are branch-free, so loops calling them vectorise on
 * AVX-512 (libm's expf/erff calls do not). Accuracy: tl_expf within 2 ulp on
 * [-87, 88] (clamped outside; NaN in, NaN out); tl_erff within 1.5e-7
 * absolute (Abramowitz and Stegun 7.1.26), enough for GELU, whose outputs
 * and gradients are then within float rounding of the exact ones.
 * tl_expf_avx2 and tl_erff_avx2 are the same formulas on 8 lanes.
 *
 * Threads: tl_isa() may be called from any thread (pthread_once inside).
 */
#ifndef TL_SIMD_H
#define TL_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- the ISA switch (isa.c) ---- */
enum { TL_ISA_GENERIC = 0, TL_ISA_AVX2 = 1, TL_ISA_AVX512 = 2 };

/* The kernel level in use: TL_ISA (generic, avx2, avx512) capped at the
 * CPU's, else the CPU's; decided on the first call. */
int tl_isa(void);
/* The best level this CPU and OS run, whatever TL_ISA says. */
int tl_isa_cpu(void);
/* "generic", "avx2" or "avx512" for a level (any other value: "generic"). */
const char *tl_isa_level_name(int level);
/* How the level was chosen, for reports: e.g. "avx2 (TL_ISA=avx512 capped:
 * the CPU lacks AVX-512)" or "avx512 (the CPU's best)". */
const char *tl_isa_reason(void);
/* 1 when TL_ISA named a level (valid or capped), so BLAS must follow it. */
int tl_isa_from_env(void);
/* Tests only: sets the level (capped at the CPU's) and returns the previous
 * one. Only while no op runs on another thread; BLAS's family stays as
 * loaded. */
int tl_isa_force(int level);

/* ---- one loop body, three targets ---- */
#if defined(__x86_64__)
#define TL_TARGET_AVX2 "avx2,fma,bmi,bmi2,lzcnt,movbe,f16c"
#define TL_TARGET_AVX512 "avx512f,avx512cd,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,lzcnt,movbe,f16c"
#define TL_VEC_FN(name, params, args)                                                                               \
    static inline __attribute__((always_inline)) void name##_body params;                                          \
    __attribute__((target(TL_TARGET_AVX512))) static void name##_avx512 params { name##_body args; }               \
    __attribute__((target(TL_TARGET_AVX2))) static void name##_avx2 params { name##_body args; }                   \
    static void name##_generic params { name##_body args; }                                                         \
    static void name params {                                                                                       \
        int level_ = tl_isa();                                                                                      \
        if (level_ == TL_ISA_AVX512) name##_avx512 args;                                                            \
        else if (level_ == TL_ISA_AVX2) name##_avx2 args;                                                           \
        else name##_generic args;                                                                                   \
    }                                                                                                               \
    static inline __attribute__((always_inline)) void name##_body params
#else
#define TL_VEC_FN(name, params, args) static void name params
#endif

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define TL_VEC __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TL_VEC
#endif

static inline float tl_expf(float x) {
    float xc = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
    xc = xc == xc ? xc : 0.0f; /* NaN: compute on 0 (no undefined conversion), return NaN below */
    /* round to nearest by the 1.5*2^23 trick: vectorises, unlike roundf */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693145751953125f;  /* ln2 split in two for accuracy */
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* n in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x == x ? p * scale : x;
}

static inline float tl_erff(float x) {
    float ax = x < 0.0f ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * ax);
    float y = 1.061405429f;
    y = y * t - 1.453152027f;
    y = y * t + 1.421413741f;
    y = y * t - 0.284496736f;
    y = y * t + 0.254829592f;
    y = 1.0f - y * t * tl_expf(-ax * ax);
    return x < 0.0f ? -y : y;
}

#if defined(__x86_64__)
/* tl_expf on 8 lanes: the same clamp, reduction and polynomial. */
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 tl_expf_avx2(__m256 x) {
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f)); /* NaN -> -87.3 */
    __m256 magic = _mm256_set1_ps(12582912.0f);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic), magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* tl_erff on 8 lanes; *e receives exp(-x*x), which GELU's gradient reuses. */
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 tl_erff_avx2(__m256 x, __m256 *e) {
    __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), ax, _mm256_set1_ps(1.0f)));
    __m256 y = _mm256_set1_ps(1.061405429f);
    y = _mm256_fmadd_ps(y, t, _mm256_set1_ps(-1.453152027f));
    y = _mm256_fmadd_ps(y, t, _mm256_set1_ps(1.421413741f));
    y = _mm256_fmadd_ps(y, t, _mm256_set1_ps(-0.284496736f));
    y = _mm256_fmadd_ps(y, t, _mm256_set1_ps(0.254829592f));
    __m256 ex = tl_expf_avx2(_mm256_mul_ps(_mm256_xor_ps(ax, sign), ax));
    *e = ex;
    y = _mm256_fnmadd_ps(_mm256_mul_ps(y, t), ex, _mm256_set1_ps(1.0f));
    return _mm256_xor_ps(y, _mm256_and_ps(x, sign)); /* -y where x < 0 */
}
#endif

#endif
