"""Kubernetes label selectors, as the apiserver matches a webhook's objectSelector and
namespaceSelector (pure), with the term that leaves an object out, said in words."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trialsync_operator import names

#: The label every namespace carries (the apiserver sets it): its name.
NAME_LABEL = "kubernetes.io/metadata.name"
#: A namespace labelled so opts out of injection (the chart's namespaceSelector).
OPT_OUT_LABEL = f"{names.GROUP}/injection"


def mismatch(selector: Mapping[str, Any], labels: Mapping[str, str]) -> str | None:
    """None when ``labels`` match ``selector``; else the first term they fail, in words.
    An empty selector matches everything, as in Kubernetes."""
    for key, value in _mapping(selector.get("matchLabels")).items():
        if labels.get(key) != value:
            return f"{key}={value} (it has {_shown(labels, key)})"
    for term in selector.get("matchExpressions") or []:
        if not isinstance(term, Mapping):
            continue
        key = str(term.get("key"))
        operator = term.get("operator")
        values = [str(v) for v in term.get("values") or []]
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return f"{key} in ({', '.join(values)}) (it has {_shown(labels, key)})"
        if operator == "NotIn" and present and labels[key] in values:
            return f"{key} not in ({', '.join(values)}) (it has {key}={labels[key]})"
        if operator == "Exists" and not present:
            return f"a label {key} (it has none)"
        if operator == "DoesNotExist" and present:
            return f"no label {key} (it has {key}={labels[key]})"
    return None


def namespace_refusal(
    selector: Mapping[str, Any], namespace: str, labels: Mapping[str, str]
) -> str | None:
    """Why a webhook's namespaceSelector leaves ``namespace`` out, in the chart's terms
    (its exclusions, the opt-out label, ``operator.watchNamespaces``); None if it selects it."""
    labels = {NAME_LABEL: namespace, **labels}
    for term in selector.get("matchExpressions") or []:
        if not isinstance(term, Mapping):
            continue
        one = {"matchExpressions": [term]}
        if mismatch(one, labels) is None:
            continue
        key, operator = term.get("key"), term.get("operator")
        values = ", ".join(str(v) for v in term.get("values") or [])
        if key == NAME_LABEL and operator == "NotIn":
            return (
                f"namespace {namespace} is one the webhook leaves out (its namespaceSelector "
                f"excludes {values}: the system namespaces, the chart's release namespace and "
                "webhook.excludeNamespaces)"
            )
        if key == NAME_LABEL and operator == "In":
            return (
                f"namespace {namespace} is not among those the webhook serves ({values}: the "
                "chart's operator.watchNamespaces; another release may serve it)"
            )
        if key == OPT_OUT_LABEL:
            return f"namespace {namespace} is labelled {OPT_OUT_LABEL}={labels.get(key)}"
        return (
            f"namespace {namespace} does not match the webhook's namespaceSelector: "
            f"{mismatch(one, labels)}"
        )
    found = mismatch({"matchLabels": selector.get("matchLabels") or {}}, labels)
    if found is not None:
        return f"namespace {namespace} does not match the webhook's namespaceSelector: {found}"
    return None


def _shown(labels: Mapping[str, str], key: str) -> str:
    return f"{key}={labels[key]}" if key in labels else "no such label"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
