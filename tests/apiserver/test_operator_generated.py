"""A sample of generated SyncConfigs and pods through the real apiserver and operator:
whatever the apiserver accepts, the operator agrees with, and every refusal says why."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localcluster.control_plane import Kube
from tests.support.generated import pods, syncconfigs
from tests.support.operator_process import Operator, operator
from tests.support.pods import SIDECAR, sidecars
from trialsync_operator.syncconfig import view_of

pytestmark = pytest.mark.k8s
__all__ = ["operator"]
SAMPLE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def sample_namespace(kube: Kube, operator: Operator) -> str:
    return kube.create_namespace(f"gen-{uuid.uuid4().hex[:8]}")


@SAMPLE
@given(st.data())
def test_generated_syncconfigs_and_pods_through_the_apiserver(
    kube: Kube, sample_namespace: str, data: st.DataObject
) -> None:
    ns = sample_namespace
    config = data.draw(syncconfigs(namespace=ns))
    name = f"g{uuid.uuid4().hex[:10]}"
    config["metadata"] = {"name": name}
    applied = kube.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(config), check=False)
    if applied.returncode != 0:
        assert applied.stderr.strip(), "a refusal without a message"
        assert "Internal error" not in applied.stderr, applied.stderr
    else:
        stored: dict[str, Any] = json.loads(
            kube.kubectl("get", "syncconfig", name, "-n", ns, "-o", "json").stdout
        )
        # Whatever the apiserver (schema, CEL and our webhook) let in, the operator accepts.
        view = view_of(stored, SIDECAR)
        assert view.valid, f"accepted by the apiserver, refused by the operator: {view.message}"

    pod = data.draw(pods([name]))
    pod["metadata"]["name"] = f"p{uuid.uuid4().hex[:10]}"
    created = kube.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(pod), check=False)
    if created.returncode != 0:
        assert created.stderr.strip()
        assert "Internal error" not in created.stderr, created.stderr
        return
    stored_pod = json.loads(
        kube.kubectl("get", "pod", pod["metadata"]["name"], "-n", ns, "-o", "json").stdout
    )
    assert len(sidecars(stored_pod)) <= 1


def test_no_generated_input_crashed_a_handler(operator: Operator) -> None:
    # A refusal is an AdmissionError; anything else would be logged as an exception.
    log = operator.log()
    assert "failed with an exception" not in log
    assert "Traceback" not in log
