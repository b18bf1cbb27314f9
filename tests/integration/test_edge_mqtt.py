"""The MQTT uplink against a real Mosquitto: QoS 1, PUBACK removes, persistent session, crashes.

The edge side is the outbox, the forwarder (its own thread) and ``MqttUplink``; the cloud side is
a persistent-session subscriber (``mqtt_client_factory``) that keeps every message it gets.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.backoff import Backoff
from edge_runtime.config import MqttUplinkSettings
from edge_runtime.forwarder import Forwarder
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import Delivery
from edge_runtime.uplink.mqtt import MqttUplink
from hil.services import MosquittoServer
from twin.commands import Command, ReportingPeriod
from twin.measurements import PackMeasurement
from twin.uplink import EventRecord, Severity, TelemetryRecord, UplinkBatch

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def telemetry(k: int) -> TelemetryRecord:
    return TelemetryRecord(
        seq=1,
        timestamp=datetime.now(UTC),
        packs=[PackMeasurement(voltage_v=40.0 + (k % 100) / 10, current_a=1.0)],
    )


class Edge:
    """Outbox + forwarder thread + MQTT uplink of one battery."""

    def __init__(self, tmp_path: Path, server: MosquittoServer, battery_id: str, **kw: Any) -> None:
        self.settings = MqttUplinkSettings(
            kind="mqtt",
            host=server.host,
            port=server.port,
            client_id=f"edge-{battery_id}",
            **{"keepalive_s": 5, "ack_timeout_s": 5.0, **kw},
        )
        self.uplink = MqttUplink(battery_id, self.settings)
        self.outbox = Outbox(
            tmp_path / f"{battery_id}.sqlite",
            battery_id,
            retention_s=self.settings.replay_window_s,
            batch_max_records=20,
        )
        self.commands: list[Command] = []
        self.forwarder = Forwarder(
            self.outbox,
            self.uplink,
            backoff=Backoff(0.2, 1.0),
            on_command=self.commands.append,
        )
        self.forwarder.start()

    def close(self) -> None:
        self.forwarder.stop()
        self.uplink.close()
        self.outbox.close()


class Cloud:
    """A persistent-session subscriber to every edge-to-cloud topic of one battery."""

    def __init__(
        self, factory: Callable[..., Any], server: MosquittoServer, battery_id: str
    ) -> None:
        self.client = factory(
            server,
            client_id=f"cloud-{uuid.uuid4().hex[:8]}",
            clean_start=False,
            session_expiry_s=3600,
        )
        assert not self.client.connect().is_failure
        self.client.subscribe(f"b2l/v1/{battery_id}/+", qos=1)
        self.by_seq: dict[int, bytes] = {}
        self.duplicates = 0
        self.messages = 0
        self.topics: set[str] = set()

    def drain(self) -> None:
        while not self.client.messages.empty():
            msg = self.client.messages.get_nowait()
            self.messages += 1
            self.topics.add(msg.topic)
            batch = UplinkBatch.model_validate_json(msg.payload)
            for record in batch.records:
                body = record.model_dump_json().encode()
                if record.seq in self.by_seq:
                    self.duplicates += 1
                    assert self.by_seq[record.seq] == body, "a seq sent twice must be the same"
                self.by_seq[record.seq] = body


@pytest.fixture
def server(make_mosquitto_server: Callable[..., MosquittoServer]) -> MosquittoServer:
    return make_mosquitto_server(autosave_interval_s=1)


@pytest.fixture
def edge(tmp_path: Path, server: MosquittoServer) -> Iterator[Edge]:
    e = Edge(tmp_path, server, "B-7")
    yield e
    e.close()


def test_records_go_out_at_qos1_on_their_topics_and_leave_after_puback(
    edge: Edge, server: MosquittoServer, mqtt_client_factory: Callable[..., Any]
) -> None:
    cloud = Cloud(mqtt_client_factory, server, "B-7")
    wait_for(lambda: edge.uplink.connected, 10, "the edge to connect")
    edge.outbox.enqueue_many([telemetry(k) for k in range(50)])
    edge.outbox.enqueue(
        EventRecord(
            seq=1, timestamp=datetime.now(UTC), event_type="alarm.x", severity=Severity.ALARM
        ),
        priority=True,
    )
    wait_for(lambda: edge.outbox.pending_records == 0, 10, "the outbox to empty")
    wait_for(lambda: (cloud.drain(), len(cloud.by_seq) == 51)[1], 10, "every record")
    assert sorted(cloud.by_seq) == list(range(1, 52))
    assert cloud.topics == {"b2l/v1/B-7/telemetry", "b2l/v1/B-7/events"}
    assert edge.uplink.pubacks == edge.uplink.published
    assert edge.forwarder.records_acked == 51


def test_without_a_puback_nothing_leaves_the_outbox(
    edge: Edge, server: MosquittoServer, mqtt_client_factory: Callable[..., Any]
) -> None:
    cloud = Cloud(mqtt_client_factory, server, "B-7")
    wait_for(lambda: edge.uplink.connected, 10, "the edge to connect")
    assert server._pgid is not None
    os.killpg(server._pgid, signal.SIGSTOP)  # the broker hangs: TCP is up, no PUBACK comes
    try:
        edge.outbox.enqueue_many([telemetry(k) for k in range(30)])
        time.sleep(1.5)
        assert edge.outbox.pending_records == 30, "published but not acknowledged: kept"
        assert edge.uplink.published >= 1 and edge.uplink.pubacks == 0
    finally:
        os.killpg(server._pgid, signal.SIGCONT)
    wait_for(lambda: edge.outbox.pending_records == 0, 15, "the PUBACKs")
    wait_for(lambda: (cloud.drain(), len(cloud.by_seq) == 30)[1], 10, "every record")


def test_broker_kill_9_and_restart_loses_nothing(
    tmp_path: Path, server: MosquittoServer, mqtt_client_factory: Callable[..., Any]
) -> None:
    cloud = Cloud(mqtt_client_factory, server, "B-8")
    server.save_now()  # the subscriber's session is on disk
    edge = Edge(tmp_path, server, "B-8", replay_window_s=30.0)
    try:
        wait_for(lambda: edge.uplink.connected, 10, "the edge to connect")
        stop = threading.Event()
        produced = [0]

        def feed() -> None:
            while not stop.is_set() and produced[0] < 400:
                edge.outbox.enqueue(telemetry(produced[0]))
                produced[0] += 1
                time.sleep(0.01)

        feeder = threading.Thread(target=feed)
        feeder.start()
        wait_for(lambda: produced[0] >= 120, 10, "some traffic")
        server.kill()  # SIGKILL: whatever the broker held since its last autosave is gone
        time.sleep(1.0)
        assert not edge.uplink.connected
        server.restart()
        feeder.join(20)
        wait_for(lambda: edge.outbox.pending_records == 0, 30, "the backlog to drain")
        total = produced[0]
        assert total == 400
        wait_for(
            lambda: (cloud.drain(), len(cloud.by_seq) >= total)[1], 20, "every record at the cloud"
        )
        assert sorted(cloud.by_seq) == list(range(1, total + 1)), "nothing lost"
        # duplicates are possible (replay window, paho's resend) but only of the same record
        assert edge.uplink.connects >= 2
        assert edge.forwarder.replayed >= 1
    finally:
        edge.close()


def test_commands_wait_in_the_persistent_session_of_an_offline_edge(
    tmp_path: Path, server: MosquittoServer, mqtt_client_factory: Callable[..., Any]
) -> None:
    edge = Edge(tmp_path, server, "B-9")
    wait_for(lambda: edge.uplink.connected, 10, "the edge to connect")
    edge.close()  # offline; the broker keeps its session (clean_start = false, expiry 7 days)
    now = datetime.now(UTC)
    command = Command(
        command_id=uuid.uuid4(),
        battery_id="B-9",
        created_at=now,
        expires_at=now + timedelta(hours=1),
        payload=ReportingPeriod(period_s=2.0, duration_s=60.0),
    )
    operator = mqtt_client_factory(server, client_id="operator")
    assert not operator.connect().is_failure
    rc = operator.publish("b2l/v1/B-9/commands", command.model_dump_json(), qos=1)
    assert not rc.is_failure
    wrong = command.model_copy(update={"battery_id": "B-10"})
    operator.publish("b2l/v1/B-9/commands", wrong.model_dump_json(), qos=1)
    operator.publish("b2l/v1/B-9/commands", b"{not json", qos=1)
    edge = Edge(tmp_path, server, "B-9")  # same client id: the session and its queue
    try:
        wait_for(lambda: len(edge.commands) >= 1, 10, "the queued command")
        time.sleep(0.3)
        assert [c.command_id for c in edge.commands] == [command.command_id]
        assert edge.uplink.bad_commands == 2
        assert json.loads(command.model_dump_json())["payload"]["type"] == "reporting_period"
    finally:
        edge.close()


def test_deliveries_are_reported_once_per_batch(
    edge: Edge, server: MosquittoServer, mqtt_client_factory: Callable[..., Any]
) -> None:
    Cloud(mqtt_client_factory, server, "B-7")  # someone subscribed: the PUBACKs say "success"
    seen: list[Delivery] = []
    original = edge.forwarder.on_delivery

    def spy(delivery: Delivery) -> None:
        seen.append(delivery)
        original(delivery)

    edge.uplink.listener = type(
        "L",
        (),
        {
            "on_delivery": staticmethod(spy),
            "on_command": edge.forwarder.on_command,
            "on_connection": edge.forwarder.on_connection,
        },
    )()
    wait_for(lambda: edge.uplink.connected, 10, "the edge to connect")
    edge.outbox.enqueue_many([telemetry(k) for k in range(45)])
    wait_for(lambda: edge.outbox.pending_records == 0, 10, "the outbox to empty")
    firsts = [d.batch.first_seq for d in seen]
    assert len(firsts) == len(set(firsts)) == 3  # 20 + 20 + 5, one outcome each


def test_a_publish_nobody_subscribed_to_is_sent_again(
    edge: Edge, server: MosquittoServer, mqtt_client_factory: Callable[..., Any]
) -> None:
    """Mosquitto answers 0x10 "no matching subscribers" (e.g. restarted, before the cloud's
    shared subscriptions are back): a success code, but the message reached nobody."""
    wait_for(lambda: edge.uplink.connected, 10, "the edge to connect")
    edge.outbox.enqueue_many([telemetry(k) for k in range(10)])
    wait_for(lambda: edge.uplink.no_subscribers > 0, 10, "a PUBACK without subscribers")
    assert edge.outbox.pending_records == 10
    assert int(str(edge.uplink.status()["no_subscribers"])) >= 1
    cloud = Cloud(mqtt_client_factory, server, "B-7")
    wait_for(lambda: edge.outbox.pending_records == 0, 30, "the retry once the cloud listens")
    wait_for(lambda: (cloud.drain(), len(cloud.by_seq) == 10)[1], 10, "every record")
