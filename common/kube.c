/* Kubernetes API client: requests; see stoke/kube.h. One curl easy handle
 * per request, run by stoke/curluv.h on the caller's loop (libcurl keeps the
 * TLS connections alive between requests). The informer (kubewatch.c) and
 * the elector (kubelease.c) are built on the internal calls in kubeint.h. */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "kubeint.h"
#include "stoke/curluv.h"
#include "stoke/diag.h"
#include "stoke/json.h"
#include "stoke/kube.h"
#include "stoke/list.h"
#include "stoke/logq.h"
#include "stoke/util.h"

#define KUBE_DEFAULT_TIMEOUT_MS 30000
#define KUBE_CONNECT_TIMEOUT_MS 10000
#define KUBE_DEFAULT_INFLIGHT 32
#define KUBE_PENDING_MAX 4096
/* A LIST page of 500 pods is a few MiB; a bigger answer fails -EFBIG. */
#define KUBE_BODY_MAX (32u << 20)
#define KUBE_URL_MAX 8192
#define KUBE_TOKEN_MAX (64u << 10)
/* The kubelet rewrites a projected token well before it expires (at 80% of
 * its life, an hour at least): reading it once a minute is plenty. */
#define KUBE_TOKEN_RECHECK_MS 60000

const struct stoke_kube_resource stoke_kube_configmaps = {"/api/v1", "configmaps", true};
const struct stoke_kube_resource stoke_kube_pods = {"/api/v1", "pods", true};
const struct stoke_kube_resource stoke_kube_leases = {"/apis/coordination.k8s.io/v1", "leases",
                                                      true};

struct stoke_kube {
    uv_loop_t *loop;
    struct stoke_curluv *cu;
    struct stoke_kube_config cfg; /* owned copy */
    char *auth;                   /* "Authorization: Bearer ...", or NULL */
    uint64_t token_read_ms;       /* uv_now() of the last read of cfg.token_file */
    uint64_t timeout_ms;
    unsigned max_inflight;
    unsigned inflight;         /* counted requests (not streams) in curl */
    struct stoke_list pending; /* struct stoke__kube_call.link, waiting for a slot */
    size_t npending;
    struct stoke_list running; /* struct stoke__kube_call.link, in curl */
    bool closing;
    void (*on_closed)(void *data);
    void *closed_data;
};

struct stoke__kube_call {
    struct stoke_list link;
    struct stoke_kube *k;
    CURL *easy;
    struct curl_slist *headers;
    struct stoke_buf resp;
    int write_err;
    bool retried; /* after a 401, with a fresh token */
    bool stream;  /* a watch: not counted in max_inflight */
    const char *content_type;
    stoke__kube_stream_fn on_data;
    stoke_kube_cb cb;
    void *data;
    char errbuf[CURL_ERROR_SIZE];
};

static void call_free(struct stoke__kube_call *c)
{
    if (!c)
        return;
    stoke_list_remove(&c->link);
    if (c->easy)
        curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    stoke_buf_done(&c->resp);
    free(c);
}

/* --- answers ------------------------------------------------------------------ */

int stoke_kube_errno(long http_status, const char *reason)
{
    if (http_status >= 200 && http_status < 300)
        return 0;
    switch (http_status) {
    case 400:
    case 422:
        return -EINVAL;
    case 401:
        return -EACCES;
    case 403:
        return -EPERM;
    case 404:
        return -ENOENT;
    case 409:
        return reason && strcmp(reason, "AlreadyExists") == 0 ? -EEXIST : -ESTALE;
    case 410:
        return -EIDRM;
    case 429:
        return -EAGAIN;
    case 408:
    case 504:
        return -ETIMEDOUT;
    default:
        return -EIO;
    }
}

