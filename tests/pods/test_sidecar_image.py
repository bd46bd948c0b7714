"""The sidecar image serves exactly the upload dir schemes the operator admits for it
(``trialsync.contract.IMAGE_SCHEMES``): the operator never admits a SyncConfig whose
sidecar would then fail at start for want of a backend; and one it does not serve is refused
there too, naming the package it needs."""

from __future__ import annotations

import json

import pytest

from localcluster.harness import Cluster
from tests.pods.trial_pods import RESTRICTED
from trialsync import contract

pytestmark = pytest.mark.timeout(300)

#: Run in the sidecar image: the backend check the sidecar makes at start, per scheme.
CHECK = """
import json, sys
from trialsync.config import installed_backend
verdicts = {}
for scheme in sys.argv[1:]:
    try:
        installed_backend(scheme, f"{scheme}://bucket/exp")
        verdicts[scheme] = "served"
    except ValueError as exc:
        verdicts[scheme] = str(exc)
print(json.dumps(verdicts))
"""


def test_the_image_serves_the_schemes_the_operator_admits_and_no_other(
    cluster: Cluster, cluster_namespace: str
) -> None:
    schemes = [*contract.IMAGE_SCHEMES, "abfs"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "backends"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "check",
                    "image": cluster.images.sidecar,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", CHECK, *schemes],
                    "securityContext": RESTRICTED | {"runAsUser": 65532},
                }
            ],
        },
    }
    cluster.apply(pod, cluster_namespace)
    done = cluster.poll_pod(
        "backends",
        cluster_namespace,
        lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
        "finished",
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    verdicts = json.loads(cluster.logs("backends", cluster_namespace, "check").splitlines()[-1])
    assert {s: verdicts[s] for s in contract.IMAGE_SCHEMES} == {
        s: "served" for s in contract.IMAGE_SCHEMES
    }
    assert "hdfs" in contract.IMAGE_SCHEMES  # through hdfs-native, which the image has
    assert "needs adlfs, which is not installed" in verdicts["abfs"]
