/* The autoscaler (Knative's KPA): each test is a scenario of per-second
 * concurrency reports and decisions, with the decision expected at each
 * point. Unless a test says otherwise the function has Knative's defaults
 * with target 10, so the goal is 10 * 70 % = 7 concurrent requests per
 * replica, a 60 s stable window, a 6 s panic window, a 200 % panic threshold
 * and 30 s of scale-to-zero grace. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/autoscale.h"
#include "stoke/spec.h"
#include "stoke/util.h"

static struct stoke_scale scale_defaults(void)
{
    struct stoke_spec spec;
    stoke_spec_defaults(&spec);
    struct stoke_scale s = spec.scale;
    stoke_spec_done(&spec);
    return s;
}

/* Knative's defaults with target 10: a goal of 7 per replica. */
static struct stoke_scale scale_t10(void)
{
    struct stoke_scale s = scale_defaults();
    s.target = 10;
    return s;
}

/* A scenario: load segments, each what one activator reports for each
 * second in [from, to) (value + slope * (second - from)); overlapping
 * segments are several activators, and a second no segment covers is a
 * gap. A decision at `now` first feeds every second up to now's into the
 * window, the way the controller records reports as they arrive. */
struct seg {
    uint64_t from, to;
    double value, slope;
};

struct fx {
    struct stoke_scale scale;
    struct stoke_metric_window w;
    struct stoke_autoscaler a;
    struct stoke_scale_decision d;
    struct seg segs[16];
    size_t nsegs;
    uint64_t fed; /* seconds below this are in the window */
};

static void fx_init(struct fx *f, struct stoke_scale scale)
{
    memset(f, 0, sizeof(*f));
    f->scale = scale;
    assert_int_equal(stoke_metric_window_init(&f->w, scale.window_ms), 0);
    stoke_autoscaler_init(&f->a, 0, 0);
}

static void fx_done(struct fx *f)
{
    stoke_metric_window_done(&f->w);
}

static void ramp(struct fx *f, uint64_t from, uint64_t to, double value, double slope)
{
    assert_true(f->nsegs < STOKE_ARRAY_SIZE(f->segs));
    assert_true(from >= f->fed); /* the past is written */
    f->segs[f->nsegs++] = (struct seg){from, to, value, slope};
}

/* One activator reports `v` for each second in [from, to). */
static void load(struct fx *f, uint64_t from, uint64_t to, double v)
{
    ramp(f, from, to, v, 0);
}

static void feed(struct fx *f, uint64_t upto)
{
    for (; f->fed <= upto; f->fed++) {
        for (size_t i = 0; i < f->nsegs; i++) {
            const struct seg *g = &f->segs[i];
            if (f->fed >= g->from && f->fed < g->to) {
                double v = g->value + g->slope * (double)(f->fed - g->from);
                assert_int_equal(stoke_metric_window_add(&f->w, f->fed, v), 0);
            }
        }
    }
}

static uint32_t decide_full(struct fx *f, uint64_t now_ms, uint32_t ready, bool cold)
{
    feed(f, now_ms / 1000);
    assert_int_equal(stoke_autoscale(&f->a, &f->scale, &f->w, now_ms, ready, cold, &f->d), 0);
    return f->d.desired;
}

/* A decision at second `now_s`. */
static uint32_t decide(struct fx *f, uint64_t now_s, uint32_t ready)
{
    return decide_full(f, now_s * 1000, ready, false);
}

/* ---- the metric window ---- */

static void test_window_empty_is_no_data(void **state)
{
    (void)state;
    struct stoke_metric_window w;
    double avg = -1;
    assert_int_equal(stoke_metric_window_init(&w, 60000), 0);
    assert_int_equal(w.seconds, 60);
    assert_false(stoke_metric_window_average(&w, 0, 60000, &avg));
    assert_false(stoke_metric_window_average(&w, 1000000, 60000, &avg));
    assert_true(avg == -1); /* untouched */
    stoke_metric_window_done(&w);
    stoke_metric_window_done(&w); /* twice is fine */
}

/* Several activators report the same second: their values add up. */
static void test_window_sums_reports_of_one_second(void **state)
{
    (void)state;
    struct stoke_metric_window w;
    double avg;
    assert_int_equal(stoke_metric_window_init(&w, 60000), 0);
    assert_int_equal(stoke_metric_window_add(&w, 5, 3), 0);
    assert_int_equal(stoke_metric_window_add(&w, 5, 4), 0);
    assert_int_equal(stoke_metric_window_add(&w, 5, 0.5), 0);
    assert_int_equal(stoke_metric_window_add(&w, 6, 1.5), 0);
    assert_true(stoke_metric_window_average(&w, 5999, 1000, &avg));
    assert_true(avg == 7.5);
    assert_true(stoke_metric_window_average(&w, 6000, 2000, &avg));
    assert_true(avg == 4.5);
    stoke_metric_window_done(&w);
}

/* Missing seconds are not zeros: the average is over the seconds that have
 * data; with none in the span, there is no data at all. */
static void test_window_gaps_are_missing_not_zero(void **state)
{
    (void)state;
    struct stoke_metric_window w;
    double avg;
    assert_int_equal(stoke_metric_window_init(&w, 60000), 0);
    for (uint64_t s = 0; s < 10; s++)
        assert_int_equal(stoke_metric_window_add(&w, s, 10), 0);
    assert_true(stoke_metric_window_average(&w, 19000, 20000, &avg));
    assert_true(avg == 10);                                           /* not 5 */
    assert_true(stoke_metric_window_average(&w, 68000, 60000, &avg)); /* second 9 still in */
    assert_true(avg == 10);
    assert_false(stoke_metric_window_average(&w, 69000, 60000, &avg)); /* 10..69: nothing */
    assert_false(stoke_metric_window_average(&w, 19000, 5000, &avg));  /* 15..19: nothing */
    /* The span is capped at the capacity, and the future is not "now". */
    assert_true(stoke_metric_window_average(&w, 9000, 3600000, &avg));
    assert_true(avg == 10);
    assert_true(stoke_metric_window_average(&w, 0, 0, &avg)); /* at least 1 s */
    assert_true(avg == 10);
    stoke_metric_window_done(&w);
}

