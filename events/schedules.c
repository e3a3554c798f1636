/* Schedules: see schedules.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fnspec.h"
#include "schedplan.h"
#include "schedules.h"
#include "stoke/cron.h"
#include "stoke/list.h"
#include "stoke/log.h"
#include "stoke/routes.h"
#include "triggers.h"

/* The timer waits at most this long, so that a wall clock that jumps is
 * noticed within it. */
#define MAX_WAIT_MS 30000
#define RETRY_MS 1000 /* after a store write failed */

enum { MISSED_FORBID, MISSED_DEADLINE, MISSED_SUSPENDED, MISSED_REASONS };
static const char *const missed_names[] = {"forbid", "deadline", "suspended"};

struct sched {
    struct stoke_list node; /* scheds */
    char fn[STOKE_NAME_MAX + 1];
    struct stoke_schedule cfg; /* owned copy */
    struct stoke_cron cron;
    char key[EV_SCHED_KEY_MAX + 1];
    struct stoke_async a;
    uint64_t timeout_ms;
    bool loaded;  /* its row was read (last_s, call_id are the store's) */
    bool busy;    /* a store job of its is under way */
    bool closing; /* removed: freed when its job is done */
    bool recheck; /* changed while its job ran: looked at again once done */
    int64_t last_s;
    char call_id[33];
    int64_t next_s;         /* when to look again (schedules' clock, s); -1: never */
    int64_t suspended_at_s; /* the last time counted as missed while suspended */
    uint64_t runs, missed[MISSED_REASONS];
};

static struct schedules_host host;
static struct stoke_list scheds;
static uv_timer_t timer;
static bool started;
static int64_t skew_ms;
static uint64_t rate = 1;
static int64_t base_ms; /* the wall clock at the start, for the rate */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The schedules' clock (the test hooks: schedules.h). */
static int64_t clock_ms(void)
{
    int64_t w = wall_ms();
    return base_ms + (w - base_ms) * (int64_t)rate + skew_ms;
}

static int64_t floor_s(int64_t ms)
{
    return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
}

void schedules_call_id(const char *fn, const char *name, int64_t at_s, char out[33])
{
    char t[24];
    snprintf(t, sizeof(t), "%" PRId64, at_s);
    /* The triggers' derivation, with a stream name no trigger can have
     * next to a message id no stream has (Redis ids have a '-'). */
    triggers_call_id(fn, name, "@schedule", t, out);
}

static void make_key(const struct stoke_schedule *cfg, char out[EV_SCHED_KEY_MAX + 1])
{
    snprintf(out, EV_SCHED_KEY_MAX + 1, "%s|%s", cfg->schedule,
             cfg->time_zone ? cfg->time_zone : "UTC");
}

static void arm(void);

static void sched_free(struct sched *s)
{
    stoke_schedule_done(&s->cfg);
    free(s);
}

/* ---- store jobs ---- */

enum job_kind { J_LOAD, J_FIRE, J_FORGET };

struct sched_job {
    struct ev_job job;
    enum job_kind kind;
    struct sched *s; /* NULL for J_FORGET */
    struct ev_sched_run row;
    struct ev_call *c; /* J_FIRE with a run: the call (NULL: handled, not run) */
    enum stoke_concurrency_policy policy;
    char prev_id[33];
    int64_t now_s, next_s;
    /* results */
    int inserted; /* ev_db_insert_once()'s */
    bool forbidden, cancel_prev;
};

