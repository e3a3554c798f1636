/* The stoke/v1 Function spec: parsed from YAML (libyaml) into a plain struct.
 *
 * Parsing is all-or-nothing: on any error the output struct is left zeroed
 * (nothing to free) and `reterr` says where and what, so a caller that keeps
 * the previous spec of a function changes nothing when a new one is refused.
 * Pure: no I/O except stoke_spec_load(), which reads one capped file. */
#ifndef STOKE_SPEC_H
#define STOKE_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stoke/diag.h"

/* Hard caps on input: bigger files are refused before parsing, deeper nesting
 * and more nodes are refused while parsing, so hostile input cannot exhaust
 * memory or stack. YAML aliases, tags other than !!str !!int !!map !!seq and
 * "!", duplicate keys, unknown fields and a second document are refused
 * too. */
#define STOKE_SPEC_MAX_BYTES (1024 * 1024)
#define STOKE_SPEC_MAX_DEPTH 16
#define STOKE_SPEC_MAX_NODES 16384 /* scalars, sequences and mappings in all */
#define STOKE_SPEC_MAX_ENV 256
#define STOKE_NAME_MAX 63

enum stoke_idle {
    STOKE_IDLE_PAUSE = 0,
    STOKE_IDLE_STOP,
    STOKE_IDLE_REMOVE,
};

/* Where a replica's network lives. */
enum stoke_network {
    STOKE_NETWORK_BRIDGE = 0, /* its own namespace; port published on 127.0.0.1 */
    STOKE_NETWORK_HOST,       /* the host's namespace (opt-in: no isolation) */
};

struct stoke_env_var {
    char *name;  /* owned */
    char *value; /* owned */
};

/* Bounds are those stoke_spec_parse() enforces. Replica counts: min <= max
 * and initial <= max unless max is 0. */
struct stoke_scale {
    uint32_t min;                     /* default 0, 0..10000 */
    uint32_t max;                     /* default 0 = unbounded, 0..10000 */
    uint32_t initial;                 /* default 1, 0..10000 */
    uint32_t target;                  /* default 100, 1..1000000 */
    uint32_t utilization;             /* percent, default 70, 1..100 */
    uint32_t container_concurrency;   /* default 0 = no limit, 0..1000000 */
    uint64_t window_ms;               /* default 60 s, 6 s..1 h */
    uint32_t panic_window_percent;    /* default 10, 1..100 */
    uint32_t panic_threshold_percent; /* default 200, 110..1000 */
    uint64_t scale_to_zero_grace_ms;  /* default 30 s, 0..1 h */
    uint64_t scale_down_delay_ms;     /* default 0, 0..1 h */
    enum stoke_idle idle;             /* default pause */
    /* The warm tier's steps down, from the moment a replica reaches its
     * idle state: paused -> stopped after stop_after_ms (idle: pause),
     * stopped -> removed after remove_after_ms (idle: pause or stop). */
    uint64_t stop_after_ms;   /* default 5 min, 0..24 h */
    uint64_t remove_after_ms; /* default 30 min, 0..24 h */
    /* Containers created but never started, kept while the function has no
     * replica, so even a cold start without a warm replica skips create. */
    uint32_t precreated; /* default 0, 0..100 */
};

/* Async invocations (README "Async invocations"): how stoke-events delivers
 * a function's calls. */
struct stoke_async {
    uint32_t retries;       /* default 2, 0..100; attempts after the first */
    uint64_t backoff_ms;    /* default 1 min, 1 ms..1 h; the first retry's delay, doubled after */
    uint64_t max_age_ms;    /* default 6 h, 1 ms..6 h; a call older is dead-lettered */
    uint32_t max_in_flight; /* default 10, 1..10000; calls delivered at once */
    uint32_t max_body;      /* bytes, default 262144, 0..6291456 (6Mi); larger: 413 */
};

/* Queue triggers (README "Queue triggers"): a Redis stream whose messages
 * stoke-events delivers to the function as async calls, its backlog
 * counting as demand for the autoscaler. */
#define STOKE_SPEC_MAX_TRIGGERS 8
#define STOKE_TRIGGER_MAX_STRING 255 /* address, stream, group, passwordFile, path */

