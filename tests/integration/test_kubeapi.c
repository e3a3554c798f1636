/* Integration tests of stoke/kube.h against a real kube-apiserver, run by
 * tests/integration/test_kubeapi.py, which starts the control plane, a TCP
 * proxy in front of it (to cut connections) and this program, with:
 *   KUBECONFIG            admin kubeconfig whose server is the proxy
 *   STOKE_TEST_NS         a namespace of this run
 *   STOKE_TEST_TOKEN      a service account token allowed to read configmaps there
 *   STOKE_TEST_WIDGETS    "1": the Widget CRD (test.stoke.dev/v1, status subresource) exists
 *   STOKE_TEST_LOG_POD    a running pod (on a kubelet stand-in node) whose container "main"
 *                         logged a line with "listening"
 *   STOKE_TEST_GHOST_POD  a pod bound to a node whose kubelet port nothing listens on
 * For the 410 test this program prints "PARTITION <rv>" (and BLOCK, UNBLOCK) and waits for "GO":
 * meanwhile the driver cuts the proxy, changes configmaps and compacts etcd.
 *
 * Every wait has a deadline; nothing sleeps a fixed time. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "stoke/kube.h"
#include "stoke/util.h"

#define WAIT_MS 30000

static uv_loop_t g_loop;
static uv_timer_t g_tick;
static struct stoke_kube *g_k;
static struct stoke_kube_config g_cfg;
static const char *g_ns;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until cond(arg) or the deadline; returns cond's last value. */
static bool run_until(bool (*cond)(void *), void *arg, uint64_t ms)
{
    uint64_t end = uv_now(&g_loop) + ms;
    while (!cond(arg)) {
        if (uv_now(&g_loop) > end)
            return false;
        uv_run(&g_loop, UV_RUN_ONCE);
    }
    return true;
}

struct reply {
    bool done;
    int err;
    long status;
    char reason[64];
    char message[512];
    json_object *json;
};

static void on_reply(const struct stoke_kube_result *res, void *data)
{
    struct reply *rp = data;
    rp->done = true;
    rp->err = res->err;
    rp->status = res->http_status;
    memcpy(rp->reason, res->status.reason, sizeof(rp->reason));
    memcpy(rp->message, res->status.message, sizeof(rp->message));
    json_object_put(rp->json);
    rp->json = json_object_get(res->json);
}

static bool reply_done(void *arg)
{
    return ((struct reply *)arg)->done;
}

static void wait_reply(struct reply *rp)
{
    if (!run_until(reply_done, rp, WAIT_MS))
        fail_msg("no answer within %d ms", WAIT_MS);
}

static void reply_reset(struct reply *rp)
{
    json_object_put(rp->json);
    memset(rp, 0, sizeof(*rp));
}

static json_object *parse(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_object *parse(const char *fmt, ...)
{
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    json_object *o = json_tokener_parse(text);
    assert_non_null(o);
    return o;
}

/* The string at a dotted path, or NULL. */
static const char *str_at(json_object *o, const char *a, const char *b)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, a, &v))
        return NULL;
    if (b && !json_object_object_get_ex(v, b, &v))
        return NULL;
    return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static void cm_create(const char *name, const char *labels, const char *value, struct reply *rp)
{
    json_object *o = parse("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":"
                           "\"%s\",\"labels\":{%s}},\"data\":{\"k\":\"%s\"}}",
                           name, labels, value);
    reply_reset(rp);
    assert_int_equal(stoke_kube_create(g_k, &stoke_kube_configmaps, g_ns, o, on_reply, rp), 0);
    json_object_put(o);
    wait_reply(rp);
}

static void cm_patch(const char *name, const char *value, struct reply *rp)
{
    json_object *o = parse("{\"data\":{\"k\":\"%s\"}}", value);
    reply_reset(rp);
    assert_int_equal(
        stoke_kube_patch(g_k, &stoke_kube_configmaps, g_ns, name, NULL, o, on_reply, rp), 0);
    json_object_put(o);
    wait_reply(rp);
}

static void cm_delete(const char *name, struct reply *rp)
{
    reply_reset(rp);
    assert_int_equal(stoke_kube_delete(g_k, &stoke_kube_configmaps, g_ns, name, NULL, on_reply, rp),
                     0);
    wait_reply(rp);
}

/* --- requests ------------------------------------------------------------------------ */

