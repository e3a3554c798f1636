#!/bin/sh
# Builds stoke's own image (default stoke:<version>, the version in CMakeLists.txt) FROM scratch
# with no registry and no BuildKit, as deploy/build-example.sh does: stoke-controller,
# stoke-activator, stoke-events and stokectl from a CMake build, curl (the chart's `helm test` client), exactly
# the shared libraries they load (ldd) and the dynamic loader, and the CA certificates, packed
# into one root filesystem and imported with `docker import`. It runs as 65532:65532; the chart
# gives each daemon its command.
#
# Usage: build-image.sh [IMAGE]
#   IMAGE   image name (env STOKE_IMAGE; default stoke:<version>)
# Env: STOKE_BUILD_DIR  the CMake build dir (default ./build); its four programs are built
#      first. A sanitizer build is refused (its runtime is not for shipping).
#      DOCKER (default docker), DOCKER_HOST as usual.
#
# To run it on a cluster, push it to a registry the nodes pull from, e.g.
#   docker tag stoke:0.1.0 registry.example.com/stoke:0.1.0
#   docker push registry.example.com/stoke:0.1.0
#   helm install stoke charts/stoke --set image.repository=registry.example.com/stoke
# (or `kind load docker-image stoke:0.1.0`, `k3s ctr images import`, ... for local clusters).
#
# The image is labelled with a hash of everything in it; when the image already has the same
# contents nothing is rebuilt. A replaced image is removed when nothing else uses it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${STOKE_BUILD_DIR:-$top/build}
docker=${DOCKER:-docker}
label=dev.stoke.image.contents-sha256
uid=65532

say() { printf 'build-image: %s\n' "$*"; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

version=$(sed -n 's/^project(stoke VERSION \([0-9.]*\).*/\1/p' "$top/CMakeLists.txt")
[ -n "$version" ] || die "no project VERSION in $top/CMakeLists.txt"
image=${1:-${STOKE_IMAGE:-stoke:$version}}

[ -f "$build/CMakeCache.txt" ] || die "$build is not a CMake build dir (set STOKE_BUILD_DIR)"
if grep -q '^STOKE_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then
    die "$build is a sanitizer build; use a plain one"
fi
cmake --build "$build" --target stoke-controller stoke-activator stoke-events stokectl >/dev/null ||
    die "cannot build the programs in $build"
curl_bin=$(command -v curl) || die "no curl to put in the image (apt-get install curl)"
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || die "no $ca (apt-get install ca-certificates)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
root=$tmp/root
mkdir -p "$root/usr/bin" "$root/etc/ssl/certs" "$root/etc/stoke/functions" "$root/tmp" \
    "$root/run/stoke" "$root/run/stoke-events" "$root/var/lib/stoke-events"
chmod 1777 "$root/tmp"

for p in stoke-controller stoke-activator stoke-events stokectl; do
    cp "$build/$p" "$root/usr/bin/$p"
done
cp "$curl_bin" "$root/usr/bin/curl"
strip --strip-debug "$root"/usr/bin/stoke-* "$root/usr/bin/stokectl"
chmod 0755 "$root"/usr/bin/*

# Every library the programs load, at the path the loader finds it (ldd resolves the whole
# tree), and the loader itself; symlinks resolved, so each is one regular file.
for p in "$root"/usr/bin/*; do
    ldd "$p" || die "ldd $p failed"
done | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u >"$tmp/libs"
[ -s "$tmp/libs" ] || die "ldd found no libraries"
while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done <"$tmp/libs"
# Debian's /lib and /lib64 are symlinks into /usr: keep the paths the programs ask for.
cp "$ca" "$root$ca"
printf 'root:x:0:0:root:/:/sbin/nologin\nstoke:x:%d:%d:stoke:/:/sbin/nologin\n' $uid $uid \
    >"$root/etc/passwd"
printf 'root:x:0:\nstoke:x:%d:\n' $uid >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
# Every address /etc/hosts gives a name, not only the first (glibc's default without this file
# is the first): where names are written there (a headless Service on stoke's test cluster)
# the activator tries every controller in turn, as it does with cluster DNS's answers.
printf 'multi on\n' >"$root/etc/host.conf"

# The contents' hash: names, modes and bytes, in a fixed order.
sum=$(cd "$root" && find . -type f | LC_ALL=C sort | while read -r f; do
    printf '%s %s ' "$f" "$(stat -c %a "$f")"
    sha256sum <"$f"
done | sha256sum | cut -d' ' -f1)
have=$("$docker" image inspect -f "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null ||
    true)
if [ "$have" = "$sum" ]; then
    say "$image is up to date (contents ${sum%"${sum#????????????}"})"
    exit 0
fi
old=$("$docker" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)

tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$root" -cf "$tmp/rootfs.tar" .
"$docker" import \
    --change 'CMD ["/usr/bin/stoke-controller", "--help"]' \
    --change "USER $uid:$uid" \
    --change 'EXPOSE 8080/tcp 8091/tcp 9000/tcp 9091/tcp 9092/tcp 9093/tcp' \
    --change "LABEL $label=$sum" \
    --change "LABEL org.opencontainers.image.title=stoke" \
    --change "LABEL org.opencontainers.image.version=$version" \
    --message "stoke $version: the daemons and stokectl (deploy/k8s/build-image.sh)" \
    "$tmp/rootfs.tar" "$image" >/dev/null || die "docker import failed"

new=$("$docker" image inspect -f '{{.Id}}' "$image")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    "$docker" image rm "$old" >/dev/null 2>&1 || true
fi
size=$("$docker" image inspect -f '{{.Size}}' "$image")
say "built $image (${new#sha256:}, $size bytes, $(wc -l <"$tmp/libs") libraries)"
