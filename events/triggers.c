/* Queue triggers: see triggers.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <json-c/json.h>

#include "fnspec.h"
#include "stoke/list.h"
#include "stoke/log.h"
#include "stoke/redisq.h"
#include "stoke/routes.h"
#include "triggers.h"

#define REPORT_MS 1000
#define PASSWORD_MAX 4096

/* A message handed to us and not yet acknowledged. */
struct given {
    struct stoke_list node; /* trig->given */
    char call_id[33];
    char msg_id[64];
};

enum { M_ACCEPTED, M_DUPLICATE, M_SUCCEEDED, M_DEAD, M_CANCELLED, M_RESULTS };
static const char *const result_names[] = {"accepted", "duplicate", "succeeded", "dead",
                                           "cancelled"};

struct trig {
    struct stoke_list node; /* trigs */
    char fn[STOKE_NAME_MAX + 1];
    struct stoke_trigger cfg; /* owned copy */
    struct stoke_async a;
    uint64_t timeout_ms;
    struct stoke_redisq *q;
    uv_getaddrinfo_t gai;
    bool resolving, closing;
    bool ready;      /* the group is there (redisq's state) */
    unsigned credit; /* what redisq holds of ours */
    uint32_t held;   /* entries of `given` */
    struct stoke_list given;
    int64_t lag, pending; /* the last XINFO GROUPS; -1: not known */
    uint64_t counts[M_RESULTS];
};

static struct triggers_host host;
static char consumer[128];
static struct stoke_list trigs;
static uv_timer_t report_timer;
static bool started;

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t fnv(uint64_t h, const char *s)
{
    /* With its NUL: ("ab","c") and ("a","bc") differ. */
    for (const unsigned char *p = (const unsigned char *)s;; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
        if (!*p)
            break;
    }
    return h;
}

void triggers_call_id(const char *fn, const char *trigger, const char *stream, const char *msg_id,
                      char out[33])
{
    uint64_t a = 0xcbf29ce484222325ULL, b = 0x84222325cbf29ce4ULL;
    const char *parts[] = {fn, trigger, stream, msg_id};
    for (size_t i = 0; i < 4; i++) {
        a = fnv(a, parts[i]);
        b = fnv(b, parts[i]);
    }
    snprintf(out, 33, "%016" PRIx64 "%016" PRIx64, a, b);
}

static struct trig *trig_find(const char *fn, const char *name)
{
    for (struct stoke_list *n = trigs.next; n != &trigs; n = n->next) {
        struct trig *t = stoke_container_of(n, struct trig, node);
        if (!t->closing && strcmp(t->fn, fn) == 0 && strcmp(t->cfg.name, name) == 0)
            return t;
    }
    return NULL;
}

static struct given *given_find(struct trig *t, const char *call_id)
{
    for (struct stoke_list *n = t->given.next; n != &t->given; n = n->next) {
        struct given *g = stoke_container_of(n, struct given, node);
        if (strcmp(g->call_id, call_id) == 0)
            return g;
    }
    return NULL;
}

/* Tops redisq's credit up to maxInFlight messages read and not acked. */
static void top_up(struct trig *t)
{
    if (!t->q || t->closing)
        return;
    uint32_t want = t->a.max_in_flight ? t->a.max_in_flight : 1;
    if (t->held + t->credit < want) {
        unsigned n = want - t->held - t->credit;
        t->credit += n;
        stoke_redisq_credit(t->q, n);
    }
}

static void given_drop(struct trig *t, struct given *g)
{
    stoke_list_remove(&g->node);
    free(g);
    t->held--;
    top_up(t);
}

static void ack(struct trig *t, const char *msg_id, const char *call_id)
{
    int r = stoke_redisq_ack(t->q, msg_id);
    if (r < 0)
        stoke_warn(t->fn, r,
                   "trigger %s: message %s not acknowledged (not connected); it is read again "
                   "after the reconnect and found ended",
                   t->cfg.name, msg_id);
    struct given *g = given_find(t, call_id);
    if (g)
        given_drop(t, g);
}

/* ---- a message: into the store, once ---- */

struct msg_job {
    struct ev_job job;
    struct ev_call *c;
    int state; /* when it was there */
    char fn[STOKE_NAME_MAX + 1], trigger[STOKE_NAME_MAX + 1];
    char msg_id[64];
};

static int run_insert(sqlite3 *db, struct ev_job *job)
{
    struct msg_job *m = (struct msg_job *)job;
    return ev_db_insert_once(db, m->c, &m->state);
}

