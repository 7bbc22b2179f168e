/*
 * fnv.h: FNV-1a 64, the engine's one non-cryptographic hash: the annotator's
 * part-file checksums and run fingerprint (jobs/annotate_parts.c,
 * jobs/annotate.c) and the label-map writer's key set (data/labelmap.c).
 * Part files store its values, so it must never change. Inline, no state
 * beyond the caller's tl_fnv; any thread.
 */
#ifndef TL_FNV_H
#define TL_FNV_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t h;
} tl_fnv;

/* Starts a hash (the FNV-1a 64 offset basis). */
static inline void tl_fnv_init(tl_fnv *f) { f->h = 1469598103934665603ull; }

/* Adds n bytes at p. */
static inline void tl_fnv_add(tl_fnv *f, const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = f->h;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    f->h = h;
}

/* Adds the 8 bytes of v in the host's (little-endian) order. */
static inline void tl_fnv_u64(tl_fnv *f, uint64_t v) { tl_fnv_add(f, &v, sizeof v); }

#endif
