/* The Kubernetes client's pure parts, through stoke/kube.h: kubeconfig and
 * in-cluster config, Status answers, watch event lines, the cache and its
 * relist difference, object paths, and the Lease decision. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "stoke/kube.h"

/* "-----BEGIN CERTIFICATE-----\nX\n" in base64, and a key likewise. */
#define CERT_B64 "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClgK"
#define KEY_B64 "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tClkK"

static int parse(const char *yaml, const char *context, bool insecure, struct stoke_kube_config *c,
                 struct stoke_diag *d)
{
    return stoke_kube_config_parse(yaml, strlen(yaml), "/tmp/kc/config", context, insecure, c, d);
}

static const char *const GOOD = "apiVersion: v1\n"
                                "kind: Config\n"
                                "current-context: dev\n"
                                "clusters:\n"
                                "- name: local\n"
                                "  cluster:\n"
                                "    server: https://127.0.0.1:6443/\n"
                                "    certificate-authority-data: " CERT_B64 "\n"
                                "- name: other\n"
                                "  cluster:\n"
                                "    server: https://[::1]:6443\n"
                                "contexts:\n"
                                "- name: dev\n"
                                "  context: {cluster: local, user: admin, namespace: team}\n"
                                "- name: ops\n"
                                "  context: {cluster: other, user: certs}\n"
                                "users:\n"
                                "- name: admin\n"
                                "  user:\n"
                                "    token: abc.def-123\n"
                                "- name: certs\n"
                                "  user:\n"
                                "    client-certificate-data: " CERT_B64 "\n"
                                "    client-key-data: " KEY_B64 "\n";

static void test_kubeconfig_good(void **state)
{
    (void)state;
    struct stoke_kube_config c;
    struct stoke_diag d;

    assert_int_equal(parse(GOOD, NULL, false, &c, &d), 0);
    assert_string_equal(c.server, "https://127.0.0.1:6443");
    assert_string_equal(c.namespace, "team");
    assert_string_equal(c.token, "abc.def-123");
    assert_null(c.token_file);
    assert_non_null(c.ca);
    assert_int_equal(c.ca_len, strlen("-----BEGIN CERTIFICATE-----\nX\n"));
    assert_memory_equal(c.ca, "-----BEGIN CERTIFICATE-----\nX\n", c.ca_len);
    assert_null(c.cert);
    assert_false(c.insecure);
    stoke_kube_config_done(&c);
    stoke_kube_config_done(&c); /* twice is fine */

    /* Another context by name: its cluster and client certificate. */
    assert_int_equal(parse(GOOD, "ops", false, &c, &d), 0);
    assert_string_equal(c.server, "https://[::1]:6443");
    assert_string_equal(c.namespace, "default");
    assert_null(c.ca);
    assert_null(c.token);
    assert_memory_equal(c.cert, "-----BEGIN CERTIFICATE-----\nX\n", c.cert_len);
    assert_memory_equal(c.key, "-----BEGIN PRIVATE KEY-----\nY\n", c.key_len);
    stoke_kube_config_done(&c);
}

