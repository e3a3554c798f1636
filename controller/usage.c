/* Per-function resource use from what the backend reads of its replicas
 * (backend_usage(): their cgroups through libcgroup on Docker).
 *
 * Every tick each replica but the paused ones is sampled once: on Docker
 * two small reads of cgroupfs (CPU counter, memory in use; the memory
 * limit once per run of its container). That is in-memory kernel state, a
 * few microseconds a read, so it stays on the loop: a thread
 * (uv_queue_work) would cost more in copying replica state back and forth
 * than the reads themselves take.
 * Nothing here is on the request path: the activators never wait for it.
 *
 * The function's counters only grow. CPU: each sample adds the growth of
 * the replica's counter since the last one (a lower value is a new cgroup:
 * a stopped replica started again). A replica is sampled once more right
 * before it is stopped or removed, so the CPU it used since the last tick
 * is counted before its cgroup goes. GB-seconds: the memory limit in GiB
 * (the cgroup's; the spec's when that cannot be read or says none) times
 * the time the replica was running, i.e. not frozen, not stopped, not
 * gone; samples at each change of state split the time exactly. */
#include <errno.h>
#include <stdio.h>

#include "controller.h"
#include "stoke/cgusage.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

bool usage_is_running(enum replica_state s)
{
    switch (s) {
    case R_STARTING:
    case R_PROBING:
    case R_READY:
    case R_RETIRING:
    case R_PAUSING:
    case R_STOPPING:
        return true;
    default:
        return false;
    }
}

/* What the reconciler knows of the replica's process: none in these
 * states; surely one (running or frozen) in the second set, where not
 * finding it is worth a warning. Starting (the start in flight) and
 * stopping may be either. */
static enum backend_run run_of(const struct replica *r)
{
    switch (r->state) {
    case R_CREATING:
    case R_STOPPED:
    case R_CREATED:
        return BACKEND_RUN_NO;
    case R_PROBING:
    case R_READY:
    case R_RETIRING:
    case R_PAUSING:
    case R_PAUSED:
        return r->exited ? BACKEND_RUN_MAYBE : BACKEND_RUN_SURELY;
    default:
        return BACKEND_RUN_MAYBE;
    }
}

void usage_sample(struct replica *r)
{
    struct function *fn = r->fn;
    struct ctrl *c = fn->ctrl;
    struct replica_usage *u = &r->usage;
    uint64_t now = uv_now(c->loop);
    uint64_t since = u->sampled_ms ? u->sampled_ms : r->created_ms;

    if (since && now > since && usage_is_running(r->state)) {
        uint64_t limit = u->limit_bytes ? u->limit_bytes : fn->spec.resources.memory_bytes;
        fn->usage.gb_seconds += (double)limit / GIB * (double)(now - since) / 1000.0;
    }
    u->sampled_ms = now;
    struct backend_usage s;
    enum backend_run run = r->br.id[0] ? run_of(r) : BACKEND_RUN_NO;
    if (!backend_can(c->be, BACKEND_HAS_CGROUPS) || c->be->ops->usage(c->be, &r->br, run, &s) < 0) {
        u->memory_bytes = 0;
        return;
    }
    if (s.cpu_restarted)
        u->last_cpu_ns = 0;
    u->limit_bytes = s.limit_bytes;
    fn->usage.cpu_seconds += (double)stoke_cgusage_cpu_delta(&u->last_cpu_ns, s.cpu_ns) / 1e9;
    u->memory_bytes = s.memory_bytes;
}

void usage_sample_all(struct ctrl *c)
{
    for (struct stoke_list *a = c->functions.next; a != &c->functions; a = a->next) {
        struct function *fn = stoke_container_of(a, struct function, node);
        uint64_t memory = 0;
        for (struct stoke_list *b = fn->replicas.next; b != &fn->replicas; b = b->next) {
            struct replica *r = stoke_container_of(b, struct replica, node);
            /* A paused replica's frozen process uses no CPU and its memory
             * stays as it was: it keeps its sample from the pause
             * (paused()) until it wakes (replica_wake() samples it then),
             * and costs no cgroup reads per tick, which add up with a
             * thousand of them paused. */
            if (r->state != R_PAUSED)
                usage_sample(r);
            memory += r->usage.memory_bytes;
        }
        fn->usage.memory_bytes = memory;
    }
}

const char *usage_not_measured(const struct ctrl *c)
{
    static char note[160];
    if (backend_can(c->be, BACKEND_HAS_CGROUPS))
        return NULL;
    (void)snprintf(note, sizeof(note),
                   "CPU and memory are not measured: the %s backend reads no cgroups of its "
                   "replicas (GB-seconds use the specs' memory limits)",
                   c->be->name);
    return note;
}
