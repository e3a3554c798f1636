/* The Function objects of a namespace as the controller's specs (on the
 * Kubernetes backend, instead of the functions directory), and their status
 * written back through the status subresource.
 *
 * Each object goes through the same parser as a file: the object's
 * apiVersion, kind, metadata.name and spec (JSON is YAML). A spec the parser
 * refuses changes nothing that runs: its error, with the field, goes into
 * status.lastError and the Ready condition is False with reason InvalidSpec.
 * A deleted Function is scaled to zero (its pods are its own: the garbage
 * collector deletes them as well). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kubefn.h"
#include "stoke/diag.h"
#include "stoke/json.h"
#include "stoke/log.h"

static const struct stoke_kube_resource functions_res = {
    .api = "/apis/stoke.dev/v1", .plural = "functions", .namespaced = true};

/* What we know of one Function object. */
struct kfn {
    struct stoke_list node;
    char name[STOKE_NAME_MAX + 1];
    int64_t generation;   /* of the object last seen */
    char spec_error[400]; /* the parser's refusal of that generation, or "" */
    bool patching;        /* a status patch in flight */
    char *written;        /* the status last written (JSON), or NULL */
    char cond[16];        /* the Ready condition's status last written */
    char since[32];       /* and its lastTransitionTime */
    bool gone;            /* deleted: freed once its patch is back */
};

struct kubefn {
    struct ctrl *c;
    struct stoke_kube *kube;
    char *ns, *url_prefix;
    struct stoke_kube_informer *inf;
    void (*on_synced)(struct ctrl *c);
    bool synced, loaded, closing;
    unsigned inflight;
    uint64_t rewrites; /* statuses another writer changed, written again */
    struct stoke_list fns;
};

static struct kfn *kfn_find(struct kubefn *kf, const char *name, bool add)
{
    for (struct stoke_list *a = kf->fns.next; a != &kf->fns; a = a->next) {
        struct kfn *f = stoke_container_of(a, struct kfn, node);
        if (!f->gone && strcmp(f->name, name) == 0)
            return f;
    }
    if (!add)
        return NULL;
    struct kfn *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    snprintf(f->name, sizeof(f->name), "%s", name);
    stoke_list_insert_tail(&kf->fns, &f->node);
    return f;
}

static void kfn_free(struct kfn *f)
{
    stoke_list_remove(&f->node);
    free(f->written);
    free(f);
}

static json_object *fn_object(struct kubefn *kf, const char *name)
{
    char key[320];
    snprintf(key, sizeof(key), "%s/%s", kf->ns, name);
    return stoke_json_obj(stoke_kube_informer_cache(kf->inf), key);
}

const char *kubefn_owner_uid(const char *name, void *data)
{
    struct kubefn *kf = data;
    json_object *o = fn_object(kf, name);
    return o && !json_object_object_get(stoke_json_obj(o, "metadata"), "deletionTimestamp")
               ? stoke_json_str(stoke_json_obj(o, "metadata"), "uid")
               : NULL;
}

/* Parses and applies one Function object. */
static void fn_apply(struct kubefn *kf, json_object *obj)
{
    json_object *md = stoke_json_obj(obj, "metadata");
    const char *name = stoke_json_str(md, "name");
    if (!name)
        return;
    struct kfn *f = kfn_find(kf, name, true);
    if (!f)
        return;
    json_object *gen = json_object_object_get(md, "generation");
    int64_t g = gen ? json_object_get_int64(gen) : 0;
    if (g == f->generation && f->generation != 0)
        return; /* a status or metadata change */
    f->generation = g;
    /* Only what stoke/v1 has: the rest of metadata and status are the API
     * server's. */
    json_object *doc = json_object_new_object(), *dmd = json_object_new_object();
    json_object *spec = json_object_object_get(obj, "spec");
    char file[320];
    struct stoke_spec s;
    struct stoke_diag d;
    int r = -ENOMEM;
    if (doc && dmd) {
        r = stoke_json_add(doc, "apiVersion",
                           json_object_new_string(stoke_json_str(obj, "apiVersion")
                                                      ? stoke_json_str(obj, "apiVersion")
                                                      : ""));
        r |= stoke_json_add(doc, "kind", json_object_new_string("Function"));
        r |= stoke_json_add(dmd, "name", json_object_new_string(name));
        r |= stoke_json_add(doc, "metadata", dmd);
        dmd = NULL;
        if (spec)
            r |= stoke_json_add(doc, "spec", json_object_get(spec));
    }
    json_object_put(dmd);
    if (r != 0) {
        json_object_put(doc);
        stoke_error(name, -ENOMEM, "cannot read the Function");
        return;
    }
    size_t len;
    const char *text = json_object_to_json_string_length(doc, JSON_C_TO_STRING_PLAIN, &len);
    snprintf(file, sizeof(file), "function %s/%s", kf->ns, name);
    memset(&d, 0, sizeof(d));
    r = stoke_spec_parse(text, len, file, &s, &d);
    json_object_put(doc);
    if (r < 0) {
        snprintf(f->spec_error, sizeof(f->spec_error), "%s%s%s", d.field, d.field[0] ? ": " : "",
                 d.message[0] ? d.message : strerror(-r));
        stoke_error(name, r, "Function %s/%s generation %" PRId64 " refused (%s)%s", kf->ns, name,
                    g, f->spec_error,
                    ctrl_function_find(kf->c, name) ? "; the running spec keeps serving" : "");
        return;
    }
    f->spec_error[0] = '\0';
    r = ctrl_function_apply(kf->c, &s);
    if (r < 0)
        stoke_error(name, r, "cannot apply the Function");
    stoke_spec_done(&s);
}

