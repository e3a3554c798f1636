/* The ops port both daemons serve: a small HTTP/1.1 server for operators
 * and Prometheus (a handler over stoke/httpd.h), on the caller's loop.
 *
 *   GET /healthz  200 with the health callback's message when it says
 *                 healthy, 503 with its message otherwise.
 *   GET /metrics  200, Prometheus text format 0.0.4 from the metrics
 *                 callback; 500 when it fails.
 *
 * Only GET and HEAD (others 405, with Allow), no request bodies (400),
 * other paths 404. Keep-alive and pipelining work; a request head is
 * bounded (431) and must arrive within a timeout, idle connections are
 * closed, and the number of connections is capped. Every error answer
 * closes its connection. Thread: the loop's; the callbacks run on it. */
#ifndef STOKE_OPSD_H
#define STOKE_OPSD_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "stoke/util.h"

struct stoke_opsd_callbacks {
    /* Appends the metrics text to `out` (capped at 64 MiB). Returns 0, or a
     * negative errno and the answer is a 500. Runs for each scrape, on the
     * loop: keep it to reading state, never waiting. */
    int (*metrics)(struct stoke_buf *out, void *data);
    /* Returns true when healthy. Writes one line (no line feed) saying why
     * into `msg` of `size` bytes, NUL-terminated; "ok" when healthy. */
    bool (*health)(char *msg, size_t size, void *data);
    void *data;
};

struct stoke_opsd;

/* An --ops-listen value: "IP:PORT" (*ret filled, *ret_on true) or "none"
 * (*ret_on false). Returns 0 or -EINVAL (a unix socket too). */
int stoke_opsd_parse_addr(const char *s, struct stoke_addr *ret, bool *ret_on);

/* Binds `addr` (IP only: -EINVAL for a unix socket) and serves with `cbs`
 * (copied; cbs->data borrowed until stoke_opsd_close()). Returns 0 and
 * *ret, or a negative errno with nothing left open. */
int stoke_opsd_new(uv_loop_t *loop, const struct stoke_addr *addr,
                   const struct stoke_opsd_callbacks *cbs, struct stoke_opsd **ret);

/* Closes the listener and every connection; no callback runs after this.
 * The server is freed once its handles have closed (run the loop). NULL
 * accepted. */
void stoke_opsd_close(struct stoke_opsd *o);

#endif
