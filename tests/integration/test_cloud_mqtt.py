"""The cloud's MQTT side against a real Mosquitto, on SQLite and a real PostgreSQL: stored once
per (battery, seq), malformed messages set aside and acknowledged, two consumers sharing a
group, the command publisher; the consumer fed directly: a group the database refuses, the
twins written at an interval."""

from __future__ import annotations

import contextlib
import gzip
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloud_db_support import (
    BACKENDS,
    batch,
    count,
    migrated_database,
    register,
    simple_cell,
    stored_seqs,
    telemetry,
)
from conftest import MqttTestClient
from sqlalchemy import func, select, text

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.db.models import CellPillar1Row, CommandRow, TwinRow
from cloud.mqtt import CloudMqttService
from cloud.mqtt.consumer import Inbound, MqttConsumer
from cloud.mqtt.dead_letters import DeadLetterStore
from cloud.services.commands import CommandService
from cloud.services.ingestion import IngestionService
from cloud.settings import CloudSettings
from edge_runtime.uplink import decode_commands
from hil.services import MosquittoServer
from twin.commands import CommandStatus, ReportingPeriod

pytestmark = pytest.mark.integration

N_CELLS = 8


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request, tmp_path) as database:
        register(database, "B-1")
        register(database, "B-2")
        yield database


@pytest.fixture
def broker(make_mosquitto_server: Callable[..., MosquittoServer]) -> MosquittoServer:
    return make_mosquitto_server()


def mqtt_settings(
    db: Database, broker: MosquittoServer, tmp_path: Path, **overrides: Any
) -> CloudSettings:
    """Settings of a consumer on ``broker`` writing to ``db`` (fast group commits)."""
    values: dict[str, Any] = {
        "database_url": db.engine.url.render_as_string(hide_password=False),
        "mqtt_url": f"mqtt://{broker.host}:{broker.port}",
        "mqtt_dead_letter_dir": str(tmp_path / "dead"),
        "mqtt_batch_max_wait_s": 0.01,
        "mqtt_command_poll_s": 0.1,
        **overrides,
    }
    return CloudSettings(_env_file=None, **values)  # type: ignore[call-arg]


def payload(battery_id: str, seqs: list[int], **kwargs: Any) -> bytes:
    """An UplinkBatch JSON of telemetry records with these seqs."""
    records = [telemetry(s, **kwargs) for s in seqs]
    return json.dumps({"battery_id": battery_id, "records": records}).encode()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def cell_rows_per_seq(db: Database, battery_id: str) -> dict[int, int]:
    with db.read() as session:
        rows = session.execute(
            select(CellPillar1Row.seq, func.count())
            .where(CellPillar1Row.battery_id == battery_id)
            .group_by(CellPillar1Row.seq)
        )
        return {int(seq): int(n) for seq, n in rows}


def started(service: CloudMqttService) -> CloudMqttService:
    service.start()
    assert service.wait_connected(10.0), service.status()
    time.sleep(0.2)  # SUBACK
    return service


