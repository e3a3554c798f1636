/* The Kubernetes backend (controller/backend.h): one Pod per replica,
 * through the API server (stoke/kube.h). Everything that knows Pods lives
 * here: the pod's manifest (labels, the spec hash, the ownerReference to its
 * Function, the restricted security context, resources, env, port and
 * readiness probe), an informer of this instance's pods whose cache serves
 * lists and adoption, and the translation of the pods' changes into the
 * reconciler's events.
 *
 * A pod runs once it is created: create returns when the API server has
 * stored it, start completes once the pod runs and has an IP (its address
 * is the pod IP and the spec's port), or fails with the kubelet's reason
 * (an image that cannot be pulled, a container that cannot be created) or
 * after the start timeout. Pods have restartPolicy Never: a container that
 * exits makes the pod Failed, which is an EXITED event, and the reconciler
 * replaces it with back-off as on Docker. A pod deleted by someone else, or
 * evicted, is GONE. There is no freezer, no stopped pod and no pre-created
 * pod, and no per-pod cgroup to read: none of those capabilities (usage is
 * not measured). Logs are read through the API server's pods/log. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "stoke/json.h"
#include "stoke/kube.h"
#include "stoke/list.h"
#include "stoke/log.h"

#define L_MANAGED "stoke.dev/managed"
#define L_INSTANCE "stoke.dev/instance"
#define L_FUNCTION "stoke.dev/function"
#define L_REVISION "stoke.dev/revision"
#define A_SPEC_HASH "stoke.dev/spec-hash"
#define A_PORT "stoke.dev/port"
#define SCAN_MS 250
/* Grace beyond the request timeout for the process to exit after SIGTERM. */
#define GRACE_EXTRA_S 5

struct kube_be {
    struct backend b;
    uv_loop_t *loop;
    uint64_t walks; /* each_start() */
    struct stoke_kube *kube;
    struct backend_kube_config cfg;
    char *ns, *instance, *sa;
    struct stoke_kube_informer *pods;
    bool synced;
    uv_timer_t scan;
    struct stoke_list reps;  /* kreps: replicas created or adopted */
    struct stoke_list lists; /* list ops waiting for the cache */
    backend_event_cb on_event;
    backend_cb on_watch_end;
    void *watch_data;
    unsigned inflight; /* API requests with our callbacks */
    bool closing;
    bool scan_closed;
    uint64_t pods_created, pods_deleted, start_failures;
    uint64_t pods_unanswered; /* creates without an answer (kb_create) */
};

/* What the backend keeps of each replica (backend_replica.priv). */
struct krep {
    struct stoke_list node; /* kube_be.reps */
    struct kube_be *k;
    struct backend_replica *r;
    char uid[64];
    uint16_t port;
    bool said_exit, said_gone, deleted;
    /* start in flight: completes when the pod runs */
    backend_cb start_cb;
    void *start_data;
    uint64_t start_deadline_ms;
    uint64_t walked; /* the each_start() walk that called it last */
};

struct req {
    struct kube_be *k;
    struct krep *p; /* create */
    backend_cb cb;
    void *data;
};

struct list_op {
    struct stoke_list node;
    backend_list_cb cb;
    void *data;
};

static struct kube_be *to_kube(struct backend *b)
{
    return stoke_container_of(b, struct kube_be, b);
}

static void kube_free(struct kube_be *k)
{
    free(k->ns);
    free(k->instance);
    free(k->sa);
    free(k);
}

static void on_scan_closed(uv_handle_t *h)
{
    struct kube_be *k = h->data;
    k->scan_closed = true;
    if (k->inflight == 0)
        kube_free(k);
}

/* ---- pods as JSON ------------------------------------------------------------ */

static const char *pod_name(json_object *pod)
{
    return stoke_json_str(stoke_json_obj(pod, "metadata"), "name");
}

static json_object *pod_by_name(struct kube_be *k, const char *name)
{
    char key[512];
    if (!k->pods || snprintf(key, sizeof(key), "%s/%s", k->ns, name) >= (int)sizeof(key))
        return NULL;
    return stoke_json_obj(stoke_kube_informer_cache(k->pods), key);
}

/* The first container's status, or NULL. */
static json_object *container_status(json_object *pod)
{
    json_object *cs = json_object_object_get(stoke_json_obj(pod, "status"), "containerStatuses");
    if (!cs || !json_object_is_type(cs, json_type_array) || json_object_array_length(cs) == 0)
        return NULL;
    return json_object_array_get_idx(cs, 0);
}

enum pod_cond {
    POD_PENDING,
    POD_RUNNING,  /* phase Running, the container runs, the pod has an IP */
    POD_STUCK,    /* the kubelet cannot start it (image, container config) */
    POD_FINISHED, /* Failed or Succeeded, or its container terminated */
    POD_DELETING, /* deletionTimestamp set */
};

struct pod_info {
    enum pod_cond cond;
    const char *ip;
    int exit_code;
    bool oom;
    char why[256];
};

