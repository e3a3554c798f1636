/* A log stream read by libcurl, handed to its reader from the loop: the
 * shared half of the engine's container logs (engine.c) and the API
 * server's pod logs (kube.c). The transfer's write callback queues pieces
 * (stream, bytes) here; a zero-delay timer hands them to on_data from the
 * loop (never from inside libcurl, so the reader may pause, cancel or start
 * calls), then on_end once the transfer is over and all was handed out.
 *
 * Bounds: above LOGQ_HIGH queued bytes, or while the reader has paused, the
 * write callback answers CURL_WRITEFUNC_PAUSE (libcurl keeps the piece and
 * stops reading the socket) and the transfer is resumed once the queue has
 * drained; at most LOGQ_MAX bytes wait (one of curl's writes on top of the
 * mark), past that -ENOBUFS. Thread: the loop's. */
#ifndef STOKE_LOGQ_H
#define STOKE_LOGQ_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>
#include <uv.h>

#include "stoke/util.h"

#define LOGQ_HIGH (256u << 10)
#define LOGQ_MAX (1u << 20)

struct stoke_logq;

/* One piece, borrowed for the call (stream 1 stdout, 2 stderr). */
typedef void (*stoke_logq_data_cb)(int stream, const char *bytes, size_t len, void *data);
/* Once: the transfer is over (stoke_logq_done()) and its output handed out,
 * or the queue was cancelled. The owner reports its end from here. */
typedef void (*stoke_logq_end_cb)(struct stoke_logq *q);
/* After on_end, once the timer has closed: the owner may free `q` now. */
typedef void (*stoke_logq_closed_cb)(struct stoke_logq *q);

struct stoke_logq {
    uv_timer_t deliver;
    struct stoke_buf out; /* records: stream byte, u32 length, bytes */
    CURL *easy;           /* the transfer while it runs (to resume it), else NULL */
    bool paused;          /* by the reader */
    bool curl_paused;     /* the write callback answered CURL_WRITEFUNC_PAUSE */
    bool ended;           /* the transfer is over: on_end once `out` is out */
    bool cancelled;
    bool finished; /* on_end has run */
    stoke_logq_data_cb on_data;
    stoke_logq_end_cb on_end;
    stoke_logq_closed_cb on_closed;
    void *data; /* on_data's */
};

/* Starts the queue of transfer `easy` (may be set later). Cannot fail. */
void stoke_logq_init(struct stoke_logq *q, uv_loop_t *loop, CURL *easy, stoke_logq_data_cb on_data,
                     stoke_logq_end_cb on_end, stoke_logq_closed_cb on_closed, void *data);

/* From the write callback, before feeding a 2xx piece: true when the piece
 * must be refused with CURL_WRITEFUNC_PAUSE (paused, or the queue is full). */
bool stoke_logq_must_pause(struct stoke_logq *q);

/* Queues a piece and schedules its delivery. Returns 0, -ENOBUFS (over
 * LOGQ_MAX: stop the transfer), -ENOMEM. An empty piece is no record. */
int stoke_logq_push(int stream, const char *bytes, size_t len, void *q);

/* The transfer is over (its easy handle cleaned up by the caller): on_end
 * runs from the loop once the queue is out (at once if `drop`: the output
 * is dropped, as when the client closes under it). */
void stoke_logq_done(struct stoke_logq *q, bool drop);

/* The reader's backpressure: while paused on_data does not run and the
 * transfer is not read. */
void stoke_logq_pause(struct stoke_logq *q, bool pause);

/* The reader is done: on_data runs no more, on_end runs later from the loop
 * (the owner, having stopped the transfer first, reports -ECANCELED).
 * Returns false when on_end has run or is already due. */
bool stoke_logq_cancel(struct stoke_logq *q);

/* The transfer never started: on_end never runs, on_closed does (later,
 * from the loop). */
void stoke_logq_abandon(struct stoke_logq *q);

#endif
