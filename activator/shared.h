/* Limits shared by the activator's workers: one `struct limits` per process.
 *
 * Every worker thread runs its own proxy (its own loop, clients, upstream
 * pools, route table and controller channel), but a function's limits are
 * the process's: a replica's concurrency share (containerConcurrency, or
 * the part of it the controller gave this activator), the function's queue
 * bound (queue.max, or this activator's part of it) and --max-connections
 * are counted here, once for all workers.
 *
 * - Counters are C11 atomics on their own cache lines. Taking a replica
 *   slot is a compare-and-swap bounded by the slot limit, taking a queue
 *   place a compare-and-swap bounded by the queue limit, a connection a
 *   fetch-and-add checked against the cap. No lock is taken per request.
 * - A worker's queued request may wait for a slot that another worker's
 *   request frees: each function keeps a bitmask of the workers with
 *   requests in its queue, and a worker that frees a slot of a function
 *   with waiters elsewhere wakes those workers (uv_async_send, which
 *   libuv coalesces). The waker frees the slot, then reads the mask; a
 *   worker that starts waiting sets its bit, then tries for a slot again:
 *   with sequentially consistent atomics one of the two sees the other, so
 *   no wake-up is lost.
 * - Shared state is found by name: a function by its name, a replica by
 *   its function and address. Each worker's route table (from its own
 *   channel, or the --route flags) holds references to the shared state of
 *   the functions and replicas it lists, so the workers count the same
 *   replica in the same place even while their tables differ for a moment
 *   (a table reaches each worker's channel on its own). Each worker sets
 *   the limits its own table gives, and the lowest of them holds: while
 *   the workers' tables differ for a moment (a share lowered or raised),
 *   the process never goes past the old limit or the new one.
 * - Lifetimes: the registry (a mutex, taken only when a worker's table
 *   adds or drops a function or replica, never per request) hands out
 *   references; shared state is freed when its last reference goes.
 *
 * Thread: any, unless a function says otherwise. */
#ifndef ACTIVATOR_SHARED_H
#define ACTIVATOR_SHARED_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#define LIMITS_MAX_WORKERS 256

struct limits;
struct lim_fn;
struct lim_ep;

/* One process's limits for `n_workers` workers (at most LIMITS_MAX_WORKERS)
 * and at most `max_connections` client connections over all of them.
 * Returns 0 and *ret or -ENOMEM / -EINVAL. */
int limits_new(unsigned n_workers, uint32_t max_connections, struct limits **ret);

/* Frees it; every reference and wake handle must be gone. */
void limits_free(struct limits *l);

/* Worker `w`'s wake handle (uv_async_t of its loop): sent when a slot frees
 * for a function it has waiters for. NULL unregisters it, waiting for any
 * send in progress to end, so the caller may close the handle after. */
void limits_set_wake(struct limits *l, unsigned w, uv_async_t *wake);

/* Takes a connection place; false at the cap (nothing taken). */
bool limits_conn_take(struct limits *l);
void limits_conn_put(struct limits *l);

/* The function named `name` (created on first use) with a new reference
 * for worker `w` (one per worker at most), or NULL on OOM. */
struct lim_fn *limits_fn_get(struct limits *l, unsigned w, const char *name);
void limits_fn_put(struct lim_fn *f, unsigned w);

/* Worker `w`'s table bounds the function's queue at `queue_max`: the
 * lowest bound of the workers that hold the function holds. */
void limits_fn_configure(struct lim_fn *f, unsigned w, uint32_t queue_max);

/* The replica at `addr` ("127.0.0.1:30001") of the function, created on
 * first use, with a new reference for worker `w`; NULL on OOM. */
struct lim_ep *limits_ep_get(struct lim_fn *f, unsigned w, const char *addr);
void limits_ep_put(struct lim_ep *e, unsigned w);

/* Worker `w`'s table gives the replica `limit` slots (0: no limit): the
 * lowest limit of the workers that hold the replica holds. */
void limits_ep_configure(struct lim_ep *e, unsigned w, uint32_t limit);

/* ---- the hot path: lock-free ---- */

/* Requests in flight on the replica through this process. */
uint32_t lim_ep_inflight(const struct lim_ep *e);

/* Whether the replica has a free slot now. */
bool lim_ep_has_room(const struct lim_ep *e);

/* Takes a slot: false when none is free (nothing taken). */
bool lim_ep_take(struct lim_ep *e);

/* Frees a slot taken with lim_ep_take(). Then call lim_fn_wake(). Returns
 * true when the replica was over its limit (lowered below the requests in
 * flight) and is no longer: then call limits_drain_changed(). */
bool lim_ep_put(struct lim_ep *e);

/* More requests in flight on the replica than its limit, which was lowered
 * under them: the activator lists it as draining until they finish, and the
 * controller gives those slots to another activator only then. */
bool lim_ep_over(const struct lim_ep *e);

/* Every worker is to tell the controller its draining replicas again (a
 * replica's requests fell to its lowered limit): wakes them all. */
void limits_drain_changed(struct limits *l);

/* Whether worker `w` was asked to (and clears it). */
bool limits_take_drain_changed(struct limits *l, unsigned w);

/* Requests queued for the function in the whole process. */
uint32_t lim_fn_queued(const struct lim_fn *f);

/* Takes a queue place: false when the queue is full (nothing taken). */
bool lim_fn_queue_take(struct lim_fn *f);
void lim_fn_queue_put(struct lim_fn *f);

/* Worker `w` has requests queued for the function (or has none any more).
 * After setting it, the worker must try for a slot once more. */
void lim_fn_set_waiting(struct lim_fn *f, unsigned w, bool waiting);

/* Wakes the workers other than `self` that have requests queued for the
 * function (call after freeing a slot or changing its replicas). */
void lim_fn_wake(struct lim_fn *f, unsigned self);

#endif
