/* Container engine client over the Docker Engine HTTP API; see
 * stoke/engine.h. One curl easy handle per call, run by stoke/curluv.h on the
 * caller's loop; libcurl keeps the unix socket connections alive between
 * calls. */
#include "stoke/engine.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include <curl/curl.h>

#include "stoke/curluv.h"
#include "stoke/json.h"
#include "stoke/linebuf.h"
#include "stoke/list.h"
#include "stoke/logq.h"
#include "stoke/util.h"

/* 1.41 is Docker 20.10's and is served by later Dockers and by Podman's
 * compatible service; every endpoint used here exists in it unchanged. */
#define ENGINE_API_VERSION "v1.41"
#define ENGINE_DEFAULT_HOST "unix:///var/run/docker.sock"
#define ENGINE_DEFAULT_TIMEOUT_MS 30000
/* A list of a few thousand containers is well under this; anything bigger
 * is not an answer we can use, and fails the call with -EFBIG. */
#define ENGINE_BODY_MAX (8u << 20)
/* Bound on a request URL: ids and names are short, the label filter too. */
#define ENGINE_URL_MAX 4096
/* The event stream: one event is a few hundred bytes (its labels count);
 * events waiting for the loop are capped, the stream ends past either. */
#define EVENT_LINE_MAX (64u << 10)
#define EVENT_QUEUE_MAX 4096
#define ENGINE_DEFAULT_MAX_INFLIGHT 16

/* Calls past the in-flight limit wait in one of two classes: those on a cold
 * start's way (and the cheap reads) go before the housekeeping ones, except
 * that housekeeping always gets a quarter of the places (hk_reserve()): with
 * strict priority, a steady stream of cold starts and reads left removals
 * waiting for as long as it lasted (bench/soak.sh saw 934 queued). Within a
 * class, calls wait in one flow per key (a function's name, "" for none),
 * and the flows take turns: a thousand removals of one function leave a
 * place for another's every turn. */
enum call_class { CLASS_URGENT, CLASS_HOUSEKEEPING, CLASSES };
#define KEY_MAX 64

/* The calls of one key and class waiting for a place; lives while any does. */
struct flow {
    struct flow *hnext;     /* in e->flows' bucket */
    struct stoke_list ring; /* in e->ring[cls]: the flows taking turns */
    struct stoke_list calls;
    uint32_t hash;
    enum call_class cls;
    char key[KEY_MAX];
};

struct stoke_engine {
    uv_loop_t *loop;
    struct stoke_curluv *cu;
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    uint64_t timeout_ms;
    bool closing;
    void (*on_closed)(void *data);
    void *closed_data;
    struct stoke_engine_stats stats; /* its in_flight, queued, limit: the queue's */
    unsigned hk_in_flight;           /* of stats.in_flight, housekeeping calls */
    struct stoke_list ring[CLASSES]; /* flows with waiting calls, next turn first */
    struct flow **flows;             /* by hash of (class, key), chained */
    size_t flows_cap, flows_len;     /* buckets (a power of two), flows */
    char next_key[KEY_MAX];          /* stoke_engine_next_key(), for the next call */
};

struct watch;

/* One engine API call; dies in call_free() after its callback. */
struct call {
    struct watch *watch; /* the event stream this transfer feeds, or NULL */
    struct stoke_engine *e;
    CURL *easy;
    struct curl_slist *headers;
    struct stoke_buf body;   /* response, capped at ENGINE_BODY_MAX */
    int write_err;           /* why on_write stopped the transfer: -ENOBUFS, -ENOMEM */
    bool want_id;            /* create: res->id from "Id" */
    enum stoke_engine_op op; /* what it is counted as (stoke_engine_stats()) */
    bool limited;            /* counted in the in-flight limit (not a stream) */
    bool housekeeping;       /* and in e->hk_in_flight */
    struct stoke_list qnode; /* in its flow's calls while it waits for a place */
    char key[KEY_MAX];       /* its flow's key */
    char errbuf[CURL_ERROR_SIZE];
    stoke_engine_cb cb;
    void *data;
};

/* The event stream: its transfer parses lines into a queue from inside
 * libcurl's write callback; a zero timer delivers them from the loop, where
 * the caller may start engine calls (libcurl refuses those from its own
 * callbacks). Freed in the timer's close callback. */
struct watch {
    struct stoke_engine *e;
    uv_timer_t deliver;
    struct stoke_linebuf lines;
    json_object **queue; /* owned events, delivered from the head */
    size_t head, len, cap;
    int err;          /* why the stream was stopped from our side, or 0 */
    char message[64]; /* its text */
    bool ended;       /* the transfer is over; on_end after the queue */
    struct stoke_engine_result end;
    char end_message[CURL_ERROR_SIZE];
    stoke_engine_event_cb on_event;
    stoke_engine_cb on_end;
    void *data;
};

enum method { M_GET, M_POST, M_DELETE };

/* The places housekeeping may take ahead of waiting urgent calls: a quarter
 * of the limit (none under 4: a limit that small is asked for as strict
 * order). */
static unsigned hk_reserve(const struct stoke_engine *e)
{
    return e->stats.limit / 4;
}

static void place_take(struct stoke_engine *e, struct call *c, bool housekeeping)
{
    c->limited = true;
    c->housekeeping = housekeeping;
    e->stats.in_flight++;
    if (e->stats.in_flight > e->stats.in_flight_max)
        e->stats.in_flight_max = e->stats.in_flight;
    if (housekeeping)
        e->hk_in_flight++;
}

static void place_give(struct stoke_engine *e, bool housekeeping)
{
    e->stats.in_flight--;
    if (housekeeping)
        e->hk_in_flight--;
}

static void call_free(struct call *c)
{
    if (!c)
        return;
    if (c->easy)
        curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    stoke_buf_done(&c->body);
    free(c);
}

static int status_to_errno(long status)
{
    if (status >= 200 && status < 300)
        return 0;
    switch (status) {
    case 304:
        return -EALREADY;
    case 400:
        return -EINVAL;
    case 404:
        return -ENOENT;
    case 409:
        return -EEXIST;
    case 500:
        return -EIO;
    default:
        return -EPROTO;
    }
}

static bool is_json_type(CURL *easy)
{
    char *ct = NULL;
    if (curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &ct) != CURLE_OK || !ct)
        return false;
    return strncasecmp(ct, "application/json", 16) == 0;
}

/* Strips trailing whitespace in place so a text error body reads as one
 * line. */
static const char *text_message(struct stoke_buf *b)
{
    while (b->len > 0 && strchr(" \t\r\n", b->data[b->len - 1]))
        b->data[--b->len] = '\0';
    return b->len ? b->data : "";
}

static void watch_end(struct watch *w, const struct stoke_engine_result *res);
static void count_call(struct call *c, int err);
static void pump(struct stoke_engine *e);

