/* Functions and their replicas: the autoscaler's desired count, and the
 * backend operations that get there (backend.h): the lifecycle, the warm
 * tier, drain, rollout, back-off and adoption, one copy for every backend. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller.h"
#include "hub.h"
#include "probe.h"
#include "stoke/backoff.h"
#include "stoke/log.h"
#include "stoke/routes.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 60000
/* A replica ready this long before it failed ends a crash loop: the next
 * failure starts the back-off from the beginning. */
#define CRASH_RESET_MS 10000
/* Failures in a row from which the function is said to crash-loop. */
#define CRASH_LOOP_FAILURES 3
#define PROBE_MAX_PERIOD_MS 500
#define STOP_GRACE_S 5
/* A removal the engine failed is tried again, with a back-off from 200 ms
 * to 2 s, this many times (about 12 s): a container is not left behind
 * for the next start to remove because of a passing engine error. */
#define REMOVE_TRIES 10
#define REMOVE_BACKOFF_MIN_MS 200
#define REMOVE_BACKOFF_MAX_MS 2000

enum tier { TIER_PAUSED, TIER_STOPPED, TIER_CREATED, TIER_NEW };
static const char *const tier_names[] = {"paused", "stopped", "created", "new"};

static void replica_retire(struct replica *r);
static void replica_go_idle(struct replica *r);
static void replica_failed(struct replica *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

struct function *ctrl_function_find(struct ctrl *c, const char *name)
{
    for (struct stoke_list *n = c->functions.next; n != &c->functions; n = n->next) {
        struct function *fn = stoke_container_of(n, struct function, node);
        if (strcmp(fn->spec.name, name) == 0)
            return fn;
    }
    return NULL;
}

/* ---- routes -------------------------------------------------------------- */

/* What is being pushed: a whole table, or an update of one function; for
 * each function with containerConcurrency, the slots each activator
 * process gets on each of its replicas. */
enum push_kind {
    PUSH_TABLE,  /* the whole table, a new gen, to every activator */
    PUSH_UPDATE, /* one function's entry (or its removal), a new gen, to every activator */
    PUSH_RESYNC, /* the whole table at the current gen, as last dealt, to those that asked */
};

struct push {
    struct stoke_route_table t;
    uint32_t **slots; /* per route, NULL or [endpoint * k + process] */
    unsigned k;
    enum push_kind kind;
    const char *removed; /* PUSH_UPDATE: the function that left, or NULL */
};

/* A restarted controller waits before raising shares while the activators
 * that had some from the controller before may not all be back. (When the
 * first back had none, one that had may still come: that window is not
 * covered.) */
static bool ctrl_shares_settling(struct ctrl *c)
{
    return uv_now(c->loop) < c->shares_settle_ms && hub_any_reported_slots(c->hub);
}

/* The slots each of the k activator processes `procs` gets on replica `rp`
 * now, into out[0..k) (out[k..2k) is scratch): its share (stoke_share(),
 * keyed by address), but a raise only once every lowering of the replica's
 * shares has taken effect, and none in the first CTRL_SHARES_SETTLE_MS;
 * until then, what it had. An activator this controller has given nothing
 * yet may have slots from a controller before it: what its hello said
 * counts as what it had. */
static void replica_grant(struct ctrl *c, struct replica *rp, uint32_t cc,
                          char (*procs)[HUB_PROCESS_MAX], unsigned k, uint32_t *out)
{
    const char *addr = rp->br.addr;
    struct stoke_addr a;
    unsigned start = stoke_addr_parse(addr, &a) == 0 ? stoke_share_start(&a) : 0;
    uint32_t *held = out + k; /* min(share, what it had) */
    bool lowering = false;
    for (unsigned i = 0; i < k; i++) {
        uint32_t old = 0;
        bool known = false;
        for (unsigned g = 0; g < rp->n_grants; g++) {
            if (strcmp(rp->grants[g].process, procs[i]) == 0) {
                old = rp->grants[g].slots;
                known = true;
            }
        }
        if (!known && !hub_reported_slots(c->hub, procs[i], rp->fn->spec.name, addr, &old))
            old = 0;
        out[i] = stoke_share(cc, k, i, start % k);
        lowering |= out[i] < old;
        held[i] = out[i] < old ? out[i] : old;
    }
    bool settled =
        !lowering && !ctrl_shares_settling(c) && hub_is_drained(c->hub, addr, rp->lowered_gen);
    rp->raise_waiting = false;
    for (unsigned i = 0; i < k; i++) {
        if (!settled && held[i] < out[i]) {
            out[i] = held[i];
            rp->raise_waiting = true;
            c->any_raise_waiting = true;
        }
    }
    if (lowering)
        rp->lowered_gen = c->route_gen;
    struct replica_grant *g = realloc(rp->grants, (k ? k : 1) * sizeof(*g));
    if (!g)
        return; /* the old grants stay: the next push starts from them */
    for (unsigned i = 0; i < k; i++) {
        snprintf(g[i].process, sizeof(g[i].process), "%s", procs[i]);
        g[i].slots = out[i];
    }
    rp->grants = g;
    rp->n_grants = k;
}

/* For a resync: the slots replica_grant() last gave each process, changing
 * nothing (0 for a process it gave none). */
static void replica_granted(const struct replica *rp, char (*procs)[HUB_PROCESS_MAX], unsigned k,
                            uint32_t *out)
{
    for (unsigned i = 0; i < k; i++) {
        out[i] = 0;
        for (unsigned g = 0; g < rp->n_grants; g++) {
            if (strcmp(rp->grants[g].process, procs[i]) == 0)
                out[i] = rp->grants[g].slots;
        }
    }
}

/* The table (or update) of activator process i of n: each function's
 * limits divided among the processes (stoke_route_share(), rules in
 * stoke/routes.h), with the slots replica_grant() gave. `process` NULL:
 * an events peer's, undivided. */
static char *make_routes(const char *process, unsigned i, unsigned n, void *data)
{
    const struct push *p = data;
    const struct stoke_route_table *all = &p->t;
    struct stoke_route_table t = {.gen = all->gen};
    t.routes = calloc(all->n_routes ? all->n_routes : 1, sizeof(*t.routes));
    char *line = NULL;
    if (!process) {
        /* An events peer's: undivided. */
        free(t.routes);
        t.routes = NULL;
        if (p->kind == PUSH_UPDATE)
            line = stoke_route_update_format(all->gen, all->routes, all->n_routes, &p->removed,
                                             p->removed ? 1 : 0);
        else
            line = stoke_route_table_format(all);
        goto out;
    }
    if (!t.routes || n != p->k)
        goto out;
    for (size_t j = 0; j < all->n_routes; j++) {
        const struct stoke_route *in = &all->routes[j];
        struct stoke_route *r = &t.routes[j];
        if (stoke_route_share(in, i, n, r) < 0)
            goto out;
        t.n_routes++;
        if (!p->slots[j])
            continue;
        /* The replicas it has slots on now, with those slots. */
        free(r->shares);
        r->shares = calloc(in->n_endpoints ? in->n_endpoints : 1, sizeof(*r->shares));
        if (!r->shares)
            goto out;
        r->n_endpoints = 0;
        for (size_t e = 0; e < in->n_endpoints; e++) {
            uint32_t s = p->slots[j][e * n + i];
            if (s == 0)
                continue;
            r->endpoints[r->n_endpoints] = in->endpoints[e];
            r->shares[r->n_endpoints++] = s;
        }
    }
    if (p->kind == PUSH_UPDATE)
        line =
            stoke_route_update_format(t.gen, t.routes, t.n_routes, &p->removed, p->removed ? 1 : 0);
    else
        line = stoke_route_table_format(&t);
out:
    if (!line)
        stoke_error(NULL, -ENOMEM,
                    "cannot build a route message; an activator keeps its table until it asks "
                    "for it again");
    stoke_route_table_done(&t);
    return line;
}

/* Fills route `r` (and the slots of each process on its replicas) for `fn`. */
static int push_add(struct ctrl *c, struct push *p, struct function *fn,
                    char (*procs)[HUB_PROCESS_MAX], uint32_t *grant)
{
    uint32_t **slots = &p->slots[p->t.n_routes];
    struct stoke_route *r = &p->t.routes[p->t.n_routes++];
    snprintf(r->name, sizeof(r->name), "%s", fn->spec.name);
    r->timeout_ms = fn->spec.timeout_ms;
    r->queue_max = fn->spec.queue.max;
    r->queue_timeout_ms = fn->spec.queue.timeout_ms;
    r->concurrency_limit = fn->spec.scale.container_concurrency;
    r->async = fn->spec.async;
    /* Queue triggers, for stoke-events (activators ignore them). */
    if (stoke_route_triggers_dup(fn->spec.triggers, fn->spec.n_triggers, &r->triggers) < 0)
        return -ENOMEM;
    r->n_triggers = fn->spec.n_triggers;
    /* Schedules, for stoke-events too. */
    if (stoke_schedules_dup(fn->spec.schedules, fn->spec.n_schedules, &r->schedules) < 0)
        return -ENOMEM;
    r->n_schedules = fn->spec.n_schedules;
    size_t ne = 0;
    for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next)
        ne++;
    r->endpoints = calloc(ne ? ne : 1, sizeof(*r->endpoints));
    if (!r->endpoints)
        return -ENOMEM;
    if (r->concurrency_limit && p->k > 0) {
        *slots = calloc((ne ? ne : 1) * p->k, sizeof(**slots));
        if (!*slots)
            return -ENOMEM;
    }
    for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
        struct replica *rp = stoke_container_of(b, struct replica, node);
        if (rp->state != R_READY)
            continue;
        if (stoke_addr_parse(rp->br.addr, &r->endpoints[r->n_endpoints]) < 0)
            continue;
        if (*slots) {
            if (p->kind == PUSH_RESYNC)
                replica_granted(rp, procs, p->k, grant);
            else
                replica_grant(c, rp, r->concurrency_limit, procs, p->k, grant);
            memcpy(*slots + r->n_endpoints * p->k, grant, p->k * sizeof(*grant));
        }
        r->n_endpoints++;
    }
    return 0;
}

