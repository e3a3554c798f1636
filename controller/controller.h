/* The controller's state: functions from the specs, their replicas on the
 * backend (backend.h), and what the activators are told. Thread: the loop's. */
#ifndef CONTROLLER_CONTROLLER_H
#define CONTROLLER_CONTROLLER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "backend.h"
#include "stoke/autoscale.h"
#include "stoke/histogram.h"
#include "stoke/list.h"
#include "stoke/spec.h"
#include "stoke/util.h"

struct hub;
struct probe;

/* The backend is listed this often, for what its watch missed, while no
 * watch is open (and pinged this often always); while one is, the list is
 * a fallback for a stream that stays open but misses events, and is rare:
 * a list of a thousand containers costs the engine. A watch that (re)opens
 * lists at once. */
#define CTRL_CHECK_PERIOD_MS 5000
#define CTRL_CHECK_WATCHED_MS 60000

struct ctrl_config {
    const char *functions_dir;
    struct stoke_addr ctl_addr;
    uint64_t tick_ms;
    uint64_t ready_timeout_ms; /* a replica not ready by then is replaced */
};

/* absent -> CREATING -> STARTING -> PROBING -> READY -> RETIRING (drain)
 * -> PAUSING -> PAUSED -> STOPPING -> STOPPED -> removed; a cold request
 * wakes PAUSED (thaw), STOPPED or CREATED (start) back to PROBING. */
enum replica_state {
    R_CREATING, /* create call in flight */
    R_STARTING, /* start (or the backend's thaw) in flight */
    R_PROBING,  /* running, not yet answering */
    R_READY,    /* routed */
    R_RETIRING, /* out of the routes; draining, then removed or sent idle */
    /* The warm tier: idle replicas of the current revision. */
    R_PAUSING,  /* freeze in flight */
    R_PAUSED,   /* frozen: memory kept, no CPU */
    R_STOPPING, /* stop in flight */
    R_STOPPED,  /* exited: no memory, container kept */
    R_CREATED,  /* created, never started (scale.precreated) */
};

struct function;
struct adoption;

/* What usage.c keeps of a replica between samples. */
struct replica_usage {
    uint64_t last_cpu_ns;  /* the backend's CPU counter at the last sample */
    uint64_t limit_bytes;  /* the memory limit it reported, or 0 (the spec's then) */
    uint64_t sampled_ms;   /* the last sample, or 0: none yet (count from created_ms) */
    uint64_t memory_bytes; /* at the last sample */
};

struct replica {
    struct stoke_list node; /* fn->replicas */
    struct function *fn;
    struct backend_replica br; /* id, name, address: the backend's */
    char revision[17];
    enum replica_state state;
    bool op_pending;  /* a backend operation is in flight for it */
    bool retire_asap; /* retire once the call in flight completes */
    struct probe *probe;
    uv_timer_t timer;          /* ready deadline, then drain deadline */
    bool draining;             /* unrouted, waiting for in-flight requests */
    uint64_t unrouted_gen;     /* the route generation without it */
    uint64_t created_ms;       /* created, or last woken */
    uint64_t ready_ms;         /* became ready, or 0 */
    uint64_t settled_ms;       /* its last create, start or thaw finished (a list sent
                                * before may not show it as it is) */
    bool to_idle;              /* retiring into the warm tier, not removed */
    bool precreate;            /* R_CREATING: stays created, is not started */
    bool exited;               /* the backend said it exited while a call was in flight */
    int exit_code;             /* with it */
    bool oom;                  /* the backend said the kernel OOM-killed it */
    uint32_t remove_tries;     /* removals of its container that failed */
    const char *woke_from;     /* how it last left zero: "create", "thaw", "unpause", "start" */
    struct adoption *adoption; /* startup: the adoption waiting for its inspect */
    struct replica_usage usage;
    /* containerConcurrency divided among activator processes (routes.h):
     * the slots each was last given. A share is lowered at once; a raise
     * waits until every activator has taken the table of the last lowering
     * (`lowered_gen`) and none has more requests in flight on the replica
     * than its share (hub_is_drained()), so the replica never sees more. */
    struct replica_grant *grants;
    unsigned n_grants;
    uint64_t lowered_gen;
    bool raise_waiting; /* some activator has fewer slots than its share */
};

struct replica_grant {
    char process[64]; /* HUB_PROCESS_MAX */
    uint32_t slots;
};

struct ctrl;

/* What the activators reported of a function (ctrl_on_stats). */
struct fn_traffic {
    uint64_t requests;  /* all activators, since the controller started: a counter */
    double rps;         /* requests per second, the last reported second */
    double concurrency; /* average in flight + queued, the last reported second */
    uint64_t second;    /* the second being summed (reports of every activator) */
    uint64_t second_requests;
    double second_concurrency;
};

/* Resource use of a function's replicas, read through the backend (from
 * their cgroups on Docker; usage.c, every tick). Counters include replicas
 * since removed. */
