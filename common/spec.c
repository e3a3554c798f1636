/* The stoke/v1 Function spec parser.
 *
 * Two passes. The first, common/yamltree.c (shared with the Knative mapping
 * in common/knative.c), reads libyaml's events into a small tree without
 * recursion: this is where every YAML-level refusal happens (syntax,
 * encoding, aliases, tags, duplicate keys, nesting deeper than
 * STOKE_SPEC_MAX_DEPTH, more than STOKE_SPEC_MAX_NODES nodes, a second
 * document). The second pass, here, walks that tree with tables of known
 * fields; its recursion follows the schema, so it is at most four calls deep
 * whatever the input. Doing the YAML checks first means a broken file is
 * reported as such before any field is judged. */
#include "stoke/spec.h"
#include "stoke/cron.h"
#include "stoke/knative.h"
#include "yamltree.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MS_PER_S UINT64_C(1000)
#define MS_PER_M (60 * MS_PER_S)
#define MS_PER_H (60 * MS_PER_M)

#define MIB (UINT64_C(1024) * 1024)
#define MIN_MEMORY (6 * MIB) /* Docker refuses a memory limit under 6 MiB */
#define MAX_REPLICAS 10000
#define MAX_PRECREATED 100               /* created, never started, containers per function */
#define MAX_CPU_MILLIS UINT64_C(1000000) /* 1000 cores */
#define MAX_PIDS 4194304                 /* the kernel's highest pid_max */
#define MAX_STRING 1024                  /* image and readiness path */

/* --- pass 2: tree to struct ----------------------------------------------- */

/* The public types (spec.h) are the table's, so stoke_spec_fields() tells
 * what the parser checks; T_ENUM is a STOKE_SPEC_STRING whose value is
 * stored as its index in `values`. */
enum ftype {
    T_CONST = STOKE_SPEC_STRING,
    T_NAME = STOKE_SPEC_NAME,
    T_IMAGE = STOKE_SPEC_IMAGE,
    T_PATH = STOKE_SPEC_PATH,
    T_UINT = STOKE_SPEC_UINT,
    T_DURATION = STOKE_SPEC_DURATION,
    T_MEMORY = STOKE_SPEC_MEMORY,
    T_CPU = STOKE_SPEC_CPU,
    T_BOOL = STOKE_SPEC_BOOL,
    T_MAP = STOKE_SPEC_MAP,
    T_ENV = STOKE_SPEC_ENV,
    T_STRMAP = STOKE_SPEC_STRMAP,
    T_LIST = STOKE_SPEC_LIST,
    T_ADDRESS = STOKE_SPEC_ADDRESS,
    T_CRON = STOKE_SPEC_CRON,
    T_ZONE = STOKE_SPEC_ZONE,
    T_TEXT = STOKE_SPEC_TEXT,
    T_ENUM,
};

struct field;

/* Checks that involve several fields of mapping `map`; `at` holds the value
 * node of each field of its table, or -1 when absent. */
typedef int (*check_fn)(struct stoke__yaml *y, int map, const int *at, void *s);

struct field {
    const char *key;
    enum ftype type;
    size_t off;  /* where in struct stoke_spec */
    size_t size; /* T_UINT: the member's size */
    uint64_t min, max;
    bool required;
    const char *const *values; /* T_CONST, T_ENUM: the accepted values, NULL-terminated */
    const struct field *sub;   /* T_MAP, T_LIST: its (an item's) fields, ending with a NULL key */
    check_fn check;            /* T_MAP, T_LIST: run after the mapping's (an item's) fields */
    /* T_LIST: the array's pointer is at off, its count (size_t) at
     * count_off, an item is `size` bytes, begins with its name (char[])
     * and is filled with defaults by `init`. */
    size_t count_off;
    void (*init)(void *item);
};

#define MAX_FIELDS 16

#define UINT_FIELD(k, m, lo, hi)                                                                   \
    {                                                                                              \
        .key = (k), .type = T_UINT, .off = offsetof(struct stoke_spec, m),                         \
        .size = sizeof(((struct stoke_spec *)0)->m), .min = (lo), .max = (hi)                      \
    }
#define TYPED_FIELD(k, t, m, lo, hi)                                                               \
    {                                                                                              \
        .key = (k), .type = (t), .off = offsetof(struct stoke_spec, m), .min = (lo), .max = (hi)   \
    }

static void format_ms(uint64_t ms, char *buf, size_t size)
{
    if (ms && ms % MS_PER_H == 0)
        (void)snprintf(buf, size, "%" PRIu64 "h", ms / MS_PER_H);
    else if (ms && ms % MS_PER_M == 0)
        (void)snprintf(buf, size, "%" PRIu64 "m", ms / MS_PER_M);
    else if (ms % MS_PER_S == 0)
        (void)snprintf(buf, size, "%" PRIu64 "s", ms / MS_PER_S);
    else
        (void)snprintf(buf, size, "%" PRIu64 "ms", ms);
}

static int read_digits(const char **s, uint64_t *v);

static int set_uint(struct stoke__yaml *y, const struct field *f, int i, void *s)
{
    const struct stoke__yaml_node *nd = &y->nodes[i];
    const char *p = nd->text;
    uint64_t v = 0;

    if (nd->kind != STOKE__YAML_SCALAR || stoke__yaml_is_null(nd))
        return stoke__yaml_fail(y, i, NULL, "expected an integer, found %s",
                                stoke__yaml_kind_name(nd));
    if (nd->str_tag)
        return stoke__yaml_fail(y, i, NULL, "expected an integer, found the string \"%.32s\"", p);
    if (p[0] == '-' && p[1] >= '0' && p[1] <= '9' && strspn(p + 1, "0123456789") == strlen(p + 1))
        return stoke__yaml_fail(y, i, NULL, "must not be negative");
    if (p[0] < '0' || p[0] > '9' || strspn(p, "0123456789") != strlen(p))
        return stoke__yaml_fail(y, i, NULL, "expected a decimal integer, found \"%.32s\"", p);
    if (p[0] == '0' && p[1])
        return stoke__yaml_fail(
            y, i, NULL, "leading zeros are not allowed (\"%.32s\"; YAML 1.1 reads it as octal)", p);
    if (read_digits(&p, &v) < 0 || v < f->min || v > f->max)
        return stoke__yaml_fail(y, i, NULL,
                                "must be between %" PRIu64 " and %" PRIu64 " (found %.32s)", f->min,
                                f->max, nd->text);
    /* The bounds in the tables fit the members they fill. */
    if (f->size == sizeof(uint16_t)) {
        assert(f->max <= UINT16_MAX);
        *(uint16_t *)((char *)s + f->off) = (uint16_t)v;
    } else {
        assert(f->size == sizeof(uint32_t) && f->max <= UINT32_MAX);
        *(uint32_t *)((char *)s + f->off) = (uint32_t)v;
    }
    return 0;
}

static int parse_duration(const char *s, uint64_t *ret_ms);

