/* Knative serving.knative.dev/v1 Service manifests as stoke specs: the
 * mapping, stoke's defaults where Knative says nothing, refusals with
 * file:line:column and field, the exact warnings for what stoke does not
 * support, and the same hostile-input refusals as stoke/v1. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/knative.h"
#include "stoke/spec.h"

#define MIB (UINT64_C(1024) * 1024)
#define ANN "spec.template.metadata.annotations.autoscaling.knative.dev/"
#define CONTAINER "spec.template.spec.containers[0]"

/* Eight lines; what a case appends starts on line 9, inside the template's
 * annotations (indented 8). */
#define HEAD                                                                                       \
    "apiVersion: serving.knative.dev/v1\n"                                                         \
    "kind: Service\n"                                                                              \
    "metadata:\n"                                                                                  \
    "  name: hello\n"                                                                              \
    "spec:\n"                                                                                      \
    "  template:\n"                                                                                \
    "    metadata:\n"                                                                              \
    "      annotations:\n"
/* The revision spec after HEAD's annotations: three lines. */
#define REV                                                                                        \
    "    spec:\n"                                                                                  \
    "      containers:\n"                                                                          \
    "        - image: stoke-hello:1\n"
/* Three lines: a Service's head; the case's `spec:` starts on line 4. */
#define SHEAD                                                                                      \
    "apiVersion: serving.knative.dev/v1\n"                                                         \
    "kind: Service\n"                                                                              \
    "metadata: {name: a}\n"
/* Eight lines: a Service whose container's entries a case appends from
 * line 9, indented 10. */
#define CHEAD                                                                                      \
    "apiVersion: serving.knative.dev/v1\n"                                                         \
    "kind: Service\n"                                                                              \
    "metadata: {name: hello}\n"                                                                    \
    "spec:\n"                                                                                      \
    "  template:\n"                                                                                \
    "    spec:\n"                                                                                  \
    "      containers:\n"                                                                          \
    "        - image: stoke-hello:1\n"

struct warnings {
    size_t n;
    char text[80][512];
};

static void on_warning(const struct stoke_diag *w, void *data)
{
    struct warnings *ws = data;
    assert_true(ws->n < 80);
    (void)stoke_diag_format(w, ws->text[ws->n++], sizeof(ws->text[0]));
}

static bool is_zeroed(const struct stoke_spec *s)
{
    static const struct stoke_spec zero;
    return memcmp(s, &zero, sizeof(zero)) == 0;
}

static int parse(const char *yaml, struct stoke_spec *s, struct stoke_diag *d, struct warnings *ws)
{
    if (ws)
        memset(ws, 0, sizeof(*ws));
    return stoke_spec_parse_ex(yaml, strlen(yaml), "kn.yaml", s, d, ws ? on_warning : NULL, ws);
}

static void fixture(const char *name, char *path, size_t size)
{
    assert_true(snprintf(path, size, "%s/specs/knative/%s", STOKE_TEST_DATA, name) < (int)size);
}

/* Refused with -EINVAL, a zeroed spec, no warning, and this exact diag. */
static void expect_error(const char *yaml, unsigned line, unsigned column, const char *field,
                         const char *message)
{
    struct stoke_spec s;
    struct stoke_diag d;
    struct warnings ws;
    int r = parse(yaml, &s, &d, &ws);

    if (r != -EINVAL || d.line != line || d.column != column || strcmp(d.field, field) != 0 ||
        !strstr(d.message, message))
        print_error("got %d %u:%u: %s: %s\n", r, d.line, d.column, d.field, d.message);
    assert_int_equal(r, -EINVAL);
    assert_true(is_zeroed(&s));
    assert_int_equal(ws.n, 0);
    assert_int_equal(d.line, line);
    assert_int_equal(d.column, column);
    assert_string_equal(d.field, field);
    assert_non_null(strstr(d.message, message));
    assert_string_equal(d.file, "kn.yaml");
}

static void check_env(const struct stoke_spec *s, size_t i, const char *name, const char *value)
{
    assert_true(i < s->env_len);
    assert_string_equal(s->env[i].name, name);
    assert_string_equal(s->env[i].value, value);
}

static void check_defaults_but_name_image(const struct stoke_spec *s)
{
    struct stoke_spec d;
    stoke_spec_defaults(&d);
    assert_int_equal(s->port, d.port);
    assert_int_equal(s->env_len, 0);
    assert_memory_equal(&s->scale, &d.scale, sizeof(d.scale));
    assert_memory_equal(&s->queue, &d.queue, sizeof(d.queue));
    assert_memory_equal(&s->resources, &d.resources, sizeof(d.resources));
    assert_int_equal(s->timeout_ms, d.timeout_ms);
    assert_null(s->readiness.path);
    assert_int_equal(s->readiness.period_ms, d.readiness.period_ms);
}

/* --- mapping ---------------------------------------------------------------- */

