/* stokectl apply: parse every spec here, send them only if all are good,
 * then (--wait) follow each function's status until it is ready or cannot
 * be. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "output.h"
#include "stoke/spec.h"

#define WAIT_POLL_MS 200
#define MAX_INPUTS 4096
/* Read a little past the spec cap, so the parser names the file as too big. */
#define READ_CAP (STOKE_SPEC_MAX_BYTES + 1)

struct input {
    char *path; /* owned: the file as named, or "<stdin>" */
    struct stoke_buf bytes;
    struct stoke_spec spec;
    char revision[17];
    bool sent;
    /* The error the status showed when the PUT was answered: an error of
     * the previous revision that --wait must not take for the new one's. */
    char *old_error; /* owned; "" when none */
    int64_t old_failures;
};

struct inputs {
    struct input *v;
    size_t len, cap;
};

static void inputs_done(struct inputs *in)
{
    for (size_t i = 0; i < in->len; i++) {
        free(in->v[i].path);
        free(in->v[i].old_error);
        stoke_buf_done(&in->v[i].bytes);
        stoke_spec_done(&in->v[i].spec);
    }
    free(in->v);
    memset(in, 0, sizeof(*in));
}

static struct input *inputs_add(struct inputs *in, const char *path)
{
    if (in->len == MAX_INPUTS) {
        fprintf(stderr, "stokectl apply: more than %d files\n", MAX_INPUTS);
        return NULL;
    }
    if (in->len == in->cap) {
        size_t cap = in->cap ? in->cap * 2 : 8;
        struct input *v = realloc(in->v, cap * sizeof(*v));
        if (!v)
            goto oom;
        in->v = v;
        in->cap = cap;
    }
    struct input *it = &in->v[in->len];
    memset(it, 0, sizeof(*it));
    stoke_buf_init(&it->bytes, READ_CAP);
    it->path = strdup(path);
    if (!it->path)
        goto oom;
    in->len++;
    return it;
oom:
    fprintf(stderr, "stokectl apply: out of memory\n");
    return NULL;
}

/* Reads `f` whole into `b`; returns 0, -EFBIG past READ_CAP, or -errno. */
static int read_stream(FILE *f, struct stoke_buf *b)
{
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        size_t room = b->limit - b->len;
        if (n > room) {
            (void)stoke_buf_append(b, chunk, room);
            return -EFBIG;
        }
        int r = stoke_buf_append(b, chunk, n);
        if (r < 0)
            return r;
    }
    return ferror(f) ? (errno > 0 ? -errno : -EIO) : 0;
}

static int read_input(struct input *it, FILE *f)
{
    int r = read_stream(f, &it->bytes);
    if (r == -EFBIG) {
        fprintf(stderr, "%s: larger than %d bytes (STOKE_SPEC_MAX_BYTES)\n", it->path,
                STOKE_SPEC_MAX_BYTES);
        return r;
    }
    if (r < 0)
        fprintf(stderr, "%s: %s\n", it->path, strerror(-r));
    return r;
}

static int add_file(struct inputs *in, const char *path)
{
    struct input *it = inputs_add(in, path);
    if (!it)
        return -ENOMEM;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int err = errno;
        fprintf(stderr, "%s: %s\n", path, strerror(err));
        return -err;
    }
    int r = read_input(it, f);
    fclose(f);
    return r;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_spec_name(const char *name)
{
    size_t n = strlen(name);
    if (name[0] == '.')
        return false; /* editors' and stoke's own temporary files */
    return (n > 5 && strcmp(name + n - 5, ".yaml") == 0) ||
           (n > 4 && strcmp(name + n - 4, ".yml") == 0);
}

/* A directory's *.yaml and *.yml regular files (not its subdirectories),
 * in byte order of their names. */
static int add_dir(struct inputs *in, const char *dir)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    size_t len = 0, cap = 0;
    int r = 0;
    if (!d) {
        r = -errno;
        fprintf(stderr, "%s: %s\n", dir, strerror(-r));
        return r;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_spec_name(de->d_name))
            continue;
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **v = realloc(names, ncap * sizeof(*v));
            if (!v) {
                r = -ENOMEM;
                goto out;
            }
            names = v;
            cap = ncap;
        }
        names[len] = strdup(de->d_name);
        if (!names[len]) {
            r = -ENOMEM;
            goto out;
        }
        len++;
    }
    qsort(names, len, sizeof(*names), cmp_names);
    size_t added = 0;
    for (size_t i = 0; i < len && r == 0; i++) {
        size_t n = strlen(dir) + strlen(names[i]) + 2;
        char *path = malloc(n);
        if (!path) {
            r = -ENOMEM;
            break;
        }
        snprintf(path, n, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", names[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            r = add_file(in, path);
            added++;
        }
        free(path);
    }
    if (r == 0 && added == 0) {
        fprintf(stderr, "%s: no *.yaml or *.yml files in this directory\n", dir);
        r = -ENOENT;
    }
