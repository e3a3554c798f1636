/* Schedules: standard 5-field cron expressions and the @-macros, in an IANA
 * time zone, with Vixie cron's rule for daylight-saving changes.
 *
 *   minute hour day-of-month month day-of-week
 *
 * Each field is a list of elements separated by ',': `*` (or `?` in the two
 * day fields, as Kubernetes accepts), a number or a name (jan..dec,
 * sun..sat; 7 is Sunday too), a range `a-b`, each with an optional step
 * `/n`; `a/n` means a, a+n, ... up to the field's end (as Kubernetes'
 * CronJob reads it). When both day fields are restricted (neither begins with
 * `*`), a day matches if either does; otherwise both must.
 *
 * Daylight saving (Vixie cron): a job whose minute and hour fields are both
 * fixed (neither begins with `*`) runs once at the first instant after a
 * skipped interval when one of its times fell in it, and does not run again
 * in a repeated interval; any other job runs by the wall clock as it reads,
 * so its times in a skipped interval are skipped and those in a repeated
 * interval run twice.
 *
 * The zone's rules are glibc's reading of the system's tzdata: computing a
 * time sets the process's TZ for its duration under a lock, so nothing else
 * in the process may read local time (stoke logs in UTC). */
#ifndef STOKE_CRON_H
#define STOKE_CRON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STOKE_CRON_ZONE_MAX 64

struct stoke_cron {
    uint64_t minute; /* bit m for minute m, 0..59 */
    uint32_t hour;   /* bit h, 0..23 */
    uint32_t dom;    /* bit d, 1..31 */
    uint16_t month;  /* bit m, 1..12 */
    uint8_t dow;     /* bit d, 0..6 (Sunday 0) */
    bool dom_star;   /* the field began with '*' (or '?') */
    bool dow_star;
    bool fixed;                     /* neither minute nor hour began with '*': a fixed-time job */
    char zone[STOKE_CRON_ZONE_MAX]; /* IANA name; "" for UTC */
};

/* Parses `expr` for `zone` (NULL or "" for UTC; otherwise a tzdata name the
 * system has). 0, or -EINVAL with a message in err (always terminated) for a
 * bad expression, an unknown zone, or a schedule that never runs. */
int stoke_cron_parse(const char *expr, const char *zone, struct stoke_cron *c, char *err,
                     size_t errlen);

/* The first run strictly after `after` (Unix seconds): a whole minute.
 * -1 when there is none within 30 years (stoke_cron_parse refuses those). */
int64_t stoke_cron_next(const struct stoke_cron *c, int64_t after);

/* The latest run in (after, now], or -1 when there is none: after a
 * scheduler was down from `after`, the one run it owes (never one per run
 * it missed); whether it is still worth running is the caller's deadline. */
int64_t stoke_cron_latest(const struct stoke_cron *c, int64_t after, int64_t now);

#endif
