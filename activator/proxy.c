#include "proxy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>

#include "metrics.h"
#include "shared.h"
#include "stoke/list.h"
#include "stoke/log.h"

#define POKE_INTERVAL_MS 100
#define DRAIN_BATCH 64             /* queued requests sent on per loop iteration */
#define WRITE_HIGH_WATER (1 << 20) /* stop reading upstream past this much unsent */
#define MAX_TRIES 3                /* sends of one request before 502 */
/* A replica that refused a connect (or did not answer it) is passed over
 * this long: its requests wait in the queue for another, or for the
 * controller to replace it, instead of failing. */
#define REFUSED_MS 1000
#define MAX_PENDING_INPUT (64 * 1024) /* pipelined bytes held while busy */
#define BODY_HOLD (256 * 1024)        /* request body read before it streams on */
#define REQUEST_ID_MAX 128            /* longest X-Request-Id passed on as it came */
#define LINGER_MS 2000                /* reading what a closed-on client still sends */
#define LINGER_MAX_BYTES (1u << 20)   /* ... and at most this much of it */
#define RQ_FREE_MAX 256               /* free request states a worker keeps */
#define RQ_KEEP_BYTES 4096            /* a request buffer's storage kept for the next */

struct proxy;
struct fn;

/* RFC 9112 7.1: chunk data ends with CRLF. llhttp 8.1 takes any two bytes
 * there, so both parsers count each chunk's data and check those two bytes
 * themselves (chunk_data(), chunk_start_read()). */
struct chunk_check {
    uint64_t left; /* data bytes of the current chunk still to come */
    uint8_t crlf;  /* bytes of its CRLF still to check (2, 1, 0) */
};

/* One ready replica of a function. Held by its function while routed, and
 * by each upstream connection to it; freed when both let go. Its slots are
 * counted for the whole process in `lim` (shared.h); `inflight` counts this
 * worker's requests only, for draining. */
struct endpoint {
    struct stoke_addr addr;
    struct fn *fn;
    struct lim_ep *lim;
    unsigned worker; /* its proxy's, for lim (fn may be gone first) */
    uint32_t share;  /* the slots the controller gave this activator, 0: not divided */
    uint32_t inflight;
    uint32_t refs;
    uint64_t refused_until;  /* loop ms: a connect to it failed; passed over until then */
    bool gone;               /* no longer in the route table */
    struct stoke_list idle;  /* pooled upstream connections */
    struct stoke_list dnode; /* px->draining while gone with requests in flight */
    struct stoke_list onode; /* px->over while its share was lowered below its requests */
    uint32_t n_idle;
};

/* A routed function. Held by the table while routed and by each request
 * that was dispatched or queued for it. */
struct fn {
    struct proxy *px;
    struct fn *hnext;        /* px->buckets chain */
    struct stoke_list lnode; /* px->fn_list */
    struct stoke_list anode; /* px->active while it has traffic to report */
    uint64_t seen;           /* the table apply that listed it last */
    struct lim_fn *lim;      /* the process's queue count and waiters (shared.h) */
    struct stoke_route cfg;  /* cfg.endpoints unused: see eps */
    struct endpoint **eps;
    size_t n_eps;
    struct stoke_list queue; /* waiting clients, oldest first */
    struct stoke_list wnode; /* px->waiting while queued > 0 */
    uint32_t queued;         /* this worker's; the process's: lim */
    uint32_t inflight;
    uint32_t refs;
    bool gone;
    bool kicked;
    bool internal;          /* px->events_fn: never reported to the controller */
    struct stoke_list kick; /* in px->kicks while queued work may proceed */
    /* Time-weighted concurrency since the last stats call, in request-ns:
     * the monotonic clock, not the loop's millisecond, or requests that
     * end within a millisecond would add nothing and light traffic would
     * read as idle. */
    double integral;
    uint64_t mark_ns;
    uint64_t stats_base_ns;
    uint64_t requests;
    uint64_t last_poke_ms;
    struct metrics_fn *m; /* its counters; outlive it */
};

enum client_state {
    C_IDLE,     /* between requests (idle timer) */
    C_HEAD,     /* reading the request head (header timer) */
    C_BODY,     /* head read, being routed (transient) */
    C_QUEUED,   /* waiting for a replica (queue timer) */
    C_UPSTREAM, /* sent on; response streaming (request deadline) */
    C_TUNNEL,   /* after a 101: bytes pass both ways untouched */
    C_FLUSH,    /* final bytes written, close when they are flushed */
    C_LINGER,   /* FIN sent; what the client still sends is dropped (LINGER_MS) */
    C_CLOSED,
};

struct upstream;
struct request;

/* A client connection. While it is between requests it holds only this:
 * the request state (struct request, with the parser, the body timer and
 * every buffer) is taken from the worker's free list at a request's first
 * byte and given back once its answer is out, so an idle keep-alive
 * connection costs its socket, its timer and these few fields. */
struct client {
    uv_tcp_t tcp;
    uv_timer_t timer; /* header, idle, queue or deadline: see the states */
    struct proxy *px;
    struct request *rq;      /* the request in progress; NULL between requests */
    struct stoke_list node;  /* px->clients */
    struct stoke_list qnode; /* fn->queue while queued */
    struct stoke_buf in;     /* bytes received while busy with a request */
    size_t in_off;           /* ... of which those before this are parsed */
    uv_timer_cb due_cb;      /* what the timer runs, and when (loop time): */
    uint64_t due;            /* see timer_start() */
    uint64_t armed;          /* when the libuv timer fires */
    uint32_t lingered;       /* bytes dropped in C_LINGER */
    uint32_t pending_writes;
    uint8_t handles;
    uint8_t state; /* enum client_state */
    bool driving;  /* in client_drive(): held input is parsed in its loop */
    bool trusted;  /* the peer is a trusted proxy (--trusted-proxies) */
    bool read_stopped;
    bool counted; /* holds a place under --max-connections */
    char ip[INET6_ADDRSTRLEN];
};

/* The state of one request, from its first byte until its answer is out
 * (or its connection closes). Free ones wait in px->free_rqs with their
 * timer initialised and their buffers' small storage kept, so a request
 * allocates nothing. */
struct request {
    struct stoke_list fnode; /* px->free_rqs while free */
    llhttp_t parser;
    uv_timer_t body_timer; /* the longest pause while a request body streams in */
    const char *exec_base; /* the buffer llhttp is parsing, and the byte */
    char prev_byte;        /* before it: see on_req_value */
    const char *exec_end;
    struct chunk_check chunk;
    struct stoke_buf batch; /* response bytes of one upstream read, see client_flush() */
    bool batching;

    /* The request being read. */
    struct stoke_buf url, field, value, headers, host, xff, upgrade;
    struct stoke_buf conn_tokens; /* Connection values, comma-separated */
    char request_id[REQUEST_ID_MAX + 1];
    size_t head_bytes;
    uint64_t body_bytes;     /* received so far */
    uint64_t content_length; /* as declared (llhttp counts its copy down) */
    int error_status;
    bool expect_continue;
    bool chunked_seen; /* a valid Transfer-Encoding header was read */
    bool keep_alive;
    bool dispatched; /* routed; the body (if any) streams on as it comes */
    bool in_body;    /* body bytes still to come from the client */
    bool has_body;   /* the request has a body, even an empty chunked one */
    uint8_t method;
    uint8_t http_minor;

    /* The request being proxied. */
    struct fn *fn;
    struct endpoint *ep;
    struct upstream *up;
    /* The request for the replica. A body is held (de-chunked) until it is
     * complete, and then sent with a Content-Length, or until it passes
     * BODY_HOLD, and then it streams on with the client's framing: so a
     * small request is checked whole before a replica sees a byte of it,
     * and a large one passes in constant memory. See request_pump(). */
    struct stoke_buf out;  /* the head, less framing and the blank line */
    struct stoke_buf hold; /* body bytes not sent yet (or kept for a retry) */
    bool head_sent;        /* on c->rq->up */
    bool streaming;        /* the body goes on as it comes */
    bool last_sent;        /* the end of a streamed chunked body */
    bool retry_lost;       /* streamed bytes are gone: no retry */
    struct metrics_fn *m;  /* set while a routed request is measured */
    uint64_t start_ns;     /* uv_hrtime() at the end of the request head */
    int status;            /* sent to the client, 0 before */
    int tries;
    bool response_started;
    bool close_after;
    bool tunnel_eof; /* the client half-closed its side of the tunnel */
    bool head_timed; /* the header timer runs (see on_req_begin()) */
};

struct upstream {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_timer_t timer;
    int handles;
    struct proxy *px;
    struct endpoint *ep;
    struct client *c;
    struct stoke_list node; /* ep->idle while pooled */
    uint64_t pooled_at;     /* loop time it was last put in the pool */
    struct metrics_fn *m;
    llhttp_t parser;
    bool connected;
    bool reused;
    bool got_bytes;
    bool closing;
    bool reading;
    bool done;
    bool rechunk;
    bool has_request_id;              /* the response carries its own X-Request-Id */
    bool tunnel_eof;                  /* the replica half-closed its side of the tunnel */
    const char *exec_base, *exec_end; /* as in struct client */
    char prev_byte;
    struct chunk_check chunk;
    struct stoke_buf reason, field, value, head, upgrade;
    struct stoke_buf conn_tokens; /* the response's Connection values */
};

struct proxy {
    uv_loop_t *loop;
    struct proxy_config cfg;
    uv_tcp_t listener;
    uv_idle_t drain;
    uv_timer_t refused; /* when replicas passed over (REFUSED_MS) may be tried again */
    int handles;
    bool closing;
    void (*on_closed)(void *);
    void *closed_data;
    struct proxy_hooks hooks;
    uint64_t gen;               /* of the route table in use */
    bool routed;                /* it has had a route table */
    struct stoke_list draining; /* endpoints gone with requests in flight */
    struct stoke_list over;     /* endpoints whose lowered share they may be over */
    /* The routed functions: a hash table by name (chained, a power of two
     * buckets, grown at one function per bucket), and a list to walk. */
    struct fn **buckets;
    size_t n_buckets;
    size_t n_fns;
    struct stoke_list fn_list;
    struct stoke_list active; /* functions with traffic since the last stats report */
    uint64_t stats_ns;        /* the last stats report (uv_hrtime()) */
    uint64_t apply_seq;
    struct fn *events_fn;    /* cfg.has_events: stoke-events, outside the table */
    uv_timer_t events_timer; /* cfg.events_host: resolved again on it */
    uv_getaddrinfo_t events_gai;
    bool events_resolved;
    struct stoke_list clients;
    uint32_t n_clients;
    struct stoke_list free_rqs; /* struct request, ready for the next request */
    uint32_t n_free_rqs;
    struct stoke_list kicks;
    struct stoke_list waiting; /* functions with requests in this worker's queue */
    struct limits *limits;     /* shared by the workers (hooks), or this proxy's own */
    bool own_limits;
    unsigned worker;
    uv_async_t wake; /* another worker freed a slot a queued request may take */
    unsigned rr;
    /* The last request id given: 16 random hex digits (so ids differ
     * across workers and restarts), then a sequence number in 16. */
    char request_id_next[33];
    llhttp_settings_t req_settings;
    llhttp_settings_t resp_settings;
};

/* ---- formatting ------------------------------------------------------- */

/* Writes `pre`, then `v` in base 10 or 16 (base 0: no number and no
 * `post`), then `post` at `dst`, NUL-terminated; returns the length. The
 * framing lines of every request, without printf's cost. `dst` must hold
 * strlen(pre) + strlen(post) + 21. */
static size_t fmt_line(char *dst, const char *pre, const char *post, uint64_t v, unsigned base)
{
    size_t n = strlen(pre);
    memcpy(dst, pre, n);
    if (base) {
        char t[20];
        size_t k = 0;
        do {
            t[k++] = "0123456789abcdef"[v % base];
            v /= base;
        } while (v);
        while (k)
            dst[n++] = t[--k];
        size_t pl = strlen(post);
        memcpy(dst + n, post, pl);
        n += pl;
    }
    dst[n] = '\0';
    return n;
}

/* stoke_buf_append() with its common case, bytes that fit the storage
 * already there, inline: the head builders call it a few dozen times per
 * request. */
static inline int buf_put(struct stoke_buf *b, const void *p, size_t n)
{
    if (n < b->cap - b->len && n <= b->limit - b->len) {
        if (n)
            memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
    }
    return stoke_buf_append(b, p, n);
}

#define BUF_LIT(b, s) buf_put((b), (s), sizeof(s) - 1)

/* stoke_buf_clear(), inline. */
static inline void buf_clear(struct stoke_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

/* ---- checks both parsers share ------------------------------------------ */

/* A chunk's size line was parsed (llhttp holds the size in content_length). */
static void chunk_header(struct chunk_check *k, const llhttp_t *p)
{
    k->left = p->content_length;
    k->crlf = 0;
}

/* Checks the bytes from `p` to `end` against the rest of a chunk's CRLF.
 * Returns false on anything else. */
static bool chunk_crlf_ok(struct chunk_check *k, const char *p, const char *end)
{
    for (; k->crlf > 0 && p < end; p++, k->crlf--) {
        if (*p != (k->crlf == 2 ? '\r' : '\n'))
            return false;
    }
    return true;
}

/* `len` data bytes of a chunked body were parsed, ending at `at + len` in
 * the buffer ending at `end`. Returns false when the chunk's data is over
 * and what follows it is not CRLF (as far as the buffer shows; the rest is
 * checked by chunk_start_read()). */
static bool chunk_data(struct chunk_check *k, const char *at, size_t len, const char *end)
{
    k->left = len >= k->left ? 0 : k->left - len;
    if (k->left > 0)
        return true;
    k->crlf = 2;
    return chunk_crlf_ok(k, at + len, end);
}

/* Before the parser sees a new read: a chunk's CRLF split across reads. */
static bool chunk_start_read(struct chunk_check *k, const char *data, size_t len)
{
    return k->crlf == 0 || chunk_crlf_ok(k, data, data + len);
}

/* llhttp 8 accepts obsolete line folding: it passes the continuation line
 * as another piece of the value, starting right after the LF. A value never
 * otherwise starts after one (it follows ':' and OWS), so this is how a fold
 * is told from a value split across reads. RFC 9112 5.2 lets a recipient
 * refuse folds (a server with 400, a proxy taking a response with 502). */
static bool is_fold(const char *at, const char *exec_base, char prev_byte)
{
    return (at > exec_base ? at[-1] : prev_byte) == '\n';
}

/* The comma-separated tokens of a Connection header (RFC 9110 7.6.1),
 * sorted ignoring case, so that filtering n header lines by m tokens costs
 * O((n + m) log m), not O(n * m). */
struct tokens {
    struct token {
        const char *p;
        size_t n;
    } * t;
    size_t n;
};

static int token_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = strncasecmp(a, b, an < bn ? an : bn);
    return c ? c : (an > bn) - (an < bn);
}

static int token_sort_cmp(const void *a, const void *b)
{
    const struct token *x = a, *y = b;
    return token_cmp(x->p, x->n, y->p, y->n);
}

/* The next element of the comma-separated list at *p (before `end`), less
 * spaces and tabs around it, and its length in *len (0: an empty one); *p
 * moves past its comma. */
static const char *next_token(const char **p, const char *end, size_t *len)
{
    const char *s = *p;
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *tend = comma ? comma : end;
    while (s < tend && (*s == ' ' || *s == '\t'))
        s++;
    const char *q = tend;
    while (q > s && (q[-1] == ' ' || q[-1] == '\t'))
        q--;
    *len = (size_t)(q - s);
    *p = tend + 1;
    return s;
}

/* Returns 0 or -ENOMEM; `list` must outlive `tk`. */
static int tokens_parse(struct tokens *tk, const struct stoke_buf *list)
{
    tk->t = NULL;
    tk->n = 0;
    if (list->len == 0)
        return 0;
    size_t n = 1;
    for (const char *q = list->data; (q = memchr(q, ',', list->len - (size_t)(q - list->data)));
         q++)
        n++;
    tk->t = malloc(n * sizeof(*tk->t));
    if (!tk->t)
        return -ENOMEM;
    const char *p = list->data, *end = list->data + list->len;
    while (p < end) {
        size_t tl;
        const char *t = next_token(&p, end, &tl);
        if (tl > 0)
            tk->t[tk->n++] = (struct token){t, tl};
    }
    qsort(tk->t, tk->n, sizeof(*tk->t), token_sort_cmp);
    return 0;
}