enum stoke_start_from {
    STOKE_START_NEW = 0, /* "$": a new group reads what is added from then on */
    STOKE_START_ALL,     /* "0": a new group reads the whole stream */
};

struct stoke_trigger {
    char name[STOKE_NAME_MAX + 1]; /* a DNS label, unique in the function */
    char *address;                 /* owned; "host:port" ([v6]:port) or "unix:/path" */
    char *stream;                  /* owned */
    char *group;                   /* owned; default "stoke-<function>" */
    char *password_file;           /* owned, or NULL: no AUTH */
    enum stoke_start_from start_from;
    char *path;              /* owned; the request path, default "/" */
    uint32_t target_backlog; /* messages per replica, default 10, 1..1000000 */
};

/* Schedules (README "Schedules"): cron runs that stoke-events makes async
 * calls of the function, as CloudEvents in binary mode. */
#define STOKE_SPEC_MAX_SCHEDULES 16
#define STOKE_SCHEDULE_MAX_STRING 255          /* schedule, contentType, path */
#define STOKE_SCHEDULE_MAX_DATA (64 * 1024)    /* data, bytes */
#define STOKE_SCHEDULE_MAX_DEADLINE_S 31622400 /* startingDeadlineSeconds: 366 days */

enum stoke_concurrency_policy {
    STOKE_POLICY_ALLOW = 0, /* every run is a call, whatever the last one does */
    STOKE_POLICY_FORBID,    /* a run is skipped while the last run's call is queued or running */
    STOKE_POLICY_REPLACE,   /* the last run's call is cancelled if still queued */
};

struct stoke_schedule {
    char name[STOKE_NAME_MAX + 1]; /* a DNS label, unique in the function */
    char *schedule;                /* owned; a cron expression (stoke/cron.h) */
    char *time_zone;               /* owned, or NULL: UTC; an IANA name the system has */
    char *data;                    /* owned, or NULL: no body; at most STOKE_SCHEDULE_MAX_DATA */
    char *content_type;            /* owned; default "application/json" */
    char *path;                    /* owned; the request path, default "/" */
    enum stoke_concurrency_policy policy; /* concurrencyPolicy, default Allow */
    uint32_t starting_deadline_s;         /* startingDeadlineSeconds; 0: none */
    bool suspend;
};

struct stoke_spec {
    char name[STOKE_NAME_MAX + 1]; /* metadata.name, a DNS label */
    char *image;                   /* owned, required; printable ASCII, no spaces, <= 1024 bytes */
    uint16_t port;                 /* default 8080, 1..65535; container port, $PORT */
    struct stoke_env_var *env;     /* owned array, in file order; names match
                                      [A-Za-z_][A-Za-z0-9_]*, never PORT; YAML
                                      null is "", other scalars their text */
    size_t env_len;                /* <= STOKE_SPEC_MAX_ENV */
    struct stoke_scale scale;
    uint64_t timeout_ms; /* default 300 s, 1 ms..1 h; per-request deadline */
    struct {
        uint32_t max;        /* default 1000, 0..1000000 */
        uint64_t timeout_ms; /* default 60 s, 1 ms..1 h */
    } queue;
    struct {
        uint64_t memory_bytes; /* default 128Mi, >= 6Mi (Docker's minimum) */
        uint64_t cpu_millis;   /* default 500m, 1m..1000 cores */
        uint32_t pids;         /* default 256, 1..4194304 */
    } resources;
    struct {
        char *path;         /* owned; NULL = TCP connect probe; starts with '/',
                               printable ASCII, no spaces, <= 1024 bytes */
        uint64_t period_ms; /* default 10 ms, 1 ms..1 h; the prober backs off */
    } readiness;
    struct stoke_async async;
    bool read_only_rootfs;            /* readOnlyRootFilesystem, default true */
    enum stoke_network network;       /* default bridge */
    struct stoke_trigger *triggers;   /* owned array, in file order */
    size_t n_triggers;                /* <= STOKE_SPEC_MAX_TRIGGERS */
    struct stoke_schedule *schedules; /* owned array, in file order */
    size_t n_schedules;               /* <= STOKE_SPEC_MAX_SCHEDULES */
};

