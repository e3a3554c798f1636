#include "ctl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "metrics.h"
#include "stoke/linebuf.h"
#include "stoke/log.h"
#include "stoke/uvbuf.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define STATS_PERIOD_MS 1000
#define MAX_UNSENT (4 * 1024 * 1024) /* a controller not reading: reconnect */
#define MAX_CANDIDATES 32
#define RESYNC_AGAIN_MS 1000 /* asks again at an update this long after, table still missing */

struct ctl {
    uv_loop_t *loop;
    struct ctl_targets targets;
    /* One connection cycle: the addresses the targets resolved to, tried in
     * turn until one takes the channel. */
    struct sockaddr_storage cand[MAX_CANDIDATES];
    size_t n_cand, i_cand, i_target;
    uv_getaddrinfo_t gai;
    bool got_table; /* the current connection has delivered a route table */
    bool resyncing; /* missed an update: updates are ignored until a table */
    uint64_t resync_ms;
    /* Test hook (STOKE_TEST_DROP_ROUTE_UPDATE=N): the Nth update this
     * channel receives is dropped as if lost; 0: none. */
    uint64_t drop_update, n_updates;
    bool cycle_warned; /* said that no address took the channel */
    char id[64];
    char *token; /* NULL: none; wiped at free */
    char process[64];
    struct proxy *px;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_handle_t handle;
        uv_stream_t stream;
    } conn;
    bool conn_open;
    bool connected;
    uv_connect_t connect;
    uv_timer_t retry;
    uv_timer_t stats;
    uint64_t backoff_ms;
    struct stoke_linebuf lines;
    struct stoke_buf msg; /* a stats message under construction */
    bool closing;
    int handles;
    void (*on_closed)(void *);
    void *closed_data;
};

static void ctl_connect(struct ctl *ctl);

/* A DNS name as a resolver takes it: labels of letters, digits and '-',
 * not starting or ending with '-', dot-separated; or an IPv4 literal. */
static bool valid_name(const char *h, size_t n)
{
    size_t label = 0;
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (c == '.') {
            if (label == 0 || h[i - 1] == '-')
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   (c == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return h[n - 1] != '-';
}

static int parse_target(const char *s, size_t len, char *host, size_t host_size, char *port)
{
    const char *hs = s, *colon;
    size_t hn;
    if (len > 0 && s[0] == '[') {
        const char *end = memchr(s, ']', len);
        if (!end || end + 1 == s + len || end[1] != ':')
            return -EINVAL;
        hs = s + 1;
        hn = (size_t)(end - hs);
        colon = end + 1;
        struct in6_addr a6;
        if (hn >= host_size)
            return -EINVAL;
        memcpy(host, hs, hn);
        host[hn] = '\0';
        if (inet_pton(AF_INET6, host, &a6) != 1)
            return -EINVAL;
    } else {
        colon = memchr(s, ':', len);
        if (!colon)
            return -EINVAL;
        hn = (size_t)(colon - s);
        if (hn >= host_size || !valid_name(s, hn))
            return -EINVAL;
        memcpy(host, s, hn);
        host[hn] = '\0';
    }
    size_t pn = (size_t)(s + len - colon - 1);
    char pbuf[8];
    uint64_t p;
    if (pn == 0 || pn > 5)
        return -EINVAL;
    memcpy(pbuf, colon + 1, pn);
    pbuf[pn] = '\0';
    if (stoke_parse_u64(pbuf, &p) < 0 || p == 0 || p > 65535)
        return -EINVAL;
    snprintf(port, 6, "%u", (unsigned)p);
    return 0;
}

int ctl_parse_targets(const char *s, struct ctl_targets *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (strncmp(s, "unix:", 5) == 0) {
        ret->is_unix = true;
        return stoke_addr_parse(s, &ret->unix_addr);
    }
    for (;;) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (ret->n == CTL_MAX_TARGETS ||
            parse_target(s, len, ret->t[ret->n].host, sizeof(ret->t[0].host), ret->t[ret->n].port) <
                0)
            return -EINVAL;
        ret->n++;
        if (!end)
            return 0;
        s = end + 1;
    }
}

struct ctl_write {
    uv_write_t req;
    char data[];
};

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error too */
    free(stoke_container_of(req, struct ctl_write, req));
}

