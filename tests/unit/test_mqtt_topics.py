"""MQTT topic builders and parsers of SPEC section 4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twin.base import BATTERY_ID_PATTERN
from twin.errors import TopicError
from twin.protocols.mqtt_topics import Channel, parse_topic, subscription, topic

pytestmark = pytest.mark.unit


def test_topics_of_the_spec() -> None:
    assert topic("B-1", Channel.TELEMETRY) == "b2l/v1/B-1/telemetry"
    assert topic("B-1", "commands") == "b2l/v1/B-1/commands"
    assert subscription(Channel.TELEMETRY, group="cloud") == "$share/cloud/b2l/v1/+/telemetry"
    assert subscription(Channel.COMMANDS, battery_id="B-1") == "b2l/v1/B-1/commands"
    assert not Channel.COMMANDS.from_edge and Channel.ACKS.from_edge


@given(st.from_regex(BATTERY_ID_PATTERN, fullmatch=True), st.sampled_from(list(Channel)))
def test_parse_inverts_build(battery_id: str, channel: Channel) -> None:
    parsed = parse_topic(topic(battery_id, channel))
    assert (parsed.battery_id, parsed.channel) == (battery_id, channel)


@pytest.mark.parametrize(
    "name",
    [
        "b2l/v1/B-1",
        "b2l/v2/B-1/telemetry",
        "b2l/v1/B-1/gossip",
        "b2l/v1/+/telemetry",
        "b2l/v1/#",
        "b2l/v1/B-1/telemetry/extra",
        "",
    ],
)
def test_foreign_topics_are_refused(name: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(name)


@given(st.text(max_size=80))
def test_random_text_is_a_topic_error_or_a_topic(name: str) -> None:
    try:
        parsed = parse_topic(name)
    except TopicError:
        return
    assert topic(parsed.battery_id, parsed.channel) == name


def test_wildcards_cannot_sneak_in_through_a_battery_id() -> None:
    for bad in ("+", "#", "a/b", "", "x" * 65):
        with pytest.raises(TopicError):
            topic(bad, Channel.TELEMETRY)
    with pytest.raises(TopicError):
        subscription(Channel.EVENTS, group="bad/group")
