"""Benchmark twin reads: ``GET /api/v1/batteries/{id}/twin`` requests/s and latency percentiles,
with ``GET /healthz`` (no auth, no database) measured in the same run as the baseline.

Run on demand (not in the test suite):
    .venv/bin/python bench/cloud_twin_reads.py [--seconds 10] [--clients 8] [--batteries 20]
        [--workers 2] [--load wrk|httpx] [--json]

A throwaway PostgreSQL (fsync off) with ``--batteries`` 16-cell batteries whose twins hold
reported state (one ingested batch each) and a desired reporting period (a delta to
compute); ``b2l cloud serve`` in its own process on a random
loopback port; ``--clients`` keep-alive connections, each one request at a time, read the twins
of random batteries for ``--seconds``, then ``/healthz`` for as long. The load comes from
``wrk`` (``--load wrk``, the default when it is installed: ``apt-get install wrk``), a C load
generator that leaves the 2 cores to the server, or from ``--clients`` httpx client processes
(``--load httpx``), which spend about as much CPU per request as the server. The
reader is an operator with a telemetry grant: each read of restricted data writes an audit row,
as SPEC section 5 requires (devices may not read the twin).

Targets (SPEC section 8): >= 3k requests/s with p99 < 20 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from threading import Barrier
from typing import Any

import httpx
from cloud_common import cloud_server, run_clients, token, wrk_get

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.security.context import SecurityContext
from cloud.services.accounts import create_user, grant_access
from cloud.services.batteries import BatteryService
from cloud.services.ingestion import IngestionService
from cloud.services.twins import TwinService
from cloud.settings import CloudSettings
from hil.services import PostgresServer
from twin.topology import BatteryTopology
from twin.uplink import UplinkBatch

PASSWORD = "bench-password-123"


def _auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}


def reader(
    barrier: Barrier, base_url: str, path_tokens: list[tuple[str, str]], seconds: float
) -> dict[str, Any]:
    """One client: GETs of random (path, token) for ``seconds``; latencies in ms."""
    rng = random.Random(os.getpid())
    latencies: list[float] = []
    with httpx.Client(base_url=base_url, timeout=30.0) as http:
        http.get(path_tokens[0][0], headers=_auth(path_tokens[0][1]))
        barrier.wait(timeout=300)
        end = time.perf_counter() + seconds
        while True:
            path, bearer = rng.choice(path_tokens)
            start = time.perf_counter()
            if start > end:
                break
            response = http.get(path, headers=_auth(bearer))
            latencies.append((time.perf_counter() - start) * 1000.0)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
    return {"latencies_ms": latencies}


def summary(results: list[dict[str, Any]], wall_s: float) -> dict[str, float]:
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))]

    return {
        "requests": n,
        "requests_per_s": n / wall_s,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1],
    }


def load(
    base_url: str, path_tokens: list[tuple[str, str]], args: argparse.Namespace
) -> dict[str, float]:
    """Requests/s and latencies of GETs of random ``path_tokens`` by the chosen generator."""
    if args.load == "wrk":
        return wrk_get(base_url, path_tokens, args.seconds, args.clients)
    return summary(*run_clients(reader, [(base_url, path_tokens, args.seconds)] * args.clients))


def seed(url: str, args: argparse.Namespace) -> None:
    """Batteries with reported state, and an operator with a telemetry grant on all."""
    settings = CloudSettings(_env_file=None, argon2_time_cost=1, argon2_memory_kib=1024)  # type: ignore[call-arg]
    security = SecurityContext.from_settings(settings)
    db = Database.from_url(url)
    now = datetime.now(UTC)
    try:
        registry = BatteryService(db)
        ingestion = IngestionService(db, settings)
        twins = TwinService(db)
        for b in range(args.batteries):
            battery_id = f"tw-{b:04d}"
            registry.register(battery_id, BatteryTopology(cells_per_module=16))
            records = [
                {
                    "kind": "telemetry",
                    "seq": s,
                    "timestamp": (now - timedelta(seconds=60 - s)).isoformat(),
                    "pillar1": [
                        {
                            "cell_id": c,
                            "voltage_v": 3.6,
                            "temperature_c": 25.0,
                            "current_a": -5.0,
                            "sot": 0.9,
                            "phase": 1.0,
                            "soc": 0.5,
                            "sos": 0.95,
                        }
                        for c in range(16)
                    ],
                    "packs": [{"pack_index": 0, "voltage_v": 57.6, "current_a": -5.0}],
                    "estimates": [{"cell_id": c, "soc": 0.5, "soc_std": 0.02} for c in range(16)],
                }
                for s in range(1, 11)
            ]
            ingestion.ingest(
                UplinkBatch.model_validate({"battery_id": battery_id, "records": records})
            )
            twins.patch_desired(battery_id, {"reporting_period_s": 2.0})  # a delta to compute
        create_user(db, security, "bench-operator", "operator", PASSWORD, now)
        grant_access(
            db,
            user_name="bench-operator",
            battery_id=None,
            categories=["telemetry"],
            valid_from=now - timedelta(hours=1),
            valid_until=None,
            granted_by="bench",
            now=now,
        )
    finally:
        db.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batteries", type=int, default=20)
    parser.add_argument(
        "--workers", type=int, default=2, help="b2l cloud serve --workers (one per core)"
    )
    parser.add_argument(
        "--load",
        choices=("wrk", "httpx"),
        default="wrk" if shutil.which("wrk") else "httpx",
        help="load generator (default: wrk if installed)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with PostgresServer(fsync=False) as server:
        url = server.create_database("bench_twin")
        upgrade(url)
        seed(url, args)
        with cloud_server(url, workers=args.workers) as server_under_test:
            base_url = server_under_test.url
            bearer = token(base_url, "bench-operator", PASSWORD)
            tokens = {f"tw-{b:04d}": bearer for b in range(args.batteries)}
            twin_paths = [(f"/api/v1/batteries/{b}/twin", t) for b, t in tokens.items()]
            health = [("/healthz", "")]
            twin = load(base_url, twin_paths, args)
            baseline = load(base_url, health, args)
    result = {
        "load": args.load,
        "clients": args.clients,
        "workers": args.workers,
        "reader": "operator",
        "cpus": os.cpu_count(),
        "twin": twin,
        "healthz": baseline,
        "ratio_twin_to_healthz": twin["requests_per_s"] / baseline["requests_per_s"],
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
