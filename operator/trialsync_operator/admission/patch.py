"""The RFC 6902 patch that turns a pod into what the injection made of it.

Appends where lists only grow, so the apiserver applies a small patch and nothing the
injection did not touch is rewritten (kopf would deep-copy and diff the whole pod).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JsonDict = dict[str, Any]


def json_patch(pod: Mapping[str, Any], changes: Mapping[str, Any]) -> list[JsonDict]:
    """The RFC 6902 operations that turn ``pod`` into ``pod`` with ``changes`` (a
    ``Result.patch``): appends where lists only grow, so the apiserver applies a small
    patch and nothing the injection did not touch is rewritten."""
    meta = _mapping(pod.get("metadata"))
    spec = _mapping(pod.get("spec"))
    ops: list[JsonDict] = []
    for field in ("labels", "annotations"):
        before = _mapping(meta.get(field))
        after = changes[field]
        if not before:
            ops.append({"op": "add", "path": f"/metadata/{field}", "value": after})
            continue
        for key, value in after.items():
            if before.get(key) != value:
                ops.append(
                    {"op": "add", "path": f"/metadata/{field}/{_pointer(key)}", "value": value}
                )
    for field in ("initContainers", "containers"):
        if field not in changes:
            continue
        raw = spec.get(field)
        # A list holding anything but objects was not read item by item: replace it whole.
        before_list = raw if isinstance(raw, list) and len(_list(raw)) == len(raw) else None
        after_list = changes[field]
        patched = []  # the items as the volumeMounts operations leave them
        for index, old in enumerate(before_list or []):
            new = after_list[index] if index < len(after_list) else old
            if "volumeMounts" in new:
                mounts = f"/spec/{field}/{index}/volumeMounts"
                ops += _grow(mounts, old.get("volumeMounts"), new["volumeMounts"])
                old = {**old, "volumeMounts": new["volumeMounts"]}
            patched.append(old)
        ops += _grow(f"/spec/{field}", patched if before_list is not None else None, after_list)
    ops += _grow("/spec/volumes", spec.get("volumes"), changes["volumes"])
    return ops


def _grow(path: str, before: object, after: object) -> list[JsonDict]:
    """Operations from the list ``before`` (None: absent) at ``path`` to ``after``: one
    append each when ``after`` extends ``before``, else one replacement of the list."""
    old = before if isinstance(before, list) else []
    new = after if isinstance(after, list) else []
    if new == old:
        return []
    if not old or new[: len(old)] != old:
        return [{"op": "add", "path": path, "value": new}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in new[len(old) :]]


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []
