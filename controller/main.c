/* stoke-controller: wires the functions directory, the backend (the Docker
 * engine), the activator channel and the reconcile loop together. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "api.h"
#include "controller.h"
#include "hub.h"
#include "stoke/log.h"
#include "stoke/opsd.h"

#define DEFAULT_FUNCTIONS_DIR "/etc/stoke/functions"
#define DEFAULT_CTL "unix:/run/stoke/ctl.sock"
#define DEFAULT_OPS "127.0.0.1:9092"
#define DEFAULT_ADMIN_SOCKET "/run/stoke/admin.sock"

static struct ctrl ctrl;
static struct backend_docker_config docker_cfg;
static struct fnset *fnset;
static struct stoke_opsd *opsd;
static bool adopted; /* past adoption: reconciling */
static struct api *api;
static uv_signal_t sigint, sigterm;
static int exit_code;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: stoke-controller [options]\n"
            "  --functions-dir DIR   function specs, *.yaml (default " DEFAULT_FUNCTIONS_DIR ")\n"
            "  --listen ADDR         activator channel, unix:/path (mode 0660, the\n"
            "                        process's group) or IP:port (needs\n"
            "                        --channel-token-file) (default " DEFAULT_CTL ")\n"
            "  --channel-token-file FILE  token every activator must send first on a\n"
            "                        TCP channel: the file's first line, at least 16\n"
            "                        bytes, no spaces (the activators read the same file)\n"
            "  --docker-host URL     engine socket, unix:///path (default $DOCKER_HOST or\n"
            "                        unix:///var/run/docker.sock)\n"
            "  --instance NAME       io.stoke.instance label of this controller's\n"
            "                        containers (default \"default\")\n"
            "  --port-range LO-HI    ports for replicas on 127.0.0.1 (default 30000-32767)\n"
            "  --ready-timeout DUR   replace a replica not ready by then (default 60s)\n"
            "  --ops-listen IP:PORT  GET /metrics (Prometheus) and /healthz, or none\n"
            "                        (default " DEFAULT_OPS ")\n"
            "  --pause-with WAY      cgroup (freeze idle replicas through their cgroup,\n"
            "                        the default) or engine (the engine's pause/unpause)\n"
            "  --backend-without CAPS  act as a backend without these: a comma list of\n"
            "                        freeze, stop, precreate, cgroups (idle tiers then\n"
            "                        degrade as on a backend that lacks them)\n"
            "  --admin-socket PATH   admin API unix socket, mode 0660, or none\n"
            "                        (default " DEFAULT_ADMIN_SOCKET ")\n"
            "  --admin-socket-group GROUP  the admin socket's group (default the\n"
            "                        process's); the controller must be a member\n"
            "  --admin-listen IP:PORT  admin API on TCP too (needs --admin-token-file)\n"
            "  --admin-token-file FILE  bearer token of the TCP admin API: the file's\n"
            "                        first line, at least 16 bytes, no spaces\n"
            "  --log-level LEVEL     debug, info, warn, error (default info)\n"
            "  -h, --help\n");
}

static void on_health_ping(const struct backend_result *res, void *data)
{
    struct ctrl *c = data;
    c->pinging = false;
    if (res->err == -ECANCELED)
        return;
    if (res->err < 0 && c->backend_err == 0)
        stoke_warn(NULL, res->err, "%s does not answer its ping: %s", c->be->what, res->message);
    c->backend_err = res->err;
    snprintf(c->backend_error, sizeof(c->backend_error), "%s", res->err < 0 ? res->message : "");
}

/* For /healthz: one ping in flight at most. */
static void health_ping(struct ctrl *c)
{
    if (c->pinging || c->stopping)
        return;
    int r = c->be->ops->ping(c->be, on_health_ping, c);
    if (r < 0) {
        c->backend_err = r;
        snprintf(c->backend_error, sizeof(c->backend_error), "cannot send a ping");
        return;
    }
    c->pinging = true;
}

