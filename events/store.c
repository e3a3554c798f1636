/* stoke-events' store: see store.h. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

const char *const ev_state_names[] = {"queued", "running",   "succeeded", "failed",
                                      "dead",   "cancelled", NULL};

void ev_call_free(struct ev_call *c)
{
    if (!c)
        return;
    free(c->method);
    free(c->path);
    free(c->headers);
    free(c->body);
    free(c->callback);
    free(c->resp_headers);
    free(c->resp_body);
    free(c);
}

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS calls("
    " id TEXT PRIMARY KEY, fn TEXT NOT NULL, state INTEGER NOT NULL,"
    " method TEXT NOT NULL, path TEXT NOT NULL, headers BLOB, body BLOB, callback TEXT,"
    " timeout_ms INTEGER NOT NULL, retries INTEGER NOT NULL, backoff_ms INTEGER NOT NULL,"
    " max_age_ms INTEGER NOT NULL, max_in_flight INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL, throttles INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL, due_ms INTEGER NOT NULL, lease_ms INTEGER NOT NULL,"
    " finished_ms INTEGER NOT NULL, status INTEGER NOT NULL, resp_headers BLOB, resp_body BLOB,"
    " condition TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS calls_fn_state ON calls(fn, state, created_ms);"
    /* The ended calls whose X-Callback-Url has not taken the result yet. */
    "CREATE TABLE IF NOT EXISTS callbacks(id TEXT PRIMARY KEY);"
    /* Each schedule's last scheduled time handled (events/schedules.c). */
    "CREATE TABLE IF NOT EXISTS schedule_runs(fn TEXT NOT NULL, name TEXT NOT NULL,"
    " key TEXT NOT NULL, last_s INTEGER NOT NULL, call_id TEXT NOT NULL,"
    " PRIMARY KEY(fn, name));";

int ev_db_open(const char *path, sqlite3 **ret, char *err, size_t errsize)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db,
                          "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                          " PRAGMA busy_timeout=5000;",
                          NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, schema, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, errsize, "%s: %s", path, msg ? msg : db ? sqlite3_errmsg(db) : "no memory");
        sqlite3_free(msg);
        sqlite3_close(db);
        return -EIO;
    }
    *ret = db;
    return 0;
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

static int bind_blob(sqlite3_stmt *st, int i, const char *s, size_t len)
{
    return s ? sqlite3_bind_blob64(st, i, s, len, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

/* Runs a prepared statement to its end and finalizes it. */
static int step_done(sqlite3_stmt *st, int rc)
{
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : -EIO;
}

static int insert(sqlite3 *db, const struct ev_call *c, bool once)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        db,
        once ? "INSERT OR IGNORE INTO calls(id, fn, state, method, path, headers, body, callback,"
               " timeout_ms, retries, backoff_ms, max_age_ms, max_in_flight, attempts, throttles,"
               " created_ms, due_ms, lease_ms, finished_ms, status, resp_headers, resp_body,"
               " condition) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
               " ?15, ?16, ?17, ?18, ?19, ?20, NULL, NULL, ?21)"
             : "INSERT INTO calls(id, fn, state, method, path, headers, body, callback, timeout_ms,"
               " retries, backoff_ms, max_age_ms, max_in_flight, attempts, throttles, created_ms,"
               " due_ms, lease_ms, finished_ms, status, resp_headers, resp_body, condition)"
               " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,"
               " ?18, ?19, ?20, NULL, NULL, ?21)",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -EIO;
    int i = 1;
    rc = bind_text(st, i++, c->id);
    rc |= bind_text(st, i++, c->fn);
    rc |= sqlite3_bind_int(st, i++, c->state);
    rc |= bind_text(st, i++, c->method);
    rc |= bind_text(st, i++, c->path);
    rc |= bind_blob(st, i++, c->headers, c->headers ? strlen(c->headers) : 0);
    rc |= bind_blob(st, i++, c->body ? c->body : "", c->body_len);
    rc |= bind_text(st, i++, c->callback);
    rc |= sqlite3_bind_int64(st, i++, (sqlite3_int64)c->timeout_ms);
    rc |= sqlite3_bind_int64(st, i++, c->a.retries);
    rc |= sqlite3_bind_int64(st, i++, (sqlite3_int64)c->a.backoff_ms);
    rc |= sqlite3_bind_int64(st, i++, (sqlite3_int64)c->a.max_age_ms);
    rc |= sqlite3_bind_int64(st, i++, c->a.max_in_flight);
    rc |= sqlite3_bind_int64(st, i++, c->attempts);
    rc |= sqlite3_bind_int64(st, i++, c->throttles);
    rc |= sqlite3_bind_int64(st, i++, c->created_ms);
    rc |= sqlite3_bind_int64(st, i++, c->due_ms);
    rc |= sqlite3_bind_int64(st, i++, c->lease_ms);
    rc |= sqlite3_bind_int64(st, i++, c->finished_ms);
    rc |= sqlite3_bind_int(st, i++, c->status);
    rc |= bind_text(st, i++, c->condition);
    return step_done(st, rc == SQLITE_OK ? SQLITE_OK : SQLITE_ERROR);
}

int ev_db_insert(sqlite3 *db, const struct ev_call *c)
{
    return insert(db, c, false);
}

int ev_db_insert_once(sqlite3 *db, const struct ev_call *c, int *ret_state)
{
    int r = insert(db, c, true);
    if (r < 0)
        return r;
    if (sqlite3_changes(db) == 1)
        return 1;
    int state = ev_db_call_state(db, c->id);
    if (state < 0)
        return -EIO;
    *ret_state = state;
    return 0;
}

int ev_db_update(sqlite3 *db, const struct ev_call *c)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "UPDATE calls SET state=?2, attempts=?3, throttles=?4, due_ms=?5,"
                                " lease_ms=?6, finished_ms=?7, status=?8, resp_headers=?9,"
                                " resp_body=?10, condition=?11, created_ms=?12 WHERE id=?1",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -EIO;
    rc = bind_text(st, 1, c->id);
    rc |= sqlite3_bind_int(st, 2, c->state);
    rc |= sqlite3_bind_int64(st, 3, c->attempts);
    rc |= sqlite3_bind_int64(st, 4, c->throttles);
    rc |= sqlite3_bind_int64(st, 5, c->due_ms);
    rc |= sqlite3_bind_int64(st, 6, c->lease_ms);
    rc |= sqlite3_bind_int64(st, 7, c->finished_ms);
    rc |= sqlite3_bind_int(st, 8, c->status);
    rc |= bind_blob(st, 9, c->resp_headers, c->resp_headers ? strlen(c->resp_headers) : 0);
    rc |= bind_blob(st, 10, c->resp_body, c->resp_body_len);
    rc |= bind_text(st, 11, c->condition);
    rc |= sqlite3_bind_int64(st, 12, c->created_ms);
    return step_done(st, rc == SQLITE_OK ? SQLITE_OK : SQLITE_ERROR);
}