def test_each_battery_seq_is_stored_once_despite_duplicates(
    db: Database,
    broker: MosquittoServer,
    tmp_path: Path,
    mqtt_client_factory: Callable[..., MqttTestClient],
) -> None:
    service = started(CloudMqttService(mqtt_settings(db, broker, tmp_path), db, commands=False))
    edge = mqtt_client_factory(broker)
    assert not edge.connect().is_failure
    try:
        sent = 0
        for first in range(1, 41, 2):  # 20 messages of 2 records
            rc = edge.publish("b2l/v1/B-1/telemetry", payload("B-1", [first, first + 1]))
            assert not rc.is_failure
            sent += 1
        for first in (1, 11, 21):  # replays of stored messages
            edge.publish("b2l/v1/B-1/telemetry", payload("B-1", [first, first + 1]))
            sent += 1
        # an overlapping batch (old and new seqs) and a gzip one (the edge's compress option)
        edge.publish("b2l/v1/B-1/telemetry", payload("B-1", [39, 40, 41, 42]))
        edge.publish("b2l/v1/B-2/telemetry", gzip.compress(payload("B-2", [1, 2, 3]), mtime=0))
        sent += 2
        wait_until(lambda: sum(service.consumer.counts.values()) == sent, what="all messages")
        assert stored_seqs(db, "B-1") == list(range(1, 43))
        assert stored_seqs(db, "B-2") == [1, 2, 3]
        assert set(cell_rows_per_seq(db, "B-1").values()) == {N_CELLS}
        assert count(db, CellPillar1Row) == (42 + 3) * N_CELLS
        counts = service.consumer.counts
        assert counts == {"stored": 22, "duplicate": 3}
        metrics = service.metrics.render().decode()
        assert 'b2l_mqtt_messages_total{outcome="duplicate"} 3.0' in metrics
        assert 'b2l_rows_ingested_total{channel="mqtt",kind="telemetry"}' in metrics
    finally:
        service.stop()


def test_malformed_messages_are_counted_set_aside_and_acknowledged(
    db: Database,
    broker: MosquittoServer,
    tmp_path: Path,
    mqtt_client_factory: Callable[..., MqttTestClient],
) -> None:
    settings = mqtt_settings(db, broker, tmp_path, mqtt_client_id="cloud-a")
    service = started(CloudMqttService(settings, db, commands=False))
    edge = mqtt_client_factory(broker)
    assert not edge.connect().is_failure
    bad = {
        "not json": ("b2l/v1/B-1/telemetry", b"{not json"),
        "schema": ("b2l/v1/B-1/telemetry", b'{"battery_id": "B-1", "records": []}'),
        "mismatch": ("b2l/v1/B-2/telemetry", payload("B-1", [5])),
        "unknown": ("b2l/v1/B-9/telemetry", payload("B-9", [1])),
        "topology": ("b2l/v1/B-1/telemetry", payload("B-1", [6], cells=[0, 99])),
        "gzip": ("b2l/v1/B-1/telemetry", b"\x1f\x8b\x08\x00garbage"),
        "channel": ("b2l/v1/B-1/nonsense", payload("B-1", [7])),
    }
    try:
        edge.publish("b2l/v1/B-1/telemetry", payload("B-1", [1]))
        for topic, body in bad.values():
            edge.publish(topic, body)
        edge.publish("b2l/v1/B-1/telemetry", payload("B-1", [2]))
        # "channel" matches no subscription: the broker never delivers it
        expected = len(bad) - 1 + 2
        wait_until(lambda: sum(service.consumer.counts.values()) == expected, what="messages")
        assert service.consumer.counts == {
            "stored": 2,
            "malformed": 3,
            "mismatch": 1,
            "unknown_battery": 1,
            "rejected": 1,
        }
        assert stored_seqs(db, "B-1") == [1, 2]
        letters = DeadLetterStore(tmp_path / "dead", 1 << 20).read()
        assert sorted(e["reason"] for e in letters) == sorted(
            ["malformed"] * 3 + ["mismatch", "unknown_battery", "rejected"]
        )
        assert any(e.get("payload") == "{not json" for e in letters)
        assert any("payload_b64" in e for e in letters)  # the bad gzip bytes
        metrics = service.metrics.render().decode()
        assert 'b2l_mqtt_messages_total{outcome="malformed"} 3.0' in metrics
        assert 'b2l_ingest_rejects_total{channel="mqtt",reason="unknown_battery"} 1.0' in metrics
    finally:
        service.stop()
    # every message was acknowledged: the same session gets nothing again
    again = started(CloudMqttService(settings, db, commands=False))
    try:
        time.sleep(0.5)
        assert again.consumer.counts == {}
        edge.publish("b2l/v1/B-1/telemetry", payload("B-1", [3]))
        wait_until(lambda: again.consumer.counts.get("stored") == 1, what="the next message")
    finally:
        again.stop()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_two_consumers_of_one_group_split_the_load_and_store_everything_once(
    db: Database,
    broker: MosquittoServer,
    tmp_path: Path,
    mqtt_client_factory: Callable[..., MqttTestClient],
) -> None:
    one = started(
        CloudMqttService(
            mqtt_settings(db, broker, tmp_path, mqtt_client_id="c1"), db, commands=False
        )
    )
    two = started(
        CloudMqttService(
            mqtt_settings(db, broker, tmp_path, mqtt_client_id="c2"), db, commands=False
        )
    )
    edge = mqtt_client_factory(broker)
    assert not edge.connect().is_failure
    try:
        for seq in range(1, 101):
            for battery_id in ("B-1", "B-2"):
                info = edge.client.publish(
                    f"b2l/v1/{battery_id}/telemetry", payload(battery_id, [seq]), qos=1
                )
                assert info.rc == 0
        total = lambda: sum(one.consumer.counts.values()) + sum(two.consumer.counts.values())  # noqa: E731
        wait_until(lambda: total() == 200, timeout_s=20, what="200 messages")
        assert one.consumer.counts.get("stored", 0) > 20
        assert two.consumer.counts.get("stored", 0) > 20
        assert one.consumer.counts.get("stored", 0) + two.consumer.counts.get("stored", 0) == 200
        for battery_id in ("B-1", "B-2"):
            assert stored_seqs(db, battery_id) == list(range(1, 101))
            assert set(cell_rows_per_seq(db, battery_id).values()) == {N_CELLS}
    finally:
        one.stop()
        two.stop()


