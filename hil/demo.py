"""``b2l demo``: the whole system on one machine, on the embedded default.

1. The cloud's database (SQLite in the data dir, or ``--database-url``) is migrated; the demo
   batteries are registered with their cell parameters (so the cloud mirror runs), each gets
   fresh device credentials (the previous ones are revoked), and a demo operator user gets a
   grant on them (its password: ``--operator-password``, else one generated on the first run
   and kept in ``<data dir>/operator-password``).
2. ``b2l cloud serve`` starts as a process of its own on ``--port`` (loopback).
3. One process per pack (``hil.pack_node``): a simulated pack and BMS in real time and its edge
   runtime, Pillar 2 on CAN and Pillar 1 on serial in turn, uplinking over HTTP.
4. A live summary per battery (SoC, SoH, SoS, last seen, alarms) is read back through the public
   API with the operator's token, until ``--duration`` ends or Ctrl-C; everything is stopped in
   order (packs, then the cloud) and the last summary is returned (``-o`` writes it as JSON).
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from cloud.services.accounts import NewDevice
from cloud.settings import CloudSettings
from hil.b2l_process import b2l_argv
from hil.pack_node import PackNodeSpec, write_private, write_spec
from hil.provision import BatterySpec, provision
from hil.services import find_free_port
from twin.errors import B2LError, ConfigError

__all__ = ["BatteryLine", "DemoOptions", "run_demo"]

OPERATOR = "demo-operator"
HOST = "127.0.0.1"
CHEMISTRIES = ("nmc_lgm50", "lfp_a123")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
PILLAR_NAMES = {"can": "2 (CAN)", "serial": "1 (serial)"}


@dataclass(frozen=True)
class DemoOptions:
    """What ``b2l demo`` runs; see ``b2l demo --help``."""

    packs: int = 2
    duration_s: float | None = None
    port: int = 8000
    database_url: str | None = None
    data_dir: Path = Path("b2l-data/demo")
    operator_password: str | None = None
    cells: int = 16
    refresh_s: float = 2.0


@dataclass
class BatteryLine:
    """One battery's row of the live summary, as read from its twin."""

    battery_id: str
    pillar: str
    soc: float | None = None
    soh: float | None = None
    sos: float | None = None
    last_seen: str | None = None
    age_s: float | None = None
    alarms: list[str] = field(default_factory=list)
    records: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "battery_id": self.battery_id,
            "pillar": self.pillar,
            "soc": self.soc,
            "soh": self.soh,
            "sos": self.sos,
            "last_seen": self.last_seen,
            "alarms": self.alarms,
            "last_seq": self.records,
        }


def run_demo(
    options: DemoOptions,
    *,
    out: TextIO = sys.stdout,
    stop: threading.Event | None = None,
) -> list[BatteryLine]:
    """Run the demo (see the module docstring); returns the last summary."""
    if options.packs < 1 or options.packs > 64:
        raise ConfigError("--packs: 1 to 64")
    stop = stop or threading.Event()
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    database_url = options.database_url or f"sqlite:///{data_dir / 'b2l.db'}"
    port = options.port or find_free_port()
    base_url = f"http://{HOST}:{port}"
    settings = CloudSettings(database_url=database_url, mode="development")
    password = _operator_password(data_dir, options.operator_password)
    batteries = [
        BatterySpec(f"demo-pack-{i + 1:02d}", CHEMISTRIES[i % len(CHEMISTRIES)], options.cells)
        for i in range(options.packs)
    ]
    devices = provision(settings, batteries, operator=OPERATOR, operator_password=password)
    specs = _node_specs(options, data_dir, base_url, devices)
    with ExitStack() as stack:
        restore = _stop_on_signals(stop)
        stack.callback(restore)
        cloud = _start(
            b2l_argv("cloud", "serve", "--host", HOST, "--port", str(port)),
            data_dir / "logs" / "cloud.log",
            env={"B2L_DATABASE_URL": database_url, "B2L_MODE": "development"},
        )
        stack.callback(_stop_process, cloud)
        _wait_ready(base_url, cloud, data_dir / "logs" / "cloud.log")
        nodes: list[subprocess.Popen[bytes]] = []
        for spec in specs:
            spec_path = data_dir / f"{spec.battery_id}.node.json"
            node = _start(write_spec(spec, spec_path), data_dir / "logs" / f"{spec.battery_id}.log")
            stack.callback(_stop_process, node)
            nodes.append(node)
        print(f"b2l demo: cloud API  {base_url}/api/v1   docs {base_url}/docs", file=out)
        print(f"b2l demo: operator   {OPERATOR} / {password}", file=out)
        print(f"b2l demo: database   {_redact(database_url)}   logs {data_dir / 'logs'}", file=out)
        print(
            f"b2l demo: {len(specs)} packs (Pillar 2 on CAN, Pillar 1 on serial), "
            + ("until Ctrl-C" if options.duration_s is None else f"for {options.duration_s:g} s"),
            file=out,
            flush=True,
        )
        lines = _watch(base_url, password, specs, nodes, options, stop, out)
    print("b2l demo: stopped", file=out, flush=True)
    return lines


