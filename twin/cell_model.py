"""Vectorised equivalent-circuit cell model: pure step functions over arrays of cells.

    V = OCV(soc, T) + h + R0(soc, T) * i + sum_k v_k          (i > 0 while charging)

    soc' = soc + eta(i) * i * dt / (3600 * Q)
    v_k' = a_k * v_k + R_k (1 - a_k) * i,         a_k = exp(-dt / tau_k)       (exact for
                                                                               constant i)
    h'   = b * h + (1 - b) * H * sign(i),         b = exp(-|eta i| gamma dt / (3600 Q))
    T'   = T_inf + (T - T_inf) * exp(-hA dt / C),  T_inf = T_amb + q / hA
    q    = i * (V - OCV) + i * T_K * dOCV/dT       (Joule + reversible heat, W)

Resistances follow Arrhenius: R(T) = R(T_ref) * exp(Ea / Rg * (1/T - 1/T_ref)). Every array may
have any shape (cells, or packs x cells); per-cell capacity and resistance factors broadcast
against it, so cell-to-cell spread costs nothing extra. No Python loop runs over cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twin.cell_params import CellParameters
from twin.errors import TwinValidationError

FloatArray = NDArray[np.float64]
GAS_CONSTANT_J_PER_MOL_K = 8.314462618
KELVIN = 273.15
_GRID_POINTS = 256
_FINE_GRID_POINTS = 2001


class _UniformGrid:
    """Tables resampled on a uniform SoC grid: interpolation by index arithmetic, no search."""

    def __init__(self, soc_grid: list[float], tables: dict[str, list[float]]) -> None:
        steps = np.diff(soc_grid)
        if np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
            # keep every knot of a uniform table: refine each interval an integer number of times
            refine = max(1, math.ceil((_GRID_POINTS - 1) / len(steps)))
            self.n = len(steps) * refine + 1
        else:
            self.n = _FINE_GRID_POINTS
        self.x = np.linspace(soc_grid[0], soc_grid[-1], self.n)
        self.lo = soc_grid[0]
        self.scale = (self.n - 1) / (soc_grid[-1] - soc_grid[0])
        self.tables: dict[str, FloatArray] = {}
        self.slopes: dict[str, FloatArray] = {}
        self.constants: dict[str, float] = {}
        for name, values in tables.items():
            self.add(name, np.interp(self.x, soc_grid, values))

    def add(self, name: str, values: FloatArray) -> None:
        """Add a table sampled on this grid; a constant table costs no interpolation."""
        if np.all(values == values[0]):
            self.constants[name] = float(values[0])
        self.tables[name] = values
        self.slopes[name] = np.diff(values)

    def locate(self, soc: FloatArray) -> tuple[NDArray[np.intp], FloatArray]:
        """Index of the grid interval and the fraction within it (clamped at the ends)."""
        x = np.clip((soc - self.lo) * self.scale, 0.0, self.n - 1.000001)
        index = x.astype(np.intp)
        return index, x - index

    def value(self, name: str, index: NDArray[np.intp], frac: FloatArray) -> FloatArray | float:
        """Linear interpolation of one table (a plain float for a constant table)."""
        constant = self.constants.get(name)
        if constant is not None:
            return constant
        out: FloatArray = self.tables[name][index] + self.slopes[name][index] * frac
        return out

    def derivative(self, name: str, index: NDArray[np.intp]) -> FloatArray:
        """d(table)/d(soc) of one table, piecewise constant."""
        out: FloatArray = self.slopes[name][index] * self.scale
        return out


@dataclass(frozen=True, slots=True)
class CellState:
    """State of many cells; every array has the cells' shape (``v_rc_v`` a leading branch axis)."""

    soc: FloatArray
    v_rc_v: FloatArray
    hysteresis_v: FloatArray
    temperature_c: FloatArray

    def to_json_dict(self) -> dict[str, Any]:
        """Plain lists of floats; ``from_json_dict`` restores the arrays bit for bit."""
        return {
            "shape": list(self.soc.shape),
            "soc": self.soc.ravel().tolist(),
            "v_rc_v": self.v_rc_v.ravel().tolist(),
            "n_rc": int(self.v_rc_v.shape[0]),
            "hysteresis_v": self.hysteresis_v.ravel().tolist(),
            "temperature_c": self.temperature_c.ravel().tolist(),
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> CellState:
        """Inverse of ``to_json_dict``; TwinValidationError on a malformed document."""
        try:
            shape = tuple(int(n) for n in data["shape"])
            n_rc = int(data["n_rc"])

            def arr(name: str, full: tuple[int, ...]) -> FloatArray:
                values = np.asarray(data[name], dtype=np.float64)
                if not np.all(np.isfinite(values)):
                    raise TwinValidationError(f"{name} holds NaN or infinity")
                return values.reshape(full)

            return cls(
                soc=arr("soc", shape),
                v_rc_v=arr("v_rc_v", (n_rc, *shape)),
                hysteresis_v=arr("hysteresis_v", shape),
                temperature_c=arr("temperature_c", shape),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TwinValidationError(f"not a cell state document: {exc}") from exc


class CellModel:
    """A parameter set compiled for fast evaluation, with optional per-cell spread.

    ``capacity_scale`` and ``resistance_scale`` multiply the cell's capacity and all its
    resistances; they broadcast against the state arrays (e.g. shape ``(packs, cells)``).
    """

    def __init__(
        self,
        params: CellParameters,
        capacity_scale: ArrayLike = 1.0,
        resistance_scale: ArrayLike = 1.0,
    ) -> None:
        self.params = params
        self.n_rc = len(params.rc)
        tables: dict[str, list[float]] = {"ocv": params.ocv_v, "r0": params.r0_ohm}
        tables["docv_dt"] = params.docv_dt_v_per_k or [0.0] * len(params.soc_grid)
        for k, branch in enumerate(params.rc):
            tables[f"rc_r{k}"] = branch.r_ohm
            tables[f"rc_tau{k}"] = branch.tau_s
        self.grid = _UniformGrid(params.soc_grid, tables)
        self.capacity_as = np.asarray(capacity_scale, dtype=np.float64) * params.capacity_ah * 3600
        self.resistance_scale = np.asarray(resistance_scale, dtype=np.float64)
        if np.any(self.capacity_as <= 0) or np.any(self.resistance_scale <= 0):
            raise TwinValidationError("capacity and resistance scales must be positive")
        self._t_ref_k = params.reference_temperature_c + KELVIN
        self._ea_over_r = params.activation_energy_j_per_mol / GAS_CONSTANT_J_PER_MOL_K
        self._max_tables = len(self.grid.tables) + 8 * self.n_rc  # irregular steps: no growth

    def _rc_decay(
        self, k: int, dt_s: float, index: NDArray[np.intp], frac: FloatArray
    ) -> FloatArray | float:
        """exp(-dt/tau_k) per cell; tabulated once for each of the first few time steps seen."""
        name = f"rc_decay{k}@{dt_s!r}"
        if name not in self.grid.tables and len(self.grid.tables) < self._max_tables:
            self.grid.add(name, np.exp(-dt_s / self.grid.tables[f"rc_tau{k}"]))
        if name in self.grid.tables:
            return self.grid.value(name, index, frac)
        decay: FloatArray = np.exp(-dt_s / self.grid.value(f"rc_tau{k}", index, frac))
        return decay

    def initial_state(self, soc: ArrayLike, temperature_c: ArrayLike = 25.0) -> CellState:
        """Cells at rest: no RC voltage, no hysteresis."""
        soc_arr = np.array(soc, dtype=np.float64)
        if np.any((soc_arr < 0) | (soc_arr > 1)) or not np.all(np.isfinite(soc_arr)):
            raise TwinValidationError("initial SoC must be within 0..1")
        shape = np.broadcast_shapes(soc_arr.shape, np.shape(self.capacity_as))
        soc_arr = np.broadcast_to(soc_arr, shape).copy()
        temperature = np.broadcast_to(np.asarray(temperature_c, dtype=np.float64), shape).copy()
        return CellState(
            soc=soc_arr,
            v_rc_v=np.zeros((self.n_rc, *shape)),
            hysteresis_v=np.zeros(shape),
            temperature_c=temperature,
        )

    def resistance_factor(self, temperature_c: FloatArray) -> FloatArray:
        """Arrhenius factor times the per-cell resistance scale."""
        if self._ea_over_r == 0.0:
            return np.broadcast_to(self.resistance_scale, np.shape(temperature_c))
        arrhenius = np.exp(self._ea_over_r * (1.0 / (temperature_c + KELVIN) - 1.0 / self._t_ref_k))
        out: FloatArray = arrhenius * self.resistance_scale
        return out

    def ocv(self, soc: FloatArray, temperature_c: FloatArray | float) -> FloatArray:
        """Open-circuit voltage at ``soc`` and temperature."""
        index, frac = self.grid.locate(np.asarray(soc, dtype=np.float64))
        base = self.grid.value("ocv", index, frac)
        delta_t = np.asarray(temperature_c) - self.params.reference_temperature_c
        out: FloatArray = base + self.grid.value("docv_dt", index, frac) * delta_t
        return out

    def ocv_slope(self, soc: FloatArray) -> FloatArray:
        """dOCV/dSoC in volts per unit SoC (for Kalman filters)."""
        index, _ = self.grid.locate(np.asarray(soc, dtype=np.float64))
        return self.grid.derivative("ocv", index)

    def terminal_voltage(self, state: CellState, current_a: ArrayLike) -> FloatArray:
        """Voltage at the cell terminals while ``current_a`` flows (positive: charging)."""
        index, frac = self.grid.locate(state.soc)
        return self._voltage(state, np.asarray(current_a, dtype=np.float64), index, frac)

    def _voltage(
        self, state: CellState, current: FloatArray, index: NDArray[np.intp], frac: FloatArray
    ) -> FloatArray:
        r0 = self.grid.value("r0", index, frac) * self.resistance_factor(state.temperature_c)
        ocv = self.grid.value("ocv", index, frac)
        ocv = ocv + self.grid.value("docv_dt", index, frac) * (
            state.temperature_c - self.params.reference_temperature_c
        )
        v: FloatArray = ocv + state.hysteresis_v + r0 * current
        for k in range(self.n_rc):
            v = v + state.v_rc_v[k]
        return v

    def step(
        self, state: CellState, current_a: ArrayLike, ambient_c: ArrayLike, dt_s: float
    ) -> CellState:
        """Advance every cell by ``dt_s`` seconds at constant ``current_a``; returns a new state."""
        if not (dt_s > 0.0 and math.isfinite(dt_s)):
            raise TwinValidationError(f"dt_s must be positive and finite, got {dt_s}")
        p = self.params
        current = np.asarray(current_a, dtype=np.float64)
        index, frac = self.grid.locate(state.soc)
        r_factor = self.resistance_factor(state.temperature_c)
        if p.coulombic_efficiency == 1.0:
            charge_as = current * dt_s
        else:
            charge_as = np.where(current > 0.0, p.coulombic_efficiency * current, current) * dt_s

        v_rc = np.empty(np.broadcast_shapes(state.v_rc_v.shape, (1, *np.shape(current))))
        overpotential = self.grid.value("r0", index, frac) * r_factor * current
        for k in range(self.n_rc):
            decay = self._rc_decay(k, dt_s, index, frac)
            r_k = self.grid.value(f"rc_r{k}", index, frac) * r_factor
            v_rc[k] = decay * state.v_rc_v[k] + r_k * (1.0 - decay) * current
            overpotential = overpotential + state.v_rc_v[k]

        hysteresis = state.hysteresis_v
        if p.hysteresis_v > 0.0:  # at zero current b = 1: the state holds
            b = np.exp(np.abs(charge_as) * (-p.hysteresis_rate) / self.capacity_as)
            hysteresis = b * hysteresis + (1.0 - b) * p.hysteresis_v * np.sign(current)

        entropic = (state.temperature_c + KELVIN) * self.grid.value("docv_dt", index, frac)
        heat_w = current * (overpotential + state.hysteresis_v + entropic)
        t_inf = np.asarray(ambient_c, dtype=np.float64) + heat_w / p.heat_transfer_w_per_k
        decay_t = math.exp(-p.heat_transfer_w_per_k * dt_s / p.heat_capacity_j_per_k)
        temperature = t_inf + (state.temperature_c - t_inf) * decay_t

        soc = state.soc + charge_as / self.capacity_as
        return CellState(soc=soc, v_rc_v=v_rc, hysteresis_v=hysteresis, temperature_c=temperature)
