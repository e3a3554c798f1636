/* GET /api/v1/functions/{name}/logs: see api_logs.h.
 *
 * One stream (struct lstream) per request, reading one backend log stream
 * (struct lsource) per replica. Without follow the containers are read
 * one after the other, so each replica's lines come together; with follow
 * all at once, and a timer looks for replicas started later (and for
 * stopped ones woken again, read from where they ended) until the function
 * is gone. Output is cut into lines, each sent as "[<replica>] <line>\n".
 * The answer's head waits for the first output or the first log read to
 * its end (follow: at most one poll), so that when every replica's log
 * fails the status says so: 404 for a replica gone, 502 when the backend
 * cannot read it (on Kubernetes the API server's message, e.g. about the
 * kubelet it cannot reach).
 * When the client does not keep up, every backend stream of the request is
 * paused (on Docker libcurl stops reading the engine's socket) until the answer
 * drains, so memory stays bounded whatever the client does. */
#include "api_logs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stoke/list.h"
#include "stoke/log.h"
#include "stoke/spec.h"

#define FOLLOW_POLL_MS 500
#define LINE_MAX_BYTES (16 * 1024) /* a longer line is sent in pieces of this */
#define OUT_MAX (LINE_MAX_BYTES * 4 + 256)

struct api_logs {
    struct ctrl *c;
    struct stoke_list streams; /* struct lstream.node */
    bool freeing;              /* api_logs_free(): free once the last stream is gone */
};

struct lstream {
    struct stoke_list node;
    struct api_logs *l;
    struct stoke_httpd_req *req; /* NULL once answered or the client went */
    char fn[STOKE_NAME_MAX + 1];
    struct backend_logs_opts opts;
    bool follow;
    uv_timer_t poll; /* follow: replicas started later, the function gone */
    bool poll_open;
    struct stoke_list sources; /* struct lsource.node */
    bool ended;                /* no more output; freed once the sources are over */
    bool paused;               /* the client is behind: backend streams paused */
    bool begun;                /* the answer's head is sent (200, chunked) */
    int fail_status;           /* before the head: 404 or 502 for the first failed source */
    char fail_message[600];
    struct stoke_buf out; /* lines of one delivery, sent as one chunk */
};

struct lsource {
    struct stoke_list node;
    struct lstream *st;
    char id[65];
    char name[96];
    struct backend_logs *h;      /* NULL while not reading */
    bool done;                   /* read (without follow), or its container is gone */
    uint64_t woke_ms;            /* the replica's created_ms when last attached */
    uint64_t ended_wall_ms;      /* when its stream last ended (Unix ms) */
    struct stoke_buf partial[3]; /* an unfinished line per stream (1 stdout, 2 stderr) */
};

static uint64_t wall_ms(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- lifetimes ----------------------------------------------------------- */

static void logs_maybe_free(struct api_logs *l)
{
    if (l->freeing && stoke_list_empty(&l->streams))
        free(l);
}

static void source_free(struct lsource *src)
{
    stoke_list_remove(&src->node);
    for (int i = 0; i < 3; i++)
        stoke_buf_done(&src->partial[i]);
    free(src);
}

/* Frees the stream once nothing of it runs: its sources' log streams
 * have ended and its timer is closed. */
static void stream_maybe_free(struct lstream *st)
{
    if (!st->ended || st->poll_open)
        return;
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next) {
        if (stoke_container_of(n, struct lsource, node)->h)
            return;
    }
    while (!stoke_list_empty(&st->sources))
        source_free(stoke_container_of(stoke_list_first(&st->sources), struct lsource, node));
    struct api_logs *l = st->l;
    stoke_list_remove(&st->node);
    stoke_buf_done(&st->out);
    free(st);
    logs_maybe_free(l);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct lstream *st = h->data;
    st->poll_open = false;
    stream_maybe_free(st);
}