# ------------------------------------------------------------------------------ set-up


def _operator_password(data_dir: Path, given: str | None) -> str:
    path = data_dir / "operator-password"
    if given is not None:
        write_private(path, given)
        return given
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    password = "demo-" + secrets.token_urlsafe(12)
    write_private(path, password)
    return password


def _node_specs(
    options: DemoOptions, data_dir: Path, base_url: str, devices: dict[str, NewDevice]
) -> list[PackNodeSpec]:
    """One pack node per battery: CAN and serial in turn, different SoC and age."""
    now = datetime.now(UTC)
    seconds_today = now.hour * 3600.0 + now.minute * 60.0 + now.second
    return [
        PackNodeSpec(
            battery_id=battery_id,
            pillar="can" if i % 2 == 0 else "serial",
            cells_in_series=options.cells,
            chemistry=CHEMISTRIES[i % len(CHEMISTRIES)],
            initial_soc=0.35 + 0.4 * ((i * 0.618) % 1.0),
            age_years=float(2 + i % 5),
            seed=1000 + i,
            load_offset_s=seconds_today,
            cloud_url=base_url,
            device_id=device.device_id,
            device_secret=SecretStr(device.secret),
            data_dir=data_dir,
            duration_s=options.duration_s,
        )
        for i, (battery_id, device) in enumerate(devices.items())
    ]


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# ------------------------------------------------------------------------------ processes


