/* Queue triggers (README "Queue triggers"): stoke-events consumes each
 * function's Redis streams (spec.triggers, learned through fnspec.h) with
 * a consumer group (stoke/redisq.h), and makes each message an async call
 * in the store, delivered like any other (retries, back-off, dead
 * letters). The call's id is derived from the function, the trigger, the
 * stream and the message id, and the insert is a no-op when it is there
 * already, so a message read again after a restart runs no second time.
 * A message is acknowledged (XACK) once its call has ended and that end is
 * stored: succeeded, dead-lettered or cancelled (a trigger's call that gets
 * a non-retryable answer is dead-lettered, not "failed", so that it can be
 * redriven). Messages read and not acknowledged are at most the function's
 * async.maxInFlight per trigger. Every second the backlog (the group's lag
 * plus its pending messages) of each function goes to the controller, whose
 * autoscaler counts it as demand. Thread: the loop's. */
#ifndef EVENTS_TRIGGERS_H
#define EVENTS_TRIGGERS_H

#include <stdbool.h>

#include <uv.h>

#include "stoke/util.h"
#include "store.h"

struct triggers_host {
    uv_loop_t *loop;
    struct ev_store *store;
    const char *consumer; /* this process's consumer name in every group (copied) */
    /* Takes a new call (stored) and delivers it; owns `c`. */
    void (*add_call)(struct ev_call *c);
};

/* Watches the functions (fnspec_observe(): call before fnspec_start()) and
 * starts the backlog report. Returns 0 or a negative errno. */
int triggers_start(const struct triggers_host *h);

/* A call's end is stored: acknowledges its message if it is a trigger's. */
void triggers_call_ended(const struct ev_call *c);

/* Whether `c` came from a queue trigger. */
bool triggers_is_trigger_call(const struct ev_call *c);

/* The call id of a message: 32 hex digits (two FNV-1a 64 hashes with
 * different bases) over the function, trigger, stream and message id. */
void triggers_call_id(const char *fn, const char *trigger, const char *stream, const char *msg_id,
                      char out[33]);

/* stoke_trigger_messages_total and stoke_trigger_backlog. */
int triggers_metrics(struct stoke_buf *out);

/* Closes every consumer (messages not acknowledged stay pending in Redis,
 * read again at the next start) and the timer. */
void triggers_stop(void);

#endif
