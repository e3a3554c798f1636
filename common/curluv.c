/* libcurl multi socket interface on a libuv loop; see stoke/curluv.h.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * call it back without socket activity (CURLMOPT_TIMERFUNCTION); we tell curl
 * what happened with curl_multi_socket_action() and collect finished
 * transfers with curl_multi_info_read(). Both curl callbacks only (re)arm
 * libuv handles: curl must never be re-entered from inside its own callback,
 * so even a timeout of 0 goes through the uv_timer and runs on the next
 * timer phase. */
#include "stoke/curluv.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "stoke/list.h"
#include "stoke/util.h"

struct stoke_curluv {
    uv_loop_t *loop;
    CURLM *multi;                /* NULL once closing has cleaned it up */
    uv_timer_t timer;            /* curl's timeout */
    struct stoke_list transfers; /* struct transfer.link, in flight */
    struct stoke_list socks;     /* struct sock_ctx.link, polls not yet closing */
    unsigned open_handles;       /* timer + polls whose close callback is pending */
    bool closing;
    void (*on_closed)(void *data);
    void *closed_data;
};

/* One easy handle in flight; reached from curl via CURLOPT_PRIVATE. */
struct transfer {
    struct stoke_list link;
    CURL *easy;
    stoke_curluv_done_cb cb;
    void *data;
};

/* One socket curl asked us to watch; attached to curl's socket with
 * curl_multi_assign() and freed in the poll handle's close callback. */
struct sock_ctx {
    uv_poll_t poll;
    struct stoke_list link;
    struct stoke_curluv *m;
    curl_socket_t fd;
};

static void maybe_finish(struct stoke_curluv *m)
{
    if (!m->closing || m->open_handles > 0)
        return;
    void (*on_closed)(void *) = m->on_closed;
    void *data = m->closed_data;
    free(m);
    curl_global_cleanup();
    if (on_closed)
        on_closed(data);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct sock_ctx *ctx = stoke_container_of((uv_poll_t *)h, struct sock_ctx, poll);
    struct stoke_curluv *m = ctx->m;
    free(ctx);
    m->open_handles--;
    maybe_finish(m);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct stoke_curluv *m = stoke_container_of((uv_timer_t *)h, struct stoke_curluv, timer);
    m->open_handles--;
    maybe_finish(m);
}

/* Stops watching and closes; the fd itself belongs to curl. Stopping at once
 * matters: curl closes the fd right after telling us, and may reuse the
 * number for its next connection before our close callback runs. */
static void sock_close(struct sock_ctx *ctx)
{
    (void)uv_poll_stop(&ctx->poll);
    stoke_list_remove(&ctx->link);
    uv_close((uv_handle_t *)&ctx->poll, on_poll_closed);
}

/* Completes every finished transfer. A callback may call stoke_curluv_close(),
 * which cleans up the multi handle: stop reading then (m itself stays valid
 * until its handles' close callbacks, which run later on the loop). */
static void check_info(struct stoke_curluv *m)
{
    CURLMsg *msg;
    int pending;

    while (!m->closing && (msg = curl_multi_info_read(m->multi, &pending)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result; /* msg is invalid after remove_handle */
        struct transfer *t = NULL;
        (void)curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
        assert(t && t->easy == easy);
        (void)curl_multi_remove_handle(m->multi, easy);
        (void)curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        stoke_list_remove(&t->link);
        stoke_curluv_done_cb cb = t->cb;
        void *data = t->data;
        free(t);
        cb(easy, result, data);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock_ctx *ctx = stoke_container_of(h, struct sock_ctx, poll);
    struct stoke_curluv *m = ctx->m;
    int flags = 0;
    int running;

    if (m->closing)
        return;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    /* May close ctx (CURL_POLL_REMOVE): do not touch it after this. */
    (void)curl_multi_socket_action(m->multi, ctx->fd, flags, &running);
    check_info(m);
}

static void on_timer(uv_timer_t *h)
{
    struct stoke_curluv *m = stoke_container_of(h, struct stoke_curluv, timer);
    int running;

    if (m->closing)
        return;
    (void)curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_info(m);
}

/* CURLMOPT_TIMERFUNCTION: -1 deletes the timer, 0 means "as soon as
 * possible", which we still defer to the loop's next timer phase. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct stoke_curluv *m = userp;
    (void)multi;

    if (timeout_ms < 0) {
        (void)uv_timer_stop(&m->timer);
        return 0;
    }
    return uv_timer_start(&m->timer, on_timer, (uint64_t)timeout_ms, 0) < 0 ? -1 : 0;
}

/* CURLMOPT_SOCKETFUNCTION. Returning -1 makes curl fail the transfer. */
static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct stoke_curluv *m = userp;
    struct sock_ctx *ctx = socketp;
    int events = 0;
    (void)easy;

    if (what == CURL_POLL_REMOVE) {
        if (ctx) {
            (void)curl_multi_assign(m->multi, s, NULL);
            sock_close(ctx);
        }
        return 0;
    }
    if (!ctx) {
        ctx = calloc(1, sizeof(*ctx));
        if (!ctx)
            return -1;
        if (uv_poll_init_socket(m->loop, &ctx->poll, s) < 0) {
            free(ctx);
            return -1;
        }
        ctx->m = m;
        ctx->fd = s;
        stoke_list_insert_tail(&m->socks, &ctx->link);
        m->open_handles++;
        if (curl_multi_assign(m->multi, s, ctx) != CURLM_OK) {
            sock_close(ctx);
            return -1;
        }
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    if (uv_poll_start(&ctx->poll, events, on_poll) < 0)
        return -1;
    return 0;
}

int stoke_curluv_new(uv_loop_t *loop, struct stoke_curluv **ret)
{
    struct stoke_curluv *m = NULL;
    int r = -ENOMEM;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -EIO;
    m = calloc(1, sizeof(*m));
    if (!m)
        goto out;
    m->loop = loop;
    stoke_list_init(&m->transfers);
    stoke_list_init(&m->socks);
    m->multi = curl_multi_init();
    if (!m->multi)
        goto out;
    r = -EIO;
    if (curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
        curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m) != CURLM_OK ||
        curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
        curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m) != CURLM_OK)
        goto out;
    r = uv_timer_init(loop, &m->timer);
    if (r < 0)
        goto out;
    m->open_handles = 1;
    *ret = m;
    m = NULL;
    r = 0;
out:
    if (m) {
        if (m->multi)
            (void)curl_multi_cleanup(m->multi);
        free(m);
        curl_global_cleanup();
    }
    return r;
}