static void test_full_service_maps_field_by_field(void **state)
{
    struct stoke_spec s;
    struct stoke_diag d;
    struct warnings ws = {0};
    char path[512];
    (void)state;

    fixture("full.yaml", path, sizeof(path));
    assert_int_equal(stoke_spec_load_ex(path, &s, &d, on_warning, &ws), 0);
    assert_int_equal(ws.n, 0); /* kpa, concurrency and kubectl's annotation are quiet */
    assert_string_equal(s.name, "full-kn");
    assert_string_equal(s.image, "registry.local:5000/team/full@sha256:0123");
    assert_int_equal(s.port, 9000);
    assert_int_equal(s.env_len, 3);
    check_env(&s, 0, "B_FIRST", "one");
    check_env(&s, 1, "A_SECOND", "two words");
    check_env(&s, 2, "EMPTY", "");
    assert_int_equal(s.scale.min, 2);
    assert_int_equal(s.scale.max, 20); /* the template's, over the Service's 5 */
    assert_int_equal(s.scale.initial, 3);
    assert_int_equal(s.scale.target, 50);
    assert_int_equal(s.scale.utilization, 80);
    assert_int_equal(s.scale.container_concurrency, 8);
    assert_int_equal(s.scale.window_ms, 120000);
    assert_int_equal(s.scale.panic_window_percent, 20);
    assert_int_equal(s.scale.panic_threshold_percent, 300);
    assert_int_equal(s.scale.scale_down_delay_ms, 90000);
    assert_int_equal(s.timeout_ms, 30000);
    assert_int_equal(s.resources.memory_bytes, 256 * MIB);
    assert_int_equal(s.resources.cpu_millis, 1500);
    assert_string_equal(s.readiness.path, "/healthz");
    /* What Knative has no word for keeps stoke's defaults. */
    {
        struct stoke_spec def;
        stoke_spec_defaults(&def);
        assert_int_equal(s.scale.scale_to_zero_grace_ms, def.scale.scale_to_zero_grace_ms);
        assert_int_equal(s.scale.idle, def.scale.idle);
        assert_int_equal(s.queue.max, def.queue.max);
        assert_int_equal(s.queue.timeout_ms, def.queue.timeout_ms);
        assert_int_equal(s.resources.pids, def.resources.pids);
        assert_int_equal(s.readiness.period_ms, def.readiness.period_ms);
    }
    stoke_spec_done(&s);
}

static void test_knative_hello_world(void **state)
{
    struct stoke_spec s;
    struct stoke_diag d;
    char path[512];
    (void)state;

    fixture("helloworld.yaml", path, sizeof(path));
    /* The plain loader, with no warning callback, takes it too. */
    assert_int_equal(stoke_spec_load(path, &s, &d), 0);
    assert_string_equal(s.name, "hello");
    assert_string_equal(s.image, "ghcr.io/knative/helloworld-go:latest");
    assert_int_equal(s.port, 8080);
    assert_int_equal(s.env_len, 1);
    check_env(&s, 0, "TARGET", "World");
    assert_int_equal(s.scale.min, 0);
    assert_int_equal(s.scale.max, 0);
    assert_int_equal(s.scale.target, 100);
    stoke_spec_done(&s);
}

static void test_defaults_without_annotations(void **state)
{
    static const char *const docs[] = {
        HEAD "        {}\n" REV,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello}\n"
        "spec: {template: {spec: {containers: [{image: stoke-hello:1}]}}}\n",
        /* Key order does not matter, nor do empty sections. */
        "spec:\n  template:\n    metadata:\n    spec:\n      containers:\n"
        "        - image: stoke-hello:1\n          env:\n          ports:\n"
        "metadata:\n  name: hello\n  annotations:\nkind: Service\n"
        "apiVersion: serving.knative.dev/v1\n",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        struct stoke_spec s;
        struct stoke_diag d;
        struct warnings ws;
        int r = parse(docs[i], &s, &d, &ws);
        if (r != 0)
            print_error("doc %zu: %u:%u: %s: %s\n", i, d.line, d.column, d.field, d.message);
        assert_int_equal(r, 0);
        assert_int_equal(ws.n, 0);
        assert_string_equal(s.name, "hello");
        assert_string_equal(s.image, "stoke-hello:1");
        check_defaults_but_name_image(&s);
        stoke_spec_done(&s);
    }
}

static void test_service_level_annotations(void **state)
{
    static const char yaml[] = "apiVersion: serving.knative.dev/v1\n"
                               "kind: Service\n"
                               "metadata:\n"
                               "  name: hello\n"
                               "  annotations:\n"
                               "    autoscaling.knative.dev/min-scale: \"1\"\n"
                               "    autoscaling.knative.dev/max-scale: 4\n"
                               "    autoscaling.knative.dev/window: 10s\n"
                               "spec:\n"
                               "  template:\n" REV;
    struct stoke_spec s;
    struct stoke_diag d;
    (void)state;

    /* Unquoted numbers are taken too (kubectl would want strings). */
    assert_int_equal(parse(yaml, &s, &d, NULL), 0);
    assert_int_equal(s.scale.min, 1);
    assert_int_equal(s.scale.max, 4);
    assert_int_equal(s.scale.window_ms, 10000);
    stoke_spec_done(&s);
}

