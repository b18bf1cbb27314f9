"""The read cache of twin reads on a real PostgreSQL (``cloud.services.read_cache``): every read
still audited and committed first, changes seen at once in the writing process and within
moments in the others (NOTIFY, triggers on the access tables), nothing stale after the listener
loses its connection, and a read whose audit row cannot be written is not served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from cloud_db_support import telemetry_batch
from cloud_fixtures import CloudHarness, cloud_harness
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

from cloud.db.engine import Database, driver_connect_options
from cloud.db.security_models import AuditEntry
from cloud.services.audit import AuditWriter
from cloud.services.ingestion import IngestionService
from cloud.services.read_cache import ReadCache

pytestmark = pytest.mark.integration

TWIN = "/api/v1/batteries/{}/twin"
WAIT_S = 10.0
CELLS = range(4)  # the harness's batteries: 4 cells


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def harness(pg_database: Any) -> Iterator[CloudHarness]:
    with cloud_harness(pg_database.url) as h:
        h.add_user("olga", "operator")
        h.grant("olga", "B-1", "telemetry")
        h.grant("olga", "B-2", "telemetry")
        wait_until(lambda: cache_of(h).live, "the change listener listens")
        yield h


@pytest.fixture
def other_process(pg_database: Any) -> Iterator[Database]:
    """A database handle of its own: what another cloud process writes through."""
    db = Database.from_url(pg_database.url)
    yield db
    db.dispose()


def cache_of(h: CloudHarness) -> ReadCache:
    cache = h.state.read_cache
    assert isinstance(cache, ReadCache)
    return cache


def audit_rows(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


def reported_seq(h: CloudHarness, headers: dict[str, str], battery_id: str = "B-1") -> Any:
    response = h.client.get(TWIN.format(battery_id), headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["reported"].get("seq")


def test_cached_reads_are_each_audited_and_committed_before_they_are_served(
    harness: CloudHarness, other_process: Database
) -> None:
    headers = harness.headers("olga")
    cache = cache_of(harness)
    before = audit_rows(other_process)
    bodies = []
    for n in range(1, 6):
        response = harness.client.get(TWIN.format("B-1"), headers=headers)
        assert response.status_code == 200 and response.headers["ETag"] == '"0"'
        bodies.append(response.content)
        assert audit_rows(other_process) == before + n  # committed: another connection sees it
    assert len(set(bodies)) == 1
    assert cache.hits >= 8  # facts and twin of the last four reads
    writer = harness.state.audit_writer
    assert isinstance(writer, AuditWriter) and writer.rows >= 4
    metrics = harness.client.get("/metrics").text
    assert f'b2l_read_cache_lookups_total{{result="hit"}} {float(cache.hits)}' in metrics
    assert "b2l_read_cache_live 1.0" in metrics
    assert f"b2l_audit_group_rows_total {float(writer.rows)}" in metrics


def test_writes_of_this_process_are_seen_by_its_next_read(harness: CloudHarness) -> None:
    headers = harness.headers("olga")
    assert reported_seq(harness, headers) is None  # now cached
    ingestion = IngestionService(harness.db, harness.settings)
    assert ingestion.ingest(telemetry_batch([7], cells=CELLS)).accepted == 1
    assert reported_seq(harness, headers) == 7  # no wait: dropped at the commit

    harness.add_user("ada", "admin")
    patched = harness.client.patch(
        TWIN.format("B-1") + "/desired",
        json={"reporting_period_s": 5.0},
        headers=harness.headers("ada"),
    )
    assert patched.status_code == 200
    again = harness.client.get(TWIN.format("B-1"), headers=headers)
    assert again.headers["ETag"] == '"1"' and again.json()["desired"]["reporting_period_s"] == 5.0


def test_changes_made_by_another_process_reach_the_cache(
    harness: CloudHarness, other_process: Database
) -> None:
    headers = harness.headers("olga")
    assert reported_seq(harness, headers) is None
    assert reported_seq(harness, headers) is None  # served from the cache
    hits = cache_of(harness).hits
    IngestionService(other_process, harness.settings).ingest(telemetry_batch([9], cells=CELLS))
    wait_until(lambda: reported_seq(harness, headers) == 9, "the other process's ingestion")
    assert cache_of(harness).hits > hits

    # a grant withdrawn by SQL at a prompt: the trigger on grants tells every process
    with other_process.write() as session:
        session.execute(text("DELETE FROM grants"))
    wait_until(
        lambda: harness.client.get(TWIN.format("B-1"), headers=headers).status_code == 403,
        "the withdrawn grant",
    )


def test_access_withdrawn_by_this_process_ends_at_once(harness: CloudHarness) -> None:
    headers = harness.headers("olga")
    harness.add_user("ada", "admin")
    admin = harness.headers("ada")
    assert harness.client.get(TWIN.format("B-1"), headers=headers).status_code == 200
    assert harness.client.get(TWIN.format("B-1"), headers=headers).status_code == 200  # cached
    grants = harness.client.get("/api/v1/admin/grants", params={"user": "olga"}, headers=admin)
    assert grants.status_code == 200, grants.text
    grant_id = next(g["grant_id"] for g in grants.json() if g["battery_id"] == "B-1")
    deleted = harness.client.delete(f"/api/v1/admin/grants/{grant_id}", headers=admin)
    assert deleted.status_code == 204
    assert harness.client.get(TWIN.format("B-1"), headers=headers).status_code == 403
    assert harness.client.get(TWIN.format("B-2"), headers=headers).status_code == 200


def test_nothing_stale_is_served_after_the_listener_lost_its_connection(
    harness: CloudHarness, other_process: Database
) -> None:
    headers = harness.headers("olga")
    cache = cache_of(harness)
    for _ in range(2):
        assert reported_seq(harness, headers) is None  # cached
    listener_pid = _listener_pid(other_process)
    with other_process.write() as session:
        session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": listener_pid})
        # committed while nobody listens: this notification is lost
        IngestionService(other_process, harness.settings).ingest(telemetry_batch([11], cells=CELLS))
    wait_until(lambda: not cache.live or _listener_pid(other_process) != listener_pid, "loss")
    assert reported_seq(harness, headers) == 11  # read from the database, or a fresh cache
    wait_until(lambda: cache.live, "the listener listens again")
    assert reported_seq(harness, headers) == 11
    assert reported_seq(harness, headers) == 11


def _listener_pid(db: Database) -> int | None:
    with db.read() as session:
        pid = session.scalar(
            text(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN b2l_changes%' "
                "AND datname = current_database()"
            )
        )
    return None if pid is None else int(pid)


def test_a_read_whose_audit_row_cannot_be_written_is_not_served(
    harness: CloudHarness, other_process: Database
) -> None:
    harness.add_user("mallory", "operator")
    harness.grant("mallory", "B-1", "telemetry")
    with other_process.write() as session:  # the database now refuses mallory's audit rows
        session.execute(
            text(
                "ALTER TABLE audit_log ADD CONSTRAINT no_mallory "
                "CHECK (actor <> 'user:mallory') NOT VALID"
            )
        )
    olga, mallory = harness.headers("olga"), harness.headers("mallory")
    assert harness.client.get(TWIN.format("B-1"), headers=olga).status_code == 200  # twin cached
    cache = cache_of(harness)
    hits = cache.hits
    for _ in range(2):  # the first read caches mallory's facts; the second is a cache hit
        with pytest.raises((sa_exc.IntegrityError, psycopg.IntegrityError)):
            harness.client.get(TWIN.format("B-1"), headers=mallory)  # an error, not the twin
    assert cache.hits >= hits + 2  # facts and twin from the cache: the group commit refused it
    assert harness.client.get(TWIN.format("B-1"), headers=olga).status_code == 200


def test_the_audit_writer_fails_only_the_rows_the_database_refuses(
    harness: CloudHarness, other_process: Database
) -> None:
    with other_process.write() as session:
        session.execute(
            text("ALTER TABLE audit_log ADD CONSTRAINT no_bad CHECK (actor <> 'bad') NOT VALID")
        )
    before = audit_rows(other_process)
    good = [f"user:g{i}" for i in range(12)]
    mixed = ["bad" if i == 5 else f"user:u{i}" for i in range(12)]

    async def scenario() -> tuple[list[Any], int, list[Any], AuditWriter]:
        writer = AuditWriter(driver_connect_options(other_process.engine))

        async def concurrent_reads(actors: list[str]) -> list[Any]:
            return await asyncio.gather(
                *(writer.record(actor=a, action="read", battery_id="B-1") for a in actors),
                return_exceptions=True,
            )

        try:
            first = await concurrent_reads(good)
            batches = writer.batches
            return first, batches, await concurrent_reads(mixed), writer
        finally:
            await writer.close()

    first, batches_of_good, second, writer = asyncio.run(scenario())
    assert first == [None] * 12 and batches_of_good == 1  # waiting together: one statement
    outcomes = dict(zip(mixed, second, strict=True))
    assert isinstance(outcomes.pop("bad"), psycopg.IntegrityError)
    assert set(outcomes.values()) == {None}
    assert writer.rows == 12 + 11
    assert audit_rows(other_process) == before + 12 + 11
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(writer.record(actor="user:late", action="read"))


def test_the_audit_writer_reconnects_after_the_server_dropped_its_connection(
    harness: CloudHarness, other_process: Database
) -> None:
    headers = harness.headers("olga")
    for _ in range(2):  # the second read is a hit: the writer holds its connection
        assert harness.client.get(TWIN.format("B-1"), headers=headers).status_code == 200
    with other_process.write() as session:
        dropped = session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'INSERT INTO audit_log%' AND datname = current_database()"
            )
        ).all()
    assert dropped == [(True,)]
    time.sleep(0.2)  # the server's goodbye reaches the writer's socket
    rows = audit_rows(other_process)
    assert harness.client.get(TWIN.format("B-1"), headers=headers).status_code == 200
    assert audit_rows(other_process) == rows + 1


def test_the_change_triggers_migrate_down_and_up(pg_database: Any) -> None:
    from alembic import command

    from cloud.db.migrate import alembic_config, upgrade

    def triggers() -> set[str]:
        with pg_database.engine.connect() as connection:
            return set(
                connection.scalars(
                    text("SELECT tgname FROM pg_trigger WHERE tgname LIKE '%access_changed'")
                )
            )

    upgrade(pg_database.url)
    assert triggers() == {
        "grants_access_changed",
        "batteries_access_changed",
        "users_access_changed",
    }
    command.downgrade(alembic_config(pg_database.url), "0003_battery_owner")
    assert triggers() == set()
    upgrade(pg_database.url)
    assert len(triggers()) == 3
