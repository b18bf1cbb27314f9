"""Ingestion: one uplink batch in, stored whole or not at all, each (battery_id, seq) once.

``IngestionService.ingest`` (HTTP and MQTT both call it):

1. checks the batch against the battery (registered, the device's own, cell ids within the
   topology) and refuses it whole with every reason (BatchRejectedError);
2. on PostgreSQL creates the telemetry partitions the batch needs (own short transaction);
3. in one transaction: claims the batch's seqs in ``ingested_records`` with
   ``INSERT ... ON CONFLICT DO NOTHING RETURNING seq`` (a concurrent ingester of the same seqs
   waits for this one and then claims nothing), writes the rows of the newly claimed records
   only (binary COPY on PostgreSQL, one per table; executemany on SQLite), applies command
   acks, merges the reported state into the twin, advances the cloud mirror and stores the
   events it raises; then commits.

It returns after the commit, so a caller may acknowledge (HTTP 2xx, MQTT PUBACK) on return.
Retried or replayed records are counted as duplicates and not stored again.

``IngestionService.ingest_many`` (the MQTT consumer's group commit) stores several batches, of
any batteries, in ONE transaction with the same steps: one claim statement for every key (sorted
by battery and seq, so concurrent ingesters lock in one order), one COPY per table for every
row, the acks of every battery (sorted), then one twin update per battery with all its new
telemetry (the twins locked in one query, in battery order, and written in one executemany).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from cloud.clock import resolve_now
from cloud.db import bulk
from cloud.db.engine import Database
from cloud.db.models import (
    BatteryRow,
    CellEstimateRow,
    CellPillar1Row,
    CellPillar2Row,
    CommandAckRow,
    EisRow,
    EventRow,
    IngestedRecordRow,
    PackRow,
)
from cloud.db.partitions import PartitionManager
from cloud.errors import BatchRejectedError, NotFoundError, WrongBatteryError
from cloud.services import reported as reported_state
from cloud.services import twin_recovery
from cloud.services.commands import ack_effect, apply_ack
from cloud.services.mirror import CloudEvent, CloudMirror
from cloud.services.twins import ReportedSide, lock_reported, merge_reported, store_reported
from cloud.settings import CloudSettings
from twin.cells import CellGroup, form_errors
from twin.commands import CommandStatus
from twin.estimation import SocEstimator
from twin.topology import BatteryTopology
from twin.uplink import (
    NUL_REASON,
    AckRecord,
    EisRecord,
    EventRecord,
    TelemetryRecord,
    UplinkBatch,
    UplinkRecord,
    has_nul,
)

REPORTED_EVENT_TYPE = "twin.reported"
"""An edge event whose ``data`` is merged into the twin's reported settings."""
MAX_REASONS = 100
_CHUNK = 500
"""Keys per statement where they are bound one parameter each (SQLite bounds the parameters
of a statement)."""
_MAX_CACHED_BATTERIES = 10_000

