/* stokectl simulate: the autoscaler on a trace; see simulate.h.
 *
 * The model. Time runs second by second from 0 to the trace's last second.
 * Each second, the trace's concurrency for it (if the trace has that second:
 * a missing second is a gap, as when no activator reports) goes into the
 * metric window, as the controller does with the activators' reports (a 0
 * while at zero is silence: stoke_autoscaler_record()). Every
 * tick (second % tick == 0) the autoscaler decides; between ticks it also
 * decides on a poke, as the controller does: when the second has load, no
 * replica is ready and none is desired. Replicas desired become ready
 * `--ready-delay` later (default 1 s, about a container start plus its first
 * readiness probe; a paused replica is much faster, a pulled image much
 * slower); replicas no longer desired vanish at once, the ones still starting
 * first. The load is the trace whatever the replicas: an open-loop model.
 *
 * Output: a header line, then per decision `second,desired,ready,panic`,
 * ready being the count after the decision took effect at that second;
 * `-v` appends the stable and panic averages. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simulate.h"
#include "stoke/autoscale.h"
#include "stoke/diag.h"
#include "stoke/spec.h"
#include "stoke/util.h"

#define TRACE_MAX_BYTES (64u * 1024 * 1024)
#define TRACE_MAX_SECOND (31u * 24 * 3600) /* a month of seconds */
#define MAX_DURATION_MS (3600u * 1000)     /* --tick and --ready-delay */
#define TRACE_HEADER "second,concurrency"

struct sample {
    uint64_t second;
    double value;
};

struct trace {
    struct sample *v;
    size_t len, cap;
};

/* Replicas starting, ready at `at_ms`: a FIFO, times never decreasing. */
struct starting {
    uint64_t at_ms;
    uint32_t n;
};

struct fleet {
    uint32_t ready;
    uint64_t starting_n; /* replicas in `starting` */
    struct starting *starting;
    size_t first, len, cap;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: stokectl simulate -f SPEC TRACE.csv [--ready-delay DUR] [--tick DUR] [-v]\n"
               "\n"
               "Runs the autoscaler on a trace of per-second concurrency (CSV with the header\n"
               "\"" TRACE_HEADER "\"; '#' lines are comments; a missing second is a gap\n"
               "in the metrics, not zero) and prints second,desired,ready,panic per decision.\n"
               "\n"
               "  -f SPEC              the function's spec (stoke/v1 or Knative Service)\n"
               "  --ready-delay DUR    a desired replica is ready this long after (default 1s)\n"
               "  --tick DUR           decision period, whole seconds (default 2s)\n"
               "  -v, --verbose        also print the stable and panic averages\n");
}

static int read_file(const char *path, struct stoke_buf *ret)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    int r = 0;
    char chunk[65536];
    size_t n;
    errno = 0;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        r = stoke_buf_append(ret, chunk, n);
        if (r < 0)
            goto out;
    }
    if (ferror(f))
        r = errno > 0 ? -errno : -EIO; /* e.g. -EISDIR */
out:
    fclose(f);
    return r;
}

/* A concurrency: plain decimal, finite, >= 0. strtod alone would take
 * leading spaces, "nan", "inf" and hex. */
static int parse_concurrency(const char *s, double *ret)
{
    if (!((*s >= '0' && *s <= '9') || *s == '.'))
        return -EINVAL;
    for (const char *p = s; *p; p++) {
        if (*p == 'x' || *p == 'X')
            return -EINVAL;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < 0)
        return -EINVAL;
    *ret = v;
    return 0;
}

/* Doubles the array `v` of *cap elements of `size` bytes (or allocates 64
 * of them) and updates *cap. Returns the new array, or NULL on OOM with `v`
 * and *cap unchanged. */
static void *grow(void *v, size_t *cap, size_t size)
{
    size_t n = *cap ? *cap * 2 : 64;
    if (n > SIZE_MAX / size)
        return NULL;
    void *nv = realloc(v, n * size);
    if (nv)
        *cap = n;
    return nv;
}

static int trace_push(struct trace *t, uint64_t second, double value)
{
    if (t->len == t->cap) {
        struct sample *v = grow(t->v, &t->cap, sizeof(*v));
        if (!v)
            return -ENOMEM;
        t->v = v;
    }
    t->v[t->len].second = second;
    t->v[t->len].value = value;
    t->len++;
    return 0;
}

/* Parses the CSV in `buf` (modified in place). Returns 0, or -EINVAL after
 * printing file:line: message, or -ENOMEM. */
