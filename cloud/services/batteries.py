"""Battery registry: register a battery (topology, sizing, cell model), read and list them.

Registering creates the battery's empty twin and its passport (status ``original``), so every
other service can rely on both rows existing. The topology is fixed once registered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.clock import resolve_now
from cloud.db.engine import Database
from cloud.db.models import BatteryRow, LifecycleEventRow, PassportRow, SizingRow, TwinRow
from cloud.errors import AlreadyExistsError, NotFoundError
from twin.base import BatteryId
from twin.cell_params import CellParameters
from twin.errors import TwinValidationError
from twin.passport import LifecycleStatus
from twin.sizing import DiagnosticSizing
from twin.topology import BatteryTopology

MAX_LIST_LIMIT = 1000
_BATTERY_ID = TypeAdapter(BatteryId)


class BatteryView(BaseModel):
    """A registered battery as services and routes return it."""

    model_config = ConfigDict(frozen=True)

    battery_id: str
    topology: BatteryTopology
    manufacturer: str | None
    owner: str | None = None
    """The owner's user name: reads all of the battery and grants access to it."""
    created_at: datetime
    mirror_enabled: bool
    """Whether the cloud mirror runs (a cell model was given)."""


def check_battery_id(battery_id: str) -> str:
    """``battery_id`` if it is a valid battery id, else TwinValidationError."""
    try:
        return _BATTERY_ID.validate_python(battery_id)
    except ValidationError:
        raise TwinValidationError(
            f"invalid battery id {battery_id!r}: 1-64 letters, digits and . _ : -"
        ) from None


def get_battery_row(session: Session, battery_id: str) -> BatteryRow:
    """The battery's row; NotFoundError if it is not registered."""
    row = session.get(BatteryRow, battery_id)
    if row is None:
        raise NotFoundError(f"battery {battery_id!r} is not registered")
    return row


