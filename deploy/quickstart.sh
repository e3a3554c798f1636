#!/bin/sh
# Runs stoke on this machine with the example function, from nothing:
# installs what is missing (and starts dockerd when none answers), builds
# stoke and the example image, starts stoke-controller, stoke-activator and
# stoke-events (async invocations) in the background, applies deploy/examples/hello/hello.yaml with
# `stokectl apply` (through the controller's admin API), and sends one
# request through the activator: the function starts from zero replicas and
# answers; then one async call (202, then its state).
#
# Usage: deploy/quickstart.sh          start (again) and print the answer
#        deploy/quickstart.sh stop     stop stoke and remove its replicas
# Env:   STOKE_HOME   state directory (default /tmp/stoke-quickstart)
#        STOKE_PORT   activator port (default 8080)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
home=${STOKE_HOME:-/tmp/stoke-quickstart}
port=${STOKE_PORT:-8080}
build=$root/build

say() { printf 'quickstart: %s\n' "$*"; }

stop() {
    for p in activator events controller; do
        if [ -f "$home/$p.pid" ]; then
            pid=$(cat "$home/$p.pid")
            if kill "$pid" 2>/dev/null; then
                # The controller removes its replicas before it exits.
                i=0
                while kill -0 "$pid" 2>/dev/null && [ $i -lt 150 ]; do
                    sleep 0.2
                    i=$((i + 1))
                done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$home/$p.pid"
        fi
    done
}

if [ "${1:-}" = stop ]; then
    stop
    say "stopped"
    exit 0
fi

"$root/deploy/install-deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
STOKE_BUILD_DIR=$build "$root/deploy/build-example.sh" stoke-hello:1

stop
mkdir -p "$home/functions"
rm -f "$home/functions/"*.yaml
: >"$home/controller.log"
: >"$home/activator.log"
: >"$home/events.log"

setsid nohup "$build/stoke-controller" --functions-dir "$home/functions" \
    --listen "unix:$home/ctl.sock" --admin-socket "$home/admin.sock" --instance quickstart \
    >>"$home/controller.log" 2>&1 </dev/null &
echo $! >"$home/controller.pid"
# The token the activator sends stoke-events with each async call.
[ -s "$home/events.token" ] || (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$home/events.token")
setsid nohup "$build/stoke-activator" --listen "127.0.0.1:$port" \
    --controller "unix:$home/ctl.sock" --events 127.0.0.1:8091 \
    --events-token-file "$home/events.token" \
    >>"$home/activator.log" 2>&1 </dev/null &
echo $! >"$home/activator.pid"
setsid nohup "$build/stoke-events" --listen 127.0.0.1:8091 --activator "127.0.0.1:$port" \
    --db "$home/events.db" --admin-socket "$home/events.sock" --token-file "$home/events.token" \
    --controller "unix:$home/ctl.sock" \
    >>"$home/events.log" 2>&1 </dev/null &
echo $! >"$home/events.pid"

wait_for() { # file needle seconds
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt $(($3 * 10)) ]; then
            say "timed out waiting for '$2' in $1:"
            tail -n 20 "$1" >&2
            exit 1
        fi
        sleep 0.1
    done
}
wait_for "$home/controller.log" '"ready: functions' 30
wait_for "$home/activator.log" 'connected to the controller' 30
wait_for "$home/events.log" '"listening on' 30

# Apply the function through the admin API (dropping the file into
# $home/functions would do the same); --wait returns once it is as the spec
# asks: here, applied at zero replicas.
stokectl="$build/stokectl --server unix:$home/admin.sock"
say "\$ stokectl apply -f deploy/examples/hello/hello.yaml --wait"
$stokectl apply -f "$root/deploy/examples/hello/hello.yaml" --wait
sleep 0.3 # the route reaches the activator

n=$(docker ps -q --filter label=io.stoke.instance=quickstart | wc -l)
say "hello is applied with $n replicas running; sending the first request"
say "\$ curl http://127.0.0.1:$port/fn/hello/"
answer=$(curl -sS --retry 3 --max-time 60 -w '%{http_code} in %{time_total}s' "http://127.0.0.1:$port/fn/hello/")
echo "$answer"
say "\$ curl -i -H 'Prefer: respond-async' http://127.0.0.1:$port/fn/hello/"
async=$(curl -sS --max-time 60 -D - -o /dev/null -H 'Prefer: respond-async' "http://127.0.0.1:$port/fn/hello/" | tr -d '\r')
echo "$async" | grep -E '^(HTTP|X-Call-Id|Location)'
loc=$(echo "$async" | sed -n 's/^Location: //p')
i=0
while [ -n "$loc" ] && [ $i -lt 100 ] &&
    ! curl -sS "http://127.0.0.1:$port$loc" | grep -q '"state": *"succeeded"'; do
    sleep 0.1
    i=$((i + 1))
done
say "\$ curl http://127.0.0.1:$port$loc"
curl -sS "http://127.0.0.1:$port$loc"
say "the same function by Host: curl http://hello.localhost:$port/"
say "the function's state: $build/stokectl --server unix:$home/admin.sock get (or describe hello, top, logs hello)"
say "metrics: curl http://127.0.0.1:9091/metrics (activator), http://127.0.0.1:9092/metrics (controller), http://127.0.0.1:9093/metrics (events)"
say "async calls: $build/stokectl invoke hello --async, calls get ID, dlq list hello (STOKE_EVENTS=unix:$home/events.sock)"
say "logs: $home/controller.log $home/activator.log $home/events.log"
say "stop with: $0 stop"
case "$answer" in
*"200 in"*) ;;
*) exit 1 ;;
esac
case "$async" in
"HTTP/1.1 202"*) exit 0 ;;
*) exit 1 ;;
esac
