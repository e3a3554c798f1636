/* stoke-events' durable store: SQLite in WAL mode with synchronous=FULL,
 * owned by one thread (SQLite calls block; the loop never makes one).
 *
 * Work reaches the thread as jobs. The thread takes every job waiting,
 * runs them in one transaction and commits once (one fsync of the WAL for
 * the batch: group commit), then hands them back to the loop, whose `done`
 * callbacks run only after that commit is on disk. A 202 is answered from
 * such a callback, so an accepted call is durable. Jobs run in the order
 * they were submitted. */
#ifndef EVENTS_STORE_H
#define EVENTS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>
#include <uv.h>

#include "stoke/spec.h"

enum ev_state {
    EV_QUEUED = 0,
    EV_RUNNING,
    EV_SUCCEEDED,
    EV_FAILED, /* a non-retryable answer (4xx other than 408, 429) */
    EV_DEAD,   /* retries used up or too old: in the dead-letter list */
    EV_CANCELLED,
};
extern const char *const ev_state_names[]; /* by enum ev_state */

/* One call as stored. Strings are owned (free()); NULL when absent. */
struct ev_call {
    char id[33]; /* 32 hex digits */
    char fn[STOKE_NAME_MAX + 1];
    int state;
    char *method, *path;
    char *headers; /* "Name: value\r\n"... to send */
    char *body;
    size_t body_len;
    char *callback;      /* X-Callback-Url, or NULL */
    uint64_t timeout_ms; /* the activator's longest time for it (queue + run) */
    struct stoke_async a;
    uint32_t attempts; /* attempts started */
    uint32_t throttles;
    int64_t created_ms, due_ms, lease_ms, finished_ms; /* wall clock, ms */
    int status;                                        /* the last answer's status; 0: none */
    char *resp_headers;                                /* the last answer's headers */
    char *resp_body;                                   /* ... and body, up to EV_MAX_RESP_BODY */
    size_t resp_body_len;
    char condition[32]; /* why it ended dead or failed */
};

#define EV_MAX_RESP_BODY (64 * 1024)

void ev_call_free(struct ev_call *c);

/* ---- the SQL, on any thread that owns `db` ---- */

/* Opens (creating) the database at `path`: WAL, synchronous=FULL, the
 * schema. Returns 0 and *ret, or -EIO with a message in `err`. */
int ev_db_open(const char *path, sqlite3 **ret, char *err, size_t errsize);
int ev_db_insert(sqlite3 *db, const struct ev_call *c);
/* Inserts `c` unless a call with its id is stored already (a queue
 * trigger's message read again after a restart: its id is derived from
 * the message). Returns 1 (inserted), 0 (it was there: *ret_state is its
 * state, the stored call untouched) or -EIO. */
int ev_db_insert_once(sqlite3 *db, const struct ev_call *c, int *ret_state);
/* Writes state, attempts, throttles, due, lease, finished, the answer and
 * condition of `c` (by id). */
int ev_db_update(sqlite3 *db, const struct ev_call *c);
/* Reads call `id` into *ret (owned). Returns 0, -ENOENT or -EIO. */
int ev_db_get(sqlite3 *db, const char *id, struct ev_call **ret);
/* Calls `cb` with each call (owned by cb) in `state` (-1: queued and
 * running) of function `fn` (NULL: all), oldest first, at most `limit`. */
int ev_db_list(sqlite3 *db, const char *fn, int state, size_t limit,
               void (*cb)(struct ev_call *c, void *data), void *data);
/* Deletes calls of `fn` in `state` (fn NULL: all; state -1: ended ones
 * finished before `before_ms`). Returns the count or -EIO. */
int ev_db_delete(sqlite3 *db, const char *fn, int state, int64_t before_ms);

/* A callback owed: call `id` ended and its X-Callback-Url is yet to take
 * the result (written in the same transaction as the end), and done: it
 * took it, or its tries are used up. */
int ev_db_callback_due(sqlite3 *db, const char *id);
int ev_db_callback_done(sqlite3 *db, const char *id);
/* Calls `cb` with each call (owned by cb) whose callback is owed, oldest
 * end first (after a restart: they are sent again). */
int ev_db_list_callbacks(sqlite3 *db, void (*cb)(struct ev_call *c, void *data), void *data);

/* ---- schedules' progress (events/schedules.c) ---- */

#define EV_SCHED_KEY_MAX 320 /* "<schedule>|<time zone>" */

/* What a schedule has done, durably: the last scheduled time handled (run,
 * or skipped for a reason that ends it), and the call made for its last
 * run. `key` names the schedule's expression and zone: a row whose key is
 * not the schedule's now is of an older schedule of that name. */
struct ev_sched_run {
    char fn[STOKE_NAME_MAX + 1];
    char name[STOKE_NAME_MAX + 1];
    char key[EV_SCHED_KEY_MAX + 1];
    int64_t last_s;   /* Unix seconds */
    char call_id[33]; /* "" when none */
};

/* Reads the row of (fn, name) into *ret. Returns 0, -ENOENT or -EIO. */
int ev_db_sched_get(sqlite3 *db, const char *fn, const char *name, struct ev_sched_run *ret);
/* Writes (inserts or replaces) row `r`. Returns 0 or -EIO. */
int ev_db_sched_put(sqlite3 *db, const struct ev_sched_run *r);
/* Deletes the row of (fn, name), or every row of fn when name is NULL.
 * Returns the count or -EIO. */
int ev_db_sched_delete(sqlite3 *db, const char *fn, const char *name);
/* The state (enum ev_state) of call `id`: >= 0, -ENOENT or -EIO. */
int ev_db_call_state(sqlite3 *db, const char *id);

/* ---- the store thread ---- */

struct ev_job;
typedef int (*ev_job_run)(sqlite3 *db, struct ev_job *job); /* the store thread */
typedef void (*ev_job_done)(struct ev_job *job);            /* the loop, after the commit */
struct ev_job {
    ev_job_run run;
    ev_job_done done; /* may free the job */
    void *data;
    int result; /* run's; -EIO for every job of a batch whose commit failed */
    struct ev_job *next;
};

struct ev_store;

/* Starts the thread on `db` (taken: closed by ev_store_close()). Returns 0
 * and *ret, or a negative errno (the caller keeps `db`; run the loop to
 * free what was made). */
int ev_store_new(uv_loop_t *loop, sqlite3 *db, struct ev_store **ret);
/* Queues `job`; its done runs later on the loop, never from this call. */
void ev_store_submit(struct ev_store *s, struct ev_job *job);
/* Commits so far (one per batch), for metrics and tests. */
uint64_t ev_store_commits(struct ev_store *s);
/* Runs the jobs already submitted (their done callbacks run from here),
 * stops the thread, closes the database and frees `s` once its handle has
 * closed (run the loop). */
void ev_store_close(struct ev_store *s);

#endif