int stoke_kube_status_parse(json_object *obj, struct stoke_kube_status *ret)
{
    struct stoke_kube_status st = {0};
    json_object *code = NULL;
    const char *kind, *reason, *message;

    if (!json_object_is_type(obj, json_type_object))
        return -EINVAL;
    kind = stoke_json_str(obj, "kind");
    reason = stoke_json_str(obj, "reason");
    message = stoke_json_str(obj, "message");
    (void)json_object_object_get_ex(obj, "code", &code);
    if (kind && strcmp(kind, "Status") != 0)
        return -EINVAL;
    if (!kind && !reason && !message && !code)
        return -EINVAL;
    if (json_object_is_type(code, json_type_int)) {
        int64_t c = json_object_get_int64(code);
        st.code = c >= 0 && c < 1000 ? (int)c : 0;
    }
    /* Cleaned (stoke_diag_set()) as they go into logs; cut to fit. */
    if (reason) {
        struct stoke_diag d;
        stoke_diag_set(&d, "", 0, 0, "", "%s", reason);
        if (snprintf(st.reason, sizeof(st.reason), "%s", d.message) < 0)
            st.reason[0] = '\0';
    }
    if (message) {
        struct stoke_diag d;
        stoke_diag_set(&d, "", 0, 0, "", "%s", message);
        if (snprintf(st.message, sizeof(st.message), "%s", d.message) < 0)
            st.message[0] = '\0';
    }
    *ret = st;
    return 0;
}

/* --- the token ---------------------------------------------------------------- */

/* (Re)reads the token file when due or `force`d: synchronously, as it is a
 * few KiB at most once a minute (and on a 401). Keeps the old token when the
 * file cannot be read. Returns true when the token changed. */
static bool token_refresh(struct stoke_kube *k, bool force)
{
    uint64_t now = uv_now(k->loop);
    char *buf = NULL, *auth = NULL;
    size_t len;
    bool changed = false;

    if (!k->cfg.token_file || (!force && k->auth && now - k->token_read_ms < KUBE_TOKEN_RECHECK_MS))
        return false;
    k->token_read_ms = now;
    if (stoke__kube_read_file(k->cfg.token_file, KUBE_TOKEN_MAX, &buf, &len) < 0)
        return false;
    while (len > 0 && strchr(" \t\r\n", buf[len - 1]))
        buf[--len] = '\0';
    if (len > 0 &&
        strspn(buf, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                    "-._~+/=") == len &&
        asprintf(&auth, "Authorization: Bearer %s", buf) > 0) {
        changed = !k->auth || strcmp(k->auth, auth) != 0;
        if (k->auth)
            explicit_bzero(k->auth, strlen(k->auth));
        free(k->auth);
        k->auth = auth;
    }
    explicit_bzero(buf, len);
    free(buf);
    return changed;
}

/* --- requests ------------------------------------------------------------------ */

static void on_done(CURL *easy, CURLcode rc, void *data);
static void pump(struct stoke_kube *k);

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct stoke__kube_call *c = userdata;
    size_t n = size * nmemb;
    long status = 0;
    int r;

    if (c->on_data && curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
        status >= 200 && status < 300) {
        r = c->on_data(ptr, n, c->data);
        if (r > 0)
            return CURL_WRITEFUNC_PAUSE;
        if (r < 0) {
            /* Returning less than n makes curl abort with CURLE_WRITE_ERROR. */
            c->write_err = r;
            return 0;
        }
        return n;
    }
    r = stoke_buf_append(&c->resp, ptr, n);
    if (r < 0) {
        c->write_err = r;
        return 0;
    }
    return n;
}

/* Hands c to curl with the current token. Returns 0 or a negative errno
 * (c untouched). */
static int launch(struct stoke__kube_call *c)
{
    struct stoke_kube *k = c->k;
    struct curl_slist *h = NULL;
    char ct[64] = "", *auth = NULL;
    /* Expect: empty, or curl waits for a 100-continue before big bodies. */
    const char *lines[4] = {c->on_data ? "Accept: application/json, */*"
                                       : "Accept: application/json",
                            "Expect:", ct, NULL};
    int r = -ENOMEM;

    token_refresh(k, false);
    if (c->content_type)
        (void)snprintf(ct, sizeof(ct), "Content-Type: %s", c->content_type);
    if (!k->auth && k->cfg.token && asprintf(&auth, "Authorization: Bearer %s", k->cfg.token) < 0)
        return r;
    lines[3] = k->auth ? k->auth : auth;
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    for (size_t i = 0; i < 4; i++) {
        if (!lines[i] || !lines[i][0])
            continue;
        h = curl_slist_append(c->headers, lines[i]);
        if (!h)
            break;
        c->headers = h;
    }
    if (auth) {
        explicit_bzero(auth, strlen(auth));
        free(auth);
    }
    if (!h)
        return r;
    if (curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers) != CURLE_OK)
        return -EINVAL;
    stoke_buf_clear(&c->resp);
    c->write_err = 0;
    c->errbuf[0] = '\0';
    r = stoke_curluv_add(k->cu, c->easy, on_done, c);
    if (r < 0)
        return r;
    stoke_list_remove(&c->link);
    stoke_list_insert_tail(&k->running, &c->link);
    if (!c->stream)
        k->inflight++;
    return 0;
}

