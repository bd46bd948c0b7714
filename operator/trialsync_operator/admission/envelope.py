"""What a webhook endpoint accepts as an AdmissionReview, before any handler sees it (pure).

The apiserver sends ``admission.k8s.io/v1`` reviews of the resource and operations an
endpoint's configuration names; anything else that reaches the port is malformed, and
``check`` says what is wrong with it in one line, so the server answers 400 with that
message instead of letting a handler, or kopf, trip on it. A review that passes has the
shape every later step reads: the request's fields of the right types, and an object whose
metadata is a mapping with labels and annotations of strings. What the object's spec
holds is the injection's and the SyncConfig view's to judge (they refuse, never crash).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
#: More than the apiserver ever sends: an object is at most 3 MiB in a request (and
#: 1.5 MiB in etcd); a review holds the object and, for an update, the old one.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Deeper than any Kubernetes object (a pod's affinity terms, or managedFields, reach
#: about 15 levels under the review); deeper bodies are refused before a handler recurses.
MAX_DEPTH = 64
CONTENT_TYPE = "application/json"


class Malformed(ValueError):
    """The body is no AdmissionReview this endpoint accepts; the message says why."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """The resource (group, version, plural) and operations one webhook path reviews."""

    group: str
    version: str
    resource: str
    operations: frozenset[str]

    def describe(self) -> str:
        group = f"{self.group}/" if self.group else ""
        return f"{'/'.join(sorted(self.operations))} of {group}{self.version} {self.resource}"


def parse(body: bytes, content_type: str) -> Any:
    """The JSON of ``body``, or Malformed (not JSON, too large, too deep, wrong type)."""
    if content_type != CONTENT_TYPE:
        raise Malformed(f"Content-Type must be {CONTENT_TYPE}, not {content_type or 'none'}")
    if len(body) > MAX_BODY_BYTES:
        raise Malformed(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise Malformed("the body is empty: send an AdmissionReview")
    try:
        data = json.loads(body)
    except RecursionError:
        raise Malformed(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        raise Malformed(f"the body is not JSON: {exc}") from None
    if _depth_exceeds(data, MAX_DEPTH):
        raise Malformed(f"the body is nested deeper than {MAX_DEPTH} levels")
    return data


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check(review: Any, endpoint: Endpoint) -> None:
    """Raise Malformed unless ``review`` is an AdmissionReview ``endpoint`` accepts."""
    if not isinstance(review, dict):
        raise Malformed(f"the body is a JSON {_type(review)}, not an AdmissionReview object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise Malformed(
            f"not an AdmissionReview: apiVersion {_short(review.get('apiVersion'))} and kind "
            f"{_short(review.get('kind'))}, expected {API_VERSION!r} and {KIND!r}"
        )
    request = _field(review, "request", dict, "")
    uid = _field(request, "uid", str, "request.")
    if not uid or len(uid) > 128:
        raise Malformed("request.uid must be a non-empty string of at most 128 characters")
    resource = _field(request, "resource", dict, "request.")
    wanted = (endpoint.group, endpoint.version, endpoint.resource)
    got = tuple(resource.get(k) for k in ("group", "version", "resource"))
    operation = request.get("operation")
    if got != wanted or not isinstance(operation, str) or operation not in endpoint.operations:
        raise Malformed(
            f"request.resource {_short(resource)} and request.operation {operation!r}: "
            f"this endpoint reviews {endpoint.describe()} only"
        )
    _field(request, "kind", dict, "request.")
    for key in ("subResource", "name"):
        if request.get(key) is not None:
            _field(request, key, str, "request.")
    namespace = _field(request, "namespace", str, "request.")
    if not namespace:
        raise Malformed(f"request.namespace is empty: {endpoint.resource} are namespaced")
    user = _field(request, "userInfo", dict, "request.")
    if not isinstance(user.get("username", ""), str):
        raise Malformed("request.userInfo.username must be a string")
    if not isinstance(request.get("dryRun", False), bool):
        raise Malformed(f"request.dryRun must be true or false, not {_type(request['dryRun'])}")
    _object(_field(request, "object", dict, "request."), "request.object")
    if request.get("oldObject") is not None:
        _object(_field(request, "oldObject", dict, "request."), "request.oldObject")


def _object(obj: Mapping[str, Any], where: str) -> None:
    # A key that is present must hold its type, null included: kopf reads metadata, its
    # labels and annotations as mappings wherever the key exists.
    for key in ("apiVersion", "kind"):
        if key in obj:
            _field(obj, key, str, f"{where}.")
    meta = _field(obj, "metadata", dict, f"{where}.")
    for key in ("name", "generateName", "namespace", "uid"):
        if key in meta:
            _field(meta, key, str, f"{where}.metadata.")
    for key in ("labels", "annotations"):
        if key not in meta:
            continue
        values = _field(meta, key, dict, f"{where}.metadata.")
        wrong = next((k for k, v in values.items() if not isinstance(v, str)), None)
        if wrong is not None:
            raise Malformed(
                f"{where}.metadata.{key}[{_short(wrong)}] must be a string, "
                f"not {_type(values[wrong])}"
            )
    owners = meta.get("ownerReferences", [])
    if not (isinstance(owners, list) and all(isinstance(o, dict) for o in owners)):
        raise Malformed(f"{where}.metadata.ownerReferences must be a list of objects")
    for key in ("spec", "status"):
        if key in obj:
            _field(obj, key, dict, f"{where}.")


def _field(parent: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = parent.get(key)
    if value is None:
        raise Malformed(f"{where}{key} is missing")
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise Malformed(f"{where}{key} must be {_NAMES[kind]}, not {_type(value)}")
    return value


_NAMES = {dict: "an object", str: "a string", list: "a list", bool: "true or false"}


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
