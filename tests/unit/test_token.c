/* Shared tokens (stoke/util.h): the file's first line and its bounds, and
 * the comparison. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "stoke/util.h"

static void test_equal(void **state)
{
    const char *t = "0123456789abcdef";
    (void)state;
    assert_true(stoke_token_equal(t, "0123456789abcdef", 16));
    assert_false(stoke_token_equal(t, "0123456789abcdeF", 16));
    assert_false(stoke_token_equal(t, "1123456789abcdef", 16));
    assert_false(stoke_token_equal(t, "0123456789abcde", 15));
    assert_false(stoke_token_equal(t, "0123456789abcdef0", 17));
    assert_false(stoke_token_equal(t, "", 0));
    /* Only `len` bytes count: a longer buffer is not read past them. */
    assert_true(stoke_token_equal(t, "0123456789abcdefXYZ", 16));
    /* An embedded NUL is a byte like any other. */
    assert_false(stoke_token_equal(t, "0123456789abcde\0", 16));
}

/* Writes `text` to a temporary file; returns its path (free()). */
static char *file_with(const char *text)
{
    char *path = strdup("/tmp/stoke-test-token-XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_read(void **state)
{
    static const struct {
        const char *text;
        int err;
        const char *token;
    } cases[] = {
        {"0123456789abcdef\n", 0, "0123456789abcdef"},
        {"0123456789abcdef\r\nsecond line\n", 0, "0123456789abcdef"},
        {"0123456789abcdef", 0, "0123456789abcdef"},
        {"~!@#$%^&*()_+\"\\x\n", 0, "~!@#$%^&*()_+\"\\x"},
        {"0123456789abcde\n", -EINVAL, NULL},   /* 15 bytes */
        {"0123456789 abcdef\n", -EINVAL, NULL}, /* a space */
        {"0123456789\tabcdef\n", -EINVAL, NULL},
        {"\n0123456789abcdef\n", -EINVAL, NULL}, /* the first line is empty */
        {"", -EINVAL, NULL},
        {"0123456789abcdef\x7f\n", -EINVAL, NULL},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *path = file_with(cases[i].text);
        char *tok = NULL;
        int r = stoke_token_read(path, &tok);
        if (r != cases[i].err)
            print_error("case %zu: %d\n", i, r);
        assert_int_equal(r, cases[i].err);
        if (cases[i].token)
            assert_string_equal(tok, cases[i].token);
        free(tok);
        unlink(path);
        free(path);
    }

    /* At most 4096 bytes; one more is refused. */
    char *big = malloc(STOKE_TOKEN_MAX + 3);
    assert_non_null(big);
    memset(big, 'a', STOKE_TOKEN_MAX);
    strcpy(big + STOKE_TOKEN_MAX, "\n");
    char *path = file_with(big);
    char *tok = NULL;
    assert_int_equal(stoke_token_read(path, &tok), 0);
    assert_int_equal(strlen(tok), STOKE_TOKEN_MAX);
    free(tok);
    unlink(path);
    free(path);
    strcpy(big + STOKE_TOKEN_MAX, "a\n");
    path = file_with(big);
    assert_int_equal(stoke_token_read(path, &tok), -EINVAL);
    unlink(path);
    free(path);
    free(big);

    assert_int_equal(stoke_token_read("/nonexistent/stoke-token", &tok), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal),
        cmocka_unit_test(test_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
