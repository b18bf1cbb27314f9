"""Pillar 1 serial frame codec: BMS <-> edge over UART (pure: no I/O, no clock, no pyserial).

Wire format (see ``docs/serial-protocol.md``)::

    frame = COBS(body) 0x00
    body  = version u8 | msg_type u8 | seq u16 | payload | crc16 u16

All fields little-endian, physical values IEEE-754 float32, CRC-16/CCITT-FALSE over
``version..payload``. Each message type is a frozen dataclass whose ``Annotated`` field types
*are* the wire layout table: fields are packed in declaration order, an optional repeated group
(count u8 + records) comes last.
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import math
import struct
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeAlias

from cobs import cobs

from twin.errors import SerialCodecError

__all__ = [
    "ALL_CELLS",
    "DELIMITER",
    "HEADER_LEN",
    "MAX_BODY_LEN",
    "MAX_CELLS_PER_FRAME",
    "MAX_ENCODED_LEN",
    "MAX_FRAME_LEN",
    "MAX_PAYLOAD_LEN",
    "MAX_RC_PAIRS",
    "PROTOCOL_VERSION",
    "Ack",
    "AckReason",
    "AckResult",
    "CellMeasurements",
    "CellRecord",
    "EcmUpdate",
    "EisDone",
    "EisRow",
    "EisStart",
    "EisStatus",
    "FaultFlags",
    "Frame",
    "FrameDecoder",
    "Message",
    "MsgType",
    "RcPair",
    "SetReportingPeriod",
    "StateFlags",
    "Status",
    "crc16_ccitt_false",
    "decode_frame",
    "encode_frame",
    "payload_size",
]

PROTOCOL_VERSION = 1
DELIMITER = b"\x00"
HEADER_LEN = 4  # version u8, msg_type u8, seq u16
CRC_LEN = 2
MAX_BODY_LEN = 252  # header + payload + crc; COBS adds 1 byte, the delimiter 1: 254 on the wire
MAX_PAYLOAD_LEN = MAX_BODY_LEN - HEADER_LEN - CRC_LEN
MAX_ENCODED_LEN = MAX_BODY_LEN + 1  # COBS overhead is exactly 1 byte for bodies <= 254 bytes
MAX_FRAME_LEN = MAX_ENCODED_LEN + len(DELIMITER)
MAX_SEQ = 0xFFFF
ALL_CELLS = 0xFFFF  # EcmUpdate.cell_id meaning "every cell of the battery"
MAX_RC_PAIRS = 3

_HEADER = struct.Struct("<BBH")
_CRC = struct.Struct("<H")
_COUNT = struct.Struct("<B")


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout)."""
    return binascii.crc_hqx(data, 0xFFFF)


# --------------------------------------------------------------------------- enums and flags


class MsgType(enum.IntEnum):
    """Message type byte. 0x0_: BMS -> edge, 0x1_: edge -> BMS, 0x20: both ways."""

    STATUS = 0x01
    CELL_MEASUREMENTS = 0x02
    EIS_ROW = 0x03
    EIS_DONE = 0x04
    EIS_START = 0x11
    ECM_UPDATE = 0x12
    SET_REPORTING_PERIOD = 0x13
    ACK = 0x20


class EisStatus(enum.IntEnum):
    """Outcome of an EIS event (EIS_DONE.status)."""

    OK = 0
    ABORTED = 1
    ERROR = 2


class AckResult(enum.IntEnum):
    """Outcome of a command (ACK.result)."""

    OK = 0
    REJECTED = 1
    INVALID = 2
    BUSY = 3


class AckReason(enum.IntEnum):
    """Well-known ACK.reason_code values; the field is an open u16 (unknown codes pass through)."""

    NONE = 0
    CELL_ID_OUT_OF_RANGE = 1
    PARAMETER_OUT_OF_RANGE = 2
    UNSUPPORTED_MESSAGE = 3
    EIS_RUNNING = 4
    STALE_PARAMETER_VERSION = 5
    STORAGE_ERROR = 6


class StateFlags(enum.IntFlag):
    """Bits of STATUS.state_flags (u16). Unknown bits are preserved, not rejected."""

    CHARGING = 1 << 0
    DISCHARGING = 1 << 1
    BALANCING = 1 << 2
    EIS_RUNNING = 1 << 3
    CONTACTOR_CLOSED = 1 << 4
    ECM_LOADED = 1 << 5


