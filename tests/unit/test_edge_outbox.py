"""The SQLite outbox: numbering, lanes, batches, acknowledgement, bounds, dead letters."""

from __future__ import annotations

import gzip
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_runtime.clock import Clock
from edge_runtime.outbox import Lane, Outbox
from twin.errors import ConfigError
from twin.measurements import PackMeasurement
from twin.uplink import EventRecord, Severity, TelemetryRecord, UplinkBatch

pytestmark = pytest.mark.unit

T0 = 1_750_000_000.0


class FakeTime:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def clock(self) -> Clock:
        return Clock(wall_s=lambda: self.t, monotonic_s=lambda: self.t - T0)


def telemetry(voltage_v: float = 48.0) -> TelemetryRecord:
    return TelemetryRecord(
        seq=1,
        timestamp=datetime.now(UTC),
        packs=[PackMeasurement(voltage_v=voltage_v, current_a=-2.0)],
    )


def alarm(cell: int = 0) -> EventRecord:
    return EventRecord(
        seq=1,
        timestamp=datetime.now(UTC),
        event_type="alarm.over_voltage",
        severity=Severity.ALARM,
        cell_id=cell,
    )


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


def open_outbox(path: Path, time_: FakeTime, **kwargs: object) -> Outbox:
    return Outbox(path / "o.sqlite", "B-1", clock=time_.clock(), **kwargs)  # type: ignore[arg-type]


def test_sequence_numbers_are_continuous_and_survive_a_reopen(
    tmp_path: Path, time_: FakeTime
) -> None:
    with open_outbox(tmp_path, time_) as box:
        assert box.enqueue(telemetry()) == 1
        assert box.enqueue_many(
            [telemetry(), alarm(), telemetry()], priority=[False, True, False]
        ) == [
            2,
            3,
            4,
        ]
        box.ack([1, 2, 3, 4])
    with open_outbox(tmp_path, time_) as box:
        assert box.enqueue(telemetry()) == 5
        assert [r.seq for r in box.pending()] == [5]
        assert box.stats().last_acked_seq == 4


