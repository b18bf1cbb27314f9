"""Battery passports: read by access tier, written whole, lifecycle status with its history,
exported as JSON named after the Battery Pass data model.

The attributes are one JSON document (``twin.passport.Passport``), so the catalogue grows without
a migration. Who may write (the battery's manufacturer) is the caller's check; this service
records who did. The lifecycle status (Annex XIII 4(c)) is shown from the
``legitimate_interest`` tier up; each change is checked with
``twin.passport.check_lifecycle_transition`` and kept in ``lifecycle_events``. Passport writes
and status changes are written to the audit log in the same transaction (``actor``).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, JsonValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.clock import resolve_now
from cloud.db.engine import Database
from cloud.db.models import LifecycleEventRow, PassportRow
from cloud.errors import InvalidTransitionError, NotFoundError
from cloud.security.policy import Principal
from cloud.services.audit import record_audit
from twin.errors import TwinValidationError
from twin.passport import (
    PASSPORT_ATTRIBUTES,
    AccessTier,
    LifecycleStatus,
    Passport,
    check_lifecycle_transition,
)

STATUS_TIER = AccessTier.LEGITIMATE_INTEREST
"""Annex XIII point 4 (battery status) is for persons with a legitimate interest."""
BATTERY_PASS_STATUS = "batteryStatus"
"""The Battery Pass attribute of the lifecycle status (general product information)."""
EXTENSIONS_SECTION = "extensions"


class PassportView(BaseModel):
    """What a reader of one access tier sees of a passport."""

    model_config = ConfigDict(frozen=True)

    battery_id: str
    tier: str
    attributes: dict[str, JsonValue]
    lifecycle_status: LifecycleStatus | None
    """None below the ``legitimate_interest`` tier."""
    updated_at: datetime | None
    restricted_attributes: list[str]
    """Attributes above ``public`` in this view: the read the caller must audit."""


class LifecycleChange(BaseModel):
    """One change of the lifecycle status."""

    model_config = ConfigDict(frozen=True)

    old_status: LifecycleStatus | None
    new_status: LifecycleStatus
    changed_at: datetime
    changed_by: str | None
    reason: str | None


def _passport(row: PassportRow) -> Passport:
    return Passport(
        battery_id=row.battery_id,
        attributes=row.attributes,
        extensions=row.extensions,
        updated_at=row.updated_at,
    )


def _row(session: Session, battery_id: str, *, lock: bool = False) -> PassportRow:
    row = session.get(PassportRow, battery_id, with_for_update=True if lock else None)
    if row is None:
        raise NotFoundError(f"battery {battery_id!r} is not registered")
    return row


def battery_pass_document(
    passport: Passport, status: LifecycleStatus, tier: AccessTier
) -> dict[str, JsonValue]:
    """The passport as Battery Pass JSON: attributes grouped by their data-model category."""
    visible = passport.view(tier)
    sections: dict[str, dict[str, JsonValue]] = {}
    extensions: dict[str, JsonValue] = {}
    for name, value in sorted(visible.items()):
        known = PASSPORT_ATTRIBUTES.get(name)
        if known is None:
            declared = passport.extensions[name]
            extensions[name] = {
                "value": value,
                "unit": declared.unit,
                "description": declared.description,
                "accessTier": declared.tier.label,
            }
        else:
            sections.setdefault(known.category, {})[name] = value
    if tier >= STATUS_TIER:
        sections.setdefault("generalProductInformation", {})[BATTERY_PASS_STATUS] = status.value
    document: dict[str, JsonValue] = {
        "productIdentifier": str(visible.get("productIdentifier", passport.battery_id)),
        "accessTier": tier.label,
        "lastUpdated": None if passport.updated_at is None else passport.updated_at.isoformat(),
    }
    document.update(sections)
    if extensions:
        document[EXTENSIONS_SECTION] = extensions
    return {"batteryPassport": document}


def _check_reason(reason: str | None) -> None:
    if reason is not None and len(reason) > 200:
        raise TwinValidationError("reason must be at most 200 characters")


def _actor(actor: Principal | str | None, by: str | None) -> Principal | str:
    if actor is not None:
        return actor
    return f"user:{by}" if by else "system"


class PassportService:
    """Passports and lifecycle status of batteries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, battery_id: str, tier: AccessTier = AccessTier.PUBLIC) -> PassportView:
        """The attributes a reader of ``tier`` may see."""
        with self.db.read() as session:
            row = _row(session, battery_id)
            passport = _passport(row)
            status = LifecycleStatus(row.lifecycle_status)
        visible = passport.view(tier)
        return PassportView(
            battery_id=battery_id,
            tier=tier.label,
            attributes=visible,
            lifecycle_status=status if tier >= STATUS_TIER else None,
            updated_at=passport.updated_at,
            restricted_attributes=sorted(
                k for k in visible if passport.tier_of(k) > AccessTier.PUBLIC
            ),
        )

    def get_full(self, battery_id: str) -> Passport:
        """The whole passport (every tier), e.g. for its manufacturer to edit."""
        with self.db.read() as session:
            return _passport(_row(session, battery_id))

    def put(
        self,
        battery_id: str,
        passport: Passport,
        *,
        by: str | None = None,
        now: datetime | None = None,
        lifecycle_status: LifecycleStatus | None = None,
        reason: str | None = None,
        actor: Principal | str | None = None,
    ) -> Passport:
        """Replace the passport's attributes and extensions (``battery_id`` must match).

        ``lifecycle_status``: also move the battery to this status in the same transaction
        (nothing changes if the transition is forbidden: InvalidTransitionError); the same
        status as now is no change. The write (and the status change) is audited as ``actor``
        (default ``by``).
        """
        if passport.battery_id != battery_id:
            raise TwinValidationError(
                f"the passport is of battery {passport.battery_id!r}, not {battery_id!r}"
            )
        _check_reason(reason)
        now = resolve_now(now)
        who = _actor(actor, by)
        with self.db.write() as session:
            row = _row(session, battery_id, lock=True)
            if lifecycle_status is not None and lifecycle_status.value != row.lifecycle_status:
                self._change_locked(session, row, lifecycle_status, by, reason, now, who)
            row.attributes = dict(passport.attributes)
            row.extensions = {
                name: ext.model_dump(mode="json", exclude_none=True)
                for name, ext in passport.extensions.items()
            }
            row.updated_at = now
            row.updated_by = by
            record_audit(
                session,
                actor=who,
                action="passport.write",
                battery_id=battery_id,
                category="passport-restricted",
                detail={"attributes": sorted(passport.attributes)},
                at=now,
            )
            return _passport(row)

    def lifecycle_status(self, battery_id: str) -> LifecycleStatus:
        """The battery's current lifecycle status."""
        with self.db.read() as session:
            return LifecycleStatus(_row(session, battery_id).lifecycle_status)

    def change_status(
        self,
        battery_id: str,
        new_status: LifecycleStatus,
        *,
        by: str | None = None,
        reason: str | None = None,
        now: datetime | None = None,
        actor: Principal | str | None = None,
    ) -> LifecycleChange:
        """Move the battery to ``new_status``; InvalidTransitionError if the life cycle forbids.

        The change is audited as ``actor`` (default ``by``) in the same transaction.
        """
        now = resolve_now(now)
        _check_reason(reason)
        with self.db.write() as session:
            row = _row(session, battery_id, lock=True)
            return self._change_locked(session, row, new_status, by, reason, now, _actor(actor, by))

    @staticmethod
    def _change_locked(
        session: Session,
        row: PassportRow,
        new_status: LifecycleStatus,
        by: str | None,
        reason: str | None,
        now: datetime,
        actor: Principal | str,
    ) -> LifecycleChange:
        old = LifecycleStatus(row.lifecycle_status)
        try:
            check_lifecycle_transition(old, new_status)
        except TwinValidationError as exc:
            raise InvalidTransitionError(str(exc)) from None
        row.lifecycle_status = new_status.value
        session.add(
            LifecycleEventRow(
                battery_id=row.battery_id,
                old_status=old.value,
                new_status=new_status.value,
                changed_at=now,
                changed_by=by,
                reason=reason,
            )
        )
        record_audit(
            session,
            actor=actor,
            action="lifecycle.change",
            battery_id=row.battery_id,
            category="passport-restricted",
            detail={"old_status": old.value, "new_status": new_status.value, "reason": reason},
            at=now,
        )
        return LifecycleChange(
            old_status=old, new_status=new_status, changed_at=now, changed_by=by, reason=reason
        )

    def status_history(self, battery_id: str) -> list[LifecycleChange]:
        """Every lifecycle status the battery had, oldest first (registration included)."""
        with self.db.read() as session:
            _row(session, battery_id)
            rows = session.scalars(
                select(LifecycleEventRow)
                .where(LifecycleEventRow.battery_id == battery_id)
                .order_by(LifecycleEventRow.id)
            )
            return [
                LifecycleChange(
                    old_status=None if r.old_status is None else LifecycleStatus(r.old_status),
                    new_status=LifecycleStatus(r.new_status),
                    changed_at=r.changed_at,
                    changed_by=r.changed_by,
                    reason=r.reason,
                )
                for r in rows
            ]

    def export(self, battery_id: str, tier: AccessTier = AccessTier.PUBLIC) -> dict[str, JsonValue]:
        """The passport as Battery Pass JSON for a reader of ``tier``."""
        with self.db.read() as session:
            row = _row(session, battery_id)
            passport = _passport(row)
            status = LifecycleStatus(row.lifecycle_status)
        return battery_pass_document(passport, status, tier)
