"""Durable cloud-to-edge commands: queued, delivered, acknowledged, expired or cancelled.

Everything is in the database, so a command survives a cloud restart and an edge that is
offline for days (until its TTL). Every change is checked with
``twin.commands.check_command_transition``, made under a row lock, and recorded with its time in
``command_transitions``. Overdue commands are expired by ``expire_overdue`` (run it
periodically) and lazily whenever a command is read or listed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.clock import resolve_now
from cloud.db.engine import Database
from cloud.db.models import CommandRow, CommandTransitionRow
from cloud.errors import InvalidTransitionError, NotFoundError
from cloud.services.batteries import get_battery_row
from twin.commands import (
    Command,
    CommandAck,
    CommandPayload,
    CommandStatus,
    EcmParameters,
    ReportingPeriod,
    check_command_transition,
)
from twin.errors import TwinValidationError

MIN_TTL_S = 1.0
MAX_TTL_S = 30 * 86_400.0
DEFAULT_TTL_S = 86_400.0
MAX_LIST_LIMIT = 1000
_PAYLOAD: TypeAdapter[Any] = TypeAdapter(CommandPayload)
_OPEN = (CommandStatus.QUEUED.value, CommandStatus.DELIVERED.value)


class CommandView(BaseModel):
    """A command with its lifecycle, as services and routes return it."""

    model_config = ConfigDict(frozen=True)

    command: Command
    status: CommandStatus
    created_by: str | None
    delivered_at: datetime | None
    delivery_count: int
    completed_at: datetime | None
    reason: str | None
    result: dict[str, JsonValue] | None
    updated_at: datetime

    @property
    def command_id(self) -> uuid.UUID:
        """The command's id."""
        return self.command.command_id


class CommandTransition(BaseModel):
    """One recorded status change."""

    model_config = ConfigDict(frozen=True)

    old_status: CommandStatus | None
    new_status: CommandStatus
    at: datetime
    detail: str | None


def parse_payload(payload: BaseModel | dict[str, Any]) -> Any:
    """A command payload model from a model or its JSON; TwinValidationError if invalid."""
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    try:
        return _PAYLOAD.validate_python(data)
    except ValidationError as exc:
        raise TwinValidationError(f"invalid command payload: {exc}") from exc


def command_view(row: CommandRow) -> CommandView:
    """The view of a stored command."""
    return CommandView(
        command=Command(
            command_id=row.command_id,
            battery_id=row.battery_id,
            created_at=row.created_at,
            expires_at=row.expires_at,
            payload=row.payload,  # type: ignore[arg-type]
        ),
        status=CommandStatus(row.status),
        created_by=row.created_by,
        delivered_at=row.delivered_at,
        delivery_count=row.delivery_count,
        completed_at=row.completed_at,
        reason=row.reason,
        result=row.result,
        updated_at=row.updated_at,
    )


def transition(
    session: Session,
    row: CommandRow,
    new: CommandStatus,
    now: datetime,
    *,
    detail: str | None = None,
) -> None:
    """Move a (locked) command to ``new`` and record it; InvalidTransitionError if forbidden."""
    old = CommandStatus(row.status)
    try:
        check_command_transition(old, new)
    except TwinValidationError as exc:
        raise InvalidTransitionError(f"command {row.command_id}: {exc}") from None
    row.status = new.value
    row.updated_at = now
    if new is CommandStatus.DELIVERED:
        row.delivered_at = row.delivered_at or now
        row.delivery_count += 1
    if new.is_final:
        row.completed_at = now
    session.add(
        CommandTransitionRow(
            command_id=row.command_id,
            old_status=old.value,
            new_status=new.value,
            at=now,
            detail=detail,
        )
    )


def lock_command(session: Session, battery_id: str, command_id: uuid.UUID) -> CommandRow:
    """The command row locked for the transaction; NotFoundError unless it is this battery's."""
    row = session.scalar(
        select(CommandRow).where(CommandRow.command_id == command_id).with_for_update()
    )
    if row is None or row.battery_id != battery_id:
        raise NotFoundError(f"battery {battery_id!r} has no command {command_id}")
    return row


def _expire_locked(session: Session, rows: Sequence[CommandRow], now: datetime) -> int:
    count = 0
    for row in rows:
        if row.status in _OPEN and now >= row.expires_at:
            transition(session, row, CommandStatus.EXPIRED, now, detail="ttl elapsed")
            count += 1
    return count


