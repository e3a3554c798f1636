#include "stoke/chan.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "stoke/linebuf.h"
#include "stoke/log.h"
#include "stoke/uvbuf.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define MAX_UNSENT (4 * 1024 * 1024) /* a controller not reading: reconnect */
#define MAX_CANDIDATES 32
#define RESYNC_AGAIN_MS 1000 /* asks again at an update this long after, table still missing */

struct stoke_chan {
    uv_loop_t *loop;
    struct stoke_chan_targets targets;
    struct stoke_chan_ops ops;
    void *data;
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
    uint64_t backoff_ms;
    struct stoke_linebuf lines;
    bool closing;
    int handles;
    void (*on_closed)(void *);
    void *closed_data;
};

static void chan_connect(struct stoke_chan *ch);

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

int stoke_chan_parse_targets(const char *s, struct stoke_chan_targets *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (strncmp(s, "unix:", 5) == 0) {
        ret->is_unix = true;
        return stoke_addr_parse(s, &ret->unix_addr);
    }
    for (;;) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (ret->n == STOKE_CHAN_MAX_TARGETS ||
            parse_target(s, len, ret->t[ret->n].host, sizeof(ret->t[0].host), ret->t[ret->n].port) <
                0)
            return -EINVAL;
        ret->n++;
        if (!end)
            return 0;
        s = end + 1;
    }
}

struct chan_write {
    uv_write_t req;
    char data[];
};

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error too */
    free(stoke_container_of(req, struct chan_write, req));
}

void stoke_chan_send(struct stoke_chan *ch, const char *line, size_t len)
{
    if (!ch->connected)
        return;
    if (uv_stream_get_write_queue_size(&ch->conn.stream) > MAX_UNSENT) {
        stoke_warn(NULL, -ENOBUFS, "controller is not reading, dropping a message");
        return;
    }
    struct chan_write *w = malloc(sizeof(*w) + len + 1);
    if (!w)
        return;
    memcpy(w->data, line, len);
    w->data[len] = '\n';
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len + 1);
    if (uv_write(&w->req, &ch->conn.stream, &b, 1, on_written) < 0)
        free(w);
}

bool stoke_chan_connected(const struct stoke_chan *ch)
{
    return ch->connected;
}

static void on_retry(uv_timer_t *t)
{
    chan_connect(t->data);
}

static void connect_candidate(struct stoke_chan *ch);

/* No address took the channel, or the one that did went away: a new cycle,
 * resolving the names again, after the back-off. */
static void retry_later(struct stoke_chan *ch)
{
    uv_timer_start(&ch->retry, on_retry, ch->backoff_ms, 0);
    ch->backoff_ms *= 2;
    if (ch->backoff_ms > BACKOFF_MAX_MS)
        ch->backoff_ms = BACKOFF_MAX_MS;
}

/* One handle or request fewer; the last one of a closing channel frees it. */
static void chan_unref(struct stoke_chan *ch)
{
    if (--ch->handles > 0 || !ch->closing)
        return;
    stoke_linebuf_done(&ch->lines);
    if (ch->token) {
        explicit_bzero(ch->token, strlen(ch->token));
        free(ch->token);
    }
    if (ch->on_closed)
        ch->on_closed(ch->closed_data);
    free(ch);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct stoke_chan *ch = h->data;
    if (h == &ch->conn.handle) {
        ch->conn_open = false;
        if (!ch->closing) {
            /* Refused, or closed before any table (a controller that does
             * not lead, or is going away): the next address at once. */
            if (!ch->targets.is_unix && !ch->got_table && ch->i_cand + 1 < ch->n_cand) {
                ch->i_cand++;
                connect_candidate(ch);
            } else {
                if (!ch->got_table && !ch->cycle_warned && !ch->targets.is_unix) {
                    stoke_warn(NULL, -ECONNREFUSED,
                               "no controller address takes the channel (%zu tried), retrying",
                               ch->n_cand);
                    ch->cycle_warned = true;
                }
                retry_later(ch);
            }
        }
    }
    chan_unref(ch);
}

static void drop_connection(struct stoke_chan *ch, int err)
{
    if (!ch->conn_open || uv_is_closing(&ch->conn.handle))
        return;
    if (ch->connected)
        stoke_warn(NULL, err, "lost the controller, reconnecting; keeping the known routes");
    ch->connected = false;
    uv_close(&ch->conn.handle, on_handle_closed);
}

/* {"op":"resync","gen":G}: this channel missed an update. */
static void send_resync(struct stoke_chan *ch)
{
    char line[64];
    int n = snprintf(line, sizeof(line), "{\"op\":\"resync\",\"gen\":%llu}",
                     (unsigned long long)ch->ops.gen(ch->data));
    ch->resync_ms = uv_now(ch->loop);
    stoke_chan_send(ch, line, (size_t)n);
}