static void pod_classify(json_object *pod, struct pod_info *pi)
{
    json_object *md = stoke_json_obj(pod, "metadata"), *st = stoke_json_obj(pod, "status");
    json_object *cs = container_status(pod), *state = stoke_json_obj(cs, "state");
    json_object *term = stoke_json_obj(state, "terminated"),
                *wait = stoke_json_obj(state, "waiting");
    const char *phase = stoke_json_str(st, "phase");
    *pi =
        (struct pod_info){.cond = POD_PENDING, .ip = stoke_json_str(st, "podIP"), .exit_code = -1};
    if (json_object_object_get(md, "deletionTimestamp")) {
        pi->cond = POD_DELETING;
        snprintf(pi->why, sizeof(pi->why), "pod is being deleted");
        return;
    }
    if (term || (phase && (strcmp(phase, "Failed") == 0 || strcmp(phase, "Succeeded") == 0))) {
        const char *reason = term ? stoke_json_str(term, "reason") : stoke_json_str(st, "reason");
        const char *msg = term ? stoke_json_str(term, "message") : stoke_json_str(st, "message");
        json_object *code = json_object_object_get(term, "exitCode");
        pi->cond = POD_FINISHED;
        pi->exit_code = code ? json_object_get_int(code) : -1;
        pi->oom = reason && strcmp(reason, "OOMKilled") == 0;
        snprintf(pi->why, sizeof(pi->why), "pod %s%s%s%s%s", phase ? phase : "terminated",
                 reason ? ": " : "", reason ? reason : "", msg ? ": " : "", msg ? msg : "");
        return;
    }
    if (wait) {
        static const char *const fatal[] = {
            "ErrImagePull",      "ImagePullBackOff",           "ErrImageNeverPull",
            "InvalidImageName",  "CreateContainerConfigError", "CreateContainerError",
            "RunContainerError", "CrashLoopBackOff",
        };
        const char *reason = stoke_json_str(wait, "reason"), *msg = stoke_json_str(wait, "message");
        for (size_t i = 0; reason && i < STOKE_ARRAY_SIZE(fatal); i++) {
            if (strcmp(reason, fatal[i]) == 0) {
                pi->cond = POD_STUCK;
                snprintf(pi->why, sizeof(pi->why), "%s%s%s", reason, msg ? ": " : "",
                         msg ? msg : "");
                return;
            }
        }
    }
    if (phase && strcmp(phase, "Running") == 0 && pi->ip && *pi->ip &&
        stoke_json_obj(state, "running"))
        pi->cond = POD_RUNNING;
}

/* The port of a pod of ours (its annotation), or 0. */
static uint16_t pod_port(json_object *pod)
{
    const char *s =
        stoke_json_str(stoke_json_obj(stoke_json_obj(pod, "metadata"), "annotations"), A_PORT);
    uint64_t v;
    if (!s || stoke_parse_u64(s, &v) < 0 || v == 0 || v > 65535)
        return 0;
    return (uint16_t)v;
}

static void format_addr(char *buf, size_t size, const char *ip, uint16_t port)
{
    if (strchr(ip, ':'))
        snprintf(buf, size, "[%s]:%u", ip, port);
    else
        snprintf(buf, size, "%s:%u", ip, port);
}

/* A memory quantity as people write it (the API server keeps it as sent):
 * 128Mi, not 134217728. */
static void format_memory(char *buf, size_t size, uint64_t bytes)
{
    static const char *const units[] = {"Ki", "Mi", "Gi", "Ti"};
    int u = -1;
    while (u < 3 && bytes >= 1024 && bytes % 1024 == 0) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, size, "%" PRIu64 "%s", bytes, u < 0 ? "" : units[u]);
}

/* Building JSON: each helper adds to `o` (which owns what it is given) and
 * returns 0 or -ENOMEM; `o` NULL (a failed child()) fails too, so a
 * manifest is built without checking each step and checked once. */
static int put(json_object *o, const char *key, json_object *v)
{
    if (!o) {
        json_object_put(v);
        return -ENOMEM;
    }
    return stoke_json_add(o, key, v);
}

static int add_str(json_object *o, const char *key, const char *v)
{
    return put(o, key, json_object_new_string(v));
}

static int add_int(json_object *o, const char *key, int64_t v)
{
    return put(o, key, json_object_new_int64(v));
}

static int add_bool(json_object *o, const char *key, bool v)
{
    return put(o, key, json_object_new_boolean(v));
}

/* A new object (or array) under `key` of `o`, borrowed (o owns it); NULL
 * when out of memory. */
static json_object *child(json_object *o, const char *key, bool array)
{
    json_object *c = array ? json_object_new_array() : json_object_new_object();
    if (!o || !c || json_object_object_add(o, key, c) < 0) {
        json_object_put(c);
        return NULL;
    }
    return c;
}

/* A new object appended to array `a`, borrowed; NULL when out of memory. */
static json_object *append(json_object *a)
{
    json_object *c = json_object_new_object();
    if (!a || !c || json_object_array_add(a, c) < 0) {
        json_object_put(c);
        return NULL;
    }
    return c;
}

static int add_env(json_object *env, const char *name, const char *value)
{
    json_object *e = append(env);
    return add_str(e, "name", name) | add_str(e, "value", value);
}