static void test_kubeconfig_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/stoke-kube-XXXXXX";
    char path[256], yaml[1024];
    struct stoke_kube_config c;
    struct stoke_diag d;
    FILE *f;

    assert_non_null(mkdtemp(dir));
    (void)snprintf(path, sizeof(path), "%s/ca.pem", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("CA-PEM\n", f);
    fclose(f);
    (void)snprintf(path, sizeof(path), "%s/config", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("current-context: c\n"
          "clusters: [{name: k, cluster: {server: 'https://10.0.0.1', certificate-authority: "
          "ca.pem}}]\n"
          "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
          "users: [{name: u, user: {tokenFile: tok}}]\n",
          f);
    fclose(f);
    assert_int_equal(stoke_kube_config_load(path, NULL, false, &c, &d), 0);
    assert_string_equal(c.ca, "CA-PEM\n");
    (void)snprintf(yaml, sizeof(yaml), "%s/tok", dir);
    assert_string_equal(c.token_file, yaml); /* relative to the kubeconfig */
    stoke_kube_config_done(&c);

    /* $KUBECONFIG: one file is read, a list is refused. */
    setenv("KUBECONFIG", path, 1);
    assert_int_equal(stoke_kube_config_load(NULL, NULL, false, &c, &d), 0);
    stoke_kube_config_done(&c);
    (void)snprintf(yaml, sizeof(yaml), "%s:%s", path, path);
    setenv("KUBECONFIG", yaml, 1);
    assert_int_equal(stoke_kube_config_load(NULL, NULL, false, &c, &d), -EINVAL);
    assert_non_null(strstr(d.message, "not merged"));
    unsetenv("KUBECONFIG");

    /* A missing CA file names the file. */
    (void)snprintf(path, sizeof(path), "%s/ca.pem", dir);
    unlink(path);
    (void)snprintf(path, sizeof(path), "%s/config", dir);
    assert_int_equal(stoke_kube_config_load(path, NULL, false, &c, &d), -ENOENT);
    assert_non_null(strstr(d.message, "ca.pem"));
    assert_int_equal(d.line, 2);
    unlink(path);
    rmdir(dir);
}

struct bad {
    const char *yaml;
    int err;
    const char *message; /* a part of it */
    const char *field;   /* a part of it, or NULL */
};

static void test_kubeconfig_bad(void **state)
{
    (void)state;
    static const struct bad cases[] = {
        {"current-context: x\ncontexts: []\n", -EINVAL, "no context named \"x\"", "contexts"},
        {"contexts: []\n", -EINVAL, "no current-context", "current-context"},
        {"kind: Pod\n", -EINVAL, "expected kind Config", "kind"},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k, user: u}}]\n"
         "clusters: [{name: k, cluster: {server: http://x}}]\n",
         -EINVAL, "https://", "clusters[0].cluster.server"},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k, user: u}}]\n"
         "clusters: [{name: k, cluster: {server: 'https://x'}}]\n",
         -EINVAL, "no user named \"u\"", "users"},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k, user: u}}]\n"
         "clusters: [{name: k, cluster: {server: 'https://x'}}]\n"
         "users: [{name: u, user: {exec: {command: aws}}}]\n",
         -EINVAL, "exec credential plugin is not supported", "users[0].user.exec"},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k, user: u}}]\n"
         "clusters: [{name: k, cluster: {server: 'https://x'}}]\n"
         "users: [{name: u, user: {auth-provider: {name: gcp}}}]\n",
         -EINVAL, "auth-provider credential plugin", NULL},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k}}]\n"
         "clusters: [{name: k, cluster: {server: 'https://x', insecure-skip-tls-verify: true}}]\n",
         -EPERM, "insecure-skip-tls-verify is refused", "insecure-skip-tls-verify"},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k}}]\n"
         "clusters: [{name: k, cluster: {server: 'https://x', certificate-authority-data: "
         "'@@@'}}]\n",
         -EINVAL, "not valid base64", "certificate-authority-data"},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k, user: u}}]\n"
         "clusters: [{name: k, cluster: {server: 'https://x'}}]\n"
         "users: [{name: u, user: {client-certificate-data: " CERT_B64 "}}]\n",
         -EINVAL, "needs its key", NULL},
        {"current-context: a\ncontexts: [{name: a, context: {cluster: k, user: u}}]\n"
         "clusters: [{name: k, cluster: {server: 'https://x'}}]\n"
         "users: [{name: u, user: {username: x, password: y}}]\n",
         -EINVAL, "basic authentication", NULL},
        {"a: [\n", -EINVAL, "", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct stoke_kube_config c = {0};
        struct stoke_diag d;
        int r = parse(cases[i].yaml, NULL, false, &c, &d);
        if (r != cases[i].err || !strstr(d.message, cases[i].message) ||
            (cases[i].field && !strstr(d.field, cases[i].field)))
            fail_msg("case %zu: %d %s: %s", i, r, d.field, d.message);
        assert_null(c.server); /* ret untouched */
    }
    /* insecure-skip-tls-verify when the caller allows it. */
    struct stoke_kube_config c;
    struct stoke_diag d;
    assert_int_equal(parse(cases[7].yaml, NULL, true, &c, &d), 0);
    assert_true(c.insecure);
    stoke_kube_config_done(&c);
}

