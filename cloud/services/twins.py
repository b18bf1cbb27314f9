"""Twin documents in the database: read, patch ``desired`` with optimistic concurrency,
merge ``reported`` (for ingestion).

The row keeps ``desired`` and ``reported`` (and their metadata) in separate columns: an operator's
patch writes only the desired side, ingestion only the reported side, so neither overwrites the
other. ``delta`` is computed on read. A desired patch is an
``UPDATE ... WHERE version = :read_version``: of two concurrent patches based on one version,
exactly one changes a row; the other gets VersionConflictError.

A desired change the edge must act on (reporting period, ECM parameters) is also queued as a
durable command in the same transaction (``queue_desired_commands``), superseding the older
unacknowledged one: an edge that was offline gets it when it fetches its pending commands on
reconnect, and its acknowledgement (a ``twin.reported`` event) clears the delta.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, select, text, update
from sqlalchemy.orm import Session

from cloud.clock import resolve_now
from cloud.db.base import table_of
from cloud.db.changes import note_changed
from cloud.db.engine import Database
from cloud.db.models import CommandRow, TwinRow
from cloud.errors import ConcurrentUpdateError, NotFoundError
from cloud.services.commands import MAX_TTL_S, queue_command, transition
from twin.commands import CommandStatus, EcmParameters, ReportingPeriod
from twin.errors import VersionConflictError
from twin.twin_document import (
    JsonObject,
    TwinDocument,
    TwinMetadata,
    compute_delta,
    merge_patch_stamped,
    patch_desired,
)

UNCONDITIONAL_RETRIES = 5
"""A patch without If-Match re-reads and retries this often when another patch wins."""


def twin_document(row: TwinRow) -> TwinDocument:
    """The document of a stored twin, with its delta."""
    return TwinDocument(
        battery_id=row.battery_id,
        version=row.version,
        reported=row.reported,
        desired=row.desired,
        delta=compute_delta(row.desired, row.reported),
        metadata=TwinMetadata(desired=row.desired_metadata, reported=row.reported_metadata),
    )


_UTC_STAMP_VALUE = re.compile(r'(:\s*"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)\+00:00"')


def _utc_z(stamps_json: str) -> str:
    """The ISO stamps (``+00:00``) of a stored JSON object of stamps as the model serialises
    them (``Z``). Every value is a stamp, so a plain replace does, unless a key ends like one:
    then only values (after a colon) are rewritten."""
    if '+00:00":' in stamps_json:
        return _UTC_STAMP_VALUE.sub(lambda m: m.group(1) + 'Z"', stamps_json)
    return stamps_json.replace('+00:00"', 'Z"')


@dataclass
class ReportedSide:
    """The reported side of a locked twin row, as stored: what ingestion changes."""

    reported: JsonObject
    metadata: dict[str, str]
    """Per-leaf ISO timestamps (as stored: ``+00:00``)."""
    estimator_state: dict[str, Any] | None


_twins = table_of(TwinRow)
_LOCK_REPORTED = (
    select(_twins.c.battery_id, _twins.c.reported, _twins.c.reported_metadata)
    .add_columns(_twins.c.estimator_state)
    .where(_twins.c.battery_id.in_(bindparam("battery_ids", expanding=True)))
    .order_by(_twins.c.battery_id)
    .with_for_update()
)
_STORE_REPORTED = (
    update(_twins)
    .where(_twins.c.battery_id == bindparam("b_battery_id"))
    .values(
        reported=bindparam("b_reported", type_=_twins.c.reported.type),
        reported_metadata=bindparam("b_metadata", type_=_twins.c.reported_metadata.type),
        estimator_state=bindparam("b_estimator_state", type_=_twins.c.estimator_state.type),
        updated_at=bindparam("b_updated_at", type_=_twins.c.updated_at.type),
    )
)


def lock_reported(
    session: Session, battery_ids: Collection[str], *, missing_ok: bool = False
) -> dict[str, ReportedSide]:
    """The reported sides of some twins, in one query that locks their rows in battery order
    for this transaction on PostgreSQL (``SELECT ... ORDER BY ... FOR UPDATE``, so concurrent
    ingesters never deadlock on them; SQLite's write transactions hold the database lock).
    NotFoundError for a battery without a twin, unless ``missing_ok`` (then left out)."""
    rows = session.execute(_LOCK_REPORTED, {"battery_ids": sorted(battery_ids)})
    sides = {row[0]: ReportedSide(row[1], row[2], row[3]) for row in rows}
    missing = sorted(set(battery_ids) - sides.keys())
    if missing and not missing_ok:
        raise NotFoundError(f"battery {missing[0]!r} has no twin (is it registered?)")
    return sides


def merge_reported(side: ReportedSide, patch: JsonObject, now: datetime) -> None:
    """Merge ``patch`` into the reported state and stamp the leaves it changed with ``now``."""
    if not patch:
        return
    side.reported, side.metadata = merge_patch_stamped(
        side.reported, side.metadata, patch, now.isoformat()
    )


def store_reported(session: Session, sides: Mapping[str, ReportedSide], now: datetime) -> None:
    """Write reported sides back (rows locked by ``lock_reported``), in one executemany."""
    if not sides:
        return
    note_changed(session, twins=sides.keys())
    session.execute(
        _STORE_REPORTED,
        [
            {
                "b_battery_id": battery_id,
                "b_reported": side.reported,
                "b_metadata": side.metadata,
                "b_estimator_state": side.estimator_state,
                "b_updated_at": now,
            }
            for battery_id, side in sorted(sides.items())
        ],
    )


_TWIN_JSON_COLUMNS = select(
    _twins.c.version,
    _twins.c.desired,
    cast(_twins.c.reported, Text),
    cast(_twins.c.desired_metadata, Text),
    cast(_twins.c.reported_metadata, Text),
).where(_twins.c.battery_id == bindparam("battery_id"))


def twin_json(session: Session, battery_id: str) -> tuple[int, bytes]:
    """The twin's version and its document as JSON, spliced from the JSON texts the database
    holds (written only through validated paths): the big parts are never decoded and encoded
    again. ``reported`` is decoded only to compute a delta, when something is desired."""
    row = session.execute(_TWIN_JSON_COLUMNS, {"battery_id": battery_id}).one_or_none()
    if row is None:
        raise NotFoundError(f"battery {battery_id!r} is not registered")
    version, desired, reported_json, desired_metadata_json, reported_metadata_json = row
    delta = compute_delta(desired, json.loads(reported_json)) if desired else {}
    parts = (
        '{"battery_id":',
        json.dumps(battery_id),
        ',"version":',
        str(int(version)),
        ',"reported":',
        reported_json,
        ',"desired":',
        json.dumps(desired, separators=(",", ":")),
        ',"delta":',
        json.dumps(delta, separators=(",", ":")),
        ',"metadata":{"desired":',
        _utc_z(desired_metadata_json),
        ',"reported":',
        _utc_z(reported_metadata_json),
        "}}",
    )
    return version, "".join(parts).encode()


DESIRED_SOURCE = "twin.desired"
"""``created_by`` of the commands that carry desired-state changes to the edge."""
DESIRED_COMMAND_TTL_S = MAX_TTL_S
"""They wait this long for an offline edge (the longest TTL a command may have)."""


def desired_payloads(old: JsonObject, new: JsonObject) -> list[Any]:
    """The command payloads that bring an edge from desired state ``old`` to ``new``.

    A changed ``reporting_period_s`` becomes a ``ReportingPeriod`` without end, changed
    ``ecm_parameters`` an ``EcmParameters`` command; a removed key asks for nothing (the edge
    keeps what it runs). ``eis_schedule`` stays in the twin: the cloud asks for each sweep.
    """
    payloads: list[Any] = []
    period = new.get("reporting_period_s")
    if isinstance(period, int | float) and period != old.get("reporting_period_s"):
        payloads.append(ReportingPeriod(period_s=float(period)))
    ecm = new.get("ecm_parameters")
    if ecm is not None and ecm != old.get("ecm_parameters"):
        payloads.append(EcmParameters.model_validate(ecm))
    return payloads


_DESIRED_PATCH_TURN = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def lock_desired_commands(session: Session, battery_id: str) -> None:
    """Lock a battery's open desired-state commands (command-id order) before its twin row is
    written: the order ingestion takes them in (the commands an ack names, then the twin), so a
    desired patch and an acknowledgement of a desired command never deadlock.

    On PostgreSQL the desired patches of one battery first take turns (a transaction-scoped
    advisory lock per battery): only they add open desired commands, so the commands locked
    here are all those the patch may cancel later. Without the turn, a patch committed in
    between adds commands this one has not locked, and two patches could each hold what the
    other waits for. SQLite runs one write transaction at a time anyway."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_DESIRED_PATCH_TURN, {"key": f"b2l.desired:{battery_id}"})
    session.execute(
        select(CommandRow.command_id)
        .where(
            CommandRow.battery_id == battery_id,
            CommandRow.created_by == DESIRED_SOURCE,
            CommandRow.status.in_([CommandStatus.QUEUED.value, CommandStatus.DELIVERED.value]),
        )
        .order_by(CommandRow.command_id)
        .with_for_update()
    )


def queue_desired_commands(
    session: Session, battery_id: str, old: JsonObject, new: JsonObject, now: datetime
) -> None:
    """Queue the commands of a desired-state change in the patch's transaction, cancelling the
    not yet acknowledged ones of the same type it supersedes (the edge only needs the last)."""
    for payload in desired_payloads(old, new):
        superseded = session.scalars(
            select(CommandRow)
            .where(
                CommandRow.battery_id == battery_id,
                CommandRow.command_type == payload.type,
                CommandRow.created_by == DESIRED_SOURCE,
                CommandRow.status.in_([CommandStatus.QUEUED.value, CommandStatus.DELIVERED.value]),
            )
            .with_for_update()
        )
        for row in superseded:
            transition(session, row, CommandStatus.CANCELLED, now, detail="superseded")
        queue_command(session, battery_id, payload, now, DESIRED_COMMAND_TTL_S, DESIRED_SOURCE)


class TwinService:
    """Read twins; patch their desired state (If-Match)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, battery_id: str) -> TwinDocument:
        """The battery's twin: version, reported, desired, delta, metadata."""
        with self.db.read() as session:
            row = session.get(TwinRow, battery_id)
            if row is None:
                raise NotFoundError(f"battery {battery_id!r} is not registered")
            return twin_document(row)

    def get_json(self, battery_id: str) -> tuple[int, bytes]:
        """The twin's version and its document as JSON (``twin_json``)."""
        with self.db.read() as session:
            return twin_json(session, battery_id)

    def version(self, battery_id: str) -> int:
        """The twin's current version (an ETag)."""
        with self.db.read() as session:
            version = session.scalar(
                select(TwinRow.version).where(TwinRow.battery_id == battery_id)
            )
        if version is None:
            raise NotFoundError(f"battery {battery_id!r} is not registered")
        return version

    def patch_desired(
        self,
        battery_id: str,
        patch: JsonObject,
        *,
        if_match: int | None = None,
        now: datetime | None = None,
    ) -> TwinDocument:
        """Merge-patch the desired state; bumps the version.

        ``if_match``: the version the caller read; a different current version raises
        VersionConflictError and changes nothing. Without it, a patch that loses a race is
        re-applied on the newer version, up to ``UNCONDITIONAL_RETRIES`` times, then
        ConcurrentUpdateError. TwinValidationError for an invalid desired state.
        """
        now = resolve_now(now)
        attempts = 1 if if_match is not None else UNCONDITIONAL_RETRIES
        for _ in range(attempts):
            with self.db.write() as session:
                lock_desired_commands(session, battery_id)
                row = session.get(TwinRow, battery_id)
                if row is None:
                    raise NotFoundError(f"battery {battery_id!r} is not registered")
                current = twin_document(row)
                patched = patch_desired(current, patch, now, if_match=if_match)
                won = self._store_desired(session, current.version, patched, now)
                if won:
                    queue_desired_commands(
                        session, battery_id, current.desired, patched.desired, now
                    )
                    return patched
                if if_match is not None:
                    actual = session.scalar(
                        select(TwinRow.version).where(TwinRow.battery_id == battery_id)
                    )
                    raise VersionConflictError(expected=if_match, actual=int(actual or 0))
        raise ConcurrentUpdateError(expected=current.version, actual=current.version + 1)

    @staticmethod
    def _store_desired(
        session: Session, read_version: int, patched: TwinDocument, now: datetime
    ) -> bool:
        """The conditional UPDATE; False when another writer changed the version first."""
        metadata: dict[str, Any] = {
            path: stamp.isoformat() for path, stamp in patched.metadata.desired.items()
        }
        result = session.execute(
            update(TwinRow)
            .where(TwinRow.battery_id == patched.battery_id, TwinRow.version == read_version)
            .values(
                version=read_version + 1,
                desired=patched.desired,
                desired_metadata=metadata,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        won = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if won:
            note_changed(session, twins=[patched.battery_id])
        return won
