#!/usr/bin/env bash
# Build the test control plane binaries (kube-apiserver, etcd, helm) from the Go module
# pinned in tools/go.mod, into a cache outside the checkout:
#
#   ${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/tools/<key>/bin/
#
# <key> hashes go.mod, go.sum, this script, the Go sources in tools/ and the Go version, so
# editing any pin gives a new directory and an unchanged tree reuses the old one (a no-op
# run takes well under a second). Binaries are built into a temporary directory that is
# renamed into place only once every binary linked, so an interrupted build leaves no
# half-filled cache behind.
#
# Usage:
#   bash tools/build.sh            build if needed; logs go to stderr
#   bash tools/build.sh --bin-dir  build if needed, then print ONLY the bin directory
#
# If KUBEBUILDER_ASSETS names a directory holding executable kube-apiserver and etcd, only
# helm is built (into .../tools/<key>/helm-only/bin) unless the full cache already exists;
# --bin-dir then prints that helm-only directory and callers must take kube-apiserver and
# etcd from KUBEBUILDER_ASSETS (tests/support/control_plane.py does).
set -euo pipefail

print_bin_dir=0
case "${1:-}" in
    --bin-dir) print_bin_dir=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

# Everything below logs to stderr so that --bin-dir's stdout is exactly one path.
exec 3>&1 1>&2

tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/tools"

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' is not on PATH; install Go >= 1.26 to build the test control plane" >&2
    exit 1
fi

cd "$tools_dir"
# The key covers every input of the build, including the toolchain that compiles it.
key="$(
    {
        cat go.mod go.sum build.sh
        find . -name '*.go' -type f | LC_ALL=C sort | xargs cat
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16
)"
key_dir="$cache_root/$key"
full_bin="$key_dir/bin"
helm_only_bin="$key_dir/helm-only/bin"

assets="${KUBEBUILDER_ASSETS:-}"
use_assets=0
if [[ -n "$assets" && -x "$assets/kube-apiserver" && -x "$assets/etcd" ]]; then
    use_assets=1
fi

if [[ -x "$full_bin/kube-apiserver" && -x "$full_bin/etcd" && -x "$full_bin/helm" ]]; then
    bin_dir="$full_bin"
elif [[ $use_assets == 1 && -x "$helm_only_bin/helm" ]]; then
    bin_dir="$helm_only_bin"
else
    mkdir -p "$key_dir"
    # Serialise concurrent builds of the same key (e.g. two checkouts sharing the cache).
    exec 9>"$key_dir/.lock"
    flock 9
    if [[ $use_assets == 1 ]]; then
        bin_dir="$helm_only_bin"
        targets=(helm.sh/helm/v3/cmd/helm)
        echo "build.sh: kube-apiserver and etcd come from KUBEBUILDER_ASSETS=$assets; building helm only" >&2
    else
        bin_dir="$full_bin"
        targets=(k8s.io/kubernetes/cmd/kube-apiserver ./etcd helm.sh/helm/v3/cmd/helm)
    fi
    # Another process may have finished the same build while this one waited for the lock.
    if [[ ! -x "$bin_dir/helm" ]]; then
        # Leftovers of interrupted builds; safe to remove while we hold the lock.
        rm -rf "$key_dir"/.build.*
        k8s_version="$(go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)"
        helm_version="$(go list -mod=readonly -m -f '{{.Version}}' helm.sh/helm/v3)"
        k8s_minor="${k8s_version#v1.}"
        k8s_minor="${k8s_minor%%.*}"
        # Without these stamps `kubectl version` reports the server as v0.0.0-master and
        # `helm version` as a dev build; they change nothing else at run time.
        ldflags=(
            -s -w
            -X "k8s.io/component-base/version.gitVersion=$k8s_version"
            -X "k8s.io/component-base/version.gitMajor=1"
            -X "k8s.io/component-base/version.gitMinor=$k8s_minor"
            -X "k8s.io/component-base/version.gitTreeState=clean"
            -X "k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
            -X "k8s.io/client-go/pkg/version.gitMajor=1"
            -X "k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"
            -X "helm.sh/helm/v3/internal/version.version=$helm_version"
            -X "helm.sh/helm/v3/internal/version.gitTreeState=clean"
        )
        tmp="$(mktemp -d "$key_dir/.build.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        echo "build.sh: building ${targets[*]##*/} (kubernetes $k8s_version, helm $helm_version) into $bin_dir; a cold build takes several minutes" >&2
        start=$SECONDS
        mkdir -p "$tmp/bin"
        CGO_ENABLED=0 go build -mod=readonly -p "${TRIALSYNC_BUILD_JOBS:-2}" -trimpath \
            -ldflags="${ldflags[*]}" -o "$tmp/bin/" "${targets[@]}"
        rm -rf "$bin_dir"
        mkdir -p "$(dirname "$bin_dir")"
        mv "$tmp/bin" "$bin_dir"
        echo "build.sh: built in $((SECONDS - start))s" >&2
    fi
fi

if [[ $print_bin_dir == 1 ]]; then
    echo "$bin_dir" >&3
else
    echo "build.sh: binaries in $bin_dir" >&2
fi