static void ctl_send(struct ctl *ctl, const char *line, size_t len)
{
    if (!ctl->connected)
        return;
    if (uv_stream_get_write_queue_size(&ctl->conn.stream) > MAX_UNSENT) {
        stoke_warn(NULL, -ENOBUFS, "controller is not reading, dropping a message");
        return;
    }
    struct ctl_write *w = malloc(sizeof(*w) + len + 1);
    if (!w)
        return;
    memcpy(w->data, line, len);
    w->data[len] = '\n';
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len + 1);
    if (uv_write(&w->req, &ctl->conn.stream, &b, 1, on_written) < 0)
        free(w);
}

static void send_poke(const char *fn, void *data)
{
    struct ctl *ctl = data;
    char line[128];
    int n = snprintf(line, sizeof(line), "{\"op\":\"poke\",\"fn\":\"%s\"}", fn);
    ctl_send(ctl, line, (size_t)n);
}

void ctl_poke(struct ctl *ctl, const char *fn)
{
    send_poke(fn, ctl);
}

static void add_draining(const char *addr, void *data)
{
    struct stoke_buf *b = data;
    /* Addresses are IP literals we formatted: no JSON escaping needed. */
    (void)stoke_buf_printf(b, "%s\"%s\"", b->data[b->len - 1] == '[' ? "" : ",", addr);
}

void ctl_drain_changed(struct ctl *ctl)
{
    if (!ctl->px || !ctl->connected)
        return;
    struct stoke_buf b;
    stoke_buf_init(&b, STOKE_CTL_MAX_LINE);
    int r = stoke_buf_printf(&b, "{\"op\":\"drain\",\"gen\":%llu,\"draining\":[",
                             (unsigned long long)proxy_routes_gen(ctl->px));
    if (r == 0)
        proxy_draining(ctl->px, add_draining, &b);
    if (r == 0 && stoke_buf_append(&b, "]}", 2) == 0)
        ctl_send(ctl, b.data, b.len);
    stoke_buf_done(&b);
}

static void on_retry(uv_timer_t *t)
{
    ctl_connect(t->data);
}

static void connect_candidate(struct ctl *ctl);

/* No address took the channel, or the one that did went away: a new cycle,
 * resolving the names again, after the back-off. */
static void retry_later(struct ctl *ctl)
{
    uv_timer_start(&ctl->retry, on_retry, ctl->backoff_ms, 0);
    ctl->backoff_ms *= 2;
    if (ctl->backoff_ms > BACKOFF_MAX_MS)
        ctl->backoff_ms = BACKOFF_MAX_MS;
}

/* One handle or request fewer; the last one of a closing ctl frees it. */
static void ctl_unref(struct ctl *ctl)
{
    if (--ctl->handles > 0 || !ctl->closing)
        return;
    stoke_linebuf_done(&ctl->lines);
    stoke_buf_done(&ctl->msg);
    if (ctl->token) {
        explicit_bzero(ctl->token, strlen(ctl->token));
        free(ctl->token);
    }
    if (ctl->on_closed)
        ctl->on_closed(ctl->closed_data);
    free(ctl);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct ctl *ctl = h->data;
    if (h == &ctl->conn.handle) {
        ctl->conn_open = false;
        if (!ctl->closing) {
            /* Refused, or closed before any table (a controller that does
             * not lead, or is going away): the next address at once. */
            if (!ctl->targets.is_unix && !ctl->got_table && ctl->i_cand + 1 < ctl->n_cand) {
                ctl->i_cand++;
                connect_candidate(ctl);
            } else {
                if (!ctl->got_table && !ctl->cycle_warned && !ctl->targets.is_unix) {
                    stoke_warn(NULL, -ECONNREFUSED,
                               "no controller address takes the channel (%zu tried), retrying",
                               ctl->n_cand);
                    ctl->cycle_warned = true;
                }
                retry_later(ctl);
            }
        }
    }
    ctl_unref(ctl);
}

