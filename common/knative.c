/* Knative serving.knative.dev/v1 Service manifests to stoke specs.
 *
 * Like common/spec.c, two passes, and the first is the same: common/yamltree.c
 * reads the YAML into a tree with every YAML-level refusal and the same caps
 * as stoke/v1. The second walks the Knative schema by hand: its call depth
 * follows the schema (at most seven levels), whatever the input. Fields are
 * paths as Knative's own validation prints them
 * ("spec.template.metadata.annotations.autoscaling.knative.dev/min-scale"). */
#include "stoke/knative.h"
#include "yamltree.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define API_VERSION "serving.knative.dev/v1"
#define KIND "Service"
#define AS_PREFIX "autoscaling.knative.dev/"
#define MS_PER_S UINT64_C(1000)
#define MS_PER_H (3600 * MS_PER_S)
#define MAX_REPLICAS 10000
#define MAX_STRING 1024
#define MIN_MEMORY (UINT64_C(6) * 1024 * 1024)
#define MAX_CPU_MILLIS UINT64_C(1000000)
#define PATH_MAX_LEN 128

struct kctx {
    struct stoke__yaml y;
    struct stoke_diag *warns; /* up to STOKE_KNATIVE_MAX_WARNINGS */
    size_t nwarn, dropped;
    /* Autoscaling annotations that are checked against each other. */
    int at_min, at_initial;
    char path_min[PATH_MAX_LEN], path_initial[PATH_MAX_LEN];
};

/* --- warnings ----------------------------------------------------------------- */

