#!/usr/bin/env bash
# Build the test cluster's binaries from the Go modules pinned under tools/, into a cache
# outside the checkout:
#
#   ${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/tools/<key>/bin/
#
# Three sets, each built only when one of its binaries is missing:
#   control plane (always):  kube-apiserver, etcd, helm                  (tools/go.mod)
#   monitoring (always):     prometheus, promtool                        (tools/prometheus)
#                            the prometheus-operator's ServiceMonitor, PodMonitor and
#                            PrometheusRule CRDs  in prometheus-operator-crds/
#                                                      (prometheus_operator_version below)
#   node (with --node):      kubelet, kube-controller-manager, kube-scheduler, kube-proxy
#                                                                          (tools/go.mod)
#                            containerd, ctr, containerd-shim-runc-v2      (tools/containerd)
#                            runc, with seccomp                            (tools/runc)
#                            cni/{bridge,host-local,loopback,portmap}      (tools/cni)
#                            coredns                                       (tools/coredns)
#                            pause, the pods' sandbox process              (tools/pause)
#                            ray-operator, KubeRay, and its RayCluster, RayJob and
#                            RayService CRDs
#                                                      in kuberay-crds/    (tools/kuberay)
#
# <key> hashes every go.mod, go.sum, Go and C source under tools/, this script and the Go
# version, so editing any pin gives a new directory and an unchanged tree reuses the old one
# (a no-op run takes well under a second). Each set is built into a temporary directory and
# moved into bin/ only once every binary of the set linked, so an interrupted build leaves
# no half-built set behind.
#
# Usage:
#   bash tools/build.sh [--node]            build if needed; logs go to stderr
#   bash tools/build.sh [--node] --bin-dir  build if needed, then print ONLY the bin directory
#
# The node set needs Linux, gcc and libseccomp-dev (tools/system-deps.sh installs them).
#
# If KUBEBUILDER_ASSETS names a directory holding executable kube-apiserver and etcd, only
# helm (and the monitoring set) is built (into .../tools/<key>/helm-only/bin) unless the
# full cache already exists;
# --bin-dir then prints that helm-only directory and callers must take kube-apiserver and
# etcd from KUBEBUILDER_ASSETS (localcluster/control_plane.py does). --node ignores
# KUBEBUILDER_ASSETS: the local cluster runs its own apiserver.
set -euo pipefail

print_bin_dir=0
node=0
for arg in "$@"; do
    case "$arg" in
        --bin-dir) print_bin_dir=1 ;;
        --node) node=1 ;;
        -h | --help)
            awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
            exit 0
            ;;
        *)
            echo "build.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

# Everything below logs to stderr so that --bin-dir's stdout is exactly one path.
exec 3>&1 1>&2

tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/tools"
jobs="${TRIALSYNC_BUILD_JOBS:-2}"

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' is not on PATH; install Go >= 1.26 to build the test cluster" >&2
    exit 1
fi

cd "$tools_dir"
# The key covers every input of the build, including the toolchain that compiles it.
key="$(
    {
        find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' -o -name '*.c' \
            -o -name build.sh \) | LC_ALL=C sort | xargs cat
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16
)"
key_dir="$cache_root/$key"
full_bin="$key_dir/bin"
helm_only_bin="$key_dir/helm-only/bin"

control_plane=(kube-apiserver etcd helm)
monitoring_set=(prometheus promtool)
# The CRDs the chart's monitoring objects are checked against, from this release's module
# (go mod download verifies it against the checksum database).
prometheus_operator_version=v0.85.0
prometheus_operator_crds=(servicemonitors podmonitors prometheusrules)
node_set=(
    kubelet kube-controller-manager kube-scheduler kube-proxy
    containerd ctr containerd-shim-runc-v2 runc coredns pause
    cni/bridge cni/host-local cni/loopback cni/portmap ray-operator
)

# complete DIR NAME... : every NAME is an executable file in DIR.
complete() {
    local dir="$1" name
    shift
    for name in "$@"; do
        [[ -x "$dir/$name" ]] || return 1
    done
}

