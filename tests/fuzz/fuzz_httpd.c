/* libFuzzer target over the HTTP/1.1 server (common/httpd.c) that serves the
 * controller's admin API and the ops ports. The input is what a client
 * sends on one connection: its first byte picks whether the connection is
 * marked TCP (then a bearer token is required) and in how many writes the
 * rest goes; the real server reads it from one end of a socketpair
 * (stoke_httpd_serve_fd()) with small limits, and a handler answering as
 * the admin API does: JSON at once, a chunked stream with backpressure, an
 * answer on the next loop turn, a 404, a close after the answer, and a
 * check refusing DELETE with 405.
 *
 * Beyond ASan and UBSan, each input checks that:
 * - what the client gets parses as a sequence of HTTP/1.1 responses
 *   (llhttp, no lenient flags; an answer to HEAD has no body), possibly cut
 *   short by the close, each with a status this server may send;
 * - over a connection that needs the token, no more requests reach the
 *   handler, and no more 2xx come back, than the token appears in the input
 *   (each authenticated request carries it once);
 * - the server ends the connection within a bounded number of loop turns
 *   after the client's half-close, and nothing is left open afterwards;
 * - the server and the loop free everything: uv_loop_close() == 0 after
 *   each input (LeakSanitizer then sees any lost memory).
 * Timeouts are an hour: the loop only ever runs UV_RUN_NOWAIT, so no timer
 * but the handler's 0 ms one fires within a run. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>
#include <uv.h>

#include "stoke/httpd.h"

#define TOKEN "fuzz-token-7f3a9c"
#define MAX_TURNS 2000  /* after the half-close */
#define SETTLE_TURNS 16 /* after each write */
#define MAX_ANSWERS 4096
#define STREAM_CHUNKS 12

static const struct stoke_httpd_limits limits = {
    .max_head = 1024,
    .max_body = 4096,
    .max_conns = 4,
    .stream_high = 512,
    .first_timeout_ms = 3600000,
    .head_timeout_ms = 3600000,
    .body_timeout_ms = 3600000,
    .idle_timeout_ms = 3600000,
    .write_timeout_ms = 3600000,
};

struct run {
    uv_loop_t loop;
    struct stoke_httpd *s;
    uv_timer_t later; /* answers /later on the next turn */
    struct stoke_httpd_req *pending;
    struct stoke_httpd_req *streaming;
    int chunks; /* written to `streaming` */
    bool is_tcp;
    unsigned handled; /* requests the handler got */
    /* Whether each answer queued, in order, is to a HEAD (no body). */
    bool head[MAX_ANSWERS];
    unsigned n_answers;
};

/* libFuzzer runs inputs one at a time: the run in progress. */
static struct run *cur;

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_httpd: %s: %s\n", what, detail ? detail : "");
    abort();
}

static void answering(struct run *r, bool head)
{
    if (r->n_answers >= MAX_ANSWERS)
        die("too many answers", NULL);
    r->head[r->n_answers++] = head;
}

/* ---- the handler ------------------------------------------------------------ */

static void on_abort(struct stoke_httpd_req *req, void *data)
{
    struct run *r = data;
    if (req == r->pending) {
        uv_timer_stop(&r->later);
        r->pending = NULL;
    }
    if (req == r->streaming)
        r->streaming = NULL;
}

/* Writes chunks until the client lags or all are out. */
static void stream_more(struct stoke_httpd_req *req, struct run *r)
{
    static const char line[] = "{\"event\":\"tick\",\"pad\":\"................................"
                               "................................\"}\n";
    while (r->chunks < STREAM_CHUNKS) {
        r->chunks++;
        if (!stoke_httpd_stream_write(req, line, sizeof(line) - 1))
            return; /* on_drain goes on */
    }
    r->streaming = NULL;
    stoke_httpd_stream_end(req);
}

static void on_drain(struct stoke_httpd_req *req, void *data)
{
    stream_more(req, data);
}

static void on_later(uv_timer_t *t)
{
    struct run *r = t->data;
    struct stoke_httpd_req *req = r->pending;
    r->pending = NULL;
    answering(r, req->method == HTTP_HEAD);
    stoke_httpd_reply_json(req, 202, NULL, json_object_new_string("later"));
}

