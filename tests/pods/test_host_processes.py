"""Host processes beside the local cluster, as the operator will run in its tests: a webhook
the apiserver calls, and a server that pods reach on the node's address."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest

from localcluster import layout
from localcluster.cluster_s3 import ClusterS3
from localcluster.control import LocalCluster
from localcluster.harness import Cluster, container_status
from localcluster.processes import free_port
from tests.pods.trial_pods import (
    MANIFEST_NAME,
    RESTRICTED,
    SIDECAR_NAME,
    TRIAL_ROOT,
    bucket_objects,
    s3_spec,
    syncconfig_view,
    trainer,
)
from tests.support.requirements import external_cluster_only
from tests.support.webhook import WebhookServer, json_patch, mutating_webhook_configuration
from trialsync_operator import names
from trialsync_operator.admission import injection, patch
from trialsync_operator.settings import Defaults

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def local(cluster: Cluster) -> LocalCluster:
    if cluster.local is None:
        external_cluster_only("host processes in the cluster's network need the local cluster")
    return cluster.local


def test_a_webhook_on_the_hosts_loopback_injects_the_sidecar_into_a_pod_that_runs(
    cluster: Cluster, local: LocalCluster, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    marker = uuid.uuid4().hex[:10]
    cluster.kube.kubectl("label", "namespace", ns, f"trialsync-webhook-test={marker}")
    bucket = cluster_s3.server.make_bucket()
    endpoint = cluster_s3.install(cluster, ns)
    view = syncconfig_view(cluster, ns, s3_spec(cluster_s3, endpoint, f"s3://{bucket}/x"))

    def inject_sidecar(request: dict[str, Any]) -> dict[str, Any]:
        # The operator's injection and its JSON patch, served from a plain test webhook.
        pod = request["object"]
        defaults = Defaults(image=cluster.images.sidecar)
        result = injection.plan(pod, request["namespace"], lambda ns, n: view, defaults)
        assert result.patch is not None
        return json_patch(patch.json_patch(pod, result.patch))

    # The server listens on the host's 127.0.0.1; the same address and port inside the
    # namespace (where the apiserver is) is forwarded to it, so its URL works unchanged.
    with WebhookServer(inject_sidecar) as server, local.reach_host(server.port):
        config = mutating_webhook_configuration(
            f"inject-{marker}",
            url=server.url(),
            ca_bundle=server.tls.ca_bundle,
            namespace_selector={"matchLabels": {"trialsync-webhook-test": marker}},
        )
        cluster.kube.kubectl("apply", "-f", "-", input=json.dumps(config))
        try:
            cluster.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": "plain",
                        "annotations": {
                            names.CONFIG_ANNOTATION: view.name,
                            names.MOUNT_PATH_ANNOTATION: TRIAL_ROOT,
                        },
                    },
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            trainer(cluster.images.sidecar, trial="t", checkpoints=1, trigger=True)
                        ],
                    },
                },
                ns,
            )
        finally:
            cluster.kube.kubectl("delete", "mutatingwebhookconfiguration", f"inject-{marker}")

    assert [(r["operation"], r["name"]) for r in server.requests] == [("CREATE", "plain")]
    done = cluster.poll_pod(
        "plain", ns, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), "finished"
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert container_status(done, SIDECAR_NAME)["state"]["terminated"]["exitCode"] == 0
    objects = bucket_objects(cluster_s3.server, bucket)
    assert f"x/exp/t/checkpoint_000001/{MANIFEST_NAME}" in objects


def test_pods_reach_a_host_process_started_in_the_clusters_network(
    cluster: Cluster, local: LocalCluster, cluster_namespace: str
) -> None:
    port = free_port()
    server = local.popen_in_netns(
        [sys.executable, "-m", "http.server", "--bind", layout.NODE_IP, str(port)],
        cwd=str(layout.cache_dir()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        "image": cluster.images.sidecar,
                        "command": ["python3", "-c"],
                        "args": [
                            "import time, urllib.request\n"
                            "for _ in range(60):\n"
                            "    try:\n"
                            f"        urllib.request.urlopen('http://{layout.NODE_IP}:{port}/')\n"
                            "        break\n"
                            "    except OSError:\n"
                            "        time.sleep(0.5)\n"
                            "else:\n"
                            "    raise SystemExit('unreachable')\n"
                        ],
                        "securityContext": RESTRICTED | {"runAsUser": 65532},
                    }
                ],
            },
        }
        cluster.apply(client, cluster_namespace)
        done = cluster.poll_pod(
            "client",
            cluster_namespace,
            lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
            "finished",
        )
        assert done["status"]["phase"] == "Succeeded", cluster.logs(
            "client", cluster_namespace, "client"
        )
    finally:
        server.terminate()
        server.wait(10)