/* Builds and sends a push: of every function, or of `only`. */
static void push_routes(struct ctrl *c, enum push_kind kind, struct function *only)
{
    /* While adopting, the table would lack the replicas being adopted:
     * activators keep the one they have until adoption is over (and the
     * table after it goes to all). A stopping controller (SIGTERM, a lost
     * Lease) sends none either: its replicas are being freed or left to the
     * next controller, and a table without them would fail the requests in
     * flight and queued in the activators, which keep routing on the last
     * table until the next controller's. */
    if (c->adopting || c->stopping || (kind == PUSH_RESYNC && c->route_gen == 0))
        return;
    struct push p = {.t = {.gen = kind == PUSH_RESYNC ? c->route_gen : ++c->route_gen},
                     .kind = kind};
    struct stoke_route_table *t = &p.t;
    char(*procs)[HUB_PROCESS_MAX] = hub_processes(c->hub, &p.k);
    uint32_t *grant = calloc(2 * (p.k + 1), sizeof(*grant));
    size_t n = 1;
    if (!only) {
        n = 0;
        for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next)
            n++;
    }
    t->routes = calloc(n ? n : 1, sizeof(*t->routes));
    p.slots = calloc(n ? n : 1, sizeof(*p.slots));
    if (!t->routes || !p.slots || !procs || !grant)
        goto oom;
    if (only && only->deleted) {
        p.removed = only->spec.name;
    } else if (only) {
        if (push_add(c, &p, only, procs, grant) < 0)
            goto oom;
    } else {
        for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
            struct function *fn = stoke_container_of(a, struct function, node);
            if (!fn->deleted && push_add(c, &p, fn, procs, grant) < 0)
                goto oom;
        }
    }
    hub_send_routes(c->hub, make_routes, &p, kind == PUSH_RESYNC);
    goto done;
oom:
    /* An activator that misses this gen asks for the table at the next. */
    stoke_error(NULL, -ENOMEM, "cannot build the routes; activators keep the ones they have");
done:
    for (size_t j = 0; p.slots && j < t->n_routes; j++)
        free(p.slots[j]);
    free(p.slots);
    free(procs);
    free(grant);
    stoke_route_table_done(t);
}

void ctrl_push_routes(struct ctrl *c)
{
    push_routes(c, PUSH_TABLE, NULL);
}

void ctrl_push_function(struct function *fn)
{
    push_routes(fn->ctrl, PUSH_UPDATE, fn);
}

void ctrl_resync_routes(struct ctrl *c)
{
    push_routes(c, PUSH_RESYNC, NULL);
}

void ctrl_push_settled_raises(struct ctrl *c)
{
    if (!c->any_raise_waiting || ctrl_shares_settling(c))
        return;
    c->any_raise_waiting = false; /* set again by each replica still waiting */
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
            struct replica *r = stoke_container_of(b, struct replica, node);
            if (!r->raise_waiting)
                continue;
            c->any_raise_waiting = true;
            if (r->state == R_READY && hub_is_drained(c->hub, r->br.addr, r->lowered_gen)) {
                ctrl_push_function(fn); /* (its replicas' grants again) */
                break;
            }
        }
    }
}

/* ---- replicas ------------------------------------------------------------ */

static void function_free(struct function *fn)
{
    stoke_list_remove(&fn->node);
    stoke_info(fn->spec.name, "function removed");
    stoke_metric_window_done(&fn->metrics);
    stoke_spec_done(&fn->spec);
    free(fn);
}

static void shutdown_check(struct ctrl *c);

/* No replica left, and none still closing (its close callback reads its
 * function): the function may be freed. */
static bool function_empty(const struct function *fn)
{
    return stoke_list_empty(&fn->replicas) && fn->closing == 0;
}

static void on_replica_timer_closed(uv_handle_t *h)
{
    struct replica *r = h->data;
    struct function *fn = r->fn;
    struct ctrl *c = fn->ctrl;
    free(r->grants);
    free(r);
    fn->closing--;
    if (fn->deleted && function_empty(fn))
        function_free(fn);
    shutdown_check(c);
}

static void replica_free(struct replica *r)
{
    stoke_list_remove(&r->node);
    r->fn->ctrl->be->ops->forget(r->fn->ctrl->be, &r->br);
    probe_stop(r->probe);
    r->probe = NULL;
    r->fn->closing++;
    uv_close((uv_handle_t *)&r->timer, on_replica_timer_closed);
}

static void replica_remove_container(struct replica *r);

static void on_remove_retry(uv_timer_t *t)
{
    replica_remove_container(t->data);
}

static void on_removed(const struct backend_result *res, void *data)
{
    struct replica *r = data;
    r->op_pending = false;
    if (res->err < 0 && res->err != -ENOENT && res->err != -ECANCELED &&
        ++r->remove_tries < REMOVE_TRIES) {
        /* Still retiring, out of the routes: the timer is free. */
        uint64_t ms =
            stoke_backoff_ms(r->remove_tries, REMOVE_BACKOFF_MIN_MS, REMOVE_BACKOFF_MAX_MS);
        stoke_warn(r->fn->spec.name, res->err,
                   "removing replica %.12s failed: %s; trying again in %llu ms", r->br.id,
                   res->message, (unsigned long long)ms);
        uv_timer_start(&r->timer, on_remove_retry, ms, 0);
        return;
    }
    if (res->err < 0 && res->err != -ENOENT && res->err != -ECANCELED)
        stoke_warn(r->fn->spec.name, res->err,
                   "removing replica %.12s failed %u times: %s; a later check removes it as "
                   "untracked",
                   r->br.id, r->remove_tries, res->message);
    else
        stoke_debug(r->fn->spec.name, "replica %.12s removed", r->br.id);
    if (r->fn->ctrl->stopping && (res->err == 0 || res->err == -ENOENT))
        r->fn->ctrl->shutdown_removed++;
    replica_free(r);
}

