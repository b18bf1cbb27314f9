"""The MQTT consumer's decoder turns bad payloads into an outcome, never an exception."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from cloud.mqtt import consumer
from cloud.mqtt.consumer import Outcome, decode_message
from twin.uplink import UplinkBatch

pytestmark = pytest.mark.unit

TOPIC = "b2l/v1/B-1/telemetry"


def batch_json(battery_id: str = "B-1") -> bytes:
    record: dict[str, Any] = {
        "kind": "telemetry",
        "seq": 1,
        "timestamp": "2025-03-01T12:00:01+00:00",
        "pillar1": [
            {
                "cell_id": 0,
                "voltage_v": 3.2,
                "temperature_c": 20.0,
                "current_a": -1.9,
                "sot": 0.9,
                "phase": 1.0,
                "soc": 0.5,
                "sos": 0.95,
            }
        ],
        "packs": [{"pack_index": 0, "voltage_v": 26.0, "current_a": -2.0, "faults": []}],
    }
    return json.dumps({"battery_id": battery_id, "records": [record]}).encode()


def test_a_good_payload_plain_or_gzipped_is_a_batch() -> None:
    for body in (batch_json(), gzip.compress(batch_json())):
        decoded = decode_message(TOPIC, body)
        assert isinstance(decoded, UplinkBatch)
        assert decoded.battery_id == "B-1"


@pytest.mark.parametrize(
    ("topic", "body", "outcome"),
    [
        (TOPIC, b"\xff\xfe{not utf-8", Outcome.MALFORMED),
        (TOPIC, gzip.compress(b"\xff\xfe\x80"), Outcome.MALFORMED),
        (TOPIC, b"\x1f\x8b\x08\x00garbage", Outcome.MALFORMED),
        (TOPIC, gzip.compress(batch_json())[:-6], Outcome.MALFORMED),  # truncated
        (TOPIC, batch_json().replace(b'"faults": []', b'"state": "a\\u0000b"'), Outcome.MALFORMED),
        (TOPIC, gzip.compress(batch_json().replace(b"26.0", b"1e400")), Outcome.MALFORMED),
        ("b2l/v1/B-2/telemetry", batch_json("B-1"), Outcome.MISMATCH),
        ("b2l/v1/B-1/commands", batch_json(), Outcome.MISMATCH),
        ("not/a/topic", batch_json(), Outcome.MISMATCH),
    ],
)
def test_bad_messages_are_an_outcome(topic: str, body: bytes, outcome: str) -> None:
    decoded = decode_message(topic, body)
    assert isinstance(decoded, tuple)
    assert decoded[0] == outcome


def test_payloads_over_the_bound_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer, "MAX_PAYLOAD_BYTES", 1024)
    bomb = gzip.compress(b" " * 100_000 + batch_json())
    assert len(bomb) < 1024  # small on the wire, 100 kB once inflated
    decoded = decode_message(TOPIC, bomb)
    assert isinstance(decoded, tuple)
    assert decoded[0] == Outcome.MALFORMED
    assert "decompressed" in decoded[1]
    raw = batch_json() + b" " * 2048
    decoded = decode_message(TOPIC, raw)
    assert isinstance(decoded, tuple)
    assert decoded[0] == Outcome.MALFORMED
    assert "bytes" in decoded[1]
