/* The activator's metrics: counters each worker updates without locks, and
 * the Prometheus text (exposition format 0.0.4) the ops server renders from
 * the sum over all workers.
 *
 * Threads. Each worker owns one struct metrics_worker and is the only
 * thread that writes it; the ops server (on the main thread) only reads.
 * Every value a reader sees is a C11 atomic, written by its single writer
 * with a relaxed load and store (no read-modify-write: on x86 both are
 * plain moves, so the data path pays no locked instruction and never
 * waits for the ops thread). Per-function entries are allocated by the
 * worker when a function first appears in its route table and are never
 * freed while the process runs: they are pushed onto an append-only list
 * whose head is published with a release store, so a reader that loads it
 * with acquire sees each entry's immutable part (name, next) complete, and
 * no entry can disappear under a reader. This beats a per-worker mutex
 * (a worker would wait on a scrape) and periodic snapshots (gauges lagging,
 * a copy per worker per tick). The cost: a function that leaves the route
 * table keeps its entry, counters kept (cumulative, as Prometheus expects)
 * and gauges back to 0. Functions come only from the route table, never
 * from client bytes, so the entries are bounded by the functions an
 * operator deployed. A scrape reads each value exactly but is not one
 * atomic snapshot across values (a histogram's _sum may lag its buckets by
 * a request in progress); its _count is the sum of its buckets, so the two
 * always agree.
 *
 * The metrics_* functions called by workers accept NULL (metrics off, or
 * an entry that could not be allocated) and then do nothing. */
#ifndef ACTIVATOR_METRICS_H
#define ACTIVATOR_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "stoke/spec.h"
#include "stoke/util.h"

/* Why the activator answered a request itself, or dropped a connection
 * without an answer: the `reason` label of stoke_activator_rejected_total. */
enum metrics_reason {
    METRICS_BAD_REQUEST,        /* 400 */
    METRICS_NO_FUNCTION,        /* 404: unknown function, or it left while queued */
    METRICS_BODY_TOO_LARGE,     /* 413 */
    METRICS_URI_TOO_LONG,       /* 414 */
    METRICS_EXPECTATION_FAILED, /* 417 */
    METRICS_HEADER_TOO_LARGE,   /* 431 */
    METRICS_NOT_IMPLEMENTED,    /* 501: CONNECT, Upgrade */
    METRICS_UPSTREAM_ERROR,     /* 502 */
    METRICS_QUEUE_FULL,         /* 503 */
    METRICS_NO_ROUTES,          /* 503: no route table from the controller yet */
    METRICS_QUEUE_TIMEOUT,      /* 504 while queued */
    METRICS_DEADLINE,           /* 504 past the function's timeout */
    METRICS_CONNECTIONS_LIMIT,  /* closed at accept: --max-connections */
    METRICS_CLIENT_TIMEOUT,     /* closed: a request head or body too slow */
    METRICS_OTHER,              /* any other status the activator sends */
    METRICS_REASONS
};

/* Distinct status codes counted per function and worker; more go to
 * code="other". */
#define METRICS_CODES 16
/* Finite histogram upper bounds, 1 ms to 60 s (see metrics.c). */
#define METRICS_BUCKETS 15

/* A function's gauges, each summed over the workers. */
enum metrics_gauge {
    METRICS_IN_FLIGHT, /* requests sent to a replica, not finished */
    METRICS_QUEUED,    /* requests waiting in the function's queue */
    METRICS_UPSTREAMS, /* open (or opening) connections to its replicas */
    METRICS_GAUGES
};

struct metrics_fn {
    struct metrics_fn *next; /* immutable once published */
    char name[STOKE_NAME_MAX + 1];
    _Atomic uint32_t code[METRICS_CODES]; /* 0: free slot */
    _Atomic uint64_t count[METRICS_CODES];
    _Atomic uint64_t other_codes;
    _Atomic uint64_t bucket[METRICS_BUCKETS + 1]; /* per bucket (not cumulative); last: +Inf */
    _Atomic uint64_t sum_us;
    _Atomic uint64_t gauge[METRICS_GAUGES];
};

/* The route messages a worker's channel applied, by kind (the `kind`
 * label): whole tables, and updates of the functions that changed. */
