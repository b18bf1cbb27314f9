"""The JSON columns' codec (``cloud.db.json_codec``): orjson, and the standard library for what
orjson refuses, with the same stored text as before for those values."""

from __future__ import annotations

import json

import pytest

from cloud.db import json_codec

DOCUMENTS = [
    {"cells": {"0": {"voltage_v": 3.6039999999999996, "seq": 2**63 - 1}}, "faults": []},
    {"é": "ünïcode ✓", "nested": [1, 2.5, None, True, {"a": "b"}]},
    [],
    "text",
    0.1,
]


@pytest.mark.parametrize("value", DOCUMENTS)
def test_values_round_trip_as_the_standard_library_reads_them(value: object) -> None:
    encoded = json_codec.dumps(value)
    assert json.loads(encoded) == value
    assert json_codec.loads(encoded) == value
    assert json_codec.loads(json_codec.dumps_text(value)) == value
    assert json_codec.loads(memoryview(encoded)) == value


@pytest.mark.parametrize(
    "value",
    [
        {1: "an integer key", "b": {2.5: "a float key"}},  # orjson takes only string keys
        {"big": 2**70},  # orjson takes integers of 64 bits at most
    ],
)
def test_what_orjson_refuses_is_encoded_as_the_standard_library_does(value: object) -> None:
    assert json_codec.dumps(value) == json.dumps(value).encode()
    assert json_codec.dumps_text(value) == json.dumps(value)


@pytest.mark.parametrize("text", ['{"big": 1180591620717411303424}', "[1e400]"])
def test_numbers_orjson_refuses_are_read_as_the_standard_library_does(text: str) -> None:
    assert json_codec.loads(text) == json.loads(text)
    assert json_codec.loads(text.encode()) == json.loads(text)


def test_malformed_json_is_still_an_error() -> None:
    with pytest.raises(ValueError):
        json_codec.loads(b"{not json")
