#include "stoke/routes.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <json-c/json.h>

#include "stoke/cron.h"

void stoke_route_table_done(struct stoke_route_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_routes; i++)
        stoke_route_done(&t->routes[i]);
    free(t->routes);
    memset(t, 0, sizeof(*t));
}

void stoke_route_done(struct stoke_route *r)
{
    free(r->endpoints);
    free(r->shares);
    r->endpoints = NULL;
    r->shares = NULL;
    r->n_endpoints = 0;
    for (size_t i = 0; i < r->n_triggers; i++)
        stoke_trigger_done(&r->triggers[i]);
    free(r->triggers);
    r->triggers = NULL;
    r->n_triggers = 0;
    for (size_t i = 0; i < r->n_schedules; i++)
        stoke_schedule_done(&r->schedules[i]);
    free(r->schedules);
    r->schedules = NULL;
    r->n_schedules = 0;
}

/* ---- queue triggers in a route entry (stoke-events reads them) ---- */

static int get_u64(json_object *o, const char *key, uint64_t max, uint64_t *ret);

int stoke_route_triggers_dup(const struct stoke_trigger *t, size_t n, struct stoke_trigger **ret)
{
    *ret = NULL;
    if (n == 0)
        return 0;
    struct stoke_trigger *d = calloc(n, sizeof(*d));
    if (!d)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        d[i] = t[i];
        d[i].address = strdup(t[i].address ? t[i].address : "");
        d[i].stream = strdup(t[i].stream ? t[i].stream : "");
        d[i].group = strdup(t[i].group ? t[i].group : "");
        d[i].path = strdup(t[i].path ? t[i].path : "/");
        d[i].password_file = t[i].password_file ? strdup(t[i].password_file) : NULL;
        if (!d[i].address || !d[i].stream || !d[i].group || !d[i].path ||
            (t[i].password_file && !d[i].password_file)) {
            for (size_t j = 0; j <= i; j++)
                stoke_trigger_done(&d[j]);
            free(d);
            return -ENOMEM;
        }
    }
    *ret = d;
    return 0;
}

/* "triggers":[...] of an entry, or NULL on OOM. */
static json_object *triggers_json(const struct stoke_route *r)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; a && i < r->n_triggers; i++) {
        const struct stoke_trigger *t = &r->triggers[i];
        json_object *o = json_object_new_object();
        if (!o) {
            json_object_put(a);
            return NULL;
        }
        json_object_object_add(o, "name", json_object_new_string(t->name));
        json_object_object_add(o, "address", json_object_new_string(t->address));
        json_object_object_add(o, "stream", json_object_new_string(t->stream));
        json_object_object_add(o, "group", json_object_new_string(t->group));
        if (t->password_file)
            json_object_object_add(o, "password_file", json_object_new_string(t->password_file));
        json_object_object_add(o, "start_from",
                               json_object_new_string(stoke_start_from_names[t->start_from]));
        json_object_object_add(o, "path", json_object_new_string(t->path));
        json_object_object_add(o, "target_backlog", json_object_new_int64(t->target_backlog));
        json_object_array_add(a, o);
    }
    return a;
}

/* A string member of 1..STOKE_TRIGGER_MAX_STRING printable bytes without
 * spaces (starting with '/' when `path`), dup'd into *ret. */
static int trigger_string(json_object *o, const char *key, bool path, char **ret)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return -EINVAL;
    const char *s = json_object_get_string(v);
    size_t n = strlen(s);
    if (n == 0 || n > STOKE_TRIGGER_MAX_STRING || (size_t)json_object_get_string_len(v) != n ||
        (path && s[0] != '/'))
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~')
            return -EINVAL;
    *ret = strdup(s);
    return *ret ? 0 : -ENOMEM;
}

/* An entry's array of at most `max` named objects (triggers, schedules):
 * its length into *ret_n and a zeroed array of as many items of `size`
 * bytes into *ret (NULL when empty). */
