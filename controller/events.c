/* The backend's watch of this instance's replicas (the engine's event
 * stream on Docker): exits, OOM kills and removals are learned at once
 * instead of at the next check. The watch is reopened with back-off when it
 * ends, and the replicas are checked against a list then, for what
 * happened meanwhile. */
#include "controller.h"
#include "stoke/backoff.h"
#include "stoke/log.h"

#define WATCH_BACKOFF_MIN_MS 100
#define WATCH_BACKOFF_MAX_MS 10000
/* A stream that stayed open this long resets the back-off. */
#define WATCH_HEALTHY_MS 10000

static void on_event(const struct backend_event *ev, void *data)
{
    struct ctrl *c = data;
    c->watch_failures = 0;
    ctrl_on_event(c, ev);
}

static void on_watch_timer(uv_timer_t *t)
{
    ctrl_watch_start(t->data);
}

static void on_end(const struct backend_result *res, void *data)
{
    struct ctrl *c = data;
    c->watching = false;
    if (c->stopping || res->err == -ECANCELED)
        return;
    uint64_t now = uv_now(c->loop);
    if (now - c->watch_since_ms >= WATCH_HEALTHY_MS)
        c->watch_failures = 0;
    c->watch_failures++;
    c->watch_reopens++;
    uint64_t wait = stoke_backoff_ms(c->watch_failures, WATCH_BACKOFF_MIN_MS, WATCH_BACKOFF_MAX_MS);
    stoke_warn(NULL, res->err, "the %s watch ended: %s; reopening in %llu ms", c->be->name,
               res->err < 0 ? res->message : "closed by the other side", (unsigned long long)wait);
    uv_timer_start(&c->watch_timer, on_watch_timer, wait, 0);
}

void ctrl_watch_init(struct ctrl *c)
{
    uv_timer_init(c->loop, &c->watch_timer);
    c->watch_timer.data = c;
}

void ctrl_watch_start(struct ctrl *c)
{
    if (c->stopping || c->watching)
        return;
    int r = c->be->ops->watch(c->be, on_event, on_end, c);
    if (r < 0) {
        struct backend_result res = {.err = r, .message = "cannot open the watch", .how = ""};
        c->watching = true;
        on_end(&res, c);
        return;
    }
    c->watching = true;
    c->watch_since_ms = uv_now(c->loop);
    stoke_debug(NULL, "watching the %s backend's replicas", c->be->name);
    /* What happened while no stream was open. */
    if (!c->adopting)
        ctrl_check_replicas(c);
}

void ctrl_watch_close(struct ctrl *c)
{
    uv_timer_stop(&c->watch_timer);
    uv_close((uv_handle_t *)&c->watch_timer, NULL);
}