static void on_insert_done(struct ev_job *job)
{
    struct msg_job *m = (struct msg_job *)job;
    struct trig *t = trig_find(m->fn, m->trigger);
    int r = job->result;
    if (r == 1) {
        if (t)
            t->counts[M_ACCEPTED]++;
        host.add_call(m->c); /* delivered even when the trigger left since */
        m->c = NULL;
    } else if (r == 0 && t) {
        t->counts[M_DUPLICATE]++;
        if (m->state >= EV_SUCCEEDED)
            ack(t, m->msg_id, m->c->id); /* it ended before its ack was sent */
        /* else: held in memory since the start, acked when it ends */
    } else if (r < 0) {
        stoke_error(m->fn, r,
                    "trigger %s: message %s not stored; it stays pending in Redis and is read "
                    "again after a reconnect",
                    m->trigger, m->msg_id);
        struct given *g = t ? given_find(t, m->c->id) : NULL;
        if (g)
            given_drop(t, g);
    }
    ev_call_free(m->c);
    free(m);
}

static char *body_json(const struct stoke_redisq_msg *m, size_t *ret_len)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    for (size_t i = 0; i < m->n_fields; i++)
        json_object_object_add(o, m->keys[i],
                               json_object_new_string_len(m->values[i], (int)m->value_lens[i]));
    const char *s =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *d = s ? strdup(s) : NULL;
    *ret_len = d ? strlen(d) : 0;
    json_object_put(o);
    return d;
}

static void on_msg(struct stoke_redisq *q, const struct stoke_redisq_msg *m, void *data)
{
    struct trig *t = data;
    (void)q;
    if (t->credit)
        t->credit--;
    char id[33];
    triggers_call_id(t->fn, t->cfg.name, t->cfg.stream, m->id, id);
    if (given_find(t, id)) {
        top_up(t); /* read again (a reconnect): it is on its way already */
        return;
    }
    struct given *g = calloc(1, sizeof(*g));
    struct msg_job *mj = calloc(1, sizeof(*mj));
    struct ev_call *c = calloc(1, sizeof(*c));
    char hdr[512];
    if (!g || !mj || !c)
        goto oom;
    memcpy(c->id, id, sizeof(c->id));
    snprintf(c->fn, sizeof(c->fn), "%s", t->fn);
    c->state = EV_QUEUED;
    c->method = strdup("POST");
    c->path = strdup(t->cfg.path);
    snprintf(hdr, sizeof(hdr),
             "Content-Type: application/json\r\nX-Stoke-Trigger: %s\r\nX-Stoke-Stream: %s\r\n"
             "X-Stoke-Message-Id: %s\r\n",
             t->cfg.name, t->cfg.stream, m->id);
    c->headers = strdup(hdr);
    c->body = body_json(m, &c->body_len);
    if (!c->method || !c->path || !c->headers || !c->body)
        goto oom;
    c->timeout_ms = t->timeout_ms;
    c->a = t->a;
    c->created_ms = c->due_ms = wall_ms();
    memcpy(g->call_id, id, sizeof(g->call_id));
    snprintf(g->msg_id, sizeof(g->msg_id), "%s", m->id);
    stoke_list_insert_tail(&t->given, &g->node);
    t->held++;
    mj->c = c;
    snprintf(mj->fn, sizeof(mj->fn), "%s", t->fn);
    snprintf(mj->trigger, sizeof(mj->trigger), "%s", t->cfg.name);
    snprintf(mj->msg_id, sizeof(mj->msg_id), "%s", m->id);
    mj->job.run = run_insert;
    mj->job.done = on_insert_done;
    ev_store_submit(host.store, &mj->job);
    return;
oom:
    /* Stays pending in Redis: read again after a reconnect. */
    stoke_error(t->fn, -ENOMEM, "trigger %s: message %s dropped for now", t->cfg.name, m->id);
    free(g);
    free(mj);
    ev_call_free(c);
}

static void on_state(struct stoke_redisq *q, int err, const char *why, void *data)
{
    struct trig *t = data;
    (void)q;
    if (err == 0 && !t->ready)
        stoke_info(t->fn, "trigger %s: reading stream %s as %s in group %s", t->cfg.name,
                   t->cfg.stream, consumer, t->cfg.group);
    else if (err < 0)
        stoke_warn(t->fn, err, "trigger %s: %s; connecting again", t->cfg.name, why);
    t->ready = err == 0;
}

/* ---- a trigger's consumer ---- */

/* The first line of a password file, or NULL (logged). A small read on
 * the loop, once per consumer made. */
