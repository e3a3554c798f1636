/* Line framing of the controller channel: split reads, CRLF, the cap. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/linebuf.h"

struct seen {
    char lines[8][64];
    int n;
    int stop_at; /* return -ECANCELED on this line (1-based), 0 = never */
};

static int on_line(char *line, size_t len, void *data)
{
    struct seen *s = data;
    assert_int_equal(strlen(line), len);
    if (s->n < 8)
        snprintf(s->lines[s->n], sizeof(s->lines[0]), "%s", line);
    s->n++;
    return s->stop_at == s->n ? -ECANCELED : 0;
}

static void test_split_and_joined(void **state)
{
    (void)state;
    struct stoke_linebuf lb;
    struct seen s = {0};
    stoke_linebuf_init(&lb, 16);
    assert_int_equal(stoke_linebuf_feed(&lb, "ab", 2, on_line, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(stoke_linebuf_feed(&lb, "c\r\nde\n\nf", 8, on_line, &s), 0);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.lines[0], "abc");
    assert_string_equal(s.lines[1], "de");
    assert_string_equal(s.lines[2], "");
    assert_int_equal(stoke_linebuf_feed(&lb, "\n", 1, on_line, &s), 0);
    assert_string_equal(s.lines[3], "f");
    stoke_linebuf_done(&lb);
}

static void test_cap(void **state)
{
    (void)state;
    struct stoke_linebuf lb;
    struct seen s = {0};
    stoke_linebuf_init(&lb, 4);
    /* Exactly the cap passes. */
    assert_int_equal(stoke_linebuf_feed(&lb, "abcd\n", 5, on_line, &s), 0);
    assert_int_equal(s.n, 1);
    /* One more byte, even split over reads, is refused. */
    assert_int_equal(stoke_linebuf_feed(&lb, "abc", 3, on_line, &s), 0);
    assert_int_equal(stoke_linebuf_feed(&lb, "de\n", 3, on_line, &s), -ENOBUFS);
    assert_int_equal(s.n, 1);
    stoke_linebuf_done(&lb);
}

static void test_callback_stops(void **state)
{
    (void)state;
    struct stoke_linebuf lb;
    struct seen s = {.stop_at = 1};
    stoke_linebuf_init(&lb, 16);
    assert_int_equal(stoke_linebuf_feed(&lb, "a\nb\n", 4, on_line, &s), -ECANCELED);
    assert_int_equal(s.n, 1);
    stoke_linebuf_done(&lb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_and_joined),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_callback_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
