/* See shared.h for the design. */
#include "shared.h"

#include <errno.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "stoke/spec.h"

#define CACHE_LINE 64
#define BUCKETS 4096 /* functions hashed by name; chains are walked under the mutex only */
#define MASK_WORDS (LIMITS_MAX_WORKERS / 64)

/* What each worker's table asks for one limit; the lowest holds. Under
 * the registry mutex. */
struct wants {
    unsigned *held; /* per worker: its references */
    int64_t *want;  /* per worker: its table's limit, NO_LIMIT, or -1: none set */
};

#define NO_LIMIT INT64_MAX

struct lim_ep {
    alignas(CACHE_LINE) atomic_uint inflight;
    atomic_uint limit; /* 0: none */
    /* Below: under the registry mutex. */
    alignas(CACHE_LINE) struct lim_fn *fn;
    struct lim_ep *next;
    struct wants w;
    unsigned refs;
    char addr[80];
};

struct lim_fn {
    alignas(CACHE_LINE) atomic_uint queued;
    atomic_uint queue_max;
    alignas(CACHE_LINE) _Atomic uint64_t waiting[MASK_WORDS]; /* workers with queued requests */
    /* Below: under the registry mutex. */
    alignas(CACHE_LINE) struct limits *l;
    struct lim_fn *next;
    struct lim_ep *eps;
    struct wants w;
    unsigned refs; /* the workers' and its replicas' */
    char name[STOKE_NAME_MAX + 1];
};

struct wake {
    alignas(CACHE_LINE) _Atomic(uv_async_t *) async;
    atomic_uint senders;       /* sends in progress: see limits_set_wake() */
    atomic_bool drain_changed; /* see limits_drain_changed() */
};

struct limits {
    alignas(CACHE_LINE) atomic_uint connections;
    uint32_t max_connections;
    unsigned n_workers;
    uv_mutex_t mu;
    struct lim_fn *buckets[BUCKETS];
    struct wake *wakes;
};

int limits_new(unsigned n_workers, uint32_t max_connections, struct limits **ret)
{
    if (n_workers == 0 || n_workers > LIMITS_MAX_WORKERS)
        return -EINVAL;
    struct limits *l = aligned_alloc(CACHE_LINE, sizeof(*l));
    struct wake *w = aligned_alloc(CACHE_LINE, n_workers * sizeof(*w));
    if (!l || !w || uv_mutex_init(&l->mu) < 0) {
        free(l);
        free(w);
        return -ENOMEM;
    }
    atomic_init(&l->connections, 0);
    l->max_connections = max_connections;
    l->n_workers = n_workers;
    memset(l->buckets, 0, sizeof(l->buckets));
    for (unsigned i = 0; i < n_workers; i++) {
        atomic_init(&w[i].async, NULL);
        atomic_init(&w[i].senders, 0);
        atomic_init(&w[i].drain_changed, false);
    }
    l->wakes = w;
    *ret = l;
    return 0;
}

void limits_free(struct limits *l)
{
    if (!l)
        return;
    uv_mutex_destroy(&l->mu);
    free(l->wakes);
    free(l);
}

void limits_set_wake(struct limits *l, unsigned w, uv_async_t *wake)
{
    if (w >= l->n_workers)
        return;
    atomic_store(&l->wakes[w].async, wake);
    /* A sender that loaded the old handle has counted itself first: once
     * the count is zero no send can reach a handle the caller closes. */
    while (!wake && atomic_load(&l->wakes[w].senders) > 0)
        sched_yield();
}

bool limits_conn_take(struct limits *l)
{
    if (atomic_fetch_add(&l->connections, 1) < l->max_connections)
        return true;
    atomic_fetch_sub(&l->connections, 1);
    return false;
}

void limits_conn_put(struct limits *l)
{
    atomic_fetch_sub(&l->connections, 1);
}

static int wants_init(struct wants *w, unsigned n)
{
    w->held = calloc(n, sizeof(*w->held));
    w->want = malloc(n * sizeof(*w->want));
    if (!w->held || !w->want) {
        free(w->held);
        free(w->want);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < n; i++)
        w->want[i] = -1;
    return 0;
}

static void wants_done(struct wants *w)
{
    free(w->held);
    free(w->want);
}

