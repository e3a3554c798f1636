#!/bin/bash
# Cold starts with N functions (from absent, from paused, a burst of 50) beside
# the engine's own create+start at the same container count, the daemons' CPU
# and RSS, and the controller's shutdown with them all (see bench/scale.py).
#
# Usage: bench/scale.sh [N]     (default 100; the README has N = 1, 100, 1000)
# Env:   STOKE_BUILD_DIR  a build to use (default: configure and build build/)
#        STOKE_BENCH_NETWORK  bridge (default) or host (N = 1000: a bridge holds 1,024 ports)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
bench_build
exec python3 "$root/bench/scale.py" "${1:-100}"