static void fn_delete(struct kubefn *kf, json_object *obj)
{
    const char *name = stoke_json_str(stoke_json_obj(obj, "metadata"), "name");
    struct kfn *f = name ? kfn_find(kf, name, false) : NULL;
    if (!name)
        return;
    struct function *fn = ctrl_function_find(kf->c, name);
    if ((!fn || fn->deleted) && !f)
        return; /* said already */
    stoke_info(name, "Function %s/%s deleted: scaling to zero", kf->ns, name);
    ctrl_function_delete(kf->c, name);
    if (f) {
        f->gone = true;
        if (!f->patching)
            kfn_free(f);
    }
}

/* Another writer changed the status we wrote (a stale write of its own, a
 * `kubectl patch --subresource=status`): ours is written again at the next
 * tick. Our own patches come back as they were written (the schema keeps
 * every field we write), so they compare equal; a status seen while our
 * patch is in flight is not judged. */
static void status_check(struct kubefn *kf, json_object *obj)
{
    const char *name = stoke_json_str(stoke_json_obj(obj, "metadata"), "name");
    struct kfn *f = name ? kfn_find(kf, name, false) : NULL;
    if (!f || f->patching || !f->written)
        return;
    json_object *mine = json_tokener_parse(f->written);
    json_object *theirs = json_object_object_get(obj, "status");
    bool same = mine && theirs && json_object_equal(mine, theirs);
    json_object_put(mine);
    if (same)
        return;
    stoke_warn(name, 0,
               "the status of Function %s/%s was changed by another writer: writing it again",
               kf->ns, name);
    free(f->written);
    f->written = NULL;
    kf->rewrites++;
}

static void fn_changed(struct kubefn *kf, enum stoke_kube_event_type type, json_object *obj)
{
    /* Being deleted (foreground deletion waits for its pods): deleted. */
    if (type == STOKE_KUBE_DELETED ||
        json_object_object_get(stoke_json_obj(obj, "metadata"), "deletionTimestamp"))
        fn_delete(kf, obj);
    else {
        fn_apply(kf, obj);
        if (type == STOKE_KUBE_MODIFIED)
            status_check(kf, obj);
    }
}

static void on_fn_event(enum stoke_kube_event_type type, json_object *obj, void *data)
{
    struct kubefn *kf = data;
    if (kf->loaded) /* before, kubefn_load() reads the cache */
        fn_changed(kf, type, obj);
}

static void on_fn_synced(void *data)
{
    struct kubefn *kf = data;
    if (kf->synced)
        return;
    kf->synced = true;
    kf->on_synced(kf->c);
}

static void on_fn_error(int err, const char *message, void *data)
{
    (void)data;
    stoke_warn(NULL, err, "functions: %s; the informer retries", message);
}

static void on_fn_gone(const char *rv, void *data)
{
    (void)data;
    stoke_info(NULL, "functions: resourceVersion %s is gone (410 Gone): relisting", rv);
}

