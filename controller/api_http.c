/* The admin API's HTTP/1.1 transport; see api_http.h.
 *
 * A connection reads, parses with llhttp (strict: conflicting or duplicate
 * Content-Length, Content-Length with Transfer-Encoding, bad chunking are
 * errors) and hands one complete request at a time to the handler. Bytes of
 * pipelined requests that arrive meanwhile wait in `rest` (bounded; reading
 * stops past it) and are parsed once the answer is queued, so answers go out
 * in request order. A client that does not read its answers is not given
 * more: parsing waits while more than HTTP_STREAM_HIGH bytes are unsent.
 * Errors found while reading a request are answered with JSON and
 * `Connection: close` (its body may not have been read). */
#include "api_http.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <llhttp.h>

#include "stoke/list.h"
#include "stoke/log.h"
#include "stoke/uvbuf.h"

/* Pipelined bytes kept while a request is answered; reading stops past it. */
#define REST_MAX (64 * 1024)
/* After an error answer to a request whose body was not read: how long, and
 * how much, the rest is read and dropped before closing, so that closing
 * with unread bytes does not reset the connection (and lose the answer)
 * before the client has read it. */
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (4u << 20)

struct http_server {
    uv_loop_t *loop;
    uv_pipe_t ux;
    uv_tcp_t tcp;
    bool has_ux, has_tcp;
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* unlinked at close; "" */
    char *token;
    size_t token_len;
    llhttp_settings_t settings;
    http_handler handler;
    void *data;
    struct stoke_list conns;
    unsigned n_conns;
    int handles;
    bool closing;
};

enum hdr_kind { H_OTHER, H_AUTH, H_EXPECT };

struct http_conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_handle_t handle;
        uv_stream_t stream;
    } io;
    uv_timer_t timer;
    int handles;
    struct http_server *s;
    struct stoke_list node;
    bool is_tcp;
    llhttp_t parser;

    /* The request being read. */
    struct stoke_buf url, body, auth;
    char field[24]; /* the header name being read, lower case, if short */
    size_t field_len;
    enum hdr_kind hdr;
    char expect[24];
    size_t expect_len;
    unsigned n_auth;
    size_t head_bytes;
    int error; /* status a parser callback chose */
    const char *error_field;
    char error_msg[128];
    bool keep_alive;

    /* The request being answered. */
    struct http_req req;
    bool busy;       /* the handler has it */
    bool streaming;  /* a chunked answer is open */
    bool want_drain; /* the producer waits for on_drain */
    bool in_feed;    /* inside conn_feed(): it goes on by itself */
    bool wait_drain; /* parsing waits for unsent answers to go out */
    struct stoke_buf rest;
    bool reading;
    bool closed;      /* uv_close() called */
    bool close_after; /* the last answer is queued: close once it is written */
    bool broken;      /* a write failed: closing from the timer */
    bool linger;      /* close_after: drain input after the answer (see LINGER_MS) */
    bool shut;        /* uv_shutdown() called */
    size_t lingered;  /* bytes dropped while lingering */
    uv_shutdown_t shutdown;
    unsigned pending; /* writes not yet completed */
};

struct http_write {
    uv_write_t req;
    struct http_conn *c;
    char data[];
};

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
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

/* ---- lifetimes ----------------------------------------------------------- */

static void server_unref(struct http_server *s)
{
    if (--s->handles > 0 || !s->closing)
        return;
    if (s->unix_path[0])
        (void)unlink(s->unix_path);
    if (s->token) {
        explicit_bzero(s->token, s->token_len);
        free(s->token);
    }
    free(s);
}

static void on_listener_closed(uv_handle_t *h)
{
    server_unref(h->data);
}

/* Empties what was read of the last request; the token it carried is
 * wiped, not just dropped. */
static void forget_request(struct http_conn *c)
{
    stoke_buf_clear(&c->url);
    stoke_buf_clear(&c->body);
    if (c->auth.data)
        explicit_bzero(c->auth.data, c->auth.len);
    stoke_buf_clear(&c->auth);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    if (--c->handles > 0)
        return;
    struct http_server *s = c->s;
    forget_request(c);
    stoke_buf_done(&c->url);
    stoke_buf_done(&c->body);
    stoke_buf_done(&c->auth);
    stoke_buf_done(&c->rest);
    free(c);
    server_unref(s);
}

/* The one way a connection ends. A handler still answering gets on_abort
 * first; the handles close and the memory goes in their close callbacks. */