static int warn(struct kctx *c, int i, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records a warning at node `i`; returns 0 or -ENOMEM. */
static int warn(struct kctx *c, int i, const char *path, const char *fmt, ...)
{
    va_list ap;

    if (c->nwarn == STOKE_KNATIVE_MAX_WARNINGS) {
        c->dropped++;
        return 0;
    }
    if (!c->warns) {
        c->warns = calloc(STOKE_KNATIVE_MAX_WARNINGS, sizeof(*c->warns));
        if (!c->warns)
            return stoke__yaml_oom(&c->y);
    }
    va_start(ap, fmt);
    stoke__yaml_vdiag(&c->y, &c->warns[c->nwarn++], i, path, fmt, ap);
    va_end(ap);
    return 0;
}

static int unsupported(struct kctx *c, int key, const char *path)
{
    return warn(c, key, path, "not supported by stoke, ignored");
}

/* --- pass 2: helpers ---------------------------------------------------------- */

/* Field paths are only for messages: a long one is cut short quietly. */
static void join(char *out, const char *path, const char *key)
{
    if (snprintf(out, PATH_MAX_LEN, "%s%s%s", path, path[0] ? "." : "", key) < 0)
        out[0] = '\0';
}

static void join_index(char *out, const char *path, size_t i)
{
    if (snprintf(out, PATH_MAX_LEN, "%s[%zu]", path, i) < 0)
        out[0] = '\0';
}

static int lookup(const struct kctx *c, int m, const char *key)
{
    for (int k = stoke__yaml_first_key(&c->y, m); k >= 0; k = stoke__yaml_next_key(&c->y, k))
        if (strcmp(c->y.nodes[k].text, key) == 0)
            return c->y.nodes[k].next;
    return -1;
}

/* A Kubernetes integer field: plain digits, as the API server would take. */
static int get_int(struct kctx *c, int i, const char *path, uint64_t lo, uint64_t hi, uint64_t *ret)
{
    const struct stoke__yaml_node *nd = &c->y.nodes[i];
    const char *t = nd->text;
    uint64_t v = 0;

    if (nd->kind != STOKE__YAML_SCALAR || stoke__yaml_is_null(nd))
        return stoke__yaml_fail(&c->y, i, path, "expected an integer, found %s",
                                stoke__yaml_kind_name(nd));
    if (nd->str_tag)
        return stoke__yaml_fail(&c->y, i, path, "expected an integer, found the string \"%.32s\"",
                                t);
    if (t[0] == '-' && t[1])
        return stoke__yaml_fail(&c->y, i, path, "must not be negative (found %.32s)", t);
    if (!t[0] || strspn(t, "0123456789") != strlen(t))
        return stoke__yaml_fail(&c->y, i, path, "expected a decimal integer, found \"%.32s\"", t);
    if (t[0] == '0' && t[1])
        return stoke__yaml_fail(&c->y, i, path, "leading zeros are not allowed (\"%.32s\")", t);
    for (; *t && v <= hi; t++)
        v = v * 10 + (uint64_t)(*t - '0');
    if (*t || v < lo || v > hi)
        return stoke__yaml_fail(&c->y, i, path,
                                "must be between %" PRIu64 " and %" PRIu64 " (found %.32s)", lo, hi,
                                nd->text);
    *ret = v;
    return 0;
}

static int set_string(struct kctx *c, int i, const char *path, char **dst, bool is_path)
{
    const char *t = NULL;
    int r = stoke__yaml_text(&c->y, i, path, "a string", &t);
    char *d;

    if (r < 0)
        return r;
    if (!t[0])
        return stoke__yaml_fail(&c->y, i, path, "must not be empty");
    if (is_path && t[0] != '/')
        return stoke__yaml_fail(&c->y, i, path, "must start with '/' (found \"%.64s\")", t);
    if (strlen(t) > MAX_STRING || !stoke__yaml_is_token(t))
        return stoke__yaml_fail(
            &c->y, i, path,
            "invalid %s \"%.64s\": at most %d printable ASCII characters without spaces",
            is_path ? "path" : "image reference", t, MAX_STRING);
    d = strdup(t);
    if (!d)
        return stoke__yaml_oom(&c->y);
    free(*dst);
    *dst = d;
    return 0;
}

/* What a key_fn returns besides 0 and -errno. */
enum {
    UNKNOWN = 1,     /* not a field stoke knows: a warning, unless `quiet` */
    UNSUPPORTED = 2, /* known, not supported by stoke: a warning always */
};

/* A mapping whose keys each go to `fn`. */
typedef int (*key_fn)(struct kctx *c, const char *key, int v, const char *path,
                      struct stoke_spec *s);

static int walk(struct kctx *c, int m, const char *path, key_fn fn, bool quiet,
                struct stoke_spec *s)
{
    int r = stoke__yaml_want_map(&c->y, m, path);

    for (int k = stoke__yaml_first_key(&c->y, m); r >= 0 && k >= 0;
         k = stoke__yaml_next_key(&c->y, k)) {
        char sub[PATH_MAX_LEN];
        join(sub, path, c->y.nodes[k].text);
        r = fn(c, c->y.nodes[k].text, c->y.nodes[k].next, sub, s);
        if (r == UNSUPPORTED || (r == UNKNOWN && !quiet))
            r = unsupported(c, k, sub);
        else if (r == UNKNOWN)
            r = 0;
    }
    return r;
}

static int require(struct kctx *c, int m, const char *path, const char *key)
{
    char sub[PATH_MAX_LEN];

    if (c->y.nodes[m].kind == STOKE__YAML_MAP && lookup(c, m, key) >= 0)
        return 0;
    join(sub, path, key);
    return stoke__yaml_fail(&c->y, m, sub, "missing required field \"%s\"", key);
}

/* --- autoscaling annotations ---------------------------------------------------- */

enum avalue {
    A_COUNT,   /* replicas: whole number */
    A_DECIMAL, /* Knative takes a float: rounded to a whole number */
    A_DURATION,
};

/* Knative reads each under its current name and its older camelCase one
 * (still in many manifests and docs); a mapping that holds both is refused
 * rather than guessed. */
struct annotation {
    const char *name, *alt; /* after "autoscaling.knative.dev/" */
    enum avalue type;
    size_t off; /* in struct stoke_scale */
    uint64_t min, max;
};

#define ANN(n, a, t, m, lo, hi)                                                                    \
    {                                                                                              \
        (n), (a), (t), offsetof(struct stoke_scale, m), (lo), (hi)                                 \
    }

static const struct annotation annotations[] = {
    ANN("min-scale", "minScale", A_COUNT, min, 0, MAX_REPLICAS),
    ANN("max-scale", "maxScale", A_COUNT, max, 0, MAX_REPLICAS),
    ANN("initial-scale", "initialScale", A_COUNT, initial, 0, MAX_REPLICAS),
    ANN("target", "target", A_DECIMAL, target, 1, 1000000),
    ANN("target-utilization-percentage", "targetUtilizationPercentage", A_DECIMAL, utilization, 1,
        100),
    ANN("window", "window", A_DURATION, window_ms, 6 * MS_PER_S, MS_PER_H),
    ANN("panic-window-percentage", "panicWindowPercentage", A_DECIMAL, panic_window_percent, 1,
        100),
    ANN("panic-threshold-percentage", "panicThresholdPercentage", A_DECIMAL,
        panic_threshold_percent, 110, 1000),
    ANN("scale-down-delay", "scaleDownDelay", A_DURATION, scale_down_delay_ms, 0, MS_PER_H),
};

/* "<digits>[.<digits>]" rounded half up. Returns 0, or -EINVAL / -ERANGE. */
static int parse_decimal(const char *t, uint64_t *ret, bool *ret_rounded)
{
    uint64_t v = 0;
    const char *p = t;

    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (p == t)
        return -EINVAL;
    *ret_rounded = false;
    if (*p == '.') {
        const char *f = ++p;
        p += strspn(p, "0123456789");
        if (p == f)
            return -EINVAL;
        *ret_rounded = strspn(f, "0") < (size_t)(p - f);
        if (*f >= '5')
            v++;
    }
    if (*p)
        return -EINVAL;
    *ret = v;
    return 0;
}

static int set_annotation(struct kctx *c, const struct annotation *a, int i, const char *path,
                          struct stoke_spec *s)
{
    const char *t = NULL;
    bool rounded = false;
    uint64_t v = 0;
    char *field = (char *)&s->scale + a->off;
    int r = stoke__yaml_text(&c->y, i, path, "a string", &t);

    if (r < 0)
        return r;
    if (t[0] == '-')
        return stoke__yaml_fail(&c->y, i, path, "must not be negative (found \"%.32s\")", t);
    if (a->type == A_DURATION) {
        r = stoke_parse_duration(t, &v);
        if (r < 0)
            return stoke__yaml_fail(
                &c->y, i, path,
                "invalid duration \"%.32s\": use numbers with units ms, s, m or h, "
                "e.g. \"30s\" or \"1m30s\"",
                t);
    } else {
        r = parse_decimal(t, &v, &rounded);
        if (r == -EINVAL || (a->type == A_COUNT && strchr(t, '.')))
            return stoke__yaml_fail(&c->y, i, path, "expected %s, found \"%.32s\"",
                                    a->type == A_COUNT ? "a whole number" : "a number", t);
    }
    if (r < 0 || v < a->min || v > a->max) {
        if (a->type == A_DURATION)
            return stoke__yaml_fail(
                &c->y, i, path, "must be between %" PRIu64 "s and %" PRIu64 "s (found \"%.32s\")",
                a->min / MS_PER_S, a->max / MS_PER_S, t);
        return stoke__yaml_fail(&c->y, i, path,
                                "must be between %" PRIu64 " and %" PRIu64 " (found \"%.32s\")",
                                a->min, a->max, t);
    }
    if (a->type == A_DURATION)
        *(uint64_t *)(void *)field = v;
    else
        *(uint32_t *)(void *)field = (uint32_t)v;
    if (rounded)
        return warn(c, i, path, "rounded to %" PRIu64 ": stoke takes whole numbers", v);
    return 0;
}

/* One annotations mapping: the Service's or its template's. */
static int walk_annotations(struct kctx *c, int m, const char *path, struct stoke_spec *s)
{
    int seen[sizeof(annotations) / sizeof(annotations[0])]; /* key nodes in this mapping */
    int r = stoke__yaml_want_map(&c->y, m, path);

    for (size_t j = 0; j < sizeof(seen) / sizeof(seen[0]); j++)
        seen[j] = -1;
    for (int k = stoke__yaml_first_key(&c->y, m); r >= 0 && k >= 0;
         k = stoke__yaml_next_key(&c->y, k)) {
        const char *key = c->y.nodes[k].text;
        int v = c->y.nodes[k].next;
        char sub[PATH_MAX_LEN];
        const char *t = NULL;
        const struct annotation *a = NULL;

        join(sub, path, key);
        r = stoke__yaml_text(&c->y, v, sub, "a string", &t);
        if (r < 0)
            break;
        if (strncmp(key, AS_PREFIX, sizeof(AS_PREFIX) - 1) == 0) {
            const char *name = key + sizeof(AS_PREFIX) - 1;
            for (size_t j = 0; j < sizeof(annotations) / sizeof(annotations[0]); j++)
                if (strcmp(name, annotations[j].name) == 0 || strcmp(name, annotations[j].alt) == 0)
                    a = &annotations[j];
            if (a && seen[a - annotations] >= 0)
                return stoke__yaml_fail(&c->y, k, sub, "also set as \"%.64s\" at line %u: keep one",
                                        c->y.nodes[seen[a - annotations]].text,
                                        c->y.nodes[seen[a - annotations]].line);
            if (a) {
                seen[a - annotations] = k;
                r = set_annotation(c, a, v, sub, s);
                if (a->off == offsetof(struct stoke_scale, min))
                    c->at_min = v, memcpy(c->path_min, sub, sizeof(sub));
                else if (a->off == offsetof(struct stoke_scale, initial))
                    c->at_initial = v, memcpy(c->path_initial, sub, sizeof(sub));
            } else if (strcmp(name, "class") == 0 &&
                       strcmp(t, "kpa.autoscaling.knative.dev") == 0) {
                r = 0; /* stoke's autoscaler is the KPA */
            } else if (strcmp(name, "metric") == 0 && strcmp(t, "concurrency") == 0) {
                r = 0;
            } else {
                r = unsupported(c, k, sub);
            }
        } else if (strstr(key, "knative.dev/") && strcmp(key, "serving.knative.dev/creator") != 0 &&
                   strcmp(key, "serving.knative.dev/lastModifier") != 0) {
            /* Other Knative settings change behaviour stoke does not have;
             * the two above are written by Knative itself, to say who. */
            r = unsupported(c, k, sub);
        }
        /* Anything else (kubectl's, other tools') is bookkeeping: ignored. */
    }
    return r;
}

/* Knative's own checks between scale bounds, at the value written last. */
static int check_scale(struct kctx *c, struct stoke_spec *s)
{
    const struct stoke_scale *sc = &s->scale;

    /* A default min (0) or initial (1) never exceeds a max that is set. */
    if (sc->max && sc->min > sc->max)
        return stoke__yaml_fail(&c->y, c->at_min, c->path_min,
                                "min-scale (%u) must not be greater than max-scale (%u)", sc->min,
                                sc->max);
    if (sc->max && sc->initial > sc->max)
        return stoke__yaml_fail(&c->y, c->at_initial, c->path_initial,
                                "initial-scale (%u) must not be greater than max-scale (%u)",
                                sc->initial, sc->max);
    return 0;
}

/* --- the container ---------------------------------------------------------- */

static int env_entry(struct kctx *c, int item, const char *path, struct stoke_spec *s)
{
    int r = stoke__yaml_want_map(&c->y, item, path), name = -1, value = -1;
    char sub[PATH_MAX_LEN];
    struct stoke_env_var *e;

    for (int k = stoke__yaml_first_key(&c->y, item); r >= 0 && k >= 0;
         k = stoke__yaml_next_key(&c->y, k)) {
        const char *key = c->y.nodes[k].text;
        join(sub, path, key);
        if (strcmp(key, "name") == 0)
            name = c->y.nodes[k].next;
        else if (strcmp(key, "value") == 0)
            value = c->y.nodes[k].next;
        else
            r = unsupported(c, k, sub); /* valueFrom and anything else */
    }
    if (r < 0)
        return r;
    r = require(c, item, path, "name");
    join(sub, path, "name");
    if (r >= 0)
        r = stoke__yaml_text(&c->y, name, sub, "a string", &(const char *){NULL});
    if (r < 0)
        return r;
    if (!stoke__yaml_is_env_name(c->y.nodes[name].text))
        return stoke__yaml_fail(
            &c->y, name, sub,
            "invalid environment variable name \"%.64s\": use letters, digits and '_', "
            "not starting with a digit",
            c->y.nodes[name].text);
    if (strcmp(c->y.nodes[name].text, "PORT") == 0)
        return stoke__yaml_fail(&c->y, name, sub,
                                "PORT is set by stoke from ports[0].containerPort");
    for (size_t j = 0; j < s->env_len; j++)
        if (strcmp(s->env[j].name, c->y.nodes[name].text) == 0)
            return stoke__yaml_fail(&c->y, name, sub, "duplicate environment variable \"%.64s\"",
                                    c->y.nodes[name].text);
    if (value >= 0 && c->y.nodes[value].kind != STOKE__YAML_SCALAR) {
        join(sub, path, "value");
        return stoke__yaml_fail(&c->y, value, sub, "expected a string, found %s",
                                stoke__yaml_kind_name(&c->y.nodes[value]));
    }
    if (value < 0 && lookup(c, item, "valueFrom") >= 0)
        return 0; /* warned above: the variable is left out */
    e = &s->env[s->env_len];
    e->name = strdup(c->y.nodes[name].text);
    e->value =
        strdup(value < 0 || stoke__yaml_is_null(&c->y.nodes[value]) ? "" : c->y.nodes[value].text);
    s->env_len++;
    return e->name && e->value ? 0 : stoke__yaml_oom(&c->y);
}

static int walk_env(struct kctx *c, int seq, const char *path, struct stoke_spec *s)
{
    int r = stoke__yaml_want_seq(&c->y, seq, path);
    size_t i = 0;

    if (r < 0 || c->y.nodes[seq].kind != STOKE__YAML_SEQ || c->y.nodes[seq].nchild == 0)
        return r;
    if (c->y.nodes[seq].nchild > STOKE_SPEC_MAX_ENV)
        return stoke__yaml_fail(&c->y, seq, path,
                                "too many environment variables (the limit is %d)",
                                STOKE_SPEC_MAX_ENV);
    s->env = calloc(c->y.nodes[seq].nchild, sizeof(*s->env));
    if (!s->env)
        return stoke__yaml_oom(&c->y);
    for (int it = c->y.nodes[seq].first; r >= 0 && it >= 0; it = c->y.nodes[it].next, i++) {
        char sub[PATH_MAX_LEN];
        join_index(sub, path, i);
        r = env_entry(c, it, sub, s);
    }
    return r;
}

/* resources.limits: stoke's memory and CPU limits, with stoke's bounds. */
static const struct quantity {
    const char *key, *what, *hint, *range;
    int (*parse)(const char *s, uint64_t *ret);
    uint64_t min, max;
    size_t off; /* in struct stoke_spec */
} quantities[] = {
    {"memory", "memory quantity", "use bytes or a number with Ki, Mi, Gi, Ti, k, M, G or T",
     "must be at least 6Mi, Docker's smallest memory limit", stoke_parse_memory, MIN_MEMORY,
     UINT64_MAX, offsetof(struct stoke_spec, resources.memory_bytes)},
    {"cpu", "CPU quantity", "use cores (\"1\", \"0.5\") or millicores (\"500m\")",
     "must be between 1m and 1000 cores", stoke_parse_cpu, 1, MAX_CPU_MILLIS,
     offsetof(struct stoke_spec, resources.cpu_millis)},
};

static int limits_key(struct kctx *c, const char *key, int v, const char *path,
                      struct stoke_spec *s)
{
    for (size_t j = 0; j < sizeof(quantities) / sizeof(quantities[0]); j++) {
        const struct quantity *q = &quantities[j];
        const char *t = NULL;
        uint64_t x = 0;
        int r;

        if (strcmp(key, q->key) != 0)
            continue;
        r = stoke__yaml_text(&c->y, v, path, q->what, &t);
        if (r < 0)
            return r;
        if (t[0] == '-')
            return stoke__yaml_fail(&c->y, v, path, "must not be negative (found \"%.32s\")", t);
        if (q->parse(t, &x) < 0)
            return stoke__yaml_fail(&c->y, v, path, "invalid %s \"%.32s\": %s", q->what, t,
                                    q->hint);
        if (x < q->min || x > q->max)
            return stoke__yaml_fail(&c->y, v, path, "%s (found \"%.32s\")", q->range, t);
        *(uint64_t *)(void *)((char *)s + q->off) = x;
        return 0;
    }
    return UNKNOWN;
}

static int resources_key(struct kctx *c, const char *key, int v, const char *path,
                         struct stoke_spec *s)
{
    if (strcmp(key, "limits") == 0)
        return walk(c, v, path, limits_key, false, s);
    return UNKNOWN; /* requests, claims */
}

static int http_get_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    if (strcmp(key, "path") == 0)
        return set_string(c, v, path, &s->readiness.path, true);
    return UNKNOWN; /* port, host, scheme, httpHeaders */
}