static void on_done(CURL *easy, CURLcode rc, void *data)
{
    struct call *c = data;
    struct stoke_engine_result res = {.message = ""};
    json_object *json = NULL;

    assert(c->easy == easy);
    if (c->watch && c->watch->err < 0 && rc == CURLE_WRITE_ERROR) {
        /* The stream's own reason for stopping it (bad line, full queue). */
        res.err = c->watch->err;
        res.message = c->watch->message;
        goto out;
    }
    res.err = stoke_curluv_errno(rc, c->write_err);
    if (rc != CURLE_OK) {
        if (rc == CURLE_ABORTED_BY_CALLBACK)
            res.message = "engine client closed";
        else if (c->write_err == -ENOBUFS)
            res.message = "engine response over the 8 MiB limit";
        else
            res.message = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
        goto out;
    }

    (void)curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res.http_status);
    res.err = status_to_errno(res.http_status);
    if (c->body.len > 0 && is_json_type(easy)) {
        json = stoke_json_parse(c->body.data, c->body.len);
        if (!json && res.err == 0) {
            res.err = -EINVAL;
            res.message = "engine sent invalid JSON";
            goto out;
        }
    }

    if (res.err < 0) {
        json_object *msg = NULL;
        /* _get_ex lends msg: valid while json lives. */
        if (json && json_object_object_get_ex(json, "message", &msg) &&
            json_object_is_type(msg, json_type_string))
            res.message = json_object_get_string(msg);
        else
            res.message = text_message(&c->body);
        if (!*res.message) {
            /* No body (304): the errbuf is unused after a CURLE_OK. */
            (void)snprintf(c->errbuf, sizeof(c->errbuf), "engine answered HTTP %ld",
                           res.http_status);
            res.message = c->errbuf;
        }
        res.json = json;
        goto out;
    }

    res.json = json;
    if (c->want_id) {
        json_object *id = NULL;
        if (!json || !json_object_object_get_ex(json, "Id", &id) ||
            !json_object_is_type(id, json_type_string)) {
            res.err = -EINVAL;
            res.message = "engine create response has no Id";
            goto out;
        }
        res.id = json_object_get_string(id);
    }
out:
    count_call(c, res.err);
    struct stoke_engine *e = c->e;
    bool limited = c->limited;
    if (c->watch)
        watch_end(c->watch, &res);
    else
        c->cb(&res, c->data);
    json_object_put(json);
    bool housekeeping = c->housekeeping;
    call_free(c);
    if (limited) {
        place_give(e, housekeeping);
        pump(e);
    }
}

static int watch_feed(struct watch *w, const char *data, size_t len);

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct call *c = userdata;
    size_t n = size * nmemb;
    long status = 0;

    if (c->watch && curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
        status >= 200 && status < 300) {
        /* Returning less than n makes curl abort with CURLE_WRITE_ERROR. */
        return watch_feed(c->watch, ptr, n) < 0 ? 0 : n;
    }
    int r = stoke_buf_append(&c->body, ptr, n);
    if (r < 0) {
        /* Returning less than n makes curl abort with CURLE_WRITE_ERROR. */
        c->write_err = r;
        return 0;
    }
    return n;
}

/* Builds the easy handle for `method` on `path` (already escaped, starting
 * with '/'), with an optional JSON body (copied) and a time limit of the
 * engine's timeout plus `extra_ms`. Returns 0 and *ret (owned, not yet
 * started), or a negative errno. */
static int call_new(struct stoke_engine *e, enum stoke_engine_op op, enum method method,
                    const char *path, const char *json_body, uint64_t extra_ms, stoke_engine_cb cb,
                    void *data, struct call **ret)
{
    struct call *c = NULL;
    struct curl_slist *h;
    CURL *easy;
    char url[ENGINE_URL_MAX];
    uint64_t timeout_ms = e->timeout_ms + extra_ms;
    int r = -ENOMEM;
    int n;
    char key[KEY_MAX];

    /* The key is the next call's, whether or not this one is made. */
    memcpy(key, e->next_key, sizeof(key));
    e->next_key[0] = '\0';
    if (e->closing)
        return -ECANCELED;
    n = snprintf(url, sizeof(url), "http://localhost/" ENGINE_API_VERSION "%s", path);
    if (n < 0 || (size_t)n >= sizeof(url))
        return -ENAMETOOLONG;

    c = calloc(1, sizeof(*c));
    if (!c)
        goto out;
    c->e = e;
    c->cb = cb;
    c->op = op;
    c->data = data;
    memcpy(c->key, key, sizeof(c->key));
    stoke_buf_init(&c->body, ENGINE_BODY_MAX);
    c->easy = curl_easy_init();
    if (!c->easy)
        goto out;
    /* Without this, curl sends "Expect: 100-continue" for big bodies and
     * waits for an answer the engine may never send. */
    h = curl_slist_append(NULL, "Expect:");
    if (!h)
        goto out;
    c->headers = h;
    if (json_body) {
        h = curl_slist_append(c->headers, "Content-Type: application/json");
        if (!h)
            goto out;
        c->headers = h;
    }

    easy = c->easy;
    if (timeout_ms > LONG_MAX)
        timeout_ms = LONG_MAX;
    r = -EINVAL;
    if (curl_easy_setopt(easy, CURLOPT_URL, url) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_UNIX_SOCKET_PATH, e->socket_path) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, c->headers) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, c) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, c->errbuf) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)timeout_ms) != CURLE_OK)
        goto out;
    switch (method) {
    case M_GET:
        break;
    case M_POST:
        /* A body is always sent (empty when none) so the engine gets a
         * Content-Length; COPYPOSTFIELDS keeps no pointer into the caller's. */
        if (curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                             (curl_off_t)(json_body ? strlen(json_body) : 0)) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, json_body ? json_body : "") != CURLE_OK)
            goto out;
        break;
    case M_DELETE:
        if (curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "DELETE") != CURLE_OK)
            goto out;
        break;
    }
    *ret = c;
    c = NULL;
    r = 0;
out:
    call_free(c);
    return r;
}

static enum call_class call_class(enum stoke_engine_op op)
{
    switch (op) {
    case STOKE_ENGINE_OP_PAUSE:
    case STOKE_ENGINE_OP_STOP:
    case STOKE_ENGINE_OP_REMOVE:
    case STOKE_ENGINE_OP_LIST:
        return CLASS_HOUSEKEEPING;
    default:
        return CLASS_URGENT; /* ping, image inspect, create, start, inspect, unpause */
    }
}

static uint32_t flow_hash(enum call_class cls, const char *key)
{
    uint32_t h = 2166136261u ^ (uint32_t)cls; /* FNV-1a */
    for (; *key; key++)
        h = (h ^ (unsigned char)*key) * 16777619u;
    return h;
}

/* Doubles the buckets once there are as many flows; -ENOMEM keeps them. */
static int flows_grow(struct stoke_engine *e)
{
    size_t cap = e->flows_cap ? e->flows_cap * 2 : 64;
    struct flow **nb = calloc(cap, sizeof(*nb));
    if (!nb)
        return -ENOMEM;
    for (size_t i = 0; i < e->flows_cap; i++) {
        struct flow *f = e->flows[i];
        while (f) {
            struct flow *next = f->hnext;
            f->hnext = nb[f->hash & (cap - 1)];
            nb[f->hash & (cap - 1)] = f;
            f = next;
        }
    }
    free(e->flows);
    e->flows = nb;
    e->flows_cap = cap;
    return 0;
}

