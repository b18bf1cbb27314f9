"""Shared fixtures: throwaway PostgreSQL and Mosquitto, only for the tests that ask for them.

Session servers (``postgres_server``, ``mosquitto_server``) start once and are shared; tests
that kill or reconfigure a server take their own from ``make_postgres_server`` /
``make_mosquitto_server``. Missing binaries make these fixtures fail (never skip) with the
install hint. ``mqtt_client_factory`` gives paho-mqtt 2 (MQTT 5) clients with bounded waits.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import Engine, create_engine

from hil.services import MosquittoServer, PostgresServer, ServiceError

# -- servers ---------------------------------------------------------------------------------


def _start(server: PostgresServer | MosquittoServer) -> None:
    """Start ``server``; a missing install or a failed start fails the test (no skip)."""
    try:
        server.start()
    except ServiceError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the session (fsync off: nothing here survives an OS crash).

    Do not kill it in a test; use ``make_postgres_server`` for fault tests.
    """
    server = PostgresServer(fsync=False)
    _start(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[MosquittoServer]:
    """One throwaway anonymous Mosquitto for the session; use unique topics per test."""
    server = MosquittoServer(allow_anonymous=True)
    _start(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_postgres_server() -> Iterator[Callable[..., PostgresServer]]:
    """Factory of dedicated, started PostgreSQL servers (kwargs as ``PostgresServer``)."""
    servers: list[PostgresServer] = []

    def make(**kwargs: Any) -> PostgresServer:
        server = PostgresServer(**kwargs)
        servers.append(server)
        _start(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_mosquitto_server() -> Iterator[Callable[..., MosquittoServer]]:
    """Factory of dedicated, started Mosquitto brokers (kwargs as ``MosquittoServer``)."""
    servers: list[MosquittoServer] = []

    def make(**kwargs: Any) -> MosquittoServer:
        server = MosquittoServer(**kwargs)
        servers.append(server)
        _start(server)
        return server

    yield make
    for server in servers:
        server.stop()


@dataclass(frozen=True)
class PgDatabase:
    """A fresh database on the session server; ``engine`` is disposed after the test."""

    name: str
    url: str
    dsn: str
    engine: Engine


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[PgDatabase]:
    """A new empty database per test, dropped (sessions forced out) afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    engine = create_engine(url)
    try:
        yield PgDatabase(name=name, url=url, dsn=postgres_server.dsn_for(name), engine=engine)
    finally:
        engine.dispose()
        postgres_server.drop_database(name)


# -- MQTT clients ----------------------------------------------------------------------------


class MqttTestClient:
    """A paho-mqtt 2 MQTT 5 client on its network thread; every wait is bounded."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.clean_start, self.session_expiry_s = clean_start, session_expiry_s
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.session_present: bool | None = None
        self._connacks: queue.Queue[tuple[mqtt.ConnectFlags, ReasonCode]] = queue.Queue()
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = self._on_ack
        self.client.on_publish = self._on_ack
        self._started = False

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, rc: ReasonCode, _p: Any
    ) -> None:
        self._connacks.put((flags, rc))

    def _on_ack(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._acked:
            self._acks[mid] = rc
            self._acked.notify_all()

    def _wait_ack(self, mid: int, what: str) -> Any:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._acks, self.timeout_s):
                raise TimeoutError(f"no {what} for mid {mid} within {self.timeout_s}s")
            return self._acks.pop(mid)

    def connect(self) -> ReasonCode:
        """Connect and wait for the CONNACK; returns its reason code (check ``is_failure``)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.session_expiry_s:
            props.SessionExpiryInterval = self.session_expiry_s
        self.client.connect(
            self.host, self.port, keepalive=30, clean_start=self.clean_start, properties=props
        )
        self.client.loop_start()
        self._started = True
        try:
            flags, rc = self._connacks.get(timeout=self.timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no CONNACK within {self.timeout_s}s") from None
        if rc.is_failure:  # stop here: no reconnect attempts with a refused login
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False
        self.session_present = bool(flags.session_present)
        return rc

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; returns its reason codes."""
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed: {mqtt.error_string(result)}"
        assert mid is not None
        return list(self._wait_ack(mid, "SUBACK"))

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> ReasonCode:
        """Publish and wait until sent (QoS 0) or acknowledged (PUBACK, QoS 1).

        Returns the PUBACK reason code (``Not authorized`` when an ACL drops it).
        """
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(self.timeout_s)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic!r} not acknowledged within {self.timeout_s}s")
        rc = self._wait_ack(info.mid, "PUBACK")
        return rc if isinstance(rc, ReasonCode) else ReasonCode(PacketTypes.PUBACK)

    def expect_message(self, timeout_s: float | None = None) -> mqtt.MQTTMessage:
        """The next received message; ``AssertionError`` if none arrives in time."""
        try:
            return self.messages.get(timeout=self.timeout_s if timeout_s is None else timeout_s)
        except queue.Empty:
            raise AssertionError("expected an MQTT message, none arrived") from None

    def assert_no_message(self, within_s: float = 0.5) -> None:
        """Fail if a message arrives within ``within_s``."""
        try:
            msg = self.messages.get(timeout=within_s)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected MQTT message on {msg.topic!r}: {msg.payload!r}")

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread (idempotent)."""
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def mqtt_client_factory() -> Iterator[Callable[..., MqttTestClient]]:
    """``make(server, **kwargs)`` -> unconnected ``MqttTestClient``; all closed afterwards."""
    clients: list[MqttTestClient] = []

    def make(server: MosquittoServer, **kwargs: Any) -> MqttTestClient:
        client = MqttTestClient(server.host, server.port, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
