"""The edge's MQTT uplink over TLS to a real Mosquitto with a ``b2l cloud dev-ca`` certificate.

With the CA configured (``uplink.ca_file``) the batches are published and acknowledged; an edge
that trusts only the system's CAs never connects and keeps every record in its outbox.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_edge_mqtt import Edge, telemetry

from cloud.security.dev_ca import write_dev_ca
from hil.services import MosquittoServer

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_broker(
    tmp_path: Path, make_mosquitto_server: Callable[..., MosquittoServer]
) -> Iterator[tuple[MosquittoServer, Path]]:
    ca = tmp_path / "ca"
    write_dev_ca(ca, datetime.now(UTC))
    config = (
        "listener 0\nallow_anonymous true\n"
        f"cafile {ca / 'ca.pem'}\ncertfile {ca / 'server.pem'}\nkeyfile {ca / 'server.key'}\n"
    )
    yield make_mosquitto_server(base_config=config), ca / "ca.pem"


def _drain(edge: Edge, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while edge.outbox.pending_records and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_configured_ca_verifies_the_broker(
    tmp_path: Path, tls_broker: tuple[MosquittoServer, Path]
) -> None:
    broker, ca_file = tls_broker
    cloud = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    cloud.tls_set(ca_certs=str(ca_file))
    subscribed = threading.Event()
    cloud.on_subscribe = lambda *_: subscribed.set()
    cloud.connect(broker.host, broker.port)
    cloud.loop_start()
    cloud.subscribe("b2l/v1/+/telemetry", qos=1)
    assert subscribed.wait(10)
    edge = Edge(tmp_path, broker, "TLS-1", tls=True, ca_file=ca_file)
    try:
        edge.outbox.enqueue_many([telemetry(k) for k in range(30)])
        _drain(edge, 20.0)
        assert edge.outbox.pending_records == 0
        assert edge.uplink.pubacks >= 2  # 30 records in batches of 20
    finally:
        edge.close()
        cloud.disconnect()
        cloud.loop_stop()


# paho-mqtt does not close the socket of a TLS handshake that failed (reconnect() raises with
# the SSLSocket still open); the GC reports it. The edge itself holds no socket here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unknown_ca_is_refused_and_the_records_are_kept(
    tmp_path: Path, tls_broker: tuple[MosquittoServer, Path]
) -> None:
    broker, _ca_file = tls_broker
    edge = Edge(tmp_path, broker, "TLS-2", tls=True)
    try:
        edge.outbox.enqueue_many([telemetry(k) for k in range(10)])
        time.sleep(2.0)
        assert edge.outbox.pending_records == 10
        assert edge.uplink.pubacks == 0
        assert "certificate" in str(edge.uplink.last_error).lower()
    finally:
        edge.close()
        gc.collect()  # the leaked socket is reported here, under this test's filter
