"""The store-and-forward loop: batches from the outbox to the uplink, outcomes back to the outbox.

One thread (``start``/``stop``; ``step`` does one round, for tests):

* builds batches in the outbox's order (priority lane first, then sequence order) and keeps up
  to ``uplink.max_inflight`` of them submitted; a partial batch of the normal lane waits up to
  ``linger_s`` for more records (alarms never wait);
* ``ACKED``: the records leave the outbox (``Outbox.ack``), the backoff resets;
* ``RETRY``: everything in flight is forgotten (it will be rebuilt from the outbox, in order)
  and the next attempt waits ``Retry-After`` or the backoff (exponential, full jitter);
* ``REJECTED`` / ``TOO_LARGE``: the batch is split in halves until the refused record is alone,
  then it goes to the dead-letter table (with a data-loss event): a poisoned record never
  blocks the queue and never loops;
* after a reconnect: records acknowledged within the uplink's ``replay_window_s`` are queued
  again, and the pending commands are fetched (desired-state sync).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge_runtime.backoff import Backoff
from edge_runtime.clock import SYSTEM_CLOCK, Clock
from edge_runtime.outbox import Lane, Outbox, OutboxBatch
from edge_runtime.uplink import Delivery, Outcome, Uplink
from twin.commands import Command

__all__ = ["Forwarder"]

log = logging.getLogger("edge_runtime.forwarder")

_IDLE_WAIT_S = 1.0
_MAX_RETRY_AFTER_S = 3600.0


class Forwarder:
    """Moves batches from an ``Outbox`` to an ``Uplink`` (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        uplink: Uplink,
        *,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
        linger_s: float = 0.0,
        on_command: Callable[[Command], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.uplink = uplink
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.linger_s = linger_s
        self.on_command_callback = on_command
        self._deliveries: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: dict[int, OutboxBatch] = {}
        self._retry_at_s = -1e300
        self._linger_since_s: float | None = None
        self._split_limit: int | None = None
        self._split_until_seq = 0
        self._replay = False
        self._connected = False
        # counters for the status file
        self.batches_sent = 0
        self.records_acked = 0
        self.retries = 0
        self.rejected_batches = 0
        self.dead_lettered = 0
        self.replayed = 0
        self.commands_received = 0
        self.last_error: str | None = None
        self.last_ack_s: float | None = None
        outbox.add_listener(self._wakeup.set)

    # ---------------------------------------------------------------- listener (any thread)

    def on_delivery(self, delivery: Delivery) -> None:
        """An uplink outcome; handled in the forwarder's thread."""
        self._deliveries.put(delivery)
        self._wakeup.set()

    def on_command(self, command: Command) -> None:
        """A command from the cloud: passed on at once (the executor queues it)."""
        self.commands_received += 1
        if self.on_command_callback is not None:
            self.on_command_callback(command)

    def on_connection(self, connected: bool, reconnected: bool) -> None:
        """Connection news; a reconnect triggers the replay window and the command sync."""
        self._connected = connected
        if connected and reconnected:
            self._replay = True
        self._wakeup.set()

    # ---------------------------------------------------------------- the loop

    def start(self) -> None:
        """Start the uplink and the forwarding thread."""
        self.uplink.start(self)
        self._thread = threading.Thread(target=self._run, name="b2l-forwarder", daemon=True)
        self._thread.start()

    def start_inline(self) -> None:
        """Start the uplink only; the caller drives ``step`` (tests, virtual time)."""
        self.uplink.start(self)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (the uplink stays open: the caller closes it)."""
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait_s = self.step()
            except Exception:  # never let the uplink thread die: log, back off, go on
                log.exception("forwarder step failed")
                wait_s = self.backoff.next_delay_s()
            if self._deliveries.empty():
                self._wakeup.wait(wait_s)
            self._wakeup.clear()

    def step(self) -> float:
        """One round: outcomes, replay, uplink tick, new submissions. Returns the idle wait."""
        self._handle_deliveries()
        if self._replay:
            self._replay = False
            self._do_replay()
        self.uplink.tick()
        self._handle_deliveries()
        now = self.clock.monotonic_s()
        if not self.uplink.connected:
            return _IDLE_WAIT_S
        if now < self._retry_at_s:
            return min(self._retry_at_s - now, _IDLE_WAIT_S)
        wait = _IDLE_WAIT_S
        while len(self._inflight) < self.uplink.max_inflight:
            after: dict[Lane, int] = {}
            for batch in self._inflight.values():
                after[batch.lane] = max(after.get(batch.lane, 0), batch.last_seq)
            next_batch = self.outbox.next_batch(
                after=after, max_records=self._split_limit, single_kind=self.uplink.single_kind
            )
            if next_batch is None:
                self._linger_since_s = None
                break
            batch = next_batch
            partial = batch.n_records < self.outbox.batch_max_records and (
                self._split_limit is None
            )
            if batch.lane is Lane.NORMAL and partial and self.linger_s > 0.0:
                if self._linger_since_s is None:
                    self._linger_since_s = now
                left = self._linger_since_s + self.linger_s - now
                if left > 0.0:
                    wait = min(wait, left)
                    break
            self._linger_since_s = None
            self._inflight[id(batch)] = batch
            self.batches_sent += 1
            self.uplink.submit(batch)
            self._handle_deliveries()
            if now < self._retry_at_s:
                break
        return wait

    def _do_replay(self) -> None:
        self._inflight.clear()
        window = self.uplink.replay_window_s
        if window > 0.0:
            count = self.outbox.replay_acked(self.clock.wall_s() - window)
            self.replayed += count
            if count:
                log.info("replaying %d record(s) acknowledged in the last %.0f s", count, window)
        self.uplink.request_commands()

    def _handle_deliveries(self) -> None:
        while True:
            try:
                delivery = self._deliveries.get_nowait()
            except queue.Empty:
                return
            self._handle(delivery)

    def _handle(self, delivery: Delivery) -> None:
        batch = delivery.batch
        known = self._inflight.pop(id(batch), None) is not None
        if delivery.outcome is Outcome.ACKED:
            self.records_acked += self.outbox.ack(batch)
            self.last_ack_s = self.clock.wall_s()
            self.backoff.reset()
            if self._split_limit is not None and batch.last_seq >= self._split_until_seq:
                self._split_limit = None
            return
        if not known:
            return  # an outcome of a batch already forgotten (retried since)
        self.last_error = delivery.detail
        if delivery.outcome is Outcome.RETRY:
            self.retries += 1
            self._inflight.clear()
            delay = delivery.retry_after_s
            if delay is None:
                delay = self.backoff.next_delay_s()
            delay = min(max(delay, 0.0), _MAX_RETRY_AFTER_S)
            self._retry_at_s = self.clock.monotonic_s() + delay
            log.warning(
                "uplink: batch seq %d..%d not delivered (%s); retry in %.1f s",
                batch.first_seq,
                batch.last_seq,
                delivery.detail,
                delay,
            )
            return
        self.rejected_batches += 1
        self._inflight.clear()
        if batch.n_records > 1:
            self._split_limit = max(1, batch.n_records // 2)
            self._split_until_seq = max(self._split_until_seq, batch.last_seq)
            log.warning(
                "uplink: batch seq %d..%d %s (%s); splitting it",
                batch.first_seq,
                batch.last_seq,
                delivery.outcome.value,
                delivery.detail,
            )
            return
        self.dead_lettered += self.outbox.dead_letter(
            batch, f"{delivery.outcome.value}: {delivery.detail}"
        )

    def status(self) -> dict[str, Any]:
        """Counters and state for the status file."""
        now = self.clock.monotonic_s()
        return {
            "uplink": self.uplink.status(),
            "inflight_batches": len(self._inflight),
            "retry_in_s": round(self._retry_at_s - now, 1) if now < self._retry_at_s else 0.0,
            "batches_sent": self.batches_sent,
            "records_acked": self.records_acked,
            "retries": self.retries,
            "rejected_batches": self.rejected_batches,
            "dead_lettered": self.dead_lettered,
            "replayed": self.replayed,
            "commands_received": self.commands_received,
            "last_error": self.last_error,
            "last_ack_s": self.last_ack_s,
        }