int kubefn_metrics(const struct kubefn *kf, struct stoke_buf *out)
{
    struct stoke_kube_informer_stats st = {0};
    stoke_kube_informer_stats(kf->inf, &st);
    return stoke_buf_printf(
        out,
        "# HELP stoke_controller_kube_function_informer_total The Function informer's LISTs, "
        "WATCHes, 410 Gone and errors.\n"
        "# TYPE stoke_controller_kube_function_informer_total counter\n"
        "stoke_controller_kube_function_informer_total{what=\"list\"} %" PRIu64 "\n"
        "stoke_controller_kube_function_informer_total{what=\"watch\"} %" PRIu64 "\n"
        "stoke_controller_kube_function_informer_total{what=\"gone\"} %" PRIu64 "\n"
        "stoke_controller_kube_function_informer_total{what=\"error\"} %" PRIu64 "\n"
        "# HELP stoke_controller_kube_status_rewrites_total Function statuses written again "
        "because another writer changed them.\n"
        "# TYPE stoke_controller_kube_status_rewrites_total counter\n"
        "stoke_controller_kube_status_rewrites_total %" PRIu64 "\n",
        st.lists, st.watches, st.gone, st.errors, kf->rewrites);
}

int kubefn_load(struct ctrl *c)
{
    struct kubefn *kf = c->kubefn;
    json_object *cache = stoke_kube_informer_cache(kf->inf);
    kf->loaded = true;
    json_object_object_foreach(cache, key, obj)
    {
        (void)key;
        fn_changed(kf, STOKE_KUBE_ADDED, obj);
    }
    return 0;
}

/* ---- status ------------------------------------------------------------------ */

static void now_text(char buf[32])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void on_patched(const struct stoke_kube_result *res, void *data)
{
    struct kfn *f = data;
    f->patching = false;
    if (res->err < 0 && res->err != -ECANCELED) {
        stoke_warn(f->name, res->err, "cannot write the Function's status: %s",
                   res->status.message);
        free(f->written); /* written again at the next tick */
        f->written = NULL;
    }
    if (f->gone || res->err == -ECANCELED)
        kfn_free(f);
}

static int count_state(const struct function *fn, enum replica_state st)
{
    int n = 0;
    for (const struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next)
        n += stoke_container_of(b, const struct replica, node)->state == st;
    return n;
}

/* The status of `f` now; owned. */
static json_object *status_of(struct kubefn *kf, struct kfn *f)
{
    struct function *fn = ctrl_function_find(kf->c, f->name);
    json_object *st = json_object_new_object(), *conds = json_object_new_array();
    json_object *cond = json_object_new_object();
    const char *status, *reason;
    char message[512], url[512];
    const char *why = NULL;
    int ready = fn ? count_state(fn, R_READY) : 0;
    uint32_t desired = fn ? fn->desired : 0;
    const char *last_error = f->spec_error[0] ? f->spec_error : fn ? fn->last_error : "";
    if (!st || !conds || !cond) {
        json_object_put(st);
        json_object_put(conds);
        json_object_put(cond);
        return NULL;
    }
    enum stoke_idle idle = fn ? ctrl_idle_effective(kf->c, fn, &why) : STOKE_IDLE_REMOVE;
    if (f->spec_error[0]) {
        status = "False";
        reason = "InvalidSpec";
        snprintf(message, sizeof(message), "%s%s", f->spec_error,
                 fn ? " (the last valid spec keeps serving)" : "");
    } else if (!fn) {
        status = "Unknown";
        reason = "Pending";
        snprintf(message, sizeof(message), "not applied yet");
    } else if (fn->backoff_ms) {
        status = "False";
        reason = "ReplicaFailed";
        snprintf(message, sizeof(message), "%s", fn->last_error);
    } else if (ready > 0) {
        status = "True";
        reason = "Ready";
        snprintf(message, sizeof(message), "%d replica%s ready", ready, ready == 1 ? "" : "s");
    } else if (desired > 0) {
        status = "Unknown";
        reason = "Starting";
        snprintf(message, sizeof(message), "starting %" PRIu32 " replica%s", desired,
                 desired == 1 ? "" : "s");
    } else {
        status = "True";
        reason = "ScaledToZero";
        snprintf(message, sizeof(message), "no replica; the next request starts one");
    }
    if (why && fn && strlen(message) + 40 < sizeof(message))
        snprintf(message + strlen(message), sizeof(message) - strlen(message), "; idle: %s (%s)",
                 stoke_idle_names[idle], why);
    if (strcmp(f->cond, status) != 0 || !f->since[0]) {
        snprintf(f->cond, sizeof(f->cond), "%s", status);
        now_text(f->since);
    }
    int r = stoke_json_add(cond, "type", json_object_new_string("Ready"));
    r |= stoke_json_add(cond, "status", json_object_new_string(status));
    r |= stoke_json_add(cond, "reason", json_object_new_string(reason));
    r |= stoke_json_add(cond, "message", json_object_new_string(message));
    r |= stoke_json_add(cond, "lastTransitionTime", json_object_new_string(f->since));
    r |= stoke_json_add(cond, "observedGeneration", json_object_new_int64(f->generation));
    r |= json_object_array_add(conds, cond);
    cond = NULL;
    r |= stoke_json_add(st, "observedGeneration", json_object_new_int64(f->generation));
    r |= stoke_json_add(st, "desiredReplicas", json_object_new_int64(desired));
    r |= stoke_json_add(st, "readyReplicas", json_object_new_int64(ready));
    if (kf->url_prefix) {
        snprintf(url, sizeof(url), "%s%s/", kf->url_prefix, f->name);
        r |= stoke_json_add(st, "url", json_object_new_string(url));
    }
    r |= stoke_json_add(st, "lastError", json_object_new_string(last_error));
    r |= stoke_json_add(st, "conditions", conds);
    conds = NULL;
    json_object_put(cond);
    json_object_put(conds);
    if (r != 0) {
        json_object_put(st);
        return NULL;
    }
    return st;
}

