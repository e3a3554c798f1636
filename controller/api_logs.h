/* GET /api/v1/functions/{name}/logs (api_logs.c): the output of a
 * function's replicas, read through the backend (the engine's container
 * logs; on Kubernetes the API server's pods/log) and streamed to the client
 * as chunked text, each line prefixed with "[<replica name>] ".
 * Thread: the loop's. */
#ifndef CONTROLLER_API_LOGS_H
#define CONTROLLER_API_LOGS_H

#include "controller.h"
#include "stoke/httpd.h"

struct api_logs;

int api_logs_new(struct ctrl *c, struct api_logs **ret);
/* Answers `req` for function `name` (known to exist): checks the query
 * (400 with its field), then streams. */
void api_logs_serve(struct api_logs *l, struct stoke_httpd_req *req, const char *name);
/* Function `name` is gone: its streams end. */
void api_logs_function_gone(struct api_logs *l, const char *name);
/* Every stream ends now. */
void api_logs_stop(struct api_logs *l);
/* Ends every stream and frees `l` once the engine calls are over. */
void api_logs_free(struct api_logs *l);

#endif
