/* stoke-activator: wires the proxy and the controller channel to one loop. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "ctl.h"
#include "metrics.h"
#include "proxy.h"
#include "shared.h"
#include "stoke/log.h"
#include "stoke/opsd.h"
#include "stoke/spec.h"

#define DEFAULT_CONTROLLER "unix:/run/stoke/ctl.sock"
#define DEFAULT_OPS "127.0.0.1:9091"
#define MAX_WORKERS LIMITS_MAX_WORKERS
#define BEAT_MS 250 /* heartbeat period: /healthz calls a worker silent for 3 s stuck */
#define STALE_MS 3000

/* One event loop thread: its own proxy (listening on the shared port with
 * SO_REUSEPORT when there are several), its own upstream pools and its own
 * channel to the controller, which sums the workers' reports like those of
 * separate activators but divides limits per process (the channel's hello
 * names the process). The limits themselves (replica slots, queue bounds,
 * connections) are the process's: one struct limits (shared.h) that every
 * worker's proxy counts in. */
struct worker {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t stop;
    uv_timer_t beat;
    uv_sem_t started;
    int err; /* startup result, read after `started` */
    struct proxy *px;
    struct ctl *ctl;
    struct metrics_worker *mw; /* this worker's counters, read by the ops server */
    char id[80];
    unsigned index;
    struct limits *limits;
    const char *process; /* the activator's id, which its workers share */
    const struct proxy_config *cfg;
    const struct stoke_chan_targets *ctl_targets; /* NULL: --controller none */
    const char *ctl_token;                        /* --channel-token-file's, or NULL */
    const char *routes_line;                      /* static routes as a routes message, or NULL */
};

struct activator {
    struct worker *workers;
    unsigned n_workers;
    struct stoke_opsd *ops; /* NULL: --ops-listen none */
    struct metrics *metrics;
    uv_signal_t sigint, sigterm;
};

static unsigned default_workers(void)
{
    unsigned n = uv_available_parallelism();
    return n == 0 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : n;
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: stoke-activator [options]\n"
        "  --listen ADDR            data port (default 127.0.0.1:8080)\n"
        "  --controller ADDR        controller channel: unix:/path, or host:port[,...]\n"
        "                           (IPs or DNS names, every address tried until the\n"
        "                           leader takes it), or none\n"
        "                           (default " DEFAULT_CONTROLLER ")\n"
        "  --channel-token-file FILE  the controller's channel token (its first line),\n"
        "                           required with a TCP --controller\n"
        "  --route NAME=IP:PORT[,IP:PORT...]\n"
        "                           a fixed route (repeatable), used until a\n"
        "                           controller sends its table; for benchmarks and\n"
        "                           tests with --controller none\n"
        "  --domain DOMAIN          route Host <name>.DOMAIN (default localhost)\n"
        "  --id NAME                this activator's name (default activator-<pid>)\n"
        "  --max-header-bytes N     request head limit, 431 past it (default 16384)\n"
        "  --max-body-bytes N       request body limit, 413 past it; 0: none (default 16777216)\n"
        "  --max-connections N      client connections, over all workers (default 10000)\n"
        "  --upstream-pool N        idle connections kept per replica, per worker (default 256)\n"
        "  --access-log             a JSON log line per request (off by default)\n"
        "  --header-timeout DUR     time to read a request head (default 10s)\n"
        "  --idle-timeout DUR       keep-alive idle time (default 60s)\n"
        "  --connect-timeout DUR    replica connect time (default 2s)\n"
        "  --workers N              event-loop threads sharing the port (SO_REUSEPORT),\n"
        "                           each with its own upstream pools (default: one per\n"
        "                           online CPU, here %u)\n"
        "  --ops-listen ADDR        ops port: GET /healthz and /metrics (Prometheus),\n"
        "                           IP:port or none (default " DEFAULT_OPS ")\n"
        "  --trusted-proxies CIDR[,CIDR...]\n"
        "                           peers whose X-Forwarded-For, Forwarded and\n"
        "                           X-Real-IP are passed on (default none: they\n"
        "                           are replaced or dropped)\n"
        "  --events HOST:PORT       stoke-events' ingest (an IP, or a name looked up\n"
        "                           every 5 s): async invocations (Prefer:\n"
        "                           respond-async, /async-function/<name>/) and\n"
        "                           /_stoke/calls/ go there (default none: the\n"
        "                           header is ignored, the prefix answered 501)\n"
        "  --events-token-file FILE token sent to stoke-events with each async call\n"
        "                           (its --token-file; needed with --events)\n"
        "  --log-level LEVEL        debug, info, warn, error (default info)\n"
        "  -h, --help\n"
        "DUR is like 250ms, 10s, 1m.\n",
        default_workers());
}