static int named_items(json_object *a, size_t max, size_t size, void **ret, size_t *ret_n)
{
    *ret = NULL;
    *ret_n = 0;
    if (!json_object_is_type(a, json_type_array))
        return -EINVAL;
    size_t n = json_object_array_length(a);
    if (n > max)
        return -EINVAL;
    if (n == 0)
        return 0;
    *ret = calloc(n, size);
    if (!*ret)
        return -ENOMEM;
    *ret_n = n;
    return 0;
}

/* Item i's "name" (a DNS label) into the name its struct begins with, in
 * `items` (`stride` bytes each); the items before it have other names. */
static_assert(offsetof(struct stoke_trigger, name) == 0, "an item begins with its name");
static_assert(offsetof(struct stoke_schedule, name) == 0, "an item begins with its name");
static int item_name(json_object *o, char *items, size_t stride, size_t i)
{
    json_object *v;
    if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "name", &v) ||
        !json_object_is_type(v, json_type_string) ||
        !stoke_is_valid_name(json_object_get_string(v)))
        return -EINVAL;
    char *name = items + i * stride;
    snprintf(name, STOKE_NAME_MAX + 1, "%s", json_object_get_string(v));
    for (size_t j = 0; j < i; j++)
        if (strcmp(items + j * stride, name) == 0)
            return -EINVAL;
    return 0;
}

/* "triggers" of an entry, validated as the spec validates them. */
static int parse_triggers(json_object *a, struct stoke_route *r)
{
    size_t n;
    int e =
        named_items(a, STOKE_SPEC_MAX_TRIGGERS, sizeof(*r->triggers), (void **)&r->triggers, &n);
    if (e < 0)
        return e;
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(a, i), *v;
        struct stoke_trigger *t = &r->triggers[r->n_triggers++];
        e = item_name(o, (char *)r->triggers, sizeof(*t), i);
        if (e < 0)
            return e;
        e = trigger_string(o, "address", false, &t->address);
        e = e ? e : trigger_string(o, "stream", false, &t->stream);
        e = e ? e : trigger_string(o, "group", false, &t->group);
        e = e ? e : trigger_string(o, "path", true, &t->path);
        if (!e && json_object_object_get_ex(o, "password_file", &v))
            e = trigger_string(o, "password_file", true, &t->password_file);
        if (e)
            return e;
        char host[STOKE_TRIGGER_MAX_STRING + 1];
        int port;
        const char *up;
        if (stoke_trigger_address(t->address, host, sizeof(host), &port, &up) < 0)
            return -EINVAL;
        t->start_from = STOKE_START_NEW;
        if (json_object_object_get_ex(o, "start_from", &v)) {
            const char *sf =
                json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
            if (strcmp(sf, "0") == 0)
                t->start_from = STOKE_START_ALL;
            else if (strcmp(sf, "$") != 0)
                return -EINVAL;
        }
        uint64_t tb;
        if (get_u64(o, "target_backlog", 1000000, &tb) < 0 || tb == 0)
            return -EINVAL;
        t->target_backlog = (uint32_t)tb;
    }
    return 0;
}

/* ---- schedules in a route entry (stoke-events reads them) ---- */

/* "schedules":[...] of an entry, or NULL on OOM. */
static json_object *schedules_json(const struct stoke_route *r)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; a && i < r->n_schedules; i++) {
        const struct stoke_schedule *sc = &r->schedules[i];
        json_object *o = json_object_new_object();
        if (!o) {
            json_object_put(a);
            return NULL;
        }
        json_object_object_add(o, "name", json_object_new_string(sc->name));
        json_object_object_add(o, "schedule", json_object_new_string(sc->schedule));
        if (sc->time_zone)
            json_object_object_add(o, "time_zone", json_object_new_string(sc->time_zone));
        if (sc->data)
            json_object_object_add(o, "data", json_object_new_string(sc->data));
        json_object_object_add(o, "content_type", json_object_new_string(sc->content_type));
        json_object_object_add(o, "path", json_object_new_string(sc->path));
        json_object_object_add(o, "policy", json_object_new_string(stoke_policy_names[sc->policy]));
        json_object_object_add(o, "starting_deadline_s",
                               json_object_new_int64(sc->starting_deadline_s));
        json_object_object_add(o, "suspend", json_object_new_boolean(sc->suspend));
        json_object_array_add(a, o);
    }
    return a;
}

