/* Watch events, the object cache and the informer; see stoke/kube.h.
 *
 * The informer LISTs page by page into a fresh array, replaces the cache
 * with it (emitting the difference, so whatever happened while we were not
 * watching is delivered), then WATCHes from the list's resourceVersion. The
 * watch's lines are parsed inside libcurl's write callback into a bounded
 * queue and delivered from a zero timer, where callers may start requests
 * (libcurl refuses them from its callbacks). A watch that ends is resumed
 * from the last resourceVersion seen; 410 Gone (as the answer or as an
 * ERROR event) starts a new LIST; failures wait with back-off. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "kubeint.h"
#include "stoke/backoff.h"
#include "stoke/json.h"
#include "stoke/kube.h"
#include "stoke/linebuf.h"

/* The biggest object etcd stores is 1.5 MiB; its JSON line, a bit more. */
#define WATCH_LINE_MAX (3u << 20)
/* Lines parsed but not yet delivered; past this the watch is dropped and
 * a relist catches up (nothing is lost, memory stays bounded). */
#define WATCH_QUEUE_BYTES (16u << 20)
#define WATCH_QUEUE_MAX 4096
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define KEY_MAX 512

const char *stoke_kube_object_rv(json_object *obj)
{
    return stoke_json_str(stoke_json_obj(obj, "metadata"), "resourceVersion");
}

int stoke_kube_object_key(json_object *obj, char *buf, size_t size)
{
    json_object *md = stoke_json_obj(obj, "metadata");
    const char *name = stoke_json_str(md, "name"), *ns = stoke_json_str(md, "namespace");
    int n;

    if (!name || !*name)
        return -EINVAL;
    n = ns && *ns ? snprintf(buf, size, "%s/%s", ns, name) : snprintf(buf, size, "%s", name);
    if (n < 0 || (size_t)n >= size)
        return -ENAMETOOLONG;
    return 0;
}

int stoke_kube_event_parse(const char *line, size_t len, enum stoke_kube_event_type *ret_type,
                           json_object **ret_obj, struct stoke_kube_status *ret_status)
{
    static const char *const names[] = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"};
    json_object *ev = stoke_json_parse(line, len), *obj;
    const char *type;
    struct stoke_kube_status st;
    char key[KEY_MAX];
    int r = -EINVAL;
    size_t t;

    if (!ev)
        return -EINVAL;
    type = stoke_json_str(ev, "type");
    obj = stoke_json_obj(ev, "object");
    if (!type || !obj)
        goto out;
    for (t = 0; t < 5; t++)
        if (strcmp(type, names[t]) == 0)
            break;
    if (t == 5)
        goto out;
    if (t == STOKE_KUBE_ERROR) {
        if (stoke_kube_status_parse(obj, &st) < 0)
            goto out;
        if (ret_status)
            *ret_status = st;
    } else {
        const char *rv = stoke_kube_object_rv(obj);
        if (!rv || !*rv)
            goto out;
        if (t != STOKE_KUBE_BOOKMARK && stoke_kube_object_key(obj, key, sizeof(key)) < 0)
            goto out;
    }
    *ret_type = (enum stoke_kube_event_type)t;
    *ret_obj = json_object_get(obj);
    r = 0;
out:
    json_object_put(ev);
    return r;
}

int stoke_kube_cache_apply(json_object *cache, enum stoke_kube_event_type type, json_object *obj,
                           stoke_kube_emit_fn emit, void *data)
{
    char key[KEY_MAX];
    json_object *old = NULL;
    int r;

    if (type != STOKE_KUBE_ADDED && type != STOKE_KUBE_MODIFIED && type != STOKE_KUBE_DELETED)
        return 0;
    r = stoke_kube_object_key(obj, key, sizeof(key));
    if (r < 0)
        return r == -ENAMETOOLONG ? -EINVAL : r;
    (void)json_object_object_get_ex(cache, key, &old);
    if (type == STOKE_KUBE_DELETED) {
        if (!old)
            return 0;
        /* obj may be the cached object itself: keep it alive for emit. */
        json_object_get(obj);
        json_object_object_del(cache, key);
        emit(STOKE_KUBE_DELETED, obj, data);
        json_object_put(obj);
        return 0;
    }
    if (old) {
        const char *a = stoke_kube_object_rv(old), *b = stoke_kube_object_rv(obj);
        if (old == obj || (a && b && strcmp(a, b) == 0))
            return 0;
    }
    bool existed = old != NULL;
    if (json_object_object_add(cache, key, json_object_get(obj)) < 0) {
        json_object_put(obj);
        return -ENOMEM;
    }
    emit(existed ? STOKE_KUBE_MODIFIED : STOKE_KUBE_ADDED, obj, data);
    return 0;
}