static int set_duration(struct stoke__yaml *y, const struct field *f, int i, void *s)
{
    const char *text = NULL;
    char lo[32], hi[32];
    uint64_t v;
    int r = stoke__yaml_text(y, i, NULL, "a duration", &text);

    if (r < 0)
        return r;
    r = parse_duration(text, &v);
    format_ms(f->min, lo, sizeof(lo));
    format_ms(f->max, hi, sizeof(hi));
    if (r == -EINVAL && text[0] == '-')
        return stoke__yaml_fail(y, i, NULL, "must not be negative (found \"%.32s\")", text);
    if (r == -EINVAL)
        return stoke__yaml_fail(y, i, NULL,
                                "invalid duration \"%.32s\": use numbers with units ms, s, m or h, "
                                "e.g. \"30s\" or \"1m30s\"",
                                text);
    if (r < 0 || v < f->min || v > f->max)
        return stoke__yaml_fail(y, i, NULL, "must be between %s and %s (found \"%.32s\")", lo, hi,
                                text);
    *(uint64_t *)((char *)s + f->off) = v;
    return 0;
}

static int parse_memory(const char *s, uint64_t *ret_bytes);
static int parse_cpu(const char *s, uint64_t *ret_millis);

static int set_memory(struct stoke__yaml *y, const struct field *f, int i, void *s)
{
    const char *text = NULL;
    uint64_t v;
    int r = stoke__yaml_text(y, i, NULL, "a memory quantity", &text);

    if (r < 0)
        return r;
    r = parse_memory(text, &v);
    if (r == -EINVAL && text[0] == '-')
        return stoke__yaml_fail(y, i, NULL, "must not be negative (found \"%.32s\")", text);
    if (r == -EINVAL)
        return stoke__yaml_fail(
            y, i, NULL,
            "invalid memory quantity \"%.32s\": use bytes or a number with Ki, Mi, "
            "Gi, Ti, k, M, G or T, e.g. \"128Mi\"",
            text);
    if (r < 0)
        return stoke__yaml_fail(y, i, NULL, "memory quantity \"%.32s\" is too large", text);
    if (v < f->min)
        return stoke__yaml_fail(
            y, i, NULL, "must be at least 6Mi, Docker's smallest memory limit (found \"%.32s\")",
            text);
    *(uint64_t *)((char *)s + f->off) = v;
    return 0;
}

static int set_cpu(struct stoke__yaml *y, const struct field *f, int i, void *s)
{
    const char *text = NULL;
    uint64_t v;
    int r = stoke__yaml_text(y, i, NULL, "a CPU quantity", &text);

    if (r < 0)
        return r;
    r = parse_cpu(text, &v);
    if (r == -EINVAL && text[0] == '-')
        return stoke__yaml_fail(y, i, NULL, "must not be negative (found \"%.32s\")", text);
    if (r == -EINVAL)
        return stoke__yaml_fail(y, i, NULL,
                                "invalid CPU quantity \"%.32s\": use cores (\"1\", \"0.5\") or "
                                "millicores (\"500m\")",
                                text);
    if (r < 0 || v < f->min || v > f->max)
        return stoke__yaml_fail(y, i, NULL,
                                "must be between 1m and %" PRIu64 " cores (found \"%.32s\")",
                                f->max / 1000, text);
    *(uint64_t *)((char *)s + f->off) = v;
    return 0;
}

static int dup_into(struct stoke__yaml *y, const struct field *f, const char *text, void *s)
{
    char **dst = (char **)((char *)s + f->off);
    char *d = strdup(text);
    if (!d)
        return stoke__yaml_oom(y);
    free(*dst);
    *dst = d;
    return 0;
}

/* "must be "a" or "b"" for constants, "must be a, b or c" for enums. */
static int fail_values(struct stoke__yaml *y, int i, const struct field *f, const char *text)
{
    const char *q = f->type == T_CONST ? "\"" : "";
    char list[128];
    size_t n = 0;

    list[0] = '\0';
    for (size_t k = 0; f->values[k] && n < sizeof(list); k++) {
        const char *sep = k == 0 ? "" : f->values[k + 1] ? ", " : " or ";
        int w = snprintf(list + n, sizeof(list) - n, "%s%s%s%s", sep, q, f->values[k], q);
        n += w > 0 ? (size_t)w : 0;
    }
    return stoke__yaml_fail(y, i, NULL, "must be %s (found \"%.64s\")", list, text);
}

static int set_string(struct stoke__yaml *y, const struct field *f, int i, void *s)
{
    const char *text = NULL;
    int r = stoke__yaml_text(y, i, NULL, "a string", &text);
    size_t n;

    if (r < 0)
        return r;
    n = strlen(text);
    switch (f->type) {
    case T_CONST:
    case T_ENUM:
        for (size_t k = 0; f->values[k]; k++) {
            if (strcmp(text, f->values[k]) == 0) {
                static_assert(sizeof(enum stoke_idle) == sizeof(int), "T_ENUM stores an int");
                if (f->type == T_ENUM)
                    *(int *)((char *)s + f->off) = (int)k;
                return 0;
            }
        }
        return fail_values(y, i, f, text);
    case T_NAME:
        if (!stoke_is_valid_name(text))
            return stoke__yaml_fail(
                y, i, NULL,
                "invalid name \"%.64s\": use 1 to 63 lowercase letters, digits and "
                "'-', starting with a letter and not ending with '-'",
                text);
        memcpy((char *)s + f->off, text, n + 1);
        return 0;
    case T_ADDRESS: {
        char host[STOKE_TRIGGER_MAX_STRING + 1];
        int port;
        const char *unix_path;
        if (n > f->max || !stoke__yaml_is_token(text) ||
            stoke_trigger_address(text, host, sizeof(host), &port, &unix_path) < 0)
            return stoke__yaml_fail(y, i, NULL,
                                    "invalid address \"%.64s\": use host:port (port 1 to 65535; "
                                    "an IPv6 address in brackets) or unix:/path, at most %d "
                                    "characters",
                                    text, (int)f->max);
        return dup_into(y, f, text, s);
    }
    case T_CRON:
    case T_ZONE: {
        char err[160];
        if (n == 0 || n > f->max)
            return stoke__yaml_fail(y, i, NULL, "must be 1 to %d characters", (int)f->max);
        /* A zone is judged with a schedule that always runs; the schedule
         * in UTC (whether it ever runs does not depend on the zone). */
        if (stoke_cron_parse(f->type == T_CRON ? text : "* * * * *",
                             f->type == T_ZONE ? text : NULL, &(struct stoke_cron){0}, err,
                             sizeof(err)) < 0)
            return stoke__yaml_fail(y, i, NULL, "%s", err);
        return dup_into(y, f, text, s);
    }
    case T_TEXT:
        if (n < f->min || n > f->max)
            return stoke__yaml_fail(y, i, NULL, "must be %d to %d bytes (found %zu)", (int)f->min,
                                    (int)f->max, n);
        return dup_into(y, f, text, s);
    case T_IMAGE:
    case T_PATH:
        if (f->type == T_IMAGE && n == 0)
            return stoke__yaml_fail(y, i, NULL, "must not be empty");
        if (f->type == T_PATH && text[0] != '/')
            return stoke__yaml_fail(y, i, NULL, "must start with '/' (found \"%.64s\")", text);
        if (n > f->max || !stoke__yaml_is_token(text))
            return stoke__yaml_fail(
                y, i, NULL,
                "invalid %s \"%.64s\": at most %d printable ASCII characters without spaces",
                f->type == T_IMAGE ? "image reference" : "path", text, (int)f->max);
        return dup_into(y, f, text, s);
    default:
        return 0;
    }
}

