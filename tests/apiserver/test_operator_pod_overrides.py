"""The sidecar's resources and user as the apiserver stores them: a Guaranteed pod stays
Guaranteed (``status.qosClass``, which the apiserver computes at creation, with the
sidecar), the pod's overrides reach the sidecar, and a trial mount path that collides with
the sidecar's own mounts is refused by the webhook with its message, not by the
apiserver's validation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.control_plane import Kube
from tests.support.operator_process import Operator, operator
from tests.support.pods import opted_in_pod, sidecars, syncconfig
from tests.support.sidecar_process import wait_for
from trialsync import contract
from trialsync_operator import names, quantity
from trialsync_operator.admission import injection

pytestmark = pytest.mark.k8s
__all__ = ["operator"]  # the module-scoped fixture
DENIED = 'admission webhook "pods.trialsync.io" denied the request: trialsync: '
CONFIG = "exp"


def _apply(kube: Kube, namespace: str, body: dict[str, Any]) -> Any:
    return kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def _get_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    out = kube.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout
    pod: dict[str, Any] = json.loads(out)
    return pod


@pytest.fixture(scope="module")
def ns(kube: Kube, operator: Operator) -> Iterator[str]:
    """A namespace with SyncConfig ``exp``, whose sidecar requests are below its limits,
    and a credentials Secret (so the sidecar mounts it too), known to the operator."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name)
    spec = {
        "uploadDir": "s3://bucket/exp",
        "credentials": {"secretRef": {"name": "s3"}},
        "sidecar": {
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            }
        },
    }
    assert _apply(kube, name, syncconfig(CONFIG, spec)).returncode == 0
    probe = opted_in_pod("probe", CONFIG)
    wait_for(lambda: _apply(kube, name, probe).returncode == 0, 30, what="the operator's index")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _guaranteed(name: str, labelled: bool = True, **annotations: str) -> dict[str, Any]:
    """A GPU trainer with limits only (requests default to them) after a Guaranteed
    init container."""
    pod = opted_in_pod(name, CONFIG, labelled=labelled, **annotations)
    pod["spec"]["initContainers"] = [
        {
            "name": "fetch",
            "image": "example.com/fetch:1",
            "resources": {
                "requests": {"cpu": "250m", "memory": "64Mi"},
                "limits": {"cpu": "250m", "memory": "64Mi"},
            },
        }
    ]
    pod["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}
    }
    return pod


