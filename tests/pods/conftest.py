"""Fixtures of the pod tests: the operator as a process beside the local cluster, and a
"pods" section of figures at the end of the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from localcluster.harness import Cluster
from tests.support import figures
from tests.support.operator_process import Operator, delete_webhooks, start_operator
from tests.support.requirements import external_cluster_only

WEBHOOK = "trialsync-cluster-flow"


@pytest.fixture(scope="module")
def operator_beside(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    if cluster.local is None:
        external_cluster_only("the operator process needs the local cluster's network")
    operator = start_operator(
        cluster.kube,
        tmp_path_factory.mktemp("operator"),
        extra_args=["--sidecar-image", cluster.images.sidecar],
        webhook_name=WEBHOOK,
    )
    try:
        with cluster.local.reach_host(operator.webhook_port):
            yield operator
    finally:
        delete_webhooks(cluster.kube, WEBHOOK)
        operator.stop()


@pytest.fixture
def pod_figures(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report(**figures)``: one line of this test's figures in the end-of-run summary."""
    return figures.reporter(pytestconfig, request.node.name, "pods")
