"""Malformed bodies to the operator's webhook endpoints: a 400 that says what is wrong,
never a 5xx, never a crash, and valid reviews answered as before.

The operator runs as a process (the module's ``operator`` fixture) and is called over TLS
on its own port, as the apiserver calls it. The bodies: hand-written edge cases (not JSON,
the wrong JSON type, too deep, too large, the wrong Content-Type or encoding, each field of
the envelope missing or of the wrong type, the wrong resource or operation) and a seeded
generator of mutations of a valid review of each endpoint (a key dropped, a value of
another type, the text cut or garbled, the envelope or operation changed). Some mutations
leave a valid review (a field the envelope does not constrain): those must get a valid
AdmissionReview answer, and the test checks that the server took each body as valid
exactly when ``admission.envelope`` does.
"""

from __future__ import annotations

import copy
import gzip
import http.client
import json
import random
import re
import ssl
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.control_plane import Kube
from tests.support.nested import set_path
from tests.support.operator_process import Operator, operator, pod_admission_review
from tests.support.pods import opted_in_pod, syncconfig
from tests.support.sidecar_process import wait_for
from trialsync_operator import names
from trialsync_operator.admission import envelope
from trialsync_operator.kopf_adapter.handlers import ENDPOINTS, MUTATE_PATH, VALIDATE_PATH

pytestmark = pytest.mark.k8s
__all__ = ["operator"]  # the module-scoped fixture

SEED = 20261206
MUTATIONS_PER_ENDPOINT = 600
JSON = "application/json"
#: Values of every JSON type, to put where another type belongs.
ODD_VALUES: list[Any] = [None, 0, -1, 2**70, 1.5, True, False, "", "x", "\u00e9\u6f22", [], [1], {}]
OPERATIONS = ["DELETE", "CONNECT", "create", "", "UPDATE", "PATCH"]


def _syncconfig_review(namespace: str) -> dict[str, Any]:
    body = syncconfig("checked", {"uploadDir": "s3://bucket/exp"})
    body["metadata"]["namespace"] = namespace
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": names.GROUP, "version": names.VERSION, "kind": names.KIND},
            "resource": {"group": names.GROUP, "version": names.VERSION, "resource": "syncconfigs"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": body,
            "dryRun": False,
        },
    }


