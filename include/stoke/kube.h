/* A Kubernetes API client on a libuv loop: libcurl multi (stoke/curluv.h)
 * with json-c bodies, as the engine client. Configuration from inside a pod
 * (service account) or from a kubeconfig file; plain requests returning the
 * parsed body or the API's `Status`; an informer (LIST, then WATCH from the
 * list's resourceVersion, relisting on 410 Gone, with a local cache);
 * read-modify-update retried on 409 Conflict; leader election on a
 * coordination.k8s.io/v1 Lease.
 *
 * Thread: the loop's. Every callback runs from the loop, never from inside a
 * call that takes it; callbacks may start further calls. Library code does
 * not log: failures come back as a negative errno and a message.
 *
 * Blocking: the config loaders read their files synchronously (call them at
 * start-up), and the client re-reads a token file synchronously: a few KiB,
 * at most once a minute and after a 401. Nothing else blocks the loop.
 * Bounds: an answer 32 MiB, a watch line 3 MiB, watch events waiting for the
 * loop 16 MiB (past that the watch is dropped and a relist catches up), an
 * informer's cache max_objects, requests waiting for a slot 4096. */
#ifndef STOKE_KUBE_H
#define STOKE_KUBE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>
#include <uv.h>

#include "stoke/diag.h"

/* --- configuration ---------------------------------------------------------- */

#define STOKE_KUBE_SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"
/* Files a config reads (CA, certificates, keys, tokens, kubeconfig). */
#define STOKE_KUBE_FILE_MAX (1024 * 1024)

/* Where and how to reach the API server. Every member is owned (free with
 * stoke_kube_config_done()); NULL or 0 when not set. Certificates and keys
 * are PEM held in memory (files are read at load), handed to libcurl as
 * blobs. */
struct stoke_kube_config {
    char *server;    /* "https://host:port", IPv6 hosts bracketed, no trailing '/' */
    char *namespace; /* the default namespace: the context's, the pod's, else "default" */
    char *ca;        /* PEM bundle trusted for the server; NULL: the system's */
    size_t ca_len;
    char *cert; /* client certificate PEM */
    size_t cert_len;
    char *key; /* its key PEM */
    size_t key_len;
    char *token;      /* a bearer token given in the config */
    char *token_file; /* or a file holding it, re-read by the client (see below) */
    bool insecure;    /* insecure-skip-tls-verify, only when the caller allowed it */
};

/* From inside a pod: KUBERNETES_SERVICE_HOST and _PORT, and in `sa_dir`
 * (NULL: STOKE_KUBE_SA_DIR) the token (as token_file), ca.crt and namespace.
 * Returns 0 and *ret, or -ENOENT (not in a cluster: the variables are not
 * set), -EINVAL, -EFBIG, -ENOMEM, -errno of a file, with `err` (may be NULL)
 * saying what is wrong. `ret` is written only on success. */
int stoke_kube_config_in_cluster(const char *sa_dir, struct stoke_kube_config *ret,
                                 struct stoke_diag *err);

/* A kubeconfig held in `buf` (YAML), read as the file `file` (relative file
 * names in it are taken from that file's directory; NULL: the current one).
 * `context` NULL is current-context. Reads: apiVersion v1 and kind Config
 * (when given); the context's cluster (server, certificate-authority or
 * -data, insecure-skip-tls-verify, refused with -EPERM unless
 * `allow_insecure`), user (client-certificate and client-key, each file or
 * -data, token or tokenFile) and namespace. Refused with a message naming
 * them: exec and auth-provider credential plugins, username/password, a
 * server that is not https, a missing context, cluster or user. Other keys
 * are ignored. Returns 0 or a negative errno with `err` (file, line, column,
 * field) filled; `ret` is written only on success. */
int stoke_kube_config_parse(const char *buf, size_t len, const char *file, const char *context,
                            bool allow_insecure, struct stoke_kube_config *ret,
                            struct stoke_diag *err);

/* The kubeconfig at `path`; NULL: $KUBECONFIG (one file: a list is refused,
 * not merged), else ~/.kube/config. As stoke_kube_config_parse(). */
int stoke_kube_config_load(const char *path, const char *context, bool allow_insecure,
                           struct stoke_kube_config *ret, struct stoke_diag *err);