static int run_job(sqlite3 *db, struct ev_job *job)
{
    struct sched_job *j = (struct sched_job *)job;
    switch (j->kind) {
    case J_LOAD: {
        struct ev_sched_run got;
        int r = ev_db_sched_get(db, j->row.fn, j->row.name, &got);
        if (r == 0 && strcmp(got.key, j->row.key) == 0) {
            j->row = got;
            return 0;
        }
        if (r < 0 && r != -ENOENT)
            return r;
        /* New, or another schedule under this name: it starts from now. */
        return ev_db_sched_put(db, &j->row);
    }
    case J_FORGET:
        return ev_db_sched_delete(db, j->row.fn, j->row.name[0] ? j->row.name : NULL);
    case J_FIRE:
        break;
    }
    if (j->c && j->policy != STOKE_POLICY_ALLOW && j->prev_id[0]) {
        int st = ev_db_call_state(db, j->prev_id);
        bool active = st == EV_QUEUED || st == EV_RUNNING;
        if (active && j->policy == STOKE_POLICY_FORBID) {
            j->forbidden = true;
            return ev_db_sched_put(db, &j->row); /* (this time is handled: skipped) */
        }
        j->cancel_prev = st == EV_QUEUED && j->policy == STOKE_POLICY_REPLACE;
    }
    if (j->c) {
        int st = 0;
        j->inserted = ev_db_insert_once(db, j->c, &st);
        if (j->inserted < 0)
            return j->inserted;
        snprintf(j->row.call_id, sizeof(j->row.call_id), "%s", j->c->id);
    }
    return ev_db_sched_put(db, &j->row);
}

static void on_job_done(struct ev_job *job)
{
    struct sched_job *j = (struct sched_job *)job;
    struct sched *s = j->s;
    int r = job->result;
    if (j->kind == J_FORGET) {
        if (r < 0)
            stoke_warn(j->row.fn, r, "schedule progress not forgotten (kept, unused)");
        free(j);
        return;
    }
    s->busy = false;
    if (s->closing) {
        /* Removed meanwhile: a run stored is still delivered. */
        if (r >= 0 && j->inserted == 1 && started) {
            host.add_call(j->c);
            j->c = NULL;
        }
        ev_call_free(j->c);
        free(j);
        sched_free(s);
        return;
    }
    if (r < 0) {
        stoke_error(s->fn, r, "schedule %s: progress not stored; trying again in %d ms",
                    s->cfg.name, RETRY_MS);
        s->next_s = floor_s(clock_ms() + RETRY_MS);
        ev_call_free(j->c);
        free(j);
        arm();
        return;
    }
    if (s->recheck) {
        s->recheck = false;
        j->next_s = j->now_s = floor_s(clock_ms());
    }
    if (j->kind == J_LOAD) {
        s->loaded = true;
        s->last_s = j->row.last_s;
        snprintf(s->call_id, sizeof(s->call_id), "%s", j->row.call_id);
        s->next_s = j->now_s; /* looked at now: a run missed while down */
        free(j);
        arm();
        return;
    }
    char at[32];
    sched_rfc3339(j->row.last_s, at, sizeof(at));
    s->last_s = j->row.last_s;
    s->next_s = j->next_s;
    if (j->forbidden) {
        s->missed[MISSED_FORBID]++;
        stoke_info(s->fn,
                   "schedule %s: run of %s skipped: call %s of the last run is still queued or "
                   "running (concurrencyPolicy Forbid)",
                   s->cfg.name, at, s->call_id);
    } else if (!j->c) {
        s->missed[MISSED_DEADLINE]++;
        stoke_info(s->fn,
                   "schedule %s: run of %s missed: more than startingDeadlineSeconds (%" PRIu32
                   ") ago",
                   s->cfg.name, at, s->cfg.starting_deadline_s);
    } else {
        char prev[33];
        snprintf(prev, sizeof(prev), "%s", s->call_id);
        snprintf(s->call_id, sizeof(s->call_id), "%s", j->c->id);
        if (j->inserted == 1) {
            s->runs++;
            stoke_info(s->fn, "schedule %s: run of %s is call %s", s->cfg.name, at, j->c->id);
            host.add_call(j->c);
            j->c = NULL;
        } else {
            stoke_debug(s->fn, "schedule %s: run of %s was stored already (call %s)", s->cfg.name,
                        at, s->call_id);
        }
        if (j->cancel_prev && host.cancel_waiting(prev, "Superseded"))
            stoke_info(s->fn,
                       "schedule %s: call %s of the last run cancelled (concurrencyPolicy "
                       "Replace)",
                       s->cfg.name, prev);
    }
    ev_call_free(j->c);
    free(j);
    arm();
}

