"""``b2l protocol``: show the wire contracts and decode frames by hand at a bench."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``b2l protocol show|decode-can|decode-serial``."""
    protocol = subparsers.add_parser(
        "protocol", help="the CAN, serial and MQTT contracts; decode frames by hand"
    )
    commands = protocol.add_subparsers(dest="protocol_command", metavar="COMMAND", required=True)
    show = commands.add_parser("show", help="print the messages of every wire protocol")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)

    can = commands.add_parser("decode-can", help="decode one CAN frame with the project's DBC")
    can.add_argument("arbitration_id", help="frame id, e.g. 0x110")
    can.add_argument("data", help="payload as hex, e.g. 0300e40c...")
    can.set_defaults(handler=_decode_can)

    serial = commands.add_parser("decode-serial", help="decode Pillar 1 serial frames from hex")
    serial.add_argument("data", help="raw bytes as hex, one or more 0x00-delimited frames")
    serial.set_defaults(handler=_decode_serial)


def _contracts() -> dict[str, Any]:
    from twin.protocols import can_codec, mqtt_topics, serial_codec

    can_messages = [
        {
            "frame_id": f"0x{m.frame_id:03X}",
            "name": m.name,
            "senders": list(m.senders),
            "cycle_time_ms": m.cycle_time,
            "signals": [
                {
                    "name": s.name,
                    "unit": s.unit or "",
                    "scale": s.scale,
                    "min": s.minimum,
                    "max": s.maximum,
                    "multiplexer": bool(s.is_multiplexer),
                }
                for s in m.signals
            ],
        }
        for m in sorted(can_codec.load_database().messages, key=lambda m: m.frame_id)
    ]
    serial_messages = [{"type": f"0x{t.value:02X}", "name": t.name} for t in serial_codec.MsgType]
    topics = [f"{mqtt_topics.PREFIX}/{{battery_id}}/{c.value}" for c in mqtt_topics.Channel]
    return {
        "can": {"messages": can_messages},
        "serial": {
            "version": serial_codec.PROTOCOL_VERSION,
            "max_frame_bytes": serial_codec.MAX_FRAME_LEN,
            "messages": serial_messages,
        },
        "mqtt": {"topics": topics, "qos": 1},
    }


def _show(args: argparse.Namespace) -> int:
    contracts = _contracts()
    if args.json:
        print(json.dumps(contracts, indent=2))
        return 0
    print("Pillar 2 CAN (twin/protocols/b2l_pillar2.dbc, docs/can-protocol.md)")
    for m in contracts["can"]["messages"]:
        period = f"{m['cycle_time_ms']} ms" if m["cycle_time_ms"] else "on event"
        print(f"  {m['frame_id']}  {m['name']:<24} from {','.join(m['senders']):<5} {period}")
        for s in m["signals"]:
            unit = f" [{s['unit']}]" if s["unit"] else ""
            mux = "  (multiplexer)" if s["multiplexer"] else ""
            print(f"          {s['name']}{unit}  scale {s['scale']:g}{mux}")
    serial = contracts["serial"]
    print(
        f"\nPillar 1 serial (docs/serial-protocol.md): COBS + CRC-16/CCITT-FALSE, version "
        f"{serial['version']}, at most {serial['max_frame_bytes']} bytes a frame"
    )
    for m in serial["messages"]:
        print(f"  {m['type']}  {m['name']}")
    print("\nMQTT 5, QoS 1")
    for t in contracts["mqtt"]["topics"]:
        print(f"  {t}")
    return 0


def _hex(text: str) -> bytes:
    from twin.errors import CodecError

    try:
        return bytes.fromhex(text.replace(" ", "").replace(":", ""))
    except ValueError as exc:
        raise CodecError(f"not hex: {exc}") from None


def _decode_can(args: argparse.Namespace) -> int:
    from twin.errors import CodecError
    from twin.protocols.can_codec import CanFrame, decode

    try:
        arbitration_id = int(args.arbitration_id, 0)
    except ValueError:
        raise CodecError(f"not a frame id: {args.arbitration_id!r}") from None
    print(decode(CanFrame(arbitration_id, _hex(args.data))))
    return 0


def _decode_serial(args: argparse.Namespace) -> int:
    from twin.protocols.serial_codec import FrameDecoder

    decoder = FrameDecoder()
    data = _hex(args.data)
    items = decoder.feed(data if data.endswith(b"\x00") else data + b"\x00")
    for item in items:
        print(item if not isinstance(item, Exception) else f"error: {item}")
    return 0 if decoder.bad_frames == 0 else 1
