/* What stoke-events knows of the functions: their entries of the
 * controller's route tables (stoke/routes.h), learned over the controller's
 * channel as an events peer (--controller): the whole table undivided,
 * then updates. Other modules watch it through observers: "set" when a
 * function comes or its entry changes (its replicas coming and going is no
 * change), "removed" when it leaves. Thread: the loop's. */
#ifndef EVENTS_FNSPEC_H
#define EVENTS_FNSPEC_H

#include <stdbool.h>

#include <uv.h>

#include "stoke/chan.h"
#include "stoke/routes.h"

struct fnspec_observer {
    /* `r` is borrowed for the call; `is_new`: the function was not known. */
    void (*on_set)(const struct stoke_route *r, bool is_new, void *data);
    void (*on_removed)(const char *name, void *data);
    void *data;
};

#define FNSPEC_MAX_OBSERVERS 8

/* Adds an observer (copied); call before fnspec_start(). Returns 0 or
 * -ENOSPC. */
int fnspec_observe(const struct fnspec_observer *o);

/* Opens the channel to `targets` (copied) with `token` (may be NULL). */
int fnspec_start(uv_loop_t *loop, const struct stoke_chan_targets *targets, const char *token);

/* The entry of `name`, borrowed until the next table or update, or NULL. */
const struct stoke_route *fnspec_get(const char *name);

/* Known functions. */
size_t fnspec_count(void);

/* The table's gen (0: none yet). */
uint64_t fnspec_gen(void);

/* Applies a table or an update (taking what it owns) and tells the
 * observers: what the channel calls, exposed for tests. */
void fnspec_apply_table(struct stoke_route_table *t);
void fnspec_apply_update(struct stoke_route_update *u);

/* Closes the channel and forgets the functions (the observers are told
 * nothing). */
void fnspec_stop(void);

/* Sends one line (without '\n') to the controller, such as the queue
 * triggers' backlog report; dropped while not connected. */
void fnspec_send(const char *line, size_t len);

#endif
