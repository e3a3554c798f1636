#include "stoke/backoff.h"

uint64_t stoke_backoff_ms(uint32_t failures, uint64_t min_ms, uint64_t max_ms)
{
    if (failures == 0)
        return 0;
    if (max_ms < min_ms)
        return max_ms;
    uint64_t b = min_ms;
    /* Stops doubling at the cap, so it never overflows. */
    for (uint32_t i = 1; i < failures && b < max_ms; i++)
        b = b > max_ms / 2 ? max_ms : b * 2;
    return b < max_ms ? b : max_ms;
}