class Client:
    """One keep-alive HTTPS connection to the operator's webhook port (the certificate is
    not what is tested here); reconnects when the server closed the connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.connection: http.client.HTTPSConnection | None = None
        self.reconnects = 0

    def post(
        self, path: str, body: bytes, content_type: str | None = JSON, **headers: str
    ) -> tuple[int, str]:
        if content_type is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self.context, timeout=20
                )
            try:
                self.connection.request("POST", path, body=body, headers=headers)
                response = self.connection.getresponse()
                text = response.read().decode("utf-8", "replace")
                if response.getheader("Connection", "").lower() == "close":
                    self._close()
                return response.status, text
            except (ConnectionError, http.client.HTTPException, ssl.SSLError):
                self._close()
                if attempt:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")

    def _close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indices)."""
    children: Any = ()
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    for key, child in children:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def mutations(valid: dict[str, Any], rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` (kind, body) mutations of ``valid``, reproducibly from ``rng``."""
    # Paths in the envelope and the object's metadata are picked more often than the
    # deep spec: that is where the envelope's checks are.
    paths = list(_paths(valid))
    shallow = [p for p in paths if len(p) <= 3 or p[:3] == ("request", "object", "metadata")]
    kinds = ["drop", "retype", "truncate", "garble", "wrap", "envelope", "operation", "uid"]
    for _ in range(count):
        kind = rng.choice(kinds)
        doc = copy.deepcopy(valid)
        if kind in ("drop", "retype"):
            path = rng.choice(shallow if rng.random() < 0.7 else paths)
            set_path(doc, path, rng.choice(ODD_VALUES), drop=kind == "drop")
        elif kind == "truncate":
            text = json.dumps(doc).encode()
            yield kind, text[: rng.randrange(len(text) - 1)]
            continue
        elif kind == "garble":
            text = bytearray(json.dumps(doc).encode())
            for _ in range(rng.randint(1, 4)):
                text[rng.randrange(len(text))] = rng.choice(b'{}[]",:\\\x00\xff\xc3 0a')
            yield kind, bytes(text)
            continue
        elif kind == "wrap":
            yield kind, json.dumps(rng.choice([[doc], json.dumps(doc), {"review": doc}])).encode()
            continue
        elif kind == "envelope":
            key = rng.choice(["apiVersion", "kind"])
            doc[key] = rng.choice(
                [
                    "admission.k8s.io/v1beta1",
                    "v1",
                    "AdmissionResponse",
                    "admissionreview",
                    *ODD_VALUES,
                ]
            )
        elif kind == "operation":
            doc["request"]["operation"] = rng.choice(OPERATIONS + ODD_VALUES)
        elif kind == "uid":
            doc["request"]["uid"] = rng.choice(["", "u" * 129, 7, None, ["x"]])
        yield kind, json.dumps(doc).encode()


def _hand_written(
    pod_review: dict[str, Any],
) -> list[tuple[str, bytes, str | None, dict[str, str]]]:
    """(name, body, Content-Type, headers): each an edge a generator would rarely hit."""
    valid = json.dumps(pod_review).encode()

    def edited(edit: Any) -> bytes:
        doc = copy.deepcopy(pod_review)
        edit(doc)
        return json.dumps(doc).encode()

    def requestset_path(key: str, value: Any) -> Any:
        return lambda d: d["request"].__setitem__(key, value)

    def objectset_path(*path: str, value: Any) -> Any:
        return lambda d: set_path(d, ("request", "object", *path), value)

    cases: list[tuple[str, bytes, str | None, dict[str, str]]] = [
        ("empty", b"", JSON, {}),
        ("blank", b"  \n", JSON, {}),
        ("null", b"null", JSON, {}),
        ("number", b"42", JSON, {}),
        ("string", b'"AdmissionReview"', JSON, {}),
        ("array", b"[]", JSON, {}),
        ("object", b"{}", JSON, {}),
        ("open brace", b"{", JSON, {}),
        ("not utf-8", b'{"a": "\xff\xfe"}', JSON, {}),
        ("NaN", b'{"apiVersion": NaN}', JSON, {}),
        ("deep arrays", b"[" * 100_000 + b"]" * 100_000, JSON, {}),
        ("deep objects", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, JSON, {}),
        (
            "deep in the object",
            edited(objectset_path("spec", "x", value=json.loads('{"a":' * 80 + "1" + "}" * 80))),
            JSON,
            {},
        ),
        ("9 MiB", b'{"a": "' + b"x" * (9 * 1024 * 1024) + b'"}', JSON, {}),
        ("no Content-Type", valid, None, {}),
        ("text/plain", valid, "text/plain", {}),
        ("form", valid, "application/x-www-form-urlencoded", {}),
        ("yaml", valid, "application/yaml", {}),
        ("bad gzip", valid, JSON, {"Content-Encoding": "gzip"}),
        ("gzip of garbage", gzip.compress(b"{not json"), JSON, {"Content-Encoding": "gzip"}),
        ("request null", edited(lambda d: d.__setitem__("request", None)), JSON, {}),
        ("request list", edited(lambda d: d.__setitem__("request", [d["request"]])), JSON, {}),
        ("no uid", edited(lambda d: d["request"].pop("uid")), JSON, {}),
        ("no userInfo", edited(lambda d: d["request"].pop("userInfo")), JSON, {}),
        ("no object", edited(lambda d: d["request"].pop("object")), JSON, {}),
        ("object list", edited(requestset_path("object", [])), JSON, {}),
        ("oldObject string", edited(requestset_path("oldObject", "x")), JSON, {}),
        ("no namespace", edited(requestset_path("namespace", "")), JSON, {}),
        ("dryRun string", edited(requestset_path("dryRun", "yes")), JSON, {}),
        ("subResource number", edited(requestset_path("subResource", 1)), JSON, {}),
        ("DELETE", edited(requestset_path("operation", "DELETE")), JSON, {}),
        (
            "a SyncConfig's resource",
            edited(
                requestset_path(
                    "resource", {"group": names.GROUP, "version": "v1", "resource": "syncconfigs"}
                )
            ),
            JSON,
            {},
        ),
        ("metadata string", edited(objectset_path("metadata", value="x")), JSON, {}),
        ("labels list", edited(objectset_path("metadata", "labels", value=["a"])), JSON, {}),
        (
            "annotation number",
            edited(objectset_path("metadata", "annotations", names.CONFIG_ANNOTATION, value=5)),
            JSON,
            {},
        ),
        (
            "ownerReferences of strings",
            edited(objectset_path("metadata", "ownerReferences", value=["x"])),
            JSON,
            {},
        ),
        ("spec list", edited(objectset_path("spec", value=[])), JSON, {}),
        ("name number", edited(objectset_path("metadata", "name", value=3)), JSON, {}),
    ]
    return cases


#: The 400 messages' branches, each claimed reached: (name, a pattern of its message), the
#: first that matches counts.
BRANCHES = [
    ("a label or annotation", r"metadata\.(labels|annotations)\[.* must be a string"),
    ("not JSON", r"is not JSON"),
    ("empty", r"the body is empty"),
    ("too deep", r"nested deeper than"),
    ("too large", r"larger than"),
    ("Content-Type", r"Content-Type must be"),
    ("Content-Encoding", r"Content-Encoding .*: send the review uncompressed"),
    ("not an object", r"not an AdmissionReview object"),
    ("apiVersion or kind", r"not an AdmissionReview: apiVersion"),
    ("a field missing", r" is missing"),
    ("a field's type", r" must be "),
    ("resource or operation", r"this endpoint reviews"),
    ("empty namespace", r"request\.namespace is empty"),
]


def _branch(message: str) -> str:
    return next((name for name, pattern in BRANCHES if re.search(pattern, message)), "other")


def _locally_valid(body: bytes, endpoint: envelope.Endpoint) -> bool:
    try:
        envelope.check(envelope.parse(body, JSON), endpoint)
    except envelope.Malformed:
        return False
    return True


def _check_answer(text: str, body: bytes) -> dict[str, Any]:
    answer = json.loads(text)
    sent = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == sent["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    code = (response.get("status") or {}).get("code")
    assert code is None or code < 500, response  # a handler never crashed
    return dict(response)


@pytest.fixture
def namespace(kube: Kube, operator: Operator) -> str:
    """A namespace with a valid SyncConfig ``exp`` the operator has read."""
    ns = kube.create_namespace(f"bodies-{uuid.uuid4().hex[:8]}")
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(syncconfig("exp", {})))

    def ready() -> bool:
        out = kube.kubectl("get", "syncconfig", "exp", "-n", ns, "-o", "json").stdout
        conditions = (json.loads(out).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(ready, 30, what="SyncConfig exp Ready")
    return ns


def test_malformed_bodies_get_400_saying_why_and_never_a_5xx(
    operator: Operator, namespace: str
) -> None:
    client = Client(operator.webhook_port)
    rng = random.Random(SEED)
    valid = {
        MUTATE_PATH: pod_admission_review(opted_in_pod("p", "exp"), namespace),
        VALIDATE_PATH: _syncconfig_review(namespace),
    }
    statuses: Counter[int] = Counter()
    branches: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    unexplained = []

    def send(path: str, name: str, body: bytes, content_type: str | None = JSON, **headers: str):
        status, text = client.post(f"/{path}", body, content_type, **headers)
        statuses[status] += 1
        if status == 400:
            assert text.strip(), f"{name}: a 400 without a message"
            branch = _branch(text)
            branches[branch] += 1
            if branch == "other":
                unexplained.append((name, text))
        return status, text

    for name, body, content_type, headers in _hand_written(valid[MUTATE_PATH]):
        status, text = send(MUTATE_PATH, name, body, content_type, **headers)
        assert status == 400, f"{name}: {status} {text[:300]}"
    hand_written = sum(statuses.values())

    for path, review in valid.items():
        for kind, body in mutations(review, rng, MUTATIONS_PER_ENDPOINT):
            kinds[kind] += 1
            status, text = send(path, kind, body)
            expected_valid = _locally_valid(body, ENDPOINTS[path])
            if expected_valid:
                assert status == 200, f"{kind}: {status} {text[:300]}\n{body[:2000]!r}"
                response = _check_answer(text, body)
                answered["allowed" if response["allowed"] else "refused by the handler"] += 1
            else:
                assert status == 400, f"{kind}: {status} {text[:300]}\n{body[:300]!r}"

    total = sum(statuses.values())
    print(f"\n{total} bodies ({hand_written} hand-written): statuses {dict(statuses)}")
    print(f"mutations {dict(kinds)}; valid ones answered {dict(answered)}")
    print(f"400s by branch {dict(branches)}")
    assert total >= 1_000 + hand_written
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 400}, statuses
    assert statuses[400] >= 1_000, statuses
    assert unexplained == [], unexplained[:5]
    for name, _ in BRANCHES:
        assert branches[name] >= 1, f"no body reached the branch {name!r}: {dict(branches)}"
    for kind in ("drop", "retype", "truncate", "garble", "wrap", "envelope", "operation", "uid"):
        assert kinds[kind] >= 30, kinds
    # Valid mutations were answered, both ways (the pod review refuses odd specs).
    assert answered["allowed"] >= 10, answered
    assert answered["refused by the handler"] >= 5, answered

    # Alive and unchanged: a valid review of each endpoint is answered as before.
    assert operator.proc.poll() is None
    status, text = client.post(f"/{MUTATE_PATH}", json.dumps(valid[MUTATE_PATH]).encode())
    assert status == 200
    response = _check_answer(text, json.dumps(valid[MUTATE_PATH]).encode())
    assert response["allowed"]
    assert response["patchType"] == "JSONPatch"
    status, text = client.post(f"/{VALIDATE_PATH}", json.dumps(valid[VALIDATE_PATH]).encode())
    assert status == 200
    assert _check_answer(text, json.dumps(valid[VALIDATE_PATH]).encode())["allowed"]
    log = operator.log()
    assert "Traceback" not in log
    assert "Error handling request" not in log


def test_a_path_that_is_no_webhook_is_404_naming_the_webhooks(operator: Operator) -> None:
    status, text = Client(operator.webhook_port).post("/mutate-podz", b"{}")
    assert status == 404
    assert "/mutate-pods" in text
    assert "/validate-syncconfigs" in text
