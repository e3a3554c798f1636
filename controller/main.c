/* stoke-controller: wires the spec source (the functions directory, or the
 * Function objects of a namespace), the backend (the Docker engine, or Pods
 * through the Kubernetes API server), the activator channel and the
 * reconcile loop together. On Kubernetes with --leader-elect, only the
 * holder of the Lease starts the backend, the channel and the reconciler; a
 * follower serves /healthz and waits. */
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
#include "kubefn.h"
#include "stoke/kube.h"
#include "stoke/log.h"
#include "stoke/opsd.h"

#define DEFAULT_FUNCTIONS_DIR "/etc/stoke/functions"
#define DEFAULT_CTL "unix:/run/stoke/ctl.sock"
#define DEFAULT_OPS "127.0.0.1:9092"
#define DEFAULT_ADMIN_SOCKET "/run/stoke/admin.sock"

static struct ctrl ctrl;
static struct backend_docker_config docker_cfg;
/* --backend kubernetes */
static bool kube_mode;
static struct backend_kube_config kube_cfg;
static struct stoke_kube *kube;
static const char *kubeconfig_path, *url_prefix, *lease_name, *identity;
static bool leader_elect;
static uint64_t lease_ms = 15000;
static struct stoke_kube_elector *elector;
static bool leading;
static uv_timer_t release_timer;
/* Shutdown: its progress, said every SHUTDOWN_SAY_MS, and its deadline. */
static uv_timer_t shutdown_timer;
static uint64_t shutdown_timeout_ms = 80000;
static uint64_t shutdown_began_ms;
#define SHUTDOWN_SAY_MS 2000
static unsigned without;
static char *channel_token; /* --channel-token-file's; hub_new() copies it */
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
            "  --engine-concurrency N  engine calls in flight at most (default 16); more\n"
            "                        wait, cold starts' before housekeeping (stop, remove)\n"
            "  --shutdown-timeout DUR  on SIGTERM, stop waiting for removals after this\n"
            "                        (default 80s; a second SIGTERM too): none is left\n"
            "                        frozen, the rest stay for the next controller\n"
            "  --backend-without CAPS  act as a backend without these: a comma list of\n"
            "                        freeze, stop, precreate, cgroups (idle tiers then\n"
            "                        degrade as on a backend that lacks them)\n"
            "  --admin-socket PATH   admin API unix socket, mode 0660, or none\n"
            "                        (default " DEFAULT_ADMIN_SOCKET "; kubernetes: none,\n"
            "                        and the API is read-only: list, get, status, logs)\n"
            "  --admin-socket-group GROUP  the admin socket's group (default the\n"
            "                        process's); the controller must be a member\n"
            "  --admin-listen IP:PORT  admin API on TCP too (needs --admin-token-file)\n"
            "  --admin-token-file FILE  bearer token of the TCP admin API: the file's\n"
            "                        first line, at least 16 bytes, no spaces\n"
            "  --backend NAME        docker (default) or kubernetes: replicas are Pods,\n"
            "                        specs the Function objects of --namespace\n"
            "  --namespace NS        kubernetes: the namespace of the Functions and pods\n"
            "                        (default: the pod's, or the kubeconfig context's)\n"
            "  --kubeconfig FILE     kubernetes: outside a pod (default $KUBECONFIG or\n"
            "                        ~/.kube/config; in a pod its service account)\n"
            "  --pod-service-account NAME  kubernetes: the function pods' service account\n"
            "  --url-prefix URL      kubernetes: status.url is URL + name + /\n"
            "  --leader-elect        kubernetes: act only while holding the Lease\n"
            "  --lease-name NAME     the coordination.k8s.io/v1 Lease (default\n"
            "                        stoke-controller)\n"
            "  --lease-duration DUR  its leaseDurationSeconds (default 15s)\n"
            "  --identity ID         holderIdentity (default $POD_NAME, else the host name)\n"
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
    struct ctrl *c = data;
    int r = 0;
    if (kube_mode)
        r = stoke_buf_printf(out,
                             "# HELP stoke_controller_leader 1 while this controller acts (holds "
                             "the Lease, or runs without leader election).\n"
                             "# TYPE stoke_controller_leader gauge\nstoke_controller_leader %d\n",
                             c->be ? 1 : 0);
    if (elector)
        r |= stoke_buf_printf(out,
                              "# HELP stoke_controller_lease_conflicts_total Writes of the Lease "
                              "answered 409 Conflict (another writer changed it since it was "
                              "read; a leader reads it again and renews).\n"
                              "# TYPE stoke_controller_lease_conflicts_total counter\n"
                              "stoke_controller_lease_conflicts_total %" PRIu64 "\n",
                              stoke_kube_elector_conflicts(elector));
    if (c->kubefn)
        r |= kubefn_metrics(c->kubefn, out);
    /* A follower has no backend and no functions yet. */
    return c->be ? r | ctrl_metrics_render(c, out) : r;
}

