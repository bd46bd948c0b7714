#!/usr/bin/env bash
# make kind-down: delete the kind cluster of up.sh, its forwarder and its network namespace.
set -euo pipefail
name="${TRIALSYNC_KIND_NAME:-trialsync}"
[[ "${1:-}" == --name ]] && name="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}"
source "$here/podman-env.sh"
state="$cache/kind/clusters/$name"
export TRIALSYNC_KIND_MODULES="$cache/kind/modules"
bin="$(bash "$here/build.sh" --print-bin)"
export PATH="$here/shim:$bin:$PATH"
if [[ -f "$state/forward.pid" ]]; then
    kill "$(cat "$state/forward.pid")" 2>/dev/null || true
fi
if [[ -f "$state/netns.pid" ]] && kill -0 "$(cat "$state/netns.pid")" 2>/dev/null; then
    holder="$(cat "$state/netns.pid")"
    nsenter --net="/proc/$holder/ns/net" -- kind delete cluster --name "$name" >&2
    # the bridge network kind made, so that the namespace's end leaves nothing behind
    nsenter --net="/proc/$holder/ns/net" -- podman network rm -f kind >/dev/null 2>&1 || true
    kill "$holder"
fi
rm -rf "$state"