static void replica_remove_container(struct replica *r)
{
    usage_sample(r); /* the CPU it used since the last tick, before its cgroup goes */
    if (r->br.id[0] == '\0' || (r->fn->ctrl->stopping && r->fn->ctrl->keep_on_stop)) {
        replica_free(r);
        return;
    }
    /* At once: the replica left the routes and drained (or its drain timed
     * out), or never served. */
    struct backend *be = r->fn->ctrl->be;
    int e = be->ops->remove(be, &r->br, on_removed, r);
    if (e < 0) {
        if (e == -ECANCELED)
            stoke_debug(r->fn->spec.name, "replica %.12s left (shutdown cut short)", r->br.id);
        else
            stoke_warn(r->fn->spec.name, e, "cannot remove replica %.12s", r->br.id);
        replica_free(r);
        return;
    }
    r->op_pending = true;
}

/* Removes an unrouted replica at once (an idle one, or one that failed
 * before it served). */
static void replica_discard(struct replica *r)
{
    usage_sample(r); /* an idle one's time counts as idle, not running */
    r->state = R_RETIRING;
    replica_remove_container(r);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct replica *r = t->data;
    r->draining = false;
    stoke_warn(r->fn->spec.name, -ETIMEDOUT,
               "replica %.12s still had requests in flight after %llu ms; removing it", r->br.id,
               (unsigned long long)r->fn->spec.timeout_ms);
    replica_remove_container(r);
}

/* No activator can have a request in flight to `r`: none that is connected
 * (hub_is_drained()), and none that may connect or come back (the hub is
 * not settling: a restarted controller does not remove a replica that the
 * activators of the one before may still be sending to). */
static bool replica_drained(struct replica *r)
{
    struct hub *hub = r->fn->ctrl->hub;
    return !hub_settling(hub) && hub_is_drained(hub, r->br.addr, r->unrouted_gen);
}

/* Each draining replica with no request left in flight goes idle or is
 * removed. */
static void finish_drains(struct ctrl *c)
{
    c->any_draining = false; /* set again by each replica still draining */
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas;) {
            struct replica *r = stoke_container_of(b, struct replica, node);
            b = b->next;
            if (!r->draining)
                continue;
            if (!replica_drained(r)) {
                c->any_draining = true;
                continue;
            }
            r->draining = false;
            uv_timer_stop(&r->timer);
            stoke_debug(fn->spec.name, "replica %.12s drained", r->br.id);
            if (r->to_idle)
                replica_go_idle(r);
            else
                replica_remove_container(r);
        }
    }
}

void ctrl_on_drain(struct ctrl *c)
{
    if (c->any_draining)
        finish_drains(c);
    ctrl_push_settled_raises(c);
}

static void replica_retire(struct replica *r)
{
    if (r->op_pending) {
        r->retire_asap = true;
        return;
    }
    if (r->state == R_RETIRING)
        return;
    bool was_ready = r->state == R_READY;
    usage_sample(r);
    r->state = R_RETIRING;
    probe_stop(r->probe);
    r->probe = NULL;
    uv_timer_stop(&r->timer);
    if (was_ready && !r->fn->ctrl->stopping) {
        /* Out of the routes first; removed once no activator has a request
         * in flight to it (or after the function's timeout). */
        struct ctrl *c = r->fn->ctrl;
        ctrl_push_function(r->fn);
        r->unrouted_gen = c->route_gen;
        if (!replica_drained(r)) {
            r->draining = true;
            c->any_draining = true;
            uv_timer_start(&r->timer, on_drain_timeout, r->fn->spec.timeout_ms, 0);
            return;
        }
    }
    if (was_ready && r->to_idle)
        replica_go_idle(r);
    else
        replica_remove_container(r);
}

static void replica_failed(struct replica *r, int err, const char *fmt, ...)
{
    struct function *fn = r->fn;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fn->last_error, sizeof(fn->last_error), fmt, ap);
    va_end(ap);
    memcpy(fn->last_failure, fn->last_error, sizeof(fn->last_failure));
    uint64_t now = uv_now(fn->ctrl->loop);
    if (r->ready_ms && now - r->ready_ms >= CRASH_RESET_MS)
        fn->failures = 0;
    fn->failures++;
    fn->replica_failures++;
    fn->backoff_ms = stoke_backoff_ms(fn->failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    fn->retry_at_ms = now + fn->backoff_ms;
    stoke_error(fn->spec.name, err, "replica %.12s failed: %s; next try in %llu ms",
                r->br.id[0] ? r->br.id : r->br.name, fn->last_error,
                (unsigned long long)fn->backoff_ms);
    if (fn->failures >= CRASH_LOOP_FAILURES)
        stoke_warn(fn->spec.name, err,
                   "crash loop: %u failures in a row, back-off %llu ms (at most %u ms); last: %s",
                   fn->failures, (unsigned long long)fn->backoff_ms, BACKOFF_MAX_MS,
                   fn->last_error);
    r->retire_asap = false;
    r->to_idle = false;
    replica_retire(r);
}

static void on_probe_ready(void *data)
{
    struct replica *r = data;
    struct function *fn = r->fn;
    r->probe = NULL;
    uv_timer_stop(&r->timer);
    r->state = R_READY;
    r->ready_ms = uv_now(fn->ctrl->loop);
    if (fn->cold_since_ms) {
        stoke_histogram_observe(&fn->cold_start_hist[fn->cold_tier],
                                (r->ready_ms - fn->cold_since_ms) * 1000);
        fn->cold_since_ms = 0;
    }
    /* A crash loop ends once a replica has stayed up (replica_failed). */
    fn->backoff_ms = 0;
    fn->last_error[0] = '\0';
    stoke_info(fn->spec.name, "replica %.12s ready on %s, %llu ms after %s", r->br.id, r->br.addr,
               (unsigned long long)(r->ready_ms - r->created_ms), r->woke_from);
    ctrl_push_function(fn);
    ctrl_reconcile(fn); /* a rollout may retire an old replica now */
}

static void on_ready_timeout(uv_timer_t *t)
{
    struct replica *r = t->data;
    replica_failed(r, -ETIMEDOUT, "not ready %llu ms after start",
                   (unsigned long long)r->fn->ctrl->cfg.ready_timeout_ms);
}

static void replica_probe(struct replica *r);

static void on_started(const struct backend_result *res, void *data)
{
    struct replica *r = data;
    r->op_pending = false;
    r->settled_ms = uv_now(r->fn->ctrl->loop);
    if (res->err < 0) {
        replica_failed(r, res->err, "%s: %s",
                       strcmp(r->woke_from, "unpause") == 0 ? "unpause" : "start", res->message);
        return;
    }
    if (r->exited) {
        replica_failed(r, -ESRCH, "exited right after start (exit status %d)", r->exit_code);
        return;
    }
    if (r->retire_asap) {
        replica_retire(r);
        return;
    }
    replica_probe(r);
}

/* Probes a running replica whose address is known. */
static int probe_addr(struct replica *r)
{
    struct function *fn = r->fn;
    return probe_start(fn->ctrl->loop, r->br.addr, fn->spec.readiness.path,
                       fn->spec.readiness.period_ms, PROBE_MAX_PERIOD_MS, on_probe_ready, r,
                       &r->probe);
}

/* Running (started, or thawed): probe at once, routed when it answers. A
 * replica whose address is not known yet (a pod's IP comes later) is
 * probed once the backend tells it (ctrl_on_event); the ready deadline
 * runs meanwhile. */
static void replica_probe(struct replica *r)
{
    struct function *fn = r->fn;
    r->state = R_PROBING;
    int e = r->br.addr[0] ? probe_addr(r) : 0;
    if (e < 0) {
        replica_failed(r, e, "cannot probe");
        return;
    }
    uv_timer_start(&r->timer, on_ready_timeout, fn->ctrl->cfg.ready_timeout_ms, 0);
}

static void on_created(const struct backend_result *res, void *data)
{
    struct replica *r = data;
    r->op_pending = false;
    r->settled_ms = uv_now(r->fn->ctrl->loop);
    if (res->err < 0) {
        replica_failed(r, res->err, "create: %s", res->message);
        return;
    }
    if (r->retire_asap) {
        replica_retire(r);
        return;
    }
    if (r->precreate) {
        r->precreate = false;
        r->state = R_CREATED;
        stoke_info(r->fn->spec.name, "replica %.12s created and kept for a cold start", r->br.id);
        return;
    }
    r->state = R_STARTING;
    struct backend *be = r->fn->ctrl->be;
    int e = be->ops->start(be, &r->br, on_started, r);
    if (e < 0) {
        replica_failed(r, e, "start");
        return;
    }
    r->op_pending = true;
}

