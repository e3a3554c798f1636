#!/bin/sh
# Builds the example function image (default stoke-hello:1) FROM scratch with no registry and
# no BuildKit: the static binary is packed into a one-file root filesystem and imported with
# `docker import`, given the same config as deploy/examples/hello/Dockerfile. Works with
# Debian's docker CLI 20.10 and with newer CLIs talking to a 20.10 engine.
#
# Usage: build-example.sh [IMAGE [BINARY]]
#   IMAGE   image name (env STOKE_HELLO_IMAGE; default stoke-hello:1)
#   BINARY  a static stoke-hello binary to use (env STOKE_HELLO_BIN)
# Env: STOKE_BUILD_DIR  a CMake build dir: its stoke-hello target is built and used;
#      CC (default cc), DOCKER (default docker), DOCKER_HOST as usual.
# Without BINARY or STOKE_BUILD_DIR, hello.c is compiled with $CC -static -O2.
#
# The image is labelled with the binary's sha256; when the image already carries the same
# binary nothing is rebuilt. A replaced image is removed when nothing else uses it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$here/examples/hello/hello.c
image=${1:-${STOKE_HELLO_IMAGE:-stoke-hello:1}}
bin=${2:-${STOKE_HELLO_BIN:-}}
docker=${DOCKER:-docker}
label=dev.stoke.hello.binary-sha256

say() { printf 'build-example: %s\n' "$*"; }
die() { printf 'build-example: error: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

if [ -z "$bin" ] && [ -n "${STOKE_BUILD_DIR:-}" ]; then
    cmake --build "$STOKE_BUILD_DIR" --target stoke-hello >/dev/null ||
        die "cannot build stoke-hello in $STOKE_BUILD_DIR"
    bin=$STOKE_BUILD_DIR/stoke-hello
fi
if [ -z "$bin" ]; then
    ${CC:-cc} -std=c11 -O2 -static -Wall -Wextra -Werror -Wshadow -Wformat=2 \
        -o "$tmp/hello" "$src" || die "cannot compile $src"
    bin=$tmp/hello
fi
[ -f "$bin" ] || die "no binary at $bin"
# A FROM scratch image has no dynamic loader: refuse a dynamically linked binary.
if readelf -l "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "$bin is dynamically linked; build it with -static"
fi

sum=$(sha256sum "$bin" | cut -d' ' -f1)
have=$("$docker" image inspect -f "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null ||
    true)
if [ "$have" = "$sum" ]; then
    say "$image is up to date (binary ${sum%"${sum#????????????}"})"
    exit 0
fi
old=$("$docker" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)

mkdir "$tmp/root"
cp "$bin" "$tmp/root/hello"
chmod 0755 "$tmp/root/hello"
tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$tmp/root" -cf "$tmp/rootfs.tar" hello

"$docker" import \
    --change 'ENTRYPOINT ["/hello"]' \
    --change 'ENV PORT=8080' \
    --change 'EXPOSE 8080/tcp' \
    --change 'USER 65534:65534' \
    --change "LABEL $label=$sum" \
    --message "stoke example function (deploy/examples/hello)" \
    "$tmp/rootfs.tar" "$image" >/dev/null || die "docker import failed"

new=$("$docker" image inspect -f '{{.Id}}' "$image")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    # Fails, harmlessly, while containers or other tags still use the old image.
    "$docker" image rm "$old" >/dev/null 2>&1 || true
fi
size=$("$docker" image inspect -f '{{.Size}}' "$image")
say "built $image (${new#sha256:}, $size bytes, binary ${sum%"${sum#????????????}"})"