/* An optional string member of at most `max` bytes, dup'd into *ret
 * (absent: NULL). */
static int schedule_string(json_object *o, const char *key, size_t max, char **ret)
{
    json_object *v;
    *ret = NULL;
    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_string) || (size_t)json_object_get_string_len(v) > max ||
        strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
        return -EINVAL;
    *ret = strdup(json_object_get_string(v));
    return *ret ? 0 : -ENOMEM;
}

/* "schedules" of an entry, validated as the spec validates them. */
static int parse_schedules(json_object *a, struct stoke_route *r)
{
    size_t n;
    int e =
        named_items(a, STOKE_SPEC_MAX_SCHEDULES, sizeof(*r->schedules), (void **)&r->schedules, &n);
    if (e < 0)
        return e;
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(a, i), *v;
        struct stoke_schedule *sc = &r->schedules[r->n_schedules++];
        e = item_name(o, (char *)r->schedules, sizeof(*sc), i);
        if (e < 0)
            return e;
        e = schedule_string(o, "schedule", STOKE_SCHEDULE_MAX_STRING, &sc->schedule);
        e = e ? e : schedule_string(o, "time_zone", STOKE_CRON_ZONE_MAX - 1, &sc->time_zone);
        e = e ? e : schedule_string(o, "data", STOKE_SCHEDULE_MAX_DATA, &sc->data);
        e = e ? e : trigger_string(o, "content_type", false, &sc->content_type);
        e = e ? e : trigger_string(o, "path", true, &sc->path);
        if (e)
            return e;
        struct stoke_cron c;
        char err[160];
        if (!sc->schedule ||
            stoke_cron_parse(sc->schedule, sc->time_zone, &c, err, sizeof(err)) < 0)
            return -EINVAL;
        sc->policy = STOKE_POLICY_ALLOW;
        if (json_object_object_get_ex(o, "policy", &v)) {
            const char *p =
                json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
            size_t k = 0;
            while (stoke_policy_names[k] && strcmp(stoke_policy_names[k], p) != 0)
                k++;
            if (!stoke_policy_names[k])
                return -EINVAL;
            sc->policy = (enum stoke_concurrency_policy)k;
        }
        uint64_t d = 0;
        if (json_object_object_get_ex(o, "starting_deadline_s", &v) &&
            get_u64(o, "starting_deadline_s", STOKE_SCHEDULE_MAX_DEADLINE_S, &d) < 0)
            return -EINVAL;
        sc->starting_deadline_s = (uint32_t)d;
        if (json_object_object_get_ex(o, "suspend", &v)) {
            if (!json_object_is_type(v, json_type_boolean))
                return -EINVAL;
            sc->suspend = json_object_get_boolean(v);
        }
    }
    return 0;
}

/* One function's entry of a table or an update, or NULL on OOM. */
static json_object *route_json(const struct stoke_route *r)
{
    json_object *fn = json_object_new_object();
    json_object *eps = json_object_new_array();
    if (!fn || !eps) {
        json_object_put(fn);
        json_object_put(eps);
        return NULL;
    }
    for (size_t j = 0; j < r->n_endpoints; j++) {
        char a[80];
        stoke_addr_format(&r->endpoints[j], a, sizeof(a));
        json_object_array_add(eps, json_object_new_string(a));
    }
    /* json_object_object_add() steals the references. */
    json_object_object_add(fn, "name", json_object_new_string(r->name));
    json_object_object_add(fn, "timeout_ms", json_object_new_int64((int64_t)r->timeout_ms));
    json_object_object_add(fn, "queue_max", json_object_new_int64(r->queue_max));
    json_object_object_add(fn, "queue_timeout_ms",
                           json_object_new_int64((int64_t)r->queue_timeout_ms));
    json_object_object_add(fn, "concurrency_limit", json_object_new_int64(r->concurrency_limit));
    json_object *as = json_object_new_object();
    if (!as) {
        json_object_put(eps);
        json_object_put(fn);
        return NULL;
    }
    json_object_object_add(as, "retries", json_object_new_int64(r->async.retries));
    json_object_object_add(as, "backoff_ms", json_object_new_int64((int64_t)r->async.backoff_ms));
    json_object_object_add(as, "max_age_ms", json_object_new_int64((int64_t)r->async.max_age_ms));
    json_object_object_add(as, "max_in_flight", json_object_new_int64(r->async.max_in_flight));
    json_object_object_add(as, "max_body", json_object_new_int64((int64_t)r->async.max_body));
    json_object_object_add(fn, "async", as);
    json_object_object_add(fn, "endpoints", eps);
    if (r->shares) {
        json_object *sh = json_object_new_array();
        if (!sh) {
            json_object_put(fn);
            return NULL;
        }
        for (size_t j = 0; j < r->n_endpoints; j++)
            json_object_array_add(sh, json_object_new_int64(r->shares[j]));
        json_object_object_add(fn, "shares", sh);
    }
    if (r->n_triggers) {
        json_object *tr = triggers_json(r);
        if (!tr) {
            json_object_put(fn);
            return NULL;
        }
        json_object_object_add(fn, "triggers", tr);
    }
    if (r->n_schedules) {
        json_object *sc = schedules_json(r);
        if (!sc) {
            json_object_put(fn);
            return NULL;
        }
        json_object_object_add(fn, "schedules", sc);
    }
    return fn;
}