/* Frees the members and zeroes `c`; safe on a zeroed config and twice. */
void stoke_kube_config_done(struct stoke_kube_config *c);

/* --- responses -------------------------------------------------------------- */

/* A `Status` the API server sent with an error (metav1.Status). */
struct stoke_kube_status {
    int code;          /* HTTP code in the Status, 0 when absent */
    char reason[64];   /* "NotFound", "Conflict", "AlreadyExists", "Expired", ... */
    char message[512]; /* cleaned for logs, cut to fit */
};

/* Reads a Status object (kind "Status", or any object with code, reason or
 * message). Returns 0, or -EINVAL when `obj` is not one. Pure. */
int stoke_kube_status_parse(json_object *obj, struct stoke_kube_status *ret);

/* The errno a Kubernetes answer stands for: 2xx 0, 400 -EINVAL, 401
 * -EACCES, 403 -EPERM, 404 -ENOENT, 409 -EEXIST (reason AlreadyExists) or
 * -ESTALE (Conflict: a stale resourceVersion or precondition), 410 -EIDRM
 * (Gone/Expired: resourceVersion too old), 422 -EINVAL, 429 -EAGAIN, 408/504
 * -ETIMEDOUT, else -EIO. Pure. */
int stoke_kube_errno(long http_status, const char *reason);

struct stoke_kube_result {
    int err;                         /* 0, stoke_kube_errno(), or a transport errno */
    long http_status;                /* 0 when no answer came */
    json_object *json;               /* the parsed body; borrowed for the callback */
    struct stoke_kube_status status; /* on error: the Status, or what went wrong */
};

typedef void (*stoke_kube_cb)(const struct stoke_kube_result *res, void *data);

/* --- the client ------------------------------------------------------------- */

struct stoke_kube;

/* Copies `cfg`. Returns 0 and *ret, or -EINVAL (no server), -ENOMEM, -EIO. */
int stoke_kube_new(uv_loop_t *loop, const struct stoke_kube_config *cfg, struct stoke_kube **ret);

/* Aborts everything in flight (their callbacks see -ECANCELED from within
 * this call; informers and electors must be stopped before), then frees the
 * client and calls on_closed (may be NULL) from the loop. */
void stoke_kube_close(struct stoke_kube *k, void (*on_closed)(void *data), void *data);

/* The time limit of one request (default 30 s; watches have their own) and
 * the requests in flight at once (default 32; later ones wait in order, up
 * to 4096 waiting, then -EAGAIN). */
void stoke_kube_set_limits(struct stoke_kube *k, uint64_t timeout_ms, unsigned max_inflight);

/* The default namespace of the config. Borrowed. */
const char *stoke_kube_namespace(const struct stoke_kube *k);

/* A kind of object: "/api/v1" + "pods", "/apis/coordination.k8s.io/v1" +
 * "leases". Cluster-scoped resources ignore the namespace. */
struct stoke_kube_resource {
    const char *api; /* "/api/v1", "/apis/<group>/<version>" */
    const char *plural;
    bool namespaced;
};

extern const struct stoke_kube_resource stoke_kube_configmaps, stoke_kube_pods, stoke_kube_leases;

/* The path of an object (name NULL: the collection) and subresource (NULL,
 * "status"). Names are checked (DNS subdomain characters), so no path can
 * escape. Returns 0, -EINVAL, -ENAMETOOLONG. */
int stoke_kube_path(const struct stoke_kube_resource *res, const char *ns, const char *name,
                    const char *subresource, char *buf, size_t size);

enum stoke_kube_method {
    STOKE_KUBE_GET,
    STOKE_KUBE_POST,
    STOKE_KUBE_PUT,
    STOKE_KUBE_PATCH, /* application/merge-patch+json */
    STOKE_KUBE_DELETE,
};

/* One request on `path_query` (from stoke_kube_path(), with a query string
 * if any) with an optional body (serialised now, not kept). Returns 0 (cb
 * runs later, once) or a negative errno (cb never runs). The callback's
 * res->json is the answer's JSON (the object, or the Status on errors). On
 * 401 with a token file, the token is re-read and the request sent once
 * more. */
int stoke_kube_request(struct stoke_kube *k, enum stoke_kube_method method, const char *path_query,
                       json_object *body, stoke_kube_cb cb, void *data);

