/* The controller's end of the activator channel (stoke/routes.h): listens on
 * a unix socket or loopback TCP, accepts any number of activators, sends
 * each the current route table on connect and on every change, and hands
 * their pokes and stats to the controller. Thread: the loop's. */
#ifndef CONTROLLER_HUB_H
#define CONTROLLER_HUB_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "stoke/util.h"

struct hub;

struct hub_callbacks {
    void (*on_poke)(const char *fn, void *data);
    /* One call per function of an activator's report; `second` is the
     * second (of uv_now()) the report counts for: one per activator per
     * second, so reports of several activators add up. */
    void (*on_stats)(const char *activator, const char *fn, uint64_t second, double concurrency,
                     uint64_t requests, void *data);
    /* An activator reported a new route generation or drain state; see
     * hub_is_drained(). */
    void (*on_drain)(void *data);
    void *data;
};

/* Binds (a stale unix socket file is replaced; mode 0660: who may connect
 * is the file's group) and listens. On TCP `token` is required (copied):
 * a connection's first line must be {"op":"hello","token":...} with it,
 * within 5 s, compared in constant time; anything else gets an
 * {"op":"error","message":...} line and is closed, and it is sent nothing
 * before. Returns 0 and *ret, -EACCES for TCP without a token, or a
 * negative errno. */
int hub_new(uv_loop_t *loop, const struct stoke_addr *addr, const char *token,
            const struct hub_callbacks *cbs, struct hub **ret);

/* Sends `line` (a whole message without '\n', copied) to every activator
 * and keeps it for those that connect later. */
void hub_broadcast(struct hub *hub, const char *line, size_t len);

/* Connected activators (on TCP: those that sent the token). */
unsigned hub_activators(const struct hub *hub);

/* True when every connected activator uses a route table of at least `gen`
 * (one without `addr`) and no longer lists `addr` as draining, i.e. no
 * request is in flight to that replica through any activator. */
bool hub_is_drained(const struct hub *hub, const char *addr, uint64_t gen);

void hub_close(struct hub *hub, void (*on_closed)(void *data), void *data);

#endif