/* {"op":op,"gen":gen,"functions":[routes...]} plus `extra` (stolen, may be
 * NULL) as "removed", as one owned line, or NULL on OOM. */
static char *format_msg(const char *op, uint64_t gen, const struct stoke_route *routes, size_t n,
                        json_object *extra)
{
    char *out = NULL;
    json_object *root = json_object_new_object();
    json_object *fns = json_object_new_array();
    if (!root || !fns)
        goto out;
    for (size_t i = 0; i < n; i++) {
        json_object *fn = route_json(&routes[i]);
        if (!fn)
            goto out;
        json_object_array_add(fns, fn);
    }
    json_object_object_add(root, "op", json_object_new_string(op));
    json_object_object_add(root, "gen", json_object_new_int64((int64_t)gen));
    json_object_object_add(root, "functions", fns);
    fns = NULL;
    if (extra) {
        json_object_object_add(root, "removed", extra);
        extra = NULL;
    }

    const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
    out = s ? strdup(s) : NULL;
out:
    json_object_put(extra);
    json_object_put(fns);
    json_object_put(root);
    return out;
}

char *stoke_route_table_format(const struct stoke_route_table *t)
{
    return format_msg("routes", t->gen, t->routes, t->n_routes, NULL);
}

char *stoke_route_update_format(uint64_t gen, const struct stoke_route *routes, size_t n,
                                const char *const *removed, size_t n_removed)
{
    json_object *rm = json_object_new_array();
    if (!rm)
        return NULL;
    for (size_t i = 0; i < n_removed; i++)
        json_object_array_add(rm, json_object_new_string(removed[i]));
    return format_msg("update", gen, routes, n, rm);
}

static int get_u64(json_object *o, const char *key, uint64_t max, uint64_t *ret)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return -EINVAL;
    int64_t n = json_object_get_int64(v);
    if (n < 0 || (uint64_t)n > max)
        return -EINVAL;
    *ret = (uint64_t)n;
    return 0;
}

static int cmp_route(const void *a, const void *b)
{
    return strcmp(((const struct stoke_route *)a)->name, ((const struct stoke_route *)b)->name);
}

