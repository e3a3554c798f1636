/* Knative's KPA as a pure function; see include/stoke/autoscale.h. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "stoke/autoscale.h"

/* Whole seconds covering span_ms, at least one. */
static uint64_t span_seconds(uint64_t span_ms)
{
    uint64_t n = span_ms / 1000 + (span_ms % 1000 != 0);
    return n ? n : 1;
}

int stoke_metric_window_init(struct stoke_metric_window *w, uint64_t span_ms)
{
    memset(w, 0, sizeof(*w));
    if (span_ms > STOKE_METRIC_WINDOW_MAX_MS)
        return -EINVAL;
    uint64_t n = span_seconds(span_ms);
    w->buckets = calloc(n, sizeof(*w->buckets));
    if (!w->buckets)
        return -ENOMEM;
    w->seconds = (uint32_t)n;
    return 0;
}

void stoke_metric_window_done(struct stoke_metric_window *w)
{
    free(w->buckets);
    w->buckets = NULL;
    w->seconds = 0;
}

int stoke_metric_window_reserve(struct stoke_metric_window *w, uint64_t span_ms)
{
    if (span_ms > STOKE_METRIC_WINDOW_MAX_MS)
        return -EINVAL;
    uint64_t n = span_seconds(span_ms);
    if (n <= w->seconds)
        return 0;
    struct stoke_metric_bucket *nb = calloc(n, sizeof(*nb));
    if (!nb)
        return -ENOMEM;
    /* Re-slot what the old ring holds; should two old seconds meet in one
     * new slot (possible only for seconds far apart), the newer one wins,
     * as it would have in the ring. */
    for (uint32_t i = 0; i < w->seconds; i++) {
        const struct stoke_metric_bucket *b = &w->buckets[i];
        if (b->second_plus1 == 0)
            continue;
        struct stoke_metric_bucket *to = &nb[(b->second_plus1 - 1) % n];
        if (to->second_plus1 < b->second_plus1)
            *to = *b;
    }
    free(w->buckets);
    w->buckets = nb;
    w->seconds = (uint32_t)n;
    return 0;
}

int stoke_metric_window_add(struct stoke_metric_window *w, uint64_t second, double value)
{
    if (w->seconds == 0 || !isfinite(value) || value < 0 || second == UINT64_MAX)
        return -EINVAL;
    struct stoke_metric_bucket *b = &w->buckets[second % w->seconds];
    if (b->second_plus1 == second + 1) {
        b->sum += value;
    } else if (b->second_plus1 > second + 1) {
        return -ESTALE;
    } else {
        b->second_plus1 = second + 1;
        b->sum = value;
    }
    return 0;
}

/* Knative rounds window averages to 6 decimals, so that sums of reports
 * such as 0.1 + 0.2 do not tip a ceil() over to one more replica. */
static double round6(double v)
{
    return round(v * 1e6) / 1e6;
}

bool stoke_metric_window_average(const struct stoke_metric_window *w, uint64_t now_ms,
                                 uint64_t span_ms, double *ret_avg)
{
    uint64_t now_s = now_ms / 1000;
    uint64_t n = span_seconds(span_ms);
    if (n > w->seconds)
        n = w->seconds;
    if (n > now_s + 1)
        n = now_s + 1; /* nothing before second 0 */
    double sum = 0;
    uint64_t have = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t s = now_s - i;
        const struct stoke_metric_bucket *b = &w->buckets[s % w->seconds];
        if (b->second_plus1 == s + 1) {
            sum += b->sum;
            have++;
        }
    }
    if (have == 0)
        return false;
    *ret_avg = round6(sum / (double)have);
    return true;
}

void stoke_autoscaler_init(struct stoke_autoscaler *a, uint64_t now_ms, uint32_t ready)
{
    memset(a, 0, sizeof(*a));
    if (ready > 1) {
        a->panicking = true;
        a->panic_time_ms = now_ms;
        a->max_panic = ready;
    }
}

void stoke_autoscaler_seed(struct stoke_autoscaler *a, uint32_t desired)
{
    a->has_last = true;
    a->last_desired = desired;
}

int stoke_autoscaler_record(const struct stoke_autoscaler *a, uint32_t ready,
                            struct stoke_metric_window *history, uint64_t second, double value)
{
    bool at_zero = ready == 0 && (!a->has_last || a->last_desired == 0);
    if (at_zero && value == 0)
        return 1;
    return stoke_metric_window_add(history, second, value);
}

/* ceil(x) as a replica count. The small tolerance keeps a quotient such as
 * 2.1 / 0.7 = 3.0000000000000004 at 3 replicas, not 4; it is far below the
 * 1e-6 resolution of the averages. */
static double replicas_for(double x)
{
    if (!(x > 1e-9))
        return 0;
    return ceil(x - 1e-9);
}

static uint32_t to_count(double x)
{
    if (x >= (double)UINT32_MAX)
        return UINT32_MAX;
    if (!(x > 0))
        return 0;
    return (uint32_t)x;
}

/* Records `v` at `now_ms` in the window of the last `delay_ms` and returns
 * the highest value in it: a deque of descending maxima, oldest first (the
 * "ascending minima" algorithm Knative's max.TimeWindow uses). */
