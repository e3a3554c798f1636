/* stoke-events' store (events/store.h): the SQL round trip, and the store
 * thread's group commit (jobs that wait together commit together, and
 * their done callbacks run after it, in order). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "store.h"

static char dir[64];
static char path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/stoke-store-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/events.db", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char p[160];
    const char *sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
        (void)unlink(p);
    }
    (void)rmdir(dir);
    return 0;
}

static struct ev_call *make_call(int i)
{
    struct ev_call *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    snprintf(c->id, sizeof(c->id), "%032x", i);
    snprintf(c->fn, sizeof(c->fn), "%s", i % 2 ? "odd" : "even");
    c->method = strdup("POST");
    c->path = strdup("/x?y=1");
    c->headers = strdup("Content-Type: text/plain\r\n");
    c->body = malloc(4);
    memcpy(c->body, "a\0b", 4);
    c->body_len = 3; /* with a NUL inside */
    c->timeout_ms = 1000;
    stoke_async_defaults(&c->a);
    c->created_ms = c->due_ms = 1000 + i;
    return c;
}

static void test_sql_round_trip(void **state)
{
    (void)state;
    sqlite3 *db;
    char err[256];
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    struct ev_call *c = make_call(7);
    assert_int_equal(ev_db_insert(db, c), 0);
    assert_int_equal(ev_db_insert(db, c), -EIO); /* the id is the key */

    struct ev_call *got = NULL;
    assert_int_equal(ev_db_get(db, c->id, &got), 0);
    assert_string_equal(got->fn, "odd");
    assert_string_equal(got->path, "/x?y=1");
    assert_int_equal(got->body_len, 3);
    assert_memory_equal(got->body, "a\0b", 3);
    assert_int_equal(got->state, EV_QUEUED);
    assert_int_equal(got->a.retries, 2);
    ev_call_free(got);

    c->state = EV_DEAD;
    c->attempts = 3;
    c->status = 500;
    c->finished_ms = 5000;
    c->resp_body = strdup("boom");
    c->resp_body_len = 4;
    snprintf(c->condition, sizeof(c->condition), "RetriesExhausted");
    assert_int_equal(ev_db_update(db, c), 0);
    assert_int_equal(ev_db_get(db, c->id, &got), 0);
    assert_int_equal(got->state, EV_DEAD);
    assert_int_equal(got->attempts, 3);
    assert_int_equal(got->status, 500);
    assert_string_equal(got->condition, "RetriesExhausted");
    assert_memory_equal(got->resp_body, "boom", 4);
    ev_call_free(got);
    assert_int_equal(ev_db_get(db, "00000000000000000000000000000000", &got), -ENOENT);

    /* dead ones are not pending; ended ones go after their retention */
    assert_int_equal(ev_db_delete(db, NULL, -1, 4000), 0);
    assert_int_equal(ev_db_delete(db, "even", EV_DEAD, 0), 0);
    assert_int_equal(ev_db_delete(db, "odd", EV_DEAD, 0), 1);
    ev_call_free(c);
    sqlite3_close(db);
}

/* A queue trigger's message read again (after a restart) is inserted
 * once: the second insert changes nothing and tells the stored state,
 * also across a reopen of the database. */
static void test_insert_once(void **state)
{
    (void)state;
    sqlite3 *db;
    char err[256];
    int st = -1;
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    struct ev_call *c = make_call(9);
    assert_int_equal(ev_db_insert_once(db, c, &st), 1);
    assert_int_equal(st, -1); /* untouched when inserted */
    assert_int_equal(ev_db_insert_once(db, c, &st), 0);
    assert_int_equal(st, EV_QUEUED);
    c->state = EV_SUCCEEDED;
    c->attempts = 1;
    assert_int_equal(ev_db_update(db, c), 0);
    sqlite3_close(db);
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    /* the message again, as new: the stored call is not reset */
    c->state = EV_QUEUED;
    c->attempts = 0;
    assert_int_equal(ev_db_insert_once(db, c, &st), 0);
    assert_int_equal(st, EV_SUCCEEDED);
    struct ev_call *got = NULL;
    assert_int_equal(ev_db_get(db, c->id, &got), 0);
    assert_int_equal(got->state, EV_SUCCEEDED);
    assert_int_equal(got->attempts, 1);
    ev_call_free(got);
    /* another id is inserted */
    struct ev_call *d = make_call(10);
    assert_int_equal(ev_db_insert_once(db, d, &st), 1);
    ev_call_free(d);
    ev_call_free(c);
    sqlite3_close(db);
}

