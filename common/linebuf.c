#include "stoke/linebuf.h"

#include <errno.h>
#include <string.h>

void stoke_linebuf_init(struct stoke_linebuf *lb, size_t max_line)
{
    /* +1 so a maximal line still fits with its '\n'. */
    stoke_buf_init(&lb->buf, max_line + 1);
}

void stoke_linebuf_done(struct stoke_linebuf *lb)
{
    stoke_buf_done(&lb->buf);
}

int stoke_linebuf_feed(struct stoke_linebuf *lb, const char *data, size_t len, stoke_line_cb cb,
                       void *cbdata)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) + 1 : len;
        int r = stoke_buf_append(&lb->buf, data, take);
        if (r < 0)
            return r == -ENOBUFS ? -ENOBUFS : r;
        data += take;
        len -= take;
        if (!nl)
            break;

        char *line = lb->buf.data;
        size_t n = lb->buf.len - 1;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        line[n] = '\0';
        r = cb(line, n, cbdata);
        lb->buf.len = 0;
        if (r < 0)
            return r;
    }
    return 0;
}
