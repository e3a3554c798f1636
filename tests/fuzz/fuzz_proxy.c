/* libFuzzer target over the activator's request path. The input is what a
 * client sends on one connection. The real proxy (activator/proxy.c) reads
 * it from one end of a socketpair and forwards what it accepts to an
 * upstream on 127.0.0.1 in the same process, which answers every request
 * with a fixed 200 (or a 101 for /ws, then echoes).
 *
 * Beyond ASan and UBSan, each input checks that:
 * - every request the upstream receives parses as clean HTTP/1.1 (llhttp,
 *   with no lenient flags), carries Host and X-Request-Id, and never both
 *   Content-Length and Transfer-Encoding: nothing malformed is forwarded;
 * - what comes back to the client parses as a sequence of HTTP/1.1
 *   responses, possibly cut short by a close (when the input asks for HEAD
 *   anywhere, bodies cannot be told apart, and only the first status line
 *   is checked);
 * - the proxy ends the connection within a bounded number of loop turns once
 *   the client has sent everything and half-closed (no hang), and nothing
 *   is left in progress afterwards. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>
#include <uv.h>

#include "proxy.h"
#include "stoke/routes.h"

#define MAX_TURNS 20000

static uv_loop_t loop;
static struct proxy *px;
static uv_tcp_t up_listener;
static llhttp_settings_t up_settings, resp_settings;

/* ---- the upstream ---------------------------------------------------------- */

struct up_conn {
    uv_tcp_t tcp;
    llhttp_t parser;
    bool host, request_id, tunnel;
};

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_proxy: %s: %s\n", what, detail ? detail : "");
    abort();
}

static void on_freed(uv_handle_t *h)
{
    free(h->data);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void up_send(struct up_conn *u, const char *data, size_t len)
{
    uv_write_t *w = malloc(sizeof(*w) + len);
    if (!w)
        abort();
    char *copy = (char *)(w + 1);
    memcpy(copy, data, len);
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    if (uv_write(w, (uv_stream_t *)&u->tcp, &b, 1, on_written) < 0)
        free(w);
}

static struct up_conn *parser_conn(llhttp_t *p)
{
    return p->data;
}

static int up_on_begin(llhttp_t *p)
{
    struct up_conn *u = parser_conn(p);
    u->host = u->request_id = false;
    return 0;
}

static char field[64];
static size_t field_len;

static int up_on_field(llhttp_t *p, const char *at, size_t len)
{
    (void)p;
    size_t n = len < sizeof(field) - 1 - field_len ? len : sizeof(field) - 1 - field_len;
    memcpy(field + field_len, at, n);
    field_len += n;
    field[field_len] = '\0';
    return 0;
}

static int up_on_field_done(llhttp_t *p)
{
    struct up_conn *u = parser_conn(p);
    if (strcasecmp(field, "host") == 0)
        u->host = true;
    if (strcasecmp(field, "x-request-id") == 0)
        u->request_id = true;
    field_len = 0;
    field[0] = '\0';
    return 0;
}

static int up_on_headers_complete(llhttp_t *p)
{
    struct up_conn *u = parser_conn(p);
    if ((p->flags & F_CHUNKED) && (p->flags & F_CONTENT_LENGTH))
        die("forwarded with both Content-Length and Transfer-Encoding", NULL);
    if (!u->host || !u->request_id)
        die("forwarded without Host or X-Request-Id", NULL);
    return 0;
}

static int up_on_url(llhttp_t *p, const char *at, size_t len)
{
    struct up_conn *u = parser_conn(p);
    u->tunnel = len == 3 && memcmp(at, "/ws", 3) == 0;
    return 0;
}

static int up_on_complete(llhttp_t *p)
{
    struct up_conn *u = parser_conn(p);
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    static const char sw[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             "Connection: upgrade\r\n\r\n";
    if (u->tunnel && p->upgrade)
        up_send(u, sw, sizeof(sw) - 1);
    else
        up_send(u, ok, sizeof(ok) - 1);
    return 0;
}

static void up_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct up_conn *u = s->data;
    if (nread < 0) {
        free(buf->base);
        uv_close((uv_handle_t *)&u->tcp, on_freed);
        return;
    }
    if (u->tunnel && u->parser.error == HPE_PAUSED_UPGRADE) {
        up_send(u, buf->base, (size_t)nread); /* echo */
        free(buf->base);
        return;
    }
    llhttp_errno_t err = llhttp_execute(&u->parser, buf->base, (size_t)nread);
    if (err == HPE_PAUSED_UPGRADE) {
        /* Declined upgrades go on as HTTP; a switched one echoes. */
        const char *pos = llhttp_get_error_pos(&u->parser);
        size_t rest = (size_t)(buf->base + nread - pos);
        if (u->tunnel) {
            if (rest)
                up_send(u, pos, rest);
        } else {
            llhttp_resume_after_upgrade(&u->parser);
            if (rest && llhttp_execute(&u->parser, pos, rest) != HPE_OK)
                die("bad request after a declined upgrade", llhttp_get_error_reason(&u->parser));
        }
    } else if (err != HPE_OK) {
        die("forwarded a malformed request", llhttp_get_error_reason(&u->parser));
    }
    free(buf->base);
}

static void up_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(size);
    buf->len = buf->base ? size : 0;
}

static void up_on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct up_conn *u = calloc(1, sizeof(*u));
    if (!u)
        abort();
    uv_tcp_init(&loop, &u->tcp);
    u->tcp.data = u;
    if (uv_accept(server, (uv_stream_t *)&u->tcp) < 0) {
        uv_close((uv_handle_t *)&u->tcp, on_freed);
        return;
    }
    llhttp_init(&u->parser, HTTP_REQUEST, &up_settings);
    u->parser.data = u;
    uv_read_start((uv_stream_t *)&u->tcp, up_alloc, up_on_read);
}

