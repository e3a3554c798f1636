/* The autoscaler: Knative's Pod Autoscaler (KPA) as a pure module.
 *
 * Purpose: decide how many replicas a function should have, from the
 * concurrency its activators observed (requests in flight plus queued,
 * averaged over each second by every activator and summed over activators),
 * the ready replica count and the time. The controller calls
 * stoke_autoscale() every tick (2 s) and on every poke; `stokectl simulate`
 * calls the very same function on a recorded trace.
 *
 * Pure: no I/O, no clock reads, no globals, no allocation in the decision.
 * Time always comes in as `now_ms` (ms on any monotonic clock, e.g. uv_now();
 * seconds in the metric window are that clock's ms / 1000). Replica counts
 * are plain numbers of replicas. Thread: any, but one struct is used by one
 * thread at a time (no locking inside).
 *
 * Knative's algorithm (pkg/autoscaler/scaling/autoscaler.go and the KPA
 * reconciler's scale-to-zero rule), with these deliberate differences:
 * - a second no activator reported is missing, not zero: averages are over
 *   the seconds that have data (Knative counts gaps inside the data as
 *   zeros), and a window with no data at all changes nothing (Knative
 *   likewise skips the tick). So an activator must report 0 for an idle
 *   function it routes: silence is not idleness, and never scales a
 *   function to zero;
 * - but a 0 reported while the function is at zero (see
 *   stoke_autoscaler_record()) is silence, as in Knative, whose activator
 *   stops reporting an idle revision: after a window of it the next report
 *   restarts the window (Knative's TimedFloat64Buckets.Record resets its
 *   buckets then), and seconds after the last report are left out of the
 *   averages (its WindowAverage), so the first burst after zero is seen at
 *   its full size at once, not averaged with the zeros of the silence;
 * - scale-up from zero ready replicas has no rate limit at all (Knative
 *   allows 1000 replicas from zero);
 * - the activator is always on the request path, so scale-down is always
 *   allowed ("reachable") and scale to zero needs no activator probe.
 * `initial` is not the autoscaler's business: the controller starts
 * `initial` replicas on first deploy and runs the autoscaler from then on
 * (which keeps them while there is no metric data, see below). */
#ifndef STOKE_AUTOSCALE_H
#define STOKE_AUTOSCALE_H

#include <stdbool.h>
#include <stdint.h>

#include "stoke/spec.h"

/* Knative's constants. */
#define STOKE_AUTOSCALE_TICK_MS 2000        /* the controller's decision period */
#define STOKE_AUTOSCALE_MAX_SCALE_UP 1000.0 /* at most ready * 1000 per decision */
#define STOKE_AUTOSCALE_MAX_SCALE_DOWN 2.0  /* at least floor(ready / 2) per decision */

/* Longest span a metric window holds: the spec's longest stable window. */
#define STOKE_METRIC_WINDOW_MAX_MS (3600u * 1000u)

/* One second of observed concurrency, summed over the activators. */
struct stoke_metric_bucket {
    uint64_t second_plus1; /* the second this holds + 1; 0 = empty */
    double sum;
};

/* The metric history of one function: a ring of per-second buckets. The
 * caller owns the struct; the ring is allocated by _init() and freed by
 * _done(). A second nobody reported stays missing, which is not zero. */
struct stoke_metric_window {
    struct stoke_metric_bucket *buckets; /* owned, `seconds` of them */
    uint32_t seconds;                    /* capacity */
};

/* Sizes the window for `span_ms` of history (rounded up to whole seconds,
 * at least 1 s; pass the spec's window_ms). Returns 0, -EINVAL (span over
 * STOKE_METRIC_WINDOW_MAX_MS) or -ENOMEM (nothing to free then). */
int stoke_metric_window_init(struct stoke_metric_window *w, uint64_t span_ms);

/* Frees the ring; safe on a zeroed or already-done window. */
void stoke_metric_window_done(struct stoke_metric_window *w);

/* Grows the window to hold `span_ms`, keeping the data it has (for a spec
 * update that lengthens the stable window). Never shrinks. Returns 0,
 * -EINVAL or -ENOMEM (the window is unchanged on error). */
int stoke_metric_window_reserve(struct stoke_metric_window *w, uint64_t span_ms);

/* Adds `value` (concurrency, finite, >= 0) to second `second`: several
 * reports for one second (one per activator) are summed. A second older than
 * the one the ring now keeps in its slot is dropped. Returns 0, -EINVAL (bad
 * value, nothing recorded) or -ESTALE (too old, nothing recorded). */
int stoke_metric_window_add(struct stoke_metric_window *w, uint64_t second, double value);

/* Average over the seconds that have data among the last `span_ms` up to
 * now: seconds s with now_s - n < s <= now_s, where now_s = now_ms / 1000
 * and n = span_ms / 1000 rounded up, at least 1, at most the capacity.
 * Returns false when none of them has data (*ret_avg untouched). */
bool stoke_metric_window_average(const struct stoke_metric_window *w, uint64_t now_ms,
                                 uint64_t span_ms, double *ret_avg);

/* The autoscaler's own state for one function, in caller storage, no
 * allocation: panic mode, the scale-down-delay window and the scale-to-zero
 * clock. Recommendations kept for scaleDownDelay: the window of maxima is
 * exact as long as fewer than STOKE_AUTOSCALE_DELAY_SLOTS strictly falling
 * recommendations fall inside one delay; past that the newest slot absorbs
 * the new, lower recommendation (keeping its own value with the new time),
 * which can only delay a scale-down, never hasten it. */
