"""Administration (admins only): users, device credentials, grants, battery registration.

- ``POST|GET /api/v1/admin/users``: create a user (name, role, password) / list users.
- ``POST|GET /api/v1/admin/devices``: new credentials for a battery's edge runtime; the secret is
  in this answer only (only its argon2 hash is kept) / list devices.
  ``DELETE /api/v1/admin/devices/{device_id}`` revokes one (its refresh tokens too).
- ``POST|GET /api/v1/admin/grants``, ``DELETE /api/v1/admin/grants/{grant_id}``: access of a
  user to a battery (or all) for some data categories over a time window.
- ``POST /api/v1/batteries``: register a battery (topology, optional sizing parameters and cell
  model for the mirror, manufacturer's user name).

Every change is written to the audit log. Admins give grants on every battery; the owner named
on a battery gives grants on it under ``/api/v1/batteries/{battery_id}/grants``
(``cloud.api.grants``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from cloud.api.deps import DatabaseDep, StateDep, require_role
from cloud.api.errors import AUTH_RESPONSES, ErrorBody
from cloud.security.passwords import MAX_PASSWORD_LENGTH
from cloud.security.policy import Principal, Role
from cloud.services import accounts
from cloud.services.audit import record_audit
from cloud.services.batteries import BatteryService, BatteryView
from twin.base import BATTERY_ID_PATTERN, BatteryId
from twin.cell_params import CellParameters
from twin.sizing import DiagnosticSizing
from twin.topology import BatteryTopology

router = APIRouter(prefix="/api/v1", tags=["admin"])

AdminDep = Annotated[Principal, Depends(require_role())]
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    403: {"model": ErrorBody, "description": "Only admins"},
}
CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ADMIN_RESPONSES,
    404: {"model": ErrorBody, "description": "A user or battery named in the body is unknown"},
    409: {"model": ErrorBody, "description": "The name or id is taken"},
}
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ADMIN_RESPONSES,
    404: {"model": ErrorBody, "description": "No such item"},
}
GrantableCategory = Literal[
    "passport-public", "passport-restricted", "telemetry", "eis", "analytics", "commands"
]
"""The data categories a grant can cover (``cloud.security.policy.DATA_CATEGORIES``)."""


class UserCreate(BaseModel):
    """A new user (devices are created under ``/admin/devices``)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=BATTERY_ID_PATTERN, description="Not starting with dev-")]
    role: Annotated[Role, Field(description="Any role but device")]
    password: Annotated[str, Field(min_length=8, max_length=MAX_PASSWORD_LENGTH)]


class UserOut(BaseModel):
    """A user (never its password hash)."""

    name: str
    role: str
    disabled: bool


class DeviceCreate(BaseModel):
    """New device credentials for one battery."""

    model_config = ConfigDict(extra="forbid")

    battery_id: BatteryId
    device_id: Annotated[
        str | None,
        Field(pattern=r"^dev-[A-Za-z0-9._:-]{1,60}$", description="Default: dev-<random>"),
    ] = None


class DeviceCredentials(BaseModel):
    """The device's id and secret: the secret is shown here once, never again."""

    device_id: str
    battery_id: str
    secret: str


class DeviceOut(BaseModel):
    """A device (never its secret)."""

    device_id: str
    battery_id: str
    created_at: datetime
    revoked: bool


class GrantCreate(BaseModel):
    """Access of a user to a battery (None: all) for some categories, from/until."""

    model_config = ConfigDict(extra="forbid")

    user: Annotated[str, Field(pattern=BATTERY_ID_PATTERN)]
    battery_id: BatteryId | None = Field(default=None, description="None: every battery")
    categories: Annotated[
        list[GrantableCategory],
        Field(
            min_length=1,
            max_length=8,
            description="Data categories the grant covers",
        ),
    ]
    valid_from: AwareDatetime | None = Field(default=None, description="Default: now")
    valid_until: AwareDatetime | None = Field(default=None, description="Exclusive; None: no end")


class GrantOut(BaseModel):
    """A stored grant."""

    grant_id: int
    user: str
    battery_id: str | None
    categories: list[str]
    valid_from: datetime
    valid_until: datetime | None
    granted_by: str
    created_at: datetime


class BatteryCreate(BaseModel):
    """A battery to register: id, topology, and optionally sizing, cell model, manufacturer."""

    model_config = ConfigDict(extra="forbid")

    battery_id: BatteryId
    topology: BatteryTopology
    sizing: DiagnosticSizing | None = Field(
        default=None, description="Diagnostic-sizing parameters (Table 1)"
    )
    cell_parameters: CellParameters | None = Field(
        default=None, description="Cell model: the cloud mirror runs only with one"
    )
    manufacturer: Annotated[
        str | None,
        Field(pattern=BATTERY_ID_PATTERN, description="User name of the manufacturer account"),
    ] = None
    owner: Annotated[
        str | None,
        Field(
            pattern=BATTERY_ID_PATTERN,
            description="User name of the owner: reads all of the battery and grants access",
        ),
    ] = None


def _audit(
    state: StateDep,
    admin: Principal,
    action: str,
    now: datetime,
    battery_id: str | None = None,
    **detail: Any,
) -> None:
    with state.db.write() as session:
        record_audit(
            session, actor=admin, action=action, battery_id=battery_id, detail=detail, at=now
        )