static int ops_metrics(struct stoke_buf *out, void *data)
{
    return ctrl_metrics_render(data, out);
}

static bool ops_health(char *msg, size_t size, void *data)
{
    struct ctrl *c = data;
    if (c->stopping)
        snprintf(msg, size, "shutting down");
    else if (!adopted)
        snprintf(msg, size, "starting: adopting the %s backend's replicas", c->be->name);
    else if (c->backend_err < 0)
        snprintf(msg, size, "%s does not answer: %s (%s)", c->be->what, c->backend_error,
                 uv_err_name(c->backend_err));
    else
        snprintf(msg, size, "ok");
    return !c->stopping && adopted && c->backend_err == 0;
}

static void on_tick(uv_timer_t *t)
{
    struct ctrl *c = t->data;
    ctrl_autoscale_all(c);
    ctrl_reconcile_all(c);
    usage_sample_all(c);
    uint64_t now = uv_now(c->loop);
    if (now - c->last_check_ms >= CTRL_CHECK_PERIOD_MS) {
        c->last_check_ms = now;
        ctrl_check_replicas(c);
        health_ping(c);
    }
    ctrl_push_settled_raises(c);
}

static void on_hub_poke(const char *fn, void *data)
{
    ctrl_on_poke(data, fn);
}

static void on_hub_stats(const char *activator, const char *fn, uint64_t second, double conc,
                         uint64_t reqs, void *data)
{
    (void)activator;
    ctrl_on_stats(data, fn, second, conc, reqs);
}

static void on_hub_drain(void *data)
{
    ctrl_on_drain(data);
}

/* An activator came or went: limits are divided among the activators, so
 * every table is made again. */
static void on_hub_members(void *data)
{
    ctrl_push_routes(data);
}

static void on_stopped(struct ctrl *c)
{
    stoke_info(NULL, "all replicas removed; exiting");
    /* Before the fnset: the API forgets the changes it still waits for. */
    api_close(api);
    api = NULL;
    if (fnset)
        fnset_close(fnset);
    fnset = NULL;
    stoke_opsd_close(opsd);
    opsd = NULL;
    if (c->hub)
        hub_close(c->hub, NULL, NULL);
    c->hub = NULL;
    c->be->ops->close(c->be);
    c->be = NULL;
    ctrl_watch_close(c);
    uv_close((uv_handle_t *)&c->tick, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    if (ctrl.stopping)
        return;
    stoke_info(NULL, "signal %d: removing replicas and shutting down", signum);
    api_stop_streams(api);
    uv_timer_stop(&ctrl.tick);
    ctrl_shutdown(&ctrl, on_stopped);
}

static int load_functions(struct ctrl *c)
{
    int r = fnset_new(c, c->cfg.functions_dir, &fnset);
    if (r < 0)
        stoke_error(NULL, r, "cannot use the functions directory %s", c->cfg.functions_dir);
    else if (api)
        api_set_fnset(api, fnset);
    return r;
}

static void on_adopted(struct ctrl *c, int err)
{
    if (err < 0) {
        if (!fnset)
            stoke_error(NULL, err, "cannot start: no replica list or no functions; exiting");
        exit_code = 1;
        ctrl_shutdown(c, on_stopped);
        return;
    }
    adopted = true;
    ctrl_push_routes(c);
    ctrl_reconcile_all(c);
    uv_timer_start(&c->tick, on_tick, c->cfg.tick_ms, c->cfg.tick_ms);
    stoke_info(NULL, "ready: functions from %s", c->cfg.functions_dir);
}

static void on_ping(const struct backend_result *res, void *data)
{
    struct ctrl *c = data;
    c->backend_err = res->err;
    if (res->err < 0) {
        stoke_error(NULL, res->err, "%s does not answer: %s; exiting", c->be->what, res->message);
        exit_code = 1;
        ctrl_shutdown(c, on_stopped);
        return;
    }
    int r = ctrl_adopt(c, load_functions, on_adopted);
    if (r < 0) {
        on_adopted(c, r);
        return;
    }
    ctrl_watch_start(c);
}

/* "freeze,stop": the capability bits named, in *ret. Returns 0 or -EINVAL. */
static int parse_caps(const char *s, unsigned *ret)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {
        {"freeze", BACKEND_CAN_FREEZE},
        {"stop", BACKEND_CAN_STOP_KEEP},
        {"precreate", BACKEND_CAN_PRECREATE},
        {"cgroups", BACKEND_HAS_CGROUPS},
    };
    unsigned caps = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        size_t i = 0;
        while (i < STOKE_ARRAY_SIZE(names) &&
               !(strlen(names[i].name) == len && strncmp(names[i].name, s, len) == 0))
            i++;
        if (i == STOKE_ARRAY_SIZE(names))
            return -EINVAL;
        caps |= names[i].bit;
        s += len + (s[len] == ',');
    }
    *ret = caps;
    return 0;
}

