/* A small HTTP/1.1 server; see stoke/httpd.h.
 *
 * A connection reads, parses with llhttp (strict: conflicting or duplicate
 * Content-Length, Content-Length with Transfer-Encoding, bad chunking are
 * errors) and hands one complete request at a time to the handler. Bytes of
 * pipelined requests that arrive meanwhile wait in `rest` (bounded; reading
 * stops past it) and are parsed once the answer is queued, so answers go out
 * in request order. A client that does not read its answers is not given
 * more: parsing waits while more than limits.stream_high bytes are unsent.
 * Errors found while reading a request are answered by cfg->on_error with
 * `Connection: close` (its body may not have been read). */
#include "stoke/httpd.h"

#include <assert.h>
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
#include "stoke/uvbuf.h"

/* Pipelined bytes kept while a request is answered; reading stops past it. */
#define REST_MAX (64 * 1024)
/* After an error answer to a request whose body was not read: how long, and
 * how much, the rest is read and dropped before closing, so that closing
 * with unread bytes does not reset the connection (and lose the answer)
 * before the client has read it. */
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (4u << 20)

/* TCP connections that have not yet sent an accepted request (authenticated,
 * with a token) are "unproven" (the unix socket's mode vouches for its
 * clients): at most a quarter of max_conns of them (at
 * least 1), the oldest closed when a new one would pass that, and each has
 * at most UNPROVEN_TIMEOUT_MS to send its head. So clients holding
 * connections open without a token can neither fill the server nor keep a
 * new client out for long; the rest of max_conns is for proven ones. */
#define UNPROVEN_SHARE 4
#define UNPROVEN_TIMEOUT_MS 5000

struct stoke_httpd {
    uv_loop_t *loop;
    uv_pipe_t ux;
    uv_tcp_t tcp;
    bool has_ux, has_tcp;
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* unlinked at close; "" */
    char *token;                                                 /* NULL: none */
    char *headers;
    struct stoke_httpd_config cfg; /* its strings are not kept */
    llhttp_settings_t settings;
    struct stoke_list conns;
    unsigned n_conns;
    struct stoke_list unproven; /* oldest first */
    unsigned n_unproven;
    int handles;
    bool closing;
};

enum hdr_kind { H_OTHER, H_AUTH, H_EXPECT };

struct conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_handle_t handle;
        uv_stream_t stream;
    } io;
    uv_timer_t timer;
    int handles;
    struct stoke_httpd *s;
    struct stoke_list node;
    struct stoke_list unode; /* s->unproven until a request is accepted */
    bool proven;
    bool is_tcp;
    bool needs_auth; /* over TCP with a token */
    llhttp_t parser;

    /* The request being read. */
    struct stoke_buf url, body, auth;
    struct stoke_buf hdrs; /* cfg.keep_headers: "Name: value\r\n" lines */
    char field[24];        /* the header name being read, lower case, if short */
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
    struct stoke_httpd_req req;
    bool busy;       /* the handler has it */
    bool streaming;  /* a chunked answer is open */
    bool head_only;  /* ... to a HEAD: its chunks are not sent */
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

struct write_req {
    uv_write_t req;
    struct conn *c;
    char data[];
};

const char *stoke_httpd_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
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

static void server_unref(struct stoke_httpd *s)
{
    if (--s->handles > 0 || !s->closing)
        return;
    if (s->unix_path[0])
        (void)unlink(s->unix_path);
    if (s->token) {
        explicit_bzero(s->token, strlen(s->token));
        free(s->token);
    }
    free(s->headers);
    free(s);
}

static void on_listener_closed(uv_handle_t *h)
{
    server_unref(h->data);
}

/* Empties what was read of the last request; the token it carried is
 * wiped, not just dropped. */
static void forget_request(struct conn *c)
{
    stoke_buf_clear(&c->url);
    stoke_buf_clear(&c->body);
    if (c->auth.data)
        explicit_bzero(c->auth.data, c->auth.len);
    stoke_buf_clear(&c->auth);
    stoke_buf_clear(&c->hdrs);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles > 0)
        return;
    struct stoke_httpd *s = c->s;
    forget_request(c);
    stoke_buf_done(&c->url);
    stoke_buf_done(&c->body);
    stoke_buf_done(&c->auth);
    stoke_buf_done(&c->hdrs);
    stoke_buf_done(&c->rest);
    free(c);
    server_unref(s);
}

