"""The cloud mirror: the twin core's SoC filter run on the uplinked Pillar 1 measurements.

For every battery with a cell model, the cloud runs ``twin.estimation.SocEstimator`` over all
its cells and keeps the filter's state (``EkfState`` JSON) in the twin row, so any cloud process
resumes it after a restart. When the mirror is confident (its SoC std below the threshold) and
its SoC differs from the edge's own estimate by more than the threshold on some cell, an event
``mirror.divergence`` is stored; ``mirror.converged`` when they agree again.

Cost control: the filter corrects at most once per ``period_s`` of data time. Between
corrections the charge of every sample is integrated exactly (a sampled current flows until the
next sample, the twin core's convention) and the prediction uses the mean current, so the SoC
loses nothing by the decimation. ``period_s = 0`` corrects on every record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, JsonValue

from cloud.db.engine import Database
from cloud.db.models import BatteryRow, TwinRow
from cloud.errors import NotFoundError
from twin.cell_model import CellModel, FloatArray
from twin.cell_params import CellParameters
from twin.errors import B2LError
from twin.estimation import EkfState, SocEstimator
from twin.uplink import Severity, TelemetryRecord

MIRROR_KIND = "b2l.cloud_mirror"
MIRROR_VERSION = 1
DEFAULT_PERIOD_S = 60.0
DEFAULT_DIVERGENCE_SOC = 0.05
_MAX_CACHED_MODELS = 64


@dataclass(frozen=True)
class CloudEvent:
    """An event the cloud raises about a battery (stored with ``source = "cloud"``)."""

    ts: datetime
    event_type: str
    severity: Severity
    message: str
    data: dict[str, JsonValue] = field(default_factory=dict)
    cell_id: int | None = None


@dataclass(frozen=True)
class MirrorStep:
    """The mirror's new state and the events it raised while taking the records in."""

    state: dict[str, Any] | None
    events: list[CloudEvent]
    corrections: int


class MirrorView(BaseModel):
    """The mirror's current estimate of a battery."""

    model_config = ConfigDict(frozen=True)

    battery_id: str
    timestamp: datetime | None
    """Data time of the last correction."""
    soc: list[float]
    soc_std: list[float]
    diverged: bool
    last_divergence_soc: float | None


class _Cells:
    """One sample of every cell: voltage NaN where a cell is missing from the record."""

    def __init__(
        self, record: TelemetryRecord, n_cells: int, held_i: FloatArray, held_t: FloatArray
    ):
        self.voltage_v = np.full(n_cells, np.nan)
        self.current_a = held_i.copy()
        self.temperature_c = held_t.copy()
        cells = record.pillar1
        ids = np.asarray(cells.cell_ids, dtype=np.intp)  # distinct (the record's own rule)
        self.voltage_v[ids] = cells.column("voltage_v")
        self.current_a[ids] = cells.column("current_a")
        self.temperature_c[ids] = cells.column("temperature_c")


