/* The admin API's endpoints (docs/admin-api.md): functions as JSON, PUT and
 * DELETE through the functions directory (fnset.h), status, logs
 * (api_logs.c) and the version. On Kubernetes it is read-only (the
 * Function objects are the specs: PUT and DELETE answer 405) and a follower
 * answers 503 naming the leader. */
#include "api.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <llhttp.h>

#include "api_logs.h"
#include "fnset.h"
#include "stoke/httpd.h"
#include "stoke/list.h"
#include "stoke/log.h"

#ifndef STOKE_VERSION
#define STOKE_VERSION "0.0.0"
#endif

#define API_PREFIX "/api/v1/"
#define RETRY_AFTER "Retry-After: 1\r\n"

/* The transport's limits (docs/admin-api.md): a request head of 16 KiB
 * (431) within 10 s of its first byte, a body of STOKE_SPEC_MAX_BYTES (413)
 * within 30 s of the head; 60 s idle before and between requests; 256
 * connections; a client that reads nothing of an answer for 60 s is
 * dropped; log streams pause past 256 KiB unsent. */
static const struct stoke_httpd_limits api_limits = {
    .max_head = 16 * 1024,
    .max_body = STOKE_SPEC_MAX_BYTES,
    .max_conns = 256,
    .stream_high = 256 * 1024,
    .first_timeout_ms = 60000,
    .head_timeout_ms = 10000,
    .body_timeout_ms = 30000,
    .idle_timeout_ms = 60000,
    .write_timeout_ms = 60000,
};

struct api {
    struct ctrl *c;
    struct fnset *fs;
    struct stoke_httpd *http;
    struct api_logs *logs;
    char *read_only; /* Kubernetes: the 405's hint for PUT and DELETE */
    bool serving;    /* read-only: the functions are adopted */
    bool (*leading)(const char **leader, void *data);
    void *leading_data;
    struct stoke_list pending; /* struct pending.node: PUTs and DELETEs waiting for fnset */
};

/* A PUT or DELETE waiting for its turn in the fnset's queue. */
struct pending {
    struct stoke_list node;
    struct api *a;
    struct stoke_httpd_req *req;
    struct fnset_op *op;
    char name[STOKE_NAME_MAX + 2]; /* as handle() cuts it */
};

/* ---- JSON ---------------------------------------------------------------- */

/* Adds `v` under `key` (object_add steals it). A NULL `v` is an allocation
 * that failed: *err becomes -ENOMEM. Use jnull() for JSON null. */
static void jadd(json_object *o, const char *key, json_object *v, int *err)
{
    if (!v || json_object_object_add(o, key, v) < 0) {
        json_object_put(v);
        *err = -ENOMEM;
    }
}

static void jnull(json_object *o, const char *key, int *err)
{
    if (json_object_object_add(o, key, NULL) < 0)
        *err = -ENOMEM;
}

static json_object *jstr(const char *s)
{
    return json_object_new_string(s);
}

static json_object *ju64(uint64_t v)
{
    return json_object_new_uint64(v);
}