/* Ends the answer (its last chunk, when `send_end` and the client is still
 * there) and every log stream of it. Never frees `st`: the caller calls
 * stream_maybe_free() last, once it is done with it. */
static void stream_end(struct lstream *st, bool send_end)
{
    if (st->ended)
        return;
    st->ended = true;
    if (st->req) {
        struct stoke_httpd_req *req = st->req;
        st->req = NULL;
        req->on_abort = NULL;
        req->on_drain = NULL;
        if (send_end && !st->begun && st->fail_status) {
            /* Nothing was read, every replica's log failed: the first
             * failure is the answer. */
            stoke_httpd_reply_error(req, st->fail_status, NULL, NULL, "%s", st->fail_message);
        } else if (send_end) {
            if (!st->begun)
                stoke_httpd_stream_begin(req, "text/plain; charset=utf-8");
            stoke_httpd_stream_end(req);
        }
    }
    if (st->poll_open && !uv_is_closing((uv_handle_t *)&st->poll))
        uv_close((uv_handle_t *)&st->poll, on_poll_closed);
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next) {
        struct lsource *src = stoke_container_of(n, struct lsource, node);
        if (src->h)
            st->l->c->be->ops->logs_cancel(src->h); /* on_end comes later */
    }
}

/* ---- output -------------------------------------------------------------- */

static void set_paused(struct lstream *st, bool paused)
{
    if (st->paused == paused)
        return;
    st->paused = paused;
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next) {
        struct lsource *src = stoke_container_of(n, struct lsource, node);
        if (src->h)
            st->l->c->be->ops->logs_pause(src->h, paused);
    }
}

/* The answer's head goes with the first output, the first log read to its
 * end, or (follow) the first poll: until then a failure can still be the
 * answer's status. */
static void begin(struct lstream *st)
{
    if (st->begun || !st->req)
        return;
    st->begun = true;
    stoke_httpd_stream_begin(st->req, "text/plain; charset=utf-8");
}

static void flush_out(struct lstream *st)
{
    if (st->out.len == 0)
        return;
    begin(st);
    bool keeps_up = st->req && stoke_httpd_stream_write(st->req, st->out.data, st->out.len);
    stoke_buf_clear(&st->out);
    if (!keeps_up)
        set_paused(st, true);
}

/* One whole line: the prefix, what was kept of it, `tail` and '\n'. */
static void emit_line(struct lsource *src, struct stoke_buf *partial, const char *tail, size_t len)
{
    struct lstream *st = src->st;
    if (st->out.len + strlen(src->name) + 4 + partial->len + len > st->out.limit)
        flush_out(st);
    int r = stoke_buf_printf(&st->out, "[%s] ", src->name);
    if (r == 0)
        r = stoke_buf_append(&st->out, partial->data, partial->len);
    if (r == 0)
        r = stoke_buf_append(&st->out, tail, len);
    if (r == 0)
        r = stoke_buf_append(&st->out, "\n", 1);
    stoke_buf_clear(partial);
    if (r < 0) {
        /* Out of memory: what this line had is lost, the stream goes on. */
        stoke_buf_clear(&st->out);
    }
}

static void on_source_data(int stream, const char *bytes, size_t len, void *data)
{
    struct lsource *src = data;
    struct lstream *st = src->st;
    struct stoke_buf *partial = &src->partial[stream == 2 ? 2 : 1];
    if (st->ended)
        return;
    while (len > 0) {
        const char *nl = memchr(bytes, '\n', len);
        size_t seg = nl ? (size_t)(nl - bytes) : len;
        size_t room = LINE_MAX_BYTES - partial->len;
        if (seg >= room) {
            /* A line longer than LINE_MAX_BYTES goes in pieces. */
            emit_line(src, partial, bytes, room);
            bytes += room;
            len -= room;
            continue;
        }
        if (!nl) {
            (void)stoke_buf_append(partial, bytes, seg);
            break;
        }
        emit_line(src, partial, bytes, seg);
        bytes += seg + 1;
        len -= seg + 1;
    }
    flush_out(st);
}

