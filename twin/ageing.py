"""Semi-empirical ageing: capacity fade and resistance growth, calendar and cycle, vectorised.

Four terms age a cell: calendar and cycle capacity loss, calendar and cycle resistance growth.
Each is a power law in its driver, with a rate that depends on the conditions::

    L = k * s ** z          s: time (calendar) or charge throughput (cycle), z: exponent
    k = scale * max(0, P_x(x - x0) + P_d(DoD - d0)) * max(0, P_c(C - c0) * B(C)) * A(T, C)
    A = exp(-(Ea - Ea_c * C) / Rg * (1 / T - 1 / T_ref))       (T_ref None: 1 / T_ref = 0)

``x`` is the storage voltage (OCV) or the SoC, ``DoD`` the depth of the cycles, ``C`` the C-rate,
``P_*`` polynomials (ascending coefficients), ``B`` a piecewise-linear table over C-rate and
``T`` the cell temperature in kelvin. SoH (the capacity factor) is ``1 - L_cal - L_cyc`` and the
resistance factor ``1 + G_cal + G_cyc``.

Changing conditions are integrated with the *equivalent time / throughput* method: a step
advances the loss along the curve of the step's own conditions, from the point where that curve
reaches the present loss::

    s_eq = (L / k) ** (1 / z);      L' = k * (s_eq + ds) ** z

so splitting a period at constant conditions into steps gives the loss of one step, and a cell
that aged fast in the past ages slowly now (the slope of a power law falls with the loss).

Published models shipped as defaults (``ageing_parameters_for``):

* NMC -- Schmalstieg, Kaebitz, Ecker, Sauer, "A holistic aging model for Li(NiMnCo)O2 based 18650
  lithium-ion batteries", J. Power Sources 257 (2014) 325-334, doi:10.1016/j.jpowsour.2014.02.012
  (Sanyo UR18650E, 2.05 Ah)::

      alpha_cap = (7.543 V - 23.75) 1e6 exp(-6976 / T)      L_cal = alpha_cap t[d] ** 0.75
      alpha_res = (5.270 V - 16.32) 1e5 exp(-5986 / T)      G_cal = alpha_res t[d] ** 0.75
      beta_cap  = 7.348e-3 (V_avg - 3.667)^2 + 7.600e-4 + 4.081e-3 DoD    L_cyc = beta_cap Q ** 0.5
      beta_res  = 2.153e-4 (V_avg - 3.725)^2 - 1.521e-5 + 2.798e-4 DoD    G_cyc = beta_res Q

  with Q the charge throughput (charge plus discharge, Ah, as in NREL's BLAST-Lite replica of the
  model). Cycle ageing has no temperature or C-rate dependence (fitted at 35 degC, 1C).
* LFP -- cycle capacity fade: Wang et al., "Cycle-life model for graphite-LiFePO4 cells",
  J. Power Sources 196 (2011) 3942-3948, doi:10.1016/j.jpowsour.2010.11.134 (A123 ANR26650M1,
  2.2 Ah; the cell of ``lfp_a123``)::

      Q_loss[%] = B(C) exp(-(31700 - 370.3 C) / (R T)) Ah ** 0.55,
      B = 31630, 21681, 12934, 15512 at C/2, 2C, 6C, 10C,  Ah = discharge throughput

  Calendar capacity fade and resistance growth: Naumann, Schimpe, Keil, Hesse, Jossen, "Analysis
  and modeling of calendar aging of a commercial LiFePO4/graphite cell", J. Energy Storage 17
  (2018) 153-169, doi:10.1016/j.est.2018.01.019 (Sony/Murata US26650FTC1)::

      L_cal = 1.2571e-5 exp(-17126/R (1/T - 1/298.15)) (2.85750 (SoC - 0.5)^3 + 0.60225) t[s]^0.5
      G_cal = 3.4194e-10 exp(-71827/R (1/T - 1/298.15)) (-3.3903 (SoC - 0.5)^2 + 1.5604) t[s]

  Cycle resistance growth: Naumann, Spingler, Jossen, "Analysis and modeling of cycle aging of
  a commercial LiFePO4/graphite cell", J. Power Sources 451 (2020) 227666,
  doi:10.1016/j.jpowsour.2019.227666::

      G_cyc[%] = (-0.0020 C + 0.0021) (6.8477 (DoD - 0.5)^3 + 0.91882) FEC

  Wang's cycling tests include the calendar loss of the test time, so adding Naumann's calendar
  term counts that part twice: a conservative (pessimistic) combination.

The models were fitted on other cells than the shipped ones (except Wang for A123): throughput is
scaled by full equivalent cycles (``AgeingLaw.unit``), so a law sees the same number of cycles.

Pure: no I/O, no clock; same inputs give the same outputs bit for bit; ``AgeingState`` round-trips
through JSON exactly.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field, model_validator

from twin.base import B2LModel
from twin.errors import TwinValidationError

FloatArray = NDArray[np.float64]
GAS_CONSTANT_J_PER_MOL_K = 8.314462618
KELVIN = 273.15
STATE_KIND = "b2l.ageing_state"
STATE_VERSION = 1
MIN_CAPACITY_FACTOR = 0.01
"""``health`` never returns a capacity factor below this (a dead cell, but a positive one)."""

Coefficients = Annotated[list[float], Field(max_length=8)]


class AgeingLaw(B2LModel):
    """One power-law term ``k(conditions) * s ** exponent`` (see the module docstring)."""

    driver: Literal["time", "throughput"]
    unit: Annotated[float, Field(gt=0.0)]
    """Time: seconds per unit of the law's time (86400: days). Throughput: the law's throughput
    per full equivalent cycle of the cell (2 x its reference capacity when it counts charge and
    discharge Ah, 1 x when it counts discharge Ah only, 1 when it counts FECs)."""
    exponent: Annotated[float, Field(gt=0.0, le=2.0)]
    scale: Annotated[float, Field(ge=0.0)]
    stress: Literal["voltage", "soc"] = "soc"
    """The stress variable ``x``: storage voltage (OCV, V) or SoC."""
    stress_center: float = 0.0
    stress_poly: Coefficients = Field(default_factory=lambda: [1.0])
    """``P_x`` in ascending powers of ``x - stress_center``; empty: 0."""
    dod_center: float = 0.0
    dod_poly: Coefficients = Field(default_factory=list)
    """``P_d`` in ascending powers of ``DoD - dod_center``; empty: 0."""
    c_rate_center: float = 0.0
    c_rate_poly: Coefficients = Field(default_factory=lambda: [1.0])
    """``P_c`` in ascending powers of ``C - c_rate_center``."""
    c_rate_points: Coefficients | None = None
    c_rate_factors: Coefficients | None = None
    """``B(C)``: piecewise-linear table (clamped at its ends); None: 1."""
    activation_energy_j_per_mol: Annotated[float, Field(ge=0.0, le=500_000.0)] = 0.0
    activation_c_rate_j_per_mol: float = 0.0
    """``Ea_c``: the activation energy falls by this much per unit of C-rate (Wang 2011)."""
    reference_temperature_c: float | None = 25.0
    """None: absolute Arrhenius factor ``exp(-Ea / (Rg T))``, as published by some models."""

    @model_validator(mode="after")
    def _table_agrees(self) -> AgeingLaw:
        points, factors = self.c_rate_points, self.c_rate_factors
        if (points is None) != (factors is None):
            raise ValueError("c_rate_points and c_rate_factors go together")
        if points is not None and factors is not None:
            if len(points) != len(factors) or len(points) < 1:
                raise ValueError("c_rate_points and c_rate_factors need the same length (>= 1)")
            if any(b <= a for a, b in itertools.pairwise(points)):
                raise ValueError("c_rate_points must increase strictly")
        return self

    def rate(
        self,
        x: FloatArray,
        temperature_c: FloatArray,
        dod: FloatArray | float = 0.0,
        c_rate: FloatArray | float = 0.0,
    ) -> FloatArray:
        """The rate ``k`` (loss per unit of driver ** exponent) at the given conditions."""
        stress = _poly(self.stress_poly, np.asarray(x) - self.stress_center)
        if self.dod_poly:
            stress = stress + _poly(self.dod_poly, np.asarray(dod) - self.dod_center)
        c = np.asarray(c_rate, dtype=np.float64)
        c_factor = _poly(self.c_rate_poly, c - self.c_rate_center)
        if self.c_rate_points is not None and self.c_rate_factors is not None:
            c_factor = c_factor * np.interp(c, self.c_rate_points, self.c_rate_factors)
        k = self.scale * np.maximum(stress, 0.0) * np.maximum(c_factor, 0.0)
        energy = self.activation_energy_j_per_mol - self.activation_c_rate_j_per_mol * c
        if self.activation_energy_j_per_mol or self.activation_c_rate_j_per_mol:
            inv_t = 1.0 / (np.asarray(temperature_c) + KELVIN)
            if self.reference_temperature_c is not None:
                inv_t = inv_t - 1.0 / (self.reference_temperature_c + KELVIN)
            k = k * np.exp(-energy / GAS_CONSTANT_J_PER_MOL_K * inv_t)
        out: FloatArray = np.asarray(k, dtype=np.float64)
        return out


def _poly(coefficients: list[float], x: ArrayLike) -> FloatArray:
    """Sum of ``c_i x**i`` (Horner); 0 for no coefficients."""
    xa = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(xa)
    for c in reversed(coefficients):
        out = out * xa + c
    result: FloatArray = out
    return result


class AgeingParameters(B2LModel):
    """The four ageing terms of a cell type; a missing term does not age the cell."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    chemistry: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
    source: Annotated[str, Field(min_length=1, max_length=4000)]
    calendar_capacity: AgeingLaw | None = None
    cycle_capacity: AgeingLaw | None = None
    calendar_resistance: AgeingLaw | None = None
    cycle_resistance: AgeingLaw | None = None

    @model_validator(mode="after")
    def _drivers_match(self) -> AgeingParameters:
        expected = {
            "calendar_capacity": "time",
            "calendar_resistance": "time",
            "cycle_capacity": "throughput",
            "cycle_resistance": "throughput",
        }
        for name, driver in expected.items():
            law: AgeingLaw | None = getattr(self, name)
            if law is not None and law.driver != driver:
                raise ValueError(f"{name} must be driven by {driver}, not {law.driver}")
        return self

    @property
    def needs_voltage(self) -> bool:
        """True when a term's stress variable is the voltage (``age`` then needs ``voltage_v``)."""
        return any(law is not None and law.stress == "voltage" for law in self._laws())

    def _laws(self) -> tuple[AgeingLaw | None, ...]:
        return (
            self.calendar_capacity,
            self.cycle_capacity,
            self.calendar_resistance,
            self.cycle_resistance,
        )

    def to_json(self) -> str:
        """The parameter file's text (``null`` is meaningful: keep it)."""
        return self.model_dump_json(indent=2)