static bool tokens_has(const struct tokens *tk, const char *name, size_t nl)
{
    size_t lo = 0, hi = tk->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = token_cmp(tk->t[mid].p, tk->t[mid].n, name, nl);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* Appends the "Name: value\r\n" lines of `src` to `dst`, less those named
 * by the Connection tokens in `list` (hop-by-hop, RFC 9110 7.6.1). Returns 0
 * or a negative errno. */
static int append_filtered(struct stoke_buf *dst, const struct stoke_buf *src,
                           const struct stoke_buf *list)
{
    if (src->len == 0)
        return 0;
    if (list->len == 0)
        return buf_put(dst, src->data, src->len);
    struct tokens tk;
    int r = tokens_parse(&tk, list);
    const char *p = src->data, *end = src->data + src->len;
    while (r == 0 && p < end) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!colon || !eol)
            break;
        if (!tokens_has(&tk, p, (size_t)(colon - p)))
            r = buf_put(dst, p, (size_t)(eol + 1 - p));
        p = eol + 1;
    }
    free(tk.t);
    return r;
}

static void client_close(struct client *c);
static void client_abort_upstream(struct client *c);
static void client_finish_request(struct client *c);
static size_t client_parse(struct client *c, const char *data, size_t len);
static void send_error(struct client *c, int status, bool close_conn);
static void client_log(const struct client *c, const char *fn, enum stoke_log_level level, int err,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void dispatch(struct client *c);
static void upstream_close(struct upstream *up);
static void upstream_failed(struct upstream *up, int err);
static void kick(struct fn *fn);
static void proxy_handle_closed(struct proxy *px);
static void client_linger(struct client *c);
static void client_drive(struct client *c);
static void timer_start(struct client *c, uv_timer_cb cb, uint64_t ms);
static void on_idle_timeout(uv_timer_t *t);

void proxy_config_defaults(struct proxy_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    (void)stoke_addr_parse("127.0.0.1:8080", &cfg->listen);
    cfg->domain = "localhost";
    cfg->max_header_bytes = 16 * 1024;
    cfg->max_body_bytes = 16 * 1024 * 1024;
    cfg->header_timeout_ms = 10000;
    cfg->idle_timeout_ms = 60000;
    cfg->connect_timeout_ms = 2000;
    cfg->max_connections = 10000;
    cfg->max_idle_upstream = 256;
}

static void cidr_mask(unsigned char *a, size_t len, unsigned bits)
{
    for (size_t i = 0; i < len; i++) {
        unsigned keep = bits >= 8 * (i + 1) ? 8 : bits > 8 * i ? bits - 8 * (unsigned)i : 0;
        a[i] &= (unsigned char)(0xff00u >> keep);
    }
}

int proxy_parse_trusted(const char *list, struct proxy_config *cfg)
{
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char item[64];
        if (n == 0 || n >= sizeof(item) || cfg->n_trusted >= PROXY_MAX_TRUSTED)
            return -EINVAL;
        memcpy(item, p, n);
        item[n] = '\0';
        struct proxy_cidr *t = &cfg->trusted[cfg->n_trusted];
        char *slash = strchr(item, '/');
        if (slash)
            *slash = '\0';
        memset(t, 0, sizeof(*t));
        t->family = strchr(item, ':') ? AF_INET6 : AF_INET;
        unsigned max = t->family == AF_INET6 ? 128 : 32;
        if (inet_pton(t->family, item, t->a) != 1)
            return -EINVAL;
        t->bits = max;
        if (slash) {
            char *end;
            errno = 0;
            unsigned long b = strtoul(slash + 1, &end, 10);
            if (!isdigit((unsigned char)slash[1]) || *end || b > max)
                return -EINVAL;
            t->bits = (unsigned)b;
        }
        cidr_mask(t->a, max / 8, t->bits);
        cfg->n_trusted++;
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* Whether the peer address `ss` is in one of the trusted networks (an
 * IPv4-mapped IPv6 peer is matched as IPv4). */
static bool peer_trusted(const struct proxy_config *cfg, const struct sockaddr_storage *ss)
{
    unsigned char a[16];
    int family = ss->ss_family;
    if (family == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (family == AF_INET6) {
        const struct in6_addr *v6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(v6)) {
            family = AF_INET;
            memcpy(a, v6->s6_addr + 12, 4);
        } else {
            memcpy(a, v6->s6_addr, 16);
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < cfg->n_trusted; i++) {
        const struct proxy_cidr *t = &cfg->trusted[i];
        if (t->family != family)
            continue;
        unsigned char m[16];
        size_t len = family == AF_INET ? 4 : 16;
        memcpy(m, a, len);
        cidr_mask(m, len, t->bits);
        if (memcmp(m, t->a, len) == 0)
            return true;
    }
    return false;
}

/* ---- functions and endpoints ------------------------------------------ */

static void fn_mark(struct fn *fn)
{
    uint64_t now = uv_hrtime();
    fn->integral += (double)(fn->inflight + fn->queued) * (double)(now - fn->mark_ns);
    fn->mark_ns = now;
    if (!fn->gone && !fn->internal && stoke_list_empty(&fn->anode)) {
        /* Traffic again: its report covers the time since the last one. */
        stoke_list_insert_tail(&fn->px->active, &fn->anode);
        if (fn->stats_base_ns < fn->px->stats_ns)
            fn->stats_base_ns = fn->px->stats_ns;
    }
}

/* One more or one less request in this worker's queue of `fn` (the
 * caller moves the client): keeps the process's count, and this worker's
 * bit among the function's waiters, in step. */
static void fn_queued_add(struct fn *fn, int delta)
{
    fn_mark(fn);
    metrics_gauge(fn->m, METRICS_QUEUED, delta);
    if (delta > 0) {
        if (fn->queued++ == 0) {
            stoke_list_insert_tail(&fn->px->waiting, &fn->wnode);
            lim_fn_set_waiting(fn->lim, fn->px->worker, true);
        }
        return;
    }
    lim_fn_queue_put(fn->lim);
    if (--fn->queued == 0) {
        stoke_list_remove(&fn->wnode);
        lim_fn_set_waiting(fn->lim, fn->px->worker, false);
    }
}

static void fn_unref(struct fn *fn)
{
    if (--fn->refs > 0)
        return;
    if (fn->lim)
        limits_fn_put(fn->lim, fn->px->worker);
    free(fn->eps);
    free(fn);
}

static void endpoint_unref(struct endpoint *ep)
{
    if (--ep->refs > 0)
        return;
    stoke_list_remove(&ep->onode);
    if (ep->lim)
        limits_ep_put(ep->lim, ep->worker);
    free(ep);
}

static size_t name_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static struct fn *fn_find(struct proxy *px, const char *name)
{
    if (!px->n_buckets)
        return NULL;
    for (struct fn *fn = px->buckets[name_hash(name) & (px->n_buckets - 1)]; fn; fn = fn->hnext) {
        if (strcmp(fn->cfg.name, name) == 0)
            return fn;
    }
    return NULL;
}

/* Adds a function (not there yet) to the table. Returns 0 or -ENOMEM. */
static int fn_insert(struct proxy *px, struct fn *fn)
{
    if (px->n_fns >= px->n_buckets) {
        size_t nb = px->n_buckets ? px->n_buckets * 2 : 64;
        struct fn **b = calloc(nb, sizeof(*b));
        if (!b)
            return -ENOMEM;
        for (size_t i = 0; i < px->n_buckets; i++) {
            for (struct fn *f = px->buckets[i], *next; f; f = next) {
                next = f->hnext;
                size_t h = name_hash(f->cfg.name) & (nb - 1);
                f->hnext = b[h];
                b[h] = f;
            }
        }
        free(px->buckets);
        px->buckets = b;
        px->n_buckets = nb;
    }
    size_t h = name_hash(fn->cfg.name) & (px->n_buckets - 1);
    fn->hnext = px->buckets[h];
    px->buckets[h] = fn;
    stoke_list_insert_tail(&px->fn_list, &fn->lnode);
    px->n_fns++;
    return 0;
}

/* Takes a function out of the table (the caller retires it). */
static void fn_unlink(struct proxy *px, struct fn *fn)
{
    struct fn **pp = &px->buckets[name_hash(fn->cfg.name) & (px->n_buckets - 1)];
    while (*pp && *pp != fn)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = fn->hnext;
    fn->hnext = NULL;
    stoke_list_remove(&fn->lnode);
    px->n_fns--;
}

static bool addr_equal(const struct stoke_addr *a, const struct stoke_addr *b)
{
    char x[80], y[80];
    stoke_addr_format(a, x, sizeof(x));
    stoke_addr_format(b, y, sizeof(y));
    return strcmp(x, y) == 0;
}

/* Drops a replica from routing: no new requests; pooled connections close;
 * requests in flight on it finish. */
static void endpoint_retire(struct endpoint *ep)
{
    ep->gone = true;
    if (ep->inflight > 0)
        stoke_list_insert_tail(&ep->fn->px->draining, &ep->dnode);
    while (!stoke_list_empty(&ep->idle)) {
        struct upstream *up =
            stoke_container_of(stoke_list_first(&ep->idle), struct upstream, node);
        upstream_close(up);
    }
    endpoint_unref(ep);
}

/* Fails every request queued for a function that left the table. */
static void fn_retire(struct fn *fn)
{
    fn->gone = true;
    stoke_list_remove(&fn->anode);
    for (size_t i = 0; i < fn->n_eps; i++)
        endpoint_retire(fn->eps[i]);
    fn->n_eps = 0;
    if (fn->kicked) {
        stoke_list_remove(&fn->kick);
        fn->kicked = false;
    }
    while (!stoke_list_empty(&fn->queue)) {
        struct client *c = stoke_container_of(stoke_list_first(&fn->queue), struct client, qnode);
        send_error(c, 404, false);
    }
    fn_unref(fn);
}

/* Builds the new endpoint list of `fn` from route `r`, keeping the state of
 * replicas that stay, and sets this worker's wish for the process's limits.
 * Returns 0 or -ENOMEM (fn unchanged). */
static int fn_update(struct fn *fn, const struct stoke_route *r)
{
    struct endpoint **eps = NULL;
    if (r->n_endpoints > 0) {
        eps = calloc(r->n_endpoints, sizeof(*eps));
        if (!eps)
            return -ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < r->n_endpoints; i++) {
        struct endpoint *ep = NULL;
        for (size_t j = 0; j < fn->n_eps; j++) {
            if (fn->eps[j] && addr_equal(&fn->eps[j]->addr, &r->endpoints[i])) {
                ep = fn->eps[j];
                fn->eps[j] = NULL;
                break;
            }
        }
        if (!ep) {
            char a[80];
            stoke_addr_format(&r->endpoints[i], a, sizeof(a));
            ep = calloc(1, sizeof(*ep));
            if (ep)
                ep->worker = fn->px->worker;
            if (ep && !(ep->lim = limits_ep_get(fn->lim, fn->px->worker, a))) {
                free(ep);
                ep = NULL;
            }
            if (!ep) {
                /* Put back what was taken so fn stays as it was. */
                for (size_t k = 0; k < n; k++)
                    endpoint_unref(eps[k]);
                free(eps);
                return -ENOMEM;
            }
            ep->addr = r->endpoints[i];
            ep->fn = fn;
            ep->refs = 1;
            stoke_list_init(&ep->idle);
            stoke_list_init(&ep->dnode);
            stoke_list_init(&ep->onode);
        }
        eps[n++] = ep;
    }
    for (size_t j = 0; j < fn->n_eps; j++) {
        if (fn->eps[j])
            endpoint_retire(fn->eps[j]);
    }
    free(fn->eps);
    fn->eps = eps;
    fn->n_eps = n;
    /* A replica's slots: this activator's share when the controller divides
     * them among several, else containerConcurrency (0: no limit). */
    for (size_t i = 0; i < n; i++) {
        eps[i]->share = r->shares ? r->shares[i] : 0;
        limits_ep_configure(eps[i]->lim, fn->px->worker,
                            r->shares ? r->shares[i] : r->concurrency_limit);
        /* Only a lowered share puts it over: proxy_draining() watches it. */
        if (lim_ep_over(eps[i]->lim) && stoke_list_empty(&eps[i]->onode))
            stoke_list_insert_tail(&fn->px->over, &eps[i]->onode);
    }
    limits_fn_configure(fn->lim, fn->px->worker, r->queue_max);
    /* Waiters in other workers may fit now. */
    lim_fn_wake(fn->lim, fn->px->worker);

    fn->cfg = *r;
    fn->cfg.endpoints = NULL; /* owned by the table; see fn->eps */
    fn->cfg.shares = NULL;
    fn->cfg.n_endpoints = 0;
    fn->cfg.triggers = NULL; /* stoke-events' business: not kept */
    fn->cfg.n_triggers = 0;
    return 0;
}

/* A new function named `name`, in no table, or NULL on OOM. */
static struct fn *fn_new(struct proxy *px, const char *name)
{
    struct fn *fn = calloc(1, sizeof(*fn));
    if (fn && !(fn->lim = limits_fn_get(px->limits, px->worker, name))) {
        free(fn);
        fn = NULL;
    }
    if (!fn)
        return NULL;
    fn->px = px;
    fn->refs = 1;
    fn->mark_ns = uv_hrtime();
    fn->stats_base_ns = fn->mark_ns;
    fn->m = metrics_fn_get(px->hooks.metrics, name);
    snprintf(fn->cfg.name, sizeof(fn->cfg.name), "%s", name);
    stoke_list_init(&fn->queue);
    stoke_list_init(&fn->kick);
    stoke_list_init(&fn->wnode);
    stoke_list_init(&fn->anode);
    return fn;
}

/* stoke-events as a function of its own, outside the table (so neither
 * routed by name nor reported to the controller): one replica, its ingest
 * address (none while a name has not been resolved yet), no concurrency
 * limit. Its metrics read function="_events". Returns 0 or -ENOMEM. */
static int events_route(struct proxy *px)
{
    struct stoke_route r;
    memset(&r, 0, sizeof(r));
    snprintf(r.name, sizeof(r.name), "_events");
    r.timeout_ms = 30 * 1000;
    r.queue_max = 10000;
    r.queue_timeout_ms = 10 * 1000;
    r.endpoints = &px->cfg.events;
    r.n_endpoints = px->cfg.events_host[0] && !px->events_resolved ? 0 : 1;
    stoke_async_defaults(&r.async);
    struct fn *fn = px->events_fn;
    if (!fn) {
        fn = fn_new(px, r.name);
        if (!fn)
            return -ENOMEM;
        fn->internal = true;
        px->events_fn = fn;
    }
    if (fn_update(fn, &r) < 0)
        return -ENOMEM;
    if (fn->queued > 0)
        kick(fn);
    return 0;
}

static void on_events_timer(uv_timer_t *t);

/* The first address of cfg.events_host becomes stoke-events' replica when
 * it differs from the one in use (a Service's ClusterIP stays; a name
 * that lists pods, as the test cluster's stand-in does, moves with its
 * pod). A failed lookup keeps the address in use. */
static void on_events_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct proxy *px = req->data;
    if (!px->closing) {
        struct stoke_addr a;
        memset(&a, 0, sizeof(a));
        if (status == 0 && res && res->ai_addrlen <= sizeof(a.ss))
            memcpy(&a.ss, res->ai_addr, res->ai_addrlen);
        if (status < 0 || !res) {
            stoke_debug(NULL, "stoke-events name %s: %s", px->cfg.events_host, uv_strerror(status));
        } else if (!px->events_resolved || !addr_equal(&a, &px->cfg.events)) {
            char f[80];
            stoke_addr_format(&a, f, sizeof(f));
            px->cfg.events = a;
            px->events_resolved = true;
            if (events_route(px) < 0)
                stoke_error(NULL, -ENOMEM, "stoke-events address update dropped");
            else if (px->worker == 0)
                stoke_info(NULL, "stoke-events %s is at %s", px->cfg.events_host, f);
        }
        uv_timer_start(&px->events_timer, on_events_timer, PROXY_EVENTS_RESOLVE_MS, 0);
    }
    uv_freeaddrinfo(res);
    proxy_handle_closed(px);
}

static void on_events_timer(uv_timer_t *t)
{
    struct proxy *px = t->data;
    const struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_NUMERICSERV,
    };
    px->events_gai.data = px;
    if (uv_getaddrinfo(px->loop, &px->events_gai, on_events_resolved, px->cfg.events_host,
                       px->cfg.events_port, &hints) == 0)
        px->handles++; /* the request holds the proxy until its callback */
    else
        uv_timer_start(&px->events_timer, on_events_timer, PROXY_EVENTS_RESOLVE_MS, 0);
}

/* Sets function `r` (found by name, or added) from its route. Returns it,
 * or NULL on OOM (a new one is then left out, a known one keeps its
 * replicas). */
static struct fn *fn_apply(struct proxy *px, const struct stoke_route *r)
{
    struct fn *fn = fn_find(px, r->name);
    if (!fn) {
        fn = fn_new(px, r->name);
        if (!fn)
            return NULL;
        if (fn_insert(px, fn) < 0) {
            fn_unref(fn);
            return NULL;
        }
    }
    if (fn_update(fn, r) < 0)
        stoke_error(r->name, -ENOMEM, "replica list update dropped");
    /* Queued requests may go to replicas that arrived. */
    if (fn->queued > 0)
        kick(fn);
    return fn;
}

static void fn_remove(struct proxy *px, struct fn *fn)
{
    fn_unlink(px, fn);
    fn_retire(fn);
}

void proxy_set_routes(struct proxy *px, struct stoke_route_table *t)
{
    uint64_t seq = ++px->apply_seq;
    for (size_t i = 0; i < t->n_routes; i++) {
        struct fn *fn = fn_apply(px, &t->routes[i]);
        if (fn)
            fn->seen = seq;
        else
            stoke_error(t->routes[i].name, -ENOMEM, "left out of the route table");
    }
    /* The functions the table no longer lists leave. */
    for (struct stoke_list *n = px->fn_list.next; n != &px->fn_list;) {
        struct fn *fn = stoke_container_of(n, struct fn, lnode);
        n = n->next;
        if (fn->seen != seq)
            fn_remove(px, fn);
    }
    px->gen = t->gen;
    px->routed = true;
    stoke_route_table_done(t);
}

void proxy_update_routes(struct proxy *px, struct stoke_route_update *u)
{
    for (size_t i = 0; i < u->n_routes; i++) {
        if (!fn_apply(px, &u->routes[i]))
            stoke_error(u->routes[i].name, -ENOMEM, "route update dropped");
    }
    for (size_t i = 0; i < u->n_removed; i++) {
        struct fn *fn = fn_find(px, u->removed[i]);
        if (fn)
            fn_remove(px, fn);
    }
    px->gen = u->gen;
    stoke_route_update_done(u);
}

size_t proxy_functions(const struct proxy *px)
{
    return px->n_fns;
}

struct metrics_worker *proxy_metrics(const struct proxy *px)
{
    return px->hooks.metrics;
}

void proxy_stats(struct proxy *px, proxy_stat_cb cb, void *data)
{
    px->stats_ns = uv_hrtime();
    for (struct stoke_list *n = px->active.next; n != &px->active;) {
        struct fn *fn = stoke_container_of(n, struct fn, anode);
        n = n->next;
        fn_mark(fn);
        /* The window is the time since the previous report; at least 1 ms
         * so a report right after the first does not divide by zero. */
        static const double min_ns = 1e6;
        double window = (double)(fn->mark_ns - fn->stats_base_ns);
        if (window < min_ns)
            window = min_ns;
        cb(fn->cfg.name, fn->integral / window, fn->requests, data);
        fn->integral = 0;
        fn->requests = 0;
        fn->stats_base_ns = fn->mark_ns;
        /* Idle now: reported again once it has traffic (the controller
         * counts a function not reported as idle that second). */
        if (fn->inflight + fn->queued == 0)
            stoke_list_remove(&fn->anode);
    }
}

uint64_t proxy_routes_gen(const struct proxy *px)
{
    return px->gen;
}

void proxy_draining(struct proxy *px, void (*cb)(const char *addr, void *data), void *data)
{
    for (struct stoke_list *n = px->draining.next; n != &px->draining; n = n->next) {
        struct endpoint *ep = stoke_container_of(n, struct endpoint, dnode);
        char addr[80];
        stoke_addr_format(&ep->addr, addr, sizeof(addr));
        cb(addr, data);
    }
    /* And those with more requests in flight than a lowered share allows:
     * the controller gives the slots to another activator once they end.
     * Only a lowering puts one over (fn_update() lists it); once back
     * within its share, or gone, it leaves the list. */
    for (struct stoke_list *n = px->over.next; n != &px->over;) {
        struct endpoint *ep = stoke_container_of(n, struct endpoint, onode);
        char addr[80];
        n = n->next;
        if (ep->gone || !lim_ep_over(ep->lim)) {
            stoke_list_remove(&ep->onode);
            continue;
        }
        stoke_addr_format(&ep->addr, addr, sizeof(addr));
        cb(addr, data);
    }
}

void proxy_slots(struct proxy *px, proxy_slots_cb cb, void *data)
{
    for (struct stoke_list *n = px->fn_list.next; n != &px->fn_list; n = n->next) {
        const struct fn *fn = stoke_container_of(n, struct fn, lnode);
        for (size_t j = 0; j < fn->n_eps; j++) {
            const struct endpoint *ep = fn->eps[j];
            char addr[80];
            if (ep->share == 0)
                continue;
            stoke_addr_format(&ep->addr, addr, sizeof(addr));
            cb(fn->cfg.name, addr, ep->share, data);
        }
    }
}

void proxy_waiting(struct proxy *px, proxy_poke_cb cb, void *data)
{
    for (struct stoke_list *n = px->waiting.next; n != &px->waiting; n = n->next)
        cb(stoke_container_of(n, struct fn, wnode)->cfg.name, data);
}

/* ---- client writes ----------------------------------------------------- */

struct wreq {
    uv_write_t req;
    struct client *c;
    char *heap; /* the bytes when not inline (a flushed batch), or NULL */
    char data[];
};

static void upstream_resume(struct upstream *up);

/* Every read lands in this thread's one buffer: a read callback takes what
 * it needs (the parsers copy, held bytes are copied) before it returns, and
 * a loop runs one callback at a time. Saves a malloc and free per read. */
static void read_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static _Thread_local char bytes[64 * 1024];
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(bytes, sizeof(bytes));
}

