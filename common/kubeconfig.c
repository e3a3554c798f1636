/* Where the API server is and who we are to it: in-cluster service account
 * or a kubeconfig file; see stoke/kube.h. Runs at start-up only: the files
 * are read synchronously. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kubeint.h"
#include "stoke/kube.h"
#include "yamltree.h"

int stoke__kube_read_file(const char *path, size_t max, char **ret, size_t *ret_len)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd;
    int r;

    /* O_NONBLOCK: a FIFO must not hang us in open(); refused below. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    r = -errno;
    if (fstat(fd, &st) < 0)
        goto out;
    r = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    if (!S_ISREG(st.st_mode))
        goto out;
    r = -EFBIG;
    if ((uint64_t)st.st_size > max)
        goto out;
    r = -ENOMEM;
    buf = malloc(max + 2);
    if (!buf)
        goto out;
    /* Stops one byte past the cap, for a file that grows meanwhile. */
    while (len <= max) {
        ssize_t n = read(fd, buf + len, max + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        r = -errno;
        if (n < 0)
            goto out;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    r = -EFBIG;
    if (len > max)
        goto out;
    buf[len] = '\0';
    *ret = buf;
    *ret_len = len;
    buf = NULL;
    r = 0;
out:
    free(buf);
    (void)close(fd);
    return r;
}

void stoke_kube_config_done(struct stoke_kube_config *c)
{
    free(c->server);
    free(c->namespace);
    free(c->ca);
    free(c->cert);
    /* A key is a secret: do not leave it in freed memory. */
    if (c->key)
        explicit_bzero(c->key, c->key_len);
    free(c->key);
    if (c->token)
        explicit_bzero(c->token, strlen(c->token));
    free(c->token);
    free(c->token_file);
    memset(c, 0, sizeof(*c));
}

static int b64_value(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Standard base64 with padding (as kubectl writes *-data), whitespace
 * skipped. Returns 0 and an owned, NUL-terminated *ret, -EINVAL, -ENOMEM. */
static int b64_decode(const char *s, char **ret, size_t *ret_len)
{
    size_t n = strlen(s);
    char *out = malloc(n / 4 * 3 + 4);
    size_t o = 0, pad = 0;
    unsigned acc = 0, bits = 0, count = 0;

    if (!out)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (strchr(" \t\r\n", s[i]))
            continue;
        if (s[i] == '=') {
            pad++;
            count++;
            continue;
        }
        int v = b64_value(s[i]);
        if (v < 0 || pad > 0)
            goto bad;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        count++;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xFF);
        }
    }
    if (count % 4 != 0 || pad > 2 || o == 0)
        goto bad;
    out[o] = '\0';
    *ret = out;
    *ret_len = o;
    return 0;
bad:
    free(out);
    return -EINVAL;
}

/* --- in cluster ------------------------------------------------------------- */

static int diag_fail(struct stoke_diag *err, const char *file, const char *field, int r,
                     const char *message, const char *arg)
{
    if (err && arg)
        stoke_diag_set(err, file ? file : "", 0, 0, field, "%s%s", message, arg);
    else if (err)
        stoke_diag_set(err, file ? file : "", 0, 0, field, "%s", message);
    return r;
}

int stoke_kube_config_in_cluster(const char *sa_dir, struct stoke_kube_config *ret,
                                 struct stoke_diag *err)
{
    struct stoke_kube_config c = {0};
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    char path[PATH_MAX];
    char *ns = NULL;
    size_t len;
    int r;

