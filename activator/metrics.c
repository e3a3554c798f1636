#include "metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

struct metrics {
    unsigned n;
    struct metrics_worker **w; /* one allocation each: no false sharing */
};

/* Latency bucket bounds in microseconds, and as `le` labels. */
static const uint64_t bucket_us[METRICS_BUCKETS] = {
    1000,   2500,    5000,    10000,   25000,    50000,    100000,   250000,
    500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};
static const char *const bucket_le[METRICS_BUCKETS + 1] = {
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
    "0.5",   "1",      "2.5",   "5",    "10",    "30",   "60",  "+Inf",
};

static const char *const reason_names[METRICS_REASONS] = {
    [METRICS_BAD_REQUEST] = "bad_request",
    [METRICS_NO_FUNCTION] = "no_function",
    [METRICS_BODY_TOO_LARGE] = "body_too_large",
    [METRICS_URI_TOO_LONG] = "uri_too_long",
    [METRICS_EXPECTATION_FAILED] = "expectation_failed",
    [METRICS_HEADER_TOO_LARGE] = "header_too_large",
    [METRICS_NOT_IMPLEMENTED] = "not_implemented",
    [METRICS_UPSTREAM_ERROR] = "upstream_error",
    [METRICS_QUEUE_FULL] = "queue_full",
    [METRICS_NO_ROUTES] = "no_routes",
    [METRICS_QUEUE_TIMEOUT] = "queue_timeout",
    [METRICS_DEADLINE] = "deadline",
    [METRICS_CONNECTIONS_LIMIT] = "connections_limit",
    [METRICS_CLIENT_TIMEOUT] = "client_timeout",
    [METRICS_OTHER] = "other",
};

struct metrics *metrics_new(unsigned n_workers)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->w = calloc(n_workers ? n_workers : 1, sizeof(*m->w));
    if (!m->w) {
        free(m);
        return NULL;
    }
    m->n = n_workers;
    uint64_t now_ms = uv_hrtime() / 1000000;
    for (unsigned i = 0; i < n_workers; i++) {
        m->w[i] = calloc(1, sizeof(*m->w[i]));
        if (!m->w[i]) {
            metrics_free(m);
            return NULL;
        }
        atomic_init(&m->w[i]->beat_ms, now_ms);
        atomic_init(&m->w[i]->fns, NULL);
    }
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < m->n; i++) {
        if (!m->w[i])
            continue;
        struct metrics_fn *f = atomic_load_explicit(&m->w[i]->fns, memory_order_acquire);
        while (f) {
            struct metrics_fn *next = f->next;
            free(f);
            f = next;
        }
        free(m->w[i]);
    }
    free(m->w);
    free(m);
}

struct metrics_worker *metrics_worker(struct metrics *m, unsigned i)
{
    return m && i < m->n ? m->w[i] : NULL;
}

struct metrics_fn *metrics_fn_get(struct metrics_worker *mw, const char *name)
{
    if (!mw || strlen(name) > STOKE_NAME_MAX)
        return NULL;
    /* Only this thread writes the list, so a relaxed walk is enough here.
     * Linear: it runs once per function new to a route table. */
    struct metrics_fn *head = atomic_load_explicit(&mw->fns, memory_order_relaxed);
    for (struct metrics_fn *f = head; f; f = f->next) {
        if (strcmp(f->name, name) == 0)
            return f;
    }
    struct metrics_fn *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    memcpy(f->name, name, strlen(name) + 1);
    f->next = head;
    atomic_store_explicit(&mw->fns, f, memory_order_release);
    return f;
}

enum metrics_reason metrics_reason_of(int status, bool queued)
{
    switch (status) {
    case 400:
        return METRICS_BAD_REQUEST;
    case 404:
        return METRICS_NO_FUNCTION;
    case 413:
        return METRICS_BODY_TOO_LARGE;
    case 414:
        return METRICS_URI_TOO_LONG;
    case 417:
        return METRICS_EXPECTATION_FAILED;
    case 431:
        return METRICS_HEADER_TOO_LARGE;
    case 501:
        return METRICS_NOT_IMPLEMENTED;
    case 502:
        return METRICS_UPSTREAM_ERROR;
    case 503:
        return METRICS_QUEUE_FULL;
    case 504:
        return queued ? METRICS_QUEUE_TIMEOUT : METRICS_DEADLINE;
    default:
        return METRICS_OTHER;
    }
}

