/* stokectl: the command-line client of stoke's admin API
 * (docs/admin-api.md, docs/stokectl.1), and the autoscaler simulator. main()
 * only reads the global options and hands the rest to a command. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "commands.h"
#include "simulate.h"
#include "stoke/spec.h"

#define GLOBAL_HELP                                                                                \
    "Global options (before or after the command):\n"                                              \
    "  --server ADDR        the controller's admin API: unix:/PATH or http://IP:PORT\n"            \
    "                       (env STOKE_SERVER; default " CLIENT_DEFAULT_SERVER ")\n"               \
    "  --token-file FILE    bearer token for TCP, the file's first line\n"                         \
    "                       (env STOKE_TOKEN_FILE)\n"

struct command {
    const char *name;
    int (*run)(struct globals *g, int argc, char **argv);
    const char *summary;
    const char *help;
};

static int run_simulate(struct globals *g, int argc, char **argv)
{
    (void)g;
    return simulate_main(argc, argv);
}

static const struct command commands[] = {
    {"apply", cmd_apply, "create or update functions from specs",
     "usage: stokectl apply -f FILE|DIR|- [-f ...] [--wait] [--timeout DUR]\n"
     "\n"
     "Creates or updates the functions in stoke/v1 Function or Knative\n"
     "serving.knative.dev/v1 Service specs. Every file is parsed here first: if any\n"
     "is bad, its file:line:column, field and message are printed and nothing is\n"
     "sent. Then each is sent as it is (PUT /api/v1/functions/NAME) and\n"
     "function/NAME created|configured|unchanged is printed.\n"
     "\n"
     "  -f, --filename F     a spec file, a directory (its *.yaml and *.yml files,\n"
     "                       sorted by name) or - for standard input; repeatable\n"
     "  -w, --wait           then wait until every function is ready, showing\n"
     "                       progress on stderr; fail if one cannot become ready\n"
     "                       (e.g. its image is missing, or it keeps crashing)\n"
     "  --timeout DUR        how long --wait waits (e.g. 30s, 2m; default: each\n"
     "                       spec's queue.timeout)\n"},
    {"get", cmd_get, "list functions, or show one",
     "usage: stokectl get [NAME ...] [-o table|json|yaml]\n"
     "\n"
     "Lists every function (or the named ones) with its replicas and scale bounds:\n"
     "NAME, READY (ready/desired replicas), PAUSED, STOPPED, MIN, MAX (- for\n"
     "unbounded), TARGET (in-flight requests per replica), REVISION, IMAGE.\n"
     "\n"
     "  -o, --output FORMAT  table (default), json (the API's objects) or yaml\n"},
    {"describe", cmd_describe, "show a function's spec and status",
     "usage: stokectl describe NAME\n"
     "\n"
     "Shows a function's spec in effect (revision, image, scale bounds, timeouts,\n"
     "resources) and its status: replicas and their states, cold starts by tier,\n"
     "the last error, requests and resource usage.\n"},
    {"delete", cmd_delete, "delete functions",
     "usage: stokectl delete NAME [NAME ...]\n"
     "\n"
     "Deletes the functions: their specs are removed, and their replicas drain\n"
     "and go.\n"},
    {"logs", cmd_logs, "print a function's logs",
     "usage: stokectl logs NAME [-f] [--tail N] [--since DUR] [--timestamps]\n"
     "\n"
     "Prints the stdout and stderr of the function's containers, each line\n"
     "prefixed with [REPLICA].\n"
     "\n"
     "  -f, --follow         keep printing new lines (and those of replicas started\n"
     "                       later) until Ctrl-C or the function is deleted\n"
     "  --tail N             the last N lines of each replica\n"
     "  --since DUR|SECONDS  lines newer than a duration (10m) or a Unix time\n"
     "  --timestamps         prefix each line with its time\n"},
    {"top", cmd_top, "per-function usage",
     "usage: stokectl top [NAME ...]\n"
     "\n"
     "Shows per function: replicas (ready/desired), requests per second and\n"
     "concurrency over the last second, CPU seconds, memory in use and GB-seconds\n"
     "(memory limit x time running) since the controller started.\n"},
    {"invoke", cmd_invoke, "call a function, or queue an async call",
     "usage: stokectl invoke NAME [--async] [-d DATA|@FILE|@-] [--path P] [-X METHOD]\n"
     "\n"
     "Calls the function through the activator and prints its answer's body; with\n"
     "--async, queues the call (stoke-events) and prints its id (see calls get).\n"
     "\n"
     "  --activator URL      the activator (env STOKE_ACTIVATOR; default\n"
     "                       http://127.0.0.1:8080)\n"
     "  -d, --data DATA      the body (POST unless -X): text, @FILE or @- (stdin)\n"
     "  --path P             the function's path (default /)\n"
     "  -X, --method M       the method (default GET, or POST with a body)\n"},
    {"calls", cmd_calls, "show an async call",
     "usage: stokectl calls get ID [--events ADDR]\n"
     "\n"
     "Prints an async call's state, attempts, times and stored answer (JSON).\n"
     "\n"
     "  --events ADDR        stoke-events' admin API (env STOKE_EVENTS; default\n"
     "                       unix:/run/stoke-events/events.sock)\n"},
    {"dlq", cmd_dlq, "list, show, redrive and purge dead-lettered calls",
     "usage: stokectl dlq list FN | show ID | redrive ID | redrive --all FN | purge FN\n"
     "\n"
     "A function's dead-letter list: async calls whose retries were used up or\n"
     "that grew older than async.maxEventAge. show prints a call's record;\n"
     "redrive queues calls again as new (no attempts, a fresh age); purge\n"
     "deletes the list.\n"
     "\n"
     "  --events ADDR        stoke-events' admin API (env STOKE_EVENTS; default\n"
     "                       unix:/run/stoke-events/events.sock)\n"},
    {"version", cmd_version, "print the client's and the server's versions",
     "usage: stokectl version\n"
     "\n"
     "Prints stokectl's version, then the server's when it answers (the exit\n"
     "status is 0 either way).\n"},
    {"simulate", run_simulate, "run the autoscaler on a concurrency trace",
     "usage: stokectl simulate -f SPEC TRACE.csv [--ready-delay DUR] [--tick DUR] [-v]\n"
     "\n"
     "Runs the controller's autoscaler on a trace of per-second concurrency and\n"
     "prints second,desired,ready,panic per decision. Needs no server.\n"
     "See stokectl simulate --help.\n"},
    {"help", NULL, "show the help of a command", "usage: stokectl help [COMMAND]\n"},
};

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

bool print_help(const char *cmd, FILE *f)
{
    if (cmd) {
        const struct command *c = find_command(cmd);
        if (!c)
            return false;
        fprintf(f, "%s\n%s", c->help, strcmp(cmd, "simulate") == 0 ? "" : GLOBAL_HELP);
        return true;
    }
    fprintf(f, "usage: stokectl [--server ADDR] [--token-file FILE] COMMAND [ARGS]\n"
               "\n"
               "The command-line client of stoke's admin API.\n"
               "\n"
               "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n" GLOBAL_HELP "\n"
               "Run 'stokectl help COMMAND' or 'stokectl COMMAND --help' for a command's "
               "options.\n"
               "Exit status: 0 success, 1 failure, 2 usage error.\n");
    return true;
}

int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "stokectl%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nRun 'stokectl %s%s--help' for usage.\n", cmd ? cmd : "", cmd ? " " : "");
    return EXIT_USAGE;
}

int common_option(struct globals *g, const char *cmd, int opt, char **argv)
{
    switch (opt) {
    case OPT_SERVER:
        g->server = optarg;
        return -1;
    case OPT_TOKEN_FILE:
        g->token_file = optarg;
        return -1;
    case OPT_HELP:
        print_help(cmd, stdout);
        return 0;
    case ':':
        return usage_error(cmd, "%s needs a value", argv[optind - 1]);
    default:
        return usage_error(cmd, "unknown option %s", argv[optind - 1]);
    }
}

int parse_common_options(struct globals *g, const char *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {COMMON_LONGOPTS};
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        int status = common_option(g, cmd, opt, argv);
        if (status >= 0)
            return status;
    }
    return -1;
}

int first_name_arg(int argc, char **argv)
{
    int first = optind;
    if (first < argc && (strcmp(argv[first], "function") == 0 ||
                         strcmp(argv[first], "functions") == 0 || strcmp(argv[first], "fn") == 0))
        first++;
    return first;
}

int connect_client(const struct globals *g, struct client *c)
{
    return client_init(c, g->server, g->token_file) < 0 ? 1 : 0;
}

const char *function_name_arg(const char *cmd, const char *arg)
{
    const char *name = arg;
    if (strncmp(arg, "function/", 9) == 0)
        name = arg + 9;
    else if (strncmp(arg, "functions/", 10) == 0)
        name = arg + 10;
    if (!stoke_is_valid_name(name)) {
        fprintf(stderr,
                "stokectl %s: %s is not a function name (a DNS label: a-z, 0-9 and '-', "
                "1..63, starting with a letter)\n",
                cmd, arg);
        return NULL;
    }
    return name;
}

/* Reads --server/--token-file (with "=VALUE" or as the next argument)
 * before the command. Returns the index of the command, or -(exit status). */