static struct sched_job *job_new(enum job_kind kind, struct sched *s)
{
    struct sched_job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->kind = kind;
    j->s = s;
    j->job.run = run_job;
    j->job.done = on_job_done;
    if (s) {
        snprintf(j->row.fn, sizeof(j->row.fn), "%s", s->fn);
        snprintf(j->row.name, sizeof(j->row.name), "%s", s->cfg.name);
        snprintf(j->row.key, sizeof(j->row.key), "%s", s->key);
        snprintf(j->row.call_id, sizeof(j->row.call_id), "%s", s->call_id);
        j->row.last_s = s->last_s;
    }
    return j;
}

static void submit(struct sched *s, struct sched_job *j)
{
    if (s)
        s->busy = true;
    ev_store_submit(host.store, &j->job);
}

/* ---- a run ---- */

/* The call of a run at `at_s`: a CloudEvent in binary mode. NULL: OOM. */
static struct ev_call *run_call(const struct sched *s, int64_t at_s)
{
    struct ev_call *c = calloc(1, sizeof(*c));
    struct stoke_buf h;
    char at[32];
    if (!c)
        return NULL;
    stoke_buf_init(&h, 4096);
    schedules_call_id(s->fn, s->cfg.name, at_s, c->id);
    snprintf(c->fn, sizeof(c->fn), "%s", s->fn);
    c->state = EV_QUEUED;
    c->method = strdup("POST");
    c->path = strdup(s->cfg.path ? s->cfg.path : "/");
    sched_rfc3339(at_s, at, sizeof(at));
    int r = stoke_buf_printf(&h,
                             "Content-Type: %s\r\nce-specversion: 1.0\r\nce-id: %s\r\n"
                             "ce-source: /stoke/schedules/%s/%s\r\n"
                             "ce-type: dev.stoke.schedule.fired\r\nce-time: %s\r\n"
                             "X-Stoke-Schedule: %s\r\n",
                             s->cfg.content_type ? s->cfg.content_type : "application/json", c->id,
                             s->fn, s->cfg.name, at, s->cfg.name);
    c->headers = r == 0 ? strndup(h.data, h.len) : NULL;
    stoke_buf_done(&h);
    c->body_len = s->cfg.data ? strlen(s->cfg.data) : 0;
    c->body = strdup(s->cfg.data ? s->cfg.data : "");
    if (!c->method || !c->path || !c->headers || !c->body) {
        ev_call_free(c);
        return NULL;
    }
    c->timeout_ms = s->timeout_ms;
    c->a = s->a;
    c->created_ms = c->due_ms = wall_ms();
    return c;
}

/* A due schedule: what it owes now, into the store. */
static void evaluate(struct sched *s, int64_t now_ms)
{
    struct sched_step st;
    int64_t now_s = floor_s(now_ms);
    sched_plan(&s->cron, s->last_s, now_s, s->cfg.starting_deadline_s, s->cfg.suspend, &st);
    s->next_s = st.next_s;
    if (st.action == SCHED_WAIT)
        return;
    if (st.action == SCHED_MISSED_SUSPENDED) {
        if (st.at_s > s->suspended_at_s) {
            char at[32];
            sched_rfc3339(st.at_s, at, sizeof(at));
            s->missed[MISSED_SUSPENDED]++;
            s->suspended_at_s = st.at_s;
            stoke_info(s->fn, "schedule %s: run of %s not made: suspended", s->cfg.name, at);
        }
        return;
    }
    struct sched_job *j = job_new(J_FIRE, s);
    struct ev_call *c = st.action == SCHED_RUN ? run_call(s, st.at_s) : NULL;
    if (!j || (st.action == SCHED_RUN && !c)) {
        stoke_error(s->fn, -ENOMEM, "schedule %s: trying again in %d ms", s->cfg.name, RETRY_MS);
        free(j);
        ev_call_free(c);
        s->next_s = floor_s(now_ms + RETRY_MS);
        return;
    }
    j->c = c;
    j->row.last_s = st.at_s;
    j->policy = s->cfg.policy;
    snprintf(j->prev_id, sizeof(j->prev_id), "%s", s->call_id);
    j->now_s = now_s;
    j->next_s = st.next_s;
    submit(s, j);
}

