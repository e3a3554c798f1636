/* The limits the activator's workers share (activator/shared.h), through
 * its header: threads racing for slots and queue places never get more
 * than the limit, the lowest limit the workers' tables set holds, and a
 * freed slot wakes the workers that wait for it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <stdatomic.h>
#include <uv.h>

#include "shared.h"

#define THREADS 4
#define ROUNDS 200000

struct race {
    struct lim_ep *ep;
    struct lim_fn *fn;
    atomic_uint in;  /* slots held right now, counted by the racers */
    atomic_uint max; /* the most ever held at once */
    atomic_uint queued, queued_max;
    unsigned limit, queue_max;
};

static void note_max(atomic_uint *max, unsigned v)
{
    unsigned m = atomic_load(max);
    while (v > m && !atomic_compare_exchange_weak(max, &m, v))
        ;
}

static void racer(void *arg)
{
    struct race *r = arg;
    for (int i = 0; i < ROUNDS; i++) {
        if (lim_ep_take(r->ep)) {
            note_max(&r->max, atomic_fetch_add(&r->in, 1) + 1);
            atomic_fetch_sub(&r->in, 1);
            (void)lim_ep_put(r->ep);
        }
        if (lim_fn_queue_take(r->fn)) {
            note_max(&r->queued_max, atomic_fetch_add(&r->queued, 1) + 1);
            atomic_fetch_sub(&r->queued, 1);
            lim_fn_queue_put(r->fn);
        }
    }
}

static void test_race_never_passes_the_limits(void **state)
{
    (void)state;
    struct limits *l;
    assert_int_equal(limits_new(THREADS, 10, &l), 0);
    struct race r = {.limit = 2, .queue_max = 3};
    r.fn = limits_fn_get(l, 0, "f");
    assert_non_null(r.fn);
    r.ep = limits_ep_get(r.fn, 0, "127.0.0.1:30000");
    assert_non_null(r.ep);
    limits_ep_configure(r.ep, 0, r.limit);
    limits_fn_configure(r.fn, 0, r.queue_max);
    atomic_init(&r.in, 0);
    atomic_init(&r.max, 0);
    atomic_init(&r.queued, 0);
    atomic_init(&r.queued_max, 0);
    uv_thread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(uv_thread_create(&t[i], racer, &r), 0);
    for (int i = 0; i < THREADS; i++)
        uv_thread_join(&t[i]);
    assert_true(atomic_load(&r.max) <= r.limit);
    assert_true(atomic_load(&r.queued_max) <= r.queue_max);
    assert_int_equal(lim_ep_inflight(r.ep), 0);
    assert_int_equal(lim_fn_queued(r.fn), 0);
    limits_ep_put(r.ep, 0);
    limits_fn_put(r.fn, 0);
    limits_free(l);
}

static void test_lowest_limit_holds(void **state)
{
    (void)state;
    struct limits *l;
    assert_int_equal(limits_new(2, 10, &l), 0);
    struct lim_fn *f0 = limits_fn_get(l, 0, "f"), *f1 = limits_fn_get(l, 1, "f");
    assert_ptr_equal(f0, f1);
    struct lim_ep *e0 = limits_ep_get(f0, 0, "127.0.0.1:1"),
                  *e1 = limits_ep_get(f1, 1, "127.0.0.1:1");
    assert_ptr_equal(e0, e1);
    limits_ep_configure(e0, 0, 3);
    limits_ep_configure(e1, 1, 1); /* worker 1's newer table lowered it */
    assert_true(lim_ep_take(e0));
    assert_false(lim_ep_take(e0));
    limits_ep_configure(e0, 0, 1);
    limits_ep_configure(e1, 1, 2); /* both at 2 once worker 0 has it too */
    assert_false(lim_ep_take(e0));
    limits_ep_configure(e0, 0, 2);
    assert_true(lim_ep_take(e0));
    assert_false(lim_ep_over(e0));
    /* Lowered under the requests in flight: over until one ends. */
    limits_ep_configure(e0, 0, 1);
    assert_true(lim_ep_over(e0));
    assert_true(lim_ep_put(e0)); /* back within it */
    assert_false(lim_ep_over(e0));
    assert_false(lim_ep_put(e0));
    /* Worker 1 lets go: worker 0's limit alone holds; 0 is no limit. */
    limits_ep_put(e1, 1);
    limits_ep_configure(e0, 0, 0);
    for (int i = 0; i < 100; i++)
        assert_true(lim_ep_take(e0));
    assert_int_equal(lim_ep_inflight(e0), 100);
    for (int i = 0; i < 100; i++)
        (void)lim_ep_put(e0);
    /* A queue bound of 0 refuses every place. */
    limits_fn_configure(f0, 0, 0);
    limits_fn_configure(f1, 1, 5);
    assert_false(lim_fn_queue_take(f0));
    limits_ep_put(e0, 0);
    limits_fn_put(f1, 1);
    limits_fn_put(f0, 0);
    limits_free(l);
}

static void test_connections(void **state)
{
    (void)state;
    struct limits *l;
    assert_int_equal(limits_new(1, 2, &l), 0);
    assert_true(limits_conn_take(l));
    assert_true(limits_conn_take(l));
    assert_false(limits_conn_take(l));
    limits_conn_put(l);
    assert_true(limits_conn_take(l));
    limits_conn_put(l);
    limits_conn_put(l);
    limits_free(l);
}

static int woken;

static void on_wake(uv_async_t *h)
{
    (void)h;
    woken++;
}

static void test_wake_reaches_waiting_workers_only(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_async_t a0, a1;
    struct limits *l;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(uv_async_init(&loop, &a0, on_wake), 0);
    assert_int_equal(uv_async_init(&loop, &a1, on_wake), 0);
    assert_int_equal(limits_new(2, 10, &l), 0);
    limits_set_wake(l, 0, &a0);
    limits_set_wake(l, 1, &a1);
    struct lim_fn *f = limits_fn_get(l, 0, "f");
    woken = 0;
    lim_fn_wake(f, 0); /* nobody waits */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(woken, 0);
    lim_fn_set_waiting(f, 1, true);
    lim_fn_wake(f, 1); /* not itself */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(woken, 0);
    lim_fn_wake(f, 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(woken, 1);
    lim_fn_set_waiting(f, 1, false);
    lim_fn_wake(f, 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(woken, 1);
    limits_drain_changed(l); /* every worker */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(limits_take_drain_changed(l, 0));
    assert_true(limits_take_drain_changed(l, 1));
    assert_false(limits_take_drain_changed(l, 1));
    limits_set_wake(l, 0, NULL);
    limits_set_wake(l, 1, NULL);
    limits_fn_put(f, 0);
    limits_free(l);
    uv_close((uv_handle_t *)&a0, NULL);
    uv_close((uv_handle_t *)&a1, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_race_never_passes_the_limits),
        cmocka_unit_test(test_lowest_limit_holds),
        cmocka_unit_test(test_connections),
        cmocka_unit_test(test_wake_reaches_waiting_workers_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
