#include "hub.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "stoke/linebuf.h"
#include "stoke/list.h"
#include "stoke/log.h"
#include "stoke/routes.h"
#include "stoke/spec.h"
#include "stoke/uvbuf.h"

/* An activator that lets this much go unread is dropped; it reconnects and
 * gets the current table again. */
#define MAX_UNSENT (16 * 1024 * 1024)
#define MAX_PEER_LINE (1024 * 1024)
/* Over TCP with a token, a connection's first line must be its hello with
 * the token, within AUTH_TIMEOUT_MS and AUTH_LINE_MAX bytes; at most
 * AUTH_PENDING_MAX connections wait to say it (more are closed at once). */
#define AUTH_TIMEOUT_MS 5000
#define AUTH_LINE_MAX 8192
#define AUTH_PENDING_MAX 64
/* How long the hub counts as settling (hub_settling()): after it starts and
 * after an activator that said hello leaves. */
#define SETTLE_MS 5000

struct peer {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_handle_t handle;
        uv_stream_t stream;
    } conn;
    struct hub *hub;
    struct stoke_list node;
    struct stoke_linebuf lines;
    char id[64];
    char process[HUB_PROCESS_MAX]; /* from its hello; "" before */
    struct reported_slots *slots;  /* from its hello: see hub_reported_slots() */
    size_t n_slots;
    bool closing;
    bool authed;          /* may talk: a unix socket peer, or a TCP one that sent the token */
    uint64_t accepted_ms; /* for the hello's deadline */
    uint64_t gen;         /* route table in use, from its last drain message */
    bool want_table;      /* it asked for a resync */
    /* Its hello said "role":"events" (stoke-events): it gets the whole
     * tables and updates, undivided, but is no activator: it holds no
     * share, has no process and sends no drain state. */
    bool events;
    uint64_t last_second; /* the second its last stats report counted for */
    json_object *stats;   /* its newest stats report of this read, handled at its end */
    char **draining;      /* replicas it still has requests in flight to */
    size_t n_draining;
    uv_shutdown_t shutdown; /* refused: the error line goes out, then it closes */
};

#define MAX_REPORTED_SLOTS 100000

struct reported_slots {
    char fn[STOKE_NAME_MAX + 1];
    char addr[64];
    uint32_t slots;
};

struct hub {
    uv_loop_t *loop;
    struct stoke_addr addr;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_handle_t handle;
        uv_stream_t stream;
    } listener;
    struct hub_callbacks cbs;
    char *token;         /* TCP: the channel token every peer must send first; NULL on unix */
    uv_timer_t reaper;   /* TCP with a token: closes peers past their hello's deadline */
    uv_timer_t settle;   /* ends the settling time: on_drain */
    uint64_t settled_ms; /* settling until then (of uv_now()) */
    struct stoke_list peers;
    unsigned n_peers;
    unsigned n_pending;         /* TCP peers yet to send the token */
    unsigned n_events;          /* peers that said hello as "role":"events" */
    uint64_t refused_logged_ms; /* the last refusal logged: at most one a second */
    unsigned refused_quiet;     /* refusals since, not logged */
    bool sending;               /* in hub_send_routes() */
    struct hub_counters counters;
    bool members_changed; /* a peer left meanwhile: on_members after it */
    int handles;
    bool closing;
    void (*on_closed)(void *);
    void *closed_data;
};

static void hub_handle_closed(struct hub *hub)
{
    if (--hub->handles > 0 || !hub->closing)
        return;
    if (hub->addr.is_unix)
        (void)unlink(hub->addr.path);
    if (hub->token) {
        explicit_bzero(hub->token, strlen(hub->token));
        free(hub->token);
    }
    if (hub->on_closed)
        hub->on_closed(hub->closed_data);
    free(hub);
}

static void on_settled(uv_timer_t *t)
{
    struct hub *hub = t->data;
    hub->cbs.on_drain(hub->cbs.data); /* drains held up by the settling go on */
}

/* An activator may have requests in flight that no connected one reports:
 * one that has not connected yet (this controller has just started: the
 * one before may have routed it) or one that has just left (it may be
 * back, still serving). */
static void hub_settle(struct hub *hub)
{
    hub->settled_ms = uv_now(hub->loop) + SETTLE_MS;
    uv_timer_start(&hub->settle, on_settled, SETTLE_MS, 0);
}

