"""The audit log: every restricted read, every denial of one, passport and lifecycle writes.

``record_audit`` adds a row to the caller's session; the caller commits it with its own work
(a write and its audit row land together or not at all). ``cloud.api.deps.require`` records
restricted reads and commits them before the read is served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db.security_models import AuditEntry
from cloud.security.policy import Principal

MAX_AUDIT_PAGE = 1000


def actor_of(principal: Principal) -> str:
    """``device:ID`` or ``user:NAME``: how a principal is named in the log."""
    return f"{'device' if principal.is_device else 'user'}:{principal.subject}"


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
) -> AuditEntry:
    """Add one audit row to ``session`` (not committed) and return it.

    ``action`` says what was done (``read``, ``passport.write``, ``lifecycle.change``,
    ``login``, ...), ``outcome`` how it ended (``allowed``, ``denied``, ``ok``, ``failed``).
    """
    entry = AuditEntry(
        at=at if at is not None else datetime.now(UTC),
        actor=actor if isinstance(actor, str) else actor_of(actor),
        action=action,
        battery_id=battery_id,
        category=category,
        detail=dict(detail or {}),
        outcome=outcome,
    )
    session.add(entry)
    return entry


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