def battery_parties(session: Session, battery_id: str) -> tuple[str | None, str | None]:
    """``(manufacturer, owner)`` of a battery (for access decisions); NotFoundError without it."""
    row = session.execute(
        select(BatteryRow.manufacturer, BatteryRow.owner).where(BatteryRow.battery_id == battery_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no battery {battery_id!r}")
    return row[0], row[1]


def _view(row: BatteryRow) -> BatteryView:
    return BatteryView(
        battery_id=row.battery_id,
        topology=BatteryTopology.model_validate(row.topology),
        manufacturer=row.manufacturer,
        owner=row.owner,
        created_at=row.created_at,
        mirror_enabled=row.cell_parameters is not None,
    )


class BatteryService:
    """Register, read and list batteries; version their diagnostic-sizing parameters."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(
        self,
        battery_id: str,
        topology: BatteryTopology,
        *,
        sizing: DiagnosticSizing | None = None,
        cell_parameters: CellParameters | None = None,
        manufacturer: str | None = None,
        owner: str | None = None,
        now: datetime | None = None,
    ) -> BatteryView:
        """Register a battery with its empty twin and passport; AlreadyExistsError if taken."""
        check_battery_id(battery_id)
        now = resolve_now(now)
        try:
            with self.db.write() as session:
                if session.get(BatteryRow, battery_id) is not None:
                    raise AlreadyExistsError(f"battery {battery_id!r} is already registered")
                row = BatteryRow(
                    battery_id=battery_id,
                    topology=topology.model_dump(mode="json"),
                    cell_parameters=(
                        None
                        if cell_parameters is None
                        else cell_parameters.model_dump(mode="json", exclude_none=True)
                    ),
                    manufacturer=manufacturer,
                    owner=owner,
                    created_at=now,
                )
                session.add(row)
                session.flush()  # the battery first: the other rows refer to it
                session.add_all(self._initial_rows(battery_id, now))
                if sizing is not None:
                    session.add(_sizing_row(battery_id, sizing, now))
                view = _view(row)
        except IntegrityError:
            raise AlreadyExistsError(f"battery {battery_id!r} is already registered") from None
        return view

    @staticmethod
    def _initial_rows(battery_id: str, now: datetime) -> list[Any]:
        status = LifecycleStatus.ORIGINAL.value
        return [
            TwinRow(
                battery_id=battery_id,
                version=0,
                desired={},
                desired_metadata={},
                reported={},
                reported_metadata={},
                estimator_state=None,
                updated_at=now,
            ),
            PassportRow(
                battery_id=battery_id,
                attributes={},
                extensions={},
                lifecycle_status=status,
                updated_at=None,
                updated_by=None,
            ),
            LifecycleEventRow(
                battery_id=battery_id,
                old_status=None,
                new_status=status,
                changed_at=now,
                changed_by=None,
                reason="registered",
            ),
        ]

    def get(self, battery_id: str) -> BatteryView:
        """One battery; NotFoundError if unknown."""
        with self.db.read() as session:
            return _view(get_battery_row(session, battery_id))

    def list_batteries(self, *, limit: int = 100, after: str | None = None) -> list[BatteryView]:
        """Batteries ordered by id, ``limit`` at a time, starting after the id ``after``."""
        limit = max(1, min(limit, MAX_LIST_LIMIT))
        query = select(BatteryRow).order_by(BatteryRow.battery_id).limit(limit)
        if after is not None:
            query = query.where(BatteryRow.battery_id > after)
        with self.db.read() as session:
            return [_view(row) for row in session.scalars(query)]

    def exists(self, battery_id: str) -> bool:
        """Whether the battery is registered."""
        with self.db.read() as session:
            return session.get(BatteryRow, battery_id) is not None

    def cell_parameters(self, battery_id: str) -> CellParameters | None:
        """The cell model of the battery's mirror, None when the mirror is off."""
        with self.db.read() as session:
            row = get_battery_row(session, battery_id)
            if row.cell_parameters is None:
                return None
            return CellParameters.model_validate(row.cell_parameters)

    # -- diagnostic sizing (Table 1), versioned by its timestamp -------------------------------

    def add_sizing(
        self, battery_id: str, sizing: DiagnosticSizing, *, now: datetime | None = None
    ) -> DiagnosticSizing:
        """Store a new version of the sizing parameters; AlreadyExistsError for its timestamp."""
        now = resolve_now(now)
        try:
            with self.db.write() as session:
                get_battery_row(session, battery_id)
                taken = session.scalar(
                    select(SizingRow.id).where(
                        SizingRow.battery_id == battery_id, SizingRow.ts == sizing.timestamp
                    )
                )
                if taken is not None:
                    raise AlreadyExistsError(
                        f"battery {battery_id!r} already has sizing parameters of "
                        f"{sizing.timestamp.isoformat()}"
                    )
                session.add(_sizing_row(battery_id, sizing, now))
        except IntegrityError:
            raise AlreadyExistsError(
                f"battery {battery_id!r} already has sizing parameters of "
                f"{sizing.timestamp.isoformat()}"
            ) from None
        return sizing

    def get_sizing(self, battery_id: str, *, at: datetime | None = None) -> DiagnosticSizing:
        """The newest sizing parameters (computed at or before ``at``); NotFoundError if none."""
        query = (
            select(SizingRow.parameters)
            .where(SizingRow.battery_id == battery_id)
            .order_by(SizingRow.ts.desc())
            .limit(1)
        )
        if at is not None:
            query = query.where(SizingRow.ts <= at)
        with self.db.read() as session:
            get_battery_row(session, battery_id)
            parameters = session.scalar(query)
        if parameters is None:
            raise NotFoundError(f"battery {battery_id!r} has no sizing parameters")
        return DiagnosticSizing.model_validate(parameters)

    def list_sizing(self, battery_id: str) -> list[DiagnosticSizing]:
        """Every version of the sizing parameters, oldest first."""
        query = (
            select(SizingRow.parameters)
            .where(SizingRow.battery_id == battery_id)
            .order_by(SizingRow.ts)
        )
        with self.db.read() as session:
            get_battery_row(session, battery_id)
            return [DiagnosticSizing.model_validate(p) for p in session.scalars(query)]


def _sizing_row(battery_id: str, sizing: DiagnosticSizing, now: datetime) -> SizingRow:
    return SizingRow(
        battery_id=battery_id,
        ts=sizing.timestamp,
        parameters=sizing.model_dump(mode="json"),
        created_at=now,
    )
