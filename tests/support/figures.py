"""Figures a test reports, printed in a section of the end-of-run summary so that they can
be quoted (the fault suite's counts, the pod tests' timings and resumed checkpoints)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

_SECTIONS = pytest.StashKey[dict[str, list[str]]]()


def reporter(
    config: pytest.Config, test: str, section: str, echo: bool = False
) -> Callable[..., None]:
    """``report(**figures)``: one line, ``<test>: k=v ...``, in ``section`` of the summary
    (also printed now with ``echo``)."""

    def report(**figures: Any) -> None:
        line = f"{test}: " + " ".join(f"{k}={v}" for k, v in figures.items())
        config.stash.setdefault(_SECTIONS, {}).setdefault(section, []).append(line)
        if echo:
            print(line)

    return report


def write_sections(terminalreporter: Any) -> None:
    """Every section some test reported to, at the end of the run."""
    for section, lines in terminalreporter.config.stash.get(_SECTIONS, {}).items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)
