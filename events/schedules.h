/* Schedules (README "Schedules"): stoke-events runs each function's
 * spec.schedules (learned through fnspec.h, so only with --controller) as
 * async calls in the store, delivered like any other (retries, back-off,
 * dead letters), each a CloudEvent in binary mode (ce-* headers, the
 * schedule's data as the body).
 *
 * A run's call id (also its ce-id) is derived from the function, the
 * schedule and the scheduled time, and is inserted with ev_db_insert_once()
 * in the same transaction that moves the schedule's progress (the
 * schedule_runs table) to that time: a run is stored once, whatever
 * restarts. After downtime the latest time missed runs once if it is
 * within startingDeadlineSeconds (schedplan.h).
 *
 * One uv timer waits for the earliest next run of all schedules; a fire
 * evaluates the schedules that are due only.
 *
 * Test hook: STOKE_EVENTS_TEST_CLOCK_SKEW=<seconds> (may be negative) is
 * added to the wall clock the schedules read, and
 * STOKE_EVENTS_TEST_CLOCK_RATE=<n> (1..3600, default 1) makes that clock
 * run n times as fast from the start; nothing else in stoke-events (call
 * ages, retries, leases) sees either. Thread: the loop's. */
#ifndef EVENTS_SCHEDULES_H
#define EVENTS_SCHEDULES_H

#include <stdbool.h>

#include <uv.h>

#include "stoke/util.h"
#include "store.h"

struct schedules_host {
    uv_loop_t *loop;
    struct ev_store *store;
    /* Takes a new call (stored) and delivers it; owns `c`. */
    void (*add_call)(struct ev_call *c);
    /* Ends call `id` as cancelled with `condition` if it is waiting (not
     * in an attempt); returns whether it did. */
    bool (*cancel_waiting)(const char *id, const char *condition);
};

/* Reads the test hooks, watches the functions (fnspec_observe(): call
 * before fnspec_start()). Returns 0, or -EINVAL for a bad hook value. */
int schedules_start(const struct schedules_host *h);

/* The call id (= ce-id) of schedule `name` of `fn` at `at_s`. */
void schedules_call_id(const char *fn, const char *name, int64_t at_s, char out[33]);

/* stoke_schedule_runs_total, stoke_schedule_missed_total and
 * stoke_schedule_next_run_timestamp_seconds. */
int schedules_metrics(struct stoke_buf *out);

/* Stops the timer and forgets the schedules (their progress stays in the
 * store); jobs under way finish and free what is theirs. */
void schedules_stop(void);

#endif