/* The restricted Pod Security profile's container settings. */
static int restricted_context(json_object *ctr, bool read_only)
{
    json_object *sc = child(ctr, "securityContext", false);
    json_object *drop = child(child(sc, "capabilities", false), "drop", true);
    int r = add_bool(sc, "allowPrivilegeEscalation", false);
    r |= drop ? json_object_array_add(drop, json_object_new_string("ALL")) : -ENOMEM;
    r |= add_bool(sc, "readOnlyRootFilesystem", read_only);
    r |= add_bool(sc, "runAsNonRoot", true);
    r |= add_str(child(sc, "seccompProfile", false), "type", "RuntimeDefault");
    return r;
}

/* The Pod of a replica of `s` at `revision`, named `name`; owned, or NULL. */
static json_object *pod_manifest(struct kube_be *k, const struct stoke_spec *s,
                                 const char *revision, const char *name, const char *owner_uid)
{
    json_object *pod = json_object_new_object();
    char port[8], buf[64];
    snprintf(port, sizeof(port), "%u", s->port);
    int r = add_str(pod, "apiVersion", "v1") | add_str(pod, "kind", "Pod");

    json_object *md = child(pod, "metadata", false);
    r |= add_str(md, "name", name) | add_str(md, "namespace", k->ns);
    json_object *labels = child(md, "labels", false);
    r |= add_str(labels, L_MANAGED, "true") | add_str(labels, L_INSTANCE, k->instance);
    r |= add_str(labels, L_FUNCTION, s->name) | add_str(labels, L_REVISION, revision);
    json_object *ann = child(md, "annotations", false);
    r |= add_str(ann, A_SPEC_HASH, revision) | add_str(ann, A_PORT, port);
    /* Deleting the Function deletes its pods (the garbage collector). */
    json_object *owner = append(child(md, "ownerReferences", true));
    r |= add_str(owner, "apiVersion", "stoke.dev/v1") | add_str(owner, "kind", "Function");
    r |= add_str(owner, "name", s->name) | add_str(owner, "uid", owner_uid);
    r |= add_bool(owner, "controller", true) | add_bool(owner, "blockOwnerDeletion", true);

    json_object *spec = child(pod, "spec", false);
    json_object *ctr = append(child(spec, "containers", true));
    r |= add_str(ctr, "name", "function") | add_str(ctr, "image", s->image);
    r |= add_str(ctr, "imagePullPolicy", "IfNotPresent");
    json_object *env = child(ctr, "env", true);
    for (size_t i = 0; i < s->env_len; i++)
        r |= add_env(env, s->env[i].name, s->env[i].value);
    /* What stoke tells every replica, as on Docker. */
    r |= add_env(env, "PORT", port) | add_env(env, "STOKE_FUNCTION", s->name);
    r |= add_env(env, "STOKE_REVISION", revision) | add_env(env, "STOKE_REPLICA", name);
    json_object *cport = append(child(ctr, "ports", true));
    r |= add_str(cport, "name", "http") | add_int(cport, "containerPort", s->port);
    r |= add_str(cport, "protocol", "TCP");
    /* Requests = limits: the spec's resources are what the pod gets. */
    json_object *res = child(ctr, "resources", false);
    json_object *req = child(res, "requests", false), *lim = child(res, "limits", false);
    snprintf(buf, sizeof(buf), "%" PRIu64 "m", s->resources.cpu_millis);
    r |= add_str(req, "cpu", buf) | add_str(lim, "cpu", buf);
    format_memory(buf, sizeof(buf), s->resources.memory_bytes);
    r |= add_str(req, "memory", buf) | add_str(lim, "memory", buf);
    json_object *probe = child(ctr, "readinessProbe", false);
    json_object *how = child(probe, s->readiness.path ? "httpGet" : "tcpSocket", false);
    if (s->readiness.path)
        r |= add_str(how, "path", s->readiness.path);
    r |= add_int(how, "port", s->port);
    uint64_t period_s = (s->readiness.period_ms + 999) / 1000;
    r |= add_int(probe, "periodSeconds", (int64_t)period_s);
    r |= restricted_context(ctr, s->read_only_rootfs);

    r |= add_str(spec, "restartPolicy", "Never");
    r |= add_bool(spec, "automountServiceAccountToken", false);
    r |= add_bool(spec, "enableServiceLinks", false);
    /* network: host is the opt-in it is on Docker: the node's network (a
     * namespace enforcing Pod Security "restricted" refuses such a pod, and
     * the Function's status says so). */
    if (s->network == STOKE_NETWORK_HOST)
        r |= add_bool(spec, "hostNetwork", true);
    if (k->sa)
        r |= add_str(spec, "serviceAccountName", k->sa);
    /* Drained before it is deleted, but a request may still run its whole
     * timeout when a pod is deleted by someone else. */
    r |= add_int(spec, "terminationGracePeriodSeconds",
                 (int64_t)((s->timeout_ms + 999) / 1000) + GRACE_EXTRA_S);
    json_object *psc = child(spec, "securityContext", false);
    r |= add_bool(psc, "runAsNonRoot", true);
    r |= add_str(child(psc, "seccompProfile", false), "type", "RuntimeDefault");
    if (r != 0) {
        json_object_put(pod);
        return NULL;
    }
    return pod;
}

/* ---- replicas ---------------------------------------------------------------- */

