/* The Docker engine backend (controller/backend.h): one container per
 * replica, over the engine client (stoke/engine.h). Everything that knows
 * the engine's API, its JSON, its labels and its quirks lives here: the
 * container's config (image, env, labels, limits, network, port), the port
 * range of the replicas' addresses, freezing through the container's
 * freezer cgroup (libcgroup) with the engine's pause as the fallback, the
 * event stream and the CPU and memory read from cgroups.
 *
 * Replicas run with host networking and listen on 127.0.0.1:$PORT, a port
 * allocated here from the configured range (dk_create, port_alloc): their
 * address is known before the create call. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "stoke/cgusage.h"
#include "stoke/engine.h"
#include "stoke/freezer.h"
#include "stoke/log.h"

#define LABEL_INSTANCE "io.stoke.instance"

struct docker {
    struct backend b;
    uv_loop_t *loop;
    struct stoke_engine *engine;
    struct backend_docker_config cfg;
    uint8_t *ports_used; /* one byte per port of the range */
    unsigned port_cursor;
    bool freezer_ok;    /* idle replicas are frozen through their cgroup */
    bool fallback_said; /* the engine's pause was used instead: said once */
    bool usage_warned;  /* a replica's cgroup was not found: said once */
    bool abandoned;     /* dk_abandon(): no more removals or stops */
};

/* What the backend keeps of each replica (backend_replica.priv). */
struct dreplica {
    struct docker *d;
    uint16_t port;
    struct stoke_freezer freezer;
    bool frozen;        /* frozen through its cgroup by us (thaw before any engine call) */
    bool engine_paused; /* paused through the engine's pause (the fallback) */
    /* Usage: the cgroup of the container's current run. */
    struct stoke_cgroup cg;
    bool has_cg;
    bool lost;      /* cg went away during this run (it exited) */
    bool cg_fresh;  /* found since the last read: its counter starts over */
    uint64_t limit; /* the cgroup's memory limit, or 0 */
    /* The operation in flight. */
    struct backend_replica *r;
    backend_cb cb;
    void *cb_data;
};

static struct docker *to_docker(struct backend *b)
{
    return stoke_container_of(b, struct docker, b);
}

/* ---- ports --------------------------------------------------------------- */