/* An update applies on top of the table of the gen before it; any other
 * gen means one was missed (or the table was): the whole table again. */
static int on_update(struct stoke_chan *ch, const char *line, size_t len)
{
    uint64_t t0 = uv_hrtime();
    struct stoke_route_update u;
    if (ch->drop_update && ++ch->n_updates == ch->drop_update) {
        stoke_warn(NULL, -EAGAIN, "test hook: dropping route update %llu",
                   (unsigned long long)ch->n_updates);
        return 0;
    }
    int r = stoke_route_update_parse(line, len, &u);
    if (r < 0) {
        /* It may have changed anything: the table again. */
        stoke_warn(NULL, r, "a bad route update from the controller; asking for the table");
        u.gen = 0;
    }
    if (ch->resyncing) {
        /* The table is on its way; ask again should the ask have been lost
         * (the controller could not build the table). */
        if (uv_now(ch->loop) - ch->resync_ms >= RESYNC_AGAIN_MS)
            send_resync(ch);
        stoke_route_update_done(&u);
        return 0;
    }
    uint64_t gen = ch->ops.gen(ch->data);
    if (r < 0 || !ch->got_table || u.gen != gen + 1) {
        stoke_warn(NULL, -EPROTO,
                   "route update %llu does not follow table %llu (one was missed); asking the "
                   "controller for the whole table",
                   (unsigned long long)u.gen, (unsigned long long)gen);
        stoke_route_update_done(&u);
        ch->resyncing = true;
        if (ch->ops.on_resync)
            ch->ops.on_resync(ch->data);
        send_resync(ch);
        return 0;
    }
    ch->ops.on_update(&u, len, t0, ch->data);
    return 0;
}

static int on_line(char *line, size_t len, void *data)
{
    struct stoke_chan *ch = data;
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
        return on_update(ch, line, len);
    uint64_t t0 = uv_hrtime();
    int r = stoke_route_table_parse(line, len, &t);
    if (r < 0) {
        stoke_warn(NULL, r, "ignoring a bad message from the controller");
        return 0;
    }
    if (!ch->got_table) {
        /* This controller took the channel. */
        ch->got_table = true;
        ch->cycle_warned = false;
        ch->backoff_ms = BACKOFF_MIN_MS;
    }
    ch->resyncing = false;
    stoke_debug(NULL, "route table %llu for %s: %zu functions", (unsigned long long)t.gen, ch->id,
                t.n_routes);
    ch->ops.on_table(&t, len, t0, ch->data);
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct stoke_chan *ch = s->data;
    if (nread < 0) {
        drop_connection(ch, (int)nread);
    } else if (nread > 0) {
        int r = stoke_linebuf_feed(&ch->lines, buf->base, (size_t)nread, on_line, ch);
        if (r < 0)
            drop_connection(ch, r);
    }
    free(buf->base);
}

/* {"op":"auth","token":T}, when there is a token: the first line, short, as
 * the controller wants the first line of a TCP connection. */
static void send_auth(struct stoke_chan *ch)
{
    json_object *o = json_object_new_object();
    const char *text;
    if (!o)
        return;
    (void)json_object_object_add(o, "op", json_object_new_string("auth"));
    (void)json_object_object_add(o, "token", json_object_new_string(ch->token));
    text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    if (text)
        stoke_chan_send(ch, text, strlen(text));
    /* The copy json-c made of the token dies with o. */
    json_object_put(o);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct stoke_chan *ch = req->data;
    if (ch->closing)
        return;
    if (status < 0) {
        stoke_debug(NULL, "controller not reachable (%s), retrying", uv_err_name(status));
        drop_connection(ch, status);
        return;
    }
    ch->connected = true;
    if (ch->targets.is_unix) {
        stoke_info(NULL, "connected to the controller");
    } else {
        char a[INET6_ADDRSTRLEN + 16];
        struct stoke_addr sa = {.is_unix = false, .ss = ch->cand[ch->i_cand]};
        stoke_addr_format(&sa, a, sizeof(a));
        stoke_info(NULL, "connected to the controller at %s", a);
    }
    stoke_linebuf_done(&ch->lines);
    stoke_linebuf_init(&ch->lines, STOKE_CTL_MAX_LINE);

    if (ch->token)
        send_auth(ch);
    ch->ops.on_connected(ch, ch->data);
    int r = uv_read_start(&ch->conn.stream, stoke_uv_alloc, on_read);
    if (r < 0)
        drop_connection(ch, r);
}