bool hub_settling(const struct hub *hub)
{
    return uv_now(hub->loop) < hub->settled_ms;
}

static void peer_draining_free(struct peer *p)
{
    for (size_t i = 0; i < p->n_draining; i++)
        free(p->draining[i]);
    free(p->draining);
    p->draining = NULL;
    p->n_draining = 0;
}

static void on_peer_closed(uv_handle_t *h)
{
    struct peer *p = h->data;
    struct hub *hub = p->hub;
    peer_draining_free(p);
    json_object_put(p->stats);
    free(p->slots);
    stoke_linebuf_done(&p->lines);
    free(p);
    hub_handle_closed(hub);
}

static void peer_close(struct peer *p)
{
    if (p->closing)
        return;
    p->closing = true;
    stoke_list_remove(&p->node);
    p->hub->n_peers--;
    if (p->events)
        p->hub->n_events--;
    if (!p->authed)
        p->hub->n_pending--;
    uv_close(&p->conn.handle, on_peer_closed);
    if (p->process[0] && !p->hub->closing) {
        hub_settle(p->hub);
        if (p->hub->sending)
            p->hub->members_changed = true;
        else
            p->hub->cbs.on_members(p->hub->cbs.data);
    }
}

struct hub_write {
    uv_write_t req;
    char data[];
};

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a broken peer shows up as a read error */
    free(stoke_container_of(req, struct hub_write, req));
}

static const char *peer_kind(const struct peer *p)
{
    return p->events ? "events peer" : "activator";
}

static void peer_send(struct peer *p, const char *line, size_t len)
{
    if (uv_stream_get_write_queue_size(&p->conn.stream) > MAX_UNSENT) {
        stoke_warn(NULL, -ENOBUFS, "%s %s is not reading, dropping it", peer_kind(p), p->id);
        peer_close(p);
        return;
    }
    struct hub_write *w = malloc(sizeof(*w) + len + 1);
    if (!w) {
        peer_close(p);
        return;
    }
    memcpy(w->data, line, len);
    w->data[len] = '\n';
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len + 1);
    if (uv_write(&w->req, &p->conn.stream, &b, 1, on_written) < 0) {
        free(w);
        peer_close(p);
    }
}

