#!/bin/bash
# Instructions per request: the activator under valgrind's callgrind, proxying a fixed
# number of keep-alive requests to a local upstream; nginx as a reverse proxy the same way,
# in the same run, for reference.
#
#   upstream   nginx, one worker, `return 200 "hello, world\n"` (13 bytes), keep-alive
#   activator  build/stoke-activator --workers 1 --controller none --route bench=upstream,
#              under callgrind
#   nginx      nginx in one process (master_process off), proxy_pass to the upstream with
#              `keepalive 256`, under callgrind
#
# A client (python3, one thread) keeps CONNS keep-alive connections and sends REQUESTS
# requests over them in all, one at a time per connection, as wrk sends them
# ("GET <path> HTTP/1.1" and a Host header). The first WARMUP requests are not counted:
# after them callgrind's counters are zeroed (callgrind_control -z), and dumped after the
# last answer (callgrind_control -d). Instructions executed (Ir, user space: the kernel's
# share of a syscall is not counted) over the counted requests give the figure per request;
# unlike times, it does not depend on what else runs on the machine. The functions with the
# most instructions of the activator's window follow (callgrind_annotate, exclusive).
#
# Env:
#   REQUESTS=20000   counted requests
#   WARMUP=500       requests before the counters are zeroed
#   CONNS=10         client connections
#   TOP=25           functions listed for the activator (0: none)
#   NGINX=1          0 skips nginx
#   STOKE_BUILD_DIR  use the stoke-activator already built there; unset: configure and
#                    build <repo>/build (RelWithDebInfo) first
#   KEEP_TMP=1       keep the temp dir (callgrind files, logs)
#
# Needs valgrind, nginx (nginx-light) and python3; every process it started is stopped on exit
# (by its recorded PID); everything listens on 127.0.0.1.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-500}
CONNS=${CONNS:-10}
TOP=${TOP:-25}
NGINX_TOO=${NGINX:-1}

say() { printf '%s\n' "$*"; }
die() { printf 'bench/profile.sh: error: %s\n' "$*" >&2; exit 1; }

for v in "$REQUESTS" "$WARMUP" "$CONNS" "$TOP" "$NGINX_TOO"; do
    case $v in '' | *[!0-9]*) die "REQUESTS, WARMUP, CONNS, TOP and NGINX must be integers" ;; esac
done
[ "$REQUESTS" -gt 0 ] && [ "$CONNS" -gt 0 ] || die "REQUESTS and CONNS must be > 0"

for t in valgrind callgrind_control callgrind_annotate python3; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (apt-get install valgrind python3)"
done
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not found (apt-get install nginx-light)"

if [ -n "${STOKE_BUILD_DIR:-}" ]; then
    BUILD=$STOKE_BUILD_DIR
else
    BUILD=$ROOT/build
    say "building stoke in $BUILD" >&2
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2 || die "cmake configure failed"
    cmake --build "$BUILD" -j"$(nproc)" >&2 || die "build failed"
fi
ACTIVATOR=$BUILD/stoke-activator
[ -x "$ACTIVATOR" ] || die "$ACTIVATOR not found (build first, or unset STOKE_BUILD_DIR)"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_tmp profile

UP_PORT=$(free_port)
ACT_PORT=$(free_port)
NGX_PORT=$(free_port)

nginx_conf upstream "$UP_PORT" '        location / { return 200 "hello, world\n"; }'
"$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -g 'daemon off;' >"$TMP/upstream.log" 2>&1 &
PIDS="$! $PIDS"

# The load: exactly N requests over C keep-alive connections, answers read whole.
cat >"$TMP/load.py" <<'EOF'
import selectors, socket, sys
port, path, n, conns = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode()
sel = selectors.DefaultSelector()
sent = done = 0
state = {}
for _ in range(min(conns, n)):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setblocking(False)
    s.sendall(req)
    sent += 1
    state[s] = b""
    sel.register(s, selectors.EVENT_READ)
while done < n:
    events = sel.select(timeout=60)
    if not events:
        sys.exit("no answer for 60 s (%d of %d done)" % (done, n))
    for key, _ in events:
        s = key.fileobj
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed by the proxy")
        buf = state[s] + chunk
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                break
            if not head.startswith(b"HTTP/1.1 200"):
                sys.exit("unexpected answer: %r" % head.split(b"\r\n")[0])
            clen = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    clen = int(v)
            if len(rest) < clen:
                break
            buf = rest[clen:]
            done += 1
            if sent < n:
                s.sendall(req)
                sent += 1
        state[s] = buf
print(done)
EOF

