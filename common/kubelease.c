/* Leader election on a coordination.k8s.io/v1 Lease; see stoke/kube.h.
 *
 * Every retry period a candidate reads the Lease and decides
 * (stoke_kube_lease_decide()): a live lease of another holder is left alone;
 * a free or expired one is taken, ours renewed, each by a PUT carrying the
 * resourceVersion that was read (a POST when there is none), so of two
 * candidates that read the same version only one write succeeds: the other
 * gets 409 and follows. A leader whose renewal gets 409 (another writer
 * changed the Lease since it was read: a label, an annotation, or a
 * candidate that took it) reads it again at once and decides on what it
 * holds now: it renews while the Lease is still its own, and follows only
 * when another holder's is live. A leader that could not renew for renew_s (shorter
 * than the lease) stops leading before anyone else may take the lease.
 * Expiry compares renewTime with this host's wall clock: the candidates'
 * clocks are assumed in sync to well under the lease duration. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kubeint.h"
#include "stoke/json.h"
#include "stoke/kube.h"

int stoke_kube_time_parse(const char *s, int64_t *ret_ms)
{
    struct tm tm = {0};
    int64_t frac_ms = 0, scale = 100;
    const char *p;
    int n = 0;

    if (!s ||
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6 ||
        n != 19)
        return -EINVAL;
    p = s + n;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        for (; *p >= '0' && *p <= '9'; p++) {
            frac_ms += (*p - '0') * scale;
            scale /= 10;
        }
    }
    if (strcmp(p, "Z") != 0)
        return -EINVAL; /* the API server writes UTC */
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return -EINVAL;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *ret_ms = (int64_t)t * 1000 + frac_ms;
    return 0;
}

void stoke_kube_time_format(int64_t ms, char buf[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    if (ms < 0 || !gmtime_r(&t, &tm)) {
        (void)snprintf(buf, 32, "1970-01-01T00:00:00.000000Z");
        return;
    }
    /* Years past 9999 do not fit: then the text is cut, never overrun. */
    if (snprintf(buf, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000) * 1000) >= 32)
        buf[31] = '\0';
}

static int64_t int_of(json_object *o, const char *key, int64_t def)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return def;
    return json_object_get_int64(v);
}

enum stoke_kube_lease_action stoke_kube_lease_decide(json_object *lease, int64_t now_ms,
                                                     const char *me, int64_t *ret_expiry_ms)
{
    json_object *spec = stoke_json_obj(lease, "spec");
    const char *holder = stoke_json_str(spec, "holderIdentity");
    const char *when = stoke_json_str(spec, "renewTime");
    int64_t dur = int_of(spec, "leaseDurationSeconds", 0), t;

    if (ret_expiry_ms)
        *ret_expiry_ms = 0;
    if (!when)
        when = stoke_json_str(spec, "acquireTime");
    if (!holder || !*holder || !when || dur <= 0 || stoke_kube_time_parse(when, &t) < 0)
        return STOKE_KUBE_LEASE_ACQUIRE;
    if (ret_expiry_ms)
        *ret_expiry_ms = t + dur * 1000;
    if (strcmp(holder, me) == 0)
        return STOKE_KUBE_LEASE_RENEW;
    return now_ms < t + dur * 1000 ? STOKE_KUBE_LEASE_WAIT : STOKE_KUBE_LEASE_ACQUIRE;
}

json_object *stoke_kube_lease_next(json_object *lease, const char *ns, const char *name,
                                   const char *me, int64_t now_ms, unsigned duration_s,
                                   enum stoke_kube_lease_action action, bool release)
{
    json_object *obj = NULL, *spec, *md;
    const char *prev;
    char now[32];
    int64_t transitions;
    bool other;
    int r = 0;

    if (lease) {
        if (json_object_deep_copy(lease, &obj, NULL) < 0)
            return NULL;
    } else {
        obj = json_object_new_object();
        md = json_object_new_object();
        if (!obj || stoke_json_add(obj, "metadata", md) < 0)
            goto fail;
        r |= stoke_json_add(obj, "apiVersion", json_object_new_string("coordination.k8s.io/v1"));
        r |= stoke_json_add(obj, "kind", json_object_new_string("Lease"));
        r |= stoke_json_add(md, "name", json_object_new_string(name));
        r |= stoke_json_add(md, "namespace", json_object_new_string(ns));
        if (r < 0)
            goto fail;
    }
    spec = stoke_json_obj(obj, "spec");
    if (!spec) {
        spec = json_object_new_object();
        if (stoke_json_add(obj, "spec", spec) < 0)
            goto fail;
    }
    prev = stoke_json_str(spec, "holderIdentity");
    /* prev dies when the holder is replaced below. */
    other = prev && *prev && strcmp(prev, me) != 0;
    transitions = int_of(spec, "leaseTransitions", 0);
    stoke_kube_time_format(now_ms, now);
    if (release) {
        r |= stoke_json_add(spec, "holderIdentity", json_object_new_string(""));
        r |= stoke_json_add(spec, "leaseDurationSeconds", json_object_new_int(1));
        r |= stoke_json_add(spec, "renewTime", json_object_new_string(now));
        return r < 0 ? (json_object_put(obj), NULL) : obj;
    }
    r |= stoke_json_add(spec, "holderIdentity", json_object_new_string(me));
    r |= stoke_json_add(spec, "leaseDurationSeconds", json_object_new_int((int32_t)duration_s));
    r |= stoke_json_add(spec, "renewTime", json_object_new_string(now));
    if (action == STOKE_KUBE_LEASE_ACQUIRE) {
        r |= stoke_json_add(spec, "acquireTime", json_object_new_string(now));
        if (other)
            transitions++;
        r |= stoke_json_add(spec, "leaseTransitions", json_object_new_int64(transitions));
    }
    if (r < 0)
        goto fail;
    return obj;
fail:
    json_object_put(obj);
    return NULL;
}

