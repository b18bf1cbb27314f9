"""Scenario files: one simulated pack, its load, its BMS and the faults to inject, as data.

A scenario is YAML or JSON (``docs/bms-simulator.md`` shows one; ``examples/scenario-pack.yaml``
is a complete example). Every section is optional and has the defaults of the classes it feeds:

* ``pack`` (``PackSpec``): parameter set, cells in series and parallel, initial SoC (one value
  or one per cell), ambient temperature, cell-to-cell ``spread`` (``twin.pack_model.CellSpread``)
  and ``age`` (``AgeSpec``): years of prior service, one value or one per cell (mixed ages), a
  cell-to-cell spread, replaced (new) cells, the conditions of that service; the history is run
  through the ageing model (``simulators.fleet.prior_ageing``), as for a fleet;
* ``load`` (``LoadSpec``): constant current, domestic PV self-consumption, industrial load
  levelling or a CSV profile, seeded, scaled, shifted, behind ``simulators.load.ProfileLoad``;
* ``bms``: ``simulators.bms.BmsConfig`` (sampling, estimation and reporting periods, sensor
  models: noise, quantisation, offset; thresholds); ``can``: ``CanLinkConfig``; ``serial``:
  ``SerialLinkConfig`` (including the line's byte error rate);
* ``faults``: a list of ``simulators.bms.Fault`` (kind, ``start_s``, ``duration_s``, cell,
  sensor, magnitude), every kind the simulators know.

Unknown keys, wrong types, unknown fault kinds, negative times, cells outside the pack and
missing files are ``ConfigError`` naming the field (``faults[1].start_s: ...``). Relative paths
(a parameter file, a CSV profile, an ageing model) are relative to the scenario file.
``Scenario.pack_options()`` gives the keyword arguments of ``simulators.pack.build_pack`` (and
so of ``CanBmsSimulator`` and ``SerialBmsSimulator``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from simulators.bms import BmsConfig, Fault
from simulators.can_bms import CanLinkConfig
from simulators.fleet import AgeSpread, prior_ageing
from simulators.load import ProfileLoad
from simulators.pack import PackOptions
from simulators.plant import PackPlant
from simulators.profiles import (
    Profile,
    csv_profile,
    domestic_pv_self_consumption,
    industrial_load_levelling,
)
from simulators.serial_bms import SerialLinkConfig
from twin.ageing import AgeingParameters, ageing_parameters_for, health
from twin.base import B2LModel, Fraction, NonNegativeFloat, PositiveFloat
from twin.cell_params import CellParameters, builtin_parameter_sets, load_builtin
from twin.errors import B2LError, ConfigError
from twin.pack_model import CellSpread, PackModel
from twin.topology import BatteryTopology

__all__ = ["AgeSpec", "LoadSpec", "PackSpec", "Scenario", "load_scenario", "scenario_from_data"]

MAX_CELLS = 256
"""The BMS reports at most this many cells in series."""
_AGE_SEED = 0xA6E


def _file(value: str, info: ValidationInfo) -> str:
    """``value`` as an absolute path, relative to the scenario's folder; it must exist."""
    base = Path((info.context or {}).get("base_dir", "."))
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return str(path.resolve())


class AgeSpec(B2LModel):
    """Prior service of the pack's cells (second life), run through the ageing model."""

    years: NonNegativeFloat | list[NonNegativeFloat] = 0.0
    """Years of service: one value for the pack or one per cell (mixed ages)."""
    cell_rel_std: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Relative cell-to-cell spread of the years (drawn from the scenario seed)."""
    replaced_cells: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    """Cells that are new replacements (0 years)."""
    fec_per_year: Annotated[float, Field(ge=0.0, le=10_000.0)] = 250.0
    soc: Fraction = 0.5
    """Mean SoC of the prior service."""
    temperature_c: Annotated[float, Field(ge=-40.0, le=80.0)] = 25.0
    depth_of_discharge: Fraction = 0.8
    c_rate: Annotated[float, Field(ge=0.0, le=20.0)] = 0.5
    model: str | None = None
    """Ageing model: ``nmc``, ``lfp`` or a parameter file; None: by the cell's chemistry."""

    @field_validator("model")
    @classmethod
    def _model_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _file(value, info) if value is not None and value.endswith(".json") else value

    def conditions(self) -> AgeSpread:
        """The service conditions as the fleet's ``AgeSpread``."""
        return AgeSpread(
            fec_per_year=self.fec_per_year,
            soc=self.soc,
            temperature_c=self.temperature_c,
            depth_of_discharge=self.depth_of_discharge,
            c_rate=self.c_rate,
        )


