/* A container's CPU and memory use, read from its cgroup through
 * libcgroup: what the controller's per-function usage metrics are made of.
 *
 * Where the cgroup is: the engine names a container's cgroup after its id.
 * With Docker's cgroupfs driver (cgroup v1 here) it is /docker/<id> in
 * every hierarchy; with the systemd driver /system.slice/docker-<id>.scope;
 * Podman's are libpod-<id>. stoke_cgusage_find() tries a path the caller
 * already knows (a freezer path found from the container's pid), then
 * those, and keeps the first one whose CPU counter it can read. A cgroup
 * parent other than these defaults is not found (usage then stays 0).
 *
 * Thread: any, after stoke_freezer_init() (which initialises libcgroup).
 * Calls do small synchronous reads of cgroupfs files: in-memory kernel
 * state, no disk I/O. */
#ifndef STOKE_CGUSAGE_H
#define STOKE_CGUSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stoke/freezer.h"

struct stoke_cgroup {
    int version; /* 1: cpuacct and memory hierarchies; 2: unified */
    char path[STOKE_CGROUP_PATH_MAX];
};

struct stoke_cgusage {
    uint64_t cpu_ns;       /* CPU time used by the cgroup since it was made */
    uint64_t memory_bytes; /* memory charged to it now (page cache included) */
};

/* Finds the cgroup of container `id` (64 hex), trying `hint` first (a path
 * relative to the hierarchies' roots, or NULL). Returns 0 and *ret, -ENOENT
 * when no candidate is readable (the container is not running, or its
 * cgroup is elsewhere), -ENOTSUP when libcgroup finds no usable hierarchy,
 * -EINVAL for a bad id. */
int stoke_cgusage_find(const char *id, const char *hint, struct stoke_cgroup *ret);

/* Reads CPU time and memory use. Returns 0, -ENOENT (the cgroup is gone),
 * -EINVAL (a value that does not parse), another negative errno. */
int stoke_cgusage_read(const struct stoke_cgroup *cg, struct stoke_cgusage *ret);

/* The cgroup's memory limit in bytes; 0 when it has none (v1 reports an
 * unlimited cgroup as a huge number: anything at or over 2^60 is none).
 * Returns 0 and *ret_bytes, or a negative errno as for the read. */
int stoke_cgusage_limit(const struct stoke_cgroup *cg, uint64_t *ret_bytes);

/* Parses the first line of a cgroup file holding one number ("123\n"),
 * or "max" (v2's "no limit": *ret = UINT64_MAX). Returns 0 or -EINVAL. */
int stoke_cgusage_parse_u64(const char *text, uint64_t *ret);

/* Parses cgroup v2's cpu.stat line "usage_usec N" into nanoseconds.
 * Returns 0 or -EINVAL. */
int stoke_cgusage_parse_cpu_stat(const char *line, uint64_t *ret_ns);

/* The CPU time to add to a counter since the last sample `*last_ns`, which
 * becomes `now_ns`. A value lower than the last means a new cgroup (the
 * container was stopped and started again: its counter began at 0), so
 * all of `now_ns` is new. Pure. */
uint64_t stoke_cgusage_cpu_delta(uint64_t *last_ns, uint64_t now_ns);

#endif
