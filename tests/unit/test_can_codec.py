"""Unit tests of the Pillar 2 CAN codec (twin/protocols/can_codec.py) and its DBC."""

from __future__ import annotations

import dataclasses
import logging
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin.errors import CanCodecError
from twin.protocols import can_codec
from twin.protocols.can_codec import (
    ACK_RESULTS,
    BALANCING_MODES,
    BMS_STATES,
    CONTACTOR_GUARD,
    CONTACTOR_STATES,
    FAULTS,
    RESET_GUARD,
    RESET_KINDS,
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
    decode_signals,
    encode,
    load_database,
)

pytestmark = pytest.mark.unit

DBC_PATH = Path(can_codec.__file__).with_name("b2l_pillar2.dbc")
MESSAGE_TYPES: tuple[type[B2lMessage], ...] = (
    CellVoltTemp,
    CellState,
    PackStatus,
    BmsInfo,
    CommandAck,
    SetReportingPeriod,
    BalancingRequest,
    ContactorRequest,
    Reset,
)
COMMAND_IDS = (0x200, 0x201, 0x202, 0x203)
PROPERTY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

# Half an LSB of every float field: the round-trip tolerance.
HALF_LSB: dict[tuple[type[B2lMessage], str], float] = {
    (CellVoltTemp, "voltage_v"): 0.001 / 2,
    (CellVoltTemp, "temperature_c"): 0.01 / 2,
    (CellState, "soc"): 0.0001 / 2,
    (CellState, "soh"): 0.0001 / 2,
    (CellState, "sos"): 0.001 / 2,
    (CellState, "equivalent_cycles"): 0.1 / 2,
    (PackStatus, "voltage_v"): 0.02 / 2,
    (PackStatus, "current_a"): 0.05 / 2,
}


