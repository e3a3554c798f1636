/* stoke/cgusage.h: parsing cgroup values, the CPU counter's deltas, and
 * finding a cgroup that is not there (no engine needed). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/cgusage.h"
#include "stoke/freezer.h"

static void test_parse_u64(void **state)
{
    static const struct {
        const char *text;
        int ret;
        uint64_t want;
    } cases[] = {
        {"0\n", 0, 0},
        {"123456789\n", 0, 123456789},
        {"134217728", 0, 134217728},
        {"9223372036854771712\n", 0, UINT64_C(9223372036854771712)}, /* v1 "no limit" */
        {"18446744073709551615\n", 0, UINT64_MAX},
        {"max\n", 0, UINT64_MAX}, /* v2 "no limit" */
        {"18446744073709551616\n", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"\n", -EINVAL, 0},
        {"-1\n", -EINVAL, 0},
        {" 12\n", -EINVAL, 0},
        {"12 \n", -EINVAL, 0},
        {"12abc\n", -EINVAL, 0},
        {"maximum\n", -EINVAL, 0},
        {"0x10\n", -EINVAL, 0},
        {"123456789012345678901234567890123\n", -EINVAL, 0},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t got = 7;
        int r = stoke_cgusage_parse_u64(cases[i].text, &got);
        if (r != cases[i].ret || (r == 0 && got != cases[i].want))
            print_error("case %zu (%s): %d %llu\n", i, cases[i].text, r, (unsigned long long)got);
        assert_int_equal(r, cases[i].ret);
        if (r == 0)
            assert_true(got == cases[i].want);
        else
            assert_true(got == 7); /* untouched */
    }
}

static void test_parse_cpu_stat(void **state)
{
    uint64_t ns = 0;
    (void)state;
    assert_int_equal(stoke_cgusage_parse_cpu_stat("usage_usec 1500\n", &ns), 0);
    assert_true(ns == 1500000);
    assert_int_equal(stoke_cgusage_parse_cpu_stat("usage_usec 0", &ns), 0);
    assert_true(ns == 0);
    assert_int_equal(stoke_cgusage_parse_cpu_stat("user_usec 1500\n", &ns), -EINVAL);
    assert_int_equal(stoke_cgusage_parse_cpu_stat("usage_usec\n", &ns), -EINVAL);
    assert_int_equal(stoke_cgusage_parse_cpu_stat("usage_usec max\n", &ns), -EINVAL);
    assert_int_equal(stoke_cgusage_parse_cpu_stat("usage_usec 18446744073709552\n", &ns),
                     -EINVAL); /* overflows in ns */
    assert_int_equal(stoke_cgusage_parse_cpu_stat("", &ns), -EINVAL);
}

static void test_cpu_delta(void **state)
{
    uint64_t last = 0;
    (void)state;
    assert_true(stoke_cgusage_cpu_delta(&last, 100) == 100);
    assert_true(stoke_cgusage_cpu_delta(&last, 250) == 150);
    assert_true(stoke_cgusage_cpu_delta(&last, 250) == 0);
    /* Lower: a new cgroup (stopped, started again) counting from 0. */
    assert_true(stoke_cgusage_cpu_delta(&last, 40) == 40);
    assert_true(last == 40);
    assert_true(stoke_cgusage_cpu_delta(&last, 41) == 1);
    /* A counter that only grows, summed from the deltas, ends at the sum
     * of each run's last value. */
    static const uint64_t samples[] = {5, 9, 9, 30, 2, 7, 7, 1, 100};
    uint64_t total = 0;
    last = 0;
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++)
        total += stoke_cgusage_cpu_delta(&last, samples[i]);
    assert_true(total == 30 + 7 + 100);
}

static void test_find_refuses_and_misses(void **state)
{
    struct stoke_cgroup cg;
    char id[65];
    (void)state;
    assert_int_equal(stoke_cgusage_find("", NULL, &cg), -EINVAL);
    assert_int_equal(stoke_cgusage_find("abc", NULL, &cg), -EINVAL);
    assert_int_equal(stoke_cgusage_find("../../../../etc/passwd", NULL, &cg), -EINVAL);
    memset(id, 'G', 64);
    id[64] = '\0';
    assert_int_equal(stoke_cgusage_find(id, NULL, &cg), -EINVAL);
    /* A well-formed id of no container: not found, or no cgroups at all
     * where libcgroup finds none (a container without cgroupfs). */
    memset(id, 'a', 64);
    int init = stoke_freezer_init();
    int r = stoke_cgusage_find(id, NULL, &cg);
    assert_int_equal(r, init == 0 ? -ENOENT : -ENOTSUP);
    r = stoke_cgusage_find(id, "/no/such/cgroup/of/stoke", &cg);
    assert_int_equal(r, init == 0 ? -ENOENT : -ENOTSUP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_parse_cpu_stat),
        cmocka_unit_test(test_cpu_delta),
        cmocka_unit_test(test_find_refuses_and_misses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