int stoke_kube_cache_relist(json_object *cache, json_object *items, stoke_kube_emit_fn emit,
                            void *data)
{
    json_object *fresh = json_object_new_object();
    json_object *changes = json_object_new_array(); /* [type, obj] pairs, in order */
    size_t n = json_object_array_length(items);
    char key[KEY_MAX];
    int r = -ENOMEM;

    if (!fresh || !changes)
        goto out;
    r = -EINVAL;
    if (!json_object_is_type(items, json_type_array))
        goto out;
    for (size_t i = 0; i < n; i++) {
        json_object *it = json_object_array_get_idx(items, i);
        if (stoke_kube_object_key(it, key, sizeof(key)) < 0)
            goto out;
        r = -ENOMEM;
        if (json_object_object_add(fresh, key, json_object_get(it)) < 0) {
            json_object_put(it);
            goto out;
        }
        r = -EINVAL;
    }
    r = -ENOMEM;
    /* Gone while we were away: deletions first, with the last known state. */
    json_object_object_foreach(cache, okey, oval)
    {
        if (json_object_object_get_ex(fresh, okey, NULL))
            continue;
        if (json_object_array_add(changes, json_object_new_int(STOKE_KUBE_DELETED)) < 0 ||
            json_object_array_add(changes, json_object_get(oval)) < 0)
            goto out;
    }
    json_object_object_foreach(fresh, nkey, nval)
    {
        json_object *old = NULL;
        enum stoke_kube_event_type t = STOKE_KUBE_ADDED;
        if (json_object_object_get_ex(cache, nkey, &old)) {
            const char *a = stoke_kube_object_rv(old), *b = stoke_kube_object_rv(nval);
            if (a && b && strcmp(a, b) == 0)
                continue;
            t = STOKE_KUBE_MODIFIED;
        }
        if (json_object_array_add(changes, json_object_new_int(t)) < 0 ||
            json_object_array_add(changes, json_object_get(nval)) < 0)
            goto out;
    }
    /* The cache becomes `fresh` before anything is emitted, so a callback
     * that reads it sees the new state. */
    while (json_object_object_length(cache) > 0) {
        struct lh_entry *e = json_object_get_object(cache)->head;
        json_object_object_del(cache, (const char *)lh_entry_k(e));
    }
    json_object_object_foreach(fresh, fkey, fval)
    {
        if (json_object_object_add(cache, fkey, json_object_get(fval)) < 0) {
            /* Only on OOM while re-adding; the cache is then partial. */
            json_object_put(fval);
            goto out;
        }
    }
    for (size_t i = 0; i + 1 < json_object_array_length(changes); i += 2)
        emit((enum stoke_kube_event_type)json_object_get_int(json_object_array_get_idx(changes, i)),
             json_object_array_get_idx(changes, i + 1), data);
    r = 0;
out:
    json_object_put(fresh);
    json_object_put(changes);
    return r;
}

/* --- the informer ---------------------------------------------------------------- */

struct queued {
    enum stoke_kube_event_type type;
    json_object *obj;
    size_t bytes;
};

struct stoke_kube_informer {
    struct stoke_kube *k;
    struct stoke_kube_informer_opts o;
    char *ns, *label_selector, *field_selector; /* owned copies */
    json_object *cache;
    json_object *items;            /* the LIST being read, page by page */
    char *cont;                    /* its continue token */
    char rv[64];                   /* where to watch from; "" before the first LIST */
    struct stoke__kube_call *call; /* the LIST or WATCH in flight */
    uv_timer_t deliver, retry;
    unsigned open_timers;
    struct stoke_linebuf lines;
    struct queued *queue; /* ring */
    size_t head, len, bytes;
    bool relist; /* 410 seen: the next step is a LIST */
    bool stopped;
    bool delivering;
    uint32_t failures;
    uint64_t watch_started_ms;
    struct stoke_kube_informer_stats stats;
};

