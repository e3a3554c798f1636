#!/usr/bin/env bash
# Builds the real Kubernetes parts the k8s tests run, from source, at pinned versions:
# kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes), etcd
# (go.etcd.io/etcd/server/v3) and helm (helm.sh/helm/v3). Nothing of theirs is committed: the
# modules come from the Go module proxy into a throwaway module under the cache root, and the
# binaries land in ${STOKE_K8S_CACHE:-/var/cache/stoke-k8s}/<key>/bin/. A second run with the
# binaries present takes well under a second; GOCACHE and GOMODCACHE live under the same root,
# so a rebuild after the bin/ directory went away is incremental.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io staging module
# with ./staging/src/..., and replace directives only apply in the main module. The throwaway
# module requires it and replaces each staging module with its published v0.x of the same
# minor (v1.37.2 -> v0.37.2) instead.
#
# Usage: tests/k8s/build.sh            build what is missing, print the bin directory last
#        tests/k8s/build.sh --bindir   print the bin directory only (builds nothing)
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
HELM_VERSION=v3.21.4
GO=${GO:-/usr/local/go/bin/go}

STAGING_VERSION="v0.${K8S_VERSION#v1.}"
CACHE=${STOKE_K8S_CACHE:-/var/cache/stoke-k8s}
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
ROOT="$CACHE/$KEY"
BIN="$ROOT/bin"

if [ "${1:-}" = --bindir ]; then
	echo "$BIN"
	exit 0
fi

have_all() {
	local b
	for b in kube-apiserver etcd kube-controller-manager kubectl helm; do
		[ -x "$BIN/$b" ] || return 1
	done
}
if have_all; then
	echo "$BIN"
	exit 0
fi

mkdir -p "$BIN" "$ROOT/src"
# One build at a time per cache key (another shell or CI job may be building the same one).
exec 9>"$ROOT/.lock"
flock 9
if have_all; then
	echo "$BIN"
	exit 0
fi

export GOCACHE="$CACHE/gocache" GOMODCACHE="$CACHE/gomod"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
# The machine is shared: two packages compiled at once at most, at low priority.
export GOMAXPROCS=${GOMAXPROCS:-2}
GOBUILD=(nice -n 15 "$GO" build -p 2 -trimpath)

started=$(date +%s)
log() { echo "build.sh: [$(($(date +%s) - started))s] $*" >&2; }

# Writes a throwaway module in $1 named $2 that requires $3 at $4 (plus extra lines from stdin).
module() {
	local dir=$1
	mkdir -p "$dir"
	{
		echo "module $2"
		echo
		echo "go 1.26.0"
		echo
		echo "require $3 $4"
		cat
	} >"$dir/go.mod.new"
	# Keep go.sum and an unchanged go.mod: a rebuild then resolves nothing again.
	if ! cmp -s "$dir/go.mod.new" "$dir/go.mod.in" 2>/dev/null; then
		cp "$dir/go.mod.new" "$dir/go.mod"
		mv "$dir/go.mod.new" "$dir/go.mod.in"
		rm -f "$dir/go.sum"
	else
		rm -f "$dir/go.mod.new"
	fi
}

# install NAME DIR PKG LDFLAGS: builds PKG in module DIR to a temporary name, then moves it into
# bin/ so that a binary seen there is always complete.
install_bin() {
	local name=$1 dir=$2 pkg=$3 ldflags=$4 t0
	if [ -x "$BIN/$name" ]; then
		return 0
	fi
	t0=$(date +%s)
	log "building $name ($pkg)"
	(cd "$dir" && "${GOBUILD[@]}" -ldflags "$ldflags" -o "$BIN/.$name.tmp" "$pkg")
	mv -f "$BIN/.$name.tmp" "$BIN/$name"
	log "built $name in $(($(date +%s) - t0))s"
}

# --- Kubernetes --------------------------------------------------------------------------
K8S_DIR="$ROOT/src/kubernetes"
module "$K8S_DIR" stoke-k8s-build/kubernetes k8s.io/kubernetes "$K8S_VERSION" <<EOM

replace (
$(for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider \
	cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api \
	cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice \
	externaljwt kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl \
	kubelet metrics mount-utils pod-security-admission sample-apiserver streaming; do
	echo "	k8s.io/$m => k8s.io/$m $STAGING_VERSION"
done)
)
EOM
minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
install_bin kube-apiserver "$K8S_DIR" k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"

# --- etcd ----------------------------------------------------------------------------------
ETCD_DIR="$ROOT/src/etcd"
module "$ETCD_DIR" stoke-k8s-build/etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" </dev/null
install_bin etcd "$ETCD_DIR" go.etcd.io/etcd/server/v3 "-s -w"

install_bin kube-controller-manager "$K8S_DIR" k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
install_bin kubectl "$K8S_DIR" k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"

# --- helm ----------------------------------------------------------------------------------
HELM_DIR="$ROOT/src/helm"
module "$HELM_DIR" stoke-k8s-build/helm helm.sh/helm/v3 "$HELM_VERSION" </dev/null
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
if ! [ -x "$BIN/helm" ]; then
	# helm's own Makefile stamps the Kubernetes version its client-go is of into the lint rules
	# and the default capabilities `helm template` renders with; do the same.
	cgo=$(cd "$HELM_DIR" && "$GO" list -m -f '{{.Version}}' k8s.io/client-go)
	cgo_minor=${cgo#v0.}
	cgo_minor=${cgo_minor%%.*}
	for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
		helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$cgo_minor"
	done
fi
install_bin helm "$HELM_DIR" helm.sh/helm/v3/cmd/helm "$helm_ldflags"

took=$(($(date +%s) - started))
log "all built in ${took}s"
echo "$(date -u +%FT%TZ) built what was missing in ${took}s" >>"$ROOT/build-times.txt"
echo "$BIN"
