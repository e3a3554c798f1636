/* A Prometheus histogram of durations with fixed buckets, 5 ms to 60 s:
 * counts kept per bucket, rendered cumulative in text format 0.0.4. Pure:
 * no clock, no allocation. Thread: the owner's. */
#ifndef STOKE_HISTOGRAM_H
#define STOKE_HISTOGRAM_H

#include <stdint.h>

#include "stoke/util.h"

/* Finite upper bounds: 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10, 30,
 * 60 s; then +Inf. */
#define STOKE_HISTOGRAM_BUCKETS 13

struct stoke_histogram {
    uint64_t bucket[STOKE_HISTOGRAM_BUCKETS + 1]; /* not cumulative; last: +Inf */
    uint64_t sum_us;
};

/* Counts one observation of `us` microseconds, in the first bucket whose
 * bound is >= us (bounds are inclusive, as Prometheus's `le`). */
void stoke_histogram_observe(struct stoke_histogram *h, uint64_t us);

/* Observations so far (the +Inf bucket, cumulative). */
uint64_t stoke_histogram_count(const struct stoke_histogram *h);

/* Appends the series `name`_bucket{labels,le="..."} (cumulative),
 * `name`_sum{labels} in seconds and `name`_count{labels} to `out`. `labels`
 * is the text between the braces without them ("" for none), already
 * escaped. HELP and TYPE are the caller's. Returns 0, -ENOBUFS or -ENOMEM
 * (out then holds part of the text). */
int stoke_histogram_format(const struct stoke_histogram *h, const char *name, const char *labels,
                           struct stoke_buf *out);

#endif
