/*
 * run_events.h: the event stream of `tokenlabd run --events`, the one
 * encoding of a training job's hooks as text lines, shared by both ends:
 * cmd_run.c (rank 0 of a distributed job, the writer) and the daemon's
 * distributed worker (mpi_job.c, the reader), which turns each line back
 * into a call of the same tl_train_hooks the in-process jobs use.
 *
 * Format: one JSON object per line, {"event": NAME, ...}, NAME one of
 * start, ranks, init, step, eval, before_checkpoint, checkpoint, log, end.
 * Numbers round-trip exactly (17 significant digits); a non-finite number is written as null and read back as NaN.
 * A line is at most TLD_RUN_EVENT_MAX bytes with its newline: the writer
 * never writes a longer one (a too long log message is cut), the reader
 * refuses one. on_inspect is not carried (its structures live only in the
 * ranks' memory); on_init carries what the daemon records (tl_init_info
 * without source_cfg).
 *
 * Writer: tld_run_events_tee installs hooks that write the line, flush it,
 * then call the inner hooks (the run folder's metrics file). Reader:
 * tld_run_event_dispatch parses one line and calls the matching hook.
 * No state besides the caller's structs: any thread, one stream per struct.
 */
#ifndef TLD_RUN_EVENTS_H
#define TLD_RUN_EVENTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tokenlab/train.h"

#define TLD_RUN_EVENT_MAX 65536   /* bytes per line, newline included */
#define TLD_RUN_EVENT_RANKS 256   /* ranks carried in a ranks or step event (the spec's maximum) */

/* The writer: hooks (out) that write each event to f and then call inner's hook (inner may lack any). */
typedef struct {
    FILE *f;
    tl_train_hooks inner;
    int failed;               /* a write failed (the reader is gone): later events are dropped */
} tld_run_events_tee;

/* Fills *out with the tee's hooks (user = t; should_stop asks inner's). t must outlive the run. */
void tld_run_events_tee_init(tld_run_events_tee *t, FILE *f, const tl_train_hooks *inner, tl_train_hooks *out);
/* Writes the "end" event of a finished run (status, reason, message, step, skipped_images, best_top1).
 * 0, or -1 when the write failed. */
int tld_run_events_end(tld_run_events_tee *t, tl_train_status st, const tl_train_result *res);

/* Encodes one event object (its first field "event": NAME) as a line with its newline into buf, NUL-terminated;
 * the line's length, or -1 when it does not fit in min(len, TLD_RUN_EVENT_MAX). obj is consumed (may be NULL:
 * -1). Exposed for the tests. */
struct cJSON;
int tld_run_event_encode(struct cJSON *obj, char *buf, size_t len);

/* The reader: parses one line (without or with its newline; len bytes, NUL not required) and calls the
 * matching hook of h (a missing hook skips the event). 0 for an event handed over, 1 for "end" (*st and *res
 * filled), -1 with a message for a malformed line (too long, not JSON, an unknown event, a missing or
 * mistyped field); nothing is called then. */
int tld_run_event_dispatch(const char *line, size_t len, const tl_train_hooks *h, tl_train_status *st,
                           tl_train_result *res, char *err, size_t errlen);

#endif