static int parse_route(json_object *fn, struct stoke_route *r)
{
    json_object *v, *eps;
    uint64_t n;

    if (!json_object_is_type(fn, json_type_object))
        return -EINVAL;
    if (!json_object_object_get_ex(fn, "name", &v) || !json_object_is_type(v, json_type_string))
        return -EINVAL;
    const char *name = json_object_get_string(v);
    if (!stoke_is_valid_name(name))
        return -EINVAL;
    memcpy(r->name, name, strlen(name) + 1);

    if (get_u64(fn, "timeout_ms", UINT32_MAX, &r->timeout_ms) < 0 ||
        get_u64(fn, "queue_timeout_ms", UINT32_MAX, &r->queue_timeout_ms) < 0)
        return -EINVAL;
    if (get_u64(fn, "queue_max", UINT32_MAX, &n) < 0)
        return -EINVAL;
    r->queue_max = (uint32_t)n;
    if (get_u64(fn, "concurrency_limit", UINT32_MAX, &n) < 0)
        return -EINVAL;
    r->concurrency_limit = (uint32_t)n;
    /* Optional: a controller from before async sends none. */
    stoke_async_defaults(&r->async);
    if (json_object_object_get_ex(fn, "async", &v)) {
        uint64_t retries, inflight, max_body;
        if (!json_object_is_type(v, json_type_object) || get_u64(v, "retries", 100, &retries) < 0 ||
            get_u64(v, "backoff_ms", UINT32_MAX, &r->async.backoff_ms) < 0 ||
            get_u64(v, "max_age_ms", UINT32_MAX, &r->async.max_age_ms) < 0 ||
            get_u64(v, "max_in_flight", 10000, &inflight) < 0 ||
            get_u64(v, "max_body", UINT32_MAX, &max_body) < 0)
            return -EINVAL;
        r->async.retries = (uint32_t)retries;
        if (inflight) /* (0: the default) */
            r->async.max_in_flight = (uint32_t)inflight;
        r->async.max_body = (uint32_t)max_body;
    }

    if (!json_object_object_get_ex(fn, "endpoints", &eps) ||
        !json_object_is_type(eps, json_type_array))
        return -EINVAL;
    size_t ne = json_object_array_length(eps);
    if (ne > STOKE_ROUTES_MAX_ENDPOINTS)
        return -EINVAL;
    if (ne > 0) {
        r->endpoints = calloc(ne, sizeof(*r->endpoints));
        if (!r->endpoints)
            return -ENOMEM;
    }
    for (size_t j = 0; j < ne; j++) {
        json_object *e = json_object_array_get_idx(eps, j);
        if (!json_object_is_type(e, json_type_string) ||
            stoke_addr_parse(json_object_get_string(e), &r->endpoints[j]) < 0 ||
            r->endpoints[j].is_unix)
            return -EINVAL;
        r->n_endpoints++;
    }
    /* Optional: a share of concurrency_limit per endpoint, each 1..limit. */
    if (json_object_object_get_ex(fn, "shares", &v)) {
        if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != ne ||
            r->concurrency_limit == 0)
            return -EINVAL;
        r->shares = calloc(ne ? ne : 1, sizeof(*r->shares));
        if (!r->shares)
            return -ENOMEM;
        for (size_t j = 0; j < ne; j++) {
            json_object *e = json_object_array_get_idx(v, j);
            int64_t s = json_object_is_type(e, json_type_int) ? json_object_get_int64(e) : 0;
            if (s < 1 || s > r->concurrency_limit)
                return -EINVAL;
            r->shares[j] = (uint32_t)s;
        }
    }
    /* Optional: a controller from before triggers (schedules) sends none. */
    if (json_object_object_get_ex(fn, "triggers", &v)) {
        int e = parse_triggers(v, r);
        if (e < 0)
            return e;
    }
    if (json_object_object_get_ex(fn, "schedules", &v))
        return parse_schedules(v, r);
    return 0;
}

/* Parses `json` as a message whose op is `op`: *root (to put) and its
 * routes, in message order, into *routes / *n (counted as parsed, so a
 * half-parsed route is freed with the others). Returns 0 or -EINVAL /
 * -ENOMEM; the caller frees what was filled either way. */