static void handle(struct stoke_httpd_req *req, void *data)
{
    struct run *r = data;
    r->handled++;
    if (req->is_tcp != r->is_tcp)
        die("is_tcp differs from the connection's", NULL);
    req->on_abort = on_abort;
    req->handler_data = r;
    if (strcmp(req->path, "/v1/watch") == 0) {
        answering(r, req->method == HTTP_HEAD);
        r->streaming = req;
        r->chunks = 0;
        req->on_drain = on_drain;
        stoke_httpd_stream_begin(req, "application/x-ndjson");
        stream_more(req, r);
    } else if (strcmp(req->path, "/v1/later") == 0) {
        r->pending = req;
        uv_timer_start(&r->later, on_later, 0, 0);
    } else if (strcmp(req->path, "/v1/close") == 0) {
        answering(r, req->method == HTTP_HEAD);
        stoke_httpd_close_after(req);
        stoke_httpd_reply_error(req, 503, NULL, NULL, "going away");
    } else if (strncmp(req->path, "/v1/", 4) == 0) {
        json_object *o = json_object_new_object();
        if (o) {
            json_object_object_add(o, "path", json_object_new_string(req->path));
            json_object_object_add(o, "query", json_object_new_string(req->query));
            json_object_object_add(o, "body_len", json_object_new_int64((int64_t)req->body_len));
        }
        answering(r, req->method == HTTP_HEAD);
        stoke_httpd_reply_json(req, req->method == HTTP_PUT ? 201 : 200, NULL, o);
    } else {
        answering(r, req->method == HTTP_HEAD);
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such path: %s", req->path);
    }
}

static int check(const struct stoke_httpd_req *req, bool has_body, void *data)
{
    (void)has_body;
    (void)data;
    return req->method == HTTP_DELETE ? 405 : 0;
}

static void on_error(struct stoke_httpd_req *req, int status, const char *extra, const char *field,
                     const char *msg, void *data)
{
    struct run *r = data;
    if (req->method != -1)
        die("an error answer with a method", NULL);
    answering(r, false);
    stoke_httpd_reply_error(req, status, status == 405 ? "Allow: GET, PUT\r\n" : extra, field, "%s",
                            msg);
}

/* ---- the client ------------------------------------------------------------- */

struct client {
    uv_pipe_t pipe;
    uv_write_t write;
    uv_shutdown_t shutdown;
    llhttp_t parser;
    bool writing, done, bad;
    unsigned answers; /* final (non-1xx) answers parsed */
    unsigned ok;      /* of which 2xx */
    const char *why;
};

static bool status_allowed(int status, bool is_tcp)
{
    switch (status) {
    case 100:
    case 200:
    case 201:
    case 202:
    case 400:
    case 404:
    case 405:
    case 411:
    case 413:
    case 431:
    case 500:
    case 503:
        return true;
    case 401:
        return is_tcp;
    default:
        return false;
    }
}

static int client_on_headers_complete(llhttp_t *p)
{
    struct client *cl = p->data;
    int status = llhttp_get_status_code(p);
    if (!status_allowed(status, cur->is_tcp)) {
        cl->why = "a status the server may not send";
        return -1;
    }
    if (status < 200)
        return 0;
    if (cl->answers >= cur->n_answers) {
        cl->why = "more answers than were given";
        return -1;
    }
    bool head = cur->head[cl->answers++];
    if (status < 300)
        cl->ok++;
    return head ? 1 : 0; /* 1: no body */
}

static llhttp_settings_t resp_settings;

static void client_closed(uv_handle_t *h)
{
    struct client *cl = h->data;
    cl->done = true;
}

static void client_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(size);
    buf->len = buf->base ? size : 0;
}

static void client_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct client *cl = st->data;
    if (nread < 0) {
        free(buf->base);
        if (!uv_is_closing((uv_handle_t *)&cl->pipe))
            uv_close((uv_handle_t *)&cl->pipe, client_closed);
        return;
    }
    if (nread > 0 && !cl->bad && llhttp_execute(&cl->parser, buf->base, (size_t)nread) != HPE_OK) {
        cl->bad = true;
        if (!cl->why)
            cl->why = llhttp_get_error_reason(&cl->parser);
    }
    free(buf->base);
}

static void client_on_written(uv_write_t *w, int status)
{
    struct client *cl = w->data;
    (void)status;
    cl->writing = false;
}

static void client_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

/* ---- one input -------------------------------------------------------------- */

