/* stoke-events: async invocations (README "Async invocations").
 *
 * One libuv loop; the store (store.h) on its own thread. The activator
 * forwards an async request here (--listen, TCP, with a token): it is written
 * to the store and answered 202 once the commit is synced. Every call
 * waiting or running is also held in memory, per function, and delivered
 * from there as an ordinary request through the activator (--activator),
 * at most async.maxInFlight of a function at once, with retries, back-off
 * and a dead-letter list. The state of a call is read from the store
 * (GET /_stoke/calls/<id>, through the activator too); the dead-letter
 * lists are managed over the admin socket (--admin-socket, stokectl dlq).
 *
 * Delivery is at least once. Before an attempt is sent, the call is
 * marked running with a lease (the activator's longest time for it plus a
 * margin) and that is committed; a call found running at start is sent
 * again only once its lease has passed, so it never runs twice at once. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <llhttp.h>
#include <uv.h>

#include "fnspec.h"
#include "schedules.h"
#include "stoke/curluv.h"
#include "stoke/httpd.h"
#include "stoke/list.h"
#include "stoke/log.h"
#include "stoke/opsd.h"
#include "stoke/spec.h"
#include "stoke/util.h"
#include "store.h"
#include "triggers.h"

#define DEFAULT_LISTEN "127.0.0.1:8091"
#define DEFAULT_ACTIVATOR "127.0.0.1:8080"
#define DEFAULT_ADMIN_SOCKET "/run/stoke-events/events.sock"
#define DEFAULT_DB "/var/lib/stoke-events/events.db"
#define DEFAULT_OPS "127.0.0.1:9093"
#define CALLS_PREFIX "/_stoke/calls/"
/* A lease is the activator's longest time for a call (its queue timeout
 * plus its timeout) plus lease_margin_ms; our own request gives up at half
 * the margin, so the lease always ends last. */
static uint64_t lease_margin_ms = 30000;
#define MAX_RESP_HEADERS (16 * 1024)
#define MAX_LIST 1000
#define CALLBACK_TRIES 3

struct efn {
    struct stoke_list node; /* fns */
    char name[STOKE_NAME_MAX + 1];
    struct stoke_list queue; /* struct pend, waiting (not in flight) */
    uint32_t inflight;
    uint32_t max_in_flight; /* the last accepted call's */
    uint64_t accepted, succeeded, failed, retried, throttled, dead;
};

struct pend {
    struct stoke_list node; /* fn->queue while waiting */
    struct efn *fn;
    struct ev_call *c;
    bool busy; /* a store write or an attempt is under way */
    /* the attempt */
    CURL *easy;
    struct curl_slist *hdrs;
    struct stoke_buf rhead, rbody;
    char url[2048];
};

static uv_loop_t *loop;
static struct ev_store *store;
static struct stoke_curluv *curl;
static struct stoke_httpd *ingest, *admin;
static struct stoke_opsd *opsd;
static struct stoke_list fns;
static uv_timer_t pump_timer, gc_timer;
static uv_signal_t sigint, sigterm;
static char activator_base[128];
static uint64_t max_queued = 100000, n_queued;
static uint64_t retention_ms = 24 * 3600 * 1000ULL;
static bool stopping;
static char *ingest_token; /* --token-file's: every async call carries it */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t rand32(void)
{
    uint32_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != sizeof(v))
        v = (uint32_t)rand();
    return v;
}

