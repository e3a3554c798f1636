/* The seam between the reconciler and what runs replicas: a table of
 * asynchronous replica operations and a capability set, chosen once at
 * startup (backend_docker.c: the Docker engine; a Kubernetes backend fits
 * the same table). The reconciler (lifecycle, drain, rollout, back-off,
 * adoption, autoscaling) knows no backend: it calls these operations, asks
 * the capabilities ("can it freeze?") instead of which backend it has, and
 * reads stoke's own structs here, never an engine's JSON.
 *
 * Callback rules, as for the engine client (stoke/engine.h): an operation
 * either returns a negative errno and never calls its callback, or returns
 * 0 and calls it exactly once, later, from the loop (never from inside the
 * call). backend_thaw may also return 1: done at once, no callback. A
 * replica has at most one operation in flight (the reconciler's
 * op_pending); the backend's callbacks may start the next one. Results are
 * borrowed for the callback. Thread: the loop's.
 *
 * Errors the reconciler reads: -ENOENT the replica is gone; -ESRCH it is
 * not running (freeze); -ENOTSUP the backend cannot do that; -ECANCELED
 * the backend is closing; others are failures to retry or report. */
#ifndef CONTROLLER_BACKEND_H
#define CONTROLLER_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "stoke/spec.h"
#include "stoke/util.h"

/* What a backend can do; the reconciler degrades without it. */
enum backend_cap {
    /* freeze/thaw: an idle replica keeps its memory, uses no CPU, and wakes
     * in about a millisecond. Without it `idle: pause` acts as `stop`. */
    BACKEND_CAN_FREEZE = 1u << 0,
    /* stop/start: an idle replica is kept stopped and started again.
     * Without it `idle: pause|stop` act as `remove`. */
    BACKEND_CAN_STOP_KEEP = 1u << 1,
    /* create without start (scale.precreated). Without it no replica is
     * pre-created. */
    BACKEND_CAN_PRECREATE = 1u << 2,
    /* backend_usage() reads each replica's CPU and memory (cgroups). */
    BACKEND_HAS_CGROUPS = 1u << 3,
    /* list() names every replica of this controller (its instance), each
     * with the address it was created for: one no replica tracks (its
     * create was done, its answer lost) is removed by the periodic check. */
    BACKEND_LISTS_OWN = 1u << 4,
};

/* A replica as its backend knows it; the reconciler embeds one in each of
 * its replicas and passes it to every operation on it. The reconciler sets
 * `function` before create/adopt and clears `id` when the replica is gone;
 * the backend fills the rest. */
struct backend_replica {
    char function[STOKE_NAME_MAX + 1];
    char id[65];   /* the backend's id (container id, pod name); "" until created */
    char name[96]; /* for people and logs (container or pod name) */
    char addr[64]; /* "host:port" the prober and activators use; "" until known
                      (a pod's IP comes with a later status: BACKEND_EV_ADDRESS) */
    void *priv;    /* the backend's own; freed by backend_forget() */
};

/* How the backend sees a replica (lists, inspect). */
enum backend_state {
    BACKEND_RUNNING,
    BACKEND_FROZEN,  /* running but frozen by us (inspect only) */
    BACKEND_PAUSED,  /* paused by the engine */
    BACKEND_STOPPED, /* exited, kept */
    BACKEND_CREATED, /* created, never started */
    BACKEND_OTHER,   /* starting, failing, being removed... */
};

struct backend_result {
    int err;                  /* 0 or a negative errno */
    const char *message;      /* the backend's words for err; "" on success */
    const char *how;          /* freeze: "cgroup frozen", "through the engine"... */
    enum backend_state state; /* inspect */
};

typedef void (*backend_cb)(const struct backend_result *res, void *data);

/* One replica of this controller instance, from backend_list(). Strings
 * are borrowed for the callback; `addr` may be "" (not known yet). */
struct backend_listed {
    const char *id;
    const char *function; /* NULL when unlabelled */
    const char *revision;
    const char *addr;
    enum backend_state state;
};

typedef void (*backend_list_cb)(const struct backend_result *res,
                                const struct backend_listed *items, size_t n, void *data);

