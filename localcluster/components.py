"""The command line of every process of the cluster, as the launcher starts them.

All of them run inside the cluster's namespaces, so they listen on fixed ports; only the
apiserver's port is per instance, because the same number is forwarded from the host's
loopback and one kubeconfig then serves both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from localcluster import layout
from localcluster.layout import ClusterFiles

#: The order the launcher starts them in; it stops them in reverse.
ORDER = (
    "etcd",
    "containerd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "coredns",
    "ray-operator",
)


@dataclass(frozen=True)
class Component:
    """One process: its name (and log file name), argv and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def components(files: ClusterFiles, bin_dir: Path, api_port: int) -> dict[str, Component]:
    """Every component of the instance, keyed by name (see ORDER)."""
    pki, etc, b = files.pki, files.etc, bin_dir
    etcd_url = f"http://127.0.0.1:{layout.ETCD_CLIENT_PORT}"
    peer_url = f"http://127.0.0.1:{layout.ETCD_PEER_PORT}"

    def own(name: str) -> list[str]:
        """A control-plane component's identity, also used to check callers of its port."""
        kubeconfig = etc / f"{name}.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ]

    result = [
        Component(
            "etcd",
            [
                str(b / "etcd"),
                "--name=trialsync",
                f"--data-dir={files.root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=trialsync={peer_url}",
                # Throwaway data: skipping fsync makes every write much faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        ),
        Component(
            "containerd",
            [str(b / "containerd"), f"--config={etc / 'containerd.toml'}", "--log-level=warn"],
            # The shim and runc are found next to containerd; ctr imports go through TMPDIR.
            {"PATH": f"{b}:/usr/sbin:/usr/bin:/sbin:/bin"},
        ),
        Component(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=0.0.0.0",
                f"--advertise-address={layout.NODE_IP}",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                # As kubeadm sets them: the controller-manager and the scheduler read these
                # to authenticate callers of their ports, and log errors without them. No
                # certificate named front-proxy-client is ever issued, so nothing can use
                # the headers.
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--kubelet-preferred-address-types=InternalIP",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={layout.SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        ),
        Component(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                *own("kube-controller-manager"),
                # Published to every namespace as kube-root-ca.crt: pods verify the
                # apiserver with it.
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
                f"--cluster-cidr={layout.CLUSTER_CIDR}",
                "--allocate-node-cidrs=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={layout.CONTROLLER_MANAGER_PORT}",
                f"--cert-dir={files.root / 'controller-manager-certs'}",
                # Its default, /usr/libexec/kubernetes/..., is created on the host's /usr.
                f"--flex-volume-plugin-dir={files.root / 'volume-plugins'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        ),
        Component(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                *own("kube-scheduler"),
                "--bind-address=127.0.0.1",
                f"--secure-port={layout.SCHEDULER_PORT}",
                f"--cert-dir={files.root / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        ),
        Component(
            "kubelet",
            [
                str(b / "kubelet"),
                f"--config={etc / 'kubelet.yaml'}",
                f"--kubeconfig={etc / 'kubelet.kubeconfig'}",
                f"--root-dir={files.kubelet_root}",
                f"--cert-dir={files.kubelet_root / 'pki'}",
                f"--hostname-override={layout.NODE_NAME}",
                f"--node-ip={layout.NODE_IP}",
                "--v=1",
            ],
        ),
        Component(
            "kube-proxy",
            [str(b / "kube-proxy"), f"--config={etc / 'kube-proxy.yaml'}"],
            # iptables-restore and friends come from the machine (Debian's iptables).
            {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        ),
        Component("coredns", [str(b / "coredns"), "-conf", str(etc / "Corefile")]),
        # KubeRay, so that RayCluster and RayJob objects behave as they do for users.
        Component(
            "ray-operator",
            [
                str(b / "ray-operator"),
                f"-kubeconfig={etc / 'ray-operator.kubeconfig'}",
                "-enable-leader-election=false",
                f"-metrics-addr=127.0.0.1:{layout.RAY_OPERATOR_METRICS_PORT}",
                f"-health-probe-bind-address=127.0.0.1:{layout.RAY_OPERATOR_HEALTH_PORT}",
                "-log-stdout-encoder=console",
            ],
        ),
    ]
    by_name = {c.name: c for c in result}
    assert tuple(by_name) == ORDER, "components() and ORDER disagree"
    return by_name
