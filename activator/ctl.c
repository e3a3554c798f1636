#include "ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "metrics.h"
#include "stoke/chan.h"
#include "stoke/log.h"

#define STATS_PERIOD_MS 1000

struct ctl {
    struct stoke_chan *ch;
    char id[64];
    char process[64];
    struct proxy *px;
    uv_timer_t stats;
    struct stoke_buf msg; /* a stats message under construction */
    int open;             /* the channel and the stats timer, until closed */
    void (*on_closed)(void *);
    void *closed_data;
};

static void send_poke(const char *fn, void *data)
{
    struct ctl *ctl = data;
    char line[128];
    int n = snprintf(line, sizeof(line), "{\"op\":\"poke\",\"fn\":\"%s\"}", fn);
    stoke_chan_send(ctl->ch, line, (size_t)n);
}

void ctl_poke(struct ctl *ctl, const char *fn)
{
    send_poke(fn, ctl);
}

static void add_draining(const char *addr, void *data)
{
    struct stoke_buf *b = data;
    /* Addresses are IP literals we formatted: no JSON escaping needed. */
    (void)stoke_buf_printf(b, "%s\"%s\"", b->data[b->len - 1] == '[' ? "" : ",", addr);
}

void ctl_drain_changed(struct ctl *ctl)
{
    if (!ctl->px || !stoke_chan_connected(ctl->ch))
        return;
    struct stoke_buf b;
    stoke_buf_init(&b, STOKE_CTL_MAX_LINE);
    int r = stoke_buf_printf(&b, "{\"op\":\"drain\",\"gen\":%llu,\"draining\":[",
                             (unsigned long long)proxy_routes_gen(ctl->px));
    if (r == 0)
        proxy_draining(ctl->px, add_draining, &b);
    if (r == 0 && stoke_buf_append(&b, "]}", 2) == 0)
        stoke_chan_send(ctl->ch, b.data, b.len);
    stoke_buf_done(&b);
}

static void count_applied(struct ctl *ctl, enum metrics_route_kind kind, size_t entries,
                          size_t bytes, uint64_t t0)
{
    struct metrics_worker *mw = proxy_metrics(ctl->px);
    if (!mw)
        return;
    metrics_add(&mw->route_msgs[kind], 1);
    metrics_add(&mw->route_entries[kind], (int64_t)entries);
    metrics_add(&mw->route_bytes[kind], (int64_t)bytes + 1); /* and its '\n' */
    metrics_add(&mw->route_apply_ns[kind], (int64_t)(uv_hrtime() - t0));
    atomic_store_explicit(&mw->route_functions, proxy_functions(ctl->px), memory_order_relaxed);
}

static uint64_t routes_gen(void *data)
{
    struct ctl *ctl = data;
    return ctl->px ? proxy_routes_gen(ctl->px) : 0;
}

static void on_resync(void *data)
{
    struct ctl *ctl = data;
    struct metrics_worker *mw = ctl->px ? proxy_metrics(ctl->px) : NULL;
    if (mw)
        metrics_add(&mw->route_resyncs, 1);
}

static void on_update(struct stoke_route_update *u, size_t len, uint64_t t0, void *data)
{
    struct ctl *ctl = data;
    if (!ctl->px) {
        stoke_route_update_done(u);
        return;
    }
    size_t entries = u->n_routes + u->n_removed;
    uint64_t gen = u->gen;
    proxy_update_routes(ctl->px, u);
    stoke_debug(NULL, "route update %llu (%zu entries) for %s: %zu functions",
                (unsigned long long)gen, entries, ctl->id, proxy_functions(ctl->px));
    count_applied(ctl, METRICS_ROUTE_UPDATE, entries, len, t0);
    ctl_drain_changed(ctl);
}

static void on_table(struct stoke_route_table *t, size_t len, uint64_t t0, void *data)
{
    struct ctl *ctl = data;
    size_t entries = t->n_routes;
    if (!ctl->px) {
        stoke_route_table_done(t);
        return;
    }
    proxy_set_routes(ctl->px, t);
    count_applied(ctl, METRICS_ROUTE_TABLE, entries, len, t0);
    /* Tells the controller this table is in use, and which replicas that
     * left it still have requests in flight. */
    ctl_drain_changed(ctl);
}

/* One [function, replica address, slots] entry of the hello's "slots". */
static void add_slots(const char *fn, const char *addr, uint32_t slots, void *data)
{
    json_object *list = data;
    json_object *e = json_object_new_array_ext(3);
    /* A failed allocation leaves the entry out: the controller then counts
     * the process as holding no slot there and raises none past its share. */
    if (!e)
        return;
    (void)json_object_array_add(e, json_object_new_string(fn));
    (void)json_object_array_add(e, json_object_new_string(addr));
    (void)json_object_array_add(e, json_object_new_int64(slots));
    if (json_object_array_add(list, e) < 0)
        json_object_put(e);
}

