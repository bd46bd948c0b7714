"""pytest fixtures for the tests that need a node (``tests/pods/``).

``cluster`` (session) starts the local cluster once per session, or uses the cluster that
TRIALSYNC_KUBECONFIG names (kind, or a ``make cluster-up`` cluster, which is then used with
its network namespace). Where the local cluster cannot run (not Linux, not root, tools
missing) the tests that need it skip with that reason; with TRIALSYNC_REQUIRE_CLUSTER=1
(CI) that is an error instead. A cluster that fails to start is always an error.

``cluster_namespace`` gives each test a fresh namespace, deleted afterwards.
``cluster_s3`` serves the session's SeaweedFS to pods (see :class:`ClusterS3`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import artifacts, control, isolation
from localcluster.cluster_s3 import ClusterS3
from localcluster.control_plane import Kube, external_cluster, kubectl_path
from localcluster.harness import Cluster, Images
from localcluster.object_stores import S3Server
from tests.support.requirements import external_cluster_only, unavailable

HOST_IP_ENV = "TRIALSYNC_CLUSTER_HOST_IP"
#: The network namespace an external cluster runs in on this machine (kind of
#: `make kind-up`), where HOST_IP_ENV is an address of it.
NETNS_ENV = "TRIALSYNC_CLUSTER_NETNS"

_STARTUP: list[str] = []
_TIMINGS: dict[str, float] = {}
#: The session's own local cluster, and the last test that needs it: the cluster is
#: stopped right after that test, so the rest of the session has the machine to itself.
_OWNED: list[control.LocalCluster] = []
_LAST_USER: list[str] = []


def _start_local(workdir: Path) -> tuple[Cluster, control.LocalCluster]:
    reason = control.unsupported_reason()
    if reason:
        unavailable(reason)
    bin_dir = artifacts.node_bin_dir()
    manifest = artifacts.image_manifest()
    host_before = isolation.snapshot()
    local = control.start(
        bin_dir=bin_dir,
        kubectl=Path(kubectl_path()),
        images=[Path(entry["archive"]) for entry in manifest.values()],
        pause_image=manifest["pause"]["ref"],
    )
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in local.state.timings.items())
    _STARTUP.append(
        f"cluster: node Ready and addons up in {local.startup_seconds:.1f}s ({timings})"
    )
    kube = Kube(
        kubeconfig=local.kubeconfig,
        server=local.server,
        local=False,
        workdir=workdir,
        helm_path=bin_dir / "helm" if (bin_dir / "helm").is_file() else None,
    )
    images = Images(
        sidecar=manifest["sidecar"]["ref"],
        operator=manifest["operator"]["ref"],
        ray=manifest["ray"]["ref"],
    )
    return Cluster(kube, images, local, local.node_ip, host_before), local


def _use_existing(kubeconfig: Path, workdir: Path) -> Cluster:
    kube = external_cluster(kubeconfig, workdir)
    images = Images(
        sidecar=f"docker.io/trialsync/sidecar:{artifacts.version()}",
        operator=f"docker.io/trialsync/operator:{artifacts.version()}",
        ray=f"docker.io/trialsync/ray:{artifacts.RAY_VERSION}",
    )
    state = kubeconfig.parent / "cluster.json"
    if state.is_file():  # a `make cluster-up` cluster: reach its network namespace too
        local = control.attach(state)
        _STARTUP.append(f"cluster: the running local cluster {local.state.instance_id}")
        return Cluster(kube, images, local, local.node_ip)
    _STARTUP.append(f"cluster: existing cluster {kube.server}")
    netns = os.environ.get(NETNS_ENV)
    return Cluster(
        kube,
        images,
        None,
        os.environ.get(HOST_IP_ENV) or None,
        netns=Path(netns) if netns else None,
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's cluster with a node (see the module docstring)."""
    workdir = Path(tempfile.mkdtemp(prefix="trialsync-cluster-"))
    external = os.environ.get("TRIALSYNC_KUBECONFIG")
    if external:
        yield _use_existing(Path(external), workdir)
        return
    handle, local = _start_local(workdir)
    _OWNED.append(local)
    try:
        yield handle
    finally:
        local.stop()  # idempotent: usually done already after the last test that needed it


@contextlib.contextmanager
def fresh_namespace(cluster: Cluster, prefix: str = "ts") -> Iterator[str]:
    """A new namespace, deleted (without waiting) afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    # The controller-manager creates `default` too; creating it here means a pod created
    # right away is not refused for want of it.
    cluster.kube.create_namespace(name)
    try:
        yield name
    finally:
        cluster.kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def cluster_namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test."""
    with fresh_namespace(cluster) as name:
        yield name


@pytest.fixture(scope="session")
def cluster_s3(cluster: Cluster, seaweedfs: S3Server) -> Iterator[ClusterS3]:
    """The session's SeaweedFS, reachable from the cluster's pods (see ClusterS3)."""
    if cluster.pod_reachable_host is None:
        # Only an external cluster can be out of the pods' reach: the local one never is.
        external_cluster_only(f"its pods cannot reach this machine: set {HOST_IP_ENV}")
    port = int(seaweedfs.endpoint_url.rsplit(":", 1)[1])
    forwarder = cluster.expose(port)
    try:
        yield ClusterS3(seaweedfs, cluster.pod_reachable_host, forwarder.address[1])
    finally:
        forwarder.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the cluster with ``cluster`` (``-m "not cluster"`` skips them)."""
    users = [item for item in items if "cluster" in getattr(item, "fixturenames", ())]
    for item in users:
        item.add_marker(pytest.mark.cluster)
    _LAST_USER[:] = [users[-1].nodeid] if users else []


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the session's cluster once the last test that needs it is torn down."""
    if _OWNED and _LAST_USER and item.nodeid == _LAST_USER[0]:
        for local in _OWNED:
            local.stop()


@pytest.fixture(scope="session")
def cluster_timings() -> dict[str, float]:
    """Durations a test measured (name -> seconds), printed at the end of the session."""
    return _TIMINGS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _STARTUP:
        terminalreporter.write_line(line)
    for name, seconds in _TIMINGS.items():
        terminalreporter.write_line(f"cluster: {name} in {seconds:.1f}s")
