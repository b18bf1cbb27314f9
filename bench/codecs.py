"""Benchmark the wire codecs: frames per second, encode and decode, CAN and serial.

Run on demand (not in the test suite):  .venv/bin/python bench/codecs.py [--seconds 1.0] [--json]

Each figure is reported with a baseline measured in the same run, because the machines are noisy:
for CAN, cantools' own ``encode_message``/``decode_message`` on the same signals (our codec adds
validation and typed records on top of it); for serial, a bare ``struct.pack`` of the same body
(the floor any Python codec pays).
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from collections.abc import Callable

from twin.protocols import can_codec, serial_codec


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after a short warm-up)."""
    for _ in range(200):
        fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(500):
            fn()
        n += 500
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    s = args.seconds

    db = can_codec.load_database()
    cell = can_codec.CellVoltTemp(cell_index=7, voltage_v=3.712, temperature_c=24.5)
    frame = can_codec.encode(cell)
    raw = db.get_message_by_name("BMS_CellVoltTemp")
    signals = db.decode_message(frame.arbitration_id, frame.data)

    cells = tuple(
        serial_codec.CellRecord(
            cell_id=i,
            voltage_v=3.7,
            temperature_c=25.0,
            current_a=-2.0,
            sot=0.0,
            phase=0.0,
            soc=0.5,
            sos=1.0,
        )
        for i in range(serial_codec.MAX_CELLS_PER_FRAME)
    )
    measurements = serial_codec.CellMeasurements(uptime_ms=123_456, cells=cells)
    wire = serial_codec.encode_frame(measurements, seq=42)
    body = struct.Struct("<BBHIB" + "H7f" * len(cells) + "H")
    flat = [v for i in range(len(cells)) for v in (i, 3.7, 25.0, -2.0, 0.0, 0.0, 0.5, 1.0)]

    results = {
        "can_encode_per_s": rate(lambda: can_codec.encode(cell), s),
        "can_decode_per_s": rate(lambda: can_codec.decode(frame), s),
        "cantools_encode_per_s": rate(lambda: raw.encode(signals, strict=True), s),
        "cantools_decode_per_s": rate(
            lambda: db.decode_message(frame.arbitration_id, frame.data), s
        ),
        "serial_encode_per_s": rate(lambda: serial_codec.encode_frame(measurements, seq=42), s),
        "serial_decode_per_s": rate(lambda: serial_codec.decode_frame(wire), s),
        "struct_pack_per_s": rate(lambda: body.pack(1, 2, 42, 123_456, 8, *flat, 0), s),
        "serial_cells_per_frame": len(cells),
    }
    results["can_encode_vs_cantools"] = (
        results["can_encode_per_s"] / results["cantools_encode_per_s"]
    )
    results["can_decode_vs_cantools"] = (
        results["can_decode_per_s"] / results["cantools_decode_per_s"]
    )
    results["serial_encode_vs_struct"] = (
        results["serial_encode_per_s"] / results["struct_pack_per_s"]
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for key, value in results.items():
        print(f"{key:<28} {value:>14,.2f}" if isinstance(value, float) else f"{key:<28} {value}")


if __name__ == "__main__":
    main()