static void test_crud(void **state)
{
    (void)state;
    struct reply rp = {0};
    json_object *o;

    cm_create("crud", "\"t\":\"crud\"", "v1", &rp);
    assert_int_equal(rp.err, 0);
    assert_int_equal(rp.status, 201);
    const char *uid0 = str_at(rp.json, "metadata", "uid");
    assert_non_null(uid0);
    char uid[64];
    (void)snprintf(uid, sizeof(uid), "%s", uid0);

    /* Again: the API server's Status, read. */
    cm_create("crud", "\"t\":\"crud\"", "v1", &rp);
    assert_int_equal(rp.err, -EEXIST);
    assert_int_equal(rp.status, 409);
    assert_string_equal(rp.reason, "AlreadyExists");
    assert_non_null(strstr(rp.message, "\"crud\" already exists"));

    reply_reset(&rp);
    assert_int_equal(stoke_kube_get(g_k, &stoke_kube_configmaps, g_ns, "crud", on_reply, &rp), 0);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);
    assert_string_equal(str_at(rp.json, "data", "k"), "v1");

    cm_patch("crud", "v2", &rp);
    assert_int_equal(rp.err, 0);
    assert_string_equal(str_at(rp.json, "data", "k"), "v2");
    char rv[32];
    (void)snprintf(rv, sizeof(rv), "%s", stoke_kube_object_rv(rp.json));

    /* A refused object: 422 with the field in the message. */
    o = parse(
        "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"Bad_Name\"}}");
    reply_reset(&rp);
    assert_int_equal(stoke_kube_create(g_k, &stoke_kube_configmaps, g_ns, o, on_reply, &rp), 0);
    json_object_put(o);
    wait_reply(&rp);
    assert_int_equal(rp.err, -EINVAL);
    assert_int_equal(rp.status, 422);
    assert_string_equal(rp.reason, "Invalid");
    assert_non_null(strstr(rp.message, "metadata.name"));

    /* Delete with preconditions: a stale resourceVersion is refused... */
    struct stoke_kube_delete_opts bad = {.resource_version = "1"};
    reply_reset(&rp);
    assert_int_equal(
        stoke_kube_delete(g_k, &stoke_kube_configmaps, g_ns, "crud", &bad, on_reply, &rp), 0);
    wait_reply(&rp);
    assert_int_equal(rp.err, -ESTALE);
    assert_int_equal(rp.status, 409);
    /* ...the right uid and version with a propagation policy pass. */
    struct stoke_kube_delete_opts good = {
        .propagation = "Background", .uid = uid, .resource_version = rv};
    reply_reset(&rp);
    assert_int_equal(
        stoke_kube_delete(g_k, &stoke_kube_configmaps, g_ns, "crud", &good, on_reply, &rp), 0);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);
    reply_reset(&rp);
    assert_int_equal(stoke_kube_get(g_k, &stoke_kube_configmaps, g_ns, "crud", on_reply, &rp), 0);
    wait_reply(&rp);
    assert_int_equal(rp.err, -ENOENT);
    assert_string_equal(rp.reason, "NotFound");
    reply_reset(&rp);
}

static const struct stoke_kube_resource widgets = {"/apis/test.stoke.dev/v1", "widgets", true};

static void test_status_subresource(void **state)
{
    (void)state;
    struct reply rp = {0};
    json_object *o;

    if (!getenv("STOKE_TEST_WIDGETS"))
        fail_msg("STOKE_TEST_WIDGETS is not set: the driver did not create the Widget CRD");
    o = parse("{\"apiVersion\":\"test.stoke.dev/v1\",\"kind\":\"Widget\",\"metadata\":{\"name\":"
              "\"w\"},\"spec\":{\"size\":1}}");
    assert_int_equal(stoke_kube_create(g_k, &widgets, g_ns, o, on_reply, &rp), 0);
    json_object_put(o);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);

    /* status through the main resource is ignored... */
    o = parse("{\"status\":{\"phase\":\"ignored\"}}");
    reply_reset(&rp);
    assert_int_equal(stoke_kube_patch(g_k, &widgets, g_ns, "w", NULL, o, on_reply, &rp), 0);
    json_object_put(o);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);
    assert_null(str_at(rp.json, "status", "phase"));
    /* ...and written through the status subresource, by patch and by replace. */
    o = parse("{\"status\":{\"phase\":\"Ready\"}}");
    reply_reset(&rp);
    assert_int_equal(stoke_kube_patch(g_k, &widgets, g_ns, "w", "status", o, on_reply, &rp), 0);
    json_object_put(o);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);
    assert_string_equal(str_at(rp.json, "status", "phase"), "Ready");
    o = json_object_get(rp.json);
    json_object_object_add(json_object_object_get(o, "status"), "phase",
                           json_object_new_string("Done"));
    reply_reset(&rp);
    assert_int_equal(stoke_kube_replace(g_k, &widgets, g_ns, "w", "status", o, on_reply, &rp), 0);
    json_object_put(o);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);
    assert_string_equal(str_at(rp.json, "status", "phase"), "Done");
    reply_reset(&rp);
}

/* A second client on its own loop, to change an object "behind the back" of
 * a read-modify-update in progress on the first. */
/* The reply first: on_reply() gets the same data as mutate(). */
struct mutate_state {
    struct reply rp;
    int calls;
};

static bool done_b(void *arg)
{
    return ((struct reply *)arg)->done;
}