static size_t count_token(const uint8_t *data, size_t size)
{
    size_t n = 0, tl = sizeof(TOKEN) - 1;
    const uint8_t *end = data + size;
    const uint8_t *p = data;
    while ((size_t)(end - p) >= tl) {
        const uint8_t *hit = memmem(p, (size_t)(end - p), TOKEN, tl);
        if (!hit)
            break;
        n++;
        p = hit + tl;
    }
    return n;
}

static void settle(struct run *r, struct client *cl)
{
    for (int i = 0; i < SETTLE_TURNS || cl->writing; i++) {
        if (i > MAX_TURNS)
            die("a write did not complete", NULL);
        uv_run(&r->loop, UV_RUN_NOWAIT);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static struct run r;
    memset(&r, 0, sizeof(r));
    cur = &r;
    llhttp_settings_init(&resp_settings);
    resp_settings.on_headers_complete = client_on_headers_complete;
    if (uv_loop_init(&r.loop) < 0)
        die("uv_loop_init", NULL);
    uv_timer_init(&r.loop, &r.later);
    r.later.data = &r;
    r.is_tcp = data[0] & 1;
    unsigned pieces = 1 + ((data[0] >> 1) & 7);
    data++;
    size--;

    struct stoke_httpd_config cfg = {
        .token = TOKEN,
        .headers = "Cache-Control: no-store\r\n",
        .limits = limits,
        .check = check,
        .handler = handle,
        .on_error = on_error,
        .data = &r,
    };
    if (stoke_httpd_new(&r.loop, &cfg, &r.s, NULL) < 0)
        die("stoke_httpd_new", NULL);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair", NULL);
    if (stoke_httpd_serve_fd(r.s, sv[0], r.is_tcp) < 0)
        die("stoke_httpd_serve_fd", NULL);

    struct client cl = {0};
    uv_pipe_init(&r.loop, &cl.pipe, 0);
    cl.pipe.data = &cl;
    cl.write.data = &cl;
    if (uv_pipe_open(&cl.pipe, sv[1]) < 0)
        die("uv_pipe_open", NULL);
    llhttp_init(&cl.parser, HTTP_RESPONSE, &resp_settings);
    cl.parser.data = &cl;
    uv_read_start((uv_stream_t *)&cl.pipe, client_alloc, client_on_read);

    /* The input in `pieces` writes, the loop run between them, so the
     * server sees requests cut at arbitrary points. */
    for (unsigned i = 0; i < pieces && !cl.done; i++) {
        size_t from = size * i / pieces, to = size * (i + 1) / pieces;
        if (to == from)
            continue;
        uv_buf_t b = uv_buf_init((char *)data + from, (unsigned)(to - from));
        cl.writing = true;
        if (uv_write(&cl.write, (uv_stream_t *)&cl.pipe, &b, 1, client_on_written) < 0)
            cl.writing = false;
        settle(&r, &cl);
    }

    /* Half-close: the server must end the connection. */
    if (!cl.done && !uv_is_closing((uv_handle_t *)&cl.pipe) &&
        uv_shutdown(&cl.shutdown, (uv_stream_t *)&cl.pipe, client_on_shutdown) < 0)
        uv_close((uv_handle_t *)&cl.pipe, client_closed);
    for (int turns = 0; !cl.done; turns++) {
        if (turns > MAX_TURNS)
            die("the server did not end the connection", NULL);
        uv_run(&r.loop, UV_RUN_NOWAIT);
    }
    if (cl.bad)
        die("the client got something that is not a sequence of answers", cl.why);
    if (r.is_tcp) {
        size_t tokens = count_token(data, size);
        if (r.handled > tokens || cl.ok > tokens)
            die("a request without the token was answered", NULL);
    }

    /* Nothing of the connection may be left: only the idle timer. */
    for (int i = 0; i < 8; i++)
        uv_run(&r.loop, UV_RUN_NOWAIT);
    if (r.pending || r.streaming)
        die("a request outlived its connection without on_abort", NULL);
    uv_close((uv_handle_t *)&r.later, NULL);
    uv_run(&r.loop, UV_RUN_NOWAIT);
    if (uv_loop_alive(&r.loop))
        die("a connection outlived the client's socket", NULL);
    stoke_httpd_close(r.s);
    uv_run(&r.loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&r.loop) != 0)
        die("uv_loop_close: handles left open", NULL);
    cur = NULL;
    return 0;
}