static int parse_msg(const char *json, size_t len, const char *op, json_object **root,
                     uint64_t *gen, struct stoke_route **routes, size_t *n_routes)
{
    json_object *v, *fns;
    struct json_tokener *tok = json_tokener_new_ex(32);
    int r = -EINVAL;

    *root = NULL;
    if (!tok)
        return -ENOMEM;
    *root = json_tokener_parse_ex(tok, json, (int)len);
    if (!*root || json_tokener_get_error(tok) != json_tokener_success ||
        !json_object_is_type(*root, json_type_object))
        goto out;
    if (!json_object_object_get_ex(*root, "op", &v) || !json_object_is_type(v, json_type_string) ||
        strcmp(json_object_get_string(v), op) != 0)
        goto out;
    if (get_u64(*root, "gen", INT64_MAX, gen) < 0)
        goto out;
    if (!json_object_object_get_ex(*root, "functions", &fns) ||
        !json_object_is_type(fns, json_type_array))
        goto out;
    size_t n = json_object_array_length(fns);
    if (n > STOKE_ROUTES_MAX_FUNCTIONS)
        goto out;
    if (n > 0) {
        *routes = calloc(n, sizeof(**routes));
        if (!*routes) {
            r = -ENOMEM;
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        (*n_routes)++;
        r = parse_route(json_object_array_get_idx(fns, i), &(*routes)[i]);
        if (r < 0)
            goto out;
    }
    r = 0;
out:
    json_tokener_free(tok);
    return r;
}

int stoke_route_table_parse(const char *json, size_t len, struct stoke_route_table *ret)
{
    json_object *root;
    memset(ret, 0, sizeof(*ret));
    int r = parse_msg(json, len, "routes", &root, &ret->gen, &ret->routes, &ret->n_routes);
    if (r == 0 && ret->n_routes > 1)
        qsort(ret->routes, ret->n_routes, sizeof(*ret->routes), cmp_route);
    for (size_t i = 1; r == 0 && i < ret->n_routes; i++) {
        if (strcmp(ret->routes[i - 1].name, ret->routes[i].name) == 0)
            r = -EINVAL;
    }
    if (r < 0)
        stoke_route_table_done(ret);
    json_object_put(root);
    return r;
}

void stoke_route_update_done(struct stoke_route_update *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->n_routes; i++)
        stoke_route_done(&u->routes[i]);
    free(u->routes);
    free(u->removed);
    memset(u, 0, sizeof(*u));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int stoke_route_update_parse(const char *json, size_t len, struct stoke_route_update *ret)
{
    json_object *root, *rm;
    const char **names = NULL;
    memset(ret, 0, sizeof(*ret));
    int r = parse_msg(json, len, "update", &root, &ret->gen, &ret->routes, &ret->n_routes);
    if (r < 0)
        goto out;
    r = -EINVAL;
    if (json_object_object_get_ex(root, "removed", &rm)) {
        if (!json_object_is_type(rm, json_type_array))
            goto out;
        size_t n = json_object_array_length(rm);
        if (n > STOKE_ROUTES_MAX_FUNCTIONS)
            goto out;
        if (n > 0 && !(ret->removed = calloc(n, sizeof(*ret->removed)))) {
            r = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            json_object *e = json_object_array_get_idx(rm, i);
            if (!json_object_is_type(e, json_type_string) ||
                !stoke_is_valid_name(json_object_get_string(e)))
                goto out;
            snprintf(ret->removed[i], sizeof(ret->removed[i]), "%s", json_object_get_string(e));
            ret->n_removed++;
        }
    }
    /* A name at most once over the entries and the removals. */
    size_t total = ret->n_routes + ret->n_removed;
    if (total > STOKE_ROUTES_MAX_FUNCTIONS)
        goto out;
    names = calloc(total ? total : 1, sizeof(*names));
    if (!names) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < ret->n_routes; i++)
        names[i] = ret->routes[i].name;
    for (size_t i = 0; i < ret->n_removed; i++)
        names[ret->n_routes + i] = ret->removed[i];
    qsort(names, total, sizeof(*names), cmp_str);
    for (size_t i = 1; i < total; i++) {
        if (strcmp(names[i - 1], names[i]) == 0)
            goto out;
    }
    r = 0;
out:
    free(names);
    if (r < 0)
        stoke_route_update_done(ret);
    json_object_put(root);
    return r;
}

uint32_t stoke_share(uint32_t total, unsigned n, unsigned i, unsigned start)
{
    if (n <= 1)
        return total;
    unsigned pos = (i + n - start % n) % n; /* i's place in the deal */
    return total / n + (pos < total % n ? 1 : 0);
}

static unsigned name_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

