#include "ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "stoke/linebuf.h"
#include "stoke/log.h"
#include "stoke/uvbuf.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define STATS_PERIOD_MS 1000
#define MAX_UNSENT (4 * 1024 * 1024) /* a controller not reading: reconnect */

struct ctl {
    uv_loop_t *loop;
    struct stoke_addr addr;
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

static void on_handle_closed(uv_handle_t *h)
{
    struct ctl *ctl = h->data;
    if (h == &ctl->conn.handle) {
        ctl->conn_open = false;
        if (!ctl->closing) {
            uv_timer_start(&ctl->retry, on_retry, ctl->backoff_ms, 0);
            ctl->backoff_ms *= 2;
            if (ctl->backoff_ms > BACKOFF_MAX_MS)
                ctl->backoff_ms = BACKOFF_MAX_MS;
        }
    }
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

static void drop_connection(struct ctl *ctl, int err)
{
    if (!ctl->conn_open || uv_is_closing(&ctl->conn.handle))
        return;
    if (ctl->connected)
        stoke_warn(NULL, err, "lost the controller, reconnecting; serving the known routes");
    ctl->connected = false;
    uv_close(&ctl->conn.handle, on_handle_closed);
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
    int r = stoke_route_table_parse(line, len, &t);
    if (r < 0) {
        stoke_warn(NULL, r, "ignoring a bad message from the controller");
        return 0;
    }
    stoke_debug(NULL, "route table %llu: %zu functions", (unsigned long long)t.gen, t.n_routes);
    if (ctl->px) {
        proxy_set_routes(ctl->px, &t);
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
    ctl->backoff_ms = BACKOFF_MIN_MS;
    stoke_info(NULL, "connected to the controller");
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

static void ctl_connect(struct ctl *ctl)
{
    int r;
    ctl->connect.data = ctl;
    if (ctl->addr.is_unix) {
        uv_pipe_init(ctl->loop, &ctl->conn.pipe, 0);
    } else {
        uv_tcp_init(ctl->loop, &ctl->conn.tcp);
    }
    ctl->conn.handle.data = ctl;
    ctl->conn_open = true;
    ctl->handles++;
    if (ctl->addr.is_unix) {
        uv_pipe_connect(&ctl->connect, &ctl->conn.pipe, ctl->addr.path, on_connected);
        return;
    }
    r = uv_tcp_connect(&ctl->connect, &ctl->conn.tcp, (const struct sockaddr *)&ctl->addr.ss,
                       on_connected);
    if (r < 0)
        drop_connection(ctl, r);
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

int ctl_new(uv_loop_t *loop, const struct stoke_addr *controller, const char *id,
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
    ctl->addr = *controller;
    snprintf(ctl->id, sizeof(ctl->id), "%s", id);
    snprintf(ctl->process, sizeof(ctl->process), "%s", process);
    ctl->backoff_ms = BACKOFF_MIN_MS;
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