static void drop_connection(struct ctl *ctl, int err)
{
    if (!ctl->conn_open || uv_is_closing(&ctl->conn.handle))
        return;
    if (ctl->connected)
        stoke_warn(NULL, err, "lost the controller, reconnecting; serving the known routes");
    ctl->connected = false;
    uv_close(&ctl->conn.handle, on_handle_closed);
}

static void count_applied(struct ctl *ctl, enum metrics_route_kind kind, size_t entries,
                          size_t bytes, uint64_t t0)
{
    struct metrics_worker *mw = proxy_metrics(ctl->px);
    if (!mw)
        return;
    metrics_add(&mw->route_msgs[kind], 1);
    metrics_add(&mw->route_entries[kind], (int64_t)entries);
    metrics_add(&mw->route_bytes[kind], (int64_t)bytes + 1); /* and its '\n' */
    metrics_add(&mw->route_apply_ns[kind], (int64_t)(uv_hrtime() - t0));
    atomic_store_explicit(&mw->route_functions, proxy_functions(ctl->px), memory_order_relaxed);
}

/* {"op":"resync","gen":G}: this channel missed an update. */
static void send_resync(struct ctl *ctl)
{
    char line[64];
    uint64_t gen = ctl->px ? proxy_routes_gen(ctl->px) : 0;
    int n =
        snprintf(line, sizeof(line), "{\"op\":\"resync\",\"gen\":%llu}", (unsigned long long)gen);
    ctl->resync_ms = uv_now(ctl->loop);
    ctl_send(ctl, line, (size_t)n);
}

/* An update applies on top of the table of the gen before it; any other
 * gen means one was missed (or the table was): the whole table again. */
static int on_update(struct ctl *ctl, const char *line, size_t len)
{
    uint64_t t0 = uv_hrtime();
    struct stoke_route_update u;
    if (!ctl->px)
        return 0;
    if (ctl->drop_update && ++ctl->n_updates == ctl->drop_update) {
        stoke_warn(NULL, -EAGAIN, "test hook: dropping route update %llu",
                   (unsigned long long)ctl->n_updates);
        return 0;
    }
    int r = stoke_route_update_parse(line, len, &u);
    if (r < 0) {
        /* It may have changed anything: the table again. */
        stoke_warn(NULL, r, "a bad route update from the controller; asking for the table");
        u.gen = 0;
    }
    if (ctl->resyncing) {
        /* The table is on its way; ask again should the ask have been lost
         * (the controller could not build the table). */
        if (uv_now(ctl->loop) - ctl->resync_ms >= RESYNC_AGAIN_MS)
            send_resync(ctl);
        stoke_route_update_done(&u);
        return 0;
    }
    if (r < 0 || !ctl->got_table || u.gen != proxy_routes_gen(ctl->px) + 1) {
        stoke_warn(NULL, -EPROTO,
                   "route update %llu does not follow table %llu (one was missed); asking the "
                   "controller for the whole table",
                   (unsigned long long)u.gen, (unsigned long long)proxy_routes_gen(ctl->px));
        stoke_route_update_done(&u);
        ctl->resyncing = true;
        struct metrics_worker *mw = proxy_metrics(ctl->px);
        if (mw)
            metrics_add(&mw->route_resyncs, 1);
        send_resync(ctl);
        return 0;
    }
    size_t entries = u.n_routes + u.n_removed;
    uint64_t gen = u.gen;
    proxy_update_routes(ctl->px, &u);
    stoke_debug(NULL, "route update %llu (%zu entries) for %s: %zu functions",
                (unsigned long long)gen, entries, ctl->id, proxy_functions(ctl->px));
    count_applied(ctl, METRICS_ROUTE_UPDATE, entries, len, t0);
    ctl_drain_changed(ctl);
    return 0;
}

