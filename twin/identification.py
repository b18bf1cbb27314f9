"""Cell-model parameters identified from laboratory tests (pure: arrays in, parameters out).

A second-life cell is re-characterised with two tests:

* an **OCV test**: a low-rate (C/20..C/10) discharge from fully charged down to the lower voltage
  limit, ideally followed by a charge back at the same rate. It gives the capacity (coulomb
  counting) and OCV(SoC): the average of the two branches, which cancels the low-rate IR drop
  and most of the hysteresis (half their difference is reported as ``half_gap_v``). With a
  discharge only, the branch is corrected by a resistance (given, or the voltage step at the
  start of the discharge if the log has a rest before it; otherwise it is left uncorrected and
  the OCV reads low by the low-rate polarisation).
* an **HPPC test**: short current pulses from rest at several SoCs. Each pulse gives R0 (the
  instantaneous voltage step at its start) and RC pairs (a bounded least-squares fit of the
  pulse and of the relaxation after it). The values are tabulated over SoC, held at the ends.
  Optionally the slowest pair is fitted instead to the long rests after the SoC steps between
  the pulses: 10 s pulses cannot see the minutes-long diffusion that dominates long loads.

SoC is 1 at the start of the OCV discharge (fully charged) and 0 at its end; the HPPC test
starts fully charged too unless told otherwise. Logs follow ``twin.lab_data``: the current in
row k flows from ``time_s[k]`` to ``time_s[k+1]``, positive when charging.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import JsonValue, ValidationError
from scipy.optimize import least_squares
from scipy.signal import lfilter

from twin.cell_model import CellModel, FloatArray
from twin.cell_params import CellParameters
from twin.errors import TwinValidationError
from twin.lab_data import CellLog

MIN_BRANCH_SPAN = 0.5
"""A charge branch is averaged with the discharge only if it covers this much SoC."""
TAU_RATIO = 2.0
"""Least ratio between the time constants of consecutive RC pairs."""


@dataclass(frozen=True, slots=True)
class OcvResult:
    """Capacity and OCV(SoC) from a low-rate test."""

    capacity_ah: float
    soc_grid: FloatArray
    ocv_v: FloatArray
    voltage_min_v: float
    voltage_max_v: float
    discharge_current_a: float
    """Median current of the discharge (negative)."""
    half_gap_v: float | None
    """Median of half the charge-discharge difference: hysteresis plus low-rate polarisation."""
    method: str
    """How the IR drop was removed, in words."""

    def ocv_at(self, soc: ArrayLike) -> FloatArray:
        """OCV at ``soc`` (linear interpolation, held at the ends)."""
        out: FloatArray = np.interp(np.asarray(soc, dtype=np.float64), self.soc_grid, self.ocv_v)
        return out


@dataclass(frozen=True, slots=True)
class Pulse:
    """One current pulse of an HPPC test and the parameters fitted to it."""

    start_index: int
    time_s: float
    soc: float
    current_a: float
    """The current step (pulse current minus the rest current before it)."""
    duration_s: float
    r0_ohm: float
    r_ohm: tuple[float, ...]
    tau_s: tuple[float, ...]
    """Increasing."""
    fit_rmse_v: float


@dataclass(frozen=True, slots=True)
class PulseResult:
    """The pulses of an HPPC test and their parameters tabulated on the SoC grid."""

    pulses: tuple[Pulse, ...]
    soc_grid: FloatArray
    r0_ohm: FloatArray
    r_ohm: FloatArray
    """Shape (n_rc, grid)."""
    tau_s: FloatArray
    """Shape (n_rc, grid), increasing along the first axis."""
    steps: tuple[Pulse, ...] = ()
    """With a slow pair: the long steps and the slow pair fitted to each (``soc`` at the end of
    the step, where the cell relaxes)."""


# -- OCV test ---------------------------------------------------------------------------------


def identify_ocv(
    log: CellLog,
    *,
    voltage_min_v: float | None = None,
    voltage_max_v: float | None = None,
    soc_step: float = 0.01,
    resistance_ohm: float | None = None,
    max_c_rate: float = 0.2,
) -> OcvResult:
    """Capacity and OCV(SoC) from a low-rate discharge (and optional charge back).

    ``voltage_min_v``/``voltage_max_v`` default to the extremes of the log rounded outwards to
    10 mV; the discharge must start near the upper and end near the lower one.
    ``resistance_ohm`` corrects a discharge-only test.
    """
    grid = _soc_grid(soc_step)
    current, voltage = log.current_a, log.voltage_v
    tol_a = 0.01 * float(np.max(np.abs(current)))
    charge_ah = _charge_ah(log)
    runs = _runs(current < -tol_a) if tol_a > 0.0 else []
    if not runs:
        raise TwinValidationError(
            "OCV test: no discharge found (current must be negative while discharging)"
        )
    runs = [(s, min(e, len(log) - 1)) for s, e in runs]  # the last row has no duration
    a, b = max(runs, key=lambda run: charge_ah[run[0]] - charge_ah[run[1]])
    if b - a < 2:
        raise TwinValidationError("OCV test: the discharge has fewer than 2 samples")
    capacity_ah = float(charge_ah[a] - charge_ah[b])
    i_dis = float(np.median(current[a:b]))
    duration_h = float(log.time_s[b] - log.time_s[a]) / 3600.0
    c_rate = -i_dis / capacity_ah
    if not c_rate <= max_c_rate:
        raise TwinValidationError(
            f"OCV test: the discharge gives {capacity_ah:.4g} Ah at {-i_dis:.4g} A "
            f"(C/{1 / c_rate:.3g}, {duration_h:.3g} h); an OCV test needs a complete discharge "
            f"at C/{1 / max_c_rate:.3g} or slower"
        )

    v_dis = voltage[a:b]
    if v_dis[-1] >= v_dis[0]:
        raise TwinValidationError(
            f"OCV test: the voltage rises from {v_dis[0]:.4g} to {v_dis[-1]:.4g} V during the "
            "discharge; is the current positive when charging?"
        )
    # default: the extremes rounded outwards to 10 mV (cut-offs are round numbers, samples
    # stop short of them)
    v_lo = math.floor(100.0 * np.min(v_dis) + 0.05) / 100.0
    v_hi = math.ceil(100.0 * np.max(voltage) - 0.05) / 100.0
    v_lo = v_lo if voltage_min_v is None else voltage_min_v
    v_hi = v_hi if voltage_max_v is None else voltage_max_v
    if not 0.0 < v_lo < v_hi:
        raise TwinValidationError(f"OCV test: voltage limits {v_lo:g}..{v_hi:g} V are not valid")
    margin_v = 0.1 * (v_hi - v_lo)
    if float(np.min(v_dis)) > v_lo + margin_v:
        raise TwinValidationError(
            f"OCV test: the discharge stops at {float(np.min(v_dis)):.4g} V, well above the lower "
            f"voltage limit {v_lo:g} V: not a complete discharge"
        )
    v_start = float(np.max(voltage[max(a - 1, 0) : a + 1]))
    if v_start < v_hi - margin_v:
        raise TwinValidationError(
            f"OCV test: the discharge starts at {v_start:.4g} V, well below the upper voltage "
            f"limit {v_hi:g} V: the cell was not fully charged"
        )

    soc = 1.0 + (charge_ah - charge_ah[a]) / capacity_ah
    ocv_dis = _on_grid(soc[a:b], v_dis, grid)
    charge = _charge_branch(current, b, tol_a)
    half_gap_v: float | None = None
    if charge is not None and np.ptp(np.clip(soc[charge], 0.0, 1.0)) >= MIN_BRANCH_SPAN:
        ocv_chg = _on_grid(soc[charge], voltage[charge], grid)
        lo = max(float(np.min(soc[charge])), float(np.min(soc[a:b])))
        hi = min(float(np.max(soc[charge])), 1.0)
        both = (grid >= lo) & (grid <= hi)
        half = 0.5 * (ocv_chg[both] - ocv_dis[both])
        ocv = ocv_dis + np.interp(grid, grid[both], half)
        half_gap_v = float(np.median(half))
        method = (
            f"average of the C/{1 / c_rate:.3g} discharge and the charge back over SoC "
            f"{lo:.2f}..{hi:.2f}, their offset held beyond"
        )
    else:
        r_ohm, how = resistance_ohm, "given"
        if r_ohm is None and a > 0 and abs(current[a - 1]) <= tol_a:
            r_ohm = float((voltage[a] - voltage[a - 1]) / (current[a] - current[a - 1]))
            how = "from the voltage step at the start of the discharge"
        if r_ohm is not None and r_ohm > 0.0:
            ocv = ocv_dis - i_dis * r_ohm
            method = f"C/{1 / c_rate:.3g} discharge corrected by R = {r_ohm:.4g} ohm ({how})"
        else:
            ocv = ocv_dis
            method = f"C/{1 / c_rate:.3g} discharge, not corrected for its IR drop"
    if a > 0 and abs(current[a - 1]) <= tol_a:
        ocv[-1] = voltage[a - 1]  # at rest, fully charged: OCV(1) measured
    ocv = 0.5 * (np.maximum.accumulate(ocv) + np.minimum.accumulate(ocv[::-1])[::-1])
    ocv = np.minimum(ocv, v_hi)  # charged to the upper limit, the cell rests at or below it
    return OcvResult(capacity_ah, grid, ocv, v_lo, v_hi, i_dis, half_gap_v, method)


def _soc_grid(soc_step: float) -> FloatArray:
    n = round(1.0 / soc_step) if soc_step > 0.0 else 0
    if not 10 <= n <= 1000 or not math.isclose(n * soc_step, 1.0, rel_tol=1e-9):
        raise TwinValidationError(f"soc_step must divide 1 into 10..1000 steps, got {soc_step}")
    return np.linspace(0.0, 1.0, n + 1)


def _charge_ah(log: CellLog) -> FloatArray:
    """Charge passed before each sample, in Ah (0 at the first sample)."""
    charge_as = np.concatenate(([0.0], np.cumsum(log.current_a[:-1] * np.diff(log.time_s))))
    out: FloatArray = charge_as / 3600.0
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of every run of True values."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def _charge_branch(current: FloatArray, after: int, tol_a: float) -> NDArray[np.intp] | None:
    """Indices of the constant-current part of the largest charge after sample ``after``."""
    runs = [(s, e) for s, e in _runs(current > tol_a) if s >= after]
    if not runs:
        return None
    s, e = max(runs, key=lambda run: float(np.sum(current[run[0] : run[1]])))
    i_cc = float(np.median(current[s:e]))
    index = s + np.flatnonzero(np.abs(current[s:e] - i_cc) <= 0.1 * i_cc)
    return index if index.size >= 2 else None


def _on_grid(soc: FloatArray, voltage: FloatArray, grid: FloatArray) -> FloatArray:
    """Voltage on the SoC grid: samples averaged per grid cell (against noise), then
    interpolated; the first and last samples are kept as they are (against the bias of
    averaging where the curve bends hard, e.g. at the ends of an LFP cell)."""
    step = grid[1] - grid[0]
    inside = (soc >= grid[0] - 0.5 * step) & (soc <= grid[-1] + 0.5 * step)
    soc, voltage = soc[inside], voltage[inside]
    cell = np.clip(np.rint((soc - grid[0]) / step), 0, len(grid) - 1).astype(np.intp)
    counts = np.bincount(cell, minlength=len(grid))
    have = counts > 0
    soc_mean = np.bincount(cell, soc, len(grid))[have] / counts[have]
    v_mean = np.bincount(cell, voltage, len(grid))[have] / counts[have]
    lo, hi = int(np.argmin(soc)), int(np.argmax(soc))
    soc_points = np.concatenate(([soc[lo]], soc_mean, [soc[hi]]))
    v_points = np.concatenate(([voltage[lo]], v_mean, [voltage[hi]]))
    out: FloatArray = np.interp(grid, soc_points, v_points)
    return out


# -- HPPC test --------------------------------------------------------------------------------


def identify_pulses(
    log: CellLog,
    ocv: OcvResult,
    n_rc: int = 2,
    *,
    soc_start: float = 1.0,
    slow_rc: bool = False,
    max_pulse_s: float = 120.0,
    max_relax_s: float = 600.0,
    max_step_relax_s: float = 3600.0,
    soc_merge: float = 0.02,
) -> PulseResult:
    """R0 and ``n_rc`` RC pairs per pulse of an HPPC test, tabulated on ``ocv.soc_grid``.

    A pulse is a current step from rest lasting at most ``max_pulse_s``; its fit covers the
    pulse and up to ``max_relax_s`` of the rest after it. Pulses closer than ``soc_merge`` in
    SoC are averaged before tabulation. With ``slow_rc`` the slowest pair comes instead from
    the longer steps (the SoC steps between the pulses) and up to ``max_step_relax_s`` of the
    rest after each, the other pairs and R0 held at their pulse values.
    """
    allowed = (2, 3) if slow_rc else (1, 2, 3)
    if n_rc not in allowed:
        raise TwinValidationError(f"n_rc must be {' or '.join(map(str, allowed))}, got {n_rc}")
    if not 0.0 <= soc_start <= 1.0:
        raise TwinValidationError(f"soc_start must be within 0..1, got {soc_start}")
    current, time_s, voltage = log.current_a, log.time_s, log.voltage_v
    i_max = float(np.max(np.abs(current)))
    if i_max == 0.0:
        raise TwinValidationError("HPPC test: the current is zero throughout, no pulses")
    soc = soc_start + _charge_ah(log) / ocv.capacity_ah
    steps = _current_steps(current, rest_a=0.02 * i_max, step_a=0.05 * i_max)
    n_fast = n_rc - 1 if slow_rc else n_rc

    pulses: list[Pulse] = []
    carry_index, carry = -1, np.zeros(n_fast)
    for s, e, rest_end in steps:
        w = _window_end(time_s, e, rest_end, max_relax_s)
        if time_s[e] - time_s[s] > max_pulse_s or w - s < 2 * n_fast + 1:
            continue
        r0_ohm = _onset_resistance(log, s, soc, ocv.capacity_ah)
        window = slice(s - 1, w)
        x0 = carry if carry_index == s - 1 else np.zeros(n_fast)
        r_ohm, tau_s, states, rmse = _fit_rc(
            time_s[window], current[window], voltage[window], ocv.ocv_at(soc[window]), r0_ohm, x0
        )
        carry_index, carry = w - 1, states[:, -1]
        pulses.append(_pulse(log, s, e, soc[s], r0_ohm, r_ohm, tau_s, rmse))
    if len(pulses) < 2:
        found = "no current pulses" if not pulses else "only 1 current pulse"
        raise TwinValidationError(
            f"HPPC test: {found} found, need at least 2 (current steps from rest lasting at most "
            f"{max_pulse_s:g} s, with at least {2 * n_fast + 1} samples before the next step)"
        )
    result = _tabulate(tuple(pulses), ocv.soc_grid, n_fast, soc_merge)
    if not slow_rc:
        return result
    long_steps = [
        (s, e, _window_end(time_s, e, rest_end, max_step_relax_s))
        for s, e, rest_end in steps
        if time_s[e] - time_s[s] > max_pulse_s and rest_end - e >= 3
    ]
    if not long_steps:
        raise TwinValidationError(
            f"HPPC test: the slow RC pair needs current steps longer than {max_pulse_s:g} s "
            "(e.g. the SoC steps) followed by a rest; there are none"
        )
    return _add_slow_pair(log, soc, ocv, result, long_steps)


def _current_steps(current: FloatArray, rest_a: float, step_a: float) -> list[tuple[int, int, int]]:
    """``(start, end, rest_end)`` of every current step from rest: the step covers samples
    ``start..end-1``, the rest after it ``end..rest_end-1`` (``rest_end == end``: no rest)."""
    n = len(current)
    bounds = [0, *(np.flatnonzero(np.abs(np.diff(current)) > step_a) + 1).tolist(), n]
    segments = list(itertools.pairwise(bounds))
    at_rest = [bool(np.all(np.abs(current[s:e]) <= rest_a)) for s, e in segments]
    steps: list[tuple[int, int, int]] = []
    for k, (s, e) in enumerate(segments):
        if k > 0 and e < n and at_rest[k - 1] and not at_rest[k]:
            steps.append((s, e, segments[k + 1][1] if at_rest[k + 1] else e))
    return steps


def _window_end(time_s: FloatArray, end: int, rest_end: int, relax_s: float) -> int:
    """End (exclusive) of a fit window: the rest after a step, cut at ``relax_s``."""
    return end + int(np.searchsorted(time_s[end:rest_end], time_s[end] + relax_s, side="right"))


def _onset_resistance(log: CellLog, start: int, soc: FloatArray, capacity_ah: float) -> float:
    """R0 from the voltage step at the start of a current step; refuses implausible data."""
    t = log.time_s[start]
    step_i = float(log.current_a[start] - log.current_a[start - 1])
    r0_ohm = float(log.voltage_v[start] - log.voltage_v[start - 1]) / step_i
    if not r0_ohm > 0.0:
        raise TwinValidationError(
            f"HPPC test: the pulse at t = {t:g} s moves the voltage against the current "
            f"(R0 = {r0_ohm:.4g} ohm); is the current positive when charging?"
        )
    if not -0.05 <= soc[start] <= 1.05:
        raise TwinValidationError(
            f"HPPC test: the pulse at t = {t:g} s is at SoC {soc[start]:.3f}: the test does "
            f"not match the capacity {capacity_ah:.4g} Ah of the OCV test"
        )
    return r0_ohm


def _pulse(
    log: CellLog,
    start: int,
    end: int,
    soc: float,
    r0_ohm: float,
    r_ohm: tuple[float, ...],
    tau_s: tuple[float, ...],
    rmse: float,
) -> Pulse:
    return Pulse(
        start_index=start,
        time_s=float(log.time_s[start]),
        soc=float(soc),
        current_a=float(log.current_a[start] - log.current_a[start - 1]),
        duration_s=float(log.time_s[end] - log.time_s[start]),
        r0_ohm=r0_ohm,
        r_ohm=r_ohm,
        tau_s=tau_s,
        fit_rmse_v=rmse,
    )


def _add_slow_pair(
    log: CellLog,
    soc: FloatArray,
    ocv: OcvResult,
    fast: PulseResult,
    long_steps: list[tuple[int, int, int]],
) -> PulseResult:
    """``fast`` with one more RC pair, fitted to the long steps and the rests after them."""
    grid, n = ocv.soc_grid, len(log)
    current, time_s, voltage = log.current_a, log.time_s, log.voltage_v
    r_fast = np.array([np.interp(soc[:-1], grid, r) for r in fast.r_ohm])
    tau_fast = np.array([np.interp(soc[:-1], grid, t) for t in fast.tau_s])
    v_fast = np.sum(
        _rc_states(np.diff(time_s), current, r_fast, tau_fast, np.zeros(len(r_fast))), 0
    )
    r0 = np.interp(soc, grid, fast.r0_ohm)
    known = ocv.ocv_at(soc) + r0 * current + v_fast  # the model without the slow pair
    steps: list[Pulse] = []
    for s, e, w in long_steps:
        window = slice(s - 1, w)
        r0_ohm = _onset_resistance(log, s, soc, ocv.capacity_ah)
        tau_min = TAU_RATIO * float(np.max(tau_fast[:, min(e, n - 2)]))
        (r_ohm,), (tau_s,), _, rmse = _fit_rc(
            time_s[window],
            current[window],
            voltage[window],
            known[window],
            0.0,
            np.zeros(1),
            r_scale_ohm=r0_ohm,
            tau_min_s=tau_min,
        )
        steps.append(_pulse(log, s, e, soc[e], r0_ohm, (r_ohm,), (tau_s,), rmse))
    ordered = sorted(steps, key=lambda p: p.soc)
    at = [p.soc for p in ordered]
    tau_slow = np.interp(grid, at, [p.tau_s[0] for p in ordered])
    tau_slow = np.maximum(tau_slow, TAU_RATIO * np.max(fast.tau_s, axis=0))
    r_slow = np.interp(grid, at, [p.r_ohm[0] for p in ordered])
    return PulseResult(
        fast.pulses,
        grid,
        fast.r0_ohm,
        np.vstack((fast.r_ohm, r_slow)),
        np.vstack((fast.tau_s, tau_slow)),
        tuple(steps),
    )


def _fit_rc(
    time_s: FloatArray,
    current_a: FloatArray,
    voltage_v: FloatArray,
    known_v: FloatArray,
    r0_ohm: float,
    x0: FloatArray,
    *,
    r_scale_ohm: float | None = None,
    tau_min_s: float = 0.0,
) -> tuple[tuple[float, ...], tuple[float, ...], FloatArray, float]:
    """RC pairs fitted to one window starting at the rest sample before a current step.

    The model is the measured voltage before the step plus the change of ``known_v`` (the OCV,
    or all of the model but these pairs), the R0 step and the change of the RC voltages (which
    start from ``x0``). Returns R, tau (increasing), the RC states over the window and the RMSE.
    """
    n_rc = len(x0)
    dt_s = np.diff(time_s)
    r_scale = r0_ohm if r_scale_ohm is None else r_scale_ohm
    known = voltage_v[0] + (known_v - known_v[0]) + r0_ohm * (current_a - current_a[0])
    target = voltage_v - known
    # Parameters: log R_k, then log tau_n and the log ratios tau_k+1 / tau_k >= TAU_RATIO, so
    # the taus are ordered. The longest is at most the window's length: a longer one cannot be
    # told from a ramp; the shortest is bounded below by the ratios.
    tau_hi = float(time_s[-1] - time_s[0])
    tau_lo = min(max(0.25 * float(np.min(dt_s)), tau_min_s), 0.5 * tau_hi)
    tau_top = max(tau_hi / 3.0, tau_lo * TAU_RATIO ** (n_rc - 1))
    ratio = max(TAU_RATIO, (tau_top / (2.0 * tau_lo)) ** (1.0 / max(n_rc - 1, 1)))
    z0 = np.log([*[0.5 * r_scale] * n_rc, tau_top, *[ratio] * (n_rc - 1)])
    lower = np.log(
        [*[1e-4 * r_scale] * n_rc, tau_lo * TAU_RATIO ** (n_rc - 1), *[TAU_RATIO] * (n_rc - 1)]
    )
    upper = np.log([*[1e2 * r_scale] * n_rc, tau_hi, *[tau_hi / tau_lo] * (n_rc - 1)])

    def unpack(z: FloatArray) -> tuple[FloatArray, FloatArray]:
        log_tau = z[n_rc] - np.concatenate(([0.0], np.cumsum(z[n_rc + 1 :])))
        return np.exp(z[:n_rc]), np.exp(log_tau[::-1])

    def residual(z: FloatArray) -> FloatArray:
        states = _rc_states(dt_s, current_a, *unpack(z), x0)
        out: FloatArray = np.sum(states - states[:, :1], axis=0) - target
        return out

    fit = least_squares(residual, np.clip(z0, lower, upper), bounds=(lower, upper))
    r_ohm, tau_s = unpack(fit.x)
    states = _rc_states(dt_s, current_a, r_ohm, tau_s, x0)
    rmse = float(np.sqrt(np.mean(np.square(fit.fun))))
    return tuple(r_ohm.tolist()), tuple(tau_s.tolist()), states, rmse


def _rc_states(
    dt_s: FloatArray, current_a: FloatArray, r_ohm: FloatArray, tau_s: FloatArray, x0: FloatArray
) -> FloatArray:
    """RC voltages (n_rc, samples) under the model's exact zero-order-hold update.

    ``r_ohm`` and ``tau_s`` are (n_rc,), or (n_rc, samples - 1) for values that change with time.
    """
    n_rc = len(x0)
    decay = np.exp(-dt_s / np.reshape(tau_s, (n_rc, -1)))
    drive = np.reshape(r_ohm, (n_rc, -1)) * (1.0 - decay) * current_a[:-1]
    decay, drive = np.broadcast_arrays(decay, drive)
    states = np.empty((n_rc, len(current_a)))
    states[:, 0] = x0
    if np.all(decay == decay[:, :1]):  # uniform sampling, constant parameters: a linear filter
        for k in range(n_rc):
            a = decay[k, 0]
            states[k, 1:] = lfilter([1.0], [1.0, -a], drive[k], zi=[a * x0[k]])[0]
        return states
    for j in range(len(dt_s)):
        states[:, j + 1] = decay[:, j] * states[:, j] + drive[:, j]
    return states


def _tabulate(
    pulses: tuple[Pulse, ...], grid: FloatArray, n_rc: int, soc_merge: float
) -> PulseResult:
    """Pulse values averaged per SoC level, interpolated on the grid and held at the ends."""
    ordered = sorted(pulses, key=lambda p: p.soc)
    levels: list[list[Pulse]] = [[ordered[0]]]
    for pulse in ordered[1:]:
        if pulse.soc - levels[-1][0].soc <= soc_merge:
            levels[-1].append(pulse)
        else:
            levels.append([pulse])
    soc = np.array([np.mean([p.soc for p in level]) for level in levels])

    def table(values: list[list[float]]) -> FloatArray:
        out: FloatArray = np.interp(grid, soc, [float(np.mean(v)) for v in values])
        return out

    r0 = table([[p.r0_ohm for p in level] for level in levels])
    r = np.array([table([[p.r_ohm[k] for p in level] for level in levels]) for k in range(n_rc)])
    tau = np.array([table([[p.tau_s[k] for p in level] for level in levels]) for k in range(n_rc)])
    return PulseResult(pulses, grid, r0, r, tau)


# -- the whole parameter set ------------------------------------------------------------------


def simulate_voltage(params: CellParameters, log: CellLog, soc_start: float = 1.0) -> FloatArray:
    """Terminal voltage of ``CellModel`` driven by the log's current from rest at ``soc_start``."""
    model = CellModel(params)
    state = model.initial_state(soc_start, float(log.temperature_c[0]))
    dt_s = np.diff(log.time_s)
    out = np.empty(len(log))
    for k in range(len(log)):
        out[k] = float(model.terminal_voltage(state, log.current_a[k]))
        if k < len(dt_s):
            state = model.step(state, log.current_a[k], log.temperature_c[k], float(dt_s[k]))
    return out


