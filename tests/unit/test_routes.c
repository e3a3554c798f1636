/* The router, the route table's wire format and stoke_addr parsing. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/routes.h"

struct match_case {
    const char *host;
    const char *target;
    int ret;
    const char *name;
    const char *path;
};

static const struct match_case match_cases[] = {
    {"hello.localhost", "/", 0, "hello", "/"},
    {"hello.localhost:8080", "/a/b?c=d", 0, "hello", "/a/b?c=d"},
    {"HELLO.LocalHost", "/", 0, "HELLO", "/"},
    {"hello.localhost.", "/x", 0, "hello", "/x"},
    {"127.0.0.1:8080", "/fn/hello/", 0, "hello", "/"},
    {"127.0.0.1:8080", "/fn/hello/api/v1?q=1", 0, "hello", "/api/v1?q=1"},
    {"127.0.0.1:8080", "/fn/hello", 0, "hello", ""},
    {"127.0.0.1:8080", "/fn/hello?q=1", 0, "hello", "?q=1"},
    {"other.localhost", "/fn/hello/x", 0, "hello", "/x"}, /* the path wins */
    {NULL, "/fn/hello/x", 0, "hello", "/x"},
    {"127.0.0.1:8080", "/fn/", -ENOENT, NULL, NULL},
    {"127.0.0.1:8080", "/fn", -ENOENT, NULL, NULL},
    {"127.0.0.1:8080", "/hello", -ENOENT, NULL, NULL},
    {"localhost", "/", -ENOENT, NULL, NULL},
    {".localhost", "/", -ENOENT, NULL, NULL},
    {"hello.localhostx", "/", -ENOENT, NULL, NULL},
    {"hellolocalhost", "/", -ENOENT, NULL, NULL},
    {"[::1]:8080", "/", -ENOENT, NULL, NULL},
    {"", "/", -ENOENT, NULL, NULL},
    {"a.b.localhost", "/", 0, "a.b", "/"}, /* the caller's lookup refuses "a.b" */
};

static void test_match_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
        const struct match_case *mc = &match_cases[i];
        const char *name = NULL, *path = NULL;
        size_t nl = 0, pl = 0;
        int r = stoke_route_match(mc->host, mc->host ? strlen(mc->host) : 0, mc->target,
                                  strlen(mc->target), "localhost", &name, &nl, &path, &pl);
        print_message("case %zu: %s %s\n", i, mc->host ? mc->host : "(none)", mc->target);
        assert_int_equal(r, mc->ret);
        if (r == 0) {
            assert_int_equal(nl, strlen(mc->name));
            assert_memory_equal(name, mc->name, nl);
            assert_int_equal(pl, strlen(mc->path));
            assert_memory_equal(path, mc->path, pl);
        }
    }
}

static struct stoke_route_table sample_table(void)
{
    struct stoke_route_table t = {.gen = 42, .n_routes = 2};
    t.routes = calloc(2, sizeof(*t.routes));
    assert_non_null(t.routes);
    strcpy(t.routes[0].name, "zeta");
    t.routes[0].timeout_ms = 300000;
    t.routes[0].queue_max = 1000;
    t.routes[0].queue_timeout_ms = 60000;
    strcpy(t.routes[1].name, "alpha");
    t.routes[1].timeout_ms = 1000;
    t.routes[1].queue_max = 1;
    t.routes[1].queue_timeout_ms = 500;
    t.routes[1].concurrency_limit = 4;
    t.routes[1].async = (struct stoke_async){
        .retries = 5, .backoff_ms = 250, .max_age_ms = 90000, .max_in_flight = 7, .max_body = 1024};
    t.routes[1].n_endpoints = 2;
    t.routes[1].endpoints = calloc(2, sizeof(struct stoke_addr));
    assert_non_null(t.routes[1].endpoints);
    assert_int_equal(stoke_addr_parse("127.0.0.1:30001", &t.routes[1].endpoints[0]), 0);
    assert_int_equal(stoke_addr_parse("[::1]:30002", &t.routes[1].endpoints[1]), 0);
    return t;
}

