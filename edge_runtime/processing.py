"""Local processing of BMS samples: the twin's SoC filter and safety monitor, vectorised.

One ``Processor`` per battery holds a ``twin.estimation.SocEstimator`` and a
``twin.safety.SafetyMonitor`` over all the battery's cells (arrays of ``n_cells``). Each
``Sample`` from the link becomes a ``TelemetryRecord`` draft (the BMS's cell values, the pack
values, and the edge's own estimates) plus ``EventRecord`` drafts for alarms that were raised or
cleared; ``BmsStatus`` changes give events for the BMS's own fault bits and reboots. Events are
meant for the outbox's priority lane; drafts carry ``DRAFT_SEQ`` until the outbox numbers them.

Sampling: the current of a cell is the reported current divided by ``cells_in_parallel``; a cell
missing from a sample keeps its last temperature and gets no voltage correction. A gap longer
than ``max_gap_s`` (the edge or the BMS was off) restarts the filter from the voltages. Values
the data model refuses (a voltage of 12 V on a cell, NaN) leave that cell out of the record and
are counted in ``counters``; nothing here raises on bad input.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge_runtime.clock import utc
from edge_runtime.links import BmsStatus, FloatArray, Sample
from twin.cell_model import CellModel
from twin.cell_params import CellParameters, RcBranch
from twin.cells import CellGroup
from twin.commands import EcmParameters, ModelUpdate
from twin.errors import B2LError, TwinValidationError
from twin.estimation import EkfState, SocEstimator, soc_from_voltage
from twin.measurements import CellEstimate, PackMeasurement, Pillar1CellMeasurement, Pillar2CellData
from twin.safety import Alarm, SafetyMonitor, SafetyState, alarm_names
from twin.topology import BatteryTopology
from twin.uplink import EventRecord, Severity, TelemetryRecord

__all__ = ["DRAFT_SEQ", "Processed", "ProcessingCounters", "Processor"]

log = logging.getLogger("edge_runtime.processing")

DRAFT_SEQ = 1
"""Placeholder ``seq`` of a record draft; the outbox assigns the real one."""


@dataclass
class ProcessingCounters:
    """What processing skipped or repaired (reported in the status file)."""

    samples: int = 0
    records: int = 0
    invalid_cells: int = 0
    """Cell values the data model refused (left out of the record)."""
    skipped_samples: int = 0
    """Samples the filter could not use (no current, time going backwards)."""
    filter_restarts: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Processed:
    """The output of one sample: the telemetry draft (None if nothing valid) and event drafts."""

    telemetry: TelemetryRecord | None
    events: list[EventRecord]


class Processor:
    """SoC, SoS and alarms of one battery's cells (see the module docstring)."""

    def __init__(
        self,
        topology: BatteryTopology,
        params: CellParameters,
        *,
        max_gap_s: float = 600.0,
    ) -> None:
        self.topology = topology
        self.n_cells = topology.n_cells
        self.parallel = topology.cells_in_parallel
        self.max_gap_s = max_gap_s
        self.counters = ProcessingCounters()
        self.params = params
        self.ecm_version: int | None = None
        self.model_version: str | None = None
        self._resistance_scale = np.ones(self.n_cells)
        self._build(params)
        self._ekf: EkfState | None = None
        self._safety: SafetyState | None = None
        self._last_time_s: float | None = None
        self._temperature_c = np.full(self.n_cells, 25.0)
        self._voltage_v = np.full(self.n_cells, math.nan)
        self._alarms = np.zeros(self.n_cells, dtype=np.int64)

    def _build(self, params: CellParameters) -> None:
        self.params = params
        self.model = CellModel(params, resistance_scale=self._resistance_scale)
        self.estimator = SocEstimator(self.model)
        self.monitor = SafetyMonitor(params)

    # ---------------------------------------------------------------- estimates

    @property
    def soc(self) -> FloatArray | None:
        """Estimated SoC of every cell (None before the first sample)."""
        return None if self._ekf is None else np.clip(self._ekf.soc, 0.0, 1.0)

    @property
    def soc_std(self) -> FloatArray | None:
        """Standard deviation of the SoC estimate."""
        return None if self._ekf is None else self._ekf.soc_std

    @property
    def sos(self) -> FloatArray | None:
        """State of safety of every cell."""
        return None if self._safety is None else self._safety.sos

    def summary(self) -> dict[str, Any]:
        """Pack-level view for the status file."""
        soc, sos = self.soc, self.sos
        return {
            "soc_mean": None if soc is None else round(float(soc.mean()), 4),
            "soc_min": None if soc is None else round(float(soc.min()), 4),
            "sos_min": None if sos is None else round(float(sos.min()), 4),
            "alarms": sorted({n for bits in self._alarms.tolist() for n in alarm_names(bits)}),
            "ecm_version": self.ecm_version,
            "model_version": self.model_version,
            **self.counters.as_dict(),
        }

    # ---------------------------------------------------------------- samples

    def process(self, sample: Sample) -> Processed:
        """Estimate, check and build the drafts of one sample (never raises on bad values)."""
        self.counters.samples += 1
        try:
            events = self._estimate(sample)
        except (B2LError, ValueError, FloatingPointError) as exc:
            self.counters.errors += 1
            log.warning("processing of a sample failed: %s", exc)
            events = []
        telemetry = self._record(sample)
        if telemetry is not None:
            self.counters.records += 1
        return Processed(telemetry, events)

    def _inputs(self, sample: Sample) -> tuple[FloatArray, FloatArray, FloatArray] | None:
        """Full-battery current, voltage (NaN where missing) and temperature arrays."""
        ids = sample.cell_ids
        inside = (ids >= 0) & (ids < self.n_cells)
        ids = ids[inside]
        current_in = sample.current_a[inside]
        good_i = np.isfinite(current_in)
        if not np.any(good_i):
            return None
        current = np.full(self.n_cells, float(np.median(current_in[good_i])) / self.parallel)
        current[ids[good_i]] = current_in[good_i] / self.parallel
        voltage = np.full(self.n_cells, math.nan)
        v_in = sample.voltage_v[inside]
        plausible = np.isfinite(v_in) & (v_in > 0.0) & (v_in < 10.0)
        voltage[ids[plausible]] = v_in[plausible]
        t_in = sample.temperature_c[inside]
        good_t = np.isfinite(t_in) & (t_in > -60.0) & (t_in < 250.0)
        self._temperature_c[ids[good_t]] = t_in[good_t]
        if np.any(np.abs(current) > 1e5):
            return None
        return current, voltage, self._temperature_c.copy()

    def _estimate(self, sample: Sample) -> list[EventRecord]:
        inputs = self._inputs(sample)
        if inputs is None:
            self.counters.skipped_samples += 1
            return []
        current, voltage, temperature = inputs
        known = np.isfinite(voltage)
        self._voltage_v[known] = voltage[known]
        seen = np.isfinite(self._voltage_v)
        if not np.any(seen):
            self.counters.skipped_samples += 1
            return []
        fallback = float(np.median(self._voltage_v[seen]))
        filled_v = np.where(seen, self._voltage_v, fallback)
        dt_s = None if self._last_time_s is None else sample.time_s - self._last_time_s
        if dt_s is not None and dt_s <= 0.0:
            self.counters.skipped_samples += 1
            return []
        restart = self._ekf is None or dt_s is None or dt_s > self.max_gap_s
        if restart:
            if self._ekf is not None:
                self.counters.filter_restarts += 1
            soc0 = soc_from_voltage(self.model, filled_v, current)
            self._ekf = self.estimator.initial(soc0, temperature, current_a=current)
            self._ekf = self.estimator.update(self._ekf, current, voltage, temperature, 0.0)
            self._safety = self.monitor.initial(current, filled_v, temperature)
        else:
            assert self._ekf is not None and self._safety is not None and dt_s is not None
            self._ekf = self.estimator.update(self._ekf, current, voltage, temperature, dt_s)
            self._safety = self.monitor.update(self._safety, current, filled_v, temperature, dt_s)
        self._last_time_s = sample.time_s
        return self._alarm_events(sample.time_s, voltage, temperature)

    def _alarm_events(
        self, time_s: float, voltage: FloatArray, temperature: FloatArray
    ) -> list[EventRecord]:
        assert self._safety is not None
        new = self._safety.alarms
        old, self._alarms = self._alarms, new.copy()
        changed = np.nonzero(new != old)[0]
        events: list[EventRecord] = []
        timestamp = utc(time_s)
        for cell in changed.tolist():
            for alarm in Alarm:
                bit = int(alarm)
                was, now = bool(old[cell] & bit), bool(new[cell] & bit)
                if was == now:
                    continue
                name = str(alarm.name).lower()
                data: dict[str, Any] = {
                    "alarm": name,
                    "sos": round(float(self._safety.sos[cell]), 4),
                    "voltage_v": _json_float(voltage[cell]),
                    "temperature_c": _json_float(temperature[cell]),
                }
                events.append(
                    EventRecord(
                        seq=DRAFT_SEQ,
                        timestamp=timestamp,
                        event_type=f"alarm.{name}" + ("" if now else ".cleared"),
                        severity=Severity.ALARM if now else Severity.INFO,
                        message=f"cell {cell}: {name.replace('_', ' ')} "
                        + ("raised" if now else "cleared"),
                        cell_id=cell,
                        data=data,
                    )
                )
        return events

    # ---------------------------------------------------------------- records

    def _record(self, sample: Sample) -> TelemetryRecord | None:
        pillar1: list[Pillar1CellMeasurement] = []
        pillar2: list[Pillar2CellData] = []
        estimates: list[CellEstimate] = []
        soc, std, sos = self.soc, self.soc_std, self.sos
        for k, cell in enumerate(sample.cell_ids.tolist()):
            if not 0 <= cell < self.n_cells:
                self.counters.invalid_cells += 1
                continue
            try:
                if sample.pillar == 1:
                    pillar1.append(
                        Pillar1CellMeasurement(
                            cell_id=cell,
                            voltage_v=float(sample.voltage_v[k]),
                            temperature_c=float(sample.temperature_c[k]),
                            current_a=float(sample.current_a[k]),
                            sot=float(sample.sot[k]),
                            phase=float(sample.phase[k]),
                            soc=float(sample.soc[k]),
                            sos=float(sample.sos[k]),
                        )
                    )
                elif np.isfinite(sample.soc[k]):
                    pillar2.append(
                        Pillar2CellData(
                            cell_id=cell,
                            soc=float(sample.soc[k]),
                            soh=float(sample.soh[k]),
                            sos=float(sample.sos[k]),
                            equivalent_cycles=float(sample.equivalent_cycles[k]),
                            voltage_v=_optional(sample.voltage_v[k]),
                            temperature_c=_optional(sample.temperature_c[k]),
                        )
                    )
            except ValidationError:
                self.counters.invalid_cells += 1
            if soc is not None and std is not None:
                estimates.append(
                    CellEstimate(
                        cell_id=cell,
                        soc=float(soc[cell]),
                        soc_std=float(min(std[cell], 1.0)),
                        sos=None if sos is None else float(np.clip(sos[cell], 0.0, 1.0)),
                    )
                )
        packs: list[PackMeasurement] = []
        if sample.pack_voltage_v is not None and sample.pack_current_a is not None:
            try:
                packs.append(
                    PackMeasurement(
                        voltage_v=sample.pack_voltage_v,
                        current_a=sample.pack_current_a,
                        state=sample.bms_state,
                        faults=sorted(sample.faults),
                    )
                )
            except ValidationError:
                self.counters.invalid_cells += 1
        if not (pillar1 or pillar2 or packs or estimates):
            return None
        return TelemetryRecord(
            seq=DRAFT_SEQ,
            timestamp=utc(sample.time_s),
            pillar1=CellGroup(Pillar1CellMeasurement, rows=pillar1),
            pillar2=CellGroup(Pillar2CellData, rows=pillar2),
            packs=packs,
            estimates=CellGroup(CellEstimate, rows=estimates),
        )

    # ---------------------------------------------------------------- BMS status

    def status_events(self, status: BmsStatus, previous: BmsStatus | None) -> list[EventRecord]:
        """Events for faults the BMS raised or cleared, and for a BMS restart."""
        timestamp = utc(status.time_s)
        events: list[EventRecord] = []
        before = previous.faults if previous is not None else frozenset()
        for name in sorted(status.faults - before):
            events.append(
                EventRecord(
                    seq=DRAFT_SEQ,
                    timestamp=timestamp,
                    event_type=f"bms.fault.{_slug(name)}",
                    severity=Severity.ALARM,
                    message=f"the BMS raised {name}",
                    data={"fault": name},
                )
            )
        for name in sorted(before - status.faults):
            events.append(
                EventRecord(
                    seq=DRAFT_SEQ,
                    timestamp=timestamp,
                    event_type=f"bms.fault.{_slug(name)}.cleared",
                    severity=Severity.INFO,
                    message=f"the BMS cleared {name}",
                    data={"fault": name},
                )
            )
        if status.rebooted:
            events.append(
                EventRecord(
                    seq=DRAFT_SEQ,
                    timestamp=timestamp,
                    event_type="bms.reboot",
                    severity=Severity.WARNING,
                    message="the BMS restarted",
                    data={"reporting_period_ms": status.reporting_period_ms},
                )
            )
        return events

    # ---------------------------------------------------------------- parameter updates

    def apply_ecm(self, ecm: EcmParameters) -> dict[str, Any]:
        """Use the cloud's ECM parameters in the local filter; returns what was applied.

        Every cell (``cell_ids`` None): R0 and the RC pairs replace the parameter set's tables.
        Some cells: their resistances are scaled so R0 matches (the filter has one parameter set;
        the RC pairs of a subset are not applied). Raises TwinValidationError for a stale version.
        """
        if self.ecm_version is not None and ecm.version < self.ecm_version:
            raise TwinValidationError(
                f"ECM version {ecm.version} is older than the applied version {self.ecm_version}"
            )
        if ecm.cell_ids is not None:
            outside = [c for c in ecm.cell_ids if not 0 <= c < self.n_cells]
            if outside:
                raise TwinValidationError(f"cell_id {outside[0]} is outside the battery")
            r0_ref = float(np.median(self.params.r0_ohm))
            self._resistance_scale = self._resistance_scale.copy()
            self._resistance_scale[ecm.cell_ids] = ecm.r0_ohm / r0_ref
            self._rebuild(self.params)
            self.ecm_version = ecm.version
            return {"applied_to": "cells", "cells": len(ecm.cell_ids), "rc_pairs_applied": False}
        n = len(self.params.soc_grid)
        params = self.params.model_copy(
            update={
                "r0_ohm": [ecm.r0_ohm] * n,
                "rc": [
                    RcBranch(r_ohm=[p.r_ohm] * n, tau_s=[p.r_ohm * p.c_f] * n) for p in ecm.rc_pairs
                ],
            }
        )
        self._resistance_scale = np.ones(self.n_cells)
        self._rebuild(CellParameters.model_validate(params.model_dump()))
        self.ecm_version = ecm.version
        return {"applied_to": "all", "rc_pairs": len(ecm.rc_pairs)}

    def apply_model(self, update: ModelUpdate) -> dict[str, Any]:
        """Replace the filter's cell parameters (``model = "cell_parameters"``)."""
        if update.model != "cell_parameters":
            raise TwinValidationError(
                f"unknown model {update.model!r}: the edge estimator takes 'cell_parameters'"
            )
        try:
            params = CellParameters.model_validate(update.parameters)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise TwinValidationError(f"parameters.{where}: {err['msg']}") from None
        self._resistance_scale = np.ones(self.n_cells)
        self._rebuild(params)
        self.model_version = update.version
        self.ecm_version = None
        return {"parameter_set": params.name, "version": update.version}

    def _rebuild(self, params: CellParameters) -> None:
        """New model and filter; the SoC and its uncertainty carry over."""
        old = self._ekf
        self._build(params)
        if old is None:
            return
        if old.states == self.estimator.states:
            self._ekf = old
            return
        std = float(np.clip(np.max(old.soc_std), 0.01, self.estimator.config.max_soc_std))
        self._ekf = self.estimator.initial(
            np.clip(old.soc, 0.0, 1.0), old.temperature_c, soc_std=std, current_a=old.current_a
        )


def _optional(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _json_float(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _slug(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name.lower())
    return out[:40] or "unknown"