static const char *get_string(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

/* A stats report. `current`: the newest this peer has sent; one that
 * another report of the same read follows is not (see stash_stats()): its
 * requests count, its concurrencies do not. */
static void handle_stats(struct peer *p, json_object *msg, bool current)
{
    json_object *fns;
    if (!json_object_object_get_ex(msg, "fns", &fns) || !json_object_is_type(fns, json_type_object))
        return;
    /* An activator reports once a second; timer jitter can bring two
     * reports into one second of ours and none into the next, so each
     * report takes the second after the previous one unless it is late.
     * One that would run more than two seconds ahead of ours is a backlog
     * too: added to a second this peer has reported already, it would
     * count the same requests in flight twice. */
    uint64_t now_s = uv_now(p->hub->loop) / 1000;
    uint64_t second = now_s;
    if (p->last_second && p->last_second >= now_s) {
        if (p->last_second >= now_s + 2)
            current = false;
        else
            second = p->last_second + 1;
    }
    if (current)
        p->last_second = second;
    else
        second = p->last_second; /* adds 0 to what this peer reported there */
    p->hub->counters.stats_reports++;
    json_object_object_foreach(fns, name, st)
    {
        json_object *c, *n;
        if (!stoke_is_valid_name(name) || !json_object_is_type(st, json_type_object) ||
            !json_object_object_get_ex(st, "concurrency", &c) ||
            !json_object_object_get_ex(st, "requests", &n))
            continue;
        double conc = json_object_get_double(c);
        int64_t reqs = json_object_get_int64(n);
        if (!(conc >= 0) || conc > 1e9 || reqs < 0)
            continue;
        p->hub->counters.stats_entries++;
        p->hub->cbs.on_stats(p->id, name, second, current ? conc : 0, (uint64_t)reqs,
                             p->hub->cbs.data);
    }
    if (current && p->hub->cbs.on_stats_done)
        p->hub->cbs.on_stats_done(second, p->hub->cbs.data);
}

/* {"op":"backlog","fns":{"<fn>":{"backlog":N,"target":T}}}: stoke-events'
 * queue-trigger backlog per function. */
static void handle_backlog(struct peer *p, json_object *msg)
{
    json_object *fns;
    if (!p->hub->cbs.on_backlog || !json_object_object_get_ex(msg, "fns", &fns) ||
        !json_object_is_type(fns, json_type_object))
        return;
    json_object_object_foreach(fns, name, st)
    {
        json_object *b, *t;
        if (!stoke_is_valid_name(name) || !json_object_is_type(st, json_type_object) ||
            !json_object_object_get_ex(st, "backlog", &b) ||
            !json_object_object_get_ex(st, "target", &t) ||
            !json_object_is_type(b, json_type_int) || !json_object_is_type(t, json_type_int))
            continue;
        int64_t backlog = json_object_get_int64(b), target = json_object_get_int64(t);
        if (backlog < 0 || target < 1 || target > 1000000)
            continue;
        p->hub->cbs.on_backlog(name, (uint64_t)backlog, (uint32_t)target, p->hub->cbs.data);
    }
}

/* Reports that arrive together are a backlog: they queued up while this
 * process did not read (it was stopped, or its loop was busy), or while the
 * network held them. They are not one burst, nor seconds of now: only the
 * newest tells the present concurrency, so the others count for their
 * requests alone. The newest is handled at the end of the read (on_read()),
 * the seconds it did not place are missing, as they would be had the reports
 * been lost, and the autoscaler leaves them out. */
static void stash_stats(struct peer *p, json_object *msg)
{
    if (p->stats) {
        handle_stats(p, p->stats, false);
        json_object_put(p->stats);
    }
    p->stats = json_object_get(msg);
}

/* {"op":"drain","gen":N,"draining":["127.0.0.1:30001",...]} */
static void handle_drain(struct peer *p, json_object *msg)
{
    json_object *g, *list;
    if (!json_object_object_get_ex(msg, "gen", &g) || !json_object_is_type(g, json_type_int) ||
        !json_object_object_get_ex(msg, "draining", &list) ||
        !json_object_is_type(list, json_type_array))
        return;
    size_t n = json_object_array_length(list);
    if (n > STOKE_ROUTES_MAX_ENDPOINTS * 16)
        return;
    char **d = calloc(n ? n : 1, sizeof(*d));
    if (!d)
        return;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(list, i);
        if (json_object_is_type(e, json_type_string) && (d[k] = strdup(json_object_get_string(e))))
            k++;
    }
    peer_draining_free(p);
    p->draining = d;
    p->n_draining = k;
    int64_t gen = json_object_get_int64(g);
    p->gen = gen > 0 ? (uint64_t)gen : 0;
    p->hub->cbs.on_drain(p->hub->cbs.data);
}

static void peer_send(struct peer *p, const char *line, size_t len);

/* Logs a refused channel connection, at most once a second (anyone who can
 * connect could fill the log otherwise), with how many went unlogged. */
static void log_refusal(struct hub *hub, int err, const char *what)
{
    uint64_t now = uv_now(hub->loop);
    if (hub->refused_logged_ms && now - hub->refused_logged_ms < 1000) {
        hub->refused_quiet++;
        return;
    }
    stoke_warn(NULL, err,
               "channel connection %s; closing it (%u more refused since the last one logged)",
               what, hub->refused_quiet);
    hub->refused_logged_ms = now;
    hub->refused_quiet = 0;
}

static void on_refused(uv_shutdown_t *req, int status)
{
    struct peer *p = req->data;
    (void)status;
    peer_close(p); /* does nothing when hub_close() came first */
}

/* Tells the peer why it is refused, then closes it: a shutdown runs after
 * the queued writes (a close would drop them). Nothing more is read. */
static void peer_refuse(struct peer *p, const char *why)
{
    char line[160];
    int n = snprintf(line, sizeof(line), "{\"op\":\"error\",\"message\":\"%s\"}", why);
    (void)uv_read_stop(&p->conn.stream);
    peer_send(p, line, (size_t)n);
    if (p->closing)
        return;
    p->shutdown.data = p;
    if (uv_shutdown(&p->shutdown, &p->conn.stream, on_refused) < 0)
        peer_close(p);
}

