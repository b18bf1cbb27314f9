"""The composition root of the edge runtime: link -> processing -> outbox -> forwarder -> uplink.

Two threads (plus the uplink's own, for MQTT):

* the main thread polls the BMS link, turns samples into records (processing), stores them in
  the outbox (alarms in the priority lane), runs the commands and rewrites the status file;
* the forwarder thread sends batches from the outbox through the uplink and acknowledges them.

``EdgeRuntime.run`` runs until SIGTERM/SIGINT (or the ``stop`` event) and shuts down in order:
forwarder, uplink, link, status, outbox. Tests build the runtime with their own link, uplink and
clock and drive it with ``start(threaded=False)`` + ``step`` + ``forwarder.step`` in virtual
time. Adapters come from the settings by name (``open_link``, ``open_uplink``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sqlite3
import threading
from typing import Any

from edge_runtime.backoff import Backoff
from edge_runtime.clock import SYSTEM_CLOCK, Clock, utc
from edge_runtime.commands import REPORTED_EVENT, CommandExecutor
from edge_runtime.config import EdgeSettings
from edge_runtime.forwarder import Forwarder
from edge_runtime.links import BmsLink, BmsStatus, LinkEvent, Sample, open_link
from edge_runtime.outbox import Outbox
from edge_runtime.processing import DRAFT_SEQ, Processor
from edge_runtime.status import write_status
from edge_runtime.uplink import Uplink, open_uplink
from twin.uplink import EventRecord, Severity, UplinkRecord

__all__ = ["EdgeRuntime"]

log = logging.getLogger("edge_runtime")

_POLL_S = 0.2


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else utc(epoch_s).isoformat()


class EdgeRuntime:
    """One battery's edge runtime, wired from its settings (see the module docstring)."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        link: BmsLink | None = None,
        uplink: Uplink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        params = settings.cell_parameters()
        self.uplink = uplink or open_uplink(settings, clock=clock)
        o = settings.outbox
        try:
            self.outbox = Outbox(
                o.path,
                settings.battery_id,
                max_bytes=o.max_bytes,
                max_age_s=o.max_age_s,
                batch_max_records=o.batch_max_records,
                batch_max_bytes=o.batch_max_bytes,
                synchronous=o.synchronous,
                retention_s=self.uplink.replay_window_s,
                clock=clock,
            )
        except BaseException:
            self.uplink.close()
            raise
        try:
            self.link = link or open_link(
                settings.link, cell_count=settings.topology.n_cells, clock=clock
            )
        except BaseException:
            self.uplink.close()
            self.outbox.close()
            raise
        self.processor = Processor(settings.topology, params)
        self.executor = CommandExecutor(
            settings.battery_id,
            self.link,
            self.processor,
            self.outbox,
            default_period_s=settings.reporting_period_s,
            eis_timeout_s=settings.eis_timeout_s,
            clock=clock,
        )
        up = settings.uplink
        self.forwarder = Forwarder(
            self.outbox,
            self.uplink,
            backoff=Backoff(up.backoff_base_s, up.backoff_cap_s, rng),
            clock=clock,
            linger_s=up.linger_s,
            on_command=self.executor.submit,
        )
        self.started_s = clock.wall_s()
        self.last_sample_s: float | None = None
        self.store_errors = 0
        self.stopped_s: float | None = None
        self._bms_status: BmsStatus | None = None
        self._next_status_s = -math.inf
        self._started = False
        self._closed = False

    # ---------------------------------------------------------------- life cycle

    def start(self, *, threaded: bool = True) -> None:
        """Note the start in the outbox and start forwarding (``threaded=False``: the caller
        drives ``forwarder.step``)."""
        self._store(
            [
                EventRecord(
                    seq=DRAFT_SEQ,
                    timestamp=self.clock.now(),
                    event_type="edge.start",
                    severity=Severity.INFO,
                    message="edge runtime started",
                    data={
                        "pid": os.getpid(),
                        "link": self.link.kind,
                        "uplink": self.uplink.kind,
                        "pending_records": self.outbox.pending_records,
                    },
                ),
                EventRecord(
                    seq=DRAFT_SEQ,
                    timestamp=self.clock.now(),
                    event_type=REPORTED_EVENT,
                    severity=Severity.INFO,
                    message="settings of the edge runtime at start",
                    data=self.executor.reported_settings(),
                ),
            ],
            [True, True],
        )
        if threaded:
            self.forwarder.start()
        else:
            self.forwarder.start_inline()
        self._started = True
        log.info(
            "edge runtime started",
            extra={"battery_id": self.settings.battery_id, "link": self.link.kind},
        )

    def run(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set or SIGTERM/SIGINT arrives; then shut down cleanly."""
        stop = stop or threading.Event()
        restore: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                restore[int(sig)] = signal.signal(sig, lambda *_: stop.set())
        try:
            if not self._started:
                self.start()
            while not stop.is_set():
                try:
                    self.step(_POLL_S)
                except Exception:  # bad luck in one round must not end the runtime
                    log.exception("runtime step failed")
                    stop.wait(1.0)
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)
            log.info("edge runtime stopping")
            self.close()

    def close(self) -> None:
        """Stop forwarding, close the uplink and the link, write the status, close the outbox."""
        if self._closed:
            return
        self._closed = True
        self.stopped_s = self.clock.wall_s()
        self.forwarder.stop()
        self.uplink.close()
        self.link.close()
        self._write_status()
        self.outbox.close()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- the main loop

    def step(self, timeout_s: float = 0.0) -> list[LinkEvent]:
        """Poll the link (up to ``timeout_s``), handle its events, advance the commands."""
        events = self.link.poll(timeout_s)
        for event in events:
            self.executor.on_event(event)
            if isinstance(event, Sample):
                self._on_sample(event)
            elif isinstance(event, BmsStatus):
                self._on_bms_status(event)
        self.executor.tick()
        if self.clock.monotonic_s() >= self._next_status_s:
            self._next_status_s = self.clock.monotonic_s() + self.settings.status_period_s
            self._write_status()
        return events

    def _on_sample(self, sample: Sample) -> None:
        self.last_sample_s = sample.time_s
        processed = self.processor.process(sample)
        records: list[UplinkRecord] = list(processed.events)
        lanes = [True] * len(records)
        if processed.telemetry is not None:
            records.append(processed.telemetry)
            lanes.append(False)
        self._store(records, lanes)

    def _on_bms_status(self, status: BmsStatus) -> None:
        events = self.processor.status_events(status, self._bms_status)
        self._bms_status = status
        self._store(list(events), [True] * len(events))

    def _store(self, records: list[UplinkRecord], lanes: list[bool]) -> None:
        if not records:
            return
        try:
            self.outbox.enqueue_many(records, priority=lanes)
        except (sqlite3.Error, OSError) as exc:  # a full disk must not stop the runtime
            self.store_errors += len(records)
            log.error("outbox: %d record(s) could not be stored: %s", len(records), exc)

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """Everything ``b2l edge status`` shows."""
        now = self.clock.wall_s()
        bms = self._bms_status
        return {
            "battery_id": self.settings.battery_id,
            "pid": os.getpid(),
            "started_at": _iso(self.started_s),
            "updated_at": _iso(now),
            "stopped_at": _iso(self.stopped_s),
            "status_period_s": self.settings.status_period_s,
            "last_sample_at": _iso(self.last_sample_s),
            "link": {
                "kind": self.link.kind,
                "connected": self.link.connected,
                "pillar": self.link.pillar,
                "bms_reporting_period_ms": self.link.bms_reporting_period_ms,
                "bms_faults": [] if bms is None else sorted(bms.faults),
                **self.link.counters.as_dict(),
            },
            "alarms": self.processor.summary()["alarms"],
            "processing": self.processor.summary(),
            "outbox": {**self.outbox.stats().as_dict(), "path": str(self.settings.outbox.path)},
            "forwarder": self.forwarder.status(),
            "commands": self.executor.status(),
            "store_errors": self.store_errors,
        }

    def _write_status(self) -> None:
        try:
            write_status(self.settings.status_path, self.status())
        except (OSError, sqlite3.Error, RuntimeError) as exc:
            log.warning("cannot write the status file %s: %s", self.settings.status_path, exc)