/* ---- sources ------------------------------------------------------------- */

static bool all_done(struct lstream *st);
static void start_next(struct lstream *st);

/* The first failure is kept for the answer while its head is not sent: a
 * replica gone (on Kubernetes, its pod) is 404, anything else (the engine,
 * or the kubelet behind the API server, cannot be read) 502 with the
 * backend's words. */
static void source_failed(struct lsource *src, const struct backend_result *res)
{
    struct lstream *st = src->st;
    stoke_debug(st->fn, "logs of %s: %s", src->name, res->message);
    if (st->begun || st->fail_status)
        return;
    st->fail_status = res->err == -ENOENT ? 404 : 502;
    if (res->err == -ENOENT)
        snprintf(st->fail_message, sizeof(st->fail_message), "replica %s is gone: %s", src->name,
                 res->message);
    else
        snprintf(st->fail_message, sizeof(st->fail_message),
                 "cannot read the logs of %s from %s: %s", src->name, st->l->c->be->what,
                 res->message);
}

static void on_source_end(const struct backend_result *res, void *data)
{
    struct lsource *src = data;
    struct lstream *st = src->st;
    src->h = NULL;
    src->ended_wall_ms = wall_ms();
    if (!st->ended) {
        /* What it said last without a line end is a line all the same. */
        for (int i = 1; i < 3; i++) {
            if (src->partial[i].len)
                emit_line(src, &src->partial[i], "", 0);
        }
        flush_out(st);
        if (res->err < 0 && res->err != -ECANCELED)
            source_failed(src, res);
        else if (res->err == 0)
            begin(st);
        if (!st->follow || res->err == -ENOENT)
            src->done = true;
        if (!st->follow) {
            if (all_done(st))
                stream_end(st, true);
            else
                start_next(st);
        }
    }
    stream_maybe_free(st);
}

static int source_start(struct lsource *src, const struct backend_logs_opts *opts)
{
    struct lstream *st = src->st;
    struct backend *be = st->l->c->be;
    int r = be->ops->logs(be, src->id, opts, on_source_data, on_source_end, src, &src->h);
    if (r < 0) {
        src->h = NULL;
        src->done = true;
        stoke_debug(st->fn, "cannot read the logs of %s: %s", src->name, uv_strerror(r));
        return r;
    }
    if (st->paused)
        st->l->c->be->ops->logs_pause(src->h, true);
    return 0;
}

static struct lsource *source_add(struct lstream *st, const struct replica *r)
{
    struct lsource *src = calloc(1, sizeof(*src));
    if (!src)
        return NULL;
    src->st = st;
    snprintf(src->id, sizeof(src->id), "%s", r->br.id);
    snprintf(src->name, sizeof(src->name), "%s", r->br.name);
    src->woke_ms = r->created_ms;
    for (int i = 0; i < 3; i++)
        stoke_buf_init(&src->partial[i], LINE_MAX_BYTES);
    stoke_list_insert_tail(&st->sources, &src->node);
    return src;
}

static bool all_done(struct lstream *st)
{
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next) {
        if (!stoke_container_of(n, struct lsource, node)->done)
            return false;
    }
    return true;
}

/* Without follow: the next container not yet read; the end after the last. */
static void start_next(struct lstream *st)
{
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next) {
        struct lsource *src = stoke_container_of(n, struct lsource, node);
        if (src->done)
            continue;
        if (source_start(src, &st->opts) == 0)
            return;
    }
    stream_end(st, true);
}

static struct function *live_function(struct api_logs *l, const char *name)
{
    struct function *fn = ctrl_function_find(l->c, name);
    return fn && !fn->deleted ? fn : NULL;
}

