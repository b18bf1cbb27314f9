"""``cloud.services.reported.telemetry_patch``: the newest value of every cell of many records,
found in one pass, equals what merging the records one by one shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.services.reported import telemetry_patch
from twin.cells import CellGroup
from twin.measurements import CellEstimate, Pillar1CellMeasurement, Pillar2CellData
from twin.twin_document import merge_patch
from twin.uplink import TelemetryRecord

T0 = datetime(2026, 12, 1, tzinfo=UTC)
CELL_IDS = st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True)


def _p1(cell_id: int, seq: int) -> Pillar1CellMeasurement:
    return Pillar1CellMeasurement(
        cell_id=cell_id,
        voltage_v=3.0 + 0.01 * seq,
        temperature_c=20.0 + cell_id,
        current_a=-1.0,
        soc=(seq % 10) / 10,
        sos=0.9,
    )


def _p2(cell_id: int, seq: int) -> Pillar2CellData:
    return Pillar2CellData(
        cell_id=cell_id,
        soc=(seq % 7) / 7,
        soh=0.8,
        sos=0.7,
        equivalent_cycles=float(seq),
        voltage_v=3.5,
        temperature_c=30.0,
    )


def _estimate(cell_id: int, seq: int) -> CellEstimate:
    return CellEstimate(cell_id=cell_id, soc=(seq % 5) / 5, soc_std=0.01, sos=0.9)


@st.composite
def records(draw: st.DrawFn) -> list[TelemetryRecord]:
    """Records in seq order, each with some groups of some cells, as cells or as columns (a
    run of records with the same ids is the common case the one pass takes short cuts on)."""
    out = []
    ids = draw(CELL_IDS)
    for seq in range(1, draw(st.integers(1, 12)) + 1):
        if draw(st.booleans()):
            ids = draw(CELL_IDS)  # else: the previous record's cells again
        groups: dict[str, Any] = {}
        for name, model, make in (
            ("pillar1", Pillar1CellMeasurement, _p1),
            ("pillar2", Pillar2CellData, _p2),
            ("estimates", CellEstimate, _estimate),
        ):
            if draw(st.booleans()):
                group = CellGroup(model, rows=[make(c, seq) for c in ids])
                groups[name] = group.to_columns() if draw(st.booleans()) else group.to_cells()
        if not groups:
            groups["pillar1"] = [_p1(c, seq).model_dump() for c in ids]
        out.append(
            TelemetryRecord.model_validate(
                {"seq": seq, "timestamp": T0 + timedelta(seconds=seq), **groups}
            )
        )
    return out


@settings(max_examples=150, deadline=None)
@given(records())
def test_one_pass_equals_merging_record_by_record(batch: list[TelemetryRecord]) -> None:
    one_by_one: dict[str, Any] = {}
    for record in batch:
        one_by_one = merge_patch(one_by_one, telemetry_patch([record], one_by_one))
    assert merge_patch({}, telemetry_patch(batch, {})) == one_by_one


def test_a_cell_shown_newer_is_left_alone() -> None:
    older = TelemetryRecord(
        seq=3, timestamp=T0, pillar1=CellGroup(Pillar1CellMeasurement, rows=[_p1(0, 3), _p1(1, 3)])
    )
    shown = {"cells": {"0": {"seq": 5, "voltage_v": 1.0}}, "seq": 5}
    patch = telemetry_patch([older], shown)
    assert set(patch["cells"]) == {"1"}  # type: ignore[arg-type]
    assert "seq" not in patch