/* The first line of a TCP peer, short enough for the limit on lines before
 * it: {"op":"auth","token":T}, its hello (which may be long) following, or a
 * hello with the token in it. Returns 0 when it may talk, or -EACCES. */
static int authenticate(struct peer *p, const char *op, json_object *msg)
{
    struct hub *hub = p->hub;
    json_object *t = NULL;
    bool first = strcmp(op, "auth") == 0 || strcmp(op, "hello") == 0;
    bool ok = first && json_object_object_get_ex(msg, "token", &t) &&
              json_object_is_type(t, json_type_string) &&
              stoke_token_equal(hub->token, json_object_get_string(t),
                                (size_t)json_object_get_string_len(t));
    if (!ok) {
        log_refusal(hub, -EACCES, "without the channel token");
        peer_refuse(p, first && t
                           ? "wrong channel token"
                           : "the channel needs the controller's token (--channel-token-file)");
        return -EACCES;
    }
    p->authed = true;
    hub->n_pending--;
    stoke_info(NULL, "a channel connected (token checked)");
    /* Lines may now be as long as any message. */
    p->lines.buf.limit = MAX_PEER_LINE + 1;
    return 0;
}

/* "slots":[["fn","127.0.0.1:30001",2],...] of a hello; bad entries are
 * skipped. */
static void parse_slots(struct peer *p, json_object *msg)
{
    json_object *list;
    if (!json_object_object_get_ex(msg, "slots", &list) ||
        !json_object_is_type(list, json_type_array))
        return;
    size_t n = json_object_array_length(list);
    if (n == 0 || n > MAX_REPORTED_SLOTS)
        return;
    struct reported_slots *s = calloc(n, sizeof(*s));
    if (!s)
        return;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(list, i);
        if (!json_object_is_type(e, json_type_array) || json_object_array_length(e) != 3)
            continue;
        json_object *f = json_object_array_get_idx(e, 0), *a = json_object_array_get_idx(e, 1),
                    *v = json_object_array_get_idx(e, 2);
        if (!json_object_is_type(f, json_type_string) ||
            !json_object_is_type(a, json_type_string) || !json_object_is_type(v, json_type_int) ||
            !stoke_is_valid_name(json_object_get_string(f)) ||
            json_object_get_string_len(a) >= (int)sizeof(s[k].addr) ||
            json_object_get_int64(v) < 0 || json_object_get_int64(v) > UINT32_MAX)
            continue;
        snprintf(s[k].fn, sizeof(s[k].fn), "%s", json_object_get_string(f));
        snprintf(s[k].addr, sizeof(s[k].addr), "%s", json_object_get_string(a));
        s[k++].slots = (uint32_t)json_object_get_int64(v);
    }
    free(p->slots);
    p->slots = s;
    p->n_slots = k;
}

bool hub_reported_slots(const struct hub *hub, const char *process, const char *fn,
                        const char *addr, uint32_t *ret)
{
    bool found = false;
    for (const struct stoke_list *it = hub->peers.next; it != &hub->peers; it = it->next) {
        const struct peer *p = stoke_container_of(it, struct peer, node);
        if (strcmp(p->process, process) != 0)
            continue;
        for (size_t i = 0; i < p->n_slots; i++) {
            if (strcmp(p->slots[i].fn, fn) == 0 && strcmp(p->slots[i].addr, addr) == 0 &&
                (!found || p->slots[i].slots > *ret)) {
                *ret = p->slots[i].slots; /* its workers may differ for a moment: the most */
                found = true;
            }
        }
    }
    return found;
}

bool hub_any_reported_slots(const struct hub *hub)
{
    for (const struct stoke_list *it = hub->peers.next; it != &hub->peers; it = it->next) {
        if (stoke_container_of(it, struct peer, node)->n_slots > 0)
            return true;
    }
    return false;
}