static void finish(struct stoke__kube_call *c, struct stoke_kube_result *res)
{
    struct stoke_kube *k = c->k;
    c->cb(res, c->data);
    call_free(c);
    pump(k);
}

static void on_done(CURL *easy, CURLcode rc, void *data)
{
    struct stoke__kube_call *c = data;
    struct stoke_kube *k = c->k;
    struct stoke_kube_result res = {0};
    json_object *json = NULL;

    assert(c->easy == easy);
    if (!c->stream)
        k->inflight--;
    stoke_list_remove(&c->link);
    if (rc != CURLE_OK) {
        res.err = stoke_curluv_errno(rc, c->write_err);
        if (rc == CURLE_ABORTED_BY_CALLBACK)
            (void)snprintf(res.status.message, sizeof(res.status.message), "client closed");
        else if (c->write_err == -ENOBUFS)
            (void)snprintf(res.status.message, sizeof(res.status.message),
                           "answer over the %u MiB limit", KUBE_BODY_MAX >> 20);
        else if (rc == CURLE_WRITE_ERROR)
            (void)snprintf(res.status.message, sizeof(res.status.message), "stream stopped: %s",
                           strerrordesc_np(-res.err));
        else
            (void)snprintf(res.status.message, sizeof(res.status.message), "%s",
                           c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
        goto out;
    }
    (void)curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res.http_status);
    if (res.http_status == 401 && k->cfg.token_file && !c->retried && !k->closing) {
        /* The kubelet may have rotated the token: read it and try again. */
        c->retried = true;
        (void)token_refresh(k, true);
        if (launch(c) == 0)
            return;
    }
    if (c->resp.len > 0)
        json = stoke_json_parse(c->resp.data, c->resp.len);
    if (res.http_status >= 200 && res.http_status < 300) {
        if (!json && !c->on_data) {
            res.err = -EBADMSG;
            (void)snprintf(res.status.message, sizeof(res.status.message),
                           "the API server sent no JSON (HTTP %ld)", res.http_status);
        }
        res.json = json;
        goto out;
    }
    res.json = json;
    if (!json || stoke_kube_status_parse(json, &res.status) < 0) {
        /* No Status: a proxy in the way, say. The start of the text. */
        struct stoke_diag d;
        stoke_diag_set(&d, "", 0, 0, "", "HTTP %ld: %.200s", res.http_status,
                       c->resp.len ? c->resp.data : "");
        memset(&res.status, 0, sizeof(res.status));
        (void)snprintf(res.status.message, sizeof(res.status.message), "%s", d.message);
    }
    if (!res.status.code)
        res.status.code = (int)res.http_status;
    res.err = stoke_kube_errno(res.http_status, res.status.reason);
out:
    finish(c, &res);
    json_object_put(json);
}

/* Starts waiting calls while slots are free. */
static void pump(struct stoke_kube *k)
{
    while (!k->closing && k->inflight < k->max_inflight && !stoke_list_empty(&k->pending)) {
        struct stoke__kube_call *c =
            stoke_container_of(stoke_list_first(&k->pending), struct stoke__kube_call, link);
        k->npending--;
        int r = launch(c);
        if (r < 0) {
            struct stoke_kube_result res = {.err = r};
            (void)snprintf(res.status.message, sizeof(res.status.message), "cannot start: %s",
                           strerrordesc_np(-r));
            stoke_list_remove(&c->link);
            c->cb(&res, c->data);
            call_free(c);
        }
    }
}

static const char *method_name(enum stoke_kube_method m)
{
    switch (m) {
    case STOKE_KUBE_POST:
        return "POST";
    case STOKE_KUBE_PUT:
        return "PUT";
    case STOKE_KUBE_PATCH:
        return "PATCH";
    case STOKE_KUBE_DELETE:
        return "DELETE";
    default:
        return "GET";
    }
}

