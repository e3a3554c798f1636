/* The activator's ops port: a small HTTP/1.1 server for operators and
 * Prometheus, on a loop of its own (the main thread's), never on a worker's.
 *
 *   GET /healthz  200 "ok" while every worker's loop beats (metrics.h);
 *                 503 naming the first stalled worker otherwise.
 *   GET /metrics  Prometheus text format 0.0.4 (metrics_format()).
 *
 * Only GET and HEAD (others 405, with Allow), no request bodies (400),
 * other paths 404. Keep-alive and pipelining work; a request head is
 * bounded (431) and must arrive within a timeout, idle connections are
 * closed, and the number of connections is capped. Every error answer
 * closes its connection. Thread: the loop's. */
#ifndef ACTIVATOR_OPS_H
#define ACTIVATOR_OPS_H

#include <uv.h>

#include "metrics.h"
#include "stoke/util.h"

struct ops;

/* Binds `addr` and serves `m` (borrowed until ops_close()). Returns 0 and
 * *ret, or a negative errno with nothing left open. */
int ops_new(uv_loop_t *loop, const struct stoke_addr *addr, struct metrics *m, struct ops **ret);

/* Closes the listener and every connection; the ops server is freed once
 * its handles have closed (run the loop). NULL accepted. */
void ops_close(struct ops *o);

#endif