static void random_hex(char *out, size_t bytes)
{
    unsigned char b[32];
    if (bytes > sizeof(b))
        bytes = sizeof(b);
    if (getrandom(b, bytes, 0) != (ssize_t)bytes) {
        for (size_t i = 0; i < bytes; i++)
            b[i] = (unsigned char)rand();
    }
    for (size_t i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static struct efn *fn_get(const char *name)
{
    for (struct stoke_list *n = fns.next; n != &fns; n = n->next) {
        struct efn *f = stoke_container_of(n, struct efn, node);
        if (strcmp(f->name, name) == 0)
            return f;
    }
    struct efn *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    snprintf(f->name, sizeof(f->name), "%s", name);
    stoke_list_init(&f->queue);
    f->max_in_flight = 10;
    stoke_list_insert_tail(&fns, &f->node);
    return f;
}

static void schedule_pump(void);
static void on_pump_timer(uv_timer_t *t);

/* ---- store jobs -------------------------------------------------------- */

/* A write of one call's state: a snapshot of its scalars and answer, so
 * the loop may go on changing the call. */
struct write_job {
    struct ev_job job;
    struct ev_call snap; /* method, path, headers, body, callback: NULL */
    bool insert;
    bool callback_due; /* and the callback it owes now (callback_owed()) */
    struct pend *p;    /* for done, or NULL */
    void (*then)(struct write_job *w);
    struct stoke_httpd_req *req; /* an ingest waiting for its 202 */
};

/* Whether call `c`, as it is now, owes its X-Callback-Url the result: it
 * has one and ended other than cancelled. */
static bool callback_owed(const struct ev_call *c)
{
    return c->callback && c->state >= EV_SUCCEEDED && c->state != EV_CANCELLED;
}

static int run_write(sqlite3 *db, struct ev_job *job)
{
    struct write_job *w = (struct write_job *)job;
    int r = w->insert ? ev_db_insert(db, &w->snap) : ev_db_update(db, &w->snap);
    /* The callback owed is stored with the end, in its transaction. */
    if (r == 0 && w->callback_due)
        r = ev_db_callback_due(db, w->snap.id);
    return r;
}

static void write_free(struct write_job *w)
{
    if (!w->insert) {
        free(w->snap.resp_headers);
        free(w->snap.resp_body);
    }
    free(w);
}

static void on_write_done(struct ev_job *job)
{
    struct write_job *w = (struct write_job *)job;
    if (w->then)
        w->then(w);
    write_free(w);
}

static char *dup_or_null(const char *s, size_t len)
{
    if (!s)
        return NULL;
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

/* Queues a write of `c`'s state; `then` (may be NULL) runs once committed. */
static int write_call(struct pend *p, void (*then)(struct write_job *w))
{
    struct write_job *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->snap = *p->c;
    w->snap.method = w->snap.path = w->snap.headers = w->snap.body = w->snap.callback = NULL;
    w->snap.resp_headers =
        dup_or_null(p->c->resp_headers, p->c->resp_headers ? strlen(p->c->resp_headers) : 0);
    w->snap.resp_body = dup_or_null(p->c->resp_body, p->c->resp_body_len);
    w->callback_due = callback_owed(p->c);
    w->p = p;
    w->then = then;
    w->job.run = run_write;
    w->job.done = on_write_done;
    ev_store_submit(store, &w->job);
    return 0;
}

/* ---- delivery ---------------------------------------------------------- */

static void pend_free(struct pend *p)
{
    stoke_list_remove(&p->node);
    curl_slist_free_all(p->hdrs);
    stoke_buf_done(&p->rhead);
    stoke_buf_done(&p->rbody);
    ev_call_free(p->c);
    free(p);
}

static void send_callback(const struct ev_call *c);

/* An ended call (succeeded, failed, dead, cancelled): written, then let go. */
static void on_final_written(struct write_job *w)
{
    struct pend *p = w->p;
    if (w->job.result < 0)
        stoke_error(p->fn->name, w->job.result, "call %s: its end was not stored", p->c->id);
    else if (callback_owed(p->c) && !stopping)
        send_callback(p->c);
    if (w->job.result >= 0 && !stopping)
        triggers_call_ended(p->c); /* a queue trigger's message: acknowledged now */
    pend_free(p);
}

static void finish(struct pend *p, int state, const char *condition)
{
    struct efn *f = p->fn;
    p->c->state = state;
    p->c->finished_ms = now_ms();
    p->c->lease_ms = 0;
    snprintf(p->c->condition, sizeof(p->c->condition), "%s", condition ? condition : "");
    if (state == EV_SUCCEEDED)
        f->succeeded++;
    else if (state == EV_FAILED)
        f->failed++;
    else if (state == EV_DEAD)
        f->dead++;
    stoke_log(state == EV_SUCCEEDED ? STOKE_LOG_DEBUG : STOKE_LOG_INFO, f->name, 0,
              "call %s %s after %" PRIu32 " attempts%s%s", p->c->id, ev_state_names[state],
              p->c->attempts, condition ? ": " : "", condition ? condition : "");
    stoke_list_remove(&p->node);
    n_queued--;
    p->busy = true;
    if (write_call(p, on_final_written) < 0)
        pend_free(p); /* (stays as stored: redelivered after a restart) */
}

static size_t on_body(char *ptr, size_t size, size_t n, void *data)
{
    struct pend *p = data;
    size_t len = size * n;
    size_t room = EV_MAX_RESP_BODY - p->rbody.len;
    (void)stoke_buf_append(&p->rbody, ptr, len < room ? len : room);
    return len; /* the rest is read and dropped */
}

static size_t on_header(char *ptr, size_t size, size_t n, void *data)
{
    struct pend *p = data;
    size_t len = size * n;
    if (len >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        stoke_buf_clear(&p->rhead); /* a new answer (after a 100) */
        return len;
    }
    if (len > 2 && stoke_buf_append(&p->rhead, ptr, len) < 0)
        return len; /* past the cap: the rest is dropped */
    return len;
}

/* Retry-After in ms (delta-seconds only), or 0. */
static uint64_t retry_after_ms(const char *h)
{
    for (const char *l = h; l && *l;) {
        const char *eol = strchr(l, '\n');
        if (strncasecmp(l, "retry-after:", 12) == 0) {
            uint64_t v = 0;
            const char *d = l + 12;
            while (*d == ' ')
                d++;
            for (; *d >= '0' && *d <= '9' && v < 86400; d++)
                v = v * 10 + (uint64_t)(*d - '0');
            return v * 1000;
        }
        l = eol ? eol + 1 : NULL;
    }
    return 0;
}

/* Exponential back-off from `base` for the n-th retry (1...), with +-20%
 * jitter. */
static uint64_t backoff(uint64_t base, uint32_t n)
{
    uint64_t d = base;
    for (uint32_t i = 1; i < n && d < 24 * 3600 * 1000ULL; i++)
        d *= 2;
    uint64_t j = d / 5;
    return d - j + (j ? (rand32() % (2 * j + 1)) : 0);
}

static void requeue(struct pend *p, uint64_t delay_ms)
{
    struct ev_call *c = p->c;
    int64_t now = now_ms();
    if (now + (int64_t)delay_ms > c->created_ms + (int64_t)c->a.max_age_ms) {
        finish(p, EV_DEAD, "EventAgeExceeded");
        return;
    }
    c->state = EV_QUEUED;
    c->lease_ms = 0;
    c->due_ms = now + (int64_t)delay_ms;
    stoke_list_insert_tail(&p->fn->queue, &p->node);
    p->busy = true;
    if (write_call(p, NULL) < 0)
        stoke_error(p->fn->name, -ENOMEM, "call %s: its retry was not stored", c->id);
    p->busy = false;
    schedule_pump();
}

/* An attempt ended: the answer's `status`, or 0 and curl's `rc`. */
static void attempt_end(struct pend *p, long status, CURLcode rc)
{
    struct ev_call *c = p->c;
    struct efn *f = p->fn;
    curl_slist_free_all(p->hdrs);
    p->hdrs = NULL;
    f->inflight--;
    p->busy = false;
    if (stopping) {
        pend_free(p); /* stays running in the store: its lease covers it */
        return;
    }
    c->status = (int)status;
    free(c->resp_headers);
    free(c->resp_body);
    c->resp_headers = stoke_buf_steal(&p->rhead, NULL);
    c->resp_body = stoke_buf_steal(&p->rbody, &c->resp_body_len);
    stoke_buf_init(&p->rhead, MAX_RESP_HEADERS);
    stoke_buf_init(&p->rbody, EV_MAX_RESP_BODY);
    uint64_t ra = retry_after_ms(c->resp_headers);
    if (status >= 200 && status < 300) {
        finish(p, EV_SUCCEEDED, NULL);
    } else if (status == 429 || status == 503) {
        /* Throttled (the activator's limits, or the function's): the
         * attempt does not count; the call's age still bounds it. */
        c->attempts--;
        c->throttles++;
        f->throttled++;
        uint64_t d = backoff(1000, c->throttles < 6 ? c->throttles : 6);
        requeue(p, ra > d ? ra : d);
    } else if (status == 0 || status == 408 || status >= 500) {
        if (c->attempts > c->a.retries) {
            finish(p, EV_DEAD, "RetriesExhausted");
        } else {
            f->retried++;
            uint64_t d = backoff(c->a.backoff_ms, c->attempts);
            stoke_info(f->name, "call %s: attempt %" PRIu32 " %s %ld, retry in %" PRIu64 " ms",
                       c->id, c->attempts,
                       status ? "answered" : "failed:", status ? status : (long)rc,
                       ra > d ? ra : d);
            requeue(p, ra > d ? ra : d);
        }
    } else {
        /* A queue trigger's message is never lost: dead-lettered, so that
         * it can be redriven. */
        finish(p, triggers_is_trigger_call(c) ? EV_DEAD : EV_FAILED, "NotRetryable");
    }
    schedule_pump();
}

static void on_attempt_done(CURL *easy, CURLcode rc, void *data)
{
    struct pend *p = data;
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);
    p->easy = NULL;
    attempt_end(p, status, rc);
}

static void attempt_send(struct pend *p)
{
    struct ev_call *c = p->c;
    CURL *e = curl_easy_init();
    struct curl_slist *h = NULL;
    char line[256];
    if (!e)
        goto fail;
    snprintf(p->url, sizeof(p->url), "%s/fn/%s%s%s", activator_base, c->fn,
             c->path[0] == '/' ? "" : "/", c->path);
    curl_easy_setopt(e, CURLOPT_URL, p->url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method);
    if (strcmp(c->method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (c->body_len > 0 || strcmp(c->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body ? c->body : "");
    }
    bool has_tp = false, has_ct = false;
    for (const char *l = c->headers; l && *l;) {
        const char *eol = strstr(l, "\r\n");
        size_t n = eol ? (size_t)(eol - l) : strlen(l);
        char *one = dup_or_null(l, n);
        struct curl_slist *t = one ? curl_slist_append(h, one) : NULL;
        free(one);
        if (!t)
            goto fail;
        h = t;
        has_tp |= strncasecmp(l, "traceparent:", 12) == 0;
        has_ct |= strncasecmp(l, "content-type:", 13) == 0;
        l = eol ? eol + 2 : NULL;
    }
    snprintf(line, sizeof(line), "X-Stoke-Call-Id: %s", c->id);
    struct curl_slist *t = curl_slist_append(h, line);
    h = t ? t : h;
    snprintf(line, sizeof(line), "X-Stoke-Attempt: %" PRIu32, c->attempts);
    t = t ? curl_slist_append(h, line) : NULL;
    h = t ? t : h;
    if (!has_tp && t) {
        char span[17];
        random_hex(span, 8);
        snprintf(line, sizeof(line), "traceparent: 00-%s-%s-01", c->id, span);
        t = curl_slist_append(h, line);
        h = t ? t : h;
    }
    if (t)
        t = curl_slist_append(h, "Expect:");
    h = t ? t : h;
    if (t && !has_ct)
        t = curl_slist_append(h, "Content-Type:");
    h = t ? t : h;
    if (!t)
        goto fail;
    p->hdrs = h;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, p);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, p);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(c->timeout_ms + lease_margin_ms / 2));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    stoke_buf_clear(&p->rhead);
    stoke_buf_clear(&p->rbody);
    p->easy = e;
    p->busy = true;
    if (stoke_curluv_add(curl, e, on_attempt_done, p) < 0) {
        p->easy = NULL;
        p->hdrs = NULL;
        goto fail;
    }
    return;
fail:
    curl_slist_free_all(h);
    if (e)
        curl_easy_cleanup(e);
    attempt_end(p, 0, CURLE_OUT_OF_MEMORY);
}

/* The running mark (and its lease) is on disk: send the attempt. */
static void on_running_written(struct write_job *w)
{
    struct pend *p = w->p;
    if (stopping) {
        p->fn->inflight--;
        pend_free(p);
        return;
    }
    if (w->job.result < 0) {
        stoke_error(p->fn->name, w->job.result, "call %s: its lease was not stored", p->c->id);
        p->c->attempts--;
        p->fn->inflight--;
        p->busy = false;
        p->c->state = EV_QUEUED;
        p->c->due_ms = now_ms() + 1000;
        stoke_list_insert_tail(&p->fn->queue, &p->node);
        schedule_pump();
        return;
    }
    attempt_send(p);
}

static void deliver(struct pend *p)
{
    struct ev_call *c = p->c;
    stoke_list_remove(&p->node);
    p->fn->inflight++;
    c->state = EV_RUNNING;
    c->attempts++;
    c->lease_ms = now_ms() + (int64_t)(c->timeout_ms + lease_margin_ms);
    p->busy = true;
    if (write_call(p, on_running_written) < 0) {
        c->attempts--;
        c->state = EV_QUEUED;
        p->busy = false;
        p->fn->inflight--;
        stoke_list_insert_tail(&p->fn->queue, &p->node);
    }
}

/* Sends what is due, up to each function's maxInFlight, and sets the
 * timer for the next due call. */
static void pump(void)
{
    if (stopping)
        return;
    int64_t now = now_ms(), next = INT64_MAX;
    for (struct stoke_list *n = fns.next; n != &fns; n = n->next) {
        struct efn *f = stoke_container_of(n, struct efn, node);
        if (f->inflight >= f->max_in_flight)
            continue;
        for (struct stoke_list *q = f->queue.next; q != &f->queue;) {
            struct pend *p = stoke_container_of(q, struct pend, node);
            q = q->next;
            if (p->busy)
                continue;
            if (now > p->c->created_ms + (int64_t)p->c->a.max_age_ms) {
                finish(p, EV_DEAD, "EventAgeExceeded");
                continue;
            }
            if (p->c->due_ms > now) {
                if (p->c->due_ms < next)
                    next = p->c->due_ms;
                continue;
            }
            deliver(p);
            if (f->inflight >= f->max_in_flight)
                break; /* (the rest: when an attempt ends) */
        }
    }
    /* At least once a second: the ages of calls behind a full function. */
    uint64_t wait = next - now < 1000 ? (uint64_t)(next - now) : 1000;
    uv_timer_start(&pump_timer, on_pump_timer, wait, 0);
}

static void on_pump_timer(uv_timer_t *t)
{
    (void)t;
    pump();
}

static void on_pump_idle(uv_idle_t *h);
static uv_idle_t pump_idle;

/* Pumps once on the next loop turn (many changes, one walk). */
static void schedule_pump(void)
{
    if (!stopping)
        uv_idle_start(&pump_idle, on_pump_idle);
}

static void on_pump_idle(uv_idle_t *h)
{
    uv_idle_stop(h);
    pump();
}

/* ---- callbacks (X-Callback-Url) ---------------------------------------- */

struct cbk {
    struct stoke_list node; /* cbks */
    char *url;
    char *body;
    size_t body_len;
    struct curl_slist *hdrs;
    unsigned tries;
    uv_timer_t timer;
    char fn[STOKE_NAME_MAX + 1];
    char id[33];
};

static struct stoke_list cbks;

static void cbk_free_handle(uv_handle_t *h)
{
    struct cbk *k = h->data;
    stoke_list_remove(&k->node);
    curl_slist_free_all(k->hdrs);
    free(k->url);
    free(k->body);
    free(k);
}

static void cbk_try(struct cbk *k);

/* The store forgets a callback once taken or given up. */
struct cbk_done_job {
    struct ev_job job;
    char id[33];
};

static int run_cbk_done(sqlite3 *db, struct ev_job *job)
{
    return ev_db_callback_done(db, ((struct cbk_done_job *)job)->id);
}

static void on_cbk_done_written(struct ev_job *job)
{
    free(job);
}

static void cbk_forget(const struct cbk *k)
{
    struct cbk_done_job *j = calloc(1, sizeof(*j));
    if (!j)
        return; /* sent again after a restart: at least once */
    memcpy(j->id, k->id, sizeof(j->id));
    j->job.run = run_cbk_done;
    j->job.done = on_cbk_done_written;
    ev_store_submit(store, &j->job);
}

static void on_cbk_timer(uv_timer_t *t)
{
    cbk_try(t->data);
}

static size_t discard(char *ptr, size_t size, size_t n, void *data)
{
    (void)ptr;
    (void)data;
    return size * n;
}

static void on_cbk_done(CURL *easy, CURLcode rc, void *data)
{
    struct cbk *k = data;
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);
    if (stopping) {
        uv_close((uv_handle_t *)&k->timer, cbk_free_handle); /* owed still: sent after a restart */
        return;
    }
    if ((status >= 200 && status < 300) || ++k->tries >= CALLBACK_TRIES) {
        if (!(status >= 200 && status < 300))
            stoke_warn(k->fn, 0, "call %s: callback %s not taken (status %ld, curl %d)", k->id,
                       k->url, status, (int)rc);
        cbk_forget(k);
        uv_close((uv_handle_t *)&k->timer, cbk_free_handle);
        return;
    }
    uv_timer_start(&k->timer, on_cbk_timer, 1000ULL << k->tries, 0);
}