static void count_code(struct metrics_fn *f, uint32_t code)
{
    for (size_t i = 0; i < METRICS_CODES; i++) {
        uint32_t c = atomic_load_explicit(&f->code[i], memory_order_relaxed);
        if (c == 0) {
            /* A new slot: its count is 0, so a reader seeing the code
             * before the count reads 0, never a stale value. */
            atomic_store_explicit(&f->code[i], code, memory_order_release);
            c = code;
        }
        if (c == code) {
            metrics_add(&f->count[i], 1);
            return;
        }
    }
    metrics_add(&f->other_codes, 1);
}

void metrics_request_end(struct metrics_fn **mf, int status, uint64_t start_ns)
{
    struct metrics_fn *f = *mf;
    if (!f)
        return;
    *mf = NULL;
    count_code(f, status > 0 ? (uint32_t)status : 499);
    uint64_t now = uv_hrtime();
    uint64_t us = now > start_ns ? (now - start_ns) / 1000 : 0;
    size_t b = 0;
    while (b < METRICS_BUCKETS && us > bucket_us[b])
        b++;
    metrics_add(&f->bucket[b], 1);
    metrics_add(&f->sum_us, (int64_t)us);
}

/* ---- rendering (ops thread) ---------------------------------------------- */

static uint64_t load(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp((*(struct metrics_fn *const *)a)->name, (*(struct metrics_fn *const *)b)->name);
}

/* Appends `s` as a label value: backslash, double quote and line feed
 * escaped (exposition format 0.0.4). */
static int append_label(struct stoke_buf *out, const char *s)
{
    int r = 0;
    for (; *s && r == 0; s++) {
        if (*s == '\\')
            r = stoke_buf_append(out, "\\\\", 2);
        else if (*s == '"')
            r = stoke_buf_append(out, "\\\"", 2);
        else if (*s == '\n')
            r = stoke_buf_append(out, "\\n", 2);
        else
            r = stoke_buf_append(out, s, 1);
    }
    return r;
}

static int family(struct stoke_buf *out, const char *name, const char *type, const char *help)
{
    return stoke_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One series `name{function="fn"<extra>} value`. */
static int fn_series(struct stoke_buf *out, const char *name, const char *fn, const char *extra,
                     const char *value)
{
    int r = stoke_buf_printf(out, "%s{function=\"", name);
    if (r == 0)
        r = append_label(out, fn);
    if (r == 0)
        r = stoke_buf_printf(out, "\"%s} %s\n", extra, value);
    return r;
}

struct code_sum {
    uint32_t code;
    uint64_t n;
};

static int cmp_code(const void *a, const void *b)
{
    const struct code_sum *x = a, *y = b;
    return (x->code > y->code) - (x->code < y->code);
}

/* The requests_total series of one function, whose entries (one per worker
 * that saw it) are g[0..n). */
static int format_codes(struct stoke_buf *out, struct metrics_fn **g, size_t n)
{
    struct code_sum *sums = calloc(n * METRICS_CODES + 1, sizeof(*sums));
    if (!sums)
        return -ENOMEM;
    size_t ns = 0;
    uint64_t other = 0;
    for (size_t k = 0; k < n; k++) {
        for (size_t i = 0; i < METRICS_CODES; i++) {
            uint32_t code = atomic_load_explicit(&g[k]->code[i], memory_order_acquire);
            if (code == 0)
                break; /* slots fill in order */
            uint64_t v = load(&g[k]->count[i]);
            size_t j = 0;
            while (j < ns && sums[j].code != code)
                j++;
            if (j == ns)
                sums[ns++].code = code;
            sums[j].n += v;
        }
        other += load(&g[k]->other_codes);
    }
    qsort(sums, ns, sizeof(*sums), cmp_code);
    int r = 0;
    char extra[32], value[24];
    for (size_t j = 0; j < ns && r == 0; j++) {
        snprintf(extra, sizeof(extra), ",code=\"%u\"", (unsigned)sums[j].code);
        snprintf(value, sizeof(value), "%llu", (unsigned long long)sums[j].n);
        r = fn_series(out, "stoke_activator_requests_total", g[0]->name, extra, value);
    }
    if (r == 0 && other > 0) {
        snprintf(value, sizeof(value), "%llu", (unsigned long long)other);
        r = fn_series(out, "stoke_activator_requests_total", g[0]->name, ",code=\"other\"", value);
    }
    free(sums);
    return r;
}

static int format_histogram(struct stoke_buf *out, struct metrics_fn **g, size_t n)
{
    static const char *const name = "stoke_activator_request_duration_seconds";
    uint64_t cum = 0, sum_us = 0;
    char series[80], extra[32], value[32];
    int r = 0;
    for (size_t b = 0; b <= METRICS_BUCKETS && r == 0; b++) {
        for (size_t k = 0; k < n; k++)
            cum += load(&g[k]->bucket[b]);
        snprintf(series, sizeof(series), "%s_bucket", name);
        snprintf(extra, sizeof(extra), ",le=\"%s\"", bucket_le[b]);
        snprintf(value, sizeof(value), "%llu", (unsigned long long)cum);
        r = fn_series(out, series, g[0]->name, extra, value);
    }
    for (size_t k = 0; k < n; k++)
        sum_us += load(&g[k]->sum_us);
    if (r == 0) {
        snprintf(series, sizeof(series), "%s_sum", name);
        snprintf(value, sizeof(value), "%llu.%06llu", (unsigned long long)(sum_us / 1000000),
                 (unsigned long long)(sum_us % 1000000));
        r = fn_series(out, series, g[0]->name, "", value);
    }
    if (r == 0) {
        snprintf(series, sizeof(series), "%s_count", name);
        snprintf(value, sizeof(value), "%llu", (unsigned long long)cum);
        r = fn_series(out, series, g[0]->name, "", value);
    }
    return r;
}

/* A gauge summed over a function's entries. */
static int format_fn_gauge(struct stoke_buf *out, const char *name, struct metrics_fn **g, size_t n,
                           enum metrics_gauge which)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v += load(&g[k]->gauge[which]);
    char value[24];
    snprintf(value, sizeof(value), "%llu", (unsigned long long)v);
    return fn_series(out, name, g[0]->name, "", value);
}