enum backend_event_kind {
    BACKEND_EV_EXITED,  /* its process ended; exit_code */
    BACKEND_EV_OOM,     /* the kernel's OOM killer hit it (an EXITED follows) */
    BACKEND_EV_GONE,    /* removed, by us or by someone else */
    BACKEND_EV_ADDRESS, /* its address became known or changed: addr */
    BACKEND_EV_OTHER,   /* anything else (logged at debug level) */
};

/* One change the backend's watch saw, borrowed for the callback. */
struct backend_event {
    enum backend_event_kind kind;
    const char *id;
    const char *what; /* the backend's own name of it ("die", "oom"...) */
    int exit_code;    /* EXITED: the exit status, or -1 */
    const char *addr; /* ADDRESS */
};

typedef void (*backend_event_cb)(const struct backend_event *ev, void *data);

/* What the reconciler knows of a replica's process, for backend_usage(). */
enum backend_run {
    BACKEND_RUN_NO,     /* created, stopped, or not yet created */
    BACKEND_RUN_MAYBE,  /* starting or stopping */
    BACKEND_RUN_SURELY, /* probing, ready, draining, frozen: not found is worth a warning */
};

struct backend_usage {
    uint64_t cpu_ns;    /* the replica's CPU counter */
    bool cpu_restarted; /* the counter began again (a new run): all of it is new */
    uint64_t memory_bytes;
    uint64_t limit_bytes; /* its memory limit, or 0 (the spec's then) */
};

struct backend_logs_opts {
    bool follow;       /* keep streaming until the replica stops */
    bool timestamps;   /* RFC 3339 time and a space before each line */
    int64_t tail;      /* the last `tail` lines; < 0: all */
    uint64_t since_ms; /* Unix ms; 0: all */
};

struct backend_logs;

/* stream 1 stdout, 2 stderr; bytes borrowed for the call. */
typedef void (*backend_log_cb)(int stream, const char *bytes, size_t len, void *data);

struct backend;

struct backend_ops {
    /* Health: 0 when the backend answers. */
    int (*ping)(struct backend *b, backend_cb cb, void *data);

    /* A new replica of `spec` at `revision`, labelled with the function,
     * the revision and the controller instance. Fills r->name and, when it
     * is known at once, r->addr before returning; r->id when the callback
     * reports success. The reconciler calls start next, unless it
     * pre-creates (BACKEND_CAN_PRECREATE): a backend whose create also
     * starts the replica (a pod) completes start once it runs. */
    int (*create)(struct backend *b, struct backend_replica *r, const struct stoke_spec *spec,
                  const char *revision, backend_cb cb, void *data);
    /* Starts a created or stopped replica: success once its process runs
     * (the reconciler then probes r->addr, or waits for BACKEND_EV_ADDRESS
     * while it is ""). */
    int (*start)(struct backend *b, struct backend_replica *r, backend_cb cb, void *data);
    /* Freezes a running replica (BACKEND_CAN_FREEZE); res->how says how.
     * -ESRCH when it is not running. */
    int (*freeze)(struct backend *b, struct backend_replica *r, backend_cb cb, void *data);
    /* Wakes a frozen replica: 1 when it is running again now (no callback),
     * 0 when the callback will say. *ret_how names the way ("thaw",
     * "unpause") in both cases. */
    int (*thaw)(struct backend *b, struct backend_replica *r, backend_cb cb, void *data,
                const char **ret_how);
    /* Stops a replica (thawed first), SIGKILL after `grace_s`; kept for a
     * later start (BACKEND_CAN_STOP_KEEP). Already stopped is success. */
    int (*stop)(struct backend *b, struct backend_replica *r, unsigned grace_s, backend_cb cb,
                void *data);
    /* Removes a replica at once, whatever its state (thawed first). */
    int (*remove)(struct backend *b, struct backend_replica *r, backend_cb cb, void *data);
    /* How the replica is now: res->state RUNNING or FROZEN (adoption:
     * frozen or serving?). -ENOTSUP when the backend cannot tell. */
    int (*inspect)(struct backend *b, struct backend_replica *r, backend_cb cb, void *data);
    /* The reconciler learnt that the replica exited (EXITED) or is gone
     * (GONE) outside an operation: what the backend keeps of its process
     * (a frozen state) no longer holds. */
    void (*note)(struct backend *b, struct backend_replica *r, enum backend_event_kind kind);
    /* The reconciler drops the replica: frees r->priv and what it held
     * (its port). No operation may be in flight on it. */
    void (*forget)(struct backend *b, struct backend_replica *r);

