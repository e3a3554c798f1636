/* Contract tests of the controller's backend interface (controller/backend.h)
 * against the Docker backend and the real engine on $DOCKER_HOST. They go
 * through the operations table only, so a second backend can run the same
 * cases: what each capability promises, the callback rules (never from
 * inside the call, exactly once), addresses, lists for adoption, the watch,
 * logs and usage.
 *
 * Replicas run $STOKE_HELLO_IMAGE (stoke-hello:1) with the instance label
 * io.stoke.instance=test-<random per run>; every test's teardown removes all
 * of that instance's replicas through the backend, so a failed test leaves
 * nothing. Test traffic stays on 127.0.0.1. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend.h"
#include "stoke/log.h"
#include "stoke/spec.h"
#include "stoke/util.h"

/* Upper bound for one wait; only a bug gets anywhere near it. */
#define WAIT_MS 60000

static char g_instance[32];
static bool g_in_call; /* set around every backend call */
/* The loop a wait runs: callbacks stop it, because one may come from the
 * loop's timer phase, and UV_RUN_ONCE would then block in its poll phase
 * until some other event (as in test_engine.c). */
static uv_loop_t *g_wait_loop;

static void wake(void)
{
    if (g_wait_loop)
        uv_stop(g_wait_loop);
}

struct fixture {
    uv_loop_t loop;
    struct backend *b;
    uv_timer_t guard;
    bool timed_out;
    struct stoke_spec spec;
    char revision[17];
};

/* What a callback saw, copied out of the borrowed result. */
struct reply {
    bool done;
    int calls;
    int err;
    char message[256];
    char how[64];
    enum backend_state state;
};

static void on_reply(const struct backend_result *res, void *data)
{
    struct reply *rp = data;
    assert_false(g_in_call); /* never from inside the call */
    rp->calls++;
    rp->done = true;
    wake();
    rp->err = res->err;
    assert_non_null(res->message);
    snprintf(rp->message, sizeof(rp->message), "%s", res->message);
    snprintf(rp->how, sizeof(rp->how), "%s", res->how ? res->how : "");
    rp->state = res->state;
}

static void on_guard(uv_timer_t *t)
{
    struct fixture *f = t->data;
    f->timed_out = true;
    wake();
}

/* Runs the loop until *flag is set, or fails the test after WAIT_MS. */
static void wait_flag(struct fixture *f, const bool *flag)
{
    f->timed_out = false;
    g_wait_loop = &f->loop;
    assert_int_equal(uv_timer_start(&f->guard, on_guard, WAIT_MS, 0), 0);
    while (!*flag && !f->timed_out)
        (void)uv_run(&f->loop, UV_RUN_ONCE);
    (void)uv_timer_stop(&f->guard);
    g_wait_loop = NULL;
    assert_false(f->timed_out);
}

/* Starts one backend operation with on_reply into `rp` and waits for it;
 * its result's err is then in rp->err. */
#define RUN(f, rp, call)                                                                           \
    do {                                                                                           \
        memset((rp), 0, sizeof(*(rp)));                                                            \
        g_in_call = true;                                                                          \
        int run_r_ = (call);                                                                       \
        g_in_call = false;                                                                         \
        assert_int_equal(run_r_, 0);                                                               \
        wait_flag((f), &(rp)->done);                                                               \
        assert_int_equal((rp)->calls, 1);                                                          \
    } while (0)

/* ---- lists ---- */

struct listing {
    bool done;
    int err;
    size_t n;
    struct {
        char id[65], function[64], revision[17], addr[64];
        enum backend_state state;
    } items[16];
};

static void on_list(const struct backend_result *res, const struct backend_listed *items, size_t n,
                    void *data)
{
    struct listing *l = data;
    assert_false(g_in_call);
    l->done = true;
    wake();
    l->err = res->err;
    for (size_t i = 0; i < n && l->n < 16; i++, l->n++) {
        snprintf(l->items[l->n].id, sizeof(l->items[l->n].id), "%s", items[i].id);
        snprintf(l->items[l->n].function, 64, "%s", items[i].function ? items[i].function : "");
        snprintf(l->items[l->n].revision, 17, "%s", items[i].revision ? items[i].revision : "");
        snprintf(l->items[l->n].addr, 64, "%s", items[i].addr ? items[i].addr : "");
        l->items[l->n].state = items[i].state;
    }
}

