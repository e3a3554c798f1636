/* Shared between common/kube*.c; not public. */
#ifndef STOKE_KUBEINT_H
#define STOKE_KUBEINT_H

#include <stddef.h>
#include <stdint.h>

#include "stoke/kube.h"

/* Reads the regular file `path` whole (at most `max` bytes, NUL-terminated
 * past *ret_len). Blocking: only for small files read rarely (config at
 * start, a token at most once a minute). Returns 0 and *ret (free()), or
 * -errno of open/read, -EINVAL (not a regular file), -EFBIG. */
int stoke__kube_read_file(const char *path, size_t max, char **ret, size_t *ret_len);

/* One request in flight or waiting, to cancel it. */
struct stoke__kube_call;

/* stoke_kube_request() that also gives the call, valid until its callback
 * has started. */
int stoke__kube_request_ex(struct stoke_kube *k, enum stoke_kube_method method,
                           const char *path_query, json_object *body, stoke_kube_cb cb, void *data,
                           struct stoke__kube_call **ret);

/* Called with the body of a 2xx answer as it arrives, from inside libcurl's
 * write callback: start no request from here. A negative return stops the
 * transfer; its callback then gets that errno. 1: pause the transfer
 * (libcurl hands the same piece again once it is resumed). */
typedef int (*stoke__kube_stream_fn)(const char *p, size_t n, void *data);

/* A GET whose 2xx body goes to on_data (not to res->json) and that is not
 * counted against max_inflight; `timeout_ms` bounds the whole stream. */
int stoke__kube_stream(struct stoke_kube *k, const char *path_query, uint64_t timeout_ms,
                       stoke__kube_stream_fn on_data, stoke_kube_cb cb, void *data,
                       struct stoke__kube_call **ret);

uv_loop_t *stoke__kube_loop(const struct stoke_kube *k);

/* Stops a call whose callback has not started: it never runs. */
void stoke__kube_cancel(struct stoke__kube_call *c);

#endif