static int on_line(char *line, size_t len, void *data)
{
    struct peer *p = data;
    json_object *msg = json_tokener_parse(line);
    (void)len;
    if (!msg || !json_object_is_type(msg, json_type_object)) {
        json_object_put(msg);
        stoke_warn(NULL, -EINVAL, "activator %s sent a bad message; dropping it", p->id);
        return -EINVAL;
    }
    const char *op = get_string(msg, "op");
    if (!op) {
        op = "";
    }
    if (!p->authed) {
        int r = authenticate(p, op, msg);
        if (r < 0) {
            json_object_put(msg);
            return r;
        }
        if (strcmp(op, "hello") != 0) {
            json_object_put(msg);
            return 0; /* an auth line: the hello follows */
        }
    }
    if (strcmp(op, "poke") == 0) {
        const char *fn = get_string(msg, "fn");
        if (fn && stoke_is_valid_name(fn))
            p->hub->cbs.on_poke(fn, p->hub->cbs.data);
    } else if (strcmp(op, "stats") == 0) {
        stash_stats(p, msg);
    } else if (strcmp(op, "backlog") == 0) {
        if (p->events) /* stoke-events' only */
            handle_backlog(p, msg);
    } else if (strcmp(op, "drain") == 0) {
        handle_drain(p, msg);
    } else if (strcmp(op, "resync") == 0) {
        if (p->process[0] || p->events) {
            if (!p->want_table)
                stoke_info(NULL, "%s %s missed a route update; sending it the table", peer_kind(p),
                           p->id);
            p->want_table = true;
            if (p->hub->cbs.on_resync)
                p->hub->cbs.on_resync(p->hub->cbs.data); /* may send on p */
        }
    } else if (strcmp(op, "hello") == 0) {
        const char *id = get_string(msg, "activator");
        const char *proc = get_string(msg, "process");
        const char *role = get_string(msg, "role");
        if (id)
            snprintf(p->id, sizeof(p->id), "%s", id);
        if (role && strcmp(role, "events") == 0) {
            /* stoke-events: no member among whom limits are divided; its
             * table (undivided) comes as a resync's does. */
            if (!p->events && !p->process[0]) {
                p->events = true;
                p->hub->n_events++;
            }
            stoke_info(NULL, "events peer %s connected", p->id);
            json_object_put(msg);
            p->want_table = true;
            if (p->hub->cbs.on_resync)
                p->hub->cbs.on_resync(p->hub->cbs.data); /* may send on p */
            return 0;
        }
        if (p->events) {
            json_object_put(msg);
            return 0; /* one role per channel */
        }
        /* An activator that names no process is one of its own. */
        snprintf(p->process, sizeof(p->process), "%s", proc && *proc ? proc : p->id);
        parse_slots(p, msg);
        stoke_info(NULL, "activator %s connected (process %s)", p->id, p->process);
        json_object_put(msg);
        p->hub->cbs.on_members(p->hub->cbs.data); /* may send on p */
        return 0;
    }
    /* Unknown ops are ignored so newer activators can talk to this one. */
    json_object_put(msg);
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct peer *p = s->data;
    if (nread < 0) {
        if (!p->closing)
            stoke_info(NULL, "%s %s disconnected", peer_kind(p), p->id);
        peer_close(p);
    } else if (nread > 0 && !p->closing) {
        int r = stoke_linebuf_feed(&p->lines, buf->base, (size_t)nread, on_line, p);
        if (p->stats) {
            handle_stats(p, p->stats, true);
            json_object_put(p->stats);
            p->stats = NULL;
        }
        if (r == -EACCES)
            ; /* refused: closes once the error is out */
        else if (r == -ENOBUFS && !p->authed)
            peer_refuse(p, "the first line must be the hello (or auth) with the channel token");
        else if (r < 0)
            peer_close(p);
    }
    free(buf->base);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct hub *hub = server->data;
    if (status < 0)
        return;
    struct peer *p = calloc(1, sizeof(*p));
    if (!p)
        return;
    p->hub = hub;
    snprintf(p->id, sizeof(p->id), "?");
    p->authed = !hub->token;
    p->accepted_ms = uv_now(hub->loop);
    stoke_linebuf_init(&p->lines, p->authed ? MAX_PEER_LINE : AUTH_LINE_MAX);
    if (hub->addr.is_unix)
        uv_pipe_init(hub->loop, &p->conn.pipe, 0);
    else
        uv_tcp_init(hub->loop, &p->conn.tcp);
    p->conn.handle.data = p;
    hub->handles++;
    stoke_list_insert_tail(&hub->peers, &p->node);
    hub->n_peers++;
    if (!p->authed)
        hub->n_pending++;
    if (uv_accept(server, &p->conn.stream) < 0 ||
        uv_read_start(&p->conn.stream, stoke_uv_alloc, on_read) < 0) {
        peer_close(p);
        return;
    }
    if (!p->authed && hub->n_pending > AUTH_PENDING_MAX) {
        log_refusal(hub, -EAGAIN, "over the 64 waiting to send the token");
        peer_close(p);
        return;
    }
    /* Its route table follows its hello, made for its process. */
}