_P1_COLUMNS = (
    "battery_id",
    "seq",
    "ts",
    "cell_id",
    "voltage_v",
    "temperature_c",
    "current_a",
    "sot",
    "phase",
    "soc",
    "sos",
)
_P2_COLUMNS = (
    "battery_id",
    "seq",
    "ts",
    "cell_id",
    "soc",
    "soh",
    "sos",
    "equivalent_cycles",
    "voltage_v",
    "temperature_c",
)
_EST_COLUMNS = ("battery_id", "seq", "ts", "cell_id", "soc", "soc_std", "sos")
_CELL_TABLES = (
    ("pillar1", CellPillar1Row, _P1_COLUMNS),
    ("pillar2", CellPillar2Row, _P2_COLUMNS),
    ("estimates", CellEstimateRow, _EST_COLUMNS),
)
"""The cell groups of a telemetry record and their tables (columns: battery, seq, ts, fields)."""
_PACK_COLUMNS = (
    "battery_id",
    "seq",
    "pack_index",
    "ts",
    "voltage_v",
    "current_a",
    "state",
    "faults",
)
_EIS_COLUMNS = (
    "battery_id",
    "seq",
    "row_index",
    "ts",
    "event_id",
    "cell_id",
    "status",
    "frequency_hz",
    "amplitude_ohm",
    "phase_deg",
    "current_offset_a",
    "v_start_v",
    "v_end_v",
    "temperature_c",
)
_EVENT_COLUMNS = (
    "battery_id",
    "seq",
    "source",
    "ts",
    "received_at",
    "event_type",
    "severity",
    "message",
    "cell_id",
    "data",
)
_ACK_COLUMNS = (
    "battery_id",
    "seq",
    "ts",
    "command_id",
    "status",
    "reason",
    "result",
    "applied",
    "note",
)
_CLAIM_SQL = (
    "INSERT INTO ingested_records (battery_id, seq, kind, ts, received_at) "
    "SELECT u.battery_id, u.seq, u.kind, u.ts, %b "
    "FROM unnest(%b::text[], %b::int8[], %b::text[], %b::timestamptz[]) "
    "AS u(battery_id, seq, kind, ts) "
    "ON CONFLICT DO NOTHING RETURNING battery_id, seq"
)
"""The claim of a batch's keys; parameters in binary (arrays dump 3x faster than as text)."""


TwinBacklog = dict[str, list[TelemetryRecord]]
"""Stored telemetry not yet merged into the twins, by battery, oldest first."""


class IngestResult(BaseModel):
    """What one batch did: records newly stored, duplicates skipped, rows written."""

    model_config = ConfigDict(frozen=True)

    battery_id: str
    accepted: int
    """Records stored now."""
    duplicates: int
    """Records already stored before (retries, replays): skipped."""
    accepted_by_kind: dict[str, int]
    cell_rows: int
    """Rows written to the cell time series (Pillar 1, Pillar 2, estimates)."""
    acks_applied: int
    cloud_events: int
    """Events the cloud raised (mirror divergence)."""


@dataclass(frozen=True)
class _Battery:
    topology: BatteryTopology
    estimator: SocEstimator | None
    parameters: dict[str, Any] | None


class CheckedBatch(NamedTuple):
    """A batch ``IngestionService.check`` accepted, with the battery it found for it."""

    batch: UplinkBatch
    battery: _Battery


def topology_reasons(batch: UplinkBatch, topology: BatteryTopology) -> list[str]:
    """Every record naming a cell outside ``topology`` (the batch model's own rule)."""
    reasons: list[str] = []
    n_cells = topology.n_cells
    for record in batch.records:
        if max(record.cell_ids(), default=0) < n_cells:
            continue  # cell ids are never negative (CellId)
        outside = sorted(c for c in record.cell_ids() if not topology.contains(c))
        reasons.append(
            f"record seq {record.seq}: cell_id {outside[0]} is outside the battery's "
            f"topology (0..{n_cells - 1})"
        )
        if len(reasons) >= MAX_REASONS:
            break
    return reasons


def validation_reasons(exc: ValidationError) -> list[str]:
    """One readable line per pydantic error (``records.3.telemetry.pillar1.cells.0.voltage_v:
    ...``), without the other cell form's noise (``twin.cells.form_errors``)."""
    lines = []
    for error in form_errors(exc.errors())[:MAX_REASONS]:  # no noise of the cells form not sent
        where = ".".join(str(p) for p in error["loc"]) or "batch"
        lines.append(f"{where}: {error['msg']}")
    return lines


