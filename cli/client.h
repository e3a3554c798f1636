/* stokectl's HTTP client of the admin API (docs/admin-api.md): libcurl's
 * easy interface, over the controller's unix socket or TCP with a bearer
 * token. Blocking: stokectl is a command, not an event loop. */
#ifndef STOKECTL_CLIENT_H
#define STOKECTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <json-c/json.h>

#include "stoke/util.h"

#define CLIENT_DEFAULT_SERVER "unix:/run/stoke/admin.sock"
/* Answers bigger than this are refused (a list of many functions with their
 * statuses stays far below it). */
#define CLIENT_MAX_BODY (64u * 1024 * 1024)

struct client {
    const char *server; /* borrowed: as given, for messages */
    /* For messages: what the server is and where else to look; NULL: the
     * controller and --server (set after client_init()). */
    const char *peer, *hint;
    bool is_unix;
    char unix_path[108];
    char base[256]; /* "http://localhost" for the socket, else the URL without a trailing '/' */
    char *token;    /* owned; NULL = no Authorization header */
    long timeout_ms;
};

/* Fills `c` from `server` ("unix:/path", "http://IP:PORT" or
 * "https://HOST:PORT") and reads the token's first line from `token_file`
 * (may be NULL). Returns 0, or -EINVAL (bad server, the message printed) or
 * -errno (token file unreadable, printed). */
int client_init(struct client *c, const char *server, const char *token_file);
void client_done(struct client *c);

/* One answer: the status and the body (NUL-terminated). */
struct reply {
    long status;
    struct stoke_buf body;
    json_object *json; /* the body parsed when it is JSON, else NULL; owned */
};

void reply_done(struct reply *r);

/* Sends `method` `path` (starting with "/api/") with an optional body and
 * waits for the whole answer. Returns 0 when an answer came (any status), or
 * -EIO when the server could not be reached or the transfer failed; then the
 * reason is printed on stderr with where it tried. */
int client_request(struct client *c, const char *method, const char *path, const char *body,
                   size_t body_len, const char *content_type, struct reply *ret);

/* GET `path`; a 200 answer's body goes to `out` as it arrives (flushed
 * after each piece), another status's body into ret->body. Without a total
 * timeout, so it may last until the server ends the answer or `*stop`
 * becomes true (checked at least once a second; set it from a signal
 * handler). Same returns as client_request(); being stopped is 0. */
int client_stream(struct client *c, const char *path, FILE *out, volatile int *stop,
                  struct reply *ret);

/* Prints a non-2xx answer as "stokectl: <what>: <error> (field F)" on
 * stderr, with a hint for 401 and 404. `what` names the object, e.g.
 * "function/hello". */
void client_print_error(const struct client *c, const char *what, const struct reply *r);

/* The "error" string of an error answer, or NULL. Borrowed from r->json. */
const char *reply_error(const struct reply *r);

#endif
