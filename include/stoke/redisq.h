/* A consumer of one Redis stream through a consumer group, on a libuv loop
 * (hiredis's async API): the transport of queue triggers.
 *
 * Messages are read with XREADGROUP as far as the caller has credit (its
 * room for messages in flight), first those this consumer had been given
 * and not acknowledged (after a crash, under the same consumer name), then
 * new ones; those left pending by another consumer for longer than
 * claim_idle_ms are taken over (XAUTOCLAIM). The caller acknowledges each
 * (XACK) when it is done with it. The group is created when missing (from
 * the stream's start, MKSTREAM), also when the stream went away, as it does
 * when a Redis without persistence restarts. A lost connection is made
 * again with back-off; messages unacknowledged meanwhile are read again as
 * this consumer's own pending ones. */
#ifndef STOKE_REDISQ_H
#define STOKE_REDISQ_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct stoke_redisq;

struct stoke_redisq_cfg {
    const char *host; /* IP address */
    int port;
    const char *unix_path; /* or a unix socket (host and port unused); NULL: TCP */
    const char *password;  /* NULL: no AUTH */
    const char *stream, *group, *consumer;
    unsigned batch;         /* most messages asked for at once (default 16) */
    unsigned block_ms;      /* how long a read waits for new ones (default 1000) */
    uint64_t claim_idle_ms; /* take over others' pending after this (0: never) */
    const char *start_id;   /* where a group made here starts: "0" (default) or "$" */
};

/* One message; valid during the callback only. values[i] has value_lens[i]
 * bytes (binary-safe; also NUL-terminated). */
struct stoke_redisq_msg {
    const char *id;
    size_t n_fields;
    const char *const *keys;
    const char *const *values;
    const size_t *value_lens;
    unsigned deliveries; /* 1 when new; more when read again or taken over */
};

struct stoke_redisq_hooks {
    /* A message, which took one credit. */
    void (*on_msg)(struct stoke_redisq *q, const struct stoke_redisq_msg *m, void *data);
    /* The connection's state: err 0 when ready (the group exists), <0 with
     * a reason when lost or refused (retried with back-off). May be NULL. */
    void (*on_state)(struct stoke_redisq *q, int err, const char *why, void *data);
    void *data;
};

/* Starts connecting; the copy of cfg's strings is the consumer's. */
int stoke_redisq_new(uv_loop_t *loop, const struct stoke_redisq_cfg *cfg,
                     const struct stoke_redisq_hooks *hooks, struct stoke_redisq **out);

/* Room for n more messages. */
void stoke_redisq_credit(struct stoke_redisq *q, unsigned n);

/* XACK of a message the consumer was given. 0, or -ENOTCONN (it stays
 * pending and comes back after a reconnect). */
int stoke_redisq_ack(struct stoke_redisq *q, const char *id);

/* XINFO GROUPS: messages not yet read by the group (lag; -1 when Redis
 * cannot tell) and read but unacknowledged (pending), or err < 0. */
typedef void (*stoke_redisq_lag_cb)(struct stoke_redisq *q, int err, int64_t lag, int64_t pending,
                                    void *data);
int stoke_redisq_lag(struct stoke_redisq *q, stoke_redisq_lag_cb cb, void *data);

/* Drops both connections (replies still due are dropped: the messages
 * stay pending in Redis) and frees q once its handles are closed; cb (may
 * be NULL) is then called. No callback of q runs after this call. */
void stoke_redisq_close(struct stoke_redisq *q, void (*cb)(void *data), void *data);

#endif