/* {k1: v1, k2: v2}, both strings; NULL on OOM. */
static json_object *jpair(const char *k1, const char *v1, const char *k2, const char *v2)
{
    int err = 0;
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    jadd(o, k1, jstr(v1), &err);
    jadd(o, k2, jstr(v2), &err);
    if (err < 0) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

/* Whole seconds as "NNs", else "NNNms": what stoke_parse_duration() reads. */
static json_object *jduration(uint64_t ms)
{
    char b[32];
    if (ms % 1000 == 0)
        (void)snprintf(b, sizeof(b), "%" PRIu64 "s", ms / 1000);
    else
        (void)snprintf(b, sizeof(b), "%" PRIu64 "ms", ms);
    return jstr(b);
}

static const char *idle_name(enum stoke_idle idle)
{
    switch (idle) {
    case STOKE_IDLE_STOP:
        return "stop";
    case STOKE_IDLE_REMOVE:
        return "remove";
    default:
        return "pause";
    }
}

static json_object *scale_json(const struct stoke_scale *s, int *err)
{
    json_object *o = json_object_new_object();
    if (!o) {
        *err = -ENOMEM;
        return NULL;
    }
    jadd(o, "min", ju64(s->min), err);
    jadd(o, "max", ju64(s->max), err);
    jadd(o, "initial", ju64(s->initial), err);
    jadd(o, "target", ju64(s->target), err);
    jadd(o, "utilization", ju64(s->utilization), err);
    jadd(o, "containerConcurrency", ju64(s->container_concurrency), err);
    jadd(o, "window", jduration(s->window_ms), err);
    jadd(o, "panicWindowPercent", ju64(s->panic_window_percent), err);
    jadd(o, "panicThresholdPercent", ju64(s->panic_threshold_percent), err);
    jadd(o, "scaleToZeroGrace", jduration(s->scale_to_zero_grace_ms), err);
    jadd(o, "scaleDownDelay", jduration(s->scale_down_delay_ms), err);
    jadd(o, "idle", jstr(idle_name(s->idle)), err);
    jadd(o, "stopAfter", jduration(s->stop_after_ms), err);
    jadd(o, "removeAfter", jduration(s->remove_after_ms), err);
    jadd(o, "precreated", ju64(s->precreated), err);
    return o;
}

/* spec.schedules, defaults filled in (timeZone UTC; no data, no
 * startingDeadlineSeconds: left out). */
static json_object *schedules_json(const struct stoke_spec *s, int *err)
{
    json_object *a = json_object_new_array();
    if (!a) {
        *err = -ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < s->n_schedules; i++) {
        const struct stoke_schedule *sc = &s->schedules[i];
        json_object *o = json_object_new_object();
        if (!o) {
            *err = -ENOMEM;
            break;
        }
        jadd(o, "name", jstr(sc->name), err);
        jadd(o, "schedule", jstr(sc->schedule), err);
        jadd(o, "timeZone", jstr(sc->time_zone ? sc->time_zone : "UTC"), err);
        if (sc->data)
            jadd(o, "data", jstr(sc->data), err);
        jadd(o, "contentType", jstr(sc->content_type), err);
        jadd(o, "path", jstr(sc->path), err);
        jadd(o, "concurrencyPolicy", jstr(stoke_policy_names[sc->policy]), err);
        if (sc->starting_deadline_s)
            jadd(o, "startingDeadlineSeconds", ju64(sc->starting_deadline_s), err);
        jadd(o, "suspend", json_object_new_boolean(sc->suspend), err);
        json_object_array_add(a, o);
    }
    return a;
}

/* The spec in effect with every default filled in. */
static json_object *spec_json(const struct stoke_spec *s, int *err)
{
    json_object *o = json_object_new_object();
    json_object *env = json_object_new_object();
    json_object *queue = json_object_new_object();
    json_object *res = json_object_new_object();
    json_object *ready = json_object_new_object();
    char cpu[32], mem[32];
    if (!o || !env || !queue || !res || !ready) {
        json_object_put(o);
        json_object_put(env);
        json_object_put(queue);
        json_object_put(res);
        json_object_put(ready);
        *err = -ENOMEM;
        return NULL;
    }
    jadd(o, "image", jstr(s->image ? s->image : ""), err);
    jadd(o, "port", ju64(s->port), err);
    for (size_t i = 0; i < s->env_len; i++)
        jadd(env, s->env[i].name, jstr(s->env[i].value ? s->env[i].value : ""), err);
    jadd(o, "env", env, err);
    jadd(o, "scale", scale_json(&s->scale, err), err);
    jadd(o, "timeout", jduration(s->timeout_ms), err);
    jadd(queue, "max", ju64(s->queue.max), err);
    jadd(queue, "timeout", jduration(s->queue.timeout_ms), err);
    jadd(o, "queue", queue, err);
    json_object *as = json_object_new_object();
    if (as) {
        jadd(as, "retries", ju64(s->async.retries), err);
        jadd(as, "backoff", jduration(s->async.backoff_ms), err);
        jadd(as, "maxEventAge", jduration(s->async.max_age_ms), err);
        jadd(as, "maxInFlight", ju64(s->async.max_in_flight), err);
        jadd(as, "maxBody", ju64(s->async.max_body), err);
    }
    jadd(o, "async", as, err);
    (void)snprintf(mem, sizeof(mem), "%" PRIu64, s->resources.memory_bytes);
    (void)snprintf(cpu, sizeof(cpu), "%" PRIu64 "m", s->resources.cpu_millis);
    jadd(res, "memory", jstr(mem), err);
    jadd(res, "cpu", jstr(cpu), err);
    jadd(res, "pids", ju64(s->resources.pids), err);
    jadd(o, "resources", res, err);
    if (s->readiness.path)
        jadd(ready, "path", jstr(s->readiness.path), err);
    else
        jnull(ready, "path", err);
    jadd(ready, "period", jduration(s->readiness.period_ms), err);
    jadd(o, "readiness", ready, err);
    jadd(o, "readOnlyRootFilesystem", json_object_new_boolean(s->read_only_rootfs), err);
    jadd(o, "network", jstr(s->network == STOKE_NETWORK_HOST ? "host" : "bridge"), err);
    if (s->n_schedules)
        jadd(o, "schedules", schedules_json(s, err), err);
    return o;
}

static bool is_live(enum replica_state st)
{
    return st == R_CREATING || st == R_STARTING || st == R_PROBING || st == R_READY ||
           st == R_RETIRING;
}

static json_object *replica_json(const struct replica *r, uint64_t now, int *err)
{
    json_object *o = json_object_new_object();
    if (!o) {
        *err = -ENOMEM;
        return NULL;
    }
    const char *colon = strrchr(r->br.addr, ':');
    uint64_t port = 0;
    if (!colon || stoke_parse_u64(colon + 1, &port) < 0)
        port = 0;
    jadd(o, "id", jstr(r->br.id), err);
    jadd(o, "name", jstr(r->br.name), err);
    jadd(o, "state", jstr(ctrl_replica_state_name(r->state)), err);
    jadd(o, "revision", jstr(r->revision), err);
    jadd(o, "address", jstr(r->br.addr), err);
    jadd(o, "port", ju64(port), err);
    jadd(o, "age_ms", ju64(now > r->created_ms ? now - r->created_ms : 0), err);
    return o;
}

static json_object *status_json(struct function *fn, int *err)
{
    uint64_t now = uv_now(fn->ctrl->loop);
    unsigned ready = 0, ready_current = 0, starting = 0, retiring = 0, paused = 0, stopped = 0,
             created = 0;
    bool old_live = false;
    json_object *o = json_object_new_object();
    json_object *tiers = json_object_new_object();
    json_object *replicas = json_object_new_array();
    if (!o || !tiers || !replicas) {
        json_object_put(o);
        json_object_put(tiers);
        json_object_put(replicas);
        *err = -ENOMEM;
        return NULL;
    }
    for (struct stoke_list *n = fn->replicas.next; n != &fn->replicas; n = n->next) {
        const struct replica *r = stoke_container_of(n, struct replica, node);
        bool current = strcmp(r->revision, fn->revision) == 0;
        switch (r->state) {
        case R_CREATING:
            if (r->precreate)
                created++;
            else
                starting++;
            break;
        case R_STARTING:
        case R_PROBING:
            starting++;
            break;
        case R_READY:
            ready++;
            ready_current += current;
            break;
        case R_RETIRING:
            retiring++;
            break;
        case R_PAUSING:
        case R_PAUSED:
            paused++;
            break;
        case R_STOPPING:
        case R_STOPPED:
            stopped++;
            break;
        case R_CREATED:
            created++;
            break;
        }
        if (!current && is_live(r->state))
            old_live = true;
        json_object *rj = replica_json(r, now, err);
        if (!rj || json_object_array_add(replicas, rj) < 0) {
            json_object_put(rj);
            *err = -ENOMEM;
        }
    }
    /* As the spec asks: enough ready replicas of the current revision, or
     * none wanted and none of an older revision still live. */
    bool cond = fn->desired >= 1 ? ready_current >= fn->desired : !old_live;
    jadd(o, "name", jstr(fn->spec.name), err);
    jadd(o, "revision", jstr(fn->revision), err);
    jadd(o, "ready_condition", json_object_new_boolean(cond), err);
    jadd(o, "desired", ju64(fn->desired), err);
    jadd(o, "ready", ju64(ready), err);
    jadd(o, "starting", ju64(starting), err);
    jadd(o, "retiring", ju64(retiring), err);
    jadd(o, "paused", ju64(paused), err);
    jadd(o, "stopped", ju64(stopped), err);
    jadd(o, "created", ju64(created), err);
    jadd(o, "panic", json_object_new_boolean(fn->panic), err);
    /* What `idle` does here: the spec's, unless the backend cannot. */
    static const char *const idle_names[] = {"pause", "stop", "remove"};
    const char *idle_why = NULL;
    enum stoke_idle idle = ctrl_idle_effective(fn->ctrl, fn, &idle_why);
    jadd(o, "backend", jstr(fn->ctrl->be->name), err);
    jadd(o, "idle", jstr(idle_names[idle]), err);
    if (idle_why)
        jadd(o, "idle_note", jstr(idle_why), err);
    jadd(o, "last_error", jstr(fn->last_error), err);
    jadd(o, "failures", ju64(fn->failures), err);
    jadd(o, "last_failure", jstr(fn->last_failure), err);
    jadd(o, "replica_failures", ju64(fn->replica_failures), err);
    jadd(o, "oom_kills", ju64(fn->oom_kills), err);
    jadd(o, "backoff_ms", ju64(fn->retry_at_ms > now ? fn->retry_at_ms - now : 0), err);
    jadd(o, "cold_starts", ju64(fn->cold_starts), err);
    static const char *const tier_names[4] = {"paused", "stopped", "created", "new"};
    for (int t = 0; t < 4; t++)
        jadd(tiers, tier_names[t], ju64(fn->wakes[t]), err);
    jadd(o, "cold_starts_by_tier", tiers, err);
    jadd(o, "concurrency", json_object_new_double(fn->traffic.concurrency), err);
    jadd(o, "requests_per_second", json_object_new_double(fn->traffic.rps), err);
    jadd(o, "requests", ju64(fn->traffic.requests), err);
    const char *not_measured = usage_not_measured(fn->ctrl);
    if (!not_measured) {
        jadd(o, "cpu_seconds", json_object_new_double(fn->usage.cpu_seconds), err);
        jadd(o, "memory_bytes", ju64(fn->usage.memory_bytes), err);
    } else {
        /* null, not a zero that reads as idle (no cgroup of a pod is read
         * on Kubernetes). */
        jnull(o, "cpu_seconds", err);
        jnull(o, "memory_bytes", err);
        jadd(o, "usage_note", jstr(not_measured), err);
    }
    jadd(o, "gb_seconds", json_object_new_double(fn->usage.gb_seconds), err);
    jadd(o, "replicas", replicas, err);
    return o;
}

/* The function object; NULL on OOM. */
static json_object *function_json(struct function *fn)
{
    int err = 0;
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    jadd(o, "name", jstr(fn->spec.name), &err);
    jadd(o, "spec", spec_json(&fn->spec, &err), &err);
    jadd(o, "status", status_json(fn, &err), &err);
    if (err < 0) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

/* ---- endpoints ----------------------------------------------------------- */

/* A function the API shows: known and not being deleted. */
static struct function *find_live(struct api *a, const char *name)
{
    struct function *fn = ctrl_function_find(a->c, name);
    return fn && !fn->deleted ? fn : NULL;
}

static int by_name(const void *x, const void *y)
{
    const struct function *const *a = x, *const *b = y;
    return strcmp((*a)->spec.name, (*b)->spec.name);
}

static void get_list(struct api *a, struct stoke_httpd_req *req)
{
    size_t n = 0;
    for (struct stoke_list *l = a->c->functions.next; l != &a->c->functions; l = l->next)
        n++;
    struct function **fns = calloc(n ? n : 1, sizeof(*fns));
    json_object *o = json_object_new_object();
    json_object *items = json_object_new_array();
    int err = !fns || !o || !items ? -ENOMEM : 0;
    size_t k = 0;
    for (struct stoke_list *l = a->c->functions.next; fns && l != &a->c->functions; l = l->next) {
        struct function *fn = stoke_container_of(l, struct function, node);
        if (!fn->deleted)
            fns[k++] = fn;
    }
    if (fns)
        qsort(fns, k, sizeof(*fns), by_name);
    for (size_t i = 0; err == 0 && i < k; i++) {
        json_object *f = function_json(fns[i]);
        if (!f || json_object_array_add(items, f) < 0) {
            json_object_put(f);
            err = -ENOMEM;
        }
    }
    free(fns);
    if (err == 0) {
        jadd(o, "items", items, &err);
        items = NULL;
    }
    json_object_put(items);
    if (err < 0) {
        json_object_put(o);
        o = NULL; /* stoke_httpd_reply_json answers 500 */
    }
    stoke_httpd_reply_json(req, 200, NULL, o);
}

static void not_found(struct stoke_httpd_req *req, const char *name)
{
    stoke_httpd_reply_error(req, 404, NULL, "name", "no function named \"%s\"", name);
}

static void get_one(struct api *a, struct stoke_httpd_req *req, const char *name, bool status_only)
{
    struct function *fn = find_live(a, name);
    if (!fn) {
        not_found(req, name);
        return;
    }
    json_object *o;
    if (status_only) {
        int err = 0;
        o = status_json(fn, &err);
        if (err < 0) {
            json_object_put(o);
            o = NULL;
        }
    } else {
        o = function_json(fn);
    }
    stoke_httpd_reply_json(req, 200, NULL, o);
}

static void pending_free(struct pending *p)
{
    stoke_list_remove(&p->node);
    free(p);
}

static void on_pending_abort(struct stoke_httpd_req *req, void *data)
{
    struct pending *p = data;
    (void)req;
    fnset_op_forget(p->op);
    pending_free(p);
}

/* NULL (out of memory) once `req` is answered 500. */
static struct pending *pending_new(struct api *a, struct stoke_httpd_req *req, const char *name)
{
    struct pending *p = calloc(1, sizeof(*p));
    if (!p) {
        stoke_httpd_reply_error(req, 500, NULL, NULL, "out of memory");
        return NULL;
    }
    p->a = a;
    p->req = req;
    snprintf(p->name, sizeof(p->name), "%s", name);
    stoke_list_insert_tail(&a->pending, &p->node);
    return p;
}

/* fnset answered: frees `p` and returns its request, with its api and the
 * function's name copied to `name`. */
static struct stoke_httpd_req *pending_done(struct pending *p, struct api **ret_a,
                                            char name[sizeof(p->name)])
{
    struct stoke_httpd_req *req = p->req;
    *ret_a = p->a;
    memcpy(name, p->name, sizeof(p->name));
    pending_free(p);
    req->on_abort = NULL;
    return req;
}

/* After fnset_put() or fnset_delete() returned `r`: waits for the answer,
 * or answers the failure now. */
static void pending_start(struct pending *p, struct fnset_op *op, int r)
{
    struct stoke_httpd_req *req = p->req;
    if (r == 0) {
        p->op = op;
        req->on_abort = on_pending_abort;
        req->handler_data = p;
        return;
    }
    pending_free(p);
    if (r == -EFBIG)
        stoke_httpd_reply_error(req, 413, NULL, NULL, "body over 1 MiB");
    else if (r == -ECANCELED)
        stoke_httpd_reply_error(req, 503, RETRY_AFTER, NULL, "the controller is shutting down");
    else
        stoke_httpd_reply_error(req, 500, NULL, NULL, "cannot queue the change: %s", strerror(-r));
}

/* A spec error: 400 with "body:LINE:COLUMN: FIELD: message", the field, and
 * line and column as numbers (0 when not known). */
static void reply_spec_error(struct stoke_httpd_req *req, const struct stoke_diag *d)
{
    char msg[768];
    int err = 0;
    stoke_diag_format(d, msg, sizeof(msg));
    json_object *o = json_object_new_object();
    if (o) {
        jadd(o, "error", jstr(msg), &err);
        if (d->field[0])
            jadd(o, "field", jstr(d->field), &err);
        else
            jnull(o, "field", &err);
        jadd(o, "line", ju64(d->line), &err);
        jadd(o, "column", ju64(d->column), &err);
        if (err < 0) {
            json_object_put(o);
            o = NULL;
        }
    }
    stoke_httpd_reply_json(req, 400, NULL, o);
}

static void on_put_done(const struct fnset_put_result *res, void *data)
{
    char name[sizeof(((struct pending *)0)->name)];
    struct api *a;
    struct stoke_httpd_req *req = pending_done(data, &a, name);

    if (res->err == -EINVAL) {
        reply_spec_error(req, res->diag);
        return;
    }
    if (res->err == -EEXIST) {
        stoke_httpd_reply_error(req, 409, NULL, "metadata.name", "%s", res->diag->message);
        return;
    }
    if (res->err == -ECANCELED) {
        stoke_httpd_reply_error(req, 503, RETRY_AFTER, NULL, "the controller is shutting down");
        return;
    }
    if (res->err < 0) {
        stoke_httpd_reply_error(req, 500, NULL, NULL, "%s", res->diag->message);
        return;
    }
    struct function *fn = find_live(a, name);
    json_object *o = fn ? function_json(fn) : NULL;
    json_object *warnings = json_object_new_array();
    int err = o && warnings ? 0 : -ENOMEM;
    for (size_t i = 0; err == 0 && i < res->n_warnings; i++) {
        json_object *w = jstr(res->warnings[i]);
        if (!w || json_object_array_add(warnings, w) < 0) {
            json_object_put(w);
            err = -ENOMEM;
        }
    }
    if (err == 0) {
        jadd(o, "result",
             jstr(res->created   ? "created"
                  : res->changed ? "configured"
                                 : "unchanged"),
             &err);
        jadd(o, "warnings", warnings, &err);
        warnings = NULL;
    }
    json_object_put(warnings);
    if (err < 0) {
        json_object_put(o);
        o = NULL;
    }
    stoke_httpd_reply_json(req, res->created ? 201 : 200, NULL, o);
}

static void put_one(struct api *a, struct stoke_httpd_req *req, const char *name)
{
    if (!stoke_is_valid_name(name)) {
        stoke_httpd_reply_error(req, 400, NULL, "name",
                                "\"%s\" is not a function name (a DNS label: [a-z0-9-], 1..63 "
                                "characters, starting with a letter)",
                                name);
        return;
    }
    struct pending *p = pending_new(a, req, name);
    if (!p)
        return;
    struct fnset_op *op = NULL;
    int r = fnset_put(a->fs, name, req->body, req->body_len, on_put_done, p, &op);
    pending_start(p, op, r);
}

static void on_delete_done(int err, void *data)
{
    char name[sizeof(((struct pending *)0)->name)];
    struct api *a;
    struct stoke_httpd_req *req = pending_done(data, &a, name);

    if (err == 0) {
        api_logs_function_gone(a->logs, name);
        stoke_httpd_reply_json(req, 200, NULL, jpair("name", name, "result", "deleted"));
    } else if (err == -ENOENT) {
        not_found(req, name);
    } else if (err == -ECANCELED) {
        stoke_httpd_reply_error(req, 503, RETRY_AFTER, NULL, "the controller is shutting down");
    } else {
        stoke_httpd_reply_error(req, 500, NULL, NULL, "cannot remove the spec of \"%s\": %s", name,
                                strerror(-err));
    }
}

static void delete_one(struct api *a, struct stoke_httpd_req *req, const char *name)
{
    if (!stoke_is_valid_name(name)) {
        not_found(req, name);
        return;
    }
    struct pending *p = pending_new(a, req, name);
    if (!p)
        return;
    struct fnset_op *op = NULL;
    int r = fnset_delete(a->fs, name, on_delete_done, p, &op);
    pending_start(p, op, r);
}

static void get_version(struct stoke_httpd_req *req)
{
    stoke_httpd_reply_json(req, 200, NULL, jpair("version", STOKE_VERSION, "api", "v1"));
}

static bool method_ok(struct stoke_httpd_req *req, unsigned allowed, const char *allow_header)
{
    if (req->method >= 0 && req->method < 32 && (allowed & (1u << req->method)))
        return true;
    stoke_httpd_reply_error(req, 405, allow_header, NULL, "method %s not allowed here",
                            llhttp_method_name((llhttp_method_t)req->method));
    return false;
}

#define M(m) (1u << (m))

/* 503 while there is no functions directory yet, or the controller adopts
 * its containers or stops. */
static bool ready(struct api *a, struct stoke_httpd_req *req)
{
    const char *leader = "";
    if (a->leading && !a->leading(&leader, a->leading_data) && !a->c->stopping) {
        /* A follower knows no functions: the leader does. */
        stoke_httpd_reply_error(req, 503, RETRY_AFTER, NULL,
                                "this controller follows; the leader is %s: ask it",
                                leader[0] ? leader : "not known yet");
        return false;
    }
    if ((a->fs || (a->read_only && a->serving)) && !a->c->adopting && !a->c->stopping)
        return true;
    stoke_httpd_reply_error(req, 503, RETRY_AFTER, NULL,
                            a->c->stopping ? "the controller is shutting down"
                                           : "the controller is starting");
    return false;
}

/* Errors the transport finds are JSON like the endpoints'. */
static void on_error(struct stoke_httpd_req *req, int status, const char *extra, const char *field,
                     const char *msg, void *data)
{
    (void)data;
    stoke_httpd_reply_error(req, status, extra, field, "%s", msg);
}

static void handle(struct stoke_httpd_req *req, void *data)
{
    struct api *a = data;
    const char *path = req->path;

    if (strncmp(path, API_PREFIX, strlen(API_PREFIX)) != 0) {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such path");
        return;
    }
    path += strlen(API_PREFIX);
    if (strcmp(path, "version") == 0) {
        if (method_ok(req, M(HTTP_GET), "Allow: GET\r\n"))
            get_version(req);
        return;
    }
    if (strcmp(path, "functions") == 0 || strcmp(path, "functions/") == 0) {
        if (method_ok(req, M(HTTP_GET), "Allow: GET\r\n") && ready(a, req))
            get_list(a, req);
        return;
    }
    if (strncmp(path, "functions/", 10) != 0) {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such path");
        return;
    }
    path += 10;
    const char *slash = strchr(path, '/');
    size_t nlen = slash ? (size_t)(slash - path) : strlen(path);
    const char *sub = slash ? slash + 1 : "";
    char name[STOKE_NAME_MAX + 2];
    if (nlen == 0 || strchr(sub, '/')) {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such path");
        return;
    }
    /* Longer than any name: kept cut, so it is refused as a name below. */
    if (nlen >= sizeof(name))
        nlen = sizeof(name) - 1;
    memcpy(name, path, nlen);
    name[nlen] = '\0';

    if (*sub == '\0') {
        if (!method_ok(req, M(HTTP_GET) | M(HTTP_PUT) | M(HTTP_DELETE),
                       "Allow: GET, PUT, DELETE\r\n"))
            return;
        if (a->read_only && req->method != HTTP_GET) {
            /* Leader or follower alike: the change belongs in the Function. */
            stoke_httpd_reply_error(req, 405, "Allow: GET\r\n", NULL, "%s", a->read_only);
            return;
        }
        if (!ready(a, req))
            return;
        if (req->method == HTTP_GET)
            get_one(a, req, name, false);
        else if (req->method == HTTP_PUT)
            put_one(a, req, name);
        else
            delete_one(a, req, name);
    } else if (strcmp(sub, "status") == 0) {
        if (method_ok(req, M(HTTP_GET), "Allow: GET\r\n") && ready(a, req))
            get_one(a, req, name, true);
    } else if (strcmp(sub, "logs") == 0) {
        if (method_ok(req, M(HTTP_GET), "Allow: GET\r\n") && ready(a, req))
            api_logs_serve(a->logs, req, name);
    } else {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such path");
    }
}

/* ---- life ---------------------------------------------------------------- */

int api_new(struct ctrl *c, const struct api_config *cfg, struct api **ret)
{
    struct api *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->c = c;
    stoke_list_init(&a->pending);
    a->leading = cfg->leading;
    a->leading_data = cfg->leading_data;
    a->read_only = cfg->read_only ? strdup(cfg->read_only) : NULL;
    int r = cfg->read_only && !a->read_only ? -ENOMEM : api_logs_new(c, &a->logs);
    if (r < 0) {
        free(a->read_only);
        free(a);
        return r;
    }
    struct stoke_httpd_config hc = {
        .unix_path = cfg->unix_path,
        .unix_gid = cfg->unix_gid,
        .tcp = cfg->tcp,
        .token = cfg->token,
        .headers = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        .limits = api_limits,
        .handler = handle,
        .on_error = on_error,
        .data = a,
    };
    const char *what = "";
    /* Never on TCP without a token. */
    r = cfg->tcp && (!cfg->token || !*cfg->token) ? -EINVAL
                                                  : stoke_httpd_new(c->loop, &hc, &a->http, &what);
    if (r < 0) {
        stoke_error(NULL, r, "admin API: cannot listen on %s", what);
        api_logs_free(a->logs);
        free(a->read_only);
        free(a);
        return r;
    }
    if (cfg->unix_path)
        stoke_info(NULL, "admin API on unix:%s", cfg->unix_path);
    if (cfg->tcp) {
        char addr[128];
        stoke_addr_format(cfg->tcp, addr, sizeof(addr));
        stoke_info(NULL, "admin API on %s (bearer token required)", addr);
    }
    *ret = a;
    return 0;
}

void api_set_fnset(struct api *a, struct fnset *fs)
{
    a->fs = fs;
}

void api_set_serving(struct api *a, bool serving)
{
    if (a)
        a->serving = serving;
}

void api_stop_streams(struct api *a)
{
    if (a)
        api_logs_stop(a->logs);
}

void api_close(struct api *a)
{
    if (!a)
        return;
    /* Connections close with their requests: each pending PUT or DELETE is
     * forgotten by on_pending_abort(), each log stream ends. */
    api_logs_stop(a->logs);
    stoke_httpd_close(a->http);
    api_logs_free(a->logs);
    free(a->read_only);
    free(a);
}
