/* The route table the controller pushes to activators, the messages of the
 * controller <-> activator channel, and the pure request router.
 *
 * The channel is one stream connection (unix socket or loopback TCP) that the
 * activator opens to the controller. Each message is one JSON object on one
 * line (at most STOKE_CTL_MAX_LINE bytes), with "op" naming it:
 *   activator -> controller:
 *     {"op":"hello","activator":"<id>","process":"<id of its process>",
 *      "slots":[["<fn>","127.0.0.1:31001",1], ...]}
 *                  (a process's workers each open a channel: the controller
 *                  divides limits per process; no "process": its own;
 *                  "slots": the replicas it has a share of and its share,
 *                  for a controller that restarted)
 *     {"op":"poke","fn":"<name>"}                  a request waits at zero
 *     {"op":"stats","fns":{"<name>":{"concurrency":1.5,"requests":12}}}
 *   controller -> activator:
 *     {"op":"routes","gen":7,"functions":[{"name":..., "timeout_ms":...,
 *       "queue_max":..., "queue_timeout_ms":..., "concurrency_limit":...,
 *       "async":{"retries":2,"backoff_ms":...,"max_age_ms":...,
 *                "max_in_flight":10,"max_body":...},
 *       "endpoints":["127.0.0.1:31001", ...], "shares":[1, ...],
 *       "triggers":[{"name":"orders","address":"127.0.0.1:6379","stream":"orders",
 *                    "group":"stoke-fn","password_file":"/etc/...","start_from":"$",
 *                    "path":"/","target_backlog":10}, ...],
 *       "schedules":[{"name":"nightly","schedule":"0 3 * * *",
 *                     "time_zone":"Europe/Berlin","data":"{}",
 *                     "content_type":"application/json","path":"/",
 *                     "policy":"Forbid","starting_deadline_s":600,
 *                     "suspend":false}, ...]}, ...]}
 *     ("shares", optional, parallel to "endpoints": this activator's
 *     concurrency on each replica; "queue_max" is its share of queue.max;
 *     "triggers" and "schedules", optional, the function's queue triggers and
 *     schedules as in its spec, for stoke-events: activators parse and
 *     ignore them; "time_zone" and "data" are left out when absent)
 *     {"op":"update","gen":8,"functions":[<entries as above>],
 *       "removed":["<name>", ...]}
 *   activator -> controller, again:
 *     {"op":"resync","gen":7}      an update's gen was not the one after the
 *                                  table's it has: it wants the whole table
 * A routes message carries the whole table, made for the process the
 * channel belongs to: on hello, when activators come or go (limits are
 * divided among them), and on a resync. Any other change goes as an update
 * of the functions it touches only (entries replace the function's whole
 * entry; "removed" functions leave), to every process. `gen` grows by one
 * with each message sent to all (a resync's table carries the current gen),
 * so every activator sees every gen: an update whose gen is not its table's
 * plus one means it missed one, and it asks for a resync, ignoring updates
 * until the table comes. */
#ifndef STOKE_ROUTES_H
#define STOKE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stoke/spec.h"
#include "stoke/util.h"

#define STOKE_CTL_MAX_LINE (4 * 1024 * 1024)
#define STOKE_ROUTES_MAX_FUNCTIONS 10000
#define STOKE_ROUTES_MAX_ENDPOINTS 1000

struct stoke_route {
    char name[STOKE_NAME_MAX + 1];
    uint64_t timeout_ms;
    uint32_t queue_max;
    uint64_t queue_timeout_ms;
    uint32_t concurrency_limit;   /* 0 = none */
    struct stoke_async async;     /* "async": {...}; absent: the defaults */
    struct stoke_addr *endpoints; /* owned; ready replicas only */
    /* Owned, parallel to endpoints, or NULL: the requests this activator may
     * have in flight on each replica at once, its share of
     * concurrency_limit when several activators divide it (see
     * controller/shares.h). NULL: concurrency_limit on each. */
    uint32_t *shares;
    size_t n_endpoints;
    struct stoke_trigger *triggers;   /* owned, or NULL; "triggers" (stoke-events') */
    size_t n_triggers;                /* <= STOKE_SPEC_MAX_TRIGGERS */
    struct stoke_schedule *schedules; /* owned, or NULL; "schedules" (stoke-events') */
    size_t n_schedules;               /* <= STOKE_SPEC_MAX_SCHEDULES */
};

/* Deep copy of `n` triggers into *ret (NULL when n is 0). Returns 0 or
 * -ENOMEM (*ret NULL). */
int stoke_route_triggers_dup(const struct stoke_trigger *t, size_t n, struct stoke_trigger **ret);

