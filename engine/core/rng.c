/*
 * rng.c: xoshiro256** with splitmix64 seeding (see rng.h). Pure functions on
 * caller-owned state.
 */
#include "tokenlab/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void tl_rng_seed(tl_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

void tl_rng_derive(tl_rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t x = seed;
    uint64_t h = splitmix64(&x);
    x = h ^ (a * 0xD1B54A32D192ED03ULL);
    h = splitmix64(&x);
    x = h ^ (b * 0xABC98388FB8FAC03ULL);
    h = splitmix64(&x);
    x = h ^ (c * 0x8CB92BA72F3D8DD7ULL);
    tl_rng_seed(r, splitmix64(&x));
}

uint64_t tl_rng_next(tl_rng *r) {
    uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

double tl_rng_uniform(tl_rng *r) { return (double)(tl_rng_next(r) >> 11) * 0x1.0p-53; }

double tl_rng_normal(tl_rng *r) {
    double u1 = tl_rng_uniform(r), u2 = tl_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint32_t tl_rng_below(tl_rng *r, uint32_t n) { return (uint32_t)(((tl_rng_next(r) >> 32) * (uint64_t)n) >> 32); }

double tl_rng_beta11(tl_rng *r) { return tl_rng_uniform(r); }

/* Marsaglia-Tsang gamma sampler, for Beta(a, b) = X / (X + Y). */
static double gamma_sample(tl_rng *r, double a) {
    if (a < 1.0) {
        double u = tl_rng_uniform(r);
        return gamma_sample(r, a + 1.0) * pow(u > 1e-300 ? u : 1e-300, 1.0 / a);
    }
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = tl_rng_normal(r), v = 1.0 + c * x;
        if (v <= 0.0) continue;
        v = v * v * v;
        double u = tl_rng_uniform(r);
        if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
        if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v;
    }
}

double tl_rng_beta(tl_rng *r, double a, double b) {
    double x = gamma_sample(r, a), y = gamma_sample(r, b);
    return x + y > 0.0 ? x / (x + y) : 0.5;
}
