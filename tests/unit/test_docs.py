"""Docs generated from the code stay current."""

from __future__ import annotations

import pathlib
import re

from tools import crd_reference

from trialsync.metrics import Metrics


def test_the_readme_syncconfig_reference_is_generated_from_the_crd() -> None:
    assert crd_reference.main(["--check"]) == 0, "run `make docs`"


def test_the_reference_lists_every_spec_field() -> None:
    text = crd_reference.render()
    for field in (
        "spec.uploadDir",
        "spec.syncer",
        "spec.syncPeriod",
        "spec.credentials.secretRef.name",
    ):
        assert f"| `{field}` |" in text


def test_the_readme_names_every_metric_the_sidecar_serves_and_no_other() -> None:
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Endpoints and metrics", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"`(trialsync_[a-z_]+)", section))
    served = set()
    for family in Metrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        served.add(family.name + suffix)
    assert documented == served