def reals(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


u8 = st.integers(0, 255)
cell_volt_temps = st.builds(
    CellVoltTemp,
    cell_index=u8,
    voltage_v=reals(0.0, 6.5),
    temperature_c=reals(-55.0, 150.0),
    balancing=st.booleans(),
)
cell_states = st.builds(
    CellState,
    cell_index=u8,
    soc=reals(0.0, 1.0),
    soh=reals(0.0, 1.0),
    sos=reals(0.0, 1.0),
    equivalent_cycles=reals(0.0, 26000.0),
)
pack_statuses = st.builds(
    PackStatus,
    voltage_v=reals(0.0, 1300.0),
    current_a=reals(-1600.0, 1600.0),
    bms_state=st.sampled_from(BMS_STATES),
    contactor_state=st.sampled_from(CONTACTOR_STATES),
    faults=st.frozensets(st.sampled_from(sorted(FAULTS))),
    alive_counter=st.integers(0, 15),
)
bms_infos = st.builds(
    BmsInfo,
    reporting_period_ms=st.integers(100, 60000),
    cell_count=st.integers(1, 256),
    firmware_version=st.tuples(u8, u8, u8),
    balancing_active=st.booleans(),
    protocol_version=st.integers(1, 15),
)
command_acks = st.builds(
    CommandAck,
    command_id=st.sampled_from(COMMAND_IDS),
    result=st.sampled_from(ACK_RESULTS),
    sequence=u8,
)
set_periods = st.builds(SetReportingPeriod, period_ms=st.integers(100, 60000), sequence=u8)
balancing_requests = st.builds(
    BalancingRequest,
    mode=st.sampled_from(BALANCING_MODES),
    cell_group=st.integers(0, 7),
    cell_mask=st.integers(0, 2**32 - 1),
    sequence=u8,
)
contactor_requests = st.builds(ContactorRequest, close=st.booleans(), sequence=u8)
resets = st.builds(Reset, kind=st.sampled_from(RESET_KINDS), sequence=u8)
any_message: st.SearchStrategy[B2lMessage] = st.one_of(
    cell_volt_temps,
    cell_states,
    pack_statuses,
    bms_infos,
    command_acks,
    set_periods,
    balancing_requests,
    contactor_requests,
    resets,
)


@pytest.fixture(scope="module")
def raw_db() -> Any:
    """The DBC loaded by cantools directly (strict), independent of the project code."""
    return cantools.database.load_file(str(DBC_PATH))


@pytest.fixture
def bus_pair() -> Iterator[tuple[can.BusABC, can.BusABC]]:
    """Two python-can virtual buses on a private channel, shut down on teardown."""
    channel = f"b2l-test-{uuid.uuid4().hex}"
    with (
        can.Bus(interface="virtual", channel=channel) as tx,
        can.Bus(interface="virtual", channel=channel) as rx,
    ):
        yield tx, rx


def assert_same_message(original: B2lMessage, decoded: B2lMessage) -> None:
    assert type(decoded) is type(original)
    for field in dataclasses.fields(original):
        want = getattr(original, field.name)
        got = getattr(decoded, field.name)
        tolerance = HALF_LSB.get((type(original), field.name))
        if tolerance is None:
            assert got == want, field.name
        else:
            assert abs(got - want) <= tolerance + 1e-9, field.name


def expected_physical(message: B2lMessage) -> dict[str, object]:
    """Independent oracle: the DBC signal values a message must produce."""
    match message:
        case CellVoltTemp():
            return {
                "CellIndex": message.cell_index,
                "CellVoltage": message.voltage_v,
                "CellTemperature": message.temperature_c,
                "CellBalancing": int(message.balancing),
            }
        case CellState():
            return {
                "CellIndex": message.cell_index,
                "CellSoC": message.soc,
                "CellSoH": message.soh,
                "CellSoS": message.sos,
                "CellEquivalentCycles": message.equivalent_cycles,
            }
        case PackStatus():
            faults = {
                "FaultOverVoltage": "over_voltage",
                "FaultUnderVoltage": "under_voltage",
                "FaultOverTemperature": "over_temperature",
                "FaultUnderTemperature": "under_temperature",
                "FaultOverCurrentCharge": "over_current_charge",
                "FaultOverCurrentDischarge": "over_current_discharge",
                "FaultSensor": "sensor_fault",
                "FaultOpenSenseWire": "open_sense_wire",
                "FaultInternalShort": "internal_short_suspected",
                "FaultThermalRunawayPrecursor": "thermal_runaway_precursor",
                "FaultCommunication": "communication_fault",
                "FaultContactor": "contactor_fault",
                "FaultInsulation": "insulation_fault",
            }
            return {
                "PackVoltage": message.voltage_v,
                "PackCurrent": message.current_a,
                "BmsState": message.bms_state,
                "ContactorState": message.contactor_state,
                "AliveCounter": message.alive_counter,
                **{sig: int(name in message.faults) for sig, name in faults.items()},
            }
        case BmsInfo():
            return {
                "ReportingPeriod": message.reporting_period_ms,
                "CellCount": message.cell_count,
                "FirmwareMajor": message.firmware_version[0],
                "FirmwareMinor": message.firmware_version[1],
                "FirmwarePatch": message.firmware_version[2],
                "BalancingActive": int(message.balancing_active),
                "ProtocolVersion": message.protocol_version,
            }
        case CommandAck():
            return {
                "AckedMessageId": message.command_name,
                "AckResult": message.result,
                "AckSequence": message.sequence,
            }
        case SetReportingPeriod():
            return {"RequestedPeriod": message.period_ms, "CommandSequence": message.sequence}
        case BalancingRequest():
            return {
                "BalancingCellGroup": message.cell_group,
                "BalancingMode": message.mode,
                "BalancingCellMask": message.cell_mask,
                "CommandSequence": message.sequence,
            }
        case ContactorRequest():
            return {
                "ContactorCommand": "close" if message.close else "open",
                "ContactorGuard": CONTACTOR_GUARD,
                "CommandSequence": message.sequence,
            }
        case Reset():
            return {
                "ResetType": message.kind,
                "ResetGuard": RESET_GUARD,
                "CommandSequence": message.sequence,
            }
    raise AssertionError(message)


# --------------------------------------------------------------------------- the DBC itself


def test_dbc_loads_strict_without_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG):
        warnings.simplefilter("error")
        db = cantools.database.load_file(str(DBC_PATH), strict=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert isinstance(db, cantools.database.can.Database)
    assert db.dbc is not None
    assert {n.name for n in db.nodes} == {"BMS", "EDGE"}
    assert db.dbc.attributes["BusType"].value == "CAN"
    assert load_database() is load_database()


def test_dbc_messages_follow_the_conventions(raw_db: Any) -> None:
    for message in raw_db.messages:
        assert not message.is_extended_frame, message.name
        assert message.frame_id <= 0x7FF
        assert message.length == 8
        assert message.comment, message.name
        sender = "BMS" if message.name.startswith("BMS_") else "EDGE"
        assert message.senders == [sender]
        for signal in message.signals:
            assert signal.byte_order == "little_endian", signal.name
            assert signal.comment, f"{message.name}.{signal.name}"
    cycle_ms = {m.name: m.cycle_time for m in raw_db.messages}
    assert cycle_ms["BMS_PackStatus"] == 100
    assert cycle_ms["BMS_CellVoltTemp"] == cycle_ms["BMS_CellState"] == 1000
    assert cycle_ms["BMS_Info"] == 1000
    current = raw_db.get_message_by_name("BMS_PackStatus").get_signal_by_name("PackCurrent")
    assert current.is_signed and current.unit == "A"
    assert "POSITIVE WHEN CHARGING" in current.comment


def test_typed_messages_match_the_dbc(raw_db: Any) -> None:
    for cls in MESSAGE_TYPES:
        assert raw_db.get_message_by_name(cls.MESSAGE_NAME).frame_id == cls.FRAME_ID

    def choices(message: str, signal: str) -> tuple[str, ...]:
        sig = raw_db.get_message_by_name(message).get_signal_by_name(signal)
        return tuple(str(v) for v in sig.choices.values())

    assert choices("BMS_PackStatus", "BmsState") == BMS_STATES
    assert choices("BMS_PackStatus", "ContactorState") == CONTACTOR_STATES
    assert choices("BMS_CommandAck", "AckResult") == ACK_RESULTS
    assert choices("EDGE_BalancingRequest", "BalancingMode") == BALANCING_MODES
    assert choices("EDGE_Reset", "ResetType") == RESET_KINDS
    acked = raw_db.get_message_by_name("BMS_CommandAck").get_signal_by_name("AckedMessageId")
    assert {k: str(v) for k, v in acked.choices.items()} == {
        0x200: "EDGE_SetReportingPeriod",
        0x201: "EDGE_BalancingRequest",
        0x202: "EDGE_ContactorRequest",
        0x203: "EDGE_Reset",
    }
    fault_signals = [
        s.name
        for s in raw_db.get_message_by_name("BMS_PackStatus").signals
        if s.name.startswith("Fault")
    ]
    assert len(fault_signals) == len(FAULTS)


def test_cell_signals_are_multiplexed_over_all_256_indexes(raw_db: Any) -> None:
    for name, signals in {
        "BMS_CellVoltTemp": ("CellVoltage", "CellTemperature", "CellBalancing"),
        "BMS_CellState": ("CellSoC", "CellSoH", "CellSoS", "CellEquivalentCycles"),
    }.items():
        message = raw_db.get_message_by_name(name)
        assert message.get_signal_by_name("CellIndex").is_multiplexer
        for signal in signals:
            sig = message.get_signal_by_name(signal)
            assert sig.multiplexer_signal == "CellIndex"
            assert sorted(sig.multiplexer_ids) == list(range(256))
    mask = raw_db.get_message_by_name("EDGE_BalancingRequest").get_signal_by_name(
        "BalancingCellMask"
    )
    assert sorted(mask.multiplexer_ids) == list(range(8))


# --------------------------------------------------------------------------- round trips


@PROPERTY
@given(any_message)
def test_round_trip_within_half_an_lsb(message: B2lMessage) -> None:
    frame = encode(message)
    assert frame.arbitration_id == type(message).FRAME_ID
    assert len(frame.data) == 8
    assert not frame.is_extended_id
    decoded = decode(frame)
    assert_same_message(message, decoded)
    assert encode(decoded) == frame
    assert decode(encode(decoded)) == decoded


@PROPERTY
@given(any_message)
def test_plain_cantools_decodes_what_the_project_encodes(raw_db: Any, message: B2lMessage) -> None:
    frame = encode(message)
    decoded = raw_db.decode_message(frame.arbitration_id, frame.data)
    expected = expected_physical(message)
    assert set(decoded) == set(expected)
    for name, want in expected.items():
        got = decoded[name]
        if isinstance(want, str):
            assert str(got) == want, name
        elif isinstance(want, float):
            scale = raw_db.get_message_by_name(message.MESSAGE_NAME).get_signal_by_name(name).scale
            assert abs(got - want) <= scale / 2 + 1e-9, name
        else:
            assert got == want, name


@PROPERTY
@given(any_message)
def test_project_decodes_what_plain_cantools_encodes(raw_db: Any, message: B2lMessage) -> None:
    data = raw_db.encode_message(message.MESSAGE_NAME, expected_physical(message), strict=True)
    assert_same_message(message, decode(CanFrame(message.FRAME_ID, data)))


def test_known_frames() -> None:
    status = PackStatus(
        voltage_v=51.2,
        current_a=-10.0,
        bms_state="discharging",
        contactor_state="closed",
        faults=frozenset({"over_temperature"}),
        alive_counter=5,
    )
    frame = encode(status)
    assert frame == CanFrame(0x100, bytes.fromhex("000a38ff24040005"))
    reset = encode(Reset("soft", sequence=7))
    assert reset == CanFrame(0x203, bytes([1, 0xA5, 0x5A, 0, 0, 0, 0, 7]))
    assert decode_signals(0x203, reset.data) == (
        "EDGE_Reset",
        {"ResetType": "soft", "ResetGuard": RESET_GUARD, "CommandSequence": 7},
    )


def test_virtual_bus_carries_every_message_type(
    bus_pair: tuple[can.BusABC, can.BusABC],
) -> None:
    tx, rx = bus_pair
    messages: list[B2lMessage] = [
        CellVoltTemp(cell_index=200, voltage_v=3.712, temperature_c=-12.5, balancing=True),
        CellState(cell_index=17, soc=0.55, soh=0.83, sos=0.99, equivalent_cycles=1520.3),
        PackStatus(48.3, 12.5, "charging", "closed", frozenset({"open_sense_wire"}), 15),
        BmsInfo(1000, 16, (1, 4, 2), balancing_active=True),
        CommandAck(command_id=0x200, result="busy", sequence=9),
        SetReportingPeriod(period_ms=250, sequence=9),
        BalancingRequest("manual", cell_group=3, cell_mask=0x80000001, sequence=1),
        ContactorRequest(close=True, sequence=2),
        Reset("clear_faults", sequence=3),
    ]
    for message in messages:
        frame = encode(message)
        tx.send(
            can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=False)
        )
        received = rx.recv(timeout=2.0)
        assert received is not None
        got = CanFrame(received.arbitration_id, bytes(received.data), received.is_extended_id)
        assert got == frame
        assert_same_message(message, decode(got))


