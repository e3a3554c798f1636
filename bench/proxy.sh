#!/bin/bash
# Proxy benchmark: the stoke activator against nginx as a reverse proxy, in one run.
#
#   backend   nginx, one worker, `return 200 "hello, world\n"` (13 bytes), keep-alive
#   nginx     nginx, one worker, proxy_pass to the backend with `keepalive 256` upstream (the activator's default pool cap)
#   activator build/stoke-activator (ACT_WORKERS event loops) --controller none --route bench=backend
#
# For each connection count wrk (Debian's package; same -t for every target) runs against
# (a) the backend directly, (b) the nginx proxy, (c) the activator; a markdown table gives
# requests/s, p50, p99 and errors, then the ratios activator/nginx and activator/direct.
# Then where the CPU went: per request, what wrk, the backend and the proxy each spent (the
# proxy's user and system time apart), the requests/s the cores allow at their sum and how
# busy the cores were; and, per connection count, the most the activator could be over nginx
# at the same core use if its own user-space CPU were 0 (its system time, wrk and the backend
# stay).
# Then the replica's network: the example function (a container) on the host network and on
# the engine's bridge with its port published on 127.0.0.1 (stoke's default), each straight
# and through the activator, in the same run, with the ratios bridge/host.
# Then 10,000 idle keep-alive client connections (each sends one request, reads the answer
# and stays open) are held against a freshly started activator and nginx proxy, and the
# growth of the proxy's VmRSS is reported per connection.
#
# Everything listens on 127.0.0.1 at free ports, lives in a temp dir, and every process the
# script started is stopped on exit (by its recorded PID).
#
# Env:
#   CONNS="10 50 200"  wrk connection counts
#   DURATION=10        seconds per wrk run (9 runs; total about 2 minutes at 10)
#   WRK_THREADS=1      wrk threads, the same for every target
#   IDLE_CONNS=10000   idle keep-alive connections for the RSS test (0 skips it)
#   NETWORKS="host bridge"  replica networks to compare ("" skips that part; needs the engine
#                      and the image)
#   STOKE_HELLO_IMAGE  the example image for it (default stoke-hello:1)
#   ACT_WORKERS=1      the activator's --workers; 2 or more shows what the workers' shared
#                      counters (replica slots, queue, connections: activator/shared.h) cost
#                      when the loops contend for them
#   STOKE_BUILD_DIR    use the stoke-activator already built there; unset: configure and
#                      build <repo>/build (RelWithDebInfo) first
#   KEEP_TMP=1         keep the temp dir (configs, logs) for inspection
#
# Needs nginx (nginx-light) and wrk; when missing they are installed (as root) with apt-get,
# like deploy/install-deps.sh does, or the script says what to install.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=${CONNS:-"10 50 200"}
DURATION=${DURATION:-10}
WRK_THREADS=${WRK_THREADS:-1}
IDLE_CONNS=${IDLE_CONNS:-10000}
NETWORKS=${NETWORKS-"host bridge"}
HELLO_IMAGE=${STOKE_HELLO_IMAGE:-stoke-hello:1}
ACT_WORKERS=${ACT_WORKERS:-1}
BODY='hello, world\n' # nginx `return` text; 13 bytes on the wire

say() { printf '%s\n' "$*"; }
die() { printf 'bench/proxy.sh: error: %s\n' "$*" >&2; exit 1; }

# The exact command that reproduces this run, first.
say "# stoke proxy benchmark"
say
say '```'
say "CONNS=\"$CONNS\" DURATION=$DURATION WRK_THREADS=$WRK_THREADS IDLE_CONNS=$IDLE_CONNS NETWORKS=\"$NETWORKS\" ACT_WORKERS=$ACT_WORKERS${STOKE_BUILD_DIR:+ STOKE_BUILD_DIR=$STOKE_BUILD_DIR} bench/proxy.sh"
say '```'
say

for v in "$DURATION" "$WRK_THREADS" "$IDLE_CONNS" "$ACT_WORKERS"; do
    case $v in '' | *[!0-9]*) die "DURATION, WRK_THREADS, IDLE_CONNS and ACT_WORKERS must be integers" ;; esac
done
for c in $CONNS; do
    case $c in '' | *[!0-9]*) die "CONNS must be a list of integers, got '$c'" ;; esac
    [ "$c" -ge "$WRK_THREADS" ] || die "each connection count must be >= WRK_THREADS ($WRK_THREADS)"
