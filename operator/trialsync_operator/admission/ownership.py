"""Which trials a pod owns, for restore on start: the owner key its replacement shares.

A pod records its key beside everything it uploads; the pod that replaces it, with the
same key, restores what holds it. The key is what survives the replacement:

- ``trialsync.io/restore-key``, when the pod names one;
- an indexed Job's pod: the Job and its completion index (``<ns>/job/<name>/<index>``);
- a Job's pod: the Job (``<ns>/job/<name>``), so a retry gets back what the failed pod
  saved (with parallelism above 1, the Job's pods share the key: give each an index);
- a StatefulSet's pod: its name, the set's name and ordinal (``<ns>/statefulset/<pod>``);
- a KubeRay head pod: its RayCluster (``<ns>/raycluster/<name>/head``), whose driver
  state comes back when the head pod is replaced.

Any other pod (a Deployment's, a RayCluster's worker) has no identity its replacement
shares: it restores nothing unless it names a key or a prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trialsync_operator import names

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
JOB_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
STATEFULSET_POD_LABEL = "statefulset.kubernetes.io/pod-name"
RAY_CLUSTER_LABEL = "ray.io/cluster"
RAY_NODE_TYPE_LABEL = "ray.io/node-type"


def owner_key(pod: Mapping[str, Any], namespace: str) -> str | None:
    """The pod's owner key, or None when nothing about it survives its replacement."""
    meta = _mapping(pod.get("metadata"))
    labels = _mapping(meta.get("labels"))
    annotations = _mapping(meta.get("annotations"))
    named = annotations.get(names.RESTORE_KEY_ANNOTATION)
    if isinstance(named, str) and named:
        return named
    owners = {
        str(ref.get("kind")): str(ref.get("name"))
        for ref in meta.get("ownerReferences") or []
        if isinstance(ref, Mapping) and ref.get("controller")
    }
    job = owners.get("Job") or next(
        (str(labels[k]) for k in JOB_NAME_LABELS if isinstance(labels.get(k), str)), None
    )
    if job:
        index = annotations.get(JOB_INDEX_ANNOTATION)
        return f"{namespace}/job/{job}" + (f"/{index}" if isinstance(index, str) else "")
    pod_name = labels.get(STATEFULSET_POD_LABEL) or (
        meta.get("name") if "StatefulSet" in owners else None
    )
    if isinstance(pod_name, str) and pod_name:
        return f"{namespace}/statefulset/{pod_name}"
    cluster = labels.get(RAY_CLUSTER_LABEL)
    if isinstance(cluster, str) and cluster and labels.get(RAY_NODE_TYPE_LABEL) == "head":
        return f"{namespace}/raycluster/{cluster}/head"
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