static void cbk_try(struct cbk *k)
{
    CURL *e = curl_easy_init();
    if (e) {
        curl_easy_setopt(e, CURLOPT_URL, k->url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)k->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, k->body ? k->body : "");
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, k->hdrs);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    }
    if (!e || stoke_curluv_add(curl, e, on_cbk_done, k) < 0) {
        if (e)
            curl_easy_cleanup(e);
        uv_close((uv_handle_t *)&k->timer, cbk_free_handle);
    }
}

/* POSTs the result of an ended call to its X-Callback-Url: the answer's
 * body, X-Call-Id, X-Stoke-Call-State and X-Stoke-Status; tried up to
 * CALLBACK_TRIES times. Owed in the store until then (ev_db_callback_due):
 * a restart sends it again, so a callback comes at least once. */
static void send_callback(const struct ev_call *c)
{
    struct cbk *k = calloc(1, sizeof(*k));
    char line[128];
    if (!k)
        return;
    k->url = strdup(c->callback);
    k->body = dup_or_null(c->resp_body ? c->resp_body : "", c->resp_body_len);
    k->body_len = c->resp_body_len;
    snprintf(k->fn, sizeof(k->fn), "%s", c->fn);
    snprintf(k->id, sizeof(k->id), "%s", c->id);
    snprintf(line, sizeof(line), "X-Call-Id: %s", c->id);
    k->hdrs = curl_slist_append(NULL, line);
    snprintf(line, sizeof(line), "X-Stoke-Call-State: %s", ev_state_names[c->state]);
    struct curl_slist *t = k->hdrs ? curl_slist_append(k->hdrs, line) : NULL;
    snprintf(line, sizeof(line), "X-Stoke-Status: %d", c->status);
    t = t ? curl_slist_append(t, line) : NULL;
    t = t ? curl_slist_append(t, "Content-Type: application/octet-stream") : NULL;
    t = t ? curl_slist_append(t, "Expect:") : NULL;
    uv_timer_init(loop, &k->timer);
    k->timer.data = k;
    stoke_list_insert_tail(&cbks, &k->node);
    if (!t || !k->url || !k->body) {
        uv_close((uv_handle_t *)&k->timer, cbk_free_handle);
        return;
    }
    cbk_try(k);
}

/* ---- a call as JSON ---------------------------------------------------- */

static json_object *headers_json(const char *h)
{
    json_object *o = json_object_new_object();
    for (const char *l = h; o && l && *l;) {
        const char *eol = strchr(l, '\n');
        size_t n = eol ? (size_t)(eol - l) : strlen(l);
        const char *colon = memchr(l, ':', n);
        if (colon) {
            char name[128];
            size_t nl =
                (size_t)(colon - l) < sizeof(name) - 1 ? (size_t)(colon - l) : sizeof(name) - 1;
            for (size_t i = 0; i < nl; i++)
                name[i] = (char)((l[i] >= 'A' && l[i] <= 'Z') ? l[i] + 32 : l[i]);
            name[nl] = '\0';
            const char *v = colon + 1, *e = l + n;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == '\r' || e[-1] == ' '))
                e--;
            json_object_object_add(o, name, json_object_new_string_len(v, (int)(e - v)));
        }
        l = eol ? eol + 1 : NULL;
    }
    return o;
}

