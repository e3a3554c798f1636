#!/bin/sh
# Checks the units with `systemd-analyze verify` against the binaries of a
# build: ExecStart is pointed at BUILD_DIR in a scratch copy (verify wants the
# executables to exist). Any message (unknown key, bad value) fails.
# Usage: deploy/systemd/verify.sh BUILD_DIR
set -eu
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in stoke-controller stoke-activator stoke-events; do
    sed "s|/usr/local/bin/|$build/|" "$here/$u.service" >"$tmp/$u.service"
done
out=$(systemd-analyze verify "$tmp/stoke-controller.service" "$tmp/stoke-activator.service" \
    "$tmp/stoke-events.service" 2>&1) || {
    printf '%s\n' "$out"
    exit 1
}
if [ -n "$out" ]; then
    printf '%s\n' "$out"
    exit 1
fi
echo "systemd units: verified"