/* YAML 1.2's core booleans only: yes/no/on/off (YAML 1.1) are refused
 * rather than guessed, and a quoted "true" is a string. */
static int set_bool(struct stoke__yaml *y, const struct field *f, int i, void *s)
{
    static const char *const yes[] = {"true", "True", "TRUE"};
    static const char *const no[] = {"false", "False", "FALSE"};
    const struct stoke__yaml_node *nd = &y->nodes[i];

    if (nd->kind != STOKE__YAML_SCALAR || stoke__yaml_is_null(nd))
        return stoke__yaml_fail(y, i, NULL, "expected true or false, found %s",
                                stoke__yaml_kind_name(nd));
    for (size_t k = 0; k < 3 && !nd->str_tag; k++) {
        if (strcmp(nd->text, yes[k]) == 0 || strcmp(nd->text, no[k]) == 0) {
            *(bool *)((char *)s + f->off) = strcmp(nd->text, yes[k]) == 0;
            return 0;
        }
    }
    return stoke__yaml_fail(y, i, NULL, "expected true or false, found \"%.32s\"", nd->text);
}

static int set_env(struct stoke__yaml *y, int map, struct stoke_spec *s)
{
    size_t n = y->nodes[map].nchild / 2;
    int r = stoke__yaml_want_map(y, map, NULL);

    if (r < 0)
        return r;
    if (n == 0)
        return 0;
    if (n > STOKE_SPEC_MAX_ENV) {
        int k = stoke__yaml_first_key(y, map);
        for (size_t j = 0; j < STOKE_SPEC_MAX_ENV; j++)
            k = stoke__yaml_next_key(y, k);
        return stoke__yaml_fail(y, k, NULL, "too many environment variables (the limit is %d)",
                                STOKE_SPEC_MAX_ENV);
    }
    s->env = calloc(n, sizeof(*s->env));
    if (!s->env)
        return stoke__yaml_oom(y);
    for (int k = stoke__yaml_first_key(y, map); k >= 0; k = stoke__yaml_next_key(y, k)) {
        const char *name = y->nodes[k].text;
        int v = y->nodes[k].next;
        const struct stoke__yaml_node *vn = &y->nodes[v];
        struct stoke_env_var *e = &s->env[s->env_len];

        if (!stoke__yaml_is_env_name(name))
            return stoke__yaml_fail(
                y, k, NULL,
                "invalid environment variable name \"%.64s\": use letters, digits "
                "and '_', not starting with a digit",
                name);
        if (strcmp(name, "PORT") == 0)
            return stoke__yaml_fail(y, k, NULL, "PORT is set by stoke from spec.port");
        if (vn->kind != STOKE__YAML_SCALAR)
            return stoke__yaml_fail(y, v, NULL, "expected a scalar value, found %s",
                                    stoke__yaml_kind_name(vn));
        e->name = strdup(name);
        /* YAML null (FOO: with nothing after it) is the empty string. */
        e->value = strdup(stoke__yaml_is_null(vn) ? "" : vn->text);
        s->env_len++;
        if (!e->name || !e->value)
            return stoke__yaml_oom(y);
    }
    return 0;
}

/* metadata.labels and metadata.annotations: accepted for tools that share
 * manifests with Kubernetes, checked to be flat maps of scalars, ignored. */
static int check_strmap(struct stoke__yaml *y, int map)
{
    int r = stoke__yaml_want_map(y, map, NULL);

    if (r < 0)
        return r;
    for (int k = stoke__yaml_first_key(y, map); k >= 0; k = stoke__yaml_next_key(y, k)) {
        int v = y->nodes[k].next;
        if (y->nodes[v].kind != STOKE__YAML_SCALAR)
            return stoke__yaml_fail(y, v, NULL, "expected a string, found %s",
                                    stoke__yaml_kind_name(&y->nodes[v]));
    }
    return 0;
}

static int walk_map(struct stoke__yaml *y, int map, const struct field *fields, check_fn check,
                    void *s);

/* A sequence of mappings (spec.triggers): each item walked with its own
 * table into an array of f->size items, names unique. */
static int set_list(struct stoke__yaml *y, const struct field *f, int seq, void *s)
{
    void **items = (void **)((char *)s + f->off);
    size_t *count = (size_t *)((char *)s + f->count_off);
    int r = stoke__yaml_want_seq(y, seq, NULL);

    if (r < 0)
        return r;
    size_t n = y->nodes[seq].nchild;
    if (n > f->max) /* named as the list, as the CRD's maxItems names it */
        return stoke__yaml_fail(y, seq, NULL, "too many entries: %zu (the limit is %d)", n,
                                (int)f->max);
    if (n == 0)
        return 0;
    *items = calloc(n, f->size);
    if (!*items)
        return stoke__yaml_oom(y);
    for (int k = y->nodes[seq].first; k >= 0; k = y->nodes[k].next) {
        char *item = (char *)*items + *count * f->size;
        f->init(item);
        (*count)++; /* so that stoke_spec_done() frees a half-built one */
        r = walk_map(y, k, f->sub, f->check, item);
        if (r < 0)
            return r;
        for (size_t j = 0; j + 1 < *count; j++) {
            if (strcmp((char *)*items + j * f->size, item) == 0)
                return stoke__yaml_fail(y, k, NULL, "the name \"%s\" is used twice", item);
        }
    }
    return 0;
}

static int set_field(struct stoke__yaml *y, const struct field *f, int v, void *s)
{
    switch (f->type) {
    case T_UINT:
        return set_uint(y, f, v, s);
    case T_DURATION:
        return set_duration(y, f, v, s);
    case T_MEMORY:
        return set_memory(y, f, v, s);
    case T_CPU:
        return set_cpu(y, f, v, s);
    case T_BOOL:
        return set_bool(y, f, v, s);
    case T_MAP:
        return walk_map(y, v, f->sub, f->check, s);
    case T_LIST:
        return set_list(y, f, v, s);
    case T_ENV:
        return set_env(y, v, s);
    case T_STRMAP:
        return check_strmap(y, v);
    default:
        return set_string(y, f, v, s);
    }
}

static const struct field *find_field(const struct field *fields, const char *key)
{
    for (const struct field *f = fields; f->key; f++)
        if (strcmp(f->key, key) == 0)
            return f;
    return NULL;
}