static int trace_parse(char *buf, size_t len, const char *path, struct trace *t)
{
    unsigned lineno = 0;
    bool header = false;
    char *p = buf, *end = buf + len;
    const char *what = NULL;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line = p;
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        p = nl ? nl + 1 : end;
        lineno++;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        line[n] = '\0';
        if (strlen(line) != n) {
            what = "NUL byte in line";
            goto bad;
        }
        if (n == 0 || line[0] == '#')
            continue;
        if (!header) {
            if (strcmp(line, TRACE_HEADER) != 0) {
                what = "expected the header \"" TRACE_HEADER "\"";
                goto bad;
            }
            header = true;
            continue;
        }
        char *comma = strchr(line, ',');
        if (!comma || strchr(comma + 1, ',')) {
            what = "expected two fields: second,concurrency";
            goto bad;
        }
        *comma = '\0';
        uint64_t second;
        double value;
        if (stoke_parse_u64(line, &second) < 0 || second > TRACE_MAX_SECOND) {
            fprintf(stderr, "%s:%u: second: not a whole number of seconds in 0..%u\n", path, lineno,
                    TRACE_MAX_SECOND);
            return -EINVAL;
        }
        if (t->len > 0 && second <= t->v[t->len - 1].second) {
            fprintf(stderr,
                    "%s:%u: second: %" PRIu64 " is not after the previous line's %" PRIu64 "\n",
                    path, lineno, second, t->v[t->len - 1].second);
            return -EINVAL;
        }
        if (parse_concurrency(comma + 1, &value) < 0) {
            what = "concurrency: not a finite decimal number >= 0";
            goto bad;
        }
        int r = trace_push(t, second, value);
        if (r < 0)
            return r;
    }
    if (!header) {
        fprintf(stderr, "%s: no \"" TRACE_HEADER "\" header\n", path);
        return -EINVAL;
    }
    if (t->len == 0) {
        fprintf(stderr, "%s: no data lines\n", path);
        return -EINVAL;
    }
    return 0;
bad:
    fprintf(stderr, "%s:%u: %s\n", path, lineno, what);
    return -EINVAL;
}

/* Moves the fleet toward `desired` at `now_ms`. */
static int fleet_apply(struct fleet *f, uint32_t desired, uint64_t now_ms, uint64_t delay_ms)
{
    uint64_t have = f->ready + f->starting_n;
    if (desired > have) {
        uint32_t more = (uint32_t)(desired - have);
        if (delay_ms == 0) {
            f->ready += more;
            return 0;
        }
        if (f->first + f->len == f->cap) {
            if (f->first > 0) {
                memmove(f->starting, f->starting + f->first, f->len * sizeof(*f->starting));
                f->first = 0;
            } else {
                struct starting *st = grow(f->starting, &f->cap, sizeof(*st));
                if (!st)
                    return -ENOMEM;
                f->starting = st;
            }
        }
        f->starting[f->first + f->len].at_ms = now_ms + delay_ms;
        f->starting[f->first + f->len].n = more;
        f->len++;
        f->starting_n += more;
        return 0;
    }
    /* Fewer: cancel the newest starts first, then stop ready ones. */
    uint64_t excess = have - desired;
    while (excess > 0 && f->len > 0) {
        struct starting *s = &f->starting[f->first + f->len - 1];
        uint32_t take = excess < s->n ? (uint32_t)excess : s->n;
        s->n -= take;
        f->starting_n -= take;
        excess -= take;
        if (s->n == 0)
            f->len--;
    }
    f->ready -= (uint32_t)excess;
    return 0;
}

static void fleet_promote(struct fleet *f, uint64_t now_ms)
{
    while (f->len > 0 && f->starting[f->first].at_ms <= now_ms) {
        f->ready += f->starting[f->first].n;
        f->starting_n -= f->starting[f->first].n;
        f->first++;
        f->len--;
    }
    if (f->len == 0)
        f->first = 0;
}