class FaultFlags(enum.IntFlag):
    """Bits of STATUS.fault_flags (u32). Unknown bits are preserved, not rejected."""

    OVER_VOLTAGE = 1 << 0
    UNDER_VOLTAGE = 1 << 1
    OVER_CURRENT_CHARGE = 1 << 2
    OVER_CURRENT_DISCHARGE = 1 << 3
    OVER_TEMPERATURE = 1 << 4
    UNDER_TEMPERATURE = 1 << 5
    CELL_IMBALANCE = 1 << 6
    SENSOR_FAULT = 1 << 7
    ISOLATION_FAULT = 1 << 8
    CONTACTOR_FAULT = 1 << 9
    COMMUNICATION_FAULT = 1 << 10
    EIS_FAULT = 1 << 11
    INTERNAL_ERROR = 1 << 12


# --------------------------------------------------------------------------- wire annotations


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A fixed-width field: struct code and, for integers, the valid range."""

    code: str
    lo: int = 0
    hi: int = 0


U8 = _Scalar("B", 0, 0xFF)
U16 = _Scalar("H", 0, 0xFFFF)
U32 = _Scalar("I", 0, 0xFFFF_FFFF)
F32 = _Scalar("f")


@dataclass(frozen=True, slots=True)
class _Repeated:
    """A trailing group: count u8, then ``count`` records of one flat dataclass."""

    min_count: int
    max_count: int | None  # None: as many as fit MAX_PAYLOAD_LEN


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class CellRecord:
    """One cell of a CELL_MEASUREMENTS frame (Pillar 1 cell measurement, SPEC 3.2)."""

    cell_id: Annotated[int, U16]
    voltage_v: Annotated[float, F32]
    temperature_c: Annotated[float, F32]
    current_a: Annotated[float, F32]  # positive when charging
    sot: Annotated[float, F32]
    phase: Annotated[float, F32]
    soc: Annotated[float, F32]  # fraction 0..1
    sos: Annotated[float, F32]  # fraction 0..1


@dataclass(frozen=True, slots=True)
class RcPair:
    """One RC branch of an equivalent-circuit model."""

    r_ohm: Annotated[float, F32]
    c_f: Annotated[float, F32]


@dataclass(frozen=True, slots=True)
class Status:
    """BMS -> edge: hello at boot, then periodically and on any flag change."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.STATUS
    firmware_major: Annotated[int, U8]
    firmware_minor: Annotated[int, U8]
    firmware_patch: Annotated[int, U8]
    n_cells: Annotated[int, U16]
    reporting_period_ms: Annotated[int, U32]
    state_flags: Annotated[int, U16]  # StateFlags bits
    fault_flags: Annotated[int, U32]  # FaultFlags bits
    ecm_parameter_version: Annotated[int, U32]  # 0: no ECM loaded
    uptime_ms: Annotated[int, U32]


@dataclass(frozen=True, slots=True)
class CellMeasurements:
    """BMS -> edge: one sample of up to MAX_CELLS_PER_FRAME cells taken at ``uptime_ms``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.CELL_MEASUREMENTS
    uptime_ms: Annotated[int, U32]
    cells: Annotated[tuple[CellRecord, ...], _Repeated(1, None)]


@dataclass(frozen=True, slots=True)
class EisRow:
    """BMS -> edge: one frequency point of an EIS spectrum (Pillar 1 EIS measurement)."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.EIS_ROW
    event_number: Annotated[int, U32]
    row_index: Annotated[int, U16]  # 0, 1, ... within the event
    cell_id: Annotated[int, U16]
    frequency_hz: Annotated[float, F32]
    amplitude_ohm: Annotated[float, F32]  # |Z|
    phase_deg: Annotated[float, F32]
    current_offset_a: Annotated[float, F32]
    v_start_v: Annotated[float, F32]
    v_end_v: Annotated[float, F32]
    temperature_c: Annotated[float, F32]