struct fn_usage {
    double cpu_seconds;    /* CPU time of all its replicas: a counter */
    uint64_t memory_bytes; /* memory in use now, all replicas */
    double gb_seconds;     /* memory limit (GiB) x seconds running, not paused
                              or stopped: a counter, what serverless bills */
};

struct function {
    struct stoke_list node; /* ctrl->functions */
    struct ctrl *ctrl;
    struct stoke_spec spec;
    char revision[17];
    struct stoke_list replicas;
    struct stoke_metric_window metrics; /* per-second concurrency, all activators */
    struct stoke_autoscaler as;
    uint32_t desired; /* the autoscaler's last decision */
    bool panic;
    uint64_t poked_ms; /* last poke */
    /* Queue-trigger backlog as stoke-events reported it (ctrl_on_backlog):
     * messages waiting, at target per replica, when (uv_now()), and the
     * backlog's scale-to-zero clock (stoke_autoscale_backlog()). */
    uint64_t backlog;
    uint32_t backlog_target;
    uint64_t backlog_at_ms, backlog_last_ms;
    uint32_t failures;    /* replicas that failed in a row */
    uint64_t retry_at_ms; /* no new replica before this (backoff) */
    uint64_t backoff_ms;  /* the current back-off; 0 when not failing */
    char last_error[256];
    char last_failure[256];    /* last_error's last value, kept once a replica is ready again */
    uint64_t replica_failures; /* replicas that failed, since the controller started */
    uint64_t oom_kills;        /* of them, killed by the kernel's OOM killer */
    uint64_t cold_starts;
    uint64_t wakes[4]; /* cold starts by tier: paused, stopped, created, new */
    bool deleted;      /* spec gone: scale to zero, then free */
    uint32_t closing;  /* replicas off the list whose handles still close */
    struct fn_traffic traffic;
    struct fn_usage usage;
    /* The cold start in progress: since when (0: none) and from which tier;
     * its duration goes to cold_start_hist[tier] once a replica is ready. */
    uint64_t cold_since_ms;
    int cold_tier;
    struct stoke_histogram cold_start_hist[4];
};

/* After it starts, a controller raises no activator's share for this long:
 * longer than the activators' reconnect backoff (2 s), so every activator
 * still running has said hello, with the slots it has, by then. */
#define CTRL_SHARES_SETTLE_MS 3000

struct ctrl {
    uv_loop_t *loop;
    struct ctrl_config cfg;
    struct backend *be;
    struct hub *hub;
    struct stoke_list functions;
    uint64_t route_gen;
    /* Until then no activator's share of a replica's slots is raised: the
     * activators a restarted controller has not heard from yet may still
     * use the shares they had (see replica_grant()). */
    uint64_t shares_settle_ms; /* start + CTRL_SHARES_SETTLE_MS */
    uv_timer_t tick;
    uint64_t last_check_ms; /* the last list's */
    uint64_t last_ping_ms;
    bool checking;          /* a list for ctrl_check_replicas() is in flight */
    bool check_again;       /* asked for while one was: a list once it is back */
    uv_timer_t watch_timer; /* reopens the backend's watch */
    uint32_t watch_failures;
    uint64_t watch_since_ms; /* the stream (re)opened */
    bool watching;
    bool stopping;
    /* Some replica may be draining / waiting for a raise of its shares:
     * set with the replica's flag, cleared by a scan that finds none, so
     * that the scans of ctrl_on_drain() and ctrl_push_settled_raises()
     * cost nothing per report and tick while there is nothing to find
     * (they walk every replica of every function). */
    bool any_draining;
    bool any_raise_waiting;
    bool adopting;           /* until adoption is over: no table, nothing started */
    uint64_t watch_reopens;  /* the backend's watch ended and was reopened */
    uint64_t strays_removed; /* listed replicas no replica tracked, removed */
    /* The backend's health for /healthz: pinged every CTRL_CHECK_PERIOD_MS. */
    bool pinging;
    int backend_err;         /* the last ping's result: 0 or a negative errno */
    char backend_error[128]; /* its message */
    void (*on_stopped)(struct ctrl *c);
    /* Shutdown leaves the replicas running for the next controller to
     * adopt (Kubernetes: a restart or a new leader) instead of removing
     * them. */
    bool keep_on_stop;
    /* Shutdown's progress: replicas with a container when it began, those
     * removed since, and whether it stopped waiting (ctrl_shutdown_now()). */
    unsigned shutdown_total, shutdown_removed;
    bool shutdown_cut;
    struct kubefn *kubefn; /* the Kubernetes backend's specs, or NULL */
};

/* reconcile.c */
struct function *ctrl_function_find(struct ctrl *c, const char *name);
/* Adds or updates a function from a valid spec (copied). Returns 0 or
 * -ENOMEM (nothing changed). A changed revision replaces its replicas. */
