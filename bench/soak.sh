#!/bin/bash
# Soak: 50 functions under mixed traffic for an hour (see bench/soak.py for what runs and
# what the table reports): RSS and fd slopes of both daemons, failed requests, cold starts
# by tier, containers left.
#
# Usage: bench/soak.sh [--duration 1h] [--functions 50] [--rollout-every 10m] [--seed N]
# Env:   STOKE_BUILD_DIR  a build to use (default: configure and build build/)
#        KEEP_TMP=1       keep the temp dir (the daemons' logs) after a run that met its
#                         targets (it is kept anyway when one was missed)
#
# Every process it starts is stopped, and every container of its stoke instance removed,
# on exit, on Ctrl-C (the report of what ran so far is printed first) and on failure.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"

bench_build

# soak.py's containers carry io.stoke.instance=e2e-$STOKE_E2E_RUN-soak-<its pid>: should it
# die without removing them (SIGKILL), they are found by that prefix here.
export STOKE_E2E_RUN=soak$$
soak_cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if [ -n "${PY:-}" ] && kill -0 "$PY" 2>/dev/null; then
        kill -TERM "$PY" 2>/dev/null || true # it stops its traffic and daemons, then reports
        for _ in $(seq 3000); do
            kill -0 "$PY" 2>/dev/null || break
            sleep 0.1
        done
    fi
    CIDS=$(docker ps -a --filter label=io.stoke.instance \
        --format '{{.ID}} {{.Label "io.stoke.instance"}}' |
        awk -v p="e2e-$STOKE_E2E_RUN-soak-" 'index($2, p) == 1 { print $1 }')
    (exit "$rc")
    bench_cleanup
}
bench_tmp soak
trap soak_cleanup EXIT

printf '```sh\nbench/soak.sh %s\n```\n' "$*"
printf 'started %s UTC on %s (%s cores, load average %s)\n' "$(date -u '+%Y-%m-%d %H:%M')" \
    "$(uname -sr)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
# In the background, so that a TERM or INT to this script runs its trap at once (a
# background job ignores SIGINT: soak.py stops on the TERM soak_cleanup sends it).
python3 "$ROOT/bench/soak.py" --logs "$TMP/logs" "$@" &
PY=$!
PIDS="$PY"
rc=0
wait "$PY" || rc=$?
PY=""
printf 'ended %s UTC (load average %s)\n' "$(date -u '+%Y-%m-%d %H:%M')" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
exit "$rc"