static bool port_is_free(uint16_t port)
{
    /* A replica binds 127.0.0.1:port when it starts (on the host network
     * itself, on the bridge the engine for it); check that nothing else
     * holds it now. One bind() is a cheap, non-blocking call. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static int port_alloc(struct docker *d, uint16_t *ret)
{
    unsigned span = (unsigned)(d->cfg.port_max - d->cfg.port_min) + 1;
    for (unsigned k = 0; k < span; k++) {
        unsigned i = (d->port_cursor + k) % span;
        uint16_t port = (uint16_t)(d->cfg.port_min + i);
        if (d->ports_used[i] || !port_is_free(port))
            continue;
        d->ports_used[i] = 1;
        d->port_cursor = i + 1;
        *ret = port;
        return 0;
    }
    return -EADDRINUSE;
}

static void port_free(struct docker *d, uint16_t port)
{
    if (port >= d->cfg.port_min && port <= d->cfg.port_max)
        d->ports_used[port - d->cfg.port_min] = 0;
}

/* The replica's name and address from its port (create and adoption). */
static void name_replica(struct backend_replica *r, const char *revision, uint16_t port)
{
    snprintf(r->name, sizeof(r->name), "stoke-%s-%.8s-%05u", r->function, revision, port);
    snprintf(r->addr, sizeof(r->addr), "127.0.0.1:%u", port);
}

/* ---- one operation at a time per replica --------------------------------- */

static struct dreplica *dreplica_get(struct docker *d, struct backend_replica *r)
{
    if (!r->priv) {
        struct dreplica *p = calloc(1, sizeof(*p));
        if (!p)
            return NULL;
        p->d = d;
        r->priv = p;
    }
    struct dreplica *p = r->priv;
    p->r = r;
    return p;
}

static void op_arm(struct dreplica *p, backend_cb cb, void *data)
{
    p->cb = cb;
    p->cb_data = data;
}

/* An engine call on the replica's container by id; the backend's callback
 * once it is done. */
static int engine_call(struct dreplica *p,
                       int (*call)(struct stoke_engine *, const char *, stoke_engine_cb, void *),
                       stoke_engine_cb done, backend_cb cb, void *data)
{
    stoke_engine_next_key(p->d->engine, p->r->function);
    int e = call(p->d->engine, p->r->id, done, p);
    if (e == 0)
        op_arm(p, cb, data);
    return e;
}

static void op_done(struct dreplica *p, int err, const char *message, const char *how,
                    enum backend_state state)
{
    struct backend_result res = {
        .err = err, .message = message ? message : "", .how = how ? how : "", .state = state};
    backend_cb cb = p->cb;
    p->cb = NULL;
    cb(&res, p->cb_data);
}

/* An engine call's result passed on as it is. */
static void on_engine_done(const struct stoke_engine_result *res, void *data)
{
    op_done(data, res->err, res->message, NULL, BACKEND_OTHER);
}

/* Thaws a replica we froze through its cgroup, before any engine call on
 * it: a frozen process cannot act on SIGTERM, so a stop would wait out its
 * whole grace period. The cgroup is gone when the container is. */
static void thaw_before_engine(struct dreplica *p)
{
    if (!p->frozen)
        return;
    p->frozen = false;
    int e = stoke_freezer_set(&p->freezer, false);
    if (e < 0 && e != -ENOENT)
        stoke_warn(p->r->function, e, "cannot thaw replica %.12s through its cgroup (%s)", p->r->id,
                   p->freezer.path);
}

/* A call whose result is passed on as it is (not about one replica). */
struct cb_op {
    backend_cb cb;
    backend_event_cb on_event; /* watch */
    backend_log_cb on_log;     /* logs */
    void *data;
};

static struct cb_op *cb_op_new(backend_cb cb, void *data)
{
    struct cb_op *op = calloc(1, sizeof(*op));
    if (op)
        *op = (struct cb_op){.cb = cb, .data = data};
    return op;
}

static void on_forward(const struct stoke_engine_result *res, void *data)
{
    struct cb_op op = *(struct cb_op *)data;
    free(data);
    struct backend_result out = {.err = res->err, .message = res->message, .how = ""};
    op.cb(&out, op.data);
}

/* ---- replica operations -------------------------------------------------- */

static void on_created(const struct stoke_engine_result *res, void *data)
{
    struct dreplica *p = data;
    if (res->err == 0)
        snprintf(p->r->id, sizeof(p->r->id), "%s", res->id ? res->id : "");
    else if ((res->http_status < 400 || res->http_status >= 500) &&
             strlen(p->r->name) < sizeof(p->r->id))
        /* No answer (a connection cut, a timeout) or a server error: the
         * engine may have made the container all the same. Its name stands
         * for its id, so that the failed replica's removal removes it, or
         * learns from a 404 that there is none. (A name too long for the
         * id, of a function named with more than 43 characters, is not
         * covered.) */
        snprintf(p->r->id, sizeof(p->r->id), "%s", p->r->name);
    op_done(p, res->err, res->message, NULL, BACKEND_CREATED);
}

static int dk_create(struct backend *b, struct backend_replica *r, const struct stoke_spec *s,
                     const char *revision, backend_cb cb, void *data)
{
    struct docker *d = to_docker(b);
    struct dreplica *p = dreplica_get(d, r);
    char **env = NULL;
    size_t n_env = 0;
    int e = -ENOMEM;
    if (!p)
        return -ENOMEM;
    if (p->port == 0) {
        e = port_alloc(d, &p->port);
        if (e < 0)
            return e;
        name_replica(r, revision, p->port);
    }
    e = -ENOMEM;
    env = calloc(s->env_len + 4, sizeof(*env));
    if (!env)
        goto out;
    for (size_t i = 0; i < s->env_len; i++) {
        if (asprintf(&env[n_env], "%s=%s", s->env[i].name, s->env[i].value) < 0)
            goto out;
        n_env++;
    }
    /* What stoke tells every replica, like Knative's K_SERVICE/K_REVISION.
     * On the bridge it listens on the spec's port in its own namespace and
     * p->port is where the engine publishes it on 127.0.0.1; on the host
     * network it listens on p->port itself. */
    bool host_net = s->network == STOKE_NETWORK_HOST;
    if (asprintf(&env[n_env], "PORT=%u", host_net ? p->port : s->port) < 0)
        goto out;
    n_env++;
    if (asprintf(&env[n_env], "STOKE_FUNCTION=%s", s->name) < 0)
        goto out;
    n_env++;
    if (asprintf(&env[n_env], "STOKE_REVISION=%s", revision) < 0)
        goto out;
    n_env++;
    if (asprintf(&env[n_env], "STOKE_REPLICA=%s", r->name) < 0)
        goto out;
    n_env++;

    char port[8];
    snprintf(port, sizeof(port), "%u", p->port);
    const struct stoke_label labels[] = {
        {"io.stoke.managed", "true"},    {"io.stoke.function", s->name},
        {"io.stoke.revision", revision}, {LABEL_INSTANCE, d->cfg.instance},
        {"io.stoke.port", port},
    };
    const struct stoke_container_config cfg = {
        .name = r->name,
        .image = s->image,
        .env = (const char *const *)env,
        .env_len = n_env,
        .labels = labels,
        .labels_len = STOKE_ARRAY_SIZE(labels),
        .network_mode = host_net ? "host" : "bridge",
        .container_port = s->port,
        .host_port = p->port,
        .memory_bytes = s->resources.memory_bytes,
        .cpu_millis = s->resources.cpu_millis,
        .pids = s->resources.pids,
        .read_only_rootfs = s->read_only_rootfs,
    };
    stoke_engine_next_key(d->engine, r->function);
    e = stoke_engine_create(d->engine, &cfg, on_created, p);
    if (e == 0)
        op_arm(p, cb, data);
out:
    for (size_t i = 0; i < n_env; i++)
        free(env[i]);
    free(env);
    return e;
}

static void on_started(const struct stoke_engine_result *res, void *data)
{
    struct dreplica *p = data;
    if (res->err == 0)
        p->engine_paused = false;
    op_done(p, res->err, res->message, NULL, BACKEND_RUNNING);
}

static int dk_start(struct backend *b, struct backend_replica *r, backend_cb cb, void *data)
{
    struct dreplica *p = dreplica_get(to_docker(b), r);
    return p ? engine_call(p, stoke_engine_start, on_started, cb, data) : -ENOMEM;
}

static void on_engine_paused(const struct stoke_engine_result *res, void *data)
{
    struct dreplica *p = data;
    if (res->err == 0)
        p->engine_paused = true;
    op_done(p, res->err, res->message, "through the engine", BACKEND_PAUSED);
}

/* The cgroup could not be written: the engine's pause, and its unpause to
 * wake it (about 28 ms slower). Never both ways on one replica: an engine
 * cannot unpause what was thawed behind its back (stoke/freezer.h). */
static int pause_by_engine(struct dreplica *p, int why)
{
    struct docker *d = p->d;
    /* Only worth a warning when the cgroup was tried (not --pause-with
     * engine, nor a host where libcgroup finds no cgroups: said at start). */
    if (!d->fallback_said && d->freezer_ok)
        stoke_warn(p->r->function, why,
                   "cannot freeze replica %.12s through its cgroup: pausing through the engine "
                   "instead; waking will take the engine's unpause (said once)",
                   p->r->id);
    d->fallback_said = d->fallback_said || d->freezer_ok;
    stoke_engine_next_key(d->engine, p->r->function);
    return stoke_engine_pause(d->engine, p->r->id, on_engine_paused, p);
}

static void on_freeze_inspected(const struct stoke_engine_result *res, void *data)
{
    struct dreplica *p = data;
    struct stoke_container_state st;
    int e = res->err;
    if (e == 0)
        e = stoke_engine_state_parse(res->json, &st);
    if (e == 0 && (!st.running || st.paused))
        e = -ESRCH;
    if (e < 0) {
        op_done(p, e, res->err < 0 ? res->message : "not running", NULL, BACKEND_OTHER);
        return;
    }
    e = stoke_freezer_find(st.pid, &p->freezer);
    if (e == 0)
        e = stoke_freezer_set(&p->freezer, true);
    if (e == 0) {
        p->frozen = true;
        op_done(p, 0, NULL, "cgroup frozen", BACKEND_FROZEN);
        return;
    }
    e = pause_by_engine(p, e);
    if (e < 0)
        op_done(p, e, "cannot pause through the engine", NULL, BACKEND_OTHER);
}

static int dk_freeze(struct backend *b, struct backend_replica *r, backend_cb cb, void *data)
{
    struct docker *d = to_docker(b);
    struct dreplica *p = dreplica_get(d, r);
    if (!p)
        return -ENOMEM;
    /* The pid, for its cgroup; off the request path, like the freeze. */
    stoke_engine_next_key(d->engine, r->function);
    int e = d->freezer_ok ? stoke_engine_inspect(d->engine, r->id, on_freeze_inspected, p) : -1;
    if (e < 0)
        e = pause_by_engine(p, d->freezer_ok ? e : -ENOTSUP);
    if (e == 0)
        op_arm(p, cb, data);
    return e;
}

static int dk_thaw(struct backend *b, struct backend_replica *r, backend_cb cb, void *data,
                   const char **ret_how)
{
    struct dreplica *p = dreplica_get(to_docker(b), r);
    if (!p)
        return -ENOMEM;
    if (p->frozen) {
        /* The fast path: one write to the freezer. */
        *ret_how = "thaw";
        p->frozen = false;
        int e = stoke_freezer_set(&p->freezer, false);
        if (e < 0)
            stoke_debug(r->function, "cannot thaw replica %.12s (%s): %s", r->id, p->freezer.path,
                        uv_err_name(e));
        return e < 0 ? e : 1;
    }
    *ret_how = "unpause";
    return engine_call(p, stoke_engine_unpause, on_started, cb, data);
}

static void on_stopped(const struct stoke_engine_result *res, void *data)
{
    struct dreplica *p = data;
    int err = res->err == -EALREADY ? 0 : res->err; /* stopped already */
    if (err == 0)
        p->engine_paused = false;
    op_done(p, err, res->message, NULL, BACKEND_STOPPED);
}

static int dk_stop(struct backend *b, struct backend_replica *r, unsigned grace_s, backend_cb cb,
                   void *data)
{
    struct dreplica *p = dreplica_get(to_docker(b), r);
    if (!p)
        return -ENOMEM;
    thaw_before_engine(p);
    if (p->d->abandoned)
        return -ECANCELED;
    stoke_engine_next_key(p->d->engine, r->function);
    int e = stoke_engine_stop(p->d->engine, r->id, grace_s, on_stopped, p);
    if (e == 0)
        op_arm(p, cb, data);
    return e;
}

static int remove_container(struct dreplica *p)
{
    if (p->d->abandoned)
        return -ECANCELED;
    /* Force: SIGKILL. The reconciler drained it first. */
    stoke_engine_next_key(p->d->engine, p->r->function);
    return stoke_engine_remove(p->d->engine, p->r->id, true, on_engine_done, p);
}

/* The engine's unpause before its removal: an urgent call, ahead of every
 * removal waiting, so that a shutdown cut short leaves none paused. */
static void on_unpaused_to_remove(const struct stoke_engine_result *res, void *data)
{
    struct dreplica *p = data;
    if (res->err == 0)
        p->engine_paused = false;
    int e = remove_container(p);
    if (e < 0)
        op_done(p, e, e == -ECANCELED ? "shutdown cut short" : "cannot remove", NULL,
                BACKEND_OTHER);
}

static int dk_remove(struct backend *b, struct backend_replica *r, backend_cb cb, void *data)
{
    struct dreplica *p = dreplica_get(to_docker(b), r);
    if (!p)
        return -ENOMEM;
    /* Even after dk_abandon(): none is left frozen. */
    thaw_before_engine(p);
    int e;
    if (p->engine_paused) {
        stoke_engine_next_key(p->d->engine, r->function);
        e = stoke_engine_unpause(p->d->engine, r->id, on_unpaused_to_remove, p);
    } else {
        e = remove_container(p);
    }
    if (e == 0)
        op_arm(p, cb, data);
    return e;
}

static void dk_abandon(struct backend *b)
{
    struct docker *d = to_docker(b);
    d->abandoned = true;
    unsigned n = stoke_engine_cancel_housekeeping(d->engine);
    stoke_debug(NULL, "%u engine calls not sent", n);
}

/* A running container may be one we froze before a restart: the engine
 * calls it running, its freezer says otherwise. */
static void on_inspected(const struct stoke_engine_result *res, void *data)
{
    struct dreplica *p = data;
    struct stoke_container_state st;
    enum backend_state state = BACKEND_RUNNING;
    if (res->err == 0 && stoke_engine_state_parse(res->json, &st) == 0 && st.running &&
        !st.paused && stoke_freezer_find(st.pid, &p->freezer) == 0 &&
        stoke_freezer_get(&p->freezer) == 1) {
        p->frozen = true;
        state = BACKEND_FROZEN;
    }
    op_done(p, res->err, res->message, NULL, state);
}

static int dk_inspect(struct backend *b, struct backend_replica *r, backend_cb cb, void *data)
{
    struct docker *d = to_docker(b);
    if (!d->freezer_ok)
        return -ENOTSUP; /* nothing we froze: the engine's state is the truth */
    struct dreplica *p = dreplica_get(d, r);
    return p ? engine_call(p, stoke_engine_inspect, on_inspected, cb, data) : -ENOMEM;
}

static void dk_note(struct backend *b, struct backend_replica *r, enum backend_event_kind kind)
{
    (void)b;
    struct dreplica *p = r->priv;
    if (!p || (kind != BACKEND_EV_EXITED && kind != BACKEND_EV_GONE))
        return;
    p->frozen = false;
    p->engine_paused = false;
}

static void dk_forget(struct backend *b, struct backend_replica *r)
{
    struct dreplica *p = r->priv;
    if (!p)
        return;
    port_free(to_docker(b), p->port);
    free(p);
    r->priv = NULL;
}

/* ---- lists and adoption ---------------------------------------------------- */

struct list_op {
    struct docker *d;
    backend_list_cb cb;
    void *data;
};

static enum backend_state state_of(const char *s)
{
    if (strcmp(s, "running") == 0)
        return BACKEND_RUNNING;
    if (strcmp(s, "paused") == 0)
        return BACKEND_PAUSED;
    if (strcmp(s, "exited") == 0)
        return BACKEND_STOPPED;
    if (strcmp(s, "created") == 0)
        return BACKEND_CREATED;
    return BACKEND_OTHER;
}

/* A listed container as stoke's struct, with room for what it points to. */
struct listed_buf {
    char id[65];
    char addr[32];
};

static void on_listed(const struct stoke_engine_result *res, void *data)
{
    struct list_op *op = data;
    struct backend_result out = {.err = res->err, .message = res->message, .how = ""};
    struct stoke_container_summary s;
    struct listed_buf *bufs = NULL;
    struct backend_listed *ls = NULL;
    size_t n = 0;
    if (res->err == 0) {
        while (stoke_engine_list_get(res->json, n, &s) == 0)
            n++;
        bufs = calloc(n ? n : 1, sizeof(*bufs));
        ls = calloc(n ? n : 1, sizeof(*ls));
        if (!bufs || !ls) {
            out.err = -ENOMEM;
            out.message = "out of memory";
            n = 0;
        }
    }
    for (size_t i = 0; i < n; i++) {
        (void)stoke_engine_list_get(res->json, i, &s);
        const char *port = stoke_engine_label_get(&s, "io.stoke.port");
        memcpy(bufs[i].id, s.id, sizeof(bufs[i].id));
        if (port)
            snprintf(bufs[i].addr, sizeof(bufs[i].addr), "127.0.0.1:%s", port);
        ls[i] = (struct backend_listed){
            .id = bufs[i].id,
            .function = stoke_engine_label_get(&s, "io.stoke.function"),
            .revision = stoke_engine_label_get(&s, "io.stoke.revision"),
            .addr = bufs[i].addr,
            .state = state_of(s.state),
        };
    }
    op->cb(&out, ls, n, op->data);
    free(ls);
    free(bufs);
    free(op);
}

static int dk_list(struct backend *b, backend_list_cb cb, void *data)
{
    struct docker *d = to_docker(b);
    struct list_op *op = malloc(sizeof(*op));
    if (!op)
        return -ENOMEM;
    *op = (struct list_op){.d = d, .cb = cb, .data = data};
    int e = stoke_engine_list(d->engine, LABEL_INSTANCE, d->cfg.instance, on_listed, op);
    if (e < 0)
        free(op);
    return e;
}

static int dk_adopt(struct backend *b, struct backend_replica *r, const struct backend_listed *l)
{
    struct docker *d = to_docker(b);
    const char *colon = l->addr ? strrchr(l->addr, ':') : NULL;
    uint64_t port;
    if (!colon || strncmp(l->addr, "127.0.0.1:", 10) != 0 ||
        stoke_parse_u64(colon + 1, &port) < 0 || port < d->cfg.port_min || port > d->cfg.port_max ||
        d->ports_used[port - d->cfg.port_min])
        return -EADDRINUSE;
    struct dreplica *p = dreplica_get(d, r);
    if (!p)
        return -ENOMEM;
    p->port = (uint16_t)port;
    d->ports_used[port - d->cfg.port_min] = 1;
    p->engine_paused = l->state == BACKEND_PAUSED;
    snprintf(r->id, sizeof(r->id), "%s", l->id);
    name_replica(r, l->revision, p->port);
    return 0;
}

static int dk_remove_listed(struct backend *b, const struct backend_listed *l, backend_cb cb,
                            void *data)
{
    struct cb_op *op = cb_op_new(cb, data);
    if (!op)
        return -ENOMEM;
    stoke_engine_next_key(to_docker(b)->engine, l->function);
    int e = stoke_engine_remove(to_docker(b)->engine, l->id, true, on_forward, op);
    if (e < 0)
        free(op);
    return e;
}

/* ---- the engine's event stream -------------------------------------------- */

static void on_engine_event(const struct stoke_container_event *ev, void *data)
{
    struct cb_op *op = data;
    struct backend_event out = {.id = ev->id, .what = ev->action, .exit_code = ev->exit_code};
    if (strcmp(ev->action, "oom") == 0)
        out.kind = BACKEND_EV_OOM;
    else if (strcmp(ev->action, "die") == 0)
        out.kind = BACKEND_EV_EXITED;
    else if (strcmp(ev->action, "destroy") == 0)
        out.kind = BACKEND_EV_GONE;
    else
        out.kind = BACKEND_EV_OTHER;
    op->on_event(&out, op->data);
}

static int dk_watch(struct backend *b, backend_event_cb on_event, backend_cb on_end, void *data)
{
    struct docker *d = to_docker(b);
    struct cb_op *op = cb_op_new(on_end, data);
    if (!op)
        return -ENOMEM;
    op->on_event = on_event;
    int e = stoke_engine_events(d->engine, LABEL_INSTANCE, d->cfg.instance, on_engine_event,
                                on_forward, op);
    if (e < 0)
        free(op);
    return e;
}

/* ---- logs ------------------------------------------------------------------- */

static void on_log_data(int stream, const char *bytes, size_t len, void *data)
{
    struct cb_op *op = data;
    op->on_log(stream, bytes, len, op->data);
}

static int dk_logs(struct backend *b, const char *id, const struct backend_logs_opts *opts,
                   backend_log_cb on_data, backend_cb on_end, void *data, struct backend_logs **ret)
{
    struct cb_op *op = cb_op_new(on_end, data);
    if (!op)
        return -ENOMEM;
    op->on_log = on_data;
    const struct stoke_engine_logs_opts eo = {.follow = opts->follow,
                                              .timestamps = opts->timestamps,
                                              .tail = opts->tail,
                                              .since_ms = opts->since_ms};
    struct stoke_engine_logs *h = NULL;
    int e = stoke_engine_logs(to_docker(b)->engine, id, &eo, on_log_data, on_forward, op, &h);
    if (e < 0) {
        free(op);
        return e;
    }
    /* The backend's handle is the engine's: no state of ours to keep. */
    *ret = (struct backend_logs *)h;
    return 0;
}

static void dk_logs_pause(struct backend_logs *l, bool pause)
{
    stoke_engine_logs_pause((struct stoke_engine_logs *)l, pause);
}

static void dk_logs_cancel(struct backend_logs *l)
{
    stoke_engine_logs_cancel((struct stoke_engine_logs *)l);
}

/* ---- usage from cgroups ------------------------------------------------------ */

/* Finds the replica's cgroup for its container's current run. */
static int find_cgroup(struct docker *d, struct backend_replica *r, struct dreplica *p)
{
    const char *hint = p->freezer.version == 1 ? p->freezer.path : NULL;
    int e = stoke_cgusage_find(r->id, hint, &p->cg);
    if (e < 0) {
        if (!d->usage_warned)
            stoke_warn(r->function, e,
                       "cannot find the cgroup of replica %.12s: its CPU and memory count as 0 "
                       "(said once for all replicas)",
                       r->id);
        d->usage_warned = true;
        return e;
    }
    p->has_cg = true;
    p->cg_fresh = true;
    if (stoke_cgusage_limit(&p->cg, &p->limit) < 0)
        p->limit = 0;
    return 0;
}

static int dk_usage(struct backend *b, struct backend_replica *r, enum backend_run run,
                    struct backend_usage *ret)
{
    struct docker *d = to_docker(b);
    struct dreplica *p = r->priv;
    if (!p || !backend_can(b, BACKEND_HAS_CGROUPS))
        return -ENOTSUP;
    if (run == BACKEND_RUN_NO) {
        p->has_cg = false;
        p->lost = false; /* the next run has a cgroup of its own */
        return -ENOENT;
    }
    /* Starting and stopping may be either: a cgroup is only looked for
     * while it surely runs. */
    if (!p->has_cg && (p->lost || run != BACKEND_RUN_SURELY || find_cgroup(d, r, p) < 0))
        return -ENOENT;
    struct stoke_cgusage s;
    int e = stoke_cgusage_read(&p->cg, &s);
    if (e < 0) {
        /* Gone (exited, or stopping): not looked for again in this run;
         * the next run has a new cgroup. */
        p->has_cg = false;
        p->lost = true;
        if (e != -ENOENT)
            stoke_debug(r->function, "cannot read the cgroup of replica %.12s (%s): %s", r->id,
                        p->cg.path, uv_err_name(e));
        return e;
    }
    ret->cpu_ns = s.cpu_ns;
    ret->cpu_restarted = p->cg_fresh;
    p->cg_fresh = false;
    ret->memory_bytes = s.memory_bytes;
    ret->limit_bytes = p->limit;
    return 0;
}

/* ---- the backend -------------------------------------------------------------- */

static int dk_ping(struct backend *b, backend_cb cb, void *data)
{
    struct cb_op *op = cb_op_new(cb, data);
    if (!op)
        return -ENOMEM;
    int e = stoke_engine_ping(to_docker(b)->engine, on_forward, op);
    if (e < 0)
        free(op);
    return e;
}

/* One engine counter family: a series per operation. */
static int engine_family(struct stoke_buf *out, const char *name, const char *help,
                         const uint64_t *counts)
{
    int r = stoke_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (int op = 0; op < STOKE_ENGINE_OPS; op++)
        r |= stoke_buf_printf(out, "%s{op=\"%s\"} %" PRIu64 "\n", name, stoke_engine_op_name(op),
                              counts[op]);
    return r;
}

static int dk_metrics(struct backend *b, struct stoke_buf *out)
{
    struct stoke_engine_stats st;
    stoke_engine_stats(to_docker(b)->engine, &st);
    int r = engine_family(out, "stoke_controller_engine_calls_total",
                          "Container engine API calls finished, by operation (an event stream "
                          "counts when it ends).",
                          st.calls);
    r |= engine_family(out, "stoke_controller_engine_errors_total",
                       "Container engine API calls that failed (engine error status, transport "
                       "error, timeout), by operation.",
                       st.errors);
    const struct {
        const char *name, *help;
        unsigned v;
    } g[] = {
        {"stoke_controller_engine_calls_in_flight", "Engine calls in flight now.", st.in_flight},
        {"stoke_controller_engine_calls_in_flight_max",
         "The most engine calls in flight at once since the controller started.", st.in_flight_max},
        {"stoke_controller_engine_calls_limit",
         "Engine calls in flight at most (--engine-concurrency).", st.limit},
        {"stoke_controller_engine_calls_queued",
         "Engine calls waiting for a place under the limit.", st.queued},
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(g); i++)
        r |= stoke_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %u\n", g[i].name, g[i].help,
                              g[i].name, g[i].name, g[i].v);
    return r;
}

