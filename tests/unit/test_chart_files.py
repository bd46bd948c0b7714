"""The chart's files agree with each other, with the images and with the README (no helm)."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

import trialsync_operator
from images import build
from trialsync import contract
from trialsync_operator import settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trialsync"


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    resolved: dict[str, Any] = schema["definitions"][ref.rsplit("/", 1)[1]]
    return resolved


def _unschemed(
    values: Any, node: dict[str, Any], schema: dict[str, Any], path: str
) -> Iterator[str]:
    node = _resolve(node, schema)
    if not isinstance(values, dict) or "properties" not in node:
        return
    for key, value in values.items():
        child = node["properties"].get(key)
        if child is None:
            yield f"{path}{key}"
        else:
            yield from _unschemed(value, child, schema, f"{path}{key}.")


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _chart() -> dict[str, Any]:
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return chart


def test_every_value_has_a_schema_entry() -> None:
    schema = _schema()
    assert list(_unschemed(_values(), schema, schema, "")) == []


def test_the_schema_requires_only_values_that_have_defaults() -> None:
    schema = _schema()

    def missing(values: Any, node: dict[str, Any], path: str) -> Iterator[str]:
        node = _resolve(node, schema)
        if not isinstance(values, dict):
            return
        for key in node.get("required", []):
            if key not in values:
                yield f"{path}{key}"
        for key, child in node.get("properties", {}).items():
            if key in values:
                yield from missing(values[key], child, f"{path}{key}.")

    assert list(missing(_values(), schema, "")) == []


def test_the_charts_images_are_the_ones_the_project_builds() -> None:
    """images/build.py and the README's docker build tag docker.io/trialsync/<name>:<the
    project's version>; the chart defaults to exactly those, so a loaded image is used."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = _chart()
    assert chart["appVersion"] == version == trialsync_operator.__version__
    values = _values()
    readme = (REPO / "README.md").read_text()
    for name in ("operator", "sidecar"):
        image = values[name]["image"]
        tag = image["tag"] or chart["appVersion"]
        ref = f"{image['repository']}:{tag}"
        assert ref == f"docker.io/trialsync/{name}:{version}"
        assert re.search(rf"docker build -f images/{name}/Dockerfile +-t {re.escape(ref)} ", readme)
        assert re.search(rf"kind load docker-image [^\n]*{re.escape(ref)}", readme)
    sidecar = f"docker.io/trialsync/sidecar:{version}"
    assert sidecar == settings.DEFAULT_IMAGE


def test_the_schemes_the_chart_admits_are_those_the_default_image_installs() -> None:
    # The contract names the image's extras and the schemes they serve; the chart's list
    # (what the operator admits) and the operator's default must be that list, and the
    # Dockerfile must install those extras. tests/pods checks the built image serves them.
    assert tuple(_values()["sidecar"]["schemes"]) == contract.IMAGE_SCHEMES
    assert settings.DEFAULT_SCHEMES == contract.IMAGE_SCHEMES
    dockerfile = (REPO / "images" / "sidecar" / "Dockerfile").read_text().splitlines()
    run = "\n".join(line for line in dockerfile if not line.lstrip().startswith("#"))
    assert re.findall(r"'trialsync\[([a-z,]+)\]'", run) == [",".join(contract.IMAGE_EXTRAS)]
    assert build.EXTRAS["sidecar"] == ",".join(contract.IMAGE_EXTRAS)