    if (err)
        memset(err, 0, sizeof(*err));
    if (!sa_dir)
        sa_dir = STOKE_KUBE_SA_DIR;
    if (!host || !*host || !port || !*port)
        return diag_fail(err, "", "KUBERNETES_SERVICE_HOST", -ENOENT,
                         "not in a cluster: KUBERNETES_SERVICE_HOST and _PORT are not set", NULL);
    r = -EINVAL;
    if (strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
        strspn(host, "0123456789abcdefABCDEF.:-") != strlen(host)) {
        r = diag_fail(err, "", "KUBERNETES_SERVICE_HOST", -EINVAL,
                      "not an address and port: ", host);
        goto out;
    }
    r = -ENOMEM;
    /* An IPv6 literal goes in brackets in a URL. */
    if (asprintf(&c.server, strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host, port) <
        0) {
        c.server = NULL;
        goto out;
    }
    if ((size_t)snprintf(path, sizeof(path), "%s/token", sa_dir) >= sizeof(path) ||
        !(c.token_file = strdup(path)))
        goto out;
    /* The token is read by the client (it rotates); check it is there now. */
    if (access(path, R_OK) < 0) {
        r = diag_fail(err, path, "", -errno,
                      "cannot read the service account token: ", strerrordesc_np(errno));
        goto out;
    }
    (void)snprintf(path, sizeof(path), "%s/ca.crt", sa_dir);
    r = stoke__kube_read_file(path, STOKE_KUBE_FILE_MAX, &c.ca, &c.ca_len);
    if (r < 0) {
        r = diag_fail(err, path, "", r, "cannot read the cluster CA: ", strerrordesc_np(-r));
        goto out;
    }
    (void)snprintf(path, sizeof(path), "%s/namespace", sa_dir);
    r = stoke__kube_read_file(path, 256, &ns, &len);
    if (r == 0) {
        ns[strcspn(ns, " \t\r\n")] = '\0';
        c.namespace = ns;
        ns = NULL;
    }
    r = -ENOMEM;
    if (!c.namespace || !*c.namespace) {
        free(c.namespace);
        c.namespace = strdup("default");
        if (!c.namespace)
            goto out;
    }
    *ret = c;
    memset(&c, 0, sizeof(c));
    r = 0;
out:
    free(ns);
    stoke_kube_config_done(&c);
    return r;
}

/* --- kubeconfig --------------------------------------------------------------- */

struct kc {
    struct stoke__yaml y;
    const char *dir; /* of the file, for relative paths; owned by the caller */
};

/* The value node of `key` in mapping `m`, or -1. */
static int get(struct kc *k, int m, const char *key)
{
    for (int i = stoke__yaml_first_key(&k->y, m); i >= 0; i = stoke__yaml_next_key(&k->y, i))
        if (strcmp(k->y.nodes[i].text, key) == 0)
            return k->y.nodes[i].next;
    return -1;
}

/* The text of `key` in `m`, NULL when absent or null; -EINVAL when it is
 * not a scalar. */
static int get_text(struct kc *k, int m, const char *key, const char **ret)
{
    int v = get(k, m, key);
    *ret = NULL;
    if (v < 0 || stoke__yaml_is_null(&k->y.nodes[v]))
        return 0;
    return stoke__yaml_text(&k->y, v, NULL, "a string", ret);
}

/* In the sequence `list` ("clusters"), the `inner` mapping ("cluster") of
 * the entry named `name`. Returns its node, or a negative errno with the
 * diag filled. */
static int find_named(struct kc *k, const char *list, const char *inner, const char *name,
                      const char *why)
{
    int seq = get(k, 0, list);
    int r;

    if (seq >= 0) {
        r = stoke__yaml_want_seq(&k->y, seq, NULL);
        if (r < 0)
            return r;
        for (int e = k->y.nodes[seq].first; e >= 0; e = k->y.nodes[e].next) {
            const char *n;
            r = stoke__yaml_want_map(&k->y, e, NULL);
            if (r < 0)
                return r;
            r = get_text(k, e, "name", &n);
            if (r < 0)
                return r;
            if (!n || strcmp(n, name) != 0)
                continue;
            int v = get(k, e, inner);
            if (v < 0 || k->y.nodes[v].kind != STOKE__YAML_MAP)
                return stoke__yaml_fail(&k->y, e, NULL, "\"%s\" has no %s mapping", name, inner);
            return v;
        }
    }
    return stoke__yaml_fail_at(&k->y, 0, 0, list, -EINVAL, "no %s named \"%s\" (%s)", inner, name,
                               why);
}

/* A PEM from `key_data` (base64) or from the file `key_file` in mapping
 * `m`; neither is fine unless `required`. */
static int get_pem(struct kc *k, int m, const char *key_file, const char *key_data, char **ret,
                   size_t *ret_len)
{
    const char *data, *file;
    char path[PATH_MAX];
    int r;

    r = get_text(k, m, key_data, &data);
    if (r < 0)
        return r;
    r = get_text(k, m, key_file, &file);
    if (r < 0)
        return r;
    if (data) {
        r = b64_decode(data, ret, ret_len);
        if (r == -EINVAL)
            return stoke__yaml_fail(&k->y, get(k, m, key_data), NULL, "not valid base64");
        return r == -ENOMEM ? stoke__yaml_oom(&k->y) : r;
    }
    if (!file)
        return 0;
    if (file[0] == '/' || !k->dir)
        r = snprintf(path, sizeof(path), "%s", file);
    else
        r = snprintf(path, sizeof(path), "%s/%s", k->dir, file);
    if (r < 0 || (size_t)r >= sizeof(path))
        return stoke__yaml_fail(&k->y, get(k, m, key_file), NULL, "path too long");
    r = stoke__kube_read_file(path, STOKE_KUBE_FILE_MAX, ret, ret_len);
    if (r < 0)
        return stoke__yaml_fail_at(&k->y, k->y.nodes[get(k, m, key_file)].line,
                                   k->y.nodes[get(k, m, key_file)].column, key_file, r,
                                   "cannot read %s: %s", path, strerrordesc_np(-r));
    return 0;
}