static struct lsource *source_find(struct lstream *st, const char *id)
{
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next) {
        struct lsource *src = stoke_container_of(n, struct lsource, node);
        if (strcmp(src->id, id) == 0)
            return src;
    }
    return NULL;
}

static bool any_reading(struct lstream *st)
{
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next) {
        if (stoke_container_of(n, struct lsource, node)->h)
            return true;
    }
    return false;
}

/* Follow: attaches to replicas not yet read, and again to those woken since
 * their stream ended (from where it ended); ends when the function is gone. */
static void on_poll(uv_timer_t *t)
{
    struct lstream *st = t->data;
    struct function *fn = live_function(st->l, st->fn);
    if (!fn || (!st->begun && st->fail_status && !any_reading(st))) {
        stream_end(st, true);
        return; /* freed once the timer is closed */
    }
    begin(st);
    for (struct stoke_list *n = fn->replicas.next; n != &fn->replicas; n = n->next) {
        const struct replica *r = stoke_container_of(n, struct replica, node);
        if (!r->br.id[0])
            continue;
        struct lsource *src = source_find(st, r->br.id);
        if (!src) {
            /* Started after the request: all of its output. */
            struct backend_logs_opts all = {
                .follow = true, .timestamps = st->opts.timestamps, .tail = -1};
            src = source_add(st, r);
            if (src)
                (void)source_start(src, &all);
        } else if (!src->h && !src->done && r->created_ms != src->woke_ms &&
                   r->state != R_CREATED && r->state != R_STOPPED) {
            struct backend_logs_opts again = {.follow = true,
                                              .timestamps = st->opts.timestamps,
                                              .tail = -1,
                                              .since_ms = src->ended_wall_ms};
            src->woke_ms = r->created_ms;
            (void)source_start(src, &again);
        }
    }
}

/* ---- the request --------------------------------------------------------- */

static void on_abort(struct stoke_httpd_req *req, void *data)
{
    struct lstream *st = data;
    (void)req;
    st->req = NULL;
    stream_end(st, false);
    stream_maybe_free(st);
}

static void on_drain(struct stoke_httpd_req *req, void *data)
{
    struct lstream *st = data;
    (void)req;
    set_paused(st, false);
}

static bool parse_bool(const char *v, bool *ret)
{
    if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0) {
        *ret = true;
        return true;
    }
    if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0) {
        *ret = false;
        return true;
    }
    return false;
}

/* The query: tail=N|all, since=DURATION|UNIX-SECONDS, follow=0|1,
 * timestamps=0|1 (true/false too). Returns NULL, or the parameter at fault
 * with *why set. Pure but for the clock of since=DURATION. */
static const char *parse_query(const char *query, struct backend_logs_opts *o, const char **why)
{
    char buf[1024];
    o->tail = -1;
    if (snprintf(buf, sizeof(buf), "%s", query) >= (int)sizeof(buf)) {
        *why = "the query is too long";
        return "query";
    }
    for (char *kv = buf, *next; kv; kv = next) {
        next = strchr(kv, '&');
        if (next)
            *next++ = '\0';
        if (!*kv)
            continue; /* "a=1&&b=2" */
        char *v = strchr(kv, '=');
        if (v)
            *v++ = '\0';
        else
            v = "";
        uint64_t n;
        if (strcmp(kv, "follow") == 0) {
            if (!parse_bool(v, &o->follow)) {
                *why = "follow must be 0 or 1";
                return "follow";
            }
        } else if (strcmp(kv, "timestamps") == 0) {
            if (!parse_bool(v, &o->timestamps)) {
                *why = "timestamps must be 0 or 1";
                return "timestamps";
            }
        } else if (strcmp(kv, "tail") == 0) {
            if (strcmp(v, "all") == 0) {
                o->tail = -1;
            } else if (stoke_parse_u64(v, &n) == 0 && n <= 100000000) {
                o->tail = (int64_t)n;
            } else {
                *why = "tail must be a number of lines (0 to 100000000) or all";
                return "tail";
            }
        } else if (strcmp(kv, "since") == 0) {
            uint64_t ms, now = wall_ms();
            if (stoke_parse_u64(v, &n) == 0 && n <= UINT64_MAX / 1000) {
                o->since_ms = n * 1000;
            } else if (stoke_parse_duration(v, &ms) == 0) {
                o->since_ms = ms < now ? now - ms : 1;
            } else {
                *why = "since must be a duration such as 10m, or Unix seconds";
                return "since";
            }
        } else {
            *why = "unknown query parameter (tail, since, follow, timestamps are known)";
            return "query";
        }
    }
    return NULL;
}

