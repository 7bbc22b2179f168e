/*
 * watch.h: following a job to its end through its Server-Sent Events stream
 * (used by `tokenlab watch` and `tokenlab submit --wait`).
 */
#ifndef TOKENLAB_WATCH_H
#define TOKENLAB_WATCH_H

#include <stdint.h>

#include "cli.h"

typedef struct {
    double interval_s; /* when stdout is not a terminal: at most one progress line per interval */
    int quiet;         /* print nothing (the caller reports the end) */
} watch_opts;

/* Follows job id until it is SUCCEEDED, FAILED, CANCELLED or deleted. Returns EX_OK, EX_FAILED,
 * EX_CANCELLED, or EX_SERVER / EX_CONNECT / EX_INTERRUPTED (explained on stderr). With c->json
 * and not quiet, prints each event as one JSON line. */
int watch_job(cli *c, int64_t id, const watch_opts *o);

/* Whether a job state is final: SUCCEEDED, FAILED or CANCELLED (the job will not change again). */
int watch_state_final(const char *state);

/* The exit status for a final job state (EX_OK for SUCCEEDED). */
int watch_exit_for_state(const char *state);

#endif