static int dup_to(struct kc *k, const char *s, char **ret)
{
    *ret = strdup(s);
    return *ret ? 0 : stoke__yaml_oom(&k->y);
}

static int read_cluster(struct kc *k, int cl, bool allow_insecure, struct stoke_kube_config *c)
{
    const char *server, *insecure;
    int r;

    r = get_text(k, cl, "server", &server);
    if (r < 0)
        return r;
    if (!server)
        return stoke__yaml_fail(&k->y, cl, NULL, "the cluster has no server");
    if (strncmp(server, "https://", 8) != 0 || !stoke__yaml_is_token(server) || !server[8])
        return stoke__yaml_fail(&k->y, get(k, cl, "server"), NULL,
                                "the server must be an https:// URL (found \"%.64s\")", server);
    r = dup_to(k, server, &c->server);
    if (r < 0)
        return r;
    size_t n = strlen(c->server);
    while (n > 8 && c->server[n - 1] == '/')
        c->server[--n] = '\0';
    r = get_text(k, cl, "insecure-skip-tls-verify", &insecure);
    if (r < 0)
        return r;
    if (insecure && strcmp(insecure, "true") == 0) {
        if (!allow_insecure)
            return stoke__yaml_fail_at(
                &k->y, k->y.nodes[get(k, cl, "insecure-skip-tls-verify")].line,
                k->y.nodes[get(k, cl, "insecure-skip-tls-verify")].column,
                "insecure-skip-tls-verify", -EPERM,
                "insecure-skip-tls-verify is refused: it lets anyone on the path act as the "
                "API server (allow it explicitly to use it)");
        c->insecure = true;
    } else if (insecure && strcmp(insecure, "false") != 0) {
        return stoke__yaml_fail(&k->y, get(k, cl, "insecure-skip-tls-verify"), NULL,
                                "expected true or false");
    }
    return get_pem(k, cl, "certificate-authority", "certificate-authority-data", &c->ca,
                   &c->ca_len);
}

static int read_user(struct kc *k, int u, struct stoke_kube_config *c)
{
    static const char *const plugins[] = {"exec", "auth-provider"};
    const char *token, *token_file, *v;
    int r;

    for (size_t i = 0; i < 2; i++) {
        int p = get(k, u, plugins[i]);
        if (p >= 0 && !stoke__yaml_is_null(&k->y.nodes[p]))
            return stoke__yaml_fail(&k->y, p, NULL,
                                    "the %s credential plugin is not supported: give a token, "
                                    "tokenFile or client certificate",
                                    plugins[i]);
    }
    r = get_text(k, u, "username", &v);
    if (r == 0 && v)
        return stoke__yaml_fail(&k->y, get(k, u, "username"), NULL,
                                "basic authentication is not supported by Kubernetes any more");
    if (r < 0)
        return r;
    r = get_text(k, u, "token", &token);
    if (r < 0)
        return r;
    r = get_text(k, u, "tokenFile", &token_file);
    if (r < 0)
        return r;
    if (token) {
        if (!stoke__yaml_is_token(token))
            return stoke__yaml_fail(&k->y, get(k, u, "token"), NULL,
                                    "the token has spaces or control characters");
        r = dup_to(k, token, &c->token);
    } else if (token_file) {
        char path[PATH_MAX];
        int n = token_file[0] == '/' || !k->dir
                    ? snprintf(path, sizeof(path), "%s", token_file)
                    : snprintf(path, sizeof(path), "%s/%s", k->dir, token_file);
        if (n < 0 || (size_t)n >= sizeof(path))
            return stoke__yaml_fail(&k->y, get(k, u, "tokenFile"), NULL, "path too long");
        r = dup_to(k, path, &c->token_file);
    }
    if (r < 0)
        return r;
    r = get_pem(k, u, "client-certificate", "client-certificate-data", &c->cert, &c->cert_len);
    if (r < 0)
        return r;
    r = get_pem(k, u, "client-key", "client-key-data", &c->key, &c->key_len);
    if (r < 0)
        return r;
    if (!c->cert != !c->key)
        return stoke__yaml_fail(&k->y, u, NULL,
                                "a client certificate needs its key, and a key its certificate");
    return 0;
}

