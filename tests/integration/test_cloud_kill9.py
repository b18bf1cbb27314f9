"""kill -9 of the cloud during ingestion, on a real PostgreSQL: ``b2l cloud serve`` (HTTP) and
``b2l cloud mqtt`` (the MQTT consumer) as subprocesses, killed mid-stream and restarted while a
client keeps sending. Every acknowledged record is stored exactly once and the final set is
complete."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloud_db_support import telemetry
from sqlalchemy import func, select

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.db.models import CellPillar1Row, IngestedRecordRow, TwinRow
from cloud.services.batteries import BatteryService
from hil.b2l_process import b2l_argv, throwaway_cloud_env
from hil.services import LOOPBACK, MosquittoServer, find_free_port, wait_for_port
from twin.topology import BatteryTopology

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_CELLS = 16
BATTERY = "K-1"


class CloudProcess:
    """A ``b2l cloud ...`` subprocess that can be killed -9 and started again."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        self.proc.kill()  # SIGKILL
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def stored(db: Database) -> tuple[list[int], dict[int, int]]:
    """Stored seqs of the battery and Pillar 1 rows per seq."""
    with db.read() as session:
        seqs = list(
            session.scalars(
                select(IngestedRecordRow.seq)
                .where(IngestedRecordRow.battery_id == BATTERY)
                .order_by(IngestedRecordRow.seq)
            )
        )
        rows = {
            int(seq): int(n)
            for seq, n in session.execute(
                select(CellPillar1Row.seq, func.count())
                .where(CellPillar1Row.battery_id == BATTERY)
                .group_by(CellPillar1Row.seq)
            )
        }
    return seqs, rows


def batch_json(seqs: range) -> bytes:
    records = [telemetry(s, cells=range(N_CELLS), estimates=False) for s in seqs]
    return json.dumps({"battery_id": BATTERY, "records": records}).encode()


