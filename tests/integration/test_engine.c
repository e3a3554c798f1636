/* Integration tests of stoke/engine.h (and stoke/curluv.h under it) against
 * the real Docker engine on $DOCKER_HOST (default /var/run/docker.sock).
 *
 * Containers carry io.stoke.test=<random per run>; every test's teardown and
 * the group teardown remove all of them, so a failed test leaves nothing.
 * The image is $STOKE_TEST_IMAGE, else stoke-engine-test:1, built here with
 * `docker import` of a static binary that waits for SIGTERM (no registry).
 *
 * A few tests need an engine misbehaving in ways the real one cannot be made
 * to (hanging, oversized or invalid answers): they use a small stand-in HTTP
 * server on a unix socket, on the same loop (contract tests). */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "stoke/engine.h"
#include "stoke/freezer.h"
#include "stoke/util.h"

#define TEST_IMAGE_BUILT "stoke-engine-test:1"
#define TEST_LABEL "io.stoke.test"
/* Upper bound for one wait; only a bug gets anywhere near it. */
#define WAIT_MS 60000

static char g_run[17];      /* hex label value of this run */
static const char *g_image; /* image the containers run */
static bool g_in_call;      /* set around every engine call */
/* The loop a wait runs: callbacks stop it, because one may come from the
 * loop's timer phase (a reused connection can answer within one
 * curl_multi_socket_action), and UV_RUN_ONCE would then block in its poll
 * phase until some other event. */
static uv_loop_t *g_wait_loop;

static void wake(void)
{
    if (g_wait_loop)
        uv_stop(g_wait_loop);
}

/* ---- loop fixture ---- */

struct fixture {
    uv_loop_t loop;
    struct stoke_engine *e; /* NULL once a test closed it */
    uv_timer_t guard;
    bool timed_out;
};

/* What a callback saw, copied out of the borrowed result. */
struct reply {
    bool done;
    int calls;
    int err;
    long status;
    char *message;
    char *id;
    json_object *json; /* owned reference */
};

static void reply_done(struct reply *rp)
{
    free(rp->message);
    free(rp->id);
    json_object_put(rp->json);
    memset(rp, 0, sizeof(*rp));
}

