/* The stoke/v1 Function spec: parsing, refusal with file:line:column and
 * field, the scalar parsers, the revision hash, and loading files. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "stoke/spec.h"

#define MIB (UINT64_C(1024) * 1024)

/* Six lines; what a case appends starts on line 7, inside `spec:`. */
#define BASE                                                                                       \
    "apiVersion: stoke/v1\n"                                                                       \
    "kind: Function\n"                                                                             \
    "metadata:\n"                                                                                  \
    "  name: hello\n"                                                                              \
    "spec:\n"                                                                                      \
    "  image: stoke-hello:1\n"
/* Three lines; the case adds metadata's entries from line 4, then SPEC. */
#define HEAD                                                                                       \
    "apiVersion: stoke/v1\n"                                                                       \
    "kind: Function\n"                                                                             \
    "metadata:\n"
#define SPEC                                                                                       \
    "spec:\n"                                                                                      \
    "  image: stoke-hello:1\n"

static bool is_zeroed(const struct stoke_spec *s)
{
    static const struct stoke_spec zero;
    return memcmp(s, &zero, sizeof(zero)) == 0;
}

/* --- valid specs ------------------------------------------------------------ */

struct good_case {
    const char *what;
    const char *yaml;
    void (*check)(const struct stoke_spec *s);
};

static void check_defaults_except_name_image(const struct stoke_spec *s)
{
    struct stoke_spec d;
    stoke_spec_defaults(&d);
    assert_int_equal(s->port, 8080);
    assert_int_equal(s->port, d.port);
    assert_int_equal(s->env_len, 0);
    assert_null(s->env);
    assert_int_equal(s->scale.min, 0);
    assert_int_equal(s->scale.max, 0);
    assert_int_equal(s->scale.initial, 1);
    assert_int_equal(s->scale.target, 100);
    assert_int_equal(s->scale.utilization, 70);
    assert_int_equal(s->scale.container_concurrency, 0);
    assert_int_equal(s->scale.window_ms, 60000);
    assert_int_equal(s->scale.panic_window_percent, 10);
    assert_int_equal(s->scale.panic_threshold_percent, 200);
    assert_int_equal(s->scale.scale_to_zero_grace_ms, 30000);
    assert_int_equal(s->scale.scale_down_delay_ms, 0);
    assert_int_equal(s->scale.idle, STOKE_IDLE_PAUSE);
    assert_int_equal(s->scale.stop_after_ms, 300000);
    assert_int_equal(s->scale.remove_after_ms, 1800000);
    assert_int_equal(s->scale.precreated, 0);
    assert_true(s->read_only_rootfs);
    assert_int_equal(s->network, STOKE_NETWORK_BRIDGE);
    assert_int_equal(s->timeout_ms, 300000);
    assert_int_equal(s->queue.max, 1000);
    assert_int_equal(s->queue.timeout_ms, 60000);
    assert_int_equal(s->resources.memory_bytes, 128 * MIB);
    assert_int_equal(s->resources.cpu_millis, 500);
    assert_int_equal(s->resources.pids, 256);
    assert_null(s->readiness.path);
    assert_int_equal(s->readiness.period_ms, 10);
    /* The same as stoke_spec_defaults(), member by member. */
    assert_memory_equal(&s->scale, &d.scale, sizeof(d.scale));
    assert_memory_equal(&s->queue, &d.queue, sizeof(d.queue));
    assert_memory_equal(&s->resources, &d.resources, sizeof(d.resources));
    assert_int_equal(s->timeout_ms, d.timeout_ms);
    assert_int_equal(s->readiness.period_ms, d.readiness.period_ms);
}

static void check_minimal(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "hello");
    assert_string_equal(s->image, "stoke-hello:1");
    check_defaults_except_name_image(s);
}

static void check_env(const struct stoke_spec *s, size_t i, const char *name, const char *value)
{
    assert_true(i < s->env_len);
    assert_string_equal(s->env[i].name, name);
    assert_string_equal(s->env[i].value, value);
}

static void check_full(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "full-1");
    assert_string_equal(s->image, "registry.local:5000/team/full@sha256:0123");
    assert_int_equal(s->port, 9000);
    assert_int_equal(s->env_len, 3);
    check_env(s, 0, "B_FIRST", "one");
    check_env(s, 1, "A_SECOND", "two words");
    check_env(s, 2, "_third", "3");
    assert_int_equal(s->scale.min, 2);
    assert_int_equal(s->scale.max, 20);
    assert_int_equal(s->scale.initial, 3);
    assert_int_equal(s->scale.target, 50);
    assert_int_equal(s->scale.utilization, 80);
    assert_int_equal(s->scale.container_concurrency, 8);
    assert_int_equal(s->scale.window_ms, 120000);
    assert_int_equal(s->scale.panic_window_percent, 20);
    assert_int_equal(s->scale.panic_threshold_percent, 300);
    assert_int_equal(s->scale.scale_to_zero_grace_ms, 45000);
    assert_int_equal(s->scale.scale_down_delay_ms, 90000);
    assert_int_equal(s->scale.idle, STOKE_IDLE_STOP);
    assert_int_equal(s->scale.stop_after_ms, 10000);
    assert_int_equal(s->scale.remove_after_ms, 7200000);
    assert_int_equal(s->scale.precreated, 2);
    assert_false(s->read_only_rootfs);
    assert_int_equal(s->timeout_ms, 30000);
    assert_int_equal(s->queue.max, 50);
    assert_int_equal(s->queue.timeout_ms, 5000);
    assert_int_equal(s->resources.memory_bytes, 256 * MIB);
    assert_int_equal(s->resources.cpu_millis, 1500);
    assert_int_equal(s->resources.pids, 64);
    assert_string_equal(s->readiness.path, "/healthz");
    assert_int_equal(s->readiness.period_ms, 250);
    assert_int_equal(s->network, STOKE_NETWORK_HOST);
}

static void check_durations(const struct stoke_spec *s)
{
    assert_int_equal(s->scale.window_ms, 90000);
    assert_int_equal(s->scale.scale_to_zero_grace_ms, 0);
    assert_int_equal(s->scale.scale_down_delay_ms, 3600000);
    assert_int_equal(s->timeout_ms, 250);
    assert_int_equal(s->queue.timeout_ms, 62003);
    assert_int_equal(s->readiness.period_ms, 1);
}

static void check_binary_quantities(const struct stoke_spec *s)
{
    assert_int_equal(s->resources.memory_bytes, UINT64_C(1) << 30);
    assert_int_equal(s->resources.cpu_millis, 2000);
}

static void check_decimal_quantities(const struct stoke_spec *s)
{
    assert_int_equal(s->resources.memory_bytes, 500000000);
    assert_int_equal(s->resources.cpu_millis, 500);
}

static void check_plain_quantities(const struct stoke_spec *s)
{
    assert_int_equal(s->resources.memory_bytes, 128 * MIB);
    assert_int_equal(s->resources.cpu_millis, 250);
}

static void check_fraction_quantities(const struct stoke_spec *s)
{
    assert_int_equal(s->resources.memory_bytes, 1536 * MIB);
    assert_int_equal(s->resources.cpu_millis, 1250);
}

static void check_k_quantities(const struct stoke_spec *s)
{
    assert_int_equal(s->resources.memory_bytes, 8000000);
    assert_int_equal(s->resources.cpu_millis, 1000);
}

static void check_tera_quantities(const struct stoke_spec *s)
{
    assert_int_equal(s->resources.memory_bytes, UINT64_C(1) << 40);
    assert_int_equal(s->resources.cpu_millis, 1);
}

static void check_comments(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "commented");
    assert_string_equal(s->image, "stoke-hello:1");
    assert_int_equal(s->port, 8081);
    assert_int_equal(s->scale.max, 3);
}

static void check_flow(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "flow");
    assert_string_equal(s->image, "stoke-hello:1");
    assert_int_equal(s->env_len, 2);
    check_env(s, 0, "B", "2");
    check_env(s, 1, "A", "1");
    assert_int_equal(s->scale.min, 1);
    assert_int_equal(s->scale.max, 4);
    assert_int_equal(s->scale.idle, STOKE_IDLE_REMOVE);
    assert_int_equal(s->queue.max, 10);
    assert_string_equal(s->readiness.path, "/r");
}

static void check_group(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "grouped");
    assert_int_equal(s->scale.idle, STOKE_IDLE_STOP);
}

static void check_quoted(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "quoted");
    assert_string_equal(s->image, "stoke-hello:1");
    assert_int_equal(s->scale.window_ms, 90000);
    assert_int_equal(s->scale.idle, STOKE_IDLE_REMOVE);
    assert_int_equal(s->resources.memory_bytes, 1024 * MIB);
    assert_int_equal(s->resources.cpu_millis, 2000);
    assert_string_equal(s->readiness.path, "/q");
}

static void check_env_order(const struct stoke_spec *s)
{
    assert_int_equal(s->env_len, 8);
    check_env(s, 0, "ZED", "first in the file");
    check_env(s, 1, "ALPHA", "2");
    check_env(s, 2, "EMPTY", "");
    check_env(s, 3, "TILDE", "");
    check_env(s, 4, "BOOL", "true");
    check_env(s, 5, "NUM", "0x10");
    check_env(s, 6, "MULTI", "line one\nline two\n");
    check_env(s, 7, "SQ", "it's");
}

static void check_labels(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "labelled");
    check_defaults_except_name_image(s);
}

static void check_null_sections(const struct stoke_spec *s)
{
    check_minimal(s);
}

static void check_crlf(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "crlf");
    assert_string_equal(s->image, "stoke-hello:1");
    assert_int_equal(s->port, 8082);
}

static void check_unbounded(const struct stoke_spec *s)
{
    assert_int_equal(s->scale.min, 5);
    assert_int_equal(s->scale.max, 0);
    assert_int_equal(s->scale.initial, 7);
}

static void check_tags(const struct stoke_spec *s)
{
    assert_string_equal(s->image, "3");
    assert_int_equal(s->port, 8081);
    assert_int_equal(s->scale.min, 2);
}

static void check_bounds(const struct stoke_spec *s)
{
    assert_int_equal(s->port, 65535);
    assert_int_equal(s->scale.min, 10000);
    assert_int_equal(s->scale.max, 10000);
    assert_int_equal(s->scale.initial, 0);
    assert_int_equal(s->scale.target, 1);
    assert_int_equal(s->scale.utilization, 100);
    assert_int_equal(s->scale.window_ms, 6000);
    assert_int_equal(s->scale.panic_window_percent, 1);
    assert_int_equal(s->scale.panic_threshold_percent, 110);
    assert_int_equal(s->scale.idle, STOKE_IDLE_PAUSE);
    assert_int_equal(s->timeout_ms, 3600000);
    assert_int_equal(s->queue.max, 0);
    assert_int_equal(s->resources.memory_bytes, 6 * MIB);
    assert_int_equal(s->resources.cpu_millis, 1000000);
    assert_int_equal(s->resources.pids, 4194304);
}