# --------------------------------------------------------------------------- multiplexing


def test_every_cell_index_round_trips() -> None:
    for index in range(256):
        frame = encode(CellVoltTemp(index, 3.3, 25.0))
        assert frame.data[0] == index
        decoded = decode(frame)
        assert isinstance(decoded, CellVoltTemp) and decoded.cell_index == index
        state = decode(encode(CellState(index, 0.5, 0.9, 0.95, 10.0)))
        assert isinstance(state, CellState) and state.cell_index == index


@pytest.mark.parametrize("index", [-1, 256, 1000])
def test_cell_index_out_of_range_is_rejected(index: int) -> None:
    with pytest.raises(CanCodecError, match="cell_index"):
        encode(CellVoltTemp(index, 3.3, 25.0))
    with pytest.raises(CanCodecError, match="cell_index"):
        encode(CellState(index, 0.5, 0.9, 0.95, 10.0))


def test_balancing_groups_cover_256_cells() -> None:
    frames = BalancingRequest.for_cells([0, 31, 32, 255], cell_count=256, sequence=4)
    assert len(frames) == 8
    assert [f.cell_group for f in frames] == list(range(8))
    assert frames[0].cells == {0, 31} and frames[1].cells == {32} and frames[7].cells == {255}
    assert all(f.mode == "manual" and f.sequence == 4 for f in frames)
    assert BalancingRequest.for_cells([], cell_count=20) == (BalancingRequest("manual"),)
    for frame in frames:
        assert decode(encode(frame)) == frame
    with pytest.raises(CanCodecError):
        BalancingRequest.for_cells([20], cell_count=20)
    with pytest.raises(CanCodecError):
        BalancingRequest.for_cells([], cell_count=257)
    with pytest.raises(CanCodecError, match="cell_group"):
        encode(BalancingRequest("manual", cell_group=8))
    with pytest.raises(CanCodecError):
        decode(CanFrame(0x201, bytes([8, 2, 0, 0, 0, 0, 0, 0])))


