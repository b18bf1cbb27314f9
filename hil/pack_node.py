"""One demo pack in a process of its own: a simulated pack with its BMS, and its edge runtime.

The simulator runs in real time in a thread (SimPy ``RealtimeEnvironment``); the edge runtime
runs in the main thread, as ``b2l edge run`` would, and opens the BMS by name:

* Pillar 2: the simulator and the edge share a python-can ``virtual`` bus, which lives inside
  one process (``udp_multicast`` would need a network namespace);
* Pillar 1: the simulator listens on a loopback TCP port and the edge opens it as
  ``socket://127.0.0.1:PORT``, as it would open ``/dev/ttyUSB0`` on a Pi.

``python -m hil.pack_node SPEC.json`` runs one node until SIGTERM/SIGINT or ``duration_s``;
``b2l demo`` (``hil.demo``) writes the spec and starts one node per pack.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from edge_runtime.config import (
    CanLinkSettings,
    EdgeSettings,
    HttpUplinkSettings,
    LoggingSettings,
    MqttUplinkSettings,
    OutboxSettings,
    SerialLinkSettings,
)
from edge_runtime.logs import configure as configure_logging
from edge_runtime.runtime import EdgeRuntime
from simulators.pack import PackSimulator
from simulators.scenario import scenario_from_data
from twin.errors import B2LError
from twin.topology import BatteryTopology

__all__ = ["PackNodeSpec", "run_node", "write_private", "write_spec"]

log = logging.getLogger("hil.pack_node")
SIMULATION_CHUNK_S = 0.5
"""Simulated seconds per ``run`` call: how soon the simulator thread notices a stop."""


class PackNodeSpec(BaseModel):
    """What one node simulates and where its edge runtime sends the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    battery_id: str
    pillar: Literal["can", "serial"]
    cells_in_series: int = Field(default=16, ge=1, le=256)
    chemistry: str = "nmc_lgm50"
    initial_soc: float = Field(default=0.5, ge=0.0, le=1.0)
    age_years: float = Field(default=0.0, ge=0.0, le=30.0)
    seed: int = 0
    load_offset_s: float = Field(default=0.0, ge=0.0)
    """Where in the load profile's day the run starts (seconds after midnight)."""
    load_scale: float = 1.0
    cloud_url: str
    device_id: str
    device_secret: SecretStr
    data_dir: Path
    duration_s: float | None = Field(default=None, gt=0.0)
    reporting_period_s: float = 1.0
    uplink: Literal["http", "mqtt"] = "http"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65_535)
    """With ``uplink = "mqtt"``: the broker; the device logs in as its battery id with its
    device secret (``docker/mosquitto/acl``)."""
    drain_s: float = Field(default=0.0, ge=0.0)
    """After ``duration_s``: keep uplinking up to this long until the outbox is empty."""
    ground_truth: Path | None = None
    """Write the simulator's true state here (JSON lines), for tests to compare with."""


def build_simulator(spec: PackNodeSpec, stack: ExitStack) -> tuple[PackSimulator, EdgeSettings]:
    """The real-time simulator of ``spec`` on its link (closed by ``stack``), and the edge
    settings that open that link."""
    scenario = scenario_from_data(
        {
            "name": spec.battery_id,
            "seed": spec.seed,
            "pack": {
                "chemistry": spec.chemistry,
                "cells_in_series": spec.cells_in_series,
                "initial_soc": spec.initial_soc,
                "spread": {"capacity_rel_std": 0.03, "resistance_rel_std": 0.08},
                "age": {"years": spec.age_years, "cell_rel_std": 0.1},
            },
            "load": {
                "profile": "domestic",
                "days": 7,
                "offset_s": spec.load_offset_s,
                "scale": spec.load_scale,
            },
            "bms": {"reporting_period_ms": round(spec.reporting_period_s * 1000)},
        }
    )
    options = scenario.pack_options()
    options["realtime_factor"] = 1.0
    if spec.ground_truth is not None:
        options["ground_truth"] = spec.ground_truth
    link: CanLinkSettings | SerialLinkSettings
    simulator: PackSimulator
    if spec.pillar == "can":
        import can

        from simulators.can_bms import CanBmsSimulator

        channel = f"b2l-demo-{spec.battery_id}"
        bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
        stack.callback(bus.shutdown)
        simulator = CanBmsSimulator(bus, link_config=scenario.can, **options)
        link = CanLinkSettings(
            kind="can",
            interface="virtual",
            channel=channel,
            options={"preserve_timestamps": True},
        )
    else:
        from simulators.serial_bms import SerialBmsSimulator

        serial_sim = SerialBmsSimulator("tcp:0", link_config=scenario.serial, **options)
        simulator = serial_sim
        link = SerialLinkSettings(kind="serial", url=serial_sim.address)
    stack.callback(simulator.close)
    topology = BatteryTopology(
        n_packs=1,
        modules_per_pack=1,
        cells_per_module=spec.cells_in_series,
        cells_in_parallel=1,
    )
    settings = EdgeSettings(
        battery_id=spec.battery_id,
        topology=topology,
        chemistry=spec.chemistry,
        reporting_period_s=spec.reporting_period_s,
        link=link,
        outbox=OutboxSettings(path=spec.data_dir / f"{spec.battery_id}.outbox.sqlite"),
        uplink=_uplink(spec),
        logging=LoggingSettings(level="INFO", format="json"),
        status_period_s=2.0,
    )
    return simulator, settings


