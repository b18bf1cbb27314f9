"""``/api/v1/batteries/{battery_id}/grants``: the owner of a battery gives access to it.

SPEC section 5: an owner grants a user access to some batteries and some categories, for a time
window. The owner is the user named in ``batteries.owner`` (set when an admin registers the
battery); admins may act for every battery. The grants made here cover this battery only;
grants on every battery stay with admins (``/api/v1/admin/grants``). Every change is audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from cloud.api.admin import GrantableCategory, GrantOut, grant_out
from cloud.api.deps import BatteryIdPath, CurrentPrincipal, StateDep
from cloud.api.errors import AUTH_RESPONSES, ErrorBody
from cloud.security.errors import PermissionDeniedError
from cloud.security.policy import Principal, Role
from cloud.services import accounts
from cloud.services.batteries import battery_parties
from twin.base import BATTERY_ID_PATTERN

router = APIRouter(prefix="/api/v1", tags=["grants"])

OWNER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    403: {"model": ErrorBody, "description": "Only the battery's owner (or an admin)"},
    404: {"model": ErrorBody, "description": "No such battery, user or grant"},
}


class BatteryGrantCreate(BaseModel):
    """Access of a user to this battery for some categories, from/until."""

    model_config = ConfigDict(extra="forbid")

    user: Annotated[str, Field(pattern=BATTERY_ID_PATTERN)]
    categories: Annotated[
        list[GrantableCategory],
        Field(min_length=1, max_length=8, description="Data categories the grant covers"),
    ]
    valid_from: AwareDatetime | None = Field(default=None, description="Default: now")
    valid_until: AwareDatetime | None = Field(default=None, description="Exclusive; None: no end")


def owner_of_battery(
    battery_id: BatteryIdPath, principal: CurrentPrincipal, state: StateDep
) -> Principal:
    """The caller if it owns the battery (or is an admin): 404 without the battery, else 403."""
    with state.db.read() as session:
        _, owner = battery_parties(session, battery_id)
    if principal.role is Role.ADMIN or (not principal.is_device and principal.subject == owner):
        return principal
    raise PermissionDeniedError("only the battery's owner (or an admin) manages its grants")


OwnerDep = Annotated[Principal, Depends(owner_of_battery)]


@router.post(
    "/batteries/{battery_id}/grants",
    response_model=GrantOut,
    status_code=201,
    responses=OWNER_RESPONSES,
)
def create_battery_grant(
    battery_id: BatteryIdPath, owner: OwnerDep, body: BatteryGrantCreate, state: StateDep
) -> GrantOut:
    """Grant a user access to this battery for some categories and a time window."""
    now = state.clock()
    grant_id = accounts.grant_access(
        state.db,
        user_name=body.user,
        battery_id=battery_id,
        categories=body.categories,
        valid_from=body.valid_from or now,
        valid_until=body.valid_until,
        granted_by=owner.subject,
        now=now,
        actor=owner,
    )
    return grant_out(accounts.list_grants(state.db, grant_id=grant_id)[0])


@router.get(
    "/batteries/{battery_id}/grants", response_model=list[GrantOut], responses=OWNER_RESPONSES
)
def list_battery_grants(
    battery_id: BatteryIdPath, owner: OwnerDep, state: StateDep
) -> list[GrantOut]:
    """The grants that cover this battery (its own, and admins' grants on every battery)."""
    del owner
    return [grant_out(g) for g in accounts.list_grants(state.db, battery_id=battery_id)]


@router.delete(
    "/batteries/{battery_id}/grants/{grant_id}",
    status_code=204,
    response_class=Response,
    responses=OWNER_RESPONSES,
)
def delete_battery_grant(
    battery_id: BatteryIdPath,
    owner: OwnerDep,
    grant_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    state: StateDep,
) -> Response:
    """Withdraw a grant on this battery: the access ends at once."""
    accounts.revoke_grant(state.db, grant_id, battery_id=battery_id, actor=owner, now=state.clock())
    return Response(status_code=204)