class IngestionService:
    """Stores uplink batches; thread-safe, share one per process."""

    def __init__(self, db: Database, settings: CloudSettings | None = None) -> None:
        settings = settings or CloudSettings()
        self.db = db
        self.partitions = PartitionManager(db.engine, settings.telemetry_partition_span)
        self.mirror = CloudMirror(settings.mirror_period_s, settings.mirror_divergence_soc)
        self._batteries: dict[str, _Battery] = {}
        self._lock = threading.Lock()

    # -- entry points ---------------------------------------------------------------------------

    def ingest_json(
        self,
        data: str | bytes,
        device_battery_id: str | None = None,
        *,
        now: datetime | None = None,
    ) -> IngestResult:
        """Parse a batch's JSON and ingest it; BatchRejectedError lists what is malformed."""
        raw = data.encode() if isinstance(data, str) else data
        if has_nul(raw):
            raise BatchRejectedError(device_battery_id or "?", [NUL_REASON])
        try:
            batch = UplinkBatch.model_validate_json(raw)
        except ValidationError as exc:
            raise BatchRejectedError(device_battery_id or "?", validation_reasons(exc)) from None
        return self.ingest(batch, device_battery_id, now=now)

    def ingest(
        self,
        batch: UplinkBatch,
        device_battery_id: str | None = None,
        *,
        now: datetime | None = None,
    ) -> IngestResult:
        """Store a batch whole (new records only) and return after the commit.

        ``device_battery_id``: the battery of the device credential that sent the batch (None
        for an operator or an internal caller); a batch of another battery is refused.
        """
        battery = self._checked(batch, device_battery_id)
        return self._ingest_checked([(batch, battery)], resolve_now(now))[0]

    def ingest_many(
        self, batches: Sequence[UplinkBatch], *, now: datetime | None = None
    ) -> list[IngestResult]:
        """Store several batches (any batteries) in one transaction; results in input order.

        Every batch is checked first (``check``): the first bad one raises before anything is
        written, so callers that must not fail a group check each batch themselves first and
        store the good ones with ``ingest_checked``. Batches of one battery are applied in the
        given order. A battery's ``acks_applied`` and ``cloud_events`` are counted on its first
        batch.
        """
        return self.ingest_checked([self.check(batch) for batch in batches], now=now)

    def ingest_checked(
        self,
        checked: Sequence[CheckedBatch],
        *,
        now: datetime | None = None,
        deferred: TwinBacklog | None = None,
    ) -> list[IngestResult]:
        """``ingest_many`` of batches ``check`` accepted already (not checked again).

        ``deferred``: the new telemetry is added to it (by battery, in order) instead of being
        merged into the twins now; the caller writes it later with ``update_twins``. Acks and
        edge-reported settings still reach the twins in this transaction.
        """
        if not checked:
            return []
        return self._ingest_checked(checked, resolve_now(now), deferred)

    def update_twins(self, backlog: TwinBacklog, *, now: datetime | None = None) -> int:
        """Merge deferred telemetry (``ingest_checked(deferred=...)``) into the twins and
        advance the cloud mirror, in one transaction; the twins written. A battery whose twin
        is gone meanwhile (deleted) is skipped."""
        if not backlog:
            return 0
        moment = resolve_now(now)
        self.prefetch(backlog.keys())  # a fleet's batteries read in one query, not one by one
        with self.db.write() as session:
            sides = lock_reported(session, backlog.keys(), missing_ok=True)
            raised: list[tuple[str, CloudEvent]] = []
            for battery_id, side in sides.items():
                telemetry = sorted(backlog[battery_id], key=lambda r: r.seq)
                battery = self._battery(battery_id)
                for event in self._update_twin(side, battery, telemetry, [], moment):
                    raised.append((battery_id, event))
            store_reported(session, sides, moment)
            _write_cloud_events(session, raised, moment)
        return len(sides)

    def unmerged_telemetry(self) -> Iterator[TwinBacklog]:
        """Stored telemetry newer than what the twins show (a consumer killed before its twin
        interval ended leaves some), read back some batteries at a time: a backlog for
        ``update_twins`` each (``cloud.services.twin_recovery``)."""
        with self.db.read() as session:
            twins = twin_recovery.shown_seqs(session)
        for part in twin_recovery.passes(twins):
            with self.db.read() as session:
                backlog = twin_recovery.unmerged_telemetry(session, part)
            if backlog:
                yield backlog

    def check(self, batch: UplinkBatch, device_battery_id: str | None = None) -> CheckedBatch:
        """Refuse a batch that cannot be stored, before any write: WrongBatteryError (another
        battery's device), NotFoundError (battery not registered), BatchRejectedError (cells
        outside the topology). May read the battery from the database once (then cached)."""
        return CheckedBatch(batch, self._checked(batch, device_battery_id))

    def forget_battery(self, battery_id: str) -> None:
        """Drop the cached topology and cell model of a battery."""
        with self._lock:
            self._batteries.pop(battery_id, None)

    # -- internals ------------------------------------------------------------------------------

    def _checked(self, batch: UplinkBatch, device_battery_id: str | None) -> _Battery:
        battery_id = batch.battery_id
        if device_battery_id is not None and device_battery_id != battery_id:
            raise WrongBatteryError(
                f"a device of battery {device_battery_id!r} cannot write battery {battery_id!r}"
            )
        battery = self._battery(battery_id)
        reasons = topology_reasons(batch, battery.topology)
        if reasons:
            raise BatchRejectedError(battery_id, reasons)
        return battery

    def _ingest_checked(
        self,
        prepared: Sequence[tuple[UplinkBatch, _Battery]],
        now: datetime,
        deferred: TwinBacklog | None = None,
    ) -> list[IngestResult]:
        cell_times = [
            r.timestamp
            for batch, _ in prepared
            for r in batch.records
            if isinstance(r, TelemetryRecord) and (r.pillar1 or r.pillar2 or r.estimates)
        ]
        self.partitions.ensure(cell_times)
        try:
            return self._store(prepared, now, deferred)
        except Exception as exc:
            if not _is_missing_partition(exc):
                raise
            self.partitions.forget()  # dropped behind our back: create again, once
            self.partitions.ensure(cell_times)
            return self._store(prepared, now, deferred)

    def prefetch(self, battery_ids: Iterable[str]) -> None:
        """Read the batteries among ``battery_ids`` not cached yet, in one query (a consumer
        meeting a fleet after its start would otherwise read them one by one)."""
        missing = sorted({b for b in battery_ids if b not in self._batteries})
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start : start + _CHUNK]
            with self.db.read() as session:
                rows = session.execute(
                    select(
                        BatteryRow.battery_id, BatteryRow.topology, BatteryRow.cell_parameters
                    ).where(BatteryRow.battery_id.in_(chunk))
                ).all()
            for battery_id, topology, parameters in rows:
                self._keep(battery_id, topology, parameters)

    def _battery(self, battery_id: str) -> _Battery:
        cached = self._batteries.get(battery_id)
        if cached is not None:
            return cached
        with self.db.read() as session:
            row = session.get(BatteryRow, battery_id)
            if row is None:
                raise NotFoundError(f"battery {battery_id!r} is not registered")
            topology, parameters = row.topology, row.cell_parameters
        return self._keep(battery_id, topology, parameters)

    def _keep(
        self, battery_id: str, topology: dict[str, Any], parameters: dict[str, Any] | None
    ) -> _Battery:
        """Cache a battery read from the database (its topology and cell model)."""
        estimator = None if parameters is None else self.mirror.estimator(parameters)
        battery = _Battery(BatteryTopology.model_validate(topology), estimator, parameters)
        with self._lock:
            if len(self._batteries) >= _MAX_CACHED_BATTERIES:
                self._batteries.clear()
            self._batteries[battery_id] = battery
        return battery

    def _store(
        self,
        prepared: Sequence[tuple[UplinkBatch, _Battery]],
        now: datetime,
        deferred: TwinBacklog | None = None,
    ) -> list[IngestResult]:
        batches = [batch for batch, _ in prepared]
        with self.db.write() as session:
            claimed = self._claim(session, batches, now)
            news: list[list[UplinkRecord]] = []
            for batch in batches:
                new: list[UplinkRecord] = []
                for r in batch.records:
                    key = (batch.battery_id, r.seq)
                    if key in claimed:
                        claimed.discard(key)  # a seq twice in the group: its first batch has it
                        new.append(r)
                news.append(new)
            parts = [
                (batch.battery_id, [r for r in new if isinstance(r, TelemetryRecord)])
                for batch, new in zip(batches, news, strict=True)
            ]
            self._write_telemetry(session, parts)
            eis = [
                (batch.battery_id, [r for r in new if isinstance(r, EisRecord)])
                for batch, new in zip(batches, news, strict=True)
            ]
            if any(records for _, records in eis):
                bulk.write_rows(
                    session,
                    EisRow,
                    _EIS_COLUMNS,
                    itertools.chain.from_iterable(_eis_rows(b, rs) for b, rs in eis),
                )
            events = [
                (batch.battery_id, e)
                for batch, new in zip(batches, news, strict=True)
                for e in new
                if isinstance(e, EventRecord)
            ]
            if events:
                bulk.write_rows(
                    session,
                    EventRow,
                    _EVENT_COLUMNS,
                    (_edge_event_row(b, e, now) for b, e in events),
                )
            held: TwinBacklog | None = None if deferred is None else {}
            per_battery = self._update_batteries(session, prepared, news, now, held)
            cloud_events = [
                (battery_id, e) for battery_id, (_, events_) in per_battery.items() for e in events_
            ]
            _write_cloud_events(session, cloud_events, now)
        if deferred is not None and held:
            for battery_id, telemetry in held.items():  # committed: the caller's to write
                deferred.setdefault(battery_id, []).extend(telemetry)
        results: list[IngestResult] = []
        seen: set[str] = set()
        for batch, new in zip(batches, news, strict=True):
            battery_id = batch.battery_id
            first = battery_id not in seen
            seen.add(battery_id)
            acks_applied, raised = per_battery.get(battery_id, (0, []))
            kinds = Counter(r.kind for r in new)
            results.append(
                IngestResult.model_construct(  # computed here: no validation needed
                    battery_id=battery_id,
                    accepted=len(new),
                    duplicates=len(batch.records) - len(new),
                    accepted_by_kind={str(kind): n for kind, n in kinds.items()},
                    cell_rows=sum(
                        len(r.pillar1) + len(r.pillar2) + len(r.estimates)
                        for r in new
                        if isinstance(r, TelemetryRecord)
                    ),
                    acks_applied=acks_applied if first else 0,
                    cloud_events=len(raised) if first else 0,
                )
            )
        return results

    def _update_batteries(
        self,
        session: Session,
        prepared: Sequence[tuple[UplinkBatch, _Battery]],
        news: Sequence[Sequence[UplinkRecord]],
        now: datetime,
        held: TwinBacklog | None = None,
    ) -> dict[str, tuple[int, list[CloudEvent]]]:
        """The acks of every battery (sorted), then one twin update per battery with all its
        new telemetry: the twins locked in one query and written in one executemany (one lock
        order: commands, then twins by battery). Returns acks applied and cloud events.
        ``held``: the telemetry goes there instead (see ``ingest_checked``)."""
        grouped: dict[str, tuple[_Battery, list[UplinkRecord]]] = {}
        for (batch, battery), new in zip(prepared, news, strict=True):
            entry = grouped.setdefault(batch.battery_id, (battery, []))
            entry[1].extend(new)
        acks_applied: dict[str, int] = {}
        updates: dict[str, tuple[list[reported_state.JsonObject], list[TelemetryRecord]]] = {}
        for battery_id in sorted(grouped):
            records = grouped[battery_id][1]
            acks = [r for r in records if isinstance(r, AckRecord)]
            patches, acks_applied[battery_id] = self._apply_acks(session, battery_id, acks, now)
            patches += [
                reported_state.settings_patch(r.data)
                for r in records
                if isinstance(r, EventRecord) and r.event_type == REPORTED_EVENT_TYPE
            ]
            telemetry = sorted(
                (r for r in records if isinstance(r, TelemetryRecord)), key=lambda r: r.seq
            )
            if held is not None and telemetry:
                held[battery_id] = telemetry
                telemetry = []
            if telemetry or any(patches):
                updates[battery_id] = (patches, telemetry)
        sides = lock_reported(session, updates.keys()) if updates else {}
        raised: dict[str, list[CloudEvent]] = {}
        for battery_id, (patches, telemetry) in updates.items():
            battery = grouped[battery_id][0]
            raised[battery_id] = self._update_twin(
                sides[battery_id], battery, telemetry, patches, now
            )
        store_reported(session, sides, now)
        return {b: (acks_applied[b], raised.get(b, [])) for b in sorted(grouped)}

    def _claim(
        self, session: Session, batches: Sequence[UplinkBatch], now: datetime
    ) -> set[tuple[str, int]]:
        """Insert the batches' keys (sorted by battery, seq); the keys this transaction inserted
        (not seen before)."""
        keys = sorted(
            {
                (batch.battery_id, r.seq): (r.kind, r.timestamp)
                for batch in reversed(batches)  # a key twice: its first batch's values
                for r in batch.records
            }.items()
        )
        if self.db.is_postgresql:
            driver = session.connection().connection.driver_connection
            with driver.cursor() as cursor:  # type: ignore[union-attr]
                cursor.execute(
                    _CLAIM_SQL,
                    (
                        now,
                        [k[0] for k, _ in keys],
                        [k[1] for k, _ in keys],
                        [v[0] for _, v in keys],
                        [v[1] for _, v in keys],
                    ),
                )
                return {(row[0], row[1]) for row in cursor.fetchall()}
        claimed: set[tuple[str, int]] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            statement = (
                sqlite_insert(IngestedRecordRow)
                .values(
                    [
                        {
                            "battery_id": battery_id,
                            "seq": seq,
                            "kind": kind,
                            "ts": ts,
                            "received_at": now,
                        }
                        for (battery_id, seq), (kind, ts) in chunk
                    ]
                )
                .on_conflict_do_nothing()
                .returning(IngestedRecordRow.battery_id, IngestedRecordRow.seq)
            )
            claimed.update((row[0], row[1]) for row in session.execute(statement))
        return claimed

    @staticmethod
    def _write_telemetry(
        session: Session, parts: Sequence[tuple[str, Sequence[TelemetryRecord]]]
    ) -> None:
        """One COPY (or executemany) per table for the telemetry of every battery: the cells
        column by column (``bulk.write_blocks``), the packs row by row."""
        records = [r for _, rs in parts for r in rs]
        if not records:
            return
        for group, model, columns in _CELL_TABLES:
            if any(getattr(r, group) for r in records):
                blocks = _cell_blocks(parts, group, columns[3:])
                bulk.write_blocks(session, model, columns, blocks)
        if any(r.packs for r in records):
            packs = itertools.chain.from_iterable(_pack_rows(b, rs) for b, rs in parts if rs)
            bulk.write_rows(session, PackRow, _PACK_COLUMNS, packs)

    @staticmethod
    def _apply_acks(
        session: Session, battery_id: str, acks: Sequence[AckRecord], now: datetime
    ) -> tuple[list[reported_state.JsonObject], int]:
        """Apply acks in command-id order (one lock order for every writer of commands)."""
        patches: list[reported_state.JsonObject] = []
        rows = []
        applied = 0
        for record in sorted(acks, key=lambda r: (str(r.ack.command_id), r.seq)):
            ack = record.ack
            command, note = apply_ack(session, battery_id, ack, now)
            if note is None and command is not None:
                applied += 1
                if ack.status is CommandStatus.SUCCEEDED:
                    patches.append(ack_effect(command.payload))
            rows.append(
                (
                    battery_id,
                    record.seq,
                    record.timestamp,
                    ack.command_id,
                    ack.status.value,
                    ack.reason,
                    ack.result,
                    note is None,
                    note,
                )
            )
        if rows:
            bulk.write_rows(session, CommandAckRow, _ACK_COLUMNS, rows)
        return patches, applied

    def _update_twin(
        self,
        side: ReportedSide,
        battery: _Battery,
        telemetry: Sequence[TelemetryRecord],
        patches: list[reported_state.JsonObject],
        now: datetime,
    ) -> list[CloudEvent]:
        """Merge reported values into a locked twin's reported side and advance the mirror."""
        patch: reported_state.JsonObject = {}
        for extra in patches:
            patch.update(extra)
        patch.update(reported_state.telemetry_patch(telemetry, side.reported))
        merge_reported(side, patch, now)
        if patch.keys() & reported_state.AGGREGATED_KEYS:
            merge_reported(side, {"aggregates": reported_state.aggregates(side.reported)}, now)
        if battery.estimator is None or not any(r.pillar1 for r in telemetry):
            return []
        step = self.mirror.advance(
            side.estimator_state, battery.estimator, battery.topology.n_cells, telemetry
        )
        side.estimator_state = step.state
        return step.events


