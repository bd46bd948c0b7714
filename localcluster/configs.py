"""The configuration files of the node's components, as text.

Pure functions of the instance's paths: nothing here starts anything. Every path a
component would otherwise default to a host location (/var/lib/containerd, /etc/cni,
/opt/cni/bin, /var/log/pods, ...) is set to one under the instance's state directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from localcluster import layout
from localcluster.layout import ClusterFiles

#: The sandbox image every pod starts with, built from tools/pause by images/build.py.
PAUSE_IMAGE_NAME = "docker.io/trialsync/pause"
#: How often the kubelet syncs each pod, which bounds how late a changed Secret reaches its
#: volumes. 60 s by default; shorter here so tests of Secret rotation wait less (the cost is
#: a little kubelet CPU on a node of few pods).
KUBELET_SYNC_FREQUENCY_S = 10


def kubelet_config(files: ClusterFiles) -> str:
    """KubeletConfiguration. Unknown fields are ignored with only a log line, so every
    name here was checked against k8s.io/kubelet/config/v1beta1."""
    pki = files.pki
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine has cgroup v1 only; v1.35+ refuses it unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        # Pods of this instance only, apart from the host's and other instances' cgroups.
        "cgroupRoot": files.cgroup_root,
        "cgroupsPerQOS": True,
        "containerRuntimeEndpoint": f"unix://{files.containerd_socket}",
        "imageServiceEndpoint": f"unix://{files.containerd_socket}",
        "address": layout.NODE_IP,
        "port": layout.KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": layout.KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        # The apiserver authenticates with its kubelet client certificate (logs, exec,
        # port-forward); everything else is refused.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [layout.DNS_SERVICE_IP],
        "clusterDomain": layout.CLUSTER_DOMAIN,
        # Not the host's resolv.conf: its search domains would leak into every pod.
        "resolvConf": str(files.etc / "resolv.conf"),
        "podLogsDir": str(files.root / "pod-logs"),
        "volumePluginDir": str(files.root / "volume-plugins"),
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        # There is no registry to pull from again: never garbage-collect imported images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # Other work shares this disk; evict only when it is really full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": f"{KUBELET_SYNC_FREQUENCY_S}s",
        "maxPods": 110,
        "logging": {"format": "text"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def containerd_config(files: ClusterFiles, bin_dir: Path, pause_image: str) -> str:
    """containerd's config.toml, in the version ``containerd config default`` prints. Written
    by hand rather than with a TOML library: the values are plain strings and lists."""
    state = files.root / "containerd"

    def q(value: str | Path) -> str:
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string

    return f"""\
version = 4
root = {q(state / "root")}
state = {q(state / "state")}
temp = {q(files.tmp)}
# The default would read the host's /etc/containerd/conf.d.
imports = []
# Snapshotters that need C libraries were left out of the build; overlayfs is used.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[plugins."io.containerd.server.v1.grpc"]
  address = {q(files.containerd_socket)}

[plugins."io.containerd.server.v1.ttrpc"]
  address = {q(f"{files.containerd_socket}.ttrpc")}

[plugins."io.containerd.internal.v1.opt"]
  path = {q(state / "opt")}

[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = {q(state / "image-verifier")}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {q(pause_image)}

[plugins."io.containerd.cri.v1.runtime"]
  # This machine's root lacks CAP_SYS_RESOURCE: runc cannot lower a process's
  # oom_score_adj below its parent's, so never ask it to.
  restrict_oom_score_adj = true
  # The hugetlb controller sits on the cgroup2 mount here, not with the v1 hierarchies.
  tolerate_missing_hugetlb_controller = true
  disable_apparmor = true
  # Pod network namespaces are bind-mounted here instead of /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {q(bin_dir / "runc")}
        Root = {q(state / "runc")}
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{q(bin_dir / "cni")}]
    conf_dir = {q(files.cni_conf_dir)}
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_conflist(files: ClusterFiles) -> str:
    """The pod network: a bridge on the node with host-local addresses, plus hostPort."""
    conflist = {
        "cniVersion": "1.0.0",
        "name": "trialsync",
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.BRIDGE,
                "isGateway": True,
                # Pods only talk inside the namespace: nothing to masquerade.
                "ipMasq": False,
                # A pod reaching a Service that lands on itself goes out and back in.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(files.root / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conflist, indent=2)


def corefile(files: ClusterFiles) -> str:
    """CoreDNS on the node's address, answering for the cluster domain only (the namespace
    has no route to any upstream resolver)."""
    return f"""\
.:53 {{
    bind {layout.NODE_IP}
    errors
    health 127.0.0.1:{layout.COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{layout.COREDNS_READY_PORT}
    kubernetes {layout.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {files.etc / "coredns.kubeconfig"}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
}}
"""


def kube_proxy_config(files: ClusterFiles) -> str:
    """KubeProxyConfiguration, iptables mode (kind's default)."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(files.etc / "kube-proxy.kubeconfig")},
        "hostnameOverride": layout.NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": layout.CLUSTER_CIDR,
        "healthzBindAddress": f"127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{layout.KUBE_PROXY_METRICS_PORT}",
        # The conntrack table size and timeouts are global sysctls: 0 leaves them alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


def resolv_conf() -> str:
    """For pods with dnsPolicy Default: the cluster DNS is all there is to ask."""
    return f"nameserver {layout.DNS_SERVICE_IP}\n"


def bootstrap_manifests() -> str:
    """Objects a kubeadm cluster's addons would create: CoreDNS's RBAC and its Service.

    CoreDNS runs as a process on the node, so kube-dns is a Service without a selector
    whose EndpointSlice names the node's address; kube-proxy routes it like any other.
    """
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
            },
            "spec": {
                "clusterIP": layout.DNS_SERVICE_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "cluster.trialsync.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [layout.NODE_IP],
                    "conditions": {"ready": True},
                    "nodeName": layout.NODE_NAME,
                }
            ],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    ]
    return yaml.safe_dump_all(objects, sort_keys=False)
