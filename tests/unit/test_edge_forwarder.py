"""Backoff and the forwarder, with the in-memory cloud as the uplink (a real adapter)."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_runtime.backoff import Backoff
from edge_runtime.clock import Clock
from edge_runtime.forwarder import Forwarder
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import decode_commands
from edge_runtime.uplink.memory import MemoryCloud, MemoryUplink
from twin.commands import Command, ReportingPeriod
from twin.measurements import PackMeasurement
from twin.uplink import EventRecord, Severity, TelemetryRecord, UplinkBatch

pytestmark = pytest.mark.unit

T0 = 1_750_000_000.0


class FakeTime:
    def __init__(self) -> None:
        self.t = T0

    def clock(self) -> Clock:
        return Clock(wall_s=lambda: self.t, monotonic_s=lambda: self.t - T0)


def telemetry(v: float = 48.0) -> TelemetryRecord:
    return TelemetryRecord(
        seq=1, timestamp=datetime.now(UTC), packs=[PackMeasurement(voltage_v=v, current_a=1.0)]
    )


# ----------------------------------------------------------------------------- backoff


def test_backoff_is_exponential_capped_and_jittered() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(7))
    ceilings = []
    delays = []
    for _ in range(10):
        ceilings.append(backoff.ceiling_s())
        delays.append(backoff.next_delay_s())
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays), "jitter: no two waits alike"
    same = Backoff(1.0, 60.0, random.Random(7))
    assert [same.next_delay_s() for _ in range(10)] == delays
    backoff.reset()
    assert backoff.ceiling_s() == 1.0


def test_backoff_jitter_spreads_edges_that_failed_together() -> None:
    waits = [Backoff(1.0, 300.0, random.Random(k)) for k in range(200)]
    for b in waits:
        for _ in range(5):
            b.next_delay_s()
    sixth = sorted(b.next_delay_s() for b in waits)  # ceiling 32 s
    assert sixth[0] < 4.0 and sixth[-1] > 28.0
    assert max(sixth) <= 32.0


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


# ----------------------------------------------------------------------------- forwarder


class Bench:
    def __init__(self, tmp_path: Path, **outbox_kwargs: object) -> None:
        self.time = FakeTime()
        clock = self.time.clock()
        self.outbox = Outbox(tmp_path / "o.sqlite", "B-1", clock=clock, **outbox_kwargs)  # type: ignore[arg-type]
        self.cloud = MemoryCloud()
        self.uplink = MemoryUplink("B-1", self.cloud, clock=clock)
        self.commands: list[Command] = []
        self.forwarder = Forwarder(
            self.outbox,
            self.uplink,
            backoff=Backoff(1.0, 8.0, random.Random(1)),
            clock=clock,
            on_command=self.commands.append,
        )
        self.forwarder.start_inline()

    def run(self, seconds: float, step_s: float = 0.1) -> None:
        end = self.time.t + seconds
        while self.time.t < end:
            self.forwarder.step()
            self.time.t += step_s

    def close(self) -> None:
        self.uplink.close()
        self.outbox.close()


def test_records_reach_the_cloud_in_order_and_leave_the_outbox(tmp_path: Path) -> None:
    bench = Bench(tmp_path, batch_max_records=7)
    bench.outbox.enqueue_many([telemetry(40 + k) for k in range(30)])
    bench.run(1.0)
    assert bench.cloud.seqs("B-1") == list(range(1, 31))
    assert bench.outbox.pending_records == 0
    assert bench.cloud.batches == 5  # 7 + 7 + 7 + 7 + 2
    assert bench.forwarder.records_acked == 30
    bench.close()


def test_a_failing_uplink_keeps_every_record_and_backs_off(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    bench.cloud.online = False
    bench.outbox.enqueue_many([telemetry() for _ in range(10)])
    bench.run(30.0)
    assert bench.cloud.seqs("B-1") == []
    assert bench.outbox.pending_records == 10
    bench.cloud.online = True
    bench.outbox.enqueue(telemetry())
    bench.run(10.0)
    assert bench.cloud.seqs("B-1") == list(range(1, 12))
    assert bench.outbox.pending_records == 0


def test_retries_wait_for_the_backoff(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    bench.outbox.enqueue(telemetry())
    refusals = []

    def flaky(batch: UplinkBatch) -> str | None:
        refusals.append(bench.time.t)
        return None

    bench.cloud.reject = flaky
    original = bench.cloud.receive
    failures = {"left": 4}

    def receive(batch: UplinkBatch):  # type: ignore[no-untyped-def]
        if failures["left"] > 0:
            failures["left"] -= 1
            refusals.append(bench.time.t)
            from edge_runtime.uplink import Outcome

            return Outcome.RETRY, "HTTP 503"
        return original(batch)

    bench.cloud.receive = receive  # type: ignore[method-assign]
    bench.run(60.0)
    assert bench.cloud.seqs("B-1") == [1]
    assert bench.forwarder.retries == 4
    gaps = [b - a for a, b in itertools.pairwise(refusals)]
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0]
    assert all(g <= c + 0.2 for g, c in zip(gaps, ceilings, strict=False))
    assert bench.forwarder.backoff.failures == 0  # reset after the success
    bench.close()


def test_a_poisoned_record_is_isolated_and_dead_lettered(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    bench.outbox.enqueue_many([telemetry(40 + k) for k in range(9)])

    def refuse_seq_6(batch: UplinkBatch) -> str | None:
        return "seq 6 is bad" if any(r.seq == 6 for r in batch.records) else None

    bench.cloud.reject = refuse_seq_6
    bench.run(5.0)
    stored = bench.cloud.seqs("B-1")
    assert [s for s in stored if s <= 9] == [1, 2, 3, 4, 5, 7, 8, 9]
    dead = bench.outbox.dead_letters()
    assert [d["seq"] for d in dead] == [6]
    losses = [
        r
        for r in bench.cloud.of_kind("B-1", "event")
        if r.event_type == "outbox.data_loss"  # type: ignore[union-attr]
    ]
    assert len(losses) == 1 and losses[0].data["seq_ranges"] == [[6, 6]]  # type: ignore[union-attr]
    assert bench.outbox.pending_records == 0
    bench.close()


def test_too_large_batches_are_split(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    bench.cloud.max_records = 3
    bench.outbox.enqueue_many([telemetry() for _ in range(20)])
    bench.run(5.0)
    assert bench.cloud.seqs("B-1") == list(range(1, 21))
    assert bench.outbox.dead_letters() == []
    bench.close()


def test_an_alarm_overtakes_a_backlog(tmp_path: Path) -> None:
    bench = Bench(tmp_path, batch_max_records=10)
    bench.cloud.online = False
    bench.outbox.enqueue_many([telemetry() for _ in range(100)])
    bench.run(2.0)
    bench.outbox.enqueue(
        EventRecord(
            seq=1,
            timestamp=datetime.now(UTC),
            event_type="alarm.over_voltage",
            severity=Severity.ALARM,
        ),
        priority=True,
    )
    arrivals: list[list[int]] = []
    bench.cloud.reject = lambda batch: arrivals.append([r.seq for r in batch.records])  # type: ignore[func-returns-value]
    bench.cloud.online = True
    bench.run(5.0)
    assert arrivals[0] == [101], "the alarm is the first batch after the outage"
    assert arrivals[1] == list(range(1, 11))
    assert bench.cloud.seqs("B-1") == list(range(1, 102))
    bench.close()


def test_linger_waits_for_a_fuller_batch_but_not_forever(tmp_path: Path) -> None:
    bench = Bench(tmp_path, batch_max_records=100)
    bench.forwarder.linger_s = 1.0
    bench.outbox.enqueue(telemetry())
    bench.run(0.5)
    assert bench.cloud.seqs("B-1") == []
    bench.outbox.enqueue(telemetry())
    bench.run(1.0)
    assert bench.cloud.seqs("B-1") == [1, 2]
    assert bench.cloud.batches == 1
    bench.close()


def test_commands_are_passed_on_and_fetched_again_after_a_reconnect(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    now = datetime.now(UTC)
    command = Command(
        command_id=uuid.uuid4(),
        battery_id="B-1",
        created_at=now,
        expires_at=now + timedelta(hours=1),
        payload=ReportingPeriod(period_s=0.5, duration_s=60),
    )
    bench.cloud.online = False
    bench.run(0.5)
    bench.cloud.send_command(command)  # offline: not pushed
    assert bench.commands == []
    bench.cloud.online = True
    bench.run(0.5)
    # at least once (the executor drops repeats by command id)
    assert {c.command_id for c in bench.commands} == {command.command_id}
    assert bench.forwarder.commands_received >= 1
    bench.close()


def test_command_payloads_are_decoded_leniently() -> None:
    now = datetime.now(UTC)
    good = {
        "command_id": str(uuid.uuid4()),
        "battery_id": "B-1",
        "created_at": now.isoformat(),
        "expires_at": (now + timedelta(hours=1)).isoformat(),
        "payload": {"type": "reporting_period", "period_s": 2.0},
        "status": "queued",  # lifecycle fields of a listing are ignored
    }
    commands, bad = decode_commands(
        __import__("json").dumps({"items": [good, {"command_id": "x"}, 3]})
    )
    assert [str(c.command_id) for c in commands] == [good["command_id"]] and bad == 2
    assert decode_commands(b"\xff not json") == ([], 1)
    assert decode_commands(b"[" * 100_000) == ([], 1)  # nesting too deep: counted, not raised
