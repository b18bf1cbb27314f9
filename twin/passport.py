"""The battery passport: static data entered by the manufacturer, read by access tier.

Attribute names follow the Battery Pass data model (DIN DKE SPEC 99100, camelCase) and each one
carries the access tier of EU Battery Regulation 2023/1542 Annex XIII:

- ``public``: anyone (Annex XIII point 1);
- ``legitimate_interest``: repairers, second-life operators, recyclers, the Commission (point 2);
- ``authority``: notified bodies, market surveillance authorities, the Commission (point 3).

The catalogue below is the known list; a manufacturer may add further attributes under an
``x-`` prefix with an explicit tier, so the list grows without a schema migration (the cloud
stores the attributes as one JSON document).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated, NamedTuple

from pydantic import Field, JsonValue, model_validator

from twin.base import B2LModel, BatteryId, ShortText, StorableJson, UtcDatetime
from twin.errors import TwinValidationError


class AccessTier(IntEnum):
    """Who may read an attribute; a higher tier also reads every lower one."""

    PUBLIC = 0
    LEGITIMATE_INTEREST = 1
    AUTHORITY = 2

    @property
    def label(self) -> str:
        """The tier's name as it appears in JSON (``legitimate_interest``)."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> AccessTier:
        """Parse ``public`` / ``legitimate_interest`` / ``authority``."""
        try:
            return cls[label.upper()]
        except KeyError:
            known = ", ".join(t.label for t in cls)
            raise TwinValidationError(f"unknown access tier {label!r}; known: {known}") from None


class PassportAttribute(NamedTuple):
    """One catalogue entry: Battery Pass category, Annex XIII tier, unit and meaning."""

    category: str
    tier: AccessTier
    unit: str | None
    description: str


_P, _L, _A = AccessTier.PUBLIC, AccessTier.LEGITIMATE_INTEREST, AccessTier.AUTHORITY
_GEN, _CF, _MAT = "generalProductInformation", "carbonFootprint", "materialComposition"
_PERF, _CIRC, _LAB = "performanceAndDurability", "circularity", "labels"

PASSPORT_ATTRIBUTES: dict[str, PassportAttribute] = {
    # General product information
    "batteryPassportIdentifier": PassportAttribute(_GEN, _P, None, "unique passport id"),
    "productIdentifier": PassportAttribute(_GEN, _P, None, "unique battery id (serial, QR)"),
    "manufacturerName": PassportAttribute(_GEN, _P, None, "company that made the battery"),
    "manufacturerIdentifier": PassportAttribute(_GEN, _P, None, "manufacturer id"),
    "batteryModel": PassportAttribute(_GEN, _P, None, "model number"),
    "batteryCategory": PassportAttribute(_GEN, _P, None, "e.g. industrial, ev, lmt"),
    "manufacturingDate": PassportAttribute(_GEN, _P, None, "date of manufacture"),
    "manufacturingPlace": PassportAttribute(_GEN, _P, None, "place of manufacture"),
    "batteryMass": PassportAttribute(_GEN, _P, "kg", "mass of the battery"),
    "warrantyPeriod": PassportAttribute(_GEN, _P, "year", "warranty period"),
    # Carbon footprint
    "batteryCarbonFootprint": PassportAttribute(_CF, _P, "kgCO2e/kWh", "total per kWh"),
    "carbonFootprintPerLifecycleStage": PassportAttribute(_CF, _P, "kgCO2e/kWh", "by stage"),
    "carbonFootprintPerformanceClass": PassportAttribute(_CF, _P, None, "performance class"),
    "carbonFootprintStudy": PassportAttribute(_CF, _P, None, "link to the public study"),
    # Material composition
    "batteryChemistry": PassportAttribute(_MAT, _P, None, "e.g. NMC, LFP"),
    "criticalRawMaterials": PassportAttribute(_MAT, _P, None, "critical raw materials present"),
    "hazardousSubstances": PassportAttribute(_MAT, _P, None, "hazardous substances present"),
    "batteryMaterials": PassportAttribute(_MAT, _L, None, "detailed composition by component"),
    # Performance and durability
    "ratedCapacity": PassportAttribute(_PERF, _P, "Ah", "rated capacity"),
    "ratedEnergy": PassportAttribute(_PERF, _P, "kWh", "rated energy capacity"),
    "nominalVoltage": PassportAttribute(_PERF, _P, "V", "nominal voltage"),
    "minimumVoltage": PassportAttribute(_PERF, _P, "V", "minimum voltage"),
    "maximumVoltage": PassportAttribute(_PERF, _P, "V", "maximum voltage"),
    "originalPowerCapability": PassportAttribute(_PERF, _P, "W", "original power capability"),
    "ratedMaximumPower": PassportAttribute(_PERF, _P, "W", "maximum permitted power"),
    "maximumChargeCurrent": PassportAttribute(_PERF, _P, "A", "maximum charge current"),
    "maximumDischargeCurrent": PassportAttribute(_PERF, _P, "A", "maximum discharge current"),
    "expectedNumberOfCycles": PassportAttribute(_PERF, _P, "cycles", "expected cycle life"),
    "expectedLifetime": PassportAttribute(_PERF, _P, "year", "expected calendar life"),
    "cycleLifeReferenceTest": PassportAttribute(_PERF, _P, None, "test behind the cycle life"),
    "capacityThresholdForExhaustion": PassportAttribute(_PERF, _P, "%", "end-of-life threshold"),
    "temperatureRangeIdleState": PassportAttribute(_PERF, _P, "degC", "storage temperatures"),
    "operatingConditions": PassportAttribute(_PERF, _P, None, "temperatures, charge rates"),
    "initialRoundTripEnergyEfficiency": PassportAttribute(_PERF, _P, "%", "at beginning of life"),
    "initialInternalResistance": PassportAttribute(_PERF, _P, "ohm", "at beginning of life"),
    "durabilityTestResults": PassportAttribute(_PERF, _L, None, "tested lifespan by condition"),
    # Circularity
    "recycledContent": PassportAttribute(_CIRC, _P, "%", "recycled share by material"),
    "renewableContent": PassportAttribute(_CIRC, _P, "%", "renewable content share"),
    "endOfLifeInformation": PassportAttribute(_CIRC, _P, None, "collection, prevention"),
    "materialRecovery": PassportAttribute(_CIRC, _L, "%", "recoverable materials"),
    "wasteDocumentation": PassportAttribute(_CIRC, _L, None, "non-recyclable components"),
    "recyclingFacility": PassportAttribute(_CIRC, _L, None, "where recycled or dismantled"),
    "dismantlingInformation": PassportAttribute(_CIRC, _L, None, "dismantling manuals"),
    "sparePartSources": PassportAttribute(_CIRC, _L, None, "spare part suppliers"),
    "safetyMeasures": PassportAttribute(_CIRC, _L, None, "safety instructions"),
    # Labels and conformity
    "euDeclarationOfConformity": PassportAttribute(_LAB, _P, None, "declaration of conformity"),
    "separateCollectionSymbol": PassportAttribute(_LAB, _P, None, "crossed-out bin symbol"),
    "regulatoryApprovals": PassportAttribute(_LAB, _P, None, "certifications"),
    "resultOfTestReportsProvingCompliance": PassportAttribute(_LAB, _A, None, "test reports"),
}
"""Known passport attributes, keyed by their Battery Pass name."""

