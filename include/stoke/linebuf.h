/* Newline-delimited framing for the controller <-> activator channel: bytes
 * in, whole lines out, each line capped so a peer cannot make us buffer
 * without bound. */
#ifndef STOKE_LINEBUF_H
#define STOKE_LINEBUF_H

#include "stoke/util.h"

struct stoke_linebuf {
    struct stoke_buf buf;
};

/* `max_line`: the longest line accepted, without its '\n'. */
void stoke_linebuf_init(struct stoke_linebuf *lb, size_t max_line);
void stoke_linebuf_done(struct stoke_linebuf *lb);

/* Called for each complete line, NUL-terminated in place, without '\n' (and
 * without a trailing '\r'). The line is borrowed for the call. A negative
 * return stops feeding and is returned from stoke_linebuf_feed(). */
typedef int (*stoke_line_cb)(char *line, size_t len, void *data);

/* Returns 0, the callback's negative value, or -ENOBUFS when a line is
 * longer than `max_line` (the buffer is then unusable: close the peer). */
int stoke_linebuf_feed(struct stoke_linebuf *lb, const char *data, size_t len, stoke_line_cb cb,
                       void *cbdata);

#endif