static void conn_close(struct http_conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    if (c->busy) {
        c->busy = false;
        if (c->req.on_abort)
            c->req.on_abort(&c->req, c->req.handler_data);
    }
    stoke_list_remove(&c->node);
    c->s->n_conns--;
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close(&c->io.handle, on_conn_handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

/* A failed write: closing now could run on_abort inside the handler's own
 * call, so the close comes from the timer, on the loop. */
static void conn_break(struct http_conn *c)
{
    if (c->broken || c->closed)
        return;
    c->broken = true;
    uv_timer_start(&c->timer, on_timeout, 0, 0);
}

/* ---- writing ----------------------------------------------------------- */

static void conn_resume(struct http_conn *c);
static void conn_finish(struct http_conn *c);

static size_t unsent(struct http_conn *c)
{
    return uv_stream_get_write_queue_size(&c->io.stream);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status; /* the linger timer or the client's FIN closes */
}

/* The last answer is out: close, or with `linger`, send FIN and drop what
 * the client still sends until it closes too or LINGER_MS pass. */
static void conn_finish(struct http_conn *c)
{
    if (!c->linger || c->shut) {
        conn_close(c);
        return;
    }
    c->shut = true;
    if (uv_shutdown(&c->shutdown, &c->io.stream, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, LINGER_MS, 0);
}

static void on_written(uv_write_t *wr, int status)
{
    struct http_write *w = stoke_container_of(wr, struct http_write, req);
    struct http_conn *c = w->c;
    free(w);
    c->pending--;
    if (c->closed || c->broken)
        return; /* closing (from the timer, if broken) */
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->close_after && c->pending == 0) {
        conn_finish(c);
        return;
    }
    if (c->streaming) {
        if (unsent(c) > 0)
            uv_timer_start(&c->timer, on_timeout, HTTP_STALL_TIMEOUT_MS, 0);
        else
            uv_timer_stop(&c->timer);
        if (c->want_drain && unsent(c) < HTTP_STREAM_HIGH / 2) {
            c->want_drain = false;
            if (c->req.on_drain)
                c->req.on_drain(&c->req, c->req.handler_data);
        }
    } else if (c->wait_drain && unsent(c) < HTTP_STREAM_HIGH / 2) {
        c->wait_drain = false;
        conn_resume(c);
    }
}

/* Queues the concatenation of `n` pieces as one write. */
static int conn_write(struct http_conn *c, const uv_buf_t *pieces, size_t n)
{
    size_t total = 0;
    if (c->closed || c->broken)
        return -EPIPE;
    for (size_t i = 0; i < n; i++)
        total += pieces[i].len;
    struct http_write *w = malloc(sizeof(*w) + total);
    if (!w) {
        conn_break(c);
        return -ENOMEM;
    }
    w->c = c;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (pieces[i].len)
            memcpy(w->data + off, pieces[i].base, pieces[i].len);
        off += pieces[i].len;
    }
    uv_buf_t b = uv_buf_init(w->data, (unsigned)total);
    int r = uv_write(&w->req, &c->io.stream, &b, 1, on_written);
    if (r < 0) {
        free(w);
        conn_break(c);
        return r;
    }
    c->pending++;
    return 0;
}

/* The answer to the current request is queued: on to the next one. */
static void req_done(struct http_conn *c)
{
    c->busy = false;
    c->streaming = false;
    c->want_drain = false;
    if (c->closed || c->broken)
        return;
    if (!c->keep_alive) {
        c->close_after = true;
        if (c->reading && !c->linger)
            uv_read_stop(&c->io.stream);
        c->reading = c->reading && c->linger;
        if (c->pending == 0) {
            conn_finish(c);
            return;
        }
        /* A client that does not read its answer is not waited for. */
        uv_timer_start(&c->timer, on_timeout, HTTP_STALL_TIMEOUT_MS, 0);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, HTTP_IDLE_TIMEOUT_MS, 0);
    if (unsent(c) > HTTP_STREAM_HIGH) {
        c->wait_drain = true; /* on_written resumes */
        return;
    }
    if (!c->in_feed)
        conn_resume(c);
}

static int head_printf(char *head, size_t size, int status, const char *ctype, const char *extra,
                       bool close_conn, const char *length_or_chunked)
{
    return snprintf(head, size,
                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sCache-Control: no-store\r\n"
                    "X-Content-Type-Options: nosniff\r\n%s%s\r\n",
                    status, reason(status), ctype, length_or_chunked, extra ? extra : "",
                    close_conn ? "Connection: close\r\n" : "");
}

static struct http_conn *conn_of(struct http_req *req)
{
    return stoke_container_of(req, struct http_conn, req);
}

/* An answer without a request object (errors found while parsing) or with. */
static void conn_reply(struct http_conn *c, int status, const char *extra, const char *ctype,
                       const char *body, size_t len, bool head_only)
{
    char head[1024], clen[64];
    (void)snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", len);
    int hl = head_printf(head, sizeof(head), status, ctype, extra, !c->keep_alive, clen);
    if (hl < 0 || (size_t)hl >= sizeof(head)) {
        conn_break(c);
        return;
    }
    uv_buf_t pieces[2] = {uv_buf_init(head, (unsigned)hl),
                          uv_buf_init((char *)body, head_only ? 0 : (unsigned)len)};
    (void)conn_write(c, pieces, 2);
}

void http_reply(struct http_req *req, int status, const char *extra_headers, const char *ctype,
                const char *body, size_t len)
{
    struct http_conn *c = conn_of(req);
    conn_reply(c, status, extra_headers, ctype, body, len, req->method == HTTP_HEAD);
    req_done(c);
}

/* Takes `obj`. NULL (OOM) or a formatting failure: 500 with a fixed body. */
static void conn_reply_json(struct http_conn *c, int status, const char *extra, json_object *obj,
                            bool head_only)
{
    static const char oom[] = "{\"error\":\"out of memory\",\"field\":null}\n";
    size_t len = 0;
    const char *text =
        obj ? json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN, &len) : NULL;
    if (!text) {
        conn_reply(c, 500, NULL, "application/json", oom, sizeof(oom) - 1, head_only);
    } else {
        /* The text belongs to obj; conn_reply copies it, and a newline. */
        char head[1024], clen[64];
        (void)snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", len + 1);
        int hl = head_printf(head, sizeof(head), status, "application/json", extra, !c->keep_alive,
                             clen);
        if (hl < 0 || (size_t)hl >= sizeof(head)) {
            conn_break(c);
        } else {
            uv_buf_t pieces[3] = {uv_buf_init(head, (unsigned)hl),
                                  uv_buf_init((char *)text, head_only ? 0 : (unsigned)len),
                                  uv_buf_init("\n", head_only ? 0 : 1)};
            (void)conn_write(c, pieces, 3);
        }
    }
    json_object_put(obj);
}

