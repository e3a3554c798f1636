/* stoke/freezer.h: finding a container's freezer cgroup in the text of
 * /proc/PID/cgroup (v1 hierarchies, the unified one, and hostile text). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "stoke/freezer.h"

static void test_parse(void **state)
{
    static const struct {
        const char *what;
        const char *text;
        int err;
        int version;
        const char *path;
    } cases[] = {
        {"docker on cgroup v1 (hybrid)",
         "9:name=systemd:/docker/2221f2\n8:pids:/docker/2221f2\n6:freezer:/docker/2221f2\n"
         "1:cpu:/docker/2221f2\n0::/docker/2221f2\n",
         0, 1, "/docker/2221f2"},
        {"freezer among several controllers", "4:cpu,freezer,cpuacct:/a/b\n0::/other\n", 0, 1,
         "/a/b"},
        {"unified only", "0::/system.slice/docker-abc.scope\n", 0, 2,
         "/system.slice/docker-abc.scope"},
        {"no trailing newline", "0::/x", 0, 2, "/x"},
        {"a path with ':'", "6:freezer:/a:b\n", 0, 1, "/a:b"},
        {"v1 freezer preferred over the unified line", "0::/u\n3:freezer:/v1\n", 0, 1, "/v1"},
        {"freezer only as a prefix", "3:freezerx:/a\n2:xfreezer:/b\n", -ENOENT, 0, NULL},
        {"nothing", "", -ENOENT, 0, NULL},
        {"no freezer, no unified line", "3:cpu:/a\n", -ENOENT, 0, NULL},
        {"unified line with id 1", "1::/a\n", -ENOENT, 0, NULL},
        {"one colon", "0:/a\n", -EINVAL, 0, NULL},
        {"no id", ":freezer:/a\n", -EINVAL, 0, NULL},
        {"id not a number", "x:freezer:/a\n", -EINVAL, 0, NULL},
        {"relative path", "6:freezer:a\n", -EINVAL, 0, NULL},
        {"empty path", "6:freezer:\n", -EINVAL, 0, NULL},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct stoke_freezer f = {0};
        int r = stoke_freezer_parse(cases[i].text, strlen(cases[i].text), &f);
        if (r != cases[i].err)
            print_error("case \"%s\": %d\n", cases[i].what, r);
        assert_int_equal(r, cases[i].err);
        if (r == 0) {
            assert_int_equal(f.version, cases[i].version);
            assert_string_equal(f.path, cases[i].path);
        }
    }
}

static void test_parse_hostile(void **state)
{
    struct stoke_freezer f;
    char big[2 * STOKE_CGROUP_PATH_MAX];
    (void)state;
    /* A path longer than the struct holds. */
    memcpy(big, "6:freezer:/", 11);
    memset(big + 11, 'a', sizeof(big) - 12);
    big[sizeof(big) - 1] = '\n';
    assert_int_equal(stoke_freezer_parse(big, sizeof(big), &f), -EINVAL);
    /* An embedded NUL. */
    static const char nul[] = "6:freezer:/a\0b\n";
    assert_int_equal(stoke_freezer_parse(nul, sizeof(nul) - 1, &f), -EINVAL);
    /* Only the given length counts. */
    assert_int_equal(stoke_freezer_parse("0::/x\n6:freezer:/y\n", 6, &f), 0);
    assert_int_equal(f.version, 2);
    assert_string_equal(f.path, "/x");
}

static void test_find_self(void **state)
{
    struct stoke_freezer f;
    (void)state;
    /* Every Linux process is in some cgroup; this one's text parses. */
    int r = stoke_freezer_find(getpid(), &f);
    assert_true(r == 0 || r == -ENOENT);
    assert_int_equal(stoke_freezer_find(0, &f), -EINVAL);
    assert_int_equal(stoke_freezer_find(-1, &f), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test(test_find_self),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