static int walk_map(struct stoke__yaml *y, int map, const struct field *fields, check_fn check,
                    void *s)
{
    int at[MAX_FIELDS];
    size_t nf = 0;
    int r = stoke__yaml_want_map(y, map, NULL);

    if (r < 0)
        return r;
    for (; fields[nf].key; nf++) {
        assert(nf < MAX_FIELDS);
        at[nf] = -1;
    }
    for (int k = stoke__yaml_first_key(y, map); k >= 0; k = stoke__yaml_next_key(y, k)) {
        const char *key = y->nodes[k].text;
        const struct field *f = find_field(fields, key);
        int v = y->nodes[k].next;

        if (!f) {
            for (f = fields; f->key; f++)
                if (strcasecmp(f->key, key) == 0)
                    return stoke__yaml_fail(
                        y, k, NULL, "unknown field \"%.64s\" (did you mean \"%s\"?)", key, f->key);
            return stoke__yaml_fail(y, k, NULL, "unknown field \"%.64s\"", key);
        }
        at[f - fields] = v;
        r = set_field(y, f, v, s);
        if (r < 0)
            return r;
    }
    for (size_t j = 0; j < nf; j++) {
        if (fields[j].required && at[j] < 0) {
            char field[sizeof(y->err->field)];
            stoke__yaml_path(y, map, fields[j].key, field, sizeof(field));
            return stoke__yaml_fail(y, map, field, "missing required field \"%s\"", fields[j].key);
        }
    }
    return check ? check(y, map, at, s) : 0;
}

/* Indexes into scale_fields[], for check_scale(). */
enum { SCALE_MIN, SCALE_MAX, SCALE_INITIAL };

static int check_scale(struct stoke__yaml *y, int map, const int *at, void *s)
{
    const struct stoke_scale *sc = &((const struct stoke_spec *)s)->scale;

    /* max 0 means unbounded, so there is nothing to exceed. A default min
     * (0) or initial (1) cannot exceed a max that is set, so the value
     * blamed was written in the file; the mapping is only a fallback. */
    if (sc->max && sc->min > sc->max)
        return stoke__yaml_fail(y, at[SCALE_MIN] >= 0 ? at[SCALE_MIN] : map, NULL,
                                "min (%u) must not be greater than max (%u)", sc->min, sc->max);
    if (sc->max && sc->initial > sc->max)
        return stoke__yaml_fail(y, at[SCALE_INITIAL] >= 0 ? at[SCALE_INITIAL] : map, NULL,
                                "initial (%u) must not be greater than max (%u)", sc->initial,
                                sc->max);
    return 0;
}

const char *const stoke_idle_names[] = {
    [STOKE_IDLE_PAUSE] = "pause",
    [STOKE_IDLE_STOP] = "stop",
    [STOKE_IDLE_REMOVE] = "remove",
    NULL,
};

const char *const stoke_network_names[] = {
    [STOKE_NETWORK_BRIDGE] = "bridge",
    [STOKE_NETWORK_HOST] = "host",
    NULL,
};

const char *const stoke_start_from_names[] = {
    [STOKE_START_NEW] = "$",
    [STOKE_START_ALL] = "0",
    NULL,
};

static const struct field scale_fields[] = {
    [SCALE_MIN] = UINT_FIELD("min", scale.min, 0, MAX_REPLICAS),
    [SCALE_MAX] = UINT_FIELD("max", scale.max, 0, MAX_REPLICAS),
    [SCALE_INITIAL] = UINT_FIELD("initial", scale.initial, 0, MAX_REPLICAS),
    UINT_FIELD("target", scale.target, 1, 1000000),
    UINT_FIELD("utilization", scale.utilization, 1, 100),
    UINT_FIELD("containerConcurrency", scale.container_concurrency, 0, 1000000),
    TYPED_FIELD("window", T_DURATION, scale.window_ms, 6 * MS_PER_S, MS_PER_H),
    UINT_FIELD("panicWindowPercent", scale.panic_window_percent, 1, 100),
    UINT_FIELD("panicThresholdPercent", scale.panic_threshold_percent, 110, 1000),
    TYPED_FIELD("scaleToZeroGrace", T_DURATION, scale.scale_to_zero_grace_ms, 0, MS_PER_H),
    TYPED_FIELD("scaleDownDelay", T_DURATION, scale.scale_down_delay_ms, 0, MS_PER_H),
    {.key = "idle",
     .type = T_ENUM,
     .off = offsetof(struct stoke_spec, scale.idle),
     .values = stoke_idle_names},
    TYPED_FIELD("stopAfter", T_DURATION, scale.stop_after_ms, 0, 24 * MS_PER_H),
    TYPED_FIELD("removeAfter", T_DURATION, scale.remove_after_ms, 0, 24 * MS_PER_H),
    UINT_FIELD("precreated", scale.precreated, 0, MAX_PRECREATED),
    {0},
};

static const struct field queue_fields[] = {
    UINT_FIELD("max", queue.max, 0, 1000000),
    TYPED_FIELD("timeout", T_DURATION, queue.timeout_ms, 1, MS_PER_H),
    {0},
};

static const struct field async_fields[] = {
    UINT_FIELD("retries", async.retries, 0, 100),
    TYPED_FIELD("backoff", T_DURATION, async.backoff_ms, 1, MS_PER_H),
    TYPED_FIELD("maxEventAge", T_DURATION, async.max_age_ms, 1, 6 * MS_PER_H),
    UINT_FIELD("maxInFlight", async.max_in_flight, 1, 10000),
    UINT_FIELD("maxBody", async.max_body, 0, 6 * MIB),
    {0},
};

static const struct field resources_fields[] = {
    TYPED_FIELD("memory", T_MEMORY, resources.memory_bytes, MIN_MEMORY, UINT64_MAX),
    TYPED_FIELD("cpu", T_CPU, resources.cpu_millis, 1, MAX_CPU_MILLIS),
    UINT_FIELD("pids", resources.pids, 1, MAX_PIDS),
    {0},
};

static const struct field readiness_fields[] = {
    TYPED_FIELD("path", T_PATH, readiness.path, 1, MAX_STRING),
    TYPED_FIELD("period", T_DURATION, readiness.period_ms, 1, MS_PER_H),
    {0},
};

/* spec.triggers: fields of an item (struct stoke_trigger). */
#define TRIGGER_STRING(k, t, m, req)                                                               \
    {                                                                                              \
        .key = (k), .type = (t), .off = offsetof(struct stoke_trigger, m), .min = 1,               \
        .max = STOKE_TRIGGER_MAX_STRING, .required = (req)                                         \
    }

static const struct field trigger_redis_fields[] = {
    TRIGGER_STRING("address", T_ADDRESS, address, true),
    TRIGGER_STRING("stream", T_IMAGE, stream, true),
    TRIGGER_STRING("group", T_IMAGE, group, false),
    TRIGGER_STRING("passwordFile", T_PATH, password_file, false),
    {.key = "startFrom",
     .type = T_ENUM,
     .off = offsetof(struct stoke_trigger, start_from),
     .values = stoke_start_from_names},
    {0},
};

