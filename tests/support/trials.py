"""A simulated Ray trainer: writes experiment state, trial artifacts and checkpoints."""

from __future__ import annotations

import json
import os
import pathlib


def write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def experiment(root: pathlib.Path, name: str = "exp") -> pathlib.Path:
    """An experiment dir with the driver's state files (seed scenario 1)."""
    exp = root / name
    write(exp / "experiment_state-2026-01-01.json", json.dumps({"trials": 2}).encode())
    write(exp / "basic-variant-state.json", b"{}")
    return exp


def trial(exp: pathlib.Path, name: str = "trial_00000") -> pathlib.Path:
    """A trial dir with artifacts (seed scenario 4)."""
    path = exp / name
    write(path / "params.json", b'{"lr": 0.01}')
    write(path / "result.json", b'{"loss": 1.0}\n')
    write(path / "progress.csv", b"loss\n1.0\n")
    return path


def checkpoint(trial_dir: pathlib.Path, index: int, files: dict[str, int]) -> pathlib.Path:
    """``checkpoint_<index>`` holding ``files`` (name -> size in bytes) of random data."""
    path = trial_dir / f"checkpoint_{index:06d}"
    for name, size in files.items():
        write(path / name, os.urandom(size))
    return path


def relative_files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