static void start_list(struct stoke_kube_informer *inf);
static void start_watch(struct stoke_kube_informer *inf);

static void report(struct stoke_kube_informer *inf, int err, const char *message)
{
    inf->stats.errors++;
    if (inf->o.on_error)
        inf->o.on_error(err, message, inf->o.data);
}

/* 410 Gone: the next step is a LIST. */
static void gone(struct stoke_kube_informer *inf)
{
    inf->stats.gone++;
    inf->relist = true;
    if (inf->o.on_gone && !inf->stopped)
        inf->o.on_gone(inf->rv, inf->o.data);
}

/* Tries again after back-off: a LIST when `relist`, else a WATCH. */
static void on_retry(uv_timer_t *t)
{
    struct stoke_kube_informer *inf = t->data;
    if (inf->stopped)
        return;
    if (inf->relist || !inf->rv[0])
        start_list(inf);
    else
        start_watch(inf);
}

static void retry_later(struct stoke_kube_informer *inf)
{
    inf->failures++;
    (void)uv_timer_start(&inf->retry, on_retry,
                         stoke_backoff_ms(inf->failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS), 0);
}

/* The query string: selectors, and `extra` ("limit=500", "watch=1&..."). */
static int list_path(struct stoke_kube_informer *inf, const char *extra, char *buf, size_t size)
{
    char base[1024];
    const char *sel[2] = {inf->label_selector, inf->field_selector};
    const char *names[2] = {"labelSelector", "fieldSelector"};
    struct stoke_kube_resource all = *inf->o.res;
    size_t off;
    int r;

    /* All namespaces: the cluster-wide path of a namespaced resource. */
    if (!inf->ns)
        all.namespaced = false;
    r = stoke_kube_path(&all, inf->ns, NULL, NULL, base, sizeof(base));
    if (r < 0)
        return r;
    r = snprintf(buf, size, "%s?%s", base, extra);
    if (r < 0 || (size_t)r >= size)
        return -ENAMETOOLONG;
    off = (size_t)r;
    for (int i = 0; i < 2; i++) {
        if (!sel[i])
            continue;
        char *e = curl_easy_escape(NULL, sel[i], 0);
        if (!e)
            return -ENOMEM;
        r = snprintf(buf + off, size - off, "&%s=%s", names[i], e);
        curl_free(e);
        if (r < 0 || (size_t)r >= size - off)
            return -ENAMETOOLONG;
        off += (size_t)r;
    }
    return 0;
}

static void emit_user(enum stoke_kube_event_type type, json_object *obj, void *data)
{
    struct stoke_kube_informer *inf = data;
    if (!inf->stopped && inf->o.on_event)
        inf->o.on_event(type, obj, inf->o.data);
}

