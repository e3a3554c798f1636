/* The ops port both daemons serve; see stoke/opsd.h. A handler over
 * stoke/httpd.h with the ops port's limits and text answers. */
#include "stoke/opsd.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "stoke/httpd.h"

#define OPS_MAX_METRICS (64u << 20) /* the rendered text; over: 500 */
#define ALLOW "Allow: GET, HEAD\r\n"
#define TEXT "text/plain; charset=utf-8"

/* A request head of 8 KiB at most (431), sent within 10 s of the
 * connection or of its first byte; 60 s idle between requests; 64
 * connections. A client that reads nothing of its last answer for 10 s is
 * dropped, and one that pipelines without reading is not read past 16 MiB
 * of unsent answers. No bodies: check() answers 400 first. */
static const struct stoke_httpd_limits ops_limits = {
    .max_head = 8192,
    .max_body = 0,
    .max_conns = 64,
    .stream_high = 16u << 20,
    .first_timeout_ms = 10000,
    .head_timeout_ms = 10000,
    .body_timeout_ms = 10000,
    .idle_timeout_ms = 60000,
    .write_timeout_ms = 10000,
};

struct stoke_opsd {
    struct stoke_httpd *httpd;
    struct stoke_opsd_callbacks cbs;
};

/* "404 Not Found\n" and so on. */
static void reply_status(struct stoke_httpd_req *req, int status, const char *extra)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, stoke_httpd_reason(status));
    stoke_httpd_reply(req, status, extra, TEXT, body, (size_t)n);
}

static void on_error(struct stoke_httpd_req *req, int status, const char *extra, const char *field,
                     const char *msg, void *data)
{
    (void)field;
    (void)msg;
    (void)data;
    reply_status(req, status, status == 405 ? ALLOW : extra);
}

/* Only GET and HEAD, without a body: refused before anything else is read. */
static int check(const struct stoke_httpd_req *req, bool has_body, void *data)
{
    (void)data;
    if (req->method != HTTP_GET && req->method != HTTP_HEAD)
        return 405;
    return has_body ? 400 : 0;
}

static void answer_health(struct stoke_opsd *o, struct stoke_httpd_req *req)
{
    char msg[256] = "";
    bool ok = o->cbs.health(msg, sizeof(msg), o->cbs.data);
    char body[sizeof(msg) + 1];
    int n = snprintf(body, sizeof(body), "%s\n", msg);
    stoke_httpd_reply(req, ok ? 200 : 503, NULL, TEXT, body, (size_t)n);
}

static void answer_metrics(struct stoke_opsd *o, struct stoke_httpd_req *req)
{
    struct stoke_buf out;
    stoke_buf_init(&out, OPS_MAX_METRICS);
    if (o->cbs.metrics(&out, o->cbs.data) < 0) {
        stoke_httpd_close_after(req); /* as every error answer */
        reply_status(req, 500, NULL);
    } else {
        stoke_httpd_reply(req, 200, NULL, "text/plain; version=0.0.4; charset=utf-8",
                          out.data ? out.data : "", out.len);
    }
    stoke_buf_done(&out);
}

static void handle(struct stoke_httpd_req *req, void *data)
{
    if (strcmp(req->path, "/healthz") == 0)
        answer_health(data, req);
    else if (strcmp(req->path, "/metrics") == 0)
        answer_metrics(data, req);
    else
        reply_status(req, 404, NULL);
}

int stoke_opsd_new(uv_loop_t *loop, const struct stoke_addr *addr,
                   const struct stoke_opsd_callbacks *cbs, struct stoke_opsd **ret)
{
    if (addr->is_unix)
        return -EINVAL;
    struct stoke_opsd *o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->cbs = *cbs;
    struct stoke_httpd_config cfg = {
        .tcp = addr,
        .headers = "Cache-Control: no-store\r\n",
        .limits = ops_limits,
        .check = check,
        .handler = handle,
        .on_error = on_error,
        .data = o,
    };
    int r = stoke_httpd_new(loop, &cfg, &o->httpd, NULL);
    if (r < 0) {
        free(o);
        return r;
    }
    *ret = o;
    return 0;
}

void stoke_opsd_close(struct stoke_opsd *o)
{
    if (!o)
        return;
    stoke_httpd_close(o->httpd);
    free(o);
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
