/* libFuzzer target for what stoke reads from the engine and the kernel:
 * the same bytes as one JSON value given to the event, inspect and list
 * parsers (stoke/engine.h), as the text of /proc/PID/cgroup
 * (stoke/freezer.h), and as a container's multiplexed log stream fed in
 * two pieces (stoke_log_demux_feed()). Each either fills its output with what its header
 * promises or refuses the input. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "stoke/engine.h"
#include "stoke/freezer.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

struct demuxed {
    size_t total;
};

static int on_piece(int stream, const char *piece, size_t len, void *cbdata)
{
    struct demuxed *d = cbdata;
    check(stream == 1 || stream == 2);
    check(piece != NULL && len > 0);
    d->total += len;
    return 0;
}

/* Payload never exceeds the input, whatever the split. */
static void fuzz_demux(const uint8_t *data, size_t size)
{
    struct stoke_log_demux dm = {0};
    struct demuxed d = {0};
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (stoke_log_demux_feed(&dm, (const char *)data, cut, on_piece, &d) == 0)
        (void)stoke_log_demux_feed(&dm, (const char *)data + cut, size - cut, on_piece, &d);
    check(d.total <= size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_demux(data, size);

    struct stoke_freezer f;
    if (stoke_freezer_parse((const char *)data, size, &f) == 0) {
        check(f.version == 1 || f.version == 2);
        check(f.path[0] == '/' && strlen(f.path) < sizeof(f.path));
    }

    json_tokener *tok = json_tokener_new();
    if (!tok || size > INT32_MAX)
        goto out;
    json_object *o = json_tokener_parse_ex(tok, (const char *)data, (int)size);
    if (!o)
        goto out;
    struct stoke_container_event ev;
    if (stoke_engine_event_parse(o, &ev) == 0) {
        check(ev.id[0] != '\0' && strlen(ev.id) < sizeof(ev.id));
        check(strlen(ev.action) < sizeof(ev.action));
        check(ev.exit_code >= -1);
    }
    struct stoke_container_state st;
    if (stoke_engine_state_parse(o, &st) == 0)
        check(strlen(st.id) < sizeof(st.id) && strlen(st.status) < sizeof(st.status));
    struct stoke_container_summary s;
    for (size_t i = 0; stoke_engine_list_get(o, i, &s) == 0; i++) {
        check(strlen(s.id) < sizeof(s.id));
        (void)stoke_engine_label_get(&s, "io.stoke.function");
    }
    json_object_put(o);
out:
    if (tok)
        json_tokener_free(tok);
    return 0;
}
