"""In-process uplink: a ``MemoryCloud`` that stores records once per (battery, seq), as the
real cloud does, and hands out commands. For tests and the demo; no network.

``cloud(name)`` gives the process-wide cloud of that name (``[uplink] kind = "memory"`` with
``name``). A test can take it offline (``online = False``: deliveries are retried), refuse
batches (``reject``), push commands (``send_command``: delivered at once to connected edges, and
kept pending until an ``AckRecord`` answers them) and read back what arrived.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edge_runtime.clock import SYSTEM_CLOCK, Clock
from edge_runtime.outbox import OutboxBatch
from edge_runtime.uplink import Delivery, Outcome, Uplink, UplinkListener
from twin.commands import Command, CommandAck
from twin.uplink import AckRecord, UplinkBatch, UplinkRecord

__all__ = ["MemoryCloud", "MemoryUplink", "cloud", "forget_clouds"]

_CLOUDS: dict[str, MemoryCloud] = {}
_CLOUDS_LOCK = threading.Lock()


class MemoryCloud:
    """The in-process stand-in of the cloud's ingestion and command queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.online = True
        self.reject: Callable[[UplinkBatch], str | None] | None = None
        """Return a reason to refuse a batch (a 4xx), None to take it."""
        self.max_records: int | None = None
        """Refuse batches larger than this as too large (a 413)."""
        self.records: dict[str, dict[int, UplinkRecord]] = {}
        self.batches = 0
        self.duplicates = 0
        self.acks: dict[str, CommandAck] = {}
        self._pending: dict[str, dict[str, Command]] = {}
        self._edges: list[MemoryUplink] = []

    # ---------------------------------------------------------------- ingestion

    def receive(self, batch: UplinkBatch) -> tuple[Outcome, str]:
        """Store a batch idempotently (what POST .../telemetry does)."""
        if not self.online:
            return Outcome.RETRY, "the cloud is offline"
        if self.max_records is not None and len(batch.records) > self.max_records:
            return Outcome.TOO_LARGE, f"more than {self.max_records} records"
        if self.reject is not None:
            reason = self.reject(batch)
            if reason is not None:
                return Outcome.REJECTED, reason
        with self._lock:
            self.batches += 1
            stored = self.records.setdefault(batch.battery_id, {})
            for record in batch.records:
                if record.seq in stored:
                    self.duplicates += 1
                    continue
                stored[record.seq] = record
                if isinstance(record, AckRecord):
                    self.acks[str(record.ack.command_id)] = record.ack
                    self._pending.get(batch.battery_id, {}).pop(str(record.ack.command_id), None)
        return Outcome.ACKED, ""

    def seqs(self, battery_id: str) -> list[int]:
        """Sequence numbers stored for a battery, sorted."""
        with self._lock:
            return sorted(self.records.get(battery_id, {}))

    def of_kind(self, battery_id: str, kind: str) -> list[UplinkRecord]:
        """Stored records of one kind, in sequence order."""
        with self._lock:
            stored = self.records.get(battery_id, {})
            return [stored[s] for s in sorted(stored) if stored[s].kind == kind]

    # ---------------------------------------------------------------- commands

    def send_command(self, command: Command) -> None:
        """Queue a command and push it to the battery's connected edges (like MQTT)."""
        with self._lock:
            self._pending.setdefault(command.battery_id, {})[str(command.command_id)] = command
            edges = [e for e in self._edges if e.battery_id == command.battery_id]
        if self.online:
            for edge in edges:
                edge._command(command)

    def pending_commands(self, battery_id: str) -> list[Command]:
        """Commands not answered yet (what GET .../commands?pending=true returns)."""
        with self._lock:
            return list(self._pending.get(battery_id, {}).values())

    def _attach(self, edge: MemoryUplink) -> None:
        with self._lock:
            self._edges.append(edge)

    def _detach(self, edge: MemoryUplink) -> None:
        with self._lock:
            if edge in self._edges:
                self._edges.remove(edge)


def cloud(name: str = "default") -> MemoryCloud:
    """The process-wide ``MemoryCloud`` called ``name`` (created on first use)."""
    with _CLOUDS_LOCK:
        if name not in _CLOUDS:
            _CLOUDS[name] = MemoryCloud()
        return _CLOUDS[name]


def forget_clouds() -> None:
    """Drop every named cloud (between tests)."""
    with _CLOUDS_LOCK:
        _CLOUDS.clear()


class MemoryUplink(Uplink):
    """Submits batches to a ``MemoryCloud`` synchronously."""

    kind = "memory"

    def __init__(
        self, battery_id: str, target: MemoryCloud, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        super().__init__(battery_id, clock=clock)
        self.cloud = target
        self._was_online = target.online
        self._poll_requested = True

    def start(self, listener: UplinkListener) -> None:
        """Attach to the cloud; pending commands are fetched on the first tick."""
        super().start(listener)
        self.cloud._attach(self)

    @property
    def connected(self) -> bool:
        """The cloud is online."""
        return self.cloud.online

    def submit(self, batch: OutboxBatch) -> None:
        """Validate and store the batch in the cloud; the outcome is delivered at once."""
        outcome, detail = self.cloud.receive(batch.uplink_batch())
        self._deliver(Delivery(batch, outcome, detail))

    def tick(self) -> None:
        """Notice the cloud coming back; fetch pending commands when asked."""
        online = self.cloud.online
        if online != self._was_online:
            self._was_online = online
            if self.listener is not None:
                self.listener.on_connection(online, online)
        if online and self._poll_requested:
            self._poll_requested = False
            for command in self.cloud.pending_commands(self.battery_id):
                self._command(command)

    def request_commands(self) -> None:
        """Fetch the pending commands on the next tick."""
        self._poll_requested = True

    def close(self) -> None:
        """Detach from the cloud."""
        self.cloud._detach(self)
