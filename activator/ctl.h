/* The activator's end of the channel to the controller (stoke/routes.h):
 * connects, receives route tables and updates for the proxy (an update whose
 * gen does not follow the table's: asks for the table again, "resync"),
 * sends pokes at once and stats every second (functions with traffic only);
 * reconnects with backoff when the controller goes away, while the proxy
 * keeps serving the replicas it knows. Thread: the loop's.
 *
 * Test hook: with STOKE_TEST_DROP_ROUTE_UPDATE=N in its environment, a
 * channel drops the Nth update it receives, as if lost (tests/e2e/
 * test_channel.py). */
#ifndef ACTIVATOR_CTL_H
#define ACTIVATOR_CTL_H

#include <uv.h>

#include "proxy.h"
#include "stoke/util.h"

struct ctl;

#define CTL_MAX_TARGETS 8

/* Where the controller is: one unix socket, or up to CTL_MAX_TARGETS
 * "host:port" entries (an IP literal, "[IPv6]", or a DNS name such as a
 * headless Service's, resolved again at every connection attempt). */
struct ctl_targets {
    bool is_unix;
    struct stoke_addr unix_addr;
    size_t n;
    struct {
        char host[254];
        char port[6];
    } t[CTL_MAX_TARGETS];
};

/* Parses "unix:/path" or "host:port[,host:port...]". Returns 0 or -EINVAL. */
int ctl_parse_targets(const char *s, struct ctl_targets *ret);

/* Connects to `controller` (copied): every address of every target in turn,
 * until one takes the channel (a controller that is not the leader does not
 * listen), then again from the first after a back-off once none did or the
 * connection is lost. `id` names this channel (one per worker) to the controller, `process` the
 * activator process it belongs to (both copied): the controller divides
 * limits among processes. `token` (copied, may be NULL) is sent in the hello
 * that opens each connection: a TCP channel refuses a connection without the
 * controller's token. */
int ctl_new(uv_loop_t *loop, const struct ctl_targets *controller, const char *id,
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