static void on_list(const struct stoke_kube_result *res, void *data)
{
    struct stoke_kube_informer *inf = data;
    json_object *items = NULL, *md;
    const char *rv, *cont;
    char msg[600];

    inf->call = NULL;
    if (res->err < 0) {
        if (res->err == -ECANCELED)
            return; /* the client is closing */
        if (res->err == -EIDRM && inf->cont) {
            /* The continue token expired: the list starts over at once. */
            gone(inf);
            if (inf->stopped)
                return;
            start_list(inf);
            return;
        }
        (void)snprintf(msg, sizeof(msg), "LIST %s: %s", inf->o.res->plural, res->status.message);
        report(inf, res->err, msg);
        if (!inf->stopped)
            retry_later(inf);
        return;
    }
    md = NULL;
    (void)json_object_object_get_ex(res->json, "metadata", &md);
    (void)json_object_object_get_ex(res->json, "items", &items);
    rv = md ? stoke_json_str(md, "resourceVersion") : NULL;
    cont = md ? stoke_json_str(md, "continue") : NULL;
    if (!json_object_is_type(items, json_type_array) || !rv || strlen(rv) >= sizeof(inf->rv)) {
        report(inf, -EBADMSG, "LIST answer without items or resourceVersion");
        retry_later(inf);
        return;
    }
    size_t n = json_object_array_length(items);
    if (json_object_array_length(inf->items) + n > inf->o.max_objects) {
        (void)snprintf(msg, sizeof(msg), "LIST %s: more than %zu objects", inf->o.res->plural,
                       inf->o.max_objects);
        report(inf, -EFBIG, msg);
        retry_later(inf);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *it = json_object_array_get_idx(items, i);
        if (json_object_array_add(inf->items, json_object_get(it)) < 0) {
            json_object_put(it);
            report(inf, -ENOMEM, "out of memory");
            retry_later(inf);
            return;
        }
    }
    free(inf->cont);
    inf->cont = NULL;
    if (cont && *cont) {
        inf->cont = strdup(cont);
        if (!inf->cont) {
            report(inf, -ENOMEM, "out of memory");
            retry_later(inf);
            return;
        }
        start_list(inf);
        return;
    }
    /* The whole list: replace the cache and report what changed. */
    int r = stoke_kube_cache_relist(inf->cache, inf->items, emit_user, inf);
    json_object_put(inf->items);
    inf->items = NULL;
    if (inf->stopped)
        return;
    if (r < 0) {
        report(inf, r, "LIST answer has an item without a name");
        retry_later(inf);
        return;
    }
    memcpy(inf->rv, rv, strlen(rv) + 1);
    inf->relist = false;
    inf->failures = 0;
    inf->stats.lists++;
    if (inf->o.on_synced)
        inf->o.on_synced(inf->o.data);
    if (!inf->stopped)
        start_watch(inf);
}

static void start_list(struct stoke_kube_informer *inf)
{
    char extra[1200];
    char path[4096];
    int r;

    if (!inf->cont) {
        json_object_put(inf->items);
        inf->items = json_object_new_array();
        if (!inf->items) {
            report(inf, -ENOMEM, "out of memory");
            retry_later(inf);
            return;
        }
    }
    if (inf->cont) {
        char *e = curl_easy_escape(NULL, inf->cont, 0);
        r = e ? snprintf(extra, sizeof(extra), "limit=%u&continue=%s", inf->o.page_limit, e) : -1;
        curl_free(e);
        if (r < 0 || (size_t)r >= sizeof(extra)) {
            /* A token we cannot send: start the list over. */
            free(inf->cont);
            inf->cont = NULL;
            report(inf, -ENAMETOOLONG, "LIST continue token too long");
            retry_later(inf);
            return;
        }
    } else {
        (void)snprintf(extra, sizeof(extra), "limit=%u", inf->o.page_limit);
    }
    r = list_path(inf, extra, path, sizeof(path));
    if (r == 0)
        r = stoke__kube_request_ex(inf->k, STOKE_KUBE_GET, path, NULL, on_list, inf, &inf->call);
    if (r < 0 && r != -ECANCELED) {
        report(inf, r, "cannot start LIST");
        retry_later(inf);
    }
}

/* --- watching --------------------------------------------------------------------- */

/* Applies one event from the loop. */
static void deliver_one(struct stoke_kube_informer *inf, struct queued *q)
{
    const char *rv;
    struct stoke_kube_status st = {0};

    inf->stats.events++;
    if (q->type == STOKE_KUBE_ERROR) {
        if (stoke_kube_status_parse(q->obj, &st) == 0 && st.code == 410) {
            if (!inf->relist)
                gone(inf);
        } else {
            report(inf, -EIO, st.message);
        }
        return;
    }
    if (q->type == STOKE_KUBE_BOOKMARK)
        inf->stats.bookmarks++;
    if (inf->relist)
        return; /* the relist will bring the cache up to date */
    rv = stoke_kube_object_rv(q->obj);
    if (rv && strlen(rv) < sizeof(inf->rv))
        memcpy(inf->rv, rv, strlen(rv) + 1);
    (void)stoke_kube_cache_apply(inf->cache, q->type, q->obj, emit_user, inf);
}

