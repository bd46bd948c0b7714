#!/usr/bin/env bash
# Build kind and its node image on this machine, with no container registry and no Docker:
#
#   ${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/kind/<key>/bin/   kind, kubeadm, kubectl,
#                                   crictl, local-path-provisioner, cni/ptp
#   podman image localhost/trialsync/kind-node:<k8s version>-<key>     (the node image)
#
# podman keeps its storage and configuration in ${TRIALSYNC_CACHE}/kind/podman (podman-env.sh);
# nothing goes to /etc/containers or /var/lib/containers.
#
# What `kind build node-image` does, done here with podman because it would pull from a
# registry every image but kube-apiserver, -controller-manager, -scheduler and -proxy:
#   1. kind's base image (kind/base/Containerfile): the project's debootstrapped
#      debian:bookworm-slim, kind's images/base/files from the kind module, containerd,
#      runc and the CNI plugins from tools/build.sh --node, crictl and ptp built here;
#   2. the images the node carries, each built here (kind/images/): the control plane
#      (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, etcd, CoreDNS)
#      from tools/build.sh's binaries, pause from images/build.py's archive, and
#      local-path-provisioner/-helper (no kindnetd: see below); their names are exactly the ones kubeadm and kind's
#      manifests ask for, so nothing is ever pulled;
#   3. the node: the base with kubeadm, kubelet and kubectl, /kind/version, kind's default
#      CNI and storage manifests (kind/manifests.py), and every image above imported
#      into the node's containerd (k8s.io namespace, pinned, not unpacked), committed.
#
# <key> hashes kind/ (but the scripts that run a cluster: up.sh, down.sh, forward.py,
# cluster.yaml), tools/build.sh's key (its bin directory) and the Go version; an unchanged
# input reuses everything (a no-op run takes about a second). A new node image replaces the
# others: their images and cache directories are removed (an image a node still runs on
# is kept).
#
# Usage: bash kind/build.sh [--print-image | --print-bin]
#   Go builds run one package at a time (-p 1) unless TRIALSYNC_BUILD_JOBS says otherwise.
set -euo pipefail

print=""
case "${1:-}" in
    --print-image) print=image ;;
    --print-bin) print=bin ;;
    "") ;;
    *) echo "kind/build.sh: unknown argument: $1" >&2; exit 2 ;;
esac
exec 3>&1 1>&2

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}"
jobs="${TRIALSYNC_BUILD_JOBS:-1}"
# shellcheck source=podman-env.sh
source "$here/podman-env.sh"

kind_version=v0.33.0
k8s_version=v1.37.2

node_bin="$(bash "$repo/tools/build.sh" --node --bin-dir)"
key="$(
    {
        # what builds the node image: not the scripts that run a cluster from it
        cd "$here" && find . -type f ! -name '*.md' ! -name up.sh ! -name down.sh \
            ! -name forward.py ! -name cluster.yaml | LC_ALL=C sort | xargs cat
        echo "$node_bin"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16
)"
key_dir="$cache/kind/$key"
bin="$key_dir/bin"
node_image="localhost/trialsync/kind-node:$k8s_version-$key"
base_image="localhost/trialsync/kind-base:$key"

mkdir -p "$key_dir"
exec 9>"$key_dir/.lock"
flock 9

gomod="$(go env GOMODCACHE)"
kind_module="$gomod/sigs.k8s.io/kind@$kind_version"

# go_build MODULE_DIR OUT PKG [ENV...]: one binary, atomically.
go_build() {
    local dir="$1" out="$2" pkg="$3"
    shift 3
    [[ -x "$out" ]] && return 0
    mkdir -p "$(dirname "$out")"
    echo "kind/build.sh: building $(basename "$out") ($pkg)" >&2
    (cd "$dir" && env CGO_ENABLED=0 "$@" go build -p "$jobs" -trimpath -ldflags="${LDFLAGS:--s -w}" -o "$out.tmp" "$pkg")
    mv -f "$out.tmp" "$out"
}

