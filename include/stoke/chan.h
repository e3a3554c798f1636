/* The client end of the controller's channel (stoke/routes.h), shared by
 * the activator (activator/ctl.c) and stoke-events (events/ctlpeer.c):
 * connects to the controller, to every address of every target in turn
 * until one takes the channel (a controller that is not the leader does not
 * listen), then again from the first after a back-off once none did or the
 * connection is lost; sends the token first when there is one; reads lines;
 * hands whole route tables and updates to its user, and asks for the table
 * again ("resync") when an update's gen does not follow the table's.
 * Thread: the loop's.
 *
 * Test hook: with STOKE_TEST_DROP_ROUTE_UPDATE=N in its environment, a
 * channel drops the Nth update it receives, as if lost (tests/e2e/
 * test_channel.py). */
#ifndef STOKE_CHAN_H
#define STOKE_CHAN_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "stoke/routes.h"
#include "stoke/util.h"

#define STOKE_CHAN_MAX_TARGETS 8

/* Where the controller is: one unix socket, or up to STOKE_CHAN_MAX_TARGETS
 * "host:port" entries (an IP literal, "[IPv6]", or a DNS name such as a
 * headless Service's, resolved again at every connection attempt). */
struct stoke_chan_targets {
    bool is_unix;
    struct stoke_addr unix_addr;
    size_t n;
    struct {
        char host[254];
        char port[6];
    } t[STOKE_CHAN_MAX_TARGETS];
};

/* Parses "unix:/path" or "host:port[,host:port...]". Returns 0 or -EINVAL. */
int stoke_chan_parse_targets(const char *s, struct stoke_chan_targets *ret);

struct stoke_chan;

struct stoke_chan_ops {
    /* A connection is open (after the token went): send the hello. */
    void (*on_connected)(struct stoke_chan *ch, void *data);
    /* A whole table, owned by the callee now. `len`: the message's size;
     * `t0`: uv_hrtime() when it was read (for the callee's metrics). */
    void (*on_table)(struct stoke_route_table *t, size_t len, uint64_t t0, void *data);
    /* An update that follows the callee's table (gen = its gen + 1), owned
     * by the callee now. */
    void (*on_update)(struct stoke_route_update *u, size_t len, uint64_t t0, void *data);
    /* The gen of the callee's table (0: none). */
    uint64_t (*gen)(void *data);
    /* Optional: an update was missed, a resync was asked for. */
    void (*on_resync)(void *data);
};

/* Connects to `targets` (copied). `id` names the channel in logs; `token`
 * (copied, may be NULL) is sent first on each connection. */
int stoke_chan_new(uv_loop_t *loop, const struct stoke_chan_targets *targets, const char *id,
                   const char *token, const struct stoke_chan_ops *ops, void *data,
                   struct stoke_chan **ret);

/* Sends one line (without '\n'); dropped while disconnected or when the
 * controller does not read. */
void stoke_chan_send(struct stoke_chan *ch, const char *line, size_t len);

bool stoke_chan_connected(const struct stoke_chan *ch);

/* Closes; `on_closed` (may be NULL) is called once everything is freed. */
void stoke_chan_close(struct stoke_chan *ch, void (*on_closed)(void *data), void *data);

#endif
