"""Engines and sessions for PostgreSQL (psycopg 3) and SQLite.

``Database`` bundles an engine with two session factories: ``read()`` for queries and
``write()`` for transactions that change data. On SQLite a write transaction starts with
``BEGIN IMMEDIATE`` (it takes the single write lock up front, so a transaction that reads before
it writes never fails with a stale snapshot under WAL). On PostgreSQL writes are plain
transactions and services lock rows (``SELECT ... FOR UPDATE``) where they must; reads run in
autocommit mode: under READ COMMITTED a read transaction gives its statements no common snapshot
anyway, so the BEGIN and ROLLBACK round trips would buy nothing (each statement still sees one
consistent, committed state). ``reads_autocommit`` says so, for the rare caller that writes one
independent row through a read session (``cloud.services.audit.audit_now``).

A pooled PostgreSQL connection is checked at checkout without a round trip: if its socket has
something to read while it sits idle, the server has closed it (restart, crash, idle timeout) and
the pool opens a new one (``_drop_closed_connection``). A connection that breaks in use raises a
disconnect error, which invalidates the pool's older connections too. ``pool_size`` connections
stay open; up to as many again are opened for bursts and closed when returned. A connection
attempt gives up after ``CONNECT_TIMEOUT_S`` (libpq's ``connect_timeout``; a URL's own wins), so
a server that does not answer at all (a partition, not a refusal) fails a request in seconds,
not after the kernel's minutes of SYN retries.

JSON columns are encoded and decoded with ``cloud.db.json_codec`` (orjson). SQLite connections
run with WAL, ``foreign_keys=ON``, ``synchronous=NORMAL`` (a committed transaction survives a
process crash) and a busy timeout; the database file's folder is created.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from cloud.db import json_codec
from cloud.db.changes import ChangeCallback, take_changes
from twin.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_POOL_SIZE = 20
CONNECT_TIMEOUT_S = 10
"""libpq's ``connect_timeout`` unless the URL sets one."""
_BEGIN_OPTION = "b2l_sqlite_begin"


def normalise_url(url: str | URL) -> URL:
    """The SQLAlchemy URL with the driver b2l uses (``postgresql://`` -> ``postgresql+psycopg``)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        if parsed.get_driver_name() not in ("pysqlite", ""):
            raise ConfigError(f"unsupported SQLite driver in {parsed.drivername!r}")
    else:
        raise ConfigError(
            f"unsupported database {backend!r}: use postgresql+psycopg://... or sqlite:///path"
        )
    return parsed


def make_engine(
    url: str | URL, *, echo: bool = False, pool_size: int = DEFAULT_POOL_SIZE
) -> Engine:
    """An engine for ``url`` (PostgreSQL or SQLite) with b2l's connection settings;
    ``pool_size``: PostgreSQL connections kept open (as many again for bursts)."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo=echo)
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    engine = create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        json_serializer=json_codec.dumps,
        json_deserializer=json_codec.loads,
    )
    event.listen(engine, "checkout", _drop_closed_connection)
    return engine


def driver_connect_options(engine: Engine) -> dict[str, Any]:
    """The keyword arguments of ``psycopg.connect`` for a connection of its own to the
    engine's database (outside the pool: a listener, the audit writer)."""
    _, options = engine.dialect.create_connect_args(engine.url)
    return dict(options)


def _drop_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection the server has closed (``closed_by_server``); cheaper than a
    ping (no round trip). The pool then opens a fresh connection."""
    if closed_by_server(dbapi_connection):
        raise DisconnectionError("the server closed the connection")


def closed_by_server(dbapi_connection: Any) -> bool:
    """Whether an idle psycopg connection is closed: an idle connection's socket has nothing
    to read unless the server hung up (or sent its last words before it did)."""
    if dbapi_connection.closed:
        return True
    poller = select.poll()  # not select.select: descriptors past 1024
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        "echo": echo,
        "json_serializer": json_codec.dumps_text,
        "json_deserializer": json_codec.loads,
    }
    if in_memory:
        from sqlalchemy.pool import StaticPool

        kwargs["poolclass"] = StaticPool
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30.0}, **kwargs
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine`` whose objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


class Database:
    """An engine with read and write session factories; the handle every service takes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = make_session_factory(
            engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        )
        self._commit_listeners: list[ChangeCallback] = []
        if self.is_postgresql:
            self._reader = make_session_factory(
                engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        else:
            self._reader = make_session_factory(engine)

    @classmethod
    def from_url(cls, url: str | URL, **kwargs: Any) -> Database:
        """A database with its own engine (``dispose()`` it when done)."""
        return cls(make_engine(url, **kwargs))

    @property
    def is_postgresql(self) -> bool:
        """Whether the engine is PostgreSQL (COPY, partitions, row locks)."""
        return self.dialect == "postgresql"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; closed at the end (nothing it did is kept, the objects it
        loaded stay readable). Autocommit on PostgreSQL (``reads_autocommit``)."""
        with self._reader() as session:
            yield session

    @property
    def reads_autocommit(self) -> bool:
        """Whether ``read()`` sessions commit each statement on its own (PostgreSQL)."""
        return self.is_postgresql

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits at the end of the block, or rolls back on any error.
        What it noted as changed (``cloud.db.changes.note_changed``) goes to the commit
        listeners once committed."""
        with self._writer() as session:
            with session.begin():
                yield session
            changes = take_changes(session)
        if changes is not None:
            for listener in self._commit_listeners:
                listener(changes)

    def add_commit_listener(self, listener: ChangeCallback) -> None:
        """Call ``listener`` with what each committed write transaction noted as changed."""
        self._commit_listeners.append(listener)

    def remove_commit_listener(self, listener: ChangeCallback) -> None:
        self._commit_listeners.remove(listener)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