/* Sums like 0.1 + 0.2 come out at 6 decimals, as in Knative. */
static void test_window_rounds_to_6_decimals(void **state)
{
    (void)state;
    struct stoke_metric_window w;
    double avg;
    assert_int_equal(stoke_metric_window_init(&w, 6000), 0);
    assert_int_equal(stoke_metric_window_add(&w, 1, 0.1), 0);
    assert_int_equal(stoke_metric_window_add(&w, 1, 0.2), 0);
    assert_true(stoke_metric_window_average(&w, 1000, 1000, &avg));
    assert_true(avg == 0.3);
    assert_int_equal(stoke_metric_window_add(&w, 2, 1.0 / 3.0), 0);
    assert_true(stoke_metric_window_average(&w, 2000, 1000, &avg));
    assert_true(avg == 0.333333);
    stoke_metric_window_done(&w);
}

/* Hostile values are refused; a second older than its slot's is dropped. */
static void test_window_refuses_bad_and_stale(void **state)
{
    (void)state;
    static const double bad[] = {-1, -0.0001, NAN, INFINITY, -INFINITY};
    struct stoke_metric_window w;
    double avg;
    assert_int_equal(stoke_metric_window_init(&w, 6000), 0);
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(bad); i++)
        assert_int_equal(stoke_metric_window_add(&w, 1, bad[i]), -EINVAL);
    assert_int_equal(stoke_metric_window_add(&w, UINT64_MAX, 1), -EINVAL);
    assert_false(stoke_metric_window_average(&w, 1000, 6000, &avg));
    assert_int_equal(stoke_metric_window_add(&w, 8, 2), 0);
    assert_int_equal(stoke_metric_window_add(&w, 2, 5), -ESTALE); /* 2 and 8 share a slot */
    assert_int_equal(stoke_metric_window_add(&w, 7, 4), 0);       /* late but in the window */
    assert_true(stoke_metric_window_average(&w, 8000, 6000, &avg));
    assert_true(avg == 3);
    stoke_metric_window_done(&w);

    struct stoke_metric_window zero = {0};
    assert_int_equal(stoke_metric_window_add(&zero, 1, 1), -EINVAL);
    assert_false(stoke_metric_window_average(&zero, 1000, 1000, &avg));
    assert_int_equal(stoke_metric_window_init(&w, STOKE_METRIC_WINDOW_MAX_MS + 1), -EINVAL);
    assert_null(w.buckets);
}

/* A longer stable window after a spec update keeps the history. */
static void test_window_reserve_keeps_data(void **state)
{
    (void)state;
    struct stoke_metric_window w;
    double avg;
    assert_int_equal(stoke_metric_window_init(&w, 6000), 0);
    for (uint64_t s = 100; s < 110; s++)
        assert_int_equal(stoke_metric_window_add(&w, s, (double)s), 0);
    assert_int_equal(stoke_metric_window_reserve(&w, 3000), 0); /* never shrinks */
    assert_int_equal(w.seconds, 6);
    assert_int_equal(stoke_metric_window_reserve(&w, 60000), 0);
    assert_int_equal(w.seconds, 60);
    assert_true(stoke_metric_window_average(&w, 109000, 60000, &avg));
    assert_true(avg == 106.5); /* 104..109 survived */
    assert_int_equal(stoke_metric_window_reserve(&w, STOKE_METRIC_WINDOW_MAX_MS + 1), -EINVAL);
    assert_int_equal(w.seconds, 60);
    stoke_metric_window_done(&w);
}

/* ---- the autoscaler ---- */

/* Knative's defaults, as stoke_spec_defaults() gives them. */
static void test_default_spec_values(void **state)
{
    (void)state;
    struct stoke_scale s = scale_defaults();
    assert_int_equal(s.min, 0);
    assert_int_equal(s.max, 0);
    assert_int_equal(s.initial, 1);
    assert_int_equal(s.target, 100);
    assert_int_equal(s.utilization, 70);
    assert_int_equal(s.window_ms, 60000);
    assert_int_equal(s.panic_window_percent, 10);
    assert_int_equal(s.panic_threshold_percent, 200);
    assert_int_equal(s.scale_to_zero_grace_ms, 30000);
    assert_int_equal(s.scale_down_delay_ms, 0);
    assert_int_equal(STOKE_AUTOSCALE_TICK_MS, 2000);

    /* Goal 70: 140 is 2 replicas, 140.5 is 3. */
    struct fx f;
    fx_init(&f, s);
    load(&f, 0, 60, 140);
    assert_int_equal(decide(&f, 59, 2), 2);
    assert_false(f.d.panic);
    load(&f, 60, 61, 170); /* the panic window is 6 s: 55..60 */
    assert_int_equal(decide(&f, 60, 2), 3);
    assert_true(f.d.stable_avg == 140.5);
    assert_true(f.d.panic_avg == 145);
    fx_done(&f);
}

/* Constant load, replicas in place: the same answer every tick. */
static void test_steady_state(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 200, 35);
    for (uint64_t t = 0; t < 200; t += 2) {
        assert_int_equal(decide(&f, t, 5), 5);
        assert_false(f.d.panic);
        assert_true(f.d.has_data);
        assert_int_equal(f.d.desired_stable, 5);
        assert_int_equal(f.d.desired_panic, 5);
    }
    fx_done(&f);
}

