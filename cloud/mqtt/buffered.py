"""paho's ``Client`` with buffered reads and PUBACKs sent in bulk, for the uplink consumer.

paho-mqtt 2 reads each packet with three or four ``recv`` calls (the command byte, each byte of
the remaining length, then the body) and a ``select`` before each packet, and sends each PUBACK
as its own packet (a wake-up write to its socket pair, then a ``send``). At thousands of
messages a second those system calls are most of what the client costs: draining a queued
session of 16-cell telemetry took ~39 µs of CPU per message, ~24 µs with this client (the
bench's ``floor`` phase, two consumers, same run).

* ``BufferedSocket`` wraps the socket paho creates: ``recv`` reads 64 KiB at a time and hands
  paho what it asks for from that buffer; ``pending()`` tells paho's loop what is buffered, so
  it does not wait in ``select`` for bytes it already holds (the hook paho uses for TLS, whose
  records are buffered the same way);
* ``BufferedClient.loop_read`` goes on reading packets until the socket would block (at most
  ``MAX_PACKETS_PER_READ``, so PUBACKs and pings still go out during a long burst);
* ``BufferedClient.ack_many`` queues the PUBACKs of a group as one write.

It relies on two of paho's internal methods (``_create_socket``, ``_packet_queue``; paho 2.x,
checked on 2.2); ``tests/integration/test_mqtt_buffered_client.py`` checks the behaviour against
a real broker, so a paho release that changes them fails there, not in production.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["MAX_PACKETS_PER_READ", "READ_CHUNK_BYTES", "BufferedClient", "BufferedSocket"]

READ_CHUNK_BYTES = 64 * 1024
"""Bytes asked of the socket per ``recv``."""
MAX_PACKETS_PER_READ = 256
"""Packets read per ``loop_read`` before paho's loop gets to write (PUBACKs, pings)."""
_PUBACK = struct.Struct("!BBH")
_PUBACK_COMMAND = 0x40  # MQTT PUBACK, remaining length 2: the message id; reason "success"


class BufferedSocket:
    """A socket (or paho's TLS or WebSocket wrapper) read in chunks; all else is delegated."""

    def __init__(self, sock: Any, chunk_bytes: int = READ_CHUNK_BYTES) -> None:
        self._sock = sock
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self.would_block = False
        """The last read of the socket found nothing to read (it raised)."""

    def recv(self, bufsize: int) -> bytes:
        """At most ``bufsize`` bytes: from the buffer, or one ``recv`` of a chunk when it is
        empty (its exceptions, ``BlockingIOError`` included, reach paho as they are)."""
        if not self._buffer:
            self.would_block = True
            data: bytes = self._sock.recv(self._chunk_bytes)
            self.would_block = False
            if len(data) <= bufsize:
                return data
            self._buffer += data
        out = bytes(self._buffer[:bufsize])
        del self._buffer[:bufsize]  # cheap: a bytearray drops its head without copying
        return out

    def pending(self) -> int:
        """Bytes received and not yet handed out (paho's loop reads them without waiting)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buffer) + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(mqtt.Client):
    """``mqtt.Client`` reading through a ``BufferedSocket``, with ``ack_many``."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's ``loop_read`` (one packet), again until the socket has nothing more to read
        (a TLS socket hands out one record per read) or ``MAX_PACKETS_PER_READ``."""
        rc = super().loop_read(max_packets)
        for _ in range(MAX_PACKETS_PER_READ - 1):
            sock = self._sock
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not isinstance(sock, BufferedSocket):
                break
            if sock.would_block and not sock.pending():
                break
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, mids: Iterable[int]) -> None:
        """PUBACK QoS 1 messages, in one write; as ``ack``, only with ``manual_ack`` (paho
        acknowledged them itself otherwise)."""
        if not self._manual_ack:
            return
        packet = b"".join(_PUBACK.pack(_PUBACK_COMMAND, 2, mid) for mid in mids)
        if packet:
            self._packet_queue(_PUBACK_COMMAND, packet, 0, 0)