def _start(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
    finally:
        log.close()


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(base_url: str, cloud: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if cloud.poll() is not None:
            raise B2LError(f"the cloud exited with {cloud.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise B2LError(f"the cloud did not get ready in {START_TIMEOUT_S:g} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _ignore_errors() -> suppress:
    """A refresh that fails (cloud busy, twin still empty) is skipped, not fatal."""
    return suppress(httpx.HTTPError, ValueError, KeyError, TypeError)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


# ------------------------------------------------------------------------------ the summary


def _watch(
    base_url: str,
    password: str,
    specs: Sequence[PackNodeSpec],
    nodes: Sequence[subprocess.Popen[bytes]],
    options: DemoOptions,
    stop: threading.Event,
    out: TextIO,
) -> list[BatteryLine]:
    """Print the summary every ``refresh_s`` until the duration ends, a node dies or ``stop``."""
    end_s = math.inf if options.duration_s is None else time.monotonic() + options.duration_s
    lines = [
        BatteryLine(s.battery_id, "2 (CAN)" if s.pillar == "can" else "1 (serial)") for s in specs
    ]
    drawn_rows = 0 if out.isatty() else -1  # -1: no redrawing, one block per refresh
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        token: str | None = None
        token_s = 0.0
        while True:
            if token is None or time.monotonic() - token_s > 300.0:
                with _ignore_errors():
                    token = _login(client, password)
                    token_s = time.monotonic()
            for line in lines:
                with _ignore_errors():
                    _read_twin(client, token, line)
            drawn_rows = _print_summary(lines, out, drawn_rows)
            dead = [s.battery_id for s, n in zip(specs, nodes, strict=True) if n.poll() is not None]
            if dead and options.duration_s is None:
                raise B2LError(f"pack node(s) {', '.join(dead)} exited; see their logs")
            if stop.wait(min(options.refresh_s, max(0.0, end_s - time.monotonic()))):
                break
            if time.monotonic() >= end_s:
                break
        with _ignore_errors():
            for line in lines:
                _read_twin(client, token, line)
    return lines


def _login(client: httpx.Client, password: str) -> str:
    response = client.post("/api/v1/auth/token", data={"username": OPERATOR, "password": password})
    response.raise_for_status()
    return str(response.json()["access_token"])


def _read_twin(client: httpx.Client, token: str | None, line: BatteryLine) -> None:
    if token is None:
        return
    response = client.get(
        f"/api/v1/batteries/{line.battery_id}/twin", headers={"Authorization": f"Bearer {token}"}
    )
    response.raise_for_status()
    reported = response.json().get("reported", {})
    cells = reported.get("cells", {})
    estimates = reported.get("estimates", {})
    line.soc = _mean(e.get("soc") for e in estimates.values()) or _mean(
        c.get("soc") for c in cells.values()
    )
    line.sos = _min(e.get("sos") for e in estimates.values()) or _min(
        c.get("sos") for c in cells.values()
    )
    line.soh = _mean(c.get("soh") for c in cells.values())
    line.last_seen = reported.get("timestamp")
    line.records = reported.get("seq")
    if line.last_seen:
        seen = datetime.fromisoformat(line.last_seen)
        line.age_s = (datetime.now(UTC) - seen).total_seconds()
    alarms: list[str] = []
    for pack in reported.get("packs", {}).values():
        faults = pack.get("faults") or []
        alarms.extend(str(f) for f in (faults if isinstance(faults, list) else [faults]))
    line.alarms = sorted(set(alarms))


def _numbers(values: Iterator[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def _mean(values: Iterator[Any]) -> float | None:
    numbers = _numbers(values)
    return sum(numbers) / len(numbers) if numbers else None


def _min(values: Iterator[Any]) -> float | None:
    numbers = _numbers(values)
    return min(numbers) if numbers else None


def _cell(value: float | None, scale: float = 100.0, unit: str = "%") -> str:
    return "-" if value is None else f"{value * scale:5.1f}{unit}"


def _print_summary(lines: Sequence[BatteryLine], out: TextIO, drawn_rows: int) -> int:
    """Print the summary (over the last one if ``drawn_rows`` > 0); the rows now drawn."""
    stamp = datetime.now().strftime("%H:%M:%S")
    rows = [
        f"{'battery':<14} {'pillar':<10} {'SoC':>7} {'SoH':>7} {'SoS':>7} {'last seen':>10}  alarms"
    ]
    for line in lines:
        seen = "never" if line.age_s is None else f"{line.age_s:6.1f} s"
        rows.append(
            f"{line.battery_id:<14} {line.pillar:<10} {_cell(line.soc):>7} {_cell(line.soh):>7} "
            f"{_cell(line.sos):>7} {seen:>10}  {', '.join(line.alarms) or '-'}"
        )
    text = "\n".join(rows)
    if drawn_rows > 0:
        out.write(f"\x1b[{drawn_rows}F\x1b[J")  # cursor up over the last summary, clear
    out.write(f"[{stamp}]\n{text}\n")
    out.flush()
    return -1 if drawn_rows < 0 else len(rows) + 1
