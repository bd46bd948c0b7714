"""The host state the local cluster promises to leave alone, as a comparable snapshot.

Only what the cluster's components would change if they ran on the host is recorded:
the global sysctls the kubelet writes and the per-network ones kube-proxy and the CNI
bridge write; iptables chains; network interfaces; the hard-coded paths they create; and
mounts below those paths. Other work on the machine may change anything else meanwhile.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster import layout

SYSCTLS = (
    *layout.KUBELET_SYSCTLS,
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
#: Where a kubelet, containerd, runc and the CNI plugins write by default or always.
PATHS = (
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
    "/run/netns",
    "/run/xtables.lock",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
)
INTERFACES = (layout.BRIDGE, layout.NODE_INTERFACE, layout.GATEWAY_INTERFACE)


@dataclass(frozen=True)
class HostState:
    sysctls: dict[str, str]
    kube_iptables_lines: list[str]
    cluster_interfaces: list[str]
    existing_paths: list[str]
    mounts_below_paths: list[str]


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "<absent>"


def _iptables_save() -> str:
    tool = shutil.which("iptables-save") or "/usr/sbin/iptables-save"
    done = subprocess.run([tool], capture_output=True, text=True, check=False)
    return done.stdout


def snapshot() -> HostState:
    """The host's state as seen from this process's namespaces."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    names = [line.split(": ")[1].split("@")[0] for line in links.stdout.splitlines()]
    mount_points = [
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]
    return HostState(
        sysctls={name: _sysctl(name) for name in SYSCTLS},
        kube_iptables_lines=[
            line for line in _iptables_save().splitlines() if "KUBE-" in line or "CNI-" in line
        ],
        cluster_interfaces=[n for n in names if n in INTERFACES or n.startswith("veth")],
        existing_paths=[p for p in PATHS if Path(p).exists()],
        mounts_below_paths=[m for m in mount_points if m.startswith(PATHS)],
    )
