"""Where one local cluster keeps its files, and the fixed addresses inside its namespace.

Every cluster has its own network namespace, so the addresses and ports below are the same
for all of them and never collide with the host or with another worktree's cluster. Only
the state directory (and with it the cgroup root and the host port of the apiserver) is
unique per instance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The node's address: one end of a veth pair inside the namespace (the kubelet refuses a
#: loopback node IP and wants a default route, which the other end provides).
NODE_NAME = "trialsync-node"
NODE_IP = "10.231.0.2"
GATEWAY_IP = "10.231.0.1"
NODE_PREFIX_LENGTH = 24
NODE_INTERFACE = "node0"
GATEWAY_INTERFACE = "gw0"

#: Pods get addresses from this range on the CNI bridge.
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
BRIDGE = "cni0"

#: kind's defaults, so manifests written for kind fit.
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
SERVICE_ACCOUNT_ISSUER = f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}"

#: Ports inside the namespace (the apiserver's is chosen per instance, see ClusterFiles).
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249
COREDNS_HEALTH_PORT = 8080
COREDNS_READY_PORT = 8181
RAY_OPERATOR_METRICS_PORT = 10290
RAY_OPERATOR_HEALTH_PORT = 10291
#: KubeRay's CRDs, as tools/build.sh --node copies them beside its binaries.
KUBERAY_CRDS = "kuberay-crds"

#: The kubelet writes these global sysctls at start. Inside the cluster's mount namespace a
#: file holding the value it wants is bind-mounted over each, so it finds them set and the
#: host keeps its own values.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}

#: Host directories that the components write below at paths no setting moves (shim
#: sockets in /run/containerd/s, /var/lib/kubelet/device-plugins, /var/lib/cni/results,
#: /var/log/containers, the iptables lock in /run). Inside the cluster's mount namespace
#: /run is a private tmpfs and the others are overlays whose upper layer is in the state
#: directory, so the host's copies never change.
PRIVATE_TMPFS = ("/run",)
OVERLAID = ("/var/lib", "/var/log")


def cache_dir() -> Path:
    """``$TRIALSYNC_CACHE`` (as the Makefile sets it), else ``~/.cache/trialsync``."""
    configured = os.environ.get("TRIALSYNC_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "trialsync"


def clusters_dir() -> Path:
    """The parent of every instance's state directory on this machine."""
    return cache_dir() / "clusters"


@dataclass(frozen=True)
class ClusterFiles:
    """The paths of one instance, all under its state directory ``root``.

    The directory name is the instance id; it names the cgroup root too, so the leftovers
    of an instance that died can be found from either.
    """

    root: Path

    @property
    def instance_id(self) -> str:
        return self.root.name

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot: this instance's pods live below it in every hierarchy."""
        return f"/trialsync-{self.instance_id}"

    @property
    def lock(self) -> Path:
        """Held (flock) by the launcher while the instance lives."""
        return self.root / "lock"

    @property
    def state(self) -> Path:
        """What a host process needs to use a running instance (see ``control.ClusterState``)."""
        return self.root / "cluster.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig; its server address works on the host and inside the namespace."""
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.etc / "cni"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def sysctls(self) -> Path:
        return self.root / "sysctl"

    def overlay(self, target: str) -> tuple[Path, Path]:
        """(upper, work) directories of the overlay mounted over host directory ``target``."""
        base = self.root / "overlay" / target.strip("/").replace("/", "-")
        return base / "upper", base / "work"

    @property
    def tmp(self) -> Path:
        """TMPDIR of every component (containerd unpacks image imports there)."""
        return self.root / "tmp"