static void list_all(struct fixture *f, struct listing *l)
{
    memset(l, 0, sizeof(*l));
    g_in_call = true;
    int r = f->b->ops->list(f->b, on_list, l);
    g_in_call = false;
    assert_int_equal(r, 0);
    wait_flag(f, &l->done);
    assert_int_equal(l->err, 0);
}

/* The listed replica `id`, or -1. */
static int listed_index(const struct listing *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->items[i].id, id) == 0)
            return (int)i;
    }
    return -1;
}

/* Removes every replica of this run's instance. */
static void remove_all(struct fixture *f)
{
    struct listing l;
    list_all(f, &l);
    for (size_t i = 0; i < l.n; i++) {
        struct backend_listed it = {.id = l.items[i].id, .state = l.items[i].state};
        struct reply rp;
        RUN(f, &rp, f->b->ops->remove_listed(f->b, &it, on_reply, &rp));
        assert_true(rp.err == 0 || rp.err == -ENOENT);
    }
}

/* ---- fixture ---- */

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
    f->guard.data = f;
    const char *image = getenv("STOKE_HELLO_IMAGE");
    char yaml[512];
    snprintf(yaml, sizeof(yaml),
             "apiVersion: stoke/v1\nkind: Function\nmetadata: {name: contract}\n"
             "spec: {image: \"%s\", resources: {memory: 64Mi}}\n",
             image && *image ? image : "stoke-hello:1");
    assert_int_equal(stoke_spec_parse(yaml, strlen(yaml), "contract.yaml", &f->spec, NULL), 0);
    stoke_spec_revision(&f->spec, f->revision);
    const struct backend_docker_config cfg = {
        .instance = g_instance, .port_min = 39000, .port_max = 39099};
    assert_int_equal(backend_docker_new(&f->loop, &cfg, &f->b), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    remove_all(f);
    f->b->ops->close(f->b);
    uv_close((uv_handle_t *)&f->guard, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    stoke_spec_done(&f->spec);
    free(f);
    return 0;
}

/* A replica of the fixture's spec, created (and started when `start`). */
static void make_replica(struct fixture *f, struct backend_replica *r, bool start)
{
    struct reply rp;
    memset(r, 0, sizeof(*r));
    snprintf(r->function, sizeof(r->function), "%s", f->spec.name);
    memset(&rp, 0, sizeof(rp));
    g_in_call = true;
    int e = f->b->ops->create(f->b, r, &f->spec, f->revision, on_reply, &rp);
    g_in_call = false;
    assert_int_equal(e, 0);
    /* Docker knows the address before the call returns; the id comes with
     * the callback. */
    assert_true(r->name[0] != '\0');
    assert_true(r->addr[0] != '\0');
    assert_string_equal(r->id, "");
    wait_flag(f, &rp.done);
    assert_int_equal(rp.err, 0);
    assert_true(strlen(r->id) >= 12);
    if (start) {
        RUN(f, &rp, f->b->ops->start(f->b, r, on_reply, &rp));
        assert_int_equal(rp.err, 0);
    }
}

/* True once something accepts a TCP connection on `addr` (127.0.0.1:port),
 * tried until a deadline. */
static bool answers(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    uint64_t port = 0;
    assert_non_null(colon);
    assert_int_equal(stoke_parse_u64(colon + 1, &port), 0);
    assert_true(port > 0 && port <= 65535);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    assert_int_equal(inet_pton(AF_INET, "127.0.0.1", &a.sin_addr), 1);
    assert_int_equal(strncmp(addr, "127.0.0.1:", 10), 0);
    for (int i = 0; i < 1000; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        int r = connect(fd, (struct sockaddr *)&a, sizeof(a));
        close(fd);
        if (r == 0)
            return true;
        const struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* ---- the cases ---- */

static void test_ping_and_capabilities(void **state)
{
    struct fixture *f = *state;
    struct reply rp;
    RUN(f, &rp, f->b->ops->ping(f->b, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_string_equal(rp.message, "");
    /* The engine keeps every idle tier. */
    assert_true(backend_can(f->b, BACKEND_CAN_FREEZE));
    assert_true(backend_can(f->b, BACKEND_CAN_STOP_KEEP));
    assert_true(backend_can(f->b, BACKEND_CAN_PRECREATE));
    /* Its list names every replica of the instance: strays are removed. */
    assert_true(backend_can(f->b, BACKEND_LISTS_OWN));
    assert_non_null(f->b->name);
}

static void test_replica_lifecycle(void **state)
{
    struct fixture *f = *state;
    struct backend_replica r;
    struct reply rp;
    struct listing l;
    make_replica(f, &r, true);
    assert_true(answers(r.addr));

    /* Listed for adoption with its labels and address. */
    list_all(f, &l);
    int i = listed_index(&l, r.id);
    assert_true(i >= 0);
    assert_string_equal(l.items[i].function, "contract");
    assert_string_equal(l.items[i].revision, f->revision);
    assert_string_equal(l.items[i].addr, r.addr);
    assert_int_equal(l.items[i].state, BACKEND_RUNNING);

    /* Freeze, then inspect says so, then thaw: at once or by callback. */
    RUN(f, &rp, f->b->ops->freeze(f->b, &r, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_true(rp.how[0] != '\0');
    if (strcmp(rp.how, "cgroup frozen") == 0) {
        /* The engine calls it running; the backend knows better. */
        RUN(f, &rp, f->b->ops->inspect(f->b, &r, on_reply, &rp));
        assert_int_equal(rp.err, 0);
        assert_int_equal(rp.state, BACKEND_FROZEN);
    }
    const char *how = NULL;
    memset(&rp, 0, sizeof(rp));
    g_in_call = true;
    int e = f->b->ops->thaw(f->b, &r, on_reply, &rp, &how);
    g_in_call = false;
    assert_true(e == 0 || e == 1);
    assert_non_null(how);
    if (e == 0) {
        wait_flag(f, &rp.done);
        assert_int_equal(rp.err, 0);
    } else {
        assert_false(rp.done);
    }
    assert_true(answers(r.addr));

    /* Stopped and kept; stopping again is no error; started again. */
    RUN(f, &rp, f->b->ops->stop(f->b, &r, 1, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    RUN(f, &rp, f->b->ops->stop(f->b, &r, 1, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    list_all(f, &l);
    i = listed_index(&l, r.id);
    assert_true(i >= 0);
    assert_int_equal(l.items[i].state, BACKEND_STOPPED);
    RUN(f, &rp, f->b->ops->start(f->b, &r, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_true(answers(r.addr));

    /* Removed while frozen: thawed first, gone from the list; a second
     * remove says it is gone. */
    RUN(f, &rp, f->b->ops->freeze(f->b, &r, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    RUN(f, &rp, f->b->ops->remove(f->b, &r, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    list_all(f, &l);
    assert_int_equal(listed_index(&l, r.id), -1);
    RUN(f, &rp, f->b->ops->remove(f->b, &r, on_reply, &rp));
    assert_int_equal(rp.err, -ENOENT);
    f->b->ops->forget(f->b, &r);
    assert_null(r.priv);
}

static void test_adopt_takes_the_listed_replica_once(void **state)
{
    struct fixture *f = *state;
    struct backend_replica r, a, b;
    struct listing l;
    struct reply rp;
    make_replica(f, &r, false); /* created only: pre-created */
    list_all(f, &l);
    int i = listed_index(&l, r.id);
    assert_true(i >= 0);
    assert_int_equal(l.items[i].state, BACKEND_CREATED);
    /* As a restarted controller: forget ours, adopt from the list. */
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", r.addr);
    f->b->ops->forget(f->b, &r);
    const struct backend_listed it = {.id = l.items[i].id,
                                      .function = l.items[i].function,
                                      .revision = l.items[i].revision,
                                      .addr = l.items[i].addr,
                                      .state = l.items[i].state};
    memset(&a, 0, sizeof(a));
    snprintf(a.function, sizeof(a.function), "contract");
    assert_int_equal(f->b->ops->adopt(f->b, &a, &it), 0);
    assert_string_equal(a.id, r.id);
    assert_string_equal(a.addr, addr);
    assert_string_equal(a.name, r.name);
    /* Its address is taken now: a second adoption is refused. */
    memset(&b, 0, sizeof(b));
    snprintf(b.function, sizeof(b.function), "contract");
    assert_true(f->b->ops->adopt(f->b, &b, &it) < 0);
    f->b->ops->forget(f->b, &b);
    /* And the adopted one works: started, it answers on that address. */
    RUN(f, &rp, f->b->ops->start(f->b, &a, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_true(answers(a.addr));
    f->b->ops->forget(f->b, &a);
}

struct watched {
    char id[65];
    bool exited, gone, ended;
    int exit_code;
};

static void on_watch_event(const struct backend_event *ev, void *data)
{
    struct watched *w = data;
    assert_false(g_in_call);
    if (strcmp(ev->id, w->id) != 0)
        return;
    wake();
    if (ev->kind == BACKEND_EV_EXITED) {
        w->exited = true;
        w->exit_code = ev->exit_code;
    } else if (ev->kind == BACKEND_EV_GONE) {
        w->gone = true;
    }
}

static void on_watch_end(const struct backend_result *res, void *data)
{
    struct watched *w = data;
    assert_int_equal(res->err, -ECANCELED);
    w->ended = true;
    wake();
}

static void test_watch_sees_exit_and_removal(void **state)
{
    struct fixture *f = *state;
    struct backend_replica r;
    struct reply rp;
    struct watched w = {0};
    g_in_call = true;
    assert_int_equal(f->b->ops->watch(f->b, on_watch_event, on_watch_end, &w), 0);
    g_in_call = false;
    make_replica(f, &r, true);
    snprintf(w.id, sizeof(w.id), "%s", r.id);
    RUN(f, &rp, f->b->ops->stop(f->b, &r, 5, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    wait_flag(f, &w.exited);
    assert_true(w.exit_code >= 0);
    RUN(f, &rp, f->b->ops->remove(f->b, &r, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    wait_flag(f, &w.gone);
    f->b->ops->forget(f->b, &r);
    /* Closing the backend (teardown) ends the watch with -ECANCELED. */
    remove_all(f);
    f->b->ops->close(f->b);
    wait_flag(f, &w.ended);
    /* teardown closes it: give it a fresh one */
    const struct backend_docker_config cfg = {
        .instance = g_instance, .port_min = 39000, .port_max = 39099};
    assert_int_equal(backend_docker_new(&f->loop, &cfg, &f->b), 0);
}

struct logs {
    bool ended;
    int err;
    char text[4096];
    size_t len;
};

static void on_log_data(int stream, const char *bytes, size_t len, void *data)
{
    struct logs *lg = data;
    assert_true(stream == 1 || stream == 2);
    size_t room = sizeof(lg->text) - 1 - lg->len;
    if (len > room)
        len = room;
    memcpy(lg->text + lg->len, bytes, len);
    lg->len += len;
    lg->text[lg->len] = '\0';
}

static void on_log_end(const struct backend_result *res, void *data)
{
    struct logs *lg = data;
    lg->ended = true;
    lg->err = res->err;
    wake();
}

static void test_logs_and_usage(void **state)
{
    struct fixture *f = *state;
    struct backend_replica r;
    make_replica(f, &r, true);
    assert_true(answers(r.addr)); /* it said "listening" before it listened */
    struct logs lg = {0};
    struct backend_logs *h = NULL;
    const struct backend_logs_opts opts = {.tail = -1};
    g_in_call = true;
    assert_int_equal(f->b->ops->logs(f->b, r.id, &opts, on_log_data, on_log_end, &lg, &h), 0);
    g_in_call = false;
    assert_non_null(h);
    wait_flag(f, &lg.ended);
    assert_int_equal(lg.err, 0);
    assert_non_null(strstr(lg.text, "listening"));

    /* Usage: nothing while the reconciler says no process; a CPU counter
     * and memory in use while it runs (with cgroups). */
    struct backend_usage u;
    assert_true(f->b->ops->usage(f->b, &r, BACKEND_RUN_NO, &u) < 0);
    if (backend_can(f->b, BACKEND_HAS_CGROUPS)) {
        memset(&u, 0, sizeof(u));
        assert_int_equal(f->b->ops->usage(f->b, &r, BACKEND_RUN_SURELY, &u), 0);
        assert_true(u.cpu_restarted);
        assert_true(u.memory_bytes > 0);
        assert_int_equal(u.limit_bytes, 64ull * 1024 * 1024);
        assert_int_equal(f->b->ops->usage(f->b, &r, BACKEND_RUN_SURELY, &u), 0);
        assert_false(u.cpu_restarted);
    } else {
        assert_int_equal(f->b->ops->usage(f->b, &r, BACKEND_RUN_SURELY, &u), -ENOTSUP);
    }
    f->b->ops->forget(f->b, &r);
}

int main(void)
{
    stoke_log_init("test_backend", STOKE_LOG_WARN);
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    snprintf(g_instance, sizeof(g_instance), "test-%08x", seed * 2654435761u);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ping_and_capabilities, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replica_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adopt_takes_the_listed_replica_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_sees_exit_and_removal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logs_and_usage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