def ack_effect(payload: dict[str, Any]) -> dict[str, JsonValue]:
    """What a succeeded command makes the edge report (so the twin's delta clears)."""
    parsed = parse_payload(payload)
    if isinstance(parsed, ReportingPeriod):
        return {"reporting_period_s": parsed.period_s}
    if isinstance(parsed, EcmParameters):
        return {"ecm_parameters": parsed.model_dump(mode="json", exclude_none=True)}
    return {}


def apply_ack(
    session: Session, battery_id: str, ack: CommandAck, now: datetime
) -> tuple[CommandRow | None, str | None]:
    """Apply an edge's ack inside the caller's transaction.

    Returns the command (None if unknown) and a note when the ack changed nothing: an ack of
    an unknown command, of another battery's command or of a final command is kept as received
    but never fails the batch that carried it.
    """
    row = session.scalar(
        select(CommandRow).where(CommandRow.command_id == ack.command_id).with_for_update()
    )
    if row is None or row.battery_id != battery_id:
        return None, "unknown command"
    old = CommandStatus(row.status)
    if old is CommandStatus.QUEUED or old is CommandStatus.DELIVERED:
        if now >= row.expires_at and ack.timestamp >= row.expires_at:
            transition(session, row, CommandStatus.EXPIRED, now, detail="ttl elapsed")
            return row, "command had expired"
        transition(session, row, ack.status, now, detail=ack.reason)
        row.reason = ack.reason
        row.result = ack.result
        return row, None
    return row, f"command is already {old.value}"


