/* stoke/backoff.h: the crash-loop and reconnect back-off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "stoke/backoff.h"

static void test_backoff(void **state)
{
    static const struct {
        uint32_t failures;
        uint64_t min, max, want;
    } cases[] = {
        {0, 500, 60000, 0},
        {1, 500, 60000, 500},
        {2, 500, 60000, 1000},
        {3, 500, 60000, 2000},
        {7, 500, 60000, 32000},
        {8, 500, 60000, 60000}, /* 64000 capped */
        {9, 500, 60000, 60000},
        {UINT32_MAX, 500, 60000, 60000},
        {1, 500, 500, 500},
        {5, 500, 500, 500},
        {3, 500, 100, 100},
        {64, 1, UINT64_MAX, UINT64_C(1) << 63},
        {65, 1, UINT64_MAX, UINT64_MAX},
        {200, 3, UINT64_MAX - 1, UINT64_MAX - 1},
        {1, 0, 100, 0},
        {4, 0, 100, 0},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t got = stoke_backoff_ms(cases[i].failures, cases[i].min, cases[i].max);
        if (got != cases[i].want)
            print_error("case %zu: %llu\n", i, (unsigned long long)got);
        assert_true(got == cases[i].want);
    }
}

static void test_backoff_monotonic(void **state)
{
    (void)state;
    uint64_t prev = 0;
    for (uint32_t f = 0; f < 100; f++) {
        uint64_t b = stoke_backoff_ms(f, 100, 10000);
        assert_true(b >= prev);
        assert_true(b <= 10000);
        prev = b;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_backoff_monotonic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