/* ---- schedules' progress ---- */

/* A schedule's row: absent, written, replaced, read back after a reopen,
 * deleted alone or with its function's; and a call's state. */
static void test_schedule_runs(void **state)
{
    (void)state;
    sqlite3 *db;
    char err[256];
    struct ev_sched_run row = {.fn = "f",
                               .name = "nightly",
                               .key = "0 3 * * *|UTC",
                               .last_s = 1700000000},
                        got;
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    assert_int_equal(ev_db_sched_get(db, "f", "nightly", &got), -ENOENT);
    assert_int_equal(ev_db_sched_put(db, &row), 0);
    row.last_s = 1700003600;
    snprintf(row.call_id, sizeof(row.call_id), "%032x", 7);
    assert_int_equal(ev_db_sched_put(db, &row), 0); /* replaces */
    struct ev_sched_run other = {
        .fn = "f", .name = "hourly", .key = "@hourly|Europe/Berlin", .last_s = 5};
    assert_int_equal(ev_db_sched_put(db, &other), 0);
    struct ev_sched_run g2 = {.fn = "g", .name = "nightly", .key = "k", .last_s = 6};
    assert_int_equal(ev_db_sched_put(db, &g2), 0);
    sqlite3_close(db);
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    assert_int_equal(ev_db_sched_get(db, "f", "nightly", &got), 0);
    assert_string_equal(got.fn, "f");
    assert_string_equal(got.name, "nightly");
    assert_string_equal(got.key, "0 3 * * *|UTC");
    assert_int_equal(got.last_s, 1700003600);
    assert_string_equal(got.call_id, row.call_id);
    assert_int_equal(ev_db_sched_get(db, "f", "hourly", &got), 0);
    assert_string_equal(got.key, "@hourly|Europe/Berlin");
    assert_string_equal(got.call_id, "");
    /* one schedule, then the rest of the function's; g's stays */
    assert_int_equal(ev_db_sched_delete(db, "f", "hourly"), 1);
    assert_int_equal(ev_db_sched_get(db, "f", "hourly", &got), -ENOENT);
    assert_int_equal(ev_db_sched_delete(db, "f", NULL), 1);
    assert_int_equal(ev_db_sched_get(db, "f", "nightly", &got), -ENOENT);
    assert_int_equal(ev_db_sched_get(db, "g", "nightly", &got), 0);
    /* a call's state */
    struct ev_call *c = make_call(3);
    assert_int_equal(ev_db_call_state(db, c->id), -ENOENT);
    assert_int_equal(ev_db_insert(db, c), 0);
    assert_int_equal(ev_db_call_state(db, c->id), EV_QUEUED);
    c->state = EV_RUNNING;
    assert_int_equal(ev_db_update(db, c), 0);
    assert_int_equal(ev_db_call_state(db, c->id), EV_RUNNING);
    ev_call_free(c);
    sqlite3_close(db);
}

/* ---- callbacks owed ---- */

static void collect_ids(struct ev_call *c, void *data)
{
    char *ids = data;
    strcat(ids, c->id + 28); /* the last 4 hex digits */
    strcat(ids, " ");
    ev_call_free(c);
}

/* A callback is owed from ev_db_callback_due() until ev_db_callback_done(),
 * listed oldest end first, once however often it was marked, and no longer
 * once its call is gone. */
