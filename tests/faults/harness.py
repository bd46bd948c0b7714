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
#: The trainer of the fault suite: two trials round robin, files drawn from the seed and
#: growing a chunk every 4 ms, 0.2 s between checkpoints, until told otherwise.
TRAINER = (
    *("--trials", "2", "--checkpoints", "0", "--interval", "0.2", "--chunk-pause", "0.004"),
    *("--part-size", str(PART)),
)


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
    """The trainer process (``localcluster.trainer``) writing into ``root``: its truth in
    ``log``, its events (JSON lines) in ``<log>.events``; ``flags`` over ``TRAINER``."""
    with open(log.with_name(log.name + ".events"), "wb") as events:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "localcluster.trainer"),
                *("--root", str(root), "--log", str(log), "--seed", str(seed)),
                *TRAINER,
                *flags,
            ],
            cwd=REPO,
            stdout=events,
        )