static void on_client_write(uv_write_t *req, int status)
{
    struct wreq *w = stoke_container_of(req, struct wreq, req);
    struct client *c = w->c;
    free(w->heap);
    free(w);
    c->pending_writes--;
    if (c->state == C_CLOSED)
        return;
    if (status < 0) {
        client_close(c);
        return;
    }
    if (c->state == C_FLUSH) {
        if (c->pending_writes == 0)
            client_linger(c);
        else /* the client reads on: it gets the time to read the rest */
            timer_start(c, on_idle_timeout, c->px->cfg.idle_timeout_ms);
        return;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >= WRITE_HIGH_WATER / 2)
        return;
    if (c->rq && c->rq->up && !c->rq->up->reading)
        upstream_resume(c->rq->up);
    else if ((c->state == C_IDLE || c->state == C_HEAD) && c->read_stopped)
        client_drive(c); /* it caught up: its held requests are next */
}

/* Writes what the socket takes at once, without copying: the bytes written,
 * or a negative errno. Nothing is written while earlier writes wait. */
static ssize_t try_write(uv_stream_t *s, const uv_buf_t *parts, size_t n)
{
    int r = uv_try_write(s, parts, (unsigned)n);
    return r == UV_EAGAIN ? 0 : r;
}

/* Copies the bytes of `parts` after the first `skip` to `dst`; returns how
 * many. */
static size_t copy_rest(char *dst, const uv_buf_t *parts, size_t n, size_t skip)
{
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip >= parts[i].len) {
            skip -= parts[i].len;
            continue;
        }
        memcpy(dst + off, parts[i].base + skip, parts[i].len - skip);
        off += parts[i].len - skip;
        skip = 0;
    }
    return off;
}

/* Queues `n` pieces as one write, after writing what the socket takes at
 * once. Returns 0 or a negative errno (the client is then closed by the
 * caller's next step). */
static int client_flush(struct client *c);

static int client_writev(struct client *c, const uv_buf_t *parts, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += parts[i].len;
    if (c->rq->batching) {
        /* Collected and written once the upstream read is parsed: a head
         * and a body arriving together leave in one write. */
        if (c->rq->batch.len + total > c->rq->batch.limit) {
            int r = client_flush(c);
            if (r < 0)
                return r;
        }
        for (size_t i = 0; i < n; i++) {
            int r = buf_put(&c->rq->batch, parts[i].base, parts[i].len);
            if (r < 0)
                return r;
        }
        return 0;
    }
    ssize_t done = try_write((uv_stream_t *)&c->tcp, parts, n);
    if (done < 0)
        return (int)done;
    if ((size_t)done == total)
        return 0;
    struct wreq *w = malloc(sizeof(*w) + total - (size_t)done);
    if (!w)
        return -ENOMEM;
    w->c = c;
    w->heap = NULL;
    size_t left = copy_rest(w->data, parts, n, (size_t)done);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)left);
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_client_write);
    if (r < 0) {
        free(w);
        return r;
    }
    c->pending_writes++;
    return 0;
}

/* Writes what was batched, in one write. Returns 0 or a negative errno. */
static int client_flush(struct client *c)
{
    if (c->rq->batch.len == 0)
        return 0;
    uv_buf_t all = uv_buf_init(c->rq->batch.data, (unsigned)c->rq->batch.len);
    ssize_t done = try_write((uv_stream_t *)&c->tcp, &all, 1);
    if (done < 0)
        return (int)done;
    if ((size_t)done == c->rq->batch.len) {
        /* Small storage is kept for the next answer; a big one goes, so an
         * idle connection holds little. */
        if (c->rq->batch.cap > 4096)
            stoke_buf_done(&c->rq->batch);
        else
            buf_clear(&c->rq->batch);
        return 0;
    }
    struct wreq *w = malloc(sizeof(*w));
    if (!w)
        return -ENOMEM;
    size_t len;
    w->c = c;
    w->heap = stoke_buf_steal(&c->rq->batch, &len);
    uv_buf_t b = uv_buf_init(w->heap + done, (unsigned)(len - (size_t)done));
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_client_write);
    if (r < 0) {
        free(w->heap);
        free(w);
        return r;
    }
    c->pending_writes++;
    return 0;
}

static int client_write(struct client *c, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    return client_writev(c, &b, 1);
}

static const char *status_reason(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

/* The current request is over (answered, or its client left): counted,
 * and logged when the access log is on. Only once per request. */
static void request_end(struct client *c)
{
    if (!c->rq)
        return;
    uint64_t start = c->rq->start_ns;
    c->rq->start_ns = 0;
    if (c->px->cfg.access_log && start) {
        uint64_t now = uv_hrtime();
        struct stoke_log_field f[] = {
            {.key = "request_id", .str = c->rq->request_id[0] ? c->rq->request_id : "-"},
            {.key = "client", .str = c->ip},
            {.key = "method", .str = llhttp_method_name(c->rq->method)},
            {.key = "target", .str = c->rq->url.data ? c->rq->url.data : ""},
            {.key = "status", .num = c->rq->status > 0 ? c->rq->status : 499},
            {.key = "duration_ms", .num = (double)(now - start) / 1e6, .decimals = 3},
            {.key = "request_body_bytes", .num = (double)c->rq->body_bytes},
        };
        stoke_log_fields(STOKE_LOG_INFO, c->rq->fn ? c->rq->fn->cfg.name : NULL, 0, f,
                         STOKE_ARRAY_SIZE(f), "request");
    }
    metrics_request_end(&c->rq->m, c->rq->status, start);
}

/* The client's one timer runs `cb` `ms` from now (replacing what it was
 * set to). The libuv timer is moved only when that is earlier than it is
 * armed for: when it fires early, it is armed again for what is due then.
 * An idle, a request and the next idle time each come later than the one
 * before, so a request costs no timer-heap operation. */
static void on_client_timer(uv_timer_t *t)
{
    struct client *c = t->data;
    uint64_t now = uv_now(c->px->loop);
    if (now < c->due) {
        c->armed = c->due;
        uv_timer_start(t, on_client_timer, c->due - now, 0);
        return;
    }
    c->due_cb(t);
}

static void timer_start(struct client *c, uv_timer_cb cb, uint64_t ms)
{
    uint64_t now = uv_now(c->px->loop);
    c->due = now + ms;
    c->due_cb = cb;
    if (!uv_is_active((uv_handle_t *)&c->timer) || c->armed > c->due) {
        c->armed = c->due;
        uv_timer_start(&c->timer, on_client_timer, ms, 0);
    }
}

static void on_idle_timeout(uv_timer_t *t);
static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_client_shutdown(uv_shutdown_t *req, int status)
{
    (void)status; /* the client's FIN, or the linger timer, closes */
    free(req);
}

/* The last answer is out: FIN is sent, and what the client still sends (the
 * rest of an upload it was answered early, pipelined requests) is read and
 * dropped until it closes too or LINGER_MS pass. Closing with unread bytes
 * would send an RST, which may destroy the answer before the client reads
 * it (RFC 9112 9.6). */
static void client_linger(struct client *c)
{
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_client_shutdown) < 0) {
        free(req);
        client_close(c);
        return;
    }
    c->state = C_LINGER;
    if (c->rq)
        uv_timer_stop(&c->rq->body_timer);
    timer_start(c, on_idle_timeout, LINGER_MS);
    if (uv_read_start((uv_stream_t *)&c->tcp, read_alloc, on_client_read) < 0)
        client_close(c);
}

/* The answer written so far is the connection's last: nothing more is
 * parsed, and the connection closes (lingering) once the writes are
 * flushed, or when the client reads nothing of them for the idle time. */
static void client_close_after_flush(struct client *c)
{
    request_end(c);
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (c->rq)
        uv_timer_stop(&c->rq->body_timer);
    if (c->pending_writes == 0) {
        client_linger(c);
        return;
    }
    timer_start(c, on_idle_timeout, c->px->cfg.idle_timeout_ms);
    c->state = C_FLUSH;
}

/* Answers the current request with an error. With close_conn, or while
 * body bytes are still to come, the connection closes once the answer is
 * written; else it stays open for the next request. */
/* A log line about client c's current request, carrying its request id
 * once it has one (the id the function and the client see). `fn` NULL: the
 * client's function, if routed. */
static void client_log(const struct client *c, const char *fn, enum stoke_log_level level, int err,
                       const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const struct request *rq = c->rq;
    struct stoke_log_field f = {.key = "request_id", .str = rq ? rq->request_id : ""};
    if (!fn && rq && rq->fn)
        fn = rq->fn->cfg.name;
    stoke_log_fields(level, fn, err, &f, rq && rq->request_id[0] ? 1 : 0, "%s", msg);
}

/* The Connection header of an answer: "close" when the connection closes
 * after it; "keep-alive" to an HTTP/1.0 client when it stays open (its
 * default is to close, RFC 9112 9.3). */
static const char *connection_header(const struct client *c, bool close_conn)
{
    if (close_conn)
        return "Connection: close\r\n";
    return c->rq->http_minor == 0 ? "Connection: keep-alive\r\n" : "";
}

/* An error answer of the activator's own, counted under `reason`. */
static void send_error_as(struct client *c, int status, bool close_conn, enum metrics_reason reason)
{
    char head[256 + REQUEST_ID_MAX], body[128];
    int bl = snprintf(body, sizeof(body), "%d %s\n", status, status_reason(status));
    /* Unread body bytes would be taken for the next request. */
    if (!c->rq->keep_alive || c->rq->in_body)
        close_conn = true;
    int hl =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                 "%s%s%s%s%s\r\n",
                 status, status_reason(status), bl, status == 503 ? "Retry-After: 1\r\n" : "",
                 connection_header(c, close_conn), c->rq->request_id[0] ? "X-Request-Id: " : "",
                 c->rq->request_id, c->rq->request_id[0] ? "\r\n" : "");
    uv_buf_t parts[2] = {uv_buf_init(head, (unsigned)hl), uv_buf_init(body, (unsigned)bl)};
    bool head_only = c->rq->method == HTTP_HEAD;
    metrics_rejected(c->px->hooks.metrics, reason);
    c->rq->status = status;
    client_abort_upstream(c);
    int r = client_writev(c, parts, head_only ? 1 : 2);
    if (r < 0)
        client_close(c);
    else if (close_conn)
        client_close_after_flush(c);
    else
        client_finish_request(c);
}

static void send_error(struct client *c, int status, bool close_conn)
{
    send_error_as(c, status, close_conn, metrics_reason_of(status, c->state == C_QUEUED));
}

/* ---- request parsing ---------------------------------------------------- */

static struct client *parser_client(llhttp_t *p)
{
    return p->data;
}

/* Appends the NUL-terminated strings given, up to a NULL: the head
 * builders' formatting, without printf's cost on every request. Returns 0
 * or a negative errno. */
static int buf_cat(struct stoke_buf *b, ...)
{
    va_list ap;
    va_start(ap, b);
    int r = 0;
    for (const char *p; r == 0 && (p = va_arg(ap, const char *));)
        r = buf_put(b, p, strlen(p));
    va_end(ap);
    return r;
}

static int head_grow(struct client *c, struct stoke_buf *b, const char *at, size_t len, int status)
{
    c->rq->head_bytes += len;
    if (c->rq->head_bytes > c->px->cfg.max_header_bytes || buf_put(b, at, len) < 0) {
        c->rq->error_status = status;
        return -1;
    }
    return 0;
}

