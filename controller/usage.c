/* Per-function resource use from the replicas' cgroups (libcgroup).
 *
 * Every tick each replica is sampled once: two small reads of cgroupfs
 * (CPU counter, memory in use; the memory limit once per run of its
 * container). That is in-memory kernel state, a few microseconds a read,
 * so it stays on the loop: a thread (uv_queue_work) would cost more in
 * copying replica state back and forth than the reads themselves take.
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

#include "controller.h"
#include "stoke/log.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

void usage_init(struct ctrl *c)
{
    int r = stoke_freezer_init();
    c->usage_ok = r == 0;
    if (r < 0)
        stoke_warn(NULL, r,
                   "libcgroup finds no cgroups: per-function CPU and memory metrics are off "
                   "(GB-seconds use the specs' memory limits)");
}

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

/* The replica's container has no live cgroup in these states. */
static bool has_no_process(enum replica_state s)
{
    return s == R_CREATING || s == R_STOPPED || s == R_CREATED;
}

/* Its container surely runs (or is frozen) in these: a cgroup not found
 * then is worth a warning. Starting (the engine's start in flight) and
 * stopping may be either, so a cgroup is only looked for in these. */
static bool surely_runs(const struct replica *r)
{
    switch (r->state) {
    case R_PROBING:
    case R_READY:
    case R_RETIRING:
    case R_PAUSING:
    case R_PAUSED:
        return !r->exited;
    default:
        return false;
    }
}

/* Finds the replica's cgroup for its container's current run. */
static int find_cgroup(struct replica *r)
{
    struct ctrl *c = r->fn->ctrl;
    const char *hint = r->freezer.version == 1 ? r->freezer.path : NULL;
    int e = stoke_cgusage_find(r->id, hint, &r->usage.cg);
    if (e < 0) {
        if (!c->usage_warned)
            stoke_warn(r->fn->spec.name, e,
                       "cannot find the cgroup of replica %.12s: its CPU and memory count as 0 "
                       "(said once for all replicas)",
                       r->id);
        c->usage_warned = true;
        return e;
    }
    r->usage.has_cg = true;
    r->usage.last_cpu_ns = 0;
    if (stoke_cgusage_limit(&r->usage.cg, &r->usage.limit_bytes) < 0)
        r->usage.limit_bytes = 0;
    return 0;
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
    if (!c->usage_ok || r->id[0] == '\0' || has_no_process(r->state)) {
        u->has_cg = false;
        u->lost = false; /* the next run has a cgroup of its own */
        u->memory_bytes = 0;
        return;
    }
    if (!u->has_cg && (u->lost || !surely_runs(r) || find_cgroup(r) < 0)) {
        u->memory_bytes = 0;
        return;
    }
    struct stoke_cgusage s;
    int e = stoke_cgusage_read(&u->cg, &s);
    if (e < 0) {
        /* Gone (exited, or stopping): not looked for again in this run;
         * the next run has a new cgroup. */
        u->has_cg = false;
        u->lost = true;
        u->memory_bytes = 0;
        if (e != -ENOENT)
            stoke_debug(fn->spec.name, "cannot read the cgroup of replica %.12s (%s): %s", r->id,
                        u->cg.path, uv_err_name(e));
        return;
    }
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
            usage_sample(r);
            memory += r->usage.memory_bytes;
        }
        fn->usage.memory_bytes = memory;
    }
}
