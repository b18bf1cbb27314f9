"""The cloud mirror on SQLite and a real PostgreSQL: it follows the true SoC of simulated
cells, persists its filter, and raises an event when the edge's SoC diverges."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloud_db_support import BACKENDS, T0, batch, migrated_database, register, simple_cell

from cloud.db.engine import Database
from cloud.services.history import HistoryService
from cloud.services.ingestion import IngestionService
from cloud.services.mirror import MirrorService
from cloud.settings import CloudSettings
from twin.cell_model import CellModel, FloatArray

pytestmark = pytest.mark.integration

N_CELLS = 8
SOC0 = 0.9


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        register(database, cell_parameters=simple_cell())
        yield database


def _simulate(
    seconds: int, seed: int = 3
) -> tuple[list[FloatArray], list[FloatArray], list[FloatArray]]:
    """True SoC, measured voltage and current of 8 cells at 1 Hz under a varying discharge."""
    rng = np.random.default_rng(seed)
    model = CellModel(simple_cell(), capacity_scale=rng.uniform(0.97, 1.03, N_CELLS))
    state = model.initial_state(np.full(N_CELLS, SOC0), 25.0)
    socs, volts, amps = [], [], []
    for k in range(seconds):
        current = np.full(N_CELLS, -4.0 - 2.0 * np.sin(k / 60.0))
        volts.append(model.terminal_voltage(state, current) + rng.normal(0, 0.002, N_CELLS))
        socs.append(state.soc.copy())
        amps.append(current)
        state = model.step(state, current, 25.0, 1.0)
    return socs, volts, amps


def _records(
    volts: list[FloatArray], amps: list[FloatArray], edge_soc: list[FloatArray], start: int
) -> list[dict[str, Any]]:
    out = []
    for k in range(start, start + 60):
        out.append(
            {
                "kind": "telemetry",
                "seq": k + 1,
                "timestamp": (T0 + timedelta(seconds=k)).isoformat(),
                "pillar1": [
                    {
                        "cell_id": c,
                        "voltage_v": float(volts[k][c]),
                        "temperature_c": 25.0,
                        "current_a": float(amps[k][c]),
                        "soc": 0.5,
                        "sos": 1.0,
                    }
                    for c in range(N_CELLS)
                ],
                "estimates": [
                    {"cell_id": c, "soc": float(np.clip(edge_soc[k][c], 0, 1)), "soc_std": 0.01}
                    for c in range(N_CELLS)
                ],
            }
        )
    return out


def test_mirror_follows_the_cells_and_flags_a_diverging_edge(db: Database) -> None:
    seconds = 40 * 60
    socs, volts, amps = _simulate(seconds)
    # a good edge, then one that reports 0.15 too much from minute 25 to 32
    edge = [s + (0.15 if 25 * 60 <= k < 32 * 60 else 0.0) for k, s in enumerate(socs)]
    settings = CloudSettings(_env_file=None, mirror_period_s=30.0)  # type: ignore[call-arg]
    ingestion = IngestionService(db, settings)
    events = 0
    for start in range(0, seconds, 60):
        if start == 12 * 60:  # a cloud restart: a new service resumes from the stored filter
            ingestion = IngestionService(db, settings)
        result = ingestion.ingest(batch(_records(volts, amps, edge, start)))
        events += result.cloud_events
        if start == 20 * 60:
            view = MirrorService(db).get("B-1")
            error = np.abs(np.array(view.soc) - socs[start + 59])
            assert error.max() < 0.02, error
            assert not view.diverged
    stored = HistoryService(db).events("B-1", source="cloud")
    assert [e.event_type for e in stored] == ["mirror.divergence", "mirror.converged"]
    assert events == 2
    divergence = stored[0]
    assert 25 * 60 <= (divergence.timestamp - T0).total_seconds() <= 25 * 60 + 60
    assert divergence.data["max_divergence_soc"] == pytest.approx(0.15, abs=0.03)
    assert divergence.severity == "warning"
    view = MirrorService(db).get("B-1")
    assert view.timestamp is not None
    assert np.abs(np.array(view.soc) - socs[-1]).max() < 0.02


def test_mirror_reset_and_no_cell_model(db: Database, tmp_path: Path) -> None:
    socs, volts, amps = _simulate(120)
    ingestion = IngestionService(db, CloudSettings(_env_file=None))  # type: ignore[call-arg]
    ingestion.ingest(batch(_records(volts, amps, socs, 0)))
    mirror = MirrorService(db)
    assert len(mirror.get("B-1").soc) == N_CELLS
    mirror.reset("B-1")
    assert mirror.get("B-1").soc == []
    register(db, "plain")  # no cell model: no mirror
    plain = [dict(r) for r in _records(volts, amps, socs, 60)]
    ingestion.ingest(batch(plain, "plain"))
    assert mirror.get("plain").soc == []
