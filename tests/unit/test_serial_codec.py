"""Pillar 1 serial frame codec: round trips, golden bytes, CRC, fuzzing, streaming, loop://."""

from __future__ import annotations

import binascii
import itertools
import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import serial
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.errors import SerialCodecError
from twin.protocols.serial_codec import (
    ALL_CELLS,
    MAX_BODY_LEN,
    MAX_CELLS_PER_FRAME,
    MAX_ENCODED_LEN,
    MAX_FRAME_LEN,
    MAX_RC_PAIRS,
    PROTOCOL_VERSION,
    Ack,
    AckResult,
    CellMeasurements,
    CellRecord,
    EcmUpdate,
    EisDone,
    EisRow,
    EisStart,
    EisStatus,
    Frame,
    FrameDecoder,
    Message,
    MsgType,
    RcPair,
    SetReportingPeriod,
    Status,
    crc16_ccitt_false,
    decode_frame,
    encode_frame,
    payload_size,
)

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "serial-protocol.md"

# ----------------------------------------------------------------------------- strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
seqs = st.integers(0, 0xFFFF)

cell_records = st.builds(CellRecord, u16, f32, f32, f32, f32, f32, f32, f32)
rc_pairs = st.builds(RcPair, f32, f32)

MESSAGE_STRATEGIES: dict[MsgType, st.SearchStrategy[Message]] = {
    MsgType.STATUS: st.builds(Status, u8, u8, u8, u16, u32, u16, u32, u32, u32),
    MsgType.CELL_MEASUREMENTS: st.builds(
        CellMeasurements,
        u32,
        st.lists(cell_records, min_size=1, max_size=MAX_CELLS_PER_FRAME).map(tuple),
    ),
    MsgType.EIS_ROW: st.builds(EisRow, u32, u16, u16, f32, f32, f32, f32, f32, f32, f32),
    MsgType.EIS_DONE: st.builds(EisDone, u32, st.sampled_from(EisStatus), u16),
    MsgType.EIS_START: st.builds(EisStart, u32, u16, f32, f32, u8, f32),
    MsgType.ECM_UPDATE: st.builds(
        EcmUpdate,
        u32,
        st.one_of(u16, st.just(ALL_CELLS)),
        f32,
        st.lists(rc_pairs, min_size=1, max_size=MAX_RC_PAIRS).map(tuple),
    ),
    MsgType.SET_REPORTING_PERIOD: st.builds(SetReportingPeriod, u32),
    MsgType.ACK: st.builds(Ack, u16, st.sampled_from(MsgType), st.sampled_from(AckResult), u16),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())


