"""The outbox survives kill -9 of its writer: every record whose ``enqueue`` returned is there.

A child process appends records as fast as it can and prints each sequence number after
``enqueue`` returned (and before the next one); the test kills it with SIGKILL in the middle of
the stream, reopens the file and checks that every printed number is stored, that the numbers
are continuous from 1, and that numbering goes on after the last one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.outbox import Outbox

pytestmark = pytest.mark.integration

WRITER = """
import sys
from datetime import UTC, datetime
from edge_runtime.outbox import Outbox
from twin.measurements import PackMeasurement
from twin.uplink import EventRecord, TelemetryRecord

box = Outbox(sys.argv[1], "B-1", synchronous=sys.argv[2])
print("ready", flush=True)
k = 0
while True:
    k += 1
    now = datetime.now(UTC)
    if k % 7 == 0:
        seq = box.enqueue(EventRecord(seq=1, timestamp=now, event_type="alarm.x"), priority=True)
    else:
        pack = PackMeasurement(voltage_v=50.0, current_a=1.0)
        seq = box.enqueue(TelemetryRecord(seq=1, timestamp=now, packs=[pack]))
    sys.stdout.write(f"{seq}\\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_kill_9_of_the_writer_loses_no_returned_record(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "outbox.sqlite"
    returned: list[int] = []
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), synchronous],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20.0
        target = 150 + 50 * round_
        seen = 0
        while seen < target and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            returned.append(int(line))
            seen += 1
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer is inside enqueue or printing
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        # lines printed before the kill but not read yet were returned too
        returned += [int(x) for x in proc.stdout.read().split()]
        proc.stdout.close()
        assert seen == target, "the writer was too slow"

    with Outbox(path, "B-1") as box:
        stored = [r.seq for r in box.pending()]
        stats = box.stats()
        assert returned == sorted(set(returned)), "numbers strictly increasing across restarts"
        missing = set(returned) - set(stored)
        assert not missing, f"records whose enqueue returned are gone: {sorted(missing)[:10]}"
        assert stored == list(range(1, len(stored) + 1)), "no hole in the stored numbers"
        # at most the one record being written at each kill is stored without having been printed
        assert len(stored) - len(returned) <= 3
        assert stats.next_seq == len(stored) + 1
        assert box.enqueue(box.pending()[0]) == len(stored) + 1
