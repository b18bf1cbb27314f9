"""Pillar 2 BMS simulator: a ``BmsEmulator`` speaking the project's DBC on any python-can bus.

``CanBmsLink`` is the CAN side of one emulated BMS, as SimPy processes:

* ``BMS_PackStatus`` every 100 ms, ``AliveCounter`` +1 mod 16 per cycle (a lost or suppressed
  frame still consumes its count, so the receiver sees the jump), restarting at 0 after a boot;
* ``BMS_CellVoltTemp`` and ``BMS_CellState`` for every cell once per reporting period (a burst),
  after init;
* ``BMS_Info`` every 1 s and right after a change (boot, reporting period, balancing);
* commands: the bus is polled without blocking (``bus.recv(timeout=0)``) every
  ``command_poll_s``; each ``EDGE_`` frame is decoded with ``twin.protocols.can_codec``, obeyed
  and answered with one ``BMS_CommandAck`` (ok, rejected, invalid, busy, unsupported) echoing its
  ``CommandSequence`` (byte 7). A repeat of the last frame of a command id (same bytes: a retry)
  is acknowledged again without acting twice. Frames of other ids are ignored; frames received
  while the BMS is off or off the bus are lost, as on real hardware.

Link faults (scheduled in the BMS's ``Fault`` list):

* ``frame_loss``: each outgoing frame is dropped with probability ``magnitude``.
* ``frame_corruption``: each outgoing frame is garbled with probability ``magnitude``: cut to a
  random length of 0..7 bytes with random bits flipped. On a real bus noise is caught by the
  CAN CRC and the frame is retransmitted, so this models a faulty transceiver, controller or
  firmware that puts a well-formed but wrong frame on the bus. Every such frame has a DLC the DBC
  never uses, so ``can_codec.decode`` rejects it with ``CanCodecError``.
* ``bus_off``: the controller leaves the bus for ``duration_s`` plus ``bus_off_recovery_s``:
  nothing is sent or received; then traffic resumes and the BMS shows FaultCommunication for
  ``BmsConfig.link_error_hold_s``.

``CanBmsSimulator`` is a whole simulated pack (``simulators.pack``: clock, plant and load, BMS,
ground truth as JSON lines) with this link and an optional CAN log (``can.Logger``: .asc, .blf,
... by extension) that receives every frame put on the bus and every command received. Frame
timestamps are ``timestamp_origin_s + env.now`` (a virtual bus keeps them with
``preserve_timestamps=True``); ground-truth lines carry the same clock.

Several packs, one bus each (or one shared bus for one pack only: the ids are fixed)::

    env = make_environment(None)
    model = PackModel.build(load_builtin("nmc_lgm50"), n_packs=2, cells_in_series=16)
    plant = PackPlant(model, soc=0.5)
    PlantDriver(env, plant, current_a=lambda t: [-5.0, 2.0])
    for k, bus in enumerate(buses):
        CanBmsLink(env, bus, BmsEmulator(env, plant, pack_index=k, seed=k))
    env.run(until=60.0)
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import can
import numpy as np
import simpy
from pydantic import Field

from simulators.bms import BmsEmulator, Fault, FaultKind
from simulators.pack import PackOptions, PackSimulator
from twin.base import B2LModel, PositiveFloat
from twin.errors import CanCodecError
from twin.protocols.can_codec import (
    B2lMessage,
    BalancingRequest,
    BmsInfo,
    CanFrame,
    CellState,
    CellVoltTemp,
    CommandAck,
    ContactorRequest,
    PackStatus,
    Reset,
    SetReportingPeriod,
    decode,
    encode,
)

__all__ = ["COMMAND_IDS", "CanBmsLink", "CanBmsSimulator", "CanLinkConfig", "LinkStats"]

COMMAND_IDS: frozenset[int] = frozenset(
    cls.FRAME_ID for cls in (SetReportingPeriod, BalancingRequest, ContactorRequest, Reset)
)
_EPS_S = 1e-9
_FRAME_LENGTH = 8


class CanLinkConfig(B2LModel):
    """Timing of the Pillar 2 link (periods fixed by the DBC; the reporting period is the BMS's)."""

    status_period_s: PositiveFloat = 0.1
    info_period_s: PositiveFloat = 1.0
    command_poll_s: PositiveFloat = 0.01
    """How often the firmware looks at its receive mailbox (acks come within this)."""
    bus_off_recovery_s: float = Field(default=0.2, ge=0.0)
    """Time back to error-active after the bus-off condition ends."""
    send_timeout_s: PositiveFloat | None = 0.1
    """Timeout of ``bus.send``; a frame that cannot be sent is counted and dropped."""


@dataclass
class LinkStats:
    """Counters of the link (frames)."""

    sent: int = 0
    dropped: int = 0
    """Lost on purpose (frame_loss)."""
    corrupted: int = 0
    suppressed: int = 0
    """Not sent while off the bus (bus_off)."""
    tx_errors: int = 0
    commands: int = 0
    invalid_commands: int = 0
    duplicates: int = 0
    lost_commands: int = 0
    """Received while the BMS was off or off the bus."""
    ignored: int = 0


class CanBmsLink:
    """The Pillar 2 CAN interface of ``bms`` on ``bus`` (see the module docstring).

    The link does not own ``bus`` (the caller shuts it down); it owns the CAN logger it creates
    from a path (``close`` stops it).
    """

    def __init__(
        self,
        env: simpy.Environment,
        bus: can.BusABC,
        bms: BmsEmulator,
        *,
        config: CanLinkConfig | None = None,
        can_log: str | Path | can.Listener | None = None,
        timestamp_origin_s: float = 0.0,
        seed: int | np.random.SeedSequence = 0,
    ) -> None:
        self.env = env
        self.bus = bus
        self.bms = bms
        self.config = config or CanLinkConfig()
        self.timestamp_origin_s = timestamp_origin_s
        self.rng = np.random.default_rng(seed)
        self.stats = LinkStats()
        self._owns_logger = isinstance(can_log, str | Path)
        self.logger: can.Listener | None = (
            can.Logger(can_log) if isinstance(can_log, str | Path) else can_log
        )
        self._alive = 0
        self._boot_seen = bms.boot_count
        self._last_command: dict[int, tuple[bytes, str]] = {}
        self._bus_off = False
        self._recovered_at_s = -math.inf
        bms.add_fault_listener(self._on_fault)
        self._closed = False
        env.process(bms.powered_process(self._status))
        env.process(self._info_loop())
        env.process(bms.report_process(self._cell_burst))
        env.process(self._command_loop())

    # ------------------------------------------------------------------ state

    @property
    def off_bus(self) -> bool:
        """The controller is bus-off (or recovering): nothing is sent or received."""
        return self._bus_off or float(self.env.now) < self._recovered_at_s

    def _on_fault(self, fault: Fault, active: bool) -> None:
        if fault.kind != FaultKind.BUS_OFF:
            return
        if active:
            self._bus_off = True
            return
        self._bus_off = self.bms.faults.bus_off
        if not self._bus_off:
            self._recovered_at_s = float(self.env.now) + self.config.bus_off_recovery_s
            self.bms.note_link_error()

    def _check_boot(self) -> None:
        """After a (re)boot the firmware's RAM is new: alive counter and command memory reset."""
        if self.bms.boot_count != self._boot_seen:
            self._boot_seen = self.bms.boot_count
            self._alive = 0
            self._last_command.clear()

    # ------------------------------------------------------------------ processes

    def _status(self) -> simpy.Event:
        """One BMS_PackStatus; the next in ``status_period_s``."""
        bms = self.bms
        self._check_boot()
        self.send(
            PackStatus(
                voltage_v=bms.pack_voltage_v,
                current_a=bms.pack_current_a,
                bms_state=bms.bms_state,
                contactor_state=bms.contactor_state,
                faults=bms.flags,
                alive_counter=self._alive,
            )
        )
        self._alive = (self._alive + 1) % 16
        return self.env.timeout(self.config.status_period_s)

    def _info(self) -> BmsInfo:
        bms = self.bms
        return BmsInfo(
            reporting_period_ms=bms.reporting_period_ms,
            cell_count=bms.cell_count,
            firmware_version=bms.config.firmware_version,
            balancing_active=bms.balancing_active,
        )

    def _info_loop(self) -> Generator[simpy.Event, Any, None]:
        bms = self.bms
        last: BmsInfo | None = None
        due_s = 0.0
        while True:
            if not bms.transmitting:
                last = None
                yield bms.changed
                continue
            now = float(self.env.now)
            info = self._info()
            if info != last or now >= due_s - _EPS_S:
                self.send(info)
                last, due_s = info, now + self.config.info_period_s
            yield self.env.timeout(due_s - now) | bms.changed

    def _cell_burst(self) -> None:
        bms = self.bms
        for i in range(bms.cell_count):
            self.send(
                CellVoltTemp(
                    cell_index=i,
                    voltage_v=float(np.clip(bms.cell_voltage_v[i], 0.0, 6.5)),
                    temperature_c=float(np.clip(bms.cell_temperature_c[i], -55.0, 150.0)),
                    balancing=bool(bms.balancing[i]),
                )
            )
            self.send(
                CellState(
                    cell_index=i,
                    soc=_fraction(bms.soc[i]),
                    soh=_fraction(bms.soh[i]),
                    sos=_fraction(bms.sos[i]),
                    equivalent_cycles=float(np.clip(bms.equivalent_cycles[i], 0.0, 26_000.0)),
                )
            )

    def _command_loop(self) -> Generator[simpy.Event, Any, None]:
        while True:
            while (msg := self.bus.recv(timeout=0)) is not None:
                self._on_frame(msg)
            yield self.env.timeout(self.config.command_poll_s)

    # ------------------------------------------------------------------ commands

    def _on_frame(self, msg: can.Message) -> None:
        if (
            msg.is_error_frame
            or msg.is_remote_frame
            or msg.is_extended_id
            or msg.arbitration_id not in COMMAND_IDS
        ):
            self.stats.ignored += 1
            return
        msg.timestamp = self.timestamp_origin_s + float(self.env.now)
        msg.is_rx = True
        # one bus per log, like the frames sent (channel None): a backend's channel name such as
        # a virtual "bench-1700000000" would become a BLF channel number beyond its 16 bits
        msg.channel = None
        if self.logger is not None:
            self.logger.on_message_received(msg)
        if not self.bms.transmitting or self.off_bus:
            self.stats.lost_commands += 1
            return
        self._check_boot()
        self.bms.note_edge_frame()
        self.stats.commands += 1
        data = bytes(msg.data)
        if len(data) != _FRAME_LENGTH:
            self.stats.invalid_commands += 1
            return
        command_id = msg.arbitration_id
        previous = self._last_command.get(command_id)
        if previous is not None and previous[0] == data:
            self.stats.duplicates += 1
            self.send(CommandAck(command_id, previous[1], data[7]))
            return
        try:
            command = decode(CanFrame(command_id, data))
        except CanCodecError:
            self.stats.invalid_commands += 1
            result = "invalid"
        else:
            result = self._execute(command)
        self._last_command[command_id] = (data, result)
        self.send(CommandAck(command_id, result, data[7]))

    def _execute(self, command: B2lMessage) -> str:
        bms = self.bms
        if isinstance(command, SetReportingPeriod):
            return bms.set_reporting_period(command.period_ms)
        if isinstance(command, BalancingRequest):
            return bms.request_balancing(command.mode, command.cell_group, command.cell_mask)
        if isinstance(command, ContactorRequest):
            return bms.request_contactor(command.close)
        if isinstance(command, Reset):
            return bms.request_reset(command.kind)
        return "unsupported"

    # ------------------------------------------------------------------ transmit

    def send(self, message: B2lMessage) -> None:
        """Encode ``message`` with the DBC and put it on the bus (subject to link faults)."""
        frame = encode(message)
        self.transmit(frame.arbitration_id, frame.data)

    def transmit(self, arbitration_id: int, data: bytes) -> None:
        """Put one raw frame on the bus: loss, corruption and bus-off apply here."""
        faults = self.bms.faults
        if self.off_bus:
            self.stats.suppressed += 1
            return
        p_loss = faults.frame_loss_probability
        if p_loss > 0.0 and self.rng.random() < p_loss:
            self.stats.dropped += 1
            return
        p_corrupt = faults.frame_corruption_probability
        if p_corrupt > 0.0 and self.rng.random() < p_corrupt:
            data = self._corrupt(data)
            self.stats.corrupted += 1
        msg = can.Message(
            timestamp=self.timestamp_origin_s + float(self.env.now),
            arbitration_id=arbitration_id,
            is_extended_id=False,
            data=data,
            dlc=len(data),
            is_rx=False,
        )
        try:
            self.bus.send(msg, timeout=self.config.send_timeout_s)
        except can.CanError:
            self.stats.tx_errors += 1
            return
        self.stats.sent += 1
        if self.logger is not None:
            self.logger.on_message_received(msg)

    def _corrupt(self, data: bytes) -> bytes:
        """A garbled frame: a DLC of 0..7 (never the DBC's 8) and random bit flips."""
        length = int(self.rng.integers(0, _FRAME_LENGTH))
        flips = self.rng.integers(1, 256, size=length)
        return bytes(b ^ int(f) for b, f in zip(data[:length], flips, strict=True))

    def close(self) -> None:
        """Stop the CAN logger if this link created it (the bus stays open)."""
        if self._closed:
            return
        self._closed = True
        if self.logger is not None and self._owns_logger:
            self.logger.stop()


class CanBmsSimulator(PackSimulator):
    """One simulated pack on a CAN bus: the pack of ``simulators.pack`` plus the Pillar 2 link.

    ``options`` are those of ``simulators.pack.build_pack`` (plant or parameter set, load,
    faults, BMS settings, clock, ground truth, seed). ``can_log`` is a path (.asc, .blf, ... by
    extension) or a ``can.Listener`` that gets every frame sent and every command received. Use
    as a context manager (or call ``close``) to flush the logs; the bus stays open.
    """

    def __init__(
        self,
        bus: can.BusABC,
        *,
        link_config: CanLinkConfig | None = None,
        can_log: str | Path | can.Listener | None = None,
        **options: Unpack[PackOptions],
    ) -> None:
        super().__init__(**options)
        self.link = CanBmsLink(
            self.env,
            bus,
            self.bms,
            config=link_config,
            can_log=can_log,
            timestamp_origin_s=self.timestamp_origin_s,
            seed=self.pack.link_seed,
        )

    def close(self) -> None:
        """Flush and close the CAN log and the ground truth (the bus stays open)."""
        self.link.close()
        super().close()


def _fraction(value: float) -> float:
    return float(np.clip(value, 0.0, 1.0))
