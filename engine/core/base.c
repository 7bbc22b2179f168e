/*
 * base.c: the error formatter, clocks and invariant reports of base.h.
 *
 * Owns one atomic counter of broken invariants. Any thread.
 */
#include "tokenlab/base.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int tl_seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

double tl_clock_mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t tl_clock_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tl_clock_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static atomic_uint_fast64_t g_invariant_failures;

int tl_invariant_failed(const char *file, int line, const char *expr) {
    atomic_fetch_add(&g_invariant_failures, 1);
    fprintf(stderr, "tokenlab: invariant broken at %s:%d: %s\n", file, line, expr);
#ifdef TL_INVARIANT_FATAL
    abort();
#endif
    return 1;
}

uint64_t tl_invariant_failures(void) {
    return (uint64_t)atomic_load(&g_invariant_failures);
}

size_t tl_json_count_values(const char *s, size_t len) {
    size_t n = 1;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == ',' || c == '[' || c == '{') {
            n++;
        }
    }
    return n;
}