static int on_line(char *line, size_t len, void *data)
{
    struct ctl *ctl = data;
    struct stoke_route_table t;
    if (strncmp(line, "{\"op\":\"error\"", 13) == 0) {
        /* The controller refuses this connection and closes it. */
        json_object *o = json_tokener_parse(line);
        json_object *m = NULL;
        /* _get_ex lends m: valid while o lives. */
        stoke_warn(NULL, -EACCES, "the controller refuses the channel: %s",
                   o && json_object_object_get_ex(o, "message", &m) ? json_object_get_string(m)
                                                                    : "?");
        json_object_put(o);
        return 0;
    }
    static const char update_op[] = "{\"op\":\"update\"";
    if (strncmp(line, update_op, sizeof(update_op) - 1) == 0)
        return on_update(ctl, line, len);
    uint64_t t0 = uv_hrtime();
    int r = stoke_route_table_parse(line, len, &t);
    if (r < 0) {
        stoke_warn(NULL, r, "ignoring a bad message from the controller");
        return 0;
    }
    if (!ctl->got_table) {
        /* This controller took the channel. */
        ctl->got_table = true;
        ctl->cycle_warned = false;
        ctl->backoff_ms = BACKOFF_MIN_MS;
    }
    ctl->resyncing = false;
    stoke_debug(NULL, "route table %llu for %s: %zu functions", (unsigned long long)t.gen, ctl->id,
                t.n_routes);
    size_t entries = t.n_routes;
    if (ctl->px) {
        proxy_set_routes(ctl->px, &t);
        count_applied(ctl, METRICS_ROUTE_TABLE, entries, len, t0);
        /* Tells the controller this table is in use, and which replicas
         * that left it still have requests in flight. */
        ctl_drain_changed(ctl);
    } else {
        stoke_route_table_done(&t);
    }
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ctl *ctl = s->data;
    if (nread < 0) {
        drop_connection(ctl, (int)nread);
    } else if (nread > 0) {
        int r = stoke_linebuf_feed(&ctl->lines, buf->base, (size_t)nread, on_line, ctl);
        if (r < 0)
            drop_connection(ctl, r);
    }
    free(buf->base);
}

/* One [function, replica address, slots] entry of the hello's "slots". */
static void add_slots(const char *fn, const char *addr, uint32_t slots, void *data)
{
    json_object *list = data;
    json_object *e = json_object_new_array_ext(3);
    /* A failed allocation leaves the entry out: the controller then counts
     * the process as holding no slot there and raises none past its share. */
    if (!e)
        return;
    (void)json_object_array_add(e, json_object_new_string(fn));
    (void)json_object_array_add(e, json_object_new_string(addr));
    (void)json_object_array_add(e, json_object_new_int64(slots));
    if (json_object_array_add(list, e) < 0)
        json_object_put(e);
}

/* {"op":"auth","token":T}, when there is a token: the first line, short, as
 * the controller wants the first line of a TCP connection. */
static void send_auth(struct ctl *ctl)
{
    json_object *o = json_object_new_object();
    const char *text;
    if (!o)
        return;
    (void)json_object_object_add(o, "op", json_object_new_string("auth"));
    (void)json_object_object_add(o, "token", json_object_new_string(ctl->token));
    text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    if (text)
        ctl_send(ctl, text, strlen(text));
    /* The copy json-c made of the token dies with o. */
    json_object_put(o);
}

/* {"op":"hello","activator":ID,"process":P,"slots":[...]}: it names the
 * process, and the slots the process has on each replica whose slots are
 * divided: a restarted controller starts from them. */
