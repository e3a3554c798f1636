/* stoke/redisq.h against a real redis-server (Debian's), started here on a
 * free loopback port with no persistence, and killed at the end (it dies
 * with this process too: PR_SET_PDEATHSIG; and tests/run.sh kills what
 * $STOKE_TEST_PIDFILE lists). The test's own commands go through hiredis's
 * blocking API. */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "stoke/redisq.h"

static pid_t server;
static int port;

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

static redisContext *sync_conn(void)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static void start_server(void)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", port);
    server = fork();
    assert_true(server >= 0);
    if (server == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* Its log (startup banner and warnings) is stdout; errors make the
         * PING below fail. */
        if (!freopen("/dev/null", "w", stdout))
            _exit(127);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    const char *pidfile = getenv("STOKE_TEST_PIDFILE");
    FILE *f = pidfile ? fopen(pidfile, "a") : NULL;
    if (f) {
        fprintf(f, "%d\n", (int)server);
        fclose(f);
    }
    /* Answers PING within 10 s. */
    for (int i = 0; i < 1000; i++) {
        redisContext *c = sync_conn();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok)
                return;
        }
        usleep(10000);
    }
    fail_msg("redis-server did not answer on port %d", port);
}

static void stop_server(void)
{
    if (server > 0) {
        kill(server, SIGKILL);
        waitpid(server, NULL, 0);
        server = 0;
    }
}

static long long cmd_int(const char *fmt, ...)
{
    redisContext *c = sync_conn();
    assert_non_null(c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r->type == REDIS_REPLY_ARRAY ? (long long)r->elements
                                                 : -1;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static void xadd(const char *stream, int n, int first)
{
    redisContext *c = sync_conn();
    assert_non_null(c);
    for (int i = 0; i < n; i++) {
        char v[32];
        snprintf(v, sizeof(v), "m%d", first + i);
        redisReply *r = redisCommand(c, "XADD %s * body %s n %d", stream, v, first + i);
        assert_true(r && r->type == REDIS_REPLY_STRING);
        freeReplyObject(r);
    }
    redisFree(c);
}

/* What a consumer saw. */
struct seen {
    uv_loop_t *loop;
    struct stoke_redisq *q;
    int n, ready, lost;
    char bodies[64][16];
    char ids[64][32];
    unsigned deliveries[64];
    bool ack;
    int lag_calls;
    int64_t lag, pending;
};

static void on_msg(struct stoke_redisq *q, const struct stoke_redisq_msg *m, void *data)
{
    struct seen *s = data;
    (void)q;
    assert_true(s->n < 64);
    assert_int_equal(m->n_fields, 2);
    assert_string_equal(m->keys[0], "body");
    assert_true(m->value_lens[0] == strlen(m->values[0]));
    snprintf(s->bodies[s->n], sizeof(s->bodies[0]), "%s", m->values[0]);
    snprintf(s->ids[s->n], sizeof(s->ids[0]), "%s", m->id);
    s->deliveries[s->n] = m->deliveries;
    s->n++;
    if (s->ack)
        assert_int_equal(stoke_redisq_ack(s->q, m->id), 0);
}

static void on_state(struct stoke_redisq *q, int err, const char *why, void *data)
{
    struct seen *s = data;
    (void)q;
    (void)why;
    if (err == 0)
        s->ready++;
    else
        s->lost++;
}

static void on_lag(struct stoke_redisq *q, int err, int64_t lag, int64_t pending, void *data)
{
    struct seen *s = data;
    (void)q;
    assert_int_equal(err, 0);
    s->lag = lag;
    s->pending = pending;
    s->lag_calls++;
}

/* Runs the loop until *counter reaches want, or 10 s pass. */
static void run_until(uv_loop_t *loop, int *counter, int want)
{
    uint64_t deadline = uv_now(loop) + 10000;
    while (*counter < want && uv_now(loop) < deadline) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
        uv_update_time(loop);
    }
    if (*counter < want)
        fail_msg("%d of %d after 10 s", *counter, want);
}

static void open_consumer(struct seen *s, uv_loop_t *loop, const char *stream, const char *consumer,
                          uint64_t claim_idle_ms, unsigned credit)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->ack = true;
    struct stoke_redisq_cfg cfg = {.host = "127.0.0.1",
                                   .port = port,
                                   .stream = stream,
                                   .group = "g",
                                   .consumer = consumer,
                                   .batch = 4,
                                   .block_ms = 200,
                                   .claim_idle_ms = claim_idle_ms};
    struct stoke_redisq_hooks h = {.on_msg = on_msg, .on_state = on_state, .data = s};
    assert_int_equal(stoke_redisq_new(loop, &cfg, &h, &s->q), 0);
    stoke_redisq_credit(s->q, credit);
    run_until(loop, &s->ready, 1);
}

static void close_consumer(struct seen *s)
{
    stoke_redisq_close(s->q, NULL, NULL);
    uv_run(s->loop, UV_RUN_NOWAIT); /* the handles' close callbacks */
    s->q = NULL;
}

/* Messages already in the stream and those added later arrive in order,
 * once each; acknowledged, none stays pending. */
