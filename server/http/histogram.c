/*
 * histogram.c: Prometheus histograms of durations (see histogram.h).
 * No state; callers hold their own locks.
 */
#include "http/histogram.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Upper bounds in seconds: sub-millisecond routes up to training steps of a minute. */
static const double BOUNDS[TLD_HIST_BUCKETS - 1] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                   0.25,   0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0};

void tld_hist_observe(tld_hist *h, double seconds) {
    if (!(seconds > 0.0)) seconds = 0.0;
    int b = 0;
    while (b < TLD_HIST_BUCKETS - 1 && seconds > BOUNDS[b]) b++;
    h->n[b]++;
    h->sum += seconds;
    h->count++;
}

/* Appends one formatted line; 0, or -1 (nothing appended) when it does not fit. */
static int put(char *buf, size_t cap, size_t *len, const char *line) {
    size_t l = strlen(line);
    if (*len + l + 1 > cap) return -1;
    memcpy(buf + *len, line, l + 1);
    *len += l;
    return 0;
}

void tld_hist_format(char *buf, size_t cap, size_t *len, const char *name, const char *labels, const tld_hist *h) {
    char line[512];
    const char *sep = labels && labels[0] ? "," : "";
    uint64_t cum = 0;
    if (!labels) labels = "";
    for (int b = 0; b < TLD_HIST_BUCKETS; b++) {
        cum += h->n[b];
        if (b < TLD_HIST_BUCKETS - 1)
            snprintf(line, sizeof line, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, BOUNDS[b],
                     (unsigned long long)cum);
        else
            snprintf(line, sizeof line, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                     (unsigned long long)cum);
        if (put(buf, cap, len, line) != 0) return;
    }
    snprintf(line, sizeof line, "%s_sum{%s} %.6f\n", name, labels, h->sum);
    if (put(buf, cap, len, line) != 0) return;
    snprintf(line, sizeof line, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    put(buf, cap, len, line);
}
