"""Shared building blocks of the data model: the base model and constrained field types.

Every model is strict about physics: NaN and infinity are refused everywhere, state quantities
(SoC, SoH, SoS) are fractions in 0..1, timestamps are timezone-aware and normalised to UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
)

BATTERY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
"""A battery id: 1-64 characters, letters, digits and ``. _ : -``; safe in an MQTT topic level."""


class B2LModel(BaseModel):
    """Base of all b2l records: immutable, no unknown fields, no NaN/inf."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        str_strip_whitespace=False,
        validate_default=True,
    )


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware timestamp, converted to UTC (naive timestamps are refused)."""

BatteryId = Annotated[str, StringConstraints(pattern=BATTERY_ID_PATTERN)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A state quantity (SoC, SoH, SoS, SoW) as a fraction 0..1."""
CellId = Annotated[int, Field(ge=0, le=65_535)]
"""A cell's index inside its battery (Figure 8 of the seed)."""
SequenceNumber = Annotated[int, Field(ge=1, le=2**63 - 1)]
"""Per-battery, strictly increasing, assigned by the edge; starts at 1."""
CellVoltageV = Annotated[float, Field(ge=0.0, le=10.0)]
TemperatureC = Annotated[float, Field(ge=-60.0, le=250.0)]
CurrentA = Annotated[float, Field(ge=-100_000.0, le=100_000.0)]
"""Positive when charging."""
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
"""A short human-readable text (no NUL: PostgreSQL stores none)."""


def _storable_json(value: JsonValue) -> JsonValue:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("NaN and infinite numbers are not JSON numbers")
        if isinstance(item, str) and "\x00" in item:
            raise ValueError("NUL characters (\\u0000) are not accepted in text")
        if isinstance(item, dict):
            if any("\x00" in key for key in item):
                raise ValueError("NUL characters (\\u0000) are not accepted in keys")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


StorableJson = Annotated[JsonValue, AfterValidator(_storable_json)]
"""Free-form JSON that storage can carry back: no NaN or infinities (``1e400`` parses as
infinity; JSON and PostgreSQL's jsonb have no such numbers) and no NUL characters (PostgreSQL
stores none in text or jsonb)."""
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
