"""Pillar 1 link: a BMS on a UART through pyserial (any URL), with the serial frame codec.

The port is opened with ``serial.serial_for_url`` (``/dev/ttyUSB0``, a pty path,
``socket://host:port``, ``loop://``) and read without blocking; a port that fails or closes is
re-opened every ``reconnect_s``. Bytes go through the codec's streaming ``FrameDecoder``, which
resynchronises at the next 0x00 after garbage (each bad run is counted, never raised).

* ``CELL_MEASUREMENTS`` frames sharing one ``uptime_ms`` are assembled into one ``Sample``
  (complete when every cell came; else flushed by the next sample or ``sample_timeout_s``).
* ``STATUS`` gives ``BmsStatus`` events (on change, on the first one, after a reboot: the
  ``uptime_ms`` went backwards or the sequence restarted at 0).
* ``EIS_ROW`` / ``EIS_DONE`` give ``EisRowEvent`` / ``EisDoneEvent``; every copy of
  ``EIS_DONE`` is acknowledged, a repeat is reported once.
* Commands (``SET_REPORTING_PERIOD``, ``EIS_START``, ``ECM_UPDATE``) are stop-and-wait as in the
  protocol (section 7): one unacknowledged frame at a time, repeated byte for byte every
  ``command_timeout_s`` up to ``command_retries`` times; the others wait in a queue.
* Gaps in the BMS's ``seq`` count lost frames.
* The edge's own ``seq`` starts at a random value (``initial_seq`` in tests): the BMS remembers
  the ``(seq, type)`` of the last command it ran and answers a repeat without running it, so a
  restarted edge starting at 0 would have its first command taken for a retransmission of the
  previous process's first command.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import serial

from edge_runtime.clock import SYSTEM_CLOCK, Clock
from edge_runtime.config import SerialLinkSettings
from edge_runtime.links import (
    BmsLink,
    BmsRequest,
    BmsStatus,
    EisDoneEvent,
    EisRowEvent,
    LinkEvent,
    Sample,
    nan_array,
    random_sequence_start,
)
from twin.errors import SerialCodecError
from twin.protocols.serial_codec import (
    ALL_CELLS,
    MAX_RC_PAIRS,
    MAX_SEQ,
    Ack,
    AckReason,
    AckResult,
    CellMeasurements,
    CellRecord,
    EcmUpdate,
    EisDone,
    EisRow,
    EisStart,
    EisStatus,
    FaultFlags,
    Frame,
    FrameDecoder,
    Message,
    MsgType,
    RcPair,
    SetReportingPeriod,
    Status,
    encode_frame,
)

__all__ = ["SerialLink", "fault_names"]

log = logging.getLogger("edge_runtime.links.serial")

_READ_CHUNK = 4096
_MAX_READ_PER_POLL = 1 << 20
_UPTIME_WRAP_MARGIN_MS = 600_000


_KNOWN_FAULT_BITS = sum(int(f) for f in FaultFlags)


def fault_names(flags: int) -> frozenset[str]:
    """Lower-case names of the ``FaultFlags`` bits set in ``flags`` (unknown bits: ``bit_N``)."""
    names = {str(f.name).lower() for f in FaultFlags if flags & f}
    unknown = flags & ~_KNOWN_FAULT_BITS
    if unknown:
        names |= {f"bit_{b}" for b in range(32) if unknown & (1 << b)}
    return frozenset(names)


@dataclass
class _Outgoing:
    request: BmsRequest
    message: Message
    seq: int = -1
    frame: bytes = b""
    deadline_s: float = 0.0
    attempts: int = 0


class SerialLink(BmsLink):
    """A Pillar 1 BMS on a pyserial port (see the module docstring)."""

    pillar = 1
    kind = "serial"

    def __init__(
        self,
        url: str,
        *,
        cell_count: int,
        clock: Clock = SYSTEM_CLOCK,
        baudrate: int = 115_200,
        command_timeout_s: float = 0.25,
        command_retries: int = 3,
        sample_timeout_s: float = 0.5,
        reconnect_s: float = 2.0,
        initial_seq: int | None = None,
    ) -> None:
        super().__init__(
            cell_count=cell_count,
            clock=clock,
            command_timeout_s=command_timeout_s,
            command_retries=command_retries,
            sample_timeout_s=sample_timeout_s,
            reconnect_s=reconnect_s,
        )
        self.url = url
        self.baudrate = baudrate
        self._port: serial.SerialBase | None = None
        self._decoder = FrameDecoder()
        self._seq = initial_seq if initial_seq is not None else random_sequence_start(MAX_SEQ + 1)
        self._queue: deque[_Outgoing] = deque()
        self._inflight: _Outgoing | None = None
        # BMS side
        self._peer_seq: int | None = None
        self._uptime_ms: int | None = None
        self._status: Status | None = None
        self._faults: frozenset[str] = frozenset()
        self._eis_done_seen: tuple[int, int] | None = None
        # sample assembly
        self._cells: dict[int, CellRecord] = {}
        self._sample_uptime: int | None = None
        self._sample_last_s = -math.inf

    @classmethod
    def from_settings(
        cls, settings: SerialLinkSettings, *, cell_count: int, clock: Clock = SYSTEM_CLOCK
    ) -> SerialLink:
        """The link the settings describe (the port opens on the first poll)."""
        return cls(
            settings.url,
            cell_count=cell_count,
            clock=clock,
            baudrate=settings.baudrate,
            command_timeout_s=settings.command_timeout_s,
            command_retries=settings.command_retries,
            sample_timeout_s=settings.sample_timeout_s,
            reconnect_s=settings.reconnect_s,
        )

    # ---------------------------------------------------------------- port

    @property
    def connected(self) -> bool:
        """The port is open."""
        return self._port is not None

    @property
    def port(self) -> serial.SerialBase | None:
        """The open port (None until the first poll opens it); ``loop://`` tests write to it."""
        return self._port

    def _ensure_port(self) -> serial.SerialBase | None:
        if self._port is not None or self._closed:
            return self._port
        if not self._open_due():
            return None
        try:
            self._port = serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=0, write_timeout=1.0
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._open_failed(f"cannot open {self.url}", exc)
            return None
        self.counters.reconnects += 1
        self._decoder = FrameDecoder()
        log.info("serial port open: %s", self.url)
        return self._port

    def _drop_port(self, exc: Exception) -> None:
        self.counters.io_errors += 1
        log.warning("serial port %s failed: %s", self.url, exc)
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
        self._port = None
        self._next_open_s = self.clock.monotonic_s() + self.reconnect_s

    def _wait_readable(self, port: serial.SerialBase, timeout_s: float) -> None:
        try:
            select.select([port], [], [], timeout_s)
        except (TypeError, ValueError, OSError, AttributeError):  # no fileno (loop://)
            time.sleep(min(timeout_s, 0.01))

    # ---------------------------------------------------------------- receive

    def _receive(self, timeout_s: float) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        port = self._ensure_port()
        if port is None:
            if timeout_s > 0.0:
                time.sleep(min(timeout_s, 0.1))
            return events
        deadline = time.monotonic() + timeout_s
        total = 0
        try:
            while total < _MAX_READ_PER_POLL:
                data = port.read(_READ_CHUNK)
                if data:
                    total += len(data)
                    self._feed(bytes(data), events)
                    continue
                left = deadline - time.monotonic()
                if total or left <= 0.0:
                    break
                self._wait_readable(port, left)
                if time.monotonic() >= deadline:
                    data = port.read(_READ_CHUNK)
                    if data:
                        total += len(data)
                        self._feed(bytes(data), events)
                    break
        except (serial.SerialException, OSError) as exc:
            self._drop_port(exc)
        return events

    def _feed(self, data: bytes, events: list[LinkEvent]) -> None:
        self.counters.bytes_read += len(data)
        for item in self._decoder.feed(data):
            if isinstance(item, SerialCodecError):
                self.note_bad(str(item))
                continue
            self.counters.frames += 1
            self.counters.last_frame_time_s = self.clock.wall_s()
            self._dispatch(item, events)

    def _dispatch(self, frame: Frame, events: list[LinkEvent]) -> None:
        message = frame.message
        if isinstance(message, EisStart | EcmUpdate | SetReportingPeriod):
            self.counters.ignored_frames += 1  # edge -> BMS types: our own echo (loop://)
            return
        if isinstance(message, Ack):
            self._on_ack(message)
            return
        if isinstance(message, Status):
            self._on_status(frame, message, events)
            return
        self._track_seq(frame.seq)
        if isinstance(message, CellMeasurements):
            self._on_cells(message, events)
        elif isinstance(message, EisRow):
            self._on_eis_row(message, events)
        elif isinstance(message, EisDone):
            self._on_eis_done(frame, message, events)

    def _track_seq(self, seq: int, *, restart: bool = False) -> None:
        last = self._peer_seq
        self._peer_seq = seq
        if last is None or restart or seq == last:
            return
        gap = (seq - last - 1) % (MAX_SEQ + 1)
        if 0 < gap < (MAX_SEQ + 1) // 2:
            self.counters.lost_frames += gap

    def _on_status(self, frame: Frame, status: Status, events: list[LinkEvent]) -> None:
        previous_uptime = self._uptime_ms
        went_back = previous_uptime is not None and status.uptime_ms < previous_uptime
        wrapped = (
            went_back
            and previous_uptime is not None
            and (previous_uptime > 0xFFFF_FFFF - _UPTIME_WRAP_MARGIN_MS)
        )
        rebooted = went_back and not wrapped
        self._track_seq(frame.seq, restart=rebooted)
        self._uptime_ms = status.uptime_ms
        if rebooted:
            self.counters.bms_reboots += 1
            log.warning("the Pillar 1 BMS restarted (uptime went back)")
            self._cells.clear()
            self._sample_uptime = None
        previous, self._status = self._status, status
        self.bms_reporting_period_ms = status.reporting_period_ms
        self.bms_ecm_parameter_version = status.ecm_parameter_version
        if status.n_cells != self.cell_count and previous is None:
            log.warning(
                "the BMS reports %d cells, the configured topology has %d",
                status.n_cells,
                self.cell_count,
            )
        self._faults = fault_names(status.fault_flags)
        if previous is None or rebooted or _key(previous) != _key(status):
            events.append(
                BmsStatus(
                    time_s=self.clock.wall_s(),
                    reporting_period_ms=status.reporting_period_ms,
                    cell_count=status.n_cells,
                    firmware_version=(
                        status.firmware_major,
                        status.firmware_minor,
                        status.firmware_patch,
                    ),
                    faults=self._faults,
                    ecm_parameter_version=status.ecm_parameter_version,
                    rebooted=rebooted,
                )
            )

    def _on_cells(self, message: CellMeasurements, events: list[LinkEvent]) -> None:
        if self._sample_uptime is not None and message.uptime_ms != self._sample_uptime:
            self._flush(events)
        self._sample_uptime = message.uptime_ms
        for cell in message.cells:
            if cell.cell_id >= self.cell_count:
                self.counters.ignored_frames += 1
                continue
            self._cells[cell.cell_id] = cell
        self._sample_last_s = self.clock.monotonic_s()
        if len(self._cells) >= self.cell_count:
            self._flush(events)

    def _flush(self, events: list[LinkEvent]) -> None:
        cells = [self._cells[k] for k in sorted(self._cells)]
        self._cells = {}
        self._sample_uptime = None
        if not cells:
            return
        n = len(cells)

        def column(name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
            return np.array([getattr(c, name) for c in cells], dtype=np.float64)

        voltage = column("voltage_v")
        current = column("current_a")
        complete = n == self.cell_count
        events.append(
            Sample(
                pillar=1,
                time_s=self.clock.wall_s(),
                cell_ids=np.array([c.cell_id for c in cells], dtype=np.int64),
                voltage_v=voltage,
                temperature_c=column("temperature_c"),
                current_a=current,
                soc=column("soc"),
                sos=column("sos"),
                soh=nan_array(n),
                equivalent_cycles=nan_array(n),
                sot=column("sot"),
                phase=column("phase"),
                pack_voltage_v=float(voltage.sum()) if complete else None,
                pack_current_a=float(np.median(current)),
                faults=self._faults,
                complete=complete,
            )
        )
        self.counters.samples += 1
        if not complete:
            self.counters.incomplete_samples += 1

    def _on_eis_row(self, row: EisRow, events: list[LinkEvent]) -> None:
        events.append(
            EisRowEvent(
                time_s=self.clock.wall_s(),
                event_number=row.event_number,
                row_index=row.row_index,
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

    def _on_eis_done(self, frame: Frame, done: EisDone, events: list[LinkEvent]) -> None:
        self._write(encode_frame(Ack(frame.seq, MsgType.EIS_DONE, AckResult.OK), self._take_seq()))
        key = (frame.seq, done.event_number)
        if key == self._eis_done_seen:
            return  # a retransmission: acked again, reported once
        self._eis_done_seen = key
        status = {EisStatus.OK: "ok", EisStatus.ABORTED: "aborted"}.get(done.status, "error")
        events.append(EisDoneEvent(self.clock.wall_s(), done.event_number, status, done.n_rows))

    # ---------------------------------------------------------------- service

    def _service(self, events: list[LinkEvent]) -> None:
        now = self.clock.monotonic_s()
        if self._cells and now - self._sample_last_s > self.sample_timeout_s:
            self._flush(events)
        out = self._inflight
        if out is not None and now >= out.deadline_s:
            if out.attempts > self.command_retries:
                self._inflight = None
                self._fail(out.request, "no_ack", "the BMS did not acknowledge the command")
            else:
                if self._write(out.frame):
                    self.counters.retransmissions += 1
                out.attempts += 1
                out.deadline_s = now + self.command_timeout_s
        if self._inflight is None:
            self._start_next()

    def _start_next(self) -> None:
        while self._queue and self._inflight is None:
            out = self._queue.popleft()
            if out.request.done:  # failed meanwhile
                continue
            out.seq = self._take_seq()
            try:
                out.frame = encode_frame(out.message, out.seq)
            except SerialCodecError as exc:
                self._fail(out.request, "invalid", str(exc))
                continue
            out.deadline_s = self.clock.monotonic_s() + self.command_timeout_s
            out.attempts = 1
            self._inflight = out
            self._write(out.frame)
            self.counters.commands_sent += 1
            log.info("sent %s", type(out.message).__name__, extra={"seq": out.seq})

    def _take_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & MAX_SEQ
        return seq

    def _write(self, data: bytes) -> bool:
        port = self._ensure_port()
        if port is None:
            return False
        try:
            port.write(data)
            port.flush()
        except (serial.SerialException, OSError) as exc:
            self._drop_port(exc)
            return False
        return True

    def _on_ack(self, ack: Ack) -> None:
        out = self._inflight
        if out is None or (ack.acked_seq, ack.acked_msg_type) != (out.seq, out.message.MSG_TYPE):
            self.counters.ignored_frames += 1  # late, duplicate or not ours
            return
        self._inflight = None
        request = out.request
        if ack.result is not AckResult.OK:
            try:
                reason = AckReason(ack.reason_code).name.lower()
            except ValueError:
                reason = f"reason code {ack.reason_code}"
            self._fail(
                request, ack.result.name.lower(), f"the BMS answered {ack.result.name}: {reason}"
            )
        else:
            request.data["remaining"] = request.data.get("remaining", 1) - 1
            if request.data["remaining"] <= 0 and not request.done:
                request.resolve("ok")
                self.counters.commands_ok += 1
        self._start_next()

    def _fail(self, request: BmsRequest, result: str, reason: str) -> None:
        if request.done:
            return
        request.resolve(result, reason)
        self.counters.commands_failed += 1
        log.warning("BMS command failed: %s: %s", request.description, reason)

    def _submit(self, request: BmsRequest, messages: Sequence[Message]) -> BmsRequest:
        request.data["remaining"] = len(messages)
        for message in messages:
            self._queue.append(_Outgoing(request, message))
        if self._inflight is None:
            self._start_next()
        return request

    # ---------------------------------------------------------------- commands

    def set_reporting_period(self, period_ms: int) -> BmsRequest:
        """``SET_REPORTING_PERIOD``."""
        request = BmsRequest(f"set reporting period {period_ms} ms")
        if not 1 <= period_ms <= 0xFFFF_FFFF:
            request.resolve("invalid", "period_ms must fit a u32 and be positive")
            return request
        return self._submit(request, [SetReportingPeriod(period_ms)])

    def start_eis(
        self,
        event_number: int,
        cell_id: int,
        f_start_hz: float,
        f_stop_hz: float,
        points_per_decade: int,
        amplitude_a: float,
    ) -> BmsRequest:
        """``EIS_START`` on one cell."""
        request = BmsRequest(f"EIS event {event_number} on cell {cell_id}")
        message = EisStart(
            event_number & 0xFFFF_FFFF,
            cell_id,
            f_start_hz,
            f_stop_hz,
            points_per_decade,
            amplitude_a,
        )
        return self._submit(request, [message])

    def update_ecm(
        self,
        parameter_version: int,
        cell_ids: Sequence[int] | None,
        r0_ohm: float,
        rc_pairs: Sequence[tuple[float, float]],
    ) -> BmsRequest:
        """``ECM_UPDATE``: one frame for every cell (None) or one per listed cell."""
        request = BmsRequest(f"ECM parameters version {parameter_version}")
        if not 1 <= len(rc_pairs) <= MAX_RC_PAIRS:
            request.resolve("invalid", f"1..{MAX_RC_PAIRS} RC pairs are allowed on the wire")
            return request
        pairs = tuple(RcPair(r, c) for r, c in rc_pairs)
        cells = [ALL_CELLS] if cell_ids is None else list(cell_ids)
        messages = [EcmUpdate(parameter_version, cell, r0_ohm, pairs) for cell in cells]
        return self._submit(request, messages)

    # ---------------------------------------------------------------- life cycle

    def close(self) -> None:
        """Close the port (idempotent)."""
        if self._closed:
            return
        super().close()
        if self._inflight is not None:
            self._inflight.request.resolve("no_ack", "the link was closed")
        for out in self._queue:
            out.request.resolve("no_ack", "the link was closed")
        self._queue.clear()
        self._inflight = None
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None


def _key(status: Status) -> tuple[int, int, int, int]:
    return (
        status.reporting_period_ms,
        status.fault_flags,
        status.ecm_parameter_version,
        status.n_cells,
    )