static void test_callbacks_owed(void **state)
{
    (void)state;
    sqlite3 *db;
    char err[256], ids[128] = "";
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    for (int i = 1; i <= 3; i++) {
        struct ev_call *c = make_call(i);
        c->state = EV_SUCCEEDED;
        c->finished_ms = 10000 - i; /* the third ended first */
        assert_int_equal(ev_db_insert(db, c), 0);
        ev_call_free(c);
    }
    struct ev_call *c1 = make_call(1), *c3 = make_call(3);
    assert_int_equal(ev_db_callback_due(db, c1->id), 0);
    assert_int_equal(ev_db_callback_due(db, c3->id), 0);
    assert_int_equal(ev_db_callback_due(db, c3->id), 0); /* once */
    assert_int_equal(ev_db_list_callbacks(db, collect_ids, ids), 0);
    assert_string_equal(ids, "0003 0001 ");

    assert_int_equal(ev_db_callback_done(db, c3->id), 0);
    ids[0] = '\0';
    assert_int_equal(ev_db_list_callbacks(db, collect_ids, ids), 0);
    assert_string_equal(ids, "0001 ");

    /* Its call deleted (retention, purge): nothing owed. */
    assert_int_equal(ev_db_delete(db, NULL, -1, 20000), 3);
    ids[0] = '\0';
    assert_int_equal(ev_db_list_callbacks(db, collect_ids, ids), 0);
    assert_string_equal(ids, "");
    ev_call_free(c1);
    ev_call_free(c3);
    sqlite3_close(db);
}

/* ---- group commit ---- */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_open, gate_entered;
static int done_order[101], n_done;

struct tjob {
    struct ev_job job;
    struct ev_call *c;
    int i;
};

static int run_insert(sqlite3 *db, struct ev_job *job)
{
    struct tjob *t = (struct tjob *)job;
    if (t->i == 0) {
        /* The first job holds the thread until the test has queued the rest. */
        pthread_mutex_lock(&gate_mu);
        gate_entered = 1;
        pthread_cond_broadcast(&gate_cond);
        while (!gate_open)
            pthread_cond_wait(&gate_cond, &gate_mu);
        pthread_mutex_unlock(&gate_mu);
    }
    return ev_db_insert(db, t->c);
}

static void on_done(struct ev_job *job)
{
    struct tjob *t = (struct tjob *)job;
    assert_int_equal(job->result, 0);
    done_order[n_done++] = t->i;
    ev_call_free(t->c);
    free(t);
}

static void test_group_commit(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sqlite3 *db;
    char err[256];
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    struct ev_store *s;
    assert_int_equal(ev_store_new(&loop, db, &s), 0);

    for (int i = 0; i <= 100; i++) {
        struct tjob *t = calloc(1, sizeof(*t));
        t->i = i;
        t->c = make_call(100 + i);
        t->job.run = run_insert;
        t->job.done = on_done;
        ev_store_submit(s, &t->job);
        if (i == 0) {
            pthread_mutex_lock(&gate_mu);
            while (!gate_entered)
                pthread_cond_wait(&gate_cond, &gate_mu);
            pthread_mutex_unlock(&gate_mu);
        }
    }
    assert_int_equal(n_done, 0); /* never from submit */
    pthread_mutex_lock(&gate_mu);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_mu);
    while (n_done < 101)
        uv_run(&loop, UV_RUN_ONCE);
    /* job 0 alone, then the 100 that waited: two transactions, two syncs */
    assert_int_equal(ev_store_commits(s), 2);
    for (int i = 0; i <= 100; i++)
        assert_int_equal(done_order[i], i);
    ev_store_close(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* Durable: another connection reads all 101. */
    assert_int_equal(ev_db_open(path, &db, err, sizeof(err)), 0);
    int n = 0;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM calls", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    assert_int_equal(n, 101);
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sql_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callbacks_owed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schedule_runs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
