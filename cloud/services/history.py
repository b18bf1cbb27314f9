"""History queries: cell and pack time series (raw or bucketed), EIS spectra, events.

Bucketed queries aggregate in the database: rows are grouped by ``(bucket, cell)`` where the
bucket is ``floor(unix_time / bucket_s) * bucket_s`` (UTC, aligned on the epoch), with
``min``/``max``/``avg`` of every value column and the row count. A query that would return more
than its limit raises QueryLimitError instead of a truncated answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import BigInteger, Integer, cast, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from cloud.db.base import Base
from cloud.db.engine import Database
from cloud.db.models import (
    CellEstimateRow,
    CellPillar1Row,
    CellPillar2Row,
    EisRow,
    EventRow,
    PackRow,
)
from cloud.errors import QueryLimitError
from cloud.services.batteries import get_battery_row
from twin.errors import TwinValidationError
from twin.measurements import EisMeasurement

DEFAULT_MAX_ROWS = 100_000
MAX_BUCKET_S = 366 * 86_400


class TelemetrySource(StrEnum):
    """Which time series to read."""

    PILLAR1 = "pillar1"
    PILLAR2 = "pillar2"
    ESTIMATES = "estimates"
    PACKS = "packs"


_TABLES: dict[TelemetrySource, tuple[type[Base], str, tuple[str, ...]]] = {
    TelemetrySource.PILLAR1: (
        CellPillar1Row,
        "cell_id",
        ("voltage_v", "temperature_c", "current_a", "sot", "phase", "soc", "sos"),
    ),
    TelemetrySource.PILLAR2: (
        CellPillar2Row,
        "cell_id",
        ("soc", "soh", "sos", "equivalent_cycles", "voltage_v", "temperature_c"),
    ),
    TelemetrySource.ESTIMATES: (CellEstimateRow, "cell_id", ("soc", "soc_std", "sos")),
    TelemetrySource.PACKS: (PackRow, "pack_index", ("voltage_v", "current_a")),
}


def value_columns(source: TelemetrySource) -> tuple[str, ...]:
    """The value columns a source has (``voltage_v``, ``soc``, ...)."""
    return _TABLES[source][2]


class TelemetrySeries(BaseModel):
    """The answer to a telemetry query.

    Raw rows: ``timestamp``, ``seq``, the key (``cell_id`` or ``pack_index``) and the fields.
    Bucketed rows: ``bucket_start``, the key, ``count`` and ``<field>_min|_max|_avg``.
    """

    model_config = ConfigDict(frozen=True)

    battery_id: str
    source: TelemetrySource
    start: datetime
    end: datetime
    bucket_s: int | None
    fields: list[str]
    rows: list[dict[str, Any]]


class EisSpectrumView(BaseModel):
    """The rows of one EIS event on one cell, by increasing frequency."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    cell_id: int
    timestamp: datetime
    rows: list[EisMeasurement]


class EventView(BaseModel):
    """A stored event, from the edge (``seq`` set) or from the cloud."""

    model_config = ConfigDict(frozen=True)

    battery_id: str
    seq: int | None
    source: str
    timestamp: datetime
    received_at: datetime
    event_type: str
    severity: str
    message: str | None
    cell_id: int | None
    data: dict[str, Any]


