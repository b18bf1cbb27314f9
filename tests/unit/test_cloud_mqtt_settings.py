"""Defaults of the MQTT consumer that must agree with each other."""

from __future__ import annotations

from cloud.settings import CloudSettings


def test_the_broker_may_send_two_groups_while_one_commits() -> None:
    """The decoder fills the next group while the committer stores one: with fewer messages in
    flight than two groups, the broker would stop sending until the PUBACKs of a commit."""
    fields = CloudSettings.model_fields
    receive_maximum = fields["mqtt_receive_maximum"].default
    group = fields["mqtt_batch_max_messages"].default
    assert receive_maximum >= 2 * group
