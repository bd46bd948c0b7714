"""Seed scenario 3 on a real node: workers sync their trial dirs to the head pod through a
Service, by its DNS name, with no object storage at all."""

from __future__ import annotations

import json

import pytest

from localcluster.harness import Cluster, Manifest, container_status
from tests.pods.trial_pods import (
    FAST_SPEC,
    MANIFEST_NAME,
    RESTRICTED,
    SIDECAR_NAME,
    head_objects,
    injected_pod,
    syncconfig_view,
    trainer,
    trainer_events,
    trial_volume_files,
    written_files,
)
from tests.support.sidecar_process import wait_for
from trialsync import contract
from trialsync_operator import names
from trialsync_operator.syncconfig import ConfigView

pytestmark = pytest.mark.timeout(600)


def _head(cluster: Cluster, view: ConfigView) -> Manifest:
    """The head pod: a driver container that idles until the test deletes the namespace,
    and the injected sidecar as the head."""
    driver = {
        "name": "driver",
        "image": cluster.images.sidecar,
        "command": ["python3", "-c", "import time; time.sleep(3600)"],
        "securityContext": RESTRICTED,
    }
    head = injected_pod(cluster, view, "head", [driver], role="head", grace_seconds=5)
    head["spec"].pop("restartPolicy")
    return head


def test_workers_sync_trial_dirs_to_the_head_through_its_service(
    cluster: Cluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    # No uploadDir: workers sync to the head node, through the Service and with the token
    # Secret the operator would make.
    view = syncconfig_view(cluster, ns, FAST_SPEC)
    head_objects(cluster, view)

    # The head: a driver container that idles, and the sidecar serving the head-node
    # service on its port.
    head = _head(cluster, view)
    head_sidecar = next(c for c in head["spec"]["initContainers"] if c["name"] == SIDECAR_NAME)
    assert [p["containerPort"] for p in head_sidecar["ports"]] == [
        contract.HTTP_PORT,
        contract.HEAD_PORT,
    ]
    cluster.apply(head, ns)
    cluster.wait_for("pod", "head", ns, "condition=Ready")

    workers = {}
    for i in range(2):
        name = f"worker-{i}"
        workers[name] = f"trial_{i}"
        worker = trainer(
            cluster.images.sidecar, trial=f"trial_{i}", checkpoints=2, size=65536, trigger=True
        )
        cluster.apply(injected_pod(cluster, view, name, [worker]), ns)
    for name in workers:
        done = cluster.poll_pod(
            name, ns, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), "finished", 180
        )
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert container_status(done, SIDECAR_NAME)["state"]["terminated"]["exitCode"] == 0

    on_head = trial_volume_files(cluster, "head", ns, "driver")
    for name, trial in workers.items():
        written = written_files(trainer_events(cluster.logs(name, ns, "trainer")))
        assert len(written) == 4
        for rel, sha in written.items():
            assert on_head.get(f"exp/{trial}/{rel}") == sha, (trial, rel, sorted(on_head))
        for checkpoint in ("checkpoint_000001", "checkpoint_000002"):
            assert f"exp/{trial}/{checkpoint}/{MANIFEST_NAME}" in on_head
        assert f"exp/{trial}/progress.csv" in on_head  # the whole trial dir, artifacts too


#: A pod that labels itself the head: it records what each connection to the head port
#: sends first, and answers nothing.
IMPOSTER = """
import json, socket
server = socket.create_server(("", PORT))
while True:
    conn, _ = server.accept()
    conn.settimeout(5)
    try:
        data = conn.recv(65536)
    except OSError:
        data = b""
    print(json.dumps({
        "tls_hello": data[:1] == b"\\x16",
        "http": data.split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"HEAD", b"DELETE"),
        "token": b"Authorization" in data or b"Bearer" in data,
    }), flush=True)
    conn.close()
"""


def test_a_pod_that_labels_itself_head_receives_nothing(
    cluster: Cluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    view = syncconfig_view(cluster, ns, FAST_SPEC)
    head_objects(cluster, view)
    imposter = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "imposter",
            # What the head Service selects: the labels alone.
            "labels": {names.CONFIG_LABEL: view.name, names.ROLE_LABEL: "head"},
        },
        "spec": {
            "containers": [
                {
                    "name": "listen",
                    "image": cluster.images.sidecar,
                    "command": [
                        "python3",
                        "-c",
                        IMPOSTER.replace("PORT", str(contract.HEAD_PORT)),
                    ],
                    "securityContext": RESTRICTED,
                }
            ]
        },
    }
    cluster.apply(imposter, ns)
    cluster.wait_for("pod", "imposter", ns, "condition=Ready")
    worker = trainer(
        cluster.images.sidecar, trial="trial_0", checkpoints=2, size=65536, trigger=True,
        then="sleep",
    )  # fmt: skip
    cluster.apply(injected_pod(cluster, view, "worker", [worker]), ns)

    def connections() -> list[dict[str, bool]]:
        return [
            json.loads(line)
            for line in cluster.logs("imposter", ns, "listen").splitlines()
            if line.startswith("{")
        ]

    # The imposter alone behind the Service: the worker reaches it, says no more than a
    # TLS hello, and is not ready (its trainer waits).
    wait_for(connections, 60, what="a worker's connection to the imposter")
    worker_pod = cluster.get("pod", "worker", ns)
    assert not container_status(worker_pod, SIDECAR_NAME).get("started"), worker_pod["status"]

    # The real head comes: the worker's data reaches it, and never the imposter.
    cluster.apply(_head(cluster, view), ns)
    cluster.wait_for("pod", "head", ns, "condition=Ready")
    wanted = {f"exp/trial_0/checkpoint_00000{i}/{MANIFEST_NAME}" for i in (1, 2)}
    wait_for(
        lambda: wanted <= set(trial_volume_files(cluster, "head", ns, "driver")),
        180,
        what="the worker's checkpoints on the real head",
    )
    seen = connections()
    assert seen
    assert all(c["tls_hello"] and not c["http"] and not c["token"] for c in seen), seen
