"""Column types that behave the same on PostgreSQL and SQLite.

- ``UtcDateTime``: ``timestamptz`` on PostgreSQL, text on SQLite; always an aware UTC datetime in
  Python, naive datetimes are refused.
- ``Json``: ``jsonb`` on PostgreSQL, JSON text on SQLite.
- ``JsonText``: ``json`` (the text as written) on PostgreSQL, JSON text on SQLite: for documents
  written and read whole, never queried inside (the twins).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

Json: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")
"""A JSON document column (``jsonb`` on PostgreSQL)."""
JsonText: TypeEngine[Any] = JSON().with_variant(PG_JSON(), "postgresql")
"""A JSON document column stored as its text (``json`` on PostgreSQL): no parse into jsonb's
binary form on each write, which made a 16-cell twin's update cost PostgreSQL ~150 µs of CPU
(~35 µs as ``json`` with lz4; docs/decisions.md §15)."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} (timestamps must be aware)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
