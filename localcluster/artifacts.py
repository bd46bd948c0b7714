"""What the local cluster runs: the node's binaries and the project's images, built if
needed (``tools/build.sh --node``, ``images/build.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from images import build
from localcluster import control

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The Ray the Ray image carries.
RAY_VERSION = build.RAY_VERSION
NODE_BINARIES = (
    "kubelet",
    "containerd",
    "runc",
    "coredns",
    "kube-proxy",
    "pause",
    "ray-operator",
)


def version() -> str:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def _run_for_path(argv: list[str], what: str) -> Path:
    """Run a build script that prints one path on stdout (its log goes to our stderr)."""
    print(f"cluster: {what} (minutes when cold)", file=sys.stderr)
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True, cwd=REPO_ROOT)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise control.ClusterError(f"{what} failed ({exc}); see its output above") from exc
    return Path(out.stdout.strip())


def node_bin_dir() -> Path:
    """The node's binaries: TRIALSYNC_TOOLS_BIN (``make test`` builds them there) if complete,
    else ``tools/build.sh --node --bin-dir``."""
    configured = os.environ.get("TRIALSYNC_TOOLS_BIN")
    if configured and all((Path(configured) / b).is_file() for b in NODE_BINARIES):
        return Path(configured)
    return _run_for_path(
        ["bash", str(REPO_ROOT / "tools" / "build.sh"), "--node", "--bin-dir"],
        "building the node's binaries with tools/build.sh --node",
    )


def image_manifest() -> dict[str, dict[str, Any]]:
    """The images built by images/build.py: TRIALSYNC_IMAGES (set by ``make test``) or a build."""
    configured = os.environ.get("TRIALSYNC_IMAGES")
    path = (
        Path(configured)
        if configured
        else _run_for_path(
            [sys.executable, str(REPO_ROOT / "images" / "build.py"), "--manifest"],
            "building the images with images/build.py",
        )
    )
    if not path.is_file():
        raise control.ClusterError(f"no image manifest at {path!s}: run `make images`")
    manifest: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return manifest