# --------------------------------------------------------------------------- guards


@PROPERTY
@given(
    guard=st.integers(0, 0xFFFF), kind=st.integers(0, 255), tail=st.binary(min_size=5, max_size=5)
)
def test_reset_needs_its_guard(guard: int, kind: int, tail: bytes) -> None:
    data = bytes([kind]) + guard.to_bytes(2, "little") + tail
    if guard == RESET_GUARD and kind in (1, 2):
        decoded = decode(CanFrame(0x203, data))
        assert decoded == Reset(RESET_KINDS[kind - 1], sequence=tail[-1])
    else:
        with pytest.raises(CanCodecError):
            decode(CanFrame(0x203, data))


@PROPERTY
@given(guard=st.integers(0, 0xFFFF), command=st.integers(0, 255))
def test_contactor_request_needs_its_guard(guard: int, command: int) -> None:
    data = bytes([command]) + guard.to_bytes(2, "little") + bytes(5)
    if guard == CONTACTOR_GUARD and command in (1, 2):
        assert decode(CanFrame(0x202, data)) == ContactorRequest(close=command == 2)
    else:
        with pytest.raises(CanCodecError):
            decode(CanFrame(0x202, data))


def test_all_zero_command_frames_do_nothing() -> None:
    for frame_id in (0x202, 0x203):
        with pytest.raises(CanCodecError):
            decode(CanFrame(frame_id, bytes(8)))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "message",
    [
        CellVoltTemp(0, float("nan"), 25.0),
        CellVoltTemp(0, 3.3, float("inf")),
        CellVoltTemp(0, 6.6, 25.0),
        CellVoltTemp(0, -0.01, 25.0),
        CellVoltTemp(0, 3.3, 25.0, balancing=1),  # type: ignore[arg-type]
        CellVoltTemp(1.5, 3.3, 25.0),  # type: ignore[arg-type]
        CellVoltTemp(True, 3.3, 25.0),
        CellVoltTemp(0, "3.3", 25.0),  # type: ignore[arg-type]
        CellState(0, 1.01, 0.9, 0.9, 0.0),
        CellState(0, 0.5, 0.9, 0.9, -1.0),
        CellState(0, 10**400, 0.9, 0.9, 0.0),
        PackStatus(1400.0, 0.0, "standby", "open"),
        PackStatus(48.0, 1700.0, "standby", "open"),
        PackStatus(48.0, 0.0, "exploding", "open"),
        PackStatus(48.0, 0.0, "standby", "ajar"),
        PackStatus(48.0, 0.0, "standby", "open", frozenset({"gremlins"})),
        PackStatus(48.0, 0.0, "standby", "open", alive_counter=16),
        PackStatus(48.0, 0.0, "standby", "open", alive_counter=-1),
        BmsInfo(99, 16, (1, 0, 0)),
        BmsInfo(1000, 0, (1, 0, 0)),
        BmsInfo(1000, 257, (1, 0, 0)),
        BmsInfo(1000, 16, (1, 0, 256)),
        BmsInfo(1000, 16, (1, 0)),  # type: ignore[arg-type]
        BmsInfo(1000, 16, (1, 0, 0), protocol_version=0),
        CommandAck(0x100, "ok"),
        CommandAck(0x200, "maybe"),
        CommandAck(0x200, "ok", sequence=256),
        SetReportingPeriod(99),
        SetReportingPeriod(60001),
        BalancingRequest("turbo"),
        BalancingRequest("manual", cell_mask=2**32),
        BalancingRequest("manual", cell_mask=-1),
        ContactorRequest(close=1),  # type: ignore[arg-type]
        ContactorRequest(close=True, sequence=-1),
        Reset("hard"),
        Reset("soft", sequence=300),
    ],
    ids=repr,
)
def test_invalid_messages_raise_codec_error(message: B2lMessage) -> None:
    with pytest.raises(CanCodecError):
        encode(message)


