"""Benchmark MQTT ingestion: QoS 1 messages per second through Mosquitto into the consumer.

Run on demand (not in the test suite):
    .venv/bin/python bench/cloud_mqtt_ingestion.py [--messages 20000] [--batteries 100]
        [--cells 16] [--publishers 2] [--consumers 1] [--estimates] [--mirror] [--cell-objects]
        [--phases drain,live,floor] [--set B2L_NAME=VALUE ...] [--json]

A throwaway PostgreSQL (fsync off) and a throwaway Mosquitto (``max_queued_messages 0``) on
loopback; ``--batteries`` batteries registered. The consumer is ``b2l cloud mqtt`` in its own
process (persistent session, shared subscription, group commits, PUBACK after commit).

* **drain**: the consumers subscribe once and stop; ``--publishers`` processes publish
  ``--messages`` QoS 1 messages (each an UplinkBatch of one telemetry record of ``--cells``
  Pillar 1 cells and a pack, cells as columns as the edge sends them, ``--cell-objects`` one
  object per cell; ``--estimates`` adds the edge's estimates), which the broker queues
  in the consumers' sessions; then the consumers start again and drain them. Its rate is
  measured in the database: messages stored after the first group commit divided by the time
  from the first to the last commit (``ingested_records.received_at``), so start-up is not in.
  The CPU time of the consumers', PostgreSQL's and the broker's process trees, from the first
  poll that finds records stored until every twin shows its battery's newest record, is printed
  in µs per message, with how long the twins took after the last record was stored
  (``--set B2L_MQTT_TWIN_INTERVAL_S=1``: twins written once a second, not at every commit).
* **live**: publishers and consumer run at once (all on the same 2 cores); the rate is from the
  first to the last commit as well.
* **floor**: the drain again, with ``--consumers`` bare paho clients in place of ``b2l cloud
  mqtt`` (the same MQTT 5 persistent session, shared subscription and manual PUBACKs, but each
  message acknowledged on arrival and nothing decoded or stored): what paho and this broker
  deliver on this machine, the baseline the drain is compared with (``ratio_drain_to_floor``).

Target (SPEC section 8): >= 10k messages/s at QoS 1. Prints one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from threading import Barrier
from typing import Any

import paho.mqtt.client as mqtt
from cloud_common import b2l_argv, cloud_env, cloud_process, cpu_since, run_clients, tree_cpu_s
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import text

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.services.batteries import BatteryService
from cloud.settings import CloudSettings
from hil.services import MosquittoServer, PostgresServer
from twin.cell_params import load_builtin
from twin.topology import BatteryTopology

T0 = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
CLIENT_ID = "bench-consumer"
FLOOR_GROUP = "bench-floor"


def message(battery: int, seq: int, n_cells: int, estimates: bool, cell_objects: bool) -> bytes:
    """One telemetry record as the edge publishes it: cells as columns (``cell_objects``: one
    JSON object per cell, the other form the cloud takes)."""
    pillar1 = [
        {"cell_id": c, "voltage_v": 3.6 + 0.001 * ((seq + c) % 50), "temperature_c": 25.0,
         "current_a": -5.0, "sot": 0.9, "phase": 1.0, "soc": 0.5, "sos": 0.95}
        for c in range(n_cells)
    ]  # fmt: skip
    record: dict[str, Any] = {
        "kind": "telemetry",
        "seq": seq,
        "timestamp": (T0 + timedelta(seconds=seq)).isoformat(),
        "pillar1": pillar1 if cell_objects else _columns(pillar1),
        "packs": [{"pack_index": 0, "voltage_v": 3.6 * n_cells, "current_a": -5.0, "faults": []}],
    }
    if estimates:
        cells = [{"cell_id": c, "soc": 0.5, "soc_std": 0.02} for c in range(n_cells)]
        record["estimates"] = cells if cell_objects else _columns(cells)
    return json.dumps({"battery_id": f"mq-{battery:04d}", "records": [record]}).encode()


def _columns(cells: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [cell[name] for cell in cells] for name in cells[0]}


def publisher(
    barrier: Barrier,
    host: str,
    port: int,
    work: list[tuple[int, int]],
    n_cells: int,
    estimates: bool,
    cell_objects: bool,
) -> dict[str, Any]:
    """One publisher process: QoS 1 publishes, up to 1000 in flight, waits for every PUBACK."""
    payloads = [
        (f"b2l/v1/mq-{b:04d}/telemetry", message(b, s, n_cells, estimates, cell_objects))
        for b, s in work
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = [0]
    client.on_publish = lambda *_: acked.__setitem__(0, acked[0] + 1)
    client.connect(host, port)
    client.loop_start()
    barrier.wait(timeout=300)
    start = time.perf_counter()
    for topic, body in payloads:
        client.publish(topic, body, qos=1)
    deadline = time.monotonic() + 600
    while acked[0] < len(payloads) and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return {"published": acked[0], "elapsed_s": elapsed}


def publisher_lanes(args: argparse.Namespace) -> list[list[tuple[int, int]]]:
    """(battery, seq) of every message, batteries in turn, split over the publishers by
    battery (so each battery's messages go out in seq order)."""
    work = [(i % args.batteries, i // args.batteries + 1) for i in range(args.messages)]
    return [[w for w in work if w[0] % args.publishers == p] for p in range(args.publishers)]


def bare_consumer(
    barrier: Barrier, host: str, port: int, client_id: str, receive_maximum: int, drain: bool
) -> dict[str, Any]:
    """A paho client that only PUBACKs: subscribes (persistent session) and leaves, or drains
    its session until no message came for a second. Times are wall-clock (compared across
    processes): ``first``/``last`` message received."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = receive_maximum
    seen: dict[str, Any] = {"received": 0, "first": None, "last": None}

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        c.ack(msg.mid, msg.qos)
        now = time.time()
        seen["received"] += 1
        seen["first"] = seen["first"] or now
        seen["last"] = now

    client.on_message = on_message
    client.connect(host, port, clean_start=False, properties=properties)
    client.subscribe([(f"$share/{FLOOR_GROUP}/b2l/v1/+/telemetry", SubscribeOptions(qos=1))])
    client.loop_start()
    barrier.wait(timeout=300)
    time.sleep(1.0)
    while drain and (seen["last"] is None or time.time() - seen["last"] < 1.0):
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    return seen


def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The drain with bare paho consumers (see the module docstring)."""
    lanes = publisher_lanes(args)
    with MosquittoServer(extra_config="max_queued_messages 0") as broker:
        receive_maximum = int(  # as the consumers of the drain get it
            dict(args.set).get(
                "B2L_MQTT_RECEIVE_MAXIMUM",
                CloudSettings.model_fields["mqtt_receive_maximum"].default,
            )
        )
        consumers = [
            (broker.host, broker.port, f"bench-floor-{k}", receive_maximum)
            for k in range(args.consumers)
        ]
        run_clients(bare_consumer, [(*c, False) for c in consumers])  # the sessions
        jobs = [
            (broker.host, broker.port, lane, args.cells, args.estimates, args.cell_objects)
            for lane in lanes
        ]
        results, wall = run_clients(publisher, jobs)
        drained, _ = run_clients(bare_consumer, [(*c, True) for c in consumers])
    got = [d for d in drained if d["received"]]
    total = sum(d["received"] for d in got)
    span_s = max(d["last"] for d in got) - min(d["first"] for d in got) if got else 0.0
    return {
        "messages": args.messages,
        "published_per_s": sum(r["published"] for r in results) / wall,
        "received": total,
        "consumer_messages_per_s": (total - len(got)) / span_s if span_s > 0 else None,
    }


def commit_span(db: Database) -> tuple[int, int, float]:
    """(stored, stored in the first commit, seconds from the first to the last commit)."""
    with db.read() as session:
        total, first, last = session.execute(
            text("SELECT count(*), min(received_at), max(received_at) FROM ingested_records")
        ).one()
        if not total:
            return 0, 0, 0.0
        in_first = session.execute(
            text("SELECT count(*) FROM ingested_records WHERE received_at = :t"), {"t": first}
        ).scalar_one()
    return int(total), int(in_first), (last - first).total_seconds()


def stored(db: Database) -> int:
    """Records stored so far."""
    with db.read() as session:
        return int(session.execute(text("SELECT count(*) FROM ingested_records")).scalar_one())


def wait_stored(db: Database, n: int, timeout_s: float) -> None:
    """Until ``n`` records are stored; polled twice a second with one count (the rate comes
    from the commit times, so polling less often takes less CPU from what is measured)."""
    deadline = time.monotonic() + timeout_s
    while stored(db) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {stored(db)} of {n} stored after {timeout_s}s")
        time.sleep(0.5)


def wait_stored_cpu(
    db: Database, n: int, timeout_s: float, parts: dict[str, list[int]]
) -> tuple[int, dict[str, float], float]:
    """``wait_stored``, then until every twin shows its battery's newest stored record (with
    ``B2L_MQTT_TWIN_INTERVAL_S`` they follow later), reading the CPU of each part (process
    trees by root PID) from the first poll that finds records stored to the end: (records
    stored meanwhile, CPU seconds by part, seconds the twins took after the last record was
    stored), so start-up and the idle wait before the first commit are left out."""
    deadline = time.monotonic() + timeout_s
    first: tuple[int, dict[str, dict[int, float]]] | None = None
    while True:
        count = stored(db)
        if count and first is None:
            first = count, {part: _trees_cpu_s(pids) for part, pids in parts.items()}
        if count >= n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count} of {n} stored after {timeout_s}s")
        time.sleep(0.5)
    assert first is not None
    all_stored = time.monotonic()
    while twins_behind(db):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{twins_behind(db)} twins behind after {timeout_s}s")
        time.sleep(0.1)
    lag_s = time.monotonic() - all_stored
    used = {
        part: sum(cpu_since(first[1][part], _trees_cpu_s(pids)).values())
        for part, pids in parts.items()
    }
    return count - first[0], used, lag_s


def twins_behind(db: Database) -> int:
    """Twins whose reported ``seq`` is older than their battery's newest stored record."""
    with db.read() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM twins t JOIN (SELECT battery_id, max(seq) AS m "
                    "FROM ingested_records GROUP BY battery_id) i USING (battery_id) "
                    "WHERE coalesce((t.reported::json->>'seq')::bigint, 0) < i.m"
                )
            ).scalar_one()
        )