static struct krep *krep_get(struct kube_be *k, struct backend_replica *r)
{
    if (!r->priv) {
        struct krep *p = calloc(1, sizeof(*p));
        if (!p)
            return NULL;
        p->k = k;
        stoke_list_insert_tail(&k->reps, &p->node);
        r->priv = p;
    }
    struct krep *p = r->priv;
    p->r = r;
    return p;
}

static struct krep *krep_find(struct kube_be *k, const char *name)
{
    for (struct stoke_list *a = k->reps.next; a != &k->reps; a = a->next) {
        struct krep *p = stoke_container_of(a, struct krep, node);
        if (p->r && p->r->id[0] && strcmp(p->r->id, name) == 0)
            return p;
    }
    return NULL;
}

static void on_pods_gone(const char *rv, void *data)
{
    (void)data;
    stoke_info(NULL, "pods: resourceVersion %s is gone (410 Gone): relisting", rv);
}

static void on_scan(uv_timer_t *t);

/* Runs the scan soon (from the loop, never inside the caller's call). */
static void kick(struct kube_be *k)
{
    if (!k->closing)
        uv_timer_start(&k->scan, on_scan, 0, SCAN_MS);
}

static struct req *req_new(struct kube_be *k, backend_cb cb, void *data)
{
    struct req *q = calloc(1, sizeof(*q));
    if (q)
        *q = (struct req){.k = k, .cb = cb, .data = data};
    return q;
}

/* A request's end. A closed backend is freed once the last one is back
 * (the caller's callback still runs: it needs only the request). */
static void req_end(struct kube_be *k)
{
    k->inflight--;
    if (k->closing && k->inflight == 0 && k->scan_closed)
        kube_free(k);
}

/* A result passed on as it is (ping). */
static void on_forward(const struct stoke_kube_result *res, void *data)
{
    struct req *q = data;
    struct backend_result out = {.err = res->err, .message = res->status.message, .how = ""};
    req_end(q->k);
    q->cb(&out, q->data);
    free(q);
}

static void on_created(const struct stoke_kube_result *res, void *data)
{
    struct req *q = data;
    struct kube_be *k = q->k;
    struct backend_result out = {.err = res->err, .message = res->status.message, .how = ""};
    /* No answer, or not all of it (the connection was cut, a timeout; a
     * 504: the API server's own timeout): the API server may have created
     * the pod. A 4xx or another 5xx refused it. */
    bool unknown = res->http_status == 0 || res->http_status / 100 == 2 || res->http_status == 504;
    if (res->err < 0 && unknown && res->err != -ECANCELED && !k->closing) {
        /* Taken as created under the name we gave it, its uid learnt from
         * the informer: the start waits for it to be seen running, and a
         * pod never seen fails the start at its deadline and is deleted by
         * name. A retry under a new name could leave this one running
         * beside it, a duplicate nobody routes to. */
        stoke_warn(q->p->r->function, res->err,
                   "creating pod %s: no answer (%s); waiting for the informer to see it",
                   q->p->r->name, res->status.message);
        snprintf(q->p->r->id, sizeof(q->p->r->id), "%.64s", q->p->r->name);
        q->p->uid[0] = '\0';
        out.err = 0;
        k->pods_unanswered++;
    } else if (res->err == 0 && !k->closing) {
        json_object *md = stoke_json_obj(res->json, "metadata");
        const char *uid = stoke_json_str(md, "uid");
        const char *name = stoke_json_str(md, "name");
        snprintf(q->p->uid, sizeof(q->p->uid), "%s", uid ? uid : "");
        /* The name we gave it (the API server keeps it). */
        snprintf(q->p->r->id, sizeof(q->p->r->id), "%.64s", name ? name : q->p->r->name);
        k->pods_created++;
    }
    out.state = BACKEND_CREATED;
    req_end(k);
    q->cb(&out, q->data);
    free(q);
}

static void random_suffix(char out[6])
{
    static const char al[] = "bcdfghjklmnpqrstvwxz2456789";
    unsigned char rnd[5];
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) < 0) {
        uint64_t t = uv_hrtime();
        memcpy(rnd, &t, sizeof(rnd));
    }
    for (int i = 0; i < 5; i++)
        out[i] = al[rnd[i] % (sizeof(al) - 1)];
    out[5] = '\0';
}

static int kb_create(struct backend *b, struct backend_replica *r, const struct stoke_spec *s,
                     const char *revision, backend_cb cb, void *data)
{
    struct kube_be *k = to_kube(b);
    const char *uid = k->cfg.owner_uid ? k->cfg.owner_uid(s->name, k->cfg.owner_data) : NULL;
    if (!uid)
        return -ENOENT; /* no Function object to own it (deleted meanwhile) */
    struct krep *p = krep_get(k, r);
    if (!p)
        return -ENOMEM;
    char sfx[6];
    random_suffix(sfx);
    /* At most 63 characters (a DNS label, and the replica's id): the labels,
     * not the name, say whose pod it is. */
    snprintf(r->name, sizeof(r->name), "%.48s-%.8s-%s", s->name, revision, sfx);
    p->port = s->port;
    json_object *pod = pod_manifest(k, s, revision, r->name, uid);
    struct req *q = req_new(k, cb, data);
    if (!pod || !q) {
        json_object_put(pod);
        free(q);
        return -ENOMEM;
    }
    q->p = p;
    int e = stoke_kube_create(k->kube, &stoke_kube_pods, k->ns, pod, on_created, q);
    json_object_put(pod);
    if (e < 0) {
        free(q);
        return e;
    }
    k->inflight++;
    return 0;
}