/* ---- the client ------------------------------------------------------------ */

struct client_side {
    uv_pipe_t pipe;
    uv_write_t write;
    uv_shutdown_t shutdown;
    llhttp_t parser;
    bool written, shut, done, bad, bad_start;
    bool tunnel, parse;
    size_t got;
};

static void client_closed(uv_handle_t *h)
{
    struct client_side *cs = h->data;
    cs->done = true;
}

static void client_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client_side *cs = s->data;
    if (nread < 0) {
        free(buf->base);
        uv_close((uv_handle_t *)&cs->pipe, client_closed);
        return;
    }
    if (nread > 0 && cs->got == 0 && (nread < 12 || memcmp(buf->base, "HTTP/1.1 ", 9) != 0))
        cs->bad_start = true;
    cs->got += (size_t)nread;
    if (nread > 0 && !cs->tunnel && cs->parse) {
        llhttp_errno_t err = llhttp_execute(&cs->parser, buf->base, (size_t)nread);
        if (err == HPE_PAUSED_UPGRADE)
            cs->tunnel = true; /* bytes after a 101 are the echo */
        else if (err != HPE_OK)
            cs->bad = true;
    }
    free(buf->base);
}

static void client_on_written(uv_write_t *w, int status)
{
    struct client_side *cs = w->data;
    (void)status;
    cs->written = true;
}

static void client_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

/* ---- setup ----------------------------------------------------------------- */

static void noop_poke(const char *fn, void *data)
{
    (void)fn;
    (void)data;
}

static void noop_drained(void *data)
{
    (void)data;
}

static void setup(void)
{
    uv_loop_init(&loop);
    llhttp_settings_init(&up_settings);
    up_settings.on_message_begin = up_on_begin;
    up_settings.on_url = up_on_url;
    up_settings.on_header_field = up_on_field;
    up_settings.on_header_field_complete = up_on_field_done;
    up_settings.on_headers_complete = up_on_headers_complete;
    up_settings.on_message_complete = up_on_complete;
    llhttp_settings_init(&resp_settings);

    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    uv_tcp_init(&loop, &up_listener);
    if (uv_tcp_bind(&up_listener, (const struct sockaddr *)&sin, 0) < 0 ||
        uv_listen((uv_stream_t *)&up_listener, 128, up_on_connection) < 0)
        die("upstream listen", NULL);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&up_listener, (struct sockaddr *)&ss, &len);

    struct proxy_config cfg;
    proxy_config_defaults(&cfg);
    if (stoke_addr_parse("127.0.0.1:0", &cfg.listen) < 0)
        die("listen address", NULL);
    cfg.max_header_bytes = 2048;
    cfg.max_body_bytes = 4096;
    struct proxy_hooks hooks = {.on_poke = noop_poke, .on_drained = noop_drained};
    if (proxy_new(&loop, &cfg, &hooks, &px) < 0)
        die("proxy_new", NULL);

    struct stoke_route_table t = {.gen = 1, .n_routes = 1};
    t.routes = calloc(1, sizeof(*t.routes));
    if (!t.routes)
        abort();
    struct stoke_route *r = &t.routes[0];
    snprintf(r->name, sizeof(r->name), "fuzz");
    r->timeout_ms = 10000;
    r->queue_max = 16;
    r->queue_timeout_ms = 10000;
    r->endpoints = calloc(1, sizeof(*r->endpoints));
    if (!r->endpoints)
        abort();
    memcpy(&r->endpoints[0].ss, &ss, sizeof(ss));
    r->n_endpoints = 1;
    proxy_set_routes(px, &t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair", NULL);
    if (proxy_serve_fd(px, sv[0]) < 0)
        die("proxy_serve_fd", NULL);

    struct client_side cs = {0};
    bool has_head = memmem(data, size, "HEAD", 4) != NULL;
    uv_pipe_init(&loop, &cs.pipe, 0);
    cs.pipe.data = &cs;
    cs.write.data = &cs;
    if (uv_pipe_open(&cs.pipe, sv[1]) < 0)
        die("uv_pipe_open", NULL);
    llhttp_init(&cs.parser, HTTP_RESPONSE, &resp_settings);
    cs.parse = !has_head;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)size);
    if (size == 0 || uv_write(&cs.write, (uv_stream_t *)&cs.pipe, &b, 1, client_on_written) < 0)
        cs.written = true;
    uv_read_start((uv_stream_t *)&cs.pipe, up_alloc, client_on_read);

    /* Half-close once everything is written and the proxy waits only on
     * us; then the proxy must end the connection. */
    int turns = 0;
    while (!cs.done) {
        if (++turns > MAX_TURNS)
            die("the connection did not end", NULL);
        if (cs.written && !cs.shut && !proxy_busy(px)) {
            cs.shut = true;
            if (uv_shutdown(&cs.shutdown, (uv_stream_t *)&cs.pipe, client_on_shutdown) < 0)
                uv_close((uv_handle_t *)&cs.pipe, client_closed);
        }
        uv_run(&loop, cs.shut || proxy_busy(px) ? UV_RUN_ONCE : UV_RUN_NOWAIT);
    }
    if (cs.bad_start || (cs.bad && !cs.tunnel))
        die("the client got something that is not HTTP", NULL);
    /* Let the proxy finish closing its side. */
    for (int i = 0; i < 8; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    if (proxy_busy(px))
        die("a client connection outlived its socket", NULL);
    return 0;
}