static int on_req_begin(llhttp_t *p)
{
    struct client *c = parser_client(p);
    /* The header timer starts when the head is not complete in the read
     * that began it (client_parse()): the same time, as the loop's clock
     * stands still in a callback, and no timer work for most requests. */
    c->state = C_HEAD;
    return 0;
}

static int on_req_url(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = parser_client(p);
    /* A line end right after the target is an HTTP/0.9 request ("GET /"),
     * which llhttp 8 would wait on for a version: refused now. */
    if (at + len < c->rq->exec_end && (at[len] == '\r' || at[len] == '\n')) {
        c->rq->error_status = 400;
        return -1;
    }
    return head_grow(c, &c->rq->url, at, len, 414);
}

static int on_req_field(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = parser_client(p);
    return head_grow(c, &c->rq->field, at, len, 431);
}

static int on_req_value(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = parser_client(p);
    if (is_fold(at, c->rq->exec_base, c->rq->prev_byte)) {
        c->rq->error_status = 400;
        return -1;
    }
    return head_grow(c, &c->rq->value, at, len, 431);
}

/* The header names either parser acts on (see header_kind()). */
enum hdr {
    H_OTHER,
    H_HOST,
    H_XFF,
    H_FORWARDED,
    H_X_REAL_IP,
    H_EXPECT,
    H_TRANSFER_ENCODING,
    H_CONNECTION,
    H_UPGRADE,
    H_REQUEST_ID,
    H_KEEP_ALIVE,
    H_PROXY_CONNECTION,
    H_TE,
    H_TRAILER,
    H_CONTENT_LENGTH,
    H_XF_PROTO,
    H_XF_HOST,
    H_PROXY_AUTHORIZATION,
};

/* Their names in lower case, by kind. */
static const char *const hdr_name[] = {
    [H_HOST] = "host",
    [H_XFF] = "x-forwarded-for",
    [H_FORWARDED] = "forwarded",
    [H_X_REAL_IP] = "x-real-ip",
    [H_EXPECT] = "expect",
    [H_TRANSFER_ENCODING] = "transfer-encoding",
    [H_CONNECTION] = "connection",
    [H_UPGRADE] = "upgrade",
    [H_REQUEST_ID] = "x-request-id",
    [H_KEEP_ALIVE] = "keep-alive",
    [H_PROXY_CONNECTION] = "proxy-connection",
    [H_TE] = "te",
    [H_TRAILER] = "trailer",
    [H_CONTENT_LENGTH] = "content-length",
    [H_XF_PROTO] = "x-forwarded-proto",
    [H_XF_HOST] = "x-forwarded-host",
    [H_PROXY_AUTHORIZATION] = "proxy-authorization",
};

/* Whether `s` (`len` bytes) is `lower` in any case; `lower` is lower case
 * letters and '-', as every name in hdr_name[]. Eight bytes at a time:
 * setting bit 5 of each byte puts A-Z in lower case and leaves a-z and '-'
 * as they are, and of the other bytes only CR (0x0d) becomes one of them
 * ('-'): a header name (a token, checked first) has none, and a Connection
 * token that did could name no header line anyway. */
static bool lower_eq(const char *s, const char *lower, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t a, b;
        memcpy(&a, s + i, 8);
        memcpy(&b, lower + i, 8);
        if ((a | 0x2020202020202020ull) != b)
            return false;
    }
    for (; i < len; i++) {
        if (((unsigned char)s[i] | 0x20) != (unsigned char)lower[i])
            return false;
    }
    return true;
}

/* The kind of header `name` is: its length, and for two lengths its first
 * letter, pick the one name it can be, which is then compared whole. */
static enum hdr header_kind(const char *name, size_t len)
{
    static const struct {
        uint8_t kind, other; /* other: when the first letter is `first` */
        char first;
    } by_len[20] = {
        [2] = {H_TE, 0, 0},
        [4] = {H_HOST, 0, 0},
        [6] = {H_EXPECT, 0, 0},
        [7] = {H_TRAILER, H_UPGRADE, 'u'},
        [9] = {H_X_REAL_IP, H_FORWARDED, 'f'},
        [10] = {H_KEEP_ALIVE, H_CONNECTION, 'c'},
        [12] = {H_REQUEST_ID, 0, 0},
        [14] = {H_CONTENT_LENGTH, 0, 0},
        [15] = {H_XFF, 0, 0},
        [16] = {H_XF_HOST, H_PROXY_CONNECTION, 'p'},
        [17] = {H_XF_PROTO, H_TRANSFER_ENCODING, 't'},
        [19] = {H_PROXY_AUTHORIZATION, 0, 0},
    };
    if (len >= STOKE_ARRAY_SIZE(by_len) || by_len[len].kind == H_OTHER)
        return H_OTHER;
    char f = (char)(name[0] | 0x20); /* a letter in lower case */
    enum hdr k = by_len[len].first && f == by_len[len].first ? by_len[len].other : by_len[len].kind;
    return lower_eq(name, hdr_name[k], len) ? k : H_OTHER;
}

/* Headers that describe one connection, not the message: never forwarded
 * either way (RFC 9110 7.6.1). */
static bool is_hop_by_hop(enum hdr k)
{
    switch (k) {
    case H_CONNECTION:
    case H_KEEP_ALIVE:
    case H_PROXY_CONNECTION:
    case H_TE:
    case H_TRAILER:
    case H_TRANSFER_ENCODING:
    case H_UPGRADE:
        return true;
    default:
        return false;
    }
}

/* The client's headers not forwarded as they came: the hop-by-hop ones;
 * Content-Length and Expect, as the body goes on with framing set here and
 * 100 Continue is answered here; X-Forwarded-Proto/-Host, replaced by ours;
 * Proxy-Authorization; X-Request-Id, checked and sent on by
 * build_upstream_request(). */
static bool is_dropped_request_header(enum hdr k)
{
    return is_hop_by_hop(k) || k == H_CONTENT_LENGTH || k == H_EXPECT || k == H_XF_PROTO ||
           k == H_XF_HOST || k == H_PROXY_AUTHORIZATION || k == H_REQUEST_ID;
}

/* RFC 9110 5.6.2: tchar. */
static const char tchar[256] = {
    ['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1,
    ['%'] = 1,         ['&'] = 1,         ['\''] = 1,        ['*'] = 1, ['+'] = 1, ['-'] = 1,
    ['.'] = 1,         ['^'] = 1,         ['_'] = 1,         ['`'] = 1, ['|'] = 1, ['~'] = 1,
};

/* RFC 9110 5.1: a field name is a token. llhttp 8 lets whitespace before
 * the colon through ("Transfer-Encoding : chunked"), which other parsers on
 * the path may read differently: refused. */
static bool is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!tchar[(unsigned char)s[i]])
            return false;
    }
    return true;
}

/* Appends the comma-separated tokens of Connection header value `val` to
 * `list` (comma-separated), less those naming headers that are never in the
 * lines it filters (see append_filtered()): `kept` says which are. So
 * "Connection: keep-alive" leaves nothing to filter by. Returns 0 or a
 * negative errno. */
static int conn_tokens_add(struct stoke_buf *list, const char *val, size_t n,
                           bool (*kept)(enum hdr))
{
    const char *p = val, *end = val + n;
    int r = 0;
    while (r == 0 && p < end) {
        size_t tl;
        const char *t = next_token(&p, end, &tl);
        if (tl > 0 && kept(header_kind(t, tl))) {
            if (list->len)
                r = BUF_LIT(list, ",");
            if (r == 0)
                r = buf_put(list, t, tl);
        }
    }
    return r;
}

/* Whether a header of kind k may be among the request lines filtered by
 * the client's Connection tokens (c->rq->headers). */
static bool in_request_lines(enum hdr k)
{
    return k == H_OTHER || k == H_FORWARDED || k == H_X_REAL_IP;
}

/* ... among the response lines filtered by the replica's (up->head). */
static bool in_response_lines(enum hdr k)
{
    return !is_hop_by_hop(k);
}

/* RFC 9110 7.2 and RFC 3986 3.2.2: a Host (or an absolute-form target's
 * authority) is a host, IP literal or name, and an optional port; no
 * userinfo, path or whitespace. */
static bool is_valid_host(const char *s, size_t len)
{
    size_t i = 0;
    if (len == 0)
        return false;
    /* 1: a reg-name's character; 2: also an IP literal's */
    static const char hostchar[256] = {
        ['0' ... '9'] = 3, ['a' ... 'f'] = 3, ['A' ... 'F'] = 3, ['g' ... 'z'] = 1,
        ['G' ... 'Z'] = 1, ['.'] = 3,         [':'] = 2,         ['-'] = 1,
        ['_'] = 1,         ['~'] = 1,         ['!'] = 1,         ['$'] = 1,
        ['&'] = 1,         ['\''] = 1,        ['('] = 1,         [')'] = 1,
        ['*'] = 1,         ['+'] = 1,         [','] = 1,         [';'] = 1,
        ['='] = 1,         ['%'] = 1,
    };
    if (s[0] == '[') {
        for (i = 1; i < len && s[i] != ']'; i++) {
            if (!(hostchar[(unsigned char)s[i]] & 2))
                return false;
        }
        if (i == len || i == 1)
            return false;
        i++;
    } else {
        for (; i < len && s[i] != ':'; i++) {
            if (!(hostchar[(unsigned char)s[i]] & 1))
                return false;
        }
        if (i == 0)
            return false;
    }
    if (i == len)
        return true;
    if (s[i] != ':' || len - i - 1 > 5)
        return false;
    for (i++; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
    }
    return true;
}

static void trim_value(struct stoke_buf *v)
{
    while (v->len > 0 && (v->data[v->len - 1] == ' ' || v->data[v->len - 1] == '\t'))
        v->data[--v->len] = '\0';
}

static int on_req_header_done(llhttp_t *p)
{
    struct client *c = parser_client(p);
    struct request *rq = c->rq;
    const char *name = rq->field.data ? rq->field.data : "";
    size_t nl = rq->field.len;
    trim_value(&rq->value);
    const char *val = rq->value.data ? rq->value.data : "";
    size_t vl = rq->value.len;
    int r = 0;

    if (rq->dispatched) {
        /* A trailer of a chunked body: not forwarded (the head is gone
         * already, and nothing declared it). */
        buf_clear(&rq->field);
        buf_clear(&rq->value);
        return 0;
    }
    if (!is_token(name, nl)) {
        rq->error_status = 400;
        return -1;
    }
    enum hdr kind = header_kind(name, nl);
    switch (kind) {
    case H_HOST:
        if (rq->host.len > 0 || !is_valid_host(val, vl)) {
            rq->error_status = 400; /* several Host headers, or a bad one */
            return -1;
        }
        r = buf_put(&rq->host, val, vl);
        break;
    case H_XFF:
        /* A client's own claim is dropped: the replica sees the peer's
         * address alone, unless the peer is a trusted proxy. */
        if (c->trusted) {
            if (rq->xff.len)
                r = BUF_LIT(&rq->xff, ", ");
            if (r == 0)
                r = buf_put(&rq->xff, val, vl);
        }
        break;
    case H_FORWARDED:
    case H_X_REAL_IP:
        /* claims about the client only a trusted proxy may make */
        if (c->trusted)
            goto forward;
        break;
    case H_EXPECT:
        if (strcasecmp(val, "100-continue") != 0) {
            rq->error_status = 417;
            return -1;
        }
        rq->expect_continue = true;
        break;
    case H_TRANSFER_ENCODING:
        /* The body is de-chunked here (and sent on with a Content-Length,
         * or re-chunked when it streams), so any other coding ("gzip,
         * chunked") could not be forwarded as it came; a second header is
         * how TE.TE smuggling starts. */
        if (rq->chunked_seen || strcasecmp(val, "chunked") != 0) {
            rq->error_status = 400;
            return -1;
        }
        rq->chunked_seen = true;
        break;
    case H_CONNECTION:
        r = conn_tokens_add(&rq->conn_tokens, val, vl, in_request_lines);
        break;
    case H_UPGRADE:
        if (rq->upgrade.len)
            r = BUF_LIT(&rq->upgrade, ", ");
        if (r == 0)
            r = buf_put(&rq->upgrade, val, vl);
        break;
    case H_REQUEST_ID:
        /* Kept when it is a plain token of sane length; else ours replaces
         * it, so a log line or header never carries what a client made up
         * to confuse them. */
        if (vl <= REQUEST_ID_MAX && is_token(val, vl) && !rq->request_id[0])
            memcpy(rq->request_id, val, vl + 1);
        break;
    default:
        if (is_dropped_request_header(kind))
            break;
    forward:
        r = buf_put(&rq->headers, name, nl);
        if (r == 0)
            r = BUF_LIT(&rq->headers, ": ");
        if (r == 0)
            r = buf_put(&rq->headers, val, vl);
        if (r == 0)
            r = BUF_LIT(&rq->headers, "\r\n");
        break;
    }
    buf_clear(&rq->field);
    buf_clear(&rq->value);
    if (r < 0) {
        rq->error_status = 431;
        return -1;
    }
    return 0;
}

/* An absolute-form target ("http://host:port/path?q", RFC 9112 3.2.2):
 * its authority replaces the Host header, which it must match in form, and
 * the target becomes the origin-form rest. Returns 0 or -EINVAL. */
static int absolute_form(struct client *c)
{
    const char *u = c->rq->url.data;
    size_t n = c->rq->url.len, skip;
    if (n > 7 && strncasecmp(u, "http://", 7) == 0)
        skip = 7;
    else if (n > 8 && strncasecmp(u, "https://", 8) == 0)
        skip = 8;
    else
        return -EINVAL;
    const char *auth = u + skip, *end = u + n, *rest = auth;
    while (rest < end && *rest != '/' && *rest != '?')
        rest++;
    if (!is_valid_host(auth, (size_t)(rest - auth)))
        return -EINVAL;
    buf_clear(&c->rq->host);
    struct stoke_buf path;
    stoke_buf_init(&path, c->rq->url.limit);
    int r = buf_put(&c->rq->host, auth, (size_t)(rest - auth));
    if (r == 0)
        r = buf_cat(&path, *rest == '/' ? "" : "/", (char *)NULL);
    if (r == 0)
        r = buf_put(&path, rest, (size_t)(end - rest));
    if (r < 0) {
        stoke_buf_done(&path);
        return -EINVAL;
    }
    stoke_buf_done(&c->rq->url);
    c->rq->url = path;
    return 0;
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct client *c = parser_client(p);
    c->state = C_BODY;
    c->rq->start_ns = uv_hrtime();
    c->rq->method = (uint8_t)llhttp_get_method(p);
    c->rq->http_minor = llhttp_get_http_minor(p);
    if (llhttp_get_http_major(p) != 1) {
        c->rq->error_status = 400;
        return -1;
    }
    if (c->rq->host.len == 0 && c->rq->http_minor >= 1) {
        c->rq->error_status = 400; /* HTTP/1.1 requires Host (RFC 9112 3.2) */
        return -1;
    }
    if (c->rq->chunked_seen && c->rq->http_minor == 0) {
        c->rq->error_status = 400; /* framing an HTTP/1.0 peer cannot mean (RFC 9112 6.1) */
        return -1;
    }
    if (c->rq->method == HTTP_CONNECT) {
        c->rq->error_status = 501; /* no tunnels: this is not a forward proxy */
        return -1;
    }
    if (c->rq->url.len > 0 && c->rq->url.data[0] != '/' && absolute_form(c) < 0) {
        /* Origin-form or absolute-form only: authority-form is CONNECT's,
         * and asterisk-form (OPTIONS *) names no function. */
        c->rq->error_status = 400;
        return -1;
    }
    if (c->rq->url.len == 0) {
        c->rq->error_status = 400;
        return -1;
    }
    uint64_t limit = c->px->cfg.max_body_bytes;
    if (limit && p->content_length > limit && !(p->flags & F_CHUNKED)) {
        c->rq->error_status = 413;
        return -1;
    }
    c->rq->keep_alive = llhttp_should_keep_alive(p);
    /* (the client's timer is set next, as the request is routed or
     * answered, in this same callback) */
    c->rq->content_length = p->content_length;
    c->rq->has_body = (p->flags & F_CHUNKED) || p->content_length > 0;
    if (!c->rq->has_body)
        return 0; /* routed once complete, see client_parse() */
    /* Routed now; the body follows as it arrives (client_parse()). */
    c->rq->in_body = true;
    uint64_t t = c->px->cfg.header_timeout_ms;
    uv_timer_start(&c->rq->body_timer, on_idle_timeout, t, t);
    return HPE_PAUSED;
}