/* The one way a connection ends. A handler still answering gets on_abort
 * first; the handles close and the memory goes in their close callbacks. */
static void conn_close(struct conn *c)
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
    if (!c->proven) {
        stoke_list_remove(&c->unode);
        c->s->n_unproven--;
    }
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close(&c->io.handle, on_conn_handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

/* A head timeout: shorter for a connection not yet proven. */
static uint64_t head_time(const struct conn *c, uint64_t ms)
{
    return c->proven || ms < UNPROVEN_TIMEOUT_MS ? ms : UNPROVEN_TIMEOUT_MS;
}

/* A request of c's passed the token (or needed none): c has the full
 * budget from now on. */
static void conn_prove(struct conn *c)
{
    if (c->proven)
        return;
    c->proven = true;
    stoke_list_remove(&c->unode);
    c->s->n_unproven--;
}

/* A failed write: closing now could run on_abort inside the handler's own
 * call, so the close comes from the timer, on the loop. */
static void conn_break(struct conn *c)
{
    if (c->broken || c->closed)
        return;
    c->broken = true;
    uv_timer_start(&c->timer, on_timeout, 0, 0);
}

/* ---- writing ----------------------------------------------------------- */

static void conn_resume(struct conn *c);
static void conn_finish(struct conn *c);

static size_t unsent(struct conn *c)
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
static void conn_finish(struct conn *c)
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
    struct write_req *w = stoke_container_of(wr, struct write_req, req);
    struct conn *c = w->c;
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
            uv_timer_start(&c->timer, on_timeout, c->s->cfg.limits.write_timeout_ms, 0);
        else
            uv_timer_stop(&c->timer);
        if (c->want_drain && unsent(c) < c->s->cfg.limits.stream_high / 2) {
            c->want_drain = false;
            if (c->req.on_drain)
                c->req.on_drain(&c->req, c->req.handler_data);
        }
    } else if (c->wait_drain && unsent(c) < c->s->cfg.limits.stream_high / 2) {
        c->wait_drain = false;
        conn_resume(c);
    }
}

/* Queues the concatenation of `n` pieces as one write. */
static int conn_write(struct conn *c, const uv_buf_t *pieces, size_t n)
{
    size_t total = 0;
    if (c->closed || c->broken)
        return -EPIPE;
    for (size_t i = 0; i < n; i++)
        total += pieces[i].len;
    struct write_req *w = malloc(sizeof(*w) + total);
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
static void req_done(struct conn *c)
{
    c->busy = false;
    c->streaming = false;
    c->head_only = false;
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
        uv_timer_start(&c->timer, on_timeout, c->s->cfg.limits.write_timeout_ms, 0);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, c->s->cfg.limits.idle_timeout_ms, 0);
    if (unsent(c) > c->s->cfg.limits.stream_high) {
        c->wait_drain = true; /* on_written resumes */
        return;
    }
    if (!c->in_feed)
        conn_resume(c);
}

static int head_printf(const struct conn *c, char *head, size_t size, int status, const char *ctype,
                       const char *extra, const char *length_or_chunked)
{
    return snprintf(head, size, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s%s%s\r\n", status,
                    stoke_httpd_reason(status), ctype, length_or_chunked, c->s->headers,
                    extra ? extra : "", c->keep_alive ? "" : "Connection: close\r\n");
}

static struct conn *conn_of(struct stoke_httpd_req *req)
{
    return stoke_container_of(req, struct conn, req);
}

void stoke_httpd_close_after(struct stoke_httpd_req *req)
{
    conn_of(req)->keep_alive = false;
}

/* Queues the answer to `req`, its body the concatenation of `n` pieces
 * (none for a HEAD), and goes on to the next request. */
static void reply(struct stoke_httpd_req *req, int status, const char *extra, const char *ctype,
                  const uv_buf_t *body, size_t n)
{
    struct conn *c = conn_of(req);
    char head[1024], clen[64];
    uv_buf_t pieces[3];
    size_t len = 0;
    assert(n < 3);
    for (size_t i = 0; i < n; i++)
        len += body[i].len;
    (void)snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", len);
    int hl = head_printf(c, head, sizeof(head), status, ctype, extra, clen);
    if (hl < 0 || (size_t)hl >= sizeof(head)) {
        conn_break(c);
    } else {
        pieces[0] = uv_buf_init(head, (unsigned)hl);
        if (req->method == HTTP_HEAD)
            n = 0;
        for (size_t i = 0; i < n; i++)
            pieces[1 + i] = body[i];
        (void)conn_write(c, pieces, 1 + n);
    }
    req_done(c);
}