done

# --- tools -----------------------------------------------------------------------------
missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
if [ -n "$missing" ]; then
    [ "$(id -u)" -eq 0 ] || die "missing:$missing; install with: apt-get install -y --no-install-recommends$missing"
    say "installing:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || die "apt-get update failed"
    # shellcheck disable=SC2086 # word splitting intended
    apt-get install -y -q --no-install-recommends $missing >&2 || die "apt-get install failed"
fi
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

# --- build -----------------------------------------------------------------------------
if [ -n "${STOKE_BUILD_DIR:-}" ]; then
    BUILD=$STOKE_BUILD_DIR
else
    BUILD=$ROOT/build
    say "building stoke in $BUILD" >&2
    cmake -S "$ROOT" -B "$BUILD" >&2 || die "cmake configure failed"
    cmake --build "$BUILD" -j"$(nproc)" >&2 || die "build failed"
fi
ACTIVATOR=$BUILD/stoke-activator
[ -x "$ACTIVATOR" ] || die "$ACTIVATOR not found (build first, or unset STOKE_BUILD_DIR)"

# --- file descriptors: 10,000 idle connections on each side -----------------------------
need=$((IDLE_CONNS + 1024))
[ "$need" -ge 4096 ] || need=4096
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((IDLE_CONNS + 64)) ]; then
    die "ulimit -n is $nofile, too low for IDLE_CONNS=$IDLE_CONNS (raise the hard limit, or lower IDLE_CONNS)"
fi

# --- temp dir, process bookkeeping, cleanup ---------------------------------------------
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_tmp proxy

wait_http() { # URL NAME PID: until it answers 200 with the body, 10 s at most
    local url=$1 name=$2 pid=$3
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$TMP/$name.log" >&2 2>/dev/null; die "$name exited at start"; }
        if python3 - "$url" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
r = urllib.request.urlopen(sys.argv[1], timeout=1)
sys.exit(0 if r.status == 200 and r.read() == b"hello, world\n" else 1)
EOF
        sleep 0.1
    done
    tail -n 20 "$TMP/$name.log" >&2 2>/dev/null || true
    die "$name did not answer 200 on $url"
}

start_nginx() { # NAME; sets NGINX_PID
    local dir=$TMP/$1
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" 2>"$TMP/$1.log" || { cat "$TMP/$1.log" >&2; die "$1: bad nginx config"; }
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >>"$TMP/$1.log" 2>&1 &
    NGINX_PID=$!
    PIDS="$NGINX_PID $PIDS"
}
nginx_worker() { # MASTER-PID -> the (single) worker's PID
    local w
    for _ in $(seq 50); do
        w=$(awk '{print $1}' "/proc/$1/task/$1/children" 2>/dev/null)
        [ -n "$w" ] && { echo "$w"; return 0; }
        sleep 0.1
    done
    die "no nginx worker under master $1"
}
start_activator() { # sets ACT_PID
    "$ACTIVATOR" --listen "127.0.0.1:$ACT_PORT" --controller none --workers "$ACT_WORKERS" --ops-listen none \
        --route "bench=127.0.0.1:$BACKEND_PORT" $NET_ROUTES --log-level warn \
        --max-connections $((IDLE_CONNS * 2 + 1024)) --idle-timeout 5m \
        >>"$TMP/activator.log" 2>&1 &
    ACT_PID=$!
    PIDS="$ACT_PID $PIDS"
}

BACKEND_PORT=$(free_port)
NGINX_PORT=$(free_port)
ACT_PORT=$(free_port)

# The example function on each network: host (it listens on 127.0.0.1:PORT itself) and
# bridge (8080 in its own namespace, published by the engine on 127.0.0.1 only), as stoke
# runs replicas. Routes hello-host and hello-bridge on the activator.
NET_ROUTES=""
for net in $NETWORKS; do
    case $net in host | bridge) ;; *) die "NETWORKS: host and/or bridge, got '$net'" ;; esac
    port=$(free_port)
    if [ "$net" = host ]; then
        where="--network host -e PORT=$port -e BIND_ADDR=127.0.0.1"
    else
        where="-p 127.0.0.1:$port:8080"
    fi
    # shellcheck disable=SC2086 # word splitting intended
    cid=$(docker run -d --label io.stoke.bench=proxy-$$ --cap-drop ALL \
        --security-opt no-new-privileges $where "$HELLO_IMAGE") ||
        die "cannot run $HELLO_IMAGE on the $net network (NETWORKS=\"\" skips this part)"
    CIDS="$cid $CIDS"
    eval "NET_PORT_$net=$port NET_CID_$net=$cid"
    NET_ROUTES="$NET_ROUTES --route hello-$net=127.0.0.1:$port"
