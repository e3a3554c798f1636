/* Inside libstoke only: libcgroup's result codes as negative errnos, for
 * freezer.c and cgusage.c. */
#ifndef STOKE_COMMON_CGERR_H
#define STOKE_COMMON_CGERR_H

/* 0 for 0; -EACCES (not allowed), -ENOENT (no such cgroup or value),
 * -ENOTSUP (libcgroup not initialised, hierarchy not mounted), -EINVAL
 * (ECGEOF: an empty file), the errno behind ECGOTHER, else -EIO. */
int stoke__cg_errno(int code);

#endif
