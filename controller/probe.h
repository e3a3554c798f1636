/* Readiness probe of one replica: TCP connect to its address, or an HTTP
 * GET of a path answered with a 2xx or 3xx status, tried every period with
 * backoff until it succeeds or is stopped. Thread: the loop's. */
#ifndef CONTROLLER_PROBE_H
#define CONTROLLER_PROBE_H

#include <stdint.h>

#include <uv.h>

struct probe;

/* Called once, from the loop, when the replica answered. The probe is then
 * stopped and freed: do not call probe_stop() on it after this. */
typedef void (*probe_ready_cb)(void *data);

/* `addr`: "host:port" (an IP address; sent as the Host header too).
 * `path` NULL: TCP connect only (copied otherwise). The first try starts at
 * once; later ones after `period_ms`, growing by half each time up to
 * `max_period_ms`. Returns 0 and *ret, -EINVAL for a bad address, or
 * -ENOMEM. */
int probe_start(uv_loop_t *loop, const char *addr, const char *path, uint64_t period_ms,
                uint64_t max_period_ms, probe_ready_cb cb, void *data, struct probe **ret);

/* Stops probing and frees the probe (asynchronously); the callback will not
 * run. NULL is fine. */
void probe_stop(struct probe *p);

#endif
