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
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud.clock import resolve_now
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
    patch_desired,
    update_reported,
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


def _trusted_document(row: TwinRow) -> TwinDocument:
    """As ``twin_document`` without re-validating what the database holds (ingestion path)."""
    metadata = TwinMetadata.model_construct(
        desired=row.desired_metadata, reported=row.reported_metadata
    )
    return TwinDocument.model_construct(
        battery_id=row.battery_id,
        version=row.version,
        reported=row.reported,
        desired=row.desired,
        delta={},
        metadata=metadata,
    )


def _utc_z(stamps: dict[str, Any]) -> dict[str, Any]:
    """Stored ISO stamps (``+00:00``) as the model serialises them (``Z``)."""
    return {
        path: stamp[:-6] + "Z" if isinstance(stamp, str) and stamp.endswith("+00:00") else stamp
        for path, stamp in stamps.items()
    }


def lock_twin(session: Session, battery_id: str) -> TwinRow:
    """The twin row, locked for this transaction on PostgreSQL (``SELECT ... FOR UPDATE``)."""
    row = session.scalar(select(TwinRow).where(TwinRow.battery_id == battery_id).with_for_update())
    if row is None:
        raise NotFoundError(f"battery {battery_id!r} has no twin (is it registered?)")
    return row


def merge_reported(row: TwinRow, patch: JsonObject, now: datetime) -> None:
    """Merge ``patch`` into the row's reported state and stamp the changed leaves."""
    if not patch:
        return
    updated = update_reported(_trusted_document(row), patch, now)
    row.reported = updated.reported
    row.reported_metadata = {
        path: stamp.isoformat() for path, stamp in updated.metadata.reported.items()
    }
    row.updated_at = now


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
        """The twin's version and its document as JSON, straight from what the database holds
        (written only through validated paths), without building the model: the read path."""
        with self.db.read() as session:
            row = session.get(TwinRow, battery_id)
            if row is None:
                raise NotFoundError(f"battery {battery_id!r} is not registered")
            document = {
                "battery_id": row.battery_id,
                "version": row.version,
                "reported": row.reported,
                "desired": row.desired,
                "delta": compute_delta(row.desired, row.reported),
                "metadata": {
                    "desired": _utc_z(row.desired_metadata),
                    "reported": _utc_z(row.reported_metadata),
                },
            }
            return row.version, json.dumps(document, separators=(",", ":")).encode()

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
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]
