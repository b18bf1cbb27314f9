"""``/api/v1/batteries``: the battery registry (id, topology, manufacturer).

The registry is public-tier data (category ``passport-public``): every authenticated user
lists and reads every battery; a device sees only its own battery.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from cloud.api.deps import Access, CurrentPrincipal, DatabaseDep, require
from cloud.api.errors import AUTH_RESPONSES, BATTERY_RESPONSES
from cloud.security.policy import Action, Category
from cloud.services.batteries import MAX_LIST_LIMIT, BatteryService, BatteryView
from twin.base import BATTERY_ID_PATTERN

router = APIRouter(prefix="/api/v1", tags=["batteries"])


@router.get("/batteries", response_model=list[BatteryView], responses=AUTH_RESPONSES)
def list_batteries(
    principal: CurrentPrincipal,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="page size")] = 100,
    after: Annotated[
        str | None,
        Query(pattern=BATTERY_ID_PATTERN, description="start after this battery id (paging)"),
    ] = None,
) -> list[BatteryView]:
    """Registered batteries ordered by id (a device: only its own)."""
    service = BatteryService(db)
    if principal.is_device:
        own = principal.battery_id
        if own is None or (after is not None and own <= after) or not service.exists(own):
            return []
        return [service.get(own)]
    return service.list_batteries(limit=limit, after=after)


@router.get("/batteries/{battery_id}", response_model=BatteryView, responses=BATTERY_RESPONSES)
def get_battery(
    access: Annotated[Access, Depends(require(Category.PASSPORT_PUBLIC, Action.READ))],
    db: DatabaseDep,
) -> BatteryView:
    """One registered battery."""
    return BatteryService(db).get(access.battery_id)
