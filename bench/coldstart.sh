#!/bin/sh
# Cold start from each tier of the warm tier against the engine-API
# baselines (see bench/coldstart.py for what each row measures).
#
# Usage: bench/coldstart.sh [TRIALS]     (default 20)
# Env:   STOKE_BUILD_DIR  a build to use (default: configure and build build/)
#        STOKE_BENCH_NETWORKS  networks to compare (default bridge,host: every path
#        on both, in the same run, and a table of bridge over host)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${STOKE_BUILD_DIR:-}" ]; then
    cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$root/build" -j "$(nproc)" >/dev/null
    STOKE_BUILD_DIR=$root/build
fi
docker image inspect "${STOKE_HELLO_IMAGE:-stoke-hello:1}" >/dev/null 2>&1 || "$root/deploy/build-example.sh"
STOKE_BUILD_DIR=$STOKE_BUILD_DIR exec python3 "$root/bench/coldstart.py" "${1:-20}"