static const struct field trigger_fields[] = {
    {.key = "name",
     .type = T_NAME,
     .off = offsetof(struct stoke_trigger, name),
     .min = 1,
     .max = STOKE_NAME_MAX,
     .required = true},
    {.key = "redis", .type = T_MAP, .sub = trigger_redis_fields, .required = true},
    TRIGGER_STRING("path", T_PATH, path, false),
    {.key = "targetBacklog",
     .type = T_UINT,
     .off = offsetof(struct stoke_trigger, target_backlog),
     .size = sizeof(uint32_t),
     .min = 1,
     .max = 1000000},
    {0},
};

static void trigger_init(void *item)
{
    struct stoke_trigger *t = item;
    t->start_from = STOKE_START_NEW;
    t->target_backlog = 10;
}

const char *const stoke_policy_names[] = {
    [STOKE_POLICY_ALLOW] = "Allow",
    [STOKE_POLICY_FORBID] = "Forbid",
    [STOKE_POLICY_REPLACE] = "Replace",
    NULL,
};

/* spec.schedules: fields of an item (struct stoke_schedule). */
#define SCHEDULE_STRING(k, t, m, lo, hi, req)                                                      \
    {                                                                                              \
        .key = (k), .type = (t), .off = offsetof(struct stoke_schedule, m), .min = (lo),           \
        .max = (hi), .required = (req)                                                             \
    }

static const struct field schedule_fields[] = {
    {.key = "name",
     .type = T_NAME,
     .off = offsetof(struct stoke_schedule, name),
     .min = 1,
     .max = STOKE_NAME_MAX,
     .required = true},
    SCHEDULE_STRING("schedule", T_CRON, schedule, 1, STOKE_SCHEDULE_MAX_STRING, true),
    SCHEDULE_STRING("timeZone", T_ZONE, time_zone, 1, STOKE_CRON_ZONE_MAX - 1, false),
    SCHEDULE_STRING("data", T_TEXT, data, 0, STOKE_SCHEDULE_MAX_DATA, false),
    SCHEDULE_STRING("contentType", T_IMAGE, content_type, 1, STOKE_SCHEDULE_MAX_STRING, false),
    SCHEDULE_STRING("path", T_PATH, path, 1, STOKE_SCHEDULE_MAX_STRING, false),
    {.key = "concurrencyPolicy",
     .type = T_ENUM,
     .off = offsetof(struct stoke_schedule, policy),
     .values = stoke_policy_names},
    {.key = "startingDeadlineSeconds",
     .type = T_UINT,
     .off = offsetof(struct stoke_schedule, starting_deadline_s),
     .size = sizeof(uint32_t),
     .min = 1,
     .max = STOKE_SCHEDULE_MAX_DEADLINE_S},
    {.key = "suspend", .type = T_BOOL, .off = offsetof(struct stoke_schedule, suspend)},
    {0},
};

static void schedule_init(void *item)
{
    struct stoke_schedule *sc = item;
    sc->policy = STOKE_POLICY_ALLOW;
}

static const struct field spec_fields[] = {
    {.key = "image",
     .type = T_IMAGE,
     .off = offsetof(struct stoke_spec, image),
     .min = 1,
     .max = MAX_STRING,
     .required = true},
    UINT_FIELD("port", port, 1, 65535),
    {.key = "env", .type = T_ENV, .max = STOKE_SPEC_MAX_ENV},
    {.key = "scale", .type = T_MAP, .sub = scale_fields, .check = check_scale},
    TYPED_FIELD("timeout", T_DURATION, timeout_ms, 1, MS_PER_H),
    {.key = "queue", .type = T_MAP, .sub = queue_fields},
    {.key = "async", .type = T_MAP, .sub = async_fields},
    {.key = "resources", .type = T_MAP, .sub = resources_fields},
    {.key = "readiness", .type = T_MAP, .sub = readiness_fields},
    TYPED_FIELD("readOnlyRootFilesystem", T_BOOL, read_only_rootfs, 0, 0),
    {.key = "network",
     .type = T_ENUM,
     .off = offsetof(struct stoke_spec, network),
     .values = stoke_network_names},
    {.key = "triggers",
     .type = T_LIST,
     .off = offsetof(struct stoke_spec, triggers),
     .count_off = offsetof(struct stoke_spec, n_triggers),
     .size = sizeof(struct stoke_trigger),
     .max = STOKE_SPEC_MAX_TRIGGERS,
     .sub = trigger_fields,
     .init = trigger_init},
    {.key = "schedules",
     .type = T_LIST,
     .off = offsetof(struct stoke_spec, schedules),
     .count_off = offsetof(struct stoke_spec, n_schedules),
     .size = sizeof(struct stoke_schedule),
     .max = STOKE_SPEC_MAX_SCHEDULES,
     .sub = schedule_fields,
     .init = schedule_init},
    {0},
};

static const struct field metadata_fields[] = {
    {.key = "name",
     .type = T_NAME,
     .off = offsetof(struct stoke_spec, name),
     .min = 1,
     .max = STOKE_NAME_MAX,
     .required = true},
    {.key = "labels", .type = T_STRMAP},
    {.key = "annotations", .type = T_STRMAP},
    {0},
};

static const char *const api_versions[] = {STOKE_API_VERSION, STOKE_API_VERSION_SHORT, NULL};
static const char *const kinds[] = {"Function", NULL};

static const struct field root_fields[] = {
    {.key = "apiVersion", .type = T_CONST, .values = api_versions, .required = true},
    {.key = "kind", .type = T_CONST, .values = kinds, .required = true},
    {.key = "metadata", .type = T_MAP, .sub = metadata_fields, .required = true},
    {.key = "spec", .type = T_MAP, .sub = spec_fields, .required = true},
    {0},
};

static int walk_root(struct stoke__yaml *y, struct stoke_spec *s)
{
    const struct stoke__yaml_node *root;

    assert(y->len > 0); /* a document always has a root node */
    root = &y->nodes[0];

    if (root->kind != STOKE__YAML_MAP) {
        if (stoke__yaml_is_null(root))
            return stoke__yaml_fail_at(y, root->line, root->column, "", -EINVAL,
                                       "the document is empty: expected a mapping");
        return stoke__yaml_fail_at(y, root->line, root->column, "", -EINVAL,
                                   "the document must be a mapping, not %s",
                                   stoke__yaml_kind_name(root));
    }
    return walk_map(y, 0, root_fields, NULL, s);
}

/* --- public ----------------------------------------------------------------- */

static void walk_fields(const struct field *fields, char *path, size_t len,
                        void (*fn)(const struct stoke_spec_field_info *f, void *data), void *data)
{
    for (const struct field *f = fields; f->key; f++) {
        struct stoke_spec_field_info info = {
            .path = path,
            .type = f->type == T_ENUM ? STOKE_SPEC_STRING : (enum stoke_spec_type)f->type,
            .min = f->min,
            .max = f->max,
            .required = f->required,
            .values = f->values,
        };
        /* The tables are four levels deep with short keys. */
        int n = snprintf(path + len, 128 - len, "%s%s", len ? "." : "", f->key);
        assert(n > 0 && (size_t)n < 128 - len);
        fn(&info, data);
        if (f->type == T_MAP || f->type == T_LIST)
            walk_fields(f->sub, path, len + (size_t)n, fn, data);
        path[len] = '\0';
    }
}

