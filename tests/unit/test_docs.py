"""Docs generated from the code stay current."""

from __future__ import annotations

import json
import pathlib
import re

from tests.support.pods import DEFAULTS, lookup_for, opted_in_pod, syncconfig
from tools import crd_reference
from trialsync.metrics import Metrics
from trialsync_operator import names
from trialsync_operator.admission import injection


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


def test_the_documented_status_annotation_has_the_keys_the_webhook_writes() -> None:
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()
    example = doc.split("as compact JSON:\n\n```json\n", 1)[1].split("```", 1)[0]
    documented = json.loads(re.sub(r"<[^>]*>", "x", example.replace("\n", "")))
    pod = opted_in_pod("p", "exp")
    config = syncconfig("exp", {"uploadDir": "s3://bucket/x"})
    config["metadata"].update(namespace="ml", uid="u", generation=3)
    result = injection.plan(pod, "ml", lookup_for(config), DEFAULTS)
    assert result.patch is not None
    written = json.loads(result.patch["annotations"][names.STATUS_ANNOTATION])
    assert set(documented) == set(written)
    assert documented["volumes"] == written["volumes"]
    assert documented["container"] == written["container"]


def test_the_readme_ray_section_shows_exactly_the_files_the_ray_test_runs() -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    shown = dict(re.findall(r"```[a-z]+\n# (docs/ray/[^\n]+)\n(.*?)```", readme, re.DOTALL))
    files = {str(p.relative_to(root)): p.read_text() for p in (root / "docs/ray").iterdir()}
    assert set(files) == {
        "docs/ray/syncconfig.yaml",
        "docs/ray/raycluster.yaml",
        "docs/ray/tune_experiment.py",
    }
    assert shown == files