class PackSpec(B2LModel):
    """The simulated pack: cells, chemistry, initial state, spread and history."""

    chemistry: str = "nmc_lgm50"
    """A built-in parameter set (``nmc_lgm50``, ``lfp_a123``) or a parameter file (.json)."""
    cells_in_series: Annotated[int, Field(ge=1, le=MAX_CELLS)] = 16
    cells_in_parallel: Annotated[int, Field(ge=1, le=64)] = 1
    initial_soc: Fraction | list[Fraction] = 0.5
    """One value (each cell then drawn around it with ``spread.soc_std``) or one per cell."""
    ambient_c: Annotated[float, Field(ge=-40.0, le=80.0)] = 25.0
    spread: CellSpread = Field(default_factory=CellSpread)
    age: AgeSpec = Field(default_factory=AgeSpec)

    @field_validator("chemistry")
    @classmethod
    def _chemistry(cls, value: str, info: ValidationInfo) -> str:
        if value.endswith(".json"):
            return _file(value, info)
        known = builtin_parameter_sets()
        if value not in known:
            raise ValueError(f"unknown parameter set {value!r}: give one of {known} or a .json")
        return value

    @model_validator(mode="after")
    def _per_cell(self) -> PackSpec:
        n = self.cells_in_series
        if isinstance(self.initial_soc, list) and len(self.initial_soc) != n:
            raise ValueError(f"initial_soc has {len(self.initial_soc)} values for {n} cells")
        if isinstance(self.age.years, list) and len(self.age.years) != n:
            raise ValueError(f"age.years has {len(self.age.years)} values for {n} cells")
        outside = [k for k in self.age.replaced_cells if k >= n]
        if outside:
            raise ValueError(f"age.replaced_cells {outside} outside the pack's cells 0..{n - 1}")
        return self


class LoadSpec(B2LModel):
    """The load: a profile (positive charging) behind an inverter that respects cell limits."""

    profile: Literal["constant", "domestic", "industrial", "csv"] = "constant"
    current_a: float = 0.0
    """The current of the ``constant`` profile."""
    csv: str | None = None
    """The CSV file of the ``csv`` profile (``time_s,current_a`` or ``time_s,power_w``)."""
    days: Annotated[float, Field(gt=0.0, le=366.0)] = 7.0
    """Length of a generated profile, which then repeats."""
    resolution_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 60.0
    """Time step of a generated profile."""
    seed: int | None = None
    """Seed of a generated profile; None: the scenario's."""
    scale: float = 1.0
    offset_s: NonNegativeFloat = 0.0
    """Start this far into the profile (e.g. 43200: a day profile from noon)."""
    voltage_guard: bool = True
    """Stop charging a full and discharging an empty pack (``ProfileLoad``)."""

    @field_validator("csv")
    @classmethod
    def _csv_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _file(value, info)

    @model_validator(mode="after")
    def _consistent(self) -> LoadSpec:
        if (self.profile == "csv") != (self.csv is not None):
            raise ValueError("give csv (a file) with profile csv, and only then")
        if self.profile != "constant" and self.current_a != 0.0:
            raise ValueError(f"current_a is for the constant profile, not {self.profile}")
        return self