static void start_done(struct krep *p, int err, const char *message)
{
    struct backend_result res = {
        .err = err, .message = message ? message : "", .how = "", .state = BACKEND_RUNNING};
    backend_cb cb = p->start_cb;
    p->start_cb = NULL;
    if (err < 0)
        p->k->start_failures++;
    cb(&res, p->start_data);
}

/* A start in flight: done once the pod runs with an IP. */
static void start_check(struct krep *p, uint64_t now)
{
    json_object *pod = pod_by_name(p->k, p->r->id);
    struct pod_info pi;
    char msg[400];
    if (p->deleted) {
        start_done(p, -ENOENT, "the pod was deleted before it ran");
        return;
    }
    if (!pod) {
        if (now >= p->start_deadline_ms)
            start_done(p, -ETIMEDOUT, "the pod was not seen running in time");
        return;
    }
    pod_classify(pod, &pi);
    switch (pi.cond) {
    case POD_RUNNING:
        format_addr(p->r->addr, sizeof(p->r->addr), pi.ip, p->port);
        start_done(p, 0, NULL);
        return;
    case POD_STUCK:
    case POD_FINISHED:
    case POD_DELETING:
        snprintf(msg, sizeof(msg), "pod %s: %s", p->r->id, pi.why);
        start_done(p, pi.cond == POD_DELETING ? -ENOENT : -ESRCH, msg);
        return;
    case POD_PENDING:
        break;
    }
    if (now >= p->start_deadline_ms) {
        snprintf(msg, sizeof(msg), "pod %s not running %" PRIu64 " ms after its creation", p->r->id,
                 p->k->cfg.start_timeout_ms);
        start_done(p, -ETIMEDOUT, msg);
    }
}

/* Calls fn(p, arg) once on each replica with a start in flight. Its
 * callback may forget any replica (this one or another: the reconciler
 * acts on it), so the walk starts over after each call. */
static void each_start(struct kube_be *k, void (*fn)(struct krep *p, uint64_t arg), uint64_t arg)
{
    uint64_t walk = ++k->walks;
    for (;;) {
        struct krep *p = NULL;
        for (struct stoke_list *a = k->reps.next; a != &k->reps && !p; a = a->next) {
            struct krep *q = stoke_container_of(a, struct krep, node);
            if (q->start_cb && q->walked != walk)
                p = q;
        }
        if (!p)
            return;
        p->walked = walk;
        fn(p, arg);
    }
}

static void start_cancel(struct krep *p, uint64_t unused)
{
    (void)unused;
    start_done(p, -ECANCELED, "closing");
}

static int kb_start(struct backend *b, struct backend_replica *r, backend_cb cb, void *data)
{
    struct kube_be *k = to_kube(b);
    struct krep *p = r->priv;
    if (!p || !r->id[0])
        return -ENOENT;
    /* A pod runs once created: this waits for it (the scan checks). */
    p->start_cb = cb;
    p->start_data = data;
    p->start_deadline_ms = uv_now(k->loop) + k->cfg.start_timeout_ms;
    kick(k);
    return 0;
}

static int kb_unsupported(struct backend *b, struct backend_replica *r, backend_cb cb, void *data)
{
    (void)b, (void)r, (void)cb, (void)data;
    return -ENOTSUP;
}

static int kb_thaw(struct backend *b, struct backend_replica *r, backend_cb cb, void *data,
                   const char **ret_how)
{
    (void)b, (void)r, (void)cb, (void)data;
    *ret_how = "none";
    return -ENOTSUP;
}

static int kb_stop(struct backend *b, struct backend_replica *r, unsigned grace_s, backend_cb cb,
                   void *data)
{
    (void)grace_s;
    return kb_unsupported(b, r, cb, data);
}

static void on_deleted(const struct stoke_kube_result *res, void *data)
{
    struct req *q = data;
    struct kube_be *k = q->k;
    int err = res->err;
    /* A different pod of that name (the uid precondition): ours is gone. */
    if (err == -ESTALE)
        err = -ENOENT;
    if (err == 0)
        k->pods_deleted++;
    struct backend_result out = {.err = err, .message = res->status.message, .how = ""};
    req_end(k);
    q->cb(&out, q->data);
    free(q);
}

/* DELETE with the uid as precondition: never someone else's pod of the same
 * name. The pod's grace period lets its process finish. */
static int delete_pod(struct kube_be *k, const char *name, const char *uid, backend_cb cb,
                      void *data)
{
    struct req *q = req_new(k, cb, data);
    if (!q)
        return -ENOMEM;
    const struct stoke_kube_delete_opts o = {.uid = uid && *uid ? uid : NULL};
    int e = stoke_kube_delete(k->kube, &stoke_kube_pods, k->ns, name, &o, on_deleted, q);
    if (e < 0) {
        free(q);
        return e;
    }
    k->inflight++;
    return 0;
}

static int kb_remove(struct backend *b, struct backend_replica *r, backend_cb cb, void *data)
{
    struct kube_be *k = to_kube(b);
    struct krep *p = r->priv;
    return delete_pod(k, r->id, p ? p->uid : NULL, cb, data);
}