def f32_round(x: float) -> float:
    """Nearest float32, as a Python float."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def frame_from_body(body_without_crc: bytes) -> bytes:
    """Wire frame around any body, with a correct CRC (built without the codec)."""
    crc = binascii.crc_hqx(body_without_crc, 0xFFFF)
    return bytes(cobs.encode(body_without_crc + struct.pack("<H", crc))) + b"\x00"


def body_of(frame: bytes) -> bytes:
    """Decoded body (with CRC) of a wire frame."""
    return bytes(cobs.decode(frame.rstrip(b"\x00")))


def decode_or_error(frame: bytes) -> Frame | SerialCodecError:
    """Decode; SerialCodecError is returned, any other exception propagates (and fails)."""
    try:
        return decode_frame(frame)
    except SerialCodecError as exc:
        return exc


# ----------------------------------------------------------------------------- golden frame

GOLDEN_MESSAGE = CellMeasurements(
    uptime_ms=1000,
    cells=(
        CellRecord(
            cell_id=3,
            voltage_v=3.5,
            temperature_c=25.0,
            current_a=-2.5,
            sot=0.0,
            phase=0.0,
            soc=0.5,
            sos=1.0,
        ),
    ),
)
GOLDEN_SEQ = 7
GOLDEN_BODY = bytes.fromhex(
    "01 02 0700"  # version 1, CELL_MEASUREMENTS, seq 7
    "e8030000 01"  # uptime_ms 1000, 1 cell
    "0300 00006040 0000c841 000020c0"  # cell 3, 3.5 V, 25.0 degC, -2.5 A
    "00000000 00000000 0000003f 0000803f"  # sot 0, phase 0, soc 0.5, sos 1.0
    "ac22"  # CRC-16/CCITT-FALSE 0x22AC, little-endian
)
GOLDEN_FRAME_HEX = (
    "04 01 02 07 03 e8 03 01 03 01 03 01 01 03 60 40 01 03 c8 41 01 03 20 c0 "
    "01 01 01 01 01 01 01 01 01 01 02 3f 01 05 80 3f ac 22 00"
)


def test_crc_known_answer() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1


def test_golden_frame() -> None:
    frame = encode_frame(GOLDEN_MESSAGE, GOLDEN_SEQ)
    assert frame == bytes.fromhex(GOLDEN_FRAME_HEX)
    assert body_of(frame) == GOLDEN_BODY
    assert crc16_ccitt_false(GOLDEN_BODY[:-2]) == 0x22AC
    assert decode_frame(frame) == Frame(PROTOCOL_VERSION, GOLDEN_SEQ, GOLDEN_MESSAGE)


def test_doc_shows_golden_frame_and_payload_sizes() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert GOLDEN_FRAME_HEX in " ".join(text.split())
    assert " ".join(GOLDEN_BODY.hex(" ").split()) in " ".join(text.split())
    for msg_type in MsgType:
        row = re.search(rf"^\| 0x{msg_type:02X} \| `{msg_type.name}` \|.*$", text, re.MULTILINE)
        assert row is not None, msg_type.name
        cells = [c.strip() for c in row.group(0).strip("|").split("|")]
        fixed = payload_size(msg_type, 0)
        per_record = payload_size(msg_type, 1) - fixed
        expected = str(fixed) if per_record == 0 else f"{fixed} + {per_record}·n"
        assert expected in cells, (msg_type.name, cells)


# ----------------------------------------------------------------------------- round trips


def test_strategies_cover_every_type() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MsgType)


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
@given(data=st.data(), seq=seqs)
def test_round_trip_every_type(msg_type: MsgType, data: st.DataObject, seq: int) -> None:
    message = data.draw(MESSAGE_STRATEGIES[msg_type])
    assert message.MSG_TYPE is msg_type
    frame = encode_frame(message, seq)
    assert frame.endswith(b"\x00") and b"\x00" not in frame[:-1]
    assert len(frame) <= MAX_FRAME_LEN
    assert decode_frame(frame) == Frame(PROTOCOL_VERSION, seq, message)
    assert decode_frame(frame[:-1]) == Frame(PROTOCOL_VERSION, seq, message)
    assert decode_frame(frame).msg_type is msg_type


@given(
    values=st.lists(
        st.floats(min_value=-3.4e38, max_value=3.4e38, allow_nan=False), min_size=7, max_size=7
    )
)
def test_float64_inputs_decode_as_nearest_float32(values: list[float]) -> None:
    decoded = decode_frame(encode_frame(EisRow(1, 2, 3, *values), 0)).message
    assert isinstance(decoded, EisRow)
    assert decoded == EisRow(1, 2, 3, *(f32_round(v) for v in values))


def test_cell_measurements_capacity() -> None:
    cells = tuple(CellRecord(i, 3.6, 25.0, 1.0, 0.0, 0.0, 0.5, 1.0) for i in range(16))
    assert MAX_CELLS_PER_FRAME == 8
    frame = encode_frame(CellMeasurements(0, cells[:MAX_CELLS_PER_FRAME]), 0)
    assert len(body_of(frame)) <= MAX_BODY_LEN
    with pytest.raises(SerialCodecError, match=r"allowed 1\.\.8"):
        encode_frame(CellMeasurements(0, cells[: MAX_CELLS_PER_FRAME + 1]), 0)
    with pytest.raises(SerialCodecError, match=r"allowed 1\.\.8"):
        encode_frame(CellMeasurements(0, ()), 0)


# ----------------------------------------------------------------------------- encode rejects

OK_ROW = EisRow(1, 0, 2, 1000.0, 0.015625, -5.0, 0.0, 3.5, 3.5, 25.0)  # exact in float32


@pytest.mark.parametrize(
    ("message", "seq", "match"),
    [
        (EisRow(1, 0, 2, math.nan, 0.01, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "finite"),
        (EisRow(1, 0, 2, 1000.0, math.inf, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "finite"),
        (EisRow(1, 0, 2, 1000.0, -math.inf, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "finite"),
        (EisRow(1, 0, 2, 1e39, 0.01, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "float32"),
        (EisRow(1, 0, 2, "1", 0.01, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "float"),  # type: ignore[arg-type]
        (EisRow(-1, 0, 2, 1.0, 0.01, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "outside"),
        (EisRow(1, 0x10000, 2, 1.0, 0.01, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "outside"),
        (EisRow(1.5, 0, 2, 1.0, 0.01, -5.0, 0.0, 3.6, 3.6, 25.0), 0, "integer"),  # type: ignore[arg-type]
        (OK_ROW, -1, "seq"),
        (OK_ROW, 0x10000, "seq"),
        (EisDone(1, 7, 3), 0, "EisStatus"),  # type: ignore[arg-type]
        (Ack(1, 0x7F, AckResult.OK), 0, "MsgType"),  # type: ignore[arg-type]
        (EcmUpdate(1, ALL_CELLS, 0.01, ()), 0, "allowed 1..3"),
        (EcmUpdate(1, ALL_CELLS, 0.01, (RcPair(0.01, 1000.0),) * 4), 0, "allowed 1..3"),
        (EcmUpdate(1, 0, 0.01, ((0.01, 1000.0),)), 0, "holds a tuple"),  # type: ignore[arg-type]
        (CellMeasurements(0, (RcPair(1.0, 1.0),)), 0, "holds a RcPair"),  # type: ignore[arg-type]
        ("not a message", 0, "not a serial message"),
    ],
)
def test_encode_rejects(message: Any, seq: int, match: str) -> None:
    with pytest.raises(SerialCodecError, match=match):
        encode_frame(message, seq)


# ----------------------------------------------------------------------------- decode rejects

GOOD_DONE_BODY = bytes([1, MsgType.EIS_DONE, 5, 0]) + struct.pack("<IBH", 9, 0, 12)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "empty"),
        (b"\x00", "empty"),
        (b"\x05\x01\x02", "COBS"),
        (b"\x02\x00\x01\x00", "COBS"),  # zero inside the frame
        (bytes(cobs.encode(b"\x01\x02\x03")) + b"\x00", "truncated"),
        (b"\x01" * (MAX_ENCODED_LEN + 1), "exceeds"),
        (frame_from_body(GOOD_DONE_BODY)[:-3] + b"\x55\x55\x00", "bad CRC"),
        (frame_from_body(b"\x02" + GOOD_DONE_BODY[1:]), "unknown protocol version 2"),
        (frame_from_body(b"\x01\x7f" + GOOD_DONE_BODY[2:]), "unknown message type 0x7F"),
        (frame_from_body(GOOD_DONE_BODY + b"\x00"), "EIS_DONE payload is 8 bytes, expected 7"),
        (frame_from_body(GOOD_DONE_BODY[:-1]), "EIS_DONE payload is 6 bytes, expected 7"),
        (frame_from_body(GOOD_DONE_BODY[:4] + struct.pack("<IBH", 9, 3, 0)), "EisStatus"),
        (
            frame_from_body(b"\x01\x20\x00\x00" + struct.pack("<HBBH", 1, 0x55, 0, 0)),
            "MsgType",
        ),
        (
            frame_from_body(b"\x01\x13\x00\x00" + struct.pack("<I", 1000) + b"\x00"),
            "SET_REPORTING_PERIOD payload is 5 bytes, expected 4",
        ),
        (
            frame_from_body(b"\x01\x02\x00\x00" + struct.pack("<IB", 0, 0)),
            "count is 0",
        ),
        (
            frame_from_body(b"\x01\x02\x00\x00" + struct.pack("<IB", 0, 9) + bytes(30)),
            "count is 9",
        ),
        (
            frame_from_body(b"\x01\x02\x00\x00" + struct.pack("<IB", 0, 2) + bytes(30)),
            "expected 65 for 2 records",
        ),
        (frame_from_body(b"\x01\x02\x00\x00" + struct.pack("<I", 0)), "truncated"),
        (
            frame_from_body(
                b"\x01\x12\x00\x00" + struct.pack("<IHfBff", 1, 0, math.nan, 1, 1.0, 1.0)
            ),
            "r0_ohm is nan",
        ),
        (
            frame_from_body(
                b"\x01\x12\x00\x00" + struct.pack("<IHfBff", 1, 0, 1.0, 1, math.inf, 1.0)
            ),
            "r_ohm is inf",
        ),
    ],
)
def test_decode_rejects(frame: bytes, match: str) -> None:
    with pytest.raises(SerialCodecError, match=match):
        decode_frame(frame)


def test_nan_bits_in_u32_field_are_a_number() -> None:
    """Only float32 fields are checked for NaN; the same bits in a u32 are a plain integer."""
    frame = frame_from_body(b"\x01\x13\x00\x00" + struct.pack("<f", math.nan))
    period = struct.unpack("<I", struct.pack("<f", math.nan))[0]
    assert decode_frame(frame).message == SetReportingPeriod(period)


# ----------------------------------------------------------------------------- fuzzing


@given(data=st.binary(max_size=2 * MAX_FRAME_LEN))
def test_random_bytes_only_serial_codec_error(data: bytes) -> None:
    result = decode_or_error(data)
    if isinstance(result, Frame):  # astronomically unlikely, but then it must be canonical
        assert encode_frame(result.message, result.seq) == data.rstrip(b"\x00") + b"\x00"


@given(message=messages, seq=seqs, data=st.data())
def test_truncated_frames_rejected(message: Message, seq: int, data: st.DataObject) -> None:
    frame = encode_frame(message, seq)
    cut = data.draw(st.integers(0, len(frame) - 2))
    assert isinstance(decode_or_error(frame[:cut]), SerialCodecError)


@given(message=messages, seq=seqs, data=st.data())
def test_single_bit_flip_in_body_always_caught(
    message: Message, seq: int, data: st.DataObject
) -> None:
    body = bytearray(body_of(encode_frame(message, seq)))
    bit = data.draw(st.integers(0, 8 * len(body) - 1))
    body[bit // 8] ^= 1 << (bit % 8)
    flipped = bytes(cobs.encode(bytes(body))) + b"\x00"
    result = decode_or_error(flipped)
    assert isinstance(result, SerialCodecError)
    assert "bad CRC" in str(result)


@settings(derandomize=True)
@given(message=messages, seq=seqs, data=st.data())
def test_bit_flips_on_the_wire_only_serial_codec_error(
    message: Message, seq: int, data: st.DataObject
) -> None:
    frame = bytearray(encode_frame(message, seq))
    bits = data.draw(st.lists(st.integers(0, 8 * len(frame) - 1), min_size=1, max_size=8))
    for bit in bits:
        frame[bit // 8] ^= 1 << (bit % 8)
    result = decode_or_error(bytes(frame))
    if len(bits) == 1:
        assert isinstance(result, SerialCodecError)


@pytest.mark.parametrize(
    "message",
    [
        GOLDEN_MESSAGE,
        Status(1, 2, 3, 16, 1000, 0x0011, 0, 4, 123_456),
        EisStart(42, 5, 0.1, 10_000.0, 10, 1.5),
        EcmUpdate(3, ALL_CELLS, 0.012, (RcPair(0.005, 1200.0), RcPair(0.008, 35_000.0))),
        Ack(7, MsgType.EIS_START, AckResult.BUSY, 4),
    ],
)
def test_every_single_bit_flip_on_the_wire_is_caught(message: Message) -> None:
    frame = encode_frame(message, 0x1234)
    for bit in range(8 * len(frame)):
        flipped = bytearray(frame)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert isinstance(decode_or_error(bytes(flipped)), SerialCodecError), bit


# ----------------------------------------------------------------------------- streaming


def feed_in_chunks(
    decoder: FrameDecoder, stream: bytes, cuts: list[int]
) -> list[Frame | SerialCodecError]:
    out: list[Frame | SerialCodecError] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for start, stop in itertools.pairwise(bounds):
        out += decoder.feed(stream[start:stop])
        assert decoder.pending_bytes <= MAX_ENCODED_LEN
    return out


@settings(derandomize=True)
@given(
    before=st.lists(st.tuples(messages, seqs), max_size=4),
    after=st.lists(st.tuples(messages, seqs), min_size=1, max_size=4),
    partial=st.tuples(messages, seqs, st.floats(0.0, 0.99)),
    garbage=st.binary(max_size=3 * MAX_FRAME_LEN),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_stream_recovers_after_garbage(
    before: list[tuple[Message, int]],
    after: list[tuple[Message, int]],
    partial: tuple[Message, int, float],
    garbage: bytes,
    cuts: list[int],
) -> None:
    part_msg, part_seq, fraction = partial
    part = encode_frame(part_msg, part_seq)[:-1]
    noise = part[: int(fraction * len(part))] + garbage + b"\x00"  # a frame cut by line noise
    stream = b"".join(
        [*(encode_frame(m, s) for m, s in before), noise, *(encode_frame(m, s) for m, s in after)]
    )
    decoder = FrameDecoder()
    results = feed_in_chunks(decoder, stream, cuts)
    frames = [r for r in results if isinstance(r, Frame)]
    errors = [r for r in results if isinstance(r, SerialCodecError)]
    assert [(f.message, f.seq) for f in frames] == before + after
    assert decoder.good_frames == len(frames)
    assert decoder.bad_frames == len(errors)
    assert decoder.pending_bytes == 0


@given(data=st.binary(max_size=4 * MAX_FRAME_LEN), cuts=st.lists(st.integers(0, 2000)))
def test_stream_never_raises_on_random_bytes(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    results = feed_in_chunks(decoder, data, cuts)
    assert decoder.good_frames + decoder.bad_frames == len(results)


def test_stream_bounds_buffer_without_delimiter() -> None:
    decoder = FrameDecoder()
    results: list[Frame | SerialCodecError] = []
    for _ in range(1000):
        results += decoder.feed(b"\x01" * 97)
        assert decoder.pending_bytes <= MAX_ENCODED_LEN
    assert len(results) == 1 and isinstance(results[0], SerialCodecError)
    assert decoder.pending_bytes == 0
    results = decoder.feed(b"\x01\x01\x00" + encode_frame(OK_ROW, 3))
    assert results == [Frame(PROTOCOL_VERSION, 3, OK_ROW)]
    assert (decoder.good_frames, decoder.bad_frames) == (1, 1)


def test_stream_byte_by_byte_and_idle_delimiters() -> None:
    decoder = FrameDecoder()
    stream = b"\x00\x00" + encode_frame(GOLDEN_MESSAGE, 1) + b"\x00" + encode_frame(OK_ROW, 2)
    results = [r for byte in stream for r in decoder.feed(bytes([byte]))]
    assert results == [
        Frame(PROTOCOL_VERSION, 1, GOLDEN_MESSAGE),
        Frame(PROTOCOL_VERSION, 2, OK_ROW),
    ]
    assert (decoder.good_frames, decoder.bad_frames) == (2, 0)


# ----------------------------------------------------------------------------- pyserial loop://


def test_pyserial_loop_round_trip() -> None:
    sent = [
        (Status(1, 0, 0, 16, 1000, 0, 0, 0, 5), 0),
        (GOLDEN_MESSAGE, 1),
        (EisStart(1, 3, 0.125, 1000.0, 5, 1.0), 2),
        (Ack(2, MsgType.EIS_START, AckResult.OK), 3),
        (OK_ROW, 4),
        (EisDone(1, EisStatus.OK, 1), 5),
    ]
    port = serial.serial_for_url("loop://", timeout=0.5)
    try:
        for message, seq in sent:
            port.write(encode_frame(message, seq))
        decoder = FrameDecoder()
        received: list[Frame | SerialCodecError] = []
        while len(received) < len(sent):
            chunk = port.read_until(b"\x00", size=MAX_FRAME_LEN)
            assert chunk, "loop:// read timed out"
            received += decoder.feed(chunk)
    finally:
        port.close()
    assert received == [Frame(PROTOCOL_VERSION, seq, message) for message, seq in sent]