static int mutate(json_object *obj, void *data)
{
    struct mutate_state *m = data;
    json_object *d = json_object_object_get(obj, "data");
    char v[32];

    m->calls++;
    (void)snprintf(v, sizeof(v), "mutated-%d", m->calls);
    json_object_object_add(d, "mine", json_object_new_string(v));
    if (m->calls == 1) {
        /* Someone else writes between our read and our update. */
        uv_loop_t loop_b;
        struct stoke_kube *kb;
        struct reply rp = {0};
        /* A new value each time, or the patch changes nothing. */
        static int races;
        json_object *o = parse("{\"data\":{\"theirs\":\"x%d\"}}", ++races);
        assert_int_equal(uv_loop_init(&loop_b), 0);
        assert_int_equal(stoke_kube_new(&loop_b, &g_cfg, &kb), 0);
        assert_int_equal(
            stoke_kube_patch(kb, &stoke_kube_configmaps, g_ns, "rmw", NULL, o, on_reply, &rp), 0);
        json_object_put(o);
        uint64_t end = uv_now(&loop_b) + WAIT_MS;
        while (!done_b(&rp) && uv_now(&loop_b) < end)
            uv_run(&loop_b, UV_RUN_ONCE);
        assert_int_equal(rp.err, 0);
        reply_reset(&rp);
        stoke_kube_close(kb, NULL, NULL);
        uv_run(&loop_b, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&loop_b), 0);
    }
    return 0;
}

static int mutate_always_raced(json_object *obj, void *data)
{
    struct mutate_state *m = data;
    int calls = m->calls;
    m->calls = 0; /* mutate() races on its first call */
    int r = mutate(obj, data);
    m->calls = calls + 1;
    return r;
}

static void test_conflict_retry(void **state)
{
    (void)state;
    struct reply rp = {0};
    struct mutate_state m;
    memset(&m, 0, sizeof(m));

    cm_create("rmw", "\"t\":\"rmw\"", "v1", &rp);
    assert_int_equal(rp.err, 0);
    json_object *stale = json_object_get(rp.json);

    /* A PUT at a stale resourceVersion: 409 Conflict. */
    cm_patch("rmw", "v2", &rp);
    assert_int_equal(rp.err, 0);
    reply_reset(&rp);
    assert_int_equal(
        stoke_kube_replace(g_k, &stoke_kube_configmaps, g_ns, "rmw", NULL, stale, on_reply, &rp),
        0);
    json_object_put(stale);
    wait_reply(&rp);
    assert_int_equal(rp.err, -ESTALE);
    assert_int_equal(rp.status, 409);
    assert_string_equal(rp.reason, "Conflict");

    /* The helper re-reads and retries: both writes are in. */
    reply_reset(&rp);
    assert_int_equal(
        stoke_kube_update(g_k, &stoke_kube_configmaps, g_ns, "rmw", NULL, 3, mutate, on_reply, &m),
        0);
    wait_reply(&m.rp);
    assert_int_equal(m.rp.err, 0);
    assert_int_equal(m.calls, 2);
    assert_string_equal(str_at(m.rp.json, "data", "mine"), "mutated-2");
    assert_string_equal(str_at(m.rp.json, "data", "theirs"), "x1");
    assert_string_equal(str_at(m.rp.json, "data", "k"), "v2");
    reply_reset(&m.rp);

    /* Conflicts every time: the attempts run out with -ESTALE. */
    m.calls = 0;
    assert_int_equal(stoke_kube_update(g_k, &stoke_kube_configmaps, g_ns, "rmw", NULL, 2,
                                       mutate_always_raced, on_reply, &m),
                     0);
    wait_reply(&m.rp);
    assert_int_equal(m.rp.err, -ESTALE);
    assert_int_equal(m.calls, 2);
    reply_reset(&m.rp);
}

struct many {
    int done, failed;
};

static void on_many(const struct stoke_kube_result *res, void *data)
{
    struct many *m = data;
    m->done++;
    if (res->err != 0 && res->err != -ENOENT)
        m->failed++;
}

static bool many_done(void *arg)
{
    return ((struct many *)arg)->done == 40;
}

static void test_inflight_bound(void **state)
{
    (void)state;
    struct many m = {0};
    stoke_kube_set_limits(g_k, 30000, 2);
    for (int i = 0; i < 40; i++)
        assert_int_equal(stoke_kube_get(g_k, &stoke_kube_configmaps, g_ns, "nothing", on_many, &m),
                         0);
    assert_true(run_until(many_done, &m, WAIT_MS));
    assert_int_equal(m.failed, 0);
    stoke_kube_set_limits(g_k, 30000, 32);
}