/* ---- the timer ---- */

static void sched_load(struct sched *s);

static void on_timer(uv_timer_t *t)
{
    (void)t;
    int64_t now = clock_ms();
    for (struct stoke_list *n = scheds.next; n != &scheds; n = n->next) {
        struct sched *s = stoke_container_of(n, struct sched, node);
        if (s->busy || s->next_s < 0 || s->next_s * 1000 > now)
            continue;
        if (s->loaded)
            evaluate(s, now);
        else
            sched_load(s); /* its first read failed: again */
    }
    arm();
}

/* Sets the timer for the earliest next look of any schedule. */
static void arm(void)
{
    if (!started)
        return;
    int64_t next = -1;
    for (struct stoke_list *n = scheds.next; n != &scheds; n = n->next) {
        struct sched *s = stoke_container_of(n, struct sched, node);
        if (!s->busy && s->next_s >= 0 && (next < 0 || s->next_s < next))
            next = s->next_s;
    }
    if (next < 0) {
        uv_timer_stop(&timer);
        return;
    }
    int64_t wait = (next * 1000 - clock_ms()) / (int64_t)rate;
    if (wait < 1)
        wait = 1;
    if (wait > MAX_WAIT_MS)
        wait = MAX_WAIT_MS;
    uv_timer_start(&timer, on_timer, (uint64_t)wait, 0);
}

/* ---- the functions' schedules ---- */

static struct sched *sched_find(const char *fn, const char *name)
{
    for (struct stoke_list *n = scheds.next; n != &scheds; n = n->next) {
        struct sched *s = stoke_container_of(n, struct sched, node);
        if (strcmp(s->fn, fn) == 0 && strcmp(s->cfg.name, name) == 0)
            return s;
    }
    return NULL;
}

/* Takes `s` out of the list; its progress is forgotten when `forget`. */
static void sched_remove(struct sched *s, bool forget)
{
    stoke_list_remove(&s->node);
    if (forget) {
        struct sched_job *j = job_new(J_FORGET, NULL);
        if (j) {
            snprintf(j->row.fn, sizeof(j->row.fn), "%s", s->fn);
            snprintf(j->row.name, sizeof(j->row.name), "%s", s->cfg.name);
            submit(NULL, j);
        }
    }
    if (s->busy)
        s->closing = true; /* freed when its job is done */
    else
        sched_free(s);
}

/* A schedule came: its progress is read (or starts now). */
static void sched_load(struct sched *s)
{
    struct sched_job *j = job_new(J_LOAD, s);
    if (!j) {
        stoke_error(s->fn, -ENOMEM, "schedule %s not started; trying again in %d ms", s->cfg.name,
                    RETRY_MS);
        s->next_s = floor_s(clock_ms() + RETRY_MS);
        return;
    }
    j->now_s = floor_s(clock_ms());
    j->row.last_s = j->now_s; /* (when there is no row of this schedule) */
    j->row.call_id[0] = '\0';
    s->loaded = false;
    submit(s, j);
}

