"""A token bucket all the uploads of a sidecar share (``bandwidth_limit``), like rclone's
``--bwlimit``: every request body takes its size in tokens just before it is sent.

Tokens accrue at ``rate`` bytes per second up to ``burst`` (a tenth of a second of the
rate, at least 64 KiB). A body larger than the burst (a part of a multipart upload) waits
until the bucket is full, then takes all of its size, leaving a debt the next bodies wait
out: over any stretch longer than one body's transfer the rate holds, whatever the part
size. Waiters are served in arrival order, so concurrent uploads share the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Limiter(Protocol):
    async def take(self, size: int) -> None:
        """Wait until ``size`` bytes may be sent, then take them."""


#: Bytes short of a take that count as none: far below a byte. A clock that stands still
#: for short sleeps (a virtual one, a coarse one) would otherwise have a take sleep again
#: and again for a rounding error that its refill never makes up.
_HAIR = 1e-3


class Throttle:
    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate / 10, 64 * 1024))
        self._clock = clock
        self._tokens = 0.0  # starts empty: no initial burst above the rate
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, size: int) -> None:
        """Wait until ``size`` bytes may be sent (in arrival order), then take them."""
        if size <= 0:
            return
        async with self._lock:  # FIFO: asyncio.Lock wakes waiters in order
            need = min(float(size), self.burst)
            while True:
                self._refill()
                # A sleep of exactly the deficit can refill to a hair below it (floating
                # point): that hair is no reason to sleep again.
                if self._tokens >= need - _HAIR:
                    break
                await asyncio.sleep((need - self._tokens) / self.rate)
            self._tokens -= size


class _Unlimited:
    rate = 0.0

    async def take(self, size: int) -> None:
        return None


#: The throttle of a sidecar without ``bandwidth_limit``.
UNLIMITED = _Unlimited()


def for_rate(rate: int) -> Limiter:
    """A throttle of ``rate`` bytes per second; 0: none."""
    return Throttle(rate) if rate > 0 else UNLIMITED
