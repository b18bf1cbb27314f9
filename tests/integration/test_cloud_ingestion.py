"""Ingestion on SQLite and a real PostgreSQL: whole-or-nothing, idempotency, concurrency,
partitions, the twin's reported state, acks and events; kill -9 of PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cloud_db_support import (
    BACKENDS,
    T0,
    batch,
    count,
    migrated_database,
    register,
    simple_cell,
    stored_seqs,
    telemetry,
    telemetry_batch,
)
from sqlalchemy import event, select, text

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.db.models import (
    CellEstimateRow,
    CellPillar1Row,
    CellPillar2Row,
    CommandAckRow,
    EisRow,
    EventRow,
    PackRow,
    TwinRow,
)
from cloud.db.partitions import list_partitions
from cloud.errors import BatchRejectedError, NotFoundError, WrongBatteryError
from cloud.services.commands import CommandService
from cloud.services.ingestion import IngestionService
from cloud.services.twins import TwinService
from cloud.settings import CloudSettings
from hil.services import PostgresServer
from twin.cells import COLUMNS_CONTEXT
from twin.commands import CommandStatus, ReportingPeriod
from twin.uplink import TelemetryRecord, UplinkBatch

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        register(database)
        yield database


def _settings(**overrides: Any) -> CloudSettings:
    return CloudSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def ingestion(db: Database) -> IngestionService:
    return IngestionService(db, _settings(telemetry_partition_span="day"))


def test_a_batch_is_stored_with_every_row(db: Database, ingestion: IngestionService) -> None:
    result = ingestion.ingest(telemetry_batch([1, 2, 3], pillar2=True))
    assert result.accepted == 3 and result.duplicates == 0
    assert result.accepted_by_kind == {"telemetry": 3}
    assert result.cell_rows == 3 * 8 * 3  # pillar1 + pillar2 + estimates
    assert count(db, CellPillar1Row) == 24
    assert count(db, CellPillar2Row) == 24
    assert count(db, CellEstimateRow) == 24
    assert count(db, PackRow) == 3
    assert stored_seqs(db) == [1, 2, 3]
    with db.read() as session:
        row = session.scalars(
            select(CellPillar1Row).where(CellPillar1Row.seq == 2, CellPillar1Row.cell_id == 5)
        ).one()
    assert row.ts == T0 + timedelta(seconds=2)
    assert row.voltage_v == pytest.approx(3.2 + 0.05 + 0.002)


def test_a_bad_record_rejects_the_whole_batch(db: Database, ingestion: IngestionService) -> None:
    bad = batch([telemetry(1), telemetry(2, cells=[0, 9]), telemetry(3, cells=[12])])
    with pytest.raises(BatchRejectedError) as caught:
        ingestion.ingest(bad)
    assert caught.value.reasons == [
        "record seq 2: cell_id 9 is outside the battery's topology (0..7)",
        "record seq 3: cell_id 12 is outside the battery's topology (0..7)",
    ]
    assert stored_seqs(db) == []
    assert count(db, CellPillar1Row) == 0


def test_a_failure_inside_the_transaction_writes_nothing(
    db: Database, ingestion: IngestionService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows already written when a later step fails are rolled back with it."""

    def explode(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(IngestionService, "_update_twin", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingestion.ingest(telemetry_batch([1, 2]))
    assert stored_seqs(db) == []
    assert count(db, CellPillar1Row) == 0
    monkeypatch.undo()
    assert ingestion.ingest(telemetry_batch([1, 2])).accepted == 2  # the retry stores it


def test_malformed_json_is_rejected_with_reasons(ingestion: IngestionService) -> None:
    body = (
        '{"battery_id": "B-1", "records": [{"kind": "telemetry", "seq": 1, '
        '"timestamp": "2025-01-01T00:00:00Z", "pillar1": [{"cell_id": 0, "voltage_v": 99, '
        '"temperature_c": 20, "current_a": 0, "soc": 0.5, "sos": 1}]}]}'
    )
    with pytest.raises(BatchRejectedError) as caught:
        ingestion.ingest_json(body, "B-1")
    assert any("voltage_v" in reason for reason in caught.value.reasons)


def test_unknown_battery_and_wrong_device(ingestion: IngestionService) -> None:
    with pytest.raises(NotFoundError):
        ingestion.ingest(telemetry_batch([1], battery_id="nope"))
    with pytest.raises(WrongBatteryError):
        ingestion.ingest(telemetry_batch([1]), device_battery_id="B-2")


def test_prefetch_reads_the_batteries_it_lacks_in_one_query(
    db: Database, ingestion: IngestionService
) -> None:
    """A consumer meeting a fleet reads the batteries of a group at once, not one by one."""
    for n in range(2, 6):
        register(db, f"B-{n}")
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        ingestion.prefetch([f"B-{n}" for n in range(1, 6)] + ["nope", "B-1"])
        batteries_read = [s for s in statements if "FROM batteries" in s]
        assert len(batteries_read) == 1
        statements.clear()
        for n in range(1, 6):  # checked from the cache: no statement
            ingestion.check(telemetry_batch([1], battery_id=f"B-{n}"))
        assert statements == []
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    with pytest.raises(NotFoundError):  # an unknown battery is still refused
        ingestion.check(telemetry_batch([1], battery_id="nope"))


def battery_rows(db: Database, model: type[Any], battery_id: str) -> list[tuple[Any, ...]]:
    """A battery's rows of a table, sorted, without the battery id."""
    table = model.__table__
    columns = [c for c in table.c if c.name != "battery_id"]
    with db.read() as session:
        return sorted(
            session.execute(select(*columns).where(table.c.battery_id == battery_id)).all()
        )


def test_cells_sent_as_columns_are_stored_as_the_same_rows_and_twin(db: Database) -> None:
    """One batch (Pillar 1, Pillar 2 with and without voltages, estimates, packs) sent as cells
    to one battery and as columns to another, both with the cloud mirror: equal rows in every
    table, equal reported state, metadata and mirror state."""
    register(db, "B-A", cell_parameters=simple_cell())
    register(db, "B-B", cell_parameters=simple_cell())
    service = IngestionService(db, _settings(mirror_period_s=0.0))
    source = telemetry_batch(range(1, 31), pillar2=True)
    records = []
    for r in source.records:
        assert isinstance(r, TelemetryRecord)
        pillar2 = [  # odd cells with a voltage and a temperature, even ones without
            c.model_copy(update={"voltage_v": 3.3, "temperature_c": 21.0}) if c.cell_id % 2 else c
            for c in r.pillar2
        ]
        cut = pillar2[:4] if r.seq % 2 else pillar2  # some records with fewer Pillar 2 cells
        records.append(TelemetryRecord(**{**dict(r), "pillar2": cut}))
    now = T0 + timedelta(minutes=5)
    for battery_id, context in (("B-A", None), ("B-B", COLUMNS_CONTEXT)):
        body = UplinkBatch(battery_id=battery_id, records=records).model_dump_json(context=context)
        assert ('"pillar1":{"cell_id"' in body) == (context is not None)
        service.ingest_json(body, now=now)

    for model in (CellPillar1Row, CellPillar2Row, CellEstimateRow, PackRow):
        assert battery_rows(db, model, "B-A") == battery_rows(db, model, "B-B") != []
    with db.read() as session:
        twins = {t.battery_id: t for t in session.scalars(select(TwinRow))}
        a, b = twins["B-A"], twins["B-B"]
        assert a.reported == b.reported and a.reported["cells"]["7"]["seq"] == 30
        assert a.reported["cells"]["1"]["voltage_v"] == 3.3  # Pillar 2's, the newer source
        assert a.reported_metadata == b.reported_metadata
        assert a.estimator_state == b.estimator_state is not None


def test_a_group_of_batteries_is_stored_as_each_alone(db: Database) -> None:
    """``ingest_many`` of interleaved batches of batteries whose ids differ in length (the cell
    rows of a group are written in one block per id length) stores the rows and reported state
    that ingesting each battery's batches alone stores."""
    ids = ("G-1", "G-22", "G-3", "G-444")
    for battery_id in ids + tuple(f"{b}-alone" for b in ids):
        register(db, battery_id)
    service = IngestionService(db, _settings())
    now = T0 + timedelta(minutes=5)
    groups = [(b, seqs) for seqs in (range(1, 4), range(4, 6)) for b in ids]
    service.ingest_many([telemetry_batch(s, b, pillar2=True) for b, s in groups], now=now)
    for battery_id, seqs in groups:
        service.ingest(telemetry_batch(seqs, f"{battery_id}-alone", pillar2=True), now=now)

    with db.read() as session:
        twins = {t.battery_id: t.reported for t in session.scalars(select(TwinRow))}
    for battery_id in ids:
        for model in (CellPillar1Row, CellPillar2Row, CellEstimateRow):
            grouped = battery_rows(db, model, battery_id)
            assert grouped == battery_rows(db, model, f"{battery_id}-alone")
            assert {r[0] for r in grouped} == set(range(1, 6))  # seq, the first column left
        assert twins[battery_id] == twins[f"{battery_id}-alone"]


def test_deferred_telemetry_reaches_the_twins_that_still_exist(db: Database) -> None:
    """``ingest_checked(deferred=...)`` stores the rows and leaves the twins alone;
    ``update_twins`` writes them later, skipping a twin deleted meanwhile."""
    register(db, "D-1")
    register(db, "D-2")
    service = IngestionService(db, _settings())
    backlog: dict[str, list[TelemetryRecord]] = {}
    checked = [service.check(telemetry_batch([1, 2], b)) for b in ("D-1", "D-2")]
    service.ingest_checked(checked, now=T0, deferred=backlog)
    service.ingest_checked([service.check(telemetry_batch([3], "D-1"))], deferred=backlog)
    assert {b: [r.seq for r in rs] for b, rs in backlog.items()} == {
        "D-1": [1, 2, 3],
        "D-2": [1, 2],
    }
    assert stored_seqs(db, "D-1") == [1, 2, 3]
    with db.write() as session:
        assert "cells" not in session.get(TwinRow, "D-1").reported  # type: ignore[union-attr]
        session.execute(TwinRow.__table__.delete().where(TwinRow.battery_id == "D-2"))
    assert service.update_twins(backlog, now=T0) == 1
    with db.read() as session:
        assert session.get(TwinRow, "D-1").reported["seq"] == 3  # type: ignore[union-attr]


def test_telemetry_the_twins_missed_is_read_back_as_sent_and_merged_as_usual(db: Database) -> None:
    """Telemetry stored with deferred twin writes whose backlog is lost (a consumer killed):
    ``unmerged_telemetry`` reads back exactly the records newer than each twin shows, rebuilt
    as they were sent, and merging them leaves the twin and its mirror as if written at once.
    A battery whose stored rows no longer make a valid record is left out, not the others."""
    for battery_id in ("L-1", "R-1"):
        register(db, battery_id, cell_parameters=simple_cell())
    service = IngestionService(db, _settings(mirror_period_s=0.0))

    def records(seqs: range, battery_id: str) -> UplinkBatch:
        sent = [telemetry(s, pillar2=s % 2 == 0) for s in seqs]
        sent[-1]["packs"][0].update(state="fault", faults=["over_temp"])
        sent[-1]["pillar2"] = [
            {"cell_id": 3, "soc": 0.4, "soh": 0.9, "sos": 0.9, "equivalent_cycles": 7.0,
             "voltage_v": 3.3, "temperature_c": 31.0},
        ]  # fmt: skip
        return batch(sent, battery_id)

    service.ingest(records(range(1, 3), "L-1"))  # merged at once: the twin shows seq 2
    lost: dict[str, list[TelemetryRecord]] = {}
    later = [service.check(records(range(s, s + 2), "L-1")) for s in (3, 5)]
    service.ingest_checked(later, deferred=lost)  # stored; the backlog dies with its consumer
    assert stored_seqs(db, "L-1") == [1, 2, 3, 4, 5, 6]

    register(db, "H-1")  # a twin showing a seq past 2**31 (a 64-bit seq)
    service.ingest(batch([telemetry(2**40, ts=T0)], "H-1"))
    register(db, "X-1")  # rows changed by hand into ones no record may hold: left out, logged
    service.ingest_checked([service.check(telemetry_batch([1, 2], "X-1"))], deferred={})
    with db.write() as session:
        session.execute(text("UPDATE cell_pillar1 SET voltage_v = 50 WHERE battery_id = 'X-1'"))
    read_back = list(service.unmerged_telemetry())
    assert read_back == [lost]  # seqs 3-6 only, each as it was sent (cells, packs, faults)
    assert list(read_back[0]["L-1"][-1].pillar2.cell_ids) == [3]
    assert service.update_twins(read_back[0]) == 1
    assert list(service.unmerged_telemetry()) == []  # caught up

    for seqs in (range(1, 3), range(3, 5), range(5, 7)):
        service.ingest(records(seqs, "R-1"))
    with db.read() as session:
        caught_up, reference = (session.get(TwinRow, b) for b in ("L-1", "R-1"))
        assert caught_up is not None and reference is not None
        assert caught_up.reported == reference.reported
        assert caught_up.estimator_state == reference.estimator_state is not None


def test_a_retried_batch_is_stored_once(db: Database, ingestion: IngestionService) -> None:
    first = ingestion.ingest(telemetry_batch([1, 2, 3]))
    again = ingestion.ingest(telemetry_batch([1, 2, 3]))
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (again.accepted, again.duplicates, again.cell_rows) == (0, 3, 0)
    overlap = ingestion.ingest(telemetry_batch([3, 4, 5]))
    assert (overlap.accepted, overlap.duplicates) == (2, 1)
    assert stored_seqs(db) == [1, 2, 3, 4, 5]
    assert count(db, CellPillar1Row) == 5 * 8
    assert count(db, CellEstimateRow) == 5 * 8


def _run_concurrently(work: Callable[[], Any], n: int = 2) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_the_same_batch_from_two_threads_is_stored_once(db: Database) -> None:
    the_batch = telemetry_batch(range(1, 41))
    services = [IngestionService(db, _settings()) for _ in range(2)]
    queue = list(services)
    results = _run_concurrently(lambda: queue.pop().ingest(the_batch))
    assert all(not isinstance(r, Exception) for r in results), results
    assert sorted(r.accepted for r in results) == [0, 40]
    assert sorted(r.duplicates for r in results) == [0, 40]
    assert stored_seqs(db) == list(range(1, 41))
    assert count(db, CellPillar1Row) == 40 * 8
    assert count(db, PackRow) == 40


def test_overlapping_batches_from_two_threads_store_each_seq_once(db: Database) -> None:
    batches = [telemetry_batch(range(1, 31)), telemetry_batch(range(21, 51))]
    service = IngestionService(db, _settings())
    results = _run_concurrently(lambda: service.ingest(batches.pop()))
    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(r.accepted for r in results) == 50
    assert sum(r.duplicates for r in results) == 10
    assert stored_seqs(db) == list(range(1, 51))
    assert count(db, CellPillar1Row) == 50 * 8
    reported: dict[str, Any] = TwinService(db).get("B-1").reported
    assert reported["seq"] == 50
    assert {c["seq"] for c in reported["cells"].values()} == {50}


def test_partitions_are_created_by_ingestion(db: Database, ingestion: IngestionService) -> None:
    days = [T0, T0 + timedelta(days=1), T0 + timedelta(days=40)]
    ingestion.ingest(batch([telemetry(i + 1, ts=ts) for i, ts in enumerate(days)]))
    assert count(db, CellPillar1Row) == 24
    if not db.is_postgresql:
        return
    with db.engine.connect() as conn:
        names = list_partitions(conn, "cell_pillar1")
        per_partition = {
            name: conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar() for name in names
        }
    assert per_partition == {
        "cell_pillar1_p20250301": 8,
        "cell_pillar1_p20250302": 8,
        "cell_pillar1_p20250410": 8,
    }


def test_a_dropped_partition_is_created_again(db: Database, ingestion: IngestionService) -> None:
    ingestion.ingest(telemetry_batch([1]))
    if db.is_postgresql:
        with db.engine.begin() as conn:
            for table in ("cell_pillar1", "cell_pillar2", "cell_estimates"):
                conn.execute(text(f'DROP TABLE "{table}_p20250301"'))
    assert ingestion.ingest(telemetry_batch([2])).accepted == 1
    assert count(db, CellPillar1Row) == (8 if db.is_postgresql else 16)


def test_reported_state_holds_the_newest_values(db: Database, ingestion: IngestionService) -> None:
    ingestion.ingest(telemetry_batch([1, 2, 3]))
    ingestion.ingest(batch([telemetry(4, cells=[0, 1], voltage_v=3.9)]))
    twin = TwinService(db).get("B-1")
    reported: dict[str, Any] = twin.reported
    assert reported["seq"] == 4
    assert reported["cells"]["0"]["voltage_v"] == 3.9
    assert reported["cells"]["0"]["seq"] == 4
    assert reported["cells"]["7"]["seq"] == 3
    assert reported["cells"]["7"]["voltage_v"] == pytest.approx(3.2 + 0.07 + 0.003)
    assert reported["packs"]["0"]["voltage_v"] == 26.0
    assert reported["estimates"]["3"]["soc"] == 0.5
    aggregates = reported["aggregates"]
    assert aggregates["cell_count"] == 8
    assert aggregates["voltage_max_v"] == 3.9
    assert aggregates["voltage_min_v"] == pytest.approx(3.2 + 0.02 + 0.003)
    assert aggregates["soc_mean"] == 0.5
    assert "cells.0.voltage_v" in twin.metadata.reported
    assert twin.version == 0  # reported changes do not bump the version


def test_an_older_batch_does_not_overwrite_newer_values(
    db: Database, ingestion: IngestionService
) -> None:
    ingestion.ingest(batch([telemetry(10, voltage_v=3.5)]))
    ingestion.ingest(batch([telemetry(5, voltage_v=3.1)]))  # late arrival
    reported: dict[str, Any] = TwinService(db).get("B-1").reported
    assert reported["seq"] == 10
    assert reported["cells"]["0"]["voltage_v"] == 3.5
    assert stored_seqs(db) == [5, 10]


def test_eis_events_and_acks(db: Database, ingestion: IngestionService) -> None:
    commands = CommandService(db)
    command = commands.create("B-1", ReportingPeriod(period_s=5.0), ttl_s=3600, now=T0)
    command_id = str(command.command_id)
    eis_rows = [
        {
            "event_id": "eis-1",
            "cell_id": 2,
            "frequency_hz": f,
            "amplitude_ohm": 0.01 + f / 1e5,
            "phase_deg": -10.0,
            "v_start_v": 3.6,
            "v_end_v": 3.6,
            "temperature_c": 25.0,
        }
        for f in (1000.0, 100.0, 10.0)
    ]
    records = [
        {"kind": "eis", "seq": 1, "timestamp": T0.isoformat(), "rows": eis_rows},
        {
            "kind": "event",
            "seq": 2,
            "timestamp": T0.isoformat(),
            "event_type": "bms.alarm",
            "severity": "alarm",
            "message": "over-temperature",
            "cell_id": 3,
            "data": {"t": 61},
        },
        {
            "kind": "ack",
            "seq": 3,
            "timestamp": T0.isoformat(),
            "ack": {"command_id": command_id, "status": "succeeded", "timestamp": T0.isoformat()},
        },
        {
            "kind": "ack",
            "seq": 4,
            "timestamp": T0.isoformat(),
            "ack": {
                "command_id": command_id,
                "status": "failed",
                "reason": "late duplicate",
                "timestamp": T0.isoformat(),
            },
        },
        {
            "kind": "event",
            "seq": 5,
            "timestamp": T0.isoformat(),
            "event_type": "twin.reported",
            "data": {"eis_schedule": None, "firmware": "1.2.3", "cells": "ignored"},
        },
    ]
    result = ingestion.ingest(batch(records), "B-1", now=T0 + timedelta(seconds=1))
    assert result.accepted_by_kind == {"eis": 1, "event": 2, "ack": 2}
    assert result.acks_applied == 1
    assert count(db, EisRow) == 3
    assert count(db, EventRow) == 2
    assert count(db, CommandAckRow) == 2
    view = commands.get("B-1", command.command_id, now=T0 + timedelta(seconds=2))
    assert view.status is CommandStatus.SUCCEEDED
    with db.read() as session:
        acks = session.scalars(select(CommandAckRow).order_by(CommandAckRow.seq)).all()
    assert [(a.applied, a.note) for a in acks] == [
        (True, None),
        (False, "command is already succeeded"),
    ]
    reported: dict[str, Any] = TwinService(db).get("B-1").reported
    assert reported["reporting_period_s"] == 5.0  # the succeeded command's effect
    assert reported["firmware"] == "1.2.3"
    assert "cells" not in reported  # telemetry keys cannot be set by an event
    again = ingestion.ingest(batch(records), "B-1")
    assert again.duplicates == 5 and count(db, EisRow) == 3


def test_nothing_committed_is_lost_across_a_postgresql_kill(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = make_postgres_server()  # fsync on: a crash keeps what was committed
    url = server.create_database("crash")
    upgrade(url)
    db = Database.from_url(url)
    try:
        register(db)
        service = IngestionService(db, _settings())
        assert service.ingest(telemetry_batch(range(1, 21))).accepted == 20
        server.kill()
        with pytest.raises(Exception):  # noqa: B017 - the database is gone: any driver error
            service.ingest(telemetry_batch(range(21, 41)))
        server.restart()
        result = service.ingest(telemetry_batch(range(11, 41)))  # the client retries
        assert (result.accepted, result.duplicates) == (20, 10)
        assert stored_seqs(db) == list(range(1, 41))
        assert count(db, CellPillar1Row) == 40 * 8
        assert TwinService(db).get("B-1").reported["seq"] == 40
    finally:
        db.dispose()
