/*
 * base.h: what every layer of tokenlab shares, engine and daemon alike: the
 * error-message formatter, the clocks, and the always-on invariant checks.
 * Implemented in engine/core/base.c. No state but the invariant counter;
 * any thread.
 *
 * Invariant checks (after SQLite's ALWAYS/NEVER and Redis's serverAssert):
 * for what must never happen whatever the input (a queue over its bound, a
 * state change the state machine forbids, a refcount below zero, a lock taken
 * out of order). User errors are never checked this way: they are return
 * codes with a message.
 *
 *     if (TL_NEVER(q->len > q->cap)) return -1;   // refuse, never overrun
 *     if (!TL_ALWAYS(e->refs > 0)) return;        // do not release twice
 *
 * TL_NEVER(x) is x and TL_ALWAYS(x) is x, so the caller always has a safe
 * way out. When the invariant is broken it is reported to stderr (file, line,
 * expression) and counted (tl_invariant_failures); in a build with
 * TL_INVARIANT_FATAL defined (the sanitizer build) it then aborts, so tests
 * under sanitizers fail at the first broken invariant. Release builds log,
 * count and take the refusing branch the caller wrote.
 */
#ifndef TOKENLAB_BASE_H
#define TOKENLAB_BASE_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ---- */

/* Writes a printf-style message into err (errlen bytes, always terminated and
 * truncated to fit; nothing when err is NULL or errlen is 0). Returns -1, so a
 * failing function can `return tl_seterr(err, errlen, "...")`. */
int tl_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- clocks ---- */

/* Seconds on the monotonic clock (for durations and rates). */
double tl_clock_mono_s(void);
/* Milliseconds on the monotonic clock (for timeouts and deadlines). */
int64_t tl_clock_mono_ms(void);
/* Milliseconds since the Unix epoch on the wall clock (for stored times). */
int64_t tl_clock_wall_ms(void);

/* ---- invariants ---- */

/* Reports a broken invariant (stderr, the counter) and, with TL_INVARIANT_FATAL, aborts.
 * Called by the macros below; returns 1. */
int tl_invariant_failed(const char *file, int line, const char *expr);
/* How many invariant checks have failed in this process (for /metrics and tests). */
uint64_t tl_invariant_failures(void);

#define TL_NEVER(x) (__builtin_expect(!!(x), 0) ? tl_invariant_failed(__FILE__, __LINE__, "never: " #x) : 0)
#define TL_ALWAYS(x) (__builtin_expect(!!(x), 1) ? 1 : !tl_invariant_failed(__FILE__, __LINE__, "always: " #x))

/* An upper bound of the number of values a JSON parser (cJSON) creates for the text: 1 + the commas and
 * opening brackets outside strings. Linear, allocates nothing: a document is checked against a value
 * budget before it is parsed, so that a small body can never make the parser build a large tree. */
size_t tl_json_count_values(const char *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif
