/*
 * stoke-hello: the example function. A single-threaded epoll HTTP/1.1 server with no
 * dependency beyond libc, linked statically so it runs in a FROM scratch image.
 *
 * Every request gets 200 text/plain "<GREETING> from <name>\n", where <name> is
 * $STOKE_REPLICA (the replica's container name, set by stoke) or else the hostname, except
 * /status/<code> (that status), /delay/<ms> (200 after <ms>, without blocking other
 * connections) and /concurrency ("<now> <max>\n": the /delay requests in progress now, and
 * the most ever in progress at once, so a test can check the concurrency this replica saw),
 * /alloc/<MiB> (allocates and touches that many MiB, kept until the process ends, then 200
 * "allocated <MiB> MiB\n": past the container's memory limit the kernel's OOM killer ends it),
 * and /async/<n>[/<ms>[/<s>]] for async invocations: 500 (with Retry-After: <s> when given)
 * while X-Stoke-Attempt is below <n>, else 200 (after <ms>); a request with X-Stoke-Call-Id
 * logs a "call start" and a "call end" line with the id, attempt, traceparent, status and
 * wall-clock ms, so a test can check that a call ran once.
 * Keep-alive, pipelining and request bodies (Content-Length or chunked, read and discarded) are
 * supported. Env: PORT (8080), BIND_ADDR (0.0.0.0), GREETING (hello). When TARGET is set and not
 * empty, the answer is "Hello <TARGET>!\n" instead, as Knative's helloworld-go sample answers, so
 * its manifest (tests/knative/) can run this image.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    IN_START = 4096,       /* first input buffer; grows to IN_CAP only for large heads */
    IN_CAP = 16384,        /* request head limit: a longer head gets 431 */
    OUT_HIGH = 65536,      /* past this much unsent output, stop answering pipelined requests */
    CHUNK_LINE_MAX = 1024, /* chunk-size and trailer line limit */
    LINGER_MS = 1000,      /* how long to drain input after an error reply before closing */
    MAX_DELAY_MS = 600000,
};

enum state {
    ST_HEAD,
    ST_BODY,
    ST_CH_SIZE,
    ST_CH_DATA,
    ST_CH_CRLF,
    ST_CH_TRAILER,
    ST_DELAY,
    ST_LINGER
};

struct resp {
    int status;
    bool head;          /* HEAD: headers only */
    bool keep;          /* keep the connection open afterwards */
    bool ka10;          /* HTTP/1.0 keep-alive: must be confirmed in the response */
    bool concurrency;   /* /concurrency: the body is the counts below */
    unsigned alloc_mib; /* /alloc/<MiB>: the body says how much is held */
    uint64_t delay_ms;
    char call[40];        /* X-Stoke-Call-Id, or "" */
    uint64_t attempt;     /* X-Stoke-Attempt */
    uint64_t fail_below;  /* /async/<n>: 500 while attempt < n */
    uint64_t retry_after; /* /async/<n>/<ms>/<s>: Retry-After of those 500s, or 0 */
    char trace[56];       /* traceparent (hex digits and dashes), or "" */
};

struct conn {
    int fd;
    uint32_t events; /* current epoll interest */
    enum state st;
    bool closing; /* close once the output is flushed */
    bool eof;     /* the client sent FIN */
    uint64_t body_left;
    uint64_t deadline_ms; /* 0 = not on the timer list */
    struct conn *tprev, *tnext;
    struct resp pending; /* the answer to send once the body is read (and the delay passed) */
    size_t scanned;      /* bytes of the head already searched for its end */
    char *in, *out;
    size_t in_len, in_cap, out_len, out_cap;
};

static int ep = -1;
static int lfd = -1;
static bool accept_paused;
static struct conn *timers; /* connections with a deadline; few, so a plain list */
static char *greeting;
static size_t greeting_len;
static char tag_listen, tag_signal;
static unsigned delaying, delaying_max; /* /delay requests in progress, and the most at once */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void timer_set(struct conn *c, uint64_t ms)
{
    if (!c->deadline_ms) {
        c->tprev = NULL;
        c->tnext = timers;
        if (timers)
            timers->tprev = c;
        timers = c;
    }
    c->deadline_ms = now_ms() + ms;
}

static void timer_clear(struct conn *c)
{
    if (!c->deadline_ms)
        return;
    if (c->tprev)
        c->tprev->tnext = c->tnext;
    else
        timers = c->tnext;
    if (c->tnext)
        c->tnext->tprev = c->tprev;
    c->deadline_ms = 0;
}

static int set_events(int fd, void *ptr, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    return epoll_ctl(ep, op, fd, &ev);
}

static void delay_end(struct conn *c)
{
    if (c->st == ST_DELAY)
        delaying--;
}

static void conn_free(struct conn *c)
{
    delay_end(c);
    timer_clear(c);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
    if (accept_paused) {
        /* A descriptor is free again: resume accepting (paused on EMFILE). */
        accept_paused = false;
        (void)set_events(lfd, &tag_listen, EPOLLIN, EPOLL_CTL_MOD);
    }
}

static const char *reason(int status)
{
    /* clang-format off */
    static const struct {
        int status;
        const char *text;
    } t[] = {{200, "OK"}, {201, "Created"}, {204, "No Content"}, {301, "Moved Permanently"},
             {302, "Found"}, {304, "Not Modified"}, {400, "Bad Request"}, {401, "Unauthorized"},
             {403, "Forbidden"}, {404, "Not Found"}, {429, "Too Many Requests"},
             {431, "Request Header Fields Too Large"}, {500, "Internal Server Error"},
             {501, "Not Implemented"}, {502, "Bad Gateway"}, {503, "Service Unavailable"},
             {504, "Gateway Timeout"}};
    /* clang-format on */
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].status == status)
            return t[i].text;
    return "Status";
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The log line of an async call's start or end (ids are hex: no escaping). */
static void call_log(const struct resp *r, const char *what)
{
    if (r->call[0])
        fprintf(stderr,
                "{\"level\":\"info\",\"msg\":\"call %s\",\"call\":\"%s\",\"attempt\":%llu,"
                "\"trace\":\"%s\",\"status\":%d,\"t_ms\":%llu}\n",
                what, r->call, (unsigned long long)r->attempt, r->trace, r->status,
                (unsigned long long)wall_ms());
}

static bool out_append(struct conn *c, const char *p, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 1024;
        while (cap < c->out_len + n)
            cap *= 2;
        char *o = realloc(c->out, cap);
        if (!o)
            return false;
        c->out = o;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return true;
}

/* Queues the response; a response without keep-alive makes the connection close after it. */
static void emit(struct conn *c, const struct resp *r)
{
    char ebody[64];
    const char *body = greeting;
    size_t blen = greeting_len;
    if (r->concurrency && r->status == 200) {
        blen = (size_t)snprintf(ebody, sizeof ebody, "%u %u\n", delaying, delaying_max);
        body = ebody;
    } else if (r->alloc_mib && r->status == 200) {
        blen = (size_t)snprintf(ebody, sizeof ebody, "allocated %u MiB\n", r->alloc_mib);
        body = ebody;
    } else if (r->status == 400 || r->status == 431 || r->status == 501) {
        blen = (size_t)snprintf(ebody, sizeof ebody, "%s\n", reason(r->status));
        body = ebody;
    }
    bool nobody = r->status == 204 || r->status == 304;
    call_log(r, "end");
    char h[256];
    int n = snprintf(h, sizeof h, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n", r->status,
                     reason(r->status));
    if (!nobody)
        n += snprintf(h + n, sizeof h - (size_t)n, "Content-Length: %zu\r\n", blen);
    if (r->retry_after)
        n += snprintf(h + n, sizeof h - (size_t)n, "Retry-After: %llu\r\n",
                      (unsigned long long)r->retry_after);
    n += snprintf(h + n, sizeof h - (size_t)n, "%s\r\n",
                  !r->keep  ? "Connection: close\r\n"
                  : r->ka10 ? "Connection: keep-alive\r\n"
                            : "");
    if (!out_append(c, h, (size_t)n) || (!nobody && !r->head && !out_append(c, body, blen)))
        c->out_len = 0; /* out of memory: drop the answer, close */
    if (!r->keep || c->out_len == 0)
        c->closing = true;
}

static void fail(struct conn *c, int status)
{
    struct resp r = {.status = status};
    emit(c, &r);
}

/* A header value kept for the call log (nothing there needs escaping): copied into dst when
 * it fits and is hex digits (and dashes, when `dashes`), else dst is left as it is. */
static void copy_hex(char *dst, size_t size, const char *v, size_t vl, bool dashes)
{
    if (vl >= size)
        return;
    for (size_t i = 0; i < vl; i++)
        if (!isxdigit((unsigned char)v[i]) && !(dashes && v[i] == '-'))
            return;
    memcpy(dst, v, vl);
    dst[vl] = '\0';
}

/* Parses 1..18 decimal digits no greater than max. */
static bool parse_uint(const char *p, size_t n, uint64_t max, uint64_t *ret)
{
    uint64_t v = 0;
    if (n == 0 || n > 18)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    if (v > max)
        return false;
    *ret = v;
    return true;
}

static bool is_tchar(char ch)
{
    return ch != 0 && (isalnum((unsigned char)ch) || strchr("!#$%&'*+-.^_`|~", ch));
}

static bool has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i < n;) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        if (i - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return true;
    }
    return false;
}

/*
 * Parses the head p[0..len), which ends with CRLF CRLF. Returns 0 and fills *r, *ret_body and
 * *ret_chunked, or the HTTP status to refuse the request with.
 */
static int parse_head(const char *p, size_t len, struct resp *r, uint64_t *ret_body,
                      bool *ret_chunked)
{
    const char *end = p + len - 2, *eol = memchr(p, '\r', len);
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1 || sp1 == p || eol[1] != '\n')
        return 400;
    for (const char *q = p; q < sp1; q++)
        if (!is_tchar(*q))
            return 400;
    const char *target = sp1 + 1, *sp2 = memchr(target, ' ', (size_t)(eol - target));
    if (!sp2 || sp2 == target || eol - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        (sp2[8] != '0' && sp2[8] != '1'))
        return 400;
    for (const char *q = target; q < sp2; q++)
        if ((unsigned char)*q <= ' ' || *q == 0x7f)
            return 400;
    bool v10 = sp2[8] == '0', conn_close = false, conn_ka = false, have_cl = false, te = false;
    uint64_t cl = 0;
    char call[40] = "", trace[56] = "";
    uint64_t attempt = 0;
    for (const char *line = eol + 2; line < end; line = eol + 2) {
        eol = memchr(line, '\r', (size_t)(end + 2 - line));
        if (eol[1] != '\n')
            return 400;
        const char *colon = line;
        while (colon < eol && is_tchar(*colon))
            colon++;
        if (colon == line || colon == eol || *colon != ':')
            return 400; /* also refuses obs-fold and whitespace before the colon */
        const char *v = colon + 1, *ve = eol;
        for (const char *q = v; q < ve; q++)
            if (((unsigned char)*q < ' ' && *q != '\t') || *q == 0x7f)
                return 400;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t nl = (size_t)(colon - line), vl = (size_t)(ve - v);
        if (nl == 14 && strncasecmp(line, "content-length", nl) == 0) {
            uint64_t n;
            if (!parse_uint(v, vl, UINT64_MAX, &n) || (have_cl && n != cl))
                return 400;
            have_cl = true;
            cl = n;
        } else if (nl == 17 && strncasecmp(line, "transfer-encoding", nl) == 0) {
            if (te)
                return 400;
            if (vl != 7 || strncasecmp(v, "chunked", 7) != 0)
                return 501;
            te = true;
        } else if (nl == 10 && strncasecmp(line, "connection", nl) == 0) {
            conn_close |= has_token(v, vl, "close");
            conn_ka |= has_token(v, vl, "keep-alive");
        } else if (nl == 15 && strncasecmp(line, "x-stoke-call-id", nl) == 0) {
            copy_hex(call, sizeof call, v, vl, false);
        } else if (nl == 15 && strncasecmp(line, "x-stoke-attempt", nl) == 0) {
            (void)parse_uint(v, vl, 1000000, &attempt);
        } else if (nl == 11 && strncasecmp(line, "traceparent", nl) == 0) {
            copy_hex(trace, sizeof trace, v, vl, true);
        }
    }
    if (te && have_cl)
        return 400; /* request smuggling vector */
    *r = (struct resp){.status = 200, .keep = v10 ? conn_ka && !conn_close : !conn_close};
    r->ka10 = v10 && r->keep;
    r->head = sp1 - p == 4 && memcmp(p, "HEAD", 4) == 0;
    const char *qm = memchr(target, '?', (size_t)(sp2 - target));
    const char *pe = qm ? qm : sp2;
    uint64_t n;
    if (pe - target > 8 && memcmp(target, "/status/", 8) == 0) {
        if (!parse_uint(target + 8, (size_t)(pe - target - 8), 599, &n) || n < 200)
            return 400; /* 1xx would break the framing */
        r->status = (int)n;
    } else if (pe - target > 7 && memcmp(target, "/delay/", 7) == 0) {
        if (!parse_uint(target + 7, (size_t)(pe - target - 7), MAX_DELAY_MS, &n))
            return 400;
        r->delay_ms = n;
    } else if (pe - target == 12 && memcmp(target, "/concurrency", 12) == 0) {
        r->concurrency = true;
    } else if (pe - target > 7 && memcmp(target, "/async/", 7) == 0) {
        /* <n>[/<ms>[/<s>]] */
        const uint64_t max[3] = {1000000, MAX_DELAY_MS, 86400};
        uint64_t v[3] = {0, 0, 0};
        const char *a = target + 7;
        for (size_t k = 0;; k++) {
            const char *sl = memchr(a, '/', (size_t)(pe - a));
            const char *ae = sl ? sl : pe;
            if (k == 3 || !parse_uint(a, (size_t)(ae - a), max[k], &v[k]))
                return 400;
            if (!sl)
                break;
            a = sl + 1;
        }
        r->fail_below = v[0];
        r->delay_ms = v[1];
        if (attempt < r->fail_below) {
            r->status = 500;
            r->retry_after = v[2];
        }
    } else if (pe - target > 7 && memcmp(target, "/alloc/", 7) == 0) {
        if (!parse_uint(target + 7, (size_t)(pe - target - 7), 65536, &n))
            return 400;
        /* Touched, chained and never freed: the memory stays charged. */
        static void *kept;
        for (uint64_t i = 0; i < n; i++) {
            void **m = malloc(1 << 20);
            if (!m)
                return 500;
            memset(m, 1, 1 << 20);
            *m = kept;
            kept = m;
        }
        r->alloc_mib = (unsigned)n;
    }
    memcpy(r->call, call, sizeof call);
    memcpy(r->trace, trace, sizeof trace);
    r->attempt = attempt;
    call_log(r, "start");
    *ret_body = cl;
    *ret_chunked = te;
    return 0;
}

static void request_done(struct conn *c)
{
    c->st = ST_HEAD;
    if (c->pending.delay_ms) {
        c->st = ST_DELAY;
        if (++delaying > delaying_max)
            delaying_max = delaying;
        timer_set(c, c->pending.delay_ms);
    } else {
        emit(c, &c->pending);
    }
}

/* Consumes one step of input at c->in + *pos; returns false when it needs more input. */
static bool step(struct conn *c, size_t *pos)
{
    const char *p = c->in + *pos;
    size_t avail = c->in_len - *pos;
    if (c->st == ST_HEAD) {
        if (avail >= 2 && p[0] == '\r' && p[1] == '\n') {
            *pos += 2; /* RFC 9112 2.2: ignore empty lines before a request */
            return true;
        }
        size_t from = c->scanned > 3 ? c->scanned - 3 : 0;
        const char *e = avail >= 4 ? memmem(p + from, avail - from, "\r\n\r\n", 4) : NULL;
        if (!e) {
            c->scanned = avail;
            if (avail >= IN_CAP)
                fail(c, 431);
            return false;
        }
        size_t hlen = (size_t)(e + 4 - p);
        bool chunked;
        int err = parse_head(p, hlen, &c->pending, &c->body_left, &chunked);
        *pos += hlen;
        c->scanned = 0;
        if (err)
            fail(c, err);
        else if (chunked)
            c->st = ST_CH_SIZE;
        else if (c->body_left)
            c->st = ST_BODY;
        else
            request_done(c);
        return true;
    }
    if (c->st == ST_BODY || c->st == ST_CH_DATA) {
        size_t n = avail < c->body_left ? avail : (size_t)c->body_left;
        *pos += n;
        c->body_left -= n;
        if (c->body_left == 0 && c->st == ST_BODY)
            request_done(c);
        else if (c->body_left == 0)
            c->st = ST_CH_CRLF;
        return n > 0 || c->body_left == 0;
    }
    if (c->st == ST_CH_CRLF) {
        if (avail < 2)
            return false;
        if (p[0] != '\r' || p[1] != '\n')
            fail(c, 400);
        *pos += 2;
        c->st = ST_CH_SIZE;
        return true;
    }
    /* ST_CH_SIZE or ST_CH_TRAILER: a whole line is needed. */
    const char *e = memmem(p, avail, "\r\n", 2);
    if (!e) {
        if (avail > CHUNK_LINE_MAX)
            fail(c, 400);
        return false;
    }
    size_t ll = (size_t)(e - p), i = 0;
    *pos += ll + 2;
    if (c->st == ST_CH_TRAILER) {
        if (ll == 0)
            request_done(c);
        return true;
    }
    uint64_t size = 0;
    for (; i < ll && i < 16 && isxdigit((unsigned char)p[i]); i++)
        size = size * 16 +
               (uint64_t)(isdigit((unsigned char)p[i]) ? p[i] - '0' : (p[i] | 0x20) - 'a' + 10);
    if (i == 0 || i == 16 || (i < ll && p[i] != ';' && p[i] != ' ' && p[i] != '\t'))
        fail(c, 400);
    c->body_left = size;
    c->st = size ? ST_CH_DATA : ST_CH_TRAILER;
    return true;
}

/* Answers what is buffered, flushes, and sets the epoll interest. May free c. */
static void conn_run(struct conn *c)
{
    size_t pos = 0;
    while (!c->closing && c->st != ST_DELAY && c->st != ST_LINGER && c->out_len < OUT_HIGH &&
           step(c, &pos))
        ;
    if (pos > 0 && pos < c->in_len)
        memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    if (c->eof && c->st != ST_DELAY && c->out_len < OUT_HIGH)
        c->closing = true;
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0) {
            conn_free(c);
            return;
        }
        off += (size_t)n;
    }
    if (off > 0 && off < c->out_len)
        memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    if (c->closing && c->out_len == 0 && c->st != ST_LINGER) {
        if (c->eof) {
            conn_free(c);
            return;
        }
        /* Closing with unread input would reset the connection and could destroy the answer
         * in flight: send FIN, then drain input until the client closes or LINGER_MS. */
        (void)shutdown(c->fd, SHUT_WR);
        c->st = ST_LINGER;
        timer_set(c, LINGER_MS);
    }
    uint32_t ev = c->out_len ? EPOLLOUT : 0;
    if (c->st == ST_LINGER || (!c->closing && !c->eof && c->st != ST_DELAY &&
                               c->out_len < OUT_HIGH && c->in_len < IN_CAP))
        ev |= EPOLLIN;
    if (ev != c->events) {
        (void)set_events(c->fd, c, ev, EPOLL_CTL_MOD);
        c->events = ev;
    }
}

static void on_readable(struct conn *c)
{
    if (c->st == ST_LINGER) {
        char sink[4096];
        ssize_t n = recv(c->fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            conn_free(c);
        return;
    }
    if (c->in_len == c->in_cap) {
        char *in = realloc(c->in, IN_CAP);
        if (!in) {
            conn_free(c);
            return;
        }
        c->in = in;
        c->in_cap = IN_CAP;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n > 0)
        c->in_len += (size_t)n;
    else if (n == 0)
        c->eof = true;
    else if (errno != EAGAIN && errno != EINTR) {
        conn_free(c);
        return;
    }
    conn_run(c);
}

static void on_accept(void)
{
    for (int i = 0; i < 64; i++) { /* bounded so a connection storm cannot starve the loop */
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* Level-triggered: stop listening until a connection closes, or we spin. */
                accept_paused = true;
                (void)set_events(lfd, &tag_listen, 0, EPOLL_CTL_MOD);
            }
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        char *in = malloc(IN_START);
        if (!c || !in) {
            free(c);
            free(in);
            close(fd);
            continue;
        }
        *c = (struct conn){.fd = fd, .events = EPOLLIN, .in = in, .in_cap = IN_START};
        if (set_events(fd, c, EPOLLIN, EPOLL_CTL_ADD) < 0)
            conn_free(c);
    }
}

static void fire_timers(void)
{
    uint64_t now = now_ms();
    for (struct conn *c = timers, *next; c; c = next) {
        next = c->tnext;
        if (c->deadline_ms > now)
            continue;
        timer_clear(c);
        if (c->st == ST_LINGER) {
            conn_free(c);
        } else {
            delay_end(c);
            c->st = ST_HEAD;
            emit(c, &c->pending);
            conn_run(c);
        }
    }
}

