/* stokectl get, describe and top: the API's function objects, as a table,
 * JSON, YAML, or in prose. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"
#include "output.h"
#include "stoke/cron.h"
#include "stoke/spec.h"

enum format { FMT_TABLE, FMT_JSON, FMT_YAML };

/* Reads the functions named in argv[first..argc) (all of them when none is
 * named) into an owned array of function objects. Returns 0 when every one
 * was read, 1 when some were not (printed; *ret holds the others) or the
 * server could not be reached (*ret NULL). */
static int fetch_functions(struct client *c, const char *cmd, int first, int argc, char **argv,
                           json_object **ret)
{
    struct reply r;
    *ret = NULL;
    if (first >= argc) {
        if (client_request(c, "GET", "/api/v1/functions", NULL, 0, NULL, &r) < 0)
            return 1;
        json_object *items = jget(r.json, "items");
        int status = 1;
        if (r.status != 200 || !items || !json_object_is_type(items, json_type_array)) {
            if (r.status == 200)
                fprintf(stderr, "stokectl %s: the answer from %s has no items\n", cmd, c->server);
            else
                client_print_error(c, "functions", &r);
        } else {
            *ret = json_object_get(items);
            status = 0;
        }
        reply_done(&r);
        return status;
    }
    json_object *items = json_object_new_array();
    int status = 0;
    if (!items) {
        fprintf(stderr, "stokectl %s: out of memory\n", cmd);
        return 1;
    }
    for (int i = first; i < argc; i++) {
        const char *name = function_name_arg(cmd, argv[i]);
        if (!name) {
            status = 1;
            continue;
        }
        char path[128], what[128];
        snprintf(path, sizeof(path), "/api/v1/functions/%s", name);
        snprintf(what, sizeof(what), "function/%s", name);
        if (client_request(c, "GET", path, NULL, 0, NULL, &r) < 0) {
            json_object_put(items);
            return 1;
        }
        if (r.status == 200 && r.json)
            json_object_array_add(items, json_object_get(r.json)); /* steals the new ref */
        else {
            client_print_error(c, what, &r);
            status = 1;
        }
        reply_done(&r);
    }
    *ret = items;
    return status;
}

static int parse_format(const char *s, enum format *ret)
{
    if (strcmp(s, "table") == 0)
        *ret = FMT_TABLE;
    else if (strcmp(s, "json") == 0)
        *ret = FMT_JSON;
    else if (strcmp(s, "yaml") == 0)
        *ret = FMT_YAML;
    else
        return -EINVAL;
    return 0;
}

static void u64_cell(char *buf, size_t size, int64_t v)
{
    if (v < 0)
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%" PRId64, v);
}

static int print_table(json_object *items)
{
    static const char *const header[] = {"NAME", "READY",  "PAUSED",   "STOPPED", "MIN",
                                         "MAX",  "TARGET", "REVISION", "IMAGE"};
    struct table t;
    int r = 0;
    table_init(&t, 9, header);
    for (size_t i = 0; i < json_object_array_length(items) && r == 0; i++) {
        json_object *fn = json_object_array_get_idx(items, i);
        json_object *st = jget(fn, "status"), *spec = jget(fn, "spec");
        json_object *scale = jget(spec, "scale");
        char ready[48], paused[24], stopped[24], min[24], max[24], target[24];
        snprintf(ready, sizeof(ready), "%" PRId64 "/%" PRId64, jint(st, "ready", 0),
                 jint(st, "desired", 0));
        u64_cell(paused, sizeof(paused), jint(st, "paused", -1));
        u64_cell(stopped, sizeof(stopped), jint(st, "stopped", -1));
        u64_cell(min, sizeof(min), jint(scale, "min", -1));
        int64_t mx = jint(scale, "max", -1);
        u64_cell(max, sizeof(max), mx == 0 ? -1 : mx); /* 0 = unbounded */
        u64_cell(target, sizeof(target), jint(scale, "target", -1));
        const char *row[] = {jstr(fn, "name", "?"),
                             ready,
                             paused,
                             stopped,
                             min,
                             max,
                             target,
                             jstr(st, "revision", NULL),
                             jstr(spec, "image", NULL)};
        r = table_add(&t, row);
    }
    if (r == 0)
        table_print(&t, stdout);
    table_done(&t);
    return r;
}