def test_non_messages_raise_codec_error() -> None:
    with pytest.raises(CanCodecError):
        encode(object())  # type: ignore[arg-type]
    with pytest.raises(CanCodecError):
        decode((0x100, bytes(8)))  # type: ignore[arg-type]
    with pytest.raises(CanCodecError):
        decode(CanFrame(0x100, 12345))  # type: ignore[arg-type]
    with pytest.raises(CanCodecError):
        decode(CanFrame("0x100", bytes(8)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (CanFrame(0x7FF, bytes(8)), "unknown arbitration id"),
        (CanFrame(0x100, bytes(8), is_extended_id=True), "extended"),
        (CanFrame(0x800, bytes(8)), "11-bit"),
        (CanFrame(-1, bytes(8)), "11-bit"),
        (CanFrame(0x100, bytes(9)), "expected 8 data bytes"),
        (CanFrame(0x110, b""), "expected 8 data bytes"),
        (CanFrame(0x100, b"\xff" * 8), "PackVoltage"),
        (CanFrame(0x100, bytes([0, 0, 0, 0, 0x0F, 0, 0, 0])), "BmsState"),
        (CanFrame(0x130, bytes([0, 1, 0, 0, 0, 0, 0, 0])), "AckedMessageId"),
        (CanFrame(0x120, bytes(8)), "ReportingPeriod"),
    ],
)
def test_bad_frames_are_rejected_with_a_clear_message(frame: CanFrame, match: str) -> None:
    with pytest.raises(CanCodecError, match=match):
        decode(frame)


