"""Alembic environment: runs on a connection given by ``cloud.db.migrate`` or on the URL.

SQLite gets batch mode (``render_as_batch``), since it cannot alter most of a table in place.
Partitions of the telemetry tables are created at run time, not by migrations: autogenerate
ignores them.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cloud.db.engine import make_engine
from cloud.db.metadata import load_metadata
from cloud.db.partitions import is_partition_name

config = context.config
target_metadata = load_metadata()


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Skip the on-demand partitions of the telemetry tables."""
    return not (type_ == "table" and name is not None and is_partition_name(name))


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=include_name,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Write the SQL instead of running it (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run on the caller's connection, or on a new engine for the configured URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use cloud.db.migrate.upgrade")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