static void kb_note(struct backend *b, struct backend_replica *r, enum backend_event_kind kind)
{
    (void)b, (void)r, (void)kind;
}

static void kb_forget(struct backend *b, struct backend_replica *r)
{
    (void)b;
    struct krep *p = r->priv;
    if (!p)
        return;
    stoke_list_remove(&p->node);
    free(p);
    r->priv = NULL;
}

/* ---- lists and adoption ---------------------------------------------------- */

struct listed_buf {
    char addr[64];
};

static void serve_list(struct kube_be *k, struct list_op *op)
{
    json_object *cache = stoke_kube_informer_cache(k->pods);
    size_t n = (size_t)json_object_object_length(cache), i = 0;
    struct backend_listed *ls = calloc(n ? n : 1, sizeof(*ls));
    struct listed_buf *bufs = calloc(n ? n : 1, sizeof(*bufs));
    struct backend_result out = {.err = 0, .message = "", .how = ""};
    if (!ls || !bufs) {
        out.err = -ENOMEM;
        out.message = "out of memory";
        n = 0;
    } else {
        json_object_object_foreach(cache, key, pod)
        {
            (void)key;
            json_object *labels = stoke_json_obj(stoke_json_obj(pod, "metadata"), "labels");
            struct pod_info pi;
            pod_classify(pod, &pi);
            uint16_t port = pod_port(pod);
            if (pi.ip && *pi.ip && port)
                format_addr(bufs[i].addr, sizeof(bufs[i].addr), pi.ip, port);
            ls[i] = (struct backend_listed){
                .id = pod_name(pod),
                .function = stoke_json_str(labels, L_FUNCTION),
                .revision = stoke_json_str(labels, L_REVISION),
                .addr = bufs[i].addr,
                .state = pi.cond == POD_RUNNING ? BACKEND_RUNNING : BACKEND_OTHER,
            };
            i++;
        }
        n = i;
    }
    op->cb(&out, ls, n, op->data);
    free(ls);
    free(bufs);
}

static int kb_list(struct backend *b, backend_list_cb cb, void *data)
{
    struct kube_be *k = to_kube(b);
    struct list_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    op->cb = cb;
    op->data = data;
    /* Served from the informer's cache once it has listed (the scan). */
    stoke_list_insert_tail(&k->lists, &op->node);
    kick(k);
    return 0;
}

static int kb_adopt(struct backend *b, struct backend_replica *r, const struct backend_listed *l)
{
    struct kube_be *k = to_kube(b);
    json_object *pod = pod_by_name(k, l->id);
    if (strlen(l->id) >= sizeof(r->id))
        return -ENAMETOOLONG; /* not a name we give */
    if (!pod || !l->addr || !l->addr[0] || krep_find(k, l->id))
        return -EADDRINUSE;
    struct krep *p = krep_get(k, r);
    if (!p)
        return -ENOMEM;
    const char *uid = stoke_json_str(stoke_json_obj(pod, "metadata"), "uid");
    snprintf(p->uid, sizeof(p->uid), "%s", uid ? uid : "");
    p->port = pod_port(pod);
    snprintf(r->id, sizeof(r->id), "%s", l->id);
    snprintf(r->name, sizeof(r->name), "%s", l->id);
    snprintf(r->addr, sizeof(r->addr), "%s", l->addr);
    return 0;
}

static int kb_remove_listed(struct backend *b, const struct backend_listed *l, backend_cb cb,
                            void *data)
{
    struct kube_be *k = to_kube(b);
    json_object *pod = pod_by_name(k, l->id);
    const char *uid = stoke_json_str(stoke_json_obj(pod, "metadata"), "uid");
    return delete_pod(k, l->id, uid, cb, data);
}

/* ---- the pods' changes ------------------------------------------------------ */

static void emit(struct kube_be *k, enum backend_event_kind kind, const char *id, const char *what,
                 int exit_code, const char *addr)
{
    if (!k->on_event)
        return;
    struct backend_event ev = {
        .kind = kind, .id = id, .what = what, .exit_code = exit_code, .addr = addr};
    k->on_event(&ev, k->watch_data);
}

static void on_pod_event(enum stoke_kube_event_type type, json_object *pod, void *data)
{
    struct kube_be *k = data;
    const char *name = pod_name(pod);
    struct krep *p = name ? krep_find(k, name) : NULL;
    if (!p)
        return;
    if (!p->uid[0] && type != STOKE_KUBE_DELETED) {
        /* A create without an answer: the pod exists after all. */
        const char *uid = stoke_json_str(stoke_json_obj(pod, "metadata"), "uid");
        snprintf(p->uid, sizeof(p->uid), "%s", uid ? uid : "");
    }
    if (p->start_cb)
        kick(k); /* a start waits for this pod */
    if (type == STOKE_KUBE_DELETED) {
        p->deleted = true;
        if (!p->said_gone && !p->start_cb) {
            p->said_gone = true;
            emit(k, BACKEND_EV_GONE, name, "deleted", -1, NULL);
        }
        return;
    }
    if (p->start_cb)
        return; /* the start reports what happens before it runs */
    struct pod_info pi;
    pod_classify(pod, &pi);
    char addr[64];
    switch (pi.cond) {
    case POD_DELETING:
        if (!p->said_gone) {
            p->said_gone = true;
            emit(k, BACKEND_EV_GONE, name, "deleting", -1, NULL);
        }
        break;
    case POD_FINISHED:
        if (!p->said_exit) {
            p->said_exit = true;
            if (pi.oom)
                emit(k, BACKEND_EV_OOM, name, "oom", -1, NULL);
            emit(k, BACKEND_EV_EXITED, name, pi.why, pi.exit_code, NULL);
        }
        break;
    case POD_RUNNING:
        format_addr(addr, sizeof(addr), pi.ip, p->port);
        if (strcmp(addr, p->r->addr) != 0)
            emit(k, BACKEND_EV_ADDRESS, name, "address", -1, addr);
        break;
    default:
        break;
    }
}

