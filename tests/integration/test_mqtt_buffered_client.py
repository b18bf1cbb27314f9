"""The cloud's paho client with buffered reads and bulk PUBACKs (``cloud.mqtt.buffered``) against
a real Mosquitto, over TCP and TLS: every message arrives whole and in order whatever its size,
bytes already buffered are read without waiting on the socket, and PUBACKs sent in bulk release
the broker's session as paho's own do."""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import MqttTestClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud.mqtt.buffered import MAX_PACKETS_PER_READ, BufferedClient, BufferedSocket
from cloud.mqtt.connection import connect_properties, make_client
from cloud.security.dev_ca import write_dev_ca
from cloud.settings import CloudSettings
from hil.services import MosquittoServer

pytestmark = pytest.mark.integration

TOPIC = "b2l/v1/B-1/telemetry"


@pytest.fixture(params=["tcp", "tls"])
def broker_settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_mosquitto_server: Callable[..., MosquittoServer],
) -> tuple[MosquittoServer, CloudSettings]:
    """A broker and the settings of a cloud client for it (``mqtts://`` with the dev CA)."""
    if request.param == "tcp":
        broker = make_mosquitto_server()
        url, extra = f"mqtt://{broker.host}:{broker.port}", {}
    else:
        ca = tmp_path / "ca"
        write_dev_ca(ca, datetime.now(UTC))
        broker = make_mosquitto_server(
            base_config=(
                "listener 0\nallow_anonymous true\n"
                f"cafile {ca / 'ca.pem'}\ncertfile {ca / 'server.pem'}\n"
                f"keyfile {ca / 'server.key'}\n"
            )
        )
        url, extra = f"mqtts://{broker.host}:{broker.port}", {"mqtt_ca_file": str(ca / "ca.pem")}
    settings = CloudSettings(_env_file=None, mqtt_url=url, **extra)  # type: ignore[call-arg]
    return broker, settings


