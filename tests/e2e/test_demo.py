"""``b2l demo`` end to end: cloud, simulated packs and edge runtimes as real processes.

The demo runs for a short while on SQLite (the embedded default) and on PostgreSQL; afterwards
the cloud's database must hold a continuous sequence of records per battery, and the twins the
state the simulated packs started from (a few tens of seconds of a home load barely move it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DURATION_S = 20


def _run_demo(
    tmp_path: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = tmp_path / "summary.json"
    argv = [
        sys.executable, "-m", "b2l.cli", "demo",
        "--packs", "2", "--duration", str(DURATION_S), "--port", "0",
        "--data-dir", str(tmp_path / "demo"), "--operator-password", "demo-Password-1",
        "--refresh", "1", "-o", str(summary), *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(summary.read_text(encoding="utf-8"))


def _check(done: subprocess.CompletedProcess[str], summary: dict[str, Any], url: str) -> None:
    assert "demo-operator / demo-Password-1" in done.stdout
    assert "/docs" in done.stdout
    batteries = {b["battery_id"]: b for b in summary["batteries"]}
    assert set(batteries) == {"demo-pack-01", "demo-pack-02"}
    assert batteries["demo-pack-01"]["pillar"].startswith("2")
    assert batteries["demo-pack-02"]["pillar"].startswith("1")
    # the packs start at SoC 0.35 and 0.35 + 0.4 * 0.618; the edge estimator must find them
    for battery_id, initial_soc in (("demo-pack-01", 0.35), ("demo-pack-02", 0.5972)):
        soc = batteries[battery_id]["soc"]
        assert soc is not None and abs(soc - initial_soc) < 0.04, (battery_id, soc)
        assert batteries[battery_id]["sos"] is not None
    assert batteries["demo-pack-01"]["soh"] is not None  # Pillar 2 reports SoH per cell
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            for battery_id in batteries:
                seqs = [
                    row[0]
                    for row in connection.execute(
                        text("SELECT seq FROM ingested_records WHERE battery_id = :b ORDER BY seq"),
                        {"b": battery_id},
                    )
                ]
                # one record a second at least, none lost and none twice
                assert len(seqs) >= DURATION_S / 2, (battery_id, len(seqs))
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), battery_id
    finally:
        engine.dispose()


def test_demo_on_sqlite(tmp_path: Path) -> None:
    done, summary = _run_demo(tmp_path)
    _check(done, summary, f"sqlite:///{tmp_path / 'demo' / 'b2l.db'}")


def test_demo_on_postgresql(tmp_path: Path, pg_database: Any) -> None:
    done, summary = _run_demo(tmp_path, "--database-url", pg_database.url)
    assert pg_database.url.split("@")[-1] in done.stdout  # the URL is shown without password
    _check(done, summary, pg_database.url)