static int call_new(struct stoke_kube *k, enum stoke_kube_method method, const char *path_query,
                    json_object *body, uint64_t timeout_ms, stoke_kube_cb cb, void *data,
                    struct stoke__kube_call **ret)
{
    struct stoke__kube_call *c = NULL;
    char url[KUBE_URL_MAX];
    CURL *easy;
    int r;
    int n;

    if (k->closing)
        return -ECANCELED;
    if (!path_query || path_query[0] != '/' || !cb)
        return -EINVAL;
    n = snprintf(url, sizeof(url), "%s%s", k->cfg.server, path_query);
    if (n < 0 || (size_t)n >= sizeof(url))
        return -ENAMETOOLONG;
    r = -ENOMEM;
    c = calloc(1, sizeof(*c));
    if (!c)
        goto out;
    stoke_list_init(&c->link);
    c->k = k;
    c->cb = cb;
    c->data = data;
    stoke_buf_init(&c->resp, KUBE_BODY_MAX);
    c->easy = easy = curl_easy_init();
    if (!easy)
        goto out;
    if (timeout_ms > LONG_MAX)
        timeout_ms = LONG_MAX;
    r = -EINVAL;
    if (curl_easy_setopt(easy, CURLOPT_URL, url) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "https") != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, c) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, c->errbuf) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long)KUBE_CONNECT_TIMEOUT_MS) !=
            CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)timeout_ms) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST,
                         method == STOKE_KUBE_GET ? NULL : method_name(method)) != CURLE_OK)
        goto out;
    if (k->cfg.ca) {
        /* Only the cluster's CA, not also the system's bundle. NOCOPY: the
         * client's copy outlives every handle. */
        struct curl_blob ca = {k->cfg.ca, k->cfg.ca_len, CURL_BLOB_NOCOPY};
        if (curl_easy_setopt(easy, CURLOPT_CAINFO, NULL) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_CAPATH, NULL) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_CAINFO_BLOB, &ca) != CURLE_OK)
            goto out;
    }
    if (k->cfg.cert) {
        struct curl_blob cert = {k->cfg.cert, k->cfg.cert_len, CURL_BLOB_NOCOPY};
        struct curl_blob key = {k->cfg.key, k->cfg.key_len, CURL_BLOB_NOCOPY};
        if (curl_easy_setopt(easy, CURLOPT_SSLCERT_BLOB, &cert) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM") != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_SSLKEY_BLOB, &key) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM") != CURLE_OK)
            goto out;
    }
    if (k->cfg.insecure && (curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L) != CURLE_OK ||
                            curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L) != CURLE_OK))
        goto out;
    if (body) {
        const char *text = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN);
        r = -ENOMEM;
        if (!text)
            goto out;
        r = -EINVAL;
        /* COPYPOSTFIELDS keeps no pointer into body. */
        if (curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(text)) !=
                CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, text) != CURLE_OK)
            goto out;
        c->content_type =
            method == STOKE_KUBE_PATCH ? "application/merge-patch+json" : "application/json";
    } else if (method == STOKE_KUBE_GET) {
        if (curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L) != CURLE_OK)
            goto out;
    }
    *ret = c;
    c = NULL;
    r = 0;
out:
    call_free(c);
    return r;
}

/* Starts c now or queues it behind max_inflight. Frees c on failure. */
static int call_start(struct stoke__kube_call *c)
{
    struct stoke_kube *k = c->k;
    int r;

    if (c->stream || (k->inflight < k->max_inflight && stoke_list_empty(&k->pending))) {
        r = launch(c);
        if (r < 0)
            call_free(c);
        return r;
    }
    if (k->npending >= KUBE_PENDING_MAX) {
        call_free(c);
        return -EAGAIN;
    }
    stoke_list_insert_tail(&k->pending, &c->link);
    k->npending++;
    return 0;
}

