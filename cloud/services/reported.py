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
from typing import Any

from pydantic import JsonValue

from twin.measurements import PackMeasurement
from twin.uplink import TelemetryRecord

JsonObject = dict[str, JsonValue]
AGGREGATED_KEYS = frozenset({"cells", "packs", "estimates"})
"""The parts of ``reported`` the aggregates are computed from."""
TELEMETRY_KEYS = frozenset({"seq", "timestamp", "cells", "packs", "estimates", "aggregates"})
"""Top-level keys of ``reported`` owned by telemetry; edge-reported settings may not use them."""

_Stamp = tuple[int, datetime]  # (seq, timestamp): ISO text only for what the patch shows


def _newer(current: Mapping[str, Any], key: str, seq: int) -> bool:
    shown = current.get(key)
    return not (
        isinstance(shown, dict) and isinstance(shown.get("seq"), int) and shown["seq"] > seq
    )


def _pillar1(cell: Mapping[str, Any]) -> dict[str, JsonValue]:
    return {
        "voltage_v": cell["voltage_v"],
        "temperature_c": cell["temperature_c"],
        "current_a": cell["current_a"],
        "sot": cell["sot"],
        "phase": cell["phase"],
        "soc": cell["soc"],
        "sos": cell["sos"],
    }


def _pillar2(cell: Mapping[str, Any]) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {
        "soc": cell["soc"],
        "soh": cell["soh"],
        "sos": cell["sos"],
        "equivalent_cycles": cell["equivalent_cycles"],
    }
    if cell["voltage_v"] is not None:
        out["voltage_v"] = cell["voltage_v"]
    if cell["temperature_c"] is not None:
        out["temperature_c"] = cell["temperature_c"]
    return out


def _pack(m: PackMeasurement) -> dict[str, JsonValue]:
    return {
        "voltage_v": m.voltage_v,
        "current_a": m.current_a,
        "state": m.state,
        "faults": list(m.faults),
    }


def _estimate(cell: Mapping[str, Any]) -> dict[str, JsonValue]:
    return {"soc": cell["soc"], "soc_std": cell["soc_std"], "sos": cell["sos"]}


_Latest = dict[int, tuple[Any, int, _Stamp]]
"""The newest value of each cell or pack: where it is (a cell group or a record's packs), its
index there, and the record's stamp."""


def _latest(held: Sequence[tuple[Sequence[int], Any, _Stamp]]) -> _Latest:
    """The newest place of every id over ``held`` (``(ids, source, stamp)``, oldest first):
    which group holds it last is found without a tuple per item, then its index in that group."""
    last: dict[int, int] = {}
    for slot, (ids, _, _) in enumerate(held):
        if slot + 1 < len(held) and held[slot + 1][0] == ids:
            continue  # the next group holds the same ids: it overrides them all
        last.update(dict.fromkeys(ids, slot))
    indexes: dict[int, dict[int, int]] = {}  # per group holding a newest value: id -> index
    latest: _Latest = {}
    for key, slot in last.items():
        ids, source, stamp = held[slot]
        where = indexes.get(slot)
        if where is None:
            where = indexes[slot] = {k: i for i, k in enumerate(ids)}  # a repeated id: its last
        latest[key] = (source, where[key], stamp)
    return latest


def _newest(
    latest: _Latest, shown: Any, convert: Callable[[Any, int], dict[str, JsonValue]]
) -> dict[str, JsonValue]:
    """The entries of ``latest`` newer than what ``shown`` holds, as reported objects."""
    shown = shown if isinstance(shown, dict) else {}
    group: dict[str, JsonValue] = {}
    for key, (source, index, (seq, ts)) in sorted(latest.items()):
        if _newer(shown, str(key), seq):
            group[str(key)] = {"seq": seq, "timestamp": ts.isoformat(), **convert(source, index)}
    return group


def telemetry_patch(records: Sequence[TelemetryRecord], reported: Mapping[str, Any]) -> JsonObject:
    """A merge patch with the newest value of every cell, pack and estimate in ``records``.

    ``records`` are in increasing seq order; only the last value of each cell is converted.
    """
    if not records:
        return {}
    groups: tuple[list[tuple[Sequence[int], Any, _Stamp]], ...] = ([], [], [], [])
    held_p1, held_p2, held_estimates, held_packs = groups
    for r in records:  # one walk: a record usually holds one or two of the four
        stamp = (r.seq, r.timestamp)
        if r.pillar1:
            held_p1.append((r.pillar1.cell_ids, r.pillar1, stamp))
        if r.pillar2:
            held_p2.append((r.pillar2.cell_ids, r.pillar2, stamp))
        if r.estimates:
            held_estimates.append((r.estimates.cell_ids, r.estimates, stamp))
        if r.packs:
            held_packs.append(([p.pack_index for p in r.packs], r.packs, stamp))
    p1, p2, estimates, packs = (_latest(held) for held in groups)

    shown_cells = reported.get("cells") or {}
    cells: dict[str, JsonValue] = {}
    iso: dict[_Stamp, str] = {}  # the cells of a record share its timestamp
    for cell_id in sorted(p1.keys() | p2.keys()):
        key = str(cell_id)
        parts: list[tuple[_Stamp, dict[str, JsonValue]]] = []
        for latest, fields in ((p1, _pillar1), (p2, _pillar2)):
            found = latest.get(cell_id)
            if found is not None:
                source, index, stamp = found
                parts.append((stamp, fields(source.values(index))))
        parts.sort(key=lambda part: part[0])  # the newer source wins a shared key
        values: dict[str, JsonValue] = {}
        for _, part in parts:
            values.update(part)
        newest = parts[-1][0]
        if _newer(shown_cells, key, newest[0]):
            text = iso.get(newest)
            if text is None:
                text = iso[newest] = newest[1].isoformat()
            cells[key] = {"seq": newest[0], "timestamp": text, **values}

    patch: JsonObject = {}
    if cells:
        patch["cells"] = cells
    for name, group in (
        ("packs", _newest(packs, reported.get("packs"), lambda ps, i: _pack(ps[i]))),
        (
            "estimates",
            _newest(estimates, reported.get("estimates"), lambda es, i: _estimate(es.values(i))),
        ),
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
