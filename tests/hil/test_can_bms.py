"""The Pillar 2 BMS simulator on python-can's virtual bus, checked with cantools alone.

Every test runs the simulator in virtual time (as fast as possible) on one in-process virtual
channel, receives its frames on a second ``can.Bus`` and decodes them with
``cantools.database.load_file`` on the DBC file directly (not the project's codec), then compares
with the ground truth the simulator wrote, within the sensor model. Commands are raw frames
encoded with cantools. Frames keep the simulator's clock (``preserve_timestamps=True``, origin 0),
so ``frame.t`` is the simulated time it was sent.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import cantools
import numpy as np
import pytest
from cantools.database.can import Database

from simulators.bms import BmsConfig, Fault, FaultKind, SensorModel
from simulators.can_bms import CanBmsSimulator
from simulators.clock import make_environment
from twin.errors import CanCodecError
from twin.protocols.can_codec import CanFrame, decode
from twin.safety import SafetyConfig

pytestmark = pytest.mark.hil

DBC_PATH = Path(__file__).resolve().parents[2] / "twin" / "protocols" / "b2l_pillar2.dbc"
STATUS, CELL_VT, CELL_STATE, INFO, ACK = 0x100, 0x110, 0x111, 0x120, 0x130
CELLS = 4

# sensor model of the default BmsConfig: 5 sigma + quantisation + DBC resolution
V_TOL = 5 * 0.002 + 0.001 + 0.001
T_TOL = 5 * 0.05 + 0.1 + 0.01
I_TOL = 5 * 0.02 + 0.01 + 0.05
PACK_V_TOL = 5 * 0.02 + 0.02 + 0.02


@dataclass
class Frame:
    """One received frame: simulated time, id, raw data, cantools signals (None: no decode)."""

    t: float
    id: int
    data: bytes
    signals: dict[str, Any] | None

    def __getitem__(self, name: str) -> Any:
        assert self.signals is not None, f"frame 0x{self.id:X} at {self.t} did not decode"
        value = self.signals[name]
        return value if isinstance(value, int | float) else str(value)


@pytest.fixture(scope="module")
def db() -> Database:
    database = cantools.database.load_file(str(DBC_PATH))
    assert isinstance(database, Database)
    return database


@pytest.fixture
def buses() -> Iterator[tuple[can.BusABC, can.BusABC]]:
    """(simulator bus, edge bus) on a fresh virtual channel; both shut down afterwards."""
    channel = f"b2l-{uuid.uuid4().hex}"
    sim_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    try:
        edge_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    except BaseException:
        sim_bus.shutdown()
        raise
    try:
        yield sim_bus, edge_bus
    finally:
        edge_bus.shutdown()
        sim_bus.shutdown()


class Bench:
    """A simulator, the edge side of the bus and everything received so far."""

    def __init__(self, buses: tuple[can.BusABC, can.BusABC], db: Database, **kwargs: Any) -> None:
        self.sim_bus, self.edge_bus = buses
        self.db = db
        self.truth_file = io.StringIO()
        kwargs.setdefault("cells_in_series", CELLS)
        kwargs.setdefault("soc", 0.6)
        kwargs.setdefault("ground_truth_period_s", 0.5)
        self.sim = CanBmsSimulator(
            self.sim_bus, ground_truth=self.truth_file, timestamp_origin_s=0.0, **kwargs
        )
        self.frames: list[Frame] = []

    def run(self, until_s: float) -> None:
        self.sim.run(until_s)
        while (msg := self.edge_bus.recv(timeout=0)) is not None:
            try:
                signals = self.db.decode_message(msg.arbitration_id, bytes(msg.data))
            except Exception:  # garbled frames: cantools may refuse them in many ways
                signals = None
            assert isinstance(signals, dict | None)
            self.frames.append(Frame(msg.timestamp, msg.arbitration_id, bytes(msg.data), signals))

    def command(self, name: str, signals: dict[str, Any], *, strict: bool = True) -> float:
        """Send an EDGE_ frame encoded by cantools; returns the simulated time."""
        message = self.db.get_message_by_name(name)
        data = message.encode(signals, strict=strict)
        self.edge_bus.send(
            can.Message(arbitration_id=message.frame_id, data=data, is_extended_id=False)
        )
        return float(self.sim.env.now)

    def of(self, frame_id: int, start: float = -1.0, end: float = 1e12) -> list[Frame]:
        return [f for f in self.frames if f.id == frame_id and start <= f.t < end]

    def cell(
        self, frame_id: int, index: int, start: float = -1.0, end: float = 1e12
    ) -> list[Frame]:
        return [f for f in self.of(frame_id, start, end) if f["CellIndex"] == index]

    def acks(self, start: float = -1.0) -> list[Frame]:
        return self.of(ACK, start)

    def truth(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.truth_file.getvalue().splitlines()]

    def truth_at(self, t: float) -> dict[str, Any]:
        lines = self.truth()
        return min(lines, key=lambda line: abs(line["time_s"] - t))

    def close(self) -> None:
        self.sim.close()


@pytest.fixture
def bench(buses: tuple[can.BusABC, can.BusABC], db: Database) -> Iterator[Any]:
    """``bench(**simulator_kwargs)`` -> a Bench; closed afterwards."""
    made: list[Bench] = []

    def make(**kwargs: Any) -> Bench:
        b = Bench(buses, db, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _flag(frame: Frame, name: str) -> bool:
    return bool(frame[name])


def _first(frames: list[Frame], name: str) -> float:
    """Time of the first PackStatus with fault flag ``name`` set (inf: never)."""
    return next((f.t for f in frames if _flag(f, name)), float("inf"))


def _profile(t: float) -> float:
    return -5.0 if t < 20.0 else 3.0


# --------------------------------------------------------------------------- traffic vs truth


def test_traffic_decodes_with_cantools_and_matches_ground_truth(bench: Any) -> None:
    b = bench(current_a=_profile)
    b.run(40.0)
    assert all(f.signals is not None for f in b.frames)
    assert {f.id for f in b.frames} == {STATUS, CELL_VT, CELL_STATE, INFO}

    status = b.of(STATUS)
    assert len(status) == 400
    assert np.allclose(np.diff([f.t for f in status]), 0.1)
    counters = [f["AliveCounter"] for f in status]
    assert all((b2 - a) % 16 == 1 for a, b2 in itertools.pairwise(counters))
    assert status[0]["BmsState"] == "init" and status[0]["ContactorState"] == "open"
    assert [f["BmsState"] for f in b.of(STATUS, 9.95, 19.95)] == ["discharging"] * 100
    assert {f["BmsState"] for f in b.of(STATUS, 21.0, 40.0)} == {"charging"}
    assert {f["ContactorState"] for f in b.of(STATUS, 1.0)} == {"closed"}

    info = b.of(INFO)
    assert len(info) == 40
    assert info[0]["ReportingPeriod"] == 1000 and info[0]["CellCount"] == CELLS
    assert info[0]["ProtocolVersion"] == 1 and info[0]["BalancingActive"] == 0

    for i in range(CELLS):  # one burst per second from the end of init (0.5 s)
        frames = b.cell(CELL_VT, i)
        assert [round(f.t, 6) for f in frames] == [k + 0.5 for k in range(40)]
        assert len(b.cell(CELL_STATE, i)) == 40

    for f in b.of(CELL_VT, 2.0):
        truth = b.truth_at(f.t)
        assert truth["time_s"] == pytest.approx(f.t)
        i = f["CellIndex"]
        assert f["CellVoltage"] == pytest.approx(truth["voltage_v"][i], abs=V_TOL)
        assert f["CellTemperature"] == pytest.approx(truth["temperature_c"][i], abs=T_TOL)
        assert f["CellBalancing"] == 0
    for f in b.of(CELL_STATE, 2.0):
        truth = b.truth_at(f.t)
        i = f["CellIndex"]
        assert f["CellSoC"] == pytest.approx(truth["soc"][i], abs=0.03)
        assert f["CellSoH"] == pytest.approx(truth["soh"][i], abs=1e-4)
        assert f["CellSoS"] == pytest.approx(1.0, abs=1e-3)
        assert f["CellEquivalentCycles"] == pytest.approx(truth["equivalent_cycles"], abs=0.1)
    for f in b.of(STATUS, 2.0):
        if abs(f.t - round(f.t * 2) / 2) > 1e-6 or abs(f.t - 20.0) < 0.2:
            continue  # compare at the ground-truth instants, away from the current step
        truth = b.truth_at(f.t)
        assert f["PackCurrent"] == pytest.approx(truth["current_a"], abs=I_TOL)
        assert f["PackVoltage"] == pytest.approx(truth["pack_voltage_v"], abs=PACK_V_TOL)
        assert not any(
            _flag(f, s.name)
            for s in b.db.get_message_by_frame_id(STATUS).signals
            if s.name.startswith("Fault")
        )
    assert b.truth()[-1]["bms"]["boot_count"] == 1


# --------------------------------------------------------------------------- commands


def test_reporting_period_command_changes_cell_frame_rate(bench: Any) -> None:
    b = bench()
    b.run(5.0)
    sent = b.command("EDGE_SetReportingPeriod", {"RequestedPeriod": 250, "CommandSequence": 7})
    b.run(10.0)
    [ack] = b.acks()
    assert ack["AckedMessageId"] == "EDGE_SetReportingPeriod"
    assert (ack["AckResult"], ack["AckSequence"]) == ("ok", 7)
    assert sent <= ack.t <= sent + 0.1
    first_new_info = next(f for f in b.of(INFO, sent) if f["ReportingPeriod"] == 250)
    assert first_new_info.t <= sent + 0.1  # BMS_Info right after the change
    assert len(b.cell(CELL_VT, 0, 1.0, 5.0)) == 4
    assert len(b.cell(CELL_VT, 0, 6.0, 10.0)) == 16
    assert len(b.cell(CELL_STATE, 3, 6.0, 10.0)) == 16

    sent = b.command(
        "EDGE_SetReportingPeriod", {"RequestedPeriod": 50, "CommandSequence": 8}, strict=False
    )
    b.run(11.0)
    sent_again = b.command(
        "EDGE_SetReportingPeriod", {"RequestedPeriod": 50, "CommandSequence": 8}, strict=False
    )
    b.run(12.0)
    acks = b.acks(sent)
    assert [(a["AckResult"], a["AckSequence"]) for a in acks] == [("invalid", 8)] * 2
    assert acks[1].t >= sent_again
    assert {f["ReportingPeriod"] for f in b.of(INFO, sent)} == {250}
    assert b.sim.link.stats.duplicates == 1


def test_contactor_commands_open_and_close(bench: Any) -> None:
    b = bench(current_a=-5.0)
    b.run(5.0)
    guard = 0xA55A
    b.command(
        "EDGE_ContactorRequest",
        {"ContactorCommand": 1, "ContactorGuard": 0x1234, "CommandSequence": 1},
        strict=False,
    )
    b.run(6.0)
    opened = b.command(
        "EDGE_ContactorRequest",
        {"ContactorCommand": "open", "ContactorGuard": guard, "CommandSequence": 2},
    )
    b.run(10.0)
    closed = b.command(
        "EDGE_ContactorRequest",
        {"ContactorCommand": "close", "ContactorGuard": guard, "CommandSequence": 3},
    )
    b.run(15.0)
    assert [(a["AckResult"], a["AckSequence"]) for a in b.acks()] == [
        ("invalid", 1),
        ("ok", 2),
        ("ok", 3),
    ]
    assert {f["ContactorState"] for f in b.of(STATUS, 5.0, opened)} == {"closed"}
    while_open = b.of(STATUS, opened + 0.2, closed)
    assert {f["ContactorState"] for f in while_open} == {"open"}
    assert {f["BmsState"] for f in while_open} == {"standby"}
    assert max(abs(f["PackCurrent"]) for f in while_open) <= I_TOL
    assert not b.truth_at(8.0)["contactor_closed"] and b.truth_at(8.0)["current_a"] == 0.0
    after = b.of(STATUS, closed)
    states = [f["ContactorState"] for f in after]
    assert "precharging" in states[:5] and states[-1] == "closed"
    assert {f["BmsState"] for f in b.of(STATUS, closed + 1.0)} == {"discharging"}
    assert b.truth_at(14.0)["current_a"] == -5.0


def test_soft_reset_reboots(bench: Any) -> None:
    b = bench()
    b.run(2.0)
    b.command("EDGE_SetReportingPeriod", {"RequestedPeriod": 500, "CommandSequence": 1})
    b.run(5.0)
    sent = b.command(
        "EDGE_Reset", {"ResetType": "soft", "ResetGuard": 0x5AA5, "CommandSequence": 2}
    )
    b.run(10.0)
    ack = b.acks(sent)[0]
    assert (ack["AckResult"], ack["AckSequence"]) == ("ok", 2)
    after = [f for f in b.frames if f.t >= sent]
    status = b.of(STATUS, sent)
    shutdown = [f for f in status if f["BmsState"] == "shutdown"]
    assert shutdown and all(f["ContactorState"] == "open" for f in shutdown)
    assert ack.t <= shutdown[0].t  # acknowledged before resetting
    assert b.frames.index(ack) < b.frames.index(shutdown[0])
    times = [f.t for f in after]
    gap_start, gap = max(zip(times, np.diff(times), strict=False), key=lambda tg: tg[1])
    assert gap >= 0.5 - 1e-6  # soft_reset_duration_s: no traffic at all
    rebooted = b.of(STATUS, gap_start + 0.01)
    assert rebooted[0]["BmsState"] == "init"
    assert [f["AliveCounter"] for f in rebooted[:5]] == [0, 1, 2, 3, 4]
    assert b.of(INFO, gap_start + 0.01)[0]["ReportingPeriod"] == 1000  # RAM lost
    assert b.truth()[-1]["bms"]["boot_count"] == 2
    assert b.of(STATUS)[-1]["BmsState"] == "standby"


def test_manual_balancing_sets_flags_and_bleeds(bench: Any) -> None:
    b = bench(bms_config=BmsConfig(balancing_current_a=0.2))
    b.run(3.0)
    b.command(
        "EDGE_BalancingRequest",
        {
            "BalancingCellGroup": 0,
            "BalancingMode": "manual",
            "BalancingCellMask": 0b0101,
            "CommandSequence": 1,
        },
    )
    b.run(6.0)
    b.command(
        "EDGE_BalancingRequest",
        {
            "BalancingCellGroup": 0,
            "BalancingMode": "manual",
            "BalancingCellMask": 0b100000,
            "CommandSequence": 2,
        },
    )
    b.run(7.0)
    off = b.command(
        "EDGE_BalancingRequest",
        {
            "BalancingCellGroup": 0,
            "BalancingMode": "off",
            "BalancingCellMask": 0,
            "CommandSequence": 3,
        },
    )
    b.run(9.0)
    assert [a["AckResult"] for a in b.acks()] == ["ok", "invalid", "ok"]
    flags = {f["CellIndex"]: f["CellBalancing"] for f in b.of(CELL_VT, 4.0, 5.0)}
    assert flags == {0: 1, 1: 0, 2: 1, 3: 0}
    assert any(f["BalancingActive"] for f in b.of(INFO, 3.0, 3.1))  # sent on the change
    assert b.truth_at(5.0)["leak_a"] == [0.2, 0.0, 0.2, 0.0]
    assert b.truth_at(5.0)["bms"]["balancing"] == [1, 0, 1, 0]
    assert {f["CellBalancing"] for f in b.of(CELL_VT, off + 0.1)} == {0}
    assert not any(f["BalancingActive"] for f in b.of(INFO, off + 0.1))


# --------------------------------------------------------------------------- sensor faults


def test_stuck_voltage_sensor_reads_constant_then_sensor_fault(bench: Any) -> None:
    fault = Fault(kind=FaultKind.SENSOR_STUCK, start_s=5.0, cell_index=1)
    b = bench(current_a=-5.0, faults=[fault], bms_config=BmsConfig(reporting_period_ms=200))
    b.run(25.0)
    stuck = {f["CellVoltage"] for f in b.cell(CELL_VT, 1, 5.05)}
    assert len(stuck) == 1
    assert len({f["CellVoltage"] for f in b.cell(CELL_VT, 0, 5.05)}) > 5
    status = b.of(STATUS)
    detected = _first(status, "FaultSensor")
    assert 5.0 + 10.0 <= detected <= 5.0 + 12.0  # stuck_detection_s, then one estimation
    assert not any(_flag(f, "FaultSensor") for f in b.of(STATUS, 0.0, 15.0))
    assert {f["BmsState"] for f in b.of(STATUS, detected + 0.2)} == {"fault"}
    assert {f["ContactorState"] for f in b.of(STATUS, detected + 0.2)} == {"open"}
    assert b.truth_at(24.0)["faults"][0]["kind"] == "sensor_stuck"


def test_voltage_offset_shifts_readings_and_large_offset_breaks_plausibility(bench: Any) -> None:
    faults = [
        Fault(
            kind=FaultKind.SENSOR_OFFSET, start_s=5.0, duration_s=20.0, cell_index=2, magnitude=0.05
        ),
        Fault(kind=FaultKind.SENSOR_OFFSET, start_s=30.0, cell_index=2, magnitude=0.4),
    ]
    b = bench(faults=faults)
    b.run(35.0)
    errors = [
        f["CellVoltage"] - b.truth_at(f.t)["voltage_v"][f["CellIndex"]]
        for f in b.of(CELL_VT, 6.0, 25.0)
    ]
    by_cell = np.array(errors).reshape(-1, CELLS)
    assert by_cell[:, 2].mean() == pytest.approx(0.05, abs=0.003)
    assert np.abs(by_cell[:, [0, 1, 3]].mean(axis=0)).max() < 0.003
    status = b.of(STATUS)
    assert not any(_flag(f, "FaultSensor") for f in b.of(STATUS, 0.0, 30.0))
    assert 30.0 <= _first(status, "FaultSensor") <= 31.2  # sum of cells != pack voltage


def test_extra_noise_shows_in_the_spread_of_readings(bench: Any) -> None:
    fault = Fault(kind=FaultKind.SENSOR_NOISE, cell_index=3, magnitude=0.02)
    b = bench(faults=[fault], bms_config=BmsConfig(reporting_period_ms=100))
    b.run(12.0)
    noisy = np.array([f["CellVoltage"] for f in b.cell(CELL_VT, 3, 1.0)])
    quiet = np.array([f["CellVoltage"] for f in b.cell(CELL_VT, 0, 1.0)])
    assert len(noisy) >= 100
    assert 0.016 <= noisy.std() <= 0.024
    assert quiet.std() <= 0.003


def test_open_sense_wire_flags_and_opens_contactor(bench: Any) -> None:
    fault = Fault(kind=FaultKind.OPEN_SENSE_WIRE, start_s=5.0, duration_s=10.0, cell_index=1)
    b = bench(current_a=-5.0, faults=[fault])
    b.run(10.0)
    rejected_at = b.command(
        "EDGE_ContactorRequest",
        {"ContactorCommand": "close", "ContactorGuard": 0xA55A, "CommandSequence": 1},
    )
    b.run(16.0)
    cleared_at = b.command(
        "EDGE_Reset", {"ResetType": "clear_faults", "ResetGuard": 0x5AA5, "CommandSequence": 2}
    )
    b.run(18.0)
    closed_at = b.command(
        "EDGE_ContactorRequest",
        {"ContactorCommand": "close", "ContactorGuard": 0xA55A, "CommandSequence": 3},
    )
    b.run(20.0)
    during = b.of(CELL_VT, 5.5, 15.0)
    for f in during:
        truth = b.truth_at(f.t)["voltage_v"]
        if f["CellIndex"] == 1:
            assert f["CellVoltage"] < 0.05  # the open channel floats low
        elif f["CellIndex"] == 2:  # the next channel spans two cells (ADC full scale 6.5 V)
            assert f["CellVoltage"] == pytest.approx(min(truth[1] + truth[2], 6.5), abs=0.015)
    status = b.of(STATUS)
    detected = _first(status, "FaultOpenSenseWire")
    assert 5.0 <= detected <= 6.2
    faulted = b.of(STATUS, detected + 0.2, 15.0)
    assert all(_flag(f, "FaultOpenSenseWire") and _flag(f, "FaultSensor") for f in faulted)
    assert not any(_flag(f, "FaultUnderVoltage") for f in status)
    assert {(f["BmsState"], f["ContactorState"]) for f in faulted} == {("fault", "open")}
    assert max(abs(f["PackCurrent"]) for f in faulted) <= I_TOL
    assert [f["CellSoS"] for f in b.cell(CELL_STATE, 1, 7.0, 8.0)] == [0.0]
    acks = b.acks()
    assert [(a["AckSequence"], a["AckResult"]) for a in acks] == [
        (1, "rejected"),
        (2, "ok"),
        (3, "ok"),
    ]
    assert acks[0].t >= rejected_at
    latched = b.of(STATUS, 15.5, cleared_at)  # the wire is back, the fault stays latched
    assert all(_flag(f, "FaultOpenSenseWire") for f in latched)
    cleared = b.of(STATUS, cleared_at + 0.1, closed_at)
    assert {(f["BmsState"], f["ContactorState"]) for f in cleared} == {("standby", "open")}
    assert b.of(STATUS)[-1]["BmsState"] == "discharging"


def test_internal_short_drains_and_warms_the_cell_at_rest(bench: Any) -> None:
    fault = Fault(kind=FaultKind.INTERNAL_SHORT, start_s=10.0, cell_index=2, magnitude=0.3)
    config = BmsConfig(
        reporting_period_ms=5_000,
        safety=SafetyConfig(rest_settle_s=60.0, self_discharge_window_s=120.0),
    )
    b = bench(faults=[fault], bms_config=config, plant_dt_s=1.0)
    b.run(300.0)

    def mean(signal: str, start: float, end: float) -> np.ndarray:
        return np.array(
            [np.mean([f[signal] for f in b.cell(CELL_VT, i, start, end)]) for i in range(CELLS)]
        )

    drop = mean("CellVoltage", 270.0, 300.0) - mean("CellVoltage", 0.0, 10.0)
    warm = mean("CellTemperature", 270.0, 300.0) - mean("CellTemperature", 0.0, 10.0)
    others = [0, 1, 3]
    assert drop[2] < -0.008 and max(abs(drop[i]) for i in others) < 0.004
    assert warm[2] > 2.0 and max(abs(warm[i]) for i in others) < 0.4
    soc_first = {f["CellIndex"]: f["CellSoC"] for f in b.of(CELL_STATE, 5.0, 10.0)}
    soc_last = {f["CellIndex"]: f["CellSoC"] for f in b.of(CELL_STATE, 295.0)}
    assert soc_last[2] - soc_first[2] < -0.005
    truth = b.truth()
    assert truth[-1]["soc"][2] < truth[0]["soc"][2] - 0.004
    assert truth[-1]["leak_a"][2] == 0.3
    detected = _first(b.of(STATUS), "FaultInternalShort")
    assert 60.0 + 120.0 <= detected < 200.0  # rest since boot: settle, then one window
    assert b.of(STATUS)[-1]["BmsState"] == "fault"


def test_thermal_runaway_precursor_ramps_temperature_and_trips(bench: Any) -> None:
    fault = Fault(
        kind=FaultKind.THERMAL_RUNAWAY_PRECURSOR, start_s=5.0, cell_index=0, magnitude=10.0
    )
    b = bench(current_a=-2.0, faults=[fault])
    b.run(90.0)
    ramp = b.cell(CELL_VT, 0, 10.0, 80.0)
    t = np.array([f.t for f in ramp])
    temperature = np.array([f["CellTemperature"] for f in ramp])
    slope_k_per_min = np.polyfit(t, temperature, 1)[0] * 60.0
    assert slope_k_per_min == pytest.approx(10.0, rel=0.1)
    other = [f["CellTemperature"] for f in b.cell(CELL_VT, 1, 10.0, 80.0)]
    assert max(other) - min(other) < 1.0
    status = b.of(STATUS)
    detected = _first(status, "FaultThermalRunawayPrecursor")
    assert 5.0 < detected < 75.0  # twin.safety's dT/dt filter (30 s / 120 s) needs a while
    assert {f["BmsState"] for f in b.of(STATUS, detected + 0.2)} == {"fault"}
    assert {f["ContactorState"] for f in b.of(STATUS, detected + 0.2)} == {"open"}
    assert b.cell(CELL_STATE, 0, detected + 1.0)[0]["CellSoS"] < 0.9
    assert b.truth()[-1]["extra_heat_w"][0] > 0.0


def test_welded_contactor_and_insulation_loss(bench: Any) -> None:
    faults = [
        Fault(kind=FaultKind.CONTACTOR_WELDED, start_s=2.0),
        Fault(kind=FaultKind.INSULATION_LOSS, start_s=8.0, magnitude=1000.0),
    ]
    b = bench(current_a=-5.0, faults=faults)
    b.run(4.0)
    sent = b.command(
        "EDGE_ContactorRequest",
        {"ContactorCommand": "open", "ContactorGuard": 0xA55A, "CommandSequence": 9},
    )
    b.run(12.0)
    assert b.acks()[0]["AckResult"] == "ok"
    welded = b.of(STATUS, sent + 0.2, 8.0)
    assert {f["ContactorState"] for f in welded} == {"fault"}
    assert all(_flag(f, "FaultContactor") for f in welded)
    assert {f["BmsState"] for f in welded} == {"fault"}
    assert all(f["PackCurrent"] == pytest.approx(-5.0, abs=I_TOL) for f in welded)
    assert b.truth_at(6.0)["contactor_closed"]
    assert 8.0 <= _first(b.of(STATUS), "FaultInsulation") <= 9.2


# --------------------------------------------------------------------------- link faults


def test_frame_loss_drops_frames_and_alive_counter_jumps(bench: Any) -> None:
    fault = Fault(kind=FaultKind.FRAME_LOSS, start_s=10.0, duration_s=10.0, magnitude=0.5)
    b = bench(faults=[fault])
    b.run(30.0)
    assert len(b.of(STATUS, -0.05, 9.95)) == 100
    assert 30 <= len(b.of(STATUS, 9.95, 19.95)) <= 70
    assert len(b.of(STATUS, 19.95, 29.95)) == 100
    assert len(b.of(CELL_VT, 10.0, 20.0)) < 40
    counters = [f["AliveCounter"] for f in b.of(STATUS, 10.0, 20.0)]
    assert any((b2 - a) % 16 != 1 for a, b2 in itertools.pairwise(counters))
    assert b.sim.link.stats.dropped > 0


def test_frame_corruption_gives_frames_the_codec_rejects(bench: Any) -> None:
    fault = Fault(kind=FaultKind.FRAME_CORRUPTION, start_s=10.0, duration_s=10.0)
    b = bench(faults=[fault])
    b.run(30.0)

    def rejected(f: Frame) -> bool:
        try:
            decode(CanFrame(f.id, f.data))
        except CanCodecError:
            return True
        return False

    window = [f for f in b.frames if 10.0 <= f.t < 20.0]
    bad = [f for f in window if rejected(f)]
    assert 0.3 * len(window) <= len(bad) <= 0.7 * len(window)
    assert all(len(f.data) < 8 for f in bad)
    assert not any(rejected(f) for f in b.frames if not 10.0 <= f.t < 20.0)
    assert len(bad) == b.sim.link.stats.corrupted


def test_bus_off_silence_then_recovery_with_communication_fault(bench: Any) -> None:
    fault = Fault(kind=FaultKind.BUS_OFF, start_s=10.0, duration_s=3.0)
    b = bench(faults=[fault])
    b.run(11.0)
    b.command("EDGE_SetReportingPeriod", {"RequestedPeriod": 500, "CommandSequence": 1})
    b.run(14.0)
    resent = b.command("EDGE_SetReportingPeriod", {"RequestedPeriod": 500, "CommandSequence": 1})
    b.run(25.0)
    assert not [f for f in b.frames if 10.0 <= f.t < 13.2 - 1e-6]
    back = b.of(STATUS, 13.2 - 1e-6)
    assert back[0].t <= 13.3
    assert _flag(back[0], "FaultCommunication")
    assert not _flag(b.of(STATUS)[-1], "FaultCommunication")  # after link_error_hold_s
    assert not any(_flag(f, "FaultCommunication") for f in b.of(STATUS, 0.0, 10.0))
    assert {f["BmsState"] for f in back} == {"standby"}  # a soft fault: no trip
    [ack] = b.acks()  # the command sent while off the bus was lost
    assert ack.t >= resent and ack["AckResult"] == "ok"
    assert b.sim.link.stats.lost_commands == 1


def test_bms_reboot_fault_silence_and_restart_at_init(bench: Any) -> None:
    fault = Fault(kind=FaultKind.BMS_REBOOT, start_s=10.0, duration_s=2.0)
    b = bench(current_a=-5.0, faults=[fault])
    b.run(3.0)
    b.command("EDGE_SetReportingPeriod", {"RequestedPeriod": 500, "CommandSequence": 1})
    b.run(20.0)
    assert not [f for f in b.frames if 10.0 <= f.t < 12.0 - 1e-6]
    assert b.of(STATUS, 9.85, 10.0)  # talking until the reset
    back = b.of(STATUS, 12.0 - 1e-6)
    assert back[0].t == pytest.approx(12.0)
    assert back[0]["BmsState"] == "init"
    assert [f["AliveCounter"] for f in back[:4]] == [0, 1, 2, 3]
    assert b.of(INFO, 12.0 - 1e-6)[0]["ReportingPeriod"] == 1000
    assert b.of(INFO, 12.0 - 1e-6)[0].t == pytest.approx(12.0)
    cells_back = b.of(CELL_VT, 12.0 - 1e-6)
    assert cells_back[0].t == pytest.approx(12.5)  # after init
    assert not b.truth_at(11.0)["contactor_closed"]  # relays drop while the BMS is off
    assert b.of(STATUS)[-1]["BmsState"] == "discharging"
    assert b.truth()[-1]["bms"]["boot_count"] == 2


# --------------------------------------------------------------------------- clock and logs


def test_realtime_environment_paces_the_simulation(bench: Any) -> None:
    b = bench(realtime_factor=0.05)  # 20x faster than real time
    start = time.monotonic()
    b.run(10.0)
    wall = time.monotonic() - start
    assert 0.45 <= wall < 3.0
    assert 100 <= len(b.of(STATUS)) <= 101
    assert type(make_environment(None)).__name__ == "Environment"


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
def test_can_log_reads_back_with_python_can(
    buses: tuple[can.BusABC, can.BusABC], db: Database, tmp_path: Path, suffix: str
) -> None:
    log_path = tmp_path / f"traffic{suffix}"
    truth_path = tmp_path / "truth.jsonl"
    origin = 1_700_000_000.0
    sim_bus, edge_bus = buses
    with CanBmsSimulator(
        sim_bus,
        cells_in_series=CELLS,
        can_log=log_path,
        ground_truth=truth_path,
        timestamp_origin_s=origin,
    ) as sim:
        sim.run(2.0)
        message = db.get_message_by_name("EDGE_SetReportingPeriod")
        data = message.encode({"RequestedPeriod": 200, "CommandSequence": 5})
        edge_bus.send(can.Message(arbitration_id=0x200, data=data, is_extended_id=False))
        sim.run(4.0)
    received = []
    while (msg := edge_bus.recv(timeout=0)) is not None:
        received.append(msg)
    with can.LogReader(log_path) as reader:
        logged = list(reader)
    sent_back = [m for m in logged if m.arbitration_id != 0x200]
    assert [(m.arbitration_id, bytes(m.data)) for m in sent_back] == [
        (m.arbitration_id, bytes(m.data)) for m in received
    ]
    commands = [m for m in logged if m.arbitration_id == 0x200]
    assert len(commands) == 1 and bytes(commands[0].data) == bytes(data)
    t0 = logged[0].timestamp
    assert [round(m.timestamp - t0, 4) for m in sent_back] == [
        round(m.timestamp - origin, 4) for m in received
    ]
    for m in sent_back:
        db.decode_message(m.arbitration_id, bytes(m.data))
    truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
    assert [line["time_s"] for line in truth] == [0.0, 1.0, 2.0, 3.0]
    assert truth[0]["timestamp"] == origin


def test_fault_schedule_validation() -> None:
    with pytest.raises(ValueError, match="cell_index"):
        Fault(kind=FaultKind.OPEN_SENSE_WIRE)
    with pytest.raises(ValueError, match="magnitude"):
        Fault(kind=FaultKind.SENSOR_OFFSET, cell_index=0)
    with pytest.raises(ValueError, match="probability"):
        Fault(kind=FaultKind.FRAME_LOSS, magnitude=1.5)
    assert Fault(kind=FaultKind.SENSOR_STUCK, sensor="current").cell_index is None
    assert SensorModel(quantisation_step=0.5).measure(1.2, np.random.default_rng(0)) == 1.0