@dataclass(frozen=True, slots=True)
class EisDone:
    """BMS -> edge: end of an EIS event (acknowledged by the edge)."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.EIS_DONE
    event_number: Annotated[int, U32]
    status: Annotated[EisStatus, U8]
    n_rows: Annotated[int, U16]


@dataclass(frozen=True, slots=True)
class EisStart:
    """Edge -> BMS: start an EIS sweep on one cell."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.EIS_START
    event_number: Annotated[int, U32]
    cell_id: Annotated[int, U16]
    f_start_hz: Annotated[float, F32]
    f_stop_hz: Annotated[float, F32]
    points_per_decade: Annotated[int, U8]
    amplitude_a: Annotated[float, F32]


@dataclass(frozen=True, slots=True)
class EcmUpdate:
    """Edge -> BMS: versioned equivalent-circuit parameters (R0 + 1..3 RC pairs)."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.ECM_UPDATE
    parameter_version: Annotated[int, U32]
    cell_id: Annotated[int, U16]  # ALL_CELLS (0xFFFF): every cell
    r0_ohm: Annotated[float, F32]
    rc_pairs: Annotated[tuple[RcPair, ...], _Repeated(1, MAX_RC_PAIRS)]


@dataclass(frozen=True, slots=True)
class SetReportingPeriod:
    """Edge -> BMS: send CELL_MEASUREMENTS every ``period_ms``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.SET_REPORTING_PERIOD
    period_ms: Annotated[int, U32]


@dataclass(frozen=True, slots=True)
class Ack:
    """Both ways: outcome of the command frame ``acked_seq`` of type ``acked_msg_type``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.ACK
    acked_seq: Annotated[int, U16]
    acked_msg_type: Annotated[MsgType, U8]
    result: Annotated[AckResult, U8]
    reason_code: Annotated[int, U16] = 0  # AckReason or vendor code; 0: none


Message: TypeAlias = (
    Status | CellMeasurements | EisRow | EisDone | EisStart | EcmUpdate | SetReportingPeriod | Ack
)


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: header fields and the message."""

    version: int
    seq: int
    message: Message

    @property
    def msg_type(self) -> MsgType:
        """Type byte of the message."""
        return self.message.MSG_TYPE


# --------------------------------------------------------------------------- layout tables


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    wire: _Scalar
    enum_cls: type[enum.IntEnum] | None


@dataclass(frozen=True, slots=True)
class _Record:
    """Flat layout of one dataclass: its scalar fields and their struct."""

    cls: type[Any]
    fields: tuple[_Field, ...]
    struct: struct.Struct


@dataclass(frozen=True, slots=True)
class _Layout:
    """Layout of one message type: fixed head, optional trailing repeated group."""

    head: _Record
    group_name: str | None = None
    group: _Record | None = None
    min_count: int = 0
    max_count: int = 0


def _wire_fields(cls: type[Any]) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


def _record(cls: type[Any], fields: Sequence[tuple[str, Any]]) -> _Record:
    out: list[_Field] = []
    for name, hint in fields:
        base, wire = typing.get_args(hint)
        enum_cls = base if isinstance(base, type) and issubclass(base, enum.IntEnum) else None
        out.append(_Field(name, wire, enum_cls))
    return _Record(cls, tuple(out), struct.Struct("<" + "".join(f.wire.code for f in out)))


def _layout(cls: type[Any]) -> _Layout:
    *scalars, (last_name, last_hint) = fields = _wire_fields(cls)
    base, meta = typing.get_args(last_hint)
    if not isinstance(meta, _Repeated):
        return _Layout(_record(cls, fields))
    item_cls = typing.get_args(base)[0]  # tuple[Item, ...]
    head = _record(cls, scalars)
    group = _record(item_cls, _wire_fields(item_cls))
    fit = (MAX_PAYLOAD_LEN - head.struct.size - _COUNT.size) // group.struct.size
    max_count = fit if meta.max_count is None else min(fit, meta.max_count)
    return _Layout(head, last_name, group, meta.min_count, max_count)


_MESSAGE_CLASSES: tuple[type[Any], ...] = (
    Status,
    CellMeasurements,
    EisRow,
    EisDone,
    EisStart,
    EcmUpdate,
    SetReportingPeriod,
    Ack,
)
_LAYOUTS: dict[MsgType, _Layout] = {cls.MSG_TYPE: _layout(cls) for cls in _MESSAGE_CLASSES}
_LAYOUT_BY_CLASS: dict[type[Any], _Layout] = {lay.head.cls: lay for lay in _LAYOUTS.values()}

