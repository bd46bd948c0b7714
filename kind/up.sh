#!/usr/bin/env bash
# make kind-up: build kind and its node image here if needed (kind/build.sh), create a
# kind cluster with podman in a network namespace of its own, load the project's images,
# and print, on stdout only:
#
#   KUBECONFIG=<path>                          the host reaches the apiserver through it
#   KIND_NET="nsenter --net=<netns> --"        runs a host command in the cluster's network
#   TRIALSYNC_KUBECONFIG, TRIALSYNC_CLUSTER_HOST_IP, TRIALSYNC_CLUSTER_NETNS
#                                              run the Kubernetes tests against it
#
# Network: kind's podman provider puts its nodes on a podman bridge network, and podman's
# CNI plugins (bridge, firewall, portmap) add iptables rules and a bridge to whatever
# network namespace podman runs in. So podman runs for kind only inside a namespace held
# by a `sleep` process (pid in <state>/netns.pid): the host's iptables and links stay as
# they were. The kubeconfig's server is a forwarder on the host's 127.0.0.1 (forward.py).
#
# Usage: bash kind/up.sh [--name NAME]   (default trialsync; TRIALSYNC_KIND_NAME)
#   TRIALSYNC_IMAGES=<manifest>  the images to load (default: the newest manifest under
#                                $TRIALSYNC_CACHE/images/manifests, from images/build.py);
#   TRIALSYNC_KIND_IMAGES="sidecar operator"   which of them (default: all but ray).
set -euo pipefail
exec 3>&1 1>&2

name="${TRIALSYNC_KIND_NAME:-trialsync}"
[[ "${1:-}" == --name ]] && name="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}"
source "$here/podman-env.sh"

start=$SECONDS
image="$(bash "$here/build.sh" --print-image)"
bin="$(bash "$here/build.sh" --print-bin)"
echo "kind/up.sh: node image $image ready after $((SECONDS - start)) s" >&2

state="$cache/kind/clusters/$name"
mkdir -p "$state" "$cache/kind/modules"
export TRIALSYNC_KIND_MODULES="$cache/kind/modules"
export PATH="$here/shim:$bin:$PATH"

holder=""
[[ -f "$state/netns.pid" ]] && holder="$(cat "$state/netns.pid")"
if [[ -z "$holder" ]] || ! kill -0 "$holder" 2>/dev/null; then
    setsid unshare --net sleep infinity </dev/null >/dev/null 2>&1 3>&- &
    holder=$!
    for _ in $(seq 50); do
        [[ "$(readlink /proc/$holder/ns/net)" != "$(readlink /proc/self/ns/net)" ]] && break
        sleep 0.1
    done
    echo "$holder" > "$state/netns.pid"
fi
netns="/proc/$holder/ns/net"
in_net() { nsenter --net="$netns" -- "$@"; }
in_net ip link set lo up

if ! in_net kind get clusters 2>/dev/null | grep -qx "$name"; then
    in_net kind create cluster --name "$name" --image "$image" \
        --config "$here/cluster.yaml" --kubeconfig "$state/kubeconfig.inner" --wait 180s >&2
fi
in_net kind get kubeconfig --name "$name" > "$state/kubeconfig.inner"
in_net kubectl --kubeconfig "$state/kubeconfig.inner" get nodes -o wide >&2

manifest="${TRIALSYNC_IMAGES:-$(ls -t "$cache"/images/manifests/*.json 2>/dev/null | head -1)}"
if [[ -n "$manifest" ]]; then
    mapfile -t archives < <(python3 - "$manifest" "${TRIALSYNC_KIND_IMAGES:-}" <<'PY'
import json, sys
images = json.load(open(sys.argv[1]))
wanted = sys.argv[2].split() or [n for n in images if n != "ray"]
for n in wanted:
    print(images[n]["archive"])
PY
    )
    for archive in "${archives[@]}"; do
        echo "kind/up.sh: loading $archive" >&2
        in_net kind load image-archive --name "$name" "$archive" >&2
    done
else
    echo "kind/up.sh: no images manifest under $cache/images/manifests (make images); none loaded" >&2
fi

# The apiserver, from the host: a forwarder to the control-plane node's port 6443.
node_ip="$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name-control-plane")"
# Pods and Services, from the namespace (the tests' forwarders dial them from there): through
# the one node, which masquerades its pods' answers (kind/node's bridge configuration).
in_net ip route replace 10.244.0.0/16 via "$node_ip"
in_net ip route replace 10.96.0.0/16 via "$node_ip"
if [[ -f "$state/forward.pid" ]] && kill -0 "$(cat "$state/forward.pid")" 2>/dev/null; then
    :
else
    rm -f "$state/forward.port"
    setsid python3 "$here/forward.py" "$netns" "$node_ip" 6443 "$state/forward.port" \
        </dev/null >"$state/forward.log" 2>&1 3>&- &
    echo $! > "$state/forward.pid"
    for _ in $(seq 50); do [[ -s "$state/forward.port" ]] && break; sleep 0.1; done
fi
port="$(cat "$state/forward.port")"
sed -E "s#server: https://[^ ]+#server: https://127.0.0.1:$port#" "$state/kubeconfig.inner" > "$state/kubeconfig"
KUBECONFIG="$state/kubeconfig" "$bin/kubectl" wait --for=condition=Ready node --all --timeout=120s >&2
echo "kind/up.sh: cluster $name ready after $((SECONDS - start)) s" >&2
# What the tests need to run against this cluster (docs/testing.md, "Using kind"): its pods
# reach the kind network's gateway, an address of the namespace, where the tests expose the
# host's servers.
gateway="$(in_net podman network inspect kind -f '{{range .Subnets}}{{.Gateway}} {{end}}' \
    | tr ' ' '\n' | grep -m1 -E '^[0-9]+(\.[0-9]+){3}$')"
echo "KUBECONFIG=$state/kubeconfig" >&3
echo "KIND_NET=\"nsenter --net=$netns --\"" >&3
echo "TRIALSYNC_KUBECONFIG=$state/kubeconfig" >&3
echo "TRIALSYNC_CLUSTER_HOST_IP=$gateway" >&3
echo "TRIALSYNC_CLUSTER_NETNS=$netns" >&3
