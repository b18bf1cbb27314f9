"""Time partitions of the cell telemetry tables on PostgreSQL, created on demand.

Each of ``cloud.db.models.TELEMETRY_CELL_TABLES`` is ``PARTITION BY RANGE (ts)``; a partition
covers one UTC day or month and is named ``<table>_p<YYYYMM>`` or ``<table>_p<YYYYMMDD>``.
``PartitionManager.ensure`` creates the partitions a batch needs before the batch's transaction
starts, in a short transaction of its own serialised by an advisory lock, and remembers what
exists so the common case costs no query. On SQLite there is nothing to do.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from cloud.db.models import TELEMETRY_CELL_TABLES

PartitionSpan = Literal["day", "month"]
_ADVISORY_LOCK_KEY = 0x62326C5F70617274  # "b2l_part"
_PARTITION_NAME = re.compile(r"^(?P<table>[a-z0-9_]+)_p(?P<start>\d{6}|\d{8})$")


def partition_bounds(ts: datetime, span: PartitionSpan) -> tuple[datetime, datetime]:
    """The UTC start (inclusive) and end (exclusive) of the partition holding ``ts``."""
    ts = ts.astimezone(UTC)
    if span == "day":
        start = datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
        return start, datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    start = datetime(ts.year, ts.month, 1, tzinfo=UTC)
    year, month = (ts.year + 1, 1) if ts.month == 12 else (ts.year, ts.month + 1)
    return start, datetime(year, month, 1, tzinfo=UTC)


def partition_name(table: str, start: datetime, span: PartitionSpan) -> str:
    """``cell_pillar1_p202501`` (month) or ``cell_pillar1_p20250131`` (day)."""
    return f"{table}_p{start:%Y%m}" if span == "month" else f"{table}_p{start:%Y%m%d}"


def is_partition_name(name: str) -> bool:
    """Whether ``name`` is a partition of one of the telemetry tables (Alembic skips them)."""
    match = _PARTITION_NAME.match(name)
    return match is not None and match.group("table") in TELEMETRY_CELL_TABLES


def list_partitions(conn: Connection, table: str) -> list[str]:
    """Names of the partitions of ``table``, sorted."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = :table AND p.relnamespace = to_regnamespace(current_schema())"
        ),
        {"table": table},
    )
    return sorted(row[0] for row in rows)


class PartitionManager:
    """Creates missing partitions of every telemetry table; thread-safe, one per engine."""

    def __init__(self, engine: Engine, span: PartitionSpan = "month") -> None:
        self.engine = engine
        self.span: PartitionSpan = span
        self.enabled = engine.dialect.name == "postgresql"
        self._known: set[datetime] = set()
        self._lock = threading.Lock()

    def ensure(self, timestamps: Iterable[datetime]) -> list[str]:
        """Make sure partitions exist for ``timestamps``; returns the names created now."""
        if not self.enabled:
            return []
        times = list(timestamps)
        if not times:
            return []
        low, high = min(times), max(times)
        bounds = partition_bounds(low, self.span)
        if bounds[0] in self._known and high < bounds[1]:
            return []  # the common case: one batch, one known partition
        starts = {partition_bounds(ts, self.span) for ts in times}
        missing = sorted(b for b in starts if b[0] not in self._known)
        if not missing:
            return []
        with self._lock:
            created = self._create(missing)
            self._known.update(start for start, _ in missing)
        return created

    def forget(self) -> None:
        """Drop what is remembered (after partitions were dropped by retention, say)."""
        with self._lock:
            self._known.clear()

    def _create(self, bounds: list[tuple[datetime, datetime]]) -> list[str]:
        created: list[str] = []
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            for table in TELEMETRY_CELL_TABLES:
                existing = set(list_partitions(conn, table))
                for start, end in bounds:
                    name = partition_name(table, start, self.span)
                    if name in existing:
                        continue
                    conn.exec_driver_sql(
                        f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table}" '
                        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )
                    created.append(name)
        return created
