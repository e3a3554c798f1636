/* A Redis stream consumer on hiredis's async API; see stoke/redisq.h.
 *
 * Two connections: reads block on one (XREADGROUP ... BLOCK), commands
 * (XGROUP, XACK, XAUTOCLAIM, XINFO) go on the other. Either one lost drops
 * both, and both are made again after a back-off: a session. */
#include "stoke/redisq.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "stoke/backoff.h"

#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 10000
#define ID_MAX 64

struct stoke_redisq {
    uv_loop_t *loop;
    struct stoke_redisq_cfg cfg;
    char *strings; /* cfg's strings, one allocation */
    struct stoke_redisq_hooks hooks;
    redisAsyncContext *cmd, *rd;
    unsigned connected; /* of the two */
    bool group_ready, reading, claiming, resetting, closing;
    bool own_pending;          /* still reading this consumer's pending ones */
    bool group_made;           /* made (or found) once: made again from "0" */
    char pending_from[ID_MAX]; /* ... after this id */
    char claim_from[ID_MAX];   /* XAUTOCLAIM's cursor */
    unsigned credit;
    uint32_t failures;
    uv_timer_t retry, claim;
    int open_handles;
    void (*close_cb)(void *);
    void *close_data;
};

static void start_session(struct stoke_redisq *q);
static void read_more(struct stoke_redisq *q);

static void on_retry(uv_timer_t *t)
{
    start_session(t->data);
}

static void say(struct stoke_redisq *q, int err, const char *why)
{
    if (q->hooks.on_state && !q->closing)
        q->hooks.on_state(q, err, why, q->hooks.data);
}

/* Drops the session (both connections) and tries again after a back-off. */
static void reset(struct stoke_redisq *q, const char *why)
{
    if (q->resetting || q->closing)
        return;
    q->resetting = true;
    redisAsyncContext *cmd = q->cmd, *rd = q->rd;
    q->cmd = q->rd = NULL;
    /* Frees each at once; its callbacks see NULL replies. */
    if (cmd)
        redisAsyncFree(cmd);
    if (rd)
        redisAsyncFree(rd);
    q->connected = 0;
    q->group_ready = q->reading = q->claiming = false;
    q->resetting = false;
    say(q, -ECONNRESET, why);
    uint64_t wait = stoke_backoff_ms(++q->failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    uv_timer_start(&q->retry, on_retry, wait, 0);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct stoke_redisq *q = ac->data;
    (void)status;
    if (q->resetting || q->closing)
        return;
    /* hiredis frees ac after this callback. */
    if (ac == q->cmd)
        q->cmd = NULL;
    if (ac == q->rd)
        q->rd = NULL;
    char why[160];
    snprintf(why, sizeof(why), "connection to %s:%d lost: %s", q->cfg.host, q->cfg.port,
             ac->errstr ? ac->errstr : "closed");
    reset(q, why);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct stoke_redisq *q = ac->data;
    if (q->closing)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this callback. */
        if (ac == q->cmd)
            q->cmd = NULL;
        if (ac == q->rd)
            q->rd = NULL;
        char why[160];
        snprintf(why, sizeof(why), "cannot connect to %s:%d: %s", q->cfg.host, q->cfg.port,
                 ac->errstr);
        reset(q, why);
        return;
    }
    q->connected++;
}

/* An error reply's text, or NULL when it is not one. */
static const char *error_of(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR ? r->str : NULL;
}

static void on_group(redisAsyncContext *ac, void *reply, void *priv)
{
    struct stoke_redisq *q = priv;
    const redisReply *r = reply;
    (void)ac;
    if (!r || q->closing)
        return;
    const char *err = error_of(r);
    if (err && strncmp(err, "BUSYGROUP", 9) != 0) {
        char why[200];
        snprintf(why, sizeof(why), "XGROUP CREATE %s %s: %s", q->cfg.stream, q->cfg.group, err);
        reset(q, why);
        return;
    }
    q->group_ready = true;
    q->group_made = true;
    q->failures = 0;
    say(q, 0, "ready");
    read_more(q);
}

