/* stoke/cron.h: cron expressions, their next run, time zones and Vixie
 * cron's daylight-saving rule. The expected times are worked out by hand
 * from the calendar and the zones' published rules (noted at each case);
 * timegm() only turns those calendar times into seconds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "stoke/cron.h"

static int64_t utc(int y, int mo, int d, int h, int mi)
{
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
    return (int64_t)timegm(&tm);
}

static void show(const char *what, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char buf[64];
    gmtime_r(&tt, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%MZ", &tm);
    print_error("%s %s\n", what, buf);
}

struct next_case {
    const char *expr, *zone;
    int64_t after, want;
};

static void check_cases(const struct next_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct stoke_cron c;
        char err[256];
        int r = stoke_cron_parse(cases[i].expr, cases[i].zone, &c, err, sizeof(err));
        if (r < 0)
            print_error("case %zu (%s): %s\n", i, cases[i].expr, err);
        assert_int_equal(r, 0);
        int64_t got = stoke_cron_next(&c, cases[i].after);
        if (got != cases[i].want) {
            print_error("case %zu: %s in %s\n", i, cases[i].expr,
                        cases[i].zone ? cases[i].zone : "UTC");
            show("  after", cases[i].after);
            show("  want ", cases[i].want);
            show("  got  ", got);
        }
        assert_true(got == cases[i].want);
    }
}

/* 2026-12-04 is a Friday, 2026-12-05 a Saturday. */
static void test_next_utc(void **state)
{
    (void)state;
    const struct next_case cases[] = {
        {"*/15 * * * *", NULL, utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 15)},
        {"*/15 * * * *", NULL, utc(2026, 1, 1, 0, 0) + 59, utc(2026, 1, 1, 0, 15)},
        {"*/15 * * * *", NULL, utc(2026, 1, 1, 0, 14) + 59, utc(2026, 1, 1, 0, 15)},
        {"* * * * *", NULL, utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 16)},
        /* The next leap day after March 2026. */
        {"0 0 29 2 *", NULL, utc(2026, 3, 1, 0, 0), utc(2028, 2, 29, 0, 0)},
        /* Weekdays at noon, after Friday 13:00: Monday. */
        {"0 12 * * 1-5", NULL, utc(2026, 12, 4, 13, 0), utc(2026, 12, 7, 12, 0)},
        {"0 12 * * mon-fri", NULL, utc(2026, 12, 4, 11, 0), utc(2026, 12, 4, 12, 0)},
        /* Both day fields restricted: the 13th or a Friday, whichever is
         * first: Friday the 11th. */
        {"0 0 13 * 5", NULL, utc(2026, 12, 5, 0, 0), utc(2026, 12, 11, 0, 0)},
        {"0 0 13 * *", NULL, utc(2026, 12, 5, 0, 0), utc(2026, 12, 13, 0, 0)},
        /* A day field that begins with '*' makes both required: the 1st,
         * 14th or 27th that is a Friday; December's are a Tuesday, a Monday
         * and a Sunday, and 2027-01-01 is a Friday. */
        {"0 0 */13 * 5", NULL, utc(2026, 12, 5, 0, 0), utc(2027, 1, 1, 0, 0)},
        /* 7 is Sunday, as 0 is. */
        {"0 0 * * 7", NULL, utc(2026, 12, 5, 0, 0), utc(2026, 12, 6, 0, 0)},
        {"@weekly", NULL, utc(2026, 12, 5, 0, 0), utc(2026, 12, 6, 0, 0)},
        {"@yearly", NULL, utc(2026, 12, 5, 0, 0), utc(2027, 1, 1, 0, 0)},
        {"@monthly", NULL, utc(2026, 12, 5, 0, 0), utc(2027, 1, 1, 0, 0)},
        {"@daily", NULL, utc(2026, 12, 5, 0, 0), utc(2026, 12, 6, 0, 0)},
        {"@hourly", NULL, utc(2026, 12, 5, 23, 0), utc(2026, 12, 6, 0, 0)},
        /* a/n: from a to the field's end. */
        {"5/20 * * * *", NULL, utc(2026, 12, 5, 0, 30), utc(2026, 12, 5, 0, 45)},
        {"5/20 * * * *", NULL, utc(2026, 12, 5, 0, 45), utc(2026, 12, 5, 1, 5)},
        {"0 9 1 jan,JUL *", NULL, utc(2026, 12, 5, 0, 0), utc(2027, 1, 1, 9, 0)},
        {"0 9 1 jan,JUL *", NULL, utc(2027, 1, 1, 9, 0), utc(2027, 7, 1, 9, 0)},
        {"30 23 31 12 *", NULL, utc(2026, 12, 31, 23, 30), utc(2027, 12, 31, 23, 30)},
        /* "UTC" is UTC. */
        {"0 0 * * *", "UTC", utc(2026, 12, 5, 0, 0), utc(2026, 12, 6, 0, 0)},
    };
    check_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