class Subscriber:
    """A ``make_client`` client with a persistent session, subscribed to ``TOPIC``; received
    messages are queued and acknowledged only by ``ack``."""

    def __init__(self, broker: MosquittoServer, settings: CloudSettings, client_id: str) -> None:
        self.client = make_client(settings, client_id, manual_ack=True)
        assert isinstance(self.client, BufferedClient)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self._subscribed = queue.Queue[int]()
        self.client.on_subscribe = lambda _c, _u, mid, *_: self._subscribed.put(mid)
        self.client.connect(
            broker.host, broker.port, clean_start=False, properties=connect_properties(settings)
        )

    def subscribe(self, *, looping: bool = True) -> None:
        """Subscribe; ``looping``: on paho's network thread, else by the caller's ``loop()``."""
        if looping:
            self.client.loop_start()
        self.client.subscribe([(TOPIC, SubscribeOptions(qos=1))])
        deadline = time.monotonic() + 10
        while self._subscribed.empty():
            assert time.monotonic() < deadline, "no SUBACK"
            if looping:
                time.sleep(0.01)
            else:
                self.client.loop(timeout=0.1)

    def take(self, n: int, timeout_s: float = 20.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout_s
        out = []
        while len(out) < n:
            out.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def publisher(
    broker_settings: tuple[MosquittoServer, CloudSettings],
    mqtt_client_factory: Callable[..., MqttTestClient],
) -> MqttTestClient:
    broker, settings = broker_settings
    client = mqtt_client_factory(broker)
    if settings.mqtt_ca_file is not None:
        client.client.tls_set(ca_certs=settings.mqtt_ca_file)
    client.connect()
    return client


def publish_all(publisher: MqttTestClient, payloads: list[bytes]) -> None:
    """Publish at QoS 1 without waiting between messages; wait for the last PUBACK."""
    infos = [publisher.client.publish(TOPIC, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(20)
        assert info.is_published()


@pytest.fixture
def subscriber(broker_settings: tuple[MosquittoServer, CloudSettings]) -> Iterator[Subscriber]:
    sub = Subscriber(*broker_settings, client_id="buffered-sub")
    yield sub
    sub.close()


def test_messages_of_every_size_arrive_whole_and_in_order(
    subscriber: Subscriber, publisher: MqttTestClient
) -> None:
    subscriber.subscribe()
    # remaining-length boundaries (1..4 bytes), bigger than a read chunk, and many small ones
    sizes = [0, 1, 100, 127, 128, 16_383, 16_384, 70_000, 1_500_000, *range(300)]
    payloads = [bytes([k % 251]) * size for k, size in enumerate(sizes)]
    publish_all(publisher, payloads)
    received = subscriber.take(len(payloads))
    assert [m.payload for m in received] == payloads
    assert {m.topic for m in received} == {TOPIC}
    subscriber.client.ack_many(m.mid for m in received)


def test_buffered_packets_are_read_without_waiting_on_the_socket(
    subscriber: Subscriber, publisher: MqttTestClient
) -> None:
    """Messages already read from the socket into the buffer are handed out by the next loop
    at once: paho's loop would otherwise wait in ``select`` for bytes that will not come."""
    subscriber.subscribe(looping=False)  # nothing read while they are published
    n = 3 * MAX_PACKETS_PER_READ  # a few hundred bytes each: one 64 KiB read holds them all
    publish_all(publisher, [b"%d" % k for k in range(n)])
    time.sleep(0.5)  # delivered by the broker into the subscriber's socket
    start = time.monotonic()
    loops = 0
    while subscriber.messages.qsize() < n and loops < 20:
        subscriber.client.loop(timeout=30.0)  # blocks 30 s if buffered bytes are not seen
        loops += 1
    assert subscriber.messages.qsize() == n
    assert time.monotonic() - start < 10.0
    assert loops >= 2  # the buffer outlived a loop: read by the next one, not waited for


def test_bulk_pubacks_release_the_session_and_missing_ones_do_not(
    broker_settings: tuple[MosquittoServer, CloudSettings], publisher: MqttTestClient
) -> None:
    broker, settings = broker_settings
    first = Subscriber(broker, settings, client_id="bulk-acks")
    first.subscribe()
    publish_all(publisher, [b"a%d" % k for k in range(50)])
    received = first.take(50)
    first.client.ack_many(m.mid for m in received[:30])  # the last 20 are not acknowledged
    time.sleep(0.5)
    first.close()

    again = Subscriber(broker, settings, client_id="bulk-acks")
    again.subscribe()
    redelivered = again.take(20)
    assert [m.payload for m in redelivered] == [b"a%d" % k for k in range(30, 50)]
    assert all(m.dup for m in redelivered)
    again.client.ack_many(m.mid for m in redelivered)
    with pytest.raises(queue.Empty):
        again.messages.get(timeout=0.5)
    time.sleep(0.5)
    again.close()

    third = Subscriber(broker, settings, client_id="bulk-acks")
    third.subscribe()
    with pytest.raises(queue.Empty):  # all acknowledged: nothing comes back
        third.messages.get(timeout=1.0)
    third.close()


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    b.setblocking(False)
    return a, b


def test_the_buffered_socket_reads_chunks_and_hands_out_what_is_asked() -> None:
    writer, reader = _pair()
    calls: list[int] = []

    class Counting:
        def recv(self, n: int) -> bytes:
            calls.append(n)
            return reader.recv(n)

        def fileno(self) -> int:
            return reader.fileno()

    sock: Any = BufferedSocket(Counting(), chunk_bytes=1024)
    try:
        writer.sendall(b"abcdefgh" * 10)
        assert sock.recv(1) == b"a"
        assert sock.pending() == 79
        assert sock.recv(3) == b"bcd"
        assert sock.recv(1000) == b"efgh" + b"abcdefgh" * 9  # what is buffered, no more
        assert len(calls) == 1
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):  # empty buffer, empty socket: as the socket does
            sock.recv(1)
        writer.sendall(b"xyz")
        assert sock.recv(10) == b"xyz"  # all fits: returned as it came
        assert sock.fileno() == reader.fileno()  # the rest is the socket's
        writer.close()
        assert sock.recv(10) == b""  # end of stream
    finally:
        writer.close()
        reader.close()


def test_bulk_pubacks_are_only_for_manual_acknowledgement() -> None:
    manual = BufferedClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    automatic = BufferedClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    manual.ack_many([1, 2, 3])
    automatic.ack_many([1, 2, 3])  # paho acknowledged these itself: nothing more to send
    assert manual.want_write()
    assert not automatic.want_write()
