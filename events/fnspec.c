#include "fnspec.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stoke/log.h"

static struct fnspec_observer observers[FNSPEC_MAX_OBSERVERS];
static size_t n_observers;
static struct stoke_route_table table; /* sorted by name */
static struct stoke_chan *chan;

int fnspec_observe(const struct fnspec_observer *o)
{
    if (n_observers == FNSPEC_MAX_OBSERVERS)
        return -ENOSPC;
    observers[n_observers++] = *o;
    return 0;
}

const struct stoke_route *fnspec_get(const char *name)
{
    return stoke_route_table_find(&table, name, strlen(name));
}

size_t fnspec_count(void)
{
    return table.n_routes;
}

uint64_t fnspec_gen(void)
{
    return table.gen;
}

static bool str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool triggers_same(const struct stoke_route *a, const struct stoke_route *b)
{
    if (a->n_triggers != b->n_triggers)
        return false;
    for (size_t i = 0; i < a->n_triggers; i++) {
        const struct stoke_trigger *x = &a->triggers[i], *y = &b->triggers[i];
        if (strcmp(x->name, y->name) != 0 || !str_same(x->address, y->address) ||
            !str_same(x->stream, y->stream) || !str_same(x->group, y->group) ||
            !str_same(x->password_file, y->password_file) || !str_same(x->path, y->path) ||
            x->start_from != y->start_from || x->target_backlog != y->target_backlog)
            return false;
    }
    return true;
}

/* Whether two entries of one function say the same of it, replicas aside
 * (a change of its triggers or schedules alone is a change too). */
static bool route_same(const struct stoke_route *a, const struct stoke_route *b)
{
    if (a->n_schedules != b->n_schedules)
        return false;
    for (size_t i = 0; i < a->n_schedules; i++)
        if (!stoke_schedule_equal(&a->schedules[i], &b->schedules[i]))
            return false;
    return a->timeout_ms == b->timeout_ms && a->queue_max == b->queue_max &&
           a->queue_timeout_ms == b->queue_timeout_ms &&
           a->concurrency_limit == b->concurrency_limit &&
           memcmp(&a->async, &b->async, sizeof(a->async)) == 0 && triggers_same(a, b);
}

static void tell_set(const struct stoke_route *r, const struct stoke_route *old)
{
    if (old && route_same(old, r))
        return;
    stoke_info(NULL,
               "function %s %s: containerConcurrency %" PRIu32 ", queue.max %" PRIu32
               ", async.retries %" PRIu32,
               r->name, old ? "changed" : "known", r->concurrency_limit, r->queue_max,
               r->async.retries);
    for (size_t i = 0; i < n_observers; i++)
        if (observers[i].on_set)
            observers[i].on_set(r, !old, observers[i].data);
}

static void tell_removed(const char *name)
{
    stoke_info(NULL, "function %s removed", name);
    for (size_t i = 0; i < n_observers; i++)
        if (observers[i].on_removed)
            observers[i].on_removed(name, observers[i].data);
}

static int cmp_route(const void *a, const void *b)
{
    return strcmp(((const struct stoke_route *)a)->name, ((const struct stoke_route *)b)->name);
}

void fnspec_apply_table(struct stoke_route_table *t)
{
    struct stoke_route_table old = table;
    table = *t;
    memset(t, 0, sizeof(*t));
    /* Observers see the new table through fnspec_get(). */
    for (size_t i = 0; i < old.n_routes; i++) {
        const struct stoke_route *r = &old.routes[i];
        if (!stoke_route_table_find(&table, r->name, strlen(r->name)))
            tell_removed(r->name);
    }
    for (size_t i = 0; i < table.n_routes; i++)
        tell_set(&table.routes[i],
                 stoke_route_table_find(&old, table.routes[i].name, strlen(table.routes[i].name)));
    stoke_route_table_done(&old);
}