static void free_token(char *token)
{
    if (token) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
}

static void on_poke(const char *fn, void *data)
{
    struct worker *w = data;
    if (w->ctl)
        ctl_poke(w->ctl, fn);
}

static void on_drained(void *data)
{
    struct worker *w = data;
    if (w->ctl)
        ctl_drain_changed(w->ctl);
}

static void on_stop(uv_async_t *h)
{
    struct worker *w = h->data;
    proxy_close(w->px, NULL, NULL);
    if (w->ctl)
        ctl_close(w->ctl, NULL, NULL);
    uv_close((uv_handle_t *)&w->stop, NULL);
    uv_close((uv_handle_t *)&w->beat, NULL);
}

static void on_beat(uv_timer_t *t)
{
    struct worker *w = t->data;
    metrics_beat(w->mw, uv_hrtime() / 1000000);
}

/* The ops port's callbacks (main thread): the workers' counters, summed,
 * and their heartbeats. */
static int ops_metrics(struct stoke_buf *out, void *data)
{
    struct activator *a = data;
    return metrics_format(a->metrics, out);
}

static bool ops_health(char *msg, size_t size, void *data)
{
    struct activator *a = data;
    unsigned worker = 0;
    uint64_t age_ms = 0;
    int stale = metrics_check_health(a->metrics, uv_hrtime() / 1000000, STALE_MS, &worker, &age_ms);
    if (stale == 0)
        snprintf(msg, size, "ok");
    else
        snprintf(msg, size, "%d worker%s stalled: worker %u silent for %llu ms", stale,
                 stale == 1 ? "" : "s", worker, (unsigned long long)age_ms);
    return stale == 0;
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct activator *a = s->data;
    stoke_info(NULL, "signal %d: shutting down", signum);
    for (unsigned i = 0; i < a->n_workers; i++)
        uv_async_send(&a->workers[i].stop);
    stoke_opsd_close(a->ops);
    a->ops = NULL;
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    int r = uv_loop_init(&w->loop);
    if (r < 0) {
        w->err = r;
        uv_sem_post(&w->started);
        return;
    }
    uv_async_init(&w->loop, &w->stop, on_stop);
    w->stop.data = w;
    uv_timer_init(&w->loop, &w->beat);
    w->beat.data = w;
    on_beat(&w->beat);
    uv_timer_start(&w->beat, on_beat, BEAT_MS, BEAT_MS);
    r = w->ctl_targets ? ctl_new(&w->loop, w->ctl_targets, w->id, w->process, w->ctl_token, &w->ctl)
                       : 0;
    if (r == 0) {
        const struct proxy_hooks hooks = {.on_poke = on_poke,
                                          .on_drained = on_drained,
                                          .data = w,
                                          .metrics = w->mw,
                                          .limits = w->limits,
                                          .worker = w->index};
        r = proxy_new(&w->loop, w->cfg, &hooks, &w->px);
        if (r < 0)
            w->px = NULL;
    }
    if (r < 0) {
        if (w->ctl)
            ctl_close(w->ctl, NULL, NULL);
        uv_close((uv_handle_t *)&w->stop, NULL);
        uv_close((uv_handle_t *)&w->beat, NULL);
    } else {
        if (w->ctl)
            ctl_set_proxy(w->ctl, w->px);
        struct stoke_route_table t;
        if (w->routes_line &&
            stoke_route_table_parse(w->routes_line, strlen(w->routes_line), &t) == 0)
            proxy_set_routes(w->px, &t); /* takes the table */
    }
    w->err = r;
    uv_sem_post(&w->started);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    r = uv_loop_close(&w->loop);
    if (r < 0)
        stoke_warn(NULL, r, "%s: loop closed with handles still open", w->id);
}

/* "--route name=IP:PORT[,IP:PORT...]": one fixed route, with the spec's
 * defaults for its timeout and queue. */
