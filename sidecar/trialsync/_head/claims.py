"""Which worker may write in which trial dir: claims, leases, and their file.

The first identity that writes in a trial dir claims it. Another may write there once
the holder released its claims (a worker does at exit) or after ``lease`` seconds in
which the holder neither wrote there nor had a write in progress: then a Job's retry pod,
or a trial restored on another worker, takes over, and the old holder is refused.

Claims are saved to a file before the write that made them is accepted, so a head
restart keeps them. Last-write times are not saved: after a restart every holder gets a
full lease, since nobody could write while the head was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from trialsync._util import private_files

log = logging.getLogger(__name__)

FILE_VERSION = 1


class ClaimRefused(Exception):
    """Another identity holds the trial dir; the message names it and when it frees."""


@dataclasses.dataclass
class _Claim:
    holder: str
    claimed_at: float  # wall clock, for the file and the logs
    last_write: float  # the clock of Claims: when the holder last started or ended a write
    version: int  # Claims' version that made this claim; durable once that is saved
    writing: int = 0


class Claims:
    """The claims table of one receiver, saved to ``path``."""

    def __init__(
        self, path: str, lease: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.lease = lease
        self._clock = clock
        self._claims: dict[str, _Claim] = {}
        self._version = 0
        self._saved = 0
        self._saving = asyncio.Lock()

    def load(self) -> None:
        """Read the saved claims (blocking). An unreadable file is set aside: no claims."""
        raw = private_files.read_private(self.path)
        if raw is None:
            return
        try:
            saved = json.loads(raw)
            entries = saved["claims"].items()
            now = self._clock()
            self._claims = {
                str(trial): _Claim(str(c["holder"]), float(c["claimed_at"]), now, 0)
                for trial, c in entries
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = private_files.set_aside(self.path)
            log.error(
                "claims file unreadable; set aside, every trial dir is unclaimed",
                extra={"path": self.path, "moved_to": aside, "error": str(exc)},
            )
            self._claims = {}
        log.info("claims loaded", extra={"path": self.path, "claims": len(self._claims)})

    @contextlib.asynccontextmanager
    async def writing(self, trial: str, worker_id: str) -> AsyncIterator[None]:
        """Hold ``trial`` for one write by ``worker_id``: claim it, or ClaimRefused.

        While the block runs the claim cannot lapse; its lease restarts when it ends.
        """
        now = self._clock()
        claim = self._claims.get(trial)
        if claim is None or (claim.holder != worker_id and self._lapsed(claim, now)):
            self._version += 1
            self._claims[trial] = _Claim(worker_id, time.time(), now, self._version)
            log.info(
                "trial dir claimed",
                extra={
                    "trial_dir": trial,
                    "holder": worker_id,
                    "taken_over_from": claim.holder if claim else None,
                },
            )
            claim = self._claims[trial]
        elif claim.holder != worker_id:
            idle = now - claim.last_write
            raise ClaimRefused(
                f"trial dir {trial} is claimed by {claim.holder} (last write {idle:.0f} s ago); "
                f"it frees when released or after {self.lease:g} s without a write"
            )
        claim.writing += 1
        claim.last_write = now
        try:
            # Durable before the write is accepted: a restart must not forget who holds it.
            await self._save(claim.version)
            yield
        finally:
            claim.writing -= 1
            claim.last_write = self._clock()

    async def release(self, worker_id: str) -> list[str]:
        """Drop every claim of ``worker_id``; the trial dirs it held."""
        released = sorted(t for t, c in self._claims.items() if c.holder == worker_id)
        if released:
            for trial in released:
                del self._claims[trial]
            self._version += 1
            await self._save(self._version)
            log.info("claims released", extra={"holder": worker_id, "trial_dirs": released})
        return released

    def _lapsed(self, claim: _Claim, now: float) -> bool:
        return claim.writing == 0 and now - claim.last_write >= self.lease

    async def _save(self, version: int) -> None:
        """Make the table as of ``version`` durable; one write serves every waiting change."""
        if self._saved >= version:
            return
        async with self._saving:
            if self._saved >= version:
                return
            current = self._version
            body = {
                "version": FILE_VERSION,
                "claims": {
                    trial: {"holder": c.holder, "claimed_at": c.claimed_at}
                    for trial, c in sorted(self._claims.items())
                },
            }
            data = json.dumps(body, indent=1).encode()
            await asyncio.to_thread(private_files.write_private, self.path, data)
            self._saved = max(self._saved, current)
