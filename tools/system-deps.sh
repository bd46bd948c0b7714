#!/usr/bin/env bash
# Install the Debian packages that the local cluster, the image builds and the tests' HDFS
# need, if any is missing. A run with everything present is a no-op (one dpkg-query, well
# under a second).
#
#   libseccomp-dev, gcc, libc6-dev   runc links libseccomp statically; the pause binary is
#                                    static C
#   iptables, conntrack              kube-proxy and the CNI bridge/portmap plugins program
#                                    the cluster's own network namespace with them
#   iproute2, util-linux             ip, unshare and nsenter set up and enter the namespaces
#   buildah, debootstrap, debian-archive-keyring
#                                    build images/*/Dockerfile without a Docker engine, on a
#                                    debian:bookworm-slim made locally
#   podman, podman-docker, runc      kind's nodes (make kind-up, kind/): podman 4.3 runs them
#                                    with Debian's runc (its crun refuses hybrid cgroups);
#                                    podman-docker is the docker CLI kind's tooling expects
#   openjdk-17-jdk-headless, maven   the tests' HDFS (tools/hdfs.sh: Hadoop's MiniDFSCluster,
#                                    its jars from Maven Central, compiled with javac)
#
# Only root can install. Without root (or without apt-get) the script says what is missing
# and exits 0, so that `make test` still runs everything that does not need the node; with
# TRIALSYNC_REQUIRE_CLUSTER=1 (CI) a missing package is an error instead.
set -euo pipefail

packages=(
    libseccomp-dev gcc libc6-dev
    iptables conntrack
    iproute2 util-linux
    buildah debootstrap debian-archive-keyring
    podman podman-docker runc
    openjdk-17-jdk-headless maven
)

if [[ "$(uname -s)" != Linux ]]; then
    echo "system-deps.sh: not Linux; the local cluster cannot run here (tests that need it skip)" >&2
    exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == installed ]] || missing+=("$pkg")
done
[[ ${#missing[@]} == 0 ]] && exit 0

required="${TRIALSYNC_REQUIRE_CLUSTER:-0}"
if [[ $EUID != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps.sh: missing Debian packages: ${missing[*]} (install them as root;" \
        "tests that need the local cluster will skip)" >&2
    [[ "$required" == 1 ]] && exit 1
    exit 0
fi

echo "system-deps.sh: installing ${missing[*]}" >&2
# Another apt run on the machine holds the dpkg lock for a while: wait for it, do not fail.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet, or stale ones that name removed versions.
if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
    apt-get "${apt_opts[@]}" update >&2
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >&2
fi