MAX_CELLS_PER_FRAME = _LAYOUTS[MsgType.CELL_MEASUREMENTS].max_count


def payload_size(msg_type: MsgType, count: int = 0) -> int:
    """Payload length in bytes of ``msg_type`` (with ``count`` group records, if it has a group)."""
    layout = _LAYOUTS[msg_type]
    if layout.group is None:
        return layout.head.struct.size
    return layout.head.struct.size + _COUNT.size + count * layout.group.struct.size


# --------------------------------------------------------------------------- encoding


def _wire_values(record: _Record, obj: object) -> list[int | float]:
    values: list[int | float] = []
    for f in record.fields:
        value = getattr(obj, f.name)
        where = f"{record.cls.__name__}.{f.name}"
        if f.wire.code == "f":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SerialCodecError(f"{where} must be a float, got {value!r}")
            if not math.isfinite(value):
                raise SerialCodecError(f"{where} must be finite, got {value!r}")
            try:
                struct.pack("<f", value)
            except OverflowError:
                raise SerialCodecError(f"{where}={value!r} does not fit a float32") from None
            values.append(float(value))
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise SerialCodecError(f"{where} must be an integer, got {value!r}")
        if not f.wire.lo <= value <= f.wire.hi:
            raise SerialCodecError(f"{where}={value} outside {f.wire.lo}..{f.wire.hi}")
        if f.enum_cls is not None:
            try:
                f.enum_cls(value)
            except ValueError:
                raise SerialCodecError(f"{where}={value} is not a {f.enum_cls.__name__}") from None
        values.append(int(value))
    return values


def _encode_payload(message: Message) -> bytes:
    layout = _LAYOUT_BY_CLASS.get(type(message))
    if layout is None:
        raise SerialCodecError(f"not a serial message: {type(message).__name__}")
    parts = [layout.head.struct.pack(*_wire_values(layout.head, message))]
    if layout.group is not None and layout.group_name is not None:
        items = getattr(message, layout.group_name)
        name = f"{type(message).__name__}.{layout.group_name}"
        if not layout.min_count <= len(items) <= layout.max_count:
            raise SerialCodecError(
                f"{name} holds {len(items)} records, allowed {layout.min_count}..{layout.max_count}"
            )
        parts.append(_COUNT.pack(len(items)))
        for item in items:
            if not isinstance(item, layout.group.cls):
                raise SerialCodecError(f"{name} holds a {type(item).__name__}")
            parts.append(layout.group.struct.pack(*_wire_values(layout.group, item)))
    return b"".join(parts)


