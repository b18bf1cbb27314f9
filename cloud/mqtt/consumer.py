"""The uplink consumer: MQTT messages in, group commits through the ingestion service, PUBACKs
after the commit.

Messages arrive on paho's network thread (``on_message``, manual acknowledgement) and are only
queued there. Two worker threads do the rest, in arrival order (so each battery's messages are
stored in the order the broker delivered them):

1. the **decoder** takes up to ``max_messages`` messages, or what arrived within ``max_wait_s``
   of the first, and decodes each: the topic ``b2l/v1/{battery_id}/{channel}``, gzip when the
   payload starts with the gzip magic (the edge's ``compress``), the ``UplinkBatch`` JSON, and
   the topic's battery against the batch's. It runs one group ahead of the committer and then
   waits for it, so what arrives meanwhile makes the next group: groups grow with the load
   (a slow commit is followed by a big one, which writes each battery's twin once);
2. the **committer** checks each batch against its battery (registered, cells in the
   topology), stores the good ones in ONE transaction (``IngestionService.ingest_checked``),
   writes the bad ones to the dead letters, and only then acknowledges every message of the
   group (PUBACK), so the decoder prepares the next group while the database works.

A malformed message (bad topic, gzip, JSON or schema; battery mismatch; unknown battery; cells
outside the topology) is counted, set aside and acknowledged, and the consumer goes on. When the
database refuses the data itself (``DataError``/``IntegrityError``...), the group is stored one
message at a time to find the culprit, which becomes a ``poison`` dead letter. Any other error
(database down, deadlock, lost connection) acknowledges nothing: the group is retried with
backoff until it commits, or until the consumer stops, in which case the broker redelivers the
unacknowledged messages when this session reconnects (each (battery, seq) is stored once).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from cloud.clock import utc_now
from cloud.errors import BatchRejectedError, NotFoundError
from cloud.metrics import CloudMetrics
from cloud.mqtt.dead_letters import DeadLetterStore
from cloud.services.ingestion import (
    CheckedBatch,
    IngestionService,
    IngestResult,
    TwinBacklog,
    validation_reasons,
)
from twin.errors import B2LError, TopicError
from twin.protocols.mqtt_topics import parse_topic
from twin.uplink import NUL_REASON, UplinkBatch, has_nul

__all__ = ["Inbound", "MqttConsumer", "Outcome", "decode_message"]

log = logging.getLogger("cloud.mqtt.consumer")

MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
"""Bound of a payload, as received and after gzip decompression."""
_GZIP_MAGIC = b"\x1f\x8b"
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0
_KIND_LABEL = {"telemetry": "telemetry", "eis": "eis", "event": "events", "ack": "acks"}
DATA_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.DataError,
    sa_exc.IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    B2LError,
    ValueError,
    TypeError,
)
"""Errors the data itself causes (retrying the same message cannot help)."""


class Outcome:
    """What became of a message (the ``outcome`` label of ``b2l_mqtt_messages_total``)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    MISMATCH = "mismatch"
    UNKNOWN_BATTERY = "unknown_battery"
    REJECTED = "rejected"
    POISON = "poison"


@dataclass(slots=True)
class Inbound:
    """A received message, with the connection generation it came on (for its PUBACK)."""

    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass(slots=True)
class _Dead:
    message: Inbound
    reason: str
    detail: str


@dataclass
class _Group:
    good: list[tuple[Inbound, UplinkBatch]] = field(default_factory=list)
    dead: list[_Dead] = field(default_factory=list)

    @property
    def messages(self) -> list[Inbound]:
        return [m for m, _ in self.good] + [d.message for d in self.dead]


def decode_message(topic: str, payload: bytes) -> UplinkBatch | tuple[str, str]:
    """The batch a message carries, or ``(outcome, detail)`` when it is not acceptable."""
    try:
        parsed = parse_topic(topic)
    except TopicError as exc:
        return Outcome.MISMATCH, str(exc)
    if not parsed.channel.from_edge:
        return Outcome.MISMATCH, f"{topic!r} is not an edge-to-cloud channel"
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Outcome.MALFORMED, f"payload of {len(payload)} bytes (most: {MAX_PAYLOAD_BYTES})"
    if payload[:2] == _GZIP_MAGIC:
        try:
            payload = _gunzip(payload)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            return Outcome.MALFORMED, f"bad gzip payload: {exc}"
    if has_nul(payload):
        return Outcome.MALFORMED, NUL_REASON  # the database would refuse the whole group
    try:
        batch = UplinkBatch.model_validate_json(payload)
    except ValidationError as exc:
        return Outcome.MALFORMED, "; ".join(validation_reasons(exc))
    if batch.battery_id != parsed.battery_id:
        return (
            Outcome.MISMATCH,
            f"topic battery {parsed.battery_id!r} differs from the batch's {batch.battery_id!r}",
        )
    return batch