static json_object *ms_json(int64_t ms)
{
    return ms > 0 ? json_object_new_int64(ms) : NULL;
}

/* The call's state; for a dead one, also its record in the form of
 * Lambda's dead-letter invocation record. */
static json_object *call_json(const struct ev_call *c)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "id", json_object_new_string(c->id));
    json_object_object_add(o, "function", json_object_new_string(c->fn));
    json_object_object_add(o, "state", json_object_new_string(ev_state_names[c->state]));
    json_object_object_add(o, "attempts", json_object_new_int64(c->attempts));
    json_object_object_add(o, "throttled", json_object_new_int64(c->throttles));
    json_object_object_add(o, "created_ms", ms_json(c->created_ms));
    json_object_object_add(o, "next_attempt_ms", c->state == EV_QUEUED ? ms_json(c->due_ms) : NULL);
    json_object_object_add(o, "lease_until_ms",
                           c->state == EV_RUNNING ? ms_json(c->lease_ms) : NULL);
    json_object_object_add(o, "finished_ms", ms_json(c->finished_ms));
    json_object_object_add(o, "method", json_object_new_string(c->method));
    json_object_object_add(o, "path", json_object_new_string(c->path));
    if (c->condition[0])
        json_object_object_add(o, "condition", json_object_new_string(c->condition));
    if (c->status) {
        json_object *r = json_object_new_object();
        json_object_object_add(r, "status", json_object_new_int(c->status));
        json_object_object_add(r, "headers", headers_json(c->resp_headers));
        json_object_object_add(
            r, "body",
            json_object_new_string_len(c->resp_body ? c->resp_body : "", (int)c->resp_body_len));
        json_object_object_add(o, "response", r);
    }
    if (c->state == EV_DEAD) {
        json_object *rec = json_object_new_object(), *ctx = json_object_new_object(),
                    *resp = json_object_new_object();
        json_object_object_add(rec, "version", json_object_new_string("1.0"));
        json_object_object_add(rec, "timestamp_ms", ms_json(c->finished_ms));
        json_object_object_add(ctx, "requestId", json_object_new_string(c->id));
        json_object_object_add(ctx, "functionName", json_object_new_string(c->fn));
        json_object_object_add(ctx, "condition", json_object_new_string(c->condition));
        json_object_object_add(ctx, "approximateInvokeCount", json_object_new_int64(c->attempts));
        json_object_object_add(rec, "requestContext", ctx);
        json_object_object_add(
            rec, "requestPayload",
            json_object_new_string_len(c->body ? c->body : "", (int)c->body_len));
        json_object_object_add(resp, "statusCode", json_object_new_int(c->status));
        json_object_object_add(rec, "responseContext", resp);
        json_object_object_add(o, "record", rec);
    }
    return o;
}

/* ---- reads over the store ---------------------------------------------- */

/* A read (or a redrive, a purge) on the store thread, answered from the
 * loop: the request it answers goes with it (on_abort clears it). */
struct read_job {
    struct ev_job job;
    char id[33];
    char fn[STOKE_NAME_MAX + 1];
    int kind;
    struct ev_call *one;
    json_object *list;    /* kind LIST */
    struct ev_call **got; /* kind REDRIVE: the calls set queued again */
    size_t n_got, cap_got;
    int count;
    struct stoke_httpd_req *req;
};

enum { R_GET, R_LIST, R_REDRIVE, R_PURGE, R_GC };

static void on_req_abort(struct stoke_httpd_req *req, void *data)
{
    (void)req;
    struct read_job *j = data;
    j->req = NULL;
}

static void collect_json(struct ev_call *c, void *data)
{
    struct read_job *j = data;
    json_object_array_add(j->list, call_json(c));
    ev_call_free(c);
}

static void collect_call(struct ev_call *c, void *data)
{
    struct read_job *j = data;
    if (j->n_got == j->cap_got) {
        size_t cap = j->cap_got ? 2 * j->cap_got : 16;
        struct ev_call **g = realloc(j->got, cap * sizeof(*g));
        if (!g) {
            ev_call_free(c);
            return;
        }
        j->got = g;
        j->cap_got = cap;
    }
    j->got[j->n_got++] = c;
}

static int run_read(sqlite3 *db, struct ev_job *job)
{
    struct read_job *j = (struct read_job *)job;
    int r = 0;
    switch (j->kind) {
    case R_GET:
        return ev_db_get(db, j->id, &j->one);
    case R_LIST:
        return ev_db_list(db, j->fn, EV_DEAD, MAX_LIST, collect_json, j);
    case R_REDRIVE:
        if (j->id[0]) {
            struct ev_call *c = NULL;
            r = ev_db_get(db, j->id, &c);
            if (r == 0 && (c->state != EV_DEAD || strcmp(c->fn, j->fn) != 0)) {
                ev_call_free(c);
                return -ENOENT;
            }
            if (r == 0)
                collect_call(c, j);
        } else {
            r = ev_db_list(db, j->fn, EV_DEAD, SIZE_MAX, collect_call, j);
        }
        /* Again as new: no attempts, a fresh age. */
        for (size_t i = 0; r == 0 && i < j->n_got; i++) {
            struct ev_call *c = j->got[i];
            c->state = EV_QUEUED;
            c->attempts = c->throttles = 0;
            c->created_ms = c->due_ms = now_ms();
            c->lease_ms = c->finished_ms = 0;
            c->condition[0] = '\0';
            r = ev_db_update(db, c);
        }
        return r;
    case R_PURGE:
        j->count = ev_db_delete(db, j->fn, EV_DEAD, 0);
        return j->count < 0 ? j->count : 0;
    case R_GC:
        j->count = ev_db_delete(db, NULL, -1, now_ms() - (int64_t)retention_ms);
        return j->count < 0 ? j->count : 0;
    }
    return -EINVAL;
}

static struct pend *pend_new(struct ev_call *c);

static void on_read_done(struct ev_job *job)
{
    struct read_job *j = (struct read_job *)job;
    struct stoke_httpd_req *req = j->req;
    int r = job->result;
    if (req)
        req->on_abort = NULL;
    if (j->kind == R_REDRIVE && r == 0) {
        for (size_t i = 0; i < j->n_got; i++) {
            struct pend *p = pend_new(j->got[i]);
            if (p)
                j->got[i] = NULL;
        }
        stoke_info(j->fn, "%zu dead calls redriven", j->n_got);
        schedule_pump();
    }
    if (req) {
        if (r == -ENOENT)
            stoke_httpd_reply_error(req, 404, NULL, NULL, "no such call");
        else if (r < 0)
            stoke_httpd_reply_error(req, 503, NULL, NULL, "store: %s", strerror(-r));
        else if (j->kind == R_GET)
            stoke_httpd_reply_json(req, 200, NULL, call_json(j->one));
        else if (j->kind == R_LIST) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "function", json_object_new_string(j->fn));
            json_object_object_add(o, "calls", j->list);
            j->list = NULL;
            stoke_httpd_reply_json(req, 200, NULL, o);
        } else {
            json_object *o = json_object_new_object();
            json_object_object_add(
                o, j->kind == R_REDRIVE ? "redriven" : "purged",
                json_object_new_int64(j->kind == R_REDRIVE ? (int64_t)j->n_got : j->count));
            stoke_httpd_reply_json(req, 200, NULL, o);
        }
    }
    if (j->kind == R_GC && r == 0 && j->count > 0)
        stoke_info(NULL, "%d ended calls past their retention deleted", j->count);
    ev_call_free(j->one);
    json_object_put(j->list);
    for (size_t i = 0; i < j->n_got; i++)
        ev_call_free(j->got[i]);
    free(j->got);
    free(j);
}

static void read_submit(struct stoke_httpd_req *req, int kind, const char *fn, const char *id)
{
    struct read_job *j = calloc(1, sizeof(*j));
    if (!j || (kind == R_LIST && !(j->list = json_object_new_array()))) {
        free(j);
        if (req)
            stoke_httpd_reply_error(req, 503, NULL, NULL, "out of memory");
        return;
    }
    j->kind = kind;
    snprintf(j->fn, sizeof(j->fn), "%s", fn ? fn : "");
    snprintf(j->id, sizeof(j->id), "%s", id ? id : "");
    j->req = req;
    if (req) {
        req->on_abort = on_req_abort;
        req->handler_data = j;
    }
    j->job.run = run_read;
    j->job.done = on_read_done;
    ev_store_submit(store, &j->job);
}

