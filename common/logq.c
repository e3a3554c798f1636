/* A log stream's queue between libcurl and the loop: see stoke/logq.h. */
#include "stoke/logq.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define LOGQ_RECORD 5 /* stream byte and u32 length before each piece in `out` */

static void on_closed(uv_handle_t *h)
{
    struct stoke_logq *q = h->data;
    stoke_buf_done(&q->out);
    q->on_closed(q);
}

static void finish(struct stoke_logq *q)
{
    q->finished = true;
    q->on_end(q);
    uv_close((uv_handle_t *)&q->deliver, on_closed);
}

/* From the loop: the waiting output, then the end once it is all out. */
static void deliver(uv_timer_t *t)
{
    struct stoke_logq *q = t->data;
    size_t off = 0;
    while (!q->paused && !q->cancelled && off + LOGQ_RECORD <= q->out.len) {
        uint32_t len;
        int stream = (unsigned char)q->out.data[off];
        memcpy(&len, q->out.data + off + 1, sizeof(len));
        q->on_data(stream, q->out.data + off + LOGQ_RECORD, len, q->data);
        off += LOGQ_RECORD + len;
    }
    if (q->cancelled)
        stoke_buf_clear(&q->out);
    else
        stoke_buf_consume(&q->out, off);
    if (q->easy && q->curl_paused && !q->paused && q->out.len < LOGQ_HIGH) {
        q->curl_paused = false;
        /* May call the write callback at once with what curl kept. */
        (void)curl_easy_pause(q->easy, CURLPAUSE_CONT);
    }
    if (q->ended && !q->finished && (q->out.len == 0 || q->cancelled))
        finish(q);
}

static void kick(struct stoke_logq *q)
{
    if (!q->finished)
        uv_timer_start(&q->deliver, deliver, 0, 0);
}

void stoke_logq_init(struct stoke_logq *q, uv_loop_t *loop, CURL *easy, stoke_logq_data_cb on_data,
                     stoke_logq_end_cb on_end, stoke_logq_closed_cb on_closed_cb, void *data)
{
    memset(q, 0, sizeof(*q));
    stoke_buf_init(&q->out, LOGQ_MAX);
    uv_timer_init(loop, &q->deliver);
    q->deliver.data = q;
    q->easy = easy;
    q->on_data = on_data;
    q->on_end = on_end;
    q->on_closed = on_closed_cb;
    q->data = data;
}

bool stoke_logq_must_pause(struct stoke_logq *q)
{
    if (q->paused || q->out.len >= LOGQ_HIGH) {
        /* curl keeps this piece and hands it again after CURLPAUSE_CONT. */
        q->curl_paused = true;
        return true;
    }
    return false;
}

int stoke_logq_push(int stream, const char *bytes, size_t len, void *arg)
{
    struct stoke_logq *q = arg;
    unsigned char head[LOGQ_RECORD];
    uint32_t n = (uint32_t)len;
    if (len == 0)
        return 0;
    head[0] = (unsigned char)stream;
    memcpy(head + 1, &n, sizeof(n));
    if (q->out.len + sizeof(head) + len > q->out.limit)
        return -ENOBUFS;
    int r = stoke_buf_append(&q->out, head, sizeof(head));
    if (r == 0)
        r = stoke_buf_append(&q->out, bytes, len);
    if (r == 0)
        kick(q);
    return r;
}

void stoke_logq_done(struct stoke_logq *q, bool drop)
{
    q->easy = NULL;
    q->ended = true;
    if (drop && !q->finished) {
        q->cancelled = true;
        finish(q);
        return;
    }
    kick(q);
}

void stoke_logq_pause(struct stoke_logq *q, bool pause)
{
    if (q->finished || q->paused == pause)
        return;
    q->paused = pause;
    if (!pause)
        kick(q);
}

bool stoke_logq_cancel(struct stoke_logq *q)
{
    if (q->cancelled || q->finished)
        return false;
    q->cancelled = true;
    kick(q);
    return true;
}

void stoke_logq_abandon(struct stoke_logq *q)
{
    q->finished = true;
    q->easy = NULL;
    uv_close((uv_handle_t *)&q->deliver, on_closed);
}