def test_commands_are_published_to_the_edge_and_marked_delivered(
    db: Database,
    broker: MosquittoServer,
    tmp_path: Path,
    mqtt_client_factory: Callable[..., MqttTestClient],
) -> None:
    edge = mqtt_client_factory(broker, client_id="edge-B-1", clean_start=False, session_expiry_s=60)
    assert not edge.connect().is_failure
    edge.subscribe("b2l/v1/B-1/commands")
    commands = CommandService(db)
    early = commands.create("B-1", ReportingPeriod(period_s=5.0, duration_s=60.0))
    settings = mqtt_settings(db, broker, tmp_path, mqtt_client_id="cloud-cmd")
    service = started(CloudMqttService(settings, db, consume=False))
    try:
        message = edge.expect_message(5.0)
        assert message.topic == "b2l/v1/B-1/commands"
        parsed, bad = decode_commands(bytes(message.payload))  # exactly what the edge runs
        assert bad == 0 and [c.command_id for c in parsed] == [early.command_id]
        assert parsed[0].payload == ReportingPeriod(period_s=5.0, duration_s=60.0)
        wait_until(
            lambda: commands.get("B-1", early.command_id).status is CommandStatus.DELIVERED,
            what="delivered",
        )
        # created while running: out within a poll
        start = time.monotonic()
        later = commands.create("B-1", ReportingPeriod(period_s=2.0))
        service.wake_commands()
        message = edge.expect_message(2.0)
        assert time.monotonic() - start < 1.5
        assert decode_commands(bytes(message.payload))[0][0].command_id == later.command_id
        wait_until(
            lambda: commands.get("B-1", later.command_id).status is CommandStatus.DELIVERED,
            what="delivered",
        )
        edge.assert_no_message(0.5)  # each command once while connected
    finally:
        service.stop()
    # a restarted cloud publishes the open (delivered, unacknowledged) commands again
    again = started(CloudMqttService(settings, db, consume=False))
    try:
        ids = {
            decode_commands(bytes(edge.expect_message(5.0).payload))[0][0].command_id
            for _ in range(2)
        }
        assert ids == {early.command_id, later.command_id}
        with db.read() as session:
            row = session.get(CommandRow, early.command_id)
            assert row is not None and row.delivery_count >= 2
    finally:
        again.stop()