static void test_reads_in_order_and_acks(void **state)
{
    uv_loop_t loop;
    (void)state;
    uv_loop_init(&loop);
    xadd("s1", 5, 0);
    struct seen s;
    open_consumer(&s, &loop, "s1", "c1", 0, 100);
    run_until(&loop, &s.n, 5);
    xadd("s1", 7, 5);
    run_until(&loop, &s.n, 12);
    for (int i = 0; i < 12; i++) {
        char want[16];
        snprintf(want, sizeof(want), "m%d", i);
        assert_string_equal(s.bodies[i], want);
        assert_int_equal(s.deliveries[i], 1);
    }
    /* The acks are on their way; the group's pending count drops to 0. */
    for (int i = 0; i < 500 && cmd_int("XPENDING s1 g - + 100") != 0; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    assert_int_equal(cmd_int("XPENDING s1 g - + 100"), 0);
    close_consumer(&s);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* No more messages than the credit given; more credit, more messages; the
 * lag counts what the group has not read. */
static void test_credit_and_lag(void **state)
{
    uv_loop_t loop;
    (void)state;
    uv_loop_init(&loop);
    xadd("s2", 10, 0);
    struct seen s;
    open_consumer(&s, &loop, "s2", "c1", 0, 3);
    run_until(&loop, &s.n, 3);
    /* A while longer: still 3. */
    for (int i = 0; i < 50; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(2000);
    }
    assert_int_equal(s.n, 3);
    assert_int_equal(stoke_redisq_lag(s.q, on_lag, &s), 0);
    run_until(&loop, &s.lag_calls, 1);
    assert_int_equal(s.lag, 7);
    stoke_redisq_credit(s.q, 10);
    run_until(&loop, &s.n, 10);
    assert_int_equal(s.n, 10);
    close_consumer(&s);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A consumer that died with messages unacknowledged: the same consumer name
 * reads them again first; another consumer takes over what stays pending
 * longer than claim_idle_ms. */
static void test_pending_read_again_and_claimed(void **state)
{
    uv_loop_t loop;
    (void)state;
    uv_loop_init(&loop);
    xadd("s3", 6, 0);
    struct seen a;
    open_consumer(&a, &loop, "s3", "a", 0, 100);
    a.ack = false;
    run_until(&loop, &a.n, 6);
    close_consumer(&a);
    assert_int_equal(cmd_int("XPENDING s3 g - + 100"), 6);

    /* Again as "a": its 6, marked as read again, then nothing new. */
    open_consumer(&a, &loop, "s3", "a", 0, 100);
    a.ack = false;
    run_until(&loop, &a.n, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(a.deliveries[i], 2);
    close_consumer(&a);

    /* "b" takes them over once idle 300 ms, and acknowledges them. */
    struct seen b;
    open_consumer(&b, &loop, "s3", "b", 300, 100);
    run_until(&loop, &b.n, 6);
    for (int i = 0; i < 6; i++) {
        char want[16];
        snprintf(want, sizeof(want), "m%d", i);
        assert_string_equal(b.bodies[i], want);
        assert_int_equal(b.deliveries[i], 2);
    }
    for (int i = 0; i < 500 && cmd_int("XPENDING s3 g - + 100") != 0; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    assert_int_equal(cmd_int("XPENDING s3 g - + 100"), 0);
    close_consumer(&b);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* redis-server killed and started again (without persistence: the stream
 * and group are gone): the consumer says it lost the connection, comes
 * back, makes the group again and reads what is added then. */
static void test_server_restart(void **state)
{
    uv_loop_t loop;
    (void)state;
    uv_loop_init(&loop);
    struct seen s;
    open_consumer(&s, &loop, "s4", "c1", 0, 100);
    xadd("s4", 2, 0);
    run_until(&loop, &s.n, 2);
    stop_server();
    run_until(&loop, &s.lost, 1);
    start_server();
    run_until(&loop, &s.ready, 2);
    xadd("s4", 3, 2);
    run_until(&loop, &s.n, 5);
    for (int i = 2; i < 5; i++) {
        char want[16];
        snprintf(want, sizeof(want), "m%d", i);
        assert_string_equal(s.bodies[i], want);
    }
    close_consumer(&s);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* The stream deleted under the consumer (its group goes with it): the group
 * is made again on the same connections, without a reconnect, and what is
 * added afterwards is read. */
static void test_stream_deleted(void **state)
{
    uv_loop_t loop;
    (void)state;
    uv_loop_init(&loop);
    struct seen s;
    open_consumer(&s, &loop, "s6", "c1", 0, 100);
    xadd("s6", 1, 0);
    run_until(&loop, &s.n, 1);
    assert_int_equal(cmd_int("DEL s6"), 1);
    /* The next read (within block_ms) gets NOGROUP; the group comes back. */
    run_until(&loop, &s.ready, 2);
    xadd("s6", 2, 1);
    run_until(&loop, &s.n, 3);
    assert_string_equal(s.bodies[2], "m2");
    assert_int_equal(s.lost, 0);
    close_consumer(&s);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Closing with a blocked read in flight returns at once and frees all
 * (valgrind and LeakSanitizer check the rest). */
static void test_close_while_blocked(void **state)
{
    uv_loop_t loop;
    (void)state;
    uv_loop_init(&loop);
    struct seen s;
    open_consumer(&s, &loop, "s5", "c1", 1000, 100);
    for (int i = 0; i < 20; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(2000);
    }
    close_consumer(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static int setup(void **state)
{
    (void)state;
    port = free_port();
    start_server();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    stop_server();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_in_order_and_acks),
        cmocka_unit_test(test_credit_and_lag),
        cmocka_unit_test(test_pending_read_again_and_claimed),
        cmocka_unit_test(test_server_restart),
        cmocka_unit_test(test_stream_deleted),
        cmocka_unit_test(test_close_while_blocked),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