static bool valid_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return false;
    }
    return n == 32;
}

/* A call held in memory (waiting or running), or NULL. */
static struct pend *pend_find(const char *id, bool *ret_running)
{
    for (struct stoke_list *n = fns.next; n != &fns; n = n->next) {
        struct efn *f = stoke_container_of(n, struct efn, node);
        for (struct stoke_list *q = f->queue.next; q != &f->queue; q = q->next) {
            struct pend *p = stoke_container_of(q, struct pend, node);
            if (strcmp(p->c->id, id) == 0) {
                *ret_running = p->busy;
                return p;
            }
        }
    }
    *ret_running = true; /* (not waiting: in flight, or not held) */
    return NULL;
}

static void call_get_or_cancel(struct stoke_httpd_req *req, const char *id)
{
    if (!valid_id(id)) {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such call");
        return;
    }
    if (req->method == HTTP_DELETE) {
        bool busy;
        struct pend *p = pend_find(id, &busy);
        if (!p || busy) {
            stoke_httpd_reply_error(req, 409, NULL, NULL,
                                    "only a queued call can be cancelled: see its state");
            return;
        }
        finish(p, EV_CANCELLED, "Cancelled");
        /* The state read follows the write: the answer shows it. */
    } else if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        stoke_httpd_reply_error(req, 405, "Allow: GET, HEAD, DELETE\r\n", NULL,
                                "method not allowed");
        return;
    }
    read_submit(req, R_GET, NULL, id);
}

/* ---- ingest ------------------------------------------------------------ */

/* The last header `name` of the lines in `h`, its value's bounds. */
static bool header_last(const char *h, const char *name, const char **ret_v, size_t *ret_len)
{
    size_t nl = strlen(name);
    bool found = false;
    for (const char *l = h; l && *l;) {
        const char *eol = strstr(l, "\r\n");
        size_t n = eol ? (size_t)(eol - l) : strlen(l);
        if (n > nl && l[nl] == ':' && strncasecmp(l, name, nl) == 0) {
            const char *v = l + nl + 1, *e = l + n;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            *ret_v = v;
            *ret_len = (size_t)(e - v);
            found = true;
        }
        l = eol ? eol + 2 : NULL;
    }
    return found;
}

/* The headers kept for delivery: not hop-by-hop ones, nor what the
 * activator and stoke-events set themselves. */
static bool header_kept(const char *l, size_t n)
{
    static const char *const dropped[] = {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "prefer",
        "x-stoke-",
        "x-callback-url",
        "proxy-",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
    };
    const char *colon = memchr(l, ':', n);
    if (!colon)
        return false;
    size_t nl = (size_t)(colon - l);
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(dropped); i++) {
        size_t dl = strlen(dropped[i]);
        bool prefix = dropped[i][dl - 1] == '-';
        if ((prefix ? nl >= dl : nl == dl) && strncasecmp(l, dropped[i], dl) == 0)
            return false;
    }
    return true;
}

static uint64_t param_u64(const char *v, size_t len, const char *key, uint64_t dflt)
{
    size_t kl = strlen(key);
    for (const char *p = v, *end = v + len; p < end;) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *e = semi ? semi : end;
        if ((size_t)(e - p) > kl && p[kl] == '=' && memcmp(p, key, kl) == 0) {
            uint64_t x = 0;
            for (const char *d = p + kl + 1; d < e && *d >= '0' && *d <= '9'; d++)
                x = x < UINT64_MAX / 10 ? x * 10 + (uint64_t)(*d - '0') : x;
            return x;
        }
        p = e + 1;
    }
    return dflt;
}

static void on_accepted(struct write_job *w)
{
    struct stoke_httpd_req *req = w->req;
    struct pend *p = w->p;
    if (req)
        req->on_abort = NULL;
    if (w->job.result < 0) {
        stoke_error(p->fn->name, w->job.result, "call %s not stored", p->c->id);
        n_queued--;
        pend_free(p);
        if (req)
            stoke_httpd_reply_error(req, 503, "Retry-After: 1\r\n", NULL,
                                    "the call could not be stored");
        return;
    }
    p->fn->accepted++;
    p->busy = false;
    if (req) {
        char extra[256];
        snprintf(extra, sizeof(extra), "X-Call-Id: %s\r\nLocation: " CALLS_PREFIX "%s\r\n",
                 p->c->id, p->c->id);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(p->c->id));
        json_object_object_add(o, "state", json_object_new_string("queued"));
        stoke_httpd_reply_json(req, 202, extra, o);
    }
    schedule_pump();
}

static void on_ingest_abort(struct stoke_httpd_req *req, void *data)
{
    (void)req;
    struct write_job *w = data;
    w->req = NULL; /* stored all the same: at least once */
}

/* Holds `c` in memory, waiting. Returns it or NULL (c freed). */
static struct pend *pend_new(struct ev_call *c)
{
    struct efn *f = fn_get(c->fn);
    struct pend *p = f ? calloc(1, sizeof(*p)) : NULL;
    if (!p) {
        ev_call_free(c);
        return NULL;
    }
    p->c = c;
    p->fn = f;
    f->max_in_flight = c->a.max_in_flight ? c->a.max_in_flight : 1;
    stoke_buf_init(&p->rhead, MAX_RESP_HEADERS);
    stoke_buf_init(&p->rbody, EV_MAX_RESP_BODY);
    stoke_list_insert_tail(&f->queue, &p->node);
    n_queued++;
    return p;
}

static void ingest_call(struct stoke_httpd_req *req, const char *fn, size_t fn_len)
{
    const char *v;
    size_t vl;
    struct stoke_async a;
    stoke_async_defaults(&a);
    uint64_t timeout_ms = 300000;
    if (header_last(req->headers, "x-stoke-async", &v, &vl)) {
        a.retries = (uint32_t)param_u64(v, vl, "retries", a.retries);
        a.backoff_ms = param_u64(v, vl, "backoff_ms", a.backoff_ms);
        a.max_age_ms = param_u64(v, vl, "max_age_ms", a.max_age_ms);
        a.max_in_flight = (uint32_t)param_u64(v, vl, "max_in_flight", a.max_in_flight);
        a.max_body = (uint32_t)param_u64(v, vl, "max_body", a.max_body);
    }
    if (header_last(req->headers, "x-stoke-timeout-ms", &v, &vl)) {
        uint64_t t = 0;
        size_t i = 0;
        for (; i < vl && v[i] >= '0' && v[i] <= '9' && t < UINT32_MAX; i++)
            t = t * 10 + (uint64_t)(v[i] - '0');
        if (i > 0 && t > 0)
            timeout_ms = t;
    }
    if (fn_len == 0 || fn_len > STOKE_NAME_MAX) {
        stoke_httpd_reply_error(req, 400, NULL, "X-Stoke-Function", "no function named");
        return;
    }
    if (req->body_len > a.max_body) {
        stoke_httpd_reply_error(req, 413, NULL, NULL,
                                "the body is over the function's async limit (%" PRIu32 " bytes)",
                                a.max_body);
        return;
    }
    if (n_queued >= max_queued) {
        stoke_httpd_reply_error(req, 503, "Retry-After: 1\r\n", NULL,
                                "too many calls waiting (--max-queued)");
        return;
    }
    const char *cb = NULL;
    size_t cbl = 0;
    if (header_last(req->headers, "x-callback-url", &cb, &cbl) &&
        !(cbl > 7 && (strncasecmp(cb, "http://", 7) == 0 || strncasecmp(cb, "https://", 8) == 0))) {
        stoke_httpd_reply_error(req, 400, NULL, "X-Callback-Url", "not an http(s) URL");
        return;
    }
    struct ev_call *c = calloc(1, sizeof(*c));
    struct stoke_buf hb;
    stoke_buf_init(&hb, req->headers_len + 1);
    if (!c)
        goto oom;
    random_hex(c->id, 16);
    memcpy(c->fn, fn, fn_len);
    c->fn[fn_len] = '\0';
    c->state = EV_QUEUED;
    c->method = strdup(llhttp_method_name((llhttp_method_t)req->method));
    /* the path as the function sees it, with its query */
    size_t pl = strlen(req->path), ql = strlen(req->query);
    c->path = malloc(pl + ql + 2);
    if (c->path)
        snprintf(c->path, pl + ql + 2, "%s%s%s", req->path, ql ? "?" : "", req->query);
    for (const char *l = req->headers; l && *l;) {
        const char *eol = strstr(l, "\r\n");
        size_t n = eol ? (size_t)(eol - l) + 2 : strlen(l);
        if (header_kept(l, n) && stoke_buf_append(&hb, l, n) < 0)
            goto oom;
        l = eol ? eol + 2 : NULL;
    }
    c->headers = stoke_buf_steal(&hb, NULL);
    if (!c->headers)
        c->headers = strdup("");
    c->body = dup_or_null(req->body, req->body_len);
    c->body_len = req->body_len;
    c->callback = cb ? dup_or_null(cb, cbl) : NULL;
    if (!c->method || !c->path || !c->headers || !c->body || (cb && !c->callback))
        goto oom;
    c->timeout_ms = timeout_ms;
    c->a = a;
    c->created_ms = c->due_ms = now_ms();
    struct pend *p = pend_new(c);
    c = NULL;
    if (!p)
        goto oom;
    p->busy = true; /* until committed */
    struct write_job *w = calloc(1, sizeof(*w));
    if (!w) {
        n_queued--;
        pend_free(p);
        goto oom;
    }
    w->snap = *p->c;
    w->insert = true;
    w->p = p;
    w->then = on_accepted;
    w->req = req;
    req->on_abort = on_ingest_abort;
    req->handler_data = w;
    w->job.run = run_write;
    w->job.done = on_write_done;
    ev_store_submit(store, &w->job);
    return;
oom:
    stoke_buf_done(&hb);
    ev_call_free(c);
    stoke_httpd_reply_error(req, 503, NULL, NULL, "out of memory");
}

