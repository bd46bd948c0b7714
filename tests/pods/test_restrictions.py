"""The sidecar's restrictions hold in a real container: non-root, read-only root
filesystem, no capabilities, no privilege escalation, seccomp, and the pod's user."""

from __future__ import annotations

import json

import pytest

from localcluster.cluster_s3 import ClusterS3
from localcluster.harness import Cluster
from tests.pods.trial_pods import (
    RESTRICTED,
    SIDECAR_NAME,
    injected_pod,
    s3_spec,
    syncconfig_view,
)
from trialsync import contract
from trialsync_operator.admission.injection import NON_ROOT_UID

pytestmark = pytest.mark.timeout(300)

POD_USER = {"runAsUser": 1234, "runAsGroup": 2345, "fsGroup": 2345}

#: Run inside the sidecar container: who it is, what it may do, where it may write (the
#: trial volume: at the sidecar's own path).
INSPECT = f"""
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
def can_write(path):
    try:
        with open(os.path.join(path, ".probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, ".probe"))
        return True
    except OSError as exc:
        return exc.strerror
print(json.dumps({{
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "root": can_write("/"), "opt": can_write("/opt/trialsync"),
    "tmp": can_write("/tmp"), "trial": can_write({contract.TRIAL_MOUNT!r}),
}}))
"""


def _inspect(cluster: Cluster, pod: str, ns: str) -> dict[str, object]:
    out = cluster.kube.kubectl(
        "exec", pod, "-n", ns, "-c", SIDECAR_NAME, "--", "python3", "-c", INSPECT
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def _idle(image: str) -> dict[str, object]:
    return {
        "name": "main",
        "image": image,
        "command": ["python3", "-c", "import time; time.sleep(3600)"],
        "securityContext": RESTRICTED,
    }


@pytest.mark.parametrize(
    ("pod_security", "uid", "gid"),
    [
        pytest.param({}, NON_ROOT_UID, NON_ROOT_UID, id="image-user"),
        pytest.param(POD_USER, 1234, 2345, id="pod-runAsUser"),
    ],
)
def test_sidecar_runs_unprivileged_on_a_read_only_root(
    cluster: Cluster,
    cluster_s3: ClusterS3,
    cluster_namespace: str,
    pod_security: dict[str, int],
    uid: int,
    gid: int,
) -> None:
    ns = cluster_namespace
    bucket = cluster_s3.server.make_bucket()
    endpoint = cluster_s3.install(cluster, ns)
    pod = injected_pod(
        cluster,
        syncconfig_view(cluster, ns, s3_spec(cluster_s3, endpoint, f"s3://{bucket}/r")),
        "restricted",
        [_idle(cluster.images.sidecar)],
        pod_security=pod_security,
        grace_seconds=5,
    )
    cluster.apply(pod, ns)
    cluster.wait_for("pod", "restricted", ns, "condition=Ready")

    seen = _inspect(cluster, "restricted", ns)
    assert (seen["uid"], seen["gid"]) == (uid, gid)
    assert seen["cap_eff"] == "0000000000000000"  # every capability dropped
    assert seen["no_new_privs"] == "1"  # allowPrivilegeEscalation: false
    assert seen["seccomp"] == "2"  # a filter: RuntimeDefault
    assert seen["root"] == "Read-only file system"
    assert seen["opt"] == "Read-only file system"
    assert seen["tmp"] is True
    # A worker reads the trial volume and never writes it (only a receiving head does).
    assert seen["trial"] == "Read-only file system"
    # The main container runs as the same user (the pod's, or the image's), so the sidecar
    # can read what it must sync.
    whoami = ["python3", "-c", "import os; print(os.getuid())"]
    main_uid = cluster.kube.kubectl("exec", "restricted", "-n", ns, "-c", "main", "--", *whoami)
    assert int(main_uid.stdout) == uid