done

nginx_conf backend "$BACKEND_PORT" "        location / { return 200 \"$BODY\"; }"
nginx_conf nginx "$NGINX_PORT" "        location / {
            proxy_pass http://bench_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
        }" "    upstream bench_backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }"

start_nginx backend
BACKEND_PID=$NGINX_PID
start_nginx nginx
PROXY_PID=$NGINX_PID
start_activator

URL_DIRECT="http://127.0.0.1:$BACKEND_PORT/"
URL_NGINX="http://127.0.0.1:$NGINX_PORT/"
URL_ACT="http://127.0.0.1:$ACT_PORT/fn/bench/"
wait_http "$URL_DIRECT" backend "$BACKEND_PID"
wait_http "$URL_NGINX" nginx "$PROXY_PID"
wait_http "$URL_ACT" activator "$ACT_PID"
BACKEND_WORKER=$(nginx_worker "$BACKEND_PID")
PROXY_WORKER=$(nginx_worker "$PROXY_PID")

# --- environment ---------------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
rev=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
say "- machine: $(nproc) cores (${cpu:-unknown cpu}), $(uname -sr); stoke $rev"
say "- $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}'), wrk -t$WRK_THREADS -d${DURATION}s --latency"
say "- backend: nginx, 1 worker, \`return 200\` of 13 bytes, keep-alive; nginx proxy: 1 worker, upstream keepalive 256 (the activator's pool cap);"
say "  activator: $ACT_WORKERS event loop(s) (--workers), --controller none, path route /fn/bench/"
say "- all of wrk, the proxy and the backend share the $(nproc) cores: through a proxy three busy"
say "  processes compete for them, so these are relative numbers, not a proxy's ceiling"
say

# --- throughput and latency ----------------------------------------------------------------
cat >"$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("WRKRESULT %.1f %d %d %d %d %d\n",
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99),
      summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

fmt_ms() { awk -v us="$1" 'BEGIN { printf "%.2f ms", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }

cpu_us() { # PID -> "user system" CPU time in µs (fields 14 and 15, after the ")" of comm)
    sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f %.0f\n", $12 * 1e6 / hz, $13 * 1e6 / hz}'
}

# The user + system CPU of this shell's children that have ended (wrk among them): the
# `times` builtin into a file (in this shell: a subshell's would count from 0), then its
# second line in µs.
save_times() { times >"$TMP/times.$1"; }
times_us() {
    awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
                   printf "%.0f", t * 1e6 }' "$TMP/times.$1"
}

per_req() { # µs REQUESTS -> µs per request
    awk -v us="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", us / n; else print "-" }'
}

# wrk_run NAME URL CONNS CPU-PID -> sets RPS P50 P99 ERRS (status = non-2xx/3xx; socket =
# connect, read, write, timeout) and, per request: CPU_US, CPU_USER_US and CPU_SYS_US (the
# serving process, user + system, each), BACK_US (the nginx backend's worker) and WRK_US
# (wrk itself)
wrk_run() {
    local out line pu0 ps0 pu1 ps1 bu0 bs0 bu1 bs1
    read -r pu0 ps0 < <(cpu_us "$4")
    read -r bu0 bs0 < <(cpu_us "$BACKEND_WORKER")
    save_times 0
    out=$(wrk -t"$WRK_THREADS" -c"$3" -d"${DURATION}s" --latency -s "$TMP/report.lua" "$2" 2>&1) ||
        { printf '%s\n' "$out" >&2; die "wrk failed against $1"; }
    save_times 1
    read -r pu1 ps1 < <(cpu_us "$4")
    read -r bu1 bs1 < <(cpu_us "$BACKEND_WORKER")
    printf '%s\n' "$out" >>"$TMP/wrk.log"
    line=$(printf '%s\n' "$out" | awk '/^WRKRESULT/ {print; exit}')
    [ -n "$line" ] || { printf '%s\n' "$out" >&2; die "no result from wrk against $1"; }
    # shellcheck disable=SC2086
    set -- $line
    RPS=$2 P50=$3 P99=$4 ERRS="$6 + $7"
    [ "$6" = 0 ] && [ "$7" = 0 ] && ERRS=0
    CPU_USER_US=$(per_req $((pu1 - pu0)) "$5")
    CPU_SYS_US=$(per_req $((ps1 - ps0)) "$5")
    CPU_US=$(per_req $((pu1 - pu0 + ps1 - ps0)) "$5")
    BACK_US=$(per_req $((bu1 - bu0 + bs1 - bs0)) "$5")
    WRK_US=$(per_req $(($(times_us 1) - $(times_us 0))) "$5")
    kill -0 "$ACT_PID" 2>/dev/null || die "activator died during the run (see $TMP/activator.log)"
}

