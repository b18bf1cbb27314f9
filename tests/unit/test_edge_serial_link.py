"""The Pillar 1 link on pyserial's ``loop://``: the test writes the BMS's frames into the loop.

Everything the link writes (its commands, its ACKs of EIS_DONE) comes back to it too and must be
ignored as its own echo.
"""

from __future__ import annotations

import math

import pytest

from edge_runtime.clock import Clock
from edge_runtime.links import BmsStatus, EisDoneEvent, EisRowEvent, LinkEvent, Sample
from edge_runtime.links.serial_link import SerialLink, fault_names
from twin.protocols.serial_codec import (
    Ack,
    AckReason,
    AckResult,
    CellMeasurements,
    CellRecord,
    EisDone,
    EisRow,
    EisStatus,
    FaultFlags,
    MsgType,
    Status,
    encode_frame,
)

pytestmark = pytest.mark.unit

CELLS = 4


class Bms:
    """The BMS end of the loop: frames with its own sequence numbers."""

    def __init__(self) -> None:
        self.t = 0.0
        self.seq = 0
        self.link = SerialLink(
            "loop://",
            cell_count=CELLS,
            clock=Clock(wall_s=lambda: 1e9 + self.t, monotonic_s=lambda: self.t),
            command_timeout_s=0.25,
            command_retries=2,
            initial_seq=0,
        )
        self.link.poll(0.0)  # opens the port
        assert self.link.port is not None

    def send(self, *messages: object, raw: bytes = b"") -> None:
        data = bytearray(raw)
        for m in messages:
            data += encode_frame(m, self.seq)  # type: ignore[arg-type]
            self.seq += 1
        assert self.link.port is not None
        self.link.port.write(bytes(data))

    def poll(self) -> list[LinkEvent]:
        return self.link.poll(0.0)

    def status(self, **changes: int) -> Status:
        values = dict(
            firmware_major=1,
            firmware_minor=2,
            firmware_patch=3,
            n_cells=CELLS,
            reporting_period_ms=1000,
            state_flags=0,
            fault_flags=0,
            ecm_parameter_version=0,
            uptime_ms=1000,
        )
        values.update(changes)
        return Status(**values)


def cells(ids: range, uptime_ms: int, voltage_v: float = 3.7) -> CellMeasurements:
    return CellMeasurements(
        uptime_ms,
        tuple(CellRecord(i, voltage_v + i / 100, 25.0 + i, -2.0, 1.0, 4.0, 0.5, 1.0) for i in ids),
    )


@pytest.fixture
def bms() -> Bms:
    b = Bms()
    yield b
    b.link.close()


def test_cell_frames_of_one_instant_make_one_sample(bms: Bms) -> None:
    bms.send(cells(range(0, 2), 1000), cells(range(2, 4), 1000))
    (sample,) = bms.poll()
    assert isinstance(sample, Sample) and sample.complete and sample.pillar == 1
    assert sample.cell_ids.tolist() == [0, 1, 2, 3]
    assert sample.voltage_v == pytest.approx([3.70, 3.71, 3.72, 3.73], abs=1e-6)
    assert sample.temperature_c.tolist() == [25.0, 26.0, 27.0, 28.0]
    assert sample.pack_voltage_v == pytest.approx(14.86, abs=1e-5)
    assert sample.pack_current_a == pytest.approx(-2.0)
    assert math.isnan(float(sample.soh[0]))
    assert bms.link.counters.samples == 1


def test_a_missing_frame_gives_an_incomplete_sample(bms: Bms) -> None:
    bms.send(cells(range(0, 2), 1000))
    assert bms.poll() == []
    bms.send(cells(range(0, 4), 2000))  # the next instant flushes the first
    first, second = bms.poll()
    assert isinstance(first, Sample) and not first.complete and first.n_cells == 2
    assert isinstance(second, Sample) and second.complete
    bms.send(cells(range(0, 2), 3000))
    assert bms.poll() == []
    bms.t += 1.0  # or the sample timeout does
    (third,) = bms.poll()
    assert isinstance(third, Sample) and third.n_cells == 2
    assert bms.link.counters.incomplete_samples == 2


def test_garbage_is_counted_and_never_raised(bms: Bms) -> None:
    bms.send(
        cells(range(4), 1000), raw=b"\x00\x13\x37garbage\xff\x00" + bytes(range(256)) + b"\x00"
    )
    events = bms.poll()
    assert [type(e) for e in events] == [Sample]
    assert bms.link.counters.bad_frames >= 2