static int probe_key(struct kctx *c, const char *key, int v, const char *path, struct stoke_spec *s)
{
    if (strcmp(key, "httpGet") == 0)
        return walk(c, v, path, http_get_key, false, s);
    return UNKNOWN; /* tcpSocket, exec, grpc, periods, thresholds */
}

static int port_key(struct kctx *c, const char *key, int v, const char *path, struct stoke_spec *s)
{
    uint64_t x = 0;
    int r;

    if (strcmp(key, "containerPort") == 0) {
        r = get_int(c, v, path, 1, 65535, &x);
        s->port = (uint16_t)x;
        return r;
    }
    /* Names a protocol: "http1" (or none) is what stoke speaks; "h2c" not. */
    if (strcmp(key, "name") == 0 && c->y.nodes[v].kind == STOKE__YAML_SCALAR &&
        strcmp(c->y.nodes[v].text, "h2c") != 0)
        return 0;
    if (strcmp(key, "protocol") == 0 && c->y.nodes[v].kind == STOKE__YAML_SCALAR &&
        strcmp(c->y.nodes[v].text, "TCP") == 0)
        return 0;
    return UNKNOWN;
}

static int walk_ports(struct kctx *c, int seq, const char *path, struct stoke_spec *s)
{
    char sub[PATH_MAX_LEN];
    int r = stoke__yaml_want_seq(&c->y, seq, path);

    if (r < 0 || c->y.nodes[seq].kind != STOKE__YAML_SEQ || c->y.nodes[seq].nchild == 0)
        return r;
    if (c->y.nodes[seq].nchild > 1) {
        join_index(sub, path, 1);
        return stoke__yaml_fail(&c->y, c->y.nodes[c->y.nodes[seq].first].next, sub,
                                "only one port can be set: stoke sends traffic to one (found %zu)",
                                c->y.nodes[seq].nchild);
    }
    join_index(sub, path, 0);
    return walk(c, c->y.nodes[seq].first, sub, port_key, false, s);
}