out:
    if (r == -ENOMEM)
        fprintf(stderr, "stokectl apply: out of memory\n");
    for (size_t i = 0; i < len; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return r;
}

static int add_arg(struct inputs *in, const char *arg)
{
    if (strcmp(arg, "-") == 0) {
        struct input *it = inputs_add(in, "<stdin>");
        return it ? read_input(it, stdin) : -ENOMEM;
    }
    struct stat st;
    if (stat(arg, &st) < 0) {
        int err = errno;
        fprintf(stderr, "%s: %s\n", arg, strerror(err));
        return -err;
    }
    return S_ISDIR(st.st_mode) ? add_dir(in, arg) : add_file(in, arg);
}

static void on_warning(const struct stoke_diag *w, void *data)
{
    (void)data;
    char msg[1024];
    stoke_diag_format(w, msg, sizeof(msg));
    fprintf(stderr, "warning: %s\n", msg);
}

/* Parses every input; prints each refusal. Returns the number refused. */
static size_t parse_all(struct inputs *in)
{
    size_t bad = 0;
    for (size_t i = 0; i < in->len; i++) {
        struct input *it = &in->v[i];
        struct stoke_diag diag = {0};
        if (stoke_spec_parse_ex(it->bytes.data ? it->bytes.data : "", it->bytes.len, it->path,
                                &it->spec, &diag, on_warning, NULL) < 0) {
            char msg[1024];
            stoke_diag_format(&diag, msg, sizeof(msg));
            fprintf(stderr, "%s\n", msg);
            bad++;
            continue;
        }
        stoke_spec_revision(&it->spec, it->revision);
        /* The same function twice: the server would keep the last one, and
         * the user likely did not mean that. */
        for (size_t j = 0; j < i; j++) {
            if (in->v[j].spec.name[0] && strcmp(in->v[j].spec.name, it->spec.name) == 0) {
                fprintf(stderr, "%s: function %s is also defined in %s\n", it->path, it->spec.name,
                        in->v[j].path);
                bad++;
                break;
            }
        }
    }
    return bad;
}

/* A 400's error reads "body:LINE:COLUMN: ..."; the body is the file's bytes
 * as read, so the position is the file's. */
static void print_refusal(const struct client *c, const struct input *it, const struct reply *r)
{
    const char *err = reply_error(r);
    char what[128];
    snprintf(what, sizeof(what), "function/%s", it->spec.name);
    if (r->status == 400 && err && strncmp(err, "body:", 5) == 0) {
        const char *field = jstr(r->json, "field", NULL);
        fprintf(stderr, "%s:%s\n", it->path, err + 5);
        fprintf(stderr, "stokectl apply: the controller refused %s from %s%s%s%s\n", what, it->path,
                field ? " (field " : "", field ? field : "", field ? ")" : "");
        return;
    }
    client_print_error(c, what, r);
}