static char *read_password(const struct trig *t)
{
    FILE *f = fopen(t->cfg.password_file, "re");
    char *buf = malloc(PASSWORD_MAX + 2);
    if (!f || !buf) {
        stoke_error(t->fn, -errno, "trigger %s: cannot read %s", t->cfg.name, t->cfg.password_file);
        if (f)
            fclose(f);
        free(buf);
        return NULL;
    }
    size_t n = fread(buf, 1, PASSWORD_MAX + 1, f);
    fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    return buf;
}

static void consumer_start(struct trig *t, const char *ip, int port, const char *unix_path)
{
    char *pw = NULL;
    if (t->cfg.password_file && !(pw = read_password(t)))
        return; /* (until the function's spec changes) */
    struct stoke_redisq_cfg cfg = {
        .host = ip,
        .port = port,
        .unix_path = unix_path,
        .password = pw,
        .stream = t->cfg.stream,
        .group = t->cfg.group,
        .consumer = consumer,
        .start_id = t->cfg.start_from == STOKE_START_ALL ? "0" : "$",
    };
    struct stoke_redisq_hooks hooks = {.on_msg = on_msg, .on_state = on_state, .data = t};
    int r = stoke_redisq_new(host.loop, &cfg, &hooks, &t->q);
    if (pw) {
        explicit_bzero(pw, strlen(pw));
        free(pw);
    }
    if (r < 0) {
        stoke_error(t->fn, r, "trigger %s: cannot start its consumer", t->cfg.name);
        return;
    }
    t->credit = 0;
    top_up(t);
}

static void trig_free(struct trig *t)
{
    while (!stoke_list_empty(&t->given)) {
        struct given *g = stoke_container_of(stoke_list_first(&t->given), struct given, node);
        stoke_list_remove(&g->node);
        free(g);
    }
    stoke_trigger_done(&t->cfg);
    free(t);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct trig *t = req->data;
    t->resolving = false;
    if (t->closing) {
        uv_freeaddrinfo(res);
        trig_free(t);
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "";
    int port = 0;
    if (status == 0 && res) {
        if (res->ai_family == AF_INET) {
            const struct sockaddr_in *sa = (const struct sockaddr_in *)res->ai_addr;
            inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof(ip));
            port = ntohs(sa->sin_port);
        } else if (res->ai_family == AF_INET6) {
            const struct sockaddr_in6 *sa = (const struct sockaddr_in6 *)res->ai_addr;
            inet_ntop(AF_INET6, &sa->sin6_addr, ip, sizeof(ip));
            port = ntohs(sa->sin6_port);
        }
    }
    uv_freeaddrinfo(res);
    if (!ip[0]) {
        /* Known limit: not tried again until the function's spec changes. */
        stoke_error(t->fn, status ? status : -ENOENT, "trigger %s: cannot resolve %s", t->cfg.name,
                    t->cfg.address);
        return;
    }
    consumer_start(t, ip, port, NULL);
}

static void trig_new(const char *fn, const struct stoke_trigger *cfg, const struct stoke_route *r)
{
    struct trig *t = calloc(1, sizeof(*t));
    struct stoke_trigger *copy = NULL;
    if (!t || stoke_route_triggers_dup(cfg, 1, &copy) < 0) {
        free(t);
        stoke_error(fn, -ENOMEM, "trigger %s not started", cfg->name);
        return;
    }
    t->cfg = *copy;
    free(copy);
    snprintf(t->fn, sizeof(t->fn), "%s", fn);
    t->a = r->async;
    t->timeout_ms = r->timeout_ms + r->queue_timeout_ms;
    t->lag = t->pending = -1;
    stoke_list_init(&t->given);
    stoke_list_insert_tail(&trigs, &t->node);
    char h[STOKE_TRIGGER_MAX_STRING + 1];
    int port;
    const char *unix_path;
    if (stoke_trigger_address(t->cfg.address, h, sizeof(h), &port, &unix_path) < 0)
        return; /* (validated by the controller: not reached) */
    if (unix_path) {
        consumer_start(t, NULL, 0, unix_path);
        return;
    }
    /* Resolved off the loop (hiredis would block on a name). */
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    t->gai.data = t;
    int e = uv_getaddrinfo(host.loop, &t->gai, on_resolved, h, service, &hints);
    if (e < 0)
        stoke_error(fn, e, "trigger %s: cannot resolve %s", t->cfg.name, t->cfg.address);
    else
        t->resolving = true;
}

static void on_q_closed(void *data)
{
    trig_free(data);
}

static void trig_close(struct trig *t)
{
    t->closing = true;
    stoke_list_remove(&t->node);
    if (t->q)
        stoke_redisq_close(t->q, on_q_closed, t); /* (its messages stay pending) */
    else if (!t->resolving)
        trig_free(t);
    else
        (void)uv_cancel((uv_req_t *)&t->gai); /* freed in on_resolved */
}

