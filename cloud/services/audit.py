"""The audit log: every restricted read, every denial of one, passport and lifecycle writes.

``record_audit`` inserts a row in the caller's transaction; the caller commits it with its own work
(a write and its audit row land together or not at all). ``audit_now`` commits one row at once
from a read: ``cloud.api.deps`` records restricted reads that way, before the read is served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from cloud.db.base import table_of
from cloud.db.engine import Database
from cloud.db.security_models import AuditEntry
from cloud.security.policy import Principal

MAX_AUDIT_PAGE = 1000


def actor_of(principal: Principal) -> str:
    """``device:ID`` or ``user:NAME``: how a principal is named in the log."""
    return f"{'device' if principal.is_device else 'user'}:{principal.subject}"


_INSERT_AUDIT = insert(table_of(AuditEntry))  # Core: no ORM bulk-insert work


def record_audit(
    session: Session,
    *,
    actor: str | Principal,
    action: str,
    outcome: str = "ok",
    battery_id: str | None = None,
    category: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Insert one audit row in ``session``'s transaction (the caller commits it).

    ``action`` says what was done (``read``, ``passport.write``, ``lifecycle.change``,
    ``login``, ...), ``outcome`` how it ended (``allowed``, ``denied``, ``ok``, ``failed``).
    """
    session.execute(
        _INSERT_AUDIT,
        {
            "at": at if at is not None else datetime.now(UTC),
            "actor": actor if isinstance(actor, str) else actor_of(actor),
            "action": action,
            "battery_id": battery_id,
            "category": category,
            "detail": dict(detail or {}),
            "outcome": outcome,
        },
    )


def audit_now(db: Database, read_session: Session, **fields: Any) -> None:
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