static int sched_set_cfg(struct sched *s, const struct stoke_schedule *cfg,
                         const struct stoke_route *r)
{
    struct stoke_schedule *copy = NULL;
    struct stoke_cron c;
    char err[160];
    if (stoke_cron_parse(cfg->schedule, cfg->time_zone, &c, err, sizeof(err)) < 0) {
        stoke_error(r->name, -EINVAL, "schedule %s: %s", cfg->name, err); /* (validated) */
        return -EINVAL;
    }
    if (stoke_schedules_dup(cfg, 1, &copy) < 0)
        return -ENOMEM;
    stoke_schedule_done(&s->cfg);
    s->cfg = *copy;
    free(copy);
    s->cron = c;
    s->a = r->async;
    s->timeout_ms = r->timeout_ms + r->queue_timeout_ms;
    return 0;
}

static void sched_new(const struct stoke_route *r, const struct stoke_schedule *cfg)
{
    struct sched *s = calloc(1, sizeof(*s));
    if (!s || sched_set_cfg(s, cfg, r) < 0) {
        free(s);
        stoke_error(r->name, -ENOMEM, "schedule %s not started", cfg->name);
        return;
    }
    snprintf(s->fn, sizeof(s->fn), "%s", r->name);
    make_key(&s->cfg, s->key);
    s->next_s = -1;
    s->suspended_at_s = -1;
    stoke_list_insert_tail(&scheds, &s->node);
    stoke_info(s->fn, "schedule %s: \"%s\" in %s%s", cfg->name, cfg->schedule,
               cfg->time_zone ? cfg->time_zone : "UTC", cfg->suspend ? ", suspended" : "");
    sched_load(s);
}

/* fnspec: a function came or its entry changed. */
static void on_fn_set(const struct stoke_route *r, bool is_new, void *data)
{
    (void)is_new;
    (void)data;
    for (struct stoke_list *n = scheds.next; n != &scheds;) {
        struct sched *s = stoke_container_of(n, struct sched, node);
        n = n->next;
        if (strcmp(s->fn, r->name) != 0)
            continue;
        const struct stoke_schedule *now = NULL;
        for (size_t i = 0; i < r->n_schedules; i++)
            if (strcmp(r->schedules[i].name, s->cfg.name) == 0)
                now = &r->schedules[i];
        char key[EV_SCHED_KEY_MAX + 1];
        if (now)
            make_key(now, key);
        if (!now || strcmp(key, s->key) != 0) {
            /* Gone, or another time table: it starts again from now. */
            stoke_info(s->fn, "schedule %s %s", s->cfg.name, now ? "changed" : "removed");
            sched_remove(s, !now);
        }
    }
    for (size_t i = 0; i < r->n_schedules; i++) {
        struct sched *s = sched_find(r->name, r->schedules[i].name);
        if (!s) {
            sched_new(r, &r->schedules[i]);
            continue;
        }
        bool resumed = s->cfg.suspend && !r->schedules[i].suspend;
        if (stoke_schedule_equal(&s->cfg, &r->schedules[i]) &&
            memcmp(&s->a, &r->async, sizeof(s->a)) == 0)
            continue;
        if (sched_set_cfg(s, &r->schedules[i], r) < 0)
            continue;
        if (resumed)
            stoke_info(s->fn, "schedule %s resumed", s->cfg.name);
        /* Looked at again at once (a resumed one owes its latest run). */
        if (s->busy)
            s->recheck = true;
        else if (s->loaded)
            s->next_s = floor_s(clock_ms());
    }
    arm();
}

static void on_fn_removed(const char *name, void *data)
{
    (void)data;
    for (struct stoke_list *n = scheds.next; n != &scheds;) {
        struct sched *s = stoke_container_of(n, struct sched, node);
        n = n->next;
        if (strcmp(s->fn, name) == 0) {
            stoke_info(s->fn, "schedule %s removed", s->cfg.name);
            sched_remove(s, true);
        }
    }
    arm();
}

/* ---- metrics ---- */