/* Delivers up to `max` queued events; false when the informer was stopped
 * from a callback. */
static bool deliver(struct stoke_kube_informer *inf, size_t max)
{
    inf->delivering = true;
    for (size_t i = 0; i < max && inf->len > 0 && !inf->stopped; i++) {
        struct queued q = inf->queue[inf->head];
        inf->head = (inf->head + 1) % WATCH_QUEUE_MAX;
        inf->len--;
        inf->bytes -= q.bytes;
        deliver_one(inf, &q);
        json_object_put(q.obj);
    }
    inf->delivering = false;
    return !inf->stopped;
}

static void drop_queue(struct stoke_kube_informer *inf)
{
    for (; inf->len > 0; inf->len--) {
        json_object_put(inf->queue[inf->head].obj);
        inf->head = (inf->head + 1) % WATCH_QUEUE_MAX;
    }
    inf->bytes = 0;
}

static void on_deliver(uv_timer_t *t)
{
    struct stoke_kube_informer *inf = t->data;
    /* A bounded batch per turn of the loop; the rest on the next one. */
    if (!deliver(inf, 64))
        return;
    if (inf->relist && inf->call) {
        /* 410 as an ERROR event: the server ends the watch after it, but
         * we need not wait for that. */
        stoke__kube_cancel(inf->call);
        inf->call = NULL;
        drop_queue(inf);
        start_list(inf);
        return;
    }
    if (inf->len > 0)
        (void)uv_timer_start(&inf->deliver, on_deliver, 0, 0);
}

static int on_line(char *line, size_t len, void *data)
{
    struct stoke_kube_informer *inf = data;
    enum stoke_kube_event_type type;
    json_object *obj;

    if (len == 0)
        return 0;
    if (inf->len == WATCH_QUEUE_MAX || inf->bytes + len > WATCH_QUEUE_BYTES)
        return -ENOBUFS;
    if (stoke_kube_event_parse(line, len, &type, &obj, NULL) < 0)
        return -EBADMSG;
    inf->queue[(inf->head + inf->len) % WATCH_QUEUE_MAX] = (struct queued){type, obj, len};
    inf->len++;
    inf->bytes += len;
    return 0;
}

/* From inside libcurl: parse and queue only. */
static int on_watch_data(const char *p, size_t n, void *data)
{
    struct stoke_kube_informer *inf = data;
    int r = stoke_linebuf_feed(&inf->lines, p, n, on_line, inf);
    if (inf->len > 0)
        (void)uv_timer_start(&inf->deliver, on_deliver, 0, 0);
    return r == -ENOBUFS ? -EFBIG : r;
}

static void on_watch_end(const struct stoke_kube_result *res, void *data)
{
    struct stoke_kube_informer *inf = data;
    char msg[600];

    inf->call = NULL;
    if (res->err == -ECANCELED)
        return;
    /* What arrived before the end is applied first, in order. */
    if (!deliver(inf, SIZE_MAX))
        return;
    (void)uv_timer_stop(&inf->deliver);
    if (res->err == -EIDRM) {
        /* 410 Gone: our resourceVersion is compacted away. */
        gone(inf);
        if (inf->stopped)
            return;
    }
    if (inf->relist) {
        start_list(inf);
        return;
    }
    if (res->err < 0) {
        /* A line over the cap, a full queue, a bad line: relist, as events
         * may be lost; transport errors resume the watch. */
        if (res->err == -EFBIG || res->err == -ENOBUFS || res->err == -EBADMSG)
            inf->relist = true;
        (void)snprintf(msg, sizeof(msg), "WATCH %s: %s", inf->o.res->plural, res->status.message);
        report(inf, res->err, msg);
        if (!inf->stopped)
            retry_later(inf);
        return;
    }
    /* The server ended it (timeoutSeconds): resume from where we are; at
     * once after a long watch, with back-off when they end right away. */
    if (uv_now(stoke__kube_loop(inf->k)) - inf->watch_started_ms >= 1000) {
        inf->failures = 0;
        start_watch(inf);
    } else {
        retry_later(inf);
    }
}

