/* The controller's metrics in Prometheus text format 0.0.4: per function,
 * its replicas by state, the autoscaler's decision and panic state, cold
 * starts by tier and how long they took, the traffic the activators
 * report and the resources its replicas use; for the controller, the
 * engine API calls and errors by operation, the event stream's reopens,
 * the activators connected. Rendered on demand from the controller's
 * state, on its loop (a scrape reads, never waits).
 *
 * Function names are DNS labels (validated), so label values need no
 * escaping. A deleted function's series go with it. */
#include <errno.h>
#include <inttypes.h>

#include "controller.h"
#include "hub.h"

static const char *const state_names[] = {
    [R_CREATING] = "creating", [R_STARTING] = "starting", [R_PROBING] = "probing",
    [R_READY] = "ready",       [R_RETIRING] = "retiring", [R_PAUSING] = "pausing",
    [R_PAUSED] = "paused",     [R_STOPPING] = "stopping", [R_STOPPED] = "stopped",
    [R_CREATED] = "created",
};
#define N_STATES (sizeof(state_names) / sizeof(state_names[0]))

const char *ctrl_replica_state_name(enum replica_state s)
{
    return (unsigned)s < N_STATES ? state_names[s] : "unknown";
}

static const char *const tier_names[4] = {"paused", "stopped", "created", "new"};

#define for_each_fn(c, fn)                                                                         \
    for (struct stoke_list *n_ = (c)->functions.next;                                              \
         n_ != &(c)->functions && ((fn) = stoke_container_of(n_, struct function, node), 1);       \
         n_ = n_->next)

