#include "api_logs.h"

#include <errno.h>
#include <stdlib.h>

struct api_logs {
    struct ctrl *c;
};

int api_logs_new(struct ctrl *c, struct api_logs **ret)
{
    struct api_logs *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->c = c;
    *ret = l;
    return 0;
}

void api_logs_serve(struct api_logs *l, struct http_req *req, const char *name)
{
    (void)l;
    (void)name;
    http_reply_error(req, 503, "Retry-After: 60\r\n", NULL, "logs are not there yet");
}

void api_logs_function_gone(struct api_logs *l, const char *name)
{
    (void)l;
    (void)name;
}

void api_logs_stop(struct api_logs *l)
{
    (void)l;
}

void api_logs_free(struct api_logs *l)
{
    free(l);
}