static void test_camel_case_annotations(void **state)
{
    static const char yaml[] =
        HEAD "        autoscaling.knative.dev/minScale: \"1\"\n"
             "        autoscaling.knative.dev/maxScale: \"7\"\n"
             "        autoscaling.knative.dev/initialScale: \"2\"\n"
             "        autoscaling.knative.dev/targetUtilizationPercentage: \"60\"\n"
             "        autoscaling.knative.dev/panicWindowPercentage: \"5.0\"\n"
             "        autoscaling.knative.dev/panicThresholdPercentage: \"150.0\"\n"
             "        autoscaling.knative.dev/scaleDownDelay: \"5m\"\n" REV;
    struct stoke_spec s;
    struct stoke_diag d;
    struct warnings ws;
    (void)state;

    assert_int_equal(parse(yaml, &s, &d, &ws), 0);
    assert_int_equal(ws.n, 0);
    assert_int_equal(s.scale.min, 1);
    assert_int_equal(s.scale.max, 7);
    assert_int_equal(s.scale.initial, 2);
    assert_int_equal(s.scale.utilization, 60);
    assert_int_equal(s.scale.panic_window_percent, 5);
    assert_int_equal(s.scale.panic_threshold_percent, 150);
    assert_int_equal(s.scale.scale_down_delay_ms, 300000);
    stoke_spec_done(&s);
    /* Both spellings in one mapping: which one Knative reads is not obvious. */
    expect_error(HEAD "        autoscaling.knative.dev/min-scale: \"1\"\n"
                      "        autoscaling.knative.dev/minScale: \"2\"\n" REV,
                 10, 9, ANN "minScale",
                 "also set as \"autoscaling.knative.dev/min-scale\" at line 9: keep one");
}

static void test_fractions_rounded_with_warning(void **state)
{
    static const char yaml[] =
        HEAD "        autoscaling.knative.dev/target: \"70.5\"\n"
             "        autoscaling.knative.dev/target-utilization-percentage: \"99.4\"\n"
             "        autoscaling.knative.dev/panic-threshold-percentage: \"150.0\"\n" REV;
    struct stoke_spec s;
    struct stoke_diag d;
    struct warnings ws;
    (void)state;

    assert_int_equal(parse(yaml, &s, &d, &ws), 0);
    assert_int_equal(s.scale.target, 71);
    assert_int_equal(s.scale.utilization, 99);
    assert_int_equal(s.scale.panic_threshold_percent, 150);
    assert_int_equal(ws.n, 2); /* 150.0 is whole */
    assert_string_equal(ws.text[0],
                        "kn.yaml:9:41: " ANN "target: rounded to 71: stoke takes whole numbers");
    assert_string_equal(ws.text[1], "kn.yaml:10:64: " ANN
                                    "target-utilization-percentage: rounded to 99: stoke takes "
                                    "whole numbers");
    stoke_spec_done(&s);
}

static void test_same_revision_as_stoke_v1(void **state)
{
    static const char kn[] = CHEAD "          ports: [{containerPort: 9000}]\n"
                                   "          env: [{name: A, value: \"1\"}]\n"
                                   "          resources: {limits: {memory: 64Mi, cpu: 250m}}\n"
                                   "          readinessProbe: {httpGet: {path: /r}}\n";
    static const char st[] = "apiVersion: stoke/v1\nkind: Function\nmetadata: {name: hello}\n"
                             "spec:\n  image: stoke-hello:1\n  port: 9000\n  env: {A: \"1\"}\n"
                             "  resources: {memory: 64Mi, cpu: 250m}\n"
                             "  readiness: {path: /r}\n";
    struct stoke_spec a, b;
    struct stoke_diag d;
    char ra[17], rb[17];
    (void)state;

    assert_int_equal(parse(kn, &a, &d, NULL), 0);
    assert_int_equal(parse(st, &b, &d, NULL), 0);
    stoke_spec_revision(&a, ra);
    stoke_spec_revision(&b, rb);
    assert_string_equal(ra, rb);
    stoke_spec_done(&a);
    stoke_spec_done(&b);
}

/* --- warnings --------------------------------------------------------------- */

static void test_unsupported_fields_warn_exactly(void **state)
{
    static const char *const want[] = {
        "8:5: metadata.annotations.serving.knative.dev/rollout-duration",
        "12:7: spec.template.metadata.name",
        "14:9: " ANN "class",
        "15:9: " ANN "metric",
        "16:9: spec.template.metadata.annotations.features.knative.dev/queueproxy-podinfo",
        "18:7: spec.template.spec.serviceAccountName",
        "21:11: " CONTAINER ".command",
        "24:15: " CONTAINER ".env[0].valueFrom",
        "29:13: " CONTAINER ".resources.requests",
        "33:15: " CONTAINER ".resources.limits.nvidia.com/gpu",
        "35:13: " CONTAINER ".readinessProbe.periodSeconds",
        "38:15: " CONTAINER ".readinessProbe.httpGet.port",
        "39:11: " CONTAINER ".livenessProbe",
        "41:7: spec.template.spec.volumes",
        "44:3: spec.traffic",
    };
    struct stoke_spec s;
    struct stoke_diag d;
    struct warnings ws = {0};
    char path[256], line[1024];
    (void)state;

    fixture("unsupported.yaml", path, sizeof(path));
    assert_int_equal(stoke_spec_load_ex(path, &s, &d, on_warning, &ws), 0);
    for (size_t i = 0; i < ws.n; i++)
        print_message("warning: %s\n", ws.text[i]);
    assert_int_equal(ws.n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < ws.n; i++) {
        assert_true(snprintf(line, sizeof(line), "%s:%s: not supported by stoke, ignored", path,
                             want[i]) < (int)sizeof(line));
        assert_string_equal(ws.text[i], line);
    }
    /* What is supported still maps; the valueFrom variable is left out. */
    assert_int_equal(s.env_len, 1);
    check_env(&s, 0, "KEPT", "yes");
    assert_int_equal(s.resources.memory_bytes, 64 * MIB);
    assert_string_equal(s.readiness.path, "/ready");
    stoke_spec_done(&s);
}

