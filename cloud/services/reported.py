"""What ingestion writes into a twin's ``reported`` state: pure functions, no database.

Layout of ``reported`` (cell and pack keys are decimal strings, JSON objects need them)::

    {"seq": 42, "timestamp": "...",                 newest record taken into account
     "cells": {"0": {"seq", "timestamp", "voltage_v", "temperature_c", "current_a", "sot",
                     "phase", "soc", "sos", "soh", "equivalent_cycles"}, ...},
     "packs": {"0": {"seq", "timestamp", "voltage_v", "current_a", "state", "faults"}},
     "estimates": {"0": {"seq", "timestamp", "soc", "soc_std", "sos"}},
     "aggregates": {"cell_count", "voltage_min_v", "voltage_max_v", "voltage_mean_v",
                    "temperature_min_c", "temperature_max_c", "soc_min", "soc_max",
                    "soc_mean", "current_a"},
     "reporting_period_s": ..., "ecm_parameters": {...}, ...}   what the edge runs with

Each cell, pack and estimate keeps its own ``seq``: a record older than what is shown (two
batches committed out of order) does not overwrite it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import JsonValue

from twin.measurements import CellEstimate, PackMeasurement, Pillar1CellMeasurement, Pillar2CellData
from twin.uplink import TelemetryRecord

JsonObject = dict[str, JsonValue]
AGGREGATED_KEYS = frozenset({"cells", "packs", "estimates"})
"""The parts of ``reported`` the aggregates are computed from."""
TELEMETRY_KEYS = frozenset({"seq", "timestamp", "cells", "packs", "estimates", "aggregates"})
"""Top-level keys of ``reported`` owned by telemetry; edge-reported settings may not use them."""

_Stamp = tuple[int, datetime]  # (seq, timestamp): ISO text only for what the patch shows
_M = TypeVar("_M")


def _newer(current: Mapping[str, Any], key: str, seq: int) -> bool:
    shown = current.get(key)
    return not (
        isinstance(shown, dict) and isinstance(shown.get("seq"), int) and shown["seq"] > seq
    )


def _pillar1(m: Pillar1CellMeasurement) -> dict[str, JsonValue]:
    return {
        "voltage_v": m.voltage_v,
        "temperature_c": m.temperature_c,
        "current_a": m.current_a,
        "sot": m.sot,
        "phase": m.phase,
        "soc": m.soc,
        "sos": m.sos,
    }


def _pillar2(m: Pillar2CellData) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {
        "soc": m.soc,
        "soh": m.soh,
        "sos": m.sos,
        "equivalent_cycles": m.equivalent_cycles,
    }
    if m.voltage_v is not None:
        out["voltage_v"] = m.voltage_v
    if m.temperature_c is not None:
        out["temperature_c"] = m.temperature_c
    return out


def _pack(m: PackMeasurement) -> dict[str, JsonValue]:
    return {
        "voltage_v": m.voltage_v,
        "current_a": m.current_a,
        "state": m.state,
        "faults": list(m.faults),
    }


def _estimate(m: CellEstimate) -> dict[str, JsonValue]:
    return {"soc": m.soc, "soc_std": m.soc_std, "sos": m.sos}


def _newest(
    latest: Mapping[int, tuple[_M, _Stamp]],
    shown: Any,
    convert: Callable[[_M], dict[str, JsonValue]],
) -> dict[str, JsonValue]:
    """The entries of ``latest`` newer than what ``shown`` holds, as reported objects."""
    shown = shown if isinstance(shown, dict) else {}
    group: dict[str, JsonValue] = {}
    for index, (value, (seq, ts)) in sorted(latest.items()):
        if _newer(shown, str(index), seq):
            group[str(index)] = {"seq": seq, "timestamp": ts.isoformat(), **convert(value)}
    return group


def telemetry_patch(records: Sequence[TelemetryRecord], reported: Mapping[str, Any]) -> JsonObject:
    """A merge patch with the newest value of every cell, pack and estimate in ``records``.

    ``records`` are in increasing seq order; only the last value of each cell is converted.
    """
    if not records:
        return {}
    p1: dict[int, tuple[Pillar1CellMeasurement, _Stamp]] = {}
    p2: dict[int, tuple[Pillar2CellData, _Stamp]] = {}
    latest_packs: dict[int, tuple[PackMeasurement, _Stamp]] = {}
    estimates: dict[int, tuple[CellEstimate, _Stamp]] = {}
    for record in records:
        stamp = (record.seq, record.timestamp)
        for m1 in record.pillar1:
            p1[m1.cell_id] = (m1, stamp)
        for m2 in record.pillar2:
            p2[m2.cell_id] = (m2, stamp)
        for pack in record.packs:
            latest_packs[pack.pack_index] = (pack, stamp)
        for estimate in record.estimates:
            estimates[estimate.cell_id] = (estimate, stamp)

    shown_cells = reported.get("cells") or {}
    cells: dict[str, JsonValue] = {}
    for cell_id in sorted(p1.keys() | p2.keys()):
        key = str(cell_id)
        parts: list[tuple[_Stamp, dict[str, JsonValue]]] = []
        first = p1.get(cell_id)
        if first is not None:
            parts.append((first[1], _pillar1(first[0])))
        second = p2.get(cell_id)
        if second is not None:
            parts.append((second[1], _pillar2(second[0])))
        parts.sort(key=lambda part: part[0])  # the newer source wins a shared key
        values: dict[str, JsonValue] = {}
        for _, part in parts:
            values.update(part)
        newest = parts[-1][0]
        if _newer(shown_cells, key, newest[0]):
            cells[key] = {"seq": newest[0], "timestamp": newest[1].isoformat(), **values}

    patch: JsonObject = {}
    if cells:
        patch["cells"] = cells
    for name, group in (
        ("packs", _newest(latest_packs, reported.get("packs"), _pack)),
        ("estimates", _newest(estimates, reported.get("estimates"), _estimate)),
    ):
        if group:
            patch[name] = group
    last = records[-1]
    shown_seq = reported.get("seq")
    if not isinstance(shown_seq, int) or shown_seq < last.seq:
        patch["seq"] = last.seq
        patch["timestamp"] = last.timestamp.isoformat()
    return patch


def _numbers(items: Iterable[Any], key: str) -> list[float]:
    return [
        float(v[key])
        for v in items
        if isinstance(v, dict) and isinstance(v.get(key), int | float) and v[key] is not True
    ]


def aggregates(reported: Mapping[str, Any]) -> JsonObject:
    """Battery-wide figures over the newest values of every cell (min/max/mean)."""
    cells = list((reported.get("cells") or {}).values())
    estimates = list((reported.get("estimates") or {}).values())
    packs = list((reported.get("packs") or {}).values())
    out: JsonObject = {"cell_count": len(cells)}
    for key, unit_key in (("voltage_v", "voltage"), ("temperature_c", "temperature")):
        values = _numbers(cells, key)
        if values:
            suffix = key.removeprefix(unit_key)
            out[f"{unit_key}_min{suffix}"] = min(values)
            out[f"{unit_key}_max{suffix}"] = max(values)
            if key == "voltage_v":
                out[f"{unit_key}_mean{suffix}"] = sum(values) / len(values)
    socs = _numbers(estimates, "soc") or _numbers(cells, "soc")
    if socs:
        out["soc_min"] = min(socs)
        out["soc_max"] = max(socs)
        out["soc_mean"] = sum(socs) / len(socs)
    currents = _numbers(packs, "current_a")
    if currents:
        out["current_a"] = sum(currents)  # packs are in parallel
    return out


def settings_patch(data: Mapping[str, JsonValue]) -> JsonObject:
    """Edge-reported settings (a ``twin.reported`` event's data) without telemetry keys."""
    return {k: v for k, v in data.items() if k not in TELEMETRY_KEYS}
