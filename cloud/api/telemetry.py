"""``/api/v1/batteries/{battery_id}/telemetry``: device ingestion (POST) and history (GET).

POST takes an ``UplinkBatch`` (``twin.uplink``) as the edge sends it (``edge_runtime.uplink.http``):
JSON, optionally ``Content-Encoding: gzip``. The body is read raw and parsed with
``UplinkBatch.model_validate_json`` (the fast path), so a malformed body is a 422 with its
reasons, never a 500. The batch may hold every record kind (telemetry, eis, event, ack): acks of
commands travel this way. It is stored whole or refused whole (422, every reason listed), each
``(battery, seq)`` once, and answered 200 only after the commit. Devices write only their own
battery (403); the per-device rate limit answers 429 with ``Retry-After``.

GET reads the stored series (``cloud.services.history``): raw rows or ``min``/``max``/``avg``
per time bucket, computed in the database; more rows than the limit is a 422, not a truncation.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ValidationError

from cloud.api.deps import (
    Access,
    AppState,
    IngestionDep,
    SettingsDep,
    StateDep,
    limit_ingest_rate,
    require,
)
from cloud.api.errors import BATTERY_RESPONSES, RATE_LIMIT_RESPONSES, ErrorBody
from cloud.errors import (
    BatchRejectedError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    WrongBatteryError,
)
from cloud.security.errors import PermissionDeniedError
from cloud.security.policy import Action, Category, decide
from cloud.services.audit import record_audit
from cloud.services.history import (
    MAX_BUCKET_S,
    HistoryService,
    TelemetrySeries,
    TelemetrySource,
)
from cloud.services.ingestion import IngestResult, validation_reasons
from twin.base import CellId
from twin.errors import TwinValidationError
from twin.uplink import NUL_REASON, EisRecord, TelemetryRecord, UplinkBatch, has_nul

router = APIRouter(prefix="/api/v1", tags=["telemetry"])

MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest request body taken, as sent (compressed or not)."""
MAX_DECODED_BYTES = 128 * 1024 * 1024
"""The largest batch JSON taken after gzip decompression (a bigger one is a 413)."""
DEFAULT_WINDOW = timedelta(hours=1)
KIND_CATEGORY: dict[str, Category] = {
    "telemetry": Category.TELEMETRY,
    "eis": Category.EIS,
    "event": Category.EVENTS,
    "ack": Category.ACKS,
}
"""The data category a device (or admin) writes with each record kind."""
_BUCKET = re.compile(r"^([1-9][0-9]{0,8})(s|m|h|d)?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}

INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BATTERY_RESPONSES,
    **RATE_LIMIT_RESPONSES,
    413: {"model": ErrorBody, "description": "Body too large: send fewer records at a time"},
    415: {"model": ErrorBody, "description": "Not JSON, or an encoding other than gzip"},
}


