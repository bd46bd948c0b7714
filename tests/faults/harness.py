"""What the fault tests share: an S3 upload dir, the trainer process, the sidecar's flags."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys
from typing import Any

from tests.support.checkpoint_audit import BucketReader

REPO = pathlib.Path(__file__).resolve().parents[2]
PART = 5 * 2**20  # small parts: multipart uploads from 10 MiB, so kills hit them


@dataclasses.dataclass
class Target:
    """A fresh prefix on the session's SeaweedFS, and a direct client to read it."""

    server: Any
    bucket: str
    prefix: str = "run"

    @classmethod
    def make(cls, server: Any) -> Target:
        return cls(server, server.make_bucket())

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def reader(self) -> BucketReader:
        return BucketReader(self.server.client(), self.bucket, self.prefix)


def sidecar_args(root: pathlib.Path, target: Target, *flags: str) -> list[str]:
    return [
        *("--root", str(root), "--upload-dir", target.url),
        *("--part-size", str(PART), "--log-level", "debug", *flags),
    ]


def start_trainer(
    root: pathlib.Path, log: pathlib.Path, seed: int, *flags: str
) -> subprocess.Popen[bytes]:
    """The trainer process (``tests.support.trainer``) writing into ``root``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.trainer",
            *("--root", str(root), "--log", str(log), "--seed", str(seed)),
            *("--part-size", str(PART), *flags),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
