"""Ray Tune on a KubeRay RayCluster, synced by the sidecars the webhook injects.

This is the README's Ray section, run as written: the SyncConfig, the RayCluster and the
Tune script are the files of ``docs/ray/`` the README shows (a unit test keeps the two
equal). The test changes only what names the store (the bucket, the endpoint), and for
scenario 3 removes what the README says to remove (``uploadDir`` and the store).

KubeRay's operator (built from its Go module) makes the pods; the Ray image runs as uid
1000 without a ``runAsUser``, as Ray's own images do; trials run on the two workers only
(the head has ``num-cpus: 0``), and each checkpoints on its very first iteration, so the
storage marker has to be there for them at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.cluster_s3 import ClusterS3
from localcluster.harness import Cluster, Manifest, container_status
from tests.pods.trial_pods import MANIFEST_NAME, bucket_objects, sidecar_records
from tests.support.cluster_fixtures import fresh_namespace
from tests.support.operator_process import Operator
from tests.support.pods import sidecars
from trialsync_operator import names

pytestmark = pytest.mark.timeout(900)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ray"
#: Where the README's RayCluster mounts the trial volume, and Tune's storage_path.
STORAGE = "/home/ray/ray_results"
EXPERIMENT = "tune"
TRIALS = 4
#: How long a trial's last checkpoint may take to reach the head after Tune returns: the
#: SyncConfig's period (10 s) and settle time (2 s), and a margin for a busy node.
HEAD_SEND_WAIT = 30.0
ITERATIONS = 10
#: The prefix below the bucket the README's uploadDir names.
PREFIX = "experiments"
#: Tune's trial dir names start with the trainable and the trial id.
TRIAL_DIR = re.compile(r"^train_(?P<id>[0-9a-f]+_\d+)_")
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d{6})$")
#: The README's wait for a RayCluster (``kubectl wait --for=...``).
READY_STATE = "jsonpath={.status.state}=ready"


def docs() -> tuple[Manifest, Manifest, str]:
    """The README's SyncConfig, RayCluster and Tune script."""
    syncconfig = yaml.safe_load((DOCS / "syncconfig.yaml").read_text())
    raycluster = yaml.safe_load((DOCS / "raycluster.yaml").read_text())
    return syncconfig, raycluster, (DOCS / "tune_experiment.py").read_text()


@dataclass
class RayCluster:
    """A RayCluster's pods once all are Ready, and how long that took."""

    head: Manifest
    workers: list[Manifest]
    ready_seconds: float


@dataclass
class Run:
    """One run of the Tune script on the head: its exit code and its summary line."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


class Experiment:
    """The README's Ray set-up in one namespace: the SyncConfig, the script's ConfigMap,
    and RayClusters made from the README's manifest."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        syncconfig, self.raycluster, self.script = docs()
        self.syncconfig: Manifest = syncconfig

    def install(self, syncconfig: Manifest) -> None:
        self.cluster.apply(syncconfig, self.namespace)
        name = syncconfig["metadata"]["name"]
        self.cluster.wait_for("syncconfig", name, self.namespace, "condition=Ready", 60)
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "tune-experiment"},
                "data": {"tune_experiment.py": self.script},
            },
            self.namespace,
        )

    def _pods(self) -> list[Manifest]:
        name = self.raycluster["metadata"]["name"]
        listing = self.cluster.kube.kubectl(
            "get", "pods", "-n", self.namespace, "-l", f"ray.io/cluster={name}", "-o", "json"
        ).stdout
        return list(json.loads(listing)["items"])

    def start(self, timeout: float = 300) -> RayCluster:
        """Apply the RayCluster; return once its head and both workers are Ready."""
        started = time.monotonic()
        self.cluster.apply(self.raycluster, self.namespace)
        deadline = started + timeout
        while True:
            pods = [p for p in self._pods() if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in pods if _ready(p)]
            if len(ready) == 3:
                break
            if time.monotonic() > deadline:
                states = {p["metadata"]["name"]: p.get("status") for p in pods}
                raise AssertionError(f"RayCluster not Ready in {timeout}s: {states}")
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        # What the README waits for: KubeRay says the cluster is ready.
        name = self.raycluster["metadata"]["name"]
        self.cluster.wait_for("raycluster", name, self.namespace, READY_STATE, 60)
        [head] = [p for p in ready if p["metadata"]["labels"]["ray.io/node-type"] == "head"]
        workers = [p for p in ready if p["metadata"]["labels"]["ray.io/node-type"] == "worker"]
        assert len(workers) == 2
        return RayCluster(head, workers, elapsed)

    def delete(self, timeout: float = 180) -> None:
        """Delete the RayCluster, and wait until its pods are gone (their sidecars did
        their final sync in the grace period)."""
        name = self.raycluster["metadata"]["name"]
        self.cluster.kube.kubectl("delete", "raycluster", name, "-n", self.namespace)
        deadline = time.monotonic() + timeout
        while self._pods():
            assert time.monotonic() < deadline, "the RayCluster's pods outlived the timeout"
            time.sleep(1)

    def run(self, ray: RayCluster, timeout: float = 600) -> Run:
        """Run the README's command: the script on the head, in the ray-head container."""
        started = time.monotonic()
        done = self.cluster.kube.kubectl(
            "exec",
            ray.head["metadata"]["name"],
            "-n",
            self.namespace,
            "-c",
            "ray-head",
            "--",
            "python",
            "/home/ray/app/tune_experiment.py",
            check=False,
            timeout=timeout,
        )
        run = Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"trials"')]
        if lines:
            run.summary = json.loads(lines[-1])
        return run

    def exec(self, pod: Manifest, container: str, *command: str) -> str:
        return self.cluster.kube.kubectl(
            "exec", pod["metadata"]["name"], "-n", self.namespace, "-c", container, "--", *command
        ).stdout