static void create_group(struct stoke_redisq *q)
{
    q->group_ready = false;
    /* A stream that went away and came back is read from its start: "$"
     * is for a group's first creation only. */
    redisAsyncCommand(q->cmd, on_group, q, "XGROUP CREATE %s %s %s MKSTREAM", q->cfg.stream,
                      q->cfg.group, q->group_made ? "0" : q->cfg.start_id);
}

static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    struct stoke_redisq *q = priv;
    const char *err = error_of(reply);
    (void)ac;
    if (reply && err && !q->closing) {
        char why[200];
        snprintf(why, sizeof(why), "AUTH refused: %s", err);
        reset(q, why);
    }
}

static redisAsyncContext *connect_one(struct stoke_redisq *q)
{
    redisAsyncContext *ac = q->cfg.unix_path ? redisAsyncConnectUnix(q->cfg.unix_path)
                                             : redisAsyncConnect(q->cfg.host, q->cfg.port);
    if (!ac)
        return NULL;
    if (ac->err || redisLibuvAttach(ac, q->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = q;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (q->cfg.password)
        redisAsyncCommand(ac, on_auth, q, "AUTH %s", q->cfg.password);
    return ac;
}

static void start_session(struct stoke_redisq *q)
{
    if (q->closing)
        return;
    q->cmd = connect_one(q);
    q->rd = q->cmd ? connect_one(q) : NULL;
    if (!q->cmd || !q->rd) {
        reset(q, "cannot make a connection (out of memory or descriptors)");
        return;
    }
    q->own_pending = true;
    snprintf(q->pending_from, sizeof(q->pending_from), "0");
    /* Queued until connected. */
    create_group(q);
}

/* Hands the entries of an XREADGROUP/XAUTOCLAIM array to the caller; the
 * last id is copied to `last`. Entries whose message is gone (nil fields)
 * are acknowledged, not handed over. */
static void deliver(struct stoke_redisq *q, const redisReply *entries, unsigned deliveries,
                    char *last)
{
    for (size_t i = 0; i < entries->elements && !q->closing; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
            e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const char *id = e->element[0]->str;
        if (last)
            snprintf(last, ID_MAX, "%s", id);
        const redisReply *f = e->element[1];
        if (f->type != REDIS_REPLY_ARRAY) {
            stoke_redisq_ack(q, id);
            continue;
        }
        size_t n = f->elements / 2;
        const char **keys = malloc((n ? n : 1) * 2 * sizeof(char *));
        size_t *lens = malloc((n ? n : 1) * sizeof(size_t));
        if (!keys || !lens) {
            /* Stays pending: read again after a reconnect. */
            free(keys);
            free(lens);
            continue;
        }
        const char **values = keys + n;
        for (size_t k = 0; k < n; k++) {
            keys[k] = f->element[2 * k]->str ? f->element[2 * k]->str : "";
            values[k] = f->element[2 * k + 1]->str ? f->element[2 * k + 1]->str : "";
            lens[k] = f->element[2 * k + 1]->str ? f->element[2 * k + 1]->len : 0;
        }
        struct stoke_redisq_msg m = {.id = id,
                                     .n_fields = n,
                                     .keys = keys,
                                     .values = values,
                                     .value_lens = lens,
                                     .deliveries = deliveries};
        if (q->credit)
            q->credit--;
        q->hooks.on_msg(q, &m, q->hooks.data);
        free(keys);
        free(lens);
    }
}

static void on_read(redisAsyncContext *ac, void *reply, void *priv)
{
    struct stoke_redisq *q = priv;
    const redisReply *r = reply;
    (void)ac;
    if (!r || q->closing)
        return; /* dropped with its connection */
    q->reading = false;
    const char *err = error_of(r);
    if (err) {
        if (strncmp(err, "NOGROUP", 7) == 0) {
            /* The stream (and its group) went away: make them again. */
            create_group(q);
            return;
        }
        char why[200];
        snprintf(why, sizeof(why), "XREADGROUP: %s", err);
        reset(q, why);
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2 &&
        r->element[0]->element[1]->type == REDIS_REPLY_ARRAY) {
        const redisReply *entries = r->element[0]->element[1];
        if (q->own_pending && entries->elements == 0)
            q->own_pending = false; /* all read again: on to new ones */
        deliver(q, entries, q->own_pending ? 2 : 1, q->own_pending ? q->pending_from : NULL);
    } else if (q->own_pending) {
        q->own_pending = false;
    }
    read_more(q);
}

static void read_more(struct stoke_redisq *q)
{
    if (q->closing || !q->group_ready || q->reading || !q->credit || !q->rd)
        return;
    unsigned n = q->credit < q->cfg.batch ? q->credit : q->cfg.batch;
    q->reading = true;
    redisAsyncCommand(q->rd, on_read, q, "XREADGROUP GROUP %s %s COUNT %u BLOCK %u STREAMS %s %s",
                      q->cfg.group, q->cfg.consumer, n, q->cfg.block_ms, q->cfg.stream,
                      q->own_pending ? q->pending_from : ">");
}

static void on_claim(redisAsyncContext *ac, void *reply, void *priv)
{
    struct stoke_redisq *q = priv;
    const redisReply *r = reply;
    (void)ac;
    if (!r || q->closing)
        return;
    q->claiming = false;
    if (error_of(r) || r->type != REDIS_REPLY_ARRAY || r->elements < 2)
        return; /* NOGROUP and the like: the read path deals with them */
    if (r->element[0]->type == REDIS_REPLY_STRING)
        snprintf(q->claim_from, sizeof(q->claim_from), "%s", r->element[0]->str);
    if (r->element[1]->type == REDIS_REPLY_ARRAY)
        deliver(q, r->element[1], 2, NULL);
}

static void on_claim_timer(uv_timer_t *t)
{
    struct stoke_redisq *q = t->data;
    if (q->closing || !q->group_ready || q->claiming || !q->credit || !q->cmd)
        return;
    unsigned n = q->credit < q->cfg.batch ? q->credit : q->cfg.batch;
    q->claiming = true;
    redisAsyncCommand(q->cmd, on_claim, q, "XAUTOCLAIM %s %s %s %llu %s COUNT %u", q->cfg.stream,
                      q->cfg.group, q->cfg.consumer, (unsigned long long)q->cfg.claim_idle_ms,
                      q->claim_from, n);
}

int stoke_redisq_new(uv_loop_t *loop, const struct stoke_redisq_cfg *cfg,
                     const struct stoke_redisq_hooks *hooks, struct stoke_redisq **out)
{
    *out = NULL;
    if ((!cfg->unix_path && (!cfg->host || cfg->port <= 0 || cfg->port > 65535)) || !cfg->stream ||
        !cfg->group || !cfg->consumer || !hooks->on_msg ||
        (cfg->start_id && strcmp(cfg->start_id, "0") != 0 && strcmp(cfg->start_id, "$") != 0))
        return -EINVAL;
    struct stoke_redisq *q = calloc(1, sizeof(*q));
    const char *src[] = {cfg->host ? cfg->host : "",
                         cfg->stream,
                         cfg->group,
                         cfg->consumer,
                         cfg->password ? cfg->password : "",
                         cfg->unix_path ? cfg->unix_path : "",
                         cfg->start_id ? cfg->start_id : "0"};
    size_t total = 0;
    for (size_t i = 0; i < 7; i++)
        total += strlen(src[i]) + 1;
    char *s = q ? malloc(total) : NULL;
    if (!s) {
        free(q);
        return -ENOMEM;
    }
    q->loop = loop;
    q->cfg = *cfg;
    q->strings = s;
    const char **dst[] = {&q->cfg.host,     &q->cfg.stream,    &q->cfg.group,   &q->cfg.consumer,
                          &q->cfg.password, &q->cfg.unix_path, &q->cfg.start_id};
    for (size_t i = 0; i < 7; i++) {
        size_t n = strlen(src[i]) + 1;
        memcpy(s, src[i], n);
        *dst[i] = s;
        s += n;
    }
    if (!cfg->password)
        q->cfg.password = NULL;
    if (!cfg->unix_path)
        q->cfg.unix_path = NULL;
    if (!q->cfg.batch)
        q->cfg.batch = 16;
    if (!q->cfg.block_ms)
        q->cfg.block_ms = 1000;
    q->hooks = *hooks;
    snprintf(q->claim_from, sizeof(q->claim_from), "0-0");
    uv_timer_init(loop, &q->retry);
    uv_timer_init(loop, &q->claim);
    q->retry.data = q->claim.data = q;
    q->open_handles = 2;
    if (q->cfg.claim_idle_ms) {
        uint64_t every = q->cfg.claim_idle_ms / 2 < 1000 ? q->cfg.claim_idle_ms / 2 : 1000;
        uv_timer_start(&q->claim, on_claim_timer, every ? every : 1, every ? every : 1);
    }
    start_session(q);
    *out = q;
    return 0;
}

void stoke_redisq_credit(struct stoke_redisq *q, unsigned n)
{
    q->credit += n;
    read_more(q);
}

static void on_ack(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)reply;
    (void)priv;
}

int stoke_redisq_ack(struct stoke_redisq *q, const char *id)
{
    if (!q->cmd || q->closing || q->connected < 2)
        return -ENOTCONN;
    return redisAsyncCommand(q->cmd, on_ack, NULL, "XACK %s %s %s", q->cfg.stream, q->cfg.group,
                             id) == REDIS_OK
               ? 0
               : -ENOTCONN;
}

struct lag_req {
    struct stoke_redisq *q;
    stoke_redisq_lag_cb cb;
    void *data;
};

/* An integer field of an XINFO map (a flat array of names and values):
 * its value, -1 when nil, or -2 when absent. */
static int64_t info_int(const redisReply *map, const char *name)
{
    for (size_t i = 0; i + 1 < map->elements; i += 2) {
        const redisReply *k = map->element[i], *v = map->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, name) == 0)
            return v->type == REDIS_REPLY_INTEGER ? (int64_t)v->integer : -1;
    }
    return -2;
}

