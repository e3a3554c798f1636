/* The activator's metrics (activator/metrics.c): sums over workers, status
 * codes, histogram buckets, label escaping, reasons and the heartbeat. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "metrics.h"

/* The rendered text of `m` (owned by the caller's buffer). */
static const char *render(struct metrics *m, struct stoke_buf *out)
{
    stoke_buf_init(out, 1 << 20);
    assert_int_equal(metrics_format(m, out), 0);
    return out->data;
}

static void assert_line(const char *text, const char *line)
{
    char want[256];
    snprintf(want, sizeof(want), "\n%s\n", line);
    if (!strstr(text, want))
        fail_msg("no line \"%s\" in:\n%s", line, text);
}

/* Ends a request that started `us` microseconds ago. */
static void request(struct metrics_fn *f, int status, uint64_t us)
{
    struct metrics_fn *mf = f;
    metrics_request_end(&mf, status, uv_hrtime() - us * 1000);
    assert_null(mf);
    metrics_request_end(&mf, status, 0); /* a second end counts nothing */
}

static void test_summed_over_workers(void **state)
{
    (void)state;
    struct metrics *m = metrics_new(2);
    assert_non_null(m);
    struct metrics_worker *w0 = metrics_worker(m, 0), *w1 = metrics_worker(m, 1);
    assert_null(metrics_worker(m, 2));
    struct metrics_fn *a0 = metrics_fn_get(w0, "alpha"), *a1 = metrics_fn_get(w1, "alpha");
    struct metrics_fn *b1 = metrics_fn_get(w1, "beta");
    assert_ptr_equal(metrics_fn_get(w0, "alpha"), a0); /* one entry per name and worker */
    request(a0, 200, 30000);
    request(a0, 200, 30000);
    request(a1, 200, 30000);
    request(a1, 503, 20000000);
    request(b1, 0, 70000000); /* no status sent: 499, past the last bound */
    metrics_gauge(a0, METRICS_IN_FLIGHT, 2);
    metrics_gauge(a1, METRICS_IN_FLIGHT, 1);
    metrics_gauge(a1, METRICS_QUEUED, 4);
    metrics_gauge(a1, METRICS_QUEUED, -1);
    metrics_gauge(a0, METRICS_UPSTREAMS, 1);
    metrics_gauge(a1, METRICS_UPSTREAMS, 1);
    metrics_connections(w0, 3);
    metrics_connections(w1, 1);
    metrics_error(w0, 404, false);
    metrics_error(w1, 404, false);
    metrics_error(w1, 504, true);
    metrics_rejected(w0, METRICS_CONNECTIONS_LIMIT);
    metrics_gauge(NULL, METRICS_QUEUED, 1); /* no entry: ignored */
    metrics_connections(NULL, 1);

    struct stoke_buf out;
    const char *t = render(m, &out);
    assert_line(t, "stoke_activator_workers 2");
    assert_line(t, "stoke_activator_connections 4");
    assert_line(t, "stoke_activator_rejected_total{reason=\"no_function\"} 2");
    assert_line(t, "stoke_activator_rejected_total{reason=\"queue_timeout\"} 1");
    assert_line(t, "stoke_activator_rejected_total{reason=\"deadline\"} 0");
    assert_line(t, "stoke_activator_rejected_total{reason=\"connections_limit\"} 1");
    assert_line(t, "stoke_activator_requests_total{function=\"alpha\",code=\"200\"} 3");
    assert_line(t, "stoke_activator_requests_total{function=\"alpha\",code=\"503\"} 1");
    assert_line(t, "stoke_activator_requests_total{function=\"beta\",code=\"499\"} 1");
    /* 30 ms is in (0.025, 0.05] (wide margins for a slow machine); 20 s in
     * (10, 30]; 70 s only in +Inf. */
    assert_line(t, "stoke_activator_request_duration_seconds_bucket{function=\"alpha\","
                   "le=\"0.025\"} 0");
    assert_line(t, "stoke_activator_request_duration_seconds_bucket{function=\"alpha\","
                   "le=\"0.05\"} 3");
    assert_line(t, "stoke_activator_request_duration_seconds_bucket{function=\"alpha\","
                   "le=\"10\"} 3");
    assert_line(t, "stoke_activator_request_duration_seconds_bucket{function=\"alpha\","
                   "le=\"30\"} 4");
    assert_line(t, "stoke_activator_request_duration_seconds_bucket{function=\"alpha\","
                   "le=\"+Inf\"} 4");
    assert_line(t, "stoke_activator_request_duration_seconds_count{function=\"alpha\"} 4");
    assert_line(t, "stoke_activator_request_duration_seconds_bucket{function=\"beta\","
                   "le=\"60\"} 0");
    assert_line(t, "stoke_activator_request_duration_seconds_count{function=\"beta\"} 1");
    assert_line(t, "stoke_activator_requests_in_flight{function=\"alpha\"} 3");
    assert_line(t, "stoke_activator_queue_depth{function=\"alpha\"} 3");
    assert_line(t, "stoke_activator_upstream_connections{function=\"alpha\"} 2");
    assert_line(t, "stoke_activator_upstream_connections{function=\"beta\"} 0");
    /* Each family once, its series adjacent: alpha before beta. */
    const char *h = strstr(t, "# TYPE stoke_activator_queue_depth gauge\n");
    assert_non_null(h);
    assert_null(strstr(h + 1, "# TYPE stoke_activator_queue_depth"));
    assert_true(strstr(t, "queue_depth{function=\"alpha\"}") <
                strstr(t, "queue_depth{function=\"beta\"}"));
    stoke_buf_done(&out);
    metrics_free(m);
}

