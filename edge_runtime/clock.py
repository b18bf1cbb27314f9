"""The two clocks of the edge runtime, passed in so tests can run it in virtual time.

``wall_s`` stamps records (seconds since the epoch, UTC); ``monotonic_s`` measures timeouts,
retries and periods. Production uses ``time.time`` and ``time.monotonic``; a HIL test passes
functions of the simulator's ``env.now``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Clock:
    """Wall clock (epoch seconds) and monotonic clock (seconds)."""

    wall_s: Callable[[], float] = field(default=time.time)
    monotonic_s: Callable[[], float] = field(default=time.monotonic)

    def now(self) -> datetime:
        """The wall clock as an aware UTC datetime."""
        return datetime.fromtimestamp(self.wall_s(), UTC)


SYSTEM_CLOCK = Clock()


def utc(epoch_s: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_s, UTC)