static void open_conn(struct stoke_chan *ch)
{
    if (ch->targets.is_unix)
        uv_pipe_init(ch->loop, &ch->conn.pipe, 0);
    else
        uv_tcp_init(ch->loop, &ch->conn.tcp);
    ch->conn.handle.data = ch;
    ch->conn_open = true;
    ch->handles++;
    ch->connect.data = ch;
    ch->got_table = false;
    ch->resyncing = false;
}

static void connect_candidate(struct stoke_chan *ch)
{
    open_conn(ch);
    int r = uv_tcp_connect(&ch->connect, &ch->conn.tcp,
                           (const struct sockaddr *)&ch->cand[ch->i_cand], on_connected);
    if (r < 0)
        drop_connection(ch, r);
}

static void resolve_next(struct stoke_chan *ch);

static void add_candidate(struct stoke_chan *ch, const struct sockaddr *sa, socklen_t len)
{
    if ((sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || len > sizeof(ch->cand[0]))
        return;
    for (size_t i = 0; i < ch->n_cand; i++)
        if (memcmp(&ch->cand[i], sa, len) == 0)
            return;
    if (ch->n_cand == MAX_CANDIDATES)
        return;
    memset(&ch->cand[ch->n_cand], 0, sizeof(ch->cand[0]));
    memcpy(&ch->cand[ch->n_cand++], sa, len);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct stoke_chan *ch = req->data;
    if (!ch->closing) {
        if (status < 0)
            stoke_debug(NULL, "controller name %s: %s", ch->targets.t[ch->i_target].host,
                        uv_strerror(status));
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
            add_candidate(ch, ai->ai_addr, ai->ai_addrlen);
        ch->i_target++;
        resolve_next(ch);
    }
    uv_freeaddrinfo(res);
    chan_unref(ch);
}

/* Resolves the targets one after the other (on the loop's thread pool),
 * then tries the addresses in turn. */
static void resolve_next(struct stoke_chan *ch)
{
    const struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_NUMERICSERV,
    };
    while (ch->i_target < ch->targets.n) {
        ch->gai.data = ch;
        int r = uv_getaddrinfo(ch->loop, &ch->gai, on_resolved, ch->targets.t[ch->i_target].host,
                               ch->targets.t[ch->i_target].port, &hints);
        if (r == 0) {
            ch->handles++; /* the request holds the channel until its callback */
            return;
        }
        ch->i_target++;
    }
    if (ch->n_cand == 0) {
        if (!ch->cycle_warned) {
            stoke_warn(NULL, -ENOENT, "no address for the controller, retrying");
            ch->cycle_warned = true;
        }
        retry_later(ch);
        return;
    }
    ch->i_cand = 0;
    connect_candidate(ch);
}

static void chan_connect(struct stoke_chan *ch)
{
    if (ch->targets.is_unix) {
        open_conn(ch);
        uv_pipe_connect(&ch->connect, &ch->conn.pipe, ch->targets.unix_addr.path, on_connected);
        return;
    }
    ch->n_cand = 0;
    ch->i_target = 0;
    resolve_next(ch);
}

int stoke_chan_new(uv_loop_t *loop, const struct stoke_chan_targets *targets, const char *id,
                   const char *token, const struct stoke_chan_ops *ops, void *data,
                   struct stoke_chan **ret)
{
    struct stoke_chan *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return -ENOMEM;
    if (token) {
        ch->token = strdup(token);
        if (!ch->token) {
            free(ch);
            return -ENOMEM;
        }
    }
    ch->loop = loop;
    ch->targets = *targets;
    ch->ops = *ops;
    ch->data = data;
    snprintf(ch->id, sizeof(ch->id), "%s", id);
    ch->backoff_ms = BACKOFF_MIN_MS;
    const char *drop = getenv("STOKE_TEST_DROP_ROUTE_UPDATE");
    if (drop && stoke_parse_u64(drop, &ch->drop_update) < 0)
        ch->drop_update = 0;
    stoke_linebuf_init(&ch->lines, STOKE_CTL_MAX_LINE);
    uv_timer_init(loop, &ch->retry);
    ch->retry.data = ch;
    ch->handles = 1;
    chan_connect(ch);
    *ret = ch;
    return 0;
}

void stoke_chan_close(struct stoke_chan *ch, void (*on_closed)(void *data), void *data)
{
    ch->closing = true;
    ch->on_closed = on_closed;
    ch->closed_data = data;
    ch->connected = false;
    uv_close((uv_handle_t *)&ch->retry, on_handle_closed);
    if (ch->conn_open && !uv_is_closing(&ch->conn.handle))
        uv_close(&ch->conn.handle, on_handle_closed);
}