static void test_in_cluster(void **state)
{
    (void)state;
    char dir[] = "/tmp/stoke-sa-XXXXXX";
    char path[256];
    struct stoke_kube_config c;
    struct stoke_diag d;
    FILE *f;

    unsetenv("KUBERNETES_SERVICE_HOST");
    assert_int_equal(stoke_kube_config_in_cluster("/nonexistent", &c, &d), -ENOENT);
    assert_non_null(strstr(d.message, "not in a cluster"));

    assert_non_null(mkdtemp(dir));
    setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    /* No token: a clear error. */
    assert_int_equal(stoke_kube_config_in_cluster(dir, &c, &d), -ENOENT);
    assert_non_null(strstr(d.message, "service account token"));
    const char *files[][2] = {{"token", "t0ken\n"}, {"ca.crt", "CA\n"}, {"namespace", "apps\n"}};
    for (size_t i = 0; i < 3; i++) {
        (void)snprintf(path, sizeof(path), "%s/%s", dir, files[i][0]);
        f = fopen(path, "w");
        assert_non_null(f);
        fputs(files[i][1], f);
        fclose(f);
    }
    assert_int_equal(stoke_kube_config_in_cluster(dir, &c, &d), 0);
    assert_string_equal(c.server, "https://[fd00::1]:443");
    assert_string_equal(c.namespace, "apps");
    assert_string_equal(c.ca, "CA\n");
    (void)snprintf(path, sizeof(path), "%s/token", dir);
    assert_string_equal(c.token_file, path);
    stoke_kube_config_done(&c);

    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1/evil", 1);
    assert_int_equal(stoke_kube_config_in_cluster(dir, &c, &d), -EINVAL);
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    for (size_t i = 0; i < 3; i++) {
        (void)snprintf(path, sizeof(path), "%s/%s", dir, files[i][0]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_status(void **state)
{
    (void)state;
    struct stoke_kube_status st;
    json_object *o = json_tokener_parse(
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":"
        "\"Operation cannot be fulfilled on configmaps \\\"a\\\": the object has been "
        "modified\\nplease retry\",\"reason\":\"Conflict\",\"code\":409}");
    assert_int_equal(stoke_kube_status_parse(o, &st), 0);
    assert_int_equal(st.code, 409);
    assert_string_equal(st.reason, "Conflict");
    /* The newline is escaped: one log line. */
    assert_non_null(strstr(st.message, "modified\\nplease retry"));
    json_object_put(o);

    o = json_tokener_parse("{\"kind\":\"ConfigMap\",\"code\":1}");
    assert_int_equal(stoke_kube_status_parse(o, &st), -EINVAL);
    json_object_put(o);
    o = json_tokener_parse("[1]");
    assert_int_equal(stoke_kube_status_parse(o, &st), -EINVAL);
    json_object_put(o);

    assert_int_equal(stoke_kube_errno(200, NULL), 0);
    assert_int_equal(stoke_kube_errno(201, NULL), 0);
    assert_int_equal(stoke_kube_errno(404, "NotFound"), -ENOENT);
    assert_int_equal(stoke_kube_errno(409, "Conflict"), -ESTALE);
    assert_int_equal(stoke_kube_errno(409, "AlreadyExists"), -EEXIST);
    assert_int_equal(stoke_kube_errno(410, "Expired"), -EIDRM);
    assert_int_equal(stoke_kube_errno(422, "Invalid"), -EINVAL);
    assert_int_equal(stoke_kube_errno(401, NULL), -EACCES);
    assert_int_equal(stoke_kube_errno(403, NULL), -EPERM);
    assert_int_equal(stoke_kube_errno(429, NULL), -EAGAIN);
    assert_int_equal(stoke_kube_errno(503, NULL), -EIO);
}

static void test_event_parse(void **state)
{
    (void)state;
    enum stoke_kube_event_type t;
    json_object *o;
    struct stoke_kube_status st;
    char key[64];
    const char *l;

    l = "{\"type\":\"ADDED\",\"object\":{\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"a\","
        "\"namespace\":\"n\",\"resourceVersion\":\"12\"}}}";
    assert_int_equal(stoke_kube_event_parse(l, strlen(l), &t, &o, NULL), 0);
    assert_int_equal(t, STOKE_KUBE_ADDED);
    assert_string_equal(stoke_kube_object_rv(o), "12");
    assert_int_equal(stoke_kube_object_key(o, key, sizeof(key)), 0);
    assert_string_equal(key, "n/a");
    assert_int_equal(stoke_kube_object_key(o, key, 3), -ENAMETOOLONG);
    json_object_put(o);

    l = "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"ConfigMap\",\"metadata\":{"
        "\"resourceVersion\":\"99\"}}}\r\n";
    assert_int_equal(stoke_kube_event_parse(l, strlen(l), &t, &o, NULL), 0);
    assert_int_equal(t, STOKE_KUBE_BOOKMARK);
    assert_string_equal(stoke_kube_object_rv(o), "99");
    json_object_put(o);

    l = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":"
        "\"Failure\",\"message\":\"too old resource version: 1 (50)\",\"reason\":\"Expired\","
        "\"code\":410}}";
    assert_int_equal(stoke_kube_event_parse(l, strlen(l), &t, &o, &st), 0);
    assert_int_equal(t, STOKE_KUBE_ERROR);
    assert_int_equal(st.code, 410);
    assert_string_equal(st.reason, "Expired");
    json_object_put(o);

    static const char *const bad[] = {
        "",
        "{",
        "[]",
        "{\"type\":\"ADDED\"}",
        "{\"type\":\"ADDED\",\"object\":[]}",
        "{\"type\":\"SOMETHING\",\"object\":{\"metadata\":{\"name\":\"a\",\"resourceVersion\":"
        "\"1\"}}}",
        /* no resourceVersion, no name */
        "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}",
        "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"resourceVersion\":\"1\"}}}",
        "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Pod\"}}",
        /* two values on a line */
        "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"1\"}}} {}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o = NULL;
        if (stoke_kube_event_parse(bad[i], strlen(bad[i]), &t, &o, NULL) != -EINVAL)
            fail_msg("bad line %zu accepted", i);
        assert_null(o);
    }
}

struct seen {
    char log[1024];
};

static void on_emit(enum stoke_kube_event_type t, json_object *obj, void *data)
{
    struct seen *s = data;
    static const char *const names[] = {"A", "M", "D", "B", "E"};
    char key[64];
    assert_int_equal(stoke_kube_object_key(obj, key, sizeof(key)), 0);
    size_t n = strlen(s->log);
    (void)snprintf(s->log + n, sizeof(s->log) - n, "%s:%s@%s ", names[t], key,
                   stoke_kube_object_rv(obj));
}

static json_object *obj(const char *name, const char *rv)
{
    char text[256];
    (void)snprintf(
        text, sizeof(text),
        "{\"metadata\":{\"name\":\"%s\",\"namespace\":\"n\",\"resourceVersion\":\"%s\"}}", name,
        rv);
    return json_tokener_parse(text);
}

static void apply(json_object *cache, enum stoke_kube_event_type t, const char *name,
                  const char *rv, struct seen *s)
{
    json_object *o = obj(name, rv);
    assert_int_equal(stoke_kube_cache_apply(cache, t, o, on_emit, s), 0);
    json_object_put(o);
}

static void test_cache(void **state)
{
    (void)state;
    json_object *cache = json_object_new_object();
    struct seen s = {{0}};

    apply(cache, STOKE_KUBE_ADDED, "a", "1", &s);
    apply(cache, STOKE_KUBE_MODIFIED, "b", "2", &s); /* unknown: an add */
    apply(cache, STOKE_KUBE_ADDED, "a", "1", &s);    /* same version: nothing */
    apply(cache, STOKE_KUBE_ADDED, "a", "3", &s);    /* known: a modification */
    apply(cache, STOKE_KUBE_DELETED, "z", "4", &s);  /* unknown: nothing */
    apply(cache, STOKE_KUBE_BOOKMARK, "a", "5", &s); /* no change */
    apply(cache, STOKE_KUBE_DELETED, "b", "6", &s);
    assert_string_equal(s.log, "A:n/a@1 A:n/b@2 M:n/a@3 D:n/b@6 ");
    assert_int_equal(json_object_object_length(cache), 1);

    /* Relist: c and d were made and a changed while we were away; e is in
     * the cache but gone from the list, so it was deleted meanwhile. */
    apply(cache, STOKE_KUBE_ADDED, "e", "7", &s);
    s.log[0] = '\0';
    json_object *items = json_object_new_array();
    json_object_array_add(items, obj("a", "8"));
    json_object_array_add(items, obj("c", "9"));
    json_object_array_add(items, obj("d", "10"));
    assert_int_equal(stoke_kube_cache_relist(cache, items, on_emit, &s), 0);
    assert_string_equal(s.log, "D:n/e@7 M:n/a@8 A:n/c@9 A:n/d@10 ");
    assert_int_equal(json_object_object_length(cache), 3);
    assert_true(json_object_object_get_ex(cache, "n/c", NULL));
    assert_false(json_object_object_get_ex(cache, "n/e", NULL));

    /* The same list again: no change at all. */
    s.log[0] = '\0';
    assert_int_equal(stoke_kube_cache_relist(cache, items, on_emit, &s), 0);
    assert_string_equal(s.log, "");

    /* An item without a name: refused, the cache as it was. */
    json_object_array_add(items, json_tokener_parse("{\"metadata\":{}}"));
    assert_int_equal(stoke_kube_cache_relist(cache, items, on_emit, &s), -EINVAL);
    assert_string_equal(s.log, "");
    assert_int_equal(json_object_object_length(cache), 3);
    json_object_put(items);
    json_object_put(cache);
}

static void test_path(void **state)
{
    (void)state;
    char p[256];
    static const struct stoke_kube_resource fns = {"/apis/stoke.dev/v1", "functions", true};
    static const struct stoke_kube_resource nodes = {"/api/v1", "nodes", false};

    assert_int_equal(stoke_kube_path(&stoke_kube_configmaps, "ns", "a.b", NULL, p, sizeof(p)), 0);
    assert_string_equal(p, "/api/v1/namespaces/ns/configmaps/a.b");
    assert_int_equal(stoke_kube_path(&fns, "ns", "f", "status", p, sizeof(p)), 0);
    assert_string_equal(p, "/apis/stoke.dev/v1/namespaces/ns/functions/f/status");
    assert_int_equal(stoke_kube_path(&stoke_kube_leases, "ns", NULL, NULL, p, sizeof(p)), 0);
    assert_string_equal(p, "/apis/coordination.k8s.io/v1/namespaces/ns/leases");
    assert_int_equal(stoke_kube_path(&nodes, NULL, "n1", NULL, p, sizeof(p)), 0);
    assert_string_equal(p, "/api/v1/nodes/n1");
    /* Nothing that could leave the path. */
    assert_int_equal(stoke_kube_path(&fns, "ns", "../x", NULL, p, sizeof(p)), -EINVAL);
    assert_int_equal(stoke_kube_path(&fns, "ns", "a?b", NULL, p, sizeof(p)), -EINVAL);
    assert_int_equal(stoke_kube_path(&fns, "ns", "A", NULL, p, sizeof(p)), -EINVAL);
    assert_int_equal(stoke_kube_path(&fns, NULL, "a", NULL, p, sizeof(p)), -EINVAL);
    assert_int_equal(stoke_kube_path(&fns, "ns", NULL, "status", p, sizeof(p)), -EINVAL);
    assert_int_equal(stoke_kube_path(&fns, "ns", "a", NULL, p, 10), -ENAMETOOLONG);
}

static void test_time(void **state)
{
    (void)state;
    int64_t ms;
    char buf[32];

    assert_int_equal(stoke_kube_time_parse("2026-12-04T16:26:24.123456Z", &ms), 0);
    assert_int_equal(ms, 1796401584123LL);
    stoke_kube_time_format(ms, buf);
    assert_string_equal(buf, "2026-12-04T16:26:24.123000Z");
    assert_int_equal(stoke_kube_time_parse("1970-01-01T00:00:01Z", &ms), 0);
    assert_int_equal(ms, 1000);
    assert_int_equal(stoke_kube_time_parse("2026-12-04T16:26:24+01:00", &ms), -EINVAL);
    assert_int_equal(stoke_kube_time_parse("2026-13-04T16:26:24Z", &ms), -EINVAL);
    assert_int_equal(stoke_kube_time_parse("2026-12-04T16:26:24.Z", &ms), -EINVAL);
    assert_int_equal(stoke_kube_time_parse("yesterday", &ms), -EINVAL);
}

static json_object *lease(const char *holder, const char *renew, int dur, int transitions)
{
    char text[512];
    (void)snprintf(text, sizeof(text),
                   "{\"metadata\":{\"name\":\"l\",\"namespace\":\"n\",\"resourceVersion\":\"5\"},"
                   "\"spec\":{\"holderIdentity\":\"%s\",\"renewTime\":\"%s\","
                   "\"leaseDurationSeconds\":%d,\"leaseTransitions\":%d}}",
                   holder, renew, dur, transitions);
    return json_tokener_parse(text);
}

static void test_lease(void **state)
{
    (void)state;
    int64_t t0, exp;
    assert_int_equal(stoke_kube_time_parse("2026-12-04T16:00:00.000000Z", &t0), 0);
    json_object *l = lease("a", "2026-12-04T16:00:00.000000Z", 15, 2);

    /* No lease: take it. */
    assert_int_equal(stoke_kube_lease_decide(NULL, t0, "b", &exp), STOKE_KUBE_LEASE_ACQUIRE);
    assert_int_equal(exp, 0);
    /* a holds it, live: b waits; a renews. */
    assert_int_equal(stoke_kube_lease_decide(l, t0 + 14999, "b", &exp), STOKE_KUBE_LEASE_WAIT);
    assert_int_equal(exp, t0 + 15000);
    assert_int_equal(stoke_kube_lease_decide(l, t0 + 1000, "a", NULL), STOKE_KUBE_LEASE_RENEW);
    /* Expired: b takes it. */
    assert_int_equal(stoke_kube_lease_decide(l, t0 + 15000, "b", NULL), STOKE_KUBE_LEASE_ACQUIRE);

    json_object *n =
        stoke_kube_lease_next(l, "n", "l", "b", t0 + 15000, 15, STOKE_KUBE_LEASE_ACQUIRE, false);
    assert_non_null(n);
    /* The precondition stays; the holder, times and transitions change. */
    assert_string_equal(stoke_kube_object_rv(n), "5");
    assert_int_equal(stoke_kube_lease_decide(n, t0 + 16000, "a", NULL), STOKE_KUBE_LEASE_WAIT);
    assert_int_equal(stoke_kube_lease_decide(n, t0 + 16000, "b", NULL), STOKE_KUBE_LEASE_RENEW);
    json_object *spec = json_object_object_get(n, "spec");
    assert_int_equal(json_object_get_int(json_object_object_get(spec, "leaseTransitions")), 3);
    assert_string_equal(json_object_get_string(json_object_object_get(spec, "acquireTime")),
                        "2026-12-04T16:00:15.000000Z");
    /* The input is not changed. */
    assert_string_equal(json_object_get_string(json_object_object_get(
                            json_object_object_get(l, "spec"), "holderIdentity")),
                        "a");

    /* Released: free for anyone at once. */
    json_object *r =
        stoke_kube_lease_next(n, "n", "l", "b", t0 + 17000, 15, STOKE_KUBE_LEASE_RENEW, true);
    assert_int_equal(stoke_kube_lease_decide(r, t0 + 17001, "a", NULL), STOKE_KUBE_LEASE_ACQUIRE);
    json_object_put(r);
    json_object_put(n);

    /* A fresh lease object for a POST. */
    n = stoke_kube_lease_next(NULL, "n", "l", "a", t0, 15, STOKE_KUBE_LEASE_ACQUIRE, false);
    assert_string_equal(json_object_get_string(json_object_object_get(n, "kind")), "Lease");
    assert_int_equal(stoke_kube_lease_decide(n, t0 + 1, "b", NULL), STOKE_KUBE_LEASE_WAIT);
    spec = json_object_object_get(n, "spec");
    assert_int_equal(json_object_get_int(json_object_object_get(spec, "leaseTransitions")), 0);
    json_object_put(n);

    /* Broken or partial leases are free, not followed forever. */
    json_object *p = json_tokener_parse("{\"spec\":{\"holderIdentity\":\"a\"}}");
    assert_int_equal(stoke_kube_lease_decide(p, t0, "b", NULL), STOKE_KUBE_LEASE_ACQUIRE);
    json_object_put(p);
    json_object_put(l);
    l = lease("a", "garbage", 15, 0);
    assert_int_equal(stoke_kube_lease_decide(l, t0, "b", NULL), STOKE_KUBE_LEASE_ACQUIRE);
    json_object_put(l);
}

static void on_lead(bool leading, void *data)
{
    (void)leading;
    (void)data;
    fail_msg("no elector should have started");
}

/* Options are checked before anything starts; nothing reaches the network. */
static void test_elector_opts(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct stoke_kube_config c = {.server = "https://127.0.0.1:1", .namespace = "n"};
    struct stoke_kube *k;
    struct stoke_kube_elector *el = NULL;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(stoke_kube_new(&loop, &c, &k), 0);
    static const unsigned bad[][3] = {{4, 3, 1}, {15, 10, 5}, {15, 2, 2}, {10, 10, 1}};
    for (size_t i = 0; i < 4; i++) {
        struct stoke_kube_elector_opts o = {.name = "l",
                                            .identity = "me",
                                            .lease_s = bad[i][0],
                                            .renew_s = bad[i][1],
                                            .retry_s = bad[i][2],
                                            .on_change = on_lead};
        assert_int_equal(stoke_kube_elector_start(k, &o, &el), -EINVAL);
    }
    struct stoke_kube_elector_opts o = {.name = "l", .on_change = on_lead};
    assert_int_equal(stoke_kube_elector_start(k, &o, &el), -EINVAL); /* no identity */
    assert_null(el);
    /* Neither a client without https nor a certificate without its key. */
    struct stoke_kube *k2 = NULL;
    c.server = "http://127.0.0.1:1";
    assert_int_equal(stoke_kube_new(&loop, &c, &k2), -EINVAL);
    c.server = "https://127.0.0.1:1";
    c.cert = "x";
    c.cert_len = 1;
    assert_int_equal(stoke_kube_new(&loop, &c, &k2), -EINVAL);
    assert_null(k2);
    stoke_kube_close(k, NULL, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kubeconfig_good),
        cmocka_unit_test(test_kubeconfig_files),
        cmocka_unit_test(test_kubeconfig_bad),
        cmocka_unit_test(test_in_cluster),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_event_parse),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_lease),
        cmocka_unit_test(test_elector_opts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