/* desired = ceil(average / (target * utilization / 100)). */
static void test_goal_and_utilization_table(void **state)
{
    (void)state;
    static const struct {
        uint32_t target, utilization;
        double load;
        uint32_t want;
    } cases[] = {
        {10, 100, 35, 4},          /* goal 10: 3.5 -> 4 */
        {10, 70, 35, 5},           /* goal 7 */
        {10, 50, 35, 7},           /* goal 5 */
        {10, 1, 35, 350},          /* goal 0.1 */
        {10, 70, 14, 2},           /* exactly 2 goals */
        {10, 70, 14.000001, 3},    /* a hair over */
        {1, 70, 2.1, 3},           /* 2.1 / 0.7 is 3.0000000000000004 in doubles */
        {100, 70, 0.000001, 1},    /* any load at all is one replica */
        {1000000, 100, 999999, 1}, /* the largest target */
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(cases); i++) {
        struct fx f;
        struct stoke_scale s = scale_defaults();
        s.target = cases[i].target;
        s.utilization = cases[i].utilization;
        fx_init(&f, s);
        load(&f, 0, 60, cases[i].load);
        /* From zero ready nothing limits the answer. */
        uint32_t got = decide(&f, 59, 0);
        if (got != cases[i].want)
            fail_msg("case %zu: want %u, got %u", i, cases[i].want, got);
        fx_done(&f);
    }
}

/* A slow rise from 28 with replicas following: desired rises with the
 * stable average, never falls, and never panics. (From 1 replica even a
 * slow rise panics: 2 replicas are 200 % of 1.) */
static void test_ramp_up(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    ramp(&f, 0, 180, 28, 0.5);
    uint32_t ready = 4, prev = 0;
    for (uint64_t t = 0; t < 180; t += 2) {
        uint32_t d = decide(&f, t, ready);
        assert_true(d >= prev);
        assert_false(f.d.panic);
        assert_int_equal(d, f.d.desired_stable);
        prev = ready = d;
    }
    /* At 178 the window 119..178 averages 28 + 0.5 * 148.5 = 102.25. */
    assert_true(f.d.stable_avg == 102.25);
    assert_int_equal(prev, 15);
    fx_done(&f);
}

/* 14 for a minute on 2 replicas, then 70: the panic window sees it first. */
static void step_into_panic(struct fx *f)
{
    fx_init(f, scale_t10());
    load(f, 0, 60, 14);
    assert_int_equal(decide(f, 58, 2), 2);
    assert_false(f->d.panic);
    load(f, 60, 64, 70);
    load(f, 64, 400, 14);
    /* Panic window 57..62: (3 * 14 + 3 * 70) / 6 = 42 -> 6 = 3x ready. */
    assert_int_equal(decide(f, 62, 2), 6);
    assert_true(f->d.panic);
    assert_int_equal(f->d.desired_stable, 3); /* 16.8 */
    assert_int_equal(f->d.desired_panic, 6);
    assert_true(f->d.panic_avg == 42);
}

static void test_step_up_into_panic(void **state)
{
    (void)state;
    struct fx f;
    step_into_panic(&f);
    /* 59..64 average 51.33: 8 replicas, only 1.3x the 6 ready: no longer
     * over the threshold but still in panic, and higher. */
    assert_int_equal(decide(&f, 64, 6), 8);
    assert_true(f.d.panic);
    fx_done(&f);
}

/* The panic ends at the first decision more than a whole stable window after
 * the last one over the threshold (62 s): not at 122 s, at 124 s. */
static void test_panic_exit_a_full_window_later(void **state)
{
    (void)state;
    struct fx f;
    step_into_panic(&f);
    assert_int_equal(decide(&f, 64, 6), 8);
    for (uint64_t t = 66; t <= 122; t += 2) {
        assert_int_equal(decide(&f, t, 8), 8);
        assert_true(f.d.panic);
    }
    /* Out of panic: the stable 2 (65..124 all 14), limited to 8 / 2. */
    assert_int_equal(decide(&f, 124, 8), 4);
    assert_false(f.d.panic);
    assert_int_equal(decide(&f, 126, 4), 2);
    fx_done(&f);
}

/* To the millisecond: still panicking at exactly a window, over after. */
static void test_panic_exit_is_strictly_after_the_window(void **state)
{
    (void)state;
    struct fx f;
    step_into_panic(&f);
    assert_int_equal(decide_full(&f, 122000, 6, false), 6);
    assert_true(f.d.panic);
    assert_int_equal(decide_full(&f, 122001, 6, false), 3); /* 63..122 has one 70: 14.93 */
    assert_false(f.d.panic);
    fx_done(&f);
}

/* Every decision over the threshold extends the panic. */
static void test_panic_extended_while_over_threshold(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 60, 14);
    load(&f, 60, 100, 70);
    load(&f, 100, 300, 0);
    /* Replicas never come: ready stays 2, so the panic window is over 2x
     * ready up to 102 s (97..102: 35 -> 5); 104 s is the first below. */
    for (uint64_t t = 62; t <= 102; t += 2) {
        decide(&f, t, 2);
        assert_true(f.d.panic);
        assert_true(f.d.desired_panic * 100 >= 200 * 2);
    }
    assert_int_equal(decide(&f, 104, 2), 10);
    assert_true(f.d.panic);
    assert_true(f.d.desired_panic < 4);
    assert_int_equal(decide(&f, 162, 2), 10);
    assert_true(f.d.panic);
    decide(&f, 164, 2);
    assert_false(f.d.panic);
    fx_done(&f);
}

