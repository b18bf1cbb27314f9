"""Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS architecture blog).

The n-th consecutive failure waits a uniformly random time in ``[0, min(cap, base * 2**n)]``:
many edges that lost the cloud at once do not come back in lockstep. ``reset`` after a success.
The random generator is passed in (seeded in tests).
"""

from __future__ import annotations

import math
import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for consecutive failures: full jitter, exponential, capped."""

    def __init__(
        self, base_s: float = 1.0, cap_s: float = 300.0, rng: random.Random | None = None
    ) -> None:
        if not (math.isfinite(base_s) and base_s > 0.0):
            raise ValueError(f"base_s must be positive, got {base_s}")
        if not (math.isfinite(cap_s) and cap_s >= base_s):
            raise ValueError(f"cap_s must be >= base_s, got {cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.failures = 0

    def ceiling_s(self, failures: int | None = None) -> float:
        """Upper bound of the delay after ``failures`` consecutive failures (default: so far)."""
        n = self.failures if failures is None else failures
        return min(self.cap_s, self.base_s * 2.0 ** min(n, 64))

    def next_delay_s(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        delay = self.rng.uniform(0.0, self.ceiling_s())
        self.failures += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts from ``base_s`` again."""
        self.failures = 0