static int run(const struct stoke_spec *spec, const struct trace *t, uint64_t tick_ms,
               uint64_t delay_ms, bool verbose)
{
    struct stoke_metric_window w;
    struct stoke_autoscaler a;
    struct fleet fl = {0};
    int r = stoke_metric_window_init(&w, spec->scale.window_ms);
    if (r < 0)
        goto out;
    stoke_autoscaler_init(&a, 0, 0);
    printf("second,desired,ready,panic%s\n", verbose ? ",stable_avg,panic_avg" : "");
    uint32_t desired = 0;
    uint64_t tick_s = tick_ms / 1000;
    size_t next = 0;
    uint64_t last = t->v[t->len - 1].second;
    for (uint64_t sec = 0; sec <= last; sec++) {
        uint64_t now_ms = sec * 1000;
        double load = 0;
        fleet_promote(&fl, now_ms);
        if (next < t->len && t->v[next].second == sec) {
            load = t->v[next].value;
            r = stoke_autoscaler_record(&a, fl.ready, &w, sec, load);
            if (r < 0)
                goto out;
            next++;
        }
        bool cold = fl.ready == 0 && load > 0;
        bool tick = sec % tick_s == 0;
        if (!tick && !(cold && desired == 0))
            continue;
        struct stoke_scale_decision d;
        r = stoke_autoscale(&a, &spec->scale, &w, now_ms, fl.ready, cold, &d);
        if (r < 0)
            goto out;
        desired = d.desired;
        r = fleet_apply(&fl, desired, now_ms, delay_ms);
        if (r < 0)
            goto out;
        printf("%" PRIu64 ",%" PRIu32 ",%" PRIu32 ",%d", sec, d.desired, fl.ready, d.panic ? 1 : 0);
        if (verbose)
            printf(",%.3f,%.3f", d.stable_avg, d.panic_avg);
        printf("\n");
    }
    r = 0;
out:
    free(fl.starting);
    stoke_metric_window_done(&w);
    return r;
}

static int parse_duration_opt(const char *name, const char *s, uint64_t *ret)
{
    if (stoke_parse_duration(s, ret) < 0 || *ret > MAX_DURATION_MS) {
        fprintf(stderr, "stokectl simulate: %s: bad duration \"%s\" (e.g. 500ms, 2s; at most 1h)\n",
                name, s);
        return -EINVAL;
    }
    return 0;
}

int simulate_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"file", required_argument, NULL, 'f'},        /* -f */
        {"ready-delay", required_argument, NULL, 'r'}, /* no short form */
        {"tick", required_argument, NULL, 't'},        /* no short form */
        {"verbose", no_argument, NULL, 'v'},           /* -v */
        {"help", no_argument, NULL, 'h'},              /* -h */
        {NULL, 0, NULL, 0},
    };
    const char *spec_path = NULL;
    uint64_t delay_ms = 1000, tick_ms = STOKE_AUTOSCALE_TICK_MS;
    bool verbose = false;
    struct stoke_spec spec = {0};
    struct stoke_buf buf;
    struct trace t = {0};
    int status = 2;
    stoke_buf_init(&buf, TRACE_MAX_BYTES);

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            spec_path = optarg;
            break;
        case 'r':
            if (parse_duration_opt("--ready-delay", optarg, &delay_ms) < 0)
                goto out;
            break;
        case 't':
            if (parse_duration_opt("--tick", optarg, &tick_ms) < 0)
                goto out;
            if (tick_ms == 0 || tick_ms % 1000 != 0) {
                fprintf(stderr, "stokectl simulate: --tick: the trace is per second, so the "
                                "tick must be a whole number of seconds\n");
                goto out;
            }
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            usage(stdout);
            status = 0;
            goto out;
        case ':':
            fprintf(stderr, "stokectl simulate: %s needs a value\n", argv[optind - 1]);
            usage(stderr);
            goto out;
        default:
            fprintf(stderr, "stokectl simulate: unknown option %s\n", argv[optind - 1]);
            usage(stderr);
            goto out;
        }
    }
    if (!spec_path || optind != argc - 1) {
        fprintf(stderr, "stokectl simulate: %s\n",
                !spec_path ? "-f SPEC is required" : "expected exactly one trace file");
        usage(stderr);
        goto out;
    }
    const char *trace_path = argv[optind];

    status = 1;
    struct stoke_diag diag = {0};
    if (stoke_spec_load(spec_path, &spec, &diag) < 0) {
        char msg[1024];
        stoke_diag_format(&diag, msg, sizeof(msg));
        fprintf(stderr, "%s\n", msg);
        goto out;
    }
    int r = read_file(trace_path, &buf);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", trace_path,
                r == -ENOBUFS ? "larger than 64 MiB" : strerror(-r));
        goto out;
    }
    if (buf.len == 0) {
        fprintf(stderr, "%s: empty, no \"" TRACE_HEADER "\" header\n", trace_path);
        goto out;
    }
    r = trace_parse(buf.data, buf.len, trace_path, &t);
    if (r < 0) {
        if (r != -EINVAL)
            fprintf(stderr, "%s: %s\n", trace_path, strerror(-r));
        goto out;
    }
    r = run(&spec, &t, tick_ms, delay_ms, verbose);
    if (r < 0) {
        fprintf(stderr, "stokectl simulate: %s\n", strerror(-r));
        goto out;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "stokectl simulate: writing the output: %s\n", strerror(errno));
        goto out;
    }
    status = 0;
out:
    free(t.v);
    stoke_buf_done(&buf);
    stoke_spec_done(&spec);
    return status;
}