def _uplink(spec: PackNodeSpec) -> HttpUplinkSettings | MqttUplinkSettings:
    if spec.uplink == "mqtt":
        return MqttUplinkSettings(
            kind="mqtt",
            host=spec.mqtt_host,
            port=spec.mqtt_port,
            username=spec.battery_id,  # the broker's ACL: a device's user name is its battery
            password=spec.device_secret,
            command_poll_url=spec.cloud_url,
            device_id=spec.device_id,
            backoff_cap_s=10.0,
        )
    return HttpUplinkSettings(
        kind="http",
        base_url=spec.cloud_url,
        device_id=spec.device_id,
        secret=spec.device_secret,
        command_poll_s=2.0,
        backoff_cap_s=10.0,
    )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (it holds a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_spec(spec: PackNodeSpec, path: Path) -> list[str]:
    """Write ``spec`` (with its device secret, owner-only) to ``path``; the node's command."""
    data = spec.model_dump(mode="json")
    data["device_secret"] = spec.device_secret.get_secret_value()
    write_private(path, json.dumps(data, indent=2))
    return [sys.executable, "-m", "hil.pack_node", str(path)]


def run_node(spec: PackNodeSpec, stop: threading.Event) -> None:
    """Run the simulator (thread) and the edge runtime (this thread) until ``stop``."""
    with ExitStack() as stack:
        simulator, settings = build_simulator(spec, stack)
        configure_logging(settings.logging, sys.stderr)
        _run(spec, simulator, settings, stop)


def _run(
    spec: PackNodeSpec, simulator: PackSimulator, settings: EdgeSettings, stop: threading.Event
) -> None:
    failure: list[BaseException] = []
    simulated = threading.Event()

    def simulate() -> None:
        try:
            while not stop.is_set():
                now_s = float(simulator.env.now)
                if spec.duration_s is not None and now_s >= spec.duration_s:
                    break
                simulator.run(now_s + SIMULATION_CHUNK_S)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            simulated.set()

    def drain_then_stop() -> None:
        """After the simulation: let the outbox drain (up to ``drain_s``), then stop."""
        simulated.wait()
        deadline_s = time.monotonic() + (0.0 if failure else spec.drain_s)
        while runtime.outbox.pending_records and time.monotonic() < deadline_s:
            if stop.wait(0.2):
                break
        stop.set()

    runtime = EdgeRuntime(settings)
    threads = [
        threading.Thread(target=simulate, name=f"sim-{spec.battery_id}", daemon=True),
        threading.Thread(target=drain_then_stop, name=f"drain-{spec.battery_id}", daemon=True),
    ]
    try:
        for thread in threads:
            thread.start()
        runtime.run(stop)
    finally:
        stop.set()
        simulated.wait(timeout=5.0)
    if failure:
        raise B2LError(f"the simulator of {spec.battery_id} failed: {failure[0]}") from failure[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m hil.pack_node SPEC.json``; exit code 1 with a message on a b2l error."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hil.pack_node SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = PackNodeSpec.model_validate_json(Path(args[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"pack node: bad spec {args[0]}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run_node(spec, stop)
    except B2LError as exc:
        print(f"pack node {spec.battery_id}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