int cmd_get(struct globals *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        COMMON_LONGOPTS,
    };
    enum format fmt = FMT_TABLE;
    struct client c = {0};
    json_object *items = NULL;
    int status;

    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":o:h", longopts, NULL)) != -1) {
        if (opt == 'o') {
            if (parse_format(optarg, &fmt) < 0)
                return usage_error("get", "-o %s: expected table, json or yaml", optarg);
            continue;
        }
        status = common_option(g, "get", opt, argv);
        if (status >= 0)
            return status;
    }
    /* kubectl habits: "get functions" and "get function NAME". */
    int first = first_name_arg(argc, argv);
    if (connect_client(g, &c) != 0)
        return 1;
    status = fetch_functions(&c, "get", first, argc, argv, &items);
    if (!items)
        goto out;
    size_t n = json_object_array_length(items);
    int r = 0;
    if (fmt == FMT_TABLE) {
        if (n == 0 && first >= argc)
            fprintf(stderr, "No functions.\n");
        else if (n > 0)
            r = print_table(items);
    } else {
        /* One named function: its object; otherwise a list, as the API's. */
        json_object *doc = NULL;
        if (first + 1 == argc && n == 1) {
            doc = json_object_get(json_object_array_get_idx(items, 0));
        } else if (first + 1 != argc) {
            doc = json_object_new_object();
            if (doc)
                json_object_object_add(doc, "items", json_object_get(items));
        }
        if (doc) {
            r = fmt == FMT_JSON ? output_json(doc, stdout) : output_yaml(doc, stdout);
            json_object_put(doc);
        }
    }
    if (r < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "stokectl get: writing the output: %s\n", strerror(r < 0 ? -r : errno));
        status = 1;
    }
out:
    json_object_put(items);
    client_done(&c);
    return status;
}