void http_reply_json(struct http_req *req, int status, const char *extra_headers, json_object *obj)
{
    struct http_conn *c = conn_of(req);
    conn_reply_json(c, status, extra_headers, obj, req->method == HTTP_HEAD);
    req_done(c);
}

/* {"error": msg, "field": field|null}; NULL on OOM. */
static json_object *error_object(const char *field, const char *msg)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object *m = json_object_new_string(msg);
    json_object *f = field ? json_object_new_string(field) : NULL;
    /* object_add steals the values; a NULL value is JSON null. */
    if (!m || (field && !f) || json_object_object_add(o, "error", m) < 0) {
        json_object_put(m);
        json_object_put(f);
        json_object_put(o);
        return NULL;
    }
    if (json_object_object_add(o, "field", f) < 0) {
        json_object_put(f);
        json_object_put(o);
        return NULL;
    }
    return o;
}

void http_reply_error(struct http_req *req, int status, const char *extra_headers,
                      const char *field, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    http_reply_json(req, status, extra_headers, error_object(field, msg));
}

void http_stream_begin(struct http_req *req, const char *ctype)
{
    struct http_conn *c = conn_of(req);
    char head[512];
    int hl = head_printf(head, sizeof(head), 200, ctype, NULL, !c->keep_alive,
                         "Transfer-Encoding: chunked\r\n");
    if (hl < 0 || (size_t)hl >= sizeof(head)) {
        conn_break(c);
        return;
    }
    c->streaming = true;
    uv_timer_stop(&c->timer);
    uv_buf_t piece = uv_buf_init(head, (unsigned)hl);
    (void)conn_write(c, &piece, 1);
}

bool http_stream_write(struct http_req *req, const char *data, size_t len)
{
    struct http_conn *c = conn_of(req);
    if (c->closed || c->broken)
        return false;
    if (len > 0) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        uv_buf_t pieces[3] = {uv_buf_init(size, (unsigned)n),
                              uv_buf_init((char *)data, (unsigned)len), uv_buf_init("\r\n", 2)};
        if (conn_write(c, pieces, 3) < 0)
            return false;
        if (!uv_is_active((uv_handle_t *)&c->timer))
            uv_timer_start(&c->timer, on_timeout, HTTP_STALL_TIMEOUT_MS, 0);
    }
    if (unsent(c) > HTTP_STREAM_HIGH) {
        c->want_drain = true;
        return false;
    }
    return true;
}