static void send_hello(struct ctl *ctl)
{
    json_object *o = json_object_new_object();
    json_object *slots = json_object_new_array();
    const char *text;
    /* json_object_object_add steals the new strings; a NULL one is skipped
     * and the hello goes without it (the controller then says what it
     * misses). */
    if (!o || !slots) {
        json_object_put(o);
        json_object_put(slots);
        return;
    }
    (void)json_object_object_add(o, "op", json_object_new_string("hello"));
    (void)json_object_object_add(o, "activator", json_object_new_string(ctl->id));
    (void)json_object_object_add(o, "process", json_object_new_string(ctl->process));
    if (ctl->px)
        proxy_slots(ctl->px, add_slots, slots);
    (void)json_object_object_add(o, "slots", slots);
    text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    if (text)
        ctl_send(ctl, text, strlen(text));
    json_object_put(o);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct ctl *ctl = req->data;
    if (ctl->closing)
        return;
    if (status < 0) {
        stoke_debug(NULL, "controller not reachable (%s), retrying", uv_err_name(status));
        drop_connection(ctl, status);
        return;
    }
    ctl->connected = true;
    if (ctl->targets.is_unix) {
        stoke_info(NULL, "connected to the controller");
    } else {
        char a[INET6_ADDRSTRLEN + 16];
        struct stoke_addr sa = {.is_unix = false, .ss = ctl->cand[ctl->i_cand]};
        stoke_addr_format(&sa, a, sizeof(a));
        stoke_info(NULL, "connected to the controller at %s", a);
    }
    stoke_linebuf_done(&ctl->lines);
    stoke_linebuf_init(&ctl->lines, STOKE_CTL_MAX_LINE);

    if (ctl->token)
        send_auth(ctl);
    send_hello(ctl);
    if (ctl->px)
        proxy_waiting(ctl->px, send_poke, ctl);
    int r = uv_read_start(&ctl->conn.stream, stoke_uv_alloc, on_read);
    if (r < 0)
        drop_connection(ctl, r);
}

static void open_conn(struct ctl *ctl)
{
    if (ctl->targets.is_unix)
        uv_pipe_init(ctl->loop, &ctl->conn.pipe, 0);
    else
        uv_tcp_init(ctl->loop, &ctl->conn.tcp);
    ctl->conn.handle.data = ctl;
    ctl->conn_open = true;
    ctl->handles++;
    ctl->connect.data = ctl;
    ctl->got_table = false;
    ctl->resyncing = false;
}

static void connect_candidate(struct ctl *ctl)
{
    open_conn(ctl);
    int r = uv_tcp_connect(&ctl->connect, &ctl->conn.tcp,
                           (const struct sockaddr *)&ctl->cand[ctl->i_cand], on_connected);
    if (r < 0)
        drop_connection(ctl, r);
}

static void resolve_next(struct ctl *ctl);

static void add_candidate(struct ctl *ctl, const struct sockaddr *sa, socklen_t len)
{
    if ((sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || len > sizeof(ctl->cand[0]))
        return;
    for (size_t i = 0; i < ctl->n_cand; i++)
        if (memcmp(&ctl->cand[i], sa, len) == 0)
            return;
    if (ctl->n_cand == MAX_CANDIDATES)
        return;
    memset(&ctl->cand[ctl->n_cand], 0, sizeof(ctl->cand[0]));
    memcpy(&ctl->cand[ctl->n_cand++], sa, len);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct ctl *ctl = req->data;
    if (!ctl->closing) {
        if (status < 0)
            stoke_debug(NULL, "controller name %s: %s", ctl->targets.t[ctl->i_target].host,
                        uv_strerror(status));
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
            add_candidate(ctl, ai->ai_addr, ai->ai_addrlen);
        ctl->i_target++;
        resolve_next(ctl);
    }
    uv_freeaddrinfo(res);
    ctl_unref(ctl);
}

/* Resolves the targets one after the other (on the loop's thread pool),
 * then tries the addresses in turn. */
static void resolve_next(struct ctl *ctl)
{
    const struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_NUMERICSERV,
    };
    while (ctl->i_target < ctl->targets.n) {
        ctl->gai.data = ctl;
        int r =
            uv_getaddrinfo(ctl->loop, &ctl->gai, on_resolved, ctl->targets.t[ctl->i_target].host,
                           ctl->targets.t[ctl->i_target].port, &hints);
        if (r == 0) {
            ctl->handles++; /* the request holds the ctl until its callback */
            return;
        }
        ctl->i_target++;
    }
    if (ctl->n_cand == 0) {
        if (!ctl->cycle_warned) {
            stoke_warn(NULL, -ENOENT, "no address for the controller, retrying");
            ctl->cycle_warned = true;
        }
        retry_later(ctl);
        return;
    }
    ctl->i_cand = 0;
    connect_candidate(ctl);
}

