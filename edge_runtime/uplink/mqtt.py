"""MQTT uplink: QoS 1 publishes to ``b2l/v1/{battery_id}/{channel}``, commands by subscription.

paho-mqtt 2 (``CallbackAPIVersion.VERSION2``), MQTT 5 or 3.1.1, optional TLS (CA, client
certificate), username/password. The session is persistent (``clean_start = false``, a stable
client id, MQTT 5 session expiry): commands published while the edge is offline wait in the
broker, and unacknowledged publishes are resent by paho after a reconnect.

* One batch per message, one record kind per batch: telemetry -> ``telemetry``, eis -> ``eis``,
  event -> ``events``, ack -> ``acks``. The payload is the ``UplinkBatch`` JSON (gzip with
  ``compress``, MQTT 5 content type ``application/json+gzip``).
* A batch is acknowledged (``ACKED``) only when its PUBACK arrives (``on_publish`` with its
  ``mid``); a failure reason code gives ``RETRY`` (``TOO_LARGE`` for "packet too large",
  ``REJECTED`` for "payload format invalid"); no PUBACK within ``ack_timeout_s`` gives ``RETRY``.
* A broker killed before its autosave loses messages it had already acknowledged. So the
  uplink asks the outbox to keep acknowledged records for ``replay_window_s`` and, after every
  reconnect that follows a lost connection, they are published again (the cloud stores each
  ``(battery, seq)`` once).
* Commands: ``b2l/v1/{battery_id}/commands`` at QoS 1, subscribed at every connect; with
  ``command_poll_url`` the pending commands are also fetched over HTTPS after a reconnect.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.clock import SYSTEM_CLOCK, Clock
from edge_runtime.config import MqttUplinkSettings
from edge_runtime.outbox import OutboxBatch
from edge_runtime.uplink import Delivery, Outcome, Uplink, UplinkListener
from twin.commands import Command
from twin.errors import ConfigError
from twin.protocols.mqtt_topics import Channel, topic

__all__ = ["CHANNEL_OF_KIND", "MqttUplink"]

log = logging.getLogger("edge_runtime.uplink.mqtt")

CHANNEL_OF_KIND: dict[str, Channel] = {
    "telemetry": Channel.TELEMETRY,
    "eis": Channel.EIS,
    "event": Channel.EVENTS,
    "ack": Channel.ACKS,
}
_PACKET_TOO_LARGE = 0x95
_PAYLOAD_FORMAT_INVALID = 0x99
_NO_MATCHING_SUBSCRIBERS = 0x10
"""A success code, but nobody got the message: e.g. a restarted Mosquitto 2.0 that has not yet
seen the cloud's shared subscriptions again. The batch is sent again, not dropped."""


class _CommandsOnly:
    """Listener of the optional HTTPS command poller: passes commands, nothing else."""

    def __init__(self, owner: MqttUplink) -> None:
        self.owner = owner

    def on_delivery(self, delivery: Delivery) -> None:  # pragma: no cover - never submits
        pass

    def on_command(self, command: Command) -> None:
        self.owner._command(command)

    def on_connection(self, connected: bool, reconnected: bool) -> None:
        pass