void kubefn_write_status(struct kubefn *kf)
{
    if (!kf->loaded || kf->closing)
        return;
    for (struct stoke_list *a = kf->fns.next; a != &kf->fns; a = a->next) {
        struct kfn *f = stoke_container_of(a, struct kfn, node);
        if (f->patching || f->gone)
            continue;
        json_object *st = status_of(kf, f);
        if (!st)
            continue;
        const char *text = json_object_to_json_string_ext(st, JSON_C_TO_STRING_PLAIN);
        /* The transition time is in the text: an unchanged status is not
         * written again. */
        if (f->written && strcmp(f->written, text) == 0) {
            json_object_put(st);
            continue;
        }
        char *copy = strdup(text);
        json_object *patch = json_object_new_object();
        if (!copy || !patch || stoke_json_add(patch, "status", st) < 0) {
            free(copy);
            json_object_put(patch);
            if (!patch)
                json_object_put(st);
            continue;
        }
        int r = stoke_kube_patch(kf->kube, &functions_res, kf->ns, f->name, "status", patch,
                                 on_patched, f);
        json_object_put(patch);
        if (r < 0) {
            free(copy);
            continue;
        }
        free(f->written);
        f->written = copy;
        f->patching = true;
    }
}

int kubefn_new(struct ctrl *c, const struct kubefn_config *cfg, struct kubefn **ret)
{
    struct kubefn *kf = calloc(1, sizeof(*kf));
    if (!kf)
        return -ENOMEM;
    kf->c = c;
    kf->kube = cfg->kube;
    kf->on_synced = cfg->on_synced;
    kf->ns = strdup(cfg->ns);
    kf->url_prefix = cfg->url_prefix ? strdup(cfg->url_prefix) : NULL;
    stoke_list_init(&kf->fns);
    if (!kf->ns || (cfg->url_prefix && !kf->url_prefix)) {
        free(kf->ns);
        free(kf->url_prefix);
        free(kf);
        return -ENOMEM;
    }
    const struct stoke_kube_informer_opts io = {
        .res = &functions_res,
        .ns = kf->ns,
        .on_event = on_fn_event,
        .on_synced = on_fn_synced,
        .on_error = on_fn_error,
        .on_gone = on_fn_gone,
        .data = kf,
    };
    int r = stoke_kube_informer_start(kf->kube, &io, &kf->inf);
    if (r < 0) {
        free(kf->ns);
        free(kf->url_prefix);
        free(kf);
        return r;
    }
    *ret = kf;
    return 0;
}

/* Stops the informer; the records of patches still in flight are freed as
 * they come back (-ECANCELED when the client closes). */
void kubefn_close(struct kubefn *kf)
{
    if (!kf)
        return;
    stoke_kube_informer_stop(kf->inf);
    for (struct stoke_list *a = kf->fns.next; a != &kf->fns;) {
        struct kfn *f = stoke_container_of(a, struct kfn, node);
        a = a->next;
        f->gone = true;
        if (!f->patching)
            kfn_free(f);
        else
            stoke_list_remove(&f->node); /* off the list: freed by on_patched */
    }
    free(kf->ns);
    free(kf->url_prefix);
    free(kf);
}