static void on_pods_synced(void *data)
{
    struct kube_be *k = data;
    k->synced = true;
    kick(k);
}

static void on_pods_error(int err, const char *message, void *data)
{
    (void)data;
    stoke_warn(NULL, err, "pods: %s; the informer retries", message);
}

static void on_scan(uv_timer_t *t)
{
    struct kube_be *k = t->data;
    uint64_t now = uv_now(k->loop);
    if (k->synced) {
        while (!stoke_list_empty(&k->lists)) {
            struct list_op *op =
                stoke_container_of(stoke_list_first(&k->lists), struct list_op, node);
            stoke_list_remove(&op->node);
            serve_list(k, op);
            free(op);
        }
    }
    if (k->synced)
        each_start(k, start_check, now);
    bool waiting = false;
    for (struct stoke_list *a = k->reps.next; a != &k->reps; a = a->next)
        waiting |= stoke_container_of(a, struct krep, node)->start_cb != NULL;
    if (!waiting && stoke_list_empty(&k->lists))
        uv_timer_stop(t);
}

static int kb_watch(struct backend *b, backend_event_cb on_event, backend_cb on_end, void *data)
{
    struct kube_be *k = to_kube(b);
    /* The informer keeps its watch open itself (re-watch, relist on 410):
     * this stream ends only when the backend closes. */
    k->on_event = on_event;
    k->on_watch_end = on_end;
    k->watch_data = data;
    return 0;
}

/* A pod's log through the API server (pods/log, which proxies the node's
 * kubelet): the pod's one container, "function". The end's message is the
 * API server's (a pod gone: -ENOENT; a kubelet it cannot reach: -EIO). */
struct klogs {
    struct stoke_kube_logs *h;
    backend_log_cb on_data;
    backend_cb on_end;
    void *data;
};

static void on_logs_data(int stream, const char *bytes, size_t len, void *data)
{
    struct klogs *kl = data;
    kl->on_data(stream, bytes, len, kl->data);
}

static void on_logs_end(const struct stoke_kube_result *kr, void *data)
{
    struct klogs *kl = data;
    struct backend_result res = {.err = kr->err, .message = kr->status.message, .how = ""};
    kl->on_end(&res, kl->data);
    free(kl);
}

static int kb_logs(struct backend *b, const char *id, const struct backend_logs_opts *opts,
                   backend_log_cb on_data, backend_cb on_end, void *data, struct backend_logs **ret)
{
    struct kube_be *k = to_kube(b);
    struct stoke_kube_logs_opts ko = {.container = "function",
                                      .follow = opts->follow,
                                      .timestamps = opts->timestamps,
                                      .tail_lines = opts->tail};
    if (opts->since_ms) {
        /* pods/log takes a number of seconds before now: rounded up, so
         * nothing since then is left out. */
        struct timespec ts;
        (void)clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
        ko.since_seconds = opts->since_ms < now ? (now - opts->since_ms + 999) / 1000 : 1;
    }
    struct klogs *kl = calloc(1, sizeof(*kl));
    if (!kl)
        return -ENOMEM;
    kl->on_data = on_data;
    kl->on_end = on_end;
    kl->data = data;
    int e = stoke_kube_pod_logs(k->kube, k->ns, id, &ko, on_logs_data, on_logs_end, kl, &kl->h);
    if (e < 0) {
        free(kl);
        return e;
    }
    *ret = (struct backend_logs *)kl;
    return 0;
}

static void kb_logs_pause(struct backend_logs *l, bool pause)
{
    stoke_kube_logs_pause(((struct klogs *)l)->h, pause);
}

static void kb_logs_cancel(struct backend_logs *l)
{
    stoke_kube_logs_cancel(((struct klogs *)l)->h);
}

static int kb_usage(struct backend *b, struct backend_replica *r, enum backend_run run,
                    struct backend_usage *ret)
{
    (void)b, (void)r, (void)run, (void)ret;
    return -ENOTSUP; /* no cgroup of a pod to read here (metrics-server's job) */
}

static int kb_ping(struct backend *b, backend_cb cb, void *data)
{
    struct kube_be *k = to_kube(b);
    struct req *q = req_new(k, cb, data);
    if (!q)
        return -ENOMEM;
    int e = stoke_kube_request(k->kube, STOKE_KUBE_GET, "/version", NULL, on_forward, q);
    if (e < 0) {
        free(q);
        return e;
    }
    k->inflight++;
    return 0;
}

