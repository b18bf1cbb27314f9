"""The storage paths the benchmarks lean on, on SQLite and a real PostgreSQL: the access facts
of one query, an audit row committed from a read, twins locked and written together, the twin
JSON spliced from stored text."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cloud_db_support import BACKENDS, T0, migrated_database, register
from sqlalchemy import func, select, text

from cloud.db.changes import ChangeListener, Changes, note_changed
from cloud.db.engine import Database, driver_connect_options
from cloud.db.migrate import upgrade
from cloud.db.models import TwinRow
from cloud.db.security_models import AuditEntry
from cloud.errors import NotFoundError
from cloud.security.context import SecurityContext
from cloud.security.policy import Category
from cloud.services.accounts import access_facts, create_user, grant_access
from cloud.services.audit import audit_now
from cloud.services.twins import (
    TwinService,
    lock_reported,
    merge_reported,
    store_reported,
)
from cloud.settings import CloudSettings

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        for battery_id in ("B-1", "B-2", "B-3"):
            register(database, battery_id)
        yield database


def _user(db: Database, name: str) -> None:
    settings = CloudSettings(  # type: ignore[call-arg]
        _env_file=None, argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1
    )
    create_user(db, SecurityContext.from_settings(settings), name, "operator", "pw-123456789", T0)


def _grant(db: Database, user: str, battery_id: str | None, *categories: str) -> None:
    grant_access(
        db,
        user_name=user,
        battery_id=battery_id,
        categories=categories,
        valid_from=T0,
        valid_until=T0 + timedelta(days=1),
        granted_by="test",
        now=T0,
    )


# -- access facts -----------------------------------------------------------------------------


def test_access_facts_bring_parties_and_the_covering_grants_in_one_query(db: Database) -> None:
    _user(db, "olga")
    _user(db, "otto")
    _grant(db, "olga", "B-1", "telemetry")
    _grant(db, "olga", None, "eis")  # every battery
    _grant(db, "olga", "B-2", "analytics")  # another battery: not covering B-1
    _grant(db, "otto", "B-1", "commands")  # another user
    with db.read() as session:
        facts = access_facts(session, "B-1", "olga")
        alone = access_facts(session, "B-3", "otto")
        unasked = access_facts(session, "B-1", None)
    assert facts.manufacturer == "acme" and facts.owner is None
    assert sorted((g.battery_id or "*", sorted(g.categories)) for g in facts.grants) == [
        ("*", [Category.EIS]),
        ("B-1", [Category.TELEMETRY]),
    ]
    assert alone.manufacturer == "acme" and alone.grants == ()  # outer join: no grant rows
    assert unasked.grants == () and unasked.manufacturer == "acme"


def test_access_facts_of_an_unknown_battery_is_not_found(db: Database) -> None:
    _user(db, "olga")
    with db.read() as session, pytest.raises(NotFoundError, match="B-9"):
        access_facts(session, "B-9", "olga")
    with db.read() as session, pytest.raises(NotFoundError, match="B-9"):
        access_facts(session, "B-9", None)


# -- audit from a read ------------------------------------------------------------------------


def _audit_rows(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


def test_audit_now_is_committed_before_the_read_session_ends(db: Database) -> None:
    with db.read() as session:
        audit_now(
            db,
            session,
            actor="user:olga",
            action="read",
            outcome="allowed",
            battery_id="B-1",
            category="telemetry",
            detail={"path": "/x"},
            at=T0,
        )
        # another connection sees it while this session is still open: it is committed
        assert _audit_rows(db) == 1
        session.rollback()  # nothing to undo: the row stays
    assert _audit_rows(db) == 1


# -- twins locked and written together ---------------------------------------------------------


def test_lock_and_store_several_twins_at_once(db: Database) -> None:
    with db.write() as session:
        sides = lock_reported(session, ["B-2", "B-1"])
        assert set(sides) == {"B-1", "B-2"}
        merge_reported(sides["B-1"], {"seq": 3, "cells": {"0": {"voltage_v": 3.7}}}, T0)
        merge_reported(sides["B-2"], {"seq": 9}, T0 + timedelta(seconds=1))
        sides["B-2"].estimator_state = {"x": 1}
        store_reported(session, sides, T0 + timedelta(seconds=2))
    twins = TwinService(db)
    first, second = twins.get("B-1"), twins.get("B-2")
    assert first.reported == {"seq": 3, "cells": {"0": {"voltage_v": 3.7}}}
    assert first.metadata.reported == {"seq": T0, "cells.0.voltage_v": T0}
    assert second.reported == {"seq": 9}
    assert second.metadata.reported == {"seq": T0 + timedelta(seconds=1)}
    assert twins.get("B-3").reported == {}  # untouched
    with db.read() as session:
        assert session.get(TwinRow, "B-2").estimator_state == {"x": 1}  # type: ignore[union-attr]
    # a later merge keeps the stamps of the leaves it does not change
    with db.write() as session:
        sides = lock_reported(session, ["B-1"])
        merge_reported(
            sides["B-1"], {"seq": 4, "cells": {"0": {"voltage_v": 3.7}}}, T0 + timedelta(seconds=5)
        )
        store_reported(session, sides, T0)
    stamps = twins.get("B-1").metadata.reported
    assert stamps == {"seq": T0 + timedelta(seconds=5), "cells.0.voltage_v": T0}


def test_lock_reported_names_a_missing_twin(db: Database) -> None:
    with db.write() as session, pytest.raises(NotFoundError, match="B-7"):
        lock_reported(session, ["B-1", "B-7"])


def test_locked_twins_make_concurrent_writers_wait(pg_database: Any) -> None:
    """On PostgreSQL two transactions locking the same twin: the second waits for the first's
    commit and then merges into what it wrote (no lost update)."""
    upgrade(pg_database.url)
    database = Database.from_url(pg_database.url)
    try:
        register(database, "B-1")
        first_locked, release = threading.Event(), threading.Event()

        def first() -> None:
            with database.write() as session:
                sides = lock_reported(session, ["B-1"])
                first_locked.set()
                release.wait(10)
                merge_reported(sides["B-1"], {"seq": 1}, T0)
                store_reported(session, sides, T0)

        seen: list[dict[str, Any]] = []

        def second() -> None:
            with database.write() as session:
                sides = lock_reported(session, ["B-1"])
                seen.append(dict(sides["B-1"].reported))  # what it read
                merge_reported(sides["B-1"], {"cells": {"1": {"soc": 0.5}}}, T0)
                store_reported(session, sides, T0)

        holder = threading.Thread(target=first)
        holder.start()
        assert first_locked.wait(10)
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # blocked on the row lock
        release.set()
        holder.join(10)
        waiter.join(10)
        assert seen == [{"seq": 1}]
        assert TwinService(database).get("B-1").reported == {
            "seq": 1,
            "cells": {"1": {"soc": 0.5}},
        }
    finally:
        database.dispose()


# -- the twin JSON --------------------------------------------------------------------------


def test_twin_json_is_the_model_json_even_with_odd_keys(db: Database) -> None:
    """The read path splices stored JSON texts; stamps become ``Z`` even when a reported key
    itself ends like a stamp (the regex path)."""
    twins = TwinService(db)
    twins.patch_desired("B-1", {"reporting_period_s": 5.0}, now=T0)
    with db.write() as session:
        sides = lock_reported(session, ["B-1"])
        merge_reported(
            sides["B-1"],
            {"reporting_period_s": 1.0, "2025-01-01T00:00:00+00:00": "odd", "note": "a+00:00"},
            T0,
        )
        store_reported(session, sides, T0)
    version, body = twins.get_json("B-1")
    model = twins.get("B-1")
    assert version == model.version == 1
    assert json.loads(body) == json.loads(model.model_dump_json())
    assert json.loads(body)["delta"] == {"reporting_period_s": 5.0}
    assert json.loads(body)["reported"]["note"] == "a+00:00"  # values are never rewritten


def test_audit_now_from_a_read_on_a_single_sqlite_connection() -> None:
    """In-memory SQLite serves every session from one connection: the read session's
    transaction ends before the audit's write transaction begins, and the read goes on."""
    from cloud.db.base import Base

    database = Database.from_url("sqlite://")
    try:
        Base.metadata.create_all(database.engine)
        with database.read() as session:
            assert _audit_count(session) == 0  # a read transaction is open on the connection
            audit_now(database, session, actor="user:olga", action="read", at=T0)
            assert _audit_count(session) == 1
    finally:
        database.dispose()