def _is_missing_partition(exc: BaseException) -> bool:
    """A PostgreSQL 'no partition of relation ... found for row' error."""
    return getattr(exc, "sqlstate", None) == "23514" and "no partition" in str(exc)


def _cell_blocks(
    parts: Sequence[tuple[str, Sequence[TelemetryRecord]]], group: str, fields: Sequence[str]
) -> Iterator[bulk.Block]:
    """The ``bulk`` blocks of a cell group's rows ``(battery_id, seq, ts, *fields)``: one block
    for all the batteries whose ids have one length in bytes (a fleet's ids have one or a few),
    the battery id and the record's seq and ts repeated for each of its cells, the cells' fields
    read column by column (a group that arrived as columns builds no cell model)."""
    by_length: dict[int, list[tuple[bytes, TelemetryRecord, CellGroup[Any]]]] = {}
    for battery_id, records in parts:
        encoded = battery_id.encode()
        groups = by_length.setdefault(len(encoded), [])
        groups.extend((encoded, r, cells) for r in records if (cells := getattr(r, group)))
    for groups in by_length.values():
        if not groups:
            continue
        counts = [len(cells) for _, _, cells in groups]
        ids = np.repeat(np.array([b for b, _, _ in groups]), counts)
        seqs = np.repeat(np.array([r.seq for _, r, _ in groups], dtype=np.int64), counts)
        stamps = list(
            itertools.chain.from_iterable(
                itertools.repeat(r.timestamp, n)
                for (_, r, _), n in zip(groups, counts, strict=True)
            )
        )
        cells = [
            list(itertools.chain.from_iterable(c.column(name) for _, _, c in groups))
            for name in fields
        ]
        yield (ids, seqs, stamps, *cells)


