"""Faults on the MQTT path: the broker killed -9 and restarted while an edge publishes, and a
PostgreSQL outage under the consumer. Every record the publisher got a PUBACK for ends up
stored exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cloud_db_support import register
from paho.mqtt.enums import CallbackAPIVersion
from test_cloud_mqtt import (
    N_CELLS,
    cell_rows_per_seq,
    mqtt_settings,
    payload,
    started,
    stored_seqs,
    wait_until,
)

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.mqtt import CloudMqttService
from hil.services import MosquittoServer, PostgresServer

pytestmark = pytest.mark.integration

NO_MATCHING_SUBSCRIBERS = 0x10


class ReplayingPublisher:
    """Publishes one record per message at QoS 1 as the edge's MQTT uplink does: after a
    reconnect it publishes again what had no PUBACK and what was acknowledged within
    ``replay_window_s`` before the connection broke (a broker killed before its autosave loses
    messages it had acknowledged)."""

    def __init__(self, broker: MosquittoServer, battery_id: str, replay_window_s: float = 5.0):
        self.battery_id = battery_id
        self.replay_window_s = replay_window_s
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.lock = threading.Lock()
        self.mids: dict[int, int] = {}
        self.early: dict[int, bool] = {}
        self.retry: set[int] = set()
        self.retried = 0
        self.next_retry_s = 0.0
        self.acked: dict[int, float] = {}
        self.sent: set[int] = set()
        self.connected = threading.Event()
        self.connects = 0
        self.lost_at: float | None = None
        self.replays = 0
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        assert self.connected.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.connects += 1
            self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self.connected.clear()
        self.lost_at = time.monotonic()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        # "No matching subscribers" (0x10) is a success code, but nobody got the message:
        # Mosquitto 2.0 does not restore shared subscriptions after a restart, so until the
        # cloud's consumers subscribe again the edge must send it again.
        ok = rc is None or not (rc.is_failure or rc.value == NO_MATCHING_SUBSCRIBERS)
        with self.lock:  # never held while calling paho (its callbacks hold paho's locks)
            seq = self.mids.pop(mid, None)
            if seq is None:
                self.early[mid] = ok
            else:
                self._settle(seq, ok)

    def _settle(self, seq: int, ok: bool) -> None:
        if ok:
            self.acked.setdefault(seq, time.monotonic())
            self.retry.discard(seq)
        else:  # a replayed copy too: the first PUBACK may be of a copy the broker then lost
            self.retry.add(seq)

    def publish(self, seq: int) -> None:
        info = self.client.publish(
            f"b2l/v1/{self.battery_id}/telemetry", payload(self.battery_id, [seq]), qos=1
        )
        with self.lock:
            self.sent.add(seq)
            self.retry.discard(seq)
            if info.mid in self.early:
                self._settle(seq, self.early.pop(info.mid))
            else:
                self.mids[info.mid] = seq

    def replay(self) -> None:
        """After a reconnect: unacknowledged seqs and those acknowledged in the window."""
        assert self.lost_at is not None
        with self.lock:
            since = self.lost_at - self.replay_window_s
            seqs = sorted(s for s in self.sent if self.acked.get(s, since) >= since)
        self.replays += len(seqs)
        for seq in seqs:
            self.publish(seq)

    def run(self, seqs: range, interval_s: float, stop: threading.Event) -> None:
        seen_connects = self.connects
        for seq in seqs:
            if stop.is_set():
                return
            if not self.connected.is_set():
                self.connected.wait(20)
            if self.connects != seen_connects:
                seen_connects = self.connects
                self.replay()
            self.publish(seq)
            self._retry()
            time.sleep(interval_s)
        deadline = time.monotonic() + 30
        while self.retry and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
            self._retry()

    def _retry(self) -> None:
        now = time.monotonic()
        if now < self.next_retry_s:
            return
        self.next_retry_s = now + 0.2
        with self.lock:
            seqs = sorted(self.retry)
        self.retried += len(seqs)
        for seq in seqs:
            self.publish(seq)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def pg_db(pg_database: Any) -> Iterator[Database]:
    upgrade(pg_database.url)
    db = Database.from_url(pg_database.url)
    register(db, "B-1")
    try:
        yield db
    finally:
        db.dispose()


def test_a_broker_killed_while_publishing_loses_no_acknowledged_record(
    pg_db: Database,
    make_mosquitto_server: Callable[..., MosquittoServer],
    tmp_path: Any,
) -> None:
    broker = make_mosquitto_server()
    settings = mqtt_settings(pg_db, broker, tmp_path, mqtt_client_id="cloud-k")
    service = started(CloudMqttService(settings, pg_db, commands=False))
    broker.save_now()  # the consumer's session and subscriptions survive the kill
    edge = ReplayingPublisher(broker, "B-1")
    stop = threading.Event()
    n = 1500
    thread = threading.Thread(target=edge.run, args=(range(1, n + 1), 0.001, stop))
    try:
        thread.start()
        wait_until(lambda: len(edge.acked) > n // 3, what="a third acknowledged")
        broker.kill()
        acked_before_kill = len(edge.acked)
        time.sleep(0.3)
        broker.restart()
        thread.join(60)
        assert not thread.is_alive()
        assert edge.connects >= 2 and edge.replays > 0
        wait_until(lambda: len(edge.acked) == n, timeout_s=20, what="every PUBACK")
        acked = set(edge.acked)
        wait_until(
            lambda: acked <= set(stored_seqs(pg_db, "B-1")), timeout_s=30, what="acked stored"
        )
        stored = stored_seqs(pg_db, "B-1")
        assert stored == list(range(1, n + 1))
        rows = cell_rows_per_seq(pg_db, "B-1")
        assert set(rows) == set(stored) and set(rows.values()) == {N_CELLS}  # exactly once
        assert acked_before_kill < n
        assert service.connects >= 2
    finally:
        stop.set()
        thread.join(10)
        edge.close()
        service.stop()


def test_a_database_outage_leaves_messages_unacknowledged_until_it_returns(
    make_postgres_server: Callable[..., PostgresServer],
    make_mosquitto_server: Callable[..., MosquittoServer],
    tmp_path: Any,
) -> None:
    pg = make_postgres_server(fsync=False)
    url = pg.create_database("outage")
    upgrade(url)
    db = Database.from_url(url)
    register(db, "B-1")
    broker = make_mosquitto_server()
    service = started(
        CloudMqttService(
            mqtt_settings(db, broker, tmp_path, mqtt_client_id="cloud-o"), db, commands=False
        )
    )
    edge = ReplayingPublisher(broker, "B-1")
    try:
        for seq in range(1, 21):
            edge.publish(seq)
        wait_until(lambda: service.acks_sent == 20, what="20 acks")
        assert stored_seqs(db, "B-1") == list(range(1, 21))
        pg.stop(keep_data=True)
        for seq in range(21, 61):
            edge.publish(seq)
        wait_until(lambda: len(edge.acked) == 60, what="the broker's PUBACKs")
        wait_until(lambda: service.consumer.retries >= 2, what="retries")  # type: ignore[union-attr]
        assert service.acks_sent == 20  # nothing acknowledged while the database is away
        pg.restart()
        wait_until(lambda: service.acks_sent == 60, timeout_s=20, what="60 acks")
        assert stored_seqs(db, "B-1") == list(range(1, 61))
        assert set(cell_rows_per_seq(db, "B-1").values()) == {N_CELLS}
        assert service.consumer.counts == {"stored": 60}  # type: ignore[union-attr]
    finally:
        edge.close()
        service.stop()
        db.dispose()
