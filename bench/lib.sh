# Shell helpers the bench scripts share; sourced (bash). bench_tmp NAME makes the temp dir
# ($TMP), and from then on every process recorded in $PIDS is stopped and every container
# in $CIDS removed on exit (only what the script itself started, by its recorded ID); the
# temp dir is removed too, unless KEEP_TMP=1 or the script failed.

stop_pid() { # PID: TERM, wait up to 10 s, then KILL; only PIDs this script started
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$? pid cid
    trap - EXIT INT TERM
    for pid in $PIDS; do stop_pid "$pid"; done
    for cid in $CIDS; do docker rm -f "$cid" >/dev/null 2>&1 || true; done
    if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        printf '(temp dir with configs and logs kept: %s)\n' "$TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

bench_tmp() { # NAME
    TMP=$(mktemp -d "/tmp/stoke-bench-$1.XXXXXX")
    PIDS="" # every process this script started, stopped on exit
    CIDS="" # every container this script started, removed on exit
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# nginx: one worker, private prefix, no access log, keep-alive without a request cap (nginx
# closes a keep-alive connection after 1000 requests by default; that would make wrk
# reconnect against nginx targets only). The temp paths are set because Debian's compiled-in
# defaults point at /var/lib/nginx.
# IDLE_CONNS: connections beyond the load's it must hold (0 when unset). MAIN-EXTRA goes at the
# top level (profile.sh: "master_process off;").
nginx_conf() { # NAME PORT SERVER-BLOCK-BODY [HTTP-BLOCK-EXTRA] [MAIN-EXTRA]
    local dir=$TMP/$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
${5:-}
worker_rlimit_nofile $((${IDLE_CONNS:-0} * 2 + 4096));
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $((${IDLE_CONNS:-0} * 2 + 2048)); multi_accept off; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    server {
        listen 127.0.0.1:$2 backlog=4096;
$3
    }
${4:-}
}
EOF
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_build() { # sets STOKE_BUILD_DIR (configures and builds build/ when unset); the example image
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [ -z "${STOKE_BUILD_DIR:-}" ]; then
        cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
        cmake --build "$root/build" -j "$(nproc)" >/dev/null
        STOKE_BUILD_DIR=$root/build
    fi
    export STOKE_BUILD_DIR
    docker image inspect "${STOKE_HELLO_IMAGE:-stoke-hello:1}" >/dev/null 2>&1 || "$root/deploy/build-example.sh"
}
