/* Exponential back-off, for crash loops and reconnects. Pure. */
#ifndef STOKE_BACKOFF_H
#define STOKE_BACKOFF_H

#include <stdint.h>

/* The wait after `failures` failures in a row: 0 for none, `min_ms` after
 * the first, doubling with each further one, never above `max_ms` (nor
 * below `min_ms` when max_ms < min_ms: then max_ms). */
uint64_t stoke_backoff_ms(uint32_t failures, uint64_t min_ms, uint64_t max_ms);

#endif