_SCHMALSTIEG_REF_AH = 2.05
_SCHMALSTIEG = (
    "Schmalstieg, Kaebitz, Ecker, Sauer, 'A holistic aging model for Li(NiMnCo)O2 based 18650 "
    "lithium-ion batteries', J. Power Sources 257 (2014) 325-334, "
    "doi:10.1016/j.jpowsour.2014.02.012 (Sanyo UR18650E NMC/graphite, 2.05 Ah). Calendar: "
    "alpha(V, T) t[days]^0.75 for capacity and "
    "resistance; cycle: beta(V_avg, DoD) sqrt(Q) for capacity, beta(V_avg, DoD) Q for resistance, "
    "Q = charge throughput (charge + discharge Ah) of the 2.05 Ah cell, scaled here by full "
    "equivalent cycles. Cycle terms fitted at 35 degC and 1C only (no temperature dependence)."
)
_LFP = (
    "Cycle capacity: Wang et al., 'Cycle-life model for graphite-LiFePO4 cells', J. Power Sources "
    "196 (2011) 3942-3948, doi:10.1016/j.jpowsour.2010.11.134 (A123 ANR26650M1, 2.2 Ah): "
    "Q_loss[%] = B(C) exp(-(31700 - 370.3 C)/(R T)) Ah^0.55, Ah = discharge throughput. Calendar "
    "capacity and resistance: Naumann, Schimpe, Keil, Hesse, Jossen, J. Energy Storage 17 (2018) "
    "153-169, doi:10.1016/j.est.2018.01.019 (Sony US26650FTC1): sqrt(t[s]) capacity, linear "
    "resistance, Arrhenius 17126 / 71827 J/mol, cubic/quadratic in SoC - 0.5. Cycle resistance: "
    "Naumann, Spingler, Jossen, J. Power Sources 451 (2020) 227666, "
    "doi:10.1016/j.jpowsour.2019.227666: (-0.0020 C + 0.0021)(6.8477 (DoD - 0.5)^3 + 0.91882) "
    "FEC [%]. Wang's cycling data include calendar loss, so the sum is conservative."
)