/* In panic, the highest recommendation holds however low the load falls. */
static void test_no_scale_down_during_panic(void **state)
{
    (void)state;
    struct fx f;
    step_into_panic(&f);
    assert_int_equal(decide(&f, 64, 6), 8);
    for (uint64_t t = 70; t <= 122; t += 2) {
        assert_int_equal(decide(&f, t, 8), 8);
        assert_true(f.d.panic);
        assert_int_equal(f.d.desired_stable, 4); /* what it would be: 8 / 2 */
        assert_int_equal(f.d.desired_panic, 4);
    }
    fx_done(&f);
}

/* At most ready * 1000 per decision; from zero nothing limits. */
static void test_rate_limit_up(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_defaults();
    s.target = 1;
    s.utilization = 50; /* goal 0.5: 1000 concurrent = 2000 replicas */
    fx_init(&f, s);
    load(&f, 0, 60, 1000);
    assert_int_equal(decide(&f, 58, 1), 1000);
    assert_int_equal(f.d.desired_stable, 1000);
    assert_int_equal(decide(&f, 59, 2), 2000);
    fx_done(&f);
}

/* At least floor(ready / 2) per decision. */
static void test_rate_limit_down_table(void **state)
{
    (void)state;
    static const struct {
        uint32_t ready;
        double load;
        uint32_t want;
    } cases[] = {
        {10, 7, 5},     /* 1 wanted, 5 at least */
        {5, 7, 2},      /* floor(2.5) */
        {3, 7, 1},      /* floor(1.5) */
        {2, 7, 1},      /* floor(1) */
        {1, 7, 1},      /* 1 wanted */
        {11, 7, 5},     /* floor(5.5) */
        {100, 70, 50},  /* 10 wanted */
        {100, 420, 60}, /* 60 wanted is above the limit */
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(cases); i++) {
        struct fx f;
        fx_init(&f, scale_t10());
        load(&f, 0, 60, cases[i].load);
        uint32_t got = decide(&f, 59, cases[i].ready);
        if (got != cases[i].want)
            fail_msg("case %zu: want %u, got %u", i, cases[i].want, got);
        assert_false(f.d.panic);
        fx_done(&f);
    }
}

/* A halving per decision, tick after tick, as the replicas go. */
static void test_rate_limit_down_steps(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 100, 7);
    static const uint32_t want[] = {16, 8, 4, 2, 1, 1};
    uint32_t ready = 32;
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(want); i++) {
        ready = decide(&f, 60 + 2 * i, ready);
        assert_int_equal(ready, want[i]);
    }
    fx_done(&f);
}

/* Scale from zero is not rate-limited (Knative would stop at 1000). */
static void test_scale_up_from_zero_unlimited(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_defaults();
    s.target = 1;
    s.utilization = 50;
    fx_init(&f, s);
    load(&f, 0, 10, 1000);
    assert_int_equal(decide(&f, 9, 0), 2000);
    assert_true(f.d.panic); /* 2000 over max(1, 0) ready */
    fx_done(&f);
}

/* max: 0 is unbounded. */
static void test_max_zero_unbounded(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_defaults();
    s.target = 1;
    s.utilization = 100;
    s.max = 0;
    fx_init(&f, s);
    load(&f, 0, 60, 150000);
    assert_int_equal(decide(&f, 59, 150), 150000);
    fx_done(&f);
}

/* [min, max] bounds everything, panic and idleness included. */
static void test_min_max_clamp_table(void **state)
{
    (void)state;
    static const struct {
        uint32_t min, max, ready;
        double load;
        uint32_t want;
    } cases[] = {
        {2, 0, 2, 0, 2},         /* idle: min holds */
        {0, 5, 5, 700, 5},       /* 100 wanted */
        {3, 10, 3, 35, 5},       /* in between: untouched */
        {3, 10, 10, 0, 5},       /* rate limit 5 is above min */
        {4, 4, 4, 1000, 4},      /* min == max */
        {0, 5, 0, 1000, 5},      /* from zero, panicking */
        {10000, 0, 0, 7, 10000}, /* the largest min */
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(cases); i++) {
        struct fx f;
        struct stoke_scale s = scale_t10();
        s.min = cases[i].min;
        s.max = cases[i].max;
        fx_init(&f, s);
        load(&f, 0, 200, cases[i].load);
        uint32_t got = 0;
        for (uint64_t t = 100; t < 200; t += 2)
            got = decide(&f, t, cases[i].ready);
        if (got != cases[i].want)
            fail_msg("case %zu: want %u, got %u", i, cases[i].want, got);
        fx_done(&f);
    }
}

/* A cold request with nothing ready: one replica at once, metrics or not. */
static void test_activation_from_zero(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    /* No metric data at all. */
    assert_int_equal(decide_full(&f, 5000, 0, false), 0);
    assert_false(f.d.has_data);
    assert_int_equal(decide_full(&f, 5500, 0, true), 1);
    fx_done(&f);

    /* Idle metrics: zeros reported. */
    fx_init(&f, scale_t10());
    load(&f, 0, 200, 0);
    assert_int_equal(decide(&f, 198, 0), 0);
    assert_true(f.d.has_data);
    assert_int_equal(decide_full(&f, 198500, 0, true), 1);
    /* The poke's request shows in the next report. */
    load(&f, 199, 200, 1);
    assert_int_equal(decide(&f, 200, 0), 1);
    fx_done(&f);
}

/* Activation ignores scaleDownDelay and the scale-to-zero clock. */
static void test_activation_not_delayed(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_t10();
    s.scale_down_delay_ms = 600000;
    s.scale_to_zero_grace_ms = 3600000;
    fx_init(&f, s);
    load(&f, 0, 100, 0);
    assert_int_equal(decide(&f, 98, 0), 0);
    assert_int_equal(decide_full(&f, 98001, 0, true), 1);
    fx_done(&f);
}