/* --- tokens ---------------------------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_token_file_and_in_cluster(void **state)
{
    (void)state;
    const char *token = getenv("STOKE_TEST_TOKEN");
    char dir[] = "/tmp/stoke-kube-sa-XXXXXX", path[256];
    struct stoke_kube_config c = {0};
    struct stoke_kube *k;
    struct stoke_diag d;
    struct reply rp = {0};
    char host[64], port[16];

    if (!token)
        fail_msg("STOKE_TEST_TOKEN is not set");
    assert_non_null(mkdtemp(dir));
    (void)snprintf(path, sizeof(path), "%s/token", dir);
    write_file(path, "not-a-valid-token\n");
    (void)snprintf(path, sizeof(path), "%s/ca.crt", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(g_cfg.ca, 1, g_cfg.ca_len, f), g_cfg.ca_len);
    fclose(f);
    (void)snprintf(path, sizeof(path), "%s/namespace", dir);
    write_file(path, g_ns);

    /* As in a pod: the host and port from the environment. */
    assert_int_equal(sscanf(g_cfg.server, "https://%63[^:]:%15s", host, port), 2);
    setenv("KUBERNETES_SERVICE_HOST", host, 1);
    setenv("KUBERNETES_SERVICE_PORT", port, 1);
    assert_int_equal(stoke_kube_config_in_cluster(dir, &c, &d), 0);
    assert_string_equal(c.namespace, g_ns);
    assert_int_equal(stoke_kube_new(&g_loop, &c, &k), 0);

    /* A bad token: 401, after one re-read of the file. */
    assert_int_equal(stoke_kube_get(k, &stoke_kube_configmaps, NULL, "none", on_reply, &rp), 0);
    wait_reply(&rp);
    assert_int_equal(rp.err, -EACCES);
    assert_int_equal(rp.status, 401);

    /* The kubelet rotates the token: the next 401 re-reads it and passes. */
    (void)snprintf(path, sizeof(path), "%s/token", dir);
    write_file(path, token);
    reply_reset(&rp);
    assert_int_equal(stoke_kube_get(k, &stoke_kube_configmaps, NULL, "none", on_reply, &rp), 0);
    wait_reply(&rp);
    assert_int_equal(rp.err, -ENOENT); /* allowed to look: the token works */
    assert_int_equal(rp.status, 404);
    /* It may not write: 403 Forbidden, from RBAC. */
    json_object *o = json_tokener_parse("{\"metadata\":{\"name\":\"x\"}}");
    reply_reset(&rp);
    assert_int_equal(stoke_kube_create(k, &stoke_kube_configmaps, NULL, o, on_reply, &rp), 0);
    json_object_put(o);
    wait_reply(&rp);
    assert_int_equal(rp.err, -EPERM);
    assert_string_equal(rp.reason, "Forbidden");
    reply_reset(&rp);

    stoke_kube_close(k, NULL, NULL);
    stoke_kube_config_done(&c);
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    const char *names[] = {"token", "ca.crt", "namespace"};
    for (int i = 0; i < 3; i++) {
        (void)snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* --- the informer ---------------------------------------------------------------------- */

struct watched {
    char log[4096];
    bool synced;
    int syncs;
    int errors;
};

static void on_event(enum stoke_kube_event_type type, json_object *obj, void *data)
{
    struct watched *w = data;
    static const char *const names[] = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"};
    size_t n = strlen(w->log);
    const char *name = str_at(obj, "metadata", "name");
    const char *v = str_at(obj, "data", "k");
    (void)snprintf(w->log + n, sizeof(w->log) - n, "%s %s=%s\n", names[type], name, v ? v : "-");
}

static void on_synced(void *data)
{
    struct watched *w = data;
    w->synced = true;
    w->syncs++;
}

static void on_error(int err, const char *message, void *data)
{
    struct watched *w = data;
    w->errors++;
    fprintf(stderr, "informer: %s (%d)\n", message, err);
}

struct inf_wait {
    struct stoke_kube_informer *inf;
    struct watched *w;
    const char *const *want; /* name=value, NULL-terminated: the cache's exact content */
    uint64_t min_gone, min_watches;
};

static bool cache_is(void *arg)
{
    struct inf_wait *iw = arg;
    json_object *cache = stoke_kube_informer_cache(iw->inf);
    struct stoke_kube_informer_stats st;
    size_t n = 0;

    stoke_kube_informer_stats(iw->inf, &st);
    if (!iw->w->synced || st.gone < iw->min_gone || st.watches < iw->min_watches)
        return false;
    for (; iw->want[n]; n++) {
        char key[128], name[64];
        const char *eq = strchr(iw->want[n], '=');
        json_object *o = NULL;
        (void)snprintf(name, sizeof(name), "%.*s", (int)(eq - iw->want[n]), iw->want[n]);
        (void)snprintf(key, sizeof(key), "%s/%s", g_ns, name);
        if (!json_object_object_get_ex(cache, key, &o))
            return false;
        const char *v = str_at(o, "data", "k");
        if (!v || strcmp(v, eq + 1) != 0)
            return false;
    }
    return (size_t)json_object_object_length(cache) == n;
}

/* The lines of `log` in any order must be exactly `want`. */
static void assert_events(const char *log, const char *const *want)
{
    size_t lines = 0;
    for (const char *p = log; *p; p++)
        lines += *p == '\n';
    size_t n = 0;
    for (; want[n]; n++) {
        char line[128];
        (void)snprintf(line, sizeof(line), "%s\n", want[n]);
        if (!strstr(log, line))
            fail_msg("event \"%s\" missing; events were:\n%s", want[n], log);
    }
    if (lines != n)
        fail_msg("expected %zu events, got:\n%s", n, log);
}

struct errors_since {
    struct watched *w;
    int want;
};

static bool errors_reached(void *arg)
{
    struct errors_since *es = arg;
    return es->w->errors >= es->want;
}

/* Tells the driver `what` and waits for its "GO". */
static void ask_driver(const char *what)
{
    char line[64];
    printf("%s\n", what);
    fflush(stdout);
    assert_non_null(fgets(line, sizeof(line), stdin));
    assert_string_equal(line, "GO\n");
}

static void test_informer(void **state)
{
    (void)state;
    struct reply rp = {0};
    struct watched w = {0};
    struct stoke_kube_informer *inf;
    char name[16];

    for (int i = 1; i <= 5; i++) {
        (void)snprintf(name, sizeof(name), "w%d", i);
        cm_create(name, "\"stoke-test\":\"watch\"", "1", &rp);
        assert_int_equal(rp.err, 0);
    }
    cm_create("other", "\"stoke-test\":\"other\"", "1", &rp);
    assert_int_equal(rp.err, 0);

    /* Pages of 2: the first list takes three. */
    struct stoke_kube_informer_opts o = {
        .res = &stoke_kube_configmaps,
        .ns = g_ns,
        .label_selector = "stoke-test=watch",
        .page_limit = 2,
        .watch_timeout_s = 3,
        .on_event = on_event,
        .on_synced = on_synced,
        .on_error = on_error,
        .data = &w,
    };
    assert_int_equal(stoke_kube_informer_start(g_k, &o, &inf), 0);
    static const char *const first[] = {"w1=1", "w2=1", "w3=1", "w4=1", "w5=1", NULL};
    struct inf_wait iw = {inf, &w, first, 0, 1};
    assert_true(run_until(cache_is, &iw, WAIT_MS));
    static const char *const added[] = {"ADDED w1=1", "ADDED w2=1", "ADDED w3=1",
                                        "ADDED w4=1", "ADDED w5=1", NULL};
    assert_events(w.log, added);

    /* Changes arrive through the watch. */
    w.log[0] = '\0';
    cm_create("w6", "\"stoke-test\":\"watch\"", "1", &rp);
    cm_patch("w1", "2", &rp);
    cm_delete("w2", &rp);
    cm_patch("other", "2", &rp); /* not selected */
    static const char *const second[] = {"w1=2", "w3=1", "w4=1", "w5=1", "w6=1", NULL};
    iw.want = second;
    assert_true(run_until(cache_is, &iw, WAIT_MS));
    static const char *const changed[] = {"ADDED w6=1", "MODIFIED w1=2", "DELETED w2=1", NULL};
    assert_events(w.log, changed);

    /* The server ends each watch after 3 s: the informer resumes from its
     * resourceVersion, without a relist. */
    iw.min_watches = 3;
    assert_true(run_until(cache_is, &iw, WAIT_MS));
    assert_int_equal(w.syncs, 1);

    /* Cut off: while we are away (the proxy cut, this loop not running) the
     * driver deletes w3, changes w4, adds w7 and compacts etcd, so our
     * resourceVersion is gone: 410, relist, and the difference is what was
     * missed. */
    w.log[0] = '\0';
    char what[96];
    (void)snprintf(what, sizeof(what), "PARTITION %s", stoke_kube_informer_rv(inf));
    ask_driver(what);
    static const char *const third[] = {"w1=2", "w4=3", "w5=1", "w6=1", "w7=1", NULL};
    iw.want = third;
    iw.min_gone = 1;
    if (!run_until(cache_is, &iw, WAIT_MS)) {
        struct stoke_kube_informer_stats st;
        stoke_kube_informer_stats(inf, &st);
        fail_msg("no relist: gone %lu lists %lu errors %lu; events:\n%s", (unsigned long)st.gone,
                 (unsigned long)st.lists, (unsigned long)st.errors, w.log);
    }
    struct stoke_kube_informer_stats st;
    stoke_kube_informer_stats(inf, &st);
    fprintf(stderr, "informer after the cut: lists %lu watches %lu gone %lu errors %lu\n",
            (unsigned long)st.lists, (unsigned long)st.watches, (unsigned long)st.gone,
            (unsigned long)st.errors);
    static const char *const missed[] = {"DELETED w3=1", "MODIFIED w4=3", "ADDED w7=1", NULL};
    assert_events(w.log, missed);
    assert_int_equal(w.syncs, 2);

    /* And it watches again after the relist. */
    w.log[0] = '\0';
    cm_delete("w5", &rp);
    static const char *const fourth[] = {"w1=2", "w4=3", "w6=1", "w7=1", NULL};
    iw.want = fourth;
    assert_true(run_until(cache_is, &iw, WAIT_MS));
    static const char *const last[] = {"DELETED w5=1", NULL};
    assert_events(w.log, last);

    /* The API server out of reach for a while (the proxy closes every
     * connection) while w8 is made: the informer fails and backs off, and
     * once it can reach the server again resumes its watch where it was: no
     * relist, w8 arrives as a watch event. */
    w.log[0] = '\0';
    struct errors_since es = {&w, w.errors + 2};
    ask_driver("BLOCK");
    assert_true(run_until(errors_reached, &es, WAIT_MS));
    ask_driver("UNBLOCK");
    static const char *const fifth[] = {"w1=2", "w4=3", "w6=1", "w7=1", "w8=1", NULL};
    iw.want = fifth;
    assert_true(run_until(cache_is, &iw, WAIT_MS));
    static const char *const back[] = {"ADDED w8=1", NULL};
    assert_events(w.log, back);
    assert_int_equal(w.syncs, 2);

    stoke_kube_informer_stop(inf);
    reply_reset(&rp);
}

/* Widgets have the API server's watch cache (configmaps do not: see the
 * driver), which sends BOOKMARK events to watches that ask for them, at the
 * latest shortly before each watch's timeout. They move the informer's
 * resourceVersion and are not reported as changes. */
static bool bookmarked(void *arg)
{
    struct inf_wait *iw = arg;
    struct stoke_kube_informer_stats st;
    stoke_kube_informer_stats(iw->inf, &st);
    return iw->w->synced && st.bookmarks >= 1;
}

static void test_bookmarks(void **state)
{
    (void)state;
    struct reply rp = {0};
    struct watched w = {0};
    struct stoke_kube_informer *inf;
    struct stoke_kube_informer_opts o = {
        .res = &widgets,
        .ns = g_ns,
        .watch_timeout_s = 4,
        .on_event = on_event,
        .on_synced = on_synced,
        .on_error = on_error,
        .data = &w,
    };
    assert_int_equal(stoke_kube_informer_start(g_k, &o, &inf), 0);
    json_object *obj = parse("{\"apiVersion\":\"test.stoke.dev/v1\",\"kind\":\"Widget\","
                             "\"metadata\":{\"name\":\"bm\"},\"spec\":{}}");
    assert_int_equal(stoke_kube_create(g_k, &widgets, g_ns, obj, on_reply, &rp), 0);
    json_object_put(obj);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);
    /* A bookmark, read and not reported as a change. */
    struct inf_wait iw = {.inf = inf, .w = &w};
    assert_true(run_until(bookmarked, &iw, WAIT_MS));
    assert_non_null(strstr(w.log, "bm="));
    assert_null(strstr(w.log, "BOOKMARK"));
    stoke_kube_informer_stop(inf);
    reply_reset(&rp);
}