/* Shorthands. `ns` NULL is the client's namespace. replace (PUT) and patch
 * take `subresource` NULL or "status"; replace's object carries its
 * metadata.resourceVersion, which the server checks (409 -ESTALE when
 * stale). */
int stoke_kube_get(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                   const char *name, stoke_kube_cb cb, void *data);
int stoke_kube_create(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                      json_object *obj, stoke_kube_cb cb, void *data);
int stoke_kube_replace(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                       const char *name, const char *subresource, json_object *obj,
                       stoke_kube_cb cb, void *data);
int stoke_kube_patch(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                     const char *name, const char *subresource, json_object *merge_patch,
                     stoke_kube_cb cb, void *data);

/* DELETE with DeleteOptions: propagationPolicy ("Foreground", "Background",
 * "Orphan"; NULL: the server's default) and preconditions (uid and/or
 * resourceVersion; NULL: none), each NULL when unused. */
struct stoke_kube_delete_opts {
    const char *propagation;
    const char *uid;
    const char *resource_version;
};
int stoke_kube_delete(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                      const char *name, const struct stoke_kube_delete_opts *opts, stoke_kube_cb cb,
                      void *data);

/* Read, modify, update (`res` must outlive the call): GETs the object, calls `mutate` on it (owned
 * by the helper, changed in place; return 0 to write it, 1 when nothing needs writing: cb then gets
 * the object as read, or a negative errno to stop with it), PUTs it (to `subresource` NULL or
 * "status") with the resourceVersion it was read at, and on 409 Conflict reads again, up to
 * `attempts` times (0: 5). cb gets the written object, or the last error (-ESTALE once the attempts
 * are spent). mutate runs from the loop. */
typedef int (*stoke_kube_mutate_fn)(json_object *obj, void *data);
int stoke_kube_update(struct stoke_kube *k, const struct stoke_kube_resource *res, const char *ns,
                      const char *name, const char *subresource, unsigned attempts,
                      stoke_kube_mutate_fn mutate, stoke_kube_cb cb, void *data);

/* --- pod logs ------------------------------------------------------------------- */

/* GET .../pods/NAME/log: the API server proxies the node's kubelet
 * (containerLogs). One stream, stdout and stderr merged as the kubelet
 * sends them. */
struct stoke_kube_logs_opts {
    const char *container;  /* NULL: the pod's only container */
    bool follow;            /* until the container stops */
    bool timestamps;        /* RFC 3339 time and a space before each line */
    int64_t tail_lines;     /* the last lines only; < 0: all */
    uint64_t since_seconds; /* only what is newer than this; 0: all */
    uint64_t limit_bytes;   /* the server stops after about this much; 0: no limit */
};

struct stoke_kube_logs;

/* Streams the log of container `o->container` of pod `ns`/`pod` (`ns` NULL:
 * the client's namespace). `on_data` gets each piece (stream 1, borrowed)
 * from the loop, never from inside libcurl; `on_end` once, after the last
 * piece: err 0 at the end of the log (without follow: all of it; with
 * follow: the container stopped), else the API server's answer (its Status
 * in res->status: -ENOENT for a pod or container that is not there, -EINVAL
 * for one that has not started, -EIO with the API server's message when it
 * could not reach the kubelet), a transport errno, -ECANCELED after
 * stoke_kube_logs_cancel() or from within stoke_kube_close(). res->json is
 * NULL. Bounded as stoke/logq.h: while paused or with 256 KiB waiting the
 * socket is not read; an error body is read up to 64 KiB. No time limit
 * (connecting has one). Not counted in max_inflight. Returns 0 and *ret
 * (valid until on_end has run), or a negative errno (-EINVAL: a bad name)
 * and no callback runs. */
int stoke_kube_pod_logs(struct stoke_kube *k, const char *ns, const char *pod,
                        const struct stoke_kube_logs_opts *o,
                        void (*on_data)(int stream, const char *bytes, size_t len, void *data),
                        stoke_kube_cb on_end, void *data, struct stoke_kube_logs **ret);

/* Backpressure: while paused on_data does not run and nothing is read. */
void stoke_kube_logs_pause(struct stoke_kube_logs *l, bool pause);

/* on_data runs no more; on_end runs later, from the loop, with -ECANCELED.
 * Not from inside on_end. */
void stoke_kube_logs_cancel(struct stoke_kube_logs *l);

/* --- watch events and the cache (pure) ------------------------------------- */

