/*
 * clock.c: the client's clocks and its one way of waiting (see clock.h),
 * the same clocks as tl_clock_* in tokenlab/base.h (engine/core/base.c),
 * written again because the client does not link the engine.
 *
 * Owns no state; reads api_interrupted (set by main.c's SIGINT handler) so
 * that Ctrl-C ends a wait. Single-threaded like the rest of the client.
 */
#include "clock.h"

#include <errno.h>
#include <math.h>
#include <time.h>

#include "api.h"

double clock_mono_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

double clock_wall_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec * 1000.0 + t.tv_nsec / 1e6;
}

void clock_nap_s(double s) {
    if (!(s > 0)) return;
    struct timespec t = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&t, &t) != 0 && errno == EINTR && !api_interrupted) {
    }
}