/* Traffic stops after second 9: the stable average is 0 from 70 s (the
 * window 11..70 holds no load), and 30 s of grace later, at 100 s, the
 * function scales to zero; one replica stays until then. */
static void test_scale_to_zero_after_grace(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 10, 7);
    load(&f, 10, 300, 0);
    for (uint64_t t = 0; t < 70; t += 2) {
        assert_int_equal(decide(&f, t, 1), 1);
        assert_true(f.d.stable_avg > 0);
    }
    for (uint64_t t = 70; t < 100; t += 2) {
        assert_int_equal(decide(&f, t, 1), 1);
        assert_true(f.d.stable_avg == 0);
        assert_int_equal(f.d.desired_stable, 0);
    }
    assert_int_equal(decide(&f, 100, 1), 0);
    assert_int_equal(decide(&f, 102, 0), 0);
    fx_done(&f);
}

/* Grace 0: to zero at the first decision with a zero stable average. */
static void test_scale_to_zero_no_grace(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_t10();
    s.scale_to_zero_grace_ms = 0;
    fx_init(&f, s);
    load(&f, 0, 10, 7);
    load(&f, 10, 100, 0);
    assert_int_equal(decide(&f, 68, 1), 1);
    assert_int_equal(decide(&f, 70, 1), 0);
    fx_done(&f);
}

/* Load during the grace restarts the clock. */
static void test_scale_to_zero_clock_restarts(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 10, 7);
    load(&f, 10, 85, 0);
    load(&f, 85, 86, 7); /* one second of traffic */
    load(&f, 86, 300, 0);
    for (uint64_t t = 0; t < 176; t += 2)
        assert_int_equal(decide(&f, t, 1), 1);
    /* Zero again from 146 (window 87..146), plus 30 s. */
    assert_int_equal(decide(&f, 176, 1), 0);
    fx_done(&f);
}

/* scaleDownDelay holds the highest recommendation of its window; the
 * scale-to-zero wait is grace + delay. */
static void test_scale_to_zero_waits_grace_plus_delay(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_t10();
    s.scale_down_delay_ms = 20000;
    fx_init(&f, s);
    load(&f, 0, 10, 7);
    load(&f, 10, 300, 0);
    for (uint64_t t = 0; t < 120; t += 2)
        assert_int_equal(decide(&f, t, 1), 1);
    assert_int_equal(decide(&f, 120, 1), 0); /* zero since 70, + 30 s + 20 s */
    fx_done(&f);
}

/* A 6 s window to make the fall sharp: the recommendations are 10 (18 s),
 * 9, 6, 5, 5 ...; with a 10 s delay each holds until 10 s after it. */
static void test_scale_down_delay_holds_the_max(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_t10();
    s.window_ms = 6000;
    s.scale_down_delay_ms = 10000;
    fx_init(&f, s);
    load(&f, 0, 20, 70);
    load(&f, 20, 100, 14);
    static const struct {
        uint64_t t;
        uint32_t want;
    } steps[] = {
        {18, 10}, {20, 10}, {22, 10}, {24, 10}, {26, 10}, {28, 9}, {30, 6}, {32, 5}, {34, 5},
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(steps); i++) {
        uint32_t got = decide(&f, steps[i].t, 10);
        if (got != steps[i].want)
            fail_msg("at %" PRIu64 " s: want %u, got %u", steps[i].t, steps[i].want, got);
        assert_false(f.d.panic);
    }
    fx_done(&f);
}

/* The delay never slows a scale-up. */
static void test_scale_down_delay_does_not_delay_up(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_t10();
    s.scale_down_delay_ms = 600000;
    s.panic_threshold_percent = 1000; /* keep panic out of it */
    fx_init(&f, s);
    load(&f, 0, 60, 14);
    load(&f, 60, 120, 28);
    assert_int_equal(decide(&f, 58, 2), 2);
    assert_int_equal(decide(&f, 119, 2), 4);
    fx_done(&f);
}

/* Past STOKE_AUTOSCALE_DELAY_SLOTS falling recommendations in one delay,
 * the answer stays exact for the oldest and only errs high after. */
static void test_scale_down_delay_many_falls(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_t10();
    s.window_ms = 6000;
    s.scale_down_delay_ms = 3600000;
    s.panic_threshold_percent = 1000;
    fx_init(&f, s);
    /* A moving average falling by one replica a second: the
     * recommendation at s (5..105) is 303 - s, all above ready / 2. */
    ramp(&f, 0, 106, 2100, -7);
    load(&f, 3600, 3706, 0);
    for (uint64_t t = 0; t <= 105; t++) {
        if (t >= 5) {
            assert_int_equal(decide(&f, t, 100), 298);
            assert_int_equal(f.d.desired_stable, 303 - t);
        }
    }
    assert_int_equal(decide(&f, 3606, 100), 296); /* exact: 5 and 6 s have gone */
    /* The truth at 3700 s is 202 (from 101 s); the merged slot says 235. */
    uint32_t got = decide(&f, 3700, 100);
    assert_true(got >= 202);
    assert_int_equal(got, 235);
    assert_int_equal(decide(&f, 3705, 100), 50); /* all gone: 0 wanted, ready / 2 */
    fx_done(&f);
}

/* A burst shorter than the panic window: seen by the panic average, barely
 * by the stable one; the panic keeps its replicas a whole window. */
