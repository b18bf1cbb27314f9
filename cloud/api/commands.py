"""``/api/v1/batteries/{battery_id}/commands``: cloud-to-edge commands and their lifecycle.

- ``POST …/commands`` (operators with a ``commands`` grant, admins): queue a command
  (``payload`` whose ``type`` is the kind, ``ttl_s``); 201 with ``Location``.
- ``GET …/commands``: newest first, filtered by ``status``; ``?pending=true``: the open ones
  (queued or delivered, not expired), oldest first. When the battery's **device** fetches them
  they are marked delivered: this is the edge's HTTP poll (``edge_runtime.uplink.http``).
- ``GET …/commands/{command_id}``: one command with its recorded transitions.
- ``POST …/commands/{command_id}/cancel``: cancel an open command (409 if it has ended).

The edge acknowledges a command with an ``ack`` record (``twin.uplink.AckRecord``) in an uplink
batch (``POST …/telemetry``, or MQTT): it rides the durable outbox, so no separate ack route.
Listed items are flat: the command's own fields (what the edge runs) plus its lifecycle fields.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cloud.api.deps import Access, DatabaseDep, SettingsDep, require
from cloud.api.errors import BATTERY_RESPONSES, ErrorBody
from cloud.security.policy import Action, Category
from cloud.services.commands import (
    MAX_LIST_LIMIT,
    MAX_TTL_S,
    MIN_TTL_S,
    CommandService,
    CommandTransition,
    CommandView,
)
from twin.commands import CommandPayload, CommandStatus

router = APIRouter(prefix="/api/v1", tags=["commands"])

COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BATTERY_RESPONSES,
    404: {"model": ErrorBody, "description": "No such battery, or no such command of it"},
}
CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    **COMMAND_RESPONSES,
    409: {"model": ErrorBody, "description": "The command has ended already"},
}
CommandIdPath = Annotated[uuid.UUID, Path(description="The command's id")]


class CommandCreate(BaseModel):
    """A command to queue: what to do (``payload.type`` is the kind) and for how long."""

    model_config = ConfigDict(extra="forbid")

    payload: CommandPayload
    ttl_s: Annotated[float, Field(ge=MIN_TTL_S, le=MAX_TTL_S)] | None = Field(
        default=None, description="Expire after this long unless acknowledged (default: 1 day)"
    )


class CommandOut(BaseModel):
    """A command (the fields the edge runs) with its lifecycle."""

    command_id: uuid.UUID
    battery_id: str
    created_at: datetime
    expires_at: datetime
    payload: CommandPayload
    status: CommandStatus
    created_by: str | None
    delivered_at: datetime | None
    delivery_count: int
    completed_at: datetime | None
    reason: str | None
    result: dict[str, JsonValue] | None
    updated_at: datetime


class CommandDetail(CommandOut):
    """A command with every recorded status change, oldest first."""

    transitions: list[CommandTransition]


def command_out(view: CommandView) -> CommandOut:
    """The flat API form of a command view."""
    command = view.command
    return CommandOut(
        command_id=command.command_id,
        battery_id=command.battery_id,
        created_at=command.created_at,
        expires_at=command.expires_at,
        payload=command.payload,
        status=view.status,
        created_by=view.created_by,
        delivered_at=view.delivered_at,
        delivery_count=view.delivery_count,
        completed_at=view.completed_at,
        reason=view.reason,
        result=view.result,
        updated_at=view.updated_at,
    )


async def _service(db: DatabaseDep, settings: SettingsDep) -> CommandService:
    return CommandService(db, default_ttl_s=settings.command_default_ttl_s)


CommandServiceDep = Annotated[CommandService, Depends(_service)]


@router.post(
    "/batteries/{battery_id}/commands",
    response_model=CommandOut,
    status_code=201,
    responses=BATTERY_RESPONSES,
)
def create_command(
    access: Annotated[Access, Depends(require(Category.COMMANDS, Action.WRITE))],
    body: CommandCreate,
    commands: CommandServiceDep,
    response: Response,
) -> CommandOut:
    """Queue a command for the battery's edge; it expires ``ttl_s`` from now unless acked."""
    view = commands.create(
        access.battery_id,
        body.payload,
        ttl_s=body.ttl_s,
        created_by=access.principal.subject,
        now=access.now,
    )
    response.headers["Location"] = (
        f"/api/v1/batteries/{access.battery_id}/commands/{view.command_id}"
    )
    return command_out(view)


@router.get(
    "/batteries/{battery_id}/commands",
    response_model=list[CommandOut],
    responses=BATTERY_RESPONSES,
)
def list_commands(
    access: Annotated[Access, Depends(require(Category.COMMANDS, Action.READ))],
    commands: CommandServiceDep,
    pending: Annotated[
        bool,
        Query(
            description="Only open commands, oldest first; fetched by the battery's device, "
            "they are marked delivered"
        ),
    ] = False,
    status: Annotated[CommandStatus | None, Query(description="Only this status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> list[CommandOut]:
    """The battery's commands (newest first), or its pending ones (oldest first)."""
    battery_id, now = access.battery_id, access.now
    if not pending:
        views = commands.list_commands(battery_id, status=status, limit=limit, now=now)
        return [command_out(v) for v in views]
    open_commands = commands.pending(battery_id, limit=limit, now=now)
    ids = [c.command_id for c in open_commands]
    if access.principal.is_device and ids:
        delivered = {v.command_id: v for v in commands.mark_delivered(battery_id, ids, now=now)}
        views = [delivered[i] for i in ids]
    else:
        views = [commands.get(battery_id, i, now=now) for i in ids]
    return [command_out(v) for v in views if status is None or v.status is status]


@router.get(
    "/batteries/{battery_id}/commands/{command_id}",
    response_model=CommandDetail,
    responses=COMMAND_RESPONSES,
)
def get_command(
    access: Annotated[Access, Depends(require(Category.COMMANDS, Action.READ))],
    command_id: CommandIdPath,
    commands: CommandServiceDep,
) -> CommandDetail:
    """One command with its transitions."""
    view = commands.get(access.battery_id, command_id, now=access.now)
    transitions = commands.history(access.battery_id, command_id)
    return CommandDetail(**command_out(view).model_dump(), transitions=transitions)


@router.post(
    "/batteries/{battery_id}/commands/{command_id}/cancel",
    response_model=CommandOut,
    responses=CANCEL_RESPONSES,
)
def cancel_command(
    access: Annotated[Access, Depends(require(Category.COMMANDS, Action.WRITE))],
    command_id: CommandIdPath,
    commands: CommandServiceDep,
) -> CommandOut:
    """Cancel a queued or delivered command (an edge that already runs it may still ack)."""
    view = commands.cancel(
        access.battery_id, command_id, by=access.principal.subject, now=access.now
    )
    return command_out(view)
