/*
 * histogram.h: Prometheus histograms of durations (server/http/histogram.c),
 * for the daemon's /metrics: HTTP request duration by route (http.c),
 * inference queue and compute time per model (serving/batcher.c), training
 * step time (jobs/jobs.c). A tld_hist is plain data; its owner guards it
 * with its own lock. One set of bucket bounds, in seconds, for all of them,
 * so that dashboards can compare them.
 */
#ifndef TLD_HISTOGRAM_H
#define TLD_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#define TLD_HIST_BUCKETS 17 /* 16 bounds and +Inf */

typedef struct {
    uint64_t n[TLD_HIST_BUCKETS]; /* observations per bucket (not cumulative); the last is above every bound */
    double sum;                   /* seconds */
    uint64_t count;
} tld_hist;

/* Adds one observation of `seconds` (negative or NaN counts as 0). */
void tld_hist_observe(tld_hist *h, double seconds);
/* Appends the Prometheus text of h as metric `name` with the label text `labels` (e.g. `model="x"`, may
 * be "") to buf at *len (cap bytes): the cumulative name_bucket{...,le="..."} lines, name_sum, name_count.
 * Output that does not fit is cut at a line boundary; *len never passes cap - 1. */
void tld_hist_format(char *buf, size_t cap, size_t *len, const char *name, const char *labels, const tld_hist *h);

#endif
