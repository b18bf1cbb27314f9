"""Cloud commands at the edge: reporting period, EIS, ECM parameters, estimator model.

``CommandExecutor.submit`` takes commands from any thread (MQTT, HTTP poll); the runtime's
main thread calls ``tick`` and ``on_event``. Commands run one at a time, in arrival order, as
generators that wait for the BMS's acknowledgements and events without blocking the link:

* ``reporting_period``: sent to the BMS; for ``duration_s`` (then the default comes back and a
  ``reporting_period.restored`` event says so) or until the next such command. The desired
  period is kept in the outbox's state table, so it survives a restart, and re-sent when the
  BMS reports another one (after a BMS reboot, or at start). When the default comes back a
  ``twin.reported`` event (``data.reporting_period_s``) tells the cloud twin.
* ``eis_start`` (Pillar 1): one sweep per cell (``EIS_START``, rows, ``EIS_DONE``); each cell's
  spectrum is uplinked as an ``EisRecord`` (event id ``{command}-{cell}``).
* ``ecm_parameters``: checked, forwarded to a Pillar 1 BMS (``ECM_UPDATE``; the Pillar 2 DBC has
  no such frame), then applied to the local estimator; kept for re-sending after a BMS reboot.
* ``model_update``: new cell parameters for the local estimator.

Each command ends with an ``AckRecord`` (``CommandAck`` succeeded, or failed with a reason) in
the outbox's priority lane. Commands are deduplicated by id (the outbox remembers finished
ones); an expired command is dropped (the cloud expires it itself).
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from edge_runtime.clock import SYSTEM_CLOCK, Clock, utc
from edge_runtime.links import BmsLink, BmsRequest, BmsStatus, EisDoneEvent, EisRowEvent, LinkEvent
from edge_runtime.outbox import Outbox
from edge_runtime.processing import DRAFT_SEQ, Processor
from twin.commands import (
    Command,
    CommandAck,
    CommandStatus,
    EcmParameters,
    EisCommand,
    ModelUpdate,
    ReportingPeriod,
)
from twin.errors import TwinValidationError
from twin.measurements import EisMeasurement
from twin.uplink import AckRecord, EisRecord, EventRecord, Severity

__all__ = ["CommandCounters", "CommandExecutor"]

log = logging.getLogger("edge_runtime.commands")

OVERRIDE_KEY = "reporting_override"
REPORTED_EVENT = "twin.reported"
"""An event whose ``data`` the cloud merges into the twin's ``reported`` settings."""
ECM_KEY = "ecm_parameters"
_FINAL = frozenset({"succeeded", "failed", "expired"})
_BMS_TIMEOUT_S = 30.0
_RECONCILE_EVERY_S = 10.0
_EIS_ROWS_PER_RECORD = 10_000


@dataclass
class CommandCounters:
    """What the executor did (reported in the status file)."""

    received: int = 0
    duplicates: int = 0
    expired: int = 0
    wrong_battery: int = 0
    succeeded: int = 0
    failed: int = 0
    eis_rows: int = 0
    stray_eis_rows: int = 0
    reconciled: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass
class _Wait:
    """What a running command waits for: a BMS request, or a condition; with a deadline."""

    deadline_s: float
    request: BmsRequest | None = None
    condition: Callable[[], bool] | None = None

    def ready(self, now_s: float) -> bool:
        if self.request is not None and self.request.done:
            return True
        if self.condition is not None and self.condition():
            return True
        return now_s >= self.deadline_s


class _Failed(Exception):
    """A command step failed; the message is the ack's reason."""


_Runner = Generator[_Wait, None, dict[str, Any]]


