"""Uplinks: how batches leave the edge and commands come in, picked by name from the settings.

``open_uplink(settings)`` returns the adapter of ``settings.uplink.kind`` (imported lazily):
``http`` (HTTPS POST to the cloud's REST API, commands by polling), ``mqtt`` (QoS 1 publishes,
commands by subscription) or ``memory`` (an in-process cloud stand-in for tests and the demo).

An uplink only moves bytes and reports outcomes; the ``Forwarder`` decides what to send next,
when to retry and what an outcome does to the outbox. ``submit(batch)`` ends, now or later and
from any thread, in exactly one ``listener.on_delivery(Delivery)``:

* ``ACKED``: the cloud (HTTP 2xx) or the broker (PUBACK) holds the records: remove them;
* ``RETRY``: not delivered (network, 5xx, 429, auth refresh): try again after a backoff;
* ``REJECTED``: the cloud refuses these records (4xx): never retried as they are;
* ``TOO_LARGE``: send fewer records at a time.

Commands arrive through ``listener.on_command``; ``listener.on_connection(connected,
reconnected)`` tells when the connection comes back after a loss (the forwarder then replays the
recent window and asks for pending commands).
"""

from __future__ import annotations

import enum
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from edge_runtime.clock import SYSTEM_CLOCK, Clock
from edge_runtime.outbox import OutboxBatch
from twin.commands import Command

if TYPE_CHECKING:
    from edge_runtime.config import EdgeSettings

__all__ = ["Delivery", "Outcome", "Uplink", "UplinkListener", "decode_commands", "open_uplink"]

log = logging.getLogger("edge_runtime.uplink")


class Outcome(enum.StrEnum):
    """What happened to a submitted batch."""

    ACKED = "acked"
    RETRY = "retry"
    REJECTED = "rejected"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one ``submit``."""

    batch: OutboxBatch
    outcome: Outcome
    detail: str = ""
    retry_after_s: float | None = None
    """The server's ``Retry-After`` (None: use the backoff)."""


class UplinkListener(Protocol):
    """Who hears about deliveries, commands and the connection (the forwarder)."""

    def on_delivery(self, delivery: Delivery) -> None:
        """A submitted batch's outcome (any thread)."""

    def on_command(self, command: Command) -> None:
        """A command from the cloud (any thread)."""

    def on_connection(self, connected: bool, reconnected: bool) -> None:
        """The connection went up or down; ``reconnected``: up again after a loss."""


class Uplink(ABC):
    """Base of the uplink adapters (see the module docstring)."""

    kind: str = "uplink"
    max_inflight: int = 1
    """Batches the forwarder may have submitted and not yet heard back about."""
    single_kind: bool = False
    """Batches must hold one record kind (MQTT: one topic per kind)."""
    replay_window_s: float = 0.0
    """Keep acknowledged records this long and send them again after a reconnect."""

    def __init__(self, battery_id: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.battery_id = battery_id
        self.clock = clock
        self.listener: UplinkListener | None = None
        self.bad_commands = 0
        """Command messages that did not validate (counted, dropped)."""

    def start(self, listener: UplinkListener) -> None:
        """Begin: connect (in the background if the transport has a thread)."""
        self.listener = listener

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Batches can be submitted now."""

    @abstractmethod
    def submit(self, batch: OutboxBatch) -> None:
        """Send ``batch``; the outcome goes to ``listener.on_delivery``."""

    def tick(self) -> None:
        """Periodic work from the forwarder's thread (polls, timeouts)."""
        return None

    def request_commands(self) -> None:
        """Fetch the pending commands soon (after a reconnect: the desired state)."""
        return None

    def status(self) -> dict[str, object]:
        """Adapter details for the status file."""
        return {"kind": self.kind, "connected": self.connected, "bad_commands": self.bad_commands}

    def close(self) -> None:
        """Disconnect and release resources (idempotent)."""
        return None

    def _deliver(self, delivery: Delivery) -> None:
        if self.listener is not None:
            self.listener.on_delivery(delivery)

    def _command(self, command: Command) -> None:
        if self.listener is not None:
            self.listener.on_command(command)

    def _receive_commands(self, payload: bytes | str) -> None:
        """Pass on the payload's commands for this battery; count the invalid and the foreign."""
        commands, bad = decode_commands(payload)
        self.bad_commands += bad
        for command in commands:
            if command.battery_id == self.battery_id:
                self._command(command)
            else:
                self.bad_commands += 1


def _command(item: Any) -> Command:
    try:
        return Command.model_validate(item)
    except ValidationError:
        if not isinstance(item, dict):
            raise
        # a listing may add lifecycle fields (status, delivered_at, ...): keep the command's own
        return Command.model_validate({k: item[k] for k in Command.model_fields if k in item})


def decode_commands(payload: bytes | str) -> tuple[list[Command], int]:
    """Commands in a JSON payload (one command, a list, or ``{"items": [...]}``) and the number
    of entries that are not valid commands (counted, never raised)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        log.warning("a command payload is not JSON")
        return [], 1
    if isinstance(data, dict):
        for key in ("items", "commands", "data"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    items = data if isinstance(data, list) else [data]
    commands: list[Command] = []
    bad = 0
    for item in items:
        try:
            commands.append(_command(item))
        except ValidationError as exc:
            bad += 1
            log.warning("an invalid command was dropped: %s", exc.errors()[0]["msg"])
    return commands, bad


def open_uplink(settings: EdgeSettings, *, clock: Clock = SYSTEM_CLOCK) -> Uplink:
    """The uplink named by ``settings.uplink.kind``."""
    up = settings.uplink
    if up.kind == "http":
        from edge_runtime.uplink.http import HttpUplink

        return HttpUplink.from_settings(settings.battery_id, up, clock=clock)
    if up.kind == "mqtt":
        from edge_runtime.uplink.mqtt import MqttUplink

        return MqttUplink(settings.battery_id, up, clock=clock)
    from edge_runtime.uplink.memory import MemoryUplink, cloud

    return MemoryUplink(settings.battery_id, cloud(up.name), clock=clock)