def _amounts(resources: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    return {
        part: {r: quantity.parse(str(v)) for r, v in resources.get(part, {}).items()}
        for part in ("requests", "limits")
    }


def test_a_guaranteed_pod_stays_guaranteed_with_its_sidecar(kube: Kube, ns: str) -> None:
    created = _apply(kube, ns, _guaranteed("gpu"))
    assert created.returncode == 0, created.stderr
    assert "stays Guaranteed" in created.stderr  # the admission warning says what was done
    pod = _get_pod(kube, ns, "gpu")
    [sidecar] = sidecars(pod)
    amounts = _amounts(sidecar["resources"])
    assert amounts["requests"] == amounts["limits"]
    assert amounts["limits"] == {"cpu": quantity.parse("500m"), "memory": 256 * 2**20}
    assert pod["status"]["qosClass"] == "Guaranteed"


def test_a_request_annotation_below_the_limit_makes_the_pod_burstable_as_warned(
    kube: Kube, ns: str
) -> None:
    # The apiserver counts the sidecar: with its request apart from its limit, the same
    # pod is Burstable.
    key = names.SIDECAR_RESOURCE_ANNOTATIONS["requests", "cpu"]
    created = _apply(kube, ns, _guaranteed("apart", **{key: "100m"}))
    assert created.returncode == 0, created.stderr
    assert "becomes Burstable" in created.stderr
    assert _get_pod(kube, ns, "apart")["status"]["qosClass"] == "Burstable"


def test_the_injections_qos_rule_is_the_apiservers(kube: Kube, ns: str) -> None:
    def both(cpu: str, memory: str) -> dict[str, Any]:
        return {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory},
        }

    shapes: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
        # name: (init containers, the trainer's resources)
        "limits-only": ([], {"limits": {"cpu": "1", "memory": "1Gi"}}),
        "equal-written-apart": (
            [],
            {"requests": {"cpu": "1000m"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        ),
        "cpu-only": ([], {"limits": {"cpu": "1"}}),
        "gpu-only": ([], {"limits": {"nvidia.com/gpu": "1"}}),
        "none": ([], {}),
        "request-below": (
            [],
            {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        ),
        "plain-init-without": ([{"name": "i", "image": "i"}], both("1", "1Gi")),
        "native-sidecar-without": (
            [{"name": "i", "image": "i", "restartPolicy": "Always"}],
            both("1", "1Gi"),
        ),
        "native-sidecar-guaranteed": (
            [
                {
                    "name": "i",
                    "image": "i",
                    "restartPolicy": "Always",
                    "resources": both("1", "64Mi"),
                }
            ],
            both("1", "1Gi"),
        ),
    }
    for name, (init, resources) in shapes.items():
        pod = opted_in_pod(f"qos-{name}", CONFIG, labelled=False)
        pod["spec"]["initContainers"] = init
        pod["spec"]["containers"][0]["resources"] = resources
        created = _apply(kube, ns, pod)
        assert created.returncode == 0, (name, created.stderr)
        stored = _get_pod(kube, ns, f"qos-{name}")
        assert not sidecars(stored)
        assert injection.pod_qos(stored["spec"]) == stored["status"]["qosClass"], name
        # And as the webhook sees the pod's body, before the apiserver's defaults.
        assert injection.pod_qos(pod["spec"]) == stored["status"]["qosClass"], name


def test_the_pods_annotations_set_the_sidecars_resources_and_user(kube: Kube, ns: str) -> None:
    resources = names.SIDECAR_RESOURCE_ANNOTATIONS
    annotations = {
        resources["requests", "cpu"]: "300m",
        resources["limits", "cpu"]: "1500m",
        resources["limits", "memory"]: "384Mi",
        resources["requests", "ephemeral-storage"]: "1Gi",
        names.SIDECAR_UID_ANNOTATION: "1000",
        names.SIDECAR_GID_ANNOTATION: "2000",
    }
    created = _apply(kube, ns, opted_in_pod("custom", CONFIG, **annotations))
    assert created.returncode == 0, created.stderr
    pod = _get_pod(kube, ns, "custom")
    [sidecar] = sidecars(pod)
    assert _amounts(sidecar["resources"]) == _amounts(
        {
            "requests": {"cpu": "300m", "memory": "128Mi", "ephemeral-storage": "1Gi"},
            "limits": {"cpu": "1500m", "memory": "384Mi", "ephemeral-storage": "1Gi"},
        }
    )
    context = sidecar["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (
        1000,
        2000,
        True,
    )
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["TRIALSYNC_UPLOAD_MEMORY"] == str(192 * 2**20)  # half the memory limit
    assert pod["status"]["qosClass"] == "Burstable"


def test_a_bad_override_is_refused_by_the_webhook_naming_it(kube: Kube, ns: str) -> None:
    key = names.SIDECAR_RESOURCE_ANNOTATIONS["limits", "memory"]
    refused = _apply(kube, ns, opted_in_pod("bad", CONFIG, **{key: "lots"}))
    assert refused.returncode != 0
    assert f"{DENIED}annotation {key}='lots' is not a resource quantity" in refused.stderr


@pytest.mark.parametrize("path", ["/tmp", contract.CREDENTIALS_MOUNT, "/root/ray_results"])
def test_a_mount_path_at_a_sidecar_mount_makes_a_pod_the_apiserver_admits(
    kube: Kube, ns: str, path: str
) -> None:
    """The trainer sees the trial volume at its mount path, the sidecar at its own: the
    apiserver admits the pod (no "mountPath: must be unique")."""
    name = f"at-{abs(hash(path)) % 10**6}"
    created = _apply(kube, ns, opted_in_pod(name, CONFIG, mount_path=path))
    assert created.returncode == 0, created.stderr
    pod = _get_pod(kube, ns, name)
    [sidecar] = [c for c in pod["spec"]["initContainers"] if c["name"] == names.SIDECAR_NAME]
    trial = [m for m in sidecar["volumeMounts"] if m["name"] == names.TRIAL_VOLUME]
    assert [m["mountPath"] for m in trial] == [contract.TRIAL_MOUNT]
    [trainer] = pod["spec"]["containers"]
    assert {"name": names.TRIAL_VOLUME, "mountPath": path} in trainer["volumeMounts"]