static bool ops_health(char *msg, size_t size, void *data)
{
    struct ctrl *c = data;
    if (c->stopping)
        snprintf(msg, size, "shutting down");
    else if (kube_mode && !leading)
        snprintf(msg, size, "following: another controller holds the Lease");
    else if (!adopted)
        snprintf(msg, size, "starting: adopting the %s backend's replicas", c->be->name);
    else if (c->backend_err < 0)
        snprintf(msg, size, "%s does not answer: %s (%s)", c->be->what, c->backend_error,
                 uv_err_name(c->backend_err));
    else
        snprintf(msg, size, "ok");
    /* A follower is healthy: it waits for the Lease. */
    if (kube_mode && !leading)
        return !c->stopping;
    return !c->stopping && adopted && c->backend_err == 0;
}

static void on_tick(uv_timer_t *t)
{
    struct ctrl *c = t->data;
    ctrl_autoscale_all(c);
    ctrl_reconcile_all(c);
    usage_sample_all(c);
    if (c->kubefn)
        kubefn_write_status(c->kubefn);
    uint64_t now = uv_now(c->loop);
    if (now - c->last_ping_ms >= CTRL_CHECK_PERIOD_MS) {
        c->last_ping_ms = now;
        health_ping(c);
    }
    if (now - c->last_check_ms >= (c->watching ? CTRL_CHECK_WATCHED_MS : CTRL_CHECK_PERIOD_MS))
        ctrl_check_replicas(c);
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

static void on_hub_backlog(const char *fn, uint64_t backlog, uint32_t target, void *data)
{
    ctrl_on_backlog(data, fn, backlog, target);
}

static void on_hub_stats_done(uint64_t second, void *data)
{
    ctrl_on_stats_done(data, second);
}

static void on_hub_drain(void *data)
{
    ctrl_on_drain(data);
}

/* An activator missed an update: it gets its whole table again. */
static void on_hub_resync(void *data)
{
    ctrl_resync_routes(data);
}

/* An activator came or went: limits are divided among the activators, so
 * every table is made again. */
static void on_hub_members(void *data)
{
    ctrl_push_routes(data);
}

static void on_kube_closed(void *data)
{
    (void)data;
}

static void on_release_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, NULL);
    stoke_kube_close(kube, on_kube_closed, NULL);
    kube = NULL;
}