/* Each of `bad` as member `key` of an entry: the table is refused. */
static void refuses_member(const char *key, const char *const *bad, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char msg[1024];
        snprintf(msg, sizeof(msg),
                 "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\","
                 "\"timeout_ms\":1,\"queue_max\":1,\"queue_timeout_ms\":1,"
                 "\"concurrency_limit\":0,\"endpoints\":[],\"%s\":%s}]}",
                 key, bad[i]);
        struct stoke_route_table o;
        if (stoke_route_table_parse(msg, strlen(msg), &o) != -EINVAL) {
            print_error("bad %s %zu accepted\n", key, i);
            fail();
        }
    }
}

/* Triggers travel in an entry (for stoke-events), copied by a share, and
 * are validated as the spec validates them. */
static void test_triggers_roundtrip(void **state)
{
    (void)state;
    struct stoke_route_table t = sample_table(), back;
    struct stoke_trigger in[2] = {
        {.name = "orders",
         .address = "127.0.0.1:6379",
         .stream = "orders",
         .group = "stoke-alpha",
         .start_from = STOKE_START_NEW,
         .path = "/",
         .target_backlog = 10},
        {.name = "b",
         .address = "unix:/run/r.sock",
         .stream = "s",
         .group = "g",
         .password_file = "/etc/pw",
         .start_from = STOKE_START_ALL,
         .path = "/x",
         .target_backlog = 1},
    };
    assert_int_equal(stoke_route_triggers_dup(in, 2, &t.routes[1].triggers), 0);
    t.routes[1].n_triggers = 2;
    char *line = stoke_route_table_format(&t);
    assert_non_null(line);
    assert_int_equal(stoke_route_table_parse(line, strlen(line), &back), 0);
    const struct stoke_route *r = &back.routes[0];
    assert_int_equal(r->n_triggers, 2);
    assert_string_equal(r->triggers[0].name, "orders");
    assert_string_equal(r->triggers[0].address, "127.0.0.1:6379");
    assert_string_equal(r->triggers[0].group, "stoke-alpha");
    assert_null(r->triggers[0].password_file);
    assert_int_equal(r->triggers[0].start_from, STOKE_START_NEW);
    assert_int_equal(r->triggers[0].target_backlog, 10);
    assert_string_equal(r->triggers[1].password_file, "/etc/pw");
    assert_int_equal(r->triggers[1].start_from, STOKE_START_ALL);
    assert_string_equal(r->triggers[1].path, "/x");
    assert_int_equal(back.routes[1].n_triggers, 0);
    /* a share keeps its own copy */
    struct stoke_route sh;
    assert_int_equal(stoke_route_share(r, 1, 3, &sh), 0);
    assert_int_equal(sh.n_triggers, 2);
    assert_ptr_not_equal(sh.triggers, r->triggers);
    assert_string_equal(sh.triggers[1].stream, "s");
    stoke_route_done(&sh);
    stoke_route_table_done(&back);
    free(line);
    stoke_route_table_done(&t);

    static const char *const bad[] = {
        "[{\"name\":\"A\",\"address\":\"h:1\",\"stream\":\"s\",\"group\":\"g\","
        "\"path\":\"/\",\"target_backlog\":1}]",
        "[{\"name\":\"a\",\"address\":\"h\",\"stream\":\"s\",\"group\":\"g\","
        "\"path\":\"/\",\"target_backlog\":1}]",
        "[{\"name\":\"a\",\"address\":\"h:1\",\"stream\":\"s s\",\"group\":\"g\","
        "\"path\":\"/\",\"target_backlog\":1}]",
        "[{\"name\":\"a\",\"address\":\"h:1\",\"stream\":\"s\",\"group\":\"g\","
        "\"path\":\"x\",\"target_backlog\":1}]",
        "[{\"name\":\"a\",\"address\":\"h:1\",\"stream\":\"s\",\"group\":\"g\","
        "\"path\":\"/\",\"target_backlog\":0}]",
        "[{\"name\":\"a\",\"address\":\"h:1\",\"stream\":\"s\",\"group\":\"g\","
        "\"path\":\"/\",\"target_backlog\":1,\"start_from\":\"1\"}]",
        "[{\"name\":\"a\",\"address\":\"h:1\",\"stream\":\"s\",\"group\":\"g\","
        "\"path\":\"/\",\"target_backlog\":1},{\"name\":\"a\",\"address\":\"h:1\","
        "\"stream\":\"s\",\"group\":\"g\",\"path\":\"/\",\"target_backlog\":1}]",
        "[{\"name\":\"a\",\"address\":\"h:1\",\"group\":\"g\",\"path\":\"/\","
        "\"target_backlog\":1}]",
        "{}",
        "[1]",
    };
    refuses_member("triggers", bad, sizeof(bad) / sizeof(bad[0]));
}

