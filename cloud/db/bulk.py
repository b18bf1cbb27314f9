"""Bulk row writes: binary COPY on PostgreSQL, ``executemany`` on SQLite.

Rows are tuples in the order of ``columns``; values are Python objects (aware datetimes, floats,
dicts for JSON columns). On PostgreSQL one ``COPY ... FROM STDIN (FORMAT BINARY)`` per call runs
on the session's own connection, so it belongs to the session's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Integer,
    SmallInteger,
    String,
    Table,
    Uuid,
    insert,
)
from sqlalchemy.orm import Session

from cloud.db.base import Base, table_of
from cloud.db.types import UtcDateTime

Row = tuple[Any, ...]

# most specific first: BigInteger and SmallInteger are Integers
_PG_TYPES: tuple[tuple[type[Any], str], ...] = (
    (BigInteger, "int8"),
    (SmallInteger, "int2"),
    (Integer, "int4"),
    (Double, "float8"),
    (UtcDateTime, "timestamptz"),
    (String, "text"),
    (JSON, "jsonb"),
    (Uuid, "uuid"),
    (Boolean, "bool"),
)


def pg_type_name(column: Column[Any]) -> str:
    """The PostgreSQL type name binary COPY must be told for ``column``."""
    for sa_type, name in _PG_TYPES:
        if isinstance(column.type, sa_type):
            return name
    raise TypeError(f"no COPY type for column {column.table.name}.{column.name} ({column.type!r})")


def copy_statement(table: Table, columns: Sequence[str]) -> str:
    """``COPY "table" ("a", "b") FROM STDIN (FORMAT BINARY)``."""
    names = ", ".join(f'"{c}"' for c in columns)
    return f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT BINARY)'


def write_rows(
    session: Session, model: type[Base], columns: Sequence[str], rows: Iterable[Row]
) -> int:
    """Append ``rows`` to ``model``'s table inside the session's transaction; returns the count."""
    table = table_of(model)
    if session.get_bind().dialect.name == "postgresql":
        return _copy_rows(session, table, columns, rows)
    batch = [dict(zip(columns, row, strict=True)) for row in rows]
    if batch:
        session.execute(insert(table), batch)
    return len(batch)


def _copy_rows(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> int:
    types = [pg_type_name(table.c[name]) for name in columns]
    driver = session.connection().connection.driver_connection
    count = 0
    with driver.cursor() as cursor, cursor.copy(copy_statement(table, columns)) as copy:  # type: ignore[union-attr]
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
            count += 1
    return count
