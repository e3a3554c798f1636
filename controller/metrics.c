/* The controller's metrics in Prometheus text format 0.0.4: per function,
 * its replicas by state, the autoscaler's decision and panic state, and
 * cold starts by tier. Rendered on demand from the controller's state. */
#include <errno.h>
#include <inttypes.h>

#include "controller.h"

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

int ctrl_metrics_render(struct ctrl *c, struct stoke_buf *out)
{
    int r = 0;
    r |= stoke_buf_printf(out, "# HELP stoke_controller_replicas Replicas of a function by state; "
                               "state=\"desired\" is the autoscaler's decision.\n"
                               "# TYPE stoke_controller_replicas gauge\n");
    for (struct stoke_list *n = c->functions.next; n != &c->functions; n = n->next) {
        struct function *fn = stoke_container_of(n, struct function, node);
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
    r |= stoke_buf_printf(out, "# HELP stoke_controller_panic 1 while the function's autoscaler is "
                               "in panic mode.\n# TYPE stoke_controller_panic gauge\n");
    for (struct stoke_list *n = c->functions.next; n != &c->functions; n = n->next) {
        struct function *fn = stoke_container_of(n, struct function, node);
        r |= stoke_buf_printf(out, "stoke_controller_panic{function=\"%s\"} %d\n", fn->spec.name,
                              fn->panic ? 1 : 0);
    }
    r |= stoke_buf_printf(out, "# HELP stoke_controller_cold_starts_total Scale-ups from zero "
                               "ready replicas, by the tier they woke from.\n"
                               "# TYPE stoke_controller_cold_starts_total counter\n");
    for (struct stoke_list *n = c->functions.next; n != &c->functions; n = n->next) {
        struct function *fn = stoke_container_of(n, struct function, node);
        for (int t = 0; t < 4; t++)
            r |= stoke_buf_printf(out,
                                  "stoke_controller_cold_starts_total{function=\"%s\",tier=\"%s\"} "
                                  "%" PRIu64 "\n",
                                  fn->spec.name, tier_names[t], fn->wakes[t]);
    }
    return r < 0 ? -ENOMEM : 0;
}