/* Frees what `t` owns (not `t`). */
void stoke_trigger_done(struct stoke_trigger *t);

/* Frees what `s` owns (not `s`). */
void stoke_schedule_done(struct stoke_schedule *s);

/* Deep copy of `n` schedules into *ret (NULL when n is 0). Returns 0 or
 * -ENOMEM (*ret NULL). */
int stoke_schedules_dup(const struct stoke_schedule *s, size_t n, struct stoke_schedule **ret);

/* Whether two schedules say the same. */
bool stoke_schedule_equal(const struct stoke_schedule *a, const struct stoke_schedule *b);

/* Splits a trigger's "host:port" (an IPv6 literal in brackets) or
 * "unix:/path" address: into host (NUL-terminated) and *ret_port, or
 * *ret_unix set to the path (borrowed from `address`) and host "".
 * Returns 0 or -EINVAL (a port outside 1..65535, no port, too long). */
int stoke_trigger_address(const char *address, char *host, size_t host_size, int *ret_port,
                          const char **ret_unix);

/* Fills `a` with the async block's defaults. */
void stoke_async_defaults(struct stoke_async *a);

/* Fills `spec` with every default; name and image stay empty. */
void stoke_spec_defaults(struct stoke_spec *spec);

/* Parses `len` bytes of YAML. `filename` is only used in `reterr`.
 * Returns 0 and fills `ret` (free with stoke_spec_done()), or -EINVAL (bad
 * spec), -EFBIG (over STOKE_SPEC_MAX_BYTES), -ENOMEM; on error `ret` is zeroed
 * and `reterr` (may be NULL) holds file:line:column, the field path (e.g.
 * "spec.scale.min") and a message. */
int stoke_spec_parse(const char *buf, size_t len, const char *filename, struct stoke_spec *ret,
                     struct stoke_diag *reterr);

/* Called once per warning (file:line:column, field, message) of a spec that
 * was accepted, in file order, before stoke_spec_parse_ex() returns; never
 * for a refused spec. `warning` is borrowed for the call. */
typedef void (*stoke_spec_warn_fn)(const struct stoke_diag *warning, void *data);

/* As stoke_spec_parse(), and a Knative serving.knative.dev/v1 Service
 * manifest (common/knative.c) is mapped too; its warnings (fields stoke does
 * not support) go to `warn` (may be NULL) with `data`. stoke/v1 specs have
 * none: their unknown fields are errors. */
int stoke_spec_parse_ex(const char *buf, size_t len, const char *filename, struct stoke_spec *ret,
                        struct stoke_diag *reterr, stoke_spec_warn_fn warn, void *data);

/* Reads `path` (refusing files over STOKE_SPEC_MAX_BYTES without reading them
 * whole) and parses it. Blocking file I/O: call at startup or off the loop,
 * or accept one small read. Same returns as stoke_spec_parse(), plus -errno
 * from open/read (reterr filled too). */
int stoke_spec_load(const char *path, struct stoke_spec *ret, struct stoke_diag *reterr);
/* stoke_spec_load() with warnings, as stoke_spec_parse_ex(). */
int stoke_spec_load_ex(const char *path, struct stoke_spec *ret, struct stoke_diag *reterr,
                       stoke_spec_warn_fn warn, void *data);

/* Frees what `spec` owns and zeroes it. Safe on a zeroed or half-built spec. */
void stoke_spec_done(struct stoke_spec *spec);

/* Deep copy into `ret`. Returns 0 or -ENOMEM (ret zeroed). */
int stoke_spec_dup(const struct stoke_spec *spec, struct stoke_spec *ret);

/* The revision: 16 lowercase hex digits of a stable hash (FNV-1a 64) over the
 * fields that shape a replica (image, port, env in order, resources,
 * readiness path, readOnlyRootFilesystem when false, and network when
 * bridge). Two specs with the same revision can
 * share replicas. */
void stoke_spec_revision(const struct stoke_spec *spec, char out[17]);

/* Parses a duration such as "250ms", "60s", "1m30s", "2h" into ms: one or
 * more <digits><unit>, units ms, s, m, h, in any order; no sign, fraction or
 * space. Returns 0 or -EINVAL (empty, no unit, unknown unit, overflow,
 * negative); *ret_ms is untouched on error. */
