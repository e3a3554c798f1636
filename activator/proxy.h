/* The activator's data path: an HTTP/1.1 reverse proxy on one libuv loop.
 *
 * Clients send requests; each is routed to a function (stoke/routes.h) as
 * soon as its head is read, then either sent to the ready replica with the
 * fewest requests in flight or, when the function has none with room, held
 * in the function's bounded queue until one is ready (the controller is
 * poked at once). A request body up to 256 KiB is read whole before the
 * replica sees any of it; a longer one streams on as it arrives. Bodies
 * and responses flow with backpressure both ways, so memory per request is
 * bounded whatever their size. An Upgrade answered with 101 becomes a
 * two-way tunnel. Thread: the loop's. */
#ifndef ACTIVATOR_PROXY_H
#define ACTIVATOR_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "stoke/routes.h"
#include "stoke/util.h"

#define PROXY_MAX_TRUSTED 32

struct proxy_config {
    struct stoke_addr listen;
    const char *domain;          /* Host routing: <name>.<domain>; borrowed */
    size_t max_header_bytes;     /* request line + headers; over: 431 */
    size_t max_body_bytes;       /* over: 413; 0: no limit */
    uint64_t header_timeout_ms;  /* from the first byte to the end of the head */
    uint64_t idle_timeout_ms;    /* keep-alive wait for the next request */
    uint64_t connect_timeout_ms; /* upstream connect */
    uint32_t max_connections;    /* client connections; over: closed at accept (the
                                    process's cap, in struct limits, when shared) */
    uint32_t max_idle_upstream;  /* idle pooled connections per replica */
    bool reuse_port;             /* SO_REUSEPORT: several workers share the port */
    bool access_log;             /* a log line per request (info level) */
    bool await_routes;           /* routes come from the controller: until the first
                                    table, a request gets 503 (not 404: the function
                                    may well exist) */
    /* Peers whose forwarding headers (X-Forwarded-For, Forwarded,
     * X-Real-IP) are passed on; from anyone else they are replaced or
     * dropped. */
    struct proxy_cidr {
        int family;          /* AF_INET or AF_INET6 */
        unsigned char a[16]; /* the network, host bits zero */
        unsigned bits;
    } trusted[PROXY_MAX_TRUSTED];
    size_t n_trusted;
    /* Async invocations (README "Async invocations"): stoke-events' ingest
     * address (IP:port), where requests with "Prefer: respond-async" or
     * under /async-function/<name>/, and /_stoke/calls/, go. has_events
     * false: they get 501. With events_host set (a DNS name, such as a
     * Service's), `events` is its address, resolved every
     * PROXY_EVENTS_RESOLVE_MS on the loop's thread pool (until the first
     * answer, async calls wait in the queue). */
    struct stoke_addr events;
    bool has_events;
    char events_host[254];
    char events_port[6];
    /* Sent to stoke-events with every async call (X-Stoke-Events-Token),
     * which refuses a call without it; borrowed. */
    const char *events_token;
};

/* Adds the comma-separated "IP[/bits]" networks of `list` to
 * cfg->trusted. Returns 0 or -EINVAL (a bad entry, or more than
 * PROXY_MAX_TRUSTED in all). */
int proxy_parse_trusted(const char *list, struct proxy_config *cfg);

#define PROXY_EVENTS_RESOLVE_MS 5000

void proxy_config_defaults(struct proxy_config *cfg);

/* Called when a request waits for a function with no ready replica (at most
 * every 100 ms per function), so the controller starts one now. */
typedef void (*proxy_poke_cb)(const char *fn, void *data);

/* Called when a replica that left the route table has no request in flight
 * any more (see proxy_draining()). */
typedef void (*proxy_drained_cb)(void *data);

struct metrics_worker;
struct limits;

struct proxy_hooks {
    proxy_poke_cb on_poke;
    proxy_drained_cb on_drained;
    void *data;
    struct metrics_worker *metrics; /* this loop's counters (metrics.h), or NULL */
    /* The limits the process's workers share (shared.h), with this proxy's
     * worker number; NULL: the proxy keeps its own (one worker). */
    struct limits *limits;
    unsigned worker;
};

/* Called by proxy_stats() once per function. */
typedef void (*proxy_stat_cb)(const char *fn, double concurrency, uint64_t requests, void *data);

struct proxy;

/* Binds and listens. Returns 0 and *ret, or a negative errno (nothing left
 * open). `cfg` is copied; `cfg->domain` is borrowed for the proxy's life. */
int proxy_new(uv_loop_t *loop, const struct proxy_config *cfg, const struct proxy_hooks *hooks,
              struct proxy **ret);

/* Replaces the route table; takes ownership of `t`'s contents (t is zeroed).
 * Replicas that left stop getting new requests (in-flight ones finish);
 * queued requests are sent on to replicas that arrived. */
void proxy_set_routes(struct proxy *px, struct stoke_route_table *t);

/* Applies an update (stoke/routes.h) to the table in use: each entry
 * replaces its function's (or adds it), removed functions leave as from a
 * table; in time independent of the number of functions routed. Takes
 * ownership of `u`'s contents (u is zeroed). The caller checked its gen. */
void proxy_update_routes(struct proxy *px, struct stoke_route_update *u);

/* The number of functions routed. */
size_t proxy_functions(const struct proxy *px);

/* This worker's counters (hooks.metrics), or NULL. */
struct metrics_worker *proxy_metrics(const struct proxy *px);

/* Reports, per function with traffic since the previous call (requests,
 * or some in flight or queued), the time-weighted average of requests in
 * flight plus queued since the previous call, and the requests received. */
void proxy_stats(struct proxy *px, proxy_stat_cb cb, void *data);

/* The generation of the route table in use (0 before the first). */
uint64_t proxy_routes_gen(const struct proxy *px);

/* Calls `cb` with the address ("127.0.0.1:30001") of each replica that left
 * the route table while requests were in flight on it, until they finish
 * (the controller stops a replica only once no activator lists it), and of
 * each replica with more requests in flight through this process than its
 * lowered share (the controller raises another activator's share only once
 * none lists it). */
void proxy_draining(struct proxy *px, void (*cb)(const char *addr, void *data), void *data);

/* Calls `cb` with each replica this activator has a share of slots on, as
 * the controller divided them (the channel tells a restarted controller). */
typedef void (*proxy_slots_cb)(const char *fn, const char *addr, uint32_t slots, void *data);
void proxy_slots(struct proxy *px, proxy_slots_cb cb, void *data);

/* Calls `cb` for each function that has requests waiting in its queue (the
 * channel re-pokes them after reconnecting to the controller). */
void proxy_waiting(struct proxy *px, proxy_poke_cb cb, void *data);

/* Serves an already connected stream socket (a socketpair end in tests and
 * the fuzz target) as a client connection; on success the proxy owns `fd`.
 * Returns 0 or a negative errno. */
int proxy_serve_fd(struct proxy *px, uv_os_sock_t fd);

/* Whether some client connection has work in progress that does not wait
 * on its client (a request queued or in flight, an answer not yet written).
 * For tests and the fuzz target. */
bool proxy_busy(const struct proxy *px);

/* Stops listening, closes every connection and frees the proxy once all
 * handles have closed; then calls on_closed (may be NULL). */
void proxy_close(struct proxy *px, void (*on_closed)(void *data), void *data);

#endif
