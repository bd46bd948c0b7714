"""Reading and writing Kubernetes objects, and the pod templates inside them (pure).

A workload's controller makes its pods from a template: the webhook sees those pods,
never the template. ``templates`` gives, for each template of an object, the pod its
controller would create, with the labels and annotations the injection reads (the ones
that name the pod's owner, for the restore key), so the webhook's code decides on the
pod it will really see; its patch is then applied to the template itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from trialsync_operator.admission import ownership

JsonDict = dict[str, Any]
#: Where a template is in an object: the keys and indexes leading to it ("" path: the pod).
Path = tuple[str | int, ...]

#: Kinds whose pod template is at spec.template.
_SPEC_TEMPLATE = ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")


class InputError(ValueError):
    """The input cannot be read as Kubernetes objects; the message says where."""


@dataclasses.dataclass(frozen=True)
class Template:
    """One pod template of an object (or the object itself, a Pod)."""

    path: Path
    #: The pod the controller would create from it, as the webhook receives it.
    pod: JsonDict
    #: What differs between the pods made from it that the injection reads, if anything.
    per_pod: str = ""

    @property
    def where(self) -> str:
        return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in self.path).replace(
            ".[", "["
        )


def load(text: str, source: str) -> list[JsonDict]:
    """The objects of a YAML stream (one or more documents; JSON is YAML) or of a
    ``kind: List``; empty documents are skipped."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not YAML or JSON: {exc}") from None
    objects: list[JsonDict] = []
    for number, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise InputError(f"{source}: document {number} is not an object")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            items = doc["items"]
            if not all(isinstance(item, dict) for item in items):
                raise InputError(f"{source}: document {number}: items must be objects")
            objects.extend(items)
        else:
            objects.append(doc)
    return objects


def dump(objects: Sequence[Mapping[str, Any]], output: str) -> str:
    """The objects as ``kubectl get -o yaml|json`` would show them: YAML documents, or
    JSON (several objects as a ``v1`` List)."""
    if output == "json":
        if len(objects) == 1:
            return json.dumps(objects[0], indent=2) + "\n"
        return (
            json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}, indent=2)
            + "\n"
        )
    return yaml.safe_dump_all(objects, sort_keys=False, width=100)


def describe(obj: Mapping[str, Any], namespace: str, template: Template | None = None) -> str:
    """``Kind namespace/name`` of an object in ``namespace`` and where ``template`` is in
    it, for messages."""
    meta = _mapping(obj.get("metadata"))
    name = str(meta.get("name") or meta.get("generateName") or "(no name)")
    where = f" {template.where}" if template is not None and template.where else ""
    return f"{obj.get('kind') or '(no kind)'} {namespace}/{name}{where}"


def namespace_of(obj: Mapping[str, Any], default: str) -> str:
    namespace = _mapping(obj.get("metadata")).get("namespace")
    return namespace if isinstance(namespace, str) and namespace else default


def templates(obj: Mapping[str, Any], namespace: str) -> list[Template]:
    """The pod templates of ``obj`` (the object itself for a Pod), each with the pod its
    controller would create in ``namespace``; [] for an object without any."""
    kind = str(obj.get("kind") or "")
    name = str(_mapping(obj.get("metadata")).get("name") or "")
    spec = _mapping(obj.get("spec"))
    if kind == "Pod":
        pod = copy.deepcopy(dict(obj))
        pod.setdefault("metadata", {})
        if isinstance(pod["metadata"], dict):
            pod["metadata"]["namespace"] = namespace
        return [Template((), pod)]
    if kind in _SPEC_TEMPLATE or kind == "ReplicationController":
        return _one(obj, ("spec", "template"), namespace, *_owner(kind, name, spec))
    if kind == "CronJob":
        return _one(
            obj,
            ("spec", "jobTemplate", "spec", "template"),
            namespace,
            *_owner("CronJob", name, _mapping(_mapping(spec.get("jobTemplate")).get("spec"))),
        )
    if kind == "RayCluster":
        return _ray(obj, ("spec",), namespace, name, "")
    if kind == "RayJob":
        return _ray(
            obj,
            ("spec", "rayClusterSpec"),
            namespace,
            name,
            "KubeRay names the RayCluster of a RayJob when it creates it; shown with the "
            "RayJob's name",
        )
    return []


def _owner(
    kind: str, name: str, spec: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, str], str]:
    """The labels and annotations the controller of ``kind`` gives each pod that the
    injection reads (the owner key of ``admission.ownership``), and what differs between
    its pods."""
    if kind == "Job":
        labels = {label: name for label in ownership.JOB_NAME_LABELS}
        if spec.get("completionMode") == "Indexed":
            return (
                labels,
                {ownership.JOB_INDEX_ANNOTATION: "0"},
                "each pod of an Indexed Job has its own completion index; shown for index 0",
            )
        return labels, {}, ""
    if kind == "CronJob":
        return (
            {},
            {},
            "each run of a CronJob is a Job of its own name, which its pods' restore key "
            "names; shown without it",
        )
    if kind == "StatefulSet":
        return (
            {ownership.STATEFULSET_POD_LABEL: f"{name}-0"},
            {},
            f"each pod of a StatefulSet has its own name; shown for the first, {name}-0",
        )
    return {}, {}, ""


def _ray(
    obj: Mapping[str, Any], base: Path, namespace: str, cluster: str, note: str
) -> list[Template]:
    spec: Any = obj
    for key in base:
        spec = _mapping(spec.get(key)) if isinstance(spec, Mapping) else {}
    found = []
    labels = {ownership.RAY_CLUSTER_LABEL: cluster}
    head = (*base, "headGroupSpec", "template")
    if isinstance(_at(obj, head), Mapping):
        found += _one(
            obj, head, namespace, {**labels, ownership.RAY_NODE_TYPE_LABEL: "head"}, {}, note
        )
    workers = spec.get("workerGroupSpecs")
    for index, group in enumerate(workers if isinstance(workers, list) else []):
        if isinstance(group, Mapping) and isinstance(group.get("template"), Mapping):
            worker_labels = {**labels, ownership.RAY_NODE_TYPE_LABEL: "worker"}
            found += _one(
                obj,
                (*base, "workerGroupSpecs", index, "template"),
                namespace,
                worker_labels,
                {},
                "",
            )
    return found


def _one(
    obj: Mapping[str, Any],
    path: Path,
    namespace: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    per_pod: str,
) -> list[Template]:
    template = _at(obj, path)
    if not isinstance(template, Mapping):
        return []
    meta = copy.deepcopy(dict(_mapping(template.get("metadata"))))
    meta["namespace"] = namespace
    for field, added in (("labels", labels), ("annotations", annotations)):
        # Only where the template has some: a template without them is not injected
        # anyway (no opt-in label, no SyncConfig named), and the patch stays appliable.
        if added and isinstance(meta.get(field), dict):
            meta[field] = {**meta[field], **added}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": copy.deepcopy(template.get("spec")),
    }
    return [Template(path, pod, per_pod)]


def _at(obj: Any, path: Iterable[str | int]) -> Any:
    for part in path:
        if isinstance(part, int):
            obj = obj[part] if isinstance(obj, list) and part < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


def replace_at(obj: JsonDict, path: Path, value: JsonDict) -> JsonDict:
    """A copy of ``obj`` with ``value`` at ``path`` (the object itself for ``()``)."""
    if not path:
        return value
    out = copy.deepcopy(obj)
    parent: Any = out
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return out


def template_at(obj: Mapping[str, Any], path: Path) -> JsonDict:
    found = _at(obj, path)
    assert isinstance(found, Mapping)
    return dict(found)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
