/* stokectl's async commands (README "Async invocations"): invoke, through
 * the activator; calls and dlq, over stoke-events' admin socket. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "output.h"

#define DEFAULT_EVENTS "unix:/run/stoke-events/events.sock"
#define DEFAULT_ACTIVATOR "http://127.0.0.1:8080"

enum { OPT_EVENTS = 0x200, OPT_ACTIVATOR, OPT_ASYNC, OPT_DATA, OPT_PATH, OPT_METHOD, OPT_ALL };

/* stoke-events' admin API: --events, else STOKE_EVENTS, else the default. */
static int connect_events(const char *events, struct client *c)
{
    const char *e = events ? events : getenv("STOKE_EVENTS");
    if (client_init(c, e && *e ? e : DEFAULT_EVENTS, NULL) < 0)
        return 1;
    c->peer = "stoke-events";
    c->hint = "is stoke-events running there? Choose another with --events or STOKE_EVENTS.";
    return 0;
}

static void print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* Sends one request to the events API and prints a JSON answer (pretty) or
 * the error. Returns the exit status. */
static int events_call(const char *events, const char *method, const char *path, const char *what,
                       bool print, struct reply *keep)
{
    struct client c = {0};
    struct reply r;
    if (connect_events(events, &c) != 0)
        return 1;
    int status = 1;
    if (client_request(&c, method, path, NULL, 0, NULL, &r) == 0) {
        if (r.status >= 200 && r.status < 300) {
            status = 0;
            if (print && r.json)
                print_json(r.json);
        } else {
            client_print_error(&c, what, &r);
        }
        if (keep && status == 0)
            *keep = r;
        else
            reply_done(&r);
    }
    client_done(&c);
    return status;
}

static int read_data(const char *arg, char **ret, size_t *ret_len)
{
    if (arg[0] != '@') {
        *ret = strdup(arg);
        *ret_len = strlen(arg);
        return *ret ? 0 : -ENOMEM;
    }
    FILE *f = strcmp(arg, "@-") == 0 ? stdin : fopen(arg + 1, "rb");
    if (!f)
        return -errno;
    struct stoke_buf b;
    stoke_buf_init(&b, 64u << 20);
    char tmp[65536];
    size_t n;
    int r = 0;
    while (r == 0 && (n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        r = stoke_buf_append(&b, tmp, n);
    if (f != stdin)
        fclose(f);
    *ret = stoke_buf_steal(&b, ret_len);
    if (!*ret) {
        *ret = strdup("");
        *ret_len = 0;
    }
    return r;
}

int cmd_invoke(struct globals *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"activator", required_argument, NULL, OPT_ACTIVATOR},
        {"async", no_argument, NULL, OPT_ASYNC},
        {"data", required_argument, NULL, 'd'},
        {"path", required_argument, NULL, OPT_PATH},
        {"method", required_argument, NULL, 'X'},
        COMMON_LONGOPTS,
    };
    const char *activator = getenv("STOKE_ACTIVATOR"), *data = NULL, *path = "/", *method = NULL;
    bool async = false;
    int opt;
    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":d:X:h", opts, NULL)) != -1) {
        switch (opt) {
        case OPT_ACTIVATOR:
            activator = optarg;
            break;
        case OPT_ASYNC:
            async = true;
            break;
        case 'd':
            data = optarg;
            break;
        case OPT_PATH:
            path = optarg;
            break;
        case 'X':
            method = optarg;
            break;
        default: {
            int st = common_option(g, "invoke", opt, argv);
            if (st >= 0)
                return st;
        }
        }
    }
    if (optind != argc - 1)
        return usage_error("invoke", "one NAME is required");
    const char *name = function_name_arg("invoke", argv[optind]);
    if (!name)
        return 1;
    if (path[0] != '/')
        return usage_error("invoke", "--path must start with '/'");
    char *body = NULL;
    size_t body_len = 0;
    if (data && read_data(data, &body, &body_len) < 0) {
        fprintf(stderr, "stokectl invoke: cannot read %s\n", data);
        return 1;
    }
    struct client c = {0};
    if (client_init(&c, activator && *activator ? activator : DEFAULT_ACTIVATOR, NULL) < 0) {
        free(body);
        return 1;
    }
    c.timeout_ms = 0; /* a synchronous call lasts as long as the function */
    c.peer = "the activator";
    c.hint = "is stoke-activator running there? Choose another with --activator or "
             "STOKE_ACTIVATOR.";
    size_t ul = strlen(path) + strlen(name) + 32;
    char *url = malloc(ul);
    int status = 1;
    struct reply r;
    if (url) {
        snprintf(url, ul, "%s%s%s", async ? "/async-function/" : "/fn/", name, path);
        if (client_request(&c,
                           method ? method
                           : data ? "POST"
                                  : "GET",
                           url, body, body_len, data ? "application/octet-stream" : NULL,
                           &r) == 0) {
            if (async && r.status == 202) {
                printf("%s\n", jstr(r.json, "id", ""));
                status = 0;
            } else if (!async) {
                fwrite(r.body.data ? r.body.data : "", 1, r.body.len, stdout);
                status = r.status >= 200 && r.status < 300 ? 0 : 1;
                if (status)
                    fprintf(stderr, "stokectl invoke: %s answered %ld\n", name, r.status);
            } else {
                client_print_error(&c, name, &r);
            }
            reply_done(&r);
        }
    }
    free(url);
    free(body);
    client_done(&c);
    return status;
}

static bool is_call_id(const char *s)
{
    size_t n = strspn(s, "0123456789abcdef");
    return n == 32 && s[n] == '\0';
}

