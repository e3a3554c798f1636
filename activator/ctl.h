/* The activator's end of the channel to the controller (stoke/routes.h), on
 * stoke/chan.h's client: receives route tables and updates for the proxy (an update whose
 * gen does not follow the table's: asks for the table again, "resync"),
 * sends pokes at once and stats every second (functions with traffic only);
 * reconnects with backoff when the controller goes away, while the proxy
 * keeps serving the replicas it knows. Thread: the loop's. */
#ifndef ACTIVATOR_CTL_H
#define ACTIVATOR_CTL_H

#include <uv.h>

#include "proxy.h"
#include "stoke/chan.h"
#include "stoke/util.h"

struct ctl;

/* Connects to `controller` (copied): every address of every target in turn,
 * until one takes the channel (a controller that is not the leader does not
 * listen), then again from the first after a back-off once none did or the
 * connection is lost. `id` names this channel (one per worker) to the controller, `process` the
 * activator process it belongs to (both copied): the controller divides
 * limits among processes. `token` (copied, may be NULL) is sent in the hello
 * that opens each connection: a TCP channel refuses a connection without the
 * controller's token. */
int ctl_new(uv_loop_t *loop, const struct stoke_chan_targets *controller, const char *id,
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
