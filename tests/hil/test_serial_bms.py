"""The Pillar 1 BMS simulator through real ports: a pty and a TCP socket, read with pyserial.

Each test builds a ``SerialBmsSimulator`` in virtual time and steps it against the real link:
``sim.run(now + step)``, then the "edge" (a pyserial port opened by path or ``socket://`` URL, a
``FrameDecoder`` and its own ``seq``) reads what has arrived. A frame's ``t`` is the simulated
time at which the edge read it (within one step of its sending; a pty may add one step). The
simulator writes its ground truth (JSON lines, ``io.StringIO``) to compare with.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import serial

from simulators.bms import BmsConfig, Fault, FaultKind
from simulators.serial_bms import SerialBmsSimulator, SerialLinkConfig
from twin.impedance import equivalent_circuit
from twin.protocols.serial_codec import (
    ALL_CELLS,
    MAX_CELLS_PER_FRAME,
    Ack,
    AckReason,
    AckResult,
    CellMeasurements,
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

pytestmark = pytest.mark.hil

# default BmsConfig sensors: 5 sigma + quantisation + float32
V_TOL = 5 * 0.002 + 0.001 + 1e-6
T_TOL = 5 * 0.05 + 0.1 + 1e-5
I_TOL = 5 * 0.05 + 0.01 + 1e-6
WALL_TIMEOUT_S = 20.0


@dataclass
class Rx:
    """One frame as the edge received it: simulated time of reading, and the frame."""

    t: float
    frame: Frame

    @property
    def message(self) -> Message:
        return self.frame.message


class Edge:
    """The edge end of the line, stepping the simulator between its reads."""

    def __init__(
        self, sim: SerialBmsSimulator, port: serial.SerialBase, truth: io.StringIO
    ) -> None:
        self.sim = sim
        self.port = port
        self.truth = truth
        self.decoder = FrameDecoder()
        self.rx: list[Rx] = []
        self.seq = 0
        self.bad_at: list[float] = []

    @property
    def now(self) -> float:
        return float(self.sim.env.now)

    def read(self) -> None:
        data = self.port.read(65536)
        for item in self.decoder.feed(data):
            if isinstance(item, Frame):
                self.rx.append(Rx(self.now, item))
            else:
                self.bad_at.append(self.now)

    def pump(self, virtual_s: float, step_s: float = 0.05) -> None:
        """Run ``virtual_s`` more simulated seconds, reading after every step."""
        self.pump_until(lambda: False, virtual_s, step_s)

    def pump_until(
        self, done: Callable[[], bool], max_virtual_s: float, step_s: float = 0.05
    ) -> bool:
        """Step until ``done()`` (True) or ``max_virtual_s`` elapsed (False); wall time bounded."""
        end = self.now + max_virtual_s
        wall_end = time.monotonic() + WALL_TIMEOUT_S
        while self.now < end - 1e-9:
            assert time.monotonic() < wall_end, "simulation too slow"
            self.sim.run(min(end, self.now + step_s))
            self.read()
            if done():
                return True
        self.settle()
        return done()

    def settle(self) -> None:
        """Read what is still in flight (a pty delivers a little after the write)."""
        time.sleep(0.02)
        self.read()

    def send(self, message: Message, seq: int | None = None) -> int:
        """Send ``message`` as a new frame (or repeat ``seq``); returns its seq."""
        if seq is None:
            seq, self.seq = self.seq, (self.seq + 1) & 0xFFFF
        self.port.write(encode_frame(message, seq))
        self.port.flush()
        return seq

    def of(self, kind: type[Any], since: float = -1.0) -> list[Any]:
        """Messages of one type received at or after ``since``."""
        return [r.message for r in self.rx if isinstance(r.message, kind) and r.t >= since]

    def ack_for(self, seq: int, msg_type: MsgType) -> list[Ack]:
        return [a for a in self.of(Ack) if a.acked_seq == seq and a.acked_msg_type == msg_type]

    def command(self, message: Message, max_virtual_s: float = 2.0) -> Ack:
        """Send a command and wait for its ACK."""
        seq = self.send(message)
        assert self.pump_until(
            lambda: bool(self.ack_for(seq, message.MSG_TYPE)), max_virtual_s, 0.02
        ), f"no ACK for {message}"
        return self.ack_for(seq, message.MSG_TYPE)[0]


class Bench:
    """Builds simulators and edges; closes every port and link at the end."""

    def __init__(self) -> None:
        self.closers: list[Callable[[], None]] = []

    def start(
        self, link: str, *, url_of: Callable[[str], str] = lambda a: a, **kwargs: Any
    ) -> Edge:
        kwargs.setdefault("cells_in_series", 4)
        kwargs.setdefault("timestamp_origin_s", 0.0)
        truth = io.StringIO()
        kwargs["ground_truth"] = truth
        kwargs.setdefault("ground_truth_period_s", 0.1)
        sim = SerialBmsSimulator(link, **kwargs)
        self.closers.append(sim.close)
        port = serial.serial_for_url(url_of(sim.address), timeout=0)
        self.closers.append(port.close)
        return Edge(sim, port, truth)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    try:
        yield b
    finally:
        b.close()


def truth_at(edge: Edge, t: float) -> dict[str, Any]:
    """The ground-truth line closest to simulated time ``t``."""
    lines = [json.loads(line) for line in edge.truth.getvalue().splitlines()]
    return min(lines, key=lambda rec: abs(rec["time_s"] - t))


def statuses(edge: Edge, since: float = -1.0) -> list[Status]:
    return list(edge.of(Status, since))


# ----------------------------------------------------------------------------- measurements


def test_pty_hello_then_measurements_match_the_plant(bench: Bench) -> None:
    edge = bench.start("pty", cells_in_series=12, current_a=-2.0)
    assert edge.sim.address.startswith("/dev/")
    edge.pump(8.0)
    first = edge.rx[0]
    assert isinstance(first.message, Status) and first.frame.seq == 0
    assert first.message.uptime_ms <= 100 and first.message.n_cells == 12
    seqs = [r.frame.seq for r in edge.rx]
    assert seqs == list(range(len(seqs)))  # no gap, no repeat on a clean line
    assert edge.decoder.bad_frames == 0

    by_uptime: dict[int, list[Any]] = {}
    for m in edge.of(CellMeasurements):
        assert 1 <= len(m.cells) <= MAX_CELLS_PER_FRAME
        by_uptime.setdefault(m.uptime_ms, []).extend(m.cells)
    samples = sorted(by_uptime)
    assert len(samples) >= 7
    assert set(np.diff(samples)) == {1000}  # default reporting period
    for uptime in samples[1:]:
        cells = sorted(by_uptime[uptime], key=lambda c: c.cell_id)
        assert [c.cell_id for c in cells] == list(range(12))  # 8 + 4, one sample
        truth = truth_at(edge, uptime / 1000.0)
        for c in cells:
            assert c.voltage_v == pytest.approx(truth["voltage_v"][c.cell_id], abs=V_TOL)
            assert c.temperature_c == pytest.approx(truth["temperature_c"][c.cell_id], abs=T_TOL)
            assert c.current_a == pytest.approx(truth["current_a"], abs=I_TOL)
            assert c.soc == pytest.approx(truth["soc"][c.cell_id], abs=0.05)
            assert c.sos == 1.0 and c.sot == 1.0
            assert c.phase == 4.0  # discharging
    running = statuses(edge)[-1]
    assert running.state_flags & StateFlags.DISCHARGING
    assert running.state_flags & StateFlags.CONTACTOR_CLOSED
    assert running.fault_flags == 0


def test_socket_set_reporting_period_changes_the_rate(bench: Bench) -> None:
    edge = bench.start("tcp", url_of=lambda a: a)
    assert edge.sim.address.startswith("socket://127.0.0.1:")
    edge.pump(3.0)
    ack = edge.command(SetReportingPeriod(250))
    assert (ack.result, ack.reason_code) == (AckResult.OK, AckReason.NONE)
    t_ack = edge.now
    edge.pump(5.0)
    status = next(s for s in statuses(edge) if s.reporting_period_ms == 250)
    assert status.uptime_ms <= t_ack * 1000 + 50  # STATUS right after the ACK
    uptimes = sorted({m.uptime_ms for m in edge.of(CellMeasurements, since=t_ack + 0.1)})
    assert set(np.diff(uptimes)) == {250}
    assert len(uptimes) >= 18

    bad = edge.command(SetReportingPeriod(50))
    assert (bad.result, bad.reason_code) == (AckResult.INVALID, AckReason.PARAMETER_OUT_OF_RANGE)

    # a retransmission (same seq) is acknowledged again but not executed again
    seq = edge.send(SetReportingPeriod(500))
    edge.pump(0.3, 0.02)
    edge.send(SetReportingPeriod(500), seq=seq)
    t_repeat = edge.now
    edge.pump(2.0, 0.02)
    acks = edge.ack_for(seq, MsgType.SET_REPORTING_PERIOD)
    assert len(acks) == 2 and acks[0] == acks[1] and acks[0].result == AckResult.OK
    assert not [s for s in statuses(edge, since=t_repeat) if s.reporting_period_ms != 500]
    assert edge.sim.protocol.stats.duplicates == 1
    uptimes = sorted({m.uptime_ms for m in edge.of(CellMeasurements, since=t_repeat + 0.6)})
    assert set(np.diff(uptimes)) == {500}


def test_ecm_update_is_acknowledged_and_reported(bench: Bench) -> None:
    edge = bench.start("tcp")
    edge.pump(1.0)
    pairs = (RcPair(0.01, 2500.0), RcPair(0.012, 15000.0))
    ack = edge.command(EcmUpdate(3, ALL_CELLS, 0.025, pairs))
    assert ack.result == AckResult.OK
    t_ack = edge.now
    edge.pump(0.5)
    status = statuses(edge, since=t_ack)[0]
    assert status.ecm_parameter_version == 3
    assert status.state_flags & StateFlags.ECM_LOADED
    assert edge.sim.protocol.ecm[2].r0_ohm == pytest.approx(0.025)

    stale = edge.command(EcmUpdate(2, 1, 0.02, pairs))
    assert (stale.result, stale.reason_code) == (
        AckResult.REJECTED,
        AckReason.STALE_PARAMETER_VERSION,
    )
    wrong_cell = edge.command(EcmUpdate(4, 9, 0.02, pairs))
    assert (wrong_cell.result, wrong_cell.reason_code) == (
        AckResult.INVALID,
        AckReason.CELL_ID_OUT_OF_RANGE,
    )
    newer = edge.command(EcmUpdate(4, 1, 0.02, pairs))
    assert newer.result == AckResult.OK
    edge.pump(0.5)
    assert statuses(edge)[-1].ecm_parameter_version == 4


# ----------------------------------------------------------------------------- EIS


def test_eis_spectrum_follows_the_cell_impedance(bench: Bench) -> None:
    edge = bench.start(
        "tcp",
        current_a=0.0,
        plant_dt_s=1.0,
        # a slower firmware loop keeps 25 simulated minutes cheap (and the stuck-channel
        # detector must not mistake the steady, quantised readings at rest for a stuck sensor)
        bms_config=BmsConfig(
            sample_period_s=1.0, estimation_period_s=10.0, reporting_period_ms=30_000
        ),
        link_config=SerialLinkConfig(eis_periods_per_point=1.0, poll_s=0.05, status_check_s=1.0),
        ground_truth_period_s=5.0,
    )
    edge.pump(2.0)
    start = EisStart(42, 2, 1000.0, 0.001, 2, 1.0)
    ack = edge.command(start)
    assert ack.result == AckResult.OK
    t0 = edge.now
    edge.pump(0.5)
    assert any(s.state_flags & StateFlags.EIS_RUNNING for s in statuses(edge, since=t0))
    busy = edge.command(EisStart(43, 1, 100.0, 1.0, 5, 1.0))
    assert (busy.result, busy.reason_code) == (AckResult.BUSY, AckReason.EIS_RUNNING)

    # coarse steps through the sweep; the last point (1 mHz) takes 0.1 + 1000 s after the
    # one before: fine steps from just before it, so the edge acknowledges EIS_DONE in time
    def row(index: int) -> Callable[[], bool]:
        return lambda: any(r.row_index == index for r in edge.of(EisRow))

    assert edge.pump_until(row(11), 1000.0, step_s=1.0)
    edge.pump(1000.1 - 2.0, step_s=1.0)

    def done() -> bool:
        for d in edge.of(EisDone):
            edge.send(Ack(_seq_of(edge, d), MsgType.EIS_DONE, AckResult.OK))
            return True
        return False

    assert edge.pump_until(done, 5.0, step_s=0.02)
    edge.pump(1.5, 0.02)
    rows = [r for r in edge.of(EisRow) if r.event_number == 42]
    final = edge.of(EisDone)[0]
    assert (final.event_number, final.status, final.n_rows) == (42, EisStatus.OK, 13)
    assert [r.row_index for r in rows] == list(range(13))
    np.testing.assert_allclose([r.frequency_hz for r in rows], np.logspace(3, -3, 13), rtol=1e-6)
    assert all(r.cell_id == 2 for r in rows)

    plant = edge.sim.plant
    scale = float(np.broadcast_to(plant.model.cell.resistance_scale, plant.soc.shape)[0, 2])
    circuit = equivalent_circuit(
        plant.model.cell.params,
        float(plant.soc[0, 2]),
        float(plant.temperature_c[0, 2]),
        resistance_scale=scale,
    )
    assert rows[0].amplitude_ohm == pytest.approx(circuit.r0_ohm, rel=0.02)  # 1 kHz: R0
    assert abs(rows[0].phase_deg) < 2.0
    assert rows[-1].amplitude_ohm > circuit.r0_ohm + circuit.polarisation_resistance_ohm
    assert rows[-1].phase_deg < -20.0  # the diffusion tail
    assert np.all(np.diff([r.amplitude_ohm for r in rows[3:]]) > 0)  # |Z| grows as f falls
    truth = truth_at(edge, edge.now)
    for r in rows:
        assert r.v_start_v == pytest.approx(truth["voltage_v"][2], abs=0.02)
        assert r.temperature_c == pytest.approx(truth["temperature_c"][2], abs=T_TOL)
        assert r.current_offset_a == pytest.approx(0.0, abs=I_TOL)
    assert not statuses(edge)[-1].state_flags & StateFlags.EIS_RUNNING
    assert len(edge.of(EisDone)) == 1  # acknowledged at the first copy
    assert edge.sim.protocol.stats.failed_deliveries == 0


def _seq_of(edge: Edge, message: Message) -> int:
    return next(r.frame.seq for r in edge.rx if r.message is message)


def test_eis_done_is_retransmitted_until_acknowledged(bench: Bench) -> None:
    edge = bench.start("tcp", link_config=SerialLinkConfig(eis_settle_s=0.01))
    edge.pump(1.0)
    invalid = edge.command(EisStart(1, 7, 1000.0, 10.0, 2, 1.0))
    assert (invalid.result, invalid.reason_code) == (
        AckResult.INVALID,
        AckReason.CELL_ID_OUT_OF_RANGE,
    )
    out_of_band = edge.command(EisStart(1, 0, 1e6, 10.0, 2, 1.0))
    assert out_of_band.reason_code == AckReason.PARAMETER_OUT_OF_RANGE
    assert edge.command(EisStart(5, 0, 1000.0, 10.0, 2, 0.5)).result == AckResult.OK
    assert edge.pump_until(lambda: len(edge.of(EisDone)) >= 2, 3.0, 0.01)
    copies = [r for r in edge.rx if isinstance(r.message, EisDone)]
    assert copies[0].frame == copies[1].frame  # byte for byte: same seq
    assert copies[1].t - copies[0].t == pytest.approx(0.25, abs=0.03)
    edge.send(Ack(copies[0].frame.seq, MsgType.EIS_DONE, AckResult.OK))
    edge.pump(1.5, 0.01)
    assert len(edge.of(EisDone)) == 2  # acknowledged: no more copies
    assert edge.of(EisDone)[0].n_rows == 5
    assert edge.sim.protocol.stats.retransmissions == 1


def test_hard_fault_aborts_the_eis_sweep(bench: Bench) -> None:
    offset = Fault(
        kind=FaultKind.SENSOR_OFFSET, start_s=4.0, cell_index=3, sensor="voltage", magnitude=0.5
    )
    edge = bench.start("tcp", faults=[offset])
    edge.pump(1.0)
    assert edge.command(EisStart(9, 0, 1000.0, 0.1, 5, 1.0)).result == AckResult.OK
    assert edge.pump_until(lambda: bool(edge.of(EisDone)), 30.0, 0.05)
    final = edge.of(EisDone)[0]
    rows = [r for r in edge.of(EisRow) if r.event_number == 9]
    assert final.status == EisStatus.ABORTED and final.n_rows == len(rows) < 21
    edge.send(Ack(_seq_of(edge, final), MsgType.EIS_DONE, AckResult.OK))
    edge.pump(0.5)
    last = statuses(edge)[-1]
    assert last.fault_flags & FaultFlags.EIS_FAULT and last.fault_flags & FaultFlags.SENSOR_FAULT
    assert not last.state_flags & StateFlags.EIS_RUNNING
    refused = edge.command(EisStart(10, 0, 1000.0, 100.0, 5, 1.0))
    assert refused.result == AckResult.REJECTED  # not while a hard fault holds


# ----------------------------------------------------------------------------- line faults


def test_byte_corruption_is_dropped_by_the_decoder_which_resyncs(bench: Bench) -> None:
    edge = bench.start(
        "pty",
        cells_in_series=8,
        link_config=SerialLinkConfig(byte_error_probability=0.002),
        seed=3,
    )
    edge.pump(40.0, 0.1)
    good = edge.of(CellMeasurements)
    assert edge.decoder.bad_frames > 0
    assert edge.sim.protocol.stats.byte_errors > 0
    assert len(good) >= 20  # good frames keep coming between the bad ones
    assert max(np.diff([m.uptime_ms for m in good])) <= 5000
    seqs = [r.frame.seq for r in edge.rx]
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(seqs))
    assert gaps > 0 and seqs == sorted(seqs)  # lost frames show as seq gaps
    assert all(len(m.cells) == 8 for m in good)


def test_scheduled_frame_corruption_only_in_its_window(bench: Bench) -> None:
    fault = Fault(kind=FaultKind.FRAME_CORRUPTION, start_s=5.0, duration_s=10.0, magnitude=0.5)
    edge = bench.start("tcp", faults=[fault])
    edge.pump(25.0, 0.1)
    assert edge.decoder.bad_frames > 0
    assert all(5.0 <= t <= 15.2 for t in edge.bad_at)
    assert [m for m in edge.of(CellMeasurements) if m.uptime_ms > 16_000]


def test_reboot_is_silence_then_hello_with_uptime_reset(bench: Bench) -> None:
    reboot = Fault(kind=FaultKind.BMS_REBOOT, start_s=6.0, duration_s=3.0)
    edge = bench.start("tcp", faults=[reboot])
    edge.pump(2.0)
    assert edge.command(SetReportingPeriod(500)).result == AckResult.OK
    ecm = EcmUpdate(7, ALL_CELLS, 0.02, (RcPair(0.01, 1000.0),))
    assert edge.command(ecm).result == AckResult.OK
    edge.pump(7.0 - edge.now)
    lost = edge.send(SetReportingPeriod(2000))  # the BMS is deaf: no ACK ever
    edge.pump(8.0)

    before = [r for r in edge.rx if r.t <= 6.05]
    after = [r for r in edge.rx if r.t > 6.05]
    hello = after[0]
    assert isinstance(hello.message, Status)
    assert hello.frame.seq == 0 and hello.message.uptime_ms < 100
    assert hello.t >= 9.0  # silent for the reboot's 3 s
    assert edge.bad_at and 6.0 <= edge.bad_at[0] <= hello.t  # the frame cut by the reset
    last_before = [r.message for r in before if isinstance(r.message, Status)][-1]
    assert last_before.uptime_ms > hello.message.uptime_ms  # uptime went backwards
    assert last_before.reporting_period_ms == 500 and last_before.ecm_parameter_version == 7
    # RAM lost: default period, no ECM
    assert hello.message.reporting_period_ms == 1000
    assert hello.message.ecm_parameter_version == 0
    assert not edge.ack_for(lost, MsgType.SET_REPORTING_PERIOD)
    assert [s.frame.seq for s in after] == list(range(len(after)))
    uptimes = sorted({m.uptime_ms for m in edge.of(CellMeasurements, since=hello.t)})
    assert uptimes and set(np.diff(uptimes)) <= {1000}


def test_line_down_then_communication_fault(bench: Bench) -> None:
    down = Fault(kind=FaultKind.BUS_OFF, start_s=3.0, duration_s=2.0)
    edge = bench.start("tcp", faults=[down])
    edge.pump(8.0, 0.05)
    assert not [r for r in edge.rx if 3.05 < r.t < 5.0]
    seqs = [r.frame.seq for r in edge.rx]
    assert max(np.diff(seqs)) > 1  # what the firmware sent into the dead line is a gap
    after = statuses(edge, since=5.0)
    assert after and after[0].fault_flags & FaultFlags.COMMUNICATION_FAULT
    assert [m for m in edge.of(CellMeasurements, since=5.0)]


# ----------------------------------------------------------------------------- sensor faults


def test_sensor_offset_shows_as_sensor_fault_and_opens_the_contactor(bench: Bench) -> None:
    offset = Fault(
        kind=FaultKind.SENSOR_OFFSET, start_s=3.0, cell_index=1, sensor="voltage", magnitude=0.5
    )
    edge = bench.start("pty", faults=[offset], current_a=-2.0)
    edge.pump(8.0)
    late = [m for m in edge.of(CellMeasurements) if m.uptime_ms >= 4000]
    assert late
    truth = truth_at(edge, late[-1].uptime_ms / 1000.0)
    reading = late[-1].cells[1].voltage_v
    assert reading - truth["voltage_v"][1] == pytest.approx(0.5, abs=V_TOL)
    faulted = [s for s in statuses(edge) if s.fault_flags & FaultFlags.SENSOR_FAULT]
    assert faulted and faulted[0].uptime_ms >= 3000
    assert not faulted[-1].state_flags & StateFlags.CONTACTOR_CLOSED  # hard fault
    assert late[-1].cells[0].phase == 5.0  # fault state
    assert late[-1].cells[0].current_a == pytest.approx(0.0, abs=I_TOL)


# ----------------------------------------------------------------------------- other links


def test_loop_url_hears_its_own_frames_and_ignores_them() -> None:
    port = serial.serial_for_url("loop://", timeout=0)
    with SerialBmsSimulator(port, cells_in_series=4, timestamp_origin_s=0.0) as sim:
        sim.run(3.0)
        stats = sim.protocol.stats
        assert stats.frames_received > 0 and stats.bad_frames_received == 0
        assert stats.ignored_frames == stats.frames_received
        assert "ACK" not in stats.frames_sent
    assert port.is_open  # the caller's port is the caller's to close
    port.close()


def test_realtime_simulator_serves_a_real_time_reader(bench: Bench) -> None:
    sim = SerialBmsSimulator("tcp", cells_in_series=4, realtime_factor=0.05)
    bench.closers.append(sim.close)
    port = serial.serial_for_url(sim.address, timeout=0.05)
    bench.closers.append(port.close)
    announced: list[str] = []
    runner = threading.Thread(
        target=sim.serve, args=(4.0,), kwargs={"announce": announced.append}, daemon=True
    )
    started = time.monotonic()
    runner.start()
    decoder = FrameDecoder()
    frames: list[Frame] = []
    while runner.is_alive() and time.monotonic() - started < WALL_TIMEOUT_S:
        frames += [f for f in decoder.feed(port.read(4096)) if isinstance(f, Frame)]
    runner.join(WALL_TIMEOUT_S)
    assert not runner.is_alive()
    assert time.monotonic() - started >= 0.15  # paced: 4 s at 0.05 wall s per second
    assert announced == [f"Pillar 1 BMS on {sim.address}"]
    assert isinstance(frames[0].message, Status)
    assert (
        len({f.message.uptime_ms for f in frames if isinstance(f.message, CellMeasurements)}) >= 3
    )
