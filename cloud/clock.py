"""The cloud's clock: services take ``now`` from the caller or read it here (UTC, aware)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def resolve_now(now: datetime | None) -> datetime:
    """``now`` converted to UTC, or the current time; naive datetimes are refused."""
    if now is None:
        return utc_now()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)