static void client_stop_reading(struct client *c)
{
    if (!c->read_stopped) {
        c->read_stopped = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
        if (c->rq)
            uv_timer_stop(&c->rq->body_timer); /* waiting on us, not on the client */
    }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void client_resume_reading(struct client *c)
{
    if (c->read_stopped && c->state != C_CLOSED && c->state != C_FLUSH) {
        c->read_stopped = false;
        uv_read_start((uv_stream_t *)&c->tcp, read_alloc, on_client_read);
        uint64_t t = c->px->cfg.header_timeout_ms;
        if (c->rq && c->rq->in_body && !c->rq->response_started)
            uv_timer_start(&c->rq->body_timer, on_idle_timeout, t, t);
    }
}

static int upstream_writev(struct upstream *up, const uv_buf_t *parts, size_t n);

/* Moves the request on to the replica as far as it can go: nothing before
 * a connection is ready; the head with the whole held body once it is
 * complete (or BODY_HOLD passed); then streamed body bytes as they come.
 * Returns 0 or a negative errno. */
static int request_pump(struct client *c)
{
    struct upstream *up = c->rq->up;
    if (!up || !up->connected)
        return 0;
    uv_buf_t parts[5];
    size_t n = 0;
    char framing[64];
    bool complete = !c->rq->in_body;
    if (!c->rq->head_sent) {
        if (!complete && c->rq->hold.len <= BODY_HOLD)
            return 0;
        c->rq->head_sent = true;
        c->rq->streaming = !complete;
        size_t fl;
        if (c->rq->chunked_seen && c->rq->streaming)
            fl = fmt_line(framing, "Transfer-Encoding: chunked\r\n\r\n", NULL, 0, 0);
        else if (c->rq->chunked_seen)
            fl = fmt_line(framing, "Content-Length: ", "\r\n\r\n", c->rq->hold.len, 10);
        else if (c->rq->has_body || c->rq->method == HTTP_POST || c->rq->method == HTTP_PUT ||
                 c->rq->method == HTTP_PATCH)
            fl = fmt_line(framing, "Content-Length: ", "\r\n\r\n", c->rq->content_length, 10);
        else
            fl = fmt_line(framing, "\r\n", NULL, 0, 0);
        parts[n++] = uv_buf_init(c->rq->out.data, (unsigned)c->rq->out.len);
        parts[n++] = uv_buf_init(framing, (unsigned)fl);
        if (!c->rq->streaming && c->rq->hold.len)
            parts[n++] = uv_buf_init(c->rq->hold.data, (unsigned)c->rq->hold.len);
    }
    char size[24];
    if (c->rq->streaming && c->rq->hold.len) {
        if (c->rq->chunked_seen) {
            size_t sl = fmt_line(size, "", "\r\n", c->rq->hold.len, 16);
            parts[n++] = uv_buf_init(size, (unsigned)sl);
        }
        parts[n++] = uv_buf_init(c->rq->hold.data, (unsigned)c->rq->hold.len);
        if (c->rq->chunked_seen)
            parts[n++] = uv_buf_init("\r\n", 2);
    }
    if (c->rq->streaming && complete && !c->rq->last_sent) {
        c->rq->last_sent = true;
        if (c->rq->chunked_seen)
            parts[n++] = uv_buf_init("0\r\n\r\n", 5);
    }
    if (n == 0)
        return 0;
    int r = upstream_writev(up, parts, n);
    if (c->rq->streaming) {
        /* What streamed is gone: a failure from here on is a 502. The held
         * bytes of a complete body stay for a retry instead. */
        c->rq->retry_lost = true;
        buf_clear(&c->rq->hold);
    }
    return r;
}

static int on_req_body(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = parser_client(p);
    uint64_t limit = c->px->cfg.max_body_bytes;
    c->rq->body_bytes += len;
    if (limit && c->rq->body_bytes > limit) {
        c->rq->error_status = 413;
        return -1;
    }
    if (!c->rq->response_started)
        uv_timer_again(&c->rq->body_timer);
    if ((p->flags & F_CHUNKED) && !chunk_data(&c->rq->chunk, at, len, c->rq->exec_end)) {
        c->rq->error_status = 400;
        return -1;
    }
    if (buf_put(&c->rq->hold, at, len) < 0) {
        c->rq->error_status = 413;
        return -1;
    }
    return 0;
}

static int on_req_chunk_header(llhttp_t *p)
{
    chunk_header(&parser_client(p)->rq->chunk, p);
    return 0;
}

static int on_req_complete(llhttp_t *p)
{
    struct client *c = parser_client(p);
    if (c->rq->in_body) {
        c->rq->in_body = false;
        uv_timer_stop(&c->rq->body_timer);
    }
    return HPE_PAUSED;
}

/* A buffer's storage is kept for the next request when it is this small,
 * and freed when it is bigger. */
static void buf_trim(struct stoke_buf *b)
{
    if (b->cap > RQ_KEEP_BYTES)
        stoke_buf_done(b);
    else
        buf_clear(b);
}

static void request_reset(struct request *rq)
{
    buf_trim(&rq->url);
    buf_trim(&rq->field);
    buf_trim(&rq->value);
    buf_trim(&rq->headers);
    buf_trim(&rq->host);
    buf_trim(&rq->xff);
    buf_trim(&rq->conn_tokens);
    buf_trim(&rq->upgrade);
    buf_trim(&rq->out);
    buf_trim(&rq->hold);
    rq->head_sent = false;
    rq->streaming = false;
    rq->last_sent = false;
    rq->retry_lost = false;
    rq->request_id[0] = '\0';
    rq->start_ns = 0;
    rq->head_bytes = 0;
    rq->body_bytes = 0;
    rq->content_length = 0;
    rq->error_status = 0;
    rq->expect_continue = false;
    rq->chunked_seen = false;
    rq->chunk = (struct chunk_check){0};
    rq->dispatched = false;
    rq->in_body = false;
    rq->has_body = false;
    rq->method = HTTP_GET;
    rq->http_minor = 0;
    rq->m = NULL;
    rq->status = 0;
    rq->tries = 0;
    rq->response_started = false;
    rq->close_after = false;
    rq->tunnel_eof = false;
    rq->head_timed = false;
    rq->keep_alive = true;
}

/* ---- request state: the worker's free list ------------------------------ */

static void on_request_closed(uv_handle_t *h)
{
    struct request *rq = stoke_container_of(h, struct request, body_timer);
    struct proxy *px = h->data;
    stoke_buf_done(&rq->batch);
    stoke_buf_done(&rq->url);
    stoke_buf_done(&rq->field);
    stoke_buf_done(&rq->value);
    stoke_buf_done(&rq->headers);
    stoke_buf_done(&rq->host);
    stoke_buf_done(&rq->xff);
    stoke_buf_done(&rq->conn_tokens);
    stoke_buf_done(&rq->upgrade);
    stoke_buf_done(&rq->out);
    stoke_buf_done(&rq->hold);
    free(rq);
    proxy_handle_closed(px);
}

static void request_free(struct proxy *px, struct request *rq)
{
    rq->body_timer.data = px;
    uv_close((uv_handle_t *)&rq->body_timer, on_request_closed);
}

/* The request state for client c's next request: a free one, or a new one.
 * NULL when out of memory. */
static struct request *request_get(struct client *c)
{
    struct proxy *px = c->px;
    struct request *rq;
    if (!stoke_list_empty(&px->free_rqs)) {
        /* the last put back: the warmest in the caches */
        rq = stoke_container_of(px->free_rqs.prev, struct request, fnode);
        stoke_list_remove(&rq->fnode);
        px->n_free_rqs--;
    } else {
        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return NULL;
        size_t h = px->cfg.max_header_bytes;
        stoke_list_init(&rq->fnode);
        uv_timer_init(px->loop, &rq->body_timer);
        px->handles++;
        stoke_buf_init(&rq->batch, 2 * WRITE_HIGH_WATER);
        stoke_buf_init(&rq->url, h);
        stoke_buf_init(&rq->field, h);
        stoke_buf_init(&rq->value, h);
        stoke_buf_init(&rq->headers, 2 * h);
        stoke_buf_init(&rq->host, h);
        stoke_buf_init(&rq->xff, h + 64);
        stoke_buf_init(&rq->conn_tokens, h);
        stoke_buf_init(&rq->upgrade, h);
        stoke_buf_init(&rq->out, 4 * h);
        /* Reading stops past BODY_HOLD, so the held pipelined input (parsed
         * in one go) fits on top of it. */
        stoke_buf_init(&rq->hold, BODY_HOLD + MAX_PENDING_INPUT + 4 * 65536);
        request_reset(rq);
        llhttp_init(&rq->parser, HTTP_REQUEST, &px->req_settings);
    }
    rq->parser.data = c;
    rq->body_timer.data = c;
    c->rq = rq;
    return rq;
}

/* Gives client c's request state back (reset already, see request_reset()):
 * to the free list, or freed when that holds RQ_FREE_MAX. */
static void request_put(struct client *c)
{
    struct proxy *px = c->px;
    struct request *rq = c->rq;
    c->rq = NULL;
    uv_timer_stop(&rq->body_timer);
    if (rq->batch.cap > 4096)
        stoke_buf_done(&rq->batch);
    else
        buf_clear(&rq->batch);
    rq->batching = false;
    rq->prev_byte = '\0';
    rq->exec_base = rq->exec_end = NULL;
    llhttp_reset(&rq->parser);
    if (px->closing || px->n_free_rqs >= RQ_FREE_MAX) {
        request_free(px, rq);
        return;
    }
    stoke_list_insert_tail(&px->free_rqs, &rq->fnode);
    px->n_free_rqs++;
}

/* ---- client lifecycle -------------------------------------------------- */

static void on_client_handle_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    if (--c->handles > 0)
        return;
    struct proxy *px = c->px;
    stoke_buf_done(&c->in);
    if (c->rq) {
        request_reset(c->rq);
        request_put(c);
    }
    free(c);
    proxy_handle_closed(px);
}

/* Releases the replica slot and function reference of the request. */
static void client_release(struct client *c)
{
    if (!c->rq)
        return;
    if (c->rq->up) {
        c->rq->up->c = NULL;
        c->rq->up = NULL;
    }
    if (c->rq->ep) {
        struct fn *fn = c->rq->ep->fn;
        fn_mark(fn);
        c->rq->ep->inflight--;
        fn->inflight--;
        if (lim_ep_put(c->rq->ep->lim))
            limits_drain_changed(c->px->limits); /* back within a lowered share */
        metrics_gauge(fn->m, METRICS_IN_FLIGHT, -1);
        if (fn->queued > 0 && !fn->gone)
            kick(fn);
        /* A queued request of another worker may take the slot. */
        if (lim_fn_queued(fn->lim) > fn->queued)
            lim_fn_wake(fn->lim, c->px->worker);
        if (c->rq->ep->gone && c->rq->ep->inflight == 0 && !stoke_list_empty(&c->rq->ep->dnode)) {
            stoke_list_remove(&c->rq->ep->dnode);
            c->px->hooks.on_drained(c->px->hooks.data);
        }
        endpoint_unref(c->rq->ep);
        c->rq->ep = NULL;
    }
    if (c->rq->fn) {
        if (c->state == C_QUEUED) {
            stoke_list_remove(&c->qnode);
            fn_queued_add(c->rq->fn, -1);
            c->state = C_BODY;
        }
        fn_unref(c->rq->fn);
        c->rq->fn = NULL;
    }
}

/* Ends the request's use of its replica; a connection still carrying it is
 * closed, since a half-read response leaves it unusable. */
static void client_abort_upstream(struct client *c)
{
    struct upstream *up = c->rq ? c->rq->up : NULL;
    client_release(c);
    if (up)
        upstream_close(up);
}

static void client_close(struct client *c)
{
    if (c->state == C_CLOSED)
        return;
    request_end(c);
    client_abort_upstream(c);
    c->state = C_CLOSED;
    stoke_list_remove(&c->node);
    c->px->n_clients--;
    if (c->counted)
        limits_conn_put(c->px->limits);
    if (c->rq)
        uv_timer_stop(&c->rq->body_timer); /* the request state is put back when closed */
    metrics_connections(c->px->hooks.metrics, -1);
    uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_client_handle_closed);
}

static void on_idle_timeout(uv_timer_t *t)
{
    struct client *c = t->data;
    if (c->state == C_HEAD ||
        (c->rq && c->rq->in_body && c->state != C_FLUSH && c->state != C_LINGER)) {
        /* A slow sender: closed, and a replica that got part of the
         * request sees its connection close too. */
        client_log(c, NULL, STOKE_LOG_DEBUG, 0, "client timed out sending a request");
        metrics_rejected(c->px->hooks.metrics, METRICS_CLIENT_TIMEOUT);
    }
    client_close(c);
}

static void tunnel_client_read(struct client *c, ssize_t nread, const uv_buf_t *buf);

/* Whether the client is behind on reading its answers: past this, nothing
 * more is read or parsed from it until they drain (see on_client_write). */
static bool client_backlogged(struct client *c)
{
    return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_HIGH_WATER;
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = s->data;
    if (c->state == C_TUNNEL) {
        tunnel_client_read(c, nread, buf);
        return;
    }
    if (c->state == C_LINGER) {
        c->lingered += nread > 0 ? (uint32_t)nread : 0;
        if (nread < 0 || c->lingered > LINGER_MAX_BYTES)
            client_close(c);
        return;
    }
    if (nread < 0) {
        /* EOF or error: a client that left while its request waited or was
         * in flight is not answered; its replica slot is released. */
        client_close(c);
        return;
    }
    if (nread > 0) {
        if (c->state == C_IDLE || c->state == C_HEAD ||
            (c->rq->in_body && (c->state == C_QUEUED || c->state == C_UPSTREAM))) {
            /* Parsed in place; what follows a complete request is held
             * until its answer is out (client_drive() parses it then). */
            c->driving = true;
            size_t used = client_parse(c, buf->base, (size_t)nread);
            c->driving = false;
            if (c->state == C_CLOSED || c->state == C_FLUSH || c->state == C_LINGER)
                return;
            if (used < (size_t)nread &&
                buf_put(&c->in, buf->base + used, (size_t)nread - used) < 0) {
                client_close(c);
                return;
            }
            if (c->rq->in_body && request_pump(c) < 0) {
                send_error(c, 502, true);
            } else if (c->rq->in_body &&
                       (c->rq->hold.len > BODY_HOLD ||
                        (c->rq->up && uv_stream_get_write_queue_size(
                                          (uv_stream_t *)&c->rq->up->tcp) > WRITE_HIGH_WATER))) {
                /* Backpressure: the replica, or the wait for one, holds
                 * enough of this body for now. */
                client_stop_reading(c);
            } else {
                client_drive(c);
            }
        } else if (c->state != C_FLUSH && c->state != C_CLOSED) {
            /* Pipelined bytes while a request is busy: hold them, bounded. */
            if (buf_put(&c->in, buf->base, (size_t)nread) < 0 || c->in.len >= MAX_PENDING_INPUT)
                client_stop_reading(c);
        }
    }
}

/* The request is malformed at llhttp's method: an unknown method that is
 * still a well-formed token ("FOO /x HTTP/1.1") is not a bad request but
 * one this server does not implement (RFC 9110 9.1: 501). */
static int bad_method_status(const char *data, size_t len)
{
    size_t i = 0;
    while (i < len && (data[i] == '\r' || data[i] == '\n'))
        i++;
    size_t start = i;
    for (; i < len && data[i] != ' '; i++) {
        if (!is_token(data + i, 1))
            return 400;
    }
    return i > start ? 501 : 400;
}

/* Parses client bytes: up to the end of a complete request (what follows
 * waits for its answer) or all of them. Returns the bytes used. */
static size_t client_parse(struct client *c, const char *data, size_t len)
{
    if (!c->rq && !request_get(c)) {
        client_close(c);
        return len;
    }
    if (!chunk_start_read(&c->rq->chunk, data, len)) {
        client_log(c, NULL, STOKE_LOG_DEBUG, 0, "bad request (400): no CRLF after chunk data");
        send_error(c, 400, true);
        return len;
    }
    c->rq->exec_base = data;
    c->rq->exec_end = data + len;
    llhttp_errno_t err = llhttp_execute(&c->rq->parser, data, len);
    c->rq->exec_base = c->rq->exec_end = NULL;
    if (err == HPE_OK) {
        if (len > 0)
            c->rq->prev_byte = data[len - 1];
        if (c->state == C_HEAD && !c->rq->head_timed) {
            c->rq->head_timed = true; /* from the head's first byte, see on_req_begin() */
            timer_start(c, on_idle_timeout, c->px->cfg.header_timeout_ms);
        }
        return len;
    }
    c->rq->prev_byte = '\0'; /* a request ended: held bytes start the next */
    if (err == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->rq->parser);
        size_t used = pos ? (size_t)(pos - data) : len;
        if (!c->rq->dispatched && c->rq->in_body) {
            /* The head of a request with a body: route it, then stream the
             * body to wherever it went (an error answer closes). */
            dispatch(c);
            if (c->state != C_QUEUED && c->state != C_UPSTREAM)
                return len;
            llhttp_resume(&c->rq->parser);
            return used < len ? used + client_parse(c, data + used, len - used) : len;
        }
        /* A request is complete: what follows waits for its answer. */
        if (!c->rq->dispatched)
            dispatch(c);
        else if (request_pump(c) < 0)
            send_error(c, 502, true);
        return used;
    }
    int status = c->rq->error_status ? c->rq->error_status : 400;
    if (err == HPE_INVALID_METHOD)
        status = bad_method_status(data, len);
    client_log(c, NULL, STOKE_LOG_DEBUG, 0, "bad request (%d): %s", status,
               llhttp_get_error_reason(&c->rq->parser));
    send_error(c, status, true);
    return len;
}