static int add_static_route(struct stoke_route_table *t, const char *arg)
{
    char name[STOKE_NAME_MAX + 1];
    const char *eq = strchr(arg, '=');
    if (!eq || (size_t)(eq - arg) > STOKE_NAME_MAX)
        return -EINVAL;
    memcpy(name, arg, (size_t)(eq - arg));
    name[eq - arg] = '\0';
    if (!stoke_is_valid_name(name) || stoke_route_table_find(t, name, strlen(name)))
        return -EINVAL;
    struct stoke_route *routes = realloc(t->routes, (t->n_routes + 1) * sizeof(*routes));
    if (!routes)
        return -ENOMEM;
    t->routes = routes;
    struct stoke_route *r = &t->routes[t->n_routes];
    struct stoke_spec defaults;
    stoke_spec_defaults(&defaults);
    memset(r, 0, sizeof(*r));
    memcpy(r->name, name, strlen(name) + 1);
    r->timeout_ms = defaults.timeout_ms;
    r->queue_max = defaults.queue.max;
    r->queue_timeout_ms = defaults.queue.timeout_ms;
    r->async = defaults.async;
    t->n_routes++; /* counted now so stoke_route_table_done() frees it */
    for (const char *p = eq + 1; *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char addr[80];
        if (n == 0 || n >= sizeof(addr))
            return -EINVAL;
        memcpy(addr, p, n);
        addr[n] = '\0';
        struct stoke_addr *eps = realloc(r->endpoints, (r->n_endpoints + 1) * sizeof(*eps));
        if (!eps)
            return -ENOMEM;
        r->endpoints = eps;
        if (stoke_addr_parse(addr, &eps[r->n_endpoints]) < 0 || eps[r->n_endpoints].is_unix)
            return -EINVAL;
        r->n_endpoints++;
        p += n + (comma ? 1 : 0);
    }
    /* The proxy finds functions by binary search: keep the table sorted. */
    for (size_t i = t->n_routes - 1; i > 0 && strcmp(t->routes[i - 1].name, t->routes[i].name) > 0;
         i--) {
        struct stoke_route tmp = t->routes[i];
        t->routes[i] = t->routes[i - 1];
        t->routes[i - 1] = tmp;
    }
    return 0;
}