/* A schedule's call: ended as cancelled if it waits (Replace). */
static bool cancel_waiting(const char *id, const char *condition)
{
    bool busy;
    struct pend *p = pend_find(id, &busy);
    if (!p || busy || stopping)
        return false;
    finish(p, EV_CANCELLED, condition);
    return true;
}

/* A queue trigger's message or a schedule's run, stored: delivered as any
 * call. */
static void add_stored_call(struct ev_call *c)
{
    struct pend *p = pend_new(c);
    if (p && !stopping) {
        p->fn->accepted++;
        schedule_pump();
    }
}

static void on_ingest(struct stoke_httpd_req *req, void *data)
{
    (void)data;
    const char *v;
    size_t vl;
    if (strncmp(req->path, CALLS_PREFIX, sizeof(CALLS_PREFIX) - 1) == 0 &&
        !header_last(req->headers, "x-stoke-function", &v, &vl)) {
        call_get_or_cancel(req, req->path + sizeof(CALLS_PREFIX) - 1);
        return;
    }
    if (!header_last(req->headers, "x-stoke-function", &v, &vl)) {
        stoke_httpd_reply_error(req, 400, NULL, "X-Stoke-Function",
                                "not an async call from the activator");
        return;
    }
    /* Only the activator knows the token (the last header is its own). */
    const char *t;
    size_t tl;
    if (!header_last(req->headers, "x-stoke-events-token", &t, &tl) ||
        !stoke_token_equal(ingest_token, t, tl)) {
        stoke_httpd_reply_error(req, 401, NULL, "X-Stoke-Events-Token",
                                "no or a wrong token: calls come through the activator");
        return;
    }
    ingest_call(req, v, vl);
}

/* ---- the admin API (stokectl) ------------------------------------------ */

/* GET /v1/calls/<id>            a call (as GET /_stoke/calls/<id>)
 * DELETE /v1/calls/<id>         cancels a queued call
 * GET /v1/dlq/<fn>              the dead-letter list (oldest first, <= 1000)
 * POST /v1/dlq/<fn>/redrive     all of it again; ?id=<id>: that one
 * DELETE /v1/dlq/<fn>           purges it */
static void on_admin(struct stoke_httpd_req *req, void *data)
{
    (void)data;
    const char *p = req->path;
    if (strncmp(p, "/v1/calls/", 10) == 0) {
        call_get_or_cancel(req, p + 10);
        return;
    }
    if (strncmp(p, "/v1/dlq/", 8) != 0) {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such resource");
        return;
    }
    char fn[STOKE_NAME_MAX + 1];
    const char *rest = p + 8, *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n == 0 || n > STOKE_NAME_MAX) {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such function");
        return;
    }
    memcpy(fn, rest, n);
    fn[n] = '\0';
    if (!stoke_is_valid_name(fn)) {
        stoke_httpd_reply_error(req, 404, NULL, NULL, "no such function");
        return;
    }
    if (slash && strcmp(slash, "/redrive") == 0 && req->method == HTTP_POST) {
        const char *id = strncmp(req->query, "id=", 3) == 0 ? req->query + 3 : NULL;
        if (id && !valid_id(id)) {
            stoke_httpd_reply_error(req, 404, NULL, NULL, "no such call");
            return;
        }
        read_submit(req, R_REDRIVE, fn, id);
    } else if (!slash && (req->method == HTTP_GET || req->method == HTTP_HEAD)) {
        read_submit(req, R_LIST, fn, NULL);
    } else if (!slash && req->method == HTTP_DELETE) {
        read_submit(req, R_PURGE, fn, NULL);
    } else {
        stoke_httpd_reply_error(req, slash ? 404 : 405, NULL, NULL, "not here");
    }
}

static void on_http_error(struct stoke_httpd_req *req, int status, const char *extra,
                          const char *field, const char *msg, void *data)
{
    (void)data;
    stoke_httpd_reply_error(req, status, extra, field, "%s", msg);
}

/* ---- ops --------------------------------------------------------------- */

static int ops_metrics(struct stoke_buf *out, void *data)
{
    (void)data;
    int64_t now = now_ms();
    int r = stoke_buf_printf(
        out,
        "# HELP stoke_events_store_commits_total Store transactions committed (each synced)\n"
        "# TYPE stoke_events_store_commits_total counter\n"
        "stoke_events_store_commits_total %" PRIu64 "\n"
        "# HELP stoke_events_functions Functions known from the controller's channel\n"
        "# TYPE stoke_events_functions gauge\n"
        "stoke_events_functions %zu\n",
        ev_store_commits(store), fnspec_count());
    static const char *const names[][3] = {
        {"accepted_total", "counter", "Async calls accepted (202)"},
        {"succeeded_total", "counter", "Async calls that succeeded"},
        {"failed_total", "counter", "Async calls ended by a non-retryable answer"},
        {"retried_total", "counter", "Attempts retried after a retryable failure"},
        {"throttled_total", "counter", "Attempts throttled (429, 503), not counted as tries"},
        {"dead_total", "counter", "Async calls dead-lettered"},
        {"in_flight", "gauge", "Attempts in flight"},
        {"queued", "gauge", "Calls waiting for an attempt"},
        {"oldest_queued_age_seconds", "gauge", "Age of the oldest waiting call"},
    };
    for (size_t k = 0; k < STOKE_ARRAY_SIZE(names); k++) {
        r |= stoke_buf_printf(out, "# HELP stoke_async_%s %s\n# TYPE stoke_async_%s %s\n",
                              names[k][0], names[k][2], names[k][0], names[k][1]);
        for (struct stoke_list *n = fns.next; n != &fns; n = n->next) {
            struct efn *f = stoke_container_of(n, struct efn, node);
            uint64_t queued = 0;
            int64_t oldest = now;
            for (struct stoke_list *q = f->queue.next; q != &f->queue; q = q->next) {
                struct pend *p = stoke_container_of(q, struct pend, node);
                queued++;
                if (p->c->created_ms < oldest)
                    oldest = p->c->created_ms;
            }
            uint64_t vals[] = {f->accepted,  f->succeeded, f->failed,   f->retried,
                               f->throttled, f->dead,      f->inflight, queued};
            if (k < STOKE_ARRAY_SIZE(vals))
                r |= stoke_buf_printf(out, "stoke_async_%s{function=\"%s\"} %" PRIu64 "\n",
                                      names[k][0], f->name, vals[k]);
            else
                r |= stoke_buf_printf(out, "stoke_async_%s{function=\"%s\"} %.3f\n", names[k][0],
                                      f->name, (double)(now - oldest) / 1000.0);
        }
    }
    r |= triggers_metrics(out);
    r |= schedules_metrics(out);
    return r ? -ENOBUFS : 0;
}

