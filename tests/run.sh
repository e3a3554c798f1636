#!/bin/sh
# Runs every stoke test: installs what is missing (deploy/install-deps.sh,
# which also starts dockerd when none answers), builds with
# -Wall -Wextra -Werror, builds the example image, then runs the unit,
# integration (real engine) and end-to-end suites through ctest.
# Whatever happens, every process and container the tests started is gone
# at the end.
#
# With no arguments: every test on a plain build (unit tests under valgrind
# too), each libFuzzer target for 30 s (fuzz_proxy 60 s; tests/fuzz/run.sh), then every test
# again on an ASan + UBSan build (build-asan/).
#
# Usage: tests/run.sh [ctest args...]     e.g. tests/run.sh -L unit (plain only)
# Env:   STOKE_BUILD_DIR (default build/), STOKE_SANITIZE=1 for one ASan run.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=${STOKE_BUILD_DIR:-$root/build}
sanitize=OFF
[ "${STOKE_SANITIZE:-0}" = 1 ] && sanitize=ON

"$root/deploy/install-deps.sh"

echo "run.sh: clang-format check"
(cd "$root" && git ls-files '*.c' '*.h' | xargs clang-format --dry-run --Werror)

configure() { # dir sanitize
    cmake -S "$root" -B "$1" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTOKE_SANITIZE="$2" >/dev/null
    cmake --build "$1" -j "$(nproc)"
}
configure "$build" "$sanitize"
STOKE_BUILD_DIR=$build "$root/deploy/build-example.sh" stoke-hello:1

pidfile=$(mktemp)
export STOKE_TEST_PIDFILE=$pidfile
# Names this run's e2e containers (io.stoke.instance=e2e-r<pid>-...), so the
# cleanup below leaves alone those of other runs on the same engine.
export STOKE_E2E_RUN=r$$

cleanup() {
    # Processes the harness started, should a test have been killed.
    # Only if the pid is still one of ours: pids of processes that exited
    # may have been reused.
    while read -r pid; do
        [ -r "/proc/$pid/cmdline" ] || continue
        case $(tr '\0' ' ' <"/proc/$pid/cmdline") in
        # (/tmp/stoke-de-*: e2e.test_chaos's private dockerd, containerd, shims)
        *stoke-controller* | *stoke-activator* | */tmp/stoke-de-*) kill -9 "$pid" 2>/dev/null || true ;;
        esac
    done <"$pidfile"
    rm -f "$pidfile"
    # Containers of this run: its controllers use instances
    # "e2e-$STOKE_E2E_RUN-*". The engine test labels its own with
    # io.stoke.test and a random value per run it does not export, so its
    # leftovers go whatever run left them (each lives a few seconds).
    ids=$(docker ps -aq --filter label=io.stoke.test 2>/dev/null || true)
    for id in $(docker ps -aq --filter label=io.stoke.managed=true 2>/dev/null || true); do
        case $(docker inspect -f '{{index .Config.Labels "io.stoke.instance"}}' "$id" 2>/dev/null) in
        "e2e-$STOKE_E2E_RUN-"*) ids="$ids $id" ;;
        esac
    done
    if [ -n "$(echo $ids)" ]; then
        echo "run.sh: removing leftover test containers:$ids" | tr '\n' ' '
        echo
        # shellcheck disable=SC2086
        docker rm -f $ids >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$build"
if [ $# -gt 0 ]; then
    ctest --output-on-failure "$@"
    exit
fi
# Everything on the plain build (unit tests also under valgrind), then the
# whole suite again with ASan + UBSan, so memory errors and leaks in the
# daemons fail the run too.
ctest --output-on-failure
if [ "$sanitize" = OFF ]; then
    echo "run.sh: the fuzz targets, ${STOKE_FUZZ_SECONDS:-30}s each (fuzz_proxy twice that) from their seed corpora"
    STOKE_FUZZ_BUILD_DIR=$build-fuzz "$root/tests/fuzz/run.sh"
    echo "run.sh: again with AddressSanitizer + UndefinedBehaviorSanitizer"
    configure "$build-asan" ON
    cd "$build-asan"
    # k8s.chart runs the chart's pods from stoke's image, which is made of a
    # plain build only (deploy/k8s/build-image.sh refuses a sanitizer one);
    # k8s.test_cluster runs no stoke code (it checks the test cluster itself,
    # which the plain pass did).
    ctest --output-on-failure -E '^k8s\.(chart|test_cluster)$'
fi