static void field(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void field(const char *label, const char *fmt, ...)
{
    va_list ap;
    printf("%-14s", label);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

static const char *or_dash(const char *s)
{
    return s && s[0] ? s : "-";
}

/* A duration of the spec ("300s", "10ms") the short way ("5m"); as sent
 * when it does not parse. Returns `buf`. */
static const char *dur(json_object *obj, const char *key, char *buf, size_t size)
{
    const char *s = jstr(obj, key, NULL);
    uint64_t ms;
    if (s && stoke_parse_duration(s, &ms) == 0)
        format_ms(ms, buf, size);
    else
        snprintf(buf, size, "%s", or_dash(s));
    return buf;
}

static void describe_spec(json_object *spec)
{
    char d1[32], d2[32], d3[32];
    json_object *scale = jget(spec, "scale"), *queue = jget(spec, "queue");
    json_object *res = jget(spec, "resources"), *rd = jget(spec, "readiness");
    field("Image:", "%s", or_dash(jstr(spec, "image", NULL)));
    field("Port:", "%" PRId64, jint(spec, "port", 0));
    json_object *env = jget(spec, "env");
    if (env && json_object_is_type(env, json_type_object) && json_object_object_length(env) > 0) {
        const char *label = "Env:";
        json_object_object_foreach(env, k, v)
        {
            field(label, "%s=%s", k,
                  json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                           : json_object_to_json_string(v));
            label = "";
        }
    } else {
        field("Env:", "-");
    }
    int64_t max = jint(scale, "max", 0), cc = jint(scale, "containerConcurrency", 0);
    char maxs[24], ccs[24];
    snprintf(maxs, sizeof(maxs), "%" PRId64, max);
    snprintf(ccs, sizeof(ccs), "%" PRId64, cc);
    field("Scale:", "min %" PRId64 ", max %s, initial %" PRId64, jint(scale, "min", 0),
          max == 0 ? "unbounded" : maxs, jint(scale, "initial", 0));
    field("", "target %" PRId64 " in flight per replica at %" PRId64 "%%, containerConcurrency %s",
          jint(scale, "target", 0), jint(scale, "utilization", 0), cc == 0 ? "unlimited" : ccs);
    field("", "window %s, panic window %" PRId64 "%%, panic threshold %" PRId64 "%%",
          dur(scale, "window", d1, sizeof(d1)), jint(scale, "panicWindowPercent", 0),
          jint(scale, "panicThresholdPercent", 0));
    field("", "scale to zero after %s (+ delay %s)", dur(scale, "scaleToZeroGrace", d1, sizeof(d1)),
          dur(scale, "scaleDownDelay", d2, sizeof(d2)));
    field("", "idle: %s, stop after %s, remove after %s, precreated %" PRId64,
          or_dash(jstr(scale, "idle", NULL)), dur(scale, "stopAfter", d2, sizeof(d2)),
          dur(scale, "removeAfter", d3, sizeof(d3)), jint(scale, "precreated", 0));
    field("Timeout:", "%s per request", dur(spec, "timeout", d1, sizeof(d1)));
    field("Queue:", "%" PRId64 " requests, %s", jint(queue, "max", 0),
          dur(queue, "timeout", d1, sizeof(d1)));
    json_object *as = json_object_object_get(spec, "async");
    if (as)
        field("Async:",
              "%" PRId64 " retries from %s, max age %s, %" PRId64 " in flight, body %" PRId64
              " bytes",
              jint(as, "retries", 0), dur(as, "backoff", d1, sizeof(d1)),
              dur(as, "maxEventAge", d2, sizeof(d2)), jint(as, "maxInFlight", 0),
              jint(as, "maxBody", 0));
    char mem[32] = "-";
    const char *ms = jstr(res, "memory", NULL);
    uint64_t bytes;
    if (ms && stoke_parse_u64(ms, &bytes) == 0)
        format_bytes(bytes, mem, sizeof(mem));
    else if (ms)
        snprintf(mem, sizeof(mem), "%s", ms);
    field("Resources:", "memory %s, cpu %s, pids %" PRId64, mem, or_dash(jstr(res, "cpu", NULL)),
          jint(res, "pids", 0));
    const char *rpath = jstr(rd, "path", NULL);
    field("Readiness:", "%s%s, every %s (backing off)", rpath ? "HTTP GET " : "TCP connect",
          rpath ? rpath : "", dur(rd, "period", d1, sizeof(d1)));
    field("Root fs:", "%s", jbool(spec, "readOnlyRootFilesystem", 1) ? "read-only" : "writable");
    const char *net = jstr(spec, "network", NULL);
    field("Network:", "%s",
          !net                       ? "-"
          : strcmp(net, "host") == 0 ? "host (shares the host's network: not isolated)"
                                     : "bridge (own namespace, port on 127.0.0.1)");
}

/* Each schedule with its next run, computed here from the spec (the same
 * cron code stoke-events runs; stoke-events' own clock decides). */
static void describe_schedules(json_object *spec)
{
    json_object *a = jget(spec, "schedules");
    if (!a || !json_object_is_type(a, json_type_array) || json_object_array_length(a) == 0)
        return;
    const char *label = "Schedules:";
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *o = json_object_array_get_idx(a, i);
        const char *name = or_dash(jstr(o, "name", NULL)), *expr = jstr(o, "schedule", NULL);
        const char *zone = jstr(o, "timeZone", "UTC");
        char next[64] = "-", err[160];
        struct stoke_cron c;
        bool suspend = jbool(o, "suspend", 0);
        if (suspend) {
            snprintf(next, sizeof(next), "none (suspended)");
        } else if (expr && stoke_cron_parse(expr, zone, &c, err, sizeof(err)) == 0) {
            int64_t t = stoke_cron_next(&c, (int64_t)time(NULL));
            struct tm tm;
            time_t tt = (time_t)t;
            if (t >= 0 && gmtime_r(&tt, &tm))
                strftime(next, sizeof(next), "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        int64_t deadline = jint(o, "startingDeadlineSeconds", 0);
        char dl[48] = "";
        if (deadline)
            snprintf(dl, sizeof(dl), ", starting deadline %" PRId64 "s", deadline);
        field(label, "%s: \"%s\" in %s, next run %s", name, or_dash(expr), zone, next);
        field("", "  POST %s (%s), concurrency %s%s", or_dash(jstr(o, "path", NULL)),
              or_dash(jstr(o, "contentType", NULL)), or_dash(jstr(o, "concurrencyPolicy", NULL)),
              dl);
        label = "";
    }
}

static void describe_replicas(json_object *st)
{
    json_object *reps = jget(st, "replicas");
    size_t n =
        reps && json_object_is_type(reps, json_type_array) ? json_object_array_length(reps) : 0;
    if (n == 0) {
        field("Replicas:", "none");
        return;
    }
    static const char *const header[] = {"  NAME", "STATE", "REVISION", "PORT", "AGE"};
    struct table t;
    table_init(&t, 5, header);
    for (size_t i = 0; i < n; i++) {
        json_object *rep = json_object_array_get_idx(reps, i);
        char name[160], port[24], age[32];
        snprintf(name, sizeof(name), "  %s", jstr(rep, "name", "?"));
        u64_cell(port, sizeof(port), jint(rep, "port", -1));
        int64_t age_ms = jint(rep, "age_ms", -1);
        if (age_ms >= 0)
            format_ms((uint64_t)age_ms, age, sizeof(age));
        else
            snprintf(age, sizeof(age), "-");
        const char *row[] = {name, jstr(rep, "state", NULL), jstr(rep, "revision", NULL), port,
                             age};
        if (table_add(&t, row) < 0)
            break;
    }
    field("Replicas:", "%zu", n);
    table_print(&t, stdout);
    table_done(&t);
}

static void describe_status(json_object *st)
{
    if (!st) {
        field("Status:", "unknown (the server sent none)");
        return;
    }
    field("Ready:", "%s, %" PRId64 "/%" PRId64 " replicas ready%s",
          jbool(st, "ready_condition", 0) ? "yes" : "no", jint(st, "ready", 0),
          jint(st, "desired", 0), jbool(st, "panic", 0) ? ", panic mode" : "");
    field("",
          "starting %" PRId64 ", retiring %" PRId64 ", paused %" PRId64 ", stopped %" PRId64
          ", created %" PRId64,
          jint(st, "starting", 0), jint(st, "retiring", 0), jint(st, "paused", 0),
          jint(st, "stopped", 0), jint(st, "created", 0));
    /* Only when the backend cannot do what the spec's `idle` asks. */
    const char *idle_note = jstr(st, "idle_note", NULL);
    if (idle_note)
        field("Idle:", "%s on the %s backend: %s", or_dash(jstr(st, "idle", NULL)),
              or_dash(jstr(st, "backend", NULL)), idle_note);
    describe_replicas(st);
    json_object *tiers = jget(st, "cold_starts_by_tier");
    field("Cold starts:",
          "%" PRId64 " (paused %" PRId64 ", stopped %" PRId64 ", created %" PRId64 ", new %" PRId64
          ")",
          jint(st, "cold_starts", 0), jint(tiers, "paused", 0), jint(tiers, "stopped", 0),
          jint(tiers, "created", 0), jint(tiers, "new", 0));
    const char *err = jstr(st, "last_error", "");
    if (err[0]) {
        char backoff[32];
        format_ms((uint64_t)(jint(st, "backoff_ms", 0) > 0 ? jint(st, "backoff_ms", 0) : 0),
                  backoff, sizeof(backoff));
        field("Last error:", "%s", err);
        field("", "%" PRId64 " failure%s in a row, next try in %s", jint(st, "failures", 0),
              jint(st, "failures", 0) == 1 ? "" : "s", backoff);
    } else {
        field("Last error:", "none");
    }
    if (jint(st, "replica_failures", 0) > 0)
        field("Failures:", "%" PRId64 " (%" PRId64 " OOM-killed); last: %s",
              jint(st, "replica_failures", 0), jint(st, "oom_kills", 0),
              jstr(st, "last_failure", ""));
    char mem[32];
    format_bytes((uint64_t)(jint(st, "memory_bytes", 0) > 0 ? jint(st, "memory_bytes", 0) : 0), mem,
                 sizeof(mem));
    field("Traffic:", "%" PRId64 " requests, %.2f/s, concurrency %.2f", jint(st, "requests", 0),
          jdouble(st, "requests_per_second", 0), jdouble(st, "concurrency", 0));
    const char *usage_note = jstr(st, "usage_note", NULL);
    if (usage_note) {
        field("Usage:", "cpu -, memory -, %.2f GB-s", jdouble(st, "gb_seconds", 0));
        field("", "%s", usage_note);
    } else {
        field("Usage:", "cpu %.2f s, memory %s, %.2f GB-s", jdouble(st, "cpu_seconds", 0), mem,
              jdouble(st, "gb_seconds", 0));
    }
}

int cmd_describe(struct globals *g, int argc, char **argv)
{
    struct client c = {0};
    json_object *items = NULL;
    int status;

    status = parse_common_options(g, "describe", argc, argv);
    if (status >= 0)
        return status;
    int first = first_name_arg(argc, argv);
    if (first >= argc)
        return usage_error("describe", "NAME is required");
    if (connect_client(g, &c) != 0)
        return 1;
    status = fetch_functions(&c, "describe", first, argc, argv, &items);
    for (size_t i = 0; items && i < json_object_array_length(items); i++) {
        json_object *fn = json_object_array_get_idx(items, i);
        json_object *st = jget(fn, "status");
        if (i > 0)
            printf("\n");
        field("Name:", "%s", jstr(fn, "name", "?"));
        field("Revision:", "%s", or_dash(jstr(st, "revision", NULL)));
        describe_spec(jget(fn, "spec"));
        describe_schedules(jget(fn, "spec"));
        describe_status(st);
    }
    json_object_put(items);
    client_done(&c);
    return status;
}

int cmd_top(struct globals *g, int argc, char **argv)
{
    static const char *const header[] = {"NAME",     "REPLICAS", "REQ/S",  "CONCURRENCY",
                                         "REQUESTS", "CPU(s)",   "MEMORY", "GB-S"};
    struct client c = {0};
    json_object *items = NULL;
    int status;

    status = parse_common_options(g, "top", argc, argv);
    if (status >= 0)
        return status;
    if (connect_client(g, &c) != 0)
        return 1;
    status = fetch_functions(&c, "top", optind, argc, argv, &items);
    size_t n = items ? json_object_array_length(items) : 0;
    if (items && n == 0 && optind >= argc)
        fprintf(stderr, "No functions.\n");
    if (n > 0) {
        struct table t;
        table_init(&t, 8, header);
        for (size_t i = 0; i < n; i++) {
            json_object *fn = json_object_array_get_idx(items, i);
            json_object *st = jget(fn, "status");
            char reps[48], rps[32], conc[32], reqs[32], cpu[32], mem[32], gbs[32];
            snprintf(reps, sizeof(reps), "%" PRId64 "/%" PRId64, jint(st, "ready", 0),
                     jint(st, "desired", 0));
            snprintf(rps, sizeof(rps), "%.1f", jdouble(st, "requests_per_second", 0));
            snprintf(conc, sizeof(conc), "%.2f", jdouble(st, "concurrency", 0));
            snprintf(reqs, sizeof(reqs), "%" PRId64, jint(st, "requests", 0));
            snprintf(cpu, sizeof(cpu), "%.2f", jdouble(st, "cpu_seconds", 0));
            int64_t mb = jint(st, "memory_bytes", 0);
            format_bytes(mb > 0 ? (uint64_t)mb : 0, mem, sizeof(mem));
            if (jstr(st, "usage_note", NULL)) { /* not measured on this backend */
                snprintf(cpu, sizeof(cpu), "-");
                snprintf(mem, sizeof(mem), "-");
            }
            snprintf(gbs, sizeof(gbs), "%.2f", jdouble(st, "gb_seconds", 0));
            const char *row[] = {jstr(fn, "name", "?"), reps, rps, conc, reqs, cpu, mem, gbs};
            if (table_add(&t, row) < 0)
                break;
        }
        table_print(&t, stdout);
        table_done(&t);
    }
    json_object_put(items);
    client_done(&c);
    return status;
}