void stoke_spec_fields(void (*fn)(const struct stoke_spec_field_info *f, void *data), void *data)
{
    char path[128] = "";
    walk_fields(root_fields, path, 0, fn, data);
}

void stoke_spec_defaults(struct stoke_spec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->port = 8080;
    spec->scale.min = 0;
    spec->scale.max = 0;
    spec->scale.initial = 1;
    spec->scale.target = 100;
    spec->scale.utilization = 70;
    spec->scale.container_concurrency = 0;
    spec->scale.window_ms = 60 * MS_PER_S;
    spec->scale.panic_window_percent = 10;
    spec->scale.panic_threshold_percent = 200;
    spec->scale.scale_to_zero_grace_ms = 30 * MS_PER_S;
    spec->scale.scale_down_delay_ms = 0;
    spec->scale.idle = STOKE_IDLE_PAUSE;
    spec->scale.stop_after_ms = 5 * MS_PER_M;
    spec->scale.remove_after_ms = 30 * MS_PER_M;
    spec->scale.precreated = 0;
    spec->read_only_rootfs = true;
    spec->timeout_ms = 300 * MS_PER_S;
    spec->queue.max = 1000;
    spec->queue.timeout_ms = 60 * MS_PER_S;
    stoke_async_defaults(&spec->async);
    spec->resources.memory_bytes = 128 * MIB;
    spec->resources.cpu_millis = 500;
    spec->resources.pids = 256;
    spec->readiness.path = NULL;
    spec->readiness.period_ms = 10;
}

void stoke_async_defaults(struct stoke_async *a)
{
    a->retries = 2;
    a->backoff_ms = 60 * MS_PER_S;
    a->max_age_ms = 6 * MS_PER_H;
    a->max_in_flight = 10;
    a->max_body = 256 * 1024;
}

/* The triggers' defaults that need the whole spec: group "stoke-<name>",
 * path "/". */
static int trigger_defaults(struct stoke__yaml *y, struct stoke_spec *s)
{
    for (size_t i = 0; i < s->n_triggers; i++) {
        struct stoke_trigger *t = &s->triggers[i];
        if (!t->group) {
            size_t n = strlen(s->name) + sizeof("stoke-");
            t->group = malloc(n);
            if (!t->group)
                return stoke__yaml_oom(y);
            (void)snprintf(t->group, n, "stoke-%s", s->name);
        }
        if (!t->path) {
            t->path = strdup("/");
            if (!t->path)
                return stoke__yaml_oom(y);
        }
    }
    return 0;
}

/* The schedules' defaults: contentType "application/json", path "/". */
static int schedule_defaults(struct stoke__yaml *y, struct stoke_spec *s)
{
    for (size_t i = 0; i < s->n_schedules; i++) {
        struct stoke_schedule *sc = &s->schedules[i];
        if (!sc->content_type && !(sc->content_type = strdup("application/json")))
            return stoke__yaml_oom(y);
        if (!sc->path && !(sc->path = strdup("/")))
            return stoke__yaml_oom(y);
    }
    return 0;
}

void stoke_schedule_done(struct stoke_schedule *sc)
{
    if (!sc)
        return;
    free(sc->schedule);
    free(sc->time_zone);
    free(sc->data);
    free(sc->content_type);
    free(sc->path);
    memset(sc, 0, sizeof(*sc));
}

static char *dup_opt(const char *s, bool *failed)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *failed = true;
    return d;
}

int stoke_schedules_dup(const struct stoke_schedule *from, size_t n, struct stoke_schedule **ret)
{
    *ret = NULL;
    if (n == 0)
        return 0;
    struct stoke_schedule *d = calloc(n, sizeof(*d));
    if (!d)
        return -ENOMEM;
    bool failed = false;
    for (size_t i = 0; i < n; i++) {
        d[i] = from[i];
        d[i].schedule = dup_opt(from[i].schedule, &failed);
        d[i].time_zone = dup_opt(from[i].time_zone, &failed);
        d[i].data = dup_opt(from[i].data, &failed);
        d[i].content_type = dup_opt(from[i].content_type, &failed);
        d[i].path = dup_opt(from[i].path, &failed);
    }
    if (failed) {
        for (size_t i = 0; i < n; i++)
            stoke_schedule_done(&d[i]);
        free(d);
        return -ENOMEM;
    }
    *ret = d;
    return 0;
}

static bool str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

bool stoke_schedule_equal(const struct stoke_schedule *a, const struct stoke_schedule *b)
{
    return strcmp(a->name, b->name) == 0 && str_same(a->schedule, b->schedule) &&
           str_same(a->time_zone, b->time_zone) && str_same(a->data, b->data) &&
           str_same(a->content_type, b->content_type) && str_same(a->path, b->path) &&
           a->policy == b->policy && a->starting_deadline_s == b->starting_deadline_s &&
           a->suspend == b->suspend;
}

int stoke_trigger_address(const char *address, char *host, size_t host_size, int *ret_port,
                          const char **ret_unix)
{
    size_t n = strlen(address);
    *ret_unix = NULL;
    *ret_port = 0;
    if (host_size)
        host[0] = '\0';
    if (n == 0 || n > STOKE_TRIGGER_MAX_STRING)
        return -EINVAL;
    if (strncmp(address, "unix:/", 6) == 0) {
        *ret_unix = address + 5;
        return 0;
    }
    const char *colon = strrchr(address, ':');
    const char *h = address, *he = colon;
    if (!colon || colon == address)
        return -EINVAL;
    if (address[0] == '[') {
        /* [v6]:port */
        if (colon[-1] != ']' || colon - address < 3)
            return -EINVAL;
        h = address + 1;
        he = colon - 1;
        for (const char *p = h; p < he; p++)
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
                  (*p >= 'A' && *p <= 'F') || *p == ':' || *p == '.'))
                return -EINVAL;
    } else {
        /* a DNS name or an IPv4 address */
        for (const char *p = h; p < he; p++)
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                  (*p >= 'A' && *p <= 'Z') || *p == '.' || *p == '-'))
                return -EINVAL;
    }
    const char *d = colon + 1;
    uint64_t port = 0;
    if (*d == '0' || read_digits(&d, &port) <= 0 || *d || port < 1 || port > 65535)
        return -EINVAL;
    if ((size_t)(he - h) + 1 > host_size)
        return -EINVAL;
    memcpy(host, h, (size_t)(he - h));
    host[he - h] = '\0';
    *ret_port = (int)port;
    return 0;
}

void stoke_trigger_done(struct stoke_trigger *t)
{
    if (!t)
        return;
    free(t->address);
    free(t->stream);
    free(t->group);
    free(t->password_file);
    free(t->path);
    memset(t, 0, sizeof(*t));
}

int stoke_spec_parse(const char *buf, size_t len, const char *filename, struct stoke_spec *ret,
                     struct stoke_diag *reterr)
{
    return stoke_spec_parse_ex(buf, len, filename, ret, reterr, NULL, NULL);
}