static char *col_dup(sqlite3_stmt *st, int i, size_t *ret_len)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        if (ret_len)
            *ret_len = 0;
        return NULL;
    }
    const void *p = sqlite3_column_blob(st, i);
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    char *s = malloc(n + 1);
    if (!s)
        return NULL;
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    if (ret_len)
        *ret_len = n;
    return s;
}

#define COLUMNS                                                                                    \
    "id, fn, state, method, path, headers, body, callback, timeout_ms, retries, backoff_ms,"       \
    " max_age_ms, max_in_flight, attempts, throttles, created_ms, due_ms, lease_ms,"               \
    " finished_ms, status, resp_headers, resp_body, condition"

static struct ev_call *row_call(sqlite3_stmt *st)
{
    struct ev_call *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    int i = 0;
    snprintf(c->id, sizeof(c->id), "%s", (const char *)sqlite3_column_text(st, i++));
    snprintf(c->fn, sizeof(c->fn), "%s", (const char *)sqlite3_column_text(st, i++));
    c->state = sqlite3_column_int(st, i++);
    c->method = col_dup(st, i++, NULL);
    c->path = col_dup(st, i++, NULL);
    c->headers = col_dup(st, i++, NULL);
    c->body = col_dup(st, i++, &c->body_len);
    c->callback = col_dup(st, i++, NULL);
    c->timeout_ms = (uint64_t)sqlite3_column_int64(st, i++);
    c->a.retries = (uint32_t)sqlite3_column_int64(st, i++);
    c->a.backoff_ms = (uint64_t)sqlite3_column_int64(st, i++);
    c->a.max_age_ms = (uint64_t)sqlite3_column_int64(st, i++);
    c->a.max_in_flight = (uint32_t)sqlite3_column_int64(st, i++);
    c->attempts = (uint32_t)sqlite3_column_int64(st, i++);
    c->throttles = (uint32_t)sqlite3_column_int64(st, i++);
    c->created_ms = sqlite3_column_int64(st, i++);
    c->due_ms = sqlite3_column_int64(st, i++);
    c->lease_ms = sqlite3_column_int64(st, i++);
    c->finished_ms = sqlite3_column_int64(st, i++);
    c->status = sqlite3_column_int(st, i++);
    c->resp_headers = col_dup(st, i++, NULL);
    c->resp_body = col_dup(st, i++, &c->resp_body_len);
    const unsigned char *cond = sqlite3_column_text(st, i++);
    snprintf(c->condition, sizeof(c->condition), "%s", cond ? (const char *)cond : "");
    if (!c->method || !c->path) {
        ev_call_free(c);
        return NULL;
    }
    return c;
}