static void replica_create(struct function *fn, bool precreate)
{
    struct ctrl *c = fn->ctrl;
    struct replica *r = calloc(1, sizeof(*r));
    if (!r) {
        stoke_error(fn->spec.name, -ENOMEM, "cannot create a replica");
        return;
    }
    r->fn = fn;
    r->precreate = precreate;
    r->woke_from = "create";
    memcpy(r->revision, fn->revision, sizeof(r->revision));
    snprintf(r->br.function, sizeof(r->br.function), "%s", fn->spec.name);
    uv_timer_init(c->loop, &r->timer);
    r->timer.data = r;
    r->created_ms = uv_now(c->loop);
    stoke_list_insert_tail(&fn->replicas, &r->node);
    int e = c->be->ops->create(c->be, &r->br, &fn->spec, r->revision, on_created, r);
    if (e < 0) {
        replica_failed(r, e, "cannot create");
        return;
    }
    r->op_pending = true;
    r->state = R_CREATING;
}

/* ---- the warm tier -------------------------------------------------------- */

static bool is_current(const struct replica *r);

static bool is_idle(const struct replica *r)
{
    return !r->op_pending && !r->retire_asap &&
           (r->state == R_PAUSED || r->state == R_STOPPED || r->state == R_CREATED);
}

/* Idle replicas of the current revision, and those on their way there. */
static uint32_t count_pool(const struct function *fn)
{
    uint32_t n = 0;
    for (const struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
        const struct replica *r = stoke_container_of(b, struct replica, node);
        bool warm = r->state >= R_PAUSING || (r->state == R_CREATING && r->precreate) ||
                    (r->state == R_RETIRING && r->to_idle);
        if (warm && !r->retire_asap && is_current(r))
            n++;
    }
    return n;
}

static void on_step_down(uv_timer_t *t);

/* Arms the step down of an idle replica after `ms`. */
static void idle_timer(struct replica *r, uint64_t ms)
{
    uv_timer_start(&r->timer, on_step_down, ms, 0);
}

static void on_idle_stopped(const struct backend_result *res, void *data)
{
    struct replica *r = data;
    struct function *fn = r->fn;
    r->op_pending = false;
    if (res->err < 0) {
        stoke_warn(fn->spec.name, res->err, "cannot stop idle replica %.12s: %s; removing it",
                   r->br.id, res->message);
        replica_discard(r);
        return;
    }
    if (r->retire_asap || fn->deleted || fn->ctrl->stopping || !is_current(r)) {
        r->retire_asap = false;
        replica_discard(r);
        return;
    }
    usage_sample(r);
    r->state = R_STOPPED;
    stoke_info(fn->spec.name, "replica %.12s stopped (idle); removed in %llu ms", r->br.id,
               (unsigned long long)fn->spec.scale.remove_after_ms);
    idle_timer(r, fn->spec.scale.remove_after_ms);
}

static void replica_stop_idle(struct replica *r)
{
    usage_sample(r);
    struct backend *be = r->fn->ctrl->be;
    int e = be->ops->stop(be, &r->br, STOP_GRACE_S, on_idle_stopped, r);
    if (e < 0) {
        stoke_warn(r->fn->spec.name, e, "cannot stop idle replica %.12s; removing it", r->br.id);
        replica_discard(r);
        return;
    }
    r->state = R_STOPPING;
    r->op_pending = true;
}

static void paused(struct replica *r, const char *how)
{
    struct function *fn = r->fn;
    if (r->retire_asap || fn->deleted || fn->ctrl->stopping || !is_current(r)) {
        r->retire_asap = false;
        replica_discard(r);
        return;
    }
    usage_sample(r);
    r->state = R_PAUSED;
    stoke_info(fn->spec.name, "replica %.12s paused (idle, %s); stopped in %llu ms", r->br.id, how,
               (unsigned long long)fn->spec.scale.stop_after_ms);
    idle_timer(r, fn->spec.scale.stop_after_ms);
}

static void on_frozen(const struct backend_result *res, void *data)
{
    struct replica *r = data;
    r->op_pending = false;
    if (res->err < 0 || r->exited) {
        stoke_warn(r->fn->spec.name, res->err, "cannot pause idle replica %.12s: %s; removing it",
                   r->br.id, res->err < 0 ? res->message : "it exited");
        replica_discard(r);
        return;
    }
    paused(r, res->how);
}

/* A drained replica of the current revision goes to the function's idle
 * state: paused (then stopped, then removed), stopped, or removed. */
static void replica_go_idle(struct replica *r)
{
    struct function *fn = r->fn;
    struct ctrl *c = fn->ctrl;
    enum stoke_idle idle = ctrl_idle_effective(c, fn, NULL);
    r->to_idle = false;
    if (c->stopping || fn->deleted || !is_current(r) || idle == STOKE_IDLE_REMOVE) {
        replica_remove_container(r);
        return;
    }
    r->ready_ms = 0;
    if (idle == STOKE_IDLE_STOP) {
        replica_stop_idle(r);
        return;
    }
    r->state = R_PAUSING;
    int e = c->be->ops->freeze(c->be, &r->br, on_frozen, r);
    if (e < 0) {
        stoke_warn(fn->spec.name, e, "cannot pause idle replica %.12s; removing it", r->br.id);
        replica_discard(r);
        return;
    }
    r->op_pending = true;
}

enum stoke_idle ctrl_idle_effective(const struct ctrl *c, const struct function *fn,
                                    const char **ret_why)
{
    enum stoke_idle idle = fn->spec.scale.idle;
    const char *why = NULL;
    if (idle == STOKE_IDLE_PAUSE && !backend_can(c->be, BACKEND_CAN_FREEZE)) {
        idle = STOKE_IDLE_STOP;
        why = "this backend cannot freeze a replica: idle replicas are stopped instead";
    }
    if (idle == STOKE_IDLE_STOP && !backend_can(c->be, BACKEND_CAN_STOP_KEEP)) {
        idle = STOKE_IDLE_REMOVE;
        why = "this backend keeps no idle replica: idle replicas are removed";
    }
    if (ret_why)
        *ret_why = why;
    return idle;
}

static void on_step_down(uv_timer_t *t)
{
    struct replica *r = t->data;
    struct function *fn = r->fn;
    if (r->op_pending)
        return;
    if (r->state == R_PAUSED) {
        stoke_info(fn->spec.name, "replica %.12s paused for %llu ms: stopping it", r->br.id,
                   (unsigned long long)fn->spec.scale.stop_after_ms);
        replica_stop_idle(r);
    } else if (r->state == R_STOPPED || r->state == R_CREATED) {
        /* The pre-created floor stays; a stopped container counts in it. */
        if (count_pool(fn) <= fn->spec.scale.precreated)
            return;
        stoke_info(fn->spec.name, "replica %.12s stopped for %llu ms: removing it", r->br.id,
                   (unsigned long long)fn->spec.scale.remove_after_ms);
        replica_discard(r);
    }
}

/* The best idle replica of the current revision for a cold start: paused,
 * then stopped, then created. */
static struct replica *pool_pick(struct function *fn, enum tier *ret)
{
    struct replica *best = NULL;
    enum tier bt = TIER_NEW;
    for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
        struct replica *r = stoke_container_of(b, struct replica, node);
        if (!is_idle(r) || !is_current(r))
            continue;
        enum tier t = r->state == R_PAUSED    ? TIER_PAUSED
                      : r->state == R_STOPPED ? TIER_STOPPED
                                              : TIER_CREATED;
        if (t < bt) {
            best = r;
            bt = t;
        }
    }
    *ret = bt;
    return best;
}

/* Wakes an idle replica. Returns false when it could not (it is then
 * being removed: pick another). */