enum fn_family { F_REQUESTS, F_DURATION, F_IN_FLIGHT, F_QUEUE, F_UPSTREAMS, F_FAMILIES };

static const struct {
    const char *name, *type, *help;
    enum metrics_gauge gauge;
} fn_families[F_FAMILIES] = {
    [F_REQUESTS] = {"stoke_activator_requests_total", "counter",
                    "Requests routed to a function, by the status sent to the client (499: the "
                    "client left before any).",
                    METRICS_GAUGES},
    [F_DURATION] = {"stoke_activator_request_duration_seconds", "histogram",
                    "Time from a routed request's head to the last byte of its answer queued "
                    "for the client.",
                    METRICS_GAUGES},
    [F_IN_FLIGHT] = {"stoke_activator_requests_in_flight", "gauge",
                     "Requests sent to a replica and not finished.", METRICS_IN_FLIGHT},
    [F_QUEUE] = {"stoke_activator_queue_depth", "gauge",
                 "Requests waiting for a replica with room.", METRICS_QUEUED},
    [F_UPSTREAMS] = {"stoke_activator_upstream_connections", "gauge",
                     "Open connections to the function's replicas, busy or pooled.",
                     METRICS_UPSTREAMS},
};

/* A family of one unlabelled series. */
static int single(struct stoke_buf *out, const char *name, const char *type, const char *help,
                  uint64_t v)
{
    int r = family(out, name, type, help);
    return r == 0 ? stoke_buf_printf(out, "%s %llu\n", name, (unsigned long long)v) : r;
}

/* The channel's route messages, summed over the workers (each worker has
 * its own channel, so each gets every message). */
static int format_routes(struct metrics *m, struct stoke_buf *out)
{
    static const char *const kinds[METRICS_ROUTE_KINDS] = {"table", "update"};
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"stoke_activator_route_messages_total", "counter",
         "Route messages from the controller applied, by kind: whole tables (at connect, when "
         "activators come or go, on a resync) and updates of the functions that changed."},
        {"stoke_activator_route_entries_total", "counter",
         "Function entries in the route messages applied, by kind."},
        {"stoke_activator_route_bytes_total", "counter",
         "Bytes of the route messages applied, by kind."},
        {"stoke_activator_route_apply_seconds_total", "counter",
         "Time spent parsing and applying route messages, by kind."},
    };
    uint64_t v[4][METRICS_ROUTE_KINDS] = {{0}}, resyncs = 0, fns = 0;
    for (unsigned i = 0; i < m->n; i++) {
        for (size_t k = 0; k < METRICS_ROUTE_KINDS; k++) {
            v[0][k] += load(&m->w[i]->route_msgs[k]);
            v[1][k] += load(&m->w[i]->route_entries[k]);
            v[2][k] += load(&m->w[i]->route_bytes[k]);
            v[3][k] += load(&m->w[i]->route_apply_ns[k]);
        }
        resyncs += load(&m->w[i]->route_resyncs);
        fns += load(&m->w[i]->route_functions);
    }
    int r = 0;
    for (size_t f = 0; f < 4 && r == 0; f++) {
        r = family(out, fam[f].name, fam[f].type, fam[f].help);
        for (size_t k = 0; k < METRICS_ROUTE_KINDS && r == 0; k++) {
            if (f == 3)
                r = stoke_buf_printf(out, "%s{kind=\"%s\"} %.9f\n", fam[f].name, kinds[k],
                                     (double)v[f][k] / 1e9);
            else
                r = stoke_buf_printf(out, "%s{kind=\"%s\"} %llu\n", fam[f].name, kinds[k],
                                     (unsigned long long)v[f][k]);
        }
    }
    if (r == 0)
        r = single(out, "stoke_activator_route_resyncs_total", "counter",
                   "Whole tables asked for again after a missed route update.", resyncs);
    if (r == 0)
        r = single(out, "stoke_activator_route_functions", "gauge",
                   "Functions in the route tables of the workers, summed.", fns);
    return r;
}

