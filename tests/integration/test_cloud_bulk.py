"""``cloud.db.bulk.write_blocks`` (rows given column by column) stores exactly what
``write_rows`` stores, on SQLite and a real PostgreSQL: numbers, timestamps, NULLs, one text
per block or several."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloud_db_support import BACKENDS, T0, migrated_database, register
from sqlalchemy import select

from cloud.db import bulk
from cloud.db.engine import Database
from cloud.db.models import CellPillar1Row, CellPillar2Row
from cloud.db.partitions import PartitionManager

pytestmark = pytest.mark.integration

P1 = ("battery_id", "seq", "ts", "cell_id", "voltage_v", "temperature_c", "current_a", "sot")
P1 += ("phase", "soc", "sos")
P2 = ("battery_id", "seq", "ts", "cell_id", "soc", "soh", "sos", "equivalent_cycles")
P2 += ("voltage_v", "temperature_c")


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        register(database, "B-1")
        register(database, "B-22")
        register(database, "B-2")
        PartitionManager(database.engine).ensure([T0, T0 + timedelta(days=1)])
        yield database


def stored(db: Database, model: type[Any], columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    table = model.__table__
    with db.read() as session:
        rows = session.execute(select(*(table.c[c] for c in columns))).all()
    return sorted(tuple(row) for row in rows)


def write(db: Database, model: type[Any], columns: tuple[str, ...], blocks: list[Any]) -> int:
    with db.write() as session:
        return bulk.write_blocks(session, model, columns, blocks)


def pillar1_block(battery_id: str, seqs: list[int], n_cells: int) -> tuple[Any, ...]:
    """Cells of several records: seq and ts repeated per cell, fields per cell."""
    rows = len(seqs) * n_cells
    return (
        battery_id,
        np.repeat(np.array(seqs, dtype=np.int64), n_cells),
        [T0 + timedelta(seconds=s, microseconds=7) for s in seqs for _ in range(n_cells)],
        [c for _ in seqs for c in range(n_cells)],
        [3.0 + 0.001 * i for i in range(rows)],
        [-20.5 + i for i in range(rows)],
        -1e-9,  # one value for every row
        [0.0] * rows,
        [math.pi] * rows,
        [0.5] * rows,
        [1.0] * rows,
    )


def as_rows(block: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    n = len(block[1])
    columns = [list(v) if not isinstance(v, str | float) else [v] * n for v in block]
    rows = zip(*columns, strict=True)
    return [tuple(v.item() if isinstance(v, np.generic) else v for v in row) for row in rows]


def test_blocks_store_what_rows_store(db: Database) -> None:
    blocks = [pillar1_block("B-1", [1, 2, 3], 4), pillar1_block("B-22", [9], 16)]
    assert write(db, CellPillar1Row, P1, blocks) == 12 + 16
    by_blocks = stored(db, CellPillar1Row, P1)
    with db.write() as session:
        session.execute(CellPillar1Row.__table__.delete())
        bulk.write_rows(session, CellPillar1Row, P1, [r for b in blocks for r in as_rows(b)])
    assert stored(db, CellPillar1Row, P1) == by_blocks
    first = by_blocks[0]
    assert first[:4] == ("B-1", 1, T0 + timedelta(seconds=1, microseconds=7), 0)
    assert first[6] == -1e-9 and first[8] == math.pi


def test_nulls_and_texts_that_vary_take_the_row_path_with_the_same_result(db: Database) -> None:
    n = 3
    with_nulls = (
        "B-1",
        [5, 5, 5],
        T0,
        [0, 1, 2],
        [0.5] * n,
        [0.9] * n,
        [0.8] * n,
        [10.0, 11.0, 12.0],
        [3.3, None, 3.4],  # a cell without a voltage
        None,  # no temperatures
    )
    assert write(db, CellPillar2Row, P2, [with_nulls]) == 3
    rows = stored(db, CellPillar2Row, P2)
    assert [r[8] for r in rows] == [3.3, None, 3.4] and {r[9] for r in rows} == {None}
    varying = (["B-1", "B-22"], [6, 6], T0, [0, 1], 0.5, 0.9, 0.8, 1.0, 3.3, 20.0)
    assert write(db, CellPillar2Row, P2, [varying]) == 2
    assert {r[0] for r in stored(db, CellPillar2Row, P2) if r[1] == 6} == {"B-1", "B-22"}


def test_texts_as_byte_strings_of_one_length_are_stored_as_texts(db: Database) -> None:
    """The battery ids of several batteries in one block (a numpy array of UTF-8 byte strings);
    ids of different lengths (numpy pads the shorter with NUL bytes) take the row path."""
    ids = np.array([b"B-1", b"B-2", b"B-2"])
    block = (ids, [7, 7, 8], T0, [0, 1, 0], 0.5, 0.9, 0.8, 1.0, 3.3, 20.0)
    assert write(db, CellPillar2Row, P2, [block]) == 3
    assert [(r[0], r[1], r[3]) for r in stored(db, CellPillar2Row, P2)] == [
        ("B-1", 7, 0),
        ("B-2", 7, 1),
        ("B-2", 8, 0),
    ]
    padded = np.array([b"B-1", b"B-22"])
    assert padded.dtype.itemsize == 4
    assert write(db, CellPillar2Row, P2, [(padded, 9, T0, [0, 1], 0.5, 0.9, 0.8, 1.0, 3.3, 20.0)])
    assert sorted(r[0] for r in stored(db, CellPillar2Row, P2) if r[1] == 9) == ["B-1", "B-22"]


def test_a_block_with_columns_of_different_lengths_is_refused(db: Database) -> None:
    block = ("B-1", [1, 2], T0, [0, 1, 2], 3.3, 20.0, 1.0, 0.0, 0.0, 0.5, 0.9)
    with pytest.raises(ValueError, match="differ in length"):
        write(db, CellPillar1Row, P1, [block])
    assert stored(db, CellPillar1Row, P1) == []


def test_an_integer_out_of_its_column_range_is_refused_not_wrapped(db: Database) -> None:
    """psycopg's binary COPY would store 2**31 in an int4 column as -2**31: refused instead
    (SQLite's integers are 64-bit: stored there)."""
    block = ("B-1", [1, 2], T0, [0, 2**31], 3.3, 20.0, 1.0, 0.0, 0.0, 0.5, 0.9)  # int4 cell_id
    if db.is_postgresql:
        with pytest.raises(ValueError, match=r"2147483648 is out of range for int4"):
            write(db, CellPillar1Row, P1, [block])
        assert stored(db, CellPillar1Row, P1) == []
    else:
        write(db, CellPillar1Row, P1, [block])
        assert [r[3] for r in stored(db, CellPillar1Row, P1)] == [0, 2**31]
