"""``/api/v1/batteries/{battery_id}/passport``: the battery passport by access tier.

- ``GET …/passport``: the attributes the caller's tier shows (EU 2023/1542 Annex XIII): public
  for every authenticated caller; legitimate interest with a ``passport-restricted`` grant
  (the lifecycle status is shown from this tier up); authority for admins and the battery's
  manufacturer. A read above the public tier is audited.
- ``PUT …/passport``: the battery's manufacturer (or an admin, or a manufacturer granted
  ``passport-restricted`` writes) replaces the attributes; an optional ``lifecycle_status``
  changes the status in the same transaction (409 if the life cycle forbids it). Both audited.
- ``GET …/passport/export``: the same view as Battery Pass JSON (DIN DKE SPEC 99100 names).
- ``GET …/passport/status-history``: every lifecycle status with who and when (legitimate
  interest tier: a ``passport-restricted`` read).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cloud.api.deps import Access, AppState, StateDep, require
from cloud.api.errors import BATTERY_RESPONSES, ErrorBody
from cloud.security.policy import Action, Category
from cloud.services.audit import record_audit
from cloud.services.passports import LifecycleChange, PassportService, PassportView
from twin.base import ShortText
from twin.passport import AccessTier, ExtensionAttribute, LifecycleStatus, Passport

router = APIRouter(prefix="/api/v1", tags=["passport"])

PUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BATTERY_RESPONSES,
    409: {"model": ErrorBody, "description": "The life cycle forbids this status change"},
}


class PassportWrite(BaseModel):
    """A whole passport: catalogue attributes (Battery Pass names), ``x-`` extensions with
    their declarations, and optionally a new lifecycle status."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, JsonValue] = Field(
        default_factory=dict, description="Attribute name → value (unknown names: 422)"
    )
    extensions: dict[str, ExtensionAttribute] = Field(
        default_factory=dict, description="Declarations (tier, unit) of the x- attributes"
    )
    lifecycle_status: LifecycleStatus | None = Field(
        default=None, description="Move the battery to this status (audited)"
    )
    reason: ShortText | None = Field(default=None, description="Why the status changes")


class PassportExport(BaseModel):
    """The passport as Battery Pass JSON for the caller's access tier."""

    model_config = ConfigDict(extra="allow")

    batteryPassport: dict[str, JsonValue]


def _audit_tier(state: AppState, access: Access, tier: AccessTier, what: str) -> None:
    """Audit a read above the public tier (committed before the data is served)."""
    if tier <= AccessTier.PUBLIC:
        return
    with state.db.write() as session:
        record_audit(
            session,
            actor=access.principal,
            action=Action.READ.value,
            outcome="allowed",
            battery_id=access.battery_id,
            category=Category.PASSPORT_RESTRICTED.value,
            detail={"what": what, "tier": tier.label},
            at=access.now,
        )


@router.get(
    "/batteries/{battery_id}/passport",
    response_model=PassportView,
    responses=BATTERY_RESPONSES,
)
def get_passport(
    access: Annotated[Access, Depends(require(Category.PASSPORT_PUBLIC, Action.READ))],
    state: StateDep,
) -> PassportView:
    """The passport attributes the caller's access tier shows."""
    tier = access.passport_tier
    _audit_tier(state, access, tier, "passport")
    return PassportService(state.db).get(access.battery_id, tier)


@router.put(
    "/batteries/{battery_id}/passport",
    response_model=PassportView,
    responses=PUT_RESPONSES,
)
def put_passport(
    access: Annotated[Access, Depends(require(Category.PASSPORT_RESTRICTED, Action.WRITE))],
    body: PassportWrite,
    state: StateDep,
) -> PassportView:
    """Replace the passport (and change the lifecycle status), audited; the new view."""
    passport = Passport(
        battery_id=access.battery_id,
        attributes=body.attributes,
        extensions=body.extensions,
    )
    service = PassportService(state.db)
    service.put(
        access.battery_id,
        passport,
        by=access.principal.subject,
        now=access.now,
        lifecycle_status=body.lifecycle_status,
        reason=body.reason,
        actor=access.principal,
    )
    return service.get(access.battery_id, access.passport_tier)


@router.get(
    "/batteries/{battery_id}/passport/export",
    response_model=PassportExport,
    responses=BATTERY_RESPONSES,
)
def export_passport(
    access: Annotated[Access, Depends(require(Category.PASSPORT_PUBLIC, Action.READ))],
    state: StateDep,
) -> PassportExport:
    """The passport as Battery Pass JSON (attributes grouped by data-model category)."""
    tier = access.passport_tier
    _audit_tier(state, access, tier, "passport.export")
    return PassportExport.model_validate(PassportService(state.db).export(access.battery_id, tier))


@router.get(
    "/batteries/{battery_id}/passport/status-history",
    response_model=list[LifecycleChange],
    responses=BATTERY_RESPONSES,
)
def status_history(
    access: Annotated[Access, Depends(require(Category.PASSPORT_RESTRICTED, Action.READ))],
    state: StateDep,
) -> list[LifecycleChange]:
    """Every lifecycle status of the battery, oldest first (registration included)."""
    return PassportService(state.db).status_history(access.battery_id)