def test_the_file_belongs_to_one_battery_and_uses_wal(tmp_path: Path, time_: FakeTime) -> None:
    open_outbox(tmp_path, time_).close()
    with pytest.raises(ConfigError, match="belongs to battery 'B-1'"):
        Outbox(tmp_path / "o.sqlite", "B-2")
    db = sqlite3.connect(tmp_path / "o.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match=r"outbox\.path"):
        Outbox(tmp_path / "junk.sqlite", "B-1")
    with pytest.raises(ConfigError, match="synchronous"):
        Outbox(tmp_path / "x.sqlite", "B-1", synchronous="OFF")


def test_priority_records_go_first_and_lanes_keep_their_order(
    tmp_path: Path, time_: FakeTime
) -> None:
    with open_outbox(tmp_path, time_) as box:
        box.enqueue_many([telemetry() for _ in range(5)])
        box.enqueue(alarm(1), priority=True)
        box.enqueue(alarm(2), priority=True)
        first = box.next_batch()
        assert first is not None and first.lane is Lane.PRIORITY and first.seqs == (6, 7)
        # nothing leaves without an ack: the same batch again
        again = box.next_batch()
        assert again is not None and again.seqs == (6, 7)
        box.ack(first)
        second = box.next_batch()
        assert second is not None and second.lane is Lane.NORMAL
        assert second.seqs == (1, 2, 3, 4, 5)
        after = box.next_batch(after={Lane.NORMAL: 3})
        assert after is not None and after.seqs == (4, 5)


def test_batches_are_bounded_valid_json_and_compressible(tmp_path: Path, time_: FakeTime) -> None:
    with open_outbox(tmp_path, time_, batch_max_records=3) as box:
        box.enqueue_many([telemetry(40.0 + k) for k in range(7)])
        batch = box.next_batch()
        assert batch is not None and batch.seqs == (1, 2, 3)
        parsed = UplinkBatch.model_validate_json(batch.body)
        assert parsed.battery_id == "B-1" and [r.seq for r in parsed.records] == [1, 2, 3]
        assert gzip.decompress(batch.compressed()) == batch.body
        assert batch.compressed() == batch.compressed()  # deterministic (no mtime)
        assert box.next_batch(max_records=2).n_records == 2  # type: ignore[union-attr]
    with open_outbox(tmp_path / "b", time_, batch_max_bytes=4096) as box:
        size = len(telemetry().model_dump_json())
        box.enqueue_many([telemetry() for _ in range(100)])
        batch = box.next_batch()
        assert batch is not None
        assert 1 < batch.n_records <= 4096 // size + 1
        assert len(batch.body) <= 4096 + batch.n_records + 64


def test_single_kind_batches_stop_at_another_kind(tmp_path: Path, time_: FakeTime) -> None:
    with open_outbox(tmp_path, time_) as box:
        box.enqueue_many([telemetry(), telemetry()])
        box.enqueue(EventRecord(seq=1, timestamp=datetime.now(UTC), event_type="edge.start"))
        box.enqueue(telemetry())
        batch = box.next_batch(single_kind=True)
        assert batch is not None and batch.seqs == (1, 2) and batch.kind == "telemetry"
        box.ack(batch)
        batch = box.next_batch(single_kind=True)
        assert batch is not None and batch.seqs == (3,) and batch.kind == "event"


def test_size_bound_drops_the_oldest_and_reports_the_seq_range(
    tmp_path: Path, time_: FakeTime
) -> None:
    size = len(telemetry().model_copy(update={"seq": 10}).model_dump_json())
    bound = 64 * 1024
    with open_outbox(tmp_path, time_, max_bytes=bound) as box:
        box.enqueue(alarm(), priority=True)  # seq 1: the priority lane goes last
        n = bound // size + 20
        for _ in range(n):
            box.enqueue(telemetry())
        stats = box.stats()
        assert stats.stored_bytes <= bound
        assert stats.dropped_records > 0
        losses = [
            r
            for r in box.pending(Lane.PRIORITY)
            if isinstance(r, EventRecord) and r.event_type == "outbox.data_loss"
        ]
        assert losses, "a data-loss event is queued"
        first = losses[0]
        assert first.severity is Severity.WARNING
        assert first.data["reason"] == "outbox_full"
        assert first.data["first_seq"] == 2  # the oldest normal record, not the alarm
        dropped = sum(int(e.data["dropped_records"]) for e in losses)  # type: ignore[arg-type]
        assert dropped == stats.dropped_records
        kept = [r.seq for r in box.pending(Lane.NORMAL)]
        for e in losses:
            for lo, hi in e.data["seq_ranges"]:  # type: ignore[union-attr, misc]
                assert not any(lo <= s <= hi for s in kept)
        assert 1 in [r.seq for r in box.pending(Lane.PRIORITY)]  # the alarm survived
        # every number ever given is either pending or inside a reported range
        ranges = [tuple(r) for e in losses for r in e.data["seq_ranges"]]  # type: ignore[union-attr, misc]
        pending = {r.seq for r in box.pending()}
        for seq in range(1, stats.next_seq):
            assert seq in pending or any(lo <= seq <= hi for lo, hi in ranges), seq


def test_age_bound_drops_old_records(tmp_path: Path, time_: FakeTime) -> None:
    with open_outbox(tmp_path, time_, max_age_s=3600.0) as box:
        box.enqueue_many([telemetry(), telemetry()])
        time_.t += 1800
        box.enqueue(telemetry())
        time_.t += 2400  # the first two are 4200 s old, the third 2400 s
        box.expire()
        pending = box.pending()
        assert [r.seq for r in pending if r.kind == "telemetry"] == [3]
        loss = [r for r in pending if isinstance(r, EventRecord)]
        assert len(loss) == 1 and loss[0].data["reason"] == "max_age"
        assert loss[0].data["seq_ranges"] == [[1, 2]]


def test_age_is_not_applied_on_an_implausible_wall_clock(tmp_path: Path) -> None:
    """A Pi without RTC starts in 1970: that must not look like 55 years of age."""
    time_ = FakeTime(1000.0)
    with open_outbox(tmp_path, time_, max_age_s=60.0) as box:
        box.enqueue(telemetry())
        time_.t += 10_000
        box.expire()
        assert [r.seq for r in box.pending()] == [1]


def test_dead_letters_leave_the_queue_with_a_loss_event(tmp_path: Path, time_: FakeTime) -> None:
    with open_outbox(tmp_path, time_) as box:
        box.enqueue_many([telemetry(), telemetry()])
        batch = box.next_batch(max_records=1)
        assert batch is not None
        assert box.dead_letter(batch, "rejected: HTTP 422: bad") == 1
        assert [r.seq for r in box.pending(Lane.NORMAL)] == [2]
        (loss,) = box.pending(Lane.PRIORITY)
        assert isinstance(loss, EventRecord) and loss.data["reason"] == "rejected"
        assert loss.data["seq_ranges"] == [[1, 1]]
        (dead,) = box.dead_letters()
        assert dead["seq"] == 1 and "422" in dead["reason"]
        assert json.loads(dead["body"])["seq"] == 1
        # a refused loss event does not make another one
        loss_batch = box.next_batch()
        assert loss_batch is not None and loss_batch.lane is Lane.PRIORITY
        box.dead_letter(loss_batch, "rejected")
        assert box.pending(Lane.PRIORITY) == []


def test_retained_copies_can_be_replayed(tmp_path: Path, time_: FakeTime) -> None:
    with open_outbox(tmp_path, time_, retention_s=30.0) as box:
        box.enqueue_many([telemetry(), telemetry(), telemetry()])
        box.ack([1])
        time_.t += 20
        box.ack([2])
        assert box.pending_records == 1
        assert box.replay_acked(time_.t - 10) == 1  # only seq 2 was acked in the window
        assert [r.seq for r in box.pending()] == [2, 3]
        box.ack([2, 3])
        box.expire()  # within the window: kept
        assert box.stats().stored_bytes > 0
        time_.t += 100
        box.expire()  # old copies are purged, silently (they were delivered)
        assert box.stats().stored_bytes == 0
        assert box.stats().dropped_records == 0


def test_durable_state_counters_and_command_status(tmp_path: Path, time_: FakeTime) -> None:
    with open_outbox(tmp_path, time_) as box:
        box.set_state("override", {"period_ms": 200})
        assert box.next_counter("eis") == 1
        assert box.next_counter("eis") == 2
        box.set_command_status("c1", "succeeded")
    with open_outbox(tmp_path, time_) as box:
        assert box.get_state("override") == {"period_ms": 200}
        assert box.next_counter("eis") == 3
        assert box.command_status("c1") == "succeeded"
        assert box.command_status("c2") is None
        box.set_state("override", None)
        assert box.get_state("override") is None


def test_listeners_hear_every_commit(tmp_path: Path, time_: FakeTime) -> None:
    calls: list[int] = []
    with open_outbox(tmp_path, time_) as box:
        box.add_listener(lambda: calls.append(1))
        box.enqueue(telemetry())
        box.enqueue_many([telemetry(), telemetry()])
        assert len(calls) == 2
    with pytest.raises(RuntimeError, match="closed"):
        box.enqueue(telemetry())


def test_a_full_disk_stores_nothing_and_keeps_the_counters(tmp_path: Path, time_: FakeTime) -> None:
    box = open_outbox(tmp_path, time_)
    box.enqueue(telemetry())
    before = box.stats()
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is full now
    with pytest.raises(sqlite3.OperationalError, match="full"):
        box.enqueue_many([telemetry(40.0 + k) for k in range(200)])
    after = box.stats()
    assert after.pending_records == before.pending_records == 1
    assert after.stored_bytes == before.stored_bytes
    box._db.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert box.enqueue(telemetry()) == 2
    box.close()
    reopened = open_outbox(tmp_path, time_)
    assert reopened.pending_records == 2
    reopened.close()
