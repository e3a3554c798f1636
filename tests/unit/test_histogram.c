/* stoke/histogram.h: buckets, inclusive bounds, the cumulative text. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/histogram.h"

static void test_bounds_are_inclusive(void **state)
{
    static const struct {
        uint64_t us;
        size_t bucket;
    } cases[] = {
        {0, 0},         {1, 0},         {5000, 0},        {5001, 1},   {10000, 1},
        {10001, 2},     {429000, 6},    {500000, 6},      {500001, 7}, {1000000, 7},
        {60000000, 12}, {60000001, 13}, {UINT64_MAX, 13},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct stoke_histogram h = {0};
        stoke_histogram_observe(&h, cases[i].us);
        for (size_t b = 0; b <= STOKE_HISTOGRAM_BUCKETS; b++) {
            if (h.bucket[b] != (b == cases[i].bucket))
                print_error("case %zu: bucket %zu holds %llu\n", i, b,
                            (unsigned long long)h.bucket[b]);
            assert_true(h.bucket[b] == (b == cases[i].bucket));
        }
        assert_true(stoke_histogram_count(&h) == 1);
    }
}

static void test_format(void **state)
{
    struct stoke_histogram h = {0};
    struct stoke_buf out;
    (void)state;
    stoke_histogram_observe(&h, 3000);     /* 0.005 */
    stoke_histogram_observe(&h, 429000);   /* 0.5 */
    stoke_histogram_observe(&h, 429000);   /* 0.5 */
    stoke_histogram_observe(&h, 90000000); /* +Inf */
    stoke_buf_init(&out, 1 << 16);
    assert_int_equal(stoke_histogram_format(&h, "x_seconds", "function=\"f\",tier=\"new\"", &out),
                     0);
    static const char want[] = "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"0.005\"} 1\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"0.01\"} 1\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"0.025\"} 1\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"0.05\"} 1\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"0.1\"} 1\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"0.25\"} 1\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"0.5\"} 3\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"1\"} 3\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"2.5\"} 3\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"5\"} 3\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"10\"} 3\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"30\"} 3\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"60\"} 3\n"
                               "x_seconds_bucket{function=\"f\",tier=\"new\",le=\"+Inf\"} 4\n"
                               "x_seconds_sum{function=\"f\",tier=\"new\"} 90.861000\n"
                               "x_seconds_count{function=\"f\",tier=\"new\"} 4\n";
    assert_string_equal(out.data, want);
    stoke_buf_done(&out);
}

static void test_format_without_labels_and_capped(void **state)
{
    struct stoke_histogram h = {0};
    struct stoke_buf out;
    (void)state;
    stoke_buf_init(&out, 1 << 16);
    assert_int_equal(stoke_histogram_format(&h, "y", "", &out), 0);
    assert_non_null(strstr(out.data, "y_bucket{le=\"+Inf\"} 0\ny_sum 0.000000\ny_count 0\n"));
    assert_null(strstr(out.data, "{,"));
    stoke_buf_done(&out);
    /* A buffer too small: an error, never more than its cap. */
    stoke_buf_init(&out, 100);
    assert_int_equal(stoke_histogram_format(&h, "y", "", &out), -ENOBUFS);
    assert_true(out.len <= 100);
    stoke_buf_done(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds_are_inclusive),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_without_labels_and_capped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