int stoke_spec_parse_ex(const char *buf, size_t len, const char *filename, struct stoke_spec *ret,
                        struct stoke_diag *reterr, stoke_spec_warn_fn warn, void *data)
{
    struct stoke__yaml y;
    struct stoke_spec s;
    int r;

    /* Knative Service manifests have their own mapping (common/knative.c). */
    if (stoke_knative_is_service(buf, len))
        return stoke_knative_parse(buf, len, filename, ret, reterr, warn, data);

    memset(ret, 0, sizeof(*ret));
    stoke_spec_defaults(&s);
    if (reterr)
        memset(reterr, 0, sizeof(*reterr));
    stoke__yaml_init(&y, filename, reterr);
    r = stoke__yaml_build(&y, buf, len);
    if (r < 0)
        goto out;
    r = walk_root(&y, &s);
    if (r < 0)
        goto out;
    r = trigger_defaults(&y, &s);
    if (r == 0)
        r = schedule_defaults(&y, &s);
    if (r < 0)
        goto out;
    *ret = s;
    memset(&s, 0, sizeof(s));
out:
    stoke_spec_done(&s);
    stoke__yaml_done(&y);
    return r;
}

int stoke_spec_load(const char *path, struct stoke_spec *ret, struct stoke_diag *reterr)
{
    return stoke_spec_load_ex(path, ret, reterr, NULL, NULL);
}

