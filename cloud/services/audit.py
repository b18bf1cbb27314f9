"""The audit log: every restricted read, every denial of one, passport and lifecycle writes.

``record_audit`` inserts a row in the caller's transaction; the caller commits it with its own work
(a write and its audit row land together or not at all). ``audit_now`` commits one row at once
from a read: ``cloud.api.deps`` records restricted reads that way, before the read is served.
``AuditWriter`` does the same for many concurrent reads at once (group commit): each caller
waits for the commit of the transaction that holds its row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Required, TypedDict, Unpack

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from cloud.db.base import table_of
from cloud.db.engine import Database, closed_by_server
from cloud.db.security_models import AuditEntry
from cloud.security.policy import Principal

MAX_AUDIT_PAGE = 1000
log = logging.getLogger(__name__)


def actor_of(principal: Principal) -> str:
    """``device:ID`` or ``user:NAME``: how a principal is named in the log."""
    return f"{'device' if principal.is_device else 'user'}:{principal.subject}"


_INSERT_AUDIT = insert(table_of(AuditEntry))  # Core: no ORM bulk-insert work


class AuditFields(TypedDict, total=False):
    """The fields of an audit row a caller gives (``at`` defaults to now, ``outcome`` to ok).

    ``action`` says what was done (``read``, ``passport.write``, ``lifecycle.change``,
    ``login``, ...), ``outcome`` how it ended (``allowed``, ``denied``, ``ok``, ``failed``)."""

    actor: Required[str | Principal]
    action: Required[str]
    outcome: str
    battery_id: str | None
    category: str | None
    detail: Mapping[str, Any] | None
    at: datetime | None


def record_audit(session: Session, **fields: Unpack[AuditFields]) -> None:
    """Insert one audit row in ``session``'s transaction (the caller commits it)."""
    session.execute(_INSERT_AUDIT, audit_row(**fields))


def audit_row(**fields: Unpack[AuditFields]) -> dict[str, Any]:
    """The row ``record_audit`` inserts."""
    actor, at = fields["actor"], fields.get("at")
    return {
        "at": at if at is not None else datetime.now(UTC),
        "actor": actor if isinstance(actor, str) else actor_of(actor),
        "action": fields["action"],
        "battery_id": fields.get("battery_id"),
        "category": fields.get("category"),
        "detail": dict(fields.get("detail") or {}),
        "outcome": fields.get("outcome", "ok"),
    }


def audit_now(db: Database, read_session: Session, **fields: Unpack[AuditFields]) -> None:
    """Record one audit row (``record_audit``'s fields) committed when this returns: through
    ``read_session`` where reads commit each statement (PostgreSQL: one INSERT, no BEGIN or
    COMMIT round trips), else in a write transaction of its own (SQLite), after ending the read
    session's transaction (it goes on reading in a new one)."""
    if db.reads_autocommit:
        record_audit(read_session, **fields)
        return
    read_session.rollback()  # end its read transaction first: one SQLite connection may serve both
    with db.write() as session:
        record_audit(session, **fields)


_AUDIT_ARRAY_TYPES = {
    "at": "timestamptz",
    "actor": "text",
    "action": "text",
    "battery_id": "text",
    "category": "text",
    "detail": "jsonb",
    "outcome": "text",
}
_INSERT_AUDIT_ROWS = (
    f"INSERT INTO audit_log ({', '.join(_AUDIT_ARRAY_TYPES)}) SELECT * FROM unnest("
    + ", ".join(f"%({column})b::{kind}[]" for column, kind in _AUDIT_ARRAY_TYPES.items())
    + ")"
)
"""PostgreSQL: many audit rows in one statement of fixed text (one array per column, sent in
binary: a third of the cost of text arrays to build)."""


def _as_arrays(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    arrays = {column: [row[column] for row in rows] for column in _AUDIT_ARRAY_TYPES}
    arrays["detail"] = [Jsonb(detail) for detail in arrays["detail"]]
    return arrays


Pending = tuple[dict[str, Any], "asyncio.Future[None]"]


class AuditWriter:
    """Group commit of audit rows on PostgreSQL, in the event loop of the process: the rows of
    the reads waiting meanwhile go in one statement (at most ``max_batch``) over a connection
    of its own, committed on its own (autocommit); then their callers go on. No thread hop
    and no per-row round trip. A batch the database refuses is written again row by row, so
    only the rows it refuses fail; a batch lost with its connection, or to a server that does
    not answer (``psycopg.OperationalError``), fails whole at once. ``record`` returns once the
    row is committed, or raises what the database raised: the read it audits must not be
    served."""

    def __init__(self, connect_options: Mapping[str, Any], *, max_batch: int = 512) -> None:
        """Make it in the event loop that will serve the reads (``in_its_loop``)."""
        self._connect_options = dict(connect_options)
        self._max_batch = max_batch
        self._loop = asyncio.get_running_loop()
        self._pending: list[Pending] = []
        self._flushing: asyncio.Task[None] | None = None
        self._connection: Any = None
        self._closed = False
        self.batches = 0
        self.rows = 0

    def in_its_loop(self) -> bool:
        """Whether the running event loop is the writer's (its connection belongs to it)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def record(self, **fields: Unpack[AuditFields]) -> None:
        """Write one row (``record_audit``'s fields) with whatever else is waiting."""
        if self._closed:
            raise RuntimeError("the audit writer is closed")
        if not self.in_its_loop():
            raise RuntimeError("the audit writer serves the event loop it was made in")
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.append((audit_row(**fields), future))
        if self._flushing is None or self._flushing.done():
            self._flushing = self._loop.create_task(self._flush())
        await future

    async def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new rows, write what is waiting, close the connection."""
        self._closed = True
        if self._flushing is not None and not self._flushing.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._flushing), timeout_s)
            except TimeoutError:
                log.error("audit rows still unwritten after %.0f s at shutdown", timeout_s)
                self._flushing.cancel()
        for _, future in self._pending:  # their reads are not served
            _settle(future, RuntimeError("the audit writer closed before writing this row"))
        self._pending.clear()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._write(batch)

    async def _write(self, batch: list[Pending]) -> None:
        try:
            await self._insert([row for row, _ in batch])
        except psycopg.OperationalError as exc:  # the connection or the server, not the rows
            for _, future in batch:
                _settle(future, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            log.warning(
                "an audit batch of %d rows failed (%s); writing them one by one", len(batch), exc
            )
            for item in batch:
                await self._write([item])
            return
        self.batches += 1
        self.rows += len(batch)
        for _, future in batch:
            _settle(future, None)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self._connection is not None and closed_by_server(self._connection):
            await self._connection.close()  # the server restarted meanwhile: not a failure
        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(
                autocommit=True, **self._connect_options
            )
        try:
            await self._connection.execute(_INSERT_AUDIT_ROWS, _as_arrays(rows))
        except psycopg.OperationalError:
            await self._connection.close()  # broken: the next batch connects again
            raise


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its caller went away (request cancelled)
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def list_audit(
    session: Session,
    *,
    battery_id: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> Sequence[AuditEntry]:
    """Audit rows, newest first, filtered by battery, actor and time."""
    query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.audit_id.desc())
    if battery_id is not None:
        query = query.where(AuditEntry.battery_id == battery_id)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    return session.scalars(query.limit(max(1, min(limit, MAX_AUDIT_PAGE)))).all()
