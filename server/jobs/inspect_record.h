/*
 * inspect_record.h: turns the engine's token-inspection output (inspect.h)
 * into store records (store.h): the job's set once, then the predictions of
 * every evaluation. Called by a job's worker thread from its on_inspect hook.
 */
#ifndef TLD_INSPECT_RECORD_H
#define TLD_INSPECT_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "tokenlab/inspect.h"
#include "store/store.h"

/* Writes the set unless *set_written (then sets it), then the predictions at (step, ema).
 * train_dir: the job's training dataset (for its class names). 0, or -1 with a message. */
int tld_inspect_record(tld_store *s, int64_t job, const char *train_dir, int *set_written, const tl_inspect_set *set,
                      const tl_inspect_result *res, int64_t step, int ema, char *err, size_t errlen);

#endif