static int family(struct stoke_buf *out, const char *name, const char *type, const char *help)
{
    return stoke_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int render_replicas(struct ctrl *c, struct stoke_buf *out)
{
    struct function *fn;
    int r = family(out, "stoke_controller_replicas", "gauge",
                   "Replicas of a function by state; state=\"desired\" is the autoscaler's "
                   "decision.");
    for_each_fn(c, fn)
    {
        unsigned count[N_STATES] = {0};
        for (struct stoke_list *m = fn->replicas.next; m != &fn->replicas; m = m->next)
            count[stoke_container_of(m, struct replica, node)->state]++;
        r |= stoke_buf_printf(out,
                              "stoke_controller_replicas{function=\"%s\",state=\"desired\"} %u\n",
                              fn->spec.name, fn->desired);
        for (size_t s = 0; s < N_STATES; s++)
            r |= stoke_buf_printf(out,
                                  "stoke_controller_replicas{function=\"%s\",state=\"%s\"} %u\n",
                                  fn->spec.name, state_names[s], count[s]);
    }
    r |= family(out, "stoke_controller_replica_failures_total", "counter",
                "Replicas that failed (an engine call on them failed, they exited or were killed, "
                "were not ready in time), since the controller started.");
    for_each_fn(c, fn)
    {
        r |= stoke_buf_printf(
            out, "stoke_controller_replica_failures_total{function=\"%s\"} %" PRIu64 "\n",
            fn->spec.name, fn->replica_failures);
    }
    r |= family(out, "stoke_controller_oom_kills_total", "counter",
                "Replicas the kernel's OOM killer ended (the engine said so), since the "
                "controller started; counted in stoke_controller_replica_failures_total too.");
    for_each_fn(c, fn)
    {
        r |=
            stoke_buf_printf(out, "stoke_controller_oom_kills_total{function=\"%s\"} %" PRIu64 "\n",
                             fn->spec.name, fn->oom_kills);
    }
    r |=
        family(out, "stoke_controller_backlog", "gauge",
               "Queue-trigger messages waiting that the autoscaler counts as demand (stoke-events' "
               "report; 0 once it stops for 5 s).");
    for_each_fn(c, fn)
    {
        r |= stoke_buf_printf(out, "stoke_controller_backlog{function=\"%s\"} %" PRIu64 "\n",
                              fn->spec.name, ctrl_backlog(fn));
    }
    r |= family(out, "stoke_controller_panic", "gauge",
                "1 while the function's autoscaler is in panic mode.");
    for_each_fn(c, fn)
    {
        r |= stoke_buf_printf(out, "stoke_controller_panic{function=\"%s\"} %d\n", fn->spec.name,
                              fn->panic ? 1 : 0);
    }
    return r;
}

static int render_cold_starts(struct ctrl *c, struct stoke_buf *out)
{
    struct function *fn;
    int r = family(out, "stoke_controller_cold_starts_total", "counter",
                   "Scale-ups from zero ready replicas, by the tier they woke from.");
    for_each_fn(c, fn)
    {
        for (int t = 0; t < 4; t++)
            r |= stoke_buf_printf(out,
                                  "stoke_controller_cold_starts_total{function=\"%s\",tier=\"%s\"} "
                                  "%" PRIu64 "\n",
                                  fn->spec.name, tier_names[t], fn->wakes[t]);
    }
    r |= family(out, "stoke_controller_cold_start_duration_seconds", "histogram",
                "From the controller starting a scale-up from zero ready replicas (at once on "
                "an activator's poke, else at its tick) to the first replica ready, by the "
                "fastest tier it woke from. A cold start whose function went back to zero "
                "before any replica was ready is not observed.");
    for_each_fn(c, fn)
    {
        for (int t = 0; t < 4 && r == 0; t++) {
            char labels[128];
            snprintf(labels, sizeof(labels), "function=\"%s\",tier=\"%s\"", fn->spec.name,
                     tier_names[t]);
            r = stoke_histogram_format(&fn->cold_start_hist[t],
                                       "stoke_controller_cold_start_duration_seconds", labels, out);
        }
    }
    return r;
}

/* The backend's own families (the engine's calls by operation on Docker),
 * its health and its watch. */
static int render_backend(struct ctrl *c, struct stoke_buf *out)
{
    int r = c->be->ops->metrics(c->be, out);
    r |= family(out, "stoke_controller_engine_up", "gauge",
                "1 when the container engine answered the controller's last ping.");
    r |= stoke_buf_printf(out, "stoke_controller_engine_up %d\n", c->backend_err == 0 ? 1 : 0);
    r |= family(out, "stoke_controller_engine_event_stream_reopens_total", "counter",
                "Times the engine's event stream ended and was reopened.");
    r |= stoke_buf_printf(out, "stoke_controller_engine_event_stream_reopens_total %" PRIu64 "\n",
                          c->watch_reopens);
    r |= family(out, "stoke_controller_untracked_replicas_removed_total", "counter",
                "Containers of this controller that no replica tracked (a create done by the "
                "engine whose answer was lost), found by the periodic list and removed.");
    r |= stoke_buf_printf(out, "stoke_controller_untracked_replicas_removed_total %" PRIu64 "\n",
                          c->strays_removed);
    return r;
}

static int render_controller(struct ctrl *c, struct stoke_buf *out)
{
    struct function *fn;
    unsigned n = 0;
    for_each_fn(c, fn) n += !fn->deleted;
    int r = family(out, "stoke_controller_functions", "gauge", "Functions with a spec.");
    r |= stoke_buf_printf(out, "stoke_controller_functions %u\n", n);
    r |= family(out, "stoke_controller_activators", "gauge",
                "Activator channels connected (each activator worker thread keeps its own).");
    r |= stoke_buf_printf(out, "stoke_controller_activators %u\n",
                          c->hub ? hub_activators(c->hub) : 0);
    struct hub_counters hc = {0};
    if (c->hub)
        hub_get_counters(c->hub, &hc);
    static const char *const help[] = {
        "Route messages sent on the activator channels (one per channel), by kind: whole "
        "tables and updates of the functions that changed.",
        "Bytes of the route messages sent, by kind.",
        "Stats reports from the activators (one a second per channel).",
        "Function entries in the activators' stats reports (only functions with traffic are "
        "reported).",
    };
    const struct {
        const char *name;
        uint64_t table, update; /* update unused without a kind */
        bool by_kind;
    } ch[] = {
        {"stoke_controller_route_messages_total", hc.tables, hc.updates, true},
        {"stoke_controller_route_bytes_total", hc.table_bytes, hc.update_bytes, true},
        {"stoke_controller_stats_reports_total", hc.stats_reports, 0, false},
        {"stoke_controller_stats_entries_total", hc.stats_entries, 0, false},
    };
    for (size_t i = 0; i < sizeof(ch) / sizeof(ch[0]); i++) {
        r |= family(out, ch[i].name, "counter", help[i]);
        if (ch[i].by_kind)
            r |= stoke_buf_printf(out, "%s{kind=\"table\"} %llu\n%s{kind=\"update\"} %llu\n",
                                  ch[i].name, (unsigned long long)ch[i].table, ch[i].name,
                                  (unsigned long long)ch[i].update);
        else
            r |= stoke_buf_printf(out, "%s %llu\n", ch[i].name, (unsigned long long)ch[i].table);
    }
    return r;
}

/* Reports stop when no activator is connected: the last second's rates
 * are then no longer current. */
static bool traffic_fresh(const struct function *fn)
{
    return fn->traffic.second + 3 >= uv_now(fn->ctrl->loop) / 1000;
}

static double get_requests(const struct function *fn)
{
    return (double)fn->traffic.requests;
}

static double get_rps(const struct function *fn)
{
    return traffic_fresh(fn) ? fn->traffic.rps : 0.0;
}

static double get_concurrency(const struct function *fn)
{
    return traffic_fresh(fn) ? fn->traffic.concurrency : 0.0;
}

static double get_cpu(const struct function *fn)
{
    return fn->usage.cpu_seconds;
}

static double get_memory(const struct function *fn)
{
    return (double)fn->usage.memory_bytes;
}

static double get_gb_seconds(const struct function *fn)
{
    return fn->usage.gb_seconds;
}

/* The stoke_function_* families: one series per function. */
static const struct {
    const char *name, *type, *help;
    double (*get)(const struct function *fn);
    int decimals;
    bool cgroups; /* read from cgroups: left out when libcgroup finds none */
} fn_families[] = {
    {"stoke_function_requests_total", "counter",
     "Requests to the function, as the activators report them (all activators, since the "
     "controller started).",
     get_requests, 0, false},
    {"stoke_function_requests_per_second", "gauge",
     "Requests per second to the function, the last second all activators reported.", get_rps, 3,
     false},
    {"stoke_function_concurrency", "gauge",
     "Requests in flight plus queued, averaged over the last second all activators reported, "
     "summed over them.",
     get_concurrency, 3, false},
    {"stoke_function_cpu_seconds_total", "counter",
     "CPU time of the function's replicas (their cgroups), removed ones included, since the "
     "controller started.",
     get_cpu, 6, true},
    {"stoke_function_memory_bytes", "gauge",
     "Memory charged to the function's replicas' cgroups (paused ones included), at the last "
     "tick.",
     get_memory, 0, true},
    {"stoke_function_gb_seconds_total", "counter",
     "Memory limit in GiB times seconds each replica ran (not paused, not stopped, not gone), "
     "summed over its replicas: what serverless platforms bill.",
     get_gb_seconds, 6, false},
};

static int render_functions(struct ctrl *c, struct stoke_buf *out)
{
    struct function *fn;
    int r = 0;
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(fn_families); i++) {
        const char *not_measured = usage_not_measured(c);
        if (fn_families[i].cgroups && not_measured) {
            /* The family, said to be not measured, and no series (not zeros). */
            char help[512];
            (void)snprintf(help, sizeof(help), "%s %s.", fn_families[i].help, not_measured);
            r |= family(out, fn_families[i].name, fn_families[i].type, help);
            continue;
        }
        r |= family(out, fn_families[i].name, fn_families[i].type, fn_families[i].help);
        for_each_fn(c, fn)
        {
            r |= stoke_buf_printf(out, "%s{function=\"%s\"} %.*f\n", fn_families[i].name,
                                  fn->spec.name, fn_families[i].decimals, fn_families[i].get(fn));
        }
    }
    return r;
}

int ctrl_metrics_render(struct ctrl *c, struct stoke_buf *out)
{
    int r = render_controller(c, out);
    r |= render_backend(c, out);
    r |= render_replicas(c, out);
    r |= render_cold_starts(c, out);
    r |= render_functions(c, out);
    return r < 0 ? -ENOMEM : 0;
}
