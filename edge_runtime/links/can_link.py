"""Pillar 2 link: a BMS on CAN through python-can (any interface), decoded with the project's DBC.

Frames are decoded by ``twin.protocols.can_codec``. The multiplexed cell frames of one reporting
period (``BMS_CellVoltTemp`` + ``BMS_CellState`` for cells ``0..n-1``) are assembled into one
``Sample``; the burst ends when every cell has both frames, when a cell repeats (a new burst
began) or ``sample_timeout_s`` after its last frame (then it is an incomplete sample). The pack
values come from the latest ``BMS_PackStatus`` (every 100 ms); a jump of its ``AliveCounter``
counts lost frames. ``BMS_Info`` and changes of the fault bits give ``BmsStatus`` events.

Commands (``EDGE_*`` frames) carry a ``CommandSequence`` the BMS echoes in ``BMS_CommandAck``;
an unacknowledged frame is repeated byte for byte (the BMS acts once) ``command_retries`` times,
``command_timeout_s`` apart. The sequence starts at a random value, so a restarted edge's first
frame is not taken for a repeat of the previous process's (same bytes, same sequence). The DBC
has no EIS or ECM message: those requests are unsupported.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import can
import numpy as np

from edge_runtime.clock import SYSTEM_CLOCK, Clock
from edge_runtime.config import CanLinkSettings
from edge_runtime.links import (
    BmsLink,
    BmsRequest,
    BmsStatus,
    LinkEvent,
    Sample,
    nan_array,
    random_sequence_start,
)
from twin.errors import CanCodecError
from twin.protocols.can_codec import (
    BALANCING_MODES,
    RESET_KINDS,
    B2lMessage,
    BalancingRequest,
    BmsInfo,
    CanFrame,
    CellState,
    CellVoltTemp,
    CommandAck,
    PackStatus,
    Reset,
    SetReportingPeriod,
    decode,
    encode,
)

__all__ = ["CanLink"]

log = logging.getLogger("edge_runtime.links.can")

_MAX_FRAMES_PER_POLL = 10_000
_REBOOT_SILENCE_S = 0.5
"""A PackStatus gap this long ending with AliveCounter 0 is read as a BMS restart."""


@dataclass
class _Pending:
    request: BmsRequest
    frame: CanFrame
    deadline_s: float
    attempts: int


class CanLink(BmsLink):
    """A Pillar 2 BMS on a python-can bus (see the module docstring)."""

    pillar = 2
    kind = "can"

    def __init__(
        self,
        bus: can.BusABC | None,
        *,
        cell_count: int,
        clock: Clock = SYSTEM_CLOCK,
        command_timeout_s: float = 0.25,
        command_retries: int = 3,
        sample_timeout_s: float = 0.5,
        bus_factory: Any = None,
        reconnect_s: float = 2.0,
        initial_sequence: int | None = None,
    ) -> None:
        super().__init__(
            cell_count=cell_count,
            clock=clock,
            command_timeout_s=command_timeout_s,
            command_retries=command_retries,
            sample_timeout_s=sample_timeout_s,
            reconnect_s=reconnect_s,
        )
        self._bus = bus
        self._owns_bus = bus is None
        self._bus_factory = bus_factory
        self._sequence = (
            initial_sequence if initial_sequence is not None else random_sequence_start(256)
        )
        self._pending: dict[tuple[int, int], _Pending] = {}
        # burst assembly
        self._vt: dict[int, CellVoltTemp] = {}
        self._st: dict[int, CellState] = {}
        self._burst_last_s = -math.inf
        # pack and BMS state
        self._pack: PackStatus | None = None
        self._pack_seen_s = -math.inf
        self._alive: int | None = None
        self._info: BmsInfo | None = None
        self._faults: frozenset[str] = frozenset()
        self._rebooted = False
        self._warned_cell_count = False

    @classmethod
    def from_settings(
        cls, settings: CanLinkSettings, *, cell_count: int, clock: Clock = SYSTEM_CLOCK
    ) -> CanLink:
        """A link that opens (and re-opens after errors) the bus the settings name."""

        def factory() -> can.BusABC:
            kwargs: dict[str, Any] = dict(settings.options)
            if settings.bitrate is not None:
                kwargs["bitrate"] = settings.bitrate
            return can.Bus(interface=settings.interface, channel=settings.channel, **kwargs)

        return cls(
            None,
            cell_count=cell_count,
            clock=clock,
            command_timeout_s=settings.command_timeout_s,
            command_retries=settings.command_retries,
            sample_timeout_s=settings.sample_timeout_s,
            bus_factory=factory,
        )

    # ---------------------------------------------------------------- bus

    @property
    def connected(self) -> bool:
        """The bus is open."""
        return self._bus is not None and not self._closed

    def _ensure_bus(self) -> can.BusABC | None:
        if self._bus is not None or self._bus_factory is None:
            return self._bus
        if not self._open_due():
            return None
        try:
            self._bus = self._bus_factory()
        except (can.CanError, OSError, ValueError, ImportError) as exc:
            self._open_failed("cannot open the CAN bus", exc)
            return None
        self.counters.reconnects += 1
        log.info("CAN bus open: %s", self._bus.channel_info)
        return self._bus

    def _drop_bus(self, exc: Exception) -> None:
        self.counters.io_errors += 1
        log.warning("CAN bus error: %s", exc)
        if self._owns_bus and self._bus is not None:
            self._bus.shutdown()
            self._bus = None
            self._next_open_s = self.clock.monotonic_s() + self.reconnect_s

    # ---------------------------------------------------------------- receive

    def _receive(self, timeout_s: float) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        bus = self._ensure_bus()
        if bus is None:
            if timeout_s > 0.0:
                time.sleep(min(timeout_s, 0.1))
            return events
        try:
            msg = bus.recv(timeout=timeout_s)
            count = 0
            while msg is not None and count < _MAX_FRAMES_PER_POLL:
                self._on_message(msg, events)
                count += 1
                msg = bus.recv(timeout=0.0)
            if msg is not None:
                self._on_message(msg, events)
        except (can.CanError, OSError) as exc:
            self._drop_bus(exc)
        return events

    def _on_message(self, msg: can.Message, events: list[LinkEvent]) -> None:
        self.counters.bytes_read += len(msg.data)
        if msg.is_error_frame or msg.is_remote_frame:
            self.counters.ignored_frames += 1
            return
        try:
            message = decode(
                CanFrame(msg.arbitration_id, bytes(msg.data), is_extended_id=msg.is_extended_id)
            )
        except CanCodecError as exc:
            self.note_bad(f"0x{msg.arbitration_id:03X} {bytes(msg.data).hex()}: {exc}")
            return
        self.counters.frames += 1
        self.counters.last_frame_time_s = self.clock.wall_s()
        self._dispatch(message, events)

    def _dispatch(self, message: B2lMessage, events: list[LinkEvent]) -> None:
        if isinstance(message, CellVoltTemp):
            self._on_cell(message.cell_index, events, voltage=message)
        elif isinstance(message, CellState):
            self._on_cell(message.cell_index, events, state=message)
        elif isinstance(message, PackStatus):
            self._on_pack(message, events)
        elif isinstance(message, BmsInfo):
            self._on_info(message, events)
        elif isinstance(message, CommandAck):
            self._on_ack(message)
        else:  # EDGE_ frames: our own kind, from another node
            self.counters.ignored_frames += 1

    def _on_cell(
        self,
        index: int,
        events: list[LinkEvent],
        *,
        voltage: CellVoltTemp | None = None,
        state: CellState | None = None,
    ) -> None:
        if index >= self.cell_count:
            self.counters.ignored_frames += 1
            return
        store: dict[int, Any] = self._vt if voltage is not None else self._st
        if index in store:  # this cell again: a new burst began
            self._flush(events)
        if voltage is not None:
            self._vt[index] = voltage
        elif state is not None:
            self._st[index] = state
        self._burst_last_s = self.clock.monotonic_s()
        if len(self._vt) == self.cell_count and len(self._st) == self.cell_count:
            self._flush(events)

    def _on_pack(self, message: PackStatus, events: list[LinkEvent]) -> None:
        now = self.clock.monotonic_s()
        if self._alive is not None:
            expected = (self._alive + 1) % 16
            gap = (message.alive_counter - expected) % 16
            silent = now - self._pack_seen_s >= _REBOOT_SILENCE_S
            if silent and message.alive_counter == 0:
                self._note_reboot()
            elif gap:
                self.counters.lost_frames += gap
        self._alive = message.alive_counter
        self._pack = message
        self._pack_seen_s = now
        if message.faults != self._faults:
            self._faults = message.faults
            self._emit_status(events)

    def _note_reboot(self) -> None:
        self.counters.bms_reboots += 1
        self._rebooted = True
        log.warning("the Pillar 2 BMS restarted (PackStatus silent, then AliveCounter 0)")

    def _on_info(self, message: BmsInfo, events: list[LinkEvent]) -> None:
        if message.cell_count != self.cell_count and not self._warned_cell_count:
            self._warned_cell_count = True
            log.warning(
                "the BMS reports %d cells, the configured topology has %d",
                message.cell_count,
                self.cell_count,
            )
        previous, self._info = self._info, message
        self.bms_reporting_period_ms = message.reporting_period_ms
        if previous != message or self._rebooted:
            self._emit_status(events)

    def _emit_status(self, events: list[LinkEvent]) -> None:
        info = self._info
        events.append(
            BmsStatus(
                time_s=self.clock.wall_s(),
                reporting_period_ms=info.reporting_period_ms if info else 0,
                cell_count=info.cell_count if info else self.cell_count,
                firmware_version=info.firmware_version if info else (0, 0, 0),
                faults=self._faults,
                rebooted=self._rebooted,
            )
        )
        self._rebooted = False

    def _flush(self, events: list[LinkEvent]) -> None:
        """Turn the cells gathered so far into a ``Sample``."""
        if not self._vt and not self._st:
            return
        ids = sorted(set(self._vt) | set(self._st))
        n = len(ids)
        voltage, temperature = nan_array(n), nan_array(n)
        soc, soh, sos, cycles = nan_array(n), nan_array(n), nan_array(n), nan_array(n)
        for k, cell in enumerate(ids):
            vt = self._vt.get(cell)
            if vt is not None:
                voltage[k], temperature[k] = vt.voltage_v, vt.temperature_c
            st = self._st.get(cell)
            if st is not None:
                soc[k], soh[k], sos[k], cycles[k] = st.soc, st.soh, st.sos, st.equivalent_cycles
        pack = self._pack
        complete = len(self._vt) == len(self._st) == self.cell_count
        pack_current = pack.current_a if pack is not None else math.nan
        events.append(
            Sample(
                pillar=2,
                time_s=self.clock.wall_s(),
                cell_ids=np.asarray(ids, dtype=np.int64),
                voltage_v=voltage,
                temperature_c=temperature,
                current_a=np.full(n, pack_current),
                soc=soc,
                sos=sos,
                soh=soh,
                equivalent_cycles=cycles,
                sot=nan_array(n),
                phase=nan_array(n),
                pack_voltage_v=pack.voltage_v if pack is not None else None,
                pack_current_a=pack.current_a if pack is not None else None,
                bms_state=pack.bms_state if pack is not None else None,
                faults=pack.faults if pack is not None else frozenset(),
                complete=complete,
            )
        )
        self.counters.samples += 1
        if not complete:
            self.counters.incomplete_samples += 1
        self._vt, self._st = {}, {}

    # ---------------------------------------------------------------- service

    def _service(self, events: list[LinkEvent]) -> None:
        now = self.clock.monotonic_s()
        if (self._vt or self._st) and now - self._burst_last_s > self.sample_timeout_s:
            self._flush(events)
        for key, pending in list(self._pending.items()):
            if now < pending.deadline_s:
                continue
            if pending.attempts > self.command_retries:
                del self._pending[key]
                self._fail(pending.request, "no_ack", "the BMS did not acknowledge the command")
                continue
            if self._transmit(pending.frame):
                self.counters.retransmissions += 1
            pending.attempts += 1
            pending.deadline_s = now + self.command_timeout_s

    # ---------------------------------------------------------------- commands

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) % 256
        return self._sequence

    def _transmit(self, frame: CanFrame) -> bool:
        bus = self._ensure_bus()
        if bus is None:
            return False
        msg = can.Message(
            arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=False
        )
        try:
            bus.send(msg, timeout=0.1)
        except (can.CanError, OSError) as exc:
            self._drop_bus(exc)
            return False
        return True

    def _send(self, request: BmsRequest, messages: Sequence[B2lMessage]) -> BmsRequest:
        """Send command frames; the request is done when all are acked (or one fails)."""
        try:
            frames = [encode(m) for m in messages]
        except CanCodecError as exc:
            request.resolve("invalid", str(exc))
            return request
        request.data["remaining"] = len(frames)
        now = self.clock.monotonic_s()
        for message, frame in zip(messages, frames, strict=True):
            sequence = frame.data[7]
            self._pending[(frame.arbitration_id, sequence)] = _Pending(
                request, frame, now + self.command_timeout_s, 1
            )
            self._transmit(frame)
            self.counters.commands_sent += 1
            log.info("sent %s", type(message).__name__, extra={"sequence": sequence})
        return request

    def _on_ack(self, ack: CommandAck) -> None:
        pending = self._pending.pop((ack.command_id, ack.sequence), None)
        if pending is None:
            self.counters.ignored_frames += 1  # a late or duplicate ack
            return
        request = pending.request
        if ack.result != "ok":
            self._fail(request, ack.result, f"the BMS answered {ack.result}")
            return
        request.data["remaining"] -= 1
        if request.data["remaining"] <= 0 and not request.done:
            request.resolve("ok")
            self.counters.commands_ok += 1

    def _fail(self, request: BmsRequest, result: str, reason: str) -> None:
        if request.done:
            return
        for key, pending in list(self._pending.items()):
            if pending.request is request:
                del self._pending[key]
        request.resolve(result, reason)
        self.counters.commands_failed += 1
        log.warning("BMS command failed: %s: %s", request.description, reason)

    def set_reporting_period(self, period_ms: int) -> BmsRequest:
        """``EDGE_SetReportingPeriod`` (100..60000 ms)."""
        request = BmsRequest(f"set reporting period {period_ms} ms")
        if not 100 <= period_ms <= 60_000:
            request.resolve("invalid", "a Pillar 2 BMS reports every 100..60000 ms")
            return request
        return self._send(request, [SetReportingPeriod(period_ms, self._next_sequence())])

    def request_balancing(self, mode: str, cells: Sequence[int] = ()) -> BmsRequest:
        """``EDGE_BalancingRequest``: off, auto, or manual bleeding exactly ``cells``."""
        request = BmsRequest(f"balancing {mode}")
        if mode not in BALANCING_MODES:
            request.resolve("invalid", f"mode must be one of {BALANCING_MODES}")
            return request
        if mode == "manual":
            try:
                groups = BalancingRequest.for_cells(cells, self.cell_count)
            except CanCodecError as exc:
                request.resolve("invalid", str(exc))
                return request
            frames = [
                BalancingRequest("manual", g.cell_group, g.cell_mask, self._next_sequence())
                for g in groups
            ]
            return self._send(request, frames)
        sequence = self._next_sequence()
        return self._send(request, [BalancingRequest(mode, sequence=sequence)])

    def reset(self, kind: str) -> BmsRequest:
        """``EDGE_Reset``: ``soft`` (reboot) or ``clear_faults``."""
        request = BmsRequest(f"reset {kind}")
        if kind not in RESET_KINDS:
            request.resolve("invalid", f"kind must be one of {RESET_KINDS}")
            return request
        return self._send(request, [Reset(kind, self._next_sequence())])

    # ---------------------------------------------------------------- life cycle

    def close(self) -> None:
        """Shut the bus down if this link opened it."""
        if self._closed:
            return
        super().close()
        for pending in self._pending.values():
            pending.request.resolve("no_ack", "the link was closed")
        self._pending.clear()
        if self._owns_bus and self._bus is not None:
            self._bus.shutdown()
        self._bus = None