static bool replica_wake(struct replica *r, enum tier t)
{
    struct function *fn = r->fn;
    struct ctrl *c = fn->ctrl;
    uv_timer_stop(&r->timer);
    usage_sample(r); /* its idle time ends here */
    r->created_ms = uv_now(c->loop);
    r->exited = false;
    r->oom = false;
    const char *how = "start";
    uint64_t t0 = uv_hrtime();
    int e = t == TIER_PAUSED ? c->be->ops->thaw(c->be, &r->br, on_started, r, &how)
                             : c->be->ops->start(c->be, &r->br, on_started, r);
    if (e < 0) {
        stoke_warn(fn->spec.name, e, "cannot wake replica %.12s (%s); removing it", r->br.id, how);
        replica_discard(r);
        return false;
    }
    r->woke_from = how;
    if (e == 1) {
        /* The fast path (a thaw done at once): the probe next. */
        stoke_debug(fn->spec.name, "replica %.12s thawed in %llu us", r->br.id,
                    (unsigned long long)((uv_hrtime() - t0) / 1000));
        replica_probe(r);
        return true;
    }
    r->state = R_STARTING;
    r->op_pending = true;
    return true;
}

/* One more replica: the best idle one, else a new one. */
static enum tier scale_up_one(struct function *fn)
{
    enum tier t;
    struct replica *r;
    while ((r = pool_pick(fn, &t)) != NULL) {
        if (replica_wake(r, t))
            return t;
    }
    replica_create(fn, false);
    return TIER_NEW;
}

/* ---- desired state ------------------------------------------------------- */

static uint32_t count_ready(const struct function *fn)
{
    uint32_t n = 0;
    for (const struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
        if (stoke_container_of(b, struct replica, node)->state == R_READY)
            n++;
    }
    return n;
}

/* Runs the autoscaler for `fn` now and keeps its decision in fn->desired.
 * `cold`: requests wait and no replica is ready. */
static void autoscale(struct function *fn, bool cold)
{
    struct ctrl *c = fn->ctrl;
    /* Decide on whole seconds only: the current second may not have every
     * activator's report yet (each reports once a second, at its own phase),
     * and a half-counted second would read as a drop in traffic. So the
     * autoscaler's clock runs one second behind ours. */
    uint64_t now = uv_now(c->loop);
    now = now >= 1000 ? now - 1000 : 0;
    uint32_t ready = count_ready(fn);
    struct stoke_scale_decision d;
    int r = stoke_autoscale(&fn->as, &fn->spec.scale, &fn->metrics, now, ready, cold, &d);
    if (r < 0) {
        stoke_error(fn->spec.name, r, "autoscaler refused its input; keeping %u replicas",
                    fn->desired);
        return;
    }
    /* One line per decision: the replica count per tick, for operators and
     * for the end-to-end tests that compare it with `stokectl simulate`. */
    stoke_log(d.desired != fn->desired || d.panic != fn->panic ? STOKE_LOG_INFO : STOKE_LOG_DEBUG,
              fn->spec.name, 0,
              "autoscale: desired %u (was %u), ready %u, stable %.2f, panic %.2f, %s%s", d.desired,
              fn->desired, ready, d.stable_avg, d.panic_avg, d.panic ? "panicking" : "stable",
              d.has_data ? "" : ", no data");
    /* Queue triggers' backlog is demand too (KEDA's rule). */
    uint64_t backlog = ctrl_backlog(fn);
    uint32_t want = stoke_autoscale_backlog(&fn->spec.scale, d.desired, backlog, fn->backlog_target,
                                            now, &fn->backlog_last_ms);
    if (want != d.desired)
        stoke_log(want != fn->desired ? STOKE_LOG_INFO : STOKE_LOG_DEBUG, fn->spec.name, 0,
                  "autoscale: desired %u for a backlog of %" PRIu64 " (target %u), was %u", want,
                  backlog, fn->backlog_target, fn->desired);
    fn->desired = want;
    fn->panic = d.panic;
}

uint64_t ctrl_backlog(const struct function *fn)
{
    uint64_t now = uv_now(fn->ctrl->loop);
    return fn->backlog_at_ms && now - fn->backlog_at_ms <= CTRL_BACKLOG_TTL_MS ? fn->backlog : 0;
}

void ctrl_on_backlog(struct ctrl *c, const char *name, uint64_t backlog, uint32_t target)
{
    struct function *fn = ctrl_function_find(c, name);
    if (!fn || fn->deleted)
        return;
    bool rise = backlog > 0 && ctrl_backlog(fn) == 0;
    fn->backlog = backlog;
    fn->backlog_target = target;
    fn->backlog_at_ms = uv_now(c->loop);
    /* Messages came while at zero: scale from zero now, not at the tick. */
    if (rise && count_ready(fn) == 0) {
        autoscale(fn, false);
        ctrl_reconcile(fn);
    }
}

void ctrl_autoscale_all(struct ctrl *c)
{
    uint64_t now = uv_now(c->loop);
    for (struct stoke_list *n = c->functions.next; n != &c->functions; n = n->next) {
        struct function *fn = stoke_container_of(n, struct function, node);
        if (fn->deleted)
            continue;
        /* A poke since the last tick still counts while nothing is ready. */
        bool cold =
            fn->poked_ms && now - fn->poked_ms < STOKE_AUTOSCALE_TICK_MS && count_ready(fn) == 0;
        autoscale(fn, cold);
    }
}

static bool is_live(const struct replica *r)
{
    return r->state < R_RETIRING && !r->retire_asap && !(r->state == R_CREATING && r->precreate);
}

static bool is_current(const struct replica *r)
{
    return strcmp(r->revision, r->fn->revision) == 0;
}

/* Retires up to `n` live replicas of the current revision (`current`) or of
 * earlier ones: those not serving first, then the newest serving ones.
 * Returns how many it retired. */
static uint32_t retire_some(struct function *fn, uint32_t n, bool current)
{
    uint32_t done = 0;
    for (int pass = 0; pass < 2 && done < n; pass++) {
        for (struct stoke_list *l = fn->replicas.prev; l != &fn->replicas && done < n;) {
            struct replica *r = stoke_container_of(l, struct replica, node);
            l = l->prev;
            if (!is_live(r) || is_current(r) != current)
                continue;
            if (pass == 0 && r->state == R_READY)
                continue;
            /* Scaling down keeps the current revision warm; a rollout
             * removes the earlier ones. */
            r->to_idle = current && r->state == R_READY;
            replica_retire(r);
            done++;
        }
    }
    return done;
}

void ctrl_reconcile(struct function *fn)
{
    struct ctrl *c = fn->ctrl;
    if (c->stopping || c->adopting)
        return;
    uint64_t now = uv_now(c->loop);
    uint32_t want = fn->deleted ? 0 : fn->desired;
    uint32_t live = 0, fresh_ready = 0, old_live = 0, old_ready = 0;
    for (struct stoke_list *n = fn->replicas.next; n != &fn->replicas; n = n->next) {
        struct replica *r = stoke_container_of(n, struct replica, node);
        if (!is_live(r))
            continue;
        if (is_current(r)) {
            live++;
            fresh_ready += r->state == R_READY;
        } else {
            old_live++;
            old_ready += r->state == R_READY;
        }
    }
    if (live < want && now >= fn->retry_at_ms) {
        bool cold = live == 0 && old_ready == 0;
        uint32_t from = live;
        unsigned by_tier[4] = {0};
        while (live < want) {
            by_tier[scale_up_one(fn)]++;
            live++;
        }
        if (cold) {
            fn->cold_starts++;
            for (int t = 0; t < 4; t++)
                fn->wakes[t] += by_tier[t] > 0;
        }
        int best = TIER_NEW; /* the fastest tier used */
        for (int t = TIER_NEW; t >= 0; t--)
            if (by_tier[t] > 0)
                best = t;
        /* Timed until its first replica is ready; a retry after a failed
         * replica continues the same cold start. */
        if (cold && fn->cold_since_ms == 0) {
            fn->cold_since_ms = now;
            fn->cold_tier = best;
        }
        stoke_info(fn->spec.name,
                   "%s from %s: %u -> %u replicas (woken: %u paused, %u stopped, %u created; %u "
                   "new)",
                   cold ? "cold start" : "scaling up", tier_names[best], from, want,
                   by_tier[TIER_PAUSED], by_tier[TIER_STOPPED], by_tier[TIER_CREATED],
                   by_tier[TIER_NEW]);
    } else if (live > want) {
        retire_some(fn, live - want, true);
        if (want == 0) {
            fn->cold_since_ms = 0; /* back to zero before any replica was ready */
            stoke_info(fn->spec.name, "idle for %llu ms: scaled to zero",
                       (unsigned long long)fn->spec.scale.scale_to_zero_grace_ms);
        } else {
            stoke_info(fn->spec.name, "scaling down to %u replicas", want);
        }
    }

    /* A rollout: replicas of an earlier revision serve until the current
     * revision has enough ready ones to take their place; those not ready
     * never get traffic and go at once. */
    if (old_live > 0) {
        uint32_t keep = want > fresh_ready ? want - fresh_ready : 0;
        if (keep > old_ready)
            keep = old_ready;
        if (old_live > keep) {
            uint32_t n = retire_some(fn, old_live - keep, false);
            if (n > 0)
                stoke_info(fn->spec.name,
                           "rollout: %u ready of revision %s, %u of earlier ones retiring",
                           fresh_ready, fn->revision, n);
        }
    }

    /* Idle replicas of an earlier revision will never be woken. */
    for (struct stoke_list *n = fn->replicas.next; n != &fn->replicas;) {
        struct replica *r = stoke_container_of(n, struct replica, node);
        n = n->next;
        if (is_idle(r) && (!is_current(r) || fn->deleted)) {
            stoke_info(fn->spec.name, "removing idle replica %.12s of revision %s", r->br.id,
                       r->revision);
            replica_retire(r);
        }
    }
    /* Keep the pre-created floor: replicas that only need a start. */
    if (!fn->deleted && now >= fn->retry_at_ms && backend_can(c->be, BACKEND_CAN_PRECREATE)) {
        for (uint32_t pool = count_pool(fn); pool < fn->spec.scale.precreated; pool++)
            replica_create(fn, true);
    }
}

