"""Benchmark cloud ingestion into PostgreSQL through the public HTTP API, against raw binary COPY.

Run on demand (not in the test suite):
    .venv/bin/python bench/cloud_ingestion_db.py [--batches 960] [--cells 16] [--records 100]
        [--batteries 8] [--clients 4] [--workers 2] [--connection-per-batch] [--mirror]
        [--service] [--cell-objects] [--json]

A throwaway PostgreSQL (``hil.services.PostgresServer``, fsync off) gets three migrated databases.

* **http**: ``b2l cloud serve --workers 2`` (uvicorn, its own processes, one per core) on the
  first database, on a random loopback port; ``--batteries`` batteries are registered, each
  with a device credential.
  ``--clients`` client processes (httpx) POST ``--batches`` UplinkBatch JSON bodies
  of ``--records`` telemetry records x ``--cells`` Pillar 1 cells (1,600 cell-rows each by
  default; cells as columns, as the edge sends them, or one object per cell with
  ``--cell-objects``) to ``/api/v1/batteries/{id}/telemetry`` with the device's bearer token,
  each client owning some batteries and sending their batches in seq order on one keep-alive
  connection, which the server hands to the worker with the fewest connections
  (``--connection-per-batch``: a new connection for each batch, as an edge uploading every
  minute opens, the server closing connections idle for 5 s); every answer must be 200 (after
  the commit). Bodies are built before the clock starts; the clock runs from the common start
  to the last answer.
  Meanwhile the CPU time of the server's process tree, of PostgreSQL's and of the clients'
  request loops is read (``/proc``): it shows which part uses the cores (in cores, and in
  microseconds per cell-row).
* **raw_copy**: the same cell rows through psycopg 3 binary COPY into the same partitioned table
  of the second database, one COPY and one commit per batch, on ``--clients`` threads: the floor
  SPEC section 8 compares against (targets: http >= 200k cell-rows/s and >= 0.25 of raw COPY).
* ``--service``: also ``IngestionService.ingest_json`` of the same JSON bodies in this process
  (parsed and stored, no HTTP) into a third database, on ``--clients`` threads (one process, so
  one core at most for Python): what the HTTP layer and the second worker add or cost.

Batteries are registered without a cell model unless ``--mirror`` (the cloud mirror then runs
the SoC filter on every batch). Prints one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from threading import Barrier
from typing import Any, NamedTuple

import httpx
import psycopg
from cloud_common import cloud_server, cpu_since, run_clients, token, tree_cpu_s

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.db.partitions import PartitionManager
from cloud.security.context import SecurityContext
from cloud.services.accounts import create_device
from cloud.services.batteries import BatteryService
from cloud.services.ingestion import IngestionService
from cloud.settings import CloudSettings
from hil.services import PostgresServer
from twin.cell_params import load_builtin
from twin.cells import COLUMNS_CONTEXT, CellGroup
from twin.measurements import Pillar1CellMeasurement
from twin.topology import BatteryTopology
from twin.uplink import TelemetryRecord, UplinkBatch

T0 = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
WARMUP_BATCHES = 3
_COPY_SQL = (
    "COPY cell_pillar1 (battery_id, seq, ts, cell_id, voltage_v, temperature_c, current_a, sot, "
    "phase, soc, sos) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["text", "int8", "timestamptz", "int4"] + ["float8"] * 7


def battery_id(index: int) -> str:
    return f"bench-{index:04d}"


def make_batch(battery: int, number: int, n_cells: int, n_records: int) -> UplinkBatch:
    """The ``number``-th batch (from 0) of a battery: 1 Hz telemetry, seqs from 1."""
    records = []
    for i in range(n_records):
        seq = number * n_records + i + 1
        cells = [
            Pillar1CellMeasurement(
                cell_id=c,
                voltage_v=3.6 + 0.001 * ((seq + c) % 50),
                temperature_c=25.0 + 0.01 * c,
                current_a=-5.0,
                sot=0.9,
                phase=1.0,
                soc=0.5,
                sos=0.95,
            )
            for c in range(n_cells)
        ]
        records.append(
            TelemetryRecord(
                seq=seq,
                timestamp=T0 + timedelta(seconds=seq),
                pillar1=CellGroup(Pillar1CellMeasurement, rows=cells),
            )
        )
    return UplinkBatch(battery_id=battery_id(battery), records=records)


def batch_json(batch: UplinkBatch, cell_objects: bool) -> bytes:
    """A batch's JSON as the edge sends it: cells as columns (``--cell-objects``: one object
    per cell, the other form the API takes)."""
    return batch.model_dump_json(context=None if cell_objects else COLUMNS_CONTEXT).encode()


def plan(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(battery, batch number) of every batch, batteries in turn, warm-up batches first."""
    total = args.batches + WARMUP_BATCHES
    return [(b % args.batteries, b // args.batteries) for b in range(total)]


def cell_rows(batch: UplinkBatch) -> list[tuple[Any, ...]]:
    """The Pillar 1 rows of a batch as the raw COPY writes them."""
    return [
        (batch.battery_id, r.seq, r.timestamp, m.cell_id, m.voltage_v, m.temperature_c,
         m.current_a, m.sot, m.phase, m.soc, m.sos)
        for r in batch.records
        if isinstance(r, TelemetryRecord)
        for m in r.pillar1
    ]  # fmt: skip


# -- http --------------------------------------------------------------------------------------


def http_client(
    barrier: Barrier,
    base_url: str,
    tokens: dict[str, str],
    work: list[tuple[int, int]],
    n_cells: int,
    n_records: int,
    keep_alive: bool,
    cell_objects: bool,
) -> dict[str, Any]:
    """One client process: POST its batches in order after the common start, each on a
    connection of its own unless ``keep_alive``."""
    bodies = [
        (battery_id(b), batch_json(make_batch(b, n, n_cells, n_records), cell_objects))
        for b, n in work
    ]
    rows = 0
    limits = httpx.Limits(max_keepalive_connections=None if keep_alive else 0)
    with httpx.Client(base_url=base_url, timeout=60.0, limits=limits) as http:
        barrier.wait(timeout=300)
        start, start_cpu = time.perf_counter(), time.process_time()
        for battery, body in bodies:
            response = http.post(
                f"/api/v1/batteries/{battery}/telemetry",
                content=body,
                headers={
                    "Authorization": f"Bearer {tokens[battery]}",
                    "Content-Type": "application/json",
                },
            )
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
            rows += int(response.json()["cell_rows"])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"rows": rows, "elapsed_s": elapsed, "cpu_s": cpu}


class HttpRun(NamedTuple):
    """The HTTP phase: cell-rows, wall seconds, and CPU seconds spent meanwhile by each part."""

    rows: int
    seconds: float
    cpu_s: dict[str, float]
    """``server`` (``b2l cloud serve`` and its workers; ``busiest_server_process``: the one of
    them that used the most), ``postgresql`` (every backend) and ``clients`` (their request
    loops), from the common start to the last answer."""


def bench_http(url: str, postmaster_pid: int, args: argparse.Namespace) -> HttpRun:
    """Cell-rows per second through ``POST /api/v1/batteries/{id}/telemetry``, and the CPU
    the server, PostgreSQL and the clients spent on them."""
    settings = CloudSettings(_env_file=None, argon2_time_cost=1, argon2_memory_kib=1024)  # type: ignore[call-arg]
    security = SecurityContext.from_settings(settings)
    db = Database.from_url(url)
    devices: dict[str, tuple[str, str]] = {}
    try:
        registry = BatteryService(db)
        parameters = load_builtin("nmc_lgm50") if args.mirror else None
        topology = BatteryTopology(cells_per_module=args.cells)
        for b in range(args.batteries):
            registry.register(battery_id(b), topology, cell_parameters=parameters)
            new = create_device(db, security, battery_id(b), datetime.now(UTC))
            devices[battery_id(b)] = (new.device_id, new.secret)
    finally:
        db.dispose()
    batches = plan(args)
    with cloud_server(url, workers=args.workers) as server:
        base_url = server.url
        tokens = {b: token(base_url, d, s) for b, (d, s) in devices.items()}
        with httpx.Client(base_url=base_url, timeout=60) as http:  # warm-up: partitions, caches
            for b, n in batches[:WARMUP_BATCHES]:
                warm = batch_json(make_batch(b, n, args.cells, args.records), args.cell_objects)
                http.post(
                    f"/api/v1/batteries/{battery_id(b)}/telemetry",
                    content=warm,
                    headers={
                        "Authorization": f"Bearer {tokens[battery_id(b)]}",
                        "Content-Type": "application/json",
                    },
                ).raise_for_status()
        timed = batches[WARMUP_BATCHES:]
        lanes = [[job for job in timed if job[0] % args.clients == i] for i in range(args.clients)]
        jobs = [
            (
                base_url,
                tokens,
                lane,
                args.cells,
                args.records,
                not args.connection_per_batch,
                args.cell_objects,
            )
            for lane in lanes
            if lane
        ]
        before: dict[str, dict[int, float]] = {}

        def on_start() -> None:
            before.update(server=tree_cpu_s(server.pid), postgresql=tree_cpu_s(postmaster_pid))

        results, wall = run_clients(http_client, jobs, on_start)
        used = {
            part: cpu_since(before[part], tree_cpu_s(pid))
            for part, pid in (("server", server.pid), ("postgresql", postmaster_pid))
        }
        cpu_s = {
            "server": sum(used["server"].values()),
            "busiest_server_process": max(used["server"].values(), default=0.0),
            "postgresql": sum(used["postgresql"].values()),
            "clients": sum(r["cpu_s"] for r in results),
        }
    return HttpRun(sum(r["rows"] for r in results), wall, cpu_s)


# -- raw COPY and the in-process service -------------------------------------------------------


def timed_in_threads(work: Sequence[Callable[[], int]], threads: int) -> tuple[int, float]:
    """Run the callables on ``threads`` threads; total rows and wall-clock seconds."""
    lanes: list[list[Callable[[], int]]] = [list(work[i::threads]) for i in range(threads)]
    totals = [0] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for item in lanes[i]:
                totals[i] += item()
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(totals), elapsed


def bench_raw_copy(url: str, args: argparse.Namespace) -> tuple[int, float]:
    """The same cell rows by raw binary COPY, one COPY and one commit per batch."""
    batches = [make_batch(b, n, args.cells, args.records) for b, n in plan(args)]
    db = Database.from_url(url)
    try:
        PartitionManager(db.engine).ensure(r.timestamp for b in batches for r in b.records)
        conninfo = db.engine.url.render_as_string(hide_password=False).replace(
            "postgresql+psycopg://", "postgresql://"
        )
    finally:
        db.dispose()
    rows = [cell_rows(b) for b in batches]
    connections = [psycopg.connect(conninfo) for _ in range(args.clients)]
    local = threading.local()
    free = list(connections)
    lock = threading.Lock()

    def copy_batch(batch_rows: list[tuple[Any, ...]]) -> int:
        if not hasattr(local, "conn"):
            with lock:
                local.conn = free.pop()
        conn = local.conn
        with conn.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
            copy.set_types(_COPY_TYPES)
            for row in batch_rows:
                copy.write_row(row)
        conn.commit()
        return len(batch_rows)

    try:
        for batch_rows in rows[:WARMUP_BATCHES]:
            copy_batch(batch_rows)
        local.__dict__.pop("conn", None)
        free[:] = list(connections)
        return timed_in_threads(
            [lambda r=batch_rows: copy_batch(r) for batch_rows in rows[WARMUP_BATCHES:]],
            args.clients,
        )
    finally:
        for conn in connections:
            conn.close()


def bench_service(url: str, args: argparse.Namespace) -> tuple[int, float]:
    """Cell-rows per second through ``IngestionService.ingest_json`` in this process: the same
    JSON bodies as over HTTP, parsed and stored, without the HTTP layer."""
    bodies = [
        batch_json(make_batch(b, n, args.cells, args.records), args.cell_objects)
        for b, n in plan(args)
    ]
    db = Database.from_url(url, pool_size=max(2, args.clients))
    try:
        topology = BatteryTopology(cells_per_module=args.cells)
        parameters = load_builtin("nmc_lgm50") if args.mirror else None
        registry = BatteryService(db)
        for b in range(args.batteries):
            registry.register(battery_id(b), topology, cell_parameters=parameters)
        service = IngestionService(db, CloudSettings(_env_file=None))  # type: ignore[call-arg]
        for body in bodies[:WARMUP_BATCHES]:
            service.ingest_json(body)
        return timed_in_threads(
            [lambda b=body: service.ingest_json(b).cell_rows for body in bodies[WARMUP_BATCHES:]],
            args.clients,
        )
    finally:
        db.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=960, help="timed batches (+3 warm-up)")
    parser.add_argument("--cells", type=int, default=16, help="cells per record")
    parser.add_argument("--records", type=int, default=100, help="records per batch")
    parser.add_argument("--batteries", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4, help="client processes (COPY threads)")
    parser.add_argument("--mirror", action="store_true", help="register with a cell model")
    parser.add_argument("--service", action="store_true", help="also the in-process service")
    parser.add_argument(
        "--workers", type=int, default=2, help="b2l cloud serve --workers (one per core)"
    )
    parser.add_argument(
        "--connection-per-batch",
        action="store_true",
        help="a new connection for each batch, as an edge uploading every minute opens (the "
        "server closes a connection idle for 5 s); default: one connection per client",
    )
    parser.add_argument(
        "--cell-objects",
        action="store_true",
        help="send each record's cells as one JSON object per cell (default: as columns, the "
        "form the edge sends)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.clients = max(1, min(args.clients, args.batteries))

    with PostgresServer(fsync=False) as server:
        urls = {name: server.create_database(f"bench_{name}") for name in ("http", "raw", "svc")}
        for url in urls.values():
            upgrade(url)
        postmaster_pid = server.postmaster_pid
        if postmaster_pid is None:
            raise RuntimeError("the throwaway PostgreSQL has no postmaster PID")
        http = bench_http(urls["http"], postmaster_pid, args)
        http_rows, http_s = http.rows, http.seconds
        raw_rows, raw_s = bench_raw_copy(urls["raw"], args)
        service = bench_service(urls["svc"], args) if args.service else None
    result: dict[str, Any] = {
        "batches": args.batches,
        "cell_rows_per_batch": args.cells * args.records,
        "clients": args.clients,
        "connection_per_batch": args.connection_per_batch,
        "cells_as": "objects" if args.cell_objects else "columns",
        "batteries": args.batteries,
        "mirror": args.mirror,
        "cpus": os.cpu_count(),
        "http_rows": http_rows,
        "http_rows_per_s": http_rows / http_s,
        "raw_copy_rows": raw_rows,
        "raw_copy_rows_per_s": raw_rows / raw_s,
        "ratio_http_to_copy": (http_rows / http_s) / (raw_rows / raw_s),
        "http_cpu_cores": {part: cpu / http_s for part, cpu in http.cpu_s.items()},
        "http_cpu_us_per_row": {part: cpu / http_rows * 1e6 for part, cpu in http.cpu_s.items()},
    }
    if service is not None:
        result["service_rows_per_s"] = service[0] / service[1]
        result["ratio_service_to_copy"] = result["service_rows_per_s"] / (raw_rows / raw_s)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.batches} batches x {result['cell_rows_per_batch']} cell-rows, "
            f"{args.clients} client(s), mirror {'on' if args.mirror else 'off'}, "
            f"cells as {result['cells_as']}"
        )
        print(f"  HTTP API          : {result['http_rows_per_s']:>12,.0f} cell-rows/s")
        if service is not None:
            print(f"  service (no HTTP) : {result['service_rows_per_s']:>12,.0f} cell-rows/s")
        print(f"  raw binary COPY   : {result['raw_copy_rows_per_s']:>12,.0f} cell-rows/s")
        print(f"  ratio HTTP / COPY : {result['ratio_http_to_copy']:.2f} (target >= 0.25)")
        cores, per_row = result["http_cpu_cores"], result["http_cpu_us_per_row"]
        print(
            "  CPU in the HTTP phase, cores (us per cell-row): "
            + ", ".join(f"{part} {cores[part]:.2f} ({per_row[part]:.1f})" for part in cores)
            + f"; {os.cpu_count()} CPUs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