def _schmalstieg() -> AgeingParameters:
    return AgeingParameters(
        name="Schmalstieg 2014 (NMC)",
        chemistry="NMC",
        source=_SCHMALSTIEG,
        calendar_capacity=AgeingLaw(
            driver="time",
            unit=86_400.0,
            exponent=0.75,
            scale=1e6,
            stress="voltage",
            stress_poly=[-23.75, 7.543],
            activation_energy_j_per_mol=6976.0 * GAS_CONSTANT_J_PER_MOL_K,
            reference_temperature_c=None,
        ),
        calendar_resistance=AgeingLaw(
            driver="time",
            unit=86_400.0,
            exponent=0.75,
            scale=1e5,
            stress="voltage",
            stress_poly=[-16.32, 5.270],
            activation_energy_j_per_mol=5986.0 * GAS_CONSTANT_J_PER_MOL_K,
            reference_temperature_c=None,
        ),
        cycle_capacity=AgeingLaw(
            driver="throughput",
            unit=2.0 * _SCHMALSTIEG_REF_AH,
            exponent=0.5,
            scale=1.0,
            stress="voltage",
            stress_center=3.667,
            stress_poly=[7.600e-4, 0.0, 7.348e-3],
            dod_poly=[0.0, 4.081e-3],
        ),
        cycle_resistance=AgeingLaw(
            driver="throughput",
            unit=2.0 * _SCHMALSTIEG_REF_AH,
            exponent=1.0,
            scale=1.0,
            stress="voltage",
            stress_center=3.725,
            stress_poly=[-1.521e-5, 0.0, 2.153e-4],
            dod_poly=[0.0, 2.798e-4],
        ),
    )