static int send_one(struct client *c, struct input *it)
{
    char path[128];
    struct reply r;
    snprintf(path, sizeof(path), "/api/v1/functions/%s", it->spec.name);
    const char *p = it->bytes.data ? it->bytes.data : "";
    p += strspn(p, " \t\r\n");
    const char *type = *p == '{' ? "application/json" : "application/yaml";
    if (client_request(c, "PUT", path, it->bytes.data ? it->bytes.data : "", it->bytes.len, type,
                       &r) < 0)
        return -EIO;
    int ret = -EPROTO;
    if (r.status == 200 || r.status == 201) {
        printf("function/%s %s\n", it->spec.name,
               jstr(r.json, "result", r.status == 201 ? "created" : "configured"));
        fflush(stdout);
        it->sent = true;
        /* The revision the server put in effect is the one to wait for; the
         * local hash is only the fallback (they are the same function). */
        json_object *st = jget(r.json, "status");
        const char *rev = jstr(st, "revision", NULL);
        if (rev && strlen(rev) == 16)
            memcpy(it->revision, rev, 17);
        it->old_error = strdup(jstr(st, "last_error", ""));
        it->old_failures = jint(st, "failures", 0);
        ret = 0;
    } else {
        print_refusal(c, it, &r);
    }
    reply_done(&r);
    return ret;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* "0/1 ready (creating)", "1/2 ready (1 ready, 1 probing)": what the
 * replicas are doing, for the progress lines. */
static void progress_text(json_object *st, char *buf, size_t size)
{
    static const char *const states[] = {"creating", "starting", "probing",  "ready",   "retiring",
                                         "pausing",  "paused",   "stopping", "stopped", "created"};
    size_t counts[sizeof(states) / sizeof(states[0])] = {0};
    json_object *reps = jget(st, "replicas");
    size_t n =
        reps && json_object_is_type(reps, json_type_array) ? json_object_array_length(reps) : 0;
    size_t kinds = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = jstr(json_object_array_get_idx(reps, i), "state", "");
        for (size_t k = 0; k < sizeof(states) / sizeof(states[0]); k++) {
            if (strcmp(s, states[k]) == 0 && strcmp(s, "ready") != 0) {
                kinds += counts[k] == 0;
                counts[k]++;
            }
        }
    }
    int len = snprintf(buf, size, "%" PRId64 "/%" PRId64 " ready", jint(st, "ready", 0),
                       jint(st, "desired", 0));
    if (len < 0 || (size_t)len >= size)
        return;
    size_t off = (size_t)len;
    const char *sep = " (";
    for (size_t k = 0; k < sizeof(states) / sizeof(states[0]); k++) {
        if (counts[k] == 0 || strcmp(states[k], "ready") == 0)
            continue; /* the ready ones are counted already */
        int w = kinds == 1 && counts[k] == 1
                    ? snprintf(buf + off, size - off, "%s%s", sep, states[k])
                    : snprintf(buf + off, size - off, "%s%zu %s", sep, counts[k], states[k]);
        if (w < 0 || (size_t)w >= size - off)
            return;
        off += (size_t)w;
        sep = ", ";
    }
    /* Without the time left: a countdown would print a line every poll. */
    if (jint(st, "backoff_ms", 0) > 0) {
        int w = snprintf(buf + off, size - off, "%sbacking off", sep);
        if (w < 0 || (size_t)w >= size - off)
            return;
        off += (size_t)w;
        sep = ", ";
    }
    if (n == 0 && jint(st, "desired", 0) == 0) {
        int w = snprintf(buf + off, size - off, "%sno replicas wanted", sep);
        if (w < 0 || (size_t)w >= size - off)
            return;
        off += (size_t)w;
        sep = ", ";
    }
    if (strcmp(sep, ", ") == 0)
        snprintf(buf + off, size - off, ")");
}

static void print_last_status(const char *name, json_object *st)
{
    if (!st) {
        fprintf(stderr, "%s: no status was read\n", name);
        return;
    }
    char prog[256];
    progress_text(st, prog, sizeof(prog));
    char backoff[32];
    int64_t ms = jint(st, "backoff_ms", 0);
    format_ms(ms > 0 ? (uint64_t)ms : 0, backoff, sizeof(backoff));
    fprintf(stderr,
            "%s: last status: %s; revision %s; failures %" PRId64
            ", next try in %s; last error: %s\n",
            name, prog, jstr(st, "revision", "-"), jint(st, "failures", 0), backoff,
            jstr(st, "last_error", "")[0] ? jstr(st, "last_error", "") : "none");
}

struct waiting {
    struct input *in;
    uint64_t deadline_ms;
    uint64_t timeout_ms;
    json_object *last; /* owned: the last status read */
    char shown[256];   /* the last progress line printed */
    bool done;
};

/* One look at a function's status. Returns 1 when ready, 0 to look again,
 * -1 when it failed (printed). */
static int check_one(struct client *c, struct waiting *w)
{
    char path[160];
    struct reply r;
    const char *name = w->in->spec.name;
    snprintf(path, sizeof(path), "/api/v1/functions/%s/status", name);
    if (client_request(c, "GET", path, NULL, 0, NULL, &r) < 0)
        return -1;
    int ret = 0;
    if (r.status == 503)
        goto out; /* the controller is starting: ask again */
    if (r.status != 200 || !r.json) {
        char what[128];
        snprintf(what, sizeof(what), "function/%s", name);
        client_print_error(c, what, &r);
        ret = -1;
        goto out;
    }
    json_object_put(w->last);
    w->last = json_object_get(r.json);

    char prog[256];
    progress_text(r.json, prog, sizeof(prog));
    if (strcmp(prog, w->shown) != 0) {
        fprintf(stderr, "%s: %s\n", name, prog);
        snprintf(w->shown, sizeof(w->shown), "%s", prog);
    }
    /* The status may still be the previous revision's for a moment. */
    bool ours = strcmp(jstr(r.json, "revision", w->in->revision), w->in->revision) == 0;
    const char *err = jstr(r.json, "last_error", "");
    int64_t failures = jint(r.json, "failures", 0);
    /* An error is the new spec's once the count went down (a replica came
     * up, or the count restarted) and up again, or the error is another. */
    if (failures < w->in->old_failures)
        w->in->old_failures = failures;
    bool new_error =
        failures > w->in->old_failures || (w->in->old_error && strcmp(err, w->in->old_error) != 0);
    if (ours && jbool(r.json, "ready_condition", 0)) {
        printf("function/%s ready\n", name);
        fflush(stdout);
        ret = 1;
    } else if (ours && err[0] && failures > 0 && new_error) {
        fprintf(stderr, "stokectl apply: function/%s cannot become ready: %s\n", name, err);
        print_last_status(name, r.json);
        ret = -1;
    } else if (now_ms() >= w->deadline_ms) {
        char d[32];
        format_ms(w->timeout_ms, d, sizeof(d));
        fprintf(stderr, "stokectl apply: function/%s is not ready after %s\n", name, d);
        if (!ours)
            fprintf(stderr, "%s: the controller still reports revision %s, not %s\n", name,
                    jstr(r.json, "revision", "-"), w->in->revision);
        print_last_status(name, r.json);
        ret = -1;
    }
out:
    reply_done(&r);
    return ret;
}