start=$SECONDS
go_build "$here" "$bin/kind" sigs.k8s.io/kind
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
done
k8s_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
LDFLAGS="$k8s_ldflags" go_build "$here/k8s" "$bin/kubeadm" k8s.io/kubernetes/cmd/kubeadm
LDFLAGS="$k8s_ldflags" go_build "$here/k8s" "$bin/kubectl" k8s.io/kubernetes/cmd/kubectl
go_build "$here/crictl" "$bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl
go_build "$repo/tools/cni" "$bin/cni/ptp" github.com/containernetworking/plugins/plugins/main/ptp
go_build "$here/local-path" "$bin/local-path-provisioner" github.com/rancher/local-path-provisioner
# No kindnetd: it is a nested module of the kind repository (images/kindnetd) that the Go
# proxy does not serve, and its dependency sigs.k8s.io/kube-network-policies at the
# pseudo-version it pins is not served either (the newest served, v0.8.0, lacks the
# packages it imports). The node gets a static bridge CNI configuration instead
# (node/10-trialsync-bridge.conflist; cluster.yaml disables kind's default CNI), which
# serves a single-node cluster.
echo "kind/build.sh: binaries ready in $((SECONDS - start)) s" >&2

have_image() { podman image exists "$1"; }

# ensure_debian: the project's debootstrapped base, from images/build.py's buildah storage.
ensure_debian() {
    have_image docker.io/library/debian:bookworm-slim && return 0
    local tmp
    tmp="$(mktemp -d "$key_dir/.debian.XXXXXX")"
    buildah --root "$cache/images/storage" --runroot "$cache/images/runroot" push \
        docker.io/library/debian:bookworm-slim \
        "oci-archive:$tmp/debian.tar:docker.io/library/debian:bookworm-slim" >&2 || {
        echo "kind/build.sh: no debian:bookworm-slim in images/build.py's storage: run make images" >&2
        rm -rf "$tmp"
        exit 1
    }
    podman load -i "$tmp/debian.tar" >&2
    rm -rf "$tmp"
}