static void ctl_connect(struct ctl *ctl)
{
    if (ctl->targets.is_unix) {
        open_conn(ctl);
        uv_pipe_connect(&ctl->connect, &ctl->conn.pipe, ctl->targets.unix_addr.path, on_connected);
        return;
    }
    ctl->n_cand = 0;
    ctl->i_target = 0;
    resolve_next(ctl);
}

struct stats_ctx {
    struct stoke_buf *msg;
    int n;
};

static void add_stat(const char *fn, double concurrency, uint64_t requests, void *data)
{
    struct stats_ctx *sc = data;
    /* Names are DNS labels (validated), so they need no JSON escaping. */
    (void)stoke_buf_printf(sc->msg, "%s\"%s\":{\"concurrency\":%.6g,\"requests\":%llu}",
                           sc->n++ ? "," : "", fn, concurrency, (unsigned long long)requests);
}

static void on_stats(uv_timer_t *t)
{
    struct ctl *ctl = t->data;
    if (!ctl->px)
        return;
    stoke_buf_clear(&ctl->msg);
    struct stats_ctx sc = {.msg = &ctl->msg, .n = 0};
    (void)stoke_buf_printf(&ctl->msg, "{\"op\":\"stats\",\"fns\":{");
    proxy_stats(ctl->px, add_stat, &sc);
    if (stoke_buf_append(&ctl->msg, "}}", 2) == 0)
        ctl_send(ctl, ctl->msg.data, ctl->msg.len);
}

int ctl_new(uv_loop_t *loop, const struct ctl_targets *controller, const char *id,
            const char *process, const char *token, struct ctl **ret)
{
    struct ctl *ctl = calloc(1, sizeof(*ctl));
    if (!ctl)
        return -ENOMEM;
    if (token) {
        ctl->token = strdup(token);
        if (!ctl->token) {
            free(ctl);
            return -ENOMEM;
        }
    }
    ctl->loop = loop;
    ctl->targets = *controller;
    snprintf(ctl->id, sizeof(ctl->id), "%s", id);
    snprintf(ctl->process, sizeof(ctl->process), "%s", process);
    ctl->backoff_ms = BACKOFF_MIN_MS;
    const char *drop = getenv("STOKE_TEST_DROP_ROUTE_UPDATE");
    if (drop && stoke_parse_u64(drop, &ctl->drop_update) < 0)
        ctl->drop_update = 0;
    stoke_linebuf_init(&ctl->lines, STOKE_CTL_MAX_LINE);
    stoke_buf_init(&ctl->msg, STOKE_CTL_MAX_LINE);
    uv_timer_init(loop, &ctl->retry);
    uv_timer_init(loop, &ctl->stats);
    ctl->retry.data = ctl;
    ctl->stats.data = ctl;
    ctl->handles = 2;
    uv_timer_start(&ctl->stats, on_stats, STATS_PERIOD_MS, STATS_PERIOD_MS);
    ctl_connect(ctl);
    *ret = ctl;
    return 0;
}

void ctl_set_proxy(struct ctl *ctl, struct proxy *px)
{
    ctl->px = px;
}

void ctl_close(struct ctl *ctl, void (*on_closed)(void *data), void *data)
{
    ctl->closing = true;
    ctl->on_closed = on_closed;
    ctl->closed_data = data;
    ctl->connected = false;
    uv_close((uv_handle_t *)&ctl->retry, on_handle_closed);
    uv_close((uv_handle_t *)&ctl->stats, on_handle_closed);
    if (ctl->conn_open && !uv_is_closing(&ctl->conn.handle))
        uv_close(&ctl->conn.handle, on_handle_closed);
}
