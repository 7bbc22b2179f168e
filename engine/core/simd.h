/*
 * simd.h: what lets the engine's own loops use the CPU's vector units.
 *
 * TL_VEC marks a hot loop function to be compiled three times (AVX-512,
 * AVX2+FMA, baseline x86-64-v2); the loader picks the best one the CPU runs
 * (GCC function multi-versioning through an ifunc), so one binary is fast on
 * new CPUs and safe on old ones.
 *
 * tl_expf and tl_erff are branch-free, so loops calling them vectorise
 * (libm's expf/erff calls do not). Accuracy: tl_expf within 2 ulp on
 * [-87, 88] (clamped outside; NaN in, NaN out); tl_erff within 1.5e-7 absolute
 * (Abramowitz and Stegun 7.1.26), enough for GELU, whose outputs and gradients
 * are then within float rounding of the exact ones.
 */
#ifndef TL_SIMD_H
#define TL_SIMD_H

#include <stdint.h>
#include <string.h>

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

#endif