def bucket_expression(ts: Any, bucket_s: int, dialect: str) -> ColumnElement[Any]:
    """Unix time of the start of the ``bucket_s`` bucket holding ``ts``, computed in SQL."""
    if dialect == "postgresql":
        epoch = func.floor(func.extract("epoch", ts) / bucket_s)
        return cast(epoch, BigInteger) * bucket_s
    seconds = cast(func.strftime("%s", ts), Integer)
    return (seconds // bucket_s) * bucket_s


def _check_range(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise TwinValidationError("start and end must be timezone-aware")
    if end <= start:
        raise TwinValidationError("end must be after start")


def _limit(requested: int | None, maximum: int) -> int:
    if requested is None:
        return maximum
    if requested < 1:
        raise TwinValidationError("limit must be at least 1")
    return min(requested, maximum)


def _too_many(limit: int) -> QueryLimitError:
    return QueryLimitError(
        f"the query matches more than {limit} rows: narrow the time range or the cells, "
        "or ask for (larger) buckets"
    )


class HistoryService:
    """Read the stored time series of a battery."""

    def __init__(self, db: Database, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.db = db
        self.max_rows = max_rows

    def telemetry(
        self,
        battery_id: str,
        start: datetime,
        end: datetime,
        *,
        source: TelemetrySource = TelemetrySource.PILLAR1,
        cell_ids: list[int] | None = None,
        fields: list[str] | None = None,
        bucket_s: int | None = None,
        limit: int | None = None,
    ) -> TelemetrySeries:
        """Rows with ``start <= ts < end`` (cells in ``cell_ids``; packs for ``packs``),
        raw or aggregated per ``bucket_s``; QueryLimitError above ``limit`` rows."""
        _check_range(start, end)
        limit = _limit(limit, self.max_rows)
        model, key_name, known = _TABLES[source]
        fields = list(known) if fields is None else fields
        unknown = [f for f in fields if f not in known]
        if unknown or not fields:
            raise TwinValidationError(
                f"unknown field(s) {unknown} for {source.value}; known: {', '.join(known)}"
            )
        if bucket_s is not None and not 1 <= bucket_s <= MAX_BUCKET_S:
            raise TwinValidationError(f"bucket_s must be within 1..{MAX_BUCKET_S}")
        table = model.__table__
        ts, key = table.c.ts, table.c[key_name]
        where = [table.c.battery_id == battery_id, ts >= start, ts < end]
        if cell_ids is not None:
            where.append(key.in_(sorted(set(cell_ids))))
        if bucket_s is None:
            query = (
                select(ts, table.c.seq, key, *(table.c[f] for f in fields))
                .where(*where)
                .order_by(ts, key)
                .limit(limit + 1)
            )
        else:
            bucket = bucket_expression(ts, bucket_s, self.db.dialect).label("bucket")
            aggregates = []
            for f in fields:
                column = table.c[f]
                aggregates += [
                    func.min(column).label(f"{f}_min"),
                    func.max(column).label(f"{f}_max"),
                    func.avg(column).label(f"{f}_avg"),
                ]
            query = (
                select(bucket, key, func.count().label("count"), *aggregates)
                .where(*where)
                .group_by(bucket, key)
                .order_by(bucket, key)
                .limit(limit + 1)
            )
        with self.db.read() as session:
            get_battery_row(session, battery_id)
            result = session.execute(query).all()
        if len(result) > limit:
            raise _too_many(limit)
        rows: list[dict[str, Any]] = []
        if bucket_s is None:
            for row in result:
                item = {"timestamp": row[0], "seq": row[1], key_name: row[2]}
                item.update(zip(fields, row[3:], strict=True))
                rows.append(item)
        else:
            names = [f"{f}_{agg}" for f in fields for agg in ("min", "max", "avg")]
            for row in result:
                item = {
                    "bucket_start": datetime.fromtimestamp(int(row[0]), UTC),
                    key_name: row[1],
                    "count": row[2],
                }
                item.update(
                    (name, None if value is None else float(value))
                    for name, value in zip(names, row[3:], strict=True)
                )
                rows.append(item)
        return TelemetrySeries(
            battery_id=battery_id,
            source=source,
            start=start,
            end=end,
            bucket_s=bucket_s,
            fields=fields,
            rows=rows,
        )

    def eis(
        self,
        battery_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        cell_id: int | None = None,
        event_id: str | None = None,
        limit: int | None = None,
    ) -> list[EisSpectrumView]:
        """EIS spectra, oldest first; QueryLimitError above ``limit`` rows in all."""
        limit = _limit(limit, self.max_rows)
        query = select(EisRow).where(EisRow.battery_id == battery_id)
        if start is not None:
            query = query.where(EisRow.ts >= start)
        if end is not None:
            query = query.where(EisRow.ts < end)
        if cell_id is not None:
            query = query.where(EisRow.cell_id == cell_id)
        if event_id is not None:
            query = query.where(EisRow.event_id == event_id)
        query = query.order_by(EisRow.ts, EisRow.seq, EisRow.row_index).limit(limit + 1)
        with self.db.read() as session:
            get_battery_row(session, battery_id)
            rows = list(session.scalars(query))
        if len(rows) > limit:
            raise _too_many(limit)
        spectra: dict[tuple[str, int], tuple[datetime, list[EisMeasurement]]] = {}
        for row in rows:
            entry = spectra.setdefault((row.event_id, row.cell_id), (row.ts, []))
            entry[1].append(
                EisMeasurement(
                    status=row.status,
                    event_id=row.event_id,
                    cell_id=row.cell_id,
                    frequency_hz=row.frequency_hz,
                    amplitude_ohm=row.amplitude_ohm,
                    phase_deg=row.phase_deg,
                    current_offset_a=row.current_offset_a,
                    v_start_v=row.v_start_v,
                    v_end_v=row.v_end_v,
                    temperature_c=row.temperature_c,
                )
            )
        return [
            EisSpectrumView(
                event_id=event,
                cell_id=cell,
                timestamp=ts,
                rows=sorted(measurements, key=lambda m: m.frequency_hz),
            )
            for (event, cell), (ts, measurements) in spectra.items()
        ]

    def events(
        self,
        battery_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        source: str | None = None,
        event_type: str | None = None,
        limit: int | None = None,
    ) -> list[EventView]:
        """Events of the battery, oldest first; QueryLimitError above ``limit``."""
        limit = _limit(limit, self.max_rows)
        query = select(EventRow).where(EventRow.battery_id == battery_id)
        if start is not None:
            query = query.where(EventRow.ts >= start)
        if end is not None:
            query = query.where(EventRow.ts < end)
        if source is not None:
            query = query.where(EventRow.source == source)
        if event_type is not None:
            query = query.where(EventRow.event_type == event_type)
        query = query.order_by(EventRow.ts, EventRow.id).limit(limit + 1)
        with self.db.read() as session:
            get_battery_row(session, battery_id)
            rows = list(session.scalars(query))
        if len(rows) > limit:
            raise _too_many(limit)
        return [_event_view(row) for row in rows]


def _event_view(row: EventRow) -> EventView:
    return EventView(
        battery_id=row.battery_id,
        seq=row.seq,
        source=row.source,
        timestamp=row.ts,
        received_at=row.received_at,
        event_type=row.event_type,
        severity=row.severity,
        message=row.message,
        cell_id=row.cell_id,
        data=row.data,
    )


def count_rows(session: Session, model: type[Base], battery_id: str) -> int:
    """How many rows of ``model`` a battery has (tests and operations)."""
    table = model.__table__
    return int(
        session.scalar(
            select(func.count()).select_from(table).where(table.c.battery_id == battery_id)
        )
        or 0
    )