    /* Every replica of this controller instance (by its labels). */
    int (*list)(struct backend *b, backend_list_cb cb, void *data);
    /* Takes over a listed replica: fills `r` from it. Returns 0, or a
     * negative errno when it cannot be adopted (its address is not one this
     * backend hands out, or is taken): remove it then. Synchronous. */
    int (*adopt)(struct backend *b, struct backend_replica *r, const struct backend_listed *l);
    /* Removes a listed replica that is not adopted. */
    int (*remove_listed)(struct backend *b, const struct backend_listed *l, backend_cb cb,
                         void *data);

    /* Follows changes of this instance's replicas until the stream ends:
     * on_event for each, in order; on_end once (err 0 when closed by the
     * other side). Changes while no watch is open are lost: list then. */
    int (*watch)(struct backend *b, backend_event_cb on_event, backend_cb on_end, void *data);

    /* Streams a replica's output (by id: it may have been removed from the
     * reconciler's list meanwhile). on_end: err 0 at the end, -ENOENT for
     * an unknown replica, -ECANCELED after logs_cancel. *ret is valid until
     * on_end has run. */
    int (*logs)(struct backend *b, const char *id, const struct backend_logs_opts *opts,
                backend_log_cb on_data, backend_cb on_end, void *data, struct backend_logs **ret);
    /* Backpressure: while paused on_data does not run and nothing is read. */
    void (*logs_pause)(struct backend_logs *l, bool pause);
    /* on_data runs no more; on_end runs later with -ECANCELED. */
    void (*logs_cancel)(struct backend_logs *l);

    /* The replica's resource use now (BACKEND_HAS_CGROUPS). Returns 0 and
     * *ret, or a negative errno: nothing to read now (counted as 0). */
    int (*usage)(struct backend *b, struct backend_replica *r, enum backend_run run,
                 struct backend_usage *ret);

    /* The backend's own metric families (Prometheus text), appended. */
    int (*metrics)(struct backend *b, struct stoke_buf *out);

    /* Optional. At a shutdown that stops waiting: removals and stops not
     * yet sent end with -ECANCELED (their callbacks run first), later ones
     * are refused with -ECANCELED; what wakes a paused replica (the
     * engine's unpause) goes on, so that none is left frozen. */
    void (*abandon)(struct backend *b);

    /* Aborts what is in flight (callbacks run with -ECANCELED) and frees
     * the backend once its handles have closed. */
    void (*close)(struct backend *b);
};

struct backend {
    const struct backend_ops *ops;
    unsigned caps;    /* enum backend_cap bits */
    const char *name; /* "docker" */
    /* "the container engine": what /healthz and logs call it */
    const char *what;
};

static inline bool backend_can(const struct backend *b, enum backend_cap cap)
{
    return (b->caps & cap) != 0;
}

/* backend_docker.c: the Docker engine (Podman's compatible service too). */
struct backend_docker_config {
    const char *docker_host; /* NULL: $DOCKER_HOST or the default socket */
    const char *instance;    /* io.stoke.instance label of our containers */
    uint16_t port_min, port_max;
    bool freeze_with_engine; /* --pause-with engine: the engine's pause, not the cgroup */
    unsigned max_inflight;   /* engine calls in flight at most; 0: the default */
};

/* Returns 0 and *ret, or a negative errno (-EINVAL: a bad engine address). */
int backend_docker_new(uv_loop_t *loop, const struct backend_docker_config *cfg,
                       struct backend **ret);

/* backend_kube.c: Pods through the Kubernetes API server. */
struct stoke_kube;
struct backend_kube_config {
    struct stoke_kube *kube;     /* borrowed: closed after the backend */
    const char *ns;              /* the namespace of the Functions and their pods */
    const char *instance;        /* stoke.dev/instance label of our pods */
    const char *service_account; /* of the pods; NULL: the namespace's default */
    uint64_t start_timeout_ms;   /* a pod not running by then failed to start */
    /* The uid of Function `function` (the pods' owner), or NULL when there
     * is none now. */
    const char *(*owner_uid)(const char *function, void *data);
    void *owner_data;
};

/* Starts the informer of the instance's pods. Returns 0 and *ret, or a
 * negative errno. */
int backend_kube_new(uv_loop_t *loop, const struct backend_kube_config *cfg, struct backend **ret);

#endif