int ev_db_get(sqlite3 *db, const char *id, struct ev_call **ret)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT " COLUMNS " FROM calls WHERE id=?1", -1, &st, NULL) !=
        SQLITE_OK)
        return -EIO;
    int r = -EIO;
    if (bind_text(st, 1, id) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *ret = row_call(st);
            r = *ret ? 0 : -ENOMEM;
        } else if (rc == SQLITE_DONE) {
            r = -ENOENT;
        }
    }
    sqlite3_finalize(st);
    return r;
}

/* Steps `st` (when r is 0), calling `cb` with each row's call, and
 * finalizes it. Returns r, -ENOMEM or -EIO. */
static int each_call(sqlite3_stmt *st, int r, void (*cb)(struct ev_call *c, void *data), void *data)
{
    int rc = SQLITE_DONE;
    while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct ev_call *c = row_call(st);
        if (!c)
            r = -ENOMEM;
        else
            cb(c, data);
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = -EIO;
    sqlite3_finalize(st);
    return r;
}

int ev_db_list(sqlite3 *db, const char *fn, int state, size_t limit,
               void (*cb)(struct ev_call *c, void *data), void *data)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT " COLUMNS " FROM calls WHERE (?1 IS NULL OR fn=?1) AND"
                           " (state=?2 OR (?2=-1 AND state IN (0, 1)))"
                           " ORDER BY created_ms, id LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    int rc = bind_text(st, 1, fn);
    rc |= sqlite3_bind_int(st, 2, state);
    rc |= sqlite3_bind_int64(st, 3, limit > INT64_MAX ? INT64_MAX : (sqlite3_int64)limit);
    return each_call(st, rc == SQLITE_OK ? 0 : -EIO, cb, data);
}

int ev_db_delete(sqlite3 *db, const char *fn, int state, int64_t before_ms)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "DELETE FROM calls WHERE (?1 IS NULL OR fn=?1) AND"
                           " (state=?2 OR (?2=-1 AND state>=2 AND finished_ms<?3))",
                           -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    int rc = bind_text(st, 1, fn);
    rc |= sqlite3_bind_int(st, 2, state);
    rc |= sqlite3_bind_int64(st, 3, before_ms);
    if (step_done(st, rc == SQLITE_OK ? SQLITE_OK : SQLITE_ERROR) < 0)
        return -EIO;
    return sqlite3_changes(db);
}

/* ---- the thread ---- */

struct ev_store {
    uv_loop_t *loop;
    sqlite3 *db;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct ev_job *todo, **todo_tail; /* submitted */
    struct ev_job *done, **done_tail; /* committed, for the loop */
    bool stop;
    uint64_t commits;
    uv_async_t async;
};

static void *store_main(void *arg)
{
    struct ev_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->todo && !s->stop)
            pthread_cond_wait(&s->cond, &s->mu);
        if (!s->todo && s->stop)
            break;
        struct ev_job *batch = s->todo;
        s->todo = NULL;
        s->todo_tail = &s->todo;
        pthread_mutex_unlock(&s->mu);

        bool ok = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
        for (struct ev_job *j = batch; j; j = j->next)
            j->result = ok ? j->run(s->db, j) : -EIO;
        /* COMMIT returns once the WAL is synced (synchronous=FULL). */
        if (ok && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            ok = false;
        }
        struct ev_job *last = NULL;
        for (struct ev_job *j = batch; j; j = j->next) {
            if (!ok)
                j->result = -EIO;
            last = j;
        }

        pthread_mutex_lock(&s->mu);
        s->commits++;
        *s->done_tail = batch;
        s->done_tail = &last->next;
        pthread_mutex_unlock(&s->mu);
        uv_async_send(&s->async);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void run_done(struct ev_store *s)
{
    pthread_mutex_lock(&s->mu);
    struct ev_job *j = s->done;
    s->done = NULL;
    s->done_tail = &s->done;
    pthread_mutex_unlock(&s->mu);
    while (j) {
        struct ev_job *next = j->next;
        j->done(j);
        j = next;
    }
}

static void on_async(uv_async_t *h)
{
    run_done(h->data);
}

static void on_store_closed_early(uv_handle_t *h)
{
    free(h->data);
}