def encode_frame(message: Message, seq: int) -> bytes:
    """Encode ``message`` with sequence number ``seq``: COBS(body) followed by 0x00."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise SerialCodecError(f"seq must be an integer 0..{MAX_SEQ}, got {seq!r}")
    payload = _encode_payload(message)
    body = _HEADER.pack(PROTOCOL_VERSION, message.MSG_TYPE, seq) + payload
    body += _CRC.pack(crc16_ccitt_false(body))
    if len(body) > MAX_BODY_LEN:
        raise SerialCodecError(f"body of {len(body)} bytes exceeds MAX_BODY_LEN={MAX_BODY_LEN}")
    return bytes(cobs.encode(body)) + DELIMITER


# --------------------------------------------------------------------------- decoding


def _from_wire(record: _Record, values: tuple[Any, ...]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for f, value in zip(record.fields, values, strict=True):
        where = f"{record.cls.__name__}.{f.name}"
        if f.wire.code == "f" and not math.isfinite(value):
            raise SerialCodecError(f"{where} is {value!r}; NaN/inf are not allowed")
        if f.enum_cls is not None:
            try:
                value = f.enum_cls(value)
            except ValueError:
                raise SerialCodecError(f"{where}={value} is not a {f.enum_cls.__name__}") from None
        kwargs[f.name] = value
    return kwargs


def _decode_payload(msg_type: MsgType, payload: bytes) -> Message:
    layout = _LAYOUTS[msg_type]
    head_len = layout.head.struct.size
    name = msg_type.name
    if layout.group is None or layout.group_name is None:
        if len(payload) != head_len:
            raise SerialCodecError(f"{name} payload is {len(payload)} bytes, expected {head_len}")
        message: Message = layout.head.cls(
            **_from_wire(layout.head, layout.head.struct.unpack(payload))
        )
        return message
    if len(payload) < head_len + _COUNT.size:
        raise SerialCodecError(f"{name} payload is {len(payload)} bytes, truncated")
    kwargs = _from_wire(layout.head, layout.head.struct.unpack_from(payload))
    (count,) = _COUNT.unpack_from(payload, head_len)
    if not layout.min_count <= count <= layout.max_count:
        raise SerialCodecError(
            f"{name} count is {count}, allowed {layout.min_count}..{layout.max_count}"
        )
    expected = payload_size(msg_type, count)
    if len(payload) != expected:
        raise SerialCodecError(
            f"{name} payload is {len(payload)} bytes, expected {expected} for {count} records"
        )
    group = layout.group
    start = head_len + _COUNT.size
    kwargs[layout.group_name] = tuple(
        group.cls(**_from_wire(group, group.struct.unpack_from(payload, offset)))
        for offset in range(start, len(payload), group.struct.size)
    )
    message = layout.head.cls(**kwargs)
    return message


def decode_frame(frame: bytes) -> Frame:
    """Decode one frame (with or without its trailing 0x00); raise SerialCodecError if invalid."""
    data = bytes(frame)
    if data.endswith(DELIMITER):
        data = data[: -len(DELIMITER)]
    if not data:
        raise SerialCodecError("empty frame")
    if len(data) > MAX_ENCODED_LEN:
        raise SerialCodecError(f"frame of {len(data)} bytes exceeds {MAX_ENCODED_LEN}")
    try:
        body = bytes(cobs.decode(data))
    except cobs.DecodeError as exc:
        raise SerialCodecError(f"bad COBS encoding: {exc}") from None
    if len(body) < HEADER_LEN + CRC_LEN:
        raise SerialCodecError(f"truncated frame: body of {len(body)} bytes")
    (crc_rx,) = _CRC.unpack_from(body, len(body) - CRC_LEN)
    crc = crc16_ccitt_false(body[:-CRC_LEN])
    if crc != crc_rx:
        raise SerialCodecError(f"bad CRC: computed 0x{crc:04X}, frame carries 0x{crc_rx:04X}")
    version, type_byte, seq = _HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise SerialCodecError(f"unknown protocol version {version}")
    try:
        msg_type = MsgType(type_byte)
    except ValueError:
        raise SerialCodecError(f"unknown message type 0x{type_byte:02X}") from None
    return Frame(version, seq, _decode_payload(msg_type, body[HEADER_LEN:-CRC_LEN]))


class FrameDecoder:
    """Streaming decoder: feed raw UART bytes, get frames and errors; never raises on bad bytes.

    Splits on 0x00, ignores empty frames (idle delimiters), reports garbage as
    SerialCodecError items and resynchronises at the next delimiter. Holds at most
    MAX_ENCODED_LEN bytes: a longer run without delimiter is reported once and discarded.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self.good_frames = 0
        self.bad_frames = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes held while waiting for a delimiter."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | SerialCodecError]:
        """Consume ``data``; return the frames and errors completed by it, in stream order."""
        out: list[Frame | SerialCodecError] = []
        *complete, tail = bytes(data).split(DELIMITER)
        for chunk in complete:
            if self._discarding:
                self._discarding = False
                continue
            candidate = bytes(self._buffer) + chunk
            self._buffer.clear()
            if candidate:
                out.append(self._decode(candidate))
        if self._discarding:
            return out
        if len(self._buffer) + len(tail) > MAX_ENCODED_LEN:
            self._buffer.clear()
            self._discarding = True
            self.bad_frames += 1
            out.append(SerialCodecError(f"no delimiter within {MAX_ENCODED_LEN} bytes; discarding"))
        else:
            self._buffer += tail
        return out

    def _decode(self, candidate: bytes) -> Frame | SerialCodecError:
        try:
            frame = decode_frame(candidate)
        except SerialCodecError as exc:
            self.bad_frames += 1
            return exc
        self.good_frames += 1
        return frame
