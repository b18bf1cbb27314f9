"""The cloud schema on SQLite and a real PostgreSQL: migrations, engine settings, partitions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cloud_db_support import BACKENDS, database_url, migrated_database, register, telemetry_batch
from sqlalchemy import inspect, text

from cloud.db import models
from cloud.db.base import Base
from cloud.db.engine import Database, make_engine
from cloud.db.metadata import load_metadata
from cloud.db.migrate import (
    alembic_config,
    current_revisions,
    head_revisions,
    is_up_to_date,
    upgrade,
)
from cloud.db.partitions import (
    PartitionManager,
    is_partition_name,
    list_partitions,
    partition_bounds,
    partition_name,
)
from cloud.services.ingestion import IngestionService

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        yield database


def _own_revision_only() -> bool:
    """True while no revision but ours exists (a sibling's models may precede their revision)."""
    return head_revisions() == {"0001_core"}


def _table_of(diff: Any) -> str:
    """The table a compare_metadata entry is about."""
    entry = diff[0] if isinstance(diff, list) else diff
    kind, subject = entry[0], entry[1]
    if kind in ("add_table", "remove_table"):
        return str(subject.name)
    if kind.endswith(("_index", "_constraint", "_fk")):
        return str(subject.table.name)
    return str(entry[2])  # add_column / modify_*: (kind, schema, table, ...)


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrating_an_empty_database_gives_exactly_the_models(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = database_url(backend, request, tmp_path)
    upgrade(url)
    upgrade(url)  # idempotent
    metadata = load_metadata()
    engine = make_engine(url)
    try:
        assert is_up_to_date(engine)
        assert current_revisions(engine) == head_revisions()
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(context, metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    if _own_revision_only():  # the security models' revision is not written yet
        diffs = [d for d in diffs if _table_of(d) in _core_tables()]
    assert diffs == []
    assert _core_tables() <= tables


def _core_tables() -> set[str]:
    return {
        str(getattr(mapper.local_table, "name", ""))
        for mapper in Base.registry.mappers
        if mapper.class_.__module__ == models.__name__
    }


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "b2l.db"
    db = Database.from_url(f"sqlite:///{path}")
    try:
        with db.read() as session:
            assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert path.parent.is_dir()
    finally:
        db.dispose()


def test_postgresql_url_gets_the_psycopg_driver(pg_database: Any) -> None:
    plain = pg_database.url.replace("postgresql+psycopg://", "postgresql://")
    engine = make_engine(plain)
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_partition_bounds_and_names() -> None:
    ts = datetime(2024, 12, 31, 23, 59, tzinfo=UTC)
    assert partition_bounds(ts, "month") == (
        datetime(2024, 12, 1, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert partition_bounds(ts, "day") == (
        datetime(2024, 12, 31, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    )
    start = datetime(2024, 12, 1, tzinfo=UTC)
    assert partition_name("cell_pillar1", start, "month") == "cell_pillar1_p202412"
    assert partition_name("cell_pillar1", start, "day") == "cell_pillar1_p20241201"
    assert is_partition_name("cell_estimates_p20241201")
    assert not is_partition_name("cell_pillar1")
    assert not is_partition_name("users_p202401")


def test_partitions_are_created_on_demand_once(db: Database) -> None:
    manager = PartitionManager(db.engine, "day")
    times = [datetime(2025, 1, 1, 10, tzinfo=UTC), datetime(2025, 1, 2, 0, tzinfo=UTC)]
    created = manager.ensure(times)
    if not db.is_postgresql:
        assert created == []
        return
    assert sorted(created) == sorted(
        f"{table}_p2025010{day}" for table in models.TELEMETRY_CELL_TABLES for day in (1, 2)
    )
    assert manager.ensure(times) == []  # remembered
    assert manager.ensure([datetime(2025, 1, 1, 23, 59, tzinfo=UTC)]) == []  # inside a known one
    later = [datetime(2025, 1, 1, 23, tzinfo=UTC), datetime(2025, 1, 4, 1, tzinfo=UTC)]
    assert sorted(manager.ensure(later)) == sorted(  # only the one missing, not the days between
        f"{table}_p20250104" for table in models.TELEMETRY_CELL_TABLES
    )
    other = PartitionManager(db.engine, "day")  # another process: finds them, creates none
    assert other.ensure(times) == []
    with db.engine.connect() as conn:
        assert list_partitions(conn, "cell_pillar1") == [
            "cell_pillar1_p20250101",
            "cell_pillar1_p20250102",
            "cell_pillar1_p20250104",
        ]
        kind = conn.execute(
            text("SELECT relkind FROM pg_class WHERE relname = 'cell_pillar1'")
        ).scalar()
        assert kind == "p"  # declaratively partitioned


def test_twin_documents_are_json_text_with_lz4_and_survive_the_migration(pg_database: Any) -> None:
    """0005 stores twins as ``json`` (lz4 where the server has it); down and up again, every
    document reads back as it was."""
    url = pg_database.url
    upgrade(url)
    db = Database.from_url(url)
    columns = ("desired", "desired_metadata", "reported", "reported_metadata", "estimator_state")

    def documents() -> list[Any]:
        with db.read() as session:
            row = session.execute(text(f"SELECT {', '.join(columns)} FROM twins")).one()
        return list(row)

    def types() -> dict[str, tuple[str, str]]:
        with db.read() as session:
            rows = session.execute(
                text(
                    "SELECT attname, format_type(atttypid, atttypmod), attcompression::text "
                    "FROM pg_attribute WHERE attrelid = 'twins'::regclass AND attnum > 0 "
                    "AND NOT attisdropped"
                )
            ).all()
        return {name: (kind, compression) for name, kind, compression in rows if name in columns}

    def lz4_available() -> bool:
        with db.read() as session:
            return bool(
                session.execute(
                    text(
                        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                        "WHERE name = 'default_toast_compression'"
                    )
                ).scalar_one()
            )

    try:
        register(db)
        IngestionService(db).ingest(telemetry_batch([1, 2, 3]))
        before = documents()
        assert before[2]["cells"]  # reported holds the telemetry
        expected_compression = "l" if lz4_available() else ""
        assert types() == {c: ("json", expected_compression) for c in columns}

        command.downgrade(alembic_config(url), "0004_change_notifications")
        assert {kind for kind, _ in types().values()} == {"jsonb"}
        assert documents() == before

        upgrade(url)
        assert types() == {c: ("json", expected_compression) for c in columns}
        assert documents() == before
    finally:
        db.dispose()
