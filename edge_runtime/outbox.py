"""Store-and-forward outbox: a SQLite (WAL) queue of uplink records, numbered per battery.

Every record gets the battery's next sequence number inside the transaction that stores it, so
numbers are strictly increasing, never reused, and survive a restart (``meta.next_seq``). Only
an acknowledgement (``ack``) removes records; a batch the cloud refuses goes to the
``dead_letters`` table (``dead_letter``), never back into the queue.

Lanes: alarms and notices go to the *priority* lane and are batched before the *normal* lane
(telemetry, EIS, acks), so they go out at once even behind a long backlog. Each lane is sent in
sequence order; the cloud stores each ``(battery_id, seq)`` once, so a record sent twice (a retry,
a replay) is harmless, and a priority record may arrive before older normal ones.

Bounds: the stored bodies are kept under ``max_bytes`` and younger than ``max_age_s``. When
full, the oldest records go (already-acknowledged replay copies first, then the normal lane,
then the priority lane) down to 90 % of the bound, and one ``outbox.data_loss`` event (priority
lane) says how many records and which sequence numbers were dropped, so the cloud twin can count
the loss. Age is measured on the wall clock and only while it is plausible (after 2020; a
Raspberry Pi without RTC starts in 1970 until NTP has synchronised).

Durability: ``synchronous=FULL`` (default) fsyncs the WAL at every commit: an ``enqueue`` that
returned survives kill -9 *and* power loss; ``NORMAL`` survives kill -9 but may lose the last
commits on power loss (see docs/edge-runtime.md for why FULL is the default).

The object is thread-safe (one connection behind a lock); ``add_listener`` callbacks run after
each commit that adds records (the forwarder wakes up on them).
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import JsonValue, TypeAdapter

from edge_runtime.clock import SYSTEM_CLOCK, Clock, utc
from twin.cells import COLUMNS_CONTEXT
from twin.errors import ConfigError
from twin.uplink import EventRecord, Severity, UplinkBatch, UplinkRecord

__all__ = ["Lane", "Outbox", "OutboxBatch", "OutboxStats"]

log = logging.getLogger("edge_runtime.outbox")

SCHEMA_VERSION = 1
_PLAUSIBLE_EPOCH_S = 1_577_836_800.0  # 2020-01-01T00:00:00Z
_LOW_WATER = 0.9
_MAX_DEAD_LETTERS = 10_000
_EXPIRE_EVERY_S = 60.0
_RECORD_ADAPTER: TypeAdapter[UplinkRecord] = TypeAdapter(UplinkRecord)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    lane INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_s REAL NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    acked_s REAL
);
CREATE INDEX IF NOT EXISTS records_pending ON records (lane, seq) WHERE acked_s IS NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    created_s REAL NOT NULL,
    failed_s REAL NOT NULL,
    reason TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    received_s REAL NOT NULL,
    status TEXT NOT NULL,
    updated_s REAL NOT NULL
);
"""


class Lane(enum.IntEnum):
    """Which queue a record waits in; the priority lane is always batched first."""

    NORMAL = 0
    PRIORITY = 1