static void test_no_warnings_for_refused_manifest(void **state)
{
    static const char yaml[] = CHEAD "          command: [x]\n"
                                     "          ports: [{containerPort: 0}]\n";
    (void)state;
    /* The warning for command came first, but the spec is refused: none. */
    expect_error(yaml, 10, 35, CONTAINER ".ports[0].containerPort",
                 "must be between 1 and 65535 (found 0)");
}

static void test_warnings_capped(void **state)
{
    char *yaml = malloc(64 * 1024);
    size_t n;
    struct stoke_spec s;
    struct stoke_diag d;
    struct warnings ws;
    (void)state;

    assert_non_null(yaml);
    n = (size_t)snprintf(yaml, 64 * 1024, "%s", CHEAD);
    for (int i = 0; i < 100; i++)
        n += (size_t)snprintf(yaml + n, 64 * 1024 - n, "          x%d: 1\n", i);
    assert_int_equal(parse(yaml, &s, &d, &ws), 0);
    assert_int_equal(ws.n, STOKE_KNATIVE_MAX_WARNINGS);
    assert_string_equal(ws.text[0], "kn.yaml:9:11: " CONTAINER ".x0: not supported by stoke, "
                                    "ignored");
    assert_string_equal(ws.text[STOKE_KNATIVE_MAX_WARNINGS - 1],
                        "kn.yaml:72:11: 37 more warnings not shown (the limit is 64)");
    stoke_spec_done(&s);
    free(yaml);
}

/* --- bad values ------------------------------------------------------------- */

struct bad_annotation {
    const char *name;
    const char *value; /* as written after "name: " */
    const char *message;
};

