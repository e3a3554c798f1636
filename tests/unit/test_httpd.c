/* stoke/httpd.h: raw requests over a unix socket (and TCP for the token)
 * from a blocking client thread, answers compared byte for byte. */
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>
#include <llhttp.h>
#include <uv.h>

#include "stoke/httpd.h"

struct run {
    uv_loop_t loop;
    struct stoke_httpd *s;
    uv_async_t done;
    uv_timer_t later; /* answers /later on the loop, after the handler returned */
    struct stoke_httpd_req *pending;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    const char *send;
    size_t send_len;
    char got[16384];
    size_t got_len;
};

static const struct stoke_httpd_limits limits = {
    .max_head = 256,
    .max_body = 64,
    .max_conns = 4,
    .stream_high = 1024,
    .first_timeout_ms = 5000,
    .head_timeout_ms = 5000,
    .body_timeout_ms = 5000,
    .idle_timeout_ms = 5000,
    .write_timeout_ms = 5000,
};

static void reply_text(struct stoke_httpd_req *req, int status, const char *extra, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));

static void reply_text(struct stoke_httpd_req *req, int status, const char *extra, const char *fmt,
                       ...)
{
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    stoke_httpd_reply(req, status, extra, "text/plain", body, (size_t)n);
}

static void on_later(uv_timer_t *t)
{
    struct run *r = t->data;
    reply_text(r->pending, 201, NULL, "later\n");
    r->pending = NULL;
}

static void handle(struct stoke_httpd_req *req, void *data)
{
    struct run *r = data;
    if (strcmp(req->path, "/stream") == 0) {
        stoke_httpd_stream_begin(req, "text/plain");
        assert_true(stoke_httpd_stream_write(req, "hello", 5));
        assert_true(stoke_httpd_stream_write(req, "", 0));
        stoke_httpd_stream_end(req);
    } else if (strcmp(req->path, "/later") == 0) {
        r->pending = req;
        uv_timer_start(&r->later, on_later, 10, 0);
    } else if (strcmp(req->path, "/close") == 0) {
        stoke_httpd_close_after(req);
        reply_text(req, 500, NULL, "bye\n");
    } else {
        reply_text(req, 200, NULL, "%s %s %s %.*s\n",
                   llhttp_method_name((llhttp_method_t)req->method), req->path, req->query,
                   (int)req->body_len, req->body);
    }
}

static int check(const struct stoke_httpd_req *req, bool has_body, void *data)
{
    (void)data;
    (void)has_body;
    return req->method == HTTP_DELETE ? 405 : 0;
}

static void on_error(struct stoke_httpd_req *req, int status, const char *extra, const char *field,
                     const char *msg, void *data)
{
    (void)data;
    assert_int_equal(req->method, -1);
    reply_text(req, status, status == 405 ? "Allow: GET\r\n" : extra, "%d %s %s\n", status,
               field ? field : "-", msg);
}

/* The client: sends everything, then reads to EOF. No cmocka asserts off
 * the main thread: a failure shows as a short answer. */
static void *client(void *arg)
{
    struct run *r = arg;
    int fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 10};
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
        connect(fd, (struct sockaddr *)&r->addr, r->addr_len) == 0 &&
        send(fd, r->send, r->send_len, MSG_NOSIGNAL) == (ssize_t)r->send_len) {
        for (;;) {
            ssize_t n = recv(fd, r->got + r->got_len, sizeof(r->got) - 1 - r->got_len, 0);
            if (n <= 0)
                break;
            r->got_len += (size_t)n;
        }
    }
    r->got[r->got_len] = '\0';
    if (fd >= 0)
        close(fd);
    uv_async_send(&r->done);
    return NULL;
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_done(uv_async_t *a)
{
    struct run *r = a->data;
    stoke_httpd_close(r->s);
    uv_close((uv_handle_t *)&r->done, on_closed);
    uv_close((uv_handle_t *)&r->later, on_closed);
}

/* Serves `send` over a unix socket (or TCP with a token) and compares what
 * the client got, to EOF. */