enum stoke_kube_event_type {
    STOKE_KUBE_ADDED,
    STOKE_KUBE_MODIFIED,
    STOKE_KUBE_DELETED,
    STOKE_KUBE_BOOKMARK,
    STOKE_KUBE_ERROR,
};

/* One line of a watch stream: {"type": ..., "object": {...}}. On success
 * *ret_obj is the object (owned: put it); for ERROR it is the Status, also
 * read into *ret_status (may be NULL). Objects other than ERROR's must carry
 * metadata.name and metadata.resourceVersion. Returns 0 or -EINVAL. */
int stoke_kube_event_parse(const char *line, size_t len, enum stoke_kube_event_type *ret_type,
                           json_object **ret_obj, struct stoke_kube_status *ret_status);

/* "namespace/name" (or "name" when cluster-scoped) of an object into buf.
 * Returns 0, -EINVAL (no metadata.name), -ENAMETOOLONG. */
int stoke_kube_object_key(json_object *obj, char *buf, size_t size);

/* metadata.resourceVersion, or NULL. Borrowed from obj. */
const char *stoke_kube_object_rv(json_object *obj);

/* A cache: a json object mapping keys (above) to objects. The two helpers
 * change it and report each real change: `emit` gets ADDED, MODIFIED or
 * DELETED with the object (borrowed; for DELETED the last one known). */
typedef void (*stoke_kube_emit_fn)(enum stoke_kube_event_type type, json_object *obj, void *data);

/* Applies one ADDED/MODIFIED/DELETED event (others are no-ops). A MODIFIED
 * of an unknown key is an ADDED, an ADDED of a known one a MODIFIED, an
 * object with the cached resourceVersion no change; a DELETED of an
 * unknown key emits nothing. Takes a reference of obj when it keeps it.
 * Returns 0, -EINVAL (no name), -ENOMEM. */
int stoke_kube_cache_apply(json_object *cache, enum stoke_kube_event_type type, json_object *obj,
                           stoke_kube_emit_fn emit, void *data);

/* Replaces the cache's content with `items` (a LIST's, keyed here) and
 * emits the difference: DELETED for objects that are gone (deleted while we
 * were not watching), ADDED for new ones, MODIFIED for changed
 * resourceVersions. Returns 0, -EINVAL (an item without a name), -ENOMEM;
 * on error the cache is as it was. */
int stoke_kube_cache_relist(json_object *cache, json_object *items, stoke_kube_emit_fn emit,
                            void *data);

/* --- the informer ------------------------------------------------------------ */

struct stoke_kube_informer_opts {
    const struct stoke_kube_resource *res;
    const char *ns;             /* NULL: all namespaces */
    const char *label_selector; /* NULL: none */
    const char *field_selector; /* NULL: none */
    unsigned page_limit;        /* LIST page size (0: 500) */
    unsigned watch_timeout_s;   /* timeoutSeconds of each WATCH (0: 300); then it re-watches */
    size_t max_objects;         /* cache bound (0: 65536); a bigger LIST is an error */
    /* Each change of the cache, in order (see stoke_kube_cache_apply()). */
    stoke_kube_emit_fn on_event;
    /* After each LIST was applied (the cache is complete); may be NULL. */
    void (*on_synced)(void *data);
    /* A LIST or WATCH failed; the informer retries with back-off itself.
     * May be NULL. */
    void (*on_error)(int err, const char *message, void *data);
    /* 410 Gone: resourceVersion `rv` (of the watch, or of an expired LIST
     * continue token) was compacted away; a new LIST follows. May be NULL. */
    void (*on_gone)(const char *rv, void *data);
    void *data;
};

struct stoke_kube_informer;

/* Starts listing. Returns 0 and *ret or a negative errno (nothing started). */
int stoke_kube_informer_start(struct stoke_kube *k, const struct stoke_kube_informer_opts *opts,
                              struct stoke_kube_informer **ret);

/* Stops and frees; no callback runs after. Safe from inside its own
 * callbacks. */
void stoke_kube_informer_stop(struct stoke_kube_informer *inf);

/* The cache (see above), borrowed: read it, do not change it. */
json_object *stoke_kube_informer_cache(const struct stoke_kube_informer *inf);

