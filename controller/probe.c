#include "probe.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "stoke/util.h"
#include "stoke/uvbuf.h"

#define ATTEMPT_TIMEOUT_MS 1000
#define MAX_RESPONSE_HEAD 16384

/* One try: its socket and the requests on it live and die together, freed
 * in the socket's close callback, after libuv has cancelled the requests
 * (a request embedded in the probe could outlive it: libuv runs the probe
 * timer's close callback, which frees the probe, before the socket's). */
struct attempt {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    struct probe *p; /* NULL once the attempt ended: its callbacks do nothing */
};

struct probe {
    uv_loop_t *loop;
    uv_timer_t timer;    /* between attempts, and each attempt's time limit */
    struct attempt *att; /* the current attempt, or NULL */
    struct sockaddr_storage addr;
    char *request; /* NULL for a TCP probe */
    size_t request_len;
    llhttp_t parser;
    llhttp_settings_t settings;
    size_t got;
    int status;
    uint64_t period_ms, max_period_ms;
    probe_ready_cb cb;
    void *data;
    bool stopped;
    bool succeeded;
};

static void attempt(uv_timer_t *t);

static void on_attempt_closed(uv_handle_t *h)
{
    free(stoke_container_of((uv_tcp_t *)h, struct attempt, tcp));
}

static void on_timer_closed(uv_handle_t *h)
{
    struct probe *p = h->data;
    free(p->request);
    free(p);
}

static void end_attempt(struct probe *p)
{
    if (p->att) {
        p->att->p = NULL;
        uv_close((uv_handle_t *)&p->att->tcp, on_attempt_closed);
        p->att = NULL;
    }
}

static void finish(struct probe *p)
{
    end_attempt(p);
    p->stopped = true;
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
}

static void retry_later(struct probe *p)
{
    end_attempt(p);
    uv_timer_start(&p->timer, attempt, p->period_ms, 0);
    p->period_ms += p->period_ms / 2 + 1;
    if (p->period_ms > p->max_period_ms)
        p->period_ms = p->max_period_ms;
}

static void succeed(struct probe *p)
{
    probe_ready_cb cb = p->cb;
    void *data = p->data;
    finish(p);
    cb(data);
}

static int on_headers_complete(llhttp_t *parser)
{
    struct probe *p = parser->data;
    p->status = llhttp_get_status_code(parser);
    return HPE_PAUSED;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct probe *p = stoke_container_of((uv_tcp_t *)s, struct attempt, tcp)->p;
    if (!p) {
        free(buf->base);
        return;
    }
    if (nread < 0) {
        free(buf->base);
        retry_later(p);
        return;
    }
    p->got += (size_t)nread;
    llhttp_errno_t err = llhttp_execute(&p->parser, buf->base, (size_t)nread);
    free(buf->base);
    if (err == HPE_PAUSED) {
        if (p->status >= 200 && p->status < 400)
            succeed(p);
        else
            retry_later(p);
    } else if (err != HPE_OK || p->got > MAX_RESPONSE_HEAD) {
        retry_later(p);
    }
}

static void on_written(uv_write_t *req, int status)
{
    struct probe *p = stoke_container_of(req, struct attempt, write)->p;
    if (p && status < 0 && status != UV_ECANCELED && !p->stopped)
        retry_later(p);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct attempt *a = stoke_container_of(req, struct attempt, connect);
    struct probe *p = a->p;
    if (!p || status == UV_ECANCELED || p->stopped)
        return;
    if (status < 0) {
        retry_later(p);
        return;
    }
    if (!p->request) {
        succeed(p);
        return;
    }
    llhttp_init(&p->parser, HTTP_RESPONSE, &p->settings);
    p->parser.data = p;
    p->got = 0;
    p->status = 0;
    uv_buf_t b = uv_buf_init(p->request, (unsigned)p->request_len);
    if (uv_write(&a->write, (uv_stream_t *)&a->tcp, &b, 1, on_written) < 0 ||
        uv_read_start((uv_stream_t *)&a->tcp, stoke_uv_alloc, on_read) < 0)
        retry_later(p);
}

static void on_attempt_timeout(uv_timer_t *t)
{
    retry_later(t->data);
}

static void attempt(uv_timer_t *t)
{
    struct probe *p = t->data;
    struct attempt *a = calloc(1, sizeof(*a));
    if (!a) {
        retry_later(p);
        return;
    }
    uv_tcp_init(p->loop, &a->tcp);
    a->p = p;
    p->att = a;
    if (uv_tcp_connect(&a->connect, &a->tcp, (const struct sockaddr *)&p->addr, on_connected) < 0) {
        retry_later(p);
        return;
    }
    uv_timer_start(&p->timer, on_attempt_timeout, ATTEMPT_TIMEOUT_MS, 0);
}

int probe_start(uv_loop_t *loop, const char *addr, const char *path, uint64_t period_ms,
                uint64_t max_period_ms, probe_ready_cb cb, void *data, struct probe **ret)
{
    struct stoke_addr a;
    if (stoke_addr_parse(addr, &a) < 0 || a.is_unix)
        return -EINVAL;
    struct probe *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->loop = loop;
    p->cb = cb;
    p->data = data;
    p->period_ms = period_ms ? period_ms : 1;
    p->max_period_ms = max_period_ms > p->period_ms ? max_period_ms : p->period_ms;
    p->addr = a.ss;
    if (path) {
        int n = asprintf(&p->request,
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: stoke-probe\r\n"
                         "Connection: close\r\n\r\n",
                         path, addr);
        if (n < 0) {
            free(p);
            return -ENOMEM;
        }
        p->request_len = (size_t)n;
    }
    llhttp_settings_init(&p->settings);
    p->settings.on_headers_complete = on_headers_complete;
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, attempt, 0, 0);
    *ret = p;
    return 0;
}

void probe_stop(struct probe *p)
{
    if (p && !p->stopped)
        finish(p);
}