wait_ok() { # PORT PATH PID NAME
    for _ in $(seq 600); do
        kill -0 "$3" 2>/dev/null || { tail -n 20 "$TMP/$4.log" >&2; die "$4 exited at start"; }
        python3 "$TMP/load.py" "$1" "$2" 1 1 >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -n 20 "$TMP/$4.log" >&2
    die "$4 did not answer on 127.0.0.1:$1$2"
}

# profile NAME PORT PATH PID -> sets IR (instructions per request) and FILE (the dump)
profile() {
    local name=$1 port=$2 path=$3 pid=$4 total
    wait_ok "$port" "$path" "$pid" "$name"
    [ "$WARMUP" -eq 0 ] || python3 "$TMP/load.py" "$port" "$path" "$WARMUP" "$CONNS" >/dev/null ||
        die "$name: warm-up failed"
    callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control -z $pid failed"
    python3 "$TMP/load.py" "$port" "$path" "$REQUESTS" "$CONNS" >/dev/null || die "$name: load failed"
    rm -f "$TMP/$name.cg".*
    callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d $pid failed"
    FILE=$(ls -t "$TMP/$name.cg".*.* 2>/dev/null | head -n1 || true) # <pid>.<dump number>
    [ -n "$FILE" ] || die "$name: callgrind wrote no dump"
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$FILE")
    [ -n "$total" ] || die "$name: no totals in $FILE"
    IR=$((total / REQUESTS))
}

VG="valgrind --tool=callgrind --dump-instr=no --compress-strings=no"
VG_ACT="$VG --callgrind-out-file=$TMP/activator.cg.%p"
# shellcheck disable=SC2086 # word splitting intended
$VG_ACT "$ACTIVATOR" --listen "127.0.0.1:$ACT_PORT" --controller none --workers 1 --ops-listen none \
    --route "bench=127.0.0.1:$UP_PORT" --log-level warn >"$TMP/activator.log" 2>&1 &
ACT_PID=$!
PIDS="$ACT_PID $PIDS"
profile activator "$ACT_PORT" /fn/bench/ "$ACT_PID"
ACT_IR=$IR ACT_FILE=$FILE
stop_pid "$ACT_PID"

NGX_IR=""
if [ "$NGINX_TOO" = 1 ]; then
    nginx_conf proxy "$NGX_PORT" "        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
        }" \
        "    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }" \
        "master_process off;"
    # shellcheck disable=SC2086
    $VG --callgrind-out-file="$TMP/nginx.cg.%p" "$NGINX" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" \
        -g 'daemon off;' >"$TMP/nginx.log" 2>&1 &
    NGX_PID=$!
    PIDS="$NGX_PID $PIDS"
    profile nginx "$NGX_PORT" / "$NGX_PID"
    NGX_IR=$IR
    stop_pid "$NGX_PID"
fi

rev=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
say "# instructions per request (callgrind)"
say
say '```'
say "REQUESTS=$REQUESTS WARMUP=$WARMUP CONNS=$CONNS NGINX=$NGINX_TOO${STOKE_BUILD_DIR:+ STOKE_BUILD_DIR=$STOKE_BUILD_DIR} bench/profile.sh"
say '```'
say
say "- stoke-activator of $BUILD (the tree: $rev); $(valgrind --version); $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
say "- $REQUESTS keep-alive GETs over $CONNS connections after $WARMUP not counted; upstream: nginx, 13-byte body"
say
say "| proxy | instructions per request (user space) |"
say "|---|---:|"
say "| stoke activator | $ACT_IR |"
[ -z "$NGX_IR" ] || say "| nginx proxy | $NGX_IR |"
[ -z "$NGX_IR" ] || say "| activator/nginx | $(awk -v a="$ACT_IR" -v b="$NGX_IR" 'BEGIN { printf "%.2f×", a / b }') |"
if [ "$TOP" -gt 0 ]; then
    say
    say "The activator's functions, instructions per request (exclusive):"
    say
    say '```'
    callgrind_annotate --threshold=100 "$ACT_FILE" 2>/dev/null |
        awk -v n="$REQUESTS" -v top="$TOP" '
            /^-+$/ { sep++; next }
            # (functions on the stack when the counters were dumped show the whole
            # window: the thread start and the loop; left out)
            sep >= 3 && $1 ~ /^[0-9,]+$/ && $2 != "(100.0%)" {
                v = $1; gsub(",", "", v)
                sub(/^ *[0-9,]+ +(\([ 0-9.%]+\) +)?/, "")
                sub(/ \[.*\]$/, "")
                printf "%8.1f  %s\n", v / n, $0
                if (++k >= top) exit
            }'
    say '```'
fi