def _ready(pod: Manifest) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _published(keys: set[str] | Mapping[str, Any]) -> dict[str, set[int]]:
    """Trial id -> the indexes of its checkpoints that have their manifest."""
    found: dict[str, set[int]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) == 5 and parts[4] == MANIFEST_NAME:
            trial, checkpoint = TRIAL_DIR.match(parts[2]), CHECKPOINT_DIR.match(parts[3])
            if trial and checkpoint:
                found.setdefault(trial["id"], set()).add(int(checkpoint[1]))
    return found


def _keys(s3: ClusterS3, bucket: str) -> set[str]:
    client = s3.server.client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}
    finally:
        client.close()


def _steps(objects: Mapping[str, bytes]) -> dict[str, dict[int, int]]:
    """Trial id -> checkpoint index -> the step its state.json holds, of the published
    checkpoints in ``objects``."""
    published = _published(objects)
    steps: dict[str, dict[int, int]] = {}
    for key, content in objects.items():
        parts = key.split("/")
        if len(parts) != 5 or parts[4] != "state.json":
            continue
        trial, checkpoint = TRIAL_DIR.match(parts[2]), CHECKPOINT_DIR.match(parts[3])
        if trial and checkpoint and int(checkpoint[1]) in published.get(trial["id"], ()):
            steps.setdefault(trial["id"], {})[int(checkpoint[1])] = json.loads(content)["step"]
    return steps


@dataclass
class LostAndResumed:
    """Scenario 2 with a loss: what the first cluster published, and the resumed run."""

    bucket: str
    published_at_loss: dict[str, set[int]]
    #: Trial id -> checkpoint index -> step, of what was published at the loss.
    steps_at_loss: dict[str, dict[int, int]]
    first: RayCluster
    second: RayCluster
    resumed: Run
    records: dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def module_namespace(cluster: Cluster) -> Iterator[str]:
    with fresh_namespace(cluster, "ts-ray") as name:
        yield name


@pytest.fixture(scope="module")
def lost_and_resumed(
    cluster: Cluster,
    operator_beside: Operator,
    cluster_s3: ClusterS3,
    module_namespace: str,
    cluster_timings: dict[str, float],
) -> LostAndResumed:
    """The README's experiment with an upload dir: started, its whole RayCluster deleted
    in the middle (once at least two trials have published a checkpoint after their
    first, and none has reached its last), then run again on a new RayCluster."""
    ns = module_namespace
    experiment = Experiment(cluster, ns)
    endpoint = cluster_s3.install(cluster, ns)
    bucket = cluster_s3.server.make_bucket()
    syncconfig = experiment.syncconfig
    syncconfig["spec"]["uploadDir"] = f"s3://{bucket}/{PREFIX}"
    syncconfig["spec"]["storage"]["endpoint"] = endpoint
    experiment.install(syncconfig)

    first = experiment.start()
    cluster_timings["RayCluster created to head and workers Ready"] = first.ready_seconds
    interrupted: list[Run] = []
    driver = threading.Thread(target=lambda: interrupted.append(experiment.run(first)))
    driver.start()
    deadline = time.monotonic() + 300
    while True:
        published = _published(_keys(cluster_s3, bucket))
        going = [t for t, indexes in published.items() if max(indexes) >= 1]
        if len(going) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(going) >= 2, f"no two trials got past their first checkpoint: {published}"
    assert not [t for t, indexes in published.items() if 4 in indexes], "aimed too late"
    experiment.delete()
    driver.join(timeout=120)
    assert interrupted, "the first run's driver did not end"
    assert interrupted[0].returncode != 0, "the first run was not cut short"
    objects_at_loss = bucket_objects(cluster_s3.server, bucket, PREFIX)
    published_at_loss = _published(objects_at_loss)

    second = experiment.start()
    resumed = experiment.run(second)
    cluster_timings["resumed Tune experiment, wall time"] = resumed.seconds
    records = {
        pod["metadata"]["name"]: sidecar_records(cluster, pod["metadata"]["name"], ns)
        for pod in (second.head, *second.workers)
    }
    return LostAndResumed(
        bucket, published_at_loss, _steps(objects_at_loss), first, second, resumed, records
    )