int stoke__kube_request_ex(struct stoke_kube *k, enum stoke_kube_method method,
                           const char *path_query, json_object *body, stoke_kube_cb cb, void *data,
                           struct stoke__kube_call **ret)
{
    struct stoke__kube_call *c = NULL;
    int r = call_new(k, method, path_query, body, k->timeout_ms, cb, data, &c);
    if (r < 0)
        return r;
    r = call_start(c);
    if (r == 0 && ret)
        *ret = c;
    return r;
}

int stoke__kube_stream(struct stoke_kube *k, const char *path_query, uint64_t timeout_ms,
                       stoke__kube_stream_fn on_data, stoke_kube_cb cb, void *data,
                       struct stoke__kube_call **ret)
{
    struct stoke__kube_call *c = NULL;
    int r = call_new(k, STOKE_KUBE_GET, path_query, NULL, timeout_ms, cb, data, &c);
    if (r < 0)
        return r;
    c->stream = true;
    c->on_data = on_data;
    r = call_start(c);
    if (r == 0)
        *ret = c;
    return r;
}

void stoke__kube_cancel(struct stoke__kube_call *c)
{
    struct stoke_kube *k;

    if (!c)
        return;
    k = c->k;
    if (stoke_curluv_remove(k->cu, c->easy) == 0) {
        if (!c->stream)
            k->inflight--;
    } else {
        k->npending--; /* it was waiting */
    }
    call_free(c);
}

int stoke_kube_request(struct stoke_kube *k, enum stoke_kube_method method, const char *path_query,
                       json_object *body, stoke_kube_cb cb, void *data)
{
    return stoke__kube_request_ex(k, method, path_query, body, cb, data, NULL);
}

/* DNS-1123 subdomain characters, as names and namespaces are. */
static bool is_name(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    return len > 0 && len <= 253 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-.") == len &&
           s[0] != '.' && s[0] != '-';
}

int stoke_kube_path(const struct stoke_kube_resource *res, const char *ns, const char *name,
                    const char *subresource, char *buf, size_t size)
{
    int n;

    if (!res || (res->namespaced && !is_name(ns)) || (name && !is_name(name)) ||
        (subresource && (!name || !is_name(subresource))))
        return -EINVAL;
    if (res->namespaced)
        n = snprintf(buf, size, "%s/namespaces/%s/%s%s%s%s%s", res->api, ns, res->plural,
                     name ? "/" : "", name ? name : "", subresource ? "/" : "",
                     subresource ? subresource : "");
    else
        n = snprintf(buf, size, "%s/%s%s%s%s%s", res->api, res->plural, name ? "/" : "",
                     name ? name : "", subresource ? "/" : "", subresource ? subresource : "");
    if (n < 0 || (size_t)n >= size)
        return -ENAMETOOLONG;
    return 0;
}

static int object_request(struct stoke_kube *k, enum stoke_kube_method method,
                          const struct stoke_kube_resource *res, const char *ns, const char *name,
                          const char *sub, json_object *body, stoke_kube_cb cb, void *data)
{
    char path[1024];
    int r = stoke_kube_path(res, ns ? ns : k->cfg.namespace, name, sub, path, sizeof(path));
    if (r < 0)
        return r;
    return stoke_kube_request(k, method, path, body, cb, data);
}

int stoke_kube_get(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                   const char *name, stoke_kube_cb cb, void *data)
{
    if (!name)
        return -EINVAL;
    return object_request(k, STOKE_KUBE_GET, res, ns, name, NULL, NULL, cb, data);
}

int stoke_kube_create(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                      json_object *obj, stoke_kube_cb cb, void *data)
{
    if (!obj)
        return -EINVAL;
    return object_request(k, STOKE_KUBE_POST, res, ns, NULL, NULL, obj, cb, data);
}

int stoke_kube_replace(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                       const char *name, const char *subresource, json_object *obj,
                       stoke_kube_cb cb, void *data)
{
    if (!name || !obj)
        return -EINVAL;
    return object_request(k, STOKE_KUBE_PUT, res, ns, name, subresource, obj, cb, data);
}

int stoke_kube_patch(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                     const char *name, const char *subresource, json_object *merge_patch,
                     stoke_kube_cb cb, void *data)
{
    if (!name || !merge_patch)
        return -EINVAL;
    return object_request(k, STOKE_KUBE_PATCH, res, ns, name, subresource, merge_patch, cb, data);
}

