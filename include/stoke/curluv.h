/* libcurl's multi socket interface driven by a libuv loop (one uv_poll_t per
 * socket curl asks about, one uv_timer_t for curl's timeout), so HTTP client
 * calls never block the loop. The pattern of curl's docs/examples/multi-uv.c.
 * Thread: the loop's. */
#ifndef STOKE_CURLUV_H
#define STOKE_CURLUV_H

#include <curl/curl.h>
#include <uv.h>

struct stoke_curluv;

/* Called once when a transfer ends, with curl's result. The easy handle is
 * already removed from the multi handle; the callback owns it again and
 * usually calls curl_easy_cleanup(). The callback may add transfers or call
 * stoke_curluv_close(). */
typedef void (*stoke_curluv_done_cb)(CURL *easy, CURLcode result, void *data);

/* Returns 0 and *ret, or -ENOMEM / -EIO (libcurl init failed). Pairs a
 * curl_global_init() (reference counted by libcurl) with the close. */
int stoke_curluv_new(uv_loop_t *loop, struct stoke_curluv **ret);

/* Starts `easy` on the loop. Returns 0 (cb runs later, from the loop, never
 * from inside this call) or a negative errno: -ECANCELED once closing,
 * -ENOMEM, -EINVAL (curl refused the handle, e.g. already in a multi); then
 * cb never runs and the caller keeps `easy`. curluv uses the handle's
 * CURLOPT_PRIVATE while the transfer runs: callers must not set it. */
int stoke_curluv_add(struct stoke_curluv *m, CURL *easy, stoke_curluv_done_cb cb, void *data);

/* Stops one transfer started with stoke_curluv_add() whose callback has not
 * run: its callback never runs and the caller owns `easy` again. Call it
 * from the loop, never from inside a libcurl callback. Returns 0, or
 * -ENOENT when `easy` is not in flight here. */
int stoke_curluv_remove(struct stoke_curluv *m, CURL *easy);

/* Aborts transfers in flight (each cb runs once with CURLE_ABORTED_BY_CALLBACK
 * from within this call, so callers may free their state; stoke_curluv_add()
 * from those callbacks fails with -ECANCELED), closes the libuv handles and
 * frees `m` once they are closed, then calls on_closed (may be NULL) from the
 * loop. `m` must not be used after this call. Call it once. */
void stoke_curluv_close(struct stoke_curluv *m, void (*on_closed)(void *data), void *data);

/* The errno for a transfer's CURLcode: 0, -ECANCELED (aborted, as by
 * stoke_curluv_close()), -ECONNREFUSED, -ETIMEDOUT, -ENOMEM, -EKEYREJECTED
 * (the peer's certificate or ours refused), and for CURLE_WRITE_ERROR the
 * reason the write callback stopped it, `write_err` (-ENOBUFS, a buffer
 * over its cap, becomes -EFBIG; -EIO when it gave none); else -EIO. */
int stoke_curluv_errno(CURLcode rc, int write_err);

#endif
