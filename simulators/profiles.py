"""Load profiles: pack current (or power) against virtual time, seeded, reproducible.

Sign convention (SPEC section 3): **current and power are positive when the battery charges**.

* ``domestic_pv_self_consumption``: a house with PV and a battery that absorbs the PV surplus and
  covers the deficit within its C-rate limits (PV bell with seeded clouds, household load with
  morning and evening peaks and random appliance spikes).
* ``industrial_load_levelling``: peak shaving for a factory: the battery discharges at the
  workday peaks above a daily threshold and recharges at night.
* ``csv_profile``: ``time_s,current_a`` or ``time_s,power_w`` from CSV *text* (reading the file is
  the caller's job).

Generated profiles are normalised to the battery: PV and load are sized in units of the
battery's energy, so the profile is a current in amperes for a cell (or series string) of
``capacity_ah`` and does not depend on the pack voltage. The generators are open-loop (they do
not know the SoC): the battery management (``simulators.fleet``'s voltage guard) stops a pack
that is full or empty, as a real one would. Randomness comes only from ``numpy.random``
generators seeded by the caller; no wall clock is read. Every profile repeats with its period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from twin.cell_model import FloatArray
from twin.errors import TwinValidationError
from twin.lab_data import parse_csv

DAY_S = 86_400.0
ProfileKind = Literal["current", "power"]
Interpolation = Literal["previous", "linear"]


@dataclass(frozen=True)
class Profile:
    """Samples of pack current (A) or power (W) against time; positive while charging.

    ``time_s`` starts at 0 and increases strictly. With ``interpolation="previous"`` a sample
    holds until the next one (the last one until ``period_s``); with ``"linear"`` values are
    interpolated (from the last sample back to the first across the period's end). The profile
    repeats with ``period_s`` (default: the last time plus the last step).
    """

    time_s: FloatArray
    values: FloatArray
    kind: ProfileKind = "current"
    interpolation: Interpolation = "previous"
    period_s: float = 0.0
    name: str = "profile"
    _step_s: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        t = np.asarray(self.time_s, dtype=np.float64)
        v = np.asarray(self.values, dtype=np.float64)
        if t.ndim != 1 or v.shape != t.shape or t.size < 2:
            raise TwinValidationError("a profile needs equal-length 1-d time_s and values (>= 2)")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
            raise TwinValidationError("profile times and values must be finite")
        if t[0] != 0.0 or np.any(np.diff(t) <= 0.0):
            raise TwinValidationError("profile time_s must start at 0 and increase strictly")
        if self.kind not in ("current", "power"):
            raise TwinValidationError(f"profile kind must be current or power, not {self.kind!r}")
        if self.interpolation not in ("previous", "linear"):
            raise TwinValidationError(f"unknown interpolation {self.interpolation!r}")
        period = self.period_s or float(t[-1] + (t[-1] - t[-2]))
        if not (math.isfinite(period) and period > t[-1]):
            raise TwinValidationError("profile period_s must be beyond the last sample time")
        steps = np.diff(t)
        uniform = bool(np.allclose(steps, steps[0], rtol=1e-12, atol=0.0)) and math.isclose(
            period, t.size * steps[0], rel_tol=1e-12
        )
        object.__setattr__(self, "time_s", t)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "period_s", period)
        object.__setattr__(self, "_step_s", float(steps[0]) if uniform else 0.0)

    def value_at(self, t_s: ArrayLike) -> FloatArray:
        """Current (A) or power (W) at times ``t_s`` (any shape; the profile repeats)."""
        t = np.mod(np.asarray(t_s, dtype=np.float64), self.period_s)
        if self.interpolation == "linear":
            xp = np.append(self.time_s, self.period_s)
            fp = np.append(self.values, self.values[0])
            out: FloatArray = np.interp(t, xp, fp)
            return out
        if self._step_s:  # uniform grid: index arithmetic, no search
            index = np.minimum((t / self._step_s).astype(np.intp), self.values.size - 1)
        else:
            index = np.searchsorted(self.time_s, t, side="right") - 1
        result: FloatArray = self.values[np.clip(index, 0, self.values.size - 1)]
        return result

    def current_at(self, t_s: ArrayLike, pack_voltage_v: ArrayLike | None = None) -> FloatArray:
        """Pack current (A, positive charging) at ``t_s``; a power profile needs the voltage."""
        values = self.value_at(t_s)
        if self.kind == "current":
            return values
        if pack_voltage_v is None:
            raise TwinValidationError("a power profile needs the pack voltage to give a current")
        voltage = np.asarray(pack_voltage_v, dtype=np.float64)
        if np.any(voltage <= 0.0):
            raise TwinValidationError("pack voltage must be positive")
        out: FloatArray = values / voltage
        return out

    def scaled(self, factor: float) -> Profile:
        """The same profile with every value multiplied by ``factor``."""
        return Profile(
            self.time_s,
            self.values * factor,
            self.kind,
            self.interpolation,
            self.period_s,
            self.name,
        )

    @property
    def unit(self) -> str:
        """``A`` or ``W``."""
        return "A" if self.kind == "current" else "W"


def _grid(days: float, dt_s: float) -> tuple[FloatArray, int]:
    if not (days > 0 and math.isfinite(days)):
        raise TwinValidationError(f"days must be positive, got {days}")
    if not (dt_s > 0 and math.isfinite(dt_s)):
        raise TwinValidationError(f"dt_s must be positive, got {dt_s}")
    n = round(days * DAY_S / dt_s)
    if n < 2:
        raise TwinValidationError("the profile needs at least two samples (days / dt_s)")
    if n > 50_000_000:
        raise TwinValidationError("profile too long: raise dt_s or shorten days")
    t: FloatArray = np.arange(n, dtype=np.float64) * dt_s
    return t, n


def _gauss(x: FloatArray, mean: float, std: float) -> FloatArray:
    out: FloatArray = np.exp(-0.5 * ((x - mean) / std) ** 2)
    return out


def _events(
    rng: np.random.Generator,
    t: FloatArray,
    dt_s: float,
    per_day: float,
    start_hours: tuple[float, float],
    duration_s: tuple[float, float],
) -> list[tuple[int, int, float]]:
    """Random events ``(first index, end index, u)`` with ``u`` uniform 0..1 per event."""
    days = math.ceil((t[-1] + dt_s) / DAY_S)
    counts = rng.poisson(per_day, days)
    total = int(counts.sum())
    day = np.repeat(np.arange(days), counts)
    start = day * DAY_S + rng.uniform(*start_hours, total) * 3600.0
    length = rng.uniform(*duration_s, total)
    u = rng.uniform(0.0, 1.0, total)
    out = []
    for s, d, x in zip(start, length, u, strict=True):
        i0 = int(s // dt_s)
        i1 = max(i0 + 1, int((s + d) // dt_s))
        if i0 < t.size:
            out.append((i0, min(i1, t.size), float(x)))
    return out


def domestic_pv_self_consumption(
    days: float,
    dt_s: float,
    seed: int,
    capacity_ah: float,
    *,
    pv_peak_c: float = 0.8,
    daily_load_e: float = 1.6,
    max_charge_c: float = 0.5,
    max_discharge_c: float = 0.5,
    start_day_of_year: int = 120,
) -> Profile:
    """PV self-consumption of a household, as the battery current (A, positive charging).

    Sizes are relative to the battery's energy ``E`` (capacity x nominal voltage): PV peak power
    ``pv_peak_c * E`` per hour, household consumption ``daily_load_e * E`` per day. PV: a
    ``sin**1.5`` bell between sunrise and sunset (day length and peak follow the season from
    ``start_day_of_year``), a seeded clearness per day and seeded cloud dips (5 a day, 3-60 min,
    30-90 % deep). Load: base, morning (07:15) and evening (19:15) peaks, a seeded factor per
    day and appliance spikes (4 a day, 2-20 min, 1-4 x the mean load). The battery takes
    ``PV - load``, limited to ``max_charge_c`` / ``max_discharge_c`` times its capacity.
    """
    _positive(capacity_ah=capacity_ah, max_charge_c=max_charge_c, max_discharge_c=max_discharge_c)
    if pv_peak_c < 0 or daily_load_e < 0:
        raise TwinValidationError("pv_peak_c and daily_load_e must not be negative")
    t, n = _grid(days, dt_s)
    rng = np.random.default_rng(seed)
    day = (t // DAY_S).astype(np.intp)
    hour = (t % DAY_S) / 3600.0
    n_days = int(day[-1]) + 1
    season = np.cos(2.0 * np.pi * ((start_day_of_year + day) % 365.25 - 172.0) / 365.25)

    day_length_h = 12.0 + 3.5 * season
    sunrise_h = 13.0 - day_length_h / 2.0
    x = (hour - sunrise_h) / day_length_h
    bell = np.where((x > 0.0) & (x < 1.0), np.sin(np.pi * np.clip(x, 0.0, 1.0)) ** 1.5, 0.0)
    clearness = 0.25 + 0.75 * rng.beta(3.0, 1.5, n_days)
    pv = pv_peak_c * (0.8 + 0.2 * season) * clearness[day] * bell
    for i0, i1, u in _events(rng, t, dt_s, 5.0, (6.0, 20.0), (180.0, 3600.0)):
        pv[i0:i1] *= 1.0 - (0.3 + 0.6 * u)

    shape = (
        0.35
        + 1.1 * _gauss(hour, 7.25, 0.8)
        + 1.7 * _gauss(hour, 19.25, 1.4)
        + 0.4 * _gauss(hour, 12.5, 1.5)
    )
    shape_mean = 0.35 + (1.1 * 0.8 + 1.7 * 1.4 + 0.4 * 1.5) * math.sqrt(2.0 * math.pi) / 24.0
    mean_load = daily_load_e / 24.0
    load = mean_load / shape_mean * shape * rng.lognormal(0.0, 0.15, n_days)[day]
    for i0, i1, u in _events(rng, t, dt_s, 4.0, (6.5, 22.5), (120.0, 1200.0)):
        load[i0:i1] += mean_load * (1.0 + 3.0 * u)

    c_rate = np.clip(pv - load, -max_discharge_c, max_charge_c)
    return Profile(t, capacity_ah * c_rate, "current", "previous", n * dt_s, "domestic")


def industrial_load_levelling(
    days: float,
    dt_s: float,
    seed: int,
    capacity_ah: float,
    *,
    daily_shave_e: float = 0.8,
    max_charge_c: float = 0.25,
    max_discharge_c: float = 0.5,
    night_hours: tuple[float, float] = (0.0, 6.0),
    workdays_per_week: int = 5,
) -> Profile:
    """Peak shaving for a factory, as the battery current (A, positive charging).

    The factory load (night base, two shifts 06:00-22:00 with peaks at 09:30 and 14:30, seeded
    15-minute variations and a seeded factor per day; weekends at a third of the shift load) is
    shaved on workdays above a daily threshold chosen so that the battery delivers about
    ``daily_shave_e`` times its energy (within ``max_discharge_c``). During the night window the
    battery recharges what it delivered the day before (the first night: ``daily_shave_e``), at
    a constant current within ``max_charge_c``.
    """
    _positive(
        capacity_ah=capacity_ah,
        daily_shave_e=daily_shave_e,
        max_charge_c=max_charge_c,
        max_discharge_c=max_discharge_c,
    )
    night_start, night_end = night_hours
    if not 0.0 <= night_start < night_end <= 24.0:
        raise TwinValidationError("night_hours must be (start, end) within 0..24 h")
    if not 0 <= workdays_per_week <= 7:
        raise TwinValidationError("workdays_per_week must be within 0..7")
    t, n = _grid(days, dt_s)
    rng = np.random.default_rng(seed)
    day = (t // DAY_S).astype(np.intp)
    hour = (t % DAY_S) / 3600.0
    n_days = int(day[-1]) + 1
    workday = (np.arange(n_days) % 7) < workdays_per_week

    shift = 1.0 / (1.0 + np.exp(-(hour - 6.0) * 4.0)) / (1.0 + np.exp((hour - 22.0) * 4.0))
    process = 2.0 * shift + 1.5 * _gauss(hour, 9.5, 1.0) + 1.2 * _gauss(hour, 14.5, 1.2)
    quarter = (t // 900.0).astype(np.intp)  # 15-min variations, independent of dt_s
    wobble = 1.0 + 0.08 * rng.standard_normal(int(quarter[-1]) + 1)
    factor = rng.lognormal(0.0, 0.1, n_days)
    load = (1.0 + process * np.where(workday[day], 1.0, 1.0 / 3.0)) * factor[day] * wobble[quarter]

    # per-day threshold by bisection: shaved energy (in battery energies) = daily_shave_e
    low = np.zeros(n_days)
    high = np.full(n_days, float(load.max()))
    for _ in range(60):
        mid = 0.5 * (low + high)
        shaved = np.minimum(np.maximum(load - mid[day], 0.0), max_discharge_c)
        energy = np.bincount(day, weights=shaved, minlength=n_days) * dt_s / 3600.0
        too_much = energy > daily_shave_e
        low = np.where(too_much, mid, low)
        high = np.where(too_much, high, mid)
    threshold = np.where(workday, high, np.inf)
    discharge = np.minimum(np.maximum(load - threshold[day], 0.0), max_discharge_c)
    delivered = np.bincount(day, weights=discharge, minlength=n_days) * dt_s / 3600.0

    refill = np.concatenate(([daily_shave_e], delivered[:-1]))
    night = (hour >= night_start) & (hour < night_end)
    night_h = night_end - night_start
    charge = np.where(night, np.minimum(refill[day] / night_h, max_charge_c), 0.0)
    current = capacity_ah * (charge - discharge)
    return Profile(t, current, "current", "previous", n * dt_s, "industrial")


def csv_profile(
    text: str,
    *,
    source: str = "csv",
    interpolation: Interpolation = "previous",
    period_s: float | None = None,
    scale: float = 1.0,
) -> Profile:
    """A profile from CSV text with the columns ``time_s`` and ``current_a`` or ``power_w``.

    Other columns are ignored. Times are taken relative to the first row and must increase
    strictly; values are multiplied by ``scale``. The profile repeats with ``period_s``
    (default: the last time plus the last step). Errors are ``TwinValidationError`` naming the
    row or column.
    """
    if not math.isfinite(scale):
        raise TwinValidationError(f"{source}: scale must be finite")
    columns = parse_csv(text.removeprefix("\ufeff"), source=source)
    if "time_s" not in columns:
        raise TwinValidationError(
            f"{source}: missing column time_s; expected time_s,current_a or time_s,power_w "
            "(current and power positive when charging)"
        )
    present = [c for c in ("current_a", "power_w") if c in columns]
    if len(present) != 1:
        what = "both current_a and power_w" if present else "neither current_a nor power_w"
        raise TwinValidationError(f"{source}: has {what}; give exactly one of them")
    name = present[0]
    time_s, values = columns["time_s"], columns[name]
    if time_s.size < 2:
        raise TwinValidationError(f"{source}: needs at least 2 rows, has {time_s.size}")
    for column, arr in (("time_s", time_s), (name, values)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise TwinValidationError(f"{source}: {column} is NaN or infinite at row {bad[0] + 1}")
    steps = np.diff(time_s)
    if np.any(steps <= 0.0):
        row = int(np.flatnonzero(steps <= 0.0)[0]) + 2
        raise TwinValidationError(f"{source}: time_s must increase strictly (row {row})")
    relative = time_s - time_s[0]
    period = 0.0
    if period_s is not None:
        if not (math.isfinite(period_s) and period_s > relative[-1]):
            raise TwinValidationError(
                f"{source}: period_s must be beyond the last time ({relative[-1]:g} s)"
            )
        period = period_s
    kind: ProfileKind = "current" if name == "current_a" else "power"
    return Profile(relative, values * scale, kind, interpolation, period, source)


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise TwinValidationError(f"{name} must be positive, got {value}")
