"""``/api/v1/batteries/{battery_id}/eis``: EIS spectra in (POST, devices) and out (GET).

POST is the telemetry ingestion path (``cloud.api.telemetry``) restricted to ``eis`` records:
the same ``UplinkBatch`` body (gzip taken), idempotent by ``(battery, seq)``, whole or nothing,
429 over the rate limit. GET returns the stored spectra, one per (EIS event, cell), rows by
increasing frequency (amplitude ``|Z|`` in ohm, phase in degrees).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from cloud.api.deps import Access, IngestionDep, StateDep, require
from cloud.api.errors import BATTERY_RESPONSES
from cloud.api.telemetry import (
    INGEST_RESPONSES,
    RawBody,
    batch_body_openapi,
    ingest_body,
    limit_query,
    require_timezone,
)
from cloud.security.policy import Action, Category
from cloud.services.history import EisSpectrumView, HistoryService
from cloud.services.ingestion import IngestResult
from twin.base import CellId

router = APIRouter(prefix="/api/v1", tags=["eis"])
EIS_KINDS = frozenset({"eis"})


@router.post(
    "/batteries/{battery_id}/eis",
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
    openapi_extra=batch_body_openapi(
        "An UplinkBatch of this battery holding only eis records (one spectrum or part of "
        "one per record); Content-Encoding: gzip is taken."
    ),
)
def post_eis(
    access: Annotated[Access, Depends(require(Category.EIS, Action.WRITE))],
    body: RawBody,
    state: StateDep,
    ingestion: IngestionDep,
) -> IngestResult:
    """Store EIS records whole or refuse them whole (422); idempotent by ``(battery, seq)``."""
    return ingest_body(state, access, ingestion, body, kinds=EIS_KINDS)


@router.get(
    "/batteries/{battery_id}/eis",
    response_model=list[EisSpectrumView],
    responses=BATTERY_RESPONSES,
)
def get_eis(
    access: Annotated[Access, Depends(require(Category.EIS, Action.READ))],
    state: StateDep,
    start: Annotated[
        datetime | None, Query(description="Inclusive start, ISO 8601 with a timezone")
    ] = None,
    end: Annotated[
        datetime | None, Query(description="Exclusive end, ISO 8601 with a timezone")
    ] = None,
    cell_id: Annotated[CellId | None, Query(description="Only this cell")] = None,
    event_id: Annotated[str | None, Query(max_length=64, description="Only this EIS event")] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Most rows (all spectra together); more is a 422")
    ] = None,
) -> list[EisSpectrumView]:
    """Spectra measured in ``[start, end)`` (no bound when absent), oldest first."""
    require_timezone(start, end)
    history = HistoryService(state.db, max_rows=state.settings.history_max_rows)
    return history.eis(
        access.battery_id,
        start=start,
        end=end,
        cell_id=cell_id,
        event_id=event_id,
        limit=limit_query(state.settings, limit),
    )
