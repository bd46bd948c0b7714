"""What a test sees of the cluster: the same handle for the local cluster and for kind.

:class:`Cluster` wraps the :class:`~localcluster.control_plane.Kube` handle (kubectl, API
clients), the image references the tests run, and the two ways traffic crosses between the
host and the pods:

- :meth:`Cluster.expose`: a server of the host (the test's SeaweedFS, a webhook) becomes
  reachable from pods and from the apiserver at ``(pod_reachable_host, port)``;
- :meth:`Cluster.forward`: a host loopback port that reaches an address inside the
  cluster (a pod, a Service), on the local cluster, or on an external cluster that runs in
  a network namespace of this machine (kind of ``make kind-up``: ``netns``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import layout, linux
from localcluster.control import LocalCluster
from localcluster.control_plane import Kube
from localcluster.forwarding import Forwarder, in_netns, listen_loopback
from localcluster.isolation import HostState

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Images:
    """References of the images the tests run (built by images/build.py, or loaded into
    kind by the user under the same names)."""

    sidecar: str
    operator: str
    #: A Ray for KubeRay with trialsync's storage filesystem (images/ray).
    ray: str


class Cluster:
    """A cluster with a node: the local one, or the one TRIALSYNC_KUBECONFIG names."""

    def __init__(
        self,
        kube: Kube,
        images: Images,
        local: LocalCluster | None,
        pod_reachable_host: str | None,
        host_before: HostState | None = None,
        netns: Path | None = None,
    ) -> None:
        self.kube = kube
        self.images = images
        self.local = local
        #: The host's state just before this session started the local cluster.
        self.host_before = host_before
        #: An address of this machine that pods and the apiserver reach: the node's address
        #: on the local cluster, TRIALSYNC_CLUSTER_HOST_IP (e.g. kind's gateway) otherwise.
        self.pod_reachable_host = pod_reachable_host
        #: An external cluster's network namespace on this machine (TRIALSYNC_CLUSTER_NETNS,
        #: which `make kind-up` prints): its pods reach ``pod_reachable_host`` there.
        self.netns = netns

    # ------------------------------------------------------------------ crossings

    def expose(self, port: int) -> Forwarder:
        """Make the host's ``127.0.0.1:port`` reachable from the cluster at
        ``(pod_reachable_host, forwarder.address[1])``; close the returned forwarder when
        done."""
        if self.local is not None:
            return self.local.reach_host(port, layout.NODE_IP, 0)
        if self.pod_reachable_host is None:
            raise RuntimeError(
                "no address of this machine is reachable from the cluster's pods: set "
                "TRIALSYNC_CLUSTER_HOST_IP (for kind, its docker network's gateway)"
            )
        host = self.pod_reachable_host
        if self.netns is not None:
            # The listener is made in the cluster's namespace; connections are dialled
            # from this thread's (the host's) network.
            listener = in_netns(self.netns, lambda: socket.create_server((host, 0)))
        else:
            listener = socket.create_server((host, 0))
        return Forwarder(listener, ("127.0.0.1", port)).start()

    def popen_in_netns(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a host program in the network where pod IPs are reachable: the local
        cluster's namespace, or an external cluster's (``netns``)."""
        if self.local is not None:
            return self.local.popen_in_netns(argv, **kwargs)
        if self.netns is None:
            raise RuntimeError("popen_in_netns() needs the local cluster or a netns")
        return subprocess.Popen(
            ["nsenter", f"--net={self.netns}", "--", *argv],
            preexec_fn=linux.die_with_parent,
            **kwargs,
        )

    @contextlib.contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        """A host loopback (host, port) that reaches ``host:port`` inside the cluster."""
        if self.local is not None:
            forwarder = self.local.forward(host, port)
        elif self.netns is not None:
            forwarder = Forwarder(listen_loopback(), (host, port), self.netns).start()
        else:
            raise RuntimeError(
                "forward() needs the local cluster or TRIALSYNC_CLUSTER_NETNS; "
                "use kubectl port-forward"
            )
        try:
            yield forwarder.address
        finally:
            forwarder.close()

    # ------------------------------------------------------------------ objects

    def apply(self, manifest: Manifest, namespace: str) -> None:
        self.kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def get(self, kind: str, name: str, namespace: str) -> Manifest:
        out = self.kube.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
        result: Manifest = json.loads(out)
        return result

    def logs(self, pod: str, namespace: str, container: str) -> str:
        """``kubectl logs`` of one container (also of a terminated one, while the pod exists)."""
        return self.kube.kubectl("logs", pod, "-n", namespace, "-c", container).stdout

    def wait_for(
        self, kind: str, name: str, namespace: str, condition: str, timeout: float = 120
    ) -> None:
        """``kubectl wait --for=<condition>``; raises with the object's state if it times out."""
        result = self.kube.kubectl(
            "wait",
            f"--for={condition}",
            f"{kind}/{name}",
            "-n",
            namespace,
            f"--timeout={int(timeout)}s",
            check=False,
            timeout=timeout + 30,
        )
        if result.returncode != 0:
            state = self.kube.kubectl(
                "get", kind, name, "-n", namespace, "-o", "yaml", check=False
            ).stdout
            events = self.kube.kubectl(
                "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False
            ).stdout
            raise AssertionError(
                f"{kind}/{name} did not reach {condition} in {timeout}s: {result.stderr}\n"
                f"{state}\nevents:\n{events}"
            )

    def poll_pod(
        self,
        name: str,
        namespace: str,
        until: Callable[[Manifest], bool],
        what: str,
        timeout: float = 120,
    ) -> Manifest:
        """Poll a pod every half second until ``until(pod)``; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            pod = self.get("pod", name, namespace)
            if until(pod):
                return pod
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"pod {name}: not {what} within {timeout}s; status: "
                    f"{json.dumps(pod.get('status'), indent=1)}"
                )
            time.sleep(0.5)


def container_status(pod: Manifest, name: str) -> Manifest:
    """The status of container or init container ``name`` of ``pod`` (empty if none yet)."""
    status = pod.get("status", {})
    for entry in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        if entry.get("name") == name:
            result: Manifest = entry
            return result
    return {}


def workload(name: str) -> str:
    """The source of ``localcluster/<name>.py``: pods run it with ``python3 -c``."""
    return (Path(__file__).resolve().parent / f"{name}.py").read_text()
