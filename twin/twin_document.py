"""The twin document of a battery: reported state, desired state, their delta, and metadata.

- ``reported``: what the battery is (latest cell values, pack aggregates, the edge's estimates);
  written by ingestion.
- ``desired``: what operators want (reporting period, ECM parameters, EIS schedule); written
  through the API with optimistic concurrency on ``version``.
- ``delta``: the desired values the reported state does not show yet.
- ``metadata``: when each leaf of ``desired`` and ``reported`` last changed (dotted paths).

``version`` counts changes of the desired state only: reported values change every second and
would otherwise make every operator's ``If-Match`` stale at once. Updates use JSON Merge Patch
(RFC 7396): a ``null`` removes a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import Field, JsonValue, ValidationError

from twin.base import B2LModel, BatteryId, CellId, UtcDatetime
from twin.commands import MAX_REPORTING_PERIOD_S, MIN_REPORTING_PERIOD_S, EcmParameters
from twin.errors import TwinValidationError, VersionConflictError

JsonObject = dict[str, JsonValue]
_Stamp = TypeVar("_Stamp")


class EisSchedule(B2LModel):
    """Run EIS on some cells every ``interval_s``."""

    interval_s: Annotated[float, Field(ge=60.0)]
    cell_ids: Annotated[list[CellId], Field(min_length=1, max_length=1024)]
    f_start_hz: Annotated[float, Field(gt=0.0, le=1.0e5)]
    f_stop_hz: Annotated[float, Field(gt=0.0, le=1.0e5)]
    amplitude_a: Annotated[float, Field(gt=0.0, le=100.0)]


class DesiredState(B2LModel):
    """The keys an operator may set in ``desired``."""

    reporting_period_s: (
        Annotated[float, Field(ge=MIN_REPORTING_PERIOD_S, le=MAX_REPORTING_PERIOD_S)] | None
    ) = None
    ecm_parameters: EcmParameters | None = None
    eis_schedule: EisSchedule | None = None


class TwinMetadata(B2LModel):
    """Last-change timestamps of every leaf, by dotted path."""

    desired: dict[str, UtcDatetime] = Field(default_factory=dict)
    reported: dict[str, UtcDatetime] = Field(default_factory=dict)


class TwinDocument(B2LModel):
    """One battery's twin."""

    battery_id: BatteryId
    version: Annotated[int, Field(ge=0)] = 0
    reported: JsonObject = Field(default_factory=dict)
    desired: JsonObject = Field(default_factory=dict)
    delta: JsonObject = Field(default_factory=dict)
    metadata: TwinMetadata = Field(default_factory=TwinMetadata)


def merge_patch(target: JsonObject, patch: JsonObject) -> JsonObject:
    """RFC 7396 JSON Merge Patch of two objects; returns a new object, inputs untouched."""
    result: dict[str, Any] = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            old = result.get(key)
            result[key] = merge_patch(old if isinstance(old, dict) else {}, value)
        else:
            result[key] = value
    return result


def compute_delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """The parts of ``desired`` that ``reported`` does not equal (recursing into objects)."""
    delta: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = compute_delta(want, have)
            if sub:
                delta[key] = sub
        elif want != have:
            delta[key] = want
    return delta


