"""`make demo`: trialsync's whole user story on a local Kubernetes cluster.

1. the tools and images are built or reused (the Makefile does that before this runs);
2. a local cluster with a real node starts, and SeaweedFS serves S3 to its pods;
3. ``helm install`` puts the operator in;
4. a SyncConfig and a labelled training Job are applied;
5. the injected sidecar is shown, then each checkpoint as it lands, with its latency;
6. the bucket is listed;
7. everything is torn down, and a summary says what a user runs on their own cluster.

With TRIALSYNC_KUBECONFIG (and TRIALSYNC_CLUSTER_HOST_IP) the same story runs on an
existing cluster such as kind. Where neither is possible (not Linux, not root), it says
so, says how to run it on kind, and shows the sidecar alone against a local S3 server.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localcluster import artifacts, control
from localcluster.artifacts import image_manifest, node_bin_dir
from localcluster.cluster_s3 import ClusterS3
from localcluster.control_plane import REPO_ROOT, Kube, external_cluster, kubectl_path
from localcluster.harness import Cluster, Images, workload
from localcluster.object_stores import S3Server, start_seaweedfs
from trialsync_operator import __version__

NAMESPACE = "ml"
CHECKPOINTS = 3
MODEL_BYTES = 8 * 2**20
MANIFEST = ".trialsync-manifest.json"
#: The images the chart defaults to: the ones images/build.py and the README's docker build make.
SIDECAR_IMAGE = f"docker.io/trialsync/sidecar:{__version__}"
OPERATOR_IMAGE = f"docker.io/trialsync/operator:{__version__}"
RAY_IMAGE = f"docker.io/trialsync/ray:{artifacts.RAY_VERSION}"
KIND_HOWTO = f"""\
To run the same demo on kind (Docker and Kubernetes 1.29 or later needed): build the two
images as the README's quickstart shows, then

    kind create cluster --name trialsync
    kind load docker-image --name trialsync {SIDECAR_IMAGE} {OPERATOR_IMAGE}
    kind get kubeconfig --name trialsync > /tmp/kind.kubeconfig
    export TRIALSYNC_KUBECONFIG=/tmp/kind.kubeconfig
    export TRIALSYNC_CLUSTER_HOST_IP=$(docker network inspect kind \\
        -f '{{{{(index .IPAM.Config 0).Gateway}}}}')
    make demo
