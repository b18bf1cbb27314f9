"""``CloudMqttService``: the cloud's MQTT side in one object with ``start()`` / ``stop()``.

One paho-mqtt 2 client (MQTT 5, persistent session, manual acknowledgement) carries both
directions: the shared subscriptions ``$share/{group}/b2l/v1/+/{telemetry|eis|events|acks}``
(QoS 1) feed the ``MqttConsumer``; the ``CommandPublisher`` publishes on
``b2l/v1/{battery_id}/commands``. paho's network thread reconnects by itself (1-10 s backoff).

PUBACKs of received messages are sent only for messages of the current connection: after a
reconnect the broker sends the unacknowledged ones again (with the same message ids), so a late
acknowledgement of an older copy could acknowledge another message that reuses its id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud.clock import utc_now
from cloud.db.engine import Database
from cloud.metrics import CloudMetrics
from cloud.mqtt.commands import CommandPublisher
from cloud.mqtt.connection import MqttEndpoint, connect_properties, default_client_id, make_client
from cloud.mqtt.consumer import Inbound, MqttConsumer
from cloud.mqtt.dead_letters import DeadLetterStore
from cloud.services.ingestion import IngestionService
from cloud.settings import CloudSettings
from twin.protocols.mqtt_topics import EDGE_TO_CLOUD, subscription

__all__ = ["CloudMqttService", "uplink_subscriptions"]

log = logging.getLogger("cloud.mqtt")

_NO_MATCHING_SUBSCRIBERS = 0x10
"""A PUBACK reason: nobody (no session) subscribes to the topic, so nobody will get it."""


def uplink_subscriptions(group: str) -> list[str]:
    """The shared subscriptions of the consumer (one per edge-to-cloud channel)."""
    return [subscription(channel, group=group) for channel in EDGE_TO_CLOUD]


class CloudMqttService:
    """Consumer and command publisher on one broker connection (see the module docstring)."""

    def __init__(
        self,
        settings: CloudSettings,
        db: Database,
        *,
        metrics: CloudMetrics | None = None,
        ingestion: IngestionService | None = None,
        client_id: str | None = None,
        consume: bool = True,
        commands: bool | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not settings.mqtt_url:
            raise ValueError("settings.mqtt_url is not set")
        self.settings = settings
        self.endpoint = MqttEndpoint.from_url(settings.mqtt_url)
        self.client_id = client_id or settings.mqtt_client_id or default_client_id()
        self.metrics = metrics if metrics is not None else CloudMetrics()
        self.subscriptions = uplink_subscriptions(settings.mqtt_group) if consume else []
        self.consumer: MqttConsumer | None = None
        if consume:
            self.consumer = MqttConsumer(
                ingestion if ingestion is not None else IngestionService(db, settings),
                self._ack,
                metrics=self.metrics,
                dead_letters=DeadLetterStore(
                    settings.mqtt_dead_letter_dir, settings.mqtt_dead_letter_max_bytes
                ),
                max_messages=settings.mqtt_batch_max_messages,
                max_wait_s=settings.mqtt_batch_max_wait_s,
                twin_interval_s=settings.mqtt_twin_interval_s,
                clock=clock,
            )
        with_commands = settings.mqtt_commands if commands is None else commands
        self.publisher: CommandPublisher | None = None
        if with_commands:
            self.publisher = CommandPublisher(
                db,
                self._publish,
                metrics=self.metrics,
                poll_s=settings.mqtt_command_poll_s,
                clock=clock,
            )
        self._client = make_client(settings, self.client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = threading.Event()
        self._started = False
        self.connects = 0
        self.acks_sent = 0
        self.acks_dropped = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Connect in the background and start the worker threads."""
        if self._started:
            return
        self._started = True
        if self.consumer is not None:
            self.consumer.start()
        if self.publisher is not None:
            self.publisher.start()
        self._client.connect_async(
            self.endpoint.host,
            self.endpoint.port,
            keepalive=self.settings.mqtt_keepalive_s,
            clean_start=False,
            properties=connect_properties(self.settings),
        )
        self._client.loop_start()
        log.info(
            "MQTT service starting: %s as %s, subscriptions %s, commands %s",
            self.endpoint.redacted(),
            self.client_id,
            self.subscriptions,
            "on" if self.publisher is not None else "off",
        )

    def stop(self) -> None:
        """Stop the workers, then disconnect (idempotent). Unacknowledged messages stay in the
        broker's session for the next start."""
        if not self._started:
            return
        self._started = False
        if self.consumer is not None:
            self.consumer.stop()
        if self.publisher is not None:
            self.publisher.stop()
        with self._lock:
            self._generation += 1  # nothing more is acknowledged on this connection
        self._client.disconnect()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    def __enter__(self) -> CloudMqttService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """CONNACK received and subscriptions requested, not disconnected since."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait for the connection; True when connected."""
        return self._connected.wait(timeout_s)

    def wake_commands(self) -> None:
        """Publish newly queued commands now (e.g. right after an HTTP route created one)."""
        if self.publisher is not None:
            self.publisher.wake()

    def status(self) -> dict[str, Any]:
        """Counters for logs, tests and operators."""
        out: dict[str, Any] = {
            "broker": self.endpoint.redacted(),
            "client_id": self.client_id,
            "connected": self.connected,
            "connects": self.connects,
            "acks_sent": self.acks_sent,
            "acks_dropped": self.acks_dropped,
            "last_error": self.last_error,
        }
        if self.consumer is not None:
            out.update(
                messages=dict(self.consumer.counts),
                commits=self.consumer.commits,
                db_retries=self.consumer.retries,
                backlog=self.consumer.backlog,
            )
        if self.publisher is not None:
            out.update(
                commands_published=self.publisher.published,
                commands_delivered=self.publisher.delivered,
            )
        return out

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            log.error("the MQTT broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self._generation += 1
        self.connects += 1
        if self.subscriptions:
            client.subscribe([(s, SubscribeOptions(qos=1)) for s in self.subscriptions])
        self._connected.set()
        log.info(
            "MQTT connected to %s (session present: %s)",
            self.endpoint.redacted(),
            flags.session_present,
        )
        if self.publisher is not None:
            self.publisher.on_connected()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._generation += 1
        if self._connected.is_set():
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT disconnected: %s", reason_code)
        self._connected.clear()
        if self.publisher is not None:
            self.publisher.on_disconnected()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.consumer is None:
            return
        payload = message.payload
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        self.consumer.submit(
            Inbound(self._generation, message.mid, message.qos, message.topic, payload)
        )

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode | None,
        properties: Properties | None,
    ) -> None:
        if self.publisher is not None:
            ok = reason_code is None or not (
                reason_code.is_failure or reason_code.value == _NO_MATCHING_SUBSCRIBERS
            )
            self.publisher.on_puback(mid, ok, str(reason_code))

    # ------------------------------------------------------------------ for the workers

    def _ack(self, messages: Sequence[Inbound]) -> None:
        """PUBACK the messages of the current connection; drop the others (redelivered)."""
        with self._lock:
            generation = self._generation
            mids: list[int] = []
            for message in messages:
                if message.qos == 0:
                    continue
                if message.generation != generation:
                    self.acks_dropped += 1
                elif message.qos == 1:
                    mids.append(message.mid)
                else:  # QoS 2 (not subscribed to): paho's own acknowledgement
                    self._client.ack(message.mid, message.qos)
                    self.acks_sent += 1
            self._client.ack_many(mids)
            self.acks_sent += len(mids)

    def _publish(self, topic: str, payload: bytes) -> int | None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"
        properties.PayloadFormatIndicator = 1
        info = self._client.publish(topic, payload, qos=1, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info.mid
