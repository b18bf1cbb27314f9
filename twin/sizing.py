"""Diagnostic-sizing parameters (Table 1 of the seed): the output of CIDETEC's sizing tool.

Field names carry their units (``e_nom_wh``); the bare names of Table 1 (``e_nom``, ``i_cha_max``,
``t_max``...) are accepted on input so the tool's output can be posted as it is. The three
40-vectors are the expected SoH trajectory against full equivalent cycles (FEC) and time: the
reference for State of Warranty.
"""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import AliasChoices, BeforeValidator, Field, model_validator

from twin.base import B2LModel, Fraction, NonNegativeFloat, PositiveFloat, UtcDatetime

XH0_LENGTH = 5
EVOLUTION_LENGTH = 40


def _id_to_text(value: object) -> object:
    """Table 1 types the ids as doubles; store them as text (``3.0`` -> ``"3"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return value


SizingId = Annotated[str, BeforeValidator(_id_to_text), Field(min_length=1, max_length=64)]
Vector5 = Annotated[list[float], Field(min_length=XH0_LENGTH, max_length=XH0_LENGTH)]
Vector40 = Annotated[list[float], Field(min_length=EVOLUTION_LENGTH, max_length=EVOLUTION_LENGTH)]


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class DiagnosticSizing(B2LModel):
    """The 25 diagnostic-sizing parameters of one battery, with the time they were computed."""

    timestamp: UtcDatetime
    soc_max: Fraction
    soc_min: Fraction
    fec_per_day: NonNegativeFloat
    days_per_year: Annotated[float, Field(gt=0.0, le=366.0)]
    soh_at_eol: Annotated[float, Field(gt=0.0, lt=1.0)]
    e_nom_wh: PositiveFloat = Field(validation_alias=_alias("e_nom_wh", "e_nom"))
    i_cha_max_a: PositiveFloat = Field(validation_alias=_alias("i_cha_max_a", "i_cha_max"))
    i_cha_std_a: PositiveFloat = Field(validation_alias=_alias("i_cha_std_a", "i_cha_std"))
    i_dch_max_a: PositiveFloat = Field(validation_alias=_alias("i_dch_max_a", "i_dch_max"))
    i_dch_mean_a: PositiveFloat = Field(validation_alias=_alias("i_dch_mean_a", "i_dch_mean"))
    lifespan_years: PositiveFloat
    lifespan_fec: PositiveFloat
    n_packs: Annotated[int, Field(ge=1)]
    n_modules: Annotated[int, Field(ge=1)]
    n_cells: Annotated[int, Field(ge=1)]
    oem_id: SizingId
    project_id: SizingId
    system_id: SizingId
    t_max_c: float = Field(ge=-60.0, le=150.0, validation_alias=_alias("t_max_c", "t_max"))
    t_avg_c: float = Field(ge=-60.0, le=150.0, validation_alias=_alias("t_avg_c", "t_avg"))
    t_min_c: float = Field(ge=-60.0, le=150.0, validation_alias=_alias("t_min_c", "t_min"))
    xh0_time: Vector5
    xh0_fec: Vector5
    soh_evolution: Vector40
    fec_evolution: Vector40
    time_evolution: Vector40

    @model_validator(mode="after")
    def _consistent(self) -> DiagnosticSizing:
        problems: list[str] = []
        if self.soc_min >= self.soc_max:
            problems.append(f"soc_min ({self.soc_min}) must be below soc_max ({self.soc_max})")
        if not self.t_min_c <= self.t_avg_c <= self.t_max_c:
            problems.append("temperatures must satisfy t_min <= t_avg <= t_max")
        if self.i_cha_std_a > self.i_cha_max_a:
            problems.append("i_cha_std must not exceed i_cha_max")
        if self.i_dch_mean_a > self.i_dch_max_a:
            problems.append("i_dch_mean must not exceed i_dch_max")
        if self.n_modules < self.n_packs or self.n_cells < self.n_modules:
            problems.append("expected n_packs <= n_modules <= n_cells")
        if any(not 0.0 <= soh <= 1.0 for soh in self.soh_evolution):
            problems.append("soh_evolution values are fractions 0..1")
        for name in ("fec_evolution", "time_evolution"):
            values: list[float] = getattr(self, name)
            if any(b < a for a, b in itertools.pairwise(values)):
                problems.append(f"{name} must be non-decreasing")
            if values[0] < 0.0:
                problems.append(f"{name} must not be negative")
        if problems:
            raise ValueError("; ".join(problems))
        return self