unsigned stoke_share_start(const struct stoke_addr *a)
{
    char ip[64] = "";
    unsigned port = 0;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&a->ss;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        port = ntohs(s->sin_port);
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&a->ss;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        port = ntohs(s->sin6_port);
    }
    /* Unsigned arithmetic wraps: the sum is a fine start for any k. */
    return name_hash(ip) + port;
}

int stoke_route_share(const struct stoke_route *in, unsigned i, unsigned k, struct stoke_route *out)
{
    *out = *in;
    out->endpoints = NULL;
    out->shares = NULL;
    out->n_endpoints = 0;
    out->schedules = NULL;
    if (stoke_route_triggers_dup(in->triggers, in->n_triggers, &out->triggers) < 0) {
        memset(out, 0, sizeof(*out));
        return -ENOMEM;
    }
    if (stoke_schedules_dup(in->schedules, in->n_schedules, &out->schedules) < 0) {
        out->n_schedules = 0;
        stoke_route_done(out);
        memset(out, 0, sizeof(*out));
        return -ENOMEM;
    }
    bool divide = k > 1 && in->concurrency_limit > 0;
    if (k > 1)
        out->queue_max = stoke_share(in->queue_max, k, i, name_hash(in->name) % k);
    if (in->n_endpoints == 0)
        return 0;
    out->endpoints = calloc(in->n_endpoints, sizeof(*out->endpoints));
    if (divide)
        out->shares = calloc(in->n_endpoints, sizeof(*out->shares));
    if (!out->endpoints || (divide && !out->shares)) {
        stoke_route_done(out);
        memset(out, 0, sizeof(*out));
        return -ENOMEM;
    }
    for (size_t j = 0; j < in->n_endpoints; j++) {
        uint32_t s = in->concurrency_limit;
        if (divide) {
            s = stoke_share(in->concurrency_limit, k, i, stoke_share_start(&in->endpoints[j]) % k);
            if (s == 0)
                continue; /* its slots are the other activators' */
            out->shares[out->n_endpoints] = s;
        }
        out->endpoints[out->n_endpoints++] = in->endpoints[j];
    }
    return 0;
}

const struct stoke_route *stoke_route_table_find(const struct stoke_route_table *t,
                                                 const char *name, size_t name_len)
{
    size_t lo = 0, hi = t->n_routes;
    if (name_len > STOKE_NAME_MAX)
        return NULL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = t->routes[mid].name;
        int c = strncmp(m, name, name_len);
        if (c == 0 && m[name_len] != '\0')
            c = 1;
        if (c == 0)
            return &t->routes[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int stoke_route_match(const char *host, size_t host_len, const char *target, size_t target_len,
                      const char *domain, const char **ret_name, size_t *ret_name_len,
                      const char **ret_path, size_t *ret_path_len)
{
    static const char prefix[] = "/fn/";
    const size_t plen = sizeof(prefix) - 1;

    if (target_len > plen && memcmp(target, prefix, plen) == 0) {
        const char *name = target + plen;
        const char *end = target + target_len;
        const char *p = name;
        while (p < end && *p != '/' && *p != '?')
            p++;
        if (p > name) {
            *ret_name = name;
            *ret_name_len = (size_t)(p - name);
            /* For "/fn/x" or "/fn/x?q" the rest is "" or "?q": the caller
             * puts "/" in front of a rest that does not start with '/'. */
            *ret_path = p;
            *ret_path_len = (size_t)(end - p);
            return 0;
        }
    }

    if (host && host_len > 0 && domain && *domain) {
        /* Strip the port; IPv6 literals ("[::1]:8080") never match a name. */
        size_t hl = host_len;
        const char *colon = memchr(host, ':', host_len);
        if (colon)
            hl = (size_t)(colon - host);
        if (hl > 0 && host[hl - 1] == '.')
            hl--; /* a fully qualified "name.domain." */
        size_t dl = strlen(domain);
        if (hl > dl + 1 && host[hl - dl - 1] == '.' &&
            strncasecmp(host + hl - dl, domain, dl) == 0) {
            *ret_name = host;
            *ret_name_len = hl - dl - 1;
            *ret_path = target;
            *ret_path_len = target_len;
            return 0;
        }
    }
    return -ENOENT;
}