/* Queues `c` at the tail of its flow, made (last in its class's turns) if
 * none waits. O(1) but for the buckets' growth. */
static int enqueue(struct stoke_engine *e, struct call *c)
{
    enum call_class cls = call_class(c->op);
    uint32_t h = flow_hash(cls, c->key);
    struct flow *f = NULL;
    if (e->flows_cap)
        f = e->flows[h & (e->flows_cap - 1)];
    while (f && (f->hash != h || f->cls != cls || strcmp(f->key, c->key) != 0))
        f = f->hnext;
    if (!f) {
        if (e->flows_len >= e->flows_cap && flows_grow(e) < 0 && !e->flows_cap)
            return -ENOMEM;
        f = calloc(1, sizeof(*f));
        if (!f)
            return -ENOMEM;
        f->hash = h;
        f->cls = cls;
        memcpy(f->key, c->key, sizeof(f->key));
        stoke_list_init(&f->calls);
        stoke_list_insert_tail(&e->ring[cls], &f->ring);
        f->hnext = e->flows[h & (e->flows_cap - 1)];
        e->flows[h & (e->flows_cap - 1)] = f;
        e->flows_len++;
    }
    stoke_list_insert_tail(&f->calls, &c->qnode);
    e->stats.queued++;
    return 0;
}

/* Takes the first call of the flow whose turn it is in `cls` (that flow's
 * turn then goes to the next), or NULL. */
static struct call *dequeue(struct stoke_engine *e, enum call_class cls)
{
    if (stoke_list_empty(&e->ring[cls]))
        return NULL;
    struct flow *f = stoke_container_of(stoke_list_first(&e->ring[cls]), struct flow, ring);
    struct call *c = stoke_container_of(stoke_list_first(&f->calls), struct call, qnode);
    stoke_list_remove(&c->qnode);
    e->stats.queued--;
    stoke_list_remove(&f->ring);
    if (!stoke_list_empty(&f->calls)) {
        stoke_list_insert_tail(&e->ring[cls], &f->ring);
        return c;
    }
    struct flow **pp = &e->flows[f->hash & (e->flows_cap - 1)];
    while (*pp != f)
        pp = &(*pp)->hnext;
    *pp = f->hnext;
    e->flows_len--;
    free(f);
    return c;
}

/* Starts waiting calls while there is room. One that cannot start gets its
 * callback with the error (it has returned 0 to its caller long ago). */
static void pump(struct stoke_engine *e)
{
    while (!e->closing && e->stats.in_flight < e->stats.limit) {
        enum call_class first = e->hk_in_flight < hk_reserve(e) ? CLASS_HOUSEKEEPING : CLASS_URGENT;
        enum call_class cls = first;
        struct call *c = dequeue(e, cls);
        if (!c) {
            cls = first == CLASS_URGENT ? CLASS_HOUSEKEEPING : CLASS_URGENT;
            c = dequeue(e, cls);
        }
        if (!c)
            return;
        place_take(e, c, cls == CLASS_HOUSEKEEPING);
        int r = stoke_curluv_add(e->cu, c->easy, on_done, c);
        if (r < 0) {
            struct stoke_engine_result res = {.err = r, .message = "cannot start the engine call"};
            place_give(e, c->housekeeping);
            count_call(c, r);
            c->cb(&res, c->data);
            call_free(c);
        }
    }
}

/* A stream (events) starts at once; any other call takes a place among the
 * e->stats.limit in flight, or waits for one in its class's queue. */
static int call_start(struct call *c)
{
    struct stoke_engine *e = c->e;
    if (!c->watch) {
        if (e->stats.in_flight >= e->stats.limit || e->stats.queued > 0) {
            int r = enqueue(e, c);
            if (r < 0)
                call_free(c);
            return r;
        }
        place_take(e, c, call_class(c->op) == CLASS_HOUSEKEEPING);
    }
    int r = stoke_curluv_add(e->cu, c->easy, on_done, c);
    if (r < 0) {
        if (c->limited)
            place_give(e, c->housekeeping);
        call_free(c);
    }
    return r;
}

static int request(struct stoke_engine *e, enum stoke_engine_op op, enum method method,
                   const char *path, uint64_t extra_ms, stoke_engine_cb cb, void *data)
{
    struct call *c = NULL;
    int r = call_new(e, op, method, path, NULL, extra_ms, cb, data, &c);
    if (r < 0)
        return r;
    return call_start(c);
}

/* Returns an owned percent-escaped copy of `s` (curl_free()), or NULL. */
static char *escape(const char *s)
{
    size_t len = strlen(s);
    if (len > ENGINE_URL_MAX)
        return NULL;
    return curl_easy_escape(NULL, s, (int)len);
}

/* Container ids and names as the engine makes and accepts them. Anything
 * else could reach another endpoint once the engine's router cleans the
 * path ("../x" answers a redirect), so it is refused before any request. */
static bool is_valid_id(const char *id)
{
    size_t len = strlen(id);
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = id[i];
        bool alnum =
            (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || !strchr("_.-", ch)))
            return false;
    }
    return true;
}

/* "/containers/<id><suffix>" on `id`, escaped. */
static int container_request(struct stoke_engine *e, enum stoke_engine_op op, enum method method,
                             const char *id, const char *suffix, uint64_t extra_ms,
                             stoke_engine_cb cb, void *data)
{
    char path[ENGINE_URL_MAX];
    char *eid = NULL;
    int r;
    int n;

    if (!id || !is_valid_id(id))
        return -EINVAL;
    eid = escape(id);
    if (!eid)
        return -ENOMEM;
    n = snprintf(path, sizeof(path), "/containers/%s%s", eid, suffix);
    curl_free(eid);
    if (n < 0 || (size_t)n >= sizeof(path))
        return -ENAMETOOLONG;
    r = request(e, op, method, path, extra_ms, cb, data);
    return r;
}

int stoke_engine_new(uv_loop_t *loop, const char *docker_host, struct stoke_engine **ret)
{
    struct stoke_engine *e = NULL;
    const char *path;
    size_t len;
    int r;

    if (!docker_host)
        docker_host = getenv("DOCKER_HOST");
    if (!docker_host || !*docker_host)
        docker_host = ENGINE_DEFAULT_HOST;
    if (strncmp(docker_host, "unix://", 7) != 0)
        return -EINVAL;
    path = docker_host + 7;
    len = strlen(path);
    if (path[0] != '/' || len >= sizeof(e->socket_path))
        return -EINVAL;

    e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->loop = loop;
    memcpy(e->socket_path, path, len + 1);
    e->timeout_ms = ENGINE_DEFAULT_TIMEOUT_MS;
    e->stats.limit = ENGINE_DEFAULT_MAX_INFLIGHT;
    for (int k = 0; k < CLASSES; k++)
        stoke_list_init(&e->ring[k]);
    r = stoke_curluv_new(loop, &e->cu);
    if (r < 0) {
        free(e);
        return r;
    }
    *ret = e;
    return 0;
}

