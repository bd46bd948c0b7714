"""The local cluster's configuration files name only fields their components know.

The kubelet and kube-proxy ignore an unknown field with one log line (a misspelt
``podLogsDirectory`` silently kept pod logs in /var/log/pods), so every key written is
checked against the Go types of the pinned Kubernetes release.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from localcluster import configs
from localcluster.layout import ClusterFiles
from tests.support.requirements import unavailable

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _json_fields(module: str, types_file: str) -> set[str]:
    """Every JSON field name declared in ``types_file`` of ``module`` as tools/go.mod pins it."""
    if shutil.which("go") is None:
        unavailable("Go is not installed: the pinned types cannot be read")
    done = subprocess.run(
        ["go", "list", "-mod=readonly", "-m", "-f", "{{.Dir}}", module],
        cwd=TOOLS,
        capture_output=True,
        text=True,
        check=False,
    )
    source = Path(done.stdout.strip(), types_file)
    if done.returncode != 0 or not source.is_file():
        unavailable(f"{module} is not in the Go module cache (run `make tools`)")
    return set(re.findall(r'json:"([A-Za-z0-9]+)', source.read_text()))


def _keys(tree: Any) -> set[str]:
    """Every mapping key in a YAML tree, at any depth."""
    if isinstance(tree, dict):
        return set(tree) | {k for value in tree.values() for k in _keys(value)}
    if isinstance(tree, list):
        return {k for item in tree for k in _keys(item)}
    return set()


def test_kubelet_configuration_names_only_known_fields(tmp_path: Path) -> None:
    known = _json_fields("k8s.io/kubelet", "config/v1beta1/types.go")
    known |= _json_fields("k8s.io/component-base", "logs/api/v1/types.go")  # logging
    written = yaml.safe_load(configs.kubelet_config(ClusterFiles(tmp_path / "abcd1234")))
    # evictionHard's keys are signal names, not fields.
    keys = _keys({k: v for k, v in written.items() if k != "evictionHard"})
    assert keys - known - {"apiVersion", "kind"} == set()
    assert written["podLogsDir"].endswith("/pod-logs")


def test_kube_proxy_configuration_names_only_known_fields(tmp_path: Path) -> None:
    known = _json_fields("k8s.io/kube-proxy", "config/v1alpha1/types.go")
    known |= _json_fields("k8s.io/component-base", "config/v1alpha1/types.go")
    written = yaml.safe_load(configs.kube_proxy_config(ClusterFiles(tmp_path / "abcd1234")))
    assert _keys(written) - known - {"apiVersion", "kind"} == set()