/* Parses the held input while the connection is between requests and the
 * client keeps up with its answers: a loop, so that a thousand pipelined
 * requests answered at once (errors, say) take no stack and no more memory
 * than the write high-water mark. Then reads on, or not, by the same rule. */
static void client_drive(struct client *c)
{
    if (c->driving)
        return; /* a caller up the stack runs the loop */
    c->driving = true;
    while (c->state == C_IDLE && c->in_off < c->in.len && !client_backlogged(c)) {
        size_t used = client_parse(c, c->in.data + c->in_off, c->in.len - c->in_off);
        c->in_off += used;
        if (used == 0)
            break; /* the parser took nothing: waits on something else */
    }
    c->driving = false;
    if (c->in_off > 0) {
        stoke_buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    if (c->in.len == 0 && c->in.cap > 0)
        stoke_buf_done(&c->in);
    if (c->state == C_CLOSED || c->state == C_FLUSH || c->state == C_LINGER)
        return;
    /* Between requests with nothing held: the request state goes back to
     * the worker's free list until the next request's first byte. */
    if (c->state == C_IDLE && c->rq && c->in.len == 0)
        request_put(c);
    if (c->rq && c->rq->in_body) {
        if (c->rq->hold.len <= BODY_HOLD)
            client_resume_reading(c);
    } else if (!client_backlogged(c) && c->in.len < MAX_PENDING_INPUT) {
        if (c->read_stopped) {
            c->read_stopped = false;
            uv_read_start((uv_stream_t *)&c->tcp, read_alloc, on_client_read);
        }
    } else if (!c->read_stopped) {
        c->read_stopped = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
}

/* Called when the answer to the current request is fully queued for
 * writing and the connection stays open: reads the next request. */
static void client_finish_request(struct client *c)
{
    request_end(c);
    client_release(c);
    request_reset(c->rq);
    c->state = C_IDLE;
    timer_start(c, on_idle_timeout, c->px->cfg.idle_timeout_ms);
    /* An Upgrade the replica was never asked for (the header is dropped)
     * was declined by its answer, so HTTP goes on (RFC 9110 7.8); llhttp
     * would otherwise treat what follows as the tunnel. */
    if (c->rq->parser.upgrade)
        llhttp_reset(&c->rq->parser);
    else
        llhttp_resume(&c->rq->parser);
    client_drive(c);
}

static struct client *client_new(struct proxy *px)
{
    struct client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->px = px;
    uv_tcp_init(px->loop, &c->tcp);
    uv_timer_init(px->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    px->handles++;
    stoke_list_init(&c->qnode);
    stoke_list_insert_tail(&px->clients, &c->node);
    px->n_clients++;
    metrics_connections(px->hooks.metrics, 1);
    c->state = C_IDLE;
    stoke_buf_init(&c->in, MAX_PENDING_INPUT + 65536);
    return c;
}

/* Serves the connected socket in c->tcp. */
static void client_start(struct client *c)
{
    struct proxy *px = c->px;
    /* --max-connections counts the connections of every worker. */
    c->counted = limits_conn_take(px->limits);
    if (!c->counted) {
        metrics_rejected(px->hooks.metrics, METRICS_CONNECTIONS_LIMIT);
        client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    snprintf(c->ip, sizeof(c->ip), "unknown");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->ip, sizeof(c->ip));
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->ip, sizeof(c->ip));
        c->trusted = peer_trusted(&px->cfg, &ss);
    }
    timer_start(c, on_idle_timeout, px->cfg.idle_timeout_ms);
    if (uv_read_start((uv_stream_t *)&c->tcp, read_alloc, on_client_read) < 0)
        client_close(c);
}

static void on_accept(uv_stream_t *server, int status)
{
    struct proxy *px = server->data;
    if (status < 0) {
        stoke_warn(NULL, status, "accept failed");
        return;
    }
    struct client *c = client_new(px);
    if (!c)
        return;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        client_close(c);
        return;
    }
    client_start(c);
}

bool proxy_busy(const struct proxy *px)
{
    for (const struct stoke_list *it = px->clients.next; it != &px->clients; it = it->next) {
        const struct client *c = stoke_container_of(it, struct client, node);
        bool waits_on_client =
            c->state == C_IDLE || c->state == C_HEAD || c->state == C_LINGER ||
            (c->state == C_TUNNEL && !c->read_stopped) ||
            (c->rq && c->rq->in_body && !c->read_stopped && c->state != C_QUEUED);
        if (c->pending_writes > 0 || !waits_on_client)
            return true;
    }
    return false;
}

int proxy_serve_fd(struct proxy *px, uv_os_sock_t fd)
{
    struct client *c = client_new(px);
    if (!c)
        return -ENOMEM;
    int r = uv_tcp_open(&c->tcp, fd);
    if (r < 0) {
        client_close(c); /* fd stays the caller's */
        return r;
    }
    client_start(c);
    return 0;
}

/* ---- dispatch ------------------------------------------------------------ */

static void on_queue_timeout(uv_timer_t *t)
{
    struct client *c = t->data;
    client_log(c, NULL, STOKE_LOG_INFO, 0, "request waited past the queue timeout: 504");
    send_error(c, 504, false);
}

static void on_request_deadline(uv_timer_t *t)
{
    struct client *c = t->data;
    if (c->rq->response_started) {
        client_close(c); /* the status is out already: cut the response */
        return;
    }
    send_error(c, 504, false);
}

/* Takes a slot on the replica with the fewest requests in flight through
 * the whole process, among those with room; ties go round-robin from a
 * moving start so no replica is favoured. NULL when none has room. Another
 * worker may take the chosen slot first: then the choice is made again
 * (each retry means some worker got a slot, so this ends). */
static struct endpoint *pick_endpoint(struct fn *fn, struct endpoint *avoid)
{
    size_t n = fn->n_eps;
    if (n == 0)
        return NULL;
    uint64_t now = uv_now(fn->px->loop);
    for (;;) {
        struct endpoint *best = NULL;
        uint32_t best_inflight = 0;
        size_t start = fn->px->rr++ % n;
        for (size_t k = 0; k < n; k++) {
            struct endpoint *ep = fn->eps[(start + k) % n];
            if (!lim_ep_has_room(ep->lim) || (ep == avoid && n > 1) || ep->refused_until > now)
                continue;
            uint32_t inflight = lim_ep_inflight(ep->lim);
            if (!best || inflight < best_inflight) {
                best = ep;
                best_inflight = inflight;
            }
        }
        if (!best || lim_ep_take(best->lim))
            return best;
    }
}

static void upstream_send(struct client *c, struct endpoint *ep);

static void enqueue(struct client *c)
{
    struct fn *fn = c->rq->fn;
    /* queue.max (or this activator's share of it) bounds the process's
     * queue, whichever worker holds the requests. */
    if (!lim_fn_queue_take(fn->lim)) {
        send_error(c, 503, false);
        return;
    }
    c->state = C_QUEUED;
    stoke_list_insert_tail(&fn->queue, &c->qnode);
    fn_queued_add(fn, 1);
    timer_start(c, on_queue_timeout, fn->cfg.queue_timeout_ms);
    /* A slot freed before this worker counted as waiting woke nobody: the
     * queue is tried once more (see shared.h). */
    if (fn->n_eps > 0)
        kick(fn);

    uint64_t now = uv_now(fn->px->loop);
    if (fn->n_eps == 0 && (fn->last_poke_ms == 0 || now - fn->last_poke_ms >= POKE_INTERVAL_MS)) {
        fn->last_poke_ms = now;
        fn->px->hooks.on_poke(fn->cfg.name, fn->px->hooks.data);
    }
}

/* Sends the request to a replica with room, or queues it. Older waiters go
 * first: while any worker has requests queued for the function, a new one
 * joins the queue (each worker's queue is oldest first; the workers' queues
 * take freed slots as they come). */
static void route_request(struct client *c, struct endpoint *avoid)
{
    struct endpoint *ep = NULL;
    if (lim_fn_queued(c->rq->fn->lim) == 0)
        ep = pick_endpoint(c->rq->fn, avoid);
    if (!ep) {
        enqueue(c);
        return;
    }
    upstream_send(c, ep);
}

static int build_upstream_request(struct client *c, const char *fn_name, const char *path,
                                  size_t path_len)
{
    struct stoke_buf *o = &c->rq->out;
    struct proxy *px = c->px;
    if (!c->rq->request_id[0]) {
        /* The worker's random base, then the sequence number in hex,
         * counted up in place. */
        for (int i = 31; i >= 16; i--) {
            char *d = &px->request_id_next[i];
            *d = *d == '9' ? 'a' : *d == 'f' ? '0' : (char)(*d + 1);
            if (*d != '0')
                break;
        }
        memcpy(c->rq->request_id, px->request_id_next, 33);
    }
    struct request *rq = c->rq;
    const char *method = llhttp_method_name(rq->method);
    /* (an HTTP/1.0 client may send no Host; HTTP/1.1 requires one) */
    const char *host = rq->host.len ? rq->host.data : fn_name;
    size_t host_len = rq->host.len ? rq->host.len : strlen(fn_name);
    int r = buf_put(o, method, strlen(method));
    if (r == 0)
        r = (path_len == 0 || path[0] != '/') ? BUF_LIT(o, " /") : BUF_LIT(o, " ");
    if (r == 0 && path_len)
        r = buf_put(o, path, path_len);
    if (r == 0)
        r = BUF_LIT(o, " HTTP/1.1\r\nHost: ");
    if (r == 0)
        r = buf_put(o, host, host_len);
    if (r == 0)
        r = BUF_LIT(o, "\r\n");
    if (r == 0 && rq->host.len) {
        r = BUF_LIT(o, "X-Forwarded-Host: ");
        if (r == 0)
            r = buf_put(o, rq->host.data, rq->host.len);
        if (r == 0)
            r = BUF_LIT(o, "\r\n");
    }
    if (r == 0)
        r = append_filtered(o, &rq->headers, &rq->conn_tokens);
    if (r == 0)
        r = BUF_LIT(o, "X-Forwarded-For: ");
    if (r == 0 && rq->xff.len) {
        r = buf_put(o, rq->xff.data, rq->xff.len);
        if (r == 0)
            r = BUF_LIT(o, ", ");
    }
    if (r == 0)
        r = buf_put(o, c->ip, strlen(c->ip));
    if (r == 0)
        r = BUF_LIT(o, "\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ");
    if (r == 0)
        r = buf_put(o, rq->request_id, strlen(rq->request_id));
    if (r == 0)
        r = BUF_LIT(o, "\r\n");
    /* An upgrade (WebSocket) is asked of the replica as the client asked
     * it; a 101 answer turns both connections into a tunnel. */
    if (r == 0 && rq->parser.upgrade && rq->upgrade.len) {
        r = BUF_LIT(o, "Connection: upgrade\r\nUpgrade: ");
        if (r == 0)
            r = buf_put(o, rq->upgrade.data, rq->upgrade.len);
        if (r == 0)
            r = BUF_LIT(o, "\r\n");
    }
    return r; /* framing and the blank line: request_pump() */
}

/* Async invocations (README "Async invocations"). */
#define CALLS_PREFIX "/_stoke/calls/"
#define ASYNC_PREFIX "/async-function/"

/* Whether a header `name` (lower case) of the "Name: value\r\n" lines in
 * `h` has `token` among its comma- or semicolon-separated parts
 * (case-insensitive). */
static bool header_has_token(const struct stoke_buf *h, const char *name, const char *token)
{
    size_t nl = strlen(name), tl = strlen(token);
    const char *p = h->data, *end = h->data ? h->data + h->len : NULL;
    while (p && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (!eol || !colon)
            break;
        if (colon < eol && (size_t)(colon - p) == nl && strncasecmp(p, name, nl) == 0) {
            const char *v = colon + 1;
            while (v < eol) {
                while (v < eol && (*v == ' ' || *v == '\t' || *v == ',' || *v == ';'))
                    v++;
                const char *e = v;
                while (e < eol && *e != ',' && *e != ';' && *e != '\r')
                    e++;
                const char *t = e;
                while (t > v && (t[-1] == ' ' || t[-1] == '\t'))
                    t--;
                if ((size_t)(t - v) == tl && strncasecmp(v, token, tl) == 0)
                    return true;
                v = e;
                if (v < eol && *v == '\r')
                    break;
            }
        }
        p = eol + 1;
    }
    return false;
}

/* "/async-function/<name>[/...|?...]": the name and the function's path
 * (as stoke_route_match() gives them). Returns 0 or -ENOENT. */
static int async_prefix_match(const char *u, size_t ul, const char **ret_name, size_t *ret_name_len,
                              const char **ret_path, size_t *ret_path_len)
{
    size_t n = sizeof(ASYNC_PREFIX) - 1;
    if (ul <= n || memcmp(u, ASYNC_PREFIX, n) != 0)
        return -ENOENT;
    size_t i = n;
    while (i < ul && u[i] != '/' && u[i] != '?')
        i++;
    if (i == n)
        return -ENOENT;
    *ret_name = u + n;
    *ret_name_len = i - n;
    *ret_path = u + i;
    *ret_path_len = ul - i;
    return 0;
}

/* What stoke-events needs of the function, after the client's headers (it
 * reads the last of each, so a client cannot set them). */
static int async_headers(struct client *c, const struct fn *fn)
{
    const struct stoke_route *r = &fn->cfg;
    int e = stoke_buf_printf(&c->rq->out, "X-Stoke-Events-Token: %s\r\n",
                             c->px->cfg.events_token ? c->px->cfg.events_token : "");
    if (e == 0)
        e = stoke_buf_printf(
            &c->rq->out,
            "X-Stoke-Function: %s\r\nX-Stoke-Timeout-Ms: %" PRIu64
            "\r\nX-Stoke-Async: retries=%" PRIu32 ";backoff_ms=%" PRIu64 ";max_age_ms=%" PRIu64
            ";max_in_flight=%" PRIu32 ";max_body=%" PRIu32 "\r\n",
            r->name, r->queue_timeout_ms + r->timeout_ms, r->async.retries, r->async.backoff_ms,
            r->async.max_age_ms, r->async.max_in_flight, r->async.max_body);
    return e;
}

