"""Twins (If-Match, concurrent patches, delta) and the command lifecycle, on SQLite and a real
PostgreSQL."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cloud_db_support import BACKENDS, T0, batch, migrated_database, register

from cloud.db.engine import Database
from cloud.errors import InvalidTransitionError, NotFoundError
from cloud.services.batteries import BatteryService
from cloud.services.commands import CommandService
from cloud.services.ingestion import IngestionService
from cloud.services.twins import TwinService
from cloud.settings import CloudSettings
from twin.commands import (
    CommandAck,
    CommandStatus,
    EcmParameters,
    EisCommand,
    RcPair,
    ReportingPeriod,
)
from twin.errors import TwinValidationError, VersionConflictError

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        register(database)
        yield database


# -- twins ------------------------------------------------------------------------------------


def test_a_new_twin_is_empty(db: Database) -> None:
    twin = TwinService(db).get("B-1")
    assert (twin.version, twin.reported, twin.desired, twin.delta) == (0, {}, {}, {})
    with pytest.raises(NotFoundError):
        TwinService(db).get("nope")


def test_patch_desired_with_if_match(db: Database) -> None:
    twins = TwinService(db)
    first = twins.patch_desired("B-1", {"reporting_period_s": 5.0}, if_match=0, now=T0)
    assert first.version == 1
    assert first.delta == {"reporting_period_s": 5.0}
    assert first.metadata.desired == {"reporting_period_s": T0}
    with pytest.raises(VersionConflictError) as caught:
        twins.patch_desired("B-1", {"reporting_period_s": 9.0}, if_match=0)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    second = twins.patch_desired("B-1", {"reporting_period_s": None}, if_match=1)
    assert second.version == 2 and second.desired == {}
    stored = twins.get("B-1")
    assert stored.version == 2 and stored.desired == {} and stored.metadata.desired == {}
    with pytest.raises(TwinValidationError):
        twins.patch_desired("B-1", {"reporting_period_s": -1})
    with pytest.raises(TwinValidationError):
        twins.patch_desired("B-1", {"no_such_key": 1})
    assert twins.version("B-1") == 2


def _race(twins: TwinService, version: int, periods: tuple[float, float]) -> list[Any]:
    """Two threads patch at once, both based on ``version``; their outcomes."""
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def patch(period: float) -> None:
        barrier.wait()
        try:
            outcomes.append(
                twins.patch_desired("B-1", {"reporting_period_s": period}, if_match=version)
            )
        except Exception as exc:  # collected and checked by the caller
            outcomes.append(exc)

    threads = [threading.Thread(target=patch, args=(p,)) for p in periods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_two_concurrent_patches_on_one_version_cannot_both_win(db: Database) -> None:
    twins = TwinService(db)
    for round_ in range(5):
        version = twins.version("B-1")
        outcomes = _race(twins, version, (round_ + 1.0, round_ + 10.0))
        winners = [o for o in outcomes if not isinstance(o, Exception)]
        losers = [o for o in outcomes if isinstance(o, Exception)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert isinstance(losers[0], VersionConflictError)
        stored = twins.get("B-1")
        assert stored.version == version + 1
        assert stored.desired == winners[0].desired


def test_desired_changes_become_commands_for_the_edge(db: Database) -> None:
    twins, commands = TwinService(db), CommandService(db)
    twins.patch_desired("B-1", {"reporting_period_s": 5.0}, if_match=0, now=T0)
    first = commands.pending("B-1", now=T0)
    assert [c.payload for c in first] == [ReportingPeriod(period_s=5.0)]
    # a newer period supersedes the unacknowledged one; the edge only gets the last
    ecm = EcmParameters(version=2, r0_ohm=0.02, rc_pairs=[RcPair(r_ohm=0.01, c_f=1000.0)])
    twins.patch_desired(
        "B-1",
        {"reporting_period_s": 2.0, "ecm_parameters": ecm.model_dump(mode="json")},
        if_match=1,
        now=T0 + timedelta(seconds=1),
    )
    pending = commands.pending("B-1", now=T0 + timedelta(seconds=2))
    assert sorted((c.payload for c in pending), key=lambda p: p.type) == [
        ecm,
        ReportingPeriod(period_s=2.0),
    ]
    assert commands.get("B-1", first[0].command_id).status is CommandStatus.CANCELLED
    # an unchanged value or a removed key asks the edge for nothing
    twins.patch_desired("B-1", {"reporting_period_s": 2.0, "ecm_parameters": None}, if_match=2)
    assert len(commands.pending("B-1", now=T0 + timedelta(seconds=3))) == 2


def test_unconditional_patches_all_apply(db: Database) -> None:
    twins = TwinService(db)
    threads = [
        threading.Thread(
            target=twins.patch_desired, args=("B-1", {"reporting_period_s": float(i + 1)})
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert twins.version("B-1") == 4


def test_delta_clears_when_the_edge_acknowledges(db: Database) -> None:
    twins, commands = TwinService(db), CommandService(db)
    ecm = EcmParameters(version=3, r0_ohm=0.02, rc_pairs=[RcPair(r_ohm=0.01, c_f=1000.0)])
    twins.patch_desired(
        "B-1",
        {"reporting_period_s": 2.0, "ecm_parameters": ecm.model_dump(mode="json")},
        now=T0,
    )
    pending = twins.get("B-1")
    assert set(pending.delta) == {"reporting_period_s", "ecm_parameters"}
    _, body = twins.get_json("B-1")  # the read path's JSON, spliced without the model
    assert json.loads(body) == json.loads(pending.model_dump_json())
    ingestion = IngestionService(db, CloudSettings(_env_file=None))  # type: ignore[call-arg]
    acks = []
    for seq, payload in enumerate((ReportingPeriod(period_s=2.0), ecm), start=1):
        command = commands.create("B-1", payload, now=T0)
        acks.append(
            {
                "kind": "ack",
                "seq": seq,
                "timestamp": T0.isoformat(),
                "ack": {
                    "command_id": str(command.command_id),
                    "status": "succeeded",
                    "timestamp": T0.isoformat(),
                },
            }
        )
    ingestion.ingest(batch(acks), now=T0 + timedelta(seconds=1))
    twin = twins.get("B-1")
    assert twin.delta == {}
    assert twin.version == 1
    # the read path's JSON, built without the model, is the model's JSON
    version, body = twins.get_json("B-1")
    assert version == 1 and twin.metadata.reported
    assert json.loads(body) == json.loads(twin.model_dump_json())


# -- commands ---------------------------------------------------------------------------------


def _eis() -> EisCommand:
    return EisCommand(cell_ids=[0, 1], f_start_hz=1000.0, f_stop_hz=0.1, amplitude_a=1.0)


def test_command_lifecycle_queued_delivered_succeeded(db: Database) -> None:
    commands = CommandService(db)
    view = commands.create("B-1", _eis(), ttl_s=600, created_by="op", now=T0)
    assert view.status is CommandStatus.QUEUED
    assert view.command.expires_at == T0 + timedelta(seconds=600)
    assert [c.command_id for c in commands.pending("B-1", now=T0)] == [view.command_id]
    delivered = commands.mark_delivered("B-1", [view.command_id], now=T0 + timedelta(seconds=1))
    assert delivered[0].status is CommandStatus.DELIVERED
    again = commands.mark_delivered("B-1", [view.command_id], now=T0 + timedelta(seconds=2))
    assert again[0].delivery_count == 2
    assert again[0].delivered_at == T0 + timedelta(seconds=1)
    ack = CommandAck(
        command_id=view.command_id,
        status=CommandStatus.SUCCEEDED,
        timestamp=T0 + timedelta(seconds=3),
        result={"spectra": 2},
    )
    done = commands.acknowledge("B-1", ack, now=T0 + timedelta(seconds=3))
    assert done.status is CommandStatus.SUCCEEDED
    assert done.result == {"spectra": 2}
    assert done.completed_at == T0 + timedelta(seconds=3)
    assert commands.pending("B-1", now=T0 + timedelta(seconds=4)) == []
    history = commands.history("B-1", view.command_id)
    assert [(h.old_status, h.new_status) for h in history] == [
        (None, CommandStatus.QUEUED),
        (CommandStatus.QUEUED, CommandStatus.DELIVERED),
        (CommandStatus.DELIVERED, CommandStatus.DELIVERED),
        (CommandStatus.DELIVERED, CommandStatus.SUCCEEDED),
    ]
    assert [h.at for h in history] == [T0 + timedelta(seconds=s) for s in range(4)]
    with pytest.raises(InvalidTransitionError):
        commands.cancel("B-1", view.command_id, now=T0 + timedelta(seconds=5))
    with pytest.raises(InvalidTransitionError):
        commands.acknowledge("B-1", ack, now=T0 + timedelta(seconds=5))


def test_failed_ack_and_cancel(db: Database) -> None:
    commands = CommandService(db)
    failing = commands.create("B-1", _eis(), now=T0)
    ack = CommandAck(
        command_id=failing.command_id,
        status=CommandStatus.FAILED,
        reason="cell 1 busy",
        timestamp=T0,
    )
    failed = commands.acknowledge("B-1", ack, now=T0)  # an ack may overtake the delivery
    assert (failed.status, failed.reason) == (CommandStatus.FAILED, "cell 1 busy")
    other = commands.create("B-1", _eis(), now=T0)
    cancelled = commands.cancel("B-1", other.command_id, by="op", now=T0 + timedelta(seconds=1))
    assert cancelled.status is CommandStatus.CANCELLED
    assert commands.pending("B-1", now=T0 + timedelta(seconds=2)) == []
    assert {v.status for v in commands.list_commands("B-1", now=T0)} == {
        CommandStatus.FAILED,
        CommandStatus.CANCELLED,
    }
    with pytest.raises(NotFoundError):
        commands.cancel("B-1", uuid.uuid4())
    register(db, "B-2")
    with pytest.raises(NotFoundError):  # another battery's command is not found
        commands.get("B-2", other.command_id)


def test_commands_expire_lazily_and_by_sweep(db: Database) -> None:
    commands = CommandService(db)
    short = commands.create("B-1", _eis(), ttl_s=10, now=T0)
    long = commands.create("B-1", _eis(), ttl_s=1000, now=T0)
    swept = commands.create("B-1", _eis(), ttl_s=20, now=T0)
    later = T0 + timedelta(seconds=30)
    assert commands.get("B-1", short.command_id, now=later).status is CommandStatus.EXPIRED
    assert commands.expire_overdue(now=later) == 1  # `swept`; `short` already expired
    assert commands.get("B-1", swept.command_id, now=later).status is CommandStatus.EXPIRED
    assert [c.command_id for c in commands.pending("B-1", now=later)] == [long.command_id]
    with pytest.raises(InvalidTransitionError, match="expired"):
        commands.cancel("B-1", long.command_id, now=T0 + timedelta(seconds=2000))
    history = commands.history("B-1", short.command_id)
    assert history[-1].new_status is CommandStatus.EXPIRED and history[-1].at == later
    with pytest.raises(TwinValidationError):
        commands.create("B-1", _eis(), ttl_s=0.0)
    with pytest.raises(TwinValidationError):
        commands.create("B-1", {"type": "eis_start", "cell_ids": []})


def test_a_late_ack_of_a_command_run_in_time_still_counts(db: Database) -> None:
    commands = CommandService(db)
    view = commands.create("B-1", _eis(), ttl_s=10, now=T0)
    ack = CommandAck(
        command_id=view.command_id,
        status=CommandStatus.SUCCEEDED,
        timestamp=T0 + timedelta(seconds=5),
    )
    # the edge ran it within the TTL but was offline: its ack arrives after expiry
    done = commands.acknowledge("B-1", ack, now=T0 + timedelta(seconds=60))
    assert done.status is CommandStatus.SUCCEEDED


def test_commands_survive_a_restart(db: Database) -> None:
    view = CommandService(db).create("B-1", _eis(), ttl_s=3600, now=T0)
    url = db.engine.url
    db.dispose()
    reopened = Database.from_url(url)
    try:
        pending = CommandService(reopened).pending("B-1", now=T0 + timedelta(seconds=60))
        assert [c.command_id for c in pending] == [view.command_id]
        assert BatteryService(reopened).get("B-1").topology.n_cells == 8
    finally:
        reopened.dispose()


def test_a_desired_patch_and_an_ack_of_its_command_do_not_deadlock(pg_database: Any) -> None:
    """On PostgreSQL, ingestion locks the command an ack names, then the twin; a desired patch
    takes the battery's open desired commands before the twin: the same order, so the patch
    waits instead of deadlocking."""
    from sqlalchemy import text

    from cloud.db.migrate import upgrade

    upgrade(pg_database.url)
    database = Database.from_url(pg_database.url)
    try:
        register(database)
        twins = TwinService(database)
        twins.patch_desired("B-1", {"reporting_period_s": 2.0}, now=T0)
        (queued,) = CommandService(database).pending("B-1", now=T0)
        locked, go = threading.Event(), threading.Event()
        errors: list[BaseException] = []
        patched: list[int] = []

        def acknowledge() -> None:  # the lock order of IngestionService
            try:
                with database.write() as session:
                    session.execute(
                        text("SELECT 1 FROM commands WHERE command_id = :c FOR UPDATE"),
                        {"c": queued.command_id},
                    )
                    locked.set()
                    go.wait(10)
                    session.execute(text("SELECT 1 FROM twins WHERE battery_id = 'B-1' FOR UPDATE"))
            except BaseException as exc:
                errors.append(exc)

        def patch() -> None:
            try:
                patched.append(twins.patch_desired("B-1", {"reporting_period_s": 3.0}).version)
            except BaseException as exc:
                errors.append(exc)

        acker = threading.Thread(target=acknowledge)
        acker.start()
        assert locked.wait(10)
        patcher = threading.Thread(target=patch)
        patcher.start()
        patcher.join(0.5)
        assert patcher.is_alive()  # waiting for the command, holding nothing of the twin
        go.set()
        acker.join(15)
        patcher.join(15)
        assert errors == [] and patched == [2]
    finally:
        database.dispose()
