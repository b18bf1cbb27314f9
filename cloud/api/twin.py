"""``/api/v1/batteries/{battery_id}/twin``: the twin document, its desired state, the mirror.

- ``GET …/twin``: ``version``, ``reported``, ``desired``, ``delta``, ``metadata``; the ``ETag``
  header is the desired-state version (``"3"``), the value to send back in ``If-Match``.
- ``PATCH …/twin/desired``: a JSON Merge Patch (RFC 7396) of the desired state. With
  ``If-Match: "<version>"`` it applies only to that version: a stale one is a 412 (whose
  ``ETag`` header is the current version). Without ``If-Match`` the patch is merged into
  whatever version is current (retried on a concurrent change); if it keeps losing to
  concurrent writers it is a 409. ``If-Match: *`` is the same as no header.
- ``GET …/twin/mirror``: the cloud mirror's SoC estimate (``cloud.services.mirror``).

The version counts desired-state changes only (reported values change every second), so the
ETag is not a validator of the reported part: there is no conditional GET.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cloud.api.deps import (
    Access,
    AppState,
    BatteryIdPath,
    CurrentPrincipal,
    DatabaseDep,
    NowDep,
    StateDep,
    authorize,
    cached_access_facts,
    judge,
    require,
)
from cloud.api.errors import BATTERY_RESPONSES, ErrorBody
from cloud.security.policy import Action, Category, Principal
from cloud.services.mirror import MirrorService, MirrorView
from cloud.services.twins import TwinService, twin_json
from twin.commands import MAX_REPORTING_PERIOD_S, MIN_REPORTING_PERIOD_S
from twin.twin_document import TwinDocument

router = APIRouter(prefix="/api/v1", tags=["twin"])

IF_MATCH_PATTERN = r'^\s*(\*|"[0-9]{1,18}"|[0-9]{1,18})\s*$'
PATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BATTERY_RESPONSES,
    409: {
        "model": ErrorBody,
        "description": "Without If-Match: the patch kept losing to concurrent changes; retry",
    },
    412: {
        "model": ErrorBody,
        "description": "If-Match names a stale version; the ETag header is the current one",
    },
}


class DesiredPatch(BaseModel):
    """A JSON Merge Patch of the desired state: a key set to ``null`` is removed, objects are
    merged key by key, and the result must be a valid desired state."""

    model_config = ConfigDict(extra="forbid")

    reporting_period_s: (
        Annotated[float, Field(ge=MIN_REPORTING_PERIOD_S, le=MAX_REPORTING_PERIOD_S)] | None
    ) = Field(default=None, description="Seconds between reports")
    ecm_parameters: dict[str, JsonValue] | None = Field(
        default=None, description="Equivalent-circuit parameters (twin.commands.EcmParameters)"
    )
    eis_schedule: dict[str, JsonValue] | None = Field(
        default=None, description="EIS schedule (twin.twin_document.EisSchedule)"
    )


def etag(version: int) -> str:
    """The strong ETag of a twin version."""
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    """The version in an ``If-Match`` header (None for no header or ``*``)."""
    if value is None:
        return None
    text = value.strip().strip('"')
    return None if text == "*" else int(text)


@router.get(
    "/batteries/{battery_id}/twin",
    response_model=TwinDocument,
    responses=BATTERY_RESPONSES,
)
async def get_twin(
    battery_id: BatteryIdPath,
    principal: CurrentPrincipal,
    state: StateDep,
    request: Request,
) -> Response:
    """The twin; its ``ETag`` header is the desired-state version for ``If-Match``."""
    twin = await _cached_twin(state, principal, battery_id, request)
    if twin is None:
        twin = await run_in_threadpool(_read_twin, state, principal, battery_id, request)
    version, body = twin
    return Response(body, media_type="application/json", headers={"ETag": etag(version)})


async def _cached_twin(
    state: AppState, principal: Principal, battery_id: str, request: Request
) -> tuple[int, bytes] | None:
    """The hot read path, when the access facts and the twin are both in this process's cache:
    no database read and no thread hop; the audit row goes through the group commit and is
    committed before anything is served. None on a miss (``_read_twin`` reads and caches)."""
    cache, writer = state.read_cache, state.audit_writer
    if cache is None or writer is None or not writer.in_its_loop():
        return None
    facts = cached_access_facts(state, principal, battery_id)
    twin = cache.twin(battery_id) if facts is not None else None
    if facts is None or twin is None:
        return None
    judgement = judge(state, principal, battery_id, Category.TELEMETRY, Action.READ, facts, request)
    if judgement.audit is not None:
        await writer.record(**judgement.audit)
    judgement.access_or_refuse()
    return twin


def _read_twin(
    state: AppState, principal: Principal, battery_id: str, request: Request
) -> tuple[int, bytes]:
    """``require(TELEMETRY, READ)`` and the read in one session, keeping the twin in the
    process's cache when there is one."""
    with state.db.read() as session:
        authorize(state, session, principal, battery_id, Category.TELEMETRY, Action.READ, request)
        cache = state.read_cache
        if cache is None:
            return twin_json(session, battery_id)
        stamp = cache.stamp(battery_id)
        twin = twin_json(session, battery_id)
        cache.put_twin(stamp, battery_id, twin)
        return twin


@router.patch(
    "/batteries/{battery_id}/twin/desired",
    response_model=TwinDocument,
    responses=PATCH_RESPONSES,
)
def patch_desired(
    access: Annotated[Access, Depends(require(Category.COMMANDS, Action.WRITE))],
    patch: DesiredPatch,
    db: DatabaseDep,
    now: NowDep,
    response: Response,
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            pattern=IF_MATCH_PATTERN,
            description='The version read (the ETag, e.g. "3"); stale: 412. Absent or *: '
            "merge into the current version.",
        ),
    ] = None,
) -> TwinDocument:
    """Merge-patch the desired state; the version goes up by one (new ``ETag``)."""
    document = TwinService(db).patch_desired(
        access.battery_id,
        patch.model_dump(mode="json", exclude_unset=True),
        if_match=parse_if_match(if_match),
        now=now,
    )
    response.headers["ETag"] = etag(document.version)
    return document


@router.get(
    "/batteries/{battery_id}/twin/mirror",
    response_model=MirrorView,
    responses=BATTERY_RESPONSES,
)
def get_mirror(
    access: Annotated[Access, Depends(require(Category.TELEMETRY, Action.READ))],
    db: DatabaseDep,
) -> MirrorView:
    """The cloud mirror: SoC and its standard deviation per cell from the cloud's own filter,
    and whether it currently disagrees with the edge's estimates."""
    return MirrorService(db).get(access.battery_id)