/* --- leader election --------------------------------------------------------------------- */

struct cand {
    const char *id;
    struct stoke_kube_elector *el;
    bool leading;
    int became;
    struct cand *other;
    bool both; /* ever leading while the other was */
};

static void on_change(bool leading, void *data)
{
    struct cand *c = data;
    c->leading = leading;
    if (leading) {
        c->became++;
        if (c->other->leading)
            c->both = true;
    }
}

static bool one_leads(void *arg)
{
    struct cand *c = arg;
    return c[0].leading != c[1].leading;
}

static bool b_leads(void *arg)
{
    struct cand *c = arg;
    return c[1].leading && !c[0].leading;
}

static bool a_leads(void *arg)
{
    struct cand *c = arg;
    return c[0].leading && !c[1].leading;
}

static void test_leader_election(void **state)
{
    (void)state;
    struct cand c[2] = {{.id = "cand-a"}, {.id = "cand-b"}};
    struct reply rp = {0};
    c[0].other = &c[1];
    c[1].other = &c[0];

    for (int i = 0; i < 2; i++) {
        struct stoke_kube_elector_opts o = {.ns = g_ns,
                                            .name = "stoke-test-leader",
                                            .identity = c[i].id,
                                            .lease_s = 5,
                                            .renew_s = 3,
                                            .retry_s = 1,
                                            .on_change = on_change,
                                            .data = &c[i]};
        assert_int_equal(stoke_kube_elector_start(g_k, &o, &c[i].el), 0);
    }
    assert_true(run_until(one_leads, c, WAIT_MS));
    /* Whoever won (L) stays a while, then the follower (F) takes over. */
    int L = c[0].leading ? 0 : 1, F = 1 - L;
    /* Several renewals later, still exactly the same one. */
    uint64_t until = uv_now(&g_loop) + 3000;
    while (uv_now(&g_loop) < until) {
        uv_run(&g_loop, UV_RUN_ONCE);
        assert_true(c[L].leading && !c[F].leading);
    }

    /* L stops renewing (as if killed): F takes over once the lease expires. */
    struct stoke_kube_elector *dead = c[L].el;
    c[L].el = NULL;
    stoke_kube_elector_stop(dead, false);
    assert_false(c[L].leading);
    assert_true(run_until(F ? b_leads : a_leads, c, WAIT_MS));
    assert_false(c[0].both || c[1].both);

    assert_int_equal(
        stoke_kube_get(g_k, &stoke_kube_leases, g_ns, "stoke-test-leader", on_reply, &rp), 0);
    wait_reply(&rp);
    assert_int_equal(rp.err, 0);
    json_object *spec = json_object_object_get(rp.json, "spec");
    assert_string_equal(json_object_get_string(json_object_object_get(spec, "holderIdentity")),
                        c[F].id);
    assert_int_equal(json_object_get_int(json_object_object_get(spec, "leaseTransitions")), 1);

    /* F stops and releases: the lease is free at once. */
    stoke_kube_elector_stop(c[F].el, true);
    assert_false(c[F].leading);
    reply_reset(&rp);
    /* The release is a PUT in flight: wait until the lease shows it. */
    uint64_t end = uv_now(&g_loop) + WAIT_MS;
    for (;;) {
        reply_reset(&rp);
        assert_int_equal(
            stoke_kube_get(g_k, &stoke_kube_leases, g_ns, "stoke-test-leader", on_reply, &rp), 0);
        wait_reply(&rp);
        assert_int_equal(rp.err, 0);
        if (stoke_kube_lease_decide(rp.json, 0, "someone", NULL) == STOKE_KUBE_LEASE_ACQUIRE)
            break;
        assert_true(uv_now(&g_loop) < end);
    }
    reply_reset(&rp);
}