def queue_command(
    session: Session,
    battery_id: str,
    payload: Any,
    now: datetime,
    ttl_s: float,
    created_by: str | None,
) -> CommandRow:
    """Add a queued command (a parsed payload) and its first transition to ``session``."""
    row = CommandRow(
        command_id=uuid.uuid4(),
        battery_id=battery_id,
        command_type=payload.type,
        payload=payload.model_dump(mode="json", exclude_none=True),
        status=CommandStatus.QUEUED.value,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        created_by=created_by,
        delivered_at=None,
        delivery_count=0,
        completed_at=None,
        reason=None,
        result=None,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    session.add(
        CommandTransitionRow(
            command_id=row.command_id,
            old_status=None,
            new_status=CommandStatus.QUEUED.value,
            at=now,
            detail=None,
        )
    )
    return row


class CommandService:
    """Create, deliver, acknowledge, cancel and expire commands."""

    def __init__(self, db: Database, *, default_ttl_s: float = DEFAULT_TTL_S) -> None:
        self.db = db
        self.default_ttl_s = default_ttl_s

    def create(
        self,
        battery_id: str,
        payload: BaseModel | dict[str, Any],
        *,
        ttl_s: float | None = None,
        created_by: str | None = None,
        now: datetime | None = None,
    ) -> CommandView:
        """Queue a command; it expires ``ttl_s`` after ``now`` unless acknowledged first."""
        now = resolve_now(now)
        ttl_s = self.default_ttl_s if ttl_s is None else ttl_s
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise TwinValidationError(f"ttl_s must be within {MIN_TTL_S:g}..{MAX_TTL_S:g} s")
        parsed = parse_payload(payload)
        with self.db.write() as session:
            get_battery_row(session, battery_id)
            row = queue_command(session, battery_id, parsed, now, ttl_s, created_by)
            return command_view(row)

    def get(
        self, battery_id: str, command_id: uuid.UUID, *, now: datetime | None = None
    ) -> CommandView:
        """One command of the battery (expired first if its TTL has run out)."""
        now = resolve_now(now)
        with self.db.read() as session:
            row = session.get(CommandRow, command_id)
            if row is None or row.battery_id != battery_id:
                raise NotFoundError(f"battery {battery_id!r} has no command {command_id}")
            if not (row.status in _OPEN and now >= row.expires_at):
                return command_view(row)
        with self.db.write() as session:
            row = lock_command(session, battery_id, command_id)
            _expire_locked(session, [row], now)
            return command_view(row)

    def list_commands(
        self,
        battery_id: str,
        *,
        status: CommandStatus | None = None,
        limit: int = 100,
        now: datetime | None = None,
    ) -> list[CommandView]:
        """The battery's commands, newest first (overdue ones expired first)."""
        now = resolve_now(now)
        self.expire_overdue(now=now, battery_id=battery_id)
        query = (
            select(CommandRow)
            .where(CommandRow.battery_id == battery_id)
            .order_by(CommandRow.created_at.desc(), CommandRow.command_id)
            .limit(max(1, min(limit, MAX_LIST_LIMIT)))
        )
        if status is not None:
            query = query.where(CommandRow.status == status.value)
        with self.db.read() as session:
            get_battery_row(session, battery_id)
            return [command_view(row) for row in session.scalars(query)]

    def pending(
        self, battery_id: str, *, limit: int = 100, now: datetime | None = None
    ) -> list[Command]:
        """Commands the edge should run (queued or delivered, not expired), oldest first."""
        now = resolve_now(now)
        self.expire_overdue(now=now, battery_id=battery_id)
        query = (
            select(CommandRow)
            .where(
                CommandRow.battery_id == battery_id,
                CommandRow.status.in_(_OPEN),
                CommandRow.expires_at > now,
            )
            .order_by(CommandRow.created_at, CommandRow.command_id)
            .limit(max(1, min(limit, MAX_LIST_LIMIT)))
        )
        with self.db.read() as session:
            get_battery_row(session, battery_id)
            return [command_view(row).command for row in session.scalars(query)]

    def mark_delivered(
        self, battery_id: str, command_ids: Sequence[uuid.UUID], *, now: datetime | None = None
    ) -> list[CommandView]:
        """Record a delivery (MQTT publish acknowledged, or an HTTP fetch) of open commands;
        final or expired ones are left as they are. Returns the commands' views."""
        now = resolve_now(now)
        views: list[CommandView] = []
        with self.db.write() as session:
            for command_id in sorted(set(command_ids)):  # one lock order for every caller
                row = lock_command(session, battery_id, command_id)
                if not _expire_locked(session, [row], now) and row.status in _OPEN:
                    transition(session, row, CommandStatus.DELIVERED, now)
                views.append(command_view(row))
        return views

    def acknowledge(
        self, battery_id: str, ack: CommandAck, *, now: datetime | None = None
    ) -> CommandView:
        """Apply an ack outside a batch (e.g. an HTTP ack); InvalidTransitionError if final."""
        now = resolve_now(now)
        with self.db.write() as session:
            row, note = apply_ack(session, battery_id, ack, now)
            if row is None:
                raise NotFoundError(f"battery {battery_id!r} has no command {ack.command_id}")
            if note is not None:
                raise InvalidTransitionError(f"command {ack.command_id}: {note}")
            return command_view(row)

    def cancel(
        self,
        battery_id: str,
        command_id: uuid.UUID,
        *,
        by: str | None = None,
        now: datetime | None = None,
    ) -> CommandView:
        """Cancel an open command; InvalidTransitionError if it already ended."""
        now = resolve_now(now)
        with self.db.write() as session:
            row = lock_command(session, battery_id, command_id)
            if _expire_locked(session, [row], now):
                raise InvalidTransitionError(f"command {command_id} has expired")
            transition(
                session,
                row,
                CommandStatus.CANCELLED,
                now,
                detail=None if by is None else f"cancelled by {by}",
            )
            return command_view(row)

    def expire_overdue(self, *, now: datetime | None = None, battery_id: str | None = None) -> int:
        """Expire every open command whose TTL has run out; returns how many."""
        now = resolve_now(now)
        query = (
            select(CommandRow.command_id)
            .where(CommandRow.status.in_(_OPEN), CommandRow.expires_at <= now)
            .order_by(CommandRow.command_id)
        )
        if battery_id is not None:
            query = query.where(CommandRow.battery_id == battery_id)
        with self.db.read() as session:
            overdue = list(session.scalars(query))
        if not overdue:
            return 0
        with self.db.write() as session:
            rows = session.scalars(
                select(CommandRow)
                .where(CommandRow.command_id.in_(overdue))
                .order_by(CommandRow.command_id)
                .with_for_update()
            ).all()
            return _expire_locked(session, rows, now)

    def history(self, battery_id: str, command_id: uuid.UUID) -> list[CommandTransition]:
        """Every status change of a command, oldest first."""
        with self.db.read() as session:
            row = session.get(CommandRow, command_id)
            if row is None or row.battery_id != battery_id:
                raise NotFoundError(f"battery {battery_id!r} has no command {command_id}")
            transitions = session.scalars(
                select(CommandTransitionRow)
                .where(CommandTransitionRow.command_id == command_id)
                .order_by(CommandTransitionRow.id)
            )
            return [
                CommandTransition(
                    old_status=None if t.old_status is None else CommandStatus(t.old_status),
                    new_status=CommandStatus(t.new_status),
                    at=t.at,
                    detail=t.detail,
                )
                for t in transitions
            ]
