"""The README's quickstart, run as written on a kind cluster of ``make kind-up``.

Every command of the README's quickstart from ``helm install`` on runs here, in order, as
the README shows it (read from README.md, so the README cannot drift from what works), in
a directory that holds ``charts/`` and the README's own ``syncconfig.yaml`` and
``train-job.yaml``. The commands before it (building the images and ``kind load``) are
what ``make kind-up`` does on a machine without Docker. A user fills in what the README
leaves to them, and so does this test, no more:

- the credentials (``...``) and the SyncConfig's bucket and endpoint: the test's
  SeaweedFS, which the pods reach at the kind network's gateway;
- ``<your training image>`` and ``train.py``: the simulated trainer
  (``localcluster/trainer.py``) in the sidecar image, writing three checkpoints, as root,
  the user of most training images.

Between two commands the test waits for what the README says the first one leads to (the
SyncConfig READY True, the Job's pod done), then checks what it says the output shows, and
that the checkpoints are in the bucket, manifest last.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from localcluster import artifacts
from localcluster.control_plane import REPO_ROOT, kubectl_path
from localcluster.forwarding import Forwarder, in_netns
from localcluster.harness import workload
from localcluster.object_stores import S3Server
from tests.kind.conftest import UP_TIMEOUT, KindCluster
from trialsync._engine.layout import MANIFEST_NAME

#: The first run on a machine builds kind and its node image in the fixture's set-up.
pytestmark = [pytest.mark.kind, pytest.mark.timeout(UP_TIMEOUT + 900)]

README = REPO_ROOT / "README.md"
CHECKPOINTS = 3


def quickstart_commands(readme: str) -> list[str]:
    """The quickstart's commands from ``helm install`` on: continuation lines joined,
    comments dropped."""
    section = readme.split("## Quickstart on your cluster", 1)[1]
    block = section.split("```", 2)[1]
    commands: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip() and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        commands.append((pending + line.strip()).strip())
        pending = ""
    start = next(i for i, c in enumerate(commands) if c.startswith("helm install"))
    return commands[start:]


def named_block(readme: str, name: str) -> dict[str, object]:
    """The README's YAML block whose first line is ``# <name>``."""
    for block in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S):
        if block.startswith(f"# {name}\n"):
            loaded = yaml.safe_load(block)
            assert isinstance(loaded, dict)
            return loaded
    raise AssertionError(f"README.md has no yaml block starting with '# {name}'")


@pytest.fixture
def store_in_kind(kind_cluster: KindCluster, seaweedfs: S3Server) -> Iterator[str]:
    """The session's SeaweedFS as the kind cluster's pods reach it: a forwarder listening
    on the kind network's gateway, in kind's namespace, dialling the host's loopback."""
    port = int(seaweedfs.endpoint_url.rsplit(":", 1)[1])
    listener = in_netns(kind_cluster.netns, lambda: socket.create_server((kind_cluster.host_ip, 0)))
    forwarder = Forwarder(listener, ("127.0.0.1", port)).start()
    try:
        yield f"http://{kind_cluster.host_ip}:{forwarder.address[1]}"
    finally:
        forwarder.close()


def _fill_in(readme: str, workdir: Path, endpoint: str, bucket: str, sidecar_image: str) -> None:
    """Write the README's syncconfig.yaml and train-job.yaml with what a user fills in."""
    config = named_block(readme, "syncconfig.yaml")
    spec = config["spec"]
    assert isinstance(spec, dict)
    assert str(spec["uploadDir"]).startswith("s3://bucket/")
    spec["uploadDir"] = str(spec["uploadDir"]).replace("s3://bucket/", f"s3://{bucket}/", 1)
    spec["storage"]["endpoint"] = endpoint
    (workdir / "syncconfig.yaml").write_text(yaml.safe_dump(config))

    job = named_block(readme, "train-job.yaml")
    container = job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["image"] == "<your training image>"
    assert container["command"] == ["python", "train.py"]
    container["image"] = sidecar_image
    # A training image's user owns its home (/root/ray_results): root here. The sidecar
    # image the test borrows runs as 65532, which cannot enter /root.
    container["securityContext"] = {"runAsUser": 0}
    container["command"] = ["python3", "-c", workload("trainer")]
    container["args"] = [
        "--root=/root/ray_results",
        "--experiment=exp",
        "--trial=t0",
        f"--checkpoints={CHECKPOINTS}",
        "--interval=1",
    ]
    (workdir / "train-job.yaml").write_text(yaml.safe_dump(job))