static void on_cu_closed(void *data)
{
    struct stoke_engine *e = data;
    void (*on_closed)(void *) = e->on_closed;
    void *closed_data = e->closed_data;

    free(e);
    if (on_closed)
        on_closed(closed_data);
}

void stoke_engine_close(struct stoke_engine *e, void (*on_closed)(void *data), void *data)
{
    assert(!e->closing);
    e->closing = true;
    e->on_closed = on_closed;
    e->closed_data = data;
    /* Waiting calls end first, then every in-flight on_done() runs with
     * CURLE_ABORTED_BY_CALLBACK: each callback sees -ECANCELED before this
     * returns. */
    for (int k = 0; k < CLASSES; k++) {
        struct call *c;
        while ((c = dequeue(e, (enum call_class)k))) {
            struct stoke_engine_result res = {.err = -ECANCELED, .message = "engine client closed"};
            count_call(c, res.err);
            c->cb(&res, c->data);
            call_free(c);
        }
    }
    free(e->flows);
    e->flows = NULL;
    e->flows_cap = 0;
    stoke_curluv_close(e->cu, on_cu_closed, e);
}

unsigned stoke_engine_cancel_housekeeping(struct stoke_engine *e)
{
    unsigned n = 0;
    struct call *c;
    while ((c = dequeue(e, CLASS_HOUSEKEEPING))) {
        struct stoke_engine_result res = {.err = -ECANCELED, .message = "engine call cancelled"};
        count_call(c, res.err);
        c->cb(&res, c->data);
        call_free(c);
        n++;
    }
    return n;
}

void stoke_engine_next_key(struct stoke_engine *e, const char *key)
{
    (void)snprintf(e->next_key, sizeof(e->next_key), "%s", key ? key : "");
}

void stoke_engine_set_max_inflight(struct stoke_engine *e, unsigned n)
{
    e->stats.limit = n > 0 ? n : 1;
    pump(e);
}

void stoke_engine_set_timeout(struct stoke_engine *e, uint64_t timeout_ms)
{
    /* CURLOPT_TIMEOUT_MS takes a long; 0 there would mean "no limit". */
    if (timeout_ms == 0)
        timeout_ms = 1;
    if (timeout_ms > (uint64_t)INT32_MAX)
        timeout_ms = INT32_MAX;
    e->timeout_ms = timeout_ms;
}

int stoke_engine_ping(struct stoke_engine *e, stoke_engine_cb cb, void *data)
{
    return request(e, STOKE_ENGINE_OP_PING, M_GET, "/_ping", 0, cb, data);
}

int stoke_engine_image_inspect(struct stoke_engine *e, const char *image, stoke_engine_cb cb,
                               void *data)
{
    char path[ENGINE_URL_MAX];
    char *eimage;
    int n;

    if (!image || !*image)
        return -EINVAL;
    eimage = escape(image);
    if (!eimage)
        return -ENOMEM;
    n = snprintf(path, sizeof(path), "/images/%s/json", eimage);
    curl_free(eimage);
    if (n < 0 || (size_t)n >= sizeof(path))
        return -ENAMETOOLONG;
    return request(e, STOKE_ENGINE_OP_IMAGE_INSPECT, M_GET, path, 0, cb, data);
}

/* Same for arrays. */
static int arr_add(json_object *a, json_object *v)
{
    if (!v)
        return -ENOMEM;
    if (json_object_array_add(a, v) < 0) {
        json_object_put(v);
        return -ENOMEM;
    }
    return 0;
}

/* A one-string array, or NULL on OOM. Owned. */
static json_object *str_array1(const char *s)
{
    json_object *a = json_object_new_array();
    if (a && arr_add(a, json_object_new_string(s)) < 0) {
        json_object_put(a);
        return NULL;
    }
    return a;
}

static bool is_bridge(const struct stoke_container_config *cfg)
{
    return !cfg->network_mode || strcmp(cfg->network_mode, "bridge") == 0;
}

/* "<port>/tcp", the engine's key of a container port. */
static void port_key(const struct stoke_container_config *cfg, char key[16])
{
    (void)snprintf(key, 16, "%u/tcp", (unsigned)cfg->container_port);
}

/* {"<port>/tcp": [{"HostIp": "127.0.0.1", "HostPort": "<host port>"}]}:
 * published on loopback only, so nothing off the machine reaches a replica
 * but through the activator. Returns an owned object or NULL (OOM). */
static json_object *port_bindings(const struct stoke_container_config *cfg)
{
    json_object *pb = json_object_new_object();
    json_object *list = json_object_new_array();
    json_object *b = json_object_new_object();
    char key[16], hport[8];
    int r = 0;

    if (!pb || !list || !b) {
        json_object_put(pb);
        json_object_put(list);
        json_object_put(b);
        return NULL;
    }
    port_key(cfg, key);
    (void)snprintf(hport, sizeof(hport), "%u", (unsigned)cfg->host_port);
    r |= stoke_json_add(b, "HostIp", json_object_new_string("127.0.0.1"));
    r |= stoke_json_add(b, "HostPort", json_object_new_string(hport));
    r |= arr_add(list, b);
    r |= stoke_json_add(pb, key, list);
    if (r != 0) {
        json_object_put(pb);
        return NULL;
    }
    return pb;
}

/* The HostConfig of a stoke replica. Returns an owned object or NULL (OOM). */
static json_object *host_config(const struct stoke_container_config *cfg)
{
    json_object *hc = json_object_new_object();
    json_object *restart = NULL;
    int r = 0;

    if (!hc)
        return NULL;
    r |= stoke_json_add(hc, "NetworkMode",
                        json_object_new_string(is_bridge(cfg) ? "bridge" : "host"));
    if (is_bridge(cfg))
        r |= stoke_json_add(hc, "PortBindings", port_bindings(cfg));
    if (cfg->memory_bytes > 0) {
        r |= stoke_json_add(hc, "Memory", json_object_new_int64((int64_t)cfg->memory_bytes));
        /* Equal to Memory: no swap on top of the limit. */
        r |= stoke_json_add(hc, "MemorySwap", json_object_new_int64((int64_t)cfg->memory_bytes));
    }
    if (cfg->cpu_millis > 0)
        r |= stoke_json_add(hc, "NanoCpus",
                            json_object_new_int64((int64_t)cfg->cpu_millis * 1000000));
    if (cfg->pids > 0)
        r |= stoke_json_add(hc, "PidsLimit", json_object_new_int64((int64_t)cfg->pids));
    r |= stoke_json_add(hc, "CapDrop", str_array1("ALL"));
    r |= stoke_json_add(hc, "SecurityOpt", str_array1("no-new-privileges"));
    r |= stoke_json_add(hc, "ReadonlyRootfs", json_object_new_boolean(cfg->read_only_rootfs));
    /* The controller replaces replicas itself, with backoff; an engine
     * restart policy would fight it. */
    restart = json_object_new_object();
    if (restart)
        r |= stoke_json_add(restart, "Name", json_object_new_string("no"));
    r |= stoke_json_add(hc, "RestartPolicy", restart);
    r |= stoke_json_add(hc, "AutoRemove", json_object_new_boolean(0));
    /* LogConfig is left out: the engine's default driver, so `stokectl logs`
     * can read the logs back through the engine. No Binds or Mounts: the
     * engine socket is never handed to a function. */
    if (r != 0) {
        json_object_put(hc);
        return NULL;
    }
    return hc;
}

