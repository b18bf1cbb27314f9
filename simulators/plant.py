"""The plant: the true physical state of simulated packs, the ground truth of every simulation.

``PackPlant`` wraps a ``twin.pack_model.PackModel`` (P packs x C series cells) with what a real
pack has and a model does not: contactors, internal-short leak currents, extra heat from a
thermal-runaway precursor, and health (capacity fade, resistance growth) that ageing changes
over time. It is the imperative shell around the pure model: ``step`` advances it in place.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from twin.cell_model import CellState, FloatArray
from twin.errors import TwinValidationError
from twin.pack_model import PackModel


class PackPlant:
    """True state of ``model.n_packs`` packs; arrays are ``(packs,)`` or ``(packs, cells)``."""

    def __init__(self, model: PackModel, soc: ArrayLike, ambient_c: ArrayLike = 25.0) -> None:
        self.model = model
        shape = (model.n_packs, model.cells_in_series)
        self.ambient_c = np.broadcast_to(
            np.asarray(ambient_c, dtype=np.float64), (model.n_packs,)
        ).copy()
        self.state: CellState = model.initial_state(soc, self.ambient_c[:, None])
        self.time_s = 0.0
        self.current_a = np.zeros(model.n_packs)
        """Terminal current of each pack in the last step (0 while its contactor is open)."""
        self.contactor_closed = np.ones(model.n_packs, dtype=bool)
        self.leak_a = np.zeros(shape)
        """Internal-short current of each cell (A, discharging the cell inside)."""
        self.extra_heat_w = np.zeros(shape)
        """Heat of a thermal-runaway precursor (W), on top of the model's own heat."""
        self.charge_ah = np.zeros(shape)
        """Charge that entered each cell since the start (Ah; coulomb counter of the truth)."""
        self._nominal_capacity_as = np.array(model.cell.capacity_as, dtype=np.float64, copy=True)
        self._nominal_resistance = np.array(
            model.cell.resistance_scale, dtype=np.float64, copy=True
        )
        self.capacity_factor = np.ones(shape)
        self.resistance_factor = np.ones(shape)

    @property
    def cell_current_a(self) -> FloatArray:
        """Current through each cell's electrochemistry: terminal current minus the leak."""
        out: FloatArray = self.current_a[:, None] - self.leak_a
        return out

    def step(self, current_a: ArrayLike, dt_s: float) -> None:
        """Advance every pack by ``dt_s`` with ``current_a`` per pack requested at its terminals."""
        requested = np.broadcast_to(np.asarray(current_a, dtype=np.float64), self.current_a.shape)
        if not np.all(np.isfinite(requested)):
            raise TwinValidationError("pack current must be finite")
        self.current_a = np.where(self.contactor_closed, requested, 0.0)
        cell_current = self.cell_current_a
        heat_as_ambient = self.extra_heat_w / self.model.cell.params.heat_transfer_w_per_k
        ambient = self.ambient_c[:, None] + heat_as_ambient
        self.state = self.model.cell.step(self.state, cell_current, ambient, dt_s)
        self.charge_ah += cell_current * dt_s / 3600.0
        self.time_s += dt_s

    def cell_voltages_v(self) -> FloatArray:
        """True terminal voltage of every cell while the last step's current flows."""
        return self.model.cell.terminal_voltage(self.state, self.cell_current_a)

    def pack_voltages_v(self) -> FloatArray:
        """True terminal voltage of every pack."""
        out: FloatArray = self.cell_voltages_v().sum(axis=-1)
        return out

    @property
    def soc(self) -> FloatArray:
        """True SoC of every cell (relative to its present capacity)."""
        return self.state.soc

    @property
    def temperature_c(self) -> FloatArray:
        """True temperature of every cell."""
        return self.state.temperature_c

    @property
    def soh(self) -> FloatArray:
        """State of health of every cell: present capacity over the capacity at the start."""
        return self.capacity_factor

    def set_health(self, capacity_factor: ArrayLike, resistance_factor: ArrayLike) -> None:
        """Set capacity fade and resistance growth (factors of the initial values) per cell.

        The charge stored in each cell is kept: its SoC rises as its capacity shrinks.
        """
        capacity = np.broadcast_to(np.asarray(capacity_factor, dtype=np.float64), self.soc.shape)
        resistance = np.broadcast_to(
            np.asarray(resistance_factor, dtype=np.float64), self.soc.shape
        )
        if np.any(capacity <= 0.0) or np.any(resistance <= 0.0):
            raise TwinValidationError("health factors must be positive")
        charge_as = self.state.soc * self.model.cell.capacity_as
        self.model.cell.capacity_as = self._nominal_capacity_as * capacity
        self.model.cell.resistance_scale = self._nominal_resistance * resistance
        self.capacity_factor = capacity.copy()
        self.resistance_factor = resistance.copy()
        soc = np.clip(charge_as / self.model.cell.capacity_as, 0.0, 1.0)
        self.state = CellState(
            soc, self.state.v_rc_v, self.state.hysteresis_v, self.state.temperature_c
        )
