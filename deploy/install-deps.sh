#!/bin/sh
# Installs what stoke needs to build, test and run on Debian 12, and makes sure a Docker
# engine answers. Run as root. Idempotent: a re-run with everything in place only checks.
#
# Env: DOCKER_HOST (unix:// sockets only are checked and started; default
#      unix:///var/run/docker.sock), STOKE_DOCKERD_WAIT (seconds, default 60).
set -eu

PACKAGES="build-essential cmake pkg-config git curl ca-certificates python3 python3-yaml
libuv1-dev libcurl4-openssl-dev libjson-c-dev libyaml-dev libcgroup-dev node-llhttp libcmocka-dev libsqlite3-dev
docker.io valgrind clang libclang-rt-14-dev clang-format wrk systemd tzdata
libhiredis-dev redis-server"
DOCKERD_LOG=/var/log/stoke-dockerd.log
WAIT=${STOKE_DOCKERD_WAIT:-60}

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"

# --- packages -------------------------------------------------------------------------
missing=""
count=0
for p in $PACKAGES; do
    count=$((count + 1))
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $p"
done
if [ -z "$missing" ]; then
    say "packages: all $count installed"
else
    say "packages: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    # shellcheck disable=SC2086 # word splitting intended
    apt-get install -y -q --no-install-recommends $PACKAGES || die "apt-get install failed"
    say "packages: done"
fi

# --- Docker engine --------------------------------------------------------------------
host=${DOCKER_HOST:-unix:///var/run/docker.sock}
case "$host" in
unix://*) sock=${host#unix://} ;;
*)
    say "engine: DOCKER_HOST=$host is not a unix socket; not checking or starting dockerd"
    exit 0
    ;;
esac

ping() { curl -sf --max-time 2 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }

if ping; then
    say "engine: answering on $sock"
    exit 0
fi

default_sock=/var/run/docker.sock
if [ "$sock" = "$default_sock" ] && pidof dockerd >/dev/null 2>&1; then
    say "engine: dockerd is running but not answering yet; waiting"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 &&
    [ "$sock" = "$default_sock" ] && systemctl start docker 2>/dev/null; then
    say "engine: started docker.service (its own options; for published ports without a"
    say "        proxy process per port set \"userland-proxy\": false in /etc/docker/daemon.json)"
else
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found (is docker.io installed?)"
    # The defaults (overlay2) are right on these machines, but for the published ports:
    # replicas live on the engine's bridge with their port published on 127.0.0.1, and
    # --userland-proxy=false has the kernel's NAT carry that traffic instead of a
    # docker-proxy process per port (about 0.93x of host networking against 0.35x with
    # the proxy; see README, Security). A socket other than the default has to be
    # named too, or the wait below could never succeed.
    set -- --userland-proxy=false
    [ "$sock" = "$default_sock" ] || set -- "$@" -H "unix://$sock"
    say "engine: starting dockerd (log: $DOCKERD_LOG)"
    setsid nohup dockerd "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi

deadline=$(($(date +%s) + WAIT))
while ! ping; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "engine: no answer on $sock after ${WAIT}s; see $DOCKERD_LOG"
    fi
    sleep 0.2
done
say "engine: answering on $sock"