static void on_listener_closed(uv_handle_t *h)
{
    hub_handle_closed(h->data);
}

/* Every second: peers that did not send the token in time go. */
static void on_reap(uv_timer_t *t)
{
    struct hub *hub = t->data;
    uint64_t now = uv_now(hub->loop);
    struct stoke_list *n = hub->peers.next;
    while (n != &hub->peers) {
        struct peer *p = stoke_container_of(n, struct peer, node);
        n = n->next; /* peer_close takes p off the list */
        if (!p->authed && now - p->accepted_ms >= AUTH_TIMEOUT_MS) {
            log_refusal(hub, -ETIMEDOUT, "sent no token in 5 s");
            peer_close(p);
        }
    }
}

int hub_new(uv_loop_t *loop, const struct stoke_addr *addr, const char *token,
            const struct hub_callbacks *cbs, struct hub **ret)
{
    int r;
    if (!addr->is_unix && (!token || !*token))
        return -EACCES; /* never on TCP without a token */
    struct hub *hub = calloc(1, sizeof(*hub));
    if (!hub)
        return -ENOMEM;
    if (!addr->is_unix) {
        hub->token = strdup(token);
        if (!hub->token) {
            free(hub);
            return -ENOMEM;
        }
    }
    hub->loop = loop;
    hub->addr = *addr;
    hub->cbs = *cbs;
    stoke_list_init(&hub->peers);
    hub->handles = 1;
    if (addr->is_unix) {
        uv_pipe_init(loop, &hub->listener.pipe, 0);
        /* A socket file left by a controller that died is in the way. */
        struct stat st;
        if (lstat(addr->path, &st) == 0 && S_ISSOCK(st.st_mode))
            (void)unlink(addr->path);
        r = uv_pipe_bind(&hub->listener.pipe, addr->path);
        if (r == 0 && chmod(addr->path, 0660) < 0)
            r = -errno;
    } else {
        uv_tcp_init(loop, &hub->listener.tcp);
        r = uv_tcp_bind(&hub->listener.tcp, (const struct sockaddr *)&addr->ss, 0);
    }
    hub->listener.handle.data = hub;
    if (r == 0)
        r = uv_listen(&hub->listener.stream, 128, on_connection);
    if (r < 0) {
        hub->closing = true;
        hub->addr.is_unix = false; /* not ours to unlink */
        uv_close(&hub->listener.handle, on_listener_closed);
        return r;
    }
    uv_timer_init(loop, &hub->settle);
    hub->settle.data = hub;
    hub->handles++;
    hub_settle(hub);
    if (hub->token) {
        uv_timer_init(loop, &hub->reaper);
        hub->reaper.data = hub;
        hub->handles++;
        uv_timer_start(&hub->reaper, on_reap, 1000, 1000);
    }
    *ret = hub;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

char (*hub_processes(const struct hub *hub, unsigned *ret_n))[HUB_PROCESS_MAX]
{
    char(*names)[HUB_PROCESS_MAX] = calloc(hub->n_peers ? hub->n_peers : 1, sizeof(*names));
    *ret_n = 0;
    if (!names)
        return NULL;
    unsigned n = 0;
    for (const struct stoke_list *it = hub->peers.next; it != &hub->peers; it = it->next) {
        const struct peer *p = stoke_container_of(it, struct peer, node);
        if (p->process[0])
            memcpy(names[n++], p->process, sizeof(names[0]));
    }
    qsort(names, n, sizeof(names[0]), cmp_name);
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (k == 0 || strcmp(names[k - 1], names[i]) != 0)
            memmove(names[k++], names[i], sizeof(names[0]));
    }
    *ret_n = k;
    return names;
}

/* Whether a channel of process `name` waits for a resync. */
static bool process_wants_table(const struct hub *hub, const char *name)
{
    for (const struct stoke_list *it = hub->peers.next; it != &hub->peers; it = it->next) {
        const struct peer *p = stoke_container_of(it, struct peer, node);
        if (p->authed && p->want_table && strcmp(p->process, name) == 0)
            return true;
    }
    return false;
}

