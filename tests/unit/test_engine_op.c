/* stoke/engine.h: which operation a request to the engine is, as the
 * controller's engine call counters name it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/engine.h"

static void test_op_of(void **state)
{
    static const struct {
        const char *method, *path;
        enum stoke_engine_op want;
    } cases[] = {
        {"GET", "/_ping", STOKE_ENGINE_OP_PING},
        {"GET", "/images/stoke-hello%3A1/json", STOKE_ENGINE_OP_IMAGE_INSPECT},
        {"GET", "/images/registry.local/team/fn:2/json", STOKE_ENGINE_OP_IMAGE_INSPECT},
        {"POST", "/containers/create?name=stoke-hello-1", STOKE_ENGINE_OP_CREATE},
        {"POST", "/containers/create", STOKE_ENGINE_OP_CREATE},
        {"POST", "/containers/abc123/start", STOKE_ENGINE_OP_START},
        {"GET", "/containers/abc123/json", STOKE_ENGINE_OP_INSPECT},
        {"POST", "/containers/abc123/pause", STOKE_ENGINE_OP_PAUSE},
        {"POST", "/containers/abc123/unpause", STOKE_ENGINE_OP_UNPAUSE},
        {"POST", "/containers/abc123/stop?t=10", STOKE_ENGINE_OP_STOP},
        {"DELETE", "/containers/abc123?force=1&v=1", STOKE_ENGINE_OP_REMOVE},
        {"DELETE", "/containers/abc123?v=1", STOKE_ENGINE_OP_REMOVE},
        {"GET", "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D",
         STOKE_ENGINE_OP_LIST},
        {"GET", "/events?filters=%7B%7D", STOKE_ENGINE_OP_EVENTS},
        {"GET", "/containers/abc123/logs?stdout=1&stderr=1&follow=1", STOKE_ENGINE_OP_LOGS},
        /* Anything else, and the right path with the wrong method. */
        {"GET", "/", STOKE_ENGINE_OP_OTHER},
        {"GET", "", STOKE_ENGINE_OP_OTHER},
        {"POST", "/_ping", STOKE_ENGINE_OP_OTHER},
        {"GET", "/containers/create", STOKE_ENGINE_OP_OTHER},
        {"POST", "/containers/abc123/json", STOKE_ENGINE_OP_OTHER},
        {"GET", "/containers/abc123/start", STOKE_ENGINE_OP_OTHER},
        {"GET", "/containers/abc123/top", STOKE_ENGINE_OP_OTHER},
        {"GET", "/containers//json", STOKE_ENGINE_OP_OTHER},
        {"GET", "/containers/abc123/json/more", STOKE_ENGINE_OP_OTHER},
        {"GET", "/images/json", STOKE_ENGINE_OP_OTHER},
        {"POST", "/images/x/json", STOKE_ENGINE_OP_OTHER},
        {"GET", "/networks", STOKE_ENGINE_OP_OTHER},
        {"PUT", "/containers/abc123", STOKE_ENGINE_OP_OTHER},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum stoke_engine_op got = stoke_engine_op_of(cases[i].method, cases[i].path);
        if (got != cases[i].want)
            print_error("case %zu: %s %s is %s\n", i, cases[i].method, cases[i].path,
                        stoke_engine_op_name(got));
        assert_int_equal(got, cases[i].want);
    }
}

static void test_op_names(void **state)
{
    (void)state;
    assert_string_equal(stoke_engine_op_name(STOKE_ENGINE_OP_IMAGE_INSPECT), "image_inspect");
    assert_string_equal(stoke_engine_op_name(STOKE_ENGINE_OP_LOGS), "logs");
    assert_string_equal(stoke_engine_op_name(STOKE_ENGINE_OPS), "other");
    /* Every operation has a distinct label value. */
    for (int a = 0; a < STOKE_ENGINE_OPS; a++)
        for (int b = a + 1; b < STOKE_ENGINE_OPS; b++)
            assert_true(strcmp(stoke_engine_op_name(a), stoke_engine_op_name(b)) != 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_of),
        cmocka_unit_test(test_op_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
