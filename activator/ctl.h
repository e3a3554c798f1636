/* The activator's end of the channel to the controller (stoke/routes.h):
 * connects, receives route tables for the proxy, sends pokes at once and
 * stats every second; reconnects with backoff when the controller goes away,
 * while the proxy keeps serving the replicas it knows. Thread: the loop's. */
#ifndef ACTIVATOR_CTL_H
#define ACTIVATOR_CTL_H

#include <uv.h>

#include "proxy.h"
#include "stoke/util.h"

struct ctl;

/* `id` names this channel (one per worker) to the controller, `process` the
 * activator process it belongs to (both copied): the controller divides
 * limits among processes. `token` (copied, may be NULL) is sent in the hello
 * that opens each connection: a TCP channel refuses a connection without the
 * controller's token. */
int ctl_new(uv_loop_t *loop, const struct stoke_addr *controller, const char *id,
            const char *process, const char *token, struct ctl **ret);

/* The proxy whose routes this channel feeds; set once, before traffic. */
void ctl_set_proxy(struct ctl *ctl, struct proxy *px);

/* Tells the controller a request waits for `fn` (dropped while disconnected:
 * waiting functions are poked again on reconnect). */
void ctl_poke(struct ctl *ctl, const char *fn);

/* Sends the controller the route table generation in use and the replicas
 * still draining (see proxy_draining()); call when either changes. */
void ctl_drain_changed(struct ctl *ctl);

void ctl_close(struct ctl *ctl, void (*on_closed)(void *data), void *data);

#endif
