/* The ops port both daemons serve; see stoke/opsd.h. */
#include "stoke/opsd.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "stoke/list.h"
#include "stoke/uvbuf.h"

#define OPS_MAX_CONNS 64
#define OPS_MAX_HEAD 8192 /* request line + headers; over: 431 */
#define OPS_HEAD_TIMEOUT_MS 10000
#define OPS_IDLE_TIMEOUT_MS 60000
#define OPS_MAX_UNSENT (16u << 20)  /* answers a pipelining client has not read */
#define OPS_MAX_METRICS (64u << 20) /* the rendered text; over: 500 */

struct stoke_opsd {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct stoke_opsd_callbacks cbs;
    llhttp_settings_t settings;
    struct stoke_list conns;
    unsigned n_conns;
    int handles;
    bool closing;
};

struct ops_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    int handles;
    struct stoke_opsd *o;
    struct stoke_list node;
    llhttp_t parser;
    struct stoke_buf url;
    size_t head_bytes;
    int error;        /* status a parser callback chose for a bad request */
    bool closed;      /* uv_close() called */
    bool close_after; /* the last answer is queued: close once it is written */
    unsigned pending; /* writes not yet completed */
};

struct ops_write {
    uv_write_t req;
    struct ops_conn *c;
    char data[];
};

static void ops_handle_closed(struct stoke_opsd *o)
{
    if (--o->handles == 0 && o->closing)
        free(o);
}

static void on_listener_closed(uv_handle_t *h)
{
    ops_handle_closed(h->data);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct ops_conn *c = h->data;
    if (--c->handles > 0)
        return;
    struct stoke_opsd *o = c->o;
    stoke_buf_done(&c->url);
    free(c);
    ops_handle_closed(o);
}

static void conn_close(struct ops_conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    stoke_list_remove(&c->node);
    c->o->n_conns--;
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_written(uv_write_t *req, int status)
{
    struct ops_write *w = stoke_container_of(req, struct ops_write, req);
    struct ops_conn *c = w->c;
    free(w);
    c->pending--;
    if (status < 0 || (c->close_after && c->pending == 0))
        conn_close(c);
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* Queues one answer. With close_conn (or on failure) the connection is
 * closed once it is written; nothing more is read. */
static void conn_answer(struct ops_conn *c, int status, const char *ctype, const char *body,
                        size_t len, bool head_only, bool close_conn)
{
    char head[512];
    int hl =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\n%s%s\r\n",
                 status, reason(status), ctype, len, status == 405 ? "Allow: GET, HEAD\r\n" : "",
                 close_conn ? "Connection: close\r\n" : "");
    size_t blen = head_only ? 0 : len;
    struct ops_write *w = malloc(sizeof(*w) + (size_t)hl + blen);
    if (!w) {
        conn_close(c);
        return;
    }
    w->c = c;
    memcpy(w->data, head, (size_t)hl);
    if (blen)
        memcpy(w->data + hl, body, blen);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)((size_t)hl + blen));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        free(w);
        conn_close(c);
        return;
    }
    c->pending++;
    if (close_conn) {
        c->close_after = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
        /* A client that does not read its answer is not waited for. */
        uv_timer_start(&c->timer, on_timeout, OPS_HEAD_TIMEOUT_MS, 0);
    } else if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > OPS_MAX_UNSENT) {
        conn_close(c); /* pipelining without reading the answers */
    }
}

static void conn_error(struct ops_conn *c, int status)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, reason(status));
    conn_answer(c, status, "text/plain; charset=utf-8", body, (size_t)n, false, true);
}

static void answer_health(struct ops_conn *c, bool head_only, bool close_conn)
{
    char msg[256] = "";
    bool ok = c->o->cbs.health(msg, sizeof(msg), c->o->cbs.data);
    char body[sizeof(msg) + 1];
    int n = snprintf(body, sizeof(body), "%s\n", msg);
    conn_answer(c, ok ? 200 : 503, "text/plain; charset=utf-8", body, (size_t)n, head_only,
                close_conn);
}

static void answer_metrics(struct ops_conn *c, bool head_only, bool close_conn)
{
    struct stoke_buf out;
    stoke_buf_init(&out, OPS_MAX_METRICS);
    if (c->o->cbs.metrics(&out, c->o->cbs.data) < 0) {
        stoke_buf_done(&out);
        conn_error(c, 500);
        return;
    }
    conn_answer(c, 200, "text/plain; version=0.0.4; charset=utf-8", out.data ? out.data : "",
                out.len, head_only, close_conn);
    stoke_buf_done(&out);
}

