"""Pillar 1 BMS simulator: a ``BmsEmulator`` speaking the serial frame protocol of
``docs/serial-protocol.md`` on a pty, a TCP port or any pyserial port.

``SerialBmsLink`` is the UART side of one emulated BMS, as SimPy processes:

* the hello at every boot: ``0x00`` (ends whatever half frame the receiver holds), then
  ``STATUS`` with ``seq`` 0 and a small ``uptime_ms``; ``STATUS`` again every
  ``status_period_s`` and at once when ``state_flags``, ``fault_flags``, ``reporting_period_ms``
  or ``ecm_parameter_version`` change (checked every ``status_check_s``);
* ``CELL_MEASUREMENTS`` every reporting period after init, the cells in frames of
  ``MAX_CELLS_PER_FRAME`` sharing one ``uptime_ms``: the BMS's readings (sensor noise,
  quantisation, sensor faults), its SoC (EKF) and SoS; ``sot`` is a state of temperature (1
  inside the operating window less ``sot_margin_k``, falling to 0 at its limits) and ``phase``
  the index of the BMS state in ``can_codec.BMS_STATES`` (0 init, 1 standby, 2 precharge,
  3 charging, 4 discharging, 5 fault, 6 shutdown);
* commands: the port is polled without blocking every ``poll_s`` and fed to a ``FrameDecoder``;
  ``SET_REPORTING_PERIOD`` (ACK, then ``STATUS``), ``ECM_UPDATE`` (kept in RAM per cell,
  ``STATUS.ecm_parameter_version`` = the highest in use) and ``EIS_START`` are each ACKed once
  per received copy; a repeat of the last command (same ``seq`` and type) gets the same ACK and
  is not executed again. Bytes that fail to decode are never acknowledged;
* EIS: a logarithmic sweep, one ``EIS_ROW`` per frequency after ``eis_periods_per_point``
  periods plus ``eis_settle_s``; ``|Z|`` and phase from ``twin.impedance`` (R0, RC pairs, a
  diffusion tail, a lead inductance) at the cell's true SoC, temperature and resistance, plus
  complex Gaussian noise (relative, and ``eis_voltage_noise_v / amplitude``: a smaller
  excitation is noisier); ``v_start``, ``v_end``, temperature and current offset are the BMS's
  own readings. Then ``EIS_DONE`` stop-and-wait (250 ms, 3 retries, byte-for-byte repeats);
  unacknowledged, the BMS shows FaultCommunication for a while. A sweep is ``ABORTED`` by a hard
  fault (``EIS_FAULT`` in ``STATUS`` until the next sweep) and lost with the RAM in a reboot.

Faults as a real line shows them (the sensor and cell faults are the ``BmsEmulator``'s):

* byte errors: ``SerialLinkConfig.byte_error_probability`` (always on) and the scheduled
  ``frame_corruption`` fault (each frame hit with probability ``magnitude`` by 1-3 byte errors):
  a hit byte gets a bit flipped or is lost. The receiver's COBS/CRC checks drop the frame
  (a flipped 0x00 also merges or splits frames) and it resyncs at the next 0x00:
  ``FrameDecoder.bad_frames`` grows while good frames keep coming.
* ``frame_loss``: a frame is not sent (its ``seq`` is used: the receiver sees the gap).
* ``bus_off``: the line is down (cable pulled): nothing goes out or comes in (the frames sent
  meanwhile are lost: a ``seq`` gap), then FaultCommunication for
  ``BmsConfig.link_error_hold_s``.
* ``bms_reboot``: the frame on the wire is cut in half, the BMS is silent and deaf for the
  fault's duration, then says hello again: ``seq`` 0, ``uptime_ms`` reset, default reporting
  period, ECM parameters lost (unless ``ecm_persistent``), a running EIS lost.

Links are tiny adapters picked by name (``open_link``): ``"pty"`` (``address`` is the slave
device path), ``"tcp"`` / ``"tcp:PORT"`` (a server on 127.0.0.1; clients open
``socket://127.0.0.1:PORT``), ``"tcp:HOST:PORT"`` (bound to the IPv4 address HOST instead:
``tcp:0.0.0.0:5000`` inside a container, so the edge of another container can connect) or any
pyserial URL or port object (``loop://`` in unit tests).

``SerialBmsSimulator`` is a whole simulated pack (``simulators.pack``: clock, plant and load,
BMS, ground truth) with a link and this protocol; ``run(until_s)`` runs it as fast as possible
or paced by the wall clock, or a test steps ``env`` against the real port.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import tty
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, Unpack

import numpy as np
import serial
import simpy
from pydantic import Field

from simulators.bms import BmsEmulator, Fault, FaultKind
from simulators.pack import PackOptions, PackSimulator
from twin.base import B2LModel, NonNegativeFloat, PositiveFloat
from twin.errors import SerialCodecError
from twin.impedance import (
    DEFAULT_INDUCTANCE_H,
    DiffusionTail,
    default_diffusion_tail,
    equivalent_circuit,
    log_frequencies_hz,
)
from twin.protocols.can_codec import BMS_STATES
from twin.protocols.serial_codec import (
    ALL_CELLS,
    MAX_CELLS_PER_FRAME,
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
    StateFlags,
    Status,
    encode_frame,
)

__all__ = [
    "ANY_HOST",
    "FAULT_FLAGS",
    "LOOPBACK_HOST",
    "ByteLink",
    "EcmCell",
    "PtyLink",
    "PyserialLink",
    "SerialBmsLink",
    "SerialBmsSimulator",
    "SerialLinkConfig",
    "SerialLinkStats",
    "TcpLink",
    "open_link",
    "parse_tcp_spec",
]

LOOPBACK_HOST = "127.0.0.1"
"""Where ``tcp`` links listen unless told otherwise."""
ANY_HOST = "0.0.0.0"
"""``tcp:0.0.0.0:PORT``: every interface of the (container's) network namespace."""

_EPS_S = 1e-9
_READ_CHUNK = 4096
_TX_BUFFER_BYTES = 64 * 1024
_U32 = 0xFFFF_FFFF
_ADC_CELL_FULL_SCALE_V = 6.5

FAULT_FLAGS: dict[str, FaultFlags] = {
    "over_voltage": FaultFlags.OVER_VOLTAGE,
    "under_voltage": FaultFlags.UNDER_VOLTAGE,
    "over_current_charge": FaultFlags.OVER_CURRENT_CHARGE,
    "over_current_discharge": FaultFlags.OVER_CURRENT_DISCHARGE,
    "over_temperature": FaultFlags.OVER_TEMPERATURE,
    "under_temperature": FaultFlags.UNDER_TEMPERATURE,
    "sensor_fault": FaultFlags.SENSOR_FAULT,
    "open_sense_wire": FaultFlags.SENSOR_FAULT,
    "internal_short_suspected": FaultFlags.CELL_IMBALANCE,
    "thermal_runaway_precursor": FaultFlags.OVER_TEMPERATURE,
    "insulation_fault": FaultFlags.ISOLATION_FAULT,
    "contactor_fault": FaultFlags.CONTACTOR_FAULT,
    "communication_fault": FaultFlags.COMMUNICATION_FAULT,
}
"""``BmsEmulator`` fault names -> STATUS.fault_flags bits. Protocol version 1 has no bit for an
open sense wire, a suspected internal short or a runaway precursor: they show as the nearest
symptom (sensor fault; a cell drifting away from the others; over-temperature)."""


# ----------------------------------------------------------------------------- links


class ByteLink(Protocol):
    """The BMS end of a UART: write bytes, read what has arrived; never blocks."""

    @property
    def address(self) -> str:
        """Where a client opens the other end (device path, ``socket://`` URL, pyserial URL)."""
        ...

    @property
    def dropped_bytes(self) -> int:
        """Bytes lost because nobody listened or the transmit buffer overflowed."""
        ...

    def write(self, data: bytes) -> None:
        """Send ``data`` (buffered if the peer is slow; dropped past the buffer)."""
        ...

    def read(self) -> bytes:
        """Bytes received since the last call, possibly none; also flushes pending output."""
        ...

    def close(self) -> None:
        """Release the port (idempotent)."""
        ...


class _TxBuffer:
    """Output a non-blocking sink has not taken yet; the oldest bytes go past ``limit_bytes``."""

    def __init__(self, limit_bytes: int = _TX_BUFFER_BYTES) -> None:
        self.pending = bytearray()
        self.limit_bytes = limit_bytes
        self.dropped_bytes = 0

    def push(self, data: bytes) -> None:
        self.pending += data
        excess = len(self.pending) - self.limit_bytes
        if excess > 0:  # a UART transmitter never waits: the receiver overruns
            del self.pending[:excess]
            self.dropped_bytes += excess

    def drain(self, send: Callable[[bytes], int]) -> None:
        while self.pending:
            n = send(bytes(self.pending))
            if n <= 0:
                return
            del self.pending[:n]


class PtyLink:
    """A pseudo-terminal: the BMS holds the master; clients open ``address`` (the slave path)."""

    def __init__(self, tx_buffer_bytes: int = _TX_BUFFER_BYTES) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # 8-bit clean: no echo, no CR/LF mapping, no signals
        os.set_blocking(self._master, False)
        self._path = os.ttyname(self._slave)
        self._tx = _TxBuffer(tx_buffer_bytes)
        self._closed = False

    @property
    def address(self) -> str:
        return self._path

    @property
    def dropped_bytes(self) -> int:
        return self._tx.dropped_bytes

    def _send(self, data: bytes) -> int:
        try:
            return os.write(self._master, data)
        except BlockingIOError:
            return 0

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        self._tx.push(data)
        self._tx.drain(self._send)

    def read(self) -> bytes:
        if self._closed:
            return b""
        self._tx.drain(self._send)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(self._master, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:  # EIO: no slave side open
                if exc.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._master)
            os.close(self._slave)


class TcpLink:
    """A TCP server standing for the UART, on 127.0.0.1 unless told ``host`` (an IPv4 address;
    ``0.0.0.0``: every interface, for a container network): one client at a time is the peer
    (the next waits in the backlog until it leaves). Bytes sent while no client is connected are
    lost, as on an unplugged UART."""

    def __init__(
        self, host: str = LOOPBACK_HOST, port: int = 0, tx_buffer_bytes: int = _TX_BUFFER_BYTES
    ) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(1)
        self._server.setblocking(False)
        self.host, self.port = self._server.getsockname()[:2]
        self._client: socket.socket | None = None
        self._tx = _TxBuffer(tx_buffer_bytes)
        self._lost_bytes = 0

    @property
    def address(self) -> str:
        """``socket://`` URL for a client on this host (loopback when bound to 0.0.0.0)."""
        host = LOOPBACK_HOST if self.host == ANY_HOST else self.host
        return f"socket://{host}:{self.port}"

    @property
    def dropped_bytes(self) -> int:
        return self._tx.dropped_bytes + self._lost_bytes

    @property
    def connected(self) -> bool:
        """A client is connected."""
        self._accept()
        return self._client is not None

    def _accept(self) -> None:
        """Take a waiting connection if there is no peer (one peer at a time, like a UART)."""
        while self._client is None:
            try:
                client, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed server
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._client = client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._lost_bytes += len(self._tx.pending)
            self._tx.pending.clear()

    def _send(self, data: bytes) -> int:
        if self._client is None:
            return 0
        try:
            return self._client.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._drop_client()
            return 0

    def write(self, data: bytes) -> None:
        self._accept()
        if self._client is None:
            self._lost_bytes += len(data)
            return
        self._tx.push(data)
        self._tx.drain(self._send)

    def read(self) -> bytes:
        self._accept()
        self._tx.drain(self._send)
        chunks: list[bytes] = []
        while self._client is not None:
            try:
                chunk = self._client.recv(_READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                self._drop_client()
                break
            if not chunk:  # orderly close by the client
                self._drop_client()
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._drop_client()
        self._server.close()


class PyserialLink:
    """Any pyserial port (object or URL such as ``loop://``), read without blocking."""

    def __init__(self, port: serial.SerialBase | str) -> None:
        if isinstance(port, str):
            port = serial.serial_for_url(port, baudrate=115200, timeout=0, write_timeout=1.0)
        else:
            port.timeout = 0
        self.port = port
        self._dropped = 0

    @property
    def address(self) -> str:
        return str(self.port.portstr or self.port.name)

    @property
    def dropped_bytes(self) -> int:
        return self._dropped

    def write(self, data: bytes) -> None:
        if not self.port.is_open:
            self._dropped += len(data)
            return
        try:
            written = self.port.write(data)
        except serial.SerialTimeoutException:
            written = 0
        self._dropped += len(data) - (len(data) if written is None else written)

    def read(self) -> bytes:
        if not self.port.is_open:
            return b""
        return bytes(self.port.read(_READ_CHUNK))

    def close(self) -> None:
        self.port.close()


def open_link(spec: str | serial.SerialBase = "pty") -> ByteLink:
    """A link by name: ``"pty"``, ``"tcp"``/``"tcp:PORT"``/``"tcp:HOST:PORT"``, or a pyserial
    URL or port object. ValueError for a malformed ``tcp`` spec."""
    if isinstance(spec, serial.SerialBase):
        return PyserialLink(spec)
    if spec == "pty":
        return PtyLink()
    if spec == "tcp" or spec.startswith("tcp:"):
        host, port = parse_tcp_spec(spec)
        return TcpLink(host, port)
    return PyserialLink(spec)


def parse_tcp_spec(spec: str) -> tuple[str, int]:
    """``tcp`` / ``tcp:PORT`` / ``tcp:HOST:PORT`` -> (IPv4 bind address, port); 127.0.0.1 and
    port 0 (any free one) unless given. ValueError names what is wrong."""
    rest = spec.removeprefix("tcp").removeprefix(":")
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        host = LOOPBACK_HOST
    elif not host:
        raise ValueError(f"{spec!r}: give tcp:PORT or tcp:HOST:PORT (e.g. tcp:0.0.0.0:5000)")
    try:
        port = int(port_text or 0)
    except ValueError:
        raise ValueError(f"{spec!r}: {port_text!r} is not a TCP port") from None
    if not 0 <= port <= 65_535:
        raise ValueError(f"{spec!r}: TCP port {port} is not in 0..65535")
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{spec!r}: {host!r} is not an IPv4 address (e.g. 0.0.0.0)") from None
    return host, port


# ----------------------------------------------------------------------------- the protocol


class SerialLinkConfig(B2LModel):
    """Timing, EIS front end and line quality of the Pillar 1 link."""

    status_period_s: PositiveFloat = 10.0
    """STATUS at least this often (the protocol's maximum)."""
    status_check_s: PositiveFloat = 0.1
    """How often the firmware compares its flags with the last STATUS sent."""
    poll_s: PositiveFloat = 0.01
    """How often the firmware services its UART receive buffer (ACKs come within this)."""
    ack_timeout_s: PositiveFloat = 0.25
    max_retries: int = Field(default=3, ge=0, le=10)
    byte_error_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    """Each transmitted byte is, with this probability, bit-flipped or lost (line noise)."""
    ecm_persistent: bool = False
    """ECM parameters survive a reboot (kept in flash)."""
    sot_margin_k: PositiveFloat = 10.0
    eis_f_min_hz: PositiveFloat = 1e-3
    eis_f_max_hz: PositiveFloat = 1e4
    eis_max_points_per_decade: int = Field(default=50, ge=1, le=255)
    eis_max_amplitude_a: PositiveFloat = 10.0
    eis_periods_per_point: PositiveFloat = 2.0
    eis_settle_s: NonNegativeFloat = 0.1
    eis_noise_rel: NonNegativeFloat = 0.003
    """Relative noise of each impedance point (std of a complex Gaussian, per |Z|)."""
    eis_voltage_noise_v: NonNegativeFloat = 50e-6
    """Voltage noise of the EIS front end (divided by the amplitude: an impedance noise)."""
    diffusion_coefficient_ohm_per_sqrt_s: PositiveFloat | None = None
    """Warburg coefficient at the reference temperature; None: ``default_diffusion_tail``."""
    diffusion_tau_s: PositiveFloat | None = None
    """Finite diffusion time (reflective); None: ``default_diffusion_tail``'s."""
    inductance_h: NonNegativeFloat = DEFAULT_INDUCTANCE_H


@dataclass
class SerialLinkStats:
    """Counters of the link (what a debug console of the firmware would show)."""

    frames_sent: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    byte_errors: int = 0
    """Bytes flipped or lost on the way out."""
    corrupted_frames: int = 0
    lost_frames: int = 0
    """Not sent (frame_loss) or not sent while the line was down (bus_off)."""
    cut_frames: int = 0
    frames_received: int = 0
    bad_frames_received: int = 0
    lost_rx_bytes: int = 0
    """Received while the BMS was off or the line down."""
    ignored_frames: int = 0
    commands: int = 0
    duplicates: int = 0
    retransmissions: int = 0
    failed_deliveries: int = 0
    eis_events: int = 0


@dataclass(frozen=True, slots=True)
class EcmCell:
    """ECM parameters of one cell as the edge sent them."""

    parameter_version: int
    r0_ohm: float
    rc_pairs: tuple[RcPair, ...]


_RESULTS = {
    "ok": AckResult.OK,
    "rejected": AckResult.REJECTED,
    "invalid": AckResult.INVALID,
    "busy": AckResult.BUSY,
}


class SerialBmsLink:
    """The Pillar 1 UART of ``bms`` on ``link`` (see the module docstring).

    The protocol object does not own ``link``: the caller (or ``SerialBmsSimulator``) closes it.
    """

    def __init__(
        self,
        env: simpy.Environment,
        link: ByteLink,
        bms: BmsEmulator,
        *,
        config: SerialLinkConfig | None = None,
        seed: int | np.random.SeedSequence = 0,
    ) -> None:
        self.env = env
        self.link = link
        self.bms = bms
        self.config = config or SerialLinkConfig()
        self.rng = np.random.default_rng(seed)
        self.stats = SerialLinkStats()
        c, params = self.config, bms.params
        base = default_diffusion_tail(params)
        self.diffusion = DiffusionTail(
            c.diffusion_coefficient_ohm_per_sqrt_s or base.coefficient_ohm_per_sqrt_s,
            c.diffusion_tau_s or base.tau_s,
            "reflective",
        )
        self.ecm: dict[int, EcmCell] = {}
        self._boot_seen = -1
        self._boot_time_s = float(env.now)
        self._seq = 0
        self._decoder = FrameDecoder()
        self._last_command: tuple[int, MsgType, Ack] | None = None
        self._eis_event: int | None = None
        self._eis_fault = False
        self._ack_waiter: tuple[int, MsgType, simpy.Event] | None = None
        self._last_status: Status | None = None
        self._last_status_s = -math.inf
        self._line_down = False
        bms.add_fault_listener(self._on_fault)
        env.process(bms.powered_process(self._status_round))
        env.process(bms.report_process(self._report))
        env.process(self._receive_loop())

    # ------------------------------------------------------------------ state

    @property
    def seq(self) -> int:
        """``seq`` of the next new frame."""
        return self._seq

    @property
    def ecm_parameter_version(self) -> int:
        """Highest ECM parameter version in use; 0: none."""
        return max((cell.parameter_version for cell in self.ecm.values()), default=0)

    @property
    def eis_running(self) -> bool:
        """An EIS sweep is in progress."""
        return self._eis_event is not None

    @property
    def uptime_ms(self) -> int:
        """Milliseconds since the BMS's last boot (u32, wraps)."""
        return round((float(self.env.now) - self._boot_time_s) * 1000.0) & _U32

    @property
    def online(self) -> bool:
        """The firmware runs and the line is up."""
        return self.bms.transmitting and not self._line_down

    def _on_fault(self, fault: Fault, active: bool) -> None:
        if fault.kind == FaultKind.BUS_OFF:
            self._line_down = self.bms.faults.bus_off
            if not active and not self._line_down:
                self.bms.note_link_error()
        elif fault.kind == FaultKind.BMS_REBOOT and active and self.online:
            # reset in the middle of a frame: its first half is on the wire, never its end
            frame = encode_frame(self._status(), self._seq)
            self._write(frame[: len(frame) // 2])
            self.stats.cut_frames += 1

    def _sync_boot(self) -> None:
        """First sight of a (re)boot: new RAM, then the hello (0x00 and STATUS) if online.

        The status loop waits on ``bms.changed``, which fires at the boot itself, so the uptime
        counts from the boot.
        """
        if self.bms.boot_count == self._boot_seen:
            return
        self._boot_seen = self.bms.boot_count
        self._boot_time_s = float(self.env.now)
        self._seq = 0
        self._decoder = FrameDecoder()
        self._last_command = None
        self._eis_event = None
        self._eis_fault = False
        self._ack_waiter = None
        self._last_status = None
        self._last_status_s = -math.inf
        if not self.config.ecm_persistent:
            self.ecm = {}
        if self.bms.transmitting:
            self._write(b"\x00")  # ends whatever half frame the receiver holds
            self._send_status()

    # ------------------------------------------------------------------ processes

    def _status_round(self) -> simpy.Event:
        """STATUS if something changed or ``status_period_s`` passed; look again soon."""
        self._sync_boot()
        self._status_if_changed()
        due_s = self._last_status_s + self.config.status_period_s
        if float(self.env.now) >= due_s - _EPS_S:
            self._send_status()
        return self.env.timeout(self.config.status_check_s) | self.bms.changed

    def _receive_loop(self) -> Generator[simpy.Event, Any, None]:
        while True:
            data = self.link.read()
            if data:
                if not self.online:
                    self.stats.lost_rx_bytes += len(data)
                else:
                    self._sync_boot()
                    for item in self._decoder.feed(data):
                        if isinstance(item, SerialCodecError):
                            self.stats.bad_frames_received += 1
                        else:
                            self.stats.frames_received += 1
                            self._on_frame(item)
            yield self.env.timeout(self.config.poll_s)

    # ------------------------------------------------------------------ transmit

    def _write(self, data: bytes) -> None:
        if self._line_down:
            return
        self.stats.bytes_sent += len(data)
        self.link.write(data)

    def _garble(self, frame: bytes, n_errors: int | None) -> bytes:
        """Bit flips and lost bytes: ``n_errors`` of them, or per byte with the line's BER."""
        hit: list[int]
        if n_errors is None:
            p = self.config.byte_error_probability
            hit = np.flatnonzero(self.rng.random(len(frame)) < p).tolist() if p > 0.0 else []
        else:
            size = min(n_errors, len(frame))
            hit = sorted(int(i) for i in self.rng.choice(len(frame), size=size, replace=False))
        if not hit:
            return frame
        data = bytearray(frame)
        lost: list[int] = []
        for i in hit:
            if self.rng.random() < 0.5:
                data[i] ^= 1 << int(self.rng.integers(8))
            else:
                lost.append(i)
        for i in reversed(lost):
            del data[i]
        self.stats.byte_errors += len(hit)
        return bytes(data)

    def transmit(self, frame: bytes) -> None:
        """Put one encoded frame on the line: loss, corruption and byte errors apply here."""
        faults = self.bms.faults
        if not self.online:  # the firmware sends into a dead line
            self.stats.lost_frames += 1
            return
        p_loss = faults.frame_loss_probability
        if p_loss > 0.0 and self.rng.random() < p_loss:
            self.stats.lost_frames += 1
            return
        garbled = self._garble(frame, None)
        p_corrupt = faults.frame_corruption_probability
        if p_corrupt > 0.0 and self.rng.random() < p_corrupt:
            garbled = self._garble(garbled, int(self.rng.integers(1, 4)))
        if garbled != frame:
            self.stats.corrupted_frames += 1
        self._write(garbled)

    def _count(self, message: Message) -> None:
        name = message.MSG_TYPE.name
        self.stats.frames_sent[name] = self.stats.frames_sent.get(name, 0) + 1

    def send(self, message: Message) -> int:
        """Encode ``message`` as a new frame, transmit it; returns its ``seq``."""
        seq = self._seq
        self._seq = (self._seq + 1) & MAX_SEQ
        self.transmit(encode_frame(message, seq))
        self._count(message)
        return seq

    def _state_flags(self) -> int:
        bms = self.bms
        flags = StateFlags(0)
        if bms.bms_state == "charging":
            flags |= StateFlags.CHARGING
        elif bms.bms_state == "discharging":
            flags |= StateFlags.DISCHARGING
        if bms.balancing_active:
            flags |= StateFlags.BALANCING
        if self.eis_running:
            flags |= StateFlags.EIS_RUNNING
        if bms.contactor_state == "closed":
            flags |= StateFlags.CONTACTOR_CLOSED
        if self.ecm:
            flags |= StateFlags.ECM_LOADED
        return int(flags)

    def _fault_flags(self) -> int:
        flags = FaultFlags(0)
        for name in self.bms.flags:
            flags |= FAULT_FLAGS.get(name, FaultFlags(0))
        if self._eis_fault:
            flags |= FaultFlags.EIS_FAULT
        return int(flags)

    def _status(self) -> Status:
        major, minor, patch = self.bms.config.firmware_version
        return Status(
            firmware_major=major,
            firmware_minor=minor,
            firmware_patch=patch,
            n_cells=self.bms.cell_count,
            reporting_period_ms=self.bms.reporting_period_ms,
            state_flags=self._state_flags(),
            fault_flags=self._fault_flags(),
            ecm_parameter_version=self.ecm_parameter_version,
            uptime_ms=self.uptime_ms,
        )

    def _send_status(self) -> None:
        status = self._status()
        self.send(status)
        self._last_status = status
        self._last_status_s = float(self.env.now)

    def _status_if_changed(self) -> None:
        """STATUS at once when flags, period or ECM version differ from the last one sent."""
        if not self.bms.transmitting:
            return
        now, last = self._status(), self._last_status
        if last is None or _status_key(now) != _status_key(last):
            self._send_status()

    def _sot(self, temperature_c: float) -> float:
        p, margin = self.bms.params, self.config.sot_margin_k
        high = (p.temperature_max_c - temperature_c) / margin
        low = (temperature_c - p.temperature_min_c) / margin
        return float(np.clip(min(high, low), 0.0, 1.0))

    def _report(self) -> None:
        """The cell reports of one reporting period (after the hello of a new boot)."""
        self._sync_boot()
        self._send_measurements()

    def _send_measurements(self) -> None:
        bms = self.bms
        self._status_if_changed()
        phase = float(BMS_STATES.index(bms.bms_state)) if bms.bms_state in BMS_STATES else 0.0
        current = float(bms.pack_current_a)
        records = [
            CellRecord(
                cell_id=i,
                voltage_v=float(np.clip(bms.cell_voltage_v[i], 0.0, _ADC_CELL_FULL_SCALE_V)),
                temperature_c=float(bms.cell_temperature_c[i]),
                current_a=current,
                sot=self._sot(float(bms.cell_temperature_c[i])),
                phase=phase,
                soc=_fraction(bms.soc[i]),
                sos=_fraction(bms.sos[i]),
            )
            for i in range(bms.cell_count)
        ]
        uptime = self.uptime_ms
        for start in range(0, len(records), MAX_CELLS_PER_FRAME):
            chunk = tuple(records[start : start + MAX_CELLS_PER_FRAME])
            self.send(CellMeasurements(uptime_ms=uptime, cells=chunk))

    def _deliver(self, message: Message, boot: int) -> Generator[simpy.Event, Any, bool]:
        """Stop-and-wait: send, wait ``ack_timeout_s`` for the ACK, repeat byte for byte."""
        seq = self._seq
        self._seq = (self._seq + 1) & MAX_SEQ
        frame = encode_frame(message, seq)
        for attempt in range(self.config.max_retries + 1):
            if self.bms.boot_count != boot:
                return False
            if attempt:
                self.stats.retransmissions += 1
            waiter = self.env.event()
            self._ack_waiter = (seq, message.MSG_TYPE, waiter)
            self.transmit(frame)
            self._count(message)
            yield waiter | self.env.timeout(self.config.ack_timeout_s)
            if waiter.triggered:
                self._ack_waiter = None
                return True
        if self.bms.boot_count == boot:
            self._ack_waiter = None
            self.stats.failed_deliveries += 1
            self.bms.note_link_error()
            self._status_if_changed()
        return False

    # ------------------------------------------------------------------ receive

    def _on_frame(self, frame: Frame) -> None:
        message = frame.message
        self.bms.note_edge_frame()
        if isinstance(message, Ack):
            waiter = self._ack_waiter
            if waiter is not None and (message.acked_seq, message.acked_msg_type) == waiter[:2]:
                if not waiter[2].triggered:
                    waiter[2].succeed(message)
            else:
                self.stats.ignored_frames += 1
            return
        if not isinstance(message, EisStart | EcmUpdate | SetReportingPeriod):
            self.stats.ignored_frames += 1  # BMS -> edge types (e.g. our own echo on loop://)
            return
        self.stats.commands += 1
        last = self._last_command
        if last is not None and (last[0], last[1]) == (frame.seq, frame.msg_type):
            self.stats.duplicates += 1
            self.send(last[2])
            return
        after: Callable[[], None] | None
        if isinstance(message, SetReportingPeriod):
            result, reason, after = self._set_period(message)
        elif isinstance(message, EcmUpdate):
            result, reason, after = self._ecm_update(message)
        else:
            result, reason, after = self._eis_start(message)
        ack = Ack(frame.seq, frame.msg_type, result, reason)
        self._last_command = (frame.seq, frame.msg_type, ack)
        self.send(ack)
        if after is not None:
            after()

    def _set_period(
        self, message: SetReportingPeriod
    ) -> tuple[AckResult, int, Callable[[], None] | None]:
        result = _RESULTS.get(self.bms.set_reporting_period(message.period_ms), AckResult.INVALID)
        if result is not AckResult.OK:
            return result, AckReason.PARAMETER_OUT_OF_RANGE, None
        return result, AckReason.NONE, self._send_status

    def _ecm_update(self, message: EcmUpdate) -> tuple[AckResult, int, Callable[[], None] | None]:
        n_cells = self.bms.cell_count
        if message.cell_id != ALL_CELLS and message.cell_id >= n_cells:
            return AckResult.INVALID, AckReason.CELL_ID_OUT_OF_RANGE, None
        pairs = message.rc_pairs
        values = (message.r0_ohm, *(p.r_ohm for p in pairs), *(p.c_f for p in pairs))
        if not all(v > 0.0 for v in values):
            return AckResult.INVALID, AckReason.PARAMETER_OUT_OF_RANGE, None
        if message.parameter_version < self.ecm_parameter_version:
            return AckResult.REJECTED, AckReason.STALE_PARAMETER_VERSION, None
        cells = range(n_cells) if message.cell_id == ALL_CELLS else (message.cell_id,)
        for cell in cells:
            self.ecm[cell] = EcmCell(message.parameter_version, message.r0_ohm, pairs)
        return AckResult.OK, AckReason.NONE, self._status_if_changed

    def _eis_start(self, message: EisStart) -> tuple[AckResult, int, Callable[[], None] | None]:
        c, bms = self.config, self.bms
        if self.eis_running or self._ack_waiter is not None:  # sweep or its EIS_DONE pending
            return AckResult.BUSY, AckReason.EIS_RUNNING, None
        if message.cell_id >= bms.cell_count:
            return AckResult.INVALID, AckReason.CELL_ID_OUT_OF_RANGE, None
        band = (message.f_start_hz, message.f_stop_hz)
        if (
            not all(c.eis_f_min_hz <= f <= c.eis_f_max_hz for f in band)
            or not 1 <= message.points_per_decade <= c.eis_max_points_per_decade
            or not 0.0 < message.amplitude_a <= c.eis_max_amplitude_a
        ):
            return AckResult.INVALID, AckReason.PARAMETER_OUT_OF_RANGE, None
        if not bms.reporting:  # still in init or shutting down
            return AckResult.BUSY, AckReason.NONE, None
        if bms.hard_fault:
            return AckResult.REJECTED, AckReason.NONE, None
        frequencies = log_frequencies_hz(*band, message.points_per_decade)
        self._eis_event = message.event_number
        self._eis_fault = False
        boot = bms.boot_count

        def start() -> None:
            self._status_if_changed()
            self.env.process(self._eis(message, frequencies.tolist(), boot))

        return AckResult.OK, AckReason.NONE, start

    # ------------------------------------------------------------------ EIS

    def measure_impedance(
        self, cell: int, frequency_hz: float, amplitude_a: float
    ) -> tuple[float, float]:
        """One noisy EIS point of ``cell`` now: ``(|Z| in ohm, phase in degrees)``."""
        plant, p = self.bms.plant, self.bms.pack_index
        scale = np.broadcast_to(plant.model.cell.resistance_scale, plant.soc.shape)
        circuit = equivalent_circuit(
            self.bms.params,
            float(np.clip(plant.soc[p, cell], 0.0, 1.0)),
            float(plant.temperature_c[p, cell]),
            resistance_scale=float(scale[p, cell]),
            diffusion=self.diffusion,
            inductance_h=self.config.inductance_h,
        )
        z = complex(circuit.impedance_ohm(frequency_hz))
        c = self.config
        sigma = math.hypot(c.eis_noise_rel * abs(z), c.eis_voltage_noise_v / amplitude_a)
        noise = self.rng.normal(0.0, sigma / math.sqrt(2.0), 2)
        z += complex(float(noise[0]), float(noise[1]))
        return abs(z), math.degrees(math.atan2(z.imag, z.real))

    def _eis(
        self, message: EisStart, frequencies: list[float], boot: int
    ) -> Generator[simpy.Event, Any, None]:
        c, bms, cell = self.config, self.bms, message.cell_id
        self.stats.eis_events += 1
        status, n_rows = EisStatus.OK, 0
        for row, f in enumerate(frequencies):
            current = float(bms.pack_current_a)
            v_start = float(bms.cell_voltage_v[cell])
            yield self.env.timeout(c.eis_settle_s + c.eis_periods_per_point / f)
            if bms.boot_count != boot or not bms.transmitting:
                return  # reset during the sweep: the event is lost with the RAM
            if bms.hard_fault:
                status = EisStatus.ABORTED
                break
            amplitude, phase = self.measure_impedance(cell, f, message.amplitude_a)
            self.send(
                EisRow(
                    event_number=message.event_number,
                    row_index=row,
                    cell_id=cell,
                    frequency_hz=f,
                    amplitude_ohm=amplitude,
                    phase_deg=phase,
                    current_offset_a=current,
                    v_start_v=v_start,
                    v_end_v=float(bms.cell_voltage_v[cell]),
                    temperature_c=float(bms.cell_temperature_c[cell]),
                )
            )
            n_rows += 1
        self._eis_event = None
        self._eis_fault = status is not EisStatus.OK
        self._status_if_changed()
        yield from self._deliver(EisDone(message.event_number, status, n_rows), boot)


def _status_key(status: Status) -> tuple[int, int, int, int]:
    return (
        status.state_flags,
        status.fault_flags,
        status.reporting_period_ms,
        status.ecm_parameter_version,
    )


def _fraction(value: float) -> float:
    return float(np.clip(value, 0.0, 1.0))


# ----------------------------------------------------------------------------- composition


class SerialBmsSimulator(PackSimulator):
    """One simulated pack on a serial line: the pack of ``simulators.pack`` plus the Pillar 1
    link.

    ``link`` is a link name or object (``open_link``); ``address`` tells a client where to
    connect. ``options`` are those of ``simulators.pack.build_pack`` (plant or parameter set,
    load, faults, BMS settings, clock, ground truth, seed). Use as a context manager (or call
    ``close``): it closes the link it opened and the ground truth.
    """

    def __init__(
        self,
        link: str | serial.SerialBase | ByteLink = "pty",
        *,
        link_config: SerialLinkConfig | None = None,
        **options: Unpack[PackOptions],
    ) -> None:
        super().__init__(**options)
        self._owns_link = isinstance(link, str)
        self.link: ByteLink = open_link(link) if isinstance(link, str | serial.SerialBase) else link
        self.protocol = SerialBmsLink(
            self.env, self.link, self.bms, config=link_config, seed=self.pack.link_seed
        )

    @property
    def address(self) -> str:
        """Where a client opens the line: a pty path or a ``socket://`` URL."""
        return self.link.address

    def serve(
        self, until_s: float | None = None, *, announce: Callable[[str], None] = print
    ) -> None:
        """Announce ``address`` (the device path or URL a client opens), then run to ``until_s``
        (None: until interrupted), in chunks of one simulated minute."""
        announce(f"Pillar 1 BMS on {self.address}")
        while until_s is None or float(self.env.now) < until_s:
            step_end = float(self.env.now) + 60.0
            self.run(step_end if until_s is None else min(until_s, step_end))

    def close(self) -> None:
        """Close the link this simulator opened and the ground truth (idempotent)."""
        if self._owns_link and not self._closed:
            self.link.close()
        super().close()