#define STOKE_AUTOSCALE_DELAY_SLOTS 64

struct stoke_autoscaler {
    bool panicking;
    uint64_t panic_time_ms; /* last decision over the panic threshold */
    uint32_t max_panic;     /* highest recommendation of this panic */
    bool zero_known;
    uint64_t zero_since_ms; /* first decision of this run of zero stable average */
    bool has_last;
    uint32_t last_desired; /* the last decision's output */
    uint32_t delay_first, delay_len;
    struct {
        uint64_t at_ms;
        uint32_t value;
    } delay[STOKE_AUTOSCALE_DELAY_SLOTS]; /* descending maxima, oldest first */
};

/* Starts the state of a function that has `ready` replicas now. As in
 * Knative, more than one ready replica starts in panic mode holding them:
 * a controller that restarts has no metric history and must not scale down
 * on that alone. Cannot fail. */
void stoke_autoscaler_init(struct stoke_autoscaler *a, uint64_t now_ms, uint32_t ready);

/* Records that the controller itself decided `desired` replicas (a
 * function's `initial` scale on first deploy): later decisions take it as
 * their last one, so those replicas stay until the stable average has been
 * zero for the grace period, as Knative keeps a new revision's initial
 * scale. Cannot fail. */
void stoke_autoscaler_seed(struct stoke_autoscaler *a, uint32_t desired);

/* Records an activator's report of `value` for `second` into `history` (as
 * stoke_metric_window_add()), unless it is silence: a 0 while the function
 * is at zero, that is with no replica ready and a last decision of 0 (or
 * none yet). Knative's activator stops reporting an idle revision, so its
 * autoscaler sees no data then, not zeros; the controller and `stokectl
 * simulate` both record through here so that they agree. Returns 0
 * (recorded), 1 (silence, nothing recorded) or what
 * stoke_metric_window_add() returns. */
int stoke_autoscaler_record(const struct stoke_autoscaler *a, uint32_t ready,
                            struct stoke_metric_window *history, uint64_t second, double value);

struct stoke_scale_decision {
    uint32_t desired;        /* replicas to have, within [min, max] */
    bool panic;              /* in panic mode after this decision */
    bool has_data;           /* false: the stable window had no data */
    double stable_avg;       /* concurrency over the stable window; 0 without data */
    double panic_avg;        /* concurrency over the panic window; 0 without data */
    uint32_t desired_stable; /* ceil(stable_avg / goal), rate-limited */
    uint32_t desired_panic;  /* ceil(panic_avg / goal), rate-limited */
};

/* One decision for a function with scale parameters `scale`, metric history
 * `history`, `ready` replicas ready now, and `cold` set when requests wait
 * because no replica is ready (a poke, or queued requests with ready 0).
 *
 * - goal per replica = target * utilization / 100;
 * - stable average over window_ms, panic average over
 *   window_ms * panic_window_percent / 100 (at least 1 s); with no data in
 *   the panic window, the panic average is the stable one;
 * - desired = ceil(average / goal) for each, then limited to
 *   [floor(max(1, ready) / 2), ceil(max(1, ready) * 1000)]; no upper limit
 *   when ready is 0;
 * - panic starts when ceil(panic_avg / goal) / max(1, ready) >=
 *   panic_threshold_percent / 100, is extended by every decision over the
 *   threshold, and ends at the first decision below it more than window_ms
 *   after the last one over it. In panic, desired is the larger of the two
 *   and never below the highest recommendation of this panic;
 * - with scale_down_delay_ms, the recommendation is the highest of those
 *   made in the last scale_down_delay_ms (this one included);
 * - clamped to [min, max] (max 0 = unbounded);
 * - it reaches 0 only once the stable average has been 0 since a decision at
 *   least scale_to_zero_grace_ms + scale_down_delay_ms ago; until then it is
 *   at least 1 while replicas are ready or were last desired;
 * - `cold` makes it at least 1 at once, past every limit but max;
 * - with no data in the stable window, the last decision stands (ready if
 *   there was none), clamped, with the cold rule; the panic state is not
 *   touched and the scale-to-zero clock restarts.
 *
 * Returns 0 and fills *ret, or -EINVAL (nothing changed, *ret untouched)
 * when `history` holds fewer seconds than scale->window_ms needs (see
 * stoke_metric_window_reserve()) or target or utilization is 0. */
int stoke_autoscale(struct stoke_autoscaler *a, const struct stoke_scale *scale,
                    const struct stoke_metric_window *history, uint64_t now_ms, uint32_t ready,
                    bool cold, struct stoke_scale_decision *ret);

/* Queue-trigger backlog as demand (README "Queue triggers"), as KEDA
 * scales on a stream's lag: `backlog` messages waiting (read or not, not
 * yet acknowledged) at `target` per replica need ceil(backlog / target)
 * replicas (target 0 counts as 1), at most scale->max when it is not 0.
 * Returns `desired` (the autoscaler's decision) raised to that. A function
 * at zero with a backlog so scales from zero without a request.
 *
 * `*last_ms` is the scale-to-zero clock of the backlog: set to now_ms
 * while the backlog is above 0; once it is 0, at least 1 replica is kept
 * until scale_to_zero_grace_ms after *last_ms (*last_ms 0: never had one),
 * so the last messages' calls are not cut off by a scale to zero. A backlog
 * report that stopped is the caller's to expire (pass 0). Pure. */
uint32_t stoke_autoscale_backlog(const struct stoke_scale *scale, uint32_t desired,
                                 uint64_t backlog, uint32_t target, uint64_t now_ms,
                                 uint64_t *last_ms);

#endif
