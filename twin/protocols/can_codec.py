"""Pure codec for the Pillar 2 CAN protocol (``b2l_pillar2.dbc``), built on cantools.

``encode`` turns one of the typed messages below into a :class:`CanFrame`; ``decode`` does the
reverse. Every failure (unknown id, wrong length, out-of-range or non-finite value, undefined
enum value, bad guard) raises :class:`twin.errors.CanCodecError`. No bus I/O happens here.
Current is positive when charging.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, TypeAlias

from cantools.database.can import Database, Message
from cantools.database.namedsignalvalue import NamedSignalValue
from cantools.errors import Error as CantoolsError

from twin.errors import CanCodecError

__all__ = [
    "ACK_RESULTS",
    "BALANCING_GROUP_SIZE",
    "BALANCING_MODES",
    "BMS_STATES",
    "CONTACTOR_GUARD",
    "CONTACTOR_STATES",
    "DBC_FILENAME",
    "FAULTS",
    "MAX_CELLS",
    "PROTOCOL_VERSION",
    "RESET_GUARD",
    "RESET_KINDS",
    "B2lMessage",
    "BalancingRequest",
    "BmsInfo",
    "CanFrame",
    "CellState",
    "CellVoltTemp",
    "CommandAck",
    "ContactorRequest",
    "PackStatus",
    "Reset",
    "SetReportingPeriod",
    "SignalValue",
    "decode",
    "decode_signals",
    "encode",
    "load_database",
]

DBC_FILENAME = "b2l_pillar2.dbc"
PROTOCOL_VERSION = 1
MAX_CELLS = 256
BALANCING_GROUP_SIZE = 32
RESET_GUARD = 0x5AA5
CONTACTOR_GUARD = 0xA55A

BMS_STATES: tuple[str, ...] = (
    "init",
    "standby",
    "precharge",
    "charging",
    "discharging",
    "fault",
    "shutdown",
)
CONTACTOR_STATES: tuple[str, ...] = ("open", "precharging", "closed", "fault")
ACK_RESULTS: tuple[str, ...] = ("ok", "rejected", "invalid", "busy", "unsupported")
BALANCING_MODES: tuple[str, ...] = ("off", "auto", "manual")
RESET_KINDS: tuple[str, ...] = ("soft", "clear_faults")

_FAULT_SIGNALS: dict[str, str] = {
    "over_voltage": "FaultOverVoltage",
    "under_voltage": "FaultUnderVoltage",
    "over_temperature": "FaultOverTemperature",
    "under_temperature": "FaultUnderTemperature",
    "over_current_charge": "FaultOverCurrentCharge",
    "over_current_discharge": "FaultOverCurrentDischarge",
    "sensor_fault": "FaultSensor",
    "open_sense_wire": "FaultOpenSenseWire",
    "internal_short_suspected": "FaultInternalShort",
    "thermal_runaway_precursor": "FaultThermalRunawayPrecursor",
    "communication_fault": "FaultCommunication",
    "contactor_fault": "FaultContactor",
    "insulation_fault": "FaultInsulation",
}
FAULTS: frozenset[str] = frozenset(_FAULT_SIGNALS)

SignalValue: TypeAlias = int | float | str
_Signals: TypeAlias = dict[str, SignalValue]

_MAX_STANDARD_ID = 0x7FF
_MAX_ERROR_TEXT = 240


@functools.cache
def load_database() -> Database:
    """Load (once) the packaged DBC in strict mode."""
    text = importlib.resources.files("twin.protocols").joinpath(DBC_FILENAME).read_text("ascii")
    db = Database(strict=True)
    db.add_dbc_string(text)
    return db


@dataclass(frozen=True, slots=True)
class CanFrame:
    """A classic CAN frame as it goes on the bus."""

    arbitration_id: int
    data: bytes
    is_extended_id: bool = False


# --------------------------------------------------------------------------- value checks


def _fail(message_name: str, text: str) -> CanCodecError:
    return CanCodecError(f"{message_name}: {text}"[:_MAX_ERROR_TEXT])


def _int(message_name: str, field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(message_name, f"{field} must be an int, got {value!r}")
    return value


def _real(message_name: str, field: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _fail(message_name, f"{field} must be a number, got {value!r}")
    try:
        as_float = float(value)
    except OverflowError:
        raise _fail(message_name, f"{field} is out of range, got {value!r}") from None
    if not math.isfinite(as_float):
        raise _fail(message_name, f"{field} must be finite, got {value!r}")
    return as_float


def _flag(message_name: str, field: str, value: object) -> int:
    if not isinstance(value, bool):
        raise _fail(message_name, f"{field} must be a bool, got {value!r}")
    return int(value)


def _choice(message_name: str, field: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(message_name, f"{field} must be one of {choices}, got {value!r}")
    return value


def _in_range(message_name: str, field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise _fail(message_name, f"{field} must be in {low}..{high}, got {value}")
    return value


def _get_int(signals: Mapping[str, SignalValue], name: str) -> int:
    value = signals[name]
    if not isinstance(value, int):
        raise CanCodecError(f"signal {name} decoded to {value!r}, expected an integer")
    return value


def _get_real(signals: Mapping[str, SignalValue], name: str) -> float:
    value = signals[name]
    if isinstance(value, str):
        raise CanCodecError(f"signal {name} decoded to {value!r}, expected a number")
    return float(value)


def _get_str(signals: Mapping[str, SignalValue], name: str) -> str:
    value = signals[name]
    if not isinstance(value, str):
        raise CanCodecError(f"signal {name} decoded to {value!r}, expected a named value")
    return value


# --------------------------------------------------------------------------- BMS -> EDGE


@dataclass(frozen=True, slots=True)
class CellVoltTemp:
    """``BMS_CellVoltTemp``: voltage and temperature of one cell."""

    MESSAGE_NAME: ClassVar[str] = "BMS_CellVoltTemp"
    FRAME_ID: ClassVar[int] = 0x110

    cell_index: int
    voltage_v: float
    temperature_c: float
    balancing: bool = False

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        return {
            "CellIndex": _in_range(n, "cell_index", _int(n, "cell_index", self.cell_index), 0, 255),
            "CellVoltage": _real(n, "voltage_v", self.voltage_v),
            "CellTemperature": _real(n, "temperature_c", self.temperature_c),
            "CellBalancing": _flag(n, "balancing", self.balancing),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> CellVoltTemp:
        return cls(
            cell_index=_get_int(s, "CellIndex"),
            voltage_v=_get_real(s, "CellVoltage"),
            temperature_c=_get_real(s, "CellTemperature"),
            balancing=bool(_get_int(s, "CellBalancing")),
        )


@dataclass(frozen=True, slots=True)
class CellState:
    """``BMS_CellState``: SoC, SoH, SoS (fractions 0..1) and equivalent full cycles of a cell."""

    MESSAGE_NAME: ClassVar[str] = "BMS_CellState"
    FRAME_ID: ClassVar[int] = 0x111

    cell_index: int
    soc: float
    soh: float
    sos: float
    equivalent_cycles: float

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        return {
            "CellIndex": _in_range(n, "cell_index", _int(n, "cell_index", self.cell_index), 0, 255),
            "CellSoC": _real(n, "soc", self.soc),
            "CellSoH": _real(n, "soh", self.soh),
            "CellSoS": _real(n, "sos", self.sos),
            "CellEquivalentCycles": _real(n, "equivalent_cycles", self.equivalent_cycles),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> CellState:
        return cls(
            cell_index=_get_int(s, "CellIndex"),
            soc=_get_real(s, "CellSoC"),
            soh=_get_real(s, "CellSoH"),
            sos=_get_real(s, "CellSoS"),
            equivalent_cycles=_get_real(s, "CellEquivalentCycles"),
        )


@dataclass(frozen=True, slots=True)
class PackStatus:
    """``BMS_PackStatus``: pack voltage, current (positive when charging), states and faults."""

    MESSAGE_NAME: ClassVar[str] = "BMS_PackStatus"
    FRAME_ID: ClassVar[int] = 0x100

    voltage_v: float
    current_a: float
    bms_state: str
    contactor_state: str
    faults: frozenset[str] = frozenset()
    alive_counter: int = 0

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        faults = self.faults
        if not isinstance(faults, frozenset | set) or not faults <= FAULTS:
            raise _fail(n, f"faults must be a subset of {sorted(FAULTS)}, got {faults!r}")
        signals: _Signals = {
            "PackVoltage": _real(n, "voltage_v", self.voltage_v),
            "PackCurrent": _real(n, "current_a", self.current_a),
            "BmsState": _choice(n, "bms_state", self.bms_state, BMS_STATES),
            "ContactorState": _choice(n, "contactor_state", self.contactor_state, CONTACTOR_STATES),
            "AliveCounter": _int(n, "alive_counter", self.alive_counter),
        }
        for fault, signal in _FAULT_SIGNALS.items():
            signals[signal] = int(fault in faults)
        return signals

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> PackStatus:
        return cls(
            voltage_v=_get_real(s, "PackVoltage"),
            current_a=_get_real(s, "PackCurrent"),
            bms_state=_get_str(s, "BmsState"),
            contactor_state=_get_str(s, "ContactorState"),
            faults=frozenset(f for f, sig in _FAULT_SIGNALS.items() if _get_int(s, sig)),
            alive_counter=_get_int(s, "AliveCounter"),
        )


@dataclass(frozen=True, slots=True)
class BmsInfo:
    """``BMS_Info``: reporting period, cell count, firmware and protocol versions, balancing."""

    MESSAGE_NAME: ClassVar[str] = "BMS_Info"
    FRAME_ID: ClassVar[int] = 0x120

    reporting_period_ms: int
    cell_count: int
    firmware_version: tuple[int, int, int]
    balancing_active: bool = False
    protocol_version: int = PROTOCOL_VERSION

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        version = self.firmware_version
        if not isinstance(version, tuple) or len(version) != 3:
            raise _fail(n, f"firmware_version must be (major, minor, patch), got {version!r}")
        return {
            "ReportingPeriod": _int(n, "reporting_period_ms", self.reporting_period_ms),
            "CellCount": _int(n, "cell_count", self.cell_count),
            "FirmwareMajor": _int(n, "firmware_version[0]", version[0]),
            "FirmwareMinor": _int(n, "firmware_version[1]", version[1]),
            "FirmwarePatch": _int(n, "firmware_version[2]", version[2]),
            "BalancingActive": _flag(n, "balancing_active", self.balancing_active),
            "ProtocolVersion": _int(n, "protocol_version", self.protocol_version),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> BmsInfo:
        return cls(
            reporting_period_ms=_get_int(s, "ReportingPeriod"),
            cell_count=_get_int(s, "CellCount"),
            firmware_version=(
                _get_int(s, "FirmwareMajor"),
                _get_int(s, "FirmwareMinor"),
                _get_int(s, "FirmwarePatch"),
            ),
            balancing_active=bool(_get_int(s, "BalancingActive")),
            protocol_version=_get_int(s, "ProtocolVersion"),
        )


@dataclass(frozen=True, slots=True)
class CommandAck:
    """``BMS_CommandAck``: result of the EDGE command with frame id ``command_id``."""

    MESSAGE_NAME: ClassVar[str] = "BMS_CommandAck"
    FRAME_ID: ClassVar[int] = 0x130

    command_id: int
    result: str
    sequence: int = 0

    @property
    def command_name(self) -> str:
        """DBC name of the acknowledged command (``EDGE_...``)."""
        return _COMMAND_NAMES.get(self.command_id, f"0x{self.command_id:03X}")

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        command_id = _int(n, "command_id", self.command_id)
        if command_id not in _COMMAND_NAMES:
            known = ", ".join(f"0x{i:03X}" for i in _COMMAND_NAMES)
            raise _fail(n, f"command_id must be one of {known}, got 0x{command_id:X}")
        return {
            "AckedMessageId": _COMMAND_NAMES[command_id],
            "AckResult": _choice(n, "result", self.result, ACK_RESULTS),
            "AckSequence": _int(n, "sequence", self.sequence),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> CommandAck:
        name = _get_str(s, "AckedMessageId")
        command_id = next((i for i, known in _COMMAND_NAMES.items() if known == name), None)
        if command_id is None:
            raise CanCodecError(f"BMS_CommandAck: unknown acknowledged command {name!r}")
        return cls(
            command_id=command_id,
            result=_get_str(s, "AckResult"),
            sequence=_get_int(s, "AckSequence"),
        )


# --------------------------------------------------------------------------- EDGE -> BMS


@dataclass(frozen=True, slots=True)
class SetReportingPeriod:
    """``EDGE_SetReportingPeriod``: new period of the cell frames (100..60000 ms)."""

    MESSAGE_NAME: ClassVar[str] = "EDGE_SetReportingPeriod"
    FRAME_ID: ClassVar[int] = 0x200

    period_ms: int
    sequence: int = 0

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        return {
            "RequestedPeriod": _int(n, "period_ms", self.period_ms),
            "CommandSequence": _int(n, "sequence", self.sequence),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> SetReportingPeriod:
        return cls(
            period_ms=_get_int(s, "RequestedPeriod"),
            sequence=_get_int(s, "CommandSequence"),
        )


@dataclass(frozen=True, slots=True)
class BalancingRequest:
    """``EDGE_BalancingRequest``: mode (off/auto/manual) and the bleed mask of one 32-cell group.

    Bit ``i`` of ``cell_mask`` is cell ``32 * cell_group + i``; the mask is used in manual mode.
    """

    MESSAGE_NAME: ClassVar[str] = "EDGE_BalancingRequest"
    FRAME_ID: ClassVar[int] = 0x201

    mode: str
    cell_group: int = 0
    cell_mask: int = 0
    sequence: int = 0

    @property
    def cells(self) -> frozenset[int]:
        """Cell indexes whose bit is set in ``cell_mask``."""
        base = self.cell_group * BALANCING_GROUP_SIZE
        return frozenset(
            base + bit for bit in range(BALANCING_GROUP_SIZE) if self.cell_mask >> bit & 1
        )

    @classmethod
    def for_cells(
        cls, cells: Iterable[int], cell_count: int, *, sequence: int = 0
    ) -> tuple[BalancingRequest, ...]:
        """Manual-mode frames, one per group of ``cell_count`` cells, bleeding exactly ``cells``."""
        n = cls.MESSAGE_NAME
        _in_range(n, "cell_count", _int(n, "cell_count", cell_count), 1, MAX_CELLS)
        masks = [0] * -(-cell_count // BALANCING_GROUP_SIZE)
        for cell in cells:
            _in_range(n, "cell", _int(n, "cell", cell), 0, cell_count - 1)
            group, bit = divmod(cell, BALANCING_GROUP_SIZE)
            masks[group] |= 1 << bit
        return tuple(
            cls("manual", cell_group=g, cell_mask=m, sequence=sequence) for g, m in enumerate(masks)
        )

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        group = _int(n, "cell_group", self.cell_group)
        _in_range(n, "cell_group", group, 0, MAX_CELLS // BALANCING_GROUP_SIZE - 1)
        return {
            "BalancingCellGroup": group,
            "BalancingMode": _choice(n, "mode", self.mode, BALANCING_MODES),
            "BalancingCellMask": _int(n, "cell_mask", self.cell_mask),
            "CommandSequence": _int(n, "sequence", self.sequence),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> BalancingRequest:
        return cls(
            mode=_get_str(s, "BalancingMode"),
            cell_group=_get_int(s, "BalancingCellGroup"),
            cell_mask=_get_int(s, "BalancingCellMask"),
            sequence=_get_int(s, "CommandSequence"),
        )


@dataclass(frozen=True, slots=True)
class ContactorRequest:
    """``EDGE_ContactorRequest``: close (True) or open (False) the main contactors."""

    MESSAGE_NAME: ClassVar[str] = "EDGE_ContactorRequest"
    FRAME_ID: ClassVar[int] = 0x202

    close: bool
    sequence: int = 0

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        return {
            "ContactorCommand": "close" if _flag(n, "close", self.close) else "open",
            "ContactorGuard": CONTACTOR_GUARD,
            "CommandSequence": _int(n, "sequence", self.sequence),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> ContactorRequest:
        return cls(
            close=_get_str(s, "ContactorCommand") == "close",
            sequence=_get_int(s, "CommandSequence"),
        )


@dataclass(frozen=True, slots=True)
class Reset:
    """``EDGE_Reset``: ``kind`` is ``"soft"`` or ``"clear_faults"``; the guard is added here."""

    MESSAGE_NAME: ClassVar[str] = "EDGE_Reset"
    FRAME_ID: ClassVar[int] = 0x203

    kind: str
    sequence: int = 0

    def _signals(self) -> _Signals:
        n = self.MESSAGE_NAME
        return {
            "ResetType": _choice(n, "kind", self.kind, RESET_KINDS),
            "ResetGuard": RESET_GUARD,
            "CommandSequence": _int(n, "sequence", self.sequence),
        }

    @classmethod
    def _from_signals(cls, s: Mapping[str, SignalValue]) -> Reset:
        return cls(kind=_get_str(s, "ResetType"), sequence=_get_int(s, "CommandSequence"))


B2lMessage: TypeAlias = (
    CellVoltTemp
    | CellState
    | PackStatus
    | BmsInfo
    | CommandAck
    | SetReportingPeriod
    | BalancingRequest
    | ContactorRequest
    | Reset
)

_COMMAND_NAMES: dict[int, str] = {
    cls.FRAME_ID: cls.MESSAGE_NAME
    for cls in (SetReportingPeriod, BalancingRequest, ContactorRequest, Reset)
}

_DECODERS: dict[str, Callable[[Mapping[str, SignalValue]], B2lMessage]] = {
    CellVoltTemp.MESSAGE_NAME: CellVoltTemp._from_signals,
    CellState.MESSAGE_NAME: CellState._from_signals,
    PackStatus.MESSAGE_NAME: PackStatus._from_signals,
    BmsInfo.MESSAGE_NAME: BmsInfo._from_signals,
    CommandAck.MESSAGE_NAME: CommandAck._from_signals,
    SetReportingPeriod.MESSAGE_NAME: SetReportingPeriod._from_signals,
    BalancingRequest.MESSAGE_NAME: BalancingRequest._from_signals,
    ContactorRequest.MESSAGE_NAME: ContactorRequest._from_signals,
    Reset.MESSAGE_NAME: Reset._from_signals,
}

# Everything cantools, bitstruct or struct may raise on bad input.
_WRAPPED_ERRORS: tuple[type[Exception], ...] = (
    CantoolsError,
    LookupError,
    ValueError,
    TypeError,
    ArithmeticError,
    struct.error,
)


# --------------------------------------------------------------------------- public codec


def encode(message: B2lMessage) -> CanFrame:
    """Encode a typed message into a classic CAN frame (strict: range-checked by the DBC)."""
    if type(message) not in _MESSAGE_TYPES:
        raise CanCodecError(f"cannot encode {type(message).__name__}: not a Pillar 2 message")
    name = message.MESSAGE_NAME
    signals = message._signals()
    try:
        db = load_database()
        data = db.encode_message(name, signals, scaling=True, strict=True)
        frame_id = db.get_message_by_name(name).frame_id
    except _WRAPPED_ERRORS as exc:
        raise _fail(name, f"cannot encode: {exc}") from exc
    return CanFrame(arbitration_id=frame_id, data=bytes(data))


def decode_signals(
    arbitration_id: int, data: bytes, *, is_extended_id: bool = False
) -> tuple[str, dict[str, SignalValue]]:
    """Decode raw bytes to ``(message_name, {signal: physical value or enum name})``.

    Checks the id, the exact length, every signal against its DBC range and every enum
    against its value table.
    """
    if not isinstance(arbitration_id, int) or isinstance(arbitration_id, bool):
        raise CanCodecError(f"arbitration id must be an int, got {arbitration_id!r}")
    if is_extended_id:
        raise CanCodecError(f"extended id 0x{arbitration_id:X} is not part of the protocol")
    if not 0 <= arbitration_id <= _MAX_STANDARD_ID:
        raise CanCodecError(f"arbitration id {arbitration_id} is not a standard 11-bit id")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CanCodecError(f"frame data must be bytes, got {type(data).__name__}")
    payload = bytes(data)
    db = load_database()
    try:
        message = db.get_message_by_frame_id(arbitration_id)
    except KeyError:
        raise CanCodecError(f"unknown arbitration id 0x{arbitration_id:03X}") from None
    if len(payload) != message.length:
        raise _fail(message.name, f"expected {message.length} data bytes, got {len(payload)}")
    try:
        decoded = db.decode_message(arbitration_id, payload, decode_choices=True, scaling=True)
    except _WRAPPED_ERRORS as exc:
        raise _fail(message.name, f"cannot decode: {exc}") from exc
    if not isinstance(decoded, dict):
        raise _fail(message.name, "unexpected container message")
    return message.name, _checked(message, decoded)


def _checked(message: Message, decoded: Mapping[str, object]) -> dict[str, SignalValue]:
    result: dict[str, SignalValue] = {}
    for name, value in decoded.items():
        signal = message.get_signal_by_name(name)
        if signal.choices:
            if not isinstance(value, NamedSignalValue):
                raise _fail(message.name, f"{name}: undefined value {value!r}")
            result[name] = value.name
            continue
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(message.name, f"{name}: invalid value {value!r}")
        if signal.minimum is not None and signal.minimum == signal.maximum != value:
            raise _fail(message.name, f"{name}: bad guard {value!r}, expected {signal.minimum}")
        tolerance = abs(signal.scale) * 1e-6
        if signal.minimum is not None and value < signal.minimum - tolerance:
            raise _fail(message.name, f"{name}={value} below minimum {signal.minimum}")
        if signal.maximum is not None and value > signal.maximum + tolerance:
            raise _fail(message.name, f"{name}={value} above maximum {signal.maximum}")
        result[name] = round(value, _decimals(signal.scale)) if isinstance(value, float) else value
    return result


@functools.cache
def _decimals(scale: float) -> int:
    """Decimal places of a DBC scale (0.001 -> 3), to drop float noise from raw * scale."""
    exponent = Decimal(str(scale)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def decode(frame: CanFrame) -> B2lMessage:
    """Decode a CAN frame into its typed message."""
    if not isinstance(frame, CanFrame):
        raise CanCodecError(f"expected a CanFrame, got {type(frame).__name__}")
    name, signals = decode_signals(
        frame.arbitration_id, frame.data, is_extended_id=frame.is_extended_id
    )
    builder = _DECODERS.get(name)
    if builder is None:
        raise CanCodecError(f"{name}: no typed message for this frame")
    try:
        return builder(signals)
    except KeyError as exc:
        raise _fail(name, f"missing signal {exc}") from exc


_MESSAGE_TYPES: frozenset[type] = frozenset(
    {
        CellVoltTemp,
        CellState,
        PackStatus,
        BmsInfo,
        CommandAck,
        SetReportingPeriod,
        BalancingRequest,
        ContactorRequest,
        Reset,
    }
)