static int container_key(struct kctx *c, const char *key, int v, const char *path,
                         struct stoke_spec *s)
{
    if (strcmp(key, "image") == 0)
        return set_string(c, v, path, &s->image, false);
    if (strcmp(key, "name") == 0)
        return 0; /* a label inside the pod: stoke runs only this one */
    if (strcmp(key, "ports") == 0)
        return walk_ports(c, v, path, s);
    if (strcmp(key, "env") == 0)
        return walk_env(c, v, path, s);
    if (strcmp(key, "resources") == 0)
        return walk(c, v, path, resources_key, false, s);
    if (strcmp(key, "readinessProbe") == 0)
        return walk(c, v, path, probe_key, false, s);
    return UNKNOWN;
}

static int walk_containers(struct kctx *c, int seq, const char *path, struct stoke_spec *s)
{
    char sub[PATH_MAX_LEN];
    int r = stoke__yaml_want_seq(&c->y, seq, path);

    if (r < 0)
        return r;
    if (c->y.nodes[seq].kind != STOKE__YAML_SEQ || c->y.nodes[seq].nchild == 0)
        return stoke__yaml_fail(&c->y, seq, path, "one container is required");
    if (c->y.nodes[seq].nchild > 1) {
        join_index(sub, path, 1);
        return stoke__yaml_fail(&c->y, c->y.nodes[c->y.nodes[seq].first].next, sub,
                                "stoke runs one container per function (found %zu)",
                                c->y.nodes[seq].nchild);
    }
    join_index(sub, path, 0);
    r = walk(c, c->y.nodes[seq].first, sub, container_key, false, s);
    if (r >= 0)
        r = require(c, c->y.nodes[seq].first, sub, "image");
    return r;
}

