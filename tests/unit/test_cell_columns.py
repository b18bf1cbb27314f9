"""A record's cells as a list of cell objects or as columns (``twin.cells``): the same values,
the same rules, the same errors where they matter; the edge sends columns."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from cloud.services.ingestion import validation_reasons
from edge_runtime.outbox import Outbox
from twin.cells import COLUMNS_CONTEXT, CellGroup, columns_model
from twin.measurements import CellEstimate, Pillar1CellMeasurement, Pillar2CellData
from twin.uplink import TelemetryRecord, UplinkBatch

T0 = datetime(2026, 12, 1, tzinfo=UTC)
GROUPS: dict[str, type[BaseModel]] = {
    "pillar1": Pillar1CellMeasurement,
    "pillar2": Pillar2CellData,
    "estimates": CellEstimate,
}


def p1(cell_id: int, **overrides: Any) -> dict[str, Any]:
    cell = {
        "cell_id": cell_id,
        "voltage_v": 3.6 + 0.01 * cell_id,
        "temperature_c": 25.0 + cell_id,
        "current_a": -2.5,
        "sot": 0.9,
        "phase": 1.0,
        "soc": 0.5,
        "sos": 0.95,
    }
    return cell | overrides


def as_columns(cells: list[dict[str, Any]], names: list[str]) -> dict[str, list[Any]]:
    return {name: [cell.get(name) for cell in cells] for name in names}


def record_json(group: str, value: Any) -> bytes:
    body = {
        "battery_id": "B-1",
        "records": [{"kind": "telemetry", "seq": 1, "timestamp": T0.isoformat(), group: value}],
    }
    return json.dumps(body, allow_nan=True).encode()


def parse(body: bytes) -> UplinkBatch | ValidationError:
    try:
        return UplinkBatch.model_validate_json(body)
    except ValidationError as exc:
        return exc


# -- one set of rules --------------------------------------------------------------------------


def test_the_columns_model_has_every_field_of_the_cell_model_with_its_limits() -> None:
    columns = columns_model(Pillar1CellMeasurement)
    assert set(columns.model_fields) == set(Pillar1CellMeasurement.model_fields)
    assert columns.model_fields["voltage_v"].is_required()
    assert not columns.model_fields["sot"].is_required()  # has a default: may be left out
    good = as_columns([p1(0), p1(1)], list(Pillar1CellMeasurement.model_fields))
    columns.model_validate(good)
    for field, bad in (("voltage_v", 10.5), ("soc", 1.5), ("cell_id", -1), ("current_a", 1e6)):
        broken = {**good, field: [good[field][0], bad]}
        with pytest.raises(ValidationError, match=rf"{field}\.1"):
            columns.model_validate(broken)


cell_values = st.one_of(
    st.floats(min_value=-300.0, max_value=300.0),
    st.sampled_from([math.nan, math.inf, -math.inf, None, True, "3.7", [], {}]),
    st.integers(min_value=-2, max_value=70_000),
)


@settings(max_examples=300, deadline=None)
@example(group="pillar1", n_cells=3, changes=[], drop=set())
@example(group="pillar2", n_cells=2, changes=[], drop={5})
@example(group="estimates", n_cells=1, changes=[], drop={3})
@given(
    group=st.sampled_from(sorted(GROUPS)),
    n_cells=st.integers(min_value=1, max_value=4),
    changes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10), cell_values), max_size=3),
    drop=st.sets(st.integers(0, 10), max_size=2),
)
def test_both_forms_accept_and_refuse_the_same_cells(
    group: str, n_cells: int, changes: list[tuple[int, int, Any]], drop: set[int]
) -> None:
    """Random cells, some values broken (out of range, NaN, wrong type) or fields left out of
    every cell: a body is accepted in one form exactly when it is in the other, with equal
    values."""
    model = GROUPS[group]
    names = list(model.model_fields)
    base = {
        "pillar1": p1(0),
        "pillar2": {"cell_id": 0, "soc": 0.5, "soh": 0.9, "sos": 0.9, "equivalent_cycles": 12.0},
        "estimates": {"cell_id": 0, "soc": 0.5, "soc_std": 0.02, "sos": 0.9},
    }[group]
    cells = [base | {"cell_id": i} for i in range(n_cells)]
    for index, field, value in changes:
        cells[index % n_cells][names[field % len(names)]] = value
    dropped = {names[i % len(names)] for i in drop}
    cells = [{k: v for k, v in cell.items() if k not in dropped} for cell in cells]
    present = {name for cell in cells for name in cell}

    def value(cell: dict[str, Any], name: str) -> Any:  # a required field left out: None
        field = model.model_fields[name]
        return cell.get(name, None if field.is_required() else field.get_default())

    columns = {n: [value(cell, n) for cell in cells] for n in names if n in present}

    as_cells, as_cols = parse(record_json(group, cells)), parse(record_json(group, columns))
    if not changes and not dropped & {n for n, f in model.model_fields.items() if f.is_required()}:
        assert isinstance(as_cells, UplinkBatch), as_cells  # nothing broken: both accepted
    event("refused" if isinstance(as_cells, ValidationError) else "accepted")
    assert isinstance(as_cells, ValidationError) == isinstance(as_cols, ValidationError), (
        as_cells,
        as_cols,
    )
    if isinstance(as_cells, UplinkBatch) and isinstance(as_cols, UplinkBatch):
        assert as_cells == as_cols
        record_cells, record_cols = as_cells.records[0], as_cols.records[0]
        assert isinstance(record_cells, TelemetryRecord)
        assert isinstance(record_cols, TelemetryRecord)
        assert getattr(record_cols, group).is_columns
        assert list(getattr(record_cols, group)) == list(getattr(record_cells, group))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"cell_id": [0, 1], "voltage_v": [3.6]}, "one value per cell id (2): voltage_v has 1"),
        ({"cell_id": [0], "volts": [3.6]}, "volts"),
        (7, "a list of cells or an object of columns"),
        ("cells", "a list of cells or an object of columns"),
        ([p1(0), p1(1, voltage_v=12.0)], "pillar1.cells.1.voltage_v: Input should be less"),
    ],
)
def test_malformed_columns_are_refused_with_a_reason(value: Any, reason: str) -> None:
    if isinstance(value, dict) and "voltage_v" in value:
        value = as_columns([p1(0), p1(1)], list(Pillar1CellMeasurement.model_fields)) | value
    result = parse(record_json("pillar1", value))
    assert isinstance(result, ValidationError)
    reasons = validation_reasons(result)
    assert any(reason in r for r in reasons), reasons
    assert all(r.startswith("records.0.telemetry.pillar1") for r in reasons)
    other_form = ("valid array", "should be an object", "valid dictionary")
    assert not any(noise in r for r in reasons for noise in other_form), reasons


def test_a_cell_id_twice_in_columns_is_refused_as_in_cells() -> None:
    names = list(Pillar1CellMeasurement.model_fields)
    twice = [p1(0), p1(0)]
    for body in (record_json("pillar1", twice), record_json("pillar1", as_columns(twice, names))):
        result = parse(body)
        assert isinstance(result, ValidationError)
        assert "pillar1 lists a cell_id twice" in str(result)


def test_columns_left_out_take_the_field_default() -> None:
    columns = as_columns([p1(0), p1(1)], ["cell_id", "voltage_v", "temperature_c", "current_a"])
    columns |= {"soc": [0.5, 0.6], "sos": [0.9, 0.9]}  # no sot, no phase
    batch = parse(record_json("pillar1", columns))
    assert isinstance(batch, UplinkBatch)
    record = batch.records[0]
    assert isinstance(record, TelemetryRecord)
    assert record.pillar1.column("sot") == [0.0, 0.0]
    assert [c.phase for c in record.pillar1] == [0.0, 0.0]
    assert record.pillar1.values(1)["soc"] == 0.6


# -- the group ---------------------------------------------------------------------------------


def test_a_group_reads_the_same_from_cells_and_from_columns() -> None:
    cells = [p1(3), p1(1), p1(2)]
    rows = CellGroup(Pillar1CellMeasurement, rows=[Pillar1CellMeasurement(**c) for c in cells])
    columns_of = columns_model(Pillar1CellMeasurement)
    columns = CellGroup(
        Pillar1CellMeasurement,
        columns=columns_of.model_validate(as_columns(cells, list(p1(0)))),
    )
    for group in (rows, columns):
        assert len(group) == 3 and bool(group)
        assert group.cell_ids == [3, 1, 2]
        assert group.column("voltage_v") == [c["voltage_v"] for c in cells]
        assert group.values(0) == cells[0]
        assert group[2] == Pillar1CellMeasurement(**cells[2])
        assert group.to_cells() == cells
        assert group.to_columns() == as_columns(cells, list(p1(0)))
    assert rows == columns and list(rows) == list(columns)
    assert columns.is_columns and not rows.is_columns
    assert repr(columns).endswith("(3 columns)") and repr(rows).endswith("(3 cells)")
    assert rows != CellGroup(Pillar1CellMeasurement, rows=[Pillar1CellMeasurement(**p1(3))])
    with pytest.raises(ValueError, match="rows or columns"):
        CellGroup(Pillar1CellMeasurement)


def test_a_cell_model_with_validators_has_no_columns_form() -> None:
    from twin.measurements import EisSpectrum

    with pytest.raises(TypeError, match="validators"):
        columns_model(EisSpectrum)


# -- on the wire -------------------------------------------------------------------------------


def test_records_are_written_as_cells_unless_asked_for_columns() -> None:
    record = TelemetryRecord(
        seq=1,
        timestamp=T0,
        pillar1=[Pillar1CellMeasurement(**p1(c)) for c in range(16)],
        estimates=[CellEstimate(cell_id=c, soc=0.5, soc_std=0.01) for c in range(16)],
    )
    as_cells = json.loads(record.model_dump_json())
    as_columns_ = json.loads(record.model_dump_json(context=COLUMNS_CONTEXT))
    assert isinstance(as_cells["pillar1"], list) and as_cells["pillar1"][3] == p1(3)
    assert as_columns_["pillar1"]["voltage_v"][3] == p1(3)["voltage_v"]
    assert as_columns_["pillar2"] == []  # an empty group stays an empty list
    assert record.model_dump()["pillar1"][0] == p1(0)  # Python dumps stay cells
    size_cells = len(record.model_dump_json())
    size_columns = len(record.model_dump_json(context=COLUMNS_CONTEXT))
    assert size_columns < 0.6 * size_cells
    again = TelemetryRecord.model_validate_json(record.model_dump_json(context=COLUMNS_CONTEXT))
    assert again == record and again.pillar1.is_columns


def test_the_edge_outbox_keeps_and_sends_cells_as_columns(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", "B-1")
    record = TelemetryRecord(
        seq=1,
        timestamp=T0 + timedelta(seconds=1),
        pillar1=[Pillar1CellMeasurement(**p1(c)) for c in range(4)],
    )
    try:
        outbox.enqueue(record)
        sent = outbox.next_batch(max_records=10)
        assert sent is not None
        body = json.loads(sent.body)
        assert body["records"][0]["pillar1"]["cell_id"] == [0, 1, 2, 3]
        parsed = UplinkBatch.model_validate_json(sent.body)
        assert parsed.records[0] == record.model_copy(update={"seq": parsed.records[0].seq})
    finally:
        outbox.close()
