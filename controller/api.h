/* The controller's admin API (docs/admin-api.md): the endpoints, on the
 * HTTP server of stoke/httpd.h. Thread: the loop's. */
#ifndef CONTROLLER_API_H
#define CONTROLLER_API_H

#include "controller.h"
#include "stoke/util.h"

struct api;

struct api_config {
    const char *unix_path;        /* NULL: no unix socket */
    gid_t unix_gid;               /* its group; 0: the process's */
    const struct stoke_addr *tcp; /* NULL: no TCP */
    const char *token;            /* required with tcp; copied */
    /* Kubernetes: the Function objects are the specs, so the API is
     * read-only: PUT and DELETE answer 405 with this hint. NULL: Docker's
     * functions directory (api_set_fnset()). */
    const char *read_only;
    /* Kubernetes with leader election: false while this controller
     * follows, with *leader the Lease holder ("" when not known); the
     * function endpoints then answer 503 naming it. NULL: always leads. */
    bool (*leading)(const char **leader, void *data);
    void *leading_data;
};

/* Listens as `cfg` says. Until api_set_fnset() gives it the functions
 * directory, and while the controller adopts or stops, the function
 * endpoints answer 503. Returns 0 and *ret, or a negative errno (logged,
 * nothing left open). */
int api_new(struct ctrl *c, const struct api_config *cfg, struct api **ret);

/* The functions directory that PUT and DELETE write; NULL: none (503). */
void api_set_fnset(struct api *a, struct fnset *fs);

/* Read-only (Kubernetes): the functions are known (adopted), the endpoints
 * answer from now on. */
void api_set_serving(struct api *a, bool serving);

/* The controller is stopping: log streams end now (their last chunk sent);
 * other requests are answered 503 until api_close(). */
void api_stop_streams(struct api *a);

/* Closes the listeners and every connection, ends every log stream, removes
 * the socket file; frees `a` once its handles have closed. NULL is fine. */
void api_close(struct api *a);

#endif
