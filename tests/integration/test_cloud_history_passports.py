"""History queries (buckets computed in the database), batteries and passports, on SQLite and
a real PostgreSQL."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cloud_db_support import BACKENDS, T0, TOPOLOGY, batch, migrated_database, register, telemetry

from cloud.db.engine import Database
from cloud.errors import AlreadyExistsError, InvalidTransitionError, NotFoundError, QueryLimitError
from cloud.services.batteries import BatteryService
from cloud.services.history import HistoryService, TelemetrySource
from cloud.services.ingestion import IngestionService
from cloud.services.passports import PassportService
from cloud.settings import CloudSettings
from twin.errors import TwinValidationError
from twin.passport import AccessTier, ExtensionAttribute, LifecycleStatus, Passport
from twin.sizing import DiagnosticSizing
from twin.topology import BatteryTopology

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        register(database)
        yield database


def _ingest(db: Database, records: list[dict[str, Any]]) -> None:
    settings = CloudSettings(_env_file=None)  # type: ignore[call-arg]
    IngestionService(db, settings).ingest(batch(records))


# -- history ----------------------------------------------------------------------------------


def _random_records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Records at irregular times (0.3..2.5 s apart) with random voltages."""
    rng = random.Random(seed)
    records, t = [], T0 + timedelta(milliseconds=250)
    for seq in range(1, n + 1):
        record = telemetry(seq, ts=t, estimates=False)
        for cell in record["pillar1"]:
            cell["voltage_v"] = round(rng.uniform(3.0, 4.1), 4)
            cell["temperature_c"] = round(rng.uniform(15.0, 35.0), 2)
        records.append(record)
        t += timedelta(milliseconds=rng.randint(300, 2500))
    return records


def test_buckets_match_python(db: Database) -> None:
    records = _random_records(300)
    _ingest(db, records)
    start, end = T0, T0 + timedelta(minutes=5)
    bucket_s = 60
    series = HistoryService(db).telemetry(
        "B-1",
        start,
        end,
        cell_ids=[1, 6],
        fields=["voltage_v", "temperature_c"],
        bucket_s=bucket_s,
    )
    expected: dict[tuple[datetime, int], list[tuple[float, float]]] = defaultdict(list)
    for record in records:
        ts = datetime.fromisoformat(record["timestamp"])
        if not start <= ts < end:
            continue
        bucket = datetime.fromtimestamp(math.floor(ts.timestamp() / bucket_s) * bucket_s, UTC)
        for cell in record["pillar1"]:
            if cell["cell_id"] in (1, 6):
                expected[(bucket, cell["cell_id"])].append(
                    (cell["voltage_v"], cell["temperature_c"])
                )
    assert [(r["bucket_start"], r["cell_id"]) for r in series.rows] == sorted(expected)
    for row in series.rows:
        values = expected[(row["bucket_start"], row["cell_id"])]
        volts = [v for v, _ in values]
        temps = [t for _, t in values]
        assert row["count"] == len(values)
        assert row["voltage_v_min"] == min(volts)
        assert row["voltage_v_max"] == max(volts)
        assert row["voltage_v_avg"] == pytest.approx(sum(volts) / len(volts), rel=1e-12)
        assert row["temperature_c_max"] == max(temps)
        assert row["temperature_c_avg"] == pytest.approx(sum(temps) / len(temps), rel=1e-12)


def test_raw_rows_range_filter_and_limit(db: Database) -> None:
    records = _random_records(50)
    _ingest(db, records)
    history = HistoryService(db, max_rows=1000)
    first, last = (datetime.fromisoformat(records[i]["timestamp"]) for i in (10, 20))
    series = history.telemetry("B-1", first, last, cell_ids=[3])
    assert [r["seq"] for r in series.rows] == list(range(11, 21))
    assert {r["cell_id"] for r in series.rows} == {3}
    assert series.rows[0]["timestamp"] == first
    assert series.rows[0]["voltage_v"] == records[10]["pillar1"][3]["voltage_v"]
    everything = history.telemetry("B-1", T0, T0 + timedelta(hours=1))
    assert len(everything.rows) == 50 * 8
    with pytest.raises(QueryLimitError, match="more than 100 rows"):
        history.telemetry("B-1", T0, T0 + timedelta(hours=1), limit=100)
    assert len(history.telemetry("B-1", T0, T0 + timedelta(hours=1), limit=400).rows) == 400
    with pytest.raises(QueryLimitError):
        HistoryService(db, max_rows=10).telemetry("B-1", T0, T0 + timedelta(hours=1))
    with pytest.raises(TwinValidationError):
        history.telemetry("B-1", last, first)
    with pytest.raises(TwinValidationError):
        history.telemetry("B-1", T0, last, fields=["nope"])
    with pytest.raises(NotFoundError):
        history.telemetry("nope", T0, last)