def grant_out(grant: accounts.GrantRecord) -> GrantOut:
    return GrantOut(
        grant_id=grant.grant_id,
        user=grant.user_name,
        battery_id=grant.battery_id,
        categories=grant.categories,
        valid_from=grant.valid_from,
        valid_until=grant.valid_until,
        granted_by=grant.granted_by,
        created_at=grant.created_at,
    )


# -- users -------------------------------------------------------------------------------------


@router.post("/admin/users", response_model=UserOut, status_code=201, responses=CREATE_RESPONSES)
def create_user(admin: AdminDep, body: UserCreate, state: StateDep) -> UserOut:
    """Create a user (argon2id hash of the password)."""
    now = state.clock()
    principal = accounts.create_user(
        state.db, state.security, body.name, body.role, body.password, now
    )
    _audit(state, admin, "user.create", now, name=body.name, role=principal.role.value)
    return UserOut(name=principal.subject, role=principal.role.value, disabled=False)


@router.get("/admin/users", response_model=list[UserOut], responses=ADMIN_RESPONSES)
def list_users(admin: AdminDep, db: DatabaseDep) -> list[UserOut]:
    """Every user, by name."""
    return [
        UserOut(name=name, role=role, disabled=disabled)
        for name, role, disabled in accounts.list_users(db)
    ]


# -- devices -----------------------------------------------------------------------------------


@router.post(
    "/admin/devices",
    response_model=DeviceCredentials,
    status_code=201,
    responses=CREATE_RESPONSES,
)
def create_device(admin: AdminDep, body: DeviceCreate, state: StateDep) -> DeviceCredentials:
    """Credentials for the edge runtime of a battery; keep the secret, it is not shown again."""
    now = state.clock()
    new = accounts.create_device(state.db, state.security, body.battery_id, now, body.device_id)
    _audit(state, admin, "device.create", now, body.battery_id, device_id=new.device_id)
    return DeviceCredentials(device_id=new.device_id, battery_id=new.battery_id, secret=new.secret)


@router.get("/admin/devices", response_model=list[DeviceOut], responses=ADMIN_RESPONSES)
def list_devices(
    admin: AdminDep,
    db: DatabaseDep,
    battery_id: Annotated[
        str | None, Query(pattern=BATTERY_ID_PATTERN, description="Only this battery's")
    ] = None,
) -> list[DeviceOut]:
    """Devices by id (never their secrets)."""
    return [
        DeviceOut(device_id=d, battery_id=b, created_at=c, revoked=r)
        for d, b, c, r in accounts.list_devices(db, battery_id)
    ]


@router.delete(
    "/admin/devices/{device_id}",
    status_code=204,
    response_class=Response,
    responses=DELETE_RESPONSES,
)
def revoke_device(
    admin: AdminDep,
    device_id: Annotated[str, Path(max_length=64)],
    state: StateDep,
) -> Response:
    """Revoke a device: no new tokens; its current access token lives until it expires."""
    now = state.clock()
    accounts.revoke_device(state.db, device_id, now)
    _audit(state, admin, "device.revoke", now, device_id=device_id)
    return Response(status_code=204)


# -- grants ------------------------------------------------------------------------------------


@router.post("/admin/grants", response_model=GrantOut, status_code=201, responses=CREATE_RESPONSES)
def create_grant(admin: AdminDep, body: GrantCreate, state: StateDep) -> GrantOut:
    """Grant a user access to a battery (or all) for some categories and a time window."""
    now = state.clock()
    grant_id = accounts.grant_access(
        state.db,
        user_name=body.user,
        battery_id=body.battery_id,
        categories=body.categories,
        valid_from=body.valid_from or now,
        valid_until=body.valid_until,
        granted_by=admin.subject,
        now=now,
        actor=admin,
    )
    return grant_out(accounts.list_grants(state.db, grant_id=grant_id)[0])


@router.get("/admin/grants", response_model=list[GrantOut], responses=ADMIN_RESPONSES)
def list_grants(
    admin: AdminDep,
    db: DatabaseDep,
    user: Annotated[str | None, Query(pattern=BATTERY_ID_PATTERN)] = None,
    battery_id: Annotated[
        str | None,
        Query(pattern=BATTERY_ID_PATTERN, description="Grants covering it (all-battery too)"),
    ] = None,
) -> list[GrantOut]:
    """Grants by id."""
    return [grant_out(g) for g in accounts.list_grants(db, user_name=user, battery_id=battery_id)]


@router.delete(
    "/admin/grants/{grant_id}",
    status_code=204,
    response_class=Response,
    responses=DELETE_RESPONSES,
)
def delete_grant(
    admin: AdminDep,
    grant_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    state: StateDep,
) -> Response:
    """Withdraw a grant: the access ends at once."""
    accounts.revoke_grant(state.db, grant_id, actor=admin, now=state.clock())
    return Response(status_code=204)


# -- batteries ---------------------------------------------------------------------------------


@router.post("/batteries", response_model=BatteryView, status_code=201, responses=CREATE_RESPONSES)
def register_battery(
    admin: AdminDep, body: BatteryCreate, state: StateDep, response: Response
) -> BatteryView:
    """Register a battery: its twin (empty) and passport (status original) are created."""
    now = state.clock()
    view = BatteryService(state.db).register(
        body.battery_id,
        body.topology,
        sizing=body.sizing,
        cell_parameters=body.cell_parameters,
        manufacturer=body.manufacturer,
        owner=body.owner,
        now=now,
    )
    _audit(state, admin, "battery.register", now, body.battery_id)
    response.headers["Location"] = f"/api/v1/batteries/{view.battery_id}"
    return view