# Short warm-up of each target (connections opened, caches and pools filled).
for u in "$URL_DIRECT" "$URL_NGINX" "$URL_ACT"; do
    wrk -t1 -c10 -d1s "$u" >/dev/null 2>&1 || true
done

say "## Throughput and latency"
say
say "| target | connections | requests/s | p50 | p99 | errors (non-2xx + socket) | CPU µs/req |"
say "|---|---:|---:|---:|---:|---:|---:|"
RATIOS="" BUDGET="" BOUNDS=""
# budget_row TARGET CONNS RPS WRK BACKEND PROXY-USER PROXY-SYS -> a row of the CPU table: µs per
# request of each process, their sum, the requests/s 2 cores allow at that sum, and how busy
# the cores were
budget_row() {
    awk -v t="$1" -v c="$2" -v r="$3" -v w="$4" -v b="$5" -v u="$6" -v k="$7" -v n="$(nproc)" 'BEGIN {
        sum = w + b + u + k
        p = t == "direct" ? "-" : sprintf("%.1f (%.1f + %.1f)", u + k, u, k)
        printf "| %s | %d | %.0f | %.1f | %.1f | %s | %.1f | %.0f | %.0f %% |", t, c, r, w, b, p, sum,
            n * 1e6 / sum, r * sum / (n * 1e4) }'
}
for c in $CONNS; do
    wrk_run direct "$URL_DIRECT" "$c" "$BACKEND_WORKER"
    d_rps=$RPS d_p99=$P99
    say "| direct (backend) | $c | $(printf '%.0f' "$RPS") | $(fmt_ms "$P50") | $(fmt_ms "$P99") | $ERRS | $CPU_US |"
    BUDGET="$BUDGET$(budget_row direct "$c" "$RPS" "$WRK_US" "$BACK_US" 0 0)
"
    wrk_run nginx "$URL_NGINX" "$c" "$PROXY_WORKER"
    n_rps=$RPS n_p99=$P99
    n_sum=$(awk -v a="$WRK_US" -v b="$BACK_US" -v p="$CPU_US" 'BEGIN { print a + b + p }')
    say "| nginx proxy | $c | $(printf '%.0f' "$RPS") | $(fmt_ms "$P50") | $(fmt_ms "$P99") | $ERRS | $CPU_US |"
    BUDGET="$BUDGET$(budget_row "nginx proxy" "$c" "$RPS" "$WRK_US" "$BACK_US" "$CPU_USER_US" "$CPU_SYS_US")
"
    wrk_run activator "$URL_ACT" "$c" "$ACT_PID"
    say "| stoke activator | $c | $(printf '%.0f' "$RPS") | $(fmt_ms "$P50") | $(fmt_ms "$P99") | $ERRS | $CPU_US |"
    BUDGET="$BUDGET$(budget_row "stoke activator" "$c" "$RPS" "$WRK_US" "$BACK_US" "$CPU_USER_US" "$CPU_SYS_US")
"
    RATIOS="$RATIOS| $c | $(ratio "$RPS" "$n_rps") | $(ratio "$P99" "$n_p99") | $(ratio "$RPS" "$d_rps") | $(ratio "$P99" "$d_p99") |
"
    # The most the activator could reach over nginx were its user-space CPU 0: the same
    # wrk, backend and system time against nginx's whole sum.
    BOUNDS="$BOUNDS| $c | $(awk -v n="$n_sum" -v a="$WRK_US" -v b="$BACK_US" -v k="$CPU_SYS_US" \
        'BEGIN { printf "%.1f µs | %.1f µs | %.2f×", a + b + k, n, n / (a + b + k) }') |