class CloudMirror:
    """Advances a battery's mirror over new telemetry; pure apart from a model cache."""

    def __init__(
        self, period_s: float = DEFAULT_PERIOD_S, divergence_soc: float = DEFAULT_DIVERGENCE_SOC
    ) -> None:
        if period_s < 0.0 or not 0.0 < divergence_soc <= 1.0:
            raise ValueError("period_s must be >= 0 and divergence_soc within (0, 1]")
        self.period_s = period_s
        self.divergence_soc = divergence_soc
        self._estimators: dict[str, SocEstimator] = {}
        self._lock = threading.Lock()

    def estimator(self, parameters: dict[str, Any]) -> SocEstimator:
        """The filter for a cell model (cached by the parameters' content)."""
        key = hashlib.sha256(repr(sorted(parameters.items())).encode()).hexdigest()
        with self._lock:
            estimator = self._estimators.get(key)
            if estimator is None:
                if len(self._estimators) >= _MAX_CACHED_MODELS:
                    self._estimators.clear()
                model = CellModel(CellParameters.model_validate(parameters))
                estimator = self._estimators[key] = SocEstimator(model)
            return estimator

    def advance(
        self,
        state: dict[str, Any] | None,
        estimator: SocEstimator,
        n_cells: int,
        records: Sequence[TelemetryRecord],
    ) -> MirrorStep:
        """Take ``records`` (increasing seq) into the mirror whose JSON state is ``state``.

        ``estimator`` is the battery's filter (``self.estimator(parameters)``). A state that
        cannot be read (another version, another cell count) starts over.
        """
        if not any(r.pillar1 for r in records):
            return MirrorStep(state, [], 0)
        try:
            mirror = _MirrorState.load(state, n_cells) if state else None
        except (B2LError, KeyError, TypeError, ValueError):
            mirror = None
        events: list[CloudEvent] = []
        corrections = 0
        edge_soc: dict[int, float] = {}
        for record in records:
            for estimate in record.estimates:
                edge_soc[estimate.cell_id] = estimate.soc
            if not record.pillar1:
                continue
            if mirror is None:
                mirror = _MirrorState.start(estimator, record, n_cells)
                continue
            if record.timestamp <= mirror.sample_ts:
                continue  # older than what the mirror has seen
            cells = _Cells(record, n_cells, mirror.current_a, mirror.temperature_c)
            dt_s = (record.timestamp - mirror.sample_ts).total_seconds()
            mirror.charge_as += mirror.current_a * dt_s
            mirror.elapsed_s += dt_s
            mirror.current_a, mirror.temperature_c = cells.current_a, cells.temperature_c
            mirror.sample_ts, mirror.sample_seq = record.timestamp, record.seq
            if mirror.elapsed_s < self.period_s:
                continue
            held = dataclasses.replace(mirror.ekf, current_a=mirror.charge_as / mirror.elapsed_s)
            mirror.ekf = estimator.update(
                held, cells.current_a, cells.voltage_v, cells.temperature_c, mirror.elapsed_s
            )
            mirror.charge_as = np.zeros(n_cells)
            mirror.elapsed_s = 0.0
            mirror.ekf_ts = record.timestamp
            corrections += 1
            event = self._compare(mirror, edge_soc, record.timestamp)
            if event is not None:
                events.append(event)
        return MirrorStep(None if mirror is None else mirror.dump(), events, corrections)

    def _compare(
        self, mirror: _MirrorState, edge_soc: dict[int, float], ts: datetime
    ) -> CloudEvent | None:
        """An event when the mirror starts or stops disagreeing with the edge."""
        if not edge_soc:
            return None
        soc, soc_std = mirror.ekf.soc, mirror.ekf.soc_std
        confident = [c for c in edge_soc if c < soc.size and soc_std[c] <= self.divergence_soc]
        if not confident:
            return None
        gaps = {c: abs(float(soc[c]) - edge_soc[c]) for c in confident}
        worst = max(gaps, key=lambda c: gaps[c])
        mirror.last_divergence_soc = gaps[worst]
        data: dict[str, JsonValue] = {
            "max_divergence_soc": gaps[worst],
            "threshold_soc": self.divergence_soc,
            "cloud_soc": float(soc[worst]),
            "edge_soc": edge_soc[worst],
            "cells": [c for c in sorted(gaps) if gaps[c] > self.divergence_soc],
        }
        if gaps[worst] > self.divergence_soc and not mirror.diverged:
            mirror.diverged = True
            return CloudEvent(
                ts=ts,
                event_type="mirror.divergence",
                severity=Severity.WARNING,
                message=(
                    f"cloud and edge SoC differ by {gaps[worst]:.3f} on cell {worst} "
                    f"(threshold {self.divergence_soc:.3f})"
                ),
                data=data,
                cell_id=worst,
            )
        if gaps[worst] <= self.divergence_soc and mirror.diverged:
            mirror.diverged = False
            return CloudEvent(
                ts=ts,
                event_type="mirror.converged",
                severity=Severity.INFO,
                message="cloud and edge SoC agree again",
                data=data,
            )
        return None


