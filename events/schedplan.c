/* Schedules' decisions: see schedplan.h. */
#include "schedplan.h"

#include <stdio.h>
#include <time.h>

void sched_plan(const struct stoke_cron *c, int64_t last_s, int64_t now_s, uint32_t deadline_s,
                bool suspend, struct sched_step *ret)
{
    ret->action = SCHED_WAIT;
    ret->at_s = -1;
    ret->next_s = stoke_cron_next(c, now_s > last_s ? now_s : last_s);
    if (now_s <= last_s)
        return;
    int64_t latest = stoke_cron_latest(c, last_s, now_s);
    if (latest < 0)
        return;
    ret->at_s = latest;
    if (suspend)
        ret->action = SCHED_MISSED_SUSPENDED;
    else if (deadline_s && now_s - latest > (int64_t)deadline_s)
        ret->action = SCHED_MISSED_DEADLINE;
    else
        ret->action = SCHED_RUN;
}

void sched_rfc3339(int64_t t, char *out, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, size, "1970-01-01T00:00:00Z");
}
