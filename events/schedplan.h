/* The decisions of schedules (README "Schedules"), pure: no I/O, clock or
 * globals, so that tests drive them with any times.
 *
 * A schedule's durable progress is one time, `last_s`: the latest scheduled
 * time it has handled (run, or skipped for good). Whatever happened since
 * (stoke-events down for an hour, the loop late), the scheduled times in
 * (last_s, now] are owed at most one run: the latest of them, and only
 * while it is no older than startingDeadlineSeconds (none: always). */
#ifndef EVENTS_SCHEDPLAN_H
#define EVENTS_SCHEDPLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "stoke/cron.h"

enum sched_action {
    SCHED_WAIT = 0,        /* nothing owed now */
    SCHED_RUN,             /* run at_s now */
    SCHED_MISSED_DEADLINE, /* at_s is older than the deadline: handled, not run */
    SCHED_MISSED_SUSPENDED /* at_s fell while suspended: not run, not handled */
};

struct sched_step {
    enum sched_action action;
    int64_t at_s;   /* the scheduled time acted on (Unix seconds); -1 with SCHED_WAIT */
    int64_t next_s; /* the next scheduled time after now (and after last_s), -1: none */
};

/* What a schedule with cron `c` owes at `now_s` when it has handled every
 * time up to `last_s`; `deadline_s` 0 is no deadline. A suspended schedule
 * reports the time it would have run (the caller counts it and does not
 * move last_s, so that resuming runs the latest time missed once, within
 * the deadline). A last_s after now_s (the clock went back) owes nothing
 * until the clock passes it. */
void sched_plan(const struct stoke_cron *c, int64_t last_s, int64_t now_s, uint32_t deadline_s,
                bool suspend, struct sched_step *ret);

/* RFC 3339 UTC of `t` ("2024-03-31T01:00:00Z") into out (>= 21 bytes). */
void sched_rfc3339(int64_t t, char *out, size_t size);

#endif