def _trees_cpu_s(pids: Sequence[int]) -> dict[int, float]:
    return {pid: cpu for root in pids for pid, cpu in tree_cpu_s(root).items()}


def run_phase(name: str, server: PostgresServer, args: argparse.Namespace) -> dict[str, Any]:
    url = server.create_database(f"bench_mqtt_{name}")
    upgrade(url)
    db = Database.from_url(url)
    registry = BatteryService(db)
    params = load_builtin("nmc_lgm50") if args.mirror else None
    for b in range(args.batteries):
        registry.register(
            f"mq-{b:04d}", BatteryTopology(cells_per_module=args.cells), cell_parameters=params
        )
    lanes = publisher_lanes(args)
    with MosquittoServer(extra_config="max_queued_messages 0") as broker:
        env = cloud_env(url, **dict(args.set))
        consumers = args.consumers
        argvs = [
            b2l_argv(
                "cloud", "mqtt", "--mqtt-url", f"mqtt://{broker.host}:{broker.port}",
                "--client-id", CLIENT_ID if k == 0 else f"{CLIENT_ID}-{k}",
                "--no-commands", "--no-migrate",
            )
            for k in range(consumers)
        ]  # fmt: skip
        probe = (0, 10**9)
        jobs = [
            (broker.host, broker.port, lane, args.cells, args.estimates, args.cell_objects)
            for lane in lanes
        ]
        with ExitStack() as running:
            for consumer_argv in argvs:  # one shared-subscription group: they split the load
                running.enter_context(cloud_process(consumer_argv, env))
            # the consumer is up once a probe message is stored
            deadline = time.monotonic() + 60
            client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect(broker.host, broker.port)
            client.loop_start()
            while stored(db) == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the consumer did not start")
                probe_body = message(*probe, args.cells, False, args.cell_objects)
                client.publish("b2l/v1/mq-0000/telemetry", probe_body, qos=1)
                time.sleep(0.5)
            client.disconnect()
            client.loop_stop()
            time.sleep(0.5)
            with db.write() as session:
                session.execute(text("DELETE FROM ingested_records"))  # the probe
            if name == "live":
                results, wall = run_clients(publisher, jobs)
                wait_stored(db, args.messages, 600)
        cpu: dict[str, Any] = {}
        if name == "drain":
            results, wall = run_clients(publisher, jobs)  # queued in the consumers' sessions
            with ExitStack() as running:
                pids = [
                    running.enter_context(cloud_process(consumer_argv, env)).pid
                    for consumer_argv in argvs
                ]
                parts = {
                    "consumers": pids,
                    "postgresql": [server.postmaster_pid or 0],
                    "mosquitto": [broker.pid or 0],
                }
                measured, used, lag_s = wait_stored_cpu(db, args.messages, 600, parts)
            cpu = {
                "drain_cpu_us_per_message": {  # None: all stored by the first poll (too few)
                    part: seconds / measured * 1e6 if measured else None
                    for part, seconds in used.items()
                },
                "twins_current_s_after_last_stored": lag_s,
            }
        total, first, span_s = commit_span(db)
        with db.read() as session:
            commits = session.execute(
                text("SELECT count(DISTINCT received_at) FROM ingested_records")
            ).scalar_one()
    db.dispose()
    timed = total - first
    return {
        "messages": args.messages,
        "published_per_s": sum(r["published"] for r in results) / wall,
        "stored": total,
        "consumer_messages_per_s": timed / span_s if span_s > 0 else None,
        "consumer_cell_rows_per_s": timed * args.cells / span_s if span_s > 0 else None,
        "messages_per_commit": total / commits if commits else None,
        **cpu,
    }