static void on_stopped(struct ctrl *c)
{
    if (c->keep_on_stop)
        stoke_info(NULL, "replicas left running for the next controller; exiting");
    else if (c->shutdown_cut)
        stoke_info(NULL,
                   "removed %u of %u replicas; the others left for the next controller (none "
                   "frozen); exiting",
                   c->shutdown_removed, c->shutdown_total);
    else
        stoke_info(NULL, "all %u replicas removed (%u by this shutdown); exiting",
                   c->shutdown_total, c->shutdown_removed);
    uv_close((uv_handle_t *)&shutdown_timer, NULL);
    kubefn_close(c->kubefn);
    c->kubefn = NULL;
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
    if (c->be)
        c->be->ops->close(c->be);
    c->be = NULL;
    if (kube) {
        /* The Lease is written free (best effort) before the client closes:
         * the next leader needs not wait for it to expire. */
        stoke_kube_elector_stop(elector, true);
        elector = NULL;
        uv_timer_init(c->loop, &release_timer);
        uv_timer_start(&release_timer, on_release_timer, 1000, 0);
    }
    ctrl_watch_close(c);
    uv_close((uv_handle_t *)&c->tick, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
}

static void shutdown_cut(struct ctrl *c, const char *why)
{
    if (c->shutdown_cut || c->keep_on_stop)
        return;
    stoke_info(NULL, "%s: not waiting for the other removals; removed %u of %u replicas", why,
               c->shutdown_removed, c->shutdown_total);
    ctrl_shutdown_now(c);
}

static void on_shutdown_timer(uv_timer_t *t)
{
    struct ctrl *c = t->data;
    if (uv_now(c->loop) - shutdown_began_ms >= shutdown_timeout_ms) {
        shutdown_cut(c, "shutdown deadline");
        return;
    }
    if (!c->keep_on_stop && !c->shutdown_cut)
        stoke_info(NULL, "removed %u of %u replicas", c->shutdown_removed, c->shutdown_total);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    if (ctrl.stopping) {
        char why[32];
        (void)snprintf(why, sizeof(why), "signal %d again", signum);
        shutdown_cut(&ctrl, why);
        return;
    }
    stoke_info(NULL, "signal %d: %s and shutting down", signum,
               ctrl.keep_on_stop ? "leaving the replicas running" : "removing replicas");
    api_stop_streams(api);
    uv_timer_stop(&ctrl.tick);
    shutdown_began_ms = uv_now(ctrl.loop);
    uint64_t say = SHUTDOWN_SAY_MS < shutdown_timeout_ms ? SHUTDOWN_SAY_MS : shutdown_timeout_ms;
    uv_timer_start(&shutdown_timer, on_shutdown_timer, say, say);
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
    if (c->stopping)
        return; /* a signal came while adopting: the replicas go, nothing starts */
    adopted = true;
    api_set_serving(api, true);
    ctrl_push_routes(c);
    ctrl_reconcile_all(c);
    uv_timer_start(&c->tick, on_tick, c->cfg.tick_ms, c->cfg.tick_ms);
    if (kube_mode)
        stoke_info(NULL, "ready: Functions of namespace %s", kube_cfg.ns);
    else
        stoke_info(NULL, "ready: functions from %s", c->cfg.functions_dir);
}

/* The admin API on Kubernetes: whether this controller leads, else who. */
static bool api_leading(const char **leader, void *data)
{
    (void)data;
    *leader = elector ? stoke_kube_elector_holder(elector) : "";
    return leading;
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
    int r = ctrl_adopt(c, kube_mode ? kubefn_load : load_functions, on_adopted);
    if (r < 0) {
        on_adopted(c, r);
        return;
    }
    ctrl_watch_start(c);
}

static void on_hub_poke(const char *fn, void *data);
static void on_hub_stats(const char *activator, const char *fn, uint64_t second, double conc,
                         uint64_t reqs, void *data);
static void on_hub_drain(void *data);
static void on_hub_stats_done(uint64_t second, void *data);
static void on_hub_resync(void *data);

/* Opens the activator channel: at start on Docker, when it starts leading
 * on Kubernetes. */
static int start_hub(struct ctrl *c)
{
    struct hub_callbacks cbs = {.on_poke = on_hub_poke,
                                .on_stats = on_hub_stats,
                                .on_drain = on_hub_drain,
                                .on_members = on_hub_members,
                                .on_stats_done = on_hub_stats_done,
                                .on_resync = on_hub_resync,
                                .on_backlog = on_hub_backlog,
                                .data = c};
    int r = hub_new(c->loop, &c->cfg.ctl_addr, channel_token, &cbs, &c->hub);
    c->shares_settle_ms = uv_now(c->loop) + CTRL_SHARES_SETTLE_MS;
    if (r < 0) {
        char a[128];
        stoke_addr_format(&c->cfg.ctl_addr, a, sizeof(a));
        stoke_error(NULL, r, "cannot listen on %s", a);
    }
    return r;
}

static void ping_backend(struct ctrl *c)
{
    int r = c->be->ops->ping(c->be, on_ping, c);
    if (r < 0) {
        struct backend_result res = {.err = r, .message = "ping failed", .how = ""};
        on_ping(&res, c);
    }
}

/* Kubernetes: the Functions are listed; adopt the pods, then reconcile. */
static void on_functions_synced(struct ctrl *c)
{
    if (!c->stopping)
        ping_backend(c);
}

/* Kubernetes: this controller acts from now on (the Lease is ours, or there
 * is no election): the pods' and Functions' informers, the channel, then
 * adoption once both have listed. */
static void begin_leading(struct ctrl *c)
{
    /* The Functions first: the pods' owners are looked up there. Both
     * informers list from the loop, later. */
    const struct kubefn_config kc = {.kube = kube,
                                     .ns = kube_cfg.ns,
                                     .url_prefix = url_prefix,
                                     .on_synced = on_functions_synced};
    int r = kubefn_new(c, &kc, &c->kubefn);
    if (r < 0) {
        stoke_error(NULL, r, "cannot start the Functions' informer");
        goto fail;
    }
    kube_cfg.owner_data = c->kubefn;
    r = backend_kube_new(c->loop, &kube_cfg, &c->be);
    if (r < 0) {
        stoke_error(NULL, r, "cannot start the pods' informer");
        goto fail;
    }
    c->be->caps &= ~without;
    if (start_hub(c) < 0)
        goto fail;
    stoke_info(NULL, "acting on namespace %s: listing its Functions and pods", kube_cfg.ns);
    return;
fail:
    exit_code = 1;
    ctrl_shutdown(c, on_stopped);
}

static void on_lead_change(bool lead, void *data)
{
    struct ctrl *c = data;
    if (lead && !leading && !c->stopping) {
        leading = true;
        stoke_info(NULL, "leading: holding Lease %s/%s as %s", kube_cfg.ns, lease_name, identity);
        begin_leading(c);
    } else if (!lead && leading) {
        leading = false;
        if (c->stopping)
            return;
        /* Another controller may act now: stop at once, leave the pods to it
         * (the process restarts and follows). */
        stoke_error(NULL, -EBUSY, "lost Lease %s/%s: stopping; the new leader adopts the pods",
                    kube_cfg.ns, lease_name);
        exit_code = 1;
        uv_timer_stop(&c->tick);
        ctrl_shutdown(c, on_stopped);
    }
}

static void on_lease_error(int err, const char *message, void *data)
{
    (void)data;
    /* err goes into the text: libuv names no ESTALE (a 409), and
     * uv_err_name() allocates a name it does not know. */
    stoke_debug(NULL, "%s (%s); the elector retries", message, strerror(-err));
}

/* Kubernetes: the client, from inside a pod or from a kubeconfig. */
static int kube_connect(void)
{
    struct stoke_kube_config kc;
    struct stoke_diag d;
    memset(&d, 0, sizeof(d));
    int r = kubeconfig_path ? -ENOENT : stoke_kube_config_in_cluster(NULL, &kc, &d);
    if (r == -ENOENT) {
        memset(&d, 0, sizeof(d));
        r = stoke_kube_config_load(kubeconfig_path, NULL, false, &kc, &d);
    }
    if (r < 0) {
        char msg[800];
        stoke_diag_format(&d, msg, sizeof(msg));
        stoke_error(NULL, r, "no Kubernetes API server configuration: %s", msg);
        return r;
    }
    if (!kube_cfg.ns)
        kube_cfg.ns = strdup(kc.namespace ? kc.namespace : "default");
    r = kube_cfg.ns ? stoke_kube_new(uv_default_loop(), &kc, &kube) : -ENOMEM;
    kube_cfg.kube = kube;
    if (r < 0)
        stoke_error(NULL, r, "cannot start the Kubernetes client");
    else
        stoke_info(NULL, "Kubernetes API server %s, namespace %s", kc.server ? kc.server : "?",
                   kube_cfg.ns);
    stoke_kube_config_done(&kc);
    return r;
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
        O_BACKEND,
        O_NAMESPACE,
        O_KUBECONFIG,
        O_POD_SA,
        O_URL_PREFIX,
        O_LEADER_ELECT,
        O_LEASE_NAME,
        O_LEASE_DURATION,
        O_IDENTITY,
        O_ENGINE_CONC,
        O_SHUTDOWN_TIMEOUT,
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
        {"engine-concurrency", required_argument, NULL, O_ENGINE_CONC},
        {"shutdown-timeout", required_argument, NULL, O_SHUTDOWN_TIMEOUT},
        {"ops-listen", required_argument, NULL, O_OPS},
        {"admin-socket", required_argument, NULL, O_ADMIN_SOCKET},
        {"admin-listen", required_argument, NULL, O_ADMIN_LISTEN},
        {"admin-token-file", required_argument, NULL, O_ADMIN_TOKEN},
        {"backend-without", required_argument, NULL, O_WITHOUT},
        {"channel-token-file", required_argument, NULL, O_CHANNEL_TOKEN},
        {"admin-socket-group", required_argument, NULL, O_ADMIN_GROUP},
        {"backend", required_argument, NULL, O_BACKEND},
        {"namespace", required_argument, NULL, O_NAMESPACE},
        {"kubeconfig", required_argument, NULL, O_KUBECONFIG},
        {"pod-service-account", required_argument, NULL, O_POD_SA},
        {"url-prefix", required_argument, NULL, O_URL_PREFIX},
        {"leader-elect", no_argument, NULL, O_LEADER_ELECT},
        {"lease-name", required_argument, NULL, O_LEASE_NAME},
        {"lease-duration", required_argument, NULL, O_LEASE_DURATION},
        {"identity", required_argument, NULL, O_IDENTITY},
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
    const char *channel_token_file = NULL;
    gid_t admin_gid = 0;
    bool admin_socket_set = false;
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
        case O_SHUTDOWN_TIMEOUT:
            r = stoke_parse_duration(optarg, &shutdown_timeout_ms);
            if (r == 0 && shutdown_timeout_ms == 0)
                r = -EINVAL;
            break;
        case O_LOG:
            r = stoke_log_level_parse(optarg, &level);
            break;
        case O_PAUSE:
            docker_cfg.freeze_with_engine = strcmp(optarg, "engine") == 0;
            r = docker_cfg.freeze_with_engine || strcmp(optarg, "cgroup") == 0 ? 0 : -EINVAL;
            break;
        case O_ENGINE_CONC: {
            uint64_t n;
            r = stoke_parse_u64(optarg, &n);
            if (r == 0 && (n < 1 || n > 1024))
                r = -EINVAL;
            docker_cfg.max_inflight = (unsigned)n;
            break;
        }
        case O_OPS:
            r = stoke_opsd_parse_addr(optarg, &ops_addr, &use_ops);
            break;
        case O_ADMIN_SOCKET:
            admin_socket = strcmp(optarg, "none") == 0 ? NULL : optarg;
            admin_socket_set = true;
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
        case O_BACKEND:
            kube_mode = strcmp(optarg, "kubernetes") == 0;
            r = kube_mode || strcmp(optarg, "docker") == 0 ? 0 : -EINVAL;
            break;
        case O_NAMESPACE:
            kube_cfg.ns = optarg;
            r = stoke_is_valid_name(optarg) ? 0 : -EINVAL;
            break;
        case O_KUBECONFIG:
            kubeconfig_path = optarg;
            break;
        case O_POD_SA:
            kube_cfg.service_account = optarg;
            r = stoke_is_valid_name(optarg) ? 0 : -EINVAL;
            break;
        case O_URL_PREFIX:
            url_prefix = optarg;
            break;
        case O_LEADER_ELECT:
            leader_elect = true;
            break;
        case O_LEASE_NAME:
            lease_name = optarg;
            r = stoke_is_valid_name(optarg) ? 0 : -EINVAL;
            break;
        case O_LEASE_DURATION:
            r = stoke_parse_duration(optarg, &lease_ms);
            if (r == 0 && (lease_ms < 3000 || lease_ms > 3600000))
                r = -EINVAL;
            break;
        case O_IDENTITY:
            identity = optarg;
            r = *optarg && strlen(optarg) <= 128 ? 0 : -EINVAL;
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
    /* On Kubernetes the admin API is read-only (the Function objects are
     * the specs) and off unless asked for: a pod's root is read-only. */
    if (kube_mode && !admin_socket_set)
        admin_socket = NULL;
    if (admin_token_file && read_token("admin-token-file", admin_token_file, &admin_token) < 0)
        return 2;
    if (channel_token_file &&
        read_token("channel-token-file", channel_token_file, &channel_token) < 0)
        return 2;
    char host[65];
    if (kube_mode && !identity) {
        identity = getenv("POD_NAME");
        if (!identity || !*identity)
            identity = gethostname(host, sizeof(host) - 1) == 0 ? host : "stoke-controller";
        host[sizeof(host) - 1] = '\0';
    }
    if (!lease_name)
        lease_name = "stoke-controller";

    stoke_log_init("controller", level);
    signal(SIGPIPE, SIG_IGN);
    c->loop = uv_default_loop();
    stoke_list_init(&c->functions);
    /* Until adoption is over, no table goes out: the channel listens before
     * the functions and replicas are known, and an activator that connects
     * in between would get a table of none and answer 404 until the next
     * (a restart, a new leader on Kubernetes). It keeps the one it has. */
    c->adopting = true;

    if (kube_mode) {
        /* The pods stay for the next controller (a restart, a new leader). */
        c->keep_on_stop = true;
        kube_cfg.instance = docker_cfg.instance;
        kube_cfg.start_timeout_ms = c->cfg.ready_timeout_ms;
        kube_cfg.owner_uid = kubefn_owner_uid;
        if (kube_connect() < 0)
            return 1;
    } else {
        r = backend_docker_new(c->loop, &docker_cfg, &c->be);
        if (r < 0) {
            stoke_error(NULL, r, "bad engine address");
            return 2;
        }
        c->be->caps &= ~without;
    }
    if (without)
        stoke_info(NULL, "acting as a backend without some capabilities (--backend-without)");
    if (!kube_mode && start_hub(c) < 0) {
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
            if (kube) {
                stoke_kube_close(kube, NULL, NULL);
            } else {
                hub_close(c->hub, NULL, NULL);
                c->be->ops->close(c->be);
            }
            uv_run(c->loop, UV_RUN_DEFAULT);
            return 1;
        }
        stoke_info(NULL, "ops port listening on %s", a);
    }
    struct api_config acfg = {
        .unix_path = admin_socket,
        .unix_gid = admin_gid,
        .tcp = admin_tcp ? &admin_addr : NULL,
        .token = admin_token,
        .read_only = kube_mode ? "on Kubernetes the Function objects are the specs: change "
                                 "them with kubectl apply -f FILE or kubectl delete function NAME"
                               : NULL,
        .leading = kube_mode ? api_leading : NULL,
    };
    r = admin_socket || admin_tcp ? api_new(c, &acfg, &api) : 0;
    if (admin_token) {
        explicit_bzero(admin_token, strlen(admin_token));
        free(admin_token);
    }
    if (r < 0) {
        if (opsd)
            stoke_opsd_close(opsd);
        if (kube) {
            /* Nothing leads yet: no hub, no backend. */
            stoke_kube_close(kube, NULL, NULL);
        } else {
            hub_close(c->hub, NULL, NULL);
            c->be->ops->close(c->be);
        }
        uv_run(c->loop, UV_RUN_DEFAULT);
        return 1;
    }
    uv_timer_init(c->loop, &c->tick);
    c->tick.data = c;
    uv_timer_init(c->loop, &shutdown_timer);
    shutdown_timer.data = c;
    ctrl_watch_init(c);
    uv_signal_init(c->loop, &sigint);
    uv_signal_init(c->loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);

    if (!kube_mode) {
        ping_backend(c);
    } else if (leader_elect) {
        /* The elector wants renew + retry < lease: a leader steps down
         * before its Lease can expire under another's eyes. */
        unsigned lease_s = (unsigned)(lease_ms / 1000), retry_s = lease_s / 5 ? lease_s / 5 : 1;
        unsigned renew_s = lease_s - retry_s - 1;
        if (renew_s > lease_s * 2 / 3)
            renew_s = lease_s * 2 / 3;
        const struct stoke_kube_elector_opts eo = {
            .ns = kube_cfg.ns,
            .name = lease_name,
            .identity = identity,
            .lease_s = lease_s,
            .renew_s = renew_s,
            .retry_s = retry_s,
            .on_change = on_lead_change,
            .on_error = on_lease_error,
            .data = c,
        };
        r = stoke_kube_elector_start(kube, &eo, &elector);
        if (r < 0) {
            stoke_error(NULL, r, "cannot start the leader election on Lease %s/%s", kube_cfg.ns,
                        lease_name);
            exit_code = 1;
            ctrl_shutdown(c, on_stopped);
        } else {
            stoke_info(NULL, "following: waiting for Lease %s/%s as %s", kube_cfg.ns, lease_name,
                       identity);
        }
    } else {
        leading = true;
        begin_leading(c);
    }
    uv_run(c->loop, UV_RUN_DEFAULT);
    r = uv_loop_close(c->loop);
    if (r < 0)
        stoke_warn(NULL, r, "loop closed with handles still open");
    if (channel_token) {
        explicit_bzero(channel_token, strlen(channel_token));
        free(channel_token);
    }
    return exit_code;
}