/* --- the Service ------------------------------------------------------------ */

static int revision_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    uint64_t x = 0;
    int r;

    if (strcmp(key, "containers") == 0)
        return walk_containers(c, v, path, s);
    if (strcmp(key, "containerConcurrency") == 0) {
        r = get_int(c, v, path, 0, 1000000, &x);
        s->scale.container_concurrency = (uint32_t)x;
        return r;
    }
    if (strcmp(key, "timeoutSeconds") == 0) {
        r = get_int(c, v, path, 1, MS_PER_H / MS_PER_S, &x);
        s->timeout_ms = x * MS_PER_S;
        return r;
    }
    return UNKNOWN;
}

static int template_meta_key(struct kctx *c, const char *key, int v, const char *path,
                             struct stoke_spec *s)
{
    if (strcmp(key, "annotations") == 0)
        return walk_annotations(c, v, path, s);
    if (strcmp(key, "name") == 0)
        return UNSUPPORTED; /* a revision name: stoke names revisions by hash */
    return UNKNOWN;         /* labels and the like: quiet */
}

static int template_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    if (strcmp(key, "metadata") == 0)
        return walk(c, v, path, template_meta_key, true, s);
    if (strcmp(key, "spec") == 0) {
        int r = walk(c, v, path, revision_key, false, s);
        return r < 0 ? r : require(c, v, path, "containers");
    }
    return UNKNOWN;
}