def test_the_ray_pods_get_the_sidecar_and_run_as_the_images_user(
    lost_and_resumed: LostAndResumed, module_namespace: str, cluster: Cluster
) -> None:
    ray = lost_and_resumed.second
    experiment = Experiment(cluster, module_namespace)
    for pod in (ray.head, *ray.workers):
        [sidecar] = sidecars(pod)
        assert container_status(pod, names.SIDECAR_NAME)["ready"] is True
        # Nobody set a user: the trainer runs as the image's (1000), the sidecar as 65532
        # with its files open to the trainer.
        assert "runAsUser" not in (pod["spec"].get("securityContext") or {})
        ray_container = pod["spec"]["containers"][0]
        assert "runAsUser" not in (ray_container.get("securityContext") or {})
        assert experiment.exec(pod, ray_container["name"], "id", "-u").strip() == "1000"
        env = {e["name"]: e.get("value") for e in sidecar["env"]}
        assert env["TRIALSYNC_SHARE_FILES"] == "true"
        assert sidecar["securityContext"]["runAsUser"] == 65532


def test_every_trial_runs_on_a_worker_and_checkpoints_from_its_first_iteration(
    lost_and_resumed: LostAndResumed, cluster_s3: ClusterS3
) -> None:
    run = lost_and_resumed.resumed
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.summary["errors"] == 0
    assert len(run.summary["trials"]) == TRIALS
    assert "Unable to set up cluster storage" not in run.stdout + run.stderr
    published = _published(_keys(cluster_s3, lost_and_resumed.bucket))
    # checkpoint_000000 is the one written on the first iteration.
    assert set(published) == set(run.summary["trials"])
    assert all(0 in indexes for indexes in published.values()), published
    # The trials ran on the workers: their sidecars published the trials' checkpoints,
    # the head's none.
    by_pod = {
        pod: {r["path"] for r in records if r["msg"] == "checkpoint published"}
        for pod, records in lost_and_resumed.records.items()
    }
    head = lost_and_resumed.second.head["metadata"]["name"]
    assert not by_pod.pop(head)
    assert all(by_pod.values()), by_pod


def test_scenario_2_checkpoints_state_and_artifacts_reach_the_bucket_marker_last(
    lost_and_resumed: LostAndResumed, cluster_s3: ClusterS3
) -> None:
    bucket = lost_and_resumed.bucket
    # The head's sidecar sends the driver's last state within a sync period (10 s).
    deadline = time.monotonic() + 60
    while True:
        objects = bucket_objects(cluster_s3.server, bucket, f"{PREFIX}/{EXPERIMENT}/")
        states = [k for k in objects if re.search(r"/experiment_state-[^/]*\.json$", k)]
        finished = _terminated(objects, states)
        if finished == TRIALS or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert finished == TRIALS, (
        f"the experiment state in the bucket has {finished} finished: "
        f"{ {k: _statuses(objects[k]) for k in states} }"
    )
    assert f"{PREFIX}/{EXPERIMENT}/tuner.pkl" in objects
    assert f"{PREFIX}/{EXPERIMENT}/.validate_storage_marker" in objects
    client = cluster_s3.server.client()
    try:
        modified = {
            o["Key"]: o["LastModified"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=PREFIX
            )
            for o in page.get("Contents", [])
        }
    finally:
        client.close()
    checkpoints = {k.rsplit("/", 1)[0] for k in objects if k.endswith("/" + MANIFEST_NAME)}
    assert len(checkpoints) >= TRIALS
    for checkpoint in checkpoints:
        manifest = json.loads(objects[f"{checkpoint}/{MANIFEST_NAME}"])
        files = {
            k[len(checkpoint) + 1 :]: v
            for k, v in objects.items()
            if k.startswith(checkpoint + "/") and not k.endswith(MANIFEST_NAME)
        }
        # Every file of the checkpoint, whole, and the manifest written after each.
        assert set(manifest["files"]) == set(files) == {"state.json"}
        for rel, content in files.items():
            assert manifest["files"][rel]["size"] == len(content)
            assert modified[f"{checkpoint}/{rel}"] <= modified[f"{checkpoint}/{MANIFEST_NAME}"]
    # Scenario 4: each trial's artifacts, its results up to the last iteration.
    trial_dirs = {k.split("/")[2] for k in objects if TRIAL_DIR.match(k.split("/")[2])}
    assert len(trial_dirs) == TRIALS
    for trial_dir in trial_dirs:
        base = f"{PREFIX}/{EXPERIMENT}/{trial_dir}"
        assert f"{base}/params.json" in objects
        results = objects[f"{base}/result.json"].decode().splitlines()
        assert json.loads(results[-1])["step"] == ITERATIONS