static void check_order(const struct stoke_spec *s)
{
    assert_string_equal(s->name, "backwards");
    assert_string_equal(s->image, "stoke-hello:1");
}

static void check_warm_bounds(const struct stoke_spec *s)
{
    assert_int_equal(s->scale.stop_after_ms, 0);
    assert_int_equal(s->scale.remove_after_ms, 24 * 3600000);
    assert_int_equal(s->scale.precreated, 100);
    assert_true(s->read_only_rootfs);
}

static void check_host_network(const struct stoke_spec *s)
{
    assert_int_equal(s->network, STOKE_NETWORK_HOST);
}

static void check_bridge_network(const struct stoke_spec *s)
{
    assert_int_equal(s->network, STOKE_NETWORK_BRIDGE);
}

static void check_writable(const struct stoke_spec *s)
{
    assert_false(s->read_only_rootfs);
    assert_int_equal(s->scale.stop_after_ms, 300000);
}

static const struct good_case good_cases[] = {
    {"minimal: every default", BASE, check_minimal},
    {"every field",
     HEAD "  name: full-1\n"
          "spec:\n"
          "  image: registry.local:5000/team/full@sha256:0123\n"
          "  port: 9000\n"
          "  env: {B_FIRST: one, A_SECOND: two words, _third: 3}\n"
          "  scale:\n"
          "    min: 2\n"
          "    max: 20\n"
          "    initial: 3\n"
          "    target: 50\n"
          "    utilization: 80\n"
          "    containerConcurrency: 8\n"
          "    window: 2m\n"
          "    panicWindowPercent: 20\n"
          "    panicThresholdPercent: 300\n"
          "    scaleToZeroGrace: 45s\n"
          "    scaleDownDelay: 1m30s\n"
          "    idle: stop\n"
          "    stopAfter: 10s\n"
          "    removeAfter: 2h\n"
          "    precreated: 2\n"
          "  timeout: 30s\n"
          "  queue: {max: 50, timeout: 5s}\n"
          "  resources: {memory: 256Mi, cpu: 1.5, pids: 64}\n"
          "  readiness: {path: /healthz, period: 250ms}\n"
          "  readOnlyRootFilesystem: false\n"
          "  network: host\n",
     check_full},
    {"warm tier bounds, boolean spellings",
     BASE "  scale: {stopAfter: 0s, removeAfter: 24h, precreated: 100}\n"
          "  readOnlyRootFilesystem: True\n",
     check_warm_bounds},
    {"read-only root off", BASE "  readOnlyRootFilesystem: FALSE\n", check_writable},
    {"host network", BASE "  network: host\n", check_host_network},
    {"bridge network", BASE "  network: bridge\n", check_bridge_network},
    {"durations of each form",
     BASE "  scale: {window: 1m30s, scaleToZeroGrace: 0s, scaleDownDelay: 1h}\n"
          "  timeout: 250ms\n"
          "  queue: {timeout: 1m2s3ms}\n"
          "  readiness: {period: 1ms}\n",
     check_durations},
    {"binary memory, whole cores", BASE "  resources: {memory: 1Gi, cpu: 2}\n",
     check_binary_quantities},
    {"decimal memory, fractional cores", BASE "  resources: {memory: 500M, cpu: 0.5}\n",
     check_decimal_quantities},
    {"plain bytes, millicores", BASE "  resources: {memory: 134217728, cpu: 250m}\n",
     check_plain_quantities},
    {"fractional memory", BASE "  resources: {memory: 1.5Gi, cpu: \"1.25\"}\n",
     check_fraction_quantities},
    {"k and K", BASE "  resources: {memory: 8000k, cpu: '1'}\n", check_k_quantities},
    {"Ti, 1m", BASE "  resources: {memory: 1Ti, cpu: 1m}\n", check_tera_quantities},
    {"comments everywhere",
     "# leading comment\n"
     "apiVersion: stoke/v1 # trailing\n"
     "kind: Function\n"
     "\n"
     "# between\n"
     "metadata:\n"
     "  # inside\n"
     "  name: commented  # after the name\n"
     "spec:\n"
     "  image: stoke-hello:1 # image\n"
     "  port: 8081\n"
     "  scale:\n"
     "    # min: 9\n"
     "    max: 3\n"
     "# final comment\n",
     check_comments},
    {"flow style",
     "{apiVersion: stoke/v1, kind: Function, metadata: {name: flow},\n"
     " spec: {image: \"stoke-hello:1\", env: {B: \"2\", A: \"1\"},\n"
     "        scale: {min: 1, max: 4, idle: remove}, queue: {max: 10},\n"
     "        readiness: {path: /r}}}\n",
     check_flow},
    {"the group's apiVersion",
     "apiVersion: stoke.dev/v1\nkind: Function\nmetadata: {name: grouped}\n"
     "spec: {image: stoke-hello:1, scale: {idle: stop}}\n",
     check_group},
    {"quoted strings",
     "apiVersion: \"stoke/v1\"\n"
     "kind: 'Function'\n"
     "metadata:\n"
     "  name: \"quoted\"\n"
     "spec:\n"
     "  image: 'stoke-hello:1'\n"
     "  scale: {window: \"90s\", idle: 'remove'}\n"
     "  resources: {memory: \"1Gi\", cpu: '2'}\n"
     "  readiness: {path: \"/q\"}\n",
     check_quoted},
    {"env order and values",
     BASE "  env:\n"
          "    ZED: first in the file\n"
          "    ALPHA: \"2\"\n"
          "    EMPTY:\n"
          "    TILDE: ~\n"
          "    BOOL: true\n"
          "    NUM: 0x10\n"
          "    MULTI: |\n"
          "      line one\n"
          "      line two\n"
          "    SQ: 'it''s'\n",
     check_env_order},
    {"labels and annotations",
     HEAD "  name: labelled\n"
          "  labels: {app: x, \"team\": 'y', n: 3}\n"
          "  annotations:\n"
          "    example.com/note: \"long text\"\n"
          "    empty:\n" SPEC,
     check_labels},
    {"null sections",
     BASE "  scale:\n"
          "  #  min: 3\n"
          "  queue: ~\n"
          "  env:\n",
     check_null_sections},
    {"BOM, CRLF and document markers",
     "\xEF\xBB\xBF%YAML 1.1\r\n"
     "---\r\n"
     "apiVersion: stoke/v1\r\n"
     "kind: Function\r\n"
     "metadata:\r\n"
     "  name: crlf\r\n"
     "spec:\r\n"
     "  image: stoke-hello:1\r\n"
     "  port: 8082\r\n"
     "...\r\n",
     check_crlf},
    {"max 0 is unbounded", BASE "  scale: {min: 5, max: 0, initial: 7}\n", check_unbounded},
    {"standard tags",
     HEAD "  name: hello\n"
          "spec: !!map\n"
          "  image: !!str 3\n"
          "  port: !!int 8081\n"
          "  scale: {min: !!int \"2\"}\n",
     check_tags},
    {"bounds",
     BASE "  port: 65535\n"
          "  scale:\n"
          "    min: 10000\n"
          "    max: 10000\n"
          "    initial: 0\n"
          "    target: 1\n"
          "    utilization: 100\n"
          "    window: 6s\n"
          "    panicWindowPercent: 1\n"
          "    panicThresholdPercent: 110\n"
          "    idle: pause\n"
          "  timeout: 1h\n"
          "  queue: {max: 0}\n"
          "  resources: {memory: 6Mi, cpu: 1000, pids: 4194304}\n",
     check_bounds},
    {"any key order",
     "spec:\n"
     "  image: stoke-hello:1\n"
     "metadata: {name: backwards}\n"
     "kind: Function\n"
     "apiVersion: stoke/v1\n",
     check_order},
};

struct fields_seen {
    size_t count;
    bool idle, api_version, min, image, env;
};

static void see_field(const struct stoke_spec_field_info *f, void *data)
{
    struct fields_seen *seen = data;

    seen->count++;
    assert_non_null(f->path);
    assert_true(f->path[0] != '\0' && f->path[0] != '.');
    if (strcmp(f->path, "spec.scale.idle") == 0) {
        assert_int_equal(f->type, STOKE_SPEC_STRING);
        for (int k = 0; k <= STOKE_IDLE_REMOVE; k++)
            assert_string_equal(f->values[k], stoke_idle_names[k]);
        assert_null(f->values[STOKE_IDLE_REMOVE + 1]);
        seen->idle = true;
    } else if (strcmp(f->path, "apiVersion") == 0) {
        assert_true(f->required);
        assert_string_equal(f->values[0], "stoke.dev/v1");
        assert_string_equal(f->values[1], "stoke/v1");
        assert_null(f->values[2]);
        seen->api_version = true;
    } else if (strcmp(f->path, "spec.scale.panicThresholdPercent") == 0) {
        assert_int_equal(f->type, STOKE_SPEC_UINT);
        assert_int_equal(f->min, 110);
        assert_int_equal(f->max, 1000);
        seen->min = true;
    } else if (strcmp(f->path, "spec.image") == 0) {
        assert_int_equal(f->type, STOKE_SPEC_IMAGE);
        assert_true(f->required);
        assert_int_equal(f->max, 1024);
        seen->image = true;
    } else if (strcmp(f->path, "spec.env") == 0) {
        assert_int_equal(f->type, STOKE_SPEC_ENV);
        assert_int_equal(f->max, STOKE_SPEC_MAX_ENV);
        seen->env = true;
    }
}

/* The field tree is the parser's own table: spot checks here, the whole of
 * it against the CRD in tests/crd. */
static void test_fields(void **state)
{
    struct fields_seen seen = {0};

    (void)state;
    stoke_spec_fields(see_field, &seen);
    /* 4 at the root, 3 in metadata, 13 in spec, 15 + 2 + 5 + 3 + 2 + 4 + 5 + 9 below it */
    assert_int_equal(seen.count, 65);
    assert_true(seen.idle && seen.api_version && seen.min && seen.image && seen.env);
}

static void test_valid(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(good_cases) / sizeof(good_cases[0]); i++) {
        const struct good_case *gc = &good_cases[i];
        struct stoke_spec s;
        struct stoke_diag d;
        int r = stoke_spec_parse(gc->yaml, strlen(gc->yaml), "good.yaml", &s, &d);
        if (r != 0) {
            print_error("valid case \"%s\": %d %u:%u %s: %s\n", gc->what, r, d.line, d.column,
                        d.field, d.message);
            fail();
        }
        gc->check(&s);
        stoke_spec_done(&s);
        assert_true(is_zeroed(&s));
    }
}