"""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n== {text}")


def main() -> int:
    external = os.environ.get("TRIALSYNC_KUBECONFIG")
    reason = None if external else control.unsupported_reason()
    if reason:
        say(f"make demo runs on a local Kubernetes cluster, which cannot run here: {reason}.")
        say(KIND_HOWTO)
        say("Meanwhile, the sidecar alone against a local S3 server:\n")
        from demo import sidecar_demo

        return sidecar_demo.main()
    with tempfile.TemporaryDirectory(prefix="trialsync-demo-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        with _cluster(work, external) as cluster, _seaweedfs(work) as server:
            exposed = cluster.expose(int(server.endpoint_url.rsplit(":", 1)[1]))
            try:
                host = cluster.pod_reachable_host
                assert host is not None
                s3 = ClusterS3(server, host, exposed.address[1])
                return run(cluster, s3, started)
            finally:
                exposed.close()


@contextlib.contextmanager
def _cluster(work: Path, external: str | None) -> Iterator[Cluster]:
    if external:
        step(f"using the cluster of TRIALSYNC_KUBECONFIG={external}")
        kube = external_cluster(Path(external), work)
        images = Images(SIDECAR_IMAGE, OPERATOR_IMAGE, RAY_IMAGE)
        yield Cluster(kube, images, None, os.environ.get("TRIALSYNC_CLUSTER_HOST_IP") or None)
        return
    step(
        "starting a local cluster (etcd, apiserver, controller-manager, scheduler, "
        "containerd, kubelet, kube-proxy, CoreDNS)"
    )
    manifest = image_manifest()
    bin_dir = node_bin_dir()
    local = control.start(
        bin_dir=bin_dir,
        kubectl=Path(kubectl_path()),
        images=[Path(entry["archive"]) for entry in manifest.values()],
        pause_image=manifest["pause"]["ref"],
    )
    say(f"node Ready in {local.startup_seconds:.1f}s; images loaded: "
        f"{manifest['sidecar']['ref']}, {manifest['operator']['ref']}")  # fmt: skip
    kube = Kube(
        kubeconfig=local.kubeconfig,
        server=local.server,
        local=False,
        workdir=work,
        helm_path=bin_dir / "helm",
    )
    images = Images(manifest["sidecar"]["ref"], manifest["operator"]["ref"], manifest["ray"]["ref"])
    try:
        yield Cluster(kube, images, local, local.node_ip)
    finally:
        step("tearing the cluster down")
        local.stop()


@contextlib.contextmanager
def _seaweedfs(work: Path) -> Iterator[S3Server]:
    step("starting SeaweedFS (S3) on this machine's loopback, served to the pods through a Service")
    server = start_seaweedfs(work / "seaweedfs")
    try:
        yield server
    finally:
        server.stop()


def run(cluster: Cluster, s3: ClusterS3, started: float) -> int:
    kube = cluster.kube
    step("helm install trialsync charts/trialsync -n trialsync --create-namespace --wait")
    operator, _, operator_tag = cluster.images.operator.rpartition(":")
    sidecar, _, sidecar_tag = cluster.images.sidecar.rpartition(":")
    t0 = time.monotonic()
    kube.helm(
        "install", "trialsync", str(REPO_ROOT / "charts" / "trialsync"), "-n", "trialsync",
        "--create-namespace", "--wait", "--timeout=5m",
        f"--set=operator.image.repository={operator}", f"--set=operator.image.tag={operator_tag}",
        f"--set=sidecar.image.repository={sidecar}", f"--set=sidecar.image.tag={sidecar_tag}",
    )  # fmt: skip
    install_seconds = time.monotonic() - t0
    say(f"operator Ready in {install_seconds:.1f}s:")
    say(kube.kubectl("get", "pods", "-n", "trialsync", "-o", "wide").stdout.rstrip())
    try:
        return _story(cluster, s3, started, install_seconds)
    finally:
        step("helm uninstall trialsync -n trialsync")
        kube.helm("uninstall", "trialsync", "-n", "trialsync", "--wait", check=False)


def _story(cluster: Cluster, s3: ClusterS3, started: float, install_seconds: float) -> int:
    kube = cluster.kube
    kube.create_namespace(NAMESPACE)
    endpoint = s3.install(cluster, NAMESPACE)
    bucket = s3.server.make_bucket()
    syncconfig = {
        "apiVersion": "trialsync.io/v1alpha1",
        "kind": "SyncConfig",
        "metadata": {"name": "tune-exp", "namespace": NAMESPACE},
        "spec": {
            "uploadDir": f"s3://{bucket}/experiments",
            "storage": {
                "endpoint": endpoint,
                "region": s3.server.region,
                "addressingStyle": "path",
            },
            "credentials": {"secretRef": {"name": ClusterS3.CREDENTIALS_SECRET}},
            "checkpointSettleSeconds": 1,
        },
    }
    step("kubectl apply -f syncconfig.yaml")
    say(json.dumps(syncconfig["spec"], indent=2))
    cluster.apply(syncconfig, NAMESPACE)
    cluster.wait_for("syncconfig", "tune-exp", NAMESPACE, "condition=Ready", 60)
    say(kube.kubectl("get", "syncconfig", "-n", NAMESPACE).stdout.rstrip())

    step("kubectl apply -f job.yaml   (a trainer writing checkpoints; the pod opts in by label)")
    job = _job(cluster.images.sidecar)
    say(json.dumps(job["spec"]["template"]["metadata"], indent=2))
    created = time.monotonic()
    cluster.apply(job, NAMESPACE)
    pod = _wait_pod(cluster)
    say(f"pod {pod} created; what the webhook injected:")
    say(kube.kubectl(
        "get", "pod", pod, "-n", NAMESPACE, "-o",
        "jsonpath={range .spec.initContainers[*]}  initContainer {.name}: image {.image}, "
        "restartPolicy {.restartPolicy}, startupProbe {.startupProbe.httpGet.path}{\"\\n\"}{end}",
    ).stdout.rstrip())  # fmt: skip
    status = json.loads(
        kube.kubectl(
            "get",
            "pod",
            pod,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.metadata.annotations.trialsync\\.io/status}",
        ).stdout
    )
    say(f"  annotation trialsync.io/status: {json.dumps(status)}")
    cluster.poll_pod(pod, NAMESPACE, _sidecar_started, "sidecar started", 120)
    sidecar_ready = time.monotonic() - created

    step("the Job's progress, and each checkpoint as it lands in the bucket")
    landed = _watch(cluster, s3.server, bucket, pod)
    cluster.wait_for("job", "train", NAMESPACE, "condition=Complete", 240)
    job_done = time.monotonic() - created
    say(f"Job complete {job_done:.1f}s after it was created")
    final = [r for r in _sidecar_logs(cluster, pod) if "final sync" in r.get("msg", "")]
    for record in final:
        fields = {k: v for k, v in record.items() if k not in ("time", "level", "logger", "msg")}
        say(f"  sidecar log: {record['msg']} {json.dumps(fields)}")

    step(f"the bucket s3://{bucket}")
    client = s3.server.client()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                say(f"  {item['Size']:>10}  {item['Key']}")
    finally:
        client.close()

    ok = len(landed) == CHECKPOINTS
    step("summary")
    say(f"helm install to operator Ready: {install_seconds:.1f}s")
    say(f"pod creation to sidecar started (startup probe passed): {sidecar_ready:.1f}s")
    say(f"checkpoints published: {len(landed)} of {CHECKPOINTS}, each "
        + ", ".join(f"{s:.2f}s" for s in landed) + " after the trainer finished it")  # fmt: skip
    say(
        f"Job created to Complete: {job_done:.1f}s; "
        f"the whole demo: {time.monotonic() - started:.0f}s"
    )
    say(
        """
