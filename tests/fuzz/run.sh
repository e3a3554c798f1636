#!/bin/sh
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for
# STOKE_FUZZ_SECONDS (default 30; twice that for fuzz_proxy, the activator's
# request path) from its committed seed corpus
# (tests/fuzz/corpus/<name>), with its dictionary (tests/fuzz/<name>.dict)
# when there is one. New inputs go to a scratch directory; a crash
# leaves its input in the build directory and fails the run.
#
# Usage: tests/fuzz/run.sh [target...]     (default: all)
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${STOKE_FUZZ_BUILD_DIR:-$root/build-fuzz}
seconds=${STOKE_FUZZ_SECONDS:-30}
targets=${*:-"spec routes engine proxy httpd kube cron"}

CC=clang cmake -S "$root" -B "$build" -DSTOKE_FUZZ=ON -DSTOKE_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
for t in $targets; do
    cmake --build "$build" -j "$(nproc)" --target "fuzz_$t" >/dev/null
done

# Findings of an earlier run would be taken for this run's.
find "$build/tests/fuzz" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o \
    -name 'oom-*' \) -delete
for t in $targets; do
    work=$(mktemp -d)
    mkdir "$work/new"
    secs=$seconds
    [ "$t" = proxy ] && secs=$((seconds * 2))
    echo "fuzz: fuzz_$t for ${secs}s"
    dict=
    [ -f "$root/tests/fuzz/$t.dict" ] && dict="-dict=$root/tests/fuzz/$t.dict"
    # The fuzzer's own exit status decides, not what its output shows: a
    # target that fails to start, or stops early, fails the run.
    status=0
    (cd "$build/tests/fuzz" && "./fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 $dict "$work/new" "$root/tests/fuzz/corpus/$t" >"$work/log" 2>&1) ||
        status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)|ERROR|SUMMARY' \
        "$work/log" || true # for the reader only
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
    if [ "$status" -ne 0 ] || [ "${runs:-0}" -eq 0 ]; then
        echo "fuzz: fuzz_$t exited with status $status after ${runs:-no} runs:" >&2
        tail -n 30 "$work/log" >&2
        rm -rf "$work"
        exit 1
    fi
    rm -rf "$work"
    # libFuzzer leaves crash-*/leak-*/timeout-* files on a finding.
    if [ -n "$(find "$build/tests/fuzz" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o \
        -name 'timeout-*' -o -name 'oom-*' \) -print)" ]; then
        echo "fuzz: fuzz_$t found a problem; inputs in $build/tests/fuzz" >&2
        exit 1
    fi
done
echo "fuzz: no findings"