void stoke_httpd_reply(struct stoke_httpd_req *req, int status, const char *extra_headers,
                       const char *ctype, const char *body, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)body, (unsigned)len);
    reply(req, status, extra_headers, ctype, &b, 1);
}

void stoke_httpd_reply_json(struct stoke_httpd_req *req, int status, const char *extra_headers,
                            json_object *obj)
{
    static const char oom[] = "{\"error\":\"out of memory\",\"field\":null}\n";
    size_t len = 0;
    const char *text =
        obj ? json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN, &len) : NULL;
    if (!text) {
        stoke_httpd_reply(req, 500, NULL, "application/json", oom, sizeof(oom) - 1);
    } else {
        /* The text belongs to obj; reply() copies it, and a newline. */
        uv_buf_t body[2] = {uv_buf_init((char *)text, (unsigned)len), uv_buf_init("\n", 1)};
        reply(req, status, extra_headers, "application/json", body, 2);
    }
    json_object_put(obj);
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

void stoke_httpd_reply_error(struct stoke_httpd_req *req, int status, const char *extra_headers,
                             const char *field, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    stoke_httpd_reply_json(req, status, extra_headers, error_object(field, msg));
}

void stoke_httpd_stream_begin(struct stoke_httpd_req *req, const char *ctype)
{
    struct conn *c = conn_of(req);
    char head[512];
    int hl = head_printf(c, head, sizeof(head), 200, ctype, NULL, "Transfer-Encoding: chunked\r\n");
    if (hl < 0 || (size_t)hl >= sizeof(head)) {
        conn_break(c);
        return;
    }
    c->streaming = true;
    /* A HEAD gets the head alone, as from stoke_httpd_reply(): chunks after
     * it would be read as the start of the next answer. */
    c->head_only = req->method == HTTP_HEAD;
    uv_timer_stop(&c->timer);
    uv_buf_t piece = uv_buf_init(head, (unsigned)hl);
    (void)conn_write(c, &piece, 1);
}

bool stoke_httpd_stream_write(struct stoke_httpd_req *req, const char *data, size_t len)
{
    struct conn *c = conn_of(req);
    if (c->closed || c->broken)
        return false;
    if (len > 0 && !c->head_only) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        uv_buf_t pieces[3] = {uv_buf_init(size, (unsigned)n),
                              uv_buf_init((char *)data, (unsigned)len), uv_buf_init("\r\n", 2)};
        if (conn_write(c, pieces, 3) < 0)
            return false;
        if (!uv_is_active((uv_handle_t *)&c->timer))
            uv_timer_start(&c->timer, on_timeout, c->s->cfg.limits.write_timeout_ms, 0);
    }
    if (unsent(c) > c->s->cfg.limits.stream_high) {
        c->want_drain = true;
        return false;
    }
    return true;
}

void stoke_httpd_stream_end(struct stoke_httpd_req *req)
{
    struct conn *c = conn_of(req);
    uv_buf_t piece = uv_buf_init("0\r\n\r\n", 5);
    if (c->streaming && !c->head_only)
        (void)conn_write(c, &piece, 1);
    req_done(c);
}

/* ---- reading ----------------------------------------------------------- */

/* An error found while reading a request: answered, then the connection
 * closes (the rest of the request may not have been read). */
static void conn_fail(struct conn *c, int status, const char *field, const char *msg)
{
    const char *extra = NULL;
    if (status == 401)
        extra = "WWW-Authenticate: Bearer realm=\"stoke\"\r\n";
    c->keep_alive = false;
    c->linger = true;
    memset(&c->req, 0, sizeof(c->req));
    c->req.method = -1; /* the body is sent whatever the method */
    c->req.path = c->req.query = c->req.body = "";
    c->req.is_tcp = c->is_tcp;
    c->busy = true; /* the answer's req_done() clears it */
    c->s->cfg.on_error(&c->req, status, extra, field, msg, c->s->cfg.data);
    assert(!c->busy);
}

