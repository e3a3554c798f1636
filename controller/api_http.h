/* The admin API's HTTP/1.1 transport (api_http.c): listeners on a unix
 * socket and optionally TCP, llhttp parsing with hard limits, bearer-token
 * checks on TCP, keep-alive and pipelining (one request of a connection is
 * handled at a time, answers go out in order), JSON error answers, and
 * chunked streaming with backpressure. The endpoints are api.c's.
 * Thread: the loop's. */
#ifndef CONTROLLER_API_HTTP_H
#define CONTROLLER_API_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>
#include <uv.h>

#include "stoke/util.h"

#define HTTP_MAX_HEAD (16 * 1024)     /* request line and headers; over: 431 */
#define HTTP_MAX_BODY (1024 * 1024)   /* STOKE_SPEC_MAX_BYTES; over: 413 */
#define HTTP_MAX_CONNS 256            /* more are closed at once */
#define HTTP_HEAD_TIMEOUT_MS 10000    /* from a request's first byte to its last header */
#define HTTP_BODY_TIMEOUT_MS 30000    /* from its last header to its last body byte */
#define HTTP_IDLE_TIMEOUT_MS 60000    /* keep-alive, between requests */
#define HTTP_STALL_TIMEOUT_MS 60000   /* a client that reads nothing of a stream this long */
#define HTTP_STREAM_HIGH (256 * 1024) /* unsent bytes: stream producers pause past it */

struct http_server;
struct http_req;

/* Called for each complete request. The handler answers it exactly once,
 * now or later, with http_reply*() or a stream (http_stream_begin(), then
 * _write() and _end()). Until then `req` stays valid, unless the client goes
 * first: then req->on_abort runs (if set) and `req` is gone after it. */
typedef void (*http_handler)(struct http_req *req, void *data);

struct http_req {
    int method;        /* llhttp's enum llhttp_method */
    const char *path;  /* the URL up to '?' (NUL-terminated) */
    const char *query; /* after '?', or "" */
    const char *body;  /* NUL-terminated; "" when none */
    size_t body_len;
    bool is_tcp; /* came over TCP (then already authenticated) */
    /* Set by the handler of an answer it gives later. */
    void (*on_abort)(struct http_req *req, void *data);
    void (*on_drain)(struct http_req *req, void *data); /* the stream is below the mark again */
    void *handler_data;
};

struct http_config {
    const char *unix_path;        /* NULL: no unix socket */
    const struct stoke_addr *tcp; /* NULL: no TCP listener */
    const char *token;            /* required with tcp: the bearer token */
    http_handler handler;
    void *data;
};

/* Listens as `cfg` says (the unix socket's directory is created if missing,
 * a stale socket file replaced, the socket made mode 0660). Returns 0 and
 * *ret, or a negative errno (nothing left open; `*ret_what` names the
 * address that failed). */
int http_server_new(uv_loop_t *loop, const struct http_config *cfg, struct http_server **ret,
                    const char **ret_what);

/* Closes the listeners and every connection (handlers in the middle of an
 * answer get on_abort), removes the socket file, and frees the server once
 * its handles are closed. */
void http_server_close(struct http_server *s);

/* A whole answer: status, extra header lines ("Name: value\r\n"..., or
 * NULL), content type and body (copied). */
void http_reply(struct http_req *req, int status, const char *extra_headers, const char *ctype,
                const char *body, size_t len);
/* A JSON answer; takes ownership of `obj` (put after formatting). */
void http_reply_json(struct http_req *req, int status, const char *extra_headers, json_object *obj);
/* {"error": message, "field": field or null} with `status`. */
void http_reply_error(struct http_req *req, int status, const char *extra_headers,
                      const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* A chunked 200 answer of type `ctype`. */
void http_stream_begin(struct http_req *req, const char *ctype);
/* One chunk (copied; empty data sends nothing). Returns true while the
 * client keeps up, false once more than HTTP_STREAM_HIGH bytes wait: the
 * producer should then pause until req->on_drain. */
bool http_stream_write(struct http_req *req, const char *data, size_t len);
/* The last chunk: the request is answered. */
void http_stream_end(struct http_req *req);

#endif
