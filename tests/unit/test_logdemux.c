/* The engine's multiplexed log stream (stoke_log_demux_feed): frames split
 * anywhere, both streams, a TTY's raw output, a broken header, a stop. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "stoke/engine.h"

struct out {
    char text[3][256]; /* per stream: 0 unused, 1 stdout, 2 stderr */
    size_t len[3];
    char order[64]; /* the stream of each piece, "1" or "2" */
    size_t pieces;
    int stop_at; /* return -ECANCELED on this piece (1-based), 0 = never */
};

static int on_piece(int stream, const char *data, size_t len, void *cbdata)
{
    struct out *o = cbdata;
    assert_true(stream == 1 || stream == 2);
    assert_true(len > 0);
    assert_true(o->len[stream] + len < sizeof(o->text[0]));
    memcpy(o->text[stream] + o->len[stream], data, len);
    o->len[stream] += len;
    if (o->pieces < sizeof(o->order) - 1)
        o->order[o->pieces] = (char)('0' + stream);
    o->pieces++;
    return o->stop_at && (size_t)o->stop_at == o->pieces ? -ECANCELED : 0;
}

/* Appends one frame of `stream` with `payload` to buf; returns its size. */
static size_t frame(unsigned char *buf, int stream, const char *payload)
{
    size_t n = strlen(payload);
    buf[0] = (unsigned char)stream;
    buf[1] = buf[2] = buf[3] = 0;
    buf[4] = (unsigned char)(n >> 24);
    buf[5] = (unsigned char)(n >> 16);
    buf[6] = (unsigned char)(n >> 8);
    buf[7] = (unsigned char)n;
    memcpy(buf + 8, payload, n);
    return 8 + n;
}

static void test_split_at_every_offset(void **state)
{
    (void)state;
    unsigned char buf[256];
    size_t n = frame(buf, 1, "hello\n");
    n += frame(buf + n, 2, "oops\n");
    n += frame(buf + n, 1, "");
    n += frame(buf + n, 0, "stdin echo\n"); /* stdin is shown as stdout */
    for (size_t cut = 0; cut <= n; cut++) {
        struct stoke_log_demux d = {0};
        struct out o = {0};
        assert_int_equal(stoke_log_demux_feed(&d, (char *)buf, cut, on_piece, &o), 0);
        assert_int_equal(stoke_log_demux_feed(&d, (char *)buf + cut, n - cut, on_piece, &o), 0);
        assert_int_equal(o.len[1], strlen("hello\nstdin echo\n"));
        assert_memory_equal(o.text[1], "hello\nstdin echo\n", o.len[1]);
        assert_int_equal(o.len[2], 5);
        assert_memory_equal(o.text[2], "oops\n", 5);
        assert_false(d.raw);
    }
}

static void test_byte_by_byte_keeps_order(void **state)
{
    (void)state;
    unsigned char buf[256];
    size_t n = frame(buf, 2, "e1");
    n += frame(buf + n, 1, "o1");
    n += frame(buf + n, 2, "e2");
    struct stoke_log_demux d = {0};
    struct out o = {0};
    for (size_t i = 0; i < n; i++)
        assert_int_equal(stoke_log_demux_feed(&d, (char *)buf + i, 1, on_piece, &o), 0);
    assert_string_equal(o.order, "221122");
    assert_memory_equal(o.text[2], "e1e2", 4);
}

static void test_tty_output_is_raw(void **state)
{
    (void)state;
    static const char text[] = "plain text from a tty\nsecond line\n";
    struct stoke_log_demux d = {0};
    struct out o = {0};
    assert_int_equal(stoke_log_demux_feed(&d, text, 5, on_piece, &o), 0);
    assert_int_equal(stoke_log_demux_feed(&d, text + 5, sizeof(text) - 6, on_piece, &o), 0);
    assert_true(d.raw);
    assert_int_equal(o.len[1], sizeof(text) - 1);
    assert_memory_equal(o.text[1], text, sizeof(text) - 1);
}

static void test_bad_header_after_the_first(void **state)
{
    (void)state;
    unsigned char buf[256];
    size_t n = frame(buf, 1, "ok\n");
    memcpy(buf + n, "garbage!", 8);
    struct stoke_log_demux d = {0};
    struct out o = {0};
    assert_int_equal(stoke_log_demux_feed(&d, (char *)buf, n + 8, on_piece, &o), -EINVAL);
    assert_int_equal(o.len[1], 3);
}

static void test_callback_stops_the_feed(void **state)
{
    (void)state;
    unsigned char buf[256];
    size_t n = frame(buf, 1, "a");
    n += frame(buf + n, 1, "b");
    struct stoke_log_demux d = {0};
    struct out o = {.stop_at = 1};
    assert_int_equal(stoke_log_demux_feed(&d, (char *)buf, n, on_piece, &o), -ECANCELED);
    assert_int_equal(o.pieces, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_at_every_offset),
        cmocka_unit_test(test_byte_by_byte_keeps_order),
        cmocka_unit_test(test_tty_output_is_raw),
        cmocka_unit_test(test_bad_header_after_the_first),
        cmocka_unit_test(test_callback_stops_the_feed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