struct stoke_route_table {
    uint64_t gen;
    struct stoke_route *routes; /* owned, sorted by name */
    size_t n_routes;
};

/* An "update" message: entries for the functions that changed, names of
 * those that left. */
struct stoke_route_update {
    uint64_t gen;
    struct stoke_route *routes; /* owned, in message order, names unique */
    size_t n_routes;
    char (*removed)[STOKE_NAME_MAX + 1]; /* owned */
    size_t n_removed;
};

/* Frees what the table owns and zeroes it. Safe on a zeroed table. */
void stoke_route_table_done(struct stoke_route_table *t);

/* Serialises as one "routes" line (without '\n'). Returns an owned string
 * (free()) or NULL on OOM. */
char *stoke_route_table_format(const struct stoke_route_table *t);

/* Parses a "routes" message (already decoded JSON text). Validates every
 * field (names are DNS labels, endpoints IP literals, counts capped) and
 * sorts by name. Returns 0 and fills `ret` (zeroed on error), or -EINVAL /
 * -ENOMEM. */
int stoke_route_table_parse(const char *json, size_t len, struct stoke_route_table *ret);

/* Serialises an "update" of `n` routes and `n_removed` removed names as one
 * line (without '\n'). Returns an owned string or NULL on OOM. */
char *stoke_route_update_format(uint64_t gen, const struct stoke_route *routes, size_t n,
                                const char *const *removed, size_t n_removed);

/* Parses an "update" message, validated like a table (a name at most once
 * over entries and removals). Returns 0 and fills `ret` (zeroed on error),
 * or -EINVAL / -ENOMEM. */
int stoke_route_update_parse(const char *json, size_t len, struct stoke_route_update *ret);

/* Frees what the update owns and zeroes it. Safe on a zeroed one. */
void stoke_route_update_done(struct stoke_route_update *u);

/* Frees what one route owns (endpoints, shares, triggers, schedules). */
void stoke_route_done(struct stoke_route *r);

/* Several activator processes: how a function's limits are divided so that
 * they hold exactly whatever activator a request comes through (there is no
 * proxy in the replica to enforce them there).
 * - containerConcurrency C, k activators: each replica's C slots are dealt
 *   one at a time to the activators, starting at index
 *   (stoke_share_start(address) mod k) and going round: activator i gets
 *   C/k, plus one when it is among the first C mod k from that start. The
 *   shares of a replica sum to C exactly; a replica with fewer slots than
 *   activators is given to C of them, one slot each, and the others do not
 *   list it (keyed by the replica's address, so a replica keeps its shares
 *   while others come and go).
 * - queue.max Q is dealt the same way, starting at a hash of the name:
 *   the shares sum to Q exactly.
 * - No containerConcurrency: every activator lists every replica; the
 *   queue is still divided.
 * Activators are numbered by their process ids in sorted order. */

/* `total` dealt to `n` parts one at a time from part `start` on: part i's
 * share. The shares sum to `total`. */
uint32_t stoke_share(uint32_t total, unsigned n, unsigned i, unsigned start);

/* Where the deal of a replica's slots starts (before mod k): a hash of its
 * IP plus its port, so that replicas on one IP (consecutive ports) and
 * replicas on one port (pods, each its own IP) both spread over the
 * activators. */
unsigned stoke_share_start(const struct stoke_addr *replica);

/* Fills `out` with `in` as activator `i` of `k` gets it (rules above):
 * its queue share, the replicas it has slots on and its slots on each.
 * With k <= 1, a copy of `in`. Returns 0 or -ENOMEM (out zeroed). */
int stoke_route_share(const struct stoke_route *in, unsigned i, unsigned k,
                      struct stoke_route *out);

/* Binary search by name. Returns a pointer borrowed from `t`, or NULL. */
const struct stoke_route *stoke_route_table_find(const struct stoke_route_table *t,
                                                 const char *name, size_t name_len);

/* The router: picks the function a request is for.
 * - A path "/fn/<name>" or "/fn/<name>/..." wins; the function's path is the
 *   rest, query string kept; the rest may be "" or start with '?', and the
 *   caller then puts "/" in front.
 * - Else a Host of "<name>.<domain>" (port ignored, case-insensitive).
 * On success returns 0 and sets *ret_name and *ret_name_len (borrowed from
 * `host` or `target`) and *ret_path and *ret_path_len (borrowed from `target`).
 * Names are returned as sent: the caller lowercases a Host name before the
 * lookup. Returns -ENOENT when neither matches. Pure. */
int stoke_route_match(const char *host, size_t host_len, const char *target, size_t target_len,
                      const char *domain, const char **ret_name, size_t *ret_name_len,
                      const char **ret_path, size_t *ret_path_len);

#endif