if ! have_image "$node_image"; then
    ensure_debian
    t0=$SECONDS
    if ! have_image "$base_image"; then
        ctx="$(mktemp -d "$key_dir/.base.XXXXXX")"
        cp -r "$kind_module/images/base/files" "$ctx/"
        chmod -R u+w "$ctx"
        mkdir -p "$ctx/bin/cni"
        cp "$node_bin"/{containerd,ctr,containerd-shim-runc-v2,runc} "$bin/crictl" "$ctx/bin/"
        cp "$node_bin"/cni/{bridge,host-local,loopback,portmap} "$bin/cni/ptp" "$ctx/bin/cni/"
        # host networking for apt-get: podman's bridge would add iptables rules to the host
        podman build --network=host --isolation=chroot --pull=never \
            -f "$here/base/Containerfile" -t "$base_image" "$ctx" >&2
        rm -rf "$ctx"
        echo "kind/build.sh: base image in $((SECONDS - t0)) s" >&2
    fi

    # The images the node carries.
    t0=$SECONDS
    ctx="$(mktemp -d "$key_dir/.images.XXXXXX")"
    cp "$node_bin"/{kube-apiserver,kube-controller-manager,kube-scheduler,etcd,coredns} "$ctx/"
    build_static() { # REF BINARY
        podman build -q --network=none --pull=never --build-arg "BINARY=$2" \
            -f "$here/images/static.Containerfile" -t "$1" "$ctx" >&2
    }
    build_debian() { # REF PACKAGES BINARY...
        local ref="$1" packages="$2" d
        shift 2
        d="$(mktemp -d "$ctx/.d.XXXXXX")"
        mkdir -p "$d/bin"
        [[ $# -gt 0 ]] && cp "$@" "$d/bin/"
        podman build -q --network=host --isolation=chroot --pull=never \
            --build-arg "PACKAGES=$packages" -f "$here/images/debian.Containerfile" -t "$ref" "$d" >&2
    }
    mapfile -t kubeadm_images < <("$bin/kubeadm" config images list --kubernetes-version "$k8s_version")
    mapfile -t kind_images < <(python3 "$here/manifests.py" "$kind_module" "$ctx/manifests")
    for ref in "${kubeadm_images[@]}" "${kind_images[@]}"; do
        case "$ref" in
            */kube-apiserver:* | */kube-controller-manager:* | */kube-scheduler:*)
                name="${ref##*/}"
                build_static "$ref" "${name%%:*}"
                ;;
            */etcd:*) build_static "$ref" etcd ;;
            */coredns:*)
                podman build -q --network=none --pull=never \
                    -f "$here/images/coredns.Containerfile" -t "$ref" "$ctx" >&2
                ;;
            */kube-proxy:*) build_debian "$ref" "iptables conntrack ipset kmod" "$node_bin/kube-proxy" ;;
            */pause:*)
                pause_archive="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pause"]["archive"])' \
                    "$(ls -t "$cache"/images/manifests/*.json | head -1)")"
                podman load -i "$pause_archive" >&2
                podman tag docker.io/trialsync/pause:3.10.2 "$ref"
                ;;
            */kindnetd:*) continue ;;
            */local-path-provisioner:*) build_debian "$ref" "" "$bin/local-path-provisioner" ;;
            */local-path-helper:*) podman tag docker.io/library/debian:bookworm-slim "$ref" ;;
            *) echo "kind/build.sh: no recipe for the image $ref" >&2; exit 1 ;;
        esac
    done
    echo "kind/build.sh: node's images in $((SECONDS - t0)) s" >&2

    # The node: a container from the base, filled, committed.
    t0=$SECONDS
    build="trialsync-kind-build-$key"
    podman rm -f "$build" >/dev/null 2>&1 || true
    podman run -d --name "$build" --network=none --privileged --cgroupns=private \
        --tmpfs /tmp --tmpfs /run --entrypoint sleep "$base_image" infinity >&2
    trap 'podman rm -f "$build" >/dev/null 2>&1 || true; rm -rf "$ctx"' EXIT
    for b in kubeadm kubectl; do podman cp "$bin/$b" "$build:/usr/bin/$b"; done
    podman cp "$node_bin/kubelet" "$build:/usr/bin/kubelet"
    podman exec "$build" mkdir -p /kind/manifests
    podman cp "$ctx/manifests/default-cni.yaml" "$build:/kind/manifests/default-cni.yaml"
    podman cp "$ctx/manifests/default-storage.yaml" "$build:/kind/manifests/default-storage.yaml"
    podman exec "$build" sh -c "echo $k8s_version > /kind/version"
    # kubelet's sysctls: see kind/base/kubelet-sysctls.sh
    podman cp "$here/node/kubelet-sysctls.sh" "$build:/kind/bin/kubelet-sysctls.sh"
    podman cp "$here/node/12-trialsync.conf" "$build:/etc/systemd/system/kubelet.service.d/12-trialsync.conf"
    podman exec "$build" mkdir -p /etc/cni/net.d
    podman cp "$here/node/10-trialsync-bridge.conflist" "$build:/etc/cni/net.d/10-trialsync-bridge.conflist"
    pause_ref="$(printf '%s\n' "${kubeadm_images[@]}" | grep '/pause:')"
    podman exec "$build" sed -i "s#sandbox_image = .*#sandbox_image = \"$pause_ref\"#" /etc/containerd/config.toml
    podman exec -d "$build" sh -c 'containerd > /tmp/containerd.log 2>&1'
    for _ in $(seq 50); do podman exec "$build" ctr version >/dev/null 2>&1 && break; sleep 0.2; done
    for ref in "${kubeadm_images[@]}" "${kind_images[@]}"; do
        [[ "$ref" == */kindnetd:* ]] && continue
        podman save --format docker-archive "$ref" | podman exec -i "$build" \
            ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
            --all-platforms --no-unpack --digests - >&2
    done
    podman exec "$build" ctr --namespace=k8s.io images list -q >&2
    podman exec "$build" pkill containerd || true
    sleep 1
    podman exec "$build" rm -rf /tmp/containerd.log
    podman commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
        --change 'CMD []' --change 'STOPSIGNAL SIGRTMIN+3' "$build" "$node_image" >&2
    echo "kind/build.sh: node image $node_image in $((SECONDS - t0)) s" >&2
    # Each node image is about 1 GB: keep only this one.
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' \
            | grep -E '^localhost/trialsync/kind-(node|base):' | grep -v -- "$key" || true); do
        podman rmi "$old" >/dev/null 2>&1 || true
    done
    for dir in "$cache"/kind/*/; do
        dir="${dir%/}"
        [[ "$(basename "$dir")" =~ ^[0-9a-f]{16}$ && "$dir" != "$key_dir" ]] && rm -rf "$dir"
    done
fi

case "$print" in
    image) echo "$node_image" >&3 ;;
    bin) echo "$bin" >&3 ;;
esac
