/* stokectl simulate: runs the autoscaler (include/stoke/autoscale.h), the
 * very code the controller runs, on a recorded per-second concurrency trace
 * and prints its decisions. Used by people tuning a spec and by the trace
 * tests (tests/traces/). */
#ifndef STOKECTL_SIMULATE_H
#define STOKECTL_SIMULATE_H

/* `stokectl simulate -f SPEC TRACE.csv [--ready-delay DUR] [--tick DUR] [-v]`,
 * argv[0] being "simulate". Prints to stdout, errors to stderr. Returns the
 * exit status: 0, 1 (bad spec or trace, I/O error) or 2 (usage error).
 * Blocking file I/O: a command, not for an event loop. */
int simulate_main(int argc, char **argv);

#endif
