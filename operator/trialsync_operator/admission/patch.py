"""The RFC 6902 patch that turns a pod into what the injection made of it.

Appends where lists only grow, so the apiserver applies a small patch and nothing the
injection did not touch is rewritten (kopf would deep-copy and diff the whole pod).
"""

from __future__ import annotations

import copy
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


def apply(document: Mapping[str, Any], ops: list[JsonDict]) -> JsonDict:
    """``document`` with the RFC 6902 ``add`` operations ``ops`` applied (a deep copy): what
    the apiserver stores once it applied the webhook's answer. Only ``add`` is applied,
    the one operation ``json_patch`` writes; ValueError for any other, or for a path that
    does not exist, as the apiserver would refuse the patch."""
    out: JsonDict = copy.deepcopy(dict(document))
    for op in ops:
        if op.get("op") != "add":
            raise ValueError(f"only add operations are applied, not {op.get('op')!r}")
        path = str(op["path"])
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is no JSON pointer")
        *parents, last = [_unpointer(p) for p in path.split("/")[1:]]
        target: Any = out
        for part in parents:
            target = _step(target, part, path)
        value = copy.deepcopy(op["value"])
        if isinstance(target, list):
            index = len(target) if last == "-" else _index(last, len(target), path)
            target.insert(index, value)
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise ValueError(f"{path}: the parent is neither an object nor a list")
    return out


def _step(target: Any, part: str, path: str) -> Any:
    if isinstance(target, list):
        return target[_index(part, len(target) - 1, path)]
    if isinstance(target, dict) and part in target:
        return target[part]
    raise ValueError(f"{path}: no {part!r} in the document")


def _index(part: str, largest: int, path: str) -> int:
    if not part.isdigit() or int(part) > largest:
        raise ValueError(f"{path}: {part!r} is no index of the list")
    return int(part)


def _unpointer(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")