class Scenario(B2LModel):
    """One simulated pack, its load, its BMS, its links and the faults to inject."""

    name: str = "scenario"
    description: str = ""
    seed: int = 0
    """Seed of every random draw (spread, history, profile, sensors, link)."""
    duration_s: PositiveFloat | None = None
    """How long to simulate (the command line may override it)."""
    plant_dt_s: Annotated[float, Field(gt=0.0, le=60.0)] = 0.1
    ground_truth_period_s: PositiveFloat = 1.0
    pack: PackSpec = Field(default_factory=PackSpec)
    load: LoadSpec = Field(default_factory=LoadSpec)
    bms: BmsConfig = Field(default_factory=BmsConfig)
    can: CanLinkConfig = Field(default_factory=CanLinkConfig)
    serial: SerialLinkConfig = Field(default_factory=SerialLinkConfig)
    faults: list[Fault] = Field(default_factory=list)

    @model_validator(mode="after")
    def _faults_in_pack(self) -> Scenario:
        n = self.pack.cells_in_series
        for i, fault in enumerate(self.faults):
            if fault.cell_index is not None and fault.cell_index >= n:
                raise ValueError(
                    f"faults[{i}].cell_index {fault.cell_index} outside the pack's cells 0..{n - 1}"
                )
        return self

    # ------------------------------------------------------------------ building

    def cell_parameters(self) -> CellParameters:
        """The pack's cell parameter set."""
        name = self.pack.chemistry
        if not name.endswith(".json"):
            return load_builtin(name)
        try:
            return CellParameters.model_validate_json(Path(name).read_text(encoding="utf-8"))
        except (OSError, ValidationError) as exc:
            raise ConfigError(
                f"pack.chemistry: {name} is not a cell parameter file: {exc}"
            ) from None

    def ageing_parameters(self, chemistry: str) -> AgeingParameters:
        """The ageing model of the history."""
        name = self.pack.age.model
        if name is None:
            return ageing_parameters_for(chemistry)
        if not name.endswith(".json"):
            try:
                return ageing_parameters_for(name)
            except B2LError as exc:
                raise ConfigError(f"pack.age.model: {exc}") from None
        try:
            return AgeingParameters.model_validate_json(Path(name).read_text(encoding="utf-8"))
        except (OSError, ValidationError) as exc:
            raise ConfigError(f"pack.age.model: {name} is not an ageing file: {exc}") from None

    def build_plant(self, params: CellParameters) -> PackPlant:
        """The pack's plant: drawn spread, aged by its history, at its initial SoC."""
        spec = self.pack
        n = spec.cells_in_series
        topology = BatteryTopology(cells_per_module=n, cells_in_parallel=spec.cells_in_parallel)
        model = PackModel.build(params, topology=topology, spread=spec.spread, seed=self.seed)
        plant = PackPlant(model, 0.5, spec.ambient_c)
        age = spec.age
        rng = np.random.default_rng([self.seed, _AGE_SEED])
        years = np.broadcast_to(np.asarray(age.years, dtype=np.float64), (n,)).copy()
        years *= np.clip(1.0 + age.cell_rel_std * rng.standard_normal(n), 0.0, 3.0)
        years[age.replaced_cells] = 0.0
        if np.any(years > 0.0):
            nominal_ah = np.broadcast_to(model.cell.capacity_as / 3600.0, (1, n)).copy()
            state = prior_ageing(
                self.ageing_parameters(params.chemistry),
                years[None, :],
                nominal_ah,
                age.conditions(),
                model.cell.ocv,
            )
            plant.set_health(*health(state))
        ambient = plant.ambient_c[:, None]
        if isinstance(spec.initial_soc, list):
            soc = np.asarray(spec.initial_soc, dtype=np.float64)[None, :]
            plant.state = model.cell.initial_state(soc, ambient)
        else:
            plant.state = model.initial_state(spec.initial_soc, ambient)
        return plant

    def load_profile(self, params: CellParameters) -> Profile:
        """The load profile (A or W per pack, positive charging)."""
        load = self.load
        seed = self.seed if load.seed is None else load.seed
        capacity_ah = params.capacity_ah * self.pack.cells_in_parallel
        try:
            if load.profile == "domestic":
                return domestic_pv_self_consumption(load.days, load.resolution_s, seed, capacity_ah)
            if load.profile == "industrial":
                return industrial_load_levelling(load.days, load.resolution_s, seed, capacity_ah)
            if load.profile == "csv":
                assert load.csv is not None
                text = Path(load.csv).read_text(encoding="utf-8")
                return csv_profile(text, source=load.csv)
        except (OSError, UnicodeDecodeError, B2LError) as exc:
            raise ConfigError(f"load: {exc}") from None
        value = load.current_a
        return Profile(np.array([0.0, 1.0]), np.array([value, value]), name="constant")

    def pack_options(self) -> PackOptions:
        """Keyword arguments of ``build_pack`` and the pack simulators for this scenario.

        The caller adds the clock (``realtime_factor``), the ground truth output and the
        timestamp origin.
        """
        params = self.cell_parameters()
        plant = self.build_plant(params)
        load = ProfileLoad(
            plant,
            self.load_profile(params),
            scale=self.load.scale,
            offset_s=self.load.offset_s,
            cells_in_parallel=self.pack.cells_in_parallel,
            voltage_guard=self.load.voltage_guard,
        )
        return PackOptions(
            plant=plant,
            current_a=load,
            faults=tuple(self.faults),
            bms_config=self.bms,
            plant_dt_s=self.plant_dt_s,
            ground_truth_period_s=self.ground_truth_period_s,
            seed=self.seed,
        )


# ---------------------------------------------------------------------- reading and errors


def load_scenario(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Scenario:
    """A scenario from a YAML (.yaml, .yml) or JSON file (None: all defaults), with
    ``overrides`` (nested sections, e.g. ``{"pack": {"cells_in_series": 8}}``) merged over it.

    Raises ``ConfigError`` naming the file and the field.
    """
    data: Any = {}
    source, base_dir = "scenario", Path.cwd()
    if path is not None:
        path = Path(path)
        source, base_dir = str(path), path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the scenario {path}: {exc}") from None
        data = _parse(text, path)
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{source}: a scenario is a mapping of sections, not a {kind}")
    return scenario_from_data(_merge(data, overrides or {}), source=source, base_dir=base_dir)


def scenario_from_data(
    data: dict[str, Any], *, source: str = "scenario", base_dir: str | Path = "."
) -> Scenario:
    """A scenario from parsed data; relative paths are relative to ``base_dir``."""
    try:
        return Scenario.model_validate(data, context={"base_dir": Path(base_dir)})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON: {exc}") from None
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: a scenario is .yaml, .yml or .json")
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as ``field: problem`` (``faults[0].kind: ...``), one per error."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ""
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required"
        problems.append(f"{where or 'scenario'}: {message}")
    return "; ".join(problems)
