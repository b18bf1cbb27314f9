"""State of Safety (SoS) per cell: limits of the parameter set, and the trends that precede harm.

SoS is a fraction, 1 = safe, the product of factors that are each 1 inside a comfort band and
fall linearly to 0 at a hard (abuse) limit::

    f(x) = clip((hard - x) / (hard - comfort), 0, 1)          (mirrored for lower limits)
    SoS  = f_over_v * f_under_v * f_over_t * f_under_t * f_current * f_rise * f_self_discharge

The limits of ``CellParameters`` are operating limits: normal use reaches them (a CV charge sits at
``voltage_max_v``), so an alarm fires when a reading passes one, and the SoS reaches 0 at an abuse
limit beyond it (defaults of ``SafetyConfig`` in brackets):

=================  ======================  =============================  =====================
factor             comfort edge            hard edge (SoS 0)              alarm
=================  ======================  =============================  =====================
over-voltage       voltage_max_v           + 0.1 V                        > max + 10 mV
under-voltage      voltage_min_v           - 0.5 V                        < min - 10 mV
over-temperature   temperature_max_c - 10  temperature_max_c + 20 K       > temperature_max_c
under-temperature  temperature_min_c       - 10 K                         < temperature_min_c
current            1 x limit (charge or    1.5 x limit                    > 1.02 x limit
                   discharge)
temperature rise   1 K/min                 10 K/min                       > 2 K/min
self-discharge     2 mV/h voltage drop     50 mV/h                        > 5 mV/h
                   at rest
=================  ======================  =============================  =====================

Trends, from a small per-cell state:

* dT/dt is the difference of two exponential filters of the temperature (time constants 30 s
  and 120 s) divided by the difference of their lags: exact for a ramp, and quiet on a 0.1 K
  quantised sensor. A fast rise is a precursor of thermal runaway.
* self-discharge: after ``rest_settle_s`` (1 h) at rest (|i| <= 1 % of 1C), so that the
  relaxation has faded, the filtered voltage is anchored; once the anchor is
  ``self_discharge_window_s`` (30 min) old, the mean drop rate since the anchor is the
  self-discharge trend. A cell whose voltage keeps falling at rest is suspected of an internal
  short. The trend resets when current flows.

Pure and vectorised over any cell shape; the state round-trips through JSON bit for bit.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twin.cell_model import FloatArray
from twin.cell_params import CellParameters
from twin.errors import TwinValidationError

STATE_KIND = "b2l.safety_state"
STATE_VERSION = 1


class Alarm(enum.IntFlag):
    """Alarm bits of one cell (``SafetyState.alarms`` holds them as integers)."""

    OVER_VOLTAGE = 1
    UNDER_VOLTAGE = 2
    OVER_TEMPERATURE = 4
    UNDER_TEMPERATURE = 8
    OVER_CURRENT = 16
    FAST_TEMPERATURE_RISE = 32
    SELF_DISCHARGE = 64


def alarm_names(bits: int) -> list[str]:
    """Lower-case names of the alarms set in ``bits`` (``["over_voltage", ...]``)."""
    return [str(a.name).lower() for a in Alarm if bits & a]


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    """Comfort bands, abuse limits and alarm levels beyond the limits of the parameter set."""

    overvoltage_margin_v: float = 0.1
    undervoltage_margin_v: float = 0.5
    voltage_tolerance_v: float = 0.01
    temperature_comfort_k: float = 10.0
    """The over-temperature factor starts falling this far below temperature_max_c."""
    overtemperature_margin_k: float = 20.0
    undertemperature_margin_k: float = 10.0
    overcurrent_factor: float = 1.5
    current_tolerance: float = 0.02
    rise_comfort_k_per_min: float = 1.0
    rise_alarm_k_per_min: float = 2.0
    rise_hard_k_per_min: float = 10.0
    rise_fast_tau_s: float = 30.0
    rise_slow_tau_s: float = 120.0
    rest_current_c: float = 0.01
    rest_settle_s: float = 3600.0
    self_discharge_window_s: float = 1800.0
    self_discharge_comfort_v_per_h: float = 0.002
    self_discharge_alarm_v_per_h: float = 0.005
    self_discharge_hard_v_per_h: float = 0.05
    voltage_tau_s: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise TwinValidationError(f"SafetyConfig.{f.name} must be >= 0, got {value}")
        ordered = [
            ("rise_comfort_k_per_min", "rise_alarm_k_per_min", "rise_hard_k_per_min"),
            (
                "self_discharge_comfort_v_per_h",
                "self_discharge_alarm_v_per_h",
                "self_discharge_hard_v_per_h",
            ),
            ("rise_fast_tau_s", "rise_slow_tau_s"),
        ]
        for names in ordered:
            values = [getattr(self, n) for n in names]
            if any(b <= a for a, b in itertools.pairwise(values)):
                raise TwinValidationError(f"SafetyConfig: need {' < '.join(names)}")
        for name in (
            "overvoltage_margin_v",
            "undervoltage_margin_v",
            "overtemperature_margin_k",
            "undertemperature_margin_k",
            "rise_fast_tau_s",
            "voltage_tau_s",
        ):
            if getattr(self, name) <= 0.0:
                raise TwinValidationError(f"SafetyConfig.{name} must be positive")
        if self.overcurrent_factor <= 1.0:
            raise TwinValidationError("SafetyConfig.overcurrent_factor must exceed 1")


@dataclass(frozen=True, slots=True)
class SafetyState:
    """Trend filters and the last outputs of many cells; every array has the cells' shape.

    ``anchor_rest_s`` is the rest time at which ``anchor_v`` was taken, -1 when none is.
    """

    temperature_fast_c: FloatArray
    temperature_slow_c: FloatArray
    voltage_filtered_v: FloatArray
    rest_s: FloatArray
    anchor_v: FloatArray
    anchor_rest_s: FloatArray
    temperature_rate_k_per_s: FloatArray
    self_discharge_v_per_s: FloatArray
    sos: FloatArray
    alarms: NDArray[np.int64]

    def flags(self) -> dict[str, NDArray[np.bool_]]:
        """One boolean array per alarm name."""
        return {str(a.name).lower(): (self.alarms & int(a)) != 0 for a in Alarm}

    def to_json_dict(self) -> dict[str, Any]:
        """Plain lists; ``from_json_dict`` restores the arrays bit for bit."""
        out: dict[str, Any] = {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "shape": list(self.sos.shape),
        }
        for f in fields(self):
            out[f.name] = getattr(self, f.name).ravel().tolist()
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SafetyState:
        """Inverse of ``to_json_dict``; TwinValidationError on a malformed document."""
        try:
            if data["kind"] != STATE_KIND or data["version"] != STATE_VERSION:
                raise TwinValidationError(f"not a {STATE_KIND} version {STATE_VERSION} document")
            shape = tuple(int(n) for n in data["shape"])
            arrays: dict[str, Any] = {}
            for f in fields(cls):
                dtype = np.int64 if f.name == "alarms" else np.float64
                values = np.asarray(data[f.name], dtype=dtype).reshape(shape)
                if not np.all(np.isfinite(values)):
                    raise TwinValidationError(f"{f.name} holds NaN or infinity")
                arrays[f.name] = values
            return cls(**arrays)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TwinValidationError):
                raise
            raise TwinValidationError(f"not a safety state document: {exc}") from exc


def _falling(x: FloatArray, comfort: float, hard: float) -> FloatArray:
    """1 up to ``comfort``, linearly to 0 at ``hard`` (either side: hard may be below comfort)."""
    out: FloatArray = np.clip((hard - x) / (hard - comfort), 0.0, 1.0)
    return out


class SafetyMonitor:
    """State of Safety and alarms of cells of one parameter set."""

    def __init__(self, params: CellParameters, config: SafetyConfig | None = None) -> None:
        self.params = params
        self.config = config or SafetyConfig()
        c = self.config
        self._rest_a = c.rest_current_c * params.capacity_ah

    def initial(
        self, current_a: ArrayLike, voltage_v: ArrayLike, temperature_c: ArrayLike
    ) -> SafetyState:
        """State from a first sample (no trend yet)."""
        current, voltage, temperature = self._inputs(current_a, voltage_v, temperature_c)
        zeros = np.zeros(voltage.shape)
        return self._evaluate(
            current,
            voltage,
            temperature,
            temperature_fast_c=temperature,
            temperature_slow_c=temperature.copy(),
            voltage_filtered_v=voltage,
            rest_s=zeros,
            anchor_v=zeros.copy(),
            anchor_rest_s=np.full(voltage.shape, -1.0),
            temperature_rate_k_per_s=zeros.copy(),
        )

    def update(
        self,
        state: SafetyState,
        current_a: ArrayLike,
        voltage_v: ArrayLike,
        temperature_c: ArrayLike,
        dt_s: float,
    ) -> SafetyState:
        """Advance the trend filters by ``dt_s`` and evaluate the new sample."""
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise TwinValidationError(f"dt_s must be positive and finite, got {dt_s}")
        c = self.config
        current, voltage, temperature = self._inputs(
            current_a, voltage_v, temperature_c, state.sos.shape
        )

        # dT/dt: difference of two exponential filters over the difference of their lags
        fast_a = -math.expm1(-dt_s / c.rise_fast_tau_s)
        slow_a = -math.expm1(-dt_s / c.rise_slow_tau_s)
        t_fast = state.temperature_fast_c + fast_a * (temperature - state.temperature_fast_c)
        t_slow = state.temperature_slow_c + slow_a * (temperature - state.temperature_slow_c)
        lag_s = dt_s * ((1.0 - slow_a) / slow_a - (1.0 - fast_a) / fast_a)
        rate = (t_fast - t_slow) / lag_s

        # rest: filtered voltage, anchored once the relaxation has faded
        v_a = -math.expm1(-dt_s / c.voltage_tau_s)
        v_filtered = state.voltage_filtered_v + v_a * (voltage - state.voltage_filtered_v)
        resting = np.abs(current) <= self._rest_a
        rest_s = np.where(resting, state.rest_s + dt_s, 0.0)
        anchor_now = resting & (state.anchor_rest_s < 0.0) & (rest_s >= c.rest_settle_s)
        anchor_v = np.where(anchor_now, v_filtered, state.anchor_v)
        anchor_rest_s = np.where(resting, np.where(anchor_now, rest_s, state.anchor_rest_s), -1.0)
        return self._evaluate(
            current,
            voltage,
            temperature,
            temperature_fast_c=t_fast,
            temperature_slow_c=t_slow,
            voltage_filtered_v=v_filtered,
            rest_s=rest_s,
            anchor_v=anchor_v,
            anchor_rest_s=anchor_rest_s,
            temperature_rate_k_per_s=rate,
        )

    def _inputs(
        self,
        current_a: ArrayLike,
        voltage_v: ArrayLike,
        temperature_c: ArrayLike,
        shape: tuple[int, ...] | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        arrays = [np.asarray(a, dtype=np.float64) for a in (current_a, voltage_v, temperature_c)]
        for name, arr in zip(("current_a", "voltage_v", "temperature_c"), arrays, strict=True):
            if not np.all(np.isfinite(arr)):
                raise TwinValidationError(f"{name} holds NaN or infinity")
        try:
            full = np.broadcast_shapes(*(a.shape for a in arrays))
            full = full if shape is None else np.broadcast_shapes(full, shape)
            if shape is not None and full != shape:
                raise ValueError
        except ValueError:
            raise TwinValidationError("current, voltage and temperature shapes differ") from None
        current, voltage, temperature = (np.broadcast_to(a, full).copy() for a in arrays)
        return current, voltage, temperature

    def _evaluate(
        self,
        current: FloatArray,
        voltage: FloatArray,
        temperature: FloatArray,
        **trends: FloatArray,
    ) -> SafetyState:
        p, c = self.params, self.config
        v_max, v_min = p.voltage_max_v, p.voltage_min_v
        t_max, t_min = p.temperature_max_c, p.temperature_min_c
        limit_a = np.where(current > 0.0, p.current_max_charge_a, p.current_max_discharge_a)
        current_ratio = np.abs(current) / limit_a
        rate_k_per_min = trends["temperature_rate_k_per_s"] * 60.0

        anchor_rest_s = trends["anchor_rest_s"]
        age_s = trends["rest_s"] - anchor_rest_s
        valid = (anchor_rest_s >= 0.0) & (age_s >= c.self_discharge_window_s)
        drop = (trends["anchor_v"] - trends["voltage_filtered_v"]) / np.maximum(age_s, 1.0)
        self_discharge = np.where(valid, drop, 0.0)
        drop_v_per_h = self_discharge * 3600.0

        sos = (
            _falling(voltage, v_max, v_max + c.overvoltage_margin_v)
            * _falling(voltage, v_min, v_min - c.undervoltage_margin_v)
            * _falling(
                temperature, t_max - c.temperature_comfort_k, t_max + c.overtemperature_margin_k
            )
            * _falling(temperature, t_min, t_min - c.undertemperature_margin_k)
            * _falling(current_ratio, 1.0, c.overcurrent_factor)
            * _falling(rate_k_per_min, c.rise_comfort_k_per_min, c.rise_hard_k_per_min)
            * _falling(
                drop_v_per_h, c.self_discharge_comfort_v_per_h, c.self_discharge_hard_v_per_h
            )
        )
        checks = (
            (Alarm.OVER_VOLTAGE, voltage > v_max + c.voltage_tolerance_v),
            (Alarm.UNDER_VOLTAGE, voltage < v_min - c.voltage_tolerance_v),
            (Alarm.OVER_TEMPERATURE, temperature > t_max),
            (Alarm.UNDER_TEMPERATURE, temperature < t_min),
            (Alarm.OVER_CURRENT, current_ratio > 1.0 + c.current_tolerance),
            (Alarm.FAST_TEMPERATURE_RISE, rate_k_per_min > c.rise_alarm_k_per_min),
            (Alarm.SELF_DISCHARGE, drop_v_per_h > c.self_discharge_alarm_v_per_h),
        )
        alarms = np.zeros(voltage.shape, dtype=np.int64)
        for bit, fired in checks:
            alarms |= np.where(fired, int(bit), 0)
        return SafetyState(sos=sos, alarms=alarms, self_discharge_v_per_s=self_discharge, **trends)