def test_a_command_nobody_subscribes_to_stays_queued(
    db: Database, broker: MosquittoServer, tmp_path: Path
) -> None:
    commands = CommandService(db)
    command = commands.create("B-2", ReportingPeriod(period_s=5.0))
    service = started(
        CloudMqttService(
            mqtt_settings(db, broker, tmp_path, mqtt_client_id=f"c-{uuid.uuid4().hex[:6]}"),
            db,
            consume=False,
        )
    )
    try:
        assert service.publisher is not None
        wait_until(lambda: service.publisher.failed >= 1, what="a refused publish")  # type: ignore[union-attr]
        assert commands.get("B-2", command.command_id).status is CommandStatus.QUEUED
    finally:
        service.stop()


@contextlib.contextmanager
def constrained_database(
    pg_database: Any, batteries: list[str], constraint: str
) -> Iterator[Database]:
    """A migrated PostgreSQL database with ``batteries`` and one more constraint (``ALTER
    TABLE ...``) that makes it refuse some data."""
    upgrade(pg_database.url)
    database = Database.from_url(pg_database.url)
    try:
        for battery_id in batteries:
            register(database, battery_id)
        with database.write() as session:
            session.execute(text(constraint))
        yield database
    finally:
        database.dispose()


def direct_consumer(
    database: Database, tmp_path: Path, acked: list[int], **options: Any
) -> MqttConsumer:
    """A consumer fed with ``submit`` (no broker), its PUBACKs collected in ``acked``."""
    return MqttConsumer(
        IngestionService(database, CloudSettings(_env_file=None)),  # type: ignore[call-arg]
        lambda messages: acked.extend(m.mid for m in messages),
        dead_letters=DeadLetterStore(tmp_path / "dead", 1 << 20),
        **options,
    )


def test_a_group_the_database_refuses_is_stored_one_by_one_and_the_culprit_set_aside(
    pg_database: Any, tmp_path: Path
) -> None:
    """The database refuses one message of a group (a CHECK constraint this test adds): the
    group commit fails, the consumer stores the messages one at a time, the good ones land and
    the refused one becomes a ``poison`` dead letter; every message is acknowledged."""
    refuse = "ALTER TABLE events ADD CONSTRAINT refuse_poison CHECK (event_type <> 'edge.poison')"
    with constrained_database(pg_database, ["B-1"], refuse) as database:
        acked: list[int] = []
        consumer = direct_consumer(database, tmp_path, acked, max_wait_s=0.2)
        event = {
            "kind": "event",
            "seq": 3,
            "timestamp": "2025-03-01T12:00:03+00:00",
            "event_type": "edge.poison",
        }
        bodies = [
            payload("B-1", [1]),
            payload("B-1", [2]),
            json.dumps({"battery_id": "B-1", "records": [event]}).encode(),
            payload("B-1", [4]),
        ]
        for mid, body in enumerate(bodies, start=1):
            consumer.submit(Inbound(0, mid, 1, "b2l/v1/B-1/events", body))
        consumer.start()
        try:
            wait_until(lambda: len(acked) == 4, what="every message acknowledged")
        finally:
            consumer.stop()
        assert sorted(acked) == [1, 2, 3, 4]
        assert stored_seqs(database, "B-1") == [1, 2, 4]
        assert consumer.counts == {"stored": 3, "poison": 1}
        letters = consumer.dead_letters.read()
        assert [(d["reason"], json.loads(d["payload"])["records"][0]["seq"]) for d in letters] == [
            ("poison", 3)
        ]


def _twin_state(db: Database, battery_id: str) -> tuple[Any, Any]:
    with db.read() as session:
        row = session.get(TwinRow, battery_id)
        assert row is not None
        return row.reported, row.estimator_state