/* {"op":"hello","activator":ID,"process":P,"slots":[...]}: it names the
 * process, and the slots the process has on each replica whose slots are
 * divided: a restarted controller starts from them. Then the pokes of the
 * requests that wait. */
static void on_connected(struct stoke_chan *ch, void *data)
{
    struct ctl *ctl = data;
    json_object *o = json_object_new_object();
    json_object *slots = json_object_new_array();
    const char *text;
    /* json_object_object_add steals the new strings; a NULL one is skipped
     * and the hello goes without it (the controller then says what it
     * misses). */
    if (!o || !slots) {
        json_object_put(o);
        json_object_put(slots);
        return;
    }
    (void)json_object_object_add(o, "op", json_object_new_string("hello"));
    (void)json_object_object_add(o, "activator", json_object_new_string(ctl->id));
    (void)json_object_object_add(o, "process", json_object_new_string(ctl->process));
    if (ctl->px)
        proxy_slots(ctl->px, add_slots, slots);
    (void)json_object_object_add(o, "slots", slots);
    text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    if (text)
        stoke_chan_send(ch, text, strlen(text));
    json_object_put(o);
    if (ctl->px)
        proxy_waiting(ctl->px, send_poke, ctl);
}

struct stats_ctx {
    struct stoke_buf *msg;
    int n;
};

static void add_stat(const char *fn, double concurrency, uint64_t requests, void *data)
{
    struct stats_ctx *sc = data;
    /* Names are DNS labels (validated), so they need no JSON escaping. */
    (void)stoke_buf_printf(sc->msg, "%s\"%s\":{\"concurrency\":%.6g,\"requests\":%llu}",
                           sc->n++ ? "," : "", fn, concurrency, (unsigned long long)requests);
}

static void on_stats(uv_timer_t *t)
{
    struct ctl *ctl = t->data;
    if (!ctl->px)
        return;
    stoke_buf_clear(&ctl->msg);
    struct stats_ctx sc = {.msg = &ctl->msg, .n = 0};
    (void)stoke_buf_printf(&ctl->msg, "{\"op\":\"stats\",\"fns\":{");
    proxy_stats(ctl->px, add_stat, &sc);
    if (stoke_buf_append(&ctl->msg, "}}", 2) == 0)
        stoke_chan_send(ctl->ch, ctl->msg.data, ctl->msg.len);
}

int ctl_new(uv_loop_t *loop, const struct stoke_chan_targets *controller, const char *id,
            const char *process, const char *token, struct ctl **ret)
{
    static const struct stoke_chan_ops ops = {.on_connected = on_connected,
                                              .on_table = on_table,
                                              .on_update = on_update,
                                              .gen = routes_gen,
                                              .on_resync = on_resync};
    struct ctl *ctl = calloc(1, sizeof(*ctl));
    if (!ctl)
        return -ENOMEM;
    snprintf(ctl->id, sizeof(ctl->id), "%s", id);
    snprintf(ctl->process, sizeof(ctl->process), "%s", process);
    int r = stoke_chan_new(loop, controller, id, token, &ops, ctl, &ctl->ch);
    if (r < 0) {
        free(ctl);
        return r;
    }
    stoke_buf_init(&ctl->msg, STOKE_CTL_MAX_LINE);
    uv_timer_init(loop, &ctl->stats);
    ctl->stats.data = ctl;
    ctl->open = 2;
    uv_timer_start(&ctl->stats, on_stats, STATS_PERIOD_MS, STATS_PERIOD_MS);
    *ret = ctl;
    return 0;
}

void ctl_set_proxy(struct ctl *ctl, struct proxy *px)
{
    ctl->px = px;
}

static void ctl_unref(void *data)
{
    struct ctl *ctl = data;
    if (--ctl->open > 0)
        return;
    stoke_buf_done(&ctl->msg);
    if (ctl->on_closed)
        ctl->on_closed(ctl->closed_data);
    free(ctl);
}

static void on_stats_closed(uv_handle_t *h)
{
    ctl_unref(h->data);
}

void ctl_close(struct ctl *ctl, void (*on_closed)(void *data), void *data)
{
    ctl->on_closed = on_closed;
    ctl->closed_data = data;
    uv_close((uv_handle_t *)&ctl->stats, on_stats_closed);
    stoke_chan_close(ctl->ch, ctl_unref, ctl);
}