"
done
say
say "| connections | activator/nginx req/s | activator/nginx p99 | activator/direct req/s | activator/direct p99 |"
say "|---:|---:|---:|---:|---:|"
printf '%s' "$RATIOS"
say
say "(req/s: higher is better, goal ≥ 1.00× nginx; p99: lower is better, goal ≤ 1.00× nginx."
say "CPU µs/req: user + system CPU of the serving process alone (the backend's worker for direct,"
say "the proxy's worker for nginx, the activator) over the run, divided by the requests served;"
say "it is what a request costs the proxy, and depends less on how the 2 cores were shared.)"
say
say "## Where the CPU goes"
say
say "Per request, the CPU of every process serving it (user + system; wrk's from the shell's"
say "children times, the others' from /proc), the requests/s the $(nproc) cores allow at their sum,"
say "and how much of the cores the run used (near 100 %: CPU-bound, requests/s follows the sum):"
say
say "| target | connections | requests/s | wrk µs | backend µs | proxy µs (user + system) | sum µs | $(nproc) cores ÷ sum | cores busy |"
say "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s' "$BUDGET"
say
say "The activator's bound: with no user-space CPU at all it would still cost its system time,"
say "and wrk and the backend theirs; that sum against nginx's is the most the activator's"
say "requests/s could be over nginx's at the same core use:"
say
say "| connections | activator with 0 user-space CPU: sum | nginx: sum | at most, at nginx's core use |"
say "|---:|---:|---:|---:|"
printf '%s' "$BOUNDS"
say