static int parse_range(const char *s, uint16_t *lo, uint16_t *hi)
{
    char a[16];
    const char *dash = strchr(s, '-');
    uint64_t x, y;
    if (!dash || (size_t)(dash - s) >= sizeof(a))
        return -EINVAL;
    memcpy(a, s, (size_t)(dash - s));
    a[dash - s] = '\0';
    if (stoke_parse_u64(a, &x) < 0 || stoke_parse_u64(dash + 1, &y) < 0 || x < 1024 || y > 65535 ||
        x > y)
        return -EINVAL;
    *lo = (uint16_t)x;
    *hi = (uint16_t)y;
    return 0;
}

/* A token file's token (stoke_token_read()), or prints why not naming
 * `flag` and returns a negative errno. */
static int read_token(const char *flag, const char *path, char **ret)
{
    int r = stoke_token_read(path, ret);
    if (r == -EINVAL)
        fprintf(stderr,
                "stoke-controller: --%s %s: the first line must be a token of %d to %d "
                "printable bytes without spaces\n",
                flag, path, STOKE_TOKEN_MIN, STOKE_TOKEN_MAX);
    else if (r < 0)
        fprintf(stderr, "stoke-controller: cannot read --%s %s: %s\n", flag, path, strerror(-r));
    return r;
}

/* A group name or number, for --admin-socket-group. Startup only (NSS may
 * block). Returns 0 or -EINVAL. */
static int group_parse(const char *s, gid_t *ret)
{
    uint64_t n;
    if (stoke_parse_u64(s, &n) == 0) {
        if (n == 0 || n > INT32_MAX)
            return -EINVAL;
        *ret = (gid_t)n;
        return 0;
    }
    const struct group *g = getgrnam(s);
    if (!g || g->gr_gid == 0)
        return -EINVAL;
    *ret = g->gr_gid;
    return 0;
}