void fnspec_apply_update(struct stoke_route_update *u)
{
    size_t cap = table.n_routes + u->n_routes;
    struct stoke_route *routes = calloc(cap ? cap : 1, sizeof(*routes));
    if (!routes) {
        /* Keeps the table; the next table (a resync at the next gap) fixes it. */
        stoke_error(NULL, -ENOMEM, "cannot apply a route update");
        stoke_route_update_done(u);
        return;
    }
    struct stoke_route_table old = table;
    bool *gone = calloc(old.n_routes ? old.n_routes : 1, sizeof(*gone));
    if (!gone) {
        free(routes);
        stoke_error(NULL, -ENOMEM, "cannot apply a route update");
        stoke_route_update_done(u);
        return;
    }
    /* The old entries that stay (neither removed nor replaced) move over. */
    for (size_t i = 0; i < u->n_removed; i++) {
        const struct stoke_route *r =
            stoke_route_table_find(&old, u->removed[i], strlen(u->removed[i]));
        if (r)
            gone[r - old.routes] = true;
    }
    for (size_t i = 0; i < u->n_routes; i++) {
        const struct stoke_route *r =
            stoke_route_table_find(&old, u->routes[i].name, strlen(u->routes[i].name));
        if (r)
            gone[r - old.routes] = true;
    }
    size_t n = 0;
    for (size_t i = 0; i < old.n_routes; i++) {
        if (!gone[i]) {
            routes[n++] = old.routes[i];
            /* What it owns moved; its name stays for the lookups below. */
            old.routes[i].endpoints = NULL;
            old.routes[i].shares = NULL;
            old.routes[i].n_endpoints = 0;
            old.routes[i].triggers = NULL;
            old.routes[i].n_triggers = 0;
            old.routes[i].schedules = NULL;
            old.routes[i].n_schedules = 0;
        }
    }
    for (size_t i = 0; i < u->n_routes; i++)
        routes[n++] = u->routes[i];
    u->n_routes = 0; /* moved */
    qsort(routes, n, sizeof(*routes), cmp_route);
    table.routes = routes;
    table.n_routes = n;
    table.gen = u->gen;
    for (size_t i = 0; i < u->n_removed; i++) {
        if (stoke_route_table_find(&old, u->removed[i], strlen(u->removed[i])))
            tell_removed(u->removed[i]);
    }
    /* The entries of the update, as they now are in the table. */
    for (size_t i = 0; i < n; i++) {
        const struct stoke_route *o =
            stoke_route_table_find(&old, routes[i].name, strlen(routes[i].name));
        if (!o || gone[o - old.routes])
            tell_set(&routes[i], o);
    }
    free(gone);
    stoke_route_table_done(&old);
    stoke_route_update_done(u);
}

static void on_table(struct stoke_route_table *t, size_t len, uint64_t t0, void *data)
{
    (void)len, (void)t0, (void)data;
    stoke_debug(NULL, "route table %llu: %zu functions", (unsigned long long)t->gen, t->n_routes);
    fnspec_apply_table(t);
}

static void on_update(struct stoke_route_update *u, size_t len, uint64_t t0, void *data)
{
    (void)len, (void)t0, (void)data;
    stoke_debug(NULL, "route update %llu", (unsigned long long)u->gen);
    fnspec_apply_update(u);
}

static uint64_t table_gen(void *data)
{
    (void)data;
    return table.gen;
}

static char peer_id[64];

/* {"op":"hello","activator":"events-<pid>","role":"events"} */
static void on_connected(struct stoke_chan *ch, void *data)
{
    (void)data;
    char line[160];
    int n = snprintf(line, sizeof(line),
                     "{\"op\":\"hello\",\"activator\":\"%s\",\"role\":\"events\"}", peer_id);
    stoke_chan_send(ch, line, (size_t)n);
}

int fnspec_start(uv_loop_t *loop, const struct stoke_chan_targets *targets, const char *token)
{
    static const struct stoke_chan_ops ops = {.on_connected = on_connected,
                                              .on_table = on_table,
                                              .on_update = on_update,
                                              .gen = table_gen};
    snprintf(peer_id, sizeof(peer_id), "events-%ld", (long)getpid());
    return stoke_chan_new(loop, targets, peer_id, token, &ops, NULL, &chan);
}

void fnspec_stop(void)
{
    if (chan)
        stoke_chan_close(chan, NULL, NULL);
    chan = NULL;
    stoke_route_table_done(&table);
}

void fnspec_send(const char *line, size_t len)
{
    if (chan && stoke_chan_connected(chan))
        stoke_chan_send(chan, line, len);
}
