"""Write one instance's certificates, kubeconfigs and configuration files; return its plan."""

from __future__ import annotations

from pathlib import Path

from localcluster import configs, layout
from localcluster.components import components
from localcluster.control_plane import write_kubeconfig
from localcluster.layout import ClusterFiles
from localcluster.pki import ClusterCA, KeyPair, service_account_keys
from localcluster.plan import Plan

ADMIN_USER = "trialsync-admin"

#: Client identities as a kubeadm cluster names them, so RBAC's bootstrap roles apply:
#: kubeconfig name -> (user, groups).
IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "kube-controller-manager": ("system:kube-controller-manager", ()),
    "kube-scheduler": ("system:kube-scheduler", ()),
    "kubelet": (f"system:node:{layout.NODE_NAME}", ("system:nodes",)),
    "kube-proxy": ("system:kube-proxy", ()),
    "coredns": ("system:coredns", ()),
    # KubeRay's own chart grants its operator wide rights on pods, services, jobs and its
    # CRDs in every namespace; here it gets them all.
    "ray-operator": ("kuberay-operator", ("system:masters",)),
}


def prepare(
    files: ClusterFiles,
    *,
    bin_dir: Path,
    kubectl: Path,
    api_port: int,
    images: list[Path],
    pause_image: str,
    api_listener_fd: int,
    report_fd: int,
    lock_fd: int,
) -> Plan:
    """Create the instance's files under ``files.root`` (which must exist) and its plan."""
    for d in (files.pki, files.etc, files.cni_conf_dir, files.logs, files.sysctls, files.tmp):
        d.mkdir(parents=True, exist_ok=True)

    ca = ClusterCA.create(f"trialsync-cluster-{files.instance_id}")
    (files.pki / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue(
        "kube-apiserver",
        dns_names=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{layout.CLUSTER_DOMAIN}",
        ],
        ip_addresses=["127.0.0.1", layout.NODE_IP, layout.KUBERNETES_SERVICE_IP],
    ).write(files.pki, "apiserver")
    ca.issue("kube-apiserver-kubelet-client", organizations=["system:masters"]).write(
        files.pki, "apiserver-kubelet-client"
    )
    ca.issue(layout.NODE_NAME, dns_names=[layout.NODE_NAME], ip_addresses=[layout.NODE_IP]).write(
        files.pki, "kubelet-serving"
    )
    service_account_keys().write(files.pki, "sa")
    (files.pki / "sa.crt").rename(files.pki / "sa.pub")

    server = f"https://127.0.0.1:{api_port}"

    def kubeconfig(path: Path, user: str, pair: KeyPair) -> None:
        write_kubeconfig(
            path, server=server, ca_pem=ca.cert_pem, cert_pem=pair.cert, key_pem=pair.key, user=user
        )

    admin = ca.issue(ADMIN_USER, organizations=["system:masters"])
    kubeconfig(files.kubeconfig, ADMIN_USER, admin)
    admin.write(files.pki, "admin")
    for name, (user, groups) in IDENTITIES.items():
        kubeconfig(files.etc / f"{name}.kubeconfig", user, ca.issue(user, organizations=groups))

    (files.etc / "kubelet.yaml").write_text(configs.kubelet_config(files))
    (files.etc / "containerd.toml").write_text(
        configs.containerd_config(files, bin_dir, pause_image)
    )
    (files.cni_conf_dir / "10-trialsync.conflist").write_text(configs.cni_conflist(files))
    (files.etc / "Corefile").write_text(configs.corefile(files))
    (files.etc / "kube-proxy.yaml").write_text(configs.kube_proxy_config(files))
    (files.etc / "resolv.conf").write_text(configs.resolv_conf())
    (files.etc / "bootstrap.yaml").write_text(configs.bootstrap_manifests())

    plan = Plan(
        root=str(files.root),
        api_port=api_port,
        bin_dir=str(bin_dir),
        kubectl=str(kubectl),
        images=[str(p) for p in images],
        components=components(files, bin_dir, api_port),
        api_listener_fd=api_listener_fd,
        report_fd=report_fd,
        lock_fd=lock_fd,
    )
    plan.dump(files.plan)
    return plan