/* Europe/Berlin: CET (+1) and CEST (+2); summer time from the last Sunday of
 * March at 01:00 UTC (02:00 -> 03:00 local) to the last Sunday of October at
 * 01:00 UTC (03:00 -> 02:00 local). In 2027: March 28 and October 31. */
static void test_next_in_zones(void **state)
{
    (void)state;
    const struct next_case cases[] = {
        /* Winter: 09:00 CET is 08:00 UTC; summer: 07:00 UTC. */
        {"0 9 * * *", "Europe/Berlin", utc(2026, 12, 5, 0, 0), utc(2026, 12, 5, 8, 0)},
        {"0 9 * * *", "Europe/Berlin", utc(2027, 6, 1, 0, 0), utc(2027, 6, 1, 7, 0)},
        /* India, +05:30 all year. */
        {"0 9 * * *", "Asia/Kolkata", utc(2026, 12, 5, 0, 0), utc(2026, 12, 5, 3, 30)},
        /* New York, EST (-5) in winter. */
        {"0 9 * * *", "America/New_York", utc(2026, 12, 5, 0, 0), utc(2026, 12, 5, 14, 0)},
        /* Midnight local on the 1st, before UTC's. */
        {"0 0 1 * *", "Europe/Berlin", utc(2026, 12, 5, 0, 0), utc(2026, 12, 31, 23, 0)},
        /* A Sunday local that is still Saturday in UTC. */
        {"0 0 * * sun", "Europe/Berlin", utc(2026, 12, 5, 0, 0), utc(2026, 12, 5, 23, 0)},
    };
    check_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_daylight_saving(void **state)
{
    (void)state;
    const struct next_case cases[] = {
        /* Berlin, 2027-03-28: 02:00-02:59 local never happens. A fixed-time
         * job in it runs at the change, 01:00 UTC (03:00 CEST), once. */
        {"30 2 * * *", "Europe/Berlin", utc(2027, 3, 27, 12, 0), utc(2027, 3, 28, 1, 0)},
        {"0,30 2 * * *", "Europe/Berlin", utc(2027, 3, 27, 12, 0), utc(2027, 3, 28, 1, 0)},
        {"0,30 2 * * *", "Europe/Berlin", utc(2027, 3, 28, 1, 0), utc(2027, 3, 29, 0, 0)},
        /* ... and the next day at 02:30 CEST, 00:30 UTC. */
        {"30 2 * * *", "Europe/Berlin", utc(2027, 3, 28, 1, 0), utc(2027, 3, 29, 0, 30)},
        /* Not in the gap: unaffected (03:30 CEST = 01:30 UTC). */
        {"30 3 * * *", "Europe/Berlin", utc(2027, 3, 27, 12, 0), utc(2027, 3, 28, 1, 30)},
        /* A wildcard job skips what never happened: from 01:30 CET (00:30
         * UTC), :15 next reads 03:15 CEST (01:15 UTC), not 02:15. */
        {"15 * * * *", "Europe/Berlin", utc(2027, 3, 28, 0, 30), utc(2027, 3, 28, 1, 15)},
        {"*/30 * * * *", "Europe/Berlin", utc(2027, 3, 28, 0, 30), utc(2027, 3, 28, 1, 0)},
        /* Berlin, 2027-10-31: 02:00-02:59 local happens twice, first in
         * CEST (00:00-00:59 UTC) then in CET (01:00-01:59 UTC). A fixed-time
         * job runs the first time only. */
        {"30 2 * * *", "Europe/Berlin", utc(2027, 10, 30, 12, 0), utc(2027, 10, 31, 0, 30)},
        {"30 2 * * *", "Europe/Berlin", utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30)},
        /* A wildcard job runs both times. */
        {"*/30 * * * *", "Europe/Berlin", utc(2027, 10, 31, 0, 30), utc(2027, 10, 31, 1, 0)},
        {"*/30 * * * *", "Europe/Berlin", utc(2027, 10, 31, 1, 0), utc(2027, 10, 31, 1, 30)},
        {"0 * * * *", "Europe/Berlin", utc(2027, 10, 31, 0, 0), utc(2027, 10, 31, 1, 0)},
        /* New York, 2027-03-14 (second Sunday of March): 02:00 EST -> 03:00
         * EDT at 07:00 UTC; 2027-11-07 (first Sunday of November): 02:00
         * EDT -> 01:00 EST at 06:00 UTC. */
        {"0 2 * * *", "America/New_York", utc(2027, 3, 13, 12, 0), utc(2027, 3, 14, 7, 0)},
        {"30 1 * * *", "America/New_York", utc(2027, 11, 7, 0, 0), utc(2027, 11, 7, 5, 30)},
        {"30 1 * * *", "America/New_York", utc(2027, 11, 7, 5, 30), utc(2027, 11, 8, 6, 30)},
    };
    check_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

/* In UTC, against a walk over every minute: the next run is the first
 * minute after `after` whose fields match, worked out here on their own. */
static void test_against_every_minute(void **state)
{
    (void)state;
    static const struct {
        const char *expr;
        int minute_mod, hour_lo, hour_hi, wday; /* wday -1: any */
    } cases[] = {
        {"*/7 * * * *", 7, 0, 23, -1},
        {"*/7 9-17 * * *", 7, 9, 17, -1},
        {"*/7 9-17 * * 2", 7, 9, 17, 2},
        {"0-59/13 22-23 * * *", 13, 22, 23, -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct stoke_cron c;
        char err[256];
        assert_int_equal(stoke_cron_parse(cases[i].expr, NULL, &c, err, sizeof(err)), 0);
        int64_t t = utc(2026, 12, 1, 0, 0) + 17;
        for (int steps = 0; steps < 200; steps++) {
            int64_t got = stoke_cron_next(&c, t);
            int64_t m = t - t % 60 + 60;
            for (;; m += 60) {
                time_t tt = (time_t)m;
                struct tm tm;
                gmtime_r(&tt, &tm);
                if (tm.tm_min % cases[i].minute_mod == 0 && tm.tm_hour >= cases[i].hour_lo &&
                    tm.tm_hour <= cases[i].hour_hi &&
                    (cases[i].wday < 0 || tm.tm_wday == cases[i].wday))
                    break;
            }
            if (got != m) {
                print_error("%s\n", cases[i].expr);
                show("  after", t);
                show("  want ", m);
                show("  got  ", got);
            }
            assert_true(got == m);
            t = got;
        }
    }
}

static void test_bad(void **state)
{
    (void)state;
    static const struct {
        const char *expr, *zone, *says;
    } cases[] = {
        {"60 * * * *", NULL, "minute: 60: values must be 0..59"},
        {"* 24 * * *", NULL, "hour: 24: values must be 0..23"},
        {"* * 0 * *", NULL, "day of month: 0: values must be 1..31"},
        {"* * * 13 *", NULL, "month: 13: values must be 1..12"},
        {"* * * * 8", NULL, "day of week: 8: values must be 0..7"},
        {"* * * *", NULL, "4 fields: a schedule has 5"},
        {"* * * * * *", NULL, "6 or more fields"},
        {"", NULL, "0 fields"},
        {"5-1 * * * *", NULL, "a range must go upwards (5-1)"},
        {"*/0 * * * *", NULL, "step must be 1..59"},
        {"*/ * * * *", NULL, "a step needs a number"},
        {"1- * * * *", NULL, "a range needs an end"},
        {"x * * * *", NULL, "minute: x: expected a number, '*' or a range"},
        {"* * * foo *", NULL, "month: foo: expected a number or a name"},
        {"1,,2 * * * *", NULL, "minute: 1,,2: expected a number"},
        {"1;2 * * * *", NULL, "unexpected ';'"},
        {"? * * * *", NULL, "minute: ?: expected a number"},
        {"0 0 30 2 *", NULL, "never runs"},
        {"0 0 31 4,6,9,11 *", NULL, "never runs"},
        {"@reboot", NULL, "@reboot: unknown macro"},
        {"@daily 5", NULL, "unknown macro"},
        {"0 0 * * *", "Mars/Olympus_Mons", "time zone Mars/Olympus_Mons: unknown"},
        {"0 0 * * *", "../../etc/passwd", "not an IANA zone name"},
        {"0 0 * * *", "/etc/localtime", "not an IANA zone name"},
        {"0 0 * * *", "Europe/", "not an IANA zone name"},
        {"0 0 * * *", "Europe//Berlin", "not an IANA zone name"},
        {"0 0 * * *", "Europe", "unknown on this system"}, /* a directory */
        {"0 0 * * *", "Europe/Berlin Europe/Paris", "not an IANA zone name"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct stoke_cron c;
        char err[256];
        int r = stoke_cron_parse(cases[i].expr, cases[i].zone, &c, err, sizeof(err));
        if (r != -22 || !strstr(err, cases[i].says))
            print_error("case %zu (%s): %d %s\n", i, cases[i].expr, r, err);
        assert_int_equal(r, -22);
        assert_non_null(strstr(err, cases[i].says));
    }
}

/* The one run owed after a downtime: the latest in (after, now]. */
static void test_latest(void **state)
{
    (void)state;
    const struct {
        const char *expr, *zone;
        int64_t after, now, want;
    } cases[] = {
        /* Every 15 minutes, down from 10:00 to 12:07: the 12:00 one. */
        {"*/15 * * * *", NULL, utc(2026, 12, 5, 10, 0), utc(2026, 12, 5, 12, 7),
         utc(2026, 12, 5, 12, 0)},
        /* Daily at 09:00, down from December 1st's run to the 5th 08:00:
         * the 4th's. */
        {"0 9 * * *", NULL, utc(2026, 12, 1, 9, 0), utc(2026, 12, 5, 8, 0), utc(2026, 12, 4, 9, 0)},
        /* Nothing due: 12:00 ran, now 12:14. */
        {"*/15 * * * *", NULL, utc(2026, 12, 5, 12, 0), utc(2026, 12, 5, 12, 14), -1},
        /* A run exactly at now counts; one exactly at after does not. */
        {"0 * * * *", NULL, utc(2026, 12, 5, 12, 0), utc(2026, 12, 5, 13, 0),
         utc(2026, 12, 5, 13, 0)},
        /* Leap days: from 2024-02-29 to 2027-12-05, none. */
        {"0 0 29 2 *", NULL, utc(2024, 2, 29, 0, 0), utc(2027, 12, 5, 0, 0), -1},
        /* Down for three years: the last of them, not the first; midnight
         * of January 1st in Berlin is 23:00 UTC the day before. */
        {"0 0 1 1 *", "Europe/Berlin", utc(2023, 6, 1, 0, 0), utc(2026, 12, 5, 0, 0),
         utc(2025, 12, 31, 23, 0)},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct stoke_cron c;
        char err[256];
        assert_int_equal(stoke_cron_parse(cases[i].expr, cases[i].zone, &c, err, sizeof(err)), 0);
        int64_t got = stoke_cron_latest(&c, cases[i].after, cases[i].now);
        if (got != cases[i].want) {
            print_error("case %zu: %s\n", i, cases[i].expr);
            show("  want ", cases[i].want);
            show("  got  ", got);
        }
        assert_true(got == cases[i].want);
    }
}

/* The day fields' '?' is '*' (Kubernetes accepts it). */
static void test_question_mark(void **state)
{
    (void)state;
    struct stoke_cron a, b;
    char err[256];
    assert_int_equal(stoke_cron_parse("0 12 ? * mon", NULL, &a, err, sizeof(err)), 0);
    assert_int_equal(stoke_cron_parse("0 12 * * 1", NULL, &b, err, sizeof(err)), 0);
    assert_true(a.dom == b.dom && a.dom_star && a.dow == b.dow);
    assert_true(stoke_cron_next(&a, utc(2026, 12, 5, 0, 0)) == utc(2026, 12, 7, 12, 0));
}

int main(void)
{
    /* The process's own TZ must come back as it was. */
    setenv("TZ", "Asia/Tokyo", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_utc),
        cmocka_unit_test(test_next_in_zones),
        cmocka_unit_test(test_daylight_saving),
        cmocka_unit_test(test_against_every_minute),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_latest),
        cmocka_unit_test(test_question_mark),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    const char *tz = getenv("TZ");
    if (!tz || strcmp(tz, "Asia/Tokyo") != 0) {
        print_error("TZ is %s after the tests\n", tz ? tz : "(unset)");
        failed++;
    }
    return failed;
}
