"""``b2l sim pack`` end to end: the command on a real link, read by plain library clients.

* CAN: the command runs in-process (``b2l.cli.main``) on python-can's ``virtual`` interface; a
  plain ``can.Bus`` on the same channel receives, cantools decodes with the DBC file directly,
  and the frames are compared with the ground truth the command wrote.
* Serial: the command runs as a subprocess on ``--serial tcp:0``; its first line says the
  ``socket://`` URL, pyserial connects, ``twin.protocols.serial_codec`` decodes.

Each scenario carries faults, and the tests find them in the traffic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import cantools
import numpy as np
import pytest
import serial
import yaml
from cantools.database.can import Database

from b2l.cli import main
from twin.protocols.serial_codec import (
    CellMeasurements,
    FaultFlags,
    Frame,
    FrameDecoder,
    Status,
)

pytestmark = pytest.mark.hil

ROOT = Path(__file__).resolve().parents[2]
DBC_PATH = ROOT / "twin" / "protocols" / "b2l_pillar2.dbc"
STATUS, CELL_VT, CELL_STATE, INFO, ACK = 0x100, 0x110, 0x111, 0x120, 0x130
# default sensor model: 5 sigma + quantisation + DBC resolution, + drift between truth lines
V_TOL = 5 * 0.002 + 0.001 + 0.001 + 0.002
I_TOL = 5 * 0.02 + 0.01 + 0.05
WALL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def db() -> Database:
    database = cantools.database.load_file(str(DBC_PATH))
    assert isinstance(database, Database)
    return database


@pytest.fixture
def edge() -> Iterator[tuple[can.BusABC, str]]:
    """The edge's end of a fresh virtual channel, and the channel's name (it ends in digits, as
    ``can0`` does: a BLF log must not take it for a channel number)."""
    channel = f"b2l-cli-{uuid.uuid4().int % 10**12}"
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        yield bus, channel
    finally:
        bus.shutdown()


def _write(path: Path, scenario: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(scenario))
    return path


def _truth(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _line_at(truth: list[dict[str, Any]], time_s: float) -> dict[str, Any]:
    """The ground-truth line nearest ``time_s``."""
    return min(truth, key=lambda line: abs(line["time_s"] - time_s))


def _drain(bus: can.BusABC, db: Database) -> list[tuple[can.Message, dict[str, Any] | None]]:
    frames = []
    while (msg := bus.recv(timeout=0)) is not None:
        try:
            signals = db.decode_message(msg.arbitration_id, bytes(msg.data))
        except Exception:  # garbled frames: cantools refuses them in several ways
            signals = None
        assert isinstance(signals, dict | None)
        frames.append((msg, signals))
    return frames


def test_can_traffic_decodes_with_cantools_and_matches_the_ground_truth(
    tmp_path: Path, edge: tuple[can.BusABC, str], db: Database
) -> None:
    edge_bus, channel = edge
    scenario = _write(
        tmp_path / "open-wire.yaml",
        {
            "seed": 5,
            "duration_s": 30,
            "ground_truth_period_s": 0.5,
            "pack": {"cells_in_series": 4, "initial_soc": 0.6},
            "load": {"profile": "constant", "current_a": -3.0},
            "bms": {"reporting_period_ms": 200},
            "faults": [
                {"kind": "frame_corruption", "start_s": 5, "duration_s": 3, "magnitude": 0.5},
                {"kind": "open_sense_wire", "start_s": 20, "cell_index": 1},
            ],
        },
    )
    truth_path, summary_path = tmp_path / "truth.jsonl", tmp_path / "summary.json"
    argv = ["sim", "pack", "--can", f"virtual:{channel}", "--scenario", str(scenario)]
    argv += ["--ground-truth", str(truth_path), "-o", str(summary_path), "--quiet"]
    assert main(argv) == 0
    frames = _drain(edge_bus, db)
    truth = _truth(truth_path)
    summary = json.loads(summary_path.read_text())
    assert summary["link_stats"]["sent"] == len(frames) > 1000
    assert summary["simulated_s"] == 30.0 and summary["ground_truth_lines"] == len(truth) >= 59
    origin = truth[0]["timestamp"] - truth[0]["time_s"]

    def t(msg: can.Message) -> float:
        return msg.timestamp - origin

    # garbled frames only while frame_corruption is active; everything else decodes
    garbled = [t(m) for m, s in frames if s is None]
    assert garbled and all(5.0 - 1e-6 <= x < 8.0 for x in garbled)
    assert all(len(m.data) < 8 for m, s in frames if s is None)
    good = [(t(m), m.arbitration_id, s) for m, s in frames if s is not None]

    healthy = [(x, s) for x, i, s in good if i == CELL_VT and 1.0 < x < 20.0]
    assert len(healthy) > 4 * 50
    errors = [
        s["CellVoltage"] - _line_at(truth, x)["voltage_v"][s["CellIndex"]] for x, s in healthy
    ]
    assert max(abs(e) for e in errors) < V_TOL
    assert abs(float(np.mean(errors))) < 0.002
    currents = [
        (s["PackCurrent"], _line_at(truth, x)["current_a"])
        for x, i, s in good
        if i == STATUS and 1.0 < x < 20.0
    ]
    assert all(abs(a - b) < I_TOL for a, b in currents) and currents[0][1] == pytest.approx(-3.0)
    socs = [
        s["CellSoC"] - _line_at(truth, x)["soc"][s["CellIndex"]]
        for x, i, s in good
        if i == CELL_STATE and 10.0 < x < 20.0
    ]
    assert max(abs(e) for e in socs) < 0.05

    # the open sense wire above cell 1: ~0 V on channel 1, cells 1 + 2 on channel 2, a hard fault
    after = [(x, s) for x, i, s in good if i == CELL_VT and x > 20.3]
    low = [s["CellVoltage"] for x, s in after if s["CellIndex"] == 1]
    assert low and max(low) < 0.05
    for x, s in after:
        if s["CellIndex"] == 2:
            both = sum(_line_at(truth, x)["voltage_v"][1:3])  # clipped at the ADC's 6.5 V
            assert abs(s["CellVoltage"] - min(both, 6.5)) < 2 * V_TOL
    status = [(x, s) for x, i, s in good if i == STATUS]
    first = min(x for x, s in status if s["FaultOpenSenseWire"])
    assert 20.0 <= first <= 21.2
    assert not any(s["FaultOpenSenseWire"] for x, s in status if x < 20.0)
    assert {str(s["BmsState"]) for x, s in status if x > first + 0.2} == {"fault"}
    assert _line_at(truth, 29.0)["current_a"] == 0.0  # contactors open
    assert summary["bms"]["flags"] == ["open_sense_wire", "sensor_fault"]


def test_can_commands_in_real_time_with_a_blf_log(
    tmp_path: Path, edge: tuple[can.BusABC, str], db: Database
) -> None:
    """The command in a thread at 20x real time obeys EDGE_SetReportingPeriod; the .blf log
    holds every frame sent and the command received."""
    edge_bus, channel = edge
    log_path, summary_path = tmp_path / "traffic.blf", tmp_path / "summary.json"
    argv = ["sim", "pack", "--can", f"virtual:{channel}", "--cells", "4"]
    argv += ["--realtime", "20", "--duration", "20s", "--can-log", str(log_path)]
    argv += ["-o", str(summary_path), "--quiet", "--current", "-1"]
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(main(argv)))
    wall_start = time.monotonic()
    runner.start()
    try:
        first = edge_bus.recv(timeout=WALL_TIMEOUT_S)
        assert first is not None
        message = db.get_message_by_name("EDGE_SetReportingPeriod")
        data = message.encode({"RequestedPeriod": 250, "CommandSequence": 9})
        edge_bus.send(can.Message(arbitration_id=message.frame_id, data=data, is_extended_id=False))
    finally:
        runner.join(WALL_TIMEOUT_S)
    wall_s = time.monotonic() - wall_start
    assert result == [0]
    assert wall_s >= 20.0 / 20.0 * 0.9  # paced by the wall clock, not as fast as possible
    frames = [(first, db.decode_message(first.arbitration_id, bytes(first.data)))]
    frames += _drain(edge_bus, db)
    acks = [s for m, s in frames if m.arbitration_id == ACK]
    assert acks and acks[0]["AckSequence"] == 9 and str(acks[0]["AckResult"]) == "ok"
    periods = {s["ReportingPeriod"] for m, s in frames if m.arbitration_id == INFO and s}
    assert periods == {1000, 250}
    with can.LogReader(log_path) as reader:
        logged = list(reader)
    commands = [m for m in logged if m.arbitration_id == message.frame_id]
    assert len(commands) == 1 and bytes(commands[0].data) == bytes(data)
    summary = json.loads(summary_path.read_text())
    assert len(logged) == summary["link_stats"]["sent"] + 1 == len(frames) + 1
    assert summary["realtime_speedup"] == 20.0 and summary["link_stats"]["commands"] == 1


def test_serial_over_tcp_from_a_subprocess_shows_its_faults(tmp_path: Path) -> None:
    scenario = _write(
        tmp_path / "serial.yaml",
        {
            "seed": 11,
            "ground_truth_period_s": 0.5,
            "pack": {"cells_in_series": 6, "initial_soc": 0.5},
            "load": {"profile": "constant", "current_a": 2.0},
            "bms": {"reporting_period_ms": 500},
            "serial": {"status_period_s": 1.0},
            "faults": [
                {"kind": "frame_corruption", "start_s": 8, "duration_s": 4, "magnitude": 0.8},
                {
                    "kind": "sensor_offset",
                    "start_s": 14,
                    "cell_index": 2,
                    "sensor": "voltage",
                    "magnitude": 0.4,
                },
            ],
        },
    )
    truth_path, summary_path = tmp_path / "truth.jsonl", tmp_path / "summary.json"
    command = [sys.executable, "-m", "b2l.cli", "sim", "pack", "--serial", "tcp:0"]
    command += ["--scenario", str(scenario), "--realtime", "10", "--duration", "20s"]
    command += ["--ground-truth", str(truth_path), "-o", str(summary_path), "--quiet"]
    decoder = FrameDecoder()
    frames: list[Frame] = []
    bad = 0
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            announce = process.stdout.readline() if process.stdout else ""
            assert announce.startswith("Pillar 1 BMS on socket://127.0.0.1:"), announce
            url = announce.split(" on ")[1].strip()
            port = serial.serial_for_url(url, timeout=0.2)
            try:
                deadline = time.monotonic() + WALL_TIMEOUT_S
                while time.monotonic() < deadline:
                    try:
                        data = port.read(65536)
                    except serial.SerialException:  # the simulator closed the line: done
                        break
                    for item in decoder.feed(data):
                        if isinstance(item, Frame):
                            frames.append(item)
                        else:
                            bad += 1
            finally:
                port.close()
            out, err = process.communicate(timeout=WALL_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, err
    assert "faults injected: frame_corruption@8s, sensor_offset@14s" in out
    summary = json.loads(summary_path.read_text())
    assert summary["protocol"] == "pillar1-serial" and summary["wall_s"] >= 1.8
    truth = _truth(truth_path)

    # corrupted frames are dropped by the decoder; the good ones go on arriving
    assert bad >= 3 and summary["link_stats"]["corrupted_frames"] >= 3
    measurements = [f.message for f in frames if isinstance(f.message, CellMeasurements)]
    assert len(measurements) >= 25
    checked = offset = 0
    for m in measurements:
        line = _line_at(truth, m.uptime_ms / 1000.0)
        for cell in m.cells:
            error = cell.voltage_v - line["voltage_v"][cell.cell_id]
            if cell.cell_id == 2 and m.uptime_ms > 14_200:
                assert abs(error - 0.4) < V_TOL  # the offset sensor reads 0.4 V high
                offset += 1
            else:
                assert abs(error) < V_TOL
                assert abs(cell.soc - line["soc"][cell.cell_id]) < 0.05
            if 1_000 < m.uptime_ms < 14_000:  # contactors closed, until the sensor fault
                assert cell.current_a == pytest.approx(2.0, abs=I_TOL)
            checked += 1
    assert checked >= 150 and offset >= 5
    # sum of cells != pack voltage: the BMS flags a sensor fault in STATUS
    flags = [
        (f.message.uptime_ms, f.message.fault_flags)
        for f in frames
        if isinstance(f.message, Status)
    ]
    assert any(u > 14_000 and v & FaultFlags.SENSOR_FAULT for u, v in flags)
    assert not any(u < 14_000 and v & FaultFlags.SENSOR_FAULT for u, v in flags)
    assert _line_at(truth, 12.0)["current_a"] == pytest.approx(2.0)
    assert _line_at(truth, 19.0)["current_a"] == 0.0
