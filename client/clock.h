/*
 * clock.h: the client's clocks and its one way of waiting. They mirror
 * tl_clock_mono_s / tl_clock_wall_ms of tokenlab/base.h, which the client
 * cannot call: it does not link the engine.
 */
#ifndef TOKENLAB_CLOCK_H
#define TOKENLAB_CLOCK_H

/* Seconds on the monotonic clock (for durations, rates and retry windows; not a time of day). */
double clock_mono_s(void);

/* Milliseconds since the Unix epoch on the wall clock (to compare with the server's *_ms times). */
double clock_wall_ms(void);

/* Sleeps for s seconds (s >= 0), resuming after other signals, but returns early once Ctrl-C has
 * set api_interrupted; the caller checks api_interrupted afterwards. */
void clock_nap_s(double s);

#endif