def _terminated(objects: Mapping[str, bytes], states: list[str]) -> int:
    """How many trials the newest experiment state in the bucket says finished."""
    if not states:
        return 0
    return _statuses(objects[max(states)]).count("TERMINATED")


def _statuses(state: bytes) -> list[str]:
    """The trials' statuses in an experiment state file."""
    return [json.loads(trial)["status"] for trial, _ in json.loads(state)["trial_data"]]


def test_a_lost_raycluster_resumes_every_trial_from_its_last_published_checkpoint(
    lost_and_resumed: LostAndResumed, pod_figures: Callable[..., None]
) -> None:
    """Tune resumes a trial from the newest checkpoint its driver recorded. A worker can
    still finish one after the driver is gone (the pods stop together): it is published,
    but Tune does not know it, so the trial resumes from the one before. (The step is
    compared with the checkpoint as it was at the loss: a resumed Tune trial may write its
    next checkpoint under the index it resumed from.)"""
    run = lost_and_resumed.resumed
    assert run.returncode == 0, run.stderr[-4000:]
    resumed = 0
    trials = run.summary["trials"]
    pod_figures(
        published_at_loss={t: sorted(i) for t, i in lost_and_resumed.published_at_loss.items()},
        resumed_from={t: f"{r['resumed_from']}@step{r['resumed_at']}" for t, r in trials.items()},
    )
    for trial, result in run.summary["trials"].items():
        assert result["step"] == ITERATIONS, (trial, result)
        published = lost_and_resumed.published_at_loss.get(trial)
        if not published:  # it had not checkpointed before the loss: nothing to resume
            assert result["resumed_from"] is None, (trial, result)
            continue
        resumed += 1
        assert result["resumed_from"] is not None, f"{trial} started from scratch: {result}"
        index = int(CHECKPOINT_DIR.match(result["resumed_from"])[1])  # type: ignore[index]
        assert index in published, (trial, result, published)
        assert index >= max(published) - 1, (trial, result, published)
        assert result["resumed_at"] == lost_and_resumed.steps_at_loss[trial][index]
    assert resumed >= 2


@pytest.fixture(scope="module")
def head_node_run(
    cluster: Cluster, operator_beside: Operator, cluster_timings: dict[str, float]
) -> Iterator[tuple[Experiment, RayCluster, Run]]:
    """Scenario 3: the README's experiment, with no upload dir in its SyncConfig."""
    with fresh_namespace(cluster, "ts-ray3") as name:
        experiment = Experiment(cluster, name)
        syncconfig = experiment.syncconfig
        for key in ("uploadDir", "storage", "credentials"):
            del syncconfig["spec"][key]
        experiment.install(syncconfig)
        ray = experiment.start()
        run = experiment.run(ray)
        cluster_timings["Tune experiment to the head node, wall time"] = run.seconds
        yield experiment, ray, run