/* The /containers/create body. Returns an owned object, or NULL with *err
 * set (-EINVAL for a bad config, -ENOMEM). */
static json_object *create_body(const struct stoke_container_config *cfg, int *err)
{
    json_object *body = json_object_new_object();
    json_object *env = NULL;
    json_object *labels = NULL;
    int r = -ENOMEM;

    if (!body)
        goto out;
    if (stoke_json_add(body, "Image", json_object_new_string(cfg->image)) < 0)
        goto out;
    env = json_object_new_array();
    if (!env)
        goto out;
    for (size_t i = 0; i < cfg->env_len; i++) {
        if (!cfg->env[i] || !strchr(cfg->env[i], '=')) {
            r = -EINVAL;
            goto out;
        }
        if (arr_add(env, json_object_new_string(cfg->env[i])) < 0)
            goto out;
    }
    r = stoke_json_add(body, "Env", env);
    env = NULL;
    if (r < 0)
        goto out;
    r = -ENOMEM;
    labels = json_object_new_object();
    if (!labels)
        goto out;
    for (size_t i = 0; i < cfg->labels_len; i++) {
        const struct stoke_label *l = &cfg->labels[i];
        if (!l->key || !*l->key || !l->value) {
            r = -EINVAL;
            goto out;
        }
        if (stoke_json_add(labels, l->key, json_object_new_string(l->value)) < 0)
            goto out;
    }
    r = stoke_json_add(body, "Labels", labels);
    labels = NULL;
    if (r < 0)
        goto out;
    if (is_bridge(cfg)) {
        /* The engine publishes only ports the container exposes. */
        json_object *exposed = json_object_new_object();
        char key[16];
        port_key(cfg, key);
        if (exposed && stoke_json_add(exposed, key, json_object_new_object()) < 0) {
            json_object_put(exposed);
            exposed = NULL;
        }
        /* stoke_json_add() takes exposed either way (NULL: -ENOMEM). */
        r = stoke_json_add(body, "ExposedPorts", exposed);
        if (r < 0)
            goto out;
    }
    r = stoke_json_add(body, "HostConfig", host_config(cfg));
    if (r < 0)
        goto out;
    *err = 0;
    return body;
out:
    json_object_put(env);
    json_object_put(labels);
    json_object_put(body);
    *err = r;
    return NULL;
}

int stoke_engine_create(struct stoke_engine *e, const struct stoke_container_config *cfg,
                        stoke_engine_cb cb, void *data)
{
    char path[ENGINE_URL_MAX] = "/containers/create";
    json_object *body = NULL;
    const char *text;
    struct call *c = NULL;
    int r = -EINVAL;

    if (!cfg->image || !*cfg->image || (cfg->env_len && !cfg->env) ||
        (cfg->labels_len && !cfg->labels))
        goto out;
    if (cfg->network_mode && strcmp(cfg->network_mode, "bridge") != 0 &&
        strcmp(cfg->network_mode, "host") != 0)
        goto out;
    if (is_bridge(cfg) && (cfg->container_port == 0 || cfg->host_port == 0))
        goto out;
    if (cfg->name) {
        char *ename = escape(cfg->name);
        if (!ename) {
            r = -ENOMEM;
            goto out;
        }
        int n = snprintf(path, sizeof(path), "/containers/create?name=%s", ename);
        curl_free(ename);
        if (n < 0 || (size_t)n >= sizeof(path)) {
            r = -ENAMETOOLONG;
            goto out;
        }
    }
    body = create_body(cfg, &r);
    if (!body)
        goto out;
    /* The string belongs to body; call_new copies it. */
    text = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN);
    if (!text) {
        r = -ENOMEM;
        goto out;
    }
    r = call_new(e, STOKE_ENGINE_OP_CREATE, M_POST, path, text, 0, cb, data, &c);
    if (r < 0)
        goto out;
    c->want_id = true;
    r = call_start(c);
out:
    json_object_put(body);
    return r;
}

int stoke_engine_start(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data)
{
    return container_request(e, STOKE_ENGINE_OP_START, M_POST, id, "/start", 0, cb, data);
}

int stoke_engine_inspect(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data)
{
    return container_request(e, STOKE_ENGINE_OP_INSPECT, M_GET, id, "/json", 0, cb, data);
}

int stoke_engine_pause(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data)
{
    return container_request(e, STOKE_ENGINE_OP_PAUSE, M_POST, id, "/pause", 0, cb, data);
}

int stoke_engine_unpause(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data)
{
    return container_request(e, STOKE_ENGINE_OP_UNPAUSE, M_POST, id, "/unpause", 0, cb, data);
}

int stoke_engine_stop(struct stoke_engine *e, const char *id, unsigned grace_s, stoke_engine_cb cb,
                      void *data)
{
    char suffix[32];
    int n = snprintf(suffix, sizeof(suffix), "/stop?t=%u", grace_s);
    if (n < 0 || (size_t)n >= sizeof(suffix))
        return -EINVAL;
    /* The engine answers only once the container is down: the call's
     * deadline must outlive the grace period. */
    return container_request(e, STOKE_ENGINE_OP_STOP, M_POST, id, suffix, (uint64_t)grace_s * 1000,
                             cb, data);
}

int stoke_engine_remove(struct stoke_engine *e, const char *id, bool force, stoke_engine_cb cb,
                        void *data)
{
    return container_request(e, STOKE_ENGINE_OP_REMOVE, M_DELETE, id,
                             force ? "?force=1&v=1" : "?v=1", 0, cb, data);
}

/* `prefix` followed by an escaped filters={"label":["key=value"]} (and
 * "type":[type] unless NULL) into path. Returns 0, -EINVAL, -ENAMETOOLONG,
 * -ENOMEM. */
static int label_path(const char *prefix, const char *key, const char *value, const char *type,
                      char path[ENGINE_URL_MAX])
{
    struct stoke_buf label;
    json_object *filters = NULL;
    char *efilters = NULL;
    int r = -EINVAL;
    int n;

    stoke_buf_init(&label, ENGINE_URL_MAX);
    if (!key || !*key || strchr(key, '='))
        goto out;
    r = value ? stoke_buf_printf(&label, "%s=%s", key, value)
              : stoke_buf_append(&label, key, strlen(key));
    if (r < 0) {
        r = r == -ENOBUFS ? -ENAMETOOLONG : r;
        goto out;
    }
    r = -ENOMEM;
    filters = json_object_new_object();
    if (!filters || stoke_json_add(filters, "label", str_array1(label.data)) < 0 ||
        (type && stoke_json_add(filters, "type", str_array1(type)) < 0))
        goto out;
    /* The string belongs to filters. */
    efilters = escape(json_object_to_json_string_ext(filters, JSON_C_TO_STRING_PLAIN));
    if (!efilters)
        goto out;
    n = snprintf(path, ENGINE_URL_MAX, "%s%s", prefix, efilters);
    r = n < 0 || n >= ENGINE_URL_MAX ? -ENAMETOOLONG : 0;
out:
    curl_free(efilters);
    json_object_put(filters);
    stoke_buf_done(&label);
    return r;
}