int stoke_parse_duration(const char *s, uint64_t *ret_ms);

/* Kubernetes-style quantities; syntax only (0 is accepted), bounds are the
 * spec's. Memory: plain bytes ("1000000"), or a number with a binary (Ki Mi
 * Gi Ti) or decimal (k K M G T) suffix, "128Mi", "500M"; with a suffix up to
 * three decimals ("1.5Gi"), rounded up to a whole byte. CPU: cores with up to
 * three decimals ("1", "0.5") or whole millicores ("500m"). Returns 0 or
 * -EINVAL; the output is untouched on error. */
int stoke_parse_memory(const char *s, uint64_t *ret_bytes);
int stoke_parse_cpu(const char *s, uint64_t *ret_millis);

/* A DNS label: [a-z0-9-], 1..63, starts with a letter, does not end with '-'. */
bool stoke_is_valid_name(const char *s);

/* The apiVersion of stoke/v1 specs: the Kubernetes form (group stoke.dev,
 * the Function custom resource's) and the short form of stoke's first
 * specs. Both are accepted alike; the group form is the one to write, so one
 * file applies to Docker and with `kubectl apply -f` to a cluster. */
#define STOKE_API_GROUP "stoke.dev"
#define STOKE_API_VERSION STOKE_API_GROUP "/v1"
#define STOKE_API_VERSION_SHORT "stoke/v1"

/* The field tree the parser checks, taken from its own tables, for what must
 * agree with it (the CRD's schema in charts/stoke, tests/k8s). */
enum stoke_spec_type {
    STOKE_SPEC_STRING,   /* one of `values` */
    STOKE_SPEC_NAME,     /* stoke_is_valid_name(); max = the longest */
    STOKE_SPEC_IMAGE,    /* printable ASCII, no spaces, 1..max bytes */
    STOKE_SPEC_PATH,     /* as IMAGE, and starts with '/' */
    STOKE_SPEC_UINT,     /* a plain decimal integer, min..max */
    STOKE_SPEC_DURATION, /* stoke_parse_duration(), min..max ms */
    STOKE_SPEC_MEMORY,   /* stoke_parse_memory(), min..max bytes */
    STOKE_SPEC_CPU,      /* stoke_parse_cpu(), min..max millicores */
    STOKE_SPEC_BOOL,     /* true or false */
    STOKE_SPEC_MAP,      /* a mapping of the fields whose paths follow it */
    STOKE_SPEC_ENV,      /* a mapping of env names to scalars, at most max */
    STOKE_SPEC_STRMAP,   /* a mapping of any keys to scalars */
    STOKE_SPEC_LIST,     /* a sequence of at most max mappings of the fields whose
                            paths follow it; "name" is a unique key */
    STOKE_SPEC_ADDRESS,  /* host:port or unix:/path, 1..max bytes (stoke_trigger_address()) */
    STOKE_SPEC_CRON,     /* a cron expression stoke_cron_parse() takes, 1..max bytes */
    STOKE_SPEC_ZONE,     /* an IANA time zone the system has, 1..max bytes */
    STOKE_SPEC_TEXT,     /* any string, min..max bytes */
};

struct stoke_spec_field_info {
    const char *path; /* dotted, e.g. "spec.scale.min"; valid for the call only */
    enum stoke_spec_type type;
    uint64_t min, max;
    bool required;
    const char *const *values; /* STRING: the accepted values, NULL-terminated */
};

/* Calls `fn` for every field the parser knows, parents before their fields,
 * in table order. Cross-field rules (scale.min and scale.initial at most
 * scale.max when it is not 0) are not in the tree. */
void stoke_spec_fields(void (*fn)(const struct stoke_spec_field_info *f, void *data), void *data);

/* The names of enum stoke_idle, enum stoke_network, enum
 * stoke_start_from and enum stoke_concurrency_policy, in their order,
 * NULL-terminated. */
extern const char *const stoke_policy_names[];
extern const char *const stoke_idle_names[];
extern const char *const stoke_network_names[];
extern const char *const stoke_start_from_names[];

#endif
