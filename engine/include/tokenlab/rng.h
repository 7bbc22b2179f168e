/*
 * rng.h: the engine's deterministic random numbers (xoshiro256** seeded by
 * splitmix64). Every random choice in training derives from the job seed
 * through tl_rng_derive, keyed by what it is for (epoch, sample position,
 * step), so results never depend on thread timing and a resumed run draws
 * exactly what the uninterrupted run would have drawn.
 * A tl_rng is a plain value: one owner thread at a time.
 */
#ifndef TL_RNG_H
#define TL_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} tl_rng;

/* Seeds the generator from one 64-bit value (the four state words by splitmix64). */
void tl_rng_seed(tl_rng *r, uint64_t seed);
/* A stream for (seed, a, b, c): independent of every other key. */
void tl_rng_derive(tl_rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t c);
/* The next 64 random bits. */
uint64_t tl_rng_next(tl_rng *r);
double tl_rng_uniform(tl_rng *r);                  /* [0, 1) */
double tl_rng_normal(tl_rng *r);                   /* N(0, 1) */
uint32_t tl_rng_below(tl_rng *r, uint32_t n);      /* [0, n), n > 0 */
double tl_rng_beta11(tl_rng *r);                   /* Beta(1,1) = U(0,1) */
double tl_rng_beta(tl_rng *r, double a, double b); /* Beta(a,b), a,b > 0 */

/* Salts for tl_rng_derive's first key, so streams for different purposes never collide. */
enum {
    TL_RNG_INIT = 1,
    TL_RNG_EPOCH_ORDER = 2, /* b = epoch */
    TL_RNG_AUGMENT = 3,     /* b = epoch, c = position in epoch */
    TL_RNG_MIXTOKEN = 4,    /* b = step */
    TL_RNG_DROPPATH = 5,    /* b = step */
    TL_RNG_MIXUP = 6,       /* b = step */
    TL_RNG_INSPECT = 7,
    TL_RNG_SYNTH = 8,
};

#endif