int stoke_kube_delete(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                      const char *name, const struct stoke_kube_delete_opts *opts, stoke_kube_cb cb,
                      void *data)
{
    json_object *body = NULL, *pre = NULL;
    int r = 0;

    if (!name)
        return -EINVAL;
    if (opts && (opts->propagation || opts->uid || opts->resource_version)) {
        body = json_object_new_object();
        if (!body)
            return -ENOMEM;
        r |= stoke_json_add(body, "kind", json_object_new_string("DeleteOptions"));
        r |= stoke_json_add(body, "apiVersion", json_object_new_string("v1"));
        if (opts->propagation)
            r |= stoke_json_add(body, "propagationPolicy",
                                json_object_new_string(opts->propagation));
        if (opts->uid || opts->resource_version) {
            pre = json_object_new_object();
            /* On failure pre is gone; on success body holds it. */
            if (stoke_json_add(body, "preconditions", pre) < 0) {
                r = -ENOMEM;
                goto out;
            }
            if (opts->uid)
                r |= stoke_json_add(pre, "uid", json_object_new_string(opts->uid));
            if (opts->resource_version)
                r |= stoke_json_add(pre, "resourceVersion",
                                    json_object_new_string(opts->resource_version));
        }
        if (r < 0) {
            r = -ENOMEM;
            goto out;
        }
    }
    r = object_request(k, STOKE_KUBE_DELETE, res, ns, name, NULL, body, cb, data);
out:
    json_object_put(body);
    return r;
}

/* --- read, modify, update ------------------------------------------------------ */

struct update {
    struct stoke_kube *k;
    const struct stoke_kube_resource *res;
    char ns[254], name[254], sub[32];
    unsigned attempts;
    stoke_kube_mutate_fn mutate;
    stoke_kube_cb cb;
    void *data;
};

static void update_on_get(const struct stoke_kube_result *res, void *data);

static void update_on_put(const struct stoke_kube_result *res, void *data)
{
    struct update *u = data;

    if (res->err == -ESTALE && --u->attempts > 0 &&
        stoke_kube_get(u->k, u->res, u->ns, u->name, update_on_get, u) == 0)
        return;
    u->cb(res, u->data);
    free(u);
}

static void update_on_get(const struct stoke_kube_result *res, void *data)
{
    struct update *u = data;
    struct stoke_kube_result out = {0};
    int r;

    if (res->err < 0) {
        u->cb(res, u->data);
        free(u);
        return;
    }
    r = u->mutate(res->json, u->data);
    if (r == 1) {
        u->cb(res, u->data);
        free(u);
        return;
    }
    if (r == 0)
        r = stoke_kube_replace(u->k, u->res, u->ns, u->name, u->sub[0] ? u->sub : NULL, res->json,
                               update_on_put, u);
    if (r == 0)
        return;
    out.err = r;
    (void)snprintf(out.status.message, sizeof(out.status.message), "update stopped: %s",
                   strerrordesc_np(-r));
    u->cb(&out, u->data);
    free(u);
}

int stoke_kube_update(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                      const char *name, const char *subresource, unsigned attempts,
                      stoke_kube_mutate_fn mutate, stoke_kube_cb cb, void *data)
{
    struct update *u;
    int r;

    if (!ns)
        ns = k->cfg.namespace;
    if (!name || !mutate || !cb || strlen(ns) >= sizeof(u->ns) || strlen(name) >= sizeof(u->name) ||
        (subresource && strlen(subresource) >= sizeof(u->sub)))
        return -EINVAL;
    u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    u->k = k;
    u->res = res;
    memcpy(u->ns, ns, strlen(ns) + 1);
    memcpy(u->name, name, strlen(name) + 1);
    if (subresource)
        memcpy(u->sub, subresource, strlen(subresource) + 1);
    u->attempts = attempts ? attempts : 5;
    u->mutate = mutate;
    u->cb = cb;
    u->data = data;
    r = stoke_kube_get(k, res, ns, name, update_on_get, u);
    if (r < 0)
        free(u);
    return r;
}

/* --- the client ---------------------------------------------------------------- */

static char *dup_mem(const char *p, size_t len)
{
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, p, len);
        d[len] = '\0';
    }
    return d;
}