int schedules_metrics(struct stoke_buf *out)
{
    int r = stoke_buf_printf(out, "# HELP stoke_schedule_runs_total Scheduled runs made calls\n"
                                  "# TYPE stoke_schedule_runs_total counter\n");
    for (struct stoke_list *l = scheds.next; l != &scheds; l = l->next) {
        struct sched *s = stoke_container_of(l, struct sched, node);
        r |= stoke_buf_printf(
            out, "stoke_schedule_runs_total{function=\"%s\",schedule=\"%s\"} %" PRIu64 "\n", s->fn,
            s->cfg.name, s->runs);
    }
    r |= stoke_buf_printf(out, "# HELP stoke_schedule_missed_total Scheduled runs not made, by "
                               "reason\n"
                               "# TYPE stoke_schedule_missed_total counter\n");
    for (struct stoke_list *l = scheds.next; l != &scheds; l = l->next) {
        struct sched *s = stoke_container_of(l, struct sched, node);
        for (size_t k = 0; k < MISSED_REASONS; k++)
            r |= stoke_buf_printf(out,
                                  "stoke_schedule_missed_total{function=\"%s\",schedule=\"%s\","
                                  "reason=\"%s\"} %" PRIu64 "\n",
                                  s->fn, s->cfg.name, missed_names[k], s->missed[k]);
    }
    r |= stoke_buf_printf(out, "# HELP stoke_schedule_next_run_timestamp_seconds The next "
                               "scheduled run (Unix time; none while suspended)\n"
                               "# TYPE stoke_schedule_next_run_timestamp_seconds gauge\n");
    for (struct stoke_list *l = scheds.next; l != &scheds; l = l->next) {
        struct sched *s = stoke_container_of(l, struct sched, node);
        if (s->cfg.suspend || !s->loaded || s->next_s < 0)
            continue;
        r |= stoke_buf_printf(out,
                              "stoke_schedule_next_run_timestamp_seconds{function=\"%s\","
                              "schedule=\"%s\"} %" PRId64 "\n",
                              s->fn, s->cfg.name, s->next_s);
    }
    return r;
}

/* ---- start and stop ---- */

static int env_int(const char *name, int64_t lo, int64_t hi, int64_t dflt, int64_t *ret)
{
    const char *v = getenv(name);
    *ret = dflt;
    if (!v || !*v)
        return 0;
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end || n < lo || n > hi)
        return -EINVAL;
    *ret = n;
    return 0;
}

int schedules_start(const struct schedules_host *h)
{
    int64_t skew, r64;
    if (env_int("STOKE_EVENTS_TEST_CLOCK_SKEW", -100LL * 365 * 86400, 100LL * 365 * 86400, 0,
                &skew) < 0 ||
        env_int("STOKE_EVENTS_TEST_CLOCK_RATE", 1, 3600, 1, &r64) < 0)
        return -EINVAL;
    host = *h;
    skew_ms = skew * 1000;
    rate = (uint64_t)r64;
    base_ms = wall_ms();
    stoke_list_init(&scheds);
    if (skew || rate != 1)
        stoke_warn(NULL, 0,
                   "test hook: the schedules' clock is the wall clock %+" PRId64
                   " s, running %" PRIu64 " times as fast",
                   skew, rate);
    struct fnspec_observer o = {.on_set = on_fn_set, .on_removed = on_fn_removed};
    int r = fnspec_observe(&o);
    if (r < 0)
        return r;
    uv_timer_init(h->loop, &timer);
    started = true;
    return 0;
}

static void on_timer_closed(uv_handle_t *hd)
{
    (void)hd;
}

void schedules_stop(void)
{
    if (!started)
        return;
    started = false;
    uv_close((uv_handle_t *)&timer, on_timer_closed);
    while (!stoke_list_empty(&scheds))
        sched_remove(stoke_container_of(stoke_list_first(&scheds), struct sched, node), false);
}
