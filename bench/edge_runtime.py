"""Benchmark the edge runtime: CPU and RSS of ONE ``b2l edge run`` process per 16-cell pack.

Run on demand (not in the test suite):
    .venv/bin/python bench/edge_runtime.py [--seconds 60] [--warmup 10] [--cells 16]
                                           [--uplink mqtt|memory] [--link serial|can]

Target (SPEC section 8): <= 1 % of one core and <= 80 MB RSS per 16-cell pack at 1 Hz.

Three processes, so that only the runtime is measured:

* the pack simulator, ``b2l sim pack`` in real time (``--realtime 1``), 16 cells reporting at
  1 Hz on a TCP port (``--link serial``: Pillar 1, ``socket://``) - its CPU is reported apart;
* the broker, a throwaway Mosquitto on loopback (``--uplink mqtt``, the default): QoS 1, one
  publish per record batch, PUBACKs, the outbox's fsyncs - the real work of an edge;
  ``--uplink memory`` measures the runtime without any uplink traffic;
* the edge runtime, ``b2l edge run --config`` with a generated configuration, its outbox on disk
  (``synchronous = FULL``).

After ``--warmup`` seconds (imports, first estimates), the runtime's user+system CPU time
(``/proc/PID/stat``) is read at the start and the end of ``--seconds``, and its RSS
(``/proc/PID/status`` VmRSS) every second; the summary is JSON on stdout. ``--link can`` runs
the Pillar 2 simulator and the runtime on a ``udp_multicast`` bus; use it only inside an isolated
network namespace (SPEC section 4), never on a host's real interfaces.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path.pop(0)  # this file is named like the package it measures: do not shadow it
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 80.0
_TICKS = os.sysconf("SC_CLK_TCK")


def b2l(*args: str) -> list[str]:
    """A ``b2l`` command line of this interpreter."""
    return [sys.executable, "-m", "b2l.cli", *args]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mb(pid: int) -> float:
    """Resident set size in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def written_mb(pid: int) -> float:
    """Bytes the process caused to be written to storage (``/proc/PID/io`` write_bytes), MB."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def start_simulator(args: argparse.Namespace) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The pack simulator in real time; returns it and the edge's ``[link]`` table."""
    link = (
        ["--serial", "tcp:0"] if args.link == "serial" else ["--can", "udp_multicast:239.74.163.9"]
    )
    proc = subprocess.Popen(
        b2l(
            "sim",
            "pack",
            *link,
            "--realtime",
            "1",
            "--cells",
            str(args.cells),
            "--profile",
            "domestic",
            "--soc",
            "0.6",
            "--quiet",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    where = proc.stdout.readline().strip()
    if args.link == "serial":
        if " on " not in where:
            raise SystemExit(f"the simulator did not start: {where!r}")
        return proc, {"kind": "serial", "url": where.split(" on ", 1)[1]}
    return proc, {"kind": "can", "interface": "udp_multicast", "channel": "239.74.163.9"}


def write_config(path: Path, link: dict[str, Any], uplink: dict[str, Any], cells: int) -> None:
    """The runtime's TOML configuration."""

    def table(values: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())

    path.write_text(
        f'battery_id = "BENCH-1"\nstatus_period_s = 5.0\n'
        f"[topology]\ncells_per_module = {cells}\n"
        f"[link]\n{table(link)}\n[uplink]\n{table(uplink)}\n"
        f'[outbox]\npath = "{path.parent / "outbox.sqlite"}"\nsynchronous = "FULL"\n'
        f'[logging]\nlevel = "WARNING"\nformat = "json"\n',
        encoding="utf-8",
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the three processes and measure the runtime."""
    tmp = Path(tempfile.mkdtemp(prefix="b2l-edge-bench-"))
    broker = None
    sim, link = start_simulator(args)
    edge: subprocess.Popen[bytes] | None = None
    try:
        if args.uplink == "mqtt":
            from hil.services import MosquittoServer

            broker = MosquittoServer(persistence=False).start()
            uplink: dict[str, Any] = {"kind": "mqtt", "host": broker.host, "port": broker.port}
        else:
            uplink = {"kind": "memory"}
        config = tmp / "edge.toml"
        write_config(config, link, uplink, args.cells)
        edge = subprocess.Popen(
            b2l("edge", "run", "--config", str(config)),
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "edge.log").open("wb"),
            cwd=ROOT,
        )
        time.sleep(args.warmup)
        if edge.poll() is not None:
            raise SystemExit(f"the runtime exited:\n{(tmp / 'edge.log').read_text()}")
        status_path = tmp / "outbox.sqlite.status.json"
        before = json.loads(status_path.read_text())
        edge0, sim0, wall0 = cpu_s(edge.pid), cpu_s(sim.pid), time.monotonic()
        io0 = written_mb(edge.pid)
        rss = [rss_mb(edge.pid)]
        while time.monotonic() - wall0 < args.seconds:
            time.sleep(1.0)
            rss.append(rss_mb(edge.pid))
        edge1, sim1, wall1 = cpu_s(edge.pid), cpu_s(sim.pid), time.monotonic()
        io1 = written_mb(edge.pid)
        time.sleep(5.5)  # one more status period
        after = json.loads(status_path.read_text())
    finally:
        if edge is not None:
            edge.send_signal(signal.SIGTERM)
            edge.wait(30)
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
        if broker is not None:
            broker.stop()
    wall = wall1 - wall0
    cpu_percent = 100.0 * (edge1 - edge0) / wall
    samples = after["link"]["samples"] - before["link"]["samples"]
    acked = after["forwarder"]["records_acked"] - before["forwarder"]["records_acked"]
    result = {
        "benchmark": "edge_runtime",
        "cells": args.cells,
        "link": args.link,
        "uplink": args.uplink,
        "seconds": round(wall, 1),
        "edge_cpu_percent_of_one_core": round(cpu_percent, 3),
        "edge_rss_mb_max": round(max(rss), 1),
        "edge_rss_mb_end": round(rss[-1], 1),
        "edge_disk_writes_mb_per_day": round((io1 - io0) / wall * 86_400, 1),
        "simulator_cpu_percent_of_one_core": round(100.0 * (sim1 - sim0) / wall, 3),
        "samples_per_s": round(samples / (wall + 5.5), 2),
        "records_acked_per_s": round(acked / (wall + 5.5), 2),
        "outbox_pending_end": after["outbox"]["pending_records"],
        "target_cpu_percent": TARGET_CPU_PERCENT,
        "target_rss_mb": TARGET_RSS_MB,
        "cpu_ok": cpu_percent <= TARGET_CPU_PERCENT,
        "rss_ok": max(rss) <= TARGET_RSS_MB,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured wall seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--cells", type=int, default=16, help="series cells of the pack")
    parser.add_argument("--uplink", choices=("mqtt", "memory"), default="mqtt")
    parser.add_argument("--link", choices=("serial", "can"), default="serial")
    args = parser.parse_args()
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
