/* A small HTTP/1.1 server on the caller's loop (httpd.c), serving the
 * controller's admin API and both daemons' ops port: listeners on a unix
 * socket and/or TCP, llhttp parsing with hard limits, an optional bearer
 * token on TCP, keep-alive and pipelining (one request of a connection is
 * handled at a time, answers go out in order), and chunked streaming with
 * backpressure. What is answered, and how errors read, is the user's: a
 * handler, an optional check of each request head, and an error answerer.
 * Thread: the loop's; every callback runs on it. */
#ifndef STOKE_HTTPD_H
#define STOKE_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>
#include <uv.h>

#include "stoke/util.h"

struct stoke_httpd;

struct stoke_httpd_req {
    int method;        /* llhttp's enum llhttp_method; -1 in an error answer */
    const char *path;  /* the URL up to '?' (NUL-terminated) */
    const char *query; /* after '?', or "" */
    const char *body;  /* NUL-terminated; "" when none */
    size_t body_len;
    /* With cfg.keep_headers, the request's header lines as sent
     * ("Name: value\r\n"..., NUL-terminated; the Authorization of a
     * token-checked request included); else "". */
    const char *headers;
    size_t headers_len;
    bool is_tcp; /* came over TCP (then authenticated, when there is a token) */
    /* Set by the handler of an answer it gives later. */
    void (*on_abort)(struct stoke_httpd_req *req, void *data);
    void (*on_drain)(struct stoke_httpd_req *req, void *data); /* the stream is below the mark */
    void *handler_data;
};

/* Called for each complete request. The handler answers it exactly once,
 * now or later, with stoke_httpd_reply*() or a stream
 * (stoke_httpd_stream_begin(), then _write() and _end()). Until then `req`
 * stays valid, unless the client goes first: then req->on_abort runs (if
 * set) and `req` is gone after it. */
typedef void (*stoke_httpd_handler)(struct stoke_httpd_req *req, void *data);

/* Checks a request's head before its body is read (after the token, before
 * the server's own 411 for a PUT without Content-Length or chunking and 413
 * past max_body): `req` has method, path, query and is_tcp; `has_body` is a
 * chunked body or a Content-Length over 0. Returns 0 to go on, or a status
 * refusing the request (answered by the error answerer with the status's
 * reason as message; the connection closes). */
typedef int (*stoke_httpd_check)(const struct stoke_httpd_req *req, bool has_body, void *data);

/* Answers an error the server found in a request (unreadable, over a limit,
 * unauthenticated, refused by the check), now, with stoke_httpd_reply*():
 * `status`, header lines the answer must carry (NULL, or e.g.
 * WWW-Authenticate for a 401), the header at fault (or NULL) and a message.
 * The connection closes after it. */
typedef void (*stoke_httpd_error)(struct stoke_httpd_req *req, int status,
                                  const char *extra_headers, const char *field, const char *msg,
                                  void *data);

/* How much a client may send and how long it may take: the server answers
 * past each limit (431, 413) or closes the connection. */
struct stoke_httpd_limits {
    size_t max_head;           /* request line and headers; over: 431 */
    size_t max_body;           /* over: 413 */
    unsigned max_conns;        /* more are closed at once */
    size_t stream_high;        /* unsent bytes past which streams and pipelining pause */
    uint64_t first_timeout_ms; /* from accept to the first request's first byte */
    uint64_t head_timeout_ms;  /* from a request's first byte to its last header */
    uint64_t body_timeout_ms;  /* from its last header to its last body byte */
    uint64_t idle_timeout_ms;  /* keep-alive, between requests */
    uint64_t write_timeout_ms; /* a client reading nothing of a stream, or of a last answer */
};

struct stoke_httpd_config {
    const char *unix_path; /* NULL: no unix socket */
    /* The unix socket's group (its mode is 0660): 0 keeps the process's,
     * another is set with chown(), which needs the process to be a member
     * of it (or CAP_CHOWN). */
    gid_t unix_gid;
    const struct stoke_addr *tcp; /* NULL: no TCP listener; IP only */
    /* NULL: none. Else requests over TCP need "Authorization: Bearer
     * <token>" (401 otherwise); copied, wiped at close. */
    const char *token;
    /* Header lines every answer carries after Content-Type and its length,
     * e.g. "Cache-Control: no-store\r\n"; copied. */
    const char *headers;
    struct stoke_httpd_limits limits;
    bool keep_headers;       /* give handlers req->headers */
    stoke_httpd_check check; /* NULL: every head is read on */
    stoke_httpd_handler handler;
    stoke_httpd_error on_error;
    void *data; /* borrowed until stoke_httpd_close() */
};

/* Listens as `cfg` says (the unix socket's directory is created if missing,
 * a stale socket file replaced, the socket made mode 0660 and given
 * `unix_gid`). Returns 0 and
 * *ret, or a negative errno with nothing left open (`*ret_what`, if not
 * NULL, names the address that failed: the unix path or "the TCP address").
 * A callback never runs from this call. */
int stoke_httpd_new(uv_loop_t *loop, const struct stoke_httpd_config *cfg, struct stoke_httpd **ret,
                    const char **ret_what);

/* Serves a connected stream socket `fd` (one end of a socketpair, say) as
 * if accepted, on a pipe handle; its requests are marked `is_tcp` as asked
 * (then the token is required, when there is one). For tests and fuzzing:
 * a server needs no listener for it. Takes `fd` whatever the result: it is
 * closed with the connection, or at once on failure. Returns 0, -EAGAIN at
 * limits.max_conns, -EINVAL once closing, or another negative errno. No
 * callback runs from this call. */
int stoke_httpd_serve_fd(struct stoke_httpd *s, uv_os_sock_t fd, bool is_tcp);

/* Closes the listeners and every connection (handlers in the middle of an
 * answer get on_abort; no other callback runs after this), removes the
 * socket file, and frees the server once its handles are closed (run the
 * loop). NULL accepted. */
void stoke_httpd_close(struct stoke_httpd *s);

/* "Not Found" for 404 and so on; "Error" for a status it does not know. */
const char *stoke_httpd_reason(int status);

/* The connection closes after the answer to `req` (call before answering). */
void stoke_httpd_close_after(struct stoke_httpd_req *req);

/* A whole answer: status, extra header lines ("Name: value\r\n"..., or
 * NULL), content type and body (copied). A HEAD gets the head alone. */
void stoke_httpd_reply(struct stoke_httpd_req *req, int status, const char *extra_headers,
                       const char *ctype, const char *body, size_t len);
/* A JSON answer and a line feed; takes ownership of `obj` (put after
 * formatting). NULL (out of memory) answers 500. */
void stoke_httpd_reply_json(struct stoke_httpd_req *req, int status, const char *extra_headers,
                            json_object *obj);
/* {"error": message, "field": field or null} with `status`. */
void stoke_httpd_reply_error(struct stoke_httpd_req *req, int status, const char *extra_headers,
                             const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* A chunked 200 answer of type `ctype`. A HEAD gets the head alone: the
 * producer writes and ends as for any other request, and no chunk is sent. */
void stoke_httpd_stream_begin(struct stoke_httpd_req *req, const char *ctype);
/* One chunk (copied; empty data sends nothing). Returns true while the
 * client keeps up, false once more than limits.stream_high bytes wait: the
 * producer should then pause until req->on_drain. */
bool stoke_httpd_stream_write(struct stoke_httpd_req *req, const char *data, size_t len);
/* The last chunk: the request is answered. */
void stoke_httpd_stream_end(struct stoke_httpd_req *req);

#endif
