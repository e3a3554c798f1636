/* libFuzzer target for cron expressions (stoke/cron.h): any bytes either
 * parse, or are refused with a message; a parsed schedule's next run is a
 * whole minute strictly after the start, and running it again moves on.
 * The first line is the expression, the second a time zone. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stoke/cron.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char buf[512];
    if (size >= sizeof(buf))
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    if (strlen(buf) != size)
        return 0;
    char *zone = strchr(buf, '\n');
    if (zone)
        *zone++ = '\0';
    struct stoke_cron c;
    char err[128];
    int r = stoke_cron_parse(buf, zone, &c, err, sizeof(err));
    if (r < 0) {
        check(err[0] != '\0');
        return 0;
    }
    /* Starts spread over the years, some off a whole minute. */
    static const int64_t starts[] = {946684800, 1796428817, 1805000000, 2000000000};
    for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
        int64_t t = starts[i];
        for (int k = 0; k < 3; k++) {
            int64_t n = stoke_cron_next(&c, t);
            check(n > t && n % 60 == 0 && n - t <= (int64_t)31 * 366 * 86400);
            t = n;
        }
    }
    return 0;
}