class MqttUplink(Uplink):
    """The MQTT adapter (see the module docstring)."""

    kind = "mqtt"
    single_kind = True

    def __init__(
        self, battery_id: str, settings: MqttUplinkSettings, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        super().__init__(battery_id, clock=clock)
        self.settings = settings
        self.max_inflight = settings.max_inflight
        self.replay_window_s = settings.replay_window_s
        self.client_id = settings.client_id or f"b2l-edge-{battery_id}"
        self._v5 = settings.protocol == "5"
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[OutboxBatch, float]] = {}
        self._early: dict[int, ReasonCode | None] = {}
        self._connected = False
        self._ever_connected = False
        self._started = False
        self.last_error: str | None = None
        self.published = 0
        self.pubacks = 0
        self.no_subscribers = 0
        self.connects = 0
        self._client = self._make_client()
        self._poller: Any = None
        if settings.command_poll_url:
            from edge_runtime.uplink.http import HttpUplink

            self._poller = HttpUplink(
                battery_id,
                settings.command_poll_url,
                settings.device_id or settings.username or battery_id,
                settings.password_value() or "",
                ca_file=settings.ca_file,
                command_poll_s=86_400.0,
                clock=clock,
            )

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        if self._v5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=s.clean_start,
                protocol=mqtt.MQTTv311,
            )
        if s.username is not None:
            client.username_pw_set(s.username, s.password_value())
        if s.tls:
            try:
                client.tls_set(
                    ca_certs=None if s.ca_file is None else str(s.ca_file),
                    certfile=None if s.cert_file is None else str(s.cert_file),
                    keyfile=None if s.key_file is None else str(s.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"uplink.ca_file/cert_file: cannot set up TLS: {exc}") from None
        client.max_inflight_messages_set(max(20, s.max_inflight * 2))
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ---------------------------------------------------------------- life cycle

    def start(self, listener: UplinkListener) -> None:
        """Connect in the background (paho's network thread reconnects by itself)."""
        super().start(listener)
        if self._poller is not None:
            self._poller.start(_CommandsOnly(self))
        s = self.settings
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry_s
        self._client.connect_async(
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            clean_start=s.clean_start if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        self._started = True

    def close(self) -> None:
        """Disconnect cleanly and stop paho's thread (idempotent)."""
        if self._started:
            self._started = False
            self._client.disconnect()
            self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        if self._poller is not None:
            self._poller.close()

    @property
    def connected(self) -> bool:
        """CONNACK received and not disconnected since."""
        return self._connected

    # ---------------------------------------------------------------- paho callbacks

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho calls this inside its ``except OSError`` (TLS, refused, unreachable): keep why."""
        exc = sys.exc_info()[1]
        detail = "unknown error" if exc is None else f"{type(exc).__name__}: {exc}"
        if detail != self.last_error:
            log.warning("MQTT connection to %s failed: %s", self.settings.host, detail)
        self.last_error = f"connection failed: {detail}"

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
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        self.connects += 1
        reconnected = self._ever_connected
        self._ever_connected = True
        client.subscribe(topic(self.battery_id, Channel.COMMANDS), qos=1)
        self._connected = True
        log.info(
            "MQTT connected to %s:%d (session present: %s)",
            self.settings.host,
            self.settings.port,
            flags.session_present,
        )
        if self.listener is not None:
            self.listener.on_connection(True, reconnected)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected
        self._connected = False
        if was:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT disconnected: %s", reason_code)
            if self.listener is not None:
                self.listener.on_connection(False, False)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode | None,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            entry = self._inflight.pop(mid, None)
            if entry is None:
                self._early[mid] = reason_code
                return
        self._settle(entry[0], reason_code)

    def _settle(self, batch: OutboxBatch, reason_code: ReasonCode | None) -> None:
        if reason_code is not None and reason_code.value == _NO_MATCHING_SUBSCRIBERS:
            self.last_error = "PUBACK no matching subscribers: the cloud is not subscribed yet"
            self.no_subscribers += 1
            self._deliver(Delivery(batch, Outcome.RETRY, self.last_error))
            return
        if reason_code is None or not reason_code.is_failure:
            self.pubacks += 1
            self._deliver(Delivery(batch, Outcome.ACKED))
            return
        detail = f"PUBACK {reason_code}"
        self.last_error = detail
        if reason_code.value == _PACKET_TOO_LARGE:
            self._deliver(Delivery(batch, Outcome.TOO_LARGE, detail))
        elif reason_code.value == _PAYLOAD_FORMAT_INVALID:
            self._deliver(Delivery(batch, Outcome.REJECTED, detail))
        else:  # not authorized, quota exceeded, ...: configuration or load, not the data
            log.error("the broker refused a publish: %s", reason_code)
            self._deliver(Delivery(batch, Outcome.RETRY, detail))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._receive_commands(bytes(message.payload))

    # ---------------------------------------------------------------- publishing

    def submit(self, batch: OutboxBatch) -> None:
        """Publish the batch at QoS 1; the outcome comes with its PUBACK."""
        channel = CHANNEL_OF_KIND.get(batch.kind)
        if channel is None:
            self._deliver(Delivery(batch, Outcome.REJECTED, f"no MQTT channel for {batch.kind}"))
            return
        payload = batch.compressed() if self.settings.compress else batch.body
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if self.settings.compress:
                properties.ContentType = "application/json+gzip"
            else:
                properties.ContentType = "application/json"
                properties.PayloadFormatIndicator = 1
        info = self._client.publish(
            topic(self.battery_id, channel), payload, qos=1, properties=properties
        )
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._deliver(Delivery(batch, Outcome.RETRY, mqtt.error_string(info.rc)))
            return
        self.published += 1
        with self._lock:
            if info.mid in self._early:
                reason = self._early.pop(info.mid)
            else:
                self._inflight[info.mid] = (batch, self.clock.monotonic_s())
                return
        self._settle(batch, reason)

    def tick(self) -> None:
        """Time out batches whose PUBACK did not come; poll commands over HTTPS if set."""
        now = self.clock.monotonic_s()
        expired: list[OutboxBatch] = []
        with self._lock:
            for mid, (batch, sent_s) in list(self._inflight.items()):
                if now - sent_s > self.settings.ack_timeout_s:
                    del self._inflight[mid]
                    expired.append(batch)
            if len(self._early) > 10_000:
                self._early.clear()
        for batch in expired:
            self._deliver(Delivery(batch, Outcome.RETRY, "no PUBACK in time"))
        if self._poller is not None:
            self._poller.tick()

    def request_commands(self) -> None:
        """With ``command_poll_url``: fetch the pending commands over HTTPS now."""
        if self._poller is not None:
            self._poller.request_commands()

    def status(self) -> dict[str, object]:
        """Connection, counters, in-flight publishes."""
        with self._lock:
            inflight = len(self._inflight)
        return {
            **super().status(),
            "client_id": self.client_id,
            "connects": self.connects,
            "published": self.published,
            "pubacks": self.pubacks,
            "no_subscribers": self.no_subscribers,
            "inflight": inflight,
            "last_error": self.last_error,
        }
