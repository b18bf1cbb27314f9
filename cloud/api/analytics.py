"""``/api/v1/batteries/{battery_id}/analytics``: a summary computed from the stored data.

SoH trend and fade (Pillar 2), equivalent cycles, the warranty reference of the sizing
parameters, the cloud mirror's SoC against the edge's, events and records counted
(``cloud.services.analytics``). Category ``analytics``, read (audited).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from cloud.api.deps import Access, DatabaseDep, require
from cloud.api.errors import BATTERY_RESPONSES
from cloud.api.telemetry import require_timezone
from cloud.security.policy import Action, Category
from cloud.services.analytics import AnalyticsService, AnalyticsSummary

router = APIRouter(prefix="/api/v1", tags=["analytics"])


@router.get(
    "/batteries/{battery_id}/analytics",
    response_model=AnalyticsSummary,
    responses=BATTERY_RESPONSES,
)
def get_analytics(
    access: Annotated[Access, Depends(require(Category.ANALYTICS, Action.READ))],
    db: DatabaseDep,
    start: Annotated[
        datetime | None, Query(description="Inclusive start (ISO 8601, timezone); none: all")
    ] = None,
    end: Annotated[
        datetime | None, Query(description="Exclusive end (ISO 8601, timezone); none: all")
    ] = None,
    bucket_s: Annotated[
        int, Query(ge=60, le=366 * 86_400, description="SoH trend bucket width in seconds")
    ] = 86_400,
) -> AnalyticsSummary:
    """The battery's analytics summary over ``[start, end)``."""
    require_timezone(start, end)
    return AnalyticsService(db).summary(access.battery_id, start=start, end=end, bucket_s=bucket_s)