int ctrl_function_apply(struct ctrl *c, const struct stoke_spec *spec);
/* Scales the function to zero and forgets it once its replicas are gone. */
void ctrl_function_delete(struct ctrl *c, const char *name);
/* Brings the function's replicas toward what it should have now. */
void ctrl_reconcile(struct function *fn);
void ctrl_reconcile_all(struct ctrl *c);
void ctrl_on_poke(struct ctrl *c, const char *fn);
/* A report of the queue-trigger backlog of `fn` (stoke-events). */
void ctrl_on_backlog(struct ctrl *c, const char *fn, uint64_t backlog, uint32_t target);
/* The backlog of `fn` the autoscaler uses now: 0 once reports stopped
 * (CTRL_BACKLOG_TTL_MS). */
uint64_t ctrl_backlog(const struct function *fn);
#define CTRL_BACKLOG_TTL_MS 5000
/* A report of the average concurrency of `fn` over one second. */
void ctrl_on_stats(struct ctrl *c, const char *fn, uint64_t second, double concurrency,
                   uint64_t requests);
/* An activator's report for `second` ended: the functions it did not list
 * had no traffic through it (zero for each). */
void ctrl_on_stats_done(struct ctrl *c, uint64_t second);
/* Runs the autoscaler of every function (each tick). */
void ctrl_autoscale_all(struct ctrl *c);
/* An activator's drain state changed: removes replicas no longer in use. */
void ctrl_on_drain(struct ctrl *c);
/* Sends every activator its whole route table (activators came or went,
 * or adoption ended). */
void ctrl_push_routes(struct ctrl *c);
/* Sends every activator an update of `fn` alone (its entry, or its
 * removal once deleted): any change of one function. */
void ctrl_push_function(struct function *fn);
/* Sends the activators that asked (hub: "resync") their whole table at the
 * current gen, with the slots last dealt. */
void ctrl_resync_routes(struct ctrl *c);

/* Pushes the tables again when an activator's share of a replica's slots
 * waits to be raised and may be now (on each activator drain message and
 * each tick). */
void ctrl_push_settled_raises(struct ctrl *c);
/* Compares our replicas with the backend's list; replaces the gone. */
void ctrl_check_replicas(struct ctrl *c);
/* At startup: lists this instance's replicas, calls `load` (which applies
 * the specs; no replica is started meanwhile), adopts each running
 * replica of a function's current revision as a ready replica, removes
 * the others, and calls `done` when that is over (err < 0: the backend could
 * not list, or `load` failed). */
int ctrl_adopt(struct ctrl *c, int (*load)(struct ctrl *c), void (*done)(struct ctrl *c, int err));
/* Retires every replica (for shutdown); cb when the last is removed.
 * Frozen replicas are thawed first. */
void ctrl_shutdown(struct ctrl *c, void (*cb)(struct ctrl *c));
/* After ctrl_shutdown(): stops waiting for the removals not yet sent (a
 * second signal, the shutdown deadline); those in flight and the wakes of
 * paused replicas go on, so that no replica is left frozen. The rest are
 * left for the next controller (it adopts or removes them). */
void ctrl_shutdown_now(struct ctrl *c);
/* A change the backend's watch saw of one of this instance's replicas. */
void ctrl_on_event(struct ctrl *c, const struct backend_event *ev);
/* What `idle` does for the function on this backend (its spec's, unless the
 * backend lacks what it needs); *ret_why says why when it differs. */
enum stoke_idle ctrl_idle_effective(const struct ctrl *c, const struct function *fn,
                                    const char **ret_why);

/* metrics.c: "creating", "ready"... as the admin API and metrics name them. */
const char *ctrl_replica_state_name(enum replica_state s);
/* metrics.c: the controller's metrics, Prometheus text format 0.0.4,
 * appended to `out`. Returns 0 or -ENOMEM. */
int ctrl_metrics_render(struct ctrl *c, struct stoke_buf *out);

/* usage.c: per-function CPU, memory and GB-seconds from what the backend
 * reads of the replicas (BACKEND_HAS_CGROUPS; without it CPU and memory
 * are not measured, GB-seconds use the specs' limits); usage_sample_all() runs
 * each tick; usage_sample() samples one replica now, and runs before each
 * change of a replica's state that matters to its usage (pausing, waking,
 * stopping, removing), so the time before the change counts as what it
 * was and the CPU used since the last tick is not lost with its cgroup. */
void usage_sample_all(struct ctrl *c);
void usage_sample(struct replica *r);
/* Whether a replica in this state runs (uses CPU and bills GB-seconds). */
bool usage_is_running(enum replica_state s);
/* NULL when the backend measures CPU and memory, else what to show in their
 * place (status, describe, metrics' help), naming the backend. Borrowed,
 * valid until the next call. */
const char *usage_not_measured(const struct ctrl *c);

/* events.c: the backend's watch, reopened with back-off. */
void ctrl_watch_init(struct ctrl *c);
void ctrl_watch_start(struct ctrl *c);
void ctrl_watch_close(struct ctrl *c);

/* fnset.c: the functions directory. */
struct fnset;
int fnset_new(struct ctrl *c, const char *dir, struct fnset **ret);
/* Reads the directory again now: new, changed and removed files apply;
 * a bad file is reported and changes nothing. */
void fnset_rescan(struct fnset *fs);
void fnset_close(struct fnset *fs);

#endif