void http_stream_end(struct http_req *req)
{
    struct http_conn *c = conn_of(req);
    uv_buf_t piece = uv_buf_init("0\r\n\r\n", 5);
    if (c->streaming)
        (void)conn_write(c, &piece, 1);
    req_done(c);
}

/* ---- reading ----------------------------------------------------------- */

/* An error found while reading a request: answered, then the connection
 * closes (the rest of the request may not have been read). */
static void conn_fail(struct http_conn *c, int status, const char *field, const char *msg)
{
    const char *extra = NULL;
    if (status == 401)
        extra = "WWW-Authenticate: Bearer realm=\"stoke\"\r\n";
    c->keep_alive = false;
    c->linger = true;
    conn_reply_json(c, status, extra, error_object(field, msg), false);
    c->busy = true; /* req_done() clears it; no handler has it */
    req_done(c);
}

static int parse_error(struct http_conn *c, int status, const char *field, const char *msg)
{
    c->error = status;
    c->error_field = field;
    (void)snprintf(c->error_msg, sizeof(c->error_msg), "%s", msg);
    return -1;
}

static int count_head(struct http_conn *c, size_t len)
{
    c->head_bytes += len;
    if (c->head_bytes > HTTP_MAX_HEAD)
        return parse_error(c, 431, NULL, "request head over 16 KiB");
    return 0;
}

static int on_begin(llhttp_t *p)
{
    struct http_conn *c = p->data;
    forget_request(c);
    c->field_len = 0;
    c->expect_len = 0;
    c->hdr = H_OTHER;
    c->n_auth = 0;
    c->head_bytes = 0;
    c->error = 0;
    uv_timer_start(&c->timer, on_timeout, HTTP_HEAD_TIMEOUT_MS, 0);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (count_head(c, len) < 0)
        return -1;
    return stoke_buf_append(&c->url, at, len) < 0 ? parse_error(c, 431, NULL, "URL too long") : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (count_head(c, len) < 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (c->field_len < sizeof(c->field))
            c->field[c->field_len] = (char)(at[i] | 0x20); /* ASCII lower case; tokens only */
        c->field_len++;
    }
    return 0;
}

static bool field_is(const struct http_conn *c, const char *name)
{
    size_t n = strlen(name);
    return c->field_len == n && memcmp(c->field, name, n) == 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    c->hdr = H_OTHER;
    if (field_is(c, "authorization")) {
        c->hdr = H_AUTH;
        c->n_auth++;
    } else if (field_is(c, "expect")) {
        c->hdr = H_EXPECT;
        c->expect_len = 0;
    }
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (count_head(c, len) < 0)
        return -1;
    if (c->hdr == H_AUTH && stoke_buf_append(&c->auth, at, len) < 0)
        return parse_error(c, 431, NULL, "Authorization header too long");
    if (c->hdr == H_EXPECT) {
        for (size_t i = 0; i < len; i++) {
            if (c->expect_len < sizeof(c->expect))
                c->expect[c->expect_len] = at[i];
            c->expect_len++;
        }
    }
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    c->field_len = 0;
    c->hdr = H_OTHER;
    return 0;
}

/* Constant time in the token's content: every byte of the expected token
 * is compared whatever the given one holds. */
static bool token_ok(const struct http_server *s, const char *given, size_t len)
{
    unsigned char diff = (unsigned char)(len != s->token_len);
    for (size_t i = 0; i < s->token_len; i++)
        diff |= (unsigned char)s->token[i] ^ (unsigned char)(i < len ? given[i] : 0);
    return diff == 0;
}