static void test_burst_shorter_than_panic_window(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 100, 7);
    load(&f, 100, 103, 70);
    load(&f, 103, 300, 7);
    assert_int_equal(decide(&f, 98, 1), 1);
    assert_int_equal(decide(&f, 102, 1), 6); /* (3 * 7 + 3 * 70) / 6 = 38.5 */
    assert_true(f.d.panic);
    assert_int_equal(f.d.desired_stable, 2); /* 10.15 */
    assert_int_equal(decide(&f, 108, 6), 6);
    assert_int_equal(f.d.desired_panic, 3); /* back to 7: 1, limited to 6 / 2 */
    assert_int_equal(decide(&f, 162, 6), 6);
    assert_true(f.d.panic);
    assert_int_equal(decide(&f, 164, 6), 3);
    assert_false(f.d.panic);
    fx_done(&f);

    /* A one-second blip under the threshold: no panic at all. */
    fx_init(&f, scale_t10());
    load(&f, 0, 100, 14);
    load(&f, 100, 101, 42);
    assert_int_equal(decide(&f, 100, 3), 3);
    assert_false(f.d.panic);
    assert_true(f.d.panic_avg > 18.6 && f.d.panic_avg < 18.7);
    fx_done(&f);
}

/* The threshold is inclusive: 2x ready panics, just under does not. */
static void test_panic_threshold_table(void **state)
{
    (void)state;
    static const struct {
        uint32_t threshold, ready;
        double load;
        bool panic;
    } cases[] = {
        {200, 2, 28, true},   /* 4 / 2 = 200 % */
        {200, 2, 21, false},  /* 3 / 2 */
        {200, 0, 14, true},   /* 2 / max(1, 0) */
        {200, 0, 7, false},   /* 1 / max(1, 0) */
        {300, 2, 35, false},  /* 5 / 2 */
        {300, 2, 42, true},   /* 6 / 2 */
        {110, 10, 77, true},  /* 11 / 10 = 110 % exactly */
        {110, 10, 70, false}, /* 10 / 10 */
        {1000, 1, 63, false}, /* 9 / 1 */
        {1000, 1, 70, true},  /* 10 / 1 */
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(cases); i++) {
        struct fx f;
        struct stoke_scale s = scale_t10();
        s.panic_threshold_percent = cases[i].threshold;
        fx_init(&f, s);
        load(&f, 0, 10, cases[i].load);
        decide(&f, 9, cases[i].ready);
        if (f.d.panic != cases[i].panic)
            fail_msg("case %zu: want panic %d", i, cases[i].panic);
        fx_done(&f);
    }
}

/* panicWindowPercent sizes the panic window. */
static void test_panic_window_percent(void **state)
{
    (void)state;
    static const struct {
        uint32_t percent;
        double panic_avg;
    } cases[] = {
        {10, 70},    /* 60..65 */
        {20, 38.5},  /* 54..65 */
        {100, 13.3}, /* the stable window: 6 * 70 + 54 * 7 = 798 / 60 */
        {1, 70},     /* 600 ms: at least one second, 65 */
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(cases); i++) {
        struct fx f;
        struct stoke_scale s = scale_t10();
        s.panic_window_percent = cases[i].percent;
        fx_init(&f, s);
        load(&f, 0, 60, 7);
        load(&f, 60, 66, 70);
        decide(&f, 65, 1);
        if (f.d.panic_avg != cases[i].panic_avg)
            fail_msg("case %zu: want %f, got %f", i, cases[i].panic_avg, f.d.panic_avg);
        fx_done(&f);
    }
}

/* An activator that stops reporting leaves gaps, not zeros: replicas stay;
 * a window with no report at all changes nothing. */
static void test_metric_gap_keeps_replicas(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 60, 28);
    assert_int_equal(decide(&f, 58, 4), 4);
    /* Nothing from 60 on. Zeros would give 31 * 28 / 60 = 14.5 -> 3 at 88. */
    for (uint64_t t = 60; t <= 118; t += 2) {
        assert_int_equal(decide(&f, t, 4), 4);
        assert_true(f.d.has_data);
        assert_true(f.d.stable_avg == 28);
        assert_true(f.d.panic_avg == 28); /* no panic data: the stable estimate */
    }
    /* 61..120: empty. The last decision stands, ready or not. */
    assert_int_equal(decide(&f, 120, 1), 4);
    assert_false(f.d.has_data);
    assert_true(f.d.stable_avg == 0);
    assert_int_equal(decide(&f, 600, 4), 4);
    /* Reports again: back to normal decisions. */
    load(&f, 601, 603, 7);
    assert_int_equal(decide(&f, 602, 4), 2);
    fx_done(&f);
}

/* With no data ever: the ready count stands; no scale-to-zero either. */
static void test_no_data_changes_nothing(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    assert_int_equal(decide(&f, 0, 3), 3);
    assert_false(f.d.has_data);
    for (uint64_t t = 2; t < 600; t += 2)
        assert_int_equal(decide(&f, t, 3), 3);
    fx_done(&f);

    /* min still applies. */
    struct stoke_scale s = scale_t10();
    s.min = 2;
    fx_init(&f, s);
    assert_int_equal(decide(&f, 0, 0), 2);
    fx_done(&f);
}

/* Several activators: their reports of a second add up; when one goes
 * (the controller stops adding its reports) the sum drops. */
static void test_several_activators_summed(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    load(&f, 0, 120, 7); /* activator A */
    load(&f, 0, 60, 5);  /* activator B */
    load(&f, 0, 60, 2);  /* activator C */
    assert_int_equal(decide(&f, 59, 2), 2);
    assert_true(f.d.stable_avg == 14);
    /* B and C went away at 60 s: A alone for a window. */
    assert_int_equal(decide(&f, 119, 2), 1);
    fx_done(&f);
}

/* A restarted controller finds 5 ready replicas and no history: it starts
 * in panic holding them, as Knative does, for a stable window. */