static void on_reply(const struct stoke_engine_result *res, void *data)
{
    struct reply *rp = data;

    /* Never from inside the initiating call. */
    assert_false(g_in_call);
    rp->calls++;
    rp->done = true;
    wake();
    rp->err = res->err;
    rp->status = res->http_status;
    assert_non_null(res->message);
    rp->message = strdup(res->message);
    rp->id = res->id ? strdup(res->id) : NULL;
    rp->json = res->json ? json_object_get(res->json) : NULL;
    if (res->err == 0)
        assert_string_equal(res->message, "");
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

/* Runs the loop until done(arg), or fails the test after WAIT_MS. */
static void wait_until(struct fixture *f, bool (*done)(void *arg), void *arg)
{
    f->timed_out = false;
    g_wait_loop = &f->loop;
    assert_int_equal(uv_timer_start(&f->guard, on_guard, WAIT_MS, 0), 0);
    while (!done(arg) && !f->timed_out)
        (void)uv_run(&f->loop, UV_RUN_ONCE);
    (void)uv_timer_stop(&f->guard);
    g_wait_loop = NULL;
    assert_false(f->timed_out);
}

/* Starts one engine call with on_reply into `rp` and waits for it. */
#define RUN(f, rp, call)                                                                           \
    do {                                                                                           \
        reply_done(rp);                                                                            \
        g_in_call = true;                                                                          \
        int run_r_ = (call);                                                                       \
        g_in_call = false;                                                                         \
        assert_int_equal(run_r_, 0);                                                               \
        wait_flag((f), &(rp)->done);                                                               \
        assert_int_equal((rp)->calls, 1);                                                          \
    } while (0)

static void loop_open(struct fixture *f)
{
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
    f->guard.data = f;
}

/* Closes the guard and checks nothing else is left open on the loop. */
static void loop_finish(struct fixture *f)
{
    uv_close((uv_handle_t *)&f->guard, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void on_flag(void *data)
{
    *(bool *)data = true;
    wake();
}

static void engine_close_wait(struct fixture *f)
{
    bool closed = false;
    if (!f->e)
        return;
    stoke_engine_close(f->e, on_flag, &closed);
    f->e = NULL;
    assert_false(closed); /* from the loop, not from inside close */
    wait_flag(f, &closed);
}

/* Removes every container of this run, by label; best effort. */
static void remove_run_containers(struct fixture *f)
{
    struct reply rp = {0};
    struct reply rm = {0};
    struct stoke_container_summary s;

    RUN(f, &rp, stoke_engine_list(f->e, TEST_LABEL, g_run, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    for (size_t i = 0; stoke_engine_list_get(rp.json, i, &s) == 0; i++) {
        RUN(f, &rm, stoke_engine_remove(f->e, s.id, true, on_reply, &rm));
        if (rm.err != 0 && rm.err != -ENOENT)
            fprintf(stderr, "cleanup: remove %s: %s\n", s.id, rm.message);
    }
    reply_done(&rm);
    reply_done(&rp);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    loop_open(f);
    assert_int_equal(stoke_engine_new(&f->loop, NULL, &f->e), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->e)
        remove_run_containers(f);
    engine_close_wait(f);
    loop_finish(f);
    free(f);
    return 0;
}

/* ---- group setup: label and image ---- */

static int run_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run_cmd(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(cmd))
        return -1;
    return system(cmd);
}

/* Builds TEST_IMAGE_BUILT: a static binary as PID 1 that exits on SIGTERM. */
static int build_image(void)
{
    static const char src[] = "#include <signal.h>\n#include <unistd.h>\n"
                              "static void on_term(int s) { (void)s; _exit(0); }\n"
                              "int main(void) { signal(SIGTERM, on_term); for (;;) pause(); }\n";
    char dir[] = "/tmp/stoke-engine-test-XXXXXX";
    char path[64];
    FILE *fp;
    int r;

    if (!mkdtemp(dir))
        return -1;
    (void)snprintf(path, sizeof(path), "%s/pause.c", dir);
    fp = fopen(path, "w");
    if (!fp)
        return -1;
    (void)fputs(src, fp);
    (void)fclose(fp);
    r = run_cmd("gcc -static -O2 -o %s/pause %s/pause.c && tar -C %s -cf %s/pause.tar pause && "
                "docker import --change 'CMD [\"/pause\"]' %s/pause.tar " TEST_IMAGE_BUILT
                " >/dev/null",
                dir, dir, dir, dir, dir);
    (void)run_cmd("rm -rf %s", dir);
    return r == 0 ? 0 : -1;
}

static int group_setup(void **state)
{
    uint8_t raw[8];
    FILE *fp = fopen("/dev/urandom", "rb");
    struct fixture f = {0};
    struct reply rp = {0};

    (void)state;
    /* The stand-in server writes to sockets curl may have closed. */
    (void)signal(SIGPIPE, SIG_IGN);
    if (!fp || fread(raw, 1, sizeof(raw), fp) != sizeof(raw))
        return -1;
    (void)fclose(fp);
    for (size_t i = 0; i < sizeof(raw); i++)
        (void)snprintf(g_run + 2 * i, 3, "%02x", raw[i]);

    g_image = getenv("STOKE_TEST_IMAGE");
    if (!g_image || !*g_image)
        g_image = TEST_IMAGE_BUILT;

    loop_open(&f);
    assert_int_equal(stoke_engine_new(&f.loop, NULL, &f.e), 0);
    RUN(&f, &rp, stoke_engine_ping(f.e, on_reply, &rp));
    if (rp.err != 0) {
        fprintf(stderr, "engine not answering: %s\n", rp.message);
        return -1;
    }
    RUN(&f, &rp, stoke_engine_image_inspect(f.e, g_image, on_reply, &rp));
    if (rp.err == -ENOENT && strcmp(g_image, TEST_IMAGE_BUILT) == 0 && build_image() < 0) {
        fprintf(stderr, "cannot build %s\n", TEST_IMAGE_BUILT);
        return -1;
    }
    reply_done(&rp);
    engine_close_wait(&f);
    loop_finish(&f);
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture f = {0};
    (void)state;
    loop_open(&f);
    assert_int_equal(stoke_engine_new(&f.loop, NULL, &f.e), 0);
    remove_run_containers(&f);
    engine_close_wait(&f);
    loop_finish(&f);
    return 0;
}

/* ---- helpers on containers ---- */

/* Creates a container of this run; returns its owned id. */
static char *create_one(struct fixture *f, const char *name, const char *function)
{
    struct stoke_label labels[] = {
        {"io.stoke.managed", "true"},
        {"io.stoke.function", function},
        {TEST_LABEL, g_run},
    };
    struct stoke_container_config cfg = {
        .name = name,
        .image = g_image,
        .labels = labels,
        .labels_len = 3,
        .network_mode = "host",
    };
    struct reply rp = {0};
    char *id;

    RUN(f, &rp, stoke_engine_create(f->e, &cfg, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_int_equal(rp.status, 201);
    assert_non_null(rp.id);
    assert_int_equal(strlen(rp.id), 64);
    id = rp.id;
    rp.id = NULL;
    reply_done(&rp);
    return id;
}

static void inspect_state(struct fixture *f, const char *id, struct stoke_container_state *st)
{
    struct reply rp = {0};
    RUN(f, &rp, stoke_engine_inspect(f->e, id, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_int_equal(stoke_engine_state_parse(rp.json, st), 0);
    assert_string_equal(st->id, id);
    reply_done(&rp);
}

/* Runs one container call and returns its err. */
typedef int (*id_op)(struct stoke_engine *, const char *, stoke_engine_cb, void *);

static int op(struct fixture *f, id_op fn, const char *id)
{
    struct reply rp = {0};
    RUN(f, &rp, fn(f->e, id, on_reply, &rp));
    int err = rp.err;
    reply_done(&rp);
    return err;
}

static int stop_op(struct fixture *f, const char *id)
{
    struct reply rp = {0};
    RUN(f, &rp, stoke_engine_stop(f->e, id, 5, on_reply, &rp));
    int err = rp.err;
    reply_done(&rp);
    return err;
}

static int remove_op(struct fixture *f, const char *id, bool force, struct reply *rp)
{
    RUN(f, rp, stoke_engine_remove(f->e, id, force, on_reply, rp));
    return rp->err;
}

static json_object *path_get(json_object *o, const char *a, const char *b)
{
    json_object *x = NULL;
    json_object *y = NULL;
    assert_true(json_object_object_get_ex(o, a, &x));
    if (!b)
        return x;
    assert_true(json_object_object_get_ex(x, b, &y));
    return y;
}

static void assert_str_array1(json_object *a, const char *want)
{
    assert_true(json_object_is_type(a, json_type_array));
    assert_int_equal(json_object_array_length(a), 1);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(a, 0)), want);
}

static bool array_has(json_object *a, const char *want)
{
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        if (strcmp(json_object_get_string(json_object_array_get_idx(a, i)), want) == 0)
            return true;
    }
    return false;
}

/* ---- tests against the real engine ---- */

static void test_ping(void **state)
{
    struct fixture *f = *state;
    struct reply rp = {0};

    RUN(f, &rp, stoke_engine_ping(f->e, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_int_equal(rp.status, 200);
    assert_null(rp.json); /* "OK" is text */
    assert_null(rp.id);
    reply_done(&rp);
}

static void test_image_inspect_present(void **state)
{
    struct fixture *f = *state;
    struct reply rp = {0};
    json_object *id;

    RUN(f, &rp, stoke_engine_image_inspect(f->e, g_image, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_non_null(rp.json);
    id = path_get(rp.json, "Id", NULL);
    assert_int_equal(strncmp(json_object_get_string(id), "sha256:", 7), 0);
    reply_done(&rp);
}

static void test_image_inspect_missing(void **state)
{
    struct fixture *f = *state;
    struct reply rp = {0};
    /* ':' and '/' are escaped in the path and still name the image. */
    const char *names[] = {"stoke-engine-missing:0", "example.invalid/stoke/missing:1"};

    for (size_t i = 0; i < 2; i++) {
        RUN(f, &rp, stoke_engine_image_inspect(f->e, names[i], on_reply, &rp));
        assert_int_equal(rp.err, -ENOENT);
        assert_int_equal(rp.status, 404);
        assert_non_null(strstr(rp.message, "No such image"));
        assert_non_null(strstr(rp.message, names[i]));
    }
    reply_done(&rp);
}

static void test_create_config(void **state)
{
    struct fixture *f = *state;
    char name[64];
    char function[64];
    const char *env[] = {"PORT=18080", "GREETING=hi there&x=1"};
    struct stoke_label labels[] = {
        {"io.stoke.managed", "true"},
        {"io.stoke.function", function},
        {TEST_LABEL, g_run},
    };
    struct stoke_container_config cfg = {
        .name = name,
        .image = g_image,
        .env = env,
        .env_len = 2,
        .labels = labels,
        .labels_len = 3,
        .network_mode = "host",
        .memory_bytes = 64u << 20,
        .cpu_millis = 500,
        .pids = 64,
        .read_only_rootfs = true,
    };
    struct stoke_container_state st;
    struct reply rp = {0};
    json_object *hc;
    json_object *lab;
    char *id;

    (void)snprintf(name, sizeof(name), "stoke-enginetest-%s-cfg", g_run);
    (void)snprintf(function, sizeof(function), "cfg-%s", g_run);
    RUN(f, &rp, stoke_engine_create(f->e, &cfg, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_non_null(rp.id);
    id = strdup(rp.id);

    RUN(f, &rp, stoke_engine_inspect(f->e, id, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    hc = path_get(rp.json, "HostConfig", NULL);
    assert_str_array1(path_get(hc, "CapDrop", NULL), "ALL");
    assert_str_array1(path_get(hc, "SecurityOpt", NULL), "no-new-privileges");
    assert_int_equal(json_object_get_int64(path_get(hc, "Memory", NULL)), 64 << 20);
    assert_int_equal(json_object_get_int64(path_get(hc, "MemorySwap", NULL)), 64 << 20);
    assert_int_equal(json_object_get_int64(path_get(hc, "NanoCpus", NULL)), 500000000);
    assert_int_equal(json_object_get_int64(path_get(hc, "PidsLimit", NULL)), 64);
    assert_string_equal(json_object_get_string(path_get(hc, "NetworkMode", NULL)), "host");
    assert_true(json_object_get_boolean(path_get(hc, "ReadonlyRootfs", NULL)));
    assert_false(json_object_get_boolean(path_get(hc, "AutoRemove", NULL)));
    assert_string_equal(json_object_get_string(path_get(hc, "RestartPolicy", "Name")), "no");
    assert_null(json_object_get_array(path_get(hc, "Binds", NULL)));
    lab = path_get(rp.json, "Config", "Labels");
    assert_string_equal(json_object_get_string(path_get(lab, "io.stoke.managed", NULL)), "true");
    assert_string_equal(json_object_get_string(path_get(lab, "io.stoke.function", NULL)), function);
    assert_string_equal(json_object_get_string(path_get(lab, TEST_LABEL, NULL)), g_run);
    assert_true(array_has(path_get(rp.json, "Config", "Env"), "PORT=18080"));
    assert_true(array_has(path_get(rp.json, "Config", "Env"), "GREETING=hi there&x=1"));
    assert_string_equal(json_object_get_string(path_get(rp.json, "Name", NULL)) + 1, name);
    assert_int_equal(stoke_engine_state_parse(rp.json, &st), 0);
    assert_string_equal(st.status, "created");
    assert_false(st.running);
    assert_int_equal(st.pid, 0);

    /* The name is taken now. */
    RUN(f, &rp, stoke_engine_create(f->e, &cfg, on_reply, &rp));
    assert_int_equal(rp.err, -EEXIST);
    assert_int_equal(rp.status, 409);
    assert_null(rp.id);

    /* A name the engine refuses. */
    cfg.name = "bad/name";
    RUN(f, &rp, stoke_engine_create(f->e, &cfg, on_reply, &rp));
    assert_int_equal(rp.err, -EINVAL);
    assert_non_null(strstr(rp.message, "Invalid container name"));

    assert_int_equal(remove_op(f, id, false, &rp), 0);
    reply_done(&rp);
    free(id);
}

/* A port nothing holds now on 127.0.0.1 (the kernel's pick). */
static uint16_t free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* The bridge: the container port is exposed and published on 127.0.0.1
 * only, at the host port asked for, as the engine reports it once started. */
static void test_create_bridge(void **state)
{
    struct fixture *f = *state;
    char name[64], function[64], hport[8];
    struct stoke_label labels[] = {
        {"io.stoke.managed", "true"},
        {"io.stoke.function", function},
        {TEST_LABEL, g_run},
    };
    struct stoke_container_config cfg = {
        .name = name,
        .image = g_image,
        .labels = labels,
        .labels_len = 3,
        .network_mode = NULL, /* the default: bridge */
        .container_port = 8080,
        .host_port = free_port(),
    };
    struct reply rp = {0};
    json_object *b;
    char *id;

    (void)snprintf(name, sizeof(name), "stoke-enginetest-%s-br", g_run);
    (void)snprintf(function, sizeof(function), "br-%s", g_run);
    (void)snprintf(hport, sizeof(hport), "%u", (unsigned)cfg.host_port);
    RUN(f, &rp, stoke_engine_create(f->e, &cfg, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    id = strdup(rp.id);
    assert_non_null(id);
    RUN(f, &rp, stoke_engine_start(f->e, id, on_reply, &rp));
    assert_int_equal(rp.err, 0);

    RUN(f, &rp, stoke_engine_inspect(f->e, id, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_string_equal(json_object_get_string(path_get(rp.json, "HostConfig", "NetworkMode")),
                        "bridge");
    assert_non_null(path_get(path_get(rp.json, "Config", "ExposedPorts"), "8080/tcp", NULL));
    /* Asked for, and in effect. */
    json_object *where[] = {path_get(rp.json, "HostConfig", "PortBindings"),
                            path_get(rp.json, "NetworkSettings", "Ports")};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(json_object_object_length(where[i]), 1);
        json_object *list = path_get(where[i], "8080/tcp", NULL);
        assert_int_equal(json_object_array_length(list), 1);
        b = json_object_array_get_idx(list, 0);
        assert_string_equal(json_object_get_string(path_get(b, "HostIp", NULL)), "127.0.0.1");
        assert_string_equal(json_object_get_string(path_get(b, "HostPort", NULL)), hport);
    }
    assert_int_equal(remove_op(f, id, true, &rp), 0);
    reply_done(&rp);
    free(id);
}

static void test_create_refused_locally(void **state)
{
    struct fixture *f = *state;
    const char *bad_env[] = {"NOEQUALS"};
    struct stoke_label bad_label[] = {{"k", NULL}};
    struct stoke_container_config cfg = {.image = NULL};
    struct reply rp = {0};

    g_in_call = true;
    assert_int_equal(stoke_engine_create(f->e, &cfg, on_reply, &rp), -EINVAL);
    cfg.image = g_image;
    cfg.env = bad_env;
    cfg.env_len = 1;
    assert_int_equal(stoke_engine_create(f->e, &cfg, on_reply, &rp), -EINVAL);
    cfg.env_len = 0;
    cfg.labels = bad_label;
    cfg.labels_len = 1;
    assert_int_equal(stoke_engine_create(f->e, &cfg, on_reply, &rp), -EINVAL);
    cfg.labels_len = 0;
    /* The bridge needs both ports; a network mode is one of the two. */
    cfg.network_mode = "bridge";
    cfg.container_port = 8080;
    assert_int_equal(stoke_engine_create(f->e, &cfg, on_reply, &rp), -EINVAL);
    cfg.network_mode = NULL;
    cfg.host_port = 30000;
    cfg.container_port = 0;
    assert_int_equal(stoke_engine_create(f->e, &cfg, on_reply, &rp), -EINVAL);
    cfg.network_mode = "none";
    cfg.container_port = 8080;
    assert_int_equal(stoke_engine_create(f->e, &cfg, on_reply, &rp), -EINVAL);
    assert_int_equal(stoke_engine_list(f->e, "a=b", NULL, on_reply, &rp), -EINVAL);
    assert_int_equal(stoke_engine_image_inspect(f->e, "", on_reply, &rp), -EINVAL);
    g_in_call = false;
    assert_false(rp.done);
}

static void test_lifecycle(void **state)
{
    struct fixture *f = *state;
    struct stoke_container_state st;
    struct reply rp = {0};
    char *id = create_one(f, NULL, "lifecycle");

    assert_int_equal(op(f, stoke_engine_start, id), 0);
    inspect_state(f, id, &st);
    assert_string_equal(st.status, "running");
    assert_true(st.running);
    assert_false(st.paused);
    assert_true(st.pid > 0);
    RUN(f, &rp, stoke_engine_start(f->e, id, on_reply, &rp));
    assert_int_equal(rp.err, -EALREADY);
    assert_int_equal(rp.status, 304);
    assert_string_equal(rp.message, "engine answered HTTP 304");

    assert_int_equal(op(f, stoke_engine_pause, id), 0);
    inspect_state(f, id, &st);
    assert_string_equal(st.status, "paused");
    assert_true(st.paused);
    assert_int_equal(op(f, stoke_engine_pause, id), -EEXIST);

    assert_int_equal(op(f, stoke_engine_unpause, id), 0);
    inspect_state(f, id, &st);
    assert_string_equal(st.status, "running");
    assert_false(st.paused);
    assert_true(st.pid > 0);
    /* Docker 20.10 answers 500 here, not 409. */
    assert_int_equal(op(f, stoke_engine_unpause, id), -EIO);

    assert_int_equal(stop_op(f, id), 0);
    inspect_state(f, id, &st);
    assert_string_equal(st.status, "exited");
    assert_false(st.running);
    assert_int_equal(st.pid, 0);
    if (strcmp(g_image, TEST_IMAGE_BUILT) == 0)
        assert_int_equal(st.exit_code, 0); /* SIGTERM handled, not killed */
    assert_false(st.oom_killed);
    assert_int_equal(stop_op(f, id), -EALREADY);
    assert_int_equal(op(f, stoke_engine_pause, id), -EEXIST);

    assert_int_equal(remove_op(f, id, false, &rp), 0);
    RUN(f, &rp, stoke_engine_inspect(f->e, id, on_reply, &rp));
    assert_int_equal(rp.err, -ENOENT);
    assert_non_null(strstr(rp.message, "No such container"));
    reply_done(&rp);
    free(id);
}

/* What the controller relies on for idle replicas: a paused container can be
 * stopped directly, and removed with force but not without. */
static void test_paused_stop_remove(void **state)
{
    struct fixture *f = *state;
    struct stoke_container_state st;
    struct reply rp = {0};
    char *a = create_one(f, NULL, "paused-stop");
    char *b = create_one(f, NULL, "paused-remove");

    assert_int_equal(op(f, stoke_engine_start, a), 0);
    assert_int_equal(op(f, stoke_engine_pause, a), 0);
    assert_int_equal(stop_op(f, a), 0);
    inspect_state(f, a, &st);
    assert_string_equal(st.status, "exited");
    assert_false(st.paused);

    assert_int_equal(op(f, stoke_engine_start, b), 0);
    assert_int_equal(remove_op(f, b, false, &rp), -EEXIST); /* running */
    assert_int_equal(op(f, stoke_engine_pause, b), 0);
    assert_int_equal(remove_op(f, b, false, &rp), -EEXIST);
    assert_non_null(strstr(rp.message, "paused"));
    assert_int_equal(remove_op(f, b, true, &rp), 0);
    assert_int_equal(op(f, stoke_engine_inspect, b), -ENOENT);
    assert_int_equal(remove_op(f, a, false, &rp), 0);
    reply_done(&rp);
    free(a);
    free(b);
}

/* What the event stream delivered, for test_events. */
struct events_seen {
    char actions[32][32];
    int exit_codes[32];
    size_t n;
    bool ended;
    int end_err;
    bool want_more;
};

static void on_test_event(const struct stoke_container_event *ev, void *data)
{
    struct events_seen *es = data;
    assert_false(g_in_call);
    assert_int_equal(strlen(ev->id), 64);
    assert_non_null(ev->attributes);
    if (es->n < 32) {
        snprintf(es->actions[es->n], sizeof(es->actions[0]), "%s", ev->action);
        es->exit_codes[es->n] = ev->exit_code;
        es->n++;
    }
    wake();
}

static void on_test_events_end(const struct stoke_engine_result *res, void *data)
{
    struct events_seen *es = data;
    es->ended = true;
    es->end_err = res->err;
    wake();
}

/* Waits until the stream delivered `action`; returns its index. */
static size_t wait_event(struct fixture *f, struct events_seen *es, const char *action)
{
    for (;;) {
        for (size_t i = 0; i < es->n; i++)
            if (strcmp(es->actions[i], action) == 0)
                return i;
        assert_false(es->ended);
        f->timed_out = false;
        g_wait_loop = &f->loop;
        assert_int_equal(uv_timer_start(&f->guard, on_guard, WAIT_MS, 0), 0);
        size_t before = es->n;
        while (es->n == before && !es->ended && !f->timed_out)
            (void)uv_run(&f->loop, UV_RUN_ONCE);
        (void)uv_timer_stop(&f->guard);
        g_wait_loop = NULL;
        assert_false(f->timed_out);
    }
}

/* The event stream tells of a start, an exit with its code and a removal;
 * closing the engine ends it with -ECANCELED from within the close. */
static void test_events(void **state)
{
    struct fixture *f = *state;
    struct events_seen es = {0};
    struct reply rp = {0};

    g_in_call = true;
    int r = stoke_engine_events(f->e, TEST_LABEL, g_run, on_test_event, on_test_events_end, &es);
    g_in_call = false;
    assert_int_equal(r, 0);
    /* The stream has to be open before the container starts, and nothing
     * says when it is but an event: create probe containers (never
     * started) until one's "create" arrives, each waited for 500 ms, at
     * most WAIT_MS in all; then count from there. */
    char *probes[WAIT_MS / 500];
    size_t n_probes = 0;
    while (es.n == 0) {
        assert_true(n_probes < STOKE_ARRAY_SIZE(probes));
        probes[n_probes++] = create_one(f, NULL, "events");
        f->timed_out = false;
        g_wait_loop = &f->loop;
        assert_int_equal(uv_timer_start(&f->guard, on_guard, 500, 0), 0);
        while (es.n == 0 && !es.ended && !f->timed_out)
            (void)uv_run(&f->loop, UV_RUN_ONCE);
        (void)uv_timer_stop(&f->guard);
        g_wait_loop = NULL;
        assert_false(es.ended);
    }
    assert_string_equal(es.actions[0], "create");
    /* From here on; the probes, never started, are removed at the end (a
     * probe's late "create" is no event the test waits for). */
    es.n = 0;
    char *id = create_one(f, NULL, "events");
    assert_int_equal(op(f, stoke_engine_start, id), 0);
    wait_event(f, &es, "start");
    assert_int_equal(stop_op(f, id), 0);
    size_t die = wait_event(f, &es, "die");
    if (strcmp(g_image, TEST_IMAGE_BUILT) == 0)
        assert_int_equal(es.exit_codes[die], 0);
    assert_int_equal(remove_op(f, id, false, &rp), 0);
    wait_event(f, &es, "destroy");
    assert_false(es.ended);
    for (size_t i = 0; i < n_probes; i++) {
        assert_int_equal(remove_op(f, probes[i], false, &rp), 0);
        free(probes[i]);
    }

    stoke_engine_close(f->e, NULL, NULL);
    f->e = NULL;
    assert_true(es.ended);
    assert_int_equal(es.end_err, -ECANCELED);
    reply_done(&rp);
    free(id);
}

static void test_event_parse_hostile(void **state)
{
    static const struct {
        const char *json;
        int err;
        const char *action;
        int exit_code;
    } cases[] = {
        {"{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{\"ID\":\"abc\","
         "\"Attributes\":{\"exitCode\":\"137\",\"name\":\"x\"}}}",
         0, "die", 137},
        {"{\"Type\":\"container\",\"Action\":\"oom\",\"Actor\":{\"ID\":\"abc\"}}", 0, "oom", -1},
        {"{\"Type\":\"container\",\"Action\":\"exec_start: /bin/sh -c a very long command "
         "line\",\"Actor\":{\"ID\":\"abc\",\"Attributes\":{}}}",
         0, "exec_start: /bin/sh -c a very l", -1},
        {"{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{\"ID\":\"abc\","
         "\"Attributes\":{\"exitCode\":\"-1\"}}}",
         0, "die", -1},
        {"{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{\"ID\":\"abc\","
         "\"Attributes\":{\"exitCode\":\"99999999999\"}}}",
         0, "die", -1},
        {"{\"Type\":\"network\",\"Action\":\"connect\",\"Actor\":{\"ID\":\"n\"}}", -ENOENT, NULL,
         0},
        {"{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{\"ID\":\"../x\"}}", -EINVAL, NULL,
         0},
        {"{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{\"ID\":\"a\","
         "\"Attributes\":[]}}",
         -EINVAL, NULL, 0},
        {"{\"Type\":\"container\",\"Action\":7,\"Actor\":{\"ID\":\"a\"}}", -EINVAL, NULL, 0},
        {"{\"Type\":\"container\",\"Action\":\"die\"}", -EINVAL, NULL, 0},
        {"{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":\"x\"}", -EINVAL, NULL, 0},
        {"[]", -EINVAL, NULL, 0},
        {"null", -EINVAL, NULL, 0},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_object *o = json_tokener_parse(cases[i].json);
        struct stoke_container_event ev;
        int r = stoke_engine_event_parse(o, &ev);
        if (r != cases[i].err)
            print_error("case %zu: %d\n", i, r);
        assert_int_equal(r, cases[i].err);
        if (r == 0) {
            assert_string_equal(ev.action, cases[i].action);
            assert_int_equal(ev.exit_code, cases[i].exit_code);
            assert_string_equal(ev.id, i == 0 ? "abc" : ev.id);
        }
        json_object_put(o);
    }
}

/* The warm tier's design rests on these: stoke freezes and thaws a
 * container's cgroup itself and the engine keeps calling it running; and
 * a container the engine paused but that was thawed behind its back can no
 * longer be unpaused by the engine (Docker 20.10, runc 1.1, cgroup v1),
 * which keeps calling it paused, so the two ways must never be mixed. */
static void test_freezer_direct(void **state)
{
    struct fixture *f = *state;
    struct stoke_container_state st;
    struct stoke_freezer fz;
    char *id = create_one(f, NULL, "freezer");

    /* No skip: the warm tier needs the freezer, so a host without one
     * fails here rather than passing without the check. */
    assert_int_equal(stoke_freezer_init(), 0);
    assert_int_equal(op(f, stoke_engine_start, id), 0);
    inspect_state(f, id, &st);
    assert_int_equal(stoke_freezer_find(st.pid, &fz), 0);
    assert_int_equal(stoke_freezer_get(&fz), 0);

    assert_int_equal(stoke_freezer_set(&fz, true), 0);
    assert_int_equal(stoke_freezer_get(&fz), 1);
    inspect_state(f, id, &st);
    assert_string_equal(st.status, "running");
    assert_false(st.paused);
    assert_int_equal(stoke_freezer_set(&fz, false), 0);
    assert_int_equal(stoke_freezer_get(&fz), 0);

    /* Frozen by stoke, then stopped by the engine: runc thaws on SIGKILL,
     * so nothing hangs even should stoke not thaw first (it does). */
    struct reply rp = {0};
    assert_int_equal(stoke_freezer_set(&fz, true), 0);
    RUN(f, &rp, stoke_engine_stop(f->e, id, 1, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    inspect_state(f, id, &st);
    assert_string_equal(st.status, "exited");
    /* The cgroup went with the container's processes. */
    assert_true(stoke_freezer_set(&fz, false) < 0);

    /* Mixed: the engine pauses, stoke thaws, the engine cannot unpause
     * and still calls it paused. */
    assert_int_equal(op(f, stoke_engine_start, id), 0);
    inspect_state(f, id, &st);
    assert_int_equal(stoke_freezer_find(st.pid, &fz), 0);
    assert_int_equal(op(f, stoke_engine_pause, id), 0);
    assert_int_equal(stoke_freezer_get(&fz), 1);
    assert_int_equal(stoke_freezer_set(&fz, false), 0);
    RUN(f, &rp, stoke_engine_unpause(f->e, id, on_reply, &rp));
    if (rp.err == 0) {
        print_message("note: this engine unpauses a container thawed behind its back\n");
    } else {
        assert_non_null(strstr(rp.message, "not paused"));
        inspect_state(f, id, &st);
        assert_true(st.paused);
    }
    reply_done(&rp);
    free(id);
}

static void test_list_by_label(void **state)
{
    struct fixture *f = *state;
    struct stoke_container_summary s;
    struct reply rp = {0};
    char *ids[3];
    bool seen[3] = {false, false, false};
    char fn[3][16];
    size_t n = 0;

    for (size_t i = 0; i < 3; i++) {
        (void)snprintf(fn[i], sizeof(fn[i]), "list-%zu", i);
        ids[i] = create_one(f, NULL, fn[i]);
    }
    assert_int_equal(op(f, stoke_engine_start, ids[1]), 0);

    RUN(f, &rp, stoke_engine_list(f->e, TEST_LABEL, g_run, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    for (n = 0; stoke_engine_list_get(rp.json, n, &s) == 0; n++) {
        size_t k = 0;
        while (k < 3 && strcmp(ids[k], s.id) != 0)
            k++;
        assert_true(k < 3);
        assert_false(seen[k]);
        seen[k] = true;
        assert_string_equal(stoke_engine_label_get(&s, "io.stoke.function"), fn[k]);
        assert_string_equal(stoke_engine_label_get(&s, "io.stoke.managed"), "true");
        assert_null(stoke_engine_label_get(&s, "io.stoke.absent"));
        assert_string_equal(s.state, k == 1 ? "running" : "created");
    }
    assert_int_equal(n, 3);
    assert_int_equal(stoke_engine_list_get(rp.json, 3, &s), -ERANGE);

    /* Key only: any value, so at least ours. */
    RUN(f, &rp, stoke_engine_list(f->e, TEST_LABEL, NULL, on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_true(json_object_array_length(rp.json) >= 3);

    /* A value nobody has, with characters that need escaping. */
    RUN(f, &rp, stoke_engine_list(f->e, TEST_LABEL, "none \"&=}{", on_reply, &rp));
    assert_int_equal(rp.err, 0);
    assert_int_equal(json_object_array_length(rp.json), 0);

    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(remove_op(f, ids[i], true, &rp), 0);
        free(ids[i]);
    }
    reply_done(&rp);
}

static void test_create_missing_image(void **state)
{
    struct fixture *f = *state;
    struct stoke_label labels[] = {{TEST_LABEL, g_run}};
    struct stoke_container_config cfg = {
        .image = "stoke-engine-missing:0",
        .labels = labels,
        .labels_len = 1,
        .network_mode = "host",
    };
    struct reply rp = {0};

    RUN(f, &rp, stoke_engine_create(f->e, &cfg, on_reply, &rp));
    assert_int_equal(rp.err, -ENOENT);
    assert_int_equal(rp.status, 404);
    assert_null(rp.id);
    assert_non_null(strstr(rp.message, "No such image"));
    assert_non_null(strstr(rp.message, "stoke-engine-missing:0"));
    reply_done(&rp);
}

static void test_missing_id(void **state)
{
    struct fixture *f = *state;
    struct reply rp = {0};
    char id[64];
    id_op ops[] = {stoke_engine_start, stoke_engine_inspect, stoke_engine_pause,
                   stoke_engine_unpause};

    (void)snprintf(id, sizeof(id), "stoke-enginetest-%s-nope", g_run);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(op(f, ops[i], id), -ENOENT);
    assert_int_equal(stop_op(f, id), -ENOENT);
    assert_int_equal(remove_op(f, id, true, &rp), -ENOENT);
    assert_non_null(strstr(rp.message, "No such container"));
    assert_int_equal(remove_op(f, id, false, &rp), -ENOENT);
    reply_done(&rp);

    /* Not ids at all: refused before any request. */
    const char *bad[] = {"", "../x", "a/b", "a?b", "-x", "a b", ".x"};
    g_in_call = true;
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(bad); i++) {
        assert_int_equal(stoke_engine_inspect(f->e, bad[i], on_reply, &rp), -EINVAL);
        assert_int_equal(stoke_engine_remove(f->e, bad[i], true, on_reply, &rp), -EINVAL);
    }
    assert_int_equal(stoke_engine_inspect(f->e, NULL, on_reply, &rp), -EINVAL);
    g_in_call = false;
    assert_false(rp.done);
}

enum { PARALLEL_N = 40 };

static bool parallel_done(void *arg)
{
    const struct reply *rp = arg;
    for (size_t i = 0; i < PARALLEL_N; i++) {
        if (!rp[i].done)
            return false;
    }
    return true;
}

/* Many calls at once: sockets come and go while others are polled. */
static void test_parallel(void **state)
{
    struct fixture *f = *state;
    enum { N = PARALLEL_N };
    struct reply rp[N];

    memset(rp, 0, sizeof(rp));
    g_in_call = true;
    for (size_t i = 0; i < N; i++) {
        int r = (i % 2) ? stoke_engine_ping(f->e, on_reply, &rp[i])
                        : stoke_engine_image_inspect(f->e, g_image, on_reply, &rp[i]);
        assert_int_equal(r, 0);
    }
    g_in_call = false;
    wait_until(f, parallel_done, rp);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(rp[i].calls, 1);
        assert_int_equal(rp[i].err, 0);
        reply_done(&rp[i]);
    }
}

static void test_bad_host(void **state)
{
    struct fixture *f = *state;
    struct stoke_engine *e = NULL;
    struct reply rp = {0};
    bool closed = false;

    assert_int_equal(stoke_engine_new(&f->loop, "tcp://127.0.0.1:2375", &e), -EINVAL);
    assert_int_equal(stoke_engine_new(&f->loop, "unix://relative.sock", &e), -EINVAL);
    assert_int_equal(stoke_engine_new(&f->loop, "unix://", &e), -EINVAL);
    assert_null(e);

    assert_int_equal(stoke_engine_new(&f->loop, "unix:///nonexistent/stoke.sock", &e), 0);
    RUN(f, &rp, stoke_engine_ping(e, on_reply, &rp));
    assert_int_equal(rp.err, -ECONNREFUSED);
    assert_int_equal(rp.status, 0);
    assert_true(strlen(rp.message) > 0);
    reply_done(&rp);
    stoke_engine_close(e, on_flag, &closed);
    wait_flag(f, &closed);
}

/* ---- closing with calls in flight ---- */

struct cancel_probe {
    struct stoke_engine *e;
    bool *in_close;
    int calls;
    int err;
    int add_err; /* what a call from inside the cancel callback got */
    bool during_close;
};

static void on_cancel_probe(const struct stoke_engine_result *res, void *data)
{
    struct cancel_probe *p = data;
    p->calls++;
    p->err = res->err;
    p->during_close = *p->in_close;
    p->add_err = stoke_engine_ping(p->e, on_reply, NULL);
}

static void test_close_in_flight(void **state)
{
    struct fixture *f = *state;
    enum { N = 6 };
    struct cancel_probe p[N];
    bool in_close = false;
    bool closed = false;
    char id[64];

    (void)snprintf(id, sizeof(id), "stoke-enginetest-%s-nope", g_run);
    memset(p, 0, sizeof(p));
    for (size_t i = 0; i < N; i++) {
        p[i].e = f->e;
        p[i].in_close = &in_close;
    }
    assert_int_equal(stoke_engine_ping(f->e, on_cancel_probe, &p[0]), 0);
    assert_int_equal(stoke_engine_inspect(f->e, id, on_cancel_probe, &p[1]), 0);
    assert_int_equal(stoke_engine_list(f->e, TEST_LABEL, g_run, on_cancel_probe, &p[2]), 0);
    assert_int_equal(stoke_engine_image_inspect(f->e, g_image, on_cancel_probe, &p[3]), 0);
    assert_int_equal(stoke_engine_stop(f->e, id, 1, on_cancel_probe, &p[4]), 0);
    assert_int_equal(stoke_engine_remove(f->e, id, true, on_cancel_probe, &p[5]), 0);
    /* Not one loop turn: none can have finished. Calls waiting on an open
     * socket are test_fake_close_waiting's. */
    in_close = true;
    stoke_engine_close(f->e, on_flag, &closed);
    in_close = false;
    f->e = NULL;
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(p[i].calls, 1);
        assert_int_equal(p[i].err, -ECANCELED);
        assert_true(p[i].during_close);
        assert_int_equal(p[i].add_err, -ECANCELED);
    }
    assert_false(closed);
    wait_flag(f, &closed);
}

/* ---- the work queue ---- */

struct queued_probe {
    struct stoke_engine *e;
    int *order; /* completions so far, shared */
    int at;     /* this call's place among them */
    unsigned in_flight_seen;
    int err;
    bool done;
};

static void on_queued_probe(const struct stoke_engine_result *res, void *data)
{
    struct queued_probe *p = data;
    struct stoke_engine_stats st;
    assert_false(g_in_call);
    stoke_engine_stats(p->e, &st);
    p->in_flight_seen = st.in_flight;
    p->at = (*p->order)++;
    p->err = res->err;
    p->done = true;
    wake();
}

enum { QUEUED_N = 12 };

static bool queued_done(void *arg)
{
    const struct queued_probe *p = arg;
    for (size_t i = 0; i < QUEUED_N; i++) {
        if (!p[i].done)
            return false;
    }
    return true;
}

/* At most `limit` calls in flight; past it calls wait, and those on a cold
 * start's way (inspect here) overtake the housekeeping ones (remove) made
 * before them. */
static void test_work_queue_limit_and_priority(void **state)
{
    struct fixture *f = *state;
    enum { HK = 6, URGENT = 6, N = QUEUED_N, LIMIT = 2 };
    struct queued_probe p[N];
    struct stoke_engine_stats st;
    int order = 0;
    char id[96];

    stoke_engine_set_max_inflight(f->e, LIMIT);
    memset(p, 0, sizeof(p));
    g_in_call = true;
    for (size_t i = 0; i < N; i++) {
        p[i].e = f->e;
        p[i].order = &order;
        (void)snprintf(id, sizeof(id), "stoke-enginetest-%s-absent-%zu", g_run, i);
        int r = i < HK ? stoke_engine_remove(f->e, id, true, on_queued_probe, &p[i])
                       : stoke_engine_inspect(f->e, id, on_queued_probe, &p[i]);
        assert_int_equal(r, 0);
    }
    g_in_call = false;
    stoke_engine_stats(f->e, &st);
    assert_int_equal(st.limit, LIMIT);
    assert_int_equal(st.in_flight, LIMIT);
    assert_int_equal(st.queued, N - LIMIT);

    wait_until(f, queued_done, p);

    int last_urgent = 0;
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(p[i].err, -ENOENT);
        assert_true(p[i].in_flight_seen >= 1 && p[i].in_flight_seen <= LIMIT);
        if (i >= HK && p[i].at > last_urgent)
            last_urgent = p[i].at;
    }
    /* In the order made, the six inspects would finish last (places 6-11).
     * Overtaking, they finish by place 8: the two removes first in flight,
     * and at most one more that took a place freed after the last inspect
     * started. */
    assert_true(last_urgent <= LIMIT + URGENT);
    stoke_engine_stats(f->e, &st);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.in_flight_max, LIMIT);
}

enum { RES_LIMIT = 4, RES_FIRST = 4, RES_HK = 8, RES_URGENT = 40 };
enum { RES_N = RES_FIRST + RES_HK + RES_URGENT };

static bool reserve_done(void *arg)
{
    const struct queued_probe *p = arg;
    for (size_t i = 0; i < RES_N; i++) {
        if (!p[i].done)
            return false;
    }
    return true;
}

/* Housekeeping keeps a quarter of the places while urgent calls wait: with
 * a limit of 4 taken by inspects, 8 removes queued and then 40 more
 * inspects, a remove takes the first place freed. In strict order every
 * inspect would go first and the first remove would finish 45th or later. */
static void test_work_queue_housekeeping_reserve(void **state)
{
    struct fixture *f = *state;
    static struct queued_probe p[RES_N];
    struct stoke_engine_stats st;
    int order = 0;
    char id[96];

    stoke_engine_set_max_inflight(f->e, RES_LIMIT);
    memset(p, 0, sizeof(p));
    g_in_call = true;
    for (size_t i = 0; i < RES_N; i++) {
        p[i].e = f->e;
        p[i].order = &order;
        (void)snprintf(id, sizeof(id), "stoke-enginetest-%s-absent-%zu", g_run, i);
        bool hk = i >= RES_FIRST && i < RES_FIRST + RES_HK;
        int r = hk ? stoke_engine_remove(f->e, id, true, on_queued_probe, &p[i])
                   : stoke_engine_inspect(f->e, id, on_queued_probe, &p[i]);
        assert_int_equal(r, 0);
    }
    g_in_call = false;
    stoke_engine_stats(f->e, &st);
    assert_int_equal(st.in_flight, RES_LIMIT);
    assert_int_equal(st.queued, RES_N - RES_LIMIT);

    wait_until(f, reserve_done, p);
    int first_hk = RES_N;
    for (size_t i = 0; i < RES_N; i++) {
        assert_int_equal(p[i].err, -ENOENT);
        if (i >= RES_FIRST && i < RES_FIRST + RES_HK && p[i].at < first_hk)
            first_hk = p[i].at;
    }
    /* It started when the first place freed (places 0-3 were inspects):
     * it ends while most of the 40 queued inspects still wait. */
    assert_true(first_hk < RES_FIRST + RES_HK + RES_URGENT / 2);
    stoke_engine_stats(f->e, &st);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.in_flight_max, RES_LIMIT);
}

enum { FAIR_A = 200 };

static bool fair_done(void *arg)
{
    const struct queued_probe *p = arg;
    for (size_t i = 0; i <= FAIR_A; i++) {
        if (!p[i].done)
            return false;
    }
    return true;
}

/* Within a class the keys take turns: 200 removals queued for function A
 * before one for B leave B's the second place after the one in flight, not
 * the last. Without keys B's would finish 201st. */
static void test_work_queue_fair(void **state)
{
    struct fixture *f = *state;
    static struct queued_probe p[FAIR_A + 1];
    struct stoke_engine_stats st;
    int order = 0;
    char id[96];

    stoke_engine_set_max_inflight(f->e, 1);
    memset(p, 0, sizeof(p));
    g_in_call = true;
    for (size_t i = 0; i <= FAIR_A; i++) {
        p[i].e = f->e;
        p[i].order = &order;
        (void)snprintf(id, sizeof(id), "stoke-enginetest-%s-absent-%zu", g_run, i);
        stoke_engine_next_key(f->e, i < FAIR_A ? "fn-a" : "fn-b");
        assert_int_equal(stoke_engine_remove(f->e, id, true, on_queued_probe, &p[i]), 0);
    }
    g_in_call = false;
    stoke_engine_stats(f->e, &st);
    assert_int_equal(st.in_flight, 1);
    assert_int_equal(st.queued, FAIR_A);

    wait_until(f, fair_done, p);
    for (size_t i = 0; i <= FAIR_A; i++)
        assert_int_equal(p[i].err, -ENOENT);
    /* A's first in flight, then A's second (its flow's turn came first),
     * then B's. */
    assert_true(p[FAIR_A].at <= 2);
    /* One key's calls keep their order. */
    for (size_t i = 1; i < FAIR_A; i++)
        assert_true(p[i].at > p[i - 1].at);
    stoke_engine_stats(f->e, &st);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.in_flight_max, 1);
}

/* Calls waiting for a place end with -ECANCELED at close, like those in
 * flight, before close returns. */
static void test_work_queue_close(void **state)
{
    struct fixture *f = *state;
    enum { N = 5 };
    struct cancel_probe p[N];
    bool in_close = false;
    bool closed = false;

    stoke_engine_set_max_inflight(f->e, 1);
    memset(p, 0, sizeof(p));
    for (size_t i = 0; i < N; i++) {
        p[i].e = f->e;
        p[i].in_close = &in_close;
        assert_int_equal(stoke_engine_ping(f->e, on_cancel_probe, &p[i]), 0);
    }
    in_close = true;
    stoke_engine_close(f->e, on_flag, &closed);
    in_close = false;
    f->e = NULL;
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(p[i].calls, 1);
        assert_int_equal(p[i].err, -ECANCELED);
        assert_true(p[i].during_close);
        assert_int_equal(p[i].add_err, -ECANCELED);
    }
    wait_flag(f, &closed);
}

/* ---- stand-in engine for answers the real one will not give ---- */

struct fake_conn {
    uv_pipe_t pipe;
    struct fake *fk;
    char buf[65536];
    size_t len;
    struct fake_conn *next;
};

struct fake {
    uv_pipe_t server;
    int open; /* handles not yet closed */
    char dir[64];
    char path[96];
    struct fake_conn *conns;
    int requests;
};

static void on_fake_conn_closed(uv_handle_t *h)
{
    struct fake_conn *c = h->data;
    c->fk->open--;
    free(c);
}

static void on_fake_server_closed(uv_handle_t *h)
{
    struct fake *fk = h->data;
    fk->open--;
}

static void on_fake_written(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void fake_send(struct fake_conn *c, const char *status, const char *type, const char *body,
                      size_t body_len)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n", status, type,
                     body_len);
    assert_true(n > 0 && (size_t)n < sizeof(head));
    char *msg = malloc((size_t)n + body_len);
    uv_write_t *w = malloc(sizeof(*w));
    assert_non_null(msg);
    assert_non_null(w);
    memcpy(msg, head, (size_t)n);
    memcpy(msg + n, body, body_len);
    w->data = msg;
    uv_buf_t b = uv_buf_init(msg, (unsigned)((size_t)n + body_len));
    if (uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, on_fake_written) < 0) {
        free(msg);
        free(w);
    }
}

/* Answers by request path; "hang" never answers. */
static void fake_answer(struct fake_conn *c, const char *line)
{
    if (strstr(line, " /v1.41/_ping ")) {
        fake_send(c, "200 OK", "text/plain", "OK", 2);
    } else if (strstr(line, "/containers/big/json")) {
        size_t len = 9u << 20;
        char *body = malloc(len);
        assert_non_null(body);
        memset(body, ' ', len);
        fake_send(c, "200 OK", "application/json", body, len);
        free(body);
    } else if (strstr(line, "/containers/badjson/json")) {
        const char *b = "{\"Id\": \"abc\"} trailing";
        fake_send(c, "200 OK", "application/json", b, strlen(b));
    } else if (strstr(line, "/containers/text500/json")) {
        const char *b = "engine on fire\n";
        fake_send(c, "500 Internal Server Error", "text/plain", b, strlen(b));
    } else if (strstr(line, "/containers/teapot/json")) {
        const char *b = "{\"message\":\"short and stout\"}";
        fake_send(c, "418 I'm a teapot", "application/json", b, strlen(b));
    } else if (strstr(line, "/containers/create")) {
        const char *b = "{\"Warnings\":[]}";
        fake_send(c, "201 Created", "application/json", b, strlen(b));
    }
}

static void on_fake_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct fake_conn *c = h->data;
    (void)hint;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len - 1));
}

static void on_fake_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fake_conn *c = s->data;
    char *end;
    (void)buf;

    if (nread < 0) {
        (void)uv_read_stop(s);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    /* One request at a time: head, then Content-Length bytes of body. */
    while ((end = strstr(c->buf, "\r\n\r\n")) != NULL) {
        size_t head_len = (size_t)(end - c->buf) + 4;
        size_t body_len = 0;
        char *cl = strcasestr(c->buf, "\r\nContent-Length:");
        if (cl && cl < end) {
            char *p = cl + 17;
            char *q;
            errno = 0;
            unsigned long v = strtoul(p, &q, 10);
            assert_true(errno == 0 && q != p);
            body_len = v;
        }
        if (c->len < head_len + body_len)
            return;
        char *eol = strstr(c->buf, "\r\n");
        *eol = '\0';
        c->fk->requests++;
        fake_answer(c, c->buf);
        memmove(c->buf, c->buf + head_len + body_len, c->len - head_len - body_len);
        c->len -= head_len + body_len;
        c->buf[c->len] = '\0';
    }
}

static void on_fake_connection(uv_stream_t *server, int status)
{
    struct fake *fk = server->data;
    struct fake_conn *c;

    assert_int_equal(status, 0);
    c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fk = fk;
    assert_int_equal(uv_pipe_init(server->loop, &c->pipe, 0), 0);
    c->pipe.data = c;
    assert_int_equal(uv_accept(server, (uv_stream_t *)&c->pipe), 0);
    assert_int_equal(uv_read_start((uv_stream_t *)&c->pipe, on_fake_alloc, on_fake_read), 0);
    c->next = fk->conns;
    fk->conns = c;
    fk->open++;
}

static void fake_start(struct fixture *f, struct fake *fk)
{
    memset(fk, 0, sizeof(*fk));
    (void)snprintf(fk->dir, sizeof(fk->dir), "/tmp/stoke-fake-XXXXXX");
    assert_non_null(mkdtemp(fk->dir));
    (void)snprintf(fk->path, sizeof(fk->path), "%s/engine.sock", fk->dir);
    assert_int_equal(uv_pipe_init(&f->loop, &fk->server, 0), 0);
    fk->server.data = fk;
    assert_int_equal(uv_pipe_bind(&fk->server, fk->path), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&fk->server, 16, on_fake_connection), 0);
    fk->open = 1;
}

/* Closes the stand-in and runs the loop until its handles are closed: fk
 * lives on the test's stack. */
static void fake_stop(struct fixture *f, struct fake *fk)
{
    for (struct fake_conn *c = fk->conns, *next; c; c = next) {
        next = c->next;
        uv_close((uv_handle_t *)&c->pipe, on_fake_conn_closed);
    }
    fk->conns = NULL;
    uv_close((uv_handle_t *)&fk->server, on_fake_server_closed);
    while (fk->open > 0)
        (void)uv_run(&f->loop, UV_RUN_ONCE);
    (void)unlink(fk->path);
    (void)rmdir(fk->dir);
}

/* An engine client of the stand-in, on the fixture's loop. */
static struct stoke_engine *fake_engine(struct fixture *f, struct fake *fk)
{
    char host[128];
    struct stoke_engine *e = NULL;
    (void)snprintf(host, sizeof(host), "unix://%s", fk->path);
    assert_int_equal(stoke_engine_new(&f->loop, host, &e), 0);
    return e;
}

static void fake_engine_close(struct fixture *f, struct stoke_engine *e)
{
    bool closed = false;
    stoke_engine_close(e, on_flag, &closed);
    wait_flag(f, &closed);
}

static void test_fake_bad_answers(void **state)
{
    struct fixture *f = *state;
    struct fake fk;
    struct stoke_engine *e;
    struct stoke_container_config cfg = {.image = "x:1", .network_mode = "host"};
    struct reply rp = {0};

    fake_start(f, &fk);
    e = fake_engine(f, &fk);

    RUN(f, &rp, stoke_engine_ping(e, on_reply, &rp));
    assert_int_equal(rp.err, 0);

    RUN(f, &rp, stoke_engine_inspect(e, "big", on_reply, &rp));
    assert_int_equal(rp.err, -EFBIG);
    assert_null(rp.json);

    RUN(f, &rp, stoke_engine_inspect(e, "badjson", on_reply, &rp));
    assert_int_equal(rp.err, -EINVAL);
    assert_int_equal(rp.status, 200);
    assert_null(rp.json);

    RUN(f, &rp, stoke_engine_inspect(e, "text500", on_reply, &rp));
    assert_int_equal(rp.err, -EIO);
    assert_int_equal(rp.status, 500);
    assert_string_equal(rp.message, "engine on fire");

    RUN(f, &rp, stoke_engine_inspect(e, "teapot", on_reply, &rp));
    assert_int_equal(rp.err, -EPROTO);
    assert_int_equal(rp.status, 418);
    assert_string_equal(rp.message, "short and stout");

    /* 201 without an Id is not a created container. */
    RUN(f, &rp, stoke_engine_create(e, &cfg, on_reply, &rp));
    assert_int_equal(rp.err, -EINVAL);
    assert_null(rp.id);

    reply_done(&rp);
    fake_engine_close(f, e);
    fake_stop(f, &fk);
}

static void test_fake_timeout(void **state)
{
    struct fixture *f = *state;
    struct fake fk;
    struct stoke_engine *e;
    struct reply rp = {0};

    fake_start(f, &fk);
    e = fake_engine(f, &fk);
    stoke_engine_set_timeout(e, 200);
    RUN(f, &rp, stoke_engine_inspect(e, "hang", on_reply, &rp));
    assert_int_equal(rp.err, -ETIMEDOUT);
    assert_int_equal(rp.status, 0);
    assert_int_equal(fk.requests, 1);
    reply_done(&rp);
    fake_engine_close(f, e);
    fake_stop(f, &fk);
}

/* Closing from a callback while another call waits on an open connection. */
struct close_from_cb {
    struct stoke_engine *e;
    bool *closed;
};

static void on_close_from_cb(const struct stoke_engine_result *res, void *data)
{
    struct close_from_cb *x = data;
    assert_int_equal(res->err, 0);
    stoke_engine_close(x->e, on_flag, x->closed);
}

static void test_fake_close_waiting(void **state)
{
    struct fixture *f = *state;
    struct fake fk;
    struct stoke_engine *e;
    struct reply hang = {0};
    bool closed = false;
    struct close_from_cb x = {.closed = &closed};

    fake_start(f, &fk);
    e = fake_engine(f, &fk);
    x.e = e;
    assert_int_equal(stoke_engine_inspect(e, "hang", on_reply, &hang), 0);
    /* Wait until the stand-in has the request: the call is on a socket. */
    f->timed_out = false;
    assert_int_equal(uv_timer_start(&f->guard, on_guard, WAIT_MS, 0), 0);
    while (fk.requests < 1 && !f->timed_out)
        (void)uv_run(&f->loop, UV_RUN_ONCE);
    (void)uv_timer_stop(&f->guard);
    assert_int_equal(fk.requests, 1);

    assert_int_equal(stoke_engine_ping(e, on_close_from_cb, &x), 0);
    wait_flag(f, &hang.done);
    assert_int_equal(hang.err, -ECANCELED);
    assert_int_equal(hang.calls, 1);
    wait_flag(f, &closed);
    reply_done(&hang);
    fake_stop(f, &fk);
}

/* ---- pure parsers, hostile input ---- */

static void test_state_parse_hostile(void **state)
{
    (void)state;
    static const char *bad[] = {
        "[]",
        "{}",
        "{\"Id\":\"abc\"}",
        "{\"Id\":\"abc\",\"State\":null}",
        "{\"Id\":\"abc\",\"State\":{\"Status\":\"running\"}}",
        "{\"Id\":5,\"State\":{\"Status\":\"running\",\"Running\":true,\"Paused\":false,"
        "\"Pid\":1,\"ExitCode\":0,\"OOMKilled\":false}}",
        "{\"Id\":\"abc\",\"State\":{\"Status\":\"running\",\"Running\":\"yes\",\"Paused\":false,"
        "\"Pid\":1,\"ExitCode\":0,\"OOMKilled\":false}}",
        "{\"Id\":\"abc\",\"State\":{\"Status\":\"running-for-a-very-long-while\",\"Running\":true,"
        "\"Paused\":false,\"Pid\":1,\"ExitCode\":0,\"OOMKilled\":false}}",
        "{\"Id\":\"abc\",\"State\":{\"Status\":\"running\",\"Running\":true,\"Paused\":false,"
        "\"Pid\":99999999999,\"ExitCode\":0,\"OOMKilled\":false}}",
        "{\"Id\":\"a\\u0000b\",\"State\":{\"Status\":\"running\",\"Running\":true,\"Paused\":false,"
        "\"Pid\":1,\"ExitCode\":0,\"OOMKilled\":false}}",
    };
    struct stoke_container_state st;
    char longid[200];

    for (size_t i = 0; i < STOKE_ARRAY_SIZE(bad); i++) {
        json_object *o = json_tokener_parse(bad[i]);
        assert_non_null(o);
        memset(&st, 0x5a, sizeof(st));
        assert_int_equal(stoke_engine_state_parse(o, &st), -EINVAL);
        assert_int_equal(st.pid, 0x5a5a5a5a); /* untouched on failure */
        json_object_put(o);
    }
    assert_int_equal(stoke_engine_state_parse(NULL, &st), -EINVAL);

    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    json_object *o = json_object_new_object();
    json_object_object_add(o, "Id", json_object_new_string(longid));
    assert_int_equal(stoke_engine_state_parse(o, &st), -EINVAL);
    json_object_put(o);

    o = json_tokener_parse("{\"Id\":\"abc\",\"State\":{\"Status\":\"exited\",\"Running\":false,"
                           "\"Paused\":false,\"Pid\":0,\"ExitCode\":137,\"OOMKilled\":true}}");
    assert_int_equal(stoke_engine_state_parse(o, &st), 0);
    assert_string_equal(st.id, "abc");
    assert_string_equal(st.status, "exited");
    assert_int_equal(st.exit_code, 137);
    assert_true(st.oom_killed);
    json_object_put(o);
}

static void test_list_get_hostile(void **state)
{
    struct stoke_container_summary s;
    json_object *o;
    (void)state;

    o = json_tokener_parse("{}");
    assert_int_equal(stoke_engine_list_get(o, 0, &s), -EINVAL);
    json_object_put(o);
    assert_int_equal(stoke_engine_list_get(NULL, 0, &s), -EINVAL);

    o = json_tokener_parse(
        "[1, {\"Id\":\"a\"}, {\"Id\":\"a\",\"State\":\"running\",\"Labels\":7},"
        "{\"Id\":\"b\",\"State\":\"exited\",\"Labels\":null},"
        "{\"Id\":\"c\",\"State\":\"running\",\"Labels\":{\"k\":\"v\",\"n\":1}}]");
    assert_int_equal(stoke_engine_list_get(o, 0, &s), -EINVAL);
    assert_int_equal(stoke_engine_list_get(o, 1, &s), -EINVAL);
    assert_int_equal(stoke_engine_list_get(o, 2, &s), -EINVAL);
    assert_int_equal(stoke_engine_list_get(o, 3, &s), 0);
    assert_string_equal(s.id, "b");
    assert_null(s.labels);
    assert_null(stoke_engine_label_get(&s, "k"));
    assert_int_equal(stoke_engine_list_get(o, 4, &s), 0);
    assert_string_equal(stoke_engine_label_get(&s, "k"), "v");
    assert_null(stoke_engine_label_get(&s, "n"));
    assert_int_equal(stoke_engine_list_get(o, 5, &s), -ERANGE);
    assert_int_equal(stoke_engine_list_get(o, (size_t)-1, &s), -ERANGE);
    json_object_put(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_parse_hostile),
        cmocka_unit_test(test_list_get_hostile),
        cmocka_unit_test(test_event_parse_hostile),
        cmocka_unit_test_setup_teardown(test_ping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_work_queue_limit_and_priority, setup, teardown),
        cmocka_unit_test_setup_teardown(test_work_queue_fair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_work_queue_housekeeping_reserve, setup, teardown),
        cmocka_unit_test_setup_teardown(test_work_queue_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_inspect_present, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_inspect_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_refused_locally, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_bridge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_paused_stop_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_by_label, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_freezer_direct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_missing_image, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parallel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_host, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_bad_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_close_waiting, setup, teardown),
    };
    /* STOKE_TEST_FILTER="test_lifecycle" (a glob) runs only matching tests. */
    const char *filter = getenv("STOKE_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