int stoke_engine_list(struct stoke_engine *e, const char *key, const char *value,
                      stoke_engine_cb cb, void *data)
{
    char path[ENGINE_URL_MAX];
    int r = label_path("/containers/json?all=1&filters=", key, value, NULL, path);
    if (r < 0)
        return r;
    return request(e, STOKE_ENGINE_OP_LIST, M_GET, path, 0, cb, data);
}

/* ---- the event stream ---- */

static int get_str(json_object *o, const char *key, char *buf, size_t size);

static void on_watch_closed(uv_handle_t *h)
{
    struct watch *w = h->data;
    for (size_t i = 0; i < w->len; i++)
        json_object_put(w->queue[(w->head + i) % w->cap]);
    free(w->queue);
    stoke_linebuf_done(&w->lines);
    free(w);
}

/* Runs from the loop: queued events, then the end once they are out. */
static void on_deliver(uv_timer_t *t)
{
    struct watch *w = t->data;
    /* A bounded batch per turn of the loop; the rest on the next one. */
    for (unsigned k = 0; k < 64 && w->len > 0; k++) {
        json_object *o = w->queue[w->head];
        struct stoke_container_event ev;
        w->head = (w->head + 1) % w->cap;
        w->len--;
        if (stoke_engine_event_parse(o, &ev) == 0)
            w->on_event(&ev, w->data);
        json_object_put(o);
        if (uv_is_closing((uv_handle_t *)&w->deliver))
            return; /* the callback closed the engine: the end has run */
    }
    if (w->len > 0) {
        uv_timer_start(&w->deliver, on_deliver, 0, 0);
        return;
    }
    if (w->ended) {
        w->on_end(&w->end, w->data);
        uv_close((uv_handle_t *)&w->deliver, on_watch_closed);
    }
}

static void watch_end(struct watch *w, const struct stoke_engine_result *res)
{
    w->ended = true;
    w->end = *res;
    /* The result's strings die with the transfer: keep a copy. */
    (void)snprintf(w->end_message, sizeof(w->end_message), "%s", res->message);
    w->end.message = w->end_message;
    w->end.json = NULL;
    w->end.id = NULL;
    if (res->err == -ECANCELED && w->e->closing) {
        /* From within stoke_engine_close(): the end now, events dropped. */
        w->on_end(&w->end, w->data);
        uv_close((uv_handle_t *)&w->deliver, on_watch_closed);
        return;
    }
    uv_timer_start(&w->deliver, on_deliver, 0, 0);
}

static int watch_stop(struct watch *w, int err, const char *message)
{
    w->err = err;
    (void)snprintf(w->message, sizeof(w->message), "%s", message);
    return err;
}

static int on_event_line(char *line, size_t len, void *data)
{
    struct watch *w = data;
    if (len == 0)
        return 0;
    json_object *o = stoke_json_parse(line, len);
    if (!o)
        return watch_stop(w, -EINVAL, "engine sent an event that is not JSON");
    if (w->len == EVENT_QUEUE_MAX) {
        json_object_put(o);
        return watch_stop(w, -ENOBUFS, "too many engine events waiting");
    }
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        json_object **q = malloc(cap * sizeof(*q));
        if (!q) {
            json_object_put(o);
            return watch_stop(w, -ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < w->len; i++)
            q[i] = w->queue[(w->head + i) % w->cap];
        free(w->queue);
        w->queue = q;
        w->cap = cap;
        w->head = 0;
    }
    w->queue[(w->head + w->len) % w->cap] = o;
    w->len++;
    return 0;
}

static int watch_feed(struct watch *w, const char *data, size_t len)
{
    int r = stoke_linebuf_feed(&w->lines, data, len, on_event_line, w);
    if (r == -ENOBUFS && w->err == 0)
        return watch_stop(w, -EFBIG, "engine event over 64 KiB");
    if (r < 0)
        return r;
    if (w->len > 0)
        uv_timer_start(&w->deliver, on_deliver, 0, 0);
    return 0;
}

int stoke_engine_events(struct stoke_engine *e, const char *key, const char *value,
                        stoke_engine_event_cb on_event, stoke_engine_cb on_end, void *data)
{
    char path[ENGINE_URL_MAX];
    struct call *c = NULL;
    struct watch *w = NULL;
    int r = label_path("/events?filters=", key, value, "container", path);

    if (r < 0)
        return r;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    r = call_new(e, STOKE_ENGINE_OP_EVENTS, M_GET, path, NULL, 0, on_end, data, &c);
    if (r < 0) {
        free(w);
        return r;
    }
    /* A stream has no deadline: it lasts as long as the engine keeps it. */
    if (curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, 0L) != CURLE_OK) {
        call_free(c);
        free(w);
        return -EINVAL;
    }
    w->e = e;
    w->on_event = on_event;
    w->on_end = on_end;
    w->data = data;
    stoke_linebuf_init(&w->lines, EVENT_LINE_MAX);
    uv_timer_init(e->loop, &w->deliver);
    w->deliver.data = w;
    c->watch = w;
    r = call_start(c); /* frees c on failure */
    if (r < 0)
        uv_close((uv_handle_t *)&w->deliver, on_watch_closed);
    return r;
}

int stoke_engine_event_parse(json_object *event, struct stoke_container_event *ret)
{
    struct stoke_container_event ev = {.exit_code = -1};
    json_object *type = NULL, *action = NULL, *actor = NULL, *attrs = NULL, *code = NULL;

    if (!event || !json_object_is_type(event, json_type_object) ||
        !json_object_object_get_ex(event, "Type", &type) ||
        !json_object_is_type(type, json_type_string) ||
        !json_object_object_get_ex(event, "Action", &action) ||
        !json_object_is_type(action, json_type_string) ||
        !json_object_object_get_ex(event, "Actor", &actor) ||
        !json_object_is_type(actor, json_type_object))
        return -EINVAL;
    if (strcmp(json_object_get_string(type), "container") != 0)
        return -ENOENT;
    if (get_str(actor, "ID", ev.id, sizeof(ev.id)) < 0 || !is_valid_id(ev.id))
        return -EINVAL;
    /* A long action ("exec_start: <command>") is cut: only its head matters. */
    (void)snprintf(ev.action, sizeof(ev.action), "%s", json_object_get_string(action));
    if (json_object_object_get_ex(actor, "Attributes", &attrs) && attrs) {
        if (!json_object_is_type(attrs, json_type_object))
            return -EINVAL;
        ev.attributes = attrs;
        uint64_t v;
        if (json_object_object_get_ex(attrs, "exitCode", &code) &&
            json_object_is_type(code, json_type_string) &&
            stoke_parse_u64(json_object_get_string(code), &v) == 0 && v <= INT_MAX)
            ev.exit_code = (int)v;
    }
    *ret = ev;
    return 0;
}