static uint32_t delay_record(struct stoke_autoscaler *a, uint64_t now_ms, uint64_t delay_ms,
                             uint32_t v)
{
    const uint32_t cap = STOKE_AUTOSCALE_DELAY_SLOTS;
    /* A value not above the new one can never be the maximum again. */
    while (a->delay_len > 0 && a->delay[(a->delay_first + a->delay_len - 1) % cap].value <= v)
        a->delay_len--;
    /* Drop what fell out of (now - delay, now]. */
    while (a->delay_len > 0) {
        uint64_t at = a->delay[a->delay_first].at_ms;
        if (at > now_ms || now_ms - at < delay_ms)
            break;
        a->delay_first = (a->delay_first + 1) % cap;
        a->delay_len--;
    }
    if (a->delay_len == cap) {
        /* Full: the newest slot (higher than v) takes the new time. */
        a->delay[(a->delay_first + cap - 1) % cap].at_ms = now_ms;
    } else {
        uint32_t i = (a->delay_first + a->delay_len) % cap;
        a->delay[i].at_ms = now_ms;
        a->delay[i].value = v;
        a->delay_len++;
    }
    return a->delay[a->delay_first].value;
}

static uint32_t clamp(const struct stoke_scale *scale, uint32_t desired)
{
    if (desired < scale->min)
        desired = scale->min;
    if (scale->max != 0 && desired > scale->max)
        desired = scale->max;
    return desired;
}

int stoke_autoscale(struct stoke_autoscaler *a, const struct stoke_scale *scale,
                    const struct stoke_metric_window *history, uint64_t now_ms, uint32_t ready,
                    bool cold, struct stoke_scale_decision *ret)
{
    /* The capacity check also bounds window_ms (to an hour), so the
     * products below cannot overflow. */
    if (history->seconds == 0 || span_seconds(scale->window_ms) > history->seconds)
        return -EINVAL;
    double goal = (double)scale->target * (double)scale->utilization / 100.0;
    if (!(goal > 0))
        return -EINVAL;
    uint64_t panic_ms = scale->window_ms * scale->panic_window_percent / 100;
    if (panic_ms < 1000)
        panic_ms = 1000;

    struct stoke_scale_decision d = {0};
    uint32_t desired;
    double stable_avg = 0, panic_avg = 0;
    d.has_data = stoke_metric_window_average(history, now_ms, scale->window_ms, &stable_avg);
    if (!d.has_data) {
        /* Nothing known about the traffic: keep what was decided. Not a
         * zero either, so the scale-to-zero clock starts again. */
        a->zero_known = false;
        desired = clamp(scale, a->has_last ? a->last_desired : ready);
        goto out;
    }
    /* Missing is not zero: with no report in the panic window, the best
     * estimate of the recent past is the stable average. */
    if (!stoke_metric_window_average(history, now_ms, panic_ms, &panic_avg))
        panic_avg = stable_avg;
    d.stable_avg = stable_avg;
    d.panic_avg = panic_avg;

    double ready_f = ready > 0 ? (double)ready : 1.0;
    double max_up = ready > 0 ? ceil(ready_f * STOKE_AUTOSCALE_MAX_SCALE_UP) : INFINITY;
    double max_down = floor(ready_f / STOKE_AUTOSCALE_MAX_SCALE_DOWN);
    double dspc = replicas_for(stable_avg / goal);
    double dppc = replicas_for(panic_avg / goal);
    d.desired_stable = to_count(fmin(fmax(dspc, max_down), max_up));
    d.desired_panic = to_count(fmin(fmax(dppc, max_down), max_up));

    /* dppc / ready >= threshold / 100, in exact integer-valued doubles. */
    bool over = dppc * 100.0 >= (double)scale->panic_threshold_percent * ready_f;
    if (over) {
        a->panicking = true;
        a->panic_time_ms = now_ms;
    } else if (a->panicking && now_ms > a->panic_time_ms &&
               now_ms - a->panic_time_ms > scale->window_ms) {
        /* The surge has had a whole stable window to reach the stable
         * average: trust it again. */
        a->panicking = false;
        a->max_panic = 0;
    }

    desired = d.desired_stable;
    if (a->panicking) {
        if (desired < d.desired_panic)
            desired = d.desired_panic;
        /* No scale-down while panicking. */
        if (desired > a->max_panic)
            a->max_panic = desired;
        desired = a->max_panic;
    }

    if (scale->scale_down_delay_ms > 0)
        desired = delay_record(a, now_ms, scale->scale_down_delay_ms, desired);
    else
        a->delay_len = 0;

    if (stable_avg > 0) {
        a->zero_known = false;
    } else if (!a->zero_known) {
        a->zero_known = true;
        a->zero_since_ms = now_ms;
    }

    desired = clamp(scale, desired);
    if (desired == 0) {
        uint64_t hold = scale->scale_to_zero_grace_ms + scale->scale_down_delay_ms;
        bool idle_long =
            a->zero_known && now_ms >= a->zero_since_ms && now_ms - a->zero_since_ms >= hold;
        bool active = ready > 0 || (a->has_last && a->last_desired > 0);
        if (!idle_long && active)
            desired = 1;
    }

out:
    if (cold) {
        /* Requests are waiting: activation is never delayed nor limited. */
        a->zero_known = false;
        if (desired == 0)
            desired = 1;
    }
    a->has_last = true;
    a->last_desired = desired;
    d.desired = desired;
    d.panic = a->panicking;
    *ret = d;
    return 0;
}

uint32_t stoke_autoscale_backlog(const struct stoke_scale *scale, uint32_t desired,
                                 uint64_t backlog, uint32_t target, uint64_t now_ms,
                                 uint64_t *last_ms)
{
    uint64_t t = target ? target : 1;
    uint64_t need = backlog / t + (backlog % t != 0);
    if (scale->max && need > scale->max)
        need = scale->max;
    if (need > UINT32_MAX)
        need = UINT32_MAX;
    if (backlog > 0)
        *last_ms = now_ms;
    else if (*last_ms && now_ms - *last_ms < scale->scale_to_zero_grace_ms && need < 1)
        need = 1;
    return desired > need ? desired : (uint32_t)need;
}
