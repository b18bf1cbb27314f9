"""Dynamic data of Table 2 of the seed: what the edge measures and estimates, per cell.

Pillar 1 (custom BMS on serial) sends full cell measurements and EIS spectra; Pillar 2 (an
existing BMS read over CAN by a Raspberry Pi) sends cell states. The seed's fields ``sot``
(state of temperature) and ``phase`` (operating phase) are kept as the BMS reports them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from twin.base import (
    B2LModel,
    CellId,
    CellVoltageV,
    CurrentA,
    Fraction,
    Identifier,
    NonNegativeFloat,
    PositiveFloat,
    TemperatureC,
)

PhaseDeg = Annotated[float, Field(ge=-180.0, le=180.0)]


class Pillar1CellMeasurement(B2LModel):
    """One cell's measurement from a Pillar 1 BMS."""

    cell_id: CellId
    voltage_v: CellVoltageV
    temperature_c: TemperatureC
    current_a: CurrentA
    sot: float = 0.0
    phase: float = 0.0
    soc: Fraction
    sos: Fraction


class Pillar2CellData(B2LModel):
    """One cell's state from a Pillar 2 BMS (read over CAN)."""

    cell_id: CellId
    soc: Fraction
    soh: Fraction
    sos: Fraction
    equivalent_cycles: NonNegativeFloat
    voltage_v: CellVoltageV | None = None
    temperature_c: TemperatureC | None = None


EisStatus = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,31}$")]


class EisMeasurement(B2LModel):
    """One row of an EIS spectrum: the impedance of one cell at one frequency."""

    status: EisStatus = "ok"
    event_id: Identifier
    cell_id: CellId
    frequency_hz: Annotated[float, Field(gt=0.0, le=1.0e6)]
    amplitude_ohm: NonNegativeFloat
    """|Z| in ohm."""
    phase_deg: PhaseDeg
    current_offset_a: CurrentA = 0.0
    v_start_v: CellVoltageV
    v_end_v: CellVoltageV
    temperature_c: TemperatureC


class PackMeasurement(B2LModel):
    """Pack-level values (Pillar 2 pack status, or the sum of a Pillar 1 string)."""

    pack_index: Annotated[int, Field(ge=0, le=63)] = 0
    voltage_v: Annotated[float, Field(ge=0.0, le=2000.0)]
    current_a: CurrentA
    """Positive when charging."""
    state: Annotated[str, StringConstraints(max_length=32)] | None = None
    faults: list[Annotated[str, StringConstraints(max_length=64)]] = Field(default_factory=list)


class CellEstimate(B2LModel):
    """The edge's own estimate for one cell (its twin estimator's output)."""

    cell_id: CellId
    soc: Fraction
    soc_std: Annotated[float, Field(ge=0.0, le=1.0)]
    sos: Fraction | None = None


class EisSpectrum(B2LModel):
    """A whole EIS event: rows of one cell and one event id, at distinct frequencies."""

    rows: Annotated[list[EisMeasurement], Field(min_length=1, max_length=10_000)]

    @model_validator(mode="after")
    def _one_event(self) -> EisSpectrum:
        first = self.rows[0]
        if any(r.event_id != first.event_id or r.cell_id != first.cell_id for r in self.rows):
            raise ValueError("all rows of a spectrum share one event_id and one cell_id")
        if len({r.frequency_hz for r in self.rows}) != len(self.rows):
            raise ValueError("a spectrum has each frequency once")
        return self

    @property
    def frequencies_hz(self) -> list[PositiveFloat]:
        """The measured frequencies, in row order."""
        return [r.frequency_hz for r in self.rows]