/* The lowest limit the workers' tables set, or -1 when none has. */
static int64_t wants_min(const struct wants *w, unsigned n)
{
    int64_t min = -1;
    for (unsigned i = 0; i < n; i++) {
        if (w->want[i] >= 0 && (min < 0 || w->want[i] < min))
            min = w->want[i];
    }
    return min;
}

/* A worker let go of its last reference: its wish no longer counts. */
static void wants_release(struct wants *w, unsigned worker)
{
    if (--w->held[worker] == 0)
        w->want[worker] = -1;
}

static unsigned hash_name(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % BUCKETS;
}

struct lim_fn *limits_fn_get(struct limits *l, unsigned w, const char *name)
{
    struct lim_fn **slot = &l->buckets[hash_name(name)];
    if (w >= l->n_workers)
        return NULL;
    uv_mutex_lock(&l->mu);
    struct lim_fn *f = *slot;
    while (f && strcmp(f->name, name) != 0)
        f = f->next;
    if (!f && strlen(name) <= STOKE_NAME_MAX && (f = aligned_alloc(CACHE_LINE, sizeof(*f)))) {
        memset(f, 0, sizeof(*f));
        if (wants_init(&f->w, l->n_workers) < 0) {
            free(f);
            uv_mutex_unlock(&l->mu);
            return NULL;
        }
        atomic_init(&f->queued, 0);
        atomic_init(&f->queue_max, 0);
        for (unsigned i = 0; i < MASK_WORDS; i++)
            atomic_init(&f->waiting[i], 0);
        f->l = l;
        strcpy(f->name, name);
        f->next = *slot;
        *slot = f;
    }
    if (f) {
        f->refs++;
        f->w.held[w]++;
    }
    uv_mutex_unlock(&l->mu);
    return f;
}

/* Under the mutex. */
static void fn_unref_locked(struct lim_fn *f)
{
    if (--f->refs > 0)
        return;
    struct lim_fn **p = &f->l->buckets[hash_name(f->name)];
    while (*p != f)
        p = &(*p)->next;
    *p = f->next;
    wants_done(&f->w);
    free(f); /* its replicas hold references: none is left */
}

static void fn_apply_locked(struct lim_fn *f)
{
    int64_t min = wants_min(&f->w, f->l->n_workers);
    if (min >= 0)
        atomic_store(&f->queue_max, (unsigned)min);
}

void limits_fn_put(struct lim_fn *f, unsigned w)
{
    struct limits *l = f->l;
    uv_mutex_lock(&l->mu);
    wants_release(&f->w, w);
    fn_apply_locked(f);
    fn_unref_locked(f);
    uv_mutex_unlock(&l->mu);
}

void limits_fn_configure(struct lim_fn *f, unsigned w, uint32_t queue_max)
{
    uv_mutex_lock(&f->l->mu);
    f->w.want[w] = queue_max;
    fn_apply_locked(f);
    uv_mutex_unlock(&f->l->mu);
}

struct lim_ep *limits_ep_get(struct lim_fn *f, unsigned w, const char *addr)
{
    uv_mutex_lock(&f->l->mu);
    struct lim_ep *e = f->eps;
    while (e && strcmp(e->addr, addr) != 0)
        e = e->next;
    if (!e && strlen(addr) < sizeof(e->addr) && (e = aligned_alloc(CACHE_LINE, sizeof(*e)))) {
        memset(e, 0, sizeof(*e));
        if (wants_init(&e->w, f->l->n_workers) < 0) {
            free(e);
            uv_mutex_unlock(&f->l->mu);
            return NULL;
        }
        atomic_init(&e->inflight, 0);
        atomic_init(&e->limit, 0);
        e->fn = f;
        strcpy(e->addr, addr);
        e->next = f->eps;
        f->eps = e;
        f->refs++;
    }
    if (e) {
        e->refs++;
        e->w.held[w]++;
    }
    uv_mutex_unlock(&f->l->mu);
    return e;
}

static void ep_apply_locked(struct lim_ep *e)
{
    int64_t min = wants_min(&e->w, e->fn->l->n_workers);
    if (min >= 0)
        atomic_store(&e->limit, min == NO_LIMIT ? 0 : (unsigned)min);
}