/* The async block: its defaults, each field, and its bounds. */
static void test_async_block(void **state)
{
    (void)state;
    static const char head[] = "apiVersion: stoke.dev/v1\nkind: Function\nmetadata: {name: a}\n"
                               "spec:\n  image: x\n";
    struct stoke_spec s;
    struct stoke_diag d;
    assert_int_equal(stoke_spec_parse(head, strlen(head), "a.yaml", &s, &d), 0);
    assert_int_equal(s.async.retries, 2);
    assert_int_equal(s.async.backoff_ms, 60000);
    assert_int_equal(s.async.max_age_ms, 6 * 3600 * 1000);
    assert_int_equal(s.async.max_in_flight, 10);
    assert_int_equal(s.async.max_body, 262144);
    stoke_spec_done(&s);
    char y[512];
    snprintf(y, sizeof(y),
             "%s  async: {retries: 0, backoff: 250ms, maxEventAge: 90s, "
             "maxInFlight: 3, maxBody: 100}\n",
             head);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), 0);
    assert_int_equal(s.async.retries, 0);
    assert_int_equal(s.async.backoff_ms, 250);
    assert_int_equal(s.async.max_age_ms, 90000);
    assert_int_equal(s.async.max_in_flight, 3);
    assert_int_equal(s.async.max_body, 100);
    stoke_spec_done(&s);
    static const char *const bad[] = {"retries: 101",     "maxEventAge: 7h", "maxInFlight: 0",
                                      "maxBody: 6291457", "backoff: 0ms",    "nope: 1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(y, sizeof(y), "%s  async: {%s}\n", head, bad[i]);
        assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), -EINVAL);
    }
}

/* spec.triggers: defaults, each field, the bounds, and refusals. */
static void test_triggers_block(void **state)
{
    (void)state;
    static const char head[] = "apiVersion: stoke.dev/v1\nkind: Function\nmetadata: {name: fa}\n"
                               "spec:\n  image: x\n";
    struct stoke_spec s, d2;
    struct stoke_diag d;
    char y[4096];
    assert_int_equal(stoke_spec_parse(head, strlen(head), "a.yaml", &s, &d), 0);
    assert_int_equal(s.n_triggers, 0);
    assert_null(s.triggers);
    stoke_spec_done(&s);
    snprintf(y, sizeof(y),
             "%s  triggers:\n"
             "    - name: orders\n"
             "      redis: {address: \"127.0.0.1:6379\", stream: orders}\n"
             "    - name: b-2\n"
             "      redis: {address: \"unix:/run/r.sock\", stream: s2, group: g1,\n"
             "              passwordFile: /etc/pw, startFrom: \"0\"}\n"
             "      path: /hook?x=1\n"
             "      targetBacklog: 1000000\n",
             head);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), 0);
    assert_int_equal(s.n_triggers, 2);
    const struct stoke_trigger *t = &s.triggers[0];
    assert_string_equal(t->name, "orders");
    assert_string_equal(t->address, "127.0.0.1:6379");
    assert_string_equal(t->stream, "orders");
    assert_string_equal(t->group, "stoke-fa");
    assert_null(t->password_file);
    assert_int_equal(t->start_from, STOKE_START_NEW);
    assert_string_equal(t->path, "/");
    assert_int_equal(t->target_backlog, 10);
    t = &s.triggers[1];
    assert_string_equal(t->name, "b-2");
    assert_string_equal(t->address, "unix:/run/r.sock");
    assert_string_equal(t->group, "g1");
    assert_string_equal(t->password_file, "/etc/pw");
    assert_int_equal(t->start_from, STOKE_START_ALL);
    assert_string_equal(t->path, "/hook?x=1");
    assert_int_equal(t->target_backlog, 1000000);
    /* a deep copy */
    assert_int_equal(stoke_spec_dup(&s, &d2), 0);
    assert_int_equal(d2.n_triggers, 2);
    assert_ptr_not_equal(d2.triggers[1].path, s.triggers[1].path);
    assert_string_equal(d2.triggers[1].password_file, "/etc/pw");
    stoke_spec_done(&d2);
    stoke_spec_done(&s);
    assert_true(is_zeroed(&s));
    /* eight are allowed, nine are not */
    for (int n = 8; n <= 9; n++) {
        size_t len = (size_t)snprintf(y, sizeof(y), "%s  triggers:\n", head);
        for (int i = 0; i < n; i++)
            len += (size_t)snprintf(y + len, sizeof(y) - len,
                                    "    - {name: t%d, redis: {address: \"h:1\", stream: s}}\n", i);
        memset(&d, 0, sizeof(d));
        int r = stoke_spec_parse(y, len, "a.yaml", &s, &d);
        assert_int_equal(r, n == 8 ? 0 : -EINVAL);
        if (r == 0)
            assert_int_equal(s.n_triggers, 8);
        else {
            assert_non_null(strstr(d.message, "too many entries: 9"));
            assert_string_equal(d.field, "spec.triggers");
        }
        stoke_spec_done(&s);
    }
    static const struct {
        const char *item, *field, *message;
    } bad[] = {
        {"{redis: {address: \"h:1\", stream: s}}", "spec.triggers[0].name", "missing required"},
        {"{name: a}", "spec.triggers[0].redis", "missing required field \"redis\""},
        {"{name: a, redis: {stream: s}}", "spec.triggers[0].redis.address", "\"address\""},
        {"{name: a, redis: {address: \"h:1\"}}", "spec.triggers[0].redis.stream", "\"stream\""},
        {"{name: A, redis: {address: \"h:1\", stream: s}}", "spec.triggers[0].name",
         "invalid name"},
        {"{name: a, redis: {address: \"h\", stream: s}}", "spec.triggers[0].redis.address",
         "invalid address"},
        {"{name: a, redis: {address: \"h:0\", stream: s}}", "spec.triggers[0].redis.address",
         "invalid address"},
        {"{name: a, redis: {address: \"h:65536\", stream: s}}", "spec.triggers[0].redis.address",
         "invalid address"},
        {"{name: a, redis: {address: \"h_x:1\", stream: s}}", "spec.triggers[0].redis.address",
         "invalid address"},
        {"{name: a, redis: {address: \"unix:rel\", stream: s}}", "spec.triggers[0].redis.address",
         "invalid address"},
        {"{name: a, redis: {address: \"h:1\", stream: \"a b\"}}", "spec.triggers[0].redis.stream",
         "printable"},
        {"{name: a, redis: {address: \"h:1\", stream: s, startFrom: \"1\"}}",
         "spec.triggers[0].redis.startFrom", "must be"},
        {"{name: a, redis: {address: \"h:1\", stream: s, password: x}}",
         "spec.triggers[0].redis.password", "unknown field"},
        {"{name: a, redis: {address: \"h:1\", stream: s, passwordFile: rel}}",
         "spec.triggers[0].redis.passwordFile", "must start with '/'"},
        {"{name: a, redis: {address: \"h:1\", stream: s}, targetBacklog: 0}",
         "spec.triggers[0].targetBacklog", "between 1 and 1000000"},
        {"{name: a, redis: {address: \"h:1\", stream: s}, path: x}", "spec.triggers[0].path",
         "must start with '/'"},
        {"x", "spec.triggers[0]", "mapping"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(y, sizeof(y), "%s  triggers:\n    - %s\n", head, bad[i].item);
        memset(&d, 0, sizeof(d));
        int r = stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d);
        if (r != -EINVAL || strcmp(d.field, bad[i].field) != 0 ||
            !strstr(d.message, bad[i].message)) {
            print_error("trigger case %zu: %d %s: %s\n", i, r, d.field, d.message);
            fail();
        }
        assert_true(is_zeroed(&s));
    }
    /* a name twice; not a list */
    snprintf(y, sizeof(y),
             "%s  triggers:\n    - {name: a, redis: {address: \"h:1\", stream: s}}\n"
             "    - {name: a, redis: {address: \"h:2\", stream: t}}\n",
             head);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), -EINVAL);
    assert_non_null(strstr(d.message, "used twice"));
    assert_string_equal(d.field, "spec.triggers[1]");
    snprintf(y, sizeof(y), "%s  triggers: {name: a}\n", head);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), -EINVAL);
}

/* spec.schedules: defaults, each field, the bounds, and refusals naming
 * the field. */