def test_sequence_gaps_count_lost_frames(bms: Bms) -> None:
    bms.send(cells(range(4), 1000))
    bms.seq += 3  # three frames lost on the line
    bms.send(cells(range(4), 2000))
    assert len(bms.poll()) == 2
    assert bms.link.counters.lost_frames == 3


def test_status_changes_and_reboots_give_status_events(bms: Bms) -> None:
    bms.send(bms.status())
    (first,) = bms.poll()
    assert isinstance(first, BmsStatus) and first.firmware_version == (1, 2, 3)
    assert bms.link.bms_reporting_period_ms == 1000
    bms.send(bms.status(uptime_ms=2000))  # nothing changed
    assert bms.poll() == []
    bms.send(bms.status(uptime_ms=3000, fault_flags=int(FaultFlags.OVER_TEMPERATURE)))
    (faulty,) = bms.poll()
    assert isinstance(faulty, BmsStatus) and faulty.faults == {"over_temperature"}
    bms.seq = 0
    bms.send(bms.status(uptime_ms=50))  # uptime went back: a reboot
    (reboot,) = bms.poll()
    assert isinstance(reboot, BmsStatus) and reboot.rebooted
    assert bms.link.counters.bms_reboots == 1
    assert fault_names(int(FaultFlags.OVER_VOLTAGE) | (1 << 31)) >= {"over_voltage", "bit_31"}


def test_commands_wait_for_their_ack(bms: Bms) -> None:
    request = bms.link.set_reporting_period(500)
    assert not request.done
    bms.poll()  # our own SET_REPORTING_PERIOD comes back through the loop: ignored
    assert bms.link.counters.ignored_frames >= 1 and not request.done
    bms.send(Ack(0, MsgType.SET_REPORTING_PERIOD, AckResult.OK))
    bms.poll()
    assert request.done and request.ok and request.result == "ok"
    refused = bms.link.set_reporting_period(7)
    bms.send(
        Ack(
            1,
            MsgType.SET_REPORTING_PERIOD,
            AckResult.INVALID,
            int(AckReason.PARAMETER_OUT_OF_RANGE),
        )
    )
    bms.poll()
    assert refused.done and not refused.ok and refused.result == "invalid"
    assert refused.reason is not None and "parameter_out_of_range" in refused.reason


def test_an_unanswered_command_is_repeated_then_fails(bms: Bms) -> None:
    request = bms.link.set_reporting_period(2000)
    queued = bms.link.set_reporting_period(3000)  # stop-and-wait: waits behind the first
    for _ in range(3):
        bms.t += 0.3
        bms.poll()
    assert request.done and request.result == "no_ack"
    assert bms.link.counters.retransmissions == 2
    assert not queued.done  # now in flight
    bms.send(Ack(1, MsgType.SET_REPORTING_PERIOD, AckResult.OK))
    bms.poll()
    assert queued.ok


def test_an_eis_sweep_gives_rows_and_one_done(bms: Bms) -> None:
    request = bms.link.start_eis(7, 2, 1000.0, 1.0, 5, 1.0)
    bms.send(Ack(0, MsgType.EIS_START, AckResult.OK))
    bms.poll()
    assert request.ok
    rows = [
        EisRow(7, k, 2, 1000.0 / 10**k, 0.02 + k / 1000, -5.0 + k, 0.0, 3.7, 3.7, 25.0)
        for k in range(4)
    ]
    bms.send(*rows)
    done = EisDone(7, EisStatus.OK, 4)
    bms.send(done)
    events = bms.poll()
    assert [type(e) for e in events] == [EisRowEvent] * 4 + [EisDoneEvent]
    assert isinstance(events[-1], EisDoneEvent) and events[-1].status == "ok"
    # a repeated EIS_DONE (our ACK was lost) is acknowledged again but reported once
    bms.seq -= 1
    bms.send(done)
    assert bms.poll() == []


def test_protocol_limits_are_checked_before_sending(bms: Bms) -> None:
    assert bms.link.update_ecm(1, None, 0.01, []).result == "invalid"
    assert bms.link.set_reporting_period(0).result == "invalid"
    assert bms.link.request_balancing("auto").result == "unsupported"