# --- the replica's network: host against bridge --------------------------------------------
if [ -n "$NETWORKS" ]; then
    for net in $NETWORKS; do
        eval "port=\$NET_PORT_$net"
        for _ in $(seq 100); do
            python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1).read()" \
                "http://127.0.0.1:$port/" 2>/dev/null && break
            sleep 0.1
        done
        wrk -t1 -c10 -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
        wrk -t1 -c10 -d1s "http://127.0.0.1:$ACT_PORT/fn/hello-$net/" >/dev/null 2>&1 || true
    done
    proxies=0
    [ -z "${NET_PORT_bridge:-}" ] ||
        proxies=$(ps -eo args | grep -c "^[^ ]*docker-proxy .*-host-port $NET_PORT_bridge\b" || true)
    say "## The replica's network: host against bridge"
    say
    say "The example function ($HELLO_IMAGE, a container) on the host network and on the engine's"
    say "bridge with its port published on 127.0.0.1 (stoke's default); straight to it, and"
    say "through the activator (path route). The engine's userland proxy: $([ "$proxies" -gt 0 ] && echo "on (docker-proxy carries the published port)" || echo "off (the kernel's NAT carries it)")."
    say
    say "| path | network | connections | requests/s | p50 | p99 | errors |"
    say "|---|---|---:|---:|---:|---:|---:|"
    NRATIOS=""
    for c in $CONNS; do
        for net in $NETWORKS; do
            eval "port=\$NET_PORT_$net cid=\$NET_CID_$net"
            pid=$(docker inspect -f '{{.State.Pid}}' "$cid")
            wrk_run "direct-$net" "http://127.0.0.1:$port/" "$c" "$pid"
            eval "d_$net=$RPS"
            say "| straight to the replica | $net | $c | $(printf '%.0f' "$RPS") | $(fmt_ms "$P50") | $(fmt_ms "$P99") | $ERRS |"
            wrk_run "activator-$net" "http://127.0.0.1:$ACT_PORT/fn/hello-$net/" "$c" "$ACT_PID"
            eval "a_$net=$RPS"
            say "| through the activator | $net | $c | $(printf '%.0f' "$RPS") | $(fmt_ms "$P50") | $(fmt_ms "$P99") | $ERRS |"
        done
        if [ -n "${d_host:-}" ] && [ -n "${d_bridge:-}" ]; then
            NRATIOS="$NRATIOS| $c | $(ratio "$d_bridge" "$d_host") | $(ratio "$a_bridge" "$a_host") |
"
        fi
    done
    if [ -n "$NRATIOS" ]; then
        say
        say "| connections | bridge/host req/s, straight | bridge/host req/s, through the activator |"
        say "|---:|---:|---:|"
        printf '%s' "$NRATIOS"
    fi
    say
fi

# --- idle keep-alive connections: RSS per connection -----------------------------------------
[ "$IDLE_CONNS" -gt 0 ] || exit 0

# Holds N keep-alive connections: each connects, sends one request, reads the whole answer,
# and stays open and idle. One at a time, so the proxy needs a single upstream connection.
# Prints "ready" when all N are idle, then waits for a line on stdin (or its end) and closes.
cat >"$TMP/idle.py" <<'EOF'
import socket, sys
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode()
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(req)
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection %d closed by the proxy after %d bytes" % (i, len(buf)))
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            if not head.startswith(b"HTTP/1.1 200"):
                sys.exit("connection %d: %r" % (i, head.split(b"\r\n")[0]))
            clen = [l for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:")]
            if clen and len(body) >= int(clen[0].split(b":")[1]):
                break
            if not clen and body.endswith(b"\r\n0\r\n\r\n"):
                break
    socks.append(s)
print("ready", flush=True)
sys.stdin.readline()
# Still open? A closed connection reads EOF at once; an open idle one would block.
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
print("closed-by-proxy %d" % closed, flush=True)
EOF

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# idle_test NAME PORT PATH RSS-PID -> one table row
idle_test() {
    local name=$1 port=$2 path=$3 pid=$4 before after ready closed t0 t1
    # A request first, so the "before" includes the upstream connection and first-use buffers.
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=5).read()" \
        "http://127.0.0.1:$port$path"
    sleep 0.5
    before=$(rss_kb "$pid")
    rm -f "$TMP/idle.in"
    mkfifo "$TMP/idle.in"
    t0=$(date +%s.%N)
    python3 "$TMP/idle.py" "$port" "$IDLE_CONNS" "$path" <"$TMP/idle.in" >"$TMP/idle.out" 2>&1 &
    local ipid=$!
    PIDS="$ipid $PIDS"
    exec 9>"$TMP/idle.in" # hold the helper's stdin open
    ready=""
    for _ in $(seq 1200); do
        grep -q '^ready' "$TMP/idle.out" 2>/dev/null && { ready=1; break; }
        kill -0 "$ipid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        exec 9>&-
        cat "$TMP/idle.out" >&2
        die "$name: could not hold $IDLE_CONNS idle connections"
    fi
    t1=$(date +%s.%N)
    sleep 1
    after=$(rss_kb "$pid")
    # While they are held, one more request must still be served.
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=5).read()" \
        "http://127.0.0.1:$port$path" || die "$name: no answer with $IDLE_CONNS idle connections open"
    echo >&9
    exec 9>&-
    wait "$ipid" || true
    closed=$(awk '/^closed-by-proxy/ {print $2}' "$TMP/idle.out")
    say "| $name | $IDLE_CONNS | $((before / 1024)).$(((before % 1024) * 10 / 1024)) MiB | $((after / 1024)).$(((after % 1024) * 10 / 1024)) MiB | $(((after - before) * 1024 / IDLE_CONNS)) | $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f s", b - a}') | ${closed:-?} |"
}

# Fresh processes, so the baseline is not inflated (or the growth hidden) by the wrk runs.
stop_pid "$ACT_PID"
start_activator
wait_http "$URL_ACT" activator "$ACT_PID"
stop_pid "$PROXY_PID"
start_nginx nginx
PROXY_PID=$NGINX_PID
wait_http "$URL_NGINX" nginx "$PROXY_PID"
PROXY_WORKER=$(nginx_worker "$PROXY_PID")

say "## $IDLE_CONNS idle keep-alive client connections"
say
say "Each connection sends one GET, reads the 200, and stays open idle; VmRSS of the activator"
say "(one process) and of the nginx proxy's worker, before and 1 s after all are open. nginx"
say "allocates and initialises its connection and event structures for all worker_connections"
say "($((IDLE_CONNS * 2 + 2048)) here) at start, so they are in its \"before\" (a few hundred bytes each);"
say "its bytes per connection count only what an open connection adds on top of them."
say
say "| proxy | idle connections | VmRSS before | VmRSS after | bytes per connection | time to open | closed by proxy |"
say "|---|---:|---:|---:|---:|---:|---:|"
idle_test "stoke activator" "$ACT_PORT" /fn/bench/ "$ACT_PID"
idle_test "nginx proxy (worker)" "$NGINX_PORT" / "$PROXY_WORKER"
say
kill -0 "$ACT_PID" 2>/dev/null || die "activator died during the idle test (see $TMP/activator.log)"