/* Sends a routes or update line on `p`, counted. A table answers a resync
 * (an update does not). */
static void send_routes_line(struct peer *p, const char *line)
{
    struct hub *hub = p->hub;
    size_t len = strlen(line);
    static const char table_op[] = "{\"op\":\"routes\"";
    if (strncmp(line, table_op, sizeof(table_op) - 1) == 0) {
        p->want_table = false;
        hub->counters.tables++;
        hub->counters.table_bytes += len + 1;
    } else {
        hub->counters.updates++;
        hub->counters.update_bytes += len + 1;
    }
    peer_send(p, line, len);
}

/* The events peers' line: the whole table (or update), undivided. */
static void send_events_peers(struct hub *hub,
                              char *(*make)(const char *process, unsigned i, unsigned n,
                                            void *data),
                              void *data, bool only_resync)
{
    char *line = NULL;
    bool made = false;
    struct stoke_list *it = hub->peers.next;
    while (hub->n_events > 0 && it != &hub->peers) {
        struct peer *p = stoke_container_of(it, struct peer, node);
        it = it->next; /* peer_send may drop p */
        if (!p->events || !p->authed || (only_resync && !p->want_table))
            continue;
        if (!made) {
            line = make(NULL, 0, 1, data);
            made = true;
        }
        if (!line)
            break;
        send_routes_line(p, line);
    }
    free(line);
}

void hub_send_routes(struct hub *hub,
                     char *(*make)(const char *process, unsigned i, unsigned n, void *data),
                     void *data, bool only_resync)
{
    unsigned k;
    char(*names)[HUB_PROCESS_MAX] = hub_processes(hub, &k);
    /* Lines first, then sends: a send may drop a peer. */
    char **lines = calloc(k ? k : 1, sizeof(*lines));
    for (unsigned i = 0; lines && names && i < k; i++) {
        if (!only_resync || process_wants_table(hub, names[i]))
            lines[i] = make(names[i], i, k, data);
    }
    hub->sending = true;
    struct stoke_list *it = hub->peers.next;
    while (lines && names && it != &hub->peers) {
        struct peer *p = stoke_container_of(it, struct peer, node);
        it = it->next; /* peer_send may drop p */
        if (only_resync && !p->want_table)
            continue;
        for (unsigned i = 0; i < k; i++) {
            if (p->authed && lines[i] && strcmp(names[i], p->process) == 0) {
                send_routes_line(p, lines[i]);
                break;
            }
        }
    }
    send_events_peers(hub, make, data, only_resync);
    hub->sending = false;
    for (unsigned i = 0; lines && i < k; i++)
        free(lines[i]);
    free(lines);
    free(names);
    if (hub->members_changed) {
        hub->members_changed = false;
        hub->cbs.on_members(hub->cbs.data);
    }
}

void hub_get_counters(const struct hub *hub, struct hub_counters *ret)
{
    *ret = hub->counters;
}

unsigned hub_activators(const struct hub *hub)
{
    return hub->n_peers - hub->n_pending - hub->n_events;
}

bool hub_is_drained(const struct hub *hub, const char *addr, uint64_t gen)
{
    for (const struct stoke_list *n = hub->peers.next; n != &hub->peers; n = n->next) {
        const struct peer *p = stoke_container_of(n, struct peer, node);
        /* One that never sent the token has no routes: nothing to wait for
         * (and it must not hold a drain up). */
        if (p->closing || !p->authed || p->events)
            continue;
        if (p->gen < gen)
            return false;
        for (size_t i = 0; i < p->n_draining; i++) {
            if (strcmp(p->draining[i], addr) == 0)
                return false;
        }
    }
    return true;
}

void hub_close(struct hub *hub, void (*on_closed)(void *data), void *data)
{
    hub->closing = true;
    hub->on_closed = on_closed;
    hub->closed_data = data;
    while (!stoke_list_empty(&hub->peers))
        peer_close(stoke_container_of(stoke_list_first(&hub->peers), struct peer, node));
    if (hub->token)
        uv_close((uv_handle_t *)&hub->reaper, on_listener_closed);
    uv_close((uv_handle_t *)&hub->settle, on_listener_closed);
    uv_close(&hub->listener.handle, on_listener_closed);
}