static void test_schedules_block(void **state)
{
    (void)state;
    static const char head[] = "apiVersion: stoke.dev/v1\nkind: Function\nmetadata: {name: fa}\n"
                               "spec:\n  image: x\n";
    struct stoke_spec s, d2;
    struct stoke_diag d;
    static char y[STOKE_SCHEDULE_MAX_DATA + 4096];
    assert_int_equal(stoke_spec_parse(head, strlen(head), "a.yaml", &s, &d), 0);
    assert_int_equal(s.n_schedules, 0);
    assert_null(s.schedules);
    stoke_spec_done(&s);
    snprintf(y, sizeof(y),
             "%s  schedules:\n"
             "    - name: nightly\n"
             "      schedule: \"0 3 * * *\"\n"
             "    - name: b-2\n"
             "      schedule: \"@hourly\"\n"
             "      timeZone: Europe/Berlin\n"
             "      data: '{\"k\": 1}'\n"
             "      contentType: text/plain\n"
             "      path: /tick?x=1\n"
             "      concurrencyPolicy: Replace\n"
             "      startingDeadlineSeconds: 600\n"
             "      suspend: true\n",
             head);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), 0);
    assert_int_equal(s.n_schedules, 2);
    const struct stoke_schedule *sc = &s.schedules[0];
    assert_string_equal(sc->name, "nightly");
    assert_string_equal(sc->schedule, "0 3 * * *");
    assert_null(sc->time_zone);
    assert_null(sc->data);
    assert_string_equal(sc->content_type, "application/json");
    assert_string_equal(sc->path, "/");
    assert_int_equal(sc->policy, STOKE_POLICY_ALLOW);
    assert_int_equal(sc->starting_deadline_s, 0);
    assert_false(sc->suspend);
    sc = &s.schedules[1];
    assert_string_equal(sc->name, "b-2");
    assert_string_equal(sc->schedule, "@hourly");
    assert_string_equal(sc->time_zone, "Europe/Berlin");
    assert_string_equal(sc->data, "{\"k\": 1}");
    assert_string_equal(sc->content_type, "text/plain");
    assert_string_equal(sc->path, "/tick?x=1");
    assert_int_equal(sc->policy, STOKE_POLICY_REPLACE);
    assert_int_equal(sc->starting_deadline_s, 600);
    assert_true(sc->suspend);
    /* a deep copy, equal and not shared */
    assert_int_equal(stoke_spec_dup(&s, &d2), 0);
    assert_int_equal(d2.n_schedules, 2);
    assert_ptr_not_equal(d2.schedules[1].data, s.schedules[1].data);
    assert_true(stoke_schedule_equal(&d2.schedules[1], &s.schedules[1]));
    assert_false(stoke_schedule_equal(&d2.schedules[0], &s.schedules[1]));
    d2.schedules[1].suspend = false;
    assert_false(stoke_schedule_equal(&d2.schedules[1], &s.schedules[1]));
    stoke_spec_done(&d2);
    stoke_spec_done(&s);
    assert_true(is_zeroed(&s));
    /* sixteen are allowed, seventeen are not */
    for (int n = STOKE_SPEC_MAX_SCHEDULES; n <= STOKE_SPEC_MAX_SCHEDULES + 1; n++) {
        size_t len = (size_t)snprintf(y, sizeof(y), "%s  schedules:\n", head);
        for (int i = 0; i < n; i++)
            len += (size_t)snprintf(y + len, sizeof(y) - len,
                                    "    - {name: s%d, schedule: \"@daily\"}\n", i);
        memset(&d, 0, sizeof(d));
        int r = stoke_spec_parse(y, len, "a.yaml", &s, &d);
        assert_int_equal(r, n == STOKE_SPEC_MAX_SCHEDULES ? 0 : -EINVAL);
        if (r < 0) {
            assert_non_null(strstr(d.message, "too many entries: 17"));
            assert_string_equal(d.field, "spec.schedules");
        }
        stoke_spec_done(&s);
    }
    /* data: 64 KiB is the most */
    for (size_t n = STOKE_SCHEDULE_MAX_DATA; n <= STOKE_SCHEDULE_MAX_DATA + 1; n++) {
        size_t len = (size_t)snprintf(y, sizeof(y),
                                      "%s  schedules:\n    - name: a\n      schedule: \"@daily\"\n"
                                      "      data: \"",
                                      head);
        memset(y + len, 'x', n);
        len += n;
        len += (size_t)snprintf(y + len, sizeof(y) - len, "\"\n");
        memset(&d, 0, sizeof(d));
        int r = stoke_spec_parse(y, len, "a.yaml", &s, &d);
        assert_int_equal(r, n == STOKE_SCHEDULE_MAX_DATA ? 0 : -EINVAL);
        if (r == 0)
            assert_int_equal(strlen(s.schedules[0].data), n);
        else
            assert_string_equal(d.field, "spec.schedules[0].data");
        stoke_spec_done(&s);
    }
    static const struct {
        const char *item, *field, *message;
    } bad[] = {
        {"{schedule: \"@daily\"}", "spec.schedules[0].name", "missing required"},
        {"{name: a}", "spec.schedules[0].schedule", "missing required field \"schedule\""},
        {"{name: A, schedule: \"@daily\"}", "spec.schedules[0].name", "invalid name"},
        {"{name: a, schedule: \"* * * *\"}", "spec.schedules[0].schedule", ""},
        {"{name: a, schedule: \"61 * * * *\"}", "spec.schedules[0].schedule", ""},
        {"{name: a, schedule: \"0 0 30 2 *\"}", "spec.schedules[0].schedule", ""},
        {"{name: a, schedule: \"@sometimes\"}", "spec.schedules[0].schedule", "unknown macro"},
        {"{name: a, schedule: \"\"}", "spec.schedules[0].schedule", "1 to 255"},
        {"{name: a, schedule: 5}", "spec.schedules[0].schedule", ""},
        {"{name: a, schedule: \"@daily\", timeZone: Mars/Olympus}", "spec.schedules[0].timeZone",
         "unknown"},
        {"{name: a, schedule: \"@daily\", timeZone: \"../etc\"}", "spec.schedules[0].timeZone",
         "not an IANA"},
        {"{name: a, schedule: \"@daily\", concurrencyPolicy: forbid}",
         "spec.schedules[0].concurrencyPolicy", "must be Allow, Forbid or Replace"},
        {"{name: a, schedule: \"@daily\", startingDeadlineSeconds: 0}",
         "spec.schedules[0].startingDeadlineSeconds", "between 1 and 31622400"},
        {"{name: a, schedule: \"@daily\", startingDeadlineSeconds: 31622401}",
         "spec.schedules[0].startingDeadlineSeconds", "between 1 and 31622400"},
        {"{name: a, schedule: \"@daily\", suspend: yes}", "spec.schedules[0].suspend",
         "true or false"},
        {"{name: a, schedule: \"@daily\", path: x}", "spec.schedules[0].path",
         "must start with '/'"},
        {"{name: a, schedule: \"@daily\", contentType: \"text/plain; a=b\"}",
         "spec.schedules[0].contentType", "printable"},
        {"{name: a, schedule: \"@daily\", data: {a: 1}}", "spec.schedules[0].data", "a string"},
        {"{name: a, schedule: \"@daily\", every: 1m}", "spec.schedules[0].every", "unknown field"},
        {"x", "spec.schedules[0]", "mapping"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(y, sizeof(y), "%s  schedules:\n    - %s\n", head, bad[i].item);
        memset(&d, 0, sizeof(d));
        int r = stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d);
        if (r != -EINVAL || strcmp(d.field, bad[i].field) != 0 ||
            !strstr(d.message, bad[i].message)) {
            print_error("schedule case %zu: %d %s: %s\n", i, r, d.field, d.message);
            fail();
        }
        assert_true(is_zeroed(&s));
    }
    /* the second item's field is named with its index */
    snprintf(y, sizeof(y),
             "%s  schedules:\n    - {name: a, schedule: \"@daily\"}\n"
             "    - {name: b, schedule: \"@daily\", timeZone: Nowhere/Atall}\n",
             head);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), -EINVAL);
    assert_string_equal(d.field, "spec.schedules[1].timeZone");
    /* a name twice */
    snprintf(y, sizeof(y),
             "%s  schedules:\n    - {name: a, schedule: \"@daily\"}\n"
             "    - {name: a, schedule: \"@hourly\"}\n",
             head);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "a.yaml", &s, &d), -EINVAL);
    assert_non_null(strstr(d.message, "used twice"));
    assert_string_equal(d.field, "spec.schedules[1]");
}

static void test_trigger_address(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int r;
        const char *host;
        int port;
        const char *unix_path;
    } cases[] = {
        {"127.0.0.1:6379", 0, "127.0.0.1", 6379, NULL},
        {"redis.default.svc:1", 0, "redis.default.svc", 1, NULL},
        {"[::1]:65535", 0, "::1", 65535, NULL},
        {"unix:/run/redis.sock", 0, "", 0, "/run/redis.sock"},
        {"h:65536", -EINVAL, "", 0, NULL},
        {"h:0", -EINVAL, "", 0, NULL},
        {"h:01", -EINVAL, "", 0, NULL},
        {"h:", -EINVAL, "", 0, NULL},
        {":1", -EINVAL, "", 0, NULL},
        {"h", -EINVAL, "", 0, NULL},
        {"::1:80", -EINVAL, "", 0, NULL},
        {"[::1:80", -EINVAL, "", 0, NULL},
        {"[]:80", -EINVAL, "", 0, NULL},
        {"h/x:80", -EINVAL, "", 0, NULL},
        {"h:8a", -EINVAL, "", 0, NULL},
        {"", -EINVAL, "", 0, NULL},
        {"unix:", -EINVAL, "", 0, NULL},
        {"h:99999999999999999999999", -EINVAL, "", 0, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char host[256];
        int port = -1;
        const char *up = "x";
        int r = stoke_trigger_address(cases[i].in, host, sizeof(host), &port, &up);
        if (r != cases[i].r) {
            print_error("address \"%s\": %d\n", cases[i].in, r);
            fail();
        }
        if (r == 0) {
            assert_string_equal(host, cases[i].host);
            assert_int_equal(port, cases[i].port);
            if (cases[i].unix_path)
                assert_string_equal(up, cases[i].unix_path);
            else
                assert_null(up);
        }
    }
    char small[4];
    int port;
    const char *up;
    assert_int_equal(stoke_trigger_address("abcd:1", small, sizeof(small), &port, &up), -EINVAL);
}

/* --- invalid specs ---------------------------------------------------------- */

struct bad_case {
    const char *what;
    const char *yaml;
    size_t len; /* 0: strlen(yaml) */
    int err;
    unsigned line;
    unsigned column;
    const char *field;
    const char *message; /* a substring of the diag's message */
};

#define BAD(w, y, l, c, f, m)                                                                      \
    {                                                                                              \
        (w), (y), 0, -EINVAL, (l), (c), (f), (m)                                                   \
    }

