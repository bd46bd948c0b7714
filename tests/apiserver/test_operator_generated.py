"""A sample of generated SyncConfigs and pods through the real apiserver and operator.

Every SyncConfig the apiserver stores the operator takes as valid, and every valid spec
(``valid_syncconfigs``) the apiserver stores. Every pod comes out exactly as the pure
injection (``injection.plan``, with the view of the SyncConfig as stored) says: with its
one sidecar, admitted unmodified, or refused with the injection's message.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from localcluster.control_plane import Kube
from tests.support.generated import pods, syncconfigs, valid_syncconfigs
from tests.support.operator_process import Operator, operator
from tests.support.pods import DEFAULTS, SIDECAR, apply, sidecars
from trialsync_operator import names, quantity
from trialsync_operator.admission import injection
from trialsync_operator.syncconfig import ConfigView, view_of

pytestmark = pytest.mark.k8s
__all__ = ["operator"]
EXAMPLES = 150
SAMPLE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: How long the operator's index may lag behind a SyncConfig the apiserver just stored.
INDEX_LAG = 10.0
#: How kubectl shows the webhook's refusal.
DENIED = 'admission webhook "pods.trialsync.io" denied the request: trialsync: '
#: The ServiceAccount token's volume, which the apiserver adds to every pod.
TOKEN_VOLUME = r"kube-api-access-[a-z0-9]+"
#: The sidecar's fields the apiserver keeps as the webhook wrote them (it defaults others).
SIDECAR_FIELDS = (
    "image",
    "imagePullPolicy",
    "restartPolicy",
    "args",
    "env",
    "envFrom",
    "ports",
    "securityContext",
    "terminationMessagePolicy",
)


@pytest.fixture(scope="module")
def sample_namespace(kube: Kube, operator: Operator) -> str:
    return kube.create_namespace(f"gen-{uuid.uuid4().hex[:8]}")


def test_generated_syncconfigs_and_pods_through_the_apiserver(
    kube: Kube, sample_namespace: str
) -> None:
    ns = sample_namespace
    reached: Counter[str] = Counter()

    @SAMPLE
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        name = f"g{uuid.uuid4().hex[:10]}"
        # Three in four specs valid (the apiserver must take them), the rest hostile.
        if data.draw(st.sampled_from([True, True, True, False]), label="from a valid spec"):
            config = data.draw(valid_syncconfigs(name=name, namespace=ns))
            from_valid = True
        else:
            config = data.draw(syncconfigs(namespace=ns, name=st.just(name), valid=0))
            from_valid = False
        view = _create_syncconfig(kube, ns, config, from_valid, reached)
        lookup = lambda n, m: view if view is not None and (n, m) == view.key else None  # noqa: E731

        pod = data.draw(pods([name], junk=False))
        pod["metadata"]["name"] = f"p{uuid.uuid4().hex[:10]}"
        try:
            predicted = injection.plan(pod, ns, lookup, DEFAULTS)
        except injection.Refusal as exc:
            refusal = str(exc)
        else:
            refusal = ""
        created = _create_pod(kube, ns, pod, view)
        if refusal:
            reached["pod refused"] += 1
            event("pod refused")
            assert created.returncode != 0, f"created, but the injection refuses: {refusal}"
            denied = created.stderr.partition(DENIED)[2].strip()
            assert _without_token_volume(denied) == refusal, created.stderr
            return
        assert created.returncode == 0, created.stderr
        stored: dict[str, Any] = json.loads(created.stdout)
        if predicted.patch is None:
            reached["admitted unmodified"] += 1
            event("admitted unmodified")
            assert view is not None
            assert sidecars(stored) == []
            assert names.STATUS_ANNOTATION not in stored["metadata"].get("annotations", {})
            assert f"SyncConfig {ns}/{view.name} disables syncing" in created.stderr
            return
        _same_injection(stored, apply(pod, predicted.patch))
        reached["one sidecar, as predicted"] += 1
        event("one sidecar, as predicted")

    prop()
    print(f"branches reached: {dict(reached)}")
    # Three in four SyncConfigs valid, four in five pods well formed: 60% of the examples
    # or so get a sidecar through the apiserver and the operator, and each other branch
    # is reached too.
    assert reached["one sidecar, as predicted"] >= EXAMPLES // 3, reached
    assert reached["pod refused"] >= EXAMPLES // 30, reached
    assert reached["syncconfig stored"] >= EXAMPLES // 2, reached
    assert reached["syncconfig refused"] >= 1, reached


def _create_syncconfig(
    kube: Kube,
    ns: str,
    config: dict[str, Any],
    from_valid: bool,
    reached: Counter[str],
) -> ConfigView | None:
    """Create ``config``: its view as the operator reads it from the apiserver, or None
    when the apiserver refuses it."""
    name = config["metadata"]["name"]
    body = {**config, "metadata": {"name": name}}
    created = kube.kubectl(
        "create", "-n", ns, "-f", "-", "-o", "json", input=json.dumps(body), check=False
    )
    if created.returncode != 0:
        reached["syncconfig refused"] += 1
        assert created.stderr.strip(), "a refusal without a message"
        assert "Internal error" not in created.stderr, created.stderr
        # A spec the operator takes, the apiserver takes too.
        assert not from_valid, f"a valid spec refused by the apiserver: {created.stderr}"
        return None
    reached["syncconfig stored"] += 1
    stored: dict[str, Any] = json.loads(created.stdout)
    # Whatever the apiserver (schema, CEL and our webhook) let in, the operator accepts.
    view = view_of(stored, SIDECAR)
    assert view.valid, f"accepted by the apiserver, refused by the operator: {view.message}"
    return view


def _create_pod(kube: Kube, ns: str, pod: dict[str, Any], view: ConfigView | None) -> Any:
    """Create ``pod``; while the operator's index has yet to see the stored SyncConfig
    ``view``, its refusal says so, and the pod is sent again."""
    lagging = "" if view is None else f"SyncConfig {ns}/{view.name} (annotation"
    deadline = time.monotonic() + INDEX_LAG
    while True:
        created = kube.kubectl(
            "create", "-n", ns, "-f", "-", "-o", "json", input=json.dumps(pod), check=False
        )
        if not (lagging and created.returncode != 0 and lagging in created.stderr):
            return created
        assert time.monotonic() < deadline, f"the index never saw {view}: {created.stderr}"
        time.sleep(0.2)


def _same_injection(stored: Mapping[str, Any], predicted: Mapping[str, Any]) -> None:
    """The pod the apiserver stored has the one sidecar ``predicted`` has, where it has it,
    with its environment, mounts and resources, and the same status annotation."""
    [sidecar] = sidecars(stored)
    [want] = sidecars(predicted)
    init = stored["spec"]["initContainers"]
    assert init[-1]["name"] == names.SIDECAR_NAME == want["name"]
    assert init[-1]["restartPolicy"] == "Always"
    assert [c["name"] for c in init] == [c["name"] for c in predicted["spec"]["initContainers"]]
    for field in SIDECAR_FIELDS:
        assert sidecar.get(field) == want.get(field), field
    for probe in ("startupProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"] == {**want[probe]["httpGet"], "scheme": "HTTP"}
    # The apiserver defaults a request the webhook left out to its limit.
    limits = want["resources"]["limits"]
    for part, need in (
        ("requests", {**limits, **want["resources"]["requests"]}),
        ("limits", limits),
    ):
        have = sidecar["resources"][part]
        assert {k: quantity.parse(v) for k, v in have.items()} == {
            k: quantity.parse(v) for k, v in need.items()
        }, part
    # The apiserver adds the ServiceAccount token's mount; the rest is the webhook's.
    assert _own_mounts(sidecar) == want["volumeMounts"]
    for container, planned in zip(
        stored["spec"]["containers"], predicted["spec"]["containers"], strict=True
    ):
        assert _own_mounts(container) == planned.get("volumeMounts", []), container["name"]
    volumes = {v["name"] for v in stored["spec"]["volumes"]}
    assert {v["name"] for v in predicted["spec"]["volumes"]} <= volumes
    for key in (names.CONFIG_LABEL, names.ROLE_LABEL):
        assert stored["metadata"]["labels"][key] == predicted["metadata"]["labels"][key]
    status = names.STATUS_ANNOTATION
    assert json.loads(stored["metadata"]["annotations"][status]) == json.loads(
        predicted["metadata"]["annotations"][status]
    )


def _without_token_volume(message: str) -> str:
    """``message`` without the ServiceAccount token's volume, which the apiserver adds to
    the pod before the webhook sees it (a refusal may list the pod's volumes)."""
    message = re.sub(rf", {TOKEN_VOLUME}|{TOKEN_VOLUME}, |{TOKEN_VOLUME}", "", message)
    return message.replace("(it has: )", "(it has: none)")


def _own_mounts(container: Mapping[str, Any]) -> list[Any]:
    return [
        m for m in container.get("volumeMounts", []) if not re.fullmatch(TOKEN_VOLUME, m["name"])
    ]


def test_no_generated_input_crashed_a_handler(operator: Operator) -> None:
    # A refusal is an AdmissionError; anything else would be logged as an exception.
    log = operator.log()
    assert "failed with an exception" not in log
    assert "Traceback" not in log