def identify(
    ocv_log: CellLog,
    pulse_log: CellLog,
    *,
    name: str,
    chemistry: str,
    n_rc: int = 2,
    slow_rc: bool = False,
    voltage_min_v: float | None = None,
    voltage_max_v: float | None = None,
    soc_start: float = 1.0,
    data_source: str = "laboratory tests",
    progress: Callable[[str], None] | None = None,
) -> CellParameters:
    """A parameter set from an OCV test and an HPPC test, with fit figures in ``fit``.

    ``fit`` holds the voltage RMSE and max error of a re-simulation of the whole HPPC test with
    ``CellModel``, the per-pulse SoC and R0, and the OCV half gap. ``slow_rc``: see
    ``identify_pulses``. The current limits are the
    largest currents of the tests; the reference temperature their mean temperature.
    """
    say = progress if progress is not None else _quiet
    ocv = identify_ocv(ocv_log, voltage_min_v=voltage_min_v, voltage_max_v=voltage_max_v)
    say(
        f"OCV test: capacity {ocv.capacity_ah:.4f} Ah, voltage "
        f"{ocv.voltage_min_v:.3f}..{ocv.voltage_max_v:.3f} V; {ocv.method}"
    )
    result = identify_pulses(pulse_log, ocv, n_rc, soc_start=soc_start, slow_rc=slow_rc)
    pulse_soc = [p.soc for p in result.pulses]
    say(
        f"HPPC test: {len(result.pulses)} pulses at SoC {min(pulse_soc):.2f}..{max(pulse_soc):.2f}"
        f", R0 {1e3 * float(np.min(result.r0_ohm)):.2f}..{1e3 * float(np.max(result.r0_ohm)):.2f}"
        f" mOhm, {n_rc} RC pair(s)"
        + (f", the slowest from {len(result.steps)} SoC steps" if slow_rc else "")
    )
    currents = np.concatenate((ocv_log.current_a, pulse_log.current_a))
    i_dis = float(-np.min(currents))
    i_chg = float(np.max(currents))
    hours = [float(log.time_s[-1] - log.time_s[0]) / 3600.0 for log in (ocv_log, pulse_log)]
    source = (
        f"identified by b2l from {data_source[:1500]}: OCV test ({len(ocv_log)} rows, "
        f"{hours[0]:.1f} h; {ocv.method}) and HPPC test ({len(pulse_log)} rows, "
        f"{hours[1]:.1f} h, {len(result.pulses)} pulses"
        + (
            f", the slowest RC pair from the rests after {len(result.steps)} SoC steps"
            if slow_rc
            else ""
        )
        + f"); SoC starts at {soc_start:g}"
    )
    fields: dict[str, JsonValue] = {
        "name": name,
        "chemistry": chemistry,
        "source": source,
        "capacity_ah": _sig(ocv.capacity_ah),
        "soc_grid": [_sig(x) for x in result.soc_grid.tolist()],
        "ocv_v": [_sig(x) for x in ocv.ocv_v.tolist()],
        "r0_ohm": [_sig(x) for x in result.r0_ohm.tolist()],
        "rc": [
            {"r_ohm": [_sig(x) for x in r.tolist()], "tau_s": [_sig(x) for x in tau.tolist()]}
            for r, tau in zip(result.r_ohm, result.tau_s, strict=True)
        ],
        "reference_temperature_c": round(float(np.mean(pulse_log.temperature_c)), 1),
        "voltage_min_v": _sig(ocv.voltage_min_v),
        "voltage_max_v": _sig(ocv.voltage_max_v),
        "current_max_charge_a": _sig(i_chg if i_chg > 0.0 else i_dis),
        "current_max_discharge_a": _sig(i_dis),
    }
    params = _parameters(fields)
    say(f"re-simulating the HPPC test ({len(pulse_log)} rows)")
    error_v = simulate_voltage(params, pulse_log, soc_start) - pulse_log.voltage_v
    fit: dict[str, JsonValue] = {
        "hppc_rmse_v": _sig(float(np.sqrt(np.mean(np.square(error_v))))),
        "hppc_max_abs_error_v": _sig(float(np.max(np.abs(error_v)))),
        "n_pulses": len(result.pulses),
        "pulse_soc": [_sig(x) for x in pulse_soc],
        "pulse_r0_ohm": [_sig(p.r0_ohm) for p in result.pulses],
        "pulse_fit_rmse_v": [_sig(p.fit_rmse_v) for p in result.pulses],
        "ocv_discharge_current_a": _sig(ocv.discharge_current_a),
    }
    if slow_rc:
        fit["step_soc"] = [_sig(p.soc) for p in result.steps]
        fit["step_fit_rmse_v"] = [_sig(p.fit_rmse_v) for p in result.steps]
    if ocv.half_gap_v is not None:
        fit["ocv_half_gap_v"] = _sig(ocv.half_gap_v)
    return _parameters({**fields, "fit": fit})


def _parameters(fields: dict[str, JsonValue]) -> CellParameters:
    try:
        return CellParameters.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'parameters'}: {e['msg']}"
            for e in exc.errors()
        )
        raise TwinValidationError(f"the identified parameters are not valid: {problems}") from None


def _sig(value: float) -> float:
    """``value`` rounded to 6 significant digits (monotonic, so tables keep their order)."""
    return float(f"{value:.6g}")


def _quiet(message: str) -> None:
    """Progress sink that drops the message."""