static int service_spec_key(struct kctx *c, const char *key, int v, const char *path,
                            struct stoke_spec *s)
{
    if (strcmp(key, "template") == 0) {
        int r = walk(c, v, path, template_key, false, s);
        return r < 0 ? r : require(c, v, path, "spec");
    }
    return UNKNOWN; /* traffic */
}

static int metadata_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    const char *t = NULL;
    int r;

    if (strcmp(key, "name") == 0) {
        r = stoke__yaml_text(&c->y, v, path, "a string", &t);
        if (r < 0)
            return r;
        if (!stoke_is_valid_name(t))
            return stoke__yaml_fail(
                &c->y, v, path,
                "invalid name \"%.64s\": use 1 to 63 lowercase letters, digits and '-', "
                "starting with a letter and not ending with '-'",
                t);
        memcpy(s->name, t, strlen(t) + 1);
        return 0;
    }
    if (strcmp(key, "annotations") == 0)
        return walk_annotations(c, v, path, s);
    /* namespace, labels, uid, generation...: Kubernetes bookkeeping with no
     * meaning on one machine. */
    return 0;
}

static int root_key(struct kctx *c, const char *key, int v, const char *path, struct stoke_spec *s)
{
    const char *t = NULL;
    int r;

    if (strcmp(key, "apiVersion") == 0 || strcmp(key, "kind") == 0) {
        const char *want = key[0] == 'a' ? API_VERSION : KIND;
        r = stoke__yaml_text(&c->y, v, path, "a string", &t);
        if (r >= 0 && strcmp(t, want) != 0)
            r = stoke__yaml_fail(&c->y, v, path, "must be \"%s\" (found \"%.64s\")", want, t);
        return r;
    }
    if (strcmp(key, "metadata") == 0)
        return walk(c, v, path, metadata_key, true, s);
    if (strcmp(key, "spec") == 0)
        return walk(c, v, path, service_spec_key, false, s);
    if (strcmp(key, "status") == 0)
        return 0; /* written by Knative, present in `kubectl get -o yaml` */
    return UNKNOWN;
}

