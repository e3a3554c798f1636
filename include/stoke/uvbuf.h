/* The read buffer allocator all of stoke's libuv streams share. */
#ifndef STOKE_UVBUF_H
#define STOKE_UVBUF_H

#include <uv.h>

/* uv_alloc_cb: a malloc'd buffer of the suggested size (len 0 on OOM, which
 * libuv reports to the read callback as UV_ENOBUFS). The read callback
 * frees buf->base. */
void stoke_uv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

#endif
