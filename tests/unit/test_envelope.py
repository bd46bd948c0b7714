"""What a webhook endpoint accepts (``admission.envelope``), and that a pod review never
crashes on an object that passes it, whatever its spec and annotations hold.

tests/apiserver/test_webhook_bodies.py sends the same kinds of bodies, and a thousand
mutations, to the operator process; these are the messages, checked one by one.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from collections import Counter
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.nested import set_path
from tests.support.operator_process import pod_admission_review
from tests.support.pods import lookup_for, opted_in_pod, syncconfig
from trialsync_operator import kube, names
from trialsync_operator.admission import envelope
from trialsync_operator.admission.review import Denied, PodAdmission
from trialsync_operator.kopf_adapter.handlers import ENDPOINTS, MUTATE_PATH, VALIDATE_PATH
from trialsync_operator.settings import Settings

PODS = ENDPOINTS[MUTATE_PATH]
VALID = pod_admission_review(opted_in_pod("p", "exp"), "ml")


def _edited(path: tuple[str, ...], value: Any, drop: bool = False) -> dict[str, Any]:
    review = copy.deepcopy(VALID)
    set_path(review, path, value, drop)
    return review


def test_a_review_as_the_apiserver_sends_it_passes() -> None:
    envelope.check(envelope.parse(json.dumps(VALID).encode(), "application/json"), PODS)
    with_null_old = _edited(("request", "oldObject"), None)  # a CREATE's, as sent
    envelope.check(with_null_old, PODS)


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"", "application/json", "the body is empty"),
        (b"{", "application/json", "the body is not JSON: Expecting property name"),
        (b"\xff", "application/json", "the body is not JSON"),
        (b"[" * 100_000, "application/json", "nested deeper than 64 levels"),
        (b"[" * 70 + b"]" * 70, "application/json", "nested deeper than 64 levels"),
        (b"{}", "text/plain", "Content-Type must be application/json, not text/plain"),
        (b"{}", "", "Content-Type must be application/json, not none"),
        (b" " * (envelope.MAX_BODY_BYTES + 1), "application/json", "larger than"),
    ],
)
def test_a_body_that_is_no_json_object_is_malformed_saying_why(
    body: bytes, content_type: str, says: str
) -> None:
    with pytest.raises(envelope.Malformed, match=says):
        envelope.parse(body, content_type)


@pytest.mark.parametrize(
    ("review", "says"),
    [
        ([VALID], "the body is a JSON array, not an AdmissionReview object"),
        (_edited(("apiVersion",), "admission.k8s.io/v1beta1"), "not an AdmissionReview"),
        (_edited(("kind",), None, drop=True), "and kind null, expected"),
        (_edited(("request",), []), "request must be an object, not array"),
        (_edited(("request", "uid"), None, drop=True), "request.uid is missing"),
        (_edited(("request", "uid"), ""), "request.uid must be a non-empty string"),
        (_edited(("request", "uid"), 5), "request.uid must be a string, not number"),
        (_edited(("request", "operation"), "DELETE"), "reviews CREATE of v1 pods only"),
        (_edited(("request", "operation"), ["CREATE"]), "reviews CREATE of v1 pods only"),
        (
            _edited(("request", "resource", "resource"), "syncconfigs"),
            'request.resource {"group": "", "version": "v1", "resource": "syncconfigs"}',
        ),
        (_edited(("request", "namespace"), ""), "request.namespace is empty"),
        (_edited(("request", "userInfo"), "me"), "request.userInfo must be an object"),
        (_edited(("request", "userInfo", "username"), 1), "username must be a string"),
        (_edited(("request", "dryRun"), "no"), "request.dryRun must be true or false"),
        (_edited(("request", "object"), None), "request.object is missing"),
        (_edited(("request", "oldObject"), 3), "request.oldObject must be an object"),
        (_edited(("request", "object", "metadata"), None), "request.object.metadata is missing"),
        (
            _edited(("request", "object", "metadata", "labels"), None),
            "request.object.metadata.labels is missing",
        ),
        (
            _edited(("request", "object", "metadata", "annotations", names.CONFIG_ANNOTATION), 1),
            f'metadata.annotations\\["{names.CONFIG_ANNOTATION}"\\] must be a string, not number',
        ),
        (
            _edited(("request", "object", "metadata", "ownerReferences"), [1]),
            "ownerReferences must be a list of objects",
        ),
        (_edited(("request", "object", "spec"), "x"), "request.object.spec must be an object"),
        (_edited(("request", "object", "kind"), True), "request.object.kind must be a string"),
    ],
)
def test_a_review_of_the_wrong_shape_is_malformed_saying_what_to_fix(
    review: Any, says: str
) -> None:
    with pytest.raises(envelope.Malformed, match=says):
        envelope.check(review, PODS)


def test_each_endpoint_takes_only_its_resource_and_operations() -> None:
    syncconfigs = ENDPOINTS[VALIDATE_PATH]
    with pytest.raises(
        envelope.Malformed, match=r"reviews CREATE/UPDATE of trialsync\.io/v1alpha1"
    ):
        envelope.check(VALID, syncconfigs)
    review = copy.deepcopy(VALID)
    review["request"]["resource"] = {
        "group": names.GROUP,
        "version": names.VERSION,
        "resource": names.PLURAL,
    }
    review["request"]["object"] = syncconfig("exp", {})
    for operation in ("CREATE", "UPDATE"):
        review["request"]["operation"] = operation
        envelope.check(review, syncconfigs)
    with pytest.raises(envelope.Malformed, match="reviews CREATE of v1 pods only"):
        envelope.check(review, PODS)


#: Any JSON value, nested a little.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
#: What a pod's fields may be replaced with: any JSON value, or the value of another field.
POD_KEYS = ["containers", "initContainers", "volumes", "securityContext", "serviceAccountName"]


@st.composite
def odd_pods(draw: st.DrawFn) -> dict[str, Any]:
    """A pod that passes the envelope (metadata a mapping of strings), with its spec and
    annotations' values odd: any JSON where a field is, any string where an annotation is."""
    pod = opted_in_pod("p", draw(st.sampled_from(["exp", "missing"])))
    pod["metadata"]["namespace"] = "ml"
    spec = pod["spec"]
    for key in draw(st.lists(st.sampled_from(POD_KEYS), max_size=3, unique=True)):
        spec[key] = draw(JSON_VALUES)
    if draw(st.booleans()):
        containers = spec.get("containers")
        container = containers[0] if isinstance(containers, list) and containers else None
        if isinstance(container, dict):
            container[draw(st.sampled_from(["volumeMounts", "env", "securityContext"]))] = draw(
                JSON_VALUES
            )
    for key in draw(
        st.lists(
            st.sampled_from(
                [
                    names.ROLE_ANNOTATION,
                    names.VOLUME_ANNOTATION,
                    names.MOUNT_PATH_ANNOTATION,
                    names.RESTORE_ANNOTATION,
                    names.CONFIG_ANNOTATION,
                ]
            ),
            max_size=3,
        )
    ):
        pod["metadata"]["annotations"][key] = draw(st.text(max_size=12))
    if draw(st.booleans()):
        pod["spec"] = draw(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))
    return pod


def test_a_pod_review_refuses_or_admits_whatever_shape_gets_past_the_envelope() -> None:
    config = syncconfig("exp", {"uploadDir": "s3://bucket/exp"})
    config["metadata"].update(namespace="ml", uid="u-1", generation=1)
    lookup = lookup_for(config)
    ready = asyncio.Event()
    ready.set()
    client = cast(kube.Kube, object())  # a refusal records no Event (refuse mode)
    admission = PodAdmission(dataclasses.replace(Settings()), client, ready)
    reached: Counter[str] = Counter()

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(odd_pods())
    def prop(pod: dict[str, Any]) -> None:
        review = pod_admission_review(pod, "ml")
        envelope.check(json.loads(json.dumps(review)), PODS)  # it does get past
        try:
            decision = admission.review(pod, False, lookup)
        except Denied as denied:
            refusal = denied
        else:
            json.dumps(decision.ops)
            reached["admitted"] += 1
            event("admitted")
            return
        assert refusal.code == 400
        assert str(refusal).startswith("trialsync: ")
        reached["refused"] += 1
        event("refused")

    prop()
    print(f"\npod reviews of odd shapes: {dict(reached)}")
    assert reached["refused"] >= 100, reached
    assert reached["admitted"] >= 30, reached