/* Copies string member `key` of `o` into buf. Returns 0 or -EINVAL (absent,
 * not a string, or too long). */
static int get_str(json_object *o, const char *key, char *buf, size_t size)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return -EINVAL;
    size_t len = (size_t)json_object_get_string_len(v);
    if (len >= size)
        return -EINVAL;
    memcpy(buf, json_object_get_string(v), len);
    buf[len] = '\0';
    if (strlen(buf) != len)
        return -EINVAL; /* embedded NUL */
    return 0;
}

static int get_bool(json_object *o, const char *key, bool *ret)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean))
        return -EINVAL;
    *ret = json_object_get_boolean(v);
    return 0;
}

static int get_int(json_object *o, const char *key, int *ret)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return -EINVAL;
    int64_t x = json_object_get_int64(v);
    if (x < INT32_MIN || x > INT32_MAX)
        return -EINVAL;
    *ret = (int)x;
    return 0;
}

int stoke_engine_state_parse(json_object *inspect, struct stoke_container_state *ret)
{
    struct stoke_container_state s = {0};
    json_object *state = NULL;

    if (!inspect || !json_object_is_type(inspect, json_type_object))
        return -EINVAL;
    if (get_str(inspect, "Id", s.id, sizeof(s.id)) < 0)
        return -EINVAL;
    if (!json_object_object_get_ex(inspect, "State", &state) ||
        !json_object_is_type(state, json_type_object))
        return -EINVAL;
    if (get_str(state, "Status", s.status, sizeof(s.status)) < 0 ||
        get_bool(state, "Running", &s.running) < 0 || get_bool(state, "Paused", &s.paused) < 0 ||
        get_int(state, "Pid", &s.pid) < 0 || get_int(state, "ExitCode", &s.exit_code) < 0 ||
        get_bool(state, "OOMKilled", &s.oom_killed) < 0)
        return -EINVAL;
    *ret = s;
    return 0;
}

int stoke_engine_list_get(json_object *list, size_t i, struct stoke_container_summary *ret)
{
    struct stoke_container_summary s = {0};
    json_object *entry;
    json_object *labels = NULL;

    if (!list || !json_object_is_type(list, json_type_array))
        return -EINVAL;
    if (i >= json_object_array_length(list))
        return -ERANGE;
    entry = json_object_array_get_idx(list, i);
    if (!entry || !json_object_is_type(entry, json_type_object))
        return -EINVAL;
    if (get_str(entry, "Id", s.id, sizeof(s.id)) < 0 ||
        get_str(entry, "State", s.state, sizeof(s.state)) < 0)
        return -EINVAL;
    /* Labels is null for a container without any. */
    if (json_object_object_get_ex(entry, "Labels", &labels) && labels) {
        if (!json_object_is_type(labels, json_type_object))
            return -EINVAL;
        s.labels = labels;
    }
    *ret = s;
    return 0;
}