static void test_bad_annotation_values(void **state)
{
    static const struct bad_annotation cases[] = {
        {"min-scale", "\"-1\"", "must not be negative (found \"-1\")"},
        {"min-scale", "\"one\"", "expected a whole number, found \"one\""},
        {"min-scale", "\"1.5\"", "expected a whole number, found \"1.5\""},
        {"min-scale", "\"10001\"", "must be between 0 and 10000 (found \"10001\")"},
        {"max-scale", "\"\"", "expected a whole number, found \"\""},
        {"max-scale", "\"99999999999999999999999\"", "must be between 0 and 10000"},
        {"initial-scale", "\"3x\"", "expected a whole number, found \"3x\""},
        {"initial-scale", "{a: 1}", "expected a string, found a mapping"},
        {"target", "\"0\"", "must be between 1 and 1000000 (found \"0\")"},
        {"target", "\"0.4\"", "must be between 1 and 1000000 (found \"0.4\")"},
        {"target", "\"1e3\"", "expected a number, found \"1e3\""},
        {"target", "\".5\"", "expected a number, found \".5\""},
        {"target-utilization-percentage", "\"101\"", "must be between 1 and 100"},
        {"target-utilization-percentage", "\"70.\"", "expected a number, found \"70.\""},
        {"window", "\"5s\"", "must be between 6s and 3600s (found \"5s\")"},
        {"window", "\"2h\"", "must be between 6s and 3600s (found \"2h\")"},
        {"window", "\"60\"", "invalid duration \"60\""},
        {"window", "\"1.5m\"", "invalid duration \"1.5m\""},
        {"panic-window-percentage", "\"0\"", "must be between 1 and 100 (found \"0\")"},
        {"panic-threshold-percentage", "\"100\"", "must be between 110 and 1000"},
        {"panic-threshold-percentage", "\"1001\"", "must be between 110 and 1000"},
        {"scale-down-delay", "\"-1s\"", "must not be negative (found \"-1s\")"},
        {"scale-down-delay", "\"61m\"", "must be between 0s and 3600s (found \"61m\")"},
        {"scale-down-delay", "~", "expected a string, found nothing (null)"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[1024], field[256];
        /* The value starts after 8 spaces, the prefix, the name and ": ". */
        unsigned col = 8 + (unsigned)strlen("autoscaling.knative.dev/") +
                       (unsigned)strlen(cases[i].name) + 2 + 1;
        snprintf(yaml, sizeof(yaml), HEAD "        autoscaling.knative.dev/%s: %s\n" REV,
                 cases[i].name, cases[i].value);
        snprintf(field, sizeof(field), ANN "%s", cases[i].name);
        print_message("case %zu: %s: %s\n", i, cases[i].name, cases[i].value);
        expect_error(yaml, 9, col, field, cases[i].message);
    }
}

static void test_min_over_max_refused_at_min(void **state)
{
    (void)state;
    expect_error(HEAD "        autoscaling.knative.dev/max-scale: \"2\"\n"
                      "        autoscaling.knative.dev/min-scale: \"3\"\n" REV,
                 10, 44, ANN "min-scale", "min-scale (3) must not be greater than max-scale (2)");
    expect_error(HEAD "        autoscaling.knative.dev/initial-scale: \"5\"\n"
                      "        autoscaling.knative.dev/max-scale: \"2\"\n" REV,
                 9, 48, ANN "initial-scale",
                 "initial-scale (5) must not be greater than max-scale (2)");
}

/* The Service's min-scale against the template's max-scale: the error
 * points at the value that is written, on the Service. */
static void test_min_over_max_across_levels(void **state)
{
    (void)state;
    expect_error("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: a\n"
                 "  annotations: {autoscaling.knative.dev/min-scale: \"4\"}\n"
                 "spec:\n"
                 "  template:\n"
                 "    metadata: {annotations: {autoscaling.knative.dev/max-scale: \"3\"}}\n"
                 "    spec: {containers: [{image: a}]}\n",
                 5, 52, "metadata.annotations.autoscaling.knative.dev/min-scale",
                 "min-scale (4) must not be greater than max-scale (3)");
}

static void test_multiple_containers_refused(void **state)
{
    (void)state;
    expect_error(CHEAD "        - image: sidecar:1\n", 9, 11, "spec.template.spec.containers[1]",
                 "stoke runs one container per function (found 2)");
}

static void test_missing_or_empty_containers_refused(void **state)
{
    static const char base[] = "apiVersion: serving.knative.dev/v1\nkind: Service\n"
                               "metadata: {name: hello}\nspec:\n  template:\n    spec:\n";
    char yaml[512];
    (void)state;

    snprintf(yaml, sizeof(yaml), "%s      containers: []\n", base);
    expect_error(yaml, 7, 19, "spec.template.spec.containers", "one container is required");
    snprintf(yaml, sizeof(yaml), "%s      timeoutSeconds: 10\n", base);
    expect_error(yaml, 7, 7, "spec.template.spec.containers",
                 "missing required field \"containers\"");
    snprintf(yaml, sizeof(yaml), "%s      containers: [{name: x}]\n", base);
    expect_error(yaml, 7, 20, "spec.template.spec.containers[0].image",
                 "missing required field \"image\"");
    snprintf(yaml, sizeof(yaml), "%s      containers: {image: x}\n", base);
    expect_error(yaml, 7, 19, "spec.template.spec.containers",
                 "expected a sequence, found a mapping");
}

static void test_missing_name_and_template_refused(void **state)
{
    (void)state;
    expect_error("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {namespace: x}\n"
                 "spec: {template: {spec: {containers: [{image: a}]}}}\n",
                 3, 11, "metadata.name", "missing required field \"name\"");
    expect_error("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: Hello}\n"
                 "spec: {template: {spec: {containers: [{image: a}]}}}\n",
                 3, 18, "metadata.name", "invalid name \"Hello\"");
    expect_error(SHEAD "spec: {traffic: []}\n", 4, 7, "spec.template",
                 "missing required field \"template\"");
    expect_error(SHEAD, 1, 1, "spec", "missing required field \"spec\"");
}

static void test_wrong_types_refused(void **state)
{
    (void)state;
    expect_error(SHEAD
                 "spec: {template: {spec: {containerConcurrency: \"8\", containers: [{image: a}]}}}"
                 "\n",
                 4, 48, "spec.template.spec.containerConcurrency",
                 "expected an integer, found the string \"8\"");
    expect_error(SHEAD "spec: {template: {spec: {timeoutSeconds: 0, containers: [{image: a}]}}}\n",
                 4, 42, "spec.template.spec.timeoutSeconds",
                 "must be between 1 and 3600 (found 0)");
    expect_error(SHEAD
                 "spec: {template: {spec: {timeoutSeconds: 010, containers: [{image: a}]}}}\n",
                 4, 42, "spec.template.spec.timeoutSeconds", "leading zeros are not allowed");
    expect_error(SHEAD "spec: [1]\n", 4, 7, "spec", "expected a mapping, found a sequence");
    expect_error(CHEAD "          resources: {limits: {memory: 1Mi}}\n", 9, 40,
                 CONTAINER ".resources.limits.memory", "must be at least 6Mi");
    expect_error(CHEAD "          resources: {limits: {cpu: lots}}\n", 9, 37,
                 CONTAINER ".resources.limits.cpu", "invalid CPU quantity \"lots\"");
    expect_error(CHEAD "          readinessProbe: {httpGet: {path: healthz}}\n", 9, 44,
                 CONTAINER ".readinessProbe.httpGet.path", "must start with '/'");
    expect_error(SHEAD "spec: {template: {spec: {containers: [{image: \"has space\"}]}}}\n", 4, 47,
                 CONTAINER ".image", "invalid image reference \"has space\"");
    expect_error(CHEAD "          image: b\n", 9, 11, CONTAINER ".image",
                 "duplicate key \"image\" (first at line 8, column 11)");
}

static void test_ports_refused(void **state)
{
    (void)state;
    expect_error(CHEAD "          ports: [{containerPort: 80}, {containerPort: 81}]\n", 9, 40,
                 CONTAINER ".ports[1]", "only one port can be set");
    expect_error(CHEAD "          ports: [{containerPort: 70000}]\n", 9, 35,
                 CONTAINER ".ports[0].containerPort", "must be between 1 and 65535");
    expect_error(CHEAD "          ports: [{containerPort: -1}]\n", 9, 35,
                 CONTAINER ".ports[0].containerPort", "must not be negative");
}

static void test_env_refused(void **state)
{
    (void)state;
    expect_error(CHEAD "          env: [{name: PORT, value: \"1\"}]\n", 9, 24,
                 CONTAINER ".env[0].name", "PORT is set by stoke");
    expect_error(CHEAD "          env: [{name: 1A}]\n", 9, 24, CONTAINER ".env[0].name",
                 "invalid environment variable name \"1A\"");
    expect_error(CHEAD "          env: [{name: A}, {name: A}]\n", 9, 35, CONTAINER ".env[1].name",
                 "duplicate environment variable \"A\"");
    expect_error(CHEAD "          env: [{value: x}]\n", 9, 17, CONTAINER ".env[0].name",
                 "missing required field \"name\"");
    expect_error(CHEAD "          env: [{name: A, value: [1]}]\n", 9, 34, CONTAINER ".env[0].value",
                 "expected a string, found a sequence");
}

static void test_wrong_api_version_or_kind(void **state)
{
    struct stoke_spec s;
    struct stoke_diag d;
    static const char route[] = "apiVersion: serving.knative.dev/v1\nkind: Route\n"
                                "metadata: {name: a}\nspec: {}\n";
    (void)state;

    /* Not a Service: the stoke/v1 parser answers, naming apiVersion. */
    assert_false(stoke_knative_is_service(route, strlen(route)));
    assert_int_equal(parse(route, &s, &d, NULL), -EINVAL);
    assert_string_equal(d.field, "apiVersion");
    assert_int_equal(d.line, 1);
    /* Called directly, the Knative parser names kind. */
    assert_int_equal(stoke_knative_parse(route, strlen(route), "r.yaml", &s, &d, NULL, NULL),
                     -EINVAL);
    assert_true(is_zeroed(&s));
    assert_string_equal(d.field, "kind");
    assert_int_equal(d.line, 2);
    assert_int_equal(d.column, 7);
}

static void test_detection(void **state)
{
    static const struct {
        const char *yaml;
        bool is;
    } cases[] = {
        {"apiVersion: serving.knative.dev/v1\nkind: Service\n", true},
        {"kind: Service\nmetadata: {a: [1, {b: 2}]}\napiVersion: serving.knative.dev/v1\n", true},
        {"\xEF\xBB\xBF{kind: Service, apiVersion: \"serving.knative.dev/v1\"}\n", true},
        {"apiVersion: stoke/v1\nkind: Service\n", false},
        {"apiVersion: serving.knative.dev/v1\nkind: Function\n", false},
        {"metadata: {apiVersion: serving.knative.dev/v1, kind: Service}\n", false},
        {"- apiVersion: serving.knative.dev/v1\n- kind: Service\n", false},
        {"kind: [Service]\napiVersion: serving.knative.dev/v1\n", false},
        /* libyaml reads ahead: a bad byte anywhere in its first chunk stops it,
         * and the stoke/v1 parser then names the byte. */
        {"apiVersion: serving.knative.dev/v1\nkind: Service\n\xff", false},
        {"\xff apiVersion: serving.knative.dev/v1\nkind: Service\n", false},
        {"", false},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case %zu\n", i);
        assert_int_equal(stoke_knative_is_service(cases[i].yaml, strlen(cases[i].yaml)),
                         cases[i].is);
    }
    assert_false(stoke_knative_is_service(NULL, 0));
}

/* --- hostile input, refused as stoke/v1 refuses it ------------------------- */

static void test_hostile_alias(void **state)
{
    (void)state;
    expect_error(HEAD "        a: &x \"1\"\n        autoscaling.knative.dev/min-scale: *x\n" REV,
                 10, 44, ANN "min-scale", "aliases are not allowed (\"*x\")");
}

static void test_hostile_duplicate_keys(void **state)
{
    (void)state;
    expect_error(HEAD "        autoscaling.knative.dev/min-scale: \"1\"\n"
                      "        autoscaling.knative.dev/min-scale: \"2\"\n" REV,
                 10, 9, ANN "min-scale",
                 "duplicate key \"autoscaling.knative.dev/min-scale\" (first at line 9");
}

static void test_hostile_deep(void **state)
{
    char yaml[1024];
    size_t n;
    (void)state;

    n = (size_t)snprintf(yaml, sizeof(yaml), "%s", CHEAD "          x: ");
    for (int i = 0; i < 40; i++)
        yaml[n++] = '[';
    for (int i = 0; i < 40; i++)
        yaml[n++] = ']';
    yaml[n++] = '\n';
    yaml[n] = '\0';
    /* The container's mapping is at depth 6: the 11th '[' is the 17th level. */
    expect_error(yaml, 9, 24, CONTAINER ".x[0][0][0][0][0][0][0][0][0][0]",
                 "nested deeper than 16 levels");
}

static void test_hostile_huge(void **state)
{
    size_t len = STOKE_SPEC_MAX_BYTES + 1;
    char *yaml = malloc(len + 1);
    struct stoke_spec s;
    struct stoke_diag d;
    (void)state;

    assert_non_null(yaml);
    memset(yaml, ' ', len);
    memcpy(yaml, CHEAD, strlen(CHEAD));
    yaml[len] = '\0';
    assert_int_equal(stoke_knative_parse(yaml, len, "big.yaml", &s, &d, NULL, NULL), -EFBIG);
    assert_true(is_zeroed(&s));
    assert_non_null(strstr(d.message, "larger than"));
    /* Through the loader too: detection refuses to look, stoke/v1 says -EFBIG. */
    assert_int_equal(stoke_spec_parse(yaml, len, "big.yaml", &s, &d), -EFBIG);
    free(yaml);
}

static void test_hostile_many_nodes(void **state)
{
    size_t cap = 256 * 1024, n;
    char *yaml = malloc(cap);
    (void)state;

    assert_non_null(yaml);
    n = (size_t)snprintf(yaml, cap, "%s", CHEAD "          x: [");
    for (int i = 0; i < STOKE_SPEC_MAX_NODES + 10; i++)
        n += (size_t)snprintf(yaml + n, cap - n, "1,");
    snprintf(yaml + n, cap - n, "1]\n");
    {
        struct stoke_spec s;
        struct stoke_diag d;
        assert_int_equal(parse(yaml, &s, &d, NULL), -EINVAL);
        assert_true(is_zeroed(&s));
        assert_int_equal(d.line, 9);
        assert_non_null(strstr(d.message, "too many YAML nodes (the limit is 16384)"));
    }
    free(yaml);
}

static void test_hostile_encoding_and_syntax(void **state)
{
    (void)state;
    /* Latin-1 'e' with acute in a value: line 9, column of the bad byte. */
    expect_error(CHEAD "          env: [{name: A, value: caf\xe9}]\n", 9, 37, "",
                 "not valid UTF-8");
    expect_error(CHEAD "          env: [{name: A, value: \"a\\0b\"}]\n", 9, 34,
                 CONTAINER ".env[0].value", "NUL");
    expect_error(CHEAD "          image: [\n", 10, 1, "", "YAML syntax error");
    expect_error(CHEAD "          ports: !!set {a}\n", 9, 18, CONTAINER ".ports",
                 "tag \"!!set\" is not allowed here");
    expect_error(CHEAD "---\nkind: Service\n", 9, 1, "", "a second YAML document");
}

/* The same hostile lines after a stoke/v1 spec and after a Knative Service,
 * both four lines long: the same refusal, position, field and message. */
static void test_hostile_same_as_stoke_v1(void **state)
{
    static const char stoke_head[] = "apiVersion: stoke/v1\nkind: Function\n"
                                     "metadata: {name: a}\nspec: {image: a}\n";
    static const char kn_head[] = SHEAD "spec: {template: {spec: {containers: [{image: a}]}}}\n";
    static const char *const tails[] = {
        "x: &a 1\ny: *a\n",
        "x: {a: 1, b: 2, a: 3}\n",
        "x: !!float 1\n",
        "x: !custom 1\n",
        "x: [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]\n",
        "---\nx: 1\n",
        "x: caf\xe9\n",
        "x: \"a\\0b\"\n",
        "? [a]\n: b\n",
        "x: [\n",
        "x: \"\xed\xa0\x80\"\n",
        "\tx: 1\n",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
        char a[512], b[512];
        struct stoke_spec s;
        struct stoke_diag da, db;
        int ra, rb;

        snprintf(a, sizeof(a), "%s%s", stoke_head, tails[i]);
        snprintf(b, sizeof(b), "%s%s", kn_head, tails[i]);
        ra = stoke_spec_parse(a, strlen(a), "f.yaml", &s, &da);
        rb = stoke_knative_parse(b, strlen(b), "f.yaml", &s, &db, NULL, NULL);
        print_message("case %zu: %u:%u: %s: %s\n", i, db.line, db.column, db.field, db.message);
        assert_int_equal(ra, -EINVAL);
        assert_int_equal(rb, -EINVAL);
        assert_int_equal(da.line, db.line);
        assert_int_equal(da.column, db.column);
        assert_string_equal(da.field, db.field);
        assert_string_equal(da.message, db.message);
    }
}

/* Whole documents refused at the YAML level: the Knative parser called
 * directly gives what the stoke/v1 parser gives, position, field and
 * message alike (both read YAML through common/yamltree.c). */
static void test_yaml_refusals_same_as_stoke_v1(void **state)
{
    static const struct {
        const char *yaml;
        size_t len; /* 0: strlen */
    } cases[] = {
        {"", 0},
        {"# only a comment\n", 0},
        {"\xEF\xBB\xBF# a BOM, then nothing\n", 0},
        {"\xEF\xBB\xBF"
         "a: \xff\n",
         0},
        {"# c\xc2\x85"
         "a: \xff\n",
         0},
        {"# c\xe2\x80\xa8"
         "a: \xff\n",
         0},
        {"a: 1\rb: 2\r\nc: \xc3\n", 0},
        {"a: \"\xc3\xa9\xe2\x82\n", 0},
        {"\xff\xfe"
         "a\0:\0",
         6},
        {"{a: 1, b: {c: 2, c: 3}}\n", 0},
        {"a:\n  - {b: 1}\n  - ? {c: d}\n    : e\n", 0},
        {"a: [x, *y]\n", 0},
        {"*y : 1\n", 0},
        {"a: !!map [1]\n", 0},
        {"a: !local {b: 1}\n", 0},
        {"[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]\n", 0},
        {"a: 1\n...\n---\nb: 2\n", 0},
        {"a: {b: 1\n", 0},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].yaml);
        struct stoke_spec s;
        struct stoke_diag da, db;
        int ra, rb;

        ra = stoke_spec_parse(cases[i].yaml, len, "f.yaml", &s, &da);
        rb = stoke_knative_parse(cases[i].yaml, len, "f.yaml", &s, &db, NULL, NULL);
        print_message("case %zu: %u:%u: %s: %s\n", i, db.line, db.column, db.field, db.message);
        assert_int_equal(ra, -EINVAL);
        assert_int_equal(rb, -EINVAL);
        assert_true(is_zeroed(&s));
        assert_int_equal(da.line, db.line);
        assert_int_equal(da.column, db.column);
        assert_string_equal(da.field, db.field);
        assert_string_equal(da.message, db.message);
    }
    /* No bytes at all: an empty file, as for stoke/v1. */
    {
        struct stoke_spec s;
        struct stoke_diag d;
        assert_int_equal(stoke_knative_parse(NULL, 0, "f.yaml", &s, &d, NULL, NULL), -EINVAL);
        assert_true(is_zeroed(&s));
        assert_int_equal(d.line, 1);
        assert_int_equal(d.column, 1);
        assert_string_equal(d.message, "the file is empty: no YAML document");
    }
}