void ctrl_reconcile_all(struct ctrl *c)
{
    struct stoke_list *n = c->functions.next;
    while (n != &c->functions) {
        struct function *fn = stoke_container_of(n, struct function, node);
        n = n->next;
        ctrl_reconcile(fn);
    }
}

int ctrl_function_apply(struct ctrl *c, const struct stoke_spec *spec)
{
    struct stoke_spec copy;
    int r = stoke_spec_dup(spec, &copy);
    if (r < 0)
        return r;
    char rev[17];
    stoke_spec_revision(&copy, rev);

    struct function *fn = ctrl_function_find(c, spec->name);
    if (!fn) {
        fn = calloc(1, sizeof(*fn));
        if (!fn) {
            stoke_spec_done(&copy);
            return -ENOMEM;
        }
        r = stoke_metric_window_init(&fn->metrics, copy.scale.window_ms);
        if (r < 0) {
            free(fn);
            stoke_spec_done(&copy);
            return r;
        }
        fn->ctrl = c;
        stoke_list_init(&fn->replicas);
        stoke_list_insert_tail(&c->functions, &fn->node);
        /* `initial` replicas on first deploy; the autoscaler takes it from
         * there, keeping them until the stable average has been zero for the
         * grace period. */
        uint32_t initial = copy.scale.initial;
        if (initial < copy.scale.min)
            initial = copy.scale.min;
        stoke_autoscaler_init(&fn->as, uv_now(c->loop), 0);
        stoke_autoscaler_seed(&fn->as, initial);
        fn->desired = initial;
        stoke_info(copy.name, "function added (image %s, revision %s)", copy.image, rev);
    } else {
        if (strcmp(rev, fn->revision) != 0) {
            /* The old replicas keep serving until new ones are ready. The
             * old revision's failures say nothing of the new one: its first
             * replica starts at once, and status shows its own errors. */
            stoke_info(copy.name, "new revision %s (was %s): rolling out", rev, fn->revision);
            fn->failures = 0;
            fn->backoff_ms = 0;
            fn->retry_at_ms = 0;
            fn->last_error[0] = '\0';
        } else {
            stoke_info(copy.name, "function updated (revision %s)", rev);
        }
        r = stoke_metric_window_reserve(&fn->metrics, copy.scale.window_ms);
        if (r < 0) {
            stoke_spec_done(&copy);
            return r;
        }
        fn->deleted = false;
        stoke_spec_done(&fn->spec);
    }
    fn->spec = copy;
    memcpy(fn->revision, rev, sizeof(rev));
    ctrl_push_function(fn);
    ctrl_reconcile(fn);
    return 0;
}

void ctrl_function_delete(struct ctrl *c, const char *name)
{
    struct function *fn = ctrl_function_find(c, name);
    if (!fn || fn->deleted)
        return;
    stoke_info(name, "spec removed: scaling to zero");
    fn->deleted = true;
    ctrl_push_function(fn);
    for (struct stoke_list *n = fn->replicas.next; n != &fn->replicas;) {
        struct replica *r = stoke_container_of(n, struct replica, node);
        n = n->next;
        replica_retire(r);
    }
    if (function_empty(fn))
        function_free(fn);
}

void ctrl_on_poke(struct ctrl *c, const char *name)
{
    struct function *fn = ctrl_function_find(c, name);
    if (!fn || fn->deleted)
        return;
    fn->poked_ms = uv_now(c->loop);
    if (count_ready(fn) == 0) {
        autoscale(fn, true);
        ctrl_reconcile(fn);
    }
}

static void fn_stats(struct function *fn, uint64_t second, double concurrency, uint64_t requests)
{
    /* A second's totals are shown once reports for a later one arrive:
     * by then every activator has reported it. */
    struct fn_traffic *t = &fn->traffic;
    t->requests += requests;
    if (second > t->second) {
        if (t->second) {
            t->rps = second == t->second + 1 ? (double)t->second_requests : 0;
            t->concurrency = second == t->second + 1 ? t->second_concurrency : 0;
        }
        t->second = second;
        t->second_requests = 0;
        t->second_concurrency = 0;
    }
    if (second == t->second) {
        t->second_requests += requests;
        t->second_concurrency += concurrency;
    }
    /* Reports of several activators for one second add up; zeros while
     * the function is at zero are silence (see stoke_autoscaler_record()). */
    (void)stoke_autoscaler_record(&fn->as, count_ready(fn), &fn->metrics, second, concurrency);
}

void ctrl_on_stats(struct ctrl *c, const char *name, uint64_t second, double concurrency,
                   uint64_t requests)
{
    struct function *fn = ctrl_function_find(c, name);
    if (fn && !fn->deleted)
        fn_stats(fn, second, concurrency, requests);
}

void ctrl_on_stats_done(struct ctrl *c, uint64_t second)
{
    /* An activator reports only the functions it had traffic for: the
     * others had none that second (a second nobody reported would be
     * missing, not zero, to the autoscaler). Adding zero changes nothing
     * for those it reported. */
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        if (!fn->deleted)
            fn_stats(fn, second, 0, 0);
    }
}

/* ---- what the backend tells ---------------------------------------------- */

static struct replica *replica_find(struct ctrl *c, const char *id)
{
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
            struct replica *r = stoke_container_of(b, struct replica, node);
            if (r->br.id[0] && strcmp(r->br.id, id) == 0)
                return r;
        }
    }
    return NULL;
}

/* Our replica `r` exited (or is gone) without being asked to. */
static void replica_exited(struct replica *r, int exit_code, const char *how)
{
    struct function *fn = r->fn;
    if (r->op_pending) {
        /* Start, inspect or pause in flight: its callback sees this. */
        r->exited = true;
        r->exit_code = exit_code;
        return;
    }
    switch (r->state) {
    case R_PROBING:
    case R_READY: {
        bool was_ready = r->state == R_READY;
        if (r->oom) {
            fn->oom_kills++;
            replica_failed(r, -ENOMEM,
                           "killed by the kernel's OOM killer (memory limit %llu bytes)",
                           (unsigned long long)fn->spec.resources.memory_bytes);
        } else {
            replica_failed(r, -ESRCH, "%s (exit status %d)", how, exit_code);
        }
        if (was_ready)
            ctrl_reconcile(fn);
        break;
    }
    case R_PAUSED:
        /* Killed while idle: it can still be started again. */
        fn->ctrl->be->ops->note(fn->ctrl->be, &r->br, BACKEND_EV_EXITED);
        r->state = R_STOPPED;
        stoke_info(fn->spec.name, "idle replica %.12s %s (exit status %d): now stopped", r->br.id,
                   how, exit_code);
        idle_timer(r, fn->spec.scale.remove_after_ms);
        break;
    default:
        break; /* we stopped or are removing it, or it never ran */
    }
}