enum metrics_route_kind { METRICS_ROUTE_TABLE, METRICS_ROUTE_UPDATE, METRICS_ROUTE_KINDS };

struct metrics_worker {
    _Atomic uint64_t beat_ms; /* uv_hrtime() in ms at the last heartbeat */
    _Atomic uint64_t route_msgs[METRICS_ROUTE_KINDS];
    _Atomic uint64_t route_entries[METRICS_ROUTE_KINDS]; /* function entries in them */
    _Atomic uint64_t route_bytes[METRICS_ROUTE_KINDS];
    _Atomic uint64_t route_apply_ns[METRICS_ROUTE_KINDS]; /* parse and apply */
    _Atomic uint64_t route_resyncs;                       /* tables asked for after a gap */
    _Atomic uint64_t route_functions;                     /* in its table now */
    _Atomic uint64_t connections;
    _Atomic uint64_t rejected[METRICS_REASONS];
    _Atomic(struct metrics_fn *) fns; /* append-only; see above */
};

struct metrics;

/* Returns the metrics of `n_workers` workers, all zero, or NULL (OOM).
 * Thread: any, before the workers start. */
struct metrics *metrics_new(unsigned n_workers);

/* Frees everything, NULL accepted. Thread: any, once no worker and no
 * reader uses it any more. */
void metrics_free(struct metrics *m);

/* Worker i's counters (i < n_workers), borrowed for the life of `m`. */
struct metrics_worker *metrics_worker(struct metrics *m, unsigned i);

/* The entry of function `name` in `mw`, created (zeroed) on first use;
 * borrowed for the life of the metrics. NULL when mw is NULL or on OOM (the
 * function is then not measured). Thread: mw's worker. */
struct metrics_fn *metrics_fn_get(struct metrics_worker *mw, const char *name);

/* Adds `delta` to a value only the calling thread writes. */
static inline void metrics_add(_Atomic uint64_t *v, int64_t delta)
{
    uint64_t old = atomic_load_explicit(v, memory_order_relaxed);
    atomic_store_explicit(v, old + (uint64_t)delta, memory_order_relaxed);
}

/* Heartbeat: the worker's loop is alive at `now_ms` (uv_hrtime() / 1e6). */
static inline void metrics_beat(struct metrics_worker *mw, uint64_t now_ms)
{
    if (mw)
        atomic_store_explicit(&mw->beat_ms, now_ms, memory_order_relaxed);
}

static inline void metrics_connections(struct metrics_worker *mw, int delta)
{
    if (mw)
        metrics_add(&mw->connections, delta);
}

static inline void metrics_gauge(struct metrics_fn *f, enum metrics_gauge g, int delta)
{
    if (f)
        metrics_add(&f->gauge[g], delta);
}

/* The reason of an error answer with `status`; `queued`: the request was
 * waiting in its function's queue (a 504 there is the queue timeout). */
enum metrics_reason metrics_reason_of(int status, bool queued);

static inline void metrics_rejected(struct metrics_worker *mw, enum metrics_reason reason)
{
    if (mw)
        metrics_add(&mw->rejected[reason], 1);
}

/* Counts an error answer with `status` (see metrics_reason_of()). */
static inline void metrics_error(struct metrics_worker *mw, int status, bool queued)
{
    metrics_rejected(mw, metrics_reason_of(status, queued));
}

/* Ends the measurement of a request routed to a function: when *mf is set,
 * counts the request under `status` (0: the client got no status line,
 * counted as 499, nginx's "client closed request") with the time since
 * `start_ns` (uv_hrtime()), then clears *mf so a request is counted once. */
void metrics_request_end(struct metrics_fn **mf, int status, uint64_t start_ns);

/* Appends the Prometheus text of all workers' counters, summed, to `out`.
 * Returns 0, or -ENOBUFS / -ENOMEM (out then holds part of the text).
 * Thread: any. */
int metrics_format(struct metrics *m, struct stoke_buf *out);

/* Checks every worker's heartbeat against `now_ms`. Returns 0 when each
 * beat within `stale_ms`, else the number of stale workers, with the first
 * one's index and silence in *ret_worker and *ret_age_ms. Thread: any. */
int metrics_check_health(struct metrics *m, uint64_t now_ms, uint64_t stale_ms,
                         unsigned *ret_worker, uint64_t *ret_age_ms);

#endif
