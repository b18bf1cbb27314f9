"""Cloud-to-edge commands (SPEC 3.3) and their durable lifecycle.

A command is queued in the cloud, delivered to the edge (MQTT or HTTP poll), and acknowledged by
the edge with success or a reason; or it expires (TTL) or is cancelled first. The payload type
tells what the edge must do; ``payload.type`` is the command's type.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, StringConstraints, model_validator

from twin.base import (
    B2LModel,
    BatteryId,
    CellId,
    PositiveFloat,
    ShortText,
    StorableJson,
    UtcDatetime,
)
from twin.errors import TwinValidationError

MIN_REPORTING_PERIOD_S = 0.1
MAX_REPORTING_PERIOD_S = 86_400.0


class EisCommand(B2LModel):
    """Start an EIS measurement on some cells of a Pillar 1 BMS."""

    type: Literal["eis_start"] = "eis_start"
    cell_ids: Annotated[list[CellId], Field(min_length=1, max_length=1024)]
    f_start_hz: Annotated[float, Field(gt=0.0, le=1.0e5)]
    f_stop_hz: Annotated[float, Field(gt=0.0, le=1.0e5)]
    points_per_decade: Annotated[int, Field(ge=1, le=50)] = 10
    amplitude_a: Annotated[float, Field(gt=0.0, le=100.0)]

    @model_validator(mode="after")
    def _range(self) -> EisCommand:
        if self.f_start_hz == self.f_stop_hz:
            raise ValueError("f_start_hz and f_stop_hz must differ")
        if len(set(self.cell_ids)) != len(self.cell_ids):
            raise ValueError("cell_ids must be distinct")
        return self


class RcPair(B2LModel):
    """One RC element of the equivalent circuit."""

    r_ohm: PositiveFloat
    c_f: PositiveFloat


class EcmParameters(B2LModel):
    """Equivalent-circuit parameters from the cloud's EIS-DRT fit, versioned."""

    type: Literal["ecm_parameters"] = "ecm_parameters"
    version: Annotated[int, Field(ge=1)]
    cell_ids: list[CellId] | None = None
    """None: every cell."""
    r0_ohm: PositiveFloat
    rc_pairs: Annotated[list[RcPair], Field(min_length=1, max_length=3)]


class ReportingPeriod(B2LModel):
    """Report at another rate, for a while (the seed's time scheduler)."""

    type: Literal["reporting_period"] = "reporting_period"
    period_s: Annotated[float, Field(ge=MIN_REPORTING_PERIOD_S, le=MAX_REPORTING_PERIOD_S)]
    duration_s: Annotated[float, Field(gt=0.0, le=30 * 86_400.0)] | None = None
    """None: until told otherwise; else the default rate comes back after this long."""


class ModelUpdate(B2LModel):
    """Replace the edge estimator's parameters (a parameter set of the twin core)."""

    type: Literal["model_update"] = "model_update"
    model: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    parameters: dict[str, StorableJson]


CommandPayload = Annotated[
    EisCommand | EcmParameters | ReportingPeriod | ModelUpdate, Field(discriminator="type")
]


class CommandStatus(StrEnum):
    """Where a command is in its lifecycle."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """No further change is possible."""
        return self in _FINAL


_FINAL = frozenset(
    {CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.EXPIRED, CommandStatus.CANCELLED}
)
_ALLOWED: dict[CommandStatus, frozenset[CommandStatus]] = {
    CommandStatus.QUEUED: frozenset(
        {
            CommandStatus.DELIVERED,
            CommandStatus.SUCCEEDED,
            CommandStatus.FAILED,
            CommandStatus.EXPIRED,
            CommandStatus.CANCELLED,
        }
    ),
    CommandStatus.DELIVERED: frozenset(
        {
            CommandStatus.DELIVERED,
            CommandStatus.SUCCEEDED,
            CommandStatus.FAILED,
            CommandStatus.EXPIRED,
            CommandStatus.CANCELLED,
        }
    ),
}


def check_command_transition(old: CommandStatus, new: CommandStatus) -> None:
    """Raise TwinValidationError unless ``old -> new`` is a step of the lifecycle.

    Redelivery (delivered -> delivered) is allowed: an edge may fetch a command twice. An ack may
    arrive before the delivery was recorded (queued -> succeeded). Final states never change.
    """
    if new not in _ALLOWED.get(old, frozenset()):
        raise TwinValidationError(f"a command cannot go from {old.value} to {new.value}")


class Command(B2LModel):
    """A command as the edge receives it."""

    command_id: UUID
    battery_id: BatteryId
    created_at: UtcDatetime
    expires_at: UtcDatetime
    payload: CommandPayload

    @model_validator(mode="after")
    def _ttl(self) -> Command:
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        return self

    def is_expired(self, now: datetime) -> bool:
        """Whether the command's TTL has run out at ``now``."""
        return now >= self.expires_at


class CommandAck(B2LModel):
    """The edge's answer to a command: it succeeded, or it failed with a reason."""

    command_id: UUID
    status: Literal[CommandStatus.SUCCEEDED, CommandStatus.FAILED]
    reason: ShortText | None = None
    timestamp: UtcDatetime
    result: dict[str, StorableJson] | None = None

    @model_validator(mode="after")
    def _reason_on_failure(self) -> CommandAck:
        if self.status is CommandStatus.FAILED and not self.reason:
            raise ValueError("a failed command needs a reason")
        return self

    def final_status_from(self, old: CommandStatus) -> CommandStatus:
        """The status the command takes; raises if it is already final."""
        check_command_transition(old, self.status)
        return self.status
