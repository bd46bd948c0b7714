"""The one retry backoff: exponential, capped, optionally jittered."""

from __future__ import annotations

import random

#: The first retry's wait: 1, 2, 4, ... seconds.
BASE = 1.0


def delay(attempt: int, base: float, cap: float, jitter: bool = False) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``base * 2 ** (attempt - 1)``, at most ``cap``; with ``jitter``, a uniform 50-100 % of
    that, so clients that failed together do not retry together.
    """
    wait = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))  # no overflow after many failures
    return wait * random.uniform(0.5, 1.0) if jitter else float(wait)