static int global_options(struct globals *g, int argc, char **argv)
{
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        const char *a = argv[i];
        const char **dst = NULL;
        size_t n = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help(NULL, stdout);
            return 0;
        }
        if (strcmp(a, "--version") == 0)
            break; /* the command: as "version" */
        if (strncmp(a, "--server", 8) == 0 && (a[8] == '\0' || a[8] == '=')) {
            dst = &g->server;
            n = 8;
        } else if (strncmp(a, "--token-file", 12) == 0 && (a[12] == '\0' || a[12] == '=')) {
            dst = &g->token_file;
            n = 12;
        } else {
            return -usage_error(NULL, "unknown option %s", a);
        }
        if (a[n] == '=') {
            *dst = a + n + 1;
        } else if (i + 1 < argc) {
            *dst = argv[++i];
        } else {
            return -usage_error(NULL, "%s needs a value", a);
        }
        i++;
    }
    return i;
}

int main(int argc, char **argv)
{
    struct globals g = {
        .server = getenv("STOKE_SERVER"),
        .token_file = getenv("STOKE_TOKEN_FILE"),
    };
    if (!g.server || !g.server[0])
        g.server = CLIENT_DEFAULT_SERVER;

    int i = global_options(&g, argc, argv);
    if (i <= 0)
        return -i;
    if (i >= argc) {
        print_help(NULL, stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[i];
    if (strcmp(name, "--version") == 0)
        name = "version";
    if (strcmp(name, "help") == 0) {
        if (i + 1 >= argc) {
            print_help(NULL, stdout);
            return 0;
        }
        if (i + 2 < argc)
            return usage_error("help", "expected one command name");
        if (!print_help(argv[i + 1], stdout))
            return usage_error(NULL, "unknown command %s", argv[i + 1]);
        return 0;
    }
    const struct command *cmd = find_command(name);
    if (!cmd)
        return usage_error(NULL, "unknown command %s", name);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "stokectl: cannot initialise libcurl\n");
        return 1;
    }
    int status = cmd->run(&g, argc - i, argv + i);
    curl_global_cleanup();
    return status;
}
