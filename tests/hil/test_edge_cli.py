"""``b2l edge run`` and ``b2l edge status`` as processes, with nothing stubbed.

A Pillar 1 simulator runs in its own process (``b2l sim pack --serial tcp:0 --realtime 1``), the
real cloud app is served on SQLite by uvicorn on a loopback port (``edge_support.CloudServer``),
and ``b2l edge run`` reads the one and feeds the other until SIGTERM. Until ``b2l/cli.py`` lists
``edge_cmd`` (and ``cloud_cmd``), the processes run ``b2l.cli.main`` with those groups added.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_support import CloudServer

from hil.b2l_process import b2l_argv

pytestmark = pytest.mark.hil

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("B2L_")}
    out["PYTHONUNBUFFERED"] = "1"
    return out


@pytest.fixture
def simulator() -> Iterator[str]:
    proc = subprocess.Popen(
        b2l_argv(
            "sim",
            "pack",
            "--serial",
            "tcp:0",
            "--realtime",
            "1",
            "--cells",
            "4",
            "--current",
            "-5",
            "--soc",
            "0.6",
            "--quiet",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Pillar 1 BMS on socket://"), line
        yield line.split(" on ", 1)[1].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    server = CloudServer(tmp_path)
    server.start()
    yield server
    server.close()


def write_config(tmp_path: Path, url: str, cloud: CloudServer) -> Path:
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
battery_id = "{cloud.battery_id}"
status_period_s = 0.5
[topology]
cells_per_module = 4
[link]
kind = "serial"
url = "{url}"
[outbox]
path = "{tmp_path / "data" / "outbox.sqlite"}"
[uplink]
kind = "http"
base_url = "{cloud.base_url}"
device_id = "{cloud.device_id}"
secret = "overridden by the environment"
linger_s = 0.2
command_poll_s = 1.0
[logging]
format = "json"
""",
        encoding="utf-8",
    )
    return config


def status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        b2l_argv("edge", "status", "--config", str(config), *extra),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=60,
    )


def test_edge_run_feeds_the_cloud_until_sigterm_and_status_reads_it(
    tmp_path: Path, simulator: str, cloud: CloudServer
) -> None:
    config = write_config(tmp_path, simulator, cloud)
    edge_env = {**env(), "B2L_EDGE_UPLINK__SECRET": cloud.secret}
    stderr_path = tmp_path / "edge.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            b2l_argv("edge", "run", "--config", str(config)),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            env=edge_env,
        )
        try:
            deadline = time.monotonic() + 40
            while len(cloud.stored_seqs()) < 6:
                assert proc.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, "no telemetry reached the cloud"
                time.sleep(0.2)
            time.sleep(1.0)
            shown = status(config, "--json")
            assert shown.returncode == 0, shown.stderr
            doc = json.loads(shown.stdout)
            assert doc["running"] is True and doc["battery_id"] == cloud.battery_id
            assert doc["link"]["connected"] is True and doc["link"]["kind"] == "serial"
            assert doc["link"]["samples"] >= 3
            assert doc["last_sample_at"] is not None
            assert doc["outbox"]["pending_records"] <= 5
            assert doc["forwarder"]["uplink"]["kind"] == "http"
            assert doc["forwarder"]["records_acked"] >= 5
            assert doc["alarms"] == []
            text = status(config)
            assert text.returncode == 0
            assert "running" in text.stdout and "serial (pillar 1): connected" in text.stdout
            assert "last sample" in text.stdout and "outbox" in text.stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
    assert code == 0, stderr_path.read_text()
    lines = [json.loads(line) for line in stderr_path.read_text().splitlines() if line.strip()]
    assert any(line["message"] == "edge runtime started" for line in lines)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    seqs = cloud.stored_seqs()
    assert seqs == list(range(1, len(seqs) + 1)), "continuous, none lost"
    after = status(config, "--json")
    assert after.returncode == 3
    assert json.loads(after.stdout)["stopped_at"] is not None
    assert "NOT RUNNING" in status(config).stdout


def test_edge_check_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "edge.toml"
    bad.write_text('battery_id = "B-1"\n[topology]\ncells_per_module = 4\n[link]\nkind = "usb"\n')
    result = subprocess.run(
        b2l_argv("edge", "check", "--config", str(bad)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=60,
    )
    assert result.returncode == 1
    assert "link: Input tag 'usb'" in result.stderr and "uplink: Field required" in result.stderr
    missing = subprocess.run(
        b2l_argv("edge", "status", "--status-file", str(tmp_path / "none.json")),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=60,
    )
    assert missing.returncode == 1 and "has `b2l edge run` started" in missing.stderr
