/* stokectl delete, logs and version. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "output.h"
#include "stoke/spec.h"

int cmd_delete(struct globals *g, int argc, char **argv)
{
    struct client c = {0};
    int status;

    status = parse_common_options(g, "delete", argc, argv);
    if (status >= 0)
        return status;
    int first = first_name_arg(argc, argv);
    if (first >= argc)
        return usage_error("delete", "NAME is required");
    if (connect_client(g, &c) != 0)
        return 1;
    status = 0;
    for (int i = first; i < argc; i++) {
        const char *name = function_name_arg("delete", argv[i]);
        if (!name) {
            status = 1;
            continue;
        }
        char path[128], what[128];
        struct reply r;
        snprintf(path, sizeof(path), "/api/v1/functions/%s", name);
        snprintf(what, sizeof(what), "function/%s", name);
        if (client_request(&c, "DELETE", path, NULL, 0, NULL, &r) < 0) {
            status = 1;
            break;
        }
        if (r.status == 200) {
            printf("%s %s\n", what, jstr(r.json, "result", "deleted"));
        } else {
            client_print_error(&c, what, &r);
            status = 1;
        }
        reply_done(&r);
    }
    client_done(&c);
    return status;
}

static volatile int stop_logs;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_logs = 1;
}

/* --since: a duration ("10m") or Unix seconds, checked here so that a typo
 * is a usage error and the query needs no escaping. */
static bool is_since(const char *s)
{
    uint64_t v;
    return stoke_parse_duration(s, &v) == 0 || stoke_parse_u64(s, &v) == 0;
}

int cmd_logs(struct globals *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"follow", no_argument, NULL, 'f'},
        {"tail", required_argument, NULL, 'n'},
        {"since", required_argument, NULL, 's'},
        {"timestamps", no_argument, NULL, 't'},
        COMMON_LONGOPTS,
    };
    bool follow = false, timestamps = false;
    const char *tail = NULL, *since = NULL;
    struct client c = {0};
    int status;

    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":fh", longopts, NULL)) != -1) {
        uint64_t n;
        switch (opt) {
        case 'f':
            follow = true;
            break;
        case 'n':
            if (stoke_parse_u64(optarg, &n) < 0)
                return usage_error("logs", "--tail %s: expected a number of lines", optarg);
            tail = optarg;
            break;
        case 's':
            if (!is_since(optarg))
                return usage_error(
                    "logs", "--since %s: expected a duration (10m, 1h30m) or Unix seconds", optarg);
            since = optarg;
            break;
        case 't':
            timestamps = true;
            break;
        default:
            status = common_option(g, "logs", opt, argv);
            if (status >= 0)
                return status;
        }
    }
    if (optind >= argc)
        return usage_error("logs", "NAME is required");
    if (optind + 1 < argc)
        return usage_error("logs", "one function at a time (unexpected %s)", argv[optind + 1]);
    const char *name = function_name_arg("logs", argv[optind]);
    if (!name)
        return 1;

    char path[512];
    int n = snprintf(path, sizeof(path), "/api/v1/functions/%s/logs", name);
    const char *sep = "?";
    if (tail) {
        n += snprintf(path + n, sizeof(path) - (size_t)n, "%stail=%s", sep, tail);
        sep = "&";
    }
    if (since) {
        n += snprintf(path + n, sizeof(path) - (size_t)n, "%ssince=%s", sep, since);
        sep = "&";
    }
    if (follow) {
        n += snprintf(path + n, sizeof(path) - (size_t)n, "%sfollow=1", sep);
        sep = "&";
    }
    if (timestamps)
        (void)snprintf(path + n, sizeof(path) - (size_t)n, "%stimestamps=1", sep);

    if (connect_client(g, &c) != 0)
        return 1;
    /* Ctrl-C ends a followed stream cleanly (exit 0); a closed pipe
     * (stokectl logs x | head) ends it too, through a failed write. */
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGTERM, &sa, NULL);
    (void)signal(SIGPIPE, SIG_IGN);

    struct reply r;
    status = 1;
    if (client_stream(&c, path, stdout, &stop_logs, &r) < 0)
        goto out;
    if (r.status == 200 || (r.status == 0 && stop_logs)) {
        status = 0;
    } else {
        char what[128];
        snprintf(what, sizeof(what), "function/%s", name);
        client_print_error(&c, what, &r);
    }
    reply_done(&r);
out:
    client_done(&c);
    return status;
}

int cmd_version(struct globals *g, int argc, char **argv)
{
    struct client c = {0};
    int status;

    status = parse_common_options(g, "version", argc, argv);
    if (status >= 0)
        return status;
    if (optind < argc)
        return usage_error("version", "unexpected argument %s", argv[optind]);
    printf("stokectl " STOKE_VERSION "\n");
    fflush(stdout);
    if (connect_client(g, &c) != 0) {
        printf("server: not asked (bad --server or token file)\n");
        return 0;
    }
    c.timeout_ms = 5000;
    struct reply r;
    if (client_request(&c, "GET", "/api/v1/version", NULL, 0, NULL, &r) < 0) {
        printf("server: not reachable at %s\n", g->server);
    } else {
        if (r.status == 200 && jstr(r.json, "version", NULL))
            printf("server: %s (api %s) at %s\n", jstr(r.json, "version", "?"),
                   jstr(r.json, "api", "?"), g->server);
        else {
            client_print_error(&c, "version", &r);
            printf("server: no version from %s (HTTP %ld)\n", g->server, r.status);
        }
        reply_done(&r);
    }
    client_done(&c);
    return 0;
}