static void test_restart_starts_in_panic(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    stoke_autoscaler_init(&f.a, 1000, 5);
    load(&f, 0, 200, 7);
    for (uint64_t t = 2; t <= 60; t += 2) {
        assert_int_equal(decide(&f, t, 5), 5);
        assert_true(f.d.panic);
    }
    assert_int_equal(decide(&f, 62, 5), 2);
    assert_false(f.d.panic);
    fx_done(&f);

    /* One replica: no panic needed. */
    fx_init(&f, scale_t10());
    stoke_autoscaler_init(&f.a, 0, 1);
    load(&f, 0, 10, 7);
    decide(&f, 8, 1);
    assert_false(f.d.panic);
    fx_done(&f);
}

/* `initial` replicas, seeded by the controller, outlive the first decisions
 * (before they are ready, with zero traffic) until the grace has passed. */
static void test_initial_seed_kept_until_grace(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale s = scale_t10();
    s.initial = 3;
    fx_init(&f, s);
    stoke_autoscaler_init(&f.a, 0, 0);
    stoke_autoscaler_seed(&f.a, 3);
    /* No data yet: the seed stands, though nothing is ready. */
    assert_int_equal(decide(&f, 1, 0), 3);
    /* Zero traffic reported: down by the rate limit, never below 1 until
     * the stable average has been zero for the 30 s grace. */
    load(&f, 2, 200, 0);
    assert_int_equal(decide(&f, 2, 0), 1);
    assert_int_equal(decide(&f, 4, 1), 1);
    assert_int_equal(decide(&f, 31, 1), 1);
    assert_int_equal(decide(&f, 32, 1), 0);
    fx_done(&f);

    /* Without the seed, the same first decision would drop to zero. */
    fx_init(&f, s);
    stoke_autoscaler_init(&f.a, 0, 0);
    load(&f, 1, 200, 0);
    assert_int_equal(decide(&f, 2, 0), 0);
    fx_done(&f);
}

/* Bad arguments change nothing. */
/* After zero (Knative's rule): the activators report 0 each second for an
 * idle function, but at zero that is silence, so the first burst is seen at
 * its full size. 60 concurrent requests arrive at second 100 after 100 s at
 * zero: the stable and panic windows hold only second 100 (60), so desired
 * is ceil(60 / 7) = ceil(8.57) = 9 at once, as Knative's TimedFloat64Buckets
 * give (a write a window after the last one restarts the window). Were the
 * zeros data, the stable average would be 60 / 60 = 1 and the panic one
 * (5 * 0 + 60) / 6 = 10, so ceil(10 / 7) = 2 replicas. */
static void test_after_zero_burst_seen_at_full_size(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    for (uint64_t s = 0; s < 100; s++) {
        assert_int_equal(stoke_autoscaler_record(&f.a, 0, &f.w, s, 0), 1);
        if (s % 2 == 0)
            assert_int_equal(decide_full(&f, s * 1000, 0, false), 0);
    }
    assert_false(f.d.has_data);
    assert_int_equal(stoke_autoscaler_record(&f.a, 0, &f.w, 100, 60), 0);
    f.fed = 101; /* recorded by hand above */
    assert_int_equal(decide_full(&f, 100000, 0, true), 9);
    assert_true(f.d.panic);
    assert_true(fabs(f.d.stable_avg - 60) < 1e-9 && fabs(f.d.panic_avg - 60) < 1e-9);
    fx_done(&f);

    /* The same reports recorded as data give the averaged-down answer. */
    fx_init(&f, scale_t10());
    load(&f, 0, 100, 0);
    load(&f, 100, 101, 60);
    assert_int_equal(decide_full(&f, 100000, 0, true), 2);
    assert_true(fabs(f.d.stable_avg - 1) < 1e-9 && fabs(f.d.panic_avg - 10) < 1e-9);
    fx_done(&f);
}

/* Zeros are data while replicas are ready or wanted (an idle function with
 * replicas must reach zero through its stable average), and a non-zero
 * report is data always. */
static void test_record_zero_is_data_unless_at_zero(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, scale_t10());
    assert_int_equal(stoke_autoscaler_record(&f.a, 0, &f.w, 1, 0), 1); /* no decision yet */
    assert_int_equal(stoke_autoscaler_record(&f.a, 1, &f.w, 2, 0), 0); /* one ready */
    assert_int_equal(stoke_autoscaler_record(&f.a, 0, &f.w, 3, 0.5), 0);
    stoke_autoscaler_seed(&f.a, 2); /* wanted, none ready yet */
    assert_int_equal(stoke_autoscaler_record(&f.a, 0, &f.w, 4, 0), 0);
    stoke_autoscaler_seed(&f.a, 0);
    assert_int_equal(stoke_autoscaler_record(&f.a, 0, &f.w, 5, 0), 1);
    assert_int_equal(stoke_autoscaler_record(&f.a, 0, &f.w, 6, -1), -EINVAL);
    double avg = -1;
    assert_true(stoke_metric_window_average(&f.w, 6000, 60000, &avg));
    assert_true(fabs(avg - 0.5 / 3) < 1e-6); /* seconds 2, 3 and 4 */
    fx_done(&f);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct fx f;
    struct stoke_scale_decision d = {.desired = 77};
    fx_init(&f, scale_t10());
    load(&f, 0, 60, 7);
    struct stoke_metric_window small;
    assert_int_equal(stoke_metric_window_init(&small, 6000), 0);
    assert_int_equal(stoke_autoscale(&f.a, &f.scale, &small, 1000, 0, true, &d), -EINVAL);
    struct stoke_metric_window zero = {0};
    assert_int_equal(stoke_autoscale(&f.a, &f.scale, &zero, 1000, 0, true, &d), -EINVAL);
    struct stoke_scale s = f.scale;
    s.target = 0;
    assert_int_equal(stoke_autoscale(&f.a, &s, &f.w, 1000, 0, true, &d), -EINVAL);
    s = f.scale;
    s.utilization = 0;
    assert_int_equal(stoke_autoscale(&f.a, &s, &f.w, 1000, 0, true, &d), -EINVAL);
    assert_int_equal(d.desired, 77);
    assert_false(f.a.has_last);
    /* After a reserve, the same call works. */
    assert_int_equal(stoke_metric_window_reserve(&small, 60000), 0);
    assert_int_equal(stoke_autoscale(&f.a, &f.scale, &small, 1000, 0, true, &d), 0);
    assert_int_equal(d.desired, 1);
    stoke_metric_window_done(&small);
    fx_done(&f);
}