static const struct bad_case bad_cases[] = {
    /* unknown fields: the key's position */
    BAD("unknown root field",
        "apiVersion: stoke/v1\nkind: Function\nstatus: {}\nmetadata:\n  name: a\nspec:\n  image: "
        "x\n",
        3, 1, "status", "unknown field \"status\""),
    BAD("unknown spec field", BASE "  imagePullPolicy: Always\n", 7, 3, "spec.imagePullPolicy",
        "unknown field"),
    BAD("unknown field, other case", BASE "  scale:\n    Min: 1\n", 8, 5, "spec.scale.Min",
        "did you mean \"min\"?"),
    BAD("unknown scale field", BASE "  scale:\n    window: 60s\n    stable: 1\n", 9, 5,
        "spec.scale.stable", "unknown field \"stable\""),
    BAD("unknown metadata field", HEAD "  name: a\n  namespace: default\n" SPEC, 5, 3,
        "metadata.namespace", "unknown field"),
    /* apiVersion and kind */
    BAD("apiVersion", "apiVersion: stoke/v2\nkind: Function\n", 1, 13, "apiVersion",
        "must be \"stoke.dev/v1\" or \"stoke/v1\" (found \"stoke/v2\")"),
    BAD("apiVersion of another group", "apiVersion: stoke.io/v1\nkind: Function\n", 1, 13,
        "apiVersion", "must be \"stoke.dev/v1\" or \"stoke/v1\""),
    BAD("apiVersion as a number", "apiVersion: 1\n", 1, 13, "apiVersion",
        "must be \"stoke.dev/v1\" or \"stoke/v1\""),
    BAD("kind", "apiVersion: stoke/v1\nkind: Service\n", 2, 7, "kind", "must be \"Function\""),
    BAD("kind as a mapping", "apiVersion: stoke/v1\nkind: {a: b}\n", 2, 7, "kind",
        "expected a string, found a mapping"),
    /* missing required fields: the parent mapping's position */
    BAD("missing apiVersion", "kind: Function\nmetadata:\n  name: a\nspec:\n  image: x\n", 1, 1,
        "apiVersion", "missing required field"),
    BAD("missing metadata", "apiVersion: stoke/v1\nkind: Function\nspec:\n  image: x\n", 1, 1,
        "metadata", "missing required field \"metadata\""),
    BAD("missing name", HEAD "  labels: {app: x}\n" SPEC, 4, 3, "metadata.name",
        "missing required field \"name\""),
    BAD("missing image", HEAD "  name: a\nspec:\n  port: 8080\n", 6, 3, "spec.image",
        "missing required field \"image\""),
    BAD("empty spec", HEAD "  name: a\nspec: {}\n", 5, 7, "spec.image", "missing required field"),
    /* names */
    BAD("name with capitals", HEAD "  name: Hello\n" SPEC, 4, 9, "metadata.name", "invalid name"),
    BAD("name ending in -", HEAD "  name: hello-\n" SPEC, 4, 9, "metadata.name", "invalid name"),
    BAD("name starting with a digit", HEAD "  name: 1hello\n" SPEC, 4, 9, "metadata.name",
        "invalid name"),
    BAD("name of 64 characters",
        HEAD "  name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n" SPEC, 4,
        9, "metadata.name", "1 to 63"),
    BAD("empty name", HEAD "  name: \"\"\n" SPEC, 4, 9, "metadata.name", "invalid name"),
    BAD("name with _", HEAD "  name: hello_world\n" SPEC, 4, 9, "metadata.name", "invalid name"),
    BAD("null name", HEAD "  name:\n" SPEC, 4, 8, "metadata.name", "found nothing (null)"),
    BAD("name as a sequence", HEAD "  name: [a]\n" SPEC, 4, 9, "metadata.name",
        "expected a string, found a sequence"),
    /* wrong types */
    BAD("mapping for an integer", BASE "  port: {a: 1}\n", 7, 9, "spec.port",
        "expected an integer, found a mapping"),
    BAD("sequence for an integer", BASE "  port: [1]\n", 7, 9, "spec.port",
        "expected an integer, found a sequence"),
    BAD("sequence for a mapping", BASE "  scale: [1, 2]\n", 7, 10, "spec.scale",
        "expected a mapping, found a sequence"),
    BAD("scalar for a mapping", BASE "  resources: big\n", 7, 14, "spec.resources",
        "expected a mapping, found a scalar"),
    BAD("metadata as a scalar", "apiVersion: stoke/v1\nkind: Function\nmetadata: hello\n", 3, 11,
        "metadata", "expected a mapping"),
    BAD("double-quoted integer", BASE "  port: \"8080\"\n", 7, 9, "spec.port",
        "expected an integer, found the string \"8080\""),
    BAD("single-quoted integer", BASE "  port: '8080'\n", 7, 9, "spec.port", "expected an integer"),
    BAD("!!str integer", BASE "  port: !!str 8080\n", 7, 9, "spec.port", "expected an integer"),
    BAD("null integer", BASE "  port:\n", 7, 8, "spec.port", "expected an integer, found nothing"),
    /* integers */
    BAD("float", BASE "  scale:\n    max: 1.5\n", 8, 10, "spec.scale.max",
        "expected a decimal integer, found \"1.5\""),
    BAD("hex", BASE "  port: 0x10\n", 7, 9, "spec.port", "expected a decimal integer"),
    BAD("octal-looking", BASE "  port: 010\n", 7, 9, "spec.port", "leading zeros"),
    BAD("underscores", BASE "  queue: {max: 1_000}\n", 7, 16, "spec.queue.max",
        "expected a decimal integer"),
    BAD("plus sign", BASE "  port: +80\n", 7, 9, "spec.port", "expected a decimal integer"),
    BAD("negative", BASE "  scale:\n    min: -1\n", 8, 10, "spec.scale.min",
        "must not be negative"),
    BAD("overflow", BASE "  port: 99999999999999999999999\n", 7, 9, "spec.port",
        "must be between 1 and 65535"),
    BAD("port 0", BASE "  port: 0\n", 7, 9, "spec.port", "must be between 1 and 65535"),
    BAD("port 65536", BASE "  port: 65536\n", 7, 9, "spec.port", "must be between 1 and 65535"),
    BAD("uint32 overflow", BASE "  scale: {target: 4294967296}\n", 7, 19, "spec.scale.target",
        "must be between 1 and 1000000"),
    /* scale */
    BAD("min over max", BASE "  scale:\n    min: 5\n    max: 3\n", 8, 10, "spec.scale.min",
        "min (5) must not be greater than max (3)"),
    BAD("initial over max", BASE "  scale: {max: 2, initial: 3}\n", 7, 28, "spec.scale.initial",
        "initial (3) must not be greater than max (2)"),
    BAD("too many replicas", BASE "  scale: {max: 10001}\n", 7, 16, "spec.scale.max",
        "must be between 0 and 10000"),
    BAD("utilization 0", BASE "  scale: {utilization: 0}\n", 7, 24, "spec.scale.utilization",
        "must be between 1 and 100"),
    BAD("utilization 101", BASE "  scale: {utilization: 101}\n", 7, 24, "spec.scale.utilization",
        "must be between 1 and 100"),
    BAD("panic threshold 100", BASE "  scale: {panicThresholdPercent: 100}\n", 7, 34,
        "spec.scale.panicThresholdPercent", "must be between 110 and 1000"),
    BAD("panic window 0", BASE "  scale: {panicWindowPercent: 0}\n", 7, 31,
        "spec.scale.panicWindowPercent", "must be between 1 and 100"),
    BAD("target 0", BASE "  scale: {target: 0}\n", 7, 19, "spec.scale.target",
        "must be between 1 and 1000000"),
    BAD("idle", BASE "  scale: {idle: sleep}\n", 7, 17, "spec.scale.idle",
        "must be pause, stop or remove (found \"sleep\")"),
    BAD("stopAfter over a day", BASE "  scale: {stopAfter: 25h}\n", 7, 22, "spec.scale.stopAfter",
        "must be between 0s and 24h"),
    BAD("removeAfter negative", BASE "  scale: {removeAfter: -1s}\n", 7, 24,
        "spec.scale.removeAfter", "must not be negative"),
    BAD("removeAfter without unit", BASE "  scale: {removeAfter: 30}\n", 7, 24,
        "spec.scale.removeAfter", "invalid duration"),
    BAD("precreated over 100", BASE "  scale: {precreated: 101}\n", 7, 23, "spec.scale.precreated",
        "must be between 0 and 100"),
    BAD("precreated a string", BASE "  scale: {precreated: \"1\"}\n", 7, 23,
        "spec.scale.precreated", "expected an integer"),
    BAD("network none", BASE "  network: none\n", 7, 12, "spec.network",
        "must be bridge or host (found \"none\")"),
    BAD("network capitalised", BASE "  network: Host\n", 7, 12, "spec.network",
        "must be bridge or host"),
    BAD("network map", BASE "  network: {mode: host}\n", 7, 12, "spec.network",
        "expected a string"),
    BAD("readOnlyRootFilesystem yes", BASE "  readOnlyRootFilesystem: yes\n", 7, 27,
        "spec.readOnlyRootFilesystem", "expected true or false, found \"yes\""),
    BAD("readOnlyRootFilesystem quoted", BASE "  readOnlyRootFilesystem: \"true\"\n", 7, 27,
        "spec.readOnlyRootFilesystem", "expected true or false"),
    BAD("readOnlyRootFilesystem 1", BASE "  readOnlyRootFilesystem: 1\n", 7, 27,
        "spec.readOnlyRootFilesystem", "expected true or false"),
    BAD("readOnlyRootFilesystem null", BASE "  readOnlyRootFilesystem:\n", 7, 26,
        "spec.readOnlyRootFilesystem", "expected true or false, found nothing"),
    BAD("readOnlyRootFilesystem map", BASE "  readOnlyRootFilesystem: {a: b}\n", 7, 27,
        "spec.readOnlyRootFilesystem", "expected true or false, found a mapping"),
    /* durations */
    BAD("window too short", BASE "  scale: {window: 5s}\n", 7, 19, "spec.scale.window",
        "must be between 6s and 1h"),
    BAD("window too long", BASE "  scale: {window: 61m}\n", 7, 19, "spec.scale.window",
        "must be between 6s and 1h"),
    BAD("duration without unit", BASE "  scale: {window: 10}\n", 7, 19, "spec.scale.window",
        "invalid duration \"10\""),
    BAD("duration with a bad unit", BASE "  scale: {window: 5x}\n", 7, 19, "spec.scale.window",
        "invalid duration \"5x\""),
    BAD("negative duration", BASE "  scale: {window: -1s}\n", 7, 19, "spec.scale.window",
        "must not be negative"),
    BAD("empty duration", BASE "  scale: {window: \"\"}\n", 7, 19, "spec.scale.window",
        "invalid duration \"\""),
    BAD("duration overflow", BASE "  timeout: 99999999999999999999h\n", 7, 12, "spec.timeout",
        "must be between 1ms and 1h"),
    BAD("timeout 0", BASE "  timeout: 0s\n", 7, 12, "spec.timeout", "must be between 1ms and 1h"),
    BAD("scale-down delay over 1h", BASE "  scale: {scaleDownDelay: 2h}\n", 7, 27,
        "spec.scale.scaleDownDelay", "must be between 0s and 1h"),
    BAD("probe period 0", BASE "  readiness: {period: 0ms}\n", 7, 23, "spec.readiness.period",
        "must be between 1ms and 1h"),
    BAD("duration as a mapping", BASE "  queue: {timeout: {s: 1}}\n", 7, 20, "spec.queue.timeout",
        "expected a duration, found a mapping"),
    /* quantities */
    BAD("memory unit", BASE "  resources: {memory: 12Zi}\n", 7, 23, "spec.resources.memory",
        "invalid memory quantity \"12Zi\""),
    BAD("memory text", BASE "  resources: {memory: abc}\n", 7, 23, "spec.resources.memory",
        "invalid memory quantity"),
    BAD("negative memory", BASE "  resources: {memory: -1Mi}\n", 7, 23, "spec.resources.memory",
        "must not be negative"),
    BAD("memory under 6Mi", BASE "  resources: {memory: 4Mi}\n", 7, 23, "spec.resources.memory",
        "must be at least 6Mi"),
    BAD("fractional bytes", BASE "  resources: {memory: 1.5}\n", 7, 23, "spec.resources.memory",
        "invalid memory quantity"),
    BAD("memory overflow", BASE "  resources: {memory: 99999999999Ti}\n", 7, 23,
        "spec.resources.memory", "too large"),
    BAD("cpu 0", BASE "  resources: {cpu: 0}\n", 7, 20, "spec.resources.cpu",
        "must be between 1m and 1000 cores"),
    BAD("cpu too fine", BASE "  resources: {cpu: 0.0001}\n", 7, 20, "spec.resources.cpu",
        "invalid CPU quantity"),
    BAD("negative cpu", BASE "  resources: {cpu: -1}\n", 7, 20, "spec.resources.cpu",
        "must not be negative"),
    BAD("too many cores", BASE "  resources: {cpu: 1001}\n", 7, 20, "spec.resources.cpu",
        "must be between 1m and 1000 cores"),
    BAD("pids 0", BASE "  resources: {pids: 0}\n", 7, 21, "spec.resources.pids",
        "must be between 1 and 4194304"),
    /* strings */
    BAD("relative probe path", BASE "  readiness: {path: health}\n", 7, 21, "spec.readiness.path",
        "must start with '/'"),
    BAD("probe path with a space", BASE "  readiness: {path: \"/a b\"}\n", 7, 21,
        "spec.readiness.path", "invalid path"),
    BAD("probe path with CRLF", BASE "  readiness: {path: \"/a\\r\\nX: y\"}\n", 7, 21,
        "spec.readiness.path", "invalid path \"/a\\r\\nX: y\""),
    BAD("control characters in a key", BASE "  \"a\\tb\\u00e9\": 1\n", 7, 3, "spec.a\\tb\xc3\xa9",
        "unknown field \"a\\tb\xc3\xa9\""),
    BAD("empty image", HEAD "  name: a\nspec:\n  image: \"\"\n", 6, 10, "spec.image",
        "must not be empty"),
    BAD("null image", HEAD "  name: a\nspec:\n  image:\n", 6, 9, "spec.image",
        "expected a string, found nothing (null)"),
    BAD("image with a space", HEAD "  name: a\nspec:\n  image: \"a b\"\n", 6, 10, "spec.image",
        "invalid image reference"),
    /* env */
    BAD("env PORT", BASE "  env:\n    PORT: \"9\"\n", 8, 5, "spec.env.PORT",
        "PORT is set by stoke"),
    BAD("env name with a digit first", BASE "  env:\n    1A: x\n", 8, 5, "spec.env.1A",
        "invalid environment variable name"),
    BAD("env name with -", BASE "  env: {A-B: x}\n", 7, 9, "spec.env.A-B",
        "invalid environment variable name"),
    BAD("env value mapping", BASE "  env:\n    A: {b: c}\n", 8, 8, "spec.env.A",
        "expected a scalar value, found a mapping"),
    BAD("env as a sequence", BASE "  env:\n    - A=b\n", 8, 5, "spec.env",
        "expected a mapping, found a sequence"),
    /* metadata maps */
    BAD("label value mapping", HEAD "  name: a\n  labels:\n    a: {b: c}\n" SPEC, 6, 8,
        "metadata.labels.a", "expected a string, found a mapping"),
    BAD("annotations as a sequence", HEAD "  name: a\n  annotations: [a]\n" SPEC, 5, 16,
        "metadata.annotations", "expected a mapping, found a sequence"),
    /* duplicate keys, at every level: the second key's position */
    BAD("duplicate root key", "apiVersion: stoke/v1\nkind: Function\nkind: Function\n", 3, 1,
        "kind", "duplicate key \"kind\" (first at line 2, column 1)"),
    BAD("duplicate spec key", BASE "  image: again\n", 7, 3, "spec.image",
        "duplicate key \"image\" (first at line 6, column 3)"),
    BAD("duplicate scale key", BASE "  scale:\n    min: 1\n    max: 2\n    min: 1\n", 10, 5,
        "spec.scale.min", "duplicate key \"min\" (first at line 8, column 5)"),
    BAD("duplicate env name", BASE "  env: {A: 1, B: 2, A: 3}\n", 7, 21, "spec.env.A",
        "duplicate key \"A\""),
    BAD("duplicate, quoted and plain", BASE "  env: {A: 1, \"A\": 2}\n", 7, 15, "spec.env.A",
        "duplicate key"),
    BAD("duplicate label", HEAD "  name: a\n  labels:\n    a: x\n    a: y\n" SPEC, 7, 5,
        "metadata.labels.a", "duplicate key"),
    /* the document */
    BAD("root a sequence", "- a\n- b\n", 1, 1, "", "must be a mapping, not a sequence"),
    BAD("root a scalar", "hello\n", 1, 1, "", "must be a mapping, not a scalar"),
    BAD("empty file", "", 1, 1, "", "the file is empty"),
    BAD("only comments", "# nothing\n\n# here\n", 1, 1, "", "the file is empty"),
    BAD("empty document", "---\n", 2, 1, "", "the document is empty"),
    BAD("second document", BASE "---\napiVersion: stoke/v1\n", 7, 1, "", "a second YAML document"),
    BAD("second document after end marker", BASE "...\n---\n", 8, 1, "", "a second YAML document"),
    /* encoding */
    BAD("Latin-1 byte", HEAD "  name: caf\xe9\n" SPEC, 4, 12, "",
        "not valid UTF-8: invalid trailing UTF-8 octet (byte 0x0A)"),
    BAD("invalid lead byte", BASE "  env: {A: \"x\xffy\"}\n", 7, 14, "",
        "not valid UTF-8: invalid leading UTF-8 octet (byte 0xFF)"),
    BAD("after a multi-byte character", BASE "  env: {A: \"\xc3\xa9\xc3\xa9\xff\"}\n", 7, 15, "",
        "invalid leading UTF-8 octet"),
    {"UTF-16",
     "\xff\xfe"
     "a\0:\0",
     6, -EINVAL, 1, 1, "", "not valid UTF-8"},
    BAD("CR and CRLF line ends", "a: 1\rb: 2\r\nc: \xff\n", 3, 4, "", "not valid UTF-8"),
    BAD("NEL line end",
        "# c\xc2\x85"
        "a: \xff\n",
        2, 4, "", "not valid UTF-8"),
    BAD("LS line end",
        "# c\xe2\x80\xa8"
        "a: \xff\n",
        2, 4, "", "not valid UTF-8"),
    BAD("control character", BASE "  port: 80\x01\n", 7, 11, "",
        "not valid YAML text: control characters are not allowed (byte 0x01)"),
    BAD("escaped NUL", BASE "  env: {A: \"a\\0b\"}\n", 7, 12, "spec.env.A", "NUL characters"),
    /* aliases and tags */
    BAD("alias", HEAD "  name: &n hello\n  labels: {a: *n}\n" SPEC, 5, 15, "metadata.labels.a",
        "aliases are not allowed"),
    BAD("merge key", BASE "  scale: &s {min: 1}\n  queue:\n    <<: *s\n", 9, 9, "spec.queue.<<",
        "aliases are not allowed"),
    BAD("!!float", BASE "  port: !!float 8080\n", 7, 9, "spec.port",
        "tag \"!!float\" is not allowed"),
    BAD("custom tag", BASE "  port: !custom 8080\n", 7, 9, "spec.port",
        "tag \"!custom\" is not allowed"),
    BAD("!!seq on a mapping", BASE "  scale: !!seq {min: 1}\n", 7, 10, "spec.scale",
        "tag \"!!seq\" is not allowed"),
    BAD("!!seq on a sequence", BASE "  scale: !!seq [1]\n", 7, 10, "spec.scale",
        "expected a mapping, found a sequence"),
    BAD("!!binary", BASE "  env: {A: !!binary aGVsbG8=}\n", 7, 12, "spec.env.A",
        "tag \"!!binary\" is not allowed"),
    /* syntax */
    BAD("unclosed flow mapping", BASE "  scale: {min: 1\n", 8, 1, "",
        "YAML syntax error: did not find expected ',' or '}'"),
    BAD("bad indentation", BASE "   port: 80\n", 7, 8, "",
        "YAML syntax error: mapping values are not allowed"),
    BAD("tab indentation", BASE "\tport: 80\n", 7, 1, "", "YAML syntax error"),
    BAD("sequence as a key", BASE "  ? [a]\n  : b\n", 7, 5, "spec",
        "mapping keys must be strings, not sequences"),
    BAD("nesting in a flow value", BASE "  env: {A: [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}\n", 7, 25,
        "spec.env.A[0][0][0][0][0][0][0][0][0][0][0][0][0]", "nested deeper than 16 levels"),
};

