/* Asynchronous client of the container engine's HTTP API (Docker Engine API;
 * Podman's compatible service works the same) over its unix socket.
 *
 * Every call runs on the caller's libuv loop through libcurl's multi socket
 * interface (stoke/curluv.h): nothing blocks. Each call either returns a
 * negative errno and never calls `cb`, or returns 0 and calls `cb` exactly
 * once, later, from the loop (never from inside the call). Thread: the loop's.
 *
 * Engine errors come back as values: `res->err` is 0 or a negative errno
 * mapped from the HTTP status (404 -ENOENT, 409 -EEXIST, 304 -EALREADY,
 * 400 -EINVAL, 500 -EIO, others -EPROTO) or from curl (-ECONNREFUSED,
 * -ETIMEDOUT, -EIO), -EFBIG for a response body over 8 MiB, -EINVAL for a
 * 2xx body that is not valid JSON, -ECANCELED when the engine is closed
 * with the call in flight; and `res->message` the engine's own "message"
 * text (or curl's, or ours). On an engine error `res->json` is the engine's
 * error object when it sent one.
 *
 * The calls return -EINVAL at once for an `id` that is not a container id
 * or name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 255), -ECANCELED once the
 * engine is closing, -ENOMEM.
 *
 * What Docker 20.10 answers (API 1.41), for callers deciding what to do:
 * - start on a running container: -EALREADY (304);
 * - stop on a stopped one: -EALREADY (304); stop on a paused one: 0, the
 *   engine thaws and stops it (exited, SIGTERM honoured);
 * - pause on a paused one: -EEXIST (409); pause on a stopped one: -EEXIST
 *   (409, "is not running");
 * - unpause on a running, not paused one: -EIO (500, "is not paused");
 * - remove without force of a running or paused one: -EEXIST (409);
 *   remove with force of a paused one: 0;
 * - any call on an unknown id: -ENOENT (404, "No such container: ..."). */
#ifndef STOKE_ENGINE_H
#define STOKE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>
#include <uv.h>

struct stoke_engine;

struct stoke_engine_result {
    int err;             /* 0 or negative errno */
    long http_status;    /* 0 when no response arrived */
    const char *message; /* borrowed for the callback; engine's message or curl's; "" on success */
    json_object *json;   /* borrowed for the callback; parsed body or NULL */
    const char *id;      /* borrowed; the container id for create, else NULL */
};

typedef void (*stoke_engine_cb)(const struct stoke_engine_result *res, void *data);

struct stoke_label {
    const char *key;
    const char *value;
};

/* What stoke asks of a replica container. Pointers are borrowed for the call
 * only (the request body is built before stoke_engine_create() returns). */
struct stoke_container_config {
    const char *name; /* container name, or NULL for an engine-chosen one */
    const char *image;
    const char *const *env; /* "KEY=VALUE" strings */
    size_t env_len;
    const struct stoke_label *labels;
    size_t labels_len;
    /* "bridge" (default when NULL): the replica gets its own network
     * namespace on the engine's default bridge, and `container_port`/tcp is
     * published on 127.0.0.1:`host_port` only (never on another address).
     * "host": the host's namespace; nothing is published. */
    const char *network_mode;
    uint16_t container_port; /* bridge: the port the replica listens on inside */
    uint16_t host_port;      /* bridge: its 127.0.0.1 port on the host */
    uint64_t memory_bytes;   /* 0 = no limit */
    uint64_t cpu_millis;     /* 0 = no limit; sent as NanoCpus */
    uint32_t pids;           /* 0 = no limit */
    bool read_only_rootfs;
};
/* Every container also gets CapDrop ["ALL"], SecurityOpt
 * ["no-new-privileges"], and no engine socket mounted. */

/* `docker_host` is "unix:///path" (NULL: $DOCKER_HOST, else
 * unix:///var/run/docker.sock). Other schemes are refused with -EINVAL.
 * Returns 0 and *ret, or a negative errno. */
int stoke_engine_new(uv_loop_t *loop, const char *docker_host, struct stoke_engine **ret);

/* Aborts every call in flight (each callback runs once with -ECANCELED from
 * within this call, so callers may free their state there) and frees the
 * engine once its libuv handles have closed; `on_closed` may be NULL. */
void stoke_engine_close(struct stoke_engine *e, void (*on_closed)(void *data), void *data);

/* Per-call time limit in ms (default 30000), for calls started after this;
 * 0 is taken as 1. */
void stoke_engine_set_timeout(struct stoke_engine *e, uint64_t timeout_ms);

int stoke_engine_ping(struct stoke_engine *e, stoke_engine_cb cb, void *data);
/* json: the image inspect object; -ENOENT when the image is not present. */
int stoke_engine_image_inspect(struct stoke_engine *e, const char *image, stoke_engine_cb cb,
                               void *data);
/* res->id: the new container's id. Never pulls: a missing image is -ENOENT
 * with the engine's message ("No such image: ..."). -EINVAL at once for a
 * bridge config without both ports, or a network mode other than the two.
 * The engine binds the published port when the container starts (and
 * releases it when it stops): a start then fails with -EIO when something
 * else holds 127.0.0.1:host_port. */