static const char *info_str(const redisReply *map, const char *name)
{
    for (size_t i = 0; i + 1 < map->elements; i += 2) {
        const redisReply *k = map->element[i], *v = map->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, name) == 0)
            return v->type == REDIS_REPLY_STRING ? v->str : NULL;
    }
    return NULL;
}

static void on_info(redisAsyncContext *ac, void *reply, void *priv)
{
    struct lag_req *lr = priv;
    const redisReply *r = reply;
    (void)ac;
    if (r && !lr->q->closing) {
        int err = -ENOENT;
        int64_t lag = -1, pending = -1;
        if (r->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i < r->elements; i++) {
                const redisReply *g = r->element[i];
                const char *name = g->type == REDIS_REPLY_ARRAY ? info_str(g, "name") : NULL;
                if (name && strcmp(name, lr->q->cfg.group) == 0) {
                    lag = info_int(g, "lag");
                    pending = info_int(g, "pending");
                    lag = lag < -1 ? -1 : lag;
                    err = 0;
                }
            }
        } else if (error_of(r)) {
            err = -EIO;
        }
        lr->cb(lr->q, err, lag, pending, lr->data);
    }
    free(lr);
}

int stoke_redisq_lag(struct stoke_redisq *q, stoke_redisq_lag_cb cb, void *data)
{
    if (!q->cmd || q->closing || q->connected < 2)
        return -ENOTCONN;
    struct lag_req *lr = malloc(sizeof(*lr));
    if (!lr)
        return -ENOMEM;
    *lr = (struct lag_req){q, cb, data};
    if (redisAsyncCommand(q->cmd, on_info, lr, "XINFO GROUPS %s", q->cfg.stream) != REDIS_OK) {
        free(lr);
        return -ENOTCONN;
    }
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct stoke_redisq *q = h->data;
    if (--q->open_handles > 0)
        return;
    void (*cb)(void *) = q->close_cb;
    void *data = q->close_data;
    free(q->strings);
    free(q);
    if (cb)
        cb(data);
}

void stoke_redisq_close(struct stoke_redisq *q, void (*cb)(void *data), void *data)
{
    q->closing = true;
    q->close_cb = cb;
    q->close_data = data;
    if (q->cmd)
        redisAsyncFree(q->cmd);
    if (q->rd)
        redisAsyncFree(q->rd);
    q->cmd = q->rd = NULL;
    uv_close((uv_handle_t *)&q->retry, on_timer_closed);
    uv_close((uv_handle_t *)&q->claim, on_timer_closed);
}