/* --- pod logs ------------------------------------------------------------------------ */

struct logread {
    struct stoke_kube_logs *h;
    struct stoke_buf text;
    unsigned pieces;
    bool done;
    int err;
    long status;
    char message[512];
};

static void on_log_data(int stream, const char *bytes, size_t len, void *data)
{
    struct logread *lr = data;
    assert_int_equal(stream, 1);
    assert_false(lr->done);
    lr->pieces++;
    (void)stoke_buf_append(&lr->text, bytes, len);
}

static void on_log_end(const struct stoke_kube_result *res, void *data)
{
    struct logread *lr = data;
    assert_false(lr->done);
    assert_null(res->json);
    lr->done = true;
    lr->err = res->err;
    lr->status = res->http_status;
    memcpy(lr->message, res->status.message, sizeof(lr->message));
}

static bool log_done(void *arg)
{
    return ((struct logread *)arg)->done;
}

static bool log_has(void *arg)
{
    struct logread *lr = arg;
    return lr->done || (lr->text.len && memmem(lr->text.data, lr->text.len, "listening", 9));
}

static void log_start(struct logread *lr, const char *pod, const struct stoke_kube_logs_opts *o)
{
    memset(lr, 0, sizeof(*lr));
    stoke_buf_init(&lr->text, 1u << 20);
    assert_int_equal(stoke_kube_pod_logs(g_k, g_ns, pod, o, on_log_data, on_log_end, lr, &lr->h),
                     0);
}