int stoke_engine_create(struct stoke_engine *e, const struct stoke_container_config *cfg,
                        stoke_engine_cb cb, void *data);
int stoke_engine_start(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data);
/* json: the container inspect object; see stoke_engine_state_parse(). */
int stoke_engine_inspect(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data);
int stoke_engine_pause(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data);
int stoke_engine_unpause(struct stoke_engine *e, const char *id, stoke_engine_cb cb, void *data);
/* Stop with SIGTERM then SIGKILL after `grace_s` seconds. The engine answers
 * once the container is down, so this call's time limit is the engine's
 * timeout plus `grace_s`. */
int stoke_engine_stop(struct stoke_engine *e, const char *id, unsigned grace_s, stoke_engine_cb cb,
                      void *data);
/* force: kill first if running. Also removes anonymous volumes. */
int stoke_engine_remove(struct stoke_engine *e, const char *id, bool force, stoke_engine_cb cb,
                        void *data);
/* All containers (running or not) carrying label `key=value` (value NULL:
 * any value). json: the engine's array; see stoke_engine_list_get(). */
int stoke_engine_list(struct stoke_engine *e, const char *key, const char *value,
                      stoke_engine_cb cb, void *data);

/* One container event of the engine's stream (GET /events). */
struct stoke_container_event {
    char id[65];
    char action[32];         /* die, oom, kill, stop, start, pause, unpause, destroy...;
                                longer actions ("exec_start: ...") are cut */
    int exit_code;           /* die: the container's exit status; otherwise -1 */
    json_object *attributes; /* borrowed: Actor.Attributes (labels, name, exitCode) */
};

/* From one event object. Returns 0, -ENOENT for an event that is not about
 * a container (networks, images...), or -EINVAL. */
int stoke_engine_event_parse(json_object *event, struct stoke_container_event *ret);

/* Called for each event, from the loop (never from inside libcurl, so it
 * may start engine calls). `ev` is borrowed for the call. */
typedef void (*stoke_engine_event_cb)(const struct stoke_container_event *ev, void *data);

/* Follows the engine's event stream for containers carrying label
 * `key=value` (GET /events, no time limit). `on_event` runs for each event
 * in order; `on_end` runs once when the stream ends: res->err 0 when the
 * engine closed it, a negative errno as for the other calls, -EFBIG for a
 * line over 64 KiB, -EINVAL for one that is not JSON, -ENOBUFS when more
 * than 4096 events wait to be delivered, -ECANCELED from within
 * stoke_engine_close() (queued events are then dropped). Events while no
 * stream is open are lost: reconnect, then list. Returns 0, or a negative
 * errno and neither callback runs. */
int stoke_engine_events(struct stoke_engine *e, const char *key, const char *value,
                        stoke_engine_event_cb on_event, stoke_engine_cb on_end, void *data);

/* The engine API operations stoke counts (stoke_engine_stats()). */
enum stoke_engine_op {
    STOKE_ENGINE_OP_PING,
    STOKE_ENGINE_OP_IMAGE_INSPECT,
    STOKE_ENGINE_OP_CREATE,
    STOKE_ENGINE_OP_START,
    STOKE_ENGINE_OP_INSPECT,
    STOKE_ENGINE_OP_PAUSE,
    STOKE_ENGINE_OP_UNPAUSE,
    STOKE_ENGINE_OP_STOP,
    STOKE_ENGINE_OP_REMOVE,
    STOKE_ENGINE_OP_LIST,
    STOKE_ENGINE_OP_EVENTS,
    STOKE_ENGINE_OP_LOGS,
    STOKE_ENGINE_OPS
};

/* Calls finished since the engine was made, by operation: `calls` counts
 * every call whose callback ran (an event stream counts when it ends),
 * `errors` those among them that ended with res->err < 0 (engine errors,
 * transport errors, -ECANCELED at close). A call refused at once (its
 * function returned an error) is in neither. */
struct stoke_engine_stats {
    uint64_t calls[STOKE_ENGINE_OPS];
    uint64_t errors[STOKE_ENGINE_OPS];
    /* The work queue: calls other than the event stream and logs count in
     * `limit` (stoke_engine_set_max_inflight()); past it they wait, create,
     * start, unpause and the reads first, then pause, stop, remove and list,
     * which may still hold a quarter of the places (limit / 4) ahead of
     * waiting urgent calls, so they are never starved.
     * Within each of the two, the keys (stoke_engine_next_key()) take turns,
     * one call each, and one key's calls go in the order made. */
    unsigned limit;
    unsigned in_flight;     /* now */
    unsigned in_flight_max; /* the most at once since the engine was made */
    unsigned queued;        /* waiting now */
};

/* The fairness key (a function's name; NULL or "" for none, one shared
 * key) of the next call made on `e`, after which it is "" again; its first
 * 63 bytes count. See struct stoke_engine_stats. */