int stoke_spec_load_ex(const char *path, struct stoke_spec *ret, struct stoke_diag *reterr,
                       stoke_spec_warn_fn warn, void *data)
{
    struct stoke__yaml y; /* no tree: only its diagnostics */
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap;
    int fd = -1;
    int r;

    memset(ret, 0, sizeof(*ret));
    if (reterr)
        memset(reterr, 0, sizeof(*reterr));
    stoke__yaml_init(&y, path, reterr);
    /* O_NONBLOCK: a FIFO dropped where a spec should be must not hang the
     * caller in open(); it is refused below as not a regular file. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        r = stoke__yaml_fail_at(&y, 0, 0, "", -e, "cannot open: %s", strerrordesc_np(e));
        goto out;
    }
    if (fstat(fd, &st) < 0) {
        int e = errno;
        r = stoke__yaml_fail_at(&y, 0, 0, "", -e, "cannot stat: %s", strerrordesc_np(e));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        r = stoke__yaml_fail_at(&y, 0, 0, "", -EISDIR, "is a directory");
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = stoke__yaml_fail_at(&y, 0, 0, "", -EINVAL, "not a regular file");
        goto out;
    }
    /* Refuse a big file without reading it; the read loop below also stops
     * one byte past the cap, for a file that grows meanwhile or reports no
     * size (procfs). */
    if (st.st_size > STOKE_SPEC_MAX_BYTES) {
        r = stoke__yaml_too_big(&y);
        goto out;
    }
    cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    buf = malloc(cap);
    if (!buf) {
        r = stoke__yaml_oom(&y);
        goto out;
    }
    for (;;) {
        ssize_t n;
        if (len == cap) {
            size_t ncap = cap * 2 > STOKE_SPEC_MAX_BYTES + 1 ? STOKE_SPEC_MAX_BYTES + 1 : cap * 2;
            char *nb;
            if (ncap == cap) {
                r = stoke__yaml_too_big(&y);
                goto out;
            }
            nb = realloc(buf, ncap);
            if (!nb) {
                r = stoke__yaml_oom(&y);
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            r = stoke__yaml_fail_at(&y, 0, 0, "", -e, "cannot read: %s", strerrordesc_np(e));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    r = stoke_spec_parse_ex(buf, len, path, ret, reterr, warn, data);
out:
    free(buf);
    if (fd >= 0)
        (void)close(fd);
    return r;
}

void stoke_spec_done(struct stoke_spec *spec)
{
    if (!spec)
        return;
    free(spec->image);
    for (size_t i = 0; i < spec->env_len; i++) {
        free(spec->env[i].name);
        free(spec->env[i].value);
    }
    free(spec->env);
    free(spec->readiness.path);
    for (size_t i = 0; i < spec->n_triggers; i++)
        stoke_trigger_done(&spec->triggers[i]);
    free(spec->triggers);
    for (size_t i = 0; i < spec->n_schedules; i++)
        stoke_schedule_done(&spec->schedules[i]);
    free(spec->schedules);
    memset(spec, 0, sizeof(*spec));
}

int stoke_spec_dup(const struct stoke_spec *spec, struct stoke_spec *ret)
{
    struct stoke_spec d = *spec;

    d.image = NULL;
    d.env = NULL;
    d.env_len = 0;
    d.readiness.path = NULL;
    d.triggers = NULL;
    d.n_triggers = 0;
    d.schedules = NULL;
    d.n_schedules = 0;
    if (stoke_schedules_dup(spec->schedules, spec->n_schedules, &d.schedules) < 0)
        goto fail;
    d.n_schedules = spec->n_schedules;
    if (spec->n_triggers) {
        d.triggers = calloc(spec->n_triggers, sizeof(*d.triggers));
        if (!d.triggers)
            goto fail;
        for (; d.n_triggers < spec->n_triggers; d.n_triggers++) {
            const struct stoke_trigger *from = &spec->triggers[d.n_triggers];
            struct stoke_trigger *t = &d.triggers[d.n_triggers];
            *t = *from;
            t->address = from->address ? strdup(from->address) : NULL;
            t->stream = from->stream ? strdup(from->stream) : NULL;
            t->group = from->group ? strdup(from->group) : NULL;
            t->password_file = from->password_file ? strdup(from->password_file) : NULL;
            t->path = from->path ? strdup(from->path) : NULL;
            if ((from->address && !t->address) || (from->stream && !t->stream) ||
                (from->group && !t->group) || (from->password_file && !t->password_file) ||
                (from->path && !t->path)) {
                d.n_triggers++;
                goto fail;
            }
        }
    }
    if (spec->image) {
        d.image = strdup(spec->image);
        if (!d.image)
            goto fail;
    }
    if (spec->readiness.path) {
        d.readiness.path = strdup(spec->readiness.path);
        if (!d.readiness.path)
            goto fail;
    }
    if (spec->env_len) {
        d.env = calloc(spec->env_len, sizeof(*d.env));
        if (!d.env)
            goto fail;
        for (; d.env_len < spec->env_len; d.env_len++) {
            struct stoke_env_var *e = &d.env[d.env_len];
            e->name = strdup(spec->env[d.env_len].name);
            e->value = strdup(spec->env[d.env_len].value);
            if (!e->name || !e->value) {
                d.env_len++; /* so stoke_spec_done() frees the half-built entry */
                goto fail;
            }
        }
    }
    *ret = d;
    return 0;
fail:
    stoke_spec_done(&d);
    memset(ret, 0, sizeof(*ret));
    return -ENOMEM;
}

static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Strings end with their NUL, which no field can contain, so ("a", "bc")
 * and ("ab", "c") hash differently. */
static uint64_t fnv_str(uint64_t h, const char *s)
{
    return fnv_bytes(h, s ? s : "", (s ? strlen(s) : 0) + 1);
}

/* Numbers go in as 8 little-endian bytes, whatever the host. */
static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    unsigned char b[8];
    for (size_t i = 0; i < sizeof(b); i++)
        b[i] = (unsigned char)(v >> (8 * i));
    return fnv_bytes(h, b, sizeof(b));
}

void stoke_spec_revision(const struct stoke_spec *spec, char out[17])
{
    uint64_t h = 0xcbf29ce484222325ULL;

    h = fnv_str(h, spec->image);
    h = fnv_u64(h, spec->port);
    h = fnv_u64(h, spec->env_len);
    for (size_t i = 0; i < spec->env_len; i++) {
        h = fnv_str(h, spec->env[i].name);
        h = fnv_str(h, spec->env[i].value);
    }
    h = fnv_u64(h, spec->resources.memory_bytes);
    h = fnv_u64(h, spec->resources.cpu_millis);
    h = fnv_u64(h, spec->resources.pids);
    /* A TCP probe and an HTTP probe of some path differ. */
    h = fnv_u64(h, spec->readiness.path != NULL);
    h = fnv_str(h, spec->readiness.path);
    /* Only the non-default value counts, so specs written before the field
     * existed keep their revision (their replicas roll out to a read-only
     * root with the next change of the spec). */
    if (!spec->read_only_rootfs)
        h = fnv_str(h, "rw");
    /* Here the default counts: replicas of a revision from before the field
     * existed ran on the host network, and a new controller replaces them
     * (a rollout) rather than adopting them. Host keeps those revisions. */
    if (spec->network == STOKE_NETWORK_BRIDGE)
        h = fnv_str(h, "net:bridge");
    (void)snprintf(out, 17, "%016" PRIx64, h);
}

/* --- scalars ---------------------------------------------------------------- */

/* Digits into *v, refusing overflow. Returns the count of digits read, or
 * -ERANGE. */
static int read_digits(const char **s, uint64_t *v)
{
    const char *p = *s;
    uint64_t x = 0;
    int n = 0;

    for (; *p >= '0' && *p <= '9'; p++, n++) {
        unsigned d = (unsigned)(*p - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -ERANGE;
        x = x * 10 + d;
    }
    *s = p;
    *v = x;
    return n;
}

/* As stoke_parse_duration() but tells overflow (-ERANGE) from bad syntax. */
static int parse_duration(const char *s, uint64_t *ret_ms)
{
    uint64_t total = 0;

    if (!s || !*s)
        return -EINVAL;
    while (*s) {
        uint64_t v, mult;
        int n = read_digits(&s, &v);
        if (n < 0)
            return n;
        if (n == 0)
            return -EINVAL;
        if (s[0] == 'm' && s[1] == 's') {
            mult = 1;
            s += 2;
        } else if (s[0] == 's') {
            mult = MS_PER_S;
            s++;
        } else if (s[0] == 'm') {
            mult = MS_PER_M;
            s++;
        } else if (s[0] == 'h') {
            mult = MS_PER_H;
            s++;
        } else {
            return -EINVAL;
        }
        if (v > (UINT64_MAX - total) / mult)
            return -ERANGE;
        total += v * mult;
    }
    *ret_ms = total;
    return 0;
}

int stoke_parse_duration(const char *s, uint64_t *ret_ms)
{
    int r = parse_duration(s, ret_ms);
    return r < 0 ? -EINVAL : 0;
}

/* "<digits>[.<1 to 3 digits>]": the whole part, and the fraction in
 * thousandths (0 when there is none). */
static int read_decimal(const char **s, uint64_t *ret_whole, uint64_t *ret_frac)
{
    uint64_t frac = 0;
    int n = read_digits(s, ret_whole);

    if (n <= 0)
        return n < 0 ? n : -EINVAL;
    if (**s == '.') {
        int k;
        (*s)++;
        for (k = 0; k < 3 && **s >= '0' && **s <= '9'; k++, (*s)++)
            frac = frac * 10 + (uint64_t)(**s - '0');
        if (k == 0 || (**s >= '0' && **s <= '9'))
            return -EINVAL;
        for (; k < 3; k++)
            frac *= 10;
    }
    *ret_frac = frac;
    return 0;
}

static int parse_memory(const char *s, uint64_t *ret_bytes)
{
    static const struct {
        const char *suffix;
        uint64_t mult;
    } units[] = {
        {"Ki", 1ULL << 10}, {"Mi", 1ULL << 20},   {"Gi", 1ULL << 30},
        {"Ti", 1ULL << 40}, {"k", 1000ULL},       {"K", 1000ULL},
        {"M", 1000000ULL},  {"G", 1000000000ULL}, {"T", 1000000000000ULL},
    };
    uint64_t whole, frac, mult = 0, v, extra;
    bool dot;
    int r;

    if (!s || !*s)
        return -EINVAL;
    dot = strchr(s, '.') != NULL;
    r = read_decimal(&s, &whole, &frac);
    if (r < 0)
        return r;
    if (*s == '\0') {
        mult = 1;
    } else {
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
            if (strcmp(s, units[i].suffix) == 0)
                mult = units[i].mult;
    }
    /* A fraction of a byte makes no sense: "1.5" needs a unit. */
    if (mult == 0 || (dot && mult == 1))
        return -EINVAL;
    if (whole > UINT64_MAX / mult)
        return -ERANGE;
    v = whole * mult;
    /* The fraction, rounded up to a whole byte: frac < 1000 and mult <= 1e12,
     * so the product fits. */
    extra = (frac * mult + 999) / 1000;
    if (v > UINT64_MAX - extra)
        return -ERANGE;
    *ret_bytes = v + extra;
    return 0;
}

int stoke_parse_memory(const char *s, uint64_t *ret_bytes)
{
    return parse_memory(s, ret_bytes) < 0 ? -EINVAL : 0;
}

static int parse_cpu(const char *s, uint64_t *ret_millis)
{
    uint64_t v, frac;
    int r;

    if (!s || !*s)
        return -EINVAL;
    if (s[strlen(s) - 1] == 'm') {
        /* Millicores: a whole number. */
        const char *p = s;
        int n = read_digits(&p, &v);
        if (n < 0)
            return n;
        if (n == 0 || strcmp(p, "m") != 0)
            return -EINVAL;
        *ret_millis = v;
        return 0;
    }
    r = read_decimal(&s, &v, &frac);
    if (r < 0)
        return r;
    if (*s)
        return -EINVAL;
    if (v > (UINT64_MAX - frac) / 1000)
        return -ERANGE;
    *ret_millis = v * 1000 + frac;
    return 0;
}

int stoke_parse_cpu(const char *s, uint64_t *ret_millis)
{
    return parse_cpu(s, ret_millis) < 0 ? -EINVAL : 0;
}

bool stoke_is_valid_name(const char *s)
{
    size_t n;

    if (!s || !(*s >= 'a' && *s <= 'z'))
        return false;
    n = strlen(s);
    if (n > STOKE_NAME_MAX || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}
