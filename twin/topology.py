"""Battery topology: battery -> pack -> module -> cell (Figure 8 of the seed).

``cell_id`` numbers the measured cells of a battery from 0, pack by pack and module by module.
Within a module, ``cells_in_parallel`` cells form one parallel group; the BMS measures a group as
one cell, so a module has ``cells_per_module`` measured cells in series. Modules are in series
within a pack; packs are in parallel within a battery (the usual layout of stationary storage).
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import Field, model_validator

from twin.base import B2LModel
from twin.errors import TwinValidationError

MAX_CELLS = 65_536


class CellLocation(NamedTuple):
    """Where a cell sits: zero-based pack, module-in-pack and cell-in-module indices."""

    pack: int
    module: int
    cell: int


class BatteryTopology(B2LModel):
    """How many packs, modules and cells a battery has, and how they are connected."""

    n_packs: Annotated[int, Field(ge=1, le=64)] = 1
    modules_per_pack: Annotated[int, Field(ge=1, le=1024)] = 1
    cells_per_module: Annotated[int, Field(ge=1, le=1024)]
    cells_in_parallel: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _fits_cell_id_range(self) -> BatteryTopology:
        if self.n_cells > MAX_CELLS:
            raise ValueError(f"{self.n_cells} cells exceed the {MAX_CELLS} a cell_id can address")
        return self

    @property
    def n_cells(self) -> int:
        """Measured cells (parallel groups) in the whole battery."""
        return self.n_packs * self.modules_per_pack * self.cells_per_module

    @property
    def series_cells_per_pack(self) -> int:
        """Measured cells in series in one pack."""
        return self.modules_per_pack * self.cells_per_module

    def contains(self, cell_id: int) -> bool:
        """Whether ``cell_id`` names a cell of this battery."""
        return 0 <= cell_id < self.n_cells

    def check_cell_id(self, cell_id: int) -> None:
        """Raise TwinValidationError unless ``cell_id`` names a cell of this battery."""
        if not self.contains(cell_id):
            raise TwinValidationError(
                f"cell_id {cell_id} is outside the battery's topology (0..{self.n_cells - 1})"
            )

    def locate(self, cell_id: int) -> CellLocation:
        """Pack, module and cell-in-module of ``cell_id``."""
        self.check_cell_id(cell_id)
        pack, rest = divmod(cell_id, self.series_cells_per_pack)
        module, cell = divmod(rest, self.cells_per_module)
        return CellLocation(pack, module, cell)

    def cell_id(self, pack: int, module: int, cell: int) -> int:
        """The battery-wide ``cell_id`` of a cell given by its location."""
        if not (0 <= pack < self.n_packs and 0 <= module < self.modules_per_pack):
            raise TwinValidationError(f"no module {module} in pack {pack} of this battery")
        if not 0 <= cell < self.cells_per_module:
            raise TwinValidationError(f"no cell {cell} in a module of {self.cells_per_module}")
        return (pack * self.modules_per_pack + module) * self.cells_per_module + cell