static void check_bad(const struct bad_case *bc, const char *file)
{
    struct stoke_spec s;
    struct stoke_diag d;
    size_t len = bc->len ? bc->len : strlen(bc->yaml);
    int r;

    memset(&s, 0xa5, sizeof(s)); /* must come back zeroed */
    memset(&d, 0xa5, sizeof(d));
    r = stoke_spec_parse(bc->yaml, len, file, &s, &d);
    if (r != bc->err || d.line != bc->line || d.column != bc->column ||
        strcmp(d.field, bc->field) != 0 || !strstr(d.message, bc->message) ||
        strcmp(d.file, file) != 0 || !is_zeroed(&s)) {
        print_error("invalid case \"%s\":\n  got  %d %s:%u:%u field \"%s\" \"%s\"%s\n"
                    "  want %d %s:%u:%u field \"%s\" \"...%s...\"\n",
                    bc->what, r, d.file, d.line, d.column, d.field, d.message,
                    is_zeroed(&s) ? "" : " (spec not zeroed)", bc->err, file, bc->line, bc->column,
                    bc->field, bc->message);
        fail();
    }
    /* And with no diag wanted. */
    r = stoke_spec_parse(bc->yaml, len, file, &s, NULL);
    assert_int_equal(r, bc->err);
    assert_true(is_zeroed(&s));
}

static void test_invalid(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++)
        check_bad(&bad_cases[i], "bad.yaml");
}

/* YAML text of a spec whose `env` holds `n` variables. Owned, free(). */
static char *spec_with_env(size_t n)
{
    size_t cap = 256 + n * 32, len;
    char *buf = malloc(cap);
    assert_non_null(buf);
    len = (size_t)snprintf(buf, cap, "%s  env:\n", BASE);
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(buf + len, cap - len, "    V%zu: x\n", i);
        assert_true(w > 0 && (size_t)w < cap - len);
        len += (size_t)w;
    }
    return buf;
}

static void test_env_limit(void **state)
{
    struct stoke_spec s;
    struct stoke_diag d;
    char *y = spec_with_env(STOKE_SPEC_MAX_ENV);
    (void)state;

    assert_int_equal(stoke_spec_parse(y, strlen(y), "env.yaml", &s, &d), 0);
    assert_int_equal(s.env_len, STOKE_SPEC_MAX_ENV);
    assert_string_equal(s.env[STOKE_SPEC_MAX_ENV - 1].name, "V255");
    stoke_spec_done(&s);
    free(y);

    y = spec_with_env(STOKE_SPEC_MAX_ENV + 1);
    assert_int_equal(stoke_spec_parse(y, strlen(y), "env.yaml", &s, &d), -EINVAL);
    assert_true(is_zeroed(&s));
    /* The first variable past the limit: line 8 holds V0. */
    assert_int_equal(d.line, 8 + STOKE_SPEC_MAX_ENV);
    assert_int_equal(d.column, 5);
    assert_string_equal(d.field, "spec.env.V256");
    assert_non_null(strstr(d.message, "too many environment variables"));
    free(y);
}

static void test_deep_nesting(void **state)
{
    static const char opens[] = {'[', '{'};
    (void)state;

    for (size_t k = 0; k < sizeof(opens); k++) {
        size_t n = 10000;
        char *y = malloc(n);
        struct stoke_spec s;
        struct stoke_diag d;
        assert_non_null(y);
        memset(y, opens[k], n);
        assert_int_equal(stoke_spec_parse(y, n, "deep.yaml", &s, &d), -EINVAL);
        assert_true(is_zeroed(&s));
        assert_int_equal(d.line, 1);
        if (opens[k] == '[') {
            /* Sixteen levels are allowed; the seventeenth is refused. */
            assert_int_equal(d.column, STOKE_SPEC_MAX_DEPTH + 1);
            assert_string_equal(d.field, "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]");
            assert_non_null(strstr(d.message, "nested deeper than 16 levels"));
        } else {
            /* `{{` makes a mapping a key: refused as soon as it is seen. */
            assert_int_equal(d.column, 2);
            assert_non_null(strstr(d.message, "mapping keys must be strings"));
        }
        free(y);
    }
}