def _pack_rows(battery_id: str, records: Sequence[TelemetryRecord]) -> Iterator[bulk.Row]:
    for r in records:
        for p in r.packs:
            yield (
                battery_id,
                r.seq,
                p.pack_index,
                r.timestamp,
                p.voltage_v,
                p.current_a,
                p.state,
                list(p.faults),
            )


def _eis_rows(battery_id: str, records: Sequence[EisRecord]) -> Iterator[bulk.Row]:
    for r in records:
        for index, m in enumerate(r.rows):
            yield (
                battery_id,
                r.seq,
                index,
                r.timestamp,
                m.event_id,
                m.cell_id,
                m.status,
                m.frequency_hz,
                m.amplitude_ohm,
                m.phase_deg,
                m.current_offset_a,
                m.v_start_v,
                m.v_end_v,
                m.temperature_c,
            )


def _edge_event_row(battery_id: str, e: EventRecord, now: datetime) -> bulk.Row:
    return (
        battery_id,
        e.seq,
        "edge",
        e.timestamp,
        now,
        e.event_type,
        e.severity.value,
        e.message,
        e.cell_id,
        dict(e.data),
    )


def _write_cloud_events(
    session: Session, events: Sequence[tuple[str, CloudEvent]], now: datetime
) -> None:
    """Store the events the cloud raised (mirror divergence), by battery."""
    if events:
        rows = (_cloud_event_row(b, e, now) for b, e in events)
        bulk.write_rows(session, EventRow, _EVENT_COLUMNS, rows)


def _cloud_event_row(battery_id: str, e: CloudEvent, now: datetime) -> bulk.Row:
    return (
        battery_id,
        None,
        "cloud",
        e.ts,
        now,
        e.event_type,
        e.severity.value,
        e.message,
        e.cell_id,
        dict(e.data),
    )