static int parse_tree(struct kc *k, const char *context, bool allow_insecure,
                      struct stoke_kube_config *c)
{
    const char *v, *cluster, *user, *ns;
    int ctx, cl, u;
    int r;

    r = stoke__yaml_want_map(&k->y, 0, NULL);
    if (r < 0)
        return r;
    r = get_text(k, 0, "kind", &v);
    if (r < 0)
        return r;
    if (v && strcmp(v, "Config") != 0)
        return stoke__yaml_fail(&k->y, get(k, 0, "kind"), NULL,
                                "expected kind Config, found \"%.32s\"", v);
    r = get_text(k, 0, "apiVersion", &v);
    if (r < 0)
        return r;
    if (v && strcmp(v, "v1") != 0)
        return stoke__yaml_fail(&k->y, get(k, 0, "apiVersion"), NULL,
                                "expected apiVersion v1, found \"%.32s\"", v);
    if (!context) {
        r = get_text(k, 0, "current-context", &context);
        if (r < 0)
            return r;
        if (!context)
            return stoke__yaml_fail_at(&k->y, 0, 0, "current-context", -EINVAL,
                                       "no current-context and no context was named");
    }
    ctx = find_named(k, "contexts", "context", context, "the context in use");
    if (ctx < 0)
        return ctx;
    r = get_text(k, ctx, "cluster", &cluster);
    if (r < 0)
        return r;
    r = get_text(k, ctx, "user", &user);
    if (r < 0)
        return r;
    if (!cluster)
        return stoke__yaml_fail(&k->y, ctx, NULL, "the context names no cluster");
    r = get_text(k, ctx, "namespace", &ns);
    if (r < 0)
        return r;
    r = dup_to(k, ns ? ns : "default", &c->namespace);
    if (r < 0)
        return r;
    cl = find_named(k, "clusters", "cluster", cluster, "the context's cluster");
    if (cl < 0)
        return cl;
    r = read_cluster(k, cl, allow_insecure, c);
    if (r < 0)
        return r;
    if (!user)
        return 0;
    u = find_named(k, "users", "user", user, "the context's user");
    if (u < 0)
        return u;
    return read_user(k, u, c);
}

int stoke_kube_config_parse(const char *buf, size_t len, const char *file, const char *context,
                            bool allow_insecure, struct stoke_kube_config *ret,
                            struct stoke_diag *err)
{
    struct stoke_kube_config c = {0};
    struct kc k = {0};
    char *dir = NULL;
    int r;

    if (err)
        memset(err, 0, sizeof(*err));
    stoke__yaml_init(&k.y, file, err);
    if (file && strchr(file, '/')) {
        dir = strdup(file);
        if (!dir) {
            r = stoke__yaml_oom(&k.y);
            goto out;
        }
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = '\0';
        else
            *slash = '\0';
        k.dir = dir;
    }
    r = stoke__yaml_build(&k.y, buf, len);
    if (r < 0)
        goto out;
    r = parse_tree(&k, context, allow_insecure, &c);
    if (r < 0)
        goto out;
    *ret = c;
    memset(&c, 0, sizeof(c));
out:
    stoke_kube_config_done(&c);
    stoke__yaml_done(&k.y);
    free(dir);
    return r;
}

int stoke_kube_config_load(const char *path, const char *context, bool allow_insecure,
                           struct stoke_kube_config *ret, struct stoke_diag *err)
{
    char def[PATH_MAX];
    char *buf = NULL;
    size_t len;
    int r;

    if (err)
        memset(err, 0, sizeof(*err));
    if (!path) {
        path = getenv("KUBECONFIG");
        if (path && strchr(path, ':'))
            return diag_fail(err, path, "KUBECONFIG", -EINVAL,
                             "KUBECONFIG lists several files; they are not merged: name one", NULL);
    }
    if (!path || !*path) {
        const char *home = getenv("HOME");
        if (!home || !*home)
            return diag_fail(err, "", "KUBECONFIG", -ENOENT,
                             "no kubeconfig: neither KUBECONFIG nor HOME is set", NULL);
        if ((size_t)snprintf(def, sizeof(def), "%s/.kube/config", home) >= sizeof(def))
            return -ENAMETOOLONG;
        path = def;
    }
    r = stoke__kube_read_file(path, STOKE_KUBE_FILE_MAX, &buf, &len);
    if (r < 0)
        return diag_fail(err, path, "", r, "cannot read: ", strerrordesc_np(-r));
    r = stoke_kube_config_parse(buf, len, path, context, allow_insecure, ret, err);
    if (buf)
        explicit_bzero(buf, len);
    free(buf);
    return r;
}
