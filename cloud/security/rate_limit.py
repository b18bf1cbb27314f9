"""Per-key token buckets for ingestion rate limits (in-process).

Each device has a bucket of ``burst`` tokens refilled at ``rate_per_s``; an ingested batch
costs one token per row. The buckets live in the memory of one cloud process: behind a load
balancer with P processes a device may reach up to P times its rate (documented in
``docs/security.md``); a shared limiter (e.g. in the database or a gateway) is the upgrade path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class TokenBucketLimiter:
    """Thread-safe token buckets by key; time is passed in (monotonic seconds)."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("a rate limit needs rate_per_s > 0 and burst > 0")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: str, cost: float, now_s: float) -> float:
        """Take ``cost`` tokens from ``key``'s bucket.

        Returns 0.0 when granted, else the seconds to wait before the same request can pass
        (``inf`` if ``cost`` exceeds the burst: it never will).
        """
        if cost > self.burst:
            return float("inf")
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._evict_full(now_s)
                bucket = self._buckets[key] = _Bucket(self.burst, now_s)
            elapsed_s = max(0.0, now_s - bucket.updated_s)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed_s * self.rate_per_s)
            bucket.updated_s = now_s
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return 0.0
            return (cost - bucket.tokens) / self.rate_per_s

    def _evict_full(self, now_s: float) -> None:
        """Forget buckets that have refilled (they hold no state worth keeping)."""
        refill_s = self.burst / self.rate_per_s
        stale = [k for k, b in self._buckets.items() if now_s - b.updated_s >= refill_s]
        for key in stale:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:  # all busy: drop the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k].updated_s)
            del self._buckets[oldest]