/* The backlog of queue triggers as demand: ceil(backlog / target),
 * bounded by max, never lowering the autoscaler's own decision, and its
 * grace once the backlog is gone. */
static void test_backlog_demand(void **state)
{
    (void)state;
    struct stoke_scale sc = {.max = 0, .scale_to_zero_grace_ms = 30000};
    static const struct {
        uint32_t max, desired, target;
        uint64_t backlog;
        uint32_t want;
    } cases[] = {
        {0, 0, 10, 0, 0},                  /* nothing waiting, never had a backlog */
        {0, 0, 10, 1, 1},                  /* one message: from zero */
        {0, 0, 10, 10, 1},                 /* exactly one replica's worth */
        {0, 0, 10, 11, 2},                 /* rounded up */
        {0, 0, 10, 1000, 100},             /* unbounded */
        {3, 0, 10, 1000, 3},               /* bounded by max */
        {3, 5, 10, 1000, 5},               /* the autoscaler's decision is not lowered */
        {0, 4, 10, 5, 4},                  /* ... whatever the backlog */
        {0, 0, 0, 7, 7},                   /* target 0 counts as 1 */
        {0, 0, 1, UINT64_MAX, UINT32_MAX}, /* no overflow */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t last = 0;
        sc.max = cases[i].max;
        uint32_t got = stoke_autoscale_backlog(&sc, cases[i].desired, cases[i].backlog,
                                               cases[i].target, 1000, &last);
        if (got != cases[i].want) {
            print_error("case %zu: %u, want %u\n", i, got, cases[i].want);
            fail();
        }
        assert_int_equal(last, cases[i].backlog ? 1000 : 0);
    }
    /* Grace: 1 is kept for scale_to_zero_grace_ms after the last backlog. */
    sc.max = 0;
    uint64_t last = 0;
    assert_int_equal(stoke_autoscale_backlog(&sc, 0, 25, 10, 100000, &last), 3);
    assert_int_equal(last, 100000);
    assert_int_equal(stoke_autoscale_backlog(&sc, 0, 0, 10, 110000, &last), 1);
    assert_int_equal(stoke_autoscale_backlog(&sc, 0, 0, 10, 129999, &last), 1);
    assert_int_equal(stoke_autoscale_backlog(&sc, 0, 0, 10, 130000, &last), 0);
    assert_int_equal(last, 100000);
    /* no grace: straight to the autoscaler's decision */
    sc.scale_to_zero_grace_ms = 0;
    last = 0;
    assert_int_equal(stoke_autoscale_backlog(&sc, 0, 5, 10, 1000, &last), 1);
    assert_int_equal(stoke_autoscale_backlog(&sc, 0, 0, 10, 1000, &last), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_empty_is_no_data),
        cmocka_unit_test(test_window_sums_reports_of_one_second),
        cmocka_unit_test(test_window_gaps_are_missing_not_zero),
        cmocka_unit_test(test_window_rounds_to_6_decimals),
        cmocka_unit_test(test_window_refuses_bad_and_stale),
        cmocka_unit_test(test_window_reserve_keeps_data),
        cmocka_unit_test(test_default_spec_values),
        cmocka_unit_test(test_steady_state),
        cmocka_unit_test(test_goal_and_utilization_table),
        cmocka_unit_test(test_ramp_up),
        cmocka_unit_test(test_step_up_into_panic),
        cmocka_unit_test(test_panic_exit_a_full_window_later),
        cmocka_unit_test(test_panic_exit_is_strictly_after_the_window),
        cmocka_unit_test(test_panic_extended_while_over_threshold),
        cmocka_unit_test(test_no_scale_down_during_panic),
        cmocka_unit_test(test_rate_limit_up),
        cmocka_unit_test(test_rate_limit_down_table),
        cmocka_unit_test(test_rate_limit_down_steps),
        cmocka_unit_test(test_scale_up_from_zero_unlimited),
        cmocka_unit_test(test_max_zero_unbounded),
        cmocka_unit_test(test_min_max_clamp_table),
        cmocka_unit_test(test_activation_from_zero),
        cmocka_unit_test(test_activation_not_delayed),
        cmocka_unit_test(test_scale_to_zero_after_grace),
        cmocka_unit_test(test_scale_to_zero_no_grace),
        cmocka_unit_test(test_scale_to_zero_clock_restarts),
        cmocka_unit_test(test_scale_to_zero_waits_grace_plus_delay),
        cmocka_unit_test(test_scale_down_delay_holds_the_max),
        cmocka_unit_test(test_scale_down_delay_does_not_delay_up),
        cmocka_unit_test(test_scale_down_delay_many_falls),
        cmocka_unit_test(test_burst_shorter_than_panic_window),
        cmocka_unit_test(test_panic_threshold_table),
        cmocka_unit_test(test_panic_window_percent),
        cmocka_unit_test(test_metric_gap_keeps_replicas),
        cmocka_unit_test(test_no_data_changes_nothing),
        cmocka_unit_test(test_several_activators_summed),
        cmocka_unit_test(test_restart_starts_in_panic),
        cmocka_unit_test(test_initial_seed_kept_until_grace),
        cmocka_unit_test(test_after_zero_burst_seen_at_full_size),
        cmocka_unit_test(test_record_zero_is_data_unless_at_zero),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_backlog_demand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