@pytest.fixture
def database(pg_database: Any) -> Iterator[Database]:
    upgrade(pg_database.url)
    db = Database.from_url(pg_database.url)
    BatteryService(db).register(BATTERY, BatteryTopology(cells_per_module=N_CELLS))
    try:
        yield db
    finally:
        db.dispose()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_http_ingestion_survives_a_cloud_kill_9(
    database: Database, pg_database: Any, tmp_path: Path
) -> None:
    env = throwaway_cloud_env(pg_database.url)
    created = subprocess.run(
        b2l_argv("cloud", "create-device", BATTERY, "--json"),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr.decode()
    device = json.loads(created.stdout)
    port = find_free_port()
    server = CloudProcess(
        b2l_argv("cloud", "serve", "--host", LOOPBACK, "--port", str(port)),
        env,
        tmp_path / "serve.log",
    )
    base = f"http://{LOOPBACK}:{port}"
    server.start()
    try:
        wait_for_port(LOOPBACK, port, 30)
        with httpx.Client(base_url=base, timeout=5.0) as http:
            token = http.post(
                "/api/v1/auth/token",
                data={"username": device["device_id"], "password": device["secret"]},
            )
            assert token.status_code == 200, token.text
            headers = {
                "Authorization": f"Bearer {token.json()['access_token']}",
                "Content-Type": "application/json",
            }
            batches = [range(first, first + 10) for first in range(1, 401, 10)]  # 40 x 10
            acked: set[int] = set()
            failures = 0
            done = threading.Event()

            def client() -> None:
                nonlocal failures
                for seqs in batches:
                    while True:  # retry this batch until the cloud acknowledges it
                        try:
                            response = http.post(
                                f"/api/v1/batteries/{BATTERY}/telemetry",
                                content=batch_json(seqs),
                                headers=headers,
                            )
                            if response.status_code == 200:
                                acked.update(seqs)
                                break
                            assert response.status_code >= 500, response.text
                        except httpx.TransportError:
                            pass
                        failures += 1
                        time.sleep(0.1)
                    time.sleep(0.01)
                done.set()

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            wait_until(lambda: len(acked) >= 100 or done.is_set(), 30, "100 acked records")
            server.kill()
            killed_with = len(acked)
            server.start()
            wait_for_port(LOOPBACK, port, 30)
            thread.join(60)
            assert done.is_set(), server.tail()
        assert killed_with < 400, "the kill came too late to test anything"
        assert failures > 0  # the client saw the outage and retried
        seqs, rows = stored(database)
        assert acked <= set(seqs)
        assert seqs == list(range(1, 401))  # complete
        assert set(rows) == set(seqs) and set(rows.values()) == {N_CELLS}  # exactly once
    finally:
        server.stop()


def mqtt_consumer(
    broker: MosquittoServer, database_url: str, tmp_path: Path, **env: str
) -> CloudProcess:
    """``b2l cloud mqtt`` on ``broker`` (not started), small groups, settings from ``env``."""
    environment = throwaway_cloud_env(database_url)
    environment.update(
        B2L_MQTT_BATCH_MAX_WAIT_S="0.01",
        B2L_MQTT_DEAD_LETTER_DIR=str(tmp_path / "dead"),
        **env,
    )
    argv = b2l_argv(
        "cloud",
        "mqtt",
        "--mqtt-url",
        f"mqtt://{broker.host}:{broker.port}",
        "--client-id",
        "cloud-kill9",
        "--no-commands",
    )
    return CloudProcess(argv, environment, tmp_path / "mqtt.log")


def subscribed_probe(
    broker: MosquittoServer,
    mqtt_client_factory: Callable[..., Any],
    database: Database,
    consumer: CloudProcess,
) -> Any:
    """A connected client, once the consumer's shared subscription is there (seq 1, published
    until it is stored)."""
    probe = mqtt_client_factory(broker)
    assert not probe.connect().is_failure
    deadline = time.monotonic() + 30
    while stored(database)[0] != [1]:
        assert time.monotonic() < deadline, consumer.tail()
        probe.publish(f"b2l/v1/{BATTERY}/telemetry", batch_json(range(1, 2)))
        time.sleep(0.3)
    return probe


def twin_seq(database: Database) -> Any:
    """The newest telemetry seq the battery's twin shows (None: none yet)."""
    with database.read() as session:
        twin = session.get(TwinRow, BATTERY)
        assert twin is not None
        return twin.reported.get("seq")


def test_the_mqtt_consumer_survives_a_kill_9(
    database: Database,
    pg_database: Any,
    make_mosquitto_server: Callable[..., MosquittoServer],
    mqtt_client_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    broker = make_mosquitto_server()
    consumer = mqtt_consumer(broker, pg_database.url, tmp_path)
    consumer.start()
    try:
        probe = subscribed_probe(broker, mqtt_client_factory, database, consumer)
        n = 600
        for seq in range(2, n + 1):  # QoS 1, the broker PUBACKs each one
            info = probe.client.publish(
                f"b2l/v1/{BATTERY}/telemetry", batch_json(range(seq, seq + 1)), qos=1
            )
            assert info.rc == 0
            if seq == n // 3:
                wait_until(lambda: len(stored(database)[0]) > 50, 20, "some stored")
                consumer.kill()
        time.sleep(0.5)
        consumer.start()
        wait_until(lambda: len(stored(database)[0]) == n, 60, f"{n} stored: {consumer.tail()}")
        seqs, rows = stored(database)
        assert seqs == list(range(1, n + 1))
        assert set(rows.values()) == {N_CELLS}  # exactly once
    finally:
        consumer.stop()


def test_a_restarted_consumer_writes_the_twins_its_killed_predecessor_had_not(
    database: Database,
    pg_database: Any,
    make_mosquitto_server: Callable[..., MosquittoServer],
    mqtt_client_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """With a twin interval far longer than the test, the consumer stores and acknowledges
    every message but has written no twin when it is killed -9; started again, it merges the
    stored telemetry into the twin before any new message arrives."""
    broker = make_mosquitto_server()
    consumer = mqtt_consumer(broker, pg_database.url, tmp_path, B2L_MQTT_TWIN_INTERVAL_S="60")
    consumer.start()
    try:
        probe = subscribed_probe(broker, mqtt_client_factory, database, consumer)
        n = 40
        for seq in range(2, n + 1):
            body = batch_json(range(seq, seq + 1))
            assert probe.client.publish(f"b2l/v1/{BATTERY}/telemetry", body, qos=1).rc == 0
        wait_until(lambda: len(stored(database)[0]) == n, 30, f"{n} stored: {consumer.tail()}")
        assert twin_seq(database) is None  # deferred: nothing written yet
        consumer.kill()
        assert twin_seq(database) is None  # and the backlog died with it
        consumer.start()
        wait_until(lambda: twin_seq(database) == n, 30, f"the twin caught up: {consumer.tail()}")
    finally:
        consumer.stop()