static void dispatch(struct client *c)
{
    struct proxy *px = c->px;
    const char *name, *path;
    size_t name_len, path_len;
    char lname[STOKE_NAME_MAX + 1];

    c->state = C_BODY; /* not idle: held bytes wait until this request ends */
    c->rq->dispatched = true;
    /* A Host that names a function is that function's origin: its path is
     * its own, never routed to another function by /fn/<name>/ (which
     * would hand it this origin's cookies). Path routing is for other
     * Hosts only. */
    struct fn *fn = NULL;
    const char *url = c->rq->url.data ? c->rq->url.data : "";
    size_t url_len = c->rq->url.len;
    /* Async calls' state (stoke-events answers), on every Host. */
    if (px->events_fn && url_len > sizeof(CALLS_PREFIX) - 1 &&
        memcmp(url, CALLS_PREFIX, sizeof(CALLS_PREFIX) - 1) == 0) {
        if (build_upstream_request(c, "_events", url, url_len) < 0) {
            send_error(c, 431, true);
            return;
        }
        fn = px->events_fn;
        goto routed;
    }
    /* A preference (RFC 7240): without stoke-events it is not honoured
     * and the call is served as usual. */
    bool async = px->events_fn && header_has_token(&c->rq->headers, "prefer", "respond-async");
    for (int by_host = 1; by_host >= 0 && !fn; by_host--) {
        int m;
        if (!by_host && async_prefix_match(url, url_len, &name, &name_len, &path, &path_len) == 0) {
            async = true;
            m = 0;
        } else {
            m = stoke_route_match(c->rq->host.data, c->rq->host.len, url, by_host ? 0 : url_len,
                                  px->cfg.domain, &name, &name_len, &path, &path_len);
        }
        if (m < 0 || name_len > STOKE_NAME_MAX)
            continue;
        for (size_t i = 0; i < name_len; i++)
            lname[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
        lname[name_len] = '\0';
        fn = fn_find(px, lname);
        if (by_host) {
            path = url;
            path_len = url_len;
        }
    }
    if (!fn) {
        if (!px->routed && px->cfg.await_routes)
            send_error_as(c, 503, false, METRICS_NO_ROUTES);
        else
            send_error(c, 404, false);
        return;
    }
    if (build_upstream_request(c, lname, path, path_len) < 0) {
        send_error(c, 431, true);
        return;
    }
    if (async) {
        /* Checked here, so that a 202 is never given for what cannot run:
         * the function exists (above) and the body fits its async limit
         * (a chunked one is measured by stoke-events). */
        if (!px->events_fn) {
            send_error(c, 501, !c->rq->has_body);
            return;
        }
        if (c->rq->content_length > fn->cfg.async.max_body && !c->rq->chunked_seen) {
            send_error(c, 413, true);
            return;
        }
        if (async_headers(c, fn) < 0) {
            send_error(c, 431, true);
            return;
        }
        fn = px->events_fn;
    }
routed:
    if (c->rq->expect_continue && c->rq->in_body) {
        /* Routed: the client may send the body now (RFC 9110 10.1.1). */
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (client_write(c, cont, sizeof(cont) - 1) < 0) {
            client_close(c);
            return;
        }
    }
    fn->refs++;
    c->rq->fn = fn;
    c->rq->m = fn->m;
    c->rq->status = 0;
    fn_mark(fn);
    fn->requests++;
    route_request(c, NULL);
}

/* Sends queued requests of kicked functions on, a batch per loop turn. */
static void on_drain(uv_idle_t *h)
{
    struct proxy *px = h->data;
    unsigned budget = DRAIN_BATCH;
    while (budget > 0 && !stoke_list_empty(&px->kicks)) {
        struct fn *fn = stoke_container_of(stoke_list_first(&px->kicks), struct fn, kick);
        struct endpoint *ep = NULL;
        while (budget > 0 && !stoke_list_empty(&fn->queue) && (ep = pick_endpoint(fn, NULL))) {
            struct client *c =
                stoke_container_of(stoke_list_first(&fn->queue), struct client, qnode);
            stoke_list_remove(&c->qnode);
            fn_queued_add(fn, -1);
            c->state = C_BODY;
            upstream_send(c, ep);
            budget--;
        }
        if (stoke_list_empty(&fn->queue) || !ep) {
            stoke_list_remove(&fn->kick);
            fn->kicked = false;
        }
    }
    if (stoke_list_empty(&px->kicks))
        uv_idle_stop(h);
}

static void kick(struct fn *fn)
{
    if (fn->kicked || fn->gone)
        return;
    fn->kicked = true;
    stoke_list_insert_tail(&fn->px->kicks, &fn->kick);
    uv_idle_start(&fn->px->drain, on_drain);
}

/* Another worker freed a slot of a function this one has requests queued
 * for (or its limits changed): the queues try again. */
static void on_wake(uv_async_t *h)
{
    struct proxy *px = h->data;
    for (struct stoke_list *n = px->waiting.next; n != &px->waiting; n = n->next)
        kick(stoke_container_of(n, struct fn, wnode));
    if (limits_take_drain_changed(px->limits, px->worker))
        px->hooks.on_drained(px->hooks.data);
}

/* ---- upstream connections ---------------------------------------------- */

static void on_upstream_handle_closed(uv_handle_t *h)
{
    struct upstream *up = h->data;
    if (--up->handles > 0)
        return;
    struct proxy *px = up->px;
    stoke_buf_done(&up->reason);
    stoke_buf_done(&up->field);
    stoke_buf_done(&up->value);
    stoke_buf_done(&up->head);
    stoke_buf_done(&up->upgrade);
    stoke_buf_done(&up->conn_tokens);
    endpoint_unref(up->ep);
    free(up);
    proxy_handle_closed(px);
}

static void upstream_close(struct upstream *up)
{
    if (up->closing)
        return;
    up->closing = true;
    metrics_gauge(up->m, METRICS_UPSTREAMS, -1);
    if (up->c) {
        up->c->rq->up = NULL;
        up->c = NULL;
    }
    if (!stoke_list_empty(&up->node)) {
        stoke_list_remove(&up->node);
        up->ep->n_idle--;
    }
    uv_close((uv_handle_t *)&up->timer, on_upstream_handle_closed);
    uv_close((uv_handle_t *)&up->tcp, on_upstream_handle_closed);
}

static void on_upstream_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void upstream_resume(struct upstream *up)
{
    if (!up->reading && !up->closing && !up->tunnel_eof) {
        up->reading = true;
        uv_read_start((uv_stream_t *)&up->tcp, read_alloc, on_upstream_read);
    }
}

struct uwreq {
    uv_write_t req;
    char data[];
};

static void on_upstream_written(uv_write_t *req, int status)
{
    struct upstream *up = req->data;
    free(stoke_container_of(req, struct uwreq, req));
    if (up->closing)
        return;
    if (status < 0) {
        upstream_failed(up, status);
        return;
    }
    /* The client waits while the replica is behind on its body or, in a
     * tunnel, on anything it sent. */
    struct client *c = up->c;
    if (c && c->read_stopped && (c->rq->in_body || c->state == C_TUNNEL) &&
        uv_stream_get_write_queue_size((uv_stream_t *)&up->tcp) < WRITE_HIGH_WATER / 2)
        client_resume_reading(c);
}

/* Writes `n` pieces to the replica: what the socket takes at once, the rest
 * copied and queued as one write. Returns 0 or a
 * negative errno. */
static int upstream_writev(struct upstream *up, const uv_buf_t *parts, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += parts[i].len;
    ssize_t done = try_write((uv_stream_t *)&up->tcp, parts, n);
    if (done < 0)
        return (int)done;
    if ((size_t)done == total)
        return 0;
    struct uwreq *w = malloc(sizeof(*w) + total - (size_t)done);
    if (!w)
        return -ENOMEM;
    w->req.data = up;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)copy_rest(w->data, parts, n, (size_t)done));
    int r = uv_write(&w->req, (uv_stream_t *)&up->tcp, &b, 1, on_upstream_written);
    if (r < 0)
        free(w);
    return r;
}

static void upstream_start_request(struct upstream *up)
{
    struct client *c = up->c;
    llhttp_init(&up->parser, HTTP_RESPONSE, &up->px->resp_settings);
    up->parser.data = up;
    up->got_bytes = false;
    up->done = false;
    up->rechunk = false;
    up->has_request_id = false;
    buf_clear(&up->head);
    c->rq->head_sent = false;
    int r = request_pump(c);
    if (r < 0) {
        upstream_failed(up, r);
        return;
    }
    upstream_resume(up);
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct upstream *up = t->data;
    upstream_failed(up, -ETIMEDOUT);
}

static void on_upstream_connected(uv_connect_t *req, int status)
{
    struct upstream *up = req->data;
    if (up->closing)
        return;
    uv_timer_stop(&up->timer);
    if (status < 0) {
        upstream_failed(up, status);
        return;
    }
    up->connected = true;
    uv_tcp_nodelay(&up->tcp, 1);
    if (up->c)
        upstream_start_request(up);
    else
        upstream_close(up);
}

static struct upstream *upstream_new(struct proxy *px, struct endpoint *ep)
{
    struct upstream *up = calloc(1, sizeof(*up));
    if (!up)
        return NULL;
    up->px = px;
    up->ep = ep;
    up->m = ep->fn->m;
    metrics_gauge(up->m, METRICS_UPSTREAMS, 1);
    ep->refs++;
    uv_tcp_init(px->loop, &up->tcp);
    uv_timer_init(px->loop, &up->timer);
    up->tcp.data = up;
    up->timer.data = up;
    up->connect.data = up;
    up->handles = 2;
    px->handles++;
    stoke_list_init(&up->node);
    stoke_buf_init(&up->reason, 256);
    stoke_buf_init(&up->field, px->cfg.max_header_bytes * 4);
    stoke_buf_init(&up->value, px->cfg.max_header_bytes * 4);
    stoke_buf_init(&up->head, px->cfg.max_header_bytes * 4);
    stoke_buf_init(&up->upgrade, px->cfg.max_header_bytes);
    stoke_buf_init(&up->conn_tokens, px->cfg.max_header_bytes);
    return up;
}

static void upstream_send(struct client *c, struct endpoint *ep)
{
    struct fn *fn = ep->fn;
    fn_mark(fn);
    ep->inflight++;
    fn->inflight++;
    metrics_gauge(fn->m, METRICS_IN_FLIGHT, 1);
    ep->refs++;
    c->rq->ep = ep;
    c->rq->tries++;
    c->state = C_UPSTREAM;
    timer_start(c, on_request_deadline, fn->cfg.timeout_ms);

    struct upstream *up = NULL;
    if (!stoke_list_empty(&ep->idle)) {
        up = stoke_container_of(stoke_list_first(&ep->idle), struct upstream, node);
        stoke_list_remove(&up->node);
        ep->n_idle--;
        /* (its pool timer may run on: see on_pooled_timeout()) */
        up->reused = true;
        up->c = c;
        c->rq->up = up;
        upstream_start_request(up);
        return;
    }
    up = upstream_new(c->px, ep);
    if (!up) {
        client_release(c);
        send_error(c, 502, false);
        return;
    }
    up->c = c;
    c->rq->up = up;
    int r = uv_tcp_connect(&up->connect, &up->tcp, (const struct sockaddr *)&ep->addr.ss,
                           on_upstream_connected);
    if (r < 0) {
        upstream_failed(up, r);
        return;
    }
    uv_timer_start(&up->timer, on_connect_timeout, c->px->cfg.connect_timeout_ms, 0);
}

static bool is_idempotent(uint8_t m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT ||
           m == HTTP_DELETE || m == HTTP_TRACE;
}

/* Queued requests try again once replicas passed over may be tried. */
static void on_refused_timer(uv_timer_t *t)
{
    struct proxy *px = t->data;
    for (struct stoke_list *n = px->waiting.next; n != &px->waiting; n = n->next)
        kick(stoke_container_of(n, struct fn, wnode));
}

/* The connection to a replica failed. Before any byte of a response came
 * back, the request is tried again elsewhere when that is safe: always when
 * the connect itself failed (nothing was sent), and for idempotent methods
 * when a pooled connection turned out to be closed. Else 502.
 *
 * With a controller, a failed connect (a replica that died: killed, OOM,
 * its engine restarted) passes the replica over for REFUSED_MS and does
 * not count as a try, so the request goes to another replica, or waits in
 * the queue (up to queue.timeout) for one, as at zero, until the
 * controller has replaced it. Static routes (--controller none) and
 * stoke-events' ingest have nobody to replace them: 502 after MAX_TRIES. */
static void upstream_failed(struct upstream *up, int err)
{
    struct client *c = up->c;
    bool not_sent = !up->connected;
    bool retry_ok = !up->got_bytes && c && !c->rq->retry_lost &&
                    (not_sent || (up->reused && is_idempotent(c->rq->method)));
    struct endpoint *ep = up->ep;
    struct proxy *px = up->px;
    if (not_sent && px->cfg.await_routes && ep->fn != px->events_fn) {
        ep->refused_until = uv_now(px->loop) + REFUSED_MS;
        uv_timer_start(&px->refused, on_refused_timer, REFUSED_MS, 0);
        if (c && c->rq->tries > 0)
            c->rq->tries--;
    }
    upstream_close(up);
    if (!c)
        return;
    if (c->rq->response_started) {
        client_close(c);
        return;
    }
    client_log(c, ep->fn->cfg.name, STOKE_LOG_WARN, err, "upstream request failed%s",
               retry_ok && c->rq->tries < MAX_TRIES ? ", retrying" : "");
    /* Keep the function (and its reference) while the replica's slot is
     * given back. */
    struct fn *fn = c->rq->fn;
    c->rq->fn = NULL;
    client_release(c);
    c->rq->fn = fn;
    if (retry_ok && c->rq->tries < MAX_TRIES && !fn->gone) {
        route_request(c, ep);
        return;
    }
    send_error(c, 502, false);
}

/* A pooled connection closes once it has been idle for the idle timeout.
 * Its timer is not stopped when a request takes it and started again when
 * it is back (a timer-heap operation each): it fires as set when the
 * connection was first pooled, and then closes it, or waits for it to be
 * back, or is set again for the rest of its idle time. */
static void on_pooled_timeout(uv_timer_t *t)
{
    struct upstream *up = t->data;
    if (up->c)
        return; /* in use: upstream_release() sets it again */
    uint64_t now = uv_now(up->px->loop), idle = up->px->cfg.idle_timeout_ms;
    if (now - up->pooled_at < idle) {
        uv_timer_start(t, on_pooled_timeout, idle - (now - up->pooled_at), 0);
        return;
    }
    upstream_close(up);
}

/* The response is complete: the connection goes back to its replica's pool
 * when both sides allow it. */
static void upstream_release(struct upstream *up, bool reusable)
{
    up->c = NULL;
    struct endpoint *ep = up->ep;
    if (!reusable || ep->gone || ep->n_idle >= up->px->cfg.max_idle_upstream) {
        upstream_close(up);
        return;
    }
    stoke_list_insert_tail(&ep->idle, &up->node);
    ep->n_idle++;
    up->reused = true;
    /* Keep reading so a replica closing an idle connection is noticed. */
    upstream_resume(up);
    up->pooled_at = uv_now(up->px->loop);
    if (!uv_is_active((uv_handle_t *)&up->timer))
        uv_timer_start(&up->timer, on_pooled_timeout, up->px->cfg.idle_timeout_ms, 0);
}

static void response_done(struct upstream *up, bool reusable)
{
    struct client *c = up->c;
    upstream_release(up, reusable);
    if (!c)
        return;
    c->rq->up = NULL;
    if (!c->rq->keep_alive || c->rq->close_after) {
        client_release(c);
        client_close_after_flush(c);
        return;
    }
    client_finish_request(c);
}

/* ---- tunnels (after a 101) ---------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

/* Passes one side's end of stream to the other; both ended: closed once
 * the last bytes are written. */
static void tunnel_half_close(struct client *c, uv_stream_t *from, uv_stream_t *to)
{
    uv_read_stop(from);
    if (c->rq->tunnel_eof && c->rq->up && c->rq->up->tunnel_eof) {
        client_close_after_flush(c);
        return;
    }
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req || uv_shutdown(req, to, on_shutdown) < 0) {
        free(req);
        client_close(c);
    }
}

static void tunnel_client_read(struct client *c, ssize_t nread, const uv_buf_t *buf)
{
    struct upstream *up = c->rq->up;
    if (nread == UV_EOF && up) {
        c->rq->tunnel_eof = true;
        c->read_stopped = true;
        tunnel_half_close(c, (uv_stream_t *)&c->tcp, (uv_stream_t *)&up->tcp);
        return;
    }
    if (nread < 0 || !up) {
        client_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
    if (nread > 0)
        timer_start(c, on_idle_timeout, c->px->cfg.idle_timeout_ms);
    int r = nread > 0 ? upstream_writev(up, &b, 1) : 0;
    if (r < 0)
        client_close(c);
    else if (uv_stream_get_write_queue_size((uv_stream_t *)&up->tcp) > WRITE_HIGH_WATER)
        client_stop_reading(c);
}

static void tunnel_upstream_read(struct upstream *up, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = up->c;
    if (nread == UV_EOF) {
        up->tunnel_eof = true;
        up->reading = false;
        tunnel_half_close(c, (uv_stream_t *)&up->tcp, (uv_stream_t *)&c->tcp);
        return;
    }
    if (nread < 0) {
        client_close(c);
        return;
    }
    if (nread > 0)
        timer_start(c, on_idle_timeout, c->px->cfg.idle_timeout_ms);
    int r = nread > 0 ? client_write(c, buf->base, (size_t)nread) : 0;
    if (r < 0) {
        client_close(c);
    } else if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_HIGH_WATER) {
        uv_read_stop((uv_stream_t *)&up->tcp);
        up->reading = false;
    }
}

/* The replica switched protocols: from here on bytes pass through as they
 * are, both ways, with backpressure, until both sides end. The replica
 * slot stays taken (a tunnel is a request in flight to the autoscaler). */
static void tunnel_start(struct upstream *up, const char *rest, size_t n)
{
    struct client *c = up->c;
    c->state = C_TUNNEL;
    c->rq->status = 101; /* counted when the tunnel ends */
    /* Closed when no byte passes either way for the idle timeout. */
    timer_start(c, on_idle_timeout, c->px->cfg.idle_timeout_ms);
    if (n > 0 && client_write(c, rest, n) < 0) {
        client_close(c);
        return;
    }
    if (c->in.len > c->in_off) {
        uv_buf_t b = uv_buf_init(c->in.data + c->in_off, (unsigned)(c->in.len - c->in_off));
        int r = upstream_writev(up, &b, 1);
        stoke_buf_done(&c->in);
        c->in_off = 0;
        if (r < 0) {
            client_close(c);
            return;
        }
    }
    client_resume_reading(c);
}