const char *stoke_engine_label_get(const struct stoke_container_summary *s, const char *key)
{
    json_object *v = NULL;
    if (!s->labels || !json_object_object_get_ex(s->labels, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

/* ---- counters ---- */

static const char *const op_names[STOKE_ENGINE_OPS] = {
    [STOKE_ENGINE_OP_PING] = "ping",       [STOKE_ENGINE_OP_IMAGE_INSPECT] = "image_inspect",
    [STOKE_ENGINE_OP_CREATE] = "create",   [STOKE_ENGINE_OP_START] = "start",
    [STOKE_ENGINE_OP_INSPECT] = "inspect", [STOKE_ENGINE_OP_PAUSE] = "pause",
    [STOKE_ENGINE_OP_UNPAUSE] = "unpause", [STOKE_ENGINE_OP_STOP] = "stop",
    [STOKE_ENGINE_OP_REMOVE] = "remove",   [STOKE_ENGINE_OP_LIST] = "list",
    [STOKE_ENGINE_OP_EVENTS] = "events",   [STOKE_ENGINE_OP_LOGS] = "logs",
};

const char *stoke_engine_op_name(enum stoke_engine_op op)
{
    return (unsigned)op < STOKE_ENGINE_OPS ? op_names[op] : "?";
}

/* Counts a finished call as the operation its caller started. */
static void count(struct stoke_engine *e, enum stoke_engine_op op, int err)
{
    e->stats.calls[op]++;
    if (err < 0)
        e->stats.errors[op]++;
}

static void count_call(struct call *c, int err)
{
    count(c->e, c->op, err);
}

void stoke_engine_stats(const struct stoke_engine *e, struct stoke_engine_stats *ret)
{
    *ret = e->stats;
}

/* ---- container logs ---- */

#define LOGS_ERR_MAX (64u << 10)

int stoke_log_demux_feed(struct stoke_log_demux *d, const char *data, size_t len,
                         stoke_log_demux_cb cb, void *cbdata)
{
    while (len > 0) {
        if (d->raw)
            return cb(1, data, len, cbdata);
        if (d->left == 0) {
            size_t take = sizeof(d->hdr) - d->hdr_len;
            if (take > len)
                take = len;
            memcpy(d->hdr + d->hdr_len, data, take);
            d->hdr_len += take;
            data += take;
            len -= take;
            if (d->hdr_len < sizeof(d->hdr))
                return 0;
            d->hdr_len = 0;
            const unsigned char *h = d->hdr;
            bool ok = h[0] <= 2 && h[1] == 0 && h[2] == 0 && h[3] == 0;
            if (!ok && !d->started) {
                /* Not the engine's framing at all: a TTY's raw output. */
                d->raw = true;
                d->started = true;
                int r = cb(1, (const char *)h, sizeof(d->hdr), cbdata);
                if (r < 0)
                    return r;
                continue;
            }
            if (!ok)
                return -EINVAL;
            d->started = true;
            d->stream = h[0] == 2 ? 2 : 1;
            d->left = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
            continue;
        }
        size_t take = len < d->left ? len : d->left;
        int r = cb(d->stream, data, take, cbdata);
        if (r < 0)
            return r;
        d->left -= (uint32_t)take;
        data += take;
        len -= take;
    }
    return 0;
}

struct stoke_engine_logs {
    struct stoke_logq q;    /* the output on its way to on_data */
    struct stoke_engine *e; /* used only while the transfer runs */
    CURL *easy;             /* NULL once the transfer is over */
    char errbuf[CURL_ERROR_SIZE];
    struct stoke_log_demux demux;
    struct stoke_buf errbody; /* the body of an answer other than 2xx */
    int err;                  /* why we stopped the transfer, or 0 */
    struct stoke_engine_result end;
    char end_message[CURL_ERROR_SIZE];
    stoke_engine_cb on_end;
    void *data;
};

static void on_logs_closed(struct stoke_logq *q)
{
    struct stoke_engine_logs *l = stoke_container_of(q, struct stoke_engine_logs, q);
    stoke_buf_done(&l->errbody);
    free(l);
}

static void on_logs_end(struct stoke_logq *q)
{
    struct stoke_engine_logs *l = stoke_container_of(q, struct stoke_engine_logs, q);
    l->on_end(&l->end, l->data);
}

static size_t logs_on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct stoke_engine_logs *l = userdata;
    size_t n = size * nmemb;
    long status = 0;

    (void)curl_easy_getinfo(l->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status >= 300) {
        /* An error's body; what does not fit is not needed. */
        if (l->errbody.len + n <= LOGS_ERR_MAX)
            (void)stoke_buf_append(&l->errbody, ptr, n);
        return n;
    }
    if (stoke_logq_must_pause(&l->q))
        return CURL_WRITEFUNC_PAUSE;
    int r = stoke_log_demux_feed(&l->demux, ptr, n, stoke_logq_push, &l->q);
    if (r < 0) {
        l->err = r;
        return 0; /* less than n: curl ends the transfer with CURLE_WRITE_ERROR */
    }
    return n;
}

static void logs_on_done(CURL *easy, CURLcode rc, void *data)
{
    struct stoke_engine_logs *l = data;
    struct stoke_engine_result *res = &l->end;
    const char *msg = "";
    json_object *json = NULL;

    memset(res, 0, sizeof(*res));
    if (rc == CURLE_WRITE_ERROR && l->err < 0) {
        res->err = l->err == -ENOBUFS ? -ENOBUFS : -EINVAL;
        msg = l->err == -ENOBUFS ? "over 1 MiB of logs waiting" : "not the engine's log stream";
    } else if (rc != CURLE_OK) {
        res->err = rc == CURLE_ABORTED_BY_CALLBACK  ? -ECANCELED
                   : rc == CURLE_COULDNT_CONNECT    ? -ECONNREFUSED
                   : rc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT
                   : rc == CURLE_OUT_OF_MEMORY      ? -ENOMEM
                                                    : -EIO;
        msg = rc == CURLE_ABORTED_BY_CALLBACK ? "engine client closed"
              : l->errbuf[0]                  ? l->errbuf
                                              : curl_easy_strerror(rc);
    } else {
        (void)curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res->http_status);
        res->err = status_to_errno(res->http_status);
        if (res->err < 0) {
            json_object *m = NULL;
            json = stoke_json_parse(l->errbody.data ? l->errbody.data : "", l->errbody.len);
            /* _get_ex lends m: valid while json lives. */
            if (json && json_object_object_get_ex(json, "message", &m) &&
                json_object_is_type(m, json_type_string))
                msg = json_object_get_string(m);
            else
                msg = text_message(&l->errbody);
        }
    }
    (void)snprintf(l->end_message, sizeof(l->end_message), "%s", msg);
    res->message = l->end_message;
    json_object_put(json);
    curl_easy_cleanup(easy);
    l->easy = NULL;
    /* Counted now: the engine may be gone by the time the end is delivered. */
    count(l->e, STOKE_ENGINE_OP_LOGS, res->err);
    /* From within stoke_engine_close(): the end now, the output dropped. */
    stoke_logq_done(&l->q, rc == CURLE_ABORTED_BY_CALLBACK && l->e->closing);
}

int stoke_engine_logs(struct stoke_engine *e, const char *id,
                      const struct stoke_engine_logs_opts *opts, stoke_engine_log_cb on_data,
                      stoke_engine_cb on_end, void *data, struct stoke_engine_logs **ret)
{
    char url[ENGINE_URL_MAX], tail[32] = "all", since[48] = "";
    struct stoke_engine_logs *l = NULL;
    char *eid = NULL;
    int r = -EINVAL;
    int n;

    if (e->closing)
        return -ECANCELED;
    if (!id || !is_valid_id(id))
        return -EINVAL;
    if (opts->tail >= 0)
        (void)snprintf(tail, sizeof(tail), "%lld", (long long)opts->tail);
    if (opts->since_ms)
        (void)snprintf(since, sizeof(since), "&since=%llu.%03llu",
                       (unsigned long long)(opts->since_ms / 1000),
                       (unsigned long long)(opts->since_ms % 1000));
    eid = escape(id);
    if (!eid)
        return -ENOMEM;
    n = snprintf(url, sizeof(url),
                 "http://localhost/" ENGINE_API_VERSION
                 "/containers/%s/logs?stdout=1&stderr=1&follow=%d&timestamps=%d&tail=%s%s",
                 eid, opts->follow ? 1 : 0, opts->timestamps ? 1 : 0, tail, since);
    curl_free(eid);
    if (n < 0 || (size_t)n >= sizeof(url))
        return -ENAMETOOLONG;

    l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->e = e;
    l->on_end = on_end;
    l->data = data;
    stoke_buf_init(&l->errbody, LOGS_ERR_MAX);
    l->easy = curl_easy_init();
    if (!l->easy) {
        r = -ENOMEM;
        goto fail;
    }
    /* No time limit: a follow lasts as long as the container runs, and a
     * paused transfer as long as its reader is slow. Connecting has one. */
    if (curl_easy_setopt(l->easy, CURLOPT_URL, url) != CURLE_OK ||
        curl_easy_setopt(l->easy, CURLOPT_UNIX_SOCKET_PATH, e->socket_path) != CURLE_OK ||
        curl_easy_setopt(l->easy, CURLOPT_WRITEFUNCTION, logs_on_write) != CURLE_OK ||
        curl_easy_setopt(l->easy, CURLOPT_WRITEDATA, l) != CURLE_OK ||
        curl_easy_setopt(l->easy, CURLOPT_ERRORBUFFER, l->errbuf) != CURLE_OK ||
        curl_easy_setopt(l->easy, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
        curl_easy_setopt(l->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)e->timeout_ms) != CURLE_OK)
        goto fail;
    r = stoke_curluv_add(e->cu, l->easy, logs_on_done, l);
    if (r < 0)
        goto fail;
    stoke_logq_init(&l->q, e->loop, l->easy, on_data, on_logs_end, on_logs_closed, data);
    *ret = l;
    return 0;
fail:
    if (l->easy)
        curl_easy_cleanup(l->easy);
    stoke_buf_done(&l->errbody);
    free(l);
    return r;
}

void stoke_engine_logs_pause(struct stoke_engine_logs *l, bool pause)
{
    stoke_logq_pause(&l->q, pause);
}

void stoke_engine_logs_cancel(struct stoke_engine_logs *l)
{
    if (!stoke_logq_cancel(&l->q))
        return;
    if (l->easy && stoke_curluv_remove(l->e->cu, l->easy) == 0) {
        curl_easy_cleanup(l->easy);
        l->easy = NULL;
        count(l->e, STOKE_ENGINE_OP_LOGS, -ECANCELED);
        stoke_logq_done(&l->q, false);
    }
    if (!l->easy) {
        memset(&l->end, 0, sizeof(l->end));
        l->end.err = -ECANCELED;
        (void)snprintf(l->end_message, sizeof(l->end_message), "cancelled");
        l->end.message = l->end_message;
    }
}