static bool same_source(const struct stoke_trigger *a, const struct stoke_trigger *b)
{
    return strcmp(a->address, b->address) == 0 && strcmp(a->stream, b->stream) == 0 &&
           strcmp(a->group, b->group) == 0 && a->start_from == b->start_from &&
           ((!a->password_file && !b->password_file) ||
            (a->password_file && b->password_file &&
             strcmp(a->password_file, b->password_file) == 0));
}

/* fnspec: a function came or its entry changed. */
static void on_fn_set(const struct stoke_route *r, bool is_new, void *data)
{
    (void)is_new;
    (void)data;
    /* Triggers gone or pointing elsewhere: closed. */
    for (struct stoke_list *n = trigs.next; n != &trigs;) {
        struct trig *t = stoke_container_of(n, struct trig, node);
        n = n->next;
        if (strcmp(t->fn, r->name) != 0)
            continue;
        const struct stoke_trigger *now = NULL;
        for (size_t i = 0; i < r->n_triggers; i++)
            if (strcmp(r->triggers[i].name, t->cfg.name) == 0)
                now = &r->triggers[i];
        if (!now || !same_source(&t->cfg, now)) {
            stoke_info(t->fn, "trigger %s %s", t->cfg.name, now ? "changed" : "removed");
            trig_close(t);
        }
    }
    for (size_t i = 0; i < r->n_triggers; i++) {
        struct trig *t = trig_find(r->name, r->triggers[i].name);
        if (!t) {
            trig_new(r->name, &r->triggers[i], r);
            continue;
        }
        /* The same stream: the rest changes in place. */
        char *path = strdup(r->triggers[i].path);
        if (path) {
            free(t->cfg.path);
            t->cfg.path = path;
        }
        t->cfg.target_backlog = r->triggers[i].target_backlog;
        t->a = r->async;
        t->timeout_ms = r->timeout_ms + r->queue_timeout_ms;
        top_up(t);
    }
}

static void on_fn_removed(const char *name, void *data)
{
    (void)data;
    for (struct stoke_list *n = trigs.next; n != &trigs;) {
        struct trig *t = stoke_container_of(n, struct trig, node);
        n = n->next;
        if (strcmp(t->fn, name) == 0)
            trig_close(t);
    }
}

/* ---- ends of calls ---- */

/* The value of header `name` in `h` ("Name: value\r\n"...) into `out`. */
static bool header_get(const char *h, const char *name, char *out, size_t size)
{
    size_t nl = strlen(name);
    for (const char *l = h; l && *l;) {
        const char *eol = strstr(l, "\r\n");
        size_t n = eol ? (size_t)(eol - l) : strlen(l);
        if (n > nl + 1 && l[nl] == ':' && strncasecmp(l, name, nl) == 0) {
            const char *v = l + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = (size_t)(l + n - v);
            if (vl >= size)
                return false;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return true;
        }
        l = eol ? eol + 2 : NULL;
    }
    return false;
}

bool triggers_is_trigger_call(const struct ev_call *c)
{
    char v[STOKE_NAME_MAX + 1];
    return header_get(c->headers, "X-Stoke-Trigger", v, sizeof(v));
}

void triggers_call_ended(const struct ev_call *c)
{
    char name[STOKE_NAME_MAX + 1], msg_id[64];
    if (!started || !header_get(c->headers, "X-Stoke-Trigger", name, sizeof(name)) ||
        !header_get(c->headers, "X-Stoke-Message-Id", msg_id, sizeof(msg_id)))
        return;
    struct trig *t = trig_find(c->fn, name);
    if (!t) {
        /* Its trigger is gone, or not known yet (after a restart): the
         * message stays pending, and is acknowledged when it is read
         * again and found ended. */
        return;
    }
    if (c->state == EV_SUCCEEDED)
        t->counts[M_SUCCEEDED]++;
    else if (c->state == EV_CANCELLED)
        t->counts[M_CANCELLED]++;
    else
        t->counts[M_DEAD]++;
    if (t->q)
        ack(t, msg_id, c->id);
}

/* ---- the backlog: measured, and reported to the controller ---- */

static void on_lag(struct stoke_redisq *q, int err, int64_t lag, int64_t pending, void *data)
{
    (void)q;
    struct trig *t = data;
    if (err < 0) {
        t->lag = t->pending = -1;
        return;
    }
    t->lag = lag;
    t->pending = pending;
}