/* The options of calls and dlq: --events, and --all FN when `all` is not
 * NULL. Returns -1 with optind at the first operand, or the exit status. */
static int parse_events_options(struct globals *g, const char *cmd, int argc, char **argv,
                                const char **events, const char **all)
{
    static const struct option opts[] = {
        {"events", required_argument, NULL, OPT_EVENTS},
        {"all", required_argument, NULL, OPT_ALL},
        COMMON_LONGOPTS,
    };
    int opt;
    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (opt == OPT_EVENTS) {
            *events = optarg;
        } else if (opt == OPT_ALL && all) {
            *all = optarg;
        } else {
            int st = common_option(g, cmd, opt == OPT_ALL ? '?' : opt, argv);
            if (st >= 0)
                return st;
        }
    }
    return -1;
}

int cmd_calls(struct globals *g, int argc, char **argv)
{
    const char *events = NULL;
    int st = parse_events_options(g, "calls", argc, argv, &events, NULL);
    if (st >= 0)
        return st;
    if (argc - optind != 2 || strcmp(argv[optind], "get") != 0)
        return usage_error("calls", "usage: stokectl calls get ID");
    const char *id = argv[optind + 1];
    if (!is_call_id(id))
        return usage_error("calls", "%s is not a call id (32 hex digits)", id);
    char path[64], what[64];
    snprintf(path, sizeof(path), "/v1/calls/%s", id);
    snprintf(what, sizeof(what), "call/%s", id);
    return events_call(events, "GET", path, what, true, NULL);
}

int cmd_dlq(struct globals *g, int argc, char **argv)
{
    const char *events = NULL, *all = NULL;
    int pst = parse_events_options(g, "dlq", argc, argv, &events, &all);
    if (pst >= 0)
        return pst;
    int n = argc - optind;
    const char *sub = n > 0 ? argv[optind] : "";
    const char *arg = n > 1 ? argv[optind + 1] : NULL;
    char path[160], what[128];
    if (strcmp(sub, "redrive") == 0 && all && n == 1) {
        if (!function_name_arg("dlq", all))
            return 1;
        snprintf(path, sizeof(path), "/v1/dlq/%s/redrive", all);
        snprintf(what, sizeof(what), "function/%s", all);
        struct reply r;
        int st = events_call(events, "POST", path, what, false, &r);
        if (st == 0) {
            printf("%s: %" PRId64 " calls redriven\n", all,
                   json_object_get_int64(json_object_object_get(r.json, "redriven")));
            reply_done(&r);
        }
        return st;
    }
    if (n != 2 || all)
        return usage_error("dlq", "usage: stokectl dlq list FN | show ID | redrive ID | "
                                  "redrive --all FN | purge FN");
    if (strcmp(sub, "list") == 0 || strcmp(sub, "purge") == 0) {
        if (!function_name_arg("dlq", arg))
            return 1;
        snprintf(path, sizeof(path), "/v1/dlq/%s", arg);
        snprintf(what, sizeof(what), "function/%s", arg);
        struct reply r;
        bool list = sub[0] == 'l';
        int st = events_call(events, list ? "GET" : "DELETE", path, what, false, &r);
        if (st != 0)
            return st;
        if (!list) {
            printf("%s: %" PRId64 " dead calls purged\n", arg,
                   json_object_get_int64(json_object_object_get(r.json, "purged")));
        } else {
            json_object *calls = json_object_object_get(r.json, "calls");
            printf("%-32s  %-18s  %8s  %6s  %s\n", "ID", "CONDITION", "ATTEMPTS", "STATUS",
                   "FINISHED_MS");
            for (size_t i = 0; i < json_object_array_length(calls); i++) {
                json_object *c = json_object_array_get_idx(calls, i);
                json_object *resp = json_object_object_get(c, "response");
                printf("%-32s  %-18s  %8" PRId64 "  %6d  %" PRId64 "\n", jstr(c, "id", ""),
                       jstr(c, "condition", ""),
                       json_object_get_int64(json_object_object_get(c, "attempts")),
                       resp ? json_object_get_int(json_object_object_get(resp, "status")) : 0,
                       json_object_get_int64(json_object_object_get(c, "finished_ms")));
            }
        }
        reply_done(&r);
        return 0;
    }
    if (!is_call_id(arg))
        return usage_error("dlq", "%s is not a call id (32 hex digits)", arg);
    snprintf(what, sizeof(what), "call/%s", arg);
    snprintf(path, sizeof(path), "/v1/calls/%s", arg);
    if (strcmp(sub, "show") == 0) {
        struct reply r;
        int st = events_call(events, "GET", path, what, false, &r);
        if (st != 0)
            return st;
        json_object *rec = json_object_object_get(r.json, "record");
        if (!rec) {
            fprintf(stderr, "stokectl dlq: call %s is %s, not dead-lettered\n", arg,
                    jstr(r.json, "state", "?"));
            st = 1;
        } else {
            print_json(rec);
        }
        reply_done(&r);
        return st;
    }
    if (strcmp(sub, "redrive") == 0) {
        struct reply r;
        int st = events_call(events, "GET", path, what, false, &r);
        if (st != 0)
            return st;
        char fn[64];
        snprintf(fn, sizeof(fn), "%s", jstr(r.json, "function", ""));
        reply_done(&r);
        snprintf(path, sizeof(path), "/v1/dlq/%s/redrive?id=%s", fn, arg);
        st = events_call(events, "POST", path, what, false, NULL);
        if (st == 0)
            printf("call/%s redriven\n", arg);
        return st;
    }
    return usage_error("dlq", "unknown subcommand %s", sub);
}