static int parse_size(const char *s, size_t *ret)
{
    uint64_t v;
    if (stoke_parse_u64(s, &v) < 0 || v == 0 || v > SIZE_MAX / 4)
        return -EINVAL;
    *ret = (size_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    enum {
        O_LISTEN = 256,
        O_CONTROLLER,
        O_DOMAIN,
        O_ID,
        O_MAXHDR,
        O_MAXBODY,
        O_MAXCONN,
        O_POOL,
        O_ACCESSLOG,
        O_HDRTO,
        O_IDLETO,
        O_CONNTO,
        O_LOG,
        O_ROUTE,
        O_WORKERS,
        O_OPS,
        O_TRUSTED,
        O_TOKEN,
        O_EVENTS,
        O_EVENTS_TOKEN,
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"controller", required_argument, NULL, O_CONTROLLER},
        {"domain", required_argument, NULL, O_DOMAIN},
        {"id", required_argument, NULL, O_ID},
        {"max-header-bytes", required_argument, NULL, O_MAXHDR},
        {"max-body-bytes", required_argument, NULL, O_MAXBODY},
        {"max-connections", required_argument, NULL, O_MAXCONN},
        {"upstream-pool", required_argument, NULL, O_POOL},
        {"access-log", no_argument, NULL, O_ACCESSLOG},
        {"header-timeout", required_argument, NULL, O_HDRTO},
        {"idle-timeout", required_argument, NULL, O_IDLETO},
        {"connect-timeout", required_argument, NULL, O_CONNTO},
        {"log-level", required_argument, NULL, O_LOG},
        {"route", required_argument, NULL, O_ROUTE},
        {"workers", required_argument, NULL, O_WORKERS},
        {"ops-listen", required_argument, NULL, O_OPS},
        {"trusted-proxies", required_argument, NULL, O_TRUSTED},
        {"channel-token-file", required_argument, NULL, O_TOKEN},
        {"events", required_argument, NULL, O_EVENTS},
        {"events-token-file", required_argument, NULL, O_EVENTS_TOKEN},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct proxy_config cfg;
    struct stoke_chan_targets ctl_targets, ctl_events;
    struct stoke_route_table routes = {.gen = 0};
    bool use_ctl = true;
    const char *token_file = NULL, *events_token_file = NULL;
    char *events_token = NULL;
    char *token = NULL;
    unsigned workers = default_workers();
    struct stoke_addr ops_addr;
    bool use_ops = true;
    enum stoke_log_level level = STOKE_LOG_INFO;
    char id[64];
    size_t sz;
    uint64_t u;
    int c, r;

    proxy_config_defaults(&cfg);
    (void)stoke_chan_parse_targets(DEFAULT_CONTROLLER, &ctl_targets);
    (void)stoke_addr_parse(DEFAULT_OPS, &ops_addr);
    snprintf(id, sizeof(id), "activator-%d", (int)getpid());

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        r = 0;
        switch (c) {
        case O_LISTEN:
            r = stoke_addr_parse(optarg, &cfg.listen);
            if (r == 0 && cfg.listen.is_unix)
                r = -EINVAL;
            break;
        case O_CONTROLLER:
            use_ctl = strcmp(optarg, "none") != 0;
            r = use_ctl ? stoke_chan_parse_targets(optarg, &ctl_targets) : 0;
            break;
        case O_ROUTE:
            r = add_static_route(&routes, optarg);
            break;
        case O_WORKERS:
            r = parse_size(optarg, &sz);
            if (r == 0 && sz > MAX_WORKERS)
                r = -EINVAL;
            workers = (unsigned)sz;
            break;
        case O_OPS:
            r = stoke_opsd_parse_addr(optarg, &ops_addr, &use_ops);
            break;
        case O_TOKEN:
            token_file = optarg;
            break;
        case O_EVENTS:
            /* An IP literal, or a name (a Service's) resolved again and again. */
            r = stoke_addr_parse(optarg, &cfg.events);
            if (r == 0 && cfg.events.is_unix)
                r = -EINVAL;
            if (r < 0 && strncmp(optarg, "unix:", 5) != 0 && strchr(optarg, ',') == NULL &&
                stoke_chan_parse_targets(optarg, &ctl_events) == 0) {
                memcpy(cfg.events_host, ctl_events.t[0].host, sizeof(cfg.events_host));
                memcpy(cfg.events_port, ctl_events.t[0].port, sizeof(cfg.events_port));
                r = 0;
            }
            cfg.has_events = r == 0;
            break;
        case O_EVENTS_TOKEN:
            events_token_file = optarg;
            break;
        case O_DOMAIN:
            cfg.domain = optarg;
            break;
        case O_ID:
            snprintf(id, sizeof(id), "%s", optarg);
            break;
        case O_MAXHDR:
            r = parse_size(optarg, &cfg.max_header_bytes);
            break;
        case O_MAXBODY: /* 0: no limit (bodies stream in constant memory) */
            r = strcmp(optarg, "0") == 0 ? (cfg.max_body_bytes = 0, 0)
                                         : parse_size(optarg, &cfg.max_body_bytes);
            break;
        case O_MAXCONN:
            r = parse_size(optarg, &sz);
            cfg.max_connections = (uint32_t)(sz > UINT32_MAX ? UINT32_MAX : sz);
            break;
        case O_ACCESSLOG:
            cfg.access_log = true;
            break;
        case O_POOL:
            r = parse_size(optarg, &sz);
            cfg.max_idle_upstream = (uint32_t)(sz > UINT32_MAX ? UINT32_MAX : sz);
            break;
        case O_HDRTO:
            r = stoke_parse_duration(optarg, &cfg.header_timeout_ms);
            break;
        case O_IDLETO:
            r = stoke_parse_duration(optarg, &cfg.idle_timeout_ms);
            break;
        case O_CONNTO:
            r = stoke_parse_duration(optarg, &u);
            cfg.connect_timeout_ms = u;
            break;
        case O_LOG:
            r = stoke_log_level_parse(optarg, &level);
            break;
        case O_TRUSTED:
            r = proxy_parse_trusted(optarg, &cfg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (r < 0) {
            fprintf(stderr, "stoke-activator: bad value for --%s: %s\n", opts[c - O_LISTEN].name,
                    optarg);
            stoke_route_table_done(&routes);
            return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        stoke_route_table_done(&routes);
        return 2;
    }
    if (use_ctl && !ctl_targets.is_unix && !token_file) {
        fprintf(stderr, "stoke-activator: a TCP --controller needs --channel-token-file (the "
                        "controller refuses the channel without its token)\n");
        stoke_route_table_done(&routes);
        return 2;
    }
    if (cfg.has_events != (events_token_file != NULL)) {
        fprintf(stderr, "stoke-activator: --events and --events-token-file go together (the "
                        "token stoke-events' --token-file names)\n");
        stoke_route_table_done(&routes);
        return 2;
    }
    if (events_token_file) {
        r = stoke_token_read(events_token_file, &events_token);
        if (r < 0) {
            fprintf(stderr, "stoke-activator: --events-token-file %s: %s\n", events_token_file,
                    r == -EINVAL ? "the first line must be a token of 16 to 4096 printable bytes "
                                   "without spaces"
                                 : strerror(-r));
            stoke_route_table_done(&routes);
            return 2;
        }
        cfg.events_token = events_token;
    }
    cfg.await_routes = use_ctl;
    if (token_file) {
        r = stoke_token_read(token_file, &token);
        if (r < 0) {
            fprintf(stderr, "stoke-activator: --channel-token-file %s: %s\n", token_file,
                    r == -EINVAL ? "the first line must be a token of 16 to 4096 printable bytes "
                                   "without spaces"
                                 : strerror(-r));
            stoke_route_table_done(&routes);
            free_token(events_token);
            return 2;
        }
    }

    stoke_log_init("activator", level);
    signal(SIGPIPE, SIG_IGN);

    /* Static routes travel to each worker as a routes message, parsed
     * there into the worker's own table. */
    char *routes_line = NULL;
    if (routes.n_routes > 0) {
        routes_line = stoke_route_table_format(&routes);
        if (!routes_line) {
            stoke_route_table_done(&routes);
            free_token(token);
            free_token(events_token);
            return 1;
        }
    }
    stoke_route_table_done(&routes);

    struct activator a = {.n_workers = workers};
    struct metrics *metrics = metrics_new(workers);
    struct limits *limits = NULL;
    a.metrics = metrics;
    a.workers = calloc(workers, sizeof(*a.workers));
    if (!a.workers || !metrics || limits_new(workers, cfg.max_connections, &limits) < 0) {
        free(a.workers);
        metrics_free(metrics);
        free(routes_line);
        free_token(token);
        free_token(events_token);
        return 1;
    }
    cfg.reuse_port = workers > 1;
    int status = 0;
    unsigned started = 0;
    for (unsigned i = 0; i < workers; i++) {
        struct worker *w = &a.workers[i];
        w->cfg = &cfg;
        w->ctl_targets = use_ctl ? &ctl_targets : NULL;
        w->ctl_token = token;
        w->routes_line = routes_line;
        w->mw = metrics_worker(metrics, i);
        w->index = i;
        w->limits = limits;
        w->process = id;
        if (workers > 1)
            snprintf(w->id, sizeof(w->id), "%s-w%u", id, i);
        else
            snprintf(w->id, sizeof(w->id), "%s", id);
        uv_sem_init(&w->started, 0);
        r = uv_thread_create(&w->thread, worker_main, w);
        if (r == 0) {
            uv_sem_wait(&w->started);
            started++;
            r = w->err;
        }
        uv_sem_destroy(&w->started);
        if (r < 0) {
            char addr[80];
            stoke_addr_format(&cfg.listen, addr, sizeof(addr));
            stoke_error(NULL, r, "worker %u cannot start (listening on %s)", i, addr);
            status = 1;
            break;
        }
    }

    uv_loop_t *main_loop = uv_default_loop();
    uv_signal_init(main_loop, &a.sigint);
    uv_signal_init(main_loop, &a.sigterm);
    a.sigint.data = &a;
    a.sigterm.data = &a;
    a.n_workers = started;
    if (status == 0 && use_ops) {
        struct stoke_opsd_callbacks ops_cbs = {
            .metrics = ops_metrics, .health = ops_health, .data = &a};
        r = stoke_opsd_new(main_loop, &ops_addr, &ops_cbs, &a.ops);
        char addr[80];
        stoke_addr_format(&ops_addr, addr, sizeof(addr));
        if (r < 0) {
            stoke_error(NULL, r, "ops port cannot listen on %s (--ops-listen none disables it)",
                        addr);
            status = 1;
        } else {
            stoke_info(NULL, "ops port listening on %s", addr);
        }
    }
    if (status == 0) {
        uv_signal_start(&a.sigint, on_signal, SIGINT);
        uv_signal_start(&a.sigterm, on_signal, SIGTERM);
        char addr[80];
        stoke_addr_format(&cfg.listen, addr, sizeof(addr));
        stoke_info(NULL, "listening on %s with %u worker%s", addr, workers,
                   workers == 1 ? "" : "s");
        uv_run(main_loop, UV_RUN_DEFAULT);
    } else {
        /* Stop the workers that did start. */
        for (unsigned i = 0; i < started; i++)
            uv_async_send(&a.workers[i].stop);
        uv_close((uv_handle_t *)&a.sigint, NULL);
        uv_close((uv_handle_t *)&a.sigterm, NULL);
        uv_run(main_loop, UV_RUN_DEFAULT);
    }
    for (unsigned i = 0; i < started; i++)
        uv_thread_join(&a.workers[i].thread);
    r = uv_loop_close(main_loop);
    if (r < 0)
        stoke_warn(NULL, r, "loop closed with handles still open");
    free(a.workers);
    metrics_free(metrics);
    limits_free(limits); /* the workers that used it have ended */
    free(routes_line);
    free_token(token);
    free_token(events_token);
    return status;
}