# -- the request body ------------------------------------------------------------------------


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with every ``#/$defs/...`` reference replaced by its definition."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "discriminator"}
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` with no references (for a body the route reads raw)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline(schema, defs)
    return inlined


def batch_body_openapi(description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring an ``UplinkBatch`` JSON body (plain or gzip)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": inline_schema(UplinkBatch)}},
        }
    }


async def read_body(request: Request) -> bytes:
    """The request body, decompressed if ``Content-Encoding: gzip``; 413 above the limits,
    415 for a non-JSON content type or another encoding."""
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaError(f"send application/json, not {media or 'nothing'}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", ""):
        raise UnsupportedMediaError(f"content encoding {encoding!r}: only gzip is taken")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLargeError(f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding in ("gzip", "x-gzip"):
        body = gunzip(body, MAX_DECODED_BYTES)
    return body


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body of at most ``limit`` bytes (no gzip bomb gets through)."""
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BatchRejectedError("?", [f"body: not a valid gzip stream ({exc})"]) from None
    if len(out) > limit:
        raise PayloadTooLargeError(f"the decompressed body exceeds {limit} bytes")
    if not decoder.eof:
        raise BatchRejectedError("?", ["body: truncated gzip stream"])
    return out


RawBody = Annotated[bytes, Depends(read_body)]


def parse_batch(body: bytes, battery_id: str) -> UplinkBatch:
    """The batch in ``body``; 422 (BatchRejectedError) with every reason if it is not one."""
    if not body.strip():
        raise BatchRejectedError(battery_id, ["body: empty; send an UplinkBatch JSON object"])
    if has_nul(body):
        raise BatchRejectedError(battery_id, [NUL_REASON])
    try:
        return UplinkBatch.model_validate_json(body)
    except ValidationError as exc:  # malformed JSON included
        raise BatchRejectedError(battery_id, validation_reasons(exc)) from None


def batch_rows(records: Iterable[object]) -> int:
    """The rows a batch costs against the rate limit (a record counts at least one)."""
    rows = 0
    for record in records:
        if isinstance(record, TelemetryRecord):
            n = len(record.pillar1) + len(record.pillar2) + len(record.estimates)
            rows += max(1, n + len(record.packs))
        elif isinstance(record, EisRecord):
            rows += len(record.rows)
        else:
            rows += 1
    return rows


def ingest_body(
    state: AppState,
    access: Access,
    ingestion: IngestionDep,
    body: bytes,
    *,
    kinds: frozenset[str] | None = None,
) -> IngestResult:
    """Parse, check (battery, kinds, permissions, rate) and store one batch; the result after
    the commit. ``kinds``: the record kinds this route takes (None: all)."""
    metrics = state.metrics
    try:
        batch = parse_batch(body, access.battery_id)
        principal = access.principal
        if batch.battery_id != access.battery_id:
            if principal.is_device:
                raise WrongBatteryError(
                    f"a device of battery {principal.battery_id!r} cannot write "
                    f"battery {batch.battery_id!r}"
                )
            raise BatchRejectedError(
                access.battery_id,
                [
                    f"battery_id: the batch is of {batch.battery_id!r}, the path names "
                    f"{access.battery_id!r}"
                ],
            )
        present = {record.kind for record in batch.records}
        if kinds is not None and not present <= kinds:
            wrong = ", ".join(sorted(present - kinds))
            raise BatchRejectedError(
                access.battery_id,
                [f"records: this route takes {', '.join(sorted(kinds))} records, not {wrong}"],
            )
        _check_kinds(state, access, present)
        limit_ingest_rate(state, principal, batch_rows(batch.records))
        result = ingestion.ingest(batch, principal.battery_id if principal.is_device else None)
    except BatchRejectedError:
        metrics.rejects.labels(channel="http", reason="rejected").inc()
        raise
    except (WrongBatteryError, PermissionDeniedError):
        metrics.rejects.labels(channel="http", reason="forbidden").inc()
        raise
    _count(state, result)
    return result


def _check_kinds(state: AppState, access: Access, kinds: Iterable[str]) -> None:
    """403 unless the caller may write the category of every record kind present."""
    for kind in sorted(kinds):
        category = KIND_CATEGORY[kind]
        if category is access.category:
            continue
        decision = decide(
            access.principal,
            access.battery_id,
            category,
            Action.WRITE,
            access.now,
            access.grants,
            access.manufacturer,
        )
        if not decision:
            with state.db.write() as session:
                record_audit(
                    session,
                    actor=access.principal,
                    action=Action.WRITE.value,
                    outcome="denied",
                    battery_id=access.battery_id,
                    category=category.value,
                    detail={"reason": decision.reason, "record_kind": kind},
                    at=access.now,
                )
            raise PermissionDeniedError(f"{kind} records: {decision.reason}")


def _count(state: AppState, result: IngestResult) -> None:
    rows = state.metrics.rows_ingested
    if result.cell_rows:
        rows.labels(channel="http", kind="telemetry").inc(result.cell_rows)
    for kind, label in (("eis", "eis"), ("event", "events"), ("ack", "acks")):
        count = result.accepted_by_kind.get(kind, 0)
        if count:
            rows.labels(channel="http", kind=label).inc(count)


@router.post(
    "/batteries/{battery_id}/telemetry",
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
    openapi_extra=batch_body_openapi(
        "An UplinkBatch of this battery (any record kinds), as JSON; "
        "Content-Encoding: gzip is taken."
    ),
)
def post_telemetry(
    access: Annotated[Access, Depends(require(Category.TELEMETRY, Action.WRITE))],
    body: RawBody,
    state: StateDep,
    ingestion: IngestionDep,
) -> IngestResult:
    """Store an uplink batch whole, or refuse it whole (422 with every reason).

    Idempotent: a record whose ``(battery, seq)`` is stored already is counted in
    ``duplicates`` and not stored again, so the edge retries safely. 200 only after the
    commit. Acks of commands (``kind: ack``) and events travel in the same batches.
    """
    return ingest_body(state, access, ingestion, body)


# -- history -----------------------------------------------------------------------------------


def parse_bucket(text: str | None) -> int | None:
    """Seconds of a bucket given as ``300``, ``300s``, ``5m``, ``1h`` or ``1d``."""
    if text is None or text == "":
        return None
    match = _BUCKET.fullmatch(text.strip())
    if match is None:
        raise TwinValidationError(
            f"bucket {text!r}: a positive number of seconds, or with a unit s, m, h or d"
        )
    seconds = int(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    if seconds > MAX_BUCKET_S:
        raise TwinValidationError(f"bucket must be at most {MAX_BUCKET_S} s")
    return seconds


def require_timezone(start: datetime | None, end: datetime | None) -> None:
    """TwinValidationError (422) when ``start`` or ``end`` is naive or not representable in UTC."""
    for name, value in (("start", start), ("end", end)):
        if value is None:
            continue
        if value.tzinfo is None:
            raise TwinValidationError(f"{name} must carry a timezone (e.g. Z or +00:00)")
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise TwinValidationError(f"{name} is out of range once in UTC") from None


def time_window(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """``[start, end)``; defaults: the hour before ``end``, ``end`` = now. Naive times: 422."""
    require_timezone(start, end)
    end = end if end is not None else now
    if start is None:
        try:
            start = end - DEFAULT_WINDOW
        except OverflowError:
            raise TwinValidationError("end is too early for the default window") from None
    return start, end


StartQuery = Annotated[
    datetime | None,
    Query(description="Inclusive start, ISO 8601 with a timezone (default: end - 1 h)"),
]
EndQuery = Annotated[
    datetime | None, Query(description="Exclusive end, ISO 8601 with a timezone (default: now)")
]


def limit_query(settings: SettingsDep, limit: int | None) -> int | None:
    """``limit`` within the configured maximum (a larger one is a 422)."""
    if limit is not None and limit > settings.history_max_rows:
        raise TwinValidationError(f"limit must be at most {settings.history_max_rows}")
    return limit


@router.get(
    "/batteries/{battery_id}/telemetry",
    response_model=TelemetrySeries,
    responses=BATTERY_RESPONSES,
)
def get_telemetry(
    access: Annotated[Access, Depends(require(Category.TELEMETRY, Action.READ))],
    state: StateDep,
    cell_id: Annotated[
        list[CellId] | None,
        Query(description="Cells to return (repeat the parameter); packs: pack indexes"),
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    bucket: Annotated[
        str | None,
        Query(
            max_length=12,
            description="Bucket width: seconds (300) or with a unit (5m, 1h, 1d); absent: raw rows",
        ),
    ] = None,
    source: Annotated[TelemetrySource, Query(description="Which series")] = TelemetrySource.PILLAR1,
    field: Annotated[
        list[str] | None,
        Query(max_length=16, description="Value columns to return (repeat); default: all"),
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Most rows to return; more is a 422")
    ] = None,
) -> TelemetrySeries:
    """Cell (or pack) values with ``start <= timestamp < end``, raw or bucketed
    (``<field>_min|_max|_avg`` and ``count`` per bucket and cell, computed in the database)."""
    window = time_window(start, end, access.now)
    history = HistoryService(state.db, max_rows=state.settings.history_max_rows)
    return history.telemetry(
        access.battery_id,
        *window,
        source=source,
        cell_ids=cell_id,
        fields=field,
        bucket_s=parse_bucket(bucket),
        limit=limit_query(state.settings, limit),
    )