/* Schedules in a route entry: as the spec has them, back; a share keeps
 * its own copy; what the spec refuses is refused. */
static void test_schedules_roundtrip(void **state)
{
    (void)state;
    struct stoke_route_table t = sample_table(), back;
    struct stoke_schedule in[2] = {
        {.name = "nightly",
         .schedule = "30 2 * * *",
         .time_zone = "Europe/Berlin",
         .data = "{\"a\": \"b\\n\"}",
         .content_type = "application/json",
         .path = "/r?x=1",
         .policy = STOKE_POLICY_FORBID,
         .starting_deadline_s = 600,
         .suspend = true},
        {.name = "b", .schedule = "@hourly", .content_type = "text/plain", .path = "/"},
    };
    assert_int_equal(stoke_schedules_dup(in, 2, &t.routes[0].schedules), 0);
    t.routes[0].n_schedules = 2;
    char *line = stoke_route_table_format(&t);
    assert_non_null(line);
    assert_int_equal(stoke_route_table_parse(line, strlen(line), &back), 0);
    const struct stoke_route *r =
        stoke_route_table_find(&back, t.routes[0].name, strlen(t.routes[0].name));
    assert_non_null(r);
    assert_int_equal(r->n_schedules, 2);
    assert_true(stoke_schedule_equal(&r->schedules[0], &in[0]));
    assert_true(stoke_schedule_equal(&r->schedules[1], &in[1]));
    assert_null(r->schedules[1].time_zone);
    assert_null(r->schedules[1].data);
    struct stoke_route sh;
    assert_int_equal(stoke_route_share(r, 0, 2, &sh), 0);
    assert_int_equal(sh.n_schedules, 2);
    assert_ptr_not_equal(sh.schedules, r->schedules);
    assert_true(stoke_schedule_equal(&sh.schedules[0], &in[0]));
    stoke_route_done(&sh);
    stoke_route_table_done(&back);
    free(line);
    stoke_route_table_done(&t);

    static const char *const bad[] = {
        "[{\"name\":\"A\",\"schedule\":\"@daily\",\"content_type\":\"a\",\"path\":\"/\"}]",
        "[{\"name\":\"a\",\"schedule\":\"61 * * * *\",\"content_type\":\"a\",\"path\":\"/\"}]",
        "[{\"name\":\"a\",\"content_type\":\"a\",\"path\":\"/\"}]",
        "[{\"name\":\"a\",\"schedule\":\"@daily\",\"time_zone\":\"Mars/X\","
        "\"content_type\":\"a\",\"path\":\"/\"}]",
        "[{\"name\":\"a\",\"schedule\":\"@daily\",\"content_type\":\"a b\",\"path\":\"/\"}]",
        "[{\"name\":\"a\",\"schedule\":\"@daily\",\"content_type\":\"a\",\"path\":\"x\"}]",
        "[{\"name\":\"a\",\"schedule\":\"@daily\",\"content_type\":\"a\",\"path\":\"/\","
        "\"policy\":\"forbid\"}]",
        "[{\"name\":\"a\",\"schedule\":\"@daily\",\"content_type\":\"a\",\"path\":\"/\","
        "\"starting_deadline_s\":-1}]",
        "[{\"name\":\"a\",\"schedule\":\"@daily\",\"content_type\":\"a\",\"path\":\"/\","
        "\"suspend\":1}]",
        "[{\"name\":\"a\",\"schedule\":\"@daily\",\"content_type\":\"a\",\"path\":\"/\"},"
        "{\"name\":\"a\",\"schedule\":\"@daily\",\"content_type\":\"a\",\"path\":\"/\"}]",
        "{}",
        "[1]",
    };
    refuses_member("schedules", bad, sizeof(bad) / sizeof(bad[0]));
}