static int wait_all(struct client *c, struct inputs *in, bool have_timeout, uint64_t timeout_ms)
{
    struct waiting *ws = calloc(in->len, sizeof(*ws));
    size_t n = 0, left;
    int failed = 0;
    if (!ws) {
        fprintf(stderr, "stokectl apply: out of memory\n");
        return 1;
    }
    uint64_t start = now_ms();
    for (size_t i = 0; i < in->len; i++) {
        if (!in->v[i].sent)
            continue;
        ws[n].in = &in->v[i];
        ws[n].timeout_ms = have_timeout ? timeout_ms : in->v[i].spec.queue.timeout_ms;
        ws[n].deadline_ms = start + ws[n].timeout_ms;
        n++;
    }
    left = n;
    while (left > 0) {
        for (size_t i = 0; i < n; i++) {
            if (ws[i].done)
                continue;
            int r = check_one(c, &ws[i]);
            if (r != 0) {
                ws[i].done = true;
                left--;
                failed += r < 0;
            }
        }
        if (left > 0)
            sleep_ms(WAIT_POLL_MS);
    }
    for (size_t i = 0; i < n; i++)
        json_object_put(ws[i].last);
    free(ws);
    return failed ? 1 : 0;
}

int cmd_apply(struct globals *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"filename", required_argument, NULL, 'f'},
        {"wait", no_argument, NULL, 'w'},
        {"timeout", required_argument, NULL, 't'},
        COMMON_LONGOPTS,
    };
    const char **files = NULL;
    size_t nfiles = 0;
    bool wait = false, have_timeout = false, stdin_used = false;
    uint64_t timeout_ms = 0;
    struct inputs in = {0};
    struct client c = {0};
    int status = EXIT_USAGE;

    files = calloc((size_t)argc, sizeof(*files));
    if (!files) {
        fprintf(stderr, "stokectl apply: out of memory\n");
        return 1;
    }
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":f:wh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'f':
            if (strcmp(optarg, "-") == 0 && stdin_used) {
                status = usage_error("apply", "-f - given twice");
                goto out;
            }
            stdin_used |= strcmp(optarg, "-") == 0;
            files[nfiles++] = optarg;
            break;
        case 'w':
            wait = true;
            break;
        case 't':
            if (stoke_parse_duration(optarg, &timeout_ms) < 0 || timeout_ms == 0) {
                status = usage_error("apply", "--timeout %s: expected a duration such as 30s or 2m",
                                     optarg);
                goto out;
            }
            have_timeout = true;
            break;
        default:
            status = common_option(g, "apply", opt, argv);
            if (status >= 0)
                goto out;
        }
    }
    if (optind < argc) {
        status =
            usage_error("apply", "unexpected argument %s (specs are given with -f)", argv[optind]);
        goto out;
    }
    if (nfiles == 0) {
        status = usage_error("apply", "-f FILE|DIR|- is required");
        goto out;
    }
    if (have_timeout && !wait) {
        status = usage_error("apply", "--timeout is for --wait");
        goto out;
    }

    status = 1;
    for (size_t i = 0; i < nfiles; i++) {
        if (add_arg(&in, files[i]) < 0)
            goto out;
    }
    size_t bad = parse_all(&in);
    if (bad > 0) {
        fprintf(stderr, "stokectl apply: %zu of %zu spec%s refused; nothing was sent\n", bad,
                in.len, in.len == 1 ? "" : "s");
        goto out;
    }
    if (connect_client(g, &c) != 0)
        goto out;
    size_t failed = 0;
    for (size_t i = 0; i < in.len; i++) {
        int r = send_one(&c, &in.v[i]);
        if (r == -EIO) {
            /* The server is unreachable: the others would fail the same way. */
            failed += in.len - i;
            break;
        }
        failed += r < 0;
    }
    status = failed ? 1 : 0;
    if (wait && wait_all(&c, &in, have_timeout, timeout_ms) != 0)
        status = 1;
out:
    client_done(&c);
    inputs_done(&in);
    free(files);
    return status;
}