/* --- the elector ------------------------------------------------------------------ */

struct stoke_kube_elector {
    struct stoke_kube *k;
    char ns[254], name[254], id[254];
    unsigned lease_s, renew_s, retry_s;
    void (*on_change)(bool leading, void *data);
    void (*on_error)(int err, const char *message, void *data);
    void *data;
    uv_timer_t timer;
    struct stoke__kube_call *call; /* GET, POST or PUT in flight */
    json_object *mine;             /* the lease as we last wrote it */
    bool leading;
    bool stopped;
    bool releasing;
    bool timer_open;
    unsigned rereads;    /* re-reads after 409 since the last tick */
    uint64_t conflicts;  /* writes answered 409 */
    uint64_t renewed_ms; /* uv_now() of our last successful write */
    char holder[254];    /* holderIdentity as last read or written */
};

/* Re-reads after a 409 before the next tick: a writer that keeps changing
 * the Lease cannot keep the leader busy; its deadline still holds. */
#define REREADS_MAX 4

static void read_lease(struct stoke_kube_elector *el);

static int64_t wall_ms(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void maybe_free(struct stoke_kube_elector *el)
{
    if (!el->stopped || el->timer_open || el->releasing)
        return;
    json_object_put(el->mine);
    free(el);
}

static void set_leading(struct stoke_kube_elector *el, bool leading)
{
    if (el->leading == leading)
        return;
    el->leading = leading;
    if (!leading) {
        json_object_put(el->mine);
        el->mine = NULL;
    }
    el->on_change(leading, el->data);
}

/* A leader that has not renewed within renew_s steps down. */
static void check_deadline(struct stoke_kube_elector *el)
{
    uint64_t now = uv_now(stoke__kube_loop(el->k));
    if (el->leading && now - el->renewed_ms >= (uint64_t)el->renew_s * 1000)
        set_leading(el, false);
}

static void failed(struct stoke_kube_elector *el, const char *what,
                   const struct stoke_kube_result *res)
{
    char msg[1200];
    if (!el->on_error)
        return;
    (void)snprintf(msg, sizeof(msg), "%s Lease %s/%s: %.400s", what, el->ns, el->name,
                   res->status.message);
    el->on_error(res->err, msg, el->data);
}

static void on_write(const struct stoke_kube_result *res, void *data)
{
    struct stoke_kube_elector *el = data;

    el->call = NULL;
    if (res->err == -ECANCELED)
        return;
    if (res->err < 0)
        failed(el, el->leading ? "renewing" : "taking", res);
    if (res->err < 0) {
        if (res->err == -ESTALE || res->err == -EEXIST) {
            /* 409: someone wrote the Lease since we read it. A candidate that
             * loses the race to take it simply follows; a leader reads it
             * again and renews unless another holder took it. */
            el->conflicts++;
            if (el->leading && !el->stopped && el->rereads < REREADS_MAX) {
                el->rereads++;
                read_lease(el);
                return;
            }
        }
        check_deadline(el);
        return;
    }
    el->renewed_ms = uv_now(stoke__kube_loop(el->k));
    (void)snprintf(el->holder, sizeof(el->holder), "%s", el->id);
    json_object_put(el->mine);
    el->mine = json_object_get(res->json);
    set_leading(el, true);
}

static void on_read(const struct stoke_kube_result *res, void *data)
{
    struct stoke_kube_elector *el = data;
    json_object *lease = NULL, *next;
    enum stoke_kube_lease_action a;
    int64_t now = wall_ms();
    int r;

    el->call = NULL;
    if (res->err == -ECANCELED)
        return;
    if (res->err < 0 && res->err != -ENOENT) {
        failed(el, "reading", res);
        check_deadline(el);
        return;
    }
    if (res->err == 0)
        lease = res->json;
    const char *holder = stoke_json_str(stoke_json_obj(lease, "spec"), "holderIdentity");
    (void)snprintf(el->holder, sizeof(el->holder), "%s", holder ? holder : "");
    a = stoke_kube_lease_decide(lease, now, el->id, NULL);
    if (a == STOKE_KUBE_LEASE_WAIT) {
        set_leading(el, false);
        return;
    }
    next = stoke_kube_lease_next(lease, el->ns, el->name, el->id, now, el->lease_s, a, false);
    if (!next) {
        check_deadline(el);
        return;
    }
    if (lease) {
        char path[1024];
        r = stoke_kube_path(&stoke_kube_leases, el->ns, el->name, NULL, path, sizeof(path));
        if (r == 0)
            r = stoke__kube_request_ex(el->k, STOKE_KUBE_PUT, path, next, on_write, el, &el->call);
    } else {
        char path[1024];
        r = stoke_kube_path(&stoke_kube_leases, el->ns, NULL, NULL, path, sizeof(path));
        if (r == 0)
            r = stoke__kube_request_ex(el->k, STOKE_KUBE_POST, path, next, on_write, el, &el->call);
    }
    json_object_put(next);
    if (r < 0)
        check_deadline(el);
}

static void read_lease(struct stoke_kube_elector *el)
{
    char path[1024];

    if (stoke_kube_path(&stoke_kube_leases, el->ns, el->name, NULL, path, sizeof(path)) == 0)
        (void)stoke__kube_request_ex(el->k, STOKE_KUBE_GET, path, NULL, on_read, el, &el->call);
}

static void on_tick(uv_timer_t *t)
{
    struct stoke_kube_elector *el = t->data;

    check_deadline(el);
    if (el->stopped || el->call)
        return;
    el->rereads = 0;
    read_lease(el);
}

int stoke_kube_elector_start(struct stoke_kube *k, const struct stoke_kube_elector_opts *opts,
                             struct stoke_kube_elector **ret)
{
    struct stoke_kube_elector *el;
    const char *ns = opts->ns ? opts->ns : stoke_kube_namespace(k);

    if (!opts->name || !opts->identity || !*opts->identity || !opts->on_change ||
        strlen(ns) >= sizeof(el->ns) || strlen(opts->name) >= sizeof(el->name) ||
        strlen(opts->identity) >= sizeof(el->id))
        return -EINVAL;
    el = calloc(1, sizeof(*el));
    if (!el)
        return -ENOMEM;
    el->k = k;
    memcpy(el->ns, ns, strlen(ns) + 1);
    memcpy(el->name, opts->name, strlen(opts->name) + 1);
    memcpy(el->id, opts->identity, strlen(opts->identity) + 1);
    el->lease_s = opts->lease_s ? opts->lease_s : 15;
    el->renew_s = opts->renew_s ? opts->renew_s : 10;
    el->retry_s = opts->retry_s ? opts->retry_s : 2;
    /* A leader notices a missed renewal on its next try: it must have
     * stepped down before the lease can expire for the others. */
    if (el->renew_s + el->retry_s >= el->lease_s || el->retry_s >= el->renew_s) {
        free(el);
        return -EINVAL;
    }
    el->on_change = opts->on_change;
    el->on_error = opts->on_error;
    el->data = opts->data;
    (void)uv_timer_init(stoke__kube_loop(k), &el->timer);
    el->timer.data = el;
    el->timer_open = true;
    (void)uv_timer_start(&el->timer, on_tick, 0, (uint64_t)el->retry_s * 1000);
    *ret = el;
    return 0;
}

bool stoke_kube_elector_leading(const struct stoke_kube_elector *el)
{
    return el->leading;
}

uint64_t stoke_kube_elector_conflicts(const struct stoke_kube_elector *el)
{
    return el->conflicts;
}

const char *stoke_kube_elector_holder(const struct stoke_kube_elector *el)
{
    return el->holder;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct stoke_kube_elector *el = h->data;
    el->timer_open = false;
    maybe_free(el);
}

static void on_released(const struct stoke_kube_result *res, void *data)
{
    struct stoke_kube_elector *el = data;
    (void)res; /* best effort: else the lease simply expires */
    el->releasing = false;
    maybe_free(el);
}

void stoke_kube_elector_stop(struct stoke_kube_elector *el, bool release)
{
    char path[1024];

    if (!el || el->stopped)
        return;
    el->stopped = true;
    stoke__kube_cancel(el->call);
    el->call = NULL;
    if (el->leading && release && el->mine &&
        stoke_kube_path(&stoke_kube_leases, el->ns, el->name, NULL, path, sizeof(path)) == 0) {
        json_object *next = stoke_kube_lease_next(el->mine, el->ns, el->name, el->id, wall_ms(),
                                                  el->lease_s, STOKE_KUBE_LEASE_RENEW, true);
        if (next && stoke_kube_request(el->k, STOKE_KUBE_PUT, path, next, on_released, el) == 0)
            el->releasing = true;
        json_object_put(next);
    }
    /* Stops leading now: the caller must not act past this call. */
    set_leading(el, false);
    uv_close((uv_handle_t *)&el->timer, on_timer_closed);
}