/* Reads a whole log (no follow); the text NUL-terminated. */
static void log_read(struct logread *lr, const char *pod, const struct stoke_kube_logs_opts *o)
{
    log_start(lr, pod, o);
    if (!run_until(log_done, lr, WAIT_MS))
        fail_msg("the log of %s did not end within %d ms", pod, WAIT_MS);
    (void)stoke_buf_append(&lr->text, "", 1);
}

static unsigned count_lines(const char *s)
{
    unsigned n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_pod_logs(void **state)
{
    (void)state;
    const char *pod = getenv("STOKE_TEST_LOG_POD"), *ghost = getenv("STOKE_TEST_GHOST_POD");
    struct logread lr;
    assert_non_null(pod);
    assert_non_null(ghost);

    /* All of it: the line the container wrote when it listened. */
    const struct stoke_kube_logs_opts all = {.container = "main", .tail_lines = -1};
    log_read(&lr, pod, &all);
    assert_int_equal(lr.err, 0);
    assert_int_equal(lr.status, 200);
    assert_non_null(strstr(lr.text.data, "listening"));
    unsigned lines = count_lines(lr.text.data);
    assert_true(lines >= 1);
    stoke_buf_done(&lr.text);

    /* tailLines, timestamps, sinceSeconds, limitBytes go through to the kubelet. */
    const struct stoke_kube_logs_opts none = {.container = "main", .tail_lines = 0};
    log_read(&lr, pod, &none);
    assert_int_equal(lr.err, 0);
    assert_string_equal(lr.text.data, "");
    stoke_buf_done(&lr.text);
    const struct stoke_kube_logs_opts last = {
        .container = "main", .tail_lines = 1, .timestamps = true};
    log_read(&lr, pod, &last);
    assert_int_equal(lr.err, 0);
    assert_int_equal(count_lines(lr.text.data), 1);
    assert_memory_equal(lr.text.data, "20", 2); /* RFC 3339 time, a space, the line */
    assert_non_null(strstr(lr.text.data, "Z "));
    stoke_buf_done(&lr.text);
    const struct stoke_kube_logs_opts hour = {
        .container = "main", .tail_lines = -1, .since_seconds = 3600};
    log_read(&lr, pod, &hour);
    assert_int_equal(lr.err, 0);
    assert_int_equal(count_lines(lr.text.data), lines);
    stoke_buf_done(&lr.text);
    const struct stoke_kube_logs_opts five = {
        .container = "main", .tail_lines = -1, .limit_bytes = 5};
    log_read(&lr, pod, &five);
    assert_int_equal(lr.err, 0);
    assert_int_equal(strlen(lr.text.data), 5);
    stoke_buf_done(&lr.text);

    /* Follow: paused, nothing is handed out; resumed, the log comes; cancelled, the
     * end is -ECANCELED and no more output. */
    const struct stoke_kube_logs_opts follow = {
        .container = "main", .tail_lines = -1, .follow = true};
    log_start(&lr, pod, &follow);
    stoke_kube_logs_pause(lr.h, true);
    uint64_t until = uv_now(&g_loop) + 1000;
    while (uv_now(&g_loop) < until)
        uv_run(&g_loop, UV_RUN_ONCE);
    assert_int_equal(lr.pieces, 0);
    assert_false(lr.done);
    stoke_kube_logs_pause(lr.h, false);
    if (!run_until(log_has, &lr, WAIT_MS))
        fail_msg("no log within %d ms after resuming", WAIT_MS);
    assert_false(lr.done); /* a follow lasts while the container runs */
    stoke_kube_logs_cancel(lr.h);
    unsigned pieces = lr.pieces;
    if (!run_until(log_done, &lr, WAIT_MS))
        fail_msg("no end within %d ms after the cancel", WAIT_MS);
    assert_int_equal(lr.err, -ECANCELED);
    assert_int_equal(lr.pieces, pieces);
    stoke_buf_done(&lr.text);

    /* A pod that is not there: 404 with the API server's Status. */
    log_read(&lr, "no-such-pod", &all);
    assert_int_equal(lr.err, -ENOENT);
    assert_int_equal(lr.status, 404);
    assert_non_null(strstr(lr.message, "not found"));
    stoke_buf_done(&lr.text);
    /* A container that is not there: the API server refuses it (400). */
    const struct stoke_kube_logs_opts other = {.container = "other", .tail_lines = -1};
    log_read(&lr, pod, &other);
    assert_int_equal(lr.err, -EINVAL);
    assert_int_equal(lr.status, 400);
    assert_non_null(strstr(lr.message, "other"));
    stoke_buf_done(&lr.text);
    /* A node whose kubelet cannot be reached: the API server's 5xx and its words. */
    log_read(&lr, ghost, &all);
    assert_int_equal(lr.err, -EIO);
    assert_true(lr.status >= 500);
    assert_true(lr.message[0] != '\0');
    printf("# a pod on a node without a kubelet: HTTP %ld: %s\n", lr.status, lr.message);
    stoke_buf_done(&lr.text);

    /* Bad names never leave the client. */
    const struct stoke_kube_logs_opts bad = {.container = "Bad_Name", .tail_lines = -1};
    struct stoke_kube_logs *h = NULL;
    assert_int_equal(stoke_kube_pod_logs(g_k, g_ns, pod, &bad, on_log_data, on_log_end, &lr, &h),
                     -EINVAL);
    assert_int_equal(stoke_kube_pod_logs(g_k, g_ns, "../x", &all, on_log_data, on_log_end, &lr, &h),
                     -EINVAL);
}

static int setup(void **state)
{
    struct stoke_diag d;
    (void)state;
    g_ns = getenv("STOKE_TEST_NS");
    if (!g_ns || !getenv("KUBECONFIG")) {
        fprintf(stderr, "test_kubeapi: run it through tests/integration/test_kubeapi.py\n");
        return -1;
    }
    if (stoke_kube_config_load(NULL, NULL, false, &g_cfg, &d) < 0) {
        fprintf(stderr, "test_kubeapi: %s: %s: %s\n", d.file, d.field, d.message);
        return -1;
    }
    if (uv_loop_init(&g_loop) < 0 || uv_timer_init(&g_loop, &g_tick) < 0 ||
        uv_timer_start(&g_tick, on_tick, 20, 20) < 0 || stoke_kube_new(&g_loop, &g_cfg, &g_k) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    stoke_kube_close(g_k, NULL, NULL);
    uv_close((uv_handle_t *)&g_tick, NULL);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    stoke_kube_config_done(&g_cfg);
    return uv_loop_close(&g_loop) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crud),
        cmocka_unit_test(test_status_subresource),
        cmocka_unit_test(test_conflict_retry),
        cmocka_unit_test(test_inflight_bound),
        cmocka_unit_test(test_token_file_and_in_cluster),
        cmocka_unit_test(test_informer),
        cmocka_unit_test(test_bookmarks),
        cmocka_unit_test(test_leader_election),
        cmocka_unit_test(test_pod_logs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