static int parse_error(struct conn *c, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int parse_error(struct conn *c, int status, const char *field, const char *fmt, ...)
{
    va_list ap;
    c->error = status;
    c->error_field = field;
    va_start(ap, fmt);
    (void)vsnprintf(c->error_msg, sizeof(c->error_msg), fmt, ap);
    va_end(ap);
    return -1;
}

/* "16 KiB", "1 MiB": a limit in an error message. */
static const char *size_text(size_t n, char *buf, size_t size)
{
    if (n >= (1u << 20) && n % (1u << 20) == 0)
        (void)snprintf(buf, size, "%zu MiB", n >> 20);
    else if (n >= 1024 && n % 1024 == 0)
        (void)snprintf(buf, size, "%zu KiB", n >> 10);
    else
        (void)snprintf(buf, size, "%zu bytes", n);
    return buf;
}

static int count_head(struct conn *c, size_t len)
{
    char limit[32];
    c->head_bytes += len;
    if (c->head_bytes > c->s->cfg.limits.max_head)
        return parse_error(c, 431, NULL, "request head over %s",
                           size_text(c->s->cfg.limits.max_head, limit, sizeof(limit)));
    return 0;
}

static int on_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    forget_request(c);
    c->field_len = 0;
    c->expect_len = 0;
    c->hdr = H_OTHER;
    c->n_auth = 0;
    c->head_bytes = 0;
    c->error = 0;
    uv_timer_start(&c->timer, on_timeout, head_time(c, c->s->cfg.limits.head_timeout_ms), 0);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (count_head(c, len) < 0)
        return -1;
    return stoke_buf_append(&c->url, at, len) < 0 ? parse_error(c, 431, NULL, "URL too long") : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (count_head(c, len) < 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (c->field_len < sizeof(c->field))
            c->field[c->field_len] = (char)(at[i] | 0x20); /* ASCII lower case; tokens only */
        c->field_len++;
    }
    /* (the head's size is bounded by count_head(): hdrs fits in max_head) */
    if (c->s->cfg.keep_headers && stoke_buf_append(&c->hdrs, at, len) < 0)
        return parse_error(c, 431, NULL, "request head too large");
    return 0;
}

static bool field_is(const struct conn *c, const char *name)
{
    size_t n = strlen(name);
    return c->field_len == n && memcmp(c->field, name, n) == 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->hdr = H_OTHER;
    if (c->s->cfg.keep_headers && stoke_buf_append(&c->hdrs, ": ", 2) < 0)
        return parse_error(c, 431, NULL, "request head too large");
    if (c->needs_auth && field_is(c, "authorization")) {
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
    struct conn *c = p->data;
    if (count_head(c, len) < 0)
        return -1;
    if (c->hdr == H_AUTH && stoke_buf_append(&c->auth, at, len) < 0)
        return parse_error(c, 431, NULL, "Authorization header too long");
    if (c->s->cfg.keep_headers && stoke_buf_append(&c->hdrs, at, len) < 0)
        return parse_error(c, 431, NULL, "request head too large");
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
    struct conn *c = p->data;
    c->field_len = 0;
    c->hdr = H_OTHER;
    if (c->s->cfg.keep_headers && stoke_buf_append(&c->hdrs, "\r\n", 2) < 0)
        return parse_error(c, 431, NULL, "request head too large");
    return 0;
}

/* The head is read: the request as the check and the handler see it. */
static void req_start(struct conn *c)
{
    char *url = c->url.data ? c->url.data : "";
    char *q = strchr(url, '?');
    if (q)
        *q++ = '\0';
    memset(&c->req, 0, sizeof(c->req));
    c->req.method = llhttp_get_method(&c->parser);
    c->req.path = url;
    c->req.query = q ? q : "";
    c->req.body = "";
    c->req.headers = c->hdrs.data ? c->hdrs.data : "";
    c->req.headers_len = c->hdrs.len;
    c->req.is_tcp = c->is_tcp;
}

/* "Bearer <token>": scheme case-insensitive, one or more spaces. */
static const char *check_auth(struct conn *c)
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
    if (!stoke_token_equal(c->s->token, v + i, len - i))
        return "wrong bearer token";
    return NULL;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    const struct stoke_httpd_config *cfg = &c->s->cfg;
    char limit[32];
    if (c->needs_auth) {
        const char *why = check_auth(c);
        if (why)
            return parse_error(c, 401, "Authorization", "%s", why);
    }
    conn_prove(c);
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    bool has_body = chunked || (has_length && p->content_length > 0);
    req_start(c);
    if (cfg->check) {
        int status = cfg->check(&c->req, has_body, cfg->data);
        if (status > 0)
            return parse_error(c, status, NULL, "%s", stoke_httpd_reason(status));
    }
    if (llhttp_get_method(p) == HTTP_PUT && !chunked && !has_length)
        return parse_error(c, 411, "Content-Length",
                           "a PUT needs a Content-Length or a chunked body");
    if (has_length && p->content_length > cfg->limits.max_body)
        return parse_error(c, 413, NULL, "body over %s",
                           size_text(cfg->limits.max_body, limit, sizeof(limit)));
    if (has_body && c->expect_len == 12 && strncasecmp(c->expect, "100-continue", 12) == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t piece = uv_buf_init((char *)cont, sizeof(cont) - 1);
        (void)conn_write(c, &piece, 1);
    }
    uv_timer_start(&c->timer, on_timeout, cfg->limits.body_timeout_ms, 0);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    char limit[32];
    int r = stoke_buf_append(&c->body, at, len);
    if (r == -ENOBUFS)
        return parse_error(c, 413, NULL, "body over %s",
                           size_text(c->s->cfg.limits.max_body, limit, sizeof(limit)));
    return r < 0 ? parse_error(c, 500, NULL, "out of memory") : 0;
}

