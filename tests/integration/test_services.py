"""The throwaway PostgreSQL and Mosquitto of hil.services, exercised for real."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import DateTime, String, create_engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hil.services import MosquittoServer, PostgresServer

if TYPE_CHECKING:
    from tests.conftest import MqttTestClient, PgDatabase

    MqttFactory = Callable[..., MqttTestClient]

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


class Base(DeclarativeBase):
    pass


class CellSample(Base):
    __tablename__ = "cell_sample"

    id: Mapped[int] = mapped_column(primary_key=True)
    battery_id: Mapped[str] = mapped_column(String(64), index=True)
    cell: Mapped[int]
    voltage_v: Mapped[float]
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None]


def _samples(battery_id: str, n: int) -> list[CellSample]:
    t0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    return [
        CellSample(
            battery_id=battery_id,
            cell=i,
            voltage_v=3.2 + i / 1000,
            ts=t0.replace(second=i % 60),
            note=None if i % 2 else f"n{i}",
        )
        for i in range(n)
    ]


def test_postgres_sqlalchemy_round_trip(pg_database: PgDatabase) -> None:
    engine = pg_database.engine
    assert engine.dialect.name == "postgresql"
    assert engine.dialect.driver == "psycopg"
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add_all(_samples("bat-a", 16))
    with Session(engine) as session:
        rows = session.scalars(select(CellSample).order_by(CellSample.cell)).all()
        version = session.execute(text("SHOW server_version")).scalar_one()
    assert [r.cell for r in rows] == list(range(16))
    assert rows[3].voltage_v == 3.2 + 3 / 1000  # float8 round-trips exactly
    assert rows[3].ts == datetime(2025, 1, 1, 12, 0, 3, tzinfo=UTC)
    assert rows[0].note == "n0" and rows[1].note is None
    assert int(version.split(".")[0]) >= 15


def test_postgres_kill9_restart_keeps_committed_rows(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = make_postgres_server(fsync=True)
    port, pid_before = server.port, server.postmaster_pid
    engine = create_engine(server.url, pool_pre_ping=True)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.add_all(_samples("committed", 10))
        # An open transaction at crash time must vanish.
        pending = engine.connect()
        pending.begin()
        pending.execute(
            insert(CellSample),
            [{"battery_id": "uncommitted", "cell": 1, "voltage_v": 3.3, "ts": datetime.now(UTC)}],
        )
        server.kill()
        with pytest.raises(DBAPIError):
            pending.execute(text("SELECT 1"))
        pending.invalidate()
        pending.close()

        server.restart()
        assert server.port == port
        assert server.postmaster_pid not in (None, pid_before)
        with Session(engine) as session:
            counts = dict(
                session.execute(
                    select(CellSample.battery_id, func.count()).group_by(CellSample.battery_id)
                ).all()
            )
        assert counts == {"committed": 10}
        log = server.log_path.read_text()
        assert "not properly shut down" in log or "automatic recovery in progress" in log
    finally:
        engine.dispose()


def test_mqtt_qos1_publish_subscribe(
    mosquitto_server: MosquittoServer, mqtt_client_factory: MqttFactory
) -> None:
    topic = f"b2l/v1/bat-{uuid.uuid4().hex[:8]}/telemetry"
    sub = mqtt_client_factory(mosquitto_server, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    pub = mqtt_client_factory(mosquitto_server, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    assert not sub.connect().is_failure
    assert not pub.connect().is_failure
    assert [rc.value for rc in sub.subscribe(topic, qos=1)] == [1]  # granted QoS 1

    payload = json.dumps({"seq": 1, "v": [3.301, 3.299]}).encode()
    info = pub.client.publish(topic, payload, qos=1)
    info.wait_for_publish(TIMEOUT_S)
    assert info.is_published(), "no PUBACK from the broker"

    msg = sub.expect_message(TIMEOUT_S)
    assert msg.topic == topic
    assert msg.qos == 1
    assert json.loads(msg.payload) == {"seq": 1, "v": [3.301, 3.299]}


def test_mqtt_authentication(
    make_mosquitto_server: Callable[..., MosquittoServer], mqtt_client_factory: MqttFactory
) -> None:
    broker = make_mosquitto_server(allow_anonymous=False, users={"bat-d": "right-secret"})
    wrong = mqtt_client_factory(broker, client_id="bat-d-w", username="bat-d", password="nope")
    rc = wrong.connect()
    assert rc.is_failure
    assert rc.value in (0x86, 0x87)  # bad user name or password / not authorized

    anonymous = mqtt_client_factory(broker, client_id="anon")
    assert anonymous.connect().is_failure

    right = mqtt_client_factory(
        broker, client_id="bat-d", username="bat-d", password="right-secret"
    )
    assert not right.connect().is_failure
    right.subscribe("b2l/v1/bat-d/commands")
    assert not right.publish("b2l/v1/bat-d/commands", b"ping").is_failure
    assert right.expect_message(TIMEOUT_S).payload == b"ping"


def test_mqtt_kill9_restart_keeps_persistent_session(
    make_mosquitto_server: Callable[..., MosquittoServer], mqtt_client_factory: MqttFactory
) -> None:
    broker = make_mosquitto_server(autosave_interval_s=1)
    topic = "b2l/v1/bat-e/commands"
    persistent = {"client_id": "edge-bat-e", "clean_start": False, "session_expiry_s": 3600}

    sub = mqtt_client_factory(broker, **persistent)
    assert not sub.connect().is_failure
    sub.subscribe(topic, qos=1)
    sub.close()  # offline now; the session (and its subscription) stays on the broker

    cloud = mqtt_client_factory(broker, client_id="cloud-e")
    assert not cloud.connect().is_failure
    assert not cloud.publish(topic, b"queued-before-crash", qos=1).is_failure
    acked_ns = time.time_ns()
    cloud.close()
    # Mosquitto persists on autosave only: wait for a save that includes the message.
    broker.wait_persisted(acked_ns, timeout_s=TIMEOUT_S)

    broker.kill()
    assert not broker.is_running
    broker.restart()

    cloud2 = mqtt_client_factory(broker, client_id="cloud-e")
    assert not cloud2.connect().is_failure
    assert not cloud2.publish(topic, b"published-after-restart", qos=1).is_failure

    sub2 = mqtt_client_factory(broker, **persistent)
    assert not sub2.connect().is_failure
    assert sub2.session_present, "persistent session lost across kill -9"
    got = [sub2.expect_message(TIMEOUT_S) for _ in range(2)]
    assert [m.payload for m in got] == [b"queued-before-crash", b"published-after-restart"]
    assert all(m.qos == 1 for m in got)
    sub2.assert_no_message(0.3)
