#include "stoke/uvbuf.h"

#include <stdlib.h>

void stoke_uv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}