int main(int argc, char **argv)
{
    enum {
        O_DIR = 256,
        O_LISTEN,
        O_DOCKER,
        O_INSTANCE,
        O_PORTS,
        O_READY,
        O_LOG,
        O_PAUSE,
        O_OPS,
        O_ADMIN_SOCKET,
        O_ADMIN_LISTEN,
        O_ADMIN_TOKEN,
        O_WITHOUT,
        O_CHANNEL_TOKEN,
        O_ADMIN_GROUP,
    };
    static const struct option opts[] = {
        {"functions-dir", required_argument, NULL, O_DIR},
        {"listen", required_argument, NULL, O_LISTEN},
        {"docker-host", required_argument, NULL, O_DOCKER},
        {"instance", required_argument, NULL, O_INSTANCE},
        {"port-range", required_argument, NULL, O_PORTS},
        {"ready-timeout", required_argument, NULL, O_READY},
        {"log-level", required_argument, NULL, O_LOG},
        {"pause-with", required_argument, NULL, O_PAUSE},
        {"ops-listen", required_argument, NULL, O_OPS},
        {"admin-socket", required_argument, NULL, O_ADMIN_SOCKET},
        {"admin-listen", required_argument, NULL, O_ADMIN_LISTEN},
        {"admin-token-file", required_argument, NULL, O_ADMIN_TOKEN},
        {"backend-without", required_argument, NULL, O_WITHOUT},
        {"channel-token-file", required_argument, NULL, O_CHANNEL_TOKEN},
        {"admin-socket-group", required_argument, NULL, O_ADMIN_GROUP},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct ctrl *c = &ctrl;
    enum stoke_log_level level = STOKE_LOG_INFO;
    struct stoke_addr ops_addr;
    bool use_ops = true;
    const char *admin_socket = DEFAULT_ADMIN_SOCKET;
    const char *admin_token_file = NULL;
    struct stoke_addr admin_addr;
    bool admin_tcp = false;
    char *admin_token = NULL;
    unsigned without = 0;
    const char *channel_token_file = NULL;
    char *channel_token = NULL;
    gid_t admin_gid = 0;
    int opt, r;

    c->cfg.functions_dir = DEFAULT_FUNCTIONS_DIR;
    (void)stoke_addr_parse(DEFAULT_CTL, &c->cfg.ctl_addr);
    docker_cfg.instance = "default";
    docker_cfg.port_min = 30000;
    docker_cfg.port_max = 32767;
    c->cfg.tick_ms = STOKE_AUTOSCALE_TICK_MS;
    c->cfg.ready_timeout_ms = 60000;
    (void)stoke_addr_parse(DEFAULT_OPS, &ops_addr);

    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        r = 0;
        switch (opt) {
        case O_DIR:
            c->cfg.functions_dir = optarg;
            break;
        case O_LISTEN:
            r = stoke_addr_parse(optarg, &c->cfg.ctl_addr);
            break;
        case O_DOCKER:
            docker_cfg.docker_host = optarg;
            break;
        case O_INSTANCE:
            docker_cfg.instance = optarg;
            r = stoke_is_valid_name(optarg) ? 0 : -EINVAL;
            break;
        case O_PORTS:
            r = parse_range(optarg, &docker_cfg.port_min, &docker_cfg.port_max);
            break;
        case O_READY:
            r = stoke_parse_duration(optarg, &c->cfg.ready_timeout_ms);
            break;
        case O_LOG:
            r = stoke_log_level_parse(optarg, &level);
            break;
        case O_PAUSE:
            docker_cfg.freeze_with_engine = strcmp(optarg, "engine") == 0;
            r = docker_cfg.freeze_with_engine || strcmp(optarg, "cgroup") == 0 ? 0 : -EINVAL;
            break;
        case O_OPS:
            r = stoke_opsd_parse_addr(optarg, &ops_addr, &use_ops);
            break;
        case O_ADMIN_SOCKET:
            admin_socket = strcmp(optarg, "none") == 0 ? NULL : optarg;
            r = !admin_socket || (optarg[0] == '/' && strlen(optarg) < sizeof(admin_addr.path))
                    ? 0
                    : -EINVAL;
            break;
        case O_ADMIN_LISTEN:
            r = stoke_addr_parse(optarg, &admin_addr);
            if (r == 0 && admin_addr.is_unix)
                r = -EINVAL; /* the unix socket is --admin-socket */
            admin_tcp = r == 0;
            break;
        case O_ADMIN_TOKEN:
            admin_token_file = optarg;
            break;
        case O_WITHOUT:
            r = parse_caps(optarg, &without);
            break;
        case O_CHANNEL_TOKEN:
            channel_token_file = optarg;
            break;
        case O_ADMIN_GROUP:
            r = group_parse(optarg, &admin_gid);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (r < 0) {
            fprintf(stderr, "stoke-controller: bad value for --%s: %s\n", opts[opt - O_DIR].name,
                    optarg);
            return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    if (admin_tcp && !admin_token_file) {
        fprintf(stderr, "stoke-controller: --admin-listen needs --admin-token-file: the admin "
                        "API is never on TCP without a token\n");
        return 2;
    }
    if (!c->cfg.ctl_addr.is_unix && !channel_token_file) {
        fprintf(stderr, "stoke-controller: a TCP --listen needs --channel-token-file: the "
                        "activator channel is never on TCP without a token\n");
        return 2;
    }
    if (admin_token_file && read_token("admin-token-file", admin_token_file, &admin_token) < 0)
        return 2;
    if (channel_token_file &&
        read_token("channel-token-file", channel_token_file, &channel_token) < 0)
        return 2;

    stoke_log_init("controller", level);
    signal(SIGPIPE, SIG_IGN);
    c->loop = uv_default_loop();
    stoke_list_init(&c->functions);

    r = backend_docker_new(c->loop, &docker_cfg, &c->be);
    if (r < 0) {
        stoke_error(NULL, r, "bad engine address");
        return 2;
    }
    if (without) {
        c->be->caps &= ~without;
        stoke_info(NULL, "acting as a backend without some capabilities (--backend-without)");
    }
    struct hub_callbacks cbs = {.on_poke = on_hub_poke,
                                .on_stats = on_hub_stats,
                                .on_drain = on_hub_drain,
                                .on_members = on_hub_members,
                                .data = c};
    r = hub_new(c->loop, &c->cfg.ctl_addr, channel_token, &cbs, &c->hub);
    c->shares_settle_ms = uv_now(c->loop) + CTRL_SHARES_SETTLE_MS;
    if (channel_token) {
        explicit_bzero(channel_token, strlen(channel_token));
        free(channel_token);
    }
    if (r < 0) {
        char a[128];
        stoke_addr_format(&c->cfg.ctl_addr, a, sizeof(a));
        stoke_error(NULL, r, "cannot listen on %s", a);
        c->be->ops->close(c->be);
        uv_run(c->loop, UV_RUN_DEFAULT);
        return 1;
    }
    if (use_ops) {
        struct stoke_opsd_callbacks ops_cbs = {
            .metrics = ops_metrics, .health = ops_health, .data = c};
        char a[80];
        stoke_addr_format(&ops_addr, a, sizeof(a));
        r = stoke_opsd_new(c->loop, &ops_addr, &ops_cbs, &opsd);
        if (r < 0) {
            stoke_error(NULL, r, "ops port cannot listen on %s (--ops-listen none disables it)", a);
            hub_close(c->hub, NULL, NULL);
            c->be->ops->close(c->be);
            uv_run(c->loop, UV_RUN_DEFAULT);
            return 1;
        }
        stoke_info(NULL, "ops port listening on %s", a);
    }
    struct api_config acfg = {.unix_path = admin_socket,
                              .unix_gid = admin_gid,
                              .tcp = admin_tcp ? &admin_addr : NULL,
                              .token = admin_token};
    r = admin_socket || admin_tcp ? api_new(c, &acfg, &api) : 0;
    if (admin_token) {
        explicit_bzero(admin_token, strlen(admin_token));
        free(admin_token);
    }
    if (r < 0) {
        if (opsd)
            stoke_opsd_close(opsd);
        hub_close(c->hub, NULL, NULL);
        c->be->ops->close(c->be);
        uv_run(c->loop, UV_RUN_DEFAULT);
        return 1;
    }
    uv_timer_init(c->loop, &c->tick);
    c->tick.data = c;
    ctrl_watch_init(c);
    uv_signal_init(c->loop, &sigint);
    uv_signal_init(c->loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);

    r = c->be->ops->ping(c->be, on_ping, c);
    if (r < 0) {
        struct backend_result res = {.err = r, .message = "ping failed", .how = ""};
        on_ping(&res, c);
    }
    uv_run(c->loop, UV_RUN_DEFAULT);
    r = uv_loop_close(c->loop);
    if (r < 0)
        stoke_warn(NULL, r, "loop closed with handles still open");
    return exit_code;
}
