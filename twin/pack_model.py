"""Packs of cells: series strings with cell-to-cell spread, vectorised over many packs.

The state of ``P`` packs of ``C`` series cells is one ``CellState`` of shape ``(P, C)``; a pack's
current flows through all its cells, so ``current_a`` of shape ``(P,)`` broadcasts over cells.
Spread (capacity, resistance, initial SoC) is drawn once from a seed: the same seed gives the
same pack, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field

from twin.base import B2LModel
from twin.cell_model import CellModel, CellState, FloatArray
from twin.cell_params import CellParameters
from twin.errors import TwinValidationError
from twin.topology import BatteryTopology


class CellSpread(B2LModel):
    """Relative standard deviations of cell-to-cell differences (2nd-life packs spread more)."""

    capacity_rel_std: float = Field(default=0.02, ge=0.0, le=0.3)
    resistance_rel_std: float = Field(default=0.05, ge=0.0, le=0.5)
    soc_std: float = Field(default=0.01, ge=0.0, le=0.2)


@dataclass(frozen=True, slots=True)
class PackModel:
    """``n_packs`` packs of ``cells_in_series`` cells; one CellModel over the whole array."""

    cell: CellModel
    n_packs: int
    cells_in_series: int
    initial_soc_offset: FloatArray

    @classmethod
    def build(
        cls,
        params: CellParameters,
        *,
        n_packs: int = 1,
        cells_in_series: int | None = None,
        topology: BatteryTopology | None = None,
        spread: CellSpread | None = None,
        seed: int = 0,
    ) -> PackModel:
        """Packs from a parameter set; series count from ``topology`` or ``cells_in_series``.

        Parallel cells of a group act as one cell of ``cells_in_parallel`` times the capacity
        and a matching fraction of the resistance.
        """
        parallel = 1
        if topology is not None:
            cells_in_series = topology.series_cells_per_pack
            parallel = topology.cells_in_parallel
        if cells_in_series is None or cells_in_series < 1 or n_packs < 1:
            raise TwinValidationError("a pack needs at least one pack and one cell in series")
        spread = spread or CellSpread()
        rng = np.random.default_rng(seed)
        shape = (n_packs, cells_in_series)
        capacity = parallel * np.clip(
            1 + spread.capacity_rel_std * rng.standard_normal(shape), 0.5, 1.5
        )
        resistance = np.clip(1 + spread.resistance_rel_std * rng.standard_normal(shape), 0.3, 3.0)
        resistance = resistance / parallel
        offset = spread.soc_std * rng.standard_normal(shape)
        return cls(CellModel(params, capacity, resistance), n_packs, cells_in_series, offset)

    def initial_state(self, soc: ArrayLike, temperature_c: ArrayLike = 25.0) -> CellState:
        """Packs at rest around ``soc`` (scalar or per pack), with the drawn SoC spread."""
        pack_soc = np.asarray(soc, dtype=np.float64)
        if pack_soc.ndim:
            pack_soc = pack_soc.reshape(-1, 1)
        cell_soc = np.clip(pack_soc + self.initial_soc_offset, 0.0, 1.0)
        return self.cell.initial_state(cell_soc, temperature_c)

    def step(
        self, state: CellState, current_a: ArrayLike, ambient_c: ArrayLike, dt_s: float
    ) -> CellState:
        """Advance all packs; ``current_a`` is per pack (shape ``(n_packs,)``) or a scalar."""
        return self.cell.step(state, _per_pack(current_a), _per_pack(ambient_c), dt_s)

    def cell_voltages(self, state: CellState, current_a: ArrayLike) -> FloatArray:
        """Terminal voltage of every cell, shape ``(n_packs, cells_in_series)``."""
        return self.cell.terminal_voltage(state, _per_pack(current_a))

    def pack_voltage(self, state: CellState, current_a: ArrayLike) -> FloatArray:
        """Terminal voltage of every pack (the sum of its series cells)."""
        out: FloatArray = self.cell_voltages(state, current_a).sum(axis=-1)
        return out


def _per_pack(values: ArrayLike) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[:, None] if arr.ndim == 1 else arr
