"""pytest fixtures of the control plane: ``kube`` (session) and ``k8s_namespace``.

``kube`` starts etcd and kube-apiserver (``localcluster.control_plane``) once per
session, or uses the cluster TRIALSYNC_KUBECONFIG names (then nothing is started).
Every test that uses it is marked ``k8s``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.control_plane import Kube, external_cluster, start_control_plane

_STARTUP: list[str] = []


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The test cluster: local etcd + kube-apiserver, or TRIALSYNC_KUBECONFIG's cluster."""
    external = os.environ.get("TRIALSYNC_KUBECONFIG")
    if external:
        handle = external_cluster(Path(external), tmp_path_factory.mktemp("kube"))
        _STARTUP.append(f"control plane: external cluster {handle.server}")
        yield handle
        return
    # A short path outside pytest's basetemp keeps unix socket paths (etcd) well under limits.
    workdir = Path(tempfile.mkdtemp(prefix="trialsync-kube-"))
    handle = start_control_plane(workdir)
    _STARTUP.append(
        f"control plane: kube-apiserver ready at {handle.server} in {handle.startup_seconds:.1f}s"
    )
    try:
        yield handle
    finally:
        handle.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def k8s_namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace (with a default ServiceAccount) for one test.

    It is deleted afterwards without waiting: with no controller-manager locally it stays
    Terminating, which is harmless because the whole cluster is discarded.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the cluster with ``k8s`` so ``-m "not k8s"`` skips them."""
    for item in items:
        if "kube" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.k8s)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how long the control plane took to start (or which cluster was used)."""
    for line in _STARTUP:
        terminalreporter.write_line(line)