static void test_codes_past_the_slots(void **state)
{
    (void)state;
    struct metrics *m = metrics_new(1);
    struct metrics_fn *f = metrics_fn_get(metrics_worker(m, 0), "f");
    for (int code = 200; code < 200 + METRICS_CODES + 3; code++)
        request(f, code, 10);
    request(f, 200, 10);
    struct stoke_buf out;
    const char *t = render(m, &out);
    assert_line(t, "stoke_activator_requests_total{function=\"f\",code=\"200\"} 2");
    assert_line(t, "stoke_activator_requests_total{function=\"f\",code=\"other\"} 3");
    assert_line(t, "stoke_activator_request_duration_seconds_count{function=\"f\"} 20");
    stoke_buf_done(&out);
    metrics_free(m);
}

static void test_label_escaping(void **state)
{
    (void)state;
    struct metrics *m = metrics_new(1);
    struct metrics_worker *w = metrics_worker(m, 0);
    metrics_gauge(metrics_fn_get(w, "a\"b\\c\nd"), METRICS_QUEUED, 1);
    char longname[STOKE_NAME_MAX + 2];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_null(metrics_fn_get(w, longname));
    assert_null(metrics_fn_get(NULL, "x"));
    struct stoke_buf out;
    const char *t = render(m, &out);
    assert_line(t, "stoke_activator_queue_depth{function=\"a\\\"b\\\\c\\nd\"} 1");
    stoke_buf_done(&out);
    metrics_free(m);
}

static void test_reasons(void **state)
{
    (void)state;
    static const struct {
        int status;
        bool queued;
        enum metrics_reason want;
    } cases[] = {
        {400, false, METRICS_BAD_REQUEST},        {404, true, METRICS_NO_FUNCTION},
        {413, false, METRICS_BODY_TOO_LARGE},     {414, false, METRICS_URI_TOO_LONG},
        {417, false, METRICS_EXPECTATION_FAILED}, {431, false, METRICS_HEADER_TOO_LARGE},
        {501, false, METRICS_NOT_IMPLEMENTED},    {502, false, METRICS_UPSTREAM_ERROR},
        {503, true, METRICS_QUEUE_FULL},          {504, true, METRICS_QUEUE_TIMEOUT},
        {504, false, METRICS_DEADLINE},           {500, false, METRICS_OTHER},
    };
    for (size_t i = 0; i < STOKE_ARRAY_SIZE(cases); i++)
        assert_int_equal(metrics_reason_of(cases[i].status, cases[i].queued), cases[i].want);
}

static void test_health(void **state)
{
    (void)state;
    struct metrics *m = metrics_new(3);
    unsigned worker = 99;
    uint64_t age = 0;
    metrics_beat(metrics_worker(m, 0), 10000);
    metrics_beat(metrics_worker(m, 1), 6000);
    metrics_beat(metrics_worker(m, 2), 5000);
    assert_int_equal(metrics_check_health(m, 10000, 5000, &worker, &age), 0);
    assert_int_equal(worker, 99);
    assert_int_equal(metrics_check_health(m, 11500, 5000, &worker, &age), 2);
    assert_int_equal(worker, 1);
    assert_int_equal(age, 5500);
    metrics_beat(NULL, 1); /* no worker: ignored */
    metrics_free(m);
    metrics_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_summed_over_workers),
        cmocka_unit_test(test_codes_past_the_slots),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_health),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