def _lfp() -> AgeingParameters:
    return AgeingParameters(
        name="Wang 2011 + Naumann 2018/2020 (LFP)",
        chemistry="LFP",
        source=_LFP,
        calendar_capacity=AgeingLaw(
            driver="time",
            unit=1.0,
            exponent=0.5,
            scale=1.2571e-5,
            stress="soc",
            stress_center=0.5,
            stress_poly=[0.60225, 0.0, 0.0, 2.85750],
            activation_energy_j_per_mol=17_126.0,
        ),
        calendar_resistance=AgeingLaw(
            driver="time",
            unit=1.0,
            exponent=1.0,
            scale=3.4194e-10,
            stress="soc",
            stress_center=0.5,
            stress_poly=[1.5604, 0.0, -3.3903],
            activation_energy_j_per_mol=71_827.0,
        ),
        cycle_capacity=AgeingLaw(
            driver="throughput",
            unit=2.2,
            exponent=0.55,
            scale=0.01,
            c_rate_points=[0.5, 2.0, 6.0, 10.0],
            c_rate_factors=[31_630.0, 21_681.0, 12_934.0, 15_512.0],
            activation_energy_j_per_mol=31_700.0,
            activation_c_rate_j_per_mol=370.3,
            reference_temperature_c=None,
        ),
        cycle_resistance=AgeingLaw(
            driver="throughput",
            unit=1.0,
            exponent=1.0,
            scale=0.01,
            stress_poly=[],
            dod_center=0.5,
            dod_poly=[0.91882, 0.0, 0.0, 6.8477],
            c_rate_poly=[0.0021, -0.0020],
        ),
    )


def ageing_parameters_for(chemistry: str) -> AgeingParameters:
    """The published default model of a chemistry: ``NMC*`` (Schmalstieg) or ``LFP*``."""
    key = chemistry.strip().upper()
    if key.startswith("NMC"):
        return _schmalstieg()
    if key.startswith(("LFP", "LIFEPO4")):
        return _lfp()
    raise TwinValidationError(
        f"no ageing model for chemistry {chemistry!r}; known: NMC, LFP (or give a parameter file)"
    )