/* The resourceVersion it is at, and counters for tests and metrics. */
struct stoke_kube_informer_stats {
    uint64_t lists;     /* LISTs completed */
    uint64_t watches;   /* WATCHes started */
    uint64_t gone;      /* 410 Gone seen (status or ERROR event) */
    uint64_t errors;    /* failed LISTs and WATCHes */
    uint64_t events;    /* watch events read */
    uint64_t bookmarks; /* of which BOOKMARKs */
};
const char *stoke_kube_informer_rv(const struct stoke_kube_informer *inf);
void stoke_kube_informer_stats(const struct stoke_kube_informer *inf,
                               struct stoke_kube_informer_stats *ret);

/* --- leader election --------------------------------------------------------- */

enum stoke_kube_lease_action {
    STOKE_KUBE_LEASE_WAIT,    /* another holder's lease is live: follow */
    STOKE_KUBE_LEASE_ACQUIRE, /* free, released or expired: take it */
    STOKE_KUBE_LEASE_RENEW,   /* ours: renew it */
};

/* What candidate `me` does with `lease` (a Lease object, NULL when there
 * is none) at wall time `now_ms` (ms since the epoch). A lease expires at
 * renewTime (else acquireTime) + leaseDurationSeconds; one without a holder
 * or without a time is free. Pure. *ret_expiry_ms (may be NULL) is the
 * expiry, 0 when free. */
enum stoke_kube_lease_action stoke_kube_lease_decide(json_object *lease, int64_t now_ms,
                                                     const char *me, int64_t *ret_expiry_ms);

/* The Lease to write for `action` (ACQUIRE or RENEW): a copy of `lease`
 * (NULL: a new one named ns/name) with holderIdentity me, renewTime now,
 * leaseDurationSeconds, and on ACQUIRE acquireTime now and
 * leaseTransitions + 1 (when it had another holder). `release`: holder ""
 * instead, so the next candidate needs not wait. Keeps the read
 * metadata.resourceVersion: the PUT fails with 409 if someone wrote in
 * between. Returns an owned object or NULL (-ENOMEM). Pure. */
json_object *stoke_kube_lease_next(json_object *lease, const char *ns, const char *name,
                                   const char *me, int64_t now_ms, unsigned duration_s,
                                   enum stoke_kube_lease_action action, bool release);

/* MicroTime text ("2026-12-04T16:26:24.123456Z") <-> ms since the epoch.
 * Parse returns 0 or -EINVAL. */
int stoke_kube_time_parse(const char *s, int64_t *ret_ms);
void stoke_kube_time_format(int64_t ms, char buf[32]);

struct stoke_kube_elector_opts {
    const char *ns;       /* NULL: the client's namespace */
    const char *name;     /* the Lease's name */
    const char *identity; /* this candidate's holderIdentity */
    unsigned lease_s;     /* leaseDurationSeconds (0: 15) */
    unsigned renew_s;     /* a leader that could not renew for this long steps down (0: 10) */
    unsigned retry_s;     /* how often to try (0: 2); renew_s + retry_s < lease_s */
    /* Leading started (true) or stopped (false). */
    void (*on_change)(bool leading, void *data);
    /* A read or write of the Lease failed (it retries itself); may be NULL. */
    void (*on_error)(int err, const char *message, void *data);
    void *data;
};

struct stoke_kube_elector;

/* Starts trying at once, then every retry_s. Returns 0 and *ret, or
 * -EINVAL (no name, identity or on_change; names too long; timings out of
 * order), -ENOMEM. */
int stoke_kube_elector_start(struct stoke_kube *k, const struct stoke_kube_elector_opts *opts,
                             struct stoke_kube_elector **ret);
bool stoke_kube_elector_leading(const struct stoke_kube_elector *el);
/* Its writes of the Lease answered 409 Conflict (a renewal is then read
 * again and retried). */
uint64_t stoke_kube_elector_conflicts(const struct stoke_kube_elector *el);
/* The Lease's holderIdentity as last read or written ("" when not known or
 * free). Borrowed, valid until the next read of the Lease. */
const char *stoke_kube_elector_holder(const struct stoke_kube_elector *el);

/* Stops trying. When leading and `release`, writes the Lease free (best
 * effort) first; on_change(false) is called (from within this call) when it
 * was leading. Frees the elector once done; the client must outlive it
 * until then. */
void stoke_kube_elector_stop(struct stoke_kube_elector *el, bool release);

#endif