static void test_too_many_nodes(void **state)
{
    size_t items = STOKE_SPEC_MAX_NODES + 100, len = 0;
    char *y = malloc(items * 2 + 2);
    struct stoke_spec s;
    struct stoke_diag d;
    (void)state;

    assert_non_null(y);
    y[len++] = '[';
    for (size_t i = 0; i < items; i++) {
        y[len++] = '1';
        y[len++] = ',';
    }
    y[len - 1] = ']';
    assert_int_equal(stoke_spec_parse(y, len, "wide.yaml", &s, &d), -EINVAL);
    assert_true(is_zeroed(&s));
    /* Node 0 is the sequence; item k (from 1) is node k, at column 2k. */
    assert_int_equal(d.line, 1);
    assert_int_equal(d.column, 2 * STOKE_SPEC_MAX_NODES);
    assert_non_null(strstr(d.message, "too many YAML nodes"));
    free(y);
}

static void test_many_keys_duplicate(void **state)
{
    /* Thousands of distinct keys, then one repeated: found, and fast. */
    size_t n = 5000, cap = n * 24 + 512, len;
    char *y = malloc(cap);
    struct stoke_spec s;
    struct stoke_diag d;
    (void)state;

    assert_non_null(y);
    len = (size_t)snprintf(y, cap, HEAD "  name: a\n  labels:\n");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(y + len, cap - len, "    k%zu: v\n", i);
    len += (size_t)snprintf(y + len, cap - len, "    k17: again\n" SPEC);
    assert_true(len < cap);
    assert_int_equal(stoke_spec_parse(y, len, "labels.yaml", &s, &d), -EINVAL);
    assert_int_equal(d.line, 6 + n);
    assert_int_equal(d.column, 5);
    assert_string_equal(d.field, "metadata.labels.k17");
    assert_non_null(strstr(d.message, "first at line 23, column 5"));
    free(y);
}

static void test_too_big(void **state)
{
    size_t n = 10 * 1024 * 1024;
    char *y = malloc(n);
    struct stoke_spec s;
    struct stoke_diag d;
    (void)state;

    assert_non_null(y);
    memset(y, '#', n);
    assert_int_equal(stoke_spec_parse(y, n, "big.yaml", &s, &d), -EFBIG);
    assert_true(is_zeroed(&s));
    assert_int_equal(d.line, 0);
    assert_string_equal(d.file, "big.yaml");
    assert_non_null(strstr(d.message, "larger than"));
    free(y);
}

static void test_null_buffer(void **state)
{
    struct stoke_spec s;
    struct stoke_diag d;
    (void)state;

    assert_int_equal(stoke_spec_parse(NULL, 0, NULL, &s, &d), -EINVAL);
    assert_true(is_zeroed(&s));
    assert_string_equal(d.file, "");
    assert_non_null(strstr(d.message, "empty"));
}

static void test_truncations(void **state)
{
    /* Every prefix of a full spec: accepted, or refused with a position. */
    const char *full = good_cases[1].yaml;
    size_t n = strlen(full), accepted = 0;
    (void)state;

    for (size_t len = 0; len <= n; len++) {
        struct stoke_spec s;
        struct stoke_diag d;
        int r = stoke_spec_parse(full, len, "cut.yaml", &s, &d);
        if (r == 0) {
            accepted++;
            stoke_spec_done(&s);
            continue;
        }
        assert_int_equal(r, -EINVAL);
        assert_true(is_zeroed(&s));
        assert_true(d.line >= 1 && d.column >= 1);
        assert_true(d.message[0] != '\0');
    }
    /* Cuts at the end of a line after the image are complete specs. */
    assert_true(accepted > 10);
}

/* --- scalar parsers --------------------------------------------------------- */

struct num_case {
    const char *s;
    int ret;
    uint64_t v;
};

static void check_nums(const char *what, int (*fn)(const char *, uint64_t *),
                       const struct num_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 12345;
        int r = fn(cases[i].s, &v);
        if (r != cases[i].ret || (r == 0 && v != cases[i].v) || (r != 0 && v != 12345)) {
            print_error("%s(\"%s\"): got %d %llu, want %d %llu\n", what,
                        cases[i].s ? cases[i].s : "(null)", r, (unsigned long long)v, cases[i].ret,
                        (unsigned long long)cases[i].v);
            fail();
        }
    }
}

static void test_parse_duration(void **state)
{
    static const struct num_case cases[] = {
        {"250ms", 0, 250},
        {"60s", 0, 60000},
        {"1m30s", 0, 90000},
        {"2h", 0, 7200000},
        {"0s", 0, 0},
        {"0ms", 0, 0},
        {"1h1m1s1ms", 0, 3661001},
        {"30s1m", 0, 90000},
        {"18446744073709551615ms", 0, UINT64_MAX},
        {"18446744073709552s", -EINVAL, 0},
        {"99999999999999999999ms", -EINVAL, 0},
        {"5124095576030432h", -EINVAL, 0},
        {"10", -EINVAL, 0},
        {"5x", -EINVAL, 0},
        {"-1s", -EINVAL, 0},
        {"+1s", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"s", -EINVAL, 0},
        {"1.5s", -EINVAL, 0},
        {" 1s", -EINVAL, 0},
        {"1s ", -EINVAL, 0},
        {"1S", -EINVAL, 0},
        {"1m1", -EINVAL, 0},
        {"1d", -EINVAL, 0},
        {"1us", -EINVAL, 0},
        {"1mss", -EINVAL, 0},
        {NULL, -EINVAL, 0},
    };
    (void)state;
    check_nums("stoke_parse_duration", stoke_parse_duration, cases,
               sizeof(cases) / sizeof(cases[0]));
}