void stoke_engine_next_key(struct stoke_engine *e, const char *key);

/* Ends every housekeeping call still waiting for a place (pause, stop,
 * remove, list) with -ECANCELED, its callback run before this returns (it
 * may make calls; housekeeping ones made there wait again). Calls in flight
 * and urgent ones go on. Returns how many ended. */
unsigned stoke_engine_cancel_housekeeping(struct stoke_engine *e);

/* At most `n` calls in flight (at least 1; default 16): more wait, see
 * struct stoke_engine_stats. */
void stoke_engine_set_max_inflight(struct stoke_engine *e, unsigned n);

/* Copies the counters into *ret. */
void stoke_engine_stats(const struct stoke_engine *e, struct stoke_engine_stats *ret);

/* "create", "start"...: the `op` label of the controller's metrics. */
const char *stoke_engine_op_name(enum stoke_engine_op op);

/* A container's state as the engine reports it. */
struct stoke_container_state {
    char id[65];
    char status[16]; /* created, running, paused, restarting, removing, exited, dead */
    bool running;
    bool paused;
    int pid; /* 0 when not running */
    int exit_code;
    bool oom_killed;
};

/* From an inspect object. Returns 0 or -EINVAL. */
int stoke_engine_state_parse(json_object *inspect, struct stoke_container_state *ret);

/* One entry of a list result. `labels` is borrowed from the json array. */
struct stoke_container_summary {
    char id[65];
    char state[16];      /* as the list reports it: created, running, paused, exited... */
    json_object *labels; /* borrowed object of string values */
};

/* Entry `i` of a list result. Returns 0, -ERANGE past the end, -EINVAL. */
int stoke_engine_list_get(json_object *list, size_t i, struct stoke_container_summary *ret);

/* A label's value from a summary, or NULL. Borrowed. */
const char *stoke_engine_label_get(const struct stoke_container_summary *s, const char *key);

/* ---- container logs (GET /containers/{id}/logs) ---- */

/* The engine's stream of a container without a TTY: frames of an 8-byte
 * header (stream 0 stdin, 1 stdout, 2 stderr; three zero bytes; the payload
 * size, big-endian u32) and the payload. A stream whose first header does
 * not look like one (a container with a TTY) is taken as raw stdout. */
struct stoke_log_demux {
    unsigned char hdr[8];
    size_t hdr_len;
    uint32_t left; /* payload bytes still to come of the current frame */
    int stream;
    bool started;
    bool raw;
};

/* Called for each payload piece (a frame may come in several); `data` is
 * borrowed for the call. A negative return stops the feed and is returned. */
typedef int (*stoke_log_demux_cb)(int stream, const char *data, size_t len, void *cbdata);

/* Feeds `len` bytes. Returns 0, the callback's negative value, or -EINVAL
 * for a header that is not one past the first (the stream is unusable).
 * Pure: no I/O, no allocation. */
int stoke_log_demux_feed(struct stoke_log_demux *d, const char *data, size_t len,
                         stoke_log_demux_cb cb, void *cbdata);

struct stoke_engine_logs_opts {
    bool follow;       /* keep streaming new output until the container stops */
    bool timestamps;   /* each line starts with the engine's RFC 3339 time and a space */
    int64_t tail;      /* the last `tail` lines only; < 0: all */
    uint64_t since_ms; /* Unix time in ms: only output since then; 0: all */
};

struct stoke_engine_logs;

/* One piece of output (stream 1 stdout, 2 stderr), borrowed for the call.
 * Runs from the loop (never from inside libcurl), so it may pause, cancel
 * or start engine calls. */
typedef void (*stoke_engine_log_cb)(int stream, const char *bytes, size_t len, void *data);

/* Streams the output of container `id` (stdout and stderr, demultiplexed).
 * `on_data` runs for each piece in order; `on_end` once at the end, as for
 * stoke_engine_events(): err 0 when the engine ended the stream (without
 * follow: all was sent; with follow: the container stopped), -ENOENT for an
 * unknown container, -EINVAL for a stream that is not the engine's format,
 * -ENOBUFS when more than 1 MiB waits while not paused, -ECANCELED after
 * stoke_engine_logs_cancel() (later, from the loop) or from within
 * stoke_engine_close(). No time limit. Returns 0 and *ret (valid until
 * on_end has run), or a negative errno and neither callback runs. */
int stoke_engine_logs(struct stoke_engine *e, const char *id,
                      const struct stoke_engine_logs_opts *opts, stoke_engine_log_cb on_data,
                      stoke_engine_cb on_end, void *data, struct stoke_engine_logs **ret);

/* Backpressure: while paused, on_data does not run and the engine's socket
 * is not read (libcurl's pause), so at most about 256 KiB wait here. */
void stoke_engine_logs_pause(struct stoke_engine_logs *l, bool pause);

/* Ends the stream: on_data does not run any more; on_end runs later, from
 * the loop, with -ECANCELED. Not from inside on_end. */
void stoke_engine_logs_cancel(struct stoke_engine_logs *l);

#endif
