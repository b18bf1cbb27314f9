"""Parameters of the cell equivalent-circuit model, as stored in JSON parameter files.

One file describes one cell type: capacity, open-circuit voltage and resistances tabulated over
SoC at a reference temperature, 0-3 RC branches, an Arrhenius law for the temperature dependence
of the resistances, the entropic coefficient for reversible heat, a one-state hysteresis, the
lumped thermal model and the operating limits. ``b2l cell identify`` writes such files from
laboratory tests; ``twin/parameters/`` ships published sets.
"""

from __future__ import annotations

import itertools
import json
from importlib import resources
from typing import Annotated

from pydantic import Field, JsonValue, model_validator

from twin.base import B2LModel, PositiveFloat
from twin.errors import TwinValidationError

Table = Annotated[list[float], Field(min_length=2, max_length=1001)]


class RcBranch(B2LModel):
    """One RC pair: resistance and time constant, tabulated on the SoC grid."""

    r_ohm: Table
    tau_s: Table


class CellParameters(B2LModel):
    """Everything the cell model needs, with units in the names."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    chemistry: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
    source: Annotated[str, Field(min_length=1, max_length=2000)]
    """Where the numbers come from (a citation, or the tests they were identified from)."""
    capacity_ah: PositiveFloat
    soc_grid: Table
    ocv_v: Table
    r0_ohm: Table
    rc: Annotated[list[RcBranch], Field(max_length=3)] = Field(default_factory=list)
    docv_dt_v_per_k: Table | None = None
    """Entropic coefficient dOCV/dT on the SoC grid (reversible heat); None: zero."""
    reference_temperature_c: float = 25.0
    activation_energy_j_per_mol: Annotated[float, Field(ge=0.0, le=200_000.0)] = 0.0
    """Arrhenius law of all resistances; 0: no temperature dependence."""
    hysteresis_v: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    hysteresis_rate: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    """How fast the hysteresis state moves per unit of charge throughput (1 / capacity)."""
    coulombic_efficiency: Annotated[float, Field(gt=0.5, le=1.0)] = 1.0
    heat_capacity_j_per_k: PositiveFloat = 800.0
    heat_transfer_w_per_k: PositiveFloat = 0.5
    voltage_min_v: PositiveFloat
    voltage_max_v: PositiveFloat
    temperature_min_c: float = -20.0
    temperature_max_c: float = 60.0
    current_max_charge_a: PositiveFloat
    current_max_discharge_a: PositiveFloat
    fit: dict[str, JsonValue] | None = None
    """Fit quality when the parameters were identified (RMSE, residuals, ...)."""

    @model_validator(mode="after")
    def _tables_agree(self) -> CellParameters:
        n = len(self.soc_grid)
        grid = self.soc_grid
        problems: list[str] = []
        if grid[0] < 0.0 or grid[-1] > 1.0 or any(b <= a for a, b in itertools.pairwise(grid)):
            problems.append("soc_grid must increase strictly within 0..1")
        tables = {"ocv_v": self.ocv_v, "r0_ohm": self.r0_ohm}
        if self.docv_dt_v_per_k is not None:
            tables["docv_dt_v_per_k"] = self.docv_dt_v_per_k
        for k, branch in enumerate(self.rc):
            tables[f"rc[{k}].r_ohm"] = branch.r_ohm
            tables[f"rc[{k}].tau_s"] = branch.tau_s
        for name, table in tables.items():
            if len(table) != n:
                problems.append(f"{name} has {len(table)} values, soc_grid has {n}")
        if any(b < a for a, b in zip(self.ocv_v, self.ocv_v[1:], strict=False)):
            problems.append("ocv_v must not decrease with SoC")
        for name, table in tables.items():
            if (name == "r0_ohm" or name.startswith("rc")) and min(table) <= 0.0:
                problems.append(f"{name} must be positive")
        if self.voltage_min_v >= self.voltage_max_v:
            problems.append("voltage_min_v must be below voltage_max_v")
        if self.temperature_min_c >= self.temperature_max_c:
            problems.append("temperature_min_c must be below temperature_max_c")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_json(self) -> str:
        """The parameter file's text (floats written so they read back exactly)."""
        return self.model_dump_json(indent=2, exclude_none=True)


def builtin_parameter_sets() -> list[str]:
    """Names of the parameter sets shipped in ``twin/parameters``."""
    folder = resources.files("twin.parameters")
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def load_builtin(name: str) -> CellParameters:
    """A shipped parameter set by name (``nmc_lgm50``, ``lfp_a123``...)."""
    path = resources.files("twin.parameters") / f"{name}.json"
    if not path.is_file():
        known = ", ".join(builtin_parameter_sets())
        raise TwinValidationError(f"no parameter set {name!r}; known: {known}")
    data: JsonValue = json.loads(path.read_text(encoding="utf-8"))
    return CellParameters.model_validate(data)
