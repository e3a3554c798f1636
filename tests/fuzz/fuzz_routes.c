/* libFuzzer target for the route table the activator accepts from the
 * controller channel, and for the router: any bytes either parse into a
 * table that keeps its invariants (valid names, sorted, IP endpoints) that
 * formats back to an equal table, or are refused with a zeroed table. */
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
        }
        char *line = stoke_route_table_format(&t);
        check(line != NULL);
        check(stoke_route_table_parse(line, strlen(line), &back) == 0);
        check(back.n_routes == t.n_routes && back.gen == t.gen);
        free(line);
        stoke_route_table_done(&back);
        stoke_route_table_done(&t);
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
