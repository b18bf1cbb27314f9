"""What the edge sends to the cloud: records with a per-battery sequence number, in batches.

Every record carries a timestamp and a sequence number the edge assigns, strictly increasing per
battery from 1. The cloud stores each (battery_id, seq) once, so retries and replays are safe.
A batch belongs to one battery; it is accepted whole or rejected whole.

Cell ids are checked against the battery's topology when one is passed as validation context::

    UplinkBatch.model_validate(data, context={"topology": topology})
"""

from __future__ import annotations

import itertools
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationInfo, model_validator

from twin.base import B2LModel, BatteryId, SequenceNumber, ShortText, StorableJson, UtcDatetime
from twin.cells import MAX_CELLS_PER_GROUP, CellGroup, empty
from twin.commands import CommandAck
from twin.measurements import (
    CellEstimate,
    EisMeasurement,
    PackMeasurement,
    Pillar1CellMeasurement,
    Pillar2CellData,
)
from twin.topology import BatteryTopology

NUL_REASON = "body: NUL characters (\\u0000) are not accepted in text"
"""Why a batch holding one is refused: PostgreSQL stores no NUL in text or jsonb."""
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
MAX_RECORDS_PER_BATCH = 10_000
MAX_CELLS_PER_RECORD = MAX_CELLS_PER_GROUP


def has_nul(json_text: bytes) -> bool:
    """Whether a JSON text holds a NUL character: a ``\\u0000`` escape that is not the text of
    an escaped backslash (a raw NUL byte is not valid JSON at all)."""
    return b"\\u0000" in json_text and _NUL_ESCAPE.search(json_text) is not None


class Severity(StrEnum):
    """How urgent an event is."""

    INFO = "info"
    WARNING = "warning"
    ALARM = "alarm"


class TelemetryRecord(B2LModel):
    """A snapshot of a battery at one instant: cell values, pack values, the edge's estimates."""

    kind: Literal["telemetry"] = "telemetry"
    seq: SequenceNumber
    timestamp: UtcDatetime
    pillar1: CellGroup[Pillar1CellMeasurement] = Field(
        default_factory=lambda: empty(Pillar1CellMeasurement), validate_default=False
    )
    """Cells or columns (``twin.cells``), at most ``MAX_CELLS_PER_RECORD``; so are ``pillar2``
    and ``estimates``."""
    pillar2: CellGroup[Pillar2CellData] = Field(
        default_factory=lambda: empty(Pillar2CellData), validate_default=False
    )
    packs: list[PackMeasurement] = Field(default_factory=list, max_length=64)
    estimates: CellGroup[CellEstimate] = Field(
        default_factory=lambda: empty(CellEstimate), validate_default=False
    )

    @model_validator(mode="after")
    def _not_empty(self) -> TelemetryRecord:
        if not (self.pillar1 or self.pillar2 or self.packs or self.estimates):
            raise ValueError("a telemetry record needs at least one cell, pack or estimate")
        groups = (
            ("pillar1", self.pillar1),
            ("pillar2", self.pillar2),
            ("estimates", self.estimates),
        )
        for name, group in groups:
            if len(group) > 1 and len(set(ids := group.cell_ids)) != len(ids):
                raise ValueError(f"{name} lists a cell_id twice")
        return self

    def cell_ids(self) -> set[int]:
        """Every cell id the record mentions."""
        return {c for group in (self.pillar1, self.pillar2, self.estimates) for c in group.cell_ids}


class EisRecord(B2LModel):
    """Rows of one EIS event (a whole spectrum or a part of it)."""

    kind: Literal["eis"] = "eis"
    seq: SequenceNumber
    timestamp: UtcDatetime
    rows: Annotated[list[EisMeasurement], Field(min_length=1, max_length=10_000)]

    def cell_ids(self) -> set[int]:
        """Every cell id the record mentions."""
        return {r.cell_id for r in self.rows}


class EventRecord(B2LModel):
    """Something happened at the edge: an alarm, a data-loss notice, a reboot."""

    kind: Literal["event"] = "event"
    seq: SequenceNumber
    timestamp: UtcDatetime
    event_type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
    severity: Severity = Severity.INFO
    message: ShortText | None = None
    cell_id: Annotated[int, Field(ge=0, le=65_535)] | None = None
    data: dict[str, StorableJson] = Field(default_factory=dict)

    def cell_ids(self) -> set[int]:
        """Every cell id the record mentions."""
        return set() if self.cell_id is None else {self.cell_id}


class AckRecord(B2LModel):
    """A command acknowledgement, sent through the same durable outbox."""

    kind: Literal["ack"] = "ack"
    seq: SequenceNumber
    timestamp: UtcDatetime
    ack: CommandAck

    def cell_ids(self) -> set[int]:
        """Acks name no cell."""
        return set()


UplinkRecord = Annotated[
    TelemetryRecord | EisRecord | EventRecord | AckRecord, Field(discriminator="kind")
]


class UplinkBatch(B2LModel):
    """Records of one battery, in strictly increasing sequence order."""

    battery_id: BatteryId
    records: Annotated[list[UplinkRecord], Field(min_length=1, max_length=MAX_RECORDS_PER_BATCH)]

    @model_validator(mode="after")
    def _ordered_and_in_topology(self, info: ValidationInfo) -> UplinkBatch:
        seqs = [r.seq for r in self.records]
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            raise ValueError("records must be in strictly increasing seq order")
        topology = info.context.get("topology") if isinstance(info.context, dict) else None
        if isinstance(topology, BatteryTopology):
            for record in self.records:
                outside = sorted(c for c in record.cell_ids() if not topology.contains(c))
                if outside:
                    raise ValueError(
                        f"record seq {record.seq}: cell_id {outside[0]} is outside the battery's "
                        f"topology (0..{topology.n_cells - 1})"
                    )
        return self

    @property
    def first_seq(self) -> int:
        """The lowest sequence number in the batch."""
        return self.records[0].seq

    @property
    def last_seq(self) -> int:
        """The highest sequence number in the batch."""
        return self.records[-1].seq