static void start_watch(struct stoke_kube_informer *inf)
{
    char extra[256];
    char path[4096];
    int r;

    stoke_linebuf_done(&inf->lines);
    stoke_linebuf_init(&inf->lines, WATCH_LINE_MAX);
    (void)snprintf(extra, sizeof(extra),
                   "watch=1&allowWatchBookmarks=true&timeoutSeconds=%u&resourceVersion=%s",
                   inf->o.watch_timeout_s, inf->rv);
    r = list_path(inf, extra, path, sizeof(path));
    inf->watch_started_ms = uv_now(stoke__kube_loop(inf->k));
    if (r == 0)
        r = stoke__kube_stream(inf->k, path, (uint64_t)(inf->o.watch_timeout_s + 30) * 1000,
                               on_watch_data, on_watch_end, inf, &inf->call);
    if (r == 0) {
        inf->stats.watches++;
        return;
    }
    if (r != -ECANCELED) {
        report(inf, r, "cannot start WATCH");
        retry_later(inf);
    }
}

/* --- lifetime ---------------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
    struct stoke_kube_informer *inf = h->data;
    if (--inf->open_timers > 0)
        return;
    drop_queue(inf);
    free(inf->queue);
    stoke_linebuf_done(&inf->lines);
    json_object_put(inf->cache);
    json_object_put(inf->items);
    free(inf->cont);
    free(inf->ns);
    free(inf->label_selector);
    free(inf->field_selector);
    free(inf);
}

int stoke_kube_informer_start(struct stoke_kube *k, const struct stoke_kube_informer_opts *opts,
                              struct stoke_kube_informer **ret)
{
    struct stoke_kube_informer *inf;

    if (!opts || !opts->res || !opts->on_event)
        return -EINVAL;
    inf = calloc(1, sizeof(*inf));
    if (!inf)
        return -ENOMEM;
    inf->k = k;
    inf->o = *opts;
    if (!inf->o.page_limit)
        inf->o.page_limit = 500;
    if (!inf->o.watch_timeout_s)
        inf->o.watch_timeout_s = 300;
    if (!inf->o.max_objects)
        inf->o.max_objects = 65536;
    stoke_linebuf_init(&inf->lines, WATCH_LINE_MAX);
    inf->cache = json_object_new_object();
    inf->queue = calloc(WATCH_QUEUE_MAX, sizeof(*inf->queue));
    if (!inf->cache || !inf->queue || (opts->ns && !(inf->ns = strdup(opts->ns))) ||
        (opts->label_selector && !(inf->label_selector = strdup(opts->label_selector))) ||
        (opts->field_selector && !(inf->field_selector = strdup(opts->field_selector)))) {
        json_object_put(inf->cache);
        free(inf->queue);
        free(inf->ns);
        free(inf->label_selector);
        free(inf->field_selector);
        stoke_linebuf_done(&inf->lines);
        free(inf);
        return -ENOMEM;
    }
    inf->o.ns = inf->o.label_selector = inf->o.field_selector = NULL;
    (void)uv_timer_init(stoke__kube_loop(k), &inf->deliver);
    (void)uv_timer_init(stoke__kube_loop(k), &inf->retry);
    inf->deliver.data = inf->retry.data = inf;
    inf->open_timers = 2;
    /* The first LIST starts from the loop, like every later step. */
    (void)uv_timer_start(&inf->retry, on_retry, 0, 0);
    *ret = inf;
    return 0;
}

void stoke_kube_informer_stop(struct stoke_kube_informer *inf)
{
    if (!inf || inf->stopped)
        return;
    inf->stopped = true;
    stoke__kube_cancel(inf->call);
    inf->call = NULL;
    uv_close((uv_handle_t *)&inf->deliver, on_timer_closed);
    uv_close((uv_handle_t *)&inf->retry, on_timer_closed);
}

json_object *stoke_kube_informer_cache(const struct stoke_kube_informer *inf)
{
    return inf->cache;
}

const char *stoke_kube_informer_rv(const struct stoke_kube_informer *inf)
{
    return inf->rv;
}

void stoke_kube_informer_stats(const struct stoke_kube_informer *inf,
                               struct stoke_kube_informer_stats *ret)
{
    *ret = inf->stats;
}