assets="${KUBEBUILDER_ASSETS:-}"
use_assets=0
if [[ $node == 0 && -n "$assets" && -x "$assets/kube-apiserver" && -x "$assets/etcd" ]]; then
    use_assets=1
fi

if complete "$full_bin" "${control_plane[@]}"; then
    bin_dir="$full_bin"
elif [[ $use_assets == 1 ]] && complete "$helm_only_bin" helm; then
    bin_dir="$helm_only_bin"
elif [[ $use_assets == 1 ]]; then
    bin_dir="$helm_only_bin"
else
    bin_dir="$full_bin"
fi

# With KUBEBUILDER_ASSETS the control plane set is helm alone.
control_plane_set=("${control_plane[@]}")
if [[ $bin_dir == "$helm_only_bin" ]]; then
    control_plane_set=(helm)
fi
need_control_plane=0
need_monitoring=0
need_node=0
complete "$bin_dir" "${control_plane_set[@]}" || need_control_plane=1
complete "$bin_dir" "${monitoring_set[@]}" prometheus-operator-crds || need_monitoring=1
if [[ $node == 1 ]] && ! complete "$bin_dir" "${node_set[@]}"; then
    need_node=1
fi

if [[ $need_control_plane == 1 || $need_monitoring == 1 || $need_node == 1 ]]; then
    mkdir -p "$key_dir"
    # Serialise concurrent builds of the same key (e.g. two checkouts sharing the cache).
    exec 9>"$key_dir/.lock"
    flock 9
    # Leftovers of interrupted builds; safe to remove while we hold the lock.
    rm -rf "$key_dir"/.build.*
    tmp="$(mktemp -d "$key_dir/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT

    # module_version DIR MODULE: the version of MODULE that DIR's go.mod resolves.
    module_version() {
        (cd "$1" && go list -mod=readonly -m -f '{{.Version}}' "$2")
    }
    k8s_version="$(module_version . k8s.io/kubernetes)"
    k8s_minor="${k8s_version#v1.}"
    k8s_minor="${k8s_minor%%.*}"
    # Without these stamps `kubectl version` reports the server as v0.0.0-master and the
    # kubelet registers its node as that version; they change nothing else at run time.
    k8s_ldflags=(
        -s -w
        -X "k8s.io/component-base/version.gitVersion=$k8s_version"
        -X "k8s.io/component-base/version.gitMajor=1"
        -X "k8s.io/component-base/version.gitMinor=$k8s_minor"
        -X "k8s.io/component-base/version.gitTreeState=clean"
        -X "k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
        -X "k8s.io/client-go/pkg/version.gitMajor=1"
        -X "k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"
    )

    # install_set SRC NAME...: move a fully built set into bin_dir. Each rename is atomic and
    # a set only moves once all of it linked, so a reader never runs a half-written binary.
    install_set() {
        local src="$1" name
        shift
        for name in "$@"; do
            mkdir -p "$(dirname "$bin_dir/$name")"
            mv -f "$src/$name" "$bin_dir/$name"
        done
    }

    # Another process may have finished the same build while this one waited for the lock.
    if [[ $need_control_plane == 1 ]] && ! complete "$bin_dir" "${control_plane_set[@]}"; then
        helm_version="$(module_version . helm.sh/helm/v3)"
        # helm's own build stamps the Kubernetes version of its client-go (v0.N -> 1.N) as
        # the default of .Capabilities.KubeVersion and of lint's deprecation checks; without
        # it this helm assumes v1.20, and `helm template` refuses a chart needing newer.
        client_go="$(module_version . k8s.io/client-go)"
        client_go_minor="${client_go#v0.}"
        client_go_minor="${client_go_minor%%.*}"
        helm_k8s_ldflags=""
        for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
            helm_k8s_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go_minor"
        done
        names=("${control_plane_set[@]}")
        if [[ $bin_dir == "$helm_only_bin" ]]; then
            targets=(helm.sh/helm/v3/cmd/helm)
            echo "build.sh: kube-apiserver and etcd come from KUBEBUILDER_ASSETS=$assets; building helm only" >&2
        else
            targets=(k8s.io/kubernetes/cmd/kube-apiserver ./etcd helm.sh/helm/v3/cmd/helm)
        fi
        echo "build.sh: building ${names[*]} (kubernetes $k8s_version, helm $helm_version) into $bin_dir; a cold build takes several minutes" >&2
        start=$SECONDS
        mkdir -p "$tmp/cp"
        CGO_ENABLED=0 go build -mod=readonly -p "$jobs" -trimpath \
            -ldflags="${k8s_ldflags[*]}$helm_k8s_ldflags -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
            -o "$tmp/cp/" "${targets[@]}"
        install_set "$tmp/cp" "${names[@]}"
        echo "build.sh: control plane built in $((SECONDS - start))s" >&2
    fi

    if [[ $need_monitoring == 1 ]] && ! complete "$bin_dir" "${monitoring_set[@]}"; then
        prometheus_version="$(module_version prometheus github.com/prometheus/prometheus)"
        # Prometheus 3.X.Y is published as the Go module v0.3XX.Y.
        prometheus_release="${prometheus_version#v0.}"
        prometheus_release="${prometheus_release:0:1}.$((10#${prometheus_release:1:2})).${prometheus_release#*.}"
        echo "build.sh: building prometheus and promtool (Prometheus $prometheus_release), with" \
            "the prometheus-operator $prometheus_operator_version CRDs, into $bin_dir" >&2
        start=$SECONDS
        mkdir -p "$tmp/monitoring"
        # remove_all_sd: no service discovery but static targets (the tests scrape a
        # sidecar on loopback), so none of the cloud SDKs is compiled in.
        (cd prometheus && CGO_ENABLED=0 go build -mod=readonly -p "$jobs" -trimpath \
            -tags remove_all_sd \
            -ldflags="-s -w -X github.com/prometheus/common/version.Version=$prometheus_release -X github.com/prometheus/common/version.Revision=$prometheus_version" \
            -o "$tmp/monitoring/" github.com/prometheus/prometheus/cmd/prometheus \
            github.com/prometheus/prometheus/cmd/promtool)
        # Outside tools/ (no go.mod around): nothing of ours is read or written.
        operator_dir="$(cd "$tmp" && go mod download -json \
            "github.com/prometheus-operator/prometheus-operator@$prometheus_operator_version" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        mkdir -p "$tmp/monitoring/prometheus-operator-crds"
        for crd in "${prometheus_operator_crds[@]}"; do
            cp "$operator_dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" \
                "$tmp/monitoring/prometheus-operator-crds/"
        done
        chmod 0644 "$tmp"/monitoring/prometheus-operator-crds/*
        install_set "$tmp/monitoring" "${monitoring_set[@]}" prometheus-operator-crds
        echo "build.sh: prometheus and promtool built in $((SECONDS - start))s" >&2
    fi

    if [[ $need_node == 1 ]] && ! complete "$bin_dir" "${node_set[@]}"; then
        if [[ "$(uname -s)" != Linux ]]; then
            echo "build.sh: --node needs Linux (the kubelet, containerd and runc are Linux-only)" >&2
            exit 1
        fi
        containerd_version="$(module_version containerd github.com/containerd/containerd/v2)"
        runc_version="$(module_version runc github.com/opencontainers/runc)"
        cni_version="$(module_version cni github.com/containernetworking/plugins)"
        coredns_version="$(module_version coredns github.com/coredns/coredns)"
        kuberay_version="$(module_version kuberay github.com/ray-project/kuberay/ray-operator)"
        # The pause image's version is the one kubeadm pins for this Kubernetes release.
        pause_version="$(sed -n 's/^\tPauseVersion = "\(.*\)"$/\1/p' \
            "$(go list -mod=readonly -m -f '{{.Dir}}' k8s.io/kubernetes)/cmd/kubeadm/app/constants/constants.go")"
        echo "build.sh: building the node (kubernetes $k8s_version, containerd $containerd_version," \
            "runc $runc_version, CNI plugins $cni_version, CoreDNS $coredns_version," \
            "KubeRay $kuberay_version) into $bin_dir;" \
            "a cold build takes several minutes" >&2
        start=$SECONDS
        out="$tmp/node"
        mkdir -p "$out/cni"

        CGO_ENABLED=0 go build -mod=readonly -p "$jobs" -trimpath -ldflags="${k8s_ldflags[*]}" \
            -o "$out/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
        echo "build.sh: kubernetes node components built after $((SECONDS - start))s" >&2

        # The btrfs, devmapper, zfs and aufs snapshotters need C libraries; overlayfs is used.
        (cd containerd && CGO_ENABLED=0 go build -mod=readonly -p "$jobs" -trimpath \
            -tags "no_btrfs no_devmapper no_zfs no_aufs" \
            -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version" \
            -o "$out/" github.com/containerd/containerd/v2/cmd/containerd \
            github.com/containerd/containerd/v2/cmd/ctr \
            github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2)
        echo "build.sh: containerd built after $((SECONDS - start))s" >&2

        # As runc's own `make static`: cgo for libseccomp, linked statically so the binary does
        # not depend on the machine's libseccomp at run time.
        (cd runc && CGO_ENABLED=1 go build -mod=readonly -p "$jobs" -trimpath \
            -tags "seccomp urfave_cli_no_docs netgo osusergo" \
            -ldflags="-s -w -extldflags -static" \
            -o "$out/runc" github.com/opencontainers/runc)
        echo "build.sh: runc built after $((SECONDS - start))s" >&2

        (cd cni && CGO_ENABLED=0 go build -mod=readonly -p "$jobs" -trimpath \
            -ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version" \
            -o "$out/cni/" github.com/containernetworking/plugins/plugins/main/bridge \
            github.com/containernetworking/plugins/plugins/ipam/host-local \
            github.com/containernetworking/plugins/plugins/main/loopback \
            github.com/containernetworking/plugins/plugins/meta/portmap)
        echo "build.sh: CNI plugins built after $((SECONDS - start))s" >&2

        (cd coredns && CGO_ENABLED=0 go build -mod=readonly -p "$jobs" -trimpath \
            -ldflags="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$coredns_version" \
            -o "$out/coredns" github.com/coredns/coredns)
        echo "build.sh: CoreDNS built after $((SECONDS - start))s" >&2

        # KubeRay's version is in its source (no stamp); its CRDs come with the module.
        (cd kuberay && CGO_ENABLED=0 go build -mod=readonly -p "$jobs" -trimpath -ldflags="-s -w" \
            -o "$out/" github.com/ray-project/kuberay/ray-operator)
        kuberay_dir="$(cd kuberay && go list -mod=readonly -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)"
        mkdir -p "$out/kuberay-crds"
        # All three: the operator waits for each kind's cache and exits if one is missing.
        cp "$kuberay_dir"/config/crd/bases/ray.io_rayclusters.yaml \
            "$kuberay_dir"/config/crd/bases/ray.io_rayjobs.yaml \
            "$kuberay_dir"/config/crd/bases/ray.io_rayservices.yaml "$out/kuberay-crds/"
        chmod 0644 "$out"/kuberay-crds/*
        echo "build.sh: KubeRay built after $((SECONDS - start))s" >&2

        cc="${CC:-gcc}"
        "$cc" -static -Os -s -Wall -Werror -DPAUSE_VERSION="\"$pause_version\"" \
            -o "$out/pause" pause/pause.c

        install_set "$out" "${node_set[@]}" kuberay-crds
        echo "build.sh: node built in $((SECONDS - start))s" >&2
    fi
fi

if [[ $print_bin_dir == 1 ]]; then
    echo "$bin_dir" >&3
else
    echo "build.sh: binaries in $bin_dir" >&2
fi