static int config_copy(const struct stoke_kube_config *s, struct stoke_kube_config *d)
{
    memset(d, 0, sizeof(*d));
    d->insecure = s->insecure;
    d->ca_len = s->ca_len;
    d->cert_len = s->cert_len;
    d->key_len = s->key_len;
    if (!(d->server = strdup(s->server)) ||
        !(d->namespace = strdup(s->namespace ? s->namespace : "default")) ||
        (s->ca && !(d->ca = dup_mem(s->ca, s->ca_len))) ||
        (s->cert && !(d->cert = dup_mem(s->cert, s->cert_len))) ||
        (s->key && !(d->key = dup_mem(s->key, s->key_len))) ||
        (s->token && !(d->token = strdup(s->token))) ||
        (s->token_file && !(d->token_file = strdup(s->token_file)))) {
        stoke_kube_config_done(d);
        return -ENOMEM;
    }
    return 0;
}

int stoke_kube_new(uv_loop_t *loop, const struct stoke_kube_config *cfg, struct stoke_kube **ret)
{
    struct stoke_kube *k;
    int r;

    if (!cfg || !cfg->server || strncmp(cfg->server, "https://", 8) != 0 ||
        (!cfg->cert != !cfg->key))
        return -EINVAL;
    k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->loop = loop;
    k->timeout_ms = KUBE_DEFAULT_TIMEOUT_MS;
    k->max_inflight = KUBE_DEFAULT_INFLIGHT;
    stoke_list_init(&k->pending);
    stoke_list_init(&k->running);
    r = config_copy(cfg, &k->cfg);
    if (r < 0) {
        free(k);
        return r;
    }
    r = stoke_curluv_new(loop, &k->cu);
    if (r < 0) {
        stoke_kube_config_done(&k->cfg);
        free(k);
        return r;
    }
    *ret = k;
    return 0;
}

static void on_cu_closed(void *data)
{
    struct stoke_kube *k = data;
    void (*on_closed)(void *) = k->on_closed;
    void *closed_data = k->closed_data;

    stoke_kube_config_done(&k->cfg);
    if (k->auth)
        explicit_bzero(k->auth, strlen(k->auth));
    free(k->auth);
    free(k);
    if (on_closed)
        on_closed(closed_data);
}

void stoke_kube_close(struct stoke_kube *k, void (*on_closed)(void *data), void *data)
{
    assert(!k->closing);
    k->closing = true;
    k->on_closed = on_closed;
    k->closed_data = data;
    /* Waiting calls end first, then curl aborts those in flight (on_done
     * with CURLE_ABORTED_BY_CALLBACK, -ECANCELED). */
    while (!stoke_list_empty(&k->pending)) {
        struct stoke__kube_call *c =
            stoke_container_of(stoke_list_first(&k->pending), struct stoke__kube_call, link);
        struct stoke_kube_result res = {.err = -ECANCELED};
        (void)snprintf(res.status.message, sizeof(res.status.message), "client closed");
        stoke_list_remove(&c->link);
        k->npending--;
        c->cb(&res, c->data);
        call_free(c);
    }
    stoke_curluv_close(k->cu, on_cu_closed, k);
}

void stoke_kube_set_limits(struct stoke_kube *k, uint64_t timeout_ms, unsigned max_inflight)
{
    if (timeout_ms == 0)
        timeout_ms = 1;
    if (timeout_ms > (uint64_t)INT32_MAX)
        timeout_ms = INT32_MAX;
    k->timeout_ms = timeout_ms;
    k->max_inflight = max_inflight ? max_inflight : 1;
}

const char *stoke_kube_namespace(const struct stoke_kube *k)
{
    return k->cfg.namespace;
}

uv_loop_t *stoke__kube_loop(const struct stoke_kube *k)
{
    return k->loop;
}

/* --- pod logs ------------------------------------------------------------------ */

/* An error's body (a Status) is read up to this much. */
#define KUBE_LOG_ERR_MAX (64u << 10)

struct stoke_kube_logs {
    struct stoke_logq q;
    struct stoke_kube *k;          /* used only while the call runs */
    struct stoke__kube_call *call; /* NULL once its callback has run */
    struct stoke_kube_result end;  /* for on_end (json NULL) */
    stoke_kube_cb on_end;
    void *data;
};

static void logs_on_closed(struct stoke_logq *q)
{
    free(stoke_container_of(q, struct stoke_kube_logs, q));
}