static int kb_metrics(struct backend *b, struct stoke_buf *out)
{
    struct kube_be *k = to_kube(b);
    struct stoke_kube_informer_stats st = {0};
    if (k->pods)
        stoke_kube_informer_stats(k->pods, &st);
    return stoke_buf_printf(
        out,
        "# HELP stoke_controller_kube_pods_total Pods created and deleted through the API "
        "server.\n# TYPE stoke_controller_kube_pods_total counter\n"
        "stoke_controller_kube_pods_total{op=\"create\"} %" PRIu64 "\n"
        "stoke_controller_kube_pods_total{op=\"delete\"} %" PRIu64 "\n"
        "# HELP stoke_controller_kube_start_failures_total Pods that did not run.\n"
        "# TYPE stoke_controller_kube_start_failures_total counter\n"
        "stoke_controller_kube_start_failures_total %" PRIu64 "\n"
        "# HELP stoke_controller_kube_pod_creates_unanswered_total Pod creations whose answer "
        "was lost (connection cut, timeout): taken as created, confirmed by the informer.\n"
        "# TYPE stoke_controller_kube_pod_creates_unanswered_total counter\n"
        "stoke_controller_kube_pod_creates_unanswered_total %" PRIu64 "\n"
        "# HELP stoke_controller_kube_pod_informer_total The pod informer's LISTs, WATCHes, "
        "410 Gone and errors.\n# TYPE stoke_controller_kube_pod_informer_total counter\n"
        "stoke_controller_kube_pod_informer_total{what=\"list\"} %" PRIu64 "\n"
        "stoke_controller_kube_pod_informer_total{what=\"watch\"} %" PRIu64 "\n"
        "stoke_controller_kube_pod_informer_total{what=\"gone\"} %" PRIu64 "\n"
        "stoke_controller_kube_pod_informer_total{what=\"error\"} %" PRIu64 "\n",
        k->pods_created, k->pods_deleted, k->start_failures, k->pods_unanswered, st.lists,
        st.watches, st.gone, st.errors);
}

static void kb_close(struct backend *b)
{
    struct kube_be *k = to_kube(b);
    k->closing = true;
    if (k->pods)
        stoke_kube_informer_stop(k->pods);
    k->pods = NULL;
    struct backend_result res = {.err = -ECANCELED, .message = "closing", .how = ""};
    while (!stoke_list_empty(&k->lists)) {
        struct list_op *op = stoke_container_of(stoke_list_first(&k->lists), struct list_op, node);
        stoke_list_remove(&op->node);
        op->cb(&res, NULL, 0, op->data);
        free(op);
    }
    each_start(k, start_cancel, 0);
    if (k->on_watch_end) {
        k->on_watch_end(&res, k->watch_data);
        k->on_watch_end = NULL;
    }
    k->on_event = NULL;
    uv_timer_stop(&k->scan);
    uv_close((uv_handle_t *)&k->scan, on_scan_closed);
}

static const struct backend_ops kube_ops = {
    .ping = kb_ping,
    .create = kb_create,
    .start = kb_start,
    .freeze = kb_unsupported,
    .thaw = kb_thaw,
    .stop = kb_stop,
    .remove = kb_remove,
    .inspect = kb_unsupported,
    .note = kb_note,
    .forget = kb_forget,
    .list = kb_list,
    .adopt = kb_adopt,
    .remove_listed = kb_remove_listed,
    .watch = kb_watch,
    .logs = kb_logs,
    .logs_pause = kb_logs_pause,
    .logs_cancel = kb_logs_cancel,
    .usage = kb_usage,
    .metrics = kb_metrics,
    .close = kb_close,
};

int backend_kube_new(uv_loop_t *loop, const struct backend_kube_config *cfg, struct backend **ret)
{
    struct kube_be *k = calloc(1, sizeof(*k));
    char selector[160];
    if (!k)
        return -ENOMEM;
    k->loop = loop;
    k->kube = cfg->kube;
    k->cfg = *cfg;
    k->ns = strdup(cfg->ns);
    k->instance = strdup(cfg->instance);
    k->sa = cfg->service_account ? strdup(cfg->service_account) : NULL;
    if (!k->ns || !k->instance || (cfg->service_account && !k->sa)) {
        kube_free(k);
        return -ENOMEM;
    }
    stoke_list_init(&k->reps);
    stoke_list_init(&k->lists);
    k->b.ops = &kube_ops;
    k->b.name = "kubernetes";
    k->b.what = "the Kubernetes API server";
    k->b.caps = 0; /* no freeze, no stopped or pre-created pods, no cgroups */
    snprintf(selector, sizeof(selector), L_MANAGED "=true," L_INSTANCE "=%s", k->instance);
    const struct stoke_kube_informer_opts io = {
        .res = &stoke_kube_pods,
        .ns = k->ns,
        .label_selector = selector,
        .on_event = on_pod_event,
        .on_synced = on_pods_synced,
        .on_error = on_pods_error,
        .on_gone = on_pods_gone,
        .data = k,
    };
    int r = stoke_kube_informer_start(k->kube, &io, &k->pods);
    if (r < 0) {
        kube_free(k);
        return r;
    }
    uv_timer_init(loop, &k->scan);
    k->scan.data = k;
    *ret = &k->b;
    return 0;
}