/* The replica is gone without being asked to: forget it (replaced when it
 * served). */
static void replica_gone(struct replica *r, const char *how)
{
    struct function *fn = r->fn;
    bool serving = r->state == R_PROBING || r->state == R_READY;
    stoke_warn(fn->spec.name, -ENOENT, "%sreplica %.12s %s", serving ? "" : "idle ", r->br.id, how);
    fn->ctrl->be->ops->note(fn->ctrl->be, &r->br, BACKEND_EV_GONE);
    r->br.id[0] = '\0';
    if (serving) {
        replica_failed(r, -ENOENT, "%s", how);
        ctrl_reconcile(fn);
    } else {
        replica_discard(r);
    }
}

void ctrl_on_event(struct ctrl *c, const struct backend_event *ev)
{
    if (ev->kind == BACKEND_EV_OTHER) {
        /* (not looked up: every replica's create and start come here) */
        stoke_debug(NULL, "backend event %s on %.12s", ev->what, ev->id);
        return;
    }
    struct replica *r = replica_find(c, ev->id);
    if (!r || c->stopping)
        return;
    struct function *fn = r->fn;
    stoke_debug(fn->spec.name, "backend event %s on replica %.12s", ev->what, r->br.id);
    switch (ev->kind) {
    case BACKEND_EV_OOM:
        r->oom = true;
        stoke_warn(fn->spec.name, -ENOMEM, "replica %.12s ran out of memory (limit %llu bytes)",
                   r->br.id, (unsigned long long)fn->spec.resources.memory_bytes);
        break;
    case BACKEND_EV_EXITED:
        replica_exited(r, ev->exit_code, "exited");
        break;
    case BACKEND_EV_GONE:
        if (!r->op_pending && r->state != R_RETIRING)
            replica_gone(r, "was removed outside stoke");
        break;
    case BACKEND_EV_ADDRESS:
        /* A replica's address learnt late: probe it now if it waits. */
        snprintf(r->br.addr, sizeof(r->br.addr), "%s", ev->addr ? ev->addr : "");
        if (r->state == R_PROBING && !r->probe && r->br.addr[0] && probe_addr(r) < 0)
            replica_failed(r, -ENOMEM, "cannot probe");
        break;
    case BACKEND_EV_OTHER:
        break;
    }
}

/* ---- checking the backend ------------------------------------------------ */

struct check {
    struct ctrl *c;
    uint64_t sent_ms;
};

/* The listed replica `id`, or NULL when it is not there. */
static const struct backend_listed *list_find(const struct backend_listed *items, size_t n,
                                              const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(items[i].id, id) == 0)
            return &items[i];
    }
    return NULL;
}

static void on_stray_gone(const struct backend_result *res, void *data)
{
    struct ctrl *c = data;
    if (res->err == 0)
        c->strays_removed++;
    else if (res->err != -ENOENT && res->err != -ECANCELED)
        stoke_warn(NULL, res->err,
                   "cannot remove an untracked replica: %s; trying again at the "
                   "next check",
                   res->message);
}

/* Whether listed replica `l` is one of ours: by its id, or by its address
 * for one whose create answered no id. */
static bool listed_tracked(struct ctrl *c, const struct backend_listed *l, bool *creating)
{
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
            struct replica *r = stoke_container_of(b, struct replica, node);
            if (r->state == R_CREATING)
                *creating = true;
            if (strcmp(r->br.id, l->id) == 0 ||
                (l->addr && l->addr[0] && !r->br.id[0] && strcmp(r->br.addr, l->addr) == 0))
                return true;
        }
    }
    return false;
}

/* Containers of this controller that no replica tracks: a create the
 * engine did but whose answer was lost (a connection cut after it, which
 * the HTTP client may even send again, to a 409). Removed when no create
 * is in flight (its container may be listed before its answer comes). */
static void remove_strays(struct ctrl *c, const struct backend_listed *items, size_t n)
{
    if (!backend_can(c->be, BACKEND_LISTS_OWN) || c->adopting)
        return;
    for (size_t i = 0; i < n; i++) {
        bool creating = false;
        if (listed_tracked(c, &items[i], &creating))
            continue;
        if (creating)
            return;
        stoke_warn(items[i].function, -ENOENT,
                   "replica %.12s on %s is not tracked (a call's answer was lost): removing it",
                   items[i].id, items[i].addr ? items[i].addr : "");
        if (c->be->ops->remove_listed(c->be, &items[i], on_stray_gone, c) < 0)
            stoke_warn(items[i].function, -ENOMEM, "cannot remove replica %.12s", items[i].id);
    }
}

static void on_checked(const struct backend_result *res, const struct backend_listed *items,
                       size_t n, void *data)
{
    struct check *ck = data;
    struct ctrl *c = ck->c;
    uint64_t sent = ck->sent_ms;
    free(ck);
    c->checking = false;
    if (c->check_again && !c->stopping) {
        /* Asked for after this one was sent (the watch reopened): what this
         * one says is older than the events missed; the next one tells. */
        c->check_again = false;
        ctrl_check_replicas(c);
    }
    if (res->err < 0 || c->stopping) {
        if (res->err < 0 && res->err != -ECANCELED)
            stoke_warn(NULL, res->err,
                       "cannot list replicas: %s; serving what is known, next check in %u ms",
                       res->message, CTRL_CHECK_PERIOD_MS);
        return;
    }
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas;) {
            struct replica *r = stoke_container_of(b, struct replica, node);
            b = b->next;
            /* Only replicas that were in their state before the list was
             * asked for, and with no call in flight: a create, start or thaw
             * the engine finished after (a slow engine, or one queued behind
             * the limit) may be missing from the list, a created replica not
             * listed, a running one listed as stopped. */
            if (r->op_pending || r->created_ms >= sent || r->settled_ms >= sent ||
                r->br.id[0] == '\0')
                continue;
            const struct backend_listed *l = list_find(items, n, r->br.id);
            if (r->state == R_READY || r->state == R_PROBING) {
                if (!l || l->state != BACKEND_RUNNING)
                    replica_exited(r, -1, l ? "is no longer running" : "is gone");
            } else if (is_idle(r) && !l) {
                replica_gone(r, "is gone");
            } else if (r->state == R_PAUSED && l && l->state == BACKEND_STOPPED) {
                replica_exited(r, -1, "exited");
            }
        }
    }
    remove_strays(c, items, n);
}

void ctrl_check_replicas(struct ctrl *c)
{
    /* One list at a time: a slow backend answers late, not many times. */
    c->last_check_ms = uv_now(c->loop);
    if (c->checking) {
        c->check_again = true;
        return;
    }
    struct check *ck = malloc(sizeof(*ck));
    if (!ck)
        return;
    ck->c = c;
    ck->sent_ms = uv_now(c->loop);
    if (c->be->ops->list(c->be, on_checked, ck) < 0) {
        free(ck);
        return;
    }
    c->checking = true;
}

/* ---- startup and shutdown ------------------------------------------------ */

struct adoption {
    struct ctrl *c;
    int (*load)(struct ctrl *c);
    void (*done)(struct ctrl *c, int err);
    unsigned pending;
};

static uint32_t count_ready(const struct function *fn);

static void adoption_step(struct adoption *ad)
{
    if (--ad->pending > 0)
        return;
    struct ctrl *c = ad->c;
    /* A restarted controller keeps what was serving: each function's
     * autoscaler starts from its adopted replicas (in panic mode for a
     * window when there are several, as Knative does), so nothing is
     * scaled down before the metrics are back. */
    uint64_t now = uv_now(c->loop);
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        uint32_t ready = count_ready(fn);
        if (ready == 0)
            continue;
        /* Replicas of an earlier revision count: the current one's take
         * their place. Not over the spec's max, should it have been
         * lowered meanwhile. */
        if (fn->spec.scale.max > 0 && ready > fn->spec.scale.max)
            ready = fn->spec.scale.max;
        stoke_autoscaler_init(&fn->as, now, ready);
        stoke_autoscaler_seed(&fn->as, ready);
        fn->desired = ready;
    }
    c->adopting = false;
    ad->done(c, 0);
    free(ad);
}