@dataclass
class _MirrorState:
    """The persisted mirror: filter state plus the samples' charge since the last correction."""

    ekf: EkfState
    ekf_ts: datetime
    sample_ts: datetime
    sample_seq: int
    current_a: FloatArray
    temperature_c: FloatArray
    charge_as: FloatArray
    elapsed_s: float
    diverged: bool = False
    last_divergence_soc: float | None = None

    @classmethod
    def start(cls, estimator: SocEstimator, record: TelemetryRecord, n_cells: int) -> _MirrorState:
        """A new mirror from a first sample: SoC guessed from the voltages."""
        cells = record.pillar1
        ids = np.asarray(cells.cell_ids, dtype=np.intp)  # distinct (the record's own rule)

        def spread(name: str) -> FloatArray:  # a cell not in the record: the others' mean
            measured = np.asarray(cells.column(name), dtype=float)
            values = np.full(n_cells, float(np.mean(measured)))
            values[ids] = measured
            return values

        voltage, current = spread("voltage_v"), spread("current_a")
        temperature = spread("temperature_c")
        ekf = estimator.initial_from_voltage(voltage, current, temperature)
        return cls(
            ekf=ekf,
            ekf_ts=record.timestamp,
            sample_ts=record.timestamp,
            sample_seq=record.seq,
            current_a=current,
            temperature_c=temperature,
            charge_as=np.zeros(n_cells),
            elapsed_s=0.0,
        )

    @classmethod
    def load(cls, data: dict[str, Any], n_cells: int) -> _MirrorState | None:
        """The state from its JSON, or None when it is of another kind or battery size."""
        if data.get("kind") != MIRROR_KIND or data.get("version") != MIRROR_VERSION:
            return None
        if data.get("n_cells") != n_cells:
            return None
        return cls(
            ekf=EkfState.from_json_dict(data["ekf"]),
            ekf_ts=datetime.fromisoformat(data["ekf_ts"]),
            sample_ts=datetime.fromisoformat(data["sample_ts"]),
            sample_seq=int(data["sample_seq"]),
            current_a=np.asarray(data["current_a"], dtype=np.float64),
            temperature_c=np.asarray(data["temperature_c"], dtype=np.float64),
            charge_as=np.asarray(data["charge_as"], dtype=np.float64),
            elapsed_s=float(data["elapsed_s"]),
            diverged=bool(data.get("diverged", False)),
            last_divergence_soc=data.get("last_divergence_soc"),
        )

    def dump(self) -> dict[str, Any]:
        """JSON-ready state; ``load`` restores it exactly."""
        return {
            "kind": MIRROR_KIND,
            "version": MIRROR_VERSION,
            "n_cells": int(self.current_a.size),
            "ekf": self.ekf.to_json_dict(),
            "ekf_ts": self.ekf_ts.isoformat(),
            "sample_ts": self.sample_ts.isoformat(),
            "sample_seq": self.sample_seq,
            "current_a": self.current_a.tolist(),
            "temperature_c": self.temperature_c.tolist(),
            "charge_as": self.charge_as.tolist(),
            "elapsed_s": self.elapsed_s,
            "diverged": self.diverged,
            "last_divergence_soc": self.last_divergence_soc,
        }


def mirror_view(battery_id: str, state: dict[str, Any] | None) -> MirrorView:
    """What a stored mirror state says (empty lists before the first sample)."""
    if not state or state.get("kind") != MIRROR_KIND:
        return MirrorView(
            battery_id=battery_id,
            timestamp=None,
            soc=[],
            soc_std=[],
            diverged=False,
            last_divergence_soc=None,
        )
    ekf = EkfState.from_json_dict(state["ekf"])
    return MirrorView(
        battery_id=battery_id,
        timestamp=datetime.fromisoformat(state["ekf_ts"]),
        soc=ekf.soc.tolist(),
        soc_std=ekf.soc_std.tolist(),
        diverged=bool(state.get("diverged", False)),
        last_divergence_soc=state.get("last_divergence_soc"),
    )


class MirrorService:
    """Read or reset a battery's mirror (ingestion advances it)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, battery_id: str) -> MirrorView:
        """The mirror's estimate; NotFoundError for an unknown battery."""
        with self.db.read() as session:
            row = session.get(TwinRow, battery_id)
            if row is None:
                raise NotFoundError(f"battery {battery_id!r} is not registered")
            return mirror_view(battery_id, row.estimator_state)

    def reset(self, battery_id: str) -> None:
        """Forget the mirror's state: it starts again from the next Pillar 1 sample."""
        with self.db.write() as session:
            if session.get(BatteryRow, battery_id) is None:
                raise NotFoundError(f"battery {battery_id!r} is not registered")
            row = session.get(TwinRow, battery_id, with_for_update=True)
            if row is not None:
                row.estimator_state = None