@dataclass(frozen=True, slots=True, eq=False)
class OutboxBatch:
    """Records of one lane, in sequence order, as the ``UplinkBatch`` JSON the cloud takes."""

    battery_id: str
    lane: Lane
    seqs: tuple[int, ...]
    kinds: tuple[str, ...]
    body: bytes
    """UTF-8 JSON of an ``UplinkBatch``."""
    _gzip: list[bytes] = field(default_factory=list, repr=False)

    @property
    def first_seq(self) -> int:
        """Lowest sequence number."""
        return self.seqs[0]

    @property
    def last_seq(self) -> int:
        """Highest sequence number."""
        return self.seqs[-1]

    @property
    def n_records(self) -> int:
        """Records in the batch."""
        return len(self.seqs)

    @property
    def kind(self) -> str:
        """The records' kind if they share one, else ``mixed``."""
        return self.kinds[0] if len(set(self.kinds)) == 1 else "mixed"

    def compressed(self) -> bytes:
        """The body, gzip-compressed (deterministic: no timestamp in the header)."""
        if not self._gzip:
            self._gzip.append(gzip.compress(self.body, compresslevel=6, mtime=0))
        return self._gzip[0]

    def uplink_batch(self) -> UplinkBatch:
        """The body parsed and validated (for in-process uplinks and tests)."""
        return UplinkBatch.model_validate_json(self.body)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Depth and history of the outbox (for the status file)."""

    pending_records: int
    pending_priority: int
    stored_bytes: int
    oldest_pending_seq: int | None
    oldest_pending_s: float | None
    next_seq: int
    last_acked_seq: int | None
    last_ack_s: float | None
    acked_records: int
    dropped_records: int
    dead_letters: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


class Outbox:
    """The durable queue of one battery (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        battery_id: str,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        max_age_s: float = 30 * 86_400.0,
        batch_max_records: int = 500,
        batch_max_bytes: int = 512 * 1024,
        synchronous: str = "FULL",
        retention_s: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f"outbox.synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.battery_id = battery_id
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.retention_s = retention_s
        self.clock = clock
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"outbox.path: cannot open {self.path}: {exc}") from None
        try:
            self._setup(synchronous)
        except BaseException:
            self._db.close()
            raise
        self._last_expire_s = -1e300
        self._closed = False

    # ---------------------------------------------------------------- set-up

    def _setup(self, synchronous: str) -> None:
        db = self._db
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"outbox.path: {self.path} is not a usable database: {exc}") from None
        if str(mode).lower() != "wal":
            raise ConfigError(f"outbox.path: {self.path} cannot use WAL (journal_mode={mode})")
        with self._tx():
            stored = self._meta("battery_id")
            if stored is None:
                self._set_meta("battery_id", self.battery_id)
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("next_seq", "1")
            elif stored != self.battery_id:
                raise ConfigError(
                    f"outbox.path: {self.path} belongs to battery {stored!r}, not "
                    f"{self.battery_id!r} (sequence numbers are per battery)"
                )
        self._load_counters()

    def _load_counters(self) -> None:
        """The in-memory counters from the file (at start, and after a rolled-back write)."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE acked_s IS NULL"
        ).fetchone()
        self._pending, self._pending_bytes = int(row[0]), int(row[1])
        self._stored_bytes = int(
            self._db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()[0]
        )

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, on_rollback=self._load_counters)

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _meta_int(self, key: str, default: int = 0) -> int:
        value = self._meta(key)
        return default if value is None else int(value)

    # ---------------------------------------------------------------- enqueue

    def enqueue(self, record: UplinkRecord, *, priority: bool = False) -> int:
        """Store ``record`` (its ``seq`` is replaced) durably; returns the sequence number."""
        return self.enqueue_many([record], priority=priority)[0]

    def enqueue_many(
        self, records: Sequence[UplinkRecord], *, priority: bool | Sequence[bool] = False
    ) -> list[int]:
        """Store several records in one transaction (one fsync); returns their numbers."""
        if not records:
            return []
        lanes = [priority] * len(records) if isinstance(priority, bool) else list(priority)
        if len(lanes) != len(records):
            raise ValueError("one priority flag per record")
        now = self.clock.wall_s()
        with self._lock:
            self._check_open()
            seqs: list[int] = []
            with self._tx():
                for record, urgent in zip(records, lanes, strict=True):
                    seqs.append(self._insert(record, Lane.PRIORITY if urgent else Lane.NORMAL, now))
                self._enforce_bounds(now)
            self._notify()
            return seqs

    def _insert(self, record: UplinkRecord, lane: Lane, now_s: float) -> int:
        seq = self._meta_int("next_seq", 1)
        stamped = record.model_copy(update={"seq": seq})
        body = stamped.model_dump_json(context=COLUMNS_CONTEXT).encode()  # cells as columns
        self._db.execute(
            "INSERT INTO records (seq, lane, kind, created_s, size, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (seq, int(lane), record.kind, now_s, len(body), body),
        )
        self._set_meta("next_seq", str(seq + 1))
        self._pending += 1
        self._pending_bytes += len(body)
        self._stored_bytes += len(body)
        return seq

    # ---------------------------------------------------------------- bounds

    def _enforce_bounds(self, now_s: float) -> None:
        """Inside a transaction: age and size bounds, with a data-loss event per eviction."""
        if now_s - self._last_expire_s >= _EXPIRE_EVERY_S:
            self._last_expire_s = now_s
            self._purge_retained(now_s)
            if now_s >= _PLAUSIBLE_EPOCH_S:
                rows = self._db.execute(
                    "SELECT seq, size, acked_s FROM records WHERE created_s >= ? "
                    "AND created_s < ? ORDER BY seq",
                    (_PLAUSIBLE_EPOCH_S, now_s - self.max_age_s),
                ).fetchall()
                if rows:
                    self._drop(rows, "max_age", now_s)
        if self._stored_bytes <= self.max_bytes:
            return
        target = int(self.max_bytes * _LOW_WATER)
        excess = self._stored_bytes - target
        victims: list[tuple[int, int, float | None]] = []
        for query in (
            "SELECT seq, size, acked_s FROM records WHERE acked_s IS NOT NULL ORDER BY seq",
            f"SELECT seq, size, acked_s FROM records WHERE acked_s IS NULL AND lane = "
            f"{int(Lane.NORMAL)} ORDER BY seq",
            f"SELECT seq, size, acked_s FROM records WHERE acked_s IS NULL AND lane = "
            f"{int(Lane.PRIORITY)} ORDER BY seq",
        ):
            for seq, size, acked in self._db.execute(query):
                if excess <= 0:
                    break
                victims.append((seq, size, acked))
                excess -= size
            if excess <= 0:
                break
        self._drop(victims, "outbox_full", now_s)

    def _drop(
        self, rows: Iterable[tuple[int, int, float | None]], reason: str, now_s: float
    ) -> None:
        lost: list[int] = []
        lost_bytes = 0
        for seq, size, acked in rows:
            self._db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            self._stored_bytes -= size
            if acked is None:
                self._pending -= 1
                self._pending_bytes -= size
                lost.append(seq)
                lost_bytes += size
        if lost:
            self._record_loss(lost, reason, now_s, {"dropped_bytes": lost_bytes})

    def _record_loss(
        self, seqs: list[int], reason: str, now_s: float, extra: Mapping[str, JsonValue]
    ) -> None:
        total = self._meta_int("dropped_records") + len(seqs)
        self._set_meta("dropped_records", str(total))
        ranges = _ranges(seqs)
        data: dict[str, JsonValue] = {
            "reason": reason,
            "dropped_records": len(seqs),
            "first_seq": seqs[0],
            "last_seq": seqs[-1],
            "seq_ranges": [list(r) for r in ranges[:50]],
            "dropped_total": total,
            **extra,
        }
        log.warning(
            "outbox: %d record(s) dropped (%s), seq %d..%d",
            len(seqs),
            reason,
            seqs[0],
            seqs[-1],
            extra={"dropped_records": len(seqs), "reason": reason},
        )
        event = EventRecord(
            seq=1,
            timestamp=utc(now_s),
            event_type="outbox.data_loss",
            severity=Severity.WARNING,
            message=f"{len(seqs)} record(s) dropped ({reason}), seq {seqs[0]}..{seqs[-1]}",
            data=data,
        )
        self._insert(event, Lane.PRIORITY, now_s)

    def _purge_retained(self, now_s: float) -> None:
        rows = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM records WHERE acked_s IS NOT NULL AND acked_s < ?",
            (now_s - self.retention_s,),
        ).fetchone()
        if rows[0]:
            self._db.execute(
                "DELETE FROM records WHERE acked_s IS NOT NULL AND acked_s < ?",
                (now_s - self.retention_s,),
            )
            self._stored_bytes -= int(rows[0])

    def expire(self) -> None:
        """Apply the age bound (and drop old replay copies) now."""
        now = self.clock.wall_s()
        with self._lock:
            self._check_open()
            self._last_expire_s = -1e300
            with self._tx():
                self._enforce_bounds(now)

    # ---------------------------------------------------------------- batches

    def next_batch(
        self,
        *,
        after: Mapping[Lane, int] | None = None,
        max_records: int | None = None,
        single_kind: bool = False,
    ) -> OutboxBatch | None:
        """The oldest pending records of the priority lane, else of the normal lane.

        ``after`` skips records up to a sequence number per lane (batches in flight);
        ``max_records`` lowers the batch size; ``single_kind`` stops at the first record of
        another kind (an MQTT topic per kind). At most ``batch_max_bytes`` of JSON (at least one
        record). None when nothing is pending.
        """
        limit = min(max_records or self.batch_max_records, self.batch_max_records)
        after = after or {}
        with self._lock:
            self._check_open()
            for lane in (Lane.PRIORITY, Lane.NORMAL):
                rows = self._db.execute(
                    "SELECT seq, kind, size, body FROM records "
                    "WHERE acked_s IS NULL AND lane = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (int(lane), after.get(lane, 0), limit),
                ).fetchall()
                if rows:
                    return self._batch(lane, rows, single_kind)
        return None

    def _batch(
        self, lane: Lane, rows: list[tuple[int, str, int, bytes]], single_kind: bool
    ) -> OutboxBatch:
        seqs: list[int] = []
        kinds: list[str] = []
        bodies: list[bytes] = []
        size = 0
        for seq, kind, length, body in rows:
            if seqs and (
                size + length > self.batch_max_bytes or (single_kind and kind != kinds[0])
            ):
                break
            seqs.append(seq)
            kinds.append(kind)
            bodies.append(body)
            size += length + 1
        head = b'{"battery_id":' + json.dumps(self.battery_id).encode() + b',"records":['
        return OutboxBatch(
            battery_id=self.battery_id,
            lane=lane,
            seqs=tuple(seqs),
            kinds=tuple(kinds),
            body=head + b",".join(bodies) + b"]}",
        )

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every commit that adds pending records."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    # ---------------------------------------------------------------- acknowledgement

    def ack(self, batch: OutboxBatch | Iterable[int]) -> int:
        """The cloud (or broker) holds these records: remove them; returns how many were pending.

        With ``retention_s`` > 0 they are kept, marked acknowledged, for ``replay_acked``.
        """
        seqs = list(batch.seqs if isinstance(batch, OutboxBatch) else batch)
        if not seqs:
            return 0
        now = self.clock.wall_s()
        with self._lock:
            self._check_open()
            with self._tx():
                count, size, stored = self._sizes(seqs)
                marks = ",".join("?" * len(seqs))
                if self.retention_s > 0.0:
                    self._db.execute(
                        f"UPDATE records SET acked_s = ? "
                        f"WHERE acked_s IS NULL AND seq IN ({marks})",
                        (now, *seqs),
                    )
                else:
                    self._db.execute(f"DELETE FROM records WHERE seq IN ({marks})", seqs)
                    self._stored_bytes -= stored
                self._pending -= count
                self._pending_bytes -= size
                last = max(seqs)
                if last > self._meta_int("last_acked_seq"):
                    self._set_meta("last_acked_seq", str(last))
                self._set_meta("last_ack_s", repr(now))
                self._set_meta("acked_records", str(self._meta_int("acked_records") + count))
            return count

    def ack_through(self, last_seq: int, lane: Lane = Lane.NORMAL) -> int:
        """Acknowledge every pending record of ``lane`` up to ``last_seq`` (cumulative ack)."""
        with self._lock:
            seqs = [
                int(r[0])
                for r in self._db.execute(
                    "SELECT seq FROM records WHERE acked_s IS NULL AND lane = ? AND seq <= ?",
                    (int(lane), last_seq),
                )
            ]
        return self.ack(seqs)

    def _sizes(self, seqs: list[int]) -> tuple[int, int, int]:
        """Pending count, pending bytes and stored bytes of the records ``seqs``."""
        marks = ",".join("?" * len(seqs))
        row = self._db.execute(
            f"SELECT COALESCE(SUM(acked_s IS NULL), 0), "
            f"COALESCE(SUM(CASE WHEN acked_s IS NULL THEN size ELSE 0 END), 0), "
            f"COALESCE(SUM(size), 0) FROM records WHERE seq IN ({marks})",
            seqs,
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def replay_acked(self, since_s: float) -> int:
        """Put records acknowledged at or after ``since_s`` (wall clock) back in the queue."""
        with self._lock:
            self._check_open()
            with self._tx():
                row = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records "
                    "WHERE acked_s IS NOT NULL AND acked_s >= ?",
                    (since_s,),
                ).fetchone()
                self._db.execute(
                    "UPDATE records SET acked_s = NULL WHERE acked_s IS NOT NULL AND acked_s >= ?",
                    (since_s,),
                )
            self._pending += int(row[0])
            self._pending_bytes += int(row[1])
            if row[0]:
                self._notify()
            return int(row[0])

    def dead_letter(self, batch: OutboxBatch, reason: str) -> int:
        """Move a refused batch out of the queue (never retried) and record the loss."""
        now = self.clock.wall_s()
        seqs = list(batch.seqs)
        marks = ",".join("?" * len(seqs))
        with self._lock:
            self._check_open()
            with self._tx():
                count, size, stored = self._sizes(seqs)
                self._db.execute(
                    f"INSERT OR REPLACE INTO dead_letters (seq, kind, created_s, failed_s, "
                    f"reason, body) SELECT seq, kind, created_s, ?, ?, body FROM records "
                    f"WHERE seq IN ({marks})",
                    (now, reason[:500], *seqs),
                )
                self._db.execute(f"DELETE FROM records WHERE seq IN ({marks})", seqs)
                self._stored_bytes -= stored
                self._pending -= count
                self._pending_bytes -= size
                self._db.execute(
                    "DELETE FROM dead_letters WHERE seq NOT IN "
                    "(SELECT seq FROM dead_letters ORDER BY seq DESC LIMIT ?)",
                    (_MAX_DEAD_LETTERS,),
                )
                if not _is_loss_event(batch):
                    self._record_loss(seqs, "rejected", now, {"detail": reason[:200]})
            self._notify()
        log.error("outbox: batch seq %d..%d dead-lettered: %s", seqs[0], seqs[-1], reason)
        return count

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest refused records (seq, kind, reason, body)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, failed_s, reason, body FROM dead_letters ORDER BY seq DESC "
                "LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {"seq": r[0], "kind": r[1], "failed_s": r[2], "reason": r[3], "body": r[4].decode()}
            for r in rows
        ]

    # ---------------------------------------------------------------- reading back

    def pending(self, lane: Lane | None = None) -> list[UplinkRecord]:
        """Every pending record in sequence order (tests and diagnostics)."""
        query = "SELECT body FROM records WHERE acked_s IS NULL"
        args: tuple[int, ...] = ()
        if lane is not None:
            query += " AND lane = ?"
            args = (int(lane),)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [_RECORD_ADAPTER.validate_json(r[0]) for r in rows]

    def stats(self) -> OutboxStats:
        """Depth, bounds and history."""
        with self._lock:
            self._check_open()
            oldest = self._db.execute(
                "SELECT seq, created_s FROM records WHERE acked_s IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            priority = self._db.execute(
                "SELECT COUNT(*) FROM records WHERE acked_s IS NULL AND lane = ?",
                (int(Lane.PRIORITY),),
            ).fetchone()[0]
            dead = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
            last_acked = self._meta("last_acked_seq")
            last_ack_s = self._meta("last_ack_s")
            return OutboxStats(
                pending_records=self._pending,
                pending_priority=int(priority),
                stored_bytes=self._stored_bytes,
                oldest_pending_seq=None if oldest is None else int(oldest[0]),
                oldest_pending_s=None if oldest is None else float(oldest[1]),
                next_seq=self._meta_int("next_seq", 1),
                last_acked_seq=None if last_acked is None else int(last_acked),
                last_ack_s=None if last_ack_s is None else float(last_ack_s),
                acked_records=self._meta_int("acked_records"),
                dropped_records=self._meta_int("dropped_records"),
                dead_letters=int(dead),
            )

    @property
    def pending_records(self) -> int:
        """Records waiting for an acknowledgement."""
        return self._pending

    # ---------------------------------------------------------------- small durable state

    def get_state(self, key: str) -> Any:
        """A JSON value stored with ``set_state`` (None if absent)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON value durably (None deletes it)."""
        with self._lock, self._tx():
            if value is None:
                self._db.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT INTO state (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )

    def next_counter(self, name: str) -> int:
        """A durable counter: 1, 2, 3, ... per ``name``, never repeated."""
        key = f"counter.{name}"
        with self._lock, self._tx():
            value = self._meta_int(key) + 1
            self._set_meta(key, str(value))
            return value

    def command_status(self, command_id: str) -> str | None:
        """The status recorded for a command id (None: never seen)."""
        with self._lock:
            row = self._db.execute(
                "SELECT status FROM commands WHERE command_id = ?", (command_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_command_status(self, command_id: str, status: str) -> None:
        """Record a command's status (``received``, ``succeeded``, ``failed``, ...)."""
        now = self.clock.wall_s()
        with self._lock, self._tx():
            self._db.execute(
                "INSERT INTO commands (command_id, received_s, status, updated_s) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (command_id) DO UPDATE SET "
                "status = excluded.status, updated_s = excluded.updated_s",
                (command_id, now, status, now),
            )
            self._db.execute("DELETE FROM commands WHERE received_s < ?", (now - 90 * 86_400.0,))

    # ---------------------------------------------------------------- life cycle

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the outbox is closed")

    def close(self) -> None:
        """Checkpoint and close the database (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception); nests as a no-op.

    SQLite may already have rolled back (``SQLITE_FULL``: a full disk); the original error is
    kept, and ``on_rollback`` resets what the caller counted in memory.
    """

    def __init__(
        self, db: sqlite3.Connection, on_rollback: Callable[[], None] | None = None
    ) -> None:
        self._db = db
        self._on_rollback = on_rollback
        self._outer = False

    def __enter__(self) -> _Transaction:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if not self._outer:
            return
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        if self._on_rollback is not None:
            self._on_rollback()


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted sequence numbers as inclusive runs: [1,2,3,7] -> [(1,3),(7,7)]."""
    out: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def _is_loss_event(batch: OutboxBatch) -> bool:
    """A batch made only of data-loss events (dead-lettering it must not make another)."""
    return b'"event_type":"outbox.data_loss"' in batch.body and batch.body.count(
        b'"kind":"event"'
    ) == batch.body.count(b'"event_type":"outbox.data_loss"')