static void log_adopted(const struct replica *r, const char *word)
{
    if (is_current(r))
        stoke_info(r->fn->spec.name, "adopted %s%sreplica %.12s on %s", word, *word ? " " : "",
                   r->br.id, r->br.addr);
    else
        stoke_info(r->fn->spec.name, "adopted %s%sreplica %.12s on %s of earlier revision %s", word,
                   *word ? " " : "", r->br.id, r->br.addr, r->revision);
}

static void on_stray_removed(const struct backend_result *res, void *data)
{
    struct adoption *ad = data;
    if (res->err < 0 && res->err != -ENOENT)
        stoke_warn(NULL, res->err, "cannot remove a replica of an earlier run: %s", res->message);
    adoption_step(ad);
}

/* A running replica may be one we froze before a restart: the backend
 * tells (BACKEND_CAN_FREEZE). */
static void on_adopt_inspected(const struct backend_result *res, void *data)
{
    struct replica *r = data;
    struct adoption *ad = r->adoption;
    r->op_pending = false;
    r->adoption = NULL;
    if (res->err == 0 && res->state == BACKEND_FROZEN) {
        /* One of an earlier revision is never woken: the reconciler
         * removes it. */
        r->state = R_PAUSED;
        idle_timer(r, r->fn->spec.scale.stop_after_ms);
        log_adopted(r, "paused (frozen)");
    } else {
        r->state = R_READY;
        r->ready_ms = uv_now(r->fn->ctrl->loop);
        log_adopted(r, "");
    }
    if (r->retire_asap) {
        /* Shutdown began while its inspect was in flight. */
        r->retire_asap = false;
        replica_retire(r);
    }
    adoption_step(ad);
}

/* The state a listed replica is adopted in, and its word for the log;
 * false when it is in none the reconciler keeps. */
static bool adopt_state(enum backend_state st, enum replica_state *ret, const char **ret_word)
{
    switch (st) {
    case BACKEND_RUNNING:
        *ret = R_READY;
        *ret_word = "running";
        return true;
    case BACKEND_PAUSED:
        *ret = R_PAUSED;
        *ret_word = "paused";
        return true;
    case BACKEND_STOPPED:
        *ret = R_STOPPED;
        *ret_word = "exited";
        return true;
    case BACKEND_CREATED:
        *ret = R_CREATED;
        *ret_word = "created";
        return true;
    default:
        return false;
    }
}

/* Takes over a replica of this instance: a running one keeps serving (or
 * stays frozen, when we froze it), a paused, stopped or created one of the
 * current revision joins the warm tier with its timers from the start. A
 * running one of an earlier revision serves until the rollout retires it
 * (drained first, as any rollout's: activators of the controller before may
 * have requests in flight to it). The backend check replaces a serving one
 * should it be gone. Returns false when it cannot be adopted (the caller
 * removes it). */
static bool adopt(struct adoption *ad, const struct backend_listed *l)
{
    struct ctrl *c = ad->c;
    struct function *fn = l->function ? ctrl_function_find(c, l->function) : NULL;
    enum replica_state state;
    const char *word;
    if (!adopt_state(l->state, &state, &word) || !fn || fn->deleted || !l->revision ||
        strlen(l->revision) >= sizeof(fn->revision) ||
        (strcmp(l->revision, fn->revision) != 0 && state != R_READY))
        return false;
    /* Idle ones only as the idle state asks: no paused ones with
     * `idle: stop`, none at all with `idle: remove` (but pre-created). */
    enum stoke_idle idle = ctrl_idle_effective(c, fn, NULL);
    if ((state == R_PAUSED && idle != STOKE_IDLE_PAUSE) ||
        (state == R_STOPPED && idle == STOKE_IDLE_REMOVE &&
         count_pool(fn) >= fn->spec.scale.precreated))
        return false;
    struct replica *r = calloc(1, sizeof(*r));
    if (!r)
        return false;
    r->fn = fn;
    snprintf(r->br.function, sizeof(r->br.function), "%s", fn->spec.name);
    if (c->be->ops->adopt(c->be, &r->br, l) < 0) {
        c->be->ops->forget(c->be, &r->br);
        free(r);
        return false;
    }
    snprintf(r->revision, sizeof(r->revision), "%s", l->revision);
    uv_timer_init(c->loop, &r->timer);
    r->timer.data = r;
    r->created_ms = uv_now(c->loop);
    r->woke_from = "adoption";
    r->state = state;
    stoke_list_insert_tail(&fn->replicas, &r->node);
    switch (state) {
    case R_READY:
        /* Frozen or serving? The backend's list cannot tell; it may. */
        if (backend_can(c->be, BACKEND_CAN_FREEZE) &&
            c->be->ops->inspect(c->be, &r->br, on_adopt_inspected, r) == 0) {
            r->state = R_PAUSING;
            r->op_pending = true;
            r->adoption = ad;
            ad->pending++;
            return true;
        }
        r->ready_ms = r->created_ms;
        log_adopted(r, "");
        return true;
    case R_PAUSED:
        idle_timer(r, fn->spec.scale.stop_after_ms);
        break;
    case R_STOPPED:
    case R_CREATED:
        /* Kept by on_step_down() while they make the pre-created floor. */
        idle_timer(r, fn->spec.scale.remove_after_ms);
        break;
    default:
        break;
    }
    log_adopted(r, word);
    return true;
}

static void on_adoption_listed(const struct backend_result *res, const struct backend_listed *items,
                               size_t n, void *data)
{
    struct adoption *ad = data;
    struct ctrl *c = ad->c;
    if (res->err < 0) {
        c->adopting = false;
        ad->done(c, res->err);
        free(ad);
        return;
    }
    /* The specs first (no replica is started while adopting), then every
     * replica of this instance is either adopted or removed. */
    int r = ad->load(c);
    if (r < 0) {
        c->adopting = false;
        ad->done(c, r);
        free(ad);
        return;
    }
    ad->pending = 1;
    for (size_t i = 0; i < n; i++) {
        if (adopt(ad, &items[i]))
            continue;
        stoke_info(NULL,
                   "removing replica %.12s of an earlier run: no current function or "
                   "revision, or not in a state its spec keeps",
                   items[i].id);
        if (c->be->ops->remove_listed(c->be, &items[i], on_stray_removed, ad) == 0)
            ad->pending++;
    }
    adoption_step(ad);
}

int ctrl_adopt(struct ctrl *c, int (*load)(struct ctrl *c), void (*done)(struct ctrl *c, int err))
{
    struct adoption *ad = calloc(1, sizeof(*ad));
    if (!ad)
        return -ENOMEM;
    ad->c = c;
    ad->load = load;
    ad->done = done;
    c->adopting = true;
    int r = c->be->ops->list(c->be, on_adoption_listed, ad);
    if (r < 0) {
        c->adopting = false;
        free(ad);
    }
    return r;
}

static void shutdown_check(struct ctrl *c)
{
    if (!c->stopping || !c->on_stopped)
        return;
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        if (!function_empty(fn))
            return;
    }
    void (*cb)(struct ctrl *) = c->on_stopped;
    c->on_stopped = NULL;
    while (!stoke_list_empty(&c->functions))
        function_free(stoke_container_of(stoke_list_first(&c->functions), struct function, node));
    cb(c);
}

void ctrl_shutdown(struct ctrl *c, void (*cb)(struct ctrl *c))
{
    c->stopping = true;
    c->on_stopped = cb;
    c->shutdown_total = 0;
    c->shutdown_removed = 0;
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next)
            c->shutdown_total += stoke_container_of(b, struct replica, node)->br.id[0] != '\0';
    }
    /* Every removal goes at once to the backend, which thaws a frozen
     * replica first and sends them at its bounded concurrency. */
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas;) {
            struct replica *r = stoke_container_of(b, struct replica, node);
            b = b->next;
            replica_retire(r);
        }
    }
    shutdown_check(c);
}

void ctrl_shutdown_now(struct ctrl *c)
{
    if (!c->stopping || c->shutdown_cut)
        return;
    c->shutdown_cut = true;
    if (c->be->ops->abandon)
        c->be->ops->abandon(c->be);
    shutdown_check(c);
}