static void test_table_roundtrip(void **state)
{
    (void)state;
    struct stoke_route_table t = sample_table(), back;
    char *line = stoke_route_table_format(&t);
    assert_non_null(line);
    assert_null(strchr(line, '\n'));
    assert_int_equal(stoke_route_table_parse(line, strlen(line), &back), 0);
    assert_int_equal(back.gen, 42);
    assert_int_equal(back.n_routes, 2);
    /* Sorted by name on parse. */
    assert_string_equal(back.routes[0].name, "alpha");
    assert_string_equal(back.routes[1].name, "zeta");
    /* The async block travels whole (max_in_flight 0: the default). */
    assert_int_equal(back.routes[0].async.retries, 5);
    assert_int_equal(back.routes[0].async.backoff_ms, 250);
    assert_int_equal(back.routes[0].async.max_age_ms, 90000);
    assert_int_equal(back.routes[0].async.max_in_flight, 7);
    assert_int_equal(back.routes[0].async.max_body, 1024);
    assert_int_equal(back.routes[1].async.max_in_flight, 10);
    /* A controller from before async sends none: the defaults. */
    static const char old[] = "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\","
                              "\"timeout_ms\":1,\"queue_max\":1,\"queue_timeout_ms\":1,"
                              "\"concurrency_limit\":0,\"endpoints\":[]}]}";
    struct stoke_route_table o;
    assert_int_equal(stoke_route_table_parse(old, strlen(old), &o), 0);
    assert_int_equal(o.routes[0].async.retries, 2);
    assert_int_equal(o.routes[0].async.backoff_ms, 60000);
    stoke_route_table_done(&o);
    assert_int_equal(back.routes[0].concurrency_limit, 4);
    assert_int_equal(back.routes[0].queue_max, 1);
    assert_int_equal(back.routes[0].queue_timeout_ms, 500);
    assert_int_equal(back.routes[0].n_endpoints, 2);
    char a[80];
    stoke_addr_format(&back.routes[0].endpoints[1], a, sizeof(a));
    assert_string_equal(a, "[::1]:30002");
    assert_int_equal(back.routes[1].n_endpoints, 0);

    assert_ptr_equal(stoke_route_table_find(&back, "zeta", 4), &back.routes[1]);
    assert_ptr_equal(stoke_route_table_find(&back, "alpha", 5), &back.routes[0]);
    assert_null(stoke_route_table_find(&back, "alph", 4));
    assert_null(stoke_route_table_find(&back, "zetaa", 5));
    assert_null(stoke_route_table_find(&back, "beta", 4));

    free(line);
    stoke_route_table_done(&t);
    stoke_route_table_done(&back);
}