@dataclass(frozen=True, slots=True)
class AgeingState:
    """Accumulated ageing of many cells; every array has the cells' shape.

    ``time_s`` and ``throughput_ah`` (charge plus discharge) are the real totals the cells went
    through; ``equivalent_full_cycles`` is the throughput over twice the capacity. The four loss
    arrays are fractions of the fresh capacity / resistance.
    """

    time_s: FloatArray
    throughput_ah: FloatArray
    equivalent_full_cycles: FloatArray
    calendar_capacity_loss: FloatArray
    cycle_capacity_loss: FloatArray
    calendar_resistance_growth: FloatArray
    cycle_resistance_growth: FloatArray

    @classmethod
    def fresh(cls, shape: int | tuple[int, ...] = ()) -> AgeingState:
        """New cells: no history."""
        z = np.zeros(shape)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy())

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the cell arrays."""
        return tuple(self.time_s.shape)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain lists of floats; ``from_json_dict`` restores the arrays bit for bit."""
        out: dict[str, Any] = {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "shape": list(self.shape),
        }
        for name in _FIELDS:
            out[name] = getattr(self, name).ravel().tolist()
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> AgeingState:
        """Inverse of ``to_json_dict``; TwinValidationError on a malformed document."""
        try:
            if data.get("kind") != STATE_KIND or data.get("version") != STATE_VERSION:
                raise TwinValidationError(f"not a {STATE_KIND} version {STATE_VERSION} document")
            shape = tuple(int(n) for n in data["shape"])
            arrays: dict[str, FloatArray] = {}
            for name in _FIELDS:
                values = np.asarray(data[name], dtype=np.float64)
                if not np.all(np.isfinite(values)):
                    raise TwinValidationError(f"{name} holds NaN or infinity")
                arrays[name] = values.reshape(shape)
            return cls(**arrays)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, TwinValidationError):
                raise
            raise TwinValidationError(f"not an ageing state document: {exc}") from exc

    def to_json(self) -> str:
        """JSON text (floats written so they read back exactly)."""
        return json.dumps(self.to_json_dict())

    @classmethod
    def from_json(cls, text: str) -> AgeingState:
        """Inverse of ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TwinValidationError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise TwinValidationError("an ageing state document is a JSON object")
        return cls.from_json_dict(data)


_FIELDS = (
    "time_s",
    "throughput_ah",
    "equivalent_full_cycles",
    "calendar_capacity_loss",
    "cycle_capacity_loss",
    "calendar_resistance_growth",
    "cycle_resistance_growth",
)


def advance_power_law(
    loss: FloatArray, rate: FloatArray, exponent: float, driver: FloatArray | float
) -> FloatArray:
    """Advance ``loss`` by ``driver`` along ``rate * s ** exponent`` (equivalent-time method).

    Where the rate is zero (or the driver is), the loss stays.
    """
    d = np.asarray(driver, dtype=np.float64)
    if exponent == 1.0:
        out: FloatArray = loss + rate * d
        return out
    positive = rate > 0.0
    safe_rate = np.where(positive, rate, 1.0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        s_eq = (loss / safe_rate) ** (1.0 / exponent)
        new = rate * (s_eq + d) ** exponent
    keep = ~positive | ~np.isfinite(new) | (d <= 0.0)
    result: FloatArray = np.where(keep, loss, np.maximum(new, loss))
    return result


def age(
    params: AgeingParameters,
    state: AgeingState,
    soc: ArrayLike,
    temperature_c: ArrayLike,
    current_a: ArrayLike,
    dt_s: ArrayLike,
    capacity_ah: ArrayLike,
    *,
    voltage_v: ArrayLike | None = None,
    throughput_ah: ArrayLike | None = None,
    depth_of_discharge: ArrayLike | None = None,
) -> AgeingState:
    """Age the cells of ``state`` by ``dt_s`` seconds (scalar or per cell) under the given
    (mean) conditions.

    ``soc`` and ``temperature_c`` are the mean SoC and temperature over the step; ``current_a``
    the cell current (sign ignored), giving the C-rate ``|I| / capacity_ah`` and, unless
    ``throughput_ah`` is given, the throughput ``|I| dt``. ``capacity_ah`` is the cell's nominal
    capacity (C-rate and full equivalent cycles refer to it). ``voltage_v`` is the open-circuit
    voltage at ``soc`` (needed by voltage-driven laws). ``depth_of_discharge`` is the depth of the
    cycles the throughput belongs to; by default the throughput of the step over twice the
    capacity (the step is taken as one full cycle), capped at 1. Every argument broadcasts
    against the state's shape.
    """
    shape = state.shape

    def cells(values: ArrayLike, name: str) -> FloatArray:
        try:
            arr = np.broadcast_to(np.asarray(values, dtype=np.float64), shape)
        except ValueError as exc:
            raise TwinValidationError(f"{name} does not fit the cells' shape {shape}") from exc
        if not np.all(np.isfinite(arr)):
            raise TwinValidationError(f"{name} must be finite")
        return arr

    dt = cells(dt_s, "dt_s")
    if np.any(dt < 0.0):
        raise TwinValidationError("dt_s must not be negative")
    soc_a = np.clip(cells(soc, "soc"), 0.0, 1.0)
    temp = cells(temperature_c, "temperature_c")
    if np.any(temp <= -KELVIN):
        raise TwinValidationError("temperature_c must be above absolute zero")
    current = np.abs(cells(current_a, "current_a"))
    capacity = cells(capacity_ah, "capacity_ah")
    if np.any(capacity <= 0.0):
        raise TwinValidationError("capacity_ah must be positive")
    if throughput_ah is None:
        throughput = current * dt / 3600.0
    else:
        throughput = cells(throughput_ah, "throughput_ah")
        if np.any(throughput < 0.0):
            raise TwinValidationError("throughput_ah must not be negative")
    fec = throughput / (2.0 * capacity)
    if depth_of_discharge is None:
        dod = np.minimum(fec, 1.0)
    else:
        dod = np.clip(cells(depth_of_discharge, "depth_of_discharge"), 0.0, 1.0)
    c_rate = current / capacity
    voltage: FloatArray | None = None
    if voltage_v is not None:
        voltage = cells(voltage_v, "voltage_v")
    elif params.needs_voltage:
        raise TwinValidationError(f"the ageing model {params.name!r} needs voltage_v")

    def stress(law: AgeingLaw) -> FloatArray:
        if law.stress == "voltage":
            assert voltage is not None
            return voltage
        return soc_a

    def advance(law: AgeingLaw | None, loss: FloatArray) -> FloatArray:
        if law is None:
            return loss.copy()
        k = law.rate(stress(law), temp, dod, c_rate)
        if law.driver == "time":
            driver: FloatArray = dt / law.unit
        else:
            driver = fec * law.unit
        return advance_power_law(loss, k, law.exponent, driver)

    return AgeingState(
        time_s=state.time_s + dt,
        throughput_ah=state.throughput_ah + throughput,
        equivalent_full_cycles=state.equivalent_full_cycles + fec,
        calendar_capacity_loss=advance(params.calendar_capacity, state.calendar_capacity_loss),
        cycle_capacity_loss=advance(params.cycle_capacity, state.cycle_capacity_loss),
        calendar_resistance_growth=advance(
            params.calendar_resistance, state.calendar_resistance_growth
        ),
        cycle_resistance_growth=advance(params.cycle_resistance, state.cycle_resistance_growth),
    )


def health(state: AgeingState) -> tuple[FloatArray, FloatArray]:
    """``(capacity_factor, resistance_factor)`` of every cell: SoH (1 fresh) and R / R_fresh."""
    capacity = 1.0 - state.calendar_capacity_loss - state.cycle_capacity_loss
    resistance = 1.0 + state.calendar_resistance_growth + state.cycle_resistance_growth
    capacity_factor: FloatArray = np.maximum(capacity, MIN_CAPACITY_FACTOR)
    resistance_factor: FloatArray = np.asarray(resistance, dtype=np.float64)
    return capacity_factor, resistance_factor
