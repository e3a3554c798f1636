/* libFuzzer target for the route table and the route update the activator
 * accepts from the controller channel, and for the router: any bytes
 * either parse into a table that keeps its invariants (valid names, sorted,
 * IP endpoints) that formats back to an equal table, or are refused with a
 * zeroed table; the same for an update (valid names, each once over its
 * entries and removals). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stoke/routes.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct stoke_route_table t, back;
    if (stoke_route_table_parse((const char *)data, size, &t) < 0) {
        check(t.routes == NULL && t.n_routes == 0);
    } else {
        for (size_t i = 0; i < t.n_routes; i++) {
            check(stoke_is_valid_name(t.routes[i].name));
            check(i == 0 || strcmp(t.routes[i - 1].name, t.routes[i].name) < 0);
            check(stoke_route_table_find(&t, t.routes[i].name, strlen(t.routes[i].name)) ==
                  &t.routes[i]);
            for (size_t j = 0; j < t.routes[i].n_endpoints; j++)
                check(!t.routes[i].endpoints[j].is_unix);
            check(t.routes[i].n_triggers <= STOKE_SPEC_MAX_TRIGGERS);
            for (size_t j = 0; j < t.routes[i].n_triggers; j++) {
                const struct stoke_trigger *tr = &t.routes[i].triggers[j];
                char host[STOKE_TRIGGER_MAX_STRING + 1];
                int port;
                const char *up;
                check(stoke_is_valid_name(tr->name) && tr->target_backlog >= 1);
                check(stoke_trigger_address(tr->address, host, sizeof(host), &port, &up) == 0);
                check(tr->path[0] == '/' && tr->stream[0] && tr->group[0]);
            }
        }
        char *line = stoke_route_table_format(&t);
        check(line != NULL);
        check(stoke_route_table_parse(line, strlen(line), &back) == 0);
        check(back.n_routes == t.n_routes && back.gen == t.gen);
        for (size_t i = 0; i < t.n_routes; i++)
            check(back.routes[i].n_triggers == t.routes[i].n_triggers);
        free(line);
        stoke_route_table_done(&back);
        stoke_route_table_done(&t);
    }

    struct stoke_route_update u, uback;
    if (stoke_route_update_parse((const char *)data, size, &u) < 0) {
        check(u.routes == NULL && u.n_routes == 0 && u.removed == NULL && u.n_removed == 0);
    } else {
        const char **removed = calloc(u.n_removed ? u.n_removed : 1, sizeof(*removed));
        check(removed != NULL);
        for (size_t i = 0; i < u.n_routes; i++) {
            check(stoke_is_valid_name(u.routes[i].name));
            for (size_t j = 0; j < u.routes[i].n_endpoints; j++)
                check(!u.routes[i].endpoints[j].is_unix);
            for (size_t j = 0; j < u.n_removed; j++)
                check(strcmp(u.routes[i].name, u.removed[j]) != 0);
        }
        for (size_t j = 0; j < u.n_removed; j++) {
            check(stoke_is_valid_name(u.removed[j]));
            removed[j] = u.removed[j];
        }
        char *line = stoke_route_update_format(u.gen, u.routes, u.n_routes, removed, u.n_removed);
        check(line != NULL);
        check(stoke_route_update_parse(line, strlen(line), &uback) == 0);
        check(uback.gen == u.gen && uback.n_routes == u.n_routes && uback.n_removed == u.n_removed);
        for (size_t i = 0; i < u.n_routes; i++) {
            check(strcmp(uback.routes[i].name, u.routes[i].name) == 0);
            check(uback.routes[i].n_endpoints == u.routes[i].n_endpoints);
            check((uback.routes[i].shares == NULL) == (u.routes[i].shares == NULL));
        }
        /* Neither message is the other. */
        struct stoke_route_table t2;
        check(stoke_route_table_parse(line, strlen(line), &t2) < 0);
        free(line);
        free(removed);
        stoke_route_update_done(&uback);
        stoke_route_update_done(&u);
    }

    /* The same bytes as a Host header and as a request target. */
    const char *name, *path;
    size_t nl, pl;
    size_t half = size / 2;
    if (stoke_route_match((const char *)data, half, (const char *)data + half, size - half,
                          "localhost", &name, &nl, &path, &pl) == 0) {
        check(nl > 0);
        check((const uint8_t *)name >= data && (const uint8_t *)name + nl <= data + size);
        check((const uint8_t *)path >= data && (const uint8_t *)path + pl <= data + size);
    }
    return 0;
}