int ev_store_new(uv_loop_t *loop, sqlite3 *db, struct ev_store **ret)
{
    struct ev_store *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->db = db;
    s->todo_tail = &s->todo;
    s->done_tail = &s->done;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    int r = uv_async_init(loop, &s->async, on_async);
    if (r < 0) {
        free(s);
        return r;
    }
    s->async.data = s;
    r = -pthread_create(&s->thread, NULL, store_main, s);
    if (r < 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cond);
        s->db = NULL;                                              /* the caller keeps it */
        uv_close((uv_handle_t *)&s->async, on_store_closed_early); /* frees s */
        return r;
    }
    *ret = s;
    return 0;
}

void ev_store_submit(struct ev_store *s, struct ev_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&s->mu);
    *s->todo_tail = job;
    s->todo_tail = &job->next;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

uint64_t ev_store_commits(struct ev_store *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t n = s->commits;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void on_store_closed(uv_handle_t *h)
{
    free(h->data);
}

void ev_store_close(struct ev_store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    run_done(s);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    uv_close((uv_handle_t *)&s->async, on_store_closed);
}

/* Runs one statement with `id` bound as ?1. */
static int exec_id(sqlite3 *db, const char *sql, const char *id)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -EIO;
    return step_done(st, bind_text(st, 1, id));
}

int ev_db_callback_due(sqlite3 *db, const char *id)
{
    return exec_id(db, "INSERT OR IGNORE INTO callbacks(id) VALUES(?1)", id);
}

int ev_db_callback_done(sqlite3 *db, const char *id)
{
    return exec_id(db, "DELETE FROM callbacks WHERE id=?1", id);
}

int ev_db_list_callbacks(sqlite3 *db, void (*cb)(struct ev_call *c, void *data), void *data)
{
    sqlite3_stmt *st = NULL;
    /* (calls deleted meanwhile, by retention or a purge, take theirs along) */
    if (sqlite3_exec(db, "DELETE FROM callbacks WHERE id NOT IN (SELECT id FROM calls)", NULL, NULL,
                     NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT " COLUMNS " FROM calls WHERE id IN (SELECT id FROM callbacks)"
                           " ORDER BY finished_ms, id",
                           -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    return each_call(st, 0, cb, data);
}

/* ---- schedules' progress ---- */

int ev_db_sched_get(sqlite3 *db, const char *fn, const char *name, struct ev_sched_run *ret)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT key, last_s, call_id FROM schedule_runs WHERE fn=?1 AND name=?2",
                           -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    int r = -EIO;
    if (bind_text(st, 1, fn) == SQLITE_OK && bind_text(st, 2, name) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            memset(ret, 0, sizeof(*ret));
            snprintf(ret->fn, sizeof(ret->fn), "%s", fn);
            snprintf(ret->name, sizeof(ret->name), "%s", name);
            const unsigned char *k = sqlite3_column_text(st, 0);
            snprintf(ret->key, sizeof(ret->key), "%s", k ? (const char *)k : "");
            ret->last_s = sqlite3_column_int64(st, 1);
            const unsigned char *id = sqlite3_column_text(st, 2);
            snprintf(ret->call_id, sizeof(ret->call_id), "%s", id ? (const char *)id : "");
            r = 0;
        } else if (rc == SQLITE_DONE) {
            r = -ENOENT;
        }
    }
    sqlite3_finalize(st);
    return r;
}

int ev_db_sched_put(sqlite3 *db, const struct ev_sched_run *row)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO schedule_runs(fn, name, key, last_s, call_id)"
                           " VALUES(?1, ?2, ?3, ?4, ?5)",
                           -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    int rc = bind_text(st, 1, row->fn);
    rc |= bind_text(st, 2, row->name);
    rc |= bind_text(st, 3, row->key);
    rc |= sqlite3_bind_int64(st, 4, row->last_s);
    rc |= bind_text(st, 5, row->call_id);
    return step_done(st, rc == SQLITE_OK ? SQLITE_OK : SQLITE_ERROR);
}

int ev_db_sched_delete(sqlite3 *db, const char *fn, const char *name)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "DELETE FROM schedule_runs WHERE fn=?1 AND (?2 IS NULL OR name=?2)",
                           -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    int rc = bind_text(st, 1, fn);
    rc |= bind_text(st, 2, name);
    if (step_done(st, rc == SQLITE_OK ? SQLITE_OK : SQLITE_ERROR) < 0)
        return -EIO;
    return sqlite3_changes(db);
}

int ev_db_call_state(sqlite3 *db, const char *id)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT state FROM calls WHERE id=?1", -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    int r = -EIO;
    if (bind_text(st, 1, id) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            r = sqlite3_column_int(st, 0);
        else if (rc == SQLITE_DONE)
            r = -ENOENT;
    }
    sqlite3_finalize(st);
    return r;
}
