/* A container's freezer cgroup through libcgroup; see stoke/freezer.h. */
#include "stoke/freezer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <libcgroup.h>

#include "cgerr.h"

/* /proc/PID/cgroup lists one line per hierarchy: a dozen lines. */
#define PROC_CGROUP_MAX 8192

int stoke_freezer_parse(const char *text, size_t len, struct stoke_freezer *ret)
{
    struct stoke_freezer v2 = {0};
    const char *end = text + len;

    while (text < end) {
        const char *nl = memchr(text, '\n', (size_t)(end - text));
        const char *eol = nl ? nl : end;
        const char *c1 = memchr(text, ':', (size_t)(eol - text));
        const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(eol - c1 - 1)) : NULL;
        /* "ID:CONTROLLERS:PATH"; the path may itself hold ':'. */
        if (!c2 || c1 == text || strspn(text, "0123456789") != (size_t)(c1 - text))
            return -EINVAL;
        const char *path = c2 + 1;
        size_t plen = (size_t)(eol - path);
        if (plen == 0 || path[0] != '/' || memchr(path, '\0', plen))
            return -EINVAL;
        if (plen >= sizeof(ret->path))
            return -EINVAL;
        bool unified = c2 == c1 + 1;
        bool freezer = false;
        for (const char *p = c1 + 1; p < c2;) {
            const char *comma = memchr(p, ',', (size_t)(c2 - p));
            const char *tok_end = comma ? comma : c2;
            if ((size_t)(tok_end - p) == 7 && memcmp(p, "freezer", 7) == 0)
                freezer = true;
            p = tok_end + 1;
        }
        if (freezer) {
            ret->version = 1;
            memcpy(ret->path, path, plen);
            ret->path[plen] = '\0';
            return 0;
        }
        if (unified && text[0] == '0' && c1 == text + 1) {
            v2.version = 2;
            memcpy(v2.path, path, plen);
            v2.path[plen] = '\0';
        }
        text = nl ? nl + 1 : end;
    }
    if (v2.version == 0)
        return -ENOENT;
    *ret = v2;
    return 0;
}

static void quiet(void *userdata, int level, const char *fmt, va_list ap)
{
    (void)userdata;
    (void)level;
    (void)fmt;
    (void)ap;
}

int stoke_freezer_init(void)
{
    static int result = 1;
    if (result <= 0)
        return result;
    /* libcgroup logs to stdout by default; stoke logs JSON on stderr and
     * reports errors where they are handled. */
    cgroup_set_logger(quiet, CGROUP_LOG_ERROR, NULL);
    result = cgroup_init() == 0 ? 0 : -ENOTSUP;
    return result;
}

int stoke_freezer_find(int pid, struct stoke_freezer *ret)
{
    char path[64];
    char buf[PROC_CGROUP_MAX];
    size_t len = 0;
    int fd;

    if (pid <= 0)
        return -EINVAL;
    (void)snprintf(path, sizeof(path), "/proc/%d/cgroup", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = -errno;
            close(fd);
            return e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof(buf)) {
            close(fd);
            return -EINVAL;
        }
    }
    close(fd);
    return stoke_freezer_parse(buf, len, ret);
}

int stoke__cg_errno(int code)
{
    switch (code) {
    case 0:
        return 0;
    case ECGROUPNOTALLOWED:
        return -EACCES;
    case ECGROUPVALUENOTEXIST:
    case ECGROUPNOTEXIST:
        return -ENOENT;
    case ECGROUPNOTINITIALIZED:
    case ECGROUPNOTMOUNTED:
    case ECGROUPSUBSYSNOTMOUNTED:
        return -ENOTSUP;
    case ECGEOF:
        return -EINVAL;
    case ECGOTHER: {
        int e = cgroup_get_last_errno();
        return e > 0 ? -e : -ENOTSUP;
    }
    default:
        return -EIO;
    }
}

int stoke_freezer_set(const struct stoke_freezer *f, bool frozen)
{
    const char *controller = f->version == 1 ? "freezer" : "cgroup";
    const char *file = f->version == 1 ? "freezer.state" : "cgroup.freeze";
    const char *value = f->version == 1 ? (frozen ? "FROZEN" : "THAWED") : (frozen ? "1" : "0");
    struct cgroup *cg = NULL;
    struct cgroup_controller *ctl;
    int r = -ENOMEM;

    if (f->version != 1 && f->version != 2)
        return -EINVAL;
    cg = cgroup_new_cgroup(f->path);
    if (!cg)
        goto out;
    ctl = cgroup_add_controller(cg, controller);
    if (!ctl)
        goto out;
    r = stoke__cg_errno(cgroup_add_value_string(ctl, file, value));
    if (r < 0)
        goto out;
    r = stoke__cg_errno(cgroup_modify_cgroup(cg));
out:
    cgroup_free(&cg);
    return r;
}

int stoke_freezer_get(const struct stoke_freezer *f)
{
    char buf[32] = "";
    void *handle = NULL;
    int r;

    if (f->version != 1 && f->version != 2)
        return -EINVAL;
    /* The name argument is not const in libcgroup 2.0. */
    char file[32];
    (void)snprintf(file, sizeof(file), "%s", f->version == 1 ? "freezer.state" : "cgroup.freeze");
    r = cgroup_read_value_begin(f->version == 1 ? "freezer" : "cgroup", f->path, file, &handle, buf,
                                (int)sizeof(buf));
    if (handle)
        (void)cgroup_read_value_end(&handle);
    if (r == ECGEOF)
        return -EINVAL;
    if (r != 0)
        return stoke__cg_errno(r);
    if (f->version == 1)
        return strncmp(buf, "THAWED", 6) == 0 ? 0 : 1; /* FROZEN, FREEZING */
    return buf[0] == '1' ? 1 : 0;
}