void limits_ep_put(struct lim_ep *e, unsigned w)
{
    struct lim_fn *f = e->fn;
    struct limits *l = f->l; /* f may go with e */
    uv_mutex_lock(&l->mu);
    wants_release(&e->w, w);
    ep_apply_locked(e);
    if (--e->refs == 0) {
        struct lim_ep **p = &f->eps;
        while (*p != e)
            p = &(*p)->next;
        *p = e->next;
        wants_done(&e->w);
        free(e);
        fn_unref_locked(f);
    }
    uv_mutex_unlock(&l->mu);
}

void limits_ep_configure(struct lim_ep *e, unsigned w, uint32_t limit)
{
    uv_mutex_lock(&e->fn->l->mu);
    e->w.want[w] = limit == 0 ? NO_LIMIT : limit;
    ep_apply_locked(e);
    uv_mutex_unlock(&e->fn->l->mu);
}

uint32_t lim_ep_inflight(const struct lim_ep *e)
{
    return atomic_load_explicit(&e->inflight, memory_order_relaxed);
}

bool lim_ep_has_room(const struct lim_ep *e)
{
    unsigned limit = atomic_load_explicit(&e->limit, memory_order_relaxed);
    return limit == 0 || atomic_load_explicit(&e->inflight, memory_order_relaxed) < limit;
}

/* One more in *n unless that would pass max: false then (nothing taken). */
static bool take_bounded(atomic_uint *n, unsigned max)
{
    unsigned v = atomic_load(n);
    do {
        if (v >= max)
            return false;
    } while (!atomic_compare_exchange_weak(n, &v, v + 1));
    return true;
}

bool lim_ep_take(struct lim_ep *e)
{
    unsigned limit = atomic_load_explicit(&e->limit, memory_order_relaxed);
    if (limit == 0) {
        atomic_fetch_add(&e->inflight, 1);
        return true;
    }
    return take_bounded(&e->inflight, limit);
}

bool lim_ep_put(struct lim_ep *e)
{
    unsigned before = atomic_fetch_sub(&e->inflight, 1);
    unsigned limit = atomic_load_explicit(&e->limit, memory_order_relaxed);
    return limit > 0 && before == limit + 1;
}

bool lim_ep_over(const struct lim_ep *e)
{
    unsigned limit = atomic_load_explicit(&e->limit, memory_order_relaxed);
    return limit > 0 && atomic_load_explicit(&e->inflight, memory_order_relaxed) > limit;
}

uint32_t lim_fn_queued(const struct lim_fn *f)
{
    return atomic_load(&f->queued);
}

bool lim_fn_queue_take(struct lim_fn *f)
{
    return take_bounded(&f->queued, atomic_load_explicit(&f->queue_max, memory_order_relaxed));
}

void lim_fn_queue_put(struct lim_fn *f)
{
    atomic_fetch_sub(&f->queued, 1);
}

void lim_fn_set_waiting(struct lim_fn *f, unsigned w, bool waiting)
{
    if (w >= LIMITS_MAX_WORKERS)
        return;
    uint64_t bit = (uint64_t)1 << (w % 64);
    if (waiting)
        atomic_fetch_or(&f->waiting[w / 64], bit);
    else
        atomic_fetch_and(&f->waiting[w / 64], ~bit);
}

static void wake(struct limits *l, unsigned w)
{
    struct wake *k = &l->wakes[w];
    atomic_fetch_add(&k->senders, 1);
    uv_async_t *a = atomic_load(&k->async);
    if (a)
        uv_async_send(a);
    atomic_fetch_sub(&k->senders, 1);
}

void lim_fn_wake(struct lim_fn *f, unsigned self)
{
    struct limits *l = f->l;
    for (unsigned i = 0; i < MASK_WORDS && i * 64 < l->n_workers; i++) {
        uint64_t mask = atomic_load(&f->waiting[i]);
        while (mask) {
            unsigned w = i * 64 + (unsigned)__builtin_ctzll(mask);
            mask &= mask - 1;
            if (w != self && w < l->n_workers)
                wake(l, w);
        }
    }
}

void limits_drain_changed(struct limits *l)
{
    for (unsigned w = 0; w < l->n_workers; w++) {
        atomic_store(&l->wakes[w].drain_changed, true);
        wake(l, w);
    }
}

bool limits_take_drain_changed(struct limits *l, unsigned w)
{
    return w < l->n_workers && atomic_exchange(&l->wakes[w].drain_changed, false);
}