static void test_parse_memory(void **state)
{
    static const struct num_case cases[] = {
        {"128Mi", 0, 128 * MIB},
        {"1Gi", 0, UINT64_C(1) << 30},
        {"1Ki", 0, 1024},
        {"2Ti", 0, UINT64_C(2) << 40},
        {"500M", 0, 500000000},
        {"1k", 0, 1000},
        {"1K", 0, 1000},
        {"3G", 0, 3000000000},
        {"1T", 0, 1000000000000},
        {"1000000", 0, 1000000},
        {"0", 0, 0},
        {"1.5Gi", 0, 1536 * MIB},
        {"0.5Ki", 0, 512},
        {"0.001Ki", 0, 2}, /* 1.024 bytes, rounded up */
        {"18446744073709551615", 0, UINT64_MAX},
        {"18446744073709551616", -EINVAL, 0},
        {"16777216Ti", -EINVAL, 0},
        {"12Zi", -EINVAL, 0},
        {"1Ei", -EINVAL, 0},
        {"abc", -EINVAL, 0},
        {"-1Mi", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"Mi", -EINVAL, 0},
        {"1.5", -EINVAL, 0},
        {"1.0", -EINVAL, 0},
        {"1.2345Gi", -EINVAL, 0},
        {"1.Gi", -EINVAL, 0},
        {"1 Mi", -EINVAL, 0},
        {"1mi", -EINVAL, 0},
        {"1MiB", -EINVAL, 0},
        {"1e3", -EINVAL, 0},
        {NULL, -EINVAL, 0},
    };
    (void)state;
    check_nums("stoke_parse_memory", stoke_parse_memory, cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_parse_cpu(void **state)
{
    static const struct num_case cases[] = {
        {"500m", 0, 500},
        {"1", 0, 1000},
        {"0.5", 0, 500},
        {"2", 0, 2000},
        {"0.001", 0, 1},
        {"1.25", 0, 1250},
        {"1m", 0, 1},
        {"0", 0, 0},
        {"0.0001", -EINVAL, 0},
        {"abc", -EINVAL, 0},
        {"-1", -EINVAL, 0},
        {"-500m", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"1.", -EINVAL, 0},
        {".5", -EINVAL, 0},
        {"1.5m", -EINVAL, 0},
        {"m", -EINVAL, 0},
        {"1000mm", -EINVAL, 0},
        {"1e3", -EINVAL, 0},
        {"1 ", -EINVAL, 0},
        {"18446744073709551616m", -EINVAL, 0},
        {"18446744073709552", -EINVAL, 0},
        {NULL, -EINVAL, 0},
    };
    (void)state;
    check_nums("stoke_parse_cpu", stoke_parse_cpu, cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_is_valid_name(void **state)
{
    static const char *const good[] = {
        "a",
        "hello",
        "a-b",
        "a1",
        "a--b",
        "x0-9",
        "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabc", /* 63 */
    };
    static const char *const bad[] = {
        "",
        "A",
        "Hello",
        "1a",
        "-a",
        "a-",
        "a_b",
        "a.b",
        "a b",
        "h\xc3\xa9llo",
        "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcd", /* 64 */
    };
    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!stoke_is_valid_name(good[i])) {
            print_error("\"%s\" should be a valid name\n", good[i]);
            fail();
        }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (stoke_is_valid_name(bad[i])) {
            print_error("\"%s\" should not be a valid name\n", bad[i]);
            fail();
        }
    assert_false(stoke_is_valid_name(NULL));
}

/* --- revision --------------------------------------------------------------- */

static void parse_ok(const char *yaml, struct stoke_spec *s)
{
    struct stoke_diag d;
    int r = stoke_spec_parse(yaml, strlen(yaml), "rev.yaml", s, &d);
    if (r != 0) {
        print_error("%u:%u %s: %s\n", d.line, d.column, d.field, d.message);
        fail();
    }
}

static void revision_of(const char *yaml, char out[17])
{
    struct stoke_spec s;
    parse_ok(yaml, &s);
    stoke_spec_revision(&s, out);
    stoke_spec_done(&s);
}

static void test_revision(void **state)
{
    /* Each differs from BASE in one field that shapes a replica. */
    static const char *const different[] = {
        HEAD "  name: hello\nspec:\n  image: stoke-hello:2\n",
        BASE "  port: 8081\n",
        BASE "  env: {A: x}\n",
        BASE "  env: {A: y}\n",
        BASE "  env: {B: x}\n",
        BASE "  env: {A: x, B: y}\n",
        BASE "  env: {B: y, A: x}\n",
        BASE "  env: {A: bc}\n",
        BASE "  env: {Ab: c}\n",
        BASE "  env: {A: '', B: ''}\n",
        BASE "  resources: {memory: 256Mi}\n",
        BASE "  resources: {cpu: 1}\n",
        BASE "  resources: {pids: 100}\n",
        BASE "  readiness: {path: /}\n",
        BASE "  readiness: {path: /x}\n",
        BASE "  readOnlyRootFilesystem: false\n",
        BASE "  network: host\n",
    };
    /* Each differs from BASE only in fields a replica does not see. */
    static const char *const same[] = {
        BASE "  scale: {min: 1, max: 9, target: 5, window: 2m, idle: stop}\n",
        BASE "  timeout: 10s\n  queue: {max: 1, timeout: 1s}\n",
        BASE "  readiness: {period: 1s}\n",
        BASE "  readOnlyRootFilesystem: true\n",
        BASE "  network: bridge\n",
        BASE "  scale: {stopAfter: 1s, removeAfter: 2s, precreated: 3}\n",
        HEAD "  name: other\n  labels: {a: b}\n" SPEC,
        BASE "  port: 8080\n  resources: {memory: 128Mi, cpu: 500m, pids: 256}\n",
    };
    char revs[sizeof(different) / sizeof(different[0]) + 1][17];
    char base[17], again[17];
    size_t n = sizeof(different) / sizeof(different[0]);
    (void)state;

    revision_of(BASE, base);
    assert_int_equal(strlen(base), 16);
    assert_int_equal(strspn(base, "0123456789abcdef"), 16);
    revision_of(BASE, again);
    assert_string_equal(base, again);
    /* Stable across builds and hosts: a changed value would roll out every
     * running function again after an upgrade (as the bridge network did
     * once, on purpose: from ccd3384bc26c8db8, the host network's). */
    assert_string_equal(base, "81fe2e6a1bc41d66");
    /* On the host network, the revision it had before the field existed:
     * those replicas are adopted, bridge ones replace them. */
    revision_of(BASE "  network: host\n", again);
    assert_string_equal(again, "ccd3384bc26c8db8");

    memcpy(revs[n], base, sizeof(base));
    for (size_t i = 0; i < n; i++)
        revision_of(different[i], revs[i]);
    for (size_t i = 0; i <= n; i++)
        for (size_t j = i + 1; j <= n; j++)
            if (strcmp(revs[i], revs[j]) == 0) {
                print_error("same revision %s for cases %zu and %zu\n", revs[i], i, j);
                fail();
            }
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        revision_of(same[i], again);
        assert_string_equal(base, again);
    }
}

static void test_revision_separators(void **state)
{
    /* Built by hand, so the split ("a","bc") / ("ab","c") is exact. */
    struct stoke_env_var e1[] = {{"A", "bc"}}, e2[] = {{"Ab", "c"}};
    struct stoke_spec s;
    char r1[17], r2[17];
    (void)state;

    stoke_spec_defaults(&s);
    s.image = "img";
    s.env = e1;
    s.env_len = 1;
    stoke_spec_revision(&s, r1);
    s.env = e2;
    stoke_spec_revision(&s, r2);
    assert_string_not_equal(r1, r2);

    /* Nor can one field's tail pass for the next field's head. */
    s.image = "a";
    s.env = NULL;
    s.env_len = 0;
    s.readiness.path = "/b";
    stoke_spec_revision(&s, r1);
    s.image = "a/b";
    s.readiness.path = NULL;
    stoke_spec_revision(&s, r2);
    assert_string_not_equal(r1, r2);
}

/* --- dup, done, diag -------------------------------------------------------- */

static void test_dup(void **state)
{
    struct stoke_spec s, d, z, zd;
    char r1[17], r2[17];
    char path[512];
    struct stoke_diag err;
    (void)state;

    snprintf(path, sizeof(path), "%s/specs/valid/full.yaml", STOKE_TEST_DATA);
    assert_int_equal(stoke_spec_load(path, &s, &err), 0);
    assert_int_equal(stoke_spec_dup(&s, &d), 0);
    check_full(&d);
    assert_ptr_not_equal(d.image, s.image);
    assert_ptr_not_equal(d.env, s.env);
    assert_ptr_not_equal(d.env[0].name, s.env[0].name);
    assert_ptr_not_equal(d.readiness.path, s.readiness.path);
    stoke_spec_revision(&s, r1);
    stoke_spec_revision(&d, r2);
    assert_string_equal(r1, r2);
    stoke_spec_done(&s);
    check_full(&d); /* independent of the original */
    stoke_spec_done(&d);

    memset(&z, 0, sizeof(z));
    assert_int_equal(stoke_spec_dup(&z, &zd), 0);
    assert_true(is_zeroed(&zd));
    stoke_spec_done(&zd);
    stoke_spec_done(&zd); /* twice is fine */
    stoke_spec_done(NULL);
}

static void test_diag_format(void **state)
{
    struct stoke_diag d;
    char buf[512], small[8];
    int n;
    (void)state;

    stoke_diag_set(&d, "f.yaml", 3, 7, "spec.port", "must be %s", "small");
    n = stoke_diag_format(&d, buf, sizeof(buf));
    assert_string_equal(buf, "f.yaml:3:7: spec.port: must be small");
    assert_int_equal(n, (int)strlen(buf));

    stoke_diag_set(&d, NULL, 0, 0, "", "too big");
    stoke_diag_format(&d, buf, sizeof(buf));
    assert_string_equal(buf, "<input>: too big");

    stoke_diag_set(&d, "f.yaml", 1, 1, NULL, "the file is empty");
    n = stoke_diag_format(&d, small, sizeof(small));
    assert_string_equal(small, "f.yaml:");
    assert_int_equal(n, (int)strlen("f.yaml:1:1: the file is empty"));
    assert_int_equal(stoke_diag_format(&d, NULL, 0), n);

    /* Long inputs are cut, never overrun. */
    memset(buf, 'x', sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = '\0';
    stoke_diag_set(&d, buf, 1, 2, buf, "%s", buf);
    assert_int_equal(strlen(d.file), sizeof(d.file) - 1);
    assert_int_equal(strlen(d.field), sizeof(d.field) - 1);
    assert_int_equal(strlen(d.message), sizeof(d.message) - 1);
    stoke_diag_set(NULL, "x", 1, 1, "", "ignored");

    /* Ready for a log line: control characters escaped, bad UTF-8 replaced,
     * a character cut short at the end dropped. */
    stoke_diag_set(&d, "a\nb", 1, 1, "k\x01", "%s", "x\ty\xff\xc3\xa9z\xe2\x82");
    assert_string_equal(d.file, "a\\nb");
    assert_string_equal(d.field, "k\\x01");
    assert_string_equal(d.message, "x\\ty?\xc3\xa9z");
}

/* --- files ------------------------------------------------------------------ */

static void write_file(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

static void test_load(void **state)
{
    char dir[] = "/tmp/stoke-test-spec-XXXXXX";
    char path[256], big[256], edge[256], over[256];
    struct stoke_spec s;
    struct stoke_diag d;
    char *y;
    size_t blen;
    int fd;
    (void)state;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/hello.yaml", dir);
    snprintf(big, sizeof(big), "%s/big.yaml", dir);
    snprintf(edge, sizeof(edge), "%s/edge.yaml", dir);
    snprintf(over, sizeof(over), "%s/over.yaml", dir);

    write_file(path, BASE, strlen(BASE));
    assert_int_equal(stoke_spec_load(path, &s, &d), 0);
    check_minimal(&s);
    stoke_spec_done(&s);

    /* 10 MB: refused from its size alone. */
    fd = open(big, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 10 * 1024 * 1024), 0);
    assert_int_equal(close(fd), 0);
    assert_int_equal(stoke_spec_load(big, &s, &d), -EFBIG);
    assert_true(is_zeroed(&s));
    assert_string_equal(d.file, big);
    assert_non_null(strstr(d.message, "larger than 1048576 bytes"));

    /* Exactly the cap is fine; one byte more is not. */
    blen = STOKE_SPEC_MAX_BYTES;
    y = malloc(blen + 1);
    assert_non_null(y);
    memset(y, '#', blen + 1);
    memcpy(y, BASE, strlen(BASE));
    y[blen - 1] = '\n';
    write_file(edge, y, blen);
    assert_int_equal(stoke_spec_load(edge, &s, &d), 0);
    check_minimal(&s);
    stoke_spec_done(&s);
    y[blen] = '\n';
    write_file(over, y, blen + 1);
    assert_int_equal(stoke_spec_load(over, &s, &d), -EFBIG);
    assert_int_equal(unlink(over), 0);
    free(y);

    /* Errors name the file. */
    write_file(path, BASE "  port: 0\n", strlen(BASE "  port: 0\n"));
    assert_int_equal(stoke_spec_load(path, &s, &d), -EINVAL);
    assert_string_equal(d.file, path);
    assert_int_equal(d.line, 7);
    assert_int_equal(d.column, 9);

    assert_int_equal(stoke_spec_load(dir, &s, &d), -EISDIR);
    /* A FIFO is refused at once rather than waited on. */
    assert_int_equal(mkfifo(over, 0600), 0);
    assert_int_equal(stoke_spec_load(over, &s, &d), -EINVAL);
    assert_non_null(strstr(d.message, "not a regular file"));
    assert_int_equal(unlink(over), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(stoke_spec_load(path, &s, &d), -ENOENT);
    assert_true(is_zeroed(&s));
    assert_string_equal(d.file, path);
    assert_non_null(strstr(d.message, "cannot open"));

    assert_int_equal(unlink(big), 0);
    assert_int_equal(unlink(edge), 0);
    assert_int_equal(rmdir(dir), 0);
}

static void test_fixtures(void **state)
{
    char path[512];
    struct stoke_spec s;
    struct stoke_diag d;
    (void)state;

    snprintf(path, sizeof(path), "%s/specs/valid/minimal.yaml", STOKE_TEST_DATA);
    assert_int_equal(stoke_spec_load(path, &s, &d), 0);
    assert_string_equal(s.name, "minimal");
    check_defaults_except_name_image(&s);
    stoke_spec_done(&s);

    snprintf(path, sizeof(path), "%s/specs/valid/flow.yaml", STOKE_TEST_DATA);
    assert_int_equal(stoke_spec_load(path, &s, &d), 0);
    assert_string_equal(s.name, "flow");
    assert_int_equal(s.port, 8081);
    assert_int_equal(s.resources.memory_bytes, 64 * MIB);
    assert_string_equal(s.readiness.path, "/ready");
    assert_int_equal(s.readiness.period_ms, 50);
    stoke_spec_done(&s);

    snprintf(path, sizeof(path), "%s/../deploy/examples/hello/hello.yaml", STOKE_TEST_DATA);
    assert_int_equal(stoke_spec_load(path, &s, &d), 0);
    assert_string_equal(s.name, "hello");
    stoke_spec_done(&s);

    snprintf(path, sizeof(path), "%s/specs/invalid/min-over-max.yaml", STOKE_TEST_DATA);
    assert_int_equal(stoke_spec_load(path, &s, &d), -EINVAL);
    assert_int_equal(d.line, 8);
    assert_int_equal(d.column, 10);
    assert_string_equal(d.field, "spec.scale.min");

    snprintf(path, sizeof(path), "%s/specs/invalid/latin1.yaml", STOKE_TEST_DATA);
    assert_int_equal(stoke_spec_load(path, &s, &d), -EINVAL);
    assert_int_equal(d.line, 4);
    assert_int_equal(d.column, 12);
    assert_non_null(strstr(d.message, "not valid UTF-8"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_async_block),
        cmocka_unit_test(test_triggers_block),
        cmocka_unit_test(test_schedules_block),
        cmocka_unit_test(test_trigger_address),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_env_limit),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_too_many_nodes),
        cmocka_unit_test(test_many_keys_duplicate),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_null_buffer),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_memory),
        cmocka_unit_test(test_parse_cpu),
        cmocka_unit_test(test_is_valid_name),
        cmocka_unit_test(test_revision),
        cmocka_unit_test(test_revision_separators),
        cmocka_unit_test(test_dup),
        cmocka_unit_test(test_diag_format),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
