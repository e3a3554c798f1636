/* libFuzzer target for what the Kubernetes client reads from the API server
 * and from its config (stoke/kube.h): the bytes as a watch stream cut into
 * lines (bounded, as the informer cuts them), each line parsed as an event and
 * applied to a cache, the events' objects gathered and relisted into it; the
 * whole input as one Status and as a kubeconfig; its first line as a
 * MicroTime. Each either does what its header promises or refuses. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "stoke/kube.h"
#include "stoke/linebuf.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

struct run {
    json_object *cache;
    json_object *seen; /* every object read, for the relist */
    size_t events;
};

static void on_emit(enum stoke_kube_event_type type, json_object *obj, void *data)
{
    char key[512];
    (void)data;
    check(type == STOKE_KUBE_ADDED || type == STOKE_KUBE_MODIFIED || type == STOKE_KUBE_DELETED);
    check(stoke_kube_object_key(obj, key, sizeof(key)) == 0);
}

static int on_line(char *line, size_t len, void *data)
{
    struct run *r = data;
    enum stoke_kube_event_type type;
    json_object *obj = NULL;
    struct stoke_kube_status st;

    if (stoke_kube_event_parse(line, len, &type, &obj, &st) < 0) {
        check(obj == NULL);
        return 0;
    }
    check(obj != NULL);
    r->events++;
    if (type == STOKE_KUBE_ERROR) {
        check(strlen(st.reason) < sizeof(st.reason) && strlen(st.message) < sizeof(st.message));
    } else {
        check(stoke_kube_object_rv(obj) != NULL);
        if (type != STOKE_KUBE_BOOKMARK) {
            check(stoke_kube_cache_apply(r->cache, type, obj, on_emit, r) == 0);
            if (json_object_array_add(r->seen, json_object_get(obj)) < 0)
                json_object_put(obj);
        }
    }
    json_object_put(obj);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run r = {json_object_new_object(), json_object_new_array(), 0};
    struct stoke_linebuf lb;
    size_t cut = size ? data[0] % (size + 1) : 0;

    if (!r.cache || !r.seen)
        goto out;
    /* The stream in two reads, lines capped at 4 KiB. */
    stoke_linebuf_init(&lb, 4096);
    if (stoke_linebuf_feed(&lb, (const char *)data, cut, on_line, &r) == 0)
        (void)stoke_linebuf_feed(&lb, (const char *)data + cut, size - cut, on_line, &r);
    stoke_linebuf_done(&lb);
    /* A relist to what was seen leaves exactly its keys in the cache. */
    if (stoke_kube_cache_relist(r.cache, r.seen, on_emit, &r) == 0)
        check((size_t)json_object_object_length(r.cache) <= json_object_array_length(r.seen));

    /* The whole input as one Status. */
    json_tokener *tok = json_tokener_new();
    if (tok && size < INT32_MAX) {
        json_object *o = json_tokener_parse_ex(tok, (const char *)data, (int)size);
        struct stoke_kube_status st;
        if (o && stoke_kube_status_parse(o, &st) == 0)
            check(st.code >= 0 && st.code < 1000);
        json_object_put(o);
    }
    if (tok)
        json_tokener_free(tok);

    /* As a kubeconfig (no file names resolve: the directory does not exist). */
    struct stoke_kube_config c;
    struct stoke_diag d;
    if (stoke_kube_config_parse((const char *)data, size, "/nonexistent/config", NULL, false, &c,
                                &d) == 0) {
        check(c.server && strncmp(c.server, "https://", 8) == 0 && c.namespace);
        check(!c.cert == !c.key && !c.insecure);
        stoke_kube_config_done(&c);
    }

    /* The first line as a time. */
    char t[64];
    size_t n = 0;
    while (n < size && n < sizeof(t) - 1 && data[n] != '\n')
        n++;
    memcpy(t, data, n);
    t[n] = '\0';
    int64_t ms;
    if (stoke_kube_time_parse(t, &ms) == 0 && ms >= 0) {
        char back[32];
        stoke_kube_time_format(ms, back);
        int64_t again;
        check(stoke_kube_time_parse(back, &again) == 0 && again == ms);
    }
out:
    json_object_put(r.cache);
    json_object_put(r.seen);
    return 0;
}
