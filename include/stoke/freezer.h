/* A container's freezer cgroup, written directly through libcgroup: the
 * warm tier's pause and its fast wake-up.
 *
 * Why directly, and both ways: the engine's unpause costs about 28 ms,
 * a write of the freezer file about 1 ms. But with Docker 20.10 and runc
 * 1.1 (cgroup v1), a container paused by the engine and thawed behind its
 * back can never be unpaused by it again ("container not paused": runc
 * reads the freezer and refuses) and the engine keeps calling it paused.
 * So stoke freezes and thaws the cgroup itself; the engine sees a running
 * container all along. Found from the container's pid, like runc does.
 *
 * Thread: any, but calls do small synchronous reads and writes of kernel
 * pseudo-files (/proc, cgroupfs), no disk I/O. */
#ifndef STOKE_FREEZER_H
#define STOKE_FREEZER_H

#include <stdbool.h>
#include <stddef.h>

#define STOKE_CGROUP_PATH_MAX 512

struct stoke_freezer {
    int version; /* 1: the v1 freezer hierarchy (freezer.state); 2: unified (cgroup.freeze) */
    char path[STOKE_CGROUP_PATH_MAX]; /* relative to the hierarchy's root, starts with '/' */
};

/* From the text of /proc/PID/cgroup: the v1 line naming the freezer
 * controller when there is one, else the unified "0::" line. Pure. Returns
 * 0 and fills *ret, -ENOENT when neither is there, -EINVAL for a malformed
 * text or a path that does not fit. */
int stoke_freezer_parse(const char *text, size_t len, struct stoke_freezer *ret);

/* Initialises libcgroup (once; later calls return the first result) with
 * its logging off: errors come back as values. Returns 0 or -ENOTSUP when
 * libcgroup finds no cgroup mounts. */
int stoke_freezer_init(void);

/* The freezer cgroup of process `pid`. Returns 0, -ENOENT (no such
 * process), -EINVAL, or what stoke_freezer_parse() returns. */
int stoke_freezer_find(int pid, struct stoke_freezer *ret);

/* Freezes or thaws. Returns 0, or -ENOTSUP (libcgroup not initialised, or
 * the hierarchy is not mounted), -ENOENT (the cgroup is gone), -EACCES
 * (not allowed: rootless, read-only cgroupfs), another negative errno. */
int stoke_freezer_set(const struct stoke_freezer *f, bool frozen);

/* Returns 1 when frozen or freezing, 0 when thawed, or a negative errno as
 * for stoke_freezer_set(). */
int stoke_freezer_get(const struct stoke_freezer *f);

#endif