/* "Bearer <token>": scheme case-insensitive, one or more spaces. */
static const char *check_auth(struct http_conn *c)
{
    const char *v = c->auth.data ? c->auth.data : "";
    size_t len = c->auth.len;
    if (c->n_auth == 0)
        return "no Authorization header: a bearer token is required";
    if (c->n_auth > 1)
        return "more than one Authorization header";
    if (len < 7 || strncasecmp(v, "bearer ", 7) != 0)
        return "Authorization: only the Bearer scheme is accepted";
    size_t i = 7;
    while (i < len && v[i] == ' ')
        i++;
    while (len > i && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (!token_ok(c->s, v + i, len - i))
        return "wrong bearer token";
    return NULL;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    if (c->is_tcp) {
        const char *why = check_auth(c);
        if (why)
            return parse_error(c, 401, "Authorization", why);
    }
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    if (llhttp_get_method(p) == HTTP_PUT && !chunked && !has_length)
        return parse_error(c, 411, "Content-Length",
                           "a PUT needs a Content-Length or a chunked body");
    if (has_length && p->content_length > HTTP_MAX_BODY)
        return parse_error(c, 413, NULL, "body over 1 MiB");
    if ((chunked || (has_length && p->content_length > 0)) && c->expect_len == 12 &&
        strncasecmp(c->expect, "100-continue", 12) == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t piece = uv_buf_init((char *)cont, sizeof(cont) - 1);
        (void)conn_write(c, &piece, 1);
    }
    uv_timer_start(&c->timer, on_timeout, HTTP_BODY_TIMEOUT_MS, 0);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    int r = stoke_buf_append(&c->body, at, len);
    if (r == -ENOBUFS)
        return parse_error(c, 413, NULL, "body over 1 MiB");
    return r < 0 ? parse_error(c, 500, NULL, "out of memory") : 0;
}

static int on_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    c->keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

/* Hands the request just parsed to the handler. */
static void conn_dispatch(struct http_conn *c)
{
    char *url = c->url.data ? c->url.data : "";
    char *q = strchr(url, '?');
    if (q)
        *q++ = '\0';
    memset(&c->req, 0, sizeof(c->req));
    c->req.method = llhttp_get_method(&c->parser);
    c->req.path = url;
    c->req.query = q ? q : "";
    c->req.body = c->body.data ? c->body.data : "";
    c->req.body_len = c->body.len;
    c->req.is_tcp = c->is_tcp;
    c->busy = true;
    uv_timer_stop(&c->timer);
    c->s->handler(&c->req, c->s->data);
}

static bool can_parse(const struct http_conn *c)
{
    return !c->closed && !c->close_after && !c->broken && !c->busy && !c->wait_drain;
}

/* Parses `len` bytes, handing each complete request on in turn; what cannot
 * be parsed yet (a request is being answered) goes to `rest`. */
static void conn_feed(struct http_conn *c, const char *data, size_t len)
{
    c->in_feed = true;
    while (len > 0 && !c->closed && !c->close_after && !c->broken) {
        if (!can_parse(c)) {
            /* Reading stops at REST_MAX, so one more read always fits. */
            if (stoke_buf_append(&c->rest, data, len) < 0) {
                conn_break(c);
            } else if (c->rest.len >= REST_MAX && c->reading) {
                uv_read_stop(&c->io.stream);
                c->reading = false;
            }
            break;
        }
        llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
        if (err == HPE_OK)
            break;
        if (err != HPE_PAUSED) {
            if (c->error) {
                conn_fail(c, c->error, c->error_field, c->error_msg);
            } else {
                char msg[160];
                (void)snprintf(msg, sizeof(msg), "malformed request: %s",
                               llhttp_get_error_reason(&c->parser));
                conn_fail(c, 400, NULL, msg);
            }
            break;
        }
        size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        llhttp_resume(&c->parser);
        data += used;
        len -= used;
        conn_dispatch(c);
    }
    c->in_feed = false;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *c = st->data;
    if (nread < 0) {
        /* The client went (or sent FIN: nothing more to answer it with). */
        conn_close(c);
    } else if (nread > 0 && c->close_after && c->linger) {
        c->lingered += (size_t)nread;
        if (c->lingered > LINGER_MAX_BYTES)
            conn_close(c);
    } else if (nread > 0 && !c->closed) {
        conn_feed(c, buf->base, (size_t)nread);
    }
    free(buf->base);
}

/* The answer went out: the pipelined bytes kept meanwhile are parsed, and
 * the client read again. */
static void conn_resume(struct http_conn *c)
{
    if (c->rest.len > 0) {
        size_t len;
        char *data = stoke_buf_steal(&c->rest, &len);
        conn_feed(c, data, len);
        free(data);
    }
    if (!c->closed && !c->close_after && !c->broken && !c->reading && c->rest.len < REST_MAX) {
        if (uv_read_start(&c->io.stream, stoke_uv_alloc, on_read) < 0)
            conn_break(c);
        else
            c->reading = true;
    }
}

static void on_accept(uv_stream_t *server, int status)
{
    struct http_server *s = server->data;
    if (status < 0 || s->closing)
        return;
    struct http_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->s = s;
    c->is_tcp = server == (uv_stream_t *)&s->tcp;
    if (c->is_tcp)
        uv_tcp_init(s->loop, &c->io.tcp);
    else
        uv_pipe_init(s->loop, &c->io.pipe, 0);
    uv_timer_init(s->loop, &c->timer);
    c->io.handle.data = c;
    c->timer.data = c;
    c->handles = 2;
    s->handles++;
    stoke_list_insert_tail(&s->conns, &c->node);
    s->n_conns++;
    stoke_buf_init(&c->url, HTTP_MAX_HEAD);
    stoke_buf_init(&c->body, HTTP_MAX_BODY);
    stoke_buf_init(&c->auth, 4096);
    stoke_buf_init(&c->rest, REST_MAX + (64 << 10));
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->keep_alive = true;
    if (uv_accept(server, &c->io.stream) < 0 || s->n_conns > HTTP_MAX_CONNS ||
        uv_read_start(&c->io.stream, stoke_uv_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    c->reading = true;
    uv_timer_start(&c->timer, on_timeout, HTTP_IDLE_TIMEOUT_MS, 0);
}

/* ---- listeners ----------------------------------------------------------- */

/* mkdir -p of the directory holding `path`. */
static int make_parent(const char *path)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
        return -ENAMETOOLONG;
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Startup only: a connect to a unix socket does not wait (it is accepted
 * into the backlog or refused at once). */
static bool socket_answers(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    (void)close(fd);
    return ok;
}

static int listen_unix(struct http_server *s, const char *path)
{
    int r = make_parent(path);
    if (r < 0)
        return r;
    uv_pipe_init(s->loop, &s->ux, 0);
    s->ux.data = s;
    s->has_ux = true;
    s->handles++;
    /* A socket file left by a controller that died is in the way; one that
     * answers is another controller's, and any other kind of file is not
     * ours to remove. */
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        if (socket_answers(path))
            return -EADDRINUSE;
        (void)unlink(path);
    }
    r = uv_pipe_bind(&s->ux, path);
    if (r < 0)
        return r;
    snprintf(s->unix_path, sizeof(s->unix_path), "%s", path);
    if (chmod(path, 0660) < 0)
        return -errno;
    return uv_listen((uv_stream_t *)&s->ux, 128, on_accept);
}

static int listen_tcp(struct http_server *s, const struct stoke_addr *addr)
{
    uv_tcp_init(s->loop, &s->tcp);
    s->tcp.data = s;
    s->has_tcp = true;
    s->handles++;
    int r = uv_tcp_bind(&s->tcp, (const struct sockaddr *)&addr->ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->tcp, 128, on_accept);
    return r;
}

int http_server_new(uv_loop_t *loop, const struct http_config *cfg, struct http_server **ret,
                    const char **ret_what)
{
    int r;
    if (cfg->tcp && (!cfg->token || !*cfg->token))
        return -EINVAL;
    struct http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->handler = cfg->handler;
    s->data = cfg->data;
    stoke_list_init(&s->conns);
    s->handles = 1; /* ours, until the end of this call or the close */
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_field_complete = on_header_field_complete;
    s->settings.on_header_value = on_header_value;
    s->settings.on_header_value_complete = on_header_value_complete;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_complete;
    if (cfg->token) {
        s->token = strdup(cfg->token);
        if (!s->token) {
            free(s);
            return -ENOMEM;
        }
        s->token_len = strlen(s->token);
    }
    if (cfg->unix_path) {
        r = listen_unix(s, cfg->unix_path);
        if (r < 0) {
            *ret_what = cfg->unix_path;
            goto fail;
        }
    }
    if (cfg->tcp) {
        r = listen_tcp(s, cfg->tcp);
        if (r < 0) {
            *ret_what = "the TCP address";
            goto fail;
        }
    }
    s->handles--;
    *ret = s;
    return 0;
fail:
    /* unix_path is set once bound by us: then the file is ours to remove. */
    http_server_close(s);
    server_unref(s);
    return r;
}

void http_server_close(struct http_server *s)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    while (!stoke_list_empty(&s->conns))
        conn_close(stoke_container_of(stoke_list_first(&s->conns), struct http_conn, node));
    if (s->has_ux)
        uv_close((uv_handle_t *)&s->ux, on_listener_closed);
    if (s->has_tcp)
        uv_close((uv_handle_t *)&s->tcp, on_listener_closed);
}
