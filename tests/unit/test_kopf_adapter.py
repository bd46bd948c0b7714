"""What the operator relies on in kopf beyond its documented API, checked against the kopf
installed: when kopf changes it, these fail and say what to review in
``trialsync_operator.kopf_adapter`` (pyproject.toml bounds kopf's version for the same
reason)."""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import tomllib
from pathlib import Path
from typing import Any

import kopf
import pytest
from packaging.requirements import Requirement

from trialsync_operator.kopf_adapter import webhook_server

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class Uncopyable(dict[str, Any]):
    """A body that fails the test if anything deep-copies it."""

    def __deepcopy__(self, memo: object) -> Any:
        raise AssertionError("the body was deep-copied")


def _original() -> Any:
    method = kopf.Patch.as_json_patch
    return getattr(method, "__wrapped__", method)


def test_the_installed_kopf_is_one_pyproject_allows() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    (wanted,) = [Requirement(r) for r in extras["operator"] if r.startswith("kopf")]
    installed = importlib.metadata.version("kopf")
    assert wanted.specifier.contains(installed), f"kopf {installed} is not {wanted.specifier}"


def test_kopfs_webhook_fn_takes_what_our_server_passes() -> None:
    parameters = inspect.signature(kopf.WebhookFn.__call__).parameters
    assert list(parameters) == ["self", "request", "webhook", "headers", "sslpeer"]


def test_patch_as_json_patch_has_the_parameters_the_adapter_replaces() -> None:
    parameters = tuple(inspect.signature(_original()).parameters)
    assert parameters == webhook_server.AS_JSON_PATCH_PARAMETERS
    assert kopf.Patch().fns is not None


def test_kopf_still_copies_the_body_for_an_empty_patch() -> None:
    # Else skip_copies_for_empty_patches has no point left: drop it.
    with pytest.raises(AssertionError, match="deep-copied"):
        _original()(kopf.Patch(), {"metadata": Uncopyable()})


def test_the_adapter_answers_an_empty_patch_without_copying_and_others_as_kopf_does() -> None:
    webhook_server.skip_copies_for_empty_patches()
    webhook_server.skip_copies_for_empty_patches()  # idempotent
    assert kopf.Patch().as_json_patch({"metadata": Uncopyable()}) == []
    patch = kopf.Patch()
    patch["metadata"] = {"labels": {"a": "b"}}
    body = {"metadata": {"name": "p"}}
    assert patch.as_json_patch(copy.deepcopy(body)) == _original()(patch, copy.deepcopy(body))
    assert patch.as_json_patch(body) != []