static const char *const bad_tables[] = {
    "",
    "[]",
    "{}",
    "{\"op\":\"poke\",\"gen\":1,\"functions\":[]}",
    "{\"op\":\"routes\",\"functions\":[]}",
    "{\"op\":\"routes\",\"gen\":-1,\"functions\":[]}",
    "{\"op\":\"routes\",\"gen\":1,\"functions\":{}}",
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[1]}",
    /* bad name */
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"Bad_Name\",\"timeout_ms\":1,"
    "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":0,\"endpoints\":[]}]}",
    /* a host name, not an IP literal */
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\",\"timeout_ms\":1,"
    "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":0,"
    "\"endpoints\":[\"example.com:80\"]}]}",
    /* a unix socket is no replica address */
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\",\"timeout_ms\":1,"
    "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":0,"
    "\"endpoints\":[\"unix:/tmp/x\"]}]}",
    /* missing field */
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\",\"timeout_ms\":1,"
    "\"queue_timeout_ms\":1,\"concurrency_limit\":0,\"endpoints\":[]}]}",
    /* wrong type */
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\",\"timeout_ms\":\"1\","
    "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":0,\"endpoints\":[]}]}",
    /* duplicate names */
    "{\"op\":\"routes\",\"gen\":1,\"functions\":["
    "{\"name\":\"a\",\"timeout_ms\":1,\"queue_max\":1,\"queue_timeout_ms\":1,"
    "\"concurrency_limit\":0,\"endpoints\":[\"127.0.0.1:1\"]},"
    "{\"name\":\"a\",\"timeout_ms\":1,\"queue_max\":1,\"queue_timeout_ms\":1,"
    "\"concurrency_limit\":0,\"endpoints\":[\"127.0.0.1:2\"]}]}",
    /* port out of range */
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\",\"timeout_ms\":1,"
    "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":0,"
    "\"endpoints\":[\"127.0.0.1:65536\"]}]}",
    "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"a\"",
};

static void test_table_parse_refuses(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_tables) / sizeof(bad_tables[0]); i++) {
        struct stoke_route_table t;
        print_message("bad table %zu\n", i);
        assert_int_equal(stoke_route_table_parse(bad_tables[i], strlen(bad_tables[i]), &t),
                         -EINVAL);
        assert_null(t.routes);
        assert_int_equal(t.n_routes, 0);
    }
}

/* An update formats and parses back: entries (shares kept) and removals,
 * and refuses what a table would, plus a name twice. */
static void test_update_roundtrip(void **state)
{
    (void)state;
    struct stoke_route r = {.name = "hello",
                            .timeout_ms = 1000,
                            .queue_max = 3,
                            .queue_timeout_ms = 500,
                            .concurrency_limit = 4,
                            .n_endpoints = 1};
    struct stoke_addr ep;
    uint32_t share = 2;
    assert_int_equal(stoke_addr_parse("127.0.0.1:31001", &ep), 0);
    r.endpoints = &ep;
    r.shares = &share;
    const char *removed[] = {"gone", "old"};
    char *line = stoke_route_update_format(42, &r, 1, removed, 2);
    assert_non_null(line);
    struct stoke_route_update u;
    assert_int_equal(stoke_route_update_parse(line, strlen(line), &u), 0);
    assert_int_equal(u.gen, 42);
    assert_int_equal(u.n_routes, 1);
    assert_string_equal(u.routes[0].name, "hello");
    assert_int_equal(u.routes[0].queue_max, 3);
    assert_int_equal(u.routes[0].n_endpoints, 1);
    assert_non_null(u.routes[0].shares);
    assert_int_equal(u.routes[0].shares[0], 2);
    assert_int_equal(u.n_removed, 2);
    assert_string_equal(u.removed[0], "gone");
    assert_string_equal(u.removed[1], "old");
    stoke_route_update_done(&u);
    assert_null(u.routes);
    /* A table is not an update, nor an update a table. */
    struct stoke_route_table t;
    assert_int_equal(stoke_route_table_parse(line, strlen(line), &t), -EINVAL);
    free(line);

    static const char *const bad[] = {
        "{\"op\":\"routes\",\"gen\":1,\"functions\":[]}",
        "{\"op\":\"update\",\"functions\":[]}",
        "{\"op\":\"update\",\"gen\":1,\"functions\":[],\"removed\":[\"Bad\"]}",
        "{\"op\":\"update\",\"gen\":1,\"functions\":[],\"removed\":\"x\"}",
        "{\"op\":\"update\",\"gen\":1,\"functions\":[],\"removed\":[\"a\",\"a\"]}",
        "{\"op\":\"update\",\"gen\":1,\"functions\":[{\"name\":\"a\",\"timeout_ms\":1,"
        "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":0,\"endpoints\":[]}],"
        "\"removed\":[\"a\"]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(stoke_route_update_parse(bad[i], strlen(bad[i]), &u), -EINVAL);
        assert_null(u.routes);
        assert_null(u.removed);
    }
    const char *ok = "{\"op\":\"update\",\"gen\":2,\"functions\":[]}";
    assert_int_equal(stoke_route_update_parse(ok, strlen(ok), &u), 0);
    assert_int_equal(u.n_routes + u.n_removed, 0);
    stoke_route_update_done(&u);
}

static void test_addr_parse(void **state)
{
    (void)state;
    struct stoke_addr a;
    char buf[128];
    assert_int_equal(stoke_addr_parse("127.0.0.1:8080", &a), 0);
    stoke_addr_format(&a, buf, sizeof(buf));
    assert_string_equal(buf, "127.0.0.1:8080");
    assert_int_equal(stoke_addr_parse("[::1]:9", &a), 0);
    stoke_addr_format(&a, buf, sizeof(buf));
    assert_string_equal(buf, "[::1]:9");
    assert_int_equal(stoke_addr_parse("unix:/run/stoke/ctl.sock", &a), 0);
    assert_true(a.is_unix);
    assert_string_equal(a.path, "/run/stoke/ctl.sock");
    assert_int_equal(stoke_addr_parse("unix:///var/run/docker.sock", &a), 0);
    assert_string_equal(a.path, "/var/run/docker.sock");

    static const char *const bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:x",
        "127.0.0.1:65536",
        "localhost:80",
        "::1:80",
        "[::1]80",
        "[::1]:",
        "unix:",
        "unix:relative",
        "1.2.3.4:-1",
        "1.2.3.4: 80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        print_message("bad addr %s\n", bad[i]);
        assert_int_equal(stoke_addr_parse(bad[i], &a), -EINVAL);
    }
}

/* The shares of any total over any number of parts sum to the total, and
 * differ by at most one. */
static void test_share_sums(void **state)
{
    (void)state;
    for (uint32_t total = 0; total < 40; total++) {
        for (unsigned n = 1; n < 9; n++) {
            for (unsigned start = 0; start < 2 * n; start++) {
                uint32_t sum = 0, lo = UINT32_MAX, hi = 0;
                for (unsigned i = 0; i < n; i++) {
                    uint32_t s = stoke_share(total, n, i, start);
                    sum += s;
                    lo = s < lo ? s : lo;
                    hi = s > hi ? s : hi;
                }
                assert_int_equal(sum, total);
                assert_true(hi - lo <= 1);
            }
        }
    }
    /* One slot over three activators: the one the start names. */
    assert_int_equal(stoke_share(1, 3, 2, 5), 1);
    assert_int_equal(stoke_share(1, 3, 0, 5), 0);
}

/* containerConcurrency 1 over two activators: each replica is listed by
 * exactly one of them, with one slot; queue.max 3 is split 2 + 1. Pods
 * on one port spread by their IPs. */