static int next_timeout(void)
{
    uint64_t now = now_ms(), min = UINT64_MAX;
    for (struct conn *c = timers; c; c = c->tnext)
        if (c->deadline_ms < min)
            min = c->deadline_ms;
    return min == UINT64_MAX ? -1 : min <= now ? 0 : (int)(min - now);
}

static int listen_on(const char *addr, uint16_t port)
{
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = htons(port)};
    bool v4 = inet_pton(AF_INET, addr, &s4.sin_addr) == 1;
    if (!v4 && inet_pton(AF_INET6, addr, &s6.sin6_addr) != 1)
        return -EINVAL;
    int fd = socket(v4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, v4 ? (struct sockaddr *)&s4 : (struct sockaddr *)&s6, v4 ? sizeof s4 : sizeof s6) <
            0 ||
        listen(fd, SOMAXCONN) < 0) {
        int err = -errno;
        if (fd >= 0)
            close(fd);
        return err;
    }
    return fd;
}

int main(void)
{
    const char *port_s = getenv("PORT"), *addr = getenv("BIND_ADDR"), *g = getenv("GREETING");
    uint64_t port = 8080;
    if (port_s && *port_s && (!parse_uint(port_s, strlen(port_s), 65535, &port) || port == 0)) {
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"PORT must be 1..65535\"}\n");
        return 2;
    }
    /* Every address of the replica's own network namespace: stoke publishes
     * the port on the host's 127.0.0.1 only. On the host network
     * (spec.network: host) set BIND_ADDR=127.0.0.1. */
    addr = addr && *addr ? addr : "0.0.0.0";
    g = g ? g : "hello";
    /* On the host network a container shares the host's name, so stoke passes the
     * replica's own name. */
    char host[256] = "unknown";
    const char *replica = getenv("STOKE_REPLICA");
    if (replica && *replica)
        snprintf(host, sizeof host, "%s", replica);
    else
        (void)gethostname(host, sizeof host - 1);
    const char *target = getenv("TARGET");
    bool knative = target && *target;
    greeting_len = knative ? strlen(target) + 8 : strlen(g) + strlen(host) + 7;
    greeting = malloc(greeting_len + 1);
    if (!greeting)
        return 1;
    if (knative)
        snprintf(greeting, greeting_len + 1, "Hello %s!\n", target);
    else
        snprintf(greeting, greeting_len + 1, "%s from %s\n", g, host);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Blocked signals are delivered through the signalfd even to PID 1 in a container,
     * where a signal left at its default action would be ignored. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    lfd = listen_on(addr, (uint16_t)port);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (lfd < 0 || sfd < 0 || ep < 0) {
        fprintf(stderr,
                "{\"level\":\"error\",\"msg\":\"cannot listen\",\"addr\":\"%s\","
                "\"port\":%u,\"err\":\"%s\"}\n",
                lfd == -EINVAL ? "invalid" : addr, (unsigned)port,
                strerror(lfd < 0 ? -lfd : errno));
        return 1;
    }
    if (set_events(lfd, &tag_listen, EPOLLIN, EPOLL_CTL_ADD) < 0 ||
        set_events(sfd, &tag_signal, EPOLLIN, EPOLL_CTL_ADD) < 0) {
        perror("epoll_ctl");
        return 1;
    }
    fprintf(stderr, "{\"level\":\"info\",\"msg\":\"listening\",\"addr\":\"%s\",\"port\":%u}\n",
            addr, (unsigned)port);

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, next_timeout());
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            void *ptr = evs[i].data.ptr;
            uint32_t ev = evs[i].events;
            if (ptr == &tag_signal) {
                fprintf(stderr, "{\"level\":\"info\",\"msg\":\"signal received, exiting\"}\n");
                return 0;
            }
            if (ptr == &tag_listen) {
                on_accept();
            } else if (ev & (EPOLLERR | EPOLLHUP)) {
                conn_free(ptr);
            } else if (ev & EPOLLIN) {
                on_readable(ptr);
            } else if (ev & EPOLLOUT) {
                conn_run(ptr);
            }
        }
        fire_timers();
    }
}