static int on_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

/* Hands the request just parsed to the handler. */
static void conn_dispatch(struct conn *c)
{
    c->req.body = c->body.data ? c->body.data : "";
    c->req.body_len = c->body.len;
    c->busy = true;
    uv_timer_stop(&c->timer);
    c->s->cfg.handler(&c->req, c->s->cfg.data);
}

static bool can_parse(const struct conn *c)
{
    return !c->closed && !c->close_after && !c->broken && !c->busy && !c->wait_drain;
}

/* Parses `len` bytes, handing each complete request on in turn; what cannot
 * be parsed yet (a request is being answered) goes to `rest`. */
static void conn_feed(struct conn *c, const char *data, size_t len)
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
    struct conn *c = st->data;
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
static void conn_resume(struct conn *c)
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

/* A connection on `s`, its stream handle not yet opened: a TCP one with
 * `tcp_handle`, else a pipe. NULL on OOM. */
static struct conn *conn_new(struct stoke_httpd *s, bool tcp_handle, bool is_tcp)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->s = s;
    c->is_tcp = is_tcp;
    c->needs_auth = is_tcp && s->token;
    if (tcp_handle)
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
    /* A unix socket's mode is its clients' proof; over TCP, a request is. */
    c->proven = !is_tcp;
    stoke_list_init(&c->unode);
    if (!c->proven) {
        stoke_list_insert_tail(&s->unproven, &c->unode);
        s->n_unproven++;
    }
    stoke_buf_init(&c->url, s->cfg.limits.max_head);
    stoke_buf_init(&c->body, s->cfg.limits.max_body);
    stoke_buf_init(&c->auth, 4096);
    stoke_buf_init(&c->hdrs, 2 * s->cfg.limits.max_head);
    stoke_buf_init(&c->rest, REST_MAX + (64 << 10));
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->keep_alive = true;
    return c;
}

/* The stream is open: read, and wait for the first request. */
static int conn_start(struct conn *c)
{
    int r = uv_read_start(&c->io.stream, stoke_uv_alloc, on_read);
    if (r < 0)
        return r;
    c->reading = true;
    uv_timer_start(&c->timer, on_timeout, head_time(c, c->s->cfg.limits.first_timeout_ms), 0);
    return 0;
}

/* Makes room for a new connection (counted already): the oldest unproven
 * one goes when they pass their share, or when all connections are taken.
 * Returns false when there is no room (every other one is proven). */