static void logs_on_end(struct stoke_logq *q)
{
    struct stoke_kube_logs *l = stoke_container_of(q, struct stoke_kube_logs, q);
    l->on_end(&l->end, l->data);
}

/* From inside libcurl's write callback: queue it, or pause the transfer. */
static int logs_on_write(const char *p, size_t n, void *data)
{
    struct stoke_kube_logs *l = data;
    if (stoke_logq_must_pause(&l->q))
        return 1;
    return stoke_logq_push(1, p, n, &l->q);
}

static void logs_on_call_done(const struct stoke_kube_result *res, void *data)
{
    struct stoke_kube_logs *l = data;
    bool closing = l->k->closing;
    l->call = NULL;
    if (!l->q.cancelled) {
        l->end = *res;
        l->end.json = NULL;
    }
    /* From within stoke_kube_close(): the end now, the output dropped. */
    stoke_logq_done(&l->q, closing);
}

static int query_add(char *buf, size_t size, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int query_add(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, size - *len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size - *len)
        return -ENAMETOOLONG;
    *len += (size_t)n;
    return 0;
}

int stoke_kube_pod_logs(struct stoke_kube *k, const char *ns, const char *pod,
                        const struct stoke_kube_logs_opts *o,
                        void (*on_data)(int stream, const char *bytes, size_t len, void *data),
                        stoke_kube_cb on_end, void *data, struct stoke_kube_logs **ret)
{
    struct stoke_kube_logs *l = NULL;
    struct stoke__kube_call *c = NULL;
    char path[1024];
    size_t len;
    int r;

    if (!on_data || !on_end || (o->container && !is_name(o->container)))
        return -EINVAL;
    r = stoke_kube_path(&stoke_kube_pods, ns ? ns : k->cfg.namespace, pod, "log", path,
                        sizeof(path));
    if (r < 0)
        return r;
    len = strlen(path);
    r = query_add(path, sizeof(path), &len, "?follow=%s&timestamps=%s",
                  o->follow ? "true" : "false", o->timestamps ? "true" : "false");
    if (r == 0 && o->container)
        r = query_add(path, sizeof(path), &len, "&container=%s", o->container);
    if (r == 0 && o->tail_lines >= 0)
        r = query_add(path, sizeof(path), &len, "&tailLines=%lld", (long long)o->tail_lines);
    if (r == 0 && o->since_seconds)
        r = query_add(path, sizeof(path), &len, "&sinceSeconds=%llu",
                      (unsigned long long)o->since_seconds);
    if (r == 0 && o->limit_bytes)
        r = query_add(path, sizeof(path), &len, "&limitBytes=%llu",
                      (unsigned long long)o->limit_bytes);
    if (r < 0)
        return r;
    l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->k = k;
    l->on_end = on_end;
    l->data = data;
    /* No time limit: a follow lasts as long as the container runs, and a
     * paused transfer as long as its reader is slow. */
    r = call_new(k, STOKE_KUBE_GET, path, NULL, 0, logs_on_call_done, l, &c);
    if (r < 0) {
        free(l);
        return r;
    }
    c->stream = true;
    c->on_data = logs_on_write;
    c->resp.limit = KUBE_LOG_ERR_MAX;
    stoke_logq_init(&l->q, k->loop, c->easy, on_data, logs_on_end, logs_on_closed, data);
    r = call_start(c); /* frees c on failure */
    if (r < 0) {
        stoke_logq_abandon(&l->q); /* frees l once its timer has closed */
        return r;
    }
    l->call = c;
    *ret = l;
    return 0;
}

void stoke_kube_logs_pause(struct stoke_kube_logs *l, bool pause)
{
    stoke_logq_pause(&l->q, pause);
}

void stoke_kube_logs_cancel(struct stoke_kube_logs *l)
{
    if (!stoke_logq_cancel(&l->q))
        return;
    memset(&l->end, 0, sizeof(l->end));
    l->end.err = -ECANCELED;
    (void)snprintf(l->end.status.message, sizeof(l->end.status.message), "cancelled");
    if (l->call) {
        stoke__kube_cancel(l->call);
        l->call = NULL;
        stoke_logq_done(&l->q, false);
    }
}
