/* The schedules' decisions (events/schedplan.h): on time, late, after
 * downtime (the latest missed time once, never one per time), past the
 * deadline, suspended, and a clock that went back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "schedplan.h"

#define T0 INT64_C(1704067200) /* 2024-01-01T00:00:00Z, a Monday */

static void parse(const char *expr, const char *zone, struct stoke_cron *c)
{
    char err[160];
    assert_int_equal(stoke_cron_parse(expr, zone, c, err, sizeof(err)), 0);
}

static void test_plan_table(void **state)
{
    (void)state;
    struct stoke_cron every, hourly, berlin;
    parse("* * * * *", NULL, &every);
    parse("@hourly", NULL, &hourly);
    parse("30 2 * * *", "Europe/Berlin", &berlin);
    static const struct {
        const char *what;
        int cron; /* 0 every minute, 1 hourly, 2 Berlin 02:30 */
        int64_t last, now;
        uint32_t deadline;
        bool suspend;
        enum sched_action action;
        int64_t at, next;
    } cases[] = {
        {"nothing owed yet", 0, T0, T0 + 59, 0, false, SCHED_WAIT, -1, T0 + 60},
        {"on time", 0, T0, T0 + 60, 0, false, SCHED_RUN, T0 + 60, T0 + 120},
        {"late within the minute", 0, T0, T0 + 119, 0, false, SCHED_RUN, T0 + 60, T0 + 120},
        {"down for an hour: the latest once", 0, T0, T0 + 3600 + 10, 0, false, SCHED_RUN, T0 + 3600,
         T0 + 3660},
        {"down, the latest within the deadline", 1, T0, T0 + 5 * 3600 + 20, 30, false, SCHED_RUN,
         T0 + 5 * 3600, T0 + 6 * 3600},
        {"down, the latest past the deadline", 1, T0, T0 + 5 * 3600 + 31, 30, false,
         SCHED_MISSED_DEADLINE, T0 + 5 * 3600, T0 + 6 * 3600},
        {"exactly at the deadline", 1, T0, T0 + 3600 + 30, 30, false, SCHED_RUN, T0 + 3600,
         T0 + 7200},
        {"suspended", 0, T0, T0 + 60, 0, true, SCHED_MISSED_SUSPENDED, T0 + 60, T0 + 120},
        {"suspended, nothing owed", 0, T0, T0 + 30, 0, true, SCHED_WAIT, -1, T0 + 60},
        {"the clock went back", 0, T0 + 600, T0, 0, false, SCHED_WAIT, -1, T0 + 660},
        {"last is now", 0, T0 + 60, T0 + 60, 0, false, SCHED_WAIT, -1, T0 + 120},
        /* 02:30 Berlin is 01:30 UTC in winter */
        {"a zone", 2, T0, T0 + 86400, 0, false, SCHED_RUN, T0 + 5400, T0 + 86400 + 5400},
    };
    const struct stoke_cron *crons[] = {&every, &hourly, &berlin};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sched_step st;
        sched_plan(crons[cases[i].cron], cases[i].last, cases[i].now, cases[i].deadline,
                   cases[i].suspend, &st);
        if (st.action != cases[i].action || st.at_s != cases[i].at || st.next_s != cases[i].next) {
            print_error("%s: action %d at %lld next %lld\n", cases[i].what, (int)st.action,
                        (long long)(st.at_s - T0), (long long)(st.next_s - T0));
            fail();
        }
    }
}

/* Stepping a schedule as stoke-events does, handling each time it runs:
 * each minute runs once, and 90 minutes down owe one run, not 90. */
static void test_plan_walk(void **state)
{
    (void)state;
    struct stoke_cron every;
    parse("*/1 * * * *", NULL, &every);
    int64_t last = T0, runs = 0;
    for (int64_t now = T0; now < T0 + 600; now += 7) {
        struct sched_step st;
        sched_plan(&every, last, now, 0, false, &st);
        if (st.action == SCHED_RUN) {
            assert_true(st.at_s > last && st.at_s <= now && st.at_s % 60 == 0);
            last = st.at_s;
            runs++;
        }
    }
    assert_int_equal(runs, 9); /* T0+60 .. T0+540 */
    struct sched_step st;
    sched_plan(&every, last, last + 90 * 60 + 5, 0, false, &st);
    assert_int_equal(st.action, SCHED_RUN);
    assert_int_equal(st.at_s, last + 90 * 60);
    sched_plan(&every, st.at_s, last + 90 * 60 + 5, 0, false, &st);
    assert_int_equal(st.action, SCHED_WAIT);
}

static void test_rfc3339(void **state)
{
    (void)state;
    char b[32];
    sched_rfc3339(T0 + 3600 + 61, b, sizeof(b));
    assert_string_equal(b, "2024-01-01T01:01:01Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_table),
        cmocka_unit_test(test_plan_walk),
        cmocka_unit_test(test_rfc3339),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
