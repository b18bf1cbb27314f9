"""The cloud's tables (SQLAlchemy 2 typed models): batteries, twins, time series, commands.

Static and state tables are keyed by ``battery_id``. The time series are narrow rows, one per
cell (or pack, EIS row) per uplinked record, keyed by ``(battery_id, seq, ...)``:

- ``cell_pillar1``, ``cell_pillar2``, ``cell_estimates``: one row per cell per telemetry record.
  On PostgreSQL they are partitioned by ``RANGE (ts)`` (see ``cloud.db.partitions``), have no
  primary key and one index ``(battery_id, ts)``, so COPY stays fast; they carry no foreign key.
  Uniqueness comes from ``ingested_records``: rows are written only for the seqs a transaction
  has just claimed there.
- ``ingested_records``: ``(battery_id, seq)`` once, whatever the record kind: the idempotency key.

Timestamps are ``ts`` (the record's time, from the edge) and ``*_at`` (the cloud's clock).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db.base import Base
from cloud.db.types import Json, JsonText, UtcDateTime

BATTERY_ID_LENGTH = 64
SHORT_TEXT_LENGTH = 200
PARTITIONED_BY_TIME = {"postgresql_partition_by": "RANGE (ts)"}


def _battery_fk() -> ForeignKey:
    return ForeignKey("batteries.battery_id", ondelete="CASCADE")


def _battery_id(*args: Any, **kwargs: Any) -> Mapped[str]:
    return mapped_column(String(BATTERY_ID_LENGTH), *args, **kwargs)


# -- static data ------------------------------------------------------------------------------


class BatteryRow(Base):
    """A registered battery and its topology (immutable once registered)."""

    __tablename__ = "batteries"

    battery_id: Mapped[str] = _battery_id(primary_key=True)
    topology: Mapped[dict[str, Any]] = mapped_column(Json)
    cell_parameters: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    """The cell model the cloud mirror runs (a ``twin.cell_params.CellParameters``); None: off."""
    manufacturer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The manufacturer account that may write the passport."""
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The owner's user name: reads every data category of the battery and grants access to it."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SizingRow(Base):
    """Diagnostic-sizing parameters (Table 1), one version per computation timestamp."""

    __tablename__ = "sizing_parameters"
    __table_args__ = (UniqueConstraint("battery_id", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    battery_id: Mapped[str] = _battery_id(_battery_fk(), index=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    parameters: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PassportRow(Base):
    """The passport's attributes as one JSON document, and the lifecycle status."""

    __tablename__ = "passports"

    battery_id: Mapped[str] = _battery_id(_battery_fk(), primary_key=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(Json)
    extensions: Mapped[dict[str, Any]] = mapped_column(Json)
    lifecycle_status: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class LifecycleEventRow(Base):
    """One change of a battery's lifecycle status (the audit trail of Annex XIII 4(c))."""

    __tablename__ = "lifecycle_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    battery_id: Mapped[str] = _battery_id(_battery_fk(), index=True)
    old_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    new_status: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    changed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH), nullable=True)


# -- twin -------------------------------------------------------------------------------------


class TwinRow(Base):
    """A battery's twin document, split so desired and reported writers never overwrite each
    other; the delta is computed on read. ``estimator_state`` is the cloud mirror's filter.
    Its documents are JSON text (``json``, lz4-compressed where the server has lz4): ingestion
    rewrites them whole many times a second across a fleet, and nothing queries inside them."""

    __tablename__ = "twins"

    battery_id: Mapped[str] = _battery_id(_battery_fk(), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    desired: Mapped[dict[str, Any]] = mapped_column(JsonText)
    desired_metadata: Mapped[dict[str, Any]] = mapped_column(JsonText)
    reported: Mapped[dict[str, Any]] = mapped_column(JsonText)
    reported_metadata: Mapped[dict[str, Any]] = mapped_column(JsonText)
    estimator_state: Mapped[dict[str, Any] | None] = mapped_column(JsonText, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


# -- uplink: idempotency key and time series ------------------------------------------------


class IngestedRecordRow(Base):
    """Each uplinked (battery_id, seq) once: claimed with ``INSERT ... ON CONFLICT DO NOTHING``."""

    __tablename__ = "ingested_records"

    battery_id: Mapped[str] = _battery_id(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CellPillar1Row(Base):
    """One Pillar 1 cell measurement."""

    __tablename__ = "cell_pillar1"
    __table_args__ = (
        Index("ix_cell_pillar1_battery_ts", "battery_id", "ts"),
        PARTITIONED_BY_TIME,
    )

    battery_id: Mapped[str] = _battery_id()
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    cell_id: Mapped[int] = mapped_column(Integer)
    voltage_v: Mapped[float] = mapped_column(Double)
    temperature_c: Mapped[float] = mapped_column(Double)
    current_a: Mapped[float] = mapped_column(Double)
    sot: Mapped[float] = mapped_column(Double)
    phase: Mapped[float] = mapped_column(Double)
    soc: Mapped[float] = mapped_column(Double)
    sos: Mapped[float] = mapped_column(Double)

    __mapper_args__ = {"primary_key": [battery_id, seq, cell_id]}  # noqa: RUF012


class CellPillar2Row(Base):
    """One Pillar 2 cell state (read from the BMS over CAN)."""

    __tablename__ = "cell_pillar2"
    __table_args__ = (
        Index("ix_cell_pillar2_battery_ts", "battery_id", "ts"),
        PARTITIONED_BY_TIME,
    )

    battery_id: Mapped[str] = _battery_id()
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    cell_id: Mapped[int] = mapped_column(Integer)
    soc: Mapped[float] = mapped_column(Double)
    soh: Mapped[float] = mapped_column(Double)
    sos: Mapped[float] = mapped_column(Double)
    equivalent_cycles: Mapped[float] = mapped_column(Double)
    voltage_v: Mapped[float | None] = mapped_column(Double, nullable=True)
    temperature_c: Mapped[float | None] = mapped_column(Double, nullable=True)

    __mapper_args__ = {"primary_key": [battery_id, seq, cell_id]}  # noqa: RUF012


class CellEstimateRow(Base):
    """The edge estimator's output for one cell."""

    __tablename__ = "cell_estimates"
    __table_args__ = (
        Index("ix_cell_estimates_battery_ts", "battery_id", "ts"),
        PARTITIONED_BY_TIME,
    )

    battery_id: Mapped[str] = _battery_id()
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    cell_id: Mapped[int] = mapped_column(Integer)
    soc: Mapped[float] = mapped_column(Double)
    soc_std: Mapped[float] = mapped_column(Double)
    sos: Mapped[float | None] = mapped_column(Double, nullable=True)

    __mapper_args__ = {"primary_key": [battery_id, seq, cell_id]}  # noqa: RUF012


class PackRow(Base):
    """Pack-level values of one telemetry record."""

    __tablename__ = "pack_measurements"
    __table_args__ = (Index("ix_pack_measurements_battery_ts", "battery_id", "ts"),)

    battery_id: Mapped[str] = _battery_id(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    pack_index: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    voltage_v: Mapped[float] = mapped_column(Double)
    current_a: Mapped[float] = mapped_column(Double)
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    faults: Mapped[list[str]] = mapped_column(Json)


class EisRow(Base):
    """One row of an EIS spectrum (one frequency of one cell in one event)."""

    __tablename__ = "eis_rows"
    __table_args__ = (
        Index("ix_eis_rows_battery_event", "battery_id", "event_id"),
        Index("ix_eis_rows_battery_ts", "battery_id", "ts"),
    )

    battery_id: Mapped[str] = _battery_id(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    row_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    event_id: Mapped[str] = mapped_column(String(64))
    cell_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    frequency_hz: Mapped[float] = mapped_column(Double)
    amplitude_ohm: Mapped[float] = mapped_column(Double)
    phase_deg: Mapped[float] = mapped_column(Double)
    current_offset_a: Mapped[float] = mapped_column(Double)
    v_start_v: Mapped[float] = mapped_column(Double)
    v_end_v: Mapped[float] = mapped_column(Double)
    temperature_c: Mapped[float] = mapped_column(Double)


class EventRow(Base):
    """An event: uplinked by the edge (``seq`` set) or raised by the cloud (``seq`` None)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_battery_ts", "battery_id", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    battery_id: Mapped[str] = _battery_id()
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source: Mapped[str] = mapped_column(String(16))
    """``edge`` or ``cloud``."""
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    event_type: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH), nullable=True)
    cell_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(Json)


# -- commands ---------------------------------------------------------------------------------


class CommandRow(Base):
    """A cloud-to-edge command and where it is in its lifecycle."""

    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_battery_status", "battery_id", "status"),)

    command_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    battery_id: Mapped[str] = _battery_id(_battery_fk())
    command_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """First delivery."""
    delivery_count: Mapped[int] = mapped_column(Integer)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """When the command reached a final status."""
    reason: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CommandTransitionRow(Base):
    """One status change of a command, with its time (the command's history)."""

    __tablename__ = "command_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    command_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("commands.command_id", ondelete="CASCADE"), index=True
    )
    old_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    new_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    detail: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH), nullable=True)


class CommandAckRow(Base):
    """An uplinked acknowledgement, stored as received; ``applied`` tells if it changed the
    command (an ack of an unknown or already final command is kept but changes nothing)."""

    __tablename__ = "command_acks"

    battery_id: Mapped[str] = _battery_id(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    command_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    applied: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str | None] = mapped_column(String(SHORT_TEXT_LENGTH), nullable=True)


TELEMETRY_CELL_TABLES = ("cell_pillar1", "cell_pillar2", "cell_estimates")
"""Tables partitioned by time on PostgreSQL."""