static bool make_room(struct stoke_httpd *s)
{
    unsigned max = s->cfg.limits.max_conns;
    unsigned share = max / UNPROVEN_SHARE ? max / UNPROVEN_SHARE : 1;
    while (s->n_unproven > share || s->n_conns > max) {
        struct conn *old = stoke_container_of(stoke_list_first(&s->unproven), struct conn, unode);
        if (s->n_unproven <= 1)
            return false; /* only the new one: the rest are proven */
        conn_close(old);
    }
    return true;
}

static void on_accept(uv_stream_t *server, int status)
{
    struct stoke_httpd *s = server->data;
    if (status < 0 || s->closing)
        return;
    bool tcp = server == (uv_stream_t *)&s->tcp;
    struct conn *c = conn_new(s, tcp, tcp);
    if (!c)
        return;
    if (uv_accept(server, &c->io.stream) < 0 || !make_room(s) || conn_start(c) < 0)
        conn_close(c);
}

int stoke_httpd_serve_fd(struct stoke_httpd *s, uv_os_sock_t fd, bool is_tcp)
{
    int r = s->closing ? -EINVAL : s->n_conns >= s->cfg.limits.max_conns ? -EAGAIN : 0;
    struct conn *c = r == 0 ? conn_new(s, false, is_tcp) : NULL;
    if (!c) {
        (void)close(fd);
        return r < 0 ? r : -ENOMEM;
    }
    r = uv_pipe_open(&c->io.pipe, fd);
    if (r < 0) {
        (void)close(fd); /* not the pipe's: closing the handle leaves it open */
        conn_close(c);
        return r;
    }
    r = conn_start(c);
    if (r < 0) {
        conn_close(c); /* closes fd */
        return r;
    }
    return 0;
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

static int listen_unix(struct stoke_httpd *s, const char *path)
{
    int r = make_parent(path);
    if (r < 0)
        return r;
    uv_pipe_init(s->loop, &s->ux, 0);
    s->ux.data = s;
    s->has_ux = true;
    s->handles++;
    /* A socket file left by a server that died is in the way; one that
     * answers is another server's, and any other kind of file is not
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
    if (s->cfg.unix_gid && chown(path, (uid_t)-1, s->cfg.unix_gid) < 0)
        return -errno;
    return uv_listen((uv_stream_t *)&s->ux, 128, on_accept);
}

static int listen_tcp(struct stoke_httpd *s, const struct stoke_addr *addr)
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

int stoke_httpd_new(uv_loop_t *loop, const struct stoke_httpd_config *cfg, struct stoke_httpd **ret,
                    const char **ret_what)
{
    const char *what = "";
    int r = -ENOMEM;
    assert(cfg->handler && cfg->on_error);
    struct stoke_httpd *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->cfg = *cfg;
    s->cfg.unix_path = s->cfg.token = s->cfg.headers = NULL;
    s->cfg.tcp = NULL;
    stoke_list_init(&s->conns);
    stoke_list_init(&s->unproven);
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
    s->headers = strdup(cfg->headers ? cfg->headers : "");
    if (!s->headers)
        goto fail;
    if (cfg->token) {
        s->token = strdup(cfg->token);
        if (!s->token)
            goto fail;
    }
    if (cfg->unix_path) {
        what = cfg->unix_path;
        r = listen_unix(s, cfg->unix_path);
        if (r < 0)
            goto fail;
    }
    if (cfg->tcp) {
        what = "the TCP address";
        r = listen_tcp(s, cfg->tcp);
        if (r < 0)
            goto fail;
    }
    s->handles--;
    *ret = s;
    return 0;
fail:
    if (ret_what)
        *ret_what = what;
    /* unix_path is set once bound by us: then the file is ours to remove. */
    stoke_httpd_close(s);
    server_unref(s);
    return r;
}

void stoke_httpd_close(struct stoke_httpd *s)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    /* Held across the closes: a server with no listener (connections from
     * stoke_httpd_serve_fd() only) has no close callback to free it, and is
     * freed by the unref at the end once nothing is left open. */
    s->handles++;
    while (!stoke_list_empty(&s->conns))
        conn_close(stoke_container_of(stoke_list_first(&s->conns), struct conn, node));
    if (s->has_ux)
        uv_close((uv_handle_t *)&s->ux, on_listener_closed);
    if (s->has_tcp)
        uv_close((uv_handle_t *)&s->tcp, on_listener_closed);
    server_unref(s);
}