EXTENSION_PREFIX = "x-"


class LifecycleStatus(StrEnum):
    """Battery status of Annex XIII 4(c)."""

    ORIGINAL = "original"
    REPURPOSED = "repurposed"
    REUSED = "reused"
    REMANUFACTURED = "remanufactured"
    WASTE = "waste"


def check_lifecycle_transition(old: LifecycleStatus, new: LifecycleStatus) -> None:
    """Raise TwinValidationError for a change the regulation's life cycle does not allow.

    A battery never becomes ``original`` again, ``waste`` is final, and a change must change.
    """
    if old == new:
        raise TwinValidationError(f"the battery is already {old.value}")
    if old is LifecycleStatus.WASTE:
        raise TwinValidationError("a battery that is waste cannot change status")
    if new is LifecycleStatus.ORIGINAL:
        raise TwinValidationError(f"a {old.value} battery cannot become original again")


class ExtensionAttribute(B2LModel):
    """The declaration of an attribute outside the catalogue (name starts with ``x-``)."""

    tier: AccessTier
    unit: Annotated[str, Field(max_length=32)] | None = None
    description: ShortText | None = None


class Passport(B2LModel):
    """A battery's passport: catalogue and extension attributes, each with its access tier."""

    battery_id: BatteryId
    attributes: dict[str, StorableJson] = Field(default_factory=dict)
    extensions: dict[str, ExtensionAttribute] = Field(default_factory=dict)
    updated_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _known_attributes(self) -> Passport:
        problems: list[str] = []
        for name in self.attributes:
            if name in PASSPORT_ATTRIBUTES:
                continue
            if not name.startswith(EXTENSION_PREFIX):
                problems.append(
                    f"unknown passport attribute {name!r} (extensions start with "
                    f"{EXTENSION_PREFIX!r} and are declared in 'extensions')"
                )
            elif name not in self.extensions:
                problems.append(f"extension attribute {name!r} needs a declaration with its tier")
        for name in self.extensions:
            if not name.startswith(EXTENSION_PREFIX):
                problems.append(f"extension {name!r} must start with {EXTENSION_PREFIX!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def tier_of(self, name: str) -> AccessTier:
        """The access tier of one attribute."""
        if name in PASSPORT_ATTRIBUTES:
            return PASSPORT_ATTRIBUTES[name].tier
        return self.extensions[name].tier

    def view(self, tier: AccessTier) -> dict[str, JsonValue]:
        """The attributes a reader with ``tier`` may see."""
        return {k: v for k, v in self.attributes.items() if self.tier_of(k) <= tier}

    def restricted_names(self) -> list[str]:
        """Attributes above the public tier (reading them is audited)."""
        return sorted(k for k in self.attributes if self.tier_of(k) > AccessTier.PUBLIC)