static bool ops_health(char *msg, size_t size, void *data)
{
    (void)data;
    snprintf(msg, size, "ok");
    return true;
}

/* ---- start and stop ---------------------------------------------------- */

static void load_one(struct ev_call *c, void *data)
{
    uint64_t *n = data;
    int64_t now = now_ms();
    /* A call that was running: sent again once its lease is over (its
     * attempt may still run: never twice at once). */
    if (c->state == EV_RUNNING) {
        c->state = EV_QUEUED;
        c->due_ms = c->lease_ms > now ? c->lease_ms : now;
    }
    if (pend_new(c))
        (*n)++;
}

/* Calls whose callback is owed, read at start (sent once the loop is up). */
struct owed {
    struct ev_call **calls;
    size_t n, cap;
};

static void keep_owed(struct ev_call *c, void *data)
{
    struct owed *o = data;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        struct ev_call **n = realloc(o->calls, cap * sizeof(*n));
        if (!n) {
            ev_call_free(c); /* stays owed in the store: the next start */
            return;
        }
        o->calls = n;
        o->cap = cap;
    }
    o->calls[o->n++] = c;
}

static void free_owed(struct owed *o)
{
    for (size_t i = 0; i < o->n; i++)
        ev_call_free(o->calls[i]);
    free(o->calls);
    *o = (struct owed){0};
}

static void on_gc_timer(uv_timer_t *t)
{
    (void)t;
    read_submit(NULL, R_GC, NULL, NULL);
}

static void on_closed_handle(uv_handle_t *h)
{
    (void)h;
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    if (stopping)
        return;
    stopping = true;
    stoke_info(NULL, "signal %d: stopping (running calls stay leased in the store)", signum);
    uv_close((uv_handle_t *)&sigint, on_closed_handle);
    uv_close((uv_handle_t *)&sigterm, on_closed_handle);
    uv_close((uv_handle_t *)&pump_timer, on_closed_handle);
    uv_close((uv_handle_t *)&gc_timer, on_closed_handle);
    uv_close((uv_handle_t *)&pump_idle, on_closed_handle);
    stoke_httpd_close(ingest);
    stoke_httpd_close(admin);
    stoke_opsd_close(opsd);
    stoke_curluv_close(curl, NULL, NULL); /* attempts and callbacks in flight end */
    /* Callbacks waiting for their next try stop here; the store still owes
     * them, and the next start sends them. */
    for (struct stoke_list *n = cbks.next; n != &cbks; n = n->next) {
        struct cbk *k = stoke_container_of(n, struct cbk, node);
        if (!uv_is_closing((uv_handle_t *)&k->timer))
            uv_close((uv_handle_t *)&k->timer, cbk_free_handle);
    }
    triggers_stop();
    schedules_stop();
    fnspec_stop();
    ev_store_close(store); /* runs the jobs queued */
    /* What is still held: waiting calls (stored). */
    while (!stoke_list_empty(&fns)) {
        struct efn *f = stoke_container_of(stoke_list_first(&fns), struct efn, node);
        while (!stoke_list_empty(&f->queue))
            pend_free(stoke_container_of(stoke_list_first(&f->queue), struct pend, node));
        stoke_list_remove(&f->node);
        free(f);
    }
}

/* "name:port" with a DNS name (a Service's), which libcurl looks up. */
static bool host_port_ok(const char *s)
{
    const char *colon = strrchr(s, ':');
    uint64_t port;
    if (!colon || colon == s || colon - s > 100 || stoke_parse_u64(colon + 1, &port) < 0 ||
        port == 0 || port > 65535)
        return false;
    for (const char *p = s; p < colon; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.'))
            return false;
    }
    return true;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: stoke-events [options]\n"
               "  --listen IP:PORT        ingest, where the activator's --events points\n"
               "                          (default " DEFAULT_LISTEN "; another address, such\n"
               "                          as a pod's, is protected by the token alone)\n"
               "  --token-file FILE       required: the token every async call must carry\n"
               "                          (X-Stoke-Events-Token; the activator's\n"
               "                          --events-token-file), the file's first line\n"
               "  --activator HOST:PORT   where calls are delivered, an IP or a name\n"
               "                          (default " DEFAULT_ACTIVATOR ")\n"
               "  --db FILE               the SQLite store (default " DEFAULT_DB ")\n"
               "  --admin-socket PATH     admin API for stokectl (mode 0660; default\n"
               "                          " DEFAULT_ADMIN_SOCKET ")\n"
               "  --ops-listen ADDR       GET /healthz and /metrics, IP:port or none\n"
               "                          (default " DEFAULT_OPS ")\n"
               "  --retention DUR         ended calls are kept this long (default 24h)\n"
               "  --max-queued N          calls waiting at most, 503 past it (default 100000)\n"
               "  --max-body-bytes N      largest body taken at all (default 6291456)\n"
               "  --lease-margin DUR      a running call's lease: the activator's longest\n"
               "                          time for it plus this (default 30s)\n"
               "  --controller ADDR       the controller's channel (unix:/path, or\n"
               "                          host:port[,...]): learns the functions' specs\n"
               "                          (schedules, triggers); default: none\n"
               "  --controller-token-file FILE  the controller's channel token (its\n"
               "                          first line), required with a TCP --controller\n"
               "  --consumer NAME         this process's consumer name in the queue\n"
               "                          triggers' groups; keep it across restarts, so\n"
               "                          that messages read and not acknowledged are\n"
               "                          read again (default: the host name)\n"
               "  --log-level LEVEL       debug, info, warn, error (default info)\n"
               "  -h, --help\n");
}