static void on_engine_closed(void *data)
{
    struct docker *d = data;
    free(d->ports_used);
    free(d);
}

static void dk_close(struct backend *b)
{
    struct docker *d = to_docker(b);
    stoke_engine_close(d->engine, on_engine_closed, d);
}

static const struct backend_ops docker_ops = {
    .ping = dk_ping,
    .create = dk_create,
    .start = dk_start,
    .freeze = dk_freeze,
    .thaw = dk_thaw,
    .stop = dk_stop,
    .remove = dk_remove,
    .abandon = dk_abandon,
    .inspect = dk_inspect,
    .note = dk_note,
    .forget = dk_forget,
    .list = dk_list,
    .adopt = dk_adopt,
    .remove_listed = dk_remove_listed,
    .watch = dk_watch,
    .logs = dk_logs,
    .logs_pause = dk_logs_pause,
    .logs_cancel = dk_logs_cancel,
    .usage = dk_usage,
    .metrics = dk_metrics,
    .close = dk_close,
};

int backend_docker_new(uv_loop_t *loop, const struct backend_docker_config *cfg,
                       struct backend **ret)
{
    struct docker *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->loop = loop;
    d->cfg = *cfg;
    d->ports_used = calloc((size_t)(cfg->port_max - cfg->port_min) + 1, 1);
    if (!d->ports_used) {
        free(d);
        return -ENOMEM;
    }
    int r = stoke_engine_new(loop, cfg->docker_host, &d->engine);
    if (r < 0) {
        free(d->ports_used);
        free(d);
        return r;
    }
    if (cfg->max_inflight)
        stoke_engine_set_max_inflight(d->engine, cfg->max_inflight);
    /* The engine can always pause, stop and create without starting; the
     * cgroups decide how a pause is done and whether usage is measured. */
    d->b.ops = &docker_ops;
    d->b.name = "docker";
    d->b.what = "the container engine";
    d->b.caps =
        BACKEND_CAN_FREEZE | BACKEND_CAN_STOP_KEEP | BACKEND_CAN_PRECREATE | BACKEND_LISTS_OWN;
    int fr = stoke_freezer_init();
    if (fr == 0)
        d->b.caps |= BACKEND_HAS_CGROUPS;
    else
        stoke_warn(NULL, fr,
                   "libcgroup finds no cgroups: per-function CPU and memory metrics are off "
                   "(GB-seconds use the specs' memory limits)");
    d->freezer_ok = fr == 0 && !cfg->freeze_with_engine;
    if (fr < 0 && !cfg->freeze_with_engine)
        stoke_warn(NULL, fr,
                   "libcgroup finds no cgroups: idle replicas are paused through the engine");
    *ret = &d->b;
    return 0;
}