PHASES = ("drain", "live", "floor")


def _phases(text: str) -> list[str]:
    phases = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}, not {text!r}")
    return phases


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("B2L_"):
        raise argparse.ArgumentTypeError(f"expected B2L_NAME=VALUE, not {text!r}")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batteries", type=int, default=100)
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument(
        "--consumers",
        type=int,
        default=1,
        help="b2l cloud mqtt processes (one $share group splits the load)",
    )
    parser.add_argument("--estimates", action="store_true", help="add the edge's estimates")
    parser.add_argument(
        "--cell-objects",
        action="store_true",
        help="cells as one JSON object per cell (default: as columns, as the edge sends them)",
    )
    parser.add_argument("--mirror", action="store_true", help="register with a cell model")
    parser.add_argument(
        "--phases", type=_phases, default="drain,live,floor", help="of drain, live, floor"
    )
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="B2L_NAME=VALUE",
        help="a setting of the consumer processes (e.g. B2L_MQTT_BATCH_MAX_MESSAGES=1000)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "batteries": args.batteries,
        "cells": args.cells,
        "estimates": args.estimates,
        "cells_as": "objects" if args.cell_objects else "columns",
        "mirror": args.mirror,
        "consumers": args.consumers,
        "settings": dict(args.set),
        "cpus": os.cpu_count(),
    }
    with PostgresServer(fsync=False) as server:
        for phase in args.phases:
            result[phase] = run_floor(args) if phase == "floor" else run_phase(phase, server, args)
    if "drain" in result and "floor" in result and result["floor"]["consumer_messages_per_s"]:
        result["ratio_drain_to_floor"] = (
            result["drain"]["consumer_messages_per_s"] / result["floor"]["consumer_messages_per_s"]
        )
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