def test_scenario_3_the_workers_trial_dirs_reach_the_head_pods_volume(
    head_node_run: tuple[Experiment, RayCluster, Run],
) -> None:
    experiment, ray, run = head_node_run
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.summary["errors"] == 0
    assert len(run.summary["trials"]) == TRIALS
    ran = set(run.summary["trials"])

    def received_on_head() -> dict[str, set[int]]:
        listing = experiment.exec(
            ray.head, "ray-head", "find", f"{STORAGE}/{EXPERIMENT}", "-name", "state.json"
        )
        received: dict[str, set[int]] = {}
        for path in listing.split():
            parts = Path(path).relative_to(f"{STORAGE}/{EXPERIMENT}").parts
            trial, checkpoint = TRIAL_DIR.match(parts[0]), CHECKPOINT_DIR.match(parts[1])
            assert trial, path
            assert checkpoint, path
            received.setdefault(trial["id"], set()).add(int(checkpoint[1]))
        return received

    # Tune returns when its trials end; a worker's sidecar sends the last checkpoint once
    # it has settled (2 s), and at the latest at its next period (10 s): the test waits
    # that long, with a margin for a busy node.
    deadline = time.monotonic() + HEAD_SEND_WAIT
    while True:
        received = received_on_head()
        done = set(received) == ran and all(4 in indexes for indexes in received.values())
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    if set(received) != ran:
        # What the sidecars said, to tell a lost send from a late one.
        logs = [
            f"{pod['metadata']['name']}:\n"
            + "\n".join(
                experiment.cluster.logs(
                    pod["metadata"]["name"], experiment.namespace, names.SIDECAR_NAME
                ).splitlines()[-40:]
            )
            for pod in (ray.head, *ray.workers)
        ]
        pytest.fail(f"received {sorted(received)}, ran {sorted(ran)}\n" + "\n".join(logs))
    # Every trial's last checkpoint (its 9th iteration) is on the head.
    assert all(4 in indexes for indexes in received.values()), received
    # The driver (uid 1000) deleted the older checkpoints the head's sidecar (uid 65532)
    # had received, as num_to_keep=1 asks, without being refused.
    assert "Permission denied" not in run.stdout + run.stderr


def test_scenario_3_the_driver_can_change_and_delete_what_the_head_sidecar_received(
    head_node_run: tuple[Experiment, RayCluster, Run],
) -> None:
    experiment, ray, _ = head_node_run
    base = f"{STORAGE}/{EXPERIMENT}"
    owners = experiment.exec(
        ray.head, "ray-head", "find", base, "-name", "state.json", "-printf", "%u %m %p\n"
    ).split("\n")
    owners = [line for line in owners if line]
    # Received by the head's sidecar (uid 65532): the trials ran on the workers, the head
    # has no CPU for them.
    assert owners
    assert all(line.split()[0] == "65532" for line in owners), owners
    target = owners[0].split()[2]
    checkpoint = str(Path(target).parent)
    experiment.exec(ray.head, "ray-head", "sh", "-c", f"echo changed > {target}")
    experiment.exec(ray.head, "ray-head", "rm", "-r", checkpoint)
    left = experiment.exec(ray.head, "ray-head", "ls", str(Path(checkpoint).parent))
    assert Path(checkpoint).name not in left.split()


#: A Ray Train V2 run on the same RayCluster: its checkpoints are
#: ``<run>/checkpoint_<timestamp>/``, with no trial level.
TRAIN_V2 = f"""
import json, os, tempfile
import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from trialsync.ray_storage import storage_filesystem

def loop(config):
    for step in range(2):
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "state.json"), "w") as handle:
                json.dump({{"step": step}}, handle)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({{"step": step}}, checkpoint=checkpoint)

run_config = RunConfig(
    name="v2run", storage_path={STORAGE!r}, storage_filesystem=storage_filesystem({STORAGE!r})
)
trainer = DataParallelTrainer(
    loop, scaling_config=ScalingConfig(num_workers=1), run_config=run_config
)
print(json.dumps({{"checkpoint": trainer.fit().checkpoint.path}}))
"""


def test_ray_train_v2_checkpoints_reach_the_bucket_as_its_layout_has_them(
    lost_and_resumed: LostAndResumed, cluster: Cluster, module_namespace: str, cluster_s3: ClusterS3
) -> None:
    experiment = Experiment(cluster, module_namespace)
    out = experiment.exec(lost_and_resumed.second.head, "ray-head", "python", "-c", TRAIN_V2)
    last = json.loads(out.strip().splitlines()[-1])["checkpoint"]
    assert re.fullmatch(rf"{STORAGE}/v2run/checkpoint_[0-9][-0-9_.]+", last), last
    deadline = time.monotonic() + 60
    while True:
        keys = _keys(cluster_s3, lost_and_resumed.bucket)
        published = {k for k in keys if k.startswith(f"{PREFIX}/v2run/") and MANIFEST_NAME in k}
        if len(published) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Each checkpoint at <uploadDir>/<run>/checkpoint_<timestamp>/, manifest last, the
    # last one where Ray says it is.
    assert len(published) == 2, sorted(keys)
    name = Path(last).name
    assert f"{PREFIX}/v2run/{name}/state.json" in keys
    assert f"{PREFIX}/v2run/{name}/{MANIFEST_NAME}" in published
