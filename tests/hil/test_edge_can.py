"""The edge runtime against the Pillar 2 simulator on python-can's virtual bus.

The runtime opens its own bus from the settings (``interface = "virtual"``) on the channel the
simulator sends on; a third bus on the channel sniffs the traffic (with the simulator's
timestamps) to see what the edge's commands changed.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import can
import numpy as np
import pytest
from edge_support import ORIGIN_S, EdgeBench, edge_settings

from simulators.can_bms import CanBmsSimulator
from twin.commands import (
    Command,
    CommandAck,
    CommandStatus,
    EcmParameters,
    EisCommand,
    RcPair,
    ReportingPeriod,
)
from twin.uplink import AckRecord, EventRecord, TelemetryRecord

pytestmark = pytest.mark.hil

CELL_VT = 0x110


class CanBench(EdgeBench):
    """An ``EdgeBench`` with the simulator's bus and a sniffer on one fresh virtual channel."""

    def __init__(self, tmp_path: Path, cells: int = 4, **sim_options: Any) -> None:
        self.channel = f"edge-{uuid.uuid4().hex}"
        self.sim_bus = can.Bus(interface="virtual", channel=self.channel, preserve_timestamps=True)
        self.sniffer = can.Bus(interface="virtual", channel=self.channel, preserve_timestamps=True)
        self.sniffed: list[can.Message] = []
        truth = io.StringIO()
        sim_options.setdefault("soc", 0.6)
        sim_options.setdefault("current_a", -5.0)
        sim = CanBmsSimulator(
            self.sim_bus,
            cells_in_series=cells,
            ground_truth=truth,
            ground_truth_period_s=0.5,
            timestamp_origin_s=ORIGIN_S,
            **sim_options,
        )
        settings = edge_settings(
            tmp_path,
            cells=cells,
            link={"kind": "can", "interface": "virtual", "channel": self.channel},
        )
        super().__init__(sim, settings, truth=truth)

    def frames(self, frame_id: int) -> list[can.Message]:
        """Frames of ``frame_id`` seen on the channel so far."""
        while (msg := self.sniffer.recv(timeout=0)) is not None:
            self.sniffed.append(msg)
        return [m for m in self.sniffed if m.arbitration_id == frame_id]

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.sniffer.shutdown()
            self.sim_bus.shutdown()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[CanBench]:
    b = CanBench(tmp_path)
    yield b
    b.close()


def command(payload: Any) -> Command:
    now = datetime.fromtimestamp(ORIGIN_S, UTC)
    return Command(
        command_id=uuid.uuid4(),
        battery_id="B-1",
        created_at=now,
        expires_at=now + timedelta(days=1),
        payload=payload,
    )


def wait_ack(bench: EdgeBench, cmd: Command, max_s: float = 10.0) -> CommandAck:
    def find() -> CommandAck | None:
        for r in bench.cloud.of_kind("B-1", "ack"):
            if isinstance(r, AckRecord) and r.ack.command_id == cmd.command_id:
                return r.ack
        return None

    assert bench.run_until(lambda: find() is not None, max_s), "no ack"
    ack = find()
    assert ack is not None
    return ack


def telemetry(bench: EdgeBench) -> list[TelemetryRecord]:
    return [r for r in bench.cloud.of_kind("B-1", "telemetry") if isinstance(r, TelemetryRecord)]


def test_the_can_traffic_becomes_pillar2_telemetry(bench: CanBench) -> None:
    bench.run(15.0)
    records = telemetry(bench)
    assert 13 <= len(records) <= 16
    seqs = bench.cloud.seqs("B-1")
    assert seqs == list(range(1, len(seqs) + 1))
    link = bench.runtime.link
    assert link.counters.bad_frames == 0 and link.counters.lost_frames == 0
    assert link.counters.incomplete_samples == 0
    assert bench.runtime.status()["link"]["connected"] is True
    for record in records[-3:]:
        truth = bench.truth_at(record.timestamp.timestamp())
        assert [c.cell_id for c in record.pillar2] == [0, 1, 2, 3]
        assert record.pillar1 == []
        soc = np.array([c.soc for c in record.pillar2])
        v = np.array([c.voltage_v for c in record.pillar2])
        assert soc == pytest.approx(truth["soc"], abs=0.03)  # the BMS's own estimate
        assert v == pytest.approx(truth["voltage_v"], abs=0.02)
        assert all(c.soh == pytest.approx(1.0, abs=0.01) for c in record.pillar2)
        (pack,) = record.packs
        assert pack.current_a == pytest.approx(-5.0, abs=0.2)
        assert pack.voltage_v == pytest.approx(truth["pack_voltage_v"], abs=0.2)
        est = np.array([e.soc for e in record.estimates])
        assert est == pytest.approx(truth["soc"], abs=0.05)  # the edge's own filter
    assert link.bms_reporting_period_ms == 1000


def test_a_reporting_period_command_changes_the_traffic(bench: CanBench) -> None:
    bench.run(4.0)
    cmd = command(ReportingPeriod(period_s=0.25, duration_s=5.0))
    bench.cloud.send_command(cmd)
    ack = wait_ack(bench, cmd)
    assert ack.status is CommandStatus.SUCCEEDED
    start = bench.now
    bench.run(12.0)

    def bursts(lo: float, hi: float) -> int:
        return sum(
            1
            for m in bench.frames(CELL_VT)
            if lo <= m.timestamp - ORIGIN_S < hi and m.data[0] == 0  # cell 0
        )

    assert 15 <= bursts(start + 0.5, start + 4.5) <= 17, "4 Hz for the duration"
    assert 3 <= bursts(start + 7.0, start + 11.0) <= 5, "1 Hz again after it"
    assert bench.sim.bms.reporting_period_ms == 1000
    events = [e for e in bench.cloud.of_kind("B-1", "event") if isinstance(e, EventRecord)]
    assert events[-1].event_type == "twin.reported"
    assert events[-1].data == {"reporting_period_s": 1.0}


def test_pillar1_commands_fail_on_can_with_a_reason_and_ecm_stays_local(
    bench: CanBench,
) -> None:
    bench.run(2.0)
    eis = command(EisCommand(cell_ids=[0], f_start_hz=100.0, f_stop_hz=1.0, amplitude_a=1.0))
    ecm = command(EcmParameters(version=1, r0_ohm=0.015, rc_pairs=[RcPair(r_ohm=0.01, c_f=3000.0)]))
    too_fast = command(ReportingPeriod(period_s=0.1))  # 100 ms: the DBC's minimum
    bench.cloud.send_command(eis)
    bench.cloud.send_command(ecm)
    bench.cloud.send_command(too_fast)
    first = wait_ack(bench, eis)
    assert first.status is CommandStatus.FAILED
    assert "Pillar 1" in (first.reason or "")
    second = wait_ack(bench, ecm)
    assert second.status is CommandStatus.SUCCEEDED
    assert second.result is not None and second.result["forwarded_to_bms"] is False
    assert bench.runtime.processor.ecm_version == 1
    third = wait_ack(bench, too_fast)
    assert third.status is CommandStatus.SUCCEEDED
    bench.run(1.0)
    assert bench.sim.bms.reporting_period_ms == 100
