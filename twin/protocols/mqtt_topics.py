"""MQTT topics of SPEC section 4: ``b2l/v1/{battery_id}/{channel}``.

Edge to cloud: ``telemetry``, ``eis``, ``events``, ``acks``. Cloud to edge: ``commands``.
Cloud consumers subscribe through shared subscriptions (``$share/{group}/b2l/v1/+/telemetry``)
so several cloud processes split the load.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

from twin.base import BATTERY_ID_PATTERN
from twin.errors import TopicError

PREFIX = "b2l/v1"
_BATTERY_ID = re.compile(BATTERY_ID_PATTERN)
_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Channel(StrEnum):
    """The last topic level: what the message carries."""

    TELEMETRY = "telemetry"
    EIS = "eis"
    EVENTS = "events"
    ACKS = "acks"
    COMMANDS = "commands"

    @property
    def from_edge(self) -> bool:
        """Whether the edge publishes on this channel (else the cloud does)."""
        return self is not Channel.COMMANDS


EDGE_TO_CLOUD = tuple(c for c in Channel if c.from_edge)


class Topic(NamedTuple):
    """A parsed topic."""

    battery_id: str
    channel: Channel


def _check_battery_id(battery_id: str) -> str:
    if not _BATTERY_ID.match(battery_id):
        raise TopicError(
            f"battery id {battery_id!r} is not usable in a topic (1-64 of A-Z a-z 0-9 . _ : -)"
        )
    return battery_id


def topic(battery_id: str, channel: Channel | str) -> str:
    """The topic of one battery's channel."""
    try:
        chan = Channel(channel)
    except ValueError:
        raise TopicError(f"unknown channel {channel!r}") from None
    return f"{PREFIX}/{_check_battery_id(battery_id)}/{chan.value}"


def parse_topic(name: str) -> Topic:
    """Split a concrete topic into battery id and channel; TopicError if it is not ours."""
    parts = name.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"{name!r} is not a {PREFIX}/<battery_id>/<channel> topic")
    try:
        channel = Channel(parts[3])
    except ValueError:
        raise TopicError(f"{name!r}: unknown channel {parts[3]!r}") from None
    return Topic(_check_battery_id(parts[2]), channel)


def subscription(channel: Channel | str, battery_id: str = "+", group: str | None = None) -> str:
    """A subscription filter for a channel of one battery or (``+``) all of them.

    With ``group``, a shared subscription ``$share/{group}/...`` whose messages the broker spreads
    over the group's subscribers.
    """
    if battery_id != "+":
        _check_battery_id(battery_id)
    try:
        chan = Channel(channel)
    except ValueError:
        raise TopicError(f"unknown channel {channel!r}") from None
    filter_ = f"{PREFIX}/{battery_id}/{chan.value}"
    if group is None:
        return filter_
    if not _GROUP.match(group):
        raise TopicError(f"shared subscription group {group!r}: 1-64 of A-Z a-z 0-9 _ -")
    return f"$share/{group}/{filter_}"