def test_other_sources(db: Database) -> None:
    _ingest(db, [telemetry(s, pillar2=True) for s in range(1, 11)])
    history = HistoryService(db)
    end = T0 + timedelta(hours=1)
    pillar2 = history.telemetry("B-1", T0, end, source=TelemetrySource.PILLAR2, fields=["soh"])
    assert len(pillar2.rows) == 80 and pillar2.rows[0]["soh"] == 0.9
    estimates = history.telemetry("B-1", T0, end, source=TelemetrySource.ESTIMATES, bucket_s=3600)
    assert [r["count"] for r in estimates.rows] == [10] * 8
    packs = history.telemetry("B-1", T0, end, source=TelemetrySource.PACKS, bucket_s=5)
    assert {r["pack_index"] for r in packs.rows} == {0}
    assert sum(r["count"] for r in packs.rows) == 10
    assert packs.rows[0]["current_a_avg"] == -2.0


def test_eis_spectra_and_events(db: Database) -> None:
    def rows(event: str, cell: int) -> list[dict[str, Any]]:
        return [
            {
                "event_id": event,
                "cell_id": cell,
                "frequency_hz": f,
                "amplitude_ohm": 0.02,
                "phase_deg": -5.0,
                "v_start_v": 3.6,
                "v_end_v": 3.6,
                "temperature_c": 25.0,
            }
            for f in (10.0, 1000.0, 100.0)
        ]

    ts = T0.isoformat()
    _ingest(
        db,
        [
            {"kind": "eis", "seq": 1, "timestamp": ts, "rows": rows("e1", 0) + rows("e1", 1)},
            {"kind": "eis", "seq": 2, "timestamp": ts, "rows": rows("e2", 0)},
            {"kind": "event", "seq": 3, "timestamp": ts, "event_type": "bms.reboot"},
        ],
    )
    history = HistoryService(db)
    spectra = history.eis("B-1")
    assert [(s.event_id, s.cell_id) for s in spectra] == [("e1", 0), ("e1", 1), ("e2", 0)]
    assert [r.frequency_hz for r in spectra[0].rows] == [10.0, 100.0, 1000.0]
    assert [s.event_id for s in history.eis("B-1", cell_id=0, event_id="e2")] == ["e2"]
    with pytest.raises(QueryLimitError):
        history.eis("B-1", limit=5)
    events = history.events("B-1")
    assert [(e.seq, e.source, e.event_type) for e in events] == [(3, "edge", "bms.reboot")]


# -- batteries --------------------------------------------------------------------------------


def _sizing(ts: datetime, soh_at_eol: float = 0.7) -> DiagnosticSizing:
    return DiagnosticSizing.model_validate(
        {
            "timestamp": ts,
            "soc_max": 0.95,
            "soc_min": 0.1,
            "fec_per_day": 1.0,
            "days_per_year": 365,
            "soh_at_eol": soh_at_eol,
            "e_nom": 10_000,
            "i_cha_max": 50,
            "i_cha_std": 20,
            "i_dch_max": 80,
            "i_dch_mean": 30,
            "lifespan_years": 10,
            "lifespan_fec": 4000,
            "n_packs": 1,
            "n_modules": 2,
            "n_cells": 8,
            "oem_id": 3.0,
            "project_id": "p",
            "system_id": "s",
            "t_max": 45,
            "t_avg": 25,
            "t_min": 0,
            "xh0_time": [0] * 5,
            "xh0_fec": [0] * 5,
            "soh_evolution": [1.0] * 40,
            "fec_evolution": list(range(40)),
            "time_evolution": list(range(40)),
        }
    )


def test_battery_registry_and_sizing_versions(db: Database) -> None:
    batteries = BatteryService(db)
    with pytest.raises(AlreadyExistsError):
        batteries.register("B-1", TOPOLOGY)
    with pytest.raises(TwinValidationError):
        batteries.register("bad/id", TOPOLOGY)
    batteries.register("A-0", BatteryTopology(cells_per_module=16), sizing=_sizing(T0))
    assert [b.battery_id for b in batteries.list_batteries()] == ["A-0", "B-1"]
    assert [b.battery_id for b in batteries.list_batteries(after="A-0")] == ["B-1"]
    view = batteries.get("A-0")
    assert view.topology.n_cells == 16 and not view.mirror_enabled
    later = T0 + timedelta(days=30)
    batteries.add_sizing("A-0", _sizing(later, soh_at_eol=0.65))
    with pytest.raises(AlreadyExistsError):
        batteries.add_sizing("A-0", _sizing(later))
    assert batteries.get_sizing("A-0").soh_at_eol == 0.65
    assert batteries.get_sizing("A-0", at=later - timedelta(seconds=1)).soh_at_eol == 0.7
    assert batteries.get_sizing("A-0").oem_id == "3"
    assert len(batteries.list_sizing("A-0")) == 2
    with pytest.raises(NotFoundError):
        batteries.get_sizing("B-1")
    with pytest.raises(NotFoundError):
        batteries.get("nope")


