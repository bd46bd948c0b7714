"""The sidecar's life in a real pod: started before the trainer, stopped after it, and
given the grace period to make the last checkpoint durable when the pod is deleted."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from localcluster.cluster_s3 import ClusterS3
from localcluster.control_plane import kubectl_path
from localcluster.harness import Cluster, container_status
from tests.pods.trial_pods import (
    MANIFEST_NAME,
    SIDECAR_NAME,
    bucket_listings,
    bucket_objects,
    injected_pod,
    log_time,
    s3_spec,
    sidecar_records,
    syncconfig_view,
    trainer,
    trainer_events,
)

pytestmark = pytest.mark.timeout(600)

#: How long the test watches the pod while the sidecar cannot become ready.
GATE_CLOSED_S = 6.0


def test_trainer_starts_only_after_the_startup_probe_and_outlives_the_sidecar(
    cluster: Cluster, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    bucket = cluster_s3.server.make_bucket()
    # The Service the sidecar uses has no endpoint yet: its connections are refused.
    endpoint = cluster_s3.install(cluster, ns, name="s3-gate", ready=False)
    view = syncconfig_view(cluster, ns, s3_spec(cluster_s3, endpoint, f"s3://{bucket}/runs"))
    # A restored trial: a checkpoint is already on the volume when the sidecar starts, so
    # the sidecar must list the store before it is ready (an empty root needs no listing).
    restore = {
        "name": "restore",
        "image": cluster.images.sidecar,
        "command": ["python3", "-c"],
        "args": [
            "import os; d = '/trial/exp/trial_0/checkpoint_000000'; os.makedirs(d); "
            "open(d + '/model.bin', 'wb').write(b'restored')"
        ],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
    }
    pod = injected_pod(
        cluster,
        view,
        "ordered",
        [trainer(cluster.images.sidecar, trial="trial_0", checkpoints=2, trigger=True)],
        init_containers=[restore],
    )
    # The sidecar goes after the pod's own init containers; containers keep their order.
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["restore", SIDECAR_NAME]
    cluster.apply(pod, ns)

    running = cluster.poll_pod(
        "ordered",
        ns,
        lambda p: "running" in container_status(p, SIDECAR_NAME).get("state", {}),
        "running its sidecar",
    )
    del running
    # While the store is unreachable the sidecar runs but is not started, and the kubelet
    # keeps the trainer waiting.
    deadline = time.monotonic() + GATE_CLOSED_S
    while time.monotonic() < deadline:
        pod_now = cluster.get("pod", "ordered", ns)
        assert container_status(pod_now, SIDECAR_NAME).get("started") is False
        assert "running" in container_status(pod_now, SIDECAR_NAME)["state"]
        trainer_state = container_status(pod_now, "trainer").get("state", {})
        assert "waiting" in trainer_state, trainer_state
        time.sleep(0.5)

    cluster_s3.open(cluster, ns, "s3-gate")
    done = cluster.poll_pod(
        "ordered", ns, lambda p: p["status"].get("phase") == "Succeeded", "Succeeded", 180
    )

    events = trainer_events(cluster.logs("ordered", ns, "trainer"))
    # The first thing the trainer saw: a ready sidecar.
    assert events[0]["event"] == "start"
    assert events[0]["readyz"] == 200
    sidecar_state = container_status(done, SIDECAR_NAME)["state"]["terminated"]
    trainer_state = container_status(done, "trainer")["state"]["terminated"]
    assert trainer_state["exitCode"] == 0
    assert sidecar_state["exitCode"] == 0
    # Stopped by the kubelet after the trainer exited: the container states say so (to the
    # second), and so do the logs (to the millisecond, one clock): the sidecar got SIGTERM
    # after the trainer's last word, then ran its final sync.
    assert sidecar_state["finishedAt"] >= trainer_state["finishedAt"]
    records = sidecar_records(cluster, "ordered", ns)
    messages = [r["msg"] for r in records]
    sigterm = records[messages.index("SIGTERM: final sync of everything")]
    assert messages.index("SIGTERM: final sync of everything") < messages.index(
        "final sync finished"
    )
    assert events[-1]["event"] == "done"
    assert log_time(sigterm["time"]) >= events[-1]["time"]
    objects = bucket_objects(cluster_s3.server, bucket, "runs/exp/trial_0/")
    for i in (1, 2):
        assert f"runs/exp/trial_0/checkpoint_{i:06d}/{MANIFEST_NAME}" in objects


def test_deleting_a_running_pod_makes_the_last_checkpoint_durable(
    cluster: Cluster, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    bucket = cluster_s3.server.make_bucket()
    endpoint = cluster_s3.install(cluster, ns)
    # The trainer does not announce its checkpoints, and they settle only 12 s after the last
    # write. The pod is deleted well before that, so only the final sync can publish them:
    # it waits for them to settle, within its own 30 s bound and the 45 s grace period.
    settings = {"checkpointSettleSeconds": 12, "finalSyncTimeoutSeconds": 30}
    spec = s3_spec(cluster_s3, endpoint, f"s3://{bucket}/runs", **settings)
    pod = injected_pod(
        cluster,
        syncconfig_view(cluster, ns, spec),
        "preempted",
        [trainer(cluster.images.sidecar, trial="trial_0", checkpoints=3, interval=0, then="sleep")],
        grace_seconds=45,
    )
    cluster.apply(pod, ns)

    def done_writing(p: dict[str, object]) -> bool:
        if "running" not in container_status(p, "trainer").get("state", {}):
            return False
        events = trainer_events(cluster.logs("preempted", ns, "trainer"))
        return any(e["event"] == "done" for e in events)

    cluster.poll_pod("preempted", ns, done_writing, "done writing checkpoints")
    last = f"runs/exp/trial_0/checkpoint_000003/{MANIFEST_NAME}"
    assert last not in bucket_objects(cluster_s3.server, bucket, "runs/")

    # Follow the sidecar's log to its end: the pod object is gone afterwards.
    kubectl = [kubectl_path(), f"--kubeconfig={cluster.kube.kubeconfig}", "-n", ns]
    follow = subprocess.Popen(
        [*kubectl, "logs", "--follow", "preempted", "-c", SIDECAR_NAME],
        stdout=subprocess.PIPE,
        text=True,
    )
    prefix = "runs/exp/trial_0/"
    try:
        with bucket_listings(cluster_s3.server, bucket, prefix) as listings:
            delete = ["delete", "pod", "preempted", "-n", ns, "--grace-period=45", "--wait=true"]
            cluster.kube.kubectl(*delete, timeout=120)
            gone_at = time.time()
        log_text, _ = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()

    # Manifest last: no listing ever showed a checkpoint's manifest without all its files,
    # and the listings did see the files of the last checkpoint before its manifest.
    files = ("model.bin", "meta.json")
    for keys in listings:
        for i in (1, 2, 3):
            checkpoint = f"{prefix}checkpoint_{i:06d}/"
            if checkpoint + MANIFEST_NAME in keys:
                assert {checkpoint + f for f in files} <= keys, sorted(keys)
    last = f"{prefix}checkpoint_000003/"
    assert any(
        last + "model.bin" in keys and last + MANIFEST_NAME not in keys for keys in listings
    ), "the listings never saw the last checkpoint's files without its manifest"
    objects = bucket_objects(cluster_s3.server, bucket, prefix)
    for i in (1, 2, 3):
        assert f"runs/exp/trial_0/checkpoint_{i:06d}/{MANIFEST_NAME}" in objects
        assert f"runs/exp/trial_0/checkpoint_{i:06d}/model.bin" in objects
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    messages = [r["msg"] for r in records]
    assert messages.index("SIGTERM: final sync of everything") < messages.index(
        "final sync finished"
    )
    (final,) = [r for r in records if r["msg"] == "final sync finished"]
    assert final["durable"] is True, log_text
    # The pod object went away only after the sidecar was done: its last record (the
    # kubelet's clock, which this host shares) is older than the moment delete returned.
    assert log_time(records[-1]["time"]) <= gone_at, (records[-1], gone_at)