int main(int argc, char **argv)
{
    enum {
        O_LISTEN = 256,
        O_ACT,
        O_DB,
        O_ADMIN,
        O_OPS,
        O_RET,
        O_MAXQ,
        O_MAXB,
        O_LOG,
        O_LEASE,
        O_TOKEN,
        O_CTL,
        O_CTL_TOKEN,
        O_CONSUMER
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"activator", required_argument, NULL, O_ACT},
        {"db", required_argument, NULL, O_DB},
        {"admin-socket", required_argument, NULL, O_ADMIN},
        {"ops-listen", required_argument, NULL, O_OPS},
        {"retention", required_argument, NULL, O_RET},
        {"max-queued", required_argument, NULL, O_MAXQ},
        {"max-body-bytes", required_argument, NULL, O_MAXB},
        {"log-level", required_argument, NULL, O_LOG},
        {"lease-margin", required_argument, NULL, O_LEASE},
        {"token-file", required_argument, NULL, O_TOKEN},
        {"controller", required_argument, NULL, O_CTL},
        {"controller-token-file", required_argument, NULL, O_CTL_TOKEN},
        {"consumer", required_argument, NULL, O_CONSUMER},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *db_path = DEFAULT_DB, *admin_path = DEFAULT_ADMIN_SOCKET, *token_file = NULL;
    const char *act_name = NULL; /* --activator as a name */
    const char *ctl_token_file = NULL;
    const char *consumer_name = NULL;
    char hostname[128] = "stoke-events";
    struct stoke_chan_targets ctl_targets;
    bool use_ctl = false;
    char *ctl_token = NULL;
    struct stoke_addr listen_addr, act_addr, ops_addr;
    bool use_ops = true;
    uint64_t max_body = 6 * 1024 * 1024;
    enum stoke_log_level level = STOKE_LOG_INFO;
    int c, r;
    (void)stoke_addr_parse(DEFAULT_LISTEN, &listen_addr);
    (void)stoke_addr_parse(DEFAULT_ACTIVATOR, &act_addr);
    (void)stoke_opsd_parse_addr(DEFAULT_OPS, &ops_addr, &use_ops);
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        r = 0;
        switch (c) {
        case O_LISTEN:
            r = stoke_addr_parse(optarg, &listen_addr);
            r = r == 0 && listen_addr.is_unix ? -EINVAL : r;
            break;
        case O_ACT:
            r = stoke_addr_parse(optarg, &act_addr);
            r = r == 0 && act_addr.is_unix ? -EINVAL : r;
            act_name = r < 0 && host_port_ok(optarg) ? optarg : NULL;
            r = act_name ? 0 : r;
            break;
        case O_DB:
            db_path = optarg;
            break;
        case O_ADMIN:
            admin_path = optarg;
            break;
        case O_OPS:
            r = stoke_opsd_parse_addr(optarg, &ops_addr, &use_ops);
            break;
        case O_RET:
            r = stoke_parse_duration(optarg, &retention_ms);
            break;
        case O_MAXQ:
            r = stoke_parse_u64(optarg, &max_queued);
            break;
        case O_MAXB:
            r = stoke_parse_u64(optarg, &max_body);
            break;
        case O_LOG:
            r = stoke_log_level_parse(optarg, &level);
            break;
        case O_TOKEN:
            token_file = optarg;
            break;
        case O_CTL:
            r = stoke_chan_parse_targets(optarg, &ctl_targets);
            use_ctl = r == 0;
            break;
        case O_CTL_TOKEN:
            ctl_token_file = optarg;
            break;
        case O_CONSUMER:
            r = strlen(optarg) > 0 && strlen(optarg) < 128 && !strpbrk(optarg, " \t\r\n") ? 0
                                                                                          : -EINVAL;
            consumer_name = optarg;
            break;
        case O_LEASE:
            r = stoke_parse_duration(optarg, &lease_margin_ms);
            r = r == 0 && lease_margin_ms < 2 ? -EINVAL : r;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (r < 0) {
            fprintf(stderr, "stoke-events: bad value for --%s: %s\n", opts[c - O_LISTEN].name,
                    optarg);
            return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    /* The token is what protects the ingest, on loopback and, in a pod, on
     * the pod's address. */
    if (!token_file) {
        fprintf(stderr, "stoke-events: --token-file is required (the token the activator's "
                        "--events-token-file names; it protects --listen on any address)\n");
        return 2;
    }
    r = stoke_token_read(token_file, &ingest_token);
    if (r < 0) {
        fprintf(stderr, "stoke-events: --token-file %s: %s\n", token_file,
                r == -EINVAL ? "the first line must be a token of 16 to 4096 printable bytes "
                               "without spaces"
                             : strerror(-r));
        return 2;
    }
    if (use_ctl && !ctl_targets.is_unix && !ctl_token_file) {
        fprintf(stderr, "stoke-events: a TCP --controller needs --controller-token-file (the "
                        "controller's channel token)\n");
        return 2;
    }
    if (ctl_token_file && (r = stoke_token_read(ctl_token_file, &ctl_token)) < 0) {
        fprintf(stderr, "stoke-events: --controller-token-file %s: %s\n", ctl_token_file,
                r == -EINVAL ? "the first line must be a token of 16 to 4096 printable bytes "
                               "without spaces"
                             : strerror(-r));
        return 2;
    }
    stoke_log_init("events", level);
    signal(SIGPIPE, SIG_IGN);
    if (act_name)
        snprintf(activator_base + 7, sizeof(activator_base) - 7, "%s", act_name);
    else
        stoke_addr_format(&act_addr, activator_base + 7, sizeof(activator_base) - 7);
    memcpy(activator_base, "http://", 7);
    stoke_list_init(&fns);
    stoke_list_init(&cbks);

    /* Startup, before the loop runs: open, and read what is pending
     * (blocking here is fine). */
    /* The store holds requests (headers, bodies): the owner's only. */
    (void)umask(077);
    char err[512];
    sqlite3 *db = NULL;
    if (ev_db_open(db_path, &db, err, sizeof(err)) < 0) {
        stoke_error(NULL, -EIO, "store: %s", err);
        return 1;
    }
    uint64_t loaded = 0;
    r = ev_db_list(db, NULL, -1, SIZE_MAX, load_one, &loaded);
    struct owed owed = {0};
    if (r == 0)
        r = ev_db_list_callbacks(db, keep_owed, &owed);
    if (r < 0) {
        stoke_error(NULL, r, "store: reading the pending calls failed");
        free_owed(&owed);
        sqlite3_close(db);
        return 1;
    }
    loop = uv_default_loop();
    uv_timer_init(loop, &pump_timer);
    uv_timer_init(loop, &gc_timer);
    uv_idle_init(loop, &pump_idle);
    r = ev_store_new(loop, db, &store);
    if (r == 0)
        r = stoke_curluv_new(loop, &curl);
    if (r < 0) {
        stoke_error(NULL, r, "start failed");
        return 1;
    }
    struct stoke_httpd_config hc = {
        .tcp = &listen_addr,
        .keep_headers = true,
        .limits =
            {
                .max_head = 64 * 1024,
                .max_body = max_body,
                .max_conns = 4096,
                .stream_high = 1 << 20,
                .first_timeout_ms = 30000,
                .head_timeout_ms = 30000,
                .body_timeout_ms = 60000,
                .idle_timeout_ms = 120000,
                .write_timeout_ms = 30000,
            },
        .handler = on_ingest,
        .on_error = on_http_error,
        .headers = "Cache-Control: no-store\r\n",
    };
    const char *what = NULL;
    r = stoke_httpd_new(loop, &hc, &ingest, &what);
    if (r == 0) {
        struct stoke_httpd_config ac = hc;
        ac.tcp = NULL;
        ac.unix_path = admin_path;
        ac.keep_headers = false;
        ac.limits.max_body = 64 * 1024;
        ac.handler = on_admin;
        r = stoke_httpd_new(loop, &ac, &admin, &what);
    }
    if (r == 0 && use_ops) {
        struct stoke_opsd_callbacks cbs = {.metrics = ops_metrics, .health = ops_health};
        what = "the ops address";
        r = stoke_opsd_new(loop, &ops_addr, &cbs, &opsd);
    }
    if (r < 0) {
        stoke_error(NULL, r, "listen on %s failed", what ? what : "?");
        return 1;
    }
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_timer_start(&gc_timer, on_gc_timer, 1000, 60000);
    if (!consumer_name) {
        if (gethostname(hostname, sizeof(hostname) - 1) < 0 || !hostname[0])
            snprintf(hostname, sizeof(hostname), "stoke-events");
        consumer_name = hostname;
    }
    struct triggers_host th = {
        .loop = loop, .store = store, .consumer = consumer_name, .add_call = add_stored_call};
    r = triggers_start(&th);
    if (r < 0) {
        stoke_error(NULL, r, "cannot start the queue triggers");
        return 1;
    }
    struct schedules_host sh = {.loop = loop,
                                .store = store,
                                .add_call = add_stored_call,
                                .cancel_waiting = cancel_waiting};
    r = schedules_start(&sh);
    if (r < 0) {
        stoke_error(NULL, r,
                    "cannot start the schedules (STOKE_EVENTS_TEST_CLOCK_SKEW: whole seconds; "
                    "STOKE_EVENTS_TEST_CLOCK_RATE: 1 to 3600)");
        return 1;
    }
    if (use_ctl) {
        r = fnspec_start(loop, &ctl_targets, ctl_token);
        if (ctl_token) {
            explicit_bzero(ctl_token, strlen(ctl_token));
            free(ctl_token);
        }
        if (r < 0) {
            stoke_error(NULL, r, "cannot open the controller's channel");
            return 1;
        }
    }
    char la[80];
    stoke_addr_format(&listen_addr, la, sizeof(la));
    stoke_info(NULL, "listening on %s, delivering to %s, %" PRIu64 " calls pending in %s", la,
               activator_base, loaded, db_path);
    if (owed.n)
        stoke_info(NULL, "%zu callbacks owed from before the restart: sending them", owed.n);
    for (size_t i = 0; i < owed.n; i++)
        send_callback(owed.calls[i]);
    free_owed(&owed);
    schedule_pump();
    uv_run(loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(loop);
    explicit_bzero(ingest_token, strlen(ingest_token));
    free(ingest_token);
    stoke_info(NULL, "stopped");
    return rc == 0 ? 0 : 1;
}
