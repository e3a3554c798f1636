/* Fixed-bucket duration histograms; see stoke/histogram.h. */
#include "stoke/histogram.h"

#include <inttypes.h>

static const uint64_t bound_us[STOKE_HISTOGRAM_BUCKETS] = {
    5000,    10000,   25000,   50000,    100000,   250000,   500000,
    1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};
static const char *const bound_le[STOKE_HISTOGRAM_BUCKETS + 1] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
    "1",     "2.5",  "5",     "10",   "30",  "60",   "+Inf",
};

void stoke_histogram_observe(struct stoke_histogram *h, uint64_t us)
{
    size_t b = 0;
    while (b < STOKE_HISTOGRAM_BUCKETS && us > bound_us[b])
        b++;
    h->bucket[b]++;
    h->sum_us += us;
}

uint64_t stoke_histogram_count(const struct stoke_histogram *h)
{
    uint64_t n = 0;
    for (size_t b = 0; b <= STOKE_HISTOGRAM_BUCKETS; b++)
        n += h->bucket[b];
    return n;
}

int stoke_histogram_format(const struct stoke_histogram *h, const char *name, const char *labels,
                           struct stoke_buf *out)
{
    const char *sep = labels[0] ? "," : "";
    uint64_t cum = 0;
    int r = 0;
    for (size_t b = 0; b <= STOKE_HISTOGRAM_BUCKETS && r == 0; b++) {
        cum += h->bucket[b];
        r = stoke_buf_printf(out, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, sep,
                             bound_le[b], cum);
    }
    if (r == 0)
        r = stoke_buf_printf(out, "%s_sum%s%s%s %" PRIu64 ".%06" PRIu64 "\n", name,
                             labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
                             h->sum_us / 1000000, h->sum_us % 1000000);
    if (r == 0)
        r = stoke_buf_printf(out, "%s_count%s%s%s %" PRIu64 "\n", name, labels[0] ? "{" : "",
                             labels, labels[0] ? "}" : "", cum);
    return r;
}