On your own cluster (the images built and loaded first: the README's quickstart):

    helm install trialsync charts/trialsync -n trialsync --create-namespace --wait
    kubectl apply -f syncconfig.yaml            # kind: SyncConfig, your uploadDir
    kubectl get syncconfig -A                   # READY True
    # label and annotate your training pods (or a Job's template):
    #   labels:      {trialsync.io/inject: "true"}
    #   annotations: {trialsync.io/config: <name>, trialsync.io/mount-path: /root/ray_results}
    kubectl get pod <pod> -o jsonpath='{.metadata.annotations.trialsync\\.io/status}'
    kubectl logs <pod> -c trialsync-sidecar     # JSON logs: each checkpoint published"""
    )
    return 0 if ok else 1


def _job(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train", "namespace": NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": {"trialsync.io/inject": "true"},
                    "annotations": {
                        "trialsync.io/config": "tune-exp",
                        "trialsync.io/mount-path": "/trial",
                    },
                },
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "trainer",
                            "image": image,
                            "command": ["python3", "-c", workload("trainer")],
                            "args": [
                                "--root=/trial",
                                "--experiment=tune-exp",
                                "--trial=trial_00000",
                                f"--checkpoints={CHECKPOINTS}",
                                f"--size={MODEL_BYTES}",
                                "--interval=3",
                            ],
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"cpu": "1", "memory": "256Mi"},
                            },
                        }
                    ],
                },
            },
        },
    }


def _sidecar_started(pod: dict[str, Any]) -> bool:
    statuses = pod["status"].get("initContainerStatuses") or [{}]
    return bool(statuses[-1].get("started"))


def _wait_pod(cluster: Cluster) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = cluster.kube.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", "job-name=train", "-o", "name"
        ).stdout.split()
        if names:
            return names[0].split("/", 1)[1]
        time.sleep(0.2)
    raise RuntimeError("the Job made no pod in 60 s")


def _watch(cluster: Cluster, server: S3Server, bucket: str, pod: str) -> list[float]:
    """Print each checkpoint as its manifest appears; return their latencies (seconds from
    the trainer finishing it to the manifest's publication)."""
    client = server.client()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 180
    try:
        while len(seen) < CHECKPOINTS and time.monotonic() < deadline:
            finished = {
                e["name"]: e["time"]
                for e in _trainer_events(cluster, pod)
                if e["event"] == "checkpoint"
            }
            listing = client.list_objects_v2(Bucket=bucket, Prefix="experiments/")
            for item in listing.get("Contents", []):
                key = item["Key"]
                if not key.endswith(MANIFEST) or key in seen:
                    continue
                manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                name = key.split("/")[-2]
                latency = manifest["published_at"] - finished.get(name, manifest["published_at"])
                seen[key] = latency
                where = f"s3://{bucket}/{key.rsplit('/', 1)[0]}/"
                say(
                    f"  {name}: {manifest['total_bytes']} bytes in {len(manifest['files'])} "
                    f"files -> {where}  published {latency:.2f}s after the trainer wrote it"
                )
            time.sleep(0.2)
    finally:
        client.close()
    return list(seen.values())


def _trainer_events(cluster: Cluster, pod: str) -> list[dict[str, Any]]:
    logs = cluster.kube.kubectl("logs", pod, "-n", NAMESPACE, "-c", "trainer", check=False).stdout
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


def _sidecar_logs(cluster: Cluster, pod: str) -> list[dict[str, Any]]:
    logs = cluster.kube.kubectl(
        "logs", pod, "-n", NAMESPACE, "-c", "trialsync-sidecar", check=False
    ).stdout
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    sys.exit(main())
