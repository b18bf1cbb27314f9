"""The command publisher: queued commands go to ``b2l/v1/{battery_id}/commands`` at QoS 1.

The payload is one ``twin.commands.Command`` as JSON (what ``edge_runtime.uplink.mqtt`` parses;
the edge drops a command of another battery and runs each command id once). A command is
marked delivered (``CommandService.mark_delivered``) when the broker's PUBACK for it arrives:
from then on the broker holds it in the edge's persistent session.

* Every ``poll_s`` (or at once after ``wake()``, e.g. from the HTTP route that created a
  command) the database is asked for queued, unexpired commands, oldest first; each is
  published once until its PUBACK (or a disconnect).
* After every connect (the first one after a cloud restart included) every open command,
  queued or delivered and not expired, is published again: a broker killed before its autosave
  may have lost delivered ones. The edge ignores a command id it already has.
* A PUBACK with a failure reason (e.g. "no matching subscribers": the edge never connected, so
  the broker has no session for it) leaves the command queued; it is tried again after
  ``retry_s``.
* Overdue commands are expired (``CommandService.expire_overdue``) every ``expire_every_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select, tuple_

from cloud.clock import utc_now
from cloud.db.engine import Database
from cloud.db.models import CommandRow
from cloud.errors import NotFoundError
from cloud.metrics import CloudMetrics
from cloud.services.commands import CommandService, command_view
from twin.commands import Command, CommandStatus
from twin.protocols.mqtt_topics import Channel, topic

__all__ = ["CommandPublisher", "open_commands"]

log = logging.getLogger("cloud.mqtt.commands")

PAGE = 500
_QUEUED = (CommandStatus.QUEUED.value,)
_OPEN = (CommandStatus.QUEUED.value, CommandStatus.DELIVERED.value)

Publish = Callable[[str, bytes], int | None]
"""``publish(topic, payload)`` -> the message id, or None when it could not be sent now."""


def open_commands(
    db: Database,
    now: datetime,
    *,
    statuses: tuple[str, ...] = _OPEN,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = PAGE,
) -> list[Command]:
    """Unexpired commands with one of ``statuses``, oldest first, after the keyset ``after``."""
    query = (
        select(CommandRow)
        .where(CommandRow.status.in_(statuses), CommandRow.expires_at > now)
        .order_by(CommandRow.created_at, CommandRow.command_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(CommandRow.created_at, CommandRow.command_id) > after)
    with db.read() as session:
        return [command_view(row).command for row in session.scalars(query)]


class CommandPublisher:
    """Publishes commands and records their delivery (one thread; see the module docstring)."""

    def __init__(
        self,
        db: Database,
        publish: Publish,
        *,
        metrics: CloudMetrics | None = None,
        poll_s: float = 0.5,
        retry_s: float = 30.0,
        expire_every_s: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = db
        self.commands = CommandService(db)
        self._publish = publish
        self.metrics = metrics if metrics is not None else CloudMetrics()
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.expire_every_s = expire_every_s
        self.clock = clock
        self.published = 0
        self.delivered = 0
        self.failed = 0
        self._connected = False
        self._resend_all = False
        self._inflight: dict[int, Command] = {}
        self._inflight_ids: set[uuid.UUID] = set()
        self._retry_at: dict[uuid.UUID, float] = {}
        self._acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_expiry_s = 0.0

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the publisher thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="b2l-mqtt-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (commands in flight stay queued or delivered as they are)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def wake(self) -> None:
        """Look for new commands now (thread-safe)."""
        self._wake.set()

    # ------------------------------------------------------------------ from paho's thread

    def on_connected(self) -> None:
        """A (re)connect: publish every open command again."""
        with self._lock:
            self._connected = True
            self._resend_all = True
        self._wake.set()

    def on_disconnected(self) -> None:
        """The connection is gone: what was in flight will be published again."""
        with self._lock:
            self._connected = False
        self._wake.set()

    def on_puback(self, mid: int, ok: bool, reason: str) -> None:
        """The broker's PUBACK for ``mid`` (any mid: those of other publishers are ignored)."""
        self._acks.put((mid, ok, reason))
        self._wake.set()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._step()
            except Exception as exc:  # database down: try again at the next poll
                log.warning("command publisher: %s", exc)

    def _step(self) -> None:
        self._settle()
        with self._lock:
            connected, resend_all = self._connected, self._resend_all
            self._resend_all = False
            if not connected:
                self._inflight.clear()
                self._inflight_ids.clear()
        if not connected:
            return
        now = self.clock()
        now_s = time.monotonic()
        if now_s >= self._next_expiry_s:
            self._next_expiry_s = now_s + self.expire_every_s
            self.commands.expire_overdue(now=now)
        statuses = _OPEN if resend_all else _QUEUED
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            page = open_commands(self.db, now, statuses=statuses, after=after)
            for command in page:
                if command.command_id in self._inflight_ids:
                    continue
                if not resend_all and self._retry_at.get(command.command_id, 0.0) > now_s:
                    continue
                if not self._send(command):
                    with self._lock:
                        self._resend_all = self._resend_all or resend_all
                    return
            if len(page) < PAGE:
                break
            last = page[-1]
            after = (last.created_at, last.command_id)
        self._settle()

    def _send(self, command: Command) -> bool:
        payload = command.model_dump_json().encode()
        mid = self._publish(topic(command.battery_id, Channel.COMMANDS), payload)
        if mid is None:
            return False
        self._inflight[mid] = command
        self._inflight_ids.add(command.command_id)
        self.published += 1
        self.metrics.mqtt_commands.labels("published").inc()
        return True

    def _settle(self) -> None:
        """Mark the PUBACKed commands delivered (one transaction per battery)."""
        delivered: dict[str, list[uuid.UUID]] = defaultdict(list)
        while True:
            try:
                mid, ok, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            command = self._inflight.pop(mid, None)
            if command is None:
                continue
            self._inflight_ids.discard(command.command_id)
            if ok:
                delivered[command.battery_id].append(command.command_id)
                self._retry_at.pop(command.command_id, None)
            else:
                self.failed += 1
                self.metrics.mqtt_commands.labels("failed").inc()
                self._retry_at[command.command_id] = time.monotonic() + self.retry_s
                log.info(
                    "command %s to %s not accepted by the broker (%s); retry in %.0fs",
                    command.command_id,
                    command.battery_id,
                    reason,
                    self.retry_s,
                )
        if len(self._retry_at) > 100_000:
            self._retry_at.clear()
        for battery_id, ids in delivered.items():
            try:
                self.commands.mark_delivered(battery_id, ids, now=self.clock())
            except NotFoundError:
                continue  # the command (or battery) is gone
            self.delivered += len(ids)
            self.metrics.mqtt_commands.labels("delivered").inc(len(ids))
