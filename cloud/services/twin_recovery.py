"""Telemetry stored but not yet merged into the twins, read back from the telemetry tables.

An MQTT consumer with a twin interval (``B2L_MQTT_TWIN_INTERVAL_S``) commits rows and acks
first and merges the telemetry into the twins later; killed in between, it leaves twins behind
their stored rows. A consumer that starts reads back, for every twin, the stored telemetry
records newer than the newest one its reported state shows (``reported.seq``), at most
``limit_per_battery`` of the newest, so that ``IngestionService.update_twins`` can merge them.
Merging is idempotent (cells keep the newest seq, the mirror skips what it has seen), so reading
back records that a running consumer will also merge does no harm.

Records are rebuilt from their rows: Pillar 1 and Pillar 2 cells, the edge's estimates and the
packs, with the values stored (cells in cell-id order). A battery whose rows no longer make a
valid record is logged and left out; the others are read back all the same.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import BigInteger, cast, select
from sqlalchemy.orm import Session

from cloud.db.base import Base
from cloud.db.models import (
    CellEstimateRow,
    CellPillar1Row,
    CellPillar2Row,
    IngestedRecordRow,
    PackRow,
    TwinRow,
)
from twin.cells import CellGroup
from twin.measurements import (
    CellEstimate,
    PackMeasurement,
    Pillar1CellMeasurement,
    Pillar2CellData,
)
from twin.uplink import TelemetryRecord

log = logging.getLogger(__name__)

LIMIT_PER_BATTERY = 120
"""Newest records read back per battery: two minutes of 1 Hz telemetry, twice the longest twin
interval; only the newest value of each cell reaches the twin anyway."""
BATTERIES_PER_PASS = 100
"""Batteries whose records are read back (and merged) at once: bounds the memory."""

_CELL_GROUPS: tuple[tuple[str, type[Base], type[Any]], ...] = (
    ("pillar1", CellPillar1Row, Pillar1CellMeasurement),
    ("pillar2", CellPillar2Row, Pillar2CellData),
    ("estimates", CellEstimateRow, CellEstimate),
)


def shown_seqs(session: Session) -> list[tuple[str, int]]:
    """Every twin, with the newest telemetry seq its reported state shows (0: none yet)."""
    shown = cast(TwinRow.reported["seq"].as_string(), BigInteger)  # seqs pass 2**31
    rows = session.execute(select(TwinRow.battery_id, shown).order_by(TwinRow.battery_id))
    return [(battery_id, seq or 0) for battery_id, seq in rows]


def unmerged_telemetry(
    session: Session, twins: Sequence[tuple[str, int]], limit_per_battery: int = LIMIT_PER_BATTERY
) -> dict[str, list[TelemetryRecord]]:
    """The stored telemetry records of ``twins`` (battery, shown seq) newer than the shown seq,
    by battery, in seq order (at most the newest ``limit_per_battery``)."""
    backlog: dict[str, list[TelemetryRecord]] = {}
    for battery_id, shown_seq in twins:
        keys = session.execute(
            select(IngestedRecordRow.seq, IngestedRecordRow.ts)
            .where(
                IngestedRecordRow.battery_id == battery_id,
                IngestedRecordRow.seq > shown_seq,
                IngestedRecordRow.kind == "telemetry",
            )
            .order_by(IngestedRecordRow.seq.desc())
            .limit(limit_per_battery)
        ).all()
        if not keys:
            continue
        try:
            backlog[battery_id] = list(_records(session, battery_id, dict(keys)))
        except ValidationError as exc:  # rows no longer valid (written by hand, say): skipped
            log.error("telemetry of %s not read back: %s", battery_id, str(exc).splitlines()[0])
    return backlog


def passes(twins: Sequence[tuple[str, int]]) -> Iterator[Sequence[tuple[str, int]]]:
    """``twins`` in slices of ``BATTERIES_PER_PASS``."""
    for start in range(0, len(twins), BATTERIES_PER_PASS):
        yield twins[start : start + BATTERIES_PER_PASS]


def _records(
    session: Session, battery_id: str, stamps: dict[int, datetime]
) -> Iterator[TelemetryRecord]:
    """The records with these seqs (and timestamps), rebuilt from their rows."""
    first, last = min(stamps.values()), max(stamps.values())
    parts: dict[int, dict[str, Any]] = defaultdict(dict)
    for group, model, cell_model in _CELL_GROUPS:
        table = model.__table__
        fields = list(cell_model.model_fields)
        rows = session.execute(
            select(table.c.seq, *(table.c[name] for name in fields))
            .where(table.c.battery_id == battery_id, table.c.ts >= first, table.c.ts <= last)
            .order_by(table.c.seq, table.c.cell_id)
        )
        cells: dict[int, list[Any]] = defaultdict(list)
        for seq, *values in rows:
            if seq in stamps:  # (timestamps need not grow with seqs)
                cells[seq].append(cell_model(**dict(zip(fields, values, strict=True))))
        for seq, measured in cells.items():
            parts[seq][group] = CellGroup(cell_model, rows=measured)
    packs = session.execute(  # every telemetry seq of that range is in ``stamps``
        select(PackRow)
        .where(
            PackRow.battery_id == battery_id,
            PackRow.seq >= min(stamps),
            PackRow.seq <= max(stamps),
        )
        .order_by(PackRow.seq, PackRow.pack_index)
    ).scalars()
    for pack in packs:
        parts[pack.seq].setdefault("packs", []).append(
            PackMeasurement(
                pack_index=pack.pack_index,
                voltage_v=pack.voltage_v,
                current_a=pack.current_a,
                state=pack.state,
                faults=pack.faults,
            )
        )
    for seq in sorted(parts):
        yield TelemetryRecord(seq=seq, timestamp=stamps[seq], **parts[seq])