def leaf_paths(document: JsonObject, prefix: str = "") -> dict[str, JsonValue]:
    """Every leaf of a JSON object by dotted path (``ecm_parameters.r0_ohm``)."""
    leaves: dict[str, JsonValue] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves.update(leaf_paths(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


def touched_stamps(
    old: JsonObject, new: JsonObject, stamps: Mapping[str, _Stamp], now: _Stamp
) -> dict[str, _Stamp]:
    """Per-leaf stamps after ``old`` became ``new``: changed and new leaves get ``now``, the
    others keep theirs, removed leaves go. Stamps of any type (datetimes, stored ISO text)."""
    old_leaves, new_leaves = leaf_paths(old), leaf_paths(new)
    return {
        path: (stamps.get(path, now) if old_leaves.get(path, _MISSING) == value else now)
        for path, value in new_leaves.items()
    }


_MISSING = object()


def merge_patch_stamped(
    target: JsonObject, stamps: Mapping[str, _Stamp], patch: JsonObject, now: _Stamp
) -> tuple[JsonObject, dict[str, _Stamp]]:
    """``merge_patch(target, patch)`` and the ``touched_stamps`` of that change, in one walk of
    the patch: what it leaves alone is neither visited nor re-stamped (the ingestion path).

    ``stamps`` must hold one stamp per leaf of ``target``, as ``touched_stamps`` leaves them.
    """
    out = dict(stamps)
    return _merge_stamped(target, patch, out, now, ""), out


def _merge_stamped(
    target: JsonObject, patch: JsonObject, stamps: dict[str, _Stamp], now: _Stamp, prefix: str
) -> JsonObject:
    result: dict[str, Any] = dict(target)
    for key, value in patch.items():
        path = f"{prefix}{key}"
        old = result.get(key, _MISSING)
        subtree = isinstance(old, dict) and bool(old)
        if value is None:
            result.pop(key, None)
            stamps.pop(path, None)
            if subtree:
                _drop_under(stamps, f"{path}.")
        elif isinstance(value, dict):
            merged = _merge_stamped(old if subtree else {}, value, stamps, now, f"{path}.")
            result[key] = merged
            if merged:
                stamps.pop(path, None)  # no longer a leaf, if it was one
            else:  # an empty object is a leaf
                stamps[path] = stamps.get(path, now) if old == {} else now
        else:
            result[key] = value
            if subtree:
                _drop_under(stamps, f"{path}.")
            same = old is not _MISSING and not subtree and old == value
            stamps[path] = stamps.get(path, now) if same else now
    return result


def _drop_under(stamps: dict[str, Any], prefix: str) -> None:
    for path in [p for p in stamps if p.startswith(prefix)]:
        del stamps[path]


def validate_desired(desired: JsonObject) -> DesiredState:
    """Parse a desired state; TwinValidationError says what is wrong."""
    try:
        return DesiredState.model_validate(desired)
    except ValidationError as exc:
        raise TwinValidationError(f"invalid desired state: {exc}") from exc


def patch_desired(
    twin: TwinDocument, patch: JsonObject, now: datetime, if_match: int | None = None
) -> TwinDocument:
    """Apply an operator's merge patch to ``desired``; bumps ``version``.

    ``if_match`` is the version the operator read; a different current version raises
    VersionConflictError and changes nothing. An invalid result raises TwinValidationError.
    """
    if if_match is not None and if_match != twin.version:
        raise VersionConflictError(expected=if_match, actual=twin.version)
    desired = validate_desired(merge_patch(twin.desired, patch)).model_dump(
        mode="json", exclude_none=True
    )
    metadata = TwinMetadata(
        desired=touched_stamps(twin.desired, desired, twin.metadata.desired, now),
        reported=twin.metadata.reported,
    )
    return twin.model_copy(
        update={
            "version": twin.version + 1,
            "desired": desired,
            "delta": compute_delta(desired, twin.reported),
            "metadata": metadata,
        }
    )


def update_reported(twin: TwinDocument, patch: JsonObject, now: datetime) -> TwinDocument:
    """Merge what the battery reports into ``reported``; ``version`` stays."""
    reported = merge_patch(twin.reported, patch)
    metadata = TwinMetadata(
        desired=twin.metadata.desired,
        reported=touched_stamps(twin.reported, reported, twin.metadata.reported, now),
    )
    return twin.model_copy(
        update={
            "reported": reported,
            "delta": compute_delta(twin.desired, reported),
            "metadata": metadata,
        }
    )


__all__ = [
    "DesiredState",
    "EisSchedule",
    "TwinDocument",
    "TwinMetadata",
    "compute_delta",
    "leaf_paths",
    "merge_patch",
    "merge_patch_stamped",
    "patch_desired",
    "touched_stamps",
    "update_reported",
    "validate_desired",
]
