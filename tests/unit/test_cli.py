"""The ``b2l`` command line: help everywhere, schema export, protocol tools, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from b2l.cli import build_parser, main
from twin.protocols import can_codec, serial_codec

pytestmark = pytest.mark.unit


def subcommand_paths(parser: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser tree (``("schema", "export")``, ...)."""
    import argparse

    paths = [prefix]
    for action in getattr(parser, "_actions", []):
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += subcommand_paths(sub, (*prefix, name))
    return paths


def test_help_at_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    paths = subcommand_paths(build_parser())
    assert ("schema", "export") in paths and ("protocol", "show") in paths
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        assert "usage: b2l" in capsys.readouterr().out


def test_schema_export_writes_valid_json_schemas(tmp_path: Path) -> None:
    assert main(["schema", "export", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob("*.schema.json"))
    assert {f.name for f in files} >= {"UplinkBatch.schema.json", "DiagnosticSizing.schema.json"}
    for path in files:
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))
    batch = json.loads((tmp_path / "UplinkBatch.schema.json").read_text())
    record = {"kind": "event", "seq": 1, "timestamp": "2026-01-01T00:00:00Z", "event_type": "boot"}
    jsonschema.validate({"battery_id": "B-1", "records": [record]}, batch)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"battery_id": "B/1", "records": [record]}, batch)


def test_protocol_show_lists_every_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocol", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    names = {m["name"] for m in shown["can"]["messages"]}
    assert names == {m.name for m in can_codec.load_database().messages}
    assert {m["name"] for m in shown["serial"]["messages"]} == {
        t.name for t in serial_codec.MsgType
    }
    assert "b2l/v1/{battery_id}/commands" in shown["mqtt"]["topics"]


def test_decode_can_and_serial_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    frame = can_codec.encode(can_codec.SetReportingPeriod(period_ms=2000))
    assert main(["protocol", "decode-can", hex(frame.arbitration_id), frame.data.hex()]) == 0
    assert "period_ms=2000" in capsys.readouterr().out
    wire = serial_codec.encode_frame(serial_codec.SetReportingPeriod(period_ms=500), seq=9)
    assert main(["protocol", "decode-serial", wire.hex()]) == 0
    assert "period_ms=500" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["protocol", "decode-can", "0x7FF", "00"],
        ["protocol", "decode-can", "zzz", "00"],
        ["protocol", "decode-can", "0x110", "not-hex"],
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("b2l: error: ") and "Traceback" not in err


def test_garbage_serial_bytes_exit_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocol", "decode-serial", "0102030405"]) == 1
    assert "error:" in capsys.readouterr().out
