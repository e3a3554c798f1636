/* Container CPU and memory use from cgroups; see stoke/cgusage.h. */
#include "stoke/cgusage.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <libcgroup.h>

#include "cgerr.h"
#include "stoke/util.h"

#define UNLIMITED_V1 (1ull << 60)

int stoke_cgusage_parse_u64(const char *text, uint64_t *ret)
{
    char num[32];
    size_t len = strcspn(text, "\n");
    if (len == 0 || len >= sizeof(num))
        return -EINVAL;
    memcpy(num, text, len);
    num[len] = '\0';
    if (strcmp(num, "max") == 0) {
        *ret = UINT64_MAX;
        return 0;
    }
    return stoke_parse_u64(num, ret) < 0 ? -EINVAL : 0;
}

int stoke_cgusage_parse_cpu_stat(const char *line, uint64_t *ret_ns)
{
    static const char key[] = "usage_usec ";
    uint64_t us;
    if (strncmp(line, key, sizeof(key) - 1) != 0 ||
        stoke_cgusage_parse_u64(line + sizeof(key) - 1, &us) < 0 || us == UINT64_MAX ||
        us > UINT64_MAX / 1000)
        return -EINVAL;
    *ret_ns = us * 1000;
    return 0;
}

uint64_t stoke_cgusage_cpu_delta(uint64_t *last_ns, uint64_t now_ns)
{
    uint64_t d = now_ns >= *last_ns ? now_ns - *last_ns : now_ns;
    *last_ns = now_ns;
    return d;
}

/* The first line of `file` of `controller` in cgroup `path`. */
static int read_line(const char *controller, const char *path, const char *file, char *buf,
                     int size)
{
    void *handle = NULL;
    char name[64];
    /* The name argument is not const in libcgroup 2.0. */
    (void)snprintf(name, sizeof(name), "%s", file);
    buf[0] = '\0';
    int r = cgroup_read_value_begin(controller, path, name, &handle, buf, size);
    if (handle)
        (void)cgroup_read_value_end(&handle);
    return stoke__cg_errno(r);
}

static int read_u64(const char *controller, const char *path, const char *file, uint64_t *ret)
{
    char buf[128];
    int r = read_line(controller, path, file, buf, (int)sizeof(buf));
    return r < 0 ? r : stoke_cgusage_parse_u64(buf, ret);
}

static int read_cpu(const struct stoke_cgroup *cg, uint64_t *ret_ns)
{
    if (cg->version == 1)
        return read_u64("cpuacct", cg->path, "cpuacct.usage", ret_ns);
    char buf[128];
    int r = read_line("cpu", cg->path, "cpu.stat", buf, (int)sizeof(buf));
    return r < 0 ? r : stoke_cgusage_parse_cpu_stat(buf, ret_ns);
}

int stoke_cgusage_find(const char *id, const char *hint, struct stoke_cgroup *ret)
{
    /* Where engines put a container's cgroup: prefix, id, suffix. */
    static const char *const forms[][2] = {
        {"/docker/", ""},
        {"/system.slice/docker-", ".scope"},
        {"/machine.slice/libpod-", ".scope"},
        {"/libpod_parent/libpod-", ""},
    };
    struct stoke_cgroup cg;
    uint64_t ns;
    int best = -ENOTSUP;

    if (strlen(id) != 64 || strspn(id, "0123456789abcdef") != 64)
        return -EINVAL;
    for (int version = 1; version <= 2; version++) {
        cg.version = version;
        for (size_t i = hint ? 0 : 1; i <= STOKE_ARRAY_SIZE(forms); i++) {
            int n = i == 0 ? snprintf(cg.path, sizeof(cg.path), "%s", hint)
                           : snprintf(cg.path, sizeof(cg.path), "%s%s%s", forms[i - 1][0], id,
                                      forms[i - 1][1]);
            if (n < 0 || (size_t)n >= sizeof(cg.path))
                continue;
            int r = read_cpu(&cg, &ns);
            if (r == 0) {
                *ret = cg;
                return 0;
            }
            if (r == -ENOTSUP)
                break; /* this version's hierarchy is not mounted */
            best = -ENOENT;
        }
    }
    return best;
}

int stoke_cgusage_read(const struct stoke_cgroup *cg, struct stoke_cgusage *ret)
{
    struct stoke_cgusage u;
    int r = read_cpu(cg, &u.cpu_ns);
    if (r == 0)
        r = read_u64("memory", cg->path,
                     cg->version == 1 ? "memory.usage_in_bytes" : "memory.current",
                     &u.memory_bytes);
    if (r < 0)
        return r;
    *ret = u;
    return 0;
}

int stoke_cgusage_limit(const struct stoke_cgroup *cg, uint64_t *ret_bytes)
{
    uint64_t v;
    int r =
        read_u64("memory", cg->path, cg->version == 1 ? "memory.limit_in_bytes" : "memory.max", &v);
    if (r < 0)
        return r;
    *ret_bytes = v >= UNLIMITED_V1 ? 0 : v;
    return 0;
}