static void test_route_share(void **state)
{
    (void)state;
    struct stoke_addr eps[3];
    assert_int_equal(stoke_addr_parse("127.0.0.1:30000", &eps[0]), 0);
    assert_int_equal(stoke_addr_parse("127.0.0.1:30001", &eps[1]), 0);
    assert_int_equal(stoke_addr_parse("127.0.0.1:30002", &eps[2]), 0);
    struct stoke_route in = {
        .name = "f", .queue_max = 3, .concurrency_limit = 1, .endpoints = eps, .n_endpoints = 3};
    struct stoke_route a, b;
    assert_int_equal(stoke_route_share(&in, 0, 2, &a), 0);
    assert_int_equal(stoke_route_share(&in, 1, 2, &b), 0);
    assert_int_equal(a.queue_max + b.queue_max, 3);
    assert_int_equal(a.n_endpoints + b.n_endpoints, 3);
    /* One IP, consecutive ports: the replicas alternate. */
    assert_int_equal(stoke_share_start(&eps[0]) % 2, stoke_share_start(&eps[2]) % 2);
    assert_int_not_equal(stoke_share_start(&eps[0]) % 2, stoke_share_start(&eps[1]) % 2);
    struct stoke_route *own0 = stoke_share_start(&eps[0]) % 2 == 0 ? &a : &b;
    struct stoke_route *own1 = own0 == &a ? &b : &a;
    assert_int_equal(own0->n_endpoints, 2);
    assert_int_equal(own1->n_endpoints, 1);
    assert_memory_equal(&own1->endpoints[0], &eps[1], sizeof(eps[1]));
    for (size_t j = 0; j < own0->n_endpoints; j++)
        assert_int_equal(own0->shares[j], 1);
    assert_int_equal(own1->shares[0], 1);
    free(a.endpoints);
    free(a.shares);
    free(b.endpoints);
    free(b.shares);

    /* Pods: one port, many IPs: the starts differ (not all to one). */
    struct stoke_addr pod;
    unsigned seen = 0;
    for (int i = 1; i <= 8; i++) {
        char addr[32];
        snprintf(addr, sizeof(addr), "10.0.0.%d:8080", i);
        assert_int_equal(stoke_addr_parse(addr, &pod), 0);
        seen |= 1u << (stoke_share_start(&pod) % 2);
    }
    assert_int_equal(seen, 3);

    /* 5 slots, 2 activators: 3 + 2 on every replica. */
    in.concurrency_limit = 5;
    assert_int_equal(stoke_route_share(&in, 0, 2, &a), 0);
    assert_int_equal(stoke_route_share(&in, 1, 2, &b), 0);
    assert_int_equal(a.n_endpoints, 3);
    assert_int_equal(b.n_endpoints, 3);
    for (size_t j = 0; j < 3; j++)
        assert_int_equal(a.shares[j] + b.shares[j], 5);
    free(a.endpoints);
    free(a.shares);
    free(b.endpoints);
    free(b.shares);

    /* One activator, or no limit: every replica, no shares. */
    assert_int_equal(stoke_route_share(&in, 0, 1, &a), 0);
    assert_null(a.shares);
    assert_int_equal(a.n_endpoints, 3);
    assert_int_equal(a.queue_max, 3);
    free(a.endpoints);
    in.concurrency_limit = 0;
    assert_int_equal(stoke_route_share(&in, 1, 2, &b), 0);
    assert_null(b.shares);
    assert_int_equal(b.n_endpoints, 3);
    free(b.endpoints);

    /* Shares travel in the table and are checked on the way in. */
    in.concurrency_limit = 5;
    assert_int_equal(stoke_route_share(&in, 0, 2, &a), 0);
    struct stoke_route_table t = {.gen = 3, .routes = &a, .n_routes = 1}, back;
    char *line = stoke_route_table_format(&t);
    assert_non_null(line);
    assert_int_equal(stoke_route_table_parse(line, strlen(line), &back), 0);
    assert_non_null(back.routes[0].shares);
    for (size_t j = 0; j < 3; j++)
        assert_int_equal(back.routes[0].shares[j], a.shares[j]);
    stoke_route_table_done(&back);
    free(line);
    free(a.endpoints);
    free(a.shares);
    static const char *const bad[] = {
        "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"f\",\"timeout_ms\":1,"
        "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":2,"
        "\"endpoints\":[\"127.0.0.1:1\"],\"shares\":[3]}]}",
        "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"f\",\"timeout_ms\":1,"
        "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":2,"
        "\"endpoints\":[\"127.0.0.1:1\"],\"shares\":[1,1]}]}",
        "{\"op\":\"routes\",\"gen\":1,\"functions\":[{\"name\":\"f\",\"timeout_ms\":1,"
        "\"queue_max\":1,\"queue_timeout_ms\":1,\"concurrency_limit\":0,"
        "\"endpoints\":[\"127.0.0.1:1\"],\"shares\":[1]}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(stoke_route_table_parse(bad[i], strlen(bad[i]), &back), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_table),         cmocka_unit_test(test_table_roundtrip),
        cmocka_unit_test(test_triggers_roundtrip),  cmocka_unit_test(test_table_parse_refuses),
        cmocka_unit_test(test_schedules_roundtrip), cmocka_unit_test(test_addr_parse),
        cmocka_unit_test(test_update_roundtrip),    cmocka_unit_test(test_share_sums),
        cmocka_unit_test(test_route_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