static void exchange(bool tcp, const char *send, size_t send_len, const char *want)
{
    struct run r = {.send = send, .send_len = send_len};
    char path[64];
    struct stoke_addr addr;
    struct stoke_httpd_config cfg = {
        .headers = "X-Test: 1\r\n",
        .limits = limits,
        .check = check,
        .handler = handle,
        .on_error = on_error,
        .data = &r,
    };
    assert_int_equal(uv_loop_init(&r.loop), 0);
    if (tcp) {
        /* A port free a moment ago. */
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        socklen_t len = sizeof(sin);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
        close(fd);
        char text[64];
        snprintf(text, sizeof(text), "127.0.0.1:%u", ntohs(sin.sin_port));
        assert_int_equal(stoke_addr_parse(text, &addr), 0);
        cfg.tcp = &addr;
        cfg.token = "sekrit";
        memcpy(&r.addr, &sin, sizeof(sin));
        r.addr_len = sizeof(sin);
    } else {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(path, sizeof(path), "/tmp/stoke-test-httpd-%d/s.sock", (int)getpid());
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
        cfg.unix_path = path;
        memcpy(&r.addr, &sun, sizeof(sun));
        r.addr_len = sizeof(sun);
    }
    assert_int_equal(stoke_httpd_new(&r.loop, &cfg, &r.s, NULL), 0);
    assert_int_equal(uv_async_init(&r.loop, &r.done, on_done), 0);
    assert_int_equal(uv_timer_init(&r.loop, &r.later), 0);
    r.done.data = &r;
    r.later.data = &r;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, client, &r), 0);
    assert_int_equal(uv_run(&r.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(uv_loop_close(&r.loop), 0);
    if (!tcp) {
        assert_int_equal(access(path, F_OK), -1); /* removed at close */
        *strrchr(path, '/') = '\0';
        (void)rmdir(path);
    }
    assert_string_equal(r.got, want);
}

#define S(x) x, sizeof(x) - 1
#define OK "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
#define CLOSE "X-Test: 1\r\nConnection: close\r\n\r\n"

static void test_pipelined_in_order(void **state)
{
    (void)state;
    exchange(
        false,
        S("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n"
          "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
          "GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
          "PUT /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
          "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"),
        OK "Content-Length: 12\r\nX-Test: 1\r\n\r\nGET /a b=1 \n" OK
           "Content-Length: 10\r\nX-Test: 1\r\n\r\n"
           "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
           "X-Test: 1\r\n\r\nlater\n" OK "Content-Length: 11\r\nX-Test: 1\r\n\r\nPUT /p  ab\n" OK
           "Content-Length: 13\r\n" CLOSE "POST /p  abc\n");
}

static void test_stream_and_close_after(void **state)
{
    (void)state;
    exchange(false,
             S("GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /close HTTP/1.1\r\nHost: x\r\n\r\n"),
             OK "Transfer-Encoding: chunked\r\nX-Test: 1\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                "Content-Length: 4\r\n" CLOSE "bye\n");
}

/* Found by fuzz_httpd: chunks after the head of a HEAD answer were read as
 * the next answer. */
static void test_stream_to_head(void **state)
{
    (void)state;
    exchange(false,
             S("HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /close HTTP/1.1\r\nHost: x\r\n\r\n"),
             OK "Transfer-Encoding: chunked\r\nX-Test: 1\r\n\r\n"
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                "Content-Length: 4\r\n" CLOSE "bye\n");
}

static void test_errors_close(void **state)
{
    (void)state;
    static const struct {
        const char *send, *want;
    } cases[] = {
        {"GET /" /* 256 + */ "0123456789012345678901234567890123456789012345678901234567890123"
         "0123456789012345678901234567890123456789012345678901234567890123"
         "0123456789012345678901234567890123456789012345678901234567890123"
         "0123456789012345678901234567890123456789012345678901234567890123 HTTP/1.1\r\n\r\n",
         "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
         "Content-Length: 34\r\n" CLOSE "431 - request head over 256 bytes\n"},
        {"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n",
         "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 25\r\n"
         "X-Test: 1\r\nAllow: GET\r\nConnection: close\r\n\r\n405 - Method Not Allowed\n"},
        {"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n",
         "HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: "
         "25\r\n" CLOSE "413 - body over 64 bytes\n"},
        {"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n"
         "01234567890123456789012345678901234567890123456789012345678901234\r\n0\r\n\r\n",
         "HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: "
         "25\r\n" CLOSE "413 - body over 64 bytes\n"},
        {"PUT /x HTTP/1.1\r\nHost: x\r\n\r\n",
         "HTTP/1.1 411 Length Required\r\nContent-Type: text/plain\r\nContent-Length: 66\r\n" CLOSE
         "411 Content-Length a PUT needs a Content-Length or a chunked body\n"},
        {"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n" CLOSE
         "400 - malformed request: Duplicate Content-Length\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        exchange(false, cases[i].send, strlen(cases[i].send), cases[i].want);
}

static void test_token_on_tcp(void **state)
{
    (void)state;
    exchange(true,
             S("GET /t HTTP/1.1\r\nAuthorization: bearer  sekrit\r\nConnection: close\r\n\r\n"),
             OK "Content-Length: 9\r\n" CLOSE "GET /t  \n");
    exchange(true, S("GET /t HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n"),
             "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 37\r\n"
             "X-Test: 1\r\nWWW-Authenticate: Bearer realm=\"stoke\"\r\nConnection: close\r\n\r\n"
             "401 Authorization wrong bearer token\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipelined_in_order), cmocka_unit_test(test_stream_and_close_after),
        cmocka_unit_test(test_stream_to_head),     cmocka_unit_test(test_errors_close),
        cmocka_unit_test(test_token_on_tcp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
