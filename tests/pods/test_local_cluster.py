"""The local cluster's promises to the host: it changes none of the host's sysctls,
iptables, interfaces or paths, and nothing of it survives the process that started it."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from localcluster import cgroups, control, isolation, layout
from localcluster.control import LocalCluster
from localcluster.harness import Cluster
from tests.pods.trial_pods import RESTRICTED
from tests.support.requirements import external_cluster_only

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def local(cluster: Cluster) -> LocalCluster:
    if cluster.local is None:
        external_cluster_only("the host-isolation checks need the local cluster")
    return cluster.local


def _in_cluster(local: LocalCluster, *argv: str) -> str:
    """Run a host program in the cluster's network and mount namespaces (its view of /proc)."""
    mnt = f"/proc/{local.state.launcher_pid}/ns/mnt"
    done = subprocess.run(
        ["nsenter", f"--net={local.netns}", f"--mount={mnt}", "--", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_the_host_keeps_its_sysctls_iptables_interfaces_and_paths(
    cluster: Cluster, local: LocalCluster, cluster_namespace: str
) -> None:
    # Make every component do its work first: a pod on the bridge, a Service's rules.
    ns = cluster_namespace
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "idle", "labels": {"app": "idle"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "idle",
                        "image": cluster.images.sidecar,
                        "command": ["python3", "-c", "import time; time.sleep(600)"],
                        "securityContext": RESTRICTED,
                    }
                ],
            },
        },
        ns,
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "idle"},
            "spec": {"selector": {"app": "idle"}, "ports": [{"port": 80}]},
        },
        ns,
    )
    cluster.wait_for("pod", "idle", ns, "condition=Ready")

    assert cluster.host_before is not None  # recorded when this session started the cluster
    before, after = asdict(cluster.host_before), asdict(isolation.snapshot())
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert changed == {}, f"changed on the host (before, after): {changed}"

    # Inside, the same names hold what the components wanted.
    for name, value in layout.KUBELET_SYSCTLS.items():
        assert _in_cluster(local, "cat", f"/proc/sys/{name}").strip() == str(value)
    assert _in_cluster(local, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    rules = _in_cluster(local, "iptables-save")
    assert "KUBE-SERVICES" in rules
    assert f"{ns}/idle" in rules  # kube-proxy's rule for the Service
    assert layout.BRIDGE in _in_cluster(local, "ip", "-o", "link")


#: A second instance, started by a process the test then kills with SIGKILL. It runs a pod
#: (the pause image) so that shims and containers exist too.
CRASHING_STARTER = """
import json, subprocess, sys, time
from pathlib import Path
from localcluster import control
args = json.loads(sys.argv[1])
cluster = control.start(
    bin_dir=Path(args["bin_dir"]), kubectl=Path(args["kubectl"]),
    images=[Path(args["pause_archive"])], pause_image=args["pause_ref"],
)
kubectl = [args["kubectl"], f"--kubeconfig={cluster.kubeconfig}"]
subprocess.run([*kubectl, "run", "p", f"--image={args['pause_ref']}", "--image-pull-policy=Never"],
               check=True, capture_output=True)
subprocess.run([*kubectl, "wait", "--for=condition=Ready", "pod/p", "--timeout=120s"],
               check=True, capture_output=True)
print(json.dumps({"root": str(cluster.files.root), "launcher": cluster.state.launcher_pid,
                  "unshare": cluster.state.unshare_pid}), flush=True)
time.sleep(600)
"""


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (host pids): the launcher, the components, the
    shims it reaps as the namespace's init, and the containers in their own pid namespaces."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(stat[1])
    found = {pid}
    grew = True
    while grew:
        below = {child for child, parent in parents.items() if parent in found}
        grew = not below <= found
        found |= below
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_starter_leaves_no_process_and_its_leftovers_are_cleaned(
    local: LocalCluster,
) -> None:
    plan = json.loads(local.files.plan.read_text())
    manifest_pause = next(p for p in plan["images"] if Path(p).name.startswith("pause-"))
    pause_ref = json.loads(Path(manifest_pause).with_suffix(".json").read_text())["ref"]
    args = {
        "bin_dir": plan["bin_dir"],
        "kubectl": plan["kubectl"],
        "pause_archive": manifest_pause,
        "pause_ref": pause_ref,
    }
    starter = subprocess.Popen(
        [sys.executable, "-c", CRASHING_STARTER, json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert starter.stdout is not None
        ready, _, _ = select.select([starter.stdout], [], [], 240)
        assert ready, "the second cluster did not come up"
        info = json.loads(starter.stdout.readline())
        members = _descendants(info["launcher"])
        commands = {Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0] for pid in members}
        names = {Path(c).name for c in commands}
        assert {"kubelet", "containerd", "containerd-shim-runc-v2", "pause"} <= names

        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in [*members, info["unshare"]]):
            assert time.monotonic() < deadline, [p for p in members if _alive(p)]
            time.sleep(0.2)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()

    # Its state directory and cgroups are left, unlocked: the next start removes them.
    root = Path(info["root"])
    assert root.is_dir()
    assert root.name in control.clean_dead_instances()
    assert not root.exists()
    assert not any((h / f"trialsync-{root.name}").exists() for h in cgroups.hierarchies())
    # The instance this session uses is alive, so it was left alone.
    assert local.alive()
    assert local.files.root.is_dir()