int stoke_curluv_add(struct stoke_curluv *m, CURL *easy, stoke_curluv_done_cb cb, void *data)
{
    struct transfer *t;

    if (m->closing)
        return -ECANCELED;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->easy = easy;
    t->cb = cb;
    t->data = data;
    if (curl_easy_setopt(easy, CURLOPT_PRIVATE, (char *)t) != CURLE_OK) {
        free(t);
        return -EINVAL;
    }
    /* Only arms the timer (with 0): the transfer starts from the loop. */
    CURLMcode mc = curl_multi_add_handle(m->multi, easy);
    if (mc != CURLM_OK) {
        (void)curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(t);
        return mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
    }
    stoke_list_insert_tail(&m->transfers, &t->link);
    return 0;
}

int stoke_curluv_remove(struct stoke_curluv *m, CURL *easy)
{
    struct transfer *t = NULL;

    if (m->closing || curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t) != CURLE_OK || !t ||
        t->easy != easy)
        return -ENOENT;
    /* Its sockets are reported removed (CURL_POLL_REMOVE) from in here. */
    (void)curl_multi_remove_handle(m->multi, easy);
    (void)curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    stoke_list_remove(&t->link);
    free(t);
    return 0;
}

void stoke_curluv_close(struct stoke_curluv *m, void (*on_closed)(void *data), void *data)
{
    assert(!m->closing);
    m->closing = true;
    m->on_closed = on_closed;
    m->closed_data = data;

    /* One at a time from the head: a callback may not add (refused while
     * closing), so the list only shrinks. */
    while (!stoke_list_empty(&m->transfers)) {
        struct transfer *t = stoke_container_of(m->transfers.next, struct transfer, link);
        CURL *easy = t->easy;
        stoke_curluv_done_cb cb = t->cb;
        void *cb_data = t->data;
        (void)curl_multi_remove_handle(m->multi, easy);
        (void)curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        stoke_list_remove(&t->link);
        free(t);
        cb(easy, CURLE_ABORTED_BY_CALLBACK, cb_data);
    }

    /* Closes cached connections; curl may report CURL_POLL_REMOVE for their
     * sockets from in here, which closes those polls. */
    (void)curl_multi_cleanup(m->multi);
    m->multi = NULL;

    /* Whatever curl did not remove (it does not always, on cleanup). */
    while (!stoke_list_empty(&m->socks))
        sock_close(stoke_container_of(m->socks.next, struct sock_ctx, link));
    (void)uv_timer_stop(&m->timer);
    uv_close((uv_handle_t *)&m->timer, on_timer_closed);
}

int stoke_curluv_errno(CURLcode rc, int write_err)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_ABORTED_BY_CALLBACK:
        return -ECANCELED;
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
        return -EKEYREJECTED;
    case CURLE_WRITE_ERROR:
        if (write_err == -ENOBUFS)
            return -EFBIG;
        return write_err < 0 ? write_err : -EIO;
    default:
        return -EIO;
    }
}