static int format_global(struct metrics *m, struct stoke_buf *out)
{
    uint64_t conns = 0, rejected[METRICS_REASONS] = {0};
    for (unsigned i = 0; i < m->n; i++) {
        conns += load(&m->w[i]->connections);
        for (size_t k = 0; k < METRICS_REASONS; k++)
            rejected[k] += load(&m->w[i]->rejected[k]);
    }
    int r = family(out, "stoke_activator_workers", "gauge",
                   "Event-loop threads serving the data port.");
    if (r == 0)
        r = stoke_buf_printf(out, "stoke_activator_workers %u\n", m->n);
    if (r == 0)
        r = family(out, "stoke_activator_connections", "gauge", "Open client connections.");
    if (r == 0)
        r = stoke_buf_printf(out, "stoke_activator_connections %llu\n", (unsigned long long)conns);
    if (r == 0)
        r = family(out, "stoke_activator_rejected_total", "counter",
                   "Requests the activator answered with an error itself, and connections it "
                   "closed unanswered, by reason.");
    for (size_t k = 0; k < METRICS_REASONS && r == 0; k++)
        r = stoke_buf_printf(out, "stoke_activator_rejected_total{reason=\"%s\"} %llu\n",
                             reason_names[k], (unsigned long long)rejected[k]);
    if (r == 0)
        r = format_routes(m, out);
    return r;
}

int metrics_format(struct metrics *m, struct stoke_buf *out)
{
    int r = format_global(m, out);
    if (r < 0)
        return r;

    /* Every worker's entries, sorted by name: a function's entries (one
     * per worker that routed it) are then adjacent and summed. */
    size_t n = 0, cap = 64;
    struct metrics_fn **all = malloc(cap * sizeof(*all));
    if (!all)
        return -ENOMEM;
    for (unsigned i = 0; i < m->n; i++) {
        for (struct metrics_fn *f = atomic_load_explicit(&m->w[i]->fns, memory_order_acquire); f;
             f = f->next) {
            if (n == cap) {
                struct metrics_fn **bigger = realloc(all, 2 * cap * sizeof(*all));
                if (!bigger) {
                    free(all);
                    return -ENOMEM;
                }
                all = bigger;
                cap *= 2;
            }
            all[n++] = f;
        }
    }
    qsort(all, n, sizeof(*all), cmp_entry);

    for (int fam = 0; fam < F_FAMILIES && r == 0; fam++) {
        r = family(out, fn_families[fam].name, fn_families[fam].type, fn_families[fam].help);
        for (size_t i = 0; i < n && r == 0;) {
            size_t j = i + 1;
            while (j < n && strcmp(all[j]->name, all[i]->name) == 0)
                j++;
            if (fam == F_REQUESTS)
                r = format_codes(out, all + i, j - i);
            else if (fam == F_DURATION)
                r = format_histogram(out, all + i, j - i);
            else
                r = format_fn_gauge(out, fn_families[fam].name, all + i, j - i,
                                    fn_families[fam].gauge);
            i = j;
        }
    }
    free(all);
    return r;
}

int metrics_check_health(struct metrics *m, uint64_t now_ms, uint64_t stale_ms,
                         unsigned *ret_worker, uint64_t *ret_age_ms)
{
    int stale = 0;
    for (unsigned i = 0; i < m->n; i++) {
        uint64_t beat = atomic_load_explicit(&m->w[i]->beat_ms, memory_order_relaxed);
        uint64_t age = now_ms > beat ? now_ms - beat : 0;
        if (age > stale_ms) {
            if (stale++ == 0) {
                *ret_worker = i;
                *ret_age_ms = age;
            }
        }
    }
    return stale;
}