def test_with_a_twin_interval_the_twins_get_the_telemetry_later_and_the_same(
    db: Database, tmp_path: Path
) -> None:
    """``twin_interval_s``: messages are stored and acknowledged at each commit, the twins get
    their telemetry (and the mirror its records) at the interval or when the consumer stops,
    and end exactly as when every group commit writes them."""
    for battery_id in ("W-1", "W-2", "S-1"):
        register(db, battery_id, cell_parameters=simple_cell())
    service = IngestionService(db, CloudSettings(_env_file=None, mirror_period_s=0.0))  # type: ignore[call-arg]
    bodies = [payload("W-1", [seq, seq + 1], pillar2=True) for seq in (1, 3, 5)]

    def run(twin_interval_s: float, battery_id: str) -> tuple[MqttConsumer, list[int]]:
        acked: list[int] = []
        consumer = MqttConsumer(
            service,
            lambda messages: acked.extend(m.mid for m in messages),
            dead_letters=DeadLetterStore(tmp_path / "dead", 1 << 20),
            max_wait_s=0.01,
            twin_interval_s=twin_interval_s,
        )
        for mid, body in enumerate(bodies, start=1):
            body = body.replace(b'"W-1"', f'"{battery_id}"'.encode())
            consumer.submit(Inbound(0, mid, 1, f"b2l/v1/{battery_id}/telemetry", body))
        consumer.start()
        wait_until(lambda: len(acked) == len(bodies), what="every message acknowledged")
        return consumer, acked

    consumer, _ = run(60.0, "W-1")  # far longer than the test
    try:
        assert stored_seqs(db, "W-1") == [1, 2, 3, 4, 5, 6]
        reported, mirror = _twin_state(db, "W-1")
        assert "cells" not in reported and mirror is None  # not yet
    finally:
        consumer.stop()
    reported, mirror = _twin_state(db, "W-1")
    assert reported["seq"] == 6 and mirror is not None  # written when it stopped

    consumer, _ = run(0.2, "W-2")
    try:
        wait_until(lambda: _twin_state(db, "W-2")[0].get("seq") == 6, what="the interval")
    finally:
        consumer.stop()

    reference = [batch([telemetry(s, pillar2=True) for s in (q, q + 1)], "S-1") for q in (1, 3, 5)]
    service.ingest_many(reference)  # every group commit writes the twin
    assert _twin_state(db, "W-1") == _twin_state(db, "W-2") == _twin_state(db, "S-1")


def test_a_twin_that_refuses_its_telemetry_does_not_hold_back_the_others(
    pg_database: Any, tmp_path: Path
) -> None:
    """With ``twin_interval_s``: the database refuses one twin's update (a CHECK constraint this
    test adds); the other twins of the same interval are written, and so are later ones."""
    refuse = (
        "ALTER TABLE twins ADD CONSTRAINT refuse_p1 "
        "CHECK (battery_id <> 'P-1' OR reported::text NOT LIKE '%\"seq\"%')"
    )
    with constrained_database(pg_database, ["P-1", "G-1"], refuse) as database:
        acked: list[int] = []
        consumer = direct_consumer(database, tmp_path, acked, max_wait_s=0.01, twin_interval_s=0.2)
        consumer.submit(Inbound(0, 1, 1, "b2l/v1/P-1/telemetry", payload("P-1", [1])))
        consumer.submit(Inbound(0, 2, 1, "b2l/v1/G-1/telemetry", payload("G-1", [1])))
        consumer.start()
        try:
            wait_until(lambda: _twin_state(database, "G-1")[0].get("seq") == 1, what="G-1")
            consumer.submit(Inbound(0, 3, 1, "b2l/v1/G-1/telemetry", payload("G-1", [2])))
            wait_until(lambda: _twin_state(database, "G-1")[0].get("seq") == 2, what="later")
        finally:
            consumer.stop()
        assert sorted(acked) == [1, 2, 3]
        assert stored_seqs(database, "P-1") == [1]  # the rows are stored all the same
        assert "seq" not in _twin_state(database, "P-1")[0]
