/* The controller's end of the activator channel (stoke/routes.h): listens on
 * a unix socket or loopback TCP, accepts any number of activators, sends
 * each the route table made for its process once it has said hello, when
 * activators come or go and when it asks again (resync), an update on any
 * other change, and hands their pokes and stats to the controller. An
 * activator process opens one channel per worker; its hello names the
 * process, and limits are divided among processes (stoke_route_share()).
 * A channel whose hello says "role":"events" (stoke-events) gets the whole
 * tables and updates, undivided, and is no member: it changes no
 * activator's shares, takes no part in drains, and is not counted as an
 * activator. Its first table comes as a resync's does (on_resync).
 * Thread: the loop's. */
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
    /* A channel said hello or one that had went away: the tables are to be
     * made again (hub_send_routes()). */
    void (*on_members)(void *data);
    /* An activator's report for `second` ended (after its on_stats calls):
     * it lists only functions with traffic. */
    void (*on_stats_done)(uint64_t second, void *data);
    /* An activator asked for its whole table again (it missed an update):
     * hub_send_routes(..., true) sends it to those that asked. */
    void (*on_resync)(void *data);
    /* stoke-events' report of the queue-trigger backlog of `fn`: `backlog`
     * messages waiting at `target` per replica (README "Queue triggers").
     * One per function per report (about once a second); may be NULL. */
    void (*on_backlog)(const char *fn, uint64_t backlog, uint32_t target, void *data);
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

#define HUB_PROCESS_MAX 64 /* a process id's size, with its NUL */

/* The ids of the activator processes connected (that said hello), sorted,
 * each once: a malloc'd array (free()) of *n, or NULL on OOM (*n = 0). */
char (*hub_processes(const struct hub *hub, unsigned *n))[HUB_PROCESS_MAX];

/* The slots activator process `process` said in its hello it has on replica
 * `addr` of function `fn` (as a controller before this one divided them):
 * true and *ret, or false when none of its channels said. */
bool hub_reported_slots(const struct hub *hub, const char *process, const char *fn,
                        const char *addr, uint32_t *ret);

/* Whether any connected activator said it has slots (a controller before
 * this one divided some replica's). */
bool hub_any_reported_slots(const struct hub *hub);

/* Makes one routes (or update) message per activator process (`make` is
 * called with the process's id and index among the `n` of hub_processes();
 * it returns a malloc'd line without '\n', or NULL on OOM: that process
 * misses it, and asks again at the next update) and sends it on each of
 * that process's channels; with `only_resync`, only on those that asked
 * for a resync (and only for their processes). Either way, a channel that
 * gets a line no longer waits for a resync. The events peers' line is made
 * by make(NULL, 0, 1): the table or update undivided. */
void hub_send_routes(struct hub *hub,
                     char *(*make)(const char *process, unsigned i, unsigned n, void *data),
                     void *data, bool only_resync);

/* What went over the channels since the hub started. */
struct hub_counters {
    uint64_t tables, table_bytes;   /* whole route tables sent (one per channel) */
    uint64_t updates, update_bytes; /* route updates sent */
    uint64_t stats_reports;         /* the activators' stats reports */
    uint64_t stats_entries;         /* function entries in them */
};
void hub_get_counters(const struct hub *hub, struct hub_counters *ret);

/* Connected activators (on TCP: those that sent the token). */
unsigned hub_activators(const struct hub *hub);

/* True when every connected activator uses a route table of at least `gen`
 * (one without `addr`) and no longer lists `addr` as draining, i.e. no
 * request is in flight to that replica through any activator. */
bool hub_is_drained(const struct hub *hub, const char *addr, uint64_t gen);

/* True for 5 s after the hub starts and after an activator that said hello
 * leaves: requests may be in flight through an activator it does not hear
 * (yet), so hub_is_drained() says nothing of them. on_drain is called when
 * the time is up. */
bool hub_settling(const struct hub *hub);

void hub_close(struct hub *hub, void (*on_closed)(void *data), void *data);

#endif