# -- passports --------------------------------------------------------------------------------


def _passport() -> Passport:
    return Passport(
        battery_id="B-1",
        attributes={
            "manufacturerName": "Acme Cells",
            "batteryChemistry": "NMC",
            "ratedCapacity": 50.0,
            "materialRecovery": {"cobalt": 90},
            "resultOfTestReportsProvingCompliance": "https://example.org/report.pdf",
            "x-warrantyContact": "service@example.org",
        },
        extensions={"x-warrantyContact": ExtensionAttribute(tier=AccessTier.LEGITIMATE_INTEREST)},
    )


def test_passport_views_by_tier(db: Database) -> None:
    passports = PassportService(db)
    assert passports.get("B-1").attributes == {}
    stored = passports.put("B-1", _passport(), by="acme", now=T0)
    assert stored.updated_at == T0
    public = passports.get("B-1", AccessTier.PUBLIC)
    assert set(public.attributes) == {"manufacturerName", "batteryChemistry", "ratedCapacity"}
    assert public.lifecycle_status is None and public.restricted_attributes == []
    legit = passports.get("B-1", AccessTier.LEGITIMATE_INTEREST)
    assert legit.restricted_attributes == ["materialRecovery", "x-warrantyContact"]
    assert legit.lifecycle_status is LifecycleStatus.ORIGINAL
    authority = passports.get("B-1", AccessTier.AUTHORITY)
    assert len(authority.attributes) == 6
    assert passports.get_full("B-1").extensions["x-warrantyContact"].tier == 1
    with pytest.raises(TwinValidationError):
        passports.put("B-1", Passport(battery_id="B-2"))
    with pytest.raises(NotFoundError):
        passports.get("nope")


def test_lifecycle_changes_are_checked_and_kept(db: Database) -> None:
    passports = PassportService(db)
    change = passports.change_status(
        "B-1", LifecycleStatus.REPURPOSED, by="operator", reason="second life", now=T0
    )
    assert change.old_status is LifecycleStatus.ORIGINAL
    with pytest.raises(InvalidTransitionError):
        passports.change_status("B-1", LifecycleStatus.ORIGINAL)
    passports.change_status("B-1", LifecycleStatus.WASTE, now=T0 + timedelta(days=1))
    with pytest.raises(InvalidTransitionError):
        passports.change_status("B-1", LifecycleStatus.REUSED)
    assert passports.lifecycle_status("B-1") is LifecycleStatus.WASTE
    history = passports.status_history("B-1")
    assert [(h.old_status, h.new_status) for h in history] == [
        (None, LifecycleStatus.ORIGINAL),
        (LifecycleStatus.ORIGINAL, LifecycleStatus.REPURPOSED),
        (LifecycleStatus.REPURPOSED, LifecycleStatus.WASTE),
    ]
    assert history[1].changed_by == "operator" and history[1].reason == "second life"


def test_export_uses_battery_pass_names(db: Database) -> None:
    passports = PassportService(db)
    passports.put("B-1", _passport(), now=T0)
    public: dict[str, Any] = passports.export("B-1")["batteryPassport"]  # type: ignore[assignment]
    assert public["accessTier"] == "public"
    assert public["productIdentifier"] == "B-1"
    assert public["generalProductInformation"] == {"manufacturerName": "Acme Cells"}
    assert public["materialComposition"] == {"batteryChemistry": "NMC"}
    assert public["performanceAndDurability"] == {"ratedCapacity": 50.0}
    assert "circularity" not in public and "extensions" not in public
    full: dict[str, Any] = passports.export("B-1", AccessTier.AUTHORITY)["batteryPassport"]  # type: ignore[assignment]
    assert full["generalProductInformation"]["batteryStatus"] == "original"
    assert full["circularity"] == {"materialRecovery": {"cobalt": 90}}
    assert full["labels"]["resultOfTestReportsProvingCompliance"].endswith("report.pdf")
    assert full["extensions"]["x-warrantyContact"]["value"] == "service@example.org"
    assert full["lastUpdated"] == T0.isoformat()