/* Answers the request just parsed (a GET or HEAD without a body). */
static void conn_respond(struct ops_conn *c)
{
    const char *url = c->url.data ? c->url.data : "";
    size_t plen = strcspn(url, "?");
    bool head_only = llhttp_get_method(&c->parser) == HTTP_HEAD;
    bool close_conn = !llhttp_should_keep_alive(&c->parser);
    if (plen == 8 && memcmp(url, "/healthz", 8) == 0) {
        answer_health(c, head_only, close_conn);
    } else if (plen == 8 && memcmp(url, "/metrics", 8) == 0) {
        answer_metrics(c, head_only, close_conn);
    } else {
        static const char body[] = "404 Not Found\n";
        conn_answer(c, 404, "text/plain; charset=utf-8", body, sizeof(body) - 1, head_only,
                    close_conn);
    }
    if (!c->closed && !c->close_after)
        uv_timer_start(&c->timer, on_timeout, OPS_IDLE_TIMEOUT_MS, 0);
}

/* ---- request parsing ---------------------------------------------------- */

static int head_bytes(struct ops_conn *c, size_t len)
{
    c->head_bytes += len;
    if (c->head_bytes > OPS_MAX_HEAD) {
        c->error = 431;
        return -1;
    }
    return 0;
}

static int on_begin(llhttp_t *p)
{
    struct ops_conn *c = p->data;
    stoke_buf_clear(&c->url);
    c->head_bytes = 0;
    c->error = 0;
    uv_timer_start(&c->timer, on_timeout, OPS_HEAD_TIMEOUT_MS, 0);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct ops_conn *c = p->data;
    if (head_bytes(c, len) < 0)
        return -1;
    return stoke_buf_append(&c->url, at, len) < 0 ? -1 : 0;
}

static int on_header_data(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    return head_bytes(p->data, len);
}

static int on_headers_complete(llhttp_t *p)
{
    struct ops_conn *c = p->data;
    uint8_t method = llhttp_get_method(p);
    if (method != HTTP_GET && method != HTTP_HEAD) {
        c->error = 405;
        return -1;
    }
    if (p->content_length > 0 || (p->flags & F_CHUNKED)) {
        c->error = 400; /* nothing here takes a body */
        return -1;
    }
    return 0;
}

static int on_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

/* Parses `len` bytes, answering each complete request in turn. */
static void conn_parse(struct ops_conn *c, const char *data, size_t len)
{
    while (len > 0 && !c->closed && !c->close_after) {
        llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
        if (err == HPE_OK)
            return;
        if (err != HPE_PAUSED) {
            conn_error(c, c->error ? c->error : 400);
            return;
        }
        size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        conn_respond(c);
        llhttp_resume(&c->parser);
        data += used;
        len -= used;
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ops_conn *c = s->data;
    if (nread < 0)
        conn_close(c);
    else if (nread > 0 && !c->closed && !c->close_after)
        conn_parse(c, buf->base, (size_t)nread);
    free(buf->base);
}

static void on_accept(uv_stream_t *server, int status)
{
    struct stoke_opsd *o = server->data;
    if (status < 0)
        return;
    struct ops_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->o = o;
    uv_tcp_init(o->loop, &c->tcp);
    uv_timer_init(o->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    o->handles++;
    stoke_list_insert_tail(&o->conns, &c->node);
    o->n_conns++;
    stoke_buf_init(&c->url, OPS_MAX_HEAD);
    llhttp_init(&c->parser, HTTP_REQUEST, &o->settings);
    c->parser.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || o->n_conns > OPS_MAX_CONNS ||
        uv_read_start((uv_stream_t *)&c->tcp, stoke_uv_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, OPS_HEAD_TIMEOUT_MS, 0);
}

int stoke_opsd_new(uv_loop_t *loop, const struct stoke_addr *addr,
                   const struct stoke_opsd_callbacks *cbs, struct stoke_opsd **ret)
{
    if (addr->is_unix)
        return -EINVAL;
    struct stoke_opsd *o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->loop = loop;
    o->cbs = *cbs;
    stoke_list_init(&o->conns);
    llhttp_settings_init(&o->settings);
    o->settings.on_message_begin = on_begin;
    o->settings.on_url = on_url;
    o->settings.on_header_field = on_header_data;
    o->settings.on_header_value = on_header_data;
    o->settings.on_headers_complete = on_headers_complete;
    o->settings.on_message_complete = on_complete;
    uv_tcp_init(loop, &o->listener);
    o->listener.data = o;
    o->handles = 1;
    int r = uv_tcp_bind(&o->listener, (const struct sockaddr *)&addr->ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&o->listener, 64, on_accept);
    if (r < 0) {
        stoke_opsd_close(o);
        return r;
    }
    *ret = o;
    return 0;
}

void stoke_opsd_close(struct stoke_opsd *o)
{
    if (!o || o->closing)
        return;
    o->closing = true;
    while (!stoke_list_empty(&o->conns))
        conn_close(stoke_container_of(stoke_list_first(&o->conns), struct ops_conn, node));
    uv_close((uv_handle_t *)&o->listener, on_listener_closed);
}

int stoke_opsd_parse_addr(const char *s, struct stoke_addr *ret, bool *ret_on)
{
    struct stoke_addr a;
    if (strcmp(s, "none") == 0) {
        *ret_on = false;
        return 0;
    }
    if (stoke_addr_parse(s, &a) < 0 || a.is_unix)
        return -EINVAL;
    *ret = a;
    *ret_on = true;
    return 0;
}