static uint64_t backlog_of(const struct trig *t)
{
    /* lag -1 (Redis cannot tell, after an XDEL): counted as 0. */
    return (uint64_t)(t->lag > 0 ? t->lag : 0) + (uint64_t)(t->pending > 0 ? t->pending : 0);
}

/* {"op":"backlog","fns":{"<fn>":{"backlog":N,"target":T}}}: of a function
 * with several triggers, the one that needs the most replicas (KEDA takes
 * the largest of its scalers). */
static void report(void)
{
    json_object *root = json_object_new_object(), *fns = json_object_new_object();
    if (!root || !fns) {
        json_object_put(root);
        json_object_put(fns);
        return;
    }
    size_t n = 0;
    for (struct stoke_list *l = trigs.next; l != &trigs; l = l->next) {
        struct trig *t = stoke_container_of(l, struct trig, node);
        uint64_t b = backlog_of(t), tb = t->cfg.target_backlog ? t->cfg.target_backlog : 1;
        json_object *e = NULL, *v;
        if (json_object_object_get_ex(fns, t->fn, &e)) {
            /* keep the one needing more replicas */
            json_object_object_get_ex(e, "backlog", &v);
            uint64_t ob = (uint64_t)json_object_get_int64(v);
            json_object_object_get_ex(e, "target", &v);
            uint64_t ot = (uint64_t)json_object_get_int64(v);
            if ((b + tb - 1) / tb <= (ob + ot - 1) / ot)
                continue;
        } else {
            e = json_object_new_object();
            if (!e)
                break;
            json_object_object_add(fns, t->fn, e);
            n++;
        }
        json_object_object_add(e, "backlog", json_object_new_int64((int64_t)b));
        json_object_object_add(e, "target", json_object_new_int64((int64_t)tb));
    }
    json_object_object_add(root, "op", json_object_new_string("backlog"));
    json_object_object_add(root, "fns", fns);
    if (n > 0) {
        const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
        if (s)
            fnspec_send(s, strlen(s));
    }
    json_object_put(root);
}

static void on_report_timer(uv_timer_t *timer)
{
    (void)timer;
    report(); /* the last second's measures */
    for (struct stoke_list *l = trigs.next; l != &trigs; l = l->next) {
        struct trig *t = stoke_container_of(l, struct trig, node);
        if (t->q && stoke_redisq_lag(t->q, on_lag, t) < 0)
            t->lag = t->pending = -1;
    }
}

int triggers_metrics(struct stoke_buf *out)
{
    int r = stoke_buf_printf(out, "# HELP stoke_trigger_messages_total Queue-trigger messages by "
                                  "what became of them\n"
                                  "# TYPE stoke_trigger_messages_total counter\n");
    for (struct stoke_list *l = trigs.next; l != &trigs; l = l->next) {
        struct trig *t = stoke_container_of(l, struct trig, node);
        for (size_t k = 0; k < M_RESULTS; k++)
            r |= stoke_buf_printf(out,
                                  "stoke_trigger_messages_total{function=\"%s\",trigger=\"%s\","
                                  "result=\"%s\"} %" PRIu64 "\n",
                                  t->fn, t->cfg.name, result_names[k], t->counts[k]);
    }
    r |= stoke_buf_printf(out, "# HELP stoke_trigger_backlog Messages not read by the group plus "
                               "read and not acknowledged\n"
                               "# TYPE stoke_trigger_backlog gauge\n");
    for (struct stoke_list *l = trigs.next; l != &trigs; l = l->next) {
        struct trig *t = stoke_container_of(l, struct trig, node);
        r |= stoke_buf_printf(out,
                              "stoke_trigger_backlog{function=\"%s\",trigger=\"%s\"} %" PRIu64 "\n",
                              t->fn, t->cfg.name, backlog_of(t));
    }
    return r;
}

int triggers_start(const struct triggers_host *h)
{
    host = *h;
    snprintf(consumer, sizeof(consumer), "%s", h->consumer);
    host.consumer = consumer;
    stoke_list_init(&trigs);
    struct fnspec_observer o = {.on_set = on_fn_set, .on_removed = on_fn_removed};
    int r = fnspec_observe(&o);
    if (r < 0)
        return r;
    uv_timer_init(h->loop, &report_timer);
    uv_timer_start(&report_timer, on_report_timer, REPORT_MS, REPORT_MS);
    started = true;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    (void)h;
}

void triggers_stop(void)
{
    if (!started)
        return;
    started = false;
    uv_close((uv_handle_t *)&report_timer, on_timer_closed);
    while (!stoke_list_empty(&trigs))
        trig_close(stoke_container_of(stoke_list_first(&trigs), struct trig, node));
}
