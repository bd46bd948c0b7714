"""Docs generated from the code stay current."""

from __future__ import annotations

from tools import crd_reference


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
