"""Helpers of the cloud storage tests: a migrated database on each backend, and uplink data.

Each test module declares its own fixture on top of ``migrated_database`` (importing a fixture
under its own name would shadow it)::

    @pytest.fixture(params=BACKENDS)
    def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
        with migrated_database(request, tmp_path) as database:
            yield database
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from cloud.db.base import Base
from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.db.models import IngestedRecordRow
from cloud.services.batteries import BatteryService
from twin.cell_params import CellParameters, RcBranch
from twin.topology import BatteryTopology
from twin.uplink import UplinkBatch

BACKENDS = ["sqlite", "postgresql"]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TOPOLOGY = BatteryTopology(cells_per_module=4, modules_per_pack=2)  # 8 cells


def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database: a SQLite file or a new database on the session PostgreSQL."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'cloud.db'}"
    url: str = request.getfixturevalue("pg_database").url
    return url


@contextmanager
def migrated_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database of the backend in ``request.param``, disposed afterwards."""
    url = database_url(request.param, request, tmp_path)
    upgrade(url)
    db = Database.from_url(url)
    try:
        yield db
    finally:
        db.dispose()


def register(
    db: Database,
    battery_id: str = "B-1",
    topology: BatteryTopology = TOPOLOGY,
    *,
    cell_parameters: CellParameters | None = None,
) -> None:
    """Register a battery."""
    BatteryService(db).register(
        battery_id, topology, cell_parameters=cell_parameters, manufacturer="acme", now=T0
    )


def count(db: Database, model: type[Base], battery_id: str | None = None) -> int:
    """Rows of a table (of one battery)."""
    table = model.__table__
    query = select(func.count()).select_from(table)
    if battery_id is not None:
        query = query.where(table.c.battery_id == battery_id)
    with db.read() as session:
        return int(session.scalar(query) or 0)


def stored_seqs(db: Database, battery_id: str = "B-1") -> list[int]:
    """The seqs claimed for a battery (each stored record once), in order."""
    with db.read() as session:
        return list(
            session.scalars(
                select(IngestedRecordRow.seq)
                .where(IngestedRecordRow.battery_id == battery_id)
                .order_by(IngestedRecordRow.seq)
            )
        )


def p1_cell(cell_id: int, seq: int, **overrides: Any) -> dict[str, Any]:
    """A Pillar 1 measurement whose values depend on cell and seq (for aggregate checks)."""
    values: dict[str, Any] = {
        "cell_id": cell_id,
        "voltage_v": round(3.2 + 0.01 * cell_id + 0.001 * (seq % 17), 6),
        "temperature_c": 20.0 + cell_id + 0.1 * (seq % 7),
        "current_a": -2.0 + 0.05 * (seq % 5),
        "sot": 0.9,
        "phase": 1.0,
        "soc": 0.5,
        "sos": 0.95,
    }
    values.update(overrides)
    return values


def telemetry(
    seq: int,
    *,
    cells: Sequence[int] = range(8),
    ts: datetime | None = None,
    estimates: bool = True,
    pillar2: bool = False,
    **cell_overrides: Any,
) -> dict[str, Any]:
    """A telemetry record (JSON) of ``cells`` at ``T0 + seq`` seconds."""
    record: dict[str, Any] = {
        "kind": "telemetry",
        "seq": seq,
        "timestamp": (ts or T0 + timedelta(seconds=seq)).isoformat(),
        "pillar1": [p1_cell(c, seq, **cell_overrides) for c in cells],
        "packs": [{"pack_index": 0, "voltage_v": 26.0, "current_a": -2.0, "faults": []}],
    }
    if estimates:
        record["estimates"] = [{"cell_id": c, "soc": 0.5, "soc_std": 0.02} for c in cells]
    if pillar2:
        record["pillar2"] = [
            {"cell_id": c, "soc": 0.5, "soh": 0.9, "sos": 0.95, "equivalent_cycles": 100.0}
            for c in cells
        ]
    return record


def batch(records: Sequence[dict[str, Any]], battery_id: str = "B-1") -> UplinkBatch:
    """A validated batch of record dicts."""
    return UplinkBatch.model_validate({"battery_id": battery_id, "records": list(records)})


def telemetry_batch(seqs: Sequence[int], battery_id: str = "B-1", **kwargs: Any) -> UplinkBatch:
    """A batch of telemetry records with these seqs."""
    return batch([telemetry(s, **kwargs) for s in seqs], battery_id)


def simple_cell() -> CellParameters:
    """An NMC-like 5 Ah cell with one RC branch (fast to compile)."""
    soc = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    ocv = [3.0, 3.45, 3.55, 3.62, 3.68, 3.74, 3.82, 3.91, 4.0, 4.08, 4.18]
    n = len(soc)
    return CellParameters(
        name="test-nmc",
        chemistry="NMC",
        source="synthetic test cell",
        capacity_ah=5.0,
        soc_grid=soc,
        ocv_v=ocv,
        r0_ohm=[0.02] * n,
        rc=[RcBranch(r_ohm=[0.01] * n, tau_s=[30.0] * n)],
        voltage_min_v=2.5,
        voltage_max_v=4.2,
        current_max_charge_a=5.0,
        current_max_discharge_a=10.0,
    )
