"""The whole system as real processes for end-to-end tests.

``System`` provisions a cloud database (``hil.provision``), runs ``b2l cloud serve`` (with the
MQTT consumer when a broker is given) and pack nodes (``hil.pack_node``: simulator + edge
runtime per process), logs in as the operator, and reads back what the cloud stored.
``TcpCut`` is a loopback TCP proxy that can black-hole the path between an edge and the cloud.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from cloud.settings import CloudSettings
from hil.pack_node import PackNodeSpec, write_spec
from hil.provision import BatterySpec, provision
from hil.services import MosquittoServer, find_free_port

OPERATOR, OPERATOR_PASSWORD = "e2e-operator", "e2e-Operator-pw-1"
HOST = "127.0.0.1"


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; AssertionError after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


@dataclass
class Node:
    """A running pack node."""

    spec: PackNodeSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]


class System:
    """Cloud + pack nodes on ``database_url`` (and ``mqtt`` if given), under ``root``."""

    def __init__(self, root: Path, database_url: str, mqtt: MosquittoServer | None = None):
        self.root = root
        self.database_url = database_url
        self.mqtt = mqtt
        self.port = find_free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.cloud: subprocess.Popen[bytes] | None = None
        self.nodes: list[Node] = []
        self.devices: dict[str, Any] = {}
        self.engine = create_engine(database_url, pool_pre_ping=True)  # survives a PG restart
        (root / "logs").mkdir(parents=True, exist_ok=True)

    # -- set-up -------------------------------------------------------------------------

    def provision(self, *batteries: BatterySpec) -> None:
        settings = CloudSettings(database_url=self.database_url, mode="development")
        self.devices = provision(
            settings, batteries, operator=OPERATOR, operator_password=OPERATOR_PASSWORD
        )

    def start_cloud(self) -> None:
        env = {**os.environ, "B2L_DATABASE_URL": self.database_url, "B2L_MODE": "development"}
        if self.mqtt is not None:
            env["B2L_MQTT_URL"] = f"mqtt://{self.mqtt.host}:{self.mqtt.port}"
            env["B2L_MQTT_DEAD_LETTER_DIR"] = str(self.root / "dead-letters")
        log = (self.root / "logs" / "cloud.log").open("ab")
        argv = [sys.executable, "-m", "b2l.cli", "cloud", "serve"]
        self.cloud = subprocess.Popen(
            [*argv, "--host", HOST, "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        wait_for(self._ready, 60.0, "the cloud to get ready", poll_s=0.2)

    def _ready(self) -> bool:
        assert self.cloud is not None
        if self.cloud.poll() is not None:
            raise AssertionError(f"the cloud exited: {self.cloud_log()}")
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_cloud(self) -> None:
        assert self.cloud is not None
        self.cloud.kill()
        self.cloud.wait()

    def cloud_log(self) -> str:
        return (self.root / "logs" / "cloud.log").read_text(errors="replace")[-4000:]

    def node_spec(self, battery_id: str, **fields: Any) -> PackNodeSpec:
        device = self.devices[battery_id]
        values: dict[str, Any] = {
            "battery_id": battery_id,
            "pillar": "can",
            "cloud_url": self.base_url,
            "device_id": device.device_id,
            "device_secret": SecretStr(device.secret),
            "data_dir": self.root,
            "ground_truth": self.root / f"{battery_id}.truth.jsonl",
            "load_offset_s": 12 * 3600.0,
        }
        if self.mqtt is not None:
            values.update(mqtt_host=self.mqtt.host, mqtt_port=self.mqtt.port)
        values.update(fields)
        return PackNodeSpec(**values)

    def start_node(self, spec: PackNodeSpec) -> Node:
        command = write_spec(spec, self.root / f"{spec.battery_id}.node.json")
        log_path = self.root / "logs" / f"{spec.battery_id}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        node = Node(spec, process, log_path)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for process in [n.process for n in self.nodes] + ([self.cloud] if self.cloud else []):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.engine.dispose()

    # -- reading back -----------------------------------------------------------------

    @contextmanager
    def operator(self) -> Iterator[httpx.Client]:
        """An API client logged in as the operator."""
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            token = client.post(
                "/api/v1/auth/token", data={"username": OPERATOR, "password": OPERATOR_PASSWORD}
            )
            token.raise_for_status()
            client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            yield client

    def seqs(self, battery_id: str) -> list[int]:
        """Sequence numbers the cloud stored for ``battery_id``, in order."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT seq FROM ingested_records WHERE battery_id = :b ORDER BY seq"),
                {"b": battery_id},
            )
            return [int(r[0]) for r in rows]

    def telemetry_times_s(self, battery_id: str) -> list[float]:
        """Record timestamps (epoch seconds) of the stored telemetry records, in seq order."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT ts FROM ingested_records WHERE battery_id = :b AND kind = 'telemetry'"
                    " ORDER BY seq"
                ),
                {"b": battery_id},
            )
            return [r[0].timestamp() for r in rows]

    def received_out_of_order(self, battery_id: str) -> list[tuple[int, int]]:
        """(seq, next seq) pairs of telemetry records the cloud received in the wrong order;
        alarms and the edge's events take the priority lane ahead of a backlog, by design."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT seq, received_at FROM ingested_records WHERE battery_id = :b"
                    " AND kind = 'telemetry' ORDER BY seq"
                ),
                {"b": battery_id},
            )
            received = [(int(seq), at) for seq, at in rows]
        return [(a[0], b[0]) for a, b in pairwise(received) if a[1] > b[1]]

    def duplicate_cell_rows(self, battery_id: str) -> int:
        """Cell rows stored more than once for one (seq, cell): must be 0."""
        total = 0
        with self.engine.connect() as connection:
            for table in ("cell_pillar1", "cell_pillar2"):
                total += int(
                    connection.execute(
                        text(
                            f"SELECT COUNT(*) FROM (SELECT seq, cell_id FROM {table} "
                            "WHERE battery_id = :b GROUP BY seq, cell_id HAVING COUNT(*) > 1) d"
                        ),
                        {"b": battery_id},
                    ).scalar_one()
                )
        return total


def assert_continuous(seqs: list[int], what: str) -> None:
    """No gap and no repeat in ``seqs``."""
    assert seqs, f"{what}: nothing stored"
    expected = list(range(seqs[0], seqs[0] + len(seqs)))
    if seqs != expected:
        missing = sorted(set(expected) - set(seqs))[:10]
        raise AssertionError(f"{what}: seqs not continuous; first missing {missing}")


def ground_truth(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class TcpCut:
    """A loopback TCP proxy to ``target_port``; ``cut()`` black-holes it, ``heal()`` restores.

    While cut, open connections are dropped and new ones are accepted but never answered (a
    partition, not a refusal), so the edge sees timeouts as on a dead mobile link.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for s in self._sockets:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    return
                self._sockets.append(client)
            if self._cut.is_set():
                continue  # held open, never answered
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5.0)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while not self._cut.is_set():
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