static int walk_root(struct kctx *c, struct stoke_spec *s)
{
    static const char *const required[] = {"apiVersion", "kind", "metadata", "spec"};
    const struct stoke__yaml_node *root = &c->y.nodes[0];
    int r;

    if (root->kind != STOKE__YAML_MAP)
        return stoke__yaml_fail(&c->y, 0, "", "the document must be a mapping, not %s",
                                stoke__yaml_kind_name(root));
    for (size_t j = 0; j < sizeof(required) / sizeof(required[0]); j++) {
        r = require(c, 0, "", required[j]);
        if (r < 0)
            return r;
    }
    r = walk(c, 0, "", root_key, false, s);
    if (r >= 0)
        r = require(c, lookup(c, 0, "metadata"), "metadata", "name");
    if (r >= 0 && c->y.nodes[lookup(c, 0, "spec")].kind == STOKE__YAML_MAP)
        r = require(c, lookup(c, 0, "spec"), "spec", "template");
    else if (r >= 0)
        r = stoke__yaml_fail(&c->y, lookup(c, 0, "spec"), "spec.template",
                             "missing required field \"template\"");
    if (r >= 0)
        r = check_scale(c, s);
    return r;
}

/* --- public ----------------------------------------------------------------- */

bool stoke_knative_is_service(const char *buf, size_t len)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    size_t depth = 0;
    bool api = false, kind = false, is_key = true, done = false;
    int want = 0; /* 1: the next value is apiVersion's, 2: kind's */

    if (!buf || len > STOKE_SPEC_MAX_BYTES || !yaml_parser_initialize(&parser))
        return false;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        buf += 3, len -= 3;
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    while (!done && !(api && kind) && yaml_parser_parse(&parser, &ev)) {
        switch (ev.type) {
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            /* Deeper than stoke allows: the stoke/v1 parser says so. */
            if (++depth > STOKE_SPEC_MAX_DEPTH ||
                (depth == 1 && ev.type != YAML_MAPPING_START_EVENT))
                done = true;
            if (depth == 2)
                is_key = !is_key;
            want = 0;
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            done = --depth == 0;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_ALIAS_EVENT:
            if (depth != 1)
                break;
            if (!is_key && ev.type == YAML_SCALAR_EVENT) {
                const char *t = (const char *)ev.data.scalar.value;
                api = api || (want == 1 && strcmp(t, API_VERSION) == 0);
                kind = kind || (want == 2 && strcmp(t, KIND) == 0);
            }
            want = 0;
            if (is_key && ev.type == YAML_SCALAR_EVENT) {
                const char *t = (const char *)ev.data.scalar.value;
                want = strcmp(t, "apiVersion") == 0 ? 1 : strcmp(t, "kind") == 0 ? 2 : 0;
            }
            is_key = !is_key;
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return api && kind;
}

int stoke_knative_parse(const char *buf, size_t len, const char *filename, struct stoke_spec *ret,
                        struct stoke_diag *reterr, stoke_spec_warn_fn warn_cb, void *data)
{
    struct kctx c = {.at_min = -1, .at_initial = -1};
    struct stoke_spec s;
    int r;

    memset(ret, 0, sizeof(*ret));
    stoke_spec_defaults(&s);
    if (reterr)
        memset(reterr, 0, sizeof(*reterr));
    stoke__yaml_init(&c.y, filename, reterr);
    r = stoke__yaml_build(&c.y, buf, len);
    if (r < 0)
        goto out;
    r = walk_root(&c, &s);
    if (r < 0)
        goto out;
    if (c.dropped && c.nwarn) {
        struct stoke_diag *last = &c.warns[c.nwarn - 1];
        (void)snprintf(last->message, sizeof(last->message),
                       "%zu more warnings not shown (the limit is %d)", c.dropped + 1,
                       STOKE_KNATIVE_MAX_WARNINGS);
        last->field[0] = '\0';
    }
    for (size_t j = 0; warn_cb && j < c.nwarn; j++)
        warn_cb(&c.warns[j], data);
    *ret = s;
    memset(&s, 0, sizeof(s));
out:
    stoke_spec_done(&s);
    stoke__yaml_done(&c.y);
    free(c.warns);
    return r;
}