def _gunzip(data: bytes) -> bytes:
    """Decompress at most ``MAX_PAYLOAD_BYTES`` (a bigger payload is refused, not inflated)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, MAX_PAYLOAD_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"more than {MAX_PAYLOAD_BYTES} bytes once decompressed")
    if not inflater.eof:
        raise EOFError("truncated gzip stream")
    return out


class MqttConsumer:
    """Decodes, stores and acknowledges uplink messages (see the module docstring).

    ``ack(messages)`` sends the PUBACKs (the service drops those of an older connection).
    ``twin_interval_s``: 0 here merges telemetry into the twins at each group commit; the
    service passes ``B2L_MQTT_TWIN_INTERVAL_S`` (1 s by default). Either way, the stored
    telemetry the twins have not merged yet is merged before the first group.
    """

    def __init__(
        self,
        ingestion: IngestionService,
        ack: Callable[[Sequence[Inbound]], None],
        *,
        metrics: CloudMetrics | None = None,
        dead_letters: DeadLetterStore | None = None,
        max_messages: int = 1000,
        max_wait_s: float = 0.05,
        twin_interval_s: float = 0.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.ingestion = ingestion
        self._ack = ack
        self.metrics = metrics if metrics is not None else CloudMetrics()
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetterStore(None, 0)
        self.max_messages = max_messages
        self.max_wait_s = max_wait_s
        self.twin_interval_s = twin_interval_s
        self.clock = clock
        self._backlog: TwinBacklog = {}  # stored telemetry the twins have not seen yet
        self._backlog_since = 0.0  # when the backlog's oldest part was stored (monotonic)
        self.counts: dict[str, int] = {}
        self.commits = 0
        self.retries = 0
        self._inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self._groups: queue.Queue[_Group | None] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the decoder and committer threads."""
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._decode_loop, name="b2l-mqtt-decoder", daemon=True),
            threading.Thread(target=self._commit_loop, name="b2l-mqtt-committer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the group being committed (queued messages stay unacknowledged)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []

    def submit(self, message: Inbound) -> None:
        """Queue a received message (paho's thread; never blocks)."""
        self._inbox.put(message)

    @property
    def backlog(self) -> int:
        """Messages received and not yet taken into a group."""
        return self._inbox.qsize()

    # ------------------------------------------------------------------ decoder

    def _collect(self) -> list[Inbound]:
        try:
            first = self._inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        group = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(group) < self.max_messages:
            try:
                group.append(self._inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                group.append(self._inbox.get(timeout=left))
            except queue.Empty:
                break
        return group

    def _decode_loop(self) -> None:
        while not self._stop.is_set():
            messages = self._collect()
            if not messages:
                continue
            group = _Group()
            for message in messages:
                try:
                    decoded = decode_message(message.topic, message.payload)
                except Exception as exc:  # a decoder bug must not stop the consumer
                    decoded = (Outcome.MALFORMED, _short(exc))
                if isinstance(decoded, UplinkBatch):
                    group.good.append((message, decoded))
                else:
                    group.dead.append(_Dead(message, decoded[0], decoded[1]))
            while not self._stop.is_set():
                try:
                    self._groups.put(group, timeout=0.1)
                    break
                except queue.Full:
                    continue

    # ------------------------------------------------------------------ committer

    def _commit_loop(self) -> None:
        self._catch_up_twins()
        while not self._stop.is_set():
            try:
                group = self._groups.get(timeout=0.1)
            except queue.Empty:
                group = None
            if group is not None:
                self._commit(group)
            if self._backlog and time.monotonic() - self._backlog_since >= self.twin_interval_s:
                self._write_twins()
        if self._backlog:
            self._write_twins()  # stopping: what was stored reaches the twins

    def _catch_up_twins(self) -> None:
        """Before the first group: merge into the twins the telemetry stored and not merged yet
        (a consumer killed within its twin interval). A failure is logged; the consumer goes
        on, and each twin gets its battery's next message as usual."""
        try:
            for backlog in self.ingestion.unmerged_telemetry():
                self._backlog = backlog
                self._write_twins()
                if self._backlog or self._stop.is_set():
                    break  # the database is away (_write_twins keeps it for the interval)
        except Exception as exc:  # the database is away: ingesting matters more
            log.warning("twins not caught up with the stored telemetry: %s", _short(exc))

    def _write_twins(self) -> None:
        """Merge the telemetry of the groups since the last time into the twins (with
        ``twin_interval_s``). When the data is refused, battery by battery, leaving out (and
        logging) the ones refused; on any other failure it all stays for the next try."""
        try:
            self.ingestion.update_twins(self._backlog, now=self.clock())
        except DATA_ERRORS as exc:
            log.warning("twins refused their telemetry (%s); writing one by one", _short(exc))
            for battery_id, telemetry in list(self._backlog.items()):
                try:
                    self.ingestion.update_twins({battery_id: telemetry}, now=self.clock())
                except DATA_ERRORS as one:
                    log.error("twin of %s left without that telemetry: %s", battery_id, _short(one))
                except Exception:  # the database went away meanwhile: the rest waits
                    self._backlog_since = time.monotonic()
                    return
                del self._backlog[battery_id]
        except Exception as exc:  # the database is away: the rows are stored, try again later
            log.warning(
                "twins of %d batteries not written yet: %s", len(self._backlog), _short(exc)
            )
            self._backlog_since = time.monotonic()
            return
        self._backlog = {}

    def _commit(self, group: _Group) -> None:
        delay_s = _RETRY_MIN_S
        while True:
            try:
                results, dead = self._store(group)
                break
            except Exception as exc:  # transient: nothing acked, try again
                self.retries += 1
                self.metrics.mqtt_db_retries.inc()
                log.warning(
                    "MQTT group of %d messages not stored, retrying in %.1fs: %s",
                    len(group.good),
                    delay_s,
                    _short(exc),
                )
                if self._stop.wait(delay_s):
                    return  # unacknowledged: the broker redelivers after reconnecting
                delay_s = min(_RETRY_MAX_S, delay_s * 2)
        now = self.clock()
        outcomes: Counter[str] = Counter()
        rows: Counter[str] = Counter()
        for item in group.dead + dead:
            self.dead_letters.put(
                topic=item.message.topic,
                payload=item.message.payload,
                reason=item.reason,
                detail=item.detail,
                received_at=now,
            )
            outcomes[item.reason] += 1
        for result in results:
            outcomes[Outcome.STORED if result.accepted else Outcome.DUPLICATE] += 1
            for kind, n in result.accepted_by_kind.items():
                rows[_KIND_LABEL.get(kind, kind)] += result.cell_rows if kind == "telemetry" else n
        for outcome, n in outcomes.items():
            self._count(outcome, n)
        for label, n in rows.items():
            self.metrics.rows_ingested.labels("mqtt", label).inc(n)
        self._ack(group.messages)

    def _store(self, group: _Group) -> tuple[list[IngestResult], list[_Dead]]:
        """Check, then store the good batches in one transaction (isolating data errors)."""
        dead: list[_Dead] = []
        ok: list[tuple[Inbound, CheckedBatch]] = []
        self.ingestion.prefetch(batch.battery_id for _, batch in group.good)
        for message, batch in group.good:
            try:
                ok.append((message, self.ingestion.check(batch)))
            except NotFoundError as exc:
                dead.append(_Dead(message, Outcome.UNKNOWN_BATTERY, str(exc)))
            except BatchRejectedError as exc:
                dead.append(_Dead(message, Outcome.REJECTED, str(exc)))
        if not ok:
            return [], dead
        start_s = time.perf_counter()
        deferred = self._backlog if self.twin_interval_s > 0 else None
        if deferred is not None and not deferred:
            self._backlog_since = time.monotonic()
        try:
            results = self.ingestion.ingest_checked(
                [c for _, c in ok], now=self.clock(), deferred=deferred
            )
        except DATA_ERRORS as exc:
            log.warning("a group commit failed on its data (%s); storing one by one", _short(exc))
            results = []
            for message, checked in ok:
                try:
                    results += self.ingestion.ingest_checked(
                        [checked], now=self.clock(), deferred=deferred
                    )
                except DATA_ERRORS as one:
                    dead.append(_Dead(message, Outcome.POISON, _short(one)))
        self.commits += 1
        self.metrics.mqtt_commits.inc()
        self.metrics.mqtt_commit_latency_s.observe(time.perf_counter() - start_s)
        return results, dead

    def _count(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n
        self.metrics.mqtt_messages.labels(outcome).inc(n)
        if outcome not in (Outcome.STORED, Outcome.DUPLICATE):
            self.metrics.rejects.labels("mqtt", outcome).inc(n)


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