@PROPERTY
@given(message=any_message, length=st.integers(0, 7))
def test_truncated_frames_raise_codec_error(message: B2lMessage, length: int) -> None:
    frame = encode(message)
    with pytest.raises(CanCodecError, match="data bytes"):
        decode(CanFrame(frame.arbitration_id, frame.data[:length]))


def _decode_or_codec_error(frame: CanFrame) -> None:
    try:
        decoded = decode(frame)
    except CanCodecError:
        return
    # Anything that decodes is a valid message: it re-encodes to the same values.
    assert isinstance(decoded, MESSAGE_TYPES)
    assert decode(encode(decoded)) == decoded


@PROPERTY
@given(
    arbitration_id=st.integers(-(2**31), 2**31),
    data=st.binary(max_size=16),
    is_extended_id=st.booleans(),
)
def test_random_frames_raise_only_codec_error(
    arbitration_id: int, data: bytes, is_extended_id: bool
) -> None:
    _decode_or_codec_error(CanFrame(arbitration_id, data, is_extended_id))


@settings(deadline=None, max_examples=500)
@given(
    arbitration_id=st.sampled_from([cls.FRAME_ID for cls in MESSAGE_TYPES]),
    data=st.binary(min_size=8, max_size=8),
)
def test_random_payloads_on_known_ids_raise_only_codec_error(
    arbitration_id: int, data: bytes
) -> None:
    _decode_or_codec_error(CanFrame(arbitration_id, data))


@PROPERTY
@given(
    voltage_v=st.floats(allow_nan=True, allow_infinity=True),
    temperature_c=st.floats(allow_nan=True, allow_infinity=True),
    cell_index=st.integers(-(2**70), 2**70),
)
def test_arbitrary_values_encode_or_raise_codec_error(
    voltage_v: float, temperature_c: float, cell_index: int
) -> None:
    message = CellVoltTemp(cell_index, voltage_v, temperature_c)
    try:
        frame = encode(message)
    except CanCodecError:
        return
    # cantools accepts a millionth of an LSB beyond a limit (it rounds onto the limit).
    assert 0 <= cell_index <= 255
    assert -1e-9 <= voltage_v <= 6.5 + 1e-9
    assert -55 - 1e-8 <= temperature_c <= 150 + 1e-8
    assert_same_message(message, decode(frame))