class CommandExecutor:
    """Runs cloud commands against the BMS link and the local processor."""

    def __init__(
        self,
        battery_id: str,
        link: BmsLink,
        processor: Processor,
        outbox: Outbox,
        *,
        default_period_s: float,
        eis_timeout_s: float = 3600.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.battery_id = battery_id
        self.link = link
        self.processor = processor
        self.outbox = outbox
        self.default_period_ms = round(default_period_s * 1000)
        self.eis_timeout_s = eis_timeout_s
        self.clock = clock
        self.counters = CommandCounters()
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._queue: deque[Command] = deque()
        self._queued_ids: set[str] = set()
        self._active: tuple[Command, _Runner] | None = None
        self._wait: _Wait | None = None
        self._eis_rows: dict[int, list[EisRowEvent]] = {}
        self._eis_done: dict[int, EisDoneEvent] = {}
        self._reconcile_request: BmsRequest | None = None
        self._next_reconcile_s = -1e300
        self._ecm_request: BmsRequest | None = None
        self._pushed_on_connection = -1
        ecm = outbox.get_state(ECM_KEY)
        if ecm is not None:
            try:
                processor.apply_ecm(EcmParameters.model_validate(ecm))
            except (ValidationError, TwinValidationError) as exc:
                log.warning("stored ECM parameters not applied: %s", exc)

    # ---------------------------------------------------------------- intake (any thread)

    def submit(self, command: Command) -> None:
        """Queue a command from the cloud (thread-safe)."""
        self._inbox.put(command)

    # ---------------------------------------------------------------- main thread

    @property
    def desired_period_ms(self) -> int:
        """The period the BMS should report at now (an override, else the default)."""
        override = self.outbox.get_state(OVERRIDE_KEY)
        if isinstance(override, dict) and "period_ms" in override:
            return int(override["period_ms"])
        return self.default_period_ms

    def on_event(self, event: LinkEvent) -> None:
        """Link events the commands wait for (EIS rows and ends, BMS status)."""
        if isinstance(event, EisRowEvent):
            rows = self._eis_rows.get(event.event_number)
            if rows is None:
                self.counters.stray_eis_rows += 1
            else:
                rows.append(event)
        elif isinstance(event, EisDoneEvent):
            if event.event_number in self._eis_rows:
                self._eis_done[event.event_number] = event
        elif isinstance(event, BmsStatus):
            self._next_reconcile_s = -1e300  # look again now

    def tick(self) -> None:
        """Take new commands, advance the running one, restore periods, reconcile the BMS."""
        self._intake()
        self._advance()
        self._restore_period()
        self._reconcile()

    def _intake(self) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            cid = str(command.command_id)
            self.counters.received += 1
            if command.battery_id != self.battery_id:
                self.counters.wrong_battery += 1
                log.warning("command %s is for battery %s, dropped", cid, command.battery_id)
                continue
            active = self._active is not None and str(self._active[0].command_id) == cid
            if active or cid in self._queued_ids or self.outbox.command_status(cid) in _FINAL:
                self.counters.duplicates += 1
                continue
            if command.is_expired(self.clock.now()):
                self.counters.expired += 1
                self.outbox.set_command_status(cid, "expired")
                log.info("command %s expired before it could run", cid)
                continue
            self.outbox.set_command_status(cid, "received")
            self._queued_ids.add(cid)
            self._queue.append(command)

    def _advance(self) -> None:
        now = self.clock.monotonic_s()
        while True:
            if self._active is None:
                if not self._queue:
                    return
                command = self._queue.popleft()
                self._queued_ids.discard(str(command.command_id))
                self._active = (command, self._runner(command))
                self._wait = None
                log.info("running command %s (%s)", command.command_id, command.payload.type)
            elif self._wait is not None and not self._wait.ready(now):
                return
            command, runner = self._active
            try:
                self._wait = next(runner)
            except StopIteration as stop:
                self._finish(command, None, stop.value)
            except _Failed as exc:
                self._finish(command, str(exc) or "failed", None)
            except Exception as exc:  # a bug must not stop the runtime: fail the command
                log.exception("command %s crashed", command.command_id)
                self._finish(command, f"internal error: {type(exc).__name__}", None)

    def _finish(self, command: Command, reason: str | None, result: dict[str, Any] | None) -> None:
        self._active, self._wait = None, None
        ack = CommandAck(
            command_id=command.command_id,
            status=CommandStatus.SUCCEEDED if reason is None else CommandStatus.FAILED,
            reason=None if reason is None else reason[:200],
            timestamp=self.clock.now(),
            result=result,
        )
        self.outbox.enqueue(
            AckRecord(seq=DRAFT_SEQ, timestamp=ack.timestamp, ack=ack), priority=True
        )
        self.outbox.set_command_status(str(command.command_id), ack.status.value)
        if reason is None:
            self.counters.succeeded += 1
            log.info("command %s succeeded", command.command_id)
        else:
            self.counters.failed += 1
            log.warning("command %s failed: %s", command.command_id, reason)

    # ---------------------------------------------------------------- runners

    def _runner(self, command: Command) -> _Runner:
        payload = command.payload
        if isinstance(payload, ReportingPeriod):
            return self._reporting_period(command, payload)
        if isinstance(payload, EisCommand):
            return self._eis(command, payload)
        if isinstance(payload, EcmParameters):
            return self._ecm(payload)
        return self._model(payload)

    def _await(self, request: BmsRequest, what: str) -> Generator[_Wait, None, None]:
        yield _Wait(self.clock.monotonic_s() + _BMS_TIMEOUT_S, request=request)
        if not request.done:
            raise _Failed(f"{what}: no answer from the BMS")
        if not request.ok:
            raise _Failed(f"{what}: {request.reason or request.result}")

    def _reporting_period(self, command: Command, p: ReportingPeriod) -> _Runner:
        period_ms = round(p.period_s * 1000)
        yield from self._await(self.link.set_reporting_period(period_ms), "reporting period")
        until_s = None if p.duration_s is None else self.clock.wall_s() + p.duration_s
        if period_ms == self.default_period_ms and until_s is None:
            self.outbox.set_state(OVERRIDE_KEY, None)
        else:
            self.outbox.set_state(
                OVERRIDE_KEY,
                {"period_ms": period_ms, "until_s": until_s, "command_id": str(command.command_id)},
            )
        return {
            "period_s": period_ms / 1000.0,
            "until": None if until_s is None else utc(until_s).isoformat(),
            "default_period_s": self.default_period_ms / 1000.0,
        }

    def _eis(self, command: Command, p: EisCommand) -> _Runner:
        if self.link.pillar != 1:
            raise _Failed("EIS needs a Pillar 1 BMS (serial link); this battery is on CAN")
        outside = [c for c in p.cell_ids if not self.processor.topology.contains(c)]
        if outside:
            raise _Failed(f"cell_id {outside[0]} is outside the battery's topology")
        event_ids: list[str] = []
        total_rows = 0
        lost_rows = 0
        for cell in p.cell_ids:
            number = self.outbox.next_counter("eis_event") & 0xFFFF_FFFF
            request = self.link.start_eis(
                number, cell, p.f_start_hz, p.f_stop_hz, p.points_per_decade, p.amplitude_a
            )
            self._eis_rows[number] = []
            try:
                yield from self._await(request, f"EIS on cell {cell}")
                deadline = self.clock.monotonic_s() + self.eis_timeout_s
                yield _Wait(deadline, condition=self._eis_finished(number))
                rows = self._eis_rows.get(number, [])
                done = self._eis_done.pop(number, None)
            finally:
                self._eis_rows.pop(number, None)
            event_id = f"{command.command_id.hex[:16]}-{cell}"
            status = "incomplete" if done is None else done.status
            stored = self._store_spectrum(event_id, rows, status)
            total_rows += stored
            if done is None:
                raise _Failed(
                    f"EIS on cell {cell} did not finish within {self.eis_timeout_s:.0f} s "
                    f"({stored} rows uplinked)"
                )
            lost_rows += max(0, done.n_rows - len(rows))
            if done.status != "ok":
                raise _Failed(f"EIS on cell {cell} ended {done.status} after {stored} rows")
            event_ids.append(event_id)
        return {"event_ids": event_ids, "rows": total_rows, "lost_rows": lost_rows}

    def _eis_finished(self, number: int) -> Callable[[], bool]:
        return lambda: number in self._eis_done

    def _store_spectrum(self, event_id: str, rows: list[EisRowEvent], status: str) -> int:
        """Validate the rows of one sweep and enqueue them as ``EisRecord``s."""
        measurements: list[EisMeasurement] = []
        seen: set[float] = set()
        for row in sorted(rows, key=lambda r: r.row_index):
            if row.frequency_hz in seen:
                continue
            try:
                measurements.append(
                    EisMeasurement(
                        status=status,
                        event_id=event_id,
                        cell_id=row.cell_id,
                        frequency_hz=row.frequency_hz,
                        amplitude_ohm=row.amplitude_ohm,
                        phase_deg=row.phase_deg,
                        current_offset_a=row.current_offset_a,
                        v_start_v=row.v_start_v,
                        v_end_v=row.v_end_v,
                        temperature_c=row.temperature_c,
                    )
                )
                seen.add(row.frequency_hz)
            except ValidationError:
                self.counters.stray_eis_rows += 1
        for start in range(0, len(measurements), _EIS_ROWS_PER_RECORD):
            chunk = measurements[start : start + _EIS_ROWS_PER_RECORD]
            self.outbox.enqueue(EisRecord(seq=DRAFT_SEQ, timestamp=self.clock.now(), rows=chunk))
        self.counters.eis_rows += len(measurements)
        return len(measurements)

    def _ecm(self, p: EcmParameters) -> _Runner:
        current = self.processor.ecm_version
        if current is not None and p.version < current:
            raise _Failed(f"ECM version {p.version} is older than the applied version {current}")
        forwarded = False
        if self.link.pillar == 1:
            pairs = [(rc.r_ohm, rc.c_f) for rc in p.rc_pairs]
            request = self.link.update_ecm(p.version, p.cell_ids, p.r0_ohm, pairs)
            yield from self._await(request, "ECM update")
            forwarded = True
        try:
            applied = self.processor.apply_ecm(p)
        except TwinValidationError as exc:
            raise _Failed(str(exc)) from None
        self.outbox.set_state(ECM_KEY, p.model_dump(mode="json"))
        return {"forwarded_to_bms": forwarded, **applied}

    def _model(self, p: ModelUpdate) -> _Runner:
        yield from ()
        try:
            result = self.processor.apply_model(p)
        except TwinValidationError as exc:
            raise _Failed(str(exc)) from None
        self.outbox.set_state(ECM_KEY, None)
        return result

    # ---------------------------------------------------------------- desired state

    def _restore_period(self) -> None:
        override = self.outbox.get_state(OVERRIDE_KEY)
        if not isinstance(override, dict):
            return
        until_s = override.get("until_s")
        if until_s is None or self.clock.wall_s() < float(until_s):
            return
        self.outbox.set_state(OVERRIDE_KEY, None)
        self._next_reconcile_s = -1e300
        self.outbox.enqueue(
            EventRecord(
                seq=DRAFT_SEQ,
                timestamp=self.clock.now(),
                event_type=REPORTED_EVENT,
                severity=Severity.INFO,
                message=(
                    f"reporting period back to {self.default_period_ms / 1000:g} s "
                    f"(the override of command {override.get('command_id')} ended)"
                )[:200],
                data={"reporting_period_s": self.default_period_ms / 1000.0},
            ),
            priority=True,
        )
        log.info("reporting period override ended: back to %d ms", self.default_period_ms)

    def _reconcile(self) -> None:
        """Make the BMS's reporting period (and, on Pillar 1, ECM version) the desired ones."""
        now = self.clock.monotonic_s()
        if now < self._next_reconcile_s:
            return
        busy = self._active is not None and isinstance(
            self._active[0].payload, ReportingPeriod | EcmParameters
        )
        if busy:
            return
        if self._reconcile_request is not None and not self._reconcile_request.done:
            return
        self._next_reconcile_s = now + _RECONCILE_EVERY_S
        desired = self.desired_period_ms
        reported = self.link.bms_reporting_period_ms
        connection = self.link.counters.reconnects
        fresh = self.link.connected and connection != self._pushed_on_connection
        if (reported is not None and reported != desired) or (reported is None and fresh):
            # a new connection to a BMS not heard yet: tell it the desired period at once (it
            # may still run an override of a previous edge process)
            self._pushed_on_connection = connection
            log.info("BMS reports every %s ms, desired %d ms: sending it", reported, desired)
            self._reconcile_request = self.link.set_reporting_period(desired)
            self.counters.reconciled += 1
            return
        self._reconcile_ecm()

    def _reconcile_ecm(self) -> None:
        if self.link.pillar != 1:
            return
        stored = self.outbox.get_state(ECM_KEY)
        bms_version = self.link.bms_ecm_parameter_version
        if stored is None or bms_version is None:
            return
        if self._ecm_request is not None and not self._ecm_request.done:
            return
        try:
            ecm = EcmParameters.model_validate(stored)
        except ValidationError:
            return
        if bms_version < ecm.version:
            log.info("BMS has ECM version %d, re-sending version %d", bms_version, ecm.version)
            pairs = [(rc.r_ohm, rc.c_f) for rc in ecm.rc_pairs]
            self._ecm_request = self.link.update_ecm(ecm.version, ecm.cell_ids, ecm.r0_ohm, pairs)
            self.counters.reconciled += 1

    def reported_settings(self) -> dict[str, Any]:
        """What the edge runs with, as the cloud twin's ``reported`` keys."""
        out: dict[str, Any] = {"reporting_period_s": self.desired_period_ms / 1000.0}
        ecm = self.outbox.get_state(ECM_KEY)
        if isinstance(ecm, dict):
            out["ecm_parameters"] = {k: v for k, v in ecm.items() if v is not None}
        return out

    def status(self) -> dict[str, Any]:
        """Counters, queue, running command, desired period."""
        active = None if self._active is None else str(self._active[0].command_id)
        return {
            **self.counters.as_dict(),
            "queued": len(self._queue),
            "running": active,
            "desired_period_ms": self.desired_period_ms,
            "bms_period_ms": self.link.bms_reporting_period_ms,
        }
