"""The cloud's MQTT connection: broker address, credentials and TLS from the settings.

``mqtt://user:password@host:port`` (default port 1883) or ``mqtts://...`` (TLS, default port
8883; ``mqtt_ca_file`` / ``mqtt_cert_file`` / ``mqtt_key_file`` from the settings, e.g. the
files ``b2l cloud dev-ca`` writes). The client is paho-mqtt 2 (``CallbackAPIVersion.VERSION2``),
MQTT 5, with a persistent session: ``clean_start = False`` and a session expiry, so the broker
keeps this process's subscription and its unacknowledged messages while it is away.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.mqtt.buffered import BufferedClient
from cloud.settings import CloudSettings
from twin.errors import ConfigError

__all__ = ["MqttEndpoint", "connect_properties", "default_client_id", "make_client"]

_SCHEMES = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883), "ssl": (True, 8883)}


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and how to connect (parsed from ``settings.mqtt_url``)."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> MqttEndpoint:
        """Parse ``mqtt[s]://[user[:password]@]host[:port]``; ConfigError if malformed."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"B2L_MQTT_URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ConfigError(f"B2L_MQTT_URL: scheme must be mqtt:// or mqtts://, not {scheme!r}")
        if not parts.hostname:
            raise ConfigError("B2L_MQTT_URL: no host (mqtt://host:port)")
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError("B2L_MQTT_URL: no path or query is allowed (mqtt://host:port)")
        tls, default_port = _SCHEMES[scheme]
        return cls(
            host=parts.hostname,
            port=port or default_port,
            tls=tls,
            username=None if parts.username is None else unquote(parts.username),
            password=None if parts.password is None else unquote(parts.password),
        )

    def redacted(self) -> str:
        """The URL without the password, for logs."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def default_client_id() -> str:
    """``b2l-cloud-{hostname}``: stable across restarts of this machine's one process."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-_")[:40]
    return f"b2l-cloud-{host or 'host'}"


def make_client(settings: CloudSettings, client_id: str, *, manual_ack: bool) -> BufferedClient:
    """A paho client for ``settings.mqtt_url`` (credentials and TLS set, not connected), reading
    in chunks and acknowledging in bulk (``cloud.mqtt.buffered``)."""
    if not settings.mqtt_url:
        raise ConfigError("B2L_MQTT_URL is not set")
    endpoint = MqttEndpoint.from_url(settings.mqtt_url)
    client = BufferedClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls or settings.mqtt_ca_file or settings.mqtt_cert_file:
        if bool(settings.mqtt_cert_file) != bool(settings.mqtt_key_file):
            raise ConfigError("B2L_MQTT_CERT_FILE and B2L_MQTT_KEY_FILE go together")
        try:
            client.tls_set(
                ca_certs=settings.mqtt_ca_file,
                certfile=settings.mqtt_cert_file,
                keyfile=settings.mqtt_key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"MQTT TLS files: {exc}") from None
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def connect_properties(settings: CloudSettings) -> Properties:
    """CONNECT properties: session expiry (persistent session) and receive maximum."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = settings.mqtt_session_expiry_s
    properties.ReceiveMaximum = settings.mqtt_receive_maximum
    return properties