/* stoke/v1 specs are untouched: the committed valid ones still load. */
static void test_stoke_v1_unchanged(void **state)
{
    static const char *const files[] = {"full.yaml", "minimal.yaml", "flow.yaml"};
    (void)state;

    for (size_t i = 0; i < 3; i++) {
        struct stoke_spec a, b;
        struct stoke_diag d;
        struct warnings ws = {0};
        char path[512];
        snprintf(path, sizeof(path), "%s/specs/valid/%s", STOKE_TEST_DATA, files[i]);
        assert_int_equal(stoke_spec_load(path, &a, &d), 0);
        assert_int_equal(stoke_spec_load_ex(path, &b, &d, on_warning, &ws), 0);
        assert_int_equal(ws.n, 0);
        assert_string_equal(a.name, b.name);
        assert_string_equal(a.image, b.image);
        assert_memory_equal(&a.scale, &b.scale, sizeof(a.scale));
        stoke_spec_done(&a);
        stoke_spec_done(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_service_maps_field_by_field),
        cmocka_unit_test(test_knative_hello_world),
        cmocka_unit_test(test_defaults_without_annotations),
        cmocka_unit_test(test_service_level_annotations),
        cmocka_unit_test(test_camel_case_annotations),
        cmocka_unit_test(test_fractions_rounded_with_warning),
        cmocka_unit_test(test_same_revision_as_stoke_v1),
        cmocka_unit_test(test_unsupported_fields_warn_exactly),
        cmocka_unit_test(test_no_warnings_for_refused_manifest),
        cmocka_unit_test(test_warnings_capped),
        cmocka_unit_test(test_bad_annotation_values),
        cmocka_unit_test(test_min_over_max_refused_at_min),
        cmocka_unit_test(test_min_over_max_across_levels),
        cmocka_unit_test(test_multiple_containers_refused),
        cmocka_unit_test(test_missing_or_empty_containers_refused),
        cmocka_unit_test(test_missing_name_and_template_refused),
        cmocka_unit_test(test_wrong_types_refused),
        cmocka_unit_test(test_ports_refused),
        cmocka_unit_test(test_env_refused),
        cmocka_unit_test(test_wrong_api_version_or_kind),
        cmocka_unit_test(test_detection),
        cmocka_unit_test(test_hostile_alias),
        cmocka_unit_test(test_hostile_duplicate_keys),
        cmocka_unit_test(test_hostile_deep),
        cmocka_unit_test(test_hostile_huge),
        cmocka_unit_test(test_hostile_many_nodes),
        cmocka_unit_test(test_hostile_encoding_and_syntax),
        cmocka_unit_test(test_hostile_same_as_stoke_v1),
        cmocka_unit_test(test_yaml_refusals_same_as_stoke_v1),
        cmocka_unit_test(test_stoke_v1_unchanged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