def _audit_count(session: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


# -- change notes -----------------------------------------------------------------------------


def test_committed_changes_reach_the_commit_listeners_and_rolled_back_ones_do_not(
    db: Database,
) -> None:
    heard: list[Changes] = []
    db.add_commit_listener(heard.append)
    try:
        with pytest.raises(RuntimeError), db.write() as session:
            note_changed(session, twins=["B-1"])
            raise RuntimeError("rolled back")
        assert heard == []
        with db.write() as session:
            note_changed(session, twins=["B-2", "B-1"])
            note_changed(session, access=True)
        with db.write() as session:
            pass  # noted nothing: nothing heard
    finally:
        db.remove_commit_listener(heard.append)
    assert heard == [Changes(twins=frozenset({"B-1", "B-2"}), access=True)]


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_postgresql_tells_listeners_of_committed_changes_only(db: Database) -> None:
    heard: list[Changes] = []
    live = threading.Event()
    listener = ChangeListener(
        driver_connect_options(db.engine), heard.append, lambda up: live.set() if up else None
    )
    listener.start()
    try:
        assert live.wait(10)
        with pytest.raises(RuntimeError), db.write() as session:
            note_changed(session, twins=["B-3"])
            raise RuntimeError("rolled back: no notification")
        with db.write() as session:
            note_changed(session, twins=["B-1", "B-2"])
        _grant_by_sql(db)  # the trigger on grants
        deadline = time.monotonic() + 10
        while len(heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.stop()
    assert heard == [Changes(twins=frozenset({"B-1", "B-2"})), Changes(access=True)]


def _grant_by_sql(db: Database) -> None:
    _user(db, "gus")
    with db.write() as session:
        session.execute(text("UPDATE grants SET categories = categories"))  # no rows: still told