void api_logs_serve(struct api_logs *l, struct stoke_httpd_req *req, const char *name)
{
    struct backend_logs_opts opts = {0};
    const char *why = "";
    const char *field = parse_query(req->query, &opts, &why);
    if (field) {
        stoke_httpd_reply_error(req, 400, NULL, field, "%s", why);
        return;
    }
    struct function *fn = live_function(l, name);
    if (!fn) {
        stoke_httpd_reply_error(req, 404, NULL, "name", "no function named \"%s\"", name);
        return;
    }
    struct lstream *st = calloc(1, sizeof(*st));
    if (!st) {
        stoke_httpd_reply_error(req, 500, NULL, NULL, "out of memory");
        return;
    }
    st->l = l;
    st->req = req;
    snprintf(st->fn, sizeof(st->fn), "%s", name);
    st->follow = opts.follow;
    st->opts = opts;
    stoke_list_init(&st->sources);
    stoke_buf_init(&st->out, OUT_MAX);
    stoke_list_insert_tail(&l->streams, &st->node);
    for (struct stoke_list *n = fn->replicas.next; n != &fn->replicas; n = n->next) {
        const struct replica *r = stoke_container_of(n, struct replica, node);
        if (r->br.id[0] && !source_add(st, r)) {
            stream_end(st, false);
            stream_maybe_free(st);
            stoke_httpd_reply_error(req, 500, NULL, NULL, "out of memory");
            return;
        }
    }
    req->on_abort = on_abort;
    req->on_drain = on_drain;
    req->handler_data = st;
    if (stoke_list_empty(&st->sources))
        begin(st); /* nothing to wait for */
    if (!st->follow) {
        start_next(st);
        stream_maybe_free(st);
        return;
    }
    for (struct stoke_list *n = st->sources.next; n != &st->sources; n = n->next)
        (void)source_start(stoke_container_of(n, struct lsource, node), &st->opts);
    uv_timer_init(l->c->loop, &st->poll);
    st->poll.data = st;
    st->poll_open = true;
    uv_timer_start(&st->poll, on_poll, FOLLOW_POLL_MS, FOLLOW_POLL_MS);
}

/* ---- the set ------------------------------------------------------------- */

int api_logs_new(struct ctrl *c, struct api_logs **ret)
{
    struct api_logs *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->c = c;
    stoke_list_init(&l->streams);
    *ret = l;
    return 0;
}

void api_logs_function_gone(struct api_logs *l, const char *name)
{
    for (struct stoke_list *n = l->streams.next; n != &l->streams;) {
        struct lstream *st = stoke_container_of(n, struct lstream, node);
        n = n->next; /* stream_end may free st, never another stream */
        if (strcmp(st->fn, name) == 0) {
            stream_end(st, true);
            stream_maybe_free(st);
        }
    }
}

void api_logs_stop(struct api_logs *l)
{
    for (struct stoke_list *n = l->streams.next; n != &l->streams;) {
        struct lstream *st = stoke_container_of(n, struct lstream, node);
        n = n->next;
        stream_end(st, true);
        stream_maybe_free(st);
    }
}

void api_logs_free(struct api_logs *l)
{
    if (!l)
        return;
    api_logs_stop(l);
    l->freeing = true;
    logs_maybe_free(l);
}