def test_the_readme_quickstart_runs_as_written_on_kind(
    kind_cluster: KindCluster, store_in_kind: str, seaweedfs: S3Server, tmp_path: Path
) -> None:
    readme = README.read_text()
    commands = quickstart_commands(readme)
    assert commands[0].startswith("helm install trialsync charts/trialsync")
    assert commands[-1].startswith("kubectl logs -n ml job/train")
    bucket = seaweedfs.make_bucket()
    (tmp_path / "charts").symlink_to(REPO_ROOT / "charts")
    _fill_in(
        readme,
        tmp_path,
        store_in_kind,
        bucket,
        f"docker.io/trialsync/sidecar:{artifacts.version()}",
    )
    env = {
        **os.environ,
        "KUBECONFIG": str(kind_cluster.kubeconfig),
        "PATH": os.pathsep.join(
            [str(Path(kubectl_path()).parent), str(artifacts.node_bin_dir()), os.environ["PATH"]]
        ),
    }

    def run(command: str) -> str:
        command = command.replace(
            "AWS_ACCESS_KEY_ID=...", f"AWS_ACCESS_KEY_ID={seaweedfs.access_key}"
        )
        command = command.replace(
            "AWS_SECRET_ACCESS_KEY=...", f"AWS_SECRET_ACCESS_KEY={seaweedfs.secret_key}"
        )
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        for command in commands:
            if command.startswith("kubectl get syncconfig"):
                # "READY True": the reconciler's verdict may take a moment.
                deadline = time.monotonic() + 60
                while True:
                    table = run(command)
                    header, row = table.splitlines()[:2]
                    column = header.index("READY")  # kubectl aligns columns
                    ready = row[column:].split()[0]
                    if ready == "True" or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                assert ready == "True", table
            elif command.startswith("kubectl logs"):
                # The logs of a pod that ran: once the Job is done.
                run("kubectl wait --for=condition=complete job/train -n ml --timeout=300s")
                timings["job complete"] = time.monotonic() - started
                logs = run(command)
                published = [
                    json.loads(line)
                    for line in logs.splitlines()
                    if line.startswith("{") and '"checkpoint published"' in line
                ]
                assert len(published) == CHECKPOINTS, logs
            else:
                run(command)
                if command.startswith("helm install"):
                    timings["helm install"] = time.monotonic() - started

        # The checkpoints are in the bucket, each with its manifest.
        client = seaweedfs.client()
        try:
            listing = client.list_objects_v2(Bucket=bucket, Prefix="experiments/exp/t0/")
            keys = sorted(item["Key"] for item in listing.get("Contents", []))
        finally:
            client.close()
        for n in range(1, CHECKPOINTS + 1):
            checkpoint = f"experiments/exp/t0/checkpoint_{n:06d}/"
            assert {checkpoint + "model.bin", checkpoint + MANIFEST_NAME} <= set(keys), keys
        print(
            f"kind quickstart: cluster up {kind_cluster.up_seconds:.1f} s, "
            + ", ".join(f"{k} after {v:.1f} s" for k, v in timings.items())
        )
    finally:
        subprocess.run(
            [
                "bash",
                "-c",
                "helm uninstall trialsync -n trialsync --wait; "
                "kubectl delete namespace ml trialsync --wait=false",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=300,
        )