static void on_upstream_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct upstream *up = s->data;
    if (up->closing) {
        return;
    }
    if (up->c && up->c->state == C_TUNNEL) {
        tunnel_upstream_read(up, nread, buf);
        return;
    }
    if (!up->c) {
        /* Pooled and idle: any event means the replica is done with it. */
        if (nread != 0)
            upstream_close(up);
        return;
    }
    if (nread < 0) {
        /* llhttp_finish() passes on_resp_complete()'s pause on. */
        llhttp_errno_t fe =
            nread == UV_EOF && up->got_bytes ? llhttp_finish(&up->parser) : HPE_USER;
        if ((fe == HPE_OK || fe == HPE_PAUSED) && up->done) {
            response_done(up, false); /* a response delimited by close */
            return;
        }
        upstream_failed(up, (int)nread);
        return;
    }
    if (nread == 0) {
        return;
    }
    up->got_bytes = true;
    /* The client's memory outlives this call even if it is closed meanwhile
     * (it is freed in its close callback, on a later loop turn). */
    struct client *c = up->c;
    if (!chunk_start_read(&up->chunk, buf->base, (size_t)nread)) {
        client_log(c, up->ep->fn->cfg.name, STOKE_LOG_WARN, -EPROTO,
                   "bad response from replica: no CRLF after chunk data");
        upstream_failed(up, -EPROTO);
        return;
    }
    c->rq->batching = true;
    up->exec_base = buf->base;
    up->exec_end = buf->base + nread;
    llhttp_errno_t err = llhttp_execute(&up->parser, buf->base, (size_t)nread);
    up->prev_byte = buf->base[nread - 1];
    const char *pos = llhttp_get_error_pos(&up->parser);
    /* Bytes after the response are a protocol error: do not reuse. */
    bool clean = err == HPE_PAUSED && pos == buf->base + nread;
    c->rq->batching = false;
    if (c->state != C_CLOSED && client_flush(c) < 0) {
        client_close(c);
        return;
    }
    if (up->closing) {
        return;
    }
    if (err == HPE_PAUSED_UPGRADE && up->c && llhttp_get_status_code(&up->parser) == 101) {
        c->rq->response_started = true;
        tunnel_start(up, pos, (size_t)(buf->base + nread - pos));
        return;
    }
    if (err == HPE_PAUSED) {
        /* A replica that answered before reading the whole body may still
         * expect the rest: its connection is not reused. */
        response_done(up, clean && llhttp_should_keep_alive(&up->parser) && !c->rq->in_body);
        return;
    }
    if (err != HPE_OK) {
        if (up->c)
            client_log(up->c, up->ep->fn->cfg.name, STOKE_LOG_WARN, -EPROTO,
                       "bad response from replica: %s", llhttp_get_error_reason(&up->parser));
        else
            stoke_warn(up->ep->fn->cfg.name, -EPROTO, "bad response from replica: %s",
                       llhttp_get_error_reason(&up->parser));
        upstream_failed(up, -EPROTO);
        return;
    }
    if (up->c && uv_stream_get_write_queue_size((uv_stream_t *)&up->c->tcp) > WRITE_HIGH_WATER) {
        uv_read_stop(s);
        up->reading = false;
    }
}

/* ---- response parsing --------------------------------------------------- */

static int on_resp_begin(llhttp_t *p)
{
    struct upstream *up = p->data;
    buf_clear(&up->reason);
    buf_clear(&up->head);
    buf_clear(&up->upgrade);
    buf_clear(&up->conn_tokens);
    up->has_request_id = false;
    up->chunk = (struct chunk_check){0};
    buf_clear(&up->field);
    buf_clear(&up->value);
    return 0;
}

static int on_resp_status(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *up = p->data;
    return buf_put(&up->reason, at, len) < 0 ? -1 : 0;
}

static int on_resp_field(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *up = p->data;
    return buf_put(&up->field, at, len) < 0 ? -1 : 0;
}

static int on_resp_value(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *up = p->data;
    if (is_fold(at, up->exec_base, up->prev_byte))
        return -1;
    return buf_put(&up->value, at, len) < 0 ? -1 : 0;
}

static int on_resp_header_done(llhttp_t *p)
{
    struct upstream *up = p->data;
    int r = 0;
    const char *name = up->field.data ? up->field.data : "";
    size_t nl = up->field.len;
    trim_value(&up->value);
    const char *val = up->value.data ? up->value.data : "";
    size_t vl = up->value.len;
    if (!is_token(name, nl))
        return -1;
    enum hdr kind = header_kind(name, nl);
    if (kind == H_CONNECTION) {
        r = conn_tokens_add(&up->conn_tokens, val, vl, in_response_lines);
    } else if (kind == H_UPGRADE) {
        if (up->upgrade.len)
            r = BUF_LIT(&up->upgrade, ", ");
        if (r == 0)
            r = buf_put(&up->upgrade, val, vl);
    } else if (!is_hop_by_hop(kind)) {
        r = buf_put(&up->head, name, nl);
        if (r == 0)
            r = BUF_LIT(&up->head, ": ");
        if (r == 0)
            r = buf_put(&up->head, val, vl);
        if (r == 0)
            r = BUF_LIT(&up->head, "\r\n");
    }
    if (kind == H_REQUEST_ID)
        up->has_request_id = true;
    buf_clear(&up->field);
    buf_clear(&up->value);
    return r < 0 ? -1 : 0;
}

static int on_resp_headers_complete(llhttp_t *p)
{
    struct upstream *up = p->data;
    struct client *c = up->c;
    int status = llhttp_get_status_code(p);
    if (!c)
        return -1;
    if (up->conn_tokens.len > 0) {
        /* Headers the replica's Connection header named are hop-by-hop. */
        struct stoke_buf kept;
        stoke_buf_init(&kept, up->head.limit);
        if (append_filtered(&kept, &up->head, &up->conn_tokens) < 0) {
            stoke_buf_done(&kept);
            return -1;
        }
        stoke_buf_done(&up->head);
        up->head = kept;
        buf_clear(&up->conn_tokens);
    }
    char line[128]; /* "HTTP/1.1 %d %.80s\r\n" */
    size_t ll;
    if (status >= 100 && status <= 999) {
        memcpy(line, "HTTP/1.1 ", 9);
        line[9] = (char)('0' + status / 100);
        line[10] = (char)('0' + status / 10 % 10);
        line[11] = (char)('0' + status % 10);
        line[12] = ' ';
        ll = 13;
    } else {
        ll = fmt_line(line, "HTTP/1.1 ", " ", (uint64_t)status, 10);
    }
    const char *reason = up->reason.data ? up->reason.data : "";
    size_t rl = strnlen(reason, 80);
    memcpy(line + ll, reason, rl);
    memcpy(line + ll + rl, "\r\n", 2);
    ll += rl + 2;
    if (status < 200) {
        /* 100 Continue was answered here already; 101 switches protocols
         * when the client asked for that upgrade (the tunnel starts when the
         * head is parsed, see on_upstream_read()); other interim answers
         * (103 Early Hints) go to clients that know them. */
        if (status == 100 || (status != 101 && c->rq->http_minor == 0))
            return 0;
        if (status == 101 && (!c->rq->parser.upgrade || !c->rq->upgrade.len || !up->upgrade.len))
            return -1;
        int r = 0;
        if (status == 101)
            r = stoke_buf_printf(&up->head, "Connection: upgrade\r\nUpgrade: %s\r\n",
                                 up->upgrade.data);
        if (r == 0)
            r = buf_put(&up->head, "\r\n", 2);
        uv_buf_t parts[2] = {uv_buf_init(line, (unsigned)ll),
                             uv_buf_init(up->head.data, (unsigned)up->head.len)};
        return r < 0 || client_writev(c, parts, 2) < 0 ? -1 : 0;
    }
    if (c->rq->in_body) {
        /* Answered before the whole body came: the connection closes after
         * the answer, and the client may stop sending to read it (its
         * pace is now the request deadline's, not the body timer's). */
        c->rq->close_after = true;
        uv_timer_stop(&c->rq->body_timer);
    }
    c->rq->status = status;
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    bool bodyless = c->rq->method == HTTP_HEAD || status == 204 || status == 304;
    int r = 0;
    if (chunked && !bodyless) {
        if (c->rq->http_minor >= 1) {
            up->rechunk = true;
            r = buf_put(&up->head, "Transfer-Encoding: chunked\r\n", 28);
        } else {
            c->rq->close_after = true; /* HTTP/1.0: the body ends with the connection */
        }
    } else if (!has_length && !bodyless) {
        c->rq->close_after = true;
    }
    if (r == 0) {
        const char *ch = connection_header(c, !c->rq->keep_alive || c->rq->close_after);
        r = buf_put(&up->head, ch, strlen(ch));
    }
    if (r == 0 && !up->has_request_id) {
        r = BUF_LIT(&up->head, "X-Request-Id: ");
        if (r == 0)
            r = buf_put(&up->head, c->rq->request_id, strlen(c->rq->request_id));
        if (r == 0)
            r = BUF_LIT(&up->head, "\r\n");
    }
    if (r == 0)
        r = BUF_LIT(&up->head, "\r\n");
    uv_buf_t parts[2] = {uv_buf_init(line, (unsigned)ll),
                         uv_buf_init(up->head.data, (unsigned)up->head.len)};
    if (r < 0 || client_writev(c, parts, 2) < 0)
        return -1;
    c->rq->response_started = true;
    return c->rq->method == HTTP_HEAD ? 1 : 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *up = p->data;
    struct client *c = up->c;
    if (!c || ((p->flags & F_CHUNKED) && !chunk_data(&up->chunk, at, len, up->exec_end)))
        return -1;
    if (!up->rechunk)
        return client_write(c, at, len) < 0 ? -1 : 0;
    char size[24];
    size_t n = fmt_line(size, "", "\r\n", len, 16);
    uv_buf_t parts[3] = {uv_buf_init(size, (unsigned)n), uv_buf_init((char *)at, (unsigned)len),
                         uv_buf_init("\r\n", 2)};
    return client_writev(c, parts, 3) < 0 ? -1 : 0;
}

static int on_resp_chunk_header(llhttp_t *p)
{
    chunk_header(&((struct upstream *)p->data)->chunk, p);
    return 0;
}

static int on_resp_complete(llhttp_t *p)
{
    struct upstream *up = p->data;
    struct client *c = up->c;
    if (llhttp_get_status_code(p) < 200)
        return 0;
    if (c && up->rechunk && client_write(c, "0\r\n\r\n", 5) < 0)
        return -1;
    up->done = true;
    return HPE_PAUSED;
}

/* ---- setup and teardown ------------------------------------------------- */

/* libuv 1.44 has no UV_TCP_REUSEPORT: the socket is made here, with
 * SO_REUSEPORT set before bind, and handed to libuv. The kernel then spreads
 * new connections over the workers' listeners. */
static int bind_reuseport(uv_tcp_t *listener, const struct stoke_addr *a)
{
    int one = 1;
    socklen_t len =
        a->ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)&a->ss, len) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    int r = uv_tcp_open(listener, fd);
    if (r < 0)
        close(fd);
    return r;
}

int proxy_new(uv_loop_t *loop, const struct proxy_config *cfg, const struct proxy_hooks *hooks,
              struct proxy **ret)
{
    struct proxy *px = calloc(1, sizeof(*px));
    if (!px)
        return -ENOMEM;
    px->loop = loop;
    px->cfg = *cfg;
    px->hooks = *hooks;
    stoke_list_init(&px->clients);
    stoke_list_init(&px->free_rqs);
    stoke_list_init(&px->draining);
    stoke_list_init(&px->over);
    stoke_list_init(&px->fn_list);
    stoke_list_init(&px->active);
    stoke_list_init(&px->kicks);
    stoke_list_init(&px->waiting);
    px->limits = hooks->limits;
    px->worker = hooks->limits ? hooks->worker : 0;
    if (!px->limits) {
        int r = limits_new(1, cfg->max_connections, &px->limits);
        if (r < 0) {
            free(px);
            return r;
        }
        px->own_limits = true;
    }
    uint64_t seed = 0;
    if (uv_random(NULL, NULL, &seed, sizeof(seed), 0, NULL) < 0)
        seed = (uint64_t)uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)px;
    snprintf(px->request_id_next, sizeof(px->request_id_next), "%016" PRIx64 "%016d", seed, 0);

    llhttp_settings_init(&px->req_settings);
    px->req_settings.on_message_begin = on_req_begin;
    px->req_settings.on_url = on_req_url;
    px->req_settings.on_header_field = on_req_field;
    px->req_settings.on_header_value = on_req_value;
    px->req_settings.on_header_value_complete = on_req_header_done;
    px->req_settings.on_headers_complete = on_req_headers_complete;
    px->req_settings.on_body = on_req_body;
    px->req_settings.on_chunk_header = on_req_chunk_header;
    px->req_settings.on_message_complete = on_req_complete;

    llhttp_settings_init(&px->resp_settings);
    px->resp_settings.on_message_begin = on_resp_begin;
    px->resp_settings.on_status = on_resp_status;
    px->resp_settings.on_header_field = on_resp_field;
    px->resp_settings.on_header_value = on_resp_value;
    px->resp_settings.on_header_value_complete = on_resp_header_done;
    px->resp_settings.on_headers_complete = on_resp_headers_complete;
    px->resp_settings.on_body = on_resp_body;
    px->resp_settings.on_chunk_header = on_resp_chunk_header;
    px->resp_settings.on_message_complete = on_resp_complete;

    uv_tcp_init(loop, &px->listener);
    px->listener.data = px;
    uv_idle_init(loop, &px->drain);
    px->drain.data = px;
    uv_timer_init(loop, &px->refused);
    px->refused.data = px;
    uv_async_init(loop, &px->wake, on_wake);
    px->wake.data = px;
    limits_set_wake(px->limits, px->worker, &px->wake);
    px->handles = 4;

    uv_timer_init(loop, &px->events_timer);
    px->events_timer.data = px;
    px->handles++;
    int r = cfg->has_events ? events_route(px) : 0;
    if (r == 0 && cfg->has_events && cfg->events_host[0])
        uv_timer_start(&px->events_timer, on_events_timer, 0, 0);
    if (r == 0)
        r = cfg->reuse_port
                ? bind_reuseport(&px->listener, &cfg->listen)
                : uv_tcp_bind(&px->listener, (const struct sockaddr *)&cfg->listen.ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&px->listener, 1024, on_accept);
    if (r < 0) {
        proxy_close(px, NULL, NULL);
        return r;
    }
    *ret = px;
    return 0;
}

static void proxy_handle_closed(struct proxy *px)
{
    if (--px->handles > 0 || !px->closing)
        return;
    if (px->own_limits)
        limits_free(px->limits);
    if (px->on_closed)
        px->on_closed(px->closed_data);
    free(px);
}

static void on_proxy_handle_closed(uv_handle_t *h)
{
    proxy_handle_closed(h->data);
}

void proxy_close(struct proxy *px, void (*on_closed)(void *data), void *data)
{
    px->closing = true;
    px->on_closed = on_closed;
    px->closed_data = data;
    while (!stoke_list_empty(&px->clients))
        client_close(stoke_container_of(stoke_list_first(&px->clients), struct client, node));
    while (!stoke_list_empty(&px->free_rqs)) {
        struct request *rq =
            stoke_container_of(stoke_list_first(&px->free_rqs), struct request, fnode);
        stoke_list_remove(&rq->fnode);
        request_free(px, rq);
    }
    px->n_free_rqs = 0;
    while (!stoke_list_empty(&px->fn_list))
        fn_remove(px, stoke_container_of(stoke_list_first(&px->fn_list), struct fn, lnode));
    if (px->events_fn)
        fn_retire(px->events_fn);
    px->events_fn = NULL;
    free(px->buckets);
    px->buckets = NULL;
    px->n_buckets = 0;
    uv_close((uv_handle_t *)&px->listener, on_proxy_handle_closed);
    uv_close((uv_handle_t *)&px->drain, on_proxy_handle_closed);
    uv_close((uv_handle_t *)&px->refused, on_proxy_handle_closed);
    uv_close((uv_handle_t *)&px->events_timer, on_proxy_handle_closed);
    limits_set_wake(px->limits, px->worker, NULL); /* no send reaches it after this */
    uv_close((uv_handle_t *)&px->wake, on_proxy_handle_closed);
}
